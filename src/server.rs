//! Listeners and connection serving (hyper-util's auto builder: HTTP/1.1 and HTTP/2 with
//! keep-alive), graceful shutdown bounded by a grace period, and SIGHUP reload.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::gateway::Gateway;
use crate::runtime::Runtime;

/// How long a client may take to send its request headers (slowloris bound).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time in-flight requests get to finish after a shutdown signal.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

fn builder() -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    b.http2().timer(TokioTimer::new());
    b
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and gives in-flight
/// requests up to `grace` to finish.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let builder = builder();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        let service = service_fn(move |req| {
            let gw = gw.clone();
            async move { Ok::<_, std::convert::Infallible>(gw.handle(req, peer).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(grace_secs = grace.as_secs(), "grace period over; closing remaining connections"),
    }
}

/// A gateway serving in the background (tests, and `run` underneath).
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
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
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// Binds `runtime.listen` (or `listen` when given, e.g. `127.0.0.1:0` in tests) and serves in
/// a background task.
pub async fn spawn(runtime: Runtime, listen: Option<SocketAddr>) -> std::io::Result<ServerHandle> {
    let listener = TcpListener::bind(listen.unwrap_or(runtime.listen)).await?;
    let addr = listener.local_addr()?;
    let gateway = Gateway::new(runtime);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        gateway.clone(),
        listener,
        async {
            let _ = stopped.await;
        },
        DEFAULT_GRACE,
    ));
    Ok(ServerHandle {
        addr,
        gateway,
        stop: Some(stop),
        task,
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reloads the config on SIGHUP: parse, validate, compile, then swap; a bad config is logged
/// with its locations and the running one keeps serving.
pub fn reload_on_sighup(gateway: Arc<Gateway>, config: PathBuf) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload by restarting");
            return;
        };
        while hup.recv().await.is_some() {
            reload(&gateway, &config);
        }
    });
}

/// One reload attempt.
pub fn reload(gateway: &Gateway, config: &std::path::Path) {
    match Runtime::load(config) {
        Ok(runtime) => {
            if runtime.listen != gateway.runtime().listen {
                tracing::warn!(listen = %runtime.listen, "`listen` changed: it takes effect only after a restart");
            }
            for w in &runtime.warnings {
                tracing::warn!("{w}");
            }
            gateway.replace(runtime);
            tracing::info!(config = %config.display(), "config reloaded");
        }
        Err(e) => {
            for line in e.diagnostics() {
                tracing::error!("config reload failed, keeping the running config: {line}");
            }
        }
    }
}
