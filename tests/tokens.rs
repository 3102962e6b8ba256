//! Token verification end to end: every refusal reason, algorithm pinning, key selection,
//! asymmetric keys, the claims cache and `allow` rules. Each refusal asserts that nothing
//! reached the upstream.
mod common;
use common::*;
use serde_json::json;

async fn standard() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    (up, gw)
}

#[tokio::test]
async fn valid_token_is_forwarded_with_claims_as_headers() {
    let (up, gw) = standard().await;
    let t = token(
        "alice",
        json!({"roles": ["admin", "dev"], "org": {"tenant": "acme"}}),
    );
    let r = gw.get_with_token("/app/x?q=1", &t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "upstream ok");
    let seen = up.only();
    assert_eq!(seen.target, "/app/x?q=1");
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(seen.headers["x-user-roles"], "admin,dev");
    assert_eq!(seen.headers["x-tenant"], "acme");
    assert!(seen.headers.get("authorization").is_none());
}

#[tokio::test]
async fn missing_token_is_401_with_rfc6750_challenge() {
    let (up, gw) = standard().await;
    let r = gw.get("/app/x", &[]).await;
    r.assert_error(401, "invalid_token", "no token");
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer realm=\"authgate\", error=\"invalid_token\""
    );
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(up.seen().is_empty());
}

/// Each case: a token and the reason its 401 must name.
#[tokio::test]
async fn every_refusal_reason_is_named_and_nothing_is_forwarded() {
    let (up, gw) = standard().await;
    let t = now();
    let other_secret = "another-test-only-secret-0123456789abcdef";
    let valid = token("alice", json!({}));
    let (head, rest) = valid.split_once('.').unwrap();
    let (payload, _sig) = rest.split_once('.').unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", token("a", json!({"exp": t - 10})), "expired"),
        (
            "not yet valid",
            token("a", json!({"nbf": t + 600})),
            "not valid yet",
        ),
        (
            "no exp",
            hs256(
                SECRET,
                Some("k1"),
                &json!({"sub": "a", "iss": "authgate", "aud": "apps"}),
            ),
            "no `exp` claim",
        ),
        (
            "string exp",
            token("a", json!({"exp": (t + 3600).to_string()})),
            "`exp` has the wrong type",
        ),
        (
            "float exp",
            token("a", json!({"exp": (t + 3600) as f64 + 0.5})),
            "`exp` has the wrong type",
        ),
        (
            "string nbf",
            token("a", json!({"nbf": "0"})),
            "`nbf` has the wrong type",
        ),
        ("wrong iss", token("a", json!({"iss": "evil"})), "issuer"),
        (
            "no iss",
            hs256(
                SECRET,
                Some("k1"),
                &json!({"sub": "a", "aud": "apps", "exp": t + 60}),
            ),
            "no `iss` claim",
        ),
        ("wrong aud", token("a", json!({"aud": "other"})), "audience"),
        (
            "no aud",
            hs256(
                SECRET,
                Some("k1"),
                &json!({"sub": "a", "iss": "authgate", "exp": t + 60}),
            ),
            "no `aud` claim",
        ),
        (
            "numeric sub",
            token("a", json!({"sub": 42})),
            "`sub` has the wrong type",
        ),
        (
            "other secret",
            hs256(other_secret, Some("k1"), &claims("a", json!({}))),
            "signature is invalid",
        ),
        (
            "other secret, no kid",
            hs256(other_secret, None, &claims("a", json!({}))),
            "signature is invalid",
        ),
        (
            "tampered payload",
            format!(
                "{head}.{}.{}",
                b64(claims("root", json!({})).to_string().as_bytes()),
                rest.split_once('.').unwrap().1
            ),
            "signature is invalid",
        ),
        (
            "no signature",
            format!("{head}.{payload}."),
            "signature is invalid",
        ),
        (
            "unknown kid",
            hs256(SECRET, Some("k9"), &claims("a", json!({}))),
            "key id",
        ),
        (
            "alg none",
            forge(
                &json!({"alg": "none", "kid": "k1"}),
                &claims("a", json!({})).to_string(),
                b"",
            )
            .rsplit_once('.')
            .map(|(s, _)| format!("{s}."))
            .unwrap(),
            "unsigned",
        ),
        (
            "alg None",
            forge(
                &json!({"alg": "None"}),
                &claims("a", json!({})).to_string(),
                b"",
            ),
            "unsigned",
        ),
        (
            "alg NONE",
            forge(
                &json!({"alg": "NONE"}),
                &claims("a", json!({})).to_string(),
                SECRET.as_bytes(),
            ),
            "unsigned",
        ),
        (
            "jku header",
            forge(
                &json!({"alg": "HS256", "kid": "k1", "jku": "http://127.0.0.1:1/jwks"}),
                &claims("a", json!({})).to_string(),
                SECRET.as_bytes(),
            ),
            "`jku`",
        ),
        (
            "jwk header",
            forge(
                &json!({"alg": "HS256", "jwk": {"kty": "oct", "k": "AAAA"}}),
                &claims("a", json!({})).to_string(),
                SECRET.as_bytes(),
            ),
            "`jwk`",
        ),
        (
            "x5u header",
            forge(
                &json!({"alg": "HS256", "kid": "k1", "x5u": "http://127.0.0.1:1/cert"}),
                &claims("a", json!({})).to_string(),
                SECRET.as_bytes(),
            ),
            "`x5u`",
        ),
        (
            "x5c header",
            forge(
                &json!({"alg": "HS256", "kid": "k1", "x5c": ["AAAA"]}),
                &claims("a", json!({})).to_string(),
                SECRET.as_bytes(),
            ),
            "`x5c`",
        ),
        (
            "crit header",
            forge(
                &json!({"alg": "HS256", "kid": "k1", "crit": ["exp"]}),
                &claims("a", json!({})).to_string(),
                SECRET.as_bytes(),
            ),
            "`crit`",
        ),
        (
            "HS512 under an HS256 key",
            {
                let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512);
                h.kid = Some("k1".into());
                jsonwebtoken::encode(
                    &h,
                    &claims("a", json!({})),
                    &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
                )
                .unwrap()
            },
            "algorithm",
        ),
        (
            "JWE",
            "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4R0NNIn0..aaaa.bbbb.cccc".into(),
            "encrypted",
        ),
        ("garbage", "not-a-jwt".into(), "well-formed"),
        ("bad base64 header", "!!!.e30.sig".into(), "well-formed"),
        (
            "header not JSON",
            format!("{}.{payload}.c2ln", b64(b"nope")),
            "well-formed",
        ),
        (
            "huge token",
            format!("{head}.{}.sig", "A".repeat(20_000)),
            "larger than 16 KiB",
        ),
    ];
    for (name, tok, why) in cases {
        let r = gw.get_with_token("/app/x", &tok).await;
        assert_eq!(r.status, 401, "{name}: {}", r.text());
        let body = r.json();
        assert_eq!(body["error"], "invalid_token", "{name}");
        let msg = body["message"].as_str().unwrap();
        assert!(
            msg.contains(why),
            "{name}: message {msg:?} should contain {why:?}"
        );
        assert!(!msg.contains(SECRET), "{name}: message leaks the secret");
        assert_eq!(
            r.headers["www-authenticate"], "Bearer realm=\"authgate\", error=\"invalid_token\"",
            "{name}"
        );
    }
    assert!(up.seen().is_empty(), "a refused token reached the upstream");
}

#[tokio::test]
async fn allow_rules_give_403_insufficient_scope() {
    let (up, gw) = standard().await;
    let r = gw
        .get_with_token("/admin/panel", &token("bob", json!({"roles": ["dev"]})))
        .await;
    r.assert_error(403, "insufficient_scope", "roles");
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer realm=\"authgate\", error=\"insufficient_scope\""
    );
    let r = gw
        .get_with_token("/admin/panel", &token("bob", json!({})))
        .await;
    assert_eq!(r.status, 403);
    let r = gw
        .get_with_token("/admin/panel", &token("bob", json!({"roles": "admin"})))
        .await;
    assert_eq!(
        r.status, 200,
        "a scalar claim equal to the wanted value passes"
    );
    assert_eq!(up.only().headers["x-user-id"], "bob");
}

const RULES: &str = r#"
tokens:
  issuer: authgate
  audience: apps
  keys:
    - { id: k1, algorithm: HS256, secret: "{SECRET}" }
upstreams:
  app: "{UPSTREAM}"
routes:
  - name: anyof
    match: { path_prefix: /anyof }
    upstream: app
    allow: { roles: [ops, admin], tenant: acme }
  - name: nested
    match: { path_prefix: /nested }
    upstream: app
    allow: { realm_access.roles: admin, level: 3, verified: true }
  - name: optional
    match: { path_prefix: /optional }
    upstream: app
    auth: optional
    headers: { X-User-Id: sub }
  - name: optional-allow
    match: { path_prefix: /optional-allow }
    upstream: app
    auth: optional
    allow: { roles: admin }
"#;

#[tokio::test]
async fn allow_lists_are_any_of_and_every_claim_must_match() {
    let up = Upstream::start().await;
    let gw = Gateway::start(RULES, &up.url()).await;
    let ok = token("a", json!({"roles": ["dev", "ops"], "tenant": "acme"}));
    assert_eq!(gw.get_with_token("/anyof", &ok).await.status, 200);
    let wrong_tenant = token("a", json!({"roles": ["ops"], "tenant": "other"}));
    gw.get_with_token("/anyof", &wrong_tenant)
        .await
        .assert_error(403, "insufficient_scope", "tenant");
    let nested = token(
        "a",
        json!({"realm_access": {"roles": ["admin"]}, "level": 3, "verified": true}),
    );
    assert_eq!(gw.get_with_token("/nested", &nested).await.status, 200);
    let string_level = token(
        "a",
        json!({"realm_access": {"roles": ["admin"]}, "level": "3", "verified": true}),
    );
    assert_eq!(
        gw.get_with_token("/nested", &string_level).await.status,
        403,
        "types are compared strictly"
    );
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn optional_auth_passes_anonymous_requests_but_not_bad_tokens() {
    let up = Upstream::start().await;
    let gw = Gateway::start(RULES, &up.url()).await;
    let r = gw.get("/optional/x", &[("x-user-id", "spoofed")]).await;
    assert_eq!(r.status, 200);
    assert!(
        up.only().headers.get("x-user-id").is_none(),
        "anonymous request must carry no identity"
    );
    up.clear();
    assert_eq!(
        gw.get_with_token("/optional/x", &token("alice", json!({})))
            .await
            .status,
        200
    );
    assert_eq!(up.only().headers["x-user-id"], "alice");
    up.clear();
    let expired = token("alice", json!({"exp": now() - 3600}));
    gw.get_with_token("/optional/x", &expired)
        .await
        .assert_error(401, "invalid_token", "expired");
    gw.get("/optional-allow", &[])
        .await
        .assert_error(401, "invalid_token", "no token");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn without_kid_each_key_of_the_tokens_algorithm_is_tried() {
    let up = Upstream::start().await;
    let second = "second-test-only-secret-0123456789abcdef";
    let yaml = format!(
        "tokens:\n  keys:\n    - {{ id: new, algorithm: HS256, secret: \"{{SECRET}}\" }}\n    - {{ id: old, algorithm: HS256, secret: \"{second}\" }}\nupstreams:\n  app: \"{{UPSTREAM}}\"\nroutes:\n  - name: app\n    upstream: app\n    headers: {{ X-User-Id: sub }}\n"
    );
    let gw = Gateway::start(&yaml, &up.url()).await;
    let c = json!({"sub": "alice", "exp": now() + 60});
    assert_eq!(
        gw.get_with_token("/", &hs256(second, None, &c))
            .await
            .status,
        200,
        "old key without kid"
    );
    assert_eq!(
        gw.get_with_token("/", &hs256(second, Some("old"), &c))
            .await
            .status,
        200,
        "old key by kid"
    );
    assert_eq!(
        gw.get_with_token("/", &hs256(SECRET, None, &c))
            .await
            .status,
        200,
        "new key without kid"
    );
    let r = gw
        .get_with_token("/", &hs256(second, Some("new"), &c))
        .await;
    r.assert_error(401, "invalid_token", "signature");
    assert_eq!(up.seen().len(), 3);
}

async fn asymmetric_round_trip(alg: jsonwebtoken::Algorithm, name: &str) {
    let (private, public) = keypair(if name == "PS256" { "RS256" } else { name });
    let up = Upstream::start().await;
    let yaml = format!(
        "tokens:\n  keys:\n    - {{ id: signer, algorithm: {name}, private_key_file: private.pem }}\n    - {{ id: verifier, algorithm: {name}, public_key_file: public.pem }}\nupstreams:\n  app: \"{{UPSTREAM}}\"\nroutes:\n  - name: app\n    upstream: app\n    headers: {{ X-User-Id: sub }}\n"
    );
    let gw = Gateway::start_with_files(
        &yaml,
        &up.url(),
        &[
            ("private.pem", private.as_bytes()),
            ("public.pem", public.as_bytes()),
        ],
    )
    .await;
    let c = json!({"sub": "alice", "exp": now() + 60});
    for kid in [Some("signer"), Some("verifier"), None] {
        let r = gw
            .get_with_token("/", &sign_pem(alg, &private, kid, &c))
            .await;
        assert_eq!(r.status, 200, "{name} kid {kid:?}: {}", r.text());
    }
    assert_eq!(up.seen().len(), 3);
    assert!(up.seen().iter().all(|s| s.headers["x-user-id"] == "alice"));

    // A token signed by a different key of the same type is refused.
    let (other, _) = keypair(if name == "PS256" { "RS256" } else { name });
    let r = gw
        .get_with_token("/", &sign_pem(alg, &other, Some("signer"), &c))
        .await;
    r.assert_error(401, "invalid_token", "signature");

    // Algorithm confusion: an HMAC "signed" with the public key PEM must never pass.
    for secret in [public.as_bytes(), public.trim_end().as_bytes()] {
        for kid in [Some("signer"), Some("verifier"), None] {
            let mut header = json!({"alg": "HS256"});
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            let forged = forge(&header, &c.to_string(), secret);
            let r = gw.get_with_token("/", &forged).await;
            assert_eq!(
                r.status, 401,
                "{name}: HS256 with the public key as secret, kid {kid:?}"
            );
        }
    }
    assert_eq!(up.seen().len(), 3, "nothing refused was forwarded");
}

#[tokio::test]
async fn rs256_keys_from_pem_files() {
    asymmetric_round_trip(jsonwebtoken::Algorithm::RS256, "RS256").await;
}

#[tokio::test]
async fn ps256_keys_from_pem_files() {
    asymmetric_round_trip(jsonwebtoken::Algorithm::PS256, "PS256").await;
}

#[tokio::test]
async fn es256_keys_from_pem_files() {
    asymmetric_round_trip(jsonwebtoken::Algorithm::ES256, "ES256").await;
}

#[tokio::test]
async fn eddsa_keys_from_pem_files() {
    asymmetric_round_trip(jsonwebtoken::Algorithm::EdDSA, "EdDSA").await;
}

#[tokio::test]
async fn es256_all_zero_signature_is_refused() {
    let (private, public) = keypair("ES256");
    let up = Upstream::start().await;
    let yaml = "tokens:\n  keys:\n    - { id: ec, algorithm: ES256, public_key_file: public.pem }\nupstreams:\n  app: \"{UPSTREAM}\"\nroutes:\n  - name: app\n    upstream: app\n";
    let gw = Gateway::start_with_files(yaml, &up.url(), &[("public.pem", public.as_bytes())]).await;
    let good = sign_pem(
        jsonwebtoken::Algorithm::ES256,
        &private,
        Some("ec"),
        &json!({"sub": "a", "exp": now() + 60}),
    );
    let (signing_input, _) = good.rsplit_once('.').unwrap();
    for sig in [b64(&[0u8; 64]), String::new(), b64(&[0u8; 1])] {
        let r = gw
            .get_with_token("/", &format!("{signing_input}.{sig}"))
            .await;
        assert_eq!(r.status, 401, "signature {sig:?}");
    }
    assert_eq!(gw.get_with_token("/", &good).await.status, 200);
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn cached_token_with_a_changed_signature_is_refused() {
    let (up, gw) = standard().await;
    let good = token("alice", json!({}));
    assert_eq!(gw.get_with_token("/app", &good).await.status, 200);
    assert_eq!(
        gw.get_with_token("/app", &good).await.status,
        200,
        "second use (cache hit)"
    );
    let (signing_input, _) = good.rsplit_once('.').unwrap();
    let other = hs256(
        "another-test-only-secret-0123456789abcdef",
        Some("k1"),
        &claims("alice", json!({})),
    );
    let forged = format!("{signing_input}.{}", other.rsplit_once('.').unwrap().1);
    gw.get_with_token("/app", &forged)
        .await
        .assert_error(401, "invalid_token", "signature");
    assert_eq!(up.seen().len(), 2);
    assert_eq!(
        gw.handle.gateway.snapshot().verifier.cache().entry_count(),
        1,
        "refused tokens are not cached"
    );
}

#[tokio::test]
async fn cache_never_serves_a_token_past_its_exp() {
    let (up, gw) = standard().await;
    let exp = now() + 2;
    let short = token("alice", json!({"exp": exp}));
    assert_eq!(gw.get_with_token("/app", &short).await.status, 200);
    assert_eq!(
        gw.handle.gateway.snapshot().verifier.cache().entry_count(),
        1,
        "the token was cached"
    );
    // Wait for the wall clock to pass exp (the config has leeway 0s); this is the clock under
    // test, not a readiness wait.
    while now() <= exp {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    gw.get_with_token("/app", &short)
        .await
        .assert_error(401, "invalid_token", "expired");
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn allow_runs_on_every_request_even_for_cached_tokens() {
    let (up, gw) = standard().await;
    let dev = token("bob", json!({"roles": ["dev"]}));
    assert_eq!(
        gw.get_with_token("/app/x", &dev).await.status,
        200,
        "cached on a route without allow"
    );
    assert_eq!(
        gw.get_with_token("/admin/x", &dev).await.status,
        403,
        "the cache holds claims, not decisions"
    );
    assert_eq!(up.seen().len(), 1);
}
