//! Security state that outlives a request and a config reload: revoked tokens and sessions,
//! and login rate-limit buckets. Owned by the gateway, not by the reloadable config, so saving
//! the config file never un-revokes a session or refills an attacker's bucket; the config only
//! passes in the quotas.

pub mod memory;

pub use memory::{RateLimits, Revocations};

use std::time::Duration;

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
