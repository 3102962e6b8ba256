//! Single sign-on through the gateway, end to end on real sockets: a real OpenID Provider
//! (panva's certified `oidc-provider`, tests/node/oidc-provider.js), the real gateway on an
//! ephemeral port with `login.oidc`, a real upstream that records what it receives, and a
//! browser — the small HTTP one of tests/common/oidc.rs (cookie jar, redirects followed one
//! by one, the provider's login form filled in) and, once, headless Chromium. Each test starts
//! its own provider and gateway. Without node, oidc-provider or Chromium these tests fail,
//! saying what to install; they never skip.
//!
//! The provider registers the gateway as an OAuth "native" client: its loopback redirect and
//! post-logout URIs then match on any port (RFC 8252 §7.3), so the provider can start before
//! the gateway's ephemeral port is known. Everything else is what a web client gets.
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{require_browser, run_browser_js};
use common::oidc::{Browser, NAVIGATION_ACCEPT, Op, Page, Step, hidden_inputs, summary};
use common::*;
use reqwest::Url;
use serde_json::{Value, json};

/// The gateway's client secret at the provider (test-only).
const CLIENT_SECRET: &str = "sso-test-client-secret";
/// A password user of the gateway (the password is [`ALICE_PASSWORD`]), next to SSO.
const PASSWORD_USER: &str = "pat";
/// The `Accept` header of a browser navigation.
const HTML: (&str, &str) = ("accept", NAVIGATION_ACCEPT);

const ALICE: (&str, &str) = ("alice", "alice-pw");
const BOB: (&str, &str) = ("bob", "bob-pw");

/// The provider's users: alice is in `admins`, bob in no group.
fn provider_users() -> Value {
    json!({
        "alice": {"password": "alice-pw", "claims": {
            "email": "alice@example.test", "email_verified": true, "name": "Alice Liddell",
            "groups": ["admins", "dev"], "org": {"team": "blue"}, "employee_id": "E-1001"}},
        "bob": {"password": "bob-pw", "claims": {
            "email": "bob@example.test", "email_verified": false, "groups": []}}
    })
}

/// A provider knowing the gateway as client `authgate` (client_secret_basic), with callbacks
/// for providers named `corp` and `other` and the login page as post-logout URI.
fn provider() -> Op {
    Op::start(json!({
        "clients": [{
            "client_id": "authgate",
            "client_secret": CLIENT_SECRET,
            "application_type": "native",
            "redirect_uris": ["http://127.0.0.1/auth/oidc/corp/callback",
                              "http://127.0.0.1/auth/oidc/other/callback"],
            "post_logout_redirect_uris": ["http://127.0.0.1/auth/login"],
            "token_endpoint_auth_method": "client_secret_basic",
        }],
        "users": provider_users(),
    }))
}

/// One `login.oidc` entry; `extra` holds more keys, indented six spaces. Unless `extra` maps
/// claims itself, `email` and `groups` are copied into authgate's token.
fn provider_entry(name: &str, issuer: &str, extra: &str) -> String {
    let claims = if extra.contains("claims:") {
        ""
    } else {
        "      claims: { email: email, groups: groups }\n"
    };
    format!(
        "    - name: {name}\n      issuer: \"{issuer}\"\n      client_id: authgate\n      \
         client_secret: \"{CLIENT_SECRET}\"\n{claims}{extra}"
    )
}

/// The gateway: these providers, the password user [`PASSWORD_USER`] when asked, plain-http
/// cookies, a public route and `/app` injecting the user's identity.
fn config(providers: &[String], password_user: bool) -> String {
    let users = if password_user {
        format!(
            "  users:\n    - {{ username: {PASSWORD_USER}, password_hash: \"{}\" }}\n",
            user_hashes().0
        )
    } else {
        String::new()
    };
    let mut yaml = String::from(
        "listen: \"127.0.0.1:0\"\ntokens:\n  issuer: authgate\n  audience: apps\n  ttl: 15m\n  \
         keys:\n    - { id: k1, algorithm: HS256, secret: \"{SECRET}\" }\nlogin:\n  \
         path: /auth/login\n",
    );
    yaml.push_str(&users);
    yaml.push_str("  oidc:\n");
    for p in providers {
        yaml.push_str(p);
    }
    yaml.push_str(
        "cookie: { secure: false }\nupstreams:\n  app: \"{UPSTREAM}\"\nroutes:\n  \
         - name: public\n    match: { path_prefix: /public }\n    upstream: app\n    auth: none\n  \
         - name: app\n    match: { path_prefix: /app }\n    upstream: app\n    \
         headers: { X-User-Id: sub, X-Email: email, X-Groups: groups, X-Idp: idp, X-Team: team }\n",
    );
    yaml
}

/// A running gateway with its recording upstream.
struct Sso {
    gw: Gateway,
    up: Upstream,
    /// `http://127.0.0.1:PORT`
    base: Url,
}

impl Sso {
    async fn start(yaml: &str) -> Sso {
        let up = Upstream::start().await;
        let gw = Gateway::start(yaml, &up.url()).await;
        let base = Url::parse(&format!("http://{}", gw.addr())).unwrap();
        Sso { gw, up, base }
    }

    fn url(&self, target: &str) -> Url {
        self.base.join(target).unwrap()
    }

    fn start_url(&self, provider: &str, next: &str) -> Url {
        self.url(&format!(
            "/auth/oidc/{provider}/start?next={}",
            encode(next)
        ))
    }

    fn callback(&self, provider: &str) -> String {
        format!("{}auth/oidc/{provider}/callback", self.base)
    }

    /// The session cookie `browser` holds for the gateway.
    fn session(&self, browser: &Browser) -> Option<String> {
        browser.cookie(&self.url("/app/"), "authgate_session")
    }
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// `path?query` of a URL.
fn target(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

/// The text of the page's `role="alert"` message, unescaped.
fn alert(body: &str) -> Option<String> {
    let start = body.find("role=\"alert\">")? + "role=\"alert\">".len();
    let end = body[start..].find("</p>")? + start;
    Some(
        body[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&"),
    )
}

/// The "Sign in with {name}" links of a login page: (name, href unescaped).
fn sso_links(body: &str) -> Vec<(String, String)> {
    body.split("<a class=\"sso\" href=\"")
        .skip(1)
        .map(|rest| {
            let (href, rest) = rest.split_once("\">").expect("link");
            let name = rest
                .split_once("</a>")
                .expect("link end")
                .0
                .strip_prefix("Sign in with ")
                .expect("link text");
            (name.to_owned(), href.replace("&amp;", "&"))
        })
        .collect()
}

/// The resolved link to provider `name` on a login page.
fn sso_link(page: &Page, name: &str) -> Url {
    let links = sso_links(&page.body);
    let (_, href) = links
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no \"Sign in with {name}\" link in {links:?}"));
    page.url.join(href).unwrap()
}

/// The response of the gateway's callback among `pages`.
fn callback_page<'a>(pages: &'a [Page], provider: &str) -> &'a Page {
    let path = format!("/auth/oidc/{provider}/callback");
    pages
        .iter()
        .find(|p| p.url.path() == path)
        .unwrap_or_else(|| panic!("the browser never reached {path}: {:#?}", summary(pages)))
}

/// The login page with `status` and an alert containing `why`, and no session cookie set.
#[track_caller]
fn assert_refused(page: &Page, status: u16, why: &str) {
    assert_eq!(page.status, status, "{} {}", page.url, page.body);
    assert_eq!(
        page.headers["content-type"], "text/html; charset=utf-8",
        "{}",
        page.url
    );
    assert!(
        page.body.contains("action=\"/auth/login\""),
        "not the login page: {}",
        page.body
    );
    let message = alert(&page.body).unwrap_or_else(|| panic!("no alert in {}", page.body));
    assert!(
        message.contains(why),
        "the alert {message:?} does not say {why:?}"
    );
    assert!(
        message.starts_with(|c: char| c.is_ascii_uppercase()) && message.ends_with('.'),
        "the alert {message:?} is not a sentence"
    );
    assert!(
        !page.sets_cookie("authgate_session"),
        "a refused login set a session cookie: {:?}",
        page.set_cookies()
    );
}

/// Starts a login at `provider` and signs in at the provider as `user`, stopping at the
/// provider's redirect to the callback: returns that callback URL (with code, state, iss).
async fn to_callback(
    browser: &mut Browser,
    sso: &Sso,
    provider: &str,
    next: &str,
    user: (&str, &str),
) -> Url {
    let start = browser
        .fetch(Step::Get(sso.start_url(provider, next)))
        .await;
    assert_eq!(start.status, 302, "{}", start.body);
    let authorize = start.location.expect("a redirect to the provider");
    let callback = sso.callback(provider);
    let query = browser
        .login(authorize.as_str(), user.0, user.1, &callback)
        .await;
    Url::parse(&format!("{callback}?{query}")).unwrap()
}

/// A whole login from the start endpoint: every page until the first that is not a redirect.
async fn sign_in(
    browser: &mut Browser,
    sso: &Sso,
    provider: &str,
    next: &str,
    user: (&str, &str),
) -> Vec<Page> {
    browser
        .browse(&sso.start_url(provider, next), Some(user))
        .await
}

/// The `Cookie` header carrying this session token.
fn session_cookie(token: &str) -> String {
    format!("authgate_session={token}")
}

#[tokio::test]
async fn a_protected_page_leads_through_the_provider_back_to_the_app_as_the_providers_user() {
    let op = provider();
    let sso = Sso::start(&config(&[provider_entry("corp", &op.issuer, "")], false)).await;
    let mut browser = Browser::navigating();

    // Not signed in: the protected page sends the browser to the login page, which offers
    // the provider with the page kept in `next`.
    let pages = browser.browse(&sso.url("/app/reports?week=3"), None).await;
    assert_eq!(pages.len(), 2, "{:#?}", summary(&pages));
    assert_eq!(pages[0].status, 302);
    assert_eq!(
        target(pages[0].location.as_ref().unwrap()),
        "/auth/login?next=%2Fapp%2Freports%3Fweek%3D3"
    );
    let login = &pages[1];
    assert_eq!(login.status, 200, "{}", login.body);
    assert_eq!(
        sso_links(&login.body),
        vec![(
            "corp".to_owned(),
            "/auth/oidc/corp/start?next=%2Fapp%2Freports%3Fweek%3D3".to_owned()
        )]
    );

    // The link: the start endpoint, the provider's form, the callback, the page.
    let pages = browser.browse(&sso_link(login, "corp"), Some(ALICE)).await;
    let start = &pages[0];
    assert_eq!(start.status, 302, "{}", start.body);
    let authorize = start.location.clone().unwrap();
    assert!(
        authorize
            .as_str()
            .starts_with(&format!("{}/auth?", op.issuer)),
        "{authorize}"
    );
    let param = |name: &str| {
        authorize
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(param("client_id").as_deref(), Some("authgate"));
    assert_eq!(param("response_type").as_deref(), Some("code"));
    assert_eq!(param("scope").as_deref(), Some("openid email profile"));
    assert_eq!(param("code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(
        param("redirect_uri"),
        Some(sso.callback("corp")),
        "derived from the request's host"
    );
    let state = param("state").unwrap();
    let state_cookie = format!("authgate_oidc_{}", &state[..16]);
    let set = start.set_cookies();
    assert_eq!(set.len(), 1, "{set:?}");
    assert!(
        set[0].starts_with(&format!("{state_cookie}="))
            && set[0]
                .ends_with("; Path=/auth/oidc/corp/callback; Max-Age=600; HttpOnly; SameSite=Lax"),
        "{set:?}"
    );
    assert!(
        !authorize.as_str().contains("reports"),
        "next stays in the sealed cookie"
    );
    assert!(
        pages.iter().any(Page::is_provider_login_form),
        "{:#?}",
        summary(&pages)
    );

    let callback = callback_page(&pages, "corp");
    let query = callback.url.query().unwrap_or("");
    assert!(query.contains("code="), "{query}");
    assert_eq!(
        common::oidc::query_param(query, "iss").as_deref(),
        Some(op.issuer.as_str())
    );
    assert_eq!(callback.status, 303, "{}", callback.body);
    assert_eq!(
        target(callback.location.as_ref().unwrap()),
        "/app/reports?week=3"
    );
    let set = callback.set_cookies();
    assert!(
        set.iter().any(|c| c.starts_with("authgate_session=ey")
            && c.ends_with("; Path=/; Max-Age=900; HttpOnly; SameSite=Lax")),
        "{set:?}"
    );
    assert!(
        set.contains(&format!(
            "{state_cookie}=; Path=/auth/oidc/corp/callback; Max-Age=0; HttpOnly; SameSite=Lax"
        )),
        "the state cookie is cleared: {set:?}"
    );
    let last = pages.last().unwrap();
    assert_eq!(
        (last.status, last.target().as_str(), last.body.as_str()),
        (200, "/app/reports?week=3", "upstream ok")
    );

    // authgate's own token, with the provider's user and the mapped claims.
    let token = sso.session(&browser).expect("a session cookie");
    let claims = payload(&token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["idp"], "corp");
    assert_eq!(claims["email"], "alice@example.test");
    assert_eq!(claims["groups"], json!(["admins", "dev"]));
    assert_eq!(
        (&claims["iss"], &claims["aud"]),
        (&json!("authgate"), &json!("apps"))
    );
    for unmapped in ["name", "nonce", "email_verified", "azp", "at_hash"] {
        assert!(claims.get(unmapped).is_none(), "{unmapped} in {claims}");
    }
    assert_eq!(jose_header(&token)["alg"], "HS256");

    // What the upstream got: the identity, and none of the login's cookies.
    let seen = sso.up.only();
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("GET", "/app/reports?week=3")
    );
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(seen.headers["x-email"], "alice@example.test");
    assert_eq!(seen.headers["x-groups"], "admins,dev");
    assert_eq!(seen.headers["x-idp"], "corp");
    assert!(seen.headers.get("x-team").is_none(), "team is not mapped");
    assert!(seen.headers.get("cookie").is_none(), "{:?}", seen.headers);
    assert!(seen.headers.get("authorization").is_none());
    sso.up.clear();

    // A client's own identity headers never pass: the gateway's replace them.
    let cookie = session_cookie(&token);
    let r = sso
        .gw
        .get(
            "/app/me",
            &[
                ("cookie", &cookie),
                ("x-user-id", "mallory"),
                ("x-email", "mallory@evil.example"),
                ("x-groups", "admins"),
                ("x-idp", "corp"),
                ("x-team", "red"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = sso.up.only();
    let all = |name: &str| -> Vec<String> {
        seen.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(all("x-user-id"), vec!["alice"]);
    assert_eq!(all("x-email"), vec!["alice@example.test"]);
    assert_eq!(all("x-groups"), vec!["admins,dev"]);
    assert_eq!(all("x-idp"), vec!["corp"]);
    assert!(all("x-team").is_empty(), "a claim-less header is removed");
    sso.up.clear();

    // Without the session, the same headers get an API client a 401 and reach nothing.
    sso.gw
        .get("/app/me", &[("x-user-id", "alice"), ("x-idp", "corp")])
        .await
        .assert_error(401, "invalid_token", "no token");
    assert!(sso.up.seen().is_empty());
}

#[tokio::test]
async fn two_providers_are_offered_and_each_login_names_its_provider() {
    let (corp, other) = (provider(), provider());
    let yaml = config(
        &[
            provider_entry("corp", &corp.issuer, ""),
            provider_entry(
                "other",
                &other.issuer,
                "      post_logout_redirect_url: \"http://127.0.0.1/signed-out\"\n",
            ),
        ],
        true,
    );
    let sso = Sso::start(&yaml).await;

    // The login page: both providers, in config order, and the password form.
    let mut first = Browser::navigating();
    let login = first
        .fetch(Step::Get(sso.url("/auth/login?next=%2Fapp%2Fx")))
        .await;
    assert_eq!(login.status, 200);
    assert_eq!(
        sso_links(&login.body),
        vec![
            (
                "corp".to_owned(),
                "/auth/oidc/corp/start?next=%2Fapp%2Fx".to_owned()
            ),
            (
                "other".to_owned(),
                "/auth/oidc/other/start?next=%2Fapp%2Fx".to_owned()
            ),
        ]
    );
    assert!(login.body.contains("name=\"password\""));
    assert!(login.body.contains("Sign in with corp"));
    assert!(login.body.contains("Sign in with other"));

    // alice through corp, bob through the other provider, each in their own browser.
    let pages = first.browse(&sso_link(&login, "corp"), Some(ALICE)).await;
    assert_eq!(pages.last().unwrap().status, 200, "{:#?}", summary(&pages));
    let mut second = Browser::navigating();
    let login = second
        .fetch(Step::Get(sso.url("/auth/login?next=%2Fapp%2Fy")))
        .await;
    let pages = second.browse(&sso_link(&login, "other"), Some(BOB)).await;
    assert!(
        pages[0]
            .location
            .as_ref()
            .unwrap()
            .as_str()
            .starts_with(&other.issuer),
        "{:#?}",
        summary(&pages)
    );
    assert_eq!(pages.last().unwrap().status, 200, "{:#?}", summary(&pages));

    let alice = payload(&sso.session(&first).unwrap());
    let bob = payload(&sso.session(&second).unwrap());
    assert_eq!(
        (&alice["sub"], &alice["idp"]),
        (&json!("alice"), &json!("corp"))
    );
    assert_eq!((&bob["sub"], &bob["idp"]), (&json!("bob"), &json!("other")));
    assert_eq!(bob["groups"], json!([]));
    assert_ne!(alice["sid"], bob["sid"]);

    let seen = sso.up.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[0].target, "/app/x");
    assert_eq!(seen[0].headers["x-user-id"], "alice");
    assert_eq!(seen[0].headers["x-idp"], "corp");
    assert_eq!(seen[1].target, "/app/y");
    assert_eq!(seen[1].headers["x-user-id"], "bob");
    assert_eq!(seen[1].headers["x-idp"], "other");
    assert_eq!(seen[1].headers["x-email"], "bob@example.test");
    assert_eq!(seen[1].headers["x-groups"], "");

    // corp's answer taken to the other provider's callback (with corp's state cookie sent
    // along by hand) opens nothing.
    let mut third = Browser::navigating();
    let url = to_callback(&mut third, &sso, "corp", "/app/z", ALICE).await;
    let crossed = sso.url(&format!(
        "/auth/oidc/other/callback?{}",
        url.query().unwrap()
    ));
    let cookie = third.cookie_header(&url).expect("the state cookie");
    let r = sso
        .gw
        .get(&target(&crossed), &[HTML, ("cookie", &cookie)])
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        !r.headers
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("authgate_session=ey")),
        "{:?}",
        r.headers
    );
    assert_eq!(sso.up.seen().len(), 2);

    // Each logout goes to the end-session endpoint of the provider that signed the user in,
    // with that provider's way back.
    let back_here = sso.url("/auth/login").to_string();
    for (browser, op, back) in [
        (&mut first, &corp, back_here.as_str()),
        (&mut second, &other, "http://127.0.0.1/signed-out"),
    ] {
        let page = browser
            .fetch(Step::Post(sso.url("/auth/logout"), Vec::new()))
            .await;
        assert_eq!(page.status, 303, "{}", page.body);
        let location = page.location.unwrap();
        assert!(
            location
                .as_str()
                .starts_with(&format!("{}/session/end?", op.issuer)),
            "{location}"
        );
        assert_eq!(
            common::oidc::query_param(location.query().unwrap(), "post_logout_redirect_uri")
                .as_deref(),
            Some(back)
        );
    }
}

#[tokio::test]
async fn auto_redirect_skips_the_login_page_when_the_provider_is_the_only_way_in() {
    let op = provider();
    let only = provider_entry("corp", &op.issuer, "      auto_redirect: true\n");
    let sso = Sso::start(&config(std::slice::from_ref(&only), false)).await;
    let mut browser = Browser::navigating();
    let pages = browser.browse(&sso.url("/app/x?y=1"), Some(ALICE)).await;
    let hops: Vec<(u16, String)> = pages
        .iter()
        .take(3)
        .map(|p| (p.status, target(&p.url)))
        .collect();
    assert_eq!(
        hops,
        vec![
            (302, "/app/x?y=1".to_owned()),
            (302, "/auth/login?next=%2Fapp%2Fx%3Fy%3D1".to_owned()),
            (
                302,
                "/auth/oidc/corp/start?next=%2Fapp%2Fx%3Fy%3D1".to_owned()
            ),
        ],
        "{:#?}",
        summary(&pages)
    );
    assert!(
        pages[2]
            .location
            .as_ref()
            .unwrap()
            .as_str()
            .starts_with(&op.issuer)
    );
    let last = pages.last().unwrap();
    assert_eq!(
        (last.status, last.target().as_str()),
        (200, "/app/x?y=1"),
        "{:#?}",
        summary(&pages)
    );
    assert_eq!(sso.up.only().headers["x-user-id"], "alice");

    // With password users too, the login page is shown: SSO is not the only way in.
    let both = Sso::start(&config(&[only], true)).await;
    let r = both.gw.get("/auth/login?next=%2Fapp", &[HTML]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        sso_links(&r.text()),
        vec![(
            "corp".to_owned(),
            "/auth/oidc/corp/start?next=%2Fapp".to_owned()
        )]
    );
}

#[tokio::test]
async fn the_callback_opens_only_with_this_browsers_intact_unused_state() {
    let op = provider();
    let sso = Sso::start(&config(&[provider_entry("corp", &op.issuer, "")], false)).await;
    let mut browser = Browser::navigating();
    let callback = to_callback(&mut browser, &sso, "corp", "/app/mine", ALICE).await;
    let state = common::oidc::query_param(callback.query().unwrap(), "state").unwrap();
    let cookie_name = format!("authgate_oidc_{}", &state[..16]);
    let sealed = browser
        .cookie(&callback, &cookie_name)
        .expect("state cookie");

    // Another browser (no state cookie): refused.
    let mut stranger = Browser::navigating();
    let page = stranger.fetch(Step::Get(callback.clone())).await;
    assert_refused(&page, 401, "state cookie missing");

    // The sealed cookie changed by one character: refused (and cleared in the browser).
    let mut tampered = sealed.clone().into_bytes();
    tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let set_state = |browser: &mut Browser, value: &str| {
        browser.jar.retain(|c| c.name != cookie_name);
        browser.jar.push(common::oidc::StoredCookie {
            origin: Browser::origin(&callback),
            path: "/auth/oidc/corp/callback".into(),
            name: cookie_name.clone(),
            value: value.to_owned(),
        });
    };
    set_state(&mut browser, &tampered);
    let page = browser.fetch(Step::Get(callback.clone())).await;
    assert_refused(&page, 401, "state cookie is not valid");
    assert!(
        page.set_cookies().contains(&format!(
            "{cookie_name}=; Path=/auth/oidc/corp/callback; Max-Age=0; HttpOnly; SameSite=Lax"
        )),
        "{:?}",
        page.set_cookies()
    );
    assert_eq!(browser.cookie(&callback, &cookie_name), None);

    // The state of another login: that login's sealed cookie under this login's name, and
    // this response with another state of the same cookie name.
    let mut other = Browser::navigating();
    let other_callback = to_callback(&mut other, &sso, "corp", "/app/other", BOB).await;
    let other_state = common::oidc::query_param(other_callback.query().unwrap(), "state").unwrap();
    let other_sealed = other
        .cookie(
            &other_callback,
            &format!("authgate_oidc_{}", &other_state[..16]),
        )
        .unwrap();
    set_state(&mut browser, &other_sealed);
    let page = browser.fetch(Step::Get(callback.clone())).await;
    assert_refused(&page, 401, "state cookie is not valid");
    set_state(&mut browser, &sealed);
    let last = if state.ends_with('A') { "B" } else { "A" };
    let changed = common::oidc::with_param(
        callback.query().unwrap(),
        "state",
        &format!("{}{last}", &state[..42]),
    );
    let page = browser
        .fetch(Step::Get(
            sso.url(&format!("/auth/oidc/corp/callback?{changed}")),
        ))
        .await;
    assert_refused(&page, 401, "does not match");
    assert!(sso.up.seen().is_empty());

    // None of that used the login up: with its own cookie, the callback signs alice in.
    set_state(&mut browser, &sealed);
    let page = browser.fetch(Step::Get(callback.clone())).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(target(page.location.as_ref().unwrap()), "/app/mine");
    assert!(page.sets_cookie("authgate_session"));
    assert_eq!(payload(&sso.session(&browser).unwrap())["sub"], "alice");

    // Replayed, with the state cookie it had (say, captured): refused, no new session.
    let replay = format!("{cookie_name}={sealed}");
    let r = sso
        .gw
        .get(&target(&callback), &[HTML, ("cookie", &replay)])
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        alert(&r.text()).unwrap().contains("already used"),
        "{}",
        r.text()
    );
    assert!(
        !r.headers
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("authgate_session=")),
        "{:?}",
        r.headers
    );
    // And in the browser that used it (its state cookie is gone by now).
    let page = browser.fetch(Step::Get(callback.clone())).await;
    assert_refused(&page, 401, "state cookie missing");

    // The other login is still good in its own browser.
    let page = other.fetch(Step::Get(other_callback)).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(payload(&sso.session(&other).unwrap())["sub"], "bob");
}

#[tokio::test]
async fn a_login_in_progress_survives_a_reload_and_its_callback_stays_single_use() {
    let op = provider();
    let sso = Sso::start(&config(&[provider_entry("corp", &op.issuer, "")], false)).await;
    let mut browser = Browser::navigating();
    let callback = to_callback(&mut browser, &sso, "corp", "/app/kept", ALICE).await;
    let state = common::oidc::query_param(callback.query().unwrap(), "state").unwrap();
    let cookie_name = format!("authgate_oidc_{}", &state[..16]);
    let sealed = browser.cookie(&callback, &cookie_name).unwrap();

    // Started before a reload, finished after it: the state cookie still opens.
    assert!(authgate::server::reload(
        &sso.gw.handle.gateway,
        &sso.gw.config_path()
    ));
    let page = browser.fetch(Step::Get(callback.clone())).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(target(page.location.as_ref().unwrap()), "/app/kept");
    assert_eq!(payload(&sso.session(&browser).unwrap())["sub"], "alice");

    // Another reload forgets which states were used; the provider still takes each code
    // only once, so a replay with the captured state cookie opens nothing.
    assert!(authgate::server::reload(
        &sso.gw.handle.gateway,
        &sso.gw.config_path()
    ));
    let replay = format!("{cookie_name}={sealed}");
    let r = sso
        .gw
        .get(&target(&callback), &[HTML, ("cookie", &replay)])
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let message = alert(&r.text()).unwrap();
    assert!(
        message.contains("could not be exchanged: invalid_grant"),
        "{message}"
    );
    assert!(
        !r.headers
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("authgate_session=")),
        "{:?}",
        r.headers
    );
}

#[tokio::test]
async fn access_denied_at_the_provider_is_a_403_page_and_no_session() {
    let op = provider();
    let sso = Sso::start(&config(&[provider_entry("corp", &op.issuer, "")], false)).await;
    op.deny_next().await;
    let mut browser = Browser::navigating();
    let pages = sign_in(&mut browser, &sso, "corp", "/app/x", ALICE).await;
    let callback = pages.last().unwrap();
    assert_eq!(callback.url.path(), "/auth/oidc/corp/callback");
    assert_eq!(
        common::oidc::query_param(callback.url.query().unwrap(), "error").as_deref(),
        Some("access_denied")
    );
    assert_refused(callback, 403, "identity provider denied access");
    assert_eq!(sso.session(&browser), None);
    assert!(sso.up.seen().is_empty());

    // The page offers the provider again (the page asked for is not known any more: the
    // refused response's state is not opened for it), and the next attempt goes through.
    let again = sso_link(callback, "corp");
    assert_eq!(target(&again), "/auth/oidc/corp/start?next=%2F");
    let pages = browser.browse(&again, Some(ALICE)).await;
    let callback = callback_page(&pages, "corp");
    assert_eq!(callback.status, 303, "{:#?}", summary(&pages));
    assert_eq!(callback.headers["location"], "/");
    assert_eq!(payload(&sso.session(&browser).unwrap())["sub"], "alice");
}

#[tokio::test]
async fn allow_refuses_users_outside_the_group_and_admits_its_members() {
    let op = provider();
    let yaml = config(
        &[provider_entry(
            "corp",
            &op.issuer,
            "      allow: { groups: admins }\n",
        )],
        false,
    );
    let sso = Sso::start(&yaml).await;

    let mut browser = Browser::navigating();
    let pages = sign_in(&mut browser, &sso, "corp", "/app/x", BOB).await;
    let callback = callback_page(&pages, "corp");
    assert_eq!(pages.last().unwrap().url, callback.url, "no redirect after");
    assert_refused(callback, 403, "not allowed here (`groups`)");
    assert_eq!(sso.session(&browser), None);

    let mut browser = Browser::navigating();
    let pages = sign_in(&mut browser, &sso, "corp", "/app/x", ALICE).await;
    assert_eq!(callback_page(&pages, "corp").status, 303);
    assert_eq!(pages.last().unwrap().status, 200);
    let seen = sso.up.only();
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(seen.headers["x-groups"], "admins,dev");
}

#[tokio::test]
async fn claims_mapping_sets_sub_and_nested_claims_and_a_missing_sub_claim_refuses() {
    let op = provider();
    let sso = Sso::start(&config(
        &[provider_entry(
            "corp",
            &op.issuer,
            "      claims: { sub: email, email: email, team: org.team, groups: groups }\n",
        )],
        false,
    ))
    .await;
    let mut browser = Browser::navigating();
    let pages = sign_in(&mut browser, &sso, "corp", "/app/x", ALICE).await;
    assert_eq!(pages.last().unwrap().status, 200, "{:#?}", summary(&pages));
    let claims = payload(&sso.session(&browser).unwrap());
    assert_eq!(claims["sub"], "alice@example.test");
    assert_eq!(claims["team"], "blue");
    assert_eq!(claims["idp"], "corp");
    let seen = sso.up.only();
    assert_eq!(seen.headers["x-user-id"], "alice@example.test");
    assert_eq!(seen.headers["x-team"], "blue");
    assert_eq!(seen.headers["x-email"], "alice@example.test");

    // `sub` from a claim bob does not have: no login.
    let sso = Sso::start(&config(
        &[provider_entry(
            "corp",
            &op.issuer,
            "      claims: { sub: employee_id }\n",
        )],
        false,
    ))
    .await;
    let mut browser = Browser::navigating();
    let pages = sign_in(&mut browser, &sso, "corp", "/app/x", BOB).await;
    assert_refused(pages.last().unwrap(), 401, "sent no `employee_id`");
    let mut browser = Browser::navigating();
    let pages = sign_in(&mut browser, &sso, "corp", "/app/x", ALICE).await;
    assert_eq!(pages.last().unwrap().status, 200);
    assert_eq!(sso.up.only().headers["x-user-id"], "E-1001");
}

#[test]
fn mapping_onto_a_claim_authgate_sets_is_a_config_error_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(
        &[
            provider_entry(
                "corp",
                "https://idp.example",
                "      claims: { email: email, exp: email }\n",
            ),
            provider_entry(
                "other",
                "https://idp2.example",
                "      claims:\n        idp: hd\n",
            ),
        ],
        false,
    )
    .replace("{SECRET}", SECRET)
    .replace("{UPSTREAM}", "http://127.0.0.1:9");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("AUTHGATE_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Where each offending mapping's value is in the file (1-based line and column); the
    // message names the key.
    let place = |key: &str| {
        let (i, line) = yaml
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(key))
            .unwrap();
        (i + 1, line.find(key).unwrap() + key.len() + 1)
    };
    let file = path.display().to_string();
    let (line, column) = place("exp: ");
    let exp =
        format!("{file}:{line}:{column}: login.oidc[0].claims.exp: claim `exp` is set by authgate");
    let (line, column) = place("idp: ");
    let idp =
        format!("{file}:{line}:{column}: login.oidc[1].claims.idp: claim `idp` is set by authgate");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].starts_with(&exp), "{stderr}\nexpected: {exp}");
    assert!(lines[1].starts_with(&idp), "{stderr}\nexpected: {idp}");
}

#[tokio::test]
async fn next_never_sends_the_browser_off_site() {
    let op = provider();
    let sso = Sso::start(&config(&[provider_entry("corp", &op.issuer, "")], false)).await;
    let mut browser = Browser::navigating();
    for next in [
        "https://evil.example/",
        "//evil.example",
        "//evil.example/app",
        "/\\evil.example",
        "/\t/evil.example",
        "https:evil.example",
        "javascript:alert(1)",
    ] {
        // The login page's links already carry a safe next.
        let login = browser
            .fetch(Step::Get(
                sso.url(&format!("/auth/login?next={}", encode(next))),
            ))
            .await;
        assert_eq!(
            sso_links(&login.body)[0].1,
            "/auth/oidc/corp/start?next=%2F",
            "next {next:?}"
        );
        // And the start endpoint, asked directly, ends the login at `/`.
        let pages = sign_in(&mut browser, &sso, "corp", next, ALICE).await;
        let callback = callback_page(&pages, "corp");
        assert_eq!(callback.status, 303, "next {next:?}: {}", callback.body);
        assert_eq!(
            callback.location.as_ref().unwrap().as_str(),
            sso.url("/").as_str(),
            "next {next:?}"
        );
        assert_eq!(callback.headers["location"], "/", "next {next:?}");
        for page in &pages {
            assert_ne!(
                page.url.host_str(),
                Some("evil.example"),
                "next {next:?}: {:#?}",
                summary(&pages)
            );
        }
    }
}

#[tokio::test]
async fn bad_id_tokens_are_401_pages_and_no_session() {
    let op = provider();
    let sso = Sso::start(&config(&[provider_entry("corp", &op.issuer, "")], false)).await;
    let now = now();
    let mut browser = Browser::navigating();
    for (change, why) in [
        (json!({"set": {"aud": "someone-else"}}), "audience"),
        (
            json!({"set": {"exp": now - 3600, "iat": now - 7200}}),
            "expired",
        ),
        (
            json!({"set": {"iss": "https://attacker.example"}}),
            "issuer",
        ),
    ] {
        op.next_id_token(change.clone()).await;
        let pages = sign_in(&mut browser, &sso, "corp", "/app/x", ALICE).await;
        let page = pages.last().unwrap();
        assert_eq!(page.url.path(), "/auth/oidc/corp/callback", "{change}");
        assert_refused(page, 401, "ID token was refused");
        assert!(
            alert(&page.body).unwrap().contains(why),
            "{change}: {}",
            page.body
        );
        assert_eq!(sso.session(&browser), None, "{change}");
    }
    assert!(sso.up.seen().is_empty());
    // The provider's genuine token still signs in.
    let pages = sign_in(&mut browser, &sso, "corp", "/app/x", ALICE).await;
    assert_eq!(pages.last().unwrap().status, 200, "{:#?}", summary(&pages));
    assert_eq!(sso.up.only().headers["x-user-id"], "alice");
}

#[tokio::test]
async fn logins_go_on_across_a_signing_key_rotation_at_the_provider() {
    let op = provider();
    let sso = Sso::start(&config(&[provider_entry("corp", &op.issuer, "")], false)).await;
    let mut before = Browser::navigating();
    let pages = sign_in(&mut before, &sso, "corp", "/app/before", ALICE).await;
    assert_eq!(pages.last().unwrap().status, 200, "{:#?}", summary(&pages));
    let fetches = op.jwks_fetches().await;

    let rotated = op.rotate().await;
    assert_ne!(rotated["kid"], rotated["previous"]);
    assert_eq!(
        op.kids().await,
        vec![rotated["kid"].as_str().unwrap().to_owned()]
    );

    let mut after = Browser::navigating();
    let pages = sign_in(&mut after, &sso, "corp", "/app/after", BOB).await;
    assert_eq!(
        callback_page(&pages, "corp").status,
        303,
        "{:#?}",
        summary(&pages)
    );
    assert_eq!(pages.last().unwrap().status, 200);
    assert!(
        op.jwks_fetches().await > fetches,
        "the new kid made the gateway fetch the provider's keys again"
    );
    let seen = sso.up.seen();
    assert_eq!(
        seen.iter()
            .map(|s| (s.target.as_str(), s.headers["x-user-id"].to_str().unwrap()))
            .collect::<Vec<_>>(),
        vec![("/app/before", "alice"), ("/app/after", "bob")]
    );
    // The first session is authgate's own token: the provider's rotation does not touch it.
    let token = sso.session(&before).unwrap();
    let r = sso
        .gw
        .get("/app/still", &[("cookie", &session_cookie(&token))])
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn logout_revokes_the_session_and_signs_out_at_the_provider_too() {
    let op = provider();
    let sso = Sso::start(&config(&[provider_entry("corp", &op.issuer, "")], true)).await;
    let mut browser = Browser::navigating();
    let pages = sign_in(&mut browser, &sso, "corp", "/app/x", ALICE).await;
    assert_eq!(pages.last().unwrap().status, 200, "{:#?}", summary(&pages));
    let token = sso.session(&browser).unwrap();
    let cookie = session_cookie(&token);

    // The logout form: the session cookie cleared, and off to the provider's end-session
    // endpoint, which is to send the browser back to the login page.
    let page = browser
        .fetch(Step::Post(sso.url("/auth/logout"), Vec::new()))
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    let location = page.location.clone().unwrap();
    assert_eq!(
        format!(
            "{}://{}{}",
            location.scheme(),
            location.authority(),
            location.path()
        ),
        format!("{}/session/end", op.issuer)
    );
    let params: Vec<(String, String)> = location
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(
        params,
        vec![
            ("client_id".to_owned(), "authgate".to_owned()),
            (
                "post_logout_redirect_uri".to_owned(),
                sso.url("/auth/login").to_string()
            ),
        ]
    );
    assert!(
        page.set_cookies()
            .iter()
            .any(|c| c.starts_with("authgate_session=; Path=/; Max-Age=0")),
        "{:?}",
        page.set_cookies()
    );
    assert_eq!(sso.session(&browser), None);

    // The session is revoked: the old cookie no longer opens anything.
    let r = sso.gw.get("/app/x", &[HTML, ("cookie", &cookie)]).await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(
        r.headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/auth/login?next=")
    );
    sso.gw
        .get("/app/x", &[("cookie", &cookie)])
        .await
        .assert_error(401, "invalid_token", "revoked");
    assert_eq!(sso.up.seen().len(), 1, "only the request before logout");

    // At the provider: its confirmation, then back to the gateway's login page.
    let confirm = browser.fetch(Step::Get(location.clone())).await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    let mut form = hidden_inputs(&confirm.body);
    if !form.iter().any(|(k, _)| k == "logout") {
        form.push(("logout".into(), "yes".into()));
    }
    let action = location
        .join(&common::oidc::form_action(&confirm.body))
        .unwrap();
    let done = browser.fetch(Step::Post(action, form)).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location.as_ref(), Some(&sso.url("/auth/login")));
    let pages = browser.browse(&sso.url("/auth/login"), None).await;
    assert_eq!(pages.last().unwrap().status, 200);

    // Signed out there too: the next login asks for the password again.
    let pages = browser.browse(&sso.start_url("corp", "/app/y"), None).await;
    assert!(
        pages.last().unwrap().is_provider_login_form(),
        "{:#?}",
        summary(&pages)
    );

    // A password user's logout stays here: back to the login page.
    let r = form_login(
        &sso.gw,
        &[("username", PASSWORD_USER), ("password", ALICE_PASSWORD)],
        &[],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let local = session_from(&r);
    let r = send(
        sso.gw.addr(),
        "POST",
        "/auth/logout",
        &[("cookie", &session_cookie(&local))],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.headers["location"], "/auth/login");
}

#[tokio::test]
async fn logout_after_a_reload_still_signs_out_at_the_provider() {
    let op = provider();
    let only = provider_entry("corp", &op.issuer, "      auto_redirect: true\n");
    let sso = Sso::start(&config(&[only], false)).await;
    let mut browser = Browser::navigating();
    let pages = sign_in(&mut browser, &sso, "corp", "/app/x", ALICE).await;
    assert_eq!(pages.last().unwrap().status, 200, "{:#?}", summary(&pages));

    // The gateway reloads its config (or restarts, with a durable store): the session goes
    // on, and logging out still ends it at the provider too.
    assert!(authgate::server::reload(
        &sso.gw.handle.gateway,
        &sso.gw.config_path()
    ));
    let page = browser
        .fetch(Step::Post(sso.url("/auth/logout"), Vec::new()))
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    let location = page.location.clone().unwrap();
    assert!(
        location
            .as_str()
            .starts_with(&format!("{}/session/end?client_id=authgate&", op.issuer)),
        "{location}"
    );
    assert_eq!(sso.session(&browser), None);
    // Following it: the provider's "Sign out?" page. (Sent to the login page instead, the
    // browser would be signed straight back in by auto_redirect and the provider's session.)
    let pages = browser.browse(&location, None).await;
    let last = pages.last().unwrap();
    assert_eq!(
        (last.status, last.url.path()),
        (200, "/session/end"),
        "{:#?}",
        summary(&pages)
    );
    assert_eq!(sso.session(&browser), None, "{:#?}", summary(&pages));
}

#[tokio::test]
async fn an_unreachable_provider_is_a_quick_502_page_and_the_rest_still_works() {
    let dead = dead_addr().await;
    let issuer = format!("http://{dead}");
    let sso = Sso::start(&config(&[provider_entry("corp", &issuer, "")], true)).await;

    for attempt in 0..2 {
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            sso.gw.get("/auth/oidc/corp/start?next=%2Fapp%2Fx", &[HTML]),
        )
        .await
        .unwrap_or_else(|_| panic!("attempt {attempt}: the start hung on a closed port"));
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
        let message = alert(&r.text()).unwrap();
        assert!(
            message.starts_with("The identity provider's configuration could not be loaded: ")
                && message.ends_with('.'),
            "{message}"
        );
        assert!(
            !message.contains(&issuer),
            "no provider URL on the page: {message}"
        );
        assert!(r.headers.get("set-cookie").is_none(), "{:?}", r.headers);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "attempt {attempt} took {:?}",
            started.elapsed()
        );
    }

    // The login page still renders, with the link, and password logins and other routes work.
    let r = sso.gw.get("/auth/login?next=%2Fapp%2Fx", &[HTML]).await;
    assert_eq!(r.status, 200);
    assert_eq!(sso_links(&r.text()).len(), 1);
    let r = form_login(
        &sso.gw,
        &[
            ("username", PASSWORD_USER),
            ("password", ALICE_PASSWORD),
            ("next", "/app/x"),
        ],
        &[],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"], "/app/x");
    let token = session_from(&r);
    assert!(payload(&token).get("idp").is_none());
    let r = sso
        .gw
        .get("/app/x", &[("cookie", &session_cookie(&token))])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sso.gw.get("/public/y", &[]).await.status, 200);
    let seen = sso.up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].headers["x-user-id"], PASSWORD_USER);
    assert!(seen[0].headers.get("x-idp").is_none());
}

#[tokio::test]
async fn over_https_the_state_cookie_is_secure_and_the_callback_is_https() {
    let op = provider();
    let pki = common::pki::Pki::new("test CA");
    let server = pki.server(&["localhost"], 1);
    let yaml = config(&[provider_entry("corp", &op.issuer, "")], false)
        .replace("cookie: { secure: false }\n", "")
        .replace(
            "listen: \"127.0.0.1:0\"\n",
            "listen: \"127.0.0.1:0\"\nserver:\n  tls:\n    cert_file: server.crt\n    key_file: server.key\n",
        );
    let up = Upstream::start().await;
    let files: [(&str, &[u8]); 2] = [
        ("server.crt", server.cert.as_bytes()),
        ("server.key", server.key.as_bytes()),
    ];
    let gw = Gateway::start_with_files(&yaml, &up.url(), &files).await;
    let r = common::pki::https_get(
        gw.addr(),
        &pki.ca_pem(),
        None,
        &[b"http/1.1"],
        "/auth/oidc/corp/start?next=%2Fapp%2Fx",
        &[HTML],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 302, "{:?}", r.body);
    let authorize = Url::parse(r.headers["location"].to_str().unwrap()).unwrap();
    let redirect = authorize
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.into_owned());
    assert_eq!(
        redirect,
        Some(format!(
            "https://localhost:{}/auth/oidc/corp/callback",
            gw.addr().port()
        ))
    );
    let cookie = r.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("authgate_oidc_"), "{cookie}");
    assert!(
        cookie.ends_with(
            "; Path=/auth/oidc/corp/callback; Max-Age=600; HttpOnly; SameSite=Lax; Secure"
        ),
        "a login started over HTTPS keeps its state cookie to HTTPS: {cookie}"
    );
}

#[tokio::test]
async fn authgate_revoke_by_sub_ends_an_sso_users_sessions() {
    let op = provider();
    let yaml = config(&[provider_entry("corp", &op.issuer, "")], false).replace(
        "listen: \"127.0.0.1:0\"\n",
        "listen: \"127.0.0.1:0\"\nstate: { store: \"sqlite:state.db\" }\n",
    );
    let sso = Sso::start(&yaml).await;
    let mut browser = Browser::navigating();
    let pages = sign_in(&mut browser, &sso, "corp", "/app/x", ALICE).await;
    assert_eq!(pages.last().unwrap().status, 200, "{:#?}", summary(&pages));
    let cookie = session_cookie(&sso.session(&browser).unwrap());

    let out = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["revoke", "--sub", "alice", "--config"])
        .arg(sso.gw.config_path())
        .env_remove("AUTHGATE_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_success(&out);
    eventually("the revocation reaches the running gateway", || async {
        sso.gw.get("/app/x", &[("cookie", &cookie)]).await.status == 401
    })
    .await;
    sso.gw
        .get("/app/x", &[("cookie", &cookie)])
        .await
        .assert_error(401, "invalid_token", "revoked");

    // A new login after the cutoff works again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut fresh = Browser::navigating();
        let pages = sign_in(&mut fresh, &sso, "corp", "/app/again", ALICE).await;
        if pages.last().unwrap().status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new login after the revocation: {:#?}",
            summary(&pages)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A real browser

#[tokio::test]
async fn chromium_signs_in_through_the_provider_and_out_again() {
    require_browser();
    let op = provider();
    let sso = Sso::start(&config(&[provider_entry("corp", &op.issuer, "")], true)).await;
    let base = sso.base.as_str().trim_end_matches('/').to_owned();
    let options = json!({
        "base": base,
        "protected": "/app/dashboard?tab=1",
        "provider": "corp",
        "user": ALICE.0,
        "password": ALICE.1,
        "expect": "upstream ok",
        "cookie": "authgate_session",
    });
    let started = Instant::now();
    let (ok, stdout, stderr) = run_browser_js(&["sso", &options.to_string()]).await;
    assert!(
        ok,
        "node tests/node/browser.js sso {options} failed:\n{stderr}\nstdout: {stdout}"
    );
    eprintln!(
        "chromium SSO flow took {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        stdout.trim()
    );
    let summary: Value = serde_json::from_str(stdout.trim()).expect("browser.js summary");
    assert_eq!(summary["ok"], true, "{summary}");
    assert!(
        summary["provider_page"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/interaction/", op.issuer)),
        "{summary}"
    );
    assert!(
        summary["after_logout"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/session/end", op.issuer)),
        "{summary}"
    );

    // The upstream saw the one signed-in page load, as alice from corp, and nothing of the
    // session or the login's state.
    let seen = sso.up.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let page = &seen[0];
    assert_eq!(
        (page.method.as_str(), page.target.as_str()),
        ("GET", "/app/dashboard?tab=1")
    );
    assert_eq!(page.headers["x-user-id"], "alice");
    assert_eq!(page.headers["x-idp"], "corp");
    assert_eq!(page.headers["x-email"], "alice@example.test");
    assert!(page.headers.get("authorization").is_none());
    let cookies: Vec<&str> = page
        .headers
        .get_all("cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        !cookies
            .iter()
            .any(|c| c.contains("authgate_session") || c.contains("authgate_oidc_")),
        "{cookies:?}"
    );
}
