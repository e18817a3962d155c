//! `routes[].upstream_token`: token exchange at the edge. The upstream receives, as
//! `Authorization: Bearer`, a token for the route's audience obtained on the caller's
//! behalf, instead of the caller's token:
//!
//! - A caller whose token's issuer has `token_exchange` (an external issuer): an RFC 8693
//!   exchange at that issuer's token endpoint with the gateway's client credentials,
//!   asking for the route's scopes (only those the caller's token carries when it is
//!   already for that audience). An answer granting a scope not asked for is refused.
//! - Any other caller: the built-in issuer mints it in process (same `sub`, `act` naming
//!   the gateway), with the route's scopes the caller holds at the upstream's audience
//!   (see [`held_at`]: never more than the caller's token carries at the same audience).
//!
//! No scope to ask for is 403 `insufficient_scope`. Lifetime: never used past the
//! caller's `exp` (minted ones expire by then). Tokens are cached per caller token (the
//! route fixes the audience) and reused until shortly before they expire, by the
//! gateway's clock. A token that cannot be obtained is 503: the caller's token is never
//! sent in its place.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Uri};
use prometheus::IntCounter;
use serde::Deserialize;

use crate::claims::Identity;
use crate::clock::Clock;
use crate::config::{TokenExchangeConfig, UpstreamTokenConfig};
use crate::error::ProxyError;
use crate::http::{basic_credentials, form_encode};
use crate::issuer::Issuer;
use crate::issuer::mint::{self, OnBehalf};
use crate::metrics::Metrics;
use crate::upstream::Fetcher;

/// An external issuer's token endpoint, where the gateway exchanges its callers' tokens
/// (RFC 8693) as a client of its own (`trust.issuers[].token_exchange`).
pub struct Exchanger {
    uri: Uri,
    authorization: HeaderValue,
    fetcher: Fetcher,
    /// The largest token taken back (`server.limits.max_token_bytes`).
    max_token_bytes: usize,
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanger").field("uri", &self.uri).finish()
    }
}

/// A token endpoint's successful answer (RFC 8693 §2.2.1), the members used.
#[derive(Deserialize)]
struct Exchanged {
    access_token: String,
    token_type: String,
    #[serde(default)]
    issued_token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    /// Absent when it is the scope asked for.
    #[serde(default)]
    scope: Option<String>,
}

/// Why an exchange gave no token.
#[derive(Debug)]
enum ExchangeFailure {
    /// The issuer said no to this caller (a 400: `invalid_grant`, `invalid_scope`,
    /// `invalid_target`...): asking again will not help.
    Refused,
    /// No usable answer (unreachable, slow, an error status, a malformed or widened
    /// token response): the message says which, for the log.
    Failed(String),
}

/// How long one exchange may take, whatever the fetcher's own deadline.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

impl Exchanger {
    /// The exchanger `config` describes; its URL was checked when the config loaded.
    pub fn new(
        config: &TokenExchangeConfig,
        fetcher: Fetcher,
        max_token_bytes: usize,
    ) -> Result<Exchanger, String> {
        Ok(Exchanger {
            uri: config
                .url
                .parse()
                .map_err(|err| format!("token_exchange url: {err}"))?,
            authorization: basic_credentials(&config.client_id, &config.client_secret)
                .ok_or("token_exchange credentials do not fit a header")?,
            fetcher,
            max_token_bytes,
        })
    }

    /// Exchanges `token` for one for `audience` with `scope`; the answer's token and
    /// lifetime in seconds, if it says.
    async fn exchange(
        &self,
        token: &str,
        audience: &str,
        scope: &str,
    ) -> Result<(String, Option<u64>), ExchangeFailure> {
        let failed = |why: String| ExchangeFailure::Failed(format!("at {}: {why}", self.uri));
        let form = format!(
            "grant_type={}&subject_token={}&subject_token_type={type_}\
             &requested_token_type={type_}&audience={}&scope={}",
            form_encode("urn:ietf:params:oauth:grant-type:token-exchange"),
            form_encode(token),
            form_encode(audience),
            form_encode(scope),
            type_ = form_encode(ACCESS_TOKEN_TYPE),
        );
        let sent = self
            .fetcher
            .post_form_answer(&self.uri, &self.authorization, form);
        let answer = tokio::time::timeout(EXCHANGE_TIMEOUT, sent)
            .await
            .map_err(|_| failed("timed out".to_string()))?
            .map_err(failed)?;
        match answer.status {
            http::StatusCode::OK => {}
            http::StatusCode::BAD_REQUEST => return Err(ExchangeFailure::Refused),
            status => return Err(failed(format!("answered {status}"))),
        }
        let answer: Exchanged = serde_json::from_slice(&answer.body)
            .map_err(|_| failed("not a token response".to_string()))?;
        self.check(&answer, scope).map_err(failed)?;
        Ok((answer.access_token, answer.expires_in))
    }

    /// A usable answer: a bearer access token of sane size, no scope beyond `asked`.
    fn check(&self, answer: &Exchanged, asked: &str) -> Result<(), String> {
        if !answer.token_type.eq_ignore_ascii_case("bearer") {
            return Err(format!("token_type {:?}, not Bearer", answer.token_type));
        }
        if let Some(issued) = &answer.issued_token_type
            && issued != ACCESS_TOKEN_TYPE
            && issued != JWT_TOKEN_TYPE
        {
            return Err(format!("issued_token_type {issued:?}, not an access token"));
        }
        if answer.access_token.is_empty() || answer.access_token.len() > self.max_token_bytes {
            return Err(format!(
                "an access_token of {} bytes (at most {})",
                answer.access_token.len(),
                self.max_token_bytes
            ));
        }
        if let Some(granted) = &answer.scope
            && let Some(extra) = granted
                .split_ascii_whitespace()
                .find(|g| !asked.split(' ').any(|a| a == *g))
        {
            return Err(format!("granted {extra:?}, which was not asked for"));
        }
        Ok(())
    }
}

/// A 503 saying why the upstream's token could not be had.
fn failed(why: &str) -> ProxyError {
    ProxyError::UpstreamTokenFailed(format!(
        "the gateway could not obtain a token for the upstream: {why}"
    ))
}

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
    /// By trusted issuer (`Identity::issuer_index`): its token endpoint, if it has one.
    exchangers: Arc<[Option<Exchanger>]>,
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
        exchangers: Arc<[Option<Exchanger>]>,
        clock: Clock,
        metrics: &Metrics,
    ) -> UpstreamToken {
        let counter = |result: &str| {
            metrics
                .upstream_token_total
                .with_label_values(&[route, result])
        };
        UpstreamToken {
            exchangers,
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
    pub async fn authorization(
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
        let exchanger = self
            .exchangers
            .get(identity.issuer_index)
            .and_then(Option::as_ref);
        let minted = match exchanger {
            Some(exchanger) => {
                let scope = self.asked(identity)?;
                self.exchange(exchanger, token, identity, &scope).await
            }
            None => {
                let scope = self.granted(issuer, identity)?;
                self.mint(issuer, identity, &scope)
            }
        }
        .inspect_err(|_| {
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

    /// What to ask an external issuer for: the route's scopes the caller's token
    /// carries. The gateway asks as its own client, and an issuer whose exchange
    /// policy looks at the requesting client could grant what the gateway may have
    /// rather than what the caller does; so the caller's own scopes bound the request.
    fn asked(&self, identity: &Identity) -> Result<String, ProxyError> {
        let asked: Vec<&str> = self
            .scopes
            .iter()
            .map(|s| &**s)
            .filter(|scope| identity.has_scope(scope))
            .collect();
        if asked.is_empty() {
            return Err(ProxyError::InsufficientScope {
                required: self.scopes_text.clone(),
            });
        }
        Ok(asked.join(" "))
    }

    async fn exchange(
        &self,
        exchanger: &Exchanger,
        token: &str,
        identity: &Identity,
        scope: &str,
    ) -> Result<Minted, ProxyError> {
        let (token, expires_in) = exchanger
            .exchange(token, &self.audience, scope)
            .await
            .map_err(|failure| match failure {
                ExchangeFailure::Refused => {
                    tracing::info!(audience = &*self.audience, "upstream token: the issuer refused the exchange");
                    ProxyError::InsufficientScope {
                        required: self.scopes_text.clone(),
                    }
                }
                ExchangeFailure::Failed(why) => {
                    tracing::warn!(audience = &*self.audience, error = %why, "upstream token: exchange failed");
                    failed("the issuer's token exchange failed")
                }
            })?;
        let now = self.clock.unix_secs();
        // A token that does not say its lifetime is reused for a minute at most.
        let expires_at = now.saturating_add(expires_in.map_or(60, |s| s.min(86_400) as i64));
        let expires_at = expires_at.min(identity.expires_at.floor() as i64);
        Minted::new(&token, expires_at - now, expires_at)
    }

    fn mint(
        &self,
        issuer: Option<&Issuer>,
        identity: &Identity,
        scope: &str,
    ) -> Result<Minted, ProxyError> {
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
        Minted::new(&token.token, token.expires_in as i64, token.expires_at)
    }
}

impl Minted {
    /// `token`, living `lifetime` seconds until `expires_at`, as the upstream gets it.
    fn new(token: &str, lifetime: i64, expires_at: i64) -> Result<Minted, ProxyError> {
        let mut authorization = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| failed("it does not fit a header"))?;
        authorization.set_sensitive(true);
        // Renewed a tenth of its lifetime (at least 5 s) before it expires, so an
        // upstream never receives a token about to lapse on the way.
        let lifetime = lifetime.max(0);
        let margin = (lifetime / 10).max(5).min(lifetime);
        Ok(Minted {
            authorization,
            reuse_until: expires_at - margin,
        })
    }
}
