//! An upstream down and back under load (issue 11): a real upstream the test stops
//! (connections refused, open ones closed) and starts again on the same port, the real
//! gateway, eight client tasks with valid tokens sending throughout.
//!
//! - While it is up: 200. While it is down: 502 (never a hang, never a 500, never a
//!   dropped connection to the client).
//! - Back: every client gets 200 again without any restart, over pooled connections (a
//!   handful of new upstream connections, not one per request), and once the load stops
//!   nothing is left in flight and the upstream holds no more connections than there
//!   were clients (no stuck pool connections).

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{API_ROUTE, Gw, Issuer, default_keys, eventually, render, rsa, standard_yaml};
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

const CLIENTS: usize = 8;

/// An upstream that answers `200 ok` and can be stopped and started on its port.
struct Switchable {
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
    accepted: Arc<AtomicU64>,
    /// Connections open now.
    open: Arc<AtomicU64>,
}

impl Switchable {
    async fn start() -> Switchable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Switchable {
            addr: listener.local_addr().unwrap(),
            server: Mutex::new(None),
            accepted: Arc::new(AtomicU64::new(0)),
            open: Arc::new(AtomicU64::new(0)),
        };
        up.serve(listener);
        up
    }

    fn serve(&self, listener: TcpListener) {
        let (accepted, open) = (self.accepted.clone(), self.open.clone());
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection is closed when it stops.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    Ok((stream, _)) = listener.accept() => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        let open = Open::new(open.clone());
                        connections.spawn(async move {
                            let _open = open;
                            let service = service_fn(|_request| async {
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
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
        *self.server.lock().unwrap() = Some(task);
    }

    /// Stops listening and closes every connection; returns once they are all closed.
    async fn go_down(&self) {
        let task = self.server.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        eventually("every upstream connection closed", || async {
            self.open.load(Ordering::SeqCst) == 0
        })
        .await;
    }

    async fn come_up(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("bind again");
        self.serve(listener);
    }
}

/// Counts an open connection until dropped (closed, or its task aborted).
struct Open(Arc<AtomicU64>);

impl Open {
    fn new(count: Arc<AtomicU64>) -> Open {
        count.fetch_add(1, Ordering::SeqCst);
        Open(count)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The phase while the upstream is being switched, and that of a request that began
/// in one phase and ended in another.
const SWITCHING: u8 = 9;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_down_and_back_under_load() {
    let issuer = Issuer::start(&default_keys()).await;
    let upstream = Arc::new(Switchable::start().await);
    let yaml = render(
        &standard_yaml(API_ROUTE),
        &[
            ("issuer", &issuer.url),
            ("upstream", &format!("http://{}", upstream.addr)),
        ],
    );
    let gw = Arc::new(Gw::start(&yaml).await);
    gw.wait_ready().await;

    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicU8::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let statuses: Arc<Mutex<BTreeMap<(u8, u16), u64>>> = Arc::default();
    // Per client: consecutive 200s since the last failure.
    let streaks: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (gw, phase, stop, sent, statuses, streaks) = (
                gw.clone(),
                phase.clone(),
                stop.clone(),
                sent.clone(),
                statuses.clone(),
                streaks.clone(),
            );
            let token = rsa().token(&issuer.claims(serde_json::json!({})));
            tokio::spawn(async move {
                let auth = format!("Bearer {token}");
                while stop.load(Ordering::Acquire) == 0 {
                    let began = phase.load(Ordering::Acquire);
                    let reply =
                        common::get(gw.addr, &format!("/api/{n}"), &[("authorization", &auth)])
                            .await;
                    let status = reply.status.as_u16();
                    let ended = phase.load(Ordering::Acquire);
                    let at = if began == ended { began } else { SWITCHING };
                    if status == 200 {
                        streaks[n].fetch_add(1, Ordering::SeqCst);
                    } else {
                        streaks[n].store(0, Ordering::SeqCst);
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    *statuses.lock().unwrap().entry((at, status)).or_default() += 1;
                }
            })
        })
        .collect();
    let count = || sent.load(Ordering::SeqCst);
    let all_streaks = |n: u64| streaks.iter().all(|s| s.load(Ordering::SeqCst) >= n);

    eventually("every client served while the upstream is up", || async {
        all_streaks(20)
    })
    .await;

    phase.store(SWITCHING, Ordering::Release);
    upstream.go_down().await;
    phase.store(1, Ordering::Release);
    let mark = count();
    eventually("load while the upstream is down", || async {
        count() >= mark + 300
    })
    .await;

    let accepted_before = upstream.accepted.load(Ordering::SeqCst);
    phase.store(SWITCHING, Ordering::Release);
    upstream.come_up().await;
    phase.store(2, Ordering::Release);
    for s in streaks.iter() {
        s.store(0, Ordering::SeqCst);
    }
    eventually(
        "every client served again after the upstream is back",
        || async { all_streaks(50) },
    )
    .await;
    stop.store(1, Ordering::Release);
    for task in tasks {
        task.await.expect("a client task panicked");
    }
    let back_requests: u64 = statuses
        .lock()
        .unwrap()
        .iter()
        .filter(|((p, _), _)| *p == 2)
        .map(|(_, n)| n)
        .sum();
    let reconnects = upstream.accepted.load(Ordering::SeqCst) - accepted_before;

    let statuses = statuses.lock().unwrap().clone();
    for (&(at, status), &n) in &statuses {
        // Each phase starts once its switch is done: a request that began and ended
        // in one phase gets that phase's answer; one that spanned a switch either.
        let allowed: &[u16] = match at {
            0 | 2 => &[200],
            1 => &[502],
            _ => &[200, 502],
        };
        assert!(
            allowed.contains(&status),
            "{n} requests got {status} in phase {at}: {statuses:?}"
        );
    }
    assert!(
        statuses.get(&(1, 502)).copied().unwrap_or(0) > 0,
        "the outage was not seen: {statuses:?}"
    );
    assert!(
        reconnects <= 4 * CLIENTS as u64 && reconnects * 4 < back_requests,
        "{reconnects} upstream connections for {back_requests} requests after recovery: not pooled"
    );
    eventually("nothing left in flight", || async {
        gw.gateway.metrics.in_flight_requests.get() == 0
    })
    .await;
    let open = upstream.open.load(Ordering::SeqCst);
    assert!(
        open <= CLIENTS as u64,
        "{open} upstream connections held by the gateway for {CLIENTS} clients"
    );
}
