//! Connections to one upstream server: opened on demand (TCP, then TLS for `https://` with the
//! upstream's rustls settings, then HTTP/2 when the server offers it through ALPN, else
//! HTTP/1.1), and kept for reuse — idle HTTP/1.1 connections in a lock-free queue, one shared
//! HTTP/2 connection. A request is sent with `try_send_request`, so when a connection turns out
//! to be closed before the request was written, the request comes back unsent and can be
//! retried elsewhere (the upstream decides where).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response, StatusCode};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::body::{Body, BoxError};
use crate::tls::{Alpn, UpstreamTls};

/// Most idle HTTP/1.1 connections kept per server.
const MAX_IDLE: usize = 256;
/// Idle connections older than this are not reused: servers close idle keep-alive
/// connections (Node.js after 5 s), and a request written just as the server closes one is
/// lost — it may have been received, so it cannot be retried. Under that, no such race.
const MAX_IDLE_AGE: Duration = Duration::from_secs(4);

/// How to open a connection to a server of one upstream.
pub struct Connector {
    pub connect_timeout: Duration,
    /// `Some` for `https://` upstreams.
    pub tls: Option<UpstreamTls>,
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(io::Error),
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("connect timed out"),
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::Handshake(e) => write!(f, "HTTP handshake failed: {e}"),
        }
    }
}

/// A connection ready for one request.
pub enum Conn {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Connector {
    /// Opens a connection to `host:port`: TCP (no Nagle), TLS when configured, then the HTTP
    /// handshake; the connection's I/O runs on its own task (upgrades allowed, for WebSocket).
    pub async fn connect(&self, host: &str, port: u16) -> Result<Conn, ConnectError> {
        let open = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(ConnectError::Io)?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => http1_over(tcp).await,
                Some(tls) => {
                    let (stream, alpn) = tls.connect(host, tcp).await.map_err(ConnectError::Io)?;
                    match alpn {
                        Alpn::H2 => http2_over(stream).await,
                        Alpn::Http1 => http1_over(stream).await,
                    }
                }
            }
        };
        tokio::time::timeout(self.connect_timeout, open)
            .await
            .map_err(|_| ConnectError::Timeout)?
    }
}

async fn http1_over<I>(io: I) -> Result<Conn, ConnectError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Conn::Http1(sender))
}

async fn http2_over<I>(io: I) -> Result<Conn, ConnectError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(Conn::Http2(sender))
}

/// Reusable connections to one server.
pub struct Pool {
    /// Idle HTTP/1.1 connections and when they became idle.
    idle: ArrayQueue<(Instant, http1::SendRequest<Body>)>,
    h2: ArcSwapOption<http2::SendRequest<Body>>,
    /// Requests in progress (sent, answer not yet fully streamed back): `least_conn` reads it.
    pub in_flight: AtomicUsize,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            idle: ArrayQueue::new(MAX_IDLE),
            h2: ArcSwapOption::empty(),
            in_flight: AtomicUsize::new(0),
        }
    }
}

/// How a request attempt ended.
pub enum Sent {
    Answered(Response<Incoming>, Option<Conn>),
    /// The request was not written: it comes back for another try.
    NotSent(Request<Body>),
    /// The exchange broke after the request may have reached the server: never retried.
    Failed(hyper::Error),
}

impl Pool {
    /// A reusable connection, if one is ready.
    pub fn checkout(&self) -> Option<Conn> {
        if let Some(h2) = self.h2.load_full() {
            if !h2.is_closed() {
                return Some(Conn::Http2((*h2).clone()));
            }
            self.h2.store(None);
        }
        // A connection given back a moment ago may still be finishing its last message:
        // `send` waits for it to be ready. Closed ones are dropped here.
        while let Some((since, sender)) = self.idle.pop() {
            if !sender.is_closed() && since.elapsed() < MAX_IDLE_AGE {
                return Some(Conn::Http1(sender));
            }
        }
        None
    }

    /// Keeps a freshly opened HTTP/2 connection for every later request.
    pub fn share(&self, conn: &Conn) {
        if let Conn::Http2(sender) = conn {
            self.h2.store(Some(Arc::new(sender.clone())));
        }
    }

    fn give_back(&self, conn: Conn) {
        if let Conn::Http1(sender) = conn
            && !sender.is_closed()
        {
            let _ = self.idle.push((Instant::now(), sender));
        }
    }

    /// Sends `req` on `conn`.
    pub async fn send(conn: Conn, req: Request<Body>) -> Sent {
        match conn {
            Conn::Http1(mut sender) => {
                if sender.ready().await.is_err() {
                    return Sent::NotSent(req);
                }
                match sender.try_send_request(req).await {
                    Ok(resp) => Sent::Answered(resp, Some(Conn::Http1(sender))),
                    Err(mut e) => match e.take_message() {
                        Some(req) => Sent::NotSent(req),
                        None => Sent::Failed(e.into_error()),
                    },
                }
            }
            Conn::Http2(mut sender) => {
                if sender.ready().await.is_err() {
                    return Sent::NotSent(req);
                }
                match sender.try_send_request(req).await {
                    // HTTP/2 connections are shared, not returned.
                    Ok(resp) => Sent::Answered(resp, None),
                    Err(mut e) => match e.take_message() {
                        Some(req) => Sent::NotSent(req),
                        None => Sent::Failed(e.into_error()),
                    },
                }
            }
        }
    }

    /// The answer's body, which gives its HTTP/1.1 connection back for reuse once it has been
    /// read to the end, and ends the request's count in `in_flight` when it is dropped.
    pub fn body(self: &Arc<Self>, resp: Response<Incoming>, conn: Option<Conn>) -> Response<Body> {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let mut body = PooledBody {
            inner: None,
            conn: if switching { None } else { conn },
            pool: self.clone(),
        };
        resp.map(|inner| {
            if inner.is_end_stream() {
                body.finish();
            }
            body.inner = Some(inner);
            http_body_util::BodyExt::boxed(body)
        })
    }
}

/// An upstream answer's body on its way to the client.
struct PooledBody {
    inner: Option<Incoming>,
    /// The connection, until the body has been read to its end.
    conn: Option<Conn>,
    pool: Arc<Pool>,
}

impl PooledBody {
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An unfinished body drops its connection (hyper closes it after the message).
        self.pool.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match polled {
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(Some(Ok(frame))) => {
                if self.inner.as_ref().is_some_and(HttpBody::is_end_stream) {
                    self.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}
