//! The in-process store (`memory:`): nothing survives a restart and nothing is shared with
//! other replicas. Also the rate-limit arithmetic (GCRA) the other backends mirror.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute::Op;
use moka::sync::Cache;
use tokio::sync::broadcast;

use super::Quota;
use super::store::{
    Exchange, NewSession, Revocation, Rotation, SessionInfo, Store, StoreError, TokenHash,
};
use crate::clock::unix_now;

/// Most rate-limit buckets kept; beyond it the least recently used go first.
const MAX_BUCKETS: u64 = 1_000_000;

/// Nanoseconds on a monotonic clock shared by every bucket of the process.
fn monotonic_nanos() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One GCRA step (the "theoretical arrival time" form of a token bucket): given the bucket's
/// stored TAT (`None`: a full bucket) and `now`, the new TAT, or how long until an attempt is
/// free. Same unit for every argument (nanoseconds here, milliseconds in the shared stores).
pub fn gcra(tat: Option<u64>, now: u64, quota: Quota, unit: Duration) -> Result<u64, u64> {
    let per_unit = unit.as_nanos().max(1);
    let interval = u64::try_from(quota.interval.as_nanos() / per_unit).unwrap_or(u64::MAX);
    let tolerance = interval.saturating_mul(u64::from(quota.burst.saturating_sub(1)));
    let tat = tat.map_or(now, |t| t.max(now));
    if tat - now > tolerance {
        Err(tat - now - tolerance)
    } else {
        Ok(tat.saturating_add(interval))
    }
}

/// Drops a bucket when it has refilled completely: a missing bucket is a full one.
struct UntilFull;

impl Expiry<String, u64> for UntilFull {
    fn expire_after_create(&self, _: &String, tat: &u64, _: Instant) -> Option<Duration> {
        Some(Duration::from_nanos(tat.saturating_sub(monotonic_nanos())))
    }
    fn expire_after_update(
        &self,
        key: &String,
        tat: &u64,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, tat, at)
    }
}

struct Session {
    info: SessionInfo,
}

/// A refresh token's record: live until `expires`, or spent at `spent` (kept to detect reuse
/// until its session ends).
struct Refresh {
    sid: String,
    expires: u64,
    spent: Option<u64>,
}

#[derive(Default)]
struct Sessions {
    sessions: HashMap<String, Session>,
    tokens: HashMap<TokenHash, Refresh>,
}

impl Sessions {
    fn end(&mut self, sid: &str) -> Option<SessionInfo> {
        self.tokens.retain(|_, t| t.sid != sid);
        self.sessions.remove(sid).map(|s| s.info)
    }

    fn sweep(&mut self, now: u64) {
        self.sessions.retain(|_, s| s.info.expires > now);
        let sessions = &self.sessions;
        self.tokens
            .retain(|_, t| sessions.contains_key(&t.sid) && (t.spent.is_some() || t.expires > now));
    }
}

/// `memory:` — everything in this process.
pub struct MemoryStore {
    revocations: Mutex<Vec<Revocation>>,
    changes: broadcast::Sender<Revocation>,
    /// Login, refresh and logout only: never the request path, so a mutex is fine here.
    sessions: Mutex<Sessions>,
    buckets: Cache<String, u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            revocations: Mutex::default(),
            changes: broadcast::channel(1024).0,
            sessions: Mutex::default(),
            buckets: Cache::builder()
                .max_capacity(MAX_BUCKETS)
                .expire_after(UntilFull)
                .build(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these maps half-updated in a way that matters more than
    // refusing every login would.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn revoke(&self, revocation: Revocation) -> Result<(), StoreError> {
        let now = unix_now();
        let mut all = lock(&self.revocations);
        all.retain(|r| r.until() > now);
        all.push(revocation.clone());
        drop(all);
        let _ = self.changes.send(revocation);
        Ok(())
    }

    async fn revocations(&self, now: u64) -> Result<Vec<Revocation>, StoreError> {
        Ok(lock(&self.revocations)
            .iter()
            .filter(|r| r.until() > now)
            .cloned()
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.changes.subscribe()
    }

    async fn create_session(&self, s: NewSession) -> Result<(), StoreError> {
        let mut all = lock(&self.sessions);
        all.sweep(unix_now());
        all.tokens.insert(
            s.refresh,
            Refresh {
                sid: s.sid.clone(),
                expires: s.refresh_expires.min(s.expires),
                spent: None,
            },
        );
        let info = SessionInfo {
            sid: s.sid.clone(),
            sub: s.sub,
            claims: s.claims,
            expires: s.expires,
        };
        all.sessions.insert(s.sid, Session { info });
        Ok(())
    }

    async fn rotate(&self, x: Exchange) -> Result<Rotation, StoreError> {
        let mut all = lock(&self.sessions);
        let Some(token) = all.tokens.get(&x.presented) else {
            return Ok(Rotation::Invalid);
        };
        let sid = token.sid.clone();
        let Some(info) = all
            .sessions
            .get(&sid)
            .map(|s| s.info.clone())
            .filter(|i| i.expires > x.now)
        else {
            return Ok(Rotation::Invalid);
        };
        match token.spent {
            Some(at) if x.now.saturating_sub(at) >= x.reuse_grace => {
                all.end(&sid);
                return Ok(Rotation::Reused { sid, sub: info.sub });
            }
            None if token.expires <= x.now => return Ok(Rotation::Invalid),
            _ => {}
        }
        if let Some(t) = all.tokens.get_mut(&x.presented) {
            t.spent.get_or_insert(x.now);
        }
        all.tokens.insert(
            x.next,
            Refresh {
                sid,
                expires: x.next_expires.min(info.expires),
                spent: None,
            },
        );
        Ok(Rotation::Rotated(info))
    }

    async fn end_session(&self, sid: &str) -> Result<Option<SessionInfo>, StoreError> {
        Ok(lock(&self.sessions).end(sid))
    }

    async fn end_user_sessions(&self, sub: &str) -> Result<Vec<String>, StoreError> {
        let mut all = lock(&self.sessions);
        let sids: Vec<String> = all
            .sessions
            .values()
            .filter(|s| s.info.sub == sub)
            .map(|s| s.info.sid.clone())
            .collect();
        for sid in &sids {
            all.end(sid);
        }
        Ok(sids)
    }

    async fn take(&self, key: &str, quota: Quota) -> Result<Result<(), Duration>, StoreError> {
        let now = monotonic_nanos();
        let mut refused = None;
        // One compute per key at a time: two concurrent attempts cannot both take the last one.
        self.buckets
            .entry(key.to_owned())
            .and_compute_with(|entry| {
                match gcra(
                    entry.map(|e| *e.value()),
                    now,
                    quota,
                    Duration::from_nanos(1),
                ) {
                    Ok(tat) => Op::Put(tat),
                    Err(wait) => {
                        refused = Some(Duration::from_nanos(wait));
                        Op::Nop
                    }
                }
            });
        Ok(refused.map_or(Ok(()), Err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buckets_allow_a_burst_then_refill_evenly() {
        let store = MemoryStore::default();
        let quota = Quota::per(3, Duration::from_secs(60)).unwrap();
        for _ in 0..3 {
            assert_eq!(store.take("a", quota).await, Ok(Ok(())));
        }
        let wait = store.take("a", quota).await.unwrap().unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(
            store.take("b", quota).await,
            Ok(Ok(())),
            "keys are independent"
        );
        let fast = Quota::per(1, Duration::from_millis(20)).unwrap();
        assert_eq!(store.take("c", fast).await, Ok(Ok(())));
        assert!(store.take("c", fast).await.unwrap().is_err());
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert_eq!(store.take("c", fast).await, Ok(Ok(())));
    }

    #[test]
    fn gcra_in_milliseconds_matches_nanoseconds() {
        let quota = Quota::per(2, Duration::from_secs(1)).unwrap();
        let ms = Duration::from_millis(1);
        let t1 = gcra(None, 1000, quota, ms).unwrap();
        assert_eq!(t1, 1500);
        let t2 = gcra(Some(t1), 1000, quota, ms).unwrap();
        assert_eq!(gcra(Some(t2), 1000, quota, ms), Err(500));
        assert_eq!(gcra(Some(t2), 1500, quota, ms), Ok(2500));
    }
}
