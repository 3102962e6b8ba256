//! The verify endpoint: reads the original request the edge names, decides on it with the
//! same policy as a proxied request, and renders the decision for the edge.

use http::header::{HOST, HeaderMap, HeaderName, HeaderValue, LOCATION, SET_COOKIE};
use http::{Method, Response, StatusCode, Uri};

use super::ForwardAuth;
use crate::error::GatewayError;
use crate::policy::{self, Denial, Grant};
use crate::proxy::Body;
use crate::request::{RequestView, Scheme, Target};
use crate::routes::Route;
use crate::session::{encode_component, is_navigation};
use crate::snapshot::Snapshot;
use crate::state::Mirror;

/// One header the edge sends, at most once.
fn single<'h>(headers: &'h HeaderMap, names: &[&str]) -> Result<Option<&'h str>, GatewayError> {
    for name in names {
        let mut values = headers.get_all(*name).iter();
        if let Some(v) = values.next() {
            if values.next().is_some() {
                return Err(GatewayError::BadRequest(
                    "the original request is named twice",
                ));
            }
            return v
                .to_str()
                .map(Some)
                .map_err(|_| GatewayError::BadRequest("the original request is not text"));
        }
    }
    Ok(None)
}

/// The original request, as the edge names it.
struct Original {
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    scheme: Scheme,
}

impl Original {
    fn read(headers: &HeaderMap) -> Result<Original, GatewayError> {
        // Fix: an edge sets its own family of headers and passes the client's other headers on
        // unchanged (nginx sets X-Original-* but forwards a client's X-Forwarded-Uri; Traefik
        // and Caddy set X-Forwarded-* but forward a client's X-Original-URI). Preferring one
        // family let a client name another request than the one the edge serves (through
        // nginx, `X-Forwarded-Uri: /public` opened any path), so a request named by both
        // families is refused, and with nginx's family the host is `Host` (nginx passes a
        // client's X-Forwarded-Host on too).
        let named_by = |names: [&str; 2]| names.iter().any(|n| headers.contains_key(*n));
        let forwarded = named_by(["x-forwarded-method", "x-forwarded-uri"]);
        let nginx = named_by(["x-original-method", "x-original-uri"]);
        if forwarded && nginx {
            return Err(GatewayError::BadRequest(
                "the original request is named by both X-Forwarded-* and X-Original-* headers",
            ));
        }
        let method = single(headers, &["x-forwarded-method", "x-original-method"])?.ok_or(
            GatewayError::BadRequest("the edge must send X-Forwarded-Method or X-Original-Method"),
        )?;
        let uri = single(headers, &["x-forwarded-uri", "x-original-uri"])?.ok_or(
            GatewayError::BadRequest("the edge must send X-Forwarded-Uri or X-Original-URI"),
        )?;
        let scheme = match single(headers, &["x-forwarded-proto"])? {
            None | Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(_) => {
                return Err(GatewayError::BadRequest(
                    "X-Forwarded-Proto must be http or https",
                ));
            }
        };
        let host = match single(headers, &["x-forwarded-host"])? {
            Some(h) if !nginx => HeaderValue::from_str(h).ok(),
            _ => headers.get(HOST).cloned(),
        };
        Ok(Original {
            method: Method::from_bytes(method.as_bytes())
                .map_err(|_| GatewayError::BadRequest("X-Forwarded-Method is not a method"))?,
            uri: uri.parse().map_err(|_| {
                GatewayError::BadRequest("the original URI is not a request target")
            })?,
            host,
            scheme,
        })
    }

    /// The absolute URL the browser asked for (where to come back after logging in).
    fn url(&self, target: &Target<'_>) -> Option<String> {
        let host = target.host.as_ref()?.to_str().ok()?;
        let query = target.query.map_or(String::new(), |q| format!("?{q}"));
        Some(format!(
            "{}://{host}{}{query}",
            self.scheme.as_str(),
            target.path
        ))
    }
}

impl ForwardAuth {
    /// Answers a verify request.
    pub async fn verify(
        &self,
        snap: &Snapshot,
        mirror: &Mirror,
        asked: &RequestView<'_>,
    ) -> Result<(Response<Body>, Option<Grant>), GatewayError> {
        let peer = asked.conn.peer.ip();
        if !self.trusted.iter().any(|n| n.contains(&peer)) {
            return Err(GatewayError::UntrustedProxy);
        }
        let original = Original::read(asked.headers)?;
        let target = Target::named(
            &original.method,
            &original.uri,
            original.host.clone(),
            |m| snap.serves_method(m),
        )?;
        let mut view = RequestView::new(&original.method, &target, asked.headers, asked.conn);
        view.scheme = original.scheme;
        let redirect = asked.query.is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "mode" && v == "redirect")
        });
        match policy::authorize(snap, mirror, &view).await {
            Ok(grant) => Ok((allowed(snap, &grant), Some(grant))),
            Err(denial) => Ok((
                denied(snap, &view, &original, &target, *denial, redirect),
                None,
            )),
        }
    }
}

/// 200 with every identity header the route injects (empty when the claim is absent, so the
/// edge's copy always overwrites whatever the client sent).
///
/// Fix: and every identity header *any* route injects, empty when this route does not inject
/// it — as proxy mode strips them on every route, public ones included. An edge copies a fixed
/// list of headers whatever the route, and some do not overwrite one missing from the answer
/// (Caddy before 2.9 sets it to the literal `{http.reverse_proxy.header.X-User-Id}`).
fn allowed(snap: &Snapshot, grant: &Grant) -> Response<Body> {
    let mut resp = crate::response::empty(StatusCode::OK);
    let headers = resp.headers_mut();
    for name in snap
        .routes
        .iter()
        .flat_map(|(_, route)| identity_headers(route))
    {
        let value = grant
            .identity
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| HeaderValue::from_static(""), |(_, v)| v.clone());
        headers.insert(name.clone(), value);
    }
    if let Some(cookie) = &grant.set_cookie {
        headers.append(SET_COOKIE, cookie.clone());
    }
    resp
}

/// The refusal, rendered for the edge: a browser without a session is sent to the login page
/// with the original absolute URL to come back to.
fn denied(
    snap: &Snapshot,
    view: &RequestView<'_>,
    original: &Original,
    target: &Target<'_>,
    denial: Denial,
    redirect: bool,
) -> Response<Body> {
    let error = match denial.error {
        GatewayError::LoginRedirect { reason, .. } => GatewayError::Token(reason),
        GatewayError::NoRoute => GatewayError::Unrouted,
        other => other,
    };
    let login = (matches!(error, GatewayError::Token(_))
        && is_navigation(view.method, view.headers))
    .then(|| login_location(snap, original, target))
    .flatten();
    let mut resp = match (&login, redirect) {
        (Some(location), true) => {
            let mut r = crate::response::redirect(StatusCode::FOUND, location);
            error.add_headers(r.headers_mut());
            r
        }
        (Some(location), false) => {
            let mut r = error.to_response();
            if let Ok(v) = HeaderValue::from_str(location) {
                r.headers_mut().insert(LOCATION, v);
            }
            r
        }
        (None, _) => error.to_response(),
    };
    if let Some(cookie) = denial.set_cookie {
        resp.headers_mut().append(SET_COOKIE, cookie);
    }
    resp
}

fn login_location(snap: &Snapshot, original: &Original, target: &Target<'_>) -> Option<String> {
    let login = snap.login.as_ref()?;
    let next = original
        .url(target)
        .unwrap_or_else(|| target.path.to_string());
    Some(format!("{}?next={}", login.path, encode_component(&next)))
}

/// Every header a forward-auth answer carries for a route.
fn identity_headers(route: &Route) -> impl Iterator<Item = &HeaderName> {
    route
        .headers
        .iter()
        .map(|(n, _)| n)
        .chain(route.assertion.iter().map(|a| &a.header))
}
