//! The Redis store (`redis://`, `rediss://` over TLS, `redis+sentinel://`): shared by every
//! replica. A standalone server or a Sentinel-managed primary; not Redis Cluster (the scripts
//! touch keys they derive, which Cluster forbids). `rediss://` checks the server's certificate
//! against the system roots (rustls; `SSL_CERT_FILE` or `SSL_CERT_DIR` replace them, e.g. with a
//! private CA); Sentinel connections are plain TCP.
//!
//! Key layout (every key starts with `authgate:`):
//!
//! - `authgate:revocations` — a sorted set: member = the revocation's JSON, score = its
//!   `until`. A resync is `ZRANGEBYSCORE (now +inf`; every `revoke` also drops the members
//!   past their `until` (`ZREMRANGEBYSCORE -inf now`).
//! - pub/sub channel `authgate:revocations` — each new revocation's JSON, for the mirrors.
//! - `authgate:session:{sid}` — a hash `sub`, `claims` (JSON), `expires`; expires at `expires`.
//! - `authgate:family:{sid}` — a set of the hex hashes of the session's refresh tokens (so
//!   ending a session deletes them all); expires with the session.
//! - `authgate:user:{sub}:sessions` — a set of the user's session ids (logout everywhere);
//!   expires with the user's last session.
//! - `authgate:refresh:{hex sha-256}` — a hash `sid`, `expires`, and `spent` once used; expires
//!   at `expires` while unspent, with its session once spent (kept to recognise reuse).
//! - `authgate:lock:{sid}` — held (`SET NX PX 2000`) while one replica rotates a token of the
//!   session, so refreshes of one session run one at a time across replicas.
//! - `authgate:rl:{key}` — a GCRA bucket's theoretical arrival time in milliseconds of the
//!   Redis server's clock (`TIME`, so replicas with skewed clocks agree); expires when the
//!   bucket is full again.
//!
//! Nothing needs sweeping: every key carries a TTL. `rotate`, `take` and the session writes are
//! Lua scripts, atomic on the server. Every call is bounded by [`CALL_TIMEOUT`] (a dead server
//! is a [`StoreError`], not a hang); the connection manager reconnects by itself, and with
//! Sentinel a failed connection asks the sentinels for the primary again.

use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, ErrorKind, IntoConnectionInfo, RedisError, Script, ServerErrorKind};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::Quota;
use super::store::{
    Exchange, NewSession, Revocation, Rotation, SessionInfo, Store, StoreError, TokenHash,
};
use crate::clock::unix_now;

/// What every key starts with.
pub const PREFIX: &str = "authgate:";
/// Longest any one call waits for Redis, reconnection included.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1500);
/// One TCP (and TLS) connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// One command's answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a per-session rotation lock is held at most (a crashed holder frees it then).
const LOCK_TTL: Duration = Duration::from_secs(2);
/// How long a rotation waits for another replica's rotation of the same session.
const LOCK_WAIT: Duration = Duration::from_secs(1);
const LOCK_RETRY: Duration = Duration::from_millis(20);
/// How often the pub/sub connection is checked (a half-open TCP connection stays silent).
const PUBSUB_PING_EVERY: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const DEFAULT_SENTINEL_PORT: u16 = 26379;

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        StoreError(format!("redis: {e}"))
    }
}

fn json(e: serde_json::Error) -> StoreError {
    StoreError(format!("redis: bad stored value: {e}"))
}

fn key(parts: &[&str]) -> String {
    let mut k = String::from(PREFIX);
    for p in parts {
        k.push_str(p);
    }
    k
}

fn hex(hash: &TokenHash) -> String {
    use std::fmt::Write;
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Where the primary is: a fixed address, or whatever the sentinels say now.
enum Target {
    Direct(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Target {
    fn parse(url: &str) -> Result<Target, StoreError> {
        if url.starts_with("redis+sentinel://") {
            return sentinel(url).map(|c| Target::Sentinel(tokio::sync::Mutex::new(c)));
        }
        Client::open(url)
            .map(Target::Direct)
            .map_err(|e| StoreError(format!("bad redis URL: {e}")))
    }

    async fn client(&self) -> Result<Client, RedisError> {
        match self {
            Target::Direct(client) => Ok(client.clone()),
            Target::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
        }
    }
}

/// `redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service[/db]`: the
/// credentials and database are the primary's; the sentinels are asked without credentials.
fn sentinel(url: &str) -> Result<SentinelClient, StoreError> {
    let bad = |why: &str| StoreError(format!("bad redis+sentinel URL: {why}"));
    let rest = url.trim_start_matches("redis+sentinel://");
    let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no /SERVICE"))?;
    let (auth, hosts) = match authority.rsplit_once('@') {
        Some((auth, hosts)) => (Some(auth), hosts),
        None => (None, authority),
    };
    let mut path = path.split('/');
    let service = path.next().filter(|s| !s.is_empty());
    let service = service.ok_or_else(|| bad("no service name after the hosts"))?;
    let db = match path.next().filter(|d| !d.is_empty()) {
        Some(d) => d
            .parse::<i64>()
            .map_err(|_| bad("the database is not a number"))?,
        None => 0,
    };
    let mut nodes = Vec::new();
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        let has_port = host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
        nodes.push(match has_port {
            true => format!("redis://{host}"),
            false => format!("redis://{host}:{DEFAULT_SENTINEL_PORT}"),
        });
    }
    if nodes.is_empty() {
        return Err(bad("no sentinel hosts"));
    }
    // The redis crate reads (and percent-decodes) the credentials from a plain URL.
    let primary = match auth {
        Some(auth) => format!("redis://{auth}@localhost/{db}"),
        None => format!("redis://localhost/{db}"),
    };
    let primary = primary
        .into_connection_info()
        .map_err(|_| bad("unreadable credentials"))?;
    let node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(primary.redis_settings().clone());
    SentinelClient::build(nodes, service, Some(node), SentinelServerType::Master)
        .map_err(|e| bad(&e.to_string()))
}

/// Reconnects quickly and gives up quickly: a caller waits at most [`CALL_TIMEOUT`] anyway,
/// and the next call starts a new attempt.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

/// The command connection: one reconnecting multiplexed connection, shared by every call.
struct Link {
    target: Target,
    current: Mutex<Option<ConnectionManager>>,
}

impl Link {
    fn current(&self) -> std::sync::MutexGuard<'_, Option<ConnectionManager>> {
        // Only an `Option` swap happens under this lock: a panic cannot leave it inconsistent.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn manager(&self) -> Result<ConnectionManager, RedisError> {
        if let Some(m) = self.current().clone() {
            return Ok(m);
        }
        let client = self.target.client().await?;
        let m = ConnectionManager::new_with_config(client, manager_config()).await?;
        *self.current() = Some(m.clone());
        Ok(m)
    }

    /// After a connection-level failure behind Sentinel, the primary may have moved (or
    /// become a read-only replica): forget the connection so the next call asks again. A
    /// direct connection's manager reconnects to the same address by itself.
    fn failed(&self, e: Option<&RedisError>) {
        if !matches!(self.target, Target::Sentinel(_)) {
            return;
        }
        let moved = e.is_none_or(|e| {
            e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
        });
        if moved {
            *self.current() = None;
        }
    }

    /// Runs one request on the connection, within [`CALL_TIMEOUT`].
    async fn run<T, F, Fut>(&self, request: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let attempt = async {
            let result = match self.manager().await {
                Ok(m) => request(m).await,
                Err(e) => Err(e),
            };
            result.inspect_err(|e| self.failed(Some(e)))
        };
        match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
            Ok(result) => Ok(result?),
            Err(_) => {
                self.failed(None);
                Err(StoreError(format!(
                    "redis: no answer within {} ms",
                    CALL_TIMEOUT.as_millis()
                )))
            }
        }
    }
}

/// Ends one session (shared by the scripts below): deletes its tokens, its hash and its entry
/// in the user's index; returns the session's `sub`, `claims`, `expires` (false when gone).
const END_SESSION_LUA: &str = r"
local function end_session(p, sid)
  local skey = p .. 'session:' .. sid
  local fkey = p .. 'family:' .. sid
  local s = redis.call('HMGET', skey, 'sub', 'claims', 'expires')
  for _, h in ipairs(redis.call('SMEMBERS', fkey)) do
    redis.call('DEL', p .. 'refresh:' .. h)
  end
  redis.call('DEL', fkey, skey)
  if s[1] then redis.call('SREM', p .. 'user:' .. s[1] .. ':sessions', sid) end
  return s
end
";

/// ARGV: prefix, sid, sub, claims, expires, token hex, token expires, now.
const CREATE_SESSION_LUA: &str = r"
local p, sid, sub, expires = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local skey = p .. 'session:' .. sid
redis.call('HSET', skey, 'sub', sub, 'claims', ARGV[4], 'expires', expires)
redis.call('EXPIREAT', skey, expires)
local tkey = p .. 'refresh:' .. ARGV[6]
redis.call('HSET', tkey, 'sid', sid, 'expires', ARGV[7])
redis.call('EXPIREAT', tkey, ARGV[7])
local fkey = p .. 'family:' .. sid
redis.call('SADD', fkey, ARGV[6])
redis.call('EXPIREAT', fkey, expires)
local ukey = p .. 'user:' .. sub .. ':sessions'
for _, old in ipairs(redis.call('SMEMBERS', ukey)) do
  if redis.call('EXISTS', p .. 'session:' .. old) == 0 then redis.call('SREM', ukey, old) end
end
redis.call('SADD', ukey, sid)
local left = tonumber(expires) - tonumber(ARGV[8])
if redis.call('TTL', ukey) < left then redis.call('EXPIRE', ukey, left) end
return 1
";

/// KEYS: presented token, successor. ARGV: prefix, now, grace, successor expires, successor
/// hex. The memory store's rules; returns {'invalid'}, {'reused', sid, sub} or
/// {'rotated', sid, sub, claims, expires}.
const ROTATE_LUA: &str = r"
local p, now, grace = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('HMGET', KEYS[1], 'sid', 'expires', 'spent')
if not t[1] then return {'invalid'} end
local sid = t[1]
local s = redis.call('HMGET', p .. 'session:' .. sid, 'sub', 'claims', 'expires')
if not s[1] or tonumber(s[3]) <= now then return {'invalid'} end
if t[3] then
  if math.max(now - tonumber(t[3]), 0) >= grace then
    end_session(p, sid)
    return {'reused', sid, s[1]}
  end
elseif tonumber(t[2]) <= now then
  return {'invalid'}
else
  redis.call('HSET', KEYS[1], 'spent', ARGV[2])
  redis.call('EXPIREAT', KEYS[1], s[3])
end
local nexp = ARGV[4]
if tonumber(nexp) > tonumber(s[3]) then nexp = s[3] end
redis.call('HSET', KEYS[2], 'sid', sid, 'expires', nexp)
redis.call('EXPIREAT', KEYS[2], nexp)
redis.call('SADD', p .. 'family:' .. sid, ARGV[5])
return {'rotated', sid, s[1], s[2], s[3]}
";

/// ARGV: prefix, sid. Returns {sid, sub, claims, expires}, or {} when there was none.
const END_ONE_LUA: &str = r"
local s = end_session(ARGV[1], ARGV[2])
if not s[1] then return {} end
return {ARGV[2], s[1], s[2], s[3]}
";

/// ARGV: prefix, sub. Returns the ids of the sessions ended.
const END_USER_LUA: &str = r"
local ukey = ARGV[1] .. 'user:' .. ARGV[2] .. ':sessions'
local ended = {}
for _, sid in ipairs(redis.call('SMEMBERS', ukey)) do
  local s = end_session(ARGV[1], sid)
  if s[1] then table.insert(ended, sid) end
end
redis.call('DEL', ukey)
return ended
";

/// KEYS: the bucket. ARGV: interval ms, tolerance ms. The memory store's `gcra` on the
/// server's clock; returns {1, 0} (taken) or {0, wait ms}.
const TAKE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if tat - now > tolerance then return {0, tat - now - tolerance} end
local new = tat + interval
if new > now then
  redis.call('SET', KEYS[1], string.format('%d', new), 'PX', string.format('%d', new - now))
end
return {1, 0}
";

/// Releases a rotation lock only if we still hold it (it may have expired and been taken).
const UNLOCK_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

static CREATE_SESSION: LazyLock<Script> = LazyLock::new(|| Script::new(CREATE_SESSION_LUA));
static ROTATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{END_SESSION_LUA}{ROTATE_LUA}")));
static END_ONE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{END_SESSION_LUA}{END_ONE_LUA}")));
static END_USER: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{END_SESSION_LUA}{END_USER_LUA}")));
static TAKE: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_LUA));
static UNLOCK: LazyLock<Script> = LazyLock::new(|| Script::new(UNLOCK_LUA));

/// The channel (and sorted set) of revocations.
fn revocations_key() -> String {
    key(&["revocations"])
}

/// `redis://`, `rediss://`, `redis+sentinel://` — see the module documentation.
pub struct RedisStore {
    link: Arc<Link>,
    changes: broadcast::Sender<Revocation>,
    /// Stops the pub/sub task when the store goes.
    _stop: DropGuard,
}

impl RedisStore {
    /// Connects (and checks the server answers, so a wrong URL or password fails at start),
    /// then subscribes to revocations: once it returns, [`Store::subscribe`] sees every
    /// revocation made from then on (until a lost connection).
    /// Checks a URL without connecting (a bad URL is a config error, not an outage).
    pub fn check_url(url: &str) -> Result<(), StoreError> {
        Target::parse(url).map(|_| ())
    }

    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let link = Arc::new(Link {
            target: Target::parse(url)?,
            current: Mutex::new(None),
        });
        link.run(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await?;
        let changes = broadcast::channel(1024).0;
        let stop = CancellationToken::new();
        let (subscribed, first) = oneshot::channel();
        let retry = Retry {
            backoff: MIN_BACKOFF,
            subscribed: Some(subscribed),
        };
        tokio::spawn(listen(link.clone(), changes.clone(), retry, stop.clone()));
        // Dropping the guard on failure stops the task.
        let stop = stop.drop_guard();
        match tokio::time::timeout(CALL_TIMEOUT, first).await {
            Ok(Ok(())) => Ok(RedisStore {
                link,
                changes,
                _stop: stop,
            }),
            _ => Err(StoreError(
                "redis: cannot subscribe to the revocation channel".into(),
            )),
        }
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'static>,
    ) -> Result<T, StoreError> {
        self.link
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
    }

    /// Takes the session's rotation lock, waiting up to [`LOCK_WAIT`] for another replica.
    async fn lock(&self, lock: &str, holder: &str) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            let (lock, holder) = (lock.to_owned(), holder.to_owned());
            let taken: Option<String> = self
                .link
                .run(|mut c| async move {
                    redis::cmd("SET")
                        .arg(lock)
                        .arg(holder)
                        .arg("NX")
                        .arg("PX")
                        .arg(LOCK_TTL.as_millis().to_string())
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if taken.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError(
                    "redis: another refresh of this session is still running".into(),
                ));
            }
            tokio::time::sleep(LOCK_RETRY).await;
        }
    }

    async fn unlock(&self, lock: String, holder: String) {
        let mut unlock = UNLOCK.prepare_invoke();
        unlock.key(lock).arg(holder);
        if let Err(e) = self.script::<i64>(unlock).await {
            // It expires by itself within LOCK_TTL.
            tracing::warn!(error = %e, "redis store: releasing a rotation lock failed");
        }
    }

    /// The rotation script itself (the caller holds the session's lock).
    async fn rotate_locked(&self, x: &Exchange) -> Result<Rotation, StoreError> {
        let mut rotate = ROTATE.prepare_invoke();
        rotate
            .key(key(&["refresh:", &hex(&x.presented)]))
            .key(key(&["refresh:", &hex(&x.next)]))
            .arg(PREFIX)
            .arg(x.now)
            .arg(x.reuse_grace)
            .arg(x.next_expires)
            .arg(hex(&x.next));
        let answer: Vec<String> = self.script(rotate).await?;
        rotation(answer)
    }
}

/// Reads the rotation script's answer.
fn rotation(answer: Vec<String>) -> Result<Rotation, StoreError> {
    match answer.as_slice() {
        [kind] if kind == "invalid" => Ok(Rotation::Invalid),
        [kind, sid, sub] if kind == "reused" => Ok(Rotation::Reused {
            sid: sid.clone(),
            sub: sub.clone(),
        }),
        [kind, sid, sub, claims, expires] if kind == "rotated" => {
            Ok(Rotation::Rotated(session_info(sid, sub, claims, expires)?))
        }
        _ => Err(StoreError(format!(
            "redis: unexpected rotation answer {answer:?}"
        ))),
    }
}

fn session_info(
    sid: &str,
    sub: &str,
    claims: &str,
    expires: &str,
) -> Result<SessionInfo, StoreError> {
    Ok(SessionInfo {
        sid: sid.to_owned(),
        sub: sub.to_owned(),
        claims: serde_json::from_str::<Map<String, Value>>(claims).map_err(json)?,
        expires: expires
            .parse()
            .map_err(|_| StoreError(format!("redis: bad session expiry {expires:?}")))?,
    })
}

/// The pub/sub task: relays `authgate:revocations` messages to the broadcast channel, and
/// reconnects with backoff whenever the subscription is lost. Messages published while it is
/// away are lost; the mirror's periodic resync heals that.
async fn listen(
    link: Arc<Link>,
    changes: broadcast::Sender<Revocation>,
    mut retry: Retry,
    stop: CancellationToken,
) {
    loop {
        let lost = tokio::select! {
            _ = stop.cancelled() => return,
            lost = relay(&link, &changes, &mut retry) => lost,
        };
        let wait = retry.backoff;
        tracing::warn!(error = %lost, retry_in_ms = wait.as_millis(), "redis store: revocation feed lost");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        retry.backoff = (wait * 2).min(MAX_BACKOFF);
    }
}

/// The pub/sub task's reconnection state.
struct Retry {
    /// The wait before the next attempt.
    backoff: Duration,
    /// Told once, at the first subscription ([`RedisStore::connect`] waits for it).
    subscribed: Option<oneshot::Sender<()>>,
}

/// Subscribes and relays until the connection fails; returns why. Resets the backoff once
/// subscribed.
async fn relay(
    link: &Link,
    changes: &broadcast::Sender<Revocation>,
    retry: &mut Retry,
) -> StoreError {
    let subscribed = tokio::time::timeout(CALL_TIMEOUT, async {
        let client = link.target.client().await?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(revocations_key()).await?;
        Ok::<_, RedisError>(pubsub)
    })
    .await;
    let pubsub = match subscribed {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => return e.into(),
        Err(_) => return StoreError("redis: pub/sub connection timed out".into()),
    };
    retry.backoff = MIN_BACKOFF;
    if let Some(subscribed) = retry.subscribed.take() {
        let _ = subscribed.send(());
    }
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PUBSUB_PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return StoreError("redis: pub/sub connection closed".into());
                };
                match serde_json::from_slice(message.get_payload_bytes()) {
                    Ok(r) => { let _ = changes.send(r); }
                    Err(e) => tracing::warn!(error = %e, "redis store: unreadable revocation message"),
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.into(),
                    Err(_) => return StoreError("redis: pub/sub ping timed out".into()),
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.link
            .run(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await
    }

    async fn revoke(&self, revocation: Revocation) -> Result<(), StoreError> {
        let body = serde_json::to_string(&revocation).map_err(json)?;
        let until = revocation.until();
        let now = unix_now();
        self.link
            .run(|mut c| async move {
                let set = revocations_key();
                redis::pipe()
                    .atomic()
                    .cmd("ZADD")
                    .arg(&set)
                    .arg(until)
                    .arg(&body)
                    .ignore()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&set)
                    .arg("-inf")
                    .arg(now)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(&set)
                    .arg(&body)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    async fn revocations(&self, now: u64) -> Result<Vec<Revocation>, StoreError> {
        let bodies: Vec<String> = self
            .link
            .run(|mut c| async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(revocations_key())
                    .arg(format!("({now}"))
                    .arg("+inf")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).map_err(json))
            .collect()
    }

    fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.changes.subscribe()
    }

    async fn create_session(&self, s: NewSession) -> Result<(), StoreError> {
        let claims = serde_json::to_string(&s.claims).map_err(json)?;
        let mut create = CREATE_SESSION.prepare_invoke();
        create
            .arg(PREFIX)
            .arg(&s.sid)
            .arg(&s.sub)
            .arg(claims)
            .arg(s.expires)
            .arg(hex(&s.refresh))
            .arg(s.refresh_expires.min(s.expires))
            .arg(unix_now());
        self.script::<i64>(create).await.map(drop)
    }

    /// Looks up the token's session, takes the session's lock, runs the rotation script,
    /// releases the lock. The script alone is atomic; the lock keeps a client's parallel
    /// refreshes hitting different replicas in line, one at a time.
    async fn rotate(&self, x: Exchange) -> Result<Rotation, StoreError> {
        let token = key(&["refresh:", &hex(&x.presented)]);
        let sid: Option<String> = self
            .link
            .run(|mut c| async move {
                redis::cmd("HGET")
                    .arg(token)
                    .arg("sid")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let Some(sid) = sid else {
            return Ok(Rotation::Invalid);
        };
        // The successor's hash is random and ours alone: a holder id no other replica has.
        let (lock, holder) = (key(&["lock:", &sid]), hex(&x.next));
        self.lock(&lock, &holder).await?;
        let rotated = self.rotate_locked(&x).await?;
        // After a failure the lock is left to expire (within LOCK_TTL): releasing it would
        // likely fail the same way, and make the caller wait another CALL_TIMEOUT for it.
        self.unlock(lock, holder).await;
        Ok(rotated)
    }

    async fn end_session(&self, sid: &str) -> Result<Option<SessionInfo>, StoreError> {
        let mut end = END_ONE.prepare_invoke();
        end.arg(PREFIX).arg(sid);
        let ended: Vec<String> = self.script(end).await?;
        match ended.as_slice() {
            [] => Ok(None),
            [sid, sub, claims, expires] => session_info(sid, sub, claims, expires).map(Some),
            _ => Err(StoreError(format!(
                "redis: unexpected end_session answer {ended:?}"
            ))),
        }
    }

    async fn end_user_sessions(&self, sub: &str) -> Result<Vec<String>, StoreError> {
        let mut end = END_USER.prepare_invoke();
        end.arg(PREFIX).arg(sub);
        self.script(end).await
    }

    async fn take(&self, key_name: &str, quota: Quota) -> Result<Result<(), Duration>, StoreError> {
        let (interval, tolerance) = gcra_millis(quota);
        let mut take = TAKE.prepare_invoke();
        take.key(key(&["rl:", key_name]))
            .arg(interval)
            .arg(tolerance);
        let (taken, wait): (i64, i64) = self.script(take).await?;
        Ok(match taken {
            1 => Ok(()),
            _ => Err(Duration::from_millis(u64::try_from(wait).unwrap_or(0))),
        })
    }
}

/// The quota in whole milliseconds, as [`super::memory::gcra`] computes it: the emission
/// interval and the burst tolerance.
fn gcra_millis(quota: Quota) -> (u64, u64) {
    let interval = u64::try_from(quota.interval.as_millis()).unwrap_or(u64::MAX);
    let tolerance = interval.saturating_mul(u64::from(quota.burst.saturating_sub(1)));
    (interval, tolerance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_hosts_service_and_database() {
        assert!(sentinel("redis+sentinel://h1:26380,h2/mymaster/2").is_ok());
        assert!(sentinel("redis+sentinel://:secret@h1/mymaster").is_ok());
        assert!(sentinel("redis+sentinel://[::1]:26379/mymaster/0").is_ok());
        for bad in [
            "redis+sentinel://h1",
            "redis+sentinel://h1/",
            "redis+sentinel:///mymaster",
            "redis+sentinel://h1/mymaster/x",
        ] {
            assert!(sentinel(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn milliseconds_match_the_memory_gcra() {
        let quota = Quota::per(3, Duration::from_secs(60)).unwrap();
        assert_eq!(gcra_millis(quota), (20_000, 40_000));
        let ms = Duration::from_millis(1);
        let (interval, tolerance) = gcra_millis(quota);
        // Three takes at t=0, then the fourth waits one interval.
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(super::super::memory::gcra(tat, 0, quota, ms).unwrap());
        }
        assert_eq!(tat, Some(3 * interval));
        assert_eq!(
            super::super::memory::gcra(tat, 0, quota, ms),
            Err(3 * interval - tolerance)
        );
    }

    #[test]
    fn token_hashes_are_lowercase_hex() {
        let mut h = [0u8; 32];
        h[0] = 0xab;
        h[31] = 0x01;
        let s = hex(&h);
        assert_eq!(s.len(), 64);
        assert!(s.starts_with("ab00") && s.ends_with("0001"));
    }
}
