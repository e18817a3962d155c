//! DPoP (RFC 9449) at the proxy: a token bound to a key (`cnf.jkt`) opens a route only
//! with `Authorization: DPoP` and a fresh proof signed by that key for this request;
//! `dpop: required` routes take only bound tokens. Against the real gateway, a real
//! issuer (JWKS) and a real upstream on 127.0.0.1:0.

mod common;

use common::*;
use scopegate::jose::{Alg, Jwk, b64url, thumbprint};
use serde_json::{Value, json};

const ROUTES: &str = r#"
  - { name: api, match: { path: /api/* }, upstream: "@upstream@" }
  - { name: bound-only, match: { path: /bound/* }, upstream: "@upstream@", dpop: required }
"#;

/// A client's DPoP key.
struct Holder {
    key: Key,
}

impl Holder {
    fn new(alg: Alg) -> Holder {
        Holder {
            key: Key::generate(alg, "dpop"),
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

    /// `cnf.jkt`: the RFC 7638 thumbprint of the public key, base64url.
    fn jkt(&self) -> String {
        let jwk: Jwk = serde_json::from_value(self.public_jwk()).unwrap();
        b64url(&thumbprint(&jwk))
    }

    /// A proof for `method` on `path` of the gateway, for `token`, with `changes` merged
    /// into the claims (`null` removes one).
    fn proof(&self, method: &str, path: &str, token: &str, changes: Value) -> String {
        let ath = b64url(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref(),
        );
        let mut claims = json!({
            "jti": unique("proof"),
            "htm": method,
            "htu": format!("http://gateway.test{path}"),
            "iat": now(),
            "ath": ath,
        });
        merge(&mut claims, changes);
        let header =
            json!({ "typ": "dpop+jwt", "alg": self.key.alg.name(), "jwk": self.public_jwk() });
        self.key.token_with(header, &claims)
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

async fn call(env: &Env, path: &str, authorization: &str, proof: Option<&str>) -> Reply {
    let mut headers = vec![("authorization", authorization)];
    if let Some(proof) = proof {
        headers.push(("dpop", proof));
    }
    env.get(path, &headers).await
}

fn challenge(reply: &Reply) -> String {
    reply
        .headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_token_needs_its_proof_for_this_request() {
    let env = Env::start(ROUTES).await;
    let holder = Holder::new(Alg::ES256);
    let token = env.token(json!({ "cnf": { "jkt": holder.jkt() } }));
    let dpop = format!("DPoP {token}");

    let proof = holder.proof("GET", "/api/a", &token, json!({}));
    let reply = call(&env, "/api/a", &dpop, Some(&proof)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = env.upstream.last();
    assert_eq!(seen.one("x-auth-subject"), Some("user-1"));
    assert!(seen.one("authorization").is_none() && seen.one("dpop").is_none());

    // The same proof again: a replay.
    let replay = call(&env, "/api/a", &dpop, Some(&proof)).await;
    assert_eq!(replay.status, 401);
    assert!(
        challenge(&replay).starts_with("DPoP "),
        "{}",
        challenge(&replay)
    );
    assert!(challenge(&replay).contains("invalid_dpop_proof"));

    let other = Holder::new(Alg::ES256);
    let other_token = env.token(json!({}));
    let refused: Vec<(&str, String)> = vec![
        ("no proof", String::new()),
        (
            "another method",
            holder.proof("POST", "/api/b", &token, json!({})),
        ),
        (
            "another path",
            holder.proof("GET", "/api/elsewhere", &token, json!({})),
        ),
        (
            "another host",
            holder.proof(
                "GET",
                "/api/b",
                &token,
                json!({ "htu": "http://evil.test/api/b" }),
            ),
        ),
        (
            "another token",
            holder.proof("GET", "/api/b", &other_token, json!({})),
        ),
        (
            "another key",
            other.proof("GET", "/api/b", &token, json!({})),
        ),
        (
            "too old",
            holder.proof("GET", "/api/b", &token, json!({ "iat": now() - 600 })),
        ),
        (
            "from the future",
            holder.proof("GET", "/api/b", &token, json!({ "iat": now() + 600 })),
        ),
        (
            "no jti",
            holder.proof("GET", "/api/b", &token, json!({ "jti": null })),
        ),
        (
            "no ath",
            holder.proof("GET", "/api/b", &token, json!({ "ath": null })),
        ),
        ("not a JWS", "not.a-proof".to_string()),
    ];
    for (case, proof) in &refused {
        let proof = (!proof.is_empty()).then_some(proof.as_str());
        let reply = call(&env, "/api/b", &dpop, proof).await;
        assert_eq!(reply.status, 401, "{case}: {}", reply.text());
        assert!(challenge(&reply).starts_with("DPoP "), "{case}");
    }
    // A wrong typ, a private key in the header, two proofs.
    let claims = json!({ "jti": unique("p"), "htm": "GET", "htu": "http://gateway.test/api/c", "iat": now(),
        "ath": b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref()) });
    let wrong_typ = holder.key.token_with(
        json!({ "typ": "jwt", "alg": "ES256", "jwk": holder.public_jwk() }),
        &claims,
    );
    let mut private = holder.public_jwk();
    merge(&mut private, json!({ "d": "c2VjcmV0" }));
    let with_private = holder.key.token_with(
        json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": private }),
        &claims,
    );
    for (case, proof) in [("typ", wrong_typ), ("private jwk", with_private)] {
        let reply = call(&env, "/api/c", &dpop, Some(&proof)).await;
        assert_eq!(reply.status, 401, "{case}");
    }
    let first = holder.proof("GET", "/api/c", &token, json!({}));
    let second = holder.proof("GET", "/api/c", &token, json!({}));
    let reply = env
        .get(
            "/api/c",
            &[
                ("authorization", &dpop),
                ("dpop", &first),
                ("dpop", &second),
            ],
        )
        .await;
    assert_eq!(reply.status, 401);

    // A bound token sent as Bearer is refused; an unbound one sent as DPoP too.
    let proof = holder.proof("GET", "/api/d", &token, json!({}));
    let bearer = call(&env, "/api/d", &format!("Bearer {token}"), Some(&proof)).await;
    assert_eq!(bearer.status, 401, "{}", bearer.text());
    let unbound = env.token(json!({}));
    let proof = holder.proof("GET", "/api/d", &unbound, json!({}));
    let reply = call(&env, "/api/d", &format!("DPoP {unbound}"), Some(&proof)).await;
    assert_eq!(reply.status, 401);
    // Unbound bearer tokens still work on ordinary routes.
    assert_eq!(
        call(&env, "/api/d", &format!("Bearer {unbound}"), None)
            .await
            .status,
        200
    );

    let metrics = env.gw.metrics().await;
    assert!(
        metrics.contains(r#"scopegate_auth_failures_total{reason="dpop_invalid",route="api"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_required_routes_take_only_bound_tokens() {
    let env = Env::start(ROUTES).await;
    let holder = Holder::new(Alg::EdDSA);
    let unbound = env.token(json!({}));
    let reply = call(&env, "/bound/x", &format!("Bearer {unbound}"), None).await;
    assert_eq!(reply.status, 401);
    assert!(
        challenge(&reply).starts_with("DPoP "),
        "{}",
        challenge(&reply)
    );
    assert_eq!(env.get("/bound/x", &[]).await.status, 401);

    let token = env.token(json!({ "cnf": { "jkt": holder.jkt() } }));
    let proof = holder.proof("GET", "/bound/x", &token, json!({}));
    let reply = call(&env, "/bound/x", &format!("DPoP {token}"), Some(&proof)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // A token bound some other way (mTLS's x5t#S256) cannot be honoured: refused.
    let mtls = env.token(json!({ "cnf": { "x5t#S256": "abc" } }));
    assert_eq!(
        call(&env, "/api/x", &format!("Bearer {mtls}"), None)
            .await
            .status,
        401
    );
}
