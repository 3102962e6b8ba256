//! One conformance suite for every state store backend — memory, SQLite (a file in a temporary
//! directory) and Redis (a real `redis-server` per test, on a free port) — plus what only one
//! backend has: SQLite's restart durability and schema check, Redis's outage recovery and
//! Sentinel. Each backend is opened twice on the same state (two processes or replicas; the
//! memory store can only share itself), so sharing is tested, not assumed.

mod common;
use common::redis::{RedisServer, free_port};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tempfile::TempDir;
use tokio::sync::broadcast;

use authgate::clock::unix_now;
use authgate::state::store::{Exchange, NewSession, Rotation, SessionInfo, TokenHash};
use authgate::state::{
    MemoryStore, Quota, RedisStore, Revocation, SqliteStore, Store, StoreError, open,
};

// ---------------------------------------------------------------------------------------------
// Backends

/// Two handles on one store's state, and what keeps that state alive.
struct Backend {
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
    _dir: Option<TempDir>,
    redis: Option<RedisServer>,
}

impl Backend {
    async fn memory() -> Backend {
        let a: Arc<dyn Store> = Arc::new(MemoryStore::default());
        Backend {
            b: a.clone(),
            a,
            _dir: None,
            redis: None,
        }
    }

    async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Backend {
            a: Arc::new(SqliteStore::open(&path).unwrap()),
            b: Arc::new(SqliteStore::open(&path).unwrap()),
            _dir: Some(dir),
            redis: None,
        }
    }

    async fn redis() -> Backend {
        let server = RedisServer::start().await;
        Backend {
            a: Arc::new(RedisStore::connect(&server.url()).await.unwrap()),
            b: Arc::new(RedisStore::connect(&server.url()).await.unwrap()),
            _dir: None,
            redis: Some(server),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn hash(n: u8) -> TokenHash {
    let mut h = [n; 32];
    h[0] = 0xa5;
    h
}

fn claims() -> Map<String, Value> {
    match json!({"role": "admin", "email": "a@example.com"}) {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn session(sid: &str, sub: &str, refresh: TokenHash, expires: u64, idle: u64) -> NewSession {
    NewSession {
        sid: sid.into(),
        sub: sub.into(),
        claims: claims(),
        expires,
        refresh,
        refresh_expires: idle,
    }
}

fn exchange(presented: TokenHash, next: TokenHash, now: u64, reuse_grace: u64) -> Exchange {
    Exchange {
        presented,
        next,
        next_expires: now + 600,
        now,
        reuse_grace,
    }
}

fn rotated(r: Rotation) -> SessionInfo {
    match r {
        Rotation::Rotated(info) => info,
        other => panic!("expected Rotated, got {other:?}"),
    }
}

/// The next revocation on `rx` that satisfies `want`, within `within`.
async fn receive(
    rx: &mut broadcast::Receiver<Revocation>,
    within: Duration,
    want: impl Fn(&Revocation) -> bool,
) -> Option<Revocation> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(r)) if want(&r) => return Some(r),
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
        }
    }
}

fn token(jti: &str, until: u64) -> Revocation {
    Revocation::Token {
        jti: jti.into(),
        until,
    }
}

// ---------------------------------------------------------------------------------------------
// The conformance suite: every backend passes every one of these.

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::memory().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::sqlite().await).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::redis().await).await;
                }
            )*
        }
    };
}

conformance!(
    revocations_are_kept_listed_and_broadcast,
    rotation_allows_a_grace_window_then_kills_the_family,
    unknown_and_expired_tokens_are_invalid,
    ending_a_session_stops_its_tokens,
    ending_a_users_sessions_spares_other_users,
    buckets_allow_a_burst_then_refuse_and_are_shared,
    concurrent_rotations_have_one_winner,
    dropping_the_store_stops_its_feed,
);

async fn revocations_are_kept_listed_and_broadcast(s: Backend) {
    let now = unix_now();
    let mut feed = s.b.subscribe();
    s.a.revoke(token("j1", now + 60)).await.unwrap();
    s.a.revoke(token("gone", now - 1)).await.unwrap();
    let user = Revocation::User {
        sub: "alice".into(),
        before: now,
        until: now + 120,
    };
    s.a.revoke(user.clone()).await.unwrap();
    let session = Revocation::Session {
        sid: "s1".into(),
        until: now + 60,
    };
    s.b.revoke(session.clone()).await.unwrap();

    let started = Instant::now();
    let seen = receive(&mut feed, Duration::from_secs(1), |r| *r == user).await;
    assert_eq!(
        seen,
        Some(user.clone()),
        "the other instance's revocation arrives within 1 s"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    let mut all = s.b.revocations(now).await.unwrap();
    all.sort_by_key(|r| format!("{r:?}"));
    let mut want = vec![token("j1", now + 60), user, session];
    want.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(all, want, "expired revocations are left out");
    assert_eq!(
        s.a.revocations(now + 61).await.unwrap().len(),
        1,
        "only the user cutoff is in force after a minute"
    );
    s.a.ping().await.unwrap();
    assert!(["memory", "sqlite", "redis"].contains(&s.a.kind()));
}

async fn rotation_allows_a_grace_window_then_kills_the_family(s: Backend) {
    let now = unix_now();
    s.a.create_session(session("s1", "alice", hash(1), now + 3600, now + 600))
        .await
        .unwrap();
    let info = rotated(
        s.a.rotate(exchange(hash(1), hash(2), now, 10))
            .await
            .unwrap(),
    );
    assert_eq!(
        (info.sid.as_str(), info.sub.as_str(), info.expires),
        ("s1", "alice", now + 3600)
    );
    assert_eq!(info.claims, claims());

    // The client lost the answer and presents the spent token again within the grace window:
    // another successor, and the family lives on (from the other instance too).
    rotated(
        s.b.rotate(exchange(hash(1), hash(3), now + 5, 10))
            .await
            .unwrap(),
    );
    rotated(
        s.a.rotate(exchange(hash(3), hash(4), now + 6, 10))
            .await
            .unwrap(),
    );

    // After the window the spent token is a stolen one: the session dies.
    assert_eq!(
        s.b.rotate(exchange(hash(1), hash(5), now + 20, 10))
            .await
            .unwrap(),
        Rotation::Reused {
            sid: "s1".into(),
            sub: "alice".into()
        }
    );
    for live in [hash(2), hash(4), hash(5)] {
        assert_eq!(
            s.a.rotate(exchange(live, hash(9), now + 21, 10))
                .await
                .unwrap(),
            Rotation::Invalid,
            "every token of the family is dead"
        );
    }
    assert_eq!(s.a.end_session("s1").await.unwrap(), None);
}

async fn unknown_and_expired_tokens_are_invalid(s: Backend) {
    let now = unix_now();
    let invalid = Rotation::Invalid;
    assert_eq!(
        s.a.rotate(exchange(hash(1), hash(2), now, 10))
            .await
            .unwrap(),
        invalid,
        "unknown"
    );

    // Idle: the token dies unused at `refresh_expires`.
    s.a.create_session(session("idle", "alice", hash(3), now + 3600, now + 10))
        .await
        .unwrap();
    assert_eq!(
        s.b.rotate(exchange(hash(3), hash(4), now + 10, 10))
            .await
            .unwrap(),
        invalid,
        "idle-expired"
    );

    // Absolute: the session ends at `expires`, whatever its tokens say.
    s.a.create_session(session("abs", "alice", hash(5), now + 100, now + 600))
        .await
        .unwrap();
    rotated(
        s.a.rotate(exchange(hash(5), hash(6), now + 50, 10))
            .await
            .unwrap(),
    );
    assert_eq!(
        s.a.rotate(exchange(hash(6), hash(7), now + 100, 10))
            .await
            .unwrap(),
        invalid,
        "absolute-expired"
    );

    // A session already over by the clock.
    s.a.create_session(session("over", "alice", hash(8), now - 1, now - 1))
        .await
        .unwrap();
    assert_eq!(
        s.b.rotate(exchange(hash(8), hash(9), now, 10))
            .await
            .unwrap(),
        invalid,
        "expired session"
    );
}

async fn ending_a_session_stops_its_tokens(s: Backend) {
    let now = unix_now();
    s.a.create_session(session("s1", "alice", hash(1), now + 3600, now + 600))
        .await
        .unwrap();
    rotated(
        s.a.rotate(exchange(hash(1), hash(2), now, 10))
            .await
            .unwrap(),
    );
    let ended = s.b.end_session("s1").await.unwrap().unwrap();
    assert_eq!(
        (ended.sid.as_str(), ended.sub.as_str(), ended.expires),
        ("s1", "alice", now + 3600)
    );
    assert_eq!(ended.claims, claims());
    for t in [hash(1), hash(2)] {
        assert_eq!(
            s.a.rotate(exchange(t, hash(3), now + 1, 10)).await.unwrap(),
            Rotation::Invalid
        );
    }
    assert_eq!(s.a.end_session("s1").await.unwrap(), None);
    assert_eq!(s.a.end_session("never").await.unwrap(), None);
}

async fn ending_a_users_sessions_spares_other_users(s: Backend) {
    let now = unix_now();
    s.a.create_session(session("a1", "alice", hash(1), now + 3600, now + 600))
        .await
        .unwrap();
    s.b.create_session(session("a2", "alice", hash(2), now + 7200, now + 600))
        .await
        .unwrap();
    s.a.create_session(session("b1", "bob", hash(3), now + 3600, now + 600))
        .await
        .unwrap();
    let mut ended = s.b.end_user_sessions("alice").await.unwrap();
    ended.sort();
    assert_eq!(ended, ["a1", "a2"]);
    for t in [hash(1), hash(2)] {
        assert_eq!(
            s.a.rotate(exchange(t, hash(9), now, 10)).await.unwrap(),
            Rotation::Invalid
        );
    }
    assert_eq!(
        rotated(
            s.a.rotate(exchange(hash(3), hash(4), now, 10))
                .await
                .unwrap()
        )
        .sub,
        "bob"
    );
    assert!(s.a.end_user_sessions("alice").await.unwrap().is_empty());
    assert!(s.a.end_user_sessions("nobody").await.unwrap().is_empty());
}

async fn buckets_allow_a_burst_then_refuse_and_are_shared(s: Backend) {
    let quota = Quota::per(3, Duration::from_secs(60)).unwrap();
    // Two replicas drain one bucket together.
    assert_eq!(s.a.take("login:alice", quota).await, Ok(Ok(())));
    assert_eq!(s.b.take("login:alice", quota).await, Ok(Ok(())));
    assert_eq!(s.a.take("login:alice", quota).await, Ok(Ok(())));
    for store in [&s.a, &s.b] {
        let wait = store.take("login:alice", quota).await.unwrap().unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "one interval minus the time spent: {wait:?}"
        );
    }
    assert_eq!(
        s.b.take("login:bob", quota).await,
        Ok(Ok(())),
        "keys are independent"
    );
    // It refills: one more after an interval.
    let fast = Quota::per(1, Duration::from_millis(50)).unwrap();
    assert_eq!(s.a.take("fast", fast).await, Ok(Ok(())));
    assert!(s.b.take("fast", fast).await.unwrap().is_err());
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(s.b.take("fast", fast).await, Ok(Ok(())));
}

async fn concurrent_rotations_have_one_winner(s: Backend) {
    let now = unix_now();
    for round in 0..5u8 {
        let sid = format!("s{round}");
        let first = hash(10 * round + 1);
        s.a.create_session(session(&sid, "alice", first, now + 3600, now + 600))
            .await
            .unwrap();
        let (a, b) = (s.a.clone(), s.b.clone());
        let one = tokio::spawn(async move {
            a.rotate(exchange(first, hash(10 * round + 2), now, 0))
                .await
        });
        let two = tokio::spawn(async move {
            b.rotate(exchange(first, hash(10 * round + 3), now, 0))
                .await
        });
        let results = [one.await.unwrap().unwrap(), two.await.unwrap().unwrap()];
        let winners = results
            .iter()
            .filter(|r| matches!(r, Rotation::Rotated(_)))
            .count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
    }
}

async fn dropping_the_store_stops_its_feed(s: Backend) {
    let mut feed = s.b.subscribe();
    let Backend { a, b, _dir, redis } = s;
    drop((a, b));
    // The feed's sender lives in the store and its background task: once both are gone the
    // receiver sees the end.
    let end = tokio::time::timeout(Duration::from_secs(2), feed.recv()).await;
    assert!(
        matches!(end, Ok(Err(broadcast::error::RecvError::Closed))),
        "{end:?}"
    );
    drop((_dir, redis));
}

// ---------------------------------------------------------------------------------------------
// SQLite only

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let now = unix_now();
    let quota = Quota::per(1, Duration::from_secs(60)).unwrap();
    {
        let store = SqliteStore::open(&path).unwrap();
        store.revoke(token("j1", now + 60)).await.unwrap();
        store
            .create_session(session("s1", "alice", hash(1), now + 3600, now + 600))
            .await
            .unwrap();
        assert_eq!(store.take("k", quota).await, Ok(Ok(())));
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.revocations(now).await.unwrap(),
        [token("j1", now + 60)]
    );
    rotated(
        store
            .rotate(exchange(hash(1), hash(2), now, 10))
            .await
            .unwrap(),
    );
    assert!(
        store.take("k", quota).await.unwrap().is_err(),
        "the bucket is still empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_schema_is_versioned_and_a_newer_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.sort();
    assert_eq!(
        tables,
        ["rate_limits", "refresh_tokens", "revocations", "sessions"]
    );
    conn.pragma_update(None, "user_version", 7).unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).err().unwrap();
    assert!(err.0.contains("newer authgate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_only_token_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    let now = unix_now();
    store
        .create_session(session("s1", "alice", hash(1), now + 3600, now + 600))
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let stored: Vec<u8> = conn
        .query_row("SELECT hash FROM refresh_tokens", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, hash(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sweeps_what_has_expired_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let now = unix_now();
    {
        let store = SqliteStore::open(&path).unwrap();
        store.revoke(token("old", now - 1)).await.unwrap();
        store.revoke(token("live", now + 60)).await.unwrap();
        store
            .create_session(session("over", "alice", hash(1), now - 1, now - 1))
            .await
            .unwrap();
        store
            .create_session(session("idle", "alice", hash(2), now + 60, now - 1))
            .await
            .unwrap();
        let fast = Quota::per(1, Duration::from_millis(1)).unwrap();
        assert_eq!(store.take("k", fast).await, Ok(Ok(())));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count("revocations"), 1, "only the live revocation");
    assert_eq!(count("sessions"), 1, "only the live session");
    assert_eq!(
        count("refresh_tokens"),
        0,
        "the dead session's and the idle token"
    );
    assert_eq!(count("rate_limits"), 0, "the bucket is full again");
}

// ---------------------------------------------------------------------------------------------
// Redis only

/// Runs `call` and checks it fails with a [`StoreError`] within 2 s.
async fn fails_fast<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let result = call.await;
    assert!(result.is_err(), "{what} with Redis down: {result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{what} took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_fast_and_heals() {
    let mut s = Backend::redis().await;
    let mut feed = s.b.subscribe();
    let now = unix_now();
    let quota = Quota::per(3, Duration::from_secs(60)).unwrap();

    s.redis.as_mut().unwrap().kill();
    fails_fast("ping", s.a.ping()).await;
    fails_fast("take", s.a.take("k", quota)).await;
    fails_fast("revoke", s.a.revoke(token("j", now + 60))).await;
    fails_fast("rotate", s.b.rotate(exchange(hash(1), hash(2), now, 0))).await;
    fails_fast("ping again", s.a.ping()).await;

    s.redis.as_mut().unwrap().restart().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.a.ping().await.is_err() || s.b.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the stores never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.a.take("k", quota).await, Ok(Ok(())));

    // The feed resubscribes by itself (messages sent before it is back are lost by design,
    // hence a revocation every 100 ms until one arrives).
    let deadline = Instant::now() + Duration::from_secs(5);
    for n in 0.. {
        assert!(
            Instant::now() < deadline,
            "no revocation arrived after the restart"
        );
        let jti = format!("after-{n}");
        s.a.revoke(token(&jti, now + 60)).await.unwrap();
        let want = token(&jti, now + 60);
        if receive(&mut feed, Duration::from_millis(100), |r| *r == want)
            .await
            .is_some()
        {
            break;
        }
    }
}

/// A plain connection to the test server, to look at (and tamper with) the keys.
async fn raw(server: &RedisServer) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_are_prefixed_and_expire() {
    let s = Backend::redis().await;
    let now = unix_now();
    s.a.revoke(token("j1", now + 60)).await.unwrap();
    s.a.create_session(session("s1", "alice", hash(1), now + 3600, now + 600))
        .await
        .unwrap();
    rotated(
        s.a.rotate(exchange(hash(1), hash(2), now, 10))
            .await
            .unwrap(),
    );
    let quota = Quota::per(3, Duration::from_secs(60)).unwrap();
    assert_eq!(s.a.take("login:alice", quota).await, Ok(Ok(())));

    let mut conn = raw(s.redis.as_ref().unwrap()).await;
    let mut keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    let hex2: String = hash(2).iter().map(|b| format!("{b:02x}")).collect();
    for want in [
        "authgate:revocations".to_owned(),
        "authgate:session:s1".into(),
        "authgate:family:s1".into(),
        "authgate:user:alice:sessions".into(),
        format!("authgate:refresh:{hex2}"),
        "authgate:rl:login:alice".into(),
    ] {
        assert!(keys.contains(&want), "{want} in {keys:?}");
    }
    for key in &keys {
        assert!(key.starts_with("authgate:"), "{key}");
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if key != "authgate:revocations" {
            assert!(ttl > 0, "{key} expires by itself (PTTL {ttl})");
        }
    }
    let lock: bool = ::redis::cmd("EXISTS")
        .arg("authgate:lock:s1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!lock, "the rotation lock is released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rotation_waits_for_another_replicas_lock() {
    let s = Backend::redis().await;
    let now = unix_now();
    s.a.create_session(session("s1", "alice", hash(1), now + 3600, now + 600))
        .await
        .unwrap();
    let mut conn = raw(s.redis.as_ref().unwrap()).await;
    let _: () = ::redis::cmd("SET")
        .arg("authgate:lock:s1")
        .arg("another replica")
        .arg("PX")
        .arg(5000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    let busy = s.a.rotate(exchange(hash(1), hash(2), now, 10)).await;
    assert!(busy.is_err(), "{busy:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    // Released (or expired): the token was not spent meanwhile and works.
    let _: () = ::redis::cmd("DEL")
        .arg("authgate:lock:s1")
        .query_async(&mut conn)
        .await
        .unwrap();
    rotated(
        s.a.rotate(exchange(hash(1), hash(2), now, 10))
            .await
            .unwrap(),
    );
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl command.
fn make_certs(dir: &Path) {
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1";
    for args in [
        format!("req -x509 {ec} -keyout ca.key -out ca.crt -subj /CN=authgate-test-ca"),
        format!("req {ec} -keyout server.key -out server.csr -subj /CN=127.0.0.1"),
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
         -days 1 -extfile ext"
            .into(),
    ] {
        let out = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl ({e}): run ./scripts/test.sh"));
        assert!(out.status.success(), "openssl {args}: {out:?}");
    }
}

/// `rediss://` against a real TLS server: refused while the CA is unknown, and working in a
/// process that trusts it (`SSL_CERT_FILE`, read by the system-roots loader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let mut server = None;
    for _ in 0..5 {
        let (plain, tls) = (free_port(), free_port());
        let file = |name: &str| dir.path().join(name).display().to_string();
        let args = [
            "--port".into(),
            plain.to_string(),
            "--tls-port".into(),
            tls.to_string(),
            "--tls-cert-file".into(),
            file("server.crt"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ];
        if let Some(s) = RedisServer::spawn(&args, plain, None).await {
            server = Some((s, tls));
            break;
        }
    }
    let (_server, tls) = server.expect("a TLS redis-server did not start");
    let url = format!("rediss://127.0.0.1:{tls}/0");
    assert!(
        RedisStore::connect(&url).await.is_err(),
        "a certificate from an unknown CA is refused"
    );
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "redis_over_tls_child",
            "--ignored",
            "--nocapture",
        ])
        .env("SSL_CERT_FILE", dir.path().join("ca.crt"))
        .env("AUTHGATE_TEST_REDISS_URL", &url)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&child.stderr)
    );
    assert!(out.contains("1 passed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by redis_over_tls, in a child process that trusts the test CA"]
async fn redis_over_tls_child() {
    let url = std::env::var("AUTHGATE_TEST_REDISS_URL").expect("run through redis_over_tls");
    let a = RedisStore::connect(&url).await.unwrap();
    let b = RedisStore::connect(&url).await.unwrap();
    let mut feed = b.subscribe();
    let now = unix_now();
    let r = token("j1", now + 60);
    a.revoke(r.clone()).await.unwrap();
    let seen = receive(&mut feed, Duration::from_secs(1), |x| *x == r).await;
    assert!(seen.is_some(), "the feed works over TLS too");
    assert!(!b.revocations(now).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_through_sentinel() {
    let primary = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut sentinel = None;
    for _ in 0..5 {
        let port = free_port();
        let conf = dir.path().join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {} 1\n",
                primary.port
            ),
        )
        .unwrap();
        let args = [conf.display().to_string(), "--sentinel".into()];
        sentinel = RedisServer::spawn(&args, port, None).await;
        if sentinel.is_some() {
            break;
        }
    }
    let sentinel = sentinel.expect("redis-server --sentinel did not start");
    let url = format!("redis+sentinel://127.0.0.1:{}/mymaster/0", sentinel.port);
    let a = RedisStore::connect(&url).await.unwrap();
    let b = RedisStore::connect(&url).await.unwrap();
    let mut feed = b.subscribe();
    let now = unix_now();
    let r = token("j1", now + 60);
    a.revoke(r.clone()).await.unwrap();
    let seen = receive(&mut feed, Duration::from_secs(1), |x| *x == r).await;
    assert!(
        seen.is_some(),
        "no revocation arrived through the sentinel's primary"
    );
    a.create_session(session("s1", "alice", hash(1), now + 3600, now + 600))
        .await
        .unwrap();
    rotated(b.rotate(exchange(hash(1), hash(2), now, 10)).await.unwrap());
    // The data is on the primary the sentinel named.
    let direct = RedisStore::connect(&primary.url()).await.unwrap();
    assert!(!direct.revocations(now).await.unwrap().is_empty());

    let wrong = format!("redis+sentinel://127.0.0.1:{}/nosuch/0", sentinel.port);
    assert!(RedisStore::connect(&wrong).await.is_err());
    drop(dir);
}

// ---------------------------------------------------------------------------------------------
// Picking a store by URL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_open_by_url() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(open("memory:", dir.path()).await.unwrap().kind(), "memory");

    let store = open("sqlite:state.db", dir.path()).await.unwrap();
    assert_eq!(store.kind(), "sqlite");
    assert!(
        dir.path().join("state.db").exists(),
        "relative to the config directory"
    );
    let abs = dir.path().join("abs.db");
    let store = open(
        &format!("sqlite:{}", abs.display()),
        Path::new("/nonexistent"),
    )
    .await
    .unwrap();
    assert_eq!(store.kind(), "sqlite");
    assert!(abs.exists(), "absolute paths stay as they are");

    let server = RedisServer::start().await;
    assert_eq!(
        open(&server.url(), dir.path()).await.unwrap().kind(),
        "redis"
    );

    for (url, says) in [
        (
            "foo:bar",
            "`foo:` is not a store: use memory:, sqlite:PATH or redis://",
        ),
        ("postgres://u:secret@h/db", "`postgres:` is not a store"),
        ("memory", "`memory` is not a store"),
        ("sqlite:", "sqlite:PATH"),
    ] {
        let err = open(url, dir.path()).await.err().unwrap();
        assert!(err.0.contains(says), "{url}: {err}");
        assert!(!err.0.contains("secret"), "{url}: {err}");
    }
}

/// A replica that starts while Redis is down starts anyway: calls fail until Redis answers,
/// then the store connects by itself and its change feed works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_down_at_start_is_connected_once_it_answers() {
    let port = free_port();
    let started = Instant::now();
    let store = open(&format!("redis://127.0.0.1:{port}/0"), Path::new("."))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(store.kind(), "redis");
    let err = store.ping().await.unwrap_err();
    assert!(err.0.starts_with("redis"), "{err}");
    let _server = RedisServer::start_on(port)
        .await
        .expect("the port was free a moment ago");
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut feed = store.subscribe();
    let r = Revocation::Token {
        jti: "late".into(),
        until: unix_now() + 60,
    };
    store.revoke(r.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), feed.recv())
        .await
        .expect("the feed delivers")
        .unwrap();
    assert_eq!(got, r);
}
