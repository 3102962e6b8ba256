//! The route table: first match in file order wins. Paths are matched segment by segment
//! through a prefix trie whose nodes hold file-order indices, so a table of thousands of routes
//! costs a walk of the request's segments, not a scan of every rule.

use std::collections::HashMap;

use http::Method;

use crate::path::segment_name;

pub mod compile;

pub use compile::{Assertion, HeaderClaim, Route, RouteContext, segment_prefix_of};

/// The path condition of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Every path.
    Any,
    /// Exactly this normalized path (`;` parameters ignored).
    Exact(String),
    /// This path and everything below it, segment-aware: `/admin` takes `/admin`, `/admin/`
    /// and `/admin/x`, never `/administrator`.
    Prefix(String),
}

impl PathMatch {
    /// The paths it takes as one low-cardinality template (`/api/*`, `/login`, `/*`), the
    /// form of OpenTelemetry's `http.route`.
    pub fn template(&self) -> String {
        match self {
            PathMatch::Any => "/*".to_owned(),
            PathMatch::Exact(p) => p.clone(),
            PathMatch::Prefix(p) => format!("{}/*", p.trim_end_matches('/')),
        }
    }
}

/// Every condition of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub path: PathMatch,
    /// `None` takes every method. A route that takes GET also takes HEAD (RFC 9110 §9.3.2).
    pub methods: Option<Vec<Method>>,
    /// Lower-case host without port or trailing dot.
    pub host: Option<String>,
}

/// How one route's conditions judge a request, condition by condition (`authgate explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteCheck {
    pub path: bool,
    pub method: bool,
    pub host: bool,
}

impl RouteCheck {
    /// Whether the route takes the request.
    pub fn matched(&self) -> bool {
        self.path && self.method && self.host
    }
}

impl Matcher {
    /// The method and host conditions: the check [`RouteTable::find`] runs on every route the
    /// trie yields for the path, and [`Matcher::check`] runs on every route.
    fn accepts(&self, method: &Method, host: Option<&str>) -> bool {
        self.method_ok(method) && self.host_ok(host)
    }

    /// The path condition, route by route: what the trie walk of [`RouteTable::find`] computes
    /// for all routes at once (segment names compared, `;` parameters ignored, empty segments
    /// skipped). The unit tests check that the first route whose [`Matcher::check`] matches is
    /// always the route `find` returns.
    pub fn path_ok(&self, path: &str) -> bool {
        match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => exact_key(p) == exact_key(path),
            PathMatch::Prefix(p) => segment_starts_with(path, p),
        }
    }

    /// Every condition of this route on one request, each on its own (none short-circuits,
    /// so an explanation can name all that fail).
    pub fn check(&self, method: &Method, host: Option<&str>, path: &str) -> RouteCheck {
        RouteCheck {
            path: self.path_ok(path),
            method: self.method_ok(method),
            host: self.host_ok(host),
        }
    }

    fn method_ok(&self, method: &Method) -> bool {
        match &self.methods {
            None => true,
            Some(list) => {
                list.contains(method) || (*method == Method::HEAD && list.contains(&Method::GET))
            }
        }
    }

    fn host_ok(&self, host: Option<&str>) -> bool {
        match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(got)) => host_name(got).eq_ignore_ascii_case(want),
            (Some(_), None) => false,
        }
    }
}

/// The host part of a `Host` value: port and one trailing dot removed.
pub fn host_name(host: &str) -> &str {
    let name = if host.starts_with('[') {
        // IPv6 literal: keep through the closing bracket.
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// Whether `value` is a valid `host[:port]` (RFC 3986 §3.2.2-3.2.3, RFC 9112 §3.2): a
/// registered name of letters, digits, `-`, `.` and `_` (container names use it), or an IPv6
/// literal in brackets, then an optional port. Userinfo (`user@host`), percent-encoding and
/// every other byte are refused: URL parsers disagree on what such hosts mean, so the gateway
/// and a backend could see different hosts.
pub fn is_valid_authority(value: &[u8]) -> bool {
    let (host_ok, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&value[1..end]).ok();
        (
            literal.is_some_and(|l| l.parse::<std::net::Ipv6Addr>().is_ok()),
            &value[end + 1..],
        )
    } else {
        let (host, port) = match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], &value[i..]),
            None => (value, &value[value.len()..]),
        };
        let name_ok = !host.is_empty()
            && host
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        (name_ok, port)
    };
    let port_ok = match port.split_first() {
        None => true,
        // `host:` (an empty port) is allowed by RFC 3986.
        Some((b':', digits)) => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits)
                    .ok()
                    .is_some_and(|d| d.is_empty() || d.parse::<u16>().is_ok())
        }
        Some(_) => false,
    };
    host_ok && port_ok
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Prefix routes ending at this node, ascending file order.
    prefix: Vec<u32>,
}

/// A compiled route table over route payloads `T`.
#[derive(Debug)]
pub struct RouteTable<T> {
    entries: Vec<(Matcher, T)>,
    root: Node,
    exact: HashMap<Box<str>, Vec<u32>>,
}

/// The routing key of an exact path: segment names without `;` parameters.
fn exact_key(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains(';') {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut key = String::with_capacity(path.len());
    for seg in path.split('/').skip(1) {
        key.push('/');
        key.push_str(segment_name(seg));
    }
    std::borrow::Cow::Owned(key)
}

fn prefix_segments(prefix: &str) -> impl Iterator<Item = &str> {
    prefix
        .split('/')
        .skip(1)
        .map(segment_name)
        .filter(|s| !s.is_empty())
}

impl<T> RouteTable<T> {
    /// Builds the table; `entries` are in file order.
    pub fn new(entries: Vec<(Matcher, T)>) -> Self {
        let mut root = Node::default();
        let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        for (index, (matcher, _)) in entries.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            match &matcher.path {
                PathMatch::Any => root.prefix.push(index),
                PathMatch::Prefix(p) => {
                    let mut node = &mut root;
                    for seg in prefix_segments(p) {
                        node = node.children.entry(seg.into()).or_default();
                    }
                    node.prefix.push(index);
                }
                PathMatch::Exact(p) => exact.entry(exact_key(p).into()).or_default().push(index),
            }
        }
        RouteTable {
            entries,
            root,
            exact,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The route at `index` (an index [`RouteTable::find`] returned).
    pub fn get(&self, index: usize) -> &T {
        &self.entries[index].1
    }

    /// The conditions of the route at `index`.
    pub fn matcher(&self, index: usize) -> &Matcher {
        &self.entries[index].0
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Matcher, T)> {
        self.entries.iter()
    }

    /// The first route in file order that takes this request. `path` must be normalized.
    pub fn find(&self, method: &Method, host: Option<&str>, path: &str) -> Option<(usize, &T)> {
        let ok = |i: &u32| self.entries[*i as usize].0.accepts(method, host);
        let first = |list: &[u32]| list.iter().copied().find(|i| ok(i));

        let mut best = self
            .exact
            .get(exact_key(path).as_ref())
            .and_then(|l| first(l));
        let mut node = &self.root;
        let consider = |list: &[u32], best: &mut Option<u32>| {
            // Lists are in ascending order, so once the head is past `best`, nothing here wins.
            if list
                .first()
                .is_some_and(|head| best.is_none_or(|b| *head < b))
                && let Some(i) = first(list)
            {
                *best = Some(best.map_or(i, |b| b.min(i)));
            }
        };
        consider(&node.prefix, &mut best);
        for seg in path.split('/').skip(1).map(segment_name) {
            if seg.is_empty() {
                continue;
            }
            match node.children.get(seg) {
                Some(child) => node = child,
                None => break,
            }
            consider(&node.prefix, &mut best);
        }
        best.map(|i| (i as usize, &self.entries[i as usize].1))
    }

    /// Every route's [`Matcher::check`] on one request, in file order. The first that matched
    /// is the route [`RouteTable::find`] returns: the trie only finds it faster.
    pub fn check_all(&self, method: &Method, host: Option<&str>, path: &str) -> Vec<RouteCheck> {
        self.entries
            .iter()
            .map(|(m, _)| m.check(method, host, path))
            .collect()
    }

    /// Pairs `(shadowed, by)`: route `shadowed` can never match because the earlier route `by`
    /// takes every request it would take.
    pub fn shadowed(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (j, (later, _)) in self.entries.iter().enumerate() {
            if let Some(i) = self.entries[..j]
                .iter()
                .position(|(earlier, _)| covers(earlier, later))
            {
                out.push((j, i));
            }
        }
        out
    }
}

fn segment_starts_with(path: &str, prefix: &str) -> bool {
    let mut want = prefix_segments(prefix);
    let mut have = prefix_segments(path);
    loop {
        match (want.next(), have.next()) {
            (None, _) => return true,
            (Some(w), Some(h)) if w == h => continue,
            _ => return false,
        }
    }
}

/// Whether every request `later` takes is also taken by `earlier`.
fn covers(earlier: &Matcher, later: &Matcher) -> bool {
    let path = match (&earlier.path, &later.path) {
        (PathMatch::Any, _) => true,
        (PathMatch::Prefix(p), PathMatch::Prefix(q) | PathMatch::Exact(q)) => {
            segment_starts_with(q, p)
        }
        (PathMatch::Exact(a), PathMatch::Exact(b)) => exact_key(a) == exact_key(b),
        _ => false,
    };
    let methods = match (&earlier.methods, &later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(_), Some(want)) => want.iter().all(|m| earlier.method_ok(m)),
    };
    let host = match (&earlier.host, &later.host) {
        (None, _) => true,
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        (Some(_), None) => false,
    };
    path && methods && host
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn authorities_are_host_and_optional_port() {
        for good in [
            "app.example.com",
            "APP.example.com.",
            "app:8080",
            "app:",
            "my_service:3000",
            "10.0.0.1:80",
            "[::1]:8443",
            "[2001:db8::1]",
        ] {
            assert!(is_valid_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "evil@admin.example.com",
            "adm%69n.example.com",
            "admin.example.com:99999",
            "admin.example.com:8o",
            "admin example.com",
            "admin.example.com/x",
            "[::1",
            "[nope]:80",
            "[::1]x",
            ":80",
            "a\\b",
            "host:80:80",
        ] {
            assert!(!is_valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    fn m(path: PathMatch) -> Matcher {
        Matcher {
            path,
            methods: None,
            host: None,
        }
    }
    fn prefix(p: &str) -> Matcher {
        m(PathMatch::Prefix(p.into()))
    }
    fn exact(p: &str) -> Matcher {
        m(PathMatch::Exact(p.into()))
    }

    fn find<'a>(
        t: &'a RouteTable<&'static str>,
        method: &str,
        host: Option<&str>,
        path: &str,
    ) -> Option<&'a str> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        t.find(&method, host, path).map(|(_, name)| *name)
    }

    #[test]
    fn prefixes_are_segment_aware() {
        let t = RouteTable::new(vec![(prefix("/admin"), "admin")]);
        assert_eq!(find(&t, "GET", None, "/admin"), Some("admin"));
        assert_eq!(find(&t, "GET", None, "/admin/"), Some("admin"));
        assert_eq!(find(&t, "GET", None, "/admin/x/y"), Some("admin"));
        assert_eq!(
            find(&t, "GET", None, "/admin;jsessionid=1/x"),
            Some("admin")
        );
        assert_eq!(find(&t, "GET", None, "/administrator"), None);
        assert_eq!(find(&t, "GET", None, "/"), None);
        assert_eq!(find(&t, "GET", None, "/ADMIN"), None);
    }

    #[test]
    fn first_match_in_file_order_wins() {
        let t = RouteTable::new(vec![
            (prefix("/a/b"), "deep"),
            (prefix("/a"), "shallow"),
            (m(PathMatch::Any), "any"),
            (exact("/a/b/c"), "exact-late"),
        ]);
        assert_eq!(find(&t, "GET", None, "/a/b/c"), Some("deep"));
        assert_eq!(find(&t, "GET", None, "/a/x"), Some("shallow"));
        assert_eq!(find(&t, "GET", None, "/zzz"), Some("any"));

        let t = RouteTable::new(vec![(exact("/a/b"), "exact"), (prefix("/a"), "prefix")]);
        assert_eq!(find(&t, "GET", None, "/a/b"), Some("exact"));
        assert_eq!(find(&t, "GET", None, "/a/b/"), Some("prefix"));
        assert_eq!(find(&t, "GET", None, "/a/b;x"), Some("exact"));
    }

    #[test]
    fn methods_and_hosts_filter_and_fall_through() {
        let mut admin = prefix("/admin");
        admin.methods = Some(vec![Method::GET]);
        admin.host = Some("admin.example.com".into());
        let t = RouteTable::new(vec![(admin, "admin"), (prefix("/"), "fallback")]);
        assert_eq!(
            find(&t, "GET", Some("Admin.Example.COM:8080"), "/admin"),
            Some("admin")
        );
        assert_eq!(
            find(&t, "HEAD", Some("admin.example.com."), "/admin"),
            Some("admin")
        );
        assert_eq!(
            find(&t, "POST", Some("admin.example.com"), "/admin"),
            Some("fallback")
        );
        assert_eq!(
            find(&t, "GET", Some("other.example.com"), "/admin"),
            Some("fallback")
        );
        assert_eq!(find(&t, "GET", None, "/admin"), Some("fallback"));
    }

    #[test]
    fn host_names_drop_port_and_trailing_dot() {
        assert_eq!(host_name("a.example:80"), "a.example");
        assert_eq!(host_name("a.example."), "a.example");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
    }

    #[test]
    fn the_last_of_many_routes_is_found() {
        let mut entries: Vec<(Matcher, &'static str)> = (0..10_000)
            .map(|i| (prefix(&format!("/svc{i}")), "other"))
            .collect();
        entries.push((prefix("/target"), "target"));
        let t = RouteTable::new(entries);
        assert_eq!(find(&t, "GET", None, "/target/x"), Some("target"));
        assert_eq!(find(&t, "GET", None, "/svc9999"), Some("other"));
    }

    #[test]
    fn checks_name_each_failing_condition() {
        let mut admin = prefix("/admin");
        admin.methods = Some(vec![Method::GET]);
        admin.host = Some("admin.example.com".into());
        let get = Method::GET;
        let all = RouteCheck {
            path: true,
            method: true,
            host: true,
        };
        assert_eq!(
            admin.check(&get, Some("admin.example.com:443"), "/admin/x"),
            all
        );
        assert_eq!(
            admin.check(&Method::POST, Some("other"), "/administrator"),
            RouteCheck {
                path: false,
                method: false,
                host: false
            }
        );
        assert!(
            admin
                .check(&Method::HEAD, Some("admin.example.com"), "/admin;x")
                .matched()
        );
        assert!(!exact("/a/b").path_ok("/a/b/"));
        assert!(exact("/a/b").path_ok("/a;p/b"));
        assert!(m(PathMatch::Any).path_ok("/anything"));
    }

    /// Tables and requests built from a few segments, methods and hosts, so that prefixes
    /// nest, exact paths collide with prefixes, `;` parameters and trailing slashes appear,
    /// and method and host conditions push the answer to later routes.
    fn tricky_table() -> impl Strategy<Value = Vec<Matcher>> {
        let segs = prop::collection::vec(prop::sample::select(vec!["a", "b", "ab"]), 0..3);
        let path = (0..3u8, segs).prop_map(|(kind, segs)| {
            let p = format!("/{}", segs.join("/"));
            match kind {
                0 => PathMatch::Any,
                1 => PathMatch::Exact(p),
                _ => PathMatch::Prefix(p),
            }
        });
        let methods = prop::option::of(prop::sample::subsequence(
            vec![Method::GET, Method::POST, Method::HEAD],
            1..3,
        ));
        let host = prop::option::of(prop::sample::select(vec!["a.example", "b.example"]));
        let matcher = (path, methods, host).prop_map(|(path, methods, host)| Matcher {
            path,
            methods,
            host: host.map(str::to_owned),
        });
        prop::collection::vec(matcher, 1..8)
    }

    fn tricky_request() -> impl Strategy<Value = (Method, Option<String>, String)> {
        let seg = prop::sample::select(vec!["a", "b", "ab", "a;x=1", "", ".", ".."]);
        let path = (prop::collection::vec(seg, 0..4), any::<bool>()).prop_map(|(segs, slash)| {
            let raw = format!("/{}{}", segs.join("/"), if slash { "/" } else { "" });
            crate::path::normalize(&raw).map_or_else(|_| "/".to_owned(), |p| p.into_owned())
        });
        let method = prop::sample::select(vec![Method::GET, Method::POST, Method::HEAD]);
        let host = prop::option::of(prop::sample::select(vec![
            "a.example",
            "A.EXAMPLE.:8080",
            "b.example",
            "c.example",
        ]));
        (method, host.prop_map(|h| h.map(str::to_owned)), path)
    }

    proptest::proptest! {
        /// `authgate explain` reads routes one by one with `check`; the gateway walks the
        /// trie. Both must always pick the same route.
        #[test]
        fn the_first_route_that_checks_is_the_route_find_returns(
            table in tricky_table(),
            requests in prop::collection::vec(tricky_request(), 1..16),
        ) {
            let entries = table.into_iter().enumerate().map(|(i, m)| (m, i)).collect();
            let t = RouteTable::new(entries);
            for (method, host, path) in &requests {
                let found = t.find(method, host.as_deref(), path).map(|(i, _)| i);
                let checked = t
                    .check_all(method, host.as_deref(), path)
                    .iter()
                    .position(RouteCheck::matched);
                proptest::prop_assert_eq!(found, checked, "{} {:?} {}", method, host, path);
            }
        }
    }

    #[test]
    fn shadowed_routes_are_reported() {
        let mut get_only = prefix("/api");
        get_only.methods = Some(vec![Method::GET]);
        let mut head_only = prefix("/api/x");
        head_only.methods = Some(vec![Method::HEAD]);
        let mut hosted = prefix("/api/y");
        hosted.host = Some("h".into());
        let t = RouteTable::new(vec![
            (prefix("/admin"), "admin"),
            (prefix("/admin/users"), "users"),
            (exact("/admin"), "exact"),
            (prefix("/administrator"), "other"),
            (get_only, "get"),
            (head_only, "head"),
            (prefix("/api/z"), "all-methods"),
            (hosted, "hosted"),
            (m(PathMatch::Any), "any"),
            (prefix("/late"), "late"),
        ]);
        assert_eq!(t.shadowed(), vec![(1, 0), (2, 0), (5, 4), (9, 8)]);
    }
}
