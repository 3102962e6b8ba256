//! `authgate explain`, the real binary: the shipped gateway.yaml's three routes allowed and
//! refused, stripped identity headers, refused paths, unknown routes, allow failures, expired
//! tokens, bad input (exit 2), the documented policy-tests pattern, and explain's route and
//! upstream path against a running gateway's on tricky requests.
mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

/// The shipped gateway.yaml, copied into a directory of its own: its `sqlite:` store would be
/// created beside it if explain opened it (the test checks it does not).
fn shipped() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"), &path).unwrap();
    (dir, path)
}

struct Explained {
    code: i32,
    json: Value,
    stderr: String,
}

/// Runs `authgate --config CONFIG explain --format json ARGS...`.
fn explain(config: &Path, args: &[&str]) -> Explained {
    explain_with(config, args, &[])
}

fn explain_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Explained {
    let mut cmd = authgate_cli();
    cmd.arg("--config")
        .arg(config)
        .args(["explain", "--format", "json"])
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
    };
    Explained {
        code: out.status.code().unwrap_or(-1),
        json,
        stderr,
    }
}

fn text(config: &Path, args: &[&str]) -> (i32, String) {
    let out = authgate_cli()
        .arg("--config")
        .arg(config)
        .arg("explain")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn header<'a>(json: &'a Value, name: &str) -> Option<&'a str> {
    json["headers"]["upstream"]
        .as_array()?
        .iter()
        .find(|h| h["name"] == name)
        .and_then(|h| h["value"].as_str())
}

const ADMIN: &str = r#"{"sub":"alice","roles":["admin","dev"]}"#;
const DEV: &str = r#"{"sub":"bob","roles":["dev"]}"#;

#[test]
fn the_shipped_routes_allow_and_refuse() {
    let (dir, config) = shipped();
    // public: no token looked at; refused only for a malformed request (two tokens).
    let e = explain(&config, &["GET", "https://app.example.com/public/hello"]);
    assert_eq!(e.code, 0, "{}", e.json);
    assert_eq!(e.json["decision"], "allow");
    assert_eq!(e.json["status"], Value::Null);
    assert_eq!(e.json["route"], "public");
    assert_eq!(e.json["auth"]["mode"], "none");
    assert_eq!(e.json["upstream"]["name"], "demo");
    assert_eq!(e.json["upstream"]["servers"], json!(["builtin:echo"]));
    assert_eq!(e.json["upstream"]["path"], "/public/hello");
    let e = explain(
        &config,
        &[
            "GET",
            "https://app.example.com/public/hello",
            "-H",
            "Authorization: Bearer a",
            "-H",
            "Authorization: Bearer b",
        ],
    );
    assert_eq!((e.code, &e.json["status"]), (1, &json!(400)), "{}", e.json);
    assert_eq!(e.json["route"], "public");
    assert_eq!(e.json["reason"], "several Authorization headers");

    // admin: roles must contain "admin".
    let e = explain(
        &config,
        &[
            "GET",
            "https://app.example.com/admin/users",
            "--claims",
            ADMIN,
        ],
    );
    assert_eq!(e.code, 0, "{}", e.json);
    assert_eq!(e.json["route"], "admin");
    assert_eq!(
        e.json["allow"],
        json!([{"claim": "roles", "want": ["admin"], "saw": ["admin", "dev"], "passed": true}])
    );
    assert_eq!(header(&e.json, "x-user-id"), Some("alice"));
    assert_eq!(header(&e.json, "x-user-roles"), Some("admin,dev"));
    assert_eq!(e.json["headers"]["identity"]["x-user-id"], "alice");
    let e = explain(
        &config,
        &[
            "GET",
            "https://app.example.com/admin/users",
            "--claims",
            DEV,
        ],
    );
    assert_eq!((e.code, &e.json["status"]), (1, &json!(403)), "{}", e.json);
    assert_eq!(e.json["error"], "insufficient_scope");

    // app: any valid token; without one, 401.
    let tenant = r#"{"sub":"carol","tenant":"acme"}"#;
    let e = explain(
        &config,
        &[
            "POST",
            "https://app.example.com/orders?x=1",
            "--claims",
            tenant,
        ],
    );
    assert_eq!(e.code, 0, "{}", e.json);
    assert_eq!(e.json["route"], "app");
    assert_eq!(e.json["upstream"]["path"], "/orders?x=1");
    assert_eq!(header(&e.json, "x-tenant"), Some("acme"));
    assert_eq!(header(&e.json, "x-forwarded-proto"), Some("https"));
    assert_eq!(header(&e.json, "x-forwarded-host"), Some("app.example.com"));
    assert_eq!(
        header(&e.json, "authorization"),
        None,
        "the token stays here"
    );
    let e = explain(&config, &["GET", "https://app.example.com/orders"]);
    assert_eq!((e.code, &e.json["status"]), (1, &json!(401)), "{}", e.json);
    assert_eq!(e.json["error"], "invalid_token");
    assert!(e.json["reason"].as_str().unwrap().contains("no token"));

    // Offline: the configured sqlite store was never opened (it would be created here).
    assert!(!dir.path().join("authgate-state.db").exists());
}

#[test]
fn claims_are_verified_by_the_real_path_and_the_output_says_the_signature_is_made_up() {
    let (_dir, config) = shipped();
    let e = explain(
        &config,
        &["GET", "https://app.example.com/orders", "--claims", ADMIN],
    );
    let token = &e.json["auth"]["token"];
    assert_eq!(token["given"], "--claims");
    assert_eq!(token["verified"], true);
    assert_eq!(
        token["claims"]["iss"], "authgate",
        "the issuer filled in iss"
    );
    let checks = token["checks"].as_array().unwrap();
    let signature = checks.iter().find(|c| c["check"] == "signature").unwrap();
    assert!(
        signature["detail"]
            .as_str()
            .unwrap()
            .contains("proves nothing")
    );
    assert!(
        e.json["auth"]["revocation"]
            .as_str()
            .unwrap()
            .starts_with("not checked offline")
    );
    let notes = e.json["notes"].to_string();
    assert!(notes.contains("signed here with key `k1`"), "{notes}");
}

#[test]
fn forged_identity_headers_are_shown_stripped_or_replaced() {
    let (_dir, config) = shipped();
    let forged = [
        "-H",
        "X-User-Id: root",
        "-H",
        "X_User_Id: root",
        "-H",
        "x.user.id: root",
    ];
    let mut args = vec!["GET", "https://app.example.com/public/x"];
    args.extend(forged);
    let e = explain(&config, &args);
    assert_eq!(e.code, 0, "{}", e.json);
    let stripped = &e.json["headers"]["stripped"];
    for name in ["x-user-id", "x_user_id", "x.user.id"] {
        assert!(
            stripped.as_array().unwrap().contains(&json!(name)),
            "{name}: {stripped}"
        );
    }
    assert_eq!(header(&e.json, "x-user-id"), None);

    // On a route that injects it, the client's value is replaced by the token's.
    let mut args = vec!["GET", "https://app.example.com/orders", "--claims", DEV];
    args.extend(forged);
    let e = explain(&config, &args);
    assert_eq!(e.json["headers"]["replaced"], json!(["x-user-id"]));
    assert_eq!(header(&e.json, "x-user-id"), Some("bob"));
    let values: Vec<&Value> = e.json["headers"]["upstream"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["value"] == "root")
        .collect();
    assert!(values.is_empty(), "{values:?}");
}

#[test]
fn refused_paths_name_the_reason_and_dot_segments_are_resolved_first() {
    let (_dir, config) = shipped();
    for (url, why) in [
        ("https://app.example.com/public/a%2Fb", "encoded `/` (%2F)"),
        (
            "https://app.example.com/public/..;/admin",
            "dot segment with parameters",
        ),
        ("https://app.example.com/admin%3Bx", "encoded `;` (%3B)"),
    ] {
        let e = explain(&config, &["GET", url]);
        assert_eq!(
            (e.code, &e.json["status"]),
            (1, &json!(400)),
            "{url}: {}",
            e.json
        );
        assert_eq!(e.json["error"], "invalid_request");
        let refused = e.json["path"]["refused"].as_str().unwrap();
        assert!(refused.contains(why), "{url}: {refused}");
        assert_eq!(e.json["routes"], json!([]), "no route is consulted");
    }
    // `..` cannot climb out: it is resolved, and the resolved path is routed.
    let e = explain(&config, &["GET", "https://app.example.com/public/../admin"]);
    assert_eq!(e.json["path"]["normalized"], "/admin");
    assert_eq!(e.json["route"], "admin", "not `public`");
    assert_eq!((e.code, &e.json["status"]), (1, &json!(401)));
    let e = explain(
        &config,
        &[
            "GET",
            "https://app.example.com/../../etc/passwd",
            "--claims",
            DEV,
        ],
    );
    assert_eq!(e.json["upstream"]["path"], "/etc/passwd");
}

const NO_FALLBACK: &str = r#"
tokens:
  issuer: authgate
  audience: apps
  keys: [{ id: k1, algorithm: HS256, secret: "{SECRET}" }]
upstreams:
  api: "http://127.0.0.1:9/base"
routes:
  - name: api
    match: { path_prefix: /api, methods: [GET], host: api.example.com }
    upstream: api
    strip_prefix: /api
    allow: { tenant: [acme, initech], level: 3 }
    headers: { X-User-Id: sub }
"#;

fn config_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, text.replace("{SECRET}", SECRET)).unwrap();
    path
}

#[test]
fn an_unknown_route_is_a_404_and_each_route_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir, NO_FALLBACK);
    let e = explain(&config, &["POST", "https://www.example.com/other"]);
    assert_eq!((e.code, &e.json["status"]), (1, &json!(404)), "{}", e.json);
    assert_eq!(e.json["error"], "not_found");
    assert_eq!(e.json["route"], Value::Null);
    let route = &e.json["routes"][0];
    assert_eq!(route["matched"], false);
    assert_eq!(
        route["checks"],
        json!({"path": false, "methods": false, "host": false})
    );
    let why = route["why"].as_str().unwrap();
    assert!(why.contains("is not under `/api`"), "{why}");
    assert!(why.contains("method POST is not in [GET]"), "{why}");
    assert!(
        why.contains("host `www.example.com` is not `api.example.com`"),
        "{why}"
    );
    // HEAD is taken by a GET route, and the host compares without its port.
    let e = explain(&config, &["HEAD", "http://API.example.com:8080/api/v1"]);
    assert_eq!(e.json["routes"][0]["matched"], true, "{}", e.json);
    assert_eq!(e.json["status"], 401);
}

#[test]
fn an_allow_failure_names_the_claim_and_the_value_seen() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir, NO_FALLBACK);
    let url = "https://api.example.com/api/users?page=2";
    let e = explain(
        &config,
        &[
            "GET",
            url,
            "--claims",
            r#"{"sub":"a","tenant":"globex","level":3}"#,
        ],
    );
    assert_eq!((e.code, &e.json["status"]), (1, &json!(403)), "{}", e.json);
    // Rules run in the order of the config's `allow` map (by claim name).
    assert_eq!(
        e.json["allow"],
        json!([
            {"claim": "level", "want": [3], "saw": 3, "passed": true},
            {"claim": "tenant", "want": ["acme", "initech"], "saw": "globex", "passed": false},
        ])
    );
    assert!(e.json["reason"].as_str().unwrap().contains("`tenant`"));
    let e = explain(
        &config,
        &[
            "GET",
            url,
            "--claims",
            r#"{"sub":"a","tenant":"acme","level":"3"}"#,
        ],
    );
    assert_eq!(e.json["status"], 403);
    assert_eq!(
        e.json["allow"],
        json!([
            {"claim": "level", "want": [3], "saw": "3", "passed": false},
            {"claim": "tenant", "want": ["acme", "initech"], "saw": null, "passed": null},
        ])
    );
    let (code, out) = text(
        &config,
        &[
            "GET",
            url,
            "--claims",
            r#"{"sub":"a","tenant":"globex","level":3}"#,
        ],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains(r#"tenant: want any of ["acme","initech"], saw "globex": FAILED"#),
        "{out}"
    );
    // Both rules pass: forwarded, with the prefix stripped under the upstream's base path.
    let e = explain(
        &config,
        &[
            "GET",
            url,
            "--claims",
            r#"{"sub":"a","tenant":"acme","level":3.0}"#,
        ],
    );
    assert_eq!(e.code, 0, "{}", e.json);
    assert_eq!(e.json["upstream"]["path"], "/base/users?page=2");
    assert_eq!(
        e.json["upstream"]["servers"],
        json!(["http://127.0.0.1:9/base"])
    );
    assert_eq!(e.json["upstream"]["balance"], "round_robin");
}

#[test]
fn an_expired_token_is_a_401_naming_the_check_that_failed() {
    let (_dir, config) = shipped();
    let expired = hs256(
        SECRET,
        Some("k1"),
        &json!({"sub": "alice", "iss": "authgate", "aud": "apps", "exp": now() - 3600, "roles": ["admin"]}),
    );
    let e = explain_with(
        &config,
        &["GET", "https://app.example.com/admin", "--token", &expired],
        &[("JWT_SECRET", SECRET)],
    );
    assert_eq!((e.code, &e.json["status"]), (1, &json!(401)), "{}", e.json);
    assert_eq!(e.json["reason"], "token has expired");
    let token = &e.json["auth"]["token"];
    assert_eq!(token["verified"], false);
    let expiry = token["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "expiry")
        .unwrap();
    assert_eq!(expiry["passed"], false);
    assert!(
        expiry["detail"].as_str().unwrap().contains("1h 0m"),
        "{expiry}"
    );
    assert_eq!(token["claims_verified"], false);
    assert_eq!(token["claims"]["sub"], "alice");
    assert_eq!(e.json["allow"][0]["passed"], Value::Null, "never reached");

    // The same token, fresh, passes every check.
    let fresh = hs256(
        SECRET,
        Some("k1"),
        &claims("alice", json!({"roles": ["admin"]})),
    );
    let e = explain_with(
        &config,
        &["GET", "https://app.example.com/admin", "--token", &fresh],
        &[("JWT_SECRET", SECRET)],
    );
    assert_eq!(e.code, 0, "{}", e.json);
    assert_eq!(e.json["auth"]["token"]["given"], "--token");
    // Without the secret the gateway has, explain says why nothing made elsewhere verifies.
    let e = explain(
        &config,
        &["GET", "https://app.example.com/admin", "--token", &fresh],
    );
    assert_eq!(e.json["status"], 401);
    assert!(e.json["notes"].to_string().contains("JWT_SECRET is unset"));
}

#[test]
fn bad_input_is_exit_2_with_the_reason() {
    let (dir, config) = shipped();
    for (args, why) in [
        (vec!["GET", "ftp://app.example.com/x"], "scheme `ftp`"),
        (vec!["GET", "app.example.com/x"], "absolute URL"),
        (vec!["GET", "http://exa mple.com/"], "is not a URL"),
        (vec!["G(T", "/x"], "is not an HTTP method"),
        (vec!["GET", "/x", "-H", "no colon"], "Name: value"),
        (
            vec!["GET", "/x", "--claims", "{nope"],
            "--claims is not JSON",
        ),
        (
            vec!["GET", "/x", "--claims", r#"{"roles":"a"}"#],
            "needs a `sub`",
        ),
        (
            vec!["GET", "/x", "--claims", r#"{"sub":"a","exp":1}"#],
            "`exp` is set by authgate",
        ),
        (
            vec![
                "GET",
                "/x",
                "--claims",
                ADMIN,
                "-H",
                "Authorization: Basic x",
            ],
            "already has that header",
        ),
    ] {
        let e = explain(&config, &args);
        assert_eq!(e.code, 2, "{args:?}: {}", e.stderr);
        assert!(e.stderr.contains(why), "{args:?}: {}", e.stderr);
        assert_eq!(e.json, Value::Null, "nothing on stdout");
    }
    // --token and --claims together: clap refuses (exit 2 too).
    let e = explain(
        &config,
        &["GET", "/x", "--token", "a.b.c", "--claims", ADMIN],
    );
    assert_eq!(e.code, 2, "{}", e.stderr);

    // A config that does not load: every error as file:line:column, exit 2.
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "upstream: demo            # auth",
        "upstream: nowhere          # auth",
    );
    std::fs::write(&broken, text).unwrap();
    let e = explain(&broken, &["GET", "/x"]);
    assert_eq!(e.code, 2, "{}", e.stderr);
    let file = broken.display().to_string();
    assert!(
        e.stderr.contains(&format!("{file}:")) && e.stderr.contains("unknown upstream `nowhere`"),
        "{}",
        e.stderr
    );
    let line = e.stderr.lines().next().unwrap_or_default();
    let location: Vec<&str> = line[file.len() + 1..].splitn(3, ':').collect();
    assert!(
        location[0].parse::<u32>().is_ok() && location[1].parse::<u32>().is_ok(),
        "{line}"
    );
}

#[test]
fn claims_need_a_key_that_can_sign() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = keypair("ES256");
    std::fs::write(dir.path().join("idp.pem"), public).unwrap();
    let config = config_file(
        &dir,
        "tokens:\n  keys: [{ id: idp, algorithm: ES256, public_key_file: idp.pem }]\nupstreams: { app: \"http://127.0.0.1:9\" }\nroutes:\n  - { name: app, upstream: app }\n",
    );
    let e = explain(&config, &["GET", "/x", "--claims", ADMIN]);
    assert_eq!(e.code, 2, "{}", e.stderr);
    assert!(e.stderr.contains("first key `idp`"), "{}", e.stderr);
    assert!(e.stderr.contains("no private key"), "{}", e.stderr);
}

#[test]
fn gateway_endpoints_answer_before_routes() {
    let (_dir, config) = shipped();
    let e = explain(&config, &["POST", "https://app.example.com/auth/login"]);
    assert_eq!(e.code, 0, "{}", e.json);
    assert_eq!(e.json["decision"], "endpoint");
    assert_eq!(e.json["endpoint"], "(login)");
    assert_eq!(e.json["route"], Value::Null);
}

#[test]
fn text_output_has_every_section_aligned() {
    let (_dir, config) = shipped();
    let (code, out) = text(
        &config,
        &[
            "GET",
            "https://app.example.com/admin/x",
            "--claims",
            ADMIN,
            "-H",
            "X-User-Id: root",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let labels: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with(' '))
        .map(|l| l[..18].trim_end())
        .collect();
    assert_eq!(
        labels,
        [
            "Request",
            "Path",
            "Routes",
            "Auth",
            "Allow",
            "Upstream request",
            "Decision",
            "Notes"
        ]
    );
    assert!(
        out.contains("Bearer …(masked)"),
        "the token is not printed:\n{out}"
    );
    assert!(
        out.contains("set       x-user-id: alice  (identity; the client's value is dropped)"),
        "{out}"
    );
    assert!(out.contains("#1 admin   CHOSEN"), "{out}");
    assert!(out.contains("(not reached: `admin` comes first)"), "{out}");
}

/// The pattern the README documents: a file of expected decisions checked by a short shell
/// loop over `authgate explain` exit codes.
#[test]
fn the_policy_tests_example_passes_on_the_shipped_config_and_catches_a_wrong_expectation() {
    let root = env!("CARGO_MANIFEST_DIR");
    let script = format!("{root}/examples/policy-tests/run.sh");
    let tests = format!("{root}/examples/policy-tests/policy-tests.txt");
    let (_dir, config) = shipped();
    let run = |tests: &str| {
        authgate_env(Command::new("sh"))
            .arg(&script)
            .arg(&config)
            .arg(tests)
            .env("AUTHGATE", env!("CARGO_BIN_EXE_authgate"))
            .output()
            .unwrap()
    };
    let out = run(&tests);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = std::fs::read_to_string(&tests)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert!(expected >= 10, "{expected} cases");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        expected,
        "{stdout}"
    );

    // A wrong expectation fails the run and is named.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.txt");
    std::fs::write(
        &wrong,
        "ALLOW GET https://app.example.com/public/x\nALLOW GET https://app.example.com/admin\nDENY:403 GET https://app.example.com/orders\n",
    )
    .unwrap();
    let out = run(wrong.to_str().unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  ALLOW GET https://app.example.com/admin  (got DENY)"),
        "{stdout}"
    );
    assert!(stdout.contains("(got DENY:401)"), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        1,
        "{stdout}"
    );
}

fn authgate_env(mut cmd: Command) -> Command {
    cmd.env_remove("AUTHGATE_CONFIG")
        .env_remove("JWT_SECRET")
        .env_remove("AUTHGATE_STORE");
    cmd
}

/// Routes that disagree in every way the trie must get right: an exact path before prefixes,
/// a method-limited route, a host-limited one, nested prefixes and a sibling that only shares
/// letters. Each upstream has its own base path, so the upstream's request names the route.
const TRICKY: &str = r#"
listen: "127.0.0.1:0"
tokens:
  keys: [{ id: k1, algorithm: HS256, secret: "{SECRET}" }]
upstreams:
  r0: "{UPSTREAM}/r0"
  r1: "{UPSTREAM}/r1"
  r2: "{UPSTREAM}/r2"
  r3: "{UPSTREAM}/r3"
  r4: "{UPSTREAM}/r4"
routes:
  - { name: exact, match: { path: /api/v1 }, upstream: r0, auth: none }
  - { name: get-api, match: { path_prefix: /api, methods: [GET] }, upstream: r1, auth: none }
  - { name: hosted, match: { path_prefix: /api, host: admin.example.com }, upstream: r2, auth: none }
  - { name: v1, match: { path_prefix: /api/v1 }, upstream: r3, auth: none }
  - { name: admin, match: { path_prefix: /admin }, upstream: r4, auth: none }
"#;

#[tokio::test]
async fn explain_picks_the_route_a_running_gateway_picks() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(TRICKY, &upstream.url()).await;
    let cases = [
        ("GET", "/api/v1", "gw"),
        ("POST", "/api/v1", "gw"),
        ("POST", "/api/v1/", "gw"),
        ("POST", "/api/v1;jsessionid=1", "gw"),
        ("POST", "/api/v1;x/users", "gw"),
        ("POST", "/api/v1x", "gw"),
        ("HEAD", "/api/x", "gw"),
        ("POST", "/api/x", "admin.example.com"),
        ("POST", "/api/x", "ADMIN.example.com.:8080"),
        ("POST", "/api/x", "other.example.com"),
        ("PUT", "/api/v1/x", "admin.example.com"),
        ("GET", "/public/../admin/x", "gw"),
        ("GET", "//api//v1//", "gw"),
        ("GET", "/%61pi/%761", "gw"),
        ("POST", "/api/./v1/../v1/z", "gw"),
        ("GET", "/admin;a=b/x", "gw"),
        ("GET", "/ADMIN", "gw"),
        ("GET", "/administrator", "gw"),
        ("DELETE", "/", "gw"),
        ("GET", "/api/v1/%2e%2e/%2e%2e/admin", "gw"),
    ];
    for (method, path, host) in cases {
        upstream.clear();
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (status, _) = raw(gw.addr(), request.as_bytes()).await;
        let forwarded = upstream.seen().first().map(|s| s.target.clone());
        let e = explain(
            &gw.config_path(),
            &[method, &format!("http://{host}{path}")],
        );
        let explained_status = e.json["status"].as_u64().unwrap_or(200);
        assert_eq!(
            u64::from(status),
            explained_status,
            "{method} {path} {host}: {}",
            e.json
        );
        assert_eq!(
            forwarded.as_deref(),
            e.json["upstream"]["path"].as_str(),
            "{method} {path} {host}: route {}",
            e.json["route"]
        );
    }
}

/// A fake identity provider serving one JWK Set (or an error status), counting fetches.
async fn serve_jwks(
    status: u16,
    body: String,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (counted, body) = (counted.clone(), body.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let mut resp = http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(body.clone()),
                    ));
                    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, fetches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_a_remote_provider_is_verified_with_its_fetched_keys() {
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use std::sync::atomic::Ordering;
    let (private, _) = keypair("RS256");
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(private.as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("idp-1".into());
    let set = serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap();
    let issuer = "https://idp.test/";
    let claims = json!({"sub": "zoe", "iss": issuer, "aud": "apps", "exp": now() + 600});
    let token = sign_pem(
        jsonwebtoken::Algorithm::RS256,
        &private,
        Some("idp-1"),
        &claims,
    );
    for (status, code, said) in [(200, 0, "(1 keys)"), (500, 1, "could not fetch")] {
        let (addr, fetches) = serve_jwks(status, set.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let config = config_file(
            &dir,
            &format!(
                "tokens:\n  issuer: authgate\n  audience: apps\n  keys: [{{ id: k1, algorithm: HS256, secret: \"{{SECRET}}\" }}]\n  jwks:\n    - {{ url: \"http://{addr}/jwks.json\", issuer: \"{issuer}\", audience: apps }}\nupstreams: {{ app: \"http://127.0.0.1:9\" }}\nroutes:\n  - {{ name: app, upstream: app, headers: {{ X-User-Id: sub }} }}\n"
            ),
        );
        let jwt = token.clone();
        let e = tokio::task::spawn_blocking(move || {
            explain(&config, &["GET", "/x", "-H", "Host: gw", "--token", &jwt])
        })
        .await
        .unwrap();
        let checks = e.json["auth"]["token"]["checks"].clone();
        assert_eq!(e.code, code, "{}", e.json);
        assert!(
            e.json["notes"].to_string().contains(said),
            "{}",
            e.json["notes"]
        );
        assert!(
            fetches.load(Ordering::SeqCst) >= 1,
            "explain fetched the key set"
        );
        if code == 0 {
            assert_eq!(header(&e.json, "x-user-id"), Some("zoe"));
            let signature = &checks[1];
            assert!(
                signature["detail"].as_str().unwrap().contains("JWKS"),
                "{signature}"
            );
        } else {
            assert_eq!(e.json["status"], 401);
        }
    }
}
