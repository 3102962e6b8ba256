mod common;
use common::browser::{require_browser, run_browser_js};
use common::*;

// A real browser (Debian's Chromium, driven by playwright-core from tests/node/browser.js)
// goes through the login flow against the real gateway and a small HTML app behind it:
// protected page → login page → wrong password → right password → back on the page asked
// for → the app's logout button → login page. Chromium comes from Debian's `chromium` package
// and playwright-core from tests/node; ./scripts/test.sh installs both. Without them this
// test fails, saying so; it never skips.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const SCREENSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/login-page.png");
/// Must match `PASSWORD` in tests/node/browser.js.
const PASSWORD: &str = "correct horse battery staple";

/// One request as the app received it.
#[derive(Debug, Clone)]
struct AppRequest {
    method: String,
    target: String,
    headers: HeaderMap,
}

/// A legacy web app with no authentication of its own: GET /app/dashboard shows who the
/// gateway says is signed in (`X-User-Id`) and a logout form. Records every request.
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<AppRequest>>>,
}

impl App {
    async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<AppRequest>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        async move { Ok::<_, std::convert::Infallible>(app_page(&req, &record)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        App { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<AppRequest> {
        self.seen.lock().unwrap().clone()
    }
}

fn app_page(req: &Request<Incoming>, record: &Mutex<Vec<AppRequest>>) -> Response<Full<Bytes>> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    record.lock().unwrap().push(AppRequest {
        method: req.method().to_string(),
        target,
        headers: req.headers().clone(),
    });
    if req.method() != http::Method::GET || req.uri().path() != "/app/dashboard" {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"not found")));
        *resp.status_mut() = http::StatusCode::NOT_FOUND;
        return resp;
    }
    let user = req
        .headers()
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nobody");
    let user = authgate::login::page::escape(user);
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Dashboard</title></head>\n\
         <body><h1>Dashboard</h1><p id=\"who\">signed in as {user}</p>\n\
         <form method=\"post\" action=\"/auth/logout\"><button>Log out</button></form>\n\
         </body></html>\n"
    );
    let mut resp = Response::new(Full::new(Bytes::from(html)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "text/html; charset=utf-8".parse().unwrap(),
    );
    resp
}

/// Plain http on 127.0.0.1 (so `secure: false`), one login user, one protected app route.
const CONFIG: &str = r#"
listen: "127.0.0.1:0"
tokens:
  keys:
    - { id: k1, algorithm: HS256, secret: "{SECRET}" }
login:
  users:
    - username: alice
      password_hash: "{HASH}"
      claims: { roles: [admin] }
cookie: { secure: false }
upstreams:
  app: "{UPSTREAM}"
routes:
  - name: app
    match: { path_prefix: /app }
    upstream: app
    headers: { X-User-Id: sub }
"#;

#[tokio::test]
async fn a_browser_logs_in_uses_the_app_and_logs_out() {
    require_browser();
    let app = App::start().await;
    let hash = authgate::login::hash_password(PASSWORD).unwrap();
    let gw = Gateway::start(&CONFIG.replace("{HASH}", &hash), &app.url()).await;
    let base = format!("http://127.0.0.1:{}", gw.addr().port());
    let screenshot = Path::new(SCREENSHOT);
    let _ = std::fs::remove_file(screenshot);
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();

    let started = Instant::now();
    let (ok, stdout, stderr) = run_browser_js(&[&base, &screenshot.display().to_string()]).await;
    assert!(
        ok,
        "node tests/node/browser.js {base} {} failed:\n{stderr}\nstdout: {stdout}",
        screenshot.display()
    );
    eprintln!(
        "browser flow took {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        stdout.trim()
    );

    // The app saw the signed-in page load, with the identity the gateway injected, and nothing
    // of the credentials: no token, no session cookie. Unauthenticated requests (before login,
    // after logout) never reached it.
    let seen = app.seen();
    assert_eq!(seen.len(), 1, "the app should see one request: {seen:#?}");
    let dashboard = &seen[0];
    assert_eq!(
        (dashboard.method.as_str(), dashboard.target.as_str()),
        ("GET", "/app/dashboard?tab=1")
    );
    for req in &seen {
        assert_eq!(
            req.headers.get("x-user-id").map(|v| v.as_bytes()),
            Some(&b"alice"[..]),
            "{req:#?}"
        );
        assert!(req.headers.get("authorization").is_none(), "{req:#?}");
        let leaked = req
            .headers
            .get_all("cookie")
            .iter()
            .any(|v| String::from_utf8_lossy(v.as_bytes()).contains("authgate_session"));
        assert!(!leaked, "the session cookie reached the app: {req:#?}");
    }

    // A full-page screenshot of the login page: a real PNG of a real page.
    let png = std::fs::read(screenshot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(&png[12..16], b"IHDR", "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(
        width >= 800 && height >= 400,
        "screenshot is only {width}x{height}"
    );
    assert!(
        png.len() > 5_000,
        "screenshot is only {} bytes: a blank page?",
        png.len()
    );
}
