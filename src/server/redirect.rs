//! The plain-HTTP listener beside an HTTPS one, in `redirect` mode: every request is answered
//! with a 308 to the same host and target on `https://` (the method and body are kept by the
//! client, RFC 9110 §15.4.9). Nothing is forwarded and no token is looked at.

use http::header::{CACHE_CONTROL, HOST, HeaderValue, LOCATION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::proxy::Body;
use crate::routes::{host_name, is_valid_authority};

/// The redirect for `req`, or a 400 when it names no valid host.
pub fn to_https(req: &Request<Incoming>, https_port: u16) -> Response<Body> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let Some(host) = host.filter(|h| is_valid_authority(h.as_bytes())) else {
        let body = "a redirect to https needs a valid Host header\n";
        return crate::response::full(StatusCode::BAD_REQUEST, "text/plain", body);
    };
    let name = host_name(&host);
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = match https_port {
        443 => format!("https://{name}{target}"),
        port => format!("https://{name}:{port}{target}"),
    };
    let mut resp = crate::response::empty(StatusCode::PERMANENT_REDIRECT);
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(LOCATION, v);
        }
        Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
