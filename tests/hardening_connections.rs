//! Connections that never start a request, or sit idle, are closed; at most
//! `server.max_connections` are served at once and the rest wait in the backlog.
//! Against the real gateway on 127.0.0.1:0, with raw TCP clients.

mod common;

use std::time::Duration;

use common::{Gw, eventually, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn yaml(server_extra: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n{server_extra}routes:\n  - {{ name: echo, match: {{ path: /echo }}, upstream: builtin:echo, auth: none }}\n"
    )
}

/// Reads until the peer closes; the bytes read. Bounded: a connection the gateway never
/// closes fails the test instead of hanging it.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the gateway never closed the connection");
    all
}

/// A connection to `addr` that has written each of `writes`, in order.
async fn connect_sending(addr: std::net::SocketAddr, writes: &[&[u8]]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for bytes in writes {
        stream.write_all(bytes).await.unwrap();
    }
    stream
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let gw = Gw::start(&yaml("  timeouts: { client_header: 1s }\n")).await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    assert!(read_until_closed(&mut silent).await.is_empty());
    // A request head that never ends is closed the same way.
    let mut partial = connect_sending(gw.addr, &[b"GET /echo HTTP/1.1\r\nHost: x\r\n"]).await;
    read_until_closed(&mut partial).await;
}

#[tokio::test]
async fn an_h2c_connection_stuck_in_its_first_headers_frame_is_closed() {
    let gw = Gw::start(&yaml("  timeouts: { client_header: 1s }\n")).await;
    // The preface, an empty SETTINGS frame, then a HEADERS frame header announcing 100
    // bytes of which only 3 come.
    let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let settings: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let headers: &[u8] = &[0, 0, 100, 1, 4, 0, 0, 0, 1, 0x82, 0x86, 0x84];
    let mut stream = connect_sending(gw.addr, &[preface, settings, headers]).await;
    read_until_closed(&mut stream).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_answers() {
    let gw = Gw::start(&yaml("  timeouts: { idle: 1s }\n")).await;
    let mut stream = connect_sending(gw.addr, &[b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"]).await;
    let answer = read_until_closed(&mut stream).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"path\":\"/echo\""), "{text}");
}

#[tokio::test]
async fn at_most_max_connections_are_served_and_the_rest_wait() {
    let gw = Gw::start(&yaml(
        "  max_connections: 2\n  timeouts: { client_header: 2s }\n",
    ))
    .await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    eventually("two connections open", || async {
        metric(&gw.metrics().await, "scopegate_open_connections", &[]) == 2.0
    })
    .await;
    // A third client is accepted by the kernel but served only once a slot frees (here:
    // when the silent ones are closed for sending nothing).
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    third
        .write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        metric(&gw.metrics().await, "scopegate_open_connections", &[]),
        2.0,
        "a connection beyond max_connections was served"
    );
    let answer = read_until_closed(&mut third).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    for mut stream in silent {
        assert!(read_until_closed(&mut stream).await.is_empty());
    }
    eventually("no connection open", || async {
        metric(&gw.metrics().await, "scopegate_open_connections", &[]) == 0.0
    })
    .await;
}
