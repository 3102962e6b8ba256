//! Listeners and connection serving (hyper-util's auto builder: HTTP/1.1 and HTTP/2 with
//! keep-alive; TLS with rustls on an HTTPS listener), bounded by the `server:` limits; a
//! plain-HTTP listener beside an HTTPS one that redirects or serves; graceful shutdown within
//! a grace period; reload on file change and on SIGHUP.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::PlainHttp;
use crate::gateway::Gateway;
use crate::snapshot::Loaded;
use crate::tls::ServerTls;

mod connection;
mod redirect;
mod reload;

pub use reload::{reload, reload_on_sighup, watch_files};

/// How a listener's connections are served.
#[derive(Clone)]
pub enum Listening {
    /// Plain HTTP.
    Plain,
    /// HTTPS: a TLS handshake first (bounded by `header_read_timeout`), then HTTP.
    Tls(Arc<ServerTls>),
    /// Plain HTTP that answers every request with a redirect to the HTTPS listener's port.
    Redirect { https_port: u16 },
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and gives in-flight
/// requests up to `server.shutdown_grace` to finish.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    listening: Listening,
    shutdown: impl Future<Output = ()>,
) {
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let limit = Arc::new(Semaphore::new(gateway.boot().max_connections));
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
        // Limits are read per connection, so a reload applies to new connections.
        let settings = gateway.snapshot().server;
        let open = gateway.metrics().open_connections.clone();
        open.inc();
        let (gateway, listening, stop) = (gateway.clone(), listening.clone(), stop.clone());
        // The connection's future is made inside the task: made outside and captured, the
        // task would hold it twice (captured, then awaited), ~6 KB more per open connection.
        connections.spawn(async move {
            connection::serve(gateway, stream, peer, listening, settings, stop).await;
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    let grace = gateway.snapshot().server.shutdown_grace;
    let drained = async {
        connections.wait().await;
        // Upgraded (WebSocket) connections left their connection task when they upgraded.
        gateway.tunnels().close();
        gateway.tunnels().wait().await;
    };
    tokio::select! {
        () = drained => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(grace_secs = grace.as_secs(), "grace period over; closing remaining connections"),
    }
}

/// A running gateway: its listeners' addresses, and a way to stop it.
pub struct ServerHandle {
    pub addr: SocketAddr,
    /// The plain-HTTP listener beside an HTTPS one (`server.tls.http_listen`).
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    admin: JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting, waits for in-flight requests (up to the grace period), then sends
    /// the spans still queued (up to the export timeout).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        if let Some(traces) = self.gateway.traces() {
            traces.shutdown().await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.admin.abort();
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
    })
}

/// Binds every listener the config asks for (the main one, a plain-HTTP one beside HTTPS, the
/// admin one), opens the state store, and serves in the background. `listen` overrides every
/// listener's address (tests pass `127.0.0.1:0`: each gets its own ephemeral port).
pub async fn spawn(loaded: Loaded, listen: Option<SocketAddr>) -> std::io::Result<ServerHandle> {
    let boot = loaded.boot.clone();
    let pick = |configured: SocketAddr| listen.unwrap_or(configured);
    let listener = bind(pick(boot.listen), "listen").await?;
    let admin_listener = bind(pick(boot.admin_listen), "admin.listen").await?;
    let tls = match &boot.tls {
        None => None,
        Some(t) => Some(Arc::new(
            ServerTls::load(&t.files).map_err(|e| std::io::Error::other(e.to_string()))?,
        )),
    };
    let plain = match boot
        .tls
        .as_ref()
        .and_then(|t| t.http_listen.map(|a| (a, t.http)))
    {
        Some((addr, mode)) => Some((bind(pick(addr), "server.tls.http_listen").await?, mode)),
        None => None,
    };
    let addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let store = crate::state::open(&boot.store, &boot.config_dir)
        .await
        .map_err(|e| {
            std::io::Error::other(format!(
                "cannot open the state store `{}`: {}",
                boot.store, e.0
            ))
        })?;
    let gateway = Gateway::with_store(loaded, store);
    let admin = tokio::spawn(crate::admin::serve(gateway.clone(), admin_listener));
    let stop = CancellationToken::new();
    let main = match &tls {
        Some(tls) => {
            gateway.set_tls(tls.clone());
            Listening::Tls(tls.clone())
        }
        None => Listening::Plain,
    };
    let mut tasks = vec![tokio::spawn(serve(
        gateway.clone(),
        listener,
        main,
        stop.clone().cancelled_owned(),
    ))];
    let mut http_addr = None;
    if let Some((plain, mode)) = plain {
        http_addr = Some(plain.local_addr()?);
        let listening = match mode {
            PlainHttp::Serve => Listening::Plain,
            PlainHttp::Redirect => Listening::Redirect {
                https_port: addr.port(),
            },
        };
        tasks.push(tokio::spawn(serve(
            gateway.clone(),
            plain,
            listening,
            stop.clone().cancelled_owned(),
        )));
    }
    Ok(ServerHandle {
        addr,
        http_addr,
        admin_addr,
        gateway,
        stop,
        tasks,
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
