//! Refresh tokens (when `tokens.refresh` is set). A JSON login also returns an opaque refresh
//! token — 256 random bits, stored only as its SHA-256 in the state store, never logged —
//! that `POST {login.refresh_path}` exchanges for a new access token and a new refresh token
//! (rotation: the presented one is spent). The session (`sid`) is kept across refreshes. A spent
//! token presented again after `reuse_grace` means it was copied: the whole session is revoked
//! (RFC 9700 §4.14.2). Idle and absolute lifetimes are enforced by the store.

use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::form::{Form, client_ip, content_type, read_body};
use super::{Answer, Login, Services, check_rate};
use crate::auth::issue::{Issued, hash_refresh_token, new_refresh_token};
use crate::clock::unix_now;
use crate::error::GatewayError;
use crate::request::RequestView;
use crate::state::Revocation;
use crate::state::store::{Exchange, NewSession, Rotation};

/// Longest refresh token read (ours are 43 characters).
const MAX_REFRESH_TOKEN: usize = 512;

/// Starts a refresh-token family for a session just logged into; returns its first token.
pub async fn start_session(
    issued: &Issued,
    sub: &str,
    claims: Map<String, Value>,
    services: &Services<'_>,
) -> Result<Option<String>, GatewayError> {
    let Some(settings) = services.issuer.refresh else {
        return Ok(None);
    };
    let now = unix_now();
    let expires = now + settings.ttl.as_secs();
    let first = new_refresh_token();
    services
        .state
        .create_session(NewSession {
            sid: issued.sid.clone(),
            sub: sub.to_owned(),
            claims,
            expires,
            refresh: first.hash,
            refresh_expires: (now + settings.idle_ttl.as_secs()).min(expires),
        })
        .await?;
    Ok(Some(first.token))
}

/// The presented refresh token: JSON `{"refresh_token": "..."}` or the RFC 6749 §6 form
/// (`grant_type=refresh_token&refresh_token=...`).
fn presented_token(form: &Form, body: &[u8]) -> Result<String, GatewayError> {
    let token = match form {
        Form::Json => serde_json::from_slice::<Map<String, Value>>(body)
            .ok()
            .and_then(|o| o.get("refresh_token")?.as_str().map(str::to_owned)),
        Form::UrlEncoded => {
            let mut grant = None;
            let mut token = None;
            for (k, v) in form_urlencoded::parse(body) {
                let slot = match &*k {
                    "grant_type" => &mut grant,
                    "refresh_token" => &mut token,
                    _ => continue,
                };
                if slot.replace(v.into_owned()).is_some() {
                    return Err(GatewayError::BadRequest("a parameter is given twice"));
                }
            }
            if grant.as_deref() != Some("refresh_token") {
                return Err(GatewayError::BadRequest(
                    "`grant_type` must be `refresh_token`",
                ));
            }
            token
        }
    };
    match token {
        Some(t) if !t.is_empty() && t.len() <= MAX_REFRESH_TOKEN => Ok(t),
        _ => Err(GatewayError::BadRequest(
            "expected a `refresh_token` (JSON object or form field)",
        )),
    }
}

impl Login {
    /// `POST {login.refresh_path}`.
    pub async fn refresh(
        &self,
        view: &RequestView<'_>,
        body: Incoming,
        services: &Services<'_>,
    ) -> Result<Answer, GatewayError> {
        if *view.method != Method::POST {
            return Err(GatewayError::MethodNotAllowed("POST"));
        }
        let Some(settings) = services.issuer.refresh else {
            return Err(GatewayError::NoRoute);
        };
        let form = content_type(view.headers)?;
        let client = client_ip(view.headers, view.conn.peer.ip(), &self.trusted_proxies);
        let key = format!("refresh-client:{client}");
        check_rate(services.state, &key, self.per_client).await?;
        let body = read_body(body, view.headers, self.max_body).await?;
        let presented = presented_token(&form, &body)?;
        let next = new_refresh_token();
        let now = unix_now();
        let exchange = Exchange {
            presented: hash_refresh_token(&presented),
            next: next.hash,
            next_expires: now + settings.idle_ttl.as_secs(),
            now,
            reuse_grace: settings.reuse_grace.as_secs(),
        };
        match services.state.rotate(exchange).await? {
            Rotation::Rotated(session) => {
                let issued = services
                    .issuer
                    .issue(&session.sub, session.claims, Some(&session.sid))
                    .map_err(|e| {
                        tracing::error!(error = %e, "cannot sign a token for a refresh");
                        GatewayError::Internal
                    })?;
                let response = crate::response::json(
                    StatusCode::OK,
                    &json!({
                        "access_token": issued.token,
                        "token_type": "Bearer",
                        "expires_in": services.issuer.ttl().as_secs(),
                        "refresh_token": next.token,
                    }),
                );
                Ok(Answer {
                    response,
                    user: Some(session.sub),
                    error: None,
                })
            }
            Rotation::Reused { sid, sub } => {
                tracing::warn!(
                    sub,
                    "a spent refresh token came back: revoking its whole session"
                );
                let until = services.issuer.session_end_from_now();
                services
                    .state
                    .revoke(Revocation::Session { sid, until })
                    .await?;
                Err(GatewayError::InvalidGrant)
            }
            Rotation::Invalid => Err(GatewayError::InvalidGrant),
        }
    }
}
