//! A route's limits and forwarding choices on the request path: the request body size
//! (`max_body`: 413 `payload_too_large`, from `Content-Length` before anything is sent,
//! else while the body streams), the upstream response timeout
//! (`timeouts.upstream_response`) and the `Location` rewriting of its answers.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use hyper::body::Incoming;

use super::ratelimit::RateLimit;
use super::redirect::Redirects;
use crate::clock::Clock;
use crate::config::{Cidr, RouteConfig};
use crate::error::ProxyError;
use crate::http::limit::LimitedBody;
use crate::metrics::Metrics;
use crate::upstream::UpstreamBody;
use crate::upstream::set::EndpointSet;

/// A route's limits, compiled once.
#[derive(Debug)]
pub struct RouteLimits {
    /// `max_body` in bytes.
    pub max_body: Option<u64>,
    /// `timeouts.upstream_response`; `None` takes the server's.
    pub response_timeout: Option<Duration>,
    /// `timeouts.tunnel_idle`, or the server's.
    pub tunnel_idle: Duration,
    /// `Location` / `Content-Location` back under `strip_prefix`.
    pub redirects: Option<Redirects>,
    pub rate_limit: Option<RateLimit>,
    /// Several endpoints (or one with health checks); `None` sends to the one URL.
    pub endpoints: Option<Arc<EndpointSet>>,
}

/// No limits (the issuer's own endpoints, which never tunnel).
impl Default for RouteLimits {
    fn default() -> Self {
        RouteLimits {
            max_body: None,
            response_timeout: None,
            tunnel_idle: crate::config::Timeouts::default().tunnel_idle.get(),
            redirects: None,
            rate_limit: None,
            endpoints: None,
        }
    }
}

/// What compiling a route's limits needs beside the route.
pub struct RouteContext<'a> {
    pub clock: &'a Clock,
    pub metrics: &'a Metrics,
    pub trusted_proxies: Arc<[Cidr]>,
    /// The claims the verifier reads into `Identity::mapped`, in order.
    pub claim_names: &'a [Box<str>],
    /// `server.timeouts.tunnel_idle`.
    pub tunnel_idle: Duration,
}

impl RouteLimits {
    pub fn from_route(
        config: &RouteConfig,
        context: &RouteContext<'_>,
    ) -> Result<RouteLimits, String> {
        let rate_limit = match &config.rate_limit {
            None => None,
            Some(limit) => Some(RateLimit::new(
                &config.name,
                limit,
                |claim| context.claim_names.iter().position(|n| &**n == claim),
                context.trusted_proxies.clone(),
                context.clock.clone(),
                context
                    .metrics
                    .rate_limited_total
                    .with_label_values(&[config.name.as_str()]),
            )?),
        };
        let targets = config.upstream.targets();
        let endpoints = if targets.len() > 1 || config.health.is_some() {
            Some(Arc::new(EndpointSet::new(
                &config.name,
                targets,
                config.balance,
                config.health.clone(),
                context.clock.clone(),
                context.metrics,
            )?))
        } else {
            None
        };
        Ok(RouteLimits {
            endpoints,
            rate_limit,
            max_body: config.max_body.map(|size| size.bytes()),
            response_timeout: config.timeouts.upstream_response.map(|d| d.get()),
            tunnel_idle: config
                .timeouts
                .tunnel_idle
                .map_or(context.tunnel_idle, |d| d.get()),
            redirects: Redirects::new(config.upstream.targets(), config.strip_prefix.as_deref()),
        })
    }

    /// Refuses a declared `Content-Length` over `max_body` before anything is sent.
    pub fn check_declared(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        let Some(max) = self.max_body else {
            return Ok(());
        };
        // hyper has refused a malformed or conflicting Content-Length already.
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(length) if length > max => Err(ProxyError::PayloadTooLarge),
            _ => Ok(()),
        }
    }

    /// The client's body for the upstream, cut off past `max_body`; the flag turns true
    /// if it was.
    pub fn body(&self, body: Incoming) -> (UpstreamBody, Option<Arc<AtomicBool>>) {
        match self.max_body {
            None => (UpstreamBody::Client(body), None),
            Some(max) => {
                let (limited, tripped) = LimitedBody::new(body, max);
                (UpstreamBody::Limited(limited), Some(tripped))
            }
        }
    }
}
