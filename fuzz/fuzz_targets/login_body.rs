//! The browser-login surface that is reachable through the public API. The login body parser
//! itself (`login::parse_credentials`, JSON and form) is private and only reachable through
//! `Login::handle`, which needs a hyper `Incoming` body from a live connection, so it is covered
//! by the end-to-end tests (tests/login.rs, tests/browser_flow.rs), not here. This target
//! fuzzes what a hostile browser request controls around it:
//!
//! - `session::safe_next` (the redirect after login): `/` or its input, and a same-origin path;
//! - `session::same_origin` with arbitrary `Origin`/`Referer`/`Host` values (the CSRF check of
//!   the login and logout forms): it may only pass a request whose source names the host;
//! - `credentials::token` and `session::strip_session_cookie` with arbitrary `Cookie` and
//!   `Authorization` headers: never two tokens, and no session cookie left to forward;
//! - `login_page::render`: user-controlled `next` and `username` stay inside their attributes.
#![no_main]

use authgate::credentials::{TokenSource, token};
use authgate::login_page::{PageState, escape, render};
use authgate::session::{safe_next, same_origin, session_cookie, strip_session_cookie};
use http::header::{AUTHORIZATION, COOKIE, HeaderMap, HeaderValue, ORIGIN, REFERER};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const COOKIE_NAME: &str = "authgate_session";

/// A template shaped like the built-in page: both user values inside quoted attributes.
const TEMPLATE: &str = r#"<form method="post" action="{{action}}"><input type="hidden" name="next" value="{{next}}"><input name="username" value="{{username}}">{{error}}</form>"#;
const ERROR: &str = "Wrong username or password.";

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    next: &'a str,
    username: &'a str,
    show_error: bool,
    origin: Option<&'a [u8]>,
    referer: Option<&'a [u8]>,
    host: Option<&'a str>,
    cookies: Vec<&'a [u8]>,
    authorization: Vec<&'a [u8]>,
}

fn check_next(next: &str) {
    let got = safe_next(next);
    assert!(got == "/" || got == next);
    assert!(got.starts_with('/') && !got.starts_with("//") && !got.starts_with("/\\"));
    assert!(
        !got.bytes().any(|b| b == b'\\' || b <= b' ' || b == 0x7f),
        "{got:?}"
    );
}

fn check_same_origin(input: &Input) {
    let mut headers = HeaderMap::new();
    for (name, value) in [(ORIGIN, input.origin), (REFERER, input.referer)] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.insert(name, v);
        }
    }
    if !same_origin(&headers, input.host) {
        return;
    }
    let Some(source) = headers.get(ORIGIN).or_else(|| headers.get(REFERER)) else {
        return; // no browser form: passes by design
    };
    let host = input
        .host
        .expect("a cross-origin check passed without a Host");
    let source = source
        .to_str()
        .expect("passed with an opaque source")
        .to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    let named = ["http://", "https://"].iter().any(|scheme| {
        source
            .strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix(host.as_str()))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']))
    });
    assert!(named, "{source:?} passed as the origin of host {host:?}");
}

/// Cookie pairs whose name is exactly the session cookie's, read from the raw bytes the way a
/// backend's cookie parser would (any bytes, not only visible ASCII).
fn raw_session_pairs(headers: &HeaderMap) -> usize {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter(|pair| {
            let name = pair.split(|&b| b == b'=').next().unwrap_or_default();
            pair.contains(&b'=') && name.trim_ascii() == COOKIE_NAME.as_bytes()
        })
        .count()
}

fn check_credentials(input: &Input) {
    let mut headers = HeaderMap::new();
    for v in &input.cookies {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append(COOKIE, v);
        }
    }
    for v in &input.authorization {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append(AUTHORIZATION, v);
        }
    }
    if let Ok(Some((tok, from))) = token(&headers, COOKIE_NAME) {
        assert!(!tok.is_empty());
        assert!(headers.get_all(AUTHORIZATION).iter().count() <= 1);
        match from {
            // One token only: a list or a second credential in the header is refused.
            TokenSource::Header => assert!(!tok.contains([' ', ',', '\t']), "{tok:?}"),
            TokenSource::Cookie => {
                assert_eq!(session_cookie(&headers, COOKIE_NAME), Ok(Some(tok)));
            }
        }
    }
    // What is forwarded upstream never carries the session cookie.
    let mut forwarded = headers.clone();
    strip_session_cookie(&mut forwarded, COOKIE_NAME);
    assert_eq!(session_cookie(&forwarded, COOKIE_NAME), Ok(None));
    assert_eq!(
        raw_session_pairs(&forwarded),
        0,
        "session cookie forwarded: {forwarded:?}"
    );
}

fn check_page(input: &Input) {
    let escaped = escape(input.username);
    assert!(!escaped.contains(['<', '>', '"', '\'']));
    let error = input.show_error.then_some(ERROR);
    let html = render(
        TEMPLATE,
        &PageState {
            action: "/auth/login",
            next: safe_next(input.next),
            username: input.username,
            error,
        },
    );
    // The error paragraph adds `<p class="error" role="alert">` and `</p>`; nothing else may
    // add a quote or a tag: user values stay inside their attribute.
    let (quotes, tags) = if error.is_some() { (4, 2) } else { (0, 0) };
    assert_eq!(
        html.matches('"').count(),
        TEMPLATE.matches('"').count() + quotes,
        "markup injected: {html}"
    );
    assert_eq!(
        html.matches('<').count(),
        TEMPLATE.matches('<').count() + tags,
        "markup injected: {html}"
    );
}

fuzz_target!(|input: Input| {
    check_next(input.next);
    check_same_origin(&input);
    check_credentials(&input);
    check_page(&input);
});
