//! What a route does beyond a plain request and answer: CORS ([`cors`](super::cors)),
//! WebSocket ([`upgrade`](super::upgrade)) and the upstream's HTTP version (gRPC needs
//! HTTP/2, [`grpc`](super::grpc)). A route without any of them pays a few branches.

use http::Request;
use hyper::body::Incoming;

use super::cors::{self, Cors};
use super::router::{Lookup, MethodSet};
use super::{Exchange, Route, upgrade};
use crate::config::{Config, Protocol, RouteConfig};
use crate::error::{ProxyError, Refusal};
use crate::http::Body;

/// A route's browser and protocol settings, compiled.
#[derive(Debug, Default)]
pub struct RouteWeb {
    pub cors: Option<Box<Cors>>,
    pub protocol: Protocol,
    pub websocket: bool,
}

impl RouteWeb {
    pub fn compile(config: &Config, route: &RouteConfig, methods: MethodSet) -> RouteWeb {
        RouteWeb {
            cors: config
                .route_cors(route)
                .map(|block| Box::new(Cors::compile(&block, methods))),
            protocol: route.protocol,
            websocket: route.websocket,
        }
    }
}

impl<'a> Exchange<'a> {
    /// A CORS preflight for a route with CORS, answered here (before any token check);
    /// `None` for every other request.
    pub(super) fn preflight(
        &mut self,
        path: &str,
        request: &Request<Incoming>,
    ) -> Result<Option<http::Response<Body>>, ProxyError> {
        let Some(method) = cors::preflight_method(request.method(), request.headers()) else {
            return Ok(None);
        };
        let pipeline = self.pipeline;
        let Lookup::Found(index) = pipeline.router.lookup(path, &method) else {
            return Ok(None);
        };
        let route = &pipeline.routes[index];
        let Some(cors) = route.web.cors.as_deref() else {
            return Ok(None);
        };
        if !self.context.span.is_disabled() {
            self.context.span.record("route", &*route.name);
        }
        self.outcome.route = Some(route.name.clone());
        cors.preflight(request.headers(), &method).map(Some)
    }

    /// The route's CORS answer, and whether the request is a WebSocket handshake it
    /// takes; refuses upgrades it cannot make and gRPC it cannot carry.
    pub(super) fn protocol(
        &mut self,
        route: &'a Route,
        request: &Request<Incoming>,
    ) -> Result<bool, ProxyError> {
        let web = &route.web;
        if let Some(cors) = web.cors.as_deref() {
            self.cors = Some(cors.answer(request.headers())?);
        }
        if self.grpc && web.protocol == Protocol::Http1 {
            return Err(ProxyError::Refused(Refusal::GrpcNeedsH2));
        }
        upgrade::check(web.websocket, request)
    }
}
