//! Token verification: arbitrary bytes as a token must never panic, and whatever verifies must
//! satisfy the configured rules. The first input byte picks the mode:
//!
//! - even: the rest is the token, as sent in `Authorization: Bearer`;
//! - odd: the rest is `<JOSE header JSON>\n<claims JSON>`, base64url-encoded and signed with one
//!   of the configured HMAC keys, so the fuzzer reaches everything after the signature check
//!   (header members, `alg`/`kid` pinning, claim types, `exp`/`nbf`/`iss`/`aud`, rendering of
//!   header claims) instead of stopping at a bad signature.
//!
//! The verifier is built from a fixed config through `Runtime::from_source`, exactly as the
//! gateway builds it; `verify` is async, so it runs on a current-thread tokio runtime.
#![no_main]

use std::path::Path;

use authgate::auth::verify::unix_now;
use authgate::config::Source;
use authgate::runtime::Runtime;
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const HS256_SECRET: &str = "fuzz-hs256-secret-0123456789abcdef";
const HS512_SECRET: &str = "fuzz-hs512-secret-0123456789abcdef0123456789abcdef0123456789abcdef";
const LEEWAY: u64 = 30;

fn config() -> String {
    format!(
        r#"
tokens:
  issuer: "authgate"
  audience: "apps"
  leeway: "{LEEWAY}s"
  keys:
    - {{ id: "k1", algorithm: HS256, secret: "{HS256_SECRET}" }}
    - {{ id: "k2", algorithm: HS512, secret: "{HS512_SECRET}" }}
cache:
  max_entries: 1000
upstreams:
  demo: "builtin:echo"
routes:
  - name: app
    match: {{ path_prefix: "/" }}
    upstream: demo
    headers: {{ X-User-Id: sub, X-Roles: roles, X-Org: org.id, X-Tenant: tenant }}
"#
    )
}

struct Harness {
    tokio: tokio::runtime::Runtime,
    gateway: Runtime,
}

thread_local! {
    static HARNESS: Harness = Harness {
        tokio: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime"),
        gateway: Runtime::from_source(&Source::from_text(Path::new("fuzz.yaml"), config()))
            .expect("the fuzz config compiles"),
    };
}

fn sign(header: &[u8], claims: &[u8], hs512: bool) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = if hs512 {
        hmac::Key::new(hmac::HMAC_SHA512, HS512_SECRET.as_bytes())
    } else {
        hmac::Key::new(hmac::HMAC_SHA256, HS256_SECRET.as_bytes())
    };
    let tag = hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The JOSE header of a token that verified (it was decoded and checked by the verifier, so it
/// must be a JSON object).
fn header_of(token: &str) -> Map<String, Value> {
    let part = token.split('.').next().unwrap();
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .expect("verified header is base64url");
    serde_json::from_slice(&bytes).expect("verified header is a JSON object")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        }
    } else {
        let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let (header, claims) = rest.split_at(split);
        let claims = claims.get(1..).unwrap_or_default();
        sign(header, claims, mode & 2 != 0)
    };

    HARNESS.with(|h| {
        let verifier = &h.gateway.verifier;
        let first = h.tokio.block_on(verifier.verify(&token));
        // A second look goes through the cache when the first one succeeded; the answer must
        // be the same either way (failures are never cached).
        let second = h.tokio.block_on(verifier.verify(&token));
        match (&first, &second) {
            (Ok(a), Ok(b)) => assert_eq!(a.claims, b.claims),
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!("verify changed its mind: {first:?} then {second:?}"),
        }
        let Ok(verified) = first else {
            return;
        };

        // Only what the configuration allows verifies.
        assert!(token.len() <= authgate::auth::verify::MAX_TOKEN_LEN);
        assert_eq!(token.matches('.').count(), 2, "only JWS compact tokens");
        let header = header_of(&token);
        for forbidden in ["jwk", "jku", "x5u", "x5c", "crit"] {
            assert!(!header.contains_key(forbidden), "{forbidden} accepted");
        }
        let alg = header.get("alg").and_then(Value::as_str);
        match header.get("kid") {
            Some(Value::String(kid)) if kid == "k1" => assert_eq!(alg, Some("HS256")),
            Some(Value::String(kid)) if kid == "k2" => assert_eq!(alg, Some("HS512")),
            None => assert!(matches!(alg, Some("HS256" | "HS512")), "alg {alg:?}"),
            other => panic!("kid {other:?} accepted"),
        }
        let claims = &verified.claims;
        assert!(verified.local);
        assert!(
            verified.exp.saturating_add(LEEWAY) >= unix_now(),
            "expired token accepted"
        );
        assert_eq!(
            claims.get("exp").and_then(Value::as_u64),
            Some(verified.exp)
        );
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_u64().expect("nbf is a number");
            assert!(nbf <= unix_now() + LEEWAY, "token not valid yet accepted");
        }
        assert_eq!(claims.get("iss"), Some(&Value::from("authgate")));
        match claims.get("aud") {
            Some(Value::String(aud)) => assert_eq!(aud, "apps"),
            Some(Value::Array(auds)) => assert!(auds.contains(&Value::from("apps"))),
            other => panic!("aud {other:?} accepted"),
        }
        for i in 0..verifier.header_claims().len() {
            if let Ok(Some(value)) = verified.header_value(i) {
                assert!(
                    !value
                        .as_bytes()
                        .iter()
                        .any(|&b| b < 0x20 && b != b'\t' || b == 0x7f),
                    "control byte in an injected header: {value:?}"
                );
            }
        }
    });
});
