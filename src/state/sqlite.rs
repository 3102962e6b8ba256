//! The SQLite store (`sqlite:PATH`): one file that survives restarts and can be shared by
//! processes on one host (the gateway and `authgate revoke`), not by replicas on other hosts.
//!
//! Tables (schema version 1, kept in `PRAGMA user_version` and migrated at open):
//!
//! - `revocations(seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT, until INTEGER)`: one row
//!   per revocation, `body` its JSON. `seq` only ever grows (`AUTOINCREMENT` never reuses the
//!   number of a deleted row), so it is the change feed's cursor: every store polls
//!   `WHERE seq > cursor` and broadcasts what another process wrote.
//! - `sessions(sid TEXT PRIMARY KEY, sub TEXT, claims TEXT, expires INTEGER)`: `claims` is the
//!   JSON object access tokens of the session carry.
//! - `refresh_tokens(hash BLOB PRIMARY KEY, sid TEXT, expires INTEGER, spent INTEGER NULL)`:
//!   keyed by the SHA-256 of the token, never the token. A spent token is kept (with the time
//!   it was spent) until its session ends, to recognise reuse.
//! - `rate_limits(key TEXT PRIMARY KEY, tat_ms INTEGER)`: a GCRA bucket's theoretical arrival
//!   time in wall-clock milliseconds (wall clock because processes share it); no row is a full
//!   bucket.
//!
//! The connection runs in WAL mode (readers never wait for the writer) with a busy timeout
//! (writers of other processes wait their turn instead of failing). Every call runs on
//! [`tokio::task::spawn_blocking`]: SQLite blocks, the async workers must not. Writes that read
//! first (`rotate`, `take`) use `BEGIN IMMEDIATE`, so two processes cannot both read the same
//! state and both act on it. A background task polls for new revocations every
//! [`POLL_EVERY`] and sweeps expired rows every [`SWEEP_EVERY`] (and once at open); it stops
//! when the store is dropped.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::Quota;
use super::memory::gcra;
use super::store::{
    Exchange, NewSession, Revocation, Rotation, SessionInfo, Store, StoreError, TokenHash,
};
use crate::clock::unix_now;

/// How often the change feed looks for revocations written by other processes (the trait
/// promises at least every 250 ms).
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// How often expired rows are deleted.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How long a call waits for another process's write transaction before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// Most revocations broadcast per poll (the rest come with the next poll).
const POLL_BATCH: i64 = 1000;

/// Schema migrations, in order: entry `n` moves a file from `user_version` n to n + 1.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        body TEXT NOT NULL,
        until INTEGER NOT NULL
    );
    CREATE INDEX revocations_until ON revocations(until);
    CREATE TABLE sessions (
        sid TEXT PRIMARY KEY,
        sub TEXT NOT NULL,
        claims TEXT NOT NULL,
        expires INTEGER NOT NULL
    );
    CREATE INDEX sessions_sub ON sessions(sub);
    CREATE INDEX sessions_expires ON sessions(expires);
    CREATE TABLE refresh_tokens (
        hash BLOB PRIMARY KEY,
        sid TEXT NOT NULL,
        expires INTEGER NOT NULL,
        spent INTEGER
    );
    CREATE INDEX refresh_tokens_sid ON refresh_tokens(sid);
    CREATE TABLE rate_limits (
        key TEXT PRIMARY KEY,
        tat_ms INTEGER NOT NULL
    );
"];

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(format!("sqlite: {e}"))
    }
}

/// A stored JSON value (revocation, claims) that does not read back, or does not write.
fn json(e: serde_json::Error) -> StoreError {
    StoreError(format!("sqlite: bad stored value: {e}"))
}

/// SQLite integers are signed; times and durations here never come near `i64::MAX`.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Wall-clock milliseconds: buckets are shared by processes, which share no monotonic clock.
fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

type Shared = Arc<Mutex<Connection>>;

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the connection leaves at most an open transaction, which rusqlite
    // rolls back when it unwinds: the connection itself is still fine.
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` on the connection on a blocking thread.
async fn call<T, F>(conn: &Shared, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
{
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || f(&mut lock(&conn)))
        .await
        .map_err(|e| StoreError(format!("sqlite call failed: {e}")))?
}

/// `sqlite:PATH` — see the module documentation.
pub struct SqliteStore {
    conn: Shared,
    changes: broadcast::Sender<Revocation>,
    /// Stops the poll-and-sweep task when the store goes.
    _stop: DropGuard,
}

impl SqliteStore {
    /// Opens (creating it if needed) the database file at `path`, brings its schema up to
    /// date, sweeps it, and starts the change feed. Needs a Tokio runtime (for the feed).
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError("the sqlite store needs a tokio runtime".into()))?;
        let mut conn = Connection::open(path)
            .map_err(|e| StoreError(format!("cannot open sqlite file {}: {e}", path.display())))?;
        configure(&conn)?;
        migrate(&mut conn)?;
        sweep(&mut conn)?;
        let cursor: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM revocations", [], |r| {
                r.get(0)
            })?;
        let conn = Arc::new(Mutex::new(conn));
        let changes = broadcast::channel(1024).0;
        let stop = CancellationToken::new();
        runtime.spawn(feed(conn.clone(), changes.clone(), cursor, stop.clone()));
        Ok(SqliteStore {
            conn,
            changes,
            _stop: stop.drop_guard(),
        })
    }

    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        call(&self.conn, f).await
    }
}

/// WAL (readers do not block on a writer, and a reader never blocks the writer) and a busy
/// timeout (another process's write makes us wait, not fail).
fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError(format!(
            "sqlite: cannot use WAL journal mode (got {mode})"
        )));
    }
    Ok(())
}

/// Applies the migrations the file has not seen, in one transaction (two processes opening a
/// new file at once: the second waits, then finds it done).
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len();
    let from = usize::try_from(version).unwrap_or(usize::MAX);
    if from > known {
        return Err(StoreError(format!(
            "sqlite: the file has schema version {version}, this authgate knows up to {known}: \
             it was written by a newer authgate"
        )));
    }
    for sql in &MIGRATIONS[from..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", int(known as u64))?;
    tx.commit()?;
    Ok(())
}

/// Deletes what can no longer matter: revocations past `until` (every token they cover has
/// expired), ended sessions, tokens of ended sessions and unspent tokens past their expiry
/// (spent ones stay while their session lives, to recognise reuse), and full buckets.
fn sweep(conn: &mut Connection) -> Result<(), StoreError> {
    let now = int(unix_now());
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM revocations WHERE until <= ?1", [now])?;
    tx.execute("DELETE FROM sessions WHERE expires <= ?1", [now])?;
    tx.execute(
        "DELETE FROM refresh_tokens WHERE sid NOT IN (SELECT sid FROM sessions)
            OR (spent IS NULL AND expires <= ?1)",
        [now],
    )?;
    tx.execute(
        "DELETE FROM rate_limits WHERE tat_ms <= ?1",
        [int(now_millis())],
    )?;
    tx.commit()?;
    Ok(())
}

/// The background task: polls for new revocations (this process's and others') every
/// [`POLL_EVERY`] and broadcasts them; sweeps every [`SWEEP_EVERY`]. Errors are logged and
/// retried at the next tick: the mirror's periodic resync covers any gap.
async fn feed(
    conn: Shared,
    changes: broadcast::Sender<Revocation>,
    mut cursor: i64,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match call(&conn, move |c| poll(c, cursor)).await {
            Ok((next, new)) => {
                cursor = next;
                for r in new {
                    // No receiver yet is fine: a new subscriber resyncs whole.
                    let _ = changes.send(r);
                }
            }
            Err(e) => tracing::warn!(error = %e, "sqlite store: polling revocations failed"),
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = tokio::time::Instant::now();
            if let Err(e) = call(&conn, sweep).await {
                tracing::warn!(error = %e, "sqlite store: sweep failed");
            }
        }
    }
}

/// Revocations written after `cursor`, and the new cursor.
fn poll(conn: &mut Connection, cursor: i64) -> Result<(i64, Vec<Revocation>), StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT seq, body FROM revocations WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = stmt.query_map(params![cursor, POLL_BATCH], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut next = cursor;
    let mut new = Vec::new();
    for row in rows {
        let (seq, body) = row?;
        next = seq;
        match serde_json::from_str(&body) {
            Ok(r) => new.push(r),
            Err(e) => tracing::warn!(seq, error = %e, "sqlite store: unreadable revocation"),
        }
    }
    Ok((next, new))
}

/// Reads a session still in force at `now`.
fn live_session(conn: &Connection, sid: &str, now: u64) -> Result<Option<SessionInfo>, StoreError> {
    let row = conn
        .query_row(
            "SELECT sub, claims, expires FROM sessions WHERE sid = ?1 AND expires > ?2",
            params![sid, int(now)],
            session_row,
        )
        .optional()?;
    row.map(|(sub, claims, expires)| session_info(sid, sub, &claims, expires))
        .transpose()
}

/// `sub, claims, expires` of a `sessions` row.
fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn session_info(
    sid: &str,
    sub: String,
    claims: &str,
    expires: i64,
) -> Result<SessionInfo, StoreError> {
    Ok(SessionInfo {
        sid: sid.to_owned(),
        sub,
        claims: serde_json::from_str::<Map<String, Value>>(claims).map_err(json)?,
        expires: uint(expires),
    })
}

/// Deletes a session and every refresh token of its family; returns it when it existed.
fn end(conn: &Connection, sid: &str) -> Result<Option<SessionInfo>, StoreError> {
    let row = conn
        .query_row(
            "DELETE FROM sessions WHERE sid = ?1 RETURNING sub, claims, expires",
            [sid],
            session_row,
        )
        .optional()?;
    conn.execute("DELETE FROM refresh_tokens WHERE sid = ?1", [sid])?;
    row.map(|(sub, claims, expires)| session_info(sid, sub, &claims, expires))
        .transpose()
}

/// A refresh token's row: its session, when it dies unspent, when it was spent.
struct TokenRow {
    sid: String,
    expires: u64,
    spent: Option<u64>,
}

fn token(conn: &Connection, hash: &TokenHash) -> Result<Option<TokenRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT sid, expires, spent FROM refresh_tokens WHERE hash = ?1",
            [&hash[..]],
            |r| {
                Ok(TokenRow {
                    sid: r.get(0)?,
                    expires: uint(r.get(1)?),
                    spent: r.get::<_, Option<i64>>(2)?.map(uint),
                })
            },
        )
        .optional()?)
}

/// [`Store::rotate`] inside one `BEGIN IMMEDIATE` transaction: the same rules as the memory
/// store, and no other process can read the token between our read and our write.
fn rotate(conn: &mut Connection, x: Exchange) -> Result<Rotation, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(token) = token(&tx, &x.presented)? else {
        return Ok(Rotation::Invalid);
    };
    let Some(info) = live_session(&tx, &token.sid, x.now)? else {
        return Ok(Rotation::Invalid);
    };
    match token.spent {
        Some(at) if x.now.saturating_sub(at) >= x.reuse_grace => {
            end(&tx, &token.sid)?;
            tx.commit()?;
            return Ok(Rotation::Reused {
                sid: token.sid,
                sub: info.sub,
            });
        }
        None if token.expires <= x.now => return Ok(Rotation::Invalid),
        _ => {}
    }
    tx.execute(
        "UPDATE refresh_tokens SET spent = COALESCE(spent, ?2) WHERE hash = ?1",
        params![&x.presented[..], int(x.now)],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO refresh_tokens (hash, sid, expires, spent) VALUES (?1, ?2, ?3, NULL)",
        params![&x.next[..], token.sid, int(x.next_expires.min(info.expires))],
    )?;
    tx.commit()?;
    Ok(Rotation::Rotated(info))
}

/// [`Store::take`] inside one `BEGIN IMMEDIATE` transaction (the memory store's GCRA, in
/// wall-clock milliseconds).
fn take(
    conn: &mut Connection,
    key: &str,
    quota: Quota,
) -> Result<Result<(), Duration>, StoreError> {
    let now = now_millis();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let tat: Option<i64> = tx
        .query_row(
            "SELECT tat_ms FROM rate_limits WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?;
    match gcra(tat.map(uint), now, quota, Duration::from_millis(1)) {
        Ok(tat) => {
            tx.execute(
                "INSERT OR REPLACE INTO rate_limits (key, tat_ms) VALUES (?1, ?2)",
                params![key, int(tat)],
            )?;
            tx.commit()?;
            Ok(Ok(()))
        }
        Err(wait) => Ok(Err(Duration::from_millis(wait))),
    }
}

fn create_session(conn: &mut Connection, s: NewSession) -> Result<(), StoreError> {
    let claims = serde_json::to_string(&s.claims).map_err(json)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT OR REPLACE INTO sessions (sid, sub, claims, expires) VALUES (?1, ?2, ?3, ?4)",
        params![s.sid, s.sub, claims, int(s.expires)],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO refresh_tokens (hash, sid, expires, spent) VALUES (?1, ?2, ?3, NULL)",
        params![&s.refresh[..], s.sid, int(s.refresh_expires.min(s.expires))],
    )?;
    tx.commit()?;
    Ok(())
}

fn end_user_sessions(conn: &mut Connection, sub: &str) -> Result<Vec<String>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let sids = {
        let mut stmt = tx.prepare_cached("SELECT sid FROM sessions WHERE sub = ?1")?;
        let rows = stmt.query_map([sub], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    for sid in &sids {
        end(&tx, sid)?;
    }
    tx.commit()?;
    Ok(sids)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    /// Written only: the feed task broadcasts it with the next poll, like another process's.
    async fn revoke(&self, revocation: Revocation) -> Result<(), StoreError> {
        let body = serde_json::to_string(&revocation).map_err(json)?;
        let until = int(revocation.until());
        self.call(move |c| {
            c.execute(
                "INSERT INTO revocations (body, until) VALUES (?1, ?2)",
                params![body, until],
            )?;
            Ok(())
        })
        .await
    }

    async fn revocations(&self, now: u64) -> Result<Vec<Revocation>, StoreError> {
        self.call(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT body FROM revocations WHERE until > ?1 ORDER BY seq")?;
            let rows = stmt.query_map([int(now)], |r| r.get::<_, String>(0))?;
            let mut all = Vec::new();
            for body in rows {
                all.push(serde_json::from_str(&body?).map_err(json)?);
            }
            Ok(all)
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.changes.subscribe()
    }

    async fn create_session(&self, session: NewSession) -> Result<(), StoreError> {
        self.call(move |c| create_session(c, session)).await
    }

    async fn rotate(&self, exchange: Exchange) -> Result<Rotation, StoreError> {
        self.call(move |c| rotate(c, exchange)).await
    }

    async fn end_session(&self, sid: &str) -> Result<Option<SessionInfo>, StoreError> {
        let sid = sid.to_owned();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ended = end(&tx, &sid)?;
            tx.commit()?;
            Ok(ended)
        })
        .await
    }

    async fn end_user_sessions(&self, sub: &str) -> Result<Vec<String>, StoreError> {
        let sub = sub.to_owned();
        self.call(move |c| end_user_sessions(c, &sub)).await
    }

    async fn take(&self, key: &str, quota: Quota) -> Result<Result<(), Duration>, StoreError> {
        let key = key.to_owned();
        self.call(move |c| take(c, &key, quota)).await
    }
}
