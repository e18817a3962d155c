//! Listeners: accept → rustls (optional) → hyper-util `auto::Builder` (HTTP/1.1 and
//! HTTP/2, h2c included) → [`Gateway::handle`] (the access layer around the pipeline);
//! the admin listener; graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::http::{Body, ConnInfo, full};
use crate::state::Gateway;

fn http_builder(gateway: &Gateway) -> auto::Builder<TokioExecutor> {
    let state = gateway.state();
    let server = &state.config.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's read buffer must hold the whole request head. Sized at exactly
    // `max_header_bytes`, hyper itself refused every oversized head with a bare, empty
    // 431 before the pipeline's own check could answer with JSON. With room for twice
    // the limit, the pipeline answers (JSON 431); hyper's bare 431 only bounds memory
    // against heads beyond that.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.timeouts.client_header.get())
        .max_buf_size(head_buffer_bytes(server.limits.max_header_bytes));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// hyper's HTTP/1 read buffer for a `max_header_bytes` limit: room for twice the limit
/// (at least 16 KiB), so the pipeline, not hyper, answers a head just over the limit.
fn head_buffer_bytes(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(2).max(16 * 1024)
}

/// Serves the proxy (and issuer) on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish for at most `server.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let builder = http_builder(&gateway);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let tls = gateway.state().tls.clone();
        let gateway = gateway.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let conn = Arc::new(ConnInfo::new(remote, tls.is_some()));
            let service = service_fn(move |request: Request<Incoming>| {
                let gateway = gateway.clone();
                let conn = conn.clone();
                async move { Ok::<_, Infallible>(gateway.handle(request, &conn).await) }
            });
            let result = match tls {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            let connection =
                                builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(connection.into_owned()).await
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(error = %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            };
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let grace = gateway.state().config.server.shutdown_grace.get();
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
    Ok(())
}

/// Serves `/healthz`, `/readyz` and `/metrics` until `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(admin(&gateway, &request)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin(gateway: &Gateway, request: &Request<Incoming>) -> Response<Body> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut response = Response::new(full(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        response
    };
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET only\n".into(),
            "text/plain",
        );
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" if gateway.ready() => text(StatusCode::OK, "ready\n".into(), "text/plain"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for trusted issuers' keys\n".into(),
            "text/plain",
        ),
        "/metrics" => text(
            StatusCode::OK,
            gateway.metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}
