//! Several endpoints behind one route: each request picks one (round robin, or the one
//! with the fewest requests in flight), skipping endpoints that are ejected or fail
//! their health checks. An endpoint whose connections fail `eject_after` times in a row
//! is ejected for a cool-down (passive health); active checks ([`super::health`]) mark
//! endpoints unhealthy and healthy again. When no endpoint is available, all are tried
//! anyway (an outage of the checks must not become an outage of the route).
//!
//! A request that could not be sent because the connection failed was never written, so
//! an idempotent one (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) is tried once more on
//! another endpoint.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri};
use hyper::body::Incoming;
use prometheus::{IntCounter, IntGauge};

use super::{Failed, UpstreamBody, UpstreamError, Upstreams};
use crate::clock::Clock;
use crate::config::{Balance, HealthConfig, UpstreamTarget};
use crate::metrics::Metrics;

/// How long a passively ejected endpoint is left out.
pub const EJECTION: Duration = Duration::from_secs(10);
/// Connect failures in a row that eject an endpoint, without `health.unhealthy`.
pub const DEFAULT_EJECT_AFTER: u32 = 3;

/// One endpoint and what is known of its health.
#[derive(Debug)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub authority: Authority,
    /// `Host` sent to it.
    pub host: HeaderValue,
    /// `host:port`, the metric label.
    pub label: String,
    /// Requests sent to it whose answer has not ended yet.
    in_flight: Arc<AtomicUsize>,
    connect_failures: AtomicU32,
    /// Passive ejection ends at this time, Unix ms by the set's clock (0: not ejected).
    ejected_until: AtomicI64,
    /// The active checks' verdict (true until they say otherwise).
    pub(super) checked_healthy: AtomicBool,
    healthy_gauge: IntGauge,
    connect_failures_total: IntCounter,
}

impl Endpoint {
    fn available(&self, now: i64) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until != 0
            && now >= until
            && self
                .ejected_until
                .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // The cool-down is over: back in rotation.
            self.refresh_gauge();
        }
        self.ejected_until.load(Ordering::Acquire) == 0
            && self.checked_healthy.load(Ordering::Acquire)
    }

    /// Sets `upstream_endpoint_healthy` from the current verdicts.
    pub(super) fn refresh_gauge(&self) {
        let up = self.ejected_until.load(Ordering::Acquire) == 0
            && self.checked_healthy.load(Ordering::Acquire);
        self.healthy_gauge.set(i64::from(up));
    }

    /// `host:port` with the scheme's default port where the URL had none.
    fn label_of(scheme: &Scheme, authority: &Authority) -> String {
        let port = authority
            .port_u16()
            .unwrap_or(if *scheme == Scheme::HTTPS { 443 } else { 80 });
        format!("{}:{port}", authority.host())
    }
}

/// A route's endpoints.
#[derive(Debug)]
pub struct EndpointSet {
    pub route: Box<str>,
    pub endpoints: Vec<Endpoint>,
    balance: Balance,
    next: AtomicUsize,
    pub(super) clock: Clock,
    eject_after: u32,
    pub health: Option<HealthConfig>,
    /// The upstream URL's path, before the health check path.
    pub base_path: Box<str>,
}

impl EndpointSet {
    /// `targets` are `http(s)://` URLs (checked at load).
    pub fn new(
        route: &str,
        targets: &[UpstreamTarget],
        balance: Balance,
        health: Option<HealthConfig>,
        clock: Clock,
        metrics: &Metrics,
    ) -> Result<EndpointSet, String> {
        let mut endpoints = Vec::with_capacity(targets.len());
        let mut base_path: Box<str> = "".into();
        for target in targets {
            let UpstreamTarget::Http(http) = target else {
                return Err("builtin:echo cannot be one of several endpoints".into());
            };
            base_path = http.base_path.clone();
            let label = Endpoint::label_of(&http.scheme, &http.authority);
            let healthy_gauge = metrics
                .upstream_endpoint_healthy
                .with_label_values(&[route, label.as_str()]);
            healthy_gauge.set(1);
            let connect_failures_total = metrics
                .upstream_connect_failures_total
                .with_label_values(&[route, label.as_str()]);
            endpoints.push(Endpoint {
                scheme: http.scheme.clone(),
                authority: http.authority.clone(),
                host: http.host.clone(),
                label,
                in_flight: Arc::new(AtomicUsize::new(0)),
                connect_failures: AtomicU32::new(0),
                ejected_until: AtomicI64::new(0),
                checked_healthy: AtomicBool::new(true),
                healthy_gauge,
                connect_failures_total,
            });
        }
        if endpoints.is_empty() {
            return Err("a route needs at least one upstream".into());
        }
        Ok(EndpointSet {
            route: route.into(),
            endpoints,
            balance,
            next: AtomicUsize::new(0),
            eject_after: health.as_ref().map_or(DEFAULT_EJECT_AFTER, |h| h.unhealthy),
            health,
            base_path,
            clock,
        })
    }

    /// The endpoint for the next request, not `avoid` if another is available.
    fn pick(&self, avoid: Option<usize>) -> usize {
        let count = self.endpoints.len();
        let now = self.clock.unix_millis();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let usable = |i: usize| Some(i) != avoid || count == 1;
        let mut best: Option<usize> = None;
        let mut fallback: Option<usize> = None;
        for i in (0..count).map(|i| (start + i) % count) {
            if !usable(i) {
                continue;
            }
            fallback.get_or_insert(i);
            if !self.endpoints[i].available(now) {
                continue;
            }
            match self.balance {
                Balance::RoundRobin => return i,
                Balance::LeastRequest => {
                    let load = |i: usize| self.endpoints[i].in_flight.load(Ordering::Relaxed);
                    if best.is_none_or(|b| load(i) < load(b)) {
                        best = Some(i);
                    }
                }
            }
        }
        // Nothing available: try them in turn rather than fail without trying.
        best.or(fallback).unwrap_or(start)
    }

    /// Sends `request` to one endpoint; a connect failure of an idempotent request is
    /// tried once on another. The request counts as in flight on its endpoint until the
    /// returned [`InFlight`] is dropped (keep it with the answer's body).
    pub async fn send(
        &self,
        upstreams: &Upstreams,
        request: Request<UpstreamBody>,
        response_timeout: Option<Duration>,
    ) -> Result<(Response<Incoming>, InFlight), UpstreamError> {
        let first = self.pick(None);
        let failed = match self
            .send_to(first, upstreams, request, response_timeout)
            .await
        {
            Ok(response) => return Ok(response),
            Err(failed) => failed,
        };
        let Failed {
            error,
            unsent: Some(request),
        } = failed
        else {
            return Err(failed.error);
        };
        if self.endpoints.len() < 2 || !idempotent(request.method()) {
            return Err(error);
        }
        let second = self.pick(Some(first));
        if second == first {
            return Err(error);
        }
        tracing::debug!(
            route = &*self.route,
            from = %self.endpoints[first].label,
            to = %self.endpoints[second].label,
            "connect failed; trying another endpoint"
        );
        self.send_to(second, upstreams, request, response_timeout)
            .await
            .map_err(|failed| failed.error)
    }

    async fn send_to(
        &self,
        index: usize,
        upstreams: &Upstreams,
        mut request: Request<UpstreamBody>,
        response_timeout: Option<Duration>,
    ) -> Result<(Response<Incoming>, InFlight), Failed> {
        let endpoint = &self.endpoints[index];
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(endpoint.scheme.clone());
        uri.authority = Some(endpoint.authority.clone());
        uri.path_and_query = Some(path);
        *request.uri_mut() = Uri::from_parts(uri).map_err(|err| Failed {
            error: UpstreamError::Exchange(err.to_string()),
            unsent: None,
        })?;
        request
            .headers_mut()
            .insert(http::header::HOST, endpoint.host.clone());
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(endpoint.in_flight.clone());
        let result = upstreams.try_send(request, response_timeout).await;
        match &result {
            Err(Failed {
                unsent: Some(_), ..
            }) => self.connect_failed(endpoint),
            _ => endpoint.connect_failures.store(0, Ordering::Relaxed),
        }
        result.map(|response| (response, in_flight))
    }

    fn connect_failed(&self, endpoint: &Endpoint) {
        endpoint.connect_failures_total.inc();
        let failures = endpoint.connect_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures < self.eject_after {
            return;
        }
        endpoint.connect_failures.store(0, Ordering::Release);
        let until = self
            .clock
            .unix_millis()
            .saturating_add(i64::try_from(EJECTION.as_millis()).unwrap_or(i64::MAX))
            .max(1);
        endpoint.ejected_until.store(until, Ordering::Release);
        endpoint.refresh_gauge();
        tracing::warn!(
            route = &*self.route,
            endpoint = %endpoint.label,
            failures,
            "upstream endpoint ejected after failed connects"
        );
    }

    /// The health check URL of an endpoint.
    pub(super) fn health_uri(&self, endpoint: &Endpoint, path: &str) -> Option<Uri> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(endpoint.scheme.clone());
        uri.authority = Some(endpoint.authority.clone());
        uri.path_and_query =
            PathAndQuery::from_maybe_shared(Bytes::from(format!("{}{path}", self.base_path))).ok();
        Uri::from_parts(uri).ok()
    }
}

/// One request counted in its endpoint's in-flight number (for `least_request`) until
/// dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer body that keeps its request in flight until it ends or is dropped.
pub struct Tracked<B> {
    body: B,
    in_flight: Option<InFlight>,
}

impl<B> Tracked<B> {
    pub fn new(body: B, in_flight: InFlight) -> Tracked<B> {
        Tracked {
            body,
            in_flight: Some(in_flight),
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            this.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// RFC 9110 §9.2.2.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(balance: Balance) -> EndpointSet {
        let targets: Vec<UpstreamTarget> =
            ["http://10.0.0.1:80", "http://10.0.0.2", "https://10.0.0.3"]
                .iter()
                .map(|u| UpstreamTarget::parse(u).unwrap())
                .collect();
        EndpointSet::new(
            "r",
            &targets,
            balance,
            None,
            Clock::manual(),
            &Metrics::new(),
        )
        .unwrap()
    }

    #[test]
    fn round_robin_skips_ejected_endpoints_until_their_cool_down_ends() {
        let set = set(Balance::RoundRobin);
        let labels: Vec<&str> = set.endpoints.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:443"]);
        let picks: Vec<usize> = (0..6).map(|_| set.pick(None)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        for _ in 0..DEFAULT_EJECT_AFTER {
            set.connect_failed(&set.endpoints[1]);
        }
        assert!((0..6).all(|_| set.pick(None) != 1));
        assert_eq!(set.endpoints[1].healthy_gauge.get(), 0);
        set.clock.advance(EJECTION);
        assert!((0..6).any(|_| set.pick(None) == 1));
        assert_eq!(set.endpoints[1].healthy_gauge.get(), 1);
        // Nothing available: all are tried.
        for endpoint in &set.endpoints {
            endpoint.checked_healthy.store(false, Ordering::Release);
        }
        let picks: std::collections::HashSet<usize> = (0..6).map(|_| set.pick(None)).collect();
        assert_eq!(picks.len(), 3);
        // `avoid` is honoured while there is another.
        assert!((0..6).all(|_| set.pick(Some(2)) != 2));
    }

    #[test]
    fn least_request_takes_the_least_busy() {
        let set = set(Balance::LeastRequest);
        set.endpoints[0].in_flight.store(5, Ordering::Relaxed);
        let _busy = InFlight(set.endpoints[2].in_flight.clone());
        set.endpoints[2].in_flight.store(2, Ordering::Relaxed);
        assert!((0..6).all(|_| set.pick(None) == 1));
        set.endpoints[1].in_flight.store(9, Ordering::Relaxed);
        assert!((0..6).all(|_| set.pick(None) == 2));
        drop(_busy);
        assert_eq!(set.endpoints[2].in_flight.load(Ordering::Relaxed), 1);
    }
}
