//! The issuer store's contract, run against SQLite (a temp file) and PostgreSQL (a
//! database of its own): migrations, keys, refresh families with atomic rotation,
//! authorization codes (redemption recorded, replay revoking it) and device codes with
//! atomic redemption, browser sessions, revocations, throttling, purging. Parallel redemptions yield exactly one winner.

mod common;

use common::issuer::{Backend, TestStore};
use scopegate::clock::Clock;
use scopegate::issuer::store::{
    CodeIssue, CodeRecord, DeviceRecord, DeviceStatus, Family, KeyEncryptionScheme, PushedRequest,
    Rotation, SessionRecord, Store, StoredKey, secret_hash,
};
use scopegate::jose::Alg;

async fn open(backend: Backend) -> (Store, TestStore) {
    let test = TestStore::new(backend).await;
    let store = Store::open(&test.url, Clock::system())
        .await
        .expect("store opens");
    (store, test)
}

/// Now, as the issuer would pass it to the store.
fn now() -> i64 {
    Clock::system().unix_secs()
}

fn family(id: &str) -> Family {
    Family {
        id: id.into(),
        client_id: "cli".into(),
        subject: "user|alice".into(),
        audience: Some("https://api".into()),
        scope: "openid read offline_access".into(),
        auth_time: now(),
        created_at: now(),
        dpop_jkt: Some("jkt-1".into()),
    }
}

fn code(hash: &str, expires_at: i64) -> CodeRecord {
    CodeRecord {
        code_hash: hash.into(),
        client_id: "web".into(),
        redirect_uri: "http://127.0.0.1/cb".into(),
        subject: "user|alice".into(),
        audience: None,
        scope: "openid".into(),
        nonce: Some("n-1".into()),
        code_challenge: Some("abc".into()),
        code_challenge_method: Some("S256".into()),
        auth_time: now(),
        created_at: now(),
        expires_at,
    }
}

async fn migrations_are_idempotent(backend: Backend) {
    let (store, test) = open(backend).await;
    assert_eq!(store.schema_version().await.unwrap(), 3);
    store.close().await;
    // Opening again (a restart, a second replica) applies nothing and keeps data.
    let again = Store::open(&test.url, Clock::system()).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), 3);
    // Two replicas opening at once both succeed.
    let (a, b) = tokio::join!(
        Store::open(&test.url, Clock::system()),
        Store::open(&test.url, Clock::system())
    );
    a.unwrap();
    b.unwrap();
}

async fn keys_rotate_once(backend: Backend) {
    let (store, _test) = open(backend).await;
    let key = |kid: &str, at: i64| StoredKey {
        kid: kid.into(),
        alg: Alg::RS256,
        private_key: "cHJpdmF0ZQ".into(),
        encryption: KeyEncryptionScheme::Plain,
        public_jwk: "{}".into(),
        created_at: at,
        rotated_at: None,
    };
    store.insert_key(&key("k1", 100)).await.unwrap();
    assert!(store.rotate_key("k1", &key("k2", 200), 200).await.unwrap());
    // A second replica rotating the same key loses and stores nothing.
    assert!(!store.rotate_key("k1", &key("k3", 201), 201).await.unwrap());
    let keys = store.load_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].kid, "k1");
    assert_eq!(keys[0].rotated_at, Some(200));
    assert_eq!(keys[1].kid, "k2");
    assert_eq!(keys[1].rotated_at, None);
    store.insert_key(&key("k4", 250)).await.unwrap();
    assert!(store.retire_key("k4", 260).await.unwrap());
    assert!(!store.retire_key("k4", 270).await.unwrap());
    assert_eq!(store.delete_keys_retired_before(300).await.unwrap(), 2);
    assert_eq!(store.load_keys().await.unwrap().len(), 1);
}

/// `issuer.refresh_grace` at the store: a token spent at or after `grace_since` rotates
/// again (a sibling in its family); spent before, it is reuse and revokes the family.
async fn refresh_grace_at_the_store(backend: Backend) {
    let (store, _test) = open(backend).await;
    let t = now();
    store
        .create_family(&family("fg"), &secret_hash("g-1"), t + 100)
        .await
        .unwrap();
    let rotate = |old: &'static str, new: &'static str, at: i64, since: i64| {
        let store = store.clone();
        async move {
            store
                .rotate_refresh_with_grace(&secret_hash(old), &secret_hash(new), t + 100, at, since)
                .await
                .unwrap()
        }
    };
    assert_eq!(rotate("g-1", "g-2", t, t - 5).await, Rotation::Rotated);
    // The loser of a race, 3 s later, within a 5 s window: a pair of its own.
    assert_eq!(rotate("g-1", "g-3", t + 3, t - 2).await, Rotation::Rotated);
    for token in ["g-2", "g-3"] {
        let found = store
            .find_refresh(&secret_hash(token))
            .await
            .unwrap()
            .unwrap();
        assert!(!found.used && !found.family_revoked, "{token}");
    }
    let spent = store
        .find_refresh(&secret_hash("g-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(spent.used_at, Some(t));
    // After the window: reuse, and the family is revoked.
    assert_eq!(rotate("g-1", "g-4", t + 10, t + 5).await, Rotation::Reused);
    let after = store
        .find_refresh(&secret_hash("g-2"))
        .await
        .unwrap()
        .unwrap();
    assert!(after.family_revoked);
    assert_eq!(rotate("g-2", "g-5", t + 11, t + 6).await, Rotation::Invalid);
}

async fn refresh_rotation_and_reuse(backend: Backend) {
    let (store, _test) = open(backend).await;
    let t = now();
    store
        .create_family(&family("f1"), &secret_hash("rt-1"), t + 100)
        .await
        .unwrap();
    let found = store
        .find_refresh(&secret_hash("rt-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.family, family_with_times(&found.family));
    assert!(!found.used && !found.family_revoked);
    assert_eq!(
        store
            .rotate_refresh(&secret_hash("rt-1"), &secret_hash("rt-2"), t + 100, t)
            .await
            .unwrap(),
        Rotation::Rotated
    );
    let next = store
        .find_refresh(&secret_hash("rt-2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.family.id, "f1");
    // Reusing the spent token revokes the family: the new token dies with it.
    assert_eq!(
        store
            .rotate_refresh(&secret_hash("rt-1"), &secret_hash("rt-x"), t + 100, t)
            .await
            .unwrap(),
        Rotation::Reused
    );
    assert!(
        store
            .find_refresh(&secret_hash("rt-2"))
            .await
            .unwrap()
            .unwrap()
            .family_revoked
    );
    assert_eq!(
        store
            .rotate_refresh(&secret_hash("rt-2"), &secret_hash("rt-3"), t + 100, t)
            .await
            .unwrap(),
        Rotation::Invalid
    );
    assert!(
        store
            .find_refresh(&secret_hash("rt-x"))
            .await
            .unwrap()
            .is_none()
    );
    // Unknown and expired tokens are invalid and change nothing.
    assert_eq!(
        store
            .rotate_refresh(&secret_hash("nope"), &secret_hash("rt-4"), t + 100, t)
            .await
            .unwrap(),
        Rotation::Invalid
    );
    store
        .create_family(&family("f2"), &secret_hash("old"), t - 1)
        .await
        .unwrap();
    assert_eq!(
        store
            .rotate_refresh(&secret_hash("old"), &secret_hash("rt-5"), t + 100, t)
            .await
            .unwrap(),
        Rotation::Invalid
    );
    assert!(
        !store
            .find_refresh(&secret_hash("old"))
            .await
            .unwrap()
            .unwrap()
            .family_revoked
    );
    // Revoking a family is idempotent.
    assert!(store.revoke_family("f2", t).await.unwrap());
    assert!(!store.revoke_family("f2", t).await.unwrap());
}

fn family_with_times(found: &Family) -> Family {
    Family {
        auth_time: found.auth_time,
        created_at: found.created_at,
        ..family("f1")
    }
}

async fn parallel_refresh_rotation_has_one_winner(backend: Backend) {
    let (store, _test) = open(backend).await;
    let t = now();
    store
        .create_family(&family("fp"), &secret_hash("rt-p"), t + 100)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .rotate_refresh(
                    &secret_hash("rt-p"),
                    &secret_hash(&format!("next-{i}")),
                    t + 100,
                    t,
                )
                .await
                .unwrap()
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let winners = results.iter().filter(|r| **r == Rotation::Rotated).count();
    assert_eq!(winners, 1, "{results:?}");
    assert!(
        results.iter().all(|r| *r != Rotation::Invalid),
        "{results:?}"
    );
}

async fn codes_are_redeemed_once(backend: Backend) {
    let (store, _test) = open(backend).await;
    let t = now();
    store.insert_code(&code("c1", t + 60)).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.consume_code("c1", now()).await.unwrap()
        }));
    }
    let mut won = Vec::new();
    for task in tasks {
        if let Some(record) = task.await.unwrap() {
            won.push(record);
        }
    }
    assert_eq!(won.len(), 1);
    assert_eq!(won[0], code("c1", t + 60).with_times(&won[0]));
    assert!(store.consume_code("c1", now()).await.unwrap().is_none());
    // An expired code cannot be redeemed.
    store.insert_code(&code("c2", t - 1)).await.unwrap();
    assert!(store.consume_code("c2", t).await.unwrap().is_none());
}

trait WithTimes {
    fn with_times(self, found: &Self) -> Self;
}

impl WithTimes for CodeRecord {
    fn with_times(self, found: &Self) -> Self {
        CodeRecord {
            auth_time: found.auth_time,
            created_at: found.created_at,
            ..self
        }
    }
}

async fn device_codes_flow(backend: Backend) {
    let (store, _test) = open(backend).await;
    let t = now();
    let device = DeviceRecord {
        device_code_hash: "d1".into(),
        user_code: "ABCD-EFGH".into(),
        client_id: "tv".into(),
        audience: Some("https://api".into()),
        scope: "openid read".into(),
        status: DeviceStatus::Pending,
        subject: None,
        auth_time: None,
        created_at: t,
        expires_at: t + 600,
        interval_secs: 5,
        last_polled_at: None,
    };
    store.insert_device_code(&device).await.unwrap();
    // The user code is unique.
    assert!(
        store
            .insert_device_code(&DeviceRecord {
                device_code_hash: "d2".into(),
                ..device.clone()
            })
            .await
            .is_err()
    );
    assert_eq!(
        store
            .find_device_by_user_code("ABCD-EFGH")
            .await
            .unwrap()
            .unwrap()
            .status,
        DeviceStatus::Pending
    );
    assert!(
        store.consume_device("d1", t).await.unwrap().is_none(),
        "pending is not consumable"
    );
    assert_eq!(store.touch_device_poll("d1", t).await.unwrap(), None);
    assert_eq!(store.touch_device_poll("d1", t + 1).await.unwrap(), Some(t));
    assert!(
        store
            .decide_device("ABCD-EFGH", Some("user|alice"), t, t)
            .await
            .unwrap()
    );
    assert!(
        !store.decide_device("ABCD-EFGH", None, t, t).await.unwrap(),
        "decided once"
    );
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.consume_device("d1", now()).await.unwrap()
        }));
    }
    let mut won = 0;
    for task in tasks {
        if let Some(record) = task.await.unwrap() {
            assert_eq!(record.subject.as_deref(), Some("user|alice"));
            won += 1;
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        store.find_device("d1").await.unwrap().unwrap().status,
        DeviceStatus::Consumed
    );
}

async fn revocations_and_throttle(backend: Backend) {
    let (store, _test) = open(backend).await;
    let t = now();
    assert!(!store.is_revoked("j1").await.unwrap());
    store.revoke_jti("j1", t + 60).await.unwrap();
    store.revoke_jti("j1", t + 60).await.unwrap();
    assert!(store.is_revoked("j1").await.unwrap());

    assert_eq!(store.failures("user:alice", t, 600).await.unwrap().0, 0);
    for _ in 0..3 {
        store.record_failure("user:alice", t, 600).await.unwrap();
    }
    assert_eq!(
        store.failures("user:alice", t, 600).await.unwrap(),
        (3, t + 600)
    );
    // The window closes: the count starts over.
    assert_eq!(
        store.failures("user:alice", t + 600, 600).await.unwrap().0,
        0
    );
    store
        .record_failure("user:alice", t + 600, 600)
        .await
        .unwrap();
    assert_eq!(
        store.failures("user:alice", t + 600, 600).await.unwrap(),
        (1, t + 1200)
    );
    store.clear_failures("user:alice").await.unwrap();
    assert_eq!(
        store.failures("user:alice", t + 600, 600).await.unwrap().0,
        0
    );

    store.revoke_jti("old", t - 10).await.unwrap();
    store
        .create_family(&family("fx"), &secret_hash("expired"), t - 10)
        .await
        .unwrap();
    store.insert_code(&code("cx", t - 10)).await.unwrap();
    store.purge_expired(t, 600).await.unwrap();
    assert!(!store.is_revoked("old").await.unwrap());
    assert!(store.is_revoked("j1").await.unwrap());
    assert!(
        store
            .find_refresh(&secret_hash("expired"))
            .await
            .unwrap()
            .is_none()
    );
}

async fn code_redemption_and_replay(backend: Backend) {
    let (store, _test) = open(backend).await;
    let t = now();
    store.insert_code(&code("r1", t + 60)).await.unwrap();
    let found = store.find_code("r1").await.unwrap().unwrap();
    assert!(!found.used);
    assert_eq!(found.record.nonce.as_deref(), Some("n-1"));
    store
        .create_family(&family("fam-r1"), &secret_hash("rt-r1"), t + 600)
        .await
        .unwrap();
    store
        .record_family_access("fam-r1", "jti-refreshed", t + 3600)
        .await
        .unwrap();
    let issue = CodeIssue {
        jti: "jti-r1".into(),
        until: t + 3600,
        family_id: Some("fam-r1".into()),
    };
    // Parallel redemptions: one winner.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (store, issue) = (store.clone(), issue.clone());
        tasks.push(tokio::spawn(async move {
            store.redeem_code("r1", t, &issue).await.unwrap()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        winners += usize::from(task.await.unwrap());
    }
    assert_eq!(winners, 1);
    assert!(store.find_code("r1").await.unwrap().unwrap().used);
    assert!(!store.code_replayed("r1").await.unwrap());
    // A replay revokes what it was redeemed for.
    assert!(store.replay_code("r1", t).await.unwrap());
    assert!(store.code_replayed("r1").await.unwrap());
    assert!(store.is_revoked("jti-r1").await.unwrap());
    assert!(store.is_revoked("jti-refreshed").await.unwrap());
    let refresh = store
        .find_refresh(&secret_hash("rt-r1"))
        .await
        .unwrap()
        .unwrap();
    assert!(refresh.family_revoked);
    // Unknown or unredeemed codes are not replays.
    assert!(!store.replay_code("nope", t).await.unwrap());
    store.insert_code(&code("r2", t + 60)).await.unwrap();
    assert!(!store.replay_code("r2", t).await.unwrap());
    // Expired codes cannot be redeemed; a redeemed code outlives its expiry while the
    // access token it gave may be in use.
    store.insert_code(&code("r3", t - 1)).await.unwrap();
    assert!(!store.redeem_code("r3", t, &issue).await.unwrap());
    store.purge_expired(t + 120, 600).await.unwrap();
    assert!(store.find_code("r1").await.unwrap().is_some());
    assert!(store.find_code("r2").await.unwrap().is_none());
    store.purge_expired(t + 3601, 600).await.unwrap();
    assert!(store.find_code("r1").await.unwrap().is_none());
}

async fn sessions_expire_and_end(backend: Backend) {
    let (store, _test) = open(backend).await;
    let t = now();
    let session = SessionRecord {
        session_hash: secret_hash("session-id"),
        subject: "user|alice".into(),
        auth_time: t,
        created_at: t,
        expires_at: t + 100,
    };
    store.insert_session(&session).await.unwrap();
    assert_eq!(
        store.find_session(&session.session_hash, t).await.unwrap(),
        Some(session.clone())
    );
    assert!(
        store
            .find_session(&session.session_hash, t + 100)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.delete_session(&session.session_hash).await.unwrap());
    assert!(!store.delete_session(&session.session_hash).await.unwrap());
    assert!(
        store
            .find_session(&session.session_hash, t)
            .await
            .unwrap()
            .is_none()
    );
    store.insert_session(&session).await.unwrap();
    store.purge_expired(t + 101, 600).await.unwrap();
    assert!(
        !store.delete_session(&session.session_hash).await.unwrap(),
        "purged"
    );
}

/// RFC 9126 §4: a pushed request is found while unused and unexpired, redeemed once.
async fn pushed_requests_are_redeemed_once(backend: Backend) {
    let (store, _test) = open(backend).await;
    let t = now();
    let pushed = PushedRequest {
        uri_hash: secret_hash("urn:ietf:params:oauth:request_uri:abc"),
        client_id: "web".into(),
        params: "client_id=web&response_type=code".into(),
        expires_at: t + 60,
    };
    store.insert_pushed(&pushed).await.unwrap();
    assert_eq!(
        store.find_pushed(&pushed.uri_hash, t).await.unwrap(),
        Some(pushed.clone())
    );
    assert!(
        store
            .find_pushed(&pushed.uri_hash, t + 60)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !store.redeem_pushed(&pushed.uri_hash, t + 60).await.unwrap(),
        "expired"
    );
    assert!(store.redeem_pushed(&pushed.uri_hash, t).await.unwrap());
    assert!(
        !store.redeem_pushed(&pushed.uri_hash, t).await.unwrap(),
        "spent"
    );
    assert!(
        store
            .find_pushed(&pushed.uri_hash, t)
            .await
            .unwrap()
            .is_none()
    );
    store.purge_expired(t + 61, 600).await.unwrap();
}

/// RFC 7523 §3: a client assertion's jti is accepted once until the assertion expires.
async fn values_are_used_once(backend: Backend) {
    let (store, _test) = open(backend).await;
    let t = now();
    assert!(
        store
            .use_once("client_assertion", "c", "j1", t + 60, t)
            .await
            .unwrap()
    );
    assert!(
        !store
            .use_once("client_assertion", "c", "j1", t + 60, t + 1)
            .await
            .unwrap()
    );
    assert!(
        store
            .use_once("client_assertion", "d", "j1", t + 60, t)
            .await
            .unwrap(),
        "another client"
    );
    assert!(
        store
            .use_once("client_assertion", "c", "j1", t + 200, t + 60)
            .await
            .unwrap(),
        "expired record"
    );
    // Parallel uses of one value: one winner.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .use_once("client_assertion", "c", "j2", t + 60, t)
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        winners += usize::from(task.await.unwrap());
    }
    assert_eq!(winners, 1);
}

both_backends!(
    pushed_requests_are_redeemed_once,
    values_are_used_once,
    code_redemption_and_replay,
    sessions_expire_and_end,
    migrations_are_idempotent,
    keys_rotate_once,
    refresh_rotation_and_reuse,
    refresh_grace_at_the_store,
    parallel_refresh_rotation_has_one_winner,
    codes_are_redeemed_once,
    device_codes_flow,
    revocations_and_throttle,
);
