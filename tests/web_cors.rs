//! CORS as a browser meets it: preflights answered by the gateway without a token and
//! never forwarded, CORS headers on the upstream's answers and on the gateway's own
//! 401/403, nothing for origins not allowed, a route's block over the global one key by
//! key, `cors: false`, malformed origins refused and counted, config mistakes refused.

mod common;

use common::*;
use http::Method;
use scopegate::config::Config;
use serde_json::json;

const APP: &str = "https://app.example.com";

fn template() -> String {
    format!(
        r#"cors:
  allow_origins: [{APP}]
  allow_headers: [authorization, content-type]
  expose_headers: [x-upstream]
  allow_credentials: true
  max_age: 5m
{}"#,
        standard_yaml(
            r#"
  - { name: api, match: { path: /api/*, methods: [GET, POST] }, upstream: "@upstream@", scopes: [read:contacts] }
  - { name: admin, match: { path: /admin/* }, upstream: "@upstream@", scopes: [admin] }
  - name: public
    match: { path: /public/* }
    upstream: "@upstream@"
    auth: none
    cors: { allow_origins: ["*"], allow_credentials: false, allow_methods: [GET, PUT] }
  - { name: plain, match: { path: /plain/* }, upstream: "@upstream@", cors: false }
"#
        )
    )
}

async fn preflight(env: &Env, path: &str, origin: &str, method: &str, headers: &str) -> Reply {
    call(
        env.gw.addr,
        Method::OPTIONS,
        path,
        &[
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", headers),
        ],
        "",
    )
    .await
}

fn refused(metrics: &str, route: &str, reason: &str) -> f64 {
    metric(
        metrics,
        "scopegate_requests_refused_total",
        &[("route", route), ("reason", reason)],
    )
}

#[tokio::test]
async fn a_preflight_for_an_allowed_origin_is_answered_without_a_token_and_not_forwarded() {
    let env = Env::start_yaml(&template()).await;
    let reply = preflight(
        &env,
        "/api/contacts",
        APP,
        "POST",
        "Authorization, Content-Type",
    )
    .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(reply.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("GET, POST")
    );
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(reply.header("access-control-max-age"), Some("300"));
    assert!(reply.header("vary").is_some_and(|v| v.contains("Origin")));
    assert_eq!(env.upstream.count(), 0, "a preflight was forwarded");
    let metrics = env.gw.metrics().await;
    assert_eq!(
        requests_total(&metrics, "api", "OPTIONS", "204"),
        1.0,
        "{metrics}"
    );
    assert_eq!(auth_failures(&metrics, "api", "missing_token"), 0.0);
}

#[tokio::test]
async fn refused_preflights_get_no_cors_headers_and_are_counted() {
    let env = Env::start_yaml(&template()).await;
    for (path, origin, method, headers, route, reason) in [
        (
            "/api/x",
            "https://evil.example",
            "GET",
            "",
            "api",
            "cors_origin_not_allowed",
        ),
        (
            "/public/x",
            APP,
            "POST",
            "",
            "public",
            "cors_method_not_allowed",
        ),
        (
            "/api/x",
            APP,
            "GET",
            "x-secret",
            "api",
            "cors_headers_not_allowed",
        ),
    ] {
        let reply = preflight(&env, path, origin, method, headers).await;
        assert_json_error(&reply, 403, "cors_refused");
        assert_eq!(
            reply.header("access-control-allow-origin"),
            None,
            "{reply:?}"
        );
        let metrics = env.gw.metrics().await;
        assert_eq!(refused(&metrics, route, reason), 1.0, "{reason}: {metrics}");
    }
    // A method no route takes on the path: the OPTIONS is routed as itself (405: the
    // api route takes GET and POST).
    let reply = preflight(&env, "/api/x", APP, "DELETE", "").await;
    assert_eq!(reply.status, 405, "{reply:?}");
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn answers_carry_cors_headers_for_allowed_origins_only() {
    let env = Env::start_yaml(&template()).await;
    let token = env.token(json!({}));
    let auth = format!("Bearer {token}");

    let ok = env
        .get("/api/x", &[("authorization", &auth), ("origin", APP)])
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.header("access-control-allow-origin"), Some(APP));
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        ok.header("access-control-expose-headers"),
        Some("x-upstream")
    );
    assert_eq!(ok.header("vary"), Some("Origin"));

    let other = env
        .get(
            "/api/x",
            &[("authorization", &auth), ("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), None);
    assert_eq!(other.header("vary"), Some("Origin"));

    // The gateway's own refusals: the page can read why.
    let missing = env.get("/api/x", &[("origin", APP)]).await;
    assert_json_error(&missing, 401, "unauthorized");
    assert_eq!(missing.header("access-control-allow-origin"), Some(APP));
    assert!(missing.header("www-authenticate").is_some());
    let scope = env
        .get("/admin/x", &[("authorization", &auth), ("origin", APP)])
        .await;
    assert_json_error(&scope, 403, "insufficient_scope");
    assert_eq!(scope.header("access-control-allow-origin"), Some(APP));
}

#[tokio::test]
async fn a_route_block_overrides_key_by_key_and_false_switches_cors_off() {
    let env = Env::start_yaml(&template()).await;
    let reply = preflight(
        &env,
        "/public/x",
        "https://anyone.example",
        "PUT",
        "content-type",
    )
    .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("GET, PUT")
    );
    assert_eq!(reply.header("access-control-allow-credentials"), None);
    // max_age and allow_headers come from the global block.
    assert_eq!(reply.header("access-control-max-age"), Some("300"));
    let get = env
        .get("/public/x", &[("origin", "https://anyone.example")])
        .await;
    assert_eq!(get.header("access-control-allow-origin"), Some("*"));

    // cors: false: the preflight is a plain OPTIONS (no token: 401), without CORS.
    let plain = preflight(&env, "/plain/x", APP, "GET", "").await;
    assert_eq!(plain.status, 401, "{plain:?}");
    assert_eq!(plain.header("access-control-allow-origin"), None);
    assert_eq!(plain.header("vary"), None);
}

#[tokio::test]
async fn a_malformed_origin_is_a_counted_400() {
    let env = Env::start_yaml(&template()).await;
    for origin in [
        "app.example.com",
        "https://app.example.com/path",
        "https://a b",
    ] {
        let reply = env.get("/public/x", &[("origin", origin)]).await;
        assert_json_error(&reply, 400, "invalid_request");
    }
    let reply = preflight(&env, "/api/x", "https://x/y", "GET", "").await;
    assert_json_error(&reply, 400, "invalid_request");
    // Routes without CORS do not read Origin at all.
    let token = env.token(json!({}));
    let plain = env
        .get(
            "/plain/x",
            &[
                ("origin", "not an origin"),
                ("authorization", &format!("Bearer {token}")),
            ],
        )
        .await;
    assert_eq!(plain.status, 200);
    let metrics = env.gw.metrics().await;
    assert_eq!(
        refused(&metrics, "public", "cors_origin_malformed"),
        3.0,
        "{metrics}"
    );
    assert_eq!(refused(&metrics, "api", "cors_origin_malformed"), 1.0);
    assert_eq!(env.upstream.count(), 1);
}

#[test]
fn cors_config_mistakes_are_refused_with_their_key_path() {
    let base = "server: { listen: '127.0.0.1:0', admin_listen: '127.0.0.1:0' }\n";
    let route = "routes:\n  - { name: a, match: { path: /a }, upstream: builtin:echo, auth: none";
    for (yaml, path) in [
        (
            format!(
                "{base}cors: {{ allow_origins: ['*'], allow_credentials: true }}\n{route} }}\n"
            ),
            "cors.allow_credentials",
        ),
        (
            format!(
                "{base}cors: {{ allow_credentials: true }}\n{route}, cors: {{ allow_origins: ['*'] }} }}\n"
            ),
            "routes[0].cors.allow_credentials",
        ),
        (
            format!("{base}{route}, cors: {{ max_age: 1m }} }}\n"),
            "routes[0].cors.allow_origins",
        ),
        (
            format!("{base}cors: {{ allow_origins: ['https://a.example/'] }}\n{route} }}\n"),
            "cors.allow_origins[0]",
        ),
        (
            format!(
                "{base}cors: {{ allow_origins: ['https://a.example'], allow_methods: [get] }}\n{route} }}\n"
            ),
            "cors.allow_methods[0]",
        ),
    ] {
        let err = Config::from_yaml(&yaml).expect_err(&yaml);
        assert_eq!(err.path, path, "{err}\n{yaml}");
    }
    for yaml in [
        format!("{base}cors: true\n{route} }}\n"),
        format!("{base}cors: {{ allow_origin: ['https://a.example'] }}\n{route} }}\n"),
    ] {
        assert!(Config::from_yaml(&yaml).is_err(), "{yaml}");
    }
    let ok = format!(
        "{base}cors: false\n{route}, cors: {{ allow_origins: ['https://a.example'] }} }}\n"
    );
    Config::from_yaml(&ok).expect("a route block alone");
}
