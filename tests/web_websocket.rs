//! WebSocket through the gateway, with a real WebSocket server behind it and a real
//! client in front (tungstenite): the handshake is authenticated and authorized like any
//! request, the identity headers reach the upstream, messages go both ways, the
//! connections are counted, and they close at shutdown once the drain grace is over.
//! Upgrades the route cannot make are counted 400s.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};

/// The headers of one handshake, as the upstream received them.
type Handshake = Vec<(String, String)>;

/// A WebSocket echo server; records each handshake's headers.
struct EchoServer {
    url: String,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
}

async fn echo_server() -> EchoServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let handshakes = Arc::new(Mutex::new(Vec::new()));
    let seen = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                // The callback's type is tungstenite's.
                #[allow(clippy::result_large_err)]
                let record = |request: &WsRequest, response: WsResponse| {
                    let headers = request
                        .headers()
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect();
                    seen.lock().expect("lock").push(headers);
                    Ok(response)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_close() {
                        break;
                    }
                    if ws.send(message).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    EchoServer { url, handshakes }
}

fn yaml(upstream: &str) -> String {
    standard_yaml(&format!(
        r#"
  - {{ name: ws, match: {{ path: /ws/* }}, upstream: "{upstream}", scopes: [read:contacts], websocket: true }}
  - {{ name: plain, match: {{ path: /plain/* }}, upstream: "{upstream}", auth: none }}
"#
    ))
}

async fn start() -> (Issuer, EchoServer, Gw) {
    let issuer = Issuer::start(&default_keys()).await;
    let server = echo_server().await;
    let gw = Gw::start(&render(&yaml(&server.url), &[("issuer", &issuer.url)])).await;
    gw.wait_ready().await;
    (issuer, server, gw)
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket handshake with the gateway at `addr`; the refusal's status otherwise.
async fn connect(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> Result<Ws, u16> {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("value"),
        );
    }
    let stream = TcpStream::connect(addr).await.expect("connect");
    match tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("no handshake answer in time")
    {
        Ok((ws, response)) => {
            assert_eq!(response.status(), 101);
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(err) => panic!("handshake failed: {err}"),
    }
}

/// Whether the gateway closes `ws` (a close frame, an error or the end) in time.
async fn closed(ws: &mut Ws) -> bool {
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(message)) if message.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    });
    end.await.is_ok()
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    let reply = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("no echo in time")
        .expect("closed")
        .expect("read");
    assert_eq!(reply, Message::text(text));
}

#[tokio::test]
async fn an_authorized_handshake_is_relayed_both_ways_with_the_identity() {
    let (issuer, server, gw) = start().await;
    let token = rsa().token(&claims_at(&issuer.url, gw.clock.unix_secs(), json!({})));
    let mut ws = connect(gw.addr, "/ws/chat", Some(&token))
        .await
        .expect("101");
    for i in 0..3 {
        echo(&mut ws, &format!("hello {i}")).await;
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send");
    let reply = ws.next().await.expect("open").expect("read");
    assert_eq!(reply.into_data().as_ref(), &[0u8, 1, 2, 255]);

    let handshake = server.handshakes.lock().expect("lock")[0].clone();
    let value = |name: &str| {
        handshake
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(value("x-auth-subject").as_deref(), Some("user-1"));
    assert_eq!(value("x-auth-scopes").as_deref(), Some("read:contacts"));
    assert!(value("x-request-id").is_some());
    assert_eq!(value("upgrade").as_deref(), Some("websocket"));

    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "scopegate_websocket_connections_total",
            &[("route", "ws")]
        ),
        1.0
    );
    assert_eq!(
        metric(&metrics, "scopegate_open_websockets", &[]),
        1.0,
        "{metrics}"
    );
    assert_eq!(requests_total(&metrics, "ws", "GET", "101"), 1.0);

    ws.close(None).await.expect("close");
    // The close handshake, then the client's connection goes.
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    eventually("the relay ends after the close", async || {
        metric(&gw.metrics().await, "scopegate_open_websockets", &[]) == 0.0
    })
    .await;
}

#[tokio::test]
async fn handshakes_without_a_good_token_or_scope_are_refused_before_the_upstream() {
    let (issuer, server, gw) = start().await;
    assert_eq!(connect(gw.addr, "/ws/chat", None).await.err(), Some(401));
    let narrow = rsa().token(&claims_at(
        &issuer.url,
        gw.clock.unix_secs(),
        json!({"scope": "other"}),
    ));
    assert_eq!(
        connect(gw.addr, "/ws/chat", Some(&narrow)).await.err(),
        Some(403)
    );
    assert_eq!(
        connect(gw.addr, "/ws/chat", Some("not-a-token"))
            .await
            .err(),
        Some(401)
    );
    assert!(server.handshakes.lock().expect("lock").is_empty());
    let metrics = gw.metrics().await;
    assert_eq!(auth_failures(&metrics, "ws", "missing_token"), 1.0);
    assert_eq!(auth_failures(&metrics, "ws", "insufficient_scope"), 1.0);
}

#[tokio::test]
async fn upgrades_a_route_cannot_make_are_counted_400s() {
    let (_issuer, server, gw) = start().await;
    // WebSocket on a route without websocket: true.
    assert_eq!(connect(gw.addr, "/plain/x", None).await.err(), Some(400));
    let unknown = raw(
        gw.addr,
        "GET /plain/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: upgrade, close\r\nUpgrade: foo/2\r\n\r\n",
    )
    .await;
    assert_eq!(unknown.status, 400, "{}", unknown.raw);
    let not_get = raw(
        gw.addr,
        "POST /ws/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(not_get.status, 400, "{}", not_get.raw);
    // h2c upgrades (curl --http2 over cleartext) are ignored: a plain HTTP/1.1 answer.
    let h2c = raw(
        gw.addr,
        "GET /plain/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    // The echo server is no HTTP server past its handshake: anything but 400 shows the
    // gateway did not refuse the request.
    assert_ne!(h2c.status, 400, "{}", h2c.raw);
    let metrics = gw.metrics().await;
    let refused = |route: &str, reason: &str| {
        metric(
            &metrics,
            "scopegate_requests_refused_total",
            &[("route", route), ("reason", reason)],
        )
    };
    assert_eq!(refused("plain", "websocket_not_enabled"), 1.0, "{metrics}");
    assert_eq!(refused("plain", "upgrade_unsupported"), 1.0);
    assert_eq!(refused("ws", "websocket_malformed"), 1.0);
    assert!(server.handshakes.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn websockets_hold_the_drain_and_close_once_the_grace_is_over() {
    let issuer = Issuer::start(&default_keys()).await;
    let server = echo_server().await;
    let yaml = yaml(&server.url).replace("server:\n", "server:\n  shutdown_grace: 300ms\n");
    let gw = Gw::start(&render(&yaml, &[("issuer", &issuer.url)])).await;
    gw.wait_ready().await;
    // A second listener of the same gateway, with a shutdown this test triggers.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(scopegate::serve(listener, gw.gateway.clone(), async {
        let _ = stopped.await;
    }));
    let token = rsa().token(&claims_at(&issuer.url, gw.clock.unix_secs(), json!({})));
    let mut ws = connect(addr, "/ws/chat", Some(&token)).await.expect("101");
    echo(&mut ws, "before shutdown").await;

    stop.send(()).expect("stop");
    // The drain waits for the WebSocket (it holds its connection's slot) until the
    // grace is over, then closes it.
    tokio::time::timeout(DEADLINE, serving)
        .await
        .expect("serve did not return after the grace")
        .expect("join")
        .expect("serve");
    assert!(
        closed(&mut ws).await,
        "the WebSocket stayed open after the grace"
    );
    eventually("open_websockets back to 0", async || {
        metric(&gw.metrics().await, "scopegate_open_websockets", &[]) == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_websocket_stays_open_while_used_and_closes_after_tunnel_idle() {
    let issuer = Issuer::start(&default_keys()).await;
    let server = echo_server().await;
    let yaml = yaml(&server.url).replace(
        "websocket: true }",
        "websocket: true, timeouts: { tunnel_idle: 1s } }",
    );
    let gw = Gw::start(&render(&yaml, &[("issuer", &issuer.url)])).await;
    gw.wait_ready().await;
    let token = rsa().token(&claims_at(&issuer.url, gw.clock.unix_secs(), json!({})));
    let mut ws = connect(gw.addr, "/ws/chat", Some(&token))
        .await
        .expect("101");
    // Used for three times the idle timeout, a message every fifth of it: stays open.
    for round in 0..15 {
        echo(&mut ws, &format!("busy {round}")).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    echo(&mut ws, "then silence").await;
    // Nothing moves either way: the gateway closes both connections.
    assert!(closed(&mut ws).await, "the idle WebSocket stayed open");
    eventually("open_websockets back to 0", async || {
        metric(&gw.metrics().await, "scopegate_open_websockets", &[]) == 0.0
    })
    .await;
}
