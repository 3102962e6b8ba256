//! Operations: admin endpoints, metrics, request ids, hot reload (file watch and SIGHUP),
//! in-flight requests across reloads, graceful shutdown on SIGTERM, JSON logs without secrets.
mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn health_and_readiness() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = admin(&gw, "/healthz").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok\n"));
    assert_eq!(admin(&gw, "/readyz").await.status, 200);
    assert_eq!(admin(&gw, "/nope").await.status, 404);

    // With a JWKS provider that cannot be reached, the gateway is alive but not ready.
    let dead = dead_addr().await;
    let yaml = STANDARD.replace(
        "  keys:\n",
        &format!(
            "  jwks:\n    - {{ url: \"http://{dead}/jwks\", issuer: \"https://idp/\" }}\n  keys:\n"
        ),
    );
    let gw = Gateway::start(&yaml, &up.url()).await;
    assert_eq!(admin(&gw, "/healthz").await.status, 200);
    let r = admin(&gw, "/readyz").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains(&dead.to_string()), "{}", r.text());
}

/// 1xx only where a 101 can happen: a route with real servers, not the gateway's own
/// endpoints or unmatched requests.
fn only_routes_with_servers_have_a_1xx_series(text: &str) {
    assert!(
        text.contains("authgate_requests_total{route=\"app\",status=\"1xx\"} 0"),
        "{text}"
    );
    for never in ["(login)", "(none)", "(jwks)"] {
        let series = format!("authgate_requests_total{{route=\"{never}\",status=\"1xx\"}}");
        assert!(!text.contains(&series), "{series} in\n{text}");
    }
}

#[tokio::test]
async fn metrics_cover_requests_failures_latency_cache_reloads_and_logins() {
    let up = Upstream::start().await;
    let hash = authgate::login::hash_password("ops-test-password").unwrap();
    let yaml = format!(
        "{STANDARD}login:\n  users:\n    - {{ username: op, password_hash: \"{hash}\" }}\n"
    );
    let gw = Gateway::start(&yaml, &up.url()).await;
    let t = token("alice", json!({"roles": ["admin"]}));
    assert_eq!(gw.get_with_token("/app/a", &t).await.status, 200);
    assert_eq!(gw.get_with_token("/app/b", &t).await.status, 200);
    assert_eq!(
        gw.get_with_token("/app/c", &token("a", json!({"exp": now() - 100})))
            .await
            .status,
        401
    );
    assert_eq!(
        gw.get_with_token("/admin", &token("bob", json!({})))
            .await
            .status,
        403
    );
    assert_eq!(gw.get("/nowhere", &[]).await.status, 404);
    let body = json!({"username": "op", "password": "ops-test-password"}).to_string();
    let r = send(
        gw.addr(),
        "POST",
        "/auth/login",
        &[("content-type", "application/json")],
        body.into(),
    )
    .await;
    assert_eq!(r.status, 200);
    let body = json!({"username": "op", "password": "wrong"}).to_string();
    let r = send(
        gw.addr(),
        "POST",
        "/auth/login",
        &[("content-type", "application/json")],
        body.into(),
    )
    .await;
    assert_eq!(r.status, 401);
    authgate::server::reload(&gw.handle.gateway, &gw.config_path());

    let r = admin(&gw, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text();
    let expect = [
        ("authgate_requests_total{route=\"app\",status=\"2xx\"}", 2.0),
        ("authgate_requests_total{route=\"app\",status=\"4xx\"}", 1.0),
        (
            "authgate_requests_total{route=\"admin\",status=\"4xx\"}",
            1.0,
        ),
        (
            "authgate_requests_total{route=\"(none)\",status=\"4xx\"}",
            1.0,
        ),
        (
            "authgate_requests_total{route=\"(login)\",status=\"2xx\"}",
            1.0,
        ),
        ("authgate_auth_failures_total{reason=\"expired\"}", 1.0),
        (
            "authgate_auth_failures_total{reason=\"insufficient_scope\"}",
            1.0,
        ),
        (
            "authgate_auth_failures_total{reason=\"invalid_credentials\"}",
            1.0,
        ),
        (
            "authgate_upstream_duration_seconds_count{upstream=\"app\"}",
            2.0,
        ),
        ("authgate_claims_cache_hits_total", 1.0),
        ("authgate_claims_cache_misses_total", 3.0),
        ("authgate_config_reloads_total{result=\"ok\"}", 1.0),
        ("authgate_login_attempts_total{result=\"success\"}", 1.0),
        (
            "authgate_login_attempts_total{result=\"invalid_credentials\"}",
            1.0,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(metric(&text, series), want, "{series} in\n{text}");
    }
    assert!(
        text.contains("authgate_upstream_duration_seconds_bucket{le=\"+Inf\",upstream=\"app\"} 2"),
        "{text}"
    );
    only_routes_with_servers_have_a_1xx_series(&text);
    assert!(!text.contains("/app/a"), "paths never become label values");
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_and_generated_otherwise() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = gw
        .get("/public/a", &[("x-request-id", "abc-123.def_4:5")])
        .await;
    assert_eq!(r.headers["x-request-id"], "abc-123.def_4:5");
    assert_eq!(up.only().headers["x-request-id"], "abc-123.def_4:5");
    up.clear();
    for bad in ["has space", &"x".repeat(200), "semi;colon"] {
        let r = gw.get("/public/a", &[("x-request-id", bad)]).await;
        let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 32, "{id}");
        assert_eq!(up.only().headers["x-request-id"], id.as_str());
        up.clear();
    }
    let r = gw.get("/nowhere", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.headers["x-request-id"].len(),
        32,
        "refusals carry an id too"
    );
}

#[tokio::test]
async fn file_edits_reload_and_invalid_edits_keep_the_old_rules() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    authgate::server::watch_files(gw.handle.gateway.clone(), gw.config_path()).unwrap();
    let path = gw.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    assert_eq!(gw.get("/new/x", &[]).await.status, 404);

    // A route added on disk takes effect.
    let added = format!(
        "{original}  - name: new\n    match: {{ path_prefix: /new }}\n    upstream: app\n    auth: none\n"
    );
    std::fs::write(&path, &added).unwrap();
    eventually("the new route", || async {
        gw.get("/new/x", &[]).await.status == 200
    })
    .await;

    // An invalid edit is counted and the running rules keep serving.
    std::fs::write(
        &path,
        added.replace(
            "upstream: app\n    auth: none",
            "upstream: nowhere\n    auth: none",
        ),
    )
    .unwrap();
    eventually("the failed reload to be counted", || async {
        metric(
            &admin(&gw, "/metrics").await.text(),
            "authgate_config_reloads_total{result=\"error\"}",
        ) == 1.0
    })
    .await;
    assert_eq!(
        gw.get("/new/x", &[]).await.status,
        200,
        "the old rules still serve"
    );
    assert!(
        admin(&gw, "/metrics")
            .await
            .text()
            .contains("authgate_config_last_reload_success 0")
    );

    // An editor that saves by writing a new file and renaming it over the old one.
    let tmp = path.with_extension("yaml.swp");
    std::fs::write(&tmp, &original).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    eventually("the route to go away", || async {
        gw.get("/new/x", &[]).await.status == 404
    })
    .await;
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let addr = gw.addr();
    let slow =
        tokio::spawn(
            async move { send(addr, "GET", "/public/slow", &[], bytes::Bytes::new()).await },
        );
    eventually("the slow request to reach the upstream", || async {
        !up.seen().is_empty()
    })
    .await;
    // Remove the public route while the request is in flight.
    let without_public = STANDARD.replace("  - name: public\n    match: { path_prefix: /public }\n    upstream: app\n    auth: none\n", "");
    std::fs::write(
        gw.config_path(),
        without_public
            .replace("{UPSTREAM}", &up.url())
            .replace("{SECRET}", SECRET),
    )
    .unwrap();
    assert!(authgate::server::reload(
        &gw.handle.gateway,
        &gw.config_path()
    ));
    assert_eq!(
        gw.get("/public/other", &[]).await.status,
        404,
        "new requests see the new rules"
    );
    let r = slow.await.unwrap();
    assert_eq!(
        r.status,
        200,
        "the in-flight request completes: {}",
        r.text()
    );
}

#[tokio::test]
async fn a_key_removed_by_a_reload_invalidates_its_tokens_cache_included() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let t = token("alice", json!({}));
    assert_eq!(gw.get_with_token("/app", &t).await.status, 200);
    assert_eq!(
        gw.get_with_token("/app", &t).await.status,
        200,
        "now cached"
    );
    let rotated = STANDARD
        .replace("{UPSTREAM}", &up.url())
        .replace("{SECRET}", "a-different-test-only-secret-0123456789abcdef");
    std::fs::write(gw.config_path(), rotated).unwrap();
    assert!(authgate::server::reload(
        &gw.handle.gateway,
        &gw.config_path()
    ));
    gw.get_with_token("/app", &t)
        .await
        .assert_error(401, "invalid_token", "signature");
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn sighup_reloads_even_without_a_file_change() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = start_binary(&binary_config(&dir, &up.url(), ""));
    signal(&gw.child, "-HUP");
    let admin = gw.admin;
    eventually("a reload counted after SIGHUP", || async move {
        let text = send(admin, "GET", "/metrics", &[], bytes::Bytes::new())
            .await
            .text();
        metric(&text, "authgate_config_reloads_total{result=\"ok\"}") == 1.0
    })
    .await;
    signal(&gw.child, "-TERM");
    assert!(gw.child.wait().unwrap().success());
}

#[tokio::test]
async fn sigterm_lets_a_slow_request_finish_then_exits_0() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = start_binary(&binary_config(&dir, &up.url(), ""));
    let addr = gw.addr;
    let slow =
        tokio::spawn(
            async move { send(addr, "GET", "/public/slow", &[], bytes::Bytes::new()).await },
        );
    eventually("the slow request to reach the upstream", || async {
        !up.seen().is_empty()
    })
    .await;
    signal(&gw.child, "-TERM");
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let status = tokio::task::spawn_blocking(move || gw.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn json_logs_parse_line_by_line_and_never_contain_secrets() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let password = "never-log-this-password-42";
    let hash = authgate::login::hash_password(password).unwrap();
    let extra =
        format!("login:\n  users:\n    - {{ username: logme, password_hash: \"{hash}\" }}\n");
    let path = binary_config(&dir, &up.url(), &extra);
    // Refresh tokens too (they must never be logged either), kept in a SQLite store.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "  leeway: 0s\n",
        "  leeway: 0s\n  refresh: { reuse_grace: 0s }\n",
    );
    std::fs::write(
        &path,
        format!("state: {{ store: \"sqlite:state.db\" }}\n{text}"),
    )
    .unwrap();
    let mut gw = start_binary(&path);
    let t = token("alice", json!({}));
    let auth = format!("Bearer {t}");
    let r = send(
        gw.addr,
        "GET",
        "/app/x?access_token=query-secret-value",
        &[
            ("authorization", &auth),
            ("cookie", "session=cookie-secret-value"),
        ],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        gw.addr,
        "GET",
        "/app/x",
        &[("authorization", "Bearer not.a.jwt")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 401);
    let body = json!({"username": "logme", "password": password}).to_string();
    let r = send(
        gw.addr,
        "POST",
        "/auth/login",
        &[("content-type", "application/json")],
        body.into(),
    )
    .await;
    assert_eq!(r.status, 200);
    let issued = r.json()["access_token"].as_str().unwrap().to_owned();
    let first_refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |token: &str| {
        let body = json!({ "refresh_token": token }).to_string();
        send(
            gw.addr,
            "POST",
            "/auth/refresh",
            &[("content-type", "application/json")],
            body.into(),
        )
    };
    let r = refresh(&first_refresh).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let second_refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
    // Presenting the spent one again: reuse, logged as such (without the token).
    assert_eq!(refresh(&first_refresh).await.status, 401);
    let wrong = json!({"username": "logme", "password": format!("{password}-wrong")}).to_string();
    send(
        gw.addr,
        "POST",
        "/auth/login",
        &[("content-type", "application/json")],
        wrong.into(),
    )
    .await;
    signal(&gw.child, "-TERM");
    assert!(gw.child.wait().unwrap().success());
    // The reader thread has seen EOF once the process is gone; give it a moment to finish.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !gw
            .logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("\"stopped\""))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = gw.logs.lock().unwrap().clone();
    let mut access = 0;
    for line in &logs {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        for secret in [
            t.as_str(),
            issued.as_str(),
            password,
            "query-secret-value",
            "cookie-secret-value",
            "not.a.jwt",
            SECRET,
            first_refresh.as_str(),
            second_refresh.as_str(),
        ] {
            assert!(
                !line.contains(secret),
                "a log line leaks {secret:?}: {line}"
            );
        }
        if v["message"] == "request" {
            access += 1;
            for field in [
                "method",
                "path",
                "route",
                "status",
                "latency_ms",
                "sub",
                "upstream",
                "request_id",
            ] {
                assert!(v.get(field).is_some(), "access log without {field}: {line}");
            }
        }
    }
    assert_eq!(access, 6, "one line per request:\n{}", logs.join("\n"));
    assert!(
        logs.iter()
            .any(|l| l.contains("a spent refresh token came back")),
        "reuse is logged"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("\"sub\":\"alice\"") && l.contains("\"path\":\"/app/x\""))
    );
}

const LIMITS: &str =
    "server:\n  header_read_timeout: 500ms\n  max_connections: 1\n  max_header_bytes: 8192\n";

#[tokio::test]
async fn slow_headers_are_cut_off_and_large_heads_get_431() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!("{LIMITS}{STANDARD}"), &up.url()).await;
    // Slowloris: a request head that never completes is closed after header_read_timeout.
    let started = Instant::now();
    let (status, _) = raw(
        gw.addr(),
        b"GET /public/x HTTP/1.1\r\nHost: gw\r\nX-Slow: 1",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(status == 0 || status == 408, "status {status}");
    // A head larger than max_header_bytes.
    let big = format!(
        "GET /public/x HTTP/1.1\r\nHost: gw\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let (status, _) = raw(gw.addr(), big.as_bytes()).await;
    assert_eq!(status, 431);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!("{LIMITS}{STANDARD}"), &up.url()).await;
    // The first connection holds the only slot (kept alive after its request).
    let mut first = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    first
        .write_all(b"GET /public/1 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A second connection is not served while the first is open...
    let addr = gw.addr();
    let second = tokio::spawn(async move {
        raw(
            addr,
            b"GET /public/2 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // give it a chance to be (wrongly) served
    assert_eq!(
        up.seen().len(),
        1,
        "the second connection was served over the limit"
    );
    // ...and is served once the first one closes.
    drop(first);
    let (status, _) = second.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(up.seen().len(), 2);
}

/// The file watcher must not wake itself: checking whether the files changed reads them, and
/// those reads are events too. An idle gateway makes next to no read calls (it once re-read its
/// config ten times a second, forever).
#[tokio::test]
async fn an_idle_gateway_does_not_keep_rereading_its_files() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = start_binary(&binary_config(&dir, &up.url(), ""));
    let reads = |pid: u32| -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("syscr: "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let pid = gw.child.id();
    // The watcher's first look at the files happens as it starts, before this.
    let before = reads(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = reads(pid) - before;
    assert!(
        during < 10,
        "an idle gateway made {during} read calls in one second"
    );
    signal(&gw.child, "-TERM");
    assert!(gw.child.wait().unwrap().success());
}
