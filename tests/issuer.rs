//! The built-in issuer end to end: the real gateway on 127.0.0.1:0, HTTP requests, issued
//! tokens verified with an independent JOSE implementation (`jsonwebtoken`) against the
//! served JWKS, and accepted or refused by the proxy's own routes. Everything that
//! touches the store runs against SQLite and PostgreSQL.

mod common;

use common::issuer::*;
use scopegate::issuer::store::KeyEncryptionScheme;
use serde_json::Value;

fn issuer_of(running: &Running) -> String {
    format!("{}/", running.base)
}

fn userinfo_of(running: &Running) -> String {
    format!("{}/userinfo", running.base)
}

// ---------------------------------------------------------------------------------------
// Discovery and keys

#[tokio::test]
async fn discovery_lists_every_endpoint_and_jwks_is_public_only() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gw = Running::start(&store.url, &Options::default()).await;
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let doc = get(&gw.url(path), None).await;
        assert_eq!(doc.status, 200);
        assert!(doc.header("cache-control").contains("max-age"), "{path}");
        let d = &doc.json;
        assert_eq!(d["issuer"], issuer_of(&gw));
        for (key, endpoint) in [
            ("authorization_endpoint", "/authorize"),
            ("token_endpoint", "/oauth/token"),
            ("userinfo_endpoint", "/userinfo"),
            ("jwks_uri", "/.well-known/jwks.json"),
            ("revocation_endpoint", "/oauth/revoke"),
            ("introspection_endpoint", "/oauth/introspect"),
            ("device_authorization_endpoint", "/oauth/device/code"),
            ("end_session_endpoint", "/logout"),
        ] {
            assert_eq!(d[key], gw.url(endpoint), "{key}");
        }
        assert_eq!(
            d["code_challenge_methods_supported"],
            serde_json::json!(["S256"])
        );
        assert_eq!(
            d["id_token_signing_alg_values_supported"],
            serde_json::json!(["RS256"])
        );
        for grant in [
            "authorization_code",
            "implicit",
            "password",
            "client_credentials",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ] {
            assert!(
                d["grant_types_supported"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|g| g == grant),
                "{grant}"
            );
        }
        for method in ["client_secret_basic", "client_secret_post", "none"] {
            assert!(
                d["token_endpoint_auth_methods_supported"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|g| g == method)
            );
        }
        for rt in ["code", "token", "id_token", "id_token token"] {
            assert!(
                d["response_types_supported"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|g| g == rt)
            );
        }
    }
    let jwks = get(&gw.url("/.well-known/jwks.json"), None).await;
    assert_eq!(jwks.status, 200);
    assert!(jwks.header("cache-control").starts_with("public, max-age="));
    let keys = jwks.json["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = keys[0].as_object().unwrap();
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));
    assert_eq!(key["alg"], "RS256");
    assert_eq!(key["use"], "sig");
    for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
        assert!(
            !key.contains_key(private),
            "private member {private} served"
        );
    }
    // Endpoints refuse other methods with 405 and Allow.
    let r = get(&gw.url("/oauth/token"), None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), "POST");
    gw.stop().await;
}

#[tokio::test]
async fn es256_and_eddsa_issuers_sign_verifiable_tokens() {
    for algorithm in ["ES256", "EdDSA"] {
        let store = TestStore::new(Backend::Sqlite).await;
        let options = Options {
            algorithm,
            ..Options::default()
        };
        let gw = Running::start(&store.url, &options).await;
        let jwks = gw.jwks().await;
        assert_eq!(jwks["keys"][0]["alg"], algorithm);
        let tokens = gw
            .login("alice", ALICE_PASSWORD, "openid read:contacts")
            .await;
        let at = tokens["access_token"].as_str().unwrap();
        let (header, _) = verify_independently(&jwks, at, &issuer_of(&gw), &[CONTACTS]);
        assert_eq!(format!("{:?}", header.alg), algorithm);
        let id = tokens["id_token"].as_str().unwrap();
        let (_, claims) = verify_independently(&jwks, id, &issuer_of(&gw), &["cli"]);
        assert_eq!(
            claims["at_hash"],
            scopegate::issuer::mint::at_hash(
                scopegate::jose::Alg::from_name(algorithm).unwrap(),
                at
            )
        );
        let echo = get(&gw.url("/api/contacts/1"), Some(at)).await;
        assert_eq!(echo.status, 200, "{:?}", echo.json);
        gw.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// client_credentials and the token endpoint's rules

#[tokio::test]
async fn client_credentials_issues_machine_tokens() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gw = Running::start(&store.url, &Options::default()).await;
    let answer = gw
        .token(
            &[("grant_type", "client_credentials"), ("audience", CONTACTS)],
            Some(("m2m", M2M_SECRET)),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("cache-control"), "no-store");
    assert_eq!(answer.header("pragma"), "no-cache");
    assert_eq!(answer.json["token_type"], "Bearer");
    assert_eq!(answer.json["expires_in"], 3600);
    assert_eq!(answer.json["scope"], "read:contacts write:contacts");
    assert!(answer.json.get("refresh_token").is_none() && answer.json.get("id_token").is_none());
    let at = answer.json["access_token"].as_str().unwrap();
    let (header, claims) = verify_independently(&gw.jwks().await, at, &issuer_of(&gw), &[CONTACTS]);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(claims["sub"], "m2m@clients");
    assert_eq!(claims["aud"], CONTACTS);
    assert_eq!(claims["azp"], "m2m");
    assert_eq!(claims["client_id"], "m2m");
    assert_eq!(claims["scope"], "read:contacts write:contacts");
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );

    // Requested ∩ granted; client_secret_post works too.
    let answer = gw
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "m2m"),
                ("client_secret", M2M_SECRET),
                ("resource", CONTACTS),
                ("scope", "read:contacts delete:contacts"),
            ],
            None,
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(answer.json["scope"], "read:contacts");
    // Only ungranted scopes: invalid_scope.
    let answer = gw
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("audience", CONTACTS),
                ("scope", "delete:contacts"),
            ],
            Some(("m2m", M2M_SECRET)),
        )
        .await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_scope"));
    // No grant for that API.
    let answer = gw
        .token(
            &[("grant_type", "client_credentials"), ("audience", CALENDAR)],
            Some(("m2m", M2M_SECRET)),
        )
        .await;
    assert_eq!((answer.status, answer.error()), (403, "access_denied"));
    // Unknown API; no API at all.
    let answer = gw
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("audience", "https://nope"),
            ],
            Some(("m2m", M2M_SECRET)),
        )
        .await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_target"));
    let answer = gw
        .token(
            &[("grant_type", "client_credentials")],
            Some(("m2m", M2M_SECRET)),
        )
        .await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_request"));

    // The proxy accepts the machine token on a scoped route and forwards its identity.
    let echo = get(&gw.url("/api/contacts/7"), Some(at)).await;
    assert_eq!(echo.status, 200, "{:?}", echo.json);
    assert_eq!(echo.json["headers"]["x-auth-subject"], "m2m@clients");
    assert_eq!(echo.json["headers"]["x-auth-client-id"], "m2m");
    assert_eq!(echo.json["headers"]["x-auth-issuer"], issuer_of(&gw));
    let denied = request("DELETE", &gw.url("/api/contacts/7"), Some(at)).await;
    assert_eq!(denied.status, 403);

    let metrics = gw.gateway.metrics.render();
    assert!(
        metrics.contains("scopegate_tokens_issued_total{grant_type=\"client_credentials\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "scopegate_token_errors_total{error=\"access_denied\",grant_type=\"client_credentials\"} 1"
    ));
    assert!(metrics.contains("route=\"issuer\""));
    gw.stop().await;
}

#[tokio::test]
async fn token_endpoint_refuses_bad_requests_without_state_change() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gw = Running::start(&store.url, &Options::default()).await;
    let cc = [("grant_type", "client_credentials"), ("audience", CONTACTS)];

    // Client authentication failures: 401 invalid_client with a Basic challenge.
    for auth in [
        Some(("m2m", "wrong-secret")),
        Some(("nobody", "whatever-secret")),
        None,
    ] {
        let answer = gw.token(&cc, auth).await;
        assert_eq!(
            (answer.status, answer.error()),
            (401, "invalid_client"),
            "{auth:?}"
        );
        assert!(
            answer
                .header("www-authenticate")
                .starts_with("Basic realm=")
        );
        assert_eq!(answer.header("cache-control"), "no-store");
    }
    // A confidential client without its secret.
    let answer = gw
        .token(
            &[("grant_type", "client_credentials"), ("client_id", "m2m")],
            None,
        )
        .await;
    assert_eq!((answer.status, answer.error()), (401, "invalid_client"));
    // Two authentication methods at once.
    let answer = gw
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("audience", CONTACTS),
                ("client_secret", M2M_SECRET),
            ],
            Some(("m2m", M2M_SECRET)),
        )
        .await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_request"));
    // A grant type the client may not use; one nobody knows; none at all.
    let answer = gw
        .token(
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
            ],
            Some(("m2m", M2M_SECRET)),
        )
        .await;
    assert_eq!(
        (answer.status, answer.error()),
        (400, "unauthorized_client")
    );
    let answer = gw
        .token(&[("grant_type", "magic")], Some(("m2m", M2M_SECRET)))
        .await;
    assert_eq!(
        (answer.status, answer.error()),
        (400, "unsupported_grant_type")
    );
    let answer = gw
        .token(&[("audience", CONTACTS)], Some(("m2m", M2M_SECRET)))
        .await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_request"));
    // The public client may not use client_credentials (not listed).
    let answer = gw
        .token(
            &[("grant_type", "client_credentials"), ("client_id", "cli")],
            None,
        )
        .await;
    assert_eq!(
        (answer.status, answer.error()),
        (400, "unauthorized_client")
    );

    // Only forms; duplicate parameters; oversized bodies; broken encoding.
    let token_url = gw.url("/oauth/token");
    let json = post_raw(
        &token_url,
        "application/json",
        r#"{"grant_type":"client_credentials"}"#.into(),
        Some(basic("m2m", M2M_SECRET)),
    )
    .await;
    assert_eq!((json.status, json.error()), (400, "invalid_request"));
    assert_eq!(json.header("cache-control"), "no-store");
    let dup = post_raw(
        &token_url,
        "application/x-www-form-urlencoded",
        format!("grant_type=client_credentials&audience={CONTACTS}&audience={CALENDAR}"),
        Some(basic("m2m", M2M_SECRET)),
    )
    .await;
    assert_eq!((dup.status, dup.error()), (400, "invalid_request"));
    let big = post_raw(
        &token_url,
        "application/x-www-form-urlencoded",
        format!(
            "grant_type=client_credentials&pad={}",
            "x".repeat(64 * 1024)
        ),
        Some(basic("m2m", M2M_SECRET)),
    )
    .await;
    assert_eq!((big.status, big.error()), (400, "invalid_request"));
    let bad = post_raw(
        &token_url,
        "application/x-www-form-urlencoded",
        "grant_type=%zz".into(),
        None,
    )
    .await;
    assert_eq!((bad.status, bad.error()), (400, "invalid_request"));
    let bad_scope = gw
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("audience", CONTACTS),
                ("scope", "read\"x"),
            ],
            Some(("m2m", M2M_SECRET)),
        )
        .await;
    assert_eq!(
        (bad_scope.status, bad_scope.error()),
        (400, "invalid_scope")
    );
    let metrics = gw.gateway.metrics.render();
    assert!(
        !metrics.contains("scopegate_tokens_issued_total{"),
        "nothing was issued: {metrics}"
    );
    assert!(metrics.contains(
        "scopegate_token_errors_total{error=\"invalid_client\",grant_type=\"client_credentials\"}"
    ));
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// password

async fn password_grant_issues_user_tokens(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gw = Running::start(&store.url, &Options::default()).await;
    let jwks = gw.jwks().await;
    // alice is a reader: write:contacts is requested but not granted.
    let tokens = gw
        .login(
            "alice",
            ALICE_PASSWORD,
            "openid profile email read:contacts write:contacts offline_access bogus",
        )
        .await;
    assert_eq!(
        tokens["scope"],
        "openid profile email read:contacts offline_access"
    );
    let at = tokens["access_token"].as_str().unwrap();
    let (header, claims) = verify_independently(&jwks, at, &issuer_of(&gw), &[CONTACTS]);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(claims["sub"], "user|alice");
    assert_eq!(
        claims["aud"],
        serde_json::json!([CONTACTS, userinfo_of(&gw)])
    );
    assert_eq!(claims["azp"], "cli");
    assert_eq!(
        claims["scope"],
        "openid profile email read:contacts offline_access"
    );
    assert_eq!(
        claims["https://contacts.example.com/roles"],
        serde_json::json!(["reader"])
    );
    assert!(
        claims.get("email").is_none(),
        "profile claims stay out of access tokens"
    );

    let id = tokens["id_token"].as_str().unwrap();
    let (id_header, id_claims) = verify_independently(&jwks, id, &issuer_of(&gw), &["cli"]);
    assert_eq!(id_header.typ.as_deref(), Some("JWT"));
    assert_eq!(id_claims["aud"], "cli");
    assert_eq!(id_claims["sub"], "user|alice");
    assert!(id_claims["auth_time"].as_i64().is_some());
    assert_eq!(
        id_claims["at_hash"],
        scopegate::issuer::mint::at_hash(scopegate::jose::Alg::RS256, at)
    );
    assert_eq!(id_claims["name"], "Alice Liddell");
    assert_eq!(id_claims["email"], "alice@example.com");
    assert_eq!(id_claims["email_verified"], true);
    assert_eq!(
        id_claims["https://contacts.example.com/favorite_color"],
        "blue"
    );
    assert!(tokens["refresh_token"].as_str().is_some());

    // The proxy: reading is allowed, writing needs a scope alice's roles lack.
    let echo = get(&gw.url("/api/contacts/1?x=1"), Some(at)).await;
    assert_eq!(echo.status, 200, "{:?}", echo.json);
    assert_eq!(echo.json["path"], "/contacts/1?x=1");
    assert_eq!(echo.json["headers"]["x-auth-subject"], "user|alice");
    assert_eq!(
        echo.json["headers"]["x-auth-scopes"],
        "openid profile email read:contacts offline_access"
    );
    assert_eq!(echo.json["headers"]["x-auth-roles"], "[\"reader\"]");
    let denied = request("POST", &gw.url("/api/contacts/1"), Some(at)).await;
    assert_eq!(denied.status, 403);
    assert!(
        denied
            .header("www-authenticate")
            .contains("insufficient_scope")
    );
    // The ID token is never an access token.
    assert_eq!(get(&gw.url("/api/contacts/1"), Some(id)).await.status, 401);

    // bob (editor) may write, by email login, without openid: no ID token, aud a string.
    let answer = gw
        .token(
            &[
                ("grant_type", "password"),
                ("client_id", "web"),
                ("client_secret", WEB_SECRET),
                ("username", "BOB@example.com"),
                ("password", BOB_PASSWORD),
                ("audience", CONTACTS),
                ("scope", "read:contacts write:contacts delete:contacts"),
            ],
            None,
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(answer.json["scope"], "read:contacts write:contacts");
    assert!(answer.json.get("id_token").is_none() && answer.json.get("refresh_token").is_none());
    let bob_at = answer.json["access_token"].as_str().unwrap();
    let (_, bob) = verify_independently(&jwks, bob_at, &issuer_of(&gw), &[CONTACTS]);
    assert_eq!(bob["sub"], "bob-0001");
    assert_eq!(bob["aud"], CONTACTS);
    assert_eq!(
        request("POST", &gw.url("/api/contacts/1"), Some(bob_at))
            .await
            .status,
        200
    );
    assert_eq!(
        request("DELETE", &gw.url("/api/contacts/1"), Some(bob_at))
            .await
            .status,
        403
    );

    // No audience and no default: a token good for /userinfo only.
    let answer = gw
        .token(
            &[
                ("grant_type", "password"),
                ("client_id", "cli"),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
                ("scope", "openid offline_access"),
            ],
            None,
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json["scope"], "openid",
        "no offline access without an API"
    );
    let (_, c) = verify_independently(
        &jwks,
        answer.json["access_token"].as_str().unwrap(),
        &issuer_of(&gw),
        &[&userinfo_of(&gw)],
    );
    assert_eq!(c["aud"], userinfo_of(&gw));
    // An API without allow_offline_access gives no refresh token.
    let answer = gw
        .token(
            &[
                ("grant_type", "password"),
                ("client_id", "cli"),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
                ("audience", CALENDAR),
                ("scope", "read:calendar offline_access"),
            ],
            None,
        )
        .await;
    assert_eq!(answer.json["scope"], "read:calendar");
    assert!(answer.json.get("refresh_token").is_none());

    // Wrong password, unknown user, missing fields.
    for (user, password) in [("alice", "wrong"), ("mallory", "whatever")] {
        let answer = gw
            .token(
                &[
                    ("grant_type", "password"),
                    ("client_id", "cli"),
                    ("username", user),
                    ("password", password),
                ],
                None,
            )
            .await;
        assert_eq!(
            (answer.status, answer.error()),
            (400, "invalid_grant"),
            "{user}"
        );
        assert_eq!(
            answer.json["error_description"],
            "wrong username or password"
        );
    }
    let answer = gw
        .token(
            &[
                ("grant_type", "password"),
                ("client_id", "cli"),
                ("username", "alice"),
            ],
            None,
        )
        .await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_request"));
    gw.stop().await;
}

async fn password_failures_lock_out_user_and_ip(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gw = Running::start(&store.url, &Options::default()).await; // max_failures: 3
    let attempt = |user: &'static str, password: &'static str| {
        let url = gw.url("/oauth/token");
        async move {
            post_form(
                &url,
                &[
                    ("grant_type", "password"),
                    ("client_id", "cli"),
                    ("username", user),
                    ("password", password),
                ],
                None,
            )
            .await
        }
    };
    for _ in 0..3 {
        assert_eq!(attempt("alice", "wrong").await.error(), "invalid_grant");
    }
    // Locked: even the right password is refused, with 429 and Retry-After.
    let locked = attempt("alice", ALICE_PASSWORD).await;
    assert_eq!((locked.status, locked.error()), (429, "invalid_grant"));
    assert!(
        locked
            .header("retry-after")
            .parse::<u64>()
            .is_ok_and(|s| s > 0 && s <= 600)
    );
    assert_eq!(locked.header("cache-control"), "no-store");
    // The IP is locked too (3 failures from 127.0.0.1), for every user.
    let other = attempt("bob", BOB_PASSWORD).await;
    assert_eq!(other.status, 429);
    // An unknown user is answered exactly like a known one.
    let store2 = TestStore::new(backend).await;
    let gw2 = Running::start(&store2.url, &Options::default()).await;
    for user in ["alice", "mallory"] {
        let started = std::time::Instant::now();
        let answer = post_form(
            &gw2.url("/oauth/token"),
            &[
                ("grant_type", "password"),
                ("client_id", "cli"),
                ("username", user),
                ("password", "wrong"),
            ],
            None,
        )
        .await;
        assert_eq!(
            (answer.status, answer.json.clone()),
            (
                400,
                serde_json::json!({"error": "invalid_grant", "error_description": "wrong username or password"})
            )
        );
        // Both paths run argon2 (the unknown user against a dummy hash).
        assert!(
            started.elapsed() > std::time::Duration::from_millis(5),
            "{user}"
        );
    }
    gw.stop().await;
    gw2.stop().await;
}

// ---------------------------------------------------------------------------------------
// refresh_token

async fn refresh_tokens_rotate_and_reuse_revokes_the_family(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gw = Running::start(&store.url, &Options::default()).await;
    let tokens = gw
        .login(
            "alice",
            ALICE_PASSWORD,
            "openid profile read:contacts offline_access",
        )
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
    // Reusing a spent token revokes the whole family, rt3 included.
    let reuse = refresh(rt1.clone(), None).await;
    assert_eq!((reuse.status, reuse.error()), (400, "invalid_grant"));
    let dead = refresh(rt3, None).await;
    assert_eq!((dead.status, dead.error()), (400, "invalid_grant"));
    let unknown = refresh("not-a-token".into(), None).await;
    assert_eq!((unknown.status, unknown.error()), (400, "invalid_grant"));
    gw.stop().await;
}

async fn parallel_refresh_redemptions_have_one_winner(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gw = Running::start(&store.url, &Options::default()).await;
    let tokens = gw
        .login("alice", ALICE_PASSWORD, "read:contacts offline_access")
        .await;
    let rt = tokens["refresh_token"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = gw.url("/oauth/token");
        let rt = rt.clone();
        tasks.push(tokio::spawn(async move {
            post_form(
                &url,
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", "cli"),
                    ("refresh_token", rt.as_str()),
                ],
                None,
            )
            .await
        }));
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
    let tokens = gw
        .login("alice", ALICE_PASSWORD, "read:contacts offline_access")
        .await;
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
    let answer = post_form(
        &gw.url("/oauth/token"),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "cli"),
            ("refresh_token", rt.as_str()),
        ],
        None,
    )
    .await;
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
    let store = TestStore::new(backend).await;
    let gw = Running::start(&store.url, &Options::default()).await;
    let alice = gw
        .login("alice", ALICE_PASSWORD, "openid read:contacts")
        .await;
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

    // Forged, ID token, machine token, garbage: invalid_grant.
    let mut forged = subject.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let machine = gw.machine_token().await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let id_token = gw.login("alice", ALICE_PASSWORD, "openid").await["id_token"]
        .as_str()
        .unwrap()
        .to_string();
    for bad in [forged, machine, id_token, "garbage".to_string()] {
        let answer = exchange(bad, CALENDAR, None).await;
        assert_eq!(
            (answer.status, answer.error()),
            (400, "invalid_grant"),
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
    assert_eq!((answer.status, answer.error()), (400, "invalid_grant"));

    // An expired subject token (the short API's tokens live 1s).
    let short = gw
        .token(
            &[
                ("grant_type", "password"),
                ("client_id", "cli"),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
                ("audience", SHORT),
                ("scope", "read:short"),
            ],
            None,
        )
        .await;
    let short_at = short.json["access_token"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let answer = exchange(short_at, CALENDAR, None).await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_grant"));
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Introspection, userinfo, revocation

async fn introspection_userinfo_and_revocation(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gw = Running::start(&store.url, &Options::default()).await;
    let introspect = |token: String, auth: Option<(&'static str, &'static str)>| {
        let url = gw.url("/oauth/introspect");
        async move { post_form(&url, &[("token", token.as_str())], auth).await }
    };
    let tokens = gw
        .login(
            "alice",
            ALICE_PASSWORD,
            "openid profile email read:contacts offline_access",
        )
        .await;
    let at = tokens["access_token"].as_str().unwrap().to_string();
    let rt = tokens["refresh_token"].as_str().unwrap().to_string();

    // Introspection needs a confidential client.
    let answer = post_form(
        &gw.url("/oauth/introspect"),
        &[("token", at.as_str()), ("client_id", "cli")],
        None,
    )
    .await;
    assert_eq!((answer.status, answer.error()), (401, "invalid_client"));
    let answer = introspect(at.clone(), None).await;
    assert_eq!(answer.status, 401);

    let active = introspect(at.clone(), Some(("m2m", M2M_SECRET))).await;
    assert_eq!(active.status, 200);
    assert_eq!(active.header("cache-control"), "no-store");
    assert_eq!(active.json["active"], true);
    assert_eq!(active.json["sub"], "user|alice");
    assert_eq!(active.json["client_id"], "cli");
    assert_eq!(active.json["username"], "alice");
    assert_eq!(
        active.json["scope"],
        "openid profile email read:contacts offline_access"
    );
    // Refresh tokens: active for their own client only.
    let refresh_web = introspect(rt.clone(), Some(("web", WEB_SECRET))).await;
    assert_eq!(refresh_web.json, serde_json::json!({"active": false}));

    // userinfo by GET and POST.
    for method in ["GET", "POST"] {
        let info = request(method, &gw.url("/userinfo"), Some(&at)).await;
        assert_eq!(info.status, 200, "{method}");
        assert_eq!(info.json["sub"], "user|alice");
        assert_eq!(info.json["name"], "Alice Liddell");
        assert_eq!(info.json["email"], "alice@example.com");
        assert_eq!(
            info.json["https://contacts.example.com/favorite_color"],
            "blue"
        );
    }
    // openid only: sub and custom claims, no profile or email.
    let slim = gw
        .login("alice", ALICE_PASSWORD, "openid read:contacts")
        .await;
    let info = get(&gw.url("/userinfo"), slim["access_token"].as_str()).await;
    assert_eq!(info.status, 200);
    assert!(info.json.get("email").is_none() && info.json.get("name").is_none());
    // Without openid the token is not for /userinfo; a machine token neither.
    let no_openid = gw.login("alice", ALICE_PASSWORD, "read:contacts").await;
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

    // Revocation: another client's token is refused and stays valid.
    let other = post_form(
        &gw.url("/oauth/revoke"),
        &[("token", at.as_str())],
        Some(("web", WEB_SECRET)),
    )
    .await;
    assert_eq!((other.status, other.error()), (400, "unauthorized_client"));
    assert_eq!(
        introspect(at.clone(), Some(("m2m", M2M_SECRET))).await.json["active"],
        true
    );
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
    assert_eq!(
        introspect(at.clone(), Some(("m2m", M2M_SECRET))).await.json,
        serde_json::json!({"active": false})
    );
    assert_eq!(get(&gw.url("/userinfo"), Some(&at)).await.status, 401);

    // Refresh: rotate, then revoke the new one: the family dies.
    let rotated = post_form(
        &gw.url("/oauth/token"),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "cli"),
            ("refresh_token", rt.as_str()),
        ],
        None,
    )
    .await;
    let rt2 = rotated.json["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        introspect(rt.clone(), Some(("web", WEB_SECRET))).await.json["active"],
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
    let again = post_form(
        &gw.url("/oauth/token"),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "cli"),
            ("refresh_token", rt2.as_str()),
        ],
        None,
    )
    .await;
    assert_eq!(again.error(), "invalid_grant");

    // Foreign and expired tokens are inactive.
    let foreign_issuer = TestStore::new(Backend::Sqlite).await;
    let elsewhere = Running::start(&foreign_issuer.url, &Options::default()).await;
    let foreign = elsewhere.machine_token().await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        introspect(foreign, Some(("m2m", M2M_SECRET))).await.json,
        serde_json::json!({"active": false})
    );
    elsewhere.stop().await;
    let short = gw
        .token(
            &[
                ("grant_type", "password"),
                ("client_id", "cli"),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
                ("audience", SHORT),
                ("scope", "openid read:short"),
            ],
            None,
        )
        .await;
    let short_at = short.json["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        introspect(short_at.clone(), Some(("m2m", M2M_SECRET)))
            .await
            .json["active"],
        true
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        introspect(short_at.clone(), Some(("m2m", M2M_SECRET)))
            .await
            .json,
        serde_json::json!({"active": false})
    );
    assert_eq!(get(&gw.url("/userinfo"), Some(&short_at)).await.status, 401);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Key rotation and reloads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_and_old_keys_stay_published() {
    let store = TestStore::new(Backend::Sqlite).await;
    // rotate_after must exceed access_ttl (1h in the test config), so rotate by changing
    // the algorithm, which retires the RS256 key at once.
    let gw = Running::start(&store.url, &Options::default()).await;
    let before = gw.machine_token().await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let old_kid = jsonwebtoken::decode_header(&before).unwrap().kid.unwrap();
    let yaml = config_yaml(
        gw.addr.port(),
        &store.url,
        &Options {
            algorithm: "ES256",
            ..Options::default()
        },
    );
    let config = scopegate::config::Config::from_yaml_with_env(&yaml, |_| None).unwrap();
    // A keys change builds a new issuer core on the same store.
    gw.gateway.apply(config).await.unwrap();
    let after = gw.machine_token().await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let header = jsonwebtoken::decode_header(&after).unwrap();
    assert_eq!(format!("{:?}", header.alg), "ES256");
    assert_ne!(header.kid.as_deref(), Some(old_kid.as_str()));
    let jwks = gw.jwks().await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()),
        "the retired key is still published: {kids:?}"
    );
    // Both the old and the new token pass the proxy.
    assert_eq!(
        get(&gw.url("/api/contacts/1"), Some(&before)).await.status,
        200
    );
    assert_eq!(
        get(&gw.url("/api/contacts/1"), Some(&after)).await.status,
        200
    );
    verify_independently(&jwks, &before, &issuer_of(&gw), &[CONTACTS]);
    verify_independently(&jwks, &after, &issuer_of(&gw), &[CONTACTS]);

    let yaml = config_yaml(
        gw.addr.port(),
        &store.url,
        &Options {
            algorithm: "EdDSA",
            ..Options::default()
        },
    );
    let config = scopegate::config::Config::from_yaml_with_env(&yaml, |_| None).unwrap();
    gw.gateway.apply(config).await.unwrap();
    let third = gw.machine_token().await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        format!("{:?}", jsonwebtoken::decode_header(&third).unwrap().alg),
        "EdDSA"
    );
    assert_eq!(gw.jwks().await["keys"].as_array().unwrap().len(), 3);
    for token in [&before, &after, &third] {
        assert_eq!(
            get(&gw.url("/api/contacts/1"), Some(token)).await.status,
            200
        );
    }
    gw.stop().await;
}

/// `Gateway::start` builds the issuer on a current-thread runtime (`workers: 1`).
#[tokio::test]
async fn gateway_start_builds_the_issuer_on_a_current_thread_runtime() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let store = TestStore::new(backend).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let yaml = config_yaml(addr.port(), &store.url, &Options::default());
        let config = scopegate::config::Config::from_yaml_with_env(&yaml, |_| None).unwrap();
        let gateway = scopegate::Gateway::start(config, None).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(scopegate::serve(listener, gateway.clone(), async {
            let _ = rx.await;
        }));
        let base = format!("http://{addr}");
        let answer = post_form(
            &format!("{base}/oauth/token"),
            &[
                ("grant_type", "password"),
                ("client_id", "cli"),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
                ("audience", CONTACTS),
                ("scope", "read:contacts offline_access"),
            ],
            None,
        )
        .await;
        assert_eq!(answer.status, 200, "{backend:?}: {:?}", answer.json);
        let at = answer.json["access_token"].as_str().unwrap();
        assert_eq!(
            get(&format!("{base}/api/contacts/1"), Some(at))
                .await
                .status,
            200
        );
        let _ = tx.send(());
        let _ = server.await;
    }
}

#[test]
fn the_demo_config_enables_the_issuer() {
    let config = scopegate::config::Config::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/gateway.yaml"
    )))
    .unwrap();
    let issuer = config.issuer.as_ref().unwrap();
    assert!(issuer.enabled);
    assert_eq!(issuer.url, "http://127.0.0.1:8080/");
    assert!(config.trust.issuers.is_empty());
    assert_eq!(
        issuer.clients[1].client_secret.as_deref(),
        Some("demo-m2m-secret")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reuses_the_issuer_core() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gw = Running::start(&store.url, &Options::default()).await;
    let core = gw
        .gateway
        .state()
        .pipeline
        .issuer
        .as_ref()
        .unwrap()
        .core
        .clone();
    // Same config: the same issuer. Users changed: same store and keys, new model.
    let yaml = config_yaml(gw.addr.port(), &store.url, &Options::default());
    gw.gateway
        .apply(scopegate::config::Config::from_yaml_with_env(&yaml, |_| None).unwrap())
        .await
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &gw.gateway.state().pipeline.issuer.as_ref().unwrap().core,
        &core
    ));
    let fewer = config_yaml(
        gw.addr.port(),
        &store.url,
        &Options {
            max_failures: 7,
            ..Options::default()
        },
    );
    gw.gateway
        .apply(scopegate::config::Config::from_yaml_with_env(&fewer, |_| None).unwrap())
        .await
        .unwrap();
    let state = gw.gateway.state();
    let issuer = state.pipeline.issuer.as_ref().unwrap();
    assert!(std::sync::Arc::ptr_eq(&issuer.core, &core));
    assert_eq!(issuer.model.throttle.max_failures, 7);
    let token = gw.machine_token().await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&gw.url("/api/contacts/1"), Some(&token)).await.status,
        200
    );
    gw.stop().await;
}

#[test]
fn check_names_routes_the_issuer_endpoints_take() {
    let yaml = config_yaml(
        8080,
        "sqlite://x.db",
        &Options {
            extra_routes: "  - name: everything\n    match: { path: /* }\n    upstream: builtin:echo\n    auth: none\n  - name: oauth\n    match: { path: /oauth/* }\n    upstream: builtin:echo\n    auth: none\n",
            ..Options::default()
        },
    );
    let config = scopegate::config::Config::from_yaml_with_env(&yaml, |_| None).unwrap();
    let table = scopegate::state::State::compile(
        config,
        &scopegate::state::Shared::new(Default::default(), Default::default()).unwrap(),
        None,
        scopegate::state::Builtin::Absent,
    )
    .unwrap()
    .route_table();
    assert!(
        table.contains("note: route \"everything\" does not get /authorize /oauth/token"),
        "{table}"
    );
    assert!(table.contains("note: route \"oauth\" does not get /oauth/token /oauth/revoke /oauth/introspect /oauth/device/code: the issuer serves it\n"), "{table}");
    assert!(
        !table.contains("route \"read-contacts\" does not get"),
        "{table}"
    );
    // The built-in issuer may not also be listed under trust.issuers.
    let twice = yaml.replace(
        "routes:",
        "trust:\n  issuers:\n    - { issuer: \"http://127.0.0.1:8080/\", audiences: [x] }\nroutes:",
    );
    let err = scopegate::config::Config::from_yaml_with_env(&twice, |_| None).unwrap_err();
    assert_eq!(err.path, "trust.issuers[0].issuer", "{err}");
}

/// Two gateways on one store and one issuer URL (replicas): same keys, each accepts the
/// other's tokens, a rotation on one is picked up by the other on the first unknown
/// `kid`, refresh tokens redeem anywhere.
async fn replicas_share_keys_rotation_and_refresh_tokens(backend: Backend) {
    let store = TestStore::new(backend).await;
    let options = Options {
        issuer_url: Some("http://127.0.0.1:9/".into()),
        access_ttl: "1s",
        rotate_after: "2s",
        ..Options::default()
    };
    let a = Running::start(&store.url, &options).await;
    let b = Running::start(&store.url, &options).await;
    let kid = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    assert_eq!(a.jwks().await, b.jwks().await);
    let from_a = a.machine_token().await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&b.url("/api/contacts/1"), Some(&from_a)).await.status,
        200
    );
    let tokens = a
        .login("alice", ALICE_PASSWORD, "read:contacts offline_access")
        .await;
    let rt = tokens["refresh_token"].as_str().unwrap().to_string();

    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    a.issuer.core.keys.refresh().await.unwrap();
    let rotated = a.machine_token().await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(kid(&rotated), kid(&from_a), "rotated after rotate_after");
    // b has not refreshed yet: the unknown kid makes its proxy re-read the store.
    assert_eq!(
        get(&b.url("/api/contacts/1"), Some(&rotated)).await.status,
        200
    );
    let kids: Vec<String> = b.jwks().await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kids.contains(&kid(&from_a)) && kids.contains(&kid(&rotated)),
        "{kids:?}"
    );
    // b issues with the new key once it has refreshed, and redeems a's refresh token.
    b.issuer.core.keys.refresh().await.unwrap();
    let from_b = b.machine_token().await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(kid(&from_b), kid(&rotated));
    let answer = post_form(
        &b.url("/oauth/token"),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "cli"),
            ("refresh_token", rt.as_str()),
        ],
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    // ...exactly once: a sees it spent.
    let again = post_form(
        &a.url("/oauth/token"),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "cli"),
            ("refresh_token", rt.as_str()),
        ],
        None,
    )
    .await;
    assert_eq!(again.error(), "invalid_grant");
    a.stop().await;
    b.stop().await;
}

both_backends!(
    replicas_share_keys_rotation_and_refresh_tokens,
    password_grant_issues_user_tokens,
    password_failures_lock_out_user_and_ip,
    refresh_tokens_rotate_and_reuse_revokes_the_family,
    parallel_refresh_redemptions_have_one_winner,
    restart_keeps_keys_and_refresh_tokens,
    token_exchange_trades_for_another_api,
    introspection_userinfo_and_revocation,
);

#[allow(dead_code)]
fn unused(_: Value) {}
