//! Listeners: accept → rustls (optional) → hyper-util `auto::Builder` (HTTP/1.1 and
//! HTTP/2, h2c included) → [`Gateway::handle`] (the access layer around the pipeline);
//! the admin listener; graceful shutdown.
//!
//! Every connection is watched from accept: one that has not started a request within
//! `server.timeouts.client_header` (a silent TCP connection, an h2c preface without a
//! whole HEADERS frame) is closed, and so is a keep-alive connection with nothing in
//! flight for `server.timeouts.idle`. At most `server.max_connections` client
//! connections are served at once (by default sized from the descriptor limit, keeping
//! half of what remains after a reserve for upstream connections, the admin listener
//! and the store); beyond that the listener stops accepting until one closes. When
//! accepting fails (out of descriptors), the loop backs off and keeps serving the
//! connections it has, logging one warning a second with the count of the others.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::config::ServerConfig;
use crate::flood::Flood;
use crate::http::{Body, ConnInfo, Lease, full};
use crate::state::Gateway;

/// A connection that never started a request gets this long to close cleanly after it
/// is told to, then it is dropped.
const FIRST_REQUEST_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Admin connections served at once (probes and scrapers, a handful in practice).
const ADMIN_MAX_CONNECTIONS: usize = 64;

static ACCEPT_FAILED: Flood = Flood::per(Duration::from_secs(1));

fn http_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's read buffer must hold the whole request head. Sized at exactly
    // `max_header_bytes`, hyper itself refused every oversized head with a bare, empty
    // 431 before the pipeline's own check could answer with JSON. With room for twice
    // the limit, the pipeline answers (JSON 431); hyper's bare 431 only bounds memory
    // against heads beyond that.
    //
    // hyper's own header timeout is off: the connection watchdog ([`drive`]) bounds the
    // first request's head by `client_header` from accept, and a later one by `idle`
    // from the previous answer (hyper's would close every idle keep-alive connection
    // after `client_header`, whatever `idle` says).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        // One buffer and one write(2) per answer, head and body copied together, rather
        // than a vectored write of the two: 1.3% fewer instructions a proxied request
        // (callgrind), the copy being small for API-sized bodies. TLS flattens anyway.
        .writev(false)
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

/// The client connections served at once: `server.max_connections`, or, when 0, derived
/// from the soft descriptor limit (`ulimit -n`): a reserve of a tenth (at least 64) for
/// the admin listener, the store and JWKS fetches, and the rest halved, since each
/// client connection may hold an upstream connection too.
pub fn max_connections(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let limit = descriptor_limit().unwrap_or(1024);
    let reserve = (limit / 10).max(64);
    (limit.saturating_sub(reserve) / 2).max(16)
}

/// The soft `RLIMIT_NOFILE`, read from `/proc/self/limits` (no `unsafe` for getrlimit).
fn descriptor_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(1 << 20),
        number => number.parse().ok(),
    }
}

/// How long a connection may wait for its first request, and sit idle after one.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    first_request: Duration,
    idle: Duration,
}

/// What a connection's watchdog reads: requests in flight and when the last one started
/// or answered.
#[derive(Debug)]
struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` of the last request start or answer; 0: none yet.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last.store(ms.max(1), Ordering::Release);
    }

    /// Counts a request from its start to its answer's head.
    fn begin(self: &Arc<Self>) -> Active {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Active(self.clone())
    }

    fn started_any(&self) -> bool {
        self.last.load(Ordering::Acquire) != 0
    }

    /// When the connection may next be closed for being quiet: `None` if it is quiet
    /// past its limit now.
    fn next_check(&self, limits: ConnLimits) -> Option<Instant> {
        let now = Instant::now();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Some(now + limits.idle);
        }
        let last = self.last.load(Ordering::Acquire);
        let (since, limit) = if last == 0 {
            (self.born, limits.first_request)
        } else {
            (self.born + Duration::from_millis(last), limits.idle)
        };
        let due = since + limit;
        (due > now).then_some(due)
    }
}

struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection until it ends, it is quiet past its limits, or `shutdown`
/// says so (then it finishes what is in flight; the caller bounds how long).
async fn drive<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    activity: &Activity,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let mut check = Instant::now() + limits.first_request;
    let mut closing = false;
    let mut hard_stop: Option<Instant> = None;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(check.into()), if !closing => {
                match activity.next_check(limits) {
                    Some(next) => check = next,
                    None => {
                        tracing::debug!(started = activity.started_any(), "closing a quiet connection");
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                        if !activity.started_any() {
                            hard_stop = Some(Instant::now() + FIRST_REQUEST_CLOSE_GRACE);
                        }
                    }
                }
            }
            () = async { match hard_stop {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            } } => return,
            changed = shutdown.changed(), if !closing => {
                if changed.is_err() || *shutdown.borrow() {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Accepts the next connection; on failure (out of descriptors and the like) backs off
/// and tries again, so the connections already open keep being served.
async fn accept(listener: &TcpListener, what: &'static str) -> (TcpStream, std::net::SocketAddr) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(err) => {
                if let Some(suppressed) = ACCEPT_FAILED.pass() {
                    tracing::warn!(listener = what, error = %err, suppressed, "accept failed; backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(250));
            }
        }
    }
}

/// Takes connections from `listener` while a permit is free, until `shutdown` resolves;
/// hands each to `spawn` with its permit (freed when the connection ends).
async fn accept_loop(
    listener: &TcpListener,
    what: &'static str,
    permits: &Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
    mut spawn: impl FnMut(TcpStream, std::net::SocketAddr, OwnedSemaphorePermit),
) {
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = &mut shutdown => return,
        };
        let (stream, remote) = tokio::select! {
            accepted = accept(listener, what) => accepted,
            () = &mut shutdown => return,
        };
        spawn(stream, remote, permit);
    }
}

/// The threads client connections are served on when `server.workers` is above 1: one
/// current-thread runtime each, so a connection, its requests and the upstream
/// connections they use live on one thread and one event loop (no work-stealing
/// scheduler between them). The accept loop hands each new connection to the next
/// worker in turn.
///
/// Handing connections over rather than one `SO_REUSEPORT` listener per worker: the
/// kernel spreads reuse-port connections by a hash of their addresses, so a few
/// long-lived connections (a load balancer's, a service mesh's) can all land on one
/// worker; handed over in turn, they spread evenly. The cost is one pair of
/// `epoll_ctl` calls per connection; `max_connections` and the drain stay one count.
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    threads: Vec<(
        std::thread::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

impl Workers {
    /// Starts `count` worker threads (`sg-worker-N`), each running a current-thread
    /// runtime.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
            threads: Vec::with_capacity(count),
        };
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            let thread = std::thread::Builder::new()
                .name(format!("sg-worker-{index}"))
                .spawn(move || {
                    // Pools apart: an upstream connection's I/O runs on the runtime
                    // that opened it, so only this worker's requests may reuse it.
                    crate::upstream::set_worker(index + 1);
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            workers.threads.push((thread, stop));
        }
        Ok(workers)
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Serves `stream` with `serve` on the next worker. The socket moves from the
    /// accepting runtime's event loop to the worker's.
    fn spawn<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(error = %err, "cannot hand the connection to a worker");
                return;
            }
        };
        let next = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[next].spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(err) => tracing::debug!(error = %err, "a worker cannot take the connection"),
            }
        });
    }

    /// Stops the workers (what still runs on them is dropped) and waits for their
    /// threads. Call it once [`serve_on`] has returned.
    pub fn stop(self) {
        for (thread, stop) in self.threads {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// Serves the proxy (and issuer) on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish for at most `server.shutdown_grace`. Connections are served
/// on the calling runtime.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_on(listener, gateway, shutdown, None).await
}

/// [`serve`], with each connection served on one of `workers` when given.
pub async fn serve_on(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    workers: Option<&Workers>,
) -> std::io::Result<()> {
    let server = gateway.state().config.server.clone();
    let builder = Arc::new(http_builder(&server));
    let max = max_connections(server.max_connections);
    let permits = Arc::new(Semaphore::new(max));
    tracing::debug!(max_connections = max, "proxy listener");
    let (stop_tx, stop_rx) = watch::channel(false);
    // Turns true once the grace is over: upgraded connections (WebSockets) close then.
    let (close_tx, close_rx) = watch::channel(false);
    accept_loop(
        &listener,
        "proxy",
        &permits,
        shutdown,
        |stream, remote, permit| {
            let _ = stream.set_nodelay(true);
            let gateway = gateway.clone();
            let builder = builder.clone();
            let stop = stop_rx.clone();
            let lease = Lease {
                slot: Some(Arc::new(permit)),
                closing: Some(close_rx.clone()),
            };
            let serve = move |stream| async move {
                serve_client(&gateway, &builder, stream, remote, stop, lease).await;
            };
            match workers {
                Some(workers) => workers.spawn(stream, serve),
                None => {
                    tokio::spawn(serve(stream));
                }
            }
        },
    )
    .await;
    drop(listener);
    let _ = stop_tx.send(true);
    let grace = gateway.state().config.server.shutdown_grace.get();
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    tokio::select! {
        _ = permits.acquire_many(all) => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
    let _ = close_tx.send(true);
    Ok(())
}

/// One client connection of the proxy listener: TLS when configured, then HTTP.
async fn serve_client(
    gateway: &Arc<Gateway>,
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    remote: std::net::SocketAddr,
    stop: watch::Receiver<bool>,
    lease: Lease,
) {
    let state = gateway.state();
    let tls = state.tls.clone();
    let limits = ConnLimits {
        first_request: state.config.server.timeouts.client_header.get(),
        idle: state.config.server.timeouts.idle.get(),
    };
    drop(state);
    gateway.metrics.open_connections.inc();
    let _open = OpenConnection(&gateway.metrics.open_connections);
    let activity = Activity::new();
    let conn = Arc::new(ConnInfo {
        lease,
        ..ConnInfo::new(remote, tls.is_some())
    });
    let service = {
        let gateway = gateway.clone();
        let activity = activity.clone();
        service_fn(move |request: Request<Incoming>| {
            let gateway = gateway.clone();
            let conn = conn.clone();
            let active = activity.begin();
            // Boxed: hyper moves the service's future into its dispatcher on every
            // request, and the pipeline's future is kilobytes (callgrind: ~8,700 of
            // ~76,000 instructions a request went to that memcpy before this box).
            Box::pin(async move {
                let response = gateway.handle(request, &conn).await;
                drop(active);
                Ok::<_, Infallible>(response)
            })
        })
    };
    let Some(acceptor) = tls else {
        return drive(
            builder,
            TokioIo::new(stream),
            service,
            &activity,
            limits,
            stop,
        )
        .await;
    };
    match tokio::time::timeout(limits.first_request, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            drive(
                builder,
                TokioIo::new(stream),
                service,
                &activity,
                limits,
                stop,
            )
            .await
        }
        Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
        Err(_) => tracing::debug!("TLS handshake timed out"),
    }
}

/// Keeps `open_connections` honest however the connection task ends.
struct OpenConnection<'a>(&'a prometheus::IntGauge);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` until `shutdown` resolves. Its
/// connections are watched like the proxy's and capped apart from them, so a flood on
/// the proxy port cannot starve the probes.
pub async fn serve_admin(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let permits = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let limits = ConnLimits {
        first_request: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };
    let (_stop_tx, stop_rx) = watch::channel(false);
    accept_loop(
        &listener,
        "admin",
        &permits,
        shutdown,
        |stream, _, permit| {
            let gateway = gateway.clone();
            let builder = builder.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let activity = Activity::new();
                let service = {
                    let activity = activity.clone();
                    service_fn(move |request: Request<Incoming>| {
                        let _active = activity.begin();
                        let response = admin(&gateway, &request);
                        async move { Ok::<_, Infallible>(response) }
                    })
                };
                drive(
                    &builder,
                    TokioIo::new(stream),
                    service,
                    &activity,
                    limits,
                    stop,
                )
                .await;
            });
        },
    )
    .await;
    Ok(())
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
        "/readyz" => match gateway.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into(), "text/plain"),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
                "text/plain",
            ),
        },
        "/config" => match gateway.state().config.source.as_deref() {
            Some(source) => text(
                StatusCode::OK,
                source.to_json().to_string(),
                "application/json",
            ),
            None => text(
                StatusCode::NOT_FOUND,
                "this config was not loaded from a file\n".into(),
                "text/plain",
            ),
        },
        "/metrics" => text(
            StatusCode::OK,
            gateway.metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_cap_leaves_a_reserve() {
        assert_eq!(max_connections(500), 500);
        let derived = max_connections(0);
        let limit = descriptor_limit().unwrap_or(1024);
        assert!(derived >= 16 && derived * 2 < limit, "{derived} of {limit}");
    }
}
