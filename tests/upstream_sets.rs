//! Several endpoints per route: round robin, passive ejection after failed connects (and
//! a cool-down on the gateway's clock), an idempotent request tried once on another
//! endpoint, active health checks, `upstream_endpoint_healthy{route,endpoint}`.

mod common;

use std::time::Duration;

use common::backend::Backend;
use common::*;
use http::Method;

fn set_route(name: &str, prefix: &str, backends: &[&Backend], extra: &str) -> String {
    let urls: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.url)).collect();
    format!(
        "  - name: {name}\n    match: {{ path: {prefix}/* }}\n    upstream: [{}]\n    auth: none\n{extra}",
        urls.join(", ")
    )
}

fn healthy(metrics: &str, route: &str, backend: &Backend) -> f64 {
    metric(
        metrics,
        "scopegate_upstream_endpoint_healthy",
        &[("route", route), ("endpoint", &backend.endpoint())],
    )
}

#[tokio::test]
async fn round_robin_spreads_requests_over_every_endpoint() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let env = Env::start(&set_route("orders", "/orders", &[&a, &b, &c], "")).await;
    let mut names = Vec::new();
    for _ in 0..6 {
        let reply = env.get("/orders/1", &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        names.push(reply.text());
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (2, 2, 2), "{names:?}");
    let metrics = env.gw.metrics().await;
    for backend in [&a, &b, &c] {
        assert_eq!(healthy(&metrics, "orders", backend), 1.0, "{metrics}");
    }

    // least_request with nothing in flight still reaches every endpoint.
    let env = Env::start(&set_route(
        "orders",
        "/orders",
        &[&a, &b],
        "    balance: least_request\n",
    ))
    .await;
    let before = (a.hits(), b.hits());
    for _ in 0..4 {
        assert_eq!(env.get("/orders/1", &[]).await.status, 200);
    }
    assert_eq!(a.hits() + b.hits(), before.0 + before.1 + 4);
}

#[tokio::test]
async fn a_dead_endpoint_is_ejected_and_idempotent_requests_go_to_another() {
    let dead = Backend::start_down("dead").await;
    let live = Backend::start("live").await;
    let env = Env::start(&set_route("orders", "/orders", &[&dead, &live], "")).await;
    // Every GET succeeds: a refused connect is tried once on the other endpoint.
    for n in 0..10 {
        let reply = env.get("/orders/1", &[]).await;
        assert_eq!(reply.status, 200, "GET {n}: {}", reply.text());
        assert_eq!(reply.text(), "live");
    }
    assert_eq!(live.hits(), 10);
    let metrics = env.gw.metrics().await;
    assert_eq!(healthy(&metrics, "orders", &dead), 0.0, "{metrics}");
    assert_eq!(healthy(&metrics, "orders", &live), 1.0, "{metrics}");
    let failures = metric(
        &metrics,
        "scopegate_upstream_connect_failures_total",
        &[("route", "orders"), ("endpoint", &dead.endpoint())],
    );
    assert_eq!(failures, 3.0, "ejected after 3 failed connects: {metrics}");

    // After the cool-down it is tried again; a POST is not resent elsewhere: one of two
    // POSTs (round robin) reaches the dead endpoint and gets a clean 502.
    env.gw.advance(Duration::from_secs(10));
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let reply = call(env.gw.addr, Method::POST, "/orders/1", &[], "x").await;
        if reply.status == 502 {
            assert_json_error(&reply, 502, "bad_gateway");
        }
        statuses.push(reply.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 502]);

    // It comes back: requests reach it again once its cool-down has passed.
    dead.come_up().await;
    env.gw.advance(Duration::from_secs(10));
    eventually("the endpoint takes traffic again", || async {
        env.get("/orders/1", &[]).await;
        dead.hits() > 0
    })
    .await;
    let metrics = env.gw.metrics().await;
    assert_eq!(healthy(&metrics, "orders", &dead), 1.0, "{metrics}");
}

#[tokio::test]
async fn active_health_checks_take_an_endpoint_out_and_bring_it_back() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let extra = "    health: { path: /healthz, interval: 1s, unhealthy: 2, healthy: 1 }\n";
    let env = Env::start(&set_route("orders", "/orders", &[&a, &b], extra)).await;
    eventually("health checks run", || async { b.health_hits() > 0 }).await;

    b.set_healthy(false);
    eventually("b is marked unhealthy", || async {
        env.gw.advance(Duration::from_secs(1));
        healthy(&env.gw.metrics().await, "orders", &b) == 0.0
    })
    .await;
    let before = b.hits();
    for _ in 0..4 {
        assert_eq!(env.get("/orders/1", &[]).await.text(), "a");
    }
    assert_eq!(b.hits(), before, "an unhealthy endpoint got traffic");

    b.set_healthy(true);
    eventually("b is healthy again", || async {
        env.gw.advance(Duration::from_secs(1));
        healthy(&env.gw.metrics().await, "orders", &b) == 1.0
    })
    .await;
    for _ in 0..4 {
        assert_eq!(env.get("/orders/1", &[]).await.status, 200);
    }
    assert!(b.hits() > before, "b got no traffic once healthy");
}

#[test]
fn an_endpoint_list_with_a_bad_url_is_a_config_error_naming_it() {
    let yaml = |upstream: &str, extra: &str| {
        format!(
            "routes:\n  - name: a\n    match: {{ path: /a }}\n    auth: none\n    upstream: {upstream}\n{extra}"
        )
    };
    for (upstream, extra, path, says) in [
        (
            "[http://127.0.0.1:1, 'http://x y']",
            "",
            "routes[0].upstream",
            "upstream[1]",
        ),
        (
            "[http://127.0.0.1:1, ftp://b]",
            "",
            "routes[0].upstream",
            "\"ftp://b\"",
        ),
        ("[]", "", "routes[0].upstream", "empty"),
        (
            "[http://127.0.0.1:1, http://127.0.0.1:1]",
            "",
            "routes[0].upstream",
            "twice",
        ),
        (
            "[http://127.0.0.1:1]",
            "    balance: random\n",
            "routes[0].balance",
            "unknown variant",
        ),
        (
            "builtin:echo",
            "    health: { path: /healthz }\n",
            "routes[0].health",
            "builtin:echo",
        ),
        (
            "http://127.0.0.1:1",
            "    health: { path: healthz }\n",
            "routes[0].health.path",
            "path",
        ),
    ] {
        let err = scopegate::config::Config::from_yaml(&yaml(upstream, extra)).unwrap_err();
        assert_eq!(err.path, path, "{upstream} {extra}: {err}");
        assert!(err.message.contains(says), "{upstream} {extra}: {err}");
    }
    // One URL stays valid, as a list of one is.
    for upstream in ["http://svc.namespace:8080", "[http://127.0.0.1:1]"] {
        scopegate::config::Config::from_yaml(&yaml(upstream, "")).unwrap();
    }
}

#[tokio::test]
async fn least_request_counts_a_request_until_its_answer_has_streamed() {
    let b = Backend::start("b").await;
    let routes = format!(
        "  - name: orders\n    match: {{ path: /orders/* }}\n    upstream: [\"@upstream@\", \"{}\"]\n    auth: none\n    balance: least_request\n",
        b.url
    );
    let env = Env::start(&routes).await;
    // The first request goes to the first endpoint (nothing in flight anywhere); its
    // answer head arrives, its body is held open by the upstream.
    let request = http::Request::get("/orders/slow")
        .header("x-test-mode", "stream-down")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let held = send_streaming(env.gw.addr, request).await;
    assert_eq!(held.status(), 200);
    assert_eq!(env.upstream.count(), 1);
    // While that answer streams, every request goes to the idle endpoint.
    for _ in 0..4 {
        assert_eq!(env.get("/orders/1", &[]).await.text(), "b");
    }
    assert_eq!(env.upstream.count(), 1, "{:?}", env.upstream.seen());
    env.upstream.release();
    let body = collect(held).await;
    assert_eq!(body.text(), "first-chunk;second-chunk");
    // Both idle again: the first endpoint takes requests again.
    eventually("the first endpoint takes requests again", || async {
        env.get("/orders/1", &[]).await;
        env.upstream.count() > 1
    })
    .await;
}
