//! Prometheus metrics on an owned [`Registry`] (no global state: every gateway, and every
//! test, has its own). Names and labels are a contract (README, "Operating Scopegate"); label values are
//! bounded (route names from config, fixed reason sets), never a path, subject or token.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Buckets for a proxy: sub-millisecond to seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

/// Typed handles to every metric Scopegate exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// The standard `process_*` series (CPU, RSS, open and maximum descriptors, start
    /// time), unprefixed as every Prometheus client library exports them.
    process: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub upstream_duration_seconds: HistogramVec,
    pub auth_failures_total: IntCounterVec,
    pub jwks_fetches_total: IntCounterVec,
    pub tokens_issued_total: IntCounterVec,
    pub token_errors_total: IntCounterVec,
    pub config_reloads_total: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub in_flight_requests: IntGauge,
    /// Client connections open on the proxy listener.
    pub open_connections: IntGauge,
    pub rate_limited_total: IntCounterVec,
    pub upstream_endpoint_healthy: IntGaugeVec,
    pub upstream_connect_failures_total: IntCounterVec,
    /// Requests refused for their protocol (CORS, upgrades, gRPC), by route and reason.
    pub requests_refused_total: IntCounterVec,
    /// WebSocket connections relayed, by route; `open_websockets` are open now.
    pub websocket_connections_total: IntCounterVec,
    pub open_websockets: IntGauge,
    /// Revoked access tokens of the built-in issuer held in the deny-set (until they
    /// expire).
    pub revoked_tokens: IntGauge,
    /// Upstream tokens (`routes[].upstream_token`) by route and result: `hit` (cached),
    /// `minted`, `failed`.
    pub upstream_token_total: IntCounterVec,
    /// Spans of `tracing.otlp_endpoint` by result: `exported`, `dropped` (the queue was
    /// full), `failed` (the collector refused them or could not be reached).
    pub otlp_spans_total: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // Metric names and label sets are constants, so construction cannot fail; a
        // failure here is a programming error caught by the first test run.
        Metrics::try_new().expect("metric definitions are valid")
    }

    fn try_new() -> prometheus::Result<Metrics> {
        let registry = Registry::new_custom(Some("scopegate".into()), None)?;
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels)?,
            )
        };
        let histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            register(&registry, HistogramVec::new(opts, &["route"])?)
        };
        let gauge = |name: &str, help: &str| register(&registry, IntGauge::new(name, help)?);
        let metrics = Metrics {
            requests_total: counter(
                "requests_total",
                "Requests answered, by route, method and status.",
                &["route", "method", "status"],
            )?,
            request_duration_seconds: histogram(
                "request_duration_seconds",
                "Time from request head to response head, by route.",
            )?,
            upstream_duration_seconds: histogram(
                "upstream_duration_seconds",
                "Time the upstream took to answer with headers, by route.",
            )?,
            auth_failures_total: counter(
                "auth_failures_total",
                "Requests refused for their token, by route and reason.",
                &["route", "reason"],
            )?,
            jwks_fetches_total: counter(
                "jwks_fetches_total",
                "JWKS fetches from trusted issuers, by issuer and result.",
                &["issuer", "result"],
            )?,
            tokens_issued_total: counter(
                "tokens_issued_total",
                "Access tokens issued by the built-in issuer, by grant type.",
                &["grant_type"],
            )?,
            token_errors_total: counter(
                "token_errors_total",
                "Token requests refused by the built-in issuer, by grant type and error.",
                &["grant_type", "error"],
            )?,
            config_reloads_total: counter(
                "config_reloads_total",
                "Configuration reloads, by result.",
                &["result"],
            )?,
            build_info: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "build_info",
                        "Always 1; the version and commit labels say which build.",
                    ),
                    &["version", "commit"],
                )?,
            )?,
            in_flight_requests: gauge("in_flight_requests", "Requests being handled now.")?,
            open_connections: gauge(
                "open_connections",
                "Client connections open on the proxy listener.",
            )?,
            rate_limited_total: counter(
                "rate_limited_total",
                "Requests refused with 429 by the route's rate limit, by route.",
                &["route"],
            )?,
            upstream_endpoint_healthy: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "upstream_endpoint_healthy",
                        "1 while an upstream endpoint takes traffic, 0 while ejected or failing its health checks.",
                    ),
                    &["route", "endpoint"],
                )?,
            )?,
            upstream_connect_failures_total: counter(
                "upstream_connect_failures_total",
                "Connections to an endpoint of an upstream set that failed, by route and endpoint.",
                &["route", "endpoint"],
            )?,
            requests_refused_total: counter(
                "requests_refused_total",
                "Requests refused for their protocol (CORS, upgrades, gRPC), by route and reason.",
                &["route", "reason"],
            )?,
            websocket_connections_total: counter(
                "websocket_connections_total",
                "WebSocket connections relayed to an upstream, by route.",
                &["route"],
            )?,
            open_websockets: gauge("open_websockets", "WebSocket connections open now.")?,
            upstream_token_total: counter(
                "upstream_token_total",
                "Tokens obtained for upstreams on callers' behalf, by route and result (hit, minted, failed).",
                &["route", "result"],
            )?,
            otlp_spans_total: counter(
                "otlp_spans_total",
                "Spans for the OTLP collector, by result (exported, dropped, failed).",
                &["result"],
            )?,
            revoked_tokens: gauge(
                "revoked_tokens",
                "Revoked access tokens held in the deny-set until they expire.",
            )?,
            registry,
            process: process_registry()?,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("SCOPEGATE_COMMIT")])
            .set(1);
        for result in ["success", "error"] {
            metrics.config_reloads_total.with_label_values(&[result]);
        }
        Ok(metrics)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        if let Err(err) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %err, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A registry holding the process collector (read from `/proc/self` at each scrape).
fn process_registry() -> prometheus::Result<Registry> {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(registry)
}

/// Registers `metric` and hands it back.
fn register<M>(registry: &Registry, metric: M) -> prometheus::Result<M>
where
    M: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A bounded method label: known methods by name, anything else `OTHER`.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::TRACE => "TRACE",
        http::Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_independent_and_render_the_contract_names() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.requests_total
            .with_label_values(&["r", "GET", "200"])
            .inc();
        assert!(
            a.render()
                .contains("scopegate_requests_total{method=\"GET\",route=\"r\",status=\"200\"} 1")
        );
        assert!(!b.render().contains("scopegate_requests_total{"));
        assert!(b.render().contains("scopegate_build_info{commit="));
        assert!(b.render().contains("scopegate_in_flight_requests 0"));
    }
}
