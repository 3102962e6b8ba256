//! Upstream failures and the demo echo upstream.
mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const TIMEOUTS: &str = r#"
tokens:
  keys:
    - { id: k1, algorithm: HS256, secret: "{SECRET}" }
upstreams:
  app: { url: "{UPSTREAM}", connect_timeout: 1s, timeout: 300ms }
routes:
  - name: app
    upstream: app
    auth: none
"#;

#[tokio::test]
async fn dead_upstream_is_502_without_hanging() {
    let dead = dead_addr().await;
    let gw = Gateway::start(TIMEOUTS, &format!("http://{dead}")).await;
    let started = Instant::now();
    let r = gw.get("/x", &[]).await;
    r.assert_error(502, "bad_gateway", "unreachable");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The gateway keeps serving after the failure.
    gw.get("/y", &[])
        .await
        .assert_error(502, "bad_gateway", "unreachable");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let up = Upstream::start().await;
    let gw = Gateway::start(TIMEOUTS, &up.url()).await;
    let r = gw.get("/slow", &[]).await;
    r.assert_error(504, "gateway_timeout", "in time");
    assert_eq!(
        gw.get("/fast", &[]).await.status,
        200,
        "the next request is served normally"
    );
}

#[tokio::test]
async fn upstream_closing_mid_request_is_502() {
    // An "upstream" that accepts and immediately closes every connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let gw = Gateway::start(TIMEOUTS, &format!("http://{addr}")).await;
    gw.get("/x", &[]).await.assert_error(502, "bad_gateway", "");
}

#[tokio::test]
async fn builtin_echo_shows_the_forwarded_request() {
    let yaml = r#"
tokens:
  keys:
    - { id: k1, algorithm: HS256, secret: "{SECRET}" }
upstreams:
  demo: builtin:echo
routes:
  - name: demo
    upstream: demo
    headers: { X-User-Id: sub }
"#;
    let gw = Gateway::start(yaml, "unused").await;
    let t = hs256(
        SECRET,
        Some("k1"),
        &json!({"sub": "alice", "exp": now() + 60}),
    );
    let r = gw
        .get(
            "/some/../path?x=1",
            &[
                ("authorization", &format!("Bearer {t}")),
                ("x-user-id", "evil"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["path"], "/path");
    assert_eq!(body["query"], "x=1");
    assert_eq!(body["headers"]["x-user-id"], "alice");
    assert!(body["headers"].get("authorization").is_none());
}
