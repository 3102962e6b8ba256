//! The compiled, immutable config that the request path reads. Built whole from a
//! [`RawConfig`] (validation happens here, so a bad rule fails at load time with
//! `file:line:column`), and swapped whole on reload.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::{Method, Uri};

use crate::auth::jwks::{Provider, ProviderSettings};
use crate::auth::keys::load_key;
use crate::auth::verify::VerifyOptions;
use crate::auth::{AllowRule, ClaimPath, KeySet, Verifier};
use crate::config::{
    AuthMode, ConfigError, Diagnostic, KeyPath, RawConfig, RawMatch, RawRoute, RawUpstream, Source,
};
use crate::metrics::{LatencyHistogram, Metrics, RouteMetrics};
use crate::path::normalize;
use crate::proxy::forward::UpstreamClient;
use crate::proxy::headers::{StripSet, is_reserved_header};
use crate::routes::{Matcher, PathMatch, RouteTable, host_name};
use crate::session::{CookieSettings, SameSite};

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub auth: AuthMode,
    pub allow: Vec<AllowRule>,
    /// Upstream header ← index into [`Verifier::header_claims`].
    pub headers: Vec<(HeaderName, usize)>,
    /// Segment-aware prefix removed before forwarding.
    pub strip_prefix: Option<String>,
    pub forward_token: bool,
    /// Largest request body forwarded (`None`: no limit).
    pub max_body: Option<u64>,
    /// Index into [`Runtime::upstreams`].
    pub upstream: usize,
}

/// Where an upstream's requests go.
#[derive(Debug, Clone)]
pub enum Target {
    /// The built-in demo upstream: answers with the request it received, as JSON.
    Echo,
    /// An HTTP server; `base_path` (no trailing `/`) is put in front of every forwarded path.
    Http {
        scheme: Scheme,
        authority: Authority,
        base_path: String,
        /// Keep-alive pool to this upstream, with its timeouts.
        client: Box<UpstreamClient>,
    },
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: Arc<str>,
    pub target: Target,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

/// Limits of the main listener (`server:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSettings {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

/// Per-route and per-upstream metric handles, looked up once per runtime.
#[derive(Debug)]
pub struct BoundMetrics {
    pub routes: Vec<RouteMetrics>,
    pub upstreams: Vec<LatencyHistogram>,
    pub login: RouteMetrics,
    pub logout: RouteMetrics,
    pub jwks: RouteMetrics,
    pub unmatched: RouteMetrics,
}

/// Token settings used when issuing.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub ttl: Duration,
    /// Clock skew allowed on `exp`: a revoked session is kept that much longer.
    pub leeway: Duration,
}

/// Everything the request path needs, compiled once per (re)load.
pub struct Runtime {
    /// Unique per compiled runtime in this process (memos of verified tokens are tied to it).
    pub generation: u64,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub server: ServerSettings,
    /// Files this runtime was built from (config, users file, key files): watched for reloads.
    pub files: Vec<std::path::PathBuf>,
    /// Metric handles, bound when the runtime is installed in a gateway.
    pub bound: std::sync::OnceLock<BoundMetrics>,
    pub routes: RouteTable<Route>,
    pub upstreams: Vec<Upstream>,
    pub verifier: Verifier,
    pub strip: StripSet,
    pub tokens: TokenSettings,
    /// The login route, when configured.
    pub login: Option<crate::login::Login>,
    /// The session cookie.
    pub cookie: CookieSettings,
    /// The JWK Set of every asymmetric key's public half (`None` when all keys are HMAC).
    pub jwks: Option<bytes::Bytes>,
    /// Methods served besides RFC 9110's and PATCH (`server.extra_methods`).
    pub extra_methods: Vec<Method>,
    /// Non-fatal findings (routes that can never match).
    pub warnings: Vec<Diagnostic>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("listen", &self.listen)
            .field("routes", &self.routes.len())
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

type Errors = Vec<(KeyPath, String)>;

impl Runtime {
    /// Reads, parses, validates and compiles the config file at `path`.
    pub fn load(path: &Path) -> Result<Runtime, ConfigError> {
        let source = Source::read(path)?;
        Runtime::from_source(&source)
    }

    pub fn from_source(source: &Source) -> Result<Runtime, ConfigError> {
        let raw = source.parse()?;
        let mut elsewhere = Vec::new();
        let login = match &raw.login {
            None => None,
            Some(l) => match crate::login::compile(l, source) {
                Ok(login) => Some(login),
                Err(mut e) => {
                    elsewhere.append(&mut e);
                    None
                }
            },
        };
        match compile(raw, source) {
            Ok(mut rt) if elsewhere.is_empty() => {
                if let Some(l) = &login {
                    rt.files.extend(l.users_file.iter().cloned());
                    rt.files.extend(l.template_file.iter().cloned());
                }
                rt.login = login;
                Ok(rt)
            }
            Ok(_) => Err(ConfigError::Invalid(elsewhere)),
            Err(errors) => {
                let mut diags: Vec<Diagnostic> = errors
                    .into_iter()
                    .map(|(path, msg)| source.diagnostic(&path, msg))
                    .collect();
                diags.append(&mut elsewhere);
                Err(ConfigError::Invalid(diags))
            }
        }
    }

    /// Looks up this runtime's metric handles (once; before it serves).
    pub fn bind_metrics(&self, metrics: &Metrics) {
        let _ = self.bound.set(BoundMetrics {
            routes: self
                .routes
                .iter()
                .map(|(_, r)| metrics.route(&r.name))
                .collect(),
            upstreams: self
                .upstreams
                .iter()
                .map(|u| metrics.upstream(&u.name))
                .collect(),
            login: metrics.route("(login)"),
            logout: metrics.route("(logout)"),
            jwks: metrics.route("(jwks)"),
            unmatched: metrics.route("(none)"),
        });
        self.verifier
            .cache()
            .bind_counters(metrics.cache_hits.clone(), metrics.cache_misses.clone());
    }

    /// Starts background work tied to this runtime (remote JWKS fetching); it stops by itself
    /// once the runtime is dropped.
    pub fn start_background(&self) {
        for provider in self.verifier.providers() {
            provider.spawn_refresher();
        }
    }

    /// Takes over the connection pools of `previous` for every upstream whose server and
    /// timeouts did not change, so a reload keeps warm connections.
    pub fn adopt_pools(&mut self, previous: &Runtime) {
        for upstream in &mut self.upstreams {
            let Target::Http {
                scheme,
                authority,
                client,
                ..
            } = &mut upstream.target
            else {
                continue;
            };
            let same = previous.upstreams.iter().find_map(|old| match &old.target {
                Target::Http {
                    scheme: s,
                    authority: a,
                    client: c,
                    ..
                } if s == scheme
                    && a == authority
                    && old.connect_timeout == upstream.connect_timeout
                    && old.timeout == upstream.timeout =>
                {
                    Some(c)
                }
                _ => None,
            });
            if let Some(pool) = same {
                *client = pool.clone();
            }
        }
    }

    pub fn upstream(&self, route: &Route) -> &Upstream {
        &self.upstreams[route.upstream]
    }

    /// Key ids whose secret was generated for this process only.
    pub fn ephemeral_keys(&self) -> Vec<&str> {
        self.verifier
            .keys()
            .iter()
            .filter(|k| k.ephemeral)
            .map(|k| k.id.as_str())
            .collect()
    }
}

fn compile(raw: RawConfig, src: &Source) -> Result<Runtime, Errors> {
    let root = KeyPath::root();
    let mut errors: Errors = Vec::new();

    let listen = raw
        .listen
        .as_str()
        .parse::<SocketAddr>()
        .map_err(|_| {
            errors.push((
                root.key("listen"),
                format!(
                    "`{}` is not an IP:port address (e.g. 0.0.0.0:8080)",
                    raw.listen.as_str()
                ),
            ))
        })
        .ok();

    let admin_listen = raw
        .admin
        .listen
        .as_str()
        .parse::<SocketAddr>()
        .map_err(|_| {
            errors.push((
                root.key("admin").key("listen"),
                format!(
                    "`{}` is not an IP:port address (e.g. 127.0.0.1:9090)",
                    raw.admin.listen.as_str()
                ),
            ))
        })
        .ok();
    let server = compile_server(&raw, &mut errors);
    let extra_methods = compile_extra_methods(&raw, &mut errors);
    let cookie = compile_cookie(&raw, &mut errors);
    let keys = compile_keys(&raw, src, &mut errors);
    let providers = compile_providers(&raw, &mut errors);

    let mut upstream_index = HashMap::new();
    let mut upstreams = Vec::new();
    for (name, up) in &raw.upstreams {
        match compile_upstream(name, up) {
            Ok(u) => {
                upstream_index.insert(name.clone(), upstreams.len());
                upstreams.push(u);
            }
            Err(msg) => errors.push((root.key("upstreams").key(name), msg)),
        }
    }

    if raw.routes.is_empty() {
        errors.push((
            root.key("routes"),
            "no routes: every request would be refused (404); add at least one route".into(),
        ));
    }
    let mut header_claims: Vec<ClaimPath> = Vec::new();
    let mut strip_names: Vec<HeaderName> = Vec::new();
    let mut entries = Vec::new();
    let mut names = HashMap::new();
    for (i, route) in raw.routes.iter().enumerate() {
        let at = root.key("routes").index(i);
        if let Some(first) = names.insert(route.name.clone(), i) {
            errors.push((
                at.key("name"),
                format!(
                    "route name `{}` is already used by routes[{first}]",
                    route.name
                ),
            ));
        }
        match compile_route(
            raw.server.max_body_bytes,
            route,
            &at,
            &upstream_index,
            &raw.upstreams,
            &mut header_claims,
        ) {
            Ok((matcher, compiled)) => {
                strip_names.extend(compiled.headers.iter().map(|(n, _)| n.clone()));
                entries.push((matcher, compiled));
            }
            Err(mut e) => errors.append(&mut e),
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(listen), Some(admin_listen), Some(keys)) = (listen, admin_listen, keys) else {
        return Err(errors);
    };
    let mut files = vec![src.path.clone()];
    for key in &raw.tokens.keys {
        for file in [
            &key.secret_file,
            &key.private_key_file,
            &key.public_key_file,
        ]
        .into_iter()
        .flatten()
        {
            files.push(src.resolve(file.as_str()));
        }
    }

    let routes = RouteTable::new(entries);
    let warnings = routes
        .shadowed()
        .into_iter()
        .map(|(j, i)| {
            let names: Vec<&str> = routes.iter().map(|(_, r)| &*r.name).collect();
            src.diagnostic(
                &root.key("routes").index(j),
                format!(
                    "warning: route `{}` can never match: route `{}` (routes[{i}]) comes first and takes every request it would take",
                    names[j], names[i]
                ),
            )
        })
        .collect();

    let options = VerifyOptions {
        issuer: raw.tokens.issuer.as_ref().map(|t| t.0.clone()),
        audience: raw.tokens.audience.as_ref().map(|t| t.0.clone()),
        leeway_secs: raw.tokens.leeway.0.as_secs(),
        cache_entries: raw.cache.max_entries,
    };
    let jwks = jwks_document(&keys);
    static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Ok(Runtime {
        generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        listen,
        admin_listen,
        server,
        files,
        bound: std::sync::OnceLock::new(),
        routes,
        upstreams,
        verifier: Verifier::new(keys, &options, header_claims, providers),
        strip: StripSet::new(strip_names),
        tokens: TokenSettings {
            issuer: options.issuer.clone(),
            audience: options.audience.clone(),
            ttl: raw.tokens.ttl.0,
            leeway: raw.tokens.leeway.0,
        },
        login: None,
        cookie,
        jwks,
        extra_methods,
        warnings,
    })
}

/// `server.extra_methods`: upper-case method names (methods are case-sensitive, RFC 9110 §9.1).
fn compile_extra_methods(raw: &RawConfig, errors: &mut Errors) -> Vec<Method> {
    let at = KeyPath::root().key("server").key("extra_methods");
    let mut methods = Vec::new();
    for (i, text) in raw.server.extra_methods.iter().enumerate() {
        let name = text.as_str();
        match Method::from_bytes(name.as_bytes()) {
            Ok(m)
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_') =>
            {
                methods.push(m)
            }
            _ => errors.push((
                at.index(i),
                format!("`{name}` is not an upper-case method name (e.g. PROPFIND)"),
            )),
        }
    }
    methods
}

impl Runtime {
    /// Whether the method is served: RFC 9110's methods, PATCH (RFC 5789) and
    /// `server.extra_methods`. Backends treat unknown methods in their own ways (some as GET),
    /// so anything else is refused before routing.
    pub fn serves_method(&self, method: &Method) -> bool {
        matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::POST
                | Method::PUT
                | Method::DELETE
                | Method::OPTIONS
                | Method::TRACE
                | Method::PATCH
        ) || self.extra_methods.contains(method)
    }
}

/// The published JWK Set (RFC 7517): public keys only, each with its `kid`, `alg` and `use`.
fn jwks_document(keys: &KeySet) -> Option<bytes::Bytes> {
    let published: Vec<serde_json::Value> = keys
        .iter()
        .filter_map(|k| {
            let mut jwk = serde_json::to_value(k.public_jwk.as_ref()?).ok()?;
            let obj = jwk.as_object_mut()?;
            obj.insert("kid".into(), k.id.clone().into());
            obj.insert("alg".into(), k.algorithm.name().into());
            obj.insert("use".into(), "sig".into());
            Some(jwk)
        })
        .collect();
    if published.is_empty() {
        return None;
    }
    serde_json::to_vec(&serde_json::json!({ "keys": published }))
        .ok()
        .map(bytes::Bytes::from)
}

/// Whether a URL's host is a loopback address, where plain http cannot be intercepted.
fn is_loopback(uri: &Uri) -> bool {
    match uri.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn compile_providers(raw: &RawConfig, errors: &mut Errors) -> Vec<Arc<Provider>> {
    let at = KeyPath::root().key("tokens").key("jwks");
    let mut providers = Vec::new();
    let mut issuers = BTreeSet::new();
    for (i, p) in raw.tokens.jwks.iter().enumerate() {
        let here = at.index(i);
        let url = p.url.as_str();
        match url.parse::<Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
            Ok(uri) if uri.scheme_str() == Some("http") && is_loopback(&uri) => {}
            Ok(uri) if uri.scheme_str() == Some("http") => {
                errors.push((here.key("url"), "JWKS must be fetched over https (plain http only from loopback addresses): keys fetched in clear text can be replaced by anyone on the path".into()));
                continue;
            }
            _ => {
                errors.push((here.key("url"), format!("`{url}` is not an https URL")));
                continue;
            }
        }
        let issuer = p.issuer.as_str();
        if issuer.is_empty() {
            errors.push((here.key("issuer"), "issuer must not be empty".into()));
            continue;
        }
        if raw
            .tokens
            .issuer
            .as_ref()
            .is_some_and(|own| own.as_str() == issuer)
        {
            errors.push((
                here.key("issuer"),
                "this is authgate's own `tokens.issuer`; each issuer must have one key source"
                    .into(),
            ));
            continue;
        }
        if !issuers.insert(issuer.to_owned()) {
            errors.push((
                here.key("issuer"),
                format!("issuer `{issuer}` is listed twice"),
            ));
            continue;
        }
        let settings = ProviderSettings {
            url: url.to_owned(),
            issuer: issuer.to_owned(),
            audience: p.audience.as_ref().map(|a| a.as_str().to_owned()),
            refresh_interval: p.refresh_interval.0.max(std::time::Duration::from_secs(1)),
            unknown_kid_cooldown: p.unknown_kid_cooldown.0,
            timeout: p.timeout.0,
            leeway_secs: raw.tokens.leeway.0.as_secs(),
        };
        match Provider::new(settings) {
            Ok(provider) => providers.push(Arc::new(provider)),
            Err(e) => errors.push((here, e)),
        }
    }
    providers
}

fn compile_cookie(raw: &RawConfig, errors: &mut Errors) -> CookieSettings {
    let at = KeyPath::root().key("cookie");
    let c = &raw.cookie;
    let name = c.name.as_str().to_owned();
    if !crate::session::valid_cookie_name(&name) {
        errors.push((at.key("name"), format!("`{name}` is not a cookie name")));
    }
    if c.same_site == SameSite::None && !c.secure {
        errors.push((
            at.key("same_site"),
            "SameSite=None needs `secure: true` (browsers drop the cookie otherwise)".into(),
        ));
    }
    let domain = c
        .domain
        .as_ref()
        .map(|d| d.as_str().trim_start_matches('.').to_ascii_lowercase());
    if let Some(d) = &domain
        && (d.is_empty()
            || !d
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
    {
        errors.push((at.key("domain"), format!("`{d}` is not a domain name")));
    }
    let refresh_before = c.refresh_before.map(|d| d.0);
    if let Some(r) = refresh_before
        && r >= raw.tokens.ttl.0
    {
        errors.push((
            at.key("refresh_before"),
            "must be shorter than `tokens.ttl`, or every request would re-issue the cookie".into(),
        ));
    }
    CookieSettings {
        name,
        secure: c.secure,
        same_site: c.same_site,
        domain,
        refresh_before,
    }
}

fn compile_server(raw: &RawConfig, errors: &mut Errors) -> ServerSettings {
    let at = KeyPath::root().key("server");
    let s = &raw.server;
    if s.max_header_bytes < 8192 {
        errors.push((at.key("max_header_bytes"), "must be at least 8192".into()));
    }
    if s.max_connections == 0 {
        errors.push((at.key("max_connections"), "must be at least 1".into()));
    }
    if s.header_read_timeout.0.is_zero() {
        errors.push((
            at.key("header_read_timeout"),
            "must be longer than 0s".into(),
        ));
    }
    ServerSettings {
        header_read_timeout: s.header_read_timeout.0,
        max_header_bytes: s.max_header_bytes as usize,
        max_connections: s.max_connections as usize,
        shutdown_grace: s.shutdown_grace.0,
    }
}

fn compile_keys(raw: &RawConfig, src: &Source, errors: &mut Errors) -> Option<KeySet> {
    let at = KeyPath::root().key("tokens").key("keys");
    if raw.tokens.keys.is_empty() {
        errors.push((at, "at least one key is needed to verify tokens".into()));
        return None;
    }
    let mut keys = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, rk) in raw.tokens.keys.iter().enumerate() {
        let key_at = at.index(i);
        if !seen.insert(rk.id.as_str().to_owned()) {
            errors.push((
                key_at.key("id"),
                format!("key id `{}` is used twice", rk.id.as_str()),
            ));
        }
        match load_key(rk, src, &key_at) {
            Ok(k) => keys.push(k),
            Err(mut e) => errors.append(&mut e),
        }
    }
    (keys.len() == raw.tokens.keys.len()).then(|| KeySet::new(keys))
}

fn compile_upstream(name: &str, raw: &RawUpstream) -> Result<Upstream, String> {
    let url = raw.url.as_str();
    let target = if url == "builtin:echo" {
        Target::Echo
    } else {
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("`{url}` is not a URL (e.g. http://127.0.0.1:9000)"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "https upstreams are not supported yet: use http:// on a trusted network"
                        .into(),
                );
            }
            _ => {
                return Err(format!(
                    "`{url}` must start with http:// (or be `builtin:echo`)"
                ));
            }
        }
        if uri.query().is_some() {
            return Err("an upstream URL cannot have a query string".into());
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{url}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err("credentials in upstream URLs are not supported".into());
        }
        Target::Http {
            scheme: Scheme::HTTP,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            client: Box::new(UpstreamClient::new(raw.connect_timeout.0, raw.timeout.0)),
        }
    };
    Ok(Upstream {
        name: name.into(),
        target,
        connect_timeout: raw.connect_timeout.0,
        timeout: raw.timeout.0,
    })
}

/// A config path written in normal form, or the error saying what to write instead.
fn normal_path(value: &str) -> Result<String, String> {
    match normalize(value) {
        Ok(n) if n == value => Ok(n.into_owned()),
        Ok(n) => Err(format!("`{value}` is not a normalized path: write `{n}`")),
        Err(e) => Err(format!("`{value}`: {e}")),
    }
}

fn compile_match(m: &RawMatch, at: &KeyPath, errors: &mut Errors) -> Option<Matcher> {
    let at = at.key("match");
    let path = match (&m.path, &m.path_prefix) {
        (Some(_), Some(_)) => {
            errors.push((
                at.key("path_prefix"),
                "give `path` or `path_prefix`, not both".into(),
            ));
            return None;
        }
        (Some(p), None) => match normal_path(p.as_str()) {
            Ok(p) => PathMatch::Exact(p),
            Err(e) => {
                errors.push((at.key("path"), e));
                return None;
            }
        },
        (None, Some(p)) => match normal_path(p.as_str()) {
            Ok(p) if p == "/" => PathMatch::Any,
            Ok(p) => PathMatch::Prefix(p.trim_end_matches('/').to_owned()),
            Err(e) => {
                errors.push((at.key("path_prefix"), e));
                return None;
            }
        },
        (None, None) => PathMatch::Any,
    };
    let methods = match &m.methods {
        None => None,
        Some(list) if list.is_empty() => {
            errors.push((
                at.key("methods"),
                "an empty list matches nothing; remove `methods` to take every method".into(),
            ));
            return None;
        }
        Some(list) => {
            let mut methods = Vec::new();
            for (j, text) in list.iter().enumerate() {
                let name = text.as_str();
                // Methods are case-sensitive (RFC 9110 §9.1): `get` is not GET.
                if name.is_empty() || name.bytes().any(|b| !b.is_ascii_uppercase()) {
                    errors.push((
                        at.key("methods").index(j),
                        format!("`{name}` is not an upper-case method name (e.g. GET)"),
                    ));
                    return None;
                }
                match Method::from_bytes(name.as_bytes()) {
                    Ok(method) => methods.push(method),
                    Err(_) => {
                        errors.push((
                            at.key("methods").index(j),
                            format!("`{name}` is not a method"),
                        ));
                        return None;
                    }
                }
            }
            Some(methods)
        }
    };
    let host = match &m.host {
        None => None,
        Some(h) => {
            let name = host_name(h.as_str()).to_ascii_lowercase();
            if name.is_empty() || name.contains(['/', ' ', '@']) {
                errors.push((
                    at.key("host"),
                    format!("`{}` is not a host name", h.as_str()),
                ));
                return None;
            }
            Some(name)
        }
    };
    Some(Matcher {
        path,
        methods,
        host,
    })
}

fn compile_route(
    default_max_body: u64,
    route: &RawRoute,
    at: &KeyPath,
    upstream_index: &HashMap<String, usize>,
    raw_upstreams: &std::collections::BTreeMap<String, RawUpstream>,
    header_claims: &mut Vec<ClaimPath>,
) -> Result<(Matcher, Route), Errors> {
    let mut errors = Errors::new();
    if route.name.trim().is_empty() {
        errors.push((at.key("name"), "route name must not be empty".into()));
    }
    let upstream = upstream_index.get(&route.upstream).copied();
    if upstream.is_none() && !raw_upstreams.contains_key(&route.upstream) {
        let known: Vec<&str> = raw_upstreams.keys().map(String::as_str).collect();
        errors.push((
            at.key("upstream"),
            format!(
                "unknown upstream `{}` (defined: {})",
                route.upstream,
                known.join(", ")
            ),
        ));
    }
    let matcher = compile_match(&route.matcher, at, &mut errors);

    if route.auth == AuthMode::None {
        if !route.allow.is_empty() {
            errors.push((
                at.key("allow"),
                "`allow` needs claims, but this route has `auth: none`".into(),
            ));
        }
        if !route.headers.is_empty() {
            errors.push((
                at.key("headers"),
                "claim headers need a token, but this route has `auth: none`".into(),
            ));
        }
    }

    let mut allow = Vec::new();
    for (claim, wanted) in &route.allow {
        if claim.is_empty() || claim.split('.').any(str::is_empty) {
            errors.push((
                at.key("allow").key(claim),
                format!("`{claim}` is not a claim name or dot path"),
            ));
            continue;
        }
        allow.push(AllowRule {
            claim: ClaimPath::new(claim),
            wanted: wanted.0.clone(),
        });
    }

    let mut headers = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, claim) in &route.headers {
        let here = at.key("headers").key(name);
        let header = match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                errors.push((here, format!("`{name}` is not a valid header name")));
                continue;
            }
        };
        if is_reserved_header(&header) {
            errors.push((
                here,
                format!("`{name}` is managed by the gateway and cannot carry a claim"),
            ));
            continue;
        }
        if !seen.insert(crate::proxy::headers::canonical_name(header.as_str())) {
            errors.push((
                here,
                format!("`{name}` is listed twice (header names ignore case, `_` and `.`)"),
            ));
            continue;
        }
        let claim = claim.as_str();
        if claim.is_empty() || claim.split('.').any(str::is_empty) {
            errors.push((here, format!("`{claim}` is not a claim name or dot path")));
            continue;
        }
        let path = ClaimPath::new(claim);
        let index = header_claims
            .iter()
            .position(|p| *p == path)
            .unwrap_or_else(|| {
                header_claims.push(path);
                header_claims.len() - 1
            });
        headers.push((header, index));
    }

    let strip_prefix = match (&route.strip_prefix, &matcher) {
        (None, _) => None,
        (Some(p), Some(m)) => match normal_path(p.as_str()) {
            Ok(prefix) => {
                let prefix = prefix.trim_end_matches('/').to_owned();
                let inside = match &m.path {
                    PathMatch::Any => prefix.is_empty(),
                    PathMatch::Exact(q) | PathMatch::Prefix(q) => segment_prefix_of(&prefix, q),
                };
                if !inside {
                    errors.push((
                        at.key("strip_prefix"),
                        format!(
                            "`{}` is not a prefix of every path this route takes",
                            p.as_str()
                        ),
                    ));
                }
                Some(prefix)
            }
            Err(e) => {
                errors.push((at.key("strip_prefix"), e));
                None
            }
        },
        (Some(_), None) => None,
    };

    match (matcher, upstream, errors.is_empty()) {
        (Some(matcher), Some(upstream), true) => Ok((
            matcher,
            Route {
                name: route.name.as_str().into(),
                auth: route.auth,
                allow,
                headers,
                strip_prefix: strip_prefix.filter(|p| !p.is_empty()),
                forward_token: route.forward_token,
                max_body: match route.max_body_bytes.unwrap_or(default_max_body) {
                    0 => None,
                    n => Some(n),
                },
                upstream,
            },
        )),
        _ => Err(errors),
    }
}

/// Whether `prefix` is a whole-segment prefix of `path` (`/a` of `/a/b`, not of `/ab`).
pub fn segment_prefix_of(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn compile_text(text: &str) -> Result<Runtime, ConfigError> {
        let text = text.replace("SECRET", SECRET);
        Runtime::from_source(&Source::from_text(Path::new("gw.yaml"), text))
    }

    const BASE: &str = "tokens:\n  keys:\n    - { id: k1, algorithm: HS256, secret: SECRET }\nupstreams:\n  app: \"http://127.0.0.1:9000/base/\"\n  demo: builtin:echo\nroutes:\n";

    #[test]
    fn compiles_routes_upstreams_and_strip_set() {
        let rt = compile_text(&format!(
            "{BASE}  - name: admin\n    match: {{ path_prefix: /admin }}\n    upstream: app\n    headers: {{ X-User-Id: sub, X-Roles: roles }}\n  - name: public\n    upstream: demo\n    auth: none\n"
        ))
        .unwrap();
        assert_eq!(rt.routes.len(), 2);
        assert!(rt.strip.contains_str("x-user-id"));
        assert!(rt.strip.contains_str("x_user.id"));
        assert!(!rt.strip.contains_str("x-other"));
        assert_eq!(rt.verifier.header_claims().len(), 2);
        match &rt.upstreams[rt.routes.iter().next().unwrap().1.upstream].target {
            Target::Http { base_path, .. } => assert_eq!(base_path, "/base"),
            Target::Echo => panic!("wrong upstream"),
        }
    }

    #[test]
    fn reports_every_error_with_its_location() {
        let err = compile_text(&format!(
            "{BASE}  - name: a\n    upstream: nope\n  - name: b\n    match: {{ path_prefix: /x/../y }}\n    upstream: app\n    headers: {{ \"Bad Header\": sub }}\n"
        ))
        .unwrap_err();
        let diags = err.diagnostics();
        assert_eq!(diags.len(), 3, "{diags:#?}");
        assert!(
            diags[0].starts_with("gw.yaml:9:15: routes[0].upstream: unknown upstream `nope`"),
            "{}",
            diags[0]
        );
        assert!(
            diags[1].contains(
                "routes[1].match.path_prefix: `/x/../y` is not a normalized path: write `/y`"
            ),
            "{}",
            diags[1]
        );
        assert!(diags[1].starts_with("gw.yaml:11:"), "{}", diags[1]);
        assert!(
            diags[2].contains("`Bad Header` is not a valid header name"),
            "{}",
            diags[2]
        );
    }

    #[test]
    fn refuses_short_secrets_and_bad_listen() {
        let text =
            BASE.replace("secret: SECRET", "secret: short") + "  - name: a\n    upstream: app\n";
        let err = compile_text(&text).unwrap_err().to_string();
        assert!(
            err.contains("tokens.keys[0].secret: HS256 secret is 5 bytes; at least 32"),
            "{err}"
        );
        let text = format!("listen: nowhere\n{BASE}  - name: a\n    upstream: app\n");
        let err = compile_text(&text).unwrap_err().to_string();
        assert!(err.starts_with("gw.yaml:1:9: listen:"), "{err}");
    }

    #[test]
    fn refuses_claims_on_public_routes_and_reserved_headers() {
        let err = compile_text(&format!(
            "{BASE}  - name: a\n    upstream: app\n    auth: none\n    allow: {{ roles: admin }}\n  - name: b\n    upstream: app\n    headers: {{ Host: sub, X-A: sub, x_a: iss }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("`allow` needs claims"), "{err}");
        assert!(err.contains("`Host` is managed by the gateway"), "{err}");
        assert!(
            err.contains("`x_a` is listed twice") || err.contains("`X-A` is listed twice"),
            "{err}"
        );
    }

    #[test]
    fn warns_about_shadowed_routes() {
        let rt = compile_text(&format!(
            "{BASE}  - name: all\n    match: {{ path_prefix: /api }}\n    upstream: app\n  - name: users\n    match: {{ path_prefix: /api/users }}\n    upstream: app\n"
        ))
        .unwrap();
        assert_eq!(rt.warnings.len(), 1);
        let w = rt.warnings[0].to_string();
        assert!(
            w.starts_with("gw.yaml:11:5: routes[1]: warning: route `users` can never match"),
            "{w}"
        );
    }

    #[test]
    fn cookie_settings_are_validated() {
        let route = "  - name: a\n    upstream: app\n";
        for (cookie, why) in [
            (
                "cookie: { same_site: None, secure: false }\n",
                "SameSite=None needs `secure: true`",
            ),
            ("cookie: { name: \"bad name\" }\n", "is not a cookie name"),
            (
                "cookie: { domain: \"exa mple.com\" }\n",
                "is not a domain name",
            ),
            (
                "cookie: { refresh_before: 2h }\n",
                "must be shorter than `tokens.ttl`",
            ),
        ] {
            let err = compile_text(&format!("{cookie}{BASE}{route}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{cookie}: {err}");
        }
        let rt = compile_text(&format!(
            "cookie: {{ name: s, secure: false, refresh_before: 10m }}\n{BASE}{route}"
        ))
        .unwrap();
        assert_eq!(rt.cookie.name, "s");
        assert_eq!(rt.cookie.refresh_before, Some(Duration::from_secs(600)));
    }

    #[test]
    fn strip_prefix_must_cover_the_match() {
        let err = compile_text(&format!(
            "{BASE}  - name: a\n    match: {{ path_prefix: /api }}\n    strip_prefix: /apix\n    upstream: app\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a prefix of every path"), "{err}");
        assert!(segment_prefix_of("/api", "/api/v1"));
        assert!(segment_prefix_of("/api", "/api"));
        assert!(!segment_prefix_of("/api", "/apix"));
    }
}
