//! HTTP/2 clients send each cookie in a `cookie` field of its own (RFC 9113 §8.2.3); the
//! upstream hop is HTTP/1.1, so the gateway joins them into one `Cookie` with `; `.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Empty;

const ROUTES: &str = r#"
  - name: web
    match: { path: /web/* }
    upstream: "@upstream@"
    auth: none
  - name: echo
    match: { path: /echo/* }
    upstream: builtin:echo
    auth: none
"#;

fn with_cookies(path: &str, cookies: &[&str]) -> Request<Empty<Bytes>> {
    let mut builder = Request::get(path).header("host", "gateway.test");
    for cookie in cookies {
        builder = builder.header("cookie", *cookie);
    }
    builder.body(Empty::new()).expect("request")
}

#[tokio::test]
async fn split_h2_cookies_reach_the_upstream_as_one_field() {
    let env = Env::start(ROUTES).await;
    let reply = send_h2(env.gw.addr, with_cookies("/web/x", &["a=1", "b=2", "c=3"])).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(env.upstream.only().all("cookie"), ["a=1; b=2; c=3"]);

    // builtin:echo shows the same single field.
    let reply = send_h2(env.gw.addr, with_cookies("/echo/x", &["a=1", "b=2"])).await;
    assert_eq!(reply.json()["headers"]["cookie"], "a=1; b=2");
}

#[tokio::test]
async fn several_cookie_lines_over_http1_are_joined_too_and_one_is_untouched() {
    let env = Env::start(ROUTES).await;
    let reply = send(env.gw.addr, with_cookies("/web/x", &["a=1; b=2", "c=3"])).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(env.upstream.last().all("cookie"), ["a=1; b=2; c=3"]);

    let reply = send_h2(env.gw.addr, with_cookies("/web/x", &["only=1"])).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(env.upstream.last().all("cookie"), ["only=1"]);

    let reply = send_h2(env.gw.addr, with_cookies("/web/x", &[])).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(env.upstream.last().all("cookie").is_empty());
}
