mod common;
use common::*;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;

/// A token that passes the STANDARD admin route's `allow: { roles: admin }`.
fn admin_token() -> String {
    token("alice", json!({"roles": ["admin"]}))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Asserts a gateway refusal (status + JSON `error` code) and that nothing was forwarded.
#[track_caller]
fn assert_refused(r: &Reply, up: &Upstream, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.text());
    assert_eq!(r.json()["error"], code, "body: {}", r.text());
    assert!(up.seen().is_empty(), "forwarded: {:#?}", up.seen());
}

/// Asserts a raw-TCP request was refused with 400 (by hyper or by authgate) and not forwarded.
#[track_caller]
fn assert_raw_400(status: u16, text: &str, up: &Upstream) {
    assert_eq!(status, 400, "response: {text}");
    assert!(up.seen().is_empty(), "forwarded: {:#?}", up.seen());
}

/// A single public `/admin` prefix route and no catch-all, so a miss is a 404.
const PREFIXES: &str = with_routes!(
    r#"  - name: admin
    match: { path_prefix: /admin }
    upstream: app
    auth: none
"#
);

/// One upstream base path per route: `/r-<name>` in front of the forwarded path tells which
/// route took the request.
const MATCHING: &str = r#"
listen: "127.0.0.1:0"
tokens:
  issuer: authgate
  audience: apps
  leeway: 0s
  keys:
    - { id: k1, algorithm: HS256, secret: "{SECRET}" }
upstreams:
  exact: "{UPSTREAM}/r-exact"
  getonly: "{UPSTREAM}/r-getonly"
  docsfallback: "{UPSTREAM}/r-docsfallback"
  hosted: "{UPSTREAM}/r-hosted"
  hostfallback: "{UPSTREAM}/r-hostfallback"
  deep: "{UPSTREAM}/r-deep"
  shallow: "{UPSTREAM}/r-shallow"
  special: "{UPSTREAM}/r-special"
routes:
  - name: exact
    match: { path: /health }
    upstream: exact
    auth: none
  - name: docs-read
    match: { path_prefix: /docs, methods: [GET] }
    upstream: getonly
    auth: none
  - name: docs-write
    match: { path_prefix: /docs, methods: [POST] }
    upstream: docsfallback
  - name: readonly
    match: { path_prefix: /readonly, methods: [GET] }
    upstream: getonly
    auth: none
  - name: hosted
    match: { path_prefix: /site, host: admin.example.com }
    upstream: hosted
    auth: none
  - name: site
    match: { path_prefix: /site }
    upstream: hostfallback
    auth: none
  - name: deep
    match: { path_prefix: /api/v1 }
    upstream: deep
    auth: none
  - name: shallow
    match: { path_prefix: /api }
    upstream: shallow
    auth: none
  - name: special
    match: { path: /api/v1/special }
    upstream: special
    auth: none
"#;

const STRIP: &str = r#"
listen: "127.0.0.1:0"
tokens:
  issuer: authgate
  audience: apps
  leeway: 0s
  keys:
    - { id: k1, algorithm: HS256, secret: "{SECRET}" }
upstreams:
  plain: "{UPSTREAM}"
  based: "{UPSTREAM}/base"
routes:
  - name: api
    match: { path_prefix: /api }
    upstream: plain
    auth: none
    strip_prefix: /api
  - name: based
    match: { path_prefix: /svc }
    upstream: based
    auth: none
    strip_prefix: /svc
  - name: based-nostrip
    match: { path_prefix: /keep }
    upstream: based
    auth: none
"#;

// ---------------------------------------------------------------- path normalization

/// Each of these spellings must be routed (and forwarded) as `/admin`.
const ADMIN_SPELLINGS: [&str; 6] = [
    "/public/../admin",
    "/public/%2e%2e/admin",
    "/public/%2E%2e/admin",
    "//admin",
    "/public/./../admin",
    "/%61dmin",
];

#[tokio::test]
async fn dot_segment_spellings_of_admin_need_a_token() {
    for path in ADMIN_SPELLINGS {
        let up = Upstream::start().await;
        let gw = Gateway::start(STANDARD, &up.url()).await;
        let r = gw.get(path, &[]).await;
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_token", "{path}");
        assert!(
            up.seen().is_empty(),
            "{path} was forwarded: {:#?}",
            up.seen()
        );
    }
}

#[tokio::test]
async fn dot_segment_spellings_of_admin_reach_upstream_as_admin() {
    for path in ADMIN_SPELLINGS {
        let up = Upstream::start().await;
        let gw = Gateway::start(STANDARD, &up.url()).await;
        let r = gw.get_with_token(path, &admin_token()).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let seen = up.only();
        assert_eq!(seen.target, "/admin", "{path}");
        // The admin route (not public) took it: it injects the identity header.
        assert_eq!(seen.headers["x-user-id"], "alice", "{path}");
    }
}

#[tokio::test]
async fn percent_encoded_unreserved_letter_is_decoded_for_routing() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = gw.get("/%61dmin/x", &[]).await;
    assert_refused(&r, &up, 401, "invalid_token");
    let r = gw.get_with_token("/%61dmin/x", &admin_token()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().target, "/admin/x");
}

#[tokio::test]
async fn upstream_receives_the_normalized_path() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = gw
        .get_with_token("/app//x/./y/../z", &token("alice", json!({})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().target, "/app/x/z");
}

#[tokio::test]
async fn query_string_is_kept_and_never_routes() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = gw.get("/public?x=/admin", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(seen.target, "/public?x=/admin");
    assert!(seen.headers.get("x-user-id").is_none());
}

#[tokio::test]
async fn query_string_with_dot_segments_is_not_normalized() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = gw.get("/public/a?next=/../admin&y=%2F", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().target, "/public/a?next=/../admin&y=%2F");
}

// ---------------------------------------------------------------- refused paths (400)

#[tokio::test]
async fn encoded_slash_upper_case_is_400() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = gw.get("/public%2F..%2Fadmin", &[]).await;
    assert_refused(&r, &up, 400, "invalid_request");
    let r = gw.get("/public/a%2Fb", &[]).await;
    assert_refused(&r, &up, 400, "invalid_request");
}

#[tokio::test]
async fn encoded_slash_lower_case_is_400() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = gw.get("/public/a%2fb", &[]).await;
    assert_refused(&r, &up, 400, "invalid_request");
}

#[tokio::test]
async fn encoded_backslash_is_400() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = gw.get("/public/..%5Cadmin", &[]).await;
    assert_refused(&r, &up, 400, "invalid_request");
    let r = gw.get("/public/a%5cb", &[]).await;
    assert_refused(&r, &up, 400, "invalid_request");
}

#[tokio::test]
async fn encoded_nul_is_400() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = gw.get("/public/a%00b", &[]).await;
    assert_refused(&r, &up, 400, "invalid_request");
}

#[tokio::test]
async fn raw_backslash_is_400() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let (status, text) = raw(
        gw.addr(),
        b"GET /public\\..\\admin HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_raw_400(status, &text, &up);
}

#[tokio::test]
async fn raw_nul_is_400() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let (status, text) = raw(
        gw.addr(),
        b"GET /public/a\0b HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_raw_400(status, &text, &up);
}

#[tokio::test]
async fn raw_fragment_in_target_never_reaches_upstream() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let (status, text) = raw(
        gw.addr(),
        b"GET /public/a#/../../admin HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    // Either refused, or the fragment is dropped before routing: the request is then the
    // public `/public/a`, and neither the route nor the upstream ever sees `/admin`.
    match status {
        400 => assert!(up.seen().is_empty(), "forwarded: {:#?}", up.seen()),
        200 => assert_eq!(up.only().target, "/public/a"),
        other => panic!("unexpected status {other}: {text}"),
    }
    let (status, text) = raw(
        gw.addr(),
        b"GET /admin#/../public HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        matches!(status, 400 | 401),
        "a fragment must not turn /admin public: {text}"
    );
    assert!(
        up.seen().iter().all(|s| !s.target.contains("admin")),
        "{:#?}",
        up.seen()
    );
}

#[tokio::test]
async fn dot_dot_segment_with_params_is_400() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = gw.get("/public/..;/admin", &[]).await;
    assert_refused(&r, &up, 400, "invalid_request");
    let r = gw.get("/public/%2e%2e;x=1/admin", &[]).await;
    assert_refused(&r, &up, 400, "invalid_request");
}

#[tokio::test]
async fn invalid_percent_encoding_is_400() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = gw.get("/public/%zz", &[]).await;
    assert_refused(&r, &up, 400, "invalid_request");
    let r = gw.get("/public/a%2", &[]).await;
    assert_refused(&r, &up, 400, "invalid_request");
}

// ---------------------------------------------------------------- route matching

#[tokio::test]
async fn prefix_takes_itself_trailing_slash_and_children() {
    for path in ["/admin", "/admin/", "/admin/x"] {
        let up = Upstream::start().await;
        let gw = Gateway::start(PREFIXES, &up.url()).await;
        let r = gw.get(path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(up.only().target, path);
    }
}

#[tokio::test]
async fn prefix_does_not_take_a_longer_segment() {
    let up = Upstream::start().await;
    let gw = Gateway::start(PREFIXES, &up.url()).await;
    let r = gw.get("/administrator", &[]).await;
    assert_refused(&r, &up, 404, "not_found");
    let r = gw.get("/admin-panel/x", &[]).await;
    assert_refused(&r, &up, 404, "not_found");
}

#[tokio::test]
async fn matrix_params_do_not_escape_the_admin_route() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let r = gw.get("/admin;jsessionid=1/x", &[]).await;
    assert_refused(&r, &up, 401, "invalid_token");
    let r = gw.get("/admin;jsessionid=1", &[]).await;
    assert_refused(&r, &up, 401, "invalid_token");
}

#[tokio::test]
async fn exact_path_route_takes_only_that_path() {
    let up = Upstream::start().await;
    let gw = Gateway::start(MATCHING, &up.url()).await;
    let r = gw.get("/health", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().target, "/r-exact/health");
    up.clear();
    for path in ["/health/", "/health/x", "/healthz"] {
        let r = gw.get(path, &[]).await;
        assert_refused(&r, &up, 404, "not_found");
    }
}

#[tokio::test]
async fn get_only_route_passes_post_to_the_next_route() {
    let up = Upstream::start().await;
    let gw = Gateway::start(MATCHING, &up.url()).await;
    // POST skips the public GET-only route and lands on the next one, which needs a token.
    let r = send(
        gw.addr(),
        "POST",
        "/docs/page",
        &[],
        Bytes::from_static(b"x"),
    )
    .await;
    assert_refused(&r, &up, 401, "invalid_token");
    let auth = bearer(&token("alice", json!({})));
    let r = send(
        gw.addr(),
        "POST",
        "/docs/page",
        &[("authorization", &auth)],
        Bytes::from_static(b"x"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/r-docsfallback/docs/page");
    up.clear();
    let r = gw.get("/docs/page", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().target, "/r-getonly/docs/page");
}

#[tokio::test]
async fn get_only_route_without_fallback_refuses_post_with_404() {
    let up = Upstream::start().await;
    let gw = Gateway::start(MATCHING, &up.url()).await;
    for method in ["POST", "PUT", "DELETE"] {
        let r = send(gw.addr(), method, "/readonly/x", &[], Bytes::new()).await;
        assert_refused(&r, &up, 404, "not_found");
    }
}

#[tokio::test]
async fn head_is_taken_by_a_get_route() {
    let up = Upstream::start().await;
    let gw = Gateway::start(MATCHING, &up.url()).await;
    let r = send(gw.addr(), "HEAD", "/readonly/x", &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    assert_eq!(seen.method, "HEAD");
    assert_eq!(seen.target, "/r-getonly/readonly/x");
}

#[tokio::test]
async fn host_match_ignores_case_port_and_trailing_dot() {
    for host in [
        "admin.example.com",
        "ADMIN.Example.Com",
        "admin.example.com:8443",
        "admin.example.com.",
        "Admin.Example.com.:80",
    ] {
        let up = Upstream::start().await;
        let gw = Gateway::start(MATCHING, &up.url()).await;
        let r = gw.get("/site/x", &[("host", host)]).await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        let seen = up.only();
        assert_eq!(seen.target, "/r-hosted/site/x", "{host}");
        assert_eq!(seen.headers["host"], host, "the client's Host is forwarded");
    }
}

#[tokio::test]
async fn other_host_falls_through_to_the_next_route() {
    for host in [
        "other.example.com",
        "admin.example.com.evil",
        "xadmin.example.com",
    ] {
        let up = Upstream::start().await;
        let gw = Gateway::start(MATCHING, &up.url()).await;
        let r = gw.get("/site/x", &[("host", host)]).await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert_eq!(up.only().target, "/r-hostfallback/site/x", "{host}");
    }
}

#[tokio::test]
async fn first_match_in_file_order_wins() {
    let up = Upstream::start().await;
    let gw = Gateway::start(MATCHING, &up.url()).await;
    for (path, want) in [
        ("/api/v1/x", "/r-deep/api/v1/x"),
        // The later exact route is shadowed by the earlier `/api/v1` prefix.
        ("/api/v1/special", "/r-deep/api/v1/special"),
        ("/api/v2", "/r-shallow/api/v2"),
        ("/api", "/r-shallow/api"),
    ] {
        up.clear();
        let r = gw.get(path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(up.only().target, want, "{path}");
    }
}

#[tokio::test]
async fn no_route_is_404_and_nothing_is_forwarded() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    for path in ["/", "/nothing", "/publicx", "/static/app.js"] {
        let r = gw.get_with_token(path, &admin_token()).await;
        assert_refused(&r, &up, 404, "not_found");
    }
}

// ---------------------------------------------------------------- strip_prefix

#[tokio::test]
async fn strip_prefix_removes_the_prefix_and_keeps_the_query() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STRIP, &up.url()).await;
    let r = gw.get("/api/users?id=1", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().target, "/users?id=1");
}

#[tokio::test]
async fn strip_prefix_of_the_whole_path_forwards_root() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STRIP, &up.url()).await;
    let r = gw.get("/api", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().target, "/");
    up.clear();
    let r = gw.get("/api?q=1", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().target, "/?q=1");
}

#[tokio::test]
async fn upstream_base_path_is_prepended() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STRIP, &up.url()).await;
    let r = gw.get("/svc/users?id=1", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().target, "/base/users?id=1");
    up.clear();
    let r = gw.get("/keep/x", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().target, "/base/keep/x");
}

#[tokio::test]
async fn strip_prefix_is_segment_aware_with_matrix_params() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STRIP, &up.url()).await;
    // The route takes `/api;x=1/users` (`;` params are ignored for routing), so stripping
    // the `/api` segment must leave a path that still starts with `/`.
    let r = gw.get("/api;x=1/users", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let target = up.only().target;
    assert!(target.starts_with('/'), "upstream got {target:?}");
    assert_eq!(target, "/users");
}

// ---------------------------------------------------------------- keep-alive

#[tokio::test]
async fn auth_is_checked_on_every_request_of_a_keep_alive_connection() {
    let up = Upstream::start().await;
    let gw = Gateway::start(STANDARD, &up.url()).await;
    let stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let host = gw.addr().to_string();

    let first = Request::get("/app/first")
        .header("host", &host)
        .header("authorization", bearer(&token("alice", json!({}))))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(first).await.unwrap();
    let status = resp.status();
    let _ = resp.into_body().collect().await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(up.only().target, "/app/first");
    assert_eq!(up.only().headers["x-user-id"], "alice");
    up.clear();

    sender.ready().await.expect("the connection was kept alive");
    let second = Request::get("/app/second")
        .header("host", &host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender
        .send_request(second)
        .await
        .expect("second request on the same connection");
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "invalid_token");
    assert!(up.seen().is_empty(), "forwarded: {:#?}", up.seen());
}
