//! Token verification (RFC 7519/7515). A token's header and claims are decoded and parsed
//! once (duplicate members refused); we refuse what an attacker could use to choose the key or
//! the algorithm: `alg: none`, embedded or remote keys (`jwk`, `jku`, `x5u`, `x5c`), `crit`
//! extensions and JWE. The key is chosen by `kid` and its configured algorithm is the only one
//! accepted; the signature is checked with the key parsed at load time (`signature.rs`), and
//! only then the registered claims (`ClaimRules`).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use base64::Engine;
use serde_json::{Map, Value};

use super::cache::ClaimsCache;
use super::claims::{ClaimPath, render};
use super::error::TokenError;
use super::jwks::{Provider, RemoteKey};
use super::keys::{Key, KeySet};
use super::registered::ClaimRules;
use super::signature::SignatureKey;
use super::token::VerifiedToken;
use crate::clock::unix_now;

/// Longest token accepted; a JWT larger than this is not a credential but an attack.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Checks tokens against the configured keys, issuer, audience and leeway, with a cache.
pub struct Verifier {
    keys: Arc<KeySet>,
    /// Remote key sets, each trusted only for tokens naming its issuer.
    providers: Vec<Arc<Provider>>,
    /// The claim rules of tokens signed with our own keys.
    rules: ClaimRules,
    header_claims: Vec<ClaimPath>,
    cache: ClaimsCache,
}

/// Header members that would let a token pick its own key, or demand processing we do not do.
const FORBIDDEN_HEADERS: [&str; 5] = ["jwk", "jku", "x5u", "x5c", "crit"];

struct JoseHeader {
    alg: String,
    kid: Option<String>,
    /// The payload's `iss`, not yet verified: it only picks the key set to try.
    iss: Option<String>,
}

/// A JSON value whose objects, at every depth, have distinct members. RFC 7515 §4 lets
/// parsers take either of two duplicate members; we refuse the token instead, so no other
/// parser (the backend's, a library's) can read a different claim than we checked.
struct UniqueValue(Value);

impl<'de> serde::Deserialize<'de> for UniqueValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UniqueValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, v: bool) -> Result<UniqueValue, E> {
                Ok(UniqueValue(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<UniqueValue, E> {
                Ok(UniqueValue(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<UniqueValue, E> {
                Ok(UniqueValue(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<UniqueValue, E> {
                Ok(UniqueValue(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<UniqueValue, E> {
                Ok(UniqueValue(v.into()))
            }
            fn visit_string<E>(self, v: String) -> Result<UniqueValue, E> {
                Ok(UniqueValue(v.into()))
            }
            fn visit_unit<E>(self) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<UniqueValue, A::Error> {
                let mut items = Vec::new();
                while let Some(UniqueValue(v)) = seq.next_element()? {
                    items.push(v);
                }
                Ok(UniqueValue(Value::Array(items)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueValue, A::Error> {
                let mut out = Map::new();
                while let Some((k, UniqueValue(v))) = map.next_entry::<String, UniqueValue>()? {
                    if out.insert(k, v).is_some() {
                        return Err(serde::de::Error::custom("duplicate member"));
                    }
                }
                Ok(UniqueValue(Value::Object(out)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Decodes one base64url part of a token into a JSON object with distinct members.
fn decode_part(encoded: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| TokenError::Malformed)?;
    match serde_json::from_slice::<UniqueValue>(&bytes) {
        Ok(UniqueValue(Value::Object(object))) => Ok(object),
        _ => Err(TokenError::Malformed),
    }
}

/// A token's header and claims, each decoded and parsed once. The claims are not trusted
/// until the signature is checked.
struct Parsed {
    header: JoseHeader,
    claims: Map<String, Value>,
}

fn parse(token: &str) -> Result<Parsed, TokenError> {
    let mut parts = token.split('.');
    let header = decode_part(parts.next().ok_or(TokenError::Malformed)?)?;
    // The payload is checked for duplicate members too: serde_json would keep the last one
    // silently, another parser the first.
    let claims = decode_part(parts.next().ok_or(TokenError::Malformed)?)?;
    let iss = match claims.get("iss") {
        Some(Value::String(iss)) => Some(iss.clone()),
        _ => None,
    };
    for name in FORBIDDEN_HEADERS {
        if header.contains_key(name) {
            return Err(TokenError::ForbiddenHeader(name));
        }
    }
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(TokenError::Malformed),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::Unsigned);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    Ok(Parsed {
        header: JoseHeader { alg, kid, iss },
        claims,
    })
}

/// Checks the JWS signature of `token` (already split-checked: three parts) with `key`.
fn check_signature(token: &str, key: &SignatureKey) -> Result<(), TokenError> {
    let (message, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    if key.verify(message.as_bytes(), &signature) {
        Ok(())
    } else {
        Err(TokenError::BadSignature)
    }
}

/// Settings shared by every key.
pub struct VerifyOptions {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_secs: u64,
    pub cache_entries: u64,
}

impl Verifier {
    pub fn new(
        keys: Arc<KeySet>,
        options: &VerifyOptions,
        header_claims: Vec<ClaimPath>,
        providers: Vec<Arc<Provider>>,
    ) -> Self {
        let rules = ClaimRules {
            issuer: options.issuer.clone(),
            audience: options.audience.clone(),
            leeway_secs: options.leeway_secs,
        };
        Verifier {
            keys,
            providers,
            rules,
            header_claims,
            cache: ClaimsCache::new(options.cache_entries),
        }
    }

    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    pub fn cache(&self) -> &ClaimsCache {
        &self.cache
    }

    pub fn header_claims(&self) -> &[ClaimPath] {
        &self.header_claims
    }

    /// Verifies `token`, from the cache when this exact token was verified before.
    pub async fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        if let Some(hit) = self.cache.get(token) {
            return Ok(hit);
        }
        let verified = Arc::new(self.verify_uncached(token).await?);
        self.cache.insert(token, verified.clone());
        Ok(verified)
    }

    async fn verify_uncached(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        match token.bytes().filter(|&b| b == b'.').count() {
            2 => {}
            4 => return Err(TokenError::Encrypted),
            _ => return Err(TokenError::Malformed),
        }
        let Parsed { header, claims } = parse(token)?;
        if let Some(provider) = self.provider_for(header.iss.as_deref()) {
            let live = verify_remote(provider, token, &header).await?;
            provider.rules().check(&claims, unix_now())?;
            let mut verified = self.finish(claims, false)?;
            verified.key_live = Some(live);
            return Ok(verified);
        }
        match &header.kid {
            Some(kid) => {
                let (_, key) = self.keys.by_id(kid).ok_or(TokenError::UnknownKeyId)?;
                if !key.alg_name_is(&header.alg) {
                    return Err(TokenError::WrongAlgorithm);
                }
                check_signature(token, &key.signature)?;
            }
            None => self.check_without_kid(token, &header.alg)?,
        }
        self.rules.check(&claims, unix_now())?;
        self.finish(claims, true)
    }

    /// The provider whose issuer the (not yet verified) token names. Choosing the key set by
    /// `iss` is safe: each set only accepts tokens carrying its own issuer.
    fn provider_for(&self, iss: Option<&str>) -> Option<&Provider> {
        let iss = iss?;
        self.providers
            .iter()
            .find(|p| p.settings.issuer == iss)
            .map(|p| &**p)
    }

    /// No `kid`: each key pinned to the token's algorithm is tried in config order.
    fn check_without_kid(&self, token: &str, alg: &str) -> Result<(), TokenError> {
        let mut last = TokenError::WrongAlgorithm;
        for key in self.keys.iter().filter(|key| key.alg_name_is(alg)) {
            match check_signature(token, &key.signature) {
                Err(TokenError::BadSignature) => last = TokenError::BadSignature,
                other => return other,
            }
        }
        Err(last)
    }

    fn finish(&self, claims: Map<String, Value>, local: bool) -> Result<VerifiedToken, TokenError> {
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| TokenError::BadClaim("exp".into()))?;
        for name in ["nbf", "iat"] {
            if claims.get(name).is_some_and(|v| !v.is_u64()) {
                return Err(TokenError::BadClaim(name.into()));
            }
        }
        // RFC 7519 §4.1.1: `iss` is one string (the library would take an array as any-of).
        if claims.get("iss").is_some_and(|v| !v.is_string()) {
            return Err(TokenError::BadClaim("iss".into()));
        }
        match claims.get("aud") {
            None | Some(Value::String(_)) => {}
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
            Some(_) => return Err(TokenError::BadClaim("aud".into())),
        }
        let sub = match claims.get("sub") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(TokenError::BadClaim("sub".into())),
        };
        let header_values = self
            .header_claims
            .iter()
            .map(|path| render(path.lookup(&claims)))
            .collect();
        let jti = claims.get("jti").and_then(Value::as_str).map(str::to_owned);
        let sid = claims.get("sid").and_then(Value::as_str).map(str::to_owned);
        let iat = claims.get("iat").and_then(Value::as_u64);
        Ok(VerifiedToken {
            claims,
            exp,
            sub,
            jti,
            sid,
            iat,
            key_live: None,
            local,
            header_values,
        })
    }
}

/// Checks the signature with a remote provider's keys: by `kid` (fetching again once per
/// cooldown when it is unknown), or without a kid each key of the token's algorithm in turn.
/// Returns the liveness flag of the key that verified it.
async fn verify_remote(
    provider: &Provider,
    token: &str,
    header: &JoseHeader,
) -> Result<Arc<AtomicBool>, TokenError> {
    let alg: Option<jsonwebtoken::Algorithm> = header.alg.parse().ok();
    let check = |key: &RemoteKey| {
        if Some(key.alg) != alg {
            return Err(TokenError::WrongAlgorithm);
        }
        check_signature(token, &key.signature).map(|()| key.liveness())
    };
    match &header.kid {
        Some(kid) => {
            let known = provider.keys().by_kid(kid).cloned();
            let key = match known {
                Some(key) => key,
                None if provider.refresh_for_unknown_kid().await => provider
                    .keys()
                    .by_kid(kid)
                    .cloned()
                    .ok_or(TokenError::UnknownKeyId)?,
                None => return Err(TokenError::UnknownKeyId),
            };
            check(&key)
        }
        None => {
            let snapshot = provider.keys();
            let mut last = TokenError::UnknownKeyId;
            for key in snapshot.all().iter().filter(|k| Some(k.alg) == alg) {
                match check(key) {
                    Err(TokenError::BadSignature) => last = TokenError::BadSignature,
                    other => return other,
                }
            }
            Err(last)
        }
    }
}

impl Key {
    fn alg_name_is(&self, alg: &str) -> bool {
        self.algorithm.name() == alg
    }
}
