//! Routing end to end: precedence, 404/405, strip_prefix, the query, path tricks over raw
//! TCP, and the `builtin:echo` upstream.
//!
//! Each route forwards to the recording upstream under its own base path
//! (`@upstream@/<route-name>`), so the upstream's request target names the route that
//! matched.

mod common;

use common::*;
use http::Method;
use serde_json::{Value, json};

const PRECEDENCE: &str = r#"
  - { name: catch-all, match: { path: "/*" }, upstream: "@upstream@/catch-all", auth: none }
  - { name: api-prefix, match: { path: /api/* }, upstream: "@upstream@/api-prefix", auth: none }
  - { name: users-prefix, match: { path: /api/users/* }, upstream: "@upstream@/users-prefix", auth: none }
  - { name: users-post, match: { path: /api/users/*, methods: [POST] }, upstream: "@upstream@/users-post", auth: none }
  - { name: user-by-id, match: { path: "/api/users/{id}" }, upstream: "@upstream@/user-by-id", auth: none }
  - { name: user-me, match: { path: /api/users/me }, upstream: "@upstream@/user-me", auth: none }
  - { name: first-tie, match: { path: /tie }, upstream: "@upstream@/first-tie", auth: none }
  - { name: second-tie, match: { path: /tie }, upstream: "@upstream@/second-tie", auth: none }
  - { name: delete-only, match: { path: "/api/items/{id}", methods: [DELETE] }, upstream: "@upstream@/delete-only", auth: none }
"#;

/// Which route served `method path`, read from the upstream's request target.
async fn served_by(env: &Env, method: Method, path: &str) -> String {
    let reply = call(env.gw.addr, method.clone(), path, &[], "").await;
    assert_eq!(
        reply.status,
        200,
        "{method} {path}: {} {}",
        reply.status,
        reply.text()
    );
    let target = env.upstream.last().target;
    let route = target
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    assert!(
        target.ends_with(path) || target.contains(&format!("{path}?")),
        "{method} {path} was forwarded as {target}"
    );
    route
}

#[tokio::test]
async fn the_most_specific_route_wins() {
    let env = Env::start(PRECEDENCE).await;
    let cases = [
        (Method::GET, "/api/users/me", "user-me"),
        (Method::GET, "/api/users/42", "user-by-id"),
        (Method::GET, "/api/users/42/posts", "users-prefix"),
        (Method::GET, "/api/users", "users-prefix"),
        (Method::GET, "/api/users/", "users-prefix"),
        (Method::GET, "/api/other", "api-prefix"),
        (Method::GET, "/api", "api-prefix"),
        (Method::GET, "/apis", "catch-all"),
        (Method::GET, "/elsewhere/deep/path", "catch-all"),
        (Method::GET, "/", "catch-all"),
        // A method list beats "any" at the same specificity...
        (Method::POST, "/api/users/42/posts", "users-post"),
        (Method::POST, "/api/users", "users-post"),
        // ...but not a more specific pattern that takes any method.
        (Method::POST, "/api/users/42", "user-by-id"),
        (Method::POST, "/api/users/me", "user-me"),
        // Ties go to the first route in the file.
        (Method::GET, "/tie", "first-tie"),
        // A method-limited route falls back to a less specific one for other methods.
        (Method::DELETE, "/api/items/7", "delete-only"),
        (Method::GET, "/api/items/7", "api-prefix"),
    ];
    for (method, path, route) in cases {
        assert_eq!(
            served_by(&env, method.clone(), path).await,
            route,
            "{method} {path}"
        );
    }
}

const SPARSE: &str = r#"
  - { name: api, match: { path: /api/* }, upstream: "@upstream@", auth: none }
  - { name: reads, match: { path: /only-get, methods: [GET, HEAD] }, upstream: "@upstream@", auth: none }
  - { name: deletes, match: { path: "/only-get", methods: [DELETE] }, upstream: "@upstream@", auth: none }
  - { name: protected, match: { path: /secret/* }, upstream: "@upstream@" }
"#;

#[tokio::test]
async fn unmatched_paths_are_404_json_and_never_forwarded() {
    let env = Env::start(SPARSE).await;
    for path in [
        "/",
        "/nothing/here",
        "/apix",
        "/ap",
        "/only-get/x",
        "/API/x",
    ] {
        let reply = env.get(path, &[]).await;
        assert_json_error(&reply, 404, "not_found");
        assert!(
            reply.header("x-request-id").is_some(),
            "{path}: no x-request-id on a 404"
        );
    }
    assert_eq!(
        env.upstream.count(),
        0,
        "an unmatched request was forwarded: {:?}",
        env.upstream.seen()
    );
    let metrics = env.gw.metrics().await;
    assert_eq!(
        requests_total(&metrics, "unmatched", "GET", "404"),
        6.0,
        "404s not counted under route=\"unmatched\""
    );
}

#[tokio::test]
async fn a_path_without_the_method_is_405_with_allow() {
    let env = Env::start(SPARSE).await;
    for method in [Method::POST, Method::PUT, Method::PATCH] {
        let reply = call(env.gw.addr, method.clone(), "/only-get", &[], "x").await;
        assert_json_error(&reply, 405, "method_not_allowed");
        assert_eq!(
            reply.header("allow"),
            Some("GET, HEAD, DELETE"),
            "{method}: wrong Allow"
        );
    }
    assert_eq!(env.upstream.count(), 0, "a 405 was forwarded");
    // The listed methods are served.
    for method in [Method::GET, Method::DELETE] {
        let reply = call(env.gw.addr, method.clone(), "/only-get", &[], "").await;
        assert_eq!(reply.status, 200, "{method}: {}", reply.text());
    }
    // A route that takes the method still applies its policy.
    let reply = env.get("/secret/x", &[]).await;
    assert_json_error(&reply, 401, "unauthorized");
}

#[tokio::test]
async fn strip_prefix_and_the_query_are_applied_on_the_way_up() {
    let env = Env::start(
        r#"
  - name: svc
    match: { path: /svc/* }
    upstream: "@upstream@/base"
    strip_prefix: /svc
    auth: none
  - name: plain
    match: { path: /plain/* }
    upstream: "@upstream@"
    auth: none
"#,
    )
    .await;
    let cases = [
        ("/svc/a/b?x=1&y=%20z", "/base/a/b?x=1&y=%20z"),
        ("/svc", "/base/"),
        ("/svc/", "/base/"),
        ("/svc/a?", "/base/a?"),
        (
            "/plain/a/b?q=a%2Fb&q=..%2F&flag",
            "/plain/a/b?q=a%2Fb&q=..%2F&flag",
        ),
        // Encoded unreserved characters are decoded; other escapes keep their meaning.
        ("/plain/%7Euser/a%20b", "/plain/~user/a%20b"),
    ];
    for (path, expected) in cases {
        let reply = env.get(path, &[]).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(
            env.upstream.last().target,
            expected,
            "{path} forwarded wrongly"
        );
    }
    // strip_prefix works on segments: /svcx is not under /svc.
    let reply = env.get("/svcx/a", &[]).await;
    assert_json_error(&reply, 404, "not_found");
}

const TRICKS: &str = r#"
  - { name: public, match: { path: /public/* }, upstream: "@upstream@", auth: none }
  - { name: admin, match: { path: /admin/* }, upstream: "@upstream@", scopes: [admin] }
"#;

#[tokio::test]
async fn path_tricks_are_400_and_never_forwarded() {
    let env = Env::start(TRICKS).await;
    let tricks = [
        "/public/../admin/users",
        "/public/./../admin/users",
        "/public/%2e%2e/admin/users",
        "/public/%2E%2E/admin/users",
        "/public/.%2e/admin/users",
        "/public/%2e./admin/users",
        "/public/..;/admin/users",
        "/public%2F..%2Fadmin/users",
        "/public/..%2fadmin/users",
        "/public/x%2F..%2F..%2Fadmin",
        "/public/..%5Cadmin/users",
        "/public/%5c..%5cadmin",
        "/public//admin/users",
        "//admin/users",
        "/public/..\\admin\\users",
        "/public\\..\\admin",
        "/public/./x",
        "/public/.",
        "/public/..",
        "/public/%00",
        "/public/%zz",
        "/public/%2",
    ];
    for trick in tricks {
        let reply = raw_request(env.gw.addr, "GET", trick).await;
        assert_eq!(
            reply.status, 400,
            "{trick:?} was not refused: {}",
            reply.raw
        );
        let body: Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|_| panic!("{trick:?}: the 400 is not JSON: {}", reply.raw));
        assert_eq!(body["error"], "invalid_request", "{trick:?}: {body}");
    }
    assert_eq!(
        env.upstream.count(),
        0,
        "a path trick reached the upstream: {:?}",
        env.upstream.seen()
    );
}

#[tokio::test]
async fn encoded_unreserved_characters_cannot_dodge_a_protected_route() {
    let env = Env::start(TRICKS).await;
    // %61 is 'a': this is /admin/users and must get the admin route's policy.
    for path in ["/%61dmin/users", "/adm%69n/users", "/%41dmin/users"] {
        let reply = raw_request(env.gw.addr, "GET", path).await;
        if path.contains("%41") {
            // %41 is 'A': /Admin is a different path (paths are case-sensitive).
            assert_eq!(reply.status, 404, "{path}: {}", reply.raw);
        } else {
            assert_eq!(
                reply.status, 401,
                "{path} dodged the admin route: {}",
                reply.raw
            );
        }
    }
    assert_eq!(env.upstream.count(), 0);
    // With a token that has the scope, the decoded path is what goes upstream.
    let token = env.token(json!({ "scope": "admin" }));
    let reply = env.get_bearer("/%61dmin/users", &token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(env.upstream.last().target, "/admin/users");
}

#[tokio::test]
async fn path_parameters_cannot_dodge_a_protected_route() {
    // A public catch-all beside a protected prefix: the shape where a bypass would hurt.
    let env = Env::start(
        r#"
  - { name: public, match: { path: /* }, upstream: "@upstream@", auth: none }
  - { name: admin, match: { path: /admin/* }, upstream: "@upstream@", scopes: [admin] }
"#,
    )
    .await;
    // A server that strips ";..." reads these as /admin/users: they get the admin policy.
    for path in [
        "/admin;x/users",
        "/admin;jsessionid=1/users",
        "/admin;/users",
    ] {
        let reply = raw_request(env.gw.addr, "GET", path).await;
        assert_eq!(
            reply.status, 401,
            "{path} dodged the admin route: {}",
            reply.raw
        );
    }
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn builtin_echo_answers_with_the_forwarded_request() {
    let env = Env::start(
        r#"
  - name: echo
    match: { path: /echo/* }
    upstream: builtin:echo
    strip_prefix: /echo
    scopes: [read:contacts]
"#,
    )
    .await;
    let token = env.token(json!({ "sub": "alice" }));
    let reply = raw(
        env.gw.addr,
        &format!(
            "POST /echo/a/b?q=1&r=%2F HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {token}\r\n\
             X-Multi: one\r\nX-Multi: two\r\nX-Mixed-CASE: Value\r\nX-Auth-Subject: spoofed\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.raw);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body: Value =
        serde_json::from_str(&reply.body).unwrap_or_else(|_| panic!("not JSON: {}", reply.raw));
    let object = body.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["headers", "method", "path"], "echo shape: {body}");
    assert_eq!(body["method"], "POST");
    assert_eq!(
        body["path"], "/a/b?q=1&r=%2F",
        "path after strip_prefix, with the query"
    );
    let headers = body["headers"].as_object().expect("headers object");
    for name in headers.keys() {
        assert_eq!(
            name,
            &name.to_ascii_lowercase(),
            "header names must be lower case: {name}"
        );
    }
    assert_eq!(
        headers["x-multi"], "one, two",
        "repeated headers are joined with \", \""
    );
    assert_eq!(headers["x-mixed-case"], "Value");
    assert_eq!(
        headers["x-auth-subject"], "alice",
        "the verified subject replaces the spoofed one"
    );
    assert_eq!(headers["x-auth-scopes"], "read:contacts");
    assert_eq!(headers["x-auth-issuer"], env.issuer.url.as_str());
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "gateway.test");
    assert!(
        !headers.contains_key("connection"),
        "hop-by-hop header echoed: {body}"
    );
    assert_eq!(
        headers["x-request-id"].as_str(),
        reply.header("x-request-id"),
        "the echoed request id is the one returned"
    );
}
