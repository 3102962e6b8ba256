//! Serving one client connection: hyper-util's auto builder (HTTP/1.1 or HTTP/2) under a
//! watchdog that closes the connection once it has been idle for `header_read_timeout`.
//!
//! hyper's own HTTP/1 `header_read_timeout` starts only once the protocol is known, and the
//! auto builder reads the first bytes (to tell HTTP/1 from the HTTP/2 preface) with no timer:
//! a client that connects and sends nothing, one byte, or half a preface would hold its
//! connection slot forever. HTTP/2 has no idle limit at all (a client that answers pings keeps
//! the connection). The watchdog bounds all of them the same way: no request started, none in
//! progress, for `header_read_timeout` → graceful close (hyper finishes any response still
//! streaming), and if the connection is still open a second later, it is dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use std::future::Future;

use http::{Request, Response};
use hyper::body::Incoming;

use super::Listening;
use crate::boot::ServerSettings;
use crate::gateway::Gateway;
use crate::proxy::Body;
use crate::request::{Conn, Scheme};
use crate::tls::ClientIdentity;

/// How long a connection told to close gets to finish before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

fn builder(settings: &ServerSettings) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // A request head that starts but does not finish in time (slowloris).
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

/// What the watchdog knows of a connection: requests being handled, and when the last one
/// started or ended (milliseconds since the connection was accepted).
struct Activity {
    accepted: Instant,
    in_flight: AtomicU32,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection becomes idle for too long, if nothing happens before then.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        self.accepted + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + timeout
    }
}

/// Marks a request in progress until dropped (also when the request future is cancelled).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted connection as `listening` says: the TLS handshake first on an HTTPS
/// listener (bounded by `header_read_timeout`, like the first request head), then HTTP until
/// the client closes it, it idles out, or `stop` is cancelled.
pub async fn serve(
    gateway: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    listening: Listening,
    settings: ServerSettings,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    match listening {
        Listening::Plain => {
            let conn = Arc::new(Conn::new(peer, local, Scheme::Http));
            let service = gateway_service(gateway, conn);
            serve_http(stream, service, peer, settings, stop).await
        }
        Listening::Redirect { https_port } => {
            let service = service_fn(move |req| {
                let resp = super::redirect::to_https(&req, https_port);
                async move { Ok::<_, Infallible>(resp) }
            });
            serve_http(stream, service, peer, settings, stop).await
        }
        Listening::Tls(tls) => {
            let handshake = tls.acceptor().accept(stream);
            let stream = match tokio::time::timeout(settings.header_read_timeout, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let client = ClientIdentity::of(stream.get_ref().1).map(|id| Arc::new(id.as_claims()));
            let conn = Arc::new(Conn::new(peer, local, Scheme::Https).with_client(client));
            let service = gateway_service(gateway, conn);
            serve_http(stream, service, peer, settings, stop).await
        }
    }
}

/// The gateway as a hyper service for one connection.
fn gateway_service(
    gateway: Arc<Gateway>,
    conn: Arc<Conn>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
+ Send {
    service_fn(move |req| {
        let gw = gateway.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(gw.handle(req, &conn).await) }
    })
}

/// HTTP on one connection under the idle watchdog.
async fn serve_http<I, S>(
    io: I,
    service: S,
    peer: SocketAddr,
    settings: ServerSettings,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let activity = Arc::new(Activity {
        accepted: Instant::now(),
        in_flight: AtomicU32::new(0),
        last_ms: AtomicU64::new(0),
    });
    let tracked = activity.clone();
    // The request's future is made inside the block: made outside and captured, the block
    // would hold it twice (captured, then awaited), doubling what is moved per request.
    let service = service_fn(move |req| {
        let guard = InFlight::start(&tracked);
        let service = service.clone();
        async move {
            let resp = service.call(req).await;
            drop(guard);
            resp
        }
    });
    let builder = builder(&settings);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle = settings.header_read_timeout;
    let idled_out = loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(activity.idle_deadline(idle)) => {
                if activity.in_flight.load(Ordering::Relaxed) == 0
                    && activity.idle_deadline(idle) <= Instant::now()
                {
                    tracing::debug!(%peer, "closing an idle connection");
                    break true;
                }
            }
            () = stop.cancelled() => break false,
        }
    };
    conn.as_mut().graceful_shutdown();
    if idled_out {
        let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
    } else {
        // Shutting down: the server's grace period bounds this wait.
        let _ = conn.await;
    }
}
