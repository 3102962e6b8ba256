//! `authgate explain METHOD URL`: how the gateway would answer one request, without sending
//! anything anywhere. It runs the gateway's own steps, in the gateway's order, on a request
//! built from the command line — `Target::check` (method, host, path normalization), the
//! endpoint table, `policy::authorize_observed` (the decision the proxy and forward-auth fronts
//! make, watched by a [`trace::Trace`]), and `proxy::forward::upstream_request` (the upstream's
//! path and headers) — and reports what each returned. Nothing here decides anything itself:
//! the per-route "why" comes from `routes::RouteTable::check_all`, which the route table's
//! tests hold to the same answer as its trie.
//!
//! Offline by design: no state store is opened (revocation is reported as not checked), no
//! upstream is contacted, no health check runs. A remote JWKS (`tokens.jwks`) is fetched as the
//! gateway would when the request carries a token, and the report says so.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::Version;
use tokio_util::task::TaskTracker;

use crate::credentials;
use crate::error::GatewayError;
use crate::policy::{Grant, authorize_observed};
use crate::proxy::forward::{Forwarding, upstream_request};
use crate::proxy::upstream::Target as UpstreamTarget;
use crate::request::{Conn, RequestView, Target};
use crate::snapshot::Snapshot;
use crate::state::Mirror;

pub mod input;
pub mod report;
mod sections;
pub mod text;
mod trace;

pub use input::Args;
pub use report::{Decision, Report};

use input::Input;
use report::{RequestReport, UpstreamReport};
use trace::Trace;

/// The client address explain assumes (TEST-NET-1, RFC 5737): it shows in `X-Forwarded-For`.
const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 50000);
/// The listener explain pretends the request arrived on (nothing reads it to decide).
const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 8080);

/// Explains the request `args` describe. `Err` is bad input (exit 2), with its reason.
pub async fn explain(snap: &Snapshot, args: &Args) -> Result<Report, String> {
    let mut input = input::parse(snap, args)?;
    let mut report = Report::new(request_report(snap, args, &input), raw_path(&input));
    report.notes.append(&mut input.notes);
    if input.given.is_some() {
        report.notes.extend(fetch_remote_keys(snap).await);
    }
    let conn = Conn::new(CLIENT, LOCAL, input.scheme);
    // The gateway's first step, as `Gateway::process` runs it.
    let target = match Target::check(
        &input.method,
        &input.uri,
        Version::HTTP_11,
        &input.headers,
        |m| snap.serves_method(m),
    ) {
        Ok(target) => target,
        Err(error) => {
            if let GatewayError::BadPath(why) = &error {
                report.path.refused = Some(why.to_string());
            }
            report.deny(&error);
            return Ok(report);
        }
    };
    report.path.normalized = Some(target.path.to_string());
    let view = RequestView::new(&input.method, &target, &input.headers, &conn);
    if let Some(endpoint) = snap.endpoints.find(view.path) {
        report.routes = sections::routes(snap, view.method, view.host_str(), view.path, None);
        report.decision = Decision::Endpoint;
        report.endpoint = Some(endpoint.label());
        report.reason = format!(
            "answered by the gateway's own {} endpoint, before any route (explain does not run endpoints)",
            endpoint.label().trim_matches(['(', ')'])
        );
        return Ok(report);
    }
    decide(snap, &input, &view, &target, &mut report).await;
    if let Some(fa) = &snap.forward_auth {
        report.notes.push(format!(
            "this is the answer to a proxied request; an edge asking {} gets the same decision, answered for the edge (see the README's Forward-auth section)",
            fa.path
        ));
    }
    Ok(report)
}

/// The decision, watched, and what the gateway does with it.
async fn decide(
    snap: &Snapshot,
    input: &Input,
    view: &RequestView<'_>,
    target: &Target<'_>,
    report: &mut Report,
) {
    let mut trace = Trace::default();
    // An empty mirror: explain never reads the state store.
    let mirror = Mirror::default();
    let result = authorize_observed(snap, &mirror, view, &mut trace).await;
    let chosen = trace.route.flatten();
    report.routes = sections::routes(snap, view.method, view.host_str(), view.path, chosen);
    if let Some(index) = chosen {
        let route = snap.routes.get(index);
        let raw_token = credentials::token(view.headers, &snap.cookie.name)
            .ok()
            .flatten()
            .map(|(token, _)| token);
        report.route = Some(route.name.to_string());
        report.auth = Some(sections::auth(snap, route, &trace, input.given, raw_token));
        report.allow = sections::allow(route, &trace);
    }
    match result {
        Ok(grant) => forwarded(snap, input, view, target, &grant, report),
        Err(denial) => {
            if denial.set_cookie.is_some() {
                report
                    .notes
                    .push("the answer also clears the unusable session cookie".into());
            }
            report.deny(&denial.error);
        }
    }
}

/// A granted request: where it goes and what the upstream receives, from the forwarding
/// step's own function.
fn forwarded(
    snap: &Snapshot,
    input: &Input,
    view: &RequestView<'_>,
    target: &Target<'_>,
    grant: &Grant,
    report: &mut Report,
) {
    let route = snap.routes.get(grant.route);
    let Some(upstream) = snap.upstream(route) else {
        report.notes.push(format!(
            "route `{}` has no upstream (it serves forward-auth only): a proxied request is answered 404",
            route.name
        ));
        report.deny(&GatewayError::NoRoute);
        return;
    };
    let request_id = crate::gateway::request_id(&input.headers);
    let tunnels = TaskTracker::new();
    // Trace context as without `telemetry` (explain exports nothing): a client's valid
    // `traceparent` goes on unchanged, an invalid one is dropped.
    let trace = crate::telemetry::RequestTrace::start(None, &input.headers);
    let forwarding = Forwarding {
        snapshot: snap,
        grant,
        path: view.path,
        query: target.query,
        host: target.host.as_ref(),
        request_id: &request_id,
        conn: view.conn,
        tunnels: &tunnels,
        trace: &trace.propagation,
    };
    let mut headers = input.headers.clone();
    let path = match upstream_request(&forwarding, route, upstream, &mut headers) {
        Ok(path) => path,
        Err(error) => return report.deny(&error),
    };
    let (servers, balance) = match &upstream.target {
        UpstreamTarget::Echo => (vec!["builtin:echo".to_owned()], None),
        UpstreamTarget::Servers(s) => (
            s.list
                .iter()
                .map(|server| server.label.to_string())
                .collect(),
            Some(match s.balance {
                crate::config::Balance::RoundRobin => "round_robin",
                crate::config::Balance::LeastConn => "least_conn",
            }),
        ),
    };
    report.upstream = Some(UpstreamReport {
        name: upstream.name.to_string(),
        servers,
        balance,
        path: path.to_string(),
    });
    let identity = &grant.identity;
    report.headers = Some(sections::headers(
        &input.headers,
        &headers,
        identity,
        &snap.cookie.name,
    ));
    if grant.set_cookie.is_some() {
        report
            .notes
            .push("the answer also sets a session cookie (renewal or clearing)".into());
    }
    report.decision = Decision::Allow;
    report.reason = format!(
        "forwarded to upstream `{}`; the upstream's answer is the status",
        upstream.name
    );
}

fn request_report(snap: &Snapshot, args: &Args, input: &Input) -> RequestReport {
    RequestReport {
        method: input.method.to_string(),
        url: args.url.clone(),
        scheme: input.scheme.as_str(),
        host: input
            .headers
            .get(http::header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
        client: CLIENT.ip().to_string(),
        headers: sections::lines(&input.headers, &snap.cookie.name),
    }
}

fn raw_path(input: &Input) -> String {
    input.uri.path().to_owned()
}

/// Fetches every remote key set once, as a starting gateway does, so a token of an external
/// identity provider is verified with its current keys.
async fn fetch_remote_keys(snap: &Snapshot) -> Vec<String> {
    let mut notes = Vec::new();
    for provider in snap.verifier.providers() {
        let (url, issuer) = (&provider.settings.url, &provider.settings.issuer);
        notes.push(match provider.fetch().await {
            Ok(keys) => format!(
                "tokens.jwks: fetched {url} ({keys} keys) as the gateway does, for tokens of `{issuer}`"
            ),
            Err(e) => format!(
                "tokens.jwks: could not fetch {url} ({e}): tokens of `{issuer}` are refused until it answers"
            ),
        });
    }
    notes
}
