//! The per-request pipeline, in a fixed order:
//! target → gateway endpoints (login, logout, JWKS) → route → token → allow → rewrite
//! headers → forward (or tunnel a WebSocket) → log.
//! Each step either hands the request on or ends it with one [`GatewayError`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{AUTHORIZATION, HOST, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::auth::issue::{IssueOptions, RESERVED_CLAIMS, issue};
use crate::auth::verify::unix_now;
use crate::auth::{TokenError, VerifiedToken};
use crate::config::AuthMode;
use crate::credentials::{self, TokenSource};
use crate::error::GatewayError;
use crate::login::LoginRequest;
use crate::login_page;
use crate::metrics::Metrics;
use crate::path::{normalize, strip_segments};
use crate::proxy::forward::{BodyState, BodyWatch, stream, stream_watched};
use crate::proxy::headers::{clean_request, remove_hop_by_hop, set_forwarded};
use crate::proxy::{Body, echo, upgrade};
use crate::routes::is_valid_authority;
use crate::runtime::{Route, Runtime, Target};
use crate::session::{
    encode_component, is_navigation, safe_next, same_origin, strip_session_cookie,
};
use crate::state::{MemoryStore, Mirror, Revocation, Store};
use http_body_util::BodyExt;
use tokio_util::task::TaskTracker;

/// Shared state of a running gateway: the current runtime, swapped whole on reload, and the
/// metrics, which outlive runtimes.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    metrics: Metrics,
    /// Revocations, sessions and login rate-limit buckets (kept across reloads; the config
    /// passes in the quotas).
    store: Arc<dyn Store>,
    /// The revocations requests are checked against, kept current by the store.
    mirror: Arc<Mirror>,
    /// Upgraded (WebSocket) connections, so shutdown can wait for them.
    tunnels: TaskTracker,
}

/// Which part of the gateway answered.
#[derive(Default, Clone, Copy)]
enum Answered {
    #[default]
    Unmatched,
    Login,
    Logout,
    Jwks,
    Route(usize),
}

/// What the log line and the metrics need to know about a request once it is answered.
#[derive(Default)]
struct Outcome {
    /// The normalized path, once known.
    path: Option<String>,
    answered: Answered,
    route: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    token: Option<Arc<VerifiedToken>>,
    /// The user who logged in (login route).
    user: Option<String>,
    /// A `Set-Cookie` to add to whatever the answer is (clearing a bad session cookie, or a
    /// sliding-session refresh).
    set_cookie: Option<HeaderValue>,
    /// A failure answered with a page rather than an error (login form), for the metrics.
    error: Option<GatewayError>,
    /// The id forwarded upstream (added after the client's headers are cleaned, so no
    /// `Connection` header can remove it) and returned to the client.
    request_id: Option<HeaderValue>,
}

/// Where the public keys of asymmetric signing keys are published (RFC 7517 JWK Set).
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn jwks_response(document: &bytes::Bytes) -> Response<Body> {
    use http_body_util::BodyExt;
    let mut resp = Response::new(
        http_body_util::Full::new(document.clone())
            .map_err(|e| match e {})
            .boxed(),
    );
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

/// A client's `X-Request-Id` is kept when it is short and plain; otherwise one is made.
fn sane_request_id(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// A request id unique in this process, and across processes by its random prefix: no
/// randomness is drawn per request.
fn new_request_id() -> HeaderValue {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut b);
        u64::from_le_bytes(b)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (i, byte) in prefix
        .to_be_bytes()
        .iter()
        .chain(n.to_be_bytes().iter())
        .enumerate()
    {
        text[2 * i] = HEX[usize::from(byte >> 4)];
        text[2 * i + 1] = HEX[usize::from(byte & 15)];
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The last token verified on one client connection. Clients send the same token on every
/// request of a keep-alive connection, so a byte comparison of the whole token replaces
/// hashing it and looking it up in the claims cache. Tied to the runtime generation that
/// verified it: after a reload the token is verified again.
#[derive(Default)]
pub struct ConnectionMemo {
    last: arc_swap::ArcSwapOption<Memo>,
}

struct Memo {
    generation: u64,
    token: Box<str>,
    verified: Arc<VerifiedToken>,
}

impl ConnectionMemo {
    fn get(&self, rt: &Runtime, token: &str) -> Option<Arc<VerifiedToken>> {
        let last = self.last.load();
        let memo = last.as_ref()?;
        (memo.generation == rt.generation
            && *memo.token == *token
            && memo.verified.exp > unix_now()
            && memo.verified.key_is_live())
        .then(|| memo.verified.clone())
    }

    fn set(&self, rt: &Runtime, token: &str, verified: &Arc<VerifiedToken>) {
        self.last.store(Some(Arc::new(Memo {
            generation: rt.generation,
            token: token.into(),
            verified: verified.clone(),
        })));
    }
}

impl Gateway {
    /// Must be called inside a tokio runtime: it starts the runtime's background work
    /// (remote JWKS fetching).
    pub fn new(runtime: Runtime) -> Arc<Self> {
        let metrics = Metrics::new();
        runtime.bind_metrics(&metrics);
        runtime.start_background();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let mirror = Arc::new(Mirror::default());
        mirror.spawn_sync(store.clone());
        Arc::new(Gateway {
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            store,
            mirror,
            tunnels: TaskTracker::new(),
        })
    }

    /// Records a revocation in the store and, at once, in this process's mirror.
    async fn revoke(&self, revocation: Revocation) -> Result<(), GatewayError> {
        self.store.revoke(revocation.clone()).await?;
        self.mirror.apply(&revocation);
        Ok(())
    }

    /// The revocation mirror (readiness).
    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    /// Upgraded connections still open (shutdown waits for them, up to the grace period).
    pub fn tunnels(&self) -> &TaskTracker {
        &self.tunnels
    }

    /// The runtime new requests will use.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Swaps in a new runtime; requests in flight keep the one they started with. Upstreams
    /// that did not change keep their connection pools.
    pub fn replace(&self, mut runtime: Runtime) {
        runtime.adopt_pools(&self.runtime.load());
        runtime.bind_metrics(&self.metrics);
        runtime.start_background();
        self.runtime.store(Arc::new(runtime));
    }

    fn record(&self, rt: &Runtime, outcome: &Outcome, err: Option<&GatewayError>, status: u16) {
        if let Some(bound) = rt.bound.get() {
            let counters = match outcome.answered {
                Answered::Unmatched => &bound.unmatched,
                Answered::Login => &bound.login,
                Answered::Logout => &bound.logout,
                Answered::Jwks => &bound.jwks,
                Answered::Route(i) => &bound.routes[i],
            };
            counters.record(status);
        }
        match err {
            Some(GatewayError::Token(reason) | GatewayError::LoginRedirect { reason, .. }) => {
                self.metrics.auth_failure(reason.reason())
            }
            Some(GatewayError::CrossSite) => self.metrics.auth_failure("cross_site_request"),
            Some(GatewayError::Forbidden(_)) => self.metrics.auth_failure("insufficient_scope"),
            Some(GatewayError::InvalidCredentials) => {
                self.metrics.auth_failure("invalid_credentials")
            }
            Some(GatewayError::TooManyRequests(_)) => self.metrics.auth_failure("rate_limited"),
            _ => {}
        }
        if matches!(outcome.answered, Answered::Login) {
            self.metrics.login(match (status, err) {
                (200, _) => "success",
                (_, Some(GatewayError::InvalidCredentials)) => "invalid_credentials",
                (_, Some(GatewayError::TooManyRequests(_))) => "rate_limited",
                _ => "bad_request",
            });
        }
    }

    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        memo: &ConnectionMemo,
    ) -> Response<Body> {
        let started = Instant::now();
        // One snapshot per request, held until the response is produced.
        let rt = self.runtime.load_full();
        let method = req.method().clone();
        let request_id = match req.headers().get(&X_REQUEST_ID) {
            Some(id) if sane_request_id(id) => id.clone(),
            _ => new_request_id(),
        };
        let mut outcome = Outcome {
            request_id: Some(request_id.clone()),
            ..Outcome::default()
        };
        let (mut resp, err) = match process(self, &rt, req, peer, memo, &mut outcome).await {
            Ok(resp) => (resp, outcome.error.take()),
            Err(err) => (err.to_response(), Some(err)),
        };
        if let Some(cookie) = outcome.set_cookie.take() {
            resp.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
        let status = resp.status().as_u16();
        self.record(&rt, &outcome, err.as_ref(), status);
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        tracing::info!(
            target: "authgate::access",
            method = %method,
            path = outcome.path.as_deref().unwrap_or("-"),
            route = outcome.route.as_deref().unwrap_or("-"),
            status,
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            sub = outcome
                .token
                .as_ref()
                .and_then(|t| t.sub.as_deref())
                .or(outcome.user.as_deref())
                .unwrap_or("-"),
            upstream = outcome.upstream.as_deref().unwrap_or("-"),
            request_id = request_id.to_str().unwrap_or("-"),
            reason = err.as_ref().map_or("-", GatewayError::reason),
            "request"
        );
        resp
    }
}

/// The request's host: from an absolute-form target (or HTTP/2 `:authority`), else from the
/// single `Host` header; it must be a valid `host[:port]`, and the two must agree.
fn request_host(parts: &http::request::Parts) -> Result<Option<HeaderValue>, GatewayError> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let header = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("several Host headers"));
    }
    let authority = parts.uri.authority().map(http::uri::Authority::as_str);
    if authority.is_some_and(|a| !is_valid_authority(a.as_bytes()))
        || header
            .as_ref()
            .is_some_and(|h| !is_valid_authority(h.as_bytes()))
    {
        return Err(GatewayError::BadRequest(
            "the host must be a plain host[:port] (no userinfo, no percent-encoding)",
        ));
    }
    match (authority, header) {
        (Some(authority), Some(h)) if !authority.eq_ignore_ascii_case(h.to_str().unwrap_or("")) => {
            Err(GatewayError::BadRequest(
                "request target and Host header name different hosts",
            ))
        }
        (Some(authority), _) => Ok(HeaderValue::from_str(authority).ok()),
        (None, None) if parts.version == Version::HTTP_11 => Err(GatewayError::BadRequest(
            "HTTP/1.1 requests must carry a Host header",
        )),
        (None, h) => Ok(h),
    }
}

/// Runs the route's auth mode and the revocation list: the verified token when there is one.
async fn authenticate(
    gw: &Gateway,
    rt: &Runtime,
    route: &Route,
    token: Option<&str>,
    memo: &ConnectionMemo,
) -> Result<Option<Arc<VerifiedToken>>, TokenError> {
    let verified = match (route.auth, token) {
        (AuthMode::None, _) => return Ok(None),
        (_, Some(token)) => match memo.get(rt, token) {
            Some(verified) => {
                rt.verifier.cache().record_hit();
                verified
            }
            None => {
                let verified = rt.verifier.verify(token).await?;
                memo.set(rt, token, &verified);
                verified
            }
        },
        (AuthMode::Required, None) => return Err(TokenError::Missing),
        (AuthMode::Optional, None) => return Ok(None),
    };
    if gw.mirror.is_revoked(
        verified.jti.as_deref(),
        verified.sid.as_deref(),
        verified.sub.as_deref(),
        verified.iat,
    ) {
        return Err(TokenError::Revoked);
    }
    Ok(Some(verified))
}

/// Runs the route's `allow` rules on every request (cached tokens included).
fn check_allow(route: &Route, verified: Option<&VerifiedToken>) -> Result<(), GatewayError> {
    if route.allow.is_empty() {
        return Ok(());
    }
    let Some(v) = verified else {
        return Err(TokenError::Missing.into());
    };
    match crate::auth::claims::first_failing(&route.allow, &v.claims) {
        Some(rule) => Err(GatewayError::Forbidden(rule.claim.as_str().to_owned())),
        None => Ok(()),
    }
}

/// Where a browser without a usable session is sent: the login page, with the page it asked
/// for in `next`.
fn login_redirect(
    rt: &Runtime,
    path: &str,
    query: Option<&str>,
    reason: TokenError,
) -> Option<GatewayError> {
    let login = rt.login.as_ref()?;
    let mut next = path.to_owned();
    if let Some(q) = query {
        next.push('?');
        next.push_str(q);
    }
    let location = format!("{}?next={}", login.path, encode_component(safe_next(&next)));
    Some(GatewayError::LoginRedirect {
        location: HeaderValue::from_str(&location).ok()?,
        reason,
    })
}

/// Sliding session: a fresh cookie when a cookie token issued by authgate is close to expiry.
fn refreshed_cookie(rt: &Runtime, token: &VerifiedToken) -> Option<HeaderValue> {
    let before = rt.cookie.refresh_before?;
    if !token.local || token.exp.saturating_sub(unix_now()) >= before.as_secs() {
        return None;
    }
    let sub = token.sub.as_deref()?;
    let mut claims = token.claims.clone();
    for reserved in RESERVED_CLAIMS {
        claims.remove(reserved);
    }
    let options = IssueOptions {
        issuer: rt.tokens.issuer.as_deref(),
        audience: rt.tokens.audience.as_deref(),
        ttl: rt.tokens.ttl,
        // The renewed token stays in its session, so logging out ends every copy.
        sid: token.sid.as_deref(),
    };
    let fresh = issue(rt.verifier.keys(), &options, sub, claims).ok()?;
    rt.cookie.set(&fresh, rt.tokens.ttl)
}

/// `POST {login.logout_path}`: revokes the token (until its `exp`) and its whole session (every
/// token carrying its `sid`, sliding renewals included), clears the cookie, then sends a
/// browser to the login page or answers an API client 204.
async fn logout(
    gw: &Gateway,
    rt: &Runtime,
    login: &crate::login::Login,
    parts: &http::request::Parts,
    host: Option<&str>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, GatewayError> {
    if parts.method != http::Method::POST {
        return Err(GatewayError::MethodNotAllowed("POST"));
    }
    if !same_origin(&parts.headers, host) {
        return Err(GatewayError::CrossSite);
    }
    let found = credentials::token(&parts.headers, &rt.cookie.name)?;
    if let Some((token, _)) = found
        && let Ok(verified) = rt.verifier.verify(token).await
    {
        if let Some(jti) = &verified.jti {
            gw.revoke(Revocation::Token {
                jti: jti.clone(),
                until: verified.exp,
            })
            .await?;
        }
        if let Some(sid) = &verified.sid {
            // Every token of the session was issued before now, so none outlives this.
            let until = unix_now() + rt.tokens.ttl.as_secs() + rt.tokens.leeway.as_secs();
            gw.revoke(Revocation::Session {
                sid: sid.clone(),
                until,
            })
            .await?;
        }
        outcome.token = Some(verified);
    }
    let from_browser = matches!(found, Some((_, TokenSource::Cookie)))
        || is_navigation(&http::Method::GET, &parts.headers)
        || parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let mut resp = if from_browser {
        let mut r = login_page::response(http::StatusCode::SEE_OTHER, String::new());
        if let Ok(location) = HeaderValue::from_str(&login.path) {
            r.headers_mut().insert(http::header::LOCATION, location);
        }
        r
    } else {
        let mut r = Response::new(http_body_util::Empty::new().map_err(|e| match e {}).boxed());
        *r.status_mut() = http::StatusCode::NO_CONTENT;
        r
    };
    resp.headers_mut()
        .append(http::header::SET_COOKIE, rt.cookie.clear());
    Ok(resp)
}

/// The path sent upstream: the normalized path, less `strip_prefix`, under the base path.
fn upstream_path(
    route: &Route,
    base: &str,
    path: &str,
    query: Option<&str>,
) -> Result<PathAndQuery, GatewayError> {
    let path = match &route.strip_prefix {
        Some(prefix) => strip_segments(path, prefix).unwrap_or(path),
        None => path,
    };
    let mut out = String::with_capacity(base.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(base);
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    PathAndQuery::try_from(out).map_err(|_| GatewayError::BadRequest("invalid request target"))
}

async fn process(
    gw: &Gateway,
    rt: &Runtime,
    req: Request<Incoming>,
    peer: SocketAddr,
    memo: &ConnectionMemo,
    outcome: &mut Outcome,
) -> Result<Response<Body>, GatewayError> {
    let (mut parts, body) = req.into_parts();
    if parts.uri.path().is_empty() || parts.method == http::Method::CONNECT {
        return Err(GatewayError::BadRequest(
            "only origin-form and absolute-form targets are served",
        ));
    }
    // Methods are case-sensitive (RFC 9110 §9.1), but some backends upper-case them: `get`
    // would miss a GET-only rule here and still be served as GET there.
    if parts
        .method
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        return Err(GatewayError::BadRequest("methods must be upper case"));
    }
    if !rt.serves_method(&parts.method) {
        return Err(GatewayError::MethodNotImplemented);
    }
    let host = request_host(&parts)?;
    let host_str = host.as_ref().and_then(|h| h.to_str().ok());
    let path = normalize(parts.uri.path())?;
    // Copied only when the access log will print it.
    if tracing::enabled!(target: "authgate::access", tracing::Level::INFO) {
        outcome.path = Some(path.clone().into_owned());
    }

    // The gateway's own endpoints come before the routes.
    if let Some(login) = &rt.login {
        if *path == *login.path {
            outcome.route = Some(Arc::from("(login)"));
            outcome.answered = Answered::Login;
            let request = LoginRequest {
                method: &parts.method,
                headers: &parts.headers,
                host: host_str,
                query: parts.uri.query(),
                body,
                peer,
                limits: &*gw.store,
            };
            let answer = login
                .handle(request, rt.verifier.keys(), &rt.tokens, &rt.cookie)
                .await;
            outcome.user = answer.user;
            outcome.error = answer.error;
            return Ok(answer.response);
        }
        if *path == *login.logout_path {
            outcome.route = Some(Arc::from("(logout)"));
            outcome.answered = Answered::Logout;
            return logout(gw, rt, login, &parts, host_str, outcome).await;
        }
    }
    if *path == *JWKS_PATH
        && let Some(jwks) = &rt.jwks
    {
        outcome.route = Some(Arc::from("(jwks)"));
        outcome.answered = Answered::Jwks;
        return Ok(jwks_response(jwks));
    }

    let (index, route) = rt
        .routes
        .find(&parts.method, host_str, &path)
        .ok_or(GatewayError::NoRoute)?;
    outcome.route = Some(route.name.clone());
    outcome.answered = Answered::Route(index);

    let found = credentials::token(&parts.headers, &rt.cookie.name)?;
    let source = found.map(|(_, source)| source);
    let from_cookie = source == Some(TokenSource::Cookie);
    // Only a refused request needs to know whether it is a browser navigation.
    let refused = |reason: TokenError, outcome: &mut Outcome| {
        if from_cookie {
            outcome.set_cookie = Some(rt.cookie.clear());
        }
        if is_navigation(&parts.method, &parts.headers)
            && let Some(redirect) = login_redirect(rt, &path, parts.uri.query(), reason.clone())
        {
            return redirect;
        }
        GatewayError::Token(reason)
    };
    let verified = match authenticate(gw, rt, route, found.map(|(t, _)| t), memo).await {
        Ok(v) => v,
        // An optional route treats an unusable session cookie as no session.
        Err(_) if from_cookie && route.auth == AuthMode::Optional => {
            outcome.set_cookie = Some(rt.cookie.clear());
            None
        }
        Err(reason) => return Err(refused(reason, outcome)),
    };
    outcome.token = verified.clone();
    match check_allow(route, verified.as_deref()) {
        Err(GatewayError::Token(reason)) => return Err(refused(reason, outcome)),
        other => other?,
    }
    if from_cookie && let Some(v) = &verified {
        outcome.set_cookie = refreshed_cookie(rt, v);
    }

    // Render every injected value before touching the request: a claim that cannot be a
    // header fails the request rather than being dropped or passed through raw.
    let mut injected = Vec::with_capacity(route.headers.len());
    if let Some(v) = &verified {
        for (name, index) in &route.headers {
            match v.header_value(*index) {
                Ok(Some(value)) => injected.push((name, value.clone())),
                Ok(None) => {}
                Err(e) => {
                    let claim = rt.verifier.header_claims()[*index].as_str().to_owned();
                    return Err(TokenError::UnrenderableClaim(claim, e).into());
                }
            }
        }
    }

    let upstream = rt.upstream(route);
    outcome.upstream = Some(upstream.name.clone());
    let path_and_query = match &upstream.target {
        Target::Http { base_path, .. } => {
            upstream_path(route, base_path, &path, parts.uri.query())?
        }
        Target::Echo => upstream_path(route, "", &path, parts.uri.query())?,
    };
    let client_upgrade = upgrade::client_handshake(&parts.headers).and_then(|handshake| {
        let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
        Some((on_upgrade, handshake))
    });

    // Strip, then inject: hop-by-hop and `Connection`-named headers go first, then every
    // spelling of every injected name, and only then the gateway's own values are added, so
    // nothing the client sends can remove or replace them.
    let headers = &mut parts.headers;
    clean_request(headers, &rt.strip);
    if let Some(id) = &outcome.request_id {
        headers.insert(X_REQUEST_ID.clone(), id.clone());
    }
    // Only the credential that was verified goes upstream, and only when the route asks for
    // it: an unverified one (another scheme, a shape we refused to read, a cookie that did not
    // verify on an optional route) never does.
    match (route.forward_token && verified.is_some(), source) {
        (true, Some(TokenSource::Header)) => {}
        (true, Some(TokenSource::Cookie)) => {
            headers.remove(AUTHORIZATION);
        }
        _ => {
            headers.remove(AUTHORIZATION);
            strip_session_cookie(headers, &rt.cookie.name);
        }
    }
    set_forwarded(headers, peer.ip(), host.as_ref());
    if let Some(h) = &host {
        // HTTP/2 clients send `:authority` instead of Host; the upstream gets a Host either way.
        headers.insert(HOST, h.clone());
    }
    for (name, value) in injected {
        headers.insert(name.clone(), value);
    }
    if client_upgrade.is_some() {
        upgrade::restore_upgrade_headers(headers);
    }
    parts.version = Version::HTTP_11;

    // Body limit: a declared length over it is refused before anything is forwarded; a
    // streamed body is cut off when it passes the limit. The watch tells a body the client
    // broke (or that hit the limit) from an upstream failure.
    let watch = Arc::new(BodyWatch::default());
    let body = if hyper::body::Body::is_end_stream(&body) {
        stream(body)
    } else {
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let (Some(max), Some(n)) = (route.max_body, declared)
            && n > max
        {
            return Err(GatewayError::PayloadTooLarge);
        }
        stream_watched(body, route.max_body, watch.clone())
    };
    let mut upstream_req = Request::from_parts(parts, body);
    let mut resp = match &upstream.target {
        Target::Echo => {
            *upstream_req.uri_mut() = Uri::from(path_and_query);
            return Ok(echo::respond(&upstream_req));
        }
        Target::Http {
            scheme,
            authority,
            client,
            ..
        } => {
            *upstream_req.uri_mut() = Uri::builder()
                .scheme(scheme.clone())
                .authority(authority.clone())
                .path_and_query(path_and_query)
                .build()
                .map_err(|_| GatewayError::BadRequest("invalid request target"))?;
            let sent = Instant::now();
            let result = client.send(upstream_req).await;
            if let Some(bound) = rt.bound.get() {
                bound.upstreams[route.upstream].observe(sent.elapsed());
            }
            if result.is_err() {
                match watch.state() {
                    BodyState::OverLimit => return Err(GatewayError::PayloadTooLarge),
                    BodyState::ClientError => {
                        return Err(GatewayError::BadRequest(
                            "the request body could not be read",
                        ));
                    }
                    BodyState::Fine => {}
                }
            }
            result?
        }
    };
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        match client_upgrade {
            Some((client, handshake)) if handshake.accepted_by(resp.headers()) => {
                remove_hop_by_hop(resp.headers_mut());
                upgrade::restore_upgrade_headers(resp.headers_mut());
                let upstream_io = hyper::upgrade::on(&mut resp);
                gw.tunnels.spawn(upgrade::tunnel(client, upstream_io));
            }
            // A 101 the client never asked for, or that is not the WebSocket handshake it
            // asked for, cannot be honoured: a raw tunnel would bypass every rule.
            _ => return Err(GatewayError::UpstreamFailed),
        }
    } else {
        remove_hop_by_hop(resp.headers_mut());
    }
    Ok(resp.map(stream))
}
