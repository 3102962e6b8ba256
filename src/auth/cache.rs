//! The verified-claims cache (moka). Keyed by the SHA-256 of the whole token, so a token that
//! differs in any byte (a changed signature included) is a different entry; each entry expires
//! at its token's `exp`. It caches verification only, never an authorization decision.

use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;

use super::token::VerifiedToken;
use crate::clock::unix_now;

type CacheKey = [u8; 32];

/// Longest time one entry stays cached.
const MAX_ENTRY_SECS: u64 = 24 * 3600;

struct UntilExp;

impl Expiry<CacheKey, Arc<VerifiedToken>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<VerifiedToken>,
        _created_at: Instant,
    ) -> Option<Duration> {
        // Capped: an absurd `exp` must not overflow the cache's clock arithmetic, and an entry
        // may always leave the cache early.
        Some(Duration::from_secs(
            value.exp.saturating_sub(unix_now()).min(MAX_ENTRY_SECS),
        ))
    }
}

/// Bounded cache of verified tokens.
pub struct ClaimsCache {
    inner: Option<Cache<CacheKey, Arc<VerifiedToken>>>,
    /// Hit and miss counters, once a gateway installs this cache.
    counters: OnceLock<(Counter, Counter)>,
}

fn key(token: &str) -> CacheKey {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

impl ClaimsCache {
    /// A cache of at most `max_entries` tokens; 0 disables caching.
    pub fn new(max_entries: u64) -> Self {
        let inner = (max_entries > 0).then(|| {
            Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilExp)
                .build()
        });
        ClaimsCache {
            inner,
            counters: OnceLock::new(),
        }
    }

    /// Counts hits and misses into these counters from now on.
    pub fn bind_counters(&self, hits: Counter, misses: Counter) {
        let _ = self.counters.set((hits, misses));
    }

    /// Counts a hit served before the cache (the per-connection memo).
    pub fn record_hit(&self) {
        if let Some((hits, _)) = self.counters.get() {
            hits.inc();
        }
    }

    /// A cached, still unexpired verification of exactly this token.
    pub fn get(&self, token: &str) -> Option<Arc<VerifiedToken>> {
        let found = self
            .inner
            .as_ref()
            .and_then(|c| c.get(&key(token)))
            // moka's expiry has a granularity; the token's own `exp` is the hard limit. A key
            // its provider withdrew takes its verifications with it.
            .filter(|hit| hit.exp > unix_now() && hit.key_is_live());
        if let Some((hits, misses)) = self.counters.get() {
            if found.is_some() {
                hits.inc()
            } else {
                misses.inc()
            };
        }
        found
    }

    pub fn insert(&self, token: &str, verified: Arc<VerifiedToken>) {
        if let Some(cache) = &self.inner
            && verified.exp > unix_now()
        {
            cache.insert(key(token), verified);
        }
    }

    /// Entries currently held (approximate; for metrics and tests).
    pub fn entry_count(&self) -> u64 {
        self.inner.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            c.entry_count()
        })
    }
}
