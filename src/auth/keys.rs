//! Key material from config: HMAC secrets and PEM key files, each pinned to one algorithm and
//! named by a key id (`kid`).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, EncodingKey};

use crate::config::{Algorithm, KeyPath, RawKey, Source};

/// One key: it verifies tokens of exactly one algorithm, and signs when it holds private material.
pub struct Key {
    pub id: String,
    pub algorithm: Algorithm,
    pub alg: jsonwebtoken::Algorithm,
    pub decoding: DecodingKey,
    pub encoding: Option<EncodingKey>,
    /// The public half as a JWK (asymmetric keys only), for publishing.
    pub public_jwk: Option<Jwk>,
    /// True when the secret was generated for this process because none was configured.
    pub ephemeral: bool,
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
    Ok(Key {
        id,
        algorithm: raw.algorithm,
        alg: to_jwt_alg(raw.algorithm),
        decoding: DecodingKey::from_secret(&secret),
        encoding: Some(EncodingKey::from_secret(&secret)),
        public_jwk: None,
        ephemeral,
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
    let alg = to_jwt_alg(raw.algorithm);
    let read = |field: &str, file: &str| {
        let path = src.resolve(file);
        std::fs::read(&path).map_err(|e| {
            vec![(
                at.key(field),
                format!("cannot read {}: {e}", path.display()),
            )]
        })
    };
    let kind = family_name(raw.algorithm);
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
            let pem = read("private_key_file", file.as_str())?;
            let hint = if String::from_utf8_lossy(&pem).contains("BEGIN EC PRIVATE KEY") {
                " (this is a SEC1 `EC PRIVATE KEY`: convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8.pem`)"
            } else {
                ""
            };
            let bad = |_| vec![(at.key("private_key_file"), format!("not a PEM {kind} private key usable with {:?}{hint}", raw.algorithm))];
            let encoding = match raw.algorithm {
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                _ => EncodingKey::from_rsa_pem(&pem),
            }
            .map_err(bad)?;
            // Deriving the public half also proves the private key fits the algorithm (an
            // ES384 key under ES256 fails here, at load time, not on the first request).
            let jwk = Jwk::from_encoding_key(&encoding, alg).map_err(bad)?;
            let decoding = DecodingKey::from_jwk(&jwk).map_err(bad)?;
            Ok(Key {
                id,
                algorithm: raw.algorithm,
                alg,
                decoding,
                encoding: Some(encoding),
                public_jwk: Some(jwk),
                ephemeral: false,
            })
        }
        (None, Some(file)) => {
            let pem = read("public_key_file", file.as_str())?;
            let bad = |_| vec![(at.key("public_key_file"), format!("not a PEM {kind} public key usable with {:?}", raw.algorithm))];
            let decoding = match raw.algorithm {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .map_err(bad)?;
            let jwk = Jwk::from_decoding_key(&decoding, Some(alg)).ok();
            Ok(Key {
                id,
                algorithm: raw.algorithm,
                alg,
                decoding,
                encoding: None,
                public_jwk: jwk,
                ephemeral: false,
            })
        }
    }
}

fn family_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::ES256 | Algorithm::ES384 => "EC",
        Algorithm::EdDSA => "Ed25519",
        _ => "RSA",
    }
}
