//! The `authgate` binary: `check`, `token`, and `run` on the shipped gateway.yaml.
mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        text.replace("{SECRET}", SECRET)
            .replace("{UPSTREAM}", "http://127.0.0.1:9"),
    )
    .unwrap();
    path
}

#[test]
fn check_prints_the_route_table_for_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, STANDARD);
    let out = authgate_cli()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "public",
        "/public/*",
        "none",
        "admin",
        "required",
        "x-user-id",
        "OK (3 routes",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

#[test]
fn check_reports_every_error_as_file_line_column_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let broken = STANDARD
        .replace(
            "    upstream: app\n    auth: none\n",
            "    upstream: nowhere\n    auth: none\n",
        )
        .replace(
            "match: { path_prefix: /app }",
            "match: { path_prefix: /app/../x }",
        );
    let path = write_config(&dir, &broken);
    let out = authgate_cli()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = path.display().to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "{file}:14:15: routes[0].upstream: unknown upstream `nowhere`"
        )),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!("{file}:22:27: "))
            && lines[1].contains("routes[2].match.path_prefix"),
        "{stderr}"
    );
}

#[test]
fn check_reports_yaml_and_unknown_key_errors_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &STANDARD.replace("  leeway: 0s\n", "  leeway: 0s\n  lifetime: 1h\n"),
    );
    let out = authgate_cli()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.starts_with(&format!("{}:7:3: ", path.display()))
            && stderr.contains("unknown field `lifetime`"),
        "{stderr}"
    );

    let path = write_config(&dir, "routes: [\n");
    let out = authgate_cli()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.starts_with(&format!("{}:", path.display())),
        "{stderr}"
    );

    let out = authgate_cli()
        .args(["check", "--config", "/nonexistent/authgate.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn check_warns_about_shadowed_routes_but_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{STANDARD}  - name: later\n    match: {{ path_prefix: /admin/users }}\n    upstream: app\n"
    );
    let path = write_config(&dir, &text);
    let out = authgate_cli()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("route `later` can never match: route `admin`"),
        "{stderr}"
    );
    assert!(
        stderr.starts_with(&format!("{}:25:5: ", path.display())),
        "{stderr}"
    );
}

#[test]
fn config_path_comes_from_the_environment_when_not_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, STANDARD);
    let out = authgate_cli()
        .arg("check")
        .env("AUTHGATE_CONFIG", &path)
        .output()
        .unwrap();
    assert_success(&out);
}

#[test]
fn shipped_gateway_yaml_is_valid_without_any_environment() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml");
    let out = authgate_cli()
        .args(["check", "--config", shipped])
        .output()
        .unwrap();
    assert_success(&out);
}

#[tokio::test]
async fn token_command_signs_tokens_the_gateway_accepts() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let out = authgate_cli()
        .args([
            "token",
            "--sub",
            "alice",
            "--claim",
            "roles=admin,dev",
            "--claim",
            "org={\"tenant\":\"acme\"}",
            "--ttl",
            "5m",
            "--config",
        ])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert_success(&out);
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let r = gw.get_with_token("/admin/x", &tok).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(seen.headers["x-user-roles"], "admin,dev");

    let out = authgate_cli()
        .args(["token", "--sub", "a", "--claim", "exp=1", "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "reserved claims cannot be set");
}

/// Runs the real binary on the shipped gateway.yaml with no JWT_SECRET, the way a newcomer
/// does, then stops it with SIGTERM.
#[test]
fn binary_serves_the_shipped_config_out_of_the_box_and_stops_on_sigterm() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml");
    // The shipped store is a SQLite file beside the config; keep the test's out of the tree.
    let state = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", state.path().join("state.db").display());
    let mut child = authgate_cli()
        .args(["--log-format", "json", "--config", shipped])
        .env("AUTHGATE_STORE", store)
        .env("AUTHGATE_LISTEN", "127.0.0.1:0")
        .env("AUTHGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut saw_ephemeral_warning = false;
    let addr = loop {
        let line = lines
            .next()
            .expect("gateway exited before listening")
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if v["message"]
            .as_str()
            .unwrap_or("")
            .contains("NO SECRET CONFIGURED")
        {
            saw_ephemeral_warning = true;
        }
        if v["message"] == "authgate listening" {
            break v["addr"].as_str().unwrap().to_owned();
        }
    };
    assert!(
        saw_ephemeral_warning,
        "no loud warning about the ephemeral secret"
    );
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = send(addr, "GET", "/public/hello", &[], bytes::Bytes::new()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["path"], "/public/hello");
        let r = send(addr, "GET", "/", &[], bytes::Bytes::new()).await;
        assert_eq!(r.status, 401);
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");
}

#[test]
fn check_refuses_key_material_of_the_wrong_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (ec_private, ec_public) = keypair("ES256");
    std::fs::write(dir.path().join("ec.pem"), &ec_private).unwrap();
    std::fs::write(dir.path().join("ec.pub.pem"), &ec_public).unwrap();
    let keys = [
        (
            "{ id: a, algorithm: RS256, private_key_file: ec.pem }",
            "not a PEM RSA private key usable with RS256",
        ),
        (
            "{ id: a, algorithm: RS256, public_key_file: ec.pub.pem }",
            "not a PEM RSA public key usable with RS256",
        ),
        (
            "{ id: a, algorithm: ES384, private_key_file: ec.pem }",
            "not a PEM EC private key usable with ES384",
        ),
        (
            "{ id: a, algorithm: ES256, private_key_file: missing.pem }",
            "cannot read",
        ),
        (
            "{ id: a, algorithm: ES256, secret: \"{SECRET}\" }",
            "use `private_key_file` or `public_key_file`",
        ),
        (
            "{ id: a, algorithm: HS256, private_key_file: ec.pem }",
            "private_key_file is for asymmetric algorithms",
        ),
        (
            "{ id: a, algorithm: HS256, secret_file: missing.txt }",
            "cannot read",
        ),
        (
            "{ id: a, algorithm: HS512, secret: \"{SECRET}\" }",
            "at least 64 are required",
        ),
        (
            "{ id: a, algorithm: HS256 }",
            "needs `secret` or `secret_file`",
        ),
        (
            "{ id: a, algorithm: RS999, secret: x }",
            "unknown variant `RS999`",
        ),
    ];
    for (key, why) in keys {
        let text = format!(
            "tokens:\n  keys:\n    - {key}\nupstreams:\n  app: \"http://127.0.0.1:9\"\nroutes:\n  - name: r\n    upstream: app\n"
        );
        let path = write_config(&dir, &text);
        let out = authgate_cli()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {stderr}");
        assert!(
            stderr.starts_with(&format!("{}:3:", path.display())),
            "{key}: {stderr}"
        );
        assert!(stderr.contains(why), "{key}: expected {why:?} in {stderr}");
    }
}

#[test]
fn secret_file_with_a_trailing_newline_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), format!("{SECRET}\n")).unwrap();
    let text = "tokens:\n  keys:\n    - { id: a, algorithm: HS256, secret_file: secret.txt }\nupstreams:\n  app: \"http://127.0.0.1:9\"\nroutes:\n  - name: r\n    upstream: app\n";
    let path = write_config(&dir, text);
    let out = authgate_cli()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_success(&out);
}

fn hash_password(input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = authgate_cli()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn hash_password_output_goes_into_the_config_and_logs_in() {
    let out = hash_password("s3cret pass\r\n");
    assert_success(&out);
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    let up = Upstream::start().await;
    let yaml = format!(
        "tokens:\n  keys:\n    - {{ id: k1, algorithm: HS256, secret: \"{{SECRET}}\" }}\nlogin:\n  users:\n    - {{ username: erin, password_hash: \"{hash}\" }}\nupstreams:\n  app: \"{{UPSTREAM}}\"\nroutes:\n  - name: app\n    upstream: app\n    headers: {{ X-User-Id: sub }}\n"
    );
    let gw = Gateway::start(&yaml, &up.url()).await;
    let login = |password: &'static str| {
        let addr = gw.addr();
        async move {
            let body = serde_json::json!({"username": "erin", "password": password}).to_string();
            send(
                addr,
                "POST",
                "/auth/login",
                &[("content-type", "application/json")],
                body.into(),
            )
            .await
        }
    };
    assert_eq!(
        login("s3cret pass\r").await.status,
        401,
        "only the line ending is dropped"
    );
    let r = login("s3cret pass").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(gw.get_with_token("/", &token).await.status, 200);
    assert_eq!(up.only().headers["x-user-id"], "erin");
}

#[test]
fn hash_password_refuses_an_empty_password() {
    let out = hash_password("\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty password"));
}

#[test]
fn bad_users_are_reported_in_the_file_they_are_in() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.yaml"), "- username: a\n  password_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA\"\n- username: b\n  password_hash: plaintext\n").unwrap();
    let text = "tokens:\n  keys:\n    - { id: a, algorithm: HS256, secret: \"{SECRET}\" }\nlogin:\n  users_file: users.yaml\n  users:\n    - { username: c, password_hash: md5, claims: { sub: root } }\nupstreams:\n  app: \"http://127.0.0.1:9\"\nroutes:\n  - name: r\n    upstream: app\n";
    let path = write_config(&dir, text);
    let out = authgate_cli()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:7:", path.display()))
            && stderr.contains("login.users[0].password_hash"),
        "{stderr}"
    );
    let users = dir.path().join("users.yaml");
    assert!(
        stderr.contains(&format!(
            "{}:4:18: [1].password_hash: not an argon2id PHC string",
            users.display()
        )),
        "{stderr}"
    );
}

#[test]
fn jwks_over_plain_http_is_refused_unless_loopback() {
    let dir = tempfile::tempdir().unwrap();
    for (url, ok) in [
        ("http://idp.example/jwks", false),
        ("ftp://idp/jwks", false),
        ("http://127.0.0.1:9/jwks", true),
        ("https://idp.example/jwks", true),
    ] {
        let text = format!(
            "tokens:\n  keys:\n    - {{ id: a, algorithm: HS256, secret: \"{{SECRET}}\" }}\n  jwks:\n    - {{ url: \"{url}\", issuer: \"https://idp/\" }}\nupstreams:\n  app: \"http://127.0.0.1:9\"\nroutes:\n  - name: r\n    upstream: app\n"
        );
        let path = write_config(&dir, &text);
        let out = authgate_cli()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{url}: {stderr}");
        if !ok {
            assert!(stderr.contains("tokens.jwks[0].url"), "{stderr}");
        }
    }
}
