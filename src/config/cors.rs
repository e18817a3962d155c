//! `cors`: the browser cross-origin settings, once for every route and per route.
//!
//! A block is written at the top level (the default of every route) and under a route
//! (`routes[].cors`), where it replaces the top-level block key by key: the keys a
//! route's block omits come from the top-level one. `cors: false` switches CORS off
//! (for every route at the top, for one route under it).

use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::{Config, ConfigError, Dur, METHODS, RouteConfig};

/// A `cors` key: `false`, or a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsSetting {
    Off,
    On(CorsBlock),
}

/// The keys of a `cors` block; each may be left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsBlock {
    /// Exact origins (`https://app.example.com`), or `["*"]` (never with credentials).
    pub allow_origins: Option<Vec<String>>,
    /// Methods a preflight may ask for; by default the route's methods.
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for (case-insensitive names).
    pub allow_headers: Option<Vec<String>>,
    /// Response headers the browser lets the page read beyond the safelisted ones.
    pub expose_headers: Option<Vec<String>>,
    pub allow_credentials: Option<bool>,
    /// How long a browser may cache a preflight answer.
    pub max_age: Option<Dur>,
}

impl CorsBlock {
    /// This block over `base`: each key this block sets wins.
    pub fn over(&self, base: &CorsBlock) -> CorsBlock {
        CorsBlock {
            allow_origins: self
                .allow_origins
                .clone()
                .or_else(|| base.allow_origins.clone()),
            allow_methods: self
                .allow_methods
                .clone()
                .or_else(|| base.allow_methods.clone()),
            allow_headers: self
                .allow_headers
                .clone()
                .or_else(|| base.allow_headers.clone()),
            expose_headers: self
                .expose_headers
                .clone()
                .or_else(|| base.expose_headers.clone()),
            allow_credentials: self.allow_credentials.or(base.allow_credentials),
            max_age: self.max_age.or(base.max_age),
        }
    }
}

impl<'de> Deserialize<'de> for CorsSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SettingVisitor;
        impl<'de> Visitor<'de> for SettingVisitor {
            type Value = CorsSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("false or a block such as { allow_origins: [https://app.example.com] }")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<CorsSetting, E> {
                if v {
                    Err(E::custom(
                        "cors: true says nothing about which origins; write a block with allow_origins",
                    ))
                } else {
                    Ok(CorsSetting::Off)
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CorsSetting, A::Error> {
                CorsBlock::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(CorsSetting::On)
            }
        }
        deserializer.deserialize_any(SettingVisitor)
    }
}

impl Config {
    /// The CORS block in force for `route`: its own over the top-level one, or none.
    pub fn route_cors(&self, route: &RouteConfig) -> Option<CorsBlock> {
        let global = match &self.cors {
            Some(CorsSetting::On(block)) => Some(block),
            _ => None,
        };
        match (&route.cors, global) {
            (Some(CorsSetting::Off), _) => None,
            (Some(CorsSetting::On(own)), Some(global)) => Some(own.over(global)),
            (Some(CorsSetting::On(own)), None) => Some(own.clone()),
            (None, global) => global.cloned(),
        }
    }
}

/// Checks the top-level block and every route's block in force.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    if let Some(CorsSetting::On(block)) = &config.cors {
        check_keys(block, "cors")?;
    }
    for (index, route) in config.routes.iter().enumerate() {
        let at = format!("routes[{index}].cors");
        if let Some(CorsSetting::On(block)) = &route.cors {
            check_keys(block, &at)?;
        }
        if let Some(block) = config.route_cors(route) {
            // Name the key that was written: the route's block, else the top-level one.
            let at = if route.cors.is_some() {
                at
            } else {
                "cors".into()
            };
            check_effective(&block, &at)?;
        }
    }
    Ok(())
}

/// The keys' own syntax.
fn check_keys(block: &CorsBlock, at: &str) -> Result<(), ConfigError> {
    if let Some(origins) = &block.allow_origins {
        for (index, origin) in origins.iter().enumerate() {
            let at = format!("{at}.allow_origins[{index}]");
            if origin == "*" {
                if origins.len() > 1 {
                    return Err(ConfigError::at(
                        at,
                        "\"*\" allows every origin; it cannot be listed beside others",
                    ));
                }
                continue;
            }
            check_origin(origin).map_err(|why| ConfigError::at(at, why))?;
        }
    }
    if let Some(methods) = &block.allow_methods {
        for (index, method) in methods.iter().enumerate() {
            if !METHODS.contains(&method.as_str()) {
                return Err(ConfigError::at(
                    format!("{at}.allow_methods[{index}]"),
                    format!("unknown method {method:?}; use upper-case names such as GET or POST"),
                ));
            }
        }
    }
    for (key, list) in [
        ("allow_headers", &block.allow_headers),
        ("expose_headers", &block.expose_headers),
    ] {
        for (index, name) in list.iter().flatten().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::at(
                    format!("{at}.{key}[{index}]"),
                    format!("{name:?} is not a valid header name"),
                ));
            }
        }
    }
    Ok(())
}

/// What the merged block must hold to be served.
fn check_effective(block: &CorsBlock, at: &str) -> Result<(), ConfigError> {
    let origins = block.allow_origins.as_deref().unwrap_or_default();
    if origins.is_empty() {
        return Err(ConfigError::at(
            format!("{at}.allow_origins"),
            "CORS needs at least one allowed origin (or write cors: false)",
        ));
    }
    if origins == ["*"] && block.allow_credentials == Some(true) {
        return Err(ConfigError::at(
            format!("{at}.allow_credentials"),
            "allow_origins [\"*\"] cannot go with allow_credentials: true (browsers refuse it); list the origins",
        ));
    }
    Ok(())
}

/// An origin as browsers send it: `scheme://host[:port]`, lower case, no path, no
/// default port.
fn check_origin(origin: &str) -> Result<(), String> {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err(format!(
            "{origin:?} is not an origin; write scheme://host[:port], e.g. https://app.example.com"
        ));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
        });
    let authority_ok = !authority.is_empty()
        && !authority.bytes().any(|b| b.is_ascii_uppercase())
        && authority.parse::<http::uri::Authority>().is_ok()
        && !authority.contains(['/', '@', '?', '#']);
    if !scheme_ok || !authority_ok {
        return Err(format!(
            "{origin:?} is not an origin as browsers send it: lower-case scheme://host[:port], no path or trailing slash"
        ));
    }
    let default_port = match scheme {
        "https" => Some(":443"),
        "http" => Some(":80"),
        _ => None,
    };
    if default_port.is_some_and(|port| authority.ends_with(port)) {
        return Err(format!(
            "{origin:?}: browsers leave the default port out of Origin; remove it"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_as_browsers_send_them() {
        assert!(check_origin("https://app.example.com").is_ok());
        assert!(check_origin("http://localhost:3000").is_ok());
        assert!(check_origin("http://[::1]:3000").is_ok());
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://App.example.com",
            "https://app.example.com:443",
            "https://u@app.example.com",
            "https://",
            "HTTPS://x",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_route_block_replaces_the_global_one_key_by_key() {
        let global = CorsBlock {
            allow_origins: Some(vec!["https://a.example".into()]),
            max_age: Some(Dur::secs(600)),
            ..CorsBlock::default()
        };
        let own = CorsBlock {
            allow_credentials: Some(true),
            max_age: Some(Dur::secs(5)),
            ..CorsBlock::default()
        };
        let merged = own.over(&global);
        assert_eq!(merged.allow_origins, global.allow_origins);
        assert_eq!(merged.allow_credentials, Some(true));
        assert_eq!(merged.max_age, Some(Dur::secs(5)));
    }
}
