//! A trusted issuer's JWKS server down for a while under load (issue 11): a real JWKS
//! server (refusing connections while down), the real gateway on its manual clock, eight
//! client tasks sending throughout.
//!
//! - While it is down, tokens already verified (cached) and fresh tokens signed by a key
//!   the gateway already holds keep passing: the last good keys are kept through failed
//!   refreshes (the clock is moved past `jwks_ttl`, 10 minutes, and on, so the
//!   background refresher runs and fails, as do unknown-`kid` refetches).
//! - Time passing during the outage does not let a cached token outlive its `exp`.
//! - Tokens with an unknown `kid` are refused (401 `invalid_token`), before, during and
//!   after: an outage never turns into acceptance, and never into a 5xx.
//! - When the server is back, a key published meanwhile is fetched on its first use.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use common::{API_ROUTE, Env, Key, ec, eventually, rogue_rsa};
use serde_json::json;

const UP: u8 = 0;
const DOWN: u8 = 1;
const BACK: u8 = 2;
const PHASES: [&str; 3] = ["up", "down", "back"];

/// What kind of token a client task sends.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// The same token every time (verified once, then from the cache).
    Cached,
    /// A new token each time, signed by a key the gateway holds (never cached).
    KnownKid,
    /// A new token each time, signed by a key no JWKS publishes.
    UnknownKid,
}

/// Statuses per (phase, kind).
#[derive(Default)]
struct Tally {
    statuses: std::sync::Mutex<BTreeMap<(&'static str, String, u16), u64>>,
}

/// Claims issued now by the gateway's clock, valid for a day (the clock moves by
/// minutes during the test), each token its own `jti`.
fn claims(env: &Env) -> serde_json::Value {
    let now = env.gw.clock.unix_secs();
    env.claims(json!({ "exp": now + 86_400, "jti": common::unique("jti") }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwks_server_down_and_back_under_load() {
    let env = Arc::new(Env::start(API_ROUTE).await);
    let phase = Arc::new(AtomicU8::new(UP));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicU8::new(0));
    let kinds = [
        Kind::Cached,
        Kind::Cached,
        Kind::KnownKid,
        Kind::KnownKid,
        Kind::KnownKid,
        Kind::UnknownKid,
        Kind::Cached,
        Kind::KnownKid,
    ];
    let tasks: Vec<_> = kinds
        .iter()
        .map(|&kind| {
            let (env, phase, tally, stop) =
                (env.clone(), phase.clone(), tally.clone(), stop.clone());
            tokio::spawn(async move {
                let cached = common::rsa().token(&claims(&env));
                while stop.load(Ordering::Acquire) == 0 {
                    let token = match kind {
                        Kind::Cached => cached.clone(),
                        Kind::KnownKid => ec().token(&claims(&env)),
                        Kind::UnknownKid => rogue_rsa().token(&claims(&env)),
                    };
                    let seen_phase = PHASES[phase.load(Ordering::Acquire) as usize];
                    let reply = env.get_bearer("/api/x", &token).await;
                    if matches!(kind, Kind::UnknownKid) && reply.status == 401 {
                        assert_eq!(reply.error(), "invalid_token");
                    }
                    *tally
                        .statuses
                        .lock()
                        .unwrap()
                        .entry((seen_phase, format!("{kind:?}"), reply.status.as_u16()))
                        .or_default() += 1;
                }
            })
        })
        .collect();
    let env = &*env;

    // Every kind of client has sent at least `n` requests in `phase`.
    let each_sent = |phase: &'static str, n: u64| {
        let tally = tally.clone();
        move || {
            let statuses = tally.statuses.lock().unwrap().clone();
            async move {
                ["Cached", "KnownKid", "UnknownKid"].iter().all(|kind| {
                    statuses
                        .iter()
                        .filter(|((p, k, _), _)| *p == phase && k == kind)
                        .map(|(_, count)| count)
                        .sum::<u64>()
                        >= n
                })
            }
        }
    };
    // A token that expires in a minute, verified and cached while all is well.
    let short_lived =
        common::rsa().token(&env.claims(json!({ "exp": env.gw.clock.unix_secs() + 60 })));
    assert_eq!(env.get_bearer("/api/x", &short_lived).await.status, 200);
    eventually("load while the JWKS server is up", each_sent("up", 20)).await;

    // Down: refreshes fail (the refresher once `jwks_ttl` has passed on the clock, then
    // each time the clock passes its retry delay; unknown kids at most every 200ms);
    // what the gateway holds keeps working.
    env.issuer.go_down().await;
    phase.store(DOWN, Ordering::Release);
    let fresh = Key::generate(scopegate::jose::Alg::ES256, "published-while-down");
    env.issuer
        .publish(&[common::rsa(), ec(), common::ed(), common::ps(), &fresh]);
    let fetches = env.gw.fetch_count();
    env.gw.advance(Duration::from_secs(11 * 60));
    eventually("failed refreshes while the server is down", || async {
        env.gw.advance(Duration::from_secs(2));
        env.gw.fetch_count() >= fetches + 3
    })
    .await;
    let reply = env.get_bearer("/api/x", &short_lived).await;
    assert_eq!(reply.status, 401, "a cached token outlived its exp");
    assert_eq!(
        reply
            .header("www-authenticate")
            .map(|h| h.contains("expired")),
        Some(true)
    );
    eventually("load while the server is down", each_sent("down", 30)).await;
    let unpublished = fresh.token(&claims(env));
    common::assert_invalid_token(&env.get_bearer("/api/x", &unpublished).await, &unpublished);

    // Back: the key published meanwhile is found on its first use.
    env.issuer.come_up().await;
    phase.store(BACK, Ordering::Release);
    eventually("the new key to be fetched", || async {
        env.get_bearer("/api/x", &unpublished).await.status == 200
    })
    .await;
    eventually("load after recovery", each_sent("back", 20)).await;
    stop.store(1, Ordering::Release);
    for task in tasks {
        task.await.expect("a client task panicked");
    }

    let statuses = tally.statuses.lock().unwrap().clone();
    for ((phase, kind, status), count) in &statuses {
        let expected = if kind == "UnknownKid" { 401 } else { 200 };
        assert_eq!(
            *status, expected,
            "{count} {kind} requests got {status} while the JWKS server was {phase}: {statuses:?}"
        );
    }
    for phase in PHASES {
        for kind in ["Cached", "KnownKid", "UnknownKid"] {
            assert!(
                statuses.keys().any(|(p, k, _)| *p == phase && k == kind),
                "no {kind} request while {phase}: {statuses:?}"
            );
        }
    }
}
