//! `authgate healthcheck` against a real HTTP server standing in for the admin listener, and
//! the docker-compose examples' configs (the Dockerfile itself: tests/image.rs).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn authgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authgate"));
    cmd.env_remove("AUTHGATE_CONFIG")
        .env_remove("JWT_SECRET")
        .env_remove("RUST_LOG");
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A real HTTP/1.1 server on 127.0.0.1:0, on its own thread and runtime, answering
/// `GET /healthz` with `status` (and 404 to anything else, so a wrong request shows).
fn admin_server(status: StatusCode) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| async move {
                        let ok = req.method() == Method::GET
                            && req.uri().path() == "/healthz"
                            && req.headers().contains_key(http::header::HOST);
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
                        *resp.status_mut() = if ok { status } else { StatusCode::NOT_FOUND };
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    addr
}

/// An address where nothing listens (bound, then released).
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn config_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn healthy_admin_listener_exits_0() {
    let addr = admin_server(StatusCode::OK);
    let out = authgate()
        .args(["healthcheck", "--admin-addr", &addr.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn unhealthy_answer_exits_1_with_the_status() {
    let addr = admin_server(StatusCode::SERVICE_UNAVAILABLE);
    let out = authgate()
        .args(["healthcheck", "--admin-addr", &addr.to_string()])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("503") && err.contains(&addr.to_string()),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn dead_port_exits_1_quickly() {
    let addr = dead_addr();
    let start = Instant::now();
    let out = authgate()
        .args(["healthcheck", "--admin-addr", &addr.to_string()])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(err.contains(&addr.to_string()), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn silent_admin_listener_times_out_within_the_bound() {
    // Accepts (the kernel does) but never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let start = Instant::now();
    let out = authgate()
        .args(["healthcheck", "--admin-addr", &addr.to_string()])
        .output()
        .unwrap();
    drop(listener);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(err.contains("no answer"), "{err}");
}

#[test]
fn bad_admin_addr_flag_exits_1() {
    let out = authgate()
        .args(["healthcheck", "--admin-addr", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("IP:PORT"), "{}", stderr(&out));
}

#[test]
fn admin_listen_is_read_from_the_config() {
    let addr = admin_server(StatusCode::OK);
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(&dir, &format!("admin:\n  listen: \"{addr}\"\n"));
    let out = authgate()
        .args(["healthcheck", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // AUTHGATE_CONFIG works as for every other command (the Docker image sets it).
    let out = authgate()
        .arg("healthcheck")
        .env("AUTHGATE_CONFIG", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn unspecified_admin_listen_is_reached_on_loopback() {
    let addr = admin_server(StatusCode::OK);
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(
        &dir,
        &format!("admin:\n  listen: \"0.0.0.0:{}\"\n", addr.port()),
    );
    let out = authgate()
        .args(["healthcheck", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn admin_listen_expands_environment_variables() {
    let addr = admin_server(StatusCode::OK);
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(&dir, "admin:\n  listen: \"${AUTHGATE_TEST_ADMIN}\"\n");
    let out = authgate()
        .args(["healthcheck", "--config"])
        .arg(&path)
        .env("AUTHGATE_TEST_ADMIN", addr.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // A default is used when the variable is unset.
    let path = config_file(
        &dir,
        &format!("admin:\n  listen: \"${{AUTHGATE_TEST_ADMIN_UNSET:-{addr}}}\"\n"),
    );
    let out = authgate()
        .args(["healthcheck", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_config_invalid_for_authgate_still_gives_admin_listen() {
    let addr = admin_server(StatusCode::OK);
    let dir = tempfile::tempdir().unwrap();
    // Unknown keys, no tokens/upstreams/routes, an unset secret: `run` would refuse it.
    let path = config_file(
        &dir,
        &format!(
            "no_such_key: true\nadmin:\n  listen: \"{addr}\"\nrouts:\n  - name: half-typed\n    secret: \"${{AUTHGATE_TEST_NOT_SET}}\"\n"
        ),
    );
    let out = authgate()
        .args(["healthcheck", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // A half-saved edit that breaks the YAML elsewhere: the admin block is still found.
    let path = config_file(
        &dir,
        &format!("routes:\n  - name: [half\nadmin:\n  listen: \"{addr}\"\nupstreams: {{\n"),
    );
    let out = authgate()
        .args(["healthcheck", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // The flag wins over the config.
    let path = config_file(&dir, "admin:\n  listen: \"127.0.0.1:1\"\n");
    let out = authgate()
        .args(["healthcheck", "--admin-addr", &addr.to_string(), "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn missing_or_unparsable_config_falls_back_to_the_default_admin_address() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.yaml");
    let out = authgate()
        .args(["healthcheck", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    // Something may happen to listen on 127.0.0.1:9090 here; only the failure message is
    // checked, when there is a failure.
    if !out.status.success() {
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("127.0.0.1:9090"), "{}", stderr(&out));
    }

    let broken = config_file(&dir, "admin: [\n  listen: \"127.0.0.1:1\"\n");
    let out = authgate()
        .args(["healthcheck", "--config"])
        .arg(&broken)
        .output()
        .unwrap();
    if !out.status.success() {
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("127.0.0.1:9090"), "{}", stderr(&out));
    }
}

// --- The Docker files -------------------------------------------------------------------------

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn docker_compose_example_config_passes_check() {
    let config = repo().join("examples/config/gateway.yaml");
    let stdout = check_example(&config);
    assert!(stdout.contains("http://whoami:80"), "{stdout}");

    // Without JWT_SECRET it must refuse to start rather than sign with something guessable.
    let out = authgate()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("JWT_SECRET"), "{}", stderr(&out));
}

/// `authgate check` on an example config with `JWT_SECRET` set: must pass; its stdout (the
/// route table).
fn check_example(config: &Path) -> String {
    let out = authgate()
        .args(["check", "--config"])
        .arg(config)
        .env("JWT_SECRET", SECRET_HEX)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    stdout
}

/// A 64-hex-character test value, as `openssl rand -hex 32` prints (test-only).
const SECRET_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn docker_compose_file_mounts_the_example_config() {
    let compose = std::fs::read_to_string(repo().join("examples/docker-compose.yml")).unwrap();
    for needle in [
        "traefik/whoami",
        "./config:/etc/authgate:ro",
        "${JWT_SECRET:?",
        "8080:8080",
        "restart: unless-stopped",
    ] {
        assert!(compose.contains(needle), "missing {needle:?}");
    }
}

/// The single sign-on example: its gateway config passes `check`, and the Keycloak realm it
/// imports registers exactly the callback, logout return and secret the config uses, with
/// PKCE S256 and only the code flow.
#[test]
fn sso_example_config_passes_check_and_matches_its_keycloak_realm() {
    let dir = repo().join("examples/sso");
    let out = authgate()
        .args(["check", "--config"])
        .arg(dir.join("config/gateway.yaml"))
        .env("JWT_SECRET", SECRET_HEX)
        .env("OIDC_CLIENT_SECRET", "test-only-client-secret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let config: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(dir.join("config/gateway.yaml")).unwrap())
            .unwrap();
    let oidc = &config["login"]["oidc"][0];
    let realm: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("keycloak/realm-corp.json")).unwrap(),
    )
    .unwrap();
    let issuer = oidc["issuer"].as_str().unwrap();
    assert!(issuer.ends_with(&format!("/realms/{}", realm["realm"].as_str().unwrap())));
    let client = &realm["clients"][0];
    assert_eq!(client["clientId"].as_str(), oidc["client_id"].as_str());
    assert_eq!(client["secret"], "${OIDC_CLIENT_SECRET}");
    assert_eq!(
        oidc["client_secret"].as_str(),
        Some("${OIDC_CLIENT_SECRET}")
    );
    assert_eq!(
        client["redirectUris"],
        serde_json::json!([oidc["redirect_url"].as_str().unwrap()])
    );
    assert_eq!(
        client["attributes"]["post.logout.redirect.uris"].as_str(),
        oidc["post_logout_redirect_url"].as_str()
    );
    assert_eq!(client["attributes"]["pkce.code.challenge.method"], "S256");
    assert_eq!(client["implicitFlowEnabled"], false);
    assert_eq!(client["directAccessGrantsEnabled"], false);

    let compose = std::fs::read_to_string(dir.join("docker-compose.yml")).unwrap();
    for needle in [
        "./keycloak:/opt/keycloak/data/import:ro",
        "--import-realm",
        "network_mode: \"service:keycloak\"",
        "${OIDC_CLIENT_SECRET:?",
        "${JWT_SECRET:?",
        "KC_HOSTNAME: \"http://localhost:8081\"",
    ] {
        assert!(compose.contains(needle), "missing {needle:?}");
    }
}

#[test]
fn traefik_example_config_passes_check() {
    let stdout = check_example(&repo().join("examples/traefik/config/gateway.yaml"));
    assert!(stdout.contains("forward-auth only"), "{stdout}");
    assert!(stdout.contains("app.localhost"), "{stdout}");
}

#[test]
fn traefik_compose_file_names_the_forward_auth_middleware() {
    let compose =
        std::fs::read_to_string(repo().join("examples/traefik/docker-compose.yml")).unwrap();
    for needle in [
        "traefik.http.middlewares.authgate.forwardauth.address=http://authgate:8080/_authgate/verify?mode=redirect",
        "traefik.http.middlewares.authgate.forwardauth.authResponseHeaders=X-User-Id,X-User-Roles,X-Authgate-Assertion",
        "traefik.http.middlewares.authgate.forwardauth.trustForwardHeader=false",
        "traefik.http.routers.whoami.middlewares=authgate@docker",
        "traefik.http.routers.authgate.rule=PathPrefix(`/auth/`)",
        "traefik/whoami",
        "./config:/etc/authgate:ro",
        "${JWT_SECRET:?",
    ] {
        assert!(compose.contains(needle), "missing {needle:?}");
    }

    // authgate trusts exactly the address Traefik has on the compose network.
    let config =
        std::fs::read_to_string(repo().join("examples/traefik/config/gateway.yaml")).unwrap();
    let traefik_ip = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("ipv4_address:"))
        .expect("Traefik has a fixed address")
        .trim();
    assert!(
        config.contains(&format!("trusted_proxies: [\"{traefik_ip}\"]")),
        "forward_auth.trusted_proxies must be [\"{traefik_ip}\"]"
    );
    // Every identity header the route injects is one Traefik copies.
    for header in ["X-User-Id: sub", "X-User-Roles: roles"] {
        assert!(config.contains(header), "{header}");
    }

    // The README documents these very labels.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for label in compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- traefik."))
    {
        assert!(
            readme.contains(&format!("traefik.{label}")),
            "the README lacks the label traefik.{label}"
        );
    }
}
