//! A verified token: what the request path knows about a token once its signature and claims
//! were checked (cached, memoized per connection, shared by every request carrying it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderValue;
use serde_json::{Map, Value};

use super::claims::RenderError;

/// A token whose signature and time/issuer/audience claims were checked.
#[derive(Debug)]
pub struct VerifiedToken {
    pub claims: Map<String, Value>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// `sub`, when it is a string (for logs).
    pub sub: Option<String>,
    /// `jti`, when it is a string (for revocation).
    pub jti: Option<String>,
    /// `sid`, the session the token belongs to, when it is a string (for revocation).
    pub sid: Option<String>,
    /// `iat` (for per-user revocation cutoffs).
    pub iat: Option<u64>,
    /// For a token verified with a remote provider's key: whether that key is still
    /// published. A verification never outlives its key (cached copies included).
    pub key_live: Option<Arc<AtomicBool>>,
    /// Verified with authgate's own keys (not a remote provider's): only such tokens are
    /// re-issued by the sliding session.
    pub local: bool,
    /// The value of every claim some route injects as a header, rendered once per token and
    /// indexed like [`Verifier::header_claims`].
    pub header_values: Box<[Result<Option<HeaderValue>, RenderError>]>,
}

impl VerifiedToken {
    /// False once the remote key that verified this token has been withdrawn by its provider.
    pub fn key_is_live(&self) -> bool {
        self.key_live
            .as_ref()
            .is_none_or(|live| live.load(Ordering::Acquire))
    }

    /// The rendered header value for header claim `index`.
    pub fn header_value(&self, index: usize) -> Result<Option<&HeaderValue>, RenderError> {
        match self.header_values.get(index) {
            Some(Ok(v)) => Ok(v.as_ref()),
            Some(Err(e)) => Err(*e),
            None => Ok(None),
        }
    }
}
