//! What the built-in issuer says about tokens it issued: introspection (confidential
//! clients only), userinfo (by scope), revocation (at once, whole refresh families), and
//! tokens that are foreign or expired. Against SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use common::issuer::*;
use serde_json::{Value, json};

/// POST /oauth/introspect for `token`, authenticating as `client` (id, secret).
async fn introspect(gw: &Running, token: &str, client: Option<(&str, &str)>) -> Answer {
    post_form(&gw.url("/oauth/introspect"), &[("token", token)], client).await
}

/// Alice's tokens with every scope these tests look at.
async fn alice(gw: &Running) -> (String, String) {
    let tokens = gw
        .alice("openid profile email read:contacts offline_access")
        .await;
    let at = tokens["access_token"].as_str().unwrap().to_string();
    let rt = tokens["refresh_token"].as_str().unwrap().to_string();
    (at, rt)
}

async fn refresh(gw: &Running, rt: &str) -> Answer {
    cli_refresh(&gw.base, rt).await
}

async fn introspection_needs_a_confidential_client_and_describes_the_token(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gw = Running::start(&store.url, &Options::default()).await;
    let (at, rt) = alice(&gw).await;

    // Introspection needs a confidential client.
    let answer = post_form(
        &gw.url("/oauth/introspect"),
        &[("token", at.as_str()), ("client_id", "cli")],
        None,
    )
    .await;
    assert_eq!((answer.status, answer.error()), (401, "invalid_client"));
    let answer = introspect(&gw, &at, None).await;
    assert_eq!(answer.status, 401);

    let active = introspect(&gw, &at, Some(("m2m", M2M_SECRET))).await;
    assert_eq!(active.status, 200);
    assert_eq!(active.header("cache-control"), "no-store");
    assert_eq!(active.json["active"], true);
    assert_members(
        &active.json,
        &[
            ("sub", "user|alice"),
            ("client_id", "cli"),
            ("username", "alice"),
            ("scope", "openid profile email read:contacts offline_access"),
        ],
    );
    // Refresh tokens: active for their own client only.
    let refresh_web = introspect(&gw, &rt, Some(("web", WEB_SECRET))).await;
    assert_eq!(refresh_web.json, json!({"active": false}));
    gw.stop().await;
}

async fn userinfo_answers_by_scope(backend: Backend) {
    let gw = Running::fresh(backend).await;
    let (at, _) = alice(&gw).await;

    // userinfo by GET and POST.
    for method in ["GET", "POST"] {
        let info = request(method, &gw.url("/userinfo"), Some(&at)).await;
        assert_eq!(info.status, 200, "{method}");
        assert_members(
            &info.json,
            &[
                ("sub", "user|alice"),
                ("name", "Alice Liddell"),
                ("email", "alice@example.com"),
                ("https://contacts.example.com/favorite_color", "blue"),
            ],
        );
    }
    // openid only: sub and custom claims, no profile or email.
    let slim = gw.alice("openid read:contacts").await;
    let info = get(&gw.url("/userinfo"), slim["access_token"].as_str()).await;
    assert_eq!(info.status, 200);
    assert!(info.json.get("email").is_none() && info.json.get("name").is_none());
    // Without openid the token is not for /userinfo; a machine token neither.
    let no_openid = gw.alice("read:contacts").await;
    let info = get(&gw.url("/userinfo"), no_openid["access_token"].as_str()).await;
    assert_eq!(info.status, 401);
    assert!(info.header("www-authenticate").contains("invalid_token"));
    let machine = gw.machine_token().await;
    assert_eq!(
        get(&gw.url("/userinfo"), machine["access_token"].as_str())
            .await
            .status,
        401
    );
    let missing = get(&gw.url("/userinfo"), None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("www-authenticate"),
        "Bearer realm=\"scopegate\""
    );
    assert_eq!(
        get(&gw.url("/userinfo"), Some("garbage.token.here"))
            .await
            .status,
        401
    );
    gw.stop().await;
}

async fn revocation_shows_at_once_and_ends_the_refresh_family(backend: Backend) {
    let gw = Running::fresh(backend).await;
    let (at, rt) = alice(&gw).await;
    let active = async |token: &str| -> Value {
        introspect(&gw, token, Some(("m2m", M2M_SECRET))).await.json
    };

    // Another client's token is refused and stays valid.
    let other = post_form(
        &gw.url("/oauth/revoke"),
        &[("token", at.as_str())],
        Some(("web", WEB_SECRET)),
    )
    .await;
    assert_eq!((other.status, other.error()), (400, "unauthorized_client"));
    assert_eq!(active(&at).await["active"], true);
    // Unknown tokens are answered 200; a token parameter is required.
    let unknown = post_form(
        &gw.url("/oauth/revoke"),
        &[("token", "whatever"), ("client_id", "cli")],
        None,
    )
    .await;
    assert_eq!(unknown.status, 200);
    let none = post_form(&gw.url("/oauth/revoke"), &[("client_id", "cli")], None).await;
    assert_eq!((none.status, none.error()), (400, "invalid_request"));
    // Revoking the access token shows at once at introspection and /userinfo.
    let revoked = post_form(
        &gw.url("/oauth/revoke"),
        &[
            ("token", at.as_str()),
            ("token_type_hint", "access_token"),
            ("client_id", "cli"),
        ],
        None,
    )
    .await;
    assert_eq!(revoked.status, 200);
    assert_eq!(active(&at).await, json!({"active": false}));
    assert_eq!(get(&gw.url("/userinfo"), Some(&at)).await.status, 401);

    // Refresh: rotate, then revoke the new one: the family dies.
    let rotated = refresh(&gw, &rt).await;
    let rt2 = rotated.json["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        introspect(&gw, &rt, Some(("web", WEB_SECRET))).await.json["active"],
        false,
        "spent"
    );
    let revoke = post_form(
        &gw.url("/oauth/revoke"),
        &[("token", rt2.as_str()), ("client_id", "cli")],
        None,
    )
    .await;
    assert_eq!(revoke.status, 200);
    assert_eq!(refresh(&gw, &rt2).await.error(), "invalid_grant");
    gw.stop().await;
}

async fn foreign_and_expired_tokens_are_inactive(backend: Backend) {
    let gw = Running::fresh(backend).await;
    let elsewhere = Running::fresh(Backend::Sqlite).await;
    let foreign = elsewhere.machine_access_token().await;
    assert_eq!(
        introspect(&gw, &foreign, Some(("m2m", M2M_SECRET)))
            .await
            .json,
        json!({"active": false})
    );
    elsewhere.stop().await;

    // The short API's tokens live 1s.
    let short = cli_login(
        &gw.base,
        "alice",
        ALICE_PASSWORD,
        SHORT,
        "openid read:short",
    )
    .await;
    let short_at = short.json["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        introspect(&gw, &short_at, Some(("m2m", M2M_SECRET)))
            .await
            .json["active"],
        true
    );
    gw.clock.advance(Duration::from_millis(2100));
    assert_eq!(
        introspect(&gw, &short_at, Some(("m2m", M2M_SECRET)))
            .await
            .json,
        json!({"active": false})
    );
    assert_eq!(get(&gw.url("/userinfo"), Some(&short_at)).await.status, 401);
    gw.stop().await;
}

/// The sample with `name` and labels containing `labels` in the gateway's metrics.
fn metric(gw: &Running, name: &str, labels: &str) -> Option<f64> {
    let text = gw.gateway.metrics.render();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(name) && line.contains(labels))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Every revocation reaches the proxy at once, cached tokens included (RFC 7009 §2.1:
/// revoking a refresh token also revokes the access tokens of its family).
async fn revocation_reaches_the_proxy_at_once_with_the_family_tokens(backend: Backend) {
    let gw = Running::fresh(backend).await;
    let api = gw.url("/api/contacts/1");
    let refused_as_revoked = async |token: &str| {
        let answer = get(&api, Some(token)).await;
        assert_eq!(answer.status, 401, "{}", answer.text());
        assert!(
            answer.header("www-authenticate").contains("revoked"),
            "{}",
            answer.header("www-authenticate")
        );
    };

    // An access token, used (so the proxy has it cached), then revoked.
    let (at, _) = alice(&gw).await;
    assert_eq!(get(&api, Some(&at)).await.status, 200);
    let revoked = post_form(
        &gw.url("/oauth/revoke"),
        &[("token", at.as_str()), ("client_id", "cli")],
        None,
    )
    .await;
    assert_eq!(revoked.status, 200);
    refused_as_revoked(&at).await;
    assert_eq!(
        metric(&gw, "scopegate_auth_failures_total", "reason=\"revoked\""),
        Some(1.0)
    );

    // A refresh token revoked: the access tokens of its family go too — the first one
    // and one a refresh gave — at the proxy, at introspection and at /userinfo.
    let (first, rt) = alice(&gw).await;
    let rotated = refresh(&gw, &rt).await;
    let second = rotated.json["access_token"].as_str().unwrap().to_string();
    let rt2 = rotated.json["refresh_token"].as_str().unwrap().to_string();
    for token in [&first, &second] {
        assert_eq!(get(&api, Some(token)).await.status, 200);
        assert_eq!(get(&gw.url("/userinfo"), Some(token)).await.status, 200);
    }
    let revoke = post_form(
        &gw.url("/oauth/revoke"),
        &[("token", rt2.as_str()), ("client_id", "cli")],
        None,
    )
    .await;
    assert_eq!(revoke.status, 200);
    for token in [&first, &second] {
        refused_as_revoked(token).await;
        assert_eq!(get(&gw.url("/userinfo"), Some(token)).await.status, 401);
        let answer = introspect(&gw, token, Some(("m2m", M2M_SECRET))).await;
        assert_eq!(answer.json, json!({"active": false}));
    }

    // A spent refresh token presented again revokes its family's access tokens too.
    let (third, rt3) = alice(&gw).await;
    assert_eq!(get(&api, Some(&third)).await.status, 200);
    let rotated = refresh(&gw, &rt3).await;
    let fourth = rotated.json["access_token"].as_str().unwrap().to_string();
    // Past issuer.refresh_grace (5s), when a second redemption is reuse.
    gw.clock.advance(Duration::from_secs(6));
    assert_eq!(refresh(&gw, &rt3).await.error(), "invalid_grant");
    refused_as_revoked(&third).await;
    refused_as_revoked(&fourth).await;

    // Others' tokens are untouched; the deny-set holds the five revoked tokens until
    // they expire, then forgets them.
    let (other, _) = alice(&gw).await;
    assert_eq!(get(&api, Some(&other)).await.status, 200);
    let held = || metric(&gw, "scopegate_revoked_tokens", "");
    common::eventually("the revoked_tokens gauge counts the deny-set", async || {
        held() == Some(5.0)
    })
    .await;
    gw.clock.advance(Duration::from_secs(3 * 3600));
    common::eventually("expired revocations are forgotten", async || {
        held() == Some(0.0)
    })
    .await;
    gw.stop().await;
}

both_backends!(
    revocation_reaches_the_proxy_at_once_with_the_family_tokens,
    introspection_needs_a_confidential_client_and_describes_the_token,
    userinfo_answers_by_scope,
    revocation_shows_at_once_and_ends_the_refresh_family,
    foreign_and_expired_tokens_are_inactive,
);
