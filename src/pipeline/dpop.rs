//! DPoP (RFC 9449) at the proxy: a token bound to a key (`cnf.jkt`) opens a route only
//! with `Authorization: DPoP <token>` and a `DPoP` proof signed by that very key, for
//! this request — whoever issued the token (the built-in issuer or an external one).
//!
//! The proof is checked by [`crate::jose::dpop`] (the one implementation, shared with the
//! issuer's token endpoint): here with the token (`ath`) and its `cnf.jkt`, the request's
//! method and URL, and `trust.leeway`.

use std::time::Duration;

use http::{HeaderMap, Method};

use crate::claims::{AuthFailure, Reason};
use crate::jose::dpop::Expected;
pub use crate::jose::dpop::{DPOP, ProofChecker, WINDOW};

/// What the proof must match: this request and this token.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub method: &'a Method,
    /// `host[:port]` as the client addressed the gateway.
    pub authority: &'a str,
    /// The request path as sent (no query).
    pub path: &'a str,
    pub token: &'a str,
    /// The token's `cnf.jkt`.
    pub jkt: &'a str,
    /// `trust.leeway`, added to [`WINDOW`] (counted up to
    /// [`crate::jose::dpop::MAX_LEEWAY`]).
    pub leeway: Duration,
}

/// Checks the request's `DPoP` proof against the request and the bound token.
pub fn check(checker: &ProofChecker, request: Request<'_>) -> Result<(), AuthFailure> {
    let expected = Expected {
        method: request.method,
        authority: request.authority,
        path: request.path,
        token: Some(request.token),
        jkt: Some(request.jkt),
        leeway: request.leeway,
        nonce: None,
    };
    checker
        .check(request.headers, expected)
        .map(drop)
        .map_err(|err| AuthFailure::new(Reason::DpopInvalid, err.0))
}
