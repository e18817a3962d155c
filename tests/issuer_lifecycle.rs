//! The built-in issuer over time and across processes: key rotation with old keys still
//! published, reloads that reuse or rebuild the issuer core, `Gateway::start` building it,
//! the demo config, `check`'s notes on routes the issuer takes, and replicas sharing one
//! store.

mod common;

use common::issuer::*;

// ---------------------------------------------------------------------------------------
// Key rotation and reloads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_and_old_keys_stay_published() {
    let store = TestStore::new(Backend::Sqlite).await;
    // rotate_after must exceed access_ttl (1h in the test config), so rotate by changing
    // the algorithm, which retires the RS256 key at once.
    let gw = Running::start(&store.url, &Options::default()).await;
    let before = gw.machine_access_token().await;
    let old_kid = jsonwebtoken::decode_header(&before).unwrap().kid.unwrap();
    // A keys change builds a new issuer core on the same store.
    let options = Options {
        algorithm: "ES256",
        ..Options::default()
    };
    gw.apply_options(&store.url, &options).await;
    let after = gw.machine_access_token().await;
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

    let options = Options {
        algorithm: "EdDSA",
        ..Options::default()
    };
    gw.apply_options(&store.url, &options).await;
    let third = gw.machine_access_token().await;
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
        let tokens = login_at(
            &base,
            "alice",
            ALICE_PASSWORD,
            "read:contacts offline_access",
        )
        .await;
        let at = tokens["access_token"].as_str().unwrap();
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
    let token = gw.machine_access_token().await;
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
    assert!(table.contains("note: route \"oauth\" does not get /oauth/token /oauth/par /oauth/revoke /oauth/introspect /oauth/device/code: the issuer serves it\n"), "{table}");
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
    // One clock for both replicas, as one wall clock for two processes.
    let clock = scopegate::clock::Clock::manual();
    let a = Running::start_on(&store.url, &options, None, clock.clone())
        .await
        .expect("replica a starts");
    let b = Running::start_on(&store.url, &options, None, clock.clone())
        .await
        .expect("replica b starts");
    let kid = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    assert_eq!(a.jwks().await, b.jwks().await);
    let from_a = a.machine_access_token().await;
    assert_eq!(
        get(&b.url("/api/contacts/1"), Some(&from_a)).await.status,
        200
    );
    let tokens = a.alice("read:contacts offline_access").await;
    let rt = tokens["refresh_token"].as_str().unwrap().to_string();

    clock.advance(std::time::Duration::from_millis(2100));
    a.issuer.core.keys.refresh().await.unwrap();
    let rotated = a.machine_access_token().await;
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
    let from_b = b.machine_access_token().await;
    assert_eq!(kid(&from_b), kid(&rotated));
    let answer = cli_refresh(&b.base, &rt).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    // Within issuer.refresh_grace (5 s) a parallel redemption on a also gets a pair
    // (the store says when the token was spent)...
    let parallel = cli_refresh(&a.base, &rt).await;
    assert_eq!(parallel.status, 200, "{:?}", parallel.json);
    // ...after it, a sees it spent: reuse.
    clock.advance(std::time::Duration::from_secs(6));
    let again = cli_refresh(&a.base, &rt).await;
    assert_eq!(again.error(), "invalid_grant");
    a.stop().await;
    b.stop().await;
}

both_backends!(replicas_share_keys_rotation_and_refresh_tokens,);
