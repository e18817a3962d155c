//! Rate limits by verified identity: buckets per `sub`, client, claim or client address
//! (through trusted proxies), 429 with `Retry-After` and the `RateLimit-Policy` /
//! `RateLimit` headers, `rate_limited_total{route}`. Time passes on the gateway's manual
//! clock, never the wall clock.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const ROUTES: &str = r#"
  - name: orders
    match: { path: /orders/* }
    upstream: "@upstream@"
    rate_limit: { key: subject, requests: 2, per: 1m, burst: 1 }
  - name: teams
    match: { path: /teams/* }
    upstream: "@upstream@"
    rate_limit: { key: "claim:team", requests: 1, per: 1m }
  - name: clients
    match: { path: /clients/* }
    upstream: "@upstream@"
    auth: optional
    rate_limit: { key: client_id, requests: 1, per: 1m }
  - name: anonymous
    match: { path: /anon/* }
    upstream: "@upstream@"
    auth: none
    rate_limit: { key: ip, requests: 1, per: 1m }
"#;

fn metric_limited(text: &str, route: &str) -> f64 {
    metric(text, "scopegate_rate_limited_total", &[("route", route)])
}

#[tokio::test]
async fn a_subjects_bucket_holds_requests_plus_burst_then_429_until_it_refills() {
    let env = Env::start(ROUTES).await;
    let alice = env.token(json!({ "sub": "alice" }));
    let bob = env.token(json!({ "sub": "bob" }));
    // requests: 2 + burst: 1 = 3 at once.
    let mut left = Vec::new();
    for _ in 0..3 {
        let reply = env.get_bearer("/orders/1", &alice).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"orders\";q=2;w=60")
        );
        left.push(reply.header("ratelimit").expect("RateLimit").to_string());
    }
    assert!(left[0].starts_with("\"orders\";r=2;"), "{left:?}");
    assert!(left[2].starts_with("\"orders\";r=0;"), "{left:?}");

    let reply = env.get_bearer("/orders/1", &alice).await;
    assert_json_error(&reply, 429, "rate_limited");
    let retry: u64 = reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a numeric Retry-After: {reply:?}"));
    // One request refills every 30 s.
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"orders\";q=2;w=60")
    );
    assert_eq!(
        reply.header("ratelimit"),
        Some(format!("\"orders\";r=0;t={retry}").as_str())
    );
    assert_eq!(env.upstream.count(), 3, "a limited request was forwarded");

    // Another subject has a bucket of its own.
    assert_eq!(env.get_bearer("/orders/1", &bob).await.status, 200);
    let metrics = env.gw.metrics().await;
    assert_eq!(metric_limited(&metrics, "orders"), 1.0, "{metrics}");
    assert_eq!(requests_total(&metrics, "orders", "GET", "429"), 1.0);

    // Half a minute on the gateway's clock refills one request, and only one.
    env.gw.advance(Duration::from_secs(30));
    assert_eq!(env.get_bearer("/orders/1", &alice).await.status, 200);
    assert_eq!(env.get_bearer("/orders/1", &alice).await.status, 429);
}

#[tokio::test]
async fn a_claim_key_shares_a_bucket_and_a_token_without_the_claim_is_refused_clearly() {
    let env = Env::start(ROUTES).await;
    let one = env.token(json!({ "sub": "a", "team": "red" }));
    let two = env.token(json!({ "sub": "b", "team": "red" }));
    let blue = env.token(json!({ "sub": "c", "team": "blue" }));
    assert_eq!(env.get_bearer("/teams/x", &one).await.status, 200);
    // Same team, other subject: the same bucket.
    assert_json_error(&env.get_bearer("/teams/x", &two).await, 429, "rate_limited");
    assert_eq!(env.get_bearer("/teams/x", &blue).await.status, 200);

    let without = env.token(json!({ "sub": "d" }));
    let reply = env.get_bearer("/teams/x", &without).await;
    assert_invalid_token(&reply, &without);
    assert!(reply.text().contains("team"), "{}", reply.text());
    let metrics = env.gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "teams", "missing_claim"),
        1.0,
        "{metrics}"
    );

    // client_id keyed, auth optional: a token without azp/client_id is refused the same
    // way; a request without a token counts by its address.
    let no_client = env.token(json!({ "azp": null }));
    assert_invalid_token(&env.get_bearer("/clients/x", &no_client).await, &no_client);
    assert_eq!(env.get("/clients/x", &[]).await.status, 200);
    assert_eq!(env.get("/clients/x", &[]).await.status, 429);
    let client = env.token(json!({}));
    assert_eq!(env.get_bearer("/clients/x", &client).await.status, 200);
}

#[tokio::test]
async fn key_ip_believes_x_forwarded_for_only_from_trusted_proxies() {
    // Without trusted_proxies every request here comes from 127.0.0.1, whatever it says.
    let env = Env::start(ROUTES).await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(env.get("/anon/x", &from("192.0.2.1")).await.status, 200);
    assert_eq!(env.get("/anon/x", &from("192.0.2.2")).await.status, 429);

    let trusting =
        standard_yaml(ROUTES).replace("server:\n", "server:\n  trusted_proxies: [127.0.0.0/8]\n");
    assert!(trusting.contains("trusted_proxies"), "template edit failed");
    let env = Env::start_yaml(&trusting).await;
    assert_eq!(env.get("/anon/x", &from("192.0.2.1")).await.status, 200);
    assert_eq!(env.get("/anon/x", &from("192.0.2.2")).await.status, 200);
    assert_eq!(env.get("/anon/x", &from("192.0.2.1")).await.status, 429);
    // A client cannot pick its own key past the proxy: the proxy's entry counts.
    assert_eq!(
        env.get("/anon/x", &[("x-forwarded-for", "203.0.113.7, 192.0.2.1")])
            .await
            .status,
        429
    );
    // No header: the peer itself.
    assert_eq!(env.get("/anon/x", &[]).await.status, 200);
    let metrics = env.gw.metrics().await;
    assert_eq!(metric_limited(&metrics, "anonymous"), 2.0, "{metrics}");
}

#[test]
fn rate_limits_are_checked_at_load() {
    let route = |auth: &str, limit: &str| {
        format!(
            "trust:\n  issuers:\n    - issuer: https://id.example.com/\n      audiences: [api]\nroutes:\n  - name: a\n    match: {{ path: /a }}\n    upstream: http://127.0.0.1:9\n    auth: {auth}\n    rate_limit: {limit}\n"
        )
    };
    for (auth, limit, path, says) in [
        (
            "none",
            "{ key: subject, requests: 1, per: 1s }",
            "routes[0].rate_limit.key",
            "auth: none",
        ),
        (
            "required",
            "{ key: user, requests: 1, per: 1s }",
            "routes[0].rate_limit.key",
            "unknown rate limit key",
        ),
        (
            "required",
            "{ key: ip, requests: 0, per: 1s }",
            "routes[0].rate_limit.requests",
            "at least 1",
        ),
        (
            "required",
            "{ key: ip, requests: 1, per: 0s }",
            "routes[0].rate_limit.per",
            "at least 1ms",
        ),
        (
            "required",
            "{ key: ip, requests: 1 }",
            "routes[0].rate_limit",
            "missing field `per`",
        ),
    ] {
        let err = scopegate::config::Config::from_yaml(&route(auth, limit)).unwrap_err();
        assert_eq!(err.path, path, "{limit}: {err}");
        assert!(err.message.contains(says), "{limit}: {err}");
    }
    let err = scopegate::config::Config::from_yaml("server:\n  trusted_proxies: [10.0.0.1/8]\n")
        .unwrap_err();
    assert_eq!(err.path, "server.trusted_proxies[0]", "{err}");
}
