//! One request's trace: what its upstream gets (`traceparent`, `tracestate`), decided when the
//! request arrives, and, when tracing is on and the trace is sampled, the span exported when
//! it is answered.
//!
//! Tracing off: a client's valid `traceparent` goes upstream unchanged (with its `tracestate`
//! when that is valid and fits); an invalid one is removed, never forwarded to a backend
//! tracer that may choke on it. Tracing on: the trace continues with the gateway's span as
//! the parent, or starts here.

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Version};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::Traces;
use super::w3c::{
    MAX_TRACESTATE, Parent, SAMPLED, TRACEPARENT, TRACESTATE, list_len, traceparent,
    tracestate_members, tracestate_value,
};

/// What a request's upstream gets for tracing. `proxy::headers::prepare_request` applies it
/// after its strip pass, which always drops the client's `tracestate`.
#[derive(Debug, Default)]
pub struct Propagation {
    /// The `traceparent` to send: the client's unchanged (tracing off), or the gateway's.
    pub traceparent: Option<HeaderValue>,
    pub tracestate: Option<HeaderValue>,
    /// The client sent a `traceparent` that does not go on: it is removed.
    pub drop_client: bool,
}

/// The gateway's span while the request runs (tracing on).
#[derive(Debug)]
struct OpenSpan {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The client's span, when its `traceparent` was valid.
    parent: Option<[u8; 8]>,
    flags: u8,
    start: SystemTime,
}

/// One request's trace context.
#[derive(Debug)]
pub struct RequestTrace {
    pub propagation: Propagation,
    span: Option<OpenSpan>,
}

/// What the exported span says about the request, gathered only for a sampled trace.
#[derive(Debug)]
pub struct SpanFacts<'a> {
    pub method: &'a Method,
    pub version: Version,
    pub scheme: &'static str,
    /// The route's name, or the endpoint's label; `None` when nothing took the request.
    pub route: Option<&'a str>,
    /// The route's path as a template (`/api/*`): low-cardinality, unlike the path itself,
    /// which can carry ids and is never exported.
    pub http_route: Option<String>,
    pub status: u16,
    /// The authorized subject (`enduser.id`); `None` when the request was refused.
    pub sub: Option<&'a str>,
    /// The refusal or failure reason, the word of the log and the metrics.
    pub reason: Option<&'static str>,
    pub upstream: Option<&'a str>,
    /// `host:port` of the upstream server the request went to.
    pub upstream_address: Option<&'a str>,
    /// Deciding the request: route, token verification, revocation, `allow`.
    pub auth_time: Option<Duration>,
    /// From sending upstream to the upstream's response headers.
    pub upstream_time: Option<Duration>,
    pub request_id: &'a str,
}

impl RequestTrace {
    /// Reads the client's trace context. With tracing off and no `traceparent`, this is one
    /// header look-up and nothing else.
    pub fn start(traces: Option<&Traces>, headers: &HeaderMap) -> RequestTrace {
        let mut lines = headers.get_all(&TRACEPARENT).iter();
        let sent = lines.next();
        // `traceparent` is not a list: several lines are as invalid as a malformed one.
        let parent = match (sent, lines.next()) {
            (Some(value), None) => Parent::parse(value.as_bytes()),
            _ => None,
        };
        let Some(traces) = traces else {
            return RequestTrace {
                propagation: pass_through(sent, parent, headers),
                span: None,
            };
        };
        let (trace_id, flags, tracestate) = match parent {
            Some(p) => (
                p.trace_id,
                p.continued_flags(),
                continued_tracestate(headers),
            ),
            None => {
                let id = traces.new_trace_id();
                (id, if traces.keeps(&id) { SAMPLED } else { 0 }, None)
            }
        };
        let span_id = traces.new_span_id();
        RequestTrace {
            propagation: Propagation {
                traceparent: Some(traceparent(&trace_id, &span_id, flags)),
                tracestate,
                drop_client: false,
            },
            span: Some(OpenSpan {
                trace_id,
                span_id,
                parent: parent.map(|p| p.span_id),
                flags,
                start: SystemTime::now(),
            }),
        }
    }

    /// Whether this request's span will be exported (its facts are worth gathering).
    pub fn recording(&self) -> bool {
        self.span.as_ref().is_some_and(|s| s.flags & SAMPLED != 0)
    }

    /// Adds the gateway's `traceparent` (and `tracestate`) to an answer, for a forward-auth
    /// edge that copies it to the upstream request: the backend's span then hangs under the
    /// gateway's. Nothing when tracing is off (the edge already has the client's).
    pub fn answer_headers(&self, headers: &mut HeaderMap) {
        if self.span.is_none() {
            return;
        }
        if let Some(tp) = &self.propagation.traceparent {
            headers.insert(TRACEPARENT.clone(), tp.clone());
        }
        if let Some(ts) = &self.propagation.tracestate {
            headers.insert(TRACESTATE.clone(), ts.clone());
        }
    }

    /// Ends the request's span and queues it for export, when it is sampled; `facts` is only
    /// called then.
    pub fn finish<'a>(self, traces: Option<&Traces>, facts: impl FnOnce() -> SpanFacts<'a>) {
        let (Some(traces), Some(span)) = (traces, self.span) else {
            return;
        };
        if span.flags & SAMPLED != 0 {
            traces.submit(span.data(&facts(), traces));
        }
    }
}

/// Tracing off: a valid `traceparent` goes on as it came, an invalid one is removed.
fn pass_through(
    sent: Option<&HeaderValue>,
    parent: Option<Parent>,
    headers: &HeaderMap,
) -> Propagation {
    match (sent, parent) {
        (None, _) => Propagation::default(),
        (Some(value), Some(_)) => Propagation {
            traceparent: Some(value.clone()),
            tracestate: unchanged_tracestate(headers),
            drop_client: false,
        },
        (Some(_), None) => Propagation {
            drop_client: true,
            ..Propagation::default()
        },
    }
}

/// Tracing off: the client's `tracestate` goes on as it came (its lines joined) when it is
/// valid and fits in [`MAX_TRACESTATE`]; otherwise not at all, since the spec forbids changing
/// it while its `traceparent` passes unchanged.
fn unchanged_tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let lines = headers.get_all(&TRACESTATE);
    let members = tracestate_members(lines.iter().map(HeaderValue::as_bytes))?;
    if members.is_empty() {
        return None;
    }
    let mut each = lines.iter();
    match (each.next(), each.next()) {
        (Some(one), None) => (one.len() <= MAX_TRACESTATE).then(|| one.clone()),
        _ if list_len(&members) <= MAX_TRACESTATE => tracestate_value(members),
        _ => None,
    }
}

/// Tracing on, the trace continued: the client's `tracestate`, truncated by whole members to
/// [`MAX_TRACESTATE`]; an invalid one is dropped.
fn continued_tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let lines = headers.get_all(&TRACESTATE);
    tracestate_value(tracestate_members(lines.iter().map(HeaderValue::as_bytes))?)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The span's attributes: OpenTelemetry's HTTP server conventions where one fits, `authgate.*`
/// for the gateway's own facts. Never the path, the query, a token or a header value.
fn attributes(f: &SpanFacts<'_>) -> Vec<KeyValue> {
    let text = |key: &'static str, value: Option<&str>| {
        value.map(|v| KeyValue::new(key, Value::from(v.to_owned())))
    };
    let ms = |key: &'static str, d: Option<Duration>| d.map(|d| KeyValue::new(key, millis(d)));
    let fixed = [
        KeyValue::new("http.request.method", f.method.as_str().to_owned()),
        KeyValue::new("http.response.status_code", i64::from(f.status)),
        KeyValue::new("url.scheme", f.scheme),
        KeyValue::new("network.protocol.version", protocol(f.version)),
        KeyValue::new("authgate.request_id", f.request_id.to_owned()),
    ];
    let optional = [
        text("authgate.route", f.route),
        f.http_route.clone().map(|r| KeyValue::new("http.route", r)),
        text("enduser.id", f.sub),
        f.reason.map(|r| KeyValue::new("authgate.reason", r)),
        text("authgate.upstream", f.upstream),
        text("authgate.upstream.address", f.upstream_address),
        ms("authgate.auth.duration_ms", f.auth_time),
        ms("authgate.upstream.duration_ms", f.upstream_time),
    ];
    fixed
        .into_iter()
        .chain(optional.into_iter().flatten())
        .collect()
}

impl OpenSpan {
    fn data(self, f: &SpanFacts<'_>, traces: &Traces) -> SpanData {
        // `{method} {route}`, as OpenTelemetry names HTTP server spans (the route name stands
        // for the template); the method alone when nothing took the request.
        let name = match f.route {
            Some(route) => format!("{} {route}", f.method),
            None => f.method.to_string(),
        };
        // Server spans: a 4xx is the client's doing, only a 5xx is an error of ours.
        let status = if f.status >= 500 {
            Status::error(f.reason.unwrap_or("server error"))
        } else {
            Status::Unset
        };
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.trace_id),
                SpanId::from_bytes(self.span_id),
                TraceFlags::new(self.flags),
                false,
                TraceState::default(),
            ),
            parent_span_id: self.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: SpanKind::Server,
            name: name.into(),
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes: attributes(f),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: traces.scope().clone(),
        }
    }
}
