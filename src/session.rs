//! Browser sessions: the token in a cookie, where it comes from and where it must not go,
//! login redirects with a safe `next`, same-origin checks for the login and logout forms, and
//! the revocation list used by logout.

use std::time::Duration;

use http::header::{COOKIE, HeaderMap, HeaderValue};
use moka::sync::Cache;

use crate::auth::verify::unix_now;

/// `SameSite` attribute of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
pub enum SameSite {
    Strict,
    #[default]
    Lax,
    None,
}

/// The compiled `cookie:` section.
#[derive(Debug, Clone)]
pub struct CookieSettings {
    pub name: String,
    pub secure: bool,
    pub same_site: SameSite,
    pub domain: Option<String>,
    /// Re-issue a cookie token this long before it expires (sliding session).
    pub refresh_before: Option<Duration>,
}

impl CookieSettings {
    /// `Set-Cookie` carrying `token` for `max_age`.
    pub fn set(&self, token: &str, max_age: Duration) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.attributes(token, max_age.as_secs())).ok()
    }

    /// `Set-Cookie` that removes the cookie.
    pub fn clear(&self) -> HeaderValue {
        HeaderValue::from_str(&self.attributes("", 0))
            .unwrap_or_else(|_| HeaderValue::from_static("authgate_session=; Max-Age=0; Path=/"))
    }

    fn attributes(&self, value: &str, max_age: u64) -> String {
        let mut c = format!("{}={value}; Path=/; Max-Age={max_age}; HttpOnly", self.name);
        if self.secure {
            c.push_str("; Secure");
        }
        c.push_str(match self.same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });
        if let Some(domain) = &self.domain {
            c.push_str("; Domain=");
            c.push_str(domain);
        }
        c
    }
}

/// Cookie names are RFC 6265 tokens.
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Every `name=value` pair of every `Cookie` header, as bytes: a cookie whose value is not
/// ASCII (browsers send UTF-8) must not hide the cookies beside it.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            Some((trim(&pair[..eq]), trim(&pair[eq + 1..])))
        })
}

/// Two session cookies in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("several session cookies")]
pub struct DuplicateCookie;

/// The session cookie's value. Two cookies of that name (a sibling subdomain can plant one:
/// "cookie tossing") are refused rather than guessed between. A value that is not text is no
/// token.
pub fn session_cookie<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, DuplicateCookie> {
    let mut found = None;
    for (k, v) in cookie_pairs(headers) {
        if k == name.as_bytes() {
            if found.is_some() {
                return Err(DuplicateCookie);
            }
            found = Some(v);
        }
    }
    Ok(found
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty()))
}

/// Removes the session cookie from the `Cookie` headers, keeping every other cookie exactly
/// as sent (whatever bytes its value holds).
pub fn strip_session_cookie(headers: &mut HeaderMap, name: &str) {
    if !cookie_pairs(headers).any(|(k, _)| k == name.as_bytes()) {
        return;
    }
    let mut kept: Vec<u8> = Vec::new();
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = trim(pair);
            let key = pair
                .iter()
                .position(|&b| b == b'=')
                .map_or(pair, |eq| trim(&pair[..eq]));
            if pair.is_empty() || key == name.as_bytes() {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair);
        }
    }
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_bytes(&kept)
    {
        headers.insert(COOKIE, v);
    }
}

/// A top-level browser navigation: a GET or HEAD that accepts HTML. Such requests are sent
/// to the login page instead of getting a bare 401.
pub fn is_navigation(method: &http::Method, headers: &HeaderMap) -> bool {
    (method == http::Method::GET || method == http::Method::HEAD)
        && headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

/// `next` as given when it is a same-origin relative path, else `/`. Refused: anything not
/// starting with a single `/` (`//host`, `/\\host`, schemes), backslashes anywhere, and
/// whitespace or control characters (browsers drop tabs and newlines, turning `/\t/evil`
/// into `//evil`).
pub fn safe_next(next: &str) -> &str {
    let b = next.as_bytes();
    // Visible ASCII only: anything else cannot go into a `Location` header as it is.
    let ok = b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        && !b.iter().any(|&c| c == b'\\' || c <= b' ' || c >= 0x7f)
        && next.len() <= 2048;
    if ok { next } else { "/" }
}

/// Percent-encodes a `next` value for a query string.
pub fn encode_component(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Whether a state-changing form POST comes from our own origin: `Origin` (or, without it,
/// `Referer`) must name the host the request was sent to. Requests with neither are not from
/// a browser form and pass (SameSite=Lax keeps the cookie off cross-site POSTs anyway).
pub fn same_origin(headers: &HeaderMap, host: Option<&str>) -> bool {
    let source = headers
        .get(http::header::ORIGIN)
        .or_else(|| headers.get(http::header::REFERER));
    let Some(source) = source else {
        return true;
    };
    let (Ok(source), Some(host)) = (source.to_str(), host) else {
        return false;
    };
    let Ok(uri) = source.parse::<http::Uri>() else {
        return false;
    };
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(authority)) => authority.as_str().eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// Token ids revoked by logout, each kept until its token would have expired anyway. Lives
/// with the gateway, not the config, so a reload never un-revokes a token.
pub struct Revoked {
    ids: Cache<String, u64>,
    used: std::sync::atomic::AtomicBool,
}

struct UntilExp;

impl moka::Expiry<String, u64> for UntilExp {
    fn expire_after_create(
        &self,
        _: &String,
        exp: &u64,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(exp.saturating_sub(unix_now()) + 1))
    }
}

impl Default for Revoked {
    fn default() -> Self {
        Revoked {
            ids: Cache::builder()
                .max_capacity(1_000_000)
                .expire_after(UntilExp)
                .build(),
            used: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Revoked {
    pub fn revoke(&self, jti: &str, exp: u64) {
        self.ids.insert(jti.to_owned(), exp);
        self.used.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        // Until the first logout there is nothing to look up.
        self.used.load(std::sync::atomic::Ordering::Acquire) && self.ids.contains_key(jti)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn next_only_takes_same_origin_relative_paths() {
        for good in ["/", "/app/x?y=1#f", "/a/b?next=http://x"] {
            assert_eq!(safe_next(good), good);
        }
        for bad in [
            "//evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https://evil.com",
            "evil.com",
            "/\t/evil.com",
            "/a\nb",
            "",
            "javascript:alert(1)",
            "/a\\b",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn session_cookie_is_found_and_duplicates_refused() {
        let h = headers(&[("cookie", "a=1; authgate_session=tok; b=2")]);
        assert_eq!(session_cookie(&h, "authgate_session"), Ok(Some("tok")));
        let h = headers(&[("cookie", "a=1"), ("cookie", "authgate_session=tok")]);
        assert_eq!(session_cookie(&h, "authgate_session"), Ok(Some("tok")));
        let h = headers(&[("cookie", "authgate_session=a; authgate_session=b")]);
        assert_eq!(session_cookie(&h, "authgate_session"), Err(DuplicateCookie));
        assert_eq!(
            session_cookie(&HeaderMap::new(), "authgate_session"),
            Ok(None)
        );
    }

    #[test]
    fn cookies_with_non_ascii_values_do_not_hide_the_session() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_bytes(b"theme=\xc3\xa9; authgate_session=tok").unwrap(),
        );
        assert_eq!(session_cookie(&h, "authgate_session"), Ok(Some("tok")));
        strip_session_cookie(&mut h, "authgate_session");
        assert_eq!(h[COOKIE].as_bytes(), b"theme=\xc3\xa9");
    }

    #[test]
    fn stripping_the_session_cookie_keeps_the_others() {
        let mut h = headers(&[
            ("cookie", "a=1; authgate_session=tok; b=2"),
            ("cookie", "c=3"),
        ]);
        strip_session_cookie(&mut h, "authgate_session");
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h[COOKIE], "a=1; b=2; c=3");
        let mut h = headers(&[("cookie", "authgate_session=tok")]);
        strip_session_cookie(&mut h, "authgate_session");
        assert!(h.get(COOKIE).is_none());
    }

    #[test]
    fn set_cookie_attributes() {
        let c = CookieSettings {
            name: "s".into(),
            secure: true,
            same_site: SameSite::Lax,
            domain: Some("example.com".into()),
            refresh_before: None,
        };
        assert_eq!(
            c.set("t", Duration::from_secs(60)).unwrap(),
            "s=t; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Lax; Domain=example.com"
        );
        assert!(
            c.clear()
                .to_str()
                .unwrap()
                .starts_with("s=; Path=/; Max-Age=0")
        );
    }

    #[test]
    fn same_origin_compares_origin_then_referer_with_host() {
        let host = Some("app.example:8080");
        assert!(same_origin(
            &headers(&[("origin", "https://app.example:8080")]),
            host
        ));
        assert!(same_origin(
            &headers(&[("referer", "http://app.example:8080/auth/login?next=/")]),
            host
        ));
        assert!(same_origin(&HeaderMap::new(), host));
        assert!(!same_origin(
            &headers(&[("origin", "https://evil.example")]),
            host
        ));
        assert!(!same_origin(&headers(&[("origin", "null")]), host));
        assert!(!same_origin(
            &headers(&[("referer", "https://evil.example/x")]),
            host
        ));
        assert!(!same_origin(
            &headers(&[("origin", "https://app.example:8080.evil")]),
            host
        ));
    }

    #[test]
    fn navigation_is_get_or_head_accepting_html() {
        let html = headers(&[("accept", "text/html,application/xhtml+xml")]);
        assert!(is_navigation(&http::Method::GET, &html));
        assert!(is_navigation(&http::Method::HEAD, &html));
        assert!(!is_navigation(&http::Method::POST, &html));
        assert!(!is_navigation(
            &http::Method::GET,
            &headers(&[("accept", "application/json")])
        ));
        assert!(!is_navigation(&http::Method::GET, &HeaderMap::new()));
    }

    #[test]
    fn revoked_ids_are_remembered() {
        let r = Revoked::default();
        assert!(!r.is_revoked("a"));
        r.revoke("a", unix_now() + 60);
        assert!(r.is_revoked("a"));
        assert!(!r.is_revoked("b"));
    }
}
