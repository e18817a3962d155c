//! `routes[].upstream_token`: the upstream receives a token the built-in issuer minted
//! for its audience on the caller's behalf, never the caller's own — against the real
//! gateway and issuer and a real upstream on 127.0.0.1:0.

mod common;

use common::Upstream;
use common::issuer::*;
use serde_json::Value;

fn routes(upstream: &str) -> &'static str {
    let yaml = format!(
        r#"  - name: calendar-proxy
    match: {{ path: /cal/* }}
    upstream: "{upstream}"
    audience: {CONTACTS}
    scopes: [read:contacts]
    upstream_token: {{ audience: "{CALENDAR}", scopes: [read:calendar, write:calendar] }}
  - name: contacts-proxy
    match: {{ path: /same/* }}
    upstream: "{upstream}"
    scopes: [read:contacts]
    upstream_token: {{ audience: "{CONTACTS}", scopes: [read:contacts, write:contacts] }}
"#
    );
    Box::leak(yaml.into_boxed_str())
}

/// The bearer token the upstream received on its last request.
fn received_token(upstream: &Upstream) -> String {
    let seen = upstream.last();
    let authorization = seen.one("authorization").expect("an Authorization header");
    authorization
        .strip_prefix("Bearer ")
        .expect("a bearer token")
        .to_string()
}

fn metric(gw: &Running, result: &str) -> f64 {
    let text = gw.gateway.metrics.render();
    text.lines()
        .filter(|line| line.starts_with("scopegate_upstream_token_total"))
        .find(|line| {
            line.contains("route=\"calendar-proxy\"")
                && line.contains(&format!("result=\"{result}\""))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_a_token_minted_for_it_not_the_callers() {
    let upstream = Upstream::start().await;
    let store = TestStore::new(Backend::Sqlite).await;
    let options = Options {
        extra_routes: routes(&upstream.url),
        ..Options::default()
    };
    let gw = Running::start(&store.url, &options).await;
    let issuer = issuer_of(&gw);

    // alice (role reader: read:contacts; read:calendar at the calendar API) with a
    // contacts token.
    let login = gw.alice("read:contacts").await;
    let caller = login["access_token"].as_str().unwrap().to_string();
    let caller_claims = claims_of(&caller);
    let answer = get(&gw.url("/cal/today"), Some(&caller)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let minted = received_token(&upstream);
    assert_ne!(
        minted, caller,
        "the caller's token never reaches the upstream"
    );
    let (_, claims) = verify_independently(&gw.jwks().await, &minted, &issuer, &[CALENDAR]);
    assert_eq!(claims["sub"], caller_claims["sub"]);
    assert_eq!(claims["aud"], CALENDAR);
    assert_eq!(
        claims["scope"], "read:calendar",
        "the route's scopes the user holds at the calendar API (not write:calendar)"
    );
    assert_eq!(claims["act"]["sub"], "scopegate");
    assert_eq!(claims["azp"], "cli");
    assert!(claims["exp"].as_i64() <= caller_claims["exp"].as_i64());
    assert_eq!(
        upstream.last().one("x-auth-subject"),
        caller_claims["sub"].as_str()
    );

    // Reused for the same caller token until shortly before it expires.
    assert_eq!(
        get(&gw.url("/cal/tomorrow"), Some(&caller)).await.status,
        200
    );
    assert_eq!(received_token(&upstream), minted);
    assert_eq!((metric(&gw, "minted"), metric(&gw, "hit")), (1.0, 1.0));
    // A minted token is short of its exp by a tenth of its life: then a new one.
    gw.clock.advance(std::time::Duration::from_secs(55 * 60));
    assert_eq!(get(&gw.url("/cal/later"), Some(&caller)).await.status, 200);
    let renewed = received_token(&upstream);
    assert_ne!(renewed, minted);
    assert_eq!(metric(&gw, "minted"), 2.0);

    // bob (role editor: contacts only) holds nothing at the calendar API: 403.
    let bob = gw.login("bob", BOB_PASSWORD, "read:contacts").await;
    let bob_token = bob["access_token"].as_str().unwrap();
    let refused = get(&gw.url("/cal/today"), Some(bob_token)).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(
        refused
            .header("www-authenticate")
            .contains("insufficient_scope")
    );

    // At the caller's own audience the exchange never widens: bob's role would allow
    // write:contacts, his token carries read:contacts only.
    assert_eq!(get(&gw.url("/same/x"), Some(bob_token)).await.status, 200);
    let same = received_token(&upstream);
    assert_eq!(claims_of(&same)["scope"], "read:contacts");
    assert_eq!(claims_of(&same)["aud"], Value::from(CONTACTS));
    gw.stop().await;
}

#[test]
fn upstream_tokens_need_the_builtin_issuers_api_scopes_or_a_token_exchange() {
    let base = |upstream_token: &str, issuer: bool| {
        let issuer = if issuer {
            "issuer:\n  url: http://127.0.0.1:8080/\n  store: \"sqlite::memory:\"\n  apis:\n    - identifier: https://billing.example.com\n      scopes: [{ value: read:invoices }]\n"
        } else {
            "trust:\n  issuers:\n    - issuer: https://idp.example.com/\n      audiences: [api]\n"
        };
        format!(
            "{issuer}routes:\n  - name: r\n    match: {{ path: /r/* }}\n    upstream: http://127.0.0.1:9\n    upstream_token: {upstream_token}\n"
        )
    };
    let ok = "{ audience: https://billing.example.com, scopes: [read:invoices] }";
    assert!(scopegate::config::Config::from_yaml(&base(ok, true)).is_ok());
    // An external issuer that exchanges tokens knows its own audiences and scopes.
    let exchange = base(ok, false).replace(
        "audiences: [api]\n",
        "audiences: [api]\n      token_exchange: { url: https://idp.example.com/token, client_id: gw, client_secret: s }\n",
    );
    assert!(
        scopegate::config::Config::from_yaml(&exchange).is_ok(),
        "{exchange}"
    );
    let no_secret = exchange.replace("client_secret: s", "client_secret: \"\"");
    let err = scopegate::config::Config::from_yaml(&no_secret)
        .expect_err("an empty secret")
        .to_string();
    assert!(
        err.contains("trust.issuers[0].token_exchange.client_secret"),
        "{err}"
    );
    for (upstream_token, issuer, key) in [
        (ok, false, "routes[0].upstream_token"),
        (
            "{ audience: https://nope.example.com, scopes: [read:invoices] }",
            true,
            "routes[0].upstream_token.audience",
        ),
        (
            "{ audience: https://billing.example.com, scopes: [pay] }",
            true,
            "routes[0].upstream_token.scopes[0]",
        ),
        (
            "{ audience: https://billing.example.com, scopes: [] }",
            true,
            "routes[0].upstream_token.scopes",
        ),
    ] {
        let err = scopegate::config::Config::from_yaml(&base(upstream_token, issuer))
            .expect_err(upstream_token)
            .to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

/// An external issuer with `token_exchange`: the gateway exchanges the caller's token at
/// that issuer's token endpoint (RFC 8693) and sends the upstream what comes back.
const EXTERNAL: &str = r#"server:
  timeouts: { upstream_connect: 1s, upstream_response: 2s }
trust:
  issuers:
    - issuer: "@issuer@"
      audiences: [https://api.example.com]
      algorithms: [RS256]
      token_exchange:
        url: "@issuer@token"
        client_id: gateway
        client_secret: "gw-secret/+="
routes:
  - name: billing
    match: { path: /billing/* }
    upstream: "@upstream@"
    scopes: [read:contacts]
    upstream_token: { audience: "https://billing.internal", scopes: [read:invoices, write:invoices] }
  - name: same
    match: { path: /same/* }
    upstream: "@upstream@"
    scopes: [read:contacts]
    upstream_token: { audience: "https://api.example.com", scopes: [read:contacts, write:contacts] }
"#;

fn external_metric(text: &str, route: &str, result: &str) -> f64 {
    common::metric(
        text,
        "scopegate_upstream_token_total",
        &[("route", route), ("result", result)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_issuers_token_endpoint_exchanges_the_callers_token() {
    let env = common::Env::start_yaml(EXTERNAL).await;
    let caller = env.token(serde_json::json!({ "scope": "read:contacts read:invoices" }));
    let exchanged = common::rsa().token(&env.claims(serde_json::json!({
        "aud": "https://billing.internal",
        "scope": "read:invoices",
        "act": { "sub": "gateway" },
    })));
    env.issuer.set_exchange(
        &caller,
        serde_json::json!({
            "access_token": exchanged,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "read:invoices",
        }),
    );

    let reply = env.get_bearer("/billing/1", &caller).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(received_token(&env.upstream), exchanged);
    let forms = env.issuer.exchange_forms();
    assert_eq!(forms.len(), 1);
    let form = &forms[0];
    let field = |name: &str| form.get(name).map(String::as_str);
    assert_eq!(
        field("grant_type"),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(field("subject_token"), Some(caller.as_str()));
    assert_eq!(
        field("subject_token_type"),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(field("audience"), Some("https://billing.internal"));
    // The route's scopes the caller's token carries, and no others: the gateway asks
    // as its own client, so the caller's scopes bound what it asks for.
    assert_eq!(field("scope"), Some("read:invoices"));

    // Reused for the same caller token, not asked again.
    let again = env.get_bearer("/billing/2", &caller).await;
    assert_eq!(again.status, 200);
    assert_eq!(received_token(&env.upstream), exchanged);
    assert_eq!(env.issuer.exchange_forms().len(), 1);
    let metrics = env.gw.metrics().await;
    assert_eq!(external_metric(&metrics, "billing", "minted"), 1.0);
    assert_eq!(external_metric(&metrics, "billing", "hit"), 1.0);

    // At the caller's own audience too.
    let same = env.token(serde_json::json!({}));
    env.issuer.set_exchange(
        &same,
        serde_json::json!({ "access_token": "same-audience", "token_type": "Bearer" }),
    );
    assert_eq!(env.get_bearer("/same/1", &same).await.status, 200);
    assert_eq!(received_token(&env.upstream), "same-audience");
    let forms = env.issuer.exchange_forms();
    assert_eq!(
        forms[1].get("scope").map(String::as_str),
        Some("read:contacts")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_exchange_is_403_a_failed_or_widened_one_503_and_the_callers_token_stays() {
    let env = common::Env::start_yaml(EXTERNAL).await;
    let token = || env.token(serde_json::json!({ "scope": "read:contacts read:invoices" }));
    // A caller without any of the route's scopes: nothing to ask for.
    let unscoped = env.token(serde_json::json!({}));
    assert_eq!(env.get_bearer("/billing/1", &unscoped).await.status, 403);
    assert!(env.issuer.exchange_forms().is_empty());
    // The issuer refuses this caller (no answer set: 400 invalid_grant): 403, final.
    let refused = token();
    let reply = env.get_bearer("/billing/1", &refused).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    // The issuer grants a scope that was not asked for.
    let widened = token();
    env.issuer.set_exchange(
        &widened,
        serde_json::json!({
            "access_token": "too-wide",
            "token_type": "Bearer",
            "scope": "read:invoices admin",
        }),
    );
    assert_eq!(env.get_bearer("/billing/1", &widened).await.status, 503);
    // Not a bearer token; an empty token.
    let empty = token();
    env.issuer.set_exchange(
        &empty,
        serde_json::json!({ "access_token": "", "token_type": "Bearer" }),
    );
    assert_eq!(env.get_bearer("/billing/1", &empty).await.status, 503);
    let dpop = token();
    env.issuer.set_exchange(
        &dpop,
        serde_json::json!({ "access_token": "bound", "token_type": "DPoP" }),
    );
    assert_eq!(env.get_bearer("/billing/1", &dpop).await.status, 503);
    // The token endpoint is down.
    let down = token();
    env.issuer.set_failing(true);
    assert_eq!(env.get_bearer("/billing/1", &down).await.status, 503);
    env.issuer.set_failing(false);

    assert_eq!(env.upstream.count(), 0, "nothing may reach the upstream");
    let metrics = env.gw.metrics().await;
    assert_eq!(external_metric(&metrics, "billing", "failed"), 5.0);
}
