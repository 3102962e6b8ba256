//! What a browser needs beyond the cookie: telling a navigation from an API call, a safe
//! `next` after login, and same-origin checks on the login and logout forms.

use http::header::HeaderMap;

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

/// Where a browser may be sent after logging in: a same-origin path (see [`safe_next`]), or an
/// absolute `http(s)` URL whose host is one the gateway serves — a host some route names, or one
/// of `forward_auth.next_hosts` (`app.example.com`, or `*.example.com` for its subdomains).
/// Behind an edge proxy the login page often lives on another host of the same site than the
/// page that sent the browser there. Anything else is `/`.
#[derive(Debug, Default, Clone)]
pub struct NextPolicy {
    exact: Vec<String>,
    /// `.example.com` for `*.example.com`.
    suffixes: Vec<String>,
}

impl NextPolicy {
    pub fn new<'a>(hosts: impl IntoIterator<Item = &'a str>) -> NextPolicy {
        let mut policy = NextPolicy::default();
        for host in hosts {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            match host.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => policy.suffixes.push(suffix.to_owned()),
                _ => policy.exact.push(host),
            }
        }
        policy
    }

    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.exact.contains(&host) || self.suffixes.iter().any(|s| host.ends_with(s.as_str()))
    }

    /// `next` when it is safe to send a browser to, else `/`.
    pub fn safe<'a>(&self, next: &'a str) -> &'a str {
        if next.starts_with('/') {
            return safe_next(next);
        }
        let b = next.as_bytes();
        if next.len() > 2048 || b.iter().any(|&c| c == b'\\' || c <= b' ' || c >= 0x7f) {
            return "/";
        }
        let Ok(uri) = next.parse::<http::Uri>() else {
            return "/";
        };
        let ok = matches!(uri.scheme_str(), Some("http" | "https"))
            && uri
                .authority()
                .is_some_and(|a| !a.as_str().contains('@') && self.allows_host(a.host()));
        if ok { next } else { "/" }
    }
}

/// Percent-encodes a `next` value for a query string.
pub fn encode_component(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Whether a state-changing form POST comes from our own origin: `Origin` (or, without it,
/// `Referer`) must name the host the request was sent to, and on an HTTPS connection an
/// `https` origin (a page served over plain HTTP is another origin). Over plain HTTP either
/// scheme passes: TLS may have been ended by a proxy in front. Requests with neither header
/// are not from a browser form and pass (SameSite=Lax keeps the cookie off cross-site POSTs
/// anyway).
pub fn same_origin(headers: &HeaderMap, host: Option<&str>, https: bool) -> bool {
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
        (Some("https"), Some(authority)) => authority.as_str().eq_ignore_ascii_case(host),
        (Some("http"), Some(authority)) if !https => authority.as_str().eq_ignore_ascii_case(host),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::header_map as headers;
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
    fn same_origin_compares_origin_then_referer_with_host() {
        let host = Some("app.example:8080");
        assert!(same_origin(
            &headers(&[("origin", "https://app.example:8080")]),
            host,
            false
        ));
        assert!(same_origin(
            &headers(&[("referer", "http://app.example:8080/auth/login?next=/")]),
            host,
            false
        ));
        assert!(same_origin(&HeaderMap::new(), host, false));
        assert!(!same_origin(
            &headers(&[("origin", "https://evil.example")]),
            host,
            false
        ));
        assert!(!same_origin(&headers(&[("origin", "null")]), host, false));
        assert!(!same_origin(
            &headers(&[("referer", "https://evil.example/x")]),
            host,
            false
        ));
        assert!(!same_origin(
            &headers(&[("origin", "https://app.example:8080.evil")]),
            host,
            false
        ));
        // On an HTTPS connection a plain-HTTP page is another origin.
        let http_page = headers(&[("origin", "http://app.example:8080")]);
        assert!(same_origin(&http_page, host, false));
        assert!(!same_origin(&http_page, host, true));
        let https_page = headers(&[("origin", "https://app.example:8080")]);
        assert!(same_origin(&https_page, host, true));
    }

    #[test]
    fn absolute_next_urls_only_to_hosts_we_serve() {
        let policy = NextPolicy::new(["app.example.com", "*.corp.example"]);
        for good in [
            "/x",
            "https://app.example.com/orders?x=1",
            "http://APP.example.com./",
            "https://wiki.corp.example/a",
        ] {
            assert_eq!(policy.safe(good), good);
        }
        for bad in [
            "https://evil.example/",
            "https://app.example.com.evil/",
            "https://user@app.example.com/",
            "javascript:alert(1)",
            "//app.example.com/x",
            "https://corp.example/",
            "https://app.example.com/\t",
            "ftp://app.example.com/",
        ] {
            assert_eq!(policy.safe(bad), "/", "{bad:?}");
        }
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
}
