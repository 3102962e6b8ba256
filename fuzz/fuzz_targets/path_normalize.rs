//! Request paths: `normalize` must never panic; what it returns must be its own normal form
//! (idempotent), carry no dot segment (not even behind `;params`), no empty segment, no `\`,
//! NUL, ASCII control or encoded `/`/`\`/NUL, and only canonical escapes; and routing that
//! normalized path through a fixed table must pick the first route (in file order) that takes
//! it, checked by brute force against a plain reading of the rules; a prefix route strips
//! exactly what it matched; and exact and prefix routes read the path the way a servlet
//! backend does (`/;x/admin` is `/admin` to Tomcat: it must not dodge an exact `/admin`).
#![no_main]

use std::sync::LazyLock;

use authgate::path::{normalize, segment_name, strip_segments};
use authgate::routes::{Matcher, PathMatch, RouteTable};
use http::Method;
use libfuzzer_sys::fuzz_target;

/// `(exact?, path, GET only?)` in file order.
const ROUTES: &[(bool, &str, bool)] = &[
    (true, "/login", false),
    (false, "/admin", false),
    (false, "/api/v1", true),
    (false, "/public/", false),
    (true, "/api/v1/", false),
    (false, "/a/b/c", false),
    (true, "/", false),
];

static TABLE: LazyLock<RouteTable<usize>> = LazyLock::new(|| {
    RouteTable::new(
        ROUTES
            .iter()
            .enumerate()
            .map(|(i, &(exact, path, get_only))| {
                let mut matcher = route(if exact {
                    PathMatch::Exact(path.into())
                } else {
                    PathMatch::Prefix(path.into())
                });
                matcher.methods = get_only.then(|| vec![Method::GET]);
                (matcher, i)
            })
            .collect(),
    )
});

fn names(path: &str) -> Vec<&str> {
    path.split('/').skip(1).map(segment_name).collect()
}

fn under(path: &str, prefix: &str) -> bool {
    let want: Vec<&str> = names(prefix)
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    let have: Vec<&str> = names(path).into_iter().filter(|s| !s.is_empty()).collect();
    have.len() >= want.len() && have[..want.len()] == want[..]
}

fn takes(route: &(bool, &str, bool), method: &Method, path: &str) -> bool {
    let &(exact, p, get_only) = route;
    let path_ok = if exact {
        names(p) == names(path)
    } else {
        under(path, p)
    };
    path_ok && (!get_only || *method == Method::GET || *method == Method::HEAD)
}

fn route(path: PathMatch) -> Matcher {
    Matcher {
        path,
        methods: None,
        host: None,
    }
}

/// The path as a servlet container reads it: `;params` dropped, empty segments merged.
fn servlet_reading(path: &str) -> String {
    let mut out = String::new();
    for name in names(path).into_iter().filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(name);
    }
    if out.is_empty() || path.ends_with('/') {
        out.push('/');
    }
    out
}

fn check_normal_form(n: &str) {
    assert!(n.starts_with('/'), "not absolute: {n:?}");
    assert!(!n.contains("//"), "empty segment: {n:?}");
    assert!(
        !n.bytes().any(|b| b == b'\\' || b < 0x20 || b == 0x7f),
        "backslash, NUL or control: {n:?}"
    );
    for encoded in ["%2F", "%2f", "%5C", "%5c", "%00"] {
        assert!(!n.contains(encoded), "{encoded} in {n:?}");
    }
    for seg in n.split('/').skip(1) {
        let name = segment_name(seg);
        assert!(!matches!(name, "." | ".."), "dot segment in {n:?}");
    }
    let bytes = n.as_bytes();
    for (i, _) in n.match_indices('%') {
        let digits = bytes.get(i + 1..i + 3).unwrap_or_default();
        assert!(
            digits.len() == 2
                && digits
                    .iter()
                    .all(|d| d.is_ascii_digit() || (b'A'..=b'F').contains(d)),
            "non-canonical escape in {n:?}"
        );
        let decoded = u8::from_str_radix(std::str::from_utf8(digits).unwrap(), 16).unwrap();
        assert!(
            !(decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded)),
            "escaped unreserved character in {n:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(n) = normalize(raw) else {
        return;
    };
    let again = normalize(&n);
    assert_eq!(again.as_deref(), Ok(&*n), "not idempotent from {raw:?}");
    check_normal_form(&n);

    for method in [Method::GET, Method::POST] {
        let found = TABLE.find(&method, None, &n);
        let expected = ROUTES.iter().position(|r| takes(r, &method, &n));
        assert_eq!(found.map(|(i, _)| i), expected, "{method} {n:?}");
        if let Some((i, &payload)) = found {
            assert_eq!(payload, i);
            let (exact, p, _) = ROUTES[i];
            if !exact {
                assert!(strip_segments(&n, p).is_some(), "{n:?} not under {p:?}");
            }
        }
    }

    // Exact and prefix routes read the path alike, the way a servlet backend does (`;params`
    // dropped, the empty segments left behind merged): written as that reading, an exact
    // route takes the path, and a prefix route takes it and strips it whole.
    let reading = servlet_reading(&n);
    let own = RouteTable::new(vec![
        (route(PathMatch::Exact(reading.clone())), 0),
        (route(PathMatch::Prefix(reading.clone())), 1),
    ]);
    assert_eq!(
        own.find(&Method::GET, None, &n).map(|(i, _)| i),
        Some(0),
        "exact route {reading:?} does not take {n:?}"
    );
    assert!(
        strip_segments(&n, &reading).is_some_and(|rest| rest == "/"),
        "prefix {reading:?} does not strip {n:?} whole"
    );
});
