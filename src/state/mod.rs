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

use std::sync::Arc;
use std::time::Duration;

/// The gateway's state: the store (chosen at boot) and this process's revocation mirror.
#[derive(Clone)]
pub struct State {
    pub store: Arc<dyn Store>,
    pub mirror: Arc<Mirror>,
}

impl State {
    /// A state on `store`, its mirror kept current in the background (needs a tokio runtime).
    pub fn start(store: Arc<dyn Store>) -> State {
        let mirror = Arc::new(Mirror::default());
        mirror.spawn_sync(store.clone());
        State { store, mirror }
    }

    /// Records a revocation in the store and, at once, in this process's mirror (the change
    /// feed would bring it a moment later).
    pub async fn revoke(&self, revocation: Revocation) -> Result<(), StoreError> {
        self.store.revoke(revocation.clone()).await?;
        self.mirror.apply(&revocation);
        Ok(())
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
