//! The verified-token cache never accepts a token the uncached path would refuse: a
//! token that expires while cached, a token whose key left the JWKS, a token after a
//! reload changed what the issuer may vouch for. And with the cache off, every request
//! verifies a signature again.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const ROUTES: &str = r#"
  - { name: api, match: { path: /api/* }, upstream: "@upstream@", scopes: [read:contacts] }
"#;

/// `standard_yaml` with a different leeway and cache size.
fn yaml(leeway: &str, cache: u64) -> String {
    standard_yaml(ROUTES)
        .replace("leeway: 5s", &format!("leeway: {leeway}"))
        .replace(
            "server:\n",
            &format!("server:\n  token_cache_size: {cache}\n"),
        )
}

/// A 401 `invalid_token` whose body mentions `why`.
fn assert_invalid_token_for(reply: &Reply, why: &str) {
    assert_json_error(reply, 401, "invalid_token");
    assert!(reply.text().contains(why), "{}", reply.text());
}

#[tokio::test]
async fn a_cached_token_is_refused_once_it_expires() {
    let env = Env::start_yaml(&yaml("0s", 1000)).await;
    let token = env.token(json!({ "scope": "read:contacts", "exp": now() + 2 }));
    let first = env.get_bearer("/api/x", &token).await;
    assert_eq!(first.status, 200, "fresh token: {}", first.text());
    // Past exp (there is no leeway) by the gateway's clock, long before moka's own
    // expiry would drop the entry: the cache must not keep it.
    env.gw.advance(Duration::from_secs(3));
    let later = env.get_bearer("/api/x", &token).await;
    assert_invalid_token_for(&later, "expired");
}

#[tokio::test]
async fn a_reload_that_stops_trusting_the_audience_refuses_cached_tokens() {
    let env = Env::start_yaml(&yaml("5s", 1000)).await;
    let token = env.token(json!({ "scope": "read:contacts", "aud": AUD2 }));
    assert_eq!(env.get_bearer("/api/x", &token).await.status, 200);
    // Same issuer, but AUD2 is no longer an accepted audience.
    let narrowed = render(
        &yaml("5s", 1000).replace(&format!("[{AUD}, {AUD2}]"), &format!("[{AUD}]")),
        &[
            ("issuer", &env.issuer.url),
            ("jwks", &env.issuer.jwks_url()),
            ("upstream", &env.upstream.url),
        ],
    );
    env.gw.apply(&narrowed).await;
    let reply = env.get_bearer("/api/x", &token).await;
    assert_invalid_token_for(&reply, "aud");
}

#[tokio::test]
async fn with_the_cache_off_a_removed_key_is_refused_after_the_refetch() {
    let env = Env::start_yaml(&yaml("5s", 0)).await;
    let token = env.token(json!({ "scope": "read:contacts" }));
    for _ in 0..3 {
        assert_eq!(env.get_bearer("/api/x", &token).await.status, 200);
    }
    // The issuer drops the key; after the gateway's next fetch the token must fail even
    // though it verified a moment ago.
    env.issuer.publish(&[rsa2()]);
    let rotated = rsa2().token(&env.claims(json!({ "scope": "read:contacts" })));
    // A token with an unknown kid makes the gateway refetch once jwks_min_refresh
    // (200ms) has passed.
    env.gw.advance(Duration::from_millis(250));
    assert_eq!(env.get_bearer("/api/x", &rotated).await.status, 200);
    let reply = env.get_bearer("/api/x", &token).await;
    assert_json_error(&reply, 401, "invalid_token");
}
