//! Connections to one upstream server: opened on demand (TCP, then TLS for `https://` with the
//! upstream's rustls settings, then HTTP/2 when the server offers it through ALPN, else
//! HTTP/1.1), and kept for reuse — idle HTTP/1.1 connections in a lock-free queue, one shared
//! HTTP/2 connection. A request is sent with `try_send_request`, so when a connection turns out
//! to be closed before the request was written, the request comes back unsent and can be
//! retried elsewhere (the upstream decides where).
//!
//! An HTTP/1.1 connection has no task of its own: the request that holds it drives its I/O
//! (writing the request, reading the answer, streaming the body) from the request's own task.
//! A connection task would cost two cross-task wake-ups per request (the request handed to it,
//! the answer handed back) and it shared the request's core anyway. Idle connections are looked
//! at when they are taken (one that the server closed is dropped then) and every
//! `MAX_IDLE_AGE / 2` by a small reaper, so closed ones do not linger.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
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
    Http1(Http1),
    Http2(http2::SendRequest<Body>),
}

/// The I/O side of an HTTP/1.1 connection (hyper's dispatcher, upgrades allowed).
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send + Sync>>;

/// An HTTP/1.1 connection that whoever holds it drives: the request sending on it, then the
/// answer's body, then nobody while it is idle.
pub struct Http1 {
    sender: http1::SendRequest<Body>,
    /// `None` once the connection has ended (closed by either side, or broken).
    driver: Option<Driver>,
}

impl Http1 {
    /// Moves the connection's I/O forward, waking `cx` when it can go on. False once it has
    /// ended: the dispatcher is dropped then, which hands a request not yet written back to
    /// its sender (`try_send_request` returns it).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(driver) = self.driver.as_mut() else {
            return false;
        };
        match driver.as_mut().poll(cx) {
            Poll::Pending => true,
            Poll::Ready(result) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
                self.driver = None;
                false
            }
        }
    }

    /// Drives the connection without a waker: finishes what it can now (the end of the last
    /// message, a close the server sent) and forgets the last request's waker, so an idle
    /// connection keeps no finished task alive. False if it has ended.
    fn settle(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()))
    }

    /// Ready for a request: the previous message finished and the connection is open.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            if !self.drive(cx) {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }

    async fn send(mut self, req: Request<Body>) -> Sent {
        if !self.ready().await {
            return Sent::NotSent(req);
        }
        let mut answer = pin!(self.sender.try_send_request(req));
        let answered = poll_fn(|cx| {
            // Write the request and read the answer's head, then look for the answer.
            self.drive(cx);
            answer.as_mut().poll(cx)
        })
        .await;
        match answered {
            Ok(resp) => Sent::Answered(resp, Some(Conn::Http1(self))),
            Err(mut e) => match e.take_message() {
                Some(req) => Sent::NotSent(req),
                None => Sent::Failed(e.into_error()),
            },
        }
    }

    /// After a `101 Switching Protocols`: the connection's last step hands its socket to the
    /// upgrade (`hyper::upgrade::on`), which the tunnel awaits on another task, so it runs on
    /// its own task.
    fn finish_upgrade(self) {
        if let Some(driver) = self.driver {
            tokio::spawn(async move {
                if let Err(e) = driver.await {
                    tracing::debug!(error = %e, "upstream connection failed to upgrade");
                }
            });
        }
    }
}

impl Connector {
    /// Opens a connection to `host:port`: TCP (no Nagle), TLS when configured, then the HTTP
    /// handshake. An HTTP/2 connection's I/O runs on its own task (it is shared); an HTTP/1.1
    /// connection's is driven by its user (upgrades allowed, for WebSocket).
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
        // Boxed: TCP, TLS and HTTP/2 handshake state is ~6.7 KB, which every caller's future
        // (each request's) would otherwise carry inline for the rare one that connects.
        tokio::time::timeout(self.connect_timeout, Box::pin(open))
            .await
            .map_err(|_| ConnectError::Timeout)?
    }
}

async fn http1_over<I>(io: I) -> Result<Conn, ConnectError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    Ok(Conn::Http1(Http1 {
        sender,
        driver: Some(Box::pin(conn.with_upgrades())),
    }))
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
    idle: ArrayQueue<(Instant, Http1)>,
    h2: ArcSwapOption<http2::SendRequest<Body>>,
    /// Whether the reaper of closed idle connections runs.
    reaper: AtomicBool,
    /// Requests in progress (sent, answer not yet fully streamed back): `least_conn` reads it.
    pub in_flight: AtomicUsize,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            idle: ArrayQueue::new(MAX_IDLE),
            h2: ArcSwapOption::empty(),
            reaper: AtomicBool::new(false),
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
        // Closed ones are dropped here; `send` waits for the one taken to be ready.
        while let Some((since, mut h1)) = self.idle.pop() {
            if since.elapsed() < MAX_IDLE_AGE && h1.settle() {
                return Some(Conn::Http1(h1));
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

    fn give_back(self: &Arc<Self>, conn: Conn) {
        if let Conn::Http1(mut h1) = conn
            && h1.settle()
        {
            let _ = self.idle.push((Instant::now(), h1));
            // Read first: a swap on every answer would write a shared line each time.
            if !self.reaper.load(Ordering::Relaxed) && !self.reaper.swap(true, Ordering::Relaxed) {
                tokio::spawn(reap(Arc::downgrade(self)));
            }
        }
    }

    /// Sends `req` on `conn`.
    pub async fn send(conn: Conn, req: Request<Body>) -> Sent {
        match conn {
            Conn::Http1(h1) => h1.send(req).await,
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
    pub fn body(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        mut conn: Option<Conn>,
    ) -> Response<Body> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(Conn::Http1(h1)) = conn.take()
        {
            h1.finish_upgrade();
        }
        let mut body = PooledBody {
            inner: None,
            conn,
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

/// Every `MAX_IDLE_AGE / 2`, drops the idle connections that are too old or that the server
/// closed, until the pool itself is gone.
async fn reap(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(MAX_IDLE_AGE / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        for _ in 0..pool.idle.len() {
            let Some((since, mut h1)) = pool.idle.pop() else {
                break;
            };
            if since.elapsed() < MAX_IDLE_AGE && h1.settle() {
                let _ = pool.idle.push((since, h1));
            }
        }
    }
}

/// An upstream answer's body on its way to the client; it drives its HTTP/1.1 connection.
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
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let mut polled = Pin::new(&mut *inner).poll_frame(cx);
        if polled.is_pending()
            && let Some(Conn::Http1(h1)) = this.conn.as_mut()
        {
            // The body's bytes come from the connection: read them, then look again.
            h1.drive(cx);
            polled = Pin::new(inner).poll_frame(cx);
        }
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
