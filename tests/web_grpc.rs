//! gRPC and HTTP/2 to upstreams: a gRPC server behind the gateway (the gRPC wire
//! protocol on hyper's HTTP/2 server: length-prefixed messages, `grpc-status` in
//! trailers) and a gRPC client in front (hyper's HTTP/2 client, reading the status the
//! way gRPC clients do: from the trailers, or from the headers of a trailers-only
//! answer). Unary calls with the identity as metadata, statuses in trailers relayed,
//! auth failures answered as UNAUTHENTICATED / PERMISSION_DENIED, gRPC on an http1 route
//! a counted 415 with UNIMPLEMENTED; `h2` and `auto` over TLS (ALPN), `auto` falling back
//! to HTTP/1.1 when the upstream picks it.
//!
//! (tonic was tried as the client and server: it turned the test build into a rebuild
//! of most of the dependency graph, so the wire protocol is written out here instead.)

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// gRPC status codes used here.
const OK: u32 = 0;
const PERMISSION_DENIED: u32 = 7;
const NOT_FOUND: u32 = 5;
const UNIMPLEMENTED: u32 = 12;
const UNAUTHENTICATED: u32 = 16;

/// One length-prefixed, uncompressed message.
fn framed(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).expect("small"));
    out.put_slice(message);
    out.freeze()
}

/// The message of a single-message body.
fn unframed(body: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
    body.get(5..5 + len)
}

type GrpcBody = BoxBody<Bytes, Infallible>;

/// `/<service>/Say`: answers `<x-auth-subject>:<message>` (and whether `te: trailers`
/// came); `fail` is NOT_FOUND, sent in trailers after the headers.
async fn grpc_service(request: Request<Incoming>) -> Result<Response<GrpcBody>, Infallible> {
    let subject = request
        .headers()
        .get("x-auth-subject")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let te = request.headers().get("te").is_some_and(|v| v == "trailers");
    let body = request
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let message = unframed(&body).unwrap_or_default().to_vec();
    let mut trailers = HeaderMap::new();
    let mut frames = Vec::new();
    if message == b"fail" {
        trailers.insert("grpc-status", NOT_FOUND.into());
        trailers.insert("grpc-message", "no such thing".parse().expect("value"));
    } else {
        let text = format!("{subject}:{}:te={te}", String::from_utf8_lossy(&message));
        frames.push(Ok::<_, Infallible>(Frame::data(framed(text.as_bytes()))));
        trailers.insert("grpc-status", OK.into());
    }
    frames.push(Ok(Frame::trailers(trailers)));
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", "application/grpc".parse().expect("value"));
    Ok(response)
}

/// A finished call as a gRPC client reads it: the status from the trailers, or from the
/// headers of a trailers-only answer.
#[derive(Debug)]
struct Call {
    http_status: u16,
    code: Option<u32>,
    message: String,
    reply: Option<String>,
}

/// A unary call to `path` through `addr` over h2c.
async fn call_grpc(addr: SocketAddr, path: &str, token: Option<&str>, message: &str) -> Call {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    let mut builder = Request::post(format!("http://gateway.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let request = builder
        .body(Full::new(framed(message.as_bytes())))
        .expect("request");
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("no answer in time")
        .expect("answer");
    let (parts, body) = response.into_parts();
    let collected = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("no body in time")
        .expect("body");
    let trailers = collected.trailers().cloned();
    let bytes = collected.to_bytes();
    let status_in = |map: &HeaderMap| {
        map.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let (code, source) = match trailers.as_ref().and_then(|t| status_in(t).map(|c| (c, t))) {
        Some((code, map)) => (Some(code), Some(map)),
        None => (status_in(&parts.headers), Some(&parts.headers)),
    };
    let message = source
        .and_then(|map| map.get("grpc-message"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Call {
        http_status: parts.status.as_u16(),
        code,
        message,
        reply: unframed(&bytes).map(|m| String::from_utf8_lossy(m).into_owned()),
    }
}

/// A gRPC server over h2c (prior knowledge).
async fn h2c_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(grpc_service)),
            );
        }
    });
    addr
}

/// A TLS server offering `alpn`: gRPC over HTTP/2 when ALPN picks `h2`, else a plain
/// HTTP/1.1 answer `http1 over tls`. Returns its address and the CA file to trust.
async fn tls_server(alpn: &[&[u8]]) -> (SocketAddr, std::path::PathBuf) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("certificate");
    let dir = std::env::temp_dir().join(unique("scopegate-grpc-tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, certified.cert.pem()).expect("write CA");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .expect("server config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service_fn(grpc_service))
                        .await;
                } else {
                    let plain = service_fn(|_request: Request<Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"http1 over tls",
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, plain)
                        .await;
                }
            });
        }
    });
    (addr, ca)
}

fn routes(h2c: SocketAddr) -> String {
    format!(
        r#"
  - {{ name: grpc, match: {{ path: /test.Echo/*, methods: [POST] }}, upstream: "http://{h2c}", protocol: h2c, scopes: [read:contacts] }}
  - {{ name: grpc-admin, match: {{ path: /test.Admin/* }}, upstream: "http://{h2c}", protocol: h2c, scopes: [admin] }}
  - {{ name: h1, match: {{ path: /test.Plain/* }}, upstream: "http://{h2c}", auth: none }}
"#
    )
}

async fn start(extra_routes: &str, server: &str) -> (Issuer, Gw) {
    let issuer = Issuer::start(&default_keys()).await;
    let h2c = h2c_server().await;
    let yaml = standard_yaml(&format!("{}{extra_routes}", routes(h2c)))
        .replace("server:\n", &format!("server:\n{server}"));
    let gw = Gw::start(&render(&yaml, &[("issuer", &issuer.url)])).await;
    gw.wait_ready().await;
    (issuer, gw)
}

fn token(issuer: &Issuer, gw: &Gw, extra: serde_json::Value) -> String {
    rsa().token(&claims_at(&issuer.url, gw.clock.unix_secs(), extra))
}

#[tokio::test]
async fn unary_calls_go_through_h2c_with_the_identity_and_trailers() {
    let (issuer, gw) = start("", "").await;
    let token = token(&issuer, &gw, json!({}));
    for round in 0..3 {
        let call = call_grpc(
            gw.addr,
            "/test.Echo/Say",
            Some(&token),
            &format!("hello {round}"),
        )
        .await;
        assert_eq!(call.http_status, 200, "{call:?}");
        assert_eq!(call.code, Some(OK), "{call:?}");
        // The identity as metadata, and `te: trailers` upstream.
        assert_eq!(
            call.reply.as_deref(),
            Some(format!("user-1:hello {round}:te=true").as_str())
        );
    }
    // The upstream's status, sent in trailers after the headers, reaches the client.
    let failed = call_grpc(gw.addr, "/test.Echo/Say", Some(&token), "fail").await;
    assert_eq!(failed.code, Some(NOT_FOUND), "{failed:?}");
    assert_eq!(failed.message, "no such thing");
    let metrics = gw.metrics().await;
    assert_eq!(
        requests_total(&metrics, "grpc", "POST", "200"),
        4.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn auth_failures_are_grpc_statuses() {
    let (issuer, gw) = start("", "").await;
    let missing = call_grpc(gw.addr, "/test.Echo/Say", None, "x").await;
    // Trailers-only: HTTP 200, the status in the headers, no message.
    assert_eq!(missing.http_status, 200, "{missing:?}");
    assert_eq!(missing.code, Some(UNAUTHENTICATED), "{missing:?}");
    assert!(missing.message.contains("bearer"), "{missing:?}");
    assert_eq!(missing.reply, None);
    let bad = call_grpc(gw.addr, "/test.Echo/Say", Some("not.a.token"), "x").await;
    assert_eq!(bad.code, Some(UNAUTHENTICATED), "{bad:?}");
    let token = token(&issuer, &gw, json!({}));
    let denied = call_grpc(gw.addr, "/test.Admin/Do", Some(&token), "x").await;
    assert_eq!(denied.code, Some(PERMISSION_DENIED), "{denied:?}");
    assert!(denied.message.contains("admin"), "{denied:?}");
    let metrics = gw.metrics().await;
    assert_eq!(auth_failures(&metrics, "grpc", "missing_token"), 1.0);
    assert_eq!(
        auth_failures(&metrics, "grpc-admin", "insufficient_scope"),
        1.0
    );
}

#[tokio::test]
async fn grpc_on_an_http1_route_is_a_counted_415_read_as_unimplemented() {
    let (_issuer, gw) = start("", "").await;
    let call = call_grpc(gw.addr, "/test.Plain/Say", None, "x").await;
    assert_eq!(call.http_status, 415, "{call:?}");
    assert_eq!(call.code, Some(UNIMPLEMENTED), "{call:?}");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "scopegate_requests_refused_total",
            &[("route", "h1"), ("reason", "grpc_needs_h2")]
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn h2_and_auto_over_tls_follow_alpn() {
    let (h2_addr, h2_ca) = tls_server(&[b"h2"]).await;
    let (h1_addr, h1_ca) = tls_server(&[b"http/1.1"]).await;
    // One CA file for both servers.
    let both = std::fs::read_to_string(&h2_ca).expect("ca")
        + &std::fs::read_to_string(&h1_ca).expect("ca");
    std::fs::write(&h2_ca, both).expect("write");
    let routes = format!(
        r#"  - {{ name: tls-h2, match: {{ path: /test.Echo/* }}, upstream: "https://127.0.0.1:{}", protocol: h2, auth: none }}
  - {{ name: tls-auto, match: {{ path: /auto/* }}, upstream: "https://127.0.0.1:{}", protocol: auto, auth: none }}
  - {{ name: tls-auto-h1, match: {{ path: /old/* }}, upstream: "https://127.0.0.1:{}", protocol: auto, auth: none }}
  - {{ name: tls-h2-only, match: {{ path: /strict/* }}, upstream: "https://127.0.0.1:{}", protocol: h2, auth: none }}
"#,
        h2_addr.port(),
        h2_addr.port(),
        h1_addr.port(),
        h1_addr.port(),
    );
    let issuer = Issuer::start(&default_keys()).await;
    let yaml = standard_yaml(&routes).replace(
        "server:\n",
        &format!("server:\n  upstream_ca_file: {}\n", h2_ca.display()),
    );
    let gw = Gw::start(&render(&yaml, &[("issuer", &issuer.url)])).await;
    gw.wait_ready().await;

    let call = call_grpc(gw.addr, "/test.Echo/Say", None, "over h2").await;
    assert_eq!(call.code, Some(OK), "{call:?}");
    assert_eq!(call.reply.as_deref(), Some("-:over h2:te=true"));
    // auto with an upstream that picks h2: gRPC works.
    let call = call_grpc(gw.addr, "/auto/Say", None, "auto").await;
    assert_eq!(call.code, Some(OK), "{call:?}");
    assert_eq!(call.reply.as_deref(), Some("-:auto:te=true"));
    // auto with an upstream that picks HTTP/1.1: plain requests work, twice (the second
    // from the HTTP/1.1 pool).
    for round in 0..2 {
        let reply = get(gw.addr, "/old/x", &[]).await;
        assert_eq!(reply.status, 200, "round {round}: {reply:?}");
        assert_eq!(reply.text(), "http1 over tls");
    }
    // h2 with an upstream that does not agree to it: 502.
    let reply = get(gw.addr, "/strict/x", &[]).await;
    assert_json_error(&reply, 502, "bad_gateway");
}

#[test]
fn protocols_must_fit_the_upstream() {
    let base = "server: { listen: '127.0.0.1:0', admin_listen: '127.0.0.1:0' }\nroutes:\n";
    for (route, key) in [
        (
            "{ name: a, match: { path: /a }, upstream: 'https://x', protocol: h2c, auth: none }",
            "routes[0].protocol",
        ),
        (
            "{ name: a, match: { path: /a }, upstream: 'http://x', protocol: h2, auth: none }",
            "routes[0].protocol",
        ),
        (
            "{ name: a, match: { path: /a }, upstream: 'http://x', protocol: auto, auth: none }",
            "routes[0].protocol",
        ),
        (
            "{ name: a, match: { path: /a }, upstream: builtin:echo, protocol: h2c, auth: none }",
            "routes[0].protocol",
        ),
        (
            "{ name: a, match: { path: /a }, upstream: builtin:echo, websocket: true, auth: none }",
            "routes[0].websocket",
        ),
        (
            "{ name: a, match: { path: /a, methods: [POST] }, upstream: 'http://x', websocket: true, auth: none }",
            "routes[0].websocket",
        ),
    ] {
        let yaml = format!("{base}  - {route}\n");
        let err = scopegate::config::Config::from_yaml(&yaml).expect_err(&yaml);
        assert_eq!(err.path, key, "{err}");
    }
    let unknown = format!(
        "{base}  - {{ name: a, match: {{ path: /a }}, upstream: 'http://x', protocol: h3, auth: none }}\n"
    );
    assert!(scopegate::config::Config::from_yaml(&unknown).is_err());
}

/// Where grpcio is importable from: an install of it (from PyPI, by pip) in the test
/// build's temporary directory, made once per build directory.
fn grpcio_path() -> std::path::PathBuf {
    const VERSION: &str = "1.85.3";
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("grpcio-{VERSION}"));
    if dir.join("grpc").is_dir() {
        return dir;
    }
    let partial = dir.with_file_name(format!("grpcio-{VERSION}.partial-{}", std::process::id()));
    let installed = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-warn-script-location", "--target"])
        .arg(&partial)
        .arg(format!("grpcio=={VERSION}"))
        .status()
        .expect("python3 -m pip (grpcio comes from PyPI)");
    assert!(
        installed.success(),
        "pip install grpcio=={VERSION}: {installed}"
    );
    // Another build's test may have finished first; either install will do.
    if std::fs::rename(&partial, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    dir
}

/// The grpcio scripts in tests/grpcio/.
fn grpcio_script(name: &str) -> std::process::Command {
    let mut command = std::process::Command::new("python3");
    command
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/grpcio")
                .join(name),
        )
        .env("PYTHONPATH", grpcio_path())
        .env("no_grpc_proxy", "*");
    command
}

/// The grpcio server, alive until dropped.
struct GrpcioServer {
    child: std::process::Child,
    addr: SocketAddr,
}

impl GrpcioServer {
    fn start() -> GrpcioServer {
        use std::io::BufRead;
        let mut child = grpcio_script("server.py")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the grpcio server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the grpcio server's port");
        let port: u16 = line.trim().parse().expect("a port");
        GrpcioServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for GrpcioServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One unary call by the grpcio client: (status code name, details, reply).
async fn grpcio_call(
    gateway: SocketAddr,
    path: &str,
    message: &str,
    token: Option<&str>,
) -> serde_json::Value {
    let mut command = grpcio_script("client.py");
    command.args([gateway.to_string().as_str(), path, message]);
    command.args(token);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run the grpcio client");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("the client's JSON")
}

/// The reference gRPC implementation (grpcio, on gRPC's C core) at both ends: its client
/// reads the gateway's answers and the server's relayed statuses as gRPC statuses.
#[tokio::test]
async fn grpcio_client_and_server_work_through_the_gateway() {
    let server = tokio::task::spawn_blocking(GrpcioServer::start)
        .await
        .expect("join");
    let issuer = Issuer::start(&default_keys()).await;
    let yaml = standard_yaml(&routes(server.addr));
    let gw = Gw::start(&render(&yaml, &[("issuer", &issuer.url)])).await;
    gw.wait_ready().await;
    let token = token(&issuer, &gw, json!({}));

    let ok = grpcio_call(gw.addr, "/test.Echo/Say", "hello", Some(&token)).await;
    assert_eq!(ok["code"], "OK", "{ok}");
    assert_eq!(ok["reply"], "user-1:hello", "{ok}");
    // A status the server sends in trailers reaches the client.
    let failed = grpcio_call(gw.addr, "/test.Echo/Say", "fail", Some(&token)).await;
    assert_eq!(failed["code"], "NOT_FOUND", "{failed}");
    assert_eq!(failed["details"], "no such thing", "{failed}");
    // The gateway's own refusals, as grpcio reads them.
    let missing = grpcio_call(gw.addr, "/test.Echo/Say", "x", None).await;
    assert_eq!(missing["code"], "UNAUTHENTICATED", "{missing}");
    let forged = grpcio_call(gw.addr, "/test.Echo/Say", "x", Some("not.a.token")).await;
    assert_eq!(forged["code"], "UNAUTHENTICATED", "{forged}");
    let denied = grpcio_call(gw.addr, "/test.Admin/Do", "x", Some(&token)).await;
    assert_eq!(denied["code"], "PERMISSION_DENIED", "{denied}");

    let metrics = gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "grpc", "missing_token"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        auth_failures(&metrics, "grpc-admin", "insufficient_scope"),
        1.0
    );
}
