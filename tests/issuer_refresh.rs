//! The built-in issuer's refresh tokens (rotation, reuse detection, concurrent
//! redemption, surviving a restart) and token exchange, against SQLite and PostgreSQL.

mod common;

use common::issuer::*;
use scopegate::issuer::store::KeyEncryptionScheme;

// ---------------------------------------------------------------------------------------
// refresh_token

async fn refresh_tokens_rotate_and_reuse_revokes_the_family(backend: Backend) {
    let gw = Running::fresh(backend).await;
    let tokens = gw
        .alice("openid profile read:contacts offline_access")
        .await;
    let rt1 = tokens["refresh_token"].as_str().unwrap().to_string();
    let refresh = |token: String, scope: Option<&'static str>| {
        let url = gw.url("/oauth/token");
        async move {
            let mut params = vec![
                ("grant_type", "refresh_token"),
                ("client_id", "cli"),
                ("refresh_token", token.as_str()),
            ];
            if let Some(scope) = scope {
                params.push(("scope", scope));
            }
            post_form(&url, &params, None).await
        }
    };
    // Widening is refused and spends nothing.
    let wider = refresh(rt1.clone(), Some("read:contacts write:contacts")).await;
    assert_eq!((wider.status, wider.error()), (400, "invalid_scope"));
    // Another client cannot use it.
    let stolen = post_form(
        &gw.url("/oauth/token"),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt1.as_str()),
        ],
        Some(("web", WEB_SECRET)),
    )
    .await;
    assert_eq!((stolen.status, stolen.error()), (400, "invalid_grant"));
    // Rotation with down-scoping: the access token narrows, a new refresh token comes.
    let second = refresh(rt1.clone(), Some("read:contacts")).await;
    assert_eq!(second.status, 200, "{:?}", second.json);
    assert_eq!(second.json["scope"], "read:contacts");
    assert!(second.json.get("id_token").is_none());
    let rt2 = second.json["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    let at = second.json["access_token"].as_str().unwrap();
    let (_, claims) = verify_independently(&gw.jwks().await, at, &issuer_of(&gw), &[CONTACTS]);
    assert_eq!(claims["aud"], CONTACTS);
    // The new refresh token keeps the family's full grant.
    let third = refresh(rt2.clone(), None).await;
    assert_eq!(third.status, 200, "{:?}", third.json);
    assert_eq!(
        third.json["scope"],
        "openid profile read:contacts offline_access"
    );
    assert!(third.json["id_token"].as_str().is_some());
    let rt3 = third.json["refresh_token"].as_str().unwrap().to_string();
    // Reusing a spent token (after issuer.refresh_grace, 5 s) revokes the whole family,
    // rt3 included.
    gw.clock.advance(std::time::Duration::from_secs(6));
    let reuse = refresh(rt1.clone(), None).await;
    assert_eq!((reuse.status, reuse.error()), (400, "invalid_grant"));
    let dead = refresh(rt3, None).await;
    assert_eq!((dead.status, dead.error()), (400, "invalid_grant"));
    let unknown = refresh("not-a-token".into(), None).await;
    assert_eq!((unknown.status, unknown.error()), (400, "invalid_grant"));
    gw.stop().await;
}

/// With `issuer.refresh_grace: 0s`: of parallel redemptions exactly one wins, and the
/// losers revoke the family. (Within the default grace window they all get a pair: see
/// tests/issuer_conformance.rs.)
async fn parallel_refresh_redemptions_have_one_winner(backend: Backend) {
    let store = TestStore::new(backend).await;
    let options = Options {
        issuer_extra: "  refresh_grace: 0s",
        ..Options::default()
    };
    let gw = Running::start(&store.url, &options).await;
    let tokens = gw.alice("read:contacts offline_access").await;
    let rt = tokens["refresh_token"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (base, rt) = (gw.base.clone(), rt.clone());
        tasks.push(tokio::spawn(async move { cli_refresh(&base, &rt).await }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let answer = task.await.unwrap();
        if answer.status != 200 {
            assert_eq!(answer.error(), "invalid_grant");
        }
        statuses.push(answer.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    gw.stop().await;
}

async fn restart_keeps_keys_and_refresh_tokens(backend: Backend) {
    let store = TestStore::new(backend).await;
    let enc = || Some(scopegate::issuer::keys::KeyEncryption::parse(&"5a".repeat(32)).unwrap());
    let gw = Running::start_with(&store.url, &Options::default(), enc())
        .await
        .unwrap();
    let kid = gw.jwks().await["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let tokens = gw.alice("read:contacts offline_access").await;
    let rt = tokens["refresh_token"].as_str().unwrap().to_string();
    let old_at = tokens["access_token"].as_str().unwrap().to_string();
    // Private keys are encrypted at rest.
    let stored = gw.issuer.core.store.load_keys().await.unwrap();
    assert!(stored.iter().all(
        |k| k.encryption == KeyEncryptionScheme::Aes256Gcm && k.private_key.starts_with("v1.")
    ));
    gw.stop().await;

    // Without the key-encryption key the store's keys cannot be used: a clear error.
    let err = Running::start_with(&store.url, &Options::default(), None)
        .await
        .err()
        .unwrap();
    assert!(err.contains("SCOPEGATE_KEY_ENCRYPTION_KEY"), "{err}");

    let gw = Running::start_with(&store.url, &Options::default(), enc())
        .await
        .unwrap();
    let jwks = gw.jwks().await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
    let answer = cli_refresh(&gw.base, &rt).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    // Tokens from before the restart still work at the new gateway's port? The issuer URL
    // changed with the port, so check the signature only.
    let (header, _) = (jsonwebtoken::decode_header(&old_at).unwrap(), ());
    assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Token exchange

async fn token_exchange_trades_for_another_api(backend: Backend) {
    let gw = Running::fresh(backend).await;
    let alice = gw.alice("openid read:contacts").await;
    let subject = alice["access_token"].as_str().unwrap().to_string();
    let exchange = |token: String, audience: &'static str, scope: Option<&'static str>| {
        let url = gw.url("/oauth/token");
        async move {
            let mut params = vec![
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", token.as_str()),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:access_token",
                ),
                ("audience", audience),
            ];
            if let Some(scope) = scope {
                params.push(("scope", scope));
            }
            post_form(&url, &params, Some(("web", WEB_SECRET))).await
        }
    };
    let traded = exchange(
        subject.clone(),
        CALENDAR,
        Some("read:calendar write:calendar"),
    )
    .await;
    assert_eq!(traded.status, 200, "{:?}", traded.json);
    assert_eq!(
        traded.json["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(
        traded.json["scope"], "read:calendar",
        "limited by alice's roles"
    );
    let at = traded.json["access_token"].as_str().unwrap();
    let (_, claims) = verify_independently(&gw.jwks().await, at, &issuer_of(&gw), &[CALENDAR]);
    assert_eq!(claims["sub"], "user|alice");
    assert_eq!(claims["aud"], CALENDAR);
    assert_eq!(claims["azp"], "web");
    // The traded token opens the other API's route.
    let echo = get(&gw.url("/api/calendar/today"), Some(at)).await;
    assert_eq!(echo.status, 200, "{:?}", echo.json);
    assert_eq!(echo.json["headers"]["x-auth-subject"], "user|alice");
    // And the original does not.
    assert_eq!(
        get(&gw.url("/api/calendar/today"), Some(&subject))
            .await
            .status,
        401
    );

    // bob's roles grant nothing for the calendar.
    let bob = gw.login("bob", BOB_PASSWORD, "read:contacts").await;
    let none = exchange(
        bob["access_token"].as_str().unwrap().into(),
        CALENDAR,
        Some("read:calendar"),
    )
    .await;
    assert_eq!((none.status, none.error()), (400, "invalid_scope"));

    // Forged, ID token, garbage: invalid_request (RFC 8693 §2.2.2); a machine token whose
    // client has no grant for the calendar: invalid_scope.
    let mut forged = subject.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let machine = gw.machine_access_token().await;
    let id_token = gw.alice("openid").await["id_token"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = exchange(machine, CALENDAR, None).await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_scope"));
    for bad in [forged, id_token, "garbage".to_string()] {
        let answer = exchange(bad, CALENDAR, None).await;
        assert_eq!(
            (answer.status, answer.error()),
            (400, "invalid_request"),
            "{:?}",
            answer.json
        );
    }
    // Wrong subject_token_type; no audience; unknown audience.
    let answer = post_form(
        &gw.url("/oauth/token"),
        &[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", subject.as_str()),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:id_token",
            ),
            ("audience", CALENDAR),
        ],
        Some(("web", WEB_SECRET)),
    )
    .await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_request"));
    assert_eq!(
        exchange(subject.clone(), "https://nope", None)
            .await
            .error(),
        "invalid_target"
    );

    // A revoked subject token.
    let revoke = post_form(
        &gw.url("/oauth/revoke"),
        &[("client_id", "cli"), ("token", subject.as_str())],
        None,
    )
    .await;
    assert_eq!(revoke.status, 200);
    let answer = exchange(subject.clone(), CALENDAR, None).await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_request"));

    // An expired subject token (the short API's tokens live 1s).
    let short = cli_login(&gw.base, "alice", ALICE_PASSWORD, SHORT, "read:short").await;
    let short_at = short.json["access_token"].as_str().unwrap().to_string();
    gw.clock.advance(std::time::Duration::from_millis(2100));
    let answer = exchange(short_at, CALENDAR, None).await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_request"));
    gw.stop().await;
}

both_backends!(
    refresh_tokens_rotate_and_reuse_revokes_the_family,
    parallel_refresh_redemptions_have_one_winner,
    restart_keeps_keys_and_refresh_tokens,
    token_exchange_trades_for_another_api,
);
