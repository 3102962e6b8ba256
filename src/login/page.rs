//! The built-in login page: a small, accessible HTML form with no external assets and no
//! JavaScript, readable on a phone. Replaceable by `login.page_template` with placeholders
//! `{{action}}`, `{{next}}`, `{{username}}` (all HTML-escaped), `{{providers}}` (one "Sign in
//! with …" link per single sign-on provider, or nothing) and `{{error}}` (an escaped
//! `<p class="error" role="alert">` element, or nothing).

use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, HeaderValue};
use http::{Response, StatusCode};

use crate::proxy::Body;

/// The page served when no template is configured.
pub const DEFAULT_TEMPLATE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in</title>
<style>
  :root { color-scheme: light dark; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
  body { margin: 0; min-height: 100vh; display: grid; place-items: center; background: Canvas; color: CanvasText; }
  main { width: min(22rem, calc(100vw - 2rem)); padding: 2rem 1.5rem; border: 1px solid GrayText; border-radius: 0.75rem; }
  h1 { margin: 0 0 1.25rem; font-size: 1.5rem; }
  label { display: block; margin: 1rem 0 0.3rem; font-weight: 600; }
  input { box-sizing: border-box; width: 100%; padding: 0.65rem; font-size: 1rem; border: 1px solid GrayText; border-radius: 0.4rem; }
  input:focus, button:focus { outline: 3px solid Highlight; outline-offset: 2px; }
  button { margin-top: 1.5rem; width: 100%; padding: 0.75rem; font-size: 1rem; font-weight: 600; border: 0; border-radius: 0.4rem; background: #1d4ed8; color: #fff; cursor: pointer; }
  .sso { display: block; margin: 0 0 0.75rem; padding: 0.75rem; text-align: center; border: 1px solid GrayText; border-radius: 0.4rem; color: inherit; text-decoration: none; font-weight: 600; }
  .error { margin: 0 0 1rem; padding: 0.75rem; border-radius: 0.4rem; background: #fee2e2; color: #7f1d1d; border: 1px solid #b91c1c; }
</style>
</head>
<body>
<main>
  <h1>Sign in</h1>
  {{error}}
  {{providers}}
  <form method="post" action="{{action}}">
    <input type="hidden" name="next" value="{{next}}">
    <label for="username">Username</label>
    <input id="username" name="username" type="text" value="{{username}}" autocomplete="username" autocapitalize="none" spellcheck="false" required autofocus>
    <label for="password">Password</label>
    <input id="password" name="password" type="password" autocomplete="current-password" required>
    <button type="submit">Sign in</button>
  </form>
</main>
</body>
</html>
"#;

/// No scripts, no external anything; inline styles only; the form posts back to us; never in
/// a frame.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What one rendering of the page shows.
pub struct PageState<'a> {
    pub action: &'a str,
    pub next: &'a str,
    pub username: &'a str,
    pub error: Option<&'a str>,
    /// (provider name, its start URL with `next`) for each single sign-on provider.
    pub providers: &'a [(String, String)],
}

/// Fills the template in one pass: a value is never scanned for placeholders, so text a user
/// typed (`{{error}}` as a username) stays text.
pub fn render(template: &str, state: &PageState<'_>) -> String {
    let error = state.error.map_or(String::new(), |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))
    });
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        match &after[..end] {
            "action" => out.push_str(&escape(state.action)),
            "next" => out.push_str(&escape(state.next)),
            "username" => out.push_str(&escape(state.username)),
            "error" => out.push_str(&error),
            "providers" => {
                for (name, url) in state.providers {
                    out.push_str(&format!(
                        "<a class=\"sso\" href=\"{}\">Sign in with {}</a>",
                        escape(url),
                        escape(name)
                    ));
                }
            }
            // Not ours: leave it as written.
            other => {
                out.push_str("{{");
                out.push_str(other);
                out.push_str("}}");
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The page as a response, with the security headers every login page needs.
pub fn response(status: StatusCode, html: String) -> Response<Body> {
    let mut resp = crate::response::full(status, "text/html; charset=utf-8", html);
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: with no-referrer, browsers send `Origin: null` on the
    // form POST, which the same-origin check must refuse.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_escaped_values_and_the_error() {
        let html = render(
            DEFAULT_TEMPLATE,
            &PageState {
                action: "/auth/login",
                next: "/a?b=1&c=\"x\"",
                username: "<script>alert(1)</script>",
                error: Some("Wrong <b>password</b>"),
                providers: &[(
                    "Corp <SSO>".into(),
                    "/auth/oidc/corp/start?next=%2F\"".into(),
                )],
            },
        );
        assert!(html.contains("value=\"/a?b=1&amp;c=&quot;x&quot;\""));
        assert!(html.contains(
            "href=\"/auth/oidc/corp/start?next=%2F&quot;\">Sign in with Corp &lt;SSO&gt;</a>"
        ));
        assert!(html.contains("value=\"&lt;script&gt;alert(1)&lt;/script&gt;\""));
        assert!(!html.contains("<script>"));
        assert!(
            html.contains(
                "<p class=\"error\" role=\"alert\">Wrong &lt;b&gt;password&lt;/b&gt;</p>"
            )
        );
        let clean = render(
            DEFAULT_TEMPLATE,
            &PageState {
                action: "/l",
                next: "/",
                username: "",
                error: None,
                providers: &[],
            },
        );
        assert!(!clean.contains("role=\"alert\""));
        assert!(!clean.contains("{{"));
    }
}
