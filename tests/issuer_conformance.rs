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
