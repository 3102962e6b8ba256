//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 §7.6.1),
//! `X-Forwarded-*`, and strip-then-inject of identity headers so a client can never forge one.

use std::collections::HashSet;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::telemetry::Propagation;
use crate::telemetry::w3c::{TRACEPARENT, TRACESTATE};

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the non-standard ones proxies still see).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Headers the gateway manages itself; a route cannot map a claim onto them.
const RESERVED: [&str; 8] = [
    "host",
    "content-length",
    "authorization",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

pub fn is_reserved_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    HOP_BY_HOP.contains(&n) || RESERVED.contains(&n)
}

/// A header name as backends may read it: case-insensitive, and `_` or `.` taken for `-`
/// (CGI, PHP, Django, nginx with `underscores_in_headers` all fold `X_User_Id` into
/// `X-User-Id`, so every spelling must be stripped, not only the exact one).
pub fn canonical_name(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' | b'.' => '-',
            b => b.to_ascii_lowercase() as char,
        })
        .collect()
}

fn needs_folding(name: &str) -> bool {
    name.bytes()
        .any(|b| b == b'_' || b == b'.' || b.is_ascii_uppercase())
}

/// Every header name any route injects, in canonical form. Stripped from every request on every
/// route (public ones included) before injected values are added.
#[derive(Debug, Default)]
pub struct StripSet {
    names: HashSet<String>,
}

impl StripSet {
    pub fn new(names: impl IntoIterator<Item = HeaderName>) -> Self {
        StripSet {
            names: names
                .into_iter()
                .map(|n| canonical_name(n.as_str()))
                .collect(),
        }
    }

    /// Whether a header of this name would be taken by some backend for an injected header.
    pub fn contains_str(&self, name: &str) -> bool {
        if needs_folding(name) {
            self.names.contains(&canonical_name(name))
        } else {
            self.names.contains(name)
        }
    }
}

/// Removes hop-by-hop headers and every header named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    clean(headers, |name| HOP_BY_HOP.contains(&name));
}

/// Headers some frameworks read to replace the request's method or path (Symfony and IIS
/// `X-Original-URL`/`X-Rewrite-URL`, Rails and Express method overrides...), and connection
/// facts only the gateway may state (`Forwarded`, `X-Real-IP`). authgate routed and
/// authorized the request line; a client must not make the backend serve another one.
const OVERRIDES: [&str; 11] = [
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "forwarded",
    "x-real-ip",
];

/// Headers that frame the message or that the gateway sets itself. A client's `_` or `.`
/// spelling of one (`Transfer_Encoding`, `X.Real.IP`) is dropped: CGI-style backends fold
/// those characters into `-` and would read it as the real header.
const MANAGED: [&str; 8] = [
    "content-length",
    "host",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

fn is_managed_variant(name: &str) -> bool {
    if !name.bytes().any(|b| b == b'_' || b == b'.') {
        return false;
    }
    let canonical = canonical_name(name);
    let c = canonical.as_str();
    HOP_BY_HOP.contains(&c) || OVERRIDES.contains(&c) || MANAGED.contains(&c)
}

/// Everything a request loses before the gateway adds its own headers, in one pass over the
/// headers it has: hop-by-hop headers, headers named in `Connection`, override headers,
/// variant spellings of managed headers, every spelling of every header some route injects,
/// and `tracestate` (it goes on only beside a valid `traceparent`, as the gateway decides).
pub fn clean_request(headers: &mut HeaderMap, strip: &StripSet) {
    clean(headers, |name| dropped_from_requests(name, strip));
}

/// Whether a request header of this name is dropped (besides those named in `Connection`).
pub fn dropped_from_requests(name: &str, strip: &StripSet) -> bool {
    name == TRACESTATE.as_str()
        || HOP_BY_HOP.contains(&name)
        || OVERRIDES.contains(&name)
        || strip.contains_str(name)
        || is_managed_variant(name)
}

fn clean(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let mut doomed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    doomed.extend(headers.keys().filter(|n| drop(n.as_str())).cloned());
    for name in doomed {
        headers.remove(&name);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Appends the client address to `X-Forwarded-For` and sets `X-Forwarded-Proto` (the scheme of
/// the client's connection) and `X-Forwarded-Host`, replacing whatever the client sent for the
/// last two.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let mut chain = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(v) = value.to_str() {
            let v = v.trim();
            if !v.is_empty() {
                if !chain.is_empty() {
                    chain.push_str(", ");
                }
                chain.push_str(v);
            }
        }
    }
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&peer.to_string());
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The gateway's `traceparent` (or the client's, when it goes on unchanged) replaces every
/// `traceparent` line the client sent; an invalid one is removed. Without a client
/// `traceparent` and with tracing off there is nothing to touch.
fn set_trace_context(headers: &mut HeaderMap, trace: &Propagation) {
    match &trace.traceparent {
        Some(value) => {
            headers.insert(TRACEPARENT.clone(), value.clone());
        }
        None if trace.drop_client => {
            headers.remove(&TRACEPARENT);
        }
        None => {}
    }
    if let Some(value) = &trace.tracestate {
        headers.insert(TRACESTATE.clone(), value.clone());
    }
}

/// Which of the client's credentials may go upstream: only the one that was verified, and
/// only when the route forwards tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepCredential {
    /// Neither `Authorization` nor the session cookie.
    Neither,
    /// The verified token came in `Authorization` (a session cookie beside it is the same
    /// token).
    Authorization,
    /// The verified token came in the session cookie; `Authorization` held no token of ours.
    Cookie,
}

/// What the gateway states on a request it forwards.
pub struct Outgoing<'a> {
    pub strip: &'a StripSet,
    pub request_id: &'a HeaderValue,
    pub credential: KeepCredential,
    pub cookie_name: &'a str,
    pub peer: IpAddr,
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
    pub identity: &'a [(HeaderName, HeaderValue)],
    /// The W3C trace context the upstream gets (decided when the request arrived).
    pub trace: &'a Propagation,
}

/// Rewrites a request's headers for its upstream, in the one safe order: strip (hop-by-hop,
/// `Connection`-named, override headers, variant spellings, every injected name,
/// `tracestate`), then the request id, the trace context, the credentials that may go,
/// `X-Forwarded-*`, `Host`, and the identity headers last, so nothing the client sent can
/// remove or replace what the gateway adds.
pub fn prepare_request(headers: &mut HeaderMap, out: &Outgoing<'_>) {
    clean_request(headers, out.strip);
    headers.insert(X_REQUEST_ID.clone(), out.request_id.clone());
    set_trace_context(headers, out.trace);
    match out.credential {
        KeepCredential::Authorization => {}
        KeepCredential::Cookie => {
            headers.remove(header::AUTHORIZATION);
        }
        KeepCredential::Neither => {
            headers.remove(header::AUTHORIZATION);
            crate::session::strip_session_cookie(headers, out.cookie_name);
        }
    }
    set_forwarded(headers, out.peer, out.proto, out.host);
    if let Some(h) = out.host {
        // HTTP/2 clients send `:authority` instead of Host; the upstream gets a Host either way.
        headers.insert(header::HOST, h.clone());
    }
    for (name, value) in out.identity {
        headers.insert(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::header_map as map;

    #[test]
    fn strips_every_spelling_of_injected_names() {
        let set = StripSet::new([HeaderName::from_static("x-user-id")]);
        let mut h = map(&[
            ("x-user-id", "evil"),
            ("X_User_Id", "evil"),
            ("x.user.id", "evil"),
            ("x-user_id", "evil"),
            ("x-user-idx", "keep"),
            ("accept", "keep"),
        ]);
        clean_request(&mut h, &set);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["accept", "x-user-idx"]);
    }

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret , x-user-id"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-user-id", "spoof"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn forwarded_for_appends_and_proto_host_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        let host = HeaderValue::from_static("app.example");
        clean_request(&mut h, &StripSet::default());
        set_forwarded(&mut h, "10.0.0.9".parse().unwrap(), "http", Some(&host));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert!(h.get("forwarded").is_none());
        assert!(h.get("x-real-ip").is_none());
    }

    #[test]
    fn variant_spellings_of_managed_headers_are_dropped() {
        let mut h = map(&[
            ("transfer_encoding", "chunked"),
            ("content.length", "5"),
            ("x_real_ip", "1.2.3.4"),
            ("x_forwarded_for", "1.2.3.4"),
            ("keep_alive", "1"),
            ("x_custom_thing", "kept"),
            ("content-length", "0"),
        ]);
        clean_request(&mut h, &StripSet::default());
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["content-length", "x_custom_thing"]);
    }

    #[test]
    fn canonical_names_fold_case_underscore_and_dot() {
        assert_eq!(canonical_name("X_User.Id"), "x-user-id");
        assert!(is_reserved_header(&HeaderName::from_static("host")));
        assert!(is_reserved_header(&HeaderName::from_static(
            "transfer-encoding"
        )));
        assert!(!is_reserved_header(&HeaderName::from_static("x-user-id")));
    }

    #[test]
    fn trace_context_replaces_every_client_line_or_removes_it() {
        let strip = StripSet::default();
        let id = HeaderValue::from_static("req-1");
        let ours =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let client = || {
            map(&[
                ("traceparent", "forged-1"),
                ("traceparent", "forged-2"),
                ("tracestate", "a=1"),
                ("connection", "traceparent"),
            ])
        };
        let run = |trace: &Propagation| {
            let mut h = client();
            let out = Outgoing {
                strip: &strip,
                request_id: &id,
                credential: KeepCredential::Neither,
                cookie_name: "s",
                peer: "10.0.0.9".parse().unwrap(),
                proto: "http",
                host: None,
                identity: &[],
                trace,
            };
            prepare_request(&mut h, &out);
            let all = |n: &str| -> Vec<String> {
                h.get_all(n)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect()
            };
            (all("traceparent"), all("tracestate"))
        };
        let set = Propagation {
            traceparent: Some(ours.clone()),
            tracestate: Some(HeaderValue::from_static("b=2")),
            drop_client: false,
        };
        assert_eq!(
            run(&set),
            (
                vec![ours.to_str().unwrap().to_owned()],
                vec!["b=2".to_owned()]
            )
        );
        let dropped = Propagation {
            drop_client: true,
            ..Propagation::default()
        };
        assert_eq!(run(&dropped), (vec![], vec![]));
        // Named in `Connection`, the client's traceparent is gone whatever the decision said.
        assert_eq!(run(&Propagation::default()), (vec![], vec![]));
    }

    #[test]
    fn prepare_request_strips_then_sets_then_injects() {
        let strip = StripSet::new([HeaderName::from_static("x-user-id")]);
        let id = HeaderValue::from_static("req-1");
        let host = HeaderValue::from_static("app.example");
        let identity = [(
            HeaderName::from_static("x-user-id"),
            HeaderValue::from_static("alice"),
        )];
        let mut out = Outgoing {
            strip: &strip,
            request_id: &id,
            credential: KeepCredential::Neither,
            cookie_name: "s",
            peer: "10.0.0.9".parse().unwrap(),
            proto: "https",
            host: Some(&host),
            identity: &identity,
            trace: &Propagation::default(),
        };
        let client = || {
            map(&[
                ("connection", "x-user-id, x-request-id, host"),
                ("x-user-id", "root"),
                ("x_user_id", "root"),
                ("x-request-id", "forged"),
                ("authorization", "Bearer t"),
                ("cookie", "s=t; theme=dark"),
                ("x-forwarded-proto", "http"),
                ("host", "app.example"),
            ])
        };
        let mut h = client();
        prepare_request(&mut h, &out);
        assert_eq!(h["x-user-id"], "alice");
        assert_eq!(h.get_all("x-user-id").iter().count(), 1);
        assert!(h.get("x_user_id").is_none());
        assert_eq!(h["x-request-id"], "req-1");
        assert_eq!(h["host"], "app.example");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert!(h.get("authorization").is_none());
        assert_eq!(h["cookie"], "theme=dark");
        out.credential = KeepCredential::Cookie;
        let mut h = client();
        prepare_request(&mut h, &out);
        assert!(h.get("authorization").is_none());
        assert_eq!(h["cookie"], "s=t; theme=dark");
        out.credential = KeepCredential::Authorization;
        let mut h = client();
        prepare_request(&mut h, &out);
        assert_eq!(h["authorization"], "Bearer t");
    }
}
