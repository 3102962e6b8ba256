//! Listeners and connection serving (hyper-util's auto builder: HTTP/1.1 and HTTP/2 with
//! keep-alive), bounded by the `server:` limits; graceful shutdown within a grace period;
//! reload on file change and on SIGHUP.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::gateway::{ConnectionMemo, Gateway};
use crate::runtime::{Runtime, ServerSettings};

fn builder(settings: &ServerSettings) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Also the idle limit of a keep-alive connection: hyper starts this timer whenever
        // it waits for the next request head.
        .header_read_timeout(settings.header_read_timeout)
        // hyper answers 431 when the request head does not fit (minimum 8 KiB).
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and gives in-flight
/// requests up to `server.shutdown_grace` to finish.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(gateway.runtime().server.max_connections));
    tokio::pin!(shutdown);
    loop {
        // At the connection limit, stop accepting: new clients wait in the listen backlog.
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gw = gateway.clone();
        // Limits are read per connection, so a reload applies to new connections.
        let builder = builder(&gateway.runtime().server);
        let memo = Arc::new(ConnectionMemo::default());
        let service = service_fn(move |req| {
            let gw = gw.clone();
            let memo = memo.clone();
            async move { Ok::<_, std::convert::Infallible>(gw.handle(req, peer, &memo).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = gateway.runtime().server.shutdown_grace;
    let drained = async {
        graceful.shutdown().await;
        // Upgraded (WebSocket) connections left the connection tracker when they upgraded.
        gateway.tunnels().close();
        gateway.tunnels().wait().await;
    };
    tokio::select! {
        () = drained => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(grace_secs = grace.as_secs(), "grace period over; closing remaining connections"),
    }
}

/// A gateway serving in the background (tests use this; `run` is the same underneath).
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    admin: JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting, waits for in-flight requests (up to the grace period).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.admin.abort();
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// Binds the gateway and its admin listener and serves both in the background. `listen`
/// overrides `runtime.listen` (tests pass `127.0.0.1:0`; the admin listener then also takes
/// an ephemeral loopback port).
pub async fn spawn(runtime: Runtime, listen: Option<SocketAddr>) -> std::io::Result<ServerHandle> {
    let admin_listen = match listen {
        Some(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
        None => runtime.admin_listen,
    };
    let listener = TcpListener::bind(listen.unwrap_or(runtime.listen)).await?;
    let admin_listener = TcpListener::bind(admin_listen).await?;
    let addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let gateway = Gateway::new(runtime);
    let admin = tokio::spawn(crate::admin::serve(gateway.clone(), admin_listener));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(gateway.clone(), listener, async {
        let _ = stopped.await;
    }));
    Ok(ServerHandle {
        addr,
        admin_addr,
        gateway,
        stop: Some(stop),
        task,
        admin,
    })
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed before this returns.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reloads the config on SIGHUP. The handler is installed before this returns, so a SIGHUP
/// sent after "listening" is logged can never kill the process.
pub fn reload_on_sighup(gateway: Arc<Gateway>, config: PathBuf) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload by restarting");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                reload(&gateway, &config);
            }
        });
    }
}

/// One reload: parse, validate, compile, then swap. A bad config is logged with its
/// locations, counted, and the running one keeps serving. Returns whether it swapped.
pub fn reload(gateway: &Gateway, config: &Path) -> bool {
    match Runtime::load(config) {
        Ok(runtime) => {
            let current = gateway.runtime();
            if runtime.listen != current.listen || runtime.admin_listen != current.admin_listen {
                tracing::warn!(listen = %runtime.listen, admin = %runtime.admin_listen, "`listen` or `admin.listen` changed: it takes effect only after a restart");
            }
            if runtime.server.max_connections != current.server.max_connections {
                tracing::warn!(
                    "`server.max_connections` changed: it takes effect only after a restart"
                );
            }
            for w in &runtime.warnings {
                tracing::warn!("{w}");
            }
            gateway.replace(runtime);
            gateway.metrics().reload(true);
            tracing::info!(config = %config.display(), "config reloaded");
            true
        }
        Err(e) => {
            gateway.metrics().reload(false);
            for line in e.diagnostics() {
                tracing::error!("config reload failed, keeping the running config: {line}");
            }
            false
        }
    }
}

/// The contents of every file a runtime was built from, hashed: a reload happens only when
/// it changes (editors and ConfigMap symlink swaps fire many events for one change).
fn fingerprint(files: &[PathBuf]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for f in files {
        ctx.update(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(bytes) => {
                ctx.update(&(bytes.len() as u64).to_le_bytes());
                ctx.update(&bytes);
            }
            Err(_) => ctx.update(b"\0missing"),
        }
    }
    ctx.finish().as_ref().to_vec()
}

/// Adds a watch on the directory of each file not watched yet.
fn watch_dirs(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    files: &[PathBuf],
) {
    use notify::{RecursiveMode, Watcher};
    for file in files {
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        if watched.insert(dir.clone())
            && let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; use SIGHUP to reload");
        }
    }
}

/// How long the files must be quiet before a reload (editors write in bursts).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches the config file, the users file and key files — through their directories, so
/// editors that save by writing a new file and renaming it over the old one are seen — and
/// reloads when their contents change.
pub fn watch_files(gateway: Arc<Gateway>, config: PathBuf) -> Result<(), String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(64);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| format!("cannot watch files: {e}"))?;
    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    let files = gateway.runtime().files.clone();
    watch_dirs(&mut watcher, &mut watched, &files);
    tokio::spawn(async move {
        let mut files = files;
        let mut last = fingerprint(&files);
        while rx.recv().await.is_some() {
            // Wait for a quiet moment.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            let now = fingerprint(&files);
            if now == last {
                continue;
            }
            tracing::info!("config files changed: reloading");
            if reload(&gateway, &config) {
                files = gateway.runtime().files.clone();
                watch_dirs(&mut watcher, &mut watched, &files);
            }
            last = fingerprint(&files);
        }
    });
    Ok(())
}
