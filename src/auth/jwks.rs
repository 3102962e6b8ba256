//! Remote JWKS providers (an external identity provider's published keys). Fetched in the
//! background at start (the gateway starts even when the IdP is down), refreshed on an
//! interval, and on an unknown `kid` at most once per cooldown, so a flood of random kids
//! causes no fetch storm. A failed fetch keeps the last good keys. Only asymmetric keys are
//! taken, each pinned to its declared (or implied) algorithm.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};

use super::registered::ClaimRules;
use super::signature::SignatureKey;
use serde_json::Value;

use crate::config::{Diagnostics, KeyPath, RawTokens};
use http::Uri;

/// Largest JWKS document accepted.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// One key taken from a provider's JWK Set.
pub struct RemoteKey {
    pub alg: Algorithm,
    /// Verifies signatures; parsed once, when the set is fetched.
    pub signature: SignatureKey,
    /// The JWK as published, to tell an unchanged key from a new one under the same `kid`.
    published: String,
    /// Cleared when a fetch no longer finds this key in the set: verifications it made are
    /// then void, cached ones included.
    live: Arc<AtomicBool>,
}

impl RemoteKey {
    /// The flag a verification made with this key keeps, to know whether the key still holds.
    pub fn liveness(&self) -> Arc<AtomicBool> {
        self.live.clone()
    }
}

/// The keys of one fetch.
#[derive(Default)]
pub struct KeySnapshot {
    by_kid: HashMap<String, Arc<RemoteKey>>,
    all: Vec<Arc<RemoteKey>>,
}

impl KeySnapshot {
    /// Carries over the keys of `old` that are published unchanged (so the verifications they
    /// made stay valid) and retires the others.
    fn succeed(mut self, old: &KeySnapshot) -> KeySnapshot {
        let unchanged = |key: &Arc<RemoteKey>| {
            old.all
                .iter()
                .find(|o| o.published == key.published)
                .cloned()
        };
        for key in self.all.iter_mut() {
            if let Some(same) = unchanged(key) {
                *key = same;
            }
        }
        for key in self.by_kid.values_mut() {
            if let Some(same) = unchanged(key) {
                *key = same;
            }
        }
        for gone in old
            .all
            .iter()
            .filter(|o| !self.all.iter().any(|k| Arc::ptr_eq(k, o)))
        {
            gone.live.store(false, Ordering::Release);
        }
        self
    }

    pub fn by_kid(&self, kid: &str) -> Option<&Arc<RemoteKey>> {
        self.by_kid.get(kid)
    }
    pub fn all(&self) -> &[Arc<RemoteKey>] {
        &self.all
    }
}

/// Settings of one `tokens.jwks` entry.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub url: String,
    pub issuer: String,
    pub audience: Option<String>,
    pub refresh_interval: Duration,
    pub unknown_kid_cooldown: Duration,
    pub timeout: Duration,
    pub leeway_secs: u64,
}

/// A remote key set and its fetch state.
pub struct Provider {
    pub settings: ProviderSettings,
    keys: ArcSwap<KeySnapshot>,
    fetched_once: AtomicBool,
    /// When the last unknown-kid fetch started (rare path; a plain mutex is fine).
    last_on_demand: Mutex<Option<Instant>>,
    single_flight: tokio::sync::Mutex<()>,
    client: reqwest::Client,
    /// This provider's issuer (required) and audience, checked on its tokens' claims.
    rules: ClaimRules,
}

/// Why a fetch failed (logged; the old keys stay).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Http(String),
    #[error("status {0}")]
    Status(u16),
    #[error("document larger than 1 MiB")]
    TooLarge,
    #[error("not a JWK Set: {0}")]
    Invalid(String),
}

/// The algorithm a JWK is used with: its `alg`, or the one its key type implies. `None` for
/// symmetric or unsupported keys, which a remote party must never supply.
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        let alg = Algorithm::try_from(alg).ok()?;
        return (!matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            .then_some(alg);
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        _ => None,
    }
}

/// Parses a JWK Set, keeping every usable signature key and skipping the rest.
pub fn parse_jwks(document: &[u8]) -> Result<KeySnapshot, FetchError> {
    let value: Value =
        serde_json::from_slice(document).map_err(|e| FetchError::Invalid(e.to_string()))?;
    let keys = value
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| FetchError::Invalid("no `keys` array".into()))?;
    let mut snapshot = KeySnapshot::default();
    for raw in keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
            continue;
        };
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            continue;
        }
        let Some(alg) = key_algorithm(&jwk) else {
            continue;
        };
        let Ok(signature) = SignatureKey::public(alg, &jwk) else {
            continue;
        };
        let key = Arc::new(RemoteKey {
            alg,
            signature,
            published: raw.to_string(),
            live: Arc::new(AtomicBool::new(true)),
        });
        if let Some(kid) = &jwk.common.key_id {
            snapshot.by_kid.insert(kid.clone(), key.clone());
        }
        snapshot.all.push(key);
    }
    Ok(snapshot)
}

impl Provider {
    pub fn new(settings: ProviderSettings) -> Result<Provider, String> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let rules = ClaimRules {
            issuer: Some(settings.issuer.clone()),
            audience: settings.audience.clone(),
            leeway_secs: settings.leeway_secs,
        };
        Ok(Provider {
            settings,
            rules,
            keys: ArcSwap::from_pointee(KeySnapshot::default()),
            fetched_once: AtomicBool::new(false),
            last_on_demand: Mutex::new(None),
            single_flight: tokio::sync::Mutex::new(()),
            client,
        })
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySnapshot>> {
        self.keys.load()
    }

    /// Whether keys were fetched at least once (readiness).
    pub fn is_ready(&self) -> bool {
        self.fetched_once.load(Ordering::Acquire)
    }

    /// The claim rules of this provider's tokens: its issuer, and the audience when one is
    /// configured.
    pub fn rules(&self) -> &ClaimRules {
        &self.rules
    }

    async fn download(&self) -> Result<Vec<u8>, FetchError> {
        let mut resp = self
            .client
            .get(&self.settings.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| FetchError::Http(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| FetchError::Http(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Fetches and swaps in the keys; on failure the previous keys stay.
    pub async fn fetch(&self) -> Result<usize, FetchError> {
        let result = match self.download().await {
            Ok(body) => parse_jwks(&body),
            Err(e) => Err(e),
        };
        match result {
            Ok(snapshot) => {
                let count = snapshot.all.len();
                let snapshot = snapshot.succeed(&self.keys.load());
                self.keys.store(Arc::new(snapshot));
                self.fetched_once.store(true, Ordering::Release);
                tracing::info!(url = %self.settings.url, keys = count, "JWKS fetched");
                Ok(count)
            }
            Err(e) => {
                tracing::warn!(url = %self.settings.url, error = %e, "JWKS fetch failed; keeping the last good keys");
                Err(e)
            }
        }
    }

    /// For a token naming a `kid` we do not know: fetch again, unless an on-demand fetch
    /// started less than a cooldown ago. Concurrent callers share one fetch. Returns whether
    /// a fetch succeeded (the caller then looks the kid up again).
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let claim_slot = || {
            let mut last = self
                .last_on_demand
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.settings.unknown_kid_cooldown) {
                return false;
            }
            *last = Some(Instant::now());
            true
        };
        if !claim_slot() {
            return false;
        }
        let _flight = self.single_flight.lock().await;
        self.fetch().await.is_ok()
    }

    /// Fetches now and then every `refresh_interval` (after a failure, sooner, with backoff),
    /// until the provider is dropped (its runtime was replaced and finished its requests).
    pub fn spawn_refresher(self: &Arc<Self>) {
        let weak: Weak<Provider> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let Some(provider) = weak.upgrade() else {
                    return;
                };
                let wait = {
                    let _flight = provider.single_flight.lock().await;
                    match provider.fetch().await {
                        Ok(_) => {
                            backoff = Duration::from_secs(1);
                            provider.settings.refresh_interval
                        }
                        Err(_) => {
                            let wait = backoff.min(provider.settings.refresh_interval);
                            backoff = (backoff * 2).min(Duration::from_secs(60));
                            wait
                        }
                    }
                };
                drop(provider);
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// Whether a URL's host is a loopback address, where plain http cannot be intercepted.
pub fn is_loopback(uri: &Uri) -> bool {
    match uri.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Compiles `tokens.jwks`: one provider per entry, https only (plain http from loopback), each
/// issuer listed once and never authgate's own.
pub fn compile(tokens: &RawTokens, diags: &mut Diagnostics) -> Vec<Arc<Provider>> {
    let at = KeyPath::root().key("tokens").key("jwks");
    let mut providers = Vec::new();
    let mut issuers = BTreeSet::new();
    for (i, p) in tokens.jwks.iter().enumerate() {
        let here = at.index(i);
        let url = p.url.as_str();
        match url.parse::<Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
            Ok(uri) if uri.scheme_str() == Some("http") && is_loopback(&uri) => {}
            Ok(uri) if uri.scheme_str() == Some("http") => {
                diags.at(&here.key("url"), "JWKS must be fetched over https (plain http only from loopback addresses): keys fetched in clear text can be replaced by anyone on the path");
                continue;
            }
            _ => {
                diags.at(&here.key("url"), format!("`{url}` is not an https URL"));
                continue;
            }
        }
        let issuer = p.issuer.as_str();
        if issuer.is_empty() {
            diags.at(&here.key("issuer"), "issuer must not be empty");
            continue;
        }
        if tokens
            .issuer
            .as_ref()
            .is_some_and(|own| own.as_str() == issuer)
        {
            diags.at(
                &here.key("issuer"),
                "this is authgate's own `tokens.issuer`; each issuer must have one key source",
            );
            continue;
        }
        if !issuers.insert(issuer.to_owned()) {
            diags.at(
                &here.key("issuer"),
                format!("issuer `{issuer}` is listed twice"),
            );
            continue;
        }
        let settings = ProviderSettings {
            url: url.to_owned(),
            issuer: issuer.to_owned(),
            audience: p.audience.as_ref().map(|a| a.as_str().to_owned()),
            refresh_interval: p.refresh_interval.0.max(std::time::Duration::from_secs(1)),
            unknown_kid_cooldown: p.unknown_kid_cooldown.0,
            timeout: p.timeout.0,
            leeway_secs: tokens.leeway.0.as_secs(),
        };
        match Provider::new(settings) {
            Ok(provider) => providers.push(Arc::new(provider)),
            Err(e) => diags.at(&here, e),
        }
    }
    providers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_signature_keys_and_skips_symmetric_or_encryption_keys() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "enc", "use": "enc", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "hs-alg", "alg": "HS256", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "weird", "kid": "x"},
            "not an object"
        ]});
        let snap = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(snap.all().len(), 1);
        assert_eq!(snap.by_kid("ec").map(|k| k.alg), Some(Algorithm::ES256));
        assert!(snap.by_kid("hmac").is_none());
        assert!(snap.by_kid("enc").is_none());
        assert!(snap.by_kid("hs-alg").is_none());
    }

    #[test]
    fn refuses_documents_that_are_not_jwk_sets() {
        assert!(parse_jwks(b"[]").is_err());
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"nope").is_err());
        assert_eq!(parse_jwks(br#"{"keys": []}"#).unwrap().all().len(), 0);
    }
}
