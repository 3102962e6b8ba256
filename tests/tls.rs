//! The HTTPS listener with real TLS clients: ALPN h2 and http/1.1, `X-Forwarded-Proto: https`,
//! certificate hot reload (a bad new pair keeps the old one), mutual TLS with the client
//! certificate's identity in `allow` rules and headers (and never from a token), the plain-HTTP
//! listener beside it (redirect or serve), Secure cookies and same-origin checks on HTTPS,
//! curl as a second client, and `authgate check` on the certificate files.
mod common;
use common::pki::{Pair, Pki, https_get};
use common::*;
use serde_json::json;
use std::process::Command;

const H2: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1: &[&[u8]] = &[b"http/1.1"];

/// The standard routes on an HTTPS listener (`server.crt`, `server.key` beside the config),
/// with `extra_tls` added under `server.tls` and `extra` at the top.
fn https_config(extra_tls: &str, extra: &str) -> String {
    format!(
        "server:\n  tls:\n    cert_file: server.crt\n    key_file: server.key\n{extra_tls}{extra}{}",
        with_routes!(
            r#"  - name: public
    match: { path_prefix: /public }
    upstream: app
    auth: none
  - name: certs
    match: { path_prefix: /certs }
    upstream: app
    auth: none
    allow: { tls.client.cn: alice }
    headers: { X-Client-CN: tls.client.cn, X-Client-Subject: tls.client.subject }
  - name: app
    match: { path_prefix: /app }
    upstream: app
    headers: { X-User-Id: sub, X-Client-CN: tls.client.cn }
"#
        )
    )
}

async fn start(pki: &Pki, server: &Pair, extra_tls: &str, extra: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let ca = pki.ca_pem();
    let files: [(&str, &[u8]); 3] = [
        ("server.crt", server.cert.as_bytes()),
        ("server.key", server.key.as_bytes()),
        ("ca.pem", ca.as_bytes()),
    ];
    let gw = Gateway::start_with_files(&https_config(extra_tls, extra), &up.url(), &files).await;
    (up, gw)
}

#[tokio::test]
async fn https_speaks_h2_and_http11_and_says_so_upstream() {
    let pki = Pki::new("test CA");
    let (up, gw) = start(&pki, &pki.server(&["localhost"], 1), "", "").await;
    let ca = pki.ca_pem();
    let h2 = https_get(gw.addr(), &ca, None, H2, "/public/a", &[])
        .await
        .unwrap();
    assert_eq!(
        (h2.version, h2.status.as_u16()),
        (http::Version::HTTP_2, 200)
    );
    let h1 = https_get(gw.addr(), &ca, None, H1, "/public/b", &[])
        .await
        .unwrap();
    assert_eq!(
        (h1.version, h1.status.as_u16()),
        (http::Version::HTTP_11, 200)
    );
    for seen in up.seen() {
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
    }
    let auth = format!("Bearer {}", token("alice", json!({})));
    let r = https_get(
        gw.addr(),
        &ca,
        None,
        H2,
        "/app/x",
        &[("authorization", &auth)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    // A client that does not trust the CA cannot talk to it; plain HTTP gets nothing useful.
    let other = Pki::new("other CA");
    assert!(
        https_get(gw.addr(), &other.ca_pem(), None, H2, "/public/x", &[])
            .await
            .is_err()
    );
    let (status, _) = raw(gw.addr(), b"GET /public/x HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert_ne!(status, 200);
}

#[tokio::test]
async fn the_certificate_is_reloaded_when_its_files_change() {
    let pki = Pki::new("test CA");
    let (_up, gw) = start(&pki, &pki.server(&["localhost"], 1), "", "").await;
    authgate::server::watch_files(gw.handle.gateway.clone(), gw.config_path()).unwrap();
    let ca = pki.ca_pem();
    let serial = || async {
        https_get(gw.addr(), &ca, None, H1, "/public/x", &[])
            .await
            .map(|r| r.serial)
    };
    assert_eq!(serial().await, Ok(1));

    // Renewed: new connections get the new certificate.
    let renewed = pki.server(&["localhost"], 2);
    std::fs::write(gw.dir.path().join("server.key"), &renewed.key).unwrap();
    std::fs::write(gw.dir.path().join("server.crt"), &renewed.cert).unwrap();
    eventually("the renewed certificate", || async {
        serial().await == Ok(2)
    })
    .await;

    // A key that does not match the certificate: logged, and the renewed pair keeps serving.
    let stray = pki.server(&["localhost"], 3);
    std::fs::write(gw.dir.path().join("server.key"), &stray.key).unwrap();
    // (The reload is refused as a whole: `check` would refuse this pair too.)
    let failed = || async {
        metric(
            &admin(&gw, "/metrics").await.text(),
            "authgate_config_reloads_total{result=\"error\"}",
        )
    };
    eventually("the refused reload", || async { failed().await >= 1.0 }).await;
    assert_eq!(serial().await, Ok(2));
}

#[tokio::test]
async fn mutual_tls_requires_and_exposes_the_client_certificate() {
    let pki = Pki::new("test CA");
    let (up, gw) = start(
        &pki,
        &pki.server(&["localhost"], 1),
        "    client_ca_file: ca.pem\n",
        "",
    )
    .await;
    let ca = pki.ca_pem();
    // No certificate, or one from another CA: no exchange at all.
    assert!(
        https_get(gw.addr(), &ca, None, H2, "/public/x", &[])
            .await
            .is_err()
    );
    let stranger = Pki::new("other CA").client("alice");
    assert!(
        https_get(gw.addr(), &ca, Some(&stranger), H2, "/public/x", &[])
            .await
            .is_err()
    );
    assert!(up.seen().is_empty());

    // alice's certificate: her identity in the route's headers, a spoofed copy stripped.
    let alice = pki.client("alice");
    let r = https_get(
        gw.addr(),
        &ca,
        Some(&alice),
        H2,
        "/certs/x",
        &[("x-client-cn", "root")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = up.only();
    assert_eq!(seen.headers["x-client-cn"], "alice");
    assert_eq!(seen.headers.get_all("x-client-cn").iter().count(), 1);
    assert_eq!(seen.headers["x-client-subject"], "CN=alice,O=Acme");
    up.clear();
    // bob's certificate is valid but the route allows only alice.
    let bob = pki.client("bob");
    let r = https_get(gw.addr(), &ca, Some(&bob), H1, "/certs/x", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_token_cannot_claim_to_be_a_client_certificate() {
    let pki = Pki::new("test CA");
    let (up, gw) = start(&pki, &pki.server(&["localhost"], 1), "", "").await;
    let ca = pki.ca_pem();
    let forged = token("mallory", json!({"tls": {"client": {"cn": "alice"}}}));
    let auth = format!("Bearer {forged}");
    // No client certificate on this listener: the tls.client rule cannot match, whatever the
    // token says.
    let r = https_get(
        gw.addr(),
        &ca,
        None,
        H1,
        "/certs/x",
        &[("authorization", &auth)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    let r = https_get(
        gw.addr(),
        &ca,
        None,
        H1,
        "/app/x",
        &[("authorization", &auth)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = up.only();
    assert_eq!(seen.headers["x-user-id"], "mallory");
    assert!(
        seen.headers.get("x-client-cn").is_none(),
        "taken from the token"
    );
}

#[tokio::test]
async fn plain_http_beside_https_redirects_or_serves() {
    let pki = Pki::new("test CA");
    let server = pki.server(&["localhost"], 1);
    let (up, gw) = start(&pki, &server, "    http_listen: \"127.0.0.1:0\"\n", "").await;
    let http = gw.handle.http_addr.expect("a plain listener");
    let r = send(
        http,
        "GET",
        "/app/x?a=1",
        &[("host", "localhost:8080")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers["location"],
        format!("https://localhost:{}/app/x?a=1", gw.addr().port()).as_str()
    );
    let r = send(
        http,
        "GET",
        "/app/x",
        &[("host", "evil@x")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(up.seen().is_empty(), "a redirect forwards nothing");

    let (up, gw) = start(
        &pki,
        &server,
        "    http_listen: \"127.0.0.1:0\"\n    http: serve\n",
        "",
    )
    .await;
    let http = gw.handle.http_addr.unwrap();
    let r = send(http, "GET", "/public/x", &[], bytes::Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.only().headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn cookies_over_https_are_secure_and_plain_http_origins_are_refused() {
    let pki = Pki::new("test CA");
    let (alice, _) = user_hashes();
    let login = format!(
        "cookie: {{ secure: false }}\nlogin:\n  users:\n    - {{ username: alice, password_hash: \"{alice}\" }}\n"
    );
    let (_up, gw) = start(&pki, &pki.server(&["localhost"], 1), "", &login).await;
    let ca = pki.ca_pem();
    // The login page over https; a JSON login from a script (no Origin) sets a Secure cookie
    // even though `secure: false` (that is for plain-HTTP setups).
    let post = |origin: Option<&'static str>| {
        let ca = ca.clone();
        let addr = gw.addr();
        async move {
            let body = json!({"username": "alice", "password": ALICE_PASSWORD}).to_string();
            https_post(addr, &ca, "/auth/login", &body, origin).await
        }
    };
    let (status, cookie) = post(None).await;
    assert_eq!(status, 200);
    assert!(cookie.contains("; Secure"), "{cookie}");
    let (status, _) = post(Some("http://localhost")).await;
    assert_eq!(status, 403, "an http:// page posting to the https login");
}

/// A JSON POST over HTTPS/1.1 with an optional `Origin`: (status, Set-Cookie).
async fn https_post(
    addr: std::net::SocketAddr,
    ca: &str,
    path: &str,
    body: &str,
    origin: Option<&str>,
) -> (u16, String) {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\n{origin}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let cookie = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or("")
        .to_owned();
    (status, cookie)
}

/// curl, a second TLS and HTTP/2 implementation, against the listener.
#[tokio::test]
async fn curl_gets_through_over_http2() {
    let pki = Pki::new("test CA");
    let (_up, gw) = start(&pki, &pki.server(&["localhost"], 1), "", "").await;
    let ca = gw.dir.path().join("ca.pem");
    let port = gw.addr().port();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--http2", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
            .arg(format!("https://localhost:{port}/public/x"))
            .output()
            .expect("curl is needed by this test (Debian's curl package)")
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check(dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["check", "--config"])
        .arg(dir.join("gateway.yaml"))
        .output()
        .unwrap()
}

#[test]
fn check_refuses_expired_or_mismatched_certificates_and_warns_before_expiry() {
    let pki = Pki::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let config = https_config("", "")
        .replace("{UPSTREAM}", "http://127.0.0.1:9")
        .replace("{SECRET}", SECRET);
    std::fs::write(dir.path().join("gateway.yaml"), config).unwrap();
    let write = |pair: &Pair| {
        std::fs::write(dir.path().join("server.crt"), &pair.cert).unwrap();
        std::fs::write(dir.path().join("server.key"), &pair.key).unwrap();
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    write(&pki.server_valid((-10, 300)));
    let ok = check(dir.path());
    assert!(ok.status.success(), "{}", stderr(&ok));

    write(&pki.server_valid((-10, 5)));
    let soon = check(dir.path());
    assert!(soon.status.success(), "{}", stderr(&soon));
    assert!(
        stderr(&soon).contains("server.tls.cert_file: warning:"),
        "{}",
        stderr(&soon)
    );
    assert!(stderr(&soon).contains("expires on"), "{}", stderr(&soon));

    write(&pki.server_valid((-10, -1)));
    let expired = check(dir.path());
    assert_eq!(expired.status.code(), Some(1));
    assert!(
        stderr(&expired).contains("expired on"),
        "{}",
        stderr(&expired)
    );

    let good = pki.server_valid((-10, 300));
    write(&good);
    std::fs::write(dir.path().join("server.key"), pki.server(&["x"], 9).key).unwrap();
    let mismatched = check(dir.path());
    assert_eq!(mismatched.status.code(), Some(1));
    assert!(
        stderr(&mismatched).contains("does not match"),
        "{}",
        stderr(&mismatched)
    );
}
