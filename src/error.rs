//! One small typed error per way a request can fail, and the single mapping from them to HTTP
//! answers: status, JSON body `{"error","message"}`, and `WWW-Authenticate` (RFC 6750 §3) on
//! 401 and 403. Messages name the reason and never internals.

use std::time::Duration;

use http::header::{ALLOW, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::auth::TokenError;
use crate::path::PathError;
use crate::proxy::Body;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadPath(#[from] PathError),
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("no route for this request")]
    NoRoute,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("token claim `{0}` does not allow this route")]
    Forbidden(String),
    #[error("upstream is unreachable")]
    UpstreamUnreachable,
    #[error("upstream failed to answer")]
    UpstreamFailed,
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("method not allowed here (allowed: {0})")]
    MethodNotAllowed(&'static str),
    #[error("this method is not served")]
    MethodNotImplemented,
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error("send application/json or application/x-www-form-urlencoded")]
    UnsupportedMediaType,
    #[error("too many attempts; retry later")]
    TooManyRequests(Duration),
    #[error("invalid username or password")]
    InvalidCredentials,
    /// A forward-auth request from a peer not in `forward_auth.trusted_proxies`.
    #[error("this caller may not ask for forward-auth decisions")]
    UntrustedProxy,
    /// Forward-auth: no route takes the request named (deny by default).
    #[error("no route allows this request")]
    Unrouted,
    /// RFC 6749 §5.2 `invalid_grant`.
    #[error("the refresh token is not valid (unknown, expired, revoked or already used)")]
    InvalidGrant,
    #[error("internal error")]
    Internal,
    /// Login, refresh and logout need the state store; without it they refuse rather than
    /// pretend (a logout that was not recorded is not a logout).
    #[error("the session store is unavailable; try again shortly")]
    StoreUnavailable(#[from] crate::state::StoreError),
    #[error("this form was sent from another site")]
    CrossSite,
    /// A browser navigation without a usable session: off to the login page.
    #[error("sign in first")]
    LoginRedirect {
        location: HeaderValue,
        /// Why there was no usable session (for logs and metrics).
        reason: TokenError,
    },
}

/// Every reason a request is refused for authentication or authorization
/// (`authgate_auth_failures_total`), the same words as in the log: a token's
/// [`TokenError::reason`], then the refusals that are not about a token.
pub const AUTH_FAILURE_REASONS: [&str; 21] = [
    "missing",
    "too_large",
    "malformed",
    "encrypted",
    "unsigned",
    "forbidden_header",
    "unknown_kid",
    "wrong_algorithm",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "missing_claim",
    "bad_claim",
    "wrong_issuer",
    "wrong_audience",
    "revoked",
    "insufficient_scope",
    "invalid_credentials",
    "invalid_grant",
    "too_many_requests",
    "cross_site_request",
];

impl GatewayError {
    /// The reason counted in `authgate_auth_failures_total`, for refusals about identity.
    pub fn auth_failure(&self) -> Option<&'static str> {
        match self {
            GatewayError::Token(_)
            | GatewayError::LoginRedirect { .. }
            | GatewayError::Forbidden(_)
            | GatewayError::InvalidCredentials
            | GatewayError::InvalidGrant
            | GatewayError::TooManyRequests(_)
            | GatewayError::CrossSite => Some(self.reason()),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadPath(_) | GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::Token(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::UpstreamUnreachable | GatewayError::UpstreamFailed => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::MethodNotImplemented => StatusCode::NOT_IMPLEMENTED,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::InvalidCredentials | GatewayError::InvalidGrant => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::CrossSite | GatewayError::UntrustedProxy | GatewayError::Unrouted => {
                StatusCode::FORBIDDEN
            }
            GatewayError::LoginRedirect { .. } => StatusCode::FOUND,
        }
    }

    /// The `error` code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadPath(_) | GatewayError::BadRequest(_) => "invalid_request",
            GatewayError::NoRoute => "not_found",
            GatewayError::Token(_) => "invalid_token",
            GatewayError::Forbidden(_) => "insufficient_scope",
            GatewayError::UpstreamUnreachable | GatewayError::UpstreamFailed => "bad_gateway",
            GatewayError::UpstreamTimeout => "gateway_timeout",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::MethodNotImplemented => "not_implemented",
            GatewayError::PayloadTooLarge => "payload_too_large",
            GatewayError::UnsupportedMediaType => "unsupported_media_type",
            GatewayError::TooManyRequests(_) => "too_many_requests",
            GatewayError::InvalidCredentials => "invalid_credentials",
            GatewayError::InvalidGrant => "invalid_grant",
            GatewayError::Internal => "internal_error",
            GatewayError::StoreUnavailable(_) => "store_unavailable",
            GatewayError::CrossSite => "cross_site_request",
            GatewayError::UntrustedProxy | GatewayError::Unrouted => "forbidden",
            GatewayError::LoginRedirect { .. } => "login_required",
        }
    }

    /// A short fixed label for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::Token(t) | GatewayError::LoginRedirect { reason: t, .. } => t.reason(),
            GatewayError::Forbidden(_) => "insufficient_scope",
            other => other.code(),
        }
    }

    pub fn to_response(&self) -> Response<Body> {
        let status = self.status();
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        let mut resp = crate::response::json(status, &body);
        self.add_headers(resp.headers_mut());
        resp
    }

    /// The headers that go with this error whatever the body: `WWW-Authenticate` (RFC 6750
    /// §3), `Allow`, `Retry-After`, `Location`.
    pub fn add_headers(&self, headers: &mut http::HeaderMap) {
        let challenge = match self {
            GatewayError::Token(_) => Some("Bearer realm=\"authgate\", error=\"invalid_token\""),
            GatewayError::Forbidden(_) => {
                Some("Bearer realm=\"authgate\", error=\"insufficient_scope\"")
            }
            GatewayError::InvalidCredentials => Some("Bearer realm=\"authgate\""),
            _ => None,
        };
        if let Some(c) = challenge {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        match self {
            GatewayError::MethodNotAllowed(allow) => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            GatewayError::TooManyRequests(wait) => {
                // Whole seconds, rounded up (RFC 9110 §10.2.3).
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                headers.insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            GatewayError::LoginRedirect { location, .. } => {
                headers.insert(http::header::LOCATION, location.clone());
            }
            _ => {}
        }
    }
}
