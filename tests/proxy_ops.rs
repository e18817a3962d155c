//! Keys over time and the admin listener: rotation via an unknown kid, a kid storm,
//! issuer outages (after and before the first load), discovery vs `jwks_uri`,
//! `/healthz`, `/readyz`, `/metrics`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use serde_json::json;

const ROUTES: &str = r#"
  - { name: read, match: { path: /api/* }, upstream: "@upstream@", scopes: [read:contacts] }
  - { name: public, match: { path: /public/* }, upstream: "@upstream@", auth: none }
"#;

/// The standard config with `jwks_min_refresh` replaced.
fn with_min_refresh(min_refresh: &str) -> String {
    let yaml = standard_yaml(ROUTES).replace(
        "jwks_min_refresh: 200ms",
        &format!("jwks_min_refresh: {min_refresh}"),
    );
    assert!(yaml.contains(min_refresh), "template edit failed");
    yaml
}

/// `jwks_min_refresh` of the standard config, and a little more.
const PAST_MIN_REFRESH: Duration = Duration::from_millis(250);

#[tokio::test]
async fn healthz_and_readyz() {
    let env = Env::start(ROUTES).await;
    let reply = get(env.gw.admin, "/healthz", &[]).await;
    assert_eq!(reply.status, 200, "/healthz: {}", reply.text());
    let reply = get(env.gw.admin, "/readyz", &[]).await;
    assert_eq!(
        reply.status,
        200,
        "/readyz once keys are loaded: {}",
        reply.text()
    );
    let reply = get(env.gw.admin, "/nope", &[]).await;
    assert_eq!(reply.status, 404);
    // The admin endpoints are not on the proxy port.
    let reply = env.get("/healthz", &[]).await;
    assert_json_error(&reply, 404, "not_found");
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn discovery_is_used_unless_jwks_uri_is_given() {
    let env = Env::start(ROUTES).await;
    assert_eq!(
        env.issuer.discovery_hits(),
        1,
        "one discovery fetch at startup"
    );
    assert_eq!(env.issuer.jwks_hits(), 1, "one JWKS fetch at startup");

    let yaml = standard_yaml(ROUTES).replace(
        "      jwks_ttl: 10m\n",
        "      jwks_ttl: 10m\n      jwks_uri: \"@jwks@\"\n",
    );
    assert!(yaml.contains("jwks_uri"), "template edit failed");
    let env = Env::start_yaml(&yaml).await;
    assert_eq!(
        env.issuer.discovery_hits(),
        0,
        "jwks_uri is configured: no discovery"
    );
    assert_eq!(env.issuer.jwks_hits(), 1);
    let reply = env.get_bearer("/api/x", &env.token(json!({}))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn a_new_kid_triggers_exactly_one_refetch() {
    let issuer = Issuer::start(&[rsa()]).await;
    let env = Env::with_issuer(issuer, &standard_yaml(ROUTES)).await;
    env.gw.wait_ready().await;
    let old = env.token(json!({}));
    let reply = env.get_bearer("/api/x", &old).await;
    assert_eq!(reply.status, 200, "rsa-1 before rotation: {}", reply.text());
    let (discovery, jwks) = (env.issuer.discovery_hits(), env.issuer.jwks_hits());

    // The issuer rotates: rsa-2 is published and starts signing.
    env.issuer.publish(&[rsa(), rsa2()]);
    env.gw.advance(PAST_MIN_REFRESH);
    let new = rsa2().token(&env.claims(json!({})));
    let reply = env.get_bearer("/api/x", &new).await;
    assert_eq!(
        reply.status,
        200,
        "a token under the new kid after rotation: {}",
        reply.text()
    );
    assert_eq!(
        env.issuer.jwks_hits(),
        jwks + 1,
        "the unknown kid should cost exactly one JWKS fetch"
    );
    assert_eq!(
        env.issuer.discovery_hits(),
        discovery + 1,
        "and one discovery fetch"
    );

    // Known now: more tokens under rsa-2 (and the old key) fetch nothing.
    for _ in 0..5 {
        let token = rsa2().token(&env.claims(json!({})));
        assert_eq!(env.get_bearer("/api/x", &token).await.status, 200);
    }
    assert_eq!(env.get_bearer("/api/x", &old).await.status, 200);
    assert_eq!(
        env.issuer.jwks_hits(),
        jwks + 1,
        "known kids must not refetch"
    );

    // rsa-1 is retired. Once the gateway has refetched (another unknown kid, after
    // min_refresh), rsa-1 tokens stop verifying, including one it verified (and cached)
    // before.
    env.issuer.publish(&[rsa2()]);
    env.gw.advance(PAST_MIN_REFRESH);
    let unknown = rogue_rsa().token_with(
        json!({ "alg": "RS256", "kid": "rsa-3" }),
        &env.claims(json!({})),
    );
    assert_eq!(env.get_bearer("/api/x", &unknown).await.status, 401);
    assert_eq!(
        env.issuer.jwks_hits(),
        jwks + 2,
        "the unknown rsa-3 should have refetched"
    );
    let reply = env.get_bearer("/api/x", &old).await;
    assert_eq!(
        reply.status,
        401,
        "a cached token under a retired key still verified: {}",
        reply.text()
    );
    let reply = env.get_bearer("/api/x", &env.token(json!({}))).await;
    assert_eq!(
        reply.status,
        401,
        "a fresh token under a retired key verified: {}",
        reply.text()
    );
    let reply = env.get_signed("/api/x", rsa2()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn keys_are_refreshed_every_jwks_ttl() {
    // jwks_min_refresh 1h: an unknown kid cannot refetch during this test, so only the
    // periodic refresh (jwks_ttl 10m, when the gateway's clock says so) can bring the new
    // key in.
    let yaml = with_min_refresh("1h");
    let issuer = Issuer::start(&[rsa()]).await;
    let env = Env::with_issuer(issuer, &yaml).await;
    env.gw.wait_ready().await;
    let jwks = env.issuer.jwks_hits();
    env.issuer.publish(&[rsa(), rsa2()]);
    let reply = env.get_signed("/api/x", rsa2()).await;
    assert_eq!(
        reply.status,
        401,
        "rsa-2 verified before any refresh: {}",
        reply.text()
    );
    assert_eq!(
        env.issuer.jwks_hits(),
        jwks,
        "an unknown kid refetched inside jwks_min_refresh"
    );
    env.gw.advance(Duration::from_secs(5 * 60));
    let gw = &env.gw;
    let token = rsa2().token(&env.claims(json!({})));
    assert_eq!(
        gw_get(gw, &token).await,
        StatusCode::UNAUTHORIZED,
        "refreshed before jwks_ttl passed"
    );
    env.gw.advance(Duration::from_secs(5 * 60 + 1));
    eventually("the periodic refresh loads rsa-2", async || {
        let token = rsa2().token(&env.claims(json!({})));
        gw_get(gw, &token).await == StatusCode::OK
    })
    .await;
    assert_eq!(
        env.issuer.jwks_hits(),
        jwks + 1,
        "one periodic JWKS fetch once jwks_ttl passed"
    );
}

#[tokio::test]
async fn jwks_members_that_do_not_fit_are_not_used() {
    let issuer = Issuer::start(&[]).await;
    let mut enc = rsa().jwk();
    enc["use"] = json!("enc");
    let mut encrypt_only = ps().jwk();
    encrypt_only["key_ops"] = json!(["encrypt"]);
    let mut mislabelled = ed().jwk();
    mislabelled["alg"] = json!("ES256");
    issuer.publish_raw(json!({ "keys": [enc, encrypt_only, mislabelled, ec().jwk()] }));
    let env = Env::with_issuer(issuer, &standard_yaml(ROUTES)).await;
    env.gw.wait_ready().await;
    for (key, what) in [
        (rsa(), "use: enc"),
        (ps(), "key_ops without verify"),
        (ed(), "JWK alg ES256 on an Ed25519 key"),
    ] {
        let token = key.token(&env.claims(json!({})));
        let reply = env.get_bearer("/api/x", &token).await;
        assert_invalid_token(&reply, &token);
        assert_eq!(
            env.upstream.count(),
            0,
            "{what}: verified with an unfit JWK"
        );
    }
    let reply = env.get_signed("/api/x", ec()).await;
    assert_eq!(reply.status, 200, "the fitting EC key: {}", reply.text());
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let issuer = Issuer::start_down(&default_keys()).await;
    issuer.claim_issuer("https://someone-else.example.com/");
    issuer.come_up().await;
    let env = Env::with_issuer(issuer, &standard_yaml(ROUTES)).await;
    eventually("the discovery document was fetched", || async {
        env.issuer.discovery_hits() > 0
    })
    .await;
    // Keys never loaded: 503 temporarily_unavailable (the token itself may be good).
    let token = env.token(json!({}));
    let reply = env.get_bearer("/api/x", &token).await;
    assert_json_error(&reply, 503, "temporarily_unavailable");
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
    assert_eq!(
        env.issuer.jwks_hits(),
        0,
        "the JWKS of a mismatched discovery document was fetched"
    );
    let ready = get(env.gw.admin, "/readyz", &[]).await;
    assert_eq!(
        ready.status, 503,
        "ready on a discovery document for another issuer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kid_storm_costs_at_most_one_fetch_per_interval() {
    const MIN_REFRESH: Duration = Duration::from_millis(500);
    const STORM: usize = 200;
    let env = Env::start_yaml(&with_min_refresh("500ms")).await;
    // Let the startup fetch age past jwks_min_refresh, so the storm may refetch once.
    env.gw.advance(MIN_REFRESH + Duration::from_millis(50));
    let jwks_before = env.issuer.jwks_hits();
    let discovery_before = env.issuer.discovery_hits();
    let attempts_before = env.gw.fetch_count();

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..STORM {
        let kid = unique(&format!("storm-{i}"));
        let token = rogue_rsa().token_with(
            json!({ "alg": "RS256", "kid": kid, "typ": "at+jwt" }),
            &env.issuer.claims(json!({})),
        );
        let addr = env.gw.addr;
        tasks.spawn(async move {
            let auth = format!("Bearer {token}");
            get(addr, "/api/x", &[("authorization", &auth)])
                .await
                .status
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.expect("storm request"));
    }
    let elapsed = started.elapsed();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "every random-kid token must be refused: {statuses:?}"
    );

    // Fetch attempts are at least MIN_REFRESH apart, so a storm lasting `elapsed` can start
    // at most 1 + elapsed/MIN_REFRESH of them; it must start at least one (the interval
    // had passed when it began).
    let allowed = 1 + (elapsed.as_millis() / MIN_REFRESH.as_millis()) as u64;
    let fetched = env.issuer.jwks_hits() - jwks_before;
    assert!(
        (1..=allowed).contains(&fetched),
        "{STORM} random kids over {elapsed:?} caused {fetched} JWKS fetches; expected 1..={allowed}"
    );
    assert_eq!(
        env.issuer.discovery_hits() - discovery_before,
        fetched,
        "discovery fetches"
    );
    assert_eq!(
        env.gw.fetch_count() - attempts_before,
        fetched,
        "the gateway's own count agrees"
    );

    // The storm did not cost the good keys.
    let reply = env.get_bearer("/api/x", &env.token(json!({}))).await;
    assert_eq!(
        reply.status,
        200,
        "a good token after the storm: {}",
        reply.text()
    );
    let metrics = env.gw.metrics().await;
    assert_eq!(auth_failures(&metrics, "read", "unknown_key"), STORM as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_on_a_slow_failing_refresh_share_it() {
    // min_refresh 100ms; the refresh takes 800ms and then fails. Requests that start
    // waiting while it is in flight must take its outcome, not start a fetch each, one
    // after the other (request N would wait N fetches; a black-holed issuer with a 10s
    // fetch timeout would stall them for minutes).
    let env = Env::start_yaml(&with_min_refresh("100ms")).await;
    env.gw.advance(Duration::from_millis(150));
    env.issuer.set_delay(Duration::from_millis(800));
    env.issuer.set_failing(true);
    let discovery = env.issuer.discovery_hits();
    let unknown = |n: usize| {
        rogue_rsa().token_with(
            json!({ "alg": "RS256", "kid": format!("rotated-{n}") }),
            &env.claims(json!({})),
        )
    };
    let addr = env.gw.addr;
    let mut tasks = tokio::task::JoinSet::new();
    // The status of a GET of /api/x with `token`.
    let status_of = move |token: String| async move {
        let authorization = format!("Bearer {token}");
        get(addr, "/api/x", &[("authorization", &authorization)])
            .await
            .status
    };
    tasks.spawn(status_of(unknown(0)));
    // Once that fetch is in flight, and past min_refresh by the gateway's clock, well
    // inside the 800ms fetch: these queue behind it.
    eventually("the first request's refresh is in flight", async || {
        env.issuer.discovery_hits() > discovery
    })
    .await;
    env.gw.advance(Duration::from_millis(250));
    for n in 1..=5 {
        tasks.spawn(status_of(unknown(n)));
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.expect("request"), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        env.issuer.discovery_hits() - discovery,
        1,
        "requests that waited on an in-flight refresh started refreshes of their own"
    );
    // The keys from before the outage still verify.
    env.issuer.set_delay(Duration::ZERO);
    let reply = env.get_bearer("/api/x", &env.token(json!({}))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn an_issuer_outage_after_the_first_load_keeps_the_cached_keys() {
    let env = Env::start(ROUTES).await;
    for outage in ["500", "refused"] {
        match outage {
            "500" => env.issuer.set_failing(true),
            _ => {
                env.issuer.set_failing(false);
                env.issuer.go_down().await;
            }
        }
        let jwks = env.issuer.jwks_hits();
        env.gw.advance(PAST_MIN_REFRESH);
        // An unknown kid forces a refresh attempt, which fails...
        let unknown = rogue_rsa().token_with(
            json!({ "alg": "RS256", "kid": "not-yet-published" }),
            &env.claims(json!({})),
        );
        let reply = env.get_bearer("/api/x", &unknown).await;
        assert_invalid_token(&reply, &unknown);
        if outage == "500" {
            assert_eq!(
                env.issuer.jwks_hits(),
                jwks,
                "500 on discovery: the JWKS is not asked"
            );
            assert!(env.issuer.discovery_hits() > 0);
        }
        // ...and the keys loaded before the outage still verify fresh tokens.
        for key in [rsa(), ec(), ed(), ps()] {
            let token = key.token(&env.claims(json!({})));
            let reply = env.get_bearer("/api/x", &token).await;
            assert_eq!(
                reply.status,
                200,
                "issuer {outage}: {} token with cached keys: {}",
                key.alg,
                reply.text()
            );
        }
        let ready = get(env.gw.admin, "/readyz", &[]).await;
        assert_eq!(
            ready.status, 200,
            "issuer {outage}: still ready on cached keys"
        );
    }
    let metrics = env.gw.metrics().await;
    let issuer = env.issuer.url.as_str();
    assert!(
        metric(
            &metrics,
            "scopegate_jwks_fetches_total",
            &[("issuer", issuer), ("result", "error")]
        ) >= 2.0,
        "failed refreshes should be counted:\n{metrics}"
    );
}

#[tokio::test]
async fn an_issuer_down_from_the_start_is_not_ready_until_it_comes_up() {
    for outage in ["refused", "500"] {
        let issuer = Issuer::start_down(&default_keys()).await;
        if outage == "500" {
            issuer.come_up().await;
            issuer.set_failing(true);
        }
        let env = Env::with_issuer(issuer, &standard_yaml(ROUTES)).await;
        let token = env.token(json!({}));
        let reply = env.get_bearer("/api/x", &token).await;
        assert_json_error(&reply, 503, "temporarily_unavailable");
        let retry: u64 = reply
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("503 without a numeric Retry-After: {reply:?}"));
        assert!((1..=5).contains(&retry), "Retry-After {retry}");
        assert!(reply.header("www-authenticate").is_none(), "{reply:?}");
        assert_eq!(env.upstream.count(), 0);
        let ready = get(env.gw.admin, "/readyz", &[]).await;
        assert_eq!(
            ready.status, 503,
            "issuer {outage} from the start: /readyz must be 503"
        );
        // Routes without auth keep working meanwhile.
        assert_eq!(env.get("/public/x", &[]).await.status, 200);

        match outage {
            "refused" => env.issuer.come_up().await,
            _ => env.issuer.set_failing(false),
        }
        let gw = &env.gw;
        eventually("a token verifies once the issuer is back", || {
            let token = env.token(json!({}));
            async move { gw_get(gw, &token).await == StatusCode::OK }
        })
        .await;
        let ready = get(env.gw.admin, "/readyz", &[]).await;
        assert_eq!(
            ready.status, 200,
            "issuer {outage} back: /readyz must be 200"
        );
    }
}

async fn gw_get(gw: &Gw, token: &str) -> StatusCode {
    let auth = format!("Bearer {token}");
    get(gw.addr, "/api/x", &[("authorization", &auth)])
        .await
        .status
}

#[tokio::test]
async fn metrics_count_requests_and_auth_failures_with_bounded_labels() {
    let env = Env::start(ROUTES).await;
    let secret_subject = "subject-that-must-not-leak";
    let good = env.token(json!({ "sub": secret_subject }));
    assert_eq!(env.get_bearer("/api/one", &good).await.status, 200);
    assert_eq!(env.get_bearer("/api/two", &good).await.status, 200);
    assert_eq!(env.get("/api/x", &[]).await.status, 401);
    let expired = env.token(json!({ "exp": now() - 3600 }));
    assert_eq!(env.get_bearer("/api/x", &expired).await.status, 401);
    let no_scope = env.token(json!({ "scope": "profile" }));
    assert_eq!(env.get_bearer("/api/x", &no_scope).await.status, 403);
    let wrong_aud = env.token(json!({ "aud": "https://evil.example.com" }));
    assert_eq!(env.get_bearer("/api/x", &wrong_aud).await.status, 401);
    assert_eq!(
        env.get("/raw/path/that-must-not-leak", &[]).await.status,
        404
    );
    let reply = call(
        env.gw.addr,
        Method::from_bytes(b"PURGE").expect("method"),
        "/public/x",
        &[],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    let reply = raw(
        env.gw.addr,
        "GET /public/../api/leak-dots HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 400);

    let text = env.gw.metrics().await;
    let requests =
        |route: &str, method: &str, status: &str| requests_total(&text, route, method, status);
    assert_eq!(requests("read", "GET", "200"), 2.0, "\n{text}");
    assert_eq!(requests("read", "GET", "401"), 3.0, "\n{text}");
    assert_eq!(requests("read", "GET", "403"), 1.0, "\n{text}");
    assert_eq!(requests("unmatched", "GET", "404"), 1.0, "\n{text}");
    assert_eq!(requests("unmatched", "GET", "400"), 1.0, "\n{text}");
    assert_eq!(
        requests("public", "OTHER", "200"),
        1.0,
        "unknown methods are labelled OTHER\n{text}"
    );
    for (reason, count) in [
        ("missing_token", 1.0),
        ("expired", 1.0),
        ("insufficient_scope", 1.0),
        ("wrong_audience", 1.0),
    ] {
        assert_eq!(
            auth_failures(&text, "read", reason),
            count,
            "reason {reason}\n{text}"
        );
    }
    assert!(
        metric(
            &text,
            "scopegate_jwks_fetches_total",
            &[("issuer", env.issuer.url.as_str()), ("result", "success")]
        ) >= 1.0,
        "\n{text}"
    );
    for leak in [
        secret_subject,
        "that-must-not-leak",
        "leak-dots",
        "PURGE",
        &good[..20],
    ] {
        assert!(
            !text.contains(leak),
            "metrics carry a raw path, subject, method or token: {leak}"
        );
    }
    // Every route label is a route name or "unmatched".
    for line in text.lines().filter(|l| l.contains("route=\"")) {
        let route = line
            .split("route=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        assert!(
            ["read", "public", "unmatched"].contains(&route),
            "unexpected route label {route:?} in {line}"
        );
    }
}

/// An identity provider that comes up after the gateway: its keys are tried again within
/// 5 s even with a `jwks_min_refresh` of an hour, and the 503s stop then.
#[tokio::test]
async fn keys_never_fetched_are_retried_within_seconds_whatever_min_refresh_says() {
    let issuer = Issuer::start_down(&default_keys()).await;
    let yaml = with_min_refresh("1h").replace("jwks_ttl: 10m", "jwks_ttl: 2h");
    let env = Env::with_issuer(issuer, &yaml).await;
    eventually("the first fetch failed", || async {
        env.gw.fetch_count() >= 1
    })
    .await;
    let token = env.token(json!({}));
    let reply = env.get_bearer("/api/x", &token).await;
    assert_json_error(&reply, 503, "temporarily_unavailable");
    let metrics = env.gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "read", "issuer_unavailable"),
        1.0,
        "{metrics}"
    );

    env.issuer.come_up().await;
    let fetches = env.gw.fetch_count();
    // Five seconds of the gateway's clock at a time: far less than jwks_min_refresh.
    eventually("the keys are fetched again within 5 s", || async {
        env.gw.advance(Duration::from_secs(5));
        env.gw.fetch_count() > fetches && env.issuer.jwks_hits() > 0
    })
    .await;
    let gw = &env.gw;
    eventually("the token verifies", || {
        let token = env.token(json!({}));
        async move { gw_get(gw, &token).await == StatusCode::OK }
    })
    .await;
}
