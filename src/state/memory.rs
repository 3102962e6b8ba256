//! The in-process backend: moka caches whose entries expire by themselves when they no longer
//! matter (a revocation when the last token it covers has expired, a bucket when it is full
//! again).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute::Op;
use moka::sync::Cache;

use super::Quota;
use crate::auth::verify::unix_now;

/// Most revocations and buckets kept; beyond it the least recently used go first.
const MAX_ENTRIES: u64 = 1_000_000;

/// Keeps a revocation until `until` (seconds since the epoch), plus a second for rounding.
struct UntilEpochSecs;

impl Expiry<String, u64> for UntilEpochSecs {
    fn expire_after_create(&self, _: &String, until: &u64, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(until.saturating_sub(unix_now()) + 1))
    }
}

/// Revoked token ids (`jti`) and sessions (`sid`).
pub struct Revocations {
    tokens: Cache<String, u64>,
    sessions: Cache<String, u64>,
    /// Until the first revocation there is nothing to look up (the common case stays free).
    used: AtomicBool,
}

impl Default for Revocations {
    fn default() -> Self {
        let cache = || {
            Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .expire_after(UntilEpochSecs)
                .build()
        };
        Revocations {
            tokens: cache(),
            sessions: cache(),
            used: AtomicBool::new(false),
        }
    }
}

impl Revocations {
    /// Refuses the token `jti` until `until`, when it expires anyway.
    pub fn revoke_token(&self, jti: &str, until: u64) {
        self.tokens.insert(jti.to_owned(), until);
        self.used.store(true, Ordering::Release);
    }

    /// Refuses every token of session `sid` until `until`, when the last token issued for it
    /// before now has expired.
    pub fn revoke_session(&self, sid: &str, until: u64) {
        self.sessions.insert(sid.to_owned(), until);
        self.used.store(true, Ordering::Release);
    }

    pub fn is_revoked(&self, jti: Option<&str>, sid: Option<&str>) -> bool {
        self.used.load(Ordering::Acquire)
            && (jti.is_some_and(|j| self.tokens.contains_key(j))
                || sid.is_some_and(|s| self.sessions.contains_key(s)))
    }
}

/// Nanoseconds on a monotonic clock shared by every bucket of the process.
fn monotonic_nanos() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
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

/// Keyed token buckets (GCRA: one "theoretical arrival time" per key). The quota is passed in
/// on every check, so a reload that changes it keeps every bucket's state.
pub struct RateLimits {
    buckets: Cache<String, u64>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            buckets: Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .expire_after(UntilFull)
                .build(),
        }
    }
}

impl RateLimits {
    /// Takes one attempt from `key`'s bucket, or says how long until one is available.
    pub fn check(&self, key: &str, quota: Quota) -> Result<(), Duration> {
        let now = monotonic_nanos();
        let interval = u64::try_from(quota.interval.as_nanos()).unwrap_or(u64::MAX);
        let tolerance = interval.saturating_mul(u64::from(quota.burst.saturating_sub(1)));
        let mut refused = None;
        // One compute per key at a time: two concurrent attempts cannot both take the last one.
        self.buckets
            .entry(key.to_owned())
            .and_compute_with(|entry| {
                let tat = entry.map_or(now, |e| (*e.value()).max(now));
                if tat - now > tolerance {
                    refused = Some(Duration::from_nanos(tat - now - tolerance));
                    Op::Nop
                } else {
                    Op::Put(tat.saturating_add(interval))
                }
            });
        refused.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_allow_a_burst_then_refill_evenly() {
        let limits = RateLimits::default();
        let quota = Quota::per(3, Duration::from_secs(60)).unwrap();
        for _ in 0..3 {
            assert_eq!(limits.check("a", quota), Ok(()));
        }
        let wait = limits.check("a", quota).unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(limits.check("b", quota), Ok(()), "keys are independent");
        let fast = Quota::per(1, Duration::from_millis(20)).unwrap();
        assert_eq!(limits.check("c", fast), Ok(()));
        assert!(limits.check("c", fast).is_err());
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(limits.check("c", fast), Ok(()));
    }

    #[test]
    fn revocations_cover_tokens_and_sessions() {
        let r = Revocations::default();
        assert!(!r.is_revoked(Some("j"), Some("s")));
        r.revoke_token("j", unix_now() + 60);
        r.revoke_session("s2", unix_now() + 60);
        assert!(r.is_revoked(Some("j"), None));
        assert!(r.is_revoked(None, Some("s2")));
        assert!(r.is_revoked(Some("other"), Some("s2")));
        assert!(!r.is_revoked(Some("other"), Some("s")));
    }

    #[test]
    fn quotas_need_requests_and_time() {
        assert!(Quota::per(0, Duration::from_secs(1)).is_none());
        assert!(Quota::per(5, Duration::ZERO).is_none());
        assert_eq!(
            Quota::per(20, Duration::from_secs(60)),
            Some(Quota {
                burst: 20,
                interval: Duration::from_secs(3)
            })
        );
    }
}
