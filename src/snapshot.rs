//! The compiled, immutable config the request path reads: `gateway.yaml -> config::RawConfig
//! -> (Boot, Snapshot)`. Each section compiles beside its own type into one diagnostics
//! collector (`file:line:column: key.path: message`); this module only assembles them. A
//! snapshot is swapped whole on reload and a request keeps the one it started with.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use http::Method;

use crate::auth::assertion::Asserter;
use crate::auth::issue::{Issuer, RefreshSettings};
use crate::auth::verify::VerifyOptions;
use crate::auth::{Verifier, jwks, keys};
use crate::boot::{Boot, ServerSettings, compile_extra_methods};
use crate::config::{ConfigError, Diagnostic, Diagnostics, KeyPath, RawConfig, Source};
use crate::endpoints::{Endpoint, Endpoints, JWKS_PATH};
use crate::forward_auth::ForwardAuth;
use crate::login::{self, Login};
use crate::metrics::{Bound, Metrics};
use crate::proxy::headers::StripSet;
use crate::proxy::upstream::{self, Target, Upstream};
use crate::routes::{self, Route, RouteContext, RouteTable};
use crate::session::CookieSettings;
use crate::session::NextPolicy;

/// Everything the request path needs, compiled once per (re)load.
pub struct Snapshot {
    /// Unique per compiled snapshot in this process (memos of verified tokens are tied to it).
    pub generation: u64,
    pub server: ServerSettings,
    /// Files this snapshot was built from (config, users file, template, key files): watched
    /// for reloads.
    pub files: Vec<PathBuf>,
    /// Metric handles, bound when the snapshot is installed in a gateway.
    pub bound: OnceLock<Bound>,
    pub routes: RouteTable<Route>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub verifier: Verifier,
    pub issuer: Issuer,
    /// Signs identity assertions (when some key is asymmetric and can sign).
    pub asserter: Option<Asserter>,
    /// Every header name some route injects (stripped from every request).
    pub strip: StripSet,
    pub login: Option<Login>,
    /// The verify endpoint for an edge proxy, when configured.
    pub forward_auth: Option<ForwardAuth>,
    /// Where a browser may be sent after logging in.
    pub next: NextPolicy,
    pub cookie: CookieSettings,
    /// The gateway's own endpoints, by path.
    pub endpoints: Endpoints,
    /// The JWK Set of every asymmetric key's public half (`None` when all keys are HMAC).
    pub jwks: Option<bytes::Bytes>,
    /// Methods served besides RFC 9110's and PATCH (`server.extra_methods`).
    pub extra_methods: Vec<Method>,
    /// Non-fatal findings (routes that can never match).
    pub warnings: Vec<Diagnostic>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("routes", &self.routes.len())
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

/// A loaded config: the boot-only settings and the first snapshot.
#[derive(Debug)]
pub struct Loaded {
    pub boot: Boot,
    pub snapshot: Snapshot,
}

impl Loaded {
    /// Reads, parses, validates and compiles the config file at `path`.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        Loaded::from_source(&Source::read(path)?)
    }

    pub fn from_source(source: &Source) -> Result<Loaded, ConfigError> {
        let raw = source.parse()?;
        let mut diags = Diagnostics::new(source);
        let boot = Boot::compile(&raw, &mut diags);
        let snapshot = compile(&raw, &mut diags);
        let loaded = match (boot, snapshot) {
            (Some(boot), Some(snapshot)) => Some(Loaded { boot, snapshot }),
            _ => None,
        };
        diags.finish(loaded)
    }
}

/// The sections that verify and sign tokens.
struct Tokens {
    verifier: Verifier,
    issuer: Issuer,
    asserter: Option<Asserter>,
    jwks: Option<bytes::Bytes>,
}

fn compile_tokens(
    raw: &RawConfig,
    header_claims: Vec<crate::auth::ClaimPath>,
    diags: &mut Diagnostics,
) -> Option<Tokens> {
    let refresh = RefreshSettings::compile(&raw.tokens, diags);
    if refresh.is_some() && raw.login.is_none() {
        diags.at(
            &KeyPath::root().key("tokens").key("refresh"),
            "refresh tokens are returned by the login route: add a `login:` section",
        );
    }
    let keys = Arc::new(keys::compile(&raw.tokens, diags)?);
    let providers = jwks::compile(&raw.tokens, diags);
    let options = VerifyOptions {
        issuer: raw.tokens.issuer.as_ref().map(|t| t.0.clone()),
        audience: raw.tokens.audience.as_ref().map(|t| t.0.clone()),
        leeway_secs: raw.tokens.leeway.0.as_secs(),
        cache_entries: raw.cache.max_entries,
    };
    let issuer_name = raw.tokens.issuer.as_ref().map(|t| t.as_str());
    Some(Tokens {
        jwks: keys::jwks_document(&keys),
        asserter: Asserter::new(&keys, issuer_name),
        issuer: Issuer::new(keys.clone(), &raw.tokens, refresh),
        verifier: Verifier::new(keys, &options, header_claims, providers),
    })
}

fn compile_endpoints(
    login: Option<&Login>,
    refresh: bool,
    jwks: bool,
    diags: &mut Diagnostics,
) -> Endpoints {
    let at = KeyPath::root().key("login");
    let mut entries = Vec::new();
    if let Some(l) = login {
        entries.push((l.path.as_str(), Endpoint::Login, at.key("path")));
        let logout = at.key("logout_path");
        entries.push((l.logout_path.as_str(), Endpoint::Logout, logout));
        if refresh {
            let path = at.key("refresh_path");
            entries.push((l.refresh_path.as_str(), Endpoint::Refresh, path));
        }
        for (i, p) in l.providers.iter().enumerate() {
            let name = at.key("oidc").index(i).key("name");
            entries.push((p.start_path.as_str(), Endpoint::OidcStart(i), name.clone()));
            entries.push((p.callback_path.as_str(), Endpoint::OidcCallback(i), name));
        }
    }
    if jwks {
        entries.push((JWKS_PATH, Endpoint::Jwks, KeyPath::root()));
    }
    Endpoints::compile(&entries, diags)
}

/// Assembles the snapshot from each section's compile; `None` when any section failed.
fn compile(raw: &RawConfig, diags: &mut Diagnostics) -> Option<Snapshot> {
    let server = ServerSettings::compile(raw, diags);
    let extra_methods = compile_extra_methods(raw, diags);
    let cookie = CookieSettings::compile(&raw.cookie, raw.tokens.ttl.0, diags);
    let (upstreams, upstream_index) = upstream::compile(&raw.upstreams, diags);
    let context = RouteContext {
        default_max_body: raw.server.max_body_bytes,
        upstreams: &upstream_index,
        defined: raw.upstreams.keys().map(String::as_str).collect(),
        header_claims: Vec::new(),
        forward_auth: raw.forward_auth.is_some(),
        can_assert: raw
            .tokens
            .keys
            .iter()
            .any(|k| !k.algorithm.is_hmac() && k.private_key_file.is_some()),
    };
    let compiled = routes::compile::compile(&raw.routes, context, diags);
    let tokens = compile_tokens(raw, compiled.header_claims, diags);
    let leeway = raw.tokens.leeway.0.as_secs();
    let login = raw
        .login
        .as_ref()
        .and_then(|l| login::compile(l, leeway, diags));
    let forward_auth = raw
        .forward_auth
        .as_ref()
        .and_then(|f| ForwardAuth::compile(f, diags));
    let has_jwks = tokens.as_ref().is_some_and(|t| t.jwks.is_some());
    let refresh = raw.tokens.refresh.is_some();
    let endpoints = compile_endpoints(login.as_ref(), refresh, has_jwks, diags);
    let endpoints = endpoints.with(forward_auth.as_ref().map(|f| f.path.as_str()), diags);
    let mut warnings = shadow_warnings(&compiled.table, diags.source());
    warnings.extend(diags.take_warnings());
    let files = watched_files(raw, diags.source(), login.as_ref());
    if raw.login.is_some() && login.is_none()
        || raw.forward_auth.is_some() && forward_auth.is_none()
    {
        return None;
    }
    let route_hosts = compiled.table.iter().filter_map(|(m, _)| m.host.as_deref());
    let next_hosts = forward_auth
        .iter()
        .flat_map(|f| f.next_hosts.iter().map(String::as_str));
    let next = NextPolicy::new(route_hosts.chain(next_hosts));
    let tokens = tokens?;
    static GENERATION: AtomicU64 = AtomicU64::new(1);
    Some(Snapshot {
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        server,
        files,
        bound: OnceLock::new(),
        routes: compiled.table,
        upstreams,
        verifier: tokens.verifier,
        issuer: tokens.issuer,
        asserter: tokens.asserter,
        strip: compiled.strip,
        login,
        forward_auth,
        next,
        cookie,
        endpoints,
        jwks: tokens.jwks,
        extra_methods,
        warnings,
    })
}

/// Routes an earlier route shadows, as warnings located at the shadowed route.
fn shadow_warnings(table: &RouteTable<Route>, src: &Source) -> Vec<Diagnostic> {
    let names: Vec<&str> = table.iter().map(|(_, r)| &*r.name).collect();
    table
        .shadowed()
        .into_iter()
        .map(|(j, i)| {
            src.diagnostic(
                &KeyPath::root().key("routes").index(j),
                format!(
                    "warning: route `{}` can never match: route `{}` (routes[{i}]) comes first and takes every request it would take",
                    names[j], names[i]
                ),
            )
        })
        .collect()
}

fn watched_files(raw: &RawConfig, src: &Source, login: Option<&Login>) -> Vec<PathBuf> {
    let mut files = vec![src.path.clone()];
    files.extend(keys::files(&raw.tokens, src));
    for up in raw.upstreams.values() {
        files.extend(upstream::files(up, src));
    }
    if let Some(tls) = &raw.server.tls {
        let named = [
            Some(&tls.cert_file),
            Some(&tls.key_file),
            tls.client_ca_file.as_ref(),
        ];
        files.extend(named.into_iter().flatten().map(|f| src.resolve(f.as_str())));
    }
    if let Some(l) = login {
        files.extend(l.users_file.iter().cloned());
        files.extend(l.template_file.iter().cloned());
    }
    files
}

impl Snapshot {
    /// Looks up this snapshot's metric handles (once; before it serves).
    pub fn bind_metrics(&self, metrics: &Metrics) {
        // A route that forwards to real servers may answer a WebSocket upgrade with 101; the
        // built-in echo and forward-auth-only routes never do.
        let routes: Vec<(&str, bool)> = self
            .routes
            .iter()
            .map(|(_, r)| {
                let upgrades = self
                    .upstream(r)
                    .is_some_and(|u| matches!(u.target, Target::Servers(_)));
                (&*r.name, upgrades)
            })
            .collect();
        let upstreams: Vec<&str> = self.upstreams.iter().map(|u| &*u.name).collect();
        let _ = self.bound.set(Bound::new(metrics, &routes, &upstreams));
        for upstream in &self.upstreams {
            for server in upstream.servers() {
                let m = metrics.server(&upstream.name, &server.label);
                m.healthy.set(i64::from(server.healthy()));
                let _ = server.metrics.set(m);
            }
        }
        self.verifier
            .cache()
            .bind_counters(metrics.cache_hits.clone(), metrics.cache_misses.clone());
    }

    /// Starts background work tied to this snapshot (remote JWKS fetching, upstream health
    /// checks); it stops by itself once the snapshot is dropped.
    pub fn start_background(&self) {
        for provider in self.verifier.providers() {
            provider.spawn_refresher();
        }
        for upstream in &self.upstreams {
            crate::proxy::health::spawn(upstream);
        }
    }

    /// Keeps `previous`'s upstream wherever this one was built from exactly the same settings,
    /// so a reload keeps warm connections, ejections and health state.
    pub fn adopt_pools(&mut self, previous: &Snapshot) {
        for upstream in &mut self.upstreams {
            if let Some(same) = previous.upstreams.iter().find(|old| old.same_as(upstream)) {
                *upstream = same.clone();
            }
        }
    }

    /// The route's upstream (`None` for a route used only through forward-auth).
    pub fn upstream(&self, route: &Route) -> Option<&Arc<Upstream>> {
        route.upstream.map(|i| &self.upstreams[i])
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn compile_text(text: &str) -> Result<Snapshot, ConfigError> {
        let text = text.replace("SECRET", SECRET);
        Loaded::from_source(&Source::from_text(Path::new("gw.yaml"), text)).map(|l| l.snapshot)
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
        let upstream = &rt.upstreams[rt.routes.iter().next().unwrap().1.upstream.unwrap()];
        assert_eq!(upstream.base_path(), "/base");
        assert_eq!(&*upstream.servers()[0].label, "http://127.0.0.1:9000/base");
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
        assert_eq!(
            rt.cookie.refresh_before,
            Some(std::time::Duration::from_secs(600))
        );
    }

    #[test]
    fn strip_prefix_must_cover_the_match() {
        let err = compile_text(&format!(
            "{BASE}  - name: a\n    match: {{ path_prefix: /api }}\n    strip_prefix: /apix\n    upstream: app\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a prefix of every path"), "{err}");
        assert!(crate::routes::segment_prefix_of("/api", "/api/v1"));
        assert!(crate::routes::segment_prefix_of("/api", "/api"));
        assert!(!crate::routes::segment_prefix_of("/api", "/apix"));
    }
}
