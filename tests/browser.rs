//! The issuer's browser flows end to end, driven the way a browser drives them: the real
//! gateway on 127.0.0.1:0, `/authorize` opened, the sign-in form parsed out of the HTML
//! (hidden fields included) and posted back with the cookies kept, `303` redirects
//! followed by hand, codes redeemed at the token endpoint, tokens verified with an
//! independent JOSE implementation against the served JWKS. Everything that touches the
//! store runs against SQLite and PostgreSQL.

mod common;

use common::issuer::*;
use serde_json::Value;

/// A code request of the public client `spa` with PKCE, answered on a loopback port of
/// its own (RFC 8252: the registered one is :3000).
const SPA_LOOPBACK: &str = "http://127.0.0.1:45123/callback";

fn code_request<'a>(
    client_id: &'a str,
    redirect_uri: &'a str,
    challenge: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("scope", "openid profile read:contacts offline_access"),
        ("audience", CONTACTS),
        ("state", "st-123"),
        ("nonce", "n-456"),
    ];
    if !challenge.is_empty() {
        params.push(("code_challenge", challenge));
        params.push(("code_challenge_method", "S256"));
    }
    params.extend_from_slice(extra);
    params
}

/// Opens `/authorize`, signs in as alice if the page asks, and returns the final `303`.
async fn authorize_as_alice(
    gw: &Running,
    browser: &mut Browser,
    params: &[(&str, &str)],
) -> Answer {
    let page = browser.get(&authorize_url(gw, params)).await;
    if page.status == 303 {
        return page;
    }
    assert_eq!(page.status, 200, "{}", page.text());
    browser
        .sign_in(&gw.base, &page, "alice", ALICE_PASSWORD)
        .await
}

async fn redeem(
    gw: &Running,
    code: &str,
    redirect_uri: &str,
    verifier: Option<&str>,
    client: (&str, Option<&str>),
) -> Answer {
    let mut params = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
    ];
    if let Some(verifier) = verifier {
        params.push(("code_verifier", verifier));
    }
    match client {
        (id, Some(secret)) => gw.token(&params, Some((id, secret))).await,
        (id, None) => {
            params.push(("client_id", id));
            gw.token(&params, None).await
        }
    }
}

/// A refresh by the confidential `webapp` client.
async fn refresh_webapp(gw: &Running, refresh_token: &str) -> Answer {
    let params = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    gw.token(&params, Some(("webapp", WEBAPP_SECRET))).await
}

async fn introspect(gw: &Running, token: &str) -> Value {
    introspect_as(&gw.base, token, ("webapp", WEBAPP_SECRET)).await
}

// ---------------------------------------------------------------------------------------
// Authorization code + PKCE

async fn code_flow_with_pkce(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gw = Running::start(&store.url, &Options::default()).await;
    let jwks = gw.jwks().await;
    let mut browser = Browser::new(&gw);

    // The public client: /authorize shows the sign-in page.
    let (verifier, challenge) = pkce();
    let params = code_request("spa", SPA_LOOPBACK, &challenge, &[]);
    let page = browser.get(&authorize_url(&gw, &params)).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert_eq!(page.header("cache-control"), "no-store");
    let csp = page.header("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("script-src"),
        "{csp}"
    );
    let html = page.text();
    assert!(
        !html.contains("<script"),
        "the sign-in page needs no script"
    );
    assert!(html.contains(BRAND) && html.contains("Contacts Web"));
    assert!(html.contains("<label for=\"username\">") && html.contains("<label for=\"password\">"));
    let inputs = tags(&html, "input");
    let field = |name: &str| {
        inputs
            .iter()
            .find(|t| attribute(t, "name").as_deref() == Some(name))
            .copied()
            .unwrap_or_else(|| panic!("no field {name}"))
    };
    assert_eq!(
        attribute(field("username"), "autocomplete").as_deref(),
        Some("username")
    );
    assert_eq!(
        attribute(field("password"), "type").as_deref(),
        Some("password")
    );
    assert_eq!(
        attribute(field("password"), "autocomplete").as_deref(),
        Some("current-password")
    );
    let hidden: Vec<String> = hidden_fields(&html).into_iter().map(|(n, _)| n).collect();
    assert_eq!(hidden, ["csrf_token", "pending_request"]);
    assert_eq!(form_action(&html).as_deref(), Some("/authorize"));
    assert!(browser.cookies.contains_key("scopegate_csrf"));
    assert!(!browser.cookies.contains_key("scopegate_session"));

    // Signing in ends in a 303 to the client with the code, state and iss.
    let done = browser
        .sign_in(&gw.base, &page, "alice", ALICE_PASSWORD)
        .await;
    let redirect = Redirect::of(&done);
    assert_eq!(redirect.base, SPA_LOOPBACK);
    assert!(redirect.fragment.is_empty());
    assert_eq!(redirect.query["state"], "st-123");
    assert_eq!(redirect.query["iss"], issuer_of(&gw));
    let code = redirect.query["code"].clone();
    assert!(code.len() >= 43, "256 random bits");
    let session_cookie = done
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("scopegate_session="))
        .expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(session_cookie.contains(attribute), "{session_cookie}");
    }
    assert!(
        !session_cookie.contains("Secure"),
        "plain HTTP: {session_cookie}"
    );

    // The wrong verifier is refused and does not spend the code.
    let (other_verifier, _) = pkce();
    let wrong = redeem(
        &gw,
        &code,
        SPA_LOOPBACK,
        Some(&other_verifier),
        ("spa", None),
    )
    .await;
    assert_eq!((wrong.status, wrong.error()), (400, "invalid_grant"));
    let no_verifier = redeem(&gw, &code, SPA_LOOPBACK, None, ("spa", None)).await;
    assert_eq!(no_verifier.error(), "invalid_grant");
    let bad_format = redeem(&gw, &code, SPA_LOOPBACK, Some("short"), ("spa", None)).await;
    assert_eq!(bad_format.error(), "invalid_request");
    let wrong_redirect = redeem(&gw, &code, SPA_CALLBACK, Some(&verifier), ("spa", None)).await;
    assert_eq!(wrong_redirect.error(), "invalid_grant");
    let wrong_client = redeem(
        &gw,
        &code,
        SPA_LOOPBACK,
        Some(&verifier),
        ("webapp", Some(WEBAPP_SECRET)),
    )
    .await;
    assert_eq!(wrong_client.error(), "invalid_grant");

    // The right one: tokens, verified independently.
    let tokens = redeem(&gw, &code, SPA_LOOPBACK, Some(&verifier), ("spa", None)).await;
    assert_eq!(tokens.status, 200, "{:?}", tokens.json);
    assert_eq!(tokens.header("cache-control"), "no-store");
    assert_eq!(
        tokens.json["scope"],
        "openid profile read:contacts offline_access"
    );
    let at = tokens.json["access_token"].as_str().unwrap();
    let (header, claims) = verify_independently(&jwks, at, &issuer_of(&gw), &[CONTACTS]);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(claims["sub"], "user|alice");
    assert_eq!(claims["client_id"], "spa");
    let id_token = tokens.json["id_token"].as_str().unwrap();
    let (_, id) = verify_independently(&jwks, id_token, &issuer_of(&gw), &["spa"]);
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["at_hash"], left_half_hash(at));
    assert_eq!(id["preferred_username"], "alice");
    let auth_time = id["auth_time"].as_i64().unwrap();
    assert!((auth_time - claims["iat"].as_i64().unwrap()).abs() <= 5);
    assert!(tokens.json["refresh_token"].as_str().is_some());
    let echo = get(&gw.url("/api/contacts/1"), Some(at)).await;
    assert_eq!(echo.status, 200, "the proxy accepts it: {:?}", echo.json);

    let metrics = gw.gateway.metrics.render();
    assert!(
        metrics.contains("scopegate_tokens_issued_total{grant_type=\"authorization_code\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "scopegate_token_errors_total{error=\"invalid_grant\",grant_type=\"authorization_code\"}"
    ));
    gw.stop().await;
}

async fn code_flow_of_a_confidential_client(backend: Backend) {
    let gw = Running::fresh(backend).await;
    let jwks = gw.jwks().await;
    let mut browser = Browser::new(&gw);
    // Signed in through the public client first.
    let (verifier, challenge) = pkce();
    let params = code_request("spa", SPA_LOOPBACK, &challenge, &[]);
    let signed_in = authorize_as_alice(&gw, &mut browser, &params).await;
    let code = Redirect::of(&signed_in).query["code"].clone();
    let tokens = redeem(&gw, &code, SPA_LOOPBACK, Some(&verifier), ("spa", None)).await;
    let id_token = tokens.json["id_token"].as_str().unwrap();
    let (_, id) = verify_independently(&jwks, id_token, &issuer_of(&gw), &["spa"]);
    let auth_time = id["auth_time"].as_i64().unwrap();

    // The confidential client, same browser: the session skips the form.
    let (verifier, challenge) = pkce();
    let params = code_request("webapp", WEBAPP_CALLBACK, &challenge, &[]);
    let straight = browser.get(&authorize_url(&gw, &params)).await;
    let code = Redirect::of(&straight).query["code"].clone();
    // It must authenticate: a public-style redemption is invalid_client.
    let unauthenticated = redeem(
        &gw,
        &code,
        WEBAPP_CALLBACK,
        Some(&verifier),
        ("webapp", None),
    )
    .await;
    assert_eq!(
        (unauthenticated.status, unauthenticated.error()),
        (401, "invalid_client")
    );
    let tokens = redeem(
        &gw,
        &code,
        WEBAPP_CALLBACK,
        Some(&verifier),
        ("webapp", Some(WEBAPP_SECRET)),
    )
    .await;
    assert_eq!(tokens.status, 200, "{:?}", tokens.json);
    let id_token = tokens.json["id_token"].as_str().unwrap();
    let (_, id) = verify_independently(&jwks, id_token, &issuer_of(&gw), &["webapp"]);
    assert_eq!(
        id["auth_time"].as_i64(),
        Some(auth_time),
        "the same session"
    );

    // A confidential client may skip PKCE; a verifier without a challenge is a downgrade.
    let params = code_request("webapp", WEBAPP_CALLBACK, "", &[]);
    let code = Redirect::of(&browser.get(&authorize_url(&gw, &params)).await).query["code"].clone();
    let downgrade = redeem(
        &gw,
        &code,
        WEBAPP_CALLBACK,
        Some(&verifier),
        ("webapp", Some(WEBAPP_SECRET)),
    )
    .await;
    assert_eq!(downgrade.error(), "invalid_grant");
    let plain = redeem(
        &gw,
        &code,
        WEBAPP_CALLBACK,
        None,
        ("webapp", Some(WEBAPP_SECRET)),
    )
    .await;
    assert_eq!(plain.status, 200, "{:?}", plain.json);

    let metrics = gw.gateway.metrics.render();
    assert!(
        metrics.contains("scopegate_tokens_issued_total{grant_type=\"authorization_code\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "scopegate_token_errors_total{error=\"invalid_grant\",grant_type=\"authorization_code\"}"
    ));
    gw.stop().await;
}

async fn code_replay_revokes_what_it_gave(backend: Backend) {
    let gw = Running::fresh(backend).await;
    let mut browser = Browser::new(&gw);
    let (verifier, challenge) = pkce();
    let params = code_request("webapp", WEBAPP_CALLBACK, &challenge, &[]);
    let done = authorize_as_alice(&gw, &mut browser, &params).await;
    let code = Redirect::of(&done).query["code"].clone();
    let client = ("webapp", Some(WEBAPP_SECRET));
    let first = redeem(&gw, &code, WEBAPP_CALLBACK, Some(&verifier), client).await;
    assert_eq!(first.status, 200, "{:?}", first.json);
    let at = first.json["access_token"].as_str().unwrap();
    let rt = first.json["refresh_token"].as_str().unwrap();
    assert_eq!(introspect(&gw, at).await["active"], true);
    assert_eq!(introspect(&gw, rt).await["active"], true);
    // A refresh: what it gives came from the code too.
    let refreshed = refresh_webapp(&gw, rt).await;
    assert_eq!(refreshed.status, 200, "{:?}", refreshed.json);
    let at2 = refreshed.json["access_token"].as_str().unwrap();
    let rt2 = refreshed.json["refresh_token"].as_str().unwrap();
    assert_eq!(introspect(&gw, at2).await["active"], true);
    assert_eq!(introspect(&gw, rt2).await["active"], true);

    // The replay: refused, and every token from the code is dead.
    let again = redeem(&gw, &code, WEBAPP_CALLBACK, Some(&verifier), client).await;
    assert_eq!((again.status, again.error()), (400, "invalid_grant"));
    for token in [at, rt, at2, rt2] {
        assert_eq!(
            introspect(&gw, token).await,
            serde_json::json!({ "active": false })
        );
    }
    let refreshed = refresh_webapp(&gw, rt2).await;
    assert_eq!(refreshed.error(), "invalid_grant");
    for token in [at, at2] {
        assert_eq!(get(&gw.url("/userinfo"), Some(token)).await.status, 401);
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Errors: pages before the client is trusted, redirects after

#[tokio::test]
async fn authorize_errors_before_the_client_is_trusted_are_pages() {
    let gw = Running::fresh(Backend::Sqlite).await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();

    // Unknown client, unregistered redirect URIs, nothing at all: an HTML page.
    for params in [
        code_request("nobody", SPA_CALLBACK, &challenge, &[]),
        code_request("spa", "https://evil.example.com/cb", &challenge, &[]),
        code_request("spa", "http://127.0.0.1:3000/other", &challenge, &[]),
        code_request("spa", "http://localhost:3000/callback", &challenge, &[]),
        code_request("spa", "https://spa.example.com/cb/", &challenge, &[]),
        code_request("cli", SPA_CALLBACK, &challenge, &[]),
        vec![("response_type", "code")],
    ] {
        let answer = browser.get(&authorize_url(&gw, &params)).await;
        assert_eq!(answer.status, 400, "{params:?}");
        assert!(answer.headers.get("location").is_none(), "{params:?}");
        assert_eq!(answer.header("content-type"), "text/html; charset=utf-8");
        assert_eq!(answer.header("x-frame-options"), "DENY");
        let html = answer.text();
        assert!(html.contains(BRAND), "branded");
        assert!(
            !html.contains("evil.example.com"),
            "the bad URI is not echoed"
        );
    }
    // Parameters sent twice: a page too (which one would be the redirect URI?).
    let twice = browser
        .get(&format!(
            "{}&client_id=spa",
            authorize_url(&gw, &code_request("spa", SPA_CALLBACK, &challenge, &[]))
        ))
        .await;
    assert_eq!(twice.status, 400);
    assert!(twice.headers.get("location").is_none());
    gw.stop().await;
}

#[tokio::test]
async fn authorize_errors_after_the_client_is_trusted_are_redirects() {
    let gw = Running::fresh(Backend::Sqlite).await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();

    // 303 to the client with error, error_description, state, iss.
    type Params<'a> = Vec<(&'a str, &'a str)>;
    // (request, error, in the fragment)
    let cases: Vec<(Params, &str, bool)> = vec![
        (
            code_request("spa", SPA_CALLBACK, "", &[]),
            "invalid_request", // a public client without PKCE
            false,
        ),
        (
            code_request(
                "spa",
                SPA_CALLBACK,
                &challenge,
                &[("code_challenge_method", "plain")],
            )
            .into_iter()
            .filter(|(n, v)| !(*n == "code_challenge_method" && *v == "S256"))
            .collect(),
            "invalid_request", // plain
            false,
        ),
        (
            code_request("spa", SPA_CALLBACK, "", &[("code_challenge", &challenge)]),
            "invalid_request", // no method means plain
            false,
        ),
        (
            code_request(
                "spa",
                SPA_CALLBACK,
                "",
                &[
                    ("code_challenge", "too-short"),
                    ("code_challenge_method", "S256"),
                ],
            ),
            "invalid_request",
            false,
        ),
        (
            code_request("spa", SPA_CALLBACK, &challenge, &[])
                .into_iter()
                .filter(|(n, _)| *n != "response_type")
                .collect(),
            "invalid_request",
            false,
        ),
        (
            code_request("spa", SPA_CALLBACK, &challenge, &[])
                .into_iter()
                .map(|(n, v)| {
                    if n == "response_type" {
                        (n, "code token")
                    } else {
                        (n, v)
                    }
                })
                .collect(),
            "unsupported_response_type",
            false,
        ),
        (
            code_request(
                "spa",
                SPA_CALLBACK,
                &challenge,
                &[("response_mode", "web_message")],
            ),
            "invalid_request",
            false,
        ),
        (
            code_request("spa", SPA_CALLBACK, &challenge, &[("prompt", "none")]),
            "login_required",
            false,
        ),
        (
            code_request("spa", SPA_CALLBACK, &challenge, &[("prompt", "none login")]),
            "invalid_request",
            false,
        ),
        (
            code_request("spa", SPA_CALLBACK, &challenge, &[])
                .into_iter()
                .map(|(n, v)| {
                    if n == "audience" {
                        (n, "https://unknown.example.com")
                    } else {
                        (n, v)
                    }
                })
                .collect(),
            "invalid_target",
            false,
        ),
        (
            code_request("spa", SPA_CALLBACK, &challenge, &[])
                .into_iter()
                .map(|(n, v)| {
                    if n == "scope" {
                        (n, "openid bad\"scope")
                    } else {
                        (n, v)
                    }
                })
                .collect(),
            "invalid_scope",
            false,
        ),
        (
            vec![
                ("response_type", "id_token token"),
                ("client_id", "spa"),
                ("redirect_uri", SPA_CALLBACK),
                ("scope", "openid"),
                ("state", "st-123"),
            ],
            "invalid_request", // no nonce
            true,
        ),
        (
            vec![
                ("response_type", "token"),
                ("response_mode", "query"),
                ("client_id", "spa"),
                ("redirect_uri", SPA_CALLBACK),
                ("state", "st-123"),
            ],
            "invalid_request", // tokens never in a query: the error goes in the fragment
            true,
        ),
        (
            vec![
                ("response_type", "token"),
                ("client_id", "webapp"),
                ("redirect_uri", WEBAPP_CALLBACK),
                ("state", "st-123"),
            ],
            "unauthorized_client", // webapp may not use implicit
            true,
        ),
    ];
    for (params, error, in_fragment) in cases {
        let answer = browser.get(&authorize_url(&gw, &params)).await;
        let redirect = Redirect::of(&answer);
        assert!(redirect.base == SPA_CALLBACK || redirect.base == WEBAPP_CALLBACK);
        let (got, other) = if in_fragment {
            (&redirect.fragment, &redirect.query)
        } else {
            (&redirect.query, &redirect.fragment)
        };
        assert!(other.is_empty(), "{params:?}");
        assert_eq!(
            got.get("error").map(String::as_str),
            Some(error),
            "{params:?}: {got:?}"
        );
        assert!(got.get("error_description").is_some_and(|d| !d.is_empty()));
        assert_eq!(got["state"], "st-123", "{params:?}");
        assert_eq!(got["iss"], issuer_of(&gw));
        assert!(!got.contains_key("code"));
    }
    let metrics = gw.gateway.metrics.render();
    assert!(
        metrics.contains(
            "scopegate_token_errors_total{error=\"login_required\",grant_type=\"authorization_code\"} 1"
        ),
        "{metrics}"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Implicit, hybrid, form_post

async fn implicit_and_hybrid_flows(backend: Backend) {
    let gw = Running::fresh(backend).await;
    let jwks = gw.jwks().await;
    let mut browser = Browser::new(&gw);
    let params = [
        ("response_type", "id_token token"),
        ("client_id", "spa"),
        ("redirect_uri", SPA_HTTPS_CALLBACK),
        ("scope", "openid email read:contacts offline_access"),
        ("audience", CONTACTS),
        ("state", "st-imp"),
        ("nonce", "nonce-imp"),
    ];
    let done = authorize_as_alice(&gw, &mut browser, &params).await;
    assert!(!done.header("location").contains('?'), "never in the query");
    let r = Redirect::of(&done);
    assert_eq!(r.base, SPA_HTTPS_CALLBACK);
    let f = &r.fragment;
    assert_eq!(f["token_type"], "Bearer");
    assert_eq!(f["expires_in"], "3600");
    assert_eq!(f["state"], "st-imp");
    assert_eq!(f["iss"], issuer_of(&gw));
    assert_eq!(
        f["scope"], "openid email read:contacts",
        "no refresh from the front channel"
    );
    assert!(!f.contains_key("refresh_token") && !f.contains_key("code"));
    let at = &f["access_token"];
    verify_independently(&jwks, at, &issuer_of(&gw), &[CONTACTS]);
    let (_, id) = verify_independently(&jwks, &f["id_token"], &issuer_of(&gw), &["spa"]);
    assert_eq!(id["nonce"], "nonce-imp");
    assert_eq!(id["at_hash"], left_half_hash(at));
    assert_eq!(id["email"], "alice@example.com");
    assert!(id["auth_time"].as_i64().is_some());

    // id_token alone: no access token, no at_hash.
    let mut only_id = params.to_vec();
    only_id[0] = ("response_type", "id_token");
    let r = Redirect::of(&browser.get(&authorize_url(&gw, &only_id)).await);
    assert!(!r.fragment.contains_key("access_token"));
    let (_, id) = verify_independently(&jwks, &r.fragment["id_token"], &issuer_of(&gw), &["spa"]);
    assert!(id.get("at_hash").is_none());
    assert_eq!(id["nonce"], "nonce-imp");

    // code id_token: the ID token carries c_hash; the code redeems with PKCE.
    let (verifier, challenge) = pkce();
    let mut hybrid = params.to_vec();
    hybrid[0] = ("response_type", "code id_token");
    hybrid.push(("code_challenge", &challenge));
    hybrid.push(("code_challenge_method", "S256"));
    let r = Redirect::of(&browser.get(&authorize_url(&gw, &hybrid)).await);
    let code = &r.fragment["code"];
    let (_, id) = verify_independently(&jwks, &r.fragment["id_token"], &issuer_of(&gw), &["spa"]);
    assert_eq!(id["c_hash"], left_half_hash(code));
    let tokens = redeem(
        &gw,
        code,
        SPA_HTTPS_CALLBACK,
        Some(&verifier),
        ("spa", None),
    )
    .await;
    assert_eq!(tokens.status, 200, "{:?}", tokens.json);
    assert!(tokens.json["refresh_token"].is_string());

    let metrics = gw.gateway.metrics.render();
    assert!(
        metrics.contains("scopegate_tokens_issued_total{grant_type=\"implicit\"} 2"),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn form_post_renders_an_auto_submitting_form() {
    let gw = Running::fresh(Backend::Sqlite).await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let params = code_request(
        "spa",
        SPA_HTTPS_CALLBACK,
        &challenge,
        &[("response_mode", "form_post"), ("state", "<s&\"t>")],
    );
    let params: Vec<_> = params
        .into_iter()
        .filter(|(n, v)| !(*n == "state" && *v == "st-123"))
        .collect();
    let page = browser.get(&authorize_url(&gw, &params)).await;
    let answer = browser
        .sign_in(&gw.base, &page, "alice", ALICE_PASSWORD)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.headers.get("location").is_none());
    assert!(
        answer
            .all("set-cookie")
            .iter()
            .any(|c| c.starts_with("scopegate_session="))
    );
    let html = answer.text();
    assert_eq!(form_action(&html).as_deref(), Some(SPA_HTTPS_CALLBACK));
    let fields: std::collections::BTreeMap<String, String> =
        hidden_fields(&html).into_iter().collect();
    assert!(fields["code"].len() >= 43);
    assert_eq!(
        fields["state"], "<s&\"t>",
        "escaped in the page, intact in the form"
    );
    assert!(!html.contains("<s&"), "never raw in the HTML");
    assert_eq!(fields["iss"], issuer_of(&gw));
    assert!(html.contains("<noscript>") && html.contains("<button type=\"submit\">"));
    // The one script is allowed by its hash, nothing else is.
    let start = html.find("<script>").unwrap() + "<script>".len();
    let script = &html[start..start + html[start..].find("</script>").unwrap()];
    let csp = answer.header("content-security-policy");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, script.as_bytes());
    use base64::Engine;
    let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    assert!(
        csp.contains(&format!("script-src 'sha256-{hash}'")),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"));
    assert_eq!(answer.header("x-frame-options"), "DENY");
    // The inline style is allowed by its hash too.
    let start = html.find("<style>").unwrap() + "<style>".len();
    let style = &html[start..start + html[start..].find("</style>").unwrap()];
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, style.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    assert!(csp.contains(&format!("style-src 'sha256-{hash}'")), "{csp}");

    // An error goes the same way.
    let params = [
        ("response_type", "code"),
        ("response_mode", "form_post"),
        ("client_id", "spa"),
        ("redirect_uri", SPA_HTTPS_CALLBACK),
        ("state", "s2"),
    ];
    let answer = browser.get(&authorize_url(&gw, &params)).await;
    assert_eq!(answer.status, 200);
    let fields: std::collections::BTreeMap<String, String> =
        hidden_fields(&answer.text()).into_iter().collect();
    assert_eq!(fields["error"], "invalid_request");
    assert_eq!(fields["state"], "s2");
    assert_eq!(fields["iss"], issuer_of(&gw));
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Sessions, prompt, logout

async fn sessions_prompt_and_logout(backend: Backend) {
    let gw = Running::fresh(backend).await;
    let jwks = gw.jwks().await;
    let mut browser = Browser::new(&gw);
    let (verifier, challenge) = pkce();
    let params = code_request("spa", SPA_CALLBACK, &challenge, &[]);
    let auth_time_of = |tokens: &Answer| {
        let id = tokens.json["id_token"].as_str().expect("an ID token");
        verify_independently(&jwks, id, &format!("{}/", gw.base), &["spa"]).1["auth_time"]
            .as_i64()
            .unwrap()
    };

    let first = authorize_as_alice(&gw, &mut browser, &params).await;
    let code = Redirect::of(&first).query["code"].clone();
    let tokens = redeem(&gw, &code, SPA_CALLBACK, Some(&verifier), ("spa", None)).await;
    let first_auth_time = auth_time_of(&tokens);
    let first_access = tokens.json["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    let first_session = browser.cookies["scopegate_session"].clone();

    // Within the session: straight to the redirect; prompt=none too.
    let again = browser.get(&authorize_url(&gw, &params)).await;
    assert!(Redirect::of(&again).query.contains_key("code"));
    let mut silent = params.clone();
    silent.push(("prompt", "none"));
    assert!(
        Redirect::of(&browser.get(&authorize_url(&gw, &silent)).await)
            .query
            .contains_key("code")
    );

    // prompt=login: the form again, and a new sign-in (new session, later auth_time).
    gw.clock.advance(std::time::Duration::from_millis(1100));
    let mut forced = params.clone();
    forced.push(("prompt", "login"));
    let page = browser.get(&authorize_url(&gw, &forced)).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("name=\"password\""));
    let done = browser
        .sign_in(&gw.base, &page, "alice", ALICE_PASSWORD)
        .await;
    let code = Redirect::of(&done).query["code"].clone();
    let tokens = redeem(&gw, &code, SPA_CALLBACK, Some(&verifier), ("spa", None)).await;
    assert!(auth_time_of(&tokens) > first_auth_time);
    let access = tokens.json["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    let refresh_spa = |refresh_token: String| {
        let gw = &gw;
        async move {
            let params = [
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.as_str()),
                ("client_id", "spa"),
            ];
            gw.token(&params, None).await
        }
    };
    let rotated = refresh_spa(
        tokens.json["refresh_token"]
            .as_str()
            .expect("a refresh token")
            .to_string(),
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let refresh = rotated.json["refresh_token"]
        .as_str()
        .expect("rotated")
        .to_string();
    let refreshed_access = rotated.json["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    assert_eq!(introspect(&gw, &access).await["active"], true);
    let second_session = browser.cookies["scopegate_session"].clone();
    assert_ne!(
        first_session, second_session,
        "a new session id on every sign-in"
    );
    // The replaced session is gone server-side.
    let mut old = Browser::new(&gw);
    old.cookies
        .insert("scopegate_session".into(), first_session);
    let r = Redirect::of(&old.get(&authorize_url(&gw, &silent)).await);
    assert_eq!(r.query["error"], "login_required");

    // max_age: an older sign-in must be repeated.
    gw.clock.advance(std::time::Duration::from_millis(1100));
    let mut aged = params.clone();
    aged.push(("max_age", "0"));
    assert_eq!(browser.get(&authorize_url(&gw, &aged)).await.status, 200);

    // Logout to a registered URI, with state; the session is deleted server-side.
    let out = browser
        .get(&format!(
            "{}?{}",
            gw.url("/logout"),
            form_encode(&[
                ("client_id", "spa"),
                ("post_logout_redirect_uri", SPA_LOGOUT),
                ("state", "bye-1"),
            ])
        ))
        .await;
    let r = Redirect::of(&out);
    assert_eq!(r.base, SPA_LOGOUT);
    assert_eq!(r.query["state"], "bye-1");
    let expired = out
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("scopegate_session="))
        .expect("the session cookie is expired");
    assert!(expired.contains("Max-Age=0"), "{expired}");
    assert!(!browser.cookies.contains_key("scopegate_session"));
    // What the ended session's sign-in issued is revoked: its access token and its
    // refresh token; another sign-in's tokens are not.
    assert_eq!(introspect(&gw, &access).await["active"], false);
    assert_eq!(introspect(&gw, &refreshed_access).await["active"], false);
    let refreshed = refresh_spa(refresh).await;
    assert_eq!(refreshed.error(), "invalid_grant", "{}", refreshed.text());
    assert_eq!(introspect(&gw, &first_access).await["active"], true);
    let r = Redirect::of(&browser.get(&authorize_url(&gw, &silent)).await);
    assert_eq!(r.query["error"], "login_required");
    let mut replay = Browser::new(&gw);
    replay
        .cookies
        .insert("scopegate_session".into(), second_session);
    let r = Redirect::of(&replay.get(&authorize_url(&gw, &silent)).await);
    assert_eq!(
        r.query["error"], "login_required",
        "deleted, not just forgotten"
    );

    // Unregistered, or registered for another client, or no client named: a page.
    let id_token = tokens.json["id_token"].as_str().unwrap();
    for params in [
        vec![
            ("client_id", "spa"),
            ("post_logout_redirect_uri", "https://evil.example.com/"),
        ],
        vec![
            ("client_id", "spa"),
            ("post_logout_redirect_uri", WEBAPP_LOGOUT),
        ],
        vec![("post_logout_redirect_uri", SPA_LOGOUT)],
        vec![
            ("id_token_hint", "not-a-token"),
            ("post_logout_redirect_uri", SPA_LOGOUT),
        ],
        vec![
            ("client_id", "webapp"),
            ("id_token_hint", id_token),
            ("post_logout_redirect_uri", SPA_LOGOUT),
        ],
        vec![],
    ] {
        let answer = browser
            .get(&format!("{}?{}", gw.url("/logout"), form_encode(&params)))
            .await;
        assert_eq!(answer.status, 200, "{params:?}");
        assert!(answer.headers.get("location").is_none());
        assert!(answer.text().contains("Signed out"));
        assert_eq!(answer.header("x-frame-options"), "DENY");
    }
    // id_token_hint names the client; POST works too.
    let answer = browser
        .post(
            &gw.url("/logout"),
            &[
                ("id_token_hint", id_token),
                ("post_logout_redirect_uri", SPA_LOGOUT),
            ],
        )
        .await;
    assert_eq!(Redirect::of(&answer).base, SPA_LOGOUT);
    gw.stop().await;
}

async fn csrf_wrong_passwords_and_lockout(backend: Backend) {
    let gw = Running::fresh(backend).await;
    let (_, challenge) = pkce();
    let params = code_request("spa", SPA_CALLBACK, &challenge, &[]);
    let mut browser = Browser::new(&gw);
    let page = browser.get(&authorize_url(&gw, &params)).await;
    let hidden: std::collections::BTreeMap<String, String> =
        hidden_fields(&page.text()).into_iter().collect();
    let pending = hidden["pending_request"].clone();
    let url = gw.url("/authorize");
    let refused = |answer: &Answer, what: &str| {
        assert_eq!(answer.status, 403, "{what}: {}", answer.text());
        assert!(answer.headers.get("location").is_none(), "{what}");
        assert!(
            !answer
                .all("set-cookie")
                .iter()
                .any(|c| c.starts_with("scopegate_session=")),
            "{what}: no session"
        );
    };

    // No token, a wrong token, no cookie, a foreign Origin: 403, nobody signed in.
    let missing = browser
        .post(
            &url,
            &[
                ("pending_request", &pending),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
            ],
        )
        .await;
    refused(&missing, "missing token");
    let wrong = browser
        .post(
            &url,
            &[
                ("csrf_token", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                ("pending_request", &pending),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
            ],
        )
        .await;
    refused(&wrong, "wrong token");
    let mut cookieless = Browser::new(&gw);
    let no_cookie = cookieless
        .post(
            &url,
            &[
                ("csrf_token", &hidden["csrf_token"]),
                ("pending_request", &pending),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
            ],
        )
        .await;
    refused(&no_cookie, "no cookie");
    let mut foreign = browser.clone();
    foreign.origin = Some("https://evil.example.com".into());
    let cross = foreign
        .sign_in(&gw.base, &page, "alice", ALICE_PASSWORD)
        .await;
    refused(&cross, "foreign origin");
    assert!(cross.text().contains(BRAND));

    // Wrong password, unknown user: the page again, the same neutral message.
    for (user, password) in [("alice", "nope"), ("nobody-here", "nope")] {
        let again = browser.sign_in(&gw.base, &page, user, password).await;
        assert_eq!(again.status, 200);
        let html = again.text();
        assert!(html.contains("Wrong username or password."), "{html}");
        assert!(html.contains("role=\"alert\""));
        assert!(
            !again
                .all("set-cookie")
                .iter()
                .any(|c| c.starts_with("scopegate_session="))
        );
        assert_eq!(form_action(&html).as_deref(), Some("/authorize"));
    }
    // max_failures is 3: a third failure locks alice out, even with the right password.
    let third = browser
        .sign_in(&gw.base, &page, "alice", "still-wrong")
        .await;
    assert!(third.text().contains("Wrong username or password."));
    let locked = browser
        .sign_in(&gw.base, &page, "alice", ALICE_PASSWORD)
        .await;
    assert_eq!(locked.status, 429, "{}", locked.text());
    assert!(locked.text().contains("Too many failed sign-in attempts"));
    assert!(
        locked
            .header("retry-after")
            .parse::<u64>()
            .is_ok_and(|s| s > 0)
    );
    assert!(!browser.cookies.contains_key("scopegate_session"));
    // The password grant shares the count.
    let grant = gw
        .token(
            &[
                ("grant_type", "password"),
                ("client_id", "cli"),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
            ],
            None,
        )
        .await;
    assert_eq!(grant.status, 429);
    gw.stop().await;
}

#[tokio::test]
async fn discovery_advertises_the_browser_flows() {
    let gw = Running::fresh(Backend::Sqlite).await;
    let d = get(&gw.url("/.well-known/openid-configuration"), None)
        .await
        .json;
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        d["response_modes_supported"],
        serde_json::json!(["query", "fragment", "form_post"])
    );
    for rt in [
        "code",
        "token",
        "id_token",
        "id_token token",
        "code id_token",
    ] {
        assert!(
            d["response_types_supported"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == rt),
            "{rt}"
        );
    }
    assert_eq!(
        d["device_authorization_endpoint"],
        gw.url("/oauth/device/code")
    );
    assert_eq!(d["end_session_endpoint"], gw.url("/logout"));
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    // Methods: GET and POST for the pages, POST only for the device endpoint.
    let r = request("PUT", &gw.url("/authorize"), None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), "GET, POST");
    let head = request("HEAD", &gw.url("/logout"), None).await;
    assert_eq!(head.status, 405, "HEAD has no effects");
    assert_eq!(get(&gw.url("/oauth/device/code"), None).await.status, 405);
    gw.stop().await;
}

both_backends!(
    code_flow_with_pkce,
    code_flow_of_a_confidential_client,
    code_replay_revokes_what_it_gave,
    implicit_and_hybrid_flows,
    sessions_prompt_and_logout,
    csrf_wrong_passwords_and_lockout,
);
