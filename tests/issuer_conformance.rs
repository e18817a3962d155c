//! Conformance details of the built-in issuer, each test naming the spec section it
//! holds the issuer to: request objects (OIDC Core §6), `max_age` (§3.1.2.1),
//! `id_token_hint` (§3.1.2.1), several `resource`s (RFC 8707 §2), token exchange
//! (RFC 8693 §2.2.2), `error_description`'s characters (RFC 6749 §5.2), path-inserted
//! metadata (RFC 8414 §3), the refresh grace window, the session lifetime and the sign-in
//! throttle behind trusted proxies. The real gateway on 127.0.0.1:0, real HTTP.

mod common;

use common::issuer::*;
#[allow(unused_imports)]
use serde_json::Value;

fn spa_code_request<'a>(
    challenge: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", "spa"),
        ("redirect_uri", SPA_CALLBACK),
        ("scope", "openid profile read:contacts"),
        ("audience", CONTACTS),
        ("state", "st-9"),
        ("nonce", "n-9"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ];
    params.extend_from_slice(extra);
    params
}

/// Signs alice in through `/authorize` and returns the final answer (a `303`).
async fn sign_in_alice(gw: &Running, browser: &mut Browser, params: &[(&str, &str)]) -> Answer {
    let page = browser.get(&authorize_url(gw, params)).await;
    assert_eq!(page.status, 200, "{}", page.text());
    browser
        .sign_in(&gw.base, &page, "alice", ALICE_PASSWORD)
        .await
}

// ---------------------------------------------------------------------------------------
// OpenID Connect Core §6.1 / §6.2: request objects are refused, not ignored.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_core_6_request_and_request_uri_are_refused() {
    let gw = Running::fresh(Backend::Sqlite).await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();

    let by_value = spa_code_request(&challenge, &[("request", "eyJhbGciOiJub25lIn0.e30.")]);
    let answer = browser.get(&authorize_url(&gw, &by_value)).await;
    assert_eq!(answer.status, 303, "{}", answer.text());
    let r = Redirect::of(&answer);
    assert_eq!(r.base, SPA_CALLBACK);
    assert_eq!(r.query["error"], "request_not_supported");
    assert_eq!(r.query["state"], "st-9");

    let by_reference = spa_code_request(&challenge, &[("request_uri", "https://rp.example.com/r")]);
    let r = Redirect::of(&browser.get(&authorize_url(&gw, &by_reference)).await);
    assert_eq!(r.query["error"], "request_uri_not_supported");
    assert_eq!(r.query["state"], "st-9");

    // An unregistered redirect_uri: the error page, never a redirect there.
    let mut unregistered = spa_code_request(&challenge, &[("request", "x.y.z")]);
    unregistered[2] = ("redirect_uri", "https://evil.example.com/cb");
    let page = browser.get(&authorize_url(&gw, &unregistered)).await;
    assert_eq!(page.status, 400, "{}", page.text());
    assert!(page.header("location").is_empty());

    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let doc = get(&gw.url(path), None).await.json;
        assert_eq!(doc["request_parameter_supported"], false, "{path}");
        assert_eq!(doc["request_uri_parameter_supported"], false, "{path}");
    }
    let errors = gw
        .issuer
        .core
        .metrics
        .token_errors_total
        .with_label_values(&["authorization_code", "request_not_supported"]);
    assert_eq!(errors.get(), 1);
}

// ---------------------------------------------------------------------------------------
// OpenID Connect Core §3.1.2.1: max_age=0 is prompt=login.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_core_3_1_2_1_max_age_zero_forces_a_fresh_sign_in() {
    let gw = Running::fresh(Backend::Sqlite).await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let params = spa_code_request(&challenge, &[]);
    let done = sign_in_alice(&gw, &mut browser, &params).await;
    assert!(Redirect::of(&done).query.contains_key("code"));

    // The same second as the sign-in: max_age=0 still shows the sign-in page.
    let zero = spa_code_request(&challenge, &[("max_age", "0")]);
    let page = browser.get(&authorize_url(&gw, &zero)).await;
    assert_eq!(page.status, 200, "max_age=0 must not reuse the session");
    assert!(page.text().contains("name=\"password\""));
    // ...and with prompt=none it is login_required.
    let silent = spa_code_request(&challenge, &[("max_age", "0"), ("prompt", "none")]);
    let r = Redirect::of(&browser.get(&authorize_url(&gw, &silent)).await);
    assert_eq!(r.query["error"], "login_required");
    // Signing in on that page answers (no loop back to the page).
    let done = browser
        .sign_in(&gw.base, &page, "alice", ALICE_PASSWORD)
        .await;
    assert!(Redirect::of(&done).query.contains_key("code"));

    // max_age=60: a 30 s old sign-in passes, a 61 s old one does not.
    let sixty = spa_code_request(&challenge, &[("max_age", "60")]);
    gw.clock.advance(std::time::Duration::from_secs(30));
    let again = browser.get(&authorize_url(&gw, &sixty)).await;
    assert!(Redirect::of(&again).query.contains_key("code"));
    gw.clock.advance(std::time::Duration::from_secs(31));
    assert_eq!(browser.get(&authorize_url(&gw, &sixty)).await.status, 200);
}

// ---------------------------------------------------------------------------------------
// OpenID Connect Core §3.1.2.1: id_token_hint.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_core_3_1_2_1_id_token_hint_must_match_the_session() {
    let gw = Running::fresh(Backend::Sqlite).await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    sign_in_alice(&gw, &mut browser, &spa_code_request(&challenge, &[])).await;
    let bob_id = gw.login("bob", BOB_PASSWORD, "openid").await["id_token"]
        .as_str()
        .unwrap()
        .to_string();
    let alice_id = gw.alice("openid").await["id_token"]
        .as_str()
        .unwrap()
        .to_string();

    // Another user's hint with prompt=none: login_required, never alice's code.
    let silent = spa_code_request(
        &challenge,
        &[("prompt", "none"), ("id_token_hint", &bob_id)],
    );
    let r = Redirect::of(&browser.get(&authorize_url(&gw, &silent)).await);
    assert_eq!(r.query["error"], "login_required");
    assert!(!r.query.contains_key("code"));
    // Without prompt=none: the sign-in page.
    let asked = spa_code_request(&challenge, &[("id_token_hint", &bob_id)]);
    assert_eq!(browser.get(&authorize_url(&gw, &asked)).await.status, 200);

    // Alice's own hint, even expired (the signature is ours): the code at once.
    gw.clock.advance(std::time::Duration::from_secs(11 * 3600));
    let own = spa_code_request(
        &challenge,
        &[("prompt", "none"), ("id_token_hint", &alice_id)],
    );
    let r = Redirect::of(&browser.get(&authorize_url(&gw, &own)).await);
    assert!(r.query.contains_key("code"), "{:?}", r.query);

    // Not signed by this issuer: invalid_request.
    let mut forged = alice_id.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for hint in [forged.as_str(), "not-a-jwt"] {
        let bad = spa_code_request(&challenge, &[("id_token_hint", hint)]);
        let r = Redirect::of(&browser.get(&authorize_url(&gw, &bad)).await);
        assert_eq!(r.query["error"], "invalid_request");
        assert_eq!(r.query["state"], "st-9");
    }
}

// ---------------------------------------------------------------------------------------
// RFC 8693 §2.2.2: token exchange — unacceptable subject tokens, and no widening.

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

async fn exchange(
    gw: &Running,
    subject_token: &str,
    audience: &str,
    scope: Option<&str>,
) -> Answer {
    let mut params = vec![
        ("grant_type", EXCHANGE),
        ("client_id", "cli"),
        ("subject_token", subject_token),
        ("subject_token_type", ACCESS),
        ("audience", audience),
    ];
    if let Some(scope) = scope {
        params.push(("scope", scope));
    }
    gw.token(&params, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_8693_2_2_2_exchange_never_widens_and_bad_subject_tokens_are_invalid_request() {
    let gw = Running::fresh(Backend::Sqlite).await;
    // bob's roles allow read and write at contacts; his token carries read only.
    let bob = gw.login("bob", BOB_PASSWORD, "read:contacts").await;
    let bob_read = bob["access_token"].as_str().unwrap();
    let same = exchange(&gw, bob_read, CONTACTS, None).await;
    assert_eq!(same.status, 200, "{:?}", same.json);
    assert_eq!(
        same.json["scope"], "read:contacts",
        "no widening at the same audience"
    );
    let asked = exchange(
        &gw,
        bob_read,
        CONTACTS,
        Some("read:contacts write:contacts"),
    )
    .await;
    assert_eq!(asked.status, 200, "{:?}", asked.json);
    assert_eq!(asked.json["scope"], "read:contacts");
    let only_more = exchange(&gw, bob_read, CONTACTS, Some("write:contacts")).await;
    assert_eq!(only_more.error(), "invalid_scope");

    // Another audience: requested ∩ API ∩ roles.
    let alice = gw.alice("read:contacts").await;
    let alice_read = alice["access_token"].as_str().unwrap();
    let other = exchange(&gw, alice_read, CALENDAR, None).await;
    assert_eq!(other.status, 200, "{:?}", other.json);
    assert_eq!(other.json["scope"], "read:calendar");
    assert_eq!(
        claims_of(other.json["access_token"].as_str().unwrap())["aud"],
        CALENDAR
    );

    // A machine subject: at the same audience narrowed, elsewhere ∩ its client's grant.
    let machine = gw.machine_access_token().await;
    let narrowed = exchange(&gw, &machine, CONTACTS, Some("read:contacts")).await;
    assert_eq!(narrowed.status, 200, "{:?}", narrowed.json);
    assert_eq!(narrowed.json["scope"], "read:contacts");
    assert_eq!(
        claims_of(narrowed.json["access_token"].as_str().unwrap())["sub"],
        "m2m@clients"
    );
    assert_eq!(
        exchange(&gw, &machine, CALENDAR, None).await.error(),
        "invalid_scope"
    );

    // Unacceptable subject tokens: invalid_request, counted.
    let mut forged = bob_read.to_string();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let id_token = gw.alice("openid").await["id_token"]
        .as_str()
        .unwrap()
        .to_string();
    for bad in [forged.as_str(), "garbage", id_token.as_str()] {
        let answer = exchange(&gw, bad, CONTACTS, None).await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.error(), "invalid_request", "{:?}", answer.json);
    }
    let revoked = gw.alice("read:contacts").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = post_form(
        &gw.url("/oauth/revoke"),
        &[("token", &revoked), ("client_id", "cli")],
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(
        exchange(&gw, &revoked, CONTACTS, None).await.error(),
        "invalid_request"
    );
    gw.clock.advance(std::time::Duration::from_secs(2 * 3600));
    assert_eq!(
        exchange(&gw, bob_read, CONTACTS, None).await.error(),
        "invalid_request"
    );
    let wrong_type = gw
        .token(
            &[
                ("grant_type", EXCHANGE),
                ("client_id", "cli"),
                ("subject_token", "x"),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:id_token",
                ),
                ("audience", CONTACTS),
            ],
            None,
        )
        .await;
    assert_eq!(wrong_type.error(), "invalid_request");
    let counted = gw
        .issuer
        .core
        .metrics
        .token_errors_total
        .with_label_values(&[EXCHANGE, "invalid_request"])
        .get();
    assert!(counted >= 6, "{counted}");
}

// ---------------------------------------------------------------------------------------
// RFC 8414 §3.1: path-inserted metadata for an issuer with a path.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_8414_3_1_path_inserted_metadata() {
    let store = TestStore::new(Backend::Sqlite).await;
    let issuer = "https://id.example.com/tenant/";
    let options = Options {
        issuer_url: Some(issuer.into()),
        ..Options::default()
    };
    let gw = Running::start(&store.url, &options).await;
    for path in [
        "/.well-known/oauth-authorization-server/tenant",
        "/.well-known/oauth-authorization-server/tenant/",
        "/tenant/.well-known/oauth-authorization-server",
        "/tenant/.well-known/openid-configuration",
        "/.well-known/openid-configuration/tenant",
    ] {
        let answer = get(&gw.url(path), None).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        assert_eq!(answer.json["issuer"], issuer, "{path}");
        assert_eq!(
            answer.json["token_endpoint"],
            "https://id.example.com/tenant/oauth/token"
        );
    }
    assert_eq!(
        get(
            &gw.url("/.well-known/oauth-authorization-server/other"),
            None
        )
        .await
        .status,
        404
    );
}

// ---------------------------------------------------------------------------------------
// issuer.refresh_grace: parallel refreshes of one token.

async fn refresh_grace_window(backend: Backend) {
    let gw = Running::fresh(backend).await;
    let tokens = gw.alice("read:contacts offline_access").await;
    let first = tokens["refresh_token"].as_str().unwrap().to_string();

    // Two parallel refreshes of one token: both get a valid pair.
    let (a, b) = tokio::join!(cli_refresh(&gw.base, &first), cli_refresh(&gw.base, &first));
    assert_eq!(a.status, 200, "{:?}", a.json);
    assert_eq!(b.status, 200, "{:?}", b.json);
    // A late loser, still within the window (5 s by default).
    gw.clock.advance(std::time::Duration::from_secs(3));
    let c = cli_refresh(&gw.base, &first).await;
    assert_eq!(c.status, 200, "{:?}", c.json);
    // Each new refresh token works (the family was not revoked).
    let next_a = a.json["refresh_token"].as_str().unwrap().to_string();
    let next_b = b.json["refresh_token"].as_str().unwrap().to_string();
    let after_a = cli_refresh(&gw.base, &next_a).await;
    assert_eq!(after_a.status, 200, "{:?}", after_a.json);
    let after_b = cli_refresh(&gw.base, &next_b).await;
    assert_eq!(after_b.status, 200, "{:?}", after_b.json);

    // Reuse after the window: the family is revoked.
    gw.clock.advance(std::time::Duration::from_secs(6));
    let late = cli_refresh(&gw.base, &next_a).await;
    assert_eq!(late.error(), "invalid_grant");
    let current = after_a.json["refresh_token"].as_str().unwrap();
    assert_eq!(
        cli_refresh(&gw.base, current).await.error(),
        "invalid_grant"
    );
}

both_backends!(refresh_grace_window);

// ---------------------------------------------------------------------------------------
// issuer.session.lifetime, and the new keys' validation.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_session_lifetime_is_configurable() {
    let store = TestStore::new(Backend::Sqlite).await;
    let options = Options {
        issuer_extra: "  session: { lifetime: 1h }",
        ..Options::default()
    };
    let gw = Running::start(&store.url, &options).await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let done = sign_in_alice(&gw, &mut browser, &spa_code_request(&challenge, &[])).await;
    let cookie = done
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("scopegate_session="))
        .expect("a session cookie");
    assert!(cookie.contains("Max-Age=3600"), "{cookie}");
    let silent = spa_code_request(&challenge, &[("prompt", "none")]);
    gw.clock.advance(std::time::Duration::from_secs(59 * 60));
    let r = Redirect::of(&browser.get(&authorize_url(&gw, &silent)).await);
    assert!(r.query.contains_key("code"));
    gw.clock.advance(std::time::Duration::from_secs(2 * 60));
    let r = Redirect::of(&browser.get(&authorize_url(&gw, &silent)).await);
    assert_eq!(r.query["error"], "login_required");
}

#[test]
fn new_issuer_keys_are_validated_with_their_key_path() {
    let base = "issuer:\n  url: https://id.example.com/\n";
    let load = |extra: &str| {
        scopegate::config::Config::from_yaml_with_env(&format!("{base}{extra}"), |_| None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(load("  session: { lifetime: 8h }\n  refresh_grace: 10s\n").is_ok());
    assert!(load("  refresh_grace: 0s\n").is_ok());
    let err = load("  session: { lifetime: 0s }\n").unwrap_err();
    assert!(err.contains("issuer.session.lifetime"), "{err}");
    let err = load("  refresh_grace: 10m\n").unwrap_err();
    assert!(err.contains("issuer.refresh_grace"), "{err}");
    let err = load("  session: { lifetime: 1h, sliding: true }\n").unwrap_err();
    assert!(err.contains("sliding"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The sign-in throttle keys on the client behind a trusted proxy.

async fn password_from(gw: &Running, forwarded_for: &str, user: &str, password: &str) -> Answer {
    let body = form_encode(&[
        ("grant_type", "password"),
        ("client_id", "cli"),
        ("username", user),
        ("password", password),
        ("audience", CONTACTS),
    ]);
    let request = http::Request::post(gw.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-for", forwarded_for)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttle_keys_on_the_client_behind_trusted_proxies() {
    let store = TestStore::new(Backend::Sqlite).await;
    let options = Options {
        server_extra: "  trusted_proxies: [127.0.0.1/32]",
        ..Options::default()
    };
    let gw = Running::start(&store.url, &options).await;
    // Three failures (max_failures: 3) from one client, each for another username.
    for user in ["nobody-1", "nobody-2", "nobody-3"] {
        let answer = password_from(&gw, "203.0.113.7", user, "wrong").await;
        assert_eq!(answer.error(), "invalid_grant");
    }
    // That client is locked out, right password or not...
    let locked = password_from(&gw, "203.0.113.7", "alice", ALICE_PASSWORD).await;
    assert_eq!(locked.status, 429, "{:?}", locked.json);
    // ...another client behind the same proxy is not.
    let other = password_from(&gw, "198.51.100.9", "alice", ALICE_PASSWORD).await;
    assert_eq!(other.status, 200, "{:?}", other.json);
}

// ---------------------------------------------------------------------------------------
// RFC 8707 §2: several resource parameters.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_8707_2_several_resources() {
    let gw = Running::fresh(Backend::Sqlite).await;
    let password = |resources: &[&'static str], scope: &'static str| {
        let mut params = vec![
            ("grant_type", "password"),
            ("client_id", "cli"),
            ("username", "alice"),
            ("password", ALICE_PASSWORD),
            ("scope", scope),
        ];
        params.extend(resources.iter().map(|r| ("resource", *r)));
        let url = gw.url("/oauth/token");
        async move { post_form(&url, &params, None).await }
    };
    let both = password(&[CONTACTS, CALENDAR], "openid read:contacts read:calendar").await;
    assert_eq!(both.status, 200, "{:?}", both.json);
    assert_eq!(both.json["scope"], "openid read:contacts read:calendar");
    let access = both.json["access_token"].as_str().unwrap();
    let aud = claims_of(access)["aud"].clone();
    assert_eq!(
        aud,
        serde_json::json!([CONTACTS, CALENDAR, userinfo_of(&gw)]),
        "{aud}"
    );
    assert!(both.json["id_token"].is_string());
    // The proxy takes it at both APIs.
    assert_eq!(
        get(&gw.url("/api/contacts/1"), Some(access)).await.status,
        200
    );
    assert_eq!(
        get(&gw.url("/api/calendar/1"), Some(access)).await.status,
        200
    );

    // Unknown resource, scopes that fit none of them, a refresh token: invalid_target.
    let unknown = password(&[CONTACTS, "https://nowhere.example.com"], "read:contacts").await;
    assert_eq!(unknown.error(), "invalid_target", "{:?}", unknown.json);
    let misfit = password(&[CONTACTS, CALENDAR], "read:contacts read:short").await;
    assert_eq!(misfit.error(), "invalid_target", "{:?}", misfit.json);
    let offline = password(&[CONTACTS, CALENDAR], "read:contacts offline_access").await;
    assert_eq!(offline.error(), "invalid_target", "{:?}", offline.json);
    // The same resource twice is one resource.
    let twice = password(&[CONTACTS, CONTACTS], "read:contacts").await;
    assert_eq!(twice.status, 200, "{:?}", twice.json);
    assert_eq!(
        claims_of(twice.json["access_token"].as_str().unwrap())["aud"],
        CONTACTS
    );

    // client_credentials: a grant is needed at each API.
    let machine = gw
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("resource", CONTACTS),
                ("resource", CALENDAR),
            ],
            Some(("m2m", M2M_SECRET)),
        )
        .await;
    assert_eq!(machine.error(), "access_denied", "{:?}", machine.json);

    // /authorize: invalid_target to the client, not "sent more than once".
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let mut params = spa_code_request(
        &challenge,
        &[("resource", CONTACTS), ("resource", CALENDAR)],
    );
    params.retain(|(n, _)| *n != "audience");
    let answer = browser.get(&authorize_url(&gw, &params)).await;
    let location = answer.header("location").to_string();
    assert!(location.contains("error=invalid_target"), "{location}");
    // Any other parameter twice is still refused (RFC 6749 §3.1).
    let dup = gw
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("audience", CONTACTS),
                ("audience", CALENDAR),
            ],
            Some(("m2m", M2M_SECRET)),
        )
        .await;
    assert_eq!(dup.error(), "invalid_request");
    assert!(
        dup.json["error_description"]
            .as_str()
            .unwrap()
            .contains("more than once")
    );
}
