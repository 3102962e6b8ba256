//! The state store interface: revocations, sessions with their refresh-token families, and
//! login rate-limit buckets, behind one trait with three backends — `memory:` (this process
//! only), `sqlite:PATH` (one file, survives restarts) and Redis (shared by replicas).
//!
//! Nothing on the per-request path calls a store: requests read the local revocation mirror
//! ([`super::Mirror`]). Stores are called by login, refresh, logout and `authgate revoke`, and
//! by the mirror's background sync. Every method may fail with [`StoreError`] when the store
//! cannot be reached; callers answer 503 `store_unavailable` then, never a silent success.
//!
//! Times are whole seconds since the Unix epoch unless a name says otherwise. Refresh tokens
//! are never stored: only their SHA-256 ([`TokenHash`]).

use std::time::Duration;

use serde_json::{Map, Value};

use super::Quota;

/// The store could not be reached or did not answer as expected (mapped to 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state store unavailable: {0}")]
pub struct StoreError(pub String);

/// The SHA-256 of a refresh token.
pub type TokenHash = [u8; 32];

/// One revocation. Each is kept until `until`, when every token it covers has expired anyway.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Revocation {
    /// One token (`jti`).
    Token { jti: String, until: u64 },
    /// Every token of one session (`sid`): logout, refresh-token reuse, `authgate revoke --sid`.
    Session { sid: String, until: u64 },
    /// Every token of one user (`sub`) issued before `before` (its `iat`): logout everywhere,
    /// `authgate revoke --sub`.
    User {
        sub: String,
        before: u64,
        until: u64,
    },
}

impl Revocation {
    pub fn until(&self) -> u64 {
        match self {
            Revocation::Token { until, .. }
            | Revocation::Session { until, .. }
            | Revocation::User { until, .. } => *until,
        }
    }
}

/// A session created by a login that returns a refresh token.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSession {
    pub sid: String,
    pub sub: String,
    /// The claims access tokens of this session carry (re-issued on every refresh).
    pub claims: Map<String, Value>,
    /// Absolute end of the session (`tokens.refresh.ttl` after login).
    pub expires: u64,
    /// The first refresh token of the family.
    pub refresh: TokenHash,
    /// When that token dies unused (`idle_ttl`, never after `expires`).
    pub refresh_expires: u64,
}

/// What a refresh needs to know about the session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    pub sid: String,
    pub sub: String,
    pub claims: Map<String, Value>,
    pub expires: u64,
}

/// A refresh token exchange: the presented token, its successor, and the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    pub presented: TokenHash,
    pub next: TokenHash,
    /// When the successor dies unused (the store caps it at the session's `expires`).
    pub next_expires: u64,
    pub now: u64,
    /// A token spent less than this many seconds ago may be presented again (the client lost
    /// the answer): it yields another successor, and the family lives on.
    pub reuse_grace: u64,
}

/// The outcome of [`Store::rotate`].
#[derive(Debug, Clone, PartialEq)]
pub enum Rotation {
    /// The presented token was live, or spent within the grace window: it is spent now and
    /// `next` is live.
    Rotated(SessionInfo),
    /// Unknown, expired (idle or absolute), or its session has ended.
    Invalid,
    /// A token spent longer than the grace window ago came back (RFC 9700 §4.14.2): the store
    /// has ended the whole session (no token of the family works any more). The caller revokes
    /// the session's access tokens too.
    Reused { sid: String, sub: String },
}

/// Where authgate keeps state that must survive restarts and be shared by replicas.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// `memory`, `sqlite` or `redis` (logs, metrics, `authgate revoke`).
    fn kind(&self) -> &'static str;

    /// Whether the store answers (readiness, `authgate_store_up`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Records a revocation and tells every replica's mirror ([`Store::subscribe`]).
    async fn revoke(&self, revocation: Revocation) -> Result<(), StoreError>;

    /// Every revocation still in force at `now` (`until > now`): a mirror's full resync.
    async fn revocations(&self, now: u64) -> Result<Vec<Revocation>, StoreError>;

    /// Revocations as they are made, by this process or any other (Redis pub/sub, SQLite
    /// polling at least every 250 ms). Messages can be missed (a lost connection, a lagging
    /// receiver): the mirror heals that with periodic [`Store::revocations`].
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Revocation>;

    /// Stores a new session and its first refresh token.
    async fn create_session(&self, session: NewSession) -> Result<(), StoreError>;

    /// Exchanges a refresh token, atomically: two replicas presenting the same token at once
    /// cannot both win outside the grace window.
    async fn rotate(&self, exchange: Exchange) -> Result<Rotation, StoreError>;

    /// Ends a session: its refresh tokens stop working. Returns the session when it existed.
    async fn end_session(&self, sid: &str) -> Result<Option<SessionInfo>, StoreError>;

    /// Ends every session of a user; returns their ids.
    async fn end_user_sessions(&self, sub: &str) -> Result<Vec<String>, StoreError>;

    /// Takes one attempt from the bucket `key` (GCRA), or says how long until one is free. The
    /// quota comes from the running config, so a reload that changes it keeps the buckets.
    async fn take(&self, key: &str, quota: Quota) -> Result<Result<(), Duration>, StoreError>;
}
