//! Upstream pools against real servers on real sockets: balancing (`round_robin`,
//! `least_conn`), passive ejection and readmission, a server killed and restarted under load,
//! active health checks, the no-retry rule for requests that may have reached a server, all
//! servers down, https upstreams (CA, server name, client certificates, ALPN, keep-alive),
//! `authgate check` on upstream settings, and the per-server metrics.
mod common;
use common::pki::{Pair, Pki};
use common::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

// ---------------------------------------------------------------------------------------------
// A backend that names itself, counts what it gets, and can be killed and restarted
// ---------------------------------------------------------------------------------------------

/// One request as a backend received it.
#[derive(Debug, Clone)]
struct Hit {
    method: String,
    path: String,
    body: Bytes,
    version: Version,
    /// The client certificate of the TLS connection it came on (DER), if any.
    client_cert: Option<Vec<u8>>,
}

struct Shared {
    name: &'static str,
    /// Every request but health checks, in arrival order (recorded before answering).
    hits: Mutex<Vec<Hit>>,
    /// The status of every `/healthz` answered.
    health_log: Mutex<Vec<u16>>,
    /// What `/healthz` answers.
    health: AtomicU16,
    /// TCP connections accepted.
    connections: AtomicUsize,
    /// Time taken to answer every request but `/hold` and `/healthz`.
    delay_ms: AtomicU64,
    /// `/hold...` answers once this turns true.
    release: watch::Sender<bool>,
}

/// A real HTTP server on 127.0.0.1 (http, or https with the given rustls config, HTTP/1.1
/// and HTTP/2 served by `hyper_util`'s auto builder). Answers 200 with its name as the body.
struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    /// The accept loop; it owns every connection task, so aborting it drops them all.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        Self::launch(name, None).await
    }

    async fn start_tls(name: &'static str, config: Arc<rustls::ServerConfig>) -> Backend {
        Self::launch(name, Some(TlsAcceptor::from(config))).await
    }

    async fn launch(name: &'static str, tls: Option<TlsAcceptor>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend::with_addr(name, listener.local_addr().unwrap(), tls);
        backend.serve(listener);
        backend
    }

    /// A backend that is not running yet: nothing listens on its address (bound, released)
    /// until [`Backend::restart`].
    async fn reserve(name: &'static str) -> Backend {
        Backend::with_addr(name, dead_addr().await, None)
    }

    fn with_addr(name: &'static str, addr: SocketAddr, tls: Option<TlsAcceptor>) -> Backend {
        Backend {
            addr,
            shared: Arc::new(Shared {
                name,
                hits: Mutex::default(),
                health_log: Mutex::default(),
                health: AtomicU16::new(200),
                connections: AtomicUsize::new(0),
                delay_ms: AtomicU64::new(0),
                release: watch::channel(false).0,
            }),
            tls,
            task: Mutex::new(None),
        }
    }

    fn serve(&self, listener: TcpListener) {
        let (shared, tls) = (self.shared.clone(), self.tls.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve_connection(tcp, shared.clone(), tls.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Kills the server: the listener and every open connection are closed.
    async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same address.
    async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    /// Requests whose path starts with `prefix`.
    fn count(&self, prefix: &str) -> usize {
        self.hits()
            .iter()
            .filter(|h| h.path.starts_with(prefix))
            .count()
    }

    fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    fn set_health(&self, status: u16) {
        self.shared.health.store(status, Ordering::SeqCst);
    }

    /// Health checks answered with `status`.
    fn health_answers(&self, status: u16) -> usize {
        let log = self.shared.health_log.lock().unwrap();
        log.iter().filter(|&&s| s == status).count()
    }

    fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap();
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    fn release(&self) {
        self.shared.release.send_replace(true);
    }
}

async fn serve_connection(tcp: TcpStream, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    let _ = tcp.set_nodelay(true);
    match tls {
        None => serve_http(TokioIo::new(tcp), shared, None).await,
        Some(acceptor) => {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|c| c.to_vec());
            serve_http(TokioIo::new(stream), shared, cert).await;
        }
    }
}

async fn serve_http<I>(io: TokioIo<I>, shared: Arc<Shared>, cert: Option<Vec<u8>>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let (shared, cert) = (shared.clone(), cert.clone());
        async move { Ok::<_, Infallible>(answer(req, &shared, cert).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, svc)
        .await;
}

async fn answer(
    req: Request<Incoming>,
    shared: &Shared,
    cert: Option<Vec<u8>>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    if path == "/healthz" {
        let status = shared.health.load(Ordering::SeqCst);
        shared.health_log.lock().unwrap().push(status);
        let mut resp = Response::new(Full::new(Bytes::from_static(b"health")));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        return resp;
    }
    shared.hits.lock().unwrap().push(Hit {
        method: parts.method.to_string(),
        path: path.clone(),
        body,
        version: parts.version,
        client_cert: cert,
    });
    if path.starts_with("/hold") {
        let mut released = shared.release.subscribe();
        let _ = released.wait_for(|&r| r).await;
    } else {
        let delay = shared.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    Response::new(Full::new(Bytes::from(shared.name)))
}

/// A server that answers the first `answered` requests of each connection (keep-alive), then
/// reads the next one whole, records it, and closes the connection without answering.
struct Closer {
    addr: SocketAddr,
    /// Every request read, answered or not.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Closer {
    async fn start(answered: usize) -> Closer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    for n in 0.. {
                        let Some(request) = read_request(&mut tcp).await else {
                            return;
                        };
                        record.lock().unwrap().push(request);
                        if n == answered {
                            break;
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\ncloser";
                        if tcp.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                    // Everything was read, so this is a clean close (FIN), not a reset.
                    let _ = tcp.shutdown().await;
                });
            }
        });
        Closer { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads one HTTP/1.1 request (headers, then a `Content-Length` or chunked body).
async fn read_request(tcp: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let complete = match length {
                Some(n) => buf.len() >= end + 4 + n,
                None if head.contains("transfer-encoding: chunked") => buf.ends_with(b"0\r\n\r\n"),
                None => true,
            };
            if complete {
                return Some(String::from_utf8_lossy(&buf).into_owned());
            }
        }
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway configs, requests and metrics
// ---------------------------------------------------------------------------------------------

/// A gateway config with one upstream `app` (`lines`: its settings, one per line, without
/// indentation) and one route taking every request to it, no token needed.
fn config(servers: &[String], lines: &[&str]) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let mut upstream = format!("    servers: [{}]\n", list.join(", "));
    for line in lines {
        upstream.push_str(&format!("    {line}\n"));
    }
    format!(
        "listen: \"127.0.0.1:0\"\ntokens:\n  issuer: authgate\n  audience: apps\n  leeway: 0s\n  \
         keys:\n    - {{ id: k1, algorithm: HS256, secret: \"{{SECRET}}\" }}\n\
         upstreams:\n  app:\n{upstream}routes:\n  - name: all\n    upstream: app\n    auth: none\n"
    )
}

async fn start(servers: &[String], lines: &[&str]) -> Gateway {
    Gateway::start(&config(servers, lines), "").await
}

async fn get(gw: &Gateway, path: &str) -> Reply {
    send(gw.addr(), "GET", path, &[], Bytes::new()).await
}

async fn post(gw: &Gateway, path: &str, body: &str) -> Reply {
    let body = Bytes::from(body.to_owned());
    send(
        gw.addr(),
        "POST",
        path,
        &[("content-type", "text/plain")],
        body,
    )
    .await
}

/// One per-server series: `requests`, `failures` or `healthy`.
fn server_series(kind: &str, server: &str) -> String {
    let name = match kind {
        "healthy" => "authgate_upstream_server_healthy".to_owned(),
        other => format!("authgate_upstream_server_{other}_total"),
    };
    format!("{name}{{upstream=\"app\",server=\"{server}\"}}")
}

async fn server_metric(gw: &Gateway, kind: &str, server: &str) -> f64 {
    let text = admin(gw, "/metrics").await.text();
    let series = server_series(kind, server);
    assert!(
        text.lines().any(|l| l.starts_with(&series)),
        "{series} is not exported:\n{text}"
    );
    metric(&text, &series)
}

/// Requests, failures and the health gauge of one server.
async fn server_metrics(gw: &Gateway, server: &str) -> (f64, f64, f64) {
    (
        server_metric(gw, "requests", server).await,
        server_metric(gw, "failures", server).await,
        server_metric(gw, "healthy", server).await,
    )
}

// ---------------------------------------------------------------------------------------------
// Test certificates
// ---------------------------------------------------------------------------------------------

const H2: &[u8] = b"h2";
const HTTP1: &[u8] = b"http/1.1";

/// A backend's rustls config: its certificate, the ALPN protocols it offers, and the CA its
/// clients' certificates must chain to (client certificates required when set).
fn server_tls(leaf: &Pair, alpn: &[&[u8]], client_ca: Option<&Pki>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.ca_der()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(vec![leaf.der()], leaf.key_der())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A gateway in front of one https backend, with these upstream settings and files.
async fn tls_gateway(backend: &Backend, lines: &[&str], files: &[(&str, &[u8])]) -> Gateway {
    Gateway::start_with_files(&config(&[backend.url()], lines), "", files).await
}

// ---------------------------------------------------------------------------------------------
// 1. Balancing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn round_robin_spreads_requests_evenly() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let urls: Vec<String> = backends.iter().map(Backend::url).collect();
    let gw = start(&urls, &["balance: round_robin"]).await;

    // One after the other: strictly in turn.
    let mut names = Vec::new();
    for i in 0..30 {
        let r = get(&gw, &format!("/seq/{i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        names.push(r.text());
    }
    for b in &backends {
        assert_eq!(b.count("/seq/"), 10, "{} in {names:?}", b.shared.name);
    }
    assert_eq!(&names[..6], ["a", "b", "c", "a", "b", "c"]);

    // All at once: the same shares.
    let all = (0..30).map(|i| {
        let addr = gw.addr();
        tokio::spawn(async move {
            send(addr, "GET", &format!("/par/{i}"), &[], Bytes::new())
                .await
                .status
        })
    });
    for status in futures_util::future::join_all(all).await {
        assert_eq!(status.unwrap(), 200);
    }
    for (b, url) in backends.iter().zip(&urls) {
        assert_eq!(b.count("/par/"), 10, "{}", b.shared.name);
        assert_eq!(server_metrics(&gw, url).await, (20.0, 0.0, 1.0), "{url}");
    }
}

#[tokio::test]
async fn least_conn_avoids_servers_with_requests_in_flight() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let urls: Vec<String> = backends.iter().map(Backend::url).collect();
    let gw = start(&urls, &["balance: least_conn"]).await;
    let holding = |prefix: &'static str| {
        let backends = &backends;
        move || backends.iter().position(|b| b.count(prefix) > 0)
    };

    // A slow request lands somewhere; the next one on another server.
    let addr = gw.addr();
    let first = tokio::spawn(async move { send(addr, "GET", "/hold/1", &[], Bytes::new()).await });
    eventually("the first slow request to arrive", || async {
        holding("/hold/1")().is_some()
    })
    .await;
    let x = holding("/hold/1")().unwrap();
    let second = tokio::spawn(async move { send(addr, "GET", "/hold/2", &[], Bytes::new()).await });
    eventually("the second slow request to arrive", || async {
        holding("/hold/2")().is_some()
    })
    .await;
    let y = holding("/hold/2")().unwrap();
    assert_ne!(x, y, "the second slow request went to the busy server");
    let z = 3 - x - y;

    // New requests all go to the only idle server.
    for i in 0..20 {
        let r = get(&gw, &format!("/fast/{i}")).await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, backends[z].shared.name.to_owned())
        );
    }
    assert_eq!(backends[x].count("/fast/"), 0);
    assert_eq!(backends[y].count("/fast/"), 0);

    // Once the slow requests are answered, their servers take their share again (the count
    // of requests in flight went back down).
    for b in &backends {
        b.release();
    }
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);
    for i in 0..30 {
        assert_eq!(get(&gw, &format!("/after/{i}")).await.status, 200);
    }
    for b in &backends {
        let n = b.count("/after/");
        assert!((5..=15).contains(&n), "{} got {n} of 30", b.shared.name);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Passive ejection and readmission
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_dead_server_is_ejected_then_readmitted_after_eject_for() {
    const EJECT_FOR: Duration = Duration::from_millis(1500);
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::reserve("b").await,
        Backend::start("c").await,
    );
    let urls = [a.url(), b.url(), c.url()];
    let gw = start(&urls, &["eject_for: 1500ms"]).await;

    // Every GET succeeds: the one that met the refused connection was retried elsewhere.
    let before = Instant::now();
    for i in 0..30 {
        let r = get(&gw, &format!("/one/{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let took = before.elapsed();
    assert!(
        took < EJECT_FOR,
        "30 requests took {took:?}: too slow for this test"
    );
    assert_eq!(a.count("/one/") + c.count("/one/"), 30);
    // The one connection attempt is counted, and it was the only one (ejected for eject_for).
    assert_eq!(server_metrics(&gw, &urls[1]).await, (1.0, 1.0, 1.0));
    // The ejected server's turns are shared by the others, not all handed to its neighbour.
    let (on_a, on_c) = (a.count("/one/"), c.count("/one/"));
    assert!(on_a.abs_diff(on_c) <= 3, "a {on_a}, c {on_c}");

    // Back up, but still ejected: nothing reaches it until eject_for has passed since the
    // refusal (which happened after `before`).
    b.restart().await;
    loop {
        assert_eq!(get(&gw, "/two").await.status, 200);
        let done = Instant::now();
        if done >= before + EJECT_FOR {
            break;
        }
        assert_eq!(
            b.count("/"),
            0,
            "readmitted {:?} after the refusal",
            done - before
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("the restarted server to get traffic again", || async {
        assert_eq!(get(&gw, "/three").await.status, 200);
        b.count("/three") > 0
    })
    .await;
    assert_eq!(server_metric(&gw, "failures", &urls[1]).await, 1.0);
    // And its full share once more.
    for i in 0..30 {
        assert_eq!(get(&gw, &format!("/four/{i}")).await.status, 200);
    }
    assert_eq!(b.count("/four/"), 10);
}

/// With nowhere else to send, ejecting would only stretch a restart into `eject_for` of 502s.
#[tokio::test]
async fn a_single_server_is_tried_again_as_soon_as_it_is_back() {
    let only = Backend::start("only").await;
    let yaml = config(&[], &[]).replace(
        "    servers: []\n",
        &format!("    url: \"{}\"\n    eject_for: 10s\n", only.url()),
    );
    let gw = Gateway::start(&yaml, "").await;
    assert_eq!(get(&gw, "/up").await.status, 200);
    only.stop().await;
    for _ in 0..3 {
        let began = Instant::now();
        get(&gw, "/down").await.assert_error(502, "bad_gateway", "");
        assert!(began.elapsed() < Duration::from_secs(1));
    }
    only.restart().await;
    let r = get(&gw, "/again").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "only"));
    // Every refusal was a try, and a failure. (The first request after the kill may have
    // met the old pooled connection before it was seen closed: that one is not counted.)
    let (requests, failures, healthy) = server_metrics(&gw, &only.url()).await;
    assert!(failures >= 2.0, "{failures}");
    assert_eq!((requests - failures, healthy), (2.0, 1.0));
}

// ---------------------------------------------------------------------------------------------
// 3. A server killed and restarted under load
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_server_killed_and_restarted_under_load_costs_few_requests() {
    const WORKERS: usize = 4;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    // A little work per request, so some are in progress when the server dies.
    a.set_delay(Duration::from_millis(10));
    b.set_delay(Duration::from_millis(10));
    // `/hold` is answered at once by `a`, held by `b` until it dies.
    a.release();
    let gw = start(&[a.url(), b.url()], &["eject_for: 500ms"]).await;

    let results: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (addr, results, stop) = (gw.addr(), results.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let path = format!("/load/{w}/{i}");
                    let status = send(addr, "GET", &path, &[], Bytes::new()).await.status;
                    results
                        .lock()
                        .unwrap()
                        .push((Instant::now(), status.as_u16()));
                    i += 1;
                }
            })
        })
        .collect();

    eventually("load on both servers", || async {
        a.count("/load/") >= 20 && b.count("/load/") >= 20
    })
    .await;
    // And one request surely in progress there.
    let mut held = None;
    for i in 0.. {
        let (addr, path) = (gw.addr(), format!("/hold/{i}"));
        let request =
            tokio::spawn(async move { send(addr, "GET", &path, &[], Bytes::new()).await });
        let path = format!("/hold/{i}");
        eventually("the request to arrive", || async {
            a.count(&path) + b.count(&path) > 0
        })
        .await;
        if b.count(&path) > 0 {
            held = Some((request, path));
            break;
        }
        assert_eq!(request.await.unwrap().status, 200);
    }
    let (held, held_path) = held.unwrap();
    let killed = Instant::now();
    b.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.restart().await;
    let restarted = Instant::now();
    let served_before = b.count("/load/");
    eventually("the restarted server to take load again", || async {
        b.count("/load/") >= served_before + 20
    })
    .await;
    let back = Instant::now();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    let results = results.lock().unwrap().clone();
    let failed: Vec<_> = results.iter().filter(|(_, s)| *s != 200).collect();
    eprintln!(
        "kill/restart under load: {} requests, {} failed {:?}, server back {:?} after the kill",
        results.len(),
        failed.len(),
        failed
            .iter()
            .map(|(t, s)| (*s, t.saturating_duration_since(killed)))
            .collect::<Vec<_>>(),
        back - killed,
    );
    // Only requests already written to the dying server fail, as 502s, and only around the
    // kill: each worker's request in progress there, and at worst one request per pooled
    // connection to it not yet seen closed (at most one per worker too).
    assert!(
        failed.len() <= 2 * WORKERS,
        "{} requests failed",
        failed.len()
    );
    for (at, status) in &failed {
        assert_eq!(*status, 502);
        assert!(*at < restarted, "a failure after the restart");
    }
    assert!(results.iter().filter(|(t, _)| *t > killed).count() > 20);
    assert!(results.iter().all(|(t, s)| *t < restarted || *s == 200));
    // The request held by the server that died: a 502, not sent to the other one.
    held.await.unwrap().assert_error(502, "bad_gateway", "");
    assert_eq!(a.count(&held_path), 0);
}

// ---------------------------------------------------------------------------------------------
// 4. Active health checks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_failing_health_check_takes_a_server_out_and_passing_ones_bring_it_back() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let urls = [a.url(), b.url()];
    let check = "health_check: { path: /healthz, interval: 100ms, timeout: 500ms, \
                 unhealthy_after: 3, healthy_after: 2 }";
    let gw = start(&urls, &[check]).await;
    eventually("health checks on both servers", || async {
        a.health_answers(200) > 0 && b.health_answers(200) > 0
    })
    .await;
    assert_eq!(server_metric(&gw, "healthy", &urls[1]).await, 1.0);
    for i in 0..10 {
        assert_eq!(get(&gw, &format!("/in/{i}")).await.status, 200);
    }
    assert_eq!(b.count("/in/"), 5);

    // Failing: out after exactly `unhealthy_after` failed checks. The gauge is read first, so
    // when it shows 0 the failures that caused it are already in the server's log.
    b.set_health(500);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let healthy = server_metric(&gw, "healthy", &urls[1]).await;
        let failed = b.health_answers(500);
        if healthy == 0.0 {
            // (One or two more may have been answered while the gauge was read.)
            assert!(
                (3..=5).contains(&failed),
                "out after {failed} failed checks"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still healthy after {failed} failed checks"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let served = b.count("/");
    for i in 0..20 {
        let r = get(&gw, &format!("/out/{i}")).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "a"));
    }
    assert_eq!(
        b.count("/"),
        served,
        "a server out of rotation got requests"
    );

    // Passing again: back after `healthy_after` good checks.
    let passed_before = b.health_answers(200);
    b.set_health(200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let healthy = server_metric(&gw, "healthy", &urls[1]).await;
        let passed = b.health_answers(200) - passed_before;
        if healthy == 1.0 {
            assert!((2..=4).contains(&passed), "back after {passed} good checks");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still out after {passed} good checks"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..10 {
        assert_eq!(get(&gw, &format!("/back/{i}")).await.status, 200);
    }
    assert_eq!(b.count("/back/"), 5);
    // Health checks are not requests.
    assert_eq!(server_metric(&gw, "requests", &urls[1]).await, 10.0);
}

// ---------------------------------------------------------------------------------------------
// 5. Never twice
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_request_that_reached_a_server_is_never_sent_again() {
    let closer = Closer::start(0).await;
    let other = Backend::start("other").await;
    let urls = [closer.url(), other.url()];

    // POSTs: the one the closing server read gets a 502, and is not sent to the other.
    let gw = start(&urls, &["eject_for: 10s"]).await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(
            post(&gw, "/submit", &format!("order-{i}"))
                .await
                .status
                .as_u16(),
        );
    }
    let to_closer: Vec<String> = closer
        .seen()
        .iter()
        .map(|r| r.rsplit("\r\n\r\n").next().unwrap().to_owned())
        .collect();
    let to_other: Vec<String> = other
        .hits()
        .iter()
        .map(|h| String::from_utf8_lossy(&h.body).into_owned())
        .collect();
    assert_eq!(to_closer, ["order-0"], "{:?}", closer.seen());
    assert!(closer.seen()[0].starts_with("POST /submit HTTP/1.1\r\n"));
    assert_eq!(to_other, ["order-1", "order-2", "order-3"]);
    assert_eq!(statuses, [502, 200, 200, 200]);
    // It counts as a failure, and the server is ejected (closed before answering).
    assert_eq!(server_metrics(&gw, &urls[0]).await, (1.0, 1.0, 1.0));

    // A GET written to it is not retried either.
    let gw = start(&urls, &["eject_for: 10s"]).await;
    let r = get(&gw, "/read-once").await;
    r.assert_error(502, "bad_gateway", "");
    assert_eq!(closer.seen().len(), 2);
    assert!(closer.seen()[1].starts_with("GET /read-once HTTP/1.1\r\n"));
    assert_eq!(other.count("/read-once"), 0);
}

/// What a server's keep-alive timeout looks like when it strikes as a request goes out on
/// the idle connection: the request is written, the connection closes without an answer.
#[tokio::test]
async fn a_kept_alive_connection_closed_under_a_request_fails_it_but_ejects_nobody() {
    let closer = Closer::start(1).await;
    let other = Backend::start("other").await;
    let urls = [closer.url(), other.url()];
    let gw = start(&urls, &["eject_for: 10s"]).await;
    let mut got = Vec::new();
    for i in 1..=5 {
        let r = get(&gw, &format!("/{i}")).await;
        got.push((r.status.as_u16(), r.text()));
    }
    // 1 and 3 to the closing server: 1 opens a connection and is answered, 3 reuses it and
    // is read but not answered (502: it may have been processed, so not sent elsewhere);
    // 5 opens a new connection there: the server was not ejected.
    assert_eq!(got[0], (200, "closer".to_owned()));
    assert_eq!(got[2].0, 502, "{got:?}");
    assert_eq!(got[4], (200, "closer".to_owned()), "{got:?}");
    assert_eq!(other.count("/3"), 0);
    let seen: Vec<String> = closer
        .seen()
        .iter()
        .map(|r| r.lines().next().unwrap().to_owned())
        .collect();
    assert_eq!(
        seen,
        ["GET /1 HTTP/1.1", "GET /3 HTTP/1.1", "GET /5 HTTP/1.1"]
    );
    assert_eq!(server_metrics(&gw, &urls[0]).await, (3.0, 1.0, 1.0));
}

// ---------------------------------------------------------------------------------------------
// 6. All servers down
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn all_servers_down_is_a_quick_502() {
    let urls = [
        format!("http://{}", dead_addr().await),
        format!("http://{}", dead_addr().await),
    ];
    let gw = start(&urls, &[]).await;
    for (method, what) in [
        ("GET", "refused twice"),
        ("GET", "both ejected"),
        ("POST", "POST"),
    ] {
        let began = Instant::now();
        let r = send(gw.addr(), method, "/x", &[], Bytes::from_static(b"body")).await;
        let took = began.elapsed();
        r.assert_error(502, "bad_gateway", "unreachable");
        assert!(took < Duration::from_secs(1), "{what}: {took:?}");
    }
    for url in &urls {
        assert_eq!(server_metrics(&gw, url).await, (1.0, 1.0, 1.0), "{url}");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. https upstreams
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn https_upstreams_verify_the_ca_and_the_name() {
    let ca = Pki::new("authgate test CA");
    let ca_pem = ca.ca_pem();
    let files: &[(&str, &[u8])] = &[("ca.pem", ca_pem.as_bytes())];

    // Trusted through ca_file, the certificate naming the address: 200.
    let good = Backend::start_tls(
        "good",
        server_tls(&ca.server(&["127.0.0.1"], 1), &[H2, HTTP1], None),
    )
    .await;
    let gw = tls_gateway(&good, &["ca_file: ca.pem"], files).await;
    let r = get(&gw, "/hello").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "good"));
    assert_eq!(good.count("/hello"), 1);

    // A certificate for another name: refused, nothing sent; with `server_name` set to that
    // name: accepted.
    let named = Backend::start_tls(
        "named",
        server_tls(&ca.server(&["app.internal"], 1), &[H2, HTTP1], None),
    )
    .await;
    let gw = tls_gateway(&named, &["ca_file: ca.pem"], files).await;
    get(&gw, "/wrong-name")
        .await
        .assert_error(502, "bad_gateway", "");
    assert_eq!(named.hits().len(), 0);
    let gw = tls_gateway(
        &named,
        &["ca_file: ca.pem", "server_name: app.internal"],
        files,
    )
    .await;
    assert_eq!(get(&gw, "/right-name").await.status, 200);
    assert_eq!(named.count("/right-name"), 1);

    // A CA the gateway was not told to trust: as another ca_file, and as the system's roots.
    let stranger = Pki::new("unknown CA");
    let unknown = Backend::start_tls(
        "unknown",
        server_tls(&stranger.server(&["127.0.0.1"], 1), &[H2, HTTP1], None),
    )
    .await;
    let gw = tls_gateway(&unknown, &["ca_file: ca.pem"], files).await;
    get(&gw, "/other-ca")
        .await
        .assert_error(502, "bad_gateway", "");
    if rustls_native_certs::load_native_certs().certs.is_empty() {
        eprintln!("no system roots here: the system-roots case is skipped");
    } else {
        let gw = tls_gateway(&unknown, &[], &[]).await;
        get(&gw, "/system-roots")
            .await
            .assert_error(502, "bad_gateway", "");
    }
    assert_eq!(unknown.hits().len(), 0);
}

#[tokio::test]
async fn https_upstream_requiring_a_client_certificate() {
    let (ca, client_ca) = (Pki::new("server CA"), Pki::new("client CA"));
    let client = client_ca.client("gateway.internal");
    let backend = Backend::start_tls(
        "mtls",
        server_tls(
            &ca.server(&["127.0.0.1"], 1),
            &[H2, HTTP1],
            Some(&client_ca),
        ),
    )
    .await;
    let ca_pem = ca.ca_pem();
    let files: &[(&str, &[u8])] = &[
        ("ca.pem", ca_pem.as_bytes()),
        ("gw.crt", client.cert.as_bytes()),
        ("gw.key", client.key.as_bytes()),
    ];

    let gw = tls_gateway(&backend, &["ca_file: ca.pem"], files).await;
    get(&gw, "/anonymous")
        .await
        .assert_error(502, "bad_gateway", "");
    assert_eq!(backend.hits().len(), 0);

    let lines = [
        "ca_file: ca.pem",
        "client_cert_file: gw.crt",
        "client_key_file: gw.key",
    ];
    let gw = tls_gateway(&backend, &lines, files).await;
    let r = get(&gw, "/identified").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "mtls"));
    let hits = backend.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].client_cert.as_deref(), Some(client.der().as_ref()));
}

#[tokio::test]
async fn https_upstreams_speak_h2_when_offered_and_reuse_one_connection() {
    let ca = Pki::new("authgate test CA");
    let ca_pem = ca.ca_pem();
    let files: &[(&str, &[u8])] = &[("ca.pem", ca_pem.as_bytes())];
    let cert = ca.server(&["127.0.0.1"], 1);

    for (alpn, version) in [
        (&[H2, HTTP1][..], Version::HTTP_2),
        (&[HTTP1][..], Version::HTTP_11),
    ] {
        let backend = Backend::start_tls("tls", server_tls(&cert, alpn, None)).await;
        let gw = tls_gateway(&backend, &["ca_file: ca.pem"], files).await;
        for i in 0..20 {
            let r = post(&gw, &format!("/n/{i}"), &format!("body {i}")).await;
            assert_eq!(r.status, 200, "{version:?}: {}", r.text());
        }
        let hits = backend.hits();
        assert_eq!(hits.len(), 20);
        for (i, hit) in hits.iter().enumerate() {
            assert_eq!(hit.version, version);
            assert_eq!(
                (hit.method.as_str(), hit.path.as_str()),
                ("POST", format!("/n/{i}").as_str())
            );
            assert_eq!(hit.body, format!("body {i}"));
        }
        assert_eq!(
            backend.connections(),
            1,
            "{version:?}: one connection, kept alive"
        );
    }
}

/// A server that accepts TCP connections and then says nothing: the TLS handshake cannot end,
/// so `connect_timeout` strikes. Nothing was sent: the request goes to the other server.
#[tokio::test]
async fn a_server_stalling_the_handshake_costs_one_connect_timeout_then_is_skipped() {
    let ca = Pki::new("authgate test CA");
    let ca_pem = ca.ca_pem();
    let good = Backend::start_tls(
        "good",
        server_tls(&ca.server(&["127.0.0.1"], 1), &[H2, HTTP1], None),
    )
    .await;
    let stall = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_url = format!("https://{}", stall.local_addr().unwrap());
    let accepted: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let keep = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = stall.accept().await {
            keep.lock().unwrap().push(tcp);
        }
    });
    let lines = [
        "ca_file: ca.pem",
        "connect_timeout: 300ms",
        "eject_for: 10s",
    ];
    let yaml = config(&[stall_url.clone(), good.url()], &lines);
    let gw = Gateway::start_with_files(&yaml, "", &[("ca.pem", ca_pem.as_bytes())]).await;

    // The first request meets the stalling server: after connect_timeout it is retried on the
    // good one (nothing was sent), so it costs one connect_timeout, not a failure.
    let began = Instant::now();
    let r = get(&gw, "/first").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "good"));
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(good.count("/first"), 1);
    // Ejected: the next ones go to the good server without waiting.
    for i in 0..4 {
        let began = Instant::now();
        let r = get(&gw, &format!("/next/{i}")).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "good"));
        assert!(began.elapsed() < Duration::from_millis(290));
    }
    assert_eq!(accepted.lock().unwrap().len(), 1);
    assert_eq!(server_metrics(&gw, &stall_url).await, (1.0, 1.0, 1.0));
}

// ---------------------------------------------------------------------------------------------
// 8. `authgate check`
// ---------------------------------------------------------------------------------------------

/// Runs `authgate check` on this config (with these files beside it): exit code and output.
fn check(yaml: &str, files: &[(&str, &[u8])]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml.replace("{SECRET}", SECRET)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("AUTHGATE_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), text)
}

#[test]
fn check_reports_upstream_mistakes_and_lists_every_server() {
    let ca_pem = Pki::new("check CA").ca_pem();
    let files: &[(&str, &[u8])] = &[("ca.pem", ca_pem.as_bytes())];
    let http = [
        "http://127.0.0.1:9001".to_owned(),
        "http://127.0.0.1:9002".to_owned(),
    ];
    let https = [
        "https://127.0.0.1:9001".to_owned(),
        "https://127.0.0.1:9002".to_owned(),
    ];

    // TLS settings on http:// servers.
    let (code, out) = check(&config(&http, &["ca_file: ca.pem"]), files);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("upstreams.app.ca_file") && out.contains("https://"),
        "{out}"
    );

    // A CA file that is not there.
    let (code, out) = check(&config(&https, &["ca_file: missing-ca.pem"]), files);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("missing-ca.pem"), "{out}");

    // http and https in one upstream.
    let mixed = [http[0].clone(), https[1].clone()];
    let (code, out) = check(&config(&mixed, &[]), files);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("upstreams.app.servers") && out.contains("same scheme"),
        "{out}"
    );

    // A valid pool: every server in the route table.
    let three = [
        https[0].clone(),
        https[1].clone(),
        "https://127.0.0.1:9003".to_owned(),
    ];
    let (code, out) = check(
        &config(&three, &["ca_file: ca.pem", "balance: least_conn"]),
        files,
    );
    assert_eq!(code, 0, "{out}");
    for server in &three {
        assert!(out.contains(server.as_str()), "{server} missing in:\n{out}");
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Per-server metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn per_server_metrics_count_requests_failures_and_health() {
    let live = Backend::start("live").await;
    let urls = [live.url(), format!("http://{}", dead_addr().await)];
    let gw = start(&urls, &["eject_for: 10s"]).await;
    // Exported before any traffic.
    for url in &urls {
        assert_eq!(server_metrics(&gw, url).await, (0.0, 0.0, 1.0), "{url}");
    }
    for i in 0..6 {
        assert_eq!(get(&gw, &format!("/m/{i}")).await.status, 200);
    }
    assert_eq!(live.count("/m/"), 6);
    assert_eq!(server_metrics(&gw, &urls[0]).await, (6.0, 0.0, 1.0));
    // One refused connection: a request and a failure; the gauge follows health checks
    // only (this upstream has none).
    assert_eq!(server_metrics(&gw, &urls[1]).await, (1.0, 1.0, 1.0));
}
