//! What `authgate explain` found, as data: the JSON output is this structure serialized
//! (`--format json`, documented in the README), and the text output is rendered from it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::GatewayError;

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Forwarded to the route's upstream.
    Allow,
    /// Answered by the gateway with an error (or a login redirect); nothing is forwarded.
    Deny,
    /// Answered by one of the gateway's own endpoints (login, logout, JWKS...), not by a
    /// route: explain does not run endpoints.
    Endpoint,
}

/// The whole explanation.
#[derive(Debug, Serialize)]
pub struct Report {
    pub decision: Decision,
    /// The status the gateway itself answers with; `null` when it forwards (the upstream
    /// chooses the status then) or when an endpoint answers.
    pub status: Option<u16>,
    /// The `error` code of the refusal's JSON body.
    pub error: Option<&'static str>,
    /// Why: the refusal's message, or what happens to an allowed request.
    pub reason: String,
    pub request: RequestReport,
    pub path: PathReport,
    /// The gateway endpoint that answers, when one does.
    pub endpoint: Option<&'static str>,
    /// Every route, in file order, with each condition's verdict.
    pub routes: Vec<RouteReport>,
    /// The route the gateway chose.
    pub route: Option<String>,
    pub auth: Option<AuthReport>,
    pub allow: Vec<AllowReport>,
    pub upstream: Option<UpstreamReport>,
    pub headers: Option<HeadersReport>,
    /// Anything else an operator should know (what was not checked offline, cookies set).
    pub notes: Vec<String>,
}

impl Report {
    /// 0 allowed (or answered by an endpoint), 1 refused.
    pub fn exit_code(&self) -> u8 {
        match self.decision {
            Decision::Allow | Decision::Endpoint => 0,
            Decision::Deny => 1,
        }
    }
}

/// One header line; credentials masked.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderLine {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Serialize)]
pub struct RequestReport {
    pub method: String,
    pub url: String,
    pub scheme: &'static str,
    pub host: Option<String>,
    /// The client address explain assumes (it shows in `X-Forwarded-For`).
    pub client: String,
    /// The request's headers as the gateway receives them (`Host` and the token included).
    pub headers: Vec<HeaderLine>,
}

#[derive(Debug, Serialize)]
pub struct PathReport {
    /// The path as sent.
    pub raw: String,
    /// The normalized path routing runs on (and the upstream receives): `null` when refused
    /// or when the request was refused before its path was read.
    pub normalized: Option<String>,
    /// Why the path is refused (400).
    pub refused: Option<String>,
}

/// The verdict of each of a route's conditions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RouteChecks {
    pub path: bool,
    pub methods: bool,
    pub host: bool,
}

#[derive(Debug, Serialize)]
pub struct RouteReport {
    pub index: usize,
    pub name: String,
    /// Whether every condition of the route takes the request.
    pub matched: bool,
    /// Whether the gateway chose it (the first that matched, in file order).
    pub chosen: bool,
    pub checks: RouteChecks,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct AuthReport {
    /// The route's `auth`: `none`, `optional` or `required`.
    pub mode: &'static str,
    /// Where the token was found: `header`, `cookie`, or `null`.
    pub credential: Option<&'static str>,
    pub token: Option<TokenReport>,
    /// Revocation is kept in the state store, which explain never contacts.
    pub revocation: &'static str,
}

#[derive(Debug, Serialize)]
pub struct TokenReport {
    /// How explain got it: `--token`, `--claims` or `--header`.
    pub given: &'static str,
    pub verified: bool,
    pub checks: Vec<CheckReport>,
    /// The token's claims (`claims_verified` false: read without verification, to explain a
    /// refusal).
    pub claims: Option<Map<String, Value>>,
    pub claims_verified: bool,
}

/// One verification step.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub check: &'static str,
    /// `null`: not reached, or not reported (verification stops at the first failure).
    pub passed: Option<bool>,
    pub detail: String,
}

/// One `allow` rule.
#[derive(Debug, Serialize)]
pub struct AllowReport {
    pub claim: String,
    /// Any of these (an array claim passes when it contains one).
    pub want: Vec<Value>,
    /// The value seen (`null`: absent, or the rule was not evaluated).
    pub saw: Option<Value>,
    /// `null`: not evaluated (an earlier rule or the token failed first).
    pub passed: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct UpstreamReport {
    pub name: String,
    /// Its servers (`builtin:echo` for the demo upstream); the balancer picks one per request.
    pub servers: Vec<String>,
    pub balance: Option<&'static str>,
    /// The request target the upstream receives: the normalized path, less `strip_prefix`,
    /// under the upstream's base path, with the query.
    pub path: String,
}

#[derive(Debug, Serialize)]
pub struct HeadersReport {
    /// Every header the upstream receives, in order; credentials masked.
    pub upstream: Vec<HeaderLine>,
    /// Headers the gateway adds or replaces (`X-Request-Id`, `X-Forwarded-*`, `Host`,
    /// identity headers).
    pub set: BTreeMap<String, String>,
    /// The identity headers among them, rendered from the token's claims.
    pub identity: BTreeMap<String, String>,
    /// Client headers removed (hop-by-hop, overrides, every spelling of injected names,
    /// credentials that are not forwarded).
    pub stripped: Vec<String>,
    /// Client headers the gateway replaced with its own value (a forged identity header,
    /// `X-Forwarded-Proto`...; `X-Forwarded-For` is appended to).
    pub replaced: Vec<String>,
}

impl Report {
    /// A report on a request not decided yet.
    pub fn new(request: RequestReport, raw_path: String) -> Report {
        Report {
            decision: Decision::Deny,
            status: None,
            error: None,
            reason: String::new(),
            request,
            path: PathReport {
                raw: raw_path,
                normalized: None,
                refused: None,
            },
            endpoint: None,
            routes: Vec::new(),
            route: None,
            auth: None,
            allow: Vec::new(),
            upstream: None,
            headers: None,
            notes: Vec::new(),
        }
    }

    /// The gateway refuses with `error`: its status, code and message come from the one
    /// mapping every answer uses ([`GatewayError::status`], [`GatewayError::code`]).
    pub fn deny(&mut self, error: &GatewayError) {
        self.decision = Decision::Deny;
        self.status = Some(error.status().as_u16());
        self.error = Some(error.code());
        self.reason = error.to_string();
        if let GatewayError::LoginRedirect { location, reason } = error {
            let location = String::from_utf8_lossy(location.as_bytes());
            self.notes.push(format!(
                "a browser navigation without a usable session is sent to the login page (Location: {location}); the token step said: {reason}"
            ));
        }
    }
}
