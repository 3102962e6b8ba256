//! The local revocation mirror: every revocation still in force, in this process, so the
//! request path checks revocation without waiting on the network. Kept current by the store's
//! change feed, and resynced whole on start, after a lost feed and periodically (which heals
//! missed messages). Entries leave by themselves once every token they cover has expired.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;
use tokio::sync::broadcast::error::RecvError;

use super::StoreMetrics;
use super::store::{Revocation, Store, StoreError};
use crate::clock::unix_now;

/// Most revocations mirrored; beyond it the least recently used go first.
const MAX_ENTRIES: u64 = 1_000_000;
/// How often the whole set is fetched again even when the change feed looks healthy.
const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// Longest wait between retries while the store is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the store is pinged, so readiness notices an outage within about this long.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Keeps an entry until its `until` (seconds since the epoch), plus a second for rounding.
struct Until;

impl<V: Copy + Into<(u64, u64)>> Expiry<String, V> for Until {
    fn expire_after_create(&self, _: &String, value: &V, _: Instant) -> Option<Duration> {
        let (_, until) = (*value).into();
        Some(Duration::from_secs(until.saturating_sub(unix_now()) + 1))
    }
}

/// A mirrored entry: (the `before` of a user cutoff or 0, until).
#[derive(Debug, Clone, Copy)]
struct Entry(u64, u64);

impl From<Entry> for (u64, u64) {
    fn from(e: Entry) -> Self {
        (e.0, e.1)
    }
}

/// The revocations a request is checked against.
pub struct Mirror {
    tokens: Cache<String, Entry>,
    sessions: Cache<String, Entry>,
    users: Cache<String, Entry>,
    /// Until the first revocation there is nothing to look up (the common case stays free).
    used: AtomicBool,
    /// Set once a full sync with the store succeeded: a replica is not ready before.
    synced: AtomicBool,
    /// Whether the last contact with the store succeeded.
    store_up: AtomicBool,
}

impl Default for Mirror {
    fn default() -> Self {
        let cache = || {
            Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .expire_after(Until)
                .build()
        };
        Mirror {
            tokens: cache(),
            sessions: cache(),
            users: cache(),
            used: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            store_up: AtomicBool::new(false),
        }
    }
}

impl Mirror {
    /// Applies one revocation (idempotent; a user cutoff only ever moves later).
    pub fn apply(&self, revocation: &Revocation) {
        if revocation.until() <= unix_now() {
            return;
        }
        match revocation {
            Revocation::Token { jti, until } => self.tokens.insert(jti.clone(), Entry(0, *until)),
            Revocation::Session { sid, until } => {
                self.sessions.insert(sid.clone(), Entry(0, *until))
            }
            Revocation::User { sub, before, until } => {
                let later = self
                    .users
                    .get(sub)
                    .is_none_or(|Entry(b, u)| *before > b || *until > u);
                if later {
                    let kept = self.users.get(sub).map_or(Entry(0, 0), |e| e);
                    self.users.insert(
                        sub.clone(),
                        Entry((*before).max(kept.0), (*until).max(kept.1)),
                    );
                }
            }
        }
        self.used.store(true, Ordering::Release);
    }

    /// Whether a token with these claims is revoked: its `jti`, its session, or every token
    /// its user got before a cutoff.
    pub fn is_revoked(
        &self,
        jti: Option<&str>,
        sid: Option<&str>,
        sub: Option<&str>,
        iat: Option<u64>,
    ) -> bool {
        if !self.used.load(Ordering::Acquire) {
            return false;
        }
        jti.is_some_and(|j| self.tokens.contains_key(j))
            || sid.is_some_and(|s| self.sessions.contains_key(s))
            || sub.is_some_and(|s| {
                self.users
                    .get(s)
                    // A token without `iat` cannot show it came after the cutoff.
                    .is_some_and(|Entry(before, _)| iat.is_none_or(|i| i < before))
            })
    }

    /// For a store that starts empty in this process (`memory:`): there is nothing to fetch,
    /// so the mirror is complete from the start.
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
        self.store_up.store(true, Ordering::Release);
    }

    /// Whether the mirror has been filled from the store at least once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether the store answered the mirror's last call.
    pub fn store_up(&self) -> bool {
        self.store_up.load(Ordering::Acquire)
    }

    async fn resync(&self, store: &dyn Store, metrics: &StoreMetrics) -> bool {
        match store.revocations(unix_now()).await {
            Ok(all) => {
                for r in &all {
                    self.apply(r);
                }
                self.synced.store(true, Ordering::Release);
                if !self.store_up.swap(true, Ordering::AcqRel) {
                    tracing::info!(store = store.kind(), "state store reachable");
                }
                metrics.up.set(1);
                true
            }
            Err(e) => {
                metrics.up.set(0);
                metrics.error("sync");
                if self.store_up.swap(false, Ordering::AcqRel) {
                    tracing::error!(store = store.kind(), error = %e, "state store unreachable: tokens keep verifying against the last known revocations; login, refresh and logout answer 503");
                }
                false
            }
        }
    }

    /// Marks the store unreachable after a failed ping (readiness reports it at once).
    fn lost(&self, store: &dyn Store, metrics: &StoreMetrics, e: &StoreError) {
        metrics.up.set(0);
        metrics.error("sync");
        if self.store_up.swap(false, Ordering::AcqRel) {
            tracing::error!(store = store.kind(), error = %e, "state store unreachable: tokens keep verifying against the last known revocations; login, refresh and logout answer 503");
        }
    }

    /// Keeps the mirror current until the process ends: subscribe, resync whole, then apply
    /// changes as they come, ping the store every [`PING_EVERY`], and resync again on a lost
    /// feed, after an outage and every [`RESYNC_EVERY`].
    pub fn spawn_sync(self: &Arc<Self>, store: Arc<dyn Store>, metrics: Arc<StoreMetrics>) {
        let mirror = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut changes = store.subscribe();
                if !mirror.resync(&*store, &metrics).await {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                backoff = Duration::from_millis(100);
                let mut resync = tokio::time::interval(RESYNC_EVERY);
                resync.tick().await;
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.tick().await;
                loop {
                    tokio::select! {
                        change = changes.recv() => match change {
                            Ok(r) => mirror.apply(&r),
                            // Missed messages or a closed feed: start over with a full sync.
                            Err(RecvError::Lagged(_) | RecvError::Closed) => break,
                        },
                        _ = ping.tick() => {
                            if let Err(e) = store.ping().await {
                                mirror.lost(&*store, &metrics, &e);
                                break;
                            }
                        }
                        _ = resync.tick() => {
                            if !mirror.resync(&*store, &metrics).await {
                                break;
                            }
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_sessions_and_user_cutoffs_are_revoked() {
        let m = Mirror::default();
        let until = unix_now() + 60;
        assert!(!m.is_revoked(Some("j"), Some("s"), Some("u"), Some(10)));
        m.apply(&Revocation::Token {
            jti: "j".into(),
            until,
        });
        m.apply(&Revocation::Session {
            sid: "s2".into(),
            until,
        });
        m.apply(&Revocation::User {
            sub: "u".into(),
            before: 100,
            until,
        });
        assert!(m.is_revoked(Some("j"), None, None, None));
        assert!(m.is_revoked(None, Some("s2"), None, None));
        assert!(m.is_revoked(None, None, Some("u"), Some(99)));
        assert!(
            !m.is_revoked(None, None, Some("u"), Some(100)),
            "issued after the cutoff"
        );
        assert!(
            m.is_revoked(None, None, Some("u"), None),
            "no iat: cannot be after"
        );
        assert!(!m.is_revoked(Some("k"), Some("s"), Some("v"), Some(1)));
        // A later cutoff moves it; an earlier one does not.
        m.apply(&Revocation::User {
            sub: "u".into(),
            before: 200,
            until,
        });
        m.apply(&Revocation::User {
            sub: "u".into(),
            before: 50,
            until,
        });
        assert!(m.is_revoked(None, None, Some("u"), Some(150)));
        // Already over: nothing to keep.
        m.apply(&Revocation::Token {
            jti: "old".into(),
            until: 1,
        });
        assert!(!m.is_revoked(Some("old"), None, None, None));
    }
}
