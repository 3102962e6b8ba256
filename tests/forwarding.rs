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

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = Upstream::start().await;
    let gw = Gateway::start(TIMEOUTS, &up.url()).await;
    for i in 0..5 {
        assert_eq!(gw.get(&format!("/r{i}"), &[]).await.status, 200);
    }
    assert_eq!(up.seen().len(), 5);
    assert_eq!(
        up.connections(),
        1,
        "sequential requests must reuse one pooled upstream connection"
    );
}

#[tokio::test]
async fn http2_clients_are_served_and_the_upstream_gets_http11_with_host() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let t = token("alice", json!({}));
    for (path, want) in [("/app/h2", 200), ("/admin/h2", 403)] {
        let req = http::Request::builder()
            .uri(format!("http://app.example:8080{path}"))
            .header("authorization", format!("Bearer {t}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "{path}");
    }
    let seen = up.only();
    assert_eq!(seen.target, "/app/h2");
    assert_eq!(seen.headers["host"], "app.example:8080");
    assert_eq!(seen.headers["x-user-id"], "alice");
}

const LIMITED: &str = r#"
server:
  max_body_bytes: 1000
tokens:
  keys:
    - { id: k1, algorithm: HS256, secret: "{SECRET}" }
upstreams:
  app: "{UPSTREAM}"
routes:
  - name: unlimited
    match: { path_prefix: /echo-body/big }
    upstream: app
    auth: none
    max_body_bytes: 0
  - name: limited
    upstream: app
    auth: none
"#;

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let up = Upstream::start().await;
    let gw = Gateway::start(LIMITED, &up.url()).await;
    let small = bytes::Bytes::from(vec![b'a'; 1000]);
    let r = send(gw.addr(), "POST", "/echo-body/ok", &[], small.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, small);
    up.clear();

    // Declared too large: refused before anything is forwarded.
    let r = send(
        gw.addr(),
        "POST",
        "/echo-body/x",
        &[],
        bytes::Bytes::from(vec![b'a'; 1001]),
    )
    .await;
    r.assert_error(413, "payload_too_large", "too large");
    assert!(up.seen().is_empty());

    // Streamed (chunked) past the limit: cut off, 413, and the upstream never gets it whole.
    let chunk = "b".repeat(600);
    let req = format!(
        "POST /echo-body/y HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{n:x}\r\n{chunk}\r\n{n:x}\r\n{chunk}\r\n0\r\n\r\n",
        n = chunk.len()
    );
    let (status, text) = raw(gw.addr(), req.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    assert!(up.seen().iter().all(|s| s.body.len() <= 1000));

    // A route can lift the limit.
    let big = bytes::Bytes::from(vec![b'c'; 5000]);
    let r = send(gw.addr(), "POST", "/echo-body/big", &[], big.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, big);
}

/// An idle upstream connection has no task reading it (the request that used it drove it):
/// when the server closes it, the gateway must still notice and close its side, not keep the
/// socket half-closed (CLOSE_WAIT) until the next request happens to take it. The next request
/// opens a fresh connection and is answered.
#[tokio::test]
async fn an_idle_upstream_connection_the_server_closes_is_closed_by_the_gateway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let (answered_tx, answered_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = first.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed before sending its request");
            head.extend_from_slice(&buf[..n]);
        }
        first
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst")
            .await
            .unwrap();
        // Once the connection sits idle in the gateway's pool, the server's keep-alive timeout
        // strikes: it closes its side, then waits for the gateway's.
        let _ = answered_rx.await;
        first.shutdown().await.unwrap();
        let waited = Instant::now();
        let eof = tokio::time::timeout(Duration::from_secs(8), first.read(&mut buf)).await;
        let _ = closed_tx.send((eof.map(|r| r.map(|n| n == 0)), waited.elapsed()));
        // The next request comes on a new connection.
        let (mut second, _) = listener.accept().await.unwrap();
        let _ = second.read(&mut buf).await;
        let _ = second
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond")
            .await;
    });
    let gw = Gateway::start(TIMEOUTS, &url).await;
    let first = gw.get("/one", &[]).await;
    assert_eq!(
        (first.status.as_u16(), first.text().as_str()),
        (200, "first")
    );
    let _ = answered_tx.send(());
    let (eof, after) = closed_rx.await.unwrap();
    assert!(
        matches!(eof, Ok(Ok(true))),
        "the gateway must close an idle connection the server closed (waited {after:?}): {eof:?}"
    );
    let second = gw.get("/two", &[]).await;
    assert_eq!(
        (second.status.as_u16(), second.text().as_str()),
        (200, "second")
    );
}
