//! The built-in issuer's token endpoint end to end: discovery and keys, the
//! client_credentials and password grants, the endpoint's refusals, and the password
//! lockout. The real gateway on 127.0.0.1:0, HTTP requests, issued tokens verified with
//! an independent JOSE implementation (`jsonwebtoken`) against the served JWKS, and
//! accepted or refused by the proxy's own routes. Everything that touches the store runs
//! against SQLite and PostgreSQL. Refresh tokens and token exchange are in
//! `issuer_refresh.rs`; introspection, userinfo and revocation in
//! `issuer_introspection.rs`; key rotation, reloads and replicas in `issuer_lifecycle.rs`.

mod common;

use common::issuer::*;

// ---------------------------------------------------------------------------------------
// Discovery and keys

#[tokio::test]
async fn discovery_lists_every_endpoint_and_jwks_is_public_only() {
    let gw = Running::fresh(Backend::Sqlite).await;
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
        let algs: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|k| k["alg"].as_str())
            .collect();
        assert!(algs.contains(&algorithm), "{algs:?}");
        // OpenID Connect Core §15.1: an RS256 key is kept beside it for ID tokens.
        assert!(algs.contains(&"RS256"), "{algs:?}");
        let tokens = gw.alice("openid read:contacts").await;
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
    let gw = Running::fresh(backend).await;
    let jwks = gw.jwks().await;
    // alice is a reader: write:contacts is requested but not granted.
    let tokens = gw
        .alice("openid profile email read:contacts write:contacts offline_access bogus")
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
    gw.stop().await;
}

/// Other users and requests: login by email without openid, no audience, an API without
/// offline access; and the refusals (wrong password, unknown user, missing fields).
async fn password_grant_variants_and_refusals(backend: Backend) {
    let gw = Running::fresh(backend).await;
    let jwks = gw.jwks().await;

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

both_backends!(
    password_grant_issues_user_tokens,
    password_grant_variants_and_refusals,
    password_failures_lock_out_user_and_ip,
);
