//! `Host` (RFC 9112 §3.2): an HTTP/1.1 request without `Host`, with two, or with one that
//! is not a valid `host[:port]` gets 400 `invalid_request`; with an absolute-form target
//! (or HTTP/2's `:authority`) the target's authority wins over `Host` (§3.2.2) and is
//! what `x-forwarded-host` reports upstream.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Empty;

/// One open route, `open` on `/open/*`.
fn routes() -> String {
    open_route("open", "/open")
}

fn request(target: &str, version: &str, headers: &str) -> String {
    format!("GET {target} {version}\r\n{headers}Connection: close\r\n\r\n")
}

fn assert_400(reply: &RawReply) {
    assert_eq!(reply.status, 400, "{}", reply.raw);
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{}",
        reply.raw
    );
    assert!(reply.body.contains("\"invalid_request\""), "{}", reply.raw);
}

#[tokio::test]
async fn missing_duplicate_and_malformed_hosts_are_400() {
    let env = Env::start(&routes()).await;
    let refused = [
        request("/open/x", "HTTP/1.1", ""),
        request(
            "/open/x",
            "HTTP/1.1",
            "Host: a.example\r\nHost: a.example\r\n",
        ),
        request(
            "/open/x",
            "HTTP/1.1",
            "Host: a.example\r\nHost: b.example\r\n",
        ),
        request(
            "/open/x",
            "HTTP/1.0",
            "Host: a.example\r\nHost: b.example\r\n",
        ),
        request("/open/x", "HTTP/1.1", "Host: evil.example/x?y=\r\n"),
        request("/open/x", "HTTP/1.1", "Host: user@a.example\r\n"),
        request("/open/x", "HTTP/1.1", "Host: a.example:80:80\r\n"),
        request("/open/x", "HTTP/1.1", "Host: a.example:123456\r\n"),
        request("/open/x", "HTTP/1.1", "Host: a.example:http\r\n"),
        request("/open/x", "HTTP/1.1", "Host: a example\r\n"),
        request("/open/x", "HTTP/1.1", "Host: a.example#frag\r\n"),
        request("/open/x", "HTTP/1.1", "Host: [::1\r\n"),
        request("/open/x", "HTTP/1.1", "Host: [zz::1]:80\r\n"),
        request("/open/x", "HTTP/1.1", "Host: a%zz.example\r\n"),
        request(
            "http://user@a.example/open/x",
            "HTTP/1.1",
            "Host: a.example\r\n",
        ),
    ];
    for text in &refused {
        let reply = raw(env.gw.addr, text).await;
        assert_400(&reply);
    }
    env.assert_unforwarded("GET", "400", refused.len() as f64)
        .await;
}

#[tokio::test]
async fn valid_hosts_pass_and_http10_may_omit_host() {
    let env = Env::start(&routes()).await;
    for (headers, forwarded) in [
        ("Host: api.example.test\r\n", Some("api.example.test")),
        (
            "Host: api.example.test:8443\r\n",
            Some("api.example.test:8443"),
        ),
        ("Host: 127.0.0.1:80\r\n", Some("127.0.0.1:80")),
        ("Host: [::1]:8080\r\n", Some("[::1]:8080")),
        (
            "Host: xn--bcher-kva.example\r\n",
            Some("xn--bcher-kva.example"),
        ),
    ] {
        env.upstream.clear();
        let reply = raw(env.gw.addr, &request("/open/x", "HTTP/1.1", headers)).await;
        assert_eq!(reply.status, 200, "{headers:?}: {}", reply.raw);
        assert_eq!(env.upstream.only().one("x-forwarded-host"), forwarded);
    }
    env.upstream.clear();
    let reply = raw(env.gw.addr, &request("/open/x", "HTTP/1.0", "")).await;
    assert_eq!(reply.status, 200, "{}", reply.raw);
    assert_eq!(env.upstream.only().one("x-forwarded-host"), None);
}

#[tokio::test]
async fn an_absolute_form_target_wins_over_host() {
    let env = Env::start(&routes()).await;
    let reply = raw(
        env.gw.addr,
        &request(
            "http://target.example:8080/open/x?q=1",
            "HTTP/1.1",
            "Host: other.example\r\n",
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.raw);
    let seen = env.upstream.only();
    assert_eq!(seen.one("x-forwarded-host"), Some("target.example:8080"));
    assert_eq!(seen.target, "/open/x?q=1");
    assert_eq!(
        seen.one("host"),
        Some(env.upstream.addr.to_string().as_str()),
        "the upstream's own Host is unchanged"
    );

    // HTTP/2: `:authority` wins over a `host` field.
    env.upstream.clear();
    let request = http::Request::get("http://h2.example:1234/open/x")
        .header("host", "other.example")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let reply = send_h2(env.gw.addr, request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        env.upstream.only().one("x-forwarded-host"),
        Some("h2.example:1234")
    );
}
