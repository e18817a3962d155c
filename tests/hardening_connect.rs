//! CONNECT and transfer codings, refused at the start of the request's journey:
//!
//! - `CONNECT` (authority form or origin form) gets 405 with an `Allow` header: Scopegate
//!   opens no tunnels. The client used to get no answer at all.
//! - `Transfer-Encoding` other than a single `chunked` (`gzip, chunked`, or two fields)
//!   gets 501 instead of going upstream with the other coding silently dropped.
//!
//! (An unsolicited `101` from an upstream is in `hardening_upstream_framing.rs`.)

mod common;

use common::*;

/// One open route, `any` on `/api/*`.
fn routes() -> String {
    open_route("any", "/api")
}

fn assert_raw_error(reply: &RawReply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.raw);
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{}",
        reply.raw
    );
    let body: serde_json::Value = serde_json::from_str(&reply.body)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", reply.raw));
    assert_eq!(body["error"], code, "{}", reply.raw);
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
}

#[tokio::test]
async fn connect_is_405_in_authority_and_origin_form() {
    let env = Env::start(&routes()).await;
    for request in [
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n",
        "CONNECT /api/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
    ] {
        let reply = raw(env.gw.addr, request).await;
        assert_raw_error(&reply, 405, "method_not_allowed");
        assert_eq!(reply.header("allow"), Some(""), "{}", reply.raw);
    }
    env.assert_unforwarded("CONNECT", "405", 3.0).await;
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_501() {
    let env = Env::start(&routes()).await;
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for codings in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: deflate,chunked\r\n",
    ] {
        let request = format!(
            "POST /api/x HTTP/1.1\r\nHost: gateway.test\r\n{codings}Connection: close\r\n\r\n{body}"
        );
        let reply = raw(env.gw.addr, &request).await;
        assert_raw_error(&reply, 501, "not_implemented");
    }
    assert_eq!(env.upstream.count(), 0, "{:#?}", env.upstream.seen());

    // Plain chunked (any case) still streams through.
    for coding in ["chunked", "Chunked"] {
        let request = format!(
            "POST /api/x HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: {coding}\r\nConnection: close\r\n\r\n{body}"
        );
        let reply = raw(env.gw.addr, &request).await;
        assert_eq!(reply.status, 200, "{}", reply.raw);
        assert_eq!(&env.upstream.last().body[..], b"hello");
    }
}
