//! Each section of the explanation, built from what the gateway's own functions returned:
//! the route table's per-route checks, the decision's trace, the rewritten headers.

use std::collections::BTreeMap;

use http::Method;
use http::header::{AUTHORIZATION, COOKIE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::input::Given;
use super::report::{
    AllowReport, AuthReport, CheckReport, HeaderLine, HeadersReport, RouteChecks, RouteReport,
    TokenReport,
};
use super::trace::Trace;
use crate::auth::{TokenError, VerifiedToken};
use crate::clock::unix_now;
use crate::config::AuthMode;
use crate::credentials::TokenSource;
use crate::routes::{Matcher, PathMatch, Route, RouteCheck};
use crate::snapshot::Snapshot;

/// Revocation lives in the state store; explain never contacts it.
pub const REVOCATION_OFFLINE: &str = "not checked offline: explain does not contact the state store, so a revoked token or session would still be refused by the running gateway";

/// Every route with each condition's verdict ([`crate::routes::RouteTable::check_all`]) and
/// the route the decision chose.
pub fn routes(
    snap: &Snapshot,
    method: &Method,
    host: Option<&str>,
    path: &str,
    chosen: Option<usize>,
) -> Vec<RouteReport> {
    let checks = snap.routes.check_all(method, host, path);
    let chosen_name = chosen.map(|i| &*snap.routes.get(i).name);
    snap.routes
        .iter()
        .zip(checks)
        .enumerate()
        .map(|(index, ((matcher, route), check))| {
            let mut why = conditions(matcher, check, method, host, path);
            match (chosen, chosen_name) {
                (Some(c), Some(name)) if check.matched() && index > c => {
                    why.push_str(&format!(" (not reached: `{name}` comes first)"));
                }
                _ => {}
            }
            RouteReport {
                index,
                name: route.name.to_string(),
                matched: check.matched(),
                chosen: chosen == Some(index),
                checks: RouteChecks {
                    path: check.path,
                    methods: check.method,
                    host: check.host,
                },
                why,
            }
        })
        .collect()
}

/// One route's conditions, in words.
fn conditions(
    m: &Matcher,
    check: RouteCheck,
    method: &Method,
    host: Option<&str>,
    path: &str,
) -> String {
    let path_words = match (&m.path, check.path) {
        (PathMatch::Any, _) => "any path".to_owned(),
        (PathMatch::Exact(p), true) => format!("path `{path}` is `{p}`"),
        (PathMatch::Exact(p), false) => format!("path `{path}` is not `{p}`"),
        (PathMatch::Prefix(p), true) => format!("path `{path}` is under `{p}`"),
        (PathMatch::Prefix(p), false) => format!("path `{path}` is not under `{p}`"),
    };
    let method_words = match (&m.methods, check.method) {
        (None, _) => "any method".to_owned(),
        (Some(list), ok) => {
            let names: Vec<&str> = list.iter().map(Method::as_str).collect();
            let verb = if ok { "is in" } else { "is not in" };
            format!("method {method} {verb} [{}]", names.join(", "))
        }
    };
    let host_words = match (&m.host, check.host, host) {
        (None, _, _) => "any host".to_owned(),
        (Some(want), true, _) => format!("host is `{want}`"),
        (Some(want), false, Some(got)) => format!("host `{got}` is not `{want}`"),
        (Some(want), false, None) => format!("no host; the route wants `{want}`"),
    };
    format!("{path_words}; {method_words}; {host_words}")
}

fn mode_name(mode: AuthMode) -> &'static str {
    match mode {
        AuthMode::None => "none",
        AuthMode::Optional => "optional",
        AuthMode::Required => "required",
    }
}

/// The auth section: the route's mode, where the token came from, and its checks.
pub fn auth(
    snap: &Snapshot,
    route: &Route,
    trace: &Trace,
    given: Option<Given>,
    raw_token: Option<&str>,
) -> AuthReport {
    let credential = trace.credential.flatten().map(|s| match s {
        TokenSource::Header => "header",
        TokenSource::Cookie => "cookie",
    });
    let token = trace.verified.as_ref().map(|outcome| {
        let given = given.unwrap_or(Given::Header).as_str();
        match outcome {
            Ok(token) => verified_token(snap, token, given),
            Err(error) => refused_token(error, given, raw_token),
        }
    });
    AuthReport {
        mode: mode_name(route.auth),
        credential,
        token,
        revocation: REVOCATION_OFFLINE,
    }
}

/// Verification steps in the order they run; steps of one stage are checked together.
const CHECKS: [(&str, u8); 6] = [
    ("format", 0),
    ("signature", 1),
    ("expiry", 2),
    ("issuer", 2),
    ("audience", 2),
    ("claim format", 2),
];

/// The step a refusal belongs to.
fn failed_check(error: &TokenError) -> &'static str {
    match error {
        TokenError::UnknownKeyId | TokenError::WrongAlgorithm | TokenError::BadSignature => {
            "signature"
        }
        TokenError::Expired | TokenError::NotYetValid => "expiry",
        TokenError::WrongIssuer => "issuer",
        TokenError::WrongAudience => "audience",
        TokenError::MissingClaim(_)
        | TokenError::BadClaim(_)
        | TokenError::UnrenderableClaim(..) => "claim format",
        _ => "format",
    }
}

/// A refused token: the failing step, and its claims read without verification so the
/// reader sees what the gateway saw (an `exp` in the past, another `iss`).
fn refused_token(error: &TokenError, given: &'static str, raw: Option<&str>) -> TokenReport {
    let claims = raw.and_then(|t| {
        jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(t).ok()
    });
    let failed = failed_check(error);
    let stage = CHECKS.iter().find(|(c, _)| *c == failed).map_or(0, |c| c.1);
    let checks = CHECKS
        .iter()
        .map(|&(check, s)| {
            let (passed, detail) = if check == failed {
                (Some(false), refusal(error, claims.as_ref()))
            } else if s < stage {
                (Some(true), "checked before the failing step".to_owned())
            } else if s == stage {
                (
                    None,
                    "not reported (verification stops at the first failure)".into(),
                )
            } else {
                (None, "not reached".into())
            };
            CheckReport {
                check,
                passed,
                detail,
            }
        })
        .collect();
    TokenReport {
        given,
        verified: false,
        checks,
        claims,
        claims_verified: false,
    }
}

/// The refusal's message, with the times the token carries when time was the reason.
fn refusal(error: &TokenError, claims: Option<&Map<String, Value>>) -> String {
    let at = |name: &str| claims.and_then(|c| c.get(name)).and_then(Value::as_u64);
    let now = unix_now();
    match (error, at("exp"), at("nbf")) {
        (TokenError::Expired, Some(exp), _) if exp <= now => format!(
            "{error}: exp {exp}, {} ago (beyond the leeway)",
            duration(now - exp)
        ),
        (TokenError::NotYetValid, _, Some(nbf)) if nbf >= now => {
            format!("{error}: nbf {nbf}, in {}", duration(nbf - now))
        }
        _ => error.to_string(),
    }
}

fn verified_token(snap: &Snapshot, token: &VerifiedToken, given: &'static str) -> TokenReport {
    let claim = |name: &str| token.claims.get(name).map(Value::to_string);
    let signature = match (given, token.local) {
        ("--claims", _) => "signed here from --claims: checked, but it proves nothing".into(),
        (_, true) => "valid for one of tokens.keys".to_owned(),
        (_, false) => "valid for a key of its issuer's JWKS (tokens.jwks)".to_owned(),
    };
    let now = unix_now();
    let expiry = if token.exp >= now {
        format!("exp {} (in {})", token.exp, duration(token.exp - now))
    } else {
        format!(
            "exp {} ({} ago, within the leeway)",
            token.exp,
            duration(now - token.exp)
        )
    };
    let against = |seen: Option<String>, configured: Option<&str>, key: &str| match (
        seen,
        configured,
        token.local,
    ) {
        (Some(v), Some(c), true) => format!("{v} is tokens.{key} `{c}`"),
        (Some(v), _, false) => format!("{v} accepted for its provider"),
        (seen, None, true) => format!(
            "{} (tokens.{key} is not set: not checked)",
            seen.unwrap_or_else(|| "absent".into())
        ),
        (None, _, _) => "absent (not required)".to_owned(),
    };
    let checks = vec![
        CheckReport::passed("format", "a signed JWT (JWS), header accepted".into()),
        CheckReport::passed("signature", signature),
        CheckReport::passed("expiry", expiry),
        CheckReport::passed(
            "issuer",
            against(claim("iss"), snap.issuer.issuer_name(), "issuer"),
        ),
        CheckReport::passed(
            "audience",
            against(claim("aud"), snap.issuer.audience(), "audience"),
        ),
        CheckReport::passed(
            "claim format",
            "exp present; exp, nbf, iat, iss, aud, sub of the right types".into(),
        ),
    ];
    TokenReport {
        given,
        verified: true,
        checks,
        claims: Some(token.claims.clone()),
        claims_verified: true,
    }
}

impl CheckReport {
    fn passed(check: &'static str, detail: String) -> CheckReport {
        CheckReport {
            check,
            passed: Some(true),
            detail,
        }
    }
}

/// `1h 2m 3s` style.
fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

/// The route's `allow` rules as the decision evaluated them; rules after the first failure
/// were not evaluated.
pub fn allow(route: &Route, trace: &Trace) -> Vec<AllowReport> {
    route
        .allow
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let evaluated = trace.allow.get(i);
            AllowReport {
                claim: rule.claim.as_str().to_owned(),
                want: rule.wanted.clone(),
                saw: evaluated.and_then(|e| e.saw.clone()),
                passed: evaluated.map(|e| e.passed),
            }
        })
        .collect()
}

/// A header value fit to print: the bearer token and the session cookie's value masked.
pub fn masked(name: &HeaderName, value: &HeaderValue, cookie: &str) -> String {
    let text = String::from_utf8_lossy(value.as_bytes());
    if *name == AUTHORIZATION {
        let scheme = text.split_once(' ').map_or("", |(s, _)| s);
        return format!("{scheme} …(masked)").trim_start().to_owned();
    }
    if *name == COOKIE {
        let pairs: Vec<String> = text
            .split(';')
            .map(|pair| match pair.trim().split_once('=') {
                Some((n, _)) if n == cookie => format!("{n}=…(masked)"),
                _ => pair.trim().to_owned(),
            })
            .collect();
        return pairs.join("; ");
    }
    text.into_owned()
}

/// Every header of a map, in order, masked.
pub fn lines(headers: &HeaderMap, cookie: &str) -> Vec<HeaderLine> {
    headers
        .iter()
        .map(|(name, value)| HeaderLine {
            name: name.to_string(),
            value: masked(name, value, cookie),
        })
        .collect()
}

/// What `upstream_request` did to the client's headers: what it removed, what it set.
pub fn headers(
    before: &HeaderMap,
    after: &HeaderMap,
    identity: &[(HeaderName, HeaderValue)],
    cookie: &str,
) -> HeadersReport {
    let joined = |map: &HeaderMap, name: &HeaderName| {
        let values: Vec<String> = map
            .get_all(name)
            .iter()
            .map(|v| masked(name, v, cookie))
            .collect();
        values.join(", ")
    };
    let stripped: Vec<String> = before
        .keys()
        .filter(|n| !after.contains_key(*n))
        .map(ToString::to_string)
        .collect();
    let set: BTreeMap<String, String> = after
        .keys()
        .filter(|n| !before.get_all(*n).iter().eq(after.get_all(*n).iter()))
        .map(|n| (n.to_string(), joined(after, n)))
        .collect();
    let replaced = before
        .keys()
        .filter(|n| set.contains_key(n.as_str()))
        .map(ToString::to_string)
        .collect();
    let identity = identity
        .iter()
        .map(|(n, v)| (n.to_string(), masked(n, v, cookie)))
        .collect();
    HeadersReport {
        upstream: lines(after, cookie),
        set,
        identity,
        stripped,
        replaced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map;

    #[test]
    fn credentials_are_masked() {
        let h = header_map(&[
            ("authorization", "Bearer abc.def.ghi"),
            ("cookie", "s=secret; theme=dark"),
        ]);
        let out = lines(&h, "s");
        assert_eq!(out[0].value, "Bearer …(masked)");
        assert_eq!(out[1].value, "s=…(masked); theme=dark");
    }

    #[test]
    fn header_changes_are_named() {
        let before = header_map(&[("x-user-id", "root"), ("accept", "*/*"), ("host", "a")]);
        let after = header_map(&[("accept", "*/*"), ("host", "a"), ("x-user-id", "alice")]);
        let after = {
            let mut a = after;
            a.remove("x-user-id");
            a.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
            a
        };
        let report = headers(&before, &after, &[], "s");
        assert_eq!(report.stripped, vec!["x-user-id"]);
        assert_eq!(
            report.set.keys().collect::<Vec<_>>(),
            vec!["x-forwarded-for"]
        );
        assert!(report.replaced.is_empty());
        let forged = header_map(&[("x-user-id", "root"), ("host", "a")]);
        let injected = header_map(&[("host", "a"), ("x-user-id", "alice")]);
        let report = headers(&forged, &injected, &[], "s");
        assert_eq!(report.replaced, vec!["x-user-id"]);
        assert_eq!(report.set["x-user-id"], "alice");
    }

    #[test]
    fn durations_read_as_hours_minutes_seconds() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(125), "2m 5s");
        assert_eq!(duration(3600 * 3 + 61), "3h 1m 1s");
    }
}
