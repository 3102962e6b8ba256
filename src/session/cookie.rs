//! The session cookie: its settings and `Set-Cookie` values, reading it from a request (never
//! guessing between two), and removing it before a request goes upstream.

use std::time::Duration;

use http::header::{COOKIE, HeaderMap, HeaderValue};

use crate::config::{Diagnostics, KeyPath, RawCookie, SameSite};

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
    /// `Set-Cookie` carrying `token` for `max_age`, on a connection that is `https` or not.
    pub fn set(&self, token: &str, max_age: Duration, https: bool) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.attributes(token, max_age.as_secs(), https)).ok()
    }

    /// `Set-Cookie` that removes the cookie.
    pub fn clear(&self, https: bool) -> HeaderValue {
        HeaderValue::from_str(&self.attributes("", 0, https))
            .unwrap_or_else(|_| HeaderValue::from_static("authgate_session=; Max-Age=0; Path=/"))
    }

    /// A cookie set over HTTPS is always `Secure`; over plain HTTP only when configured (the
    /// default: authgate may sit behind a TLS-terminating proxy).
    fn attributes(&self, value: &str, max_age: u64, https: bool) -> String {
        let mut c = format!("{}={value}; Path=/; Max-Age={max_age}; HttpOnly", self.name);
        if self.secure || https {
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

impl CookieSettings {
    /// Compiles `cookie:`. `token_ttl` bounds `refresh_before` (a sliding window as long as the
    /// token would re-issue it on every request).
    pub fn compile(raw: &RawCookie, token_ttl: Duration, diags: &mut Diagnostics) -> Self {
        let at = KeyPath::root().key("cookie");
        let name = raw.name.as_str().to_owned();
        if !valid_cookie_name(&name) {
            diags.at(&at.key("name"), format!("`{name}` is not a cookie name"));
        }
        if raw.same_site == SameSite::None && !raw.secure {
            diags.at(
                &at.key("same_site"),
                "SameSite=None needs `secure: true` (browsers drop the cookie otherwise)",
            );
        }
        let domain = raw
            .domain
            .as_ref()
            .map(|d| d.as_str().trim_start_matches('.').to_ascii_lowercase());
        if let Some(d) = &domain
            && (d.is_empty()
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            diags.at(&at.key("domain"), format!("`{d}` is not a domain name"));
        }
        let refresh_before = raw.refresh_before.map(|d| d.0);
        if refresh_before.is_some_and(|r| r >= token_ttl) {
            diags.at(
                &at.key("refresh_before"),
                "must be shorter than `tokens.ttl`, or every request would re-issue the cookie",
            );
        }
        CookieSettings {
            name,
            secure: raw.secure,
            same_site: raw.same_site,
            domain,
            refresh_before,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::header_map as headers;
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
            c.set("t", Duration::from_secs(60), false).unwrap(),
            "s=t; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Lax; Domain=example.com"
        );
        assert!(
            c.clear(false)
                .to_str()
                .unwrap()
                .starts_with("s=; Path=/; Max-Age=0")
        );
    }
}
