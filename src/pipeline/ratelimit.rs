//! Rate limits by verified identity: a token bucket per key (GCRA, by the `governor`
//! crate) holding `requests + burst`, refilled at `requests` per `per`, keyed by the
//! token's `sub`, its client, one of its claims, or the client's address.
//!
//! Buckets live in this replica's memory: N replicas let N times the budget through (the
//! README gives the formula for a cluster-wide budget). Time comes from the gateway's
//! [`Clock`], so tests advance it instead of waiting. Keys whose bucket is full again
//! are dropped now and then, so memory follows the active keys, not every key ever seen.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus::IntCounter;

use crate::claims::{AuthFailure, Identity, Reason};
use crate::clock::Clock;
use crate::config::{Cidr, RateLimitConfig, RateLimitKey};
use crate::error::ProxyError;
use crate::http::ConnInfo;

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The gateway's [`Clock`] as governor's time source: Unix time in nanoseconds (at the
/// clock's millisecond resolution).
#[derive(Debug, Clone)]
pub struct LimitClock(pub Clock);

impl governor::clock::Clock for LimitClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(
            u64::try_from(self.0.unix_millis())
                .unwrap_or(0)
                .saturating_mul(1_000_000),
        )
    }
}

/// A bucket key: whether the request was anonymous (keyed by address on a route whose
/// key needs a token), and the key's bytes.
type Key = (bool, HeaderValue);

type Limiter = RateLimiter<Key, DashMapStateStore<Key>, LimitClock, StateInformationMiddleware>;

/// Checks between sweeps of full buckets.
const SWEEP_EVERY: u64 = 4096;

/// Which bucket a request draws from.
#[derive(Debug, Clone)]
enum KeyKind {
    Subject,
    ClientId,
    Ip,
    /// Position of the claim in `Identity::mapped`, and its name.
    Claim(usize, Box<str>),
}

/// One route's rate limit.
pub struct RateLimit {
    kind: KeyKind,
    limiter: Limiter,
    clock: LimitClock,
    /// Nanoseconds to refill one request.
    period: u64,
    capacity: u32,
    name: Box<str>,
    policy: HeaderValue,
    trusted_proxies: Arc<[Cidr]>,
    rejected: IntCounter,
    checks: AtomicU64,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("kind", &self.kind)
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// The headers a rate-limited route adds to its answers (RFC draft
/// `draft-ietf-httpapi-ratelimit-headers`): the policy, and what is left of the bucket.
#[derive(Debug)]
pub struct RateHeaders {
    policy: HeaderValue,
    state: HeaderValue,
}

impl RateHeaders {
    pub fn apply(self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY.clone(), self.policy);
        headers.insert(RATELIMIT.clone(), self.state);
    }
}

impl RateLimit {
    /// `claim_index` finds a `claim:<name>` key's position in `Identity::mapped`.
    pub fn new(
        route: &str,
        config: &RateLimitConfig,
        claim_index: impl Fn(&str) -> Option<usize>,
        trusted_proxies: Arc<[Cidr]>,
        clock: Clock,
        rejected: IntCounter,
    ) -> Result<RateLimit, String> {
        let kind = match &config.key {
            RateLimitKey::Subject => KeyKind::Subject,
            RateLimitKey::ClientId => KeyKind::ClientId,
            RateLimitKey::Ip => KeyKind::Ip,
            RateLimitKey::Claim(name) => KeyKind::Claim(
                claim_index(name)
                    .ok_or_else(|| format!("claim {name:?} is not read from tokens"))?,
                name.as_str().into(),
            ),
        };
        let per = u64::try_from(config.per.get().as_nanos()).unwrap_or(u64::MAX);
        let period = per / u64::from(config.requests);
        let capacity = config
            .requests
            .checked_add(config.burst)
            .and_then(NonZeroU32::new)
            .ok_or("requests + burst must be 1..=4294967295")?;
        let quota = Quota::with_period(Duration::from_nanos(period))
            .ok_or("requests per `per` is finer than a nanosecond")?
            .allow_burst(capacity);
        let clock = LimitClock(clock);
        let limiter = RateLimiter::dashmap_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        let window = config.per.get().as_secs().max(1);
        let policy =
            HeaderValue::from_str(&format!("\"{route}\";q={};w={window}", config.requests))
                .map_err(|_| "the route name cannot be sent in RateLimit-Policy")?;
        Ok(RateLimit {
            kind,
            limiter,
            clock,
            period,
            capacity: capacity.get(),
            name: route.into(),
            policy,
            trusted_proxies,
            rejected,
            checks: AtomicU64::new(0),
        })
    }

    /// Takes one request from the caller's bucket: the headers to add to the answer, or
    /// 429 `rate_limited` (or 401 when the token lacks the claim the limit counts by).
    pub fn admit(
        &self,
        identity: Option<&Identity>,
        conn: &ConnInfo,
        headers: &HeaderMap,
    ) -> Result<RateHeaders, ProxyError> {
        let key = self.key(identity, conn, headers)?;
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        match self.limiter.check_key(&key) {
            Ok(snapshot) => {
                let left = snapshot.remaining_burst_capacity();
                // Until the bucket is full again.
                let refill = u64::from(self.capacity.saturating_sub(left)) * self.period;
                Ok(self.quota(left, ceil_secs(refill)))
            }
            Err(not_until) => {
                self.rejected.inc();
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&self.clock));
                let seconds = ceil_secs(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX)).max(1);
                let quota = self.quota(0, seconds);
                Err(ProxyError::RateLimited {
                    retry_after: seconds,
                    policy: quota.policy,
                    state: quota.state,
                })
            }
        }
    }

    fn quota(&self, left: u32, reset: u64) -> RateHeaders {
        let state = HeaderValue::from_str(&format!("\"{}\";r={left};t={reset}", self.name))
            .unwrap_or_else(|_| HeaderValue::from_static("\"default\""));
        RateHeaders {
            policy: self.policy.clone(),
            state,
        }
    }

    fn key(
        &self,
        identity: Option<&Identity>,
        conn: &ConnInfo,
        headers: &HeaderMap,
    ) -> Result<Key, ProxyError> {
        let ip = || {
            let peer = conn.remote.ip();
            let ip = client_ip(peer, headers, &self.trusted_proxies);
            if ip == peer {
                // Prepared once per connection.
                return conn.client_ip.clone();
            }
            HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| conn.client_ip.clone())
        };
        let identity = match (&self.kind, identity) {
            (KeyKind::Ip, _) => return Ok((false, ip())),
            // A request without a token (auth: optional) counts by its address.
            (_, None) => return Ok((true, ip())),
            (_, Some(identity)) => identity,
        };
        let missing = |claim: &str| {
            ProxyError::InvalidToken(AuthFailure::new(
                Reason::MissingClaim,
                format!("the token has no {claim} claim, which this route's rate limit counts by"),
            ))
        };
        let value = match &self.kind {
            KeyKind::Subject => identity.subject.clone(),
            KeyKind::ClientId => identity
                .client_id
                .clone()
                .ok_or_else(|| missing("azp/client_id"))?,
            KeyKind::Claim(index, name) => identity
                .mapped
                .get(*index)
                .cloned()
                .flatten()
                .ok_or_else(|| missing(name))?,
            KeyKind::Ip => ip(),
        };
        Ok((false, value))
    }
}

fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

/// The client's address: the peer's, or — when the peer is a trusted proxy — the
/// `x-forwarded-for` entry it added, walking right to left past further trusted proxies.
/// An entry that is not an address stops the walk at the proxy that added it.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|cidr| cidr.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    for value in values.into_iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for entry in text.rsplit(',') {
            let Some(ip) = parse_entry(entry.trim()) else {
                return client;
            };
            client = ip;
            if !is_trusted(ip) {
                return client;
            }
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1` or `[::1]:80`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer: its x-forwarded-for is ignored.
        assert_eq!(
            client_ip(ip("203.0.113.9"), &xff(&["1.1.1.1"]), &trusted),
            ip("203.0.113.9")
        );
        // A trusted peer: the entry it added.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&["6.6.6.6, 1.1.1.1"]), &trusted),
            ip("1.1.1.1")
        );
        // Through two trusted proxies, across header lines.
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                &xff(&["6.6.6.6, 1.1.1.1", "10.0.0.3"]),
                &trusted
            ),
            ip("1.1.1.1")
        );
        // Junk stops at the proxy that added it.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&["junk"]), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&[]), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&["[2001:db8::1]:443"]), &trusted),
            ip("2001:db8::1")
        );
    }

    fn bucket(requests: u32, per: &str, burst: u32) -> (RateLimit, Clock) {
        let clock = Clock::manual();
        let config = RateLimitConfig {
            key: RateLimitKey::Ip,
            requests,
            per: crate::config::Dur::parse(per).unwrap(),
            burst,
        };
        let counter = IntCounter::new("x", "x").unwrap();
        let limit = RateLimit::new(
            "r",
            &config,
            |_| None,
            Arc::from([]),
            clock.clone(),
            counter,
        )
        .unwrap();
        (limit, clock)
    }

    #[test]
    fn a_bucket_holds_requests_plus_burst_and_refills_at_the_rate() {
        let conn = ConnInfo::new("192.0.2.1:5000".parse().unwrap(), false);
        let headers = HeaderMap::new();
        // requests: 5, per: 1m, burst: 0 → 5 at once, then one every 12 s.
        let (limit, clock) = bucket(5, "1m", 0);
        for n in 0..5 {
            assert!(limit.admit(None, &conn, &headers).is_ok(), "request {n}");
        }
        let Err(ProxyError::RateLimited { retry_after, .. }) = limit.admit(None, &conn, &headers)
        else {
            panic!("the sixth request passed");
        };
        assert!((1..=12).contains(&retry_after), "{retry_after}");
        clock.advance(Duration::from_secs(12));
        assert!(limit.admit(None, &conn, &headers).is_ok());
        assert!(limit.admit(None, &conn, &headers).is_err());
        // Another key has its own bucket.
        let other = ConnInfo::new("192.0.2.2:5000".parse().unwrap(), false);
        assert!(limit.admit(None, &other, &headers).is_ok());

        let (limit, _) = bucket(2, "1s", 3);
        let passed = (0..10)
            .filter(|_| limit.admit(None, &conn, &headers).is_ok())
            .count();
        assert_eq!(passed, 5);
    }
}
