//! Durable, shared state with real processes: the `authgate` binary on a SQLite file survives a
//! restart; two binaries on one Redis share revocations (within a second), refresh tokens and
//! login limits; Redis killed under load costs valid tokens nothing, turns login and logout
//! into 503s, and heals by itself; `authgate revoke` from another process is enforced within
//! a second.
mod common;
use common::*;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

/// A config for the binary: the standard routes, a login with alice and bob, refresh tokens,
/// and the given store.
fn config(dir: &tempfile::TempDir, up: &Upstream, store: &str) -> std::path::PathBuf {
    let (alice, bob) = user_hashes();
    let text = STANDARD
        .replace("{UPSTREAM}", &up.url())
        .replace("{SECRET}", SECRET)
        .replace(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"127.0.0.1:0\"\nadmin: {{ listen: \"127.0.0.1:0\" }}\nstate: {{ store: \"{store}\" }}"),
        )
        .replace("  leeway: 0s\n", "  leeway: 0s\n  refresh: { ttl: 1h, idle_ttl: 10m, reuse_grace: 0s }\n")
        .replace(
            "upstreams:\n",
            &format!(
                "login:\n  rate_limit: {{ per_username: {{ requests: 4, per: 1m }} }}\n  users:\n    - {{ username: alice, password_hash: \"{alice}\", claims: {{ roles: [admin] }} }}\n    - {{ username: bob, password_hash: \"{bob}\" }}\nupstreams:\n"
            ),
        );
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// (access token, refresh token).
async fn login(addr: std::net::SocketAddr, user: &str, password: &str) -> (String, String) {
    let body = json!({"username": user, "password": password}).to_string();
    let r = send(
        addr,
        "POST",
        "/auth/login",
        &[("content-type", "application/json")],
        body.into(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    (
        v["access_token"].as_str().unwrap().to_owned(),
        v["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn get(addr: std::net::SocketAddr, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    send(
        addr,
        "GET",
        "/app/x",
        &[("authorization", &auth)],
        bytes::Bytes::new(),
    )
    .await
    .status
    .as_u16()
}

async fn logout(addr: std::net::SocketAddr, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    send(
        addr,
        "POST",
        "/auth/logout",
        &[("authorization", &auth)],
        bytes::Bytes::new(),
    )
    .await
}

async fn refresh(addr: std::net::SocketAddr, token: &str) -> Reply {
    let body = json!({"refresh_token": token}).to_string();
    send(
        addr,
        "POST",
        "/auth/refresh",
        &[("content-type", "application/json")],
        body.into(),
    )
    .await
}

/// How long until `token` is refused on `addr` (polled every 20 ms, at most 5 s).
async fn until_refused(addr: std::net::SocketAddr, token: &str) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if get(addr, token).await == 401 {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the token was never refused");
}

fn stop(mut gw: Running) {
    signal(&gw.child, "-TERM");
    assert!(gw.child.wait().unwrap().success());
}

fn revoke_cli(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("revoke")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("AUTHGATE_CONFIG")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_survives_a_restart_and_takes_cli_revocations() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(&dir, &up, "sqlite:state.db");
    let gw = start_binary(&path);
    let (out, out_refresh) = login(gw.addr, "alice", ALICE_PASSWORD).await;
    let (kept, kept_refresh) = login(gw.addr, "alice", ALICE_PASSWORD).await;
    assert_eq!(logout(gw.addr, &out).await.status, 204);
    stop(gw);

    // A new process on the same file still refuses the logged-out session and rotates the
    // other session's refresh token.
    let gw = start_binary(&path);
    assert_eq!(
        get(gw.addr, &out).await,
        401,
        "a restart un-revoked a session"
    );
    assert_eq!(refresh(gw.addr, &out_refresh).await.status, 401);
    assert_eq!(get(gw.addr, &kept).await, 200);
    assert_eq!(refresh(gw.addr, &kept_refresh).await.status, 200);

    // `authgate revoke` from another process: enforced within a second.
    let (bob, _) = login(gw.addr, "bob", BOB_PASSWORD).await;
    let sid = payload(&bob)["sid"].as_str().unwrap().to_owned();
    let cli = revoke_cli(&path, &["--sid", &sid]);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let took = until_refused(gw.addr, &bob).await;
    assert!(took < Duration::from_secs(1), "enforced after {took:?}");
    let cli = revoke_cli(&path, &["--sub", "alice"]);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let took = until_refused(gw.addr, &kept).await;
    assert!(took < Duration::from_secs(1), "enforced after {took:?}");
    stop(gw);
}

#[tokio::test]
async fn revoke_refuses_a_memory_store() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(&dir, &up, "memory:");
    let out = revoke_cli(&path, &["--jti", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be reached from another process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_share_revocations_refresh_tokens_and_login_limits() {
    let redis = RedisServer::start().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(&dir, &up, &redis.url());
    let (a, b) = (start_binary(&path), start_binary(&path));

    // A token from A works on B; a logout on A is refused by B within a second.
    let (token, refresh_token) = login(a.addr, "alice", ALICE_PASSWORD).await;
    assert_eq!(get(b.addr, &token).await, 200);
    assert_eq!(logout(a.addr, &token).await.status, 204);
    let took = until_refused(b.addr, &token).await;
    assert!(took < Duration::from_secs(1), "B refused it after {took:?}");
    assert_eq!(refresh(b.addr, &refresh_token).await.status, 401);

    // A refresh token from A is rotated by B, and the spent one is dead on A.
    let (_, from_a) = login(a.addr, "alice", ALICE_PASSWORD).await;
    let r = refresh(b.addr, &from_a).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(refresh(a.addr, &from_a).await.status, 401);

    // One login limit for both replicas: 4 attempts on bob in all, then 429 on either.
    let wrong = |addr| async move {
        let body = json!({"username": "bob", "password": "nope"}).to_string();
        send(
            addr,
            "POST",
            "/auth/login",
            &[("content-type", "application/json")],
            body.into(),
        )
        .await
        .status
        .as_u16()
    };
    for addr in [a.addr, b.addr, a.addr, b.addr] {
        assert_eq!(wrong(addr).await, 401);
    }
    assert_eq!(wrong(a.addr).await, 429);
    assert_eq!(wrong(b.addr).await, 429);
    stop(a);
    stop(b);
}

/// Valid tokens keep passing on both replicas for the whole outage.
async fn load(
    addrs: [std::net::SocketAddr; 2],
    token: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, u64) {
    let (mut ok, mut failed) = (0, 0);
    while !*stop.borrow() {
        for addr in addrs {
            match get(addr, &token).await {
                200 => ok += 1,
                _ => failed += 1,
            }
        }
    }
    (ok, failed)
}

async fn readyz(gw: &Running) -> u16 {
    send(gw.admin, "GET", "/readyz", &[], bytes::Bytes::new())
        .await
        .status
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_costs_valid_tokens_nothing_and_heals_by_itself() {
    let mut redis = RedisServer::start().await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(&dir, &up, &redis.url());
    let (a, b) = (start_binary(&path), start_binary(&path));
    let (token, _) = login(a.addr, "alice", ALICE_PASSWORD).await;
    let (revoked, _) = login(a.addr, "alice", ALICE_PASSWORD).await;
    assert_eq!(logout(a.addr, &revoked).await.status, 204);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(load([a.addr, b.addr], token.clone(), stop_rx));

    redis.kill();
    // Login, refresh and logout refuse rather than pretend; readiness says why.
    let body = json!({"username": "alice", "password": ALICE_PASSWORD}).to_string();
    let r = send(
        a.addr,
        "POST",
        "/auth/login",
        &[("content-type", "application/json")],
        body.clone().into(),
    )
    .await;
    r.assert_error(503, "store_unavailable", "unavailable");
    logout(b.addr, &token)
        .await
        .assert_error(503, "store_unavailable", "unavailable");
    eventually("both replicas to report not ready", || async {
        readyz(&a).await == 503 && readyz(&b).await == 503
    })
    .await;
    // Revocations known before the outage still hold.
    assert_eq!(get(b.addr, &revoked).await, 401);

    redis.restart().await;
    eventually("a login to work again", || async {
        send(
            a.addr,
            "POST",
            "/auth/login",
            &[("content-type", "application/json")],
            body.clone().into(),
        )
        .await
        .status
            == 200
    })
    .await;
    eventually("both replicas to be ready again", || async {
        readyz(&a).await == 200 && readyz(&b).await == 200
    })
    .await;
    stop_tx.send(true).unwrap();
    let (ok, failed) = traffic.await.unwrap();
    assert_eq!(
        failed, 0,
        "{failed} valid-token requests failed during the outage ({ok} passed)"
    );
    assert!(ok > 20, "too little traffic to show anything: {ok}");
    let metrics = send(a.admin, "GET", "/metrics", &[], bytes::Bytes::new())
        .await
        .text();
    assert!(
        metric(&metrics, "authgate_store_errors_total{operation=\"take\"}") >= 1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "authgate_store_up"), 1.0);
    stop(a);
    stop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_redis_is_down_is_not_ready_until_it_answers() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_binary(&config(&dir, &up, &url));
    assert_eq!(readyz(&gw).await, 503);
    let _redis = RedisServer::start_on(port)
        .await
        .expect("the port was free");
    eventually("ready once Redis answers", || async {
        readyz(&gw).await == 200
    })
    .await;
    let (token, _) = login(gw.addr, "alice", ALICE_PASSWORD).await;
    assert_eq!(get(gw.addr, &token).await, 200);
    stop(gw);
}
