//! Hostile HTTP: path confusion (the Traefik/Envoy/Caddy/oauth2-proxy bypass classes), method
//! and Host tricks, forged identity and override headers, request smuggling and other
//! protocol abuse over raw TCP, and connection exhaustion.
//!
//! Every case asserts the status and what the upstream received; refusals assert that nothing
//! reached it.
mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Routes: public `/public`; `/docs` public for GET only; an exact `/panel/settings` admin page;
/// `/site` needing admin on host admin.example.com and public on any other host; `/admin`
/// needing the admin role; `/app` needing any token. Misses are 404.
const GATE: &str = with_routes!(
    r#"  - name: public
    match: { path_prefix: /public }
    upstream: app
    auth: none
  - name: docs-read
    match: { path_prefix: /docs, methods: [GET] }
    upstream: app
    auth: none
  - name: panel
    match: { path: /panel/settings }
    upstream: app
    allow: { roles: admin }
    headers: { X-User-Id: sub }
  - name: site-admin
    match: { path_prefix: /site, host: admin.example.com }
    upstream: app
    allow: { roles: admin }
    headers: { X-User-Id: sub, X-User-Roles: roles }
  - name: site-public
    match: { path_prefix: /site }
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

/// GATE plus a catch-all that needs a token: anything not matched above is protected.
fn catch_all_required() -> String {
    format!("{GATE}  - name: everything\n    upstream: app\n    headers: {{ X-User-Id: sub }}\n")
}

/// GATE plus a public catch-all: anything not matched above is public (a public web site with
/// protected admin pages, the usual shape).
fn catch_all_public() -> String {
    format!("{GATE}  - name: website\n    upstream: app\n    auth: none\n")
}

async fn start(yaml: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(yaml, &up.url()).await;
    (up, gw)
}

fn admin() -> String {
    token("alice", json!({"roles": ["admin"]}))
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// A refusal with this status and nothing forwarded.
#[track_caller]
fn refused(r: &Reply, up: &Upstream, status: u16, case: &str) {
    assert_eq!(r.status.as_u16(), status, "{case}: {}", r.text());
    assert!(up.seen().is_empty(), "{case}: forwarded {:#?}", up.seen());
}

/// A raw-TCP refusal with this status and nothing forwarded.
#[track_caller]
fn raw_refused(status: u16, text: &str, up: &Upstream, want: u16, case: &str) {
    assert_eq!(status, want, "{case}: {text}");
    assert!(up.seen().is_empty(), "{case}: forwarded {:#?}", up.seen());
}

/// Every status line in a raw HTTP/1.1 exchange.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter(|(i, _)| text.get(i + 12..i + 13) == Some(" "))
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// Every value the upstream received for `name`.
fn values(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

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
    (statuses(&text).first().copied().unwrap_or(0), text)
}

// ================================================================ paths

/// Dot segments in every spelling (CVE-2021-41174-style encoded traversal past a public
/// prefix): routed as `/admin/x` (401 without a token) and forwarded as exactly `/admin/x`.
#[tokio::test]
async fn dot_segments_in_every_encoding_and_casing() {
    let (up, gw) = start(GATE).await;
    let spellings = [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/%2E%2E/admin/x",
        "/public/%2e%2E/admin/x",
        "/public/.%2e/admin/x",
        "/public/.%2E/admin/x",
        "/public/%2e./admin/x",
        "/public/%2E./admin/x",
        "/public/%2e/../admin/x",
        "/public/./%2e%2e/./admin/x",
        "/public/a/b/../../../admin/x",
        "/../../admin/x",
        "/%2e%2e/%2e%2e/admin/x",
        "/public/x/../../admin/x",
        "/admin/x/.",
        "/public/../admin/./x",
    ];
    for path in spellings {
        let r = gw.get(path, &[]).await;
        refused(&r, &up, 401, path);
        let r = gw.get_with_token(path, &admin()).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let seen = up.only();
        let want = if path.ends_with("/.") {
            "/admin/x/"
        } else {
            "/admin/x"
        };
        assert_eq!(seen.target, want, "{path}");
        assert_eq!(values(&seen, "x-user-id"), ["alice"], "{path}");
        up.clear();
    }
}

/// Double encoding (`%252e` = `%2e` after one decode) must not become `..`: the gateway decodes
/// once, so the public route takes it and the backend gets the literal escapes.
#[tokio::test]
async fn double_encoded_dots_stay_literal() {
    let (up, gw) = start(GATE).await;
    for (path, want) in [
        ("/public/%252e%252e/admin", "/public/%252e%252e/admin"),
        ("/public/%252E%252E/admin", "/public/%252E%252E/admin"),
        (
            "/public/%25%32%65%25%32%65/admin",
            "/public/%252e%252e/admin",
        ),
        ("/public/%c0%ae%c0%ae/admin", "/public/%C0%AE%C0%AE/admin"),
    ] {
        let r = gw.get(path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let seen = up.only();
        assert_eq!(seen.target, want, "{path}");
        assert!(seen.headers.get("x-user-id").is_none(), "{path}");
        up.clear();
    }
    // The other way round: an encoded dot-dot under /admin stays under /admin.
    let r = gw.get("/admin/%252e%252e/public", &[]).await;
    refused(&r, &up, 401, "double-encoded under /admin");
}

/// Encoded `/` and `\` in upper and lower case, and raw backslashes: 400 (the backend might
/// decode them into separators the gateway never saw).
#[tokio::test]
async fn encoded_slash_and_backslash_in_every_case() {
    let (up, gw) = start(GATE).await;
    for path in [
        "/public%2F..%2Fadmin",
        "/public%2f..%2fadmin",
        "/public/..%2Fadmin",
        "/public/..%5Cadmin",
        "/public/..%5cadmin",
        "/admin%2Fx",
        "/%2F/admin",
        "/public/%2e%2e%5cadmin",
    ] {
        let r = gw.get(path, &[]).await;
        refused(&r, &up, 400, path);
        assert_eq!(r.json()["error"], "invalid_request", "{path}");
    }
    for target in ["/public\\..\\admin", "/public/..\\admin", "\\admin"] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        raw_refused(status, &text, &up, 400, target);
    }
}

#[tokio::test]
async fn repeated_slashes_cannot_skip_the_admin_route() {
    let (up, gw) = start(GATE).await;
    for (path, want) in [
        ("//admin", "/admin"),
        ("///admin///x", "/admin/x"),
        ("/public//..//admin", "/admin"),
        ("//public/..//admin//", "/admin/"),
        ("/.//admin", "/admin"),
    ] {
        let r = gw.get(path, &[]).await;
        refused(&r, &up, 401, path);
        let r = gw.get_with_token(path, &admin()).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(up.only().target, want, "{path}");
        up.clear();
    }
}

/// `;` matrix parameters (the Tomcat/Spring `..;/` bypass class).
#[tokio::test]
async fn matrix_parameters() {
    let (up, gw) = start(GATE).await;
    for path in [
        "/admin;x=1",
        "/admin;/x",
        "/admin;jsessionid=abc/x;y=2",
        "/public;/../admin",
        "/public;x=1/../admin",
    ] {
        let r = gw.get(path, &[]).await;
        refused(&r, &up, 401, path);
    }
    for path in [
        // A segment of only parameters (an empty name a servlet container would merge away).
        "/;/admin",
        "/;x=1/admin/x",
        "/public/..;/admin",
        "/public/..;x=1/admin",
        "/public/.;/admin",
        "/public/%2e%2e;/admin",
        "/public/.%2e;jsessionid=1/admin",
    ] {
        let r = gw.get(path, &[]).await;
        refused(&r, &up, 400, path);
    }
    // With a token the parameters are forwarded as they came (the backend reads them too).
    let r = gw.get_with_token("/admin;x=1/y", &admin()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().target, "/admin;x=1/y");
}

/// A segment that is only `;params` has an empty name: a servlet container strips the
/// parameters and merges the resulting `//`, so `/;/panel/settings` is `/panel/settings` to it.
/// Behind a public catch-all the exact-path admin page must still need its token.
#[tokio::test]
async fn empty_matrix_segment_cannot_dodge_an_exact_path_route() {
    let (up, gw) = start(&catch_all_public()).await;
    // Control: the exact route itself needs the token.
    refused(&gw.get("/panel/settings", &[]).await, &up, 401, "control");
    for path in [
        "/;/panel/settings",
        "/;x=1/panel/settings",
        "/panel/;/settings",
        "/panel;/;/settings",
    ] {
        let r = gw.get(path, &[]).await;
        assert!(
            r.status == 401 || r.status == 400,
            "{path}: got {} (forwarded {:?})",
            r.status,
            up.seen()
                .iter()
                .map(|s| s.target.clone())
                .collect::<Vec<_>>()
        );
        assert!(up.seen().is_empty(), "{path}: forwarded {:#?}", up.seen());
    }
}

/// `#`, `?` and their encodings never move the route: an encoded `?`/`#` is path data, a
/// real `?` starts the query, which is never routed on.
#[tokio::test]
async fn fragment_and_query_delimiters() {
    let (up, gw) = start(GATE).await;
    // An encoded `?` is segment data: `..` after it still climbs.
    for path in ["/public%3F/../admin", "/public%3f/../admin"] {
        refused(&gw.get(path, &[]).await, &up, 401, path);
    }
    // Encoded `#` and `;` are refused: backends disagree on what they mean.
    for path in [
        "/public%23/../admin",
        "/admin%23/../public/x",
        "/admin%23/x",
        "/admin%3Bx/x",
        "/admin%3bx/x",
        "/public%3B/x",
    ] {
        refused(&gw.get(path, &[]).await, &up, 400, path);
    }
    // A query never routes, whatever it contains.
    for path in [
        "/admin?/../public",
        "/admin?x=/public/../",
        "/admin/x?%2e%2e/public",
    ] {
        refused(&gw.get(path, &[]).await, &up, 401, path);
    }
    for (path, want) in [
        ("/public?/../admin", "/public?/../admin"),
        (
            "/public/x?path=/admin&x-user-id=root",
            "/public/x?path=/admin&x-user-id=root",
        ),
        ("/admin%3F/../public", "/public"),
    ] {
        let r = gw.get(path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let seen = up.only();
        assert_eq!(seen.target, want, "{path}");
        assert!(seen.headers.get("x-user-id").is_none(), "{path}");
        up.clear();
    }
    // A raw fragment on the wire: never forwarded and never routes elsewhere.
    let (status, text) = raw(
        gw.addr(),
        b"GET /admin#/../../public HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status == 400 || status == 401, "{text}");
    assert!(up.seen().is_empty(), "{:#?}", up.seen());
}

/// NUL and control characters in the path: encoded NUL and raw controls are 400; encoded CR/LF
/// stay encoded (never decoded into the upstream request line).
#[tokio::test]
async fn nul_and_control_characters_in_the_path() {
    let (up, gw) = start(GATE).await;
    for path in ["/admin%00", "/public/%00/../admin", "/admin%00.json"] {
        refused(&gw.get(path, &[]).await, &up, 400, path);
    }
    for target in [
        "/admin\0",
        "/public/\r/admin",
        "/public/\x7f/admin",
        "/public/\x1b/admin",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        raw_refused(status, &text, &up, 400, &format!("{target:?}"));
    }
    let r = gw.get("/public/%0d%0aX-Injected:%201", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(seen.target, "/public/%0D%0AX-Injected:%201");
    assert!(seen.headers.get("x-injected").is_none());
}

/// Paths are case-sensitive and exact per segment: `/ADMIN`, `/admin.` and friends do not match
/// `/admin`, so behind a catch-all `auth: required` route they still need a token; unreserved
/// escapes (`%61dmin`) are decoded and do match.
#[tokio::test]
async fn case_trailing_dot_and_encoded_letters() {
    let (up, gw) = start(&catch_all_required()).await;
    for path in [
        "/ADMIN",
        "/Admin/x",
        "/%41DMIN",
        "/admin.",
        "/admin./x",
        "/admin%20",
        "/admin~",
    ] {
        refused(&gw.get(path, &[]).await, &up, 401, path);
    }
    for (path, want) in [
        ("/%61dmin", "/admin"),
        ("/%61%64%6D%69%6E/x", "/admin/x"),
        ("/a%64min", "/admin"),
    ] {
        refused(&gw.get(path, &[]).await, &up, 401, path);
        // A plain token (no admin role) proves the admin route took it: 403, not the catch-all.
        let r = gw.get_with_token(path, &token("bob", json!({}))).await;
        refused(&r, &up, 403, path);
        let r = gw.get_with_token(path, &admin()).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(up.only().target, want, "{path}");
        up.clear();
    }
    // Without the catch-all the near misses are simply unrouted.
    let (up, gw) = start(GATE).await;
    for path in [
        "/ADMIN",
        "/admin.",
        "/adminx",
        "/admin-",
        "/admin.json",
        "/administrator",
    ] {
        refused(&gw.get_with_token(path, &admin()).await, &up, 404, path);
    }
    // The prefix boundary itself: `/admin/` is the admin route.
    refused(&gw.get("/admin/", &[]).await, &up, 401, "/admin/");
}

// ================================================================ methods

/// HEAD takes a GET-only route (and is forwarded as HEAD); on a protected route it needs the
/// token like GET.
#[tokio::test]
async fn head_on_get_routes() {
    let (up, gw) = start(GATE).await;
    let r = send(gw.addr(), "HEAD", "/admin/x", &[], Bytes::new()).await;
    refused(&r, &up, 401, "HEAD /admin");
    let r = send(gw.addr(), "HEAD", "/docs/x", &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("HEAD", "/docs/x")
    );
}

/// Lower-case and mixed-case methods: 400 (a backend upper-casing them would serve a `get` that
/// missed a GET-only rule).
#[tokio::test]
async fn lower_case_methods_are_400() {
    let (up, gw) = start(&catch_all_required()).await;
    for method in ["get", "Get", "gEt", "post", "delete"] {
        for path in ["/docs/x", "/admin/x", "/public/x"] {
            let req = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
            let (status, text) = raw(gw.addr(), req.as_bytes()).await;
            raw_refused(status, &text, &up, 400, &format!("{method} {path}"));
        }
    }
}

/// Other methods on a GET-only public route fall through to the protected catch-all (401),
/// or to nothing (404); extension and WebDAV methods are not served at all (501): never served
/// by the GET-only public rule.
#[tokio::test]
async fn unknown_methods_on_a_method_restricted_route() {
    let (up, gw) = start(&catch_all_required()).await;
    for (method, status) in [
        ("PROPFIND", 501),
        ("FOO", 501),
        ("POST", 401),
        ("DELETE", 401),
        ("PATCH", 401),
        ("TRACE", 401),
        ("GET2", 501),
    ] {
        let r = send(gw.addr(), method, "/docs/x", &[], Bytes::new()).await;
        refused(&r, &up, status, method);
    }
    let (up, gw) = start(GATE).await;
    for (method, status) in [("PROPFIND", 501), ("FOO", 501), ("PUT", 404)] {
        let r = send(gw.addr(), method, "/docs/x", &[], Bytes::new()).await;
        refused(&r, &up, status, method);
    }
}

/// Method-override headers (Rails, Express, Symfony, ASP.NET) are stripped: the backend serves
/// the method authgate routed, not the one a header asks for.
#[tokio::test]
async fn method_override_headers_are_stripped() {
    let (up, gw) = start(GATE).await;
    for name in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "x_http_method_override",
    ] {
        let r = gw.get("/docs/x", &[(name, "DELETE")]).await;
        assert_eq!(r.status, 200, "{name}");
        let seen = up.only();
        assert_eq!(seen.method, "GET");
        for h in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ] {
            assert!(seen.headers.get(h).is_none(), "{name}: {h} forwarded");
        }
        up.clear();
    }
}

/// CONNECT, asterisk-form and authority-form targets are not served.
#[tokio::test]
async fn connect_asterisk_and_authority_form_targets() {
    let (up, gw) = start(&catch_all_required()).await;
    for line in [
        "CONNECT 127.0.0.1:22 HTTP/1.1",
        "OPTIONS * HTTP/1.1",
        "GET admin.example.com:80 HTTP/1.1",
        "GET * HTTP/1.1",
    ] {
        let req = format!("{line}\r\nHost: gw\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        raw_refused(status, &text, &up, 400, line);
    }
}

// ================================================================ Host

/// Every spelling of the protected host takes the protected route (it cannot be dodged into the
/// public `/site` route by case, a trailing dot or a port).
#[tokio::test]
async fn host_spellings_still_hit_the_protected_host_route() {
    let (up, gw) = start(GATE).await;
    for host in [
        "admin.example.com",
        "ADMIN.EXAMPLE.COM",
        "admin.example.com.",
        "Admin.Example.Com.",
        "admin.example.com:443",
        "admin.example.com.:8080",
        "admin.example.com:",
    ] {
        refused(&gw.get("/site/x", &[("host", host)]).await, &up, 401, host);
    }
    // Control: another host is the public site.
    let r = gw.get("/site/x", &[("host", "www.example.com")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.only().headers["host"], "www.example.com");
}

#[tokio::test]
async fn duplicate_host_headers_are_400() {
    let (up, gw) = start(GATE).await;
    for hosts in [
        ["www.example.com", "admin.example.com"],
        ["admin.example.com", "www.example.com"],
        ["www.example.com", "www.example.com"],
    ] {
        let req = format!(
            "GET /site/x HTTP/1.1\r\nHost: {}\r\nHost: {}\r\nConnection: close\r\n\r\n",
            hosts[0], hosts[1]
        );
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        raw_refused(status, &text, &up, 400, &format!("{hosts:?}"));
    }
}

/// An absolute-form target naming another host than `Host`: 400 whichever of the two is the
/// protected one.
#[tokio::test]
async fn absolute_form_disagreeing_with_host_is_400() {
    let (up, gw) = start(GATE).await;
    for (target, host) in [
        ("http://www.example.com/site/x", "admin.example.com"),
        ("http://admin.example.com/site/x", "www.example.com"),
        ("http://evil/public/x", "gw"),
        ("http://evil/admin", "gw"),
        ("http://admin.example.com:8080/site/x", "admin.example.com"),
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        raw_refused(status, &text, &up, 400, &format!("{target} / {host}"));
    }
}

/// Agreeing absolute-form is routed by that host (and normalized like any path).
#[tokio::test]
async fn absolute_form_agreeing_with_host_is_routed_by_that_host() {
    let (up, gw) = start(GATE).await;
    let req = b"GET http://ADMIN.example.com/site/x HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n";
    let (status, text) = raw(gw.addr(), req).await;
    raw_refused(status, &text, &up, 401, "no token");
    let req = format!(
        "GET http://admin.example.com/public/../site/x HTTP/1.1\r\nHost: admin.example.com\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        admin()
    );
    let (status, text) = raw(gw.addr(), req.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let seen = up.only();
    assert_eq!(seen.target, "/site/x");
    assert_eq!(values(&seen, "x-user-id"), ["alice"]);
    assert_eq!(values(&seen, "x-forwarded-host"), ["admin.example.com"]);
}

/// HTTP/2: `:authority` and a `host` header naming different hosts are refused, and every
/// stream of one connection is authorized on its own.
#[tokio::test]
async fn http2_authority_host_mismatch_and_per_stream_auth() {
    let (up, gw) = start(GATE).await;
    let stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mismatch = Request::get("http://www.example.com/site/x")
        .header("host", "admin.example.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    match sender.send_request(mismatch).await {
        Ok(resp) => assert_eq!(resp.status(), 400, "authority/host mismatch"),
        Err(e) => assert!(e.to_string().contains("stream"), "refused as {e}"),
    }
    assert!(up.seen().is_empty(), "{:#?}", up.seen());

    let first = Request::get(format!("http://{}/admin/one", gw.addr()))
        .header("authorization", bearer(&admin()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(first).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    assert_eq!(up.only().target, "/admin/one");
    up.clear();
    let second = Request::get(format!("http://{}/admin/two", gw.addr()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(second).await.unwrap();
    assert_eq!(resp.status(), 401, "the second stream carries no token");
    assert!(up.seen().is_empty(), "{:#?}", up.seen());
}

// ================================================================ headers

/// Every spelling of an injected identity header is stripped; only the token's value arrives.
#[tokio::test]
async fn spoofed_identity_headers_in_every_spelling() {
    let (up, gw) = start(GATE).await;
    for spelling in [
        "X-User-Id",
        "x-user-id",
        "X-USER-ID",
        "x_user_id",
        "X_USER_ID",
        "X.User.Id",
        "x-user_id",
        "X_User.Id",
        "X-User-Roles",
        "x_user_roles",
    ] {
        let req = format!(
            "GET /admin/x HTTP/1.1\r\nHost: gw\r\n{spelling}: root\r\n{spelling}: admin,superuser\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token("alice", json!({"roles": ["admin"]}))
        );
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        assert_eq!(status, 200, "{spelling}: {text}");
        let seen = up.only();
        assert_eq!(values(&seen, "x-user-id"), ["alice"], "{spelling}");
        assert_eq!(values(&seen, "x-user-roles"), ["admin"], "{spelling}");
        for name in seen.headers.keys() {
            let folded = name.as_str().replace(['_', '.'], "-");
            assert!(
                !(folded.starts_with("x-user-") && name.as_str() != folded),
                "{spelling}: {name} reached the upstream"
            );
        }
        up.clear();
    }
    // And on a public route, where no token is involved at all.
    let r = gw
        .get(
            "/public/x",
            &[
                ("X-User-Id", "root"),
                ("x_user_id", "root"),
                ("X.User.Roles", "admin"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    for name in ["x-user-id", "x_user_id", "x.user.roles", "x-user-roles"] {
        assert!(seen.headers.get(name).is_none(), "{name} on a public route");
    }
}

/// Whitespace around a header name is a parse error (RFC 9112 §5.1): a proxy that trimmed
/// it would let `X-User-Id : root` past a strip list that a backend then honours.
#[tokio::test]
async fn whitespace_in_header_names_is_a_parse_error() {
    let (up, gw) = start(GATE).await;
    for line in [
        "X-User-Id : root",
        "X-User-Id\t: root",
        "Transfer-Encoding : chunked",
        "Authorization : Bearer x",
    ] {
        let req =
            format!("GET /public/x HTTP/1.1\r\nHost: gw\r\n{line}\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        raw_refused(status, &text, &up, 400, line);
    }
    // Leading whitespace: a continuation line (obs-fold) of the previous header.
    let req =
        b"GET /public/x HTTP/1.1\r\nHost: gw\r\n X-User-Id: root\r\nConnection: close\r\n\r\n";
    let (status, text) = raw(gw.addr(), req).await;
    raw_refused(status, &text, &up, 400, "leading space");
    let req = b"GET /public/x HTTP/1.1\r\nHost: gw\r\nX-Note: a\r\n\tX-User-Id: root\r\nConnection: close\r\n\r\n";
    let (status, text) = raw(gw.addr(), req).await;
    raw_refused(status, &text, &up, 400, "obs-fold");
    // NUL in a header value.
    let req = b"GET /public/x HTTP/1.1\r\nHost: gw\r\nX-Note: a\0b\r\nConnection: close\r\n\r\n";
    let (status, text) = raw(gw.addr(), req).await;
    raw_refused(status, &text, &up, 400, "NUL in a value");
}

/// `Connection` naming injected and gateway-set headers removes the client's copies only: the
/// injected identity and the X-Forwarded-* values still arrive.
#[tokio::test]
async fn connection_header_cannot_remove_injected_or_forwarding_headers() {
    let (up, gw) = start(GATE).await;
    let req = format!(
        "GET /admin/x HTTP/1.1\r\nHost: app.example\r\nConnection: X-User-Id, x_user_id, X-User-Roles\r\nConnection: X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto, Host\r\nX-User-Id: root\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        admin()
    );
    let (status, text) = raw(gw.addr(), req.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let seen = up.only();
    assert_eq!(values(&seen, "x-user-id"), ["alice"]);
    assert_eq!(values(&seen, "x-user-roles"), ["admin"]);
    assert_eq!(values(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&seen, "x-forwarded-host"), ["app.example"]);
    assert_eq!(values(&seen, "host"), ["app.example"]);
    assert!(seen.headers.get("connection").is_none());
}

/// The gateway's `X-Request-Id` "is forwarded upstream" (README): a client must not be able to
/// suppress it, and with it the backend's side of the log correlation, by naming it in
/// `Connection`.
#[tokio::test]
async fn connection_header_cannot_remove_the_request_id() {
    let (up, gw) = start(GATE).await;
    for (label, extra) in [
        ("generated id", ""),
        ("client id", "X-Request-Id: trace-me-123\r\n"),
    ] {
        let req = format!(
            "GET /admin/x HTTP/1.1\r\nHost: gw\r\nConnection: X-Request-Id\r\n{extra}Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
            admin()
        );
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        assert_eq!(status, 200, "{label}: {text}");
        let returned = text
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .expect("returned to the client")
            .to_owned();
        let seen = up.only();
        assert_eq!(values(&seen, "x-request-id"), [returned], "{label}");
        assert_eq!(values(&seen, "x-user-id"), ["alice"], "{label}");
        up.clear();
    }
}

/// Ambiguous credentials are 400, never a guess: several Authorization headers (in any case),
/// several tokens in one, a header and a cookie that disagree.
#[tokio::test]
async fn several_tokens_in_one_request() {
    let (up, gw) = start(GATE).await;
    let a = admin();
    let b = token("bob", json!({}));
    for (label, headers) in [
        (
            "comma without space",
            format!("Authorization: Bearer {a},Bearer {b}\r\n"),
        ),
        (
            "comma list",
            format!("Authorization: Bearer {b}, Bearer {a}\r\n"),
        ),
        (
            "two header lines",
            format!("Authorization: Bearer {b}\r\nAuthorization: Bearer {a}\r\n"),
        ),
        (
            "two header lines, different case",
            format!("authorization: Bearer {b}\r\nAUTHORIZATION: Bearer {a}\r\n"),
        ),
        (
            "basic then bearer lines",
            format!("Authorization: Basic YTpi\r\nAuthorization: Bearer {a}\r\n"),
        ),
        (
            "header and a different cookie",
            format!("Authorization: Bearer {b}\r\nCookie: authgate_session={a}\r\n"),
        ),
        (
            "header and a junk cookie",
            format!("Authorization: Bearer {a}\r\nCookie: authgate_session=junk\r\n"),
        ),
        (
            "two cookie headers",
            format!("Cookie: authgate_session={a}\r\nCookie: authgate_session={b}\r\n"),
        ),
        (
            "two cookies in one header",
            format!("Cookie: authgate_session={b}; authgate_session={a}\r\n"),
        ),
    ] {
        let req =
            format!("GET /admin/x HTTP/1.1\r\nHost: gw\r\n{headers}Connection: close\r\n\r\n");
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        raw_refused(status, &text, &up, 400, label);
    }
}

/// Credentials never leak to a backend that did not ask for them, public ones included (a
/// public route often fronts the least trusted app): the bearer token, the session cookie in
/// every position of the Cookie header, and Proxy-Authorization are all removed, other cookies
/// pass untouched.
#[tokio::test]
async fn credentials_never_leak_to_the_upstream() {
    let (up, gw) = start(GATE).await;
    let t = admin();
    for (path, status) in [("/public/x", 200), ("/admin/x", 200), ("/docs/x", 200)] {
        let auth = bearer(&t);
        let cookie = format!("theme=dark; authgate_session={t}; lang=en");
        let r = gw
            .get(
                path,
                &[
                    ("authorization", &auth),
                    ("cookie", &cookie),
                    ("proxy-authorization", "Basic YWRtaW46YWRtaW4="),
                ],
            )
            .await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        let seen = up.only();
        let dump = format!("{:?}", seen.headers);
        assert!(
            !dump.contains(&t),
            "{path}: the token reached the upstream: {dump}"
        );
        assert!(seen.headers.get("authorization").is_none(), "{path}");
        assert!(seen.headers.get("proxy-authorization").is_none(), "{path}");
        assert_eq!(values(&seen, "cookie"), ["theme=dark; lang=en"], "{path}");
        up.clear();
    }
}

/// Request-rewrite headers (IIS/Symfony `X-Original-URL`, `X-Rewrite-URL`, nginx
/// `X-Original-URI`, Traefik `X-Forwarded-Uri`/`-Prefix`) never reach the backend: it serves the
/// path authgate routed.
#[tokio::test]
async fn url_override_headers_are_stripped() {
    let (up, gw) = start(GATE).await;
    for name in [
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Forwarded-Uri",
        "X-Original-URI",
        "X-Forwarded-Path",
        "X-Forwarded-Prefix",
    ] {
        let r = gw.get("/public/x", &[(name, "/admin/delete-all")]).await;
        assert_eq!(r.status, 200, "{name}");
        let seen = up.only();
        assert_eq!(seen.target, "/public/x", "{name}");
        assert!(
            seen.headers
                .get(name.to_ascii_lowercase().as_str())
                .is_none(),
            "{name} forwarded"
        );
        up.clear();
    }
}

/// Client-chosen connection facts: `Forwarded`, `X-Real-IP`, `X-Forwarded-Host`/`-Proto` are
/// removed or replaced.
#[tokio::test]
async fn forwarded_and_real_ip_are_never_passed_on() {
    let (up, gw) = start(GATE).await;
    let r = gw
        .get(
            "/public/x",
            &[
                (
                    "forwarded",
                    "for=10.0.0.1;host=admin.example.com;proto=https",
                ),
                ("Forwarded", "for=127.0.0.1"),
                ("x-real-ip", "10.0.0.1"),
                ("X-Real-IP", "127.0.0.1"),
                ("x-forwarded-host", "admin.example.com"),
                ("x-forwarded-proto", "https"),
                ("host", "www.example.com"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    assert!(seen.headers.get("forwarded").is_none());
    assert!(seen.headers.get("x-real-ip").is_none());
    assert_eq!(values(&seen, "x-forwarded-host"), ["www.example.com"]);
    assert_eq!(values(&seen, "x-forwarded-proto"), ["http"]);
}

/// The same facts in the `_`/`.` spellings CGI-style backends (PHP, WSGI/Django, Rack) fold
/// into `X-Real-IP` / `X-Forwarded-For`: identity headers are stripped in every spelling for
/// this reason, and the README says a backend must not read connection facts the client chose.
#[tokio::test]
async fn forwarding_facts_in_underscore_spellings_are_not_passed_on() {
    let (up, gw) = start(GATE).await;
    let r = gw
        .get(
            "/public/x",
            &[
                ("X_Real_IP", "10.0.0.1"),
                ("x.real.ip", "10.0.0.1"),
                ("X_Forwarded_For", "10.0.0.1"),
                ("X_Forwarded_Host", "admin.example.com"),
                ("X_Forwarded_Proto", "https"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    let leaked: Vec<&str> = seen
        .headers
        .keys()
        .map(|n| n.as_str())
        .filter(|n| n.contains('_') || n.contains('.'))
        .collect();
    assert!(leaked.is_empty(), "forwarded: {leaked:?}");
    assert_eq!(values(&seen, "x-forwarded-for"), ["127.0.0.1"]);
}

/// A claim value that cannot be a header value (CR, LF, NUL, other controls, over 8 KiB) fails
/// the request with 401 on a route that injects it; it is never passed on raw or dropped.
#[tokio::test]
async fn hostile_claim_values_never_reach_upstream_headers() {
    let (up, gw) = start(GATE).await;
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("CRLF in sub", json!({"sub": "alice\r\nX-Injected: 1"})),
        ("bare LF in sub", json!({"sub": "alice\nX-Injected: 1"})),
        ("bare CR in sub", json!({"sub": "alice\rX-Injected: 1"})),
        ("NUL in sub", json!({"sub": "alice\u{0}admin"})),
        ("DEL in sub", json!({"sub": "alice\u{7f}"})),
        ("vertical tab in sub", json!({"sub": "alice\u{b}"})),
        (
            "CRLF inside a roles element",
            json!({"roles": ["admin", "x\r\nX-Injected: 1"]}),
        ),
        (
            "CRLF in a nested claim",
            json!({"org": {"tenant": "acme\r\nX-Injected: 1"}}),
        ),
        ("16 KB sub", json!({"sub": "a".repeat(16 * 1024)})),
        (
            "9 KiB roles array",
            json!({"roles": vec!["r".repeat(100); 92]}),
        ),
    ];
    for (label, extra) in cases {
        let r = gw.get_with_token("/app/x", &token("alice", extra)).await;
        refused(&r, &up, 401, label);
        assert_eq!(r.json()["error"], "invalid_token", "{label}");
    }
    // Only the routes that inject the claim are refused: /admin does not inject org.tenant.
    let tok = token(
        "alice",
        json!({"roles": ["admin"], "org": {"tenant": "acme\r\nX: 1"}}),
    );
    refused(
        &gw.get_with_token("/app/x", &tok).await,
        &up,
        401,
        "app injects org.tenant",
    );
    let r = gw.get_with_token("/admin/x", &tok).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(values(&seen, "x-user-id"), ["alice"]);
    assert!(seen.headers.get("x-tenant").is_none());
    assert!(seen.headers.get("x").is_none());
}

/// An upstream that records the raw bytes of one request and answers 200.
async fn raw_upstream() -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bytes: Arc<Mutex<Vec<u8>>> = Arc::default();
    let record = bytes.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let deadline = Instant::now() + Duration::from_secs(3);
                // Until the end of the chunked body (`0\r\n...\r\n\r\n` after the head).
                loop {
                    let done = buf
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .is_some_and(|head| {
                            let body = &buf[head + 4..];
                            body.windows(3).any(|w| w == b"0\r\n") && body.ends_with(b"\r\n\r\n")
                        });
                    if done || Instant::now() > deadline {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut chunk))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        Ok(_) => break,
                        Err(_) => continue,
                    }
                }
                record.lock().unwrap().extend_from_slice(&buf);
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (format!("http://{addr}"), bytes)
}

/// Identity headers smuggled as chunked trailers never reach the backend (some frameworks
/// merge trailers into the header map).
#[tokio::test]
async fn identity_headers_in_chunked_trailers_are_not_forwarded() {
    let (url, seen) = raw_upstream().await;
    let gw = Gateway::start(GATE, &url).await;
    let req = format!(
        "POST /app/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nTrailer: X-User-Id, X-User-Roles\r\nTE: trailers\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-User-Id: root\r\nX-User-Roles: admin\r\n\r\n",
        token("bob", json!({}))
    );
    let (status, text) = raw(gw.addr(), req.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let upstream = String::from_utf8_lossy(&seen.lock().unwrap()).to_ascii_lowercase();
    assert!(
        upstream.starts_with("post /app/x http/1.1\r\n"),
        "{upstream}"
    );
    assert!(upstream.contains("\r\nx-user-id: bob\r\n"), "{upstream}");
    assert!(upstream.contains("hello"), "{upstream}");
    assert!(!upstream.contains("root"), "trailer forwarded: {upstream}");
    assert!(
        !upstream.contains("x-user-roles: admin"),
        "trailer forwarded: {upstream}"
    );
}

// ================================================================ protocol

/// Request smuggling with both Content-Length and Transfer-Encoding (CL.TE and TE.CL, PortSwigger
/// style): whatever framing the gateway picks, the request hidden in the body never reaches the
/// upstream as a request.
#[tokio::test]
async fn cl_te_smuggling_never_reaches_upstream() {
    let (up, gw) = start(GATE).await;
    let smuggled = "GET /admin/secret HTTP/1.1\r\nHost: gw\r\nX-User-Id: root\r\n\r\n";
    let cases = [
        // TE.CL: the front end reads chunks, a back end given CL: 4 would read the rest as a request.
        format!(
            "POST /public/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
            smuggled.len()
        ),
        // CL.TE: the front end reads CL bytes, a back end reading chunks stops at `0` and parses the rest.
        format!(
            "POST /public/x HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        ),
        // TE first, then CL.
        format!(
            "POST /public/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
            smuggled.len()
        ),
    ];
    for (i, req) in cases.iter().enumerate() {
        let (_, text) = raw(gw.addr(), req.as_bytes()).await;
        let got = statuses(&text);
        assert!(!got.is_empty(), "case {i}: no answer");
        assert!(
            got[0] == 200 || got[0] == 400,
            "case {i}: first answer {got:?}: {text}"
        );
        assert!(
            got[1..].iter().all(|&s| s == 401 || s == 400),
            "case {i}: {got:?}"
        );
        let seen = up.seen();
        assert!(
            seen.iter().all(|s| s.target == "/public/x"),
            "case {i}: smuggled request forwarded: {seen:#?}"
        );
        assert!(
            seen.iter()
                .all(|s| s.headers.get("content-length").is_none()
                    || s.headers["content-length"] != "4"),
            "case {i}: conflicting length forwarded"
        );
        assert!(
            seen.iter().all(|s| s.headers.get("x-user-id").is_none()),
            "case {i}: {seen:#?}"
        );
        up.clear();
    }
}

/// Content-Length abuse: two different values, a list, signs and non-digits.
#[tokio::test]
async fn conflicting_or_malformed_content_length_is_400() {
    let (up, gw) = start(GATE).await;
    for headers in [
        "Content-Length: 4\r\nContent-Length: 40",
        "Content-Length: 40\r\nContent-Length: 4",
        "Content-Length: 4, 40",
        "Content-Length: +4",
        "Content-Length: -4",
        "Content-Length: 0x4",
        "Content-Length: 4 4",
        "Content-Length: 99999999999999999999999",
    ] {
        let req = format!(
            "POST /public/x HTTP/1.1\r\nHost: gw\r\n{headers}\r\nConnection: close\r\n\r\nabcdGET /admin HTTP/1.1\r\nHost: gw\r\n\r\n"
        );
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        raw_refused(status, &text, &up, 400, headers);
    }
}

/// Obfuscated Transfer-Encoding: refused, or framed as chunked consistently. Either way the
/// request hidden in the body never reaches the upstream.
#[tokio::test]
async fn obfuscated_transfer_encoding_is_refused_or_framed_safely() {
    let (up, gw) = start(GATE).await;
    let smuggled = "GET /admin/secret HTTP/1.1\r\nHost: gw\r\n\r\n";
    for te in [
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: identity",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: gzip",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding\t: chunked",
        "Transfer-Encoding: \"chunked\"",
        "Transfer_Encoding: chunked",
        "Transfer-Encoding: CHUNKED",
        "Transfer-Encoding:\tchunked",
    ] {
        let req = format!(
            "POST /public/x HTTP/1.1\r\nHost: gw\r\n{te}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        );
        let (_, text) = raw(gw.addr(), req.as_bytes()).await;
        let got = statuses(&text);
        assert!(!got.is_empty(), "{te}: no answer");
        assert!(got[0] == 400 || got[0] == 200, "{te}: {got:?}: {text}");
        if got[0] == 400 {
            assert!(
                up.seen().is_empty(),
                "{te}: refused but forwarded {:#?}",
                up.seen()
            );
        }
        assert!(
            got[1..].iter().all(|&s| s == 401 || s == 400),
            "{te}: {got:?}"
        );
        assert!(
            up.seen().iter().all(|s| s.target == "/public/x"),
            "{te}: smuggled {:#?}",
            up.seen()
        );
        up.clear();
    }
    // A chunked request in HTTP/1.0 (which has no chunked coding).
    let req = "POST /public/x HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let (status, text) = raw(gw.addr(), req.as_bytes()).await;
    raw_refused(status, &text, &up, 400, "HTTP/1.0 chunked");
}

/// `Transfer_Encoding`, `Content_Length` and friends are no framing headers to the gateway (it
/// frames by the real ones), but servers and CGI-style stacks that fold `_`/`.` into `-` (the
/// reason identity headers are stripped in every spelling) would frame the forwarded request by
/// them: a desync on the pooled upstream connection that turns the rest of the body into a
/// request nobody authorized. Hop-by-hop and framing headers must go in every spelling too.
#[tokio::test]
async fn framing_headers_in_underscore_spellings_are_not_forwarded() {
    let (up, gw) = start(GATE).await;
    let smuggled = "GET /admin/secret HTTP/1.1\r\nHost: gw\r\nX-User-Id: root\r\n\r\n";
    for header in [
        "Transfer_Encoding: chunked",
        "transfer.encoding: chunked",
        "Content_Length: 0",
        "content.length: 0",
        "Keep_Alive: timeout=5",
        "Proxy_Connection: keep-alive",
    ] {
        let body = format!("0\r\n\r\n{smuggled}");
        let req = format!(
            "POST /public/x HTTP/1.1\r\nHost: gw\r\n{header}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        assert!(status == 200 || status == 400, "{header}: {text}");
        for seen in up.seen() {
            assert_eq!(seen.target, "/public/x", "{header}");
            for name in seen.headers.keys() {
                let folded = name.as_str().replace(['_', '.'], "-");
                assert!(
                    name.as_str() == folded
                        || ![
                            "transfer-encoding",
                            "content-length",
                            "keep-alive",
                            "proxy-connection",
                        ]
                        .contains(&folded.as_str()),
                    "{header}: forwarded as `{name}`"
                );
            }
        }
        up.clear();
    }
}

/// Invalid chunk framing mid-stream (overflowing and signed sizes): the upstream never gets a
/// complete request built from it, and nothing after it is parsed as a request.
#[tokio::test]
async fn invalid_chunk_sizes_do_not_smuggle() {
    let (up, gw) = start(GATE).await;
    for size in ["fffffffffffffffff", "-1", "0x5", "+5", "5\r\n"] {
        let req = format!(
            "POST /public/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\nGET /admin/secret HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        );
        let (_, text) = raw(gw.addr(), req.as_bytes()).await;
        let got = statuses(&text);
        assert!(
            got.iter().all(|s| [400, 401, 413, 502].contains(s)),
            "{size}: {got:?}: {text}"
        );
        assert!(
            up.seen()
                .iter()
                .all(|s| s.target == "/public/x" && s.body.is_empty()),
            "{size}: {:#?}",
            up.seen()
        );
        up.clear();
    }
}

/// h2c upgrade (the Bishop Fox h2c smuggling trick): never passed to the upstream, never a 101,
/// and a protected route still needs its token.
#[tokio::test]
async fn h2c_upgrade_is_not_passed_through() {
    let (up, gw) = start(GATE).await;
    let h2c = "Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n";
    let req = format!("GET /admin/x HTTP/1.1\r\nHost: gw\r\n{h2c}\r\n");
    let (status, text) = raw(gw.addr(), req.as_bytes()).await;
    raw_refused(status, &text, &up, 401, "protected route");
    assert!(!text.contains("HTTP/1.1 101"), "{text}");
    let req = format!("GET /public/x HTTP/1.1\r\nHost: gw\r\n{h2c}\r\n");
    let (_, text) = raw(gw.addr(), req.as_bytes()).await;
    assert_eq!(statuses(&text).first(), Some(&200), "{text}");
    assert!(!text.contains("HTTP/1.1 101"), "{text}");
    let seen = up.only();
    for h in ["upgrade", "http2-settings", "connection"] {
        assert!(seen.headers.get(h).is_none(), "{h} forwarded");
    }
}

/// Pipelined requests on one keep-alive connection are each authorized: an authorized request
/// lends nothing to the next one.
#[tokio::test]
async fn every_pipelined_request_on_a_connection_is_authorized() {
    let (up, gw) = start(GATE).await;
    let req = format!(
        "GET /admin/one HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n\r\nGET /admin/two HTTP/1.1\r\nHost: gw\r\n\r\nGET /admin/three HTTP/1.1\r\nHost: gw\r\nCookie: authgate_session=junk\r\nConnection: close\r\n\r\n",
        admin()
    );
    let (_, text) = raw(gw.addr(), req.as_bytes()).await;
    assert_eq!(statuses(&text), [200, 401, 401], "{text}");
    let seen = up.only();
    assert_eq!(seen.target, "/admin/one");
    assert_eq!(values(&seen, "x-user-id"), ["alice"]);
}

/// The body of a refused request is skipped by its length, never parsed as the next request.
#[tokio::test]
async fn body_of_a_refused_request_is_never_parsed_as_a_request() {
    let (up, gw) = start(GATE).await;
    let inner = "GET /public/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";
    let req = format!(
        "POST /admin/x HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{inner}GET /public/after HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        inner.len()
    );
    let (_, text) = raw(gw.addr(), req.as_bytes()).await;
    let got = statuses(&text);
    assert_eq!(got.first(), Some(&401), "{text}");
    assert!(
        up.seen().iter().all(|s| s.target == "/public/after"),
        "{:#?}",
        up.seen()
    );
    assert!(got.len() <= 2, "{got:?}");
}

/// A WebSocket handshake without a valid token is answered 401 before any 101, and the
/// upstream never even gets a connection.
#[tokio::test]
async fn websocket_upgrade_without_a_valid_token() {
    let (up, gw) = start(GATE).await;
    let ws = "Connection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (label, auth) in [
        ("no token", String::new()),
        (
            "expired token",
            format!(
                "Authorization: Bearer {}\r\n",
                token("alice", json!({"exp": now() - 10}))
            ),
        ),
        ("junk cookie", "Cookie: authgate_session=junk\r\n".into()),
        ("spoofed identity", "X-User-Id: alice\r\n".into()),
    ] {
        let req = format!("GET /app/socket HTTP/1.1\r\nHost: gw\r\n{ws}{auth}\r\n");
        let (status, text) = raw(gw.addr(), req.as_bytes()).await;
        raw_refused(status, &text, &up, 401, label);
        assert!(!text.contains("HTTP/1.1 101"), "{label}: {text}");
    }
    assert_eq!(up.connections(), 0, "the upstream got a connection");
}

/// WebSocket smuggling (the Varnish/Envoy class): an authorized upgrade the backend refuses
/// (not 101) must leave the client connection in HTTP, so the next request is authorized again
/// rather than tunnelled to the backend.
#[tokio::test]
async fn refused_websocket_upgrade_does_not_open_a_tunnel() {
    let (up, gw) = start(GATE).await;
    let req = format!(
        "GET /app/socket HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 1337\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {}\r\n\r\nGET /admin/secret HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        token("bob", json!({}))
    );
    let (_, text) = raw(gw.addr(), req.as_bytes()).await;
    let got = statuses(&text);
    assert_eq!(got.first(), Some(&200), "{text}");
    assert!(got[1..].iter().all(|&s| s == 401), "{got:?}");
    let seen = up.only();
    assert_eq!(seen.target, "/app/socket");
    assert_eq!(values(&seen, "x-user-id"), ["bob"]);
}

// ================================================================ exhaustion

#[tokio::test]
async fn ten_thousand_headers_get_431() {
    let (up, gw) = start(GATE).await;
    let mut req = String::from("GET /public/x HTTP/1.1\r\nHost: gw\r\n");
    for i in 0..10_000 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let (status, text) = flood(gw.addr(), req.into_bytes()).await;
    raw_refused(status, &text, &up, 431, "10,000 headers");
    // 101 small headers fit in the byte limit but not in the header count: also refused.
    let mut req = String::from("GET /public/x HTTP/1.1\r\nHost: gw\r\n");
    for i in 0..101 {
        req.push_str(&format!("X-{i}: v\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let (status, text) = flood(gw.addr(), req.into_bytes()).await;
    raw_refused(status, &text, &up, 431, "101 headers");
}

/// Slowloris: a request head trickled one header every 100 ms never completes; the connection
/// is closed once `header_read_timeout` (500 ms) has passed, however steadily bytes arrive.
#[tokio::test]
async fn slowloris_trickle_is_cut_off() {
    let up = Upstream::start().await;
    let yaml = format!("server:\n  header_read_timeout: 500ms\n{GATE}");
    let gw = Gateway::start(&yaml, &up.url()).await;
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let mut closed_after = None;
    let mut buf = [0u8; 1024];
    let mut answer = Vec::new();
    // Bounded: at most 6 s of trickling (the clock is what is under test here).
    while started.elapsed() < Duration::from_secs(6) {
        if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let closed_after = closed_after.expect("the trickling connection was never closed");
    assert!(
        closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(up.seen().is_empty());
    assert_eq!(up.connections(), 0);
}
