//! OpenTelemetry spans of the requests the gateway serves, exported over OTLP/HTTP with
//! the JSON encoding (`POST <tracing.otlp_endpoint>/v1/traces`,
//! `Content-Type: application/json`).
//!
//! The access layer ([`crate::pipeline::access`]) fills in one [`ServerSpan`] per
//! sampled request, a plain record, and hands it to the [`Exporter`]: a `try_send` into
//! a bounded queue ([`QUEUE`] spans), which never waits; a full queue drops the span and
//! counts it. A background task batches the spans (up to [`BATCH`], or whatever came in
//! [`FLUSH_EVERY`]), encodes them (attributes, names, hex ids: all built there, off the
//! request path) and POSTs them with the gateway's own HTTP client
//! ([`crate::upstream::Fetcher`], `http://` or `https://`). A 429, 502, 503 or 504, or no
//! answer at all, is retried with a doubling backoff (or the collector's `Retry-After`,
//! capped) up to [`ATTEMPTS`] times; meanwhile the queue keeps its bound, so memory
//! stays bounded however long the collector is away. `scopegate_otlp_spans_total`
//! counts each span once: `exported`, `dropped` (queue full) or `failed` (refused, or
//! retries ran out, or rejected in a partial success).
//!
//! The JSON encoding is the OTLP specification's protobuf-JSON mapping: ids as hex,
//! times as decimal strings of Unix nanoseconds, enums as integers, `intValue` as a
//! string. It is written with serde over the types below rather than with the
//! `opentelemetry-otlp` crate, whose HTTP transports (`http-json` included) bring in
//! prost and the generated protobuf messages, the SDK with its own batch processor, and
//! reqwest unless a client is written for it; the gateway already has an HTTP client,
//! and records one kind of span in one place.
//!
//! It sits above [`crate::upstream`] (whose client it uses) and below the pipeline and
//! the state, which record and own it; logging setup ([`crate::telemetry`]) stays
//! below both.
//!
//! An [`Exporter`] belongs to a [`crate::state::State`] and is carried over by a reload
//! that leaves the collector and the service name unchanged; when the last state holding it is gone, its task
//! sends what it holds and ends. On shutdown, [`Exporter::flush`] sends what is queued.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, Uri};
use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::TracingConfig;
use crate::flood::Flood;
use crate::http::trace::{Sampler, hex};
use crate::metrics::Metrics;
use crate::upstream::Fetcher;

/// Spans waiting for the exporter task at most; more are dropped.
pub const QUEUE: usize = 2048;
/// Spans sent in one request at most.
pub const BATCH: usize = 512;
/// A batch that is not full is sent this long after the previous send at the latest.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// Tries of one batch (the first and its retries).
pub const ATTEMPTS: u32 = 4;
/// The wait before the first retry; doubled before each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait a collector's `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// `url.path` is cut to this many bytes (a path can be as long as the request head).
const MAX_PATH_BYTES: usize = 1024;

static EXPORT_FAILED: Flood = Flood::per(Duration::from_secs(10));

/// What a state traces: the sampler of the traces the gateway starts, and where the
/// spans of sampled requests go (none without `tracing.otlp_endpoint`).
#[derive(Debug, Clone)]
pub struct Tracing {
    pub sampler: Sampler,
    pub exporter: Option<Exporter>,
}

impl Default for Tracing {
    /// No `tracing:` block: every trace the gateway starts is sampled, nothing exported.
    fn default() -> Tracing {
        Tracing {
            sampler: Sampler::ALWAYS,
            exporter: None,
        }
    }
}

impl Tracing {
    /// The tracing of a `tracing:` block. `previous` lends its exporter when the
    /// collector and the service name are unchanged (and so is `fetcher`'s trust, which
    /// the caller compares); `fetcher` makes the client of a new one.
    pub fn new(
        config: Option<&TracingConfig>,
        previous: Option<&Tracing>,
        fetcher: impl FnOnce() -> Fetcher,
        metrics: &Metrics,
    ) -> Tracing {
        let Some(config) = config else {
            return Tracing::default();
        };
        let exporter = config.traces_url().map(|url| {
            previous
                .and_then(|p| p.exporter.as_ref())
                .filter(|old| {
                    old.config.otlp_endpoint == config.otlp_endpoint
                        && old.config.service_name == config.service_name
                })
                .cloned()
                .unwrap_or_else(|| Exporter::new(config, url, fetcher(), metrics))
        });
        Tracing {
            sampler: Sampler::ratio(config.sample_ratio),
            exporter,
        }
    }
}

/// The span of one request (SpanKind SERVER), as the request path records it: from the
/// request head to the answer head (as the access line's `latency_ms`).
#[derive(Debug, Clone)]
pub struct ServerSpan {
    pub trace_id: [u8; 16],
    /// The span id the upstream saw as its parent in `traceparent`.
    pub span_id: [u8; 8],
    /// The caller's span, when its `traceparent` was continued.
    pub parent_id: Option<[u8; 8]>,
    pub start: SystemTime,
    pub duration: Duration,
    /// `GET`... or `OTHER` ([`crate::metrics::method_label`]).
    pub method: &'static str,
    /// The matched route's name.
    pub route: Option<Arc<str>>,
    /// The request path as sent (no query: it may carry credentials).
    pub path: Box<str>,
    pub scheme: &'static str,
    /// `1.0`, `1.1`, `2`.
    pub protocol_version: &'static str,
    /// The `Host` the client addressed, without its port.
    pub server_address: Option<Box<str>>,
    pub server_port: Option<u16>,
    /// The client: the peer, or what a trusted proxy says in `x-forwarded-for`.
    pub client_address: IpAddr,
    pub status: u16,
    /// `ok`, `none` or `refused`, as on the access line.
    pub auth: &'static str,
    pub reason: Option<&'static str>,
    pub request_id: HeaderValue,
    /// Time spent waiting for the upstream's answer head.
    pub upstream: Option<Duration>,
}

impl ServerSpan {
    /// `url.path` from a request path, cut at [`MAX_PATH_BYTES`] on a character boundary.
    pub fn path_of(path: &str) -> Box<str> {
        let mut end = path.len().min(MAX_PATH_BYTES);
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        path[..end].into()
    }
}

enum Message {
    Span(Box<ServerSpan>),
    Flush(oneshot::Sender<()>),
}

/// The handle the request path records spans with; cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    queue: mpsc::Sender<Message>,
    /// The task's half until [`Exporter::start`] spawns it.
    worker: Arc<Mutex<Option<Worker>>>,
    dropped: IntCounter,
    /// The block it was made for (a reload keeps it while the collector and the service
    /// name are unchanged).
    config: TracingConfig,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("otlp_endpoint", &self.config.otlp_endpoint)
            .finish()
    }
}

impl Exporter {
    /// An exporter to `url`; nothing is sent until [`Exporter::start`].
    pub fn new(config: &TracingConfig, url: Uri, fetcher: Fetcher, metrics: &Metrics) -> Exporter {
        let (queue, rx) = mpsc::channel(QUEUE);
        let counter = |result: &str| metrics.otlp_spans_total.with_label_values(&[result]);
        let worker = Worker {
            rx,
            fetcher,
            url,
            resource: Resource::new(&config.service_name),
            batch: Vec::with_capacity(BATCH),
            exported: counter("exported"),
            failed: counter("failed"),
        };
        Exporter {
            queue,
            worker: Arc::new(Mutex::new(Some(worker))),
            dropped: counter("dropped"),
            config: config.clone(),
        }
    }

    /// Spawns the export task (once; later calls do nothing). Must run inside a Tokio
    /// runtime.
    pub fn start(&self) {
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(worker) = worker {
            tokio::spawn(worker.run());
        }
    }

    /// Queues a span for export; never waits. A full queue drops it (counted).
    pub fn record(&self, span: ServerSpan) {
        if self.queue.try_send(Message::Span(Box::new(span))).is_err() {
            self.dropped.inc();
        }
    }

    /// Sends every span queued so far; returns once the collector answered (or the
    /// retries ran out). The caller bounds how long it waits.
    pub async fn flush(&self) {
        let (done, answered) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = answered.await;
        }
    }
}

/// The export task's state.
struct Worker {
    rx: mpsc::Receiver<Message>,
    fetcher: Fetcher,
    url: Uri,
    resource: Resource,
    batch: Vec<ServerSpan>,
    exported: IntCounter,
    failed: IntCounter,
}

impl Worker {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                message = self.rx.recv() => match message {
                    Some(Message::Span(span)) => {
                        self.batch.push(*span);
                        if self.batch.len() >= BATCH {
                            self.send().await;
                            tick.reset();
                        }
                    }
                    Some(Message::Flush(done)) => {
                        self.send().await;
                        let _ = done.send(());
                    }
                    None => {
                        // Every state holding this exporter is gone.
                        self.send().await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    if !self.batch.is_empty() {
                        self.send().await;
                    }
                }
            }
        }
    }

    /// Sends the batch, with its retries; counts every span of it once.
    async fn send(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let count = self.batch.len() as u64;
        let body = match serde_json::to_vec(&encode(&self.resource, &self.batch)) {
            Ok(body) => Bytes::from(body),
            Err(err) => {
                tracing::error!(error = %err, "encoding spans failed");
                self.failed.inc_by(count);
                self.batch.clear();
                return;
            }
        };
        self.batch.clear();
        let mut backoff = FIRST_BACKOFF;
        let mut error = String::new();
        for attempt in 1..=ATTEMPTS {
            let wait = match self
                .fetcher
                .post(&self.url, "application/json", body.clone())
                .await
            {
                Ok(answer) if answer.status.is_success() => {
                    let rejected = rejected_spans(&answer.body).min(count);
                    self.exported.inc_by(count - rejected);
                    self.failed.inc_by(rejected);
                    return;
                }
                Ok(answer) => {
                    error = format!("answered {}", answer.status);
                    if !retryable(answer.status) {
                        break;
                    }
                    retry_after(&answer.headers).unwrap_or(backoff)
                }
                Err(err) => {
                    error = err;
                    backoff
                }
            };
            if attempt == ATTEMPTS {
                break;
            }
            tokio::time::sleep(wait).await;
            backoff *= 2;
        }
        self.failed.inc_by(count);
        if let Some(suppressed) = EXPORT_FAILED.pass() {
            tracing::warn!(
                collector = %self.url,
                spans = count,
                error,
                suppressed,
                "span export failed; these spans are lost"
            );
        }
    }
}

/// OTLP/HTTP: throttled or the collector's upstream is unavailable; try again later.
fn retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured), capped.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// `partialSuccess.rejectedSpans` of a collector's answer (0 when absent or unreadable).
fn rejected_spans(body: &[u8]) -> u64 {
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    match &answer["partialSuccess"]["rejectedSpans"] {
        serde_json::Value::String(text) => text.parse().unwrap_or(0),
        value => value.as_u64().unwrap_or(0),
    }
}

// ---------------------------------------------------------------------------------------
// The OTLP/JSON encoding (opentelemetry-proto `ExportTraceServiceRequest`)

/// `service.name` and `service.version`, the same for every span of an exporter.
struct Resource {
    attributes: Vec<KeyValue>,
}

impl Resource {
    fn new(service_name: &str) -> Resource {
        Resource {
            attributes: vec![
                KeyValue::string("service.name", service_name),
                KeyValue::string("service.version", env!("CARGO_PKG_VERSION")),
            ],
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportRequest<'a> {
    resource_spans: [ResourceSpans<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    resource: ResourceJson<'a>,
    scope_spans: [ScopeSpans; 1],
}

#[derive(Serialize)]
struct ResourceJson<'a> {
    attributes: &'a [KeyValue],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScopeSpans {
    scope: Scope,
    spans: Vec<SpanJson>,
}

#[derive(Serialize)]
struct Scope {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpanJson {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    parent_span_id: String,
    name: String,
    /// `SPAN_KIND_SERVER`.
    kind: u8,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
    attributes: Vec<KeyValue>,
    status: Status,
}

#[derive(Serialize)]
struct Status {
    /// `STATUS_CODE_UNSET` (0) or `STATUS_CODE_ERROR` (2).
    code: u8,
}

#[derive(Debug, Serialize)]
struct KeyValue {
    key: &'static str,
    value: AnyValue,
}

/// An `AnyValue` of the kinds used here (`stringValue`, `intValue`, `doubleValue`).
#[derive(Debug, Serialize)]
enum AnyValue {
    #[serde(rename = "stringValue")]
    String(String),
    /// int64: a decimal string in the JSON mapping.
    #[serde(rename = "intValue")]
    Int(String),
    #[serde(rename = "doubleValue")]
    Double(f64),
}

impl KeyValue {
    fn string(key: &'static str, value: impl Into<String>) -> KeyValue {
        KeyValue {
            key,
            value: AnyValue::String(value.into()),
        }
    }

    fn int(key: &'static str, value: impl Into<i64>) -> KeyValue {
        KeyValue {
            key,
            value: AnyValue::Int(value.into().to_string()),
        }
    }

    fn double(key: &'static str, value: f64) -> KeyValue {
        KeyValue {
            key,
            value: AnyValue::Double(value),
        }
    }
}

const SPAN_KIND_SERVER: u8 = 2;
const STATUS_CODE_ERROR: u8 = 2;

fn encode<'a>(resource: &'a Resource, spans: &[ServerSpan]) -> ExportRequest<'a> {
    ExportRequest {
        resource_spans: [ResourceSpans {
            resource: ResourceJson {
                attributes: &resource.attributes,
            },
            scope_spans: [ScopeSpans {
                scope: Scope {
                    name: "scopegate",
                    version: env!("CARGO_PKG_VERSION"),
                },
                spans: spans.iter().map(span_json).collect(),
            }],
        }],
    }
}

fn hex_string(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    hex(bytes, &mut out);
    // Hex digits only.
    String::from_utf8(out).unwrap_or_default()
}

fn unix_nanos(time: SystemTime) -> u128 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// OTel HTTP server semantic conventions, plus `scopegate.*`.
fn span_json(span: &ServerSpan) -> SpanJson {
    // Unknown methods are `_OTHER` in the conventions (the original is not kept: it
    // is the client's free text).
    let method = match span.method {
        "OTHER" => "_OTHER",
        known => known,
    };
    let name = match &span.route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let mut attributes = Vec::with_capacity(16);
    attributes.push(KeyValue::string("http.request.method", method));
    attributes.push(KeyValue::string("url.path", &*span.path));
    attributes.push(KeyValue::string("url.scheme", span.scheme));
    if let Some(route) = &span.route {
        attributes.push(KeyValue::string("http.route", &**route));
    }
    attributes.push(KeyValue::int("http.response.status_code", span.status));
    attributes.push(KeyValue::string(
        "network.protocol.version",
        span.protocol_version,
    ));
    if let Some(address) = &span.server_address {
        attributes.push(KeyValue::string("server.address", &**address));
    }
    if let Some(port) = span.server_port {
        attributes.push(KeyValue::int("server.port", port));
    }
    attributes.push(KeyValue::string(
        "client.address",
        span.client_address.to_string(),
    ));
    attributes.push(KeyValue::string("scopegate.auth", span.auth));
    if let Some(reason) = span.reason {
        attributes.push(KeyValue::string("scopegate.auth.reason", reason));
    }
    if let Ok(request_id) = span.request_id.to_str() {
        attributes.push(KeyValue::string("scopegate.request_id", request_id));
    }
    if let Some(upstream) = span.upstream {
        attributes.push(KeyValue::double(
            "scopegate.upstream.duration",
            upstream.as_secs_f64(),
        ));
    }
    if span.status >= 500 {
        attributes.push(KeyValue::string("error.type", span.status.to_string()));
    }
    SpanJson {
        trace_id: hex_string(&span.trace_id),
        span_id: hex_string(&span.span_id),
        parent_span_id: span
            .parent_id
            .as_ref()
            .map_or_else(String::new, |p| hex_string(p)),
        name,
        kind: SPAN_KIND_SERVER,
        start_time_unix_nano: unix_nanos(span.start).to_string(),
        end_time_unix_nano: unix_nanos(span.start + span.duration).to_string(),
        attributes,
        status: Status {
            code: if span.status >= 500 {
                STATUS_CODE_ERROR
            } else {
                0
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn span() -> ServerSpan {
        ServerSpan {
            trace_id: [0x4b; 16],
            span_id: [0x0a; 8],
            parent_id: Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]),
            start: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            duration: Duration::from_micros(1500),
            method: "GET",
            route: Some("contacts".into()),
            path: "/api/contacts/7".into(),
            scheme: "http",
            protocol_version: "1.1",
            server_address: Some("api.example.com".into()),
            server_port: Some(8080),
            client_address: IpAddr::from([203, 0, 113, 9]),
            status: 200,
            auth: "ok",
            reason: None,
            request_id: HeaderValue::from_static("req-1"),
            upstream: Some(Duration::from_millis(1)),
        }
    }

    fn encoded(spans: &[ServerSpan]) -> Value {
        serde_json::to_value(encode(&Resource::new("edge"), spans)).unwrap()
    }

    fn attribute<'v>(span: &'v Value, key: &str) -> Option<&'v Value> {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv["key"] == key)
            .map(|kv| &kv["value"])
    }

    #[test]
    fn a_span_in_the_otlp_json_mapping() {
        let body = encoded(&[span()]);
        let resource = &body["resourceSpans"][0]["resource"];
        assert_eq!(
            resource["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "edge"}})
        );
        assert_eq!(resource["attributes"][1]["key"], "service.version");
        let scope_spans = &body["resourceSpans"][0]["scopeSpans"][0];
        assert_eq!(scope_spans["scope"]["name"], "scopegate");
        let span = &scope_spans["spans"][0];
        assert_eq!(span["traceId"], "4b".repeat(16));
        assert_eq!(span["spanId"], "0a".repeat(8));
        assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(span["name"], "GET contacts");
        assert_eq!(span["kind"], 2);
        assert_eq!(span["startTimeUnixNano"], "1700000000123456789");
        assert_eq!(span["endTimeUnixNano"], "1700000000124956789");
        assert_eq!(span["status"], json!({"code": 0}));
        let text = |key| attribute(span, key).cloned();
        assert_eq!(
            text("http.request.method"),
            Some(json!({"stringValue": "GET"}))
        );
        assert_eq!(
            text("url.path"),
            Some(json!({"stringValue": "/api/contacts/7"}))
        );
        assert_eq!(text("http.route"), Some(json!({"stringValue": "contacts"})));
        assert_eq!(
            text("http.response.status_code"),
            Some(json!({"intValue": "200"}))
        );
        assert_eq!(
            text("server.address"),
            Some(json!({"stringValue": "api.example.com"}))
        );
        assert_eq!(text("server.port"), Some(json!({"intValue": "8080"})));
        assert_eq!(
            text("client.address"),
            Some(json!({"stringValue": "203.0.113.9"}))
        );
        assert_eq!(text("scopegate.auth"), Some(json!({"stringValue": "ok"})));
        assert_eq!(text("scopegate.auth.reason"), None);
        assert_eq!(
            text("scopegate.upstream.duration"),
            Some(json!({"doubleValue": 0.001}))
        );
        assert_eq!(text("error.type"), None);
    }

    #[test]
    fn a_new_trace_has_no_parent_and_5xx_is_an_error() {
        let mut failed = span();
        failed.parent_id = None;
        failed.status = 502;
        failed.route = None;
        failed.method = "OTHER";
        failed.auth = "refused";
        failed.reason = Some("expired");
        let body = encoded(&[failed]);
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert!(span.get("parentSpanId").is_none(), "{span}");
        assert_eq!(span["name"], "_OTHER");
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(attribute(span, "http.route"), None);
        assert_eq!(
            attribute(span, "error.type"),
            Some(&json!({"stringValue": "502"}))
        );
        assert_eq!(
            attribute(span, "scopegate.auth.reason"),
            Some(&json!({"stringValue": "expired"}))
        );
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let path = format!("/{}", "é".repeat(MAX_PATH_BYTES));
        let cut = ServerSpan::path_of(&path);
        assert!(cut.len() <= MAX_PATH_BYTES && cut.len() > MAX_PATH_BYTES - 2);
        assert_eq!(&*ServerSpan::path_of("/a"), "/a");
    }

    #[test]
    fn collector_answers() {
        assert_eq!(rejected_spans(b"{}"), 0);
        assert_eq!(rejected_spans(b""), 0);
        assert_eq!(
            rejected_spans(br#"{"partialSuccess":{"rejectedSpans":"3"}}"#),
            3
        );
        assert_eq!(
            rejected_spans(br#"{"partialSuccess":{"rejectedSpans":4}}"#),
            4
        );
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("3600"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        assert!(retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!retryable(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn a_reload_keeps_the_exporter_unless_the_collector_or_service_changes() {
        let metrics = Metrics::new();
        let fetcher = || Fetcher::new(crate::tls::tls_client_config(None).unwrap());
        let block = |endpoint: &str, service: &str, ratio: f64| TracingConfig {
            otlp_endpoint: Some(endpoint.into()),
            service_name: service.into(),
            sample_ratio: ratio,
        };
        let first = Tracing::new(Some(&block("http://a", "s", 1.0)), None, fetcher, &metrics);
        let same = |next: &Tracing| {
            Arc::ptr_eq(
                &first.exporter.as_ref().unwrap().worker,
                &next.exporter.as_ref().unwrap().worker,
            )
        };
        let ratio = Tracing::new(
            Some(&block("http://a", "s", 0.5)),
            Some(&first),
            fetcher,
            &metrics,
        );
        assert!(same(&ratio));
        assert_eq!(ratio.sampler, Sampler::ratio(0.5));
        for (endpoint, service) in [("http://b", "s"), ("http://a", "t")] {
            let next = Tracing::new(
                Some(&block(endpoint, service, 1.0)),
                Some(&first),
                fetcher,
                &metrics,
            );
            assert!(!same(&next), "{endpoint} {service}");
        }
        let off = Tracing::new(None, Some(&first), fetcher, &metrics);
        assert!(off.exporter.is_none());
        assert_eq!(off.sampler, Sampler::ALWAYS);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let metrics = Metrics::new();
        let config = TracingConfig {
            otlp_endpoint: Some("http://127.0.0.1:9".into()),
            service_name: "scopegate".into(),
            sample_ratio: 1.0,
        };
        let tls = crate::tls::tls_client_config(None).unwrap();
        let exporter = Exporter::new(
            &config,
            config.traces_url().unwrap(),
            Fetcher::new(tls),
            &metrics,
        );
        // Not started: nothing drains the queue.
        for _ in 0..QUEUE + 3 {
            exporter.record(span());
        }
        assert_eq!(
            metrics
                .otlp_spans_total
                .with_label_values(&["dropped"])
                .get(),
            3
        );
    }
}
