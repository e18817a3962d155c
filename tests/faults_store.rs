//! The issuer's PostgreSQL store stopped and started again under the gateway's feet
//! (issue 11, item 11): a server of the test's own ([`OwnPostgres`]), the real gateway
//! with its admin listener, real HTTP clients.
//!
//! - While the store is down, a request that needs it (`refresh_token`, `/userinfo`)
//!   gets a clean 503 `temporarily_unavailable` with `Retry-After` (no 500, no hang:
//!   every request is bounded by a hang guard), `/readyz` says the store is unreachable
//!   and `/healthz` stays 200; `client_credentials`, which needs no store, keeps issuing.
//! - When it is back, the same gateway recovers without a restart: `/readyz` is 200
//!   again and the refresh token the client held through the outage is still good.
//! - Under load (refresh chains and client_credentials clients sending throughout a
//!   stop and a restart), no refresh token is lost (each chain's last token still
//!   rotates at the end) or redeemed twice (no family revoked, every issued token
//!   distinct, rotations in the store = successful refreshes).

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::issuer::{
    ALICE_PASSWORD, Answer, CONTACTS, M2M_SECRET, Options, OwnPostgres, Running, get,
};
use common::{DEADLINE, eventually};
use sqlx::Row;

/// Longer than any answer may take: an answer slower than this is a hang.
const HANG_GUARD: Duration = Duration::from_secs(8);

struct Setup {
    pg: OwnPostgres,
    store: String,
    running: Running,
    admin: SocketAddr,
}

async fn setup() -> Setup {
    let pg = OwnPostgres::start().await;
    let store = pg.database().await;
    let running = Running::start(&store, &Options::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    tokio::spawn(scopegate::serve_admin(
        listener,
        running.gateway.clone(),
        std::future::pending(),
    ));
    Setup {
        pg,
        store,
        running,
        admin,
    }
}

async fn admin_get(admin: SocketAddr, path: &str) -> Answer {
    get(&format!("http://{admin}{path}"), None).await
}

/// Any request, bounded by [`HANG_GUARD`].
async fn bounded<F: std::future::Future<Output = Answer>>(what: &str, request: F) -> Answer {
    tokio::time::timeout(HANG_GUARD, request)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in {HANG_GUARD:?} (a hang)"))
}

async fn refresh(running: &Running, token: &str) -> Answer {
    bounded(
        "refresh",
        running.token(
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "cli"),
                ("refresh_token", token),
            ],
            None,
        ),
    )
    .await
}

async fn client_credentials(running: &Running) -> Answer {
    bounded(
        "client_credentials",
        running.token(
            &[("grant_type", "client_credentials"), ("audience", CONTACTS)],
            Some(("m2m", M2M_SECRET)),
        ),
    )
    .await
}

fn assert_unavailable(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 503, "{what}: {:?}", answer.json);
    assert_eq!(answer.error(), "temporarily_unavailable", "{what}");
    let retry: u64 = answer
        .header("retry-after")
        .parse()
        .unwrap_or_else(|_| panic!("{what}: no Retry-After in {:?}", answer.headers));
    assert!(retry >= 1, "{what}: Retry-After {retry}");
    assert_eq!(answer.header("cache-control"), "no-store", "{what}");
}

async fn readyz_down(admin: SocketAddr) -> bool {
    let answer = admin_get(admin, "/readyz").await;
    answer.status == 503 && answer.text().contains("store is unreachable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_store_answers_503_quickly_and_readyz_says_so_until_it_is_back() {
    let Setup {
        pg, running, admin, ..
    } = setup().await;
    let login = running
        .login(
            "alice",
            ALICE_PASSWORD,
            "openid offline_access read:contacts",
        )
        .await;
    let held = login["refresh_token"].as_str().unwrap().to_string();
    let access = login["access_token"].as_str().unwrap().to_string();
    assert_eq!(admin_get(admin, "/readyz").await.status, 200);

    pg.stop().await;

    // The first request after the stop already meets the outage (its pooled
    // connection is dead, a new one is refused): 503, not 500, not a hang.
    let answer = refresh(&running, &held).await;
    assert_unavailable(&answer, "refresh while the store is down");
    let answer = bounded(
        "userinfo",
        get(&running.url("/userinfo"), Some(access.as_str())),
    )
    .await;
    assert_unavailable(&answer, "userinfo while the store is down");
    // A grant that needs no store keeps working.
    assert_eq!(client_credentials(&running).await.status, 200);
    eventually("/readyz to say the store is unreachable", || {
        readyz_down(admin)
    })
    .await;
    let health = admin_get(admin, "/healthz").await;
    assert_eq!(health.status, 200, "/healthz stays up: {}", health.text());
    // Still unavailable, still a clean answer (and the token is not spent by it).
    assert_unavailable(&refresh(&running, &held).await, "refresh again");

    pg.restart().await;

    eventually("/readyz to be 200 again", || async {
        admin_get(admin, "/readyz").await.status == 200
    })
    .await;
    // The refresh token held through the outage was never spent: it rotates now.
    let answer = refresh(&running, &held).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    let next = answer.json["refresh_token"].as_str().unwrap();
    assert_ne!(next, held);
    assert_eq!(
        bounded("userinfo", get(&running.url("/userinfo"), Some(&access)))
            .await
            .status,
        200
    );
    running.stop().await;
}

/// What one load client saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    unavailable: u64,
    /// Anything else, with the status and body: must stay empty.
    unexpected: Vec<String>,
    /// Refresh tokens this chain received, in order (the login's first).
    chain: Vec<String>,
}

async fn refresh_chain(running: Arc<Running>, first: String, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally {
        chain: vec![first],
        ..Tally::default()
    };
    while !stop.load(Ordering::Acquire) {
        let current = tally.chain.last().unwrap().clone();
        let answer = refresh(&running, &current).await;
        match answer.status {
            200 => {
                tally.ok += 1;
                let next = answer.json["refresh_token"].as_str().unwrap().to_string();
                tally.chain.push(next);
            }
            503 => {
                assert_unavailable(&answer, "refresh under load");
                tally.unavailable += 1;
                // A client honouring Retry-After would wait; this one only backs off a
                // little, to keep the pressure on.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            status => tally.unexpected.push(format!("{status} {}", answer.text())),
        }
    }
    tally
}

async fn machine(running: Arc<Running>, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    while !stop.load(Ordering::Acquire) {
        let answer = client_credentials(&running).await;
        match answer.status {
            200 if answer.json["access_token"].is_string() => tally.ok += 1,
            status => tally.unexpected.push(format!("{status} {}", answer.text())),
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_and_restarted_under_refresh_and_client_credentials_load() {
    const CHAINS: usize = 8;
    const MACHINES: usize = 4;
    let Setup {
        pg,
        store,
        running,
        admin,
    } = setup().await;
    let running = Arc::new(running);
    let mut firsts = Vec::new();
    for _ in 0..CHAINS {
        let login = running
            .login("alice", ALICE_PASSWORD, "offline_access read:contacts")
            .await;
        firsts.push(login["refresh_token"].as_str().unwrap().to_string());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let chains: Vec<_> = firsts
        .into_iter()
        .map(|first| tokio::spawn(refresh_chain(running.clone(), first, stop.clone())))
        .collect();
    let machines: Vec<_> = (0..MACHINES)
        .map(|_| tokio::spawn(machine(running.clone(), stop.clone())))
        .collect();
    let metrics = running.gateway.metrics.clone();
    let issued = |grant: &str| {
        metrics
            .tokens_issued_total
            .with_label_values(&[grant])
            .get()
    };
    let unavailable = || {
        metrics
            .token_errors_total
            .with_label_values(&["refresh_token", "temporarily_unavailable"])
            .get()
    };

    // Healthy traffic first, then the outage in the middle of it.
    let before = issued("refresh_token");
    eventually("refreshes to flow", || async {
        issued("refresh_token") >= before + 20
    })
    .await;
    pg.stop().await;
    eventually("/readyz to say the store is unreachable", || {
        readyz_down(admin)
    })
    .await;
    eventually("refresh clients to meet 503s", || async {
        unavailable() >= CHAINS as u64
    })
    .await;
    assert_eq!(admin_get(admin, "/healthz").await.status, 200);
    let machines_during = issued("client_credentials");
    eventually(
        "client_credentials to keep issuing during the outage",
        || async { issued("client_credentials") >= machines_during + 20 },
    )
    .await;

    pg.restart().await;
    eventually("/readyz to be 200 again", || async {
        admin_get(admin, "/readyz").await.status == 200
    })
    .await;
    let after = issued("refresh_token");
    eventually("every chain to rotate again after the restart", || async {
        issued("refresh_token") >= after + 4 * CHAINS as u64
    })
    .await;
    stop.store(true, Ordering::Release);

    let mut seen = HashSet::new();
    let mut rotations = 0;
    let mut outage_503s = 0;
    for chain in chains {
        let tally = chain.await.expect("a refresh client panicked");
        assert!(
            tally.unexpected.is_empty(),
            "refresh: {:?}",
            tally.unexpected
        );
        assert!(tally.ok > 0, "a chain never rotated: {tally:?}");
        rotations += tally.ok;
        outage_503s += tally.unavailable;
        // No refresh token lost: the last one this chain holds still rotates.
        let last = tally.chain.last().unwrap();
        let answer = refresh(&running, last).await;
        assert_eq!(
            answer.status, 200,
            "a chain's last token: {:?}",
            answer.json
        );
        rotations += 1;
        for token in tally.chain {
            assert!(seen.insert(token), "a refresh token was issued twice");
        }
    }
    assert!(outage_503s > 0, "no client met the outage");
    for task in machines {
        let tally = task.await.expect("a client_credentials client panicked");
        assert!(
            tally.unexpected.is_empty(),
            "client_credentials: {:?}",
            tally.unexpected
        );
        assert!(tally.ok > 0);
    }
    assert_eq!(
        metrics
            .token_errors_total
            .with_label_values(&["refresh_token", "server_error"])
            .get(),
        0,
        "no 500 for the outage"
    );

    // No refresh token redeemed twice: every rotation the clients saw is one spent row,
    // and no family was revoked (a second redemption revokes it).
    use sqlx::Connection;
    let mut conn = tokio::time::timeout(DEADLINE, sqlx::AnyConnection::connect(&store))
        .await
        .expect("connect in time")
        .expect("connect to the store");
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM refresh_tokens WHERE used_at IS NOT NULL),
                (SELECT COUNT(*) FROM refresh_families WHERE revoked_at IS NOT NULL)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let spent: i64 = row.try_get(0).unwrap();
    let revoked: i64 = row.try_get(1).unwrap();
    assert_eq!(
        spent as u64, rotations,
        "spent refresh tokens vs rotations seen"
    );
    assert_eq!(
        revoked, 0,
        "a family was revoked: a token was redeemed twice"
    );
    let _ = conn.close().await;
    if let Ok(running) = Arc::try_unwrap(running) {
        running.stop().await;
    }
}
