//! `routes[].upstream`: one URL (a Kubernetes Service, a single server) or a list of
//! endpoints that share the route's traffic. Each URL is parsed where the YAML is read;
//! a bad one is a config error naming it and its place in the list.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

use super::route::UpstreamTarget;

/// The upstream endpoints of a route: never empty; a list holds only `http(s)://` URLs
/// that differ in scheme, host or port, never in path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamList(Vec<UpstreamTarget>);

impl UpstreamList {
    /// One upstream (a URL or `builtin:echo`).
    pub fn one(target: UpstreamTarget) -> UpstreamList {
        UpstreamList(vec![target])
    }

    /// Checks a list of URLs (`texts`), naming the first bad one.
    pub fn parse_list<S: AsRef<str>>(texts: &[S]) -> Result<UpstreamList, String> {
        if texts.is_empty() {
            return Err("an empty upstream list; give one URL or a list of URLs".into());
        }
        let mut targets: Vec<UpstreamTarget> = Vec::with_capacity(texts.len());
        for (index, text) in texts.iter().enumerate() {
            let text = text.as_ref();
            let target =
                UpstreamTarget::parse(text).map_err(|err| format!("upstream[{index}]: {err}"))?;
            if texts.len() > 1 {
                let UpstreamTarget::Http(http) = &target else {
                    return Err(format!(
                        "upstream[{index}]: builtin:echo cannot be one of several endpoints"
                    ));
                };
                if let Some(UpstreamTarget::Http(first)) = targets.first()
                    && first.base_path != http.base_path
                {
                    return Err(format!(
                        "upstream[{index}]: {text:?} has another path than upstream[0]; the endpoints of a route share one path"
                    ));
                }
                if targets.contains(&target) {
                    return Err(format!("upstream[{index}]: {text:?} is listed twice"));
                }
            }
            targets.push(target);
        }
        Ok(UpstreamList(targets))
    }

    /// The first (or only) endpoint: what decides echo or HTTP, the base path.
    pub fn first(&self) -> &UpstreamTarget {
        // Never empty: both constructors see to it.
        &self.0[0]
    }

    pub fn targets(&self) -> &[UpstreamTarget] {
        &self.0
    }
}

impl fmt::Display for UpstreamList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [one] = self.0.as_slice() {
            return one.fmt(f);
        }
        f.write_str("[")?;
        for (index, target) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            target.fmt(f)?;
        }
        f.write_str("]")
    }
}

impl<'de> Deserialize<'de> for UpstreamList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = UpstreamList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an upstream URL or a list of upstream URLs")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UpstreamList, E> {
                UpstreamTarget::parse(v)
                    .map(UpstreamList::one)
                    .map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UpstreamList, A::Error> {
                let mut texts: Vec<String> = Vec::new();
                while let Some(text) = seq.next_element::<String>()? {
                    texts.push(text);
                }
                UpstreamList::parse_list(&texts).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_checked_and_bad_urls_named() {
        let list =
            UpstreamList::parse_list(&["http://10.0.0.1:8080", "http://10.0.0.2:8080"]).unwrap();
        assert_eq!(list.targets().len(), 2);
        assert_eq!(
            list.to_string(),
            "[http://10.0.0.1:8080, http://10.0.0.2:8080]"
        );
        for (bad, says) in [
            (vec![], "empty"),
            (vec!["http://a:1", "ftp://b"], "upstream[1]"),
            (vec!["http://a:1", "http://a:1"], "twice"),
            (vec!["http://a:1/x", "http://b:1/y"], "path"),
            (vec!["builtin:echo", "http://b:1"], "builtin:echo"),
        ] {
            let err = UpstreamList::parse_list(&bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
