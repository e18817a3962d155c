//! Authentication: find the bearer token, verify it against the trusted issuer's keys,
//! check its claims, and produce the [`Identity`] it proves.
//!
//! Order of checks: size → JWS shape → header (`alg` allowed for the issuer, no `crit`,
//! no embedded key or key URL, `typ`) → `iss` names a trusted issuer → key by `kid` that
//! fits `alg` → signature → `exp`/`nbf`/`iat` → ID-token look → `aud` → client allowlist
//! → `sub` and scopes. Algorithms come from configuration; the token only picks among them.
//!
//! Verified tokens are cached, keyed by the token itself (a hit compares the whole token,
//! so no hash collision can ever map one token onto another's identity), bounded, never
//! past `exp`. Time is read from the gateway's [`Clock`]; moka's own expiry runs on its
//! own clock, so it only bounds memory, and a cache hit is re-checked for expiry (by our
//! clock) and for the very key that verified it (by thumbprint, under the token's `kid`)
//! still being in the issuer's JWKS, so the cache never accepts what the uncached path
//! would refuse. Route
//! checks (audience, scopes) run on every request, cached or not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};

use crate::claims::{AuthFailure, Identity, Reason, has_word, scope_tokens};
use crate::clock::Clock;
use crate::error::ProxyError;
use crate::http::{AuthorizationError, TokenScheme};
use crate::issuer::store::Store;
use crate::jose::{Alg, Jws};
use crate::jwks::{KeyMatch, TrustedIssuer};
use crate::pipeline::introspect::{Introspected, Introspector};
use crate::revoked::Presence;
use crate::upstream::Fetcher;

/// Everything needed to verify tokens, built once per config.
pub struct Verifier {
    issuers: Vec<Arc<TrustedIssuer>>,
    by_iss: HashMap<Box<str>, usize>,
    leeway: f64,
    max_token_bytes: usize,
    /// `forward.claims` names, in the order of `Identity::mapped`.
    claim_names: Vec<Box<str>>,
    clock: Clock,
    cache: Option<moka::sync::Cache<Box<str>, Arc<Identity>, foldhash::fast::RandomState>>,
    revocations: Option<Revocations>,
    /// By issuer index: the issuer's introspection endpoint, when configured.
    introspectors: Vec<Option<Introspector>>,
}

/// Where the built-in issuer's revocations are found: its deny-set (in memory, kept
/// equal to the store), and the store itself for when the set overflowed.
#[derive(Debug, Clone)]
pub struct Revocations {
    /// The index of the built-in issuer among the trusted issuers.
    pub issuer_index: usize,
    pub store: Store,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers)
            .field("cache", &self.cache.is_some())
            .finish()
    }
}

/// Cache entries live until the token expires (plus leeway), at most an hour, as far as
/// moka can tell; a hit is checked against [`Clock`] again ([`Verifier::verify`]).
struct UntilExpiry {
    leeway: f64,
    clock: Clock,
}

impl moka::Expiry<Box<str>, Arc<Identity>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &Box<str>,
        value: &Arc<Identity>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = value.expires_at + self.leeway - self.clock.unix_secs_f64();
        Some(Duration::from_secs_f64(left.clamp(0.0, 3600.0)))
    }
}

/// Finds the bearer token in `Authorization`. `Ok(None)` when there is none or the
/// scheme is not Bearer (which counts as no token).
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ProxyError> {
    crate::http::bearer_token(headers).map_err(authorization_error)
}

/// Finds the access token in `Authorization` under `Bearer` or `DPoP`. `Ok(None)` when
/// there is none or the scheme is another (which counts as no token).
pub fn access_token(headers: &HeaderMap) -> Result<Option<(TokenScheme, &str)>, ProxyError> {
    crate::http::access_token(headers).map_err(authorization_error)
}

fn authorization_error(err: AuthorizationError) -> ProxyError {
    match err {
        AuthorizationError::Duplicate => ProxyError::BadRequest(err.to_string()),
        AuthorizationError::Malformed(_) => malformed(&err.to_string()),
    }
}

/// What the proxy reads from a token's JOSE header, checked: no `crit`, no embedded
/// key, a known algorithm, an access-token `typ` (or none, or `JWT`).
struct Header {
    alg: Alg,
    kid: Option<Box<str>>,
    /// `typ` says `at+jwt` (RFC 9068).
    at_typ: bool,
}

fn checked_header(jws: &Jws) -> Result<Header, AuthFailure> {
    let header = jws
        .header()
        .map_err(|err| fail(Reason::Malformed, err.to_string()))?;
    if header.crit {
        return Err(fail(
            Reason::Malformed,
            "the token header has a crit parameter Scopegate does not understand",
        ));
    }
    if header.embedded_key {
        return Err(fail(
            Reason::Malformed,
            "the token header names its own key (jku, x5u, jwk or x5c); keys come only from the issuer's JWKS",
        ));
    }
    let alg = Alg::from_name(&header.alg).ok_or_else(|| {
        fail(
            Reason::DisallowedAlg,
            format!("algorithm {:?} is not accepted", truncate(&header.alg)),
        )
    })?;
    let at_typ = match header.typ.as_deref() {
        None => false,
        Some(typ)
            if typ.eq_ignore_ascii_case("at+jwt")
                || typ.eq_ignore_ascii_case("application/at+jwt") =>
        {
            true
        }
        Some(typ) if typ.eq_ignore_ascii_case("jwt") => false,
        Some(typ) => {
            return Err(fail(
                Reason::WrongType,
                format!("a token of type {:?} is not an access token", truncate(typ)),
            ));
        }
    };
    Ok(Header {
        alg,
        kid: header.kid.as_deref().map(Into::into),
        at_typ,
    })
}

/// Finds the issuer's key for the token (refetching for an unknown `kid`, within
/// limits) and checks the signature; the thumbprint of the key that verified it.
async fn verify_signature(
    issuer: &TrustedIssuer,
    header: &Header,
    jws: &Jws<'_>,
) -> Result<[u8; 32], AuthFailure> {
    let (kid, alg) = (header.kid.as_deref(), header.alg);
    let keys = issuer.keys_for(kid, alg).await;
    let candidates = match keys.find(kid, alg) {
        KeyMatch::Candidates(candidates) => candidates,
        KeyMatch::WrongType => {
            return Err(fail(
                Reason::BadSignature,
                format!("the key named by kid does not fit algorithm {alg}"),
            ));
        }
        KeyMatch::Unknown if keys.generation == 0 => {
            let mut failure = fail(
                Reason::IssuerUnavailable,
                "the token's issuer has not published its keys to this gateway yet; try again shortly",
            );
            failure.retry_after = Some(issuer.retry_after_secs());
            return Err(failure);
        }
        KeyMatch::Unknown => {
            return Err(fail(
                Reason::UnknownKey,
                "no key of the issuer matches the token's kid",
            ));
        }
    };
    let message = jws.signing_input.as_bytes();
    candidates
        .into_iter()
        .find(|&index| keys.keys[index].verify(alg, message, &jws.signature))
        .map(|index| keys.keys[index].thumbprint)
        .ok_or_else(|| fail(Reason::BadSignature, "the token signature is not valid"))
}

/// `aud`, which must name one of the issuer's audiences.
fn checked_audiences(
    issuer: &TrustedIssuer,
    claims: &Map<String, Value>,
) -> Result<Vec<Box<str>>, AuthFailure> {
    let audiences = string_or_list(claims, "aud")?;
    if !audiences
        .iter()
        .any(|aud| issuer.config.audiences.iter().any(|a| a.as_str() == &**aud))
    {
        return Err(fail(
            Reason::WrongAudience,
            "the token is not meant for this API (aud)",
        ));
    }
    Ok(audiences)
}

/// `azp` or `client_id`, which the issuer's `clients` allowlist must name when it has one.
fn checked_client<'c>(
    issuer: &TrustedIssuer,
    claims: &'c Map<String, Value>,
) -> Result<Option<&'c str>, AuthFailure> {
    let client = match claims.get("azp").or_else(|| claims.get("client_id")) {
        None => None,
        Some(Value::String(client)) => Some(client.as_str()),
        Some(_) => return Err(fail(Reason::Malformed, "azp/client_id is not a string")),
    };
    if let Some(allowed) = &issuer.config.clients
        && !client.is_some_and(|c| allowed.iter().any(|a| a == c))
    {
        return Err(fail(
            Reason::UnknownClient,
            "the token's client is not allowed here",
        ));
    }
    Ok(client)
}

/// `cnf.jkt` (RFC 9449 §6): the thumbprint of the key a DPoP-bound token is bound to.
/// A `cnf` that binds otherwise (`x5t#S256`, mTLS) cannot be honoured here: refused.
fn bound_key(claims: &Map<String, Value>) -> Result<Option<Box<str>>, AuthFailure> {
    let Some(cnf) = claims.get("cnf") else {
        return Ok(None);
    };
    match cnf.get("jkt") {
        Some(Value::String(jkt)) if !jkt.is_empty() => Ok(Some(jkt.as_str().into())),
        _ => Err(fail(
            Reason::Malformed,
            "the token is bound (cnf) in a way this gateway cannot check; only DPoP's jkt is",
        )),
    }
}

/// The `key` of an identity an opaque token proves (no key verified it).
const OPAQUE: [u8; 32] = [0; 32];

/// Repeated introspection warnings: one a second (an endpoint down fails every request).
static INTROSPECTION_DOWN: crate::flood::Flood =
    crate::flood::Flood::per(std::time::Duration::from_secs(1));

/// An introspection endpoint that could not answer: 503, try again shortly.
fn unavailable(err: String) -> AuthFailure {
    if let Some(suppressed) = INTROSPECTION_DOWN.pass() {
        tracing::warn!(error = %err, suppressed, "token introspection failed");
    }
    let mut failure = fail(
        Reason::IssuerUnavailable,
        "the token's issuer cannot be asked about it right now; try again shortly",
    );
    failure.retry_after = Some(2);
    failure
}

fn malformed(description: &str) -> ProxyError {
    ProxyError::InvalidToken(AuthFailure::new(Reason::Malformed, description))
}

fn fail(reason: Reason, description: impl Into<String>) -> AuthFailure {
    AuthFailure::new(reason, description)
}

impl Verifier {
    pub fn new(
        issuers: Vec<Arc<TrustedIssuer>>,
        leeway: Duration,
        max_token_bytes: usize,
        claim_names: Vec<Box<str>>,
        cache_size: u64,
        clock: Clock,
    ) -> Verifier {
        let by_iss = issuers
            .iter()
            .enumerate()
            .map(|(index, issuer)| (issuer.issuer().into(), index))
            .collect();
        let leeway = leeway.as_secs_f64();
        let cache = (cache_size > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cache_size)
                .expire_after(UntilExpiry {
                    leeway,
                    clock: clock.clone(),
                })
                .build_with_hasher(foldhash::fast::RandomState::default())
        });
        Verifier {
            issuers,
            by_iss,
            leeway,
            max_token_bytes,
            claim_names,
            clock,
            cache,
            revocations: None,
            introspectors: Vec::new(),
        }
    }

    /// Introspects at the issuers that have `introspection` configured (opaque tokens,
    /// strict routes), through `fetcher`.
    pub fn with_introspection(mut self, fetcher: &Fetcher) -> Result<Verifier, String> {
        self.introspectors = self
            .issuers
            .iter()
            .map(|issuer| {
                issuer
                    .config
                    .introspection
                    .as_ref()
                    .map(|config| Introspector::new(config, fetcher.clone(), self.clock.clone()))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// [`Verifier::verify`], and on a `strict` route the token's issuer must also say,
    /// by introspection, that the token is still active (the built-in issuer's deny-set
    /// says so for its own tokens).
    pub async fn verify_for_route(
        &self,
        token: &str,
        strict: bool,
    ) -> Result<Arc<Identity>, AuthFailure> {
        let identity = self.verify(token).await?;
        if !strict || identity.key == OPAQUE {
            // Not strict, or an opaque token: introspection just vouched for it.
            return Ok(identity);
        }
        let builtin = self
            .revocations
            .as_ref()
            .is_some_and(|r| r.issuer_index == identity.issuer_index);
        if builtin {
            return Ok(identity);
        }
        let Some(introspector) = self.introspector(identity.issuer_index) else {
            return Err(fail(
                Reason::WrongIssuer,
                "this route checks every token for revocation, and the token's issuer offers no introspection",
            ));
        };
        let answer = Box::pin(introspector.introspect(token))
            .await
            .map_err(unavailable)?;
        if !answer.active {
            return Err(fail(
                Reason::Revoked,
                "the issuer says the token is no longer active",
            ));
        }
        Ok(identity)
    }

    fn introspector(&self, issuer_index: usize) -> Option<&Introspector> {
        self.introspectors.get(issuer_index)?.as_ref()
    }

    /// An opaque (not JWS) token: the first issuer whose introspection says it is
    /// active vouches for it; refused when none does.
    async fn verify_opaque(&self, token: &str) -> Result<Arc<Identity>, AuthFailure> {
        let mut unanswered = None;
        for (index, introspector) in self.introspectors.iter().enumerate() {
            let Some(introspector) = introspector else {
                continue;
            };
            match Box::pin(introspector.introspect(token)).await {
                Ok(answer) if answer.active => {
                    return answer
                        .identity
                        .get_or_init(|| self.opaque_identity(index, &answer).map(Arc::new))
                        .clone();
                }
                Ok(_) => {}
                Err(err) => unanswered = Some(err),
            }
        }
        match unanswered {
            Some(err) => Err(unavailable(err)),
            None => Err(fail(
                Reason::Revoked,
                "the issuer says the token is not active",
            )),
        }
    }

    /// The identity an active introspection answer describes, checked like a JWT's
    /// claims: `iss` (when given) is the issuer's, `aud` names one of its audiences,
    /// `sub` is present, the client is allowed.
    fn opaque_identity(
        &self,
        issuer_index: usize,
        answer: &Introspected,
    ) -> Result<Identity, AuthFailure> {
        let issuer = &self.issuers[issuer_index];
        let claims = &answer.claims;
        if claims
            .get("iss")
            .is_some_and(|iss| iss.as_str() != Some(issuer.issuer()))
        {
            return Err(fail(
                Reason::WrongIssuer,
                "the introspection answer names another issuer",
            ));
        }
        let audiences = checked_audiences(issuer, claims)?;
        let client = checked_client(issuer, claims)?;
        let subject = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => header_value(sub, "sub")?,
            _ => {
                return Err(fail(
                    Reason::Malformed,
                    "the introspection answer has no sub",
                ));
            }
        };
        Ok(Identity {
            subject,
            scopes: scopes_of(claims, issuer.config.scope_claims.as_deref())?,
            client_id: client.map(|c| header_value(c, "client_id")).transpose()?,
            issuer: issuer.issuer_header.clone(),
            issuer_index,
            audiences,
            expires_at: claims
                .get("exp")
                .and_then(Value::as_f64)
                .unwrap_or(answer.until),
            mapped: self.mapped_claims(claims)?,
            kid: None,
            // Unused for an opaque token (never in the verified-token cache, which is
            // where `alg` and `key` matter).
            alg: issuer.config.algorithms[0],
            key: OPAQUE,
            jti: None,
            dpop_jkt: bound_key(claims)?,
        })
    }

    /// Honours the built-in issuer's revocations (its deny-set) on every request.
    pub fn with_revocations(mut self, revocations: Option<Revocations>) -> Verifier {
        self.revocations = revocations;
        self
    }

    /// `trust.leeway`.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs_f64(self.leeway)
    }

    pub fn issuers(&self) -> &[Arc<TrustedIssuer>] {
        &self.issuers
    }

    /// Verifies a bearer token and returns the identity it proves.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthFailure> {
        if token.len() > self.max_token_bytes {
            return Err(fail(
                Reason::Malformed,
                format!("the token is larger than {} bytes", self.max_token_bytes),
            ));
        }
        // Introspectors first: counting the dots walks the whole token (~2,500
        // instructions a request for a typical RS256 token, callgrind).
        if self.introspectors.iter().any(Option::is_some)
            && token.bytes().filter(|&b| b == b'.').count() != 2
        {
            return Box::pin(self.verify_opaque(token)).await;
        }
        let Some(cache) = &self.cache else {
            let identity = Arc::new(Box::pin(self.verify_uncached(token)).await?);
            self.check_revocation(&identity).await?;
            return Ok(identity);
        };
        if let Some(identity) = cache.get(token) {
            if self.still_valid(&identity) {
                self.check_revocation(&identity).await?;
                return Ok(identity);
            }
            cache.invalidate(token);
        }
        // Boxed, like every slow path here (signature, key fetch, introspection, the
        // store): the cached path's future stays small, and hyper moves it per request.
        let identity = Arc::new(Box::pin(self.verify_uncached(token)).await?);
        self.check_revocation(&identity).await?;
        cache.insert(token.into(), identity.clone());
        Ok(identity)
    }

    /// Refuses a token of the built-in issuer that was revoked: the deny-set answers
    /// (one atomic load while it is empty); only an overflowed set sends the question
    /// to the store, and a store that cannot answer refuses (fail closed).
    async fn check_revocation(&self, identity: &Identity) -> Result<(), AuthFailure> {
        let Some(revocations) = &self.revocations else {
            return Ok(());
        };
        if identity.issuer_index != revocations.issuer_index {
            return Ok(());
        }
        let Some(jti) = identity.jti.as_deref() else {
            return Ok(());
        };
        let revoked = match revocations.store.deny_set().check(jti) {
            Presence::Clear => false,
            Presence::Revoked => true,
            Presence::Unknown => Box::pin(revocations.store.is_revoked(jti)).await.map_err(
                |_| {
                    let mut failure = fail(
                        Reason::IssuerUnavailable,
                        "the issuer cannot say whether the token was revoked; try again shortly",
                    );
                    failure.retry_after = Some(2);
                    failure
                },
            )?,
        };
        if revoked {
            return Err(fail(Reason::Revoked, "the token has been revoked"));
        }
        Ok(())
    }

    /// The checks a cached identity must pass again: not expired, key still published.
    fn still_valid(&self, identity: &Identity) -> bool {
        self.clock.unix_secs_f64() < identity.expires_at + self.leeway
            && self.issuers[identity.issuer_index].current().contains(
                identity.kid.as_deref(),
                identity.alg,
                &identity.key,
            )
    }

    async fn verify_uncached(&self, token: &str) -> Result<Identity, AuthFailure> {
        let jws = Jws::parse(token).map_err(|err| fail(Reason::Malformed, err.to_string()))?;
        let header = checked_header(&jws)?;
        let claims: Map<String, Value> = serde_json::from_slice(&jws.payload)
            .map_err(|_| fail(Reason::Malformed, "the token payload is not a JSON object"))?;
        let (issuer_index, issuer) = self.trusted_issuer(&claims, header.alg)?;
        let key = verify_signature(issuer, &header, &jws).await?;
        let expires_at = self.check_times(&claims)?;
        if !header.at_typ && (claims.contains_key("nonce") || claims.contains_key("at_hash")) {
            return Err(fail(
                Reason::WrongType,
                "this is an ID token; send an access token",
            ));
        }
        let audiences = checked_audiences(issuer, &claims)?;
        let client = checked_client(issuer, &claims)?;
        let subject = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => header_value(sub, "sub")?,
            _ => return Err(fail(Reason::Malformed, "the token has no sub")),
        };
        Ok(Identity {
            subject,
            scopes: scopes_of(&claims, issuer.config.scope_claims.as_deref())?,
            client_id: client.map(|c| header_value(c, "client_id")).transpose()?,
            issuer: issuer.issuer_header.clone(),
            issuer_index,
            audiences,
            expires_at,
            mapped: self.mapped_claims(&claims)?,
            kid: header.kid,
            alg: header.alg,
            key,
            jti: match claims.get("jti") {
                Some(Value::String(jti)) => Some(jti.as_str().into()),
                _ => None,
            },
            dpop_jkt: bound_key(&claims)?,
        })
    }

    /// The trusted issuer named by `iss`, which must accept `alg`.
    fn trusted_issuer(
        &self,
        claims: &Map<String, Value>,
        alg: Alg,
    ) -> Result<(usize, &Arc<TrustedIssuer>), AuthFailure> {
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| fail(Reason::WrongIssuer, "the token has no iss"))?;
        let &index = self
            .by_iss
            .get(iss)
            .ok_or_else(|| fail(Reason::WrongIssuer, "the token's issuer is not trusted"))?;
        let issuer = &self.issuers[index];
        if !issuer.config.algorithms.contains(&alg) {
            return Err(fail(
                Reason::DisallowedAlg,
                format!("algorithm {alg} is not accepted for this issuer"),
            ));
        }
        Ok((index, issuer))
    }

    /// `exp` (required), `nbf` and `iat` against the clock with leeway; returns `exp`.
    fn check_times(&self, claims: &Map<String, Value>) -> Result<f64, AuthFailure> {
        let now = self.clock.unix_secs_f64();
        let exp = numeric(claims, "exp")?
            .ok_or_else(|| fail(Reason::Malformed, "the token has no exp"))?;
        if now >= exp + self.leeway {
            return Err(fail(Reason::Expired, "the token has expired"));
        }
        if let Some(nbf) = numeric(claims, "nbf")?
            && nbf > now + self.leeway
        {
            return Err(fail(
                Reason::NotYetValid,
                "the token is not valid yet (nbf)",
            ));
        }
        if let Some(iat) = numeric(claims, "iat")?
            && iat > now + self.leeway
        {
            return Err(fail(
                Reason::NotYetValid,
                "the token was issued in the future (iat)",
            ));
        }
        Ok(exp)
    }

    /// The claims `forward.claims` sends upstream, as header values (JSON if not a
    /// string).
    fn mapped_claims(
        &self,
        claims: &Map<String, Value>,
    ) -> Result<Vec<Option<HeaderValue>>, AuthFailure> {
        self.claim_names
            .iter()
            .map(|name| match claims.get(&**name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => header_value(text, name).map(Some),
                Some(other) => header_value(&other.to_string(), name).map(Some),
            })
            .collect()
    }
}

/// A token-supplied string, shortened for an error description.
fn truncate(text: &str) -> String {
    text.chars().take(32).collect()
}

fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, AuthFailure> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or_else(|| fail(Reason::Malformed, format!("{name} is not a usable number"))),
        Some(_) => Err(fail(
            Reason::Malformed,
            format!("{name} must be a number (NumericDate)"),
        )),
    }
}

fn string_or_list(claims: &Map<String, Value>, name: &str) -> Result<Vec<Box<str>>, AuthFailure> {
    match claims.get(name) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.as_str().into()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(Into::into)
                    .ok_or_else(|| fail(Reason::Malformed, format!("{name} holds a non-string")))
            })
            .collect(),
        Some(_) => Err(fail(
            Reason::Malformed,
            format!("{name} must be a string or a list of strings"),
        )),
    }
}

/// The granted scopes as one space-separated value: from the issuer's `scope_claims` in
/// order (each a string or a list of strings, missing ones skipped, repeats dropped), or
/// by default from `scope`, else `scp`. Only U+0020 separates scopes; a piece that is not
/// a valid scope-token is dropped (see [`scope_tokens`]).
fn scopes_of(
    claims: &Map<String, Value>,
    scope_claims: Option<&[String]>,
) -> Result<HeaderValue, AuthFailure> {
    let default = [if claims.contains_key("scope") {
        "scope"
    } else {
        "scp"
    }];
    let names: Vec<&str> = match scope_claims {
        Some(names) => names.iter().map(String::as_str).collect(),
        None => default.to_vec(),
    };
    let mut joined = String::new();
    for name in &names {
        let lists;
        let words: Box<dyn Iterator<Item = &str>> = match claims.get(*name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => Box::new(scope_tokens(s)),
            Some(Value::Array(_)) => {
                lists = string_or_list(claims, name)?;
                Box::new(lists.iter().flat_map(|s| scope_tokens(s)))
            }
            Some(_) => {
                return Err(fail(
                    Reason::Malformed,
                    format!("{name} must be a string or a list of strings"),
                ));
            }
        };
        for word in words {
            if names.len() > 1 && has_word(&joined, word) {
                continue;
            }
            if !joined.is_empty() {
                joined.push(' ');
            }
            joined.push_str(word);
        }
    }
    header_value(&joined, names.first().copied().unwrap_or("scope"))
}

fn header_value(text: &str, claim: &str) -> Result<HeaderValue, AuthFailure> {
    HeaderValue::from_str(text).map_err(|_| {
        fail(
            Reason::Malformed,
            format!(
                "claim {:?} cannot be forwarded in a header",
                truncate(claim)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_no_token() {
        assert_eq!(
            bearer_token(&headers(&["Bearer abc.def.ghi"])).unwrap(),
            Some("abc.def.ghi")
        );
        assert_eq!(
            bearer_token(&headers(&["bEaReR   abc"])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers(&["Basic dXNlcjpwYXNz"])).unwrap(),
            None
        );
        assert_eq!(bearer_token(&headers(&["Bearerabc"])).unwrap(), None);
        assert_eq!(bearer_token(&headers(&[])).unwrap(), None);
    }

    #[test]
    fn odd_bearer_values_are_refused() {
        assert!(bearer_token(&headers(&["Bearer "])).is_err());
        // Other odd characters reach the JWS parser, which refuses them (see tests/proxy_auth.rs).
        assert!(matches!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            Err(ProxyError::BadRequest(_))
        ));
    }
}
