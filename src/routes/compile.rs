//! Compiling `routes:` into the route table: every rule checked at load time (normalized paths,
//! upper-case methods, host names, claim paths, header names, `strip_prefix` inside the match),
//! so a bad rule fails with its location and never at request time.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use http::Method;
use http::header::HeaderName;

use super::{Matcher, PathMatch, RouteTable, host_name};
use crate::auth::{AllowRule, ClaimPath, ClaimSource};
use crate::config::{AuthMode, Diagnostics, KeyPath, RawMatch, RawRoute};
use crate::path::normalize;
use crate::proxy::headers::{StripSet, canonical_name, is_reserved_header};

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub auth: AuthMode,
    pub allow: Vec<AllowRule>,
    /// Upstream header ← the claim it carries.
    pub headers: Vec<(HeaderName, HeaderClaim)>,
    /// Segment-aware prefix removed before forwarding.
    pub strip_prefix: Option<String>,
    pub forward_token: bool,
    /// Largest request body forwarded (`None`: no limit).
    pub max_body: Option<u64>,
    /// Index into the snapshot's upstreams; `None` for a route used only through
    /// forward-auth.
    pub upstream: Option<usize>,
    /// A signed identity assertion for the upstream or the edge.
    pub assertion: Option<Assertion>,
}

/// `assertion:`, compiled: the header it travels in and its lifetime.
#[derive(Debug, Clone)]
pub struct Assertion {
    pub header: HeaderName,
    pub ttl: std::time::Duration,
}

/// Where an injected header's value comes from.
#[derive(Debug, Clone)]
pub enum HeaderClaim {
    /// A token claim: index into the verifier's header claims (rendered once per token).
    Token(usize),
    /// A `tls.client.*` value of the connection's client certificate.
    Connection(ClaimPath),
}

/// What compiling routes needs from the rest of the config, and what it gathers for it.
pub struct RouteContext<'a> {
    /// `server.max_body_bytes`.
    pub default_max_body: u64,
    /// Upstreams that compiled, by name.
    pub upstreams: &'a HashMap<String, usize>,
    /// Every upstream name written in the config (one that failed to compile has its own
    /// error already).
    pub defined: Vec<&'a str>,
    /// Claims some route injects as a header, each once (rendered once per token).
    pub header_claims: Vec<ClaimPath>,
    /// Whether forward-auth is on (routes may then have no upstream).
    pub forward_auth: bool,
    /// Whether an asymmetric key can sign assertions.
    pub can_assert: bool,
}

/// The compiled table, the claims routes inject, and the names stripped from every request.
pub struct Compiled {
    pub table: RouteTable<Route>,
    pub header_claims: Vec<ClaimPath>,
    pub strip: StripSet,
}

/// Compiles every route, in file order.
pub fn compile(raw: &[RawRoute], mut ctx: RouteContext, diags: &mut Diagnostics) -> Compiled {
    let at = KeyPath::root().key("routes");
    if raw.is_empty() {
        diags.at(
            &at,
            "no routes: every request would be refused (404); add at least one route",
        );
    }
    let mut entries = Vec::new();
    let mut names = HashMap::new();
    for (i, route) in raw.iter().enumerate() {
        let here = at.index(i);
        if let Some(first) = names.insert(route.name.clone(), i) {
            diags.at(
                &here.key("name"),
                format!(
                    "route name `{}` is already used by routes[{first}]",
                    route.name
                ),
            );
        }
        if let Some(entry) = compile_route(route, &here, &mut ctx, diags) {
            entries.push(entry);
        }
    }
    // Identity headers and assertion headers alike are stripped from every request.
    let strip = StripSet::new(entries.iter().flat_map(|(_, r): &(Matcher, Route)| {
        let assertion = r.assertion.iter().map(|a| a.header.clone());
        r.headers.iter().map(|(n, _)| n.clone()).chain(assertion)
    }));
    Compiled {
        table: RouteTable::new(entries),
        header_claims: ctx.header_claims,
        strip,
    }
}

fn compile_route(
    route: &RawRoute,
    at: &KeyPath,
    ctx: &mut RouteContext,
    diags: &mut Diagnostics,
) -> Option<(Matcher, Route)> {
    let before = diags.count();
    if route.name.trim().is_empty() {
        diags.at(&at.key("name"), "route name must not be empty");
    }
    let upstream = compile_upstream(route, at, ctx, diags);
    let assertion = compile_assertion(route, at, ctx, diags);
    let matcher = compile_match(&route.matcher, &at.key("match"), diags);
    if route.auth == AuthMode::None {
        // `tls.client.*` comes from the connection and needs no token.
        let token = |path: &str| ClaimSource::of(path) == ClaimSource::Token;
        if route.allow.keys().any(|c| token(c)) {
            diags.at(
                &at.key("allow"),
                "`allow` needs claims, but this route has `auth: none`",
            );
        }
        if route.headers.values().any(|c| token(c.as_str())) {
            diags.at(
                &at.key("headers"),
                "claim headers need a token, but this route has `auth: none`",
            );
        }
    }
    let allow = compile_allow(route, at, diags);
    let headers = compile_headers(route, at, &mut ctx.header_claims, diags);
    let strip_prefix = compile_strip_prefix(route, matcher.as_ref(), at, diags);
    let (matcher, upstream, assertion) = (matcher?, upstream?, assertion?);
    (diags.count() == before).then(|| {
        let route = Route {
            name: route.name.as_str().into(),
            auth: route.auth,
            allow,
            headers,
            strip_prefix: strip_prefix.filter(|p| !p.is_empty()),
            forward_token: route.forward_token,
            max_body: match route.max_body_bytes.unwrap_or(ctx.default_max_body) {
                0 => None,
                n => Some(n),
            },
            upstream,
            assertion,
        };
        (matcher, route)
    })
}

/// The route's upstream: `Some(None)` when it has none (forward-auth only), `None` on error.
fn compile_upstream(
    route: &RawRoute,
    at: &KeyPath,
    ctx: &RouteContext,
    diags: &mut Diagnostics,
) -> Option<Option<usize>> {
    let Some(name) = &route.upstream else {
        if !ctx.forward_auth {
            diags.at(
                &at.key("upstream"),
                "missing `upstream` (only routes used through `forward_auth` may omit it)",
            );
            return None;
        }
        return Some(None);
    };
    match ctx.upstreams.get(name) {
        Some(i) => Some(Some(*i)),
        // Defined but invalid: its own error is reported already.
        None if ctx.defined.contains(&name.as_str()) => None,
        None => {
            let known = ctx.defined.join(", ");
            diags.at(
                &at.key("upstream"),
                format!("unknown upstream `{name}` (defined: {known})"),
            );
            None
        }
    }
}

/// `assertion:`: a header name the gateway does not manage, a lifetime, and a key to sign.
fn compile_assertion(
    route: &RawRoute,
    at: &KeyPath,
    ctx: &RouteContext,
    diags: &mut Diagnostics,
) -> Option<Option<Assertion>> {
    let Some(raw) = &route.assertion else {
        return Some(None);
    };
    let here = at.key("assertion");
    let header = match HeaderName::from_bytes(raw.header.as_str().as_bytes()) {
        Ok(h) if !is_reserved_header(&h) => h,
        _ => {
            diags.at(
                &here.key("header"),
                format!("`{}` cannot carry the assertion", raw.header.as_str()),
            );
            return None;
        }
    };
    if !ctx.can_assert {
        diags.at(
            &here,
            "an assertion is signed with an asymmetric key: add one with `private_key_file` to `tokens.keys` (RS*, PS*, ES*, EdDSA)",
        );
        return None;
    }
    if raw.ttl.0.is_zero() || raw.ttl.0 > std::time::Duration::from_secs(3600) {
        diags.at(
            &here.key("ttl"),
            "must be between 1s and 1h (assertions are short-lived)",
        );
        return None;
    }
    Some(Some(Assertion {
        header,
        ttl: raw.ttl.0,
    }))
}

/// Whether a claim name or dot path is well formed (no empty part).
fn claim_path_ok(path: &str) -> bool {
    !path.is_empty() && !path.split('.').any(str::is_empty)
}

fn compile_allow(route: &RawRoute, at: &KeyPath, diags: &mut Diagnostics) -> Vec<AllowRule> {
    let mut allow = Vec::new();
    for (claim, wanted) in &route.allow {
        if !claim_path_ok(claim) {
            diags.at(
                &at.key("allow").key(claim),
                format!("`{claim}` is not a claim name or dot path"),
            );
            continue;
        }
        allow.push(AllowRule {
            claim: ClaimPath::new(claim),
            wanted: wanted.0.clone(),
            source: ClaimSource::of(claim),
        });
    }
    allow
}

fn compile_headers(
    route: &RawRoute,
    at: &KeyPath,
    header_claims: &mut Vec<ClaimPath>,
    diags: &mut Diagnostics,
) -> Vec<(HeaderName, HeaderClaim)> {
    let mut headers = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, claim) in &route.headers {
        let here = at.key("headers").key(name);
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            diags.at(&here, format!("`{name}` is not a valid header name"));
            continue;
        };
        if is_reserved_header(&header) {
            diags.at(
                &here,
                format!("`{name}` is managed by the gateway and cannot carry a claim"),
            );
            continue;
        }
        if !seen.insert(canonical_name(header.as_str())) {
            diags.at(
                &here,
                format!("`{name}` is listed twice (header names ignore case, `_` and `.`)"),
            );
            continue;
        }
        let claim = claim.as_str();
        if !claim_path_ok(claim) {
            diags.at(&here, format!("`{claim}` is not a claim name or dot path"));
            continue;
        }
        let path = ClaimPath::new(claim);
        if ClaimSource::of(claim) == ClaimSource::Connection {
            headers.push((header, HeaderClaim::Connection(path)));
            continue;
        }
        let index = header_claims
            .iter()
            .position(|p| *p == path)
            .unwrap_or_else(|| {
                header_claims.push(path);
                header_claims.len() - 1
            });
        headers.push((header, HeaderClaim::Token(index)));
    }
    headers
}

fn compile_strip_prefix(
    route: &RawRoute,
    matcher: Option<&Matcher>,
    at: &KeyPath,
    diags: &mut Diagnostics,
) -> Option<String> {
    let (raw, m) = (route.strip_prefix.as_ref()?, matcher?);
    let prefix = match normal_path(raw.as_str()) {
        Ok(p) => p.trim_end_matches('/').to_owned(),
        Err(e) => {
            diags.at(&at.key("strip_prefix"), e);
            return None;
        }
    };
    let inside = match &m.path {
        PathMatch::Any => prefix.is_empty(),
        PathMatch::Exact(q) | PathMatch::Prefix(q) => segment_prefix_of(&prefix, q),
    };
    if !inside {
        diags.at(
            &at.key("strip_prefix"),
            format!(
                "`{}` is not a prefix of every path this route takes",
                raw.as_str()
            ),
        );
    }
    Some(prefix)
}

/// A config path written in normal form, or the error saying what to write instead.
fn normal_path(value: &str) -> Result<String, String> {
    match normalize(value) {
        Ok(n) if n == value => Ok(n.into_owned()),
        Ok(n) => Err(format!("`{value}` is not a normalized path: write `{n}`")),
        Err(e) => Err(format!("`{value}`: {e}")),
    }
}

/// Compiles `match:` (`at` is the `match` key itself).
pub fn compile_match(m: &RawMatch, at: &KeyPath, diags: &mut Diagnostics) -> Option<Matcher> {
    let path = compile_path(m, at, diags);
    let methods = compile_methods(m, at, diags);
    let host = match &m.host {
        None => Some(None),
        Some(h) => {
            let name = host_name(h.as_str()).to_ascii_lowercase();
            if name.is_empty() || name.contains(['/', ' ', '@']) {
                diags.at(
                    &at.key("host"),
                    format!("`{}` is not a host name", h.as_str()),
                );
                None
            } else {
                Some(Some(name))
            }
        }
    };
    Some(Matcher {
        path: path?,
        methods: methods?,
        host: host?,
    })
}

fn compile_path(m: &RawMatch, at: &KeyPath, diags: &mut Diagnostics) -> Option<PathMatch> {
    match (&m.path, &m.path_prefix) {
        (Some(_), Some(_)) => {
            diags.at(
                &at.key("path_prefix"),
                "give `path` or `path_prefix`, not both",
            );
            None
        }
        (Some(p), None) => match normal_path(p.as_str()) {
            Ok(p) => Some(PathMatch::Exact(p)),
            Err(e) => {
                diags.at(&at.key("path"), e);
                None
            }
        },
        (None, Some(p)) => match normal_path(p.as_str()) {
            Ok(p) if p == "/" => Some(PathMatch::Any),
            Ok(p) => Some(PathMatch::Prefix(p.trim_end_matches('/').to_owned())),
            Err(e) => {
                diags.at(&at.key("path_prefix"), e);
                None
            }
        },
        (None, None) => Some(PathMatch::Any),
    }
}

/// `Some(None)`: every method; `None`: an error was reported.
fn compile_methods(
    m: &RawMatch,
    at: &KeyPath,
    diags: &mut Diagnostics,
) -> Option<Option<Vec<Method>>> {
    let Some(list) = &m.methods else {
        return Some(None);
    };
    if list.is_empty() {
        diags.at(
            &at.key("methods"),
            "an empty list matches nothing; remove `methods` to take every method",
        );
        return None;
    }
    let mut methods = Vec::new();
    for (j, text) in list.iter().enumerate() {
        let name = text.as_str();
        // Methods are case-sensitive (RFC 9110 §9.1): `get` is not GET.
        let upper = !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase());
        match Method::from_bytes(name.as_bytes()) {
            Ok(method) if upper => methods.push(method),
            _ => {
                diags.at(
                    &at.key("methods").index(j),
                    format!("`{name}` is not an upper-case method name (e.g. GET)"),
                );
                return None;
            }
        }
    }
    Some(Some(methods))
}

/// Whether `prefix` is a whole-segment prefix of `path` (`/a` of `/a/b`, not of `/ab`).
pub fn segment_prefix_of(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}
