//! Hostile tokens: the attacks that broke JWT libraries and auth gateways (alg none, RS→HS
//! algorithm confusion, psychic signatures, embedded and remote keys, hostile `kid`s, claim
//! type confusion, duplicate members, JWE, non-canonical encodings) and token-driven resource
//! exhaustion (oversized tokens, cache flooding, unknown-kid fetch storms).
//!
//! Every case asserts the status and what the upstream received; refusals assert that nothing
//! reached it, and each table ends with a positive control proving the setup accepts the real
//! thing (so a refusal is never vacuous).
mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------- helpers

async fn standard() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    (up, gw)
}

/// A 401 `invalid_token` and nothing forwarded.
#[track_caller]
fn refused(r: &Reply, up: &Upstream, case: &str) {
    assert_eq!(r.status, 401, "{case}: {}", r.text());
    assert_eq!(r.json()["error"], "invalid_token", "{case}: {}", r.text());
    assert_eq!(
        r.headers["www-authenticate"], "Bearer realm=\"authgate\", error=\"invalid_token\"",
        "{case}"
    );
    assert!(up.seen().is_empty(), "{case}: forwarded {:#?}", up.seen());
}

/// The token was accepted and the upstream got exactly one request for `target` as `sub`.
#[track_caller]
fn accepted(r: &Reply, up: &Upstream, target: &str, sub: &str, case: &str) {
    assert_eq!(r.status, 200, "{case}: {}", r.text());
    let seen = up.only();
    assert_eq!(seen.target, target, "{case}");
    assert_eq!(seen.headers["x-user-id"], sub, "{case}");
    assert!(seen.headers.get("authorization").is_none(), "{case}");
}

/// `b64(header).b64(payload)` from raw JSON text (so duplicate members and odd number
/// spellings survive), HMAC-SHA256-signed with `secret`.
fn forge_raw(header: &str, payload: &str, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let sig = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(sig.as_ref()))
}

/// `b64(header).b64(payload)` of JSON values.
fn signing_input(header: &Value, payload: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    )
}

/// The DER bytes inside a PEM document.
fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(pem_body(pem))
        .unwrap()
}

/// The base64 body of a PEM document, on one line.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

/// Standard claims (iss authgate, aud apps, an hour left) as raw JSON with `exp` spelled as given.
fn payload_with(field: &str, raw_value: &str) -> String {
    let mut c = claims("alice", json!({}));
    c.as_object_mut().unwrap().remove(field);
    let mut text = c.to_string();
    text.pop(); // the closing brace
    format!("{text},\"{field}\":{raw_value}}}")
}

const HS_HEADER: &str = r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#;

// ---------------------------------------------------------------- alg none

/// CVE-2015-9235 (node-jsonwebtoken) and friends: `alg: none` in any casing, with an empty
/// signature, with a real HMAC of the configured secret, and with the kid of a real key.
#[tokio::test]
async fn alg_none_in_every_casing_with_and_without_a_signature() {
    let (up, gw) = standard().await;
    let payload = claims("alice", json!({"roles": ["admin"]})).to_string();
    let mut cases = 0;
    for alg in ["none", "None", "NONE", "nOnE"] {
        for kid in [Some("k1"), None] {
            let mut header = json!({"alg": alg, "typ": "JWT"});
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            let signed = forge(&header, &payload, SECRET.as_bytes());
            let (unsigned, _) = signed.rsplit_once('.').unwrap();
            for (label, tok) in [
                ("no signature", format!("{unsigned}.")),
                ("HMAC of the real secret", signed.clone()),
                ("HMAC of an empty key", forge(&header, &payload, b"")),
                ("no signature part at all", unsigned.to_owned()),
            ] {
                let case = format!("alg {alg}, kid {kid:?}, {label}");
                let r = gw.get_with_token("/admin/x", &tok).await;
                refused(&r, &up, &case);
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 32);
    // Control: the real token passes.
    let r = gw
        .get_with_token("/admin/x", &token("alice", json!({"roles": ["admin"]})))
        .await;
    accepted(&r, &up, "/admin/x", "alice", "control");
}

// ---------------------------------------------------------------- algorithm confusion

/// Every asymmetric algorithm family, verify-only (public keys), beside an HMAC key, the way a
/// gateway trusting a rotated-out or external signer is configured.
const MIXED: &str = r#"
listen: "127.0.0.1:0"
tokens:
  issuer: authgate
  audience: apps
  leeway: 0s
  keys:
    - { id: k1, algorithm: HS256, secret: "{SECRET}" }
    - { id: rsa, algorithm: RS256, public_key_file: rsa.pub.pem }
    - { id: ec, algorithm: ES256, public_key_file: ec.pub.pem }
    - { id: ed, algorithm: EdDSA, public_key_file: ed.pub.pem }
upstreams:
  app: "{UPSTREAM}"
routes:
  - name: app
    match: { path_prefix: /app }
    upstream: app
    headers: { X-User-Id: sub }
"#;

struct Mixed {
    up: Upstream,
    gw: Gateway,
    rsa: (String, String),
    ec: (String, String),
    ed: (String, String),
}

async fn mixed() -> Mixed {
    let (rsa, ec, ed) = (keypair("RS256"), keypair("ES256"), keypair("EdDSA"));
    let up = Upstream::start().await;
    let gw = Gateway::start_with_files(
        MIXED,
        &up.url(),
        &[
            ("rsa.pub.pem", rsa.1.as_bytes()),
            ("ec.pub.pem", ec.1.as_bytes()),
            ("ed.pub.pem", ed.1.as_bytes()),
        ],
    )
    .await;
    Mixed {
        up,
        gw,
        rsa,
        ec,
        ed,
    }
}

/// CVE-2016-10555 / CVE-2022-29217 style RS→HS confusion: the attacker HMACs a token with the
/// RSA public key (which is public: even the gateway's own JWKS endpoint publishes it) in every
/// encoding a library might feed to HMAC, with the RSA key's kid and without any kid.
#[tokio::test]
async fn rs256_public_key_as_hs256_secret_in_every_encoding() {
    let m = mixed().await;
    let (up, gw) = (&m.up, &m.gw);
    let public = &m.rsa.1;
    // What the gateway itself publishes: the JWK of the key and the whole JWK Set document.
    let doc = gw.get("/.well-known/jwks.json", &[]).await;
    assert_eq!(doc.status, 200);
    let set: Value = doc.json();
    let jwk = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "rsa")
        .expect("the RSA key is published")
        .clone();
    let modulus = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk["n"].as_str().unwrap())
            .unwrap()
    };
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("PEM with trailing newline", public.as_bytes().to_vec()),
        (
            "PEM without trailing newline",
            public.trim_end().as_bytes().to_vec(),
        ),
        ("DER (SPKI) bytes", pem_der(public)),
        ("base64 body of the PEM", pem_body(public).into_bytes()),
        ("JWK JSON", jwk.to_string().into_bytes()),
        ("published JWK Set document", doc.body.to_vec()),
        ("raw modulus bytes", modulus),
    ];
    let payload = claims("mallory", json!({})).to_string();
    for (label, secret) in &secrets {
        for kid in [Some("rsa"), None, Some("k1")] {
            for alg in ["HS256", "HS384", "HS512"] {
                let mut header = json!({"alg": alg, "typ": "JWT"});
                if let Some(kid) = kid {
                    header["kid"] = json!(kid);
                }
                let hmac_alg = match alg {
                    "HS256" => aws_lc_rs::hmac::HMAC_SHA256,
                    "HS384" => aws_lc_rs::hmac::HMAC_SHA384,
                    _ => aws_lc_rs::hmac::HMAC_SHA512,
                };
                let input = format!(
                    "{}.{}",
                    b64(header.to_string().as_bytes()),
                    b64(payload.as_bytes())
                );
                let sig = aws_lc_rs::hmac::sign(
                    &aws_lc_rs::hmac::Key::new(hmac_alg, secret),
                    input.as_bytes(),
                );
                let tok = format!("{input}.{}", b64(sig.as_ref()));
                let r = gw.get_with_token("/app/x", &tok).await;
                refused(&r, up, &format!("{alg} keyed with {label}, kid {kid:?}"));
            }
        }
        // The same HMAC bytes under the RSA algorithm name.
        let header = json!({"alg": "RS256", "kid": "rsa"});
        let input = signing_input(&header, &serde_json::from_str(&payload).unwrap());
        let sig = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret),
            input.as_bytes(),
        );
        let r = gw
            .get_with_token("/app/x", &format!("{input}.{}", b64(sig.as_ref())))
            .await;
        refused(&r, up, &format!("RS256 header, HMAC keyed with {label}"));
    }
    // Control: a real RS256 token from the matching private key passes.
    let real = sign_pem(
        Algorithm::RS256,
        &m.rsa.0,
        Some("rsa"),
        &claims("alice", json!({})),
    );
    let r = gw.get_with_token("/app/x", &real).await;
    accepted(&r, up, "/app/x", "alice", "control");
}

/// Psychic signatures (CVE-2022-21449: ECDSA r = s = 0), empty and all-zero signatures for
/// every key type, DER-encoded zero and r = s = n (the curve order).
#[tokio::test]
async fn empty_zero_and_psychic_signatures_for_every_key_type() {
    let m = mixed().await;
    let (up, gw) = (&m.up, &m.gw);
    let c = claims("mallory", json!({}));
    // P-256 group order n.
    let n: Vec<u8> = (0..32)
        .map(|i| {
            u8::from_str_radix(
                &"FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551"
                    [2 * i..2 * i + 2],
                16,
            )
            .unwrap()
        })
        .collect();
    let r_eq_s_eq_n = [n.clone(), n].concat();
    let der_zero = vec![0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00];
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("HS256", "k1", vec![]),
        ("HS256", "k1", vec![0; 32]),
        ("RS256", "rsa", vec![]),
        ("RS256", "rsa", vec![0; 256]),
        ("RS256", "rsa", vec![0xff; 256]),
        ("ES256", "ec", vec![]),
        ("ES256", "ec", vec![0; 64]),
        ("ES256", "ec", der_zero),
        ("ES256", "ec", r_eq_s_eq_n),
        ("EdDSA", "ed", vec![]),
        ("EdDSA", "ed", vec![0; 64]),
    ];
    for (alg, kid, sig) in &cases {
        for with_kid in [true, false] {
            let mut header = json!({"alg": alg, "typ": "JWT"});
            if with_kid {
                header["kid"] = json!(kid);
            }
            let tok = format!("{}.{}", signing_input(&header, &c), b64(sig));
            let r = gw.get_with_token("/app/x", &tok).await;
            refused(
                &r,
                up,
                &format!(
                    "{alg} {} signature bytes {:02x?}, kid {with_kid}",
                    sig.len(),
                    &sig[..sig.len().min(8)]
                ),
            );
        }
    }
    // Controls: real ES256 and EdDSA tokens pass.
    for (alg, private, kid) in [
        (Algorithm::ES256, &m.ec.0, "ec"),
        (Algorithm::EdDSA, &m.ed.0, "ed"),
    ] {
        up.clear();
        let tok = sign_pem(alg, private, Some(kid), &claims("alice", json!({})));
        let r = gw.get_with_token("/app/x", &tok).await;
        accepted(&r, up, "/app/x", "alice", &format!("control {alg:?}"));
    }
}

// ---------------------------------------------------------------- embedded and remote keys

/// CVE-2018-0114 (node-jose): a token carrying the attacker's own public key in `jwk`, signed
/// with the matching private key, must not be verified with that key.
#[tokio::test]
async fn embedded_jwk_with_the_attackers_own_key() {
    let m = mixed().await;
    let (up, gw) = (&m.up, &m.gw);
    let (attacker_private, _) = keypair("RS256");
    let enc = EncodingKey::from_rsa_pem(attacker_private.as_bytes()).unwrap();
    let mut attacker_jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
    attacker_jwk.common.key_id = Some("rsa".into());
    let c = claims("mallory", json!({"roles": ["admin"]}));
    for kid in [Some("rsa"), None] {
        let mut header =
            json!({"alg": "RS256", "jwk": serde_json::to_value(&attacker_jwk).unwrap()});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let input = signing_input(&header, &c);
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &enc, Algorithm::RS256).unwrap();
        let r = gw.get_with_token("/app/x", &format!("{input}.{sig}")).await;
        refused(&r, up, &format!("embedded RSA jwk, kid {kid:?}"));
        assert!(r.json()["message"].as_str().unwrap().contains("`jwk`"));
    }
    // An embedded symmetric key: HMAC keyed with the attacker's `k`.
    let header = json!({"alg": "HS256", "kid": "k1", "jwk": {"kty": "oct", "k": b64(b"attacker-key-attacker-key-attacker!!")}});
    let tok = forge(
        &header,
        &c.to_string(),
        b"attacker-key-attacker-key-attacker!!",
    );
    refused(
        &gw.get_with_token("/app/x", &tok).await,
        up,
        "embedded oct jwk",
    );
}

/// `x5c` carrying the attacker's certificate chain (the key inside it signs the token).
#[tokio::test]
async fn x5c_with_the_attackers_certificate() {
    let m = mixed().await;
    let (up, gw) = (&m.up, &m.gw);
    let (attacker_private, attacker_public) = keypair("RS256");
    let enc = EncodingKey::from_rsa_pem(attacker_private.as_bytes()).unwrap();
    let c = claims("mallory", json!({}));
    for kid in [Some("rsa"), None] {
        let mut header = json!({"alg": "RS256", "x5c": [pem_body(&attacker_public)]});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let input = signing_input(&header, &c);
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &enc, Algorithm::RS256).unwrap();
        let r = gw.get_with_token("/app/x", &format!("{input}.{sig}")).await;
        refused(&r, up, &format!("x5c, kid {kid:?}"));
        assert!(r.json()["message"].as_str().unwrap().contains("`x5c`"));
    }
}

/// A TCP listener that counts connections and never answers.
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, count)
}

/// `jku` / `x5u` pointing at a key set the attacker serves: the gateway must refuse the token
/// without ever connecting there (SSRF and key injection in one).
#[tokio::test]
async fn jku_and_x5u_pointing_at_a_listener_cause_no_connection() {
    let m = mixed().await;
    let (up, gw) = (&m.up, &m.gw);
    let (addr, connections) = counting_listener().await;
    let (attacker_private, _) = keypair("RS256");
    let enc = EncodingKey::from_rsa_pem(attacker_private.as_bytes()).unwrap();
    let c = claims("mallory", json!({}));
    for field in ["jku", "x5u"] {
        for kid in [Some("rsa"), Some("attacker"), None] {
            let mut header = json!({"alg": "RS256", field: format!("http://{addr}/keys.json")});
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            let input = signing_input(&header, &c);
            let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &enc, Algorithm::RS256).unwrap();
            let r = gw.get_with_token("/app/x", &format!("{input}.{sig}")).await;
            refused(&r, up, &format!("{field}, kid {kid:?}"));
            assert!(r.json()["message"].as_str().unwrap().contains(field));
        }
        // And on an HMAC token signed with the real secret: the header alone is enough.
        let header = json!({"alg": "HS256", "kid": "k1", field: format!("http://{addr}/")});
        let tok = forge(&header, &c.to_string(), SECRET.as_bytes());
        refused(&gw.get_with_token("/app/x", &tok).await, up, field);
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the gateway connected to jku/x5u"
    );
}

// ---------------------------------------------------------------- hostile kid

/// `kid` as a path (CVE-2018-1000531-style key file lookups, signed with the empty key
/// `/dev/null` would give), as a header-injection vector, as SQL, huge, and of the wrong type.
#[tokio::test]
async fn hostile_kid_values() {
    let (up, gw) = standard().await;
    let payload = claims("mallory", json!({"roles": ["admin"]})).to_string();
    let long = "k".repeat(10 * 1024);
    let cases: Vec<(&str, Value, &[u8])> = vec![
        (
            "path traversal to /dev/null, empty key",
            json!("../../../../dev/null"),
            b"",
        ),
        (
            "path traversal, real secret",
            json!("../../../../dev/null"),
            SECRET.as_bytes(),
        ),
        (
            "CRLF header injection",
            json!("k1\r\nX-Injected: 1"),
            SECRET.as_bytes(),
        ),
        ("NUL after a real kid", json!("k1\u{0}"), SECRET.as_bytes()),
        ("10 KB kid", json!(long), SECRET.as_bytes()),
        ("SQL injection", json!("' OR '1'='1"), SECRET.as_bytes()),
        (
            "SQL injection, empty key",
            json!("x' UNION SELECT '' --"),
            b"",
        ),
        ("JSON object", json!({"kid": "k1"}), SECRET.as_bytes()),
        ("JSON number", json!(1), SECRET.as_bytes()),
        ("JSON array", json!(["k1"]), SECRET.as_bytes()),
        ("JSON null", Value::Null, SECRET.as_bytes()),
        ("other case", json!("K1"), SECRET.as_bytes()),
        ("trailing space", json!("k1 "), SECRET.as_bytes()),
        ("empty", json!(""), b""),
    ];
    let n = cases.len();
    for (label, kid, secret) in cases {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
        let r = gw
            .get_with_token("/admin/x", &forge(&header, &payload, secret))
            .await;
        refused(&r, &up, label);
    }
    assert_eq!(n, 14);
    let r = gw
        .get_with_token("/admin/x", &token("alice", json!({"roles": ["admin"]})))
        .await;
    accepted(&r, &up, "/admin/x", "alice", "control");
    assert!(up.only().headers.get("x-injected").is_none());
}

// ---------------------------------------------------------------- time claims

/// Validly signed tokens whose time claims have the wrong type or absurd values.
#[tokio::test]
async fn time_claims_of_the_wrong_type_or_absurd_values() {
    let (up, gw) = standard().await;
    let t = now();
    let cases: Vec<(&str, &str, String)> = vec![
        ("exp as a string", "exp", format!("\"{}\"", t + 3600)),
        ("exp as a float", "exp", format!("{}.5", t + 3600)),
        ("exp as an exponent float", "exp", "1.9e9".into()),
        ("exp negative", "exp", "-1".into()),
        ("exp 1e300", "exp", "1e300".into()),
        ("exp u64::MAX + 1", "exp", "18446744073709551616".into()),
        ("exp 0", "exp", "0".into()),
        ("exp true", "exp", "true".into()),
        ("exp null", "exp", "null".into()),
        ("exp in an array", "exp", format!("[{}]", t + 3600)),
        (
            "exp as an object",
            "exp",
            format!("{{\"$numberLong\":{}}}", t + 3600),
        ),
        (
            "nbf ten years ahead",
            "nbf",
            (t + 10 * 365 * 86400).to_string(),
        ),
        ("nbf u64::MAX", "nbf", u64::MAX.to_string()),
        ("nbf as a string", "nbf", "\"0\"".into()),
        ("nbf negative", "nbf", "-100".into()),
        ("iat as a string", "iat", format!("\"{t}\"")),
        ("iat as a float", "iat", format!("{t}.25")),
    ];
    let n = cases.len();
    for (label, field, value) in cases {
        let tok = forge_raw(HS_HEADER, &payload_with(field, &value), SECRET.as_bytes());
        let r = gw.get_with_token("/app/x", &tok).await;
        refused(&r, &up, label);
    }
    assert_eq!(n, 17);
    let r = gw
        .get_with_token("/app/x", &token("alice", json!({})))
        .await;
    accepted(&r, &up, "/app/x", "alice", "control");
}

/// `exp = u64::MAX` is a valid NumericDate on a validly signed token: it passes, and neither
/// the verifier nor the cache's expiry arithmetic overflows (a panic would kill the
/// connection; a wrapped expiry would make the entry vanish or live forever).
#[tokio::test]
async fn exp_u64_max_neither_overflows_nor_breaks_the_cache() {
    let (up, gw) = standard().await;
    let tok = forge_raw(
        HS_HEADER,
        &payload_with("exp", &u64::MAX.to_string()),
        SECRET.as_bytes(),
    );
    for round in 0..2 {
        up.clear();
        let r = gw.get_with_token("/app/x", &tok).await;
        accepted(&r, &up, "/app/x", "alice", &format!("round {round}"));
    }
    assert_eq!(
        gw.handle.gateway.snapshot().verifier.cache().entry_count(),
        1
    );
}

// ---------------------------------------------------------------- aud / iss

/// RFC 7519 §4.1.3: `aud` may be an array; the token is for us when it names us.
#[tokio::test]
async fn aud_array_containing_ours_among_others_is_accepted() {
    let (up, gw) = standard().await;
    let tok = token("alice", json!({"aud": ["billing", "apps", "crm"]}));
    let r = gw.get_with_token("/app/x", &tok).await;
    accepted(&r, &up, "/app/x", "alice", "aud array");
}

#[tokio::test]
async fn aud_and_iss_near_misses_are_refused() {
    let (up, gw) = standard().await;
    let cases: Vec<(&str, Value)> = vec![
        ("aud array without ours", json!({"aud": ["billing", "crm"]})),
        ("aud in another case", json!({"aud": "APPS"})),
        ("aud with a trailing space", json!({"aud": "apps "})),
        ("aud as a prefix", json!({"aud": "apps-evil"})),
        ("aud empty array", json!({"aud": []})),
        ("aud as a number", json!({"aud": 1})),
        ("aud as an object", json!({"aud": {"apps": true}})),
        ("aud null", json!({"aud": null})),
        ("iss with a trailing slash", json!({"iss": "authgate/"})),
        ("iss with a trailing space", json!({"iss": "authgate "})),
        ("iss with a leading space", json!({"iss": " authgate"})),
        ("iss with a newline", json!({"iss": "authgate\n"})),
        ("iss in another case", json!({"iss": "AUTHGATE"})),
        ("iss null", json!({"iss": null})),
        ("iss as an object", json!({"iss": {"authgate": 1}})),
    ];
    for (label, extra) in cases {
        let r = gw.get_with_token("/app/x", &token("alice", extra)).await;
        refused(&r, &up, label);
    }
    let r = gw
        .get_with_token("/app/x", &token("alice", json!({})))
        .await;
    accepted(&r, &up, "/app/x", "alice", "control");
}

/// RFC 7519 §4.1.1: `iss` is one StringOrURI, and the README says tokens "must carry exactly
/// this iss". An array naming ours among others is not exactly ours.
#[tokio::test]
async fn iss_as_an_array_is_refused() {
    let (up, gw) = standard().await;
    for iss in [
        json!(["authgate"]),
        json!(["https://idp.evil/", "authgate"]),
    ] {
        let r = gw
            .get_with_token("/app/x", &token("alice", json!({"iss": iss})))
            .await;
        refused(&r, &up, &format!("iss {iss}"));
    }
}

// ---------------------------------------------------------------- crit, JWE, structure

#[tokio::test]
async fn crit_headers_are_refused() {
    let (up, gw) = standard().await;
    let payload = claims("alice", json!({})).to_string();
    for header in [
        json!({"alg": "HS256", "kid": "k1", "crit": []}),
        json!({"alg": "HS256", "kid": "k1", "crit": ["b64"], "b64": false}),
        json!({"alg": "HS256", "kid": "k1", "crit": ["x-unknown"], "x-unknown": 1}),
        json!({"alg": "HS256", "kid": "k1", "crit": "exp"}),
    ] {
        let r = gw
            .get_with_token("/app/x", &forge(&header, &payload, SECRET.as_bytes()))
            .await;
        refused(&r, &up, &header.to_string());
        assert!(r.json()["message"].as_str().unwrap().contains("`crit`"));
    }
}

/// Five parts is JWE; a JWE whose protected header is a valid JWS header must not be taken
/// apart into a JWS either.
#[tokio::test]
async fn five_part_jwe_is_refused() {
    let (up, gw) = standard().await;
    let valid = token("alice", json!({}));
    let (head, rest) = valid.split_once('.').unwrap();
    for tok in [
        "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..nVQ5fMqS3AUMPgiS.b5Q9cqmWWZ5Zy8l6.SgBDsT1TXjPwdy6ZmtFQ_Q".to_owned(),
        format!("{}.ZW5jcnlwdGVkLWtleQ.aXY.Y2lwaGVy.dGFn", b64(br#"{"alg":"RSA-OAEP","enc":"A128GCM","kid":"k1"}"#)),
        format!("{head}.{rest}.AAAA.BBBB"),
        format!("{head}...."),
    ] {
        let r = gw.get_with_token("/app/x", &tok).await;
        refused(&r, &up, &tok);
        assert!(r.json()["message"].as_str().unwrap().contains("encrypted"), "{tok}");
    }
}

/// RFC 7515 §4 lets a parser take either duplicate member; authgate refuses them, so no other
/// parser can read a different header or claim than the one checked.
#[tokio::test]
async fn duplicate_members_in_header_or_payload_are_refused() {
    let (up, gw) = standard().await;
    let good_payload = claims("alice", json!({"roles": ["admin"]})).to_string();
    let t = now() + 3600;
    let dup_payload =
        |inner: &str| format!(r#"{{"iss":"authgate","aud":"apps","exp":{t},{inner}}}"#);
    let cases: Vec<(&str, String, String)> = vec![
        (
            "header alg none then HS256",
            r#"{"alg":"none","alg":"HS256","kid":"k1"}"#.into(),
            good_payload.clone(),
        ),
        (
            "header alg HS256 then none",
            r#"{"alg":"HS256","alg":"none","kid":"k1"}"#.into(),
            good_payload.clone(),
        ),
        (
            "header kid twice",
            r#"{"alg":"HS256","kid":"k1","kid":"../../dev/null"}"#.into(),
            good_payload.clone(),
        ),
        (
            "header alg via escape",
            r#"{"alg":"HS256","\u0061lg":"none","kid":"k1"}"#.into(),
            good_payload.clone(),
        ),
        (
            "payload sub twice",
            HS_HEADER.into(),
            dup_payload(r#""sub":"alice","sub":"admin""#),
        ),
        (
            "payload sub via escape",
            HS_HEADER.into(),
            dup_payload(r#""sub":"alice","s\u0075b":"admin""#),
        ),
        (
            "payload roles twice",
            HS_HEADER.into(),
            dup_payload(r#""sub":"alice","roles":["dev"],"roles":["admin"]"#),
        ),
        (
            "payload exp twice",
            HS_HEADER.into(),
            format!(r#"{{"sub":"alice","iss":"authgate","aud":"apps","exp":1,"exp":{t}}}"#),
        ),
        (
            "payload aud twice",
            HS_HEADER.into(),
            format!(r#"{{"sub":"alice","iss":"authgate","aud":"evil","aud":"apps","exp":{t}}}"#),
        ),
    ];
    for (label, header, payload) in cases {
        let tok = forge_raw(&header, &payload, SECRET.as_bytes());
        refused(&gw.get_with_token("/admin/x", &tok).await, &up, label);
    }
}

/// The same, one level down: `allow` and claim headers read nested claims
/// (`realm_access.roles`, `org.tenant`), so a duplicate inside a nested object is the same
/// parser differential as a top-level one.
#[tokio::test]
async fn duplicate_members_in_a_nested_claim_are_refused() {
    let up = Upstream::start().await;
    let yaml = STANDARD.replace(
        "allow: { roles: admin }",
        "allow: { realm_access.roles: admin }",
    );
    let gw = Gateway::start(&yaml, &up.url()).await;
    let t = now() + 3600;
    let payload = format!(
        r#"{{"sub":"alice","iss":"authgate","aud":"apps","exp":{t},"realm_access":{{"roles":["user"],"roles":["admin"]}}}}"#
    );
    let r = gw
        .get_with_token(
            "/admin/x",
            &forge_raw(HS_HEADER, &payload, SECRET.as_bytes()),
        )
        .await;
    refused(&r, &up, "nested duplicate roles");
    let payload = format!(
        r#"{{"sub":"alice","iss":"authgate","aud":"apps","exp":{t},"org":{{"tenant":"acme","tenant":"globex"}}}}"#
    );
    let r = gw
        .get_with_token("/app/x", &forge_raw(HS_HEADER, &payload, SECRET.as_bytes()))
        .await;
    refused(&r, &up, "nested duplicate tenant");
}

/// Payloads that are JSON but not a claims object, including a nested JWT (`cty: JWT`).
#[tokio::test]
async fn payloads_that_are_not_a_claims_object() {
    let (up, gw) = standard().await;
    let inner = token("alice", json!({"roles": ["admin"]}));
    let cases: Vec<(&str, String, String)> = vec![
        (
            "nested JWT",
            r#"{"alg":"HS256","kid":"k1","cty":"JWT"}"#.into(),
            format!("\"{inner}\""),
        ),
        ("array", HS_HEADER.into(), r#"[{"sub":"alice"}]"#.into()),
        ("null", HS_HEADER.into(), "null".into()),
        ("number", HS_HEADER.into(), "42".into()),
        ("empty", HS_HEADER.into(), String::new()),
        (
            "trailing garbage",
            HS_HEADER.into(),
            format!("{}x", claims("alice", json!({}))),
        ),
        (
            "two objects",
            HS_HEADER.into(),
            format!("{0}{0}", claims("alice", json!({}))),
        ),
    ];
    for (label, header, payload) in cases {
        let tok = forge_raw(&header, &payload, SECRET.as_bytes());
        refused(&gw.get_with_token("/app/x", &tok).await, &up, label);
    }
}

/// The algorithm is pinned by the key: other spellings and other families are refused even
/// with a signature that would verify under the spelled algorithm.
#[tokio::test]
async fn alg_spellings_and_families_other_than_the_keys() {
    let (up, gw) = standard().await;
    let payload = claims("alice", json!({})).to_string();
    for alg in [
        "hs256", "HS256 ", " HS256", "HS-256", "RS256", "ES256", "EdDSA", "PS256",
    ] {
        for kid in [Some("k1"), None] {
            let mut header = json!({"alg": alg});
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            let r = gw
                .get_with_token("/app/x", &forge(&header, &payload, SECRET.as_bytes()))
                .await;
            refused(&r, &up, &format!("alg {alg:?} kid {kid:?}"));
        }
    }
    for header in [
        json!({"kid": "k1"}),
        json!({"alg": ["HS256"], "kid": "k1"}),
        json!({"alg": null}),
    ] {
        let r = gw
            .get_with_token("/app/x", &forge(&header, &payload, SECRET.as_bytes()))
            .await;
        refused(&r, &up, &header.to_string());
    }
}

// ---------------------------------------------------------------- encodings and whitespace

/// A token whose signature contains `-` or `_`, so its standard-alphabet twin differs.
fn token_with_url_safe_chars() -> String {
    (0..)
        .map(|i| token("alice", json!({"jti": format!("j{i}")})))
        .find(|t| {
            let sig = t.rsplit('.').next().unwrap();
            sig.contains('-') || sig.contains('_')
        })
        .unwrap()
}

#[tokio::test]
async fn non_canonical_encodings_are_refused() {
    let (up, gw) = standard().await;
    let good = token_with_url_safe_chars();
    let (input, sig) = good.rsplit_once('.').unwrap();
    // The last character of a 43-character HS256 signature carries 4 bits and 2 padding bits;
    // flipping a padding bit leaves the decoded bytes alone in a lax decoder.
    let last = sig.as_bytes()[sig.len() - 1];
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = ALPHABET.iter().position(|&c| c == last).unwrap();
    let twin = ALPHABET[index ^ 1] as char;
    let cases: Vec<(&str, String)> = vec![
        (
            "standard base64 alphabet",
            good.replace('-', "+").replace('_', "/"),
        ),
        ("padded signature", format!("{good}=")),
        ("padded header", {
            let (h, rest) = good.split_once('.').unwrap();
            format!("{h}==.{rest}")
        }),
        (
            "non-canonical trailing bits",
            format!("{input}.{}{twin}", &sig[..sig.len() - 1]),
        ),
        ("percent-encoded dot", good.replacen('.', "%2E", 1)),
        ("empty parts", "..".into()),
        ("four parts", format!("{good}.AAAA")),
        ("trailing dot", format!("{good}.")),
    ];
    for (label, tok) in cases {
        refused(&gw.get_with_token("/app/x", &tok).await, &up, label);
    }
    let r = gw.get_with_token("/app/x", &good).await;
    accepted(&r, &up, "/app/x", "alice", "control");
}

/// Whitespace and line breaks inside a token: never joined back into a valid token.
#[tokio::test]
async fn tokens_with_whitespace_or_line_breaks_inside() {
    let (up, gw) = standard().await;
    let good = token("alice", json!({"roles": ["admin"]}));
    let (head, rest) = good.split_once('.').unwrap();
    // Through a client: a space or tab splits the token (several tokens: 400).
    for (label, tok) in [
        ("space after the header", format!("{head}. {rest}")),
        ("tab inside", format!("{head}.\t{rest}")),
        (
            "space inside the signature",
            format!("{} {}", &good[..good.len() - 5], &good[good.len() - 5..]),
        ),
    ] {
        let auth = format!("Bearer {tok}");
        let r = gw.get("/admin/x", &[("authorization", &auth)]).await;
        assert_eq!(r.status, 400, "{label}: {}", r.text());
        assert!(up.seen().is_empty(), "{label}");
    }
    // Raw bytes: a line break inside the header value (obs-fold), CR alone, NUL.
    for (label, tok) in [
        ("CRLF + space fold", format!("{head}.\r\n {rest}")),
        ("CRLF + tab fold", format!("{head}.\r\n\t{rest}")),
        ("bare LF", format!("{head}.\n{rest}")),
        ("bare CR", format!("{head}.\r{rest}")),
        ("NUL", format!("{head}.\0{rest}")),
    ] {
        let req = format!(
            "GET /admin/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"
        );
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        assert!(
            status == 400 || status == 401,
            "{label}: must be refused, got {status}: {text}"
        );
        assert!(up.seen().is_empty(), "{label}: forwarded {:#?}", up.seen());
    }
    // Control: surrounding whitespace is not part of the token (RFC 9110 OWS).
    let auth = format!("Bearer   {good}  ");
    let r = gw.get("/admin/x", &[("authorization", &auth)]).await;
    accepted(&r, &up, "/admin/x", "alice", "control");
}

// ---------------------------------------------------------------- weak secrets

fn check_binary(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, config).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("AUTHGATE_CONFIG")
        .env_remove("JWT_SECRET")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// A short HMAC secret is brute-forceable offline from one token (jwt-cracker, hashcat -m
/// 16500): refused at load time, by `check` and by the server alike.
#[tokio::test]
async fn weak_hmac_secrets_are_refused_at_startup() {
    let up = Upstream::start().await;
    let cases: Vec<(&str, String)> = vec![
        ("HS256", "0123456789".into()),
        ("HS256", "a".repeat(31)),
        ("HS384", "b".repeat(47)),
        ("HS512", "c".repeat(63)),
    ];
    for (alg, secret) in cases {
        let secret = secret.as_str();
        let yaml = format!(
            "listen: \"127.0.0.1:0\"\ntokens:\n  keys:\n    - {{ id: k1, algorithm: {alg}, secret: \"{secret}\" }}\nupstreams:\n  app: \"{}\"\nroutes:\n  - name: app\n    upstream: app\n",
            up.url()
        );
        let out = check_binary(&yaml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{alg} {} bytes: {stderr}",
            secret.len()
        );
        assert!(
            stderr.contains("gateway.yaml:4:"),
            "{alg}: the error names file:line:column: {stderr}"
        );
        assert!(
            !stderr.contains(secret),
            "{alg}: the secret is echoed: {stderr}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, &yaml).unwrap();
        assert!(
            authgate::snapshot::Loaded::load(&path).is_err(),
            "{alg} loads"
        );
    }
    assert!(up.seen().is_empty());
    assert_eq!(up.connections(), 0);
}

// ---------------------------------------------------------------- exhaustion

/// Writes while reading, so an early answer (431) is read even when the server stops reading
/// the rest of a huge request.
async fn flood(addr: SocketAddr, request: Vec<u8>) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut buf)).await;
    writer.abort();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn one_megabyte_token_is_refused_and_never_forwarded() {
    let (up, gw) = standard().await;
    let good = token("alice", json!({"roles": ["admin"]}));
    let huge = format!("{good}{}", "A".repeat(1 << 20));
    for (label, header) in [
        ("authorization", format!("Authorization: Bearer {huge}")),
        ("cookie", format!("Cookie: authgate_session={huge}")),
    ] {
        let req =
            format!("GET /admin/x HTTP/1.1\r\nHost: gw\r\n{header}\r\nConnection: close\r\n\r\n");
        let (status, text) = flood(gw.addr(), req.into_bytes()).await;
        assert!(
            status == 431 || status == 401,
            "{label}: got {status}: {}",
            &text[..text.len().min(300)]
        );
        assert!(up.seen().is_empty(), "{label}: forwarded");
    }
    // Just over the 16 KiB token limit but inside the head limit: a 401 naming the size.
    let big = format!("{good}.{}", "A".repeat(17 * 1024));
    let r = gw.get_with_token("/admin/x", &big).await;
    refused(&r, &up, "17 KiB token");
    assert!(r.json()["message"].as_str().unwrap().contains("16 KiB"));
    assert_eq!(
        gw.handle.gateway.snapshot().verifier.cache().entry_count(),
        0
    );
}

/// A keep-alive HTTP/1.1 client connection for floods.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn {
            sender,
            host: addr.to_string(),
        }
    }

    async fn get(&mut self, path: &str, token: &str) -> u16 {
        self.sender.ready().await.expect("keep-alive connection");
        let req = Request::get(path)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        status
    }
}

/// Sends every token to `path` over 4 keep-alive connections; returns the statuses.
async fn blast(addr: SocketAddr, path: &'static str, tokens: Vec<String>) -> Vec<u16> {
    let chunk = tokens.len().div_ceil(4);
    let mut tasks = Vec::new();
    for part in tokens.chunks(chunk).map(<[String]>::to_vec) {
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut out = Vec::new();
            for t in part {
                out.push(conn.get(path, &t).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Refused tokens are never cached: 2,000 distinct junk tokens (bad signatures, expired, wrong
/// issuer, garbage) leave the claims cache empty, so they cannot evict real sessions.
#[tokio::test]
async fn two_thousand_junk_tokens_do_not_grow_the_claims_cache() {
    let (up, gw) = standard().await;
    let other = "attacker-test-only-secret-0123456789abcdef";
    let tokens: Vec<String> = (0..2000)
        .map(|i| match i % 4 {
            0 => hs256(other, Some("k1"), &claims(&format!("u{i}"), json!({}))),
            1 => token(&format!("u{i}"), json!({"exp": now() - 60})),
            2 => token(&format!("u{i}"), json!({"iss": format!("evil-{i}")})),
            _ => format!(
                "{}.{}.{}",
                b64(b"{\"alg\":\"HS256\"}"),
                b64(format!("junk{i}").as_bytes()),
                b64(b"sig")
            ),
        })
        .collect();
    let statuses = blast(gw.addr(), "/app/x", tokens).await;
    assert_eq!(statuses.len(), 2000);
    assert!(statuses.iter().all(|&s| s == 401), "{statuses:?}");
    assert!(up.seen().is_empty());
    assert_eq!(
        gw.handle.gateway.snapshot().verifier.cache().entry_count(),
        0
    );
}

/// 2,000 distinct valid tokens against `cache.max_entries: 100`: all pass, the cache stays
/// bounded (moka's count is approximate, hence a little slack).
#[tokio::test]
async fn two_thousand_valid_tokens_keep_the_cache_bounded() {
    let up = Upstream::start().await;
    let yaml = format!("{STANDARD}cache:\n  max_entries: 100\n");
    let gw = Gateway::start(&yaml, &up.url()).await;
    let tokens: Vec<String> = (0..2000)
        .map(|i| token(&format!("user{i}"), json!({})))
        .collect();
    let statuses = blast(gw.addr(), "/app/x", tokens).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2000);
    assert!(seen.iter().all(|s| s.target == "/app/x"));
    let mut subs: Vec<String> = seen
        .iter()
        .map(|s| s.headers["x-user-id"].to_str().unwrap().to_owned())
        .collect();
    subs.sort();
    subs.dedup();
    assert_eq!(subs.len(), 2000, "every request carried its own identity");
    let count = gw.handle.gateway.snapshot().verifier.cache().entry_count();
    assert!(count <= 110, "{count} entries with max_entries 100");
}

/// A fake identity provider that counts JWKS fetches.
async fn counting_idp(body: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (f, body) = (f.clone(), body.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    f.fetch_add(1, Ordering::SeqCst);
                    let resp = http::Response::new(Full::new(Bytes::from(body.clone())));
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}/jwks.json"), fetches)
}

/// 100 concurrent tokens naming random kids of a remote IdP cause at most one fetch (and
/// tokens naming no kid, or another issuer, none).
#[tokio::test]
async fn unknown_kid_flood_against_a_remote_jwks_causes_at_most_one_fetch() {
    let idp_private = keypair("RS256").0;
    let enc = EncodingKey::from_rsa_pem(idp_private.as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("real".into());
    let (url, fetches) =
        counting_idp(serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap()).await;
    let up = Upstream::start().await;
    let yaml = format!(
        r#"
listen: "127.0.0.1:0"
tokens:
  issuer: authgate
  audience: apps
  keys:
    - {{ id: k1, algorithm: HS256, secret: "{{SECRET}}" }}
  jwks:
    - url: "{url}"
      issuer: "https://idp.test/"
      audience: apps
      unknown_kid_cooldown: 60s
      refresh_interval: 15m
      timeout: 2s
upstreams:
  app: "{{UPSTREAM}}"
routes:
  - name: app
    upstream: app
    headers: {{ X-User-Id: sub }}
"#
    );
    let gw = Gateway::start(&yaml, &up.url()).await;
    // Readiness poll (not a sleep for time to pass): the first background fetch.
    for _ in 0..200 {
        if gw
            .handle
            .gateway
            .snapshot()
            .verifier
            .providers()
            .iter()
            .all(|p| p.is_ready())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gw.handle.gateway.snapshot().verifier.providers()[0].is_ready());
    let before = fetches.load(Ordering::SeqCst);
    let idp_claims = |sub: &str| json!({"sub": sub, "iss": "https://idp.test/", "aud": "apps", "exp": now() + 600});
    let addr = gw.addr();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut rnd = [0u8; 12];
        aws_lc_rs::rand::fill(&mut rnd).unwrap();
        let kid = format!("rnd-{i}-{}", b64(&rnd));
        let tok = sign_pem(Algorithm::RS256, &idp_private, Some(&kid), &idp_claims("x"));
        tasks.push(tokio::spawn(async move {
            let auth = format!("Bearer {tok}");
            send(addr, "GET", "/x", &[("authorization", &auth)], Bytes::new())
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    // No kid, or an issuer nobody configured: nothing to fetch for.
    let no_kid = sign_pem(
        Algorithm::RS256,
        &keypair("RS256").0,
        None,
        &idp_claims("x"),
    );
    assert_eq!(gw.get_with_token("/x", &no_kid).await.status, 401);
    let mut other_iss = idp_claims("x");
    other_iss["iss"] = json!("https://other.test/");
    let tok = sign_pem(Algorithm::RS256, &idp_private, Some("zzz"), &other_iss);
    assert_eq!(gw.get_with_token("/x", &tok).await.status, 401);
    let after = fetches.load(Ordering::SeqCst);
    assert!(
        after <= before + 1,
        "{} fetches for 100 unknown kids",
        after - before
    );
    assert!(up.seen().is_empty());
    // Control: the real key still works.
    let real = sign_pem(
        Algorithm::RS256,
        &idp_private,
        Some("real"),
        &idp_claims("zoe"),
    );
    let r = gw.get_with_token("/x", &real).await;
    accepted(&r, &up, "/x", "zoe", "control");
}
