//! The login route end to end: JSON and form logins whose tokens then pass protected routes,
//! indistinguishable failures, bad input, brute-force limits, key rotation and the JWKS
//! endpoint.
mod common;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn login_config(extra_login: &str, keys: &str) -> String {
    let (alice, bob) = user_hashes();
    format!(
        r#"
tokens:
  issuer: authgate
  audience: apps
  ttl: 15m
  keys:
{keys}
login:
  path: /auth/login
{extra_login}
  users:
    - username: alice
      password_hash: "{alice}"
      claims: {{ roles: [admin, dev], tenant: acme }}
    - username: bob
      password_hash: "{bob}"
upstreams:
  app: "{{UPSTREAM}}"
routes:
  - name: admin
    match: {{ path_prefix: /admin }}
    upstream: app
    allow: {{ roles: admin }}
    headers: {{ X-User-Id: sub, X-User-Roles: roles, X-Tenant: tenant }}
  - name: app
    upstream: app
    headers: {{ X-User-Id: sub }}
"#
    )
}

const HS_KEY: &str = "    - { id: k1, algorithm: HS256, secret: \"{SECRET}\" }";

async fn start(extra_login: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&login_config(extra_login, HS_KEY), &up.url()).await;
    (up, gw)
}

async fn login_json(gw: &Gateway, user: &str, password: &str) -> Reply {
    json_login(gw, user, password, &[]).await
}

#[tokio::test]
async fn json_login_issues_a_token_that_passes_protected_routes_with_the_users_claims() {
    let (up, gw) = start("").await;
    let r = login_json(&gw, "alice", ALICE_PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["cache-control"], "no-store");
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let token = body["access_token"].as_str().unwrap();
    let claims = payload(token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["iss"], "authgate");
    assert_eq!(claims["aud"], "apps");
    assert_eq!(claims["roles"], json!(["admin", "dev"]));
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 900);
    assert!(claims["nbf"].as_u64().unwrap() <= now());
    assert_eq!(jose_header(token)["kid"], "k1");
    assert!(
        up.seen().is_empty(),
        "the login route is the gateway's own, never forwarded"
    );

    let r = gw.get_with_token("/admin/panel", token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(seen.headers["x-user-roles"], "admin,dev");
    assert_eq!(seen.headers["x-tenant"], "acme");
}

#[tokio::test]
async fn form_login_works_and_every_token_has_a_unique_jti() {
    let (up, gw) = start("").await;
    let r = post_login(
        &gw,
        "application/x-www-form-urlencoded; charset=utf-8",
        "username=bob&password=bob-test-password",
        &[],
    )
    .await;
    assert_eq!(
        r.status,
        303,
        "a browser form login is redirected: {}",
        r.text()
    );
    assert_eq!(r.headers["location"], "/");
    let cookie = r.headers["set-cookie"].to_str().unwrap().to_owned();
    let first = cookie
        .strip_prefix("authgate_session=")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let second = login_json(&gw, "bob", BOB_PASSWORD).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(payload(&first)["jti"], payload(&second)["jti"]);
    assert_eq!(gw.get_with_token("/x", &first).await.status, 200);
    assert_eq!(up.only().headers["x-user-id"], "bob");
    assert_eq!(
        gw.get_with_token("/admin", &first).await.status,
        403,
        "bob has no admin role"
    );
}

#[tokio::test]
async fn extra_fields_in_the_login_body_never_reach_the_token() {
    let (_up, gw) = start("").await;
    let body = json!({"username": "bob", "password": BOB_PASSWORD, "sub": "root", "roles": ["admin"], "exp": 9999999999u64});
    let r = post_login(&gw, "application/json", body.to_string(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let claims = payload(r.json()["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "bob");
    assert!(claims.get("roles").is_none());
    assert!(claims["exp"].as_u64().unwrap() < now() + 1000);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_indistinguishable() {
    let (up, gw) = start("  rate_limit: { per_client: { requests: 1000, per: 1m }, per_username: { requests: 1000, per: 1m } }\n").await;
    let wrong = login_json(&gw, "alice", "not-the-password").await;
    let unknown = login_json(&gw, "mallory", "not-the-password").await;
    for r in [&wrong, &unknown] {
        assert_eq!(r.status, 401);
        assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"authgate\"");
    }
    assert_eq!(wrong.body, unknown.body, "the same body for both");
    assert_eq!(wrong.json()["error"], "invalid_credentials");

    // Timing: both paths run one argon2 verification. Medians over a few tries, compared
    // with a generous factor so a noisy machine cannot fail it, while skipping the hash for
    // unknown users (a ~1000x difference) would.
    async fn median(gw: &Gateway, user: &str) -> Duration {
        let mut times = Vec::new();
        for _ in 0..7 {
            let started = Instant::now();
            assert_eq!(login_json(gw, user, "not-the-password").await.status, 401);
            times.push(started.elapsed());
        }
        times.sort();
        times[3]
    }
    let known = median(&gw, "alice").await;
    let unknown = median(&gw, "mallory").await;
    let ratio = known.as_secs_f64() / unknown.as_secs_f64();
    assert!(
        (0.33..3.0).contains(&ratio),
        "known user {known:?} vs unknown user {unknown:?}"
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn bad_login_input_gets_clear_json_errors() {
    let (up, gw) = start("").await;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "application/json",
            b"{not json".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            br#"{"username":"alice"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            br#"{"username":"alice","password":42}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            br#"["alice","x"]"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "application/x-www-form-urlencoded",
            b"username=alice".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            json!({"username": "a".repeat(300), "password": "x"})
                .to_string()
                .into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            json!({"username": "alice", "password": "x".repeat(2000)})
                .to_string()
                .into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            json!({"username": "alice", "password": "x".repeat(1 << 20)})
                .to_string()
                .into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "text/plain",
            b"username=alice&password=x".to_vec(),
            415,
            "unsupported_media_type",
        ),
        ("", b"{}".to_vec(), 415, "unsupported_media_type"),
    ];
    for (ct, body, status, code) in cases {
        let len = body.len();
        let r = post_login(&gw, ct, body, &[]).await;
        assert_eq!(r.status.as_u16(), status, "{ct} {len} bytes: {}", r.text());
        if ct.starts_with("application/x-www-form-urlencoded") {
            // Browsers get the login page again, with the error.
            assert!(
                r.headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/html")
            );
            assert!(r.text().contains("role=\"alert\""), "{}", r.text());
        } else {
            assert_eq!(r.json()["error"], code);
        }
        assert!(!r.text().contains(ALICE_PASSWORD));
    }
    let r = send(gw.addr(), "PUT", "/auth/login", &[], bytes::Bytes::new()).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, POST");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_reading_them_whole() {
    let (_up, gw) = start("  max_body_bytes: 1024\n").await;
    // A declared length over the limit is refused without waiting for the body.
    let (status, text) = raw(
        gw.addr(),
        b"POST /auth/login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{",
    )
    .await;
    assert_eq!(status, 413, "{text}");
    // A chunked body is cut off at the limit.
    let chunk = "x".repeat(2048);
    let req = format!(
        "POST /auth/login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let (status, text) = raw(gw.addr(), req.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
}

#[tokio::test]
async fn per_client_limit_gives_429_with_retry_after_and_ignores_forwarded_for() {
    let (_up, gw) = start("  rate_limit: { per_client: { requests: 3, per: 1m } }\n").await;
    for i in 0..3 {
        let xff = format!("10.0.0.{i}");
        let r = post_login(
            &gw,
            "application/json",
            json!({"username": format!("u{i}"), "password": "x"}).to_string(),
            &[("x-forwarded-for", &xff)],
        )
        .await;
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let r = post_login(
        &gw,
        "application/json",
        json!({"username": "alice", "password": ALICE_PASSWORD}).to_string(),
        &[("x-forwarded-for", "192.0.2.99")],
    )
    .await;
    assert_eq!(
        r.status,
        429,
        "rotating X-Forwarded-For must not reset the limit: {}",
        r.text()
    );
    assert_eq!(r.json()["error"], "too_many_requests");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
}

#[tokio::test]
async fn per_username_limit_holds_across_clients_behind_a_trusted_proxy() {
    let (_up, gw) = start(
        "  trusted_proxies: [127.0.0.1]\n  rate_limit: { per_client: { requests: 100, per: 1m }, per_username: { requests: 2, per: 1m } }\n",
    )
    .await;
    for i in 0..2 {
        let xff = format!("198.51.100.{i}");
        let r = post_login(
            &gw,
            "application/json",
            json!({"username": "alice", "password": "wrong"}).to_string(),
            &[("x-forwarded-for", &xff)],
        )
        .await;
        assert_eq!(r.status, 401);
    }
    let r = post_login(
        &gw,
        "application/json",
        json!({"username": "alice", "password": "wrong"}).to_string(),
        &[("x-forwarded-for", "198.51.100.77")],
    )
    .await;
    assert_eq!(r.status, 429);
    // Another user is not affected.
    assert_eq!(login_json(&gw, "bob", BOB_PASSWORD).await.status, 200);
}

#[tokio::test]
async fn trusted_proxy_forwarded_for_keys_the_client_limit() {
    let (_up, gw) = start("  trusted_proxies: [127.0.0.0/8]\n  rate_limit: { per_client: { requests: 1, per: 1m } }\n").await;
    let attempt = |ip: &'static str| {
        let gw = &gw;
        async move {
            post_login(
                gw,
                "application/json",
                json!({"username": "x", "password": "y"}).to_string(),
                &[("x-forwarded-for", ip)],
            )
            .await
            .status
        }
    };
    assert_eq!(attempt("203.0.113.1").await, 401);
    assert_eq!(attempt("203.0.113.1").await, 429);
    assert_eq!(
        attempt("203.0.113.2").await,
        401,
        "a different client behind the trusted proxy has its own bucket"
    );
}

#[tokio::test]
async fn rotation_old_key_tokens_pass_and_new_tokens_carry_the_new_kid() {
    let up = Upstream::start().await;
    let old_secret = "old-test-only-secret-0123456789abcdef0123";
    let keys = format!(
        "    - {{ id: k2, algorithm: HS256, secret: \"{{SECRET}}\" }}\n    - {{ id: k1, algorithm: HS256, secret: \"{old_secret}\" }}"
    );
    let gw = Gateway::start(&login_config("", &keys), &up.url()).await;
    let old = hs256(old_secret, Some("k1"), &claims("carol", json!({})));
    assert_eq!(
        gw.get_with_token("/x", &old).await.status,
        200,
        "token from before the rotation"
    );
    let r = login_json(&gw, "bob", BOB_PASSWORD).await;
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(jose_header(&token)["kid"], "k2");
    assert_eq!(gw.get_with_token("/x", &token).await.status, 200);
}

async fn jwks_round_trip(alg: jsonwebtoken::Algorithm, name: &str) {
    let (private, _) = keypair(name);
    let up = Upstream::start().await;
    let keys = format!("    - {{ id: signer, algorithm: {name}, private_key_file: signer.pem }}");
    let gw = Gateway::start_with_files(
        &login_config("", &keys),
        &up.url(),
        &[("signer.pem", private.as_bytes())],
    )
    .await;
    let r = login_json(&gw, "alice", ALICE_PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(jose_header(&token)["alg"], name);
    assert_eq!(gw.get_with_token("/admin", &token).await.status, 200);

    let r = gw.get("/.well-known/jwks.json", &[]).await;
    assert_eq!(r.status, 200);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(set.keys.len(), 1);
    let jwk = set.find("signer").expect("published under its kid");
    let text = r.text();
    for private_member in ["\"d\"", "\"p\"", "\"q\"", "\"dp\""] {
        assert!(
            !text.contains(private_member),
            "private key material published: {text}"
        );
    }
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_audience(&["apps"]);
    validation.set_issuer(&["authgate"]);
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation)
        .expect("issued token verifies against the published key");
    assert_eq!(data.claims["sub"], "alice");
    assert_eq!(up.seen().len(), 1, "only the /admin request was forwarded");
}

#[tokio::test]
async fn rs256_login_tokens_verify_against_the_published_jwks() {
    jwks_round_trip(jsonwebtoken::Algorithm::RS256, "RS256").await;
}

#[tokio::test]
async fn es256_login_tokens_verify_against_the_published_jwks() {
    jwks_round_trip(jsonwebtoken::Algorithm::ES256, "ES256").await;
}

#[tokio::test]
async fn eddsa_login_tokens_verify_against_the_published_jwks() {
    jwks_round_trip(jsonwebtoken::Algorithm::EdDSA, "EdDSA").await;
}

#[tokio::test]
async fn hmac_only_configs_publish_no_jwks() {
    let (up, gw) = start("").await;
    let r = gw.get("/.well-known/jwks.json", &[]).await;
    assert_eq!(
        r.status, 401,
        "no JWKS endpoint: the path is routed like any other (here: needs a token)"
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn users_file_users_can_log_in() {
    let up = Upstream::start().await;
    let (alice, _) = user_hashes();
    let users =
        format!("- username: dave\n  password_hash: \"{alice}\"\n  claims: {{ roles: [admin] }}\n");
    let yaml = login_config("  users_file: users.yaml\n", HS_KEY);
    let gw = Gateway::start_with_files(&yaml, &up.url(), &[("users.yaml", users.as_bytes())]).await;
    let r = login_json(&gw, "dave", ALICE_PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(gw.get_with_token("/admin", &token).await.status, 200);
    assert_eq!(up.only().headers["x-user-id"], "dave");
}
