//! HTTP/2 to upstreams (`protocol: h2c | h2 | auto`): one multiplexed connection per
//! upstream, shared by every request to it and made again once it closes. Trailers
//! stream through both ways, so gRPC works end to end.
//!
//! `h2c` speaks HTTP/2 with prior knowledge over TCP; `h2` needs ALPN `h2` over TLS;
//! `auto` offers `h2` and `http/1.1` and takes what the upstream picks: an upstream that
//! picks HTTP/1.1 is remembered and served from the HTTP/1.1 pool from then on.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::{Connector, PoolKey, UpstreamBody, UpstreamError, Upstreams, error_chain, is_timeout};
use crate::config::Protocol;

/// The shared HTTP/2 connections, by upstream.
pub struct H2Pool {
    /// Offers `h2` and `http/1.1` over TLS; plain TCP for `http://`.
    connector: Connector,
    handshake: http2::Builder<TokioExecutor>,
    /// One connection per upstream and worker ([`super::set_worker`]): its I/O runs on
    /// the runtime that opened it.
    live: Mutex<HashMap<(usize, PoolKey), SendRequest<UpstreamBody>, foldhash::fast::RandomState>>,
    /// `auto` upstreams that picked HTTP/1.1.
    http1_only: Mutex<HashSet<PoolKey, foldhash::fast::RandomState>>,
}

/// What a new connection speaks.
enum Handshaken {
    H2(SendRequest<UpstreamBody>),
    /// ALPN picked HTTP/1.1 (`auto` only).
    Http1(hyper::client::conn::http1::SendRequest<UpstreamBody>),
}

impl H2Pool {
    pub fn new(tls: rustls::ClientConfig, connect_timeout: std::time::Duration) -> H2Pool {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(std::time::Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let mut handshake = http2::Builder::new(TokioExecutor::new());
        handshake
            .timer(TokioTimer::new())
            .keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_while_idle(true);
        H2Pool {
            connector,
            handshake,
            live: Mutex::new(HashMap::default()),
            http1_only: Mutex::new(HashSet::default()),
        }
    }

    fn live(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        HashMap<(usize, PoolKey), SendRequest<UpstreamBody>, foldhash::fast::RandomState>,
    > {
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_http1_only(&self, key: &PoolKey) -> bool {
        self.http1_only
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(key)
    }
}

impl Upstreams {
    /// Sends a prepared request (absolute URI) over HTTP/2 (or what `auto` found);
    /// waits at most the response timeout for its head.
    pub async fn send_h2(
        &self,
        request: Request<UpstreamBody>,
        protocol: Protocol,
        response_timeout: Option<Duration>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let uri = request.uri();
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamError::Exchange("the upstream URI has no authority".into()))?;
        let key: PoolKey = (uri.scheme() == Some(&http::uri::Scheme::HTTPS), authority);
        if protocol == Protocol::Auto && self.h2.is_http1_only(&key) {
            return self.send(request, response_timeout).await;
        }
        tokio::time::timeout(
            response_timeout.unwrap_or(self.response_timeout),
            self.exchange_h2(key, request, protocol),
        )
        .await
        .map_err(|_| UpstreamError::Timeout)?
    }

    async fn exchange_h2(
        &self,
        key: PoolKey,
        mut request: Request<UpstreamBody>,
        protocol: Protocol,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // HTTP/2 names the authority in `:authority` (from the URI); `TE: trailers` is
        // the one TE HTTP/2 allows, and gRPC servers look for it.
        let host = request.headers_mut().remove(http::header::HOST);
        request
            .headers_mut()
            .insert(http::header::TE, HeaderValue::from_static("trailers"));
        *request.version_mut() = Version::HTTP_2;
        let pooled = (super::worker(), key.clone());
        let mut cached = self.h2.live().get(&pooled).cloned();
        // A connection that went away (GOAWAY, reset) fails `ready` before anything is
        // sent: then one new connection is made.
        if let Some(sender) = &mut cached
            && sender.ready().await.is_err()
        {
            cached = None;
        }
        let mut sender = match cached {
            Some(sender) => sender,
            None => match self.connect_h2(&key, protocol).await? {
                Handshaken::H2(sender) => {
                    self.h2.live().insert(pooled, sender.clone());
                    sender
                }
                Handshaken::Http1(sender) => {
                    return self.send_on_http1(key, sender, request, host).await;
                }
            },
        };
        sender
            .send_request(request)
            .await
            .map_err(|err| UpstreamError::Exchange(error_chain(&err)))
    }

    /// The first request to an `auto` upstream that picked HTTP/1.1: sent on that
    /// connection, which then joins the HTTP/1.1 pool.
    async fn send_on_http1(
        &self,
        key: PoolKey,
        mut sender: hyper::client::conn::http1::SendRequest<UpstreamBody>,
        mut request: Request<UpstreamBody>,
        host: Option<HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.h2
            .http1_only
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key.clone());
        let mut origin = http::uri::Parts::default();
        origin.path_and_query = request.uri().path_and_query().cloned();
        *request.uri_mut() =
            Uri::from_parts(origin).map_err(|err| UpstreamError::Exchange(err.to_string()))?;
        *request.version_mut() = Version::HTTP_11;
        request.headers_mut().remove(http::header::TE);
        if let Some(host) = host {
            request.headers_mut().insert(http::header::HOST, host);
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| UpstreamError::Exchange(error_chain(&err)))?;
        self.checkin(key, sender);
        Ok(response)
    }

    async fn connect_h2(
        &self,
        key: &PoolKey,
        protocol: Protocol,
    ) -> Result<Handshaken, UpstreamError> {
        let scheme = if key.0 { "https" } else { "http" };
        let uri: Uri = format!("{scheme}://{}/", key.1)
            .parse()
            .map_err(|_| UpstreamError::Connect("invalid upstream address".into()))?;
        let io = self.h2.connector.clone().call(uri).await.map_err(|err| {
            if is_timeout(err.as_ref()) {
                UpstreamError::Timeout
            } else {
                UpstreamError::Connect(error_chain(err.as_ref()))
            }
        })?;
        let negotiated_h2 = io.connected().is_negotiated_h2();
        if key.0 && !negotiated_h2 {
            if protocol != Protocol::Auto {
                return Err(UpstreamError::Connect(
                    "the upstream did not agree to HTTP/2 (ALPN h2)".into(),
                ));
            }
            let (sender, connection) = self
                .handshake
                .handshake(io)
                .await
                .map_err(|err| UpstreamError::Connect(error_chain(&err)))?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "upstream connection ended with an error");
                }
            });
            return Ok(Handshaken::Http1(sender));
        }
        let (sender, connection) = self
            .h2
            .handshake
            .handshake(io)
            .await
            .map_err(|err| UpstreamError::Connect(error_chain(&err)))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(Handshaken::H2(sender))
    }
}
