//! The proxy front's action on a granted request: rewrite its headers, send it to the route's
//! upstream with the normalized path, stream the answer back (or join a WebSocket tunnel).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio_util::task::TaskTracker;

use super::body::{Body, BodyState, BodyWatch, stream, stream_watched};
use super::echo;
use super::headers::{KeepCredential, Outgoing, prepare_request, remove_hop_by_hop};
use super::upgrade::{self, Handshake};
use super::upstream::{Server, Target, Upstream};
use crate::credentials::TokenSource;
use crate::error::GatewayError;
use crate::path::strip_segments;
use crate::policy::Grant;
use crate::request::Conn;
use crate::routes::Route;
use crate::snapshot::Snapshot;
use crate::telemetry::Propagation;

/// What forwarding needs besides the request itself.
pub struct Forwarding<'a> {
    pub snapshot: &'a Snapshot,
    pub grant: &'a Grant,
    /// The normalized path: the upstream receives exactly what was routed.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub host: Option<&'a HeaderValue>,
    pub request_id: &'a HeaderValue,
    pub conn: &'a Conn,
    /// Where WebSocket tunnels are tracked (shutdown waits for them).
    pub tunnels: &'a TaskTracker,
    /// The W3C trace context the upstream gets.
    pub trace: &'a Propagation,
}

/// What forwarding tells the request's span: the server the request went to (the last one
/// tried) and how long it took to answer.
#[derive(Debug, Default)]
pub struct Sent {
    pub server: Option<Arc<Server>>,
    pub elapsed: Option<Duration>,
}

/// The path sent upstream: the normalized path, less `strip_prefix`, under the base path.
fn upstream_path(
    route: &Route,
    base: &str,
    path: &str,
    query: Option<&str>,
) -> Result<PathAndQuery, GatewayError> {
    let path = match &route.strip_prefix {
        Some(prefix) => strip_segments(path, prefix).unwrap_or(path),
        None => path,
    };
    let mut out = String::with_capacity(base.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(base);
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    PathAndQuery::try_from(out).map_err(|_| GatewayError::BadRequest("invalid request target"))
}

/// Only the credential that was verified goes upstream, and only when the route asks for it.
fn keep_credential(route: &Route, grant: &Grant) -> KeepCredential {
    match (
        route.forward_token && grant.token.is_some(),
        grant.credential,
    ) {
        (true, Some(TokenSource::Header)) => KeepCredential::Authorization,
        (true, Some(TokenSource::Cookie)) => KeepCredential::Cookie,
        _ => KeepCredential::Neither,
    }
}

/// A body over the route's limit is refused before anything is sent when its length is
/// declared, and cut off at the limit when it streams; the watch tells a body the client broke
/// (or that hit the limit) from an upstream failure.
fn request_body(
    route: &Route,
    parts: &Parts,
    body: Incoming,
) -> Result<(Body, Arc<BodyWatch>), GatewayError> {
    let watch = Arc::new(BodyWatch::default());
    if hyper::body::Body::is_end_stream(&body) {
        return Ok((stream(body), watch));
    }
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(max), Some(n)) = (route.max_body, declared)
        && n > max
    {
        return Err(GatewayError::PayloadTooLarge);
    }
    Ok((stream_watched(body, route.max_body, watch.clone()), watch))
}

/// What the upstream receives of a granted request: the path (normalized, less
/// `strip_prefix`, under the upstream's base path, with the query) and the headers, rewritten
/// in place by [`prepare_request`]. `authgate explain` shows its output, so the explanation is
/// this function's work and not a description of it.
pub fn upstream_request(
    f: &Forwarding<'_>,
    route: &Route,
    upstream: &Upstream,
    headers: &mut HeaderMap,
) -> Result<PathAndQuery, GatewayError> {
    let snap = f.snapshot;
    let path_and_query = upstream_path(route, upstream.base_path(), f.path, f.query)?;
    prepare_request(
        headers,
        &Outgoing {
            strip: &snap.strip,
            request_id: f.request_id,
            credential: keep_credential(route, f.grant),
            cookie_name: &snap.cookie.name,
            peer: f.conn.peer.ip(),
            proto: f.conn.scheme.as_str(),
            host: f.host,
            identity: &f.grant.identity,
            trace: f.trace,
        },
    );
    Ok(path_and_query)
}

/// Forwards a granted request and streams the answer back.
pub async fn forward(
    f: &Forwarding<'_>,
    mut parts: Parts,
    body: Incoming,
    sent: &mut Sent,
) -> Result<Response<Body>, GatewayError> {
    let snap = f.snapshot;
    let route = snap.routes.get(f.grant.route);
    // A route used only through forward-auth has nowhere to forward to.
    let Some(upstream) = snap.upstream(route) else {
        return Err(GatewayError::NoRoute);
    };
    // Read before the headers are rewritten: the handshake's hop-by-hop headers go then.
    let client_upgrade = upgrade::client_handshake(&parts.headers).and_then(|handshake| {
        let on_upgrade = parts.extensions.remove::<OnUpgrade>()?;
        Some((on_upgrade, handshake))
    });
    let path_and_query = upstream_request(f, route, upstream, &mut parts.headers)?;
    if client_upgrade.is_some() {
        upgrade::restore_upgrade_headers(&mut parts.headers);
    }
    parts.version = Version::HTTP_11;
    let (body, watch) = request_body(route, &parts, body)?;
    let mut upstream_req = Request::from_parts(parts, body);
    if let Target::Echo = upstream.target {
        *upstream_req.uri_mut() = Uri::from(path_and_query);
        return Ok(echo::respond(&upstream_req));
    }
    let started = Instant::now();
    let result = upstream
        .send(upstream_req, path_and_query, f.host, &mut sent.server)
        .await;
    let elapsed = started.elapsed();
    sent.elapsed = Some(elapsed);
    if let (Some(bound), Some(i)) = (snap.bound.get(), route.upstream) {
        bound.upstreams[i].observe(elapsed);
    }
    let resp = blame(result, &watch)?;
    answer(resp, client_upgrade, f.tunnels)
}

/// An upstream failure is the client's when its body broke or passed the limit.
fn blame(
    result: Result<Response<Body>, GatewayError>,
    watch: &BodyWatch,
) -> Result<Response<Body>, GatewayError> {
    if result.is_err() {
        match watch.state() {
            BodyState::OverLimit => return Err(GatewayError::PayloadTooLarge),
            BodyState::ClientError => {
                return Err(GatewayError::BadRequest(
                    "the request body could not be read",
                ));
            }
            BodyState::Fine => {}
        }
    }
    result
}

/// The upstream's answer for the client: hop-by-hop headers removed, and a 101 honoured only
/// as the WebSocket handshake the client asked for.
fn answer(
    mut resp: Response<Body>,
    client_upgrade: Option<(OnUpgrade, Handshake)>,
    tunnels: &TaskTracker,
) -> Result<Response<Body>, GatewayError> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        remove_hop_by_hop(resp.headers_mut());
        return Ok(resp);
    }
    match client_upgrade {
        Some((client, handshake)) if handshake.accepted_by(resp.headers()) => {
            remove_hop_by_hop(resp.headers_mut());
            upgrade::restore_upgrade_headers(resp.headers_mut());
            let upstream_io = hyper::upgrade::on(&mut resp);
            tunnels.spawn(upgrade::tunnel(client, upstream_io));
            Ok(resp)
        }
        // A 101 the client never asked for, or that is not the WebSocket handshake it asked
        // for, cannot be honoured: a raw tunnel would bypass every rule.
        _ => Err(GatewayError::UpstreamFailed),
    }
}
