//! The config file as written: plain serde structs (`deny_unknown_fields`), `${VAR}` expansion
//! and durations. `runtime.rs` validates and compiles them into the form the request path reads:
//! `gateway.yaml -> RawConfig -> Runtime`.

mod diag;
mod duration;
mod expand;
mod locate;
mod schema;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

pub use diag::Diagnostics;
pub use duration::parse_duration;
pub use expand::{ExpandError, expand, expand_with};
pub use locate::{KeyPath, Seg, locate};
pub use schema::{schema, schema_json};

/// The whole config file. Any string value may use `${VAR}` or `${VAR:-default}` from the
/// environment; durations are written with a unit (`250ms`, `90s`, `15m`, `1h`, `2d`);
/// unknown keys are errors. `authgate check` validates everything this schema cannot.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Config", title = "authgate gateway.yaml")]
pub struct RawConfig {
    /// `IP:port` the gateway serves on (default `0.0.0.0:8080`). Takes effect on restart.
    #[serde(default = "default_listen")]
    pub listen: Text,
    /// The admin listener: `/healthz`, `/readyz`, `/metrics` (default `127.0.0.1:9090`).
    #[serde(default)]
    pub admin: RawAdmin,
    /// Limits and timeouts of the main listener, and HTTPS on it.
    #[serde(default)]
    pub server: RawServer,
    /// Who issues tokens and which keys verify them (required).
    pub tokens: RawTokens,
    /// The login route that checks passwords or single sign-on and issues tokens (optional;
    /// without it authgate only verifies tokens).
    #[serde(default)]
    pub login: Option<RawLogin>,
    /// The browser session cookie set by logins (defaults: `authgate_session`, secure, Lax).
    #[serde(default)]
    pub cookie: RawCookie,
    /// The verified-claims cache (default 100000 entries).
    #[serde(default)]
    pub cache: RawCache,
    /// authgate as the auth service of an edge proxy (nginx `auth_request`, Traefik
    /// `forwardAuth`, Caddy `forward_auth`); optional.
    #[serde(default)]
    pub forward_auth: Option<RawForwardAuth>,
    /// Where revocations, sessions, refresh tokens and login limits live. Missing: `memory:`,
    /// with a warning at start (nothing survives a restart).
    #[serde(default)]
    pub state: Option<RawState>,
    /// Traces: W3C trace context and OTLP export (optional; without it the gateway exports
    /// nothing and passes a client's valid `traceparent` on unchanged). Takes effect on restart.
    #[serde(default)]
    pub telemetry: Option<RawTelemetry>,
    /// Named upstreams (required): `name: "http://host:port"` or
    /// `name: { url | servers, balance, timeouts, tls, health_check }`.
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Routes (required, at least one), first match in file order wins; no match is a 404.
    #[schemars(length(min = 1))]
    pub routes: Vec<RawRoute>,
}

fn default_listen() -> Text {
    Text("0.0.0.0:8080".into())
}

/// Where the admin endpoints listen. Keep it private: metrics name routes and upstreams.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// `admin:` — health, readiness and metrics for operators.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Admin")]
pub struct RawAdmin {
    /// `IP:port` of the admin listener (default 127.0.0.1:9090).
    #[serde(default = "default_admin_listen")]
    pub listen: Text,
}

fn default_admin_listen() -> Text {
    Text(DEFAULT_ADMIN_LISTEN.into())
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: default_admin_listen(),
        }
    }
}

/// `server:` — bounds on client connections.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Server")]
pub struct RawServer {
    /// Time a client gets to send a request's headers; for HTTP/1.1 it also bounds how long an
    /// idle keep-alive connection waits for its next request (slowloris). Default 10s.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: DurationValue,
    /// Largest request head (request line and headers) in bytes, at least 8192; larger is a
    /// 431. Default 32 KiB.
    #[serde(default = "default_max_header_bytes")]
    #[schemars(range(min = 8192))]
    pub max_header_bytes: u32,
    /// Most client connections served at once; further ones wait in the accept queue.
    /// Default 10000. Takes effect on restart.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT. Default 30s.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: DurationValue,
    /// Largest request body forwarded upstream, in bytes (413 beyond); 0 for no limit.
    /// Default 10 MiB; a route's `max_body_bytes` overrides it.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Methods served besides RFC 9110's (GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE) and
    /// PATCH, e.g. WebDAV's `PROPFIND`. Any other method is answered 501 before routing.
    #[serde(default)]
    pub extra_methods: Vec<Text>,
    /// HTTPS on the main listener (`listen`). Takes effect on restart, except the certificate
    /// and key, which are reloaded when their files change.
    #[serde(default)]
    pub tls: Option<RawTls>,
}

/// `server.tls:` — the main listener speaks HTTPS (TLS 1.2+, ALPN h2 and http/1.1).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Tls")]
pub struct RawTls {
    /// PEM certificate chain, leaf first; reloaded when the file changes.
    pub cert_file: Text,
    /// PEM private key (RSA, ECDSA or Ed25519; PKCS#8, PKCS#1 or SEC1) of the leaf.
    pub key_file: Text,
    /// Require client certificates issued by these CAs (mutual TLS); their identity is
    /// available to routes as `tls.client.*`.
    #[serde(default)]
    pub client_ca_file: Option<Text>,
    /// A plain-HTTP listener beside the HTTPS one (e.g. `0.0.0.0:8080`); none by default.
    #[serde(default)]
    pub http_listen: Option<Text>,
    /// What the plain-HTTP listener does: `redirect` (308 to https://, the default) or `serve`
    /// (the same routes over plain HTTP).
    #[serde(default)]
    pub http: PlainHttp,
}

/// What a plain-HTTP listener beside an HTTPS one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlainHttp {
    /// Answer every request with a 308 to the same URL on https://.
    #[default]
    Redirect,
    /// Serve the same routes over plain HTTP.
    Serve,
}

fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}

fn default_header_read_timeout() -> DurationValue {
    DurationValue(Duration::from_secs(10))
}
fn default_max_header_bytes() -> u32 {
    32 * 1024
}
fn default_max_connections() -> u32 {
    10_000
}
fn default_shutdown_grace() -> DurationValue {
    DurationValue(Duration::from_secs(30))
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            header_read_timeout: default_header_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_connections: default_max_connections(),
            shutdown_grace: default_shutdown_grace(),
            max_body_bytes: default_max_body_bytes(),
            extra_methods: Vec::new(),
            tls: None,
        }
    }
}

/// `tokens:` — who issues tokens and which keys verify them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Tokens")]
pub struct RawTokens {
    /// `iss` of issued tokens; when set, verified tokens must carry exactly this issuer.
    #[serde(default)]
    pub issuer: Option<Text>,
    /// `aud` of issued tokens; when set, verified tokens must name this audience.
    #[serde(default)]
    pub audience: Option<Text>,
    /// Lifetime of issued tokens (default 1h).
    #[serde(default = "default_ttl")]
    pub ttl: DurationValue,
    /// Clock skew tolerated on `exp` and `nbf` (default 30s).
    #[serde(default = "default_leeway")]
    pub leeway: DurationValue,
    /// Keys (at least one): the first one signs, every one verifies (rotation).
    #[schemars(length(min = 1))]
    pub keys: Vec<RawKey>,
    /// External identity providers whose published keys are also trusted, each for tokens
    /// naming its issuer (default: none).
    #[serde(default)]
    pub jwks: Vec<RawJwks>,
    /// Refresh tokens (optional): login also returns one, exchanged at `login.refresh_path`.
    #[serde(default)]
    pub refresh: Option<RawRefresh>,
}

/// `state:` — the store shared by every replica.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "State")]
pub struct RawState {
    /// `memory:` (the default), `sqlite:PATH` (relative to this file), `redis://…`,
    /// `rediss://…` or `redis+sentinel://host1:26379,host2:26379/mymaster/0`. Takes effect on
    /// restart.
    #[serde(default = "default_store")]
    pub store: Text,
}

fn default_store() -> Text {
    Text("memory:".into())
}

/// `tokens.refresh:` — login also returns a refresh token.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Refresh")]
pub struct RawRefresh {
    /// Absolute lifetime of a session (its refresh-token family). Default 30d.
    #[serde(default = "default_refresh_ttl")]
    pub ttl: DurationValue,
    /// A refresh token unused this long is dead. Default 7d.
    #[serde(default = "default_refresh_idle")]
    pub idle_ttl: DurationValue,
    /// A just-rotated token may be presented again within this window (a client that lost
    /// the answer); after it, presenting it again revokes the whole session. Default 10s.
    #[serde(default = "default_reuse_grace")]
    pub reuse_grace: DurationValue,
}

fn default_refresh_ttl() -> DurationValue {
    DurationValue(Duration::from_secs(30 * 86400))
}
fn default_refresh_idle() -> DurationValue {
    DurationValue(Duration::from_secs(7 * 86400))
}
fn default_reuse_grace() -> DurationValue {
    DurationValue(Duration::from_secs(10))
}

/// `tokens.jwks[]` — a remote JWK Set.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Jwks")]
pub struct RawJwks {
    /// `https://…/jwks.json` (plain `http://` only for loopback addresses).
    pub url: Text,
    /// Tokens whose `iss` is exactly this are verified with this provider's keys only.
    pub issuer: Text,
    /// When set, tokens from this provider must name it in `aud`.
    #[serde(default)]
    pub audience: Option<Text>,
    /// How often the keys are fetched again (default 15m).
    #[serde(default = "default_jwks_refresh")]
    pub refresh_interval: DurationValue,
    /// Least time between fetches caused by tokens naming an unknown `kid` (default 30s).
    #[serde(default = "default_jwks_cooldown")]
    pub unknown_kid_cooldown: DurationValue,
    /// Time allowed for one fetch (default 5s).
    #[serde(default = "default_jwks_timeout")]
    pub timeout: DurationValue,
}

fn default_jwks_refresh() -> DurationValue {
    DurationValue(Duration::from_secs(900))
}
fn default_jwks_cooldown() -> DurationValue {
    DurationValue(Duration::from_secs(30))
}
fn default_jwks_timeout() -> DurationValue {
    DurationValue(Duration::from_secs(5))
}

fn default_ttl() -> DurationValue {
    DurationValue(Duration::from_secs(3600))
}
fn default_leeway() -> DurationValue {
    DurationValue(Duration::from_secs(30))
}

/// One signing/verification key. Its algorithm is pinned: a token cannot choose another.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Key")]
pub struct RawKey {
    /// Key id, written as `kid` in issued tokens' headers and used to pick the key on verify.
    pub id: Text,
    /// The one algorithm this key accepts (a token's header cannot choose another).
    pub algorithm: Algorithm,
    /// HS* only: the shared secret, at least 32/48/64 bytes for HS256/384/512. Write
    /// `${VAR}` to keep it out of the file.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// HS* only: a file holding the shared secret (one trailing newline is ignored).
    #[serde(default)]
    pub secret_file: Option<Text>,
    /// RS*/PS*/ES*/EdDSA: PEM private key; lets this key sign (its public half verifies).
    #[serde(default)]
    pub private_key_file: Option<Text>,
    /// RS*/PS*/ES*/EdDSA: PEM public key; verify only.
    #[serde(default)]
    pub public_key_file: Option<Text>,
    /// Demo convenience: when `secret` expands to an empty string, generate a random secret
    /// for this process (tokens then do not survive a restart; a warning is logged). Default
    /// false.
    #[serde(default)]
    pub ephemeral_if_empty: bool,
}

/// `login:` — the route that checks a username and password and issues a token.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Login")]
pub struct RawLogin {
    /// `GET`: the login page; `POST` here with JSON `{"username","password"}` or an HTML
    /// form (default `/auth/login`).
    #[serde(default = "default_login_path")]
    pub path: Text,
    /// `POST` here to log out: clears the cookie and revokes the session; `?everywhere=1`
    /// every session of the user (default `/auth/logout`).
    #[serde(default = "default_logout_path")]
    pub logout_path: Text,
    /// `POST` here to exchange a refresh token, when `tokens.refresh` is set (default
    /// `/auth/refresh`).
    #[serde(default = "default_refresh_path")]
    pub refresh_path: Text,
    /// An HTML file replacing the built-in login page (placeholders: `{{action}}`, `{{next}}`,
    /// `{{username}}`, `{{error}}`). Default: the built-in page.
    #[serde(default)]
    pub page_template: Option<Text>,
    /// Users listed inline (default: none).
    #[serde(default)]
    pub users: Vec<RawUser>,
    /// A YAML file holding a list of users of the same shape (relative to this file); watched
    /// and reloaded like the config.
    #[serde(default)]
    pub users_file: Option<Text>,
    /// Largest login request body accepted, in bytes (413 beyond; checked before any
    /// hashing). Default 16384.
    #[serde(default = "default_login_max_body")]
    pub max_body_bytes: u64,
    /// Brute-force limits: token buckets per client address and per username; over the
    /// limit, 429 with `Retry-After`.
    #[serde(default)]
    pub rate_limit: RawLoginRateLimit,
    /// Proxies (IPs or CIDRs) whose `X-Forwarded-For` is believed when keying the per-client
    /// limit. Empty (the default): the socket peer address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<Text>,
    /// Single sign-on through OpenID Connect providers (login ends in authgate's own
    /// session). Default: none.
    #[serde(default)]
    pub oidc: Vec<RawOidc>,
}

/// `login.oidc[]` — one OpenID Connect provider (authorization code flow with PKCE).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Oidc")]
pub struct RawOidc {
    /// `[A-Za-z0-9_-]`, unique; in URLs: `{login base}/oidc/{name}/start` and
    /// `.../callback`, and on the login page's "Sign in with {name}" button.
    #[schemars(with = "Text")]
    pub name: String,
    /// Discovery: `{issuer}/.well-known/openid-configuration` (https; http only on loopback).
    pub issuer: Text,
    /// The client id registered at the provider.
    pub client_id: Text,
    /// The client secret registered at the provider; write `${VAR}` to keep it out of the
    /// file.
    pub client_secret: Secret,
    /// Must include `openid` (default `openid email profile`).
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<Text>,
    /// The callback URL registered at the provider. Default: the request's scheme and host
    /// with the callback path.
    #[serde(default)]
    pub redirect_url: Option<Text>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub auth_method: OidcAuthMethod,
    /// authgate claim ← ID-token claim (dot paths). Without `sub`, the ID token's `sub`.
    /// Default: only `sub`.
    #[serde(default)]
    pub claims: BTreeMap<String, Text>,
    /// Rules on the ID token's claims, as a route's `allow` (default: none).
    #[serde(default)]
    pub allow: BTreeMap<String, ClaimMatch>,
    /// The login page sends the browser straight to this provider (when it is the only way
    /// to log in). Default false.
    #[serde(default)]
    pub auto_redirect: bool,
    /// Where the provider sends the browser after an RP-initiated logout (registered at the
    /// provider). Default: the login page on the request's host.
    #[serde(default)]
    pub post_logout_redirect_url: Option<Text>,
}

fn default_oidc_scopes() -> Vec<Text> {
    ["openid", "email", "profile"]
        .map(|s| Text(s.into()))
        .to_vec()
}

/// How authgate authenticates at the provider's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum OidcAuthMethod {
    /// The client id and secret in an HTTP Basic `Authorization` header.
    #[default]
    ClientSecretBasic,
    /// The client id and secret in the form body.
    ClientSecretPost,
}

fn default_login_path() -> Text {
    Text("/auth/login".into())
}
fn default_refresh_path() -> Text {
    Text("/auth/refresh".into())
}
fn default_logout_path() -> Text {
    Text("/auth/logout".into())
}
fn default_login_max_body() -> u64 {
    16 * 1024
}

/// One user of the login route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "User")]
pub struct RawUser {
    /// Becomes `sub` of the issued token.
    pub username: Text,
    /// An argon2 PHC string, as printed by `authgate hash-password`.
    pub password_hash: Secret,
    /// Copied into issued tokens (`sub`, `iss`, `aud`, `exp`, `nbf`, `iat`, `jti`, `sid` are
    /// reserved). Default: none.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// `login.rate_limit:` — token buckets, keyed per client address and per username.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "LoginRateLimit")]
pub struct RawLoginRateLimit {
    /// Attempts one client address may make (default 20 per minute).
    #[serde(default = "default_per_client")]
    pub per_client: RawRate,
    /// Attempts on one username from anywhere (default 10 per minute).
    #[serde(default = "default_per_username")]
    pub per_username: RawRate,
}

impl Default for RawLoginRateLimit {
    fn default() -> Self {
        RawLoginRateLimit {
            per_client: default_per_client(),
            per_username: default_per_username(),
        }
    }
}

/// `requests` attempts per `per`, refilled evenly; a burst of `requests` is allowed.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Rate")]
pub struct RawRate {
    /// Attempts allowed in each `per` (also the burst).
    pub requests: u32,
    /// The period the attempts are spread over, e.g. `1m`.
    pub per: DurationValue,
}

fn default_per_client() -> RawRate {
    RawRate {
        requests: 20,
        per: DurationValue(Duration::from_secs(60)),
    }
}
fn default_per_username() -> RawRate {
    RawRate {
        requests: 10,
        per: DurationValue(Duration::from_secs(60)),
    }
}

/// `cookie:` — the session cookie set by browser logins.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Cookie")]
pub struct RawCookie {
    /// Cookie name (default `authgate_session`).
    #[serde(default = "default_cookie_name")]
    pub name: Text,
    /// `Secure` attribute (default true); false only for plain-http local setups.
    #[serde(default = "default_true")]
    pub secure: bool,
    /// `Strict`, `Lax` (default) or `None` (requires `secure`).
    #[serde(default)]
    pub same_site: SameSite,
    /// `Domain` attribute; unset (the default) keeps the cookie to the exact host.
    #[serde(default)]
    pub domain: Option<Text>,
    /// Sliding session: re-issue a cookie token this long before it expires. Unset (the
    /// default): a cookie token lives its `tokens.ttl`.
    #[serde(default)]
    pub refresh_before: Option<DurationValue>,
}

fn default_cookie_name() -> Text {
    Text("authgate_session".into())
}
fn default_true() -> bool {
    true
}

impl Default for RawCookie {
    fn default() -> Self {
        RawCookie {
            name: default_cookie_name(),
            secure: true,
            same_site: SameSite::Lax,
            domain: None,
            refresh_before: None,
        }
    }
}

/// `SameSite` attribute of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
pub enum SameSite {
    /// Sent only on requests from the same site.
    Strict,
    /// Also sent on top-level navigations from other sites.
    #[default]
    Lax,
    /// Sent on every request, cross-site ones included; needs `secure: true`.
    None,
}

/// `cache:` — the verified-claims cache.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Cache")]
pub struct RawCache {
    /// Most tokens whose verified claims are kept (default 100000); 0 disables the cache. An
    /// entry never outlives its token's `exp`.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
}

fn default_max_entries() -> u64 {
    100_000
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            max_entries: default_max_entries(),
        }
    }
}

/// An upstream: one server or several, how to reach them, and when to stop sending to one.
#[derive(Debug)]
pub struct RawUpstream {
    /// Each server's base URL: `http[s]://host:port[/base/path]`, or `builtin:echo`.
    pub servers: Vec<Text>,
    /// `round_robin` (default) or `least_conn`.
    pub balance: Balance,
    /// https: trust only these roots (PEM) instead of the system's.
    pub ca_file: Option<Text>,
    /// https: present this client certificate (PEM chain) ...
    pub client_cert_file: Option<Text>,
    /// ... with this key.
    pub client_key_file: Option<Text>,
    /// https: the name sent in SNI and that the certificate must carry (default: each
    /// server's host).
    pub server_name: Option<Text>,
    /// Active health checks (optional).
    pub health_check: Option<RawHealthCheck>,
    /// How long a server that refused a connection (or reset a new one before answering) gets
    /// no traffic. Default 10s. An upstream's only server is never ejected: with nowhere else
    /// to send, every request tries it.
    pub eject_for: DurationValue,
    /// Time allowed to open a connection, TLS handshake included (unreachable → 502).
    pub connect_timeout: DurationValue,
    /// Time allowed for the response headers to arrive (too slow → 504).
    pub timeout: DurationValue,
}

/// How requests are spread over an upstream's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each healthy server in turn.
    #[default]
    RoundRobin,
    /// The healthy server with the fewest requests in progress.
    LeastConn,
}

/// `health_check:` — a GET every `interval`; a server is out after `unhealthy_after`
/// failures in a row and back after `healthy_after` successes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "HealthCheck")]
pub struct RawHealthCheck {
    /// Path asked on each server, on a fresh connection (2xx and 3xx are healthy).
    pub path: Text,
    /// Time between two checks of a server (default 5s).
    #[serde(default = "default_health_interval")]
    pub interval: DurationValue,
    /// Time one check may take (default 2s).
    #[serde(default = "default_health_timeout")]
    pub timeout: DurationValue,
    /// Failed checks in a row that take a server out of rotation (default 2).
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    /// Passed checks in a row that bring it back (default 2).
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
}

fn default_health_interval() -> DurationValue {
    DurationValue(Duration::from_secs(5))
}
fn default_health_timeout() -> DurationValue {
    DurationValue(Duration::from_secs(2))
}
fn default_unhealthy_after() -> u32 {
    2
}
fn default_healthy_after() -> u32 {
    2
}

/// An upstream written out as a mapping: `url` (one server) or `servers`, not both.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    rename = "UpstreamLong",
    extend("oneOf" = [{"required": ["url"]}, {"required": ["servers"]}])
)]
struct RawUpstreamLong {
    /// The one server's base URL: `http[s]://host:port[/base/path]`, or `builtin:echo`.
    #[serde(default)]
    url: Option<Text>,
    /// Several servers' base URLs (same scheme and base path); requests are spread over the
    /// healthy ones.
    #[serde(default)]
    #[schemars(length(min = 1))]
    servers: Option<Vec<Text>>,
    /// `round_robin` (default) or `least_conn`.
    #[serde(default)]
    balance: Balance,
    /// https: trust only these roots (PEM) instead of the system's.
    #[serde(default)]
    ca_file: Option<Text>,
    /// https: present this client certificate (PEM chain) ...
    #[serde(default)]
    client_cert_file: Option<Text>,
    /// ... with this private key (PEM).
    #[serde(default)]
    client_key_file: Option<Text>,
    /// https: the name sent in SNI and that the certificate must carry (default: each
    /// server's host).
    #[serde(default)]
    server_name: Option<Text>,
    /// Active health checks (default: none; a server is then out only while it refuses
    /// connections, see `eject_for`).
    #[serde(default)]
    health_check: Option<RawHealthCheck>,
    /// How long a server that refused a connection (or reset a new one before answering)
    /// gets no traffic (default 10s). An upstream's only server is never ejected.
    #[serde(default = "default_eject_for")]
    eject_for: DurationValue,
    /// Time allowed to open a connection, TLS handshake included (default 5s; unreachable →
    /// 502).
    #[serde(default = "default_connect_timeout")]
    connect_timeout: DurationValue,
    /// Time allowed for the response headers to arrive (default 30s; too slow → 504).
    #[serde(default = "default_upstream_timeout")]
    timeout: DurationValue,
}

fn default_eject_for() -> DurationValue {
    DurationValue(Duration::from_secs(10))
}
fn default_connect_timeout() -> DurationValue {
    DurationValue(Duration::from_secs(5))
}
fn default_upstream_timeout() -> DurationValue {
    DurationValue(Duration::from_secs(30))
}

impl RawUpstream {
    fn one(url: Text) -> RawUpstream {
        RawUpstream {
            servers: vec![url],
            balance: Balance::RoundRobin,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            server_name: None,
            health_check: None,
            eject_for: default_eject_for(),
            connect_timeout: default_connect_timeout(),
            timeout: default_upstream_timeout(),
        }
    }
}

impl<'de> Deserialize<'de> for RawUpstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawUpstream;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a URL string or a mapping with `url` or `servers`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawUpstream, E> {
                Ok(RawUpstream::one(Text::expand(v)?))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawUpstream, A::Error> {
                let long =
                    RawUpstreamLong::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let servers = match (long.url, long.servers) {
                    (Some(url), None) => vec![url],
                    (None, Some(list)) if !list.is_empty() => list,
                    (None, Some(_)) => return Err(de::Error::custom("`servers` is empty")),
                    (Some(_), Some(_)) => {
                        return Err(de::Error::custom("give `url` or `servers`, not both"));
                    }
                    (None, None) => return Err(de::Error::custom("missing `url` or `servers`")),
                };
                Ok(RawUpstream {
                    servers,
                    balance: long.balance,
                    ca_file: long.ca_file,
                    client_cert_file: long.client_cert_file,
                    client_key_file: long.client_key_file,
                    server_name: long.server_name,
                    health_check: long.health_check,
                    eject_for: long.eject_for,
                    connect_timeout: long.connect_timeout,
                    timeout: long.timeout,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// How a route treats tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No token needed or looked at; identity headers are still stripped.
    None,
    /// A valid token is used when present; no token passes anonymously; a bad token is 401.
    Optional,
    /// A valid token is needed (the default: deny by default).
    #[default]
    Required,
}

/// One route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Route")]
pub struct RawRoute {
    /// Unique name used in logs, metrics and `authgate check`.
    #[schemars(with = "Text")]
    pub name: String,
    /// What requests this route takes; every condition given must hold. An empty (or
    /// missing) match takes every request.
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    /// Name of an entry in `upstreams`. A route used only through `forward_auth` may omit it
    /// (in proxy mode such a route answers 404: there is nowhere to forward to).
    #[serde(default)]
    #[schemars(with = "Option<Text>")]
    pub upstream: Option<String>,
    /// `none`, `optional` or `required` (default).
    #[serde(default)]
    pub auth: AuthMode,
    /// Claims the token must carry: `claim: value` or `claim: [any, of]`; dot paths reach
    /// nested claims (`realm_access.roles`). Every listed claim must match. Default: none
    /// (any valid token).
    #[serde(default)]
    pub allow: BTreeMap<String, ClaimMatch>,
    /// Upstream header name ← claim (dot path); arrays are joined with `,`. Every header
    /// named here is removed from every incoming request first. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, Text>,
    /// Removed from the front of the path before forwarding (segment-aware); must be a
    /// prefix of every path the route takes. Default: none.
    #[serde(default)]
    pub strip_prefix: Option<Text>,
    /// Send the client's `Authorization` header and session cookie upstream (default false).
    #[serde(default)]
    pub forward_token: bool,
    /// Largest request body for this route, in bytes (413 beyond); 0 for no limit. Default:
    /// `server.max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// A signed identity assertion for the upstream (or the edge, in forward-auth mode).
    /// Default: none.
    #[serde(default)]
    pub assertion: Option<RawAssertion>,
}

/// `assertion:` on a route — a short-lived JWT signed with authgate's first asymmetric key,
/// `aud` = the route's name, carrying the route's identity claims; verifiable with
/// `/.well-known/jwks.json`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Assertion")]
pub struct RawAssertion {
    /// The header it travels in (default `X-Authgate-Assertion`).
    #[serde(default = "default_assertion_header")]
    pub header: Text,
    /// Its lifetime (default 60s).
    #[serde(default = "default_assertion_ttl")]
    pub ttl: DurationValue,
}

fn default_assertion_header() -> Text {
    Text("X-Authgate-Assertion".into())
}
fn default_assertion_ttl() -> DurationValue {
    DurationValue(Duration::from_secs(60))
}

/// `forward_auth:` — authgate as the auth service of an edge proxy (nginx `auth_request`,
/// Traefik `forwardAuth`, Caddy `forward_auth`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ForwardAuth")]
pub struct RawForwardAuth {
    /// The verify endpoint on the main listener (default `/_authgate/verify`).
    #[serde(default = "default_forward_auth_path")]
    pub path: Text,
    /// Only these peers (IPs or CIDRs) may name the original request in `X-Forwarded-*` /
    /// `X-Original-*`; anyone else gets 403. Required.
    pub trusted_proxies: Vec<Text>,
    /// Hosts (exact, or `*.example.com`) a login may send the browser back to, besides the
    /// hosts the routes name. Default: none.
    #[serde(default)]
    pub next_hosts: Vec<Text>,
}

/// `telemetry:` — what the gateway tells an OpenTelemetry collector.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Telemetry")]
pub struct RawTelemetry {
    /// One span per request, exported over OTLP/HTTP (optional).
    #[serde(default)]
    pub traces: Option<RawTraces>,
}

/// `telemetry.traces:` — export one span per request and continue the client's W3C trace.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Traces")]
pub struct RawTraces {
    /// The collector's OTLP/HTTP traces URL, used as written (protobuf is POSTed to it), e.g.
    /// `http://otel-collector:4318/v1/traces`.
    pub otlp_endpoint: Text,
    /// `service.name` of the exported spans. Default `authgate`.
    #[serde(default = "default_service_name")]
    pub service_name: Text,
    /// Share of new traces recorded, 0.0 to 1.0 (by trace id, so every replica keeps the same
    /// ones). A client's `traceparent` decides for its own trace: sampled is kept, unsampled is
    /// not. Default 1.0.
    #[serde(default = "default_sample_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_ratio: f64,
    /// Headers sent with every export (e.g. `Authorization: "Bearer ${OTLP_TOKEN}"`); never
    /// logged.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Time one export (its retries included) may take. Default 10s.
    #[serde(default = "default_export_timeout")]
    pub export_timeout: DurationValue,
    /// Finished spans waiting for export, at most; beyond it new spans are dropped and counted
    /// in `authgate_trace_spans_dropped_total` (requests never wait for the collector).
    /// Default 4096.
    #[serde(default = "default_trace_queue")]
    pub max_queue: u32,
}

fn default_service_name() -> Text {
    Text("authgate".into())
}
fn default_sample_ratio() -> f64 {
    1.0
}
fn default_export_timeout() -> DurationValue {
    DurationValue(Duration::from_secs(10))
}
fn default_trace_queue() -> u32 {
    4096
}

fn default_forward_auth_path() -> Text {
    Text("/_authgate/verify".into())
}

/// `match:` — every condition given must hold.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Match")]
pub struct RawMatch {
    /// Exact normalized path (`/a/../b` is refused: write `/b`). Default: any path.
    #[serde(default)]
    pub path: Option<Text>,
    /// Segment-aware prefix: `/admin` takes `/admin` and `/admin/x`, not `/administrator`.
    /// Default: any path.
    #[serde(default)]
    pub path_prefix: Option<Text>,
    /// Methods taken (upper case); GET also takes HEAD. Default: every method.
    #[serde(default)]
    pub methods: Option<Vec<Text>>,
    /// Host, compared case-insensitively without port or trailing dot. Default: any host.
    #[serde(default)]
    pub host: Option<Text>,
}

/// Signing algorithms a key can be pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    /// The JOSE `alg` name (RFC 7518).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }
}

/// A string value after `${VAR}` expansion.
#[derive(Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl Text {
    fn expand<E: de::Error>(raw: &str) -> Result<Text, E> {
        expand(raw).map(Text).map_err(E::custom)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Text::expand(&raw)
    }
}

/// A secret string: expanded like [`Text`], never printed.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Text::deserialize(d).map(|t| Secret(t.0))
    }
}

/// A duration written as `90s`, `15m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Text::deserialize(d)?;
        parse_duration(&text.0)
            .map(DurationValue)
            .map_err(de::Error::custom)
    }
}

/// The values an `allow` entry accepts: one scalar or a list (any of).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimMatch(pub Vec<serde_json::Value>);

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = serde_json::Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(serde_json::Value::String(Text::expand::<E>(v)?.0))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        serde_json::Number::from_f64(v)
            .map(serde_json::Value::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }
}

struct Scalar(serde_json::Value);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor).map(Scalar)
    }
}

impl<'de> Deserialize<'de> for ClaimMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ClaimMatch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number, boolean or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ClaimMatch, E> {
                ScalarVisitor.visit_str(v).map(|s| ClaimMatch(vec![s]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ClaimMatch, E> {
                Ok(ClaimMatch(vec![v.into()]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ClaimMatch, E> {
                Ok(ClaimMatch(vec![v.into()]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ClaimMatch, E> {
                Ok(ClaimMatch(vec![v.into()]))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ClaimMatch, E> {
                ScalarVisitor.visit_f64(v).map(|s| ClaimMatch(vec![s]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ClaimMatch, A::Error> {
                let mut values = Vec::new();
                while let Some(Scalar(v)) = seq.next_element()? {
                    values.push(v);
                }
                if values.is_empty() {
                    return Err(de::Error::custom(
                        "an empty list matches nothing; list at least one value",
                    ));
                }
                Ok(ClaimMatch(values))
            }
        }
        d.deserialize_any(V)
    }
}

/// One problem in a config file, printed as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config file: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

fn join_lines(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// Every diagnostic, for `authgate check` and the reload log.
    pub fn diagnostics(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Invalid(d) => d.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The text of a config file and where it came from, kept to locate later errors.
#[derive(Debug, Clone)]
pub struct Source {
    /// The path as the user gave it (printed in diagnostics).
    pub name: String,
    /// The same path, for watching.
    pub path: PathBuf,
    /// Directory that relative key file paths are resolved against.
    pub dir: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Source::from_text(path, text))
    }

    pub fn from_text(path: &Path, text: String) -> Source {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Source {
            name: path.display().to_string(),
            path: path.to_path_buf(),
            dir,
            text,
        }
    }

    /// A diagnostic at the node `path` points to (or its nearest existing parent).
    pub fn diagnostic(&self, path: &KeyPath, message: impl fmt::Display) -> Diagnostic {
        let (line, column) = locate(&self.text, path).unwrap_or((1, 1));
        let message = if path.0.is_empty() {
            message.to_string()
        } else {
            format!("{path}: {message}")
        };
        Diagnostic {
            file: self.name.clone(),
            line,
            column,
            message,
        }
    }

    /// Parses the text into the raw structs.
    pub fn parse(&self) -> Result<RawConfig, ConfigError> {
        self.parse_as()
            .map_err(|diagnostic| ConfigError::Invalid(vec![diagnostic]))
    }

    /// Parses the text as any serde type (the config, a users file), an error located in it.
    pub fn parse_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, Diagnostic> {
        yaml_serde::from_str(&self.text).map_err(|err| {
            let (line, column) = err
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            Diagnostic {
                file: self.name.clone(),
                line,
                column,
                message: strip_location(&err.to_string()),
            }
        })
    }

    /// Resolves a path from the config relative to the config file's directory.
    pub fn resolve(&self, file: &str) -> PathBuf {
        let p = Path::new(file);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

/// yaml_serde appends " at line L column C"; we print the location in front instead.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(pos) => message[..pos].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Source {
        Source::from_text(Path::new("gw.yaml"), text.to_owned())
    }

    const MINIMAL: &str = "tokens:\n  keys:\n    - { id: k1, algorithm: HS256, secret: x }\nupstreams:\n  a: \"http://127.0.0.1:1\"\nroutes:\n  - name: r\n    upstream: a\n";

    #[test]
    fn parses_a_minimal_config_with_defaults() {
        let raw = src(MINIMAL).parse().unwrap();
        assert_eq!(raw.listen.as_str(), "0.0.0.0:8080");
        assert_eq!(raw.tokens.ttl.0, Duration::from_secs(3600));
        assert_eq!(raw.routes[0].auth, AuthMode::Required);
        assert_eq!(raw.cache.max_entries, 100_000);
        assert_eq!(raw.upstreams["a"].timeout.0, Duration::from_secs(30));
        assert_eq!(raw.upstreams["a"].servers.len(), 1);
    }

    #[test]
    fn unknown_keys_name_file_line_column_and_key() {
        let text = MINIMAL.replace("    upstream: a\n", "    upstream: a\n    upstraem: b\n");
        let err = src(&text).parse().unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("gw.yaml:9:5: "), "{msg}");
        assert!(msg.contains("unknown field `upstraem`"), "{msg}");
    }

    #[test]
    fn bad_durations_and_unset_variables_are_located() {
        let text = MINIMAL.replace("tokens:\n", "tokens:\n  ttl: 60\n");
        let msg = src(&text).parse().unwrap_err().to_string();
        assert!(msg.starts_with("gw.yaml:2:3: "), "{msg}");
        assert!(msg.contains("missing unit"), "{msg}");

        let text = MINIMAL.replace("secret: x", "secret: \"${AUTHGATE_TEST_SURELY_UNSET}\"");
        let msg = src(&text).parse().unwrap_err().to_string();
        assert!(msg.starts_with("gw.yaml:3:"), "{msg}");
        assert!(msg.contains("AUTHGATE_TEST_SURELY_UNSET"), "{msg}");
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let raw = src(MINIMAL).parse().unwrap();
        let dbg = format!("{:?}", raw.tokens.keys[0]);
        assert!(!dbg.contains("\"x\""), "{dbg}");
    }

    #[test]
    fn allow_values_take_scalars_and_lists() {
        let text = MINIMAL.replace(
            "    upstream: a\n",
            "    upstream: a\n    allow: { roles: [admin, ops], level: 3, active: true }\n",
        );
        let raw = src(&text).parse().unwrap();
        let allow = &raw.routes[0].allow;
        assert_eq!(
            allow["roles"].0,
            vec![serde_json::json!("admin"), serde_json::json!("ops")]
        );
        assert_eq!(allow["level"].0, vec![serde_json::json!(3)]);
        assert_eq!(allow["active"].0, vec![serde_json::json!(true)]);
    }
}
