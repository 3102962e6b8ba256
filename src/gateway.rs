//! A running gateway: its current snapshot (swapped whole on reload), its state (store and
//! revocation mirror), its metrics, and the pipeline every request goes through, in a fixed
//! order: trace context → view (target, method, host, path) → the gateway's own endpoints →
//! decide (`policy::authorize`) → act (`proxy::forward`) → count, log and end the span. Each
//! step either hands the request on or ends it with one [`GatewayError`], mapped to an answer
//! in one place.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{CACHE_CONTROL, HeaderName, HeaderValue, SET_COOKIE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::auth::VerifiedToken;
use crate::boot::Boot;
use crate::endpoints::Endpoint;
use crate::error::GatewayError;
use crate::login::{self, Services};
use crate::metrics::Metrics;
use crate::policy;
use crate::proxy::Body;
use crate::proxy::forward::{Forwarding, Sent, forward};
use crate::request::{Conn, RequestView, Target};
use crate::snapshot::{Loaded, Snapshot};
use crate::state::{MemoryStore, State, Store};
use crate::telemetry::{Propagation, RequestTrace, SpanFacts, Traces};

/// Shared state of a running gateway.
pub struct Gateway {
    /// What only a restart changes (a reload warns when the file says otherwise).
    boot: Boot,
    snapshot: ArcSwap<Snapshot>,
    metrics: Metrics,
    /// Revocations, sessions and login rate-limit buckets (kept across reloads; the config
    /// passes in the quotas), and the revocation mirror requests are checked against.
    state: State,
    /// Upgraded (WebSocket) connections, so shutdown can wait for them.
    tunnels: TaskTracker,
    /// The HTTPS listener's certificate, reloaded with the config files.
    tls: std::sync::OnceLock<Arc<crate::tls::ServerTls>>,
    /// The trace export (`telemetry.traces`), for the life of the process.
    traces: Option<Traces>,
}

/// Which part of the gateway answered.
#[derive(Default, Clone, Copy)]
enum Answered {
    #[default]
    Unmatched,
    Endpoint(Endpoint),
    Route(usize),
}

/// What the log line and the metrics need to know about a request once it is answered.
#[derive(Default)]
struct Outcome {
    /// The normalized path, once known (only when the access log will print it).
    path: Option<String>,
    answered: Answered,
    /// Whether the request was sent (or tried) upstream.
    forwarded: bool,
    token: Option<Arc<VerifiedToken>>,
    /// Who logged in or out (login endpoints).
    user: Option<String>,
    /// A `Set-Cookie` to add to whatever the answer is.
    set_cookie: Option<HeaderValue>,
    /// A failure answered with a page rather than an error (login form), for the metrics.
    error: Option<GatewayError>,
    /// Whether the span is recorded: only then is the decision timed.
    timed: bool,
    /// Time spent deciding (route, token, revocation, `allow`), when timed.
    auth_time: Option<Duration>,
    /// The upstream server and its answer time, when the request was sent.
    sent: Sent,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
    static COUNTER: AtomicU64 = AtomicU64::new(0);
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

/// The request's id: the client's `X-Request-Id` when it is short and plain, else a new one.
pub fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(id) if sane_request_id(id) => id.clone(),
        _ => new_request_id(),
    }
}

fn jwks_response(document: &bytes::Bytes) -> Response<Body> {
    let mut resp = crate::response::full(StatusCode::OK, "application/json", document.clone());
    resp.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

impl Gateway {
    /// A gateway on the in-process store. Must be called inside a tokio runtime: it starts the
    /// snapshot's background work (remote JWKS fetching) and the revocation mirror's sync.
    pub fn new(loaded: Loaded) -> Arc<Self> {
        Gateway::with_store(loaded, Arc::new(MemoryStore::default()))
    }

    /// A gateway keeping its state in `store`.
    pub fn with_store(loaded: Loaded, store: Arc<dyn Store>) -> Arc<Self> {
        let Loaded { boot, snapshot } = loaded;
        let metrics = Metrics::new();
        snapshot.bind_metrics(&metrics);
        snapshot.start_background();
        let state = State::start(store, metrics.store.clone());
        let traces = boot.traces.as_ref().and_then(|settings| {
            match Traces::start(settings, metrics.traces.clone()) {
                Ok(traces) => {
                    tracing::info!(endpoint = %settings.endpoint, "exporting traces");
                    Some(traces)
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the trace export: serving without it");
                    None
                }
            }
        });
        Arc::new(Gateway {
            boot,
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            state,
            tunnels: TaskTracker::new(),
            tls: std::sync::OnceLock::new(),
            traces,
        })
    }

    /// The trace export, when `telemetry.traces` is configured (shutdown flushes it).
    pub fn traces(&self) -> Option<&Traces> {
        self.traces.as_ref()
    }

    /// Upgraded connections still open (shutdown waits for them, up to the grace period).
    pub fn tunnels(&self) -> &TaskTracker {
        &self.tunnels
    }

    /// Records the HTTPS listener's certificate holder (once, at start).
    pub fn set_tls(&self, tls: Arc<crate::tls::ServerTls>) {
        let _ = self.tls.set(tls);
    }

    /// The HTTPS listener's certificate holder, when there is one.
    pub fn tls(&self) -> Option<&Arc<crate::tls::ServerTls>> {
        self.tls.get()
    }

    /// The settings it started with.
    pub fn boot(&self) -> &Boot {
        &self.boot
    }

    /// The snapshot new requests will use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Swaps in a new snapshot; requests in flight keep the one they started with. Upstreams
    /// that did not change keep their connection pools.
    pub fn replace(&self, mut snapshot: Snapshot) {
        snapshot.adopt_pools(&self.snapshot.load());
        snapshot.bind_metrics(&self.metrics);
        snapshot.start_background();
        self.snapshot.store(Arc::new(snapshot));
    }

    /// Counts a request in its route's (or endpoint's) series and its refusal reason.
    fn record(&self, snap: &Snapshot, outcome: &Outcome, err: Option<&GatewayError>, status: u16) {
        if let Some(bound) = snap.bound.get() {
            let counters = match outcome.answered {
                Answered::Unmatched => &bound.unmatched,
                Answered::Endpoint(e) => &bound.endpoints[e.index()],
                Answered::Route(i) => &bound.routes[i],
            };
            counters.record(status);
        }
        if let Some(reason) = err.and_then(GatewayError::auth_failure) {
            self.metrics.auth_failure(reason);
        }
        if matches!(outcome.answered, Answered::Endpoint(Endpoint::Login)) {
            self.metrics.login(match (status, err) {
                (200 | 303, None) => "success",
                (
                    _,
                    Some(e @ (GatewayError::InvalidCredentials | GatewayError::TooManyRequests(_))),
                ) => e.code(),
                _ => "bad_request",
            });
        }
    }

    /// Answers one request on `conn`; logs and counts it.
    pub async fn handle(&self, req: Request<Incoming>, conn: &Conn) -> Response<Body> {
        let started = Instant::now();
        // One snapshot per request, held until the response is produced.
        let snap = self.snapshot.load_full();
        let method = req.method().clone();
        let version = req.version();
        let request_id = request_id(req.headers());
        let trace = RequestTrace::start(self.traces.as_ref(), req.headers());
        let mut outcome = Outcome {
            timed: trace.recording(),
            ..Outcome::default()
        };
        let (mut resp, err) = match self
            .process(
                &snap,
                req,
                conn,
                (&request_id, &trace.propagation),
                &mut outcome,
            )
            .await
        {
            Ok(resp) => (resp, outcome.error.take()),
            Err(err) => (err.to_response(), Some(err)),
        };
        if let Some(cookie) = outcome.set_cookie.take() {
            resp.headers_mut().append(SET_COOKIE, cookie);
        }
        let status = resp.status().as_u16();
        self.record(&snap, &outcome, err.as_ref(), status);
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        if matches!(outcome.answered, Answered::Endpoint(Endpoint::ForwardAuth)) && status == 200 {
            trace.answer_headers(resp.headers_mut());
        }
        let refused =
            matches!(status, 401 | 403) || err.as_ref().is_some_and(|e| e.auth_failure().is_some());
        trace.finish(self.traces.as_ref(), || {
            let mut facts = SpanFacts {
                method: &method,
                version,
                scheme: conn.scheme.as_str(),
                route: None,
                http_route: None,
                status,
                sub: None,
                reason: err.as_ref().map(GatewayError::reason),
                upstream: None,
                upstream_address: None,
                auth_time: outcome.auth_time,
                upstream_time: outcome.sent.elapsed,
                request_id: request_id.to_str().unwrap_or("-"),
            };
            describe(&snap, &outcome, refused, &mut facts);
            facts
        });
        log(
            &snap,
            &method,
            &outcome,
            status,
            started,
            &request_id,
            err.as_ref(),
        );
        resp
    }

    /// View, endpoint or decide, act.
    async fn process(
        &self,
        snap: &Snapshot,
        req: Request<Incoming>,
        conn: &Conn,
        (request_id, trace): (&HeaderValue, &Propagation),
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, body) = req.into_parts();
        // The target borrows the URI while the headers are rewritten and the parts move on;
        // the upstream gets a URI of its own.
        let uri = std::mem::take(&mut parts.uri);
        let target = Target::check(&parts.method, &uri, parts.version, &parts.headers, |m| {
            snap.serves_method(m)
        })?;
        // Copied only when the access log will print it.
        if tracing::enabled!(target: "authgate::access", tracing::Level::INFO) {
            outcome.path = Some(target.path.clone().into_owned());
        }
        let view = RequestView::new(&parts.method, &target, &parts.headers, conn);
        if let Some(endpoint) = snap.endpoints.find(view.path) {
            outcome.answered = Answered::Endpoint(endpoint);
            return self.endpoint(snap, endpoint, &view, body, outcome).await;
        }
        let deciding = outcome.timed.then(Instant::now);
        let decision = policy::authorize(snap, &self.state.mirror, &view).await;
        outcome.auth_time = deciding.map(|t| t.elapsed());
        let grant = match decision {
            Ok(grant) => grant,
            Err(denial) => {
                outcome.answered = denial.route.map_or(Answered::Unmatched, Answered::Route);
                outcome.token = denial.token;
                outcome.set_cookie = denial.set_cookie;
                return Err(denial.error);
            }
        };
        outcome.answered = Answered::Route(grant.route);
        outcome.forwarded = true;
        outcome.token = grant.token.clone();
        outcome.set_cookie = grant.set_cookie.clone();
        let forwarding = Forwarding {
            snapshot: snap,
            grant: &grant,
            path: &target.path,
            query: target.query,
            host: target.host.as_ref(),
            request_id,
            conn,
            tunnels: &self.tunnels,
            trace,
        };
        forward(&forwarding, parts, body, &mut outcome.sent).await
    }

    /// The gateway's own endpoints.
    async fn endpoint(
        &self,
        snap: &Snapshot,
        endpoint: Endpoint,
        view: &RequestView<'_>,
        body: Incoming,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, GatewayError> {
        let services = Services {
            issuer: &snap.issuer,
            next: &snap.next,
            verifier: &snap.verifier,
            cookie: &snap.cookie,
            state: &self.state,
        };
        if let (Endpoint::ForwardAuth, Some(fa)) = (endpoint, &snap.forward_auth) {
            let (response, grant) = fa.verify(snap, &self.state.mirror, view).await?;
            outcome.token = grant.and_then(|g| g.token);
            return Ok(response);
        }
        let answer = match (endpoint, &snap.login, &snap.jwks) {
            (Endpoint::Jwks, _, Some(document)) => return Ok(jwks_response(document)),
            (Endpoint::Login, Some(l), _) => l.login(view, body, &services).await,
            (Endpoint::Logout, Some(l), _) => l.logout(view, body, &services).await?,
            (Endpoint::Refresh, Some(l), _) => l.refresh(view, body, &services).await?,
            (Endpoint::OidcStart(i), Some(l), _) => l.oidc_start(i, view, &services).await,
            (Endpoint::OidcCallback(i), Some(l), _) => l.oidc_callback(i, view, &services).await,
            // The table only holds endpoints that are configured.
            _ => return Err(GatewayError::NoRoute),
        };
        let login::Answer {
            response,
            user,
            error,
        } = answer;
        outcome.user = user;
        outcome.error = error;
        Ok(response)
    }
}

/// The span's facts about who answered: the route, the subject (only when the request was not
/// refused), the upstream and its server.
fn describe<'a>(
    snap: &'a Snapshot,
    outcome: &'a Outcome,
    refused: bool,
    facts: &mut SpanFacts<'a>,
) {
    match outcome.answered {
        Answered::Unmatched => {}
        Answered::Endpoint(e) => facts.route = Some(e.label()),
        Answered::Route(i) => {
            let route = snap.routes.get(i);
            facts.route = Some(&route.name);
            facts.http_route = Some(snap.routes.matcher(i).path.template());
            if outcome.forwarded {
                facts.upstream = snap.upstream(route).map(|u| &*u.name);
            }
        }
    }
    if !refused {
        facts.sub = outcome
            .token
            .as_ref()
            .and_then(|t| t.sub.as_deref())
            .or(outcome.user.as_deref());
    }
    facts.upstream_address = outcome.sent.server.as_ref().map(|s| s.authority.as_str());
}

/// The access log: one line per request. Never a token, a cookie or a query string.
fn log(
    snap: &Snapshot,
    method: &http::Method,
    outcome: &Outcome,
    status: u16,
    started: Instant,
    request_id: &HeaderValue,
    err: Option<&GatewayError>,
) {
    let (route, upstream) = match outcome.answered {
        Answered::Unmatched => ("-", "-"),
        Answered::Endpoint(e) => (e.label(), "-"),
        Answered::Route(i) => {
            let route = snap.routes.get(i);
            let upstream = snap.upstream(route).map_or("-", |u| &*u.name);
            (&*route.name, if outcome.forwarded { upstream } else { "-" })
        }
    };
    tracing::info!(
        target: "authgate::access",
        method = %method,
        path = outcome.path.as_deref().unwrap_or("-"),
        route,
        status,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        sub = outcome
            .token
            .as_ref()
            .and_then(|t| t.sub.as_deref())
            .or(outcome.user.as_deref())
            .unwrap_or("-"),
        upstream,
        request_id = request_id.to_str().unwrap_or("-"),
        reason = err.map_or("-", GatewayError::reason),
        "request"
    );
}
