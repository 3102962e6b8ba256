//! What the gateway knows about a request before deciding on it: the connection it came on
//! ([`Conn`]) and a checked, normalized view of the request line and headers
//! ([`RequestView`]). Every front (the proxy today; forward-auth, OIDC callbacks) builds a view
//! and the policy decides on the view alone, so all fronts share one set of decisions.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Map, Value};

use http::header::{HOST, HeaderMap, HeaderValue};
use http::uri::Uri;
use http::{Method, Version};

use crate::auth::memo::ConnectionMemo;
use crate::error::GatewayError;
use crate::path::normalize;
use crate::routes::is_valid_authority;

/// The scheme a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One client connection: where it comes from, where it arrived, how, and the last token
/// verified on it.
#[derive(Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub scheme: Scheme,
    pub memo: ConnectionMemo,
    /// The verified client certificate's identity (mutual TLS), as the claims routes read
    /// under `tls.client`: `{"tls": {"client": {"subject", "cn", "dns", ...}}}`.
    pub client: Option<Arc<Map<String, Value>>>,
}

impl Conn {
    pub fn new(peer: SocketAddr, local: SocketAddr, scheme: Scheme) -> Conn {
        Conn {
            peer,
            local,
            scheme,
            memo: ConnectionMemo::default(),
            client: None,
        }
    }

    /// With a client certificate's claims (`ClientIdentity::as_claims`), nested under
    /// `tls.client` so a route can never confuse them with a token's claims.
    pub fn with_client(mut self, identity: Option<Arc<Map<String, Value>>>) -> Conn {
        self.client = identity.map(|claims| {
            let mut tls = Map::new();
            tls.insert("client".into(), Value::Object((*claims).clone()));
            let mut root = Map::new();
            root.insert("tls".into(), Value::Object(tls));
            Arc::new(root)
        });
        self
    }
}

/// The checked request line: the host and the normalized path (routing runs on it and the
/// upstream receives it). Borrows only the URI, so the rest of the request can still be
/// rewritten and moved on while the path lives.
#[derive(Debug)]
pub struct Target<'u> {
    pub host: Option<HeaderValue>,
    pub path: Cow<'u, str>,
    pub query: Option<&'u str>,
}

impl<'u> Target<'u> {
    /// The checks every request passes: the target form, the method (upper case, one that is
    /// served), the host and the path.
    pub fn check(
        method: &Method,
        uri: &'u Uri,
        version: Version,
        headers: &HeaderMap,
        serves_method: impl Fn(&Method) -> bool,
    ) -> Result<Target<'u>, GatewayError> {
        if uri.path().is_empty() || *method == Method::CONNECT {
            return Err(GatewayError::BadRequest(
                "only origin-form and absolute-form targets are served",
            ));
        }
        // Methods are case-sensitive (RFC 9110 §9.1), but some backends upper-case them: `get`
        // would miss a GET-only rule here and still be served as GET there.
        if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(GatewayError::BadRequest("methods must be upper case"));
        }
        if !serves_method(method) {
            return Err(GatewayError::MethodNotImplemented);
        }
        Ok(Target {
            host: request_host(uri, version, headers)?,
            path: normalize(uri.path())?,
            query: uri.query(),
        })
    }

    /// The same checks for a request an edge proxy names (forward-auth): the method, the host
    /// it gives, and the origin-form `uri`.
    pub fn named(
        method: &Method,
        uri: &'u Uri,
        host: Option<HeaderValue>,
        serves_method: impl Fn(&Method) -> bool,
    ) -> Result<Target<'u>, GatewayError> {
        if uri.scheme().is_some() || uri.authority().is_some() || !uri.path().starts_with('/') {
            return Err(GatewayError::BadRequest(
                "the original URI must be a path (origin-form)",
            ));
        }
        if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(GatewayError::BadRequest("methods must be upper case"));
        }
        if !serves_method(method) || *method == Method::CONNECT {
            return Err(GatewayError::MethodNotImplemented);
        }
        if host
            .as_ref()
            .is_some_and(|h| !is_valid_authority(h.as_bytes()))
        {
            return Err(GatewayError::BadRequest(
                "the host must be a plain host[:port] (no userinfo, no percent-encoding)",
            ));
        }
        Ok(Target {
            host,
            path: normalize(uri.path())?,
            query: uri.query(),
        })
    }
}

/// A request as the policy sees it: the method, the host, the normalized path, the query, the
/// headers and the connection.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The scheme the client used: the connection's, or, in forward-auth, the edge's word.
    pub scheme: Scheme,
    pub method: &'a Method,
    pub host: Option<&'a HeaderValue>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub conn: &'a Conn,
}

impl<'a> RequestView<'a> {
    pub fn new(
        method: &'a Method,
        target: &'a Target<'_>,
        headers: &'a HeaderMap,
        conn: &'a Conn,
    ) -> RequestView<'a> {
        RequestView {
            scheme: conn.scheme,
            method,
            host: target.host.as_ref(),
            path: &target.path,
            query: target.query,
            headers,
            conn,
        }
    }

    /// The host as text (a valid `host[:port]` is ASCII).
    pub fn host_str(&self) -> Option<&'a str> {
        self.host.and_then(|h| h.to_str().ok())
    }
}

/// The request's host: from an absolute-form target (or HTTP/2 `:authority`), else from the
/// single `Host` header; it must be a valid `host[:port]`, and the two must agree.
fn request_host(
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, GatewayError> {
    let mut hosts = headers.get_all(HOST).iter();
    let header = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("several Host headers"));
    }
    let authority = uri.authority().map(http::uri::Authority::as_str);
    if authority.is_some_and(|a| !is_valid_authority(a.as_bytes()))
        || header
            .as_ref()
            .is_some_and(|h| !is_valid_authority(h.as_bytes()))
    {
        return Err(GatewayError::BadRequest(
            "the host must be a plain host[:port] (no userinfo, no percent-encoding)",
        ));
    }
    match (authority, header) {
        (Some(authority), Some(h)) if !authority.eq_ignore_ascii_case(h.to_str().unwrap_or("")) => {
            Err(GatewayError::BadRequest(
                "request target and Host header name different hosts",
            ))
        }
        (Some(authority), _) => Ok(HeaderValue::from_str(authority).ok()),
        (None, None) if version == Version::HTTP_11 => Err(GatewayError::BadRequest(
            "HTTP/1.1 requests must carry a Host header",
        )),
        (None, h) => Ok(h),
    }
}
