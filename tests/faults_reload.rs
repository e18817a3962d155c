//! SIGHUP storms under load against the real binary (issue 11): `scopegate run` with a
//! trusted issuer (a real JWKS server), a real upstream and the built-in issuer (SQLite),
//! eight client tasks sending proxy requests (cached, fresh and built-in-issuer tokens)
//! and `client_credentials` token requests while the process gets 60 SIGHUPs 20ms apart
//! and its file is rewritten three times (a route renamed and back).
//!
//! No request fails because of a reload: every answer is 200 (a failed connection
//! fails the test too), every reload succeeds, the process writes no panic and exits 0
//! on SIGTERM afterwards.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::issuer::{CONTACTS, M2M_SECRET, TempDir, machine_token_at, post_form};
use common::process::{LISTEN_ANY, Process};
use common::{AUD, Issuer, Upstream, default_keys, ec, eventually, metric, rsa};
use serde_json::json;

const CLIENTS: usize = 8;

fn config(issuer: &Issuer, upstream: &Upstream, store: &str, route: &str) -> String {
    let (alice, _) = common::issuer::hashes();
    format!(
        r#"{LISTEN_ANY}log: {{ format: json, level: warn }}
trust:
  issuers:
    - issuer: "{iss}"
      audiences: [{AUD}]
      algorithms: [RS256, ES256]
routes:
  - name: {route}
    match: {{ path: /api/* }}
    upstream: "{up}"
    scopes: [read:contacts]
  - name: contacts
    match: {{ path: /contacts/* }}
    upstream: "{up}"
    audience: {CONTACTS}
    scopes: [read:contacts]
issuer:
  url: https://issuer.scopegate.test/
  store: "{store}"
  apis:
    - identifier: {CONTACTS}
      scopes: [{{ value: read:contacts }}]
  roles:
    reader: {{ "{CONTACTS}": [read:contacts] }}
  clients:
    - client_id: m2m
      client_secret: {M2M_SECRET}
      grant_types: [client_credentials]
      grants: {{ "{CONTACTS}": [read:contacts] }}
  users:
    - username: alice
      password_hash: {alice}
      roles: [reader]
"#,
        iss = issuer.url,
        up = upstream.url,
    )
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Cached,
    Fresh,
    BuiltIn,
    TokenRequest,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_storm_under_load_fails_no_request() {
    let issuer = Issuer::start(&default_keys()).await;
    let upstream = Upstream::start().await;
    let dir = TempDir::new("faults-reload");
    let store = format!("sqlite://{}", dir.path().join("issuer.db").display());
    // The serving line is logged at info: start at info, reload to warn (no access lines).
    let first = config(&issuer, &upstream, &store, "api").replace("level: warn", "level: info");
    let process = Arc::new(Process::start(dir.path(), &first, &[]));
    eventually("ready", || async {
        common::issuer::get(&process.admin_url("/readyz"), None)
            .await
            .status
            == 200
    })
    .await;
    let machine = machine_token_at(&process.url(""), M2M_SECRET).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let kinds = [
        Kind::Cached,
        Kind::Fresh,
        Kind::BuiltIn,
        Kind::TokenRequest,
        Kind::Cached,
        Kind::Fresh,
        Kind::BuiltIn,
        Kind::TokenRequest,
    ];
    assert_eq!(kinds.len(), CLIENTS);
    let claims = |extra| issuer.claims(extra);
    let cached = rsa().token(&claims(json!({})));
    let tasks: Vec<_> = kinds
        .iter()
        .map(|&kind| {
            let (process, stop, ok) = (process.clone(), stop.clone(), ok.clone());
            let (cached, machine) = (cached.clone(), machine.clone());
            let issuer_url = issuer.url.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let answer = match kind {
                        Kind::Cached => {
                            common::issuer::get(&process.url("/api/x"), Some(&cached)).await
                        }
                        Kind::Fresh => {
                            let token = ec().token(&common::claims_for(&issuer_url, json!({})));
                            common::issuer::get(&process.url("/api/y"), Some(&token)).await
                        }
                        Kind::BuiltIn => {
                            common::issuer::get(&process.url("/contacts/1"), Some(&machine)).await
                        }
                        Kind::TokenRequest => {
                            post_form(
                                &process.url("/oauth/token"),
                                &[("grant_type", "client_credentials"), ("audience", CONTACTS)],
                                Some(("m2m", M2M_SECRET)),
                            )
                            .await
                        }
                    };
                    if answer.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.push(format!("{kind:?}: {} {}", answer.status, answer.text()));
                    }
                }
                failures
            })
        })
        .collect();
    let ok_count = || ok.load(Ordering::Relaxed);
    eventually("load before the storm", || async { ok_count() >= 200 }).await;

    let before = ok_count();
    for n in 0..60 {
        if n % 20 == 10 {
            let route = if n == 30 { "api" } else { "api-renamed" };
            process.rewrite(&config(&issuer, &upstream, &store, route));
        }
        process.signal("HUP");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reloads = || async {
        let text = common::issuer::get(&process.admin_url("/metrics"), None)
            .await
            .text();
        (
            metric(
                &text,
                "scopegate_config_reloads_total",
                &[("result", "success")],
            ),
            metric(
                &text,
                "scopegate_config_reloads_total",
                &[("result", "error")],
            ),
        )
    };
    // Signals sent while one is pending may merge into one: most, not all, reload.
    eventually("the reloads to be counted", || async {
        reloads().await.0 >= 30.0
    })
    .await;
    let mark = ok_count();
    eventually("load after the storm", || async {
        ok_count() >= mark + 200
    })
    .await;
    stop.store(true, Ordering::Release);
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.expect("a client task panicked"));
    }
    assert!(
        failures.is_empty(),
        "requests failed across reloads: {failures:?}"
    );
    assert!(
        mark >= before + 50,
        "only {} requests completed during the storm",
        mark - before
    );
    let (_, errors) = reloads().await;
    assert_eq!(errors, 0.0, "a reload was refused");

    let process = Arc::try_unwrap(process).unwrap_or_else(|_| panic!("process still shared"));
    let (status, logs) = process.stop().await;
    assert!(!logs.contains("panicked"), "{logs}");
    assert_eq!(status.code(), Some(0), "{logs}");
}
