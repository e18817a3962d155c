//! [`Backend`]: one named endpoint of an upstream set on a real port. Answers `200` with
//! its name (and `x-backend: <name>`); `/healthz` answers 200 or 503 as the test says;
//! `x-test-location: V` in a request makes the answer carry `Location: V` and
//! `Content-Location: V`; it can stop listening and come back on the same port.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use super::{Server, TestBody, dead_addr, response};

struct Shared {
    name: String,
    healthy: AtomicBool,
    hits: AtomicU64,
    health_hits: AtomicU64,
}

pub struct Backend {
    pub addr: std::net::SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    shared: Arc<Shared>,
    server: Mutex<Option<Server>>,
}

impl Backend {
    /// Listening, healthy.
    pub async fn start(name: &str) -> Backend {
        let backend = Backend::start_down(name).await;
        backend.come_up().await;
        backend
    }

    /// A reserved port where nothing listens yet (connections refused).
    pub async fn start_down(name: &str) -> Backend {
        let addr = dead_addr().await;
        Backend {
            addr,
            url: format!("http://{addr}"),
            shared: Arc::new(Shared {
                name: name.to_string(),
                healthy: AtomicBool::new(true),
                hits: AtomicU64::new(0),
                health_hits: AtomicU64::new(0),
            }),
            server: Mutex::new(None),
        }
    }

    pub async fn come_up(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|err| panic!("backend could not bind {}: {err}", self.addr));
        let shared = self.shared.clone();
        let server = Server::spawn(listener, move |request| handle(shared.clone(), request));
        let old = self.server.lock().expect("lock").replace(server);
        assert!(old.is_none(), "backend was already up");
    }

    /// Stops listening and closes its connections: connects are refused.
    pub async fn go_down(&self) {
        let server = self.server.lock().expect("lock").take();
        if let Some(server) = server {
            server.stop().await;
        }
    }

    /// What `/healthz` answers from now on (200 or 503).
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Requests other than health checks.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    pub fn health_hits(&self) -> u64 {
        self.shared.health_hits.load(Ordering::SeqCst)
    }

    /// `host:port`, as the `endpoint` metric label writes it.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<TestBody> {
    if request.uri().path() == "/healthz" {
        shared.health_hits.fetch_add(1, Ordering::SeqCst);
        return if shared.healthy.load(Ordering::SeqCst) {
            response(StatusCode::OK, "text/plain", "ok")
        } else {
            response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "sick")
        };
    }
    shared.hits.fetch_add(1, Ordering::SeqCst);
    let mut reply = response(StatusCode::OK, "text/plain", shared.name.clone());
    let headers = reply.headers_mut();
    if let Ok(name) = HeaderValue::from_str(&shared.name) {
        headers.insert("x-backend", name);
    }
    if let Some(location) = request.headers().get("x-test-location") {
        headers.insert(http::header::LOCATION, location.clone());
        headers.insert(http::header::CONTENT_LOCATION, location.clone());
    }
    reply
}
