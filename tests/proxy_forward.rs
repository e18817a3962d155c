//! What goes upstream and what comes back: identity headers (spoofed copies stripped in
//! every spelling, verified ones added), hop-by-hop headers, x-forwarded-*, x-request-id,
//! mapped claims, streaming bodies, h2c clients, and dead or slow upstreams.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::json;

const ROUTES: &str = r#"
  - { name: open, match: { path: /open/* }, upstream: "@upstream@", auth: none }
  - { name: api, match: { path: /api/* }, upstream: "@upstream@" }
  - { name: maybe, match: { path: /maybe/* }, upstream: "@upstream@", auth: optional }
"#;

/// Every identity header of the standard config, as configured.
const IDENTITY: [&str; 7] = [
    "x-auth-subject",
    "x-auth-scopes",
    "x-auth-client-id",
    "x-auth-issuer",
    "x-auth-roles",
    "x-auth-tenant",
    "x-auth-level",
];

/// Spoofed identity headers in every spelling a client might try, as raw header lines.
const SPOOFS: &str = "X-Auth-Subject: evil\r\n\
    X_Auth_Subject: evil-underscore\r\n\
    x-auth-subject: evil-duplicate\r\n\
    X-AUTH-SCOPES: admin\r\n\
    x_auth_scopes: admin\r\n\
    X-Auth-Client-Id: evil-client\r\n\
    X_AUTH_CLIENT_ID: evil-client\r\n\
    x-auth-issuer: https://evil.example.com/\r\n\
    X-Auth-Roles: root\r\n\
    x_auth_roles: root\r\n\
    X_Auth_Tenant: other-tenant\r\n\
    x-AUTH-level: 99\r\n";

fn raw_get(path: &str, extra_headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\n{extra_headers}Connection: close\r\n\r\n")
}

/// A raw GET of `/api/x` with `token` and every [`SPOOFS`] header; it must pass. What
/// the upstream saw.
async fn spoofed_get(env: &Env, token: &str) -> Seen {
    let request = raw_get(
        "/api/x",
        &format!("Authorization: Bearer {token}\r\n{SPOOFS}"),
    );
    let reply = raw(env.gw.addr, &request).await;
    assert_eq!(reply.status, 200, "{}", reply.raw);
    env.upstream.last()
}

#[tokio::test]
async fn spoofed_identity_headers_are_stripped_on_every_route() {
    let env = Env::start(ROUTES).await;
    // auth: none and auth: optional without a token: nothing identity-shaped survives.
    for path in ["/open/x", "/maybe/x"] {
        let reply = raw(env.gw.addr, &raw_get(path, SPOOFS)).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.raw);
        let seen = env.upstream.last();
        for name in IDENTITY {
            assert!(
                !seen.has_normalized(name),
                "{path}: a client-sent {name} reached the upstream: {:?}",
                seen.headers
            );
        }
    }
    // auth: required: exactly the verified values, once each.
    let token = env.token(json!({
        "sub": "alice",
        "scope": "read:contacts write:contacts",
        "azp": "client-a",
        "https://example.com/roles": ["reader", "writer"],
        "tenant": "acme",
        "level": 3,
    }));
    let seen = spoofed_get(&env, &token).await;
    let expected = [
        ("x-auth-subject", "alice"),
        ("x-auth-scopes", "read:contacts write:contacts"),
        ("x-auth-client-id", "client-a"),
        ("x-auth-issuer", env.issuer.url.as_str()),
        ("x-auth-roles", r#"["reader","writer"]"#),
        ("x-auth-tenant", "acme"),
        ("x-auth-level", "3"),
    ];
    for (name, value) in expected {
        assert_eq!(seen.all(name), [value], "{name}: {:?}", seen.headers);
    }
    for (name, _) in &seen.headers {
        assert!(
            !name.contains('_'),
            "an underscore spelling survived: {name}"
        );
    }

    // A verified token without the mapped claims still loses the client's copies.
    let token = env.token(json!({}));
    let seen = spoofed_get(&env, &token).await;
    for name in ["x-auth-roles", "x-auth-tenant", "x-auth-level"] {
        assert!(
            !seen.has_normalized(name),
            "spoofed {name} survived: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.all("x-auth-subject"), ["user-1"]);
}

#[tokio::test]
async fn connection_cannot_remove_the_verified_identity() {
    let env = Env::start(ROUTES).await;
    let token = env.token(json!({ "https://example.com/roles": "reader" }));
    let request = format!(
        "GET /api/x HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {token}\r\n\
         X-Custom: drop-me\r\nX-Kept: yes\r\nX-Auth-Subject: evil\r\n\
         Connection: close, x-auth-subject, X_Auth_Scopes, x-auth-roles, X-Custom\r\n\r\n"
    );
    let reply = raw(env.gw.addr, &request).await;
    assert_eq!(reply.status, 200, "{}", reply.raw);
    let seen = env.upstream.only();
    assert_eq!(seen.all("x-auth-subject"), ["user-1"], "{:?}", seen.headers);
    assert_eq!(
        seen.all("x-auth-scopes"),
        ["read:contacts"],
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.all("x-auth-roles"), ["reader"], "{:?}", seen.headers);
    assert!(
        seen.all("x-custom").is_empty(),
        "a header named in Connection was forwarded"
    );
    assert!(
        seen.all("connection").is_empty(),
        "Connection was forwarded"
    );
    assert_eq!(seen.all("x-kept"), ["yes"]);
}

#[tokio::test]
async fn connection_tokens_count_even_beside_non_ascii_bytes() {
    let env = Env::start(ROUTES).await;
    // One obs-text token must not make the gateway ignore the whole Connection header.
    // (`close` on a line of its own: hyper, too, ignores a Connection value it cannot
    // read as ASCII.)
    let request = "GET /open/x HTTP/1.1\r\nHost: gateway.test\r\nX-Secret: hop-only\r\n\
         Connection: close\r\nConnection: X-Secret, caf\u{e9}\r\n\r\n";
    let reply = raw(env.gw.addr, request).await;
    assert_eq!(reply.status, 200, "{}", reply.raw);
    let seen = env.upstream.only();
    assert!(
        seen.all("x-secret").is_empty(),
        "a header named in Connection was forwarded: {:?}",
        seen.headers
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let env = Env::start(ROUTES).await;
    let reply = call(
        env.gw.addr,
        Method::GET,
        "/open/x",
        &[
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("x-test-mode", "hop"),
            ("x-end-to-end", "kept"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = env.upstream.only();
    for name in [
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "connection",
    ] {
        assert!(
            seen.all(name).is_empty(),
            "hop-by-hop {name} was forwarded: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.all("x-end-to-end"), ["kept"]);
    // The upstream's own hop-by-hop headers (and the one it named in Connection) stop at
    // the gateway.
    assert_eq!(reply.header("x-upstream"), Some("yes"));
    for name in [
        "x-hop-secret",
        "keep-alive",
        "proxy-authenticate",
        "connection",
    ] {
        assert!(
            reply.header(name).is_none(),
            "upstream's {name} reached the client: {:?}",
            reply.headers
        );
    }
}

#[tokio::test]
async fn x_forwarded_headers_are_appended_and_set() {
    let env = Env::start(ROUTES).await;
    let request = "GET /open/x HTTP/1.1\r\nHost: api.example.test\r\n\
        X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.1\r\n\
        X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n";
    let reply = raw(env.gw.addr, request).await;
    assert_eq!(reply.status, 200, "{}", reply.raw);
    let seen = env.upstream.only();
    assert_eq!(
        seen.all("x-forwarded-for"),
        ["203.0.113.7, 198.51.100.1, 127.0.0.1"]
    );
    assert_eq!(
        seen.all("x-forwarded-proto"),
        ["http"],
        "the client's proto must be replaced"
    );
    assert_eq!(
        seen.all("x-forwarded-host"),
        ["api.example.test"],
        "the client's host must be replaced"
    );
    assert_eq!(
        seen.all("host"),
        [env.upstream.addr.to_string().as_str()],
        "Host sent upstream should be the upstream's"
    );
    // Without a client value the gateway starts the list.
    env.upstream.clear();
    env.get("/open/x", &[]).await;
    assert_eq!(env.upstream.only().all("x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn x_request_id_is_kept_when_sane_and_replaced_otherwise() {
    let env = Env::start(ROUTES).await;
    let sane = "req-123_ABC.xyz";
    let reply = env.get("/open/x", &[("x-request-id", sane)]).await;
    assert_eq!(
        reply.header("x-request-id"),
        Some(sane),
        "a sane id must be returned"
    );
    assert_eq!(
        env.upstream.last().all("x-request-id"),
        [sane],
        "a sane id must be forwarded"
    );

    let long = "a".repeat(129);
    let max = "b".repeat(128);
    for (id, kept) in [
        (Some("has/slash"), false),
        (Some("quote\"d"), false),
        (Some("semi;colon"), false),
        (Some(long.as_str()), false),
        (Some(max.as_str()), true),
        (None, false),
    ] {
        let headers: Vec<(&str, &str)> = id.iter().map(|v| ("x-request-id", *v)).collect();
        let reply = env.get("/open/x", &headers).await;
        let returned = reply
            .header("x-request-id")
            .expect("x-request-id returned")
            .to_string();
        let forwarded = env.upstream.last().all("x-request-id").join("|");
        assert_eq!(
            returned, forwarded,
            "id {id:?}: the client and the upstream must see the same id"
        );
        if kept {
            assert_eq!(Some(returned.as_str()), id, "a 128-character id is sane");
        } else {
            assert_ne!(
                Some(returned.as_str()),
                id,
                "id {id:?} should have been replaced"
            );
            assert!(
                !returned.is_empty()
                    && returned.len() <= 128
                    && returned
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "the replacement id {returned:?} is not itself sane"
            );
        }
    }
    // The gateway's own answers carry the id too.
    let reply = env.get("/api/x", &[("x-request-id", "own-answer-1")]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("x-request-id"), Some("own-answer-1"));
}

#[tokio::test]
async fn mapped_claims_and_client_id_are_forwarded() {
    let env = Env::start(ROUTES).await;
    let cases = [
        (
            json!({ "https://example.com/roles": { "admin": true }, "tenant": "acme", "level": 2.5 }),
            vec![
                ("x-auth-roles", r#"{"admin":true}"#),
                ("x-auth-tenant", "acme"),
                ("x-auth-level", "2.5"),
            ],
        ),
        (
            json!({ "tenant": ["a", "b"], "level": "high" }),
            vec![("x-auth-tenant", r#"["a","b"]"#), ("x-auth-level", "high")],
        ),
        // client_id is used when there is no azp.
        (
            json!({ "azp": null, "client_id": "machine-7" }),
            vec![("x-auth-client-id", "machine-7")],
        ),
        (
            json!({ "azp": "client-a", "client_id": "other" }),
            vec![("x-auth-client-id", "client-a")],
        ),
    ];
    for (extra, expected) in cases {
        let reply = env.get_bearer("/api/x", &env.token(extra.clone())).await;
        assert_eq!(reply.status, 200, "{extra}: {}", reply.text());
        let seen = env.upstream.last();
        for (name, value) in expected {
            assert_eq!(seen.all(name), [value], "{extra}: {name}");
        }
    }
    // No azp and no client_id: no client header at all; absent claims: no header.
    let reply = env
        .get_bearer("/api/x", &env.token(json!({ "azp": null })))
        .await;
    assert_eq!(reply.status, 200);
    let seen = env.upstream.last();
    for name in [
        "x-auth-client-id",
        "x-auth-roles",
        "x-auth-tenant",
        "x-auth-level",
    ] {
        assert!(
            seen.all(name).is_empty(),
            "{name} forwarded without a claim: {:?}",
            seen.headers
        );
    }
}

/// 5 MB of bytes that are not all the same (a corrupted or reordered chunk would show).
fn pattern(len: usize) -> Bytes {
    let mut state: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_intact() {
    let env = Env::start(ROUTES).await;
    let body = pattern(5 * 1024 * 1024);
    let token = env.token(json!({}));
    let reply = call(
        env.gw.addr,
        Method::POST,
        "/api/upload",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-test-mode", "echo-body"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.status);
    assert_eq!(
        env.upstream.last().body.len(),
        body.len(),
        "the upstream got a different body length"
    );
    assert!(
        env.upstream.last().body == body,
        "the upstream got different bytes"
    );
    assert_eq!(
        reply.body.len(),
        body.len(),
        "the client got a different body length back"
    );
    assert!(reply.body == body, "the client got different bytes back");
}

#[tokio::test]
async fn the_response_streams_before_the_upstream_finishes() {
    let env = Env::start(ROUTES).await;
    let request = Request::get("/open/stream")
        .header("x-test-mode", "stream-down")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = send_streaming(env.gw.addr, request).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // The upstream holds its second chunk until released: if the gateway buffered the
    // response, the first chunk would never arrive on its own.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk did not arrive while the upstream was still sending: the response is buffered")
        .expect("a frame")
        .expect("frame ok")
        .into_data()
        .expect("data");
    assert_eq!(first, "first-chunk;");
    env.upstream.release();
    let rest = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("rest of the body")
        .expect("body ok")
        .to_bytes();
    assert_eq!(rest, "second-chunk");
}

#[tokio::test]
async fn the_request_body_streams_before_the_client_finishes() {
    let env = Env::start(ROUTES).await;
    let (tx, body) = chan_body();
    let request = Request::post("/open/upload")
        .header("x-test-mode", "stream-up")
        .body(body)
        .expect("request");
    let addr = env.gw.addr;
    let response = tokio::spawn(async move { collect(send_streaming(addr, request).await).await });
    tx.send(Bytes::from_static(b"part-1;"))
        .await
        .expect("send part 1");
    // The client holds its second part until the upstream has the first.
    tokio::time::timeout(Duration::from_secs(5), env.upstream.first_chunk_arrived())
        .await
        .expect("the upstream did not get the first part while the client was still sending: the request is buffered");
    tx.send(Bytes::from_static(b"part-2"))
        .await
        .expect("send part 2");
    drop(tx);
    let reply = response.await.expect("client task");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(env.upstream.last().body, "part-1;part-2");
}

#[tokio::test]
async fn h2c_prior_knowledge_clients_are_served() {
    let env = Env::start(ROUTES).await;
    let token = env.token(json!({}));
    let request = Request::get("http://gateway.test/api/h2?x=1")
        .header("authorization", format!("Bearer {token}"))
        .header("x-auth-subject", "spoofed")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let reply = send_h2(env.gw.addr, request).await;
    assert_eq!(reply.status, 200, "h2c GET: {}", reply.text());
    assert_eq!(reply.header("x-upstream"), Some("yes"));
    assert!(reply.header("x-request-id").is_some());
    let seen = env.upstream.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/api/h2?x=1");
    assert_eq!(seen.all("x-auth-subject"), ["user-1"]);
    assert_eq!(seen.all("x-forwarded-host"), ["gateway.test"]);

    let body = pattern(256 * 1024);
    let request = Request::post("http://gateway.test/api/h2-upload")
        .header("authorization", format!("Bearer {token}"))
        .header("x-test-mode", "echo-body")
        .body(Full::new(body.clone()))
        .expect("request");
    let reply = send_h2(env.gw.addr, request).await;
    assert_eq!(reply.status, 200, "h2c POST");
    assert!(
        reply.body == body,
        "h2c body came back different ({} bytes)",
        reply.body.len()
    );

    // Refusals over h2 are the same JSON answers.
    let request = Request::get("http://gateway.test/api/h2")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let reply = send_h2(env.gw.addr, request).await;
    assert_json_error(&reply, 401, "unauthorized");
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let env = Env::start(ROUTES).await;
    for i in 0..10 {
        // A fresh client connection each time: only the gateway can reuse anything.
        let reply = env.get(&format!("/open/{i}"), &[]).await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(env.upstream.count(), 10);
    let connections = env.upstream.connections();
    assert!(
        connections <= 2,
        "10 sequential requests opened {connections} upstream connections; the pool is not reused"
    );
}

#[tokio::test]
async fn oversized_headers_are_431_and_duplicate_authorization_is_400() {
    let env = Env::start(ROUTES).await;
    // Standard config: max_header_bytes 16384.
    let big = "v".repeat(6000);
    let reply = env
        .get(
            "/open/x",
            &[("x-big-1", &big), ("x-big-2", &big), ("x-big-3", &big)],
        )
        .await;
    assert_json_error(&reply, 431, "invalid_request");
    // Far beyond the limit hyper refuses on its own (still 431) before buffering more.
    let huge = "v".repeat(8000);
    let many: Vec<(String, &str)> = (0..6)
        .map(|i| (format!("x-huge-{i}"), huge.as_str()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    assert_eq!(env.get("/open/x", &many).await.status, 431);
    let token = env.token(json!({}));
    let auth = format!("Bearer {token}");
    let reply = env
        .get(
            "/api/x",
            &[
                ("authorization", &auth),
                ("authorization", "Bearer other.token.value"),
            ],
        )
        .await;
    assert_json_error(&reply, 400, "invalid_request");
    assert_eq!(env.upstream.count(), 0, "a refused request was forwarded");
}

#[tokio::test]
async fn an_upstream_that_refuses_connections_is_502() {
    let dead = dead_addr().await;
    let routes = format!(
        "  - {{ name: dead, match: {{ path: /dead/* }}, upstream: \"http://{dead}\", auth: none }}\n"
    );
    let env = Env::start(&routes).await;
    let reply = env.get("/dead/x", &[]).await;
    assert_json_error(&reply, 502, "bad_gateway");
    let description = reply.json()["error_description"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        !description.contains(&dead.port().to_string()),
        "internal upstream detail leaked to the client: {description}"
    );
    let metrics = env.gw.metrics().await;
    assert_eq!(requests_total(&metrics, "dead", "GET", "502"), 1.0);
}

#[tokio::test]
async fn a_slow_upstream_is_504() {
    let template =
        standard_yaml(ROUTES).replace("upstream_response: 2s", "upstream_response: 250ms");
    assert!(template.contains("250ms"), "template edit failed");
    let env = Env::start_yaml(&template).await;
    let reply = env.get("/open/slow", &[("x-test-mode", "hang")]).await;
    assert_json_error(&reply, 504, "gateway_timeout");
    assert_eq!(
        env.upstream.count(),
        1,
        "the upstream should have received the request"
    );
    let metrics = env.gw.metrics().await;
    assert_eq!(requests_total(&metrics, "open", "GET", "504"), 1.0);
    // The gateway is still fine afterwards.
    let reply = env.get("/open/fast", &[]).await;
    assert_eq!(reply.status, 200);
}

/// An upstream that answers one request per connection, then closes the socket after a
/// moment without saying `Connection: close`: every pooled connection goes stale.
async fn closing_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                drop(stream);
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn upstream_closing_idle_connections_never_fails_a_request() {
    let (url, accepted) = closing_upstream().await;
    let env = Env::start(&format!(
        "  - {{ name: flaky, match: {{ path: /flaky/* }}, upstream: \"{url}\", auth: none }}\n"
    ))
    .await;
    for round in 0..30 {
        let reply = env.get("/flaky/x", &[]).await;
        assert_eq!(
            reply.status,
            200,
            "request {round} failed: {}",
            reply.text()
        );
        assert_eq!(reply.text(), "ok");
        // Give the upstream time to close the connection the pool just took back.
        tokio::time::sleep(std::time::Duration::from_millis(round % 3 * 4)).await;
    }
    assert!(
        accepted.load(std::sync::atomic::Ordering::Relaxed) >= 30,
        "every request needed a fresh connection"
    );
}

/// An address whose accept queue is full: the kernel drops further SYNs, so a connect
/// to it neither succeeds nor fails — it hangs, as to a black-holed host. The returned
/// listener and connections keep the queue full.
async fn black_hole() -> (
    std::net::SocketAddr,
    tokio::net::TcpListener,
    Vec<tokio::net::TcpStream>,
) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut held = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(err)) => panic!("connecting to the filling listener failed: {err}"),
            Err(_) => return (addr, listener, held), // the queue is full: connects hang now
        }
    }
    panic!("the accept queue never filled up");
}

#[tokio::test]
async fn an_upstream_that_never_accepts_is_504_after_upstream_connect() {
    let (addr, _listener, _held) = black_hole().await;
    let routes = format!(
        "  - {{ name: hole, match: {{ path: /hole/* }}, upstream: \"http://{addr}\", auth: none }}\n"
    );
    // The connect timeout is short, the response timeout long: only upstream_connect can
    // end this request before the guard below.
    let template = standard_yaml(&routes).replace(
        "upstream_connect: 1s, upstream_response: 2s",
        "upstream_connect: 300ms, upstream_response: 60s",
    );
    assert!(template.contains("300ms"), "template edit failed");
    let env = Env::start_yaml(&template).await;
    let reply = tokio::time::timeout(Duration::from_secs(20), env.get("/hole/x", &[]))
        .await
        .expect("the request hung: upstream_connect was not applied");
    assert_json_error(&reply, 504, "gateway_timeout");
    let metrics = env.gw.metrics().await;
    assert_eq!(requests_total(&metrics, "hole", "GET", "504"), 1.0);
}

/// W3C Trace Context: the caller's trace continues upstream with this hop's span id;
/// without one (or with a malformed one) the gateway starts a trace, and a `tracestate`
/// without a usable `traceparent` is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_continues_upstream_with_the_gateways_span() {
    let env = Env::start(ROUTES).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = env
        .get(
            "/open/a",
            &[("traceparent", parent), ("tracestate", "vendor=opaque")],
        )
        .await;
    assert_eq!(reply.status, 200);
    let seen = env.upstream.last();
    let sent = seen.one("traceparent").expect("a traceparent upstream");
    assert_eq!(sent.len(), 55, "{sent}");
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(sent.ends_with("-01"), "{sent}");
    assert_ne!(
        &sent[36..52],
        "00f067aa0ba902b7",
        "the gateway's own span id"
    );
    assert_eq!(seen.one("tracestate"), Some("vendor=opaque"));

    for headers in [
        vec![],
        vec![
            ("traceparent", "00-not-a-trace-01"),
            ("tracestate", "vendor=opaque"),
        ],
    ] {
        assert_eq!(env.get("/open/b", &headers).await.status, 200);
        let seen = env.upstream.last();
        let started = seen.one("traceparent").expect("a new trace");
        assert_eq!(started.len(), 55, "{started}");
        assert!(!started.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(seen.one("tracestate"), None);
    }
}
