//! Each client is answered in its own HTTP version, whatever the upstream speaks: an
//! HTTP/1.0 upstream does not downgrade an HTTP/1.1 client (whose keep-alive survives),
//! and an HTTP/1.0 client is answered in HTTP/1.0.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/1.0 server: reads a request head, answers `HTTP/1.0 200` with a body framed
/// by closing the connection, and closes.
async fn http10_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold-server")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test]
async fn an_http10_upstream_does_not_downgrade_an_http11_client() {
    let upstream = http10_upstream().await;
    let yaml = standard_yaml(&format!(
        "  - {{ name: old, match: {{ path: /old/* }}, upstream: \"{upstream}\", auth: none }}\n"
    ));
    let issuer = Issuer::start(&default_keys()).await;
    let gw = Gw::start(&render(&yaml, &[("issuer", &issuer.url)])).await;

    let stream = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    for round in 0..3 {
        sender.ready().await.expect("the connection stays open");
        let request = Request::get("/old/x")
            .header("host", "gateway.test")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
            .await
            .expect("no answer in time")
            .expect("answer");
        assert_eq!(response.status(), 200, "round {round}");
        assert_eq!(response.version(), Version::HTTP_11, "round {round}");
        assert!(
            response
                .headers()
                .get("connection")
                .is_none_or(|v| v != "close"),
            "round {round}: {:?}",
            response.headers()
        );
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"old-server");
    }
    // Three answers on one connection: keep-alive survived.
    let metrics = gw.metrics().await;
    assert_eq!(requests_total(&metrics, "old", "GET", "200"), 3.0);

    // An HTTP/1.0 client is answered in HTTP/1.0.
    let old = raw(gw.addr, "GET /old/x HTTP/1.0\r\nHost: gateway.test\r\n\r\n").await;
    assert!(old.raw.starts_with("HTTP/1.0 200"), "{}", old.raw);
    assert_eq!(old.body, "old-server");
}
