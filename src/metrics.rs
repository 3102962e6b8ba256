//! Prometheus metrics (`prometheus-client`), one registry per running gateway. The request
//! path only touches atomics: per-route and per-upstream handles are looked up when a
//! runtime is installed, never per request. Label values are bounded: route and upstream
//! names from the config, fixed reason and result words — never paths.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::endpoints::Endpoint;
use crate::state::StoreMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// Upper bounds of the upstream latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A lock-free histogram: one atomic per bucket, the sum kept in microseconds.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    /// One slot per bound in `LATENCY_BUCKETS`, then +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.inner.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.inner.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let sum = self.inner.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let count = self.inner.count.load(Ordering::Relaxed);
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Request counters of one route (or endpoint), by status class.
///
/// 2xx to 5xx can happen anywhere, so they are registered at 0 up front: `rate()`, ratios and
/// alerts on them work from the first scrape, not from the first request of each class.
/// 1xx is different: the only 1xx a client ever gets from authgate as an answer is the 101 of
/// a WebSocket upgrade an upstream accepted (hyper's `100 Continue` is not an answer and is
/// never counted), so a `1xx` series is registered only for routes that forward to real
/// servers. Everywhere else it cannot happen, and a zero series that can never move would
/// only be noise in every query.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    /// 2xx, 3xx, 4xx, 5xx (anything from 600 up counts as 5xx).
    by_class: [Counter; 4],
    informational: Informational,
}

/// The `1xx` series of a route.
#[derive(Clone, Debug)]
enum Informational {
    Registered(Counter),
    /// Not expected here: created if it ever happens anyway, so that no answer goes
    /// uncounted.
    OnFirstUse(Family<RequestLabels, Counter>, RequestLabels),
}

impl RouteMetrics {
    pub fn record(&self, status: u16) {
        match usize::from(status / 100) {
            0 | 1 => match &self.informational {
                Informational::Registered(counter) => counter.inc(),
                Informational::OnFirstUse(family, labels) => family.get_or_create(labels).inc(),
            },
            class => self.by_class[class.min(5) - 2].inc(),
        };
    }
}

/// Results of a login attempt (`authgate_login_attempts_total`): the same words as the error
/// codes in the answer's body and the log.
pub const LOGIN_RESULTS: [&str; 4] = [
    "success",
    "invalid_credentials",
    "too_many_requests",
    "bad_request",
];

/// The metric handles of one snapshot, looked up once when it is installed (never per request).
#[derive(Debug)]
pub struct Bound {
    pub routes: Vec<RouteMetrics>,
    pub upstreams: Vec<LatencyHistogram>,
    /// One per [`Endpoint`] label, in [`Endpoint::LABELS`] order.
    pub endpoints: Vec<RouteMetrics>,
    pub unmatched: RouteMetrics,
}

impl Bound {
    /// `routes`: each route's name and whether it forwards to real servers (and so may
    /// answer a WebSocket upgrade with 101).
    pub fn new(metrics: &Metrics, routes: &[(&str, bool)], upstreams: &[&str]) -> Bound {
        Bound {
            routes: routes
                .iter()
                .map(|(name, upgrades)| metrics.route(name, *upgrades))
                .collect(),
            upstreams: upstreams.iter().map(|u| metrics.upstream(u)).collect(),
            // The gateway's own endpoints and unmatched requests never upgrade.
            endpoints: Endpoint::LABELS
                .iter()
                .map(|label| metrics.route(label, false))
                .collect(),
            unmatched: metrics.route(UNMATCHED, false),
        }
    }
}

/// The `route` label of requests no route and no endpoint took.
pub const UNMATCHED: &str = "(none)";

/// One upstream server's series: requests sent, failures, and whether it is in rotation.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    pub requests: Counter,
    pub failures: Counter,
    pub healthy: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    upstream: String,
    server: String,
}

/// The trace export's series (`telemetry.traces`); at 0 when tracing is off.
#[derive(Debug, Clone)]
pub struct TraceMetrics {
    pub exported: Counter,
    /// Spans dropped because the export queue was full...
    pub dropped_queue_full: Counter,
    /// ...or because the export that carried them failed.
    pub dropped_export_failed: Counter,
    pub export_failures: Counter,
}

impl TraceMetrics {
    fn register(r: &mut Registry) -> TraceMetrics {
        let exported = counter(
            r,
            "trace_spans_exported",
            "Request spans the collector accepted",
        );
        let dropped = counter_family(
            r,
            "trace_spans_dropped",
            "Request spans never delivered: the export queue was full, or their export failed",
            reason,
            &["queue_full", "export_failed"],
        );
        let export_failures = counter(
            r,
            "trace_export_failures",
            "Trace exports that failed (collector unreachable, refused or too slow)",
        );
        TraceMetrics {
            exported,
            dropped_queue_full: dropped.get_or_create(&reason("queue_full")).clone(),
            dropped_export_failed: dropped.get_or_create(&reason("export_failed")).clone(),
            export_failures,
        }
    }
}

/// Every series the gateway exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    auth_failures: HashMap<&'static str, Counter>,
    upstream_latency: Family<UpstreamLabels, LatencyHistogram>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    reloads: Family<ResultLabels, Counter>,
    logins: Family<ResultLabels, Counter>,
    pub config_loaded: Gauge,
    /// Client connections open on the main listener.
    pub open_connections: Gauge,
    pub store: StoreMetrics,
    pub traces: TraceMetrics,
    servers: ServerFamilies,
}

/// The per-server series of upstream pools.
struct ServerFamilies {
    requests: Family<ServerLabels, Counter>,
    failures: Family<ServerLabels, Counter>,
    healthy: Family<ServerLabels, Gauge>,
}

impl ServerFamilies {
    fn register(r: &mut Registry) -> ServerFamilies {
        let requests = Family::<ServerLabels, Counter>::default();
        r.register(
            "upstream_server_requests",
            "Requests sent to an upstream server (connect failures included)",
            requests.clone(),
        );
        let failures = Family::<ServerLabels, Counter>::default();
        r.register(
            "upstream_server_failures",
            "Requests to an upstream server that failed (connect, reset, timeout)",
            failures.clone(),
        );
        let healthy = Family::<ServerLabels, Gauge>::default();
        r.register(
            "upstream_server_healthy",
            "1 while an upstream server passes its health check (or has none), else 0",
            healthy.clone(),
        );
        ServerFamilies {
            requests,
            failures,
            healthy,
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A counter family registered with its help text; `values` pre-creates the label values
/// that exist, so they are exported (at 0) before they first happen.
fn counter_family<L>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: impl Fn(&str) -> L,
    values: &[&str],
) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    registry.register(name, help, family.clone());
    for v in values {
        let _ = family.get_or_create(&label(v));
    }
    family
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    registry.register(name, help, c.clone());
    c
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    registry.register(name, help, g.clone());
    g
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

fn store_metrics(r: &mut Registry) -> StoreMetrics {
    let up = gauge(
        r,
        "store_up",
        "1 when the state store answered the last call of the revocation sync, else 0",
    );
    let operations = crate::state::STORE_OPERATIONS;
    let family = counter_family(
        r,
        "store_errors",
        "State store calls that failed, by operation",
        |op| OperationLabels {
            operation: op.to_owned(),
        },
        &operations,
    );
    let errors = operations
        .iter()
        .map(|op| {
            let labels = OperationLabels {
                operation: (*op).to_owned(),
            };
            (*op, family.get_or_create(&labels).clone())
        })
        .collect();
    StoreMetrics::new(up, errors)
}

fn reason(r: &str) -> ReasonLabels {
    ReasonLabels {
        reason: r.to_owned(),
    }
}

fn result(r: &str) -> ResultLabels {
    ResultLabels {
        result: r.to_owned(),
    }
}

/// `authgate_auth_failures_total`, one handle per reason (every reason exported from the start).
fn auth_failure_counters(r: &mut Registry) -> HashMap<&'static str, Counter> {
    let reasons = crate::error::AUTH_FAILURE_REASONS;
    let failures = counter_family(
        r,
        "auth_failures",
        "Requests refused for authentication or authorization, by reason",
        reason,
        &reasons,
    );
    reasons
        .iter()
        .map(|x| (*x, failures.get_or_create(&reason(x)).clone()))
        .collect()
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("authgate");
        let r = &mut registry;
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "requests",
            "Requests answered, by route and status class",
            requests.clone(),
        );
        let auth_failures = auth_failure_counters(r);
        let upstream_latency = Family::<UpstreamLabels, LatencyHistogram>::default();
        r.register_with_unit(
            "upstream_duration",
            "Time from sending a request upstream to its response headers",
            prometheus_client::registry::Unit::Seconds,
            upstream_latency.clone(),
        );
        let cache_hits = counter(
            r,
            "claims_cache_hits",
            "Tokens verified from the claims cache",
        );
        let cache_misses = counter(
            r,
            "claims_cache_misses",
            "Tokens verified with a signature check",
        );
        let reloads = counter_family(
            r,
            "config_reloads",
            "Config reloads, by result (ok or error)",
            result,
            &["ok", "error"],
        );
        let logins = counter_family(
            r,
            "login_attempts",
            "Login attempts, by result",
            result,
            &LOGIN_RESULTS,
        );
        let config_loaded = gauge(
            r,
            "config_last_reload_success",
            "1 when the last reload attempt succeeded, 0 when the running config is older than the file",
        );
        config_loaded.set(1);
        let open_connections = gauge(
            r,
            "open_connections",
            "Client connections open on the main listener (each holds one of server.max_connections)",
        );
        let store = store_metrics(r);
        let servers = ServerFamilies::register(r);
        let traces = TraceMetrics::register(r);
        Metrics {
            registry,
            requests,
            auth_failures,
            upstream_latency,
            cache_hits,
            cache_misses,
            reloads,
            logins,
            config_loaded,
            open_connections,
            store,
            traces,
            servers,
        }
    }

    /// The series of one upstream server.
    pub fn server(&self, upstream: &str, server: &str) -> ServerMetrics {
        let labels = ServerLabels {
            upstream: upstream.to_owned(),
            server: server.to_owned(),
        };
        ServerMetrics {
            requests: self.servers.requests.get_or_create(&labels).clone(),
            failures: self.servers.failures.get_or_create(&labels).clone(),
            healthy: self.servers.healthy.get_or_create(&labels).clone(),
        }
    }

    /// Counter handles for a route name; `upgrades`: whether it can answer 101 (see
    /// [`RouteMetrics`]).
    pub fn route(&self, name: &str, upgrades: bool) -> RouteMetrics {
        let labels = |class: &str| RequestLabels {
            route: name.to_owned(),
            status: class.to_owned(),
        };
        let by_class = ["2xx", "3xx", "4xx", "5xx"]
            .map(|class| self.requests.get_or_create(&labels(class)).clone());
        let informational = if upgrades {
            Informational::Registered(self.requests.get_or_create(&labels("1xx")).clone())
        } else {
            Informational::OnFirstUse(self.requests.clone(), labels("1xx"))
        };
        RouteMetrics {
            by_class,
            informational,
        }
    }

    pub fn upstream(&self, name: &str) -> LatencyHistogram {
        self.upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: name.to_owned(),
            })
            .clone()
    }

    pub fn auth_failure(&self, reason: &str) {
        if let Some(c) = self.auth_failures.get(reason) {
            c.inc();
        }
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        self.config_loaded.set(i64::from(ok));
    }

    pub fn login(&self, result: &'static str) {
        self.logins
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_with_bounded_labels() {
        let m = Metrics::new();
        m.route("admin", false).record(200);
        m.route("admin", false).record(503);
        m.upstream("app").observe(Duration::from_millis(3));
        m.auth_failure("expired");
        m.reload(false);
        m.login("success");
        m.cache_hits.inc();
        let text = m.render();
        for needle in [
            "authgate_requests_total{route=\"admin\",status=\"2xx\"} 1",
            "authgate_requests_total{route=\"admin\",status=\"5xx\"} 1",
            "authgate_auth_failures_total{reason=\"expired\"} 1",
            "authgate_upstream_duration_seconds_bucket{le=\"0.005\",upstream=\"app\"} 1",
            "authgate_upstream_duration_seconds_count{upstream=\"app\"} 1",
            "authgate_config_reloads_total{result=\"error\"} 1",
            "authgate_login_attempts_total{result=\"success\"} 1",
            "authgate_claims_cache_hits_total 1",
            "authgate_config_last_reload_success 0",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    /// 2xx..5xx exist at 0 from the start; 1xx only where a 101 can happen, and a 1xx
    /// elsewhere is still counted rather than lost.
    #[test]
    fn status_classes_are_registered_where_they_can_happen() {
        let m = Metrics::new();
        let ws = m.route("ws", true);
        let api = m.route("api", false);
        let text = m.render();
        for class in ["2xx", "3xx", "4xx", "5xx"] {
            for route in ["ws", "api"] {
                let series =
                    format!("authgate_requests_total{{route=\"{route}\",status=\"{class}\"}} 0");
                assert!(text.contains(&series), "missing {series} in\n{text}");
            }
        }
        assert!(text.contains("authgate_requests_total{route=\"ws\",status=\"1xx\"} 0"));
        assert!(!text.contains("route=\"api\",status=\"1xx\""), "{text}");

        ws.record(101);
        api.record(101);
        api.record(700);
        let text = m.render();
        assert!(text.contains("authgate_requests_total{route=\"ws\",status=\"1xx\"} 1"));
        assert!(text.contains("authgate_requests_total{route=\"api\",status=\"1xx\"} 1"));
        assert!(text.contains("authgate_requests_total{route=\"api\",status=\"5xx\"} 1"));
    }
}
