//! RFC 7662 token introspection at an external issuer (`trust.issuers[].introspection`):
//! how the proxy accepts opaque tokens, and how routes with `revocation: strict` learn
//! that a JWT was revoked before it expires.
//!
//! One [`Introspector`] per issuer that has the block. It POSTs `token` and
//! `token_type_hint=access_token` with the gateway's client credentials (HTTP Basic,
//! RFC 6749 §2.3.1) and caches each answer — active or not — keyed by the token itself,
//! for `cache_ttl` and never past the token's `exp`, as read on the gateway's clock (a
//! hit is re-checked; moka's own expiry only bounds memory). An endpoint that cannot
//! answer is an error for the caller to turn into 503: an unanswered question never
//! lets a token through.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::{HeaderValue, Uri};
use serde_json::{Map, Value};

use crate::claims::{AuthFailure, Identity};
use crate::clock::Clock;
use crate::config::IntrospectionConfig;
use crate::http::{basic_credentials, form_encode};
use crate::upstream::Fetcher;

/// Answers held per issuer at most.
const CACHE_ENTRIES: u64 = 100_000;

/// One answer of the issuer's introspection endpoint.
#[derive(Debug)]
pub struct Introspected {
    pub active: bool,
    /// The answer's members (`sub`, `scope`, `client_id`, `aud`, `exp`, ...).
    pub claims: Map<String, Value>,
    /// Until when (seconds since the epoch, on the gateway's clock) it may be reused.
    pub until: f64,
    /// The identity an opaque token proves, built once from `claims` by the verifier.
    pub identity: OnceLock<Result<Arc<Identity>, AuthFailure>>,
}

pub struct Introspector {
    uri: Uri,
    authorization: HeaderValue,
    cache_ttl: f64,
    fetcher: Fetcher,
    clock: Clock,
    cache: moka::sync::Cache<Box<str>, Arc<Introspected>, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("uri", &self.uri)
            .finish()
    }
}

/// moka keeps an answer at most until it may no longer be reused (by the clock it read
/// when the answer came).
struct UntilReusable {
    clock: Clock,
}

impl moka::Expiry<Box<str>, Arc<Introspected>> for UntilReusable {
    fn expire_after_create(
        &self,
        _key: &Box<str>,
        value: &Arc<Introspected>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = value.until - self.clock.unix_secs_f64();
        Some(Duration::from_secs_f64(left.clamp(0.0, 3600.0)))
    }
}

impl Introspector {
    /// The introspector `config` describes; its URL was checked when the config loaded.
    pub fn new(
        config: &IntrospectionConfig,
        fetcher: Fetcher,
        clock: Clock,
    ) -> Result<Introspector, String> {
        let uri: Uri = config
            .url
            .parse()
            .map_err(|err| format!("introspection url: {err}"))?;
        let authorization = basic_credentials(&config.client_id, &config.client_secret)
            .ok_or("introspection credentials do not fit a header")?;
        let cache = moka::sync::Cache::builder()
            .max_capacity(CACHE_ENTRIES)
            .expire_after(UntilReusable {
                clock: clock.clone(),
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        Ok(Introspector {
            uri,
            authorization,
            cache_ttl: config.cache_ttl.get().as_secs_f64(),
            fetcher,
            clock,
            cache,
        })
    }

    /// What the issuer says of `token`: a cached answer still good by the gateway's
    /// clock, else a fresh one. `Err` when the endpoint cannot answer.
    pub async fn introspect(&self, token: &str) -> Result<Arc<Introspected>, String> {
        let now = self.clock.unix_secs_f64();
        if let Some(answer) = self.cache.get(token) {
            if now < answer.until {
                return Ok(answer);
            }
            self.cache.invalidate(token);
        }
        let form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let body = self
            .fetcher
            .post_form(&self.uri, &self.authorization, form)
            .await
            .map_err(|err| format!("introspection at {}: {err}", self.uri))?;
        let claims: Map<String, Value> = serde_json::from_slice(&body).map_err(|_| {
            format!(
                "introspection at {}: the answer is not a JSON object",
                self.uri
            )
        })?;
        let answer = Arc::new(self.answer(claims, now));
        self.cache.insert(token.into(), answer.clone());
        Ok(answer)
    }

    /// An answer is active only if it says `"active": true` (RFC 7662 §2.2) and its
    /// `exp`, if any, is still ahead; it is reused until `cache_ttl` or `exp`.
    fn answer(&self, claims: Map<String, Value>, now: f64) -> Introspected {
        let exp = claims.get("exp").and_then(Value::as_f64);
        let active =
            claims.get("active") == Some(&Value::Bool(true)) && exp.is_none_or(|exp| exp > now);
        let until = match exp {
            Some(exp) if active => (now + self.cache_ttl).min(exp),
            _ => now + self.cache_ttl,
        };
        Introspected {
            active,
            claims,
            until,
            identity: OnceLock::new(),
        }
    }
}
