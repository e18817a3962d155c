//! Scope separators (RFC 6749 §3.3): only U+0020 separates scopes. A scope claim with a
//! tab, CR, LF or form feed is not split on them; such a piece is not a valid scope-token
//! and grants nothing. Real issuer, real upstream, the real gateway.

mod common;

use common::*;
use serde_json::{Value, json};

/// A token with `scope` set to `scope` (a string or an array).
fn token(env: &Env, scope: Value) -> String {
    env.token(json!({ "scope": scope }))
}

#[tokio::test]
async fn control_characters_do_not_separate_scopes() {
    let env = Env::start(SCOPE_ROUTES).await;
    for separator in ["\t", "\r", "\n", "\r\n", "\u{000c}", "\u{000b}"] {
        let both = format!("read:contacts{separator}write:contacts");
        for scope in [json!(both), json!([both])] {
            let token = token(&env, scope.clone());
            // The whole value is one invalid scope-token: it grants neither scope.
            let reply = env.get_bearer("/api/both/x", &token).await;
            assert_json_error(&reply, 403, "insufficient_scope");
            let reply = env.get_bearer("/api/read/x", &token).await;
            assert_json_error(&reply, 403, "insufficient_scope");
            let reply = env.get_bearer("/api/one-of/x", &token).await;
            assert_json_error(&reply, 403, "insufficient_scope");
        }
        // Beside a valid scope, the invalid piece is dropped and the valid one stays.
        let scope = format!("read:contacts admin{separator}write:contacts");
        let token = token(&env, json!(scope));
        env.upstream.clear();
        let reply = env.get_bearer("/api/read/x", &token).await;
        assert_eq!(reply.status, 200, "{separator:?}: {}", reply.text());
        assert_eq!(
            env.upstream.only().one("x-auth-scopes"),
            Some("read:contacts"),
            "{separator:?}"
        );
        let reply = env.get_bearer("/api/one-of/x", &token).await;
        assert_json_error(&reply, 403, "insufficient_scope");
    }
    assert_eq!(env.upstream.count(), 1, "only the granted request went up");
    let metrics = env.gw.metrics().await;
    assert!(auth_failures(&metrics, "both", "insufficient_scope") >= 12.0);
}

#[tokio::test]
async fn spaces_still_separate_and_repeated_spaces_are_harmless() {
    let env = Env::start(SCOPE_ROUTES).await;
    for scope in [
        json!("read:contacts write:contacts"),
        json!("  read:contacts   write:contacts "),
        json!(["read:contacts", "write:contacts"]),
        json!(["read:contacts write:contacts"]),
    ] {
        env.upstream.clear();
        let reply = env
            .get_bearer("/api/both/x", &token(&env, scope.clone()))
            .await;
        assert_eq!(reply.status, 200, "{scope}: {}", reply.text());
        assert_eq!(
            env.upstream.only().one("x-auth-scopes"),
            Some("read:contacts write:contacts"),
            "{scope}"
        );
    }
}

#[tokio::test]
async fn scopes_with_quotes_backslashes_or_non_ascii_grant_nothing() {
    let env = Env::start(SCOPE_ROUTES).await;
    for bad in ["adm\"in", "adm\\in", "admín"] {
        let token = token(&env, json!(format!("read:contacts {bad}")));
        env.upstream.clear();
        let reply = env.get_bearer("/api/read/x", &token).await;
        assert_eq!(reply.status, 200, "{bad:?}: {}", reply.text());
        assert_eq!(
            env.upstream.only().one("x-auth-scopes"),
            Some("read:contacts")
        );
        let reply = env.get_bearer("/api/one-of/x", &token).await;
        assert_json_error(&reply, 403, "insufficient_scope");
    }
}
