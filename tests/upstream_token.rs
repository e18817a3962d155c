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
fn upstream_tokens_need_the_builtin_issuer_and_its_api_scopes() {
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
