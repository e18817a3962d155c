//! Keys of trusted issuers: fetched by OIDC discovery (or from a configured `jwks_uri`,
//! or in-process from the built-in issuer), held behind an `ArcSwap` so the request path
//! reads them without a lock, refreshed every `jwks_ttl` in the background.
//!
//! An unknown `kid` may trigger a refetch, at most one per `jwks_min_refresh` per issuer,
//! and concurrent requests share it (single flight: one fetch behind a mutex; a request
//! that waited while a fetch ran takes that fetch's outcome, success or failure, and does
//! not fetch again). A storm of random `kid`s therefore costs at most one fetch per
//! interval, and a slow or black-holed issuer costs each request at most the fetch in
//! flight, never a queue of fetches one after another. A failed fetch keeps the last good
//! keys. Keys come only from here: never from a URL or key named inside a token.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderValue, Uri};

use crate::clock::Clock;
use crate::config::TrustedIssuerConfig;
use crate::jose::{Alg, VerifyKey, parse_jwks};
use crate::metrics::Metrics;
use crate::upstream::Fetcher;

/// A source of JWKS bytes inside this process (the built-in issuer).
pub type LocalJwks =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>> + Send + Sync>;

/// Where an issuer's keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// `<issuer>/.well-known/openid-configuration`, whose `jwks_uri` is then fetched.
    Discovery(Uri),
    /// A configured `jwks_uri`.
    Jwks(Uri),
    /// The built-in issuer, without an HTTP round trip.
    Local(LocalJwks),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Discovery(uri) => write!(f, "Discovery({uri})"),
            KeySource::Jwks(uri) => write!(f, "Jwks({uri})"),
            KeySource::Local(_) => f.write_str("Local"),
        }
    }
}

/// One generation of an issuer's verification keys.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
    /// Bumped on every successful fetch; 0 = never loaded.
    pub generation: u64,
}

/// What a key set says about a token's `kid` and `alg`.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyMatch {
    /// Indexes of keys that may verify the token.
    Candidates(Vec<usize>),
    /// The `kid` exists but its key does not fit `alg` (kty/crv/alg/use mismatch).
    WrongType,
    Unknown,
}

impl KeySet {
    /// True if the key with this thumbprint is still published where the uncached path
    /// would look for it: under this `kid` (or any `kid`, for a token without one) and
    /// usable with `alg`. Keyed by key identity, not `kid` + `alg`: a JWKS that keeps a
    /// `kid` but replaces its key drops every token cached under the old key. Allocation
    /// free, for the verified-token cache.
    pub fn contains(&self, kid: Option<&str>, alg: Alg, thumbprint: &[u8; 32]) -> bool {
        self.keys.iter().any(|key| {
            key.thumbprint == *thumbprint
                && key.supports(alg)
                && (kid.is_none() || key.kid.as_deref() == kid)
        })
    }

    pub fn find(&self, kid: Option<&str>, alg: Alg) -> KeyMatch {
        match kid {
            Some(kid) => {
                let mut found_kid = false;
                let mut candidates = Vec::new();
                for (index, key) in self.keys.iter().enumerate() {
                    if key.kid.as_deref() == Some(kid) {
                        found_kid = true;
                        if key.supports(alg) {
                            candidates.push(index);
                        }
                    }
                }
                match (candidates.is_empty(), found_kid) {
                    (false, _) => KeyMatch::Candidates(candidates),
                    (true, true) => KeyMatch::WrongType,
                    (true, false) => KeyMatch::Unknown,
                }
            }
            None => {
                let candidates: Vec<usize> = self
                    .keys
                    .iter()
                    .enumerate()
                    .filter(|(_, key)| key.supports(alg))
                    .map(|(index, _)| index)
                    .collect();
                if candidates.is_empty() {
                    KeyMatch::Unknown
                } else {
                    KeyMatch::Candidates(candidates)
                }
            }
        }
    }
}

/// The wait before the next try at keys that were never loaded: 250 ms after the first
/// failure, doubling, at most [`FIRST_LOAD_MAX_BACKOFF`].
fn first_load_backoff(failures: u32) -> Duration {
    Duration::from_millis(250)
        .saturating_mul(1u32 << failures.min(8))
        .min(FIRST_LOAD_MAX_BACKOFF)
}

/// Keys never loaded are retried at least this often.
pub const FIRST_LOAD_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A trusted issuer: its acceptance rules and its live keys.
pub struct TrustedIssuer {
    pub config: TrustedIssuerConfig,
    pub issuer_header: HeaderValue,
    pub source: KeySource,
    keys: ArcSwap<KeySet>,
    fetcher: Fetcher,
    metrics: Metrics,
    refresh: tokio::sync::Mutex<()>,
    /// When the last fetch attempt started, Unix milliseconds by `clock` (0 = never).
    last_attempt: AtomicI64,
    fetches: AtomicU64,
    /// Fetch attempts finished, successful or not: a waiter that sees this move knows a
    /// fetch ran while it waited, and takes that outcome.
    completed: AtomicU64,
    loaded: AtomicBool,
    /// Until the first load: when the refresher tries again, Unix milliseconds by `clock`
    /// (for the `Retry-After` of the 503 that tokens get meanwhile).
    retry_at: AtomicI64,
    /// Times `jwks_min_refresh` and the `jwks_ttl` refresh; tests advance it.
    clock: Clock,
}

impl std::fmt::Debug for TrustedIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedIssuer")
            .field("issuer", &self.config.issuer)
            .field("source", &self.source)
            .field("generation", &self.keys.load().generation)
            .finish()
    }
}

impl TrustedIssuer {
    pub fn new(
        config: TrustedIssuerConfig,
        source: KeySource,
        fetcher: Fetcher,
        metrics: Metrics,
        clock: Clock,
    ) -> Result<Arc<TrustedIssuer>, String> {
        let issuer_header = HeaderValue::from_str(&config.issuer)
            .map_err(|_| format!("issuer {:?} cannot be sent as a header", config.issuer))?;
        Ok(Arc::new(TrustedIssuer {
            config,
            issuer_header,
            source,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetcher,
            metrics,
            refresh: tokio::sync::Mutex::new(()),
            last_attempt: AtomicI64::new(0),
            fetches: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            retry_at: AtomicI64::new(0),
            clock,
        }))
    }

    /// The default key source for a configured issuer.
    pub fn source_for(config: &TrustedIssuerConfig) -> Result<KeySource, String> {
        match &config.jwks_uri {
            Some(uri) => Ok(KeySource::Jwks(
                uri.parse().map_err(|_| format!("{uri:?} is not a URL"))?,
            )),
            None => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    config.issuer.trim_end_matches('/')
                );
                Ok(KeySource::Discovery(
                    discovery
                        .parse()
                        .map_err(|_| format!("{discovery:?} is not a URL"))?,
                ))
            }
        }
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// True once keys have been loaded at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Seconds until the next attempt to load keys that were never loaded (1 to 5): the
    /// `Retry-After` of the 503 its tokens get meanwhile.
    pub fn retry_after_secs(&self) -> u64 {
        let left = self
            .retry_at
            .load(Ordering::Acquire)
            .saturating_sub(self.clock.unix_millis());
        u64::try_from(left.max(0))
            .unwrap_or(0)
            .div_ceil(1000)
            .clamp(1, 5)
    }

    /// Fetch attempts so far (tests count them).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The current key set, without waiting.
    pub fn current(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// The key set to verify a token with `kid`/`alg`. When the kid is unknown (or no keys
    /// are loaded yet) this may refetch, subject to `jwks_min_refresh` and single flight.
    pub async fn keys_for(&self, kid: Option<&str>, alg: Alg) -> Arc<KeySet> {
        let current = self.keys.load_full();
        if current.generation > 0 && current.find(kid, alg) != KeyMatch::Unknown {
            return current;
        }
        self.refresh_after_miss(current.generation).await;
        self.keys.load_full()
    }

    fn recently_attempted(&self) -> bool {
        let last = self.last_attempt.load(Ordering::Acquire);
        let min_refresh =
            i64::try_from(self.config.jwks_min_refresh.get().as_millis()).unwrap_or(i64::MAX);
        last != 0 && self.clock.unix_millis().saturating_sub(last) < min_refresh
    }

    async fn refresh_after_miss(&self, seen_generation: u64) {
        // Before the first load, wait for the fetch in flight rather than refuse.
        if seen_generation > 0 && self.recently_attempted() {
            return;
        }
        let completed = self.completed.load(Ordering::Acquire);
        let _flight = self.refresh.lock().await;
        // A fetch finished while we waited (whatever its outcome), new keys arrived, or
        // we are rate-limited now: use what there is. Re-checking only the generation and
        // the rate limit (measured from a fetch's start) let every waiter behind a slow
        // failed fetch start a fetch of its own, one after another.
        if self.completed.load(Ordering::Acquire) != completed
            || self.keys.load().generation != seen_generation
            || self.recently_attempted()
        {
            return;
        }
        self.fetch_and_store().await;
    }

    /// Fetches now (background refresh and first load). Callers hold `refresh`.
    async fn fetch_and_store(&self) -> bool {
        self.last_attempt
            .store(self.clock.unix_millis().max(1), Ordering::Release);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch().await.and_then(|body| {
            let (keys, skipped) = parse_jwks(&body, &self.config.algorithms)?;
            for problem in skipped {
                tracing::warn!(issuer = %self.config.issuer, %problem, "JWKS member skipped");
            }
            if keys.is_empty() {
                return Err("the JWKS has no key usable with the configured algorithms".into());
            }
            Ok(keys)
        });
        let label = match result {
            Ok(keys) => {
                let generation = self.keys.load().generation + 1;
                tracing::debug!(issuer = %self.config.issuer, keys = keys.len(), generation, "JWKS loaded");
                self.keys.store(Arc::new(KeySet { keys, generation }));
                self.loaded.store(true, Ordering::Release);
                "success"
            }
            Err(problem) => {
                tracing::warn!(
                    issuer = %self.config.issuer,
                    %problem,
                    keeping = self.keys.load().keys.len(),
                    "JWKS fetch failed; keeping the last good keys"
                );
                "error"
            }
        };
        self.metrics
            .jwks_fetches_total
            .with_label_values(&[self.config.issuer.as_str(), label])
            .inc();
        // After the keys are stored: a waiter that sees the count move sees them too.
        self.completed.fetch_add(1, Ordering::AcqRel);
        label == "success"
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        match &self.source {
            KeySource::Local(source) => source().await,
            KeySource::Jwks(uri) => Ok(self.fetcher.get(uri).await?.to_vec()),
            KeySource::Discovery(discovery) => {
                let body = self
                    .fetcher
                    .get(discovery)
                    .await
                    .map_err(|err| format!("discovery {discovery}: {err}"))?;
                #[derive(serde::Deserialize)]
                struct Doc {
                    issuer: String,
                    jwks_uri: String,
                }
                let doc: Doc = serde_json::from_slice(&body)
                    .map_err(|err| format!("discovery document {discovery}: {err}"))?;
                if doc.issuer != self.config.issuer {
                    return Err(format!(
                        "discovery says issuer {:?}, configured {:?}",
                        doc.issuer, self.config.issuer
                    ));
                }
                let jwks_uri = crate::config::check_url(&doc.jwks_uri, "jwks_uri")
                    .map_err(|err| format!("discovery jwks_uri: {}", err.message))?;
                Ok(self
                    .fetcher
                    .get(&jwks_uri)
                    .await
                    .map_err(|err| format!("jwks {jwks_uri}: {err}"))?
                    .to_vec())
            }
        }
    }

    /// Loads keys now and then every `jwks_ttl` by the issuer's clock, retrying sooner
    /// after failures; stops when the issuer is dropped (config reload). Keys that were
    /// never loaded (the identity provider is not up yet) are retried with a short
    /// backoff, 250 ms doubling up to 5 s, whatever `jwks_min_refresh` says.
    pub fn spawn_refresher(self: &Arc<Self>) {
        let weak: Weak<TrustedIssuer> = Arc::downgrade(self);
        let clock = self.clock.clone();
        tokio::spawn(async move {
            let mut wait = Duration::ZERO;
            let mut first_load_failures = 0u32;
            loop {
                clock.sleep(wait).await;
                let Some(issuer) = weak.upgrade() else { break };
                let ok = {
                    let _flight = issuer.refresh.lock().await;
                    issuer.fetch_and_store().await
                };
                let ttl = issuer.config.jwks_ttl.get();
                wait = if ok {
                    ttl
                } else if !issuer.is_loaded() {
                    let backoff = first_load_backoff(first_load_failures);
                    first_load_failures = first_load_failures.saturating_add(1);
                    let millis = i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX);
                    issuer.retry_at.store(
                        clock.unix_millis().saturating_add(millis),
                        Ordering::Release,
                    );
                    backoff
                } else {
                    issuer
                        .config
                        .jwks_min_refresh
                        .get()
                        .clamp(Duration::from_secs(1), ttl)
                };
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_loaded_are_retried_within_five_seconds() {
        let waits: Vec<u64> = (0..10)
            .map(|n| first_load_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(waits[..6], [250, 500, 1000, 2000, 4000, 5000]);
        assert!(waits.iter().all(|&w| w <= 5000));
        assert_eq!(first_load_backoff(u32::MAX), FIRST_LOAD_MAX_BACKOFF);
    }
}
