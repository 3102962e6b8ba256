//! The decision, apart from how it is delivered: [`authorize`] takes a [`RequestView`] and
//! answers with a [`Grant`] (which route, which token, which identity headers, which cookie to
//! set) or a [`Denial`] (which error, which cookie to clear). It runs the route table, the
//! token (header or session cookie, the per-connection memo, the claims cache), revocation,
//! the route's `allow` rules, the login redirect for browser navigations and the sliding
//! session. The proxy front forwards on a grant; the forward-auth front will answer the edge
//! with the same grant. Nothing here touches sockets, so every rule is unit-testable.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};

use crate::auth::claims::render;
use crate::auth::issue::RESERVED_CLAIMS;
use crate::auth::{AllowRule, ClaimSource};
use crate::auth::{TokenError, VerifiedToken};
use crate::clock::unix_now;
use crate::config::AuthMode;
use crate::credentials::{self, TokenSource};
use crate::error::GatewayError;
use crate::request::{Conn, RequestView, Scheme};
use crate::routes::{HeaderClaim, Route};
use crate::session::{encode_component, is_navigation, safe_next};
use crate::snapshot::Snapshot;
use crate::state::Mirror;

/// A request the policy lets through.
#[derive(Debug)]
pub struct Grant {
    /// Index of the route in the snapshot's table.
    pub route: usize,
    /// The verified token, when the route looked at one and there was one.
    pub token: Option<Arc<VerifiedToken>>,
    /// Where that token came from: the only credential that may be forwarded.
    pub credential: Option<TokenSource>,
    /// The route's identity headers, rendered from the token's claims.
    pub identity: Vec<(HeaderName, HeaderValue)>,
    /// A renewed session cookie (sliding session), or one clearing an unusable cookie.
    pub set_cookie: Option<HeaderValue>,
}

/// A request the policy refuses.
#[derive(Debug)]
pub struct Denial {
    /// The route the request matched, if any (for metrics and logs).
    pub route: Option<usize>,
    pub error: GatewayError,
    /// The token, when one verified but did not satisfy the route (for logs).
    pub token: Option<Arc<VerifiedToken>>,
    /// Clears an unusable session cookie.
    pub set_cookie: Option<HeaderValue>,
}

impl Denial {
    fn new(route: Option<usize>, error: GatewayError) -> Box<Denial> {
        Box::new(Denial {
            route,
            error,
            token: None,
            set_cookie: None,
        })
    }
}

/// Watches a decision while [`authorize_observed`] makes it, step by step (`authgate
/// explain`). Every method has an empty default: the gateway passes [`NoTrace`], a zero-sized
/// type, so each call compiles to nothing and the request path pays neither a branch nor an
/// allocation.
pub trait Observer {
    /// The route table's answer (`None`: no route takes the request).
    fn route(&mut self, _found: Option<usize>) {}
    /// Where the request's token was found (`None`: there was none).
    fn credential(&mut self, _source: Option<TokenSource>) {}
    /// The token's verification (memo, claims cache or the full check), when the route looked
    /// at a token.
    fn verified(&mut self, _outcome: Result<&Arc<VerifiedToken>, &TokenError>) {}
    /// The revocation mirror's answer for a verified token.
    fn revocation(&mut self, _revoked: bool) {}
    /// One `allow` rule, with the claims it read (`None`: no client certificate to read).
    fn allow(
        &mut self,
        _rule: &AllowRule,
        _claims: Option<&serde_json::Map<String, serde_json::Value>>,
        _passed: bool,
    ) {
    }
}

/// The observer of the request path: watches nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTrace;

impl Observer for NoTrace {}

/// A borrowed observer, so a caller keeps what it recorded.
impl<T: Observer> Observer for &mut T {
    fn route(&mut self, found: Option<usize>) {
        (**self).route(found);
    }
    fn credential(&mut self, source: Option<TokenSource>) {
        (**self).credential(source);
    }
    fn verified(&mut self, outcome: Result<&Arc<VerifiedToken>, &TokenError>) {
        (**self).verified(outcome);
    }
    fn revocation(&mut self, revoked: bool) {
        (**self).revocation(revoked);
    }
    fn allow(
        &mut self,
        rule: &AllowRule,
        claims: Option<&serde_json::Map<String, serde_json::Value>>,
        passed: bool,
    ) {
        (**self).allow(rule, claims, passed);
    }
}

/// Decides on one request. The future is [`authorize_observed`]'s with a zero-sized observer
/// (no wrapper future, no extra state).
pub fn authorize(
    snap: &Snapshot,
    mirror: &Mirror,
    view: &RequestView<'_>,
) -> impl Future<Output = Result<Grant, Box<Denial>>> + Send {
    authorize_observed(snap, mirror, view, NoTrace)
}

/// [`authorize`], reporting each step to `obs` (pass `&mut` to keep what it recorded): the one
/// decision, watched.
pub async fn authorize_observed<O: Observer>(
    snap: &Snapshot,
    mirror: &Mirror,
    view: &RequestView<'_>,
    mut obs: O,
) -> Result<Grant, Box<Denial>> {
    // `obs` is only borrowed for each call, never across the await: the gateway's future then
    // holds nothing for it (`NoTrace` is zero-sized).
    let found = snap.routes.find(view.method, view.host_str(), view.path);
    obs.route(found.map(|(index, _)| index));
    let (index, route) = found.ok_or_else(|| Denial::new(None, GatewayError::NoRoute))?;
    let found = credentials::token(view.headers, &snap.cookie.name)
        .map_err(|e| Denial::new(Some(index), e))?;
    let credential = found.map(|(_, source)| source);
    obs.credential(credential);
    let https = view.scheme == Scheme::Https;
    let from_cookie = credential == Some(TokenSource::Cookie);
    let verified = authenticate(snap, route, view, found.map(|(t, _)| t)).await;
    let (token, cleared) = match not_revoked(mirror, verified, &mut obs) {
        Ok(token) => (token, None),
        // An optional route treats an unusable session cookie as no session.
        Err(_) if from_cookie && route.auth == AuthMode::Optional => {
            (None, Some(snap.cookie.clear(https)))
        }
        Err(reason) => return Err(refused(snap, view, index, reason, from_cookie)),
    };
    if let Err(e) = check_allow(route, token.as_deref(), view.conn, &mut obs) {
        let mut denial = match e {
            GatewayError::Token(reason) => refused(snap, view, index, reason, from_cookie),
            other => Denial::new(Some(index), other),
        };
        denial.token = token;
        return Err(denial);
    }
    let set_cookie = match &token {
        Some(t) if from_cookie => renewed_cookie(snap, t, https),
        _ => cleared,
    };
    let mut identity = identity(snap, index, route, token.as_deref(), view.conn)?;
    if let Some(assertion) = assertion(snap, index, route, token.as_deref(), view.conn) {
        identity.push(assertion);
    }
    Ok(Grant {
        route: index,
        token,
        credential,
        identity,
        set_cookie,
    })
}

/// The route's identity headers, rendered: token claims (rendered once per token) and
/// `tls.client.*` values of the connection. A claim that cannot be a header fails the request
/// rather than being dropped or passed on raw.
fn identity(
    snap: &Snapshot,
    index: usize,
    route: &Route,
    token: Option<&VerifiedToken>,
    conn: &Conn,
) -> Result<Vec<(HeaderName, HeaderValue)>, Box<Denial>> {
    let mut identity = Vec::with_capacity(route.headers.len());
    for (name, claim) in &route.headers {
        let rendered = match (claim, token, &conn.client) {
            (HeaderClaim::Token(i), Some(t), _) => t.header_value(*i).map(|v| v.cloned()),
            (HeaderClaim::Connection(path), _, Some(client)) => render(path.lookup(client)),
            _ => Ok(None),
        };
        match rendered {
            Ok(Some(value)) => identity.push((name.clone(), value)),
            Ok(None) => {}
            Err(e) => {
                let path = match claim {
                    HeaderClaim::Token(i) => snap.verifier.header_claims()[*i].as_str(),
                    HeaderClaim::Connection(p) => p.as_str(),
                };
                let error = TokenError::UnrenderableClaim(path.to_owned(), e).into();
                return Err(Denial::new(Some(index), error));
            }
        }
    }
    Ok(identity)
}

/// The route's signed identity assertion, for a request with a token.
fn assertion(
    snap: &Snapshot,
    index: usize,
    route: &Route,
    token: Option<&VerifiedToken>,
    conn: &Conn,
) -> Option<(HeaderName, HeaderValue)> {
    let (settings, asserter, token) = (route.assertion.as_ref()?, snap.asserter.as_ref()?, token?);
    let mut claims = serde_json::Map::new();
    for (_, claim) in &route.headers {
        let (path, value) = match claim {
            HeaderClaim::Token(i) => {
                let path = &snap.verifier.header_claims()[*i];
                (path, path.lookup(&token.claims))
            }
            HeaderClaim::Connection(path) => {
                (path, conn.client.as_deref().and_then(|c| path.lookup(c)))
            }
        };
        if let Some(v) = value {
            claims.insert(path.as_str().to_owned(), v.clone());
        }
    }
    let signed = asserter.assert(index, &route.name, token, claims, settings.ttl)?;
    Some((settings.header.clone(), signed))
}

/// Runs the route's auth mode: the verified token when there is one (from the connection's
/// memo, the claims cache or a full verification).
async fn authenticate(
    snap: &Snapshot,
    route: &Route,
    view: &RequestView<'_>,
    token: Option<&str>,
) -> Result<Option<Arc<VerifiedToken>>, TokenError> {
    let memo = &view.conn.memo;
    match (route.auth, token) {
        (AuthMode::None, _) => Ok(None),
        (_, Some(token)) => match memo.get(snap.generation, token) {
            Some(verified) => {
                snap.verifier.cache().record_hit();
                Ok(Some(verified))
            }
            None => {
                let verified = snap.verifier.verify(token).await?;
                memo.set(snap.generation, token, &verified);
                Ok(Some(verified))
            }
        },
        (AuthMode::Required, None) => Err(TokenError::Missing),
        (AuthMode::Optional, None) => Ok(None),
    }
}

/// The revocation list, on a verified token. Reports the verification's outcome and the
/// list's answer to `obs`.
fn not_revoked(
    mirror: &Mirror,
    verified: Result<Option<Arc<VerifiedToken>>, TokenError>,
    obs: &mut impl Observer,
) -> Result<Option<Arc<VerifiedToken>>, TokenError> {
    let verified = match verified {
        Ok(Some(verified)) => verified,
        // No token where one is required: nothing was verified.
        Err(TokenError::Missing) => return Err(TokenError::Missing),
        Err(e) => {
            obs.verified(Err(&e));
            return Err(e);
        }
        Ok(None) => return Ok(None),
    };
    obs.verified(Ok(&verified));
    let revoked = mirror.is_revoked(
        verified.jti.as_deref(),
        verified.sid.as_deref(),
        verified.sub.as_deref(),
        verified.iat,
    );
    obs.revocation(revoked);
    if revoked {
        return Err(TokenError::Revoked);
    }
    Ok(Some(verified))
}

/// Runs the route's `allow` rules on every request (cached tokens included).
/// `tls.client.*` rules read the connection's client certificate; the others the token.
fn check_allow(
    route: &Route,
    verified: Option<&VerifiedToken>,
    conn: &Conn,
    obs: &mut impl Observer,
) -> Result<(), GatewayError> {
    for rule in &route.allow {
        let claims = match (rule.source, verified, &conn.client) {
            (ClaimSource::Token, Some(v), _) => &v.claims,
            (ClaimSource::Token, None, _) => return Err(TokenError::Missing.into()),
            (ClaimSource::Connection, _, Some(client)) => &**client,
            // No client certificate: nothing to match.
            (ClaimSource::Connection, _, None) => {
                obs.allow(rule, None, false);
                return Err(GatewayError::Forbidden(rule.claim.as_str().to_owned()));
            }
        };
        let passed = rule.matches(claims);
        obs.allow(rule, Some(claims), passed);
        if !passed {
            return Err(GatewayError::Forbidden(rule.claim.as_str().to_owned()));
        }
    }
    Ok(())
}

/// A token refusal: the session cookie that carried it is cleared, and a browser navigation
/// goes to the login page instead of getting a bare 401.
fn refused(
    snap: &Snapshot,
    view: &RequestView<'_>,
    index: usize,
    reason: TokenError,
    from_cookie: bool,
) -> Box<Denial> {
    let location = is_navigation(view.method, view.headers)
        .then(|| login_redirect(snap, view))
        .flatten();
    let error = match location {
        Some(location) => GatewayError::LoginRedirect { location, reason },
        None => GatewayError::Token(reason),
    };
    Box::new(Denial {
        route: Some(index),
        error,
        token: None,
        set_cookie: from_cookie.then(|| snap.cookie.clear(view.scheme == Scheme::Https)),
    })
}

/// Where a browser without a usable session is sent: the login page, with the page it asked
/// for in `next`.
fn login_redirect(snap: &Snapshot, view: &RequestView<'_>) -> Option<HeaderValue> {
    let login = snap.login.as_ref()?;
    let mut next = view.path.to_owned();
    if let Some(q) = view.query {
        next.push('?');
        next.push_str(q);
    }
    let location = format!("{}?next={}", login.path, encode_component(safe_next(&next)));
    HeaderValue::from_str(&location).ok()
}

/// Sliding session: a fresh cookie when a cookie token issued by authgate is close to expiry.
/// The renewed token keeps the session id, so logging out ends every copy.
fn renewed_cookie(snap: &Snapshot, token: &VerifiedToken, https: bool) -> Option<HeaderValue> {
    let before = snap.cookie.refresh_before?;
    if !token.local || token.exp.saturating_sub(unix_now()) >= before.as_secs() {
        return None;
    }
    let sub = token.sub.as_deref()?;
    let mut claims = token.claims.clone();
    for reserved in RESERVED_CLAIMS {
        claims.remove(reserved);
    }
    let fresh = snap.issuer.issue(sub, claims, token.sid.as_deref()).ok()?;
    snap.cookie.set(&fresh.token, snap.issuer.ttl(), https)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;
    use crate::request::{Conn, Scheme, Target};
    use crate::snapshot::Loaded;
    use crate::state::Revocation;
    use http::{HeaderMap, Method, Uri, Version};
    use serde_json::{Value, json};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn snapshot() -> Snapshot {
        let yaml = format!(
            r#"
tokens:
  issuer: authgate
  keys: [{{ id: k1, algorithm: HS256, secret: "{SECRET}" }}]
login: {{ users: [] }}
cookie: {{ refresh_before: 5m }}
upstreams: {{ app: "http://127.0.0.1:9" }}
routes:
  - {{ name: public, match: {{ path_prefix: /public }}, upstream: app, auth: none }}
  - {{ name: maybe, match: {{ path_prefix: /maybe }}, upstream: app, auth: optional, headers: {{ X-User-Id: sub }} }}
  - name: admin
    match: {{ path_prefix: /admin }}
    upstream: app
    allow: {{ roles: admin }}
    headers: {{ X-User-Id: sub, X-Roles: roles }}
  - {{ name: app, match: {{ path_prefix: /app }}, upstream: app, headers: {{ X-User-Id: sub }} }}
"#
        );
        Loaded::from_source(&Source::from_text(std::path::Path::new("gw.yaml"), yaml))
            .unwrap()
            .snapshot
    }

    fn token(claims: Value) -> String {
        let mut all =
            json!({"sub": "alice", "iss": "authgate", "exp": unix_now() + 3600, "iat": unix_now()});
        for (k, v) in claims.as_object().unwrap() {
            all[k] = v.clone();
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k1".into());
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&header, &all, &key).unwrap()
    }

    /// Decides on `GET path` with these headers, on a fresh connection.
    async fn decide(
        snap: &Snapshot,
        mirror: &Mirror,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<Grant, Box<Denial>> {
        let mut map = HeaderMap::new();
        map.insert("host", "gw".parse().unwrap());
        for (k, v) in headers {
            map.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let uri: Uri = path.parse().unwrap();
        let conn = Conn::new(
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
            Scheme::Http,
        );
        let target = Target::check(&Method::GET, &uri, Version::HTTP_11, &map, |_| true).unwrap();
        let view = RequestView::new(&Method::GET, &target, &map, &conn);
        authorize(snap, mirror, &view).await
    }

    fn bearer(t: &str) -> (&'static str, String) {
        ("authorization", format!("Bearer {t}"))
    }

    #[tokio::test]
    async fn routes_tokens_and_allow_decide() {
        let (snap, mirror) = (snapshot(), Mirror::default());
        let denied = decide(&snap, &mirror, "/nowhere", &[]).await.unwrap_err();
        assert!(matches!(denied.error, GatewayError::NoRoute));
        let public = decide(&snap, &mirror, "/public/x", &[]).await.unwrap();
        assert!(public.token.is_none() && public.identity.is_empty());
        let missing = decide(&snap, &mirror, "/app/x", &[]).await.unwrap_err();
        assert!(matches!(
            missing.error,
            GatewayError::Token(TokenError::Missing)
        ));

        let t = token(json!({"roles": ["dev"]}));
        let granted = decide(&snap, &mirror, "/app/x", &[bearer(&t)])
            .await
            .unwrap();
        assert_eq!(granted.credential, Some(TokenSource::Header));
        assert_eq!(granted.identity.len(), 1);
        assert_eq!(granted.identity[0].1, "alice");
        let forbidden = decide(&snap, &mirror, "/admin/x", &[bearer(&t)])
            .await
            .unwrap_err();
        assert!(matches!(&forbidden.error, GatewayError::Forbidden(c) if c == "roles"));
        assert!(forbidden.token.is_some(), "the log names who was refused");
        let admin = token(json!({"roles": ["admin", "dev"]}));
        let granted = decide(&snap, &mirror, "/admin/x", &[bearer(&admin)])
            .await
            .unwrap();
        let roles = granted
            .identity
            .iter()
            .find(|(n, _)| n == "x-roles")
            .unwrap();
        assert_eq!(roles.1, "admin,dev");
    }

    /// Records each step an observed decision reports, as text.
    #[derive(Default)]
    struct Recorder(Vec<String>);

    impl Observer for Recorder {
        fn route(&mut self, found: Option<usize>) {
            self.0.push(format!("route {found:?}"));
        }
        fn credential(&mut self, source: Option<TokenSource>) {
            self.0.push(format!("credential {source:?}"));
        }
        fn verified(&mut self, outcome: Result<&Arc<VerifiedToken>, &TokenError>) {
            self.0.push(match outcome {
                Ok(t) => format!("verified {}", t.sub.as_deref().unwrap_or("-")),
                Err(e) => format!("refused {}", e.reason()),
            });
        }
        fn revocation(&mut self, revoked: bool) {
            self.0.push(format!("revoked {revoked}"));
        }
        fn allow(
            &mut self,
            rule: &AllowRule,
            claims: Option<&serde_json::Map<String, Value>>,
            passed: bool,
        ) {
            let saw = claims.and_then(|c| rule.claim.lookup(c)).cloned();
            self.0
                .push(format!("allow {} {saw:?} {passed}", rule.claim.as_str()));
        }
    }

    async fn observed(snap: &Snapshot, mirror: &Mirror, path: &str, t: &str) -> Vec<String> {
        let mut map = HeaderMap::new();
        map.insert("host", "gw".parse().unwrap());
        map.insert("authorization", format!("Bearer {t}").parse().unwrap());
        let uri: Uri = path.parse().unwrap();
        let conn = Conn::new(
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
            Scheme::Http,
        );
        let target = Target::check(&Method::GET, &uri, Version::HTTP_11, &map, |_| true).unwrap();
        let view = RequestView::new(&Method::GET, &target, &map, &conn);
        let mut recorder = Recorder::default();
        let _ = authorize_observed(snap, mirror, &view, &mut recorder).await;
        recorder.0
    }

    #[tokio::test]
    async fn an_observed_decision_reports_each_step_in_order() {
        assert_eq!(
            std::mem::size_of::<NoTrace>(),
            0,
            "the gateway's observer is free"
        );
        let (snap, mirror) = (snapshot(), Mirror::default());
        let dev = token(json!({"roles": ["dev"], "jti": "j1"}));
        assert_eq!(
            observed(&snap, &mirror, "/admin/x", &dev).await,
            [
                "route Some(2)",
                "credential Some(Header)",
                "verified alice",
                "revoked false",
                "allow roles Some(Array [String(\"dev\")]) false",
            ]
        );
        assert_eq!(
            observed(&snap, &mirror, "/nowhere", &dev).await,
            ["route None"]
        );
        let expired = token(json!({"exp": unix_now() - 3600}));
        assert_eq!(
            observed(&snap, &mirror, "/app/x", &expired).await,
            [
                "route Some(3)",
                "credential Some(Header)",
                "refused expired"
            ]
        );
        mirror.apply(&Revocation::Token {
            jti: "j1".into(),
            until: unix_now() + 60,
        });
        let steps = observed(&snap, &mirror, "/app/x", &dev).await;
        assert_eq!(steps[2..], ["verified alice", "revoked true"]);
    }

    #[tokio::test]
    async fn browsers_are_sent_to_the_login_page_and_bad_cookies_cleared() {
        let (snap, mirror) = (snapshot(), Mirror::default());
        let html = ("accept", "text/html".to_owned());
        let denied = decide(&snap, &mirror, "/app/x?a=1", std::slice::from_ref(&html))
            .await
            .unwrap_err();
        match &denied.error {
            GatewayError::LoginRedirect { location, .. } => {
                assert_eq!(location, "/auth/login?next=%2Fapp%2Fx%3Fa%3D1")
            }
            other => panic!("{other:?}"),
        }
        let junk = ("cookie", "authgate_session=junk".to_owned());
        let denied = decide(&snap, &mirror, "/app/x", std::slice::from_ref(&junk))
            .await
            .unwrap_err();
        assert!(
            denied.set_cookie.is_some(),
            "an unusable session cookie is cleared"
        );
        // An optional route takes it as no session (and still clears it).
        let granted = decide(&snap, &mirror, "/maybe/x", &[junk]).await.unwrap();
        assert!(granted.token.is_none() && granted.set_cookie.is_some());
    }

    #[tokio::test]
    async fn revoked_sessions_are_refused_and_sliding_renewals_keep_the_session() {
        let (snap, mirror) = (snapshot(), Mirror::default());
        let near_expiry = token(json!({"sid": "s1", "exp": unix_now() + 60}));
        let cookie = ("cookie", format!("authgate_session={near_expiry}"));
        let granted = decide(&snap, &mirror, "/app/x", std::slice::from_ref(&cookie))
            .await
            .unwrap();
        let renewed = granted.set_cookie.expect("renewed close to expiry");
        let renewed = renewed.to_str().unwrap();
        let value = renewed
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("authgate_session=");
        let verified = snap.verifier.verify(value).await.unwrap();
        assert_eq!(verified.sid.as_deref(), Some("s1"));

        mirror.apply(&Revocation::Session {
            sid: "s1".into(),
            until: unix_now() + 60,
        });
        let denied = decide(&snap, &mirror, "/app/x", &[cookie])
            .await
            .unwrap_err();
        assert!(matches!(
            denied.error,
            GatewayError::Token(TokenError::Revoked)
        ));
    }
}
