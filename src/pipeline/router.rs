//! Route lookup: path patterns compiled into a segment trie.
//!
//! Precedence (README, "Routing"): exact > segment param > longer prefix > shorter prefix; a
//! method list beats "any"; ties go to the first route in the file. Every route is given
//! a rank once, at load, from that order. A lookup walks the trie (literal and param
//! branches, collecting prefix routes on the way) and keeps the best-ranked route whose
//! methods allow the request; if routes match the path but none the method, the answer is
//! 405 with their methods. A request falls back to a less specific route (a shorter
//! prefix, an "any" route beside a method-limited one) when the more specific one does
//! not take its method. No regex, no allocation on the hot path.
//!
//! Paths are normalised before lookup by [`normalize_path`](crate::http::path::normalize_path),
//! which refuses anything an upstream might read differently from us (dot segments,
//! encoded `/`, `\` and `.`).

use std::collections::HashMap;

use http::Method;

pub use crate::http::path::{PathError, normalize_path};

pub use crate::config::route::{Pattern, Seg};

/// A set of HTTP methods, or "any".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodSet {
    bits: u16,
    any: bool,
}

const KNOWN: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// A method name without lower-case letters (hyper has already checked it is a token).
///
/// ```
/// use scopegate::pipeline::router::is_upper_case_token;
/// assert!(is_upper_case_token("PROPFIND"));
/// assert!(!is_upper_case_token("Get"));
/// ```
pub fn is_upper_case_token(method: &str) -> bool {
    !method.is_empty() && !method.bytes().any(|b| b.is_ascii_lowercase())
}

fn method_bit(method: &Method) -> Option<u16> {
    KNOWN.iter().position(|m| m == method).map(|i| 1 << i)
}

impl MethodSet {
    pub fn any() -> MethodSet {
        MethodSet { bits: 0, any: true }
    }

    /// From a config list of known method names; `None` means any.
    pub fn from_names(names: Option<&[String]>) -> MethodSet {
        match names {
            None => MethodSet::any(),
            Some(names) => MethodSet {
                bits: names
                    .iter()
                    .filter_map(|n| Method::from_bytes(n.as_bytes()).ok())
                    .filter_map(|m| method_bit(&m))
                    .fold(0, |acc, bit| acc | bit),
                any: false,
            },
        }
    }

    /// True if a request with `method` may take a route with this set. Method names are
    /// case-sensitive (RFC 9110 §9.1): `get` is not `GET`, and a lower-case name is
    /// taken by no route, "any" included, so it can never fall back to a broader route
    /// than the one that refused it.
    pub fn allows(self, method: &Method) -> bool {
        match method_bit(method) {
            Some(bit) => self.any || self.bits & bit != 0,
            None => self.any && is_upper_case_token(method.as_str()),
        }
    }

    pub fn is_any(self) -> bool {
        self.any
    }

    fn union(self, other: MethodSet) -> MethodSet {
        MethodSet {
            bits: self.bits | other.bits,
            any: self.any || other.any,
        }
    }

    /// The `Allow` header value, e.g. `GET, HEAD`.
    pub fn allow_header(self) -> String {
        KNOWN
            .iter()
            .enumerate()
            .filter(|(i, _)| self.bits & (1 << i) != 0)
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Default)]
struct Node {
    lits: HashMap<Box<str>, Node, foldhash::fast::RandomState>,
    param: Option<Box<Node>>,
    /// Routes whose pattern ends exactly here.
    ends: Vec<u32>,
    /// Prefix routes (`/x/*`) rooted here.
    prefixes: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    route: usize,
    rank: u32,
    methods: MethodSet,
    /// Claims its path for itself ([`Router::with_reserved`]).
    reserved: bool,
}

/// What a walk of the trie found.
#[derive(Default)]
struct Found {
    /// The best-ranked route that takes the method.
    best: Option<Entry>,
    /// Methods of matching routes that do not take it.
    allowed: Option<MethodSet>,
    /// The same, for reserved routes only.
    reserved_allowed: Option<MethodSet>,
}

/// The answer of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Index of the route in the config's route list.
    Found(usize),
    /// Routes exist for this path, none for this method: these methods are allowed.
    MethodNotAllowed(MethodSet),
    NotFound,
}

/// Compiled routes. Built once per config load.
#[derive(Debug, Default)]
pub struct Router {
    root: Node,
    entries: Vec<Entry>,
}

impl Router {
    /// Compiles `(pattern, methods)` pairs, in file order.
    pub fn new(routes: &[(Pattern, MethodSet)]) -> Router {
        Router::with_reserved(&[], routes)
    }

    /// Compiles `reserved` routes (the built-in issuer's endpoints) then `routes`; route
    /// indexes count the reserved ones first. A path that a reserved route matches is
    /// reserved whole: the other routes never get it, whatever the method (a method the
    /// reserved route does not take is a 405).
    pub fn with_reserved(
        reserved: &[(Pattern, MethodSet)],
        routes: &[(Pattern, MethodSet)],
    ) -> Router {
        let all: Vec<(&(Pattern, MethodSet), bool)> = reserved
            .iter()
            .map(|r| (r, true))
            .chain(routes.iter().map(|r| (r, false)))
            .collect();
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.sort_by_key(|&i| {
            let ((pattern, methods), reserved) = all[i];
            let shape: Vec<u8> = pattern
                .segments()
                .iter()
                .map(|s| u8::from(*s == Seg::Param))
                .collect();
            (
                !reserved,
                pattern.class(),
                std::cmp::Reverse(if pattern.is_prefix() {
                    pattern.segments().len()
                } else {
                    0
                }),
                shape,
                methods.is_any(),
                i,
            )
        });
        let mut rank = vec![0u32; all.len()];
        for (position, &index) in order.iter().enumerate() {
            rank[index] = position as u32;
        }
        let mut router = Router::default();
        for (index, ((pattern, methods), reserved)) in all.into_iter().enumerate() {
            let entry_id = router.entries.len() as u32;
            router.entries.push(Entry {
                route: index,
                rank: rank[index],
                methods: *methods,
                reserved,
            });
            let mut node = &mut router.root;
            for seg in pattern.segments() {
                node = match seg {
                    Seg::Lit(lit) => node.lits.entry(lit.clone()).or_default(),
                    Seg::Param => node.param.get_or_insert_with(Default::default),
                };
            }
            if pattern.is_prefix() {
                node.prefixes.push(entry_id);
            } else {
                node.ends.push(entry_id);
            }
        }
        router
    }

    /// Finds the route for a normalised path (no query) and method.
    pub fn lookup(&self, path: &str, method: &Method) -> Lookup {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut found = Found::default();
        self.walk(&self.root, Some(rest), method, &mut found);
        if let Some(methods) = found.reserved_allowed
            && !found.best.is_some_and(|b| b.reserved)
        {
            return Lookup::MethodNotAllowed(methods);
        }
        match (found.best, found.allowed) {
            (Some(entry), _) => Lookup::Found(entry.route),
            (None, Some(methods)) => Lookup::MethodNotAllowed(methods),
            (None, None) => Lookup::NotFound,
        }
    }

    fn consider(&self, ids: &[u32], method: &Method, found: &mut Found) {
        for &id in ids {
            let entry = self.entries[id as usize];
            if entry.methods.allows(method) {
                if found.best.is_none_or(|b| entry.rank < b.rank) {
                    found.best = Some(entry);
                }
            } else {
                found.allowed = Some(found.allowed.unwrap_or_default().union(entry.methods));
                if entry.reserved {
                    found.reserved_allowed = Some(
                        found
                            .reserved_allowed
                            .unwrap_or_default()
                            .union(entry.methods),
                    );
                }
            }
        }
    }

    /// `rest` is the unmatched remainder of the path; `None` once every segment is used.
    fn walk(&self, node: &Node, rest: Option<&str>, method: &Method, found: &mut Found) {
        self.consider(&node.prefixes, method, found);
        let Some(rest) = rest else {
            self.consider(&node.ends, method, found);
            return;
        };
        let (segment, next) = match rest.split_once('/') {
            Some((segment, next)) => (segment, Some(next)),
            None => (rest, None),
        };
        // Match as a server that strips path parameters (`/admin;x` → `/admin`) would
        // read the path, so `;` cannot steer a request away from a protected route.
        let segment = segment.split_once(';').map_or(segment, |(bare, _)| bare);
        if let Some(child) = node.lits.get(segment) {
            self.walk(child, next, method, found);
        }
        if !segment.is_empty()
            && let Some(child) = &node.param
        {
            self.walk(child, next, method, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn router(routes: &[(&str, Option<&[&str]>)]) -> Router {
        let compiled: Vec<(Pattern, MethodSet)> = routes
            .iter()
            .map(|(path, methods)| {
                let names: Option<Vec<String>> =
                    methods.map(|m| m.iter().map(|s| s.to_string()).collect());
                (
                    Pattern::parse(path).unwrap(),
                    MethodSet::from_names(names.as_deref()),
                )
            })
            .collect();
        Router::new(&compiled)
    }

    #[test]
    fn precedence_exact_param_longer_prefix_shorter_prefix() {
        let r = router(&[
            ("/*", None),
            ("/api/*", None),
            ("/api/users/*", None),
            ("/api/users/{id}", None),
            ("/api/users/me", None),
        ]);
        let get = Method::GET;
        assert_eq!(r.lookup("/api/users/me", &get), Lookup::Found(4));
        assert_eq!(r.lookup("/api/users/42", &get), Lookup::Found(3));
        assert_eq!(r.lookup("/api/users/42/x", &get), Lookup::Found(2));
        assert_eq!(r.lookup("/api/users", &get), Lookup::Found(2));
        assert_eq!(r.lookup("/api/other", &get), Lookup::Found(1));
        assert_eq!(r.lookup("/elsewhere", &get), Lookup::Found(0));
        assert_eq!(r.lookup("/", &get), Lookup::Found(0));
    }

    #[test]
    fn prefix_matches_itself_and_below_never_siblings() {
        let r = router(&[("/x/*", None)]);
        for path in ["/x", "/x/", "/x/a", "/x/a/b"] {
            assert_eq!(r.lookup(path, &Method::GET), Lookup::Found(0), "{path}");
        }
        for path in ["/xyz", "/", "/y/x"] {
            assert_eq!(r.lookup(path, &Method::GET), Lookup::NotFound, "{path}");
        }
    }

    #[test]
    fn exact_is_exact() {
        let r = router(&[("/x", None), ("/", None)]);
        assert_eq!(r.lookup("/x", &Method::GET), Lookup::Found(0));
        assert_eq!(r.lookup("/x/", &Method::GET), Lookup::NotFound);
        assert_eq!(r.lookup("/", &Method::GET), Lookup::Found(1));
    }

    #[test]
    fn param_needs_a_non_empty_segment() {
        let r = router(&[("/u/{id}", None)]);
        assert_eq!(r.lookup("/u/1", &Method::GET), Lookup::Found(0));
        assert_eq!(r.lookup("/u/", &Method::GET), Lookup::NotFound);
        assert_eq!(r.lookup("/u/1/2", &Method::GET), Lookup::NotFound);
    }

    #[test]
    fn method_lists_beat_any_and_fall_back() {
        let r = router(&[
            ("/c/*", None),
            ("/c/*", Some(&["POST"])),
            ("/c/{id}", Some(&["DELETE"])),
        ]);
        assert_eq!(r.lookup("/c/1", &Method::POST), Lookup::Found(1));
        assert_eq!(r.lookup("/c/1", &Method::DELETE), Lookup::Found(2));
        // The param route does not take GET: fall back to the prefix "any" route.
        assert_eq!(r.lookup("/c/1", &Method::GET), Lookup::Found(0));
    }

    #[test]
    fn lower_case_methods_take_no_route() {
        let r = router(&[("/*", None), ("/c/*", Some(&["GET"]))]);
        for name in ["get", "Get", "gEt", "post", "propfind"] {
            let method = Method::from_bytes(name.as_bytes()).unwrap();
            assert!(
                !matches!(r.lookup("/c/1", &method), Lookup::Found(_)),
                "{name}"
            );
            assert!(
                !matches!(r.lookup("/x", &method), Lookup::Found(_)),
                "{name}"
            );
        }
        let propfind = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(r.lookup("/c/1", &propfind), Lookup::Found(0));
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let r = router(&[
            ("/c/*", Some(&["GET", "HEAD"])),
            ("/c/{id}", Some(&["DELETE"])),
        ]);
        match r.lookup("/c/1", &Method::PUT) {
            Lookup::MethodNotAllowed(set) => assert_eq!(set.allow_header(), "GET, HEAD, DELETE"),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.lookup("/d", &Method::PUT), Lookup::NotFound);
    }

    #[test]
    fn ties_go_to_the_first_route_and_literals_beat_params() {
        let r = router(&[
            ("/t/{a}/x", None),
            ("/t/y/{b}", None),
            ("/t/{a}/*", None),
            ("/t/y/*", None),
            ("/same", None),
            ("/same", None),
        ]);
        assert_eq!(r.lookup("/t/y/x", &Method::GET), Lookup::Found(1));
        assert_eq!(r.lookup("/t/y/z/w", &Method::GET), Lookup::Found(3));
        assert_eq!(r.lookup("/t/q/z/w", &Method::GET), Lookup::Found(2));
        assert_eq!(r.lookup("/same", &Method::GET), Lookup::Found(4));
    }

    #[test]
    fn path_parameters_do_not_change_the_route() {
        let r = router(&[("/*", None), ("/admin/*", None), ("/u/{id}", None)]);
        assert_eq!(r.lookup("/admin;x/users", &Method::GET), Lookup::Found(1));
        assert_eq!(
            r.lookup("/admin;jsessionid=1", &Method::GET),
            Lookup::Found(1)
        );
        assert_eq!(r.lookup("/u/7;v=1", &Method::GET), Lookup::Found(2));
        // An empty segment before ';' is no value for a parameter.
        assert_eq!(r.lookup("/u/;v=1", &Method::GET), Lookup::Found(0));
        assert!(Pattern::parse("/a;b").is_err());
    }

    #[test]
    fn patterns_are_validated() {
        for bad in [
            "x", "/a/*/b", "/a/{}", "/a/{id", "/a//b", "/a/../b", "/a b", "/a/%2F", "//*",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        for good in [
            "/",
            "/*",
            "/a",
            "/a/",
            "/a/*",
            "/a/{id}",
            "/a/{id}/*",
            "/v1:batch",
        ] {
            assert!(Pattern::parse(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn path_normalisation_refuses_tricks() {
        assert_eq!(normalize_path("/a/b").unwrap(), "/a/b");
        assert!(matches!(normalize_path("/a/b").unwrap(), Cow::Borrowed(_)));
        assert_eq!(normalize_path("/%61pi/%7e%2d").unwrap(), "/api/~-");
        assert_eq!(normalize_path("/a%20b%3f").unwrap(), "/a%20b%3F");
        assert_eq!(normalize_path("/a/").unwrap(), "/a/");
        assert_eq!(normalize_path("/").unwrap(), "/");
        let refused = [
            ("/a/../b", PathError::DotSegment),
            ("/a/./b", PathError::DotSegment),
            ("/..", PathError::DotSegment),
            ("/a/..;x/b", PathError::DotSegment),
            ("/a/%2e%2e/b", PathError::EncodedSeparator),
            ("/a/%2E/b", PathError::EncodedSeparator),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%5Cb", PathError::EncodedSeparator),
            ("/a%00", PathError::EncodedSeparator),
            ("/a\\b", PathError::Backslash),
            ("/a//b", PathError::EmptySegment),
            ("//a", PathError::EmptySegment),
            ("/a%zz", PathError::BadEncoding),
            ("/a%4", PathError::BadEncoding),
            ("a", PathError::NotAbsolute),
        ];
        for (path, expected) in refused {
            assert_eq!(normalize_path(path).unwrap_err(), expected, "{path}");
        }
    }
}
