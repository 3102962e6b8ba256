//! Request path normalization (RFC 3986 §6.2.2): percent-encoded unreserved characters decoded,
//! other escapes upper-cased, dot segments resolved, empty segments merged. Routing runs on the
//! result and the upstream receives the same result, so the gateway and the backend can never
//! disagree about which path was asked for.

use std::borrow::Cow;

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("encoded `/` (%2F) is not allowed in the path")]
    EncodedSlash,
    #[error("`\\` is not allowed in the path")]
    Backslash,
    #[error("NUL is not allowed in the path")]
    Nul,
    #[error("control characters are not allowed in the path")]
    Control,
    #[error("`#` is not allowed in the path")]
    Fragment,
    /// Backends disagree on it: some decode it before splitting `;params` off (`/admin%3Bx`
    /// is their `/admin`), others do not.
    #[error("encoded `;` (%3B) is not allowed in the path")]
    EncodedSemicolon,
    /// Some backends decode it and then cut the path at the fragment (`/admin%23/x` is their
    /// `/admin`).
    #[error("encoded `#` (%23) is not allowed in the path")]
    EncodedHash,
    #[error("bad percent-encoding in the path")]
    BadPercent,
    #[error("a dot segment with parameters (`..;`) is not allowed in the path")]
    DotSegmentWithParams,
    #[error("a path segment of only parameters (`/;x/`) is not allowed in the path")]
    ParamsOnlySegment,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The part of a segment before its `;` parameters: what routing compares. Servlet containers
/// (Tomcat, Jetty) ignore `;params` when they route, so `/admin;x` must route as `/admin`.
pub fn segment_name(segment: &str) -> &str {
    match segment.find(';') {
        Some(i) => &segment[..i],
        None => segment,
    }
}

fn is_dot_segment(name: &str) -> bool {
    name == "." || name == ".."
}

/// Removes the whole-segment `prefix` from the front of a normalized `path`, comparing segment
/// names the way routing does (`;params` ignored), and returns the rest (`/` when nothing is
/// left). `None` when `path` is not under `prefix`.
pub fn strip_segments<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let mut rest = path;
    for want in prefix.split('/').filter(|s| !s.is_empty()) {
        let r = rest.strip_prefix('/')?;
        let end = r.find('/').unwrap_or(r.len());
        if segment_name(&r[..end]) != want {
            return None;
        }
        rest = &r[end..];
    }
    Some(if rest.is_empty() { "/" } else { rest })
}

/// Checks every byte and reports whether the path needs rewriting. Fails on bytes that are
/// refused wherever they appear.
fn scan(raw: &str) -> Result<bool, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut rewrite = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            b'#' => return Err(PathError::Fragment),
            b if b < 0x20 || b == 0x7f => return Err(PathError::Control),
            b'%' => rewrite = true,
            b'/' => {
                let rest = &raw[i + 1..];
                let seg = rest.split('/').next().unwrap_or("");
                let name = segment_name(seg);
                // Servlet containers drop `;params` and then merge the empty segment left
                // behind: `/;/admin` is their `/admin`, ours would be something else.
                if name.is_empty() && !seg.is_empty() {
                    return Err(PathError::ParamsOnlySegment);
                }
                if rest.starts_with('/') || is_dot_segment(name) {
                    if name.len() != seg.len() {
                        return Err(PathError::DotSegmentWithParams);
                    }
                    rewrite = true;
                }
            }
            _ => {}
        }
    }
    Ok(rewrite)
}

/// Decodes `%XX` escapes of unreserved characters and upper-cases the others.
fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // Safe slicing: `%` and ASCII are single bytes; copy runs of other text whole.
            let end = raw[i..].find('%').map_or(raw.len(), |n| i + n);
            out.push_str(&raw[i..end]);
            i = end;
            continue;
        }
        let (hi, lo) = match (
            bytes.get(i + 1).and_then(|&c| hex(c)),
            bytes.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (Some(hi), Some(lo)) => (hi, lo),
            _ => return Err(PathError::BadPercent),
        };
        let decoded = hi << 4 | lo;
        match decoded {
            b'/' => return Err(PathError::EncodedSlash),
            b';' => return Err(PathError::EncodedSemicolon),
            b'#' => return Err(PathError::EncodedHash),
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            d if is_unreserved(d) => out.push(d as char),
            d => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[usize::from(d >> 4)] as char);
                out.push(HEX[usize::from(d & 15)] as char);
            }
        }
        i += 3;
    }
    Ok(out)
}

/// Resolves `.` and `..` segments and merges empty ones; `..` never climbs above the root.
/// A trailing `/` (or a final dot segment) is kept as a trailing `/`.
fn resolve_segments(decoded: &str) -> Result<String, PathError> {
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split('/').skip(1) {
        let name = segment_name(seg);
        if is_dot_segment(name) && name.len() != seg.len() {
            return Err(PathError::DotSegmentWithParams);
        }
        if name.is_empty() && !seg.is_empty() {
            return Err(PathError::ParamsOnlySegment);
        }
        trailing_slash = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            s => stack.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for seg in &stack {
        out.push('/');
        out.push_str(seg);
    }
    if trailing_slash || stack.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Normalizes an origin-form path (no query). Borrows when the path is already normal.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !scan(raw)? {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(raw)?;
    // Decoding can reveal new dot segments (`%2e%2e`), so it runs before resolution.
    resolve_segments(&decoded).map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b/", "/a.b/c..d/.e", "/a;x=1/b", "/~user"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn resolves_dot_segments_and_merges_slashes() {
        assert_eq!(n("/public/../admin").unwrap(), "/admin");
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("//admin").unwrap(), "/admin");
        assert_eq!(n("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(n("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/..").unwrap(), "/");
        assert_eq!(n("/a/b/../../..").unwrap(), "/");
    }

    #[test]
    fn decodes_unreserved_and_uppercases_other_escapes() {
        assert_eq!(n("/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/public/%2E%2E/admin").unwrap(), "/admin");
        assert_eq!(n("/public/.%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/%61dmin").unwrap(), "/admin");
        assert_eq!(n("/a%20b%3f").unwrap(), "/a%20b%3F");
        assert_eq!(n("/%7euser").unwrap(), "/~user");
        assert_eq!(n("/%252e%252e").unwrap(), "/%252e%252e");
        assert_eq!(n("/%3f%c3%a9").unwrap(), "/%3F%C3%A9");
    }

    #[test]
    fn refuses_encoded_separators_and_control_bytes() {
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%5Cb"), Err(PathError::Backslash));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%00"), Err(PathError::Nul));
        assert_eq!(n("/a\0"), Err(PathError::Nul));
        assert_eq!(n("/a#b"), Err(PathError::Fragment));
        assert_eq!(n("/admin%3Bx/x"), Err(PathError::EncodedSemicolon));
        assert_eq!(n("/admin%3b"), Err(PathError::EncodedSemicolon));
        assert_eq!(n("/admin%23/x"), Err(PathError::EncodedHash));
        assert_eq!(n("/a\nb"), Err(PathError::Control));
        assert_eq!(n("/a%zz"), Err(PathError::BadPercent));
        assert_eq!(n("/a%2"), Err(PathError::BadPercent));
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(n(""), Err(PathError::NotAbsolute));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn segments_of_only_params_are_refused() {
        for p in [
            "/;/panel",
            "/;x=1/panel",
            "/panel/;/settings",
            "/panel/settings/;",
            "/a%2e/;/b",
        ] {
            assert_eq!(n(p), Err(PathError::ParamsOnlySegment), "{p}");
        }
        assert_eq!(n("/panel;x/settings").unwrap(), "/panel;x/settings");
    }

    #[test]
    fn dot_segments_with_params_are_refused() {
        assert_eq!(n("/public/..;/admin"), Err(PathError::DotSegmentWithParams));
        assert_eq!(n("/public/.;x/admin"), Err(PathError::DotSegmentWithParams));
        assert_eq!(
            n("/public/%2e%2e;/admin"),
            Err(PathError::DotSegmentWithParams)
        );
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for p in ["/a/../b//c/./%2e%2E/d%20", "/x/%7E/..", "//", "/a;b/../c"] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once, "{p}");
        }
    }

    #[test]
    fn strips_whole_segments_only() {
        assert_eq!(strip_segments("/api/users", "/api"), Some("/users"));
        assert_eq!(strip_segments("/api", "/api"), Some("/"));
        assert_eq!(strip_segments("/api/", "/api"), Some("/"));
        assert_eq!(strip_segments("/api;x=1/users", "/api"), Some("/users"));
        assert_eq!(strip_segments("/a/b/c", "/a/b"), Some("/c"));
        assert_eq!(strip_segments("/apix/users", "/api"), None);
        assert_eq!(strip_segments("/other", "/api"), None);
        assert_eq!(strip_segments("/x", ""), Some("/x"));
    }

    #[test]
    fn segment_names_drop_matrix_parameters() {
        assert_eq!(segment_name("admin;jsessionid=1"), "admin");
        assert_eq!(segment_name("admin"), "admin");
    }
}
