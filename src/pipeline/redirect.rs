//! `Location` and `Content-Location` in upstream answers, rewritten back to the paths the
//! client knows, as nginx's default `proxy_redirect` does: the upstream sees
//! `<base path><path after strip_prefix>`, so a `Location: /orders/7` from it means
//! `<strip_prefix>/orders/7` to the client. An absolute URL naming the upstream's own
//! address (or any endpoint of its set) becomes such a path too — the client could not
//! reach that address anyway. Any other value (another host, a relative reference) is
//! left alone.

use http::header::{CONTENT_LOCATION, LOCATION};
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Uri};

use crate::config::UpstreamTarget;

/// What a route rewrites in its answers.
#[derive(Debug, Clone)]
pub struct Redirects {
    /// The route's `strip_prefix` (`""` for none).
    prefix: Box<str>,
    /// The upstream URL's path (`""` for none).
    base: Box<str>,
    /// Every endpoint's address.
    authorities: Vec<Authority>,
}

impl Redirects {
    /// `None` when there is nothing to rewrite for (builtin:echo).
    pub fn new(targets: &[UpstreamTarget], strip_prefix: Option<&str>) -> Option<Redirects> {
        let mut base = None;
        let mut authorities = Vec::new();
        for target in targets {
            if let UpstreamTarget::Http(http) = target {
                base.get_or_insert_with(|| http.base_path.clone());
                authorities.push(http.authority.clone());
            }
        }
        Some(Redirects {
            prefix: strip_prefix.unwrap_or("").into(),
            base: base?,
            authorities,
        })
    }

    /// Rewrites `Location` and `Content-Location` in an upstream's answer headers.
    pub fn rewrite(&self, headers: &mut HeaderMap) {
        for name in [LOCATION, CONTENT_LOCATION] {
            let Some(value) = headers.get(&name) else {
                continue;
            };
            if let Some(new) = value.to_str().ok().and_then(|v| self.rewritten(v))
                && let Ok(new) = HeaderValue::from_str(&new)
            {
                headers.insert(name, new);
            }
        }
    }

    /// The client's form of one value, or `None` to leave it.
    fn rewritten(&self, value: &str) -> Option<String> {
        let path = if value.starts_with('/') && !value.starts_with("//") {
            value
        } else if value.starts_with("http://") || value.starts_with("https://") {
            let uri: Uri = value.parse().ok()?;
            let authority = uri.authority()?;
            if !self
                .authorities
                .iter()
                .any(|a| same_authority(a, authority))
            {
                return None;
            }
            // Keep the path, query and fragment as written.
            let start = value.find(authority.as_str())? + authority.as_str().len();
            match &value[start..] {
                "" => "/",
                rest if rest.starts_with('/') => rest,
                _ => return None,
            }
        } else {
            return None;
        };
        let rest = path.strip_prefix(&*self.base)?;
        if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
            return None;
        }
        let rest = if rest.is_empty() || !rest.starts_with('/') {
            format!("/{rest}")
        } else {
            rest.to_string()
        };
        let out = format!("{}{rest}", self.prefix);
        (out != value).then_some(out)
    }
}

/// Host case-insensitive, port exact (an absent port is not compared to a default).
fn same_authority(a: &Authority, b: &Authority) -> bool {
    a.host().eq_ignore_ascii_case(b.host()) && a.port_u16() == b.port_u16()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirects(upstreams: &[&str], prefix: Option<&str>) -> Redirects {
        let targets: Vec<UpstreamTarget> = upstreams
            .iter()
            .map(|u| UpstreamTarget::parse(u).unwrap())
            .collect();
        Redirects::new(&targets, prefix).unwrap()
    }

    #[test]
    fn paths_go_back_under_the_prefix() {
        let r = redirects(
            &["http://10.0.0.1:8080", "http://10.0.0.2:8080"],
            Some("/api"),
        );
        for (from, to) in [
            ("/orders/7", Some("/api/orders/7")),
            ("/", Some("/api/")),
            ("/x?y=1#z", Some("/api/x?y=1#z")),
            ("http://10.0.0.2:8080/orders", Some("/api/orders")),
            ("HTTP://10.0.0.1:8080", None),
            ("http://10.0.0.1:8080", Some("/api/")),
            ("https://example.com/orders", None),
            ("http://10.0.0.1:9999/orders", None),
            ("//10.0.0.1:8080/x", None),
            ("orders/7", None),
        ] {
            assert_eq!(r.rewritten(from).as_deref(), to, "{from}");
        }
    }

    #[test]
    fn a_base_path_is_taken_off_first() {
        let r = redirects(&["http://up:9001/v1"], Some("/api"));
        assert_eq!(r.rewritten("/v1/orders").as_deref(), Some("/api/orders"));
        assert_eq!(r.rewritten("/v1").as_deref(), Some("/api/"));
        assert_eq!(r.rewritten("/v10/orders"), None);
        assert_eq!(r.rewritten("/other"), None);
        let r = redirects(&["http://up:9001"], None);
        assert_eq!(r.rewritten("/orders"), None, "nothing to change");
        assert_eq!(
            r.rewritten("http://up:9001/orders").as_deref(),
            Some("/orders")
        );
        assert!(Redirects::new(&[UpstreamTarget::Echo], Some("/api")).is_none());

        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, HeaderValue::from_static("http://up:9001/a"));
        headers.insert(CONTENT_LOCATION, HeaderValue::from_static("/b"));
        redirects(&["http://up:9001"], Some("/p")).rewrite(&mut headers);
        assert_eq!(headers[LOCATION], "/p/a");
        assert_eq!(headers[CONTENT_LOCATION], "/p/b");
    }
}
