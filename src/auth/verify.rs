//! Token verification (RFC 7519/7515) with `jsonwebtoken`. Before the library sees a token we
//! refuse what an attacker could use to choose the key or the algorithm: `alg: none`, embedded
//! or remote keys (`jwk`, `jku`, `x5u`, `x5c`), `crit` extensions and JWE. The key is chosen by
//! `kid` and its configured algorithm is the only one accepted.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use base64::Engine;
use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use serde_json::{Map, Value};

use super::cache::ClaimsCache;
use super::claims::{ClaimPath, RenderError, render};
use super::jwks::{Provider, RemoteKey};
use super::keys::{Key, KeySet};
use super::token::VerifiedToken;

/// Longest token accepted; a JWT larger than this is not a credential but an attack.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token was refused. The message is sent to the client: it names the reason and never
/// key material or library internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("token is larger than 16 KiB")]
    TooLarge,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("encrypted tokens (JWE) are not accepted")]
    Encrypted,
    #[error("unsigned tokens (alg none) are not accepted")]
    Unsigned,
    #[error("token header field `{0}` is not accepted")]
    ForbiddenHeader(&'static str),
    #[error("token key id (kid) is not known")]
    UnknownKeyId,
    #[error("token algorithm is not the one configured for its key")]
    WrongAlgorithm,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token has no `{0}` claim")]
    MissingClaim(String),
    #[error("token claim `{0}` has the wrong type")]
    BadClaim(String),
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token claim `{0}` {1}")]
    UnrenderableClaim(String, RenderError),
    #[error("token has been revoked (logged out)")]
    Revoked,
    #[error("the session cookie is not usable")]
    BadCookie,
}

impl TokenError {
    /// A short fixed label (for metrics and logs).
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::TooLarge => "too_large",
            TokenError::Malformed => "malformed",
            TokenError::Encrypted => "encrypted",
            TokenError::Unsigned => "unsigned",
            TokenError::ForbiddenHeader(_) => "forbidden_header",
            TokenError::UnknownKeyId => "unknown_kid",
            TokenError::WrongAlgorithm => "wrong_algorithm",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::BadClaim(_) => "bad_claim",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::UnrenderableClaim(..) => "bad_claim",
            TokenError::Revoked => "revoked",
            TokenError::BadCookie => "malformed",
        }
    }
}

/// Checks tokens against the configured keys, issuer, audience and leeway, with a cache.
pub struct Verifier {
    keys: Arc<KeySet>,
    /// Remote key sets, each trusted only for tokens naming its issuer.
    providers: Vec<Arc<Provider>>,
    /// One `Validation` per key, in key order: the key's algorithm and nothing else.
    validations: Vec<Validation>,
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

fn parse_header(token: &str) -> Result<JoseHeader, TokenError> {
    let mut parts = token.split('.');
    let header = decode_part(parts.next().ok_or(TokenError::Malformed)?)?;
    // The payload is checked for duplicate members too (its claims are read after the
    // signature check, by serde_json, which would keep the last one silently).
    let payload = decode_part(parts.next().ok_or(TokenError::Malformed)?)?;
    let iss = match payload.get("iss") {
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
    Ok(JoseHeader { alg, kid, iss })
}

fn map_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => TokenError::BadClaim(c.clone()),
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => TokenError::WrongAlgorithm,
        // Bad encodings, bad JSON, keys that do not fit the signature: the token is unusable.
        _ => TokenError::Malformed,
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
        let validations = keys
            .iter()
            .map(|key| {
                let mut v = Validation::new(key.alg);
                v.leeway = options.leeway_secs;
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(iss) = &options.issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                match &options.audience {
                    Some(aud) => {
                        v.set_audience(&[aud]);
                        required.push("aud");
                    }
                    // No audience configured: `aud` is not ours to judge.
                    None => v.validate_aud = false,
                }
                v.set_required_spec_claims(&required);
                v
            })
            .collect();
        Verifier {
            keys,
            providers,
            validations,
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
        let header = parse_header(token)?;
        if let Some(provider) = self.provider_for(header.iss.as_deref()) {
            let (claims, live) = verify_remote(provider, token, &header).await?;
            let mut verified = self.finish(claims, false)?;
            verified.key_live = Some(live);
            return Ok(verified);
        }
        let claims = match &header.kid {
            Some(kid) => {
                let (index, key) = self.keys.by_id(kid).ok_or(TokenError::UnknownKeyId)?;
                if !key.alg_name_is(&header.alg) {
                    return Err(TokenError::WrongAlgorithm);
                }
                self.decode_with(token, index, key)?
            }
            None => self.decode_without_kid(token, &header.alg)?,
        };
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
    fn decode_without_kid(&self, token: &str, alg: &str) -> Result<Map<String, Value>, TokenError> {
        let mut last = TokenError::WrongAlgorithm;
        for (index, key) in self.keys.iter().enumerate() {
            if !key.alg_name_is(alg) {
                continue;
            }
            match self.decode_with(token, index, key) {
                Err(TokenError::BadSignature) => last = TokenError::BadSignature,
                other => return other,
            }
        }
        Err(last)
    }

    fn decode_with(
        &self,
        token: &str,
        index: usize,
        key: &Key,
    ) -> Result<Map<String, Value>, TokenError> {
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &self.validations[index])
            .map(|data| data.claims)
            .map_err(|e| match map_error(e.kind()) {
                // jsonwebtoken reports a claim it cannot parse (`"exp": "soon"`) as missing.
                // It checks claims only after the signature, so the payload is authentic here
                // and can be read to give the precise reason.
                TokenError::MissingClaim(claim) => {
                    match jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(
                        token,
                    ) {
                        Ok(claims) if claims.contains_key(&claim) => TokenError::BadClaim(claim),
                        _ => TokenError::MissingClaim(claim),
                    }
                }
                other => other,
            })
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

/// Verifies with a remote provider's keys: by `kid` (fetching again once per cooldown when it
/// is unknown), or without a kid each key of the token's algorithm in turn. Returns the claims
/// and the liveness flag of the key that verified them.
async fn verify_remote(
    provider: &Provider,
    token: &str,
    header: &JoseHeader,
) -> Result<(Map<String, Value>, Arc<AtomicBool>), TokenError> {
    let alg: Option<jsonwebtoken::Algorithm> = header.alg.parse().ok();
    let decode = |key: &RemoteKey| {
        if Some(key.alg) != alg {
            return Err(TokenError::WrongAlgorithm);
        }
        jsonwebtoken::decode::<Map<String, Value>>(
            token,
            &key.decoding,
            &provider.validation(key.alg),
        )
        .map(|d| (d.claims, key.liveness()))
        .map_err(|e| map_error(e.kind()))
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
            decode(&key)
        }
        None => {
            let snapshot = provider.keys();
            let mut last = TokenError::UnknownKeyId;
            for key in snapshot.all().iter().filter(|k| Some(k.alg) == alg) {
                match decode(key) {
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
