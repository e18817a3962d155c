//! Token validation and authorization, end to end: a real issuer (discovery + JWKS), a
//! real upstream, the real gateway. Hostile tokens included.

mod common;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::hmac;
use aws_lc_rs::signature::KeyPair;
use base64::Engine;
use common::*;
use scopegate::jose::{Alg, SigningKey};
use serde_json::{Value, json};

/// The open route, [`SCOPE_ROUTES`], then [`MORE_ROUTES`].
fn routes() -> String {
    format!("{OPEN_ROUTE}{SCOPE_ROUTES}{MORE_ROUTES}")
}

const OPEN_ROUTE: &str = r#"
  - name: open
    match: { path: /api/any/* }
    upstream: "@upstream@""#;

const MORE_ROUTES: &str = r#"  - name: mixed
    match: { path: /api/mixed/* }
    upstream: "@upstream@"
    scopes: [read:contacts]
    any_scopes: [write:contacts, admin]
  - name: other-aud
    match: { path: /api/other/* }
    upstream: "@upstream@"
    audience: https://other.example.com
  - name: maybe
    match: { path: /api/maybe/* }
    upstream: "@upstream@"
    auth: optional
"#;

async fn env() -> Env {
    Env::start(&routes()).await
}

/// Sends `token` to the `open` route and checks it is refused as `invalid_token`, that the
/// upstream saw nothing, and that the refusal was counted under `reason`.
async fn expect_refused(env: &Env, token: &str, reason: &str, context: &str) {
    let before = auth_failures(&env.gw.metrics().await, "open", reason);
    let seen_before = env.upstream.count();
    let reply = env.get_bearer("/api/any/x", token).await;
    assert_eq!(
        reply.status,
        401,
        "{context}: expected 401, got {} {}",
        reply.status,
        reply.text()
    );
    assert_invalid_token(&reply, token);
    assert_eq!(
        env.upstream.count(),
        seen_before,
        "{context}: a refused request reached the upstream"
    );
    let after = auth_failures(&env.gw.metrics().await, "open", reason);
    assert_eq!(
        after,
        before + 1.0,
        "{context}: expected scopegate_auth_failures_total{{route=\"open\",reason=\"{reason}\"}} to count it; body {}",
        reply.text()
    );
}

async fn expect_ok(env: &Env, path: &str, token: &str, context: &str) -> Seen {
    let reply = env.get_bearer(path, token).await;
    assert_eq!(
        reply.status,
        200,
        "{context}: expected 200, got {} {}",
        reply.status,
        reply.text()
    );
    env.upstream.last()
}

fn description(reply: &Reply) -> String {
    reply.json()["error_description"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn every_configured_algorithm_verifies() {
    let env = env().await;
    for key in [rsa(), ec(), ed(), ps()] {
        let token = key.token(&env.claims(json!({ "sub": format!("via-{}", key.kid) })));
        let seen = expect_ok(&env, "/api/any/x", &token, &format!("{} token", key.alg)).await;
        assert_eq!(
            seen.one("x-auth-subject"),
            Some(format!("via-{}", key.kid).as_str()),
            "{}: the verified subject was not forwarded",
            key.alg
        );
    }
}

#[tokio::test]
async fn alg_none_is_refused_without_a_fetch() {
    let env = env().await;
    let fetches = env.issuer.jwks_hits();
    let payload = env.claims(json!({})).to_string();
    for alg in ["none", "None", "NONE"] {
        let header = json!({ "alg": alg, "kid": "rsa-1", "typ": "at+jwt" }).to_string();
        // The classic unsigned form (empty third part) and one with junk in it.
        let unsigned = format!(
            "{}.{}.",
            scopegate::jose::b64url(header.as_bytes()),
            scopegate::jose::b64url(payload.as_bytes())
        );
        expect_refused(
            &env,
            &unsigned,
            "disallowed_alg",
            &format!("alg {alg}, empty signature"),
        )
        .await;
        let junk = raw_token(&header, &payload, b"junk");
        expect_refused(
            &env,
            &junk,
            "disallowed_alg",
            &format!("alg {alg}, junk signature"),
        )
        .await;
    }
    assert_eq!(
        env.issuer.jwks_hits(),
        fetches,
        "an alg none token caused a JWKS fetch"
    );
}

#[tokio::test]
async fn hs256_keyed_with_the_rsa_public_key_is_refused() {
    let env = env().await;
    let SigningKey::Rsa(pair) = &rsa().key else {
        panic!("rsa() is not an RSA key")
    };
    let spki = pair.public_key().as_der().expect("SPKI DER");
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(spki.as_ref())
    );
    let jwk = rsa().jwk();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("PEM", pem.into_bytes()),
        ("SPKI DER", spki.as_ref().to_vec()),
        ("JWK JSON", jwk.to_string().into_bytes()),
        ("JWK n", jwk["n"].as_str().expect("n").as_bytes().to_vec()),
    ];
    for (what, secret) in secrets {
        for alg in ["HS256", "HS384", "HS512"] {
            let header = json!({ "alg": alg, "kid": "rsa-1", "typ": "at+jwt" });
            let signing_input = format!(
                "{}.{}",
                scopegate::jose::b64url(header.to_string().as_bytes()),
                scopegate::jose::b64url(env.claims(json!({})).to_string().as_bytes())
            );
            let algorithm = match alg {
                "HS256" => hmac::HMAC_SHA256,
                "HS384" => hmac::HMAC_SHA384,
                _ => hmac::HMAC_SHA512,
            };
            let tag = hmac::sign(
                &hmac::Key::new(algorithm, &secret),
                signing_input.as_bytes(),
            );
            let token = format!("{signing_input}.{}", scopegate::jose::b64url(tag.as_ref()));
            expect_refused(
                &env,
                &token,
                "disallowed_alg",
                &format!("{alg} keyed with the {what}"),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn right_kid_with_the_wrong_key_is_a_bad_signature() {
    let env = env().await;
    let fetches = env.issuer.jwks_hits();
    let token = rogue_rsa().token_with(
        json!({ "alg": "RS256", "kid": "rsa-1", "typ": "at+jwt" }),
        &env.claims(json!({})),
    );
    expect_refused(&env, &token, "bad_signature", "rogue key under kid rsa-1").await;
    // A tampered payload under a genuine signature is the same failure.
    let genuine = env.token(json!({}));
    let parts: Vec<&str> = genuine.split('.').collect();
    let forged_claims = env.claims(json!({ "sub": "admin", "scope": "read:contacts admin" }));
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        scopegate::jose::b64url(forged_claims.to_string().as_bytes()),
        parts[2]
    );
    expect_refused(
        &env,
        &tampered,
        "bad_signature",
        "payload swapped under a genuine signature",
    )
    .await;
    assert_eq!(
        env.issuer.jwks_hits(),
        fetches,
        "a known kid with a bad signature must not trigger a refetch"
    );
}

#[tokio::test]
async fn the_jwk_must_fit_the_tokens_alg() {
    let env = env().await;
    let fetches = env.issuer.jwks_hits();
    let claims = env.claims(json!({}));
    // ES256 header naming the RSA key (signed with the EC key).
    let token = ec().token_with(json!({ "alg": "ES256", "kid": "rsa-1" }), &claims);
    expect_refused(&env, &token, "bad_signature", "ES256 header, RSA kid").await;
    // RS256 header naming the EC key (signed with the RSA key).
    let token = rsa().token_with(json!({ "alg": "RS256", "kid": "ec-1" }), &claims);
    expect_refused(&env, &token, "bad_signature", "RS256 header, EC kid").await;
    // EdDSA header naming the EC key.
    let token = ed().token_with(json!({ "alg": "EdDSA", "kid": "ec-1" }), &claims);
    expect_refused(&env, &token, "bad_signature", "EdDSA header, EC kid").await;
    // The RSA JWK says alg RS256: the same key must not verify PS256.
    let pss = Key {
        kid: "rsa-1".into(),
        alg: Alg::PS256,
        key: SigningKey::from_pkcs8(Alg::PS256, &rsa().key.to_pkcs8().expect("pkcs8"))
            .expect("load"),
    };
    let token = pss.token(&claims);
    expect_refused(
        &env,
        &token,
        "bad_signature",
        "PS256 with a JWK that declares RS256",
    )
    .await;
    assert_eq!(
        env.issuer.jwks_hits(),
        fetches,
        "a kty/alg mismatch must not trigger a refetch"
    );
}

#[tokio::test]
async fn an_alg_outside_the_issuers_list_is_refused() {
    let env = env().await;
    // ES384 is a fine algorithm, but the standard config does not list it.
    let es384 = Key::generate(Alg::ES384, "ec-384");
    let token = es384.token(&env.claims(json!({})));
    expect_refused(&env, &token, "disallowed_alg", "ES384 not in algorithms").await;
    // An alg name Scopegate has never heard of.
    let token = raw_token(
        r#"{"alg":"RS257","kid":"rsa-1"}"#,
        &env.claims(json!({})).to_string(),
        b"sig",
    );
    expect_refused(&env, &token, "disallowed_alg", "unknown alg RS257").await;
}

#[tokio::test]
async fn exp_nbf_iat_are_checked_with_leeway() {
    let env = env().await;
    let now = now();
    // Standard config: leeway 5s.
    let cases = [
        (json!({ "exp": now - 60 }), Some(("expired", "expired"))),
        (json!({ "exp": now - 2 }), None),
        (json!({ "nbf": now + 60 }), Some(("not_yet_valid", "nbf"))),
        (json!({ "nbf": now + 2 }), None),
        (json!({ "iat": now + 60 }), Some(("not_yet_valid", "iat"))),
        (json!({ "iat": now + 2 }), None),
        (
            json!({ "exp": now + 3600, "nbf": now - 10, "iat": now - 10 }),
            None,
        ),
    ];
    for (extra, refused) in cases {
        let token = env.token(extra.clone());
        match refused {
            Some((reason, word)) => {
                expect_refused(&env, &token, reason, &format!("claims {extra}")).await;
                let reply = env.get_bearer("/api/any/x", &token).await;
                assert!(
                    description(&reply).contains(word),
                    "claims {extra}: the description should say what failed ({word}): {}",
                    description(&reply)
                );
            }
            None => {
                expect_ok(
                    &env,
                    "/api/any/x",
                    &token,
                    &format!("claims {extra} (within leeway)"),
                )
                .await;
            }
        }
    }
}

#[tokio::test]
async fn the_issuer_must_match_exactly() {
    let env = env().await;
    let without_slash = env.issuer.url.trim_end_matches('/').to_string();
    for iss in [
        json!("https://evil.example.com/"),
        json!(without_slash),
        json!(format!("{}x", env.issuer.url)),
        json!([env.issuer.url.clone()]),
        Value::Null,
    ] {
        let token = env.token(json!({ "iss": iss.clone() }));
        expect_refused(&env, &token, "wrong_issuer", &format!("iss {iss}")).await;
    }
    // A genuine key of the trusted issuer does not make another iss acceptable.
    let reply = env
        .get_bearer(
            "/api/any/x",
            &env.token(json!({ "iss": "https://evil.example.com/" })),
        )
        .await;
    assert!(
        description(&reply).contains("issuer"),
        "{}",
        description(&reply)
    );
}

#[tokio::test]
async fn the_audience_must_match_the_issuer_and_the_route() {
    let env = env().await;
    for aud in [
        json!("https://evil.example.com"),
        json!([]),
        json!(["a", "b"]),
        Value::Null,
    ] {
        let token = env.token(json!({ "aud": aud.clone() }));
        expect_refused(&env, &token, "wrong_audience", &format!("aud {aud}")).await;
    }
    // An array containing a trusted audience is fine.
    let token = env.token(json!({ "aud": ["https://evil.example.com", AUD] }));
    expect_ok(&env, "/api/any/x", &token, "aud array containing the API").await;

    // The route's own audience: AUD is trusted by the issuer but not what this route wants.
    let before = auth_failures(&env.gw.metrics().await, "other-aud", "wrong_audience");
    let token = env.token(json!({ "aud": AUD }));
    let reply = env.get_bearer("/api/other/x", &token).await;
    assert_invalid_token(&reply, &token);
    assert!(
        description(&reply).contains("audience"),
        "{}",
        description(&reply)
    );
    let after = auth_failures(&env.gw.metrics().await, "other-aud", "wrong_audience");
    assert_eq!(
        after,
        before + 1.0,
        "route audience failure not counted as wrong_audience"
    );
    for aud in [json!(AUD2), json!([AUD, AUD2])] {
        let token = env.token(json!({ "aud": aud.clone() }));
        expect_ok(
            &env,
            "/api/other/x",
            &token,
            &format!("route audience with aud {aud}"),
        )
        .await;
    }
}

#[tokio::test]
async fn id_tokens_are_refused() {
    let env = env().await;
    let id_like = [
        // A real ID token: aud is the client, nonce, typ JWT.
        (
            json!({ "typ": "JWT" }),
            json!({ "aud": "client-a", "nonce": "n-1", "auth_time": now() }),
        ),
        // Same, but with an API audience: still an ID token.
        (json!({ "typ": "JWT" }), json!({ "nonce": "n-1" })),
        (json!({ "typ": "JWT" }), json!({ "at_hash": "abc" })),
        // No typ at all, nonce present.
        (json!({}), json!({ "nonce": "n-2" })),
    ];
    for (typ, extra) in id_like {
        let mut header = json!({ "alg": "RS256", "kid": "rsa-1" });
        if let Some(t) = typ.get("typ") {
            header["typ"] = t.clone();
        }
        let token = rsa().token_with(header.clone(), &env.claims(extra.clone()));
        let reply = env.get_bearer("/api/any/x", &token).await;
        assert_invalid_token(&reply, &token);
        assert_eq!(
            env.upstream.count(),
            0,
            "an ID token ({header} {extra}) reached the upstream"
        );
    }
    // Other token types are not access tokens either.
    let token = rsa().token_with(
        json!({ "alg": "RS256", "kid": "rsa-1", "typ": "secevent+jwt" }),
        &env.claims(json!({})),
    );
    expect_refused(&env, &token, "wrong_type", "typ secevent+jwt").await;
    let token = rsa().token_with(
        json!({ "alg": "RS256", "kid": "rsa-1", "typ": "JWT" }),
        &env.claims(json!({ "nonce": "x" })),
    );
    expect_refused(&env, &token, "wrong_type", "typ JWT with nonce").await;
    // typ JWT without ID-token claims is an ordinary access token (Auth0 style).
    let token = rsa().token_with(
        json!({ "alg": "RS256", "kid": "rsa-1", "typ": "JWT" }),
        &env.claims(json!({})),
    );
    expect_ok(&env, "/api/any/x", &token, "typ JWT access token").await;
}

#[tokio::test]
async fn token_named_keys_are_refused_and_never_fetched() {
    let env = env().await;
    let spy = Upstream::start().await;
    let spy_jwks = format!("{}/jwks.json", spy.url);
    let claims = env.claims(json!({}));
    let fetches = (env.issuer.discovery_hits(), env.issuer.jwks_hits());
    let cases = [
        // The attacker's key, published at the attacker's URL.
        (
            "jku, attacker kid",
            rogue_rsa(),
            json!({ "alg": "RS256", "kid": "rogue", "jku": spy_jwks }),
        ),
        // Even a genuinely signed token is refused when it names a key URL.
        (
            "jku, genuine kid",
            rsa(),
            json!({ "alg": "RS256", "kid": "rsa-1", "jku": spy_jwks }),
        ),
        (
            "x5u",
            rogue_rsa(),
            json!({ "alg": "RS256", "kid": "rogue", "x5u": format!("{}/cert.pem", spy.url) }),
        ),
        (
            "jwk",
            rogue_rsa(),
            json!({ "alg": "RS256", "kid": "rogue", "jwk": rogue_rsa().jwk() }),
        ),
        (
            "jwk, no kid",
            rogue_rsa(),
            json!({ "alg": "RS256", "jwk": rogue_rsa().jwk() }),
        ),
        (
            "x5c",
            rogue_rsa(),
            json!({ "alg": "RS256", "kid": "rogue", "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"] }),
        ),
    ];
    for (what, key, header) in cases {
        let token = key.token_with(header, &claims);
        let reply = env.get_bearer("/api/any/x", &token).await;
        assert_invalid_token(&reply, &token);
        assert_eq!(env.upstream.count(), 0, "{what}: reached the upstream");
    }
    // Give a (wrongly) spawned fetch a moment to show up before proving it never happened.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        spy.count(),
        0,
        "the gateway fetched a URL named by a token: {:?}",
        spy.seen()
    );
    assert_eq!(
        (env.issuer.discovery_hits(), env.issuer.jwks_hits()),
        fetches,
        "a token carrying its own key caused a JWKS refetch"
    );
}

#[tokio::test]
async fn unknown_crit_is_refused() {
    let env = env().await;
    let claims = env.claims(json!({}));
    for crit in [json!(["exp"]), json!(["http://example.com/ext"]), json!([])] {
        let token = rsa().token_with(
            json!({ "alg": "RS256", "kid": "rsa-1", "typ": "at+jwt", "crit": crit.clone(), "exp": 1, "http://example.com/ext": true }),
            &claims,
        );
        let reply = env.get_bearer("/api/any/x", &token).await;
        assert_invalid_token(&reply, &token);
        assert!(
            description(&reply).contains("crit"),
            "crit {crit}: {}",
            description(&reply)
        );
    }
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let env = env().await;
    let key = rsa();
    let header = br#"{"alg":"RS256","kid":"rsa-1","typ":"at+jwt"}"#;
    let good = env.claims(json!({}));
    let mut without_exp = good.clone();
    without_exp.as_object_mut().expect("object").remove("exp");
    let cases: Vec<(&str, String)> = vec![
        ("one part", "abcdef".into()),
        ("two parts", "abc.def".into()),
        ("four parts", format!("{}.extra", env.token(json!({})))),
        ("bad base64 header", "!!!.e30.c2ln".into()),
        ("padded base64", format!("{}=", env.token(json!({})))),
        (
            "header not JSON",
            raw_token("not json", &good.to_string(), b"sig"),
        ),
        (
            "header is an array",
            raw_token("[1,2]", &good.to_string(), b"sig"),
        ),
        // A JOSE header is a JSON object; an array must not be read field by field.
        (
            "header an array of the right values (signed)",
            key.token_raw(
                br#"["RS256","rsa-1","at+jwt"]"#,
                good.to_string().as_bytes(),
            ),
        ),
        (
            "header without alg",
            raw_token(r#"{"kid":"rsa-1"}"#, &good.to_string(), b"sig"),
        ),
        ("payload not JSON (signed)", key.token_raw(header, b"hello")),
        (
            "payload an array (signed)",
            key.token_raw(header, b"[1,2,3]"),
        ),
        (
            "string exp (signed)",
            key.token(&env.claims(json!({ "exp": (now() + 300).to_string() }))),
        ),
        ("missing exp (signed)", key.token(&without_exp)),
        (
            "boolean nbf (signed)",
            key.token(&env.claims(json!({ "nbf": true }))),
        ),
        (
            "missing sub (signed)",
            key.token(&env.claims(json!({ "sub": null }))),
        ),
        (
            "numeric sub (signed)",
            key.token(&env.claims(json!({ "sub": 42 }))),
        ),
        (
            "aud a number (signed)",
            key.token(&env.claims(json!({ "aud": 7 }))),
        ),
        (
            "scope a number (signed)",
            key.token(&env.claims(json!({ "scope": 7 }))),
        ),
    ];
    for (what, token) in cases {
        expect_refused(&env, &token, "malformed", what).await;
    }
    // Bytes that cannot be a bearer token at all.
    for value in ["Bearer a,b.c.d", "Bearer \"abc\"", "Bearer a b c"] {
        let reply = env.get("/api/any/x", &[("authorization", value)]).await;
        assert_json_error(&reply, 401, "invalid_token");
    }
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn oversized_tokens_are_refused_before_parsing() {
    let env = env().await;
    let fetches = env.issuer.jwks_hits();
    // Standard config: max_token_bytes 4096.
    let pad = |n: usize| env.token(json!({ "pad": "x".repeat(n) }));
    // Each 3 bytes of claims add 4 base64url characters.
    let base = pad(0).len();
    let big = pad((4150 - base) * 3 / 4);
    assert!(
        big.len() > 4096,
        "test token should exceed the limit: {}",
        big.len()
    );
    let reply = env.get_bearer("/api/any/x", &big).await;
    assert_invalid_token(&reply, &big);
    assert!(
        description(&reply).contains("4096"),
        "{}",
        description(&reply)
    );
    expect_refused(&env, &"a".repeat(5000), "malformed", "5000 bytes of junk").await;

    // Just under the limit is fine: the limit is a size check, not a parse failure.
    let fits = pad((4050 - base) * 3 / 4);
    assert!(fits.len() <= 4096, "test token should fit: {}", fits.len());
    expect_ok(&env, "/api/any/x", &fits, "a token under max_token_bytes").await;
    assert_eq!(env.issuer.jwks_hits(), fetches);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let env = env().await;
    for scheme in ["bEaReR", "BEARER", "bearer", "Bearer"] {
        let token = env.token(json!({}));
        let auth = format!("{scheme} {token}");
        let reply = env.get("/api/any/x", &[("authorization", &auth)]).await;
        assert_eq!(reply.status, 200, "scheme {scheme:?}: {}", reply.text());
    }
}

#[tokio::test]
async fn no_token_or_another_scheme_is_401_unauthorized() {
    let env = env().await;
    for auth in [
        None,
        Some("Basic dXNlcjpwYXNz"),
        Some("Token abc"),
        Some("Bearerabc.def.ghi"),
        // DPoP is a token scheme (tests/dpop.rs); a look-alike is not.
        Some("DPoPabc.def.ghi"),
        Some("Digest username=\"a\""),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let before = auth_failures(&env.gw.metrics().await, "open", "missing_token");
        let reply = env.get("/api/any/x", &headers).await;
        assert_json_error(&reply, 401, "unauthorized");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer realm=\"scopegate\""),
            "Authorization {auth:?}: wrong challenge"
        );
        let after = auth_failures(&env.gw.metrics().await, "open", "missing_token");
        assert_eq!(
            after,
            before + 1.0,
            "Authorization {auth:?} not counted as missing_token"
        );
    }
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn scopes_all_of_is_403_with_the_required_scopes() {
    let env = env().await;
    let token = env.token(json!({ "scope": "read:contacts" }));
    let reply = env.get_bearer("/api/both/x", &token).await;
    assert_json_error(&reply, 403, "insufficient_scope");
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            "Bearer realm=\"scopegate\", error=\"insufficient_scope\", scope=\"read:contacts write:contacts\""
        ),
    );
    assert_eq!(env.upstream.count(), 0, "a 403 reached the upstream");
    let metrics = env.gw.metrics().await;
    assert_eq!(auth_failures(&metrics, "both", "insufficient_scope"), 1.0);

    let token = env.token(json!({ "scope": "write:contacts read:contacts" }));
    expect_ok(&env, "/api/both/x", &token, "both scopes, any order").await;
}

#[tokio::test]
async fn any_scopes_is_one_of() {
    let env = env().await;
    let token = env.token(json!({ "scope": "read:contacts" }));
    let reply = env.get_bearer("/api/one-of/x", &token).await;
    assert_json_error(&reply, 403, "insufficient_scope");
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            "Bearer realm=\"scopegate\", error=\"insufficient_scope\", scope=\"write:contacts admin\""
        ),
    );
    for scope in [
        "admin",
        "write:contacts",
        "read:contacts write:contacts admin",
    ] {
        let token = env.token(json!({ "scope": scope }));
        expect_ok(&env, "/api/one-of/x", &token, &format!("scope {scope:?}")).await;
    }
    // scopes and any_scopes together: all of the first, one of the second.
    let token = env.token(json!({ "scope": "admin" }));
    let reply = env.get_bearer("/api/mixed/x", &token).await;
    assert_json_error(&reply, 403, "insufficient_scope");
    assert!(
        reply
            .header("www-authenticate")
            .is_some_and(|c| c.ends_with("scope=\"read:contacts\"")),
        "{:?}",
        reply.header("www-authenticate")
    );
    let token = env.token(json!({ "scope": "read:contacts" }));
    let reply = env.get_bearer("/api/mixed/x", &token).await;
    assert!(
        reply
            .header("www-authenticate")
            .is_some_and(|c| c.ends_with("scope=\"write:contacts admin\"")),
        "{:?}",
        reply.header("www-authenticate")
    );
    let token = env.token(json!({ "scope": "read:contacts admin" }));
    expect_ok(
        &env,
        "/api/mixed/x",
        &token,
        "scopes + any_scopes satisfied",
    )
    .await;
}

#[tokio::test]
async fn scopes_come_from_scope_string_scope_array_or_scp() {
    let env = env().await;
    let cases = [
        (
            json!({ "scope": "openid read:contacts" }),
            "openid read:contacts",
        ),
        (
            json!({ "scope": ["openid", "read:contacts"] }),
            "openid read:contacts",
        ),
        (
            json!({ "scope": null, "scp": "read:contacts profile" }),
            "read:contacts profile",
        ),
        (
            json!({ "scope": null, "scp": ["read:contacts", "profile"] }),
            "read:contacts profile",
        ),
    ];
    for (extra, forwarded) in cases {
        let token = env.token(extra.clone());
        let seen = expect_ok(&env, "/api/read/x", &token, &format!("claims {extra}")).await;
        assert_eq!(seen.one("x-auth-scopes"), Some(forwarded), "claims {extra}");
    }
}

#[tokio::test]
async fn scopes_match_whole_words_only() {
    let env = env().await;
    for scope in [
        json!("read:contactsX"),
        json!("read"),
        json!("read:contacts:all"),
        json!("READ:contacts"),
        json!("xread:contacts"),
        json!("read:contacts,write"),
        json!(""),
    ] {
        let token = env.token(json!({ "scope": scope.clone() }));
        let reply = env.get_bearer("/api/read/x", &token).await;
        assert_json_error(&reply, 403, "insufficient_scope");
        assert_eq!(
            env.upstream.count(),
            0,
            "scope {scope} reached the upstream"
        );
    }
    // scp is not consulted when scope is present.
    let token = env.token(json!({ "scope": "profile", "scp": "read:contacts" }));
    let reply = env.get_bearer("/api/read/x", &token).await;
    assert_json_error(&reply, 403, "insufficient_scope");
}

/// `scope_claims: [scp, roles]` (Microsoft Entra ID): both claims are read, strings or
/// lists, in order, repeats dropped; `scope` is then ignored.
#[tokio::test]
async fn scope_claims_name_the_claims_read_as_scopes() {
    let template = standard_yaml(&routes()).replace(
        "      jwks_min_refresh: 200ms\n",
        "      jwks_min_refresh: 200ms\n      scope_claims: [scp, roles]\n",
    );
    assert!(template.contains("scope_claims:"), "template edit failed");
    let env = Env::start_yaml(&template).await;
    let cases = [
        (
            json!({ "scope": null, "scp": "profile", "roles": ["read:contacts"] }),
            "profile read:contacts",
        ),
        (
            json!({ "scope": null, "scp": ["read:contacts"], "roles": "read:contacts admin" }),
            "read:contacts admin",
        ),
        (
            json!({ "scope": null, "roles": ["read:contacts"] }),
            "read:contacts",
        ),
    ];
    for (extra, forwarded) in cases {
        let token = env.token(extra.clone());
        let seen = expect_ok(&env, "/api/read/x", &token, &format!("claims {extra}")).await;
        assert_eq!(seen.one("x-auth-scopes"), Some(forwarded), "claims {extra}");
    }
    // `scope` is not one of the named claims: it grants nothing here.
    let token = env.token(json!({ "scope": "read:contacts" }));
    let reply = env.get_bearer("/api/read/x", &token).await;
    assert_json_error(&reply, 403, "insufficient_scope");
    // A named claim of the wrong type is a malformed token, not an empty grant.
    let token = env.token(json!({ "scope": null, "roles": 7 }));
    expect_refused(&env, &token, "malformed", "roles: 7").await;
}

#[tokio::test]
async fn the_clients_allowlist_checks_azp_or_client_id() {
    let template = standard_yaml(&routes()).replace(
        "      jwks_min_refresh: 200ms\n",
        "      jwks_min_refresh: 200ms\n      clients: [client-a, client-b]\n",
    );
    assert!(template.contains("clients:"), "template edit failed");
    let env = Env::start_yaml(&template).await;
    for (extra, ok) in [
        (json!({ "azp": "client-a" }), true),
        (json!({ "azp": null, "client_id": "client-b" }), true),
        (json!({ "azp": "client-c" }), false),
        (json!({ "azp": null, "client_id": "client-c" }), false),
        (json!({ "azp": null }), false),
        (json!({ "azp": "client-c", "client_id": "client-a" }), false),
    ] {
        let token = env.token(extra.clone());
        if ok {
            let seen = expect_ok(&env, "/api/any/x", &token, &format!("claims {extra}")).await;
            assert!(
                seen.one("x-auth-client-id").is_some(),
                "client id not forwarded for {extra}"
            );
        } else {
            expect_refused(&env, &token, "unknown_client", &format!("claims {extra}")).await;
        }
    }
}

#[tokio::test]
async fn optional_auth_forwards_anonymous_requests_but_not_bad_tokens() {
    let env = env().await;
    let reply = env
        .get("/api/maybe/x", &[("x-auth-subject", "spoofed")])
        .await;
    assert_eq!(
        reply.status,
        200,
        "anonymous request on auth: optional: {}",
        reply.text()
    );
    let seen = env.upstream.last();
    for name in [
        "x-auth-subject",
        "x-auth-scopes",
        "x-auth-client-id",
        "x-auth-issuer",
    ] {
        assert!(
            seen.all(name).is_empty(),
            "anonymous request forwarded with {name}: {seen:?}"
        );
    }
    // A non-Bearer Authorization is no token: still anonymous.
    let reply = env
        .get("/api/maybe/x", &[("authorization", "Basic dXNlcjpwYXNz")])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(env.upstream.last().all("x-auth-subject").is_empty());

    let token = env.token(json!({}));
    let seen = expect_ok(
        &env,
        "/api/maybe/x",
        &token,
        "valid token on optional route",
    )
    .await;
    assert_eq!(seen.one("x-auth-subject"), Some("user-1"));

    let count = env.upstream.count();
    for bad in [
        env.token(json!({ "exp": now() - 3600 })),
        "abc.def.ghi".to_string(),
    ] {
        let reply = env.get_bearer("/api/maybe/x", &bad).await;
        assert_invalid_token(&reply, &bad);
    }
    assert_eq!(
        env.upstream.count(),
        count,
        "a bad token on an optional route was forwarded"
    );
}
