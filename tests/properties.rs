//! Property tests (proptest) of the pure security-relevant functions, through the crate's
//! public API only: path normalization, routing on the normalized path, identity-header
//! stripping and the login redirect's `next`. Each property states an invariant the README
//! promises; the generators are biased towards the inputs attackers use (encoded dots and
//! slashes, `;` parameters, re-spelled header names, scheme-relative redirects).

use std::collections::BTreeSet;

use authgate::path::{normalize, segment_name, strip_segments};
use authgate::proxy::headers::{StripSet, canonical_name, clean_request, dropped_from_requests};
use authgate::routes::{Matcher, PathMatch, RouteTable, host_name};
use authgate::session::safe_next;
use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::sample::select;

// ---------------------------------------------------------------------------------------------
// Generators

/// Pieces of request paths: separators, dots, raw and percent-encoded characters in both hex
/// cases (unreserved ones that must be decoded, delimiters that must stay encoded, refused
/// ones), matrix parameters, broken escapes and a few refused raw bytes.
const PATH_PIECES: &[&str] = &[
    "/", "/", "/", "/", ".", ".", "..", "%", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%00",
    "%41", "%61", "%7e", "%7E", "%2d", "%5f", "%3f", "%3F", "%23", "%25", "%3b", "%3B", "%20",
    "%c3%a9", "%252e", "%2", "%g1", ";", ";x=1", ";", "a", "b", "Z", "0", "9", "e", "E", "f", "2",
    "~", "-", "_", "admin", "\\", "\0", "#", "\t",
];

/// A path-like string; usually absolute, sometimes not.
fn path_like() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.95),
        prop::collection::vec(select(PATH_PIECES), 0..28),
    )
        .prop_map(|(absolute, pieces)| {
            let mut s = String::from(if absolute { "/" } else { "" });
            for p in pieces {
                s.push_str(p);
            }
            s
        })
}

/// Bytes that are neither unreserved (RFC 3986 §2.3) nor refused when encoded (`/`, `\`, NUL):
/// their escapes must survive normalization, upper-cased.
fn kept_encoded_byte() -> impl Strategy<Value = u8> {
    (1u8..=255).prop_filter("unreserved or refused", |b| {
        !(b.is_ascii_alphanumeric() || b"-._~/\\;#".contains(b))
    })
}

/// `%xx` with each hex digit in a random case.
fn escape(byte: u8, upper: (bool, bool)) -> String {
    let hex = format!("{byte:02x}");
    let mut out = String::from("%");
    for (c, up) in hex.chars().zip([upper.0, upper.1]) {
        out.push(if up { c.to_ascii_uppercase() } else { c });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Path normalization

/// Every invariant of a normalized path.
fn check_normal_form(n: &str) -> Result<(), TestCaseError> {
    prop_assert!(n.starts_with('/'), "not absolute: {n:?}");
    prop_assert!(!n.contains("//"), "empty segment: {n:?}");
    prop_assert!(!n.contains('\\'), "backslash: {n:?}");
    prop_assert!(!n.contains('\0'), "NUL: {n:?}");
    prop_assert!(!n.chars().any(char::is_control), "control: {n:?}");
    for encoded in ["%2F", "%2f", "%5C", "%5c", "%00", "%3B", "%3b", "%23"] {
        prop_assert!(!n.contains(encoded), "{encoded} in {n:?}");
    }
    for seg in n.split('/').skip(1) {
        prop_assert!(seg != "." && seg != "..", "dot segment in {n:?}");
        let name = segment_name(seg);
        prop_assert!(
            name != "." && name != "..",
            "dot segment with parameters in {n:?}"
        );
    }
    // Escapes are canonical: two upper-case hex digits, never of an unreserved character.
    let bytes = n.as_bytes();
    for (i, _) in n.match_indices('%') {
        let digits = bytes.get(i + 1..i + 3).unwrap_or_default();
        prop_assert!(
            digits.len() == 2
                && digits
                    .iter()
                    .all(|d| d.is_ascii_digit() || (b'A'..=b'F').contains(d)),
            "non-canonical escape at {i} in {n:?}"
        );
        let decoded = u8::from_str_radix(std::str::from_utf8(digits).unwrap(), 16).unwrap();
        prop_assert!(
            !(decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded)),
            "escaped unreserved character at {i} in {n:?}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// `normalize` is idempotent: a normalized path is its own normal form.
    #[test]
    fn normalization_is_idempotent(p in path_like()) {
        if let Ok(n) = normalize(&p) {
            let again = normalize(&n);
            prop_assert_eq!(again.as_deref(), Ok(&*n), "from {:?}", p);
        }
    }

    /// A normalized path is absolute, has no dot segments (not even behind `;params`), no empty
    /// segments, no `\`, NUL, controls or encoded `/` and `\`, and only canonical escapes.
    #[test]
    fn normalized_paths_are_in_normal_form(p in path_like()) {
        if let Ok(n) = normalize(&p) {
            check_normal_form(&n)?;
        }
    }

    /// Only unreserved characters are decoded: no raw delimiter appears that the input did not
    /// already carry raw (dot-segment removal may drop characters, never add them).
    #[test]
    fn decoding_never_introduces_delimiters(p in path_like()) {
        if let Ok(n) = normalize(&p) {
            for c in "?#[]@!$&'()*+,;=% \"<>^`{|}".chars() {
                let before = p.matches(c).count();
                let after = n.matches(c).count();
                prop_assert!(after <= before, "{:?} appeared in {:?} from {:?}", c, n, p);
            }
        }
    }

    /// An escaped delimiter (or any byte that is not unreserved) stays escaped, upper-cased:
    /// `%3f` becomes `%3F`, never `?`.
    #[test]
    fn escaped_delimiters_stay_escaped(
        segs in prop::collection::vec("[a-z0-9]{1,4}", 1..5),
        at in any::<prop::sample::Index>(),
        byte in kept_encoded_byte(),
        case in any::<(bool, bool)>(),
        trailing in any::<bool>(),
    ) {
        let i = at.index(segs.len());
        let build = |esc: &str| {
            let mut s = String::new();
            for (j, seg) in segs.iter().enumerate() {
                s.push('/');
                s.push_str(seg);
                if j == i {
                    s.push_str(esc);
                }
            }
            if trailing {
                s.push('/');
            }
            s
        };
        let raw = build(&escape(byte, case));
        let expected = build(&format!("%{byte:02X}"));
        let n = normalize(&raw);
        prop_assert_eq!(n.as_deref(), Ok(expected.as_str()));
    }
}

// ---------------------------------------------------------------------------------------------
// Routing on the normalized path

const ROUTE_SEGMENTS: &[&str] = &["a", "b", "c", "ab"];
const HOST: &str = "h.example";
const REQUEST_SEGMENTS: &[&str] = &[
    "a", "b", "c", "ab", "abc", "A", "a;x", "b;v=1", ";p", ".", "..", "%61", "",
];

#[derive(Debug, Clone)]
struct RouteSpec {
    path: PathMatch,
    methods: Option<Vec<Method>>,
    host: Option<String>,
}

fn route_spec() -> impl Strategy<Value = RouteSpec> {
    let path = (
        0u8..10,
        prop::collection::vec(select(ROUTE_SEGMENTS), 0..4),
        any::<bool>(),
    )
        .prop_map(|(kind, segs, trailing)| {
            let mut p = String::new();
            for s in &segs {
                p.push('/');
                p.push_str(s);
            }
            if p.is_empty() || (trailing && kind >= 5) {
                p.push('/');
            }
            match kind {
                0 => PathMatch::Any,
                1..=5 => PathMatch::Prefix(p),
                _ => PathMatch::Exact(p),
            }
        });
    let methods = prop::option::weighted(
        0.3,
        prop::sample::subsequence(vec![Method::GET, Method::POST, Method::DELETE], 1..=3),
    );
    let host = prop::option::weighted(0.3, Just(HOST.to_string()));
    (path, methods, host).prop_map(|(path, methods, host)| RouteSpec {
        path,
        methods,
        host,
    })
}

/// A request path, normalized (the only kind the table is ever asked about).
fn request_path() -> impl Strategy<Value = String> {
    let segs = prop::collection::vec(select(REQUEST_SEGMENTS), 0..6);
    (segs, any::<bool>()).prop_filter_map("refused path", |(segs, trailing)| {
        let mut raw = String::new();
        for s in &segs {
            raw.push('/');
            raw.push_str(s);
        }
        if raw.is_empty() || trailing {
            raw.push('/');
        }
        normalize(&raw).ok().map(|n| n.into_owned())
    })
}

fn request_method() -> impl Strategy<Value = Method> {
    select(vec![
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
    ])
}

fn request_host() -> impl Strategy<Value = Option<&'static str>> {
    select(vec![
        None,
        Some("h.example"),
        Some("H.Example:8443"),
        Some("h.example."),
        Some("other.example"),
    ])
}

/// Segment names as routing reads them: `;params` dropped.
fn names(path: &str) -> Vec<&str> {
    path.split('/').skip(1).map(segment_name).collect()
}

/// Whether the path starts with the prefix, whole segment by whole segment.
fn starts_with_segments(path: &str, prefix: &str) -> bool {
    let want: Vec<&str> = names(prefix)
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    let have: Vec<&str> = names(path).into_iter().filter(|s| !s.is_empty()).collect();
    have.len() >= want.len() && have[..want.len()] == want[..]
}

/// The specification of one route taking one request, written independently of the trie.
fn spec_matches(r: &RouteSpec, method: &Method, host: Option<&str>, path: &str) -> bool {
    let path_ok = match &r.path {
        PathMatch::Any => true,
        PathMatch::Prefix(p) => starts_with_segments(path, p),
        PathMatch::Exact(p) => names(p) == names(path),
    };
    let method_ok = r.methods.as_ref().is_none_or(|list| {
        list.contains(method) || (*method == Method::HEAD && list.contains(&Method::GET))
    });
    let host_ok = match (&r.host, host) {
        (None, _) => true,
        (Some(want), Some(got)) => host_name(got).eq_ignore_ascii_case(want),
        (Some(_), None) => false,
    };
    path_ok && method_ok && host_ok
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// The route found is the first one in file order that takes the request (brute force over
    /// the table), none is found only when none takes it, and a prefix route is only found for
    /// paths under its prefix: the path forwarded upstream (the same normalized string) is one
    /// the route legitimately covers.
    #[test]
    fn matcher_and_forwarded_path_agree(
        specs in prop::collection::vec(route_spec(), 1..7),
        method in request_method(),
        host in request_host(),
        path in request_path(),
    ) {
        let table = RouteTable::new(
            specs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let m = Matcher {
                        path: r.path.clone(),
                        methods: r.methods.clone(),
                        host: r.host.clone(),
                    };
                    (m, i)
                })
                .collect(),
        );
        // What the upstream receives is this very string: it is its own normal form.
        let renormalized = normalize(&path);
        prop_assert_eq!(renormalized.as_deref(), Ok(path.as_str()));

        let found = table.find(&method, host, &path);
        let expected = specs.iter().position(|r| spec_matches(r, &method, host, &path));
        prop_assert_eq!(found.map(|(i, _)| i), expected, "{:?} {:?} {:?}", method, host, path);
        if let Some((i, payload)) = found {
            prop_assert_eq!(*payload, i);
            // No earlier route takes it (first match wins).
            for earlier in &specs[..i] {
                prop_assert!(!spec_matches(earlier, &method, host, &path));
            }
            if let PathMatch::Prefix(p) = &specs[i].path {
                prop_assert!(starts_with_segments(&path, p), "{:?} not under {:?}", path, p);
                // `strip_prefix` removes exactly the prefix routing matched.
                prop_assert!(
                    strip_segments(&path, p).is_some(),
                    "{:?} not strippable by {:?}", path, p
                );
            }
        }
    }
}

/// The path as a servlet container reads it: `;params` dropped, the empty segments that leaves
/// merged (`/;x/admin` is Tomcat's `/admin`).
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Exact and prefix routes read a normalized path alike, and the way a servlet backend
    /// does: written as that reading, an exact route takes the path (so `/;x/admin` cannot
    /// dodge an exact `/admin` route into a public catch-all), and a prefix route takes it and
    /// `strip_prefix` removes it whole.
    #[test]
    fn exact_and_prefix_routes_read_a_path_alike(
        path in prop_oneof![request_path(), path_like().prop_filter_map("refused", |p| {
            normalize(&p).ok().map(|n| n.into_owned())
        })],
    ) {
        let reading = servlet_reading(&path);
        let route = |path| Matcher { path, methods: None, host: None };
        let table = RouteTable::new(vec![
            (route(PathMatch::Exact(reading.clone())), "exact"),
            (route(PathMatch::Prefix(reading.clone())), "prefix"),
            (route(PathMatch::Any), "catch-all"),
        ]);
        let found = table.find(&Method::GET, None, &path).map(|(_, name)| *name);
        prop_assert_eq!(found, Some("exact"), "{:?} read as {:?}", path, reading);
        prop_assert_eq!(strip_segments(&path, &reading), Some("/"), "{:?}", path);
    }
}

// ---------------------------------------------------------------------------------------------
// Identity-header stripping

/// Re-spells a lower-case `[a-z0-9-]` name: case flips, and `-` as `-`, `_` or `.`.
fn respell(name: &str, choices: &[(bool, u8)]) -> String {
    name.chars()
        .zip(choices.iter().cycle())
        .map(|(c, &(upper, dash))| match c {
            '-' => ['-', '_', '.'][usize::from(dash % 3)],
            c if upper => c.to_ascii_uppercase(),
            c => c,
        })
        .collect()
}

fn injected_name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9-]{0,15}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// After stripping, no header remains whose canonical name is an injected one, however it
    /// was spelled (case, `_`, `.`), and every unrelated header survives untouched.
    #[test]
    fn stripping_leaves_no_spelling_of_injected_names(
        injected in prop::collection::btree_set(injected_name(), 1..4),
        spellings in prop::collection::vec(
            (any::<prop::sample::Index>(), prop::collection::vec((any::<bool>(), 0u8..3), 1..17)),
            1..8,
        ),
        unrelated in prop::collection::vec("[a-zA-Z0-9_.-]{1,16}", 0..6),
    ) {
        let injected: Vec<String> = injected.into_iter().collect();
        let canonical: BTreeSet<String> = injected.iter().map(|n| canonical_name(n)).collect();
        let set = StripSet::new(
            injected.iter().map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()),
        );

        let mut headers = HeaderMap::new();
        let mut sent = Vec::new();
        for (which, choices) in &spellings {
            let spelled = respell(&injected[which.index(injected.len())], choices);
            prop_assert!(canonical.contains(&canonical_name(&spelled)));
            let name = HeaderName::from_bytes(spelled.as_bytes()).unwrap();
            headers.append(name, HeaderValue::from_static("forged"));
            sent.push(spelled);
        }
        let mut kept = Vec::new();
        for name in &unrelated {
            // Names the gateway drops for other reasons (hop-by-hop, overrides, managed
            // headers) are not "unrelated".
            if canonical.contains(&canonical_name(name))
                || dropped_from_requests(&name.to_ascii_lowercase(), &StripSet::default())
            {
                continue;
            }
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            headers.append(name.clone(), HeaderValue::from_static("keep"));
            kept.push(name);
        }

        clean_request(&mut headers, &set);

        for name in headers.keys() {
            prop_assert!(
                !canonical.contains(&canonical_name(name.as_str())),
                "{} survived (sent {:?}, injected {:?})", name, sent, injected
            );
        }
        for name in &kept {
            let values: Vec<_> = headers.get_all(name).iter().collect();
            prop_assert!(!values.is_empty(), "unrelated {} was removed", name);
            prop_assert!(values.iter().all(|v| *v == "keep"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The login redirect's `next`

const NEXT_PIECES: &[&str] = &[
    "/",
    "/",
    "//",
    "\\",
    "/\\",
    "\t",
    "\n",
    "\r",
    " ",
    "\0",
    "\u{7f}",
    "\u{b}",
    "\u{c}",
    "https:",
    "http://",
    "javascript:",
    "evil.com",
    "app",
    "a",
    "?x=1",
    "#f",
    "%2F",
    "%5C",
    "@",
    "\u{a0}",
    "\u{85}",
    "\u{2028}",
    "\u{3000}",
    "é",
];

fn next_like() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(select(NEXT_PIECES), 0..10).prop_map(|p| p.concat()),
        any::<String>(),
        "/[ -~]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// `safe_next` answers `/` or its input, and what it answers is a same-origin path: one
    /// leading `/` (never `//` or `/\`), no `\`, no ASCII whitespace or control characters
    /// (which browsers drop or fold, turning `/\t/evil` into `//evil`), at most 2 KiB.
    #[test]
    fn safe_next_returns_only_same_origin_paths(next in next_like()) {
        let got = safe_next(&next);
        prop_assert!(got == "/" || got == next, "{:?} -> {:?}", next, got);
        prop_assert!(got.starts_with('/'));
        prop_assert!(!got.starts_with("//") && !got.starts_with("/\\"), "{:?}", got);
        prop_assert!(!got.contains('\\'), "{:?}", got);
        prop_assert!(
            !got.chars().any(|c| c.is_ascii_whitespace() || c.is_ascii_control() || c == '\u{b}'),
            "{:?}", got
        );
        prop_assert!(got.len() <= 2048);
    }
}
