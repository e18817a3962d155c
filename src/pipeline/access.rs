//! The access layer: wraps [`pipeline::handle`](super::handle) with what every request
//! gets whatever its route — the request id, the `request` span, in-flight counting,
//! the request metrics and the access line.
//!
//! Each request runs inside one `tracing` span, `request` (target `scopegate::access`,
//! level INFO): `request_id`, `trace_id` (W3C, continued or started) and `method` from
//! the start, `route` once matched, and at
//! the end `status`, `latency_ms`, `upstream_ms` (when an upstream was called), `auth`
//! (`ok`: a token was verified; `none`: no token was checked; `refused`) and `reason`
//! (the `auth_failures_total` reason, when refused). Events logged while the request is
//! processed (an upstream failure, a JWKS refetch its token triggered) carry the span's
//! fields; the span is closed by the access event (`scopegate::access`, message
//! `request`). When the level filter disables the span, it costs a few branches.
//!
//! The request's W3C trace is continued or started here, sampled by `tracing:`; a
//! sampled request's OpenTelemetry span ([`ServerSpan`]) goes to the exporter when
//! there is one. The facts it needs from the request are taken only then.

use std::time::{Instant, SystemTime};

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::Instrument;
use tracing::field::{Empty, Value};

use super::forward::{self, X_REQUEST_ID};
use super::{Context, Outcome, Pipeline};
use crate::claims::Reason;
use crate::http::trace::Trace;
use crate::http::{Body, ConnInfo};
use crate::metrics::{Metrics, method_label};
use crate::otlp::ServerSpan;

/// Serves one request through `pipeline`, recording it in `metrics` and the access log.
pub async fn serve(
    metrics: &Metrics,
    pipeline: &Pipeline,
    request: Request<Incoming>,
    conn: &ConnInfo,
) -> Response<Body> {
    let started = Instant::now();
    metrics.in_flight_requests.inc();
    let _in_flight = InFlight(&metrics.in_flight_requests);

    let request_id = match request.headers().get(&X_REQUEST_ID) {
        Some(id) if forward::sane_request_id(id) => id.clone(),
        _ => forward::new_request_id(),
    };
    let method = method_label(request.method());
    let trace = Trace::start(request.headers(), &pipeline.tracing.sampler);
    let exporter = pipeline
        .tracing
        .exporter
        .as_ref()
        .filter(|_| trace.sampled());
    let facts = exporter.map(|_| Facts::of(pipeline, &request, conn));
    let span = tracing::info_span!(
        target: "scopegate::access",
        "request",
        request_id = request_id.to_str().unwrap_or(""),
        trace_id = trace.trace_id(),
        method,
        route = Empty,
        status = Empty,
        latency_ms = Empty,
        upstream_ms = Empty,
        auth = Empty,
        reason = Empty,
    );
    let context = Context {
        conn,
        request_id: &request_id,
        span: &span,
        trace: &trace,
    };
    let (mut response, mut outcome) = if span.is_disabled() {
        super::handle(pipeline, request, &context).await
    } else {
        super::handle(pipeline, request, &context)
            .instrument(span.clone())
            .await
    };

    if let Some(tunnel) = outcome.tunnel.take() {
        tunnel.spawn(metrics.open_websockets.clone(), conn.lease.clone());
        if let Some(route) = outcome.route.as_deref() {
            metrics
                .websocket_connections_total
                .with_label_values(&[route])
                .inc();
        }
    }
    let status = response.status();
    let elapsed = started.elapsed().as_secs_f64();
    record(metrics, &outcome, method, status, elapsed);
    close(&outcome, &span, &request_id, method, status, elapsed);
    if let (Some(exporter), Some(facts)) = (exporter, facts) {
        exporter.record(facts.span(&trace, &outcome, method, status, &request_id));
    }
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id);
    response
}

/// What a span needs of the request, taken before the pipeline consumes it.
struct Facts {
    start: SystemTime,
    started: Instant,
    path: Box<str>,
    scheme: &'static str,
    protocol_version: &'static str,
    server_address: Option<Box<str>>,
    server_port: Option<u16>,
    client_address: std::net::IpAddr,
}

impl Facts {
    fn of(pipeline: &Pipeline, request: &Request<Incoming>, conn: &ConnInfo) -> Facts {
        let authority = request
            .headers()
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .and_then(|host| host.parse::<http::uri::Authority>().ok())
            .or_else(|| request.uri().authority().cloned());
        Facts {
            start: SystemTime::now(),
            started: Instant::now(),
            path: ServerSpan::path_of(request.uri().path()),
            scheme: if conn.tls { "https" } else { "http" },
            protocol_version: match request.version() {
                http::Version::HTTP_10 => "1.0",
                http::Version::HTTP_2 => "2",
                _ => "1.1",
            },
            server_address: authority.as_ref().map(|a| a.host().into()),
            server_port: authority.as_ref().and_then(|a| a.port_u16()),
            client_address: super::ratelimit::client_ip(
                conn.remote.ip(),
                request.headers(),
                &pipeline.trusted_proxies,
            ),
        }
    }

    fn span(
        self,
        trace: &Trace,
        outcome: &Outcome,
        method: &'static str,
        status: StatusCode,
        request_id: &HeaderValue,
    ) -> ServerSpan {
        ServerSpan {
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent_id: trace.parent_id,
            start: self.start,
            duration: self.started.elapsed(),
            method,
            route: outcome.route.clone(),
            path: self.path,
            scheme: self.scheme,
            protocol_version: self.protocol_version,
            server_address: self.server_address,
            server_port: self.server_port,
            client_address: self.client_address,
            status: status.as_u16(),
            auth: auth(outcome),
            reason: outcome.reason.map(Reason::label),
            request_id: request_id.clone(),
            upstream: outcome
                .upstream_seconds
                .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok()),
        }
    }
}

fn record(metrics: &Metrics, outcome: &Outcome, method: &str, status: StatusCode, elapsed: f64) {
    let route = outcome.route.as_deref().unwrap_or("unmatched");
    metrics
        .requests_total
        .with_label_values(&[route, method, status.as_str()])
        .inc();
    metrics
        .request_duration_seconds
        .with_label_values(&[route])
        .observe(elapsed);
    if let Some(upstream) = outcome.upstream_seconds {
        metrics
            .upstream_duration_seconds
            .with_label_values(&[route])
            .observe(upstream);
    }
    if let Some(reason) = outcome.reason {
        metrics
            .auth_failures_total
            .with_label_values(&[route, reason.label()])
            .inc();
    }
    if let Some(refusal) = outcome.refusal {
        metrics
            .requests_refused_total
            .with_label_values(&[route, refusal.label()])
            .inc();
    }
}

/// `auth` as logged: `ok`, `none` or `refused`.
fn auth(outcome: &Outcome) -> &'static str {
    match (outcome.reason, outcome.authenticated) {
        (Some(_), _) => "refused",
        (None, true) => "ok",
        (None, false) => "none",
    }
}

/// Records the end of the request on its span, in one call (each record is work
/// for the subscriber), then closes it with the access event.
fn close(
    outcome: &Outcome,
    span: &tracing::Span,
    request_id: &HeaderValue,
    method: &'static str,
    status: StatusCode,
    elapsed: f64,
) {
    let status = status.as_u16();
    // Milliseconds to the microsecond: `0.417`, not `0.41736199999999997`.
    let to_ms = |seconds: f64| (seconds * 1e6).round() / 1e3;
    let latency_ms = to_ms(elapsed);
    let upstream_ms = outcome.upstream_seconds.map(to_ms);
    let auth = auth(outcome);
    let reason = outcome.reason.map(Reason::label);
    if span.is_disabled() {
        // The span is filtered out (and so, at the usual filters, is this line):
        // should a filter still want the access line, it carries the fields itself.
        tracing::info!(
            target: "scopegate::access",
            request_id = request_id.to_str().unwrap_or(""),
            method,
            route = outcome.route.as_deref().unwrap_or("unmatched"),
            status,
            latency_ms,
            upstream_ms,
            auth,
            reason,
            "request"
        );
        return;
    }
    if outcome.route.is_none() {
        span.record("route", "unmatched");
    }
    if let Some(fields) = span.metadata().map(|m| m.fields())
        && let (Some(status_f), Some(latency_f), Some(upstream_f), Some(auth_f), Some(reason_f)) = (
            fields.field("status"),
            fields.field("latency_ms"),
            fields.field("upstream_ms"),
            fields.field("auth"),
            fields.field("reason"),
        )
    {
        span.record_all(&fields.value_set(&[
            (&status_f, Some(&status as &dyn Value)),
            (&latency_f, Some(&latency_ms as &dyn Value)),
            (&upstream_f, upstream_ms.as_ref().map(|v| v as &dyn Value)),
            (&auth_f, Some(&auth as &dyn Value)),
            (&reason_f, reason.as_ref().map(|v| v as &dyn Value)),
        ]));
    }
    tracing::info!(target: "scopegate::access", parent: span, "request");
}

/// Keeps `in_flight_requests` honest even when a request future is dropped.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
