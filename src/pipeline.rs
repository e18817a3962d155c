//! The request's journey: route → authenticate → authorize → forward.
//!
//! [`Pipeline`] is one generation of what the request path reads, compiled from the
//! config (see `state::State::compile`). [`handle`] runs one request through it: a short
//! sequence of calls, each in its own module, with every [`ProxyError`] turned into its
//! answer in one place. It returns the answer with an [`Outcome`] (route, auth result,
//! upstream time); the [`access`] layer that wraps it turns that into metrics, the
//! access line and the request id.
//!
//! The built-in issuer's endpoints are routes like any other ([`Target::Issuer`]), in the
//! same router; they reserve their paths, so they are matched before the config's routes.

pub mod access;
pub mod authn;
pub mod authz;
pub mod cors;
pub mod dpop;
pub mod forward;
pub mod grpc;
pub mod introspect;
pub mod limit;
pub mod ratelimit;
pub mod redirect;
pub mod request;
pub mod router;
pub mod upgrade;
pub mod upstream_token;
pub mod web;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::claims::{AuthFailure, Identity, Reason};
use crate::config::route::HttpTarget;
use crate::config::{AuthMode, Protocol, UpstreamTarget};
use crate::error::{ProxyError, Refusal};
use crate::flood::Flood;
use crate::http::{Body, BoxError, ConnInfo, TokenScheme, full};
use crate::issuer::{Endpoint, Issuer};
use crate::upstream::set::Tracked;
use crate::upstream::{UpstreamBody, UpstreamError, Upstreams};
use authn::Verifier;
use authz::Policy;
use forward::{ForwardHeaders, Origin};
use router::{Lookup, MethodSet, Router};

static UPSTREAM_FAILED: Flood = Flood::per(std::time::Duration::from_secs(1));

/// The metrics route label of the built-in issuer's endpoints.
pub const ISSUER_ROUTE: &str = "issuer";

/// A route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// The route's name, also its metrics label.
    pub name: Arc<str>,
    /// The `match.path` pattern as written.
    pub path: String,
    pub methods: MethodSet,
    pub policy: Policy,
    pub target: Target,
    pub strip_prefix: Option<Box<str>>,
    /// Body size, timeouts.
    pub limits: limit::RouteLimits,
    /// CORS, WebSocket and the upstream's HTTP version.
    pub web: web::RouteWeb,
    /// A token minted for the upstream in place of the caller's.
    pub upstream_token: Option<upstream_token::UpstreamToken>,
}

/// Where a route's requests go.
#[derive(Debug)]
pub enum Target {
    /// An upstream URL, or `builtin:echo`.
    Upstream(UpstreamTarget),
    /// One of the built-in issuer's endpoints.
    Issuer(Endpoint),
}

impl Route {
    /// The path sent upstream: `strip_prefix` removed at a segment boundary.
    pub fn forwarded_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        let Some(prefix) = self.strip_prefix.as_deref() else {
            return path.into();
        };
        match path.strip_prefix(prefix) {
            Some("") => "/".into(),
            Some(rest) if rest.starts_with('/') => rest.into(),
            _ => path.into(),
        }
    }

    /// The path and query sent upstream: the upstream URL's base path, the request path
    /// after `strip_prefix`, the query untouched.
    fn upstream_path(&self, path: &str, query: Option<&str>) -> String {
        let forwarded = self.forwarded_path(path);
        let base = match &self.target {
            Target::Upstream(UpstreamTarget::Http(target)) => &*target.base_path,
            _ => "",
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
}

/// One generation of the request path's state: routes (the issuer's endpoints first),
/// the verifier, the identity headers, the upstream pool.
#[derive(Debug)]
pub struct Pipeline {
    pub routes: Vec<Route>,
    pub router: Router,
    pub verifier: Verifier,
    pub forward: ForwardHeaders,
    pub upstreams: Upstreams,
    pub max_header_bytes: usize,
    /// The built-in issuer, when `issuer.enabled` (and not just checked).
    pub issuer: Option<Arc<Issuer>>,
    /// `server.trusted_proxies`: whose `x-forwarded-for` names the client (the issuer's
    /// sign-in throttle keys on that client, as `rate_limit.key: ip` does).
    pub trusted_proxies: Arc<[crate::config::limits::Cidr]>,
    /// DPoP proof checks (with their replay cache, shared across reloads).
    pub dpop: Arc<dpop::ProofChecker>,
    /// Head sampling, and the exporter of sampled requests' spans (`tracing:`).
    pub tracing: crate::otlp::Tracing,
}

/// What happened to a request, for metrics and the access line.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The matched route's name.
    pub route: Option<Arc<str>>,
    /// Why the request was refused, when it was an auth failure.
    pub reason: Option<Reason>,
    /// A token was verified.
    pub authenticated: bool,
    /// Time spent waiting for the upstream's answer head.
    pub upstream_seconds: Option<f64>,
    /// Why the request was refused, when it was refused for its protocol.
    pub refusal: Option<Refusal>,
    /// A WebSocket connection to relay once the `101` is sent.
    pub tunnel: Option<upgrade::Tunnel>,
}

/// What one request carries beside itself.
pub struct Context<'a> {
    pub conn: &'a ConnInfo,
    /// The request id sent upstream and returned to the client.
    pub request_id: &'a HeaderValue,
    /// The request's span (disabled when the level filter says so).
    pub span: &'a tracing::Span,
    /// The request's place in a W3C trace.
    pub trace: &'a crate::http::trace::Trace,
}

/// Handles one request end to end. Never fails: every error becomes an answer.
pub async fn handle(
    pipeline: &Pipeline,
    request: Request<Incoming>,
    context: &Context<'_>,
) -> (Response<Body>, Outcome) {
    let version = request.version();
    let mut exchange = Exchange {
        pipeline,
        context,
        outcome: Outcome::default(),
        cors: None,
        // gRPC clients speak HTTP/2 only; an HTTP/1.1 request is never looked at.
        grpc: version == Version::HTTP_2 && grpc::is_grpc(request.headers()),
        version,
    };
    let mut response = match exchange.run(request).await {
        Ok(response) => response,
        Err(err) => {
            exchange.outcome.reason = err.reason();
            exchange.outcome.refusal = err.refusal();
            if exchange.grpc {
                grpc::answer(err)
            } else {
                err.into_response()
            }
        }
    };
    if let Some(cors) = &exchange.cors {
        cors.apply(response.headers_mut());
    }
    (response, exchange.outcome)
}

/// One request on its way through a pipeline.
struct Exchange<'a> {
    pipeline: &'a Pipeline,
    context: &'a Context<'a>,
    outcome: Outcome,
    /// The CORS headers of the answer, for a route with CORS.
    cors: Option<cors::Answer<'a>>,
    /// A gRPC request: errors are answered as gRPC statuses.
    grpc: bool,
    /// The client's HTTP version, which every answer keeps.
    version: Version,
}

impl<'a> Exchange<'a> {
    /// route → authenticate → authorize → forward.
    async fn run(&mut self, mut request: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
        request::check(&mut request)?;
        check_header_size(&request, self.pipeline.max_header_bytes)?;
        let path = router::normalize_path(request.uri().path())
            .map_err(|err| ProxyError::BadRequest(err.to_string()))?;
        if let Some(answer) = self.preflight(&path, &request)? {
            return Ok(answer);
        }
        let route = self.route(&path, request.method())?;
        if let Target::Issuer(endpoint) = route.target {
            return Box::pin(self.issuer(endpoint, request)).await;
        }
        let websocket = self.protocol(route, &request)?;
        let identity = self.authenticate(route, &request).await?;
        if let Some(identity) = &identity {
            route.policy.authorize(identity)?;
        }
        let quota = match &route.limits.rate_limit {
            Some(limit) => {
                Some(limit.admit(identity.as_deref(), self.context.conn, request.headers())?)
            }
            None => None,
        };
        let upstream_authorization = match (&route.upstream_token, &identity) {
            (Some(upstream_token), Some(identity)) => {
                let token = match authn::access_token(request.headers())? {
                    Some((_, token)) => token,
                    None => return Err(ProxyError::MissingToken),
                };
                let issuer = self.pipeline.issuer.as_deref();
                Some(Box::pin(upstream_token.authorization(issuer, token, identity)).await?)
            }
            _ => None,
        };
        let path_and_query = route.upstream_path(&path, request.uri().query());
        if websocket {
            // Boxed: the rare path's state stays out of every request's future.
            return Box::pin(self.websocket(route, request, path_and_query, identity.as_deref()))
                .await;
        }
        let mut response = self
            .forward(
                route,
                request,
                path_and_query,
                identity.as_deref(),
                upstream_authorization,
            )
            .await?;
        if let Some(quota) = quota {
            quota.apply(response.headers_mut());
        }
        Ok(response)
    }

    /// The route for the normalized path and the method; 404 or 405 when there is none.
    fn route(&mut self, path: &str, method: &http::Method) -> Result<&'a Route, ProxyError> {
        let pipeline = self.pipeline;
        let route = match pipeline.router.lookup(path, method) {
            Lookup::Found(index) => &pipeline.routes[index],
            Lookup::MethodNotAllowed(methods) => {
                return Err(ProxyError::MethodNotAllowed(methods.allow_header()));
            }
            Lookup::NotFound => return Err(ProxyError::NotFound),
        };
        if !self.context.span.is_disabled() {
            self.context.span.record("route", &*route.name);
        }
        self.outcome.route = Some(route.name.clone());
        Ok(route)
    }

    /// The route's access token, verified; `None` when the route needs no token or takes
    /// a request without one. A DPoP-bound token needs the `DPoP` scheme and a valid
    /// proof; a `dpop: required` route takes only bound tokens.
    async fn authenticate(
        &mut self,
        route: &Route,
        request: &Request<Incoming>,
    ) -> Result<Option<Arc<Identity>>, ProxyError> {
        if route.policy.auth == AuthMode::None {
            return Ok(None);
        }
        match authn::access_token(request.headers())? {
            Some((scheme, token)) => {
                let identity = self
                    .pipeline
                    .verifier
                    .verify_for_route(token, route.policy.strict)
                    .await
                    .map_err(|failure| match failure.reason {
                        Reason::IssuerUnavailable => ProxyError::IssuerUnavailable(failure),
                        _ => ProxyError::InvalidToken(failure),
                    })?;
                self.check_dpop(route, request, scheme, token, &identity)
                    .map_err(ProxyError::InvalidToken)?;
                self.outcome.authenticated = true;
                Ok(Some(identity))
            }
            None if route.policy.auth == AuthMode::Optional && !route.policy.dpop_required => {
                Ok(None)
            }
            None => Err(ProxyError::MissingToken),
        }
    }

    /// RFC 9449 at the resource: the token's binding, the scheme it came with, and the
    /// route's demand must agree, and a bound token's proof must hold.
    fn check_dpop(
        &self,
        route: &Route,
        request: &Request<Incoming>,
        scheme: TokenScheme,
        token: &str,
        identity: &Identity,
    ) -> Result<(), AuthFailure> {
        let refuse = |why: &str| Err(AuthFailure::new(Reason::DpopInvalid, why));
        match (identity.dpop_jkt.as_deref(), scheme) {
            (Some(jkt), TokenScheme::Dpop) => {
                let authority = request_authority(request);
                dpop::check(
                    &self.pipeline.dpop,
                    dpop::Request {
                        headers: request.headers(),
                        method: request.method(),
                        authority: authority.as_deref().unwrap_or(""),
                        path: request.uri().path(),
                        token,
                        jkt,
                        leeway: self.pipeline.verifier.leeway(),
                    },
                )
            }
            (Some(_), TokenScheme::Bearer) => {
                refuse("this token is DPoP-bound: send it as Authorization: DPoP with a proof")
            }
            (None, TokenScheme::Dpop) => {
                refuse("this token is not DPoP-bound: send it as Authorization: Bearer")
            }
            (None, TokenScheme::Bearer) if route.policy.dpop_required => {
                refuse("this route takes only DPoP-bound tokens")
            }
            (None, TokenScheme::Bearer) => Ok(()),
        }
    }

    /// One of the built-in issuer's endpoints.
    async fn issuer(
        &mut self,
        endpoint: Endpoint,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        match &self.pipeline.issuer {
            Some(issuer) => {
                // Who asks, for the issuer's throttles: the client behind a trusted
                // proxy, resolved as for rate limits.
                let mut conn = self.context.conn.clone();
                let client = ratelimit::client_ip(
                    conn.remote.ip(),
                    request.headers(),
                    &self.pipeline.trusted_proxies,
                );
                conn.remote.set_ip(client);
                Ok(issuer.serve(endpoint, request, &conn).await)
            }
            // Compiled for `check` only; never served.
            None => {
                tracing::error!(?endpoint, "issuer endpoint routed without an issuer");
                Err(ProxyError::NotFound)
            }
        }
    }

    /// Rewrites the headers and sends the request to the route's upstream (or answers
    /// as `builtin:echo`); streams the answer back.
    async fn forward(
        &mut self,
        route: &Route,
        request: Request<Incoming>,
        path_and_query: String,
        identity: Option<&Identity>,
        upstream_authorization: Option<HeaderValue>,
    ) -> Result<Response<Body>, ProxyError> {
        let Target::Upstream(upstream) = &route.target else {
            return Err(ProxyError::NotFound);
        };
        let (mut parts, body) = request.into_parts();
        let origin = self.origin(
            &parts,
            match upstream {
                UpstreamTarget::Http(target) => Some(&target.host),
                UpstreamTarget::Echo => None,
            },
        );
        let mut headers = forward::upstream_headers(
            &self.pipeline.forward,
            std::mem::take(&mut parts.headers),
            identity,
            &origin,
        );
        if let Some(authorization) = upstream_authorization {
            headers.insert(http::header::AUTHORIZATION, authorization);
        }
        route.limits.check_declared(&headers)?;
        let target = match upstream {
            UpstreamTarget::Echo => return Ok(echo(&parts.method, &path_and_query, &headers)),
            UpstreamTarget::Http(target) => target,
        };
        parts.uri = upstream_uri(target, path_and_query)?;
        parts.headers = headers;
        parts.version = Version::HTTP_11;
        parts.extensions = http::Extensions::new();
        let (body, tripped) = route.limits.body(body);
        self.exchange_upstream(route, Request::from_parts(parts, body), tripped)
            .await
    }

    /// Where the request came from and where it goes, for the upstream's headers.
    fn origin<'h>(
        &self,
        parts: &http::request::Parts,
        upstream_host: Option<&'h HeaderValue>,
    ) -> Origin<'h>
    where
        'a: 'h,
    {
        Origin {
            client_ip: self.context.conn.client_ip.clone(),
            proto: if self.context.conn.tls {
                "https"
            } else {
                "http"
            },
            host: request_host(parts),
            request_id: self.context.request_id,
            upstream_host,
            trace: self.context.trace,
        }
    }

    /// Sends the rewritten request and relays the answer (or 502/504, or 413 when the
    /// body went past `max_body` on the way).
    async fn exchange_upstream(
        &mut self,
        route: &Route,
        request: Request<UpstreamBody>,
        tripped: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<Response<Body>, ProxyError> {
        let request_id = self.context.request_id;
        let started = Instant::now();
        let upstreams = &self.pipeline.upstreams;
        let timeout = route.limits.response_timeout;
        let result = match (&route.limits.endpoints, route.web.protocol) {
            (Some(set), Protocol::Http1) => Box::pin(set.send(upstreams, request, timeout))
                .await
                .map(|(response, in_flight)| (response, Some(in_flight))),
            (None, Protocol::Http1) => upstreams
                .send(request, timeout)
                .await
                .map(|response| (response, None)),
            // HTTP/2 multiplexes on one connection per upstream: to the route's first
            // endpoint (a set's balancing applies to HTTP/1.1 routes).
            (_, protocol) => Box::pin(upstreams.send_h2(request, protocol, timeout))
                .await
                .map(|response| (response, None)),
        };
        self.outcome.upstream_seconds = Some(started.elapsed().as_secs_f64());
        if result.is_err() && tripped.is_some_and(|t| t.load(std::sync::atomic::Ordering::Relaxed))
        {
            return Err(ProxyError::PayloadTooLarge);
        }
        match result {
            Ok((response, in_flight)) => {
                let (mut parts, body) = response.into_parts();
                forward::downstream(&mut parts, request_id)?;
                if let Some(redirects) = &route.limits.redirects {
                    redirects.rewrite(&mut parts.headers);
                }
                // The client's version, whatever the upstream's: an HTTP/1.0 upstream
                // must not turn an HTTP/1.1 client's answer into a closing HTTP/1.0 one.
                parts.version = self.version;
                let body = body.map_err(BoxError::from);
                let body = match in_flight {
                    // An endpoint of a set: in flight until the answer has streamed.
                    Some(in_flight) => Tracked::new(body, in_flight).boxed_unsync(),
                    None => body.boxed_unsync(),
                };
                Ok(Response::from_parts(parts, body))
            }
            Err(err) => {
                // `route` again: at `log.level: warn` the request span is off. One line a
                // second at most: an outage would otherwise log every failed request.
                if let Some(suppressed) = UPSTREAM_FAILED.pass() {
                    tracing::warn!(route = &*route.name, error = %err, suppressed, "upstream failed");
                }
                Err(match err {
                    UpstreamError::Timeout => ProxyError::GatewayTimeout,
                    UpstreamError::Connect(_) | UpstreamError::Exchange(_) => {
                        ProxyError::BadGateway
                    }
                })
            }
        }
    }
}

/// `scheme://authority` of the upstream with the path and query to send.
fn upstream_uri(target: &HttpTarget, path_and_query: String) -> Result<Uri, ProxyError> {
    let cannot = || ProxyError::BadRequest("the request target cannot be forwarded".into());
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(target.scheme.clone());
    uri.authority = Some(target.authority.clone());
    uri.path_and_query =
        Some(PathAndQuery::from_maybe_shared(Bytes::from(path_and_query)).map_err(|_| cannot())?);
    Uri::from_parts(uri).map_err(|_| cannot())
}

/// `host[:port]` the client addressed, for a DPoP proof's `htu`.
fn request_authority(request: &Request<Incoming>) -> Option<String> {
    match request.headers().get(http::header::HOST) {
        Some(host) => host.to_str().ok().map(str::to_string),
        None => request.uri().authority().map(|a| a.as_str().to_string()),
    }
}

/// The `Host` the client asked for: its header, else the request target's authority.
fn request_host(parts: &http::request::Parts) -> Option<HeaderValue> {
    parts.headers.get(http::header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
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
