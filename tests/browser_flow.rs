//! The browser flow end to end without a browser: session cookies, login redirects and the
//! login page, logout and revocation, same-origin checks, sliding sessions, WebSockets.
mod common;
use common::*;
use serde_json::json;

fn config(extra: &str) -> String {
    format!(
        r#"
tokens:
  issuer: authgate
  audience: apps
  ttl: 15m
  leeway: 0s
  keys:
    - {{ id: k1, algorithm: HS256, secret: "{{SECRET}}" }}
login:
  users:
    - {{ username: alice, password_hash: "{hash}", claims: {{ roles: [admin] }} }}
{extra}
upstreams:
  app: "{{UPSTREAM}}"
routes:
  - name: maybe
    match: {{ path_prefix: /maybe }}
    upstream: app
    auth: optional
    headers: {{ X-User-Id: sub }}
  - name: passthrough
    match: {{ path_prefix: /raw }}
    upstream: app
    forward_token: true
    headers: {{ X-User-Id: sub }}
  - name: app
    upstream: app
    headers: {{ X-User-Id: sub }}
"#,
        hash = user_hashes().0
    )
}

async fn start(extra: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(extra), &up.url()).await;
    (up, gw)
}

async fn browser_login(gw: &Gateway, password: &str, next: &str, extra: &[(&str, &str)]) -> Reply {
    form_login(
        gw,
        &[
            ("username", "alice"),
            ("password", password),
            ("next", next),
        ],
        extra,
    )
    .await
}

/// The `Accept` header of a browser navigation.
const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");

#[tokio::test]
async fn form_login_sets_a_hardened_session_cookie_and_goes_to_next() {
    let (up, gw) = start("").await;
    let r = browser_login(&gw, ALICE_PASSWORD, "/app/page?x=1", &[]).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"], "/app/page?x=1");
    let cookie = r.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("authgate_session=ey"), "{cookie}");
    assert!(
        cookie.ends_with("; Path=/; Max-Age=900; HttpOnly; Secure; SameSite=Lax"),
        "{cookie}"
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn next_only_ever_leads_to_a_same_origin_path() {
    let (_up, gw) = start("").await;
    for next in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "/\t/evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "",
    ] {
        let r = browser_login(&gw, ALICE_PASSWORD, next, &[]).await;
        assert_eq!(r.status, 303);
        assert_eq!(r.headers["location"], "/", "next {next:?}");
    }
}

#[tokio::test]
async fn the_cookie_authenticates_and_never_reaches_the_backend() {
    let (up, gw) = start("").await;
    let token = session_from(&browser_login(&gw, ALICE_PASSWORD, "/", &[]).await);
    let cookie = format!("a=1; authgate_session={token}; b=2");
    let r = gw.get("/app/x", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(
        seen.headers["cookie"], "a=1; b=2",
        "other cookies pass untouched"
    );
    assert!(seen.headers.get("authorization").is_none());
    up.clear();

    // Only the session cookie: no Cookie header at all upstream.
    let only = format!("authgate_session={token}");
    assert_eq!(gw.get("/app/x", &[("cookie", &only)]).await.status, 200);
    assert!(up.only().headers.get("cookie").is_none());
    up.clear();

    // forward_token routes pass it on.
    assert_eq!(gw.get("/raw/x", &[("cookie", &cookie)]).await.status, 200);
    assert_eq!(up.only().headers["cookie"], cookie.as_str());
}

#[tokio::test]
async fn a_cookie_and_a_header_must_carry_the_same_token() {
    let (up, gw) = start("").await;
    let mine = session_from(&browser_login(&gw, ALICE_PASSWORD, "/", &[]).await);
    let other = token("mallory", json!({}));
    let cookie = format!("authgate_session={mine}");
    let r = gw
        .get(
            "/app/x",
            &[
                ("cookie", &cookie),
                ("authorization", &format!("Bearer {other}")),
            ],
        )
        .await;
    r.assert_error(400, "invalid_request", "different tokens");
    let r = gw
        .get(
            "/app/x",
            &[
                ("cookie", &cookie),
                ("authorization", &format!("Bearer {mine}")),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let twice = format!("authgate_session={mine}; authgate_session={other}");
    gw.get("/app/x", &[("cookie", &twice)]).await.assert_error(
        400,
        "invalid_request",
        "several session cookies",
    );
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn browsers_are_sent_to_the_login_page_and_apis_get_401() {
    let (up, gw) = start("").await;
    let r = gw.get("/app/orders?page=2&sort=desc", &[HTML]).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.headers["location"],
        "/auth/login?next=%2Fapp%2Forders%3Fpage%3D2%26sort%3Ddesc"
    );
    gw.get("/app/orders", &[("accept", "application/json")])
        .await
        .assert_error(401, "invalid_token", "no token");
    let r = send(
        gw.addr(),
        "POST",
        "/app/orders",
        &[HTML],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 401, "only GET/HEAD navigations are redirected");

    // An expired session cookie: redirected, and the cookie cleared.
    let expired = token("alice", json!({"exp": now() - 10}));
    let r = gw
        .get(
            "/app/orders",
            &[HTML, ("cookie", &format!("authgate_session={expired}"))],
        )
        .await;
    assert_eq!(r.status, 302);
    assert!(
        r.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    // A bad bearer token from an API client: 401, and no cookie games.
    let r = gw
        .get(
            "/app/orders",
            &[("authorization", &format!("Bearer {expired}"))],
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.headers.get("set-cookie").is_none());
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn optional_routes_treat_an_unusable_cookie_as_no_session() {
    let (up, gw) = start("").await;
    let expired = token("alice", json!({"exp": now() - 10}));
    let r = gw
        .get(
            "/maybe/x",
            &[("cookie", &format!("authgate_session={expired}"))],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert!(up.only().headers.get("x-user-id").is_none());
}

#[tokio::test]
async fn the_login_page_is_hardened_and_shows_errors_without_the_password() {
    let (_up, gw) = start("").await;
    let r = gw.get("/auth/login?next=%2Fapp%2Fx", &[HTML]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers["x-frame-options"], "DENY");
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.headers["referrer-policy"], "same-origin");
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = r.text();
    assert!(html.contains("name=\"next\" value=\"/app/x\""), "{html}");
    assert!(html.contains("autocomplete=\"current-password\""));
    assert!(!html.contains("<script"), "works without JavaScript");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );

    let r = browser_login(&gw, "wrong-password-shown-nowhere", "/app/x", &[]).await;
    assert_eq!(r.status, 401);
    let html = r.text();
    assert!(
        html.contains("role=\"alert\">Wrong username or password."),
        "{html}"
    );
    assert!(
        html.contains("name=\"username\" type=\"text\" value=\"alice\""),
        "{html}"
    );
    assert!(
        html.contains("name=\"next\" value=\"/app/x\""),
        "next is kept for the retry"
    );
    assert!(!html.contains("wrong-password-shown-nowhere"));
    assert!(r.headers.get("set-cookie").is_none());
}

#[tokio::test]
async fn a_page_template_replaces_the_built_in_page() {
    let up = Upstream::start().await;
    let template = "<html><body>ACME SSO {{error}}<form method=post action=\"{{action}}\"><input name=next value=\"{{next}}\"><input name=username value=\"{{username}}\"></form></body></html>";
    let yaml = config("  page_template: page.html\n");
    let gw =
        Gateway::start_with_files(&yaml, &up.url(), &[("page.html", template.as_bytes())]).await;
    let r = gw.get("/auth/login?next=/app/%22x", &[HTML]).await;
    assert_eq!(r.status, 200);
    let html = r.text();
    assert!(
        html.starts_with("<html><body>ACME SSO <form method=post action=\"/auth/login\">"),
        "{html}"
    );
    assert!(
        html.contains("value=\"/app/&quot;x\""),
        "placeholders are escaped: {html}"
    );
    assert_eq!(r.headers["x-frame-options"], "DENY");
}

#[tokio::test]
async fn logout_clears_the_cookie_and_revokes_the_token_even_from_the_cache() {
    let (up, gw) = start("").await;
    let token = session_from(&browser_login(&gw, ALICE_PASSWORD, "/", &[]).await);
    let cookie = format!("authgate_session={token}");
    assert_eq!(gw.get("/app/x", &[("cookie", &cookie)]).await.status, 200);
    assert_eq!(
        gw.get_with_token("/app/x", &token).await.status,
        200,
        "cached now"
    );

    let r = send(
        gw.addr(),
        "POST",
        "/auth/logout",
        &[("cookie", &cookie)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.headers["location"], "/auth/login");
    assert!(
        r.headers["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("authgate_session=; Path=/; Max-Age=0")
    );

    gw.get_with_token("/app/x", &token)
        .await
        .assert_error(401, "invalid_token", "revoked");
    let r = gw.get("/app/x", &[HTML, ("cookie", &cookie)]).await;
    assert_eq!(
        r.status, 302,
        "a browser with the old cookie goes back to the login page"
    );
    // A reload does not bring the token back.
    assert!(authgate::server::reload(
        &gw.handle.gateway,
        &gw.config_path()
    ));
    gw.get_with_token("/app/x", &token)
        .await
        .assert_error(401, "invalid_token", "revoked");
    assert_eq!(up.seen().len(), 2);

    // An API client logging out with a bearer token gets 204.
    let api = send(
        gw.addr(),
        "POST",
        "/auth/login",
        &[("content-type", "application/json")],
        json!({"username": "alice", "password": ALICE_PASSWORD})
            .to_string()
            .into(),
    )
    .await;
    let api_token = api.json()["access_token"].as_str().unwrap().to_owned();
    let r = send(
        gw.addr(),
        "POST",
        "/auth/logout",
        &[("authorization", &format!("Bearer {api_token}"))],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(gw.get_with_token("/app/x", &api_token).await.status, 401);
    assert_eq!(
        send(gw.addr(), "GET", "/auth/logout", &[], bytes::Bytes::new())
            .await
            .status,
        405
    );
}

#[tokio::test]
async fn cross_site_login_and_logout_posts_are_refused() {
    let (_up, gw) = start("").await;
    let evil = [("origin", "https://evil.example")];
    let r = browser_login(&gw, ALICE_PASSWORD, "/", &evil).await;
    assert_eq!(r.status, 403);
    assert!(r.headers.get("set-cookie").is_none());
    let r = send(
        gw.addr(),
        "POST",
        "/auth/login",
        &[
            ("content-type", "application/json"),
            ("referer", "https://evil.example/page"),
        ],
        json!({"username": "alice", "password": ALICE_PASSWORD})
            .to_string()
            .into(),
    )
    .await;
    r.assert_error(403, "cross_site_request", "another site");

    // Same origin passes (the Host the browser used).
    let host = gw.addr().to_string();
    let origin = format!("http://{host}");
    let r = browser_login(&gw, ALICE_PASSWORD, "/", &[("origin", &origin)]).await;
    assert_eq!(r.status, 303);
    let token = session_from(&r);

    let cookie = format!("authgate_session={token}");
    let r = send(
        gw.addr(),
        "POST",
        "/auth/logout",
        &[("cookie", &cookie), ("origin", "https://evil.example")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        gw.get("/app/x", &[("cookie", &cookie)]).await.status,
        200,
        "a cross-site logout revokes nothing"
    );
}

#[tokio::test]
async fn sliding_sessions_reissue_cookie_tokens_close_to_expiry() {
    let (up, gw) = start("cookie:\n  refresh_before: 5m\n").await;
    let near = token(
        "alice",
        json!({"exp": now() + 60, "roles": ["admin"], "jti": "old"}),
    );
    let r = gw
        .get("/app/x", &[("cookie", &format!("authgate_session={near}"))])
        .await;
    assert_eq!(r.status, 200);
    let fresh = session_from(&r);
    let claims = payload(&fresh);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], json!(["admin"]));
    assert_ne!(claims["jti"], "old");
    assert!(claims["exp"].as_u64().unwrap() >= now() + 890);
    assert_eq!(
        gw.get(
            "/app/x",
            &[("cookie", &format!("authgate_session={fresh}"))]
        )
        .await
        .status,
        200
    );

    // Far from expiry, or sent as a bearer token: nothing re-issued.
    let far = token("alice", json!({}));
    let r = gw
        .get("/app/x", &[("cookie", &format!("authgate_session={far}"))])
        .await;
    assert!(r.headers.get("set-cookie").is_none());
    let r = gw.get_with_token("/app/x", &near).await;
    assert!(r.headers.get("set-cookie").is_none());
    assert_eq!(up.seen().len(), 4);
}

// tungstenite's handshake callback type fixes the size of its error variant.
#[allow(clippy::result_large_err)]
mod websocket {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use std::sync::{Arc, Mutex};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    /// A WebSocket echo upstream recording the handshake headers it saw.
    async fn echo_upstream() -> (String, Arc<Mutex<Vec<http::HeaderMap>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let callback = |req: &Request, resp: Response| {
                        record.lock().unwrap().push(req.headers().clone());
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() || msg.is_binary() {
                            let _ = ws.send(msg).await;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn websocket_upgrades_pass_through_after_auth() {
        let (url, seen) = echo_upstream().await;
        let gw = Gateway::start(&config(""), &url).await;
        let mut req = format!("ws://{}/app/socket", gw.addr())
            .into_client_request()
            .unwrap();
        let t = token("alice", json!({}));
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
        req.headers_mut()
            .insert("x-user-id", "spoofed".parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade through the gateway");
        assert_eq!(resp.status(), 101);
        for text in ["hello", "through the gateway"] {
            ws.send(Message::text(text)).await.unwrap();
            let echoed = ws.next().await.unwrap().unwrap();
            assert_eq!(echoed.into_text().unwrap().as_str(), text);
        }
        ws.close(None).await.unwrap();
        let headers = seen.lock().unwrap().clone();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0]["x-user-id"], "alice");
        assert!(headers[0].get("authorization").is_none());

        // The 101 is the route's one 1xx series (registered for routes with real servers).
        let text = admin(&gw, "/metrics").await.text();
        let series = "authgate_requests_total{route=\"app\",status=\"1xx\"}";
        assert_eq!(metric(&text, series), 1.0, "{text}");
    }

    #[tokio::test]
    async fn websocket_without_a_token_gets_401_before_any_101() {
        let (url, seen) = echo_upstream().await;
        let gw = Gateway::start(&config(""), &url).await;
        let err = tokio_tungstenite::connect_async(format!("ws://{}/app/socket", gw.addr()))
            .await
            .expect_err("no token, no upgrade");
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
            other => panic!("expected an HTTP 401, got {other:?}"),
        }
        assert!(
            seen.lock().unwrap().is_empty(),
            "the upstream never saw the handshake"
        );
    }

    #[tokio::test]
    async fn h2c_upgrades_are_never_passed_on() {
        let up = Upstream::start().await;
        let gw = Gateway::start(&config(""), &up.url()).await;
        let r = gw
            .get(
                "/maybe/x",
                &[
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("upgrade", "h2c"),
                    ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ],
            )
            .await;
        assert_eq!(r.status, 200);
        let seen = up.only();
        for h in ["upgrade", "http2-settings", "connection"] {
            assert!(seen.headers.get(h).is_none(), "{h} was forwarded");
        }
    }
}

/// Found by fuzzing: a cookie holding UTF-8 (browsers send it) must not hide the session
/// cookie beside it, neither from authentication nor from stripping.
#[tokio::test]
async fn a_non_ascii_cookie_does_not_hide_the_session_cookie() {
    let (up, gw) = start("").await;
    let t = token("alice", json!({}));
    for (path, want) in [("/maybe/x", "alice"), ("/app/x", "alice")] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nCookie: theme=\u{e9}; authgate_session={t}\r\n\r\n"
        );
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        assert_eq!(status, 200, "{path}: {text}");
        let seen = up.only();
        assert_eq!(seen.headers["x-user-id"], want, "{path}");
        assert_eq!(
            seen.headers["cookie"].as_bytes(),
            "theme=\u{e9}".as_bytes(),
            "{path}: the session cookie leaked"
        );
        up.clear();
    }
}
