//! OpenID Connect login, relying-party side: the protocol pieces the gateway's
//! `/auth/oidc/{name}/start` and `/auth/oidc/{name}/callback` endpoints are built from.
//! Standalone on purpose: it knows nothing of routes, sessions or config files, so it can be
//! tested end to end against a real provider (tests/oidc_module.rs runs panva's certified
//! `oidc-provider`).
//!
//! The flow is the authorization code flow with PKCE (S256), as OAuth 2.0 Security BCP
//! (RFC 9700) asks even of confidential clients:
//! 1. [`OidcClient::start`] makes a fresh `state`, `nonce` and PKCE verifier, seals them (with
//!    `next` and an expiry ten minutes out) into a short-lived, HttpOnly, SameSite=Lax cookie,
//!    and returns the provider's authorization URL. The cookie's name carries a prefix of the
//!    state, so logins started in parallel tabs each keep their own cookie.
//! 2. [`OidcClient::finish`] takes the callback's query string and the request's cookies: it
//!    finds and opens the cookie named by the returned `state`, checks that the state matches,
//!    is fresh and was not used before, checks the response's `iss` (RFC 9207, mix-up
//!    defence), exchanges the code (with the verifier) at the token endpoint and verifies the
//!    ID token: signature from the provider's JWKS, `iss`, `aud`, `azp`, `exp`, `iat` and
//!    `nonce`.
//!
//! Nothing is stored server side but a set of used states (replay defence); the sealed
//! cookie is the login's whole state. Errors never yield a token, and no error message or log
//! line carries the client secret, a code, a token or the cookie.
//!
//! **Why the `oauth2` crate.** The token request and the authorization URL go through
//! `oauth2` 5 without its default features: it then pulls no HTTP stack of its own, and its
//! requests are sent with this crate's reqwest 0.13 client (see `send`), so there
//! is one reqwest, one hyper and one TLS configuration. It gives us a well-trodden
//! implementation of RFC 6749's details (form encoding of Basic credentials, error responses,
//! PKCE challenge). `openidconnect` is not used: its ID-token verification brings its own JWKS
//! handling, while we verify with the gateway's own remote-JWKS code ([`crate::auth::jwks`] and
//! [`crate::auth::verify::Verifier`]), which already refuses `alg: none`, HMAC from a remote
//! set, embedded keys and duplicate claims, and refetches on an unknown `kid` with a cooldown.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    StandardRevocableToken, StandardTokenResponse, TokenUrl,
};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::jwks::{Provider, ProviderSettings};
use crate::auth::keys::KeySet;
use crate::auth::verify::{Verifier, VerifyOptions};
use crate::session::{safe_next, session_cookie};

/// Prefix of every state cookie's name; the rest is the first 16 (`STATE_PREFIX_LEN`) characters
/// of the login's `state`.
pub const STATE_COOKIE_PREFIX: &str = "authgate_oidc_";
/// How much of the state names its cookie: 96 bits, so parallel logins never collide.
const STATE_PREFIX_LEN: usize = 16;
/// How long a started login may take, seconds. Long enough to type a password and do MFA,
/// short enough that a stolen cookie is soon worthless.
pub const STATE_TTL_SECS: u64 = 600;
/// Random bytes in a state, a nonce and a PKCE verifier (43 base64url characters, the
/// shortest verifier RFC 7636 allows, with 256 bits of entropy).
const RANDOM_BYTES: usize = 32;
/// Largest discovery document or token response accepted.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// Used states remembered (each for [`STATE_TTL_SECS`]).
const MAX_USED_STATES: u64 = 100_000;
/// After a failed refresh of the discovery document, the old one is used this long before
/// the next try, so an outage at the provider does not make every login wait for a timeout.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// Binds a sealed cookie to its purpose and name.
const SEAL_CONTEXT: &str = "authgate-oidc-state-v1:";

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic, the default of OpenID Connect Discovery.
    #[default]
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    Post,
}

impl ClientAuth {
    /// The name a discovery document uses for this method.
    pub fn metadata_name(self) -> &'static str {
        match self {
            ClientAuth::Basic => "client_secret_basic",
            ClientAuth::Post => "client_secret_post",
        }
    }
}

/// One `login.oidc` entry, compiled.
#[derive(Clone)]
pub struct OidcSettings {
    /// The provider's name in URLs (`/auth/oidc/{name}/...`) and in state cookies.
    pub name: String,
    /// Compared byte for byte with the discovery document's and the ID token's `iss`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Must include `openid`.
    pub scopes: Vec<String>,
    /// The callback URL registered at the provider.
    pub redirect_url: String,
    pub auth_method: ClientAuth,
    /// Timeout of each request to the provider.
    pub timeout: Duration,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// How long a discovery document is used before it is fetched again.
    pub discovery_refresh: Duration,
    /// How often the provider's JWKS is fetched again.
    pub jwks_refresh: Duration,
    /// At most one JWKS fetch per this interval for ID tokens naming an unknown `kid`.
    pub unknown_kid_cooldown: Duration,
}

impl OidcSettings {
    /// Settings with the defaults: scopes `openid email profile`, `client_secret_basic`, a 10 s
    /// timeout, 60 s leeway, discovery and JWKS refreshed hourly, a 60 s unknown-kid cooldown.
    pub fn new(
        name: &str,
        issuer: &str,
        client_id: &str,
        client_secret: &str,
        redirect_url: &str,
    ) -> Self {
        OidcSettings {
            name: name.into(),
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            scopes: ["openid", "email", "profile"].map(String::from).to_vec(),
            redirect_url: redirect_url.into(),
            auth_method: ClientAuth::Basic,
            timeout: Duration::from_secs(10),
            leeway_secs: 60,
            discovery_refresh: Duration::from_secs(3600),
            jwks_refresh: Duration::from_secs(3600),
            unknown_kid_cooldown: Duration::from_secs(60),
        }
    }
}

/// The secret is never printed.
impl std::fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSettings")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("redirect_url", &self.redirect_url)
            .field("auth_method", &self.auth_method)
            .finish_non_exhaustive()
    }
}

/// Why a login failed. `Display` is one line that is safe to show to the user: it never holds
/// a secret, a code or a token, and text that came from the provider or the callback URL is
/// cut down to printable ASCII.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider's configuration could not be loaded: {0}")]
    Discovery(String),
    #[error("the login response is malformed: {0}")]
    BadCallback(&'static str),
    #[error("no login was started in this browser for this response (state cookie missing)")]
    StateMissing,
    #[error("the login state cookie is not valid")]
    StateInvalid,
    #[error("the login response does not match the login started in this browser")]
    StateMismatch,
    #[error("the login took too long; please sign in again")]
    StateExpired,
    #[error("this login response was already used")]
    StateReplayed,
    #[error("the login response names another identity provider")]
    WrongIssuer,
    #[error("the identity provider denied access: {0}")]
    Denied(String),
    #[error("the identity provider returned an error: {0}")]
    Provider(String),
    #[error("the authorization code could not be exchanged: {0}")]
    Exchange(String),
    #[error("the ID token was refused: {0}")]
    IdToken(String),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl OidcError {
    /// A short fixed label, for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            OidcError::Discovery(_) => "discovery",
            OidcError::BadCallback(_) => "bad_callback",
            OidcError::StateMissing => "state_missing",
            OidcError::StateInvalid => "state_invalid",
            OidcError::StateMismatch => "state_mismatch",
            OidcError::StateExpired => "state_expired",
            OidcError::StateReplayed => "state_replayed",
            OidcError::WrongIssuer => "wrong_issuer",
            OidcError::Denied(_) => "denied",
            OidcError::Provider(_) => "provider_error",
            OidcError::Exchange(_) => "exchange",
            OidcError::IdToken(_) => "id_token",
            OidcError::Internal(_) => "internal",
        }
    }
}

/// What the start endpoint answers with: a redirect to `authorize_url` setting the cookie.
#[derive(Debug, Clone)]
pub struct StartLogin {
    pub authorize_url: String,
    pub cookie_name: String,
    pub cookie_value: String,
    /// The whole `Set-Cookie` value: HttpOnly, SameSite=Lax, `Path` the callback's path,
    /// `Max-Age` [`STATE_TTL_SECS`], `Secure` when the callback URL is https.
    pub set_cookie: String,
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct FinishedLogin {
    /// The verified ID token's claims.
    pub claims: Map<String, Value>,
    /// Where the user asked to go, already passed through [`safe_next`].
    pub next: String,
    /// The raw ID token, for [`OidcClient::logout_url`]'s `id_token_hint`. Never log it.
    pub id_token: String,
    /// `Set-Cookie` value removing the state cookie.
    pub clear_cookie: String,
}

/// What a state cookie holds, sealed.
#[derive(Serialize, Deserialize)]
struct Pending {
    provider: String,
    /// The callback URL this login was started with (the code exchange must name it again).
    redirect: String,
    state: String,
    nonce: String,
    verifier: String,
    next: String,
    /// Expiry, seconds since the epoch.
    exp: u64,
}

/// The parts of a discovery document we use (OpenID Connect Discovery 1.0 §3).
#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    end_session_endpoint: Option<String>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

/// A checked discovery document and what was built from it.
struct Discovered {
    metadata: Metadata,
    auth_url: AuthUrl,
    token_url: TokenUrl,
    jwks: Arc<Provider>,
    /// The gateway's token verifier with this provider's key set as its only keys.
    verifier: Verifier,
}

/// The discovery document in use and when to fetch it again.
struct Cached {
    discovered: Arc<Discovered>,
    refresh_at: Instant,
}

/// The `id_token` member of a token response (OpenID Connect Core §3.1.3.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdTokenField {
    #[serde(default)]
    id_token: Option<String>,
}

impl oauth2::ExtraTokenFields for IdTokenField {}

/// An `oauth2` client with its authorization and token endpoints set.
type TokenClient = oauth2::Client<
    BasicErrorResponse,
    StandardTokenResponse<IdTokenField, BasicTokenType>,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// A transport failure, as `oauth2` wants it (a `std::error::Error`). Holds no URL.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HttpFailure(String);

/// The callback's query parameters.
#[derive(Default)]
struct Callback {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    iss: Option<String>,
}

/// One OpenID Provider: its settings, its discovery document (fetched on first use, cached
/// and refreshed) and its key set.
pub struct OidcClient {
    settings: OidcSettings,
    redirect: RedirectUrl,
    /// `Path` of the state cookie: the callback's path, so the cookie goes nowhere else.
    cookie_path: String,
    /// Whether the configured callback is https (a login started with another callback URL
    /// goes by that one's scheme).
    secure_cookie: bool,
    http: reqwest::Client,
    cached: ArcSwapOption<Cached>,
    /// One discovery fetch at a time; the others wait for it and use its result.
    refreshing: tokio::sync::Mutex<()>,
    /// States already finished (or being finished), so a callback cannot be replayed.
    used_states: moka::sync::Cache<String, ()>,
}

impl OidcClient {
    /// Checks the settings: the issuer must be https (http only on loopback, for tests and
    /// development), the callback an absolute http(s) URL, `openid` among the scopes.
    pub fn new(settings: OidcSettings) -> Result<Self, String> {
        check_settings(&settings)?;
        let redirect_url = parse_redirect(&settings.redirect_url)?;
        let redirect = RedirectUrl::new(settings.redirect_url.clone())
            .map_err(|e| format!("redirect_url `{}`: {e}", settings.redirect_url))?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let used_states = moka::sync::Cache::builder()
            .max_capacity(MAX_USED_STATES)
            .time_to_live(Duration::from_secs(STATE_TTL_SECS + settings.leeway_secs))
            .build();
        Ok(OidcClient {
            cookie_path: redirect_url.path().to_owned(),
            secure_cookie: redirect_url.scheme() == "https",
            settings,
            redirect,
            http,
            cached: ArcSwapOption::empty(),
            refreshing: tokio::sync::Mutex::new(()),
            used_states,
        })
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    /// Whether a discovery document was loaded (readiness).
    pub fn is_discovered(&self) -> bool {
        self.cached.load().is_some()
    }

    /// Fetches `{issuer}/.well-known/openid-configuration` now and starts (or keeps) the
    /// background JWKS refresher. Optional: [`start`](Self::start) and
    /// [`finish`](Self::finish) discover on first use, so the gateway can start while the
    /// provider is down. On failure a document loaded before stays in use.
    pub async fn discover(&self) -> Result<(), OidcError> {
        let _flight = self.refreshing.lock().await;
        let previous = self.cached.load_full();
        let previous = previous.as_deref().map(|c| &*c.discovered);
        match self.fetch_discovery(previous).await {
            Ok(discovered) => {
                self.store(Arc::new(discovered));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(provider = %self.settings.name, error = %e, "OIDC discovery failed");
                Err(e)
            }
        }
    }

    /// Starts a login: the authorization URL to redirect to and the state cookie to set.
    /// `next` is where to go afterwards; anything but a same-origin path becomes `/`.
    /// Async because it may have to fetch the discovery document first.
    pub async fn start(
        &self,
        next: &str,
        sealing_key: &[u8; 32],
        now: u64,
    ) -> Result<StartLogin, OidcError> {
        self.start_at(safe_next(next), None, sealing_key, now).await
    }

    /// [`start`](Self::start) with another callback URL than the configured one (the gateway
    /// derives it from the request's scheme and host when `redirect_url` is not configured).
    /// `next` is kept as given: the caller has checked it.
    pub async fn start_at(
        &self,
        next: &str,
        redirect: Option<&str>,
        sealing_key: &[u8; 32],
        now: u64,
    ) -> Result<StartLogin, OidcError> {
        let discovered = self.discovered().await?;
        // The state cookie is `Secure` when this login's callback is https: a derived
        // callback may be https while the configured one (or its placeholder) is not.
        let (redirect, secure) = match redirect {
            Some(r) => {
                let url = parse_redirect(r)
                    .map_err(|_| OidcError::Internal("the callback URL is not valid"))?;
                (r.to_owned(), url.scheme() == "https")
            }
            None => (self.settings.redirect_url.clone(), self.secure_cookie),
        };
        let pending = Pending {
            provider: self.settings.name.clone(),
            redirect,
            state: random_token()?,
            nonce: random_token()?,
            verifier: random_token()?,
            next: next.to_owned(),
            exp: now.saturating_add(STATE_TTL_SECS),
        };
        let cookie_name = state_cookie_name(&pending.state);
        let plain = serde_json::to_vec(&pending)
            .map_err(|_| OidcError::Internal("cannot encode the login state"))?;
        let cookie_value = seal(sealing_key, &cookie_name, &plain)?;
        let authorize_url = self.authorize_url(&discovered, &pending);
        let set_cookie = self.cookie_header(&cookie_name, &cookie_value, STATE_TTL_SECS, secure);
        Ok(StartLogin {
            authorize_url,
            cookie_name,
            cookie_value,
            set_cookie,
        })
    }

    /// Finishes a login from the callback's query string (without or with the leading `?`)
    /// and the callback request's headers (its `Cookie`s). Every check passes or no claims
    /// come out.
    pub async fn finish(
        &self,
        query: &str,
        cookies: &HeaderMap,
        sealing_key: &[u8; 32],
        now: u64,
    ) -> Result<FinishedLogin, OidcError> {
        let callback = Callback::parse(query)?;
        let (pending, cookie_name) = self.open_state(&callback, cookies, sealing_key, now)?;
        if !self
            .used_states
            .entry(pending.state.clone())
            .or_insert(())
            .is_fresh()
        {
            return Err(OidcError::StateReplayed);
        }
        let discovered = self.discovered().await?;
        check_response_issuer(&discovered.metadata, callback.iss.as_deref())?;
        if let Some(error) = &callback.error {
            return Err(provider_error(error, callback.error_description.as_deref()));
        }
        let code = callback
            .code
            .as_deref()
            .ok_or(OidcError::BadCallback("no code"))?;
        let id_token = self
            .exchange(&discovered, code, &pending.verifier, &pending.redirect)
            .await?;
        let claims = self
            .verify_id_token(&discovered, &id_token, &pending.nonce)
            .await?;
        Ok(FinishedLogin {
            claims,
            next: pending.next,
            id_token,
            clear_cookie: self.cookie_header(
                &cookie_name,
                "",
                0,
                pending.redirect.starts_with("https:"),
            ),
        })
    }

    /// `Set-Cookie` value removing the state cookie a callback's `state` names, for error
    /// answers (a successful [`finish`](Self::finish) returns it too). `None` without a
    /// well-formed state.
    pub fn clear_state_cookie(&self, query: &str) -> Option<String> {
        let state = Callback::parse(query).ok()?.state?;
        is_random_token(&state)
            .then(|| self.cookie_header(&state_cookie_name(&state), "", 0, self.secure_cookie))
    }

    /// The RP-initiated logout URL (OpenID Connect RP-Initiated Logout 1.0) when the
    /// provider publishes an `end_session_endpoint`: `id_token_hint` when given, `client_id`,
    /// and `post_logout_redirect_uri` when not empty (it must be registered at the provider).
    /// `None` before discovery or without such an endpoint.
    pub fn logout_url(
        &self,
        id_token_hint: Option<&str>,
        post_logout_redirect_uri: &str,
    ) -> Option<String> {
        let cached = self.cached.load_full()?;
        let endpoint = cached.discovered.metadata.end_session_endpoint.as_deref()?;
        let mut url = Url::parse(endpoint).ok()?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(hint) = id_token_hint {
                query.append_pair("id_token_hint", hint);
            }
            query.append_pair("client_id", &self.settings.client_id);
            if !post_logout_redirect_uri.is_empty() {
                query.append_pair("post_logout_redirect_uri", post_logout_redirect_uri);
            }
        }
        Some(url.into())
    }

    /// The cached discovery document, fetched first when there is none or it is due. When a
    /// refresh fails the old document stays in use (and is tried again a little later).
    async fn discovered(&self) -> Result<Arc<Discovered>, OidcError> {
        let fresh = |c: &Option<Arc<Cached>>| {
            c.as_ref()
                .filter(|c| Instant::now() < c.refresh_at)
                .map(|c| c.discovered.clone())
        };
        if let Some(d) = fresh(&self.cached.load_full()) {
            return Ok(d);
        }
        let _flight = self.refreshing.lock().await;
        let previous = self.cached.load_full();
        if let Some(d) = fresh(&previous) {
            return Ok(d);
        }
        let old = previous.map(|c| c.discovered.clone());
        match self.fetch_discovery(old.as_deref()).await {
            Ok(discovered) => Ok(self.store(Arc::new(discovered))),
            Err(e) => {
                tracing::warn!(provider = %self.settings.name, error = %e, "OIDC discovery failed");
                let old = old.ok_or(e)?;
                self.cached.store(Some(Arc::new(Cached {
                    discovered: old.clone(),
                    refresh_at: Instant::now() + RETRY_AFTER_FAILURE,
                })));
                Ok(old)
            }
        }
    }

    fn store(&self, discovered: Arc<Discovered>) -> Arc<Discovered> {
        self.cached.store(Some(Arc::new(Cached {
            discovered: discovered.clone(),
            refresh_at: Instant::now() + self.settings.discovery_refresh,
        })));
        discovered
    }

    /// Fetches and checks the discovery document. The JWKS provider of `previous` is kept
    /// when `jwks_uri` did not change, so its keys and refresher carry on.
    async fn fetch_discovery(
        &self,
        previous: Option<&Discovered>,
    ) -> Result<Discovered, OidcError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        );
        let body = self
            .get_document(&url)
            .await
            .map_err(|e| OidcError::Discovery(e.0))?;
        let metadata: Metadata = serde_json::from_slice(&body)
            .map_err(|e| OidcError::Discovery(format!("not a discovery document: {e}")))?;
        check_metadata(&metadata, &self.settings).map_err(OidcError::Discovery)?;
        let auth_url = AuthUrl::new(metadata.authorization_endpoint.clone())
            .map_err(|e| OidcError::Discovery(format!("authorization_endpoint: {e}")))?;
        let token_url = TokenUrl::new(metadata.token_endpoint.clone())
            .map_err(|e| OidcError::Discovery(format!("token_endpoint: {e}")))?;
        let jwks = match previous {
            Some(p) if p.metadata.jwks_uri == metadata.jwks_uri => p.jwks.clone(),
            _ => self.start_jwks(&metadata)?,
        };
        let verifier = Verifier::new(
            Arc::new(KeySet::new(Vec::new())),
            &VerifyOptions {
                issuer: None,
                audience: None,
                leeway_secs: self.settings.leeway_secs,
                cache_entries: 0,
            },
            Vec::new(),
            vec![jwks.clone()],
        );
        Ok(Discovered {
            metadata,
            auth_url,
            token_url,
            jwks,
            verifier,
        })
    }

    /// The provider's key set, trusted only for tokens with its issuer and our client id as
    /// audience, fetched now and refreshed in the background.
    fn start_jwks(&self, metadata: &Metadata) -> Result<Arc<Provider>, OidcError> {
        let provider = Provider::new(ProviderSettings {
            url: metadata.jwks_uri.clone(),
            issuer: metadata.issuer.clone(),
            audience: Some(self.settings.client_id.clone()),
            refresh_interval: self.settings.jwks_refresh,
            unknown_kid_cooldown: self.settings.unknown_kid_cooldown,
            timeout: self.settings.timeout,
            leeway_secs: self.settings.leeway_secs,
        })
        .map_err(OidcError::Discovery)?;
        let provider = Arc::new(provider);
        provider.spawn_refresher();
        Ok(provider)
    }

    /// GET a JSON document of at most [`MAX_DOCUMENT`] bytes.
    async fn get_document(&self, url: &str) -> Result<Vec<u8>, HttpFailure> {
        let resp = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| HttpFailure(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(HttpFailure(format!("status {}", resp.status().as_u16())));
        }
        read_limited(resp).await
    }

    fn oauth_client(&self, discovered: &Discovered, redirect: &str) -> TokenClient {
        let auth_type = match self.settings.auth_method {
            ClientAuth::Basic => oauth2::AuthType::BasicAuth,
            ClientAuth::Post => oauth2::AuthType::RequestBody,
        };
        oauth2::Client::new(ClientId::new(self.settings.client_id.clone()))
            .set_client_secret(ClientSecret::new(self.settings.client_secret.clone()))
            .set_auth_uri(discovered.auth_url.clone())
            .set_token_uri(discovered.token_url.clone())
            .set_redirect_uri(
                RedirectUrl::new(redirect.to_owned()).unwrap_or_else(|_| self.redirect.clone()),
            )
            .set_auth_type(auth_type)
    }

    fn authorize_url(&self, discovered: &Discovered, pending: &Pending) -> String {
        let verifier = PkceCodeVerifier::new(pending.verifier.clone());
        let (url, _) = self
            .oauth_client(discovered, &pending.redirect)
            .authorize_url(|| CsrfToken::new(pending.state.clone()))
            .add_scopes(self.settings.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(&verifier))
            .add_extra_param("nonce", pending.nonce.clone())
            .url();
        url.into()
    }

    /// Exchanges the code (with the PKCE verifier) for tokens; returns the ID token.
    async fn exchange(
        &self,
        discovered: &Discovered,
        code: &str,
        verifier: &str,
        redirect: &str,
    ) -> Result<String, OidcError> {
        let http = self.http.clone();
        let send = move |request| send(http.clone(), request);
        let client = self.oauth_client(discovered, redirect);
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
            .request_async(&send)
            .await
            .map_err(exchange_error)?;
        response
            .extra_fields()
            .id_token
            .clone()
            .ok_or_else(|| OidcError::Exchange("the token response has no id_token".into()))
    }

    /// Verifies the ID token (OpenID Connect Core §3.1.3.7): signature, `iss`, `aud`, `exp`
    /// and `nbf` through the gateway's [`Verifier`]; then `iat`, `sub`, `azp` and `nonce`.
    async fn verify_id_token(
        &self,
        discovered: &Discovered,
        id_token: &str,
        nonce: &str,
    ) -> Result<Map<String, Value>, OidcError> {
        // The verifier picks its key set by the token's (unverified) `iss` and would report a
        // foreign issuer as an unknown key; say what is wrong instead.
        let claimed =
            jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(id_token)
                .map_err(|_| OidcError::IdToken("token is not a well-formed JWT".into()))?;
        if claimed.get("iss").and_then(Value::as_str) != Some(&discovered.metadata.issuer) {
            return Err(OidcError::IdToken("token issuer is not accepted".into()));
        }
        let verified = discovered
            .verifier
            .verify(id_token)
            .await
            .map_err(|e| OidcError::IdToken(e.to_string()))?;
        check_oidc_claims(&verified.claims, &self.settings.client_id, nonce)?;
        Ok(verified.claims.clone())
    }

    /// Finds the state cookie the callback's `state` names and opens it: sealed by us, for
    /// this provider, for this very state, not expired. Returns it with the cookie's name.
    fn open_state(
        &self,
        callback: &Callback,
        cookies: &HeaderMap,
        sealing_key: &[u8; 32],
        now: u64,
    ) -> Result<(Pending, String), OidcError> {
        let state = callback
            .state
            .as_deref()
            .ok_or(OidcError::BadCallback("no state"))?;
        if !is_random_token(state) {
            return Err(OidcError::StateMismatch);
        }
        let name = state_cookie_name(state);
        let value = session_cookie(cookies, &name)
            .map_err(|_| OidcError::StateInvalid)?
            .ok_or(OidcError::StateMissing)?;
        let plain = unseal(sealing_key, &name, value).ok_or(OidcError::StateInvalid)?;
        let pending: Pending =
            serde_json::from_slice(&plain).map_err(|_| OidcError::StateInvalid)?;
        let same_state = aws_lc_rs::constant_time::verify_slices_are_equal(
            pending.state.as_bytes(),
            state.as_bytes(),
        )
        .is_ok();
        if pending.provider != self.settings.name || !same_state {
            return Err(OidcError::StateMismatch);
        }
        if now >= pending.exp {
            return Err(OidcError::StateExpired);
        }
        Ok((pending, name))
    }

    fn cookie_header(&self, name: &str, value: &str, max_age: u64, secure: bool) -> String {
        let mut cookie = format!(
            "{name}={value}; Path={}; Max-Age={max_age}; HttpOnly; SameSite=Lax",
            self.cookie_path
        );
        if secure {
            cookie.push_str("; Secure");
        }
        cookie
    }
}

impl Callback {
    /// Parses the callback query. A repeated parameter is refused: which copy another
    /// component would read is anyone's guess.
    fn parse(query: &str) -> Result<Callback, OidcError> {
        let mut callback = Callback::default();
        let query = query.strip_prefix('?').unwrap_or(query);
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match name.as_ref() {
                "state" => &mut callback.state,
                "code" => &mut callback.code,
                "error" => &mut callback.error,
                "error_description" => &mut callback.error_description,
                "iss" => &mut callback.iss,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(OidcError::BadCallback("a parameter is repeated"));
            }
        }
        Ok(callback)
    }
}

/// Settings checks that need no network.
fn check_settings(settings: &OidcSettings) -> Result<(), String> {
    let name_ok = !settings.name.is_empty()
        && settings
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(format!(
            "provider name `{}`: use letters, digits, `-` and `_`",
            settings.name
        ));
    }
    check_endpoint("issuer", &settings.issuer)?;
    if Url::parse(&settings.issuer).is_ok_and(|u| u.query().is_some()) {
        return Err(format!(
            "issuer `{}` must not have a query",
            settings.issuer
        ));
    }
    if settings.client_id.is_empty() {
        return Err("client_id is empty".into());
    }
    if !settings.scopes.iter().any(|s| s == "openid") {
        return Err("scopes must include `openid`".into());
    }
    if settings
        .scopes
        .iter()
        .any(|s| s.is_empty() || s.contains(' '))
    {
        return Err("a scope is empty or holds a space".into());
    }
    Ok(())
}

/// The callback URL: absolute http(s), no fragment (RFC 6749 §3.1.2).
fn parse_redirect(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("redirect_url `{raw}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.fragment().is_some() {
        return Err(format!(
            "redirect_url `{raw}` must be an http(s) URL without a fragment"
        ));
    }
    Ok(url)
}

/// A provider URL must be https, or http on a loopback host (a provider on the same
/// machine, as in tests); it carries no credentials and no fragment.
fn check_endpoint(what: &str, raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("{what} `{raw}` is not a URL: {e}"))?;
    let scheme_ok = match url.scheme() {
        "https" => true,
        "http" => is_loopback(&url),
        _ => false,
    };
    if !scheme_ok {
        return Err(format!(
            "{what} `{raw}` must be https (plain http only on loopback)"
        ));
    }
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{what} `{raw}` must not have a fragment or credentials"
        ));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host_str() {
        Some(host) if host.eq_ignore_ascii_case("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// The discovery document must name our issuer exactly (Discovery §4.3: a mismatch means
/// the document is not the provider's we trust), use safe URLs, support S256 PKCE and our
/// client authentication when it lists them.
fn check_metadata(metadata: &Metadata, settings: &OidcSettings) -> Result<(), String> {
    if metadata.issuer != settings.issuer {
        return Err(format!(
            "the document's issuer `{}` is not the configured `{}`",
            printable(&metadata.issuer, 200),
            settings.issuer
        ));
    }
    check_endpoint("authorization_endpoint", &metadata.authorization_endpoint)?;
    check_endpoint("token_endpoint", &metadata.token_endpoint)?;
    check_endpoint("jwks_uri", &metadata.jwks_uri)?;
    if let Some(end) = &metadata.end_session_endpoint {
        check_endpoint("end_session_endpoint", end)?;
    }
    if let Some(methods) = &metadata.code_challenge_methods_supported
        && !methods.iter().any(|m| m == "S256")
    {
        return Err("the provider does not support PKCE with S256".into());
    }
    let auth = settings.auth_method.metadata_name();
    if let Some(methods) = &metadata.token_endpoint_auth_methods_supported
        && !methods.iter().any(|m| m == auth)
    {
        return Err(format!("the provider does not support {auth}"));
    }
    Ok(())
}

/// RFC 9207: an authorization response's `iss` must be our provider's, and must be there when
/// the provider says it sends it. This stops a response from another provider (mix-up
/// attack) before its code is sent anywhere.
fn check_response_issuer(metadata: &Metadata, iss: Option<&str>) -> Result<(), OidcError> {
    match iss {
        Some(iss) if iss == metadata.issuer => Ok(()),
        Some(_) => Err(OidcError::WrongIssuer),
        None if metadata.authorization_response_iss_parameter_supported => {
            Err(OidcError::BadCallback("no iss"))
        }
        None => Ok(()),
    }
}

/// The claims OpenID Connect requires beyond what the JWT verifier checks: `sub` and `iat`
/// present; `azp`, when present, our client id, and present when `aud` has several values
/// (Core §3.1.3.7 items 4 and 5); `nonce` the one we sent (item 11).
fn check_oidc_claims(
    claims: &Map<String, Value>,
    client_id: &str,
    nonce: &str,
) -> Result<(), OidcError> {
    let refuse = |why: &str| Err(OidcError::IdToken(why.into()));
    if !claims.get("sub").is_some_and(Value::is_string) {
        return refuse("token has no `sub` claim");
    }
    if !claims.get("iat").is_some_and(Value::is_u64) {
        return refuse("token has no `iat` claim");
    }
    let several_audiences = matches!(claims.get("aud"), Some(Value::Array(a)) if a.len() > 1);
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == client_id => {}
        Some(_) => return refuse("token is for another party (`azp`)"),
        None if several_audiences => return refuse("token has several audiences and no `azp`"),
        None => {}
    }
    let sent = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
    if aws_lc_rs::constant_time::verify_slices_are_equal(sent.as_bytes(), nonce.as_bytes()).is_err()
    {
        return refuse("token `nonce` is not the one sent");
    }
    Ok(())
}

/// An error response at the callback (RFC 6749 §4.1.2.1). The text comes from the URL, which
/// anyone can craft: it is cut down to printable ASCII.
fn provider_error(error: &str, description: Option<&str>) -> OidcError {
    let text = match description {
        Some(d) if !d.is_empty() => format!("{} ({})", printable(error, 64), printable(d, 200)),
        _ => printable(error, 64),
    };
    if error == "access_denied" {
        OidcError::Denied(text)
    } else {
        OidcError::Provider(text)
    }
}

/// A token endpoint failure, without the response body (it could hold tokens).
fn exchange_error(e: RequestTokenError<HttpFailure, BasicErrorResponse>) -> OidcError {
    let text = match e {
        RequestTokenError::ServerResponse(r) => {
            let code = printable(r.error().as_ref(), 64);
            match r.error_description() {
                Some(d) => format!("{code} ({})", printable(d, 200)),
                None => code,
            }
        }
        RequestTokenError::Request(e) => format!("request failed: {e}"),
        RequestTokenError::Parse(..) => {
            "the token response is not valid JSON of the expected form".into()
        }
        RequestTokenError::Other(e) => printable(&e, 200),
    };
    OidcError::Exchange(text)
}

/// At most `max` characters of `text`, printable ASCII only (others become `?`).
fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Sends one of `oauth2`'s requests with our reqwest client: the adapter that lets `oauth2`
/// run without an HTTP client of its own. It owns its arguments (a reqwest client is a
/// cheap handle) so its future is `Send` for any lifetime, which the gateway's hyper
/// services need.
async fn send(
    http: reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, HttpFailure> {
    let request = reqwest::Request::try_from(request)
        .map_err(|e| HttpFailure(e.without_url().to_string()))?;
    let resp = http
        .execute(request)
        .await
        .map_err(|e| HttpFailure(e.without_url().to_string()))?;
    let mut answer = http::Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        answer = answer.header(name, value);
    }
    let body = read_limited(resp).await?;
    answer
        .body(body)
        .map_err(|_| HttpFailure("unusable response".into()))
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, HttpFailure> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT as u64)
    {
        return Err(HttpFailure("response larger than 1 MiB".into()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| HttpFailure(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(HttpFailure("response larger than 1 MiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// 256 random bits, base64url: a state, a nonce or a PKCE verifier.
fn random_token() -> Result<String, OidcError> {
    let mut bytes = [0u8; RANDOM_BYTES];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| OidcError::Internal("no randomness"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `s` has the shape of [`random_token`]'s output (so it can name a cookie).
fn is_random_token(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The state cookie's name for a `state` made by [`OidcClient::start`].
pub fn state_cookie_name(state: &str) -> String {
    let prefix = state.get(..STATE_PREFIX_LEN).unwrap_or(state);
    format!("{STATE_COOKIE_PREFIX}{prefix}")
}

fn sealing_key(key: &[u8; 32]) -> Result<LessSafeKey, OidcError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| OidcError::Internal("unusable sealing key"))
}

/// AES-256-GCM with a random 96-bit nonce; the cookie's name is authenticated with it, so a
/// sealed value only opens under the name it was made for. `base64url(nonce | ciphertext | tag)`.
fn seal(key: &[u8; 32], cookie_name: &str, plain: &[u8]) -> Result<String, OidcError> {
    let key = sealing_key(key)?;
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| OidcError::Internal("no randomness"))?;
    let mut sealed = plain.to_vec();
    let aad = format!("{SEAL_CONTEXT}{cookie_name}");
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad.as_bytes()),
        &mut sealed,
    )
    .map_err(|_| OidcError::Internal("cannot seal the login state"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(URL_SAFE_NO_PAD.encode(out))
}

/// Opens what [`seal`] made for `cookie_name`; `None` when anything was changed.
fn unseal(key: &[u8; 32], cookie_name: &str, value: &str) -> Option<Vec<u8>> {
    let key = sealing_key(key).ok()?;
    let mut bytes = URL_SAFE_NO_PAD.decode(value).ok()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let mut sealed = bytes.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&bytes).ok()?;
    let aad = format!("{SEAL_CONTEXT}{cookie_name}");
    let plain = key
        .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut sealed)
        .ok()?;
    Some(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn sealed_values_open_only_with_their_key_and_name() {
        let sealed = seal(&KEY, "authgate_oidc_a", b"hello").unwrap();
        assert_eq!(
            unseal(&KEY, "authgate_oidc_a", &sealed).as_deref(),
            Some(&b"hello"[..])
        );
        assert!(unseal(&KEY, "authgate_oidc_b", &sealed).is_none());
        assert!(unseal(&[8; 32], "authgate_oidc_a", &sealed).is_none());
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(unseal(&KEY, "authgate_oidc_a", &URL_SAFE_NO_PAD.encode(bytes)).is_none());
        assert!(unseal(&KEY, "authgate_oidc_a", "AAAA").is_none());
        assert!(unseal(&KEY, "authgate_oidc_a", "not base64!").is_none());
        // A fresh nonce each time.
        assert_ne!(
            seal(&KEY, "n", b"x").unwrap(),
            seal(&KEY, "n", b"x").unwrap()
        );
    }

    #[test]
    fn provider_urls_are_https_or_loopback_http() {
        assert!(check_endpoint("issuer", "https://idp.example/").is_ok());
        assert!(check_endpoint("issuer", "http://127.0.0.1:8080").is_ok());
        assert!(check_endpoint("issuer", "http://127.8.9.1").is_ok());
        assert!(check_endpoint("issuer", "http://[::1]:9000/x").is_ok());
        assert!(check_endpoint("issuer", "http://localhost:9000").is_ok());
        assert!(check_endpoint("issuer", "http://idp.example/").is_err());
        assert!(check_endpoint("issuer", "http://127.0.0.1.evil.example/").is_err());
        assert!(check_endpoint("issuer", "ftp://idp.example/").is_err());
        assert!(check_endpoint("issuer", "https://user:pw@idp.example/").is_err());
        assert!(check_endpoint("issuer", "https://idp.example/#x").is_err());
        assert!(check_endpoint("issuer", "idp.example").is_err());
    }

    #[test]
    fn settings_are_checked() {
        let ok = OidcSettings::new("corp", "https://idp.example/", "gw", "s", "https://gw/cb");
        assert!(OidcClient::new(ok.clone()).is_ok());
        let mut s = ok.clone();
        s.issuer = "http://idp.example/".into();
        assert!(OidcClient::new(s).is_err());
        let mut s = ok.clone();
        s.scopes = vec!["email".into()];
        assert!(OidcClient::new(s).is_err());
        let mut s = ok.clone();
        s.name = "a/b".into();
        assert!(OidcClient::new(s).is_err());
        let mut s = ok.clone();
        s.redirect_url = "/relative".into();
        assert!(OidcClient::new(s).is_err());
        let mut s = ok;
        s.client_id.clear();
        assert!(OidcClient::new(s).is_err());
    }

    /// The gateway runs these in hyper services, which need `Send` futures.
    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: T) {}
        let s = OidcSettings::new("corp", "https://idp.example/", "gw", "s", "https://gw/cb");
        let client = OidcClient::new(s).unwrap();
        let headers = HeaderMap::new();
        send(client.discover());
        send(client.start("/", &KEY, 0));
        send(client.finish("", &headers, &KEY, 0));
    }

    #[test]
    fn debug_hides_the_secret() {
        let s = OidcSettings::new("corp", "https://idp/", "gw", "hunter2", "https://gw/cb");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn callback_parameters_are_read_once() {
        let c = Callback::parse("?code=a&state=b&iss=https%3A%2F%2Fidp").unwrap();
        assert_eq!(c.code.as_deref(), Some("a"));
        assert_eq!(c.state.as_deref(), Some("b"));
        assert_eq!(c.iss.as_deref(), Some("https://idp"));
        assert!(Callback::parse("code=a&code=b").is_err());
    }

    #[test]
    fn id_token_claims_follow_core_3_1_3_7() {
        let base = serde_json::json!({"sub": "u", "iat": 1, "aud": "gw", "nonce": "n"});
        let base = base.as_object().unwrap().clone();
        assert!(check_oidc_claims(&base, "gw", "n").is_ok());
        assert!(check_oidc_claims(&base, "gw", "m").is_err());
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c.insert(k.into(), v);
            c
        };
        assert!(check_oidc_claims(&with("azp", "gw".into()), "gw", "n").is_ok());
        assert!(check_oidc_claims(&with("azp", "other".into()), "gw", "n").is_err());
        let two = with("aud", serde_json::json!(["gw", "api"]));
        assert!(check_oidc_claims(&two, "gw", "n").is_err());
        let mut two_azp = two.clone();
        two_azp.insert("azp".into(), "gw".into());
        assert!(check_oidc_claims(&two_azp, "gw", "n").is_ok());
        let mut no_iat = base.clone();
        no_iat.remove("iat");
        assert!(check_oidc_claims(&no_iat, "gw", "n").is_err());
        let mut no_nonce = base;
        no_nonce.remove("nonce");
        assert!(check_oidc_claims(&no_nonce, "gw", "n").is_err());
    }

    #[test]
    fn provider_errors_are_printable_and_denials_recognised() {
        let e = provider_error("access_denied", Some("no\r\nway\u{7f}"));
        assert_eq!(e, OidcError::Denied("access_denied (no??way?)".into()));
        assert!(matches!(
            provider_error("server_error", None),
            OidcError::Provider(_)
        ));
    }
}
