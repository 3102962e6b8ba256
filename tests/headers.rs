mod common;
use common::*;

use bytes::Bytes;
use serde_json::json;

/// STANDARD's routes plus: a number claim on the app route, a `forward_token` route, a route
/// whose forwarded path starts with `/echo-body` (the harness upstream echoes those bodies) and
/// a public route to the harness upstream's 1 MiB `/big` answer.
const HEADERS: &str = with_routes!(
    r#"  - name: public
    match: { path_prefix: /public }
    upstream: app
    auth: none
  - name: echo
    match: { path_prefix: /app/echo-body }
    upstream: app
    strip_prefix: /app
    headers: { X-User-Id: sub }
  - name: app
    match: { path_prefix: /app }
    upstream: app
    headers: { X-User-Id: sub, X-User-Roles: roles, X-Tenant: org.tenant, X-Level: level }
  - name: passthrough
    match: { path_prefix: /fwd }
    upstream: app
    forward_token: true
    headers: { X-User-Id: sub }
  - name: big
    match: { path_prefix: /big }
    upstream: app
    auth: none
"#
);

const SPOOFED: [(&str, &str); 3] = [
    ("X-User-Id", "evil"),
    ("x_user_id", "evil"),
    ("X.User.Id", "evil"),
];

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn alice() -> String {
    token("alice", json!({}))
}

async fn start() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(HEADERS, &up.url()).await;
    (up, gw)
}

/// Asserts a gateway refusal (status + JSON `error` code) and that nothing was forwarded.
#[track_caller]
fn assert_refused(r: &Reply, up: &Upstream, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.text());
    assert_eq!(r.json()["error"], code, "body: {}", r.text());
    assert!(up.seen().is_empty(), "forwarded: {:#?}", up.seen());
}

/// Every value the upstream received for `name`.
fn all(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

// ---------------------------------------------------------------- identity headers

#[tokio::test]
async fn spoofed_identity_headers_are_replaced_by_the_token_subject() {
    let (up, gw) = start().await;
    let auth = bearer(&alice());
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend(SPOOFED);
    let r = gw.get("/app/x", &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(all(&seen, "x-user-id"), ["alice"]);
    assert!(
        seen.headers.get("x_user_id").is_none(),
        "{:?}",
        seen.headers
    );
    assert!(
        seen.headers.get("x.user.id").is_none(),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn spoofed_identity_headers_are_stripped_over_raw_tcp() {
    let (up, gw) = start().await;
    let request = format!(
        "GET /app/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nX-USER-ID: evil\r\nX_User_Id: evil\r\nx.USER.id: evil\r\nX-User_Id: evil\r\nConnection: close\r\n\r\n",
        alice()
    );
    let (status, text) = raw(gw.addr(), request.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let seen = up.only();
    assert_eq!(all(&seen, "x-user-id"), ["alice"]);
    let names: Vec<&str> = seen.headers.keys().map(|n| n.as_str()).collect();
    for spelling in ["x_user_id", "x.user.id", "x-user_id"] {
        assert!(
            !names.contains(&spelling),
            "{spelling} reached the upstream: {names:?}"
        );
    }
}

#[tokio::test]
async fn spoofed_identity_headers_are_stripped_on_public_routes() {
    let (up, gw) = start().await;
    let mut headers = vec![
        ("x-user-roles", "admin"),
        ("x_tenant", "acme"),
        ("x-level", "99"),
        ("x-unrelated", "kept"),
    ];
    headers.extend(SPOOFED);
    let r = gw.get("/public/x", &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    for name in [
        "x-user-id",
        "x_user_id",
        "x.user.id",
        "x-user-roles",
        "x_tenant",
        "x-level",
    ] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["x-unrelated"], "kept");
}

#[tokio::test]
async fn spoofed_identity_headers_without_a_token_are_refused() {
    let (up, gw) = start().await;
    let r = gw.get("/app/x", &SPOOFED).await;
    assert_refused(&r, &up, 401, "invalid_token");
}

// ---------------------------------------------------------------- hop-by-hop

#[tokio::test]
async fn connection_naming_an_identity_header_cannot_remove_it() {
    let (up, gw) = start().await;
    let auth = bearer(&alice());
    let r = gw
        .get(
            "/app/x",
            &[
                ("authorization", &auth),
                ("connection", "x-user-id"),
                ("x-user-id", "evil"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(all(&up.only(), "x-user-id"), ["alice"]);
}

#[tokio::test]
async fn headers_named_in_connection_are_not_forwarded() {
    let (up, gw) = start().await;
    let r = gw
        .get(
            "/public/x",
            &[
                ("connection", "x-secret, X-Other"),
                ("x-secret", "1"),
                ("x-other", "2"),
                ("x-kept", "3"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert!(seen.headers.get("x-secret").is_none(), "{:?}", seen.headers);
    assert!(seen.headers.get("x-other").is_none(), "{:?}", seen.headers);
    assert_eq!(seen.headers["x-kept"], "3");
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let (up, gw) = start().await;
    let r = gw
        .get(
            "/public/x",
            &[
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic dXNlcjpwYXNz"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("upgrade", "websocket"),
                ("trailer", "x-checksum"),
                ("x-kept", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    for name in [
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "upgrade",
        "trailer",
    ] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["x-kept"], "1");
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_returned() {
    let (up, gw) = start().await;
    let r = gw.get("/public/x", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "upstream ok");
    assert_eq!(up.only().target, "/public/x");
    // The upstream answered `connection: x-upstream-private` and `x-upstream-private: leak`.
    assert!(
        r.headers.get("x-upstream-private").is_none(),
        "{:?}",
        r.headers
    );
    assert_eq!(r.headers["x-upstream"], "yes");
}

// ---------------------------------------------------------------- X-Forwarded-*, Host

#[tokio::test]
async fn x_forwarded_for_is_appended() {
    let (up, gw) = start().await;
    let r = gw.get("/public/x", &[("x-forwarded-for", "1.2.3.4")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(all(&up.only(), "x-forwarded-for"), ["1.2.3.4, 127.0.0.1"]);
}

#[tokio::test]
async fn x_forwarded_for_is_set_when_absent() {
    let (up, gw) = start().await;
    let r = gw.get("/public/x", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(all(&up.only(), "x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn x_forwarded_proto_is_http_whatever_the_client_says() {
    let (up, gw) = start().await;
    let r = gw.get("/public/x", &[("x-forwarded-proto", "https")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(all(&up.only(), "x-forwarded-proto"), ["http"]);
}

#[tokio::test]
async fn x_forwarded_host_is_the_client_host() {
    let (up, gw) = start().await;
    let r = gw
        .get(
            "/public/x",
            &[
                ("host", "app.example.com:8443"),
                ("x-forwarded-host", "evil.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        all(&up.only(), "x-forwarded-host"),
        ["app.example.com:8443"]
    );
}

#[tokio::test]
async fn client_host_header_is_preserved_upstream() {
    let (up, gw) = start().await;
    let r = gw.get("/public/x", &[("host", "app.example.com")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(all(&seen, "host"), ["app.example.com"]);
    assert_ne!(seen.headers["host"], up.addr.to_string().as_str());
}

// ---------------------------------------------------------------- Authorization

#[tokio::test]
async fn authorization_is_not_forwarded_by_default() {
    let (up, gw) = start().await;
    let r = gw.get_with_token("/app/x", &alice()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert!(
        seen.headers.get("authorization").is_none(),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.headers["x-user-id"], "alice");
}

#[tokio::test]
async fn authorization_is_forwarded_unchanged_with_forward_token() {
    let (up, gw) = start().await;
    let auth = format!("bearer   {}", alice());
    let r = gw.get("/fwd/x", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(all(&seen, "authorization"), [auth]);
    assert_eq!(seen.headers["x-user-id"], "alice");
}

#[tokio::test]
async fn several_authorization_headers_are_400() {
    let (up, gw) = start().await;
    let a = bearer(&alice());
    let b = bearer(&token("bob", json!({})));
    for path in ["/app/x", "/public/x"] {
        let r = gw
            .get(path, &[("authorization", &a), ("authorization", &b)])
            .await;
        assert_refused(&r, &up, 400, "invalid_request");
        // Even the same token twice.
        let r = gw
            .get(path, &[("authorization", &a), ("authorization", &a)])
            .await;
        assert_refused(&r, &up, 400, "invalid_request");
    }
}

#[tokio::test]
async fn several_tokens_in_one_authorization_header_are_400() {
    let (up, gw) = start().await;
    let both = format!("Bearer {}, Bearer {}", alice(), token("bob", json!({})));
    let r = gw.get("/app/x", &[("authorization", &both)]).await;
    assert_refused(&r, &up, 400, "invalid_request");
}

#[tokio::test]
async fn lower_case_bearer_scheme_is_accepted() {
    let (up, gw) = start().await;
    let auth = format!("bearer {}", alice());
    let r = gw.get("/app/x", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.only().headers["x-user-id"], "alice");
}

#[tokio::test]
async fn basic_scheme_on_a_required_route_is_401() {
    let (up, gw) = start().await;
    let r = gw
        .get("/app/x", &[("authorization", "Basic YWxpY2U6c2VjcmV0")])
        .await;
    assert_refused(&r, &up, 401, "invalid_token");
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer realm=\"authgate\", error=\"invalid_token\""
    );
}

// ---------------------------------------------------------------- claims -> headers

#[tokio::test]
async fn array_claims_are_joined_with_commas() {
    let (up, gw) = start().await;
    let r = gw
        .get_with_token("/app/x", &token("alice", json!({"roles": ["a", "b"]})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(all(&up.only(), "x-user-roles"), ["a,b"]);
}

#[tokio::test]
async fn nested_claims_are_reached_by_dot_path() {
    let (up, gw) = start().await;
    let r = gw
        .get_with_token(
            "/app/x",
            &token("alice", json!({"org": {"tenant": "acme"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(all(&up.only(), "x-tenant"), ["acme"]);
}

#[tokio::test]
async fn number_claims_are_rendered() {
    let (up, gw) = start().await;
    let r = gw
        .get_with_token("/app/x", &token("alice", json!({"level": 42})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(all(&up.only(), "x-level"), ["42"]);
}

#[tokio::test]
async fn missing_claim_leaves_the_header_absent_and_strips_client_copies() {
    let (up, gw) = start().await;
    let auth = bearer(&token("alice", json!({"roles": ["dev"]})));
    let r = gw
        .get(
            "/app/x",
            &[
                ("authorization", &auth),
                ("x-tenant", "spoof"),
                ("x_level", "9"),
                ("X-User-Roles", "admin"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert!(seen.headers.get("x-tenant").is_none(), "{:?}", seen.headers);
    assert!(seen.headers.get("x-level").is_none(), "{:?}", seen.headers);
    assert!(seen.headers.get("x_level").is_none(), "{:?}", seen.headers);
    assert_eq!(all(&seen, "x-user-roles"), ["dev"]);
    assert_eq!(all(&seen, "x-user-id"), ["alice"]);
}

#[tokio::test]
async fn claim_with_cr_lf_is_401() {
    let (up, gw) = start().await;
    let r = gw
        .get_with_token("/app/x", &token("alice\r\nX-Admin: 1", json!({})))
        .await;
    assert_refused(&r, &up, 401, "invalid_token");
}

#[tokio::test]
async fn claim_over_8_kib_is_401() {
    let (up, gw) = start().await;
    let r = gw
        .get_with_token("/app/x", &token(&"a".repeat(9000), json!({})))
        .await;
    assert_refused(&r, &up, 401, "invalid_token");
}

// ---------------------------------------------------------------- bodies

#[tokio::test]
async fn request_body_streams_to_the_upstream_and_back() {
    let (up, gw) = start().await;
    let body: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    let auth = bearer(&alice());
    let r = send(
        gw.addr(),
        "POST",
        "/app/echo-body",
        &[("authorization", &auth)],
        Bytes::from(body.clone()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/echo-body");
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert!(
        seen.body == body,
        "upstream got {} bytes, sent {}",
        seen.body.len(),
        body.len()
    );
    assert!(
        r.body == body,
        "client got {} bytes back, sent {}",
        r.body.len(),
        body.len()
    );
}

#[tokio::test]
async fn chunked_request_body_streams_to_the_upstream() {
    let (up, gw) = start().await;
    let request = format!(
        "POST /app/echo-body HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        alice()
    );
    let (status, text) = raw(gw.addr(), request.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let seen = up.only();
    assert_eq!(seen.target, "/echo-body");
    assert_eq!(&seen.body[..], b"hello world");
    assert!(text.contains("hello world"), "{text}");
}

#[tokio::test]
async fn large_upstream_response_arrives_whole() {
    let (up, gw) = start().await;
    let r = gw.get("/big", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.only().target, "/big");
    assert_eq!(r.body.len(), 1 << 20);
    assert!(r.body.iter().all(|&b| b == b'x'));
}

#[tokio::test]
async fn client_sent_forwarded_and_x_real_ip_are_not_passed_on() {
    let (up, gw) = start().await;
    let r = gw
        .get(
            "/public/x",
            &[
                ("forwarded", "for=10.0.0.1;proto=https;host=admin"),
                ("x-real-ip", "10.0.0.1"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.only();
    assert!(
        seen.headers.get("forwarded").is_none(),
        "{:?}",
        seen.headers
    );
    assert!(
        seen.headers.get("x-real-ip").is_none(),
        "{:?}",
        seen.headers
    );
}
