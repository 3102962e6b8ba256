//! Forward-auth end to end: real edge proxies — nginx (`auth_request`) and Caddy
//! (`forward_auth`), each started here on a free port with a generated config — in front of a
//! recording upstream, with authgate as their auth service; and Traefik's `forwardAuth` header
//! contract sent to the verify path directly (Traefik is not packaged for Debian).
//!
//! The edge configs below are the README's ("Forward-auth: plug into nginx, Traefik or
//! Caddy") with only the process-local parts added: pid, log and temp paths in a temp dir, a
//! loopback port, and a `/_edge/ready` location the harness polls.
mod common;
use common::*;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The gateway

/// The gateway config every test uses: public, read-only public docs (GET only), admin
/// (`allow`) and a forward-auth-only `app` route (no upstream, an ES256-signed assertion), all on the host `app.example.com`; users
/// alice (admin, dev; tenant acme) and bob (dev). `@TRUSTED@` is `forward_auth.trusted_proxies`.
const CONFIG: &str = r#"
listen: "127.0.0.1:0"
tokens:
  issuer: authgate
  audience: apps
  leeway: 0s
  keys:
    - { id: k1, algorithm: HS256, secret: "{SECRET}" }
    - { id: es1, algorithm: ES256, private_key_file: es256.pem }
login:
  users:
    - { username: alice, password_hash: "@ALICE@", claims: { roles: [admin, dev], tenant: acme } }
    - { username: bob, password_hash: "@BOB@", claims: { roles: [dev] } }
cookie: { secure: false }
forward_auth:
  path: /_authgate/verify
  trusted_proxies: @TRUSTED@
  next_hosts: ["*.example.com"]
upstreams:
  app: "{UPSTREAM}"
routes:
  - name: public
    match: { host: app.example.com, path_prefix: /public }
    upstream: app
    auth: none
  - name: docs
    match: { host: app.example.com, path_prefix: /docs, methods: [GET] }
    upstream: app
    auth: none
  - name: admin
    match: { host: app.example.com, path_prefix: /admin }
    upstream: app
    allow: { roles: admin }
    headers: { X-User-Id: sub, X-User-Roles: roles }
  - name: app
    match: { host: app.example.com, path_prefix: /app }
    headers: { X-User-Id: sub, X-User-Roles: roles, X-Tenant: tenant }
    assertion: { header: X-Authgate-Assertion, ttl: 60s }
"#;

async fn gateway(up: &Upstream, trusted: &str) -> Gateway {
    let (alice, bob) = user_hashes();
    let yaml = CONFIG
        .replace("@ALICE@", alice)
        .replace("@BOB@", bob)
        .replace("@TRUSTED@", trusted);
    let (private, _public) = keypair("ES256");
    Gateway::start_with_files(&yaml, &up.url(), &[("es256.pem", private.as_bytes())]).await
}

/// alice's token: roles admin and dev, no tenant claim.
fn alice() -> String {
    token("alice", json!({"roles": ["admin", "dev"]}))
}

/// bob's token: role dev only (not admin).
fn bob() -> String {
    token("bob", json!({"roles": ["dev"]}))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The `Accept` header of a browser navigation.
const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");

// ---------------------------------------------------------------------------------------------
// The edges

/// nginx: `auth_request` to authgate's verify path; the identity headers copied with
/// `auth_request_set`; a 401 carrying `Location` (a browser) turned into a 302 to the login
/// page; `/auth/` (login, logout) proxied to authgate with the Host kept. Lines marked
/// `# harness` and those with `@DIR@` or `@NONCE@` are this test's only; the rest is the
/// README's config, line for line (`the_readme_shows_the_tested_edge_configs`).
const NGINX_CONF: &str = r#"
daemon off;                                   # harness
master_process off;                           # harness
worker_processes 1;                           # harness
pid @DIR@/nginx.pid;
error_log @DIR@/error.log warn;
events { worker_connections 256; }            # harness
http {
    access_log @DIR@/access.log;
    client_body_temp_path @DIR@/client_body;
    proxy_temp_path @DIR@/proxy;
    fastcgi_temp_path @DIR@/fastcgi;
    uwsgi_temp_path @DIR@/uwsgi;
    scgi_temp_path @DIR@/scgi;

    upstream authgate { server @AUTHGATE@; keepalive 16; }
    upstream app      { server @APP@; }

    server {
        listen 127.0.0.1:@PORT@;              # harness
        absolute_redirect off;

        location = /_edge/ready { return 200 "@NONCE@"; }

        # Every request is checked by authgate first.
        location / {
            auth_request /_authgate/verify;
            auth_request_set $user          $upstream_http_x_user_id;
            auth_request_set $roles         $upstream_http_x_user_roles;
            auth_request_set $tenant        $upstream_http_x_tenant;
            auth_request_set $assertion     $upstream_http_x_authgate_assertion;
            auth_request_set $auth_location $upstream_http_location;
            error_page 401 = @login;

            # proxy_set_header replaces whatever the client sent (an empty value: not sent).
            proxy_set_header Host                 $http_host;
            proxy_set_header X-User-Id            $user;
            proxy_set_header X-User-Roles         $roles;
            proxy_set_header X-Tenant             $tenant;
            proxy_set_header X-Authgate-Assertion $assertion;
            proxy_set_header Authorization        "";
            proxy_pass http://app;
        }

        # The verify subrequest: the client's headers (Authorization, Cookie) and the
        # original request line; no body.
        location = /_authgate/verify {
            internal;
            proxy_pass http://authgate;
            proxy_method GET;
            proxy_pass_request_body off;
            proxy_http_version 1.1;           # keep-alive to authgate (with `keepalive`)
            proxy_set_header Connection        "";
            proxy_set_header Content-Length    "";
            proxy_set_header Host              $http_host;
            proxy_set_header X-Original-URI    $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-Proto $scheme;
        }

        # A 401 for a browser carries the login page in Location: send the browser there.
        location @login {
            if ($auth_location) {
                return 302 $auth_location;
            }
            return 401;
        }

        # The login page, login and logout.
        location /auth/ {
            proxy_pass http://authgate;
            proxy_set_header Host              $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
        }
    }
}
"#;

/// Caddy: `forward_auth` with `?mode=redirect` (authgate answers a browser with the 302
/// itself) and `copy_headers`, with the client's own identity headers dropped first: Caddy
/// 2.6 passes header names spelled with `_` or `.` on, and some Caddy versions do not
/// overwrite a copied header the auth answer leaves empty. Marked lines as for nginx.
const CADDYFILE: &str = r#"
{                                            # harness
	admin off                                # harness
	auto_https off                           # harness
}

http://:@PORT@ {                             # harness
	bind 127.0.0.1                           # harness

	handle /_edge/ready {                    # harness
		respond "@NONCE@" 200
	}

	# The login page, login and logout.
	handle /auth/* {
		reverse_proxy @AUTHGATE@
	}

	handle {
		route {
			# Identity headers come from authgate only: drop the client's, in every spelling.
			request_header -X-User-Id
			request_header -X-User-Roles
			request_header -X-Tenant
			request_header -X-Authgate-Assertion
			request_header -*_*
			request_header -*.*
			forward_auth @AUTHGATE@ {
				uri /_authgate/verify?mode=redirect
				copy_headers X-User-Id X-User-Roles X-Tenant X-Authgate-Assertion
			}
			# After the check: the token stays at the edge.
			request_header -Authorization
			reverse_proxy @APP@
		}
	}
}
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nginx,
    Caddy,
}

/// A running edge proxy of this test's own, killed when dropped.
struct Edge {
    kind: Kind,
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Edge {
    /// Starts `kind` on a free port in front of `app`, asking `authgate`; retries on another
    /// port when the one picked was taken meanwhile.
    async fn start(kind: Kind, authgate: SocketAddr, app: SocketAddr) -> Edge {
        let mut failures = String::new();
        for _ in 0..5 {
            match Edge::try_start(kind, authgate, app).await {
                Ok(edge) => return edge,
                Err(logs) => failures.push_str(&logs),
            }
        }
        panic!("{kind:?} did not start on any of 5 free ports:\n{failures}");
    }

    async fn try_start(kind: Kind, authgate: SocketAddr, app: SocketAddr) -> Result<Edge, String> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let nonce = format!("{:?}-{port}-{}", kind, now());
        let fill = |template: &str| {
            template
                .replace("@DIR@", dir.path().to_str().unwrap())
                .replace("@PORT@", &port.to_string())
                .replace("@AUTHGATE@", &authgate.to_string())
                .replace("@APP@", &app.to_string())
                .replace("@NONCE@", &nonce)
        };
        let log = std::fs::File::create(dir.path().join("output.log")).unwrap();
        let spawned = match kind {
            Kind::Nginx => {
                let conf = dir.path().join("nginx.conf");
                std::fs::write(&conf, fill(NGINX_CONF)).unwrap();
                let nginx = if Path::new("/usr/sbin/nginx").exists() {
                    "/usr/sbin/nginx"
                } else {
                    "nginx"
                };
                Command::new(nginx)
                    .arg("-e")
                    .arg(dir.path().join("error.log"))
                    .arg("-p")
                    .arg(dir.path())
                    .arg("-c")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
            }
            Kind::Caddy => {
                let file = dir.path().join("Caddyfile");
                std::fs::write(&file, fill(CADDYFILE)).unwrap();
                let home = dir.path().join("home");
                Command::new("caddy")
                    .args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(&file)
                    .env("HOME", &home)
                    .env("XDG_DATA_HOME", home.join("data"))
                    .env("XDG_CONFIG_HOME", home.join("config"))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
            }
        };
        let child = spawned.unwrap_or_else(|e| {
            panic!(
                "cannot run {kind:?} ({e}): tests/forward_auth.rs needs Debian's nginx and caddy; \
                 run ./scripts/test.sh, which installs them"
            )
        });
        let mut edge = Edge {
            kind,
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        // Ready when *this* process answers the readiness location with its nonce (another
        // server may have taken the port meanwhile: then ours exits).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if edge.child.try_wait().unwrap().is_some() {
                return Err(edge.logs());
            }
            if let Some(body) = probe(edge.addr).await
                && body == nonce
            {
                return Ok(edge);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("not ready within 10 s\n{}", edge.logs()))
    }

    /// What the edge logged (for failure messages).
    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["output.log", "error.log"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.path().join(name)) {
                out.push_str(&format!("--- {:?} {name}\n{text}\n", self.kind));
            }
        }
        out
    }
}

/// The body of `GET /_edge/ready`, when something answers on `addr`.
async fn probe(addr: SocketAddr) -> Option<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
    tokio::spawn(conn);
    let req = http::Request::get("/_edge/ready")
        .header("host", "ready.test")
        .body(http_body_util::Full::new(Bytes::new()))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(2), sender.send_request(req))
        .await
        .ok()?
        .ok()?;
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// The recording app, authgate, and an edge in front of both.
struct Stack {
    up: Upstream,
    gw: Gateway,
    edge: Edge,
}

impl Stack {
    /// A browser's form POST to the edge, from a page of `origin`.
    async fn post_form(&self, path: &str, origin: &str, form: &str) -> Reply {
        self.send(
            "POST",
            path,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", origin),
            ],
            form,
        )
        .await
    }

    async fn start(kind: Kind) -> Stack {
        Stack::start_trusting(kind, r#"["127.0.0.1/32"]"#).await
    }

    async fn start_trusting(kind: Kind, trusted: &str) -> Stack {
        let up = Upstream::start().await;
        let gw = gateway(&up, trusted).await;
        let edge = Edge::start(kind, gw.addr(), up.addr).await;
        Stack { up, gw, edge }
    }

    /// `app.example.com` on the edge's port: the Host a browser sends to the edge.
    fn host(&self) -> String {
        format!("app.example.com:{}", self.edge.addr.port())
    }

    /// The absolute URL of `path` on the edge, as a browser names it.
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host())
    }

    /// A request to the edge with Host `app.example.com:PORT` (unless given).
    async fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let host = self.host();
        let mut all = headers.to_vec();
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            all.push(("host", &host));
        }
        send(
            self.edge.addr,
            method,
            target,
            &all,
            Bytes::from(body.to_owned()),
        )
        .await
    }

    async fn get(&self, target: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", target, headers, "").await
    }

    /// The app's only request since the last clear (the edge forwarded exactly one).
    fn only(&self) -> Seen {
        let seen = self.up.only();
        self.up.clear();
        seen
    }

    /// Asserts the app got nothing.
    #[track_caller]
    fn untouched(&self, what: &str) {
        let seen = self.up.seen();
        assert!(
            seen.is_empty(),
            "{:?}: {what}: the app was reached: {seen:#?}\n{}",
            self.edge.kind,
            self.edge.logs()
        );
    }
}

/// Every value the app received for `name` in any spelling (case, `_` or `.` for `-`), the
/// way CGI-style backends fold them.
fn spellings(seen: &Seen, name: &str) -> Vec<String> {
    let canon = |s: &str| s.to_ascii_lowercase().replace(['_', '.'], "-");
    let want = canon(name);
    seen.headers
        .iter()
        .filter(|(n, _)| canon(n.as_str()) == want)
        .map(|(_, v)| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// The identity the app received under `name`: `Some(value)` for exactly one non-empty value,
/// `None` when it got none or only an empty one.
#[track_caller]
fn identity(seen: &Seen, name: &str) -> Option<String> {
    let values: Vec<String> = spellings(seen, name)
        .into_iter()
        .filter(|v| !v.is_empty())
        .collect();
    assert!(values.len() <= 1, "{name}: several values {values:?}");
    values.into_iter().next()
}

/// Headers a client forges to pass as someone else, in every spelling an edge might pass.
const SPOOFS: [(&str, &str); 7] = [
    ("x-user-id", "root"),
    ("x_user_id", "root"),
    ("x.user.id", "root"),
    ("X_User_Id", "root"),
    ("x-user-roles", "admin"),
    ("x-tenant", "evil"),
    ("x-authgate-assertion", "forged"),
];

// ---------------------------------------------------------------------------------------------
// The checks, each run against nginx and Caddy

/// A valid token passes with the identity headers at the app; forged identity headers never
/// reach it, on protected routes and on public ones.
async fn identity_reaches_the_app_and_forgeries_never_do(kind: Kind) {
    let s = Stack::start(kind).await;
    let auth = bearer(&alice());
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(&SPOOFS);

    let r = s.get("/app/orders?page=2", &headers).await;
    assert_eq!(r.status, 200, "{kind:?}: {}\n{}", r.text(), s.edge.logs());
    assert_eq!(r.text(), "upstream ok");
    let seen = s.only();
    assert_eq!(seen.target, "/app/orders?page=2");
    assert_eq!(identity(&seen, "x-user-id").as_deref(), Some("alice"));
    assert_eq!(
        identity(&seen, "x-user-roles").as_deref(),
        Some("admin,dev")
    );
    // The token has no tenant claim: the client's X-Tenant is overwritten, not kept.
    assert_eq!(identity(&seen, "x-tenant"), None, "{:?}", seen.headers);
    let assertion = identity(&seen, "x-authgate-assertion").expect("an assertion");
    assert_eq!(
        payload(&assertion)["sub"],
        "alice",
        "authgate's, not the client's"
    );
    assert!(
        seen.headers.get("authorization").is_none(),
        "the token stays at the edge"
    );

    let r = s.get("/admin/users", &headers).await;
    assert_eq!(r.status, 200, "{kind:?}: {}", r.text());
    let seen = s.only();
    assert_eq!(identity(&seen, "x-user-id").as_deref(), Some("alice"));
    // The admin route carries no assertion: a forged one is not passed on.
    assert_eq!(identity(&seen, "x-authgate-assertion"), None);

    // A public route injects nothing; the client's forgeries still never arrive.
    let r = s.get("/public/page", &SPOOFS).await;
    assert_eq!(r.status, 200, "{kind:?}: {}", r.text());
    let seen = s.only();
    for name in [
        "x-user-id",
        "x-user-roles",
        "x-tenant",
        "x-authgate-assertion",
    ] {
        assert_eq!(
            identity(&seen, name),
            None,
            "{kind:?}: {name} reached a public route: {:?}",
            seen.headers
        );
    }
}

/// 401 without or with a bad token (with the RFC 6750 challenge), 403 when `allow` fails or
/// no route takes the request; the app is never contacted.
async fn refusals_never_reach_the_app(kind: Kind) {
    let s = Stack::start(kind).await;
    let r = s.get("/app/x", &[("accept", "application/json")]).await;
    assert_eq!(r.status, 401, "{kind:?}: {}", r.text());
    assert!(
        r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm=\"authgate\""),
        "{:?}",
        r.headers
    );
    assert!(
        r.headers.get("location").is_none(),
        "an API call is not redirected"
    );

    let bad = bearer(&hs256(
        "not-the-secret-0123456789abcdef0123456789",
        Some("k1"),
        &claims("alice", json!({"roles": ["admin"]})),
    ));
    let r = s.get("/admin/x", &[("authorization", &bad)]).await;
    assert_eq!(r.status, 401, "{kind:?}: {}", r.text());
    let r = s
        .get("/admin/x", &[("authorization", "Bearer not.a.jwt")])
        .await;
    assert_eq!(r.status, 401, "{kind:?}: {}", r.text());

    // bob is not an admin.
    let auth = bearer(&bob());
    let r = s.get("/admin/x", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 403, "{kind:?}: {}", r.text());
    // No route: another path, another host.
    let r = s.get("/nowhere", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 403, "{kind:?}: {}", r.text());
    let other = format!("other.example.com:{}", s.edge.addr.port());
    let r = s.get("/public/x", &[("host", &other)]).await;
    assert_eq!(r.status, 403, "{kind:?}: {}", r.text());
    s.untouched("refused requests");

    // bob may use the app route (no `allow` there).
    let r = s.get("/app/x", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{kind:?}: {}", r.text());
    assert_eq!(identity(&s.only(), "x-user-id").as_deref(), Some("bob"));
}

/// The edge names the original request; a client's own `X-Forwarded-*` / `X-Original-*`
/// headers naming another one (a public path, another host, another method) are never believed.
async fn forged_original_request_headers_are_not_believed(kind: Kind) {
    let s = Stack::start(kind).await;
    let forgeries: [&[(&str, &str)]; 5] = [
        &[
            ("x-forwarded-uri", "/public/x"),
            ("x-forwarded-method", "GET"),
        ],
        &[("x-forwarded-uri", "/public/x")],
        &[
            ("x-original-uri", "/public/x"),
            ("x-original-method", "GET"),
        ],
        &[("x-original-uri", "/public/x")],
        &[
            ("x-forwarded-uri", "/public/x"),
            ("x-forwarded-host", "app.example.com"),
            ("x-original-uri", "/public/x"),
        ],
    ];
    for forged in forgeries {
        let r = s.get("/admin/secret", forged).await;
        assert!(
            r.status.is_client_error() || r.status.is_server_error(),
            "{kind:?}: {forged:?} let an anonymous client in: {}",
            r.status
        );
        s.untouched(&format!("{forged:?}"));
    }
    // The host: a public route on app.example.com must not open another host's site.
    let other = format!("other.example.com:{}", s.edge.addr.port());
    let r = s
        .get(
            "/public/x",
            &[("host", &other), ("x-forwarded-host", "app.example.com")],
        )
        .await;
    assert_eq!(r.status, 403, "{kind:?}: {}", r.text());
    // The method: `docs` is public for GET only; a DELETE passed off as a GET is refused.
    let r = s.get("/docs/x", &[]).await;
    assert_eq!(r.status, 200, "{kind:?}: {}", r.text());
    assert_eq!(s.only().method, "GET");
    for forged in ["x-forwarded-method", "x-original-method"] {
        let r = s.send("DELETE", "/docs/x", &[(forged, "GET")], "").await;
        assert!(r.status.as_u16() >= 400, "{kind:?}: {forged}: {}", r.status);
    }
    s.untouched("forged methods");
}

/// A browser without a session is sent to the login page, logs in through the edge and comes
/// back to the page it asked for; after logging out, the old session cookie is refused at the
/// edge.
async fn browser_login_round_trip_and_logout(kind: Kind) {
    let s = Stack::start(kind).await;
    let origin = format!("http://{}", s.host());

    // 1. The page, without a session: a 302 to the login page, the original URL in `next`.
    let r = s.get("/app/reports?month=3", &[HTML]).await;
    assert_eq!(r.status, 302, "{kind:?}: {}\n{}", r.text(), s.edge.logs());
    let location = r.headers["location"].to_str().unwrap().to_owned();
    let next = s.url("/app/reports?month=3");
    let expected = format!(
        "/auth/login?next={}",
        form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
    );
    assert_eq!(location, expected);
    s.untouched("before login");

    // 2. The login page, through the edge.
    let r = s.get(&location, &[HTML]).await;
    assert_eq!(r.status, 200, "{kind:?}: {}", r.text());
    assert!(
        r.text().contains(&format!("value=\"{next}\"")),
        "the form carries next: {}",
        r.text()
    );

    // 3. The form post, through the edge: 303 back to the original absolute URL.
    let form = form_body(&[
        ("username", "alice"),
        ("password", ALICE_PASSWORD),
        ("next", &next),
    ]);
    let r = s.post_form("/auth/login", &origin, &form).await;
    assert_eq!(r.status, 303, "{kind:?}: {}", r.text());
    assert_eq!(r.headers["location"], next.as_str());
    let cookie = format!("authgate_session={}", session_from(&r));

    // 4. Back to the page with the cookie: the app gets the request and who it is for.
    let back = next.strip_prefix(&origin).unwrap();
    let r = s.get(back, &[HTML, ("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{kind:?}: {}", r.text());
    let seen = s.only();
    assert_eq!(seen.target, "/app/reports?month=3");
    assert_eq!(identity(&seen, "x-user-id").as_deref(), Some("alice"));
    assert_eq!(identity(&seen, "x-tenant").as_deref(), Some("acme"));

    // `next` may name another host of the site (`forward_auth.next_hosts`), never a foreign one.
    for (next, lands) in [
        (
            "http://wiki.example.com/page",
            "http://wiki.example.com/page",
        ),
        ("https://evil.example/steal", "/"),
    ] {
        let form = form_body(&[
            ("username", "alice"),
            ("password", ALICE_PASSWORD),
            ("next", next),
        ]);
        let r = s.post_form("/auth/login", &origin, &form).await;
        assert_eq!(r.status, 303, "{kind:?}: {}", r.text());
        assert_eq!(r.headers["location"], lands, "next {next}");
    }

    // 5. Log out through the edge; the same cookie is refused at the edge afterwards.
    let r = s
        .send(
            "POST",
            "/auth/logout",
            &[("cookie", &cookie), ("origin", &origin)],
            "",
        )
        .await;
    assert_eq!(r.status, 303, "{kind:?}: {}", r.text());
    assert_eq!(r.headers["location"], "/auth/login");
    let r = s.get(back, &[HTML, ("cookie", &cookie)]).await;
    assert_eq!(r.status, 302, "{kind:?}: a revoked session: {}", r.text());
    assert!(
        r.headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/auth/login?next=")
    );
    let r = s.get(back, &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 401, "{kind:?}: {}", r.text());
    s.untouched("a revoked session");
}

/// The edge's decision on odd paths is exactly authgate's own in proxy mode (same config, same
/// gateway): the same normalization, route and refusal. Proxy mode's 404 (no route) is
/// forward-auth's 403; a path authgate refuses as malformed (400) is refused by the edge too
/// (nginx turns any unexpected auth status into a 500).
async fn paths_are_decided_as_in_proxy_mode(kind: Kind) {
    let s = Stack::start(kind).await;
    let paths = [
        "/public/x",
        "/public/./x",
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/%2E%2E/admin",
        "/public/x;y/../../admin",
        "/admin;x",
        "/admin;jsessionid=1/x",
        "/%61dmin/x",
        "//admin/x",
        "/ADMIN/x",
        "/administrator",
        "/public/..;/admin",
        "/public%2f../admin",
        "/public/%2e%2e%2fadmin",
        "/admin%3Bx",
    ];
    let tokens = [
        ("nobody", None),
        ("bob", Some(bob())),
        ("alice", Some(alice())),
    ];
    for (who, token) in &tokens {
        for path in paths {
            let auth = token
                .as_ref()
                .map(|t| format!("authorization: Bearer {t}\r\n"));
            let raw_request = |host: &str| {
                format!(
                    "GET {path} HTTP/1.1\r\nhost: {host}\r\n{}connection: close\r\n\r\n",
                    auth.as_deref().unwrap_or("")
                )
            };
            let (edge, text) = raw(s.edge.addr, raw_request(&s.host()).as_bytes()).await;
            let reached = !s.up.seen().is_empty();
            s.up.clear();
            let (proxy, _) = raw(s.gw.addr(), raw_request("app.example.com").as_bytes()).await;
            s.up.clear();
            let case = format!("{kind:?} {who} {path}: proxy {proxy}, edge {edge}");
            match proxy {
                200 => assert!(edge == 200 && reached, "{case}\n{text}"),
                401 | 403 => assert!(edge == proxy && !reached, "{case}\n{text}"),
                404 => assert!(edge == 403 && !reached, "{case}\n{text}"),
                400 => {
                    let expected = if kind == Kind::Nginx { 500 } else { 400 };
                    assert!(edge == expected && !reached, "{case}\n{text}");
                }
                other => panic!("{case}: unexpected proxy-mode status {other}"),
            }
        }
    }
}

/// Only `forward_auth.trusted_proxies` may ask: an edge outside them is refused (403), and so
/// is anyone else calling the verify path.
async fn an_untrusted_caller_is_refused(kind: Kind) {
    let s = Stack::start_trusting(kind, r#"["10.0.0.0/8", "192.0.2.1"]"#).await;
    let auth = bearer(&alice());
    let r = s.get("/app/x", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 403, "{kind:?}: {}", r.text());
    let r = s.get("/public/x", &[]).await;
    assert_eq!(r.status, 403, "{kind:?}: {}", r.text());
    s.untouched("an untrusted edge");

    let r = send(
        s.gw.addr(),
        "GET",
        "/_authgate/verify",
        &[
            ("authorization", &auth),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-host", "app.example.com"),
            ("x-forwarded-uri", "/app/x"),
        ],
        Bytes::new(),
    )
    .await;
    r.assert_error(403, "forbidden", "may not ask");
}

/// The signed assertion the edge copies verifies against the gateway's published JWKS with
/// `jsonwebtoken`: ES256, `aud` = the route's name, the route's claims inside, short-lived.
async fn the_assertion_verifies_against_the_published_jwks(kind: Kind) {
    let s = Stack::start(kind).await;
    let auth = bearer(&token(
        "alice",
        json!({"roles": ["admin", "dev"], "tenant": "acme"}),
    ));
    let r = s.get("/app/x", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{kind:?}: {}", r.text());
    let seen = s.only();
    let assertion = identity(&seen, "x-authgate-assertion").expect("an assertion");

    let jwks = s.gw.get("/.well-known/jwks.json", &[]).await;
    assert_eq!(jwks.status, 200);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks.body).unwrap();
    let header = jsonwebtoken::decode_header(&assertion).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some("es1"));
    let jwk = set.find("es1").expect("the signing key is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["app"]);
    validation.set_issuer(&["authgate"]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(&assertion, &key, &validation)
        .expect("the assertion verifies against the JWKS")
        .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], json!(["admin", "dev"]));
    assert_eq!(claims["tenant"], "acme");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(exp > now() && exp - iat <= 60, "ttl 60s: {claims}");

    // Meant for the route `app` only: another audience refuses it.
    let mut other = validation.clone();
    other.set_audience(&["admin"]);
    assert!(jsonwebtoken::decode::<Value>(&assertion, &key, &other).is_err());
    // And it is authgate's signature, not the HS256 login key's.
    assert!(
        set.find("k1").is_none(),
        "a symmetric key is never published"
    );
}

/// The README's nginx and Caddy configs are the ones tested here: every line of
/// [`NGINX_CONF`] and [`CADDYFILE`] but the harness's is in the README's forward-auth section
/// (with authgate at 127.0.0.1:8080 and the app at 127.0.0.1:3000).
#[test]
fn the_readme_shows_the_tested_edge_configs() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("\n## Forward-auth: plug into nginx, Traefik or Caddy\n")
        .nth(1)
        .expect("the README's forward-auth section")
        .split("\n## ")
        .next()
        .unwrap();
    let shown: HashSet<&str> = section.lines().map(str::trim).collect();
    for (edge, config) in [("nginx", NGINX_CONF), ("Caddy", CADDYFILE)] {
        for line in config.lines().map(str::trim) {
            let harness = ["# harness", "@DIR@", "@NONCE@"];
            if line.is_empty() || harness.iter().any(|m| line.contains(m)) {
                continue;
            }
            let line = line
                .replace("@AUTHGATE@", "127.0.0.1:8080")
                .replace("@APP@", "127.0.0.1:3000");
            assert!(
                shown.contains(line.as_str()),
                "the README's {edge} config lacks {line:?}"
            );
        }
    }
}

macro_rules! on_each_edge {
    ($($check:ident),* $(,)?) => {
        mod nginx {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::Kind::Nginx).await;
                }
            )*
        }
        mod caddy {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::Kind::Caddy).await;
                }
            )*
        }
    };
}

on_each_edge!(
    identity_reaches_the_app_and_forgeries_never_do,
    refusals_never_reach_the_app,
    forged_original_request_headers_are_not_believed,
    browser_login_round_trip_and_logout,
    paths_are_decided_as_in_proxy_mode,
    an_untrusted_caller_is_refused,
    the_assertion_verifies_against_the_published_jwks,
);

// ---------------------------------------------------------------------------------------------
// Traefik's forwardAuth contract, against the verify path directly

/// What Traefik's forwardAuth sends for a client request (`trustForwardHeader: false`): a GET
/// to the address, the client's headers, and its own `X-Forwarded-*` naming the original
/// request. The Host is the auth service's address.
async fn traefik(
    gw: &Gateway,
    query: &str,
    method: &str,
    uri: &str,
    client: &[(&str, &str)],
) -> Reply {
    let mut headers = vec![
        ("x-forwarded-method", method),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example.com"),
        ("x-forwarded-uri", uri),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-server", "traefik-1"),
        ("x-real-ip", "203.0.113.7"),
        ("user-agent", "Mozilla/5.0"),
    ];
    headers.extend_from_slice(client);
    let target = format!("/_authgate/verify{query}");
    send(gw.addr(), "GET", &target, &headers, Bytes::new()).await
}

/// The headers Traefik copies with `authResponseHeaders` in the README's labels.
const AUTH_RESPONSE_HEADERS: [&str; 4] = [
    "x-user-id",
    "x-user-roles",
    "x-tenant",
    "x-authgate-assertion",
];

#[tokio::test]
async fn traefik_allowed_requests_get_every_identity_header() {
    let up = Upstream::start().await;
    let gw = gateway(&up, r#"["127.0.0.1/32"]"#).await;
    let auth = bearer(&alice());
    let mut client = vec![("authorization", auth.as_str())];
    client.extend_from_slice(&SPOOFS);
    let r = traefik(&gw, "", "GET", "/app/orders?page=2", &client).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-user-id"], "alice");
    assert_eq!(r.headers["x-user-roles"], "admin,dev");
    // No tenant claim: present and empty, so Traefik's copy replaces the client's X-Tenant.
    assert_eq!(r.headers["x-tenant"], "");
    let assertion = r.headers["x-authgate-assertion"].to_str().unwrap();
    assert_eq!(payload(assertion)["aud"], "app");
    for name in AUTH_RESPONSE_HEADERS {
        assert_eq!(r.headers.get_all(name).iter().count(), 1, "{name} once");
    }

    // A public route injects nothing of its own, yet every identity header any route injects
    // is present (empty), so whatever the edge copies overwrites the client's.
    let r = traefik(&gw, "", "GET", "/public/x", &SPOOFS).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for name in AUTH_RESPONSE_HEADERS {
        assert_eq!(r.headers[name], "", "{name}");
    }
    // Nothing is forwarded in forward-auth mode.
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn traefik_refusals_and_the_login_redirect() {
    let up = Upstream::start().await;
    let gw = gateway(&up, r#"["127.0.0.1/32"]"#).await;

    // An API call without a token: 401 with the challenge, no redirect.
    let r = traefik(&gw, "", "GET", "/app/x", &[("accept", "application/json")]).await;
    r.assert_error(401, "invalid_token", "no token");
    assert!(r.headers.contains_key("www-authenticate"));
    assert!(!r.headers.contains_key("location"));
    // Even with ?mode=redirect: only browser navigations are redirected.
    let r = traefik(&gw, "?mode=redirect", "GET", "/app/x", &[]).await;
    assert_eq!(r.status, 401);

    // A browser navigation: 401 + Location by default, the 302 itself with ?mode=redirect;
    // `next` is the absolute URL the browser asked for (scheme and host from the edge).
    let next = "/auth/login?next=https%3A%2F%2Fapp.example.com%2Fapp%2Fx%3Fq%3D1";
    let r = traefik(&gw, "", "GET", "/app/x?q=1", &[HTML]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["location"], next);
    let r = traefik(&gw, "?mode=redirect", "GET", "/app/x?q=1", &[HTML]).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.headers["location"], next);
    assert!(r.headers.contains_key("www-authenticate"));
    // A POST is no navigation, even accepting HTML.
    let r = traefik(&gw, "?mode=redirect", "POST", "/app/x", &[HTML]).await;
    assert_eq!(r.status, 401);

    // A bad token, an admin route without the role, no route at all.
    let r = traefik(
        &gw,
        "",
        "GET",
        "/admin/x",
        &[("authorization", "Bearer x.y.z")],
    )
    .await;
    assert_eq!(r.status, 401);
    let auth = bearer(&bob());
    let r = traefik(&gw, "", "GET", "/admin/x", &[("authorization", &auth)]).await;
    r.assert_error(403, "insufficient_scope", "roles");
    let r = traefik(&gw, "", "GET", "/nowhere", &[("authorization", &auth)]).await;
    r.assert_error(403, "forbidden", "no route");
    // Normalized like a proxied request: /public/%2e%2e/admin is /admin.
    let r = traefik(
        &gw,
        "",
        "GET",
        "/public/%2e%2e/admin/x",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = traefik(&gw, "", "GET", "/public/%2e%2e/admin/x", &[]).await;
    assert_eq!(r.status, 401);

    // A client's X-Original-* beside Traefik's X-Forwarded-*: refused, never believed.
    let r = traefik(
        &gw,
        "",
        "GET",
        "/admin/x",
        &[
            ("x-original-uri", "/public/x"),
            ("x-original-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());

    // A revoked session is refused.
    let login = json_login(&gw, "alice", ALICE_PASSWORD, &[]).await;
    assert_eq!(login.status, 200, "{}", login.text());
    let cookie = format!("authgate_session={}", session_from(&login));
    let r = traefik(&gw, "", "GET", "/app/x", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(
        gw.addr(),
        "POST",
        "/auth/logout",
        &[("cookie", &cookie)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let r = traefik(&gw, "", "GET", "/app/x", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn traefik_from_an_untrusted_address_is_refused() {
    let up = Upstream::start().await;
    let gw = gateway(&up, r#"["172.16.0.0/12"]"#).await;
    let auth = bearer(&alice());
    let r = traefik(&gw, "", "GET", "/app/x", &[("authorization", &auth)]).await;
    r.assert_error(403, "forbidden", "may not ask");
    assert!(!r.headers.contains_key("x-user-id"));
}
