//! Upstreams: where a route sends its traffic, the pooled hyper-util client that takes it
//! there (HTTP/1.1, keep-alive, rustls for `https://`), and the timeouts that turn a dead
//! or slow upstream into 502 or 504. Also the small client that fetches JWKS documents.
//! HTTP/2 upstreams are in [`h2`], upgraded (WebSocket) exchanges in [`tunnel`].

pub mod h2;
pub mod tunnel;

pub mod health;
pub mod set;

use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use tower_service::Service;

use crate::http::BoxError;
use crate::http::limit::LimitedBody;

type Connector = HttpsConnector<HttpConnector>;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to the upstream failed: {0}")]
    Connect(String),
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("the upstream exchange failed: {0}")]
    Exchange(String),
}

/// How long an idle upstream connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream; more are closed.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// Stale pooled connections tried for one request before a fresh connection is made.
const MAX_STALE_RETRIES: usize = 2;

/// Upstream connections are keyed by scheme and authority.
type PoolKey = (bool, Authority);

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as worker `index` of the server (0: not a worker, the
/// default). An upstream connection's I/O runs on the runtime of the thread that opened
/// it: pooled per worker, a connection is reused only by requests on that runtime, and
/// never bounces each request through another thread.
pub fn set_worker(index: usize) {
    WORKER.with(|worker| worker.set(index));
}

fn worker() -> usize {
    WORKER.with(std::cell::Cell::get)
}

/// The connection pool every route shares: HTTP/1.1 keep-alive connections per upstream,
/// reused most-recently-used first.
///
/// A small pool of hyper's connection handles rather than hyper-util's legacy client:
/// checkout and return are a short critical section on a `Vec`, with no per-request
/// future racing a connect against a pool waiter (the profile showed that machinery at
/// about a tenth of the proxy's instructions). A handle goes back to the pool as soon as
/// the response head arrives; it is taken again only once hyper says it is ready (the
/// previous body is done). A request that a reused connection could not even send (the
/// upstream closed it while idle) is retried on another connection: it was never written,
/// so retrying is safe for any method.
pub struct Upstreams {
    connector: Connector,
    handshake: http1::Builder,
    /// Per upstream, per worker ([`set_worker`]), the idle connections.
    idle: Mutex<HashMap<PoolKey, Vec<Vec<Idle>>, foldhash::fast::RandomState>>,
    response_timeout: Duration,
    /// HTTP/2 upstreams (`protocol: h2c | h2 | auto`).
    h2: h2::H2Pool,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// The body sent upstream: the client's, streamed (with the route's `max_body`, if it
/// has one), or nothing (a replayed request).
pub enum UpstreamBody {
    Client(Incoming),
    Limited(LimitedBody<Incoming>),
    Empty,
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Client(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map_err(BoxError::from),
            UpstreamBody::Limited(body) => std::pin::Pin::new(body).poll_frame(cx),
            UpstreamBody::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Client(body) => body.is_end_stream(),
            UpstreamBody::Limited(body) => body.is_end_stream(),
            UpstreamBody::Empty => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::Client(body) => body.size_hint(),
            UpstreamBody::Limited(body) => body.size_hint(),
            UpstreamBody::Empty => http_body::SizeHint::with_exact(0),
        }
    }
}

/// A failed exchange; `unsent` holds the request when it never left (no connection could
/// be made), so it may go to another endpoint.
pub struct Failed {
    pub error: UpstreamError,
    pub unsent: Option<Request<UpstreamBody>>,
}

/// The connection ended (closed or reset) before the upstream answered anything.
fn closed_before_answer(err: &hyper::Error) -> bool {
    use std::error::Error as _;
    if err.is_incomplete_message() {
        return true;
    }
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            );
        }
        source = cause.source();
    }
    false
}

/// Safe to send twice: a safe method and no body.
fn replayable(request: &Request<UpstreamBody>) -> bool {
    use http_body::Body as _;
    matches!(
        *request.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) && request.body().is_end_stream()
}

fn connector(tls: rustls::ClientConfig, connect_timeout: Duration) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

impl Upstreams {
    pub fn new(
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Upstreams {
        Upstreams {
            h2: h2::H2Pool::new(tls.clone(), connect_timeout),
            connector: connector(tls, connect_timeout),
            handshake: {
                let mut builder = http1::Builder::new();
                // As the server side (`server::http_builder`): one buffer per request.
                builder.writev(false);
                builder
            },
            idle: Mutex::new(HashMap::default()),
            response_timeout,
        }
    }

    /// Sends a prepared request (absolute URI); waits at most the response timeout (the
    /// route's, else the server's) for its head. The body then streams with no overall
    /// deadline (downloads may be long).
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
        response_timeout: Option<Duration>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.try_send(request, response_timeout)
            .await
            .map_err(|failed| failed.error)
    }

    /// [`Upstreams::send`], handing back a request that never left. Its target is then
    /// in origin form (path and query only).
    pub async fn try_send(
        &self,
        mut request: Request<UpstreamBody>,
        response_timeout: Option<Duration>,
    ) -> Result<Response<Incoming>, Failed> {
        let uri = std::mem::take(request.uri_mut()).into_parts();
        let lost = |error| Failed {
            error,
            unsent: None,
        };
        let authority = uri.authority.ok_or_else(|| {
            lost(UpstreamError::Exchange(
                "the upstream URI has no authority".into(),
            ))
        })?;
        let key: PoolKey = (uri.scheme == Some(Scheme::HTTPS), authority);
        // HTTP/1.1 to an origin server: origin-form request target.
        let mut origin = http::uri::Parts::default();
        origin.path_and_query = uri.path_and_query;
        *request.uri_mut() = Uri::from_parts(origin)
            .map_err(|err| lost(UpstreamError::Exchange(err.to_string())))?;
        let timeout = response_timeout.unwrap_or(self.response_timeout);
        // Boxed: the exchange's state is moved once, into the box, not again into the
        // timeout and the caller's future.
        tokio::time::timeout(timeout, Box::pin(self.exchange(key, request)))
            .await
            .map_err(|_| lost(UpstreamError::Timeout))?
    }

    async fn exchange(
        &self,
        key: PoolKey,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Failed> {
        let mut stale_retries = 0;
        loop {
            let (mut sender, reused) = match self.checkout(&key) {
                Some(sender) if stale_retries < MAX_STALE_RETRIES => (sender, true),
                // Boxed: a new connection's state (TCP, TLS, handshake) is large and
                // rare; a reused one's request future stays small.
                _ => match Box::pin(self.connect(&key)).await {
                    Ok(sender) => (sender, false),
                    Err(error) => {
                        return Err(Failed {
                            error,
                            unsent: Some(request),
                        });
                    }
                },
            };
            // A reused connection may have been closed by the upstream a moment ago; a
            // request without a body and with a safe method can then be sent again. Keep
            // what is needed to rebuild it (only then: it costs a header-map copy).
            let replay = (reused && replayable(&request)).then(|| {
                let mut copy = Request::new(UpstreamBody::Empty);
                *copy.method_mut() = request.method().clone();
                *copy.uri_mut() = request.uri().clone();
                *copy.version_mut() = request.version();
                *copy.headers_mut() = request.headers().clone();
                copy
            });
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.checkin(key, sender);
                    return Ok(response);
                }
                Err(mut err) => match (err.take_message(), replay) {
                    // Never written: the idle connection had died. Try another one.
                    (Some(unsent), _) if reused => request = unsent,
                    // Written, but the connection closed before any answer: resend a
                    // safe, bodiless request.
                    (None, Some(copy)) if closed_before_answer(err.error()) => {
                        stale_retries += 1;
                        request = copy;
                    }
                    _ => {
                        return Err(Failed {
                            error: UpstreamError::Exchange(error_chain(err.error())),
                            unsent: None,
                        });
                    }
                },
            }
        }
    }

    fn pool(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Vec<Idle>>, foldhash::fast::RandomState>>
    {
        // The critical sections cannot panic halfway; a poisoned lock holds sane data.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used ready connection; drops closed and expired ones on the way.
    fn checkout(&self, key: &PoolKey) -> Option<SendRequest<UpstreamBody>> {
        let mut pool = self.pool();
        let idle = pool.get_mut(key)?.get_mut(worker())?;
        let mut index = idle.len();
        while index > 0 {
            index -= 1;
            let entry = &idle[index];
            if entry.sender.is_closed() || entry.since.elapsed() > IDLE_TIMEOUT {
                idle.swap_remove(index);
            } else if entry.sender.is_ready() {
                return Some(idle.swap_remove(index).sender);
            }
            // Otherwise its previous response body is still streaming: leave it.
        }
        None
    }

    fn checkin(&self, key: PoolKey, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut pool = self.pool();
        let workers = pool.entry(key).or_default();
        let worker = worker();
        if workers.len() <= worker {
            workers.resize_with(worker + 1, Vec::new);
        }
        let idle = &mut workers[worker];
        if idle.len() < MAX_IDLE_PER_UPSTREAM {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, key: &PoolKey) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let scheme = if key.0 { "https" } else { "http" };
        let uri: Uri = format!("{scheme}://{}/", key.1)
            .parse()
            .map_err(|_| UpstreamError::Connect("invalid upstream address".into()))?;
        let io = self.connector.clone().call(uri).await.map_err(|err| {
            if is_timeout(err.as_ref()) {
                UpstreamError::Timeout
            } else {
                UpstreamError::Connect(error_chain(err.as_ref()))
            }
        })?;
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
        Ok(sender)
    }
}

/// An error with its causes, `a: b: c`.
/// `upstream_connect` ran out (hyper-util wraps tokio's `Elapsed` in an `io::Error` of
/// kind `TimedOut`), or the kernel gave up on the connect (`ETIMEDOUT`): somewhere in the
/// error's chain.
fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(cause) = current {
        if cause.is::<tokio::time::error::Elapsed>()
            || cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        current = cause.source();
    }
    false
}

pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

const USER_AGENT: &str = concat!("scopegate/", env!("CARGO_PKG_VERSION"));

/// An answer to [`Fetcher::post`].
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A client for the gateway's own requests (JWKS and discovery documents, token
/// introspection), with a size cap and a deadline.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<Connector, Full<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fetcher")
    }
}

impl Fetcher {
    pub fn new(tls: rustls::ClientConfig) -> Fetcher {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector(tls, Duration::from_secs(5)));
        Fetcher {
            client,
            timeout: Duration::from_secs(10),
            max_bytes: 1024 * 1024,
        }
    }

    /// GETs `uri` and returns the body of a 200 answer.
    pub async fn get(&self, uri: &Uri) -> Result<Bytes, String> {
        let request = Request::get(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(Full::default())
            .map_err(|err| err.to_string())?;
        self.fetch(request).await
    }

    /// POSTs a form (`application/x-www-form-urlencoded`) with `authorization` and
    /// returns the body of a 200 answer.
    pub async fn post_form(
        &self,
        uri: &Uri,
        authorization: &http::HeaderValue,
        form: String,
    ) -> Result<Bytes, String> {
        let answer = self.post_form_answer(uri, authorization, form).await?;
        if answer.status != http::StatusCode::OK {
            return Err(format!("answered {}", answer.status));
        }
        Ok(answer.body)
    }

    /// [`Fetcher::post_form`], returning the answer whatever its status (its body cut
    /// at the size cap); `Err` when no answer came.
    pub async fn post_form_answer(
        &self,
        uri: &Uri,
        authorization: &http::HeaderValue,
        form: String,
    ) -> Result<Answer, String> {
        let request = Request::post(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::AUTHORIZATION, authorization)
            .body(Full::new(Bytes::from(form)))
            .map_err(|err| err.to_string())?;
        self.answer(request).await
    }

    /// POSTs `body` as `content_type` and returns the answer whatever its status, its
    /// body cut at the size cap; `Err` when no answer came (connection, timeout).
    pub async fn post(
        &self,
        uri: &Uri,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<Answer, String> {
        let request = Request::post(uri.clone())
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|err| err.to_string())?;
        self.answer(request).await
    }

    /// Sends `request`; the answer whatever its status.
    async fn answer(&self, request: Request<Full<Bytes>>) -> Result<Answer, String> {
        let work = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| error_chain(&err))?;
            let (parts, body) = response.into_parts();
            // A body past the cap is not kept (the status is what counts).
            let body = match Limited::new(body, self.max_bytes).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => Bytes::new(),
            };
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| "timed out".to_string())?
    }

    async fn fetch(&self, request: Request<Full<Bytes>>) -> Result<Bytes, String> {
        let work = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| error_chain(&err))?;
            if response.status() != http::StatusCode::OK {
                return Err(format!("answered {}", response.status()));
            }
            let body = Limited::new(response.into_body(), self.max_bytes)
                .collect()
                .await
                .map_err(|err| format!("reading the body failed: {err}"))?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| "timed out".to_string())?
    }
}
