//! The device authorization grant (RFC 8628) end to end: a device starts, the user
//! approves (or denies) in a browser at `/activate`, the device polls (with `slow_down`),
//! codes expire, and `/activate` refuses bad codes and forged forms. Against SQLite and
//! PostgreSQL where the store is involved.

mod common;

use common::issuer::*;

async fn device_start(gw: &Running, client_id: &str) -> Answer {
    post_form(
        &gw.url("/oauth/device/code"),
        &[
            ("client_id", client_id),
            ("scope", "openid profile read:contacts offline_access"),
            ("audience", CONTACTS),
        ],
        None,
    )
    .await
}

async fn poll(gw: &Running, device_code: &str) -> Answer {
    gw.token(
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", "tv"),
            ("device_code", device_code),
        ],
        None,
    )
    .await
}

async fn device_flow(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gw = Running::start(&store.url, &Options::default()).await;
    let jwks = gw.jwks().await;

    let start = device_start(&gw, "tv").await;
    assert_eq!(start.status, 200, "{:?}", start.json);
    assert_eq!(start.header("cache-control"), "no-store");
    let d = &start.json;
    let device_code = d["device_code"].as_str().unwrap().to_string();
    let user_code = d["user_code"].as_str().unwrap().to_string();
    assert_eq!(user_code.len(), 9);
    assert_eq!(&user_code[4..5], "-");
    assert!(
        user_code
            .bytes()
            .filter(|&b| b != b'-')
            .all(|b| b"BCDFGHJKLMNPQRSTVWXZ".contains(&b))
    );
    assert_eq!(d["verification_uri"], gw.url("/activate"));
    assert_eq!(
        d["verification_uri_complete"],
        format!("{}?user_code={user_code}", gw.url("/activate"))
    );
    assert_eq!(d["expires_in"], 600);
    assert_eq!(d["interval"], 5);

    // Polling: pending, then too fast.
    let first = poll(&gw, &device_code).await;
    assert_eq!(
        (first.status, first.error()),
        (400, "authorization_pending")
    );
    let fast = poll(&gw, &device_code).await;
    assert_eq!((fast.status, fast.error()), (400, "slow_down"));

    // The person: the link prefills the code; it must still be confirmed.
    let mut browser = Browser::new(&gw);
    let entry = browser
        .get(d["verification_uri_complete"].as_str().unwrap())
        .await;
    assert_eq!(entry.status, 200);
    assert_eq!(entry.header("x-frame-options"), "DENY");
    let html = entry.text();
    let code_field = tags(&html, "input")
        .into_iter()
        .find(|t| attribute(t, "name").as_deref() == Some("user_code"))
        .unwrap();
    assert_eq!(
        attribute(code_field, "value").as_deref(),
        Some(user_code.as_str())
    );
    assert!(html.contains("<label for=\"user_code\">"));
    // Typed differently (lower case, no dash) it is the same code.
    let typed = user_code.replace('-', "").to_lowercase();
    let login = browser
        .submit(&gw.base, &entry, &[("user_code", &typed)])
        .await;
    assert_eq!(login.status, 200, "{}", login.text());
    assert!(login.text().contains("name=\"password\"") && login.text().contains("Living-room TV"));
    let confirm = browser
        .sign_in(&gw.base, &login, "alice", ALICE_PASSWORD)
        .await;
    assert_eq!(confirm.status, 200, "{}", confirm.text());
    assert!(browser.cookies.contains_key("scopegate_session"));
    let html = confirm.text();
    assert!(
        html.contains(&user_code),
        "the code is shown again to compare"
    );
    assert!(html.contains("Read your contacts"), "scope descriptions");
    assert!(html.contains("value=\"approve\"") && html.contains("value=\"deny\""));
    // Still pending until approved.
    assert_eq!(poll(&gw, &device_code).await.error(), "slow_down");
    // The decision needs the CSRF token too.
    let forged = browser
        .post(
            &gw.url("/activate"),
            &[("user_code", &user_code), ("decision", "approve")],
        )
        .await;
    assert_eq!(forged.status, 403);
    let approved = browser
        .submit(&gw.base, &confirm, &[("decision", "approve")])
        .await;
    assert_eq!(approved.status, 200);
    assert!(approved.text().contains("Device connected"));

    let tokens = poll(&gw, &device_code).await;
    assert_eq!(tokens.status, 200, "{:?}", tokens.json);
    assert_eq!(
        tokens.json["scope"],
        "openid profile read:contacts offline_access"
    );
    let at = tokens.json["access_token"].as_str().unwrap();
    let (_, claims) = verify_independently(&jwks, at, &issuer_of(&gw), &[CONTACTS]);
    assert_eq!(claims["sub"], "user|alice");
    assert_eq!(claims["client_id"], "tv");
    let (_, id) = verify_independently(
        &jwks,
        tokens.json["id_token"].as_str().unwrap(),
        &issuer_of(&gw),
        &["tv"],
    );
    assert!(id["auth_time"].as_i64().is_some());
    assert!(tokens.json["refresh_token"].is_string());
    let once = poll(&gw, &device_code).await;
    assert_eq!(once.error(), "invalid_grant", "tokens only once");

    // Denial, with the session already there: code → confirm → deny.
    let start = device_start(&gw, "tv").await;
    let device_code = start.json["device_code"].as_str().unwrap().to_string();
    let user_code = start.json["user_code"].as_str().unwrap().to_string();
    let entry = browser.get(&gw.url("/activate")).await;
    let confirm = browser
        .submit(&gw.base, &entry, &[("user_code", &user_code)])
        .await;
    assert!(
        confirm.text().contains("value=\"deny\""),
        "{}",
        confirm.text()
    );
    let denied = browser
        .submit(&gw.base, &confirm, &[("decision", "deny")])
        .await;
    assert!(denied.text().contains("Request denied"));
    let answer = poll(&gw, &device_code).await;
    assert_eq!((answer.status, answer.error()), (403, "access_denied"));
    // A used code is not valid at /activate any more.
    let again = browser
        .submit(&gw.base, &entry, &[("user_code", &user_code)])
        .await;
    assert_eq!(again.status, 400);
    assert!(again.text().contains("not valid"));

    // Other clients: not allowed the grant, or not the code's client.
    let refused = device_start(&gw, "spa").await;
    assert_eq!(refused.error(), "unauthorized_client");
    let unknown = poll(&gw, "not-a-device-code").await;
    assert_eq!(unknown.error(), "invalid_grant");

    let metrics = gw.gateway.metrics.render();
    assert!(metrics.contains(
        "scopegate_tokens_issued_total{grant_type=\"urn:ietf:params:oauth:grant-type:device_code\"} 1"
    ), "{metrics}");
    assert!(metrics.contains(
        "scopegate_token_errors_total{error=\"slow_down\",grant_type=\"urn:ietf:params:oauth:grant-type:device_code\"}"
    ));
    gw.stop().await;
}

async fn device_codes_expire(backend: Backend) {
    let store = TestStore::new(backend).await;
    let options = Options {
        device_ttl: "1s",
        ..Options::default()
    };
    let gw = Running::start(&store.url, &options).await;
    let start = device_start(&gw, "tv").await;
    assert_eq!(start.json["expires_in"], 1);
    let device_code = start.json["device_code"].as_str().unwrap().to_string();
    let user_code = start.json["user_code"].as_str().unwrap().to_string();
    gw.clock.advance(std::time::Duration::from_millis(2100));
    let answer = poll(&gw, &device_code).await;
    assert_eq!((answer.status, answer.error()), (400, "expired_token"));
    let mut browser = Browser::new(&gw);
    let entry = browser.get(&gw.url("/activate")).await;
    let late = browser
        .submit(&gw.base, &entry, &[("user_code", &user_code)])
        .await;
    assert_eq!(late.status, 400);
    assert!(late.text().contains("expired"));
    gw.stop().await;
}

#[tokio::test]
async fn activate_refuses_bad_codes_and_forged_forms() {
    let gw = Running::fresh(Backend::Sqlite).await;
    let mut browser = Browser::new(&gw);
    let entry = browser
        .get(&format!("{}?user_code=%3Cb%3E", gw.url("/activate")))
        .await;
    assert!(
        entry.text().contains("value=\"&lt;b&gt;\""),
        "escaped prefill"
    );
    let malformed = browser
        .submit(&gw.base, &entry, &[("user_code", "12")])
        .await;
    assert_eq!(malformed.status, 400);
    assert!(malformed.text().contains("8 letters"));
    // Unknown codes are counted per address: max_failures (3), then 429.
    for _ in 0..3 {
        let unknown = browser
            .submit(&gw.base, &entry, &[("user_code", "BCDF-GHJK")])
            .await;
        assert_eq!(unknown.status, 400);
        assert!(unknown.text().contains("not valid"));
    }
    let locked = browser
        .submit(&gw.base, &entry, &[("user_code", "BCDF-GHJK")])
        .await;
    assert_eq!(locked.status, 429);
    assert!(locked.header("retry-after").parse::<u64>().is_ok());
    let forged = browser
        .post(&gw.url("/activate"), &[("user_code", "BCDF-GHJK")])
        .await;
    assert_eq!(forged.status, 403);
    gw.stop().await;
}

both_backends!(device_flow, device_codes_expire);
