//! The last token verified on one client connection. Clients send the same token on every
//! request of a keep-alive connection, so a byte comparison of the whole token replaces hashing
//! it and looking it up in the claims cache. Tied to the config generation that verified it:
//! after a reload the token is verified again.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::token::VerifiedToken;
use crate::clock::unix_now;

#[derive(Default)]
pub struct ConnectionMemo {
    last: ArcSwapOption<Memo>,
}

impl std::fmt::Debug for ConnectionMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionMemo")
    }
}

struct Memo {
    generation: u64,
    token: Box<str>,
    verified: Arc<VerifiedToken>,
}

impl ConnectionMemo {
    /// The verification of exactly `token` under config `generation`, while the token is
    /// unexpired and the key that verified it still stands.
    pub fn get(&self, generation: u64, token: &str) -> Option<Arc<VerifiedToken>> {
        let last = self.last.load();
        let memo = last.as_ref()?;
        (memo.generation == generation
            && *memo.token == *token
            && memo.verified.exp > unix_now()
            && memo.verified.key_is_live())
        .then(|| memo.verified.clone())
    }

    pub fn set(&self, generation: u64, token: &str, verified: &Arc<VerifiedToken>) {
        self.last.store(Some(Arc::new(Memo {
            generation,
            token: token.into(),
            verified: verified.clone(),
        })));
    }
}
