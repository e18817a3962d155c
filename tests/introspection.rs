//! RFC 7662 introspection at an external issuer (`trust.issuers[].introspection`): opaque
//! tokens accepted by what the issuer says of them, and `revocation: strict` routes that
//! refuse a JWT the issuer no longer calls active — against a real issuer on
//! 127.0.0.1:0 that serves discovery, JWKS and `/introspect`.

mod common;

use std::time::Duration;

use common::{AUD, Env, INTROSPECTION_CLIENT, rsa};
use serde_json::{Value, json};

const CONFIG: &str = r#"server:
  timeouts: { upstream_connect: 1s, upstream_response: 2s }
trust:
  leeway: 5s
  issuers:
    - issuer: "@issuer@"
      audiences: [https://api.example.com]
      algorithms: [RS256]
      jwks_min_refresh: 200ms
      introspection:
        url: "@issuer@introspect"
        client_id: gateway
        client_secret: "gw-secret/+="
        cache_ttl: 30s
routes:
  - name: normal
    match: { path: /normal/* }
    upstream: "@upstream@"
    scopes: [read:contacts]
  - name: strict
    match: { path: /strict/* }
    upstream: "@upstream@"
    scopes: [read:contacts]
    revocation: strict
"#;

fn active(env: &Env, extra: Value) -> Value {
    let mut answer = json!({
        "active": true,
        "iss": env.issuer.url,
        "sub": "user-7",
        "aud": AUD,
        "scope": "read:contacts write:contacts",
        "client_id": "client-a",
        "exp": env.gw.clock.unix_secs() + 300,
    });
    if let (Some(map), Value::Object(extra)) = (answer.as_object_mut(), extra) {
        for (name, value) in extra {
            map.insert(name, value);
        }
    }
    answer
}

async fn status(env: &Env, path: &str, token: &str) -> u16 {
    env.get_bearer(path, token).await.status.as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_accepted_by_what_the_issuer_says() {
    let env = Env::start_yaml(CONFIG).await;
    assert_eq!(INTROSPECTION_CLIENT.0, "gateway");
    env.issuer
        .set_introspection("opaque-good", active(&env, json!({})));

    let reply = env.get_bearer("/normal/a", "opaque-good").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = env.upstream.last();
    assert_eq!(seen.one("x-auth-subject"), Some("user-7"));
    assert_eq!(
        seen.one("x-auth-scopes"),
        Some("read:contacts write:contacts")
    );
    assert_eq!(seen.one("x-auth-client-id"), Some("client-a"));
    assert_eq!(env.issuer.introspect_hits(), 1);

    // The answer is reused (on strict routes too) until cache_ttl...
    assert_eq!(status(&env, "/normal/b", "opaque-good").await, 200);
    assert_eq!(status(&env, "/strict/b", "opaque-good").await, 200);
    assert_eq!(env.issuer.introspect_hits(), 1);
    // ... then asked again: the issuer now says inactive.
    env.issuer
        .set_introspection("opaque-good", json!({ "active": false }));
    env.gw.advance(Duration::from_secs(31));
    let refused = env.get_bearer("/normal/c", "opaque-good").await;
    assert_eq!(refused.status, 401);
    let challenge = refused.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("invalid_token") && challenge.contains("not active"),
        "{challenge}"
    );
    assert_eq!(env.issuer.introspect_hits(), 2);

    // Unknown tokens are inactive; an active answer is still checked like a JWT.
    assert_eq!(status(&env, "/normal/d", "never-issued").await, 401);
    env.issuer.set_introspection(
        "other-audience",
        active(&env, json!({ "aud": "https://elsewhere.example.com" })),
    );
    assert_eq!(status(&env, "/normal/e", "other-audience").await, 401);
    env.issuer.set_introspection(
        "other-issuer",
        active(&env, json!({ "iss": "https://evil.example.com/" })),
    );
    assert_eq!(status(&env, "/normal/f", "other-issuer").await, 401);
    env.issuer
        .set_introspection("no-scope", active(&env, json!({ "scope": "profile" })));
    assert_eq!(status(&env, "/normal/g", "no-scope").await, 403);
    // An answer whose exp has passed is not active, whatever it says.
    let past = env.gw.clock.unix_secs() - 10;
    env.issuer
        .set_introspection("expired", active(&env, json!({ "exp": past })));
    assert_eq!(status(&env, "/normal/h", "expired").await, 401);

    let metrics = env.gw.metrics().await;
    assert!(
        metrics.contains(r#"scopegate_auth_failures_total{reason="revoked",route="normal"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_routes_refuse_a_jwt_the_issuer_no_longer_calls_active() {
    let env = Env::start_yaml(CONFIG).await;
    let claims = env.claims(json!({}));
    let token = rsa().token(&claims);
    env.issuer
        .set_introspection(&token, active(&env, json!({})));

    // A normal route trusts the signature alone; a strict one asks the issuer.
    assert_eq!(status(&env, "/normal/a", &token).await, 200);
    assert_eq!(env.issuer.introspect_hits(), 0);
    assert_eq!(status(&env, "/strict/a", &token).await, 200);
    assert_eq!(env.issuer.introspect_hits(), 1);
    assert_eq!(status(&env, "/strict/b", &token).await, 200);
    assert_eq!(env.issuer.introspect_hits(), 1, "cached");

    // Revoked at the issuer: refused on the strict route once the answer is stale
    // (cache_ttl), still passing on the normal route until it expires.
    env.issuer
        .set_introspection(&token, json!({ "active": false }));
    env.gw.advance(Duration::from_secs(31));
    let refused = env.get_bearer("/strict/c", &token).await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(status(&env, "/normal/c", &token).await, 200);

    // An issuer that cannot answer: 503 with Retry-After, never a pass.
    let fresh = rsa().token(&env.claims(json!({})));
    env.issuer.set_failing(true);
    let unavailable = env.get_bearer("/strict/d", &fresh).await;
    assert_eq!(unavailable.status, 503, "{}", unavailable.text());
    assert!(unavailable.headers.contains_key("retry-after"));
    assert_eq!(status(&env, "/normal/d", &fresh).await, 200);
    let opaque = env.get_bearer("/normal/e", "opaque-while-down").await;
    assert_eq!(opaque.status, 503);
    env.issuer.set_failing(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_routes_need_an_issuer_that_can_be_asked() {
    let yaml = CONFIG
        .replace("@issuer@", "https://idp.example.com/")
        .replace("@upstream@", "http://127.0.0.1:9");
    let without: String = yaml
        .lines()
        .filter(|line| {
            ![
                "introspection:",
                "url:",
                "client_id:",
                "client_secret:",
                "cache_ttl:",
            ]
            .iter()
            .any(|key| line.trim_start().starts_with(key))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let err = scopegate::config::Config::from_yaml(&without)
        .expect_err("strict without introspection")
        .to_string();
    assert!(err.contains("routes[1].revocation"), "{err}");
    let bad_secret = yaml.replace("\"gw-secret/+=\"", "\"\"");
    let err = scopegate::config::Config::from_yaml(&bad_secret)
        .expect_err("empty secret")
        .to_string();
    assert!(err.contains("introspection.client_secret"), "{err}");
    assert!(scopegate::config::Config::from_yaml(&yaml).is_ok());
}
