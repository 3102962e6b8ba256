//! JWS signature checks (RFC 7515 §5.2, RFC 7518 §3) with keys parsed once, when they are
//! loaded: an HMAC key, or an aws-lc public key whose RSA Montgomery context is built on first
//! use and then kept. `jsonwebtoken` rebuilds the public key from its raw components on every
//! verification, which was about a third of the time of a cache-miss RS256 request. The
//! crypto is aws-lc's; this module only maps JOSE algorithms and JWK encodings onto it.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};

/// A verification key bound to one algorithm.
pub enum SignatureKey {
    // Boxed: aws-lc keeps the precomputed HMAC state inline (over 1 KiB).
    Hmac(Box<hmac::Key>),
    Public(ParsedPublicKey),
}

impl std::fmt::Debug for SignatureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.write_str(match self {
            SignatureKey::Hmac(_) => "SignatureKey::Hmac",
            SignatureKey::Public(_) => "SignatureKey::Public",
        })
    }
}

impl SignatureKey {
    /// An HMAC key for `alg` (HS256/384/512); `None` for any other algorithm.
    pub fn hmac(alg: Algorithm, secret: &[u8]) -> Option<Self> {
        let algorithm = match alg {
            Algorithm::HS256 => hmac::HMAC_SHA256,
            Algorithm::HS384 => hmac::HMAC_SHA384,
            Algorithm::HS512 => hmac::HMAC_SHA512,
            _ => return None,
        };
        Some(SignatureKey::Hmac(Box::new(hmac::Key::new(
            algorithm, secret,
        ))))
    }

    /// The public key of `jwk`, for `alg` only: the key type and curve must fit it.
    pub fn public(alg: Algorithm, jwk: &Jwk) -> Result<Self, &'static str> {
        let (algorithm, bytes) = public_key_bytes(alg, &jwk.algorithm)?;
        ParsedPublicKey::new(algorithm, bytes)
            .map(SignatureKey::Public)
            .map_err(|_| "the key is not usable with its algorithm")
    }

    /// Whether `signature` (the decoded third part of a JWS) signs `message` (the first two
    /// parts with their dot). HMAC tags are compared in constant time.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            SignatureKey::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
            SignatureKey::Public(key) => key.verify_sig(message, signature).is_ok(),
        }
    }
}

type PublicKeyBytes = (&'static dyn VerificationAlgorithm, Vec<u8>);

/// aws-lc's verification algorithm for `alg` and the key in the encoding it parses: an X.509
/// SubjectPublicKeyInfo for RSA, an uncompressed point for ECDSA, the raw key for Ed25519.
fn public_key_bytes(
    alg: Algorithm,
    params: &AlgorithmParameters,
) -> Result<PublicKeyBytes, &'static str> {
    let b64 = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| "the key has bad base64url")
    };
    match (params, alg) {
        (AlgorithmParameters::RSA(rsa), _) => {
            let algorithm = rsa_algorithm(alg).ok_or("an RSA key needs an RS* or PS* algorithm")?;
            // Some providers pad `n` with a zero byte; aws-lc wants the minimal encoding.
            let unpadded = |v: Vec<u8>| {
                let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
                v[start..].to_vec()
            };
            let components = aws_lc_rs::rsa::PublicKeyComponents {
                n: unpadded(b64(&rsa.n)?),
                e: unpadded(b64(&rsa.e)?),
            };
            let der = components
                .as_der()
                .map_err(|_| "the RSA key's components are invalid")?;
            Ok((algorithm, der.as_ref().to_vec()))
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256 | Algorithm::ES384) => {
            let (algorithm, curve, len): (&'static dyn VerificationAlgorithm, _, _) = match alg {
                Algorithm::ES256 => (&signature::ECDSA_P256_SHA256_FIXED, EllipticCurve::P256, 32),
                _ => (&signature::ECDSA_P384_SHA384_FIXED, EllipticCurve::P384, 48),
            };
            let (x, y) = (b64(&ec.x)?, b64(&ec.y)?);
            if ec.curve != curve || x.len() != len || y.len() != len {
                return Err("the EC key is not on the algorithm's curve");
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Ok((algorithm, point))
        }
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA)
            if okp.curve == EllipticCurve::Ed25519 =>
        {
            Ok((&signature::ED25519, b64(&okp.x)?))
        }
        _ => Err("the key type does not fit its algorithm"),
    }
}

fn rsa_algorithm(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn signed(alg: Algorithm, key: &EncodingKey) -> (Vec<u8>, Vec<u8>) {
        let token = jsonwebtoken::encode(&Header::new(alg), &serde_json::json!({"a": 1}), key)
            .expect("sign");
        let (message, sig) = token.rsplit_once('.').expect("three parts");
        (
            message.as_bytes().to_vec(),
            URL_SAFE_NO_PAD.decode(sig).expect("base64url"),
        )
    }

    #[test]
    fn hmac_accepts_its_own_tag_only() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let key = SignatureKey::hmac(Algorithm::HS256, secret).expect("hmac");
        let (message, sig) = signed(Algorithm::HS256, &EncodingKey::from_secret(secret));
        assert!(key.verify(&message, &sig));
        let mut other = message.clone();
        other[0] ^= 1;
        assert!(!key.verify(&other, &sig));
        assert!(!key.verify(&message, &sig[..31]));
        assert!(SignatureKey::hmac(Algorithm::RS256, secret).is_none());
    }

    #[test]
    fn ed25519_public_key_from_its_jwk() {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).expect("keygen");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pkcs8");
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwk: Jwk =
            serde_json::from_value(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x}))
                .expect("jwk");
        let key = SignatureKey::public(Algorithm::EdDSA, &jwk).expect("parse");
        let sig = pair.sign(b"header.payload");
        assert!(key.verify(b"header.payload", sig.as_ref()));
        assert!(!key.verify(b"header.payloae", sig.as_ref()));
        // The same key under another algorithm is refused at load time.
        assert!(SignatureKey::public(Algorithm::ES256, &jwk).is_err());
        assert!(SignatureKey::public(Algorithm::RS256, &jwk).is_err());
    }

    /// A provider that pads `n` with a zero byte (seen in the wild) still verifies; a token
    /// signed by another key does not.
    #[test]
    fn rsa_jwk_with_a_zero_padded_modulus() {
        use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
        use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("keygen");
        let public = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let mut n = vec![0u8];
        n.extend_from_slice(&public.n);
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(&n),
            "e": URL_SAFE_NO_PAD.encode(&public.e),
        }))
        .expect("jwk");
        let key = SignatureKey::public(Algorithm::RS256, &jwk).expect("parse");
        let mut sig = vec![0u8; pair.public_modulus_len()];
        pair.sign(&RSA_PKCS1_SHA256, &rng, b"header.payload", &mut sig)
            .expect("sign");
        assert!(key.verify(b"header.payload", &sig));
        assert!(!key.verify(b"header.payloae", &sig));
        let other = RsaKeyPair::generate(KeySize::Rsa2048).expect("keygen");
        let mut forged = vec![0u8; other.public_modulus_len()];
        other
            .sign(&RSA_PKCS1_SHA256, &rng, b"header.payload", &mut forged)
            .expect("sign");
        assert!(!key.verify(b"header.payload", &forged));
        assert!(SignatureKey::public(Algorithm::ES256, &jwk).is_err());
    }
}
