//! Signed identity assertions (`assertion:` on a route): a short-lived JWT for the upstream (or
//! the edge, in forward-auth mode) saying who the request is for — `sub`, the route's identity
//! claims, `aud` = the route's name — signed with authgate's first asymmetric key, so a backend
//! can check it against `/.well-known/jwks.json` instead of trusting a plain header. Signatures
//! are cached per token and route for half their lifetime (an RSA signature costs a
//! millisecond).

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use jsonwebtoken::{EncodingKey, Header};
use moka::sync::Cache;
use serde_json::{Map, Value};

use super::keys::KeySet;
use super::token::VerifiedToken;
use crate::clock::unix_now;

/// Most cached assertions.
const MAX_CACHED: u64 = 100_000;

/// A cached assertion and its `exp`.
type Signed = Arc<(HeaderValue, u64)>;

pub struct Asserter {
    encoding: EncodingKey,
    header: Header,
    issuer: Option<String>,
    /// (route index, token jti) → (assertion, its exp).
    cache: Cache<(usize, Box<str>), Signed>,
}

impl Asserter {
    /// The signer, when some key in `tokens.keys` is asymmetric and holds its private half.
    pub fn new(keys: &KeySet, issuer: Option<&str>) -> Option<Asserter> {
        let key = keys
            .iter()
            .find(|k| !k.algorithm.is_hmac() && k.encoding.is_some())?;
        let mut header = Header::new(key.alg);
        header.kid = Some(key.id.clone());
        Some(Asserter {
            encoding: key.encoding.clone()?,
            header,
            issuer: issuer.map(str::to_owned),
            cache: Cache::builder()
                .max_capacity(MAX_CACHED)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        })
    }

    /// The assertion for `token` on route `route` (named `audience`), carrying `claims`.
    pub fn assert(
        &self,
        route: usize,
        audience: &str,
        token: &VerifiedToken,
        claims: Map<String, Value>,
        ttl: Duration,
    ) -> Option<HeaderValue> {
        let now = unix_now();
        let key = token
            .jti
            .as_deref()
            .map(|jti| (route, Box::<str>::from(jti)));
        if let Some(hit) = key.as_ref().and_then(|k| self.cache.get(k))
            && hit.1.saturating_sub(now) > ttl.as_secs() / 2
        {
            return Some(hit.0.clone());
        }
        let exp = (now + ttl.as_secs()).min(token.exp.max(now + 1));
        let signed = self.sign(audience, token, claims, now, exp)?;
        if let Some(k) = key {
            self.cache.insert(k, Arc::new((signed.clone(), exp)));
        }
        Some(signed)
    }

    fn sign(
        &self,
        audience: &str,
        token: &VerifiedToken,
        mut claims: Map<String, Value>,
        now: u64,
        exp: u64,
    ) -> Option<HeaderValue> {
        if let Some(sub) = &token.sub {
            claims.insert("sub".into(), sub.as_str().into());
        }
        if let Some(iss) = &self.issuer {
            claims.insert("iss".into(), iss.as_str().into());
        }
        claims.insert("aud".into(), audience.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), exp.into());
        let jwt = jsonwebtoken::encode(&self.header, &claims, &self.encoding).ok()?;
        HeaderValue::from_str(&jwt).ok()
    }
}
