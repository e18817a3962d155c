//! A route's limits and upstream choices: `rate_limit`, `max_body`, `timeouts`,
//! `balance` and `health`; and `server.trusted_proxies`, which says whose
//! `x-forwarded-for` names the client for `rate_limit.key: ip`. Parsed and checked once,
//! where the YAML is read.

use std::fmt;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AuthMode, ConfigError, Dur};

/// `routes[].timeouts`: overrides of the server's timeouts for one route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeouts {
    /// From sending the request to the upstream's answer head.
    #[serde(default)]
    pub upstream_response: Option<Dur>,
    /// A WebSocket connection with no bytes either way is closed after this long.
    #[serde(default)]
    pub tunnel_idle: Option<Dur>,
}

/// `routes[].rate_limit`: a token bucket per key holding `requests + burst`, refilled at
/// `requests` per `per`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub key: RateLimitKey,
    pub requests: u32,
    pub per: Dur,
    #[serde(default)]
    pub burst: u32,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum RateLimitKey {
    /// The verified token's `sub`.
    Subject,
    /// The verified token's `azp` / `client_id`.
    ClientId,
    /// The client's address: the peer, or what a trusted proxy says in `x-forwarded-for`.
    Ip,
    /// A claim of the verified token (`claim:tenant`).
    Claim(String),
}

impl TryFrom<String> for RateLimitKey {
    type Error = String;

    fn try_from(text: String) -> Result<RateLimitKey, String> {
        match text.as_str() {
            "subject" => Ok(RateLimitKey::Subject),
            "client_id" => Ok(RateLimitKey::ClientId),
            "ip" => Ok(RateLimitKey::Ip),
            _ => match text.strip_prefix("claim:") {
                Some(claim) if !claim.is_empty() => Ok(RateLimitKey::Claim(claim.to_string())),
                _ => Err(format!(
                    "unknown rate limit key {text:?}; use subject, client_id, ip or claim:<name>"
                )),
            },
        }
    }
}

impl fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimitKey::Subject => f.write_str("subject"),
            RateLimitKey::ClientId => f.write_str("client_id"),
            RateLimitKey::Ip => f.write_str("ip"),
            RateLimitKey::Claim(claim) => write!(f, "claim:{claim}"),
        }
    }
}

/// `routes[].balance`: how a request picks one of several upstream endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each healthy endpoint in turn.
    #[default]
    RoundRobin,
    /// The healthy endpoint with the fewest requests in flight.
    LeastRequest,
}

/// `routes[].health`: active health checks of every endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// GET this path (with the upstream URL's base path before it); 2xx is healthy.
    pub path: String,
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// Failed checks in a row that mark an endpoint unhealthy.
    #[serde(default = "default_unhealthy")]
    pub unhealthy: u32,
    /// Passed checks in a row that mark it healthy again.
    #[serde(default = "default_healthy")]
    pub healthy: u32,
}

fn default_interval() -> Dur {
    Dur::secs(5)
}
fn default_unhealthy() -> u32 {
    3
}
fn default_healthy() -> u32 {
    2
}

/// An address block of `server.trusted_proxies`: `10.0.0.0/8`, `fd00::/8`, or one
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or address/prefix"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max && !prefix.starts_with('+'))
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0..={max}"))?,
        };
        let cidr = Cidr { network, prefix };
        if !cidr.contains(network) || cidr.masked(network) != network {
            return Err(format!(
                "{text:?} has host bits set; write the network address (e.g. 10.0.0.0/8)"
            ));
        }
        Ok(cidr)
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::from((u32::from(v4) & mask).to_be_bytes())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::from((u128::from(v6) & mask).to_be_bytes())
            }
        }
    }

    /// True if `ip` is in this block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == self.network
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Cidr, String> {
        Cidr::parse(&text)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl RateLimitConfig {
    pub(super) fn validate(&self, at: &str, auth: AuthMode) -> Result<(), ConfigError> {
        if self.requests == 0 {
            return Err(ConfigError::at(
                format!("{at}.rate_limit.requests"),
                "must be at least 1",
            ));
        }
        if self.per.get() < std::time::Duration::from_millis(1) {
            return Err(ConfigError::at(
                format!("{at}.rate_limit.per"),
                "must be at least 1ms",
            ));
        }
        if self.per.get().as_nanos() / u128::from(self.requests) == 0 {
            return Err(ConfigError::at(
                format!("{at}.rate_limit.requests"),
                "more than one request per nanosecond cannot be timed; raise per",
            ));
        }
        if self.requests.checked_add(self.burst).is_none() {
            return Err(ConfigError::at(
                format!("{at}.rate_limit.burst"),
                "requests + burst is too large",
            ));
        }
        if auth == AuthMode::None && self.key != RateLimitKey::Ip {
            return Err(ConfigError::at(
                format!("{at}.rate_limit.key"),
                format!(
                    "key {} needs a verified token, and this route has auth: none; use key: ip",
                    self.key
                ),
            ));
        }
        Ok(())
    }
}

impl HealthConfig {
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let path_ok = self.path.starts_with('/')
            && !self.path.contains('#')
            && self
                .path
                .parse::<http::uri::PathAndQuery>()
                .is_ok_and(|pq| pq.as_str() == self.path);
        if !path_ok {
            return Err(ConfigError::at(
                format!("{at}.health.path"),
                format!("{:?} must be a path such as /healthz", self.path),
            ));
        }
        if self.interval.get() < std::time::Duration::from_millis(100) {
            return Err(ConfigError::at(
                format!("{at}.health.interval"),
                "must be at least 100ms",
            ));
        }
        for (key, value) in [("unhealthy", self.unhealthy), ("healthy", self.healthy)] {
            if value == 0 {
                return Err(ConfigError::at(
                    format!("{at}.health.{key}"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let ten = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains("10.1.2.3".parse().unwrap()));
        assert!(ten.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!ten.contains("11.0.0.1".parse().unwrap()));
        assert!(!ten.contains("::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "x",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "::/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rate_limit_keys() {
        for (text, key) in [
            ("subject", RateLimitKey::Subject),
            ("client_id", RateLimitKey::ClientId),
            ("ip", RateLimitKey::Ip),
            ("claim:tenant", RateLimitKey::Claim("tenant".into())),
        ] {
            assert_eq!(RateLimitKey::try_from(text.to_string()).unwrap(), key);
            assert_eq!(key.to_string(), text);
        }
        for bad in ["sub", "claim:", "IP", ""] {
            assert!(RateLimitKey::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
    }
}
