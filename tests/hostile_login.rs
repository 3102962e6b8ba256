//! Hostile logins: user enumeration by body and by timing (JSON and form), brute force behind
//! rotated client-address headers, oversized bodies before hashing, claim injection through the
//! login body, cross-site login (login CSRF), open redirects through `next`, and markup
//! injection into the re-rendered login page.
//!
//! The login route is the gateway's own: every case also asserts that nothing reached the
//! upstream.
mod common;
use common::*;

use std::time::{Duration, Instant};

use serde_json::json;

/// High limits unless a test is about them.
const GENEROUS: &str = "  rate_limit: { per_client: { requests: 1000, per: 1m }, per_username: { requests: 1000, per: 1m } }\n";

fn config(extra_login: &str) -> String {
    let (alice, bob) = user_hashes();
    format!(
        r#"
listen: "127.0.0.1:0"
tokens:
  issuer: authgate
  audience: apps
  ttl: 15m
  keys:
    - {{ id: k1, algorithm: HS256, secret: "{{SECRET}}" }}
login:
{extra_login}
  users:
    - username: alice
      password_hash: "{alice}"
      claims: {{ roles: [admin], tenant: acme }}
    - username: bob
      password_hash: "{bob}"
      claims: {{ tenant: acme }}
upstreams:
  app: "{{UPSTREAM}}"
routes:
  - name: admin
    match: {{ path_prefix: /admin }}
    upstream: app
    allow: {{ roles: admin }}
    headers: {{ X-User-Id: sub, X-User-Roles: roles }}
  - name: app
    upstream: app
    headers: {{ X-User-Id: sub }}
"#
    )
}

async fn start(extra_login: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(extra_login), &up.url()).await;
    (up, gw)
}

/// The session token in a `Set-Cookie` answer.
fn session(r: &Reply) -> String {
    let cookie = r.headers["set-cookie"].to_str().unwrap();
    cookie
        .strip_prefix("authgate_session=")
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie in {cookie}"))
        .to_owned()
}

/// Header names and values except the per-request ones.
fn stable_headers(r: &Reply) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "date" | "x-request-id"))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------- enumeration

/// Unknown user vs wrong password over JSON: the same status, the same bytes, the same headers.
#[tokio::test]
async fn json_enumeration_by_body_and_headers() {
    let (up, gw) = start(GENEROUS).await;
    let wrong = json_login(&gw, "alice", "not-her-password", &[]).await;
    let long = "a".repeat(256);
    for user in ["mallory", "ALICE", "alice ", "", long.as_str()] {
        let unknown = json_login(&gw, user, "not-her-password", &[]).await;
        if user.is_empty() {
            // Refused as malformed before any lookup: still says nothing about alice.
            assert_eq!(unknown.status, 400, "{}", unknown.text());
            continue;
        }
        assert_eq!(unknown.status, 401, "{user:?}");
        assert_eq!(unknown.body, wrong.body, "{user:?}: bodies differ");
        assert_eq!(stable_headers(&unknown), stable_headers(&wrong), "{user:?}");
        assert!(unknown.headers.get("set-cookie").is_none());
    }
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "invalid_credentials");
    assert!(up.seen().is_empty());
}

/// The same over the HTML form: the page shown again differs only by the username echoed.
#[tokio::test]
async fn form_enumeration_by_page() {
    let (up, gw) = start(GENEROUS).await;
    let wrong = form_login(
        &gw,
        &[("username", "alice"), ("password", "nope"), ("next", "/x")],
        &[],
    )
    .await;
    let unknown = form_login(
        &gw,
        &[("username", "zelda"), ("password", "nope"), ("next", "/x")],
        &[],
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert_eq!(unknown.status, 401);
    assert_eq!(
        wrong.text().replace("value=\"alice\"", "value=\"USER\""),
        unknown.text().replace("value=\"zelda\"", "value=\"USER\""),
        "the pages differ beyond the echoed username"
    );
    assert_eq!(stable_headers(&unknown), stable_headers(&wrong));
    assert!(wrong.headers.get("set-cookie").is_none());
    assert!(up.seen().is_empty());
}

/// Timing over the form path (tests/login.rs checks JSON): both an unknown user and a wrong
/// password cost one argon2 verification. Interleaved medians (so a burst of load from other
/// tests hits both sides alike), compared with a generous factor so a noisy machine cannot
/// fail it while skipping the hash (a ~1000x difference) would.
#[tokio::test]
async fn form_enumeration_by_timing() {
    let (up, gw) = start(GENEROUS).await;
    async fn once(gw: &Gateway, user: &str) -> Duration {
        let started = Instant::now();
        let r = form_login(
            gw,
            &[("username", user), ("password", "wrong-password")],
            &[],
        )
        .await;
        assert_eq!(r.status, 401, "{user}");
        assert!(r.headers.get("set-cookie").is_none());
        started.elapsed()
    }
    // Warm up both paths once (first-use costs are not what is measured).
    once(&gw, "alice").await;
    once(&gw, "nobody-here").await;
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        known.push(once(&gw, "alice").await);
        unknown.push(once(&gw, "nobody-here").await);
    }
    known.sort();
    unknown.sort();
    let (known, unknown) = (known[4], unknown[4]);
    let ratio = known.as_secs_f64() / unknown.as_secs_f64();
    assert!(
        (0.33..3.0).contains(&ratio),
        "known user {known:?} vs unknown user {unknown:?}"
    );
    assert!(up.seen().is_empty());
}

/// Alternate spellings of a username are other (unknown) users: the right password with them
/// never logs in, so they cannot be used to dodge the per-username limit either.
#[tokio::test]
async fn username_spellings_never_authenticate() {
    let (up, gw) = start(GENEROUS).await;
    for user in [
        "ALICE",
        "Alice",
        "alice ",
        " alice",
        "alice\n",
        "alice\u{0}",
        "alice\u{200b}",
        "al%69ce",
        "ａlice",
    ] {
        let r = json_login(&gw, user, ALICE_PASSWORD, &[]).await;
        assert_eq!(r.status, 401, "{user:?}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_credentials");
        assert!(r.headers.get("set-cookie").is_none(), "{user:?}");
    }
    let r = json_login(&gw, "alice", ALICE_PASSWORD, &[]).await;
    assert_eq!(r.status, 200, "control");
    assert!(up.seen().is_empty());
}

// ---------------------------------------------------------------- brute force

/// Rotating every client-address header a proxy might trust (no `trusted_proxies`) gains
/// nothing: the limit is keyed on the socket peer, on the form path as on JSON.
#[tokio::test]
async fn brute_force_with_rotating_client_address_headers_still_hits_429() {
    let (up, gw) = start("  rate_limit: { per_client: { requests: 3, per: 1m }, per_username: { requests: 100, per: 1m } }\n").await;
    for i in 0..3 {
        let ip = format!("198.51.100.{i}");
        let fwd = format!("for={ip}");
        let r = form_login(
            &gw,
            &[("username", &format!("user{i}")), ("password", "guess")],
            &[
                ("x-forwarded-for", &ip),
                ("x-real-ip", &ip),
                ("forwarded", &fwd),
                ("true-client-ip", &ip),
            ],
        )
        .await;
        assert_eq!(r.status, 401, "attempt {i}");
    }
    for (i, (name, value)) in [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-for", "203.0.113.8, 127.0.0.1"),
        ("x-real-ip", "203.0.113.9"),
        ("forwarded", "for=203.0.113.10"),
        ("cf-connecting-ip", "203.0.113.11"),
    ]
    .into_iter()
    .enumerate()
    {
        // The right password does not help either: the bucket is empty before any hashing.
        let r = if i % 2 == 0 {
            form_login(
                &gw,
                &[("username", "alice"), ("password", ALICE_PASSWORD)],
                &[(name, value)],
            )
            .await
        } else {
            json_login(&gw, "alice", ALICE_PASSWORD, &[(name, value)]).await
        };
        assert_eq!(r.status, 429, "{name}: {value}: {}", r.text());
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "retry-after {retry}");
        assert!(r.headers.get("set-cookie").is_none());
    }
    assert!(up.seen().is_empty());
}

/// Distributed guessing of one account: the per-username bucket holds across client addresses
/// even when X-Forwarded-For is believed (behind a trusted proxy), on the form path.
#[tokio::test]
async fn per_username_limit_holds_for_form_logins_across_clients() {
    let (up, gw) = start(
        "  trusted_proxies: [127.0.0.0/8]\n  rate_limit: { per_client: { requests: 100, per: 1m }, per_username: { requests: 2, per: 1m } }\n",
    )
    .await;
    for i in 0..2 {
        let ip = format!("192.0.2.{i}");
        let r = form_login(
            &gw,
            &[("username", "bob"), ("password", "guess")],
            &[("x-forwarded-for", &ip)],
        )
        .await;
        assert_eq!(r.status, 401);
    }
    let r = form_login(
        &gw,
        &[("username", "bob"), ("password", BOB_PASSWORD)],
        &[("x-forwarded-for", "192.0.2.99")],
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.headers.get("set-cookie").is_none());
    assert!(up.seen().is_empty());
}

// ---------------------------------------------------------------- oversized bodies

/// A 1 MB password is a 413 before any hashing, whether its length is declared or streamed in
/// chunks, as a form or JSON, and even with the right password in front.
#[tokio::test]
async fn one_megabyte_password_is_413_before_hashing() {
    let (up, gw) = start(GENEROUS).await;
    let huge = "x".repeat(1 << 20);
    let r = form_login(&gw, &[("username", "alice"), ("password", &huge)], &[]).await;
    assert_eq!(r.status, 413, "form");
    assert!(r.headers.get("set-cookie").is_none());
    let r = post_login(
        &gw,
        "application/json",
        json!({"username": "alice", "password": huge}).to_string(),
        &[],
    )
    .await;
    assert_eq!(r.status, 413, "json");
    assert_eq!(r.json()["error"], "payload_too_large");
    // Chunked, no declared length.
    let body = form_body(&[("username", "alice"), ("password", &huge)]);
    let mut req = String::from(
        "POST /auth/login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for chunk in body.as_bytes().chunks(64 * 1024) {
        req.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            std::str::from_utf8(chunk).unwrap()
        ));
    }
    req.push_str("0\r\n\r\n");
    let stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = wr.write_all(req.as_bytes()).await;
        wr
    });
    let mut buf = Vec::new();
    use tokio::io::AsyncReadExt;
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut buf)).await;
    writer.abort();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 413"), "chunked: {text}");
    // A declared 1 MB length is refused without waiting for the body.
    let (status, text) = raw(
        gw.addr(),
        b"POST /auth/login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{\"username\":\"alice\"",
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(up.seen().is_empty());
}

// ---------------------------------------------------------------- claim injection

/// Nothing from the login body reaches the token but the username it authenticated: claims,
/// roles, times, issuer, audience, key id, in JSON and in a form.
#[tokio::test]
async fn extra_claims_in_the_login_body_never_reach_the_token() {
    let (up, gw) = start(GENEROUS).await;
    let evil = json!({
        "username": "bob", "password": BOB_PASSWORD,
        "sub": "alice", "roles": ["admin"], "exp": 9_999_999_999u64, "nbf": 0, "iat": 0,
        "iss": "https://evil/", "aud": "evil", "jti": "fixed-jti", "kid": "none", "alg": "none",
        "claims": {"roles": ["admin"]}, "tenant": "globex", "user": {"roles": ["admin"]}
    });
    let r = post_login(&gw, "application/json", evil.to_string(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let json_token = r.json()["access_token"].as_str().unwrap().to_owned();
    let r = form_login(
        &gw,
        &[
            ("username", "bob"),
            ("password", BOB_PASSWORD),
            ("sub", "alice"),
            ("roles", "admin"),
            ("roles[]", "admin"),
            ("exp", "9999999999"),
            ("iss", "https://evil/"),
            ("aud", "evil"),
            ("jti", "fixed-jti"),
            ("tenant", "globex"),
        ],
        &[],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let form_token = session(&r);
    for (label, tok) in [("json", &json_token), ("form", &form_token)] {
        let c = payload(tok);
        assert_eq!(c["sub"], "bob", "{label}");
        assert_eq!(c["iss"], "authgate", "{label}");
        assert_eq!(c["aud"], "apps", "{label}");
        assert_eq!(c["tenant"], "acme", "{label}: the user's own claim");
        assert_ne!(c["jti"], "fixed-jti", "{label}");
        assert!(c.get("roles").is_none(), "{label}: {c}");
        assert!(
            c.get("claims").is_none() && c.get("user").is_none(),
            "{label}: {c}"
        );
        let exp = c["exp"].as_u64().unwrap();
        assert!(exp <= now() + 15 * 60 + 5, "{label}: exp {exp}");
        assert!(c["nbf"].as_u64().unwrap() + 5 >= now(), "{label}");
        // The token is bob's: no admin.
        let r = gw.get_with_token("/admin/x", tok).await;
        assert_eq!(r.status, 403, "{label}: {}", r.text());
    }
    assert!(up.seen().is_empty(), "{:#?}", up.seen());
}

/// HTTP parameter pollution: a second `username` or `password` in a form is refused rather than
/// one of them picked (a WAF or log reading the first would disagree with the login).
#[tokio::test]
async fn repeated_form_fields_are_refused() {
    let (up, gw) = start(GENEROUS).await;
    for body in [
        format!("username=bob&username=alice&password={ALICE_PASSWORD}"),
        format!("username=alice&password=wrong&password={ALICE_PASSWORD}"),
        format!("username=alice&password={ALICE_PASSWORD}&username=alice"),
    ] {
        let r = post_login(&gw, "application/x-www-form-urlencoded", body.clone(), &[]).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.headers.get("set-cookie").is_none(), "{body}");
    }
    assert!(up.seen().is_empty());
}

// ---------------------------------------------------------------- cross-site login

/// Login CSRF: a POST from another site (by `Origin`, or by `Referer` when there is no Origin)
/// is a 403 with no cookie, even with the right password. `Origin: null` (sandboxed frames,
/// `data:` pages) is another site too.
#[tokio::test]
async fn cross_site_login_posts_are_refused() {
    let (up, gw) = start(GENEROUS).await;
    let host = gw.addr().to_string();
    let sibling_port = format!("http://127.0.0.1:{}", gw.addr().port() + 1);
    let suffix = format!("http://{host}.evil.example");
    let userinfo = format!("http://{host}@evil.example");
    let cases: Vec<(&str, &str)> = vec![
        ("origin", "https://evil.example"),
        ("origin", "null"),
        ("origin", &sibling_port),
        ("origin", &suffix),
        ("origin", &userinfo),
        ("origin", "file://"),
        ("referer", "https://evil.example/page"),
        ("referer", "null"),
    ];
    for (name, value) in &cases {
        let r = form_login(
            &gw,
            &[
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
                ("next", "/admin"),
            ],
            &[(name, value)],
        )
        .await;
        assert_eq!(r.status, 403, "form {name}: {value}: {}", r.text());
        assert!(
            r.headers.get("set-cookie").is_none(),
            "form {name}: {value}"
        );
        assert!(r.headers.get("location").is_none(), "form {name}: {value}");
        let r = json_login(&gw, "alice", ALICE_PASSWORD, &[(name, value)]).await;
        assert_eq!(r.status, 403, "json {name}: {value}");
        assert_eq!(r.json()["error"], "cross_site_request");
        assert!(
            r.headers.get("set-cookie").is_none(),
            "json {name}: {value}"
        );
    }
    // A cross-site Origin wins over a same-site Referer.
    let same = format!("http://{host}/auth/login");
    let r = json_login(
        &gw,
        "alice",
        ALICE_PASSWORD,
        &[("origin", "https://evil.example"), ("referer", &same)],
    )
    .await;
    assert_eq!(r.status, 403);
    // Control: our own origin logs in.
    let own = format!("http://{host}");
    let r = json_login(&gw, "alice", ALICE_PASSWORD, &[("origin", &own)]).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("set-cookie").is_some());
    assert!(up.seen().is_empty());
}

// ---------------------------------------------------------------- open redirect

/// `next` after a form login only ever leads to a same-origin path: protocol-relative,
/// backslash, scheme, whitespace-smuggled and header-splitting values all land on `/`.
#[tokio::test]
async fn next_open_redirects_land_on_the_root() {
    let (up, gw) = start(GENEROUS).await;
    let host = gw.addr().to_string();
    let own_absolute = format!("http://{host}/admin");
    for next in [
        "//evil.example",
        "//evil.example/path?x=1",
        "///evil.example",
        "/\\evil.example",
        "\\/evil.example",
        "\\\\evil.example",
        "https://evil.example",
        "https:evil.example",
        "HTTP://evil.example",
        "javascript:alert(document.domain)",
        "data:text/html,<script>alert(1)</script>",
        " //evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "/\r\nSet-Cookie: authgate_session=attacker",
        "evil.example",
        own_absolute.as_str(),
        "",
    ] {
        let r = form_login(
            &gw,
            &[
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
                ("next", next),
            ],
            &[],
        )
        .await;
        assert_eq!(r.status, 303, "{next:?}: {}", r.text());
        assert_eq!(r.headers["location"], "/", "next {next:?}");
        assert_eq!(
            r.headers.get_all("set-cookie").iter().count(),
            1,
            "{next:?}"
        );
    }
    // Same-origin paths that merely look odd are kept as paths (no host in them).
    for next in [
        "/%2F%2Fevil.example",
        "/.//evil.example",
        "/admin?next=//evil.example",
    ] {
        let r = form_login(
            &gw,
            &[
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
                ("next", next),
            ],
            &[],
        )
        .await;
        assert_eq!(r.status, 303);
        assert_eq!(r.headers["location"], next, "{next:?}");
    }
    assert!(up.seen().is_empty());
}

// ---------------------------------------------------------------- markup injection

/// The failed-login page echoes the username and `next`: escaped, never markup.
#[tokio::test]
async fn reflected_username_and_next_are_escaped() {
    let (up, gw) = start(GENEROUS).await;
    let user = "\"><script>alert(1)</script>";
    let next = "/x\"><img src=x onerror=alert(2)>";
    let r = form_login(
        &gw,
        &[("username", user), ("password", "wrong"), ("next", next)],
        &[],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let page = r.text();
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(!page.contains("<img src=x"), "{page}");
    assert!(
        page.contains("value=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""),
        "{page}"
    );
    assert!(
        r.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"),
        "the page keeps its CSP"
    );
    // The login page's own GET echoes `next` too.
    let q = form_body(&[("next", next)]);
    let r = gw.get(&format!("/auth/login?{q}"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(!r.text().contains("<img src=x"), "{}", r.text());
    assert!(up.seen().is_empty());
}

/// Template placeholders in user input are text, not template: a username of `{{error}}` must be
/// shown as typed, not expanded into the raw error markup (which breaks out of the `value`
/// attribute with `"` and `<p>`).
#[tokio::test]
async fn template_placeholders_in_the_username_are_not_expanded() {
    let (up, gw) = start(GENEROUS).await;
    let r = form_login(
        &gw,
        &[
            ("username", "{{error}}"),
            ("password", "wrong"),
            ("next", "/{{error}}"),
        ],
        &[],
    )
    .await;
    assert_eq!(r.status, 401);
    let page = r.text();
    assert_eq!(
        page.matches("role=\"alert\"").count(),
        1,
        "the error markup was injected: {page}"
    );
    assert!(page.contains("value=\"{{error}}\""), "{page}");
    assert!(up.seen().is_empty());
}
