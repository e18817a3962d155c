//! The request's journey: route → authenticate → authorize → forward.
//!
//! [`handle`] takes one snapshot of the state, runs [`process`] (a short sequence of
//! calls, each in its own module), turns any [`ProxyError`] into its answer in one place,
//! and records metrics and the access log line.
//!
//! Each request runs inside one `tracing` span, `request` (target `scopegate::access`,
//! level INFO): `request_id` and `method` from the start, `route` once matched, and at
//! the end `status`, `latency_ms`, `upstream_ms` (when an upstream was called), `auth`
//! (`ok`: a token was verified; `none`: no token was checked; `refused`) and `reason`
//! (the `auth_failures_total` reason, when refused). Events logged while the request is
//! processed (an upstream failure, a JWKS refetch its token triggered) carry the span's
//! fields; the span is closed by the access event (`scopegate::access`, message
//! `request`). When the level filter disables the span, it costs a few branches.

pub mod authn;
pub mod authz;
pub mod forward;
pub mod router;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tracing::Instrument;
use tracing::field::{Empty, Value};

use crate::claims::{Identity, Reason};
use crate::config::AuthMode;
use crate::error::ProxyError;
use crate::metrics::method_label;
use crate::state::{Gateway, Route, State};
use crate::upstream::{UpstreamError, UpstreamTarget};
use forward::{Origin, X_REQUEST_ID};
use router::Lookup;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The metrics route label of the built-in issuer's endpoints.
pub const ISSUER_ROUTE: &str = "issuer";

/// The response body type of everything Scopegate answers: its own small JSON bodies and
/// upstream bodies streamed through.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// What the server knows about the connection a request came on, prepared once per
/// connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// The peer's IP as a header value, for `x-forwarded-for`.
    pub client_ip: HeaderValue,
}

impl ConnInfo {
    pub fn new(remote: SocketAddr, tls: bool) -> ConnInfo {
        let client_ip = HeaderValue::from_str(&remote.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo {
            remote,
            tls,
            client_ip,
        }
    }
}

/// What happened to a request, for metrics and the access log.
#[derive(Debug)]
struct Outcome {
    route: Option<Arc<str>>,
    reason: Option<Reason>,
    /// A token was verified.
    authenticated: bool,
    upstream_seconds: Option<f64>,
    /// The request's span (disabled when the level filter says so).
    span: tracing::Span,
}

impl Outcome {
    fn set_route(&mut self, route: Arc<str>) {
        if !self.span.is_disabled() {
            self.span.record("route", &*route);
        }
        self.route = Some(route);
    }

    /// `auth` as logged: `ok`, `none` or `refused`.
    fn auth(&self) -> &'static str {
        match (self.reason, self.authenticated) {
            (Some(_), _) => "refused",
            (None, true) => "ok",
            (None, false) => "none",
        }
    }

    /// Records the end of the request on its span, in one call (each record is work
    /// for the subscriber), then closes it with the access event.
    fn close(
        &self,
        request_id: &HeaderValue,
        method: &'static str,
        status: StatusCode,
        elapsed: f64,
    ) {
        let status = status.as_u16();
        let latency_ms = elapsed * 1000.0;
        let upstream_ms = self.upstream_seconds.map(|s| s * 1000.0);
        let auth = self.auth();
        let reason = self.reason.map(Reason::label);
        if self.span.is_disabled() {
            // The span is filtered out (and so, at the usual filters, is this line):
            // should a filter still want the access line, it carries the fields itself.
            tracing::info!(
                target: "scopegate::access",
                request_id = request_id.to_str().unwrap_or(""),
                method,
                route = self.route.as_deref().unwrap_or("unmatched"),
                status,
                latency_ms,
                upstream_ms,
                auth,
                reason,
                "request"
            );
            return;
        }
        if self.route.is_none() {
            self.span.record("route", "unmatched");
        }
        if let Some(fields) = self.span.metadata().map(|m| m.fields())
            && let (Some(status_f), Some(latency_f), Some(upstream_f), Some(auth_f), Some(reason_f)) = (
                fields.field("status"),
                fields.field("latency_ms"),
                fields.field("upstream_ms"),
                fields.field("auth"),
                fields.field("reason"),
            )
        {
            self.span.record_all(&fields.value_set(&[
                (&status_f, Some(&status as &dyn Value)),
                (&latency_f, Some(&latency_ms as &dyn Value)),
                (&upstream_f, upstream_ms.as_ref().map(|v| v as &dyn Value)),
                (&auth_f, Some(&auth as &dyn Value)),
                (&reason_f, reason.as_ref().map(|v| v as &dyn Value)),
            ]));
        }
        tracing::info!(target: "scopegate::access", parent: &self.span, "request");
    }
}

/// Keeps `in_flight_requests` honest even when a request future is dropped.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Handles one request end to end. Never fails: every error becomes an answer.
pub async fn handle(
    gateway: &Gateway,
    request: Request<Incoming>,
    conn: &ConnInfo,
) -> Response<Body> {
    let started = Instant::now();
    let metrics = &gateway.metrics;
    metrics.in_flight_requests.inc();
    let _in_flight = InFlight(&metrics.in_flight_requests);
    let state = gateway.state();

    let request_id = match request.headers().get(&X_REQUEST_ID) {
        Some(id) if forward::sane_request_id(id) => id.clone(),
        _ => forward::new_request_id(),
    };
    let method = request.method().clone();
    let span = tracing::info_span!(
        target: "scopegate::access",
        "request",
        request_id = request_id.to_str().unwrap_or(""),
        method = method_label(&method),
        route = Empty,
        status = Empty,
        latency_ms = Empty,
        upstream_ms = Empty,
        auth = Empty,
        reason = Empty,
    );
    let mut outcome = Outcome {
        route: None,
        reason: None,
        authenticated: false,
        upstream_seconds: None,
        span,
    };
    let result = if outcome.span.is_disabled() {
        process(&state, request, conn, &request_id, &mut outcome).await
    } else {
        let span = outcome.span.clone();
        process(&state, request, conn, &request_id, &mut outcome)
            .instrument(span)
            .await
    };
    let mut response = match result {
        Ok(response) => response,
        Err(err) => {
            outcome.reason = err.reason();
            err.into_response()
        }
    };

    let status = response.status();
    let route = outcome.route.as_deref().unwrap_or("unmatched");
    let elapsed = started.elapsed().as_secs_f64();
    metrics
        .requests_total
        .with_label_values(&[route, method_label(&method), status.as_str()])
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
    outcome.close(&request_id, method_label(&method), status, elapsed);
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id);
    response
}

/// route → authenticate → authorize → forward.
async fn process(
    state: &State,
    request: Request<Incoming>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    check_header_size(&request, state.config.server.limits.max_header_bytes)?;
    let path = router::normalize_path(request.uri().path())
        .map_err(|err| ProxyError::BadRequest(err.to_string()))?;

    // The built-in issuer's endpoints come before routes.
    if let Some(issuer) = &state.issuer
        && issuer.owns(&path)
    {
        outcome.set_route(Arc::from(ISSUER_ROUTE));
        let path = path.into_owned();
        return Ok(issuer.handle(request, &path, conn.clone()).await);
    }

    let route = match state.router.lookup(&path, request.method()) {
        Lookup::Found(index) => &state.routes[index],
        Lookup::MethodNotAllowed(methods) => return Err(ProxyError::MethodNotAllowed(methods)),
        Lookup::NotFound => return Err(ProxyError::NotFound),
    };
    outcome.set_route(route.name.clone());

    let identity = authenticate(state, route, &request).await?;
    if let Some(identity) = &identity {
        outcome.authenticated = true;
        route.policy.authorize(identity)?;
    }

    let upstream_target = upstream_target(route, &path, request.uri().query());
    forward_request(
        state,
        route,
        request,
        upstream_target,
        identity.as_deref(),
        conn,
        request_id,
        outcome,
    )
    .await
}

/// The path and query sent upstream: the upstream URL's base path, the request path after
/// `strip_prefix`, the query untouched.
fn upstream_target(route: &Route, path: &str, query: Option<&str>) -> String {
    let forwarded = route.forwarded_path(path);
    let base = match &route.upstream {
        UpstreamTarget::Http(target) => &*target.base_path,
        UpstreamTarget::Echo => "",
    };
    let mut out =
        String::with_capacity(base.len() + forwarded.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(base);
    out.push_str(&forwarded);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

fn check_header_size(request: &Request<Incoming>, limit: usize) -> Result<(), ProxyError> {
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > limit {
        return Err(ProxyError::HeadersTooLarge);
    }
    Ok(())
}

async fn authenticate(
    state: &State,
    route: &Route,
    request: &Request<Incoming>,
) -> Result<Option<Arc<Identity>>, ProxyError> {
    if route.policy.auth == AuthMode::None {
        return Ok(None);
    }
    match authn::bearer_token(request.headers())? {
        Some(token) => state
            .verifier
            .verify(token)
            .await
            .map(Some)
            .map_err(ProxyError::InvalidToken),
        None if route.policy.auth == AuthMode::Optional => Ok(None),
        None => Err(ProxyError::MissingToken),
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward_request(
    state: &State,
    route: &Route,
    request: Request<Incoming>,
    path_and_query: String,
    identity: Option<&Identity>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    let host = parts.headers.get(http::header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let origin = Origin {
        client_ip: conn.client_ip.clone(),
        proto: if conn.tls { "https" } else { "http" },
        host,
        request_id,
        upstream_host: match &route.upstream {
            UpstreamTarget::Http(target) => Some(&target.host),
            UpstreamTarget::Echo => None,
        },
    };
    let headers = forward::upstream_headers(
        &state.forward,
        std::mem::take(&mut parts.headers),
        identity,
        &origin,
    );

    let target = match &route.upstream {
        UpstreamTarget::Echo => return Ok(echo(&parts.method, &path_and_query, &headers)),
        UpstreamTarget::Http(target) => target,
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(target.scheme.clone());
    uri.authority = Some(target.authority.clone());
    uri.path_and_query = Some(
        PathAndQuery::from_maybe_shared(Bytes::from(path_and_query))
            .map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded".into()))?,
    );
    parts.uri = Uri::from_parts(uri)
        .map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded".into()))?;
    parts.headers = headers;
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();

    let started = Instant::now();
    let result = state.upstreams.send(Request::from_parts(parts, body)).await;
    outcome.upstream_seconds = Some(started.elapsed().as_secs_f64());
    match result {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            forward::downstream_headers(&mut parts.headers, request_id);
            Ok(Response::from_parts(
                parts,
                body.map_err(BoxError::from).boxed_unsync(),
            ))
        }
        Err(err) => {
            // `route` again: at `log.level: warn` the request span is off.
            tracing::warn!(route = &*route.name, error = %err, "upstream failed");
            Err(match err {
                UpstreamError::Timeout => ProxyError::GatewayTimeout,
                UpstreamError::Connect(_) | UpstreamError::Exchange(_) => ProxyError::BadGateway,
            })
        }
    }
}

/// `builtin:echo`: the request as it would have been forwarded.
fn echo(method: &http::Method, path: &str, headers: &http::HeaderMap) -> Response<Body> {
    let mut object = serde_json::Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        object.insert(name.as_str().to_string(), serde_json::Value::String(joined));
    }
    let body = serde_json::json!({
        "method": method.as_str(),
        "path": path,
        "headers": object,
    });
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
