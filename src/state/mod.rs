//! Security state that outlives a request and a config reload: revocations, sessions with
//! their refresh tokens, and login rate-limit buckets. Owned by the gateway, not by the
//! reloadable config, so saving the config file never un-revokes a session or refills an
//! attacker's bucket; the config only passes in the quotas.
//!
//! `store` is the interface, `memory` the in-process backend; `mirror` is the local copy of the
//! revocations that the request path reads.

pub mod memory;
pub mod mirror;
pub mod store;

pub use memory::MemoryStore;
pub use mirror::Mirror;
pub use store::{Revocation, Store, StoreError};

use crate::metrics::StoreMetrics;

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

/// Opens the store `url` names (`memory:` here; the other backends when built in).
pub async fn open(url: &str, _config_dir: &std::path::Path) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        "memory:" => Ok(Arc::new(MemoryStore::default())),
        other => Err(StoreError(format!(
            "`{other}`: this build has no such store"
        ))),
    }
}

/// The gateway's state: the store (chosen at boot) and this process's revocation mirror.
/// Every store call goes through here, so failures are counted by operation.
#[derive(Clone)]
pub struct State {
    pub store: Arc<dyn Store>,
    pub mirror: Arc<Mirror>,
    metrics: Arc<StoreMetrics>,
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
