//! Several replicas, proven with processes: two `scopegate run` processes with the same
//! config (both listen on `127.0.0.1:0`) on one PostgreSQL database (a throwaway server
//! the harness starts, a database of this test's own) behave as one issuer:
//!
//! - they serve the same JWKS;
//! - a client_credentials token from A passes a protected route on B;
//! - a refresh token issued by A is rotated by B; presenting the spent one again on A is
//!   detected and revokes the family, so the token B issued fails too, on either;
//! - a key rotation on A (the active key aged past `rotate_after` in the store, as 31
//!   days would; the next key read on A rotates) is seen by B: a token A signs with the
//!   new key passes B's routes (B re-reads the store on the unknown `kid`) and B's
//!   introspection, B then signs with it too, and the JWKS match again.
//!
//! The store URL carries a password (the test server trusts local connections and
//! ignores it): neither process may ever log it.

mod common;

use serde_json::{Value, json};

use common::eventually;
use common::issuer::{
    ALICE_PASSWORD, Answer, CONTACTS, TempDir, cli_refresh, introspect_as, login_at,
    machine_token_at,
};
use common::process::{LISTEN_ANY, Process};
use common::rogue_rsa;

const ISSUER: &str = "https://issuer.scopegate.test/";
const M2M_SECRET: &str = "m2m-replica-secret";
const RS_SECRET: &str = "rs-replica-secret";

fn config(store: &str) -> String {
    let (alice_hash, _) = common::issuer::hashes();
    format!(
        r#"{LISTEN_ANY}log: {{ format: json, level: info }}
routes:
  - name: contacts
    match: {{ path: /api/contacts/* }}
    upstream: builtin:echo
    audience: {CONTACTS}
    scopes: [read:contacts]
issuer:
  url: {ISSUER}
  store: "{store}"
  # Reuse right after a rotation must revoke the family (no grace window).
  refresh_grace: 0s
  apis:
    - identifier: {CONTACTS}
      scopes: [{{ value: read:contacts }}]
      allow_offline_access: true
  roles:
    reader: {{ "{CONTACTS}": [read:contacts] }}
  clients:
    - client_id: cli
      grant_types: [password, refresh_token]
    - client_id: m2m
      client_secret: {M2M_SECRET}
      grant_types: [client_credentials]
      grants: {{ "{CONTACTS}": [read:contacts] }}
    - client_id: resource-server
      client_secret: {RS_SECRET}
      grant_types: [client_credentials]
  users:
    - username: alice
      password_hash: {alice_hash}
      roles: [reader]
"#
    )
}

/// The store URL with a password, and the password: the URL's own, or one added (the
/// harness's server trusts local connections and ignores it). `None` for a URL without
/// a user.
fn with_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return (url.to_string(), None);
    };
    match userinfo.split_once(':') {
        Some((_, password)) if !password.is_empty() => {
            (url.to_string(), Some(password.to_string()))
        }
        _ => {
            let user = userinfo.trim_end_matches(':');
            let password = format!("pg-password-{}", std::process::id());
            (
                format!("{scheme}://{user}:{password}@{host}"),
                Some(password),
            )
        }
    }
}

async fn jwks(process: &Process) -> Value {
    let answer = common::issuer::get(&process.url("/.well-known/jwks.json"), None).await;
    assert_eq!(answer.status, 200);
    answer.json
}

fn kids(jwks: &Value) -> Vec<String> {
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect();
    kids.sort();
    kids
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("a JWS")
        .kid
        .expect("a kid")
}

async fn machine_token(process: &Process) -> String {
    machine_token_at(&process.url(""), M2M_SECRET).await
}

async fn refresh(process: &Process, token: &str) -> Answer {
    cli_refresh(&process.url(""), token).await
}

async fn contacts(process: &Process, token: &str) -> u16 {
    common::issuer::get(&process.url("/api/contacts/1"), Some(token))
        .await
        .status
}

async fn introspect(process: &Process, token: &str) -> Value {
    introspect_as(&process.url(""), token, ("resource-server", RS_SECRET)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_postgres_store_act_as_one_issuer() {
    let database = common::issuer::postgres_database().await;
    let (store, password) = with_password(&database);
    let config = config(&store);
    let (dir_a, dir_b) = (TempDir::new("replica-a"), TempDir::new("replica-b"));
    let a = Process::start(dir_a.path(), &config, &[]);
    a.wait_ready().await;
    let b = Process::start(dir_b.path(), &config, &[]);
    b.wait_ready().await;

    // The same keys.
    let first_jwks = jwks(&a).await;
    assert_eq!(first_jwks, jwks(&b).await, "A and B serve the same JWKS");
    let first_kids = kids(&first_jwks);

    // A machine token from A passes a protected route on B.
    let from_a = machine_token(&a).await;
    assert_eq!(contacts(&b, &from_a).await, 200);

    // A refresh token issued by A is rotated by B...
    let login = login_at(
        &a.url(""),
        "alice",
        ALICE_PASSWORD,
        "read:contacts offline_access",
    )
    .await;
    let issued_by_a = login["refresh_token"].as_str().unwrap().to_string();
    let rotated = refresh(&b, &issued_by_a).await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.json);
    let rotated_by_b = rotated.json["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rotated_by_b, issued_by_a);
    assert_eq!(
        contacts(&a, rotated.json["access_token"].as_str().unwrap()).await,
        200,
        "B's access token passes A's routes"
    );
    // ...and presenting the spent one again on A revokes the family: B's fails too.
    let reuse = refresh(&a, &issued_by_a).await;
    assert_eq!(reuse.status, 400);
    assert_eq!(reuse.error(), "invalid_grant");
    for (name, replica) in [("B", &b), ("A", &a)] {
        let after = refresh(replica, &rotated_by_b).await;
        assert_eq!(
            after.error(),
            "invalid_grant",
            "the token B rotated to is revoked on {name}"
        );
    }

    // A key rotation on A. Age the keys in the store past rotate_after (30d), as time
    // would; A rotates at its next key read, which a token with an unknown kid triggers
    // (at most once a second).
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&database).await.unwrap();
        let aged = sqlx::query("UPDATE signing_keys SET created_at = created_at - 2678400")
            .execute(&mut conn)
            .await
            .unwrap();
        assert!(aged.rows_affected() >= 1);
        let _ = conn.close().await;
    }
    let now = common::now();
    let unknown_kid = rogue_rsa().token_with(
        json!({ "alg": "RS256", "kid": "not-a-kid-of-ours", "typ": "at+jwt" }),
        &json!({ "iss": ISSUER, "sub": "x", "aud": CONTACTS, "iat": now, "exp": now + 60 }),
    );
    let mut rotated_kids = Vec::new();
    eventually("A rotates its signing key", async || {
        assert_eq!(contacts(&a, &unknown_kid).await, 401);
        rotated_kids = kids(&jwks(&a).await);
        rotated_kids.len() > first_kids.len()
    })
    .await;
    let new_kid = rotated_kids
        .iter()
        .find(|k| !first_kids.contains(k))
        .expect("a new kid")
        .clone();
    assert!(
        first_kids.iter().all(|k| rotated_kids.contains(k)),
        "the retired key stays published for its tokens: {rotated_kids:?}"
    );

    // A signs with the new key; B accepts it on its routes (re-reading the store on the
    // unknown kid, at most once a second) and at introspection.
    let signed_by_new_key = machine_token(&a).await;
    assert_eq!(kid_of(&signed_by_new_key), new_kid);
    eventually(
        "B's proxy accepts A's token signed with the new key",
        async || contacts(&b, &signed_by_new_key).await == 200,
    )
    .await;
    let active = introspect(&b, &signed_by_new_key).await;
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(active["client_id"], "m2m");
    // Tokens of the old key stay good on both until they expire.
    assert_eq!(contacts(&b, &from_a).await, 200);
    assert_eq!(introspect(&a, &from_a).await["active"], true);
    // B has the new key too: it signs with it and publishes what A publishes.
    assert_eq!(kid_of(&machine_token(&b).await), new_kid);
    assert_eq!(
        jwks(&a).await,
        jwks(&b).await,
        "the same JWKS after rotation"
    );

    let (status_a, log_a) = a.stop().await;
    let (status_b, log_b) = b.stop().await;
    assert_eq!(status_a.code(), Some(0));
    assert_eq!(status_b.code(), Some(0));
    for log in [&log_a, &log_b] {
        if let Some(password) = &password {
            assert!(
                !log.contains(password.as_str()),
                "the store password is in the log:\n{log}"
            );
        }
        assert!(log.contains("built-in issuer ready"), "{log}");
    }
    // A made the new key; B took it from the store.
    let logged = |log: &str, message: &str| {
        log.lines().any(|line| {
            serde_json::from_str::<Value>(line)
                .is_ok_and(|l| l["message"] == message && l["kid"] == new_kid.as_str())
        })
    };
    assert!(logged(&log_a, "issuer signing key generated"), "{log_a}");
    assert!(logged(&log_b, "issuer signing key changed"), "{log_b}");
}

/// A token revoked at replica A is refused by replica B's proxy, though B had it cached:
/// A announces the revocation (PostgreSQL NOTIFY), B applies it to its deny-set. The
/// same for the access tokens of a refresh family revoked at A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_at_one_replica_is_refused_at_the_other() {
    let database = common::issuer::postgres_database().await;
    let config = config(&database);
    let (dir_a, dir_b) = (TempDir::new("revoke-a"), TempDir::new("revoke-b"));
    let a = Process::start(dir_a.path(), &config, &[]);
    a.wait_ready().await;
    let b = Process::start(dir_b.path(), &config, &[]);
    b.wait_ready().await;

    let login = login_at(
        &a.url(""),
        "alice",
        ALICE_PASSWORD,
        "read:contacts offline_access",
    )
    .await;
    let access = login["access_token"].as_str().unwrap().to_string();
    let family = login["refresh_token"].as_str().unwrap().to_string();
    let machine = machine_token(&a).await;
    for token in [&access, &machine] {
        assert_eq!(contacts(&b, token).await, 200, "B accepts (and caches) it");
    }

    let revoke = common::issuer::post_form(
        &a.url("/oauth/revoke"),
        &[("token", machine.as_str())],
        Some(("m2m", M2M_SECRET)),
    )
    .await;
    assert_eq!(revoke.status, 200);
    let revoked_at = std::time::Instant::now();
    eventually("B refuses the token revoked at A", async || {
        contacts(&b, &machine).await == 401
    })
    .await;
    eprintln!(
        "B refused the revoked token after {:?}",
        revoked_at.elapsed()
    );
    assert_eq!(contacts(&a, &machine).await, 401);

    let revoke = common::issuer::post_form(
        &a.url("/oauth/revoke"),
        &[("token", family.as_str()), ("client_id", "cli")],
        None,
    )
    .await;
    assert_eq!(revoke.status, 200);
    eventually(
        "B refuses the access token of the family revoked at A",
        async || contacts(&b, &access).await == 401,
    )
    .await;

    let (status_a, _) = a.stop().await;
    let (status_b, log_b) = b.stop().await;
    assert_eq!((status_a.code(), status_b.code()), (Some(0), Some(0)));
    assert!(
        !log_b.contains("cannot listen"),
        "B listened for revocations:\n{log_b}"
    );
}
