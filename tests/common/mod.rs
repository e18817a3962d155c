//! Test harness: real servers on `127.0.0.1:0`, started by each test.
//!
//! - [`Issuer`]: discovery + JWKS over HTTP, keys swappable at runtime, switchable to
//!   failing (500) or down (connection refused), counting discovery and JWKS fetches.
//! - [`Upstream`]: records every request it receives (method, target, all headers with
//!   duplicates, body); `x-test-mode` picks odd behaviours (echo the body, hang, stream).
//! - [`Gw`]: the real gateway ([`scopegate::serve`] + [`scopegate::serve_admin`]) from a
//!   YAML string with `@issuer@` / `@upstream@` style placeholders filled in, started
//!   with a [`Clock::manual`] that the test advances instead of sleeping.
//! - [`Key`]: signing keys (shared per test binary) and token minting; hostile headers
//!   are written by hand with [`Key::token_with`] and [`raw_token`].
//! - Clients: HTTP/1.1 and h2c (hyper), and raw TCP for requests no client would send.
//! - [`Collector`]: an OTLP/HTTP trace receiver recording the spans it is sent.
//! - [`eventually`]: the one way to wait for something to happen.
//!
//! This file is compiled into every test binary; not every binary uses every helper.
#![allow(dead_code)]

/// Named endpoints for upstream sets: health answers, Location echoes, up and down.
pub mod backend;
/// Throwaway stores (SQLite, PostgreSQL) and a gateway running the built-in issuer.
pub mod issuer;
/// The real `scopegate` binary as a child process, its stderr captured.
pub mod process;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use scopegate::clock::Clock;
use scopegate::config::Config;
use scopegate::jose::{Alg, SigningKey, b64url, sign_compact};
use scopegate::state::{Gateway, Runtime};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinHandle, JoinSet};

/// The API audience every standard config trusts.
pub const AUD: &str = "https://api.example.com";
/// A second audience the standard issuer accepts (for route `audience` tests).
pub const AUD2: &str = "https://other.example.com";
/// Generous deadline for anything that should happen "soon"; only ever a hang guard.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub type TestBody = BoxBody<Bytes, Infallible>;

// ---------------------------------------------------------------------------------------
// Keys and tokens

/// A signing key with the `kid` and `alg` it is published under.
pub struct Key {
    pub kid: String,
    pub alg: Alg,
    pub key: SigningKey,
}

impl Key {
    pub fn generate(alg: Alg, kid: &str) -> Key {
        Key {
            kid: kid.to_string(),
            alg,
            key: SigningKey::generate(alg).expect("key generation"),
        }
    }

    /// The public JWK (`kty`, `kid`, `use: sig`, `alg`, key members).
    pub fn jwk(&self) -> Value {
        self.key.public_jwk(self.alg, &self.kid)
    }

    /// A well-formed access token: header `{alg, kid, typ: at+jwt}`.
    pub fn token(&self, claims: &Value) -> String {
        self.token_with(
            json!({ "alg": self.alg.name(), "kid": self.kid, "typ": "at+jwt" }),
            claims,
        )
    }

    /// Signs `claims` with this key's algorithm under an arbitrary (possibly hostile)
    /// header.
    pub fn token_with(&self, header: Value, claims: &Value) -> String {
        sign_compact(
            &self.key,
            self.alg,
            header.to_string().as_bytes(),
            claims.to_string().as_bytes(),
        )
        .expect("signing")
    }

    /// Signs raw header and payload bytes (for payloads that are not JSON objects).
    pub fn token_raw(&self, header: &[u8], payload: &[u8]) -> String {
        sign_compact(&self.key, self.alg, header, payload).expect("signing")
    }
}

/// Keys generated once per test binary and shared: `name => (alg, kid)`, each a
/// `pub fn name() -> &'static Key`.
macro_rules! shared_keys {
    ($($(#[$doc:meta])* $name:ident => ($alg:ident, $kid:literal);)*) => {
        $(
            $(#[$doc])*
            pub fn $name() -> &'static Key {
                static K: OnceLock<Key> = OnceLock::new();
                K.get_or_init(|| Key::generate(Alg::$alg, $kid))
            }
        )*
    };
}

shared_keys! {
    /// RS256 key `rsa-1` (published by default; its JWK says `alg: RS256`).
    rsa => (RS256, "rsa-1");
    /// RS256 key `rsa-2` (not published by default: the rotation target).
    rsa2 => (RS256, "rsa-2");
    /// ES256 key `ec-1` (published by default).
    ec => (ES256, "ec-1");
    /// EdDSA key `ed-1` (published by default).
    ed => (EdDSA, "ed-1");
    /// PS256 key `ps-1` (published by default).
    ps => (PS256, "ps-1");
    /// An RSA key nobody publishes: the attacker's.
    rogue_rsa => (RS256, "rogue");
}

/// The keys an [`Issuer`] publishes unless told otherwise.
pub fn default_keys() -> Vec<&'static Key> {
    vec![rsa(), ec(), ed(), ps()]
}

pub fn jwks_of(keys: &[&Key]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

/// A token from hand-written parts: `b64(header).b64(payload).b64(signature)`.
pub fn raw_token(header: &str, payload: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64url(header.as_bytes()),
        b64url(payload.as_bytes()),
        b64url(signature)
    )
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A process-unique string (fresh `jti`s keep the verified-token cache out of the way).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{n}-{nanos:x}")
}

/// Default access-token claims for `iss`, with `extra` merged in (`null` removes a claim).
pub fn claims_for(iss: &str, extra: Value) -> Value {
    claims_at(iss, now(), extra)
}

/// [`claims_for`] issued at `now` (Unix seconds): `iat` is `now`, `exp` five minutes on.
pub fn claims_at(iss: &str, now: i64, extra: Value) -> Value {
    let mut claims = json!({
        "iss": iss,
        "sub": "user-1",
        "aud": AUD,
        "exp": now + 300,
        "iat": now,
        "scope": "read:contacts",
        "azp": "client-a",
        "jti": unique("jti"),
    });
    let map = claims.as_object_mut().expect("object");
    if let Value::Object(extra) = extra {
        for (name, value) in extra {
            if value.is_null() {
                map.remove(&name);
            } else {
                map.insert(name, value);
            }
        }
    }
    claims
}

// ---------------------------------------------------------------------------------------
// A small server runner shared by the issuer and the upstream

/// An accept loop plus its connections; stopping it closes the listener and every
/// connection it accepted (so pooled client connections see a reset, not a live peer).
struct Server {
    task: JoinHandle<()>,
    /// TCP connections accepted so far.
    accepted: Arc<AtomicU64>,
}

impl Server {
    fn spawn<F, Fut>(listener: TcpListener, handler: F) -> Server
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        counter.fetch_add(1, Ordering::SeqCst);
                        let handler = handler.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |request| {
                                let handler = handler.clone();
                                async move { Ok::<_, Infallible>(handler(request).await) }
                            });
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Server { task, accepted }
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("content type"),
    );
    response
}

/// An address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

// ---------------------------------------------------------------------------------------
// Issuer: discovery + JWKS

struct IssuerShared {
    url: String,
    jwks: Mutex<Value>,
    failing: AtomicBool,
    /// Milliseconds to wait before answering discovery and JWKS requests.
    delay_ms: AtomicU64,
    /// The `issuer` the discovery document claims, when not the real one.
    claimed_issuer: Mutex<Option<String>>,
    discovery_hits: AtomicU64,
    jwks_hits: AtomicU64,
    other_hits: AtomicU64,
    /// RFC 7662 answers by token (`/introspect`); unknown tokens are inactive.
    introspection: Mutex<std::collections::HashMap<String, Value>>,
    introspect_hits: AtomicU64,
    /// RFC 8693 answers by `subject_token` (`/token`); others are `invalid_grant`.
    exchanges: Mutex<std::collections::HashMap<String, Value>>,
    /// Every authenticated `/token` request's form, decoded.
    exchange_forms: Mutex<Vec<std::collections::BTreeMap<String, String>>>,
}

/// The client `/introspect` accepts (HTTP Basic).
pub const INTROSPECTION_CLIENT: (&str, &str) = ("gateway", "gw-secret/+=");

/// An OIDC issuer's discovery document and JWKS (and an RFC 7662 introspection
/// endpoint, `/introspect`), served on a real port.
pub struct Issuer {
    /// The issuer identifier (`iss`), `http://127.0.0.1:PORT/`.
    pub url: String,
    pub addr: SocketAddr,
    shared: Arc<IssuerShared>,
    server: Mutex<Option<Server>>,
}

impl Issuer {
    /// Starts serving `keys`.
    pub async fn start(keys: &[&Key]) -> Issuer {
        let issuer = Issuer::start_down(keys).await;
        issuer.come_up().await;
        issuer
    }

    /// Reserves a port but does not listen yet: connections are refused until
    /// [`Issuer::come_up`].
    pub async fn start_down(keys: &[&Key]) -> Issuer {
        let addr = dead_addr().await;
        let url = format!("http://{addr}/");
        Issuer {
            shared: Arc::new(IssuerShared {
                url: url.clone(),
                jwks: Mutex::new(jwks_of(keys)),
                failing: AtomicBool::new(false),
                delay_ms: AtomicU64::new(0),
                claimed_issuer: Mutex::new(None),
                discovery_hits: AtomicU64::new(0),
                jwks_hits: AtomicU64::new(0),
                other_hits: AtomicU64::new(0),
                introspection: Mutex::default(),
                introspect_hits: AtomicU64::new(0),
                exchanges: Mutex::default(),
                exchange_forms: Mutex::default(),
            }),
            url,
            addr,
            server: Mutex::new(None),
        }
    }

    /// Listens (again) on the issuer's address.
    pub async fn come_up(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|err| panic!("issuer could not bind {} again: {err}", self.addr));
        let shared = self.shared.clone();
        let server = Server::spawn(listener, move |request| {
            issuer_handle(shared.clone(), request)
        });
        let old = self.server.lock().expect("lock").replace(server);
        assert!(old.is_none(), "issuer was already up");
    }

    /// Stops listening and closes every connection: fetches now get "connection refused".
    pub async fn go_down(&self) {
        let server = self.server.lock().expect("lock").take();
        if let Some(server) = server {
            server.stop().await;
        }
    }

    /// Answers 500 to discovery and JWKS requests while `failing`.
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Waits `delay` before answering discovery and JWKS requests (a slow issuer).
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Makes the discovery document claim to be `issuer` (an issuer mix-up).
    pub fn claim_issuer(&self, issuer: &str) {
        *self.shared.claimed_issuer.lock().expect("lock") = Some(issuer.to_string());
    }

    /// Publishes exactly these keys from now on.
    pub fn publish(&self, keys: &[&Key]) {
        self.publish_raw(jwks_of(keys));
    }

    pub fn publish_raw(&self, jwks: Value) {
        *self.shared.jwks.lock().expect("lock") = jwks;
    }

    pub fn jwks_url(&self) -> String {
        format!("{}jwks.json", self.url)
    }

    pub fn discovery_hits(&self) -> u64 {
        self.shared.discovery_hits.load(Ordering::SeqCst)
    }

    pub fn jwks_hits(&self) -> u64 {
        self.shared.jwks_hits.load(Ordering::SeqCst)
    }

    pub fn other_hits(&self) -> u64 {
        self.shared.other_hits.load(Ordering::SeqCst)
    }

    /// Default claims with this issuer as `iss`.
    pub fn claims(&self, extra: Value) -> Value {
        claims_for(&self.url, extra)
    }

    /// What `/introspect` answers for `token` from now on.
    pub fn set_introspection(&self, token: &str, answer: Value) {
        self.shared
            .introspection
            .lock()
            .expect("lock")
            .insert(token.to_string(), answer);
    }

    pub fn introspect_url(&self) -> String {
        format!("{}introspect", self.url)
    }

    /// Introspection requests answered (with the right client credentials).
    pub fn introspect_hits(&self) -> u64 {
        self.shared.introspect_hits.load(Ordering::SeqCst)
    }

    /// What `/token` answers (200) to a token exchange of `subject_token` from now on.
    pub fn set_exchange(&self, subject_token: &str, answer: Value) {
        self.shared
            .exchanges
            .lock()
            .expect("lock")
            .insert(subject_token.to_string(), answer);
    }

    pub fn token_url(&self) -> String {
        format!("{}token", self.url)
    }

    /// The forms of the token exchanges asked so far (with the right credentials).
    pub fn exchange_forms(&self) -> Vec<std::collections::BTreeMap<String, String>> {
        self.shared.exchange_forms.lock().expect("lock").clone()
    }
}

/// The form of a POST authenticated as [`INTROSPECTION_CLIENT`] by HTTP Basic
/// (form-encoded, RFC 6749 §2.3.1), decoded; `None` for anything else.
async fn client_form(
    request: Request<Incoming>,
) -> Option<std::collections::BTreeMap<String, String>> {
    let (id, secret) = INTROSPECTION_CLIENT;
    let expected = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{id}:{}", form_value_encode(secret))
        )
    );
    let authorized = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    let form_typed = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-www-form-urlencoded");
    if request.method() != Method::POST || !authorized || !form_typed {
        return None;
    }
    let body = request.into_body().collect().await.ok()?.to_bytes();
    let form = String::from_utf8_lossy(&body).into_owned();
    Some(
        form.split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, value)| (percent_decode(name), percent_decode(value)))
            .collect(),
    )
}

/// `/token`: RFC 8693 token exchange for [`INTROSPECTION_CLIENT`], answered from
/// [`Issuer::set_exchange`].
async fn token_handle(shared: &IssuerShared, request: Request<Incoming>) -> Response<TestBody> {
    let Some(form) = client_form(request).await else {
        return response(
            StatusCode::UNAUTHORIZED,
            "application/json",
            r#"{"error":"invalid_client"}"#,
        );
    };
    shared
        .exchange_forms
        .lock()
        .expect("lock")
        .push(form.clone());
    let answer = form
        .get("subject_token")
        .and_then(|token| shared.exchanges.lock().expect("lock").get(token).cloned());
    match answer {
        Some(answer) => response(StatusCode::OK, "application/json", answer.to_string()),
        None => response(
            StatusCode::BAD_REQUEST,
            "application/json",
            r#"{"error":"invalid_grant"}"#,
        ),
    }
}

/// `/introspect`: needs [`INTROSPECTION_CLIENT`] by HTTP Basic (form-encoded, RFC 6749
/// §2.3.1) and a form with `token`.
async fn introspect_handle(
    shared: &IssuerShared,
    request: Request<Incoming>,
) -> Response<TestBody> {
    let Some(form) = client_form(request).await else {
        return response(
            StatusCode::UNAUTHORIZED,
            "application/json",
            r#"{"error":"invalid_client"}"#,
        );
    };
    let token = form.get("token").cloned().unwrap_or_default();
    shared.introspect_hits.fetch_add(1, Ordering::SeqCst);
    let answer = shared
        .introspection
        .lock()
        .expect("lock")
        .get(&token)
        .cloned()
        .unwrap_or_else(|| json!({ "active": false }));
    response(StatusCode::OK, "application/json", answer.to_string())
}

fn form_value_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn issuer_handle(
    shared: Arc<IssuerShared>,
    request: Request<Incoming>,
) -> Response<TestBody> {
    match request.uri().path() {
        "/.well-known/openid-configuration" => shared.discovery_hits.fetch_add(1, Ordering::SeqCst),
        "/jwks.json" => shared.jwks_hits.fetch_add(1, Ordering::SeqCst),
        _ => shared.other_hits.fetch_add(1, Ordering::SeqCst),
    };
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failing = shared.failing.load(Ordering::SeqCst);
    let fail = || {
        response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "issuer is down",
        )
    };
    match request.uri().path() {
        "/introspect" if failing => fail(),
        "/introspect" => introspect_handle(&shared, request).await,
        "/token" if failing => fail(),
        "/token" => token_handle(&shared, request).await,
        "/.well-known/openid-configuration" => {
            if failing {
                return fail();
            }
            let claimed = shared.claimed_issuer.lock().expect("lock").clone();
            let doc = json!({
                "issuer": claimed.unwrap_or_else(|| shared.url.clone()),
                "jwks_uri": format!("{}jwks.json", shared.url),
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            });
            response(StatusCode::OK, "application/json", doc.to_string())
        }
        "/jwks.json" => {
            if failing {
                return fail();
            }
            let jwks = shared.jwks.lock().expect("lock").to_string();
            response(StatusCode::OK, "application/jwk-set+json", jwks)
        }
        _ => response(StatusCode::NOT_FOUND, "text/plain", "not found"),
    }
}

// ---------------------------------------------------------------------------------------
// Collector: an OTLP/HTTP trace receiver

struct CollectorShared {
    /// Every POST to `/v1/traces`: its `content-type` and body.
    received: Mutex<Vec<(String, Bytes)>>,
    /// Answers 503 to this many more POSTs before accepting.
    refuse: AtomicU64,
}

/// An OpenTelemetry collector's OTLP/HTTP receiver on a real port: records what is
/// POSTed to `/v1/traces` and answers `{}` (or 503 while told to refuse).
pub struct Collector {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    shared: Arc<CollectorShared>,
    _server: Server,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(CollectorShared {
            received: Mutex::new(Vec::new()),
            refuse: AtomicU64::new(0),
        });
        let handler_shared = shared.clone();
        let server = Server::spawn(listener, move |request: Request<Incoming>| {
            let shared = handler_shared.clone();
            async move {
                if request.method() != Method::POST || request.uri().path() != "/v1/traces" {
                    return response(StatusCode::NOT_FOUND, "text/plain", "not found");
                }
                let content_type = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = match request.into_body().collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(_) => return response(StatusCode::BAD_REQUEST, "text/plain", "body"),
                };
                let refuse = shared
                    .refuse
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                shared
                    .received
                    .lock()
                    .expect("lock")
                    .push((content_type, body));
                if refuse {
                    return response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "busy");
                }
                response(StatusCode::OK, "application/json", "{}")
            }
        });
        Collector {
            url: format!("http://{addr}"),
            shared,
            _server: server,
        }
    }

    /// Answer 503 to the next `times` POSTs.
    pub fn refuse(&self, times: u64) {
        self.shared.refuse.store(times, Ordering::SeqCst);
    }

    /// Every POST so far: `content-type` and body.
    pub fn received(&self) -> Vec<(String, Bytes)> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// Every span of every POST so far (refused ones included), each with its
    /// resource's attributes as `resource`.
    pub fn spans(&self) -> Vec<Value> {
        let mut spans = Vec::new();
        for (_, body) in self.received() {
            let request: Value = serde_json::from_slice(&body).expect("OTLP JSON");
            for resource_spans in request["resourceSpans"].as_array().into_iter().flatten() {
                for scope_spans in resource_spans["scopeSpans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    for span in scope_spans["spans"].as_array().into_iter().flatten() {
                        let mut span = span.clone();
                        span["resource"] = resource_spans["resource"]["attributes"].clone();
                        spans.push(span);
                    }
                }
            }
        }
        spans
    }

    /// The spans of trace `trace_id` (32 hex digits).
    pub fn trace(&self, trace_id: &str) -> Vec<Value> {
        self.spans()
            .into_iter()
            .filter(|span| span["traceId"] == trace_id)
            .collect()
    }
}

/// The value of attribute `key` in an OTLP `attributes` list, as JSON (`{"stringValue":
/// ...}`); `None` when absent.
pub fn otlp_attribute<'v>(attributes: &'v Value, key: &str) -> Option<&'v Value> {
    attributes
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

// ---------------------------------------------------------------------------------------
// Upstream: records what it receives

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, exactly as received.
    pub target: String,
    /// Every header line in order, duplicates included (names lower-case, as hyper
    /// gives them).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// The values of header `name` (as spelt) in a list of (name, value) pairs.
fn values_of<'h>(headers: &'h [(String, String)], name: &str) -> impl Iterator<Item = &'h str> {
    headers
        .iter()
        .filter(move |(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

impl Seen {
    /// Every value of `name` (lower case).
    pub fn all(&self, name: &str) -> Vec<&str> {
        values_of(&self.headers, name).collect()
    }

    /// The only value of `name`; panics if there are several.
    pub fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "upstream got {} copies of {name}: {all:?}",
            all.len()
        );
        all.first().copied()
    }

    /// Header names, `_` read as `-` (the spelling many upstream frameworks use).
    pub fn has_normalized(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.replace('_', "-").eq_ignore_ascii_case(name))
    }
}

struct UpstreamShared {
    seen: Mutex<Vec<Seen>>,
    /// Lets a `stream-down` response send its second chunk.
    release: Notify,
    /// Signalled when a `stream-up` request's first body chunk arrived.
    got_first: Notify,
}

/// A recording upstream on a real port.
pub struct Upstream {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    shared: Arc<UpstreamShared>,
    _server: Server,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(UpstreamShared {
            seen: Mutex::new(Vec::new()),
            release: Notify::new(),
            got_first: Notify::new(),
        });
        let handler_shared = shared.clone();
        let server = Server::spawn(listener, move |request| {
            upstream_handle(handler_shared.clone(), request)
        });
        Upstream {
            addr,
            url: format!("http://{addr}"),
            shared,
            _server: server,
        }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.shared.seen.lock().expect("lock").len()
    }

    /// The one request received; panics with what was received otherwise.
    pub fn only(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(
            seen.len(),
            1,
            "expected exactly one upstream request, got {seen:#?}"
        );
        seen.into_iter().next().expect("one")
    }

    /// The most recent request.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received no request")
    }

    pub fn clear(&self) {
        self.shared.seen.lock().expect("lock").clear();
    }

    /// TCP connections the upstream has accepted (pooling shows as few).
    pub fn connections(&self) -> u64 {
        self._server.accepted.load(Ordering::SeqCst)
    }

    /// Lets a pending `stream-down` response finish.
    pub fn release(&self) {
        self.shared.release.notify_one();
    }

    /// Resolves when a `stream-up` request's first body chunk has arrived.
    pub async fn first_chunk_arrived(&self) {
        self.shared.got_first.notified().await;
    }
}

async fn upstream_handle(
    shared: Arc<UpstreamShared>,
    request: Request<Incoming>,
) -> Response<TestBody> {
    let mode = request
        .headers()
        .get("x-test-mode")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (parts, mut body) = request.into_parts();
    let mut seen = Seen {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(String::new, |pq| pq.as_str().to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: Bytes::new(),
    };
    let record = |seen: Seen| shared.seen.lock().expect("lock").push(seen);
    match mode.as_str() {
        "hang" => {
            record(seen);
            std::future::pending::<Response<TestBody>>().await
        }
        "stream-down" => {
            record(seen);
            let (tx, stream) = chan_body();
            let shared = shared.clone();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first-chunk;")).await;
                shared.release.notified().await;
                let _ = tx.send(Bytes::from_static(b"second-chunk")).await;
            });
            let mut response = Response::new(stream.boxed());
            response
                .headers_mut()
                .insert("x-upstream", HeaderValue::from_static("yes"));
            response
        }
        "stream-up" => {
            let mut all = Vec::new();
            if let Some(Ok(frame)) = body.frame().await
                && let Ok(data) = frame.into_data()
            {
                all.extend_from_slice(&data);
            }
            shared.got_first.notify_one();
            if let Ok(rest) = body.collect().await {
                all.extend_from_slice(&rest.to_bytes());
            }
            seen.body = Bytes::from(all);
            let len = seen.body.len();
            record(seen);
            response(
                StatusCode::OK,
                "text/plain",
                format!("received {len} bytes"),
            )
        }
        _ => {
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            seen.body = bytes.clone();
            record(seen);
            let mut reply = match mode.as_str() {
                "echo-body" => response(StatusCode::OK, "application/octet-stream", bytes),
                _ => response(StatusCode::OK, "application/json", r#"{"upstream":"ok"}"#),
            };
            let headers = reply.headers_mut();
            headers.insert("x-upstream", HeaderValue::from_static("yes"));
            if mode == "hop" {
                headers.insert("connection", HeaderValue::from_static("x-hop-secret"));
                headers.insert("x-hop-secret", HeaderValue::from_static("1"));
                headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
                headers.insert("proxy-authenticate", HeaderValue::from_static("Basic"));
            }
            reply
        }
    }
}

/// A body fed chunk by chunk from a channel (streaming both ways).
pub struct ChanBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

pub fn chan_body() -> (mpsc::Sender<Bytes>, ChanBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChanBody { rx })
}

// ---------------------------------------------------------------------------------------
// The gateway

/// Replaces `@name@` placeholders (YAML has no use for `@` at the start of a scalar, so
/// they cannot clash with flow mappings or `{id}` route parameters).
pub fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("@{name}@"), value);
    }
    assert!(
        !out.contains("@issuer@") && !out.contains("@upstream@"),
        "unfilled placeholder in test config:\n{out}"
    );
    out
}

/// The config most tests share: one trusted issuer (`@issuer@`) that accepts [`AUD`] and
/// [`AUD2`], RS256/PS256/ES256/EdDSA, 5s leeway, 200ms min refresh, tokens up to 4096
/// bytes, two mapped claims; `routes` is appended as the `routes:` list.
pub fn standard_yaml(routes: &str) -> String {
    format!(
        r#"server:
  timeouts: {{ upstream_connect: 1s, upstream_response: 2s }}
  limits: {{ max_header_bytes: 16384, max_token_bytes: 4096 }}
trust:
  leeway: 5s
  issuers:
    - issuer: "@issuer@"
      audiences: [{AUD}, {AUD2}]
      algorithms: [RS256, PS256, ES256, EdDSA]
      jwks_ttl: 10m
      jwks_min_refresh: 200ms
forward:
  claims:
    "https://example.com/roles": x-auth-roles
    tenant: x-auth-tenant
    level: x-auth-level
routes:
{routes}"#
    )
}

/// A running gateway: proxy and admin listeners on ephemeral ports.
pub struct Gw {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub gateway: Arc<Gateway>,
    /// The gateway's clock (manual): token expiry, `jwks_min_refresh` and `jwks_ttl`
    /// pass when the test calls [`Gw::advance`].
    pub clock: Clock,
    _tasks: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Gw {
    /// Builds the gateway from `yaml` (already rendered) and serves it.
    pub async fn start(yaml: &str) -> Gw {
        let config = Config::from_yaml(yaml)
            .unwrap_or_else(|err| panic!("the test config was refused: {err}\n---\n{yaml}"));
        let clock = Clock::manual();
        let runtime = Runtime {
            clock: clock.clone(),
            ..Runtime::default()
        };
        let gateway = Gateway::start_with(config, runtime)
            .await
            .unwrap_or_else(|err| panic!("the gateway did not build: {err}"));
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = proxy.local_addr().expect("addr");
        let admin_addr = admin.local_addr().expect("addr");
        let tasks = vec![
            tokio::spawn(scopegate::serve(
                proxy,
                gateway.clone(),
                std::future::pending(),
            )),
            tokio::spawn(scopegate::serve_admin(
                admin,
                gateway.clone(),
                std::future::pending(),
            )),
        ];
        Gw {
            addr,
            admin: admin_addr,
            gateway,
            clock,
            _tasks: tasks,
        }
    }

    /// Moves the gateway's clock forward: tokens age, `jwks_min_refresh` passes, a
    /// `jwks_ttl` refresh comes due.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Applies a new config as a reload would.
    pub async fn apply(&self, yaml: &str) {
        let config = Config::from_yaml(yaml)
            .unwrap_or_else(|err| panic!("the test config was refused: {err}\n---\n{yaml}"));
        self.gateway
            .apply(config)
            .await
            .unwrap_or_else(|err| panic!("the reload was refused: {err}"));
    }

    /// Waits until `/readyz` answers 200 (every trusted issuer's keys loaded).
    pub async fn wait_ready(&self) {
        let admin = self.admin;
        eventually("the gateway is ready (/readyz 200)", async || {
            get(admin, "/readyz", &[]).await.status == StatusCode::OK
        })
        .await;
    }

    pub async fn metrics(&self) -> String {
        let reply = get(self.admin, "/metrics", &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "/metrics: {}", reply.text());
        reply.text()
    }

    /// Fetch attempts the gateway made for its first trusted issuer.
    pub fn fetch_count(&self) -> u64 {
        self.gateway.state().pipeline.verifier.issuers()[0].fetch_count()
    }
}

/// Issuer + upstream + gateway, the usual trio.
pub struct Env {
    pub issuer: Issuer,
    pub upstream: Upstream,
    pub gw: Gw,
}

impl Env {
    /// [`standard_yaml`] with `routes`; waits until the gateway is ready.
    pub async fn start(routes: &str) -> Env {
        Env::start_yaml(&standard_yaml(routes)).await
    }

    /// A full config template (`@issuer@`, `@upstream@`, `@jwks@`); waits until ready.
    pub async fn start_yaml(template: &str) -> Env {
        let env = Env::start_unready(template, &default_keys()).await;
        env.gw.wait_ready().await;
        env
    }

    /// Like [`Env::start_yaml`] without waiting for readiness.
    pub async fn start_unready(template: &str, keys: &[&Key]) -> Env {
        let issuer = Issuer::start(keys).await;
        Env::with_issuer(issuer, template).await
    }

    /// Starts the upstream and the gateway in front of an existing issuer.
    pub async fn with_issuer(issuer: Issuer, template: &str) -> Env {
        let upstream = Upstream::start().await;
        let yaml = render(
            template,
            &[
                ("issuer", &issuer.url),
                ("jwks", &issuer.jwks_url()),
                ("upstream", &upstream.url),
            ],
        );
        let gw = Gw::start(&yaml).await;
        Env {
            issuer,
            upstream,
            gw,
        }
    }

    /// Default claims issued now by the gateway's clock (which the test may have
    /// advanced).
    pub fn claims(&self, extra: Value) -> Value {
        claims_at(&self.issuer.url, self.gw.clock.unix_secs(), extra)
    }

    /// An RS256 token (`rsa-1`) with the default claims plus `extra`.
    pub fn token(&self, extra: Value) -> String {
        rsa().token(&self.claims(extra))
    }

    /// GET `path` with `Authorization: Bearer <token>`.
    /// Asserts that the upstream saw nothing and that `times` requests were counted as
    /// `scopegate_requests_total{route="unmatched", method, status}`.
    pub async fn assert_unforwarded(&self, method: &str, status: &str, times: f64) {
        assert_eq!(self.upstream.count(), 0, "{:#?}", self.upstream.seen());
        let metrics = self.gw.metrics().await;
        let counted = requests_total(&metrics, "unmatched", method, status);
        assert_eq!(counted, times, "{metrics}");
    }

    /// GET `path` with a token `key` signs for the default claims.
    pub async fn get_signed(&self, path: &str, key: &Key) -> Reply {
        let token = key.token(&self.claims(json!({})));
        self.get_bearer(path, &token).await
    }

    pub async fn get_bearer(&self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        get(self.gw.addr, path, &[("authorization", &auth)]).await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        get(self.gw.addr, path, headers).await
    }
}

// ---------------------------------------------------------------------------------------
// Clients

/// A complete answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "expected a JSON body ({err}), got {} {:?}",
                self.status,
                self.text()
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("visible ASCII header"))
    }

    /// The `error` member of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
}

pub async fn collect(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("the response body did not finish in time")
        .expect("reading the response body")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends one request over a fresh HTTP/1.1 connection and returns the response head
/// (the body streams). Adds `Host: gateway.test` when the request has none.
pub async fn send_streaming<B>(addr: SocketAddr, mut request: Request<B>) -> Response<Incoming>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    request
        .headers_mut()
        .entry(HOST)
        .or_insert(HeaderValue::from_static("gateway.test"));
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("no response head in time")
        .expect("the request failed")
}

/// Sends one request over a fresh HTTP/1.1 connection and reads the whole answer.
pub async fn send<B>(addr: SocketAddr, request: Request<B>) -> Reply
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    collect(send_streaming(addr, request).await).await
}

/// Sends one request over a fresh h2c (HTTP/2 prior knowledge) connection.
pub async fn send_h2<B>(addr: SocketAddr, request: Request<B>) -> Reply
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("no h2 response in time")
        .expect("the h2 request failed");
    collect(response).await
}

/// `method path` with `headers` and `body`.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(addr, builder.body(Full::new(body.into())).expect("request")).await
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = Request::get(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(addr, builder.body(Empty::<Bytes>::new()).expect("request")).await
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub raw: String,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        values_of(&self.headers, name).next()
    }
}

/// Writes `request` verbatim (it should carry `Connection: close`) and reads until the
/// server closes. For request targets and header spellings no client library sends.
/// `METHOD target` over HTTP/1.1 to `Host: gateway.test`, `Connection: close`, as raw
/// bytes (so targets no client library would send reach the gateway as written).
pub async fn raw_request(addr: SocketAddr, method: &str, target: &str) -> RawReply {
    let request =
        format!("{method} {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n");
    raw(addr, &request).await
}

pub async fn raw(addr: SocketAddr, request: &str) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out))
        .await
        .expect("the server did not close the connection in time")
        .expect("read");
    let raw = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {raw:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    RawReply {
        status,
        headers,
        body: body.to_string(),
        raw: raw.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// Assertions

/// A JSON error answer from the gateway: status, `application/json`, `error` = `code`, a
/// non-empty `error_description`.
pub fn assert_json_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(
        reply.status.as_u16(),
        status,
        "expected {status} {code}, got {} {:?}",
        reply.status,
        reply.text()
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "a gateway error must be JSON: {reply:?}"
    );
    let body = reply.json();
    assert_eq!(body["error"], code, "wrong error code in {body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "error_description missing or empty in {body}"
    );
}

/// 401 `invalid_token` with an RFC 6750 challenge that does not echo the token.
pub fn assert_invalid_token(reply: &Reply, token: &str) {
    assert_json_error(reply, 401, "invalid_token");
    let challenge = reply
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("401 without WWW-Authenticate: {reply:?}"));
    assert!(
        challenge.starts_with("Bearer realm=\"scopegate\"")
            && challenge.contains("error=\"invalid_token\""),
        "wrong challenge: {challenge}"
    );
    // Never echo the token, nor any recognisable piece of it.
    let text = reply.text();
    for piece in token.split('.').filter(|p| p.len() >= 12) {
        assert!(
            !text.contains(piece),
            "the error body echoes the token: {text}"
        );
        assert!(
            !challenge.contains(piece),
            "the challenge echoes the token: {challenge}"
        );
    }
}

/// The value of the sample `name{labels}` (exactly that label set) in a Prometheus text
/// exposition; 0 when absent.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let found: Vec<(&str, &str)> = label_text
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if found.len() == labels.len() && labels.iter().all(|l| found.contains(l)) {
            return value
                .parse()
                .unwrap_or_else(|_| panic!("bad sample {line}"));
        }
    }
    0.0
}

/// `scopegate_auth_failures_total{route, reason}`.
/// `scopegate_requests_total{route, method, status}` in a scrape (0 when absent).
pub fn requests_total(text: &str, route: &str, method: &str, status: &str) -> f64 {
    metric(
        text,
        "scopegate_requests_total",
        &[("route", route), ("method", method), ("status", status)],
    )
}

/// One route without authentication: `name` on `prefix/*`, to the test upstream (a
/// `routes` list for [`Env::start`]).
pub fn open_route(name: &str, prefix: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{ path: {prefix}/* }}\n    upstream: \"@upstream@\"\n    auth: none\n"
    )
}

/// One route, `api` on `/api/*` to the test upstream, that needs read:contacts.
pub const API_ROUTE: &str = r#"
  - name: api
    match: { path: /api/* }
    upstream: "@upstream@"
    scopes: [read:contacts]
"#;

/// Three routes by scope: `read` (`/api/read/*`) needs read:contacts, `both`
/// (`/api/both/*`) read:contacts and write:contacts, `one-of` (`/api/one-of/*`)
/// write:contacts or admin.
pub const SCOPE_ROUTES: &str = r#"
  - name: read
    match: { path: /api/read/* }
    upstream: "@upstream@"
    scopes: [read:contacts]
  - name: both
    match: { path: /api/both/* }
    upstream: "@upstream@"
    scopes: [read:contacts, write:contacts]
  - name: one-of
    match: { path: /api/one-of/* }
    upstream: "@upstream@"
    any_scopes: [write:contacts, admin]
"#;

pub fn auth_failures(text: &str, route: &str, reason: &str) -> f64 {
    metric(
        text,
        "scopegate_auth_failures_total",
        &[("route", route), ("reason", reason)],
    )
}

/// Polls `check` every 20ms until it holds; panics with `what` after [`DEADLINE`]. The
/// one way a test waits for something another task or process does: a hang guard, never
/// a timing assertion. (Time the gateway measures passes with [`Gw::advance`].)
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
