//! Listeners and connection serving (hyper-util's auto builder: HTTP/1.1 and HTTP/2 with
//! keep-alive), bounded by the `server:` limits; graceful shutdown within a grace period;
//! reload on file change and on SIGHUP.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gateway::Gateway;
use crate::snapshot::Loaded;

mod connection;
mod reload;

pub use reload::{reload, reload_on_sighup, watch_files};

/// Serves `listener` until `shutdown` resolves, then stops accepting and gives in-flight
/// requests up to `server.shutdown_grace` to finish.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
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
        let served = connection::serve(gateway.clone(), stream, peer, settings, stop.clone());
        connections.spawn(async move {
            served.await;
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
/// overrides the config's `listen` (tests pass `127.0.0.1:0`; the admin listener then also
/// takes an ephemeral loopback port).
pub async fn spawn(loaded: Loaded, listen: Option<SocketAddr>) -> std::io::Result<ServerHandle> {
    let admin_listen = match listen {
        Some(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
        None => loaded.boot.admin_listen,
    };
    let listener = TcpListener::bind(listen.unwrap_or(loaded.boot.listen)).await?;
    let admin_listener = TcpListener::bind(admin_listen).await?;
    let addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let store = crate::state::open(&loaded.boot.store, &loaded.boot.config_dir)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let gateway = Gateway::with_store(loaded, store);
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
