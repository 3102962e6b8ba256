//! Claim rules (`allow`) and claim → header rendering. Pure functions over verified claims.

use http::HeaderValue;
use serde_json::{Map, Value};

/// A claim name or dot path into nested claims (`realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    full: Box<str>,
    parts: Box<[Box<str>]>,
}

impl ClaimPath {
    pub fn new(path: &str) -> Self {
        ClaimPath {
            full: path.into(),
            parts: path.split('.').map(Into::into).collect(),
        }
    }
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The claim's value. A top-level claim whose name contains dots (namespaced claims such as
    /// `https://example.com/roles`) is found by its full name before the path is split.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        if let Some(v) = claims.get(&*self.full) {
            return Some(v);
        }
        if self.parts.len() < 2 {
            return None;
        }
        let (first, rest) = self.parts.split_first()?;
        let mut v = claims.get(&**first)?;
        for part in rest {
            v = v.as_object()?.get(&**part)?;
        }
        Some(v)
    }
}

/// Where a claim is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimSource {
    /// The verified token.
    Token,
    /// The connection: `tls.client.*`, the verified client certificate (mutual TLS). Never
    /// read from a token, so a token cannot claim to be a certificate.
    Connection,
}

impl ClaimSource {
    /// The source a claim path in the config names.
    pub fn of(path: &str) -> ClaimSource {
        if path.starts_with("tls.client.") {
            ClaimSource::Connection
        } else {
            ClaimSource::Token
        }
    }
}

/// One `allow` entry: the claim must equal (or, when it is an array, contain) one of `wanted`.
#[derive(Debug, Clone)]
pub struct AllowRule {
    pub claim: ClaimPath,
    pub wanted: Vec<Value>,
    pub source: ClaimSource,
}

/// Equality as a config author means it: numbers compare by value (`3` equals `3.0`), other
/// types strictly (the string `"1"` is not the number `1`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl AllowRule {
    pub fn matches(&self, claims: &Map<String, Value>) -> bool {
        match self.claim.lookup(claims) {
            None | Some(Value::Null) => false,
            Some(Value::Array(items)) => items
                .iter()
                .any(|item| self.wanted.iter().any(|w| same(item, w))),
            Some(v) => self.wanted.iter().any(|w| same(v, w)),
        }
    }
}

/// The first rule that fails, if any.
pub fn first_failing<'a>(
    rules: &'a [AllowRule],
    claims: &Map<String, Value>,
) -> Option<&'a AllowRule> {
    rules.iter().find(|r| !r.matches(claims))
}

/// Longest header value a claim may produce; larger values are refused rather than letting a
/// token inflate upstream requests past the backend's header limits.
pub const MAX_HEADER_VALUE: usize = 8 * 1024;

/// Why a claim cannot become a header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("contains characters not allowed in a header value")]
    Invalid,
    #[error("is longer than 8 KiB")]
    TooLong,
}

fn push_scalar(out: &mut String, v: &Value) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Null => {}
        other => out.push_str(&other.to_string()),
    }
}

/// Renders a claim as a header value: strings as they are, numbers and booleans as JSON text,
/// arrays joined with `,`, objects as compact JSON. `None` when the claim is absent or null.
pub fn render(v: Option<&Value>) -> Result<Option<HeaderValue>, RenderError> {
    let text = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => {
            let mut out = String::new();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_scalar(&mut out, item);
            }
            out
        }
        Some(v) => {
            let mut out = String::new();
            push_scalar(&mut out, v);
            out
        }
    };
    if text.len() > MAX_HEADER_VALUE {
        return Err(RenderError::TooLong);
    }
    // Only visible characters, space, tab and non-ASCII UTF-8: never CR, LF, NUL or other
    // controls that could split or truncate the upstream request.
    if text.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(RenderError::Invalid);
    }
    HeaderValue::from_bytes(text.as_bytes())
        .map(Some)
        .map_err(|_| RenderError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn rule(path: &str, wanted: Vec<Value>) -> AllowRule {
        AllowRule {
            claim: ClaimPath::new(path),
            wanted,
            source: ClaimSource::of(path),
        }
    }

    #[test]
    fn scalars_equal_arrays_contain_lists_are_any_of() {
        let c = claims(json!({"sub": "alice", "roles": ["dev", "admin"], "level": 3, "ok": true}));
        assert!(rule("sub", vec![json!("alice")]).matches(&c));
        assert!(!rule("sub", vec![json!("bob")]).matches(&c));
        assert!(rule("roles", vec![json!("admin")]).matches(&c));
        assert!(rule("roles", vec![json!("ops"), json!("dev")]).matches(&c));
        assert!(!rule("roles", vec![json!("ops")]).matches(&c));
        assert!(rule("level", vec![json!(3.0)]).matches(&c));
        assert!(!rule("level", vec![json!("3")]).matches(&c));
        assert!(rule("ok", vec![json!(true)]).matches(&c));
        assert!(!rule("missing", vec![json!("x")]).matches(&c));
    }

    #[test]
    fn dot_paths_reach_nested_and_namespaced_claims() {
        let c = claims(json!({
            "realm_access": {"roles": ["admin"]},
            "https://example.com/tenant": "acme",
            "a": "not an object"
        }));
        assert!(rule("realm_access.roles", vec![json!("admin")]).matches(&c));
        assert!(rule("https://example.com/tenant", vec![json!("acme")]).matches(&c));
        assert!(!rule("a.b", vec![json!("x")]).matches(&c));
        assert!(!rule("realm_access.nope", vec![json!("admin")]).matches(&c));
    }

    #[test]
    fn tls_client_paths_come_from_the_connection_only() {
        assert_eq!(ClaimSource::of("tls.client.cn"), ClaimSource::Connection);
        assert_eq!(ClaimSource::of("tls"), ClaimSource::Token);
        assert_eq!(ClaimSource::of("roles"), ClaimSource::Token);
    }

    #[test]
    fn every_rule_must_hold() {
        let c = claims(json!({"roles": ["admin"], "tenant": "acme"}));
        let rules = vec![
            rule("roles", vec![json!("admin")]),
            rule("tenant", vec![json!("other")]),
        ];
        assert_eq!(first_failing(&rules, &c).unwrap().claim.as_str(), "tenant");
        assert!(first_failing(&rules[..1], &c).is_none());
    }

    #[test]
    fn renders_scalars_arrays_and_refuses_injection() {
        let r = |v: Value| render(Some(&v));
        assert_eq!(r(json!("alice")).unwrap().unwrap(), "alice");
        assert_eq!(r(json!(42)).unwrap().unwrap(), "42");
        assert_eq!(r(json!(["a", "b", 3])).unwrap().unwrap(), "a,b,3");
        assert_eq!(r(json!({"k": 1})).unwrap().unwrap(), "{\"k\":1}");
        assert_eq!(
            r(json!("José")).unwrap().unwrap().as_bytes(),
            "José".as_bytes()
        );
        assert_eq!(render(None).unwrap(), None);
        assert_eq!(r(Value::Null).unwrap(), None);
        assert_eq!(r(json!("a\r\nX-Admin: 1")), Err(RenderError::Invalid));
        assert_eq!(r(json!("a\nb")), Err(RenderError::Invalid));
        assert_eq!(r(json!("a\u{0}b")), Err(RenderError::Invalid));
        assert_eq!(r(json!(["ok", "bad\r\n"])), Err(RenderError::Invalid));
        assert_eq!(r(json!("x".repeat(9000))), Err(RenderError::TooLong));
    }
}
