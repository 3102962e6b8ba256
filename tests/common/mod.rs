//! Test harness: a recording upstream, the real gateway on port 0, real HTTP clients (hyper for
//! well-formed requests, raw TCP for hostile bytes) and test-only key material generated here.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use authgate::server::{self, ServerHandle};

pub mod binary;
pub mod browser;
pub mod oidc;
pub mod pki;
pub mod redis;
use authgate::snapshot::Loaded;
#[allow(unused_imports)]
pub use binary::{
    Running, assert_success, authgate_cli, binary_config, signal, start_binary,
    start_binary_with_env,
};
#[allow(unused_imports)]
pub use redis::{RedisServer, free_port};

/// The HS256 secret the test configs use (test-only, not a real secret).
pub const SECRET: &str = "test-only-secret-0123456789abcdef0123456789";

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query exactly as sent on the wire.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP server on 127.0.0.1:0 that records every request it gets.
/// `/slow...` answers after 2 s; `/big...` streams a 1 MiB body; others answer 200 `upstream ok`.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let count = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let target = parts
                                .uri
                                .path_and_query()
                                .map(|p| p.as_str().to_owned())
                                .unwrap_or_default();
                            record.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                target: target.clone(),
                                headers: parts.headers.clone(),
                                body: body.clone(),
                            });
                            if target.starts_with("/slow") {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            let payload = if target.starts_with("/big") {
                                Bytes::from(vec![b'x'; 1 << 20])
                            } else if target.starts_with("/echo-body") {
                                body
                            } else {
                                Bytes::from_static(b"upstream ok")
                            };
                            let mut resp = Response::new(Full::new(payload));
                            resp.headers_mut()
                                .insert("x-upstream", "yes".parse().unwrap());
                            resp.headers_mut()
                                .insert("connection", "x-upstream-private".parse().unwrap());
                            resp.headers_mut()
                                .insert("x-upstream-private", "leak".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The single request received; panics if there were none or several.
    pub fn only(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(
            seen.len(),
            1,
            "expected exactly one upstream request, got {seen:#?}"
        );
        seen.into_iter().next().unwrap()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// An address where nothing listens (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// A running gateway with its config directory.
pub struct Gateway {
    pub handle: ServerHandle,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Writes `yaml` (with `{UPSTREAM}` replaced by `upstream_url` and `{SECRET}` by
    /// [`SECRET`]) to a temp dir, with `files` beside it, loads it and serves on 127.0.0.1:0.
    pub async fn start_with_files(
        yaml: &str,
        upstream_url: &str,
        files: &[(&str, &[u8])],
    ) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let path = dir.path().join("gateway.yaml");
        std::fs::write(
            &path,
            yaml.replace("{UPSTREAM}", upstream_url)
                .replace("{SECRET}", SECRET),
        )
        .unwrap();
        let loaded = Loaded::load(&path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let handle = server::spawn(loaded, Some("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        Gateway { handle, dir }
    }

    pub async fn start(yaml: &str, upstream_url: &str) -> Gateway {
        Self::start_with_files(yaml, upstream_url, &[]).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }

    /// Sends a GET with the given headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        send(self.addr(), "GET", path, headers, Bytes::new()).await
    }

    pub async fn get_with_token(&self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.get(path, &[("authorization", &auth)]).await
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// Asserts a gateway refusal: status, JSON `error` code, and the message containing `why`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, why: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        let body = self.json();
        assert_eq!(body["error"], code, "body: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(why),
            "message {message:?} does not contain {why:?}"
        );
    }
}

/// Sends one request over a fresh HTTP/1.1 connection. The target is sent exactly as given.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(target);
    let mut has_host = false;
    for (k, v) in headers {
        has_host |= k.eq_ignore_ascii_case("host");
        req = req.header(*k, *v);
    }
    if !has_host {
        req = req.header("host", addr.to_string());
    }
    let resp = sender
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Writes raw bytes and reads until the server closes or 5 s pass; returns the status code of
/// the first response (0 when none) and everything read.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Standard claims for the test configs: iss `authgate`, aud `apps`, valid for an hour.
pub fn claims(sub: &str, extra: Value) -> Value {
    let mut c =
        json!({"sub": sub, "iss": "authgate", "aud": "apps", "iat": now(), "exp": now() + 3600});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// Signs with an HS256 secret and the given kid (None for no kid).
pub fn hs256(secret: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid token for the standard test config (key `k1`, [`SECRET`]).
pub fn token(sub: &str, extra: Value) -> String {
    hs256(SECRET, Some("k1"), &claims(sub, extra))
}

pub fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Builds a token from raw header and payload JSON, HMAC-signed with `secret` (any header).
pub fn forge(header: &Value, payload: &str, secret: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let sig = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(sig.as_ref()))
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A freshly generated test-only key pair: (private PKCS#8 PEM, public SPKI PEM).
pub fn keypair(alg: &str) -> (String, String) {
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use aws_lc_rs::signature::KeyPair;
    match alg {
        "RS256" | "PS256" => {
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let private: aws_lc_rs::encoding::Pkcs8V1Der = kp.as_der().unwrap();
            let public: PublicKeyX509Der = kp.public_key().as_der().unwrap();
            (
                pem("PRIVATE KEY", private.as_ref()),
                pem("PUBLIC KEY", public.as_ref()),
            )
        }
        "ES256" => {
            let kp = aws_lc_rs::signature::EcdsaKeyPair::generate(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            )
            .unwrap();
            let private = kp.to_pkcs8v1().unwrap();
            let public: PublicKeyX509Der = kp.public_key().as_der().unwrap();
            (
                pem("PRIVATE KEY", private.as_ref()),
                pem("PUBLIC KEY", public.as_ref()),
            )
        }
        "EdDSA" => {
            let kp = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
            let private = kp.to_pkcs8v1().unwrap();
            let public: PublicKeyX509Der = kp.public_key().as_der().unwrap();
            (
                pem("PRIVATE KEY", private.as_ref()),
                pem("PUBLIC KEY", public.as_ref()),
            )
        }
        other => panic!("no test key generator for {other}"),
    }
}

/// Signs `claims` with a PEM private key for an asymmetric algorithm.
pub fn sign_pem(
    alg: jsonwebtoken::Algorithm,
    private_pem: &str,
    kid: Option<&str>,
    claims: &Value,
) -> String {
    use jsonwebtoken::{Algorithm as A, EncodingKey};
    let key = match alg {
        A::ES256 | A::ES384 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
        A::EdDSA => EncodingKey::from_ed_pem(private_pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
    }
    .unwrap();
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A test config: listen on port 0, issuer `authgate`, audience `apps`, leeway 0s, the HS256
/// key `k1` ([`SECRET`]), the upstream `app` at `{UPSTREAM}`, then `routes:` and the given
/// route list.
macro_rules! with_routes {
    ($routes:literal) => {
        concat!(
            "\nlisten: \"127.0.0.1:0\"\ntokens:\n  issuer: authgate\n  audience: apps\n  leeway: 0s\n",
            "  keys:\n    - { id: k1, algorithm: HS256, secret: \"{SECRET}\" }\n",
            "upstreams:\n  app: \"{UPSTREAM}\"\nroutes:\n",
            $routes
        )
    };
}
#[allow(unused_imports)]
pub(crate) use with_routes;

/// The standard config used by most tests: a public route, an admin route with `allow`, an
/// app route injecting headers, all pointing at `{UPSTREAM}`.
pub const STANDARD: &str = with_routes!(
    r#"  - name: public
    match: { path_prefix: /public }
    upstream: app
    auth: none
  - name: admin
    match: { path_prefix: /admin }
    upstream: app
    allow: { roles: admin }
    headers: { X-User-Id: sub, X-User-Roles: roles }
  - name: app
    match: { path_prefix: /app }
    upstream: app
    headers: { X-User-Id: sub, X-User-Roles: roles, X-Tenant: org.tenant }
"#
);

pub fn map(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Polls `check` every 25 ms until it holds or 10 s pass.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The value of one series in a Prometheus text exposition (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// GET on the gateway's admin listener.
pub async fn admin(gw: &Gateway, path: &str) -> Reply {
    send(gw.handle.admin_addr, "GET", path, &[], Bytes::new()).await
}

// ---------------------------------------------------------------------------------------------
// Logging in (shared by tests/login.rs, hostile_login.rs, browser_flow.rs, hardening.rs)

/// Test-only passwords of the users `alice` and `bob`.
pub const ALICE_PASSWORD: &str = "alice-test-password";
pub const BOB_PASSWORD: &str = "bob-test-password";

/// Argon2id hashes of [`ALICE_PASSWORD`] and [`BOB_PASSWORD`], made by the code under test,
/// once per test binary.
pub fn user_hashes() -> &'static (String, String) {
    static H: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        (
            authgate::login::hash_password(ALICE_PASSWORD).unwrap(),
            authgate::login::hash_password(BOB_PASSWORD).unwrap(),
        )
    })
}

/// POSTs `body` to `/auth/login` with this content type.
pub async fn post_login(
    gw: &Gateway,
    content_type: &str,
    body: impl Into<Bytes>,
    extra: &[(&str, &str)],
) -> Reply {
    let mut headers = vec![("content-type", content_type)];
    headers.extend_from_slice(extra);
    send(gw.addr(), "POST", "/auth/login", &headers, body.into()).await
}

/// A JSON login.
pub async fn json_login(gw: &Gateway, user: &str, password: &str, extra: &[(&str, &str)]) -> Reply {
    let body = json!({"username": user, "password": password}).to_string();
    post_login(gw, "application/json", body, extra).await
}

/// An `application/x-www-form-urlencoded` body.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A browser's form login.
pub async fn form_login(gw: &Gateway, pairs: &[(&str, &str)], extra: &[(&str, &str)]) -> Reply {
    post_login(
        gw,
        "application/x-www-form-urlencoded",
        form_body(pairs),
        extra,
    )
    .await
}

fn jwt_part(token: &str, index: usize) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// A token's claims, decoded without verification (to look at what was issued).
pub fn payload(token: &str) -> Value {
    jwt_part(token, 1)
}

/// A token's JOSE header.
pub fn jose_header(token: &str) -> Value {
    jwt_part(token, 0)
}

/// The session token a response sets (`Set-Cookie: authgate_session=...`).
pub fn session_from(reply: &Reply) -> String {
    let cookie = reply.headers["set-cookie"].to_str().unwrap();
    cookie
        .strip_prefix("authgate_session=")
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie in {cookie}"))
        .to_owned()
}
