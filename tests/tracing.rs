//! Traces end to end: the real `authgate` binary, a recording upstream, and a test OTLP/HTTP
//! collector that decodes what the gateway exports (`ExportTraceServiceRequest`, protobuf).
//! W3C trace context to the upstream with tracing on and off, one span per request with its
//! facts, refusals, sampling, forward-auth, and collectors that are down or hang.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    Running, Upstream, binary_config, dead_addr, eventually, metric, send, signal, start_binary,
    start_binary_with_env, token,
};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// A client's sampled traceparent, from the W3C examples.
const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn client_traceparent(flags: &str) -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-{flags}")
}

/// One exported span, flattened for assertions.
#[derive(Debug, Clone)]
struct Exported {
    service: Value,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    /// `Status.code`: 0 unset, 2 error.
    status: i32,
    attributes: BTreeMap<String, Value>,
}

impl Exported {
    fn attr(&self, key: &str) -> &Value {
        self.attributes.get(key).unwrap_or(&Value::Null)
    }
}

fn json_of(kv: &KeyValue) -> Value {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => json!(s),
        Some(Any::IntValue(i)) => json!(i),
        Some(Any::DoubleValue(d)) => json!(d),
        Some(Any::BoolValue(b)) => json!(b),
        other => json!(format!("{other:?}")),
    }
}

/// A test OTLP/HTTP collector on 127.0.0.1:0: decodes every POST to /v1/traces.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Exported>>>,
    /// The headers of every export request.
    posts: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Exported>>> = Arc::default();
        let posts: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let (s, p) = (spans.clone(), posts.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, p) = (s.clone(), p.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (s, p) = (s.clone(), p.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        assert_eq!(parts.uri.path(), "/v1/traces");
                        p.lock().unwrap().push(parts.headers);
                        let request = ExportTraceServiceRequest::decode(body).unwrap();
                        s.lock().unwrap().extend(flatten(request));
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        resp.headers_mut()
                            .insert("content-type", "application/x-protobuf".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector { addr, spans, posts }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }

    /// The one span whose attribute `authgate.request_id` is `id`, waited for.
    async fn span(&self, id: &str) -> Exported {
        eventually(&format!("the span of request {id}"), || async {
            self.spans()
                .iter()
                .any(|s| s.attr("authgate.request_id") == id)
        })
        .await;
        let found: Vec<Exported> = self
            .spans()
            .into_iter()
            .filter(|s| s.attr("authgate.request_id") == id)
            .collect();
        assert_eq!(found.len(), 1, "one span per request: {found:#?}");
        found.into_iter().next().unwrap()
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Exported> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource: BTreeMap<String, Value> = resource_spans
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default()
            .iter()
            .map(|kv| (kv.key.clone(), json_of(kv)))
            .collect();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Exported {
                    service: resource.get("service.name").cloned().unwrap_or(Value::Null),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    status: span.status.map_or(0, |s| s.code),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), json_of(kv)))
                        .collect(),
                });
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A collector that accepts connections and never answers.
async fn hanging_collector() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

fn telemetry(endpoint: &str, extra: &str) -> String {
    format!("telemetry:\n  traces:\n    otlp_endpoint: \"{endpoint}\"\n{extra}")
}

/// A traceparent as the upstream received it: (trace id, parent id, flags).
fn upstream_parent(headers: &HeaderMap) -> (String, String, String) {
    let values: Vec<&str> = headers
        .get_all("traceparent")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(values.len(), 1, "one traceparent upstream: {values:?}");
    let parts: Vec<&str> = values[0].split('-').collect();
    assert_eq!(parts.len(), 4, "{}", values[0]);
    assert_eq!(parts[0], "00");
    assert_eq!(
        (parts[1].len(), parts[2].len(), parts[3].len()),
        (32, 16, 2)
    );
    assert!(
        values[0]
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// A test upstream, a test collector, and the binary exporting to it with `extra` lines under
/// `telemetry.traces` (the directory holds the config: keep it as long as the gateway).
async fn traced(extra: &str) -> (Upstream, Collector, tempfile::TempDir, Running) {
    let (up, collector) = (Upstream::start().await, Collector::start().await);
    let (dir, gw) = exporting(&up.url(), &collector.url(), extra);
    (up, collector, dir, gw)
}

/// The binary forwarding to `upstream` and exporting to `endpoint`.
fn exporting(upstream: &str, endpoint: &str, extra: &str) -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_binary(&binary_config(&dir, upstream, &telemetry(endpoint, extra)));
    (dir, gw)
}

async fn get(gw: &Running, path: &str, headers: &[(&str, &str)]) -> common::Reply {
    send(gw.addr, "GET", path, headers, Bytes::new()).await
}

async fn metrics(gw: &Running) -> String {
    send(gw.admin, "GET", "/metrics", &[], Bytes::new())
        .await
        .text()
}

/// SIGTERM, and wait for a clean exit (shutdown sends the spans still queued), off the
/// runtime: the test's collector must keep answering meanwhile.
async fn stop(mut gw: Running) {
    signal(&gw.child, "-TERM");
    let status = tokio::task::spawn_blocking(move || gw.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_request_is_one_span_that_continues_the_clients_trace() {
    let extra =
        "    service_name: edge-gw\n    headers: { Authorization: \"Bearer otlp-test-token\" }\n";
    let (up, collector, _dir, gw) = traced(extra).await;
    let auth = format!("Bearer {}", token("alice", json!({})));
    let tp = client_traceparent("01");
    let r = get(
        &gw,
        "/app/items/42?q=private",
        &[
            ("authorization", &auth),
            ("traceparent", &tp),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-request-id", "req-42"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    let (trace_id, parent_id, flags) = upstream_parent(&seen.headers);
    assert_eq!(trace_id, CLIENT_TRACE, "the client's trace continues");
    assert_ne!(
        parent_id, CLIENT_SPAN,
        "the upstream's parent is the gateway's span"
    );
    assert_eq!(flags, "01");
    assert_eq!(seen.headers["tracestate"], "congo=t61rcWkgMzE");

    let span = collector.span("req-42").await;
    assert_eq!(span.trace_id, CLIENT_TRACE);
    assert_eq!(span.parent_span_id, CLIENT_SPAN);
    assert_eq!(
        span.span_id, parent_id,
        "the upstream got the exported span's id"
    );
    assert_eq!(span.name, "GET app");
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(span.status, 0);
    assert_eq!(span.service, "edge-gw");
    for (key, want) in [
        ("authgate.route", json!("app")),
        ("http.route", json!("/app/*")),
        ("http.request.method", json!("GET")),
        ("http.response.status_code", json!(200)),
        ("url.scheme", json!("http")),
        ("network.protocol.version", json!("1.1")),
        ("enduser.id", json!("alice")),
        ("authgate.upstream", json!("app")),
        ("authgate.upstream.address", json!(up.addr.to_string())),
    ] {
        assert_eq!(span.attr(key), &want, "{key} in {span:#?}");
    }
    for timing in ["authgate.auth.duration_ms", "authgate.upstream.duration_ms"] {
        assert!(
            span.attr(timing).as_f64().is_some_and(|ms| ms >= 0.0),
            "{timing}: {span:#?}"
        );
    }
    let everything = format!("{span:?}");
    for secret in ["/app/items/42", "private", &auth[7..]] {
        assert!(
            !everything.contains(secret),
            "{secret} exported: {everything}"
        );
    }
    let posts = collector.posts.lock().unwrap().clone();
    assert_eq!(posts[0]["authorization"], "Bearer otlp-test-token");
    assert_eq!(posts[0]["content-type"], "application/x-protobuf");
    let admin = gw.admin;
    eventually("the export counted", || async move {
        let text = send(admin, "GET", "/metrics", &[], Bytes::new())
            .await
            .text();
        metric(&text, "authgate_trace_spans_exported_total") == 1.0
    })
    .await;
    stop(gw).await;
}

#[tokio::test]
async fn a_trace_starts_here_when_the_client_sent_none_or_an_invalid_one() {
    let (up, collector, _dir, gw) = traced("").await;
    let upper = client_traceparent("01").to_uppercase();
    let same = client_traceparent("01");
    let fifty: Vec<(&str, &str)> = (0..50).map(|_| ("traceparent", same.as_str())).collect();
    let cases: [(&str, Vec<(&str, &str)>); 3] = [
        ("none", vec![]),
        (
            "upper",
            vec![("traceparent", upper.as_str()), ("tracestate", "congo=1")],
        ),
        ("fifty", fifty),
    ];
    for (id, headers) in cases {
        up.clear();
        let mut headers = headers;
        headers.push(("x-request-id", id));
        let r = get(&gw, "/public/x", &headers).await;
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        let seen = up.only();
        let (trace_id, parent_id, flags) = upstream_parent(&seen.headers);
        assert_ne!(trace_id, CLIENT_TRACE, "{id}: a new trace");
        assert_eq!(flags, "01", "{id}: sampled (sample_ratio 1.0)");
        assert!(
            seen.headers.get("tracestate").is_none(),
            "{id}: tracestate dropped"
        );
        let span = collector.span(id).await;
        assert_eq!(
            (span.trace_id.as_str(), span.span_id.as_str()),
            (trace_id.as_str(), parent_id.as_str())
        );
        assert_eq!(span.parent_span_id, "", "{id}: a root span");
        assert_eq!(span.attr("authgate.route"), "public");
        assert_eq!(span.attr("enduser.id"), &Value::Null, "{id}: anonymous");
    }
    stop(gw).await;
}

#[tokio::test]
async fn a_hostile_tracestate_is_cut_to_512_bytes_or_dropped() {
    let (up, _collector, _dir, gw) = traced("").await;
    let tp = client_traceparent("01");
    // 30 members of 200 bytes (6 KB): members over 128 bytes go first, from the end.
    let long: Vec<String> = (0..30)
        .map(|i| format!("k{i:02}={}", "v".repeat(196)))
        .collect();
    let long = long.join(",");
    let r = get(
        &gw,
        "/public/a",
        &[("traceparent", &tp), ("tracestate", &long)],
    )
    .await;
    assert_eq!(r.status, 200);
    let state = up.only().headers["tracestate"].to_str().unwrap().to_owned();
    assert!(state.len() <= 512, "{}", state.len());
    assert_eq!(state, format!("k00={0},k01={0}", "v".repeat(196)));
    // 10 KB in 40 members breaks the 32-member limit: the list is discarded whole.
    up.clear();
    let many: Vec<String> = (0..40)
        .map(|i| format!("k{i:02}={}", "v".repeat(250)))
        .collect();
    let many = many.join(",");
    assert!(many.len() > 10_000);
    let r = get(
        &gw,
        "/public/b",
        &[("traceparent", &tp), ("tracestate", &many)],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    assert!(seen.headers.get("tracestate").is_none());
    assert_eq!(
        upstream_parent(&seen.headers).0,
        CLIENT_TRACE,
        "the trace still continues"
    );
    stop(gw).await;
}

#[tokio::test]
async fn refusals_are_exported_with_their_reason_and_no_subject() {
    let (up, collector, _dir, gw) = traced("").await;
    let auth = format!("Bearer {}", token("bob", json!({"roles": ["dev"]})));
    let tp = client_traceparent("01");
    let r = get(
        &gw,
        "/app/x",
        &[("x-request-id", "r401"), ("traceparent", &tp)],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = get(
        &gw,
        "/admin/x",
        &[("x-request-id", "r403"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = get(&gw, "/nowhere", &[("x-request-id", "r404")]).await;
    assert_eq!(r.status, 404);
    assert!(up.seen().is_empty());

    let s = collector.span("r401").await;
    assert_eq!(
        (s.name.as_str(), s.trace_id.as_str()),
        ("GET app", CLIENT_TRACE)
    );
    assert_eq!(s.attr("http.response.status_code"), 401);
    assert_eq!(s.attr("authgate.reason"), "missing");
    assert_eq!(s.attr("enduser.id"), &Value::Null);
    assert_eq!(s.attr("authgate.upstream"), &Value::Null);
    assert_eq!(s.status, 0, "a 4xx is not an error of the server");
    let s = collector.span("r403").await;
    assert_eq!(s.attr("authgate.reason"), "insufficient_scope");
    assert_eq!(s.attr("enduser.id"), &Value::Null, "refused: no subject");
    let s = collector.span("r404").await;
    assert_eq!(s.name, "GET");
    assert_eq!(s.attr("authgate.route"), &Value::Null);
    assert_eq!(s.attr("authgate.reason"), "not_found");
    stop(gw).await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_an_error_span_with_the_server_tried() {
    let collector = Collector::start().await;
    let dead = dead_addr().await;
    let (_dir, gw) = exporting(&format!("http://{dead}"), &collector.url(), "");
    let r = get(&gw, "/public/x", &[("x-request-id", "r502")]).await;
    assert_eq!(r.status, 502);
    let s = collector.span("r502").await;
    assert_eq!(s.status, 2, "STATUS_CODE_ERROR");
    assert_eq!(s.attr("authgate.reason"), "bad_gateway");
    assert_eq!(
        s.attr("authgate.upstream.address"),
        &json!(dead.to_string())
    );
    stop(gw).await;
}

#[tokio::test]
async fn tracing_off_passes_a_valid_traceparent_unchanged_and_drops_an_invalid_one() {
    let (up, collector) = (Upstream::start().await, Collector::start().await);
    let dir = tempfile::tempdir().unwrap();
    // The standard OpenTelemetry variables must not switch exporting on by themselves.
    let url = collector.url();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.as_str()),
    ];
    let gw = start_binary_with_env(&binary_config(&dir, &up.url(), ""), &env);
    let valid = client_traceparent("00");
    let upper = valid.to_uppercase();
    let future = format!("cc-{CLIENT_TRACE}-{CLIENT_SPAN}-01-extra");
    let fifty: Vec<(&str, &str)> = (0..50).map(|_| ("traceparent", valid.as_str())).collect();
    // Valid, but 516 bytes: over the cap, and it may not be cut while the traceparent passes.
    let long_state = format!("congo={},rojo={},a=b", "x".repeat(250), "y".repeat(250));
    // (what the client sends, the traceparent and the tracestate the upstream must get)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Option<&'a str>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            vec![("traceparent", &valid), ("tracestate", "congo=t61rcWkgMzE")],
            Some(&valid),
            Some("congo=t61rcWkgMzE"),
        ),
        (vec![("traceparent", &future)], Some(&future), None),
        (
            vec![("traceparent", &upper), ("tracestate", "congo=1")],
            None,
            None,
        ),
        (vec![("traceparent", "garbage")], None, None),
        (vec![("tracestate", "congo=1")], None, None),
        (
            vec![("traceparent", &valid), ("tracestate", "Bad=1")],
            Some(&valid),
            None,
        ),
        (
            vec![("traceparent", &valid), ("tracestate", &long_state)],
            Some(&valid),
            None,
        ),
        (fifty, None, None),
        (vec![], None, None),
    ];
    for (headers, parent, state) in cases {
        up.clear();
        let r = get(&gw, "/public/x", &headers).await;
        assert_eq!(r.status, 200, "{headers:?}");
        let seen = up.only();
        let got = |n: &str| -> Vec<String> {
            seen.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        let want = |v: Option<&str>| v.map(|v| vec![v.to_owned()]).unwrap_or_default();
        assert_eq!(got("traceparent"), want(parent), "{headers:?}");
        assert_eq!(got("tracestate"), want(state), "{headers:?}");
    }
    assert!(
        !gw.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("exporting traces"))
    );
    stop(gw).await;
    assert!(
        collector.posts.lock().unwrap().is_empty(),
        "nothing exported"
    );
}

#[tokio::test]
async fn sampling_follows_the_clients_flag_and_the_ratio_for_new_traces() {
    let extra = "    sample_ratio: 0.0\n";
    let (up, collector, _dir, gw) = traced(extra).await;
    let unsampled = client_traceparent("00");
    let sampled = client_traceparent("01");
    for (id, tp, flags) in [
        ("new", None, "00"),
        ("unsampled", Some(&unsampled), "00"),
        ("sampled", Some(&sampled), "01"),
    ] {
        up.clear();
        let mut headers = vec![("x-request-id", id)];
        headers.extend(tp.map(|t| ("traceparent", t.as_str())));
        assert_eq!(get(&gw, "/public/x", &headers).await.status, 200);
        let (trace_id, parent_id, got_flags) = upstream_parent(&up.only().headers);
        assert_eq!(got_flags, flags, "{id}");
        assert_ne!(
            parent_id, CLIENT_SPAN,
            "{id}: the gateway takes part even unsampled"
        );
        if tp.is_some() {
            assert_eq!(trace_id, CLIENT_TRACE, "{id}");
        }
    }
    // Shutdown sends whatever is queued: after it, the collector has everything it will get.
    stop(gw).await;
    let spans = collector.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].attr("authgate.request_id"), "sampled");
}

#[tokio::test]
async fn forward_auth_answers_carry_the_gateways_traceparent() {
    let (up, collector) = (Upstream::start().await, Collector::start().await);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "forward_auth:\n  trusted_proxies: [\"127.0.0.1/32\"]\n{}",
        telemetry(&collector.url(), "")
    );
    let gw = start_binary(&binary_config(&dir, &up.url(), &extra));
    let auth = format!("Bearer {}", token("alice", json!({})));
    let tp = client_traceparent("01");
    let r = get(
        &gw,
        "/_authgate/verify",
        &[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/app/x"),
            ("x-forwarded-host", "app.example"),
            ("authorization", &auth),
            ("traceparent", &tp),
            ("x-request-id", "fa-1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (trace_id, parent_id, flags) = upstream_parent(&r.headers);
    assert_eq!((trace_id.as_str(), flags.as_str()), (CLIENT_TRACE, "01"));
    let span = collector.span("fa-1").await;
    assert_eq!(
        span.span_id, parent_id,
        "the edge can hang the backend under our span"
    );
    assert_eq!(span.attr("authgate.route"), "(forward_auth)");
    assert_eq!(span.attr("enduser.id"), "alice");
    let r = get(
        &gw,
        "/_authgate/verify",
        &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/app/x")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(
        r.headers.get("traceparent").is_none(),
        "only an allowed answer is copied"
    );
    assert!(up.seen().is_empty());
    stop(gw).await;
}

/// Sends requests one after another, each a 200 well under a second, until the metric
/// `series` reaches `target` (checked every 20 requests; at most 15 s).
async fn requests_stay_fast_until(gw: &Running, series: &str, target: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0.. {
        let one = Instant::now();
        let r = get(gw, &format!("/public/{i}"), &[]).await;
        assert_eq!(r.status, 200);
        assert!(
            one.elapsed() < Duration::from_millis(750),
            "request {i}: {:?}",
            one.elapsed()
        );
        if i % 20 == 19 && metric(&metrics(gw).await, series) >= target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} below {target} after {i} requests"
        );
    }
}

#[tokio::test]
async fn a_hanging_collector_fills_the_queue_and_requests_do_not_wait() {
    let up = Upstream::start().await;
    let hanging = hanging_collector().await;
    let extra = "    max_queue: 4\n    export_timeout: 30s\n";
    let endpoint = format!("http://{hanging}/v1/traces");
    let (_dir, gw) = exporting(&up.url(), &endpoint, extra);
    // One batch is stuck in the export and four spans wait in the queue: the rest are dropped.
    let series = "authgate_trace_spans_dropped_total{reason=\"queue_full\"}";
    requests_stay_fast_until(&gw, series, 20.0).await;
    assert!(
        gw.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("the trace export queue is full"))
    );
    signal(&gw.child, "-KILL");
}

#[tokio::test]
async fn an_unreachable_collector_counts_failures_and_requests_do_not_wait() {
    let up = Upstream::start().await;
    let dead = dead_addr().await;
    let extra = "    export_timeout: 2s\n";
    let endpoint = format!("http://{dead}/v1/traces");
    let (_dir, gw) = exporting(&up.url(), &endpoint, extra);
    requests_stay_fast_until(&gw, "authgate_trace_export_failures_total", 1.0).await;
    let text = metrics(&gw).await;
    let lost = metric(
        &text,
        "authgate_trace_spans_dropped_total{reason=\"export_failed\"}",
    );
    assert!(lost >= 1.0, "{text}");
    let logs = gw.logs.lock().unwrap().clone();
    let warned = logs
        .iter()
        .filter(|l| l.contains("trace export failed"))
        .count();
    assert_eq!(warned, 1, "logged once while it keeps failing: {logs:#?}");
    stop(gw).await;
}

#[tokio::test]
async fn a_reload_that_changes_telemetry_says_it_needs_a_restart() {
    let (up, collector, dir, gw) = traced("").await;
    binary_config(
        &dir,
        &up.url(),
        &telemetry(&collector.url(), "    sample_ratio: 0.5\n"),
    );
    signal(&gw.child, "-HUP");
    let logs = gw.logs.clone();
    eventually("the restart warning", || {
        let logs = logs.clone();
        async move {
            logs.lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("`telemetry` changed: it takes effect only after a restart"))
        }
    })
    .await;
    // The running export is untouched: still sampling every new trace.
    assert_eq!(
        get(&gw, "/public/x", &[("x-request-id", "after")])
            .await
            .status,
        200
    );
    collector.span("after").await;
    stop(gw).await;
}

/// The README's "Tracing" example is a config `authgate check` accepts, and its config
/// reference names every `telemetry.traces` key.
#[test]
fn the_readme_shows_a_working_telemetry_section() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("\n## Tracing\n")
        .nth(1)
        .expect("the README's Tracing section");
    let example = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a yaml example in the Tracing section");
    assert!(example.starts_with("telemetry:\n  traces:\n"), "{example}");
    let dir = tempfile::tempdir().unwrap();
    let path = binary_config(&dir, "http://127.0.0.1:9", example);
    let out = common::authgate_cli()
        .args(["check", "--config"])
        .arg(&path)
        .env("OTLP_TOKEN", "readme-test-token")
        .output()
        .unwrap();
    common::assert_success(&out);
    let reference = readme
        .split("## Config reference")
        .nth(1)
        .and_then(|r| r.split("\n## ").next())
        .unwrap();
    for key in [
        "telemetry:",
        "otlp_endpoint:",
        "service_name:",
        "sample_ratio:",
        "headers:",
        "export_timeout:",
        "max_queue:",
    ] {
        assert!(reference.contains(key), "the config reference lacks {key}");
    }
}
