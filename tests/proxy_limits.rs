//! Per-route limits and forwarding choices: the caller's token (`forward.token`), the
//! request body limit (`max_body`, 413 while streaming), per-route timeouts, and
//! `Location` / `Content-Location` rewritten back under `strip_prefix`.

mod common;

use common::*;
use serde_json::json;

const ROUTES: &str = r#"
  - { name: open, match: { path: /open/* }, upstream: "@upstream@", auth: none }
  - { name: api, match: { path: /api/* }, upstream: "@upstream@" }
"#;

/// The standard config with `forward.token: keep`.
fn keeping_tokens() -> String {
    let yaml = standard_yaml(ROUTES).replace("forward:\n", "forward:\n  token: keep\n");
    assert!(yaml.contains("token: keep"), "template edit failed");
    yaml
}

#[tokio::test]
async fn the_callers_bearer_token_is_stripped_by_default_and_kept_on_request() {
    let env = Env::start(ROUTES).await;
    let token = env.token(json!({}));
    let reply = env.get_bearer("/api/x", &token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = env.upstream.last();
    assert_eq!(seen.all("authorization"), Vec::<&str>::new(), "{seen:?}");
    assert_eq!(seen.one("x-auth-subject"), Some("user-1"));

    // On a route without auth too: a bearer token is the gateway's business.
    let reply = env.get_bearer("/open/x", &token).await;
    assert_eq!(reply.status, 200);
    assert!(env.upstream.last().all("authorization").is_empty());
    // Another scheme (an upstream's own Basic credentials) passes.
    let basic = "Basic dXNlcjpwYXNz";
    let reply = env.get("/open/x", &[("authorization", basic)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(env.upstream.last().all("authorization"), [basic]);

    let env = Env::start_yaml(&keeping_tokens()).await;
    let token = env.token(json!({}));
    let reply = env.get_bearer("/api/x", &token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let bearer = format!("Bearer {token}");
    assert_eq!(env.upstream.last().all("authorization"), [bearer.as_str()]);
}
