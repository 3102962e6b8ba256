//! A real OpenID Provider and a small HTTP browser, shared by tests/oidc_module.rs (the
//! relying-party module on its own) and tests/sso.rs (single sign-on through the gateway).
//!
//! [`Op`] runs tests/node/oidc-provider.js (panva's certified `oidc-provider`, installed in
//! tests/node by ./scripts/test.sh; without node or it these tests fail, they never skip).
//! [`Browser`] is reqwest without automatic redirects and with a cookie jar of its own, kept
//! per origin (host and port): it follows redirects one step at a time and fills in the
//! provider's login form.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use reqwest::Url;
use serde_json::{Value, json};

pub const NODE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");

/// The `Accept` header of a browser navigation.
pub const NAVIGATION_ACCEPT: &str = "text/html,application/xhtml+xml,*/*;q=0.8";

/// Panics, telling how to fix it, unless `node` runs and oidc-provider is installed.
pub fn require_node() {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`node --version` failed ({}): these tests need Node.js and npm; install them, \
             then run ./scripts/test.sh, which installs oidc-provider",
            out.status
        ),
        Err(e) => panic!(
            "cannot run `node` ({e}): these tests need Node.js and npm on PATH; install them, \
             then run ./scripts/test.sh, which installs oidc-provider"
        ),
    }
    let package = Path::new(NODE_DIR).join("node_modules/oidc-provider/package.json");
    assert!(
        package.is_file(),
        "{} is missing: run ./scripts/test.sh, which installs oidc-provider (npm ci in \
         tests/node) for these tests",
        package.display()
    );
}

/// One running tests/node/oidc-provider.js. Dropping it closes its stdin (it exits) and
/// kills it to be sure.
pub struct Op {
    pub child: Child,
    pub issuer: String,
    hooks: reqwest::Client,
}

impl Drop for Op {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Op {
    /// Starts the provider with this config (see the header of tests/node/oidc-provider.js)
    /// and waits for its ready line. A start that prints nothing within 30 s (node wedged
    /// under load, seen once) is killed and tried once more, so the test fails or passes on
    /// its own merits instead of hanging the suite.
    pub fn start(config: Value) -> Op {
        require_node();
        match Op::try_start(&config) {
            Ok(op) => op,
            Err(first) => {
                eprintln!("oidc-provider.js: {first}; starting it once more");
                Op::try_start(&config)
                    .unwrap_or_else(|e| panic!("oidc-provider.js did not start: {e} (see stderr)"))
            }
        }
    }

    fn try_start(config: &Value) -> Result<Op, String> {
        let mut child = Command::new("node")
            .arg(Path::new(NODE_DIR).join("oidc-provider.js"))
            .arg(config.to_string())
            .current_dir(NODE_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run tests/node/oidc-provider.js ({e})"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(read.map(|_| line));
        });
        let ready = match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(Ok(line)) => serde_json::from_str::<Value>(&line)
                .map_err(|e| format!("its first line is not the ready line ({e}): {line:?}")),
            Ok(Err(e)) => Err(format!("cannot read its ready line: {e}")),
            Err(_) => Err("no ready line within 30 s".into()),
        };
        let ready = match ready {
            Ok(ready) => ready,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Op {
            child,
            issuer: ready["issuer"].as_str().expect("issuer").to_owned(),
            hooks: reqwest::Client::new(),
        })
    }

    pub async fn hook(&self, name: &str, body: Value) -> Value {
        let url = format!("{}/__test/{name}", self.issuer);
        let req = if body.is_null() {
            self.hooks.get(url)
        } else {
            self.hooks.post(url).body(body.to_string())
        };
        let resp = req.send().await.expect("test hook");
        assert!(resp.status().is_success(), "hook {name}: {}", resp.status());
        serde_json::from_str(&resp.text().await.expect("hook answer")).expect("hook json")
    }

    /// A new signing key replaces the old one: `{"kid": new, "previous": old}`.
    pub async fn rotate(&self) -> Value {
        self.hook("rotate", json!({})).await
    }

    /// The next login form submission ends with `error=access_denied`.
    pub async fn deny_next(&self) {
        self.hook("deny-next", json!({})).await;
    }

    /// The next ID token gets these claims changed (`{"set": {...}, "unset": [...]}`).
    pub async fn next_id_token(&self, change: Value) {
        self.hook("next-id-token", change).await;
    }

    pub async fn last_token_request(&self) -> Value {
        self.hook("last-token-request", Value::Null).await
    }

    pub async fn jwks_fetches(&self) -> u64 {
        self.hook("jwks-fetches", Value::Null).await["count"]
            .as_u64()
            .expect("count")
    }

    /// The key ids the provider's JWKS publishes now.
    pub async fn kids(&self) -> Vec<String> {
        let resp = self.hooks.get(format!("{}/jwks", self.issuer)).send().await;
        let text = resp.expect("jwks").text().await.expect("jwks body");
        let jwks: Value = serde_json::from_str(&text).expect("jwks json");
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect()
    }
}

/// One stored cookie: the origin it came from, its path, name and value.
#[derive(Debug, Clone)]
pub struct StoredCookie {
    pub origin: String,
    pub path: String,
    pub name: String,
    pub value: String,
}

/// A minimal browser. Cookies are kept per origin (host and port): a gateway and a provider
/// here differ only by port, as they would by host in real life.
pub struct Browser {
    http: reqwest::Client,
    pub jar: Vec<StoredCookie>,
    /// Behave like a browser navigating (see [`Browser::navigating`]).
    navigating: bool,
}

pub enum Step {
    Get(Url),
    Post(Url, Vec<(String, String)>),
}

/// One response as the browser got it.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    /// The URL requested.
    pub url: Url,
    /// `Location`, resolved against `url`.
    pub location: Option<Url>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    /// Every `Set-Cookie` value of the response.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().expect("ascii set-cookie").to_owned())
            .collect()
    }

    /// Whether the response sets (not clears) a cookie named `name`.
    pub fn sets_cookie(&self, name: &str) -> bool {
        self.set_cookies().iter().any(|c| {
            c.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .is_some_and(|rest| !rest.starts_with(';') && !rest.is_empty())
        })
    }

    /// Whether this is the provider's login form (tests/node/oidc-provider.js's
    /// `/interaction/:uid` page).
    pub fn is_provider_login_form(&self) -> bool {
        self.status == 200
            && self.url.path().starts_with("/interaction/")
            && self.body.contains("name=\"password\"")
    }

    /// `path?query` of the requested URL.
    pub fn target(&self) -> String {
        match self.url.query() {
            Some(q) => format!("{}?{q}", self.url.path()),
            None => self.url.path().to_owned(),
        }
    }
}

impl Browser {
    /// A plain HTTP client with a cookie jar (no `Accept`, no `Origin`), as the relying-party
    /// module's tests use it.
    pub fn new() -> Browser {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Browser {
            http,
            jar: Vec::new(),
            navigating: false,
        }
    }

    /// A browser navigating: every request accepts HTML ([`NAVIGATION_ACCEPT`]), and form
    /// posts carry an `Origin` (the forms here always post to their own origin).
    pub fn navigating() -> Browser {
        Browser {
            navigating: true,
            ..Browser::new()
        }
    }

    pub fn origin(url: &Url) -> String {
        format!(
            "{}:{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        )
    }

    /// The `Cookie` header this browser sends to `url`.
    pub fn cookie_header(&self, url: &Url) -> Option<String> {
        let origin = Self::origin(url);
        let pairs: Vec<String> = self
            .jar
            .iter()
            .filter(|c| c.origin == origin && path_matches(url.path(), &c.path))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    /// The value of the cookie `name` sent to `url`, if any.
    pub fn cookie(&self, url: &Url, name: &str) -> Option<String> {
        let origin = Self::origin(url);
        self.jar
            .iter()
            .find(|c| c.origin == origin && c.name == name && path_matches(url.path(), &c.path))
            .map(|c| c.value.clone())
    }

    fn store(&mut self, url: &Url, headers: &reqwest::header::HeaderMap) {
        for value in headers.get_all(reqwest::header::SET_COOKIE) {
            let text = value.to_str().expect("ascii set-cookie");
            let mut parts = text.split(';').map(str::trim);
            let (name, value) = parts.next().and_then(|p| p.split_once('=')).expect("pair");
            let (mut path, mut delete) = ("/".to_owned(), false);
            for attr in parts {
                let lower = attr.to_ascii_lowercase();
                if lower.starts_with("path=") {
                    path = attr[5..].to_owned();
                }
                delete |= lower == "max-age=0"
                    || (lower.starts_with("expires=") && lower.contains("1970"));
            }
            let origin = Self::origin(url);
            self.jar
                .retain(|c| !(c.origin == origin && c.path == path && c.name == name));
            if !delete {
                self.jar.push(StoredCookie {
                    origin,
                    path,
                    name: name.to_owned(),
                    value: value.to_owned(),
                });
            }
        }
    }

    /// One request, the response read whole and its cookies stored.
    pub async fn fetch(&mut self, step: Step) -> Page {
        let (url, builder) = match step {
            Step::Get(url) => (url.clone(), self.http.get(url)),
            Step::Post(url, form) => {
                let body = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish();
                let mut b = self
                    .http
                    .post(url.clone())
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body);
                if self.navigating {
                    b = b.header("origin", url.origin().ascii_serialization());
                }
                (url, b)
            }
        };
        let builder = match self.cookie_header(&url) {
            Some(c) => builder.header("cookie", c),
            None => builder,
        };
        let builder = if self.navigating {
            builder.header("accept", NAVIGATION_ACCEPT)
        } else {
            builder
        };
        let resp = builder
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {url}: {e}"));
        self.store(&url, resp.headers());
        let status = resp.status().as_u16();
        let location = resp.headers().get("location").map(|l| {
            url.join(l.to_str().expect("location"))
                .expect("location url")
        });
        let headers = resp.headers().clone();
        let body = resp.text().await.expect("body");
        Page {
            status,
            url,
            location,
            headers,
            body,
        }
    }

    /// One request; returns status, the URL requested, `Location` (resolved) and body.
    pub async fn request(&mut self, step: Step) -> (u16, Url, Option<Url>, String) {
        let page = self.fetch(step).await;
        (page.status, page.url, page.location, page.body)
    }

    /// Follows the authorization request through the provider's login form until it
    /// redirects to `redirect_url`; returns that redirect's query (the redirect itself is
    /// not followed).
    pub async fn login(
        &mut self,
        authorize_url: &str,
        user: &str,
        password: &str,
        redirect_url: &str,
    ) -> String {
        let mut step = Step::Get(Url::parse(authorize_url).expect("authorize url"));
        for _ in 0..20 {
            let (status, url, location, body) = self.request(step).await;
            if let Some(location) = location {
                if location.as_str().starts_with(redirect_url) {
                    return location.query().unwrap_or("").to_owned();
                }
                step = Step::Get(location);
                continue;
            }
            assert!(
                status == 200 && body.contains("name=\"password\""),
                "expected the provider's login form at {url}, got {status}: {body}"
            );
            let action = url.join(&form_action(&body)).expect("form action");
            let form = vec![
                ("username".to_owned(), user.to_owned()),
                ("password".to_owned(), password.to_owned()),
            ];
            step = Step::Post(action, form);
        }
        panic!("no redirect to {redirect_url} after 20 steps");
    }

    /// Navigates to `url` as a browser would: follows every redirect and, given `user`
    /// (username, password), signs in at the provider's login form when it shows. Returns
    /// every response on the way; the last is the first that is neither a redirect nor a
    /// login form it filled in.
    pub async fn browse(&mut self, url: &Url, user: Option<(&str, &str)>) -> Vec<Page> {
        let mut pages: Vec<Page> = Vec::new();
        let mut step = Step::Get(url.clone());
        for _ in 0..30 {
            let page = self.fetch(step).await;
            let next = if let Some(location) = &page.location {
                Step::Get(location.clone())
            } else if let (true, Some((name, password))) = (page.is_provider_login_form(), user) {
                let action = page.url.join(&form_action(&page.body)).expect("action");
                let form = vec![
                    ("username".to_owned(), name.to_owned()),
                    ("password".to_owned(), password.to_owned()),
                ];
                Step::Post(action, form)
            } else {
                pages.push(page);
                return pages;
            };
            pages.push(page);
            step = next;
        }
        panic!("still redirected after 30 steps: {:#?}", summary(&pages));
    }
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

/// `status URL -> Location` of each page, for failure messages.
pub fn summary(pages: &[Page]) -> Vec<String> {
    pages
        .iter()
        .map(|p| match &p.location {
            Some(l) => format!("{} {} -> {l}", p.status, p.url),
            None => format!("{} {}", p.status, p.url),
        })
        .collect()
}

pub fn path_matches(request: &str, cookie: &str) -> bool {
    request == cookie
        || (request.starts_with(cookie)
            && (cookie.ends_with('/') || request[cookie.len()..].starts_with('/')))
}

/// The value of `name="..."` in an HTML tag, unescaping `&amp;`.
pub fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].replace("&amp;", "&"))
}

pub fn form_action(body: &str) -> String {
    let form = &body[body.find("<form").expect("a form")..];
    attribute(&form[..form.find('>').expect("form tag")], "action").expect("form action")
}

/// Hidden inputs of the first form.
pub fn hidden_inputs(body: &str) -> Vec<(String, String)> {
    let form = &body[body.find("<form").expect("a form")..];
    let form = &form[..form.find("</form>").expect("form end")];
    form.split("<input")
        .skip(1)
        .filter_map(|tag| Some((attribute(tag, "name")?, attribute(tag, "value")?)))
        .collect()
}

pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub fn with_param(query: &str, name: &str, value: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form_urlencoded::parse(query.as_bytes()).map(|(k, v)| {
            if k == name {
                (k, value.to_owned().into())
            } else {
                (k, v)
            }
        }))
        .finish()
}
