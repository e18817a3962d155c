//! Types shared by the proxy and the issuer: the verified identity a request carries
//! upstream, scope sets, and the fixed set of reasons a token is refused.

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

/// Why a token was refused. The label values are the `reason` of
/// `scopegate_auth_failures_total` (a fixed, bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingToken,
    Malformed,
    BadSignature,
    UnknownKey,
    DisallowedAlg,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    WrongType,
    InsufficientScope,
    /// `azp`/`client_id` not in the issuer's `clients` allowlist.
    UnknownClient,
    /// The token's issuer is trusted but its keys were never fetched yet (answered 503,
    /// not 401: the token may well be good).
    IssuerUnavailable,
    /// The token lacks the claim the route's rate limit is keyed on.
    MissingClaim,
    /// The built-in issuer revoked the token (its `jti` is in the deny-set).
    Revoked,
    /// A DPoP-bound token without a valid proof, or a DPoP route without a bound token.
    DpopInvalid,
}

impl Reason {
    /// The reasons a token is refused for itself (every reason but
    /// [`Reason::IssuerUnavailable`], [`Reason::MissingClaim`] and [`Reason::Revoked`],
    /// which depend on the gateway's state, a route's rate limit and the issuer).
    pub const ALL: [Reason; 12] = [
        Reason::MissingToken,
        Reason::Malformed,
        Reason::BadSignature,
        Reason::UnknownKey,
        Reason::DisallowedAlg,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::WrongType,
        Reason::InsufficientScope,
        Reason::UnknownClient,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownKey => "unknown_key",
            Reason::DisallowedAlg => "disallowed_alg",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::WrongType => "wrong_type",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::UnknownClient => "unknown_client",
            Reason::IssuerUnavailable => "issuer_unavailable",
            Reason::MissingClaim => "missing_claim",
            Reason::Revoked => "revoked",
            Reason::DpopInvalid => "dpop_invalid",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A refused token: the reason (for metrics and logs) and a description for the client
/// that says what failed without echoing the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    pub reason: Reason,
    pub description: String,
    /// Seconds to wait before trying again, for [`Reason::IssuerUnavailable`].
    pub retry_after: Option<u64>,
}

impl AuthFailure {
    pub fn new(reason: Reason, description: impl Into<String>) -> Self {
        AuthFailure {
            reason,
            description: description.into(),
            retry_after: None,
        }
    }
}

/// The identity a verified access token proves, with its forwardable header values
/// prepared once at verification (and shared by every request that reuses the token).
#[derive(Debug)]
pub struct Identity {
    pub subject: HeaderValue,
    /// Granted scopes, space separated, in token order.
    pub scopes: HeaderValue,
    pub client_id: Option<HeaderValue>,
    pub issuer: HeaderValue,
    /// Index of the trusted issuer that vouched for this token.
    pub issuer_index: usize,
    pub audiences: Vec<Box<str>>,
    /// `exp` in seconds since the epoch.
    pub expires_at: f64,
    /// Values for `forward.claims`, by position in that map; `None` where the token lacks
    /// the claim.
    pub mapped: Vec<Option<HeaderValue>>,
    /// The token's `kid` and `alg`, and the thumbprint of the key that verified it (for
    /// the verified-token cache: a hit needs that very key still published).
    pub kid: Option<Box<str>>,
    pub alg: crate::jose::Alg,
    pub key: [u8; 32],
    /// The token's `jti`, for the deny-set of revoked tokens.
    pub jti: Option<Box<str>>,
    /// `cnf.jkt`: the thumbprint of the key the token is bound to (DPoP, RFC 9449).
    pub dpop_jkt: Option<Box<str>>,
}

impl Identity {
    pub fn scope_str(&self) -> &str {
        self.scopes.to_str().unwrap_or("")
    }

    /// True if the token grants `scope` (whole-word match).
    pub fn has_scope(&self, scope: &str) -> bool {
        has_word(self.scope_str(), scope)
    }

    pub fn has_audience(&self, audience: &str) -> bool {
        self.audiences.iter().any(|a| &**a == audience)
    }
}

/// Whole-word membership in a space-separated list. Only U+0020 separates words
/// (RFC 6749 §3.3): a tab, CR, LF or form feed is part of a word.
///
/// ```
/// assert!(scopegate::claims::has_word("read:a write:a", "write:a"));
/// assert!(!scopegate::claims::has_word("read:all", "read"));
/// assert!(!scopegate::claims::has_word("read:a\twrite:a", "write:a"));
/// ```
pub fn has_word(list: &str, word: &str) -> bool {
    list.split(' ').any(|w| !w.is_empty() && w == word)
}

/// The scope tokens of a `scope` value (RFC 6749 §3.3): split on U+0020 only, empty
/// pieces skipped, and a piece that is not a valid scope-token (`%x21 / %x23-5B /
/// %x5D-7E`: no controls, no `"` or `\`, no non-ASCII) dropped, so a value such as
/// `"read:a\twrite:a"` grants nothing rather than two scopes.
///
/// ```
/// let scopes: Vec<&str> = scopegate::claims::scope_tokens("a  b\tc d").collect();
/// assert_eq!(scopes, ["a", "d"]);
/// ```
pub fn scope_tokens(list: &str) -> impl Iterator<Item = &str> {
    list.split(' ').filter(|word| is_scope_token(word))
}

/// `1*( %x21 / %x23-5B / %x5D-7E )` (RFC 6749 Appendix A.4).
pub fn is_scope_token(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

pub type SharedIdentity = Arc<Identity>;
