//! Traces: W3C trace context on the way to the upstream (`w3c`, `span::RequestTrace`), and
//! one OTLP span per request exported in the background (`export::Traces`).
//! `telemetry.traces -> TraceSettings (in Boot: restart-only) -> Traces (owned by the Gateway)`.
//!
//! Spans are built directly as the SDK's `SpanData` rather than through `tracing` spans and
//! `tracing-opentelemetry`: a request is one span whose every fact is known when it ends, so
//! there is nothing to gain from a span stack, and the request path stays free of the
//! subscriber registry and per-span extensions. With tracing off the only cost is one look-up
//! of `traceparent`.

pub mod export;
pub mod span;
pub mod w3c;

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use crate::config::{Diagnostics, KeyPath, RawConfig};

pub use export::Traces;
pub use span::{Propagation, RequestTrace, SpanFacts};

/// `telemetry.traces`, compiled. Part of [`crate::boot::Boot`]: a reload that changes it says
/// it takes effect on restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    /// The collector's OTLP/HTTP traces URL, used as written.
    pub endpoint: String,
    pub service_name: String,
    pub sample: SampleRatio,
    /// Sent with every export; values are marked sensitive (never printed).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub export_timeout: Duration,
    pub max_queue: usize,
}

/// `sample_ratio` as the bound a trace id is compared with: the rule of OpenTelemetry's
/// `TraceIdRatioBased` sampler (the low 8 bytes of the trace id, shifted right once, below
/// `ratio * 2^63`), so services sampling by the same ratio keep the same traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleRatio(u64);

impl SampleRatio {
    pub fn new(ratio: f64) -> SampleRatio {
        if ratio >= 1.0 {
            SampleRatio(u64::MAX)
        } else {
            SampleRatio((ratio.max(0.0) * (1u64 << 63) as f64) as u64)
        }
    }

    /// Whether a new trace with this id is recorded.
    pub fn keeps(self, trace_id: &[u8; 16]) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.0
    }
}

/// Compiles `telemetry:`: `Some(None)` when there is no trace export, `None` when it is
/// invalid (the errors are in `diags`).
pub fn compile(raw: &RawConfig, diags: &mut Diagnostics) -> Option<Option<TraceSettings>> {
    let Some(traces) = raw.telemetry.as_ref().and_then(|t| t.traces.as_ref()) else {
        return Some(None);
    };
    let at = KeyPath::root().key("telemetry").key("traces");
    let errors = diags.count();
    let endpoint = traces.otlp_endpoint.as_str();
    check_endpoint(endpoint, &at.key("otlp_endpoint"), diags);
    let service_name = traces.service_name.as_str().trim();
    if service_name.is_empty() {
        diags.at(&at.key("service_name"), "must not be empty");
    }
    let ratio = traces.sample_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        diags.at(
            &at.key("sample_ratio"),
            format!("{ratio} is not a ratio from 0.0 to 1.0"),
        );
    }
    if traces.export_timeout.0.is_zero() {
        diags.at(&at.key("export_timeout"), "must be longer than 0s");
    }
    if traces.max_queue == 0 {
        diags.at(&at.key("max_queue"), "must be at least 1");
    }
    let mut headers = Vec::new();
    for (name, value) in &traces.headers {
        let here = at.key("headers").key(name);
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value.0),
        ) {
            (Ok(n), Ok(mut v)) => {
                v.set_sensitive(true);
                headers.push((n, v));
            }
            (Err(_), _) => diags.at(&here, format!("`{name}` is not a valid header name")),
            (_, Err(_)) => diags.at(&here, "the value is not a valid header value"),
        }
    }
    if diags.count() > errors {
        return None;
    }
    Some(Some(TraceSettings {
        endpoint: endpoint.to_owned(),
        service_name: service_name.to_owned(),
        sample: SampleRatio::new(ratio),
        headers,
        export_timeout: traces.export_timeout.0,
        max_queue: usize::try_from(traces.max_queue).unwrap_or(usize::MAX),
    }))
}

fn check_endpoint(endpoint: &str, at: &KeyPath, diags: &mut Diagnostics) {
    let uri = endpoint.parse::<http::Uri>().ok();
    let scheme_ok = uri
        .as_ref()
        .and_then(|u| u.scheme_str())
        .is_some_and(|s| s == "http" || s == "https");
    let Some(uri) = uri.filter(|u| scheme_ok && u.host().is_some_and(|h| !h.is_empty())) else {
        diags.at(
            at,
            format!(
                "`{endpoint}` is not an http(s) URL (e.g. http://otel-collector:4318/v1/traces)"
            ),
        );
        return;
    };
    if matches!(uri.path(), "" | "/") {
        diags.warn(
            at,
            "the URL is used as written and has no path: OTLP/HTTP collectors take traces at /v1/traces",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;
    use std::path::Path;

    fn compile_text(telemetry: &str) -> Result<Option<TraceSettings>, Vec<String>> {
        let text = format!(
            "tokens:\n  keys:\n    - {{ id: k1, algorithm: HS256, secret: x }}\nupstreams:\n  a: \"http://127.0.0.1:1\"\nroutes:\n  - name: r\n    upstream: a\n{telemetry}"
        );
        let source = Source::from_text(Path::new("gw.yaml"), text);
        let raw = source.parse().map_err(|e| e.diagnostics())?;
        let mut diags = Diagnostics::new(&source);
        let compiled = compile(&raw, &mut diags);
        diags.finish(compiled).map_err(|e| e.diagnostics())
    }

    #[test]
    fn compiles_the_traces_section_with_defaults() {
        assert_eq!(compile_text(""), Ok(None));
        assert_eq!(compile_text("telemetry: {}\n"), Ok(None));
        let s = compile_text(
            "telemetry:\n  traces:\n    otlp_endpoint: http://collector:4318/v1/traces\n    headers: { Authorization: \"Bearer t\" }\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.service_name, "authgate");
        assert_eq!(s.sample, SampleRatio::new(1.0));
        assert_eq!(s.export_timeout, Duration::from_secs(10));
        assert_eq!(s.max_queue, 4096);
        assert!(s.headers[0].1.is_sensitive());
        assert!(!format!("{s:?}").contains("Bearer"), "{s:?}");
    }

    #[test]
    fn errors_name_the_key_and_its_place() {
        let err = compile_text(
            "telemetry:\n  traces:\n    otlp_endpoint: collector:4318\n    sample_ratio: 1.5\n    max_queue: 0\n    headers: { \"bad name\": x }\n",
        )
        .unwrap_err();
        assert_eq!(err.len(), 4, "{err:#?}");
        assert!(
            err[0].starts_with("gw.yaml:11:20: telemetry.traces.otlp_endpoint: `collector:4318` is not an http(s) URL"),
            "{}",
            err[0]
        );
        assert!(
            err[1].starts_with("gw.yaml:12:19: telemetry.traces.sample_ratio: 1.5 is not a ratio"),
            "{}",
            err[1]
        );
        assert!(
            err.iter()
                .any(|e| e.contains("max_queue: must be at least 1"))
        );
        assert!(
            err.iter()
                .any(|e| e.contains("`bad name` is not a valid header name"))
        );
        let err = compile_text("telemetry:\n  traces:\n    otlp_endpont: http://c/v1/traces\n")
            .unwrap_err();
        assert!(err[0].contains("unknown field `otlp_endpont`"), "{err:?}");
    }

    #[test]
    fn ratio_sampling_follows_the_trace_id() {
        let low = |n: u64| {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&n.to_be_bytes());
            id
        };
        assert!(SampleRatio::new(1.0).keeps(&low(u64::MAX)));
        assert!(!SampleRatio::new(0.0).keeps(&low(0)));
        let half = SampleRatio::new(0.5);
        assert!(half.keeps(&low(u64::MAX / 2 - 1)));
        assert!(!half.keeps(&low(u64::MAX / 2 + 2)));
    }
}
