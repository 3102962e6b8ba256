//! Key material from config: HMAC secrets and PEM key files, each pinned to one algorithm and
//! named by a key id (`kid`).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, EncodingKey};

use super::signature::SignatureKey;

use crate::config::{Algorithm, Diagnostics, KeyPath, RawKey, RawTokens, Source};

/// One key: it verifies tokens of exactly one algorithm, and signs when it holds private material.
pub struct Key {
    pub id: String,
    pub algorithm: Algorithm,
    pub alg: jsonwebtoken::Algorithm,
    /// Verifies signatures; parsed once, here.
    pub signature: SignatureKey,
    pub encoding: Option<EncodingKey>,
    /// The public half as a JWK (asymmetric keys only), for publishing.
    pub public_jwk: Option<Jwk>,
    /// True when the secret was generated for this process because none was configured.
    pub ephemeral: bool,
    /// A key derived from the private material (HKDF-SHA256), for sealing short-lived browser
    /// state (the OIDC login cookie): every replica with the same keys can open it.
    pub seal: Option<[u8; 32]>,
}

/// HKDF-SHA256 of private key material, for [`Key::seal`].
fn seal_key(material: &[u8]) -> Option<[u8; 32]> {
    use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
    struct Len;
    impl aws_lc_rs::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = Salt::new(HKDF_SHA256, b"authgate").extract(material);
    let mut out = [0u8; 32];
    prk.expand(&[b"authgate sealing key v1"], Len)
        .ok()?
        .fill(&mut out)
        .ok()?;
    Some(out)
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm)
            .field("signs", &self.encoding.is_some())
            .finish_non_exhaustive()
    }
}

/// Every configured key, looked up by `kid`.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Key>,
    by_id: HashMap<String, usize>,
}

impl KeySet {
    pub fn new(keys: Vec<Key>) -> Self {
        let by_id = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.id.clone(), i))
            .collect();
        KeySet { keys, by_id }
    }
    /// The key named by `kid`, with its position (validations are kept in key order).
    pub fn by_id(&self, kid: &str) -> Option<(usize, &Key)> {
        self.by_id.get(kid).map(|&i| (i, &self.keys[i]))
    }
    pub fn iter(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter()
    }
    /// The key that signs issued tokens: the first one.
    pub fn signing(&self) -> Option<&Key> {
        self.keys.first()
    }
}

pub fn to_jwt_alg(a: Algorithm) -> jsonwebtoken::Algorithm {
    use jsonwebtoken::Algorithm as J;
    match a {
        Algorithm::HS256 => J::HS256,
        Algorithm::HS384 => J::HS384,
        Algorithm::HS512 => J::HS512,
        Algorithm::RS256 => J::RS256,
        Algorithm::RS384 => J::RS384,
        Algorithm::RS512 => J::RS512,
        Algorithm::PS256 => J::PS256,
        Algorithm::PS384 => J::PS384,
        Algorithm::PS512 => J::PS512,
        Algorithm::ES256 => J::ES256,
        Algorithm::ES384 => J::ES384,
        Algorithm::EdDSA => J::EdDSA,
    }
}

/// RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
fn min_secret_len(a: Algorithm) -> usize {
    match a {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

/// Secrets generated for keys with `ephemeral_if_empty`, kept for the life of the process so a
/// config reload does not invalidate every token.
fn ephemeral_secret(id: &str) -> Result<Vec<u8>, String> {
    static SECRETS: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    let map = SECRETS.get_or_init(Default::default);
    let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(secret) = map.get(id) {
        return Ok(secret.clone());
    }
    let mut secret = vec![0u8; 32];
    aws_lc_rs::rand::fill(&mut secret)
        .map_err(|_| "cannot generate a secret: the system random number generator failed")?;
    map.insert(id.to_owned(), secret.clone());
    Ok(secret)
}

type KeyErrors = Vec<(KeyPath, String)>;

/// Loads one `tokens.keys[i]` entry, reading its files relative to the config file.
pub fn load_key(raw: &RawKey, src: &Source, at: &KeyPath) -> Result<Key, KeyErrors> {
    let id = raw.id.as_str().to_owned();
    if id.is_empty() {
        return Err(vec![(at.key("id"), "key id must not be empty".into())]);
    }
    if raw.algorithm.is_hmac() {
        load_hmac(raw, src, at, id)
    } else {
        load_asymmetric(raw, src, at, id)
    }
}

fn load_hmac(raw: &RawKey, src: &Source, at: &KeyPath, id: String) -> Result<Key, KeyErrors> {
    for (field, set) in [
        ("private_key_file", raw.private_key_file.is_some()),
        ("public_key_file", raw.public_key_file.is_some()),
    ] {
        if set {
            return Err(vec![(
                at.key(field),
                format!(
                    "{field} is for asymmetric algorithms; {:?} keys use `secret` or `secret_file`",
                    raw.algorithm
                ),
            )]);
        }
    }
    let (secret, ephemeral, field) = match (&raw.secret, &raw.secret_file) {
        (Some(_), Some(_)) => {
            return Err(vec![(
                at.key("secret_file"),
                "give `secret` or `secret_file`, not both".into(),
            )]);
        }
        (None, None) => {
            return Err(vec![(
                at.key("algorithm"),
                format!("{:?} key needs `secret` or `secret_file`", raw.algorithm),
            )]);
        }
        (Some(s), None) if s.0.is_empty() && raw.ephemeral_if_empty => {
            let secret = ephemeral_secret(&id).map_err(|e| vec![(at.key("secret"), e)])?;
            (secret, true, "secret")
        }
        (Some(s), None) => (s.0.clone().into_bytes(), false, "secret"),
        (None, Some(file)) => {
            let path = src.resolve(file.as_str());
            let mut bytes = std::fs::read(&path).map_err(|e| {
                vec![(
                    at.key("secret_file"),
                    format!("cannot read {}: {e}", path.display()),
                )]
            })?;
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
            (bytes, false, "secret_file")
        }
    };
    let min = min_secret_len(raw.algorithm);
    if secret.len() < min {
        return Err(vec![(
            at.key(field),
            format!(
                "{:?} secret is {} bytes; at least {min} are required (generate one with `openssl rand -hex {min}`)",
                raw.algorithm,
                secret.len()
            ),
        )]);
    }
    let alg = to_jwt_alg(raw.algorithm);
    let signature = SignatureKey::hmac(alg, &secret)
        .ok_or_else(|| vec![(at.key("algorithm"), "not an HMAC algorithm".to_string())])?;
    Ok(Key {
        id,
        algorithm: raw.algorithm,
        alg,
        signature,
        encoding: Some(EncodingKey::from_secret(&secret)),
        public_jwk: None,
        ephemeral,
        seal: seal_key(&secret),
    })
}

fn load_asymmetric(raw: &RawKey, src: &Source, at: &KeyPath, id: String) -> Result<Key, KeyErrors> {
    if raw.secret.is_some() || raw.secret_file.is_some() {
        let field = if raw.secret.is_some() {
            "secret"
        } else {
            "secret_file"
        };
        return Err(vec![(
            at.key(field),
            format!(
                "{:?} keys are PEM files: use `private_key_file` or `public_key_file`",
                raw.algorithm
            ),
        )]);
    }
    let read = |field: &str, file: &str| {
        let path = src.resolve(file);
        std::fs::read(&path).map_err(|e| {
            vec![(
                at.key(field),
                format!("cannot read {}: {e}", path.display()),
            )]
        })
    };
    match (&raw.private_key_file, &raw.public_key_file) {
        (Some(_), Some(_)) => Err(vec![(
            at.key("public_key_file"),
            "give `private_key_file` (signs and verifies) or `public_key_file` (verifies), not both".into(),
        )]),
        (None, None) => Err(vec![(
            at.key("algorithm"),
            format!("{:?} key needs `private_key_file` or `public_key_file`", raw.algorithm),
        )]),
        (Some(file), None) => {
            private_key(raw.algorithm, &read("private_key_file", file.as_str())?, at, id)
        }
        (None, Some(file)) => {
            public_key(raw.algorithm, &read("public_key_file", file.as_str())?, at, id)
        }
    }
}

/// A PEM private key: signs, and its derived public half verifies and is published.
fn private_key(
    algorithm: Algorithm,
    pem: &[u8],
    at: &KeyPath,
    id: String,
) -> Result<Key, KeyErrors> {
    let alg = to_jwt_alg(algorithm);
    let hint = if String::from_utf8_lossy(pem).contains("BEGIN EC PRIVATE KEY") {
        " (this is a SEC1 `EC PRIVATE KEY`: convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8.pem`)"
    } else {
        ""
    };
    let kind = family_name(algorithm);
    let bad = || {
        vec![(
            at.key("private_key_file"),
            format!("not a PEM {kind} private key usable with {algorithm:?}{hint}"),
        )]
    };
    let encoding = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        _ => EncodingKey::from_rsa_pem(pem),
    }
    .map_err(|_| bad())?;
    // Deriving the public half also proves the private key fits the algorithm (an ES384 key
    // under ES256 fails here, at load time, not on the first request).
    let jwk = Jwk::from_encoding_key(&encoding, alg).map_err(|_| bad())?;
    let signature = SignatureKey::public(alg, &jwk).map_err(|_| bad())?;
    Ok(Key {
        id,
        algorithm,
        alg,
        signature,
        encoding: Some(encoding),
        public_jwk: Some(jwk),
        ephemeral: false,
        seal: seal_key(pem),
    })
}

/// A PEM public key: verifies only.
fn public_key(
    algorithm: Algorithm,
    pem: &[u8],
    at: &KeyPath,
    id: String,
) -> Result<Key, KeyErrors> {
    let alg = to_jwt_alg(algorithm);
    let kind = family_name(algorithm);
    let bad = || {
        vec![(
            at.key("public_key_file"),
            format!("not a PEM {kind} public key usable with {algorithm:?}"),
        )]
    };
    let decoding = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => DecodingKey::from_rsa_pem(pem),
    }
    .map_err(|_| bad())?;
    let jwk = Jwk::from_decoding_key(&decoding, Some(alg)).map_err(|_| bad())?;
    let signature = SignatureKey::public(alg, &jwk).map_err(|_| bad())?;
    Ok(Key {
        id,
        algorithm,
        alg,
        signature,
        encoding: None,
        public_jwk: Some(jwk),
        ephemeral: false,
        seal: None,
    })
}

/// Compiles `tokens.keys`: every key loaded (files relative to the config file), ids unique.
pub fn compile(raw: &RawTokens, diags: &mut Diagnostics) -> Option<KeySet> {
    let at = KeyPath::root().key("tokens").key("keys");
    if raw.keys.is_empty() {
        diags.at(&at, "at least one key is needed to verify tokens");
        return None;
    }
    let mut keys = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, rk) in raw.keys.iter().enumerate() {
        let key_at = at.index(i);
        if !seen.insert(rk.id.as_str().to_owned()) {
            diags.at(
                &key_at.key("id"),
                format!("key id `{}` is used twice", rk.id.as_str()),
            );
        }
        match load_key(rk, diags.source(), &key_at) {
            Ok(k) => keys.push(k),
            Err(errors) => {
                for (path, message) in errors {
                    diags.at(&path, message);
                }
            }
        }
    }
    (keys.len() == raw.keys.len()).then(|| KeySet::new(keys))
}

/// The files keys were read from (watched for reloads).
pub fn files(raw: &RawTokens, src: &Source) -> Vec<std::path::PathBuf> {
    raw.keys
        .iter()
        .flat_map(|k| [&k.secret_file, &k.private_key_file, &k.public_key_file])
        .flatten()
        .map(|file| src.resolve(file.as_str()))
        .collect()
}

/// The published JWK Set (RFC 7517): public keys only, each with its `kid`, `alg` and `use`.
/// `None` when every key is HMAC.
pub fn jwks_document(keys: &KeySet) -> Option<bytes::Bytes> {
    let published: Vec<serde_json::Value> = keys
        .iter()
        .filter_map(|k| {
            let mut jwk = serde_json::to_value(k.public_jwk.as_ref()?).ok()?;
            let obj = jwk.as_object_mut()?;
            obj.insert("kid".into(), k.id.clone().into());
            obj.insert("alg".into(), k.algorithm.name().into());
            obj.insert("use".into(), "sig".into());
            Some(jwk)
        })
        .collect();
    if published.is_empty() {
        return None;
    }
    serde_json::to_vec(&serde_json::json!({ "keys": published }))
        .ok()
        .map(bytes::Bytes::from)
}

fn family_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::ES256 | Algorithm::ES384 => "EC",
        Algorithm::EdDSA => "Ed25519",
        _ => "RSA",
    }
}
