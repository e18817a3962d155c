//! The built-in OAuth 2.0 / OpenID Connect issuer, in the Auth0 model.
//!
//! An [`Issuer`] is built once from `issuer:` ([`Issuer::new`]): it opens the
//! [`store`] (SQLite or PostgreSQL, migrated at start), loads or generates the signing
//! [`keys`], and compiles the configuration into a [`model::Model`]. Its endpoints
//! ([`Endpoint`]) are route targets in the gateway's router, matched before the config's
//! routes and answered by [`Issuer::serve`]; the proxy trusts its tokens with the
//! in-process keys ([`Issuer::trust_config`], [`Issuer::local_jwks`]).
//!
//! On a reload whose `store` and `keys` settings are unchanged, [`Issuer::reconfigure`]
//! builds the new issuer around the same store and key ring, without I/O.
//!
//! Endpoints (under the path of `issuer.url`): `/oauth/token` ([`grant`]), `/oauth/par`
//! ([`par`]), `/userinfo`
//! ([`userinfo`]), `/oauth/revoke` ([`revocation`]), `/oauth/introspect`
//! ([`introspection`]), `/.well-known/jwks.json`, `/.well-known/openid-configuration`
//! and `/.well-known/oauth-authorization-server` ([`discovery`]); and those a person
//! takes part in: `/authorize` and its sign-in page ([`authorize`]), `/oauth/device/code`
//! and `/activate` ([`device`]), `/logout` ([`logout`]), with browser sessions and CSRF
//! in [`session`] and the HTML in [`pages`].
//!
//! Time comes from one [`Clock`], given when the issuer is built ([`Issuer::with_clock`])
//! and kept in its [`Core`]: token lifetimes, expiries in the store, throttle windows
//! and key rotation all read it, so tests advance it instead of sleeping.
//!
//! This file holds the whole `impl Issuer`; the endpoints are functions in their
//! modules, taking the issuer.

pub mod authorize;
pub mod client_auth;
pub mod device;
pub mod discovery;
pub mod dpop_nonce;
mod endpoint;
pub mod form;
pub mod grant;
pub mod introspection;
pub mod keys;
pub mod logout;
pub mod mint;
pub mod model;
pub mod pages;
pub mod par;
pub mod password;
pub mod revocation;
pub mod session;
pub mod store;
pub mod throttle;
pub mod userinfo;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::config::{Dur, IssuerConfig, TrustedIssuerConfig};
use crate::error::OAuthError;
use crate::http::{Body, ConnInfo};
use crate::jose::Alg;
use crate::jwks::{KeySource, LocalJwks, TrustedIssuer};
use crate::metrics::Metrics;
use crate::upstream::Fetcher;
pub use endpoint::Endpoint;
use keys::{KeyEncryption, KeyPolicy, KeyRing, alg_of};
use model::Model;
use store::Store;

/// What outlives reconfiguration: the store, the keys, the metrics, the clock.
pub struct Core {
    pub store: Store,
    pub keys: KeyRing,
    pub metrics: Metrics,
    /// The one source of time for the issuer.
    pub clock: Clock,
    /// An argon2id hash of a random password, verified for unknown users so that a
    /// login's timing does not say whether the user exists.
    dummy_hash: String,
    /// Bounds concurrent argon2 verifications (each takes ~19 MiB and a core for tens of
    /// milliseconds), so a login flood queues instead of exhausting memory.
    hashing: Arc<tokio::sync::Semaphore>,
    store_url: String,
    keys_config: crate::config::issuer::KeysConfig,
    /// Fetches clients' `jwks_uri`s.
    fetcher: Fetcher,
    /// Checks DPoP proofs at the token endpoint (remembering their `jti`s, per process).
    pub dpop: crate::jose::dpop::ProofChecker,
}

/// The built-in issuer for one configuration generation.
pub struct Issuer {
    config: IssuerConfig,
    pub model: Model,
    pub core: Arc<Core>,
    documents: discovery::Documents,
    /// The keys of clients with a `jwks_uri`, by `client_id`: fetched on first use and
    /// when an assertion names an unknown `kid`.
    client_jwks: HashMap<String, Arc<TrustedIssuer>>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.model.issuer)
            .field("store", &self.core.store)
            .field("keys", &self.core.keys)
            .finish()
    }
}

fn policy_for(config: &IssuerConfig, model: &Model) -> KeyPolicy {
    KeyPolicy {
        alg: alg_of(config.keys.algorithm),
        rotate_after: config.keys.rotate_after.get(),
        // Tokens a retired key signed stay verifiable until they expire, plus a margin
        // for clock skew.
        retire_after: model.longest_token_ttl() + Duration::from_secs(300),
    }
}

/// What a [`Core`] is built from.
struct CoreParts {
    store: Store,
    keys: KeyRing,
    metrics: Metrics,
    clock: Clock,
    dummy_hash: String,
    fetcher: Fetcher,
}

/// How often the key ring re-reads the store (keys made by other replicas, rotation)
/// and expired rows are purged.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

impl Issuer {
    /// Opens the store (migrating it), loads or generates the keys, and starts the
    /// housekeeping task, on the system clock. Private keys are encrypted at rest when
    /// `SCOPEGATE_KEY_ENCRYPTION_KEY` is set. Must run inside a Tokio runtime.
    pub async fn new(config: &IssuerConfig, metrics: Metrics) -> Result<Arc<Issuer>, String> {
        Issuer::with_clock(config, metrics, Clock::system()).await
    }

    /// [`Issuer::new`] on the clock every time the issuer reads comes from (the
    /// gateway's; tests pass [`Clock::manual`] and advance it).
    pub async fn with_clock(
        config: &IssuerConfig,
        metrics: Metrics,
        clock: Clock,
    ) -> Result<Arc<Issuer>, String> {
        let encryption = KeyEncryption::from_env()?;
        Issuer::build(config, metrics, clock, encryption).await
    }

    /// [`Issuer::new`] with an explicit key-encryption key (tests; no environment).
    pub async fn with_encryption(
        config: &IssuerConfig,
        metrics: Metrics,
        encryption: Option<KeyEncryption>,
    ) -> Result<Arc<Issuer>, String> {
        Issuer::build(config, metrics, Clock::system(), encryption).await
    }

    /// The issuer on `clock`, with `encryption` for private keys at rest.
    pub async fn build(
        config: &IssuerConfig,
        metrics: Metrics,
        clock: Clock,
        encryption: Option<KeyEncryption>,
    ) -> Result<Arc<Issuer>, String> {
        let model = Model::new(config);
        let store = Store::open(&config.store, clock.clone())
            .await
            .map_err(|e| e.to_string())?;
        let policy = policy_for(config, &model);
        let keys = KeyRing::load(store.clone(), encryption, policy, clock.clone()).await?;
        let dummy_hash = tokio::task::spawn_blocking(dummy_hash)
            .await
            .map_err(|_| "hashing was interrupted".to_string())??;
        let tls = crate::tls::tls_client_config(None).map_err(|e| e.to_string())?;
        let parts = CoreParts {
            store,
            keys,
            metrics,
            clock,
            dummy_hash,
            fetcher: Fetcher::new(tls),
        };
        Ok(Issuer::finish(config, model, parts))
    }

    fn finish(config: &IssuerConfig, model: Model, parts: CoreParts) -> Arc<Issuer> {
        let core = Arc::new(Core {
            store: parts.store,
            keys: parts.keys,
            metrics: parts.metrics,
            clock: parts.clock.clone(),
            dummy_hash: parts.dummy_hash,
            hashing: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            )),
            store_url: config.store.clone(),
            keys_config: config.keys,
            fetcher: parts.fetcher,
            dpop: crate::jose::dpop::ProofChecker::new(parts.clock.clone()),
        });
        spawn_housekeeping(Arc::downgrade(&core), config.throttle.window);
        spawn_store_probe(Arc::downgrade(&core));
        spawn_revocation_follower(Arc::downgrade(&core));
        tracing::info!(
            issuer = %config.url,
            store = %crate::config::issuer::redact_url(&config.store),
            kid = %core.keys.active().kid,
            "built-in issuer ready"
        );
        Arc::new(Issuer::assemble(config, model, core))
    }

    fn assemble(config: &IssuerConfig, model: Model, core: Arc<Core>) -> Issuer {
        let documents = discovery::documents(&model, alg_of(config.keys.algorithm));
        let client_jwks = client_jwks(&model, &core);
        Issuer {
            config: config.clone(),
            model,
            core,
            documents,
            client_jwks,
        }
    }

    /// The fetched keys of a client with a `jwks_uri`.
    pub fn client_jwks(&self, client_id: &str) -> Option<&Arc<TrustedIssuer>> {
        self.client_jwks.get(client_id)
    }

    /// The issuer for a new configuration around this one's store and keys, without
    /// I/O; `None` when `store` or `keys` changed (build anew with [`Issuer::new`]).
    pub fn reconfigure(&self, config: &IssuerConfig) -> Option<Arc<Issuer>> {
        if config.store != self.core.store_url || config.keys != self.core.keys_config {
            return None;
        }
        let model = Model::new(config);
        self.core.keys.set_policy(policy_for(config, &model));
        Some(Arc::new(Issuer::assemble(config, model, self.core.clone())))
    }

    /// The URL of one of the endpoints, under the issuer URL.
    pub fn endpoint_url(&self, endpoint: Endpoint) -> String {
        format!(
            "{}{}",
            self.model.base_url,
            endpoint.path().trim_start_matches('/')
        )
    }

    /// The configuration this issuer was built from.
    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// Whether the store answered its last probe (every [`store::PROBE_INTERVAL`]): what
    /// `/readyz` reports, without a query per probe.
    pub fn store_reachable(&self) -> bool {
        self.core.store.reachable()
    }

    /// Now, in Unix seconds, by the issuer's clock.
    pub fn now(&self) -> i64 {
        self.core.clock.unix_secs()
    }

    /// How the proxy trusts this issuer: `iss` exactly, audiences = every API plus the
    /// userinfo URL, algorithms = those of the published keys.
    pub fn trust_config(&self) -> TrustedIssuerConfig {
        let mut audiences = self.model.api_order.clone();
        audiences.push(self.model.userinfo_url.clone());
        let mut algorithms = self.core.keys.published().algs.clone();
        let configured = alg_of(self.config.keys.algorithm);
        if !algorithms.contains(&configured) {
            algorithms.push(configured);
        }
        TrustedIssuerConfig {
            issuer: self.model.issuer.clone(),
            jwks_uri: None,
            audiences,
            algorithms,
            jwks_ttl: Dur::secs(60),
            jwks_min_refresh: Dur::secs(1),
            clients: None,
            scope_claims: None,
            introspection: None,
            token_exchange: None,
        }
    }

    /// The JWKS, read in process (after re-reading the store, so keys that another
    /// replica just made are found).
    pub fn local_jwks(&self) -> LocalJwks {
        let core = Arc::downgrade(&self.core);
        Arc::new(move || {
            let core = core.clone();
            Box::pin(async move {
                let core = core.upgrade().ok_or("the issuer has been replaced")?;
                if let Err(err) = core.keys.refresh().await {
                    tracing::warn!(error = %err, "issuer keys: refresh from the store failed; serving the last keys");
                }
                Ok(core.keys.published().jwks.to_vec())
            })
        })
    }

    /// Answers a request for one of the issuer's endpoints (the router has checked its
    /// method); `conn` says who asks (throttling: `conn.remote` is the client, which the
    /// pipeline has resolved through `server.trusted_proxies`) and whether over TLS
    /// (`Secure` cookies).
    pub async fn serve<B>(
        &self,
        endpoint: Endpoint,
        request: Request<B>,
        conn: &ConnInfo,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (parts, body) = request.into_parts();
        let conn = conn.clone();
        match endpoint {
            Endpoint::Token => match form::read(&parts.headers, body).await {
                Ok(form) => self.token(&parts.headers, &form, conn.remote.ip()).await,
                Err(err) => {
                    self.core
                        .metrics
                        .token_errors_total
                        .with_label_values(&["unknown", err.code.as_str()])
                        .inc();
                    err.into_response()
                }
            },
            Endpoint::Par => match form::read(&parts.headers, body).await {
                Ok(form) => par::handle(self, &parts.headers, &form).await,
                Err(err) => err.into_response(),
            },
            Endpoint::Revoke => match form::read(&parts.headers, body).await {
                Ok(form) => revocation::handle(self, &parts.headers, &form).await,
                Err(err) => err.into_response(),
            },
            Endpoint::Introspect => match form::read(&parts.headers, body).await {
                Ok(form) => introspection::handle(self, &parts.headers, &form).await,
                Err(err) => err.into_response(),
            },
            Endpoint::Userinfo => userinfo::handle(self, &parts.headers).await,
            Endpoint::Jwks => discovery::json_document(
                self.core.keys.published().jwks.clone(),
                discovery::JWKS_CACHE_CONTROL,
            ),
            Endpoint::OpenidConfiguration => {
                discovery::json_document(self.documents.openid.clone(), discovery::CACHE_CONTROL)
            }
            Endpoint::OAuthMetadata => {
                discovery::json_document(self.documents.oauth.clone(), discovery::CACHE_CONTROL)
            }
            Endpoint::Authorize => authorize::endpoint(self, &parts, body, conn).await,
            Endpoint::Activate => device::activate(self, &parts, body, conn).await,
            Endpoint::Logout => logout::endpoint(self, &parts, body, conn).await,
            Endpoint::DeviceCode => match form::read(&parts.headers, body).await {
                Ok(form) => device::authorization(self, &parts.headers, &form).await,
                Err(err) => err.into_response(),
            },
        }
    }

    /// The token endpoint, after the form has been read: HTTP-free, for benches.
    pub async fn token(
        &self,
        headers: &HeaderMap,
        form: &form::Form,
        remote: IpAddr,
    ) -> Response<Body> {
        grant::endpoint(self, headers, form, remote).await
    }

    /// Checks a password against a user's argon2id hash, or against the dummy hash when
    /// there is no such user (same work either way). Runs off the async workers.
    pub async fn verify_password(&self, hash: Option<String>, password: &str) -> bool {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.core.dummy_hash.clone());
        let password = password.to_string();
        let Ok(permit) = self.core.hashing.clone().acquire_owned().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || {
            // The permit goes with the check: when the request gives up (its client
            // left), the hash still runs to the end and still counts, so no more checks
            // (and working memories) than permits are ever under way.
            let _permit = permit;
            password::verify(password.as_bytes(), &hash)
        })
        .await
        .unwrap_or(false);
        release_hash_memory_later();
        ok && known
    }

    /// Verifies an access token issued here: signature by a published key, `typ` at+jwt,
    /// `iss`, unexpired, `jti` not revoked. `Ok(None)` for anything else; `Err` only when
    /// the store fails.
    pub async fn verify_access_token(
        &self,
        token: &str,
    ) -> Result<Option<Map<String, Value>>, OAuthError> {
        let mut own = self.core.keys.published().verify(token);
        if own.is_none() && self.core.keys.kid_unknown(token) {
            // Maybe another replica's new key: re-read the store, at most every few seconds.
            if let Err(err) = self
                .core
                .keys
                .refresh_if_older(Duration::from_secs(5))
                .await
            {
                tracing::warn!(error = %err, "issuer keys: refresh failed");
            }
            own = self.core.keys.published().verify(token);
        }
        let Some(own) = own else { return Ok(None) };
        if !own.at_jwt {
            return Ok(None);
        }
        let claims = own.claims;
        if claims.get("iss").and_then(Value::as_str) != Some(self.model.issuer.as_str()) {
            return Ok(None);
        }
        let now = self.now();
        if claims
            .get("exp")
            .and_then(Value::as_i64)
            .is_none_or(|exp| exp <= now)
        {
            return Ok(None);
        }
        let Some(jti) = claims.get("jti").and_then(Value::as_str) else {
            return Ok(None);
        };
        let revoked = self.core.store.is_revoked(jti).await?;
        Ok((!revoked).then_some(claims))
    }

    /// The algorithm new tokens are signed with.
    pub fn signing_alg(&self) -> Alg {
        self.core.keys.active().alg
    }
}

/// Whether a task is waiting to unmap the password checks' working memory.
static RELEASE_SCHEDULED: AtomicBool = AtomicBool::new(false);

/// Gives the password checks' working memory back to the system once checks stop: one
/// task for the whole process, which sleeps until the next reservation has been idle for
/// [`password::KEEP_IDLE`], unmaps what has, and ends when nothing is left.
fn release_hash_memory_later() {
    if RELEASE_SCHEDULED.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async {
        let mut wait = password::KEEP_IDLE;
        loop {
            // A second of slack: the reservation's clock started a moment before this
            // timer's, and the timer may fire a hair before its deadline by that clock.
            tokio::time::sleep(wait + Duration::from_secs(1)).await;
            match tokio::task::spawn_blocking(password::release_idle).await {
                Ok(Some(next)) => wait = next,
                _ => {
                    RELEASE_SCHEDULED.store(false, Ordering::SeqCst);
                    // A check that returned its memory just before the flag went down
                    // saw it up and left the memory to this task: take it back.
                    if !password::has_spare() || RELEASE_SCHEDULED.swap(true, Ordering::SeqCst) {
                        return;
                    }
                    wait = password::KEEP_IDLE;
                }
            }
        }
    });
}

/// A key cache per client with a `jwks_uri` (the trusted-issuer machinery: single
/// flight, refetch on an unknown `kid` at most once a second, last good keys kept).
fn client_jwks(model: &Model, core: &Core) -> HashMap<String, Arc<TrustedIssuer>> {
    let mut out = HashMap::new();
    for client in model.clients.values() {
        let model::ClientKeys::Remote(url) = &client.keys else {
            continue;
        };
        let Ok(uri) = url.parse() else { continue };
        let config = TrustedIssuerConfig {
            issuer: url.clone(),
            jwks_uri: Some(url.clone()),
            audiences: Vec::new(),
            algorithms: client_auth::ASSERTION_ALGS.to_vec(),
            jwks_ttl: Dur::secs(300),
            jwks_min_refresh: Dur::secs(1),
            clients: None,
            scope_claims: None,
            introspection: None,
            token_exchange: None,
        };
        let source = KeySource::Jwks(uri);
        match TrustedIssuer::new(
            config,
            source,
            core.fetcher.clone(),
            core.metrics.clone(),
            core.clock.clone(),
        ) {
            Ok(keys) => {
                out.insert(client.client_id.clone(), keys);
            }
            Err(err) => {
                tracing::warn!(client_id = %client.client_id, error = %err, "client jwks_uri unusable")
            }
        }
    }
    out
}

/// An argon2id hash of a random password (production parameters).
fn dummy_hash() -> Result<String, String> {
    let mut secret = [0u8; 24];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| "no randomness".to_string())?;
    crate::config::hash_password(&crate::jose::b64url(&secret))
}

/// Re-reads keys (rotation, other replicas' keys) and purges expired rows every minute,
/// until the issuer core is dropped.
fn spawn_housekeeping(core: Weak<Core>, throttle_window: Dur) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(HOUSEKEEPING).await;
            let Some(core) = core.upgrade() else { break };
            if let Err(err) = core.keys.refresh().await {
                tracing::warn!(error = %err, "issuer keys: refresh failed");
            }
            let window = throttle_window.get().as_secs() as i64;
            let now = core.clock.unix_secs();
            if let Err(err) = core.store.purge_expired(now, window).await {
                tracing::warn!(error = %err, "issuer store: purging expired rows failed");
            }
        }
    });
}

/// Keeps the store's deny-set equal to `revoked_tokens` (other replicas' revocations
/// included) and the `revoked_tokens` gauge equal to its size, until the issuer core is
/// dropped.
fn spawn_revocation_follower(core: Weak<Core>) {
    let Some(strong) = core.upgrade() else { return };
    let store = strong.store.clone();
    let gauge = strong.metrics.revoked_tokens.clone();
    drop(strong);
    tokio::spawn(async move {
        let running = |held: usize| {
            gauge.set(held as i64);
            core.strong_count() > 0
        };
        store.follow_revocations(running).await;
    });
}

/// Probes the store every [`store::PROBE_INTERVAL`] (a `SELECT 1`) so that `/readyz` can
/// say it is unreachable and, without a restart, that it is back; until the issuer core
/// is dropped.
fn spawn_store_probe(core: Weak<Core>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(store::PROBE_INTERVAL).await;
            let Some(core) = core.upgrade() else { break };
            let store = core.store.clone();
            // Not holding the core across the probe: a replaced issuer goes away at once.
            drop(core);
            store.probe().await;
        }
    });
}
