//! The built-in issuer's client authentication by signed assertion (`private_key_jwt`,
//! RFC 7523 §2.2 / OpenID Connect Core §9), pushed authorization requests (RFC 9126),
//! RS256 ID tokens beside another signing algorithm (OpenID Connect Core §15.1), DPoP at
//! the token endpoint (RFC 9449) and what discovery says of them. Each test names the
//! section it holds the issuer to; hostile input gets the spec's error code, never a 500.
//! The real gateway on 127.0.0.1:0, real HTTP, the issuer's manual clock.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::issuer::*;
use common::{Key, jwks_of, unique};
use http_body_util::Full;
use scopegate::jose::{Alg, Jwk, b64url, thumbprint};
use serde_json::{Value, json};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clients this file adds: `signed` (private_key_jwt, inline keys), `fetched`
/// (private_key_jwt, `jwks_uri`), `post-only` (client_secret_post only), `pushed`
/// (PAR required), `bound` (DPoP required), `rs` (RS256 ID tokens).
fn options(signed: &Key, jwks_uri: &str, algorithm: &'static str) -> Options {
    let jwks = jwks_of(&[signed]);
    Options {
        algorithm,
        extra_clients: format!(
            r#"
    - client_id: signed
      token_endpoint_auth_method: private_key_jwt
      jwks: {jwks}
      grant_types: [client_credentials]
      grants: {{ "{CONTACTS}": [read:contacts] }}
    - client_id: fetched
      token_endpoint_auth_method: private_key_jwt
      jwks_uri: {jwks_uri}
      grant_types: [client_credentials]
      grants: {{ "{CONTACTS}": [read:contacts] }}
    - client_id: post-only
      client_secret: post-only-secret
      token_endpoint_auth_method: client_secret_post
      grant_types: [client_credentials]
      grants: {{ "{CONTACTS}": [read:contacts] }}
    - client_id: pushed
      client_secret: pushed-test-secret
      grant_types: [authorization_code]
      redirect_uris: [{WEBAPP_CALLBACK}]
      require_pushed_authorization_requests: true
    - client_id: bound
      grant_types: [password, refresh_token]
      dpop_bound_access_tokens: true
    - client_id: rs
      grant_types: [password]
      id_token_signed_response_alg: RS256
"#
        ),
        ..Options::default()
    }
}

struct Setup {
    gw: Running,
    signed: Key,
    fetched: Key,
    _keys: common::Issuer,
    _store: TestStore,
}

async fn setup(algorithm: &'static str) -> Setup {
    let signed = Key::generate(Alg::ES256, "signed-1");
    let fetched = Key::generate(Alg::RS256, "fetched-1");
    let keys = common::Issuer::start(&[&fetched]).await;
    let store = TestStore::new(Backend::Sqlite).await;
    let gw = Running::start(&store.url, &options(&signed, &keys.jwks_url(), algorithm)).await;
    Setup {
        gw,
        signed,
        fetched,
        _keys: keys,
        _store: store,
    }
}

fn merge(target: &mut Value, changes: Value) {
    if let (Some(map), Value::Object(changes)) = (target.as_object_mut(), changes) {
        for (name, value) in changes {
            if value.is_null() {
                map.remove(&name);
            } else {
                map.insert(name, value);
            }
        }
    }
}

/// A client assertion by `key` for `client`, good for a minute by the issuer's clock,
/// with `changes` merged into the claims (`null` removes one).
fn assertion(gw: &Running, key: &Key, client: &str, changes: Value) -> String {
    let now = gw.issuer.now();
    let mut claims = json!({
        "iss": client,
        "sub": client,
        "aud": gw.url("/oauth/token"),
        "exp": now + 60,
        "iat": now,
        "jti": unique("assertion"),
    });
    merge(&mut claims, changes);
    key.token_with(
        json!({ "alg": key.alg.name(), "kid": key.kid, "typ": "JWT" }),
        &claims,
    )
}

async fn machine_with(gw: &Running, client_assertion: &str) -> Answer {
    gw.token(
        &[
            ("grant_type", "client_credentials"),
            ("audience", CONTACTS),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", client_assertion),
        ],
        None,
    )
    .await
}

fn assert_invalid_client(answer: &Answer, why: &str) {
    assert_eq!(answer.status, 401, "{why}: {:?}", answer.json);
    assert_eq!(answer.error(), "invalid_client", "{why}");
    assert!(
        answer.header("www-authenticate").starts_with("Basic"),
        "{why}: RFC 6749 §5.2 challenge"
    );
}

// ---------------------------------------------------------------------------------------
// RFC 7523 §2.2 / §3, OpenID Connect Core §9: private_key_jwt.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_7523_3_private_key_jwt_and_its_hostile_assertions() {
    let s = setup("RS256").await;
    let gw = &s.gw;

    let good = assertion(gw, &s.signed, "signed", json!({}));
    let answer = machine_with(gw, &good).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    let claims = claims_of(answer.json["access_token"].as_str().unwrap());
    assert_eq!(claims["client_id"], "signed");
    assert_eq!(claims["sub"], "signed@clients");

    // §3 item 7: a jti is used once (the store remembers it until exp).
    assert_invalid_client(&machine_with(gw, &good).await, "replayed jti");

    // The issuer identifier is an audience too (RFC 7523 §3 item 3).
    let to_issuer = assertion(gw, &s.signed, "signed", json!({ "aud": [issuer_of(gw)] }));
    assert_eq!(machine_with(gw, &to_issuer).await.status, 200);

    let now = gw.issuer.now();
    let hostile = [
        (
            "wrong aud",
            json!({ "aud": "https://elsewhere.example.com/token" }),
        ),
        ("no aud", json!({ "aud": null })),
        ("expired", json!({ "exp": now - 1 })),
        ("no exp", json!({ "exp": null })),
        ("exp far ahead", json!({ "exp": now + 3600 })),
        ("no jti", json!({ "jti": null })),
        ("iat in the future", json!({ "iat": now + 600 })),
        ("iss is not sub", json!({ "iss": "m2m" })),
        (
            "another client's sub",
            json!({ "iss": "m2m", "sub": "m2m" }),
        ),
        (
            "unknown client",
            json!({ "iss": "nobody", "sub": "nobody" }),
        ),
    ];
    for (why, changes) in hostile {
        let bad = assertion(gw, &s.signed, "signed", changes);
        assert_invalid_client(&machine_with(gw, &bad).await, why);
    }
    // Signed by a key the client does not have; unsigned; malformed.
    let rogue = Key::generate(Alg::ES256, "signed-1");
    assert_invalid_client(
        &machine_with(gw, &assertion(gw, &rogue, "signed", json!({}))).await,
        "rogue key",
    );
    let claims = json!({ "iss": "signed", "sub": "signed", "aud": gw.url("/oauth/token"),
        "exp": now + 60, "jti": unique("none") });
    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none"}"#),
        b64url(claims.to_string().as_bytes())
    );
    assert_invalid_client(&machine_with(gw, &unsigned).await, "alg none");
    let hs256 = format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"HS256","kid":"signed-1"}"#),
        b64url(claims.to_string().as_bytes()),
        b64url(b"mac")
    );
    assert_invalid_client(&machine_with(gw, &hs256).await, "alg HS256");
    for malformed in [
        "",
        "abc",
        "a.b.c",
        "....",
        "eyJhbGciOiJFUzI1NiJ9.bm90IGpzb24.c2ln",
    ] {
        assert_invalid_client(&machine_with(gw, malformed).await, malformed);
    }
    // The wrong assertion type.
    let fresh = assertion(gw, &s.signed, "signed", json!({}));
    let answer = gw
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", "urn:example:saml"),
                ("client_assertion", &fresh),
            ],
            None,
        )
        .await;
    assert_invalid_client(&answer, "assertion type");

    // Only the registered method: this client has no secret to send, nor may it name
    // itself as a public client.
    let answer = gw
        .token(
            &[("grant_type", "client_credentials")],
            Some(("signed", "a-guessed-secret")),
        )
        .await;
    assert_invalid_client(&answer, "a secret from a private_key_jwt client");
    let answer = gw
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "signed"),
            ],
            None,
        )
        .await;
    assert_invalid_client(&answer, "client_id alone");

    let errors = gw
        .issuer
        .core
        .metrics
        .token_errors_total
        .with_label_values(&["client_credentials", "invalid_client"])
        .get();
    assert!(errors >= 15, "token_errors_total counts them: {errors}");
}

/// RFC 7523 §2.2 at every endpoint that authenticates clients: introspection takes an
/// assertion whose audience is that endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_7523_2_2_assertions_at_introspection_and_from_a_jwks_uri() {
    let s = setup("RS256").await;
    let gw = &s.gw;
    let token = gw.machine_access_token().await;
    let to_introspection = assertion(
        gw,
        &s.signed,
        "signed",
        json!({ "aud": gw.url("/oauth/introspect") }),
    );
    let answer = post_form(
        &gw.url("/oauth/introspect"),
        &[
            ("token", &token),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &to_introspection),
        ],
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(answer.json["active"], true);

    // Keys fetched from the client's jwks_uri (and cached).
    let fetched = assertion(gw, &s.fetched, "fetched", json!({}));
    let answer = machine_with(gw, &fetched).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    let again = assertion(gw, &s.fetched, "fetched", json!({}));
    assert_eq!(machine_with(gw, &again).await.status, 200);
    assert_eq!(s._keys.jwks_hits(), 1, "the client's keys are cached");
    // The inline-keyed client's key does not open the fetched client.
    let crossed = assertion(gw, &s.signed, "fetched", json!({}));
    assert_invalid_client(&machine_with(gw, &crossed).await, "another client's key");
}

/// RFC 6749 §2.3 / §5.2: a client registered for client_secret_post is refused with
/// Basic (401, `WWW-Authenticate: Basic`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_6749_2_3_only_the_registered_method() {
    let s = setup("RS256").await;
    let gw = &s.gw;
    let by_basic = gw
        .token(
            &[("grant_type", "client_credentials"), ("audience", CONTACTS)],
            Some(("post-only", "post-only-secret")),
        )
        .await;
    assert_invalid_client(&by_basic, "Basic for a client_secret_post client");
    let by_post = gw
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("audience", CONTACTS),
                ("client_id", "post-only"),
                ("client_secret", "post-only-secret"),
            ],
            None,
        )
        .await;
    assert_eq!(by_post.status, 200, "{:?}", by_post.json);
    // Unchanged default: a client with a secret takes Basic or the form.
    assert_eq!(gw.machine_token().await["token_type"], "Bearer");
}

// ---------------------------------------------------------------------------------------
// RFC 9126: pushed authorization requests.

fn webapp_request(challenge: &str) -> Vec<(&str, &str)> {
    vec![
        ("response_type", "code"),
        ("redirect_uri", WEBAPP_CALLBACK),
        ("scope", "openid read:contacts"),
        ("audience", CONTACTS),
        ("state", "st-par"),
        ("nonce", "n-par"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
}

async fn push(gw: &Running, client: (&str, &str), params: &[(&str, &str)]) -> Answer {
    post_form(&gw.url("/oauth/par"), params, Some(client)).await
}

fn page_error(answer: &Answer) -> String {
    let text = answer.text();
    text.split("Error: ")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_9126_pushed_requests_are_redeemed_once_by_their_client() {
    let s = setup("RS256").await;
    let gw = &s.gw;
    let (_, challenge) = pkce();
    let webapp = ("webapp", WEBAPP_SECRET);

    // §2.2: 201 with a request_uri and its lifetime.
    let pushed = push(gw, webapp, &webapp_request(&challenge)).await;
    assert_eq!(pushed.status, 201, "{:?}", pushed.json);
    assert_eq!(pushed.header("cache-control"), "no-store");
    let uri = pushed.json["request_uri"].as_str().unwrap().to_string();
    assert!(
        uri.starts_with("urn:ietf:params:oauth:request_uri:"),
        "{uri}"
    );
    assert_eq!(pushed.json["expires_in"], 60);

    // §4: /authorize reads the pushed parameters only (this redirect_uri is ignored).
    let mut browser = Browser::new(gw);
    let by_reference = [
        ("client_id", "webapp"),
        ("request_uri", uri.as_str()),
        ("redirect_uri", "https://evil.example.com/cb"),
    ];
    let page = browser.get(&authorize_url(gw, &by_reference)).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(!page.text().contains("evil.example.com"));
    let answer = browser
        .sign_in(&gw.base, &page, "alice", ALICE_PASSWORD)
        .await;
    assert_eq!(answer.status, 303, "{}", answer.text());
    let r = Redirect::of(&answer);
    assert_eq!(r.base, WEBAPP_CALLBACK);
    assert_eq!(r.query["state"], "st-par");
    assert!(r.query.contains_key("code"));

    // Used once: the same request_uri again is invalid_request_uri.
    let again = browser.get(&authorize_url(gw, &by_reference[..2])).await;
    assert_eq!(again.status, 400, "{}", again.text());
    assert_eq!(page_error(&again), "invalid_request_uri");

    // Another client's request_uri.
    let pushed = push(gw, webapp, &webapp_request(&challenge)).await;
    let uri = pushed.json["request_uri"].as_str().unwrap().to_string();
    let stolen = [("client_id", "spa"), ("request_uri", uri.as_str())];
    let answer = browser.get(&authorize_url(gw, &stolen)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(page_error(&answer), "invalid_request_uri");

    // Expired (issuer.par.ttl = 60s).
    gw.clock.advance(Duration::from_secs(61));
    let late = [("client_id", "webapp"), ("request_uri", uri.as_str())];
    let answer = browser.get(&authorize_url(gw, &late)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(page_error(&answer), "invalid_request_uri");

    // A request_uri that is not a pushed one stays request_uri_not_supported.
    let mut other = webapp_request(&challenge);
    other.push(("client_id", "webapp"));
    other.push(("request_uri", "https://rp.example.com/request.jwt"));
    let r = Redirect::of(&browser.get(&authorize_url(gw, &other)).await);
    assert_eq!(r.query["error"], "request_uri_not_supported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_9126_2_1_pushes_are_checked_like_authorize() {
    let s = setup("RS256").await;
    let gw = &s.gw;
    let (_, challenge) = pkce();
    let webapp = ("webapp", WEBAPP_SECRET);

    // Client authentication as at the token endpoint.
    let answer = push(gw, ("webapp", "wrong-secret"), &webapp_request(&challenge)).await;
    assert_invalid_client(&answer, "wrong secret at PAR");
    // The request is checked as /authorize would.
    let mut bad = webapp_request(&challenge);
    bad[1] = ("redirect_uri", "https://evil.example.com/cb");
    let answer = push(gw, webapp, &bad).await;
    assert_eq!(answer.status, 400, "{:?}", answer.json);
    assert_eq!(answer.error(), "invalid_request");
    let mut bad = webapp_request(&challenge);
    bad[0] = ("response_type", "magic");
    assert_eq!(
        push(gw, webapp, &bad).await.error(),
        "unsupported_response_type"
    );
    // Request objects: not supported; a request_uri inside a push: invalid_request.
    let mut with_object = webapp_request(&challenge);
    with_object.push(("request", "eyJhbGciOiJub25lIn0.e30."));
    assert_eq!(
        push(gw, webapp, &with_object).await.error(),
        "request_not_supported"
    );
    let mut with_uri = webapp_request(&challenge);
    with_uri.push(("request_uri", "urn:ietf:params:oauth:request_uri:x"));
    assert_eq!(push(gw, webapp, &with_uri).await.error(), "invalid_request");

    // §6: a client that must push is refused a direct request.
    let mut direct = webapp_request(&challenge);
    direct.push(("client_id", "pushed"));
    let mut browser = Browser::new(gw);
    let r = Redirect::of(&browser.get(&authorize_url(gw, &direct)).await);
    assert_eq!(r.query["error"], "invalid_request");
    let pushed = push(
        gw,
        ("pushed", "pushed-test-secret"),
        &webapp_request(&challenge),
    )
    .await;
    assert_eq!(pushed.status, 201, "{:?}", pushed.json);
    let uri = pushed.json["request_uri"].as_str().unwrap();
    let page = browser
        .get(&authorize_url(
            gw,
            &[("client_id", "pushed"), ("request_uri", uri)],
        ))
        .await;
    assert_eq!(page.status, 200, "{}", page.text());

    // §5: discovery.
    let doc = get(&gw.url("/.well-known/openid-configuration"), None)
        .await
        .json;
    assert_eq!(
        doc["pushed_authorization_request_endpoint"],
        gw.url("/oauth/par")
    );
    assert_eq!(doc["require_pushed_authorization_requests"], false);
}

// ---------------------------------------------------------------------------------------
// OpenID Connect Core §15.1 / Discovery §3: RS256 ID tokens beside ES256.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_core_15_1_rs256_id_tokens_on_an_es256_issuer() {
    let s = setup("ES256").await;
    let gw = &s.gw;
    let header_alg = |token: &str| {
        let header = token.split('.').next().unwrap();
        let bytes = base64_decode(header);
        serde_json::from_slice::<Value>(&bytes).unwrap()["alg"].clone()
    };
    let params = |client: &'static str| {
        [
            ("grant_type", "password"),
            ("client_id", client),
            ("username", "alice"),
            ("password", ALICE_PASSWORD),
            ("scope", "openid read:contacts"),
            ("audience", CONTACTS),
        ]
    };
    let rs = gw.token(&params("rs"), None).await;
    assert_eq!(rs.status, 200, "{:?}", rs.json);
    assert_eq!(header_alg(rs.json["id_token"].as_str().unwrap()), "RS256");
    assert_eq!(
        header_alg(rs.json["access_token"].as_str().unwrap()),
        "ES256"
    );
    let default = gw.token(&params("cli"), None).await;
    assert_eq!(
        header_alg(default.json["id_token"].as_str().unwrap()),
        "ES256"
    );

    // Both keys are published; the RS256 ID token verifies with the JWKS.
    let jwks = gw.jwks().await;
    let ktys: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kty"].as_str().unwrap())
        .collect();
    assert!(ktys.contains(&"RSA") && ktys.contains(&"EC"), "{ktys:?}");
    let id_token = rs.json["id_token"].as_str().unwrap();
    let kid = claims_of_header(id_token)["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap();
    let key =
        jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(jwk.clone()).unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["rs"]);
    validation.set_issuer(&[issuer_of(gw)]);
    jsonwebtoken::decode::<Value>(id_token, &key, &validation)
        .expect("the RS256 ID token verifies");

    let doc = get(&gw.url("/.well-known/openid-configuration"), None)
        .await
        .json;
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["ES256", "RS256"])
    );

    // Replicas stay consistent: a second issuer on the same store signs with the same
    // RS256 key.
    let rs_after_refresh = {
        gw.issuer.core.keys.refresh().await.unwrap();
        gw.token(&params("rs"), None).await
    };
    assert_eq!(
        claims_of_header(rs_after_refresh.json["id_token"].as_str().unwrap())["kid"],
        kid.as_str()
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

fn claims_of_header(token: &str) -> Value {
    serde_json::from_slice(&base64_decode(token.split('.').next().unwrap())).unwrap()
}

// ---------------------------------------------------------------------------------------
// RFC 9449: DPoP at the token endpoint, and the bound token at the proxy.

struct Holder {
    key: Key,
}

impl Holder {
    fn new() -> Holder {
        Holder {
            key: Key::generate(Alg::ES256, "dpop"),
        }
    }

    fn public_jwk(&self) -> Value {
        let mut jwk = self.key.jwk();
        if let Some(map) = jwk.as_object_mut() {
            map.remove("kid");
            map.remove("use");
            map.remove("alg");
        }
        jwk
    }

    fn jkt(&self) -> String {
        let jwk: Jwk = serde_json::from_value(self.public_jwk()).unwrap();
        b64url(&thumbprint(&jwk))
    }

    /// A proof for `method` on `url` (with `ath` for `token`), at the gateway's time.
    fn proof(&self, gw: &Running, method: &str, url: &str, token: Option<&str>) -> String {
        self.proof_with_nonce(gw, method, url, token, None)
    }

    fn proof_with_nonce(
        &self,
        gw: &Running,
        method: &str,
        url: &str,
        token: Option<&str>,
        nonce: Option<&str>,
    ) -> String {
        let mut claims = json!({
            "jti": unique("proof"),
            "htm": method,
            "htu": url,
            "iat": gw.issuer.now(),
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = Value::from(nonce);
        }
        if let Some(token) = token {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
            claims["ath"] = Value::from(b64url(digest.as_ref()));
        }
        let header =
            json!({ "typ": "dpop+jwt", "alg": self.key.alg.name(), "jwk": self.public_jwk() });
        self.key.token_with(header, &claims)
    }
}

async fn token_with_proof(gw: &Running, params: &[(&str, &str)], proof: Option<&str>) -> Answer {
    let headers: Vec<(&str, &str)> = proof.map(|p| ("dpop", p)).into_iter().collect();
    post_form_with(&gw.url("/oauth/token"), params, None, &headers).await
}

async fn call_api(gw: &Running, authorization: &str, proof: Option<&str>) -> Answer {
    let mut builder =
        http::Request::get(gw.url("/api/contacts/1")).header("authorization", authorization);
    if let Some(proof) = proof {
        builder = builder.header("dpop", proof);
    }
    send(builder.body(Full::new(Bytes::new())).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_9449_5_bound_tokens_from_the_issuer_open_the_proxy_only_with_a_proof() {
    let s = setup("RS256").await;
    let gw = &s.gw;
    let holder = Holder::new();
    let token_url = gw.url("/oauth/token");
    let login = [
        ("grant_type", "password"),
        ("client_id", "cli"),
        ("username", "alice"),
        ("password", ALICE_PASSWORD),
        ("scope", "read:contacts offline_access"),
        ("audience", CONTACTS),
    ];
    let proof = holder.proof(gw, "POST", &token_url, None);
    let answer = token_with_proof(gw, &login, Some(&proof)).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(answer.json["token_type"], "DPoP");
    let access = answer.json["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims_of(&access)["cnf"]["jkt"], holder.jkt().as_str());
    let refresh = answer.json["refresh_token"].as_str().unwrap().to_string();

    // §11.1: the same proof again is refused.
    let replayed = token_with_proof(gw, &login, Some(&proof)).await;
    assert_eq!(replayed.status, 400, "{:?}", replayed.json);
    assert_eq!(replayed.error(), "invalid_dpop_proof");
    // §4.3: a proof for another URL, another method.
    let elsewhere = holder.proof(gw, "POST", &gw.url("/oauth/revoke"), None);
    assert_eq!(
        token_with_proof(gw, &login, Some(&elsewhere)).await.error(),
        "invalid_dpop_proof"
    );
    let get_proof = holder.proof(gw, "GET", &token_url, None);
    assert_eq!(
        token_with_proof(gw, &login, Some(&get_proof)).await.error(),
        "invalid_dpop_proof"
    );
    // Garbage in the header.
    for junk in [
        "",
        "x",
        "a.b.c",
        "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6Im5vbmUifQ.e30.",
    ] {
        let answer = token_with_proof(gw, &login, Some(junk)).await;
        assert_eq!(answer.error(), "invalid_dpop_proof", "{junk:?}");
    }

    // At the proxy (tests/dpop.rs holds the details): with the proof, in.
    let at_api = holder.proof(gw, "GET", &gw.url("/api/contacts/1"), Some(&access));
    let ok = call_api(gw, &format!("DPoP {access}"), Some(&at_api)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // Without it, or as a bearer token: 401 with a DPoP challenge.
    let without = call_api(gw, &format!("DPoP {access}"), None).await;
    assert_eq!(without.status, 401);
    assert!(
        without.header("www-authenticate").starts_with("DPoP"),
        "{:?}",
        without.headers
    );
    let as_bearer = call_api(gw, &format!("Bearer {access}"), None).await;
    assert_eq!(as_bearer.status, 401);

    // §5: the public client's refresh token is bound to the key.
    let refresh_params = [
        ("grant_type", "refresh_token"),
        ("client_id", "cli"),
        ("refresh_token", refresh.as_str()),
    ];
    let no_proof = token_with_proof(gw, &refresh_params, None).await;
    assert_eq!(
        no_proof.error(),
        "invalid_dpop_proof",
        "{:?}",
        no_proof.json
    );
    let other = Holder::new();
    let other_proof = other.proof(gw, "POST", &token_url, None);
    let stolen = token_with_proof(gw, &refresh_params, Some(&other_proof)).await;
    assert_eq!(stolen.error(), "invalid_grant", "{:?}", stolen.json);
    let own = holder.proof(gw, "POST", &token_url, None);
    let refreshed = token_with_proof(gw, &refresh_params, Some(&own)).await;
    assert_eq!(refreshed.status, 200, "{:?}", refreshed.json);
    assert_eq!(refreshed.json["token_type"], "DPoP");

    // §5.2: a client registered with dpop_bound_access_tokens must send a proof.
    let bound = [
        ("grant_type", "password"),
        ("client_id", "bound"),
        ("username", "alice"),
        ("password", ALICE_PASSWORD),
        ("audience", CONTACTS),
    ];
    let answer = token_with_proof(gw, &bound, None).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.error(), "invalid_dpop_proof");
    let proof = holder.proof(gw, "POST", &token_url, None);
    assert_eq!(
        token_with_proof(gw, &bound, Some(&proof)).await.json["token_type"],
        "DPoP"
    );

    // Discovery (RFC 9449 §5.1, RFC 8414 §2).
    let doc = get(&gw.url("/.well-known/oauth-authorization-server"), None)
        .await
        .json;
    let algs = doc["dpop_signing_alg_values_supported"].as_array().unwrap();
    assert!(algs.contains(&json!("ES256")) && !algs.contains(&json!("HS256")));
    let methods = doc["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap();
    assert!(methods.contains(&json!("private_key_jwt")));
    let signing = doc["token_endpoint_auth_signing_alg_values_supported"]
        .as_array()
        .unwrap();
    assert!(signing.contains(&json!("RS256")) && !signing.contains(&json!("none")));
}

/// Config checks: keys both ways, private_key_jwt without keys, unknown methods.
#[test]
fn private_key_jwt_config_is_checked_at_load() {
    let load = |client: &str| {
        let yaml = format!(
            "issuer:\n  url: https://id.example.com/\n  clients:\n    - {{ client_id: c, grant_types: [password], {client} }}\n"
        );
        scopegate::config::Config::from_yaml_with_env(&yaml, |_| None).map(drop)
    };
    let jwks = jwks_of(&[&Key::generate(Alg::ES256, "k")]);
    assert!(
        load(&format!(
            "token_endpoint_auth_method: private_key_jwt, jwks: {jwks}"
        ))
        .is_ok()
    );
    let err = load("token_endpoint_auth_method: private_key_jwt").unwrap_err();
    assert_eq!(err.path, "issuer.clients[0].token_endpoint_auth_method");
    let err = load(&format!(
        "token_endpoint_auth_method: private_key_jwt, jwks: {jwks}, jwks_uri: https://c.example.com/jwks"
    ))
    .unwrap_err();
    assert_eq!(err.path, "issuer.clients[0].jwks_uri");
    let err = load("token_endpoint_auth_method: magic").unwrap_err();
    assert_eq!(err.path, "issuer.clients[0].token_endpoint_auth_method");
    let err = load("token_endpoint_auth_method: client_secret_basic").unwrap_err();
    assert_eq!(err.path, "issuer.clients[0].token_endpoint_auth_method");
    let err = load("id_token_signed_response_alg: ES256").unwrap_err();
    assert_eq!(err.path, "issuer.clients[0].id_token_signed_response_alg");
    let err = load("jwks: { keys: [{ kty: RSA, n: AQAB }] }").unwrap_err();
    assert!(
        err.path.starts_with("issuer.clients[0].jwks"),
        "{}",
        err.path
    );
}

/// Where openid-client (from npm) is installed for these tests: once per build
/// directory; the path of its entry module.
fn openid_client() -> std::path::PathBuf {
    const VERSION: &str = "6.9.0";
    let dir =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("openid-client-{VERSION}"));
    let entry = dir.join("node_modules/openid-client/build/index.js");
    if entry.is_file() {
        return entry;
    }
    let partial = dir.with_file_name(format!(
        "openid-client-{VERSION}.partial-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&partial).expect("a directory for npm");
    let installed = std::process::Command::new("npm")
        .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
        .arg(&partial)
        .arg(format!("openid-client@{VERSION}"))
        .status()
        .expect("npm (openid-client comes from the npm registry)");
    assert!(
        installed.success(),
        "npm install openid-client@{VERSION}: {installed}"
    );
    // Another build's test may have finished first; either install will do.
    if std::fs::rename(&partial, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    entry
}

/// A certified relying-party library, openid-client, as the client: it discovers the
/// issuer, authenticates with private_key_jwt (RFC 7523), gets a DPoP-bound token by
/// client credentials (RFC 9449, the issuer requiring server nonces, which the library
/// fetches by the `use_dpop_nonce` round trip) and uses it on a proxied route with its
/// proofs, and pushes an authorization request (RFC 9126) whose request_uri opens the
/// sign-in page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_uses_private_key_jwt_dpop_and_par() {
    let key = Key::generate(scopegate::jose::Alg::ES256, "interop-1");
    let jwks = jwks_of(&[&key]);
    let upstream = common::Upstream::start().await;
    let routes = format!(
        r#"  - name: interop
    match: {{ path: /interop/* }}
    upstream: "{}"
    audience: {CONTACTS}
    scopes: [read:contacts]
"#,
        upstream.url
    );
    let options = Options {
        extra_clients: format!(
            r#"
    - client_id: interop
      token_endpoint_auth_method: private_key_jwt
      jwks: {jwks}
      grant_types: [client_credentials, authorization_code]
      redirect_uris: [{WEBAPP_CALLBACK}]
      grants: {{ "{CONTACTS}": [read:contacts] }}
"#
        ),
        extra_routes: Box::leak(routes.into_boxed_str()),
        issuer_extra: "  dpop: { require_nonce: true }\n",
        ..Options::default()
    };
    let store = TestStore::new(Backend::Sqlite).await;
    let gw = Running::start(&store.url, &options).await;
    let der = key.key.to_pkcs8().expect("PKCS#8");
    let client_key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);

    let mut command = std::process::Command::new("node");
    command
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/openid-client/interop.mjs"),
        )
        .env("OPENID_CLIENT", openid_client())
        .env("ISSUER", issuer_of(&gw))
        .env("CLIENT_ID", "interop")
        .env("CLIENT_KEY", client_key)
        .env("CLIENT_KID", &key.kid)
        .env("AUDIENCE", CONTACTS)
        .env("SCOPE", "read:contacts")
        .env("RESOURCE", gw.url("/interop/contacts"))
        .env("REDIRECT_URI", WEBAPP_CALLBACK);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("node runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "openid-client failed: {stderr}");
    let out: Value = serde_json::from_slice(&output.stdout).expect("the script's JSON");

    assert_eq!(
        out["token_type"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("dpop"),
        "{out}"
    );
    assert_eq!(out["scope"], "read:contacts", "{out}");
    assert_eq!(out["with_proof"], 200, "{out}");
    assert_eq!(out["without_proof"], 401, "{out}");
    assert!(
        out["without_proof_challenge"]
            .as_str()
            .is_some_and(|c| c.starts_with("DPoP")),
        "{out}"
    );
    assert_eq!(
        out["pushed_params"],
        json!(["client_id", "request_uri"]),
        "{out}"
    );
    assert_eq!(out["authorize_status"], 200, "{out}");
    assert_eq!(out["authorize_page_asks_sign_in"], true, "{out}");
    let asked_for_nonce = gw
        .issuer
        .core
        .metrics
        .token_errors_total
        .with_label_values(&["client_credentials", "use_dpop_nonce"])
        .get();
    assert_eq!(asked_for_nonce, 1, "one use_dpop_nonce round trip");
    // The upstream saw the caller once: the request with its proof.
    assert_eq!(upstream.count(), 1);
    assert_eq!(
        upstream.last().one("x-auth-subject"),
        Some("interop@clients")
    );
}

/// RFC 9449 §8: with `issuer.dpop.require_nonce`, a proof without the issuer's nonce is
/// `use_dpop_nonce` with a `DPoP-Nonce` to use; with it the token is bound; a made-up or
/// stale nonce is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_9449_8_the_token_endpoint_can_require_server_nonces() {
    let store = TestStore::new(Backend::Sqlite).await;
    let options = Options {
        issuer_extra: "  dpop: { require_nonce: true }\n",
        ..Options::default()
    };
    let gw = Running::start(&store.url, &options).await;
    let holder = Holder::new();
    let url = gw.url("/oauth/token");
    let machine = |proof: String| {
        let gw = &gw;
        async move {
            let (id, secret) = ("m2m", M2M_SECRET);
            let headers = [("dpop", proof.as_str())];
            post_form_with(
                &gw.url("/oauth/token"),
                &[("grant_type", "client_credentials"), ("audience", CONTACTS)],
                Some((id, secret)),
                &headers,
            )
            .await
        }
    };

    let first = machine(holder.proof(&gw, "POST", &url, None)).await;
    assert_eq!(first.status, 400, "{}", first.text());
    assert_eq!(first.error(), "use_dpop_nonce");
    let nonce = first.header("dpop-nonce").to_string();
    assert!(!nonce.is_empty(), "no DPoP-Nonce");

    let bound = machine(holder.proof_with_nonce(&gw, "POST", &url, None, Some(&nonce))).await;
    assert_eq!(bound.status, 200, "{}", bound.text());
    assert_eq!(bound.json["token_type"], "DPoP");
    let token = bound.json["access_token"].as_str().expect("a token");
    assert_eq!(claims_of(token)["cnf"]["jkt"], holder.jkt());

    // A nonce the issuer never gave out, and one from long ago, are asked again.
    for stale in ["0.AAAAAAAAAAAAAAAAAAAAAA", "garbage", ""] {
        let again = machine(holder.proof_with_nonce(&gw, "POST", &url, None, Some(stale))).await;
        assert_eq!(again.error(), "use_dpop_nonce", "{stale}");
    }
    gw.clock.advance(Duration::from_secs(300));
    let expired = machine(holder.proof_with_nonce(&gw, "POST", &url, None, Some(&nonce))).await;
    assert_eq!(expired.error(), "use_dpop_nonce");
    let fresh = expired.header("dpop-nonce").to_string();
    assert_ne!(fresh, nonce);
    let good = machine(holder.proof_with_nonce(&gw, "POST", &url, None, Some(&fresh))).await;
    assert_eq!(good.status, 200, "{}", good.text());
}
