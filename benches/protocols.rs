//! Throughput of the protocols beyond plain HTTP/1.1, through the gateway and direct,
//! everything in this process on 127.0.0.1:
//!
//! - `websocket_echo`: one WebSocket connection to an echo server (tungstenite); a writer
//!   sends `MESSAGES` text messages of 64 bytes while a reader takes the echoes:
//!   messages/s, direct and through a route with `websocket: true`.
//! - `grpc_unary`: unary gRPC calls (the wire protocol on hyper's HTTP/2 client and
//!   server, 32-byte messages) from `CONCURRENCY` tasks over one h2c connection:
//!   calls/s, direct and through a route with `protocol: h2c`.
//!
//! Routes are `auth: none`: a token costs the same here as on any route (see the `proxy`
//! bench for that), and this measures the relaying. Three runs each; the median is
//! printed. `cargo bench --bench protocols`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use scopegate::config::Config;
use scopegate::state::{Gateway, Runtime};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const MESSAGES: usize = 50_000;
const CALLS: usize = 40_000;
const CONCURRENCY: usize = 32;
const RUNS: usize = 3;

async fn ws_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                while let Some(Ok(message)) = stream.next().await {
                    if message.is_close() || sink.send(message).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn framed(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

async fn grpc_service(
    request: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", 0.into());
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(body)),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
        frames,
    ))));
    response
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    Ok(response)
}

async fn grpc_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(grpc_service)),
            );
        }
    });
    addr
}

async fn gateway(ws: SocketAddr, grpc: SocketAddr) -> SocketAddr {
    let yaml = format!(
        r#"server: {{ listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0" }}
log: {{ level: warn }}
routes:
  - {{ name: ws, match: {{ path: /ws }}, upstream: "http://{ws}", websocket: true, auth: none }}
  - {{ name: grpc, match: {{ path: /bench.Echo/* }}, upstream: "http://{grpc}", protocol: h2c, auth: none }}
"#
    );
    let config = Config::from_yaml(&yaml).unwrap();
    let gateway = Gateway::start_with(config, Runtime::default())
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(scopegate::serve(listener, gateway, std::future::pending()));
    addr
}

/// Messages/s echoed over one WebSocket connection to `addr`.
async fn websocket_rate(addr: SocketAddr) -> f64 {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .unwrap();
    let (mut sink, mut stream) = ws.split();
    let payload = "x".repeat(64);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            sink.feed(Message::text(payload.clone())).await.unwrap();
        }
        sink.flush().await.unwrap();
        sink
    });
    let mut echoed = 0;
    while echoed < MESSAGES {
        match stream.next().await {
            Some(Ok(message)) if message.is_text() => echoed += 1,
            other => panic!("the echo stopped: {other:?}"),
        }
    }
    let rate = MESSAGES as f64 / started.elapsed().as_secs_f64();
    let mut sink = writer.await.unwrap();
    let _ = sink.close().await;
    rate
}

/// Unary calls/s over one h2c connection to `addr`.
async fn grpc_rate(addr: SocketAddr) -> f64 {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let message = framed(&[7u8; 32]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let mut sender = sender.clone();
        let message = message.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..CALLS / CONCURRENCY {
                let request = Request::post(format!("http://{addr}/bench.Echo/Say"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(Full::new(message.clone()))
                    .unwrap();
                sender.ready().await.unwrap();
                let response = sender.send_request(request).await.unwrap();
                let collected = response.into_body().collect().await.unwrap();
                let ok = collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status"))
                    .is_some_and(|s| s == "0");
                assert!(ok, "a call failed");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (CALLS / CONCURRENCY * CONCURRENCY) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ws = ws_echo_server().await;
        let grpc = grpc_server().await;
        let gw = gateway(ws, grpc).await;
        // Warm-up: connections, pools, caches.
        websocket_rate(gw).await;
        grpc_rate(gw).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut rows = Vec::new();
        for (name, direct, through) in [
            ("websocket_echo (messages/s)", ws, gw),
            ("grpc_unary (calls/s)", grpc, gw),
        ] {
            let mut direct_runs = Vec::new();
            let mut gateway_runs = Vec::new();
            for _ in 0..RUNS {
                if name.starts_with("websocket") {
                    direct_runs.push(websocket_rate(direct).await);
                    gateway_runs.push(websocket_rate(through).await);
                } else {
                    direct_runs.push(grpc_rate(direct).await);
                    gateway_runs.push(grpc_rate(through).await);
                }
            }
            rows.push((name, median(direct_runs), median(gateway_runs)));
        }
        println!("| scenario | direct | through the gateway | ratio |");
        println!("|---|---:|---:|---:|");
        for (name, direct, through) in rows {
            println!(
                "| {name} | {direct:.0} | {through:.0} | {:.2} |",
                through / direct
            );
        }
    });
}
