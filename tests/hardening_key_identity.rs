//! The verified-token cache is keyed by key identity (the JWK thumbprint of the key that
//! verified the token), not by `kid` + `alg`. When the issuer's JWKS replaces a key but
//! keeps its `kid` (or the key has no `kid`), a token verified under the old key is
//! refused at once, cached or not, exactly as the uncached path refuses it.

mod common;

use common::*;
use serde_json::{Value, json};

const ROUTES: &str = r#"
  - { name: api, match: { path: /api/* }, upstream: "@upstream@", scopes: [read:contacts] }
"#;

/// Makes the gateway fetch the JWKS again: a token with a `kid` nobody publishes triggers
/// a refetch (at most one per `jwks_min_refresh`, 200ms here), so send one until the
/// fetch count moves.
async fn refetch(env: &Env) {
    let before = env.gw.fetch_count();
    let trigger = rogue_rsa().token_with(
        json!({ "alg": "RS256", "kid": unique("trigger"), "typ": "at+jwt" }),
        &env.claims(json!({})),
    );
    eventually("the gateway refetched the JWKS", || {
        let trigger = trigger.clone();
        async move {
            let reply = env.get_bearer("/api/x", &trigger).await;
            assert_eq!(reply.status, 401, "{}", reply.text());
            env.gw.fetch_count() > before
        }
    })
    .await;
}

/// A JWK without its `kid` member.
fn without_kid(key: &Key) -> Value {
    let mut jwk = key.jwk();
    jwk.as_object_mut().expect("object").remove("kid");
    jwk
}

#[tokio::test]
async fn a_key_replaced_under_the_same_kid_refuses_cached_tokens() {
    let env = Env::start(ROUTES).await;
    let token = env.token(json!({}));
    let reply = env.get_bearer("/api/x", &token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // A refetch that changes nothing keeps the cached token good.
    refetch(&env).await;
    assert_eq!(env.get_bearer("/api/x", &token).await.status, 200);

    // Same kid (rsa-1), same alg, new key material.
    let impostor = Key::generate(scopegate::jose::Alg::RS256, &rsa().kid);
    env.issuer.publish(&[&impostor]);
    refetch(&env).await;
    let reply = env.get_bearer("/api/x", &token).await;
    assert_invalid_token(&reply, &token);
    let metrics = env.gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "api", "bad_signature"),
        1.0,
        "{metrics}"
    );
    // And the new key's tokens are accepted.
    let fresh = impostor.token(&env.claims(json!({})));
    assert_eq!(env.get_bearer("/api/x", &fresh).await.status, 200);
}

#[tokio::test]
async fn a_kid_less_key_replaced_refuses_cached_tokens() {
    let env = Env::start(ROUTES).await;
    env.issuer
        .publish_raw(json!({ "keys": [without_kid(rsa())] }));
    refetch(&env).await;
    let token = rsa().token_with(
        json!({ "alg": "RS256", "typ": "at+jwt" }),
        &env.claims(json!({})),
    );
    let reply = env.get_bearer("/api/x", &token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    env.issuer
        .publish_raw(json!({ "keys": [without_kid(rsa2())] }));
    refetch(&env).await;
    let reply = env.get_bearer("/api/x", &token).await;
    assert_invalid_token(&reply, &token);
    let fresh = rsa2().token_with(
        json!({ "alg": "RS256", "typ": "at+jwt" }),
        &env.claims(json!({})),
    );
    assert_eq!(env.get_bearer("/api/x", &fresh).await.status, 200);
}

#[tokio::test]
async fn the_same_key_republished_under_another_kid_refuses_cached_tokens() {
    let env = Env::start(ROUTES).await;
    let token = env.token(json!({}));
    assert_eq!(env.get_bearer("/api/x", &token).await.status, 200);
    let mut renamed = rsa().jwk();
    renamed["kid"] = json!("rsa-renamed");
    env.issuer.publish_raw(json!({ "keys": [renamed] }));
    refetch(&env).await;
    let reply = env.get_bearer("/api/x", &token).await;
    assert_invalid_token(&reply, &token);
}
