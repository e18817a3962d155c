//! The path normaliser (`http::path::normalize_path`), route patterns
//! (`config::route::Pattern::parse`) and the router (`pipeline::router::Router`), checked
//! against a reference: a plain list matcher with the README's precedence.
//!
//! Input: lines. Line 1 is the method, line 2 the request path, each further line (up
//! to 16) a route: `PATTERN [METHOD,METHOD...]` (no list: any method). Without route
//! lines a fixed table is used (exact, param, prefix, catch-all, method-limited).
//!
//! Invariants besides "no panic":
//! - normalising is idempotent (equal values: a path with an escape that is already
//!   canonical, `/p%16`, comes back owned though unchanged), keeps the leading `/`, and
//!   keeps the path's meaning
//!   (percent-decoding the input and the output gives the same bytes);
//! - a pattern that parses displays as written;
//! - the router's answer is the reference's: the best-ranked matching route that takes
//!   the method (exact > param > longer prefix > shorter prefix; literal before param
//!   segment by segment; a method list before "any"; file order), else 405 with the
//!   union of the matching routes' methods, else 404.

#![no_main]

use std::collections::BTreeSet;

use http::Method;
use libfuzzer_sys::fuzz_target;
use scopegate::pipeline::router::{Lookup, MethodSet, Pattern, Router, Seg, normalize_path};

const FIXED: &[&str] = &[
    "/api/contacts/* GET,HEAD",
    "/api/contacts/* POST,PUT,PATCH",
    "/api/contacts/{id}",
    "/api/contacts/me GET",
    "/public/*",
    "/oauth/token POST",
    "/",
    "/*",
];

/// Percent-decodes every valid `%XX`; other bytes as they are.
fn decoded(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(value) = u8::from_str_radix(hex, 16)
        {
            out.push(value);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Does `pattern` match the normalised `path`? Segments are read as the router reads
/// them: split on `/`, a `;parameter` dropped, a param takes one non-empty segment.
fn matches(pattern: &Pattern, path: &str) -> bool {
    let segments: Vec<&str> = path[1..]
        .split('/')
        .map(|s| s.split_once(';').map_or(s, |(bare, _)| bare))
        .collect();
    let want = pattern.segments();
    let fits = |(seg, got): (&Seg, &&str)| match seg {
        Seg::Lit(lit) => **lit == **got,
        Seg::Param => !got.is_empty(),
    };
    if pattern.is_prefix() {
        segments.len() >= want.len() && want.iter().zip(&segments).all(fits)
    } else {
        segments.len() == want.len() && want.iter().zip(&segments).all(fits)
    }
}

/// The README's precedence as a sort key (smaller wins).
fn rank(index: usize, pattern: &Pattern, methods: MethodSet) -> impl Ord {
    let shape: Vec<u8> = pattern
        .segments()
        .iter()
        .map(|s| u8::from(*s == Seg::Param))
        .collect();
    let prefix_len = if pattern.is_prefix() {
        pattern.segments().len()
    } else {
        0
    };
    (
        pattern.class(),
        std::cmp::Reverse(prefix_len),
        shape,
        methods.is_any(),
        index,
    )
}

fn names(methods: MethodSet) -> BTreeSet<String> {
    methods
        .allow_header()
        .split(", ")
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect()
}

fn route(line: &str) -> Option<(Pattern, MethodSet)> {
    let (path, methods) = match line.split_once(' ') {
        Some((path, list)) => {
            let list: Vec<String> = list.split(',').map(str::to_string).collect();
            (path, MethodSet::from_names(Some(&list)))
        }
        None => (line, MethodSet::any()),
    };
    let pattern = Pattern::parse(path).ok()?;
    assert_eq!(pattern.as_str(), path);
    assert_eq!(pattern.to_string(), path);
    Some((pattern, methods))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let (Some(method), Some(path)) = (lines.next(), lines.next()) else {
        return;
    };
    let given: Vec<&str> = lines.take(16).collect();
    let lines: &[&str] = if given.is_empty() { FIXED } else { &given };
    let routes: Vec<(Pattern, MethodSet)> = lines.iter().filter_map(|l| route(l)).collect();

    let Ok(normal) = normalize_path(path) else {
        return;
    };
    assert!(normal.starts_with('/'));
    let again = normalize_path(&normal).expect("a normalised path normalises");
    assert_eq!(again, normal, "normalising twice changed {path:?}");
    assert_eq!(
        decoded(path),
        decoded(&normal),
        "normalising changed the meaning of {path:?}"
    );

    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let router = Router::new(&routes);
    let got = router.lookup(&normal, &method);

    let matching: Vec<usize> = (0..routes.len())
        .filter(|&i| matches(&routes[i].0, &normal))
        .collect();
    let best = matching
        .iter()
        .copied()
        .filter(|&i| routes[i].1.allows(&method))
        .min_by_key(|&i| rank(i, &routes[i].0, routes[i].1));
    match (got, best) {
        (Lookup::Found(index), Some(expected)) => {
            assert_eq!(index, expected, "{method} {normal:?}: wrong route")
        }
        (Lookup::MethodNotAllowed(allowed), None) => {
            assert!(!matching.is_empty(), "405 with no matching route");
            let union: BTreeSet<String> =
                matching.iter().flat_map(|&i| names(routes[i].1)).collect();
            assert_eq!(names(allowed), union, "{method} {normal:?}: wrong Allow");
        }
        (Lookup::NotFound, None) => {
            assert!(matching.is_empty(), "{method} {normal:?}: 404 but routes match")
        }
        (got, best) => panic!("{method} {normal:?}: router says {got:?}, reference {best:?}"),
    }
});
