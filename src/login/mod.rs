//! The login endpoints: `{login.path}` (GET the page, POST JSON or a form) and
//! `{login.logout_path}` (POST). Logging in checks a username and password (`password`),
//! bounded before any hashing (`form`: body size, field sizes; rate limits per client and per
//! username in the state store), then issues a token and a session cookie. Logging out revokes
//! the token and its whole session.

pub mod form;
pub mod oidc;
pub mod page;
pub mod password;
pub mod refresh;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::header::{CONTENT_TYPE, SET_COOKIE};
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use ipnet::IpNet;
use serde_json::json;

use crate::auth::Verifier;
use crate::auth::issue::Issuer;
use crate::config::{Diagnostics, KeyPath, RawLogin, RawRate};
use crate::credentials::{self, TokenSource};
use crate::error::GatewayError;
use crate::proxy::Body;
use crate::request::{RequestView, Scheme};
use crate::session::{CookieSettings, NextPolicy, is_navigation, same_origin};
use crate::state::{Quota, Revocation, State};
use form::{Form, client_ip, content_type, parse_credentials, read_body};
pub use password::{MAX_PASSWORD, MAX_USERNAME, Passwords, hash_password};

/// The compiled `login:` section.
pub struct Login {
    pub path: String,
    pub logout_path: String,
    pub refresh_path: String,
    /// The login page's HTML template.
    template: String,
    /// The template file, when there is one (watched for reloads).
    pub template_file: Option<PathBuf>,
    passwords: Passwords,
    /// The users file, when there is one (watched for reloads).
    pub users_file: Option<PathBuf>,
    max_body: u64,
    per_client: Quota,
    per_username: Quota,
    trusted_proxies: Vec<IpNet>,
    /// Single sign-on providers, in config order.
    pub providers: Vec<oidc::Provider>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("path", &self.path)
            .field("users", &self.passwords.len())
            .finish_non_exhaustive()
    }
}

/// What the login endpoints use besides the request.
pub struct Services<'a> {
    pub issuer: &'a Issuer,
    /// Where a browser may be sent after logging in.
    pub next: &'a NextPolicy,
    pub verifier: &'a Verifier,
    pub cookie: &'a CookieSettings,
    pub state: &'a State,
}

/// An endpoint's answer: the response, who logged in or out, and the failure (for metrics and
/// the log) when the response is a page rather than an error.
pub struct Answer {
    pub response: Response<Body>,
    pub user: Option<String>,
    pub error: Option<GatewayError>,
}

impl Answer {
    fn ok(response: Response<Body>) -> Self {
        Answer {
            response,
            user: None,
            error: None,
        }
    }
    fn failed(error: GatewayError) -> Self {
        Answer {
            response: error.to_response(),
            user: None,
            error: Some(error),
        }
    }
}

/// A normalized absolute path, or the error to report at `at`.
fn endpoint_path(value: &str, at: &KeyPath, diags: &mut Diagnostics) -> String {
    if crate::path::normalize(value).map_or(true, |n| n != value) {
        diags.at(at, format!("`{value}` is not a normalized absolute path"));
    }
    value.to_owned()
}

fn compile_quota(rate: RawRate, at: &KeyPath, diags: &mut Diagnostics) -> Option<Quota> {
    let quota = Quota::per(rate.requests, rate.per.0);
    if quota.is_none() {
        diags.at(
            at,
            "`requests` must be at least 1 and `per` long enough to refill one request per nanosecond or slower",
        );
    }
    quota
}

fn compile_template(
    raw: &RawLogin,
    at: &KeyPath,
    diags: &mut Diagnostics,
) -> (String, Option<PathBuf>) {
    let Some(file) = &raw.page_template else {
        return (page::DEFAULT_TEMPLATE.to_owned(), None);
    };
    let file_path = diags.source().resolve(file.as_str());
    let text = std::fs::read_to_string(&file_path).unwrap_or_else(|e| {
        diags.at(at, format!("cannot read {}: {e}", file_path.display()));
        String::new()
    });
    if !text.is_empty() && !text.contains("{{action}}") {
        diags.at(
            at,
            "the template has no `{{action}}`: its form would not post to the login route",
        );
    }
    (text, Some(file_path))
}

fn compile_proxies(raw: &RawLogin, at: &KeyPath, diags: &mut Diagnostics) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for (i, proxy) in raw.trusted_proxies.iter().enumerate() {
        let text = proxy.as_str();
        match text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(net) => nets.push(net),
            Err(_) => diags.at(
                &at.index(i),
                format!("`{text}` is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
            ),
        }
    }
    nets
}

/// Compiles `login:`; users come from the config file and `users_file`. `leeway` is the clock
/// skew allowed on single sign-on ID tokens (`tokens.leeway`).
pub fn compile(raw: &RawLogin, leeway: u64, diags: &mut Diagnostics) -> Option<Login> {
    let at = KeyPath::root().key("login");
    let path = endpoint_path(raw.path.as_str(), &at.key("path"), diags);
    let logout_path = endpoint_path(raw.logout_path.as_str(), &at.key("logout_path"), diags);
    let refresh_path = endpoint_path(raw.refresh_path.as_str(), &at.key("refresh_path"), diags);
    if logout_path == path {
        diags.at(&at.key("logout_path"), "must differ from `path`");
    }
    let (passwords, users_file) = Passwords::compile(raw, diags);
    let (template, template_file) = compile_template(raw, &at.key("page_template"), diags);
    let rate = at.key("rate_limit");
    let per_client = compile_quota(raw.rate_limit.per_client, &rate.key("per_client"), diags);
    let per_username = compile_quota(
        raw.rate_limit.per_username,
        &rate.key("per_username"),
        diags,
    );
    let trusted_proxies = compile_proxies(raw, &at.key("trusted_proxies"), diags);
    let providers = oidc::compile(&raw.oidc, raw.path.as_str(), leeway, diags);
    Some(Login {
        providers,
        path,
        logout_path,
        refresh_path,
        template,
        template_file,
        passwords: passwords?,
        users_file,
        max_body: raw.max_body_bytes,
        per_client: per_client?,
        per_username: per_username?,
        trusted_proxies,
    })
}

async fn check_rate(state: &State, key: &str, quota: Quota) -> Result<(), GatewayError> {
    state
        .take(key, quota)
        .await?
        .map_err(|wait| GatewayError::TooManyRequests(wait.max(Duration::from_secs(1))))
}

/// A failed attempt: the error, and what the form showed (to show it again).
struct Failed {
    error: GatewayError,
    username: String,
    next: Option<String>,
}

impl From<GatewayError> for Failed {
    fn from(error: GatewayError) -> Self {
        Failed {
            error,
            username: String::new(),
            next: None,
        }
    }
}

/// A successful attempt: the token, who (and the claims their tokens carry), and where a
/// browser goes next.
struct Success {
    issued: crate::auth::issue::Issued,
    username: String,
    claims: serde_json::Map<String, serde_json::Value>,
    next: Option<String>,
}

impl Login {
    /// The login page, showing `error` when there is one.
    fn page(
        &self,
        next_policy: &NextPolicy,
        status: StatusCode,
        next: &str,
        username: &str,
        error: Option<&str>,
    ) -> Response<Body> {
        let next = next_policy.safe(next);
        let encoded = crate::session::encode_component(next);
        let providers: Vec<(String, String)> = self
            .providers
            .iter()
            .map(|p| (p.name.clone(), format!("{}?next={encoded}", p.start_path)))
            .collect();
        let html = page::render(
            &self.template,
            &page::PageState {
                action: &self.path,
                next,
                username,
                error,
                providers: &providers,
            },
        );
        page::response(status, html)
    }

    /// The provider the login page sends browsers straight to: the only way to log in, with
    /// `auto_redirect`.
    fn sso_only(&self) -> Option<&oidc::Provider> {
        match self.providers.as_slice() {
            [only] if only.auto_redirect && self.passwords.is_empty() => Some(only),
            _ => None,
        }
    }

    /// Checks the credentials (same origin, rate limits, argon2) and signs a token.
    async fn attempt(
        &self,
        view: &RequestView<'_>,
        body: Incoming,
        form: &Form,
        services: &Services<'_>,
    ) -> Result<Success, Failed> {
        if !same_origin(view.headers, view.host_str(), view.scheme == Scheme::Https) {
            return Err(GatewayError::CrossSite.into());
        }
        let client = client_ip(view.headers, view.conn.peer.ip(), &self.trusted_proxies);
        let state = services.state;
        check_rate(state, &format!("login-client:{client}"), self.per_client).await?;
        let body = read_body(body, view.headers, self.max_body).await?;
        let creds = parse_credentials(form, &body)?;
        let (username, next) = (creds.username, creds.next);
        let failed = |error| Failed {
            error,
            username: username.clone(),
            next: next.clone(),
        };
        let user_key = format!("login-user:{username}");
        check_rate(state, &user_key, self.per_username)
            .await
            .map_err(failed)?;
        if !self.passwords.check(&username, creds.password).await {
            return Err(failed(GatewayError::InvalidCredentials));
        }
        let claims = self.passwords.claims(&username);
        let issued = services
            .issuer
            .issue(&username, claims.clone(), None)
            .map_err(|e| {
                tracing::error!(error = %e, "cannot sign a token for a successful login");
                failed(GatewayError::Internal)
            })?;
        Ok(Success {
            issued,
            username,
            claims,
            next,
        })
    }

    /// `{login.path}`: GET shows the page; POST logs in. A form post (a browser) gets a 303 to
    /// `next` with the session cookie, or the page again with the error; a JSON post gets the
    /// token as JSON (and the cookie).
    pub async fn login(
        &self,
        view: &RequestView<'_>,
        body: Incoming,
        services: &Services<'_>,
    ) -> Answer {
        if *view.method == Method::GET || *view.method == Method::HEAD {
            let next = view
                .query
                .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "next"))
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            if let Some(only) = self.sso_only() {
                let next = crate::session::encode_component(services.next.safe(&next));
                let target = format!("{}?next={next}", only.start_path);
                return Answer::ok(crate::response::redirect(StatusCode::FOUND, &target));
            }
            return Answer::ok(self.page(services.next, StatusCode::OK, &next, "", None));
        }
        if *view.method != Method::POST {
            return Answer::failed(GatewayError::MethodNotAllowed("GET, POST"));
        }
        let form = match content_type(view.headers) {
            Ok(form) => form,
            Err(e) => return Answer::failed(e),
        };
        let html = matches!(form, Form::UrlEncoded);
        match self.attempt(view, body, &form, services).await {
            Ok(success) => match self.logged_in(success, html, view, services).await {
                Ok(answer) => answer,
                Err(e) => Answer::failed(e),
            },
            Err(failed) if html => self.form_failed(failed, services.next),
            Err(failed) => Answer::failed(failed.error),
        }
    }

    /// The answer to a successful login: a browser (form) gets the cookie and a 303 to `next`;
    /// an API client (JSON) gets the token, and a refresh token when they are configured.
    async fn logged_in(
        &self,
        success: Success,
        html: bool,
        view: &RequestView<'_>,
        services: &Services<'_>,
    ) -> Result<Answer, GatewayError> {
        let ttl = services.issuer.ttl();
        let https = view.scheme == Scheme::Https;
        let token = &success.issued.token;
        let mut resp = if html {
            let mut r = page::response(StatusCode::SEE_OTHER, String::new());
            let target = services.next.safe(success.next.as_deref().unwrap_or("/"));
            if let Ok(v) = http::HeaderValue::from_str(target) {
                r.headers_mut().insert(http::header::LOCATION, v);
            }
            r
        } else {
            let mut body =
                json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl.as_secs()});
            let (sub, claims) = (&success.username, success.claims);
            if let Some(refresh) =
                refresh::start_session(&success.issued, sub, claims, services).await?
            {
                body["refresh_token"] = refresh.into();
            }
            crate::response::json(StatusCode::OK, &body)
        };
        if let Some(c) = services.cookie.set(token, ttl, https) {
            resp.headers_mut().append(SET_COOKIE, c);
        }
        Ok(Answer {
            response: resp,
            user: Some(success.username),
            error: None,
        })
    }

    /// A failed form login: the page again, with the error said plainly and the username kept.
    fn form_failed(&self, failed: Failed, next_policy: &NextPolicy) -> Answer {
        let message = match &failed.error {
            GatewayError::InvalidCredentials => "Wrong username or password.".to_string(),
            GatewayError::TooManyRequests(_) => {
                "Too many attempts. Wait a minute and try again.".to_string()
            }
            GatewayError::CrossSite => {
                "This form was sent from another site and was refused.".to_string()
            }
            other => format!("{}.", capitalize(&other.to_string())),
        };
        let next = failed.next.as_deref().unwrap_or("/");
        let error = failed.error;
        let mut resp = self.page(
            next_policy,
            error.status(),
            next,
            &failed.username,
            Some(&message),
        );
        error.add_headers(resp.headers_mut());
        Answer {
            response: resp,
            user: None,
            error: Some(error),
        }
    }

    /// `POST {login.logout_path}`: revokes the token (until its `exp`) and its whole session
    /// (every token carrying its `sid`, sliding renewals included, and its refresh tokens);
    /// with `?everywhere=1` (or JSON `{"everywhere": true}`) every session of the user. Then
    /// clears the cookie and sends a browser to the login page or answers an API client 204.
    pub async fn logout(
        &self,
        view: &RequestView<'_>,
        body: Incoming,
        services: &Services<'_>,
    ) -> Result<Answer, GatewayError> {
        if *view.method != Method::POST {
            return Err(GatewayError::MethodNotAllowed("POST"));
        }
        if !same_origin(view.headers, view.host_str(), view.scheme == Scheme::Https) {
            return Err(GatewayError::CrossSite);
        }
        let found = credentials::token(view.headers, &services.cookie.name)?;
        let everywhere = self.everywhere(view, body).await?;
        let mut user = None;
        let mut provider_logout = None;
        if let Some((token, _)) = found
            && let Ok(verified) = services.verifier.verify(token).await
        {
            revoke_session(&verified, services).await?;
            if everywhere && let Some(sub) = &verified.sub {
                revoke_user(sub, services).await?;
            }
            user = verified.sub.clone();
            provider_logout = self.provider_logout(&verified, view).await;
        }
        let from_browser = matches!(found, Some((_, TokenSource::Cookie)))
            || is_navigation(&Method::GET, view.headers)
            || view
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let mut response = if from_browser {
            // An SSO session also ends at its provider when it offers that (RP-initiated
            // logout); the provider then sends the browser back to the login page.
            let location = provider_logout.as_deref().unwrap_or(&self.path);
            let mut r = page::response(StatusCode::SEE_OTHER, String::new());
            if let Ok(location) = http::HeaderValue::from_str(location) {
                r.headers_mut().insert(http::header::LOCATION, location);
            }
            r
        } else {
            crate::response::empty(StatusCode::NO_CONTENT)
        };
        response.headers_mut().append(
            SET_COOKIE,
            services.cookie.clear(view.scheme == Scheme::Https),
        );
        Ok(Answer {
            response,
            user,
            error: None,
        })
    }

    /// The logout URL of the provider that logged this token's user in, when it has one.
    async fn provider_logout(
        &self,
        verified: &crate::auth::VerifiedToken,
        view: &RequestView<'_>,
    ) -> Option<String> {
        let idp = verified.claims.get(oidc::IDP_CLAIM)?.as_str()?;
        let provider = self.providers.iter().find(|p| p.name == idp)?;
        provider.logout_url(view, &self.path).await
    }

    /// Whether a logout asks to end every session: `?everywhere=1` (or `true`), a form field
    /// `everywhere=1`, or JSON `{"everywhere": true}`.
    async fn everywhere(
        &self,
        view: &RequestView<'_>,
        body: Incoming,
    ) -> Result<bool, GatewayError> {
        let yes = |v: &str| matches!(v, "1" | "true");
        let in_query = view.query.is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "everywhere" && yes(&v))
        });
        if in_query || hyper::body::Body::is_end_stream(&body) {
            return Ok(in_query);
        }
        let bytes = read_body(body, view.headers, self.max_body).await?;
        Ok(match content_type(view.headers) {
            Ok(Form::Json) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("everywhere")?.as_bool())
                .unwrap_or(false),
            Ok(Form::UrlEncoded) => {
                form_urlencoded::parse(&bytes).any(|(k, v)| k == "everywhere" && yes(&v))
            }
            Err(_) => false,
        })
    }
}

/// Revokes a token and its session in the store (and this process's mirror), and ends the
/// session's refresh tokens.
async fn revoke_session(
    verified: &crate::auth::VerifiedToken,
    services: &Services<'_>,
) -> Result<(), GatewayError> {
    if let Some(jti) = &verified.jti {
        let until = verified.exp;
        let jti = jti.clone();
        services
            .state
            .revoke(Revocation::Token { jti, until })
            .await?;
    }
    if let Some(sid) = &verified.sid {
        let until = services.issuer.session_end_from_now();
        services
            .state
            .revoke(Revocation::Session {
                sid: sid.clone(),
                until,
            })
            .await?;
        services.state.end_session(sid).await?;
    }
    Ok(())
}

/// Voids every token the user holds now (a cutoff at this second: tokens issued before it are
/// refused) and ends every refresh-token family of theirs.
pub async fn revoke_user(sub: &str, services: &Services<'_>) -> Result<(), GatewayError> {
    let revocation = Revocation::User {
        sub: sub.to_owned(),
        before: crate::clock::unix_now(),
        until: services.issuer.session_end_from_now(),
    };
    services.state.revoke(revocation).await?;
    services.state.end_user_sessions(sub).await?;
    Ok(())
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}
