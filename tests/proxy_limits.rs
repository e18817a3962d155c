//! Per-route limits and forwarding choices: the caller's token (`forward.token`), the
//! request body limit (`max_body`, 413 while streaming), per-route timeouts, and
//! `Location` / `Content-Location` rewritten back under `strip_prefix`.

mod common;

use common::*;
use serde_json::json;

const ROUTES: &str = r#"
  - { name: open, match: { path: /open/* }, upstream: "@upstream@", auth: none }
  - { name: api, match: { path: /api/* }, upstream: "@upstream@" }
"#;

/// The standard config with `forward.token: keep`.
fn keeping_tokens() -> String {
    let yaml = standard_yaml(ROUTES).replace("forward:\n", "forward:\n  token: keep\n");
    assert!(yaml.contains("token: keep"), "template edit failed");
    yaml
}

#[tokio::test]
async fn the_callers_bearer_token_is_stripped_by_default_and_kept_on_request() {
    let env = Env::start(ROUTES).await;
    let token = env.token(json!({}));
    let reply = env.get_bearer("/api/x", &token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = env.upstream.last();
    assert_eq!(seen.all("authorization"), Vec::<&str>::new(), "{seen:?}");
    assert_eq!(seen.one("x-auth-subject"), Some("user-1"));

    // On a route without auth too: a bearer token is the gateway's business.
    let reply = env.get_bearer("/open/x", &token).await;
    assert_eq!(reply.status, 200);
    assert!(env.upstream.last().all("authorization").is_empty());
    // Another scheme (an upstream's own Basic credentials) passes.
    let basic = "Basic dXNlcjpwYXNz";
    let reply = env.get("/open/x", &[("authorization", basic)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(env.upstream.last().all("authorization"), [basic]);

    let env = Env::start_yaml(&keeping_tokens()).await;
    let token = env.token(json!({}));
    let reply = env.get_bearer("/api/x", &token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let bearer = format!("Bearer {token}");
    assert_eq!(env.upstream.last().all("authorization"), [bearer.as_str()]);
}

const LIMITED: &str = r#"
  - name: small
    match: { path: /small/* }
    upstream: "@upstream@"
    auth: none
    max_body: 1KiB
  - name: quick
    match: { path: /quick/* }
    upstream: "@upstream@"
    auth: none
    timeouts: { upstream_response: 100ms }
"#;

/// The standard config with the server's upstream_response timeout at an hour: a route
/// that answers 504 within the test's deadline took its own timeout.
fn limited() -> String {
    let yaml = standard_yaml(LIMITED).replace("upstream_response: 2s", "upstream_response: 1h");
    assert!(
        yaml.contains("upstream_response: 1h"),
        "template edit failed"
    );
    yaml
}

#[tokio::test]
async fn a_declared_body_over_max_body_is_413_before_anything_is_sent() {
    let env = Env::start_yaml(&limited()).await;
    let over = vec![b'x'; 1025];
    let reply = call(env.gw.addr, http::Method::POST, "/small/x", &[], over).await;
    assert_json_error(&reply, 413, "payload_too_large");
    assert_eq!(env.upstream.count(), 0, "{:?}", env.upstream.seen());
    let metrics = env.gw.metrics().await;
    assert_eq!(requests_total(&metrics, "small", "POST", "413"), 1.0);

    // Exactly the limit passes, whole.
    let exact = vec![b'y'; 1024];
    let reply = call(
        env.gw.addr,
        http::Method::POST,
        "/small/x",
        &[("x-test-mode", "echo-body")],
        exact.clone(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.body.as_ref(), exact.as_slice());
}

#[tokio::test]
async fn a_streamed_body_is_cut_off_at_max_body_without_buffering() {
    let env = Env::start_yaml(&limited()).await;
    let (tx, body) = chan_body();
    let request = http::Request::post("/small/x")
        .header("x-test-mode", "stream-up")
        .body(body)
        .expect("request");
    let addr = env.gw.addr;
    let pending = tokio::spawn(async move { send(addr, request).await });
    // The first chunk reaches the upstream before the rest exists: streamed, not
    // buffered until the end.
    tx.send(bytes::Bytes::from(vec![b'a'; 600]))
        .await
        .expect("send");
    env.upstream.first_chunk_arrived().await;
    tx.send(bytes::Bytes::from(vec![b'b'; 600]))
        .await
        .expect("send");
    let reply = pending.await.expect("the client task");
    assert_json_error(&reply, 413, "payload_too_large");
    drop(tx);
    for seen in env.upstream.seen() {
        assert!(
            seen.body.len() <= 1024,
            "the upstream got {} bytes",
            seen.body.len()
        );
    }

    // Under the limit, chunked: forwarded whole.
    let (tx, body) = chan_body();
    let request = http::Request::post("/small/x")
        .header("x-test-mode", "echo-body")
        .body(body)
        .expect("request");
    let pending = tokio::spawn(async move { send(addr, request).await });
    tx.send(bytes::Bytes::from(vec![b'c'; 700]))
        .await
        .expect("send");
    tx.send(bytes::Bytes::from(vec![b'd'; 300]))
        .await
        .expect("send");
    drop(tx);
    let reply = pending.await.expect("the client task");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.body.len(), 1000);
}

#[tokio::test]
async fn a_route_timeout_overrides_the_servers() {
    let env = Env::start_yaml(&limited()).await;
    // The upstream never answers; the server would wait an hour, the route 100ms.
    let reply = env.get("/quick/x", &[("x-test-mode", "hang")]).await;
    assert_json_error(&reply, 504, "gateway_timeout");
    let reply = env.get("/quick/x", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[test]
fn limits_are_checked_at_load() {
    let route = |extra: &str| {
        format!(
            "routes:\n  - name: a\n    match: {{ path: /a }}\n    upstream: http://127.0.0.1:9\n    auth: none\n{extra}"
        )
    };
    for (extra, path, says) in [
        ("    max_body: 10MB\n", "routes[0].max_body", "binary units"),
        ("    max_body: 1024\n", "routes[0].max_body", "no unit"),
        (
            "    timeouts: { upstream_response: 0s }\n",
            "routes[0].timeouts.upstream_response",
            "greater than zero",
        ),
        (
            "    timeouts: { upstream_connect: 1s }\n",
            "routes[0].timeouts.upstream_connect",
            "unknown field",
        ),
    ] {
        let err = scopegate::config::Config::from_yaml(&route(extra)).unwrap_err();
        assert_eq!(err.path, path, "{extra}: {err}");
        assert!(err.message.contains(says), "{extra}: {err}");
    }
}

#[tokio::test]
async fn locations_go_back_under_strip_prefix() {
    let backend = common::backend::Backend::start("orders").await;
    let yaml = standard_yaml(&format!(
        r#"
  - name: orders
    match: {{ path: /api/orders/* }}
    upstream: "{}/v1"
    strip_prefix: /api
    auth: none
"#,
        backend.url
    ));
    let env = Env::start_yaml(&yaml).await;
    let absolute = format!("{}/v1/orders/8", backend.url);
    for (sent, expected) in [
        ("/v1/orders/7", "/api/orders/7"),
        (absolute.as_str(), "/api/orders/8"),
        ("https://elsewhere.example/x", "https://elsewhere.example/x"),
        ("/other", "/other"),
    ] {
        let reply = env.get("/api/orders/1", &[("x-test-location", sent)]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("location"), Some(expected), "{sent}");
        assert_eq!(reply.header("content-location"), Some(expected), "{sent}");
    }
    assert_eq!(backend.hits(), 4);
}
