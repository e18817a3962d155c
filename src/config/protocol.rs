//! `routes[].protocol` and `routes[].websocket`: how a route talks to its upstream.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ConfigError, RouteConfig, UpstreamTarget};

/// The HTTP version spoken to a route's upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (pooled keep-alive connections); over TLS for `https://`.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over cleartext (`http://`).
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`, `https://`).
    H2,
    /// Over TLS, what ALPN picks: HTTP/2 when the upstream offers it, else HTTP/1.1.
    Auto,
}

impl Protocol {
    /// HTTP/2 for sure (trailers and gRPC go through).
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::H2c | Protocol::H2)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::H2 => "h2",
            Protocol::Auto => "auto",
        })
    }
}

/// The protocol fits the upstream's scheme; `websocket` needs an upstream to relay to.
pub fn validate(route: &RouteConfig, at: &str) -> Result<(), ConfigError> {
    let scheme = match route.upstream.first() {
        UpstreamTarget::Echo => None,
        UpstreamTarget::Http(target) => Some(target.scheme.as_str()),
    };
    let fits = match (route.protocol, scheme) {
        (Protocol::Http1, _) => true,
        (_, None) => false,
        (Protocol::H2c, Some(scheme)) => scheme == "http",
        (Protocol::H2 | Protocol::Auto, Some(scheme)) => scheme == "https",
    };
    if !fits {
        return Err(ConfigError::at(
            format!("{at}.protocol"),
            format!(
                "protocol {} does not fit upstream {}: h2c is for http:// upstreams, h2 and auto for https://, builtin:echo takes http1 only",
                route.protocol, route.upstream
            ),
        ));
    }
    if route.websocket && scheme.is_none() {
        return Err(ConfigError::at(
            format!("{at}.websocket"),
            "builtin:echo cannot take WebSocket connections; use an http:// or https:// upstream",
        ));
    }
    if route.websocket
        && let Some(methods) = &route.matcher.methods
        && !methods.iter().any(|m| m == "GET")
    {
        return Err(ConfigError::at(
            format!("{at}.websocket"),
            "a WebSocket handshake is a GET; add GET to match.methods",
        ));
    }
    Ok(())
}
