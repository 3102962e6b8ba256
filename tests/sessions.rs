//! Sessions and refresh tokens end to end: login returns a refresh token, refresh rotates it
//! (JSON and RFC 6749 form), a spent token is accepted again only within the grace window and
//! after it kills the whole session, idle and absolute lifetimes end a session, logout ends the
//! refresh family, logout everywhere voids every session of the user.
mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn config(refresh: &str) -> String {
    let (alice, bob) = user_hashes();
    with_routes!(
        r#"  - name: app
    match: { path_prefix: /app }
    upstream: app
    headers: { X-User-Id: sub, X-Roles: roles }
"#
    )
    .replace(
        "upstreams:\n",
        &format!(
            "login:\n  users:\n    - {{ username: alice, password_hash: \"{alice}\", claims: {{ roles: [admin] }} }}\n    - {{ username: bob, password_hash: \"{bob}\" }}\nupstreams:\n"
        ),
    )
    .replace("  leeway: 0s\n", &format!("  leeway: 0s\n  refresh: {refresh}\n"))
}

async fn start(refresh: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(refresh), &up.url()).await;
    (up, gw)
}

/// (access token, refresh token) of a JSON login.
async fn login(gw: &Gateway, user: &str, password: &str) -> (String, String) {
    let r = json_login(gw, user, password, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"]
            .as_str()
            .expect("a refresh token")
            .to_owned(),
    )
}

async fn refresh_json(gw: &Gateway, token: &str) -> Reply {
    let body = json!({"refresh_token": token}).to_string();
    send(
        gw.addr(),
        "POST",
        "/auth/refresh",
        &[("content-type", "application/json")],
        body.into(),
    )
    .await
}

async fn refresh_form(gw: &Gateway, token: &str) -> Reply {
    let body = form_body(&[("grant_type", "refresh_token"), ("refresh_token", token)]);
    send(
        gw.addr(),
        "POST",
        "/auth/refresh",
        &[("content-type", "application/x-www-form-urlencoded")],
        body.into(),
    )
    .await
}

fn pair(r: &Reply) -> (String, String) {
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn refresh_rotates_and_keeps_the_session_and_claims() {
    let (up, gw) = start("{ ttl: 1h, idle_ttl: 10m, reuse_grace: 0s }").await;
    let (access, refresh) = login(&gw, "alice", ALICE_PASSWORD).await;
    let sid = payload(&access)["sid"].as_str().unwrap().to_owned();

    let r = refresh_json(&gw, &refresh).await;
    assert_eq!(r.headers["cache-control"], "no-store");
    let (access2, refresh2) = pair(&r);
    assert_ne!(refresh2, refresh, "rotation: a new refresh token");
    let claims = payload(&access2);
    assert_eq!(claims["sid"], sid.as_str(), "the session is kept");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], json!(["admin"]));
    assert_ne!(claims["jti"], payload(&access)["jti"]);

    // The RFC 6749 §6 form works too, and the new access token passes the routes.
    let (access3, _) = pair(&refresh_form(&gw, &refresh2).await);
    assert_eq!(gw.get_with_token("/app/x", &access3).await.status, 200);
    assert_eq!(up.only().headers["x-roles"], "admin");

    // Unknown tokens and bad requests.
    refresh_json(&gw, "not-a-refresh-token")
        .await
        .assert_error(401, "invalid_grant", "not valid");
    let r = send(
        gw.addr(),
        "POST",
        "/auth/refresh",
        &[("content-type", "application/x-www-form-urlencoded")],
        form_body(&[("grant_type", "password"), ("refresh_token", "x")]).into(),
    )
    .await;
    r.assert_error(400, "invalid_request", "grant_type");
    let r = send(gw.addr(), "GET", "/auth/refresh", &[], bytes::Bytes::new()).await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn a_spent_token_after_the_grace_window_kills_the_whole_session() {
    let (_up, gw) = start("{ ttl: 1h, idle_ttl: 10m, reuse_grace: 0s }").await;
    let (access, first) = login(&gw, "alice", ALICE_PASSWORD).await;
    let (access2, second) = pair(&refresh_json(&gw, &first).await);
    // An attacker (or a client bug) presents the spent token: refused, and the session dies.
    refresh_json(&gw, &first)
        .await
        .assert_error(401, "invalid_grant", "not valid");
    refresh_json(&gw, &second)
        .await
        .assert_error(401, "invalid_grant", "not valid");
    for t in [&access, &access2] {
        gw.get_with_token("/app/x", t)
            .await
            .assert_error(401, "invalid_token", "revoked");
    }
    // Another session of the same user is untouched.
    let (other, _) = login(&gw, "alice", ALICE_PASSWORD).await;
    assert_eq!(gw.get_with_token("/app/x", &other).await.status, 200);
}

#[tokio::test]
async fn within_the_grace_window_a_lost_answer_can_be_retried() {
    let (_up, gw) = start("{ ttl: 1h, idle_ttl: 10m, reuse_grace: 1m }").await;
    let (_, first) = login(&gw, "alice", ALICE_PASSWORD).await;
    let (_, lost) = pair(&refresh_json(&gw, &first).await);
    // The client never saw `lost`; it presents `first` again and gets another successor.
    let (access, retried) = pair(&refresh_json(&gw, &first).await);
    assert_ne!(retried, lost);
    assert_eq!(gw.get_with_token("/app/x", &access).await.status, 200);
    // Both successors belong to the family: each rotates once.
    pair(&refresh_json(&gw, &retried).await);
    pair(&refresh_json(&gw, &lost).await);
}

#[tokio::test]
async fn idle_and_absolute_lifetimes_end_a_session() {
    // Idle: a token unused for 2 s is dead, although the session has an hour left. Nothing
    // can be polled without using the token, so this waits.
    let (_up, gw) = start("{ ttl: 1h, idle_ttl: 2s, reuse_grace: 0s }").await;
    let (_, used) = login(&gw, "alice", ALICE_PASSWORD).await;
    let (_, idle) = login(&gw, "alice", ALICE_PASSWORD).await;
    pair(&refresh_json(&gw, &used).await);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    refresh_json(&gw, &idle)
        .await
        .assert_error(401, "invalid_grant", "not valid");

    // Absolute: rotating every 500 ms keeps a session alive only until its ttl (3 s).
    let (_up, gw) = start("{ ttl: 3s, idle_ttl: 1h, reuse_grace: 0s }").await;
    let (_, mut token) = login(&gw, "alice", ALICE_PASSWORD).await;
    let started = Instant::now();
    loop {
        let r = refresh_json(&gw, &token).await;
        if r.status == 401 {
            r.assert_error(401, "invalid_grant", "not valid");
            break;
        }
        token = pair(&r).1;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the session never ended"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "ended after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn logout_ends_the_refresh_family_and_everywhere_ends_every_session() {
    let (_up, gw) = start("{ ttl: 1h, idle_ttl: 10m, reuse_grace: 1m }").await;
    let (access, refresh) = login(&gw, "alice", ALICE_PASSWORD).await;
    let auth = format!("Bearer {access}");
    let r = send(
        gw.addr(),
        "POST",
        "/auth/logout",
        &[("authorization", &auth)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 204);
    refresh_json(&gw, &refresh)
        .await
        .assert_error(401, "invalid_grant", "not valid");

    // Three sessions of alice, one of bob; alice logs out everywhere from one of them.
    let a1 = login(&gw, "alice", ALICE_PASSWORD).await;
    let a2 = login(&gw, "alice", ALICE_PASSWORD).await;
    let b1 = login(&gw, "bob", BOB_PASSWORD).await;
    // Tokens issued before the cutoff second: wait for the clock to tick past it.
    let issued_at = now();
    while now() == issued_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let auth = format!("Bearer {}", a1.0);
    let r = send(
        gw.addr(),
        "POST",
        "/auth/logout",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        json!({"everywhere": true}).to_string().into(),
    )
    .await;
    assert_eq!(r.status, 204);
    for (access, refresh) in [&a1, &a2] {
        gw.get_with_token("/app/x", access)
            .await
            .assert_error(401, "invalid_token", "revoked");
        refresh_json(&gw, refresh)
            .await
            .assert_error(401, "invalid_grant", "not valid");
    }
    assert_eq!(gw.get_with_token("/app/x", &b1.0).await.status, 200);
    pair(&refresh_json(&gw, &b1.1).await);
    // `?everywhere=1` does the same for bob.
    let auth = format!("Bearer {}", b1.0);
    let r = send(
        gw.addr(),
        "POST",
        "/auth/logout?everywhere=1",
        &[("authorization", &auth)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 204);
    gw.get_with_token("/app/x", &b1.0)
        .await
        .assert_error(401, "invalid_token", "revoked");
    // A new login after the logout works.
    let (fresh, _) = login(&gw, "alice", ALICE_PASSWORD).await;
    assert_eq!(gw.get_with_token("/app/x", &fresh).await.status, 200);
}

#[tokio::test]
async fn without_tokens_refresh_there_is_no_refresh_token_and_no_endpoint() {
    let up = Upstream::start().await;
    let yaml = config("{}").replace("  refresh: {}\n", "");
    let gw = Gateway::start(&yaml, &up.url()).await;
    let r = json_login(&gw, "alice", ALICE_PASSWORD, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("refresh_token").is_none());
    let r = refresh_json(&gw, "anything").await;
    assert_eq!(r.status, 404);
}
