//! `routes[].upstream_token`: token exchange at the edge. The upstream receives, as
//! `Authorization: Bearer`, a token the built-in issuer mints in process for the route's
//! audience on the caller's behalf (RFC 8693 semantics: same `sub`, `act` naming the
//! gateway), instead of the caller's token.
//!
//! Scopes: those the route lists that the caller holds at the upstream's audience (see
//! [`held_at`]: never more than the caller's token carries at the same audience);
//! none is 403 `insufficient_scope`. Lifetime: the API's access-token lifetime, cut at the caller's
//! `exp`. Minted tokens are cached per caller token (the route fixes the audience) and
//! reused until shortly before they expire, by the gateway's clock. A token that cannot
//! be minted is 503: the caller's token is never sent in its place.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use prometheus::IntCounter;

use crate::claims::Identity;
use crate::clock::Clock;
use crate::config::UpstreamTokenConfig;
use crate::error::ProxyError;
use crate::issuer::Issuer;
use crate::issuer::mint::{self, OnBehalf};
use crate::metrics::Metrics;

/// Does the caller hold `scope` at `audience`?
///
/// - A token already for `audience`: only the scopes it carries (an exchange at the same
///   audience never widens).
/// - A token of the built-in issuer for another API: what the user's roles grant at
///   `audience` (Auth0's model: a user's permissions are per API), or for a machine
///   caller (`<client>@clients`) what its client grants there.
/// - Any other token: only the scopes it carries.
fn held_at(issuer: Option<&Issuer>, identity: &Identity, audience: &str, scope: &str) -> bool {
    let carried = identity.has_scope(scope);
    if identity.has_audience(audience) {
        return carried;
    }
    let Some(issuer) = issuer.filter(|i| identity.issuer.as_bytes() == i.model.issuer.as_bytes())
    else {
        return carried;
    };
    let model = &issuer.model;
    let subject = identity.subject.to_str().unwrap_or("");
    if let Some(user) = model.user_by_subject(subject) {
        return model.role_scopes(user, audience).contains(scope);
    }
    let client = identity
        .client_id
        .as_ref()
        .and_then(|c| c.to_str().ok())
        .filter(|c| subject.strip_suffix("@clients") == Some(*c))
        .and_then(|c| model.clients.get(c));
    match client {
        Some(client) => client
            .grants
            .get(audience)
            .is_some_and(|scopes| scopes.iter().any(|s| s == scope)),
        None => carried,
    }
}

/// Minted tokens held per route at most.
const CACHE_ENTRIES: u64 = 100_000;

#[derive(Debug)]
struct Minted {
    authorization: HeaderValue,
    /// Reused while the clock is before this (shortly before `exp`).
    reuse_until: i64,
}

pub struct UpstreamToken {
    audience: Box<str>,
    scopes: Vec<Box<str>>,
    /// The route's scopes, space separated, for a 403's `scope`.
    scopes_text: String,
    clock: Clock,
    cache: moka::sync::Cache<Box<str>, Arc<Minted>, foldhash::fast::RandomState>,
    hits: IntCounter,
    minted: IntCounter,
    failed: IntCounter,
}

impl std::fmt::Debug for UpstreamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamToken")
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// moka drops an entry once it may no longer be reused (by the clock at insertion).
struct UntilReuse {
    clock: Clock,
}

impl moka::Expiry<Box<str>, Arc<Minted>> for UntilReuse {
    fn expire_after_create(
        &self,
        _key: &Box<str>,
        value: &Arc<Minted>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = value.reuse_until - self.clock.unix_secs();
        Some(Duration::from_secs(left.clamp(0, 3600) as u64))
    }
}

impl UpstreamToken {
    pub fn new(
        route: &str,
        config: &UpstreamTokenConfig,
        clock: Clock,
        metrics: &Metrics,
    ) -> UpstreamToken {
        let counter = |result: &str| {
            metrics
                .upstream_token_total
                .with_label_values(&[route, result])
        };
        UpstreamToken {
            audience: config.audience.as_str().into(),
            scopes: config.scopes.iter().map(|s| s.as_str().into()).collect(),
            scopes_text: config.scopes.join(" "),
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .expire_after(UntilReuse {
                    clock: clock.clone(),
                })
                .build_with_hasher(foldhash::fast::RandomState::default()),
            clock,
            hits: counter("hit"),
            minted: counter("minted"),
            failed: counter("failed"),
        }
    }

    /// The `Authorization` value the upstream gets for the caller's `token`.
    pub fn authorization(
        &self,
        issuer: Option<&Issuer>,
        token: &str,
        identity: &Identity,
    ) -> Result<HeaderValue, ProxyError> {
        let now = self.clock.unix_secs();
        if let Some(minted) = self.cache.get(token) {
            if now < minted.reuse_until {
                self.hits.inc();
                return Ok(minted.authorization.clone());
            }
            self.cache.invalidate(token);
        }
        let scope = self.granted(issuer, identity)?;
        let minted = self.mint(issuer, identity, &scope).inspect_err(|_| {
            self.failed.inc();
        })?;
        self.minted.inc();
        let authorization = minted.authorization.clone();
        self.cache.insert(token.into(), Arc::new(minted));
        Ok(authorization)
    }

    /// The route's scopes the caller holds at the upstream's audience, in the route's
    /// order (see [`held_at`]).
    fn granted(&self, issuer: Option<&Issuer>, identity: &Identity) -> Result<String, ProxyError> {
        let granted: Vec<&str> = self
            .scopes
            .iter()
            .map(|s| &**s)
            .filter(|scope| held_at(issuer, identity, &self.audience, scope))
            .collect();
        if granted.is_empty() {
            return Err(ProxyError::InsufficientScope {
                required: self.scopes_text.clone(),
            });
        }
        Ok(granted.join(" "))
    }

    fn mint(
        &self,
        issuer: Option<&Issuer>,
        identity: &Identity,
        scope: &str,
    ) -> Result<Minted, ProxyError> {
        let failed = |why: &str| {
            ProxyError::UpstreamTokenFailed(format!(
                "the gateway could not obtain a token for the upstream: {why}"
            ))
        };
        let issuer = issuer.ok_or_else(|| failed("the built-in issuer is not running"))?;
        let request = OnBehalf {
            subject: identity.subject.to_str().unwrap_or(""),
            client_id: identity.client_id.as_ref().and_then(|c| c.to_str().ok()),
            audience: &self.audience,
            scope,
            not_after: identity.expires_at.floor() as i64,
        };
        let token = mint::on_behalf(issuer, request).map_err(|err| {
            tracing::warn!(audience = &*self.audience, error = %err.description, "upstream token: minting failed");
            failed(&err.description)
        })?;
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", token.token))
            .map_err(|_| failed("the minted token does not fit a header"))?;
        authorization.set_sensitive(true);
        // Renewed a tenth of its lifetime (at least 5 s) before it expires, so an
        // upstream never receives a token about to lapse on the way.
        let lifetime = token.expires_in as i64;
        let margin = (lifetime / 10).max(5).min(lifetime);
        Ok(Minted {
            authorization,
            reuse_until: token.expires_at - margin,
        })
    }
}
