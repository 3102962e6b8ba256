//! Single sign-on: the gateway's side of `login.oidc`. `GET {base}/oidc/{name}/start?next=…`
//! sends the browser to the provider (authorization code flow with PKCE, `state` and `nonce`
//! sealed in a short-lived cookie, see `crate::oidc`); `GET {base}/oidc/{name}/callback`
//! finishes: the ID token verified, its claims mapped (`claims:`) and checked (`allow:`), then
//! authgate issues its own token and session cookie — so every route rule, header, revocation
//! and logout works the same for SSO users — and sends the browser to `next`.

use http::header::{HOST, SET_COOKIE};
use http::{HeaderValue, Response, StatusCode};
use serde_json::{Map, Value};

use super::{Answer, Login, Services};
use crate::auth::issue::RESERVED_CLAIMS;
use crate::auth::{AllowRule, ClaimPath, ClaimSource};
use crate::clock::unix_now;
use crate::config::{Diagnostics, KeyPath, OidcAuthMethod, RawOidc};
use crate::oidc::{ClientAuth, OidcClient, OidcError, OidcSettings};
use crate::proxy::Body;
use crate::request::{RequestView, Scheme};

/// The claim every SSO-issued token carries: which provider logged the user in (for the
/// provider's logout).
pub const IDP_CLAIM: &str = "idp";

/// One compiled `login.oidc` entry.
pub struct Provider {
    pub name: String,
    pub start_path: String,
    pub callback_path: String,
    client: OidcClient,
    /// Whether `redirect_url` was configured (else it is derived from each request).
    fixed_redirect: bool,
    claims: Vec<(String, ClaimPath)>,
    allow: Vec<AllowRule>,
    pub auto_redirect: bool,
    post_logout: Option<String>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The directory of the login path: `/auth/login` → `/auth`.
fn base(login_path: &str) -> &str {
    login_path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

fn compile_claims(
    raw: &RawOidc,
    at: &KeyPath,
    diags: &mut Diagnostics,
) -> Vec<(String, ClaimPath)> {
    let mut claims = Vec::new();
    for (ours, theirs) in &raw.claims {
        if ours != "sub" && (RESERVED_CLAIMS.contains(&ours.as_str()) || ours == IDP_CLAIM) {
            diags.at(
                &at.key("claims").key(ours),
                format!("claim `{ours}` is set by authgate"),
            );
            continue;
        }
        claims.push((ours.clone(), ClaimPath::new(theirs.as_str())));
    }
    claims
}

/// Compiles `login.oidc`; `login_path` places the endpoints beside the login page.
pub fn compile(
    list: &[RawOidc],
    login_path: &str,
    leeway: u64,
    diags: &mut Diagnostics,
) -> Vec<Provider> {
    let mut providers: Vec<Provider> = Vec::new();
    for (i, raw) in list.iter().enumerate() {
        let at = KeyPath::root().key("login").key("oidc").index(i);
        if !name_ok(&raw.name) || providers.iter().any(|p| p.name == raw.name) {
            diags.at(
                &at.key("name"),
                format!(
                    "`{}` must be a unique name of letters, digits, `-` and `_`",
                    raw.name
                ),
            );
            continue;
        }
        let prefix = format!("{}/oidc/{}", base(login_path), raw.name);
        let callback_path = format!("{prefix}/callback");
        let redirect = raw.redirect_url.as_ref().map(|r| r.as_str().to_owned());
        let mut settings = OidcSettings::new(
            &raw.name,
            raw.issuer.as_str(),
            raw.client_id.as_str(),
            &raw.client_secret.0,
            // Derived per request when not configured; this one only fixes the cookie path.
            redirect
                .as_deref()
                .unwrap_or(&format!("http://localhost{callback_path}")),
        );
        settings.scopes = raw.scopes.iter().map(|s| s.as_str().to_owned()).collect();
        settings.auth_method = match raw.auth_method {
            OidcAuthMethod::ClientSecretBasic => ClientAuth::Basic,
            OidcAuthMethod::ClientSecretPost => ClientAuth::Post,
        };
        settings.leeway_secs = leeway;
        let client = match OidcClient::new(settings) {
            Ok(c) => c,
            Err(e) => {
                diags.at(&at, e);
                continue;
            }
        };
        let allow = raw
            .allow
            .iter()
            .map(|(claim, wanted)| AllowRule {
                claim: ClaimPath::new(claim),
                wanted: wanted.0.clone(),
                source: ClaimSource::Token,
            })
            .collect();
        providers.push(Provider {
            name: raw.name.clone(),
            start_path: format!("{prefix}/start"),
            callback_path,
            client,
            fixed_redirect: redirect.is_some(),
            claims: compile_claims(raw, &at, diags),
            allow,
            auto_redirect: raw.auto_redirect,
            post_logout: raw
                .post_logout_redirect_url
                .as_ref()
                .map(|r| r.as_str().to_owned()),
        });
    }
    providers
}

/// `scheme://host` of the request (the public origin the browser used).
fn origin(view: &RequestView<'_>) -> Option<String> {
    let host = view
        .host_str()
        .or_else(|| view.headers.get(HOST)?.to_str().ok())?;
    Some(format!("{}://{host}", view.scheme.as_str()))
}

impl Provider {
    /// The authgate claims a login with these ID-token claims gets, or why it gets none.
    fn map_claims(&self, id: &Map<String, Value>) -> Result<(String, Map<String, Value>), String> {
        let mut claims = Map::new();
        let mut sub = id.get("sub").and_then(Value::as_str).map(str::to_owned);
        for (ours, path) in &self.claims {
            let value = path.lookup(id).cloned();
            match (ours.as_str(), value) {
                ("sub", Some(Value::String(s))) => sub = Some(s),
                ("sub", _) => {
                    return Err(format!("the identity provider sent no `{}`", path.as_str()));
                }
                (_, Some(v)) => {
                    claims.insert(ours.clone(), v);
                }
                (_, None) => {}
            }
        }
        claims.insert(IDP_CLAIM.into(), self.name.as_str().into());
        sub.filter(|s| !s.is_empty())
            .map(|s| (s, claims))
            .ok_or_else(|| "the identity provider sent no subject".to_owned())
    }

    fn redirect(&self, view: &RequestView<'_>) -> Option<String> {
        (!self.fixed_redirect)
            .then(|| origin(view).map(|o| format!("{o}{}", self.callback_path)))?
    }

    /// The provider's logout URL (RP-initiated logout), when it publishes one. Its discovery
    /// document is loaded first when this process has none yet: a session outlives a reload
    /// or a restart, which start with none.
    pub async fn logout_url(&self, view: &RequestView<'_>, login_path: &str) -> Option<String> {
        let back = match &self.post_logout {
            Some(url) => url.clone(),
            None => format!("{}{login_path}", origin(view)?),
        };
        if !self.client.is_discovered() {
            // A failure is logged by `discover`; the browser then goes to the login page.
            let _ = self.client.discover().await;
        }
        self.client.logout_url(None, &back)
    }
}

/// An error page: the login page with the message, 401 (403 when the user was refused). The
/// message is said as a sentence, as the password form's errors are (`OidcError`'s texts
/// start in lower case).
fn error_page(
    login: &Login,
    services: &Services<'_>,
    status: StatusCode,
    message: &str,
) -> Response<Body> {
    let message = super::capitalize(message);
    login.page(services.next, status, "/", "", Some(&message))
}

impl Login {
    /// `GET {base}/oidc/{name}/start?next=…`.
    pub async fn oidc_start(
        &self,
        index: usize,
        view: &RequestView<'_>,
        services: &Services<'_>,
    ) -> Answer {
        let Some(provider) = self.providers.get(index) else {
            return Answer::failed(crate::error::GatewayError::NoRoute);
        };
        let next = view
            .query
            .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "next"))
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| "/".into());
        let next = services.next.safe(&next);
        let Some(key) = services.issuer.sealing_key() else {
            let page = error_page(
                self,
                services,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Single sign-on needs a signing key.",
            );
            return Answer::ok(page);
        };
        let redirect = provider.redirect(view);
        match provider
            .client
            .start_at(next, redirect.as_deref(), &key, unix_now())
            .await
        {
            Ok(start) => {
                let mut resp = crate::response::redirect(StatusCode::FOUND, &start.authorize_url);
                if let Ok(c) = HeaderValue::from_str(&start.set_cookie) {
                    resp.headers_mut().append(SET_COOKIE, c);
                }
                Answer::ok(resp)
            }
            Err(e) => {
                tracing::warn!(
                    provider = provider.name,
                    reason = e.reason(),
                    "single sign-on could not start"
                );
                Answer::ok(error_page(
                    self,
                    services,
                    StatusCode::BAD_GATEWAY,
                    &format!("{e}."),
                ))
            }
        }
    }

    /// `GET {base}/oidc/{name}/callback`.
    pub async fn oidc_callback(
        &self,
        index: usize,
        view: &RequestView<'_>,
        services: &Services<'_>,
    ) -> Answer {
        let Some(provider) = self.providers.get(index) else {
            return Answer::failed(crate::error::GatewayError::NoRoute);
        };
        let query = view.query.unwrap_or("");
        let clear = provider.client.clear_state_cookie(query);
        let mut answer = self.finish_sso(provider, query, view, services).await;
        if let Some(c) = clear.and_then(|c| HeaderValue::from_str(&c).ok()) {
            answer.response.headers_mut().append(SET_COOKIE, c);
        }
        answer
    }

    async fn finish_sso(
        &self,
        provider: &Provider,
        query: &str,
        view: &RequestView<'_>,
        services: &Services<'_>,
    ) -> Answer {
        let refused =
            |status, message: String| Answer::ok(error_page(self, services, status, &message));
        let Some(key) = services.issuer.sealing_key() else {
            return refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Single sign-on needs a signing key.".into(),
            );
        };
        let done = match provider
            .client
            .finish(query, view.headers, &key, unix_now())
            .await
        {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(
                    provider = provider.name,
                    reason = e.reason(),
                    "single sign-on refused"
                );
                let status = match e {
                    OidcError::Denied(_) => StatusCode::FORBIDDEN,
                    _ => StatusCode::UNAUTHORIZED,
                };
                return refused(status, format!("{e}."));
            }
        };
        if let Some(rule) = provider.allow.iter().find(|r| !r.matches(&done.claims)) {
            let message = format!(
                "Your account is not allowed here (`{}`).",
                rule.claim.as_str()
            );
            return refused(StatusCode::FORBIDDEN, message);
        }
        let (sub, claims) = match provider.map_claims(&done.claims) {
            Ok(mapped) => mapped,
            Err(e) => return refused(StatusCode::UNAUTHORIZED, format!("{e}.")),
        };
        let issued = match services.issuer.issue(&sub, claims, None) {
            Ok(issued) => issued,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a token for a single sign-on");
                return refused(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The session could not be created.".into(),
                );
            }
        };
        let https = view.scheme == Scheme::Https;
        let mut resp =
            crate::response::redirect(StatusCode::SEE_OTHER, services.next.safe(&done.next));
        if let Some(c) = services
            .cookie
            .set(&issued.token, services.issuer.ttl(), https)
        {
            resp.headers_mut().append(SET_COOKIE, c);
        }
        Answer {
            response: resp,
            user: Some(sub),
            error: None,
        }
    }
}
