//! Security state that outlives a request and a config reload: revocations, sessions with
//! their refresh tokens, and login rate-limit buckets. Owned by the gateway, not by the
//! reloadable config, so saving the config file never un-revokes a session or refills an
//! attacker's bucket; the config only passes in the quotas.
//!
//! `store` is the interface, `memory`, `sqlite` and `redis` its backends ([`open`] picks one by
//! URL); `mirror` is the local copy of the revocations that the request path reads.

pub mod deferred;
pub mod memory;
pub mod mirror;
pub mod redis;
pub mod sqlite;
pub mod store;

pub use deferred::Deferred;
pub use memory::MemoryStore;
pub use mirror::Mirror;
pub use redis::RedisStore;
pub use sqlite::SqliteStore;
pub use store::{Revocation, Store, StoreError};

use std::collections::HashMap;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Whether `url` names a store authgate can open (checked at load time; opened at start).
pub fn is_store_url(url: &str) -> bool {
    url == "memory:"
        || url.strip_prefix("sqlite:").is_some_and(|p| !p.is_empty())
        || ["redis://", "rediss://", "redis+sentinel://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
}

/// The gateway's state: the store (chosen at boot) and this process's revocation mirror.
/// Every store call goes through here, so failures are counted by operation.
#[derive(Clone)]
pub struct State {
    pub store: Arc<dyn Store>,
    pub mirror: Arc<Mirror>,
    metrics: Arc<StoreMetrics>,
}

/// The state store's health: `authgate_store_up` and `authgate_store_errors_total`.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub up: Gauge,
    errors: HashMap<&'static str, Counter>,
}

impl StoreMetrics {
    pub fn new(up: Gauge, errors: HashMap<&'static str, Counter>) -> StoreMetrics {
        StoreMetrics { up, errors }
    }

    pub fn error(&self, operation: &str) {
        if let Some(c) = self.errors.get(operation) {
            c.inc();
        }
    }
}

/// Store operations as counted in `authgate_store_errors_total{operation}`.
pub const STORE_OPERATIONS: [&str; 7] = [
    "sync",
    "take",
    "revoke",
    "create_session",
    "rotate",
    "end_session",
    "end_user_sessions",
];

impl State {
    /// A state on `store`, its mirror kept current in the background (needs a tokio runtime).
    pub fn start(store: Arc<dyn Store>, metrics: StoreMetrics) -> State {
        let metrics = Arc::new(metrics);
        let mirror = Arc::new(Mirror::default());
        if store.kind() == "memory" {
            mirror.mark_synced();
            metrics.up.set(1);
        }
        mirror.spawn_sync(store.clone(), metrics.clone());
        State {
            store,
            mirror,
            metrics,
        }
    }

    fn counted<T>(
        &self,
        operation: &'static str,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Err(e) = &result {
            self.metrics.error(operation);
            tracing::warn!(store = self.store.kind(), operation, error = %e, "state store call failed");
        }
        result
    }

    /// Records a revocation in the store and, at once, in this process's mirror (the change
    /// feed would bring it a moment later).
    pub async fn revoke(&self, revocation: Revocation) -> Result<(), StoreError> {
        let result = self.store.revoke(revocation.clone()).await;
        self.counted("revoke", result)?;
        self.mirror.apply(&revocation);
        Ok(())
    }

    pub async fn take(&self, key: &str, quota: Quota) -> Result<Result<(), Duration>, StoreError> {
        let result = self.store.take(key, quota).await;
        self.counted("take", result)
    }

    pub async fn create_session(&self, session: store::NewSession) -> Result<(), StoreError> {
        let result = self.store.create_session(session).await;
        self.counted("create_session", result)
    }

    pub async fn rotate(&self, exchange: store::Exchange) -> Result<store::Rotation, StoreError> {
        let result = self.store.rotate(exchange).await;
        self.counted("rotate", result)
    }

    pub async fn end_session(&self, sid: &str) -> Result<Option<store::SessionInfo>, StoreError> {
        let result = self.store.end_session(sid).await;
        self.counted("end_session", result)
    }

    pub async fn end_user_sessions(&self, sub: &str) -> Result<Vec<String>, StoreError> {
        let result = self.store.end_user_sessions(sub).await;
        self.counted("end_user_sessions", result)
    }
}

/// Opens the store a URL names: `memory:`, `sqlite:PATH` (relative to `config_dir`, the
/// directory of the config file), or `redis://…`, `rediss://…` (TLS), `redis+sentinel://…`.
pub async fn open(url: &str, config_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    if url == "memory:" {
        return Ok(Arc::new(MemoryStore::default()));
    }
    if let Some(path) = url.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err(StoreError("sqlite: needs a file: sqlite:PATH".into()));
        }
        let path = config_dir.join(path);
        // Opening reads and may migrate the file: not on an async worker.
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
            .await
            .map_err(|e| StoreError(format!("opening the sqlite store failed: {e}")))??;
        return Ok(Arc::new(store));
    }
    if ["redis://", "rediss://", "redis+sentinel://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        RedisStore::check_url(url)?;
        return match RedisStore::connect(url).await {
            Ok(store) => Ok(Arc::new(store)),
            // Down at start: start anyway, not ready, and connect as soon as it answers.
            Err(e) => {
                tracing::warn!(error = %e, "state store unreachable at start; connecting in the background");
                let url = url.to_owned();
                Ok(Deferred::start("redis", move || {
                    let url = url.clone();
                    async move {
                        let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&url).await?);
                        Ok(store)
                    }
                }))
            }
        };
    }
    // Only the scheme: the rest may hold a password.
    let named = match url.split_once(':') {
        Some((scheme, _)) => format!("`{scheme}:`"),
        None => format!("`{url}`"),
    };
    Err(StoreError(format!(
        "{named} is not a store: use memory:, sqlite:PATH or redis://…"
    )))
}

/// A token bucket: `burst` attempts at once, then one more every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub burst: u32,
    pub interval: Duration,
}

impl Quota {
    /// `requests` per `per`, refilled evenly, with a burst of `requests`. `None` when either
    /// is zero.
    pub fn per(requests: u32, per: Duration) -> Option<Quota> {
        let interval = per.checked_div(requests)?;
        (requests > 0 && !interval.is_zero()).then_some(Quota {
            burst: requests,
            interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
