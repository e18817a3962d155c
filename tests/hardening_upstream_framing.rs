//! Upstream responses framed in ways a proxy must not relay as they are, from a raw-TCP
//! upstream (no HTTP library would send them):
//!
//! - `Content-Length` and `Transfer-Encoding: chunked` together (RFC 9112 §6.3): hyper's
//!   client decodes the chunked body and ignores the length but leaves the header, which
//!   the gateway relayed, cutting the body at the stale length so that it looked
//!   complete. Now the chunked body is relayed whole, without the `Content-Length`.
//! - a transfer coding other than a final `chunked`: 502.
//! - a `101 Switching Protocols` to a request that did not ask to upgrade (the gateway
//!   never forwards `Upgrade`): 502, where the client used to be left hanging.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that reads a request head and answers `response` verbatim, then closes.
async fn raw_upstream(response: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

async fn env_for(response: &'static str) -> Env {
    let url = raw_upstream(response).await;
    let routes = format!(
        r#"
  - name: odd
    match: {{ path: /odd/* }}
    upstream: "{url}"
    auth: none
"#
    );
    Env::start(&routes).await
}

const CL_AND_CHUNKED: &str = "HTTP/1.1 200 OK\r\n\
    Content-Type: text/plain\r\n\
    Content-Length: 5\r\n\
    Transfer-Encoding: chunked\r\n\
    \r\n\
    6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n";

const CHUNKED_THEN_CL: &str = "HTTP/1.1 200 OK\r\n\
    Transfer-Encoding: chunked\r\n\
    Content-Length: 3\r\n\
    \r\n\
    6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n";

#[tokio::test]
async fn content_length_beside_chunked_is_dropped_and_the_whole_body_relayed() {
    for response in [CL_AND_CHUNKED, CHUNKED_THEN_CL] {
        let env = env_for(response).await;
        let reply = env.get("/odd/x", &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), "hello world");
        assert!(
            reply.header("content-length").is_none_or(|len| len == "11"),
            "{:?}",
            reply.headers
        );
        // On the wire: no stale length, and the body is framed as a whole.
        let wire = raw(
            env.gw.addr,
            "GET /odd/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(wire.status, 200, "{}", wire.raw);
        assert!(
            wire.header("content-length").is_none_or(|len| len == "11"),
            "{}",
            wire.raw
        );
        assert!(
            wire.body.contains("hello ") && wire.body.contains("world"),
            "{}",
            wire.raw
        );
    }
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_a_502() {
    let env =
        env_for("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcdefgh")
            .await;
    let reply = env.get("/odd/x", &[]).await;
    assert_json_error(&reply, 502, "bad_gateway");
}

#[tokio::test]
async fn an_unsolicited_101_is_a_502() {
    let env = env_for(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    let reply = env.get("/odd/x", &[]).await;
    assert_json_error(&reply, 502, "bad_gateway");
    // Over h2 as well, and the gateway still answers afterwards.
    let request = http::Request::get("/odd/x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let reply = send_h2(env.gw.addr, request).await;
    assert_json_error(&reply, 502, "bad_gateway");
    let metrics = env.gw.metrics().await;
    let counted = requests_total(&metrics, "odd", "GET", "502");
    assert_eq!(counted, 2.0, "{metrics}");
}
