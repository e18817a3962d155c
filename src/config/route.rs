//! The parsed forms of a route's strings: the `match.path` pattern and the upstream
//! URL. Parsed once, where the YAML is read, so a bad value is a config error with its
//! key path and line, and nothing later parses them again.

use std::fmt;

use http::HeaderValue;
use http::uri::{Authority, Scheme, Uri};
use serde::Deserialize;

use crate::http::path::normalize_path;

/// One segment of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Lit(Box<str>),
    Param,
}

/// A parsed `match.path`: `/x` exact, `/x/*` prefix, `/x/{id}` one-segment param.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Pattern {
    /// As written in the file.
    text: Box<str>,
    segs: Vec<Seg>,
    prefix: bool,
}

impl TryFrom<String> for Pattern {
    type Error = String;

    fn try_from(text: String) -> Result<Pattern, String> {
        Pattern::parse(&text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Pattern {
    /// Parses a route path pattern, with a message a person can act on.
    pub fn parse(path: &str) -> Result<Pattern, String> {
        if !path.starts_with('/') {
            return Err(format!("path {path:?} must start with '/'"));
        }
        let (body, prefix) = match path.strip_suffix("/*") {
            Some(body) => (body, true),
            None => (path, false),
        };
        let mut segs = Vec::new();
        if !(prefix && body.is_empty()) {
            let parts: Vec<&str> = body[1..].split('/').collect();
            let last = parts.len() - 1;
            for (index, part) in parts.into_iter().enumerate() {
                if part.is_empty() && (index != last || prefix) {
                    return Err(format!(
                        "path {path:?} has an empty segment ('//'); such requests are refused, so the route could never match"
                    ));
                }
                if part.starts_with('{') || part.ends_with('}') {
                    let name = part
                        .strip_prefix('{')
                        .and_then(|p| p.strip_suffix('}'))
                        .filter(|n| {
                            !n.is_empty()
                                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        })
                        .ok_or_else(|| {
                            format!(
                                "segment {part:?} in {path:?}: a parameter is a whole segment like {{id}}"
                            )
                        })?;
                    let _ = name;
                    segs.push(Seg::Param);
                    continue;
                }
                if part.contains('*') {
                    return Err(format!(
                        "path {path:?}: '*' is only allowed as the last segment, as in /x/*"
                    ));
                }
                if part.contains(';') {
                    return Err(format!(
                        "path {path:?}: ';' path parameters are ignored when matching, so a pattern cannot contain them"
                    ));
                }
                if part == "." || part == ".." {
                    return Err(format!("path {path:?} has a dot segment"));
                }
                if !part.bytes().all(is_pchar_byte) {
                    return Err(format!(
                        "path {path:?} has characters that must be percent-encoded"
                    ));
                }
                let slashed = format!("/{part}");
                let normalized =
                    normalize_path(&slashed).map_err(|err| format!("path {path:?}: {err}"))?;
                segs.push(Seg::Lit(normalized[1..].into()));
            }
        }
        Ok(Pattern {
            text: path.into(),
            segs,
            prefix,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn segments(&self) -> &[Seg] {
        &self.segs
    }

    /// `/x/*`: matches `/x` and everything below it.
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }

    /// Specificity class: 0 exact, 1 with a parameter, 2 prefix.
    pub fn class(&self) -> u8 {
        if self.prefix {
            2
        } else if self.segs.contains(&Seg::Param) {
            1
        } else {
            0
        }
    }
}

/// RFC 3986 `pchar` (with `%` of a pct-encoded triplet).
fn is_pchar_byte(b: u8) -> bool {
    crate::http::is_unreserved_or_sub_delim(b) || matches!(b, b':' | b'@' | b'%')
}

/// Where a route forwards to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum UpstreamTarget {
    /// `builtin:echo`: answers with the request as it would have been forwarded.
    Echo,
    Http(HttpTarget),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix of the upstream URL without a trailing slash (`""` for none).
    pub base_path: Box<str>,
    /// Value for the `Host` header sent upstream.
    pub host: HeaderValue,
}

impl UpstreamTarget {
    /// Parses `builtin:echo` or an `http(s)://host[:port][/base]` URL.
    pub fn parse(text: &str) -> Result<UpstreamTarget, String> {
        if text == "builtin:echo" {
            return Ok(UpstreamTarget::Echo);
        }
        let uri: Uri = text.parse().map_err(|_| {
            format!("{text:?} is not a URL; use http://host:port, https://host or builtin:echo")
        })?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => {
                return Err(format!(
                    "{text:?}: an upstream is an http:// or https:// URL, or builtin:echo"
                ));
            }
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .cloned()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{text:?}: credentials in an upstream URL are not supported"
            ));
        }
        if uri.query().is_some() || text.contains('#') {
            return Err(format!(
                "{text:?}: an upstream URL has no query or fragment"
            ));
        }
        let base_path = uri.path().trim_end_matches('/');
        normalize_path(if base_path.is_empty() { "/" } else { base_path })
            .map_err(|err| format!("{text:?}: {err}"))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("{text:?} has an invalid host"))?;
        Ok(UpstreamTarget::Http(HttpTarget {
            scheme,
            authority,
            base_path: base_path.into(),
            host,
        }))
    }
}

impl TryFrom<String> for UpstreamTarget {
    type Error = String;

    fn try_from(text: String) -> Result<UpstreamTarget, String> {
        UpstreamTarget::parse(&text)
    }
}

impl fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamTarget::Echo => f.write_str("builtin:echo"),
            UpstreamTarget::Http(target) => {
                write!(
                    f,
                    "{}://{}{}",
                    target.scheme, target.authority, target.base_path
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_urls() {
        assert_eq!(
            UpstreamTarget::parse("builtin:echo").unwrap(),
            UpstreamTarget::Echo
        );
        let UpstreamTarget::Http(t) = UpstreamTarget::parse("http://127.0.0.1:9001/base/").unwrap()
        else {
            panic!()
        };
        assert_eq!(t.authority.as_str(), "127.0.0.1:9001");
        assert_eq!(&*t.base_path, "/base");
        assert_eq!(t.scheme, Scheme::HTTP);
        for bad in [
            "builtin:nope",
            "ftp://x",
            "127.0.0.1:9001",
            "http://",
            "http://u:p@x",
            "http://x/?q=1",
            "/just/a/path",
            "http://x/a/../b",
        ] {
            assert!(UpstreamTarget::parse(bad).is_err(), "{bad:?}");
        }
    }
}
