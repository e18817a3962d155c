//! Operations, on the real binary: SIGTERM drains in-flight requests and exits 0;
//! SIGHUP and file changes reload, a broken file is refused while the old config keeps
//! serving; requests in flight across a reload all succeed; TLS termination with ALPN
//! h2/http1.1; https upstreams verified against `upstream_ca_file`; worker threads share
//! the connections and drain together. The drain and in-flight-reload tests run on
//! `workers: 1` (served on the accepting thread), the rest on the default (one worker
//! per core).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use common::eventually;
use common::issuer::TempDir;
use common::process::Process;

/// The config file: ephemeral ports, JSON logs, `server_extra` keys under `server:`.
fn config_text(server_extra: &str, body: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n  shutdown_grace: 10s\n{server_extra}log: {{ format: json, level: info }}\n{body}"
    )
}

/// `scopegate run` on [`config_text`], in a directory of its own.
struct Gateway {
    process: Process,
    _dir: TempDir,
}

impl Gateway {
    fn start(body: &str) -> Gateway {
        Gateway::start_with("", body)
    }

    fn start_with(server_extra: &str, body: &str) -> Gateway {
        let dir = TempDir::new("ops");
        let process = Process::start(dir.path(), &config_text(server_extra, body), &[]);
        Gateway { process, _dir: dir }
    }

    /// Replaces the config file's routes (and the rest of `body`).
    fn rewrite(&self, body: &str) {
        self.process.rewrite(&config_text("", body));
    }
}

impl std::ops::Deref for Gateway {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

/// A 200 with `body`, as a service answers.
fn ok_text(body: &'static [u8]) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(body))))
}

/// Accepts connections on `listener` until accepting fails, each served by `serve` in a
/// task of its own.
fn accept_each<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
}

/// An upstream that answers `ok` after `?ms=N` milliseconds and reports each arrival.
async fn slow_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    accept_each(listener, move |stream| {
        let tx = tx.clone();
        async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(());
                    let ms = req
                        .uri()
                        .query()
                        .and_then(|q| q.strip_prefix("ms="))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    ok_text(b"ok")
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    });
    (addr, rx)
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(url: &str) -> Result<(StatusCode, String), String> {
    let response = client()
        .request(Request::get(url).body(Empty::new()).unwrap())
        .await
        .map_err(|err| err.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn route(name: &str, path: &str, upstream: &str) -> String {
    format!(
        "  - {{ name: {name}, match: {{ path: '{path}' }}, upstream: '{upstream}', auth: none }}\n"
    )
}

/// A gateway with `server_extra` under `server:` and one route, `/slow`, to `upstream`.
fn slow_route_gateway(server_extra: &str, upstream: SocketAddr) -> Gateway {
    Gateway::start_with(
        server_extra,
        &format!(
            "routes:\n{}",
            route("slow", "/slow", &format!("http://{upstream}"))
        ),
    )
}

type InFlight = tokio::task::JoinHandle<Result<(StatusCode, String), String>>;

/// Sends a request the upstream answers in 1.5 s and, once it has arrived there, SIGTERM.
async fn term_with_a_request_in_flight(
    gateway: &Gateway,
    arrivals: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) -> InFlight {
    let url = gateway.url("/slow?ms=1500");
    let in_flight = tokio::spawn(async move { get(&url).await });
    arrivals
        .recv()
        .await
        .expect("the request reached the upstream");
    gateway.signal("TERM");
    in_flight
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let (upstream, mut arrivals) = slow_upstream().await;
    // `workers: 1` serves on the accepting thread: it drains too.
    let gateway = slow_route_gateway("  workers: 1\n", upstream);
    let in_flight = term_with_a_request_in_flight(&gateway, &mut arrivals).await;

    // New connections are refused once the listener is closed...
    let addr = gateway.addr;
    eventually("the listener closes after SIGTERM", async || {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    // ...while the request that was in flight completes normally.
    let (status, body) = in_flight
        .await
        .unwrap()
        .expect("in-flight request answered");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok");

    let (status, _) = gateway.process.wait().await;
    assert_eq!(status.code(), Some(0), "exit status after drain");
}

/// The CPU time (ns) of each of the process's worker threads (`sg-worker-N`), by name.
fn worker_cpu_ns(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut workers = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task") {
        let task = task.expect("task entry").path();
        let Ok(name) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        let name = name.trim();
        if !name.starts_with("sg-worker-") {
            continue;
        }
        let schedstat = std::fs::read_to_string(task.join("schedstat")).expect("schedstat");
        let on_cpu = schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .expect("schedstat's first field");
        workers.insert(name.to_string(), on_cpu);
    }
    workers
}

#[tokio::test]
async fn workers_share_the_connections_and_drain_together() {
    let (upstream, mut arrivals) = slow_upstream().await;
    let gateway = slow_route_gateway("  workers: 3\n", upstream);
    let before = worker_cpu_ns(gateway.pid());
    assert_eq!(
        before.keys().cloned().collect::<Vec<_>>(),
        ["sg-worker-0", "sg-worker-1", "sg-worker-2"],
        "one thread per worker"
    );

    // Six keep-alive connections, handed to the workers in turn: two each, and every
    // worker serves requests.
    let mut clients = Vec::new();
    for _ in 0..6 {
        let addr = gateway.addr;
        clients.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            for _ in 0..20 {
                sender.ready().await.unwrap();
                let request = Request::get("/slow")
                    .header("host", "gateway")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"ok");
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    while arrivals.try_recv().is_ok() {}
    let after = worker_cpu_ns(gateway.pid());
    for (name, ns) in &after {
        assert!(ns > &before[name], "{name} served none of the connections");
    }

    // A request in flight on one of the workers when SIGTERM comes completes; the
    // process then exits 0.
    let in_flight = term_with_a_request_in_flight(&gateway, &mut arrivals).await;
    let (status, body) = in_flight
        .await
        .unwrap()
        .expect("in-flight request answered");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let (status, _) = gateway.process.wait().await;
    assert_eq!(status.code(), Some(0), "exit status after drain");
}

#[tokio::test]
async fn sighup_reloads_and_a_broken_file_keeps_the_old_config() {
    let gateway = Gateway::start(&format!(
        "routes:\n{}",
        route("first", "/first", "builtin:echo")
    ));
    assert_eq!(get(&gateway.url("/first")).await.unwrap().0, StatusCode::OK);
    assert_eq!(
        get(&gateway.url("/second")).await.unwrap().0,
        StatusCode::NOT_FOUND
    );

    gateway.rewrite(&format!(
        "routes:\n{}",
        route("second", "/second", "builtin:echo")
    ));
    gateway.signal("HUP");
    eventually("the new route serves", async || {
        matches!(get(&gateway.url("/second")).await, Ok((StatusCode::OK, _)))
    })
    .await;
    assert_eq!(
        get(&gateway.url("/first")).await.unwrap().0,
        StatusCode::NOT_FOUND
    );

    gateway.rewrite("routes:\n  - name: [broken\n");
    gateway.signal("HUP");
    eventually("the refused reload is counted", async || {
        get(&gateway.admin_url("/metrics"))
            .await
            .is_ok_and(|(_, text)| {
                text.lines().any(|l| {
                    l.starts_with("scopegate_config_reloads_total{result=\"error\"}")
                        && !l.ends_with(" 0")
                })
            })
    })
    .await;
    assert_eq!(
        get(&gateway.url("/second")).await.unwrap().0,
        StatusCode::OK,
        "old config must keep serving"
    );
    assert_eq!(
        get(&gateway.admin_url("/readyz")).await.unwrap().0,
        StatusCode::OK
    );
    // The counter moves before the error line is written, and stderr is read by another
    // thread: wait for the line rather than race it.
    eventually("the refusal is logged", async || {
        gateway.lines().iter().any(|line| line.contains("refused"))
    })
    .await;
}

#[tokio::test]
async fn requests_in_flight_across_a_reload_all_succeed() {
    let (upstream, _arrivals) = slow_upstream().await;
    let up = format!("http://{upstream}");
    // On one worker (the current-thread scheduler): 200 requests in flight and a
    // reload share one thread.
    let gateway = Gateway::start_with(
        "  workers: 1\n",
        &format!("routes:\n{}", route("slow", "/slow", &up)),
    );
    let client = client();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = client.clone();
        let url = gateway.url("/slow?ms=300");
        tasks.push(tokio::spawn(async move {
            let response = client
                .request(Request::get(url).body(Empty::new()).unwrap())
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(response.status())
        }));
    }
    // Reload (file change, no signal) while those are in flight.
    gateway.rewrite(&format!(
        "routes:\n{}{}",
        route("slow", "/slow", &up),
        route("extra", "/extra", "builtin:echo")
    ));
    eventually("the file change is applied", async || {
        matches!(get(&gateway.url("/extra")).await, Ok((StatusCode::OK, _)))
    })
    .await;
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(StatusCode::OK) => ok += 1,
            other => panic!("a request across the reload failed: {other:?}"),
        }
    }
    assert_eq!(ok, 200);
}

fn self_signed(dir: &std::path::Path) -> (PathBuf, PathBuf, rcgen::CertifiedKey<rcgen::KeyPair>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key, certified)
}

fn tls_client_trusting(cert_pem: &std::path::Path) -> rustls::ClientConfig {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cert_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

#[tokio::test]
async fn tls_termination_offers_h2_and_http11() {
    let dir = TempDir::new("ops-tls");
    let (cert, key, _) = self_signed(dir.path());
    let gateway = tls_echo(&cert, &key);
    for (alpn, version) in [
        (
            &[b"h2".as_slice(), b"http/1.1".as_slice()][..],
            http::Version::HTTP_2,
        ),
        (&[b"http/1.1".as_slice()][..], http::Version::HTTP_11),
    ] {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_client_trusting(&cert))
            .https_only();
        let connector = if alpn.len() == 2 {
            builder.enable_all_versions().build()
        } else {
            builder.enable_http1().build()
        };
        let client: Client<_, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let url = format!("https://localhost:{}/echo", gateway.addr.port());
        let response = client
            .request(Request::get(url).body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), version, "ALPN {alpn:?}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    }
}

/// The gateway serving `builtin:echo` at `/echo` over TLS with `cert` and `key`.
fn tls_echo(cert: &std::path::Path, key: &std::path::Path) -> Gateway {
    let tls = format!(
        "  tls: {{ cert_file: '{}', key_file: '{}' }}\n",
        cert.display(),
        key.display()
    );
    let routes = format!("routes:\n{}", route("echo", "/echo", "builtin:echo"));
    Gateway::start_with(&tls, &routes)
}

/// An https upstream with its own certificate.
async fn tls_upstream(dir: &std::path::Path) -> (SocketAddr, PathBuf) {
    let (cert, key, _) = self_signed(dir);
    let acceptor = scopegate::tls::tls_acceptor(&cert, &key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    accept_each(listener, move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = service_fn(|_req: Request<Incoming>| async { ok_text(b"secure") });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    });
    (addr, cert)
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let dir = TempDir::new("ops-tls");
    let (upstream, cert) = tls_upstream(dir.path()).await;
    let up = format!("https://localhost:{}", upstream.port());

    let trusted = Gateway::start_with(
        &format!("  upstream_ca_file: '{}'\n", cert.display()),
        &format!("routes:\n{}", route("secure", "/secure", &up)),
    );
    let (status, body) = get(&trusted.url("/secure")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "secure");

    // Without the CA the certificate is unknown: the gateway refuses to talk (502).
    let untrusted = Gateway::start(&format!("routes:\n{}", route("secure", "/secure", &up)));
    let (status, body) = get(&untrusted.url("/secure")).await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("bad_gateway"));
}

#[tokio::test]
async fn sighup_reloads_the_tls_certificate() {
    let dir = TempDir::new("ops-tls");
    let (cert, key, _) = self_signed(dir.path());
    let first = dir.path().join("first.pem");
    std::fs::copy(&cert, &first).unwrap();
    let gateway = tls_echo(&cert, &key);
    let url = format!("https://localhost:{}/echo", gateway.addr.port());
    let fetch = |trusted: PathBuf, url: String| async move {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_client_trusting(&trusted))
            .https_only()
            .enable_http1()
            .build();
        let client: Client<_, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        client
            .request(Request::get(url).body(Empty::new()).unwrap())
            .await
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    };
    assert_eq!(fetch(first.clone(), url.clone()).await, Ok(StatusCode::OK));

    // New certificate and key in place, then SIGHUP.
    let (_, _, second) = {
        let other = TempDir::new("ops-tls");
        self_signed(other.path())
    };
    std::fs::write(&cert, second.cert.pem()).unwrap();
    std::fs::write(&key, second.signing_key.serialize_pem()).unwrap();
    let second_pem = dir.path().join("second.pem");
    std::fs::write(&second_pem, second.cert.pem()).unwrap();
    gateway.signal("HUP");
    eventually("new connections get the new certificate", async || {
        fetch(second_pem.clone(), url.clone()).await == Ok(StatusCode::OK)
    })
    .await;
    assert!(
        fetch(first, url).await.is_err(),
        "a client trusting only the old certificate must now fail"
    );
}

fn sha256_hex(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The admin `/config` page: the demo config as written (secrets and `${VAR}` values
/// hidden), the SHA-256 of the file and its load time; a reload changes both.
#[tokio::test]
async fn admin_config_shows_the_running_config_redacted_with_its_hash() {
    let dir = TempDir::new("ops-config");
    let demo = include_str!("../gateway.yaml")
        .replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:0")
        .replace("format: pretty", "format: json")
        .replace("admin_listen: 127.0.0.1:9100", "admin_listen: 127.0.0.1:0")
        .replace(
            "store: sqlite://scopegate.db",
            &format!("store: sqlite://{}/demo.db", dir.path().display()),
        );
    assert!(demo.contains("127.0.0.1:0") && demo.contains("format: json"));
    let process = Process::start(dir.path(), &demo, &[("DEMO_M2M_SECRET", "m2m-from-env")]);
    process.wait_ready().await;

    let (status, body) = get(&process.admin_url("/config")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["sha256"], sha256_hex(&demo));
    let loaded = page["loaded_at"].as_str().unwrap();
    assert!(loaded.len() == 20 && loaded.ends_with('Z'), "{loaded}");
    assert!(page["loaded_at_unix"].as_u64().unwrap() > 1_700_000_000);
    let config = &page["config"];
    assert_eq!(config["routes"][0]["name"], "public");
    assert_eq!(config["issuer"]["clients"][1]["client_id"], "contacts-m2m");
    assert_eq!(
        config["issuer"]["clients"][1]["client_secret"],
        "[redacted]"
    );
    assert_eq!(config["issuer"]["users"][0]["password_hash"], "[redacted]");
    for secret in ["m2m-from-env", "demo-m2m-secret", "$argon2id$"] {
        assert!(!body.contains(secret), "{secret} shows on /config");
    }

    let changed = demo.replace("name: public", "name: public-v2");
    process.rewrite(&changed);
    process.signal("HUP");
    eventually("/config shows the reloaded file", async || {
        get(&process.admin_url("/config"))
            .await
            .is_ok_and(|(_, body)| body.contains(&sha256_hex(&changed)))
    })
    .await;
    let (_, body) = get(&process.admin_url("/config")).await.unwrap();
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["config"]["routes"][0]["name"], "public-v2");
}
