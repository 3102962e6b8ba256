//! The login route: checks a username and password against the configured users (argon2id)
//! and issues a token signed with the first key. Bounded before any hashing: body size,
//! field sizes, per-client and per-username rate limits, and a cap on concurrent hashing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, LOCATION, SET_COOKIE};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use ipnet::IpNet;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::auth::issue::{IssueOptions, RESERVED_CLAIMS, issue};
use crate::config::{Diagnostic, KeyPath, RawLogin, RawRate, RawUser, Source};
use crate::error::{GatewayError, json_response};
use crate::login_page;
use crate::proxy::Body;
use crate::runtime::TokenSettings;
use crate::session::{CookieSettings, safe_next, same_origin};
use crate::state::{Quota, Store};

/// Longest username and password accepted (400 beyond), before any hashing.
pub const MAX_USERNAME: usize = 256;
pub const MAX_PASSWORD: usize = 1024;

struct User {
    hash: String,
    claims: Map<String, Value>,
}

/// The compiled login route.
pub struct Login {
    pub path: String,
    pub logout_path: String,
    /// The login page's HTML template.
    template: String,
    /// The template file, when there is one (watched for reloads).
    pub template_file: Option<PathBuf>,
    users: HashMap<String, User>,
    /// Verified when the username is unknown, so that costs what a wrong password costs.
    dummy_hash: String,
    max_body: u64,
    per_client: Quota,
    per_username: Quota,
    trusted_proxies: Vec<IpNet>,
    hashing: Arc<Semaphore>,
    /// The users file, when there is one (watched for reloads).
    pub users_file: Option<PathBuf>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("path", &self.path)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// Hashes a password as `authgate hash-password` does: argon2id, default parameters
/// (m=19456 KiB, t=2, p=1), random 16-byte salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    hash_with(&Argon2::default(), password.as_bytes())
}

/// An argon2 PHC string for `password` with a random 16-byte salt.
fn hash_with(argon: &Argon2<'_>, password: &[u8]) -> Result<String, String> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt)
        .map_err(|_| "the system random number generator failed".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn quota(rate: RawRate) -> Option<Quota> {
    Quota::per(rate.requests, rate.per.0)
}

/// A dummy hash with the same parameters as the first real one, so both paths cost the same.
/// Failing to make one fails the config: without it unknown users would answer faster.
/// Made once per set of parameters for the life of the process: a reload does not pay for
/// another (25-120 ms of argon2 and its memory).
fn dummy_hash(users: &HashMap<String, User>) -> Result<String, String> {
    static MADE: std::sync::OnceLock<std::sync::Mutex<HashMap<String, String>>> =
        std::sync::OnceLock::new();
    let params = users
        .values()
        .next()
        .and_then(|u| PasswordHash::new(&u.hash).ok())
        .and_then(|h| argon2::Params::try_from(&h).ok())
        .unwrap_or_default();
    let id = format!(
        "{}/{}/{}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost()
    );
    // Loading a config is rare and off the request path; a poisoned lock still holds hashes.
    let mut made = MADE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(hash) = made.get(&id) {
        return Ok(hash.clone());
    }
    let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let hash = hash_with(&argon, b"no user has this password")
        .map_err(|e| format!("cannot prepare the login route: {e}"))?;
    made.insert(id, hash.clone());
    Ok(hash)
}

fn check_user(
    user: &RawUser,
    at: &dyn Fn(&str) -> Diagnostic,
    errors: &mut Vec<Diagnostic>,
) -> Option<User> {
    let name = user.username.as_str();
    if name.is_empty() || name.len() > MAX_USERNAME || name.chars().any(char::is_control) {
        errors.push(at("username"));
        return None;
    }
    match PasswordHash::new(&user.password_hash.0) {
        Ok(h) if h.algorithm.as_str() == "argon2id" => {}
        _ => {
            errors.push(at("password_hash"));
            return None;
        }
    }
    if let Some(reserved) = user
        .claims
        .keys()
        .find(|k| RESERVED_CLAIMS.contains(&k.as_str()))
    {
        let mut d = at("claims");
        d.message = format!(
            "{}: claim `{reserved}` is set by authgate and cannot be given",
            d.message
        );
        errors.push(d);
        return None;
    }
    Some(User {
        hash: user.password_hash.0.clone(),
        claims: user.claims.clone(),
    })
}

fn user_problem(src: &Source, path: &KeyPath, field: &str) -> Diagnostic {
    let message = match field {
        "username" => {
            format!("username must be 1 to {MAX_USERNAME} bytes without control characters")
        }
        "password_hash" => {
            "not an argon2id PHC string (create one with `authgate hash-password`)".to_string()
        }
        _ => String::new(),
    };
    src.diagnostic(&path.key(field), message)
}

/// Compiles `login:`; users come from the config file and `users_file`.
pub fn compile(raw: &RawLogin, src: &Source) -> Result<Login, Vec<Diagnostic>> {
    let at = KeyPath::root().key("login");
    let mut errors = Vec::new();
    let path = raw.path.as_str().to_owned();
    if crate::path::normalize(&path)
        .map(|n| n != path)
        .unwrap_or(true)
    {
        errors.push(src.diagnostic(
            &at.key("path"),
            format!("`{path}` is not a normalized absolute path"),
        ));
    }
    let mut users = HashMap::new();
    let mut add =
        |user: &RawUser, diag_at: &dyn Fn(&str) -> Diagnostic, errors: &mut Vec<Diagnostic>| {
            if let Some(u) = check_user(user, diag_at, errors) {
                let name = user.username.as_str().to_owned();
                if users.insert(name.clone(), u).is_some() {
                    let mut d = diag_at("username");
                    d.message = format!(
                        "{}: user `{name}` is defined twice",
                        d.message.split(':').next().unwrap_or("")
                    );
                    errors.push(d);
                }
            }
        };
    for (i, user) in raw.users.iter().enumerate() {
        let p = at.key("users").index(i);
        add(user, &|field| user_problem(src, &p, field), &mut errors);
    }
    let mut users_file = None;
    if let Some(file) = &raw.users_file {
        let file_path = src.resolve(file.as_str());
        match Source::read(&file_path) {
            Err(e) => errors.push(src.diagnostic(&at.key("users_file"), e)),
            Ok(users_src) => match users_src.parse_as::<Vec<RawUser>>() {
                Err(diagnostic) => errors.push(diagnostic),
                Ok(list) => {
                    for (i, user) in list.iter().enumerate() {
                        let p = KeyPath::root().index(i);
                        add(
                            user,
                            &|field| user_problem(&users_src, &p, field),
                            &mut errors,
                        );
                    }
                }
            },
        }
        users_file = Some(file_path);
    }
    let logout_path = raw.logout_path.as_str().to_owned();
    if crate::path::normalize(&logout_path)
        .map(|n| n != logout_path)
        .unwrap_or(true)
    {
        errors.push(src.diagnostic(
            &at.key("logout_path"),
            format!("`{logout_path}` is not a normalized absolute path"),
        ));
    } else if logout_path == path {
        errors.push(src.diagnostic(&at.key("logout_path"), "must differ from `path`"));
    }
    let mut template_file = None;
    let template = match &raw.page_template {
        None => login_page::DEFAULT_TEMPLATE.to_owned(),
        Some(file) => {
            let file_path = src.resolve(file.as_str());
            let text = std::fs::read_to_string(&file_path).unwrap_or_else(|e| {
                errors.push(src.diagnostic(
                    &at.key("page_template"),
                    format!("cannot read {}: {e}", file_path.display()),
                ));
                String::new()
            });
            if !text.is_empty() && !text.contains("{{action}}") {
                errors.push(src.diagnostic(
                    &at.key("page_template"),
                    "the template has no `{{action}}`: its form would not post to the login route",
                ));
            }
            template_file = Some(file_path);
            text
        }
    };
    let rate = &raw.rate_limit;
    let per_client = quota(rate.per_client);
    let per_username = quota(rate.per_username);
    for (name, q) in [
        ("per_client", per_client.is_none()),
        ("per_username", per_username.is_none()),
    ] {
        if q {
            errors.push(src.diagnostic(
                &at.key("rate_limit").key(name),
                "`requests` must be at least 1 and `per` long enough to refill one request per nanosecond or slower",
            ));
        }
    }
    let mut trusted_proxies = Vec::new();
    for (i, proxy) in raw.trusted_proxies.iter().enumerate() {
        let text = proxy.as_str();
        match text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => errors.push(src.diagnostic(
                &at.key("trusted_proxies").index(i),
                format!("`{text}` is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
            )),
        }
    }
    let (Some(per_client), Some(per_username), true) =
        (per_client, per_username, errors.is_empty())
    else {
        return Err(errors);
    };
    let dummy_hash = dummy_hash(&users).map_err(|e| vec![src.diagnostic(&at, e)])?;
    let permits = std::thread::available_parallelism().map_or(2, |n| n.get());
    Ok(Login {
        path,
        logout_path,
        template,
        template_file,
        users,
        dummy_hash,
        max_body: raw.max_body_bytes,
        per_client,
        per_username,
        trusted_proxies,
        hashing: Arc::new(Semaphore::new(permits)),
        users_file,
    })
}

struct Credentials {
    username: String,
    password: String,
    /// Where a browser goes after logging in (form field; validated before use).
    next: Option<String>,
}

/// The address the per-client limit is keyed on: the socket peer, or — when the peer is a
/// trusted proxy — the right-most `X-Forwarded-For` entry that is not a trusted proxy.
fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let chain: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    chain
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

async fn check_rate(limits: &dyn Store, key: &str, quota: Quota) -> Result<(), GatewayError> {
    limits
        .take(key, quota)
        .await?
        .map_err(|wait| GatewayError::TooManyRequests(wait.max(Duration::from_secs(1))))
}

enum Form {
    Json,
    UrlEncoded,
}

fn content_type(headers: &HeaderMap) -> Result<Form, GatewayError> {
    let value = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = value.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/json") {
        Ok(Form::Json)
    } else if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Ok(Form::UrlEncoded)
    } else {
        Err(GatewayError::UnsupportedMediaType)
    }
}

fn parse_credentials(form: &Form, body: &[u8]) -> Result<Credentials, GatewayError> {
    let creds = match form {
        Form::Json => {
            const SHAPE: &str =
                "expected a JSON object with string fields `username` and `password`";
            // An object, not serde's positional array form of a struct.
            let object = serde_json::from_slice::<Map<String, Value>>(body)
                .map_err(|_| GatewayError::BadRequest(SHAPE))?;
            match (object.get("username"), object.get("password")) {
                (Some(Value::String(u)), Some(Value::String(p))) => Credentials {
                    username: u.clone(),
                    password: p.clone(),
                    next: None,
                },
                _ => return Err(GatewayError::BadRequest(SHAPE)),
            }
        }
        Form::UrlEncoded => {
            let (mut username, mut password, mut next) = (None, None, None);
            for (k, v) in form_urlencoded::parse(body) {
                let slot = match &*k {
                    "username" => &mut username,
                    "password" => &mut password,
                    "next" => &mut next,
                    _ => continue,
                };
                if slot.replace(v.into_owned()).is_some() {
                    return Err(GatewayError::BadRequest(
                        "`username` and `password` must be given once",
                    ));
                }
            }
            match (username, password) {
                (Some(username), Some(password)) => Credentials {
                    username,
                    password,
                    next,
                },
                _ => {
                    return Err(GatewayError::BadRequest(
                        "expected form fields `username` and `password`",
                    ));
                }
            }
        }
    };
    if creds.username.is_empty() || creds.username.len() > MAX_USERNAME {
        return Err(GatewayError::BadRequest("username must be 1 to 256 bytes"));
    }
    if creds.password.is_empty() || creds.password.len() > MAX_PASSWORD {
        return Err(GatewayError::BadRequest("password must be 1 to 1024 bytes"));
    }
    Ok(creds)
}

async fn read_body(body: Incoming, headers: &HeaderMap, max: u64) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(GatewayError::PayloadTooLarge)
        }
        Err(_) => Err(GatewayError::BadRequest(
            "the request body could not be read",
        )),
    }
}

impl Login {
    /// Runs `argon2` on a blocking thread, at most one per core at a time.
    async fn verify(&self, username: &str, password: String) -> bool {
        let (hash, known) = match self.users.get(username) {
            Some(u) => (u.hash.clone(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let Ok(_permit) = self.hashing.clone().acquire_owned().await else {
            return false;
        };
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        matched && known
    }

    /// The login page (`GET {login.path}`), showing `error` when there is one.
    fn page(
        &self,
        status: StatusCode,
        next: &str,
        username: &str,
        error: Option<&str>,
    ) -> Response<Body> {
        let html = login_page::render(
            &self.template,
            &login_page::PageState {
                action: &self.path,
                next: safe_next(next),
                username,
                error,
            },
        );
        login_page::response(status, html)
    }

    /// Checks the credentials and signs a token: `(token, username, next)`. On failure, the
    /// error and the username (to show it again on the form).
    async fn attempt(
        &self,
        req: LoginRequest<'_>,
        form: &Form,
        keys: &crate::auth::KeySet,
        tokens: &TokenSettings,
    ) -> Result<(String, String, Option<String>), (GatewayError, String, Option<String>)> {
        let fail = |e| (e, String::new(), None);
        if !same_origin(req.headers, req.host) {
            return Err(fail(GatewayError::CrossSite));
        }
        let client = client_ip(req.headers, req.peer.ip(), &self.trusted_proxies);
        check_rate(
            req.limits,
            &format!("login-client:{client}"),
            self.per_client,
        )
        .await
        .map_err(fail)?;
        let body = read_body(req.body, req.headers, self.max_body)
            .await
            .map_err(fail)?;
        let creds = parse_credentials(form, &body).map_err(fail)?;
        let username = creds.username;
        let next = creds.next;
        check_rate(
            req.limits,
            &format!("login-user:{username}"),
            self.per_username,
        )
        .await
        .map_err(|e| (e, username.clone(), next.clone()))?;
        if !self.verify(&username, creds.password).await {
            return Err((GatewayError::InvalidCredentials, username, next));
        }
        let claims = self
            .users
            .get(&username)
            .map(|u| u.claims.clone())
            .unwrap_or_default();
        let options = IssueOptions {
            issuer: tokens.issuer.as_deref(),
            audience: tokens.audience.as_deref(),
            ttl: tokens.ttl,
            sid: None,
        };
        let token = issue(keys, &options, &username, claims).map_err(|e| {
            tracing::error!(error = %e, "cannot sign a token for a successful login");
            (GatewayError::Internal, username.clone(), next.clone())
        })?;
        Ok((token, username, next))
    }

    /// `{login.path}`: GET shows the page; POST logs in. A form post (a browser) gets a 303 to
    /// `next` with the session cookie, or the page again with the error; a JSON post gets the
    /// token as JSON (and the cookie).
    pub async fn handle(
        &self,
        req: LoginRequest<'_>,
        keys: &crate::auth::KeySet,
        tokens: &TokenSettings,
        cookie: &CookieSettings,
    ) -> LoginAnswer {
        if *req.method == Method::GET || *req.method == Method::HEAD {
            let next = req
                .query
                .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "next"))
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            return LoginAnswer::page(self.page(StatusCode::OK, &next, "", None));
        }
        if *req.method != Method::POST {
            return LoginAnswer::failed(GatewayError::MethodNotAllowed("GET, POST"));
        }
        let form = match content_type(req.headers) {
            Ok(form) => form,
            Err(e) => return LoginAnswer::failed(e),
        };
        let html = matches!(form, Form::UrlEncoded);
        match self.attempt(req, &form, keys, tokens).await {
            Ok((token, username, next)) => {
                let mut resp = if html {
                    let mut r = login_page::response(StatusCode::SEE_OTHER, String::new());
                    let target = safe_next(next.as_deref().unwrap_or("/"));
                    if let Ok(v) = HeaderValue::from_str(target) {
                        r.headers_mut().insert(LOCATION, v);
                    }
                    r
                } else {
                    json_response(
                        StatusCode::OK,
                        &json!({"access_token": token, "token_type": "Bearer", "expires_in": tokens.ttl.as_secs()}),
                    )
                };
                if let Some(c) = cookie.set(&token, tokens.ttl) {
                    resp.headers_mut().append(SET_COOKIE, c);
                }
                LoginAnswer {
                    response: resp,
                    user: Some(username),
                    error: None,
                }
            }
            Err((error, username, next)) if html => {
                let message = match &error {
                    GatewayError::InvalidCredentials => "Wrong username or password.".to_string(),
                    GatewayError::TooManyRequests(_) => {
                        "Too many attempts. Wait a minute and try again.".to_string()
                    }
                    GatewayError::CrossSite => {
                        "This form was sent from another site and was refused.".to_string()
                    }
                    other => format!("{}.", capitalize(&other.to_string())),
                };
                let next = next.as_deref().unwrap_or("/");
                let mut resp = self.page(error.status(), next, &username, Some(&message));
                error.add_headers(resp.headers_mut());
                LoginAnswer {
                    response: resp,
                    user: None,
                    error: Some(error),
                }
            }
            Err((error, ..)) => LoginAnswer::failed(error),
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}

/// What the login route needs from the request.
pub struct LoginRequest<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub host: Option<&'a str>,
    pub query: Option<&'a str>,
    pub body: Incoming,
    pub peer: SocketAddr,
    /// Where the rate-limit buckets live (they outlive config reloads).
    pub limits: &'a dyn Store,
}

/// The login route's answer: the response, who logged in, and the failure (for metrics).
pub struct LoginAnswer {
    pub response: Response<Body>,
    pub user: Option<String>,
    pub error: Option<GatewayError>,
}

impl LoginAnswer {
    fn page(response: Response<Body>) -> Self {
        LoginAnswer {
            response,
            user: None,
            error: None,
        }
    }
    fn failed(error: GatewayError) -> Self {
        LoginAnswer {
            response: error.to_response(),
            user: None,
            error: Some(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_argon2id() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"wrong", &parsed)
                .is_err()
        );
    }

    #[test]
    fn the_dummy_hash_is_made_once_per_parameters() {
        let users = HashMap::new();
        let first = dummy_hash(&users).unwrap();
        // A fresh hash has a fresh random salt: equal strings mean no second argon2 run.
        assert_eq!(dummy_hash(&users).unwrap(), first);
    }

    #[test]
    fn client_ip_trusts_forwarded_for_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1, 10.0.0.2".parse().unwrap());
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let direct: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            client_ip(&h, proxy, &trusted),
            "1.1.1.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(&h, direct, &trusted), direct);
        assert_eq!(client_ip(&h, proxy, &[]), proxy);
        assert_eq!(client_ip(&HeaderMap::new(), proxy, &trusted), proxy);
    }

    #[test]
    fn credentials_parse_from_json_and_forms() {
        let c = parse_credentials(
            &Form::Json,
            br#"{"username":"a","password":"b","role":"admin"}"#,
        )
        .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("a", "b"));
        let c =
            parse_credentials(&Form::UrlEncoded, b"username=al%20ice&password=p%26w&x=1").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("al ice", "p&w")
        );
        assert!(parse_credentials(&Form::Json, br#"{"username":"a"}"#).is_err());
        assert!(parse_credentials(&Form::Json, br#"{"username":1,"password":"b"}"#).is_err());
        assert!(parse_credentials(&Form::Json, b"not json").is_err());
        assert!(parse_credentials(&Form::UrlEncoded, b"username=a&username=b&password=c").is_err());
        assert!(parse_credentials(&Form::UrlEncoded, b"username=&password=c").is_err());
        let long = format!(r#"{{"username":"a","password":"{}"}}"#, "x".repeat(2000));
        assert!(parse_credentials(&Form::Json, long.as_bytes()).is_err());
    }
}
