//! Protocol upgrades: WebSocket (RFC 6455) on routes with `websocket: true`.
//!
//! The handshake is a request like any other: routed, authenticated, authorized, its
//! headers rewritten (identity headers added, spoofed ones stripped), then sent on a
//! new upstream connection with `Connection: upgrade` and `Upgrade: websocket` put back.
//! When the upstream answers `101`, the client gets the `101` and the two connections
//! are joined: bytes are relayed both ways, unread, until either side closes, no byte
//! moves either way for `timeouts.tunnel_idle` (default 5 minutes), or the listener's
//! shutdown grace runs out. Any other answer is relayed as an answer.
//!
//! `Upgrade` elsewhere: without `Connection: upgrade` it asks nothing and is dropped
//! with the other hop-by-hop headers; `h2c` (what `curl --http2` offers over cleartext)
//! is ignored, as RFC 9110 §7.8 allows; a WebSocket handshake on a route without `websocket: true`
//! and an upgrade to any other protocol are refused with 400 and a counted reason.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::forward;
use super::{Exchange, Route, Target, upstream_uri};
use crate::claims::Identity;
use crate::config::UpstreamTarget;
use crate::error::{ProxyError, Refusal};
use crate::http::{Body, BoxError, Lease};

/// Whether a request is a WebSocket handshake for a route that takes them; refuses
/// upgrades the route cannot make.
pub fn check<B>(websocket: bool, request: &Request<B>) -> Result<bool, ProxyError> {
    let Some(upgrade) = request.headers().get(UPGRADE) else {
        return Ok(false);
    };
    let headers = request.headers();
    let connection_upgrade = headers.get_all(CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    if !connection_upgrade {
        // Not an upgrade request (RFC 9110 §7.8): a stray hop-by-hop header, dropped.
        return Ok(false);
    }
    let mut asks_websocket = false;
    for protocol in upgrade.as_bytes().split(|&b| b == b',') {
        let name = protocol.trim_ascii();
        let name = name.split(|&b| b == b'/').next().unwrap_or_default();
        if name.eq_ignore_ascii_case(b"websocket") {
            asks_websocket = true;
        } else if !name.eq_ignore_ascii_case(b"h2c") {
            return Err(ProxyError::Refused(Refusal::UpgradeUnsupported));
        }
    }
    if !asks_websocket {
        return Ok(false);
    }
    if !websocket {
        return Err(ProxyError::Refused(Refusal::WebsocketNotEnabled));
    }
    let handshake = request.method() == Method::GET
        && request.version() == Version::HTTP_11
        && headers.get_all(UPGRADE).iter().count() == 1
        && headers
            .get(SEC_WEBSOCKET_KEY)
            .is_some_and(|k| !k.is_empty())
        && headers.get(SEC_WEBSOCKET_VERSION).is_some();
    if !handshake {
        return Err(ProxyError::Refused(Refusal::WebsocketMalformed));
    }
    Ok(true)
}

/// The two halves of a WebSocket connection, joined once both have switched.
pub struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
    /// Closed after this long with no bytes either way (`timeouts.tunnel_idle`).
    idle: Duration,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tunnel")
    }
}

impl Tunnel {
    /// Relays bytes both ways until either side closes, nothing moves for the idle
    /// timeout, or `lease` says to close; `open` counts the tunnel while it relays.
    pub fn spawn(self, open: prometheus::IntGauge, mut lease: Lease) {
        open.inc();
        tokio::spawn(async move {
            let _open = Open(open);
            let (client, upstream) = match tokio::try_join!(self.client, self.upstream) {
                Ok(both) => both,
                Err(err) => {
                    tracing::debug!(error = %err, "a WebSocket upgrade did not complete");
                    return;
                }
            };
            let activity = Activity::default();
            let mut client = Active::new(TokioIo::new(client), &activity);
            let mut upstream = Active::new(TokioIo::new(upstream), &activity);
            tokio::select! {
                result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "a WebSocket connection ended with an error");
                    }
                }
                () = activity.idle_for(self.idle) => {
                    tracing::debug!("closing an idle WebSocket connection");
                }
                () = lease.closed() => tracing::debug!("closing a WebSocket connection at shutdown"),
            }
        });
    }
}

/// When a tunnel last moved a byte, either way, so an idle one can be told from a busy
/// one without a timer per read or write.
#[derive(Clone)]
struct Activity(Arc<LastMoved>);

struct LastMoved {
    start: Instant,
    /// Milliseconds from `start` to the last read or write.
    at_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(LastMoved {
            start: Instant::now(),
            at_ms: AtomicU64::new(0),
        }))
    }
}

impl Activity {
    fn moved(&self) {
        let at = u64::try_from(self.0.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.at_ms.store(at, Ordering::Relaxed);
    }

    /// Returns once nothing has moved for `idle`: sleeps until `idle` after the last
    /// move, and again if something moved meanwhile.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.0.at_ms.load(Ordering::Relaxed));
            let deadline = self.0.start + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One side of a tunnel, telling `Activity` when bytes move.
struct Active<T> {
    io: T,
    activity: Activity,
}

impl<T> Active<T> {
    fn new(io: T, activity: &Activity) -> Active<T> {
        Active {
            io,
            activity: activity.clone(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.moved();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Keeps `open_websockets` honest however the relay ends.
struct Open(prometheus::IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Exchange<'_> {
    /// Sends an authorized WebSocket handshake upstream; on `101`, answers the client
    /// with it and leaves the joined connections in the outcome for the access layer
    /// to relay.
    pub(super) async fn websocket(
        &mut self,
        route: &Route,
        mut request: Request<Incoming>,
        path_and_query: String,
        identity: Option<&Identity>,
    ) -> Result<Response<Body>, ProxyError> {
        let Target::Upstream(UpstreamTarget::Http(target)) = &route.target else {
            return Err(ProxyError::Refused(Refusal::WebsocketNotEnabled));
        };
        let client = hyper::upgrade::on(&mut request);
        let (mut parts, body) = request.into_parts();
        let request_id = self.context.request_id;
        let origin = self.origin(&parts, Some(&target.host));
        let mut headers = forward::upstream_headers(
            &self.pipeline.forward,
            std::mem::take(&mut parts.headers),
            identity,
            &origin,
        );
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        parts.uri = upstream_uri(target, path_and_query)?;
        parts.headers = headers;
        parts.version = Version::HTTP_11;
        parts.extensions = http::Extensions::new();
        let started = std::time::Instant::now();
        let result = self
            .pipeline
            .upstreams
            .send_upgrade(Request::from_parts(parts, body))
            .await;
        self.outcome.upstream_seconds = Some(started.elapsed().as_secs_f64());
        let mut response = result.map_err(|err| {
            tracing::warn!(route = &*route.name, error = %err, "WebSocket upstream failed");
            match err {
                crate::upstream::UpstreamError::Timeout => ProxyError::GatewayTimeout,
                _ => ProxyError::BadGateway,
            }
        })?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (mut parts, body) = response.into_parts();
            forward::downstream(&mut parts, request_id)?;
            parts.version = self.version;
            return Ok(Response::from_parts(
                parts,
                body.map_err(BoxError::from).boxed_unsync(),
            ));
        }
        let upstream = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        forward::downstream_headers(&mut parts.headers, request_id);
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        self.outcome.tunnel = Some(Tunnel {
            client,
            upstream,
            idle: route.limits.tunnel_idle,
        });
        Ok(Response::from_parts(parts, crate::http::full("")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get("/ws");
        for (name, value) in pairs {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    const HANDSHAKE: [(&str, &str); 4] = [
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    #[test]
    fn upgrades() {
        assert!(!check(false, &request(&[])).unwrap());
        assert!(check(true, &request(&HANDSHAKE)).unwrap());
        assert_eq!(
            check(false, &request(&HANDSHAKE)).unwrap_err(),
            ProxyError::Refused(Refusal::WebsocketNotEnabled)
        );
        let upgrade = |protocol| request(&[("upgrade", protocol), ("connection", "upgrade")]);
        assert!(!check(false, &upgrade("h2c")).unwrap());
        // Without `Connection: upgrade`, `Upgrade` asks nothing.
        assert!(!check(false, &request(&[("upgrade", "websocket")])).unwrap());
        assert_eq!(
            check(true, &upgrade("foo/1")).unwrap_err(),
            ProxyError::Refused(Refusal::UpgradeUnsupported)
        );
        assert_eq!(
            check(true, &request(&HANDSHAKE[..2])).unwrap_err(),
            ProxyError::Refused(Refusal::WebsocketMalformed)
        );
    }
}
