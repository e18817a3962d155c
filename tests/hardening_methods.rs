//! Method names are case-sensitive (RFC 9110 §9.1): `get`, `Get`, `gEt` are not `GET`.
//! A route limited to GET refuses them, and they must not fall back to a broader route
//! and be forwarded: the gateway answers 400 `invalid_request` (as nginx does).

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Empty;

const ROUTES: &str = r#"
  - name: read-only
    match: { path: /c/*, methods: [GET, HEAD] }
    upstream: "@upstream@"
    auth: none
  - name: anything
    match: { path: /* }
    upstream: "@upstream@"
    auth: none
"#;

fn request(method: &str, path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("a token"))
        .uri(path)
        .header("host", "gateway.test")
        .body(Empty::new())
        .expect("request")
}

#[tokio::test]
async fn lower_case_methods_are_refused_not_forwarded() {
    let env = Env::start(ROUTES).await;
    for method in ["get", "Get", "gEt", "post", "delete", "propfind"] {
        for path in ["/c/1", "/elsewhere"] {
            let reply = send(env.gw.addr, request(method, path)).await;
            assert_json_error(&reply, 400, "invalid_request");
            let reply = send_h2(env.gw.addr, request(method, path)).await;
            assert_json_error(&reply, 400, "invalid_request");
        }
        let reply = raw_request(env.gw.addr, method, "/c/1").await;
        assert_eq!(reply.status, 400, "{method}: {}", reply.raw);
        assert!(reply.body.contains("invalid_request"), "{}", reply.raw);
    }
    env.assert_unforwarded("OTHER", "400", 30.0).await;
}

#[tokio::test]
async fn upper_case_methods_still_route_as_before() {
    let env = Env::start(ROUTES).await;
    let reply = send(env.gw.addr, request("GET", "/c/1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The method-limited route does not take POST: it falls back to the "any" route.
    let reply = send(env.gw.addr, request("POST", "/c/1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // An upper-case extension method is a method like any other.
    let reply = send(env.gw.addr, request("PROPFIND", "/c/1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let methods: Vec<String> = env.upstream.seen().into_iter().map(|s| s.method).collect();
    assert_eq!(methods, ["GET", "POST", "PROPFIND"]);
}
