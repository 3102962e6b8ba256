mod common;
use common::*;

// Interop with node's `jsonwebtoken` (the npm package Express apps mint tokens with): tokens it
// signs are accepted or refused by the real gateway exactly as the contract says, and tokens
// `authgate token` issues pass its `jwt.verify`. The package is installed in tests/node by
// ./scripts/test.sh; without it (or without `node`) these tests fail, they never skip.

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};

const NODE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");

/// One HS256 key with the test secret, no issuer or audience, no leeway.
const PLAIN: &str = r#"
listen: "127.0.0.1:0"
tokens:
  leeway: 0s
  keys:
    - { id: k1, algorithm: HS256, secret: "{SECRET}" }
upstreams:
  app: "{UPSTREAM}"
routes:
  - name: app
    match: { path_prefix: /app }
    upstream: app
    headers: { X-User-Id: sub, X-Roles: roles }
"#;

/// The same with an issuer and an audience to check.
const WITH_ISS_AUD: &str = with_routes!(
    r#"  - name: app
    match: { path_prefix: /app }
    upstream: app
    headers: { X-User-Id: sub, X-Roles: roles }
"#
);

/// Panics, telling how to fix it, unless `node` runs and node's jsonwebtoken is installed.
fn require_node() {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`node --version` failed ({}): these interop tests need Node.js and npm; \
             install them, then run ./scripts/test.sh, which installs node's jsonwebtoken",
            out.status
        ),
        Err(e) => panic!(
            "cannot run `node` ({e}): these interop tests need Node.js and npm on PATH; \
             install them, then run ./scripts/test.sh, which installs node's jsonwebtoken"
        ),
    }
    let package = Path::new(NODE_DIR).join("node_modules/jsonwebtoken/package.json");
    assert!(
        package.is_file(),
        "{} is missing: run ./scripts/test.sh, which installs node's jsonwebtoken \
         (npm ci in tests/node) for these interop tests",
        package.display()
    );
}

fn node(script: &str, args: &[&str]) -> Output {
    require_node();
    Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(NODE_DIR)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `node {script}` ({e}): run ./scripts/test.sh"))
}

/// `jwt.sign(payload, SECRET-or-`secret`, options)` in node.
fn node_sign(secret: &str, payload: Value, options: Value) -> String {
    let out = node(
        "sign.js",
        &[secret, &payload.to_string(), &options.to_string()],
    );
    assert!(
        out.status.success(),
        "node sign.js failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `jwt.verify(token, secret, options)` in node: the payload, or node's error message.
fn node_verify(token: &str, secret: &str, options: Value) -> Result<Value, String> {
    let out = node("verify.js", &[token, secret, &options.to_string()]);
    if out.status.success() {
        let stdout = String::from_utf8(out.stdout).unwrap();
        Ok(serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}")))
    } else {
        assert_eq!(out.status.code(), Some(1), "node verify.js: {out:?}");
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The JOSE header of a token, decoded.
fn header_of(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Sends `token` to /app/x and asserts a 401 naming `why` with nothing forwarded.
async fn assert_refused(config: &str, token: &str, why: &str) {
    let up = Upstream::start().await;
    let gw = Gateway::start(config, &up.url()).await;
    let r = gw.get_with_token("/app/x", token).await;
    r.assert_error(401, "invalid_token", why);
    assert!(
        r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert!(up.seen().is_empty(), "forwarded: {:#?}", up.seen());
}

#[tokio::test]
async fn node_token_without_kid_iss_or_aud_is_accepted() {
    let tok = node_sign(
        SECRET,
        json!({ "sub": "alice", "roles": ["admin"] }),
        json!({ "expiresIn": "2h" }),
    );
    let header = header_of(&tok);
    assert_eq!(header["alg"], "HS256", "{header}");
    assert!(header.get("kid").is_none(), "{header}");

    let up = Upstream::start().await;
    let gw = Gateway::start(PLAIN, &up.url()).await;
    let r = gw.get_with_token("/app/orders", &tok).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(seen.target, "/app/orders");
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(seen.headers["x-roles"], "admin");
    assert!(seen.headers.get("authorization").is_none());
}

#[tokio::test]
async fn node_token_with_issuer_audience_and_kid_is_accepted() {
    let tok = node_sign(
        SECRET,
        json!({ "sub": "alice", "roles": ["admin"] }),
        json!({ "expiresIn": "2h", "issuer": "authgate", "audience": "apps", "keyid": "k1" }),
    );
    assert_eq!(header_of(&tok)["kid"], "k1");

    let up = Upstream::start().await;
    let gw = Gateway::start(WITH_ISS_AUD, &up.url()).await;
    let r = gw.get_with_token("/app/orders", &tok).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(seen.headers["x-roles"], "admin");
}

#[tokio::test]
async fn node_token_signed_with_another_secret_is_refused() {
    let tok = node_sign(
        "another-secret-that-is-long-enough-0123456789",
        json!({ "sub": "alice", "roles": ["admin"] }),
        json!({ "expiresIn": "2h" }),
    );
    assert_refused(PLAIN, &tok, "signature is invalid").await;
}

#[tokio::test]
async fn node_token_already_expired_is_refused() {
    let tok = node_sign(
        SECRET,
        json!({ "sub": "alice" }),
        json!({ "expiresIn": -10 }),
    );
    assert_refused(PLAIN, &tok, "expired").await;
}

#[tokio::test]
async fn node_token_signed_hs512_with_the_same_secret_is_refused() {
    let tok = node_sign(
        SECRET,
        json!({ "sub": "alice" }),
        json!({ "expiresIn": "2h", "algorithm": "HS512" }),
    );
    assert_eq!(header_of(&tok)["alg"], "HS512");
    assert_refused(PLAIN, &tok, "algorithm").await;
    // With the key's id named in the header, too.
    let tok = node_sign(
        SECRET,
        json!({ "sub": "alice" }),
        json!({ "expiresIn": "2h", "algorithm": "HS512", "keyid": "k1" }),
    );
    assert_refused(PLAIN, &tok, "algorithm").await;
}

#[tokio::test]
async fn node_token_without_exp_is_refused() {
    let tok = node_sign(
        SECRET,
        json!({ "sub": "alice" }),
        json!({ "noTimestamp": true }),
    );
    let payload = node_verify(&tok, SECRET, json!({})).expect("node accepts its own token");
    assert!(
        payload.get("exp").is_none() && payload.get("iat").is_none(),
        "{payload}"
    );
    assert_refused(PLAIN, &tok, "`exp`").await;
}

#[tokio::test]
async fn node_token_with_the_wrong_issuer_or_audience_is_refused() {
    let tok = node_sign(
        SECRET,
        json!({ "sub": "alice" }),
        json!({ "expiresIn": "2h", "issuer": "someone-else", "audience": "apps" }),
    );
    assert_refused(WITH_ISS_AUD, &tok, "issuer").await;
    let tok = node_sign(
        SECRET,
        json!({ "sub": "alice" }),
        json!({ "expiresIn": "2h", "audience": "apps" }),
    );
    assert_refused(WITH_ISS_AUD, &tok, "iss").await;
    let tok = node_sign(
        SECRET,
        json!({ "sub": "alice" }),
        json!({ "expiresIn": "2h", "issuer": "authgate", "audience": "other" }),
    );
    assert_refused(WITH_ISS_AUD, &tok, "audience").await;
}

#[tokio::test]
async fn authgate_issued_token_passes_node_verify() {
    let up = Upstream::start().await;
    let gw = Gateway::start(WITH_ISS_AUD, &up.url()).await;
    let out = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .env_remove("AUTHGATE_CONFIG")
        .env_remove("JWT_SECRET")
        .env_remove("RUST_LOG")
        .args([
            "token",
            "--sub",
            "alice",
            "--claim",
            "roles=admin,dev",
            "--config",
        ])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "authgate token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let options = json!({ "issuer": "authgate", "audience": "apps", "algorithms": ["HS256"] });
    let payload = node_verify(&tok, SECRET, options.clone())
        .unwrap_or_else(|e| panic!("node's jwt.verify refused an authgate token: {e}"));
    assert_eq!(payload["sub"], "alice", "{payload}");
    assert_eq!(payload["roles"], json!(["admin", "dev"]), "{payload}");
    let (exp, iat) = (payload["exp"].as_u64(), payload["iat"].as_u64());
    assert!(
        matches!((exp, iat), (Some(exp), Some(iat)) if exp > iat),
        "{payload}"
    );
    assert!(
        payload["jti"].as_str().is_some_and(|j| !j.is_empty()),
        "{payload}"
    );

    let err = node_verify(
        &tok,
        "another-secret-that-is-long-enough-0123456789",
        options,
    )
    .expect_err("node's jwt.verify accepted a token with the wrong secret");
    assert!(err.contains("invalid signature"), "{err}");

    // And the gateway that issued it accepts it.
    let r = gw.get_with_token("/app/x", &tok).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().headers["x-roles"], "admin,dev");
}
