//! Upstreams: where a route's requests go — one server or several, over http or https. The
//! forwarding step hands a request to [`Upstream::send`] and does not know how many servers
//! there are: a balancer picks a healthy one (`round_robin` or `least_conn`); a server that
//! refuses connections or breaks a new one before answering is ejected for `eject_for`; active
//! health checks (`health.rs`) take servers out and bring them back; a request that was not
//! sent at all is retried once on another server, one that may have reached a server never is.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};

use super::body::Body;
use super::pool::{Conn, Connector, Pool, Sent};
use crate::config::{Balance, Diagnostics, KeyPath, RawHealthCheck, RawUpstream, Source};
use crate::error::GatewayError;
use crate::metrics::ServerMetrics;
use crate::tls::{UpstreamTls, UpstreamTlsSettings};

/// One server of an upstream.
pub struct Server {
    /// The server as written in the config (`https://10.0.0.5:8443`), for logs and metrics.
    pub label: Arc<str>,
    pub host: String,
    pub port: u16,
    pub authority: Authority,
    pub pool: Arc<Pool>,
    /// Out of rotation until this instant (milliseconds on the process clock), after it
    /// refused a connection or broke one before answering.
    ejected_until: AtomicU64,
    /// Set by the active health check.
    down: AtomicBool,
    pub metrics: OnceLock<ServerMetrics>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

/// Milliseconds since the process started (a monotonic clock for ejections).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Server {
    /// Whether the balancer may send to it now.
    pub fn available(&self) -> bool {
        !self.down.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) <= now_ms()
    }

    /// Whether the active health check last found it healthy.
    pub fn healthy(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
        if let Some(m) = self.metrics.get() {
            m.healthy.set(i64::from(!down));
        }
    }

    fn eject(&self, upstream: &str, eject_for: Duration, why: &dyn std::fmt::Display) {
        let until = now_ms() + u64::try_from(eject_for.as_millis()).unwrap_or(u64::MAX);
        let was = self.ejected_until.swap(until, Ordering::Relaxed);
        if was <= now_ms() {
            tracing::warn!(upstream, server = %self.label, error = %why, eject_secs = eject_for.as_secs(), "upstream server ejected");
        }
    }

    fn count(&self, failed: bool) {
        if let Some(m) = self.metrics.get() {
            m.requests.inc();
            if failed {
                m.failures.inc();
            }
        }
    }
}

/// The servers of an upstream and how to reach them.
pub struct Servers {
    pub list: Vec<Arc<Server>>,
    pub balance: Balance,
    next: AtomicUsize,
    pub connector: Connector,
    pub https: bool,
    pub base_path: String,
    pub eject_for: Duration,
    pub health_check: Option<RawHealthCheck>,
}

/// Where an upstream's requests go.
pub enum Target {
    /// The built-in demo upstream: answers with the request it received, as JSON.
    Echo,
    Servers(Servers),
}

pub struct Upstream {
    pub name: Arc<str>,
    pub target: Target,
    pub timeout: Duration,
    /// Everything the upstream was built from (file contents included): an identical one in
    /// the next snapshot keeps this upstream, its pools and its health state.
    fingerprint: Vec<u8>,
    /// Whether its health checker runs (started once, however many snapshots share it).
    health_checker: AtomicBool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// The path prefix every forwarded path goes under (`""` for none).
    pub fn base_path(&self) -> &str {
        match &self.target {
            Target::Servers(s) => &s.base_path,
            Target::Echo => "",
        }
    }

    pub fn servers(&self) -> &[Arc<Server>] {
        match &self.target {
            Target::Servers(s) => &s.list,
            Target::Echo => &[],
        }
    }

    /// True the first time only: the caller starts the health checker.
    pub fn claim_health_checker(&self) -> bool {
        !self.health_checker.swap(true, Ordering::AcqRel)
    }

    /// Whether `other` was built from exactly the same settings (it can take this one's
    /// place, pools and health included).
    pub fn same_as(&self, other: &Upstream) -> bool {
        self.name == other.name && self.fingerprint == other.fingerprint
    }

    /// Sends the request to a server and returns the answer, its body streaming. `picked` is
    /// left holding the last server tried (for the request's span).
    pub async fn send(
        &self,
        mut req: Request<Body>,
        path: PathAndQuery,
        host: Option<&HeaderValue>,
        picked: &mut Option<Arc<Server>>,
    ) -> Result<Response<Body>, GatewayError> {
        let Target::Servers(servers) = &self.target else {
            return Err(GatewayError::UpstreamUnreachable);
        };
        let mut tried = None;
        for _ in 0..2 {
            let Some((index, server)) = servers.pick(tried) else {
                break;
            };
            tried = Some(index);
            let (conn, reused) = match server.pool.checkout() {
                Some(conn) => (conn, true),
                None => match servers.connector.connect(&server.host, server.port).await {
                    Ok(conn) => {
                        server.pool.share(&conn);
                        (conn, false)
                    }
                    // Nothing was sent: a refused or timed-out connect is retried elsewhere.
                    Err(e) => {
                        server.count(true);
                        servers.eject(&self.name, &server, &e);
                        *picked = Some(server);
                        continue;
                    }
                },
            };
            *req.uri_mut() = request_uri(&conn, servers.https, &server.authority, host, &path)?;
            let attempt = self.attempt(&server, servers, conn, reused, req).await;
            // The Arc moves, nothing is counted or copied: the report costs nothing.
            *picked = Some(server);
            match attempt? {
                Ok(resp) => return Ok(resp),
                Err(unsent) => req = unsent,
            }
        }
        Err(GatewayError::UpstreamUnreachable)
    }

    /// One try on one server: the answer, or the request back when it was not written.
    /// `reused`: the connection came from the pool (it was not opened for this request).
    async fn attempt(
        &self,
        server: &Arc<Server>,
        servers: &Servers,
        conn: Conn,
        reused: bool,
        req: Request<Body>,
    ) -> Result<Result<Response<Body>, Request<Body>>, GatewayError> {
        server.pool.in_flight.fetch_add(1, Ordering::Relaxed);
        let done = || server.pool.in_flight.fetch_sub(1, Ordering::Relaxed);
        match tokio::time::timeout(self.timeout, Pool::send(conn, req)).await {
            Err(_) => {
                done();
                server.count(true);
                Err(GatewayError::UpstreamTimeout)
            }
            Ok(Sent::Answered(resp, conn)) => {
                server.count(false);
                Ok(Ok(server.pool.body(resp, conn)))
            }
            Ok(Sent::NotSent(req)) => {
                done();
                Ok(Err(req))
            }
            Ok(Sent::Failed(e)) => {
                done();
                server.count(true);
                // Reset or closed before any answer on a connection opened for this request:
                // the server is in trouble. On a pooled connection this is what a server's
                // keep-alive timeout looks like when it strikes as the request goes out (the
                // request fails, it may have been read); ejecting for that would take a
                // healthy server out for `eject_for` (with one server: every request fails).
                // A server really down is ejected by the next connect it refuses.
                if !reused && (e.is_closed() || e.is_incomplete_message()) {
                    servers.eject(&self.name, server, &e);
                }
                Err(GatewayError::UpstreamFailed)
            }
        }
    }
}

/// The URI a request carries upstream: origin-form on HTTP/1.1 (the client's `Host` header
/// goes along); absolute on HTTP/2, where `:authority` takes the client's host so name-based
/// virtual hosting works the same.
fn request_uri(
    conn: &Conn,
    https: bool,
    server: &Authority,
    host: Option<&HeaderValue>,
    path: &PathAndQuery,
) -> Result<Uri, GatewayError> {
    let bad = |_| GatewayError::BadRequest("invalid request target");
    match conn {
        Conn::Http1(_) => Ok(Uri::from(path.clone())),
        Conn::Http2(_) => {
            let authority = host
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| server.clone());
            Uri::builder()
                .scheme(if https { Scheme::HTTPS } else { Scheme::HTTP })
                .authority(authority)
                .path_and_query(path.clone())
                .build()
                .map_err(bad)
        }
    }
}

impl Servers {
    /// Takes `server` out of rotation for `eject_for` — unless it is the upstream's only
    /// server: with nowhere else to send, ejecting it would only stretch a restart (a refused
    /// connection) into `eject_for` of 502s. Each request tries it instead, as before upstreams
    /// had several servers (and as nginx does with a single server).
    fn eject(&self, upstream: &str, server: &Server, why: &dyn std::fmt::Display) {
        if self.list.len() > 1 {
            server.eject(upstream, self.eject_for, why);
        }
    }

    /// A server to send to: the next available one in turn (`round_robin`) or the available
    /// one with the fewest requests in progress (`least_conn`), never the one just tried.
    fn pick(&self, tried: Option<usize>) -> Option<(usize, Arc<Server>)> {
        let n = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let usable = |i: &usize| Some(*i) != tried && self.list[*i].available();
        let index = match self.balance {
            // The `start`-th of the usable servers, counted among those only. (Walking from
            // `start` to the next usable server instead hands every turn of a server that is
            // out to the one after it in the list: with one of three out, 1/3 and 2/3.) A
            // server can come back or go out between the two passes: then the first usable.
            Balance::RoundRobin => {
                let count = (0..n).filter(usable).count();
                (0..n)
                    .filter(usable)
                    .nth(start % count.max(1))
                    .or_else(|| (0..n).find(usable))
            }
            Balance::LeastConn => (0..n)
                .map(|i| (start + i) % n)
                .filter(usable)
                .min_by_key(|&i| self.list[i].pool.in_flight.load(Ordering::Relaxed)),
        }?;
        Some((index, self.list[index].clone()))
    }
}

/// Compiles `upstreams:`: the upstreams that are valid, and their index by name.
pub fn compile(
    raw: &BTreeMap<String, RawUpstream>,
    diags: &mut Diagnostics,
) -> (Vec<Arc<Upstream>>, HashMap<String, usize>) {
    let mut index = HashMap::new();
    let mut upstreams = Vec::new();
    for (name, up) in raw {
        let at = KeyPath::root().key("upstreams").key(name);
        if let Some(u) = compile_one(name, up, &at, diags) {
            index.insert(name.clone(), upstreams.len());
            upstreams.push(Arc::new(u));
        }
    }
    (upstreams, index)
}

/// One server URL: scheme, host, port, base path.
struct ServerUrl {
    https: bool,
    host: String,
    port: u16,
    authority: Authority,
    base_path: String,
}

fn parse_server(url: &str) -> Result<ServerUrl, String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("`{url}` is not a URL (e.g. http://127.0.0.1:9000)"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(format!(
                "`{url}` must start with http:// or https:// (or be `builtin:echo`)"
            ));
        }
    };
    if uri.query().is_some() {
        return Err("an upstream URL cannot have a query string".into());
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err("credentials in upstream URLs are not supported".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(ServerUrl {
        https,
        port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
        host,
        authority,
        base_path: uri.path().trim_end_matches('/').to_owned(),
    })
}

fn tls_settings(raw: &RawUpstream, src: &Source) -> UpstreamTlsSettings {
    let path = |t: &Option<crate::config::Text>| t.as_ref().map(|t| src.resolve(t.as_str()));
    UpstreamTlsSettings {
        ca_file: path(&raw.ca_file),
        client_cert_file: path(&raw.client_cert_file),
        client_key_file: path(&raw.client_key_file),
        server_name: raw.server_name.as_ref().map(|t| t.as_str().to_owned()),
    }
}

/// The files an upstream's TLS settings read (watched for reloads).
pub fn files(raw: &RawUpstream, src: &Source) -> Vec<std::path::PathBuf> {
    let s = tls_settings(raw, src);
    [s.ca_file, s.client_cert_file, s.client_key_file]
        .into_iter()
        .flatten()
        .collect()
}

fn fingerprint(raw: &RawUpstream, src: &Source) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(format!("{raw:?}").as_bytes());
    for file in files(raw, src) {
        ctx.update(&std::fs::read(file).unwrap_or_default());
    }
    ctx.finish().as_ref().to_vec()
}

fn compile_one(
    name: &str,
    raw: &RawUpstream,
    at: &KeyPath,
    diags: &mut Diagnostics,
) -> Option<Upstream> {
    let fingerprint = fingerprint(raw, diags.source());
    let upstream = |target| Upstream {
        name: name.into(),
        target,
        timeout: raw.timeout.0,
        fingerprint,
        health_checker: AtomicBool::new(false),
    };
    if raw.servers.iter().any(|s| s.as_str() == "builtin:echo") {
        if raw.servers.len() > 1 {
            diags.at(
                &at.key("servers"),
                "`builtin:echo` cannot share an upstream with servers",
            );
            return None;
        }
        return Some(upstream(Target::Echo));
    }
    let servers = compile_servers(raw, at, diags)?;
    Some(upstream(Target::Servers(servers)))
}

fn compile_servers(raw: &RawUpstream, at: &KeyPath, diags: &mut Diagnostics) -> Option<Servers> {
    let mut parsed = Vec::new();
    for (i, url) in raw.servers.iter().enumerate() {
        let here = if raw.servers.len() == 1 {
            at.clone()
        } else {
            at.key("servers").index(i)
        };
        match parse_server(url.as_str()) {
            Ok(s) => parsed.push((url.as_str(), s)),
            Err(e) => diags.at(&here, e),
        }
    }
    if parsed.len() != raw.servers.len() {
        return None;
    }
    let (https, base_path) = (parsed[0].1.https, parsed[0].1.base_path.clone());
    if parsed
        .iter()
        .any(|(_, s)| s.https != https || s.base_path != base_path)
    {
        diags.at(
            &at.key("servers"),
            "every server of an upstream must use the same scheme and base path",
        );
        return None;
    }
    let tls = compile_tls(raw, https, at, diags)?;
    if let Some(h) = &raw.health_check {
        check_health_settings(h, &at.key("health_check"), diags);
    }
    let list = parsed
        .into_iter()
        .map(|(label, s)| {
            Arc::new(Server {
                label: label.trim_end_matches('/').into(),
                host: s.host,
                port: s.port,
                authority: s.authority,
                pool: Arc::new(Pool::default()),
                ejected_until: AtomicU64::new(0),
                down: AtomicBool::new(false),
                metrics: OnceLock::new(),
            })
        })
        .collect();
    Some(Servers {
        list,
        balance: raw.balance,
        next: AtomicUsize::new(0),
        connector: Connector {
            connect_timeout: raw.connect_timeout.0,
            tls,
        },
        https,
        base_path,
        eject_for: raw.eject_for.0,
        health_check: raw.health_check.clone(),
    })
}

/// The rustls client of an `https://` upstream (`Some(None)` for plain http; `None` on error).
fn compile_tls(
    raw: &RawUpstream,
    https: bool,
    at: &KeyPath,
    diags: &mut Diagnostics,
) -> Option<Option<UpstreamTls>> {
    if https {
        return match UpstreamTls::new(&tls_settings(raw, diags.source())) {
            Ok(tls) => Some(Some(tls)),
            Err(e) => {
                diags.at(at, e);
                None
            }
        };
    }
    let set = [
        ("ca_file", raw.ca_file.is_some()),
        ("client_cert_file", raw.client_cert_file.is_some()),
        ("client_key_file", raw.client_key_file.is_some()),
        ("server_name", raw.server_name.is_some()),
    ];
    for (field, _) in set.iter().filter(|(_, set)| *set) {
        diags.at(&at.key(field), "TLS settings need https:// servers");
    }
    Some(None)
}

fn check_health_settings(h: &RawHealthCheck, at: &KeyPath, diags: &mut Diagnostics) {
    if !h.path.as_str().starts_with('/') {
        diags.at(&at.key("path"), "must be an absolute path (e.g. /healthz)");
    }
    if h.interval.0.is_zero() || h.timeout.0.is_zero() {
        diags.at(at, "`interval` and `timeout` must be longer than 0s");
    }
    if h.unhealthy_after == 0 || h.healthy_after == 0 {
        diags.at(
            at,
            "`unhealthy_after` and `healthy_after` must be at least 1",
        );
    }
}
