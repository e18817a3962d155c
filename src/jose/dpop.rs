//! DPoP proofs (RFC 9449 §4.3), checked the one way both sides need: the proxy (a proof
//! for a request carrying a bound token) and the issuer's token endpoint (a proof that
//! binds the tokens it issues).
//!
//! A proof is: exactly one `DPoP` header holding a compact JWS; `typ: dpop+jwt`; an
//! asymmetric `alg`; a public `jwk` in the header (no private members) that verifies the
//! signature; claims `htm` = the request method, `htu` = the request URL (host, port and
//! path; query and fragment ignored; the scheme is not compared, as TLS is often
//! terminated in front of the gateway), `iat` within [`WINDOW`] (plus the leeway) of the
//! clock, and a `jti` not seen before within that time (a bounded replay cache, per
//! process). Where an access token goes with it, `ath` = base64url(SHA-256(token)); where
//! a key is expected (a bound token), the proof's key thumbprint (RFC 7638) is that one.
//! Where the checker is given a nonce test (the issuer with `issuer.dpop.require_nonce`),
//! the proof's `nonce` claim must pass it (RFC 9449 §8), else [`NONCE_REQUIRED`].

use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Alg, Jwk, Jws, VerifyKey, b64url, thumbprint};
use crate::clock::Clock;

pub static DPOP: HeaderName = HeaderName::from_static("dpop");
pub static DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// The algorithms a proof may be signed with (discovery's
/// `dpop_signing_alg_values_supported`): asymmetric only.
pub const PROOF_ALGS: [Alg; 9] = Alg::ALL;

/// How far a proof's `iat` may be from the clock, either way.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The most of a caller's leeway a proof's `iat` is granted: the replay cache remembers
/// a `jti` for as long as a proof can be accepted.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);

/// Proof `jti`s remembered at most (each for twice the longest acceptance window).
const REPLAY_ENTRIES: u64 = 1_000_000;

/// The members of a JWK that only a private key has.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// The refusal of a proof without a good server nonce: answered `use_dpop_nonce` with a
/// fresh `DPoP-Nonce` (RFC 9449 §8).
pub const NONCE_REQUIRED: ProofError =
    ProofError("the DPoP proof needs the server's current nonce (DPoP-Nonce)");

/// Why a proof was refused; the text is safe to send back (it never quotes the proof).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProofError(pub &'static str);

impl std::fmt::Display for ProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// What a proof must match.
#[derive(Clone, Copy)]
pub struct Expected<'a> {
    pub method: &'a Method,
    /// `host[:port]` as the client addressed the gateway.
    pub authority: &'a str,
    /// The request path as sent (no query).
    pub path: &'a str,
    /// The access token sent with the proof (`ath`), if any.
    pub token: Option<&'a str>,
    /// The key the proof must be signed with (base64url RFC 7638 thumbprint), if any.
    pub jkt: Option<&'a str>,
    /// Added to [`WINDOW`] (counted up to [`MAX_LEEWAY`]).
    pub leeway: Duration,
    /// Whether a `nonce` claim is one the server gave out; `None`: no nonce needed.
    pub nonce: Option<&'a dyn Fn(&str) -> bool>,
}

/// Checks proofs, remembering their `jti`s.
pub struct ProofChecker {
    clock: Clock,
    seen: moka::sync::Cache<Box<str>, (), foldhash::fast::RandomState>,
}

impl std::fmt::Debug for ProofChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProofChecker")
    }
}

#[derive(Deserialize)]
struct ProofHeader {
    typ: Option<String>,
    alg: String,
    jwk: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<f64>,
    ath: Option<String>,
    nonce: Option<String>,
}

impl ProofChecker {
    pub fn new(clock: Clock) -> ProofChecker {
        ProofChecker {
            clock,
            seen: moka::sync::Cache::builder()
                .max_capacity(REPLAY_ENTRIES)
                .time_to_live((WINDOW + MAX_LEEWAY) * 2)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// True if the request carries any `DPoP` header.
    pub fn present(headers: &HeaderMap) -> bool {
        headers.contains_key(&DPOP)
    }

    /// Checks the request's `DPoP` proof; returns its key's thumbprint (base64url), which
    /// a token bound to it carries as `cnf.jkt`.
    pub fn check(&self, headers: &HeaderMap, expected: Expected<'_>) -> Result<String, ProofError> {
        let mut proofs = headers.get_all(&DPOP).iter();
        let (Some(proof), None) = (proofs.next(), proofs.next()) else {
            return Err(ProofError("exactly one DPoP proof header is needed"));
        };
        let not_jws = ProofError("the DPoP proof is not a compact JWS");
        let proof = proof.to_str().map_err(|_| not_jws)?;
        let jws = Jws::parse(proof).map_err(|_| not_jws)?;
        let header: ProofHeader = serde_json::from_slice(jws.header_json())
            .map_err(|_| ProofError("the DPoP proof header is not a JSON object with alg"))?;
        if !header
            .typ
            .as_deref()
            .is_some_and(|typ| typ.eq_ignore_ascii_case("dpop+jwt"))
        {
            return Err(ProofError("the DPoP proof's typ must be dpop+jwt"));
        }
        let alg = Alg::from_name(&header.alg).ok_or(ProofError(
            "the DPoP proof's alg is not an accepted asymmetric algorithm",
        ))?;
        let (key, print) = proof_key(header.jwk, alg)?;
        let jkt = b64url(&print);
        if expected.jkt.is_some_and(|bound| bound != jkt) {
            return Err(ProofError(
                "the DPoP proof is signed by another key than the token is bound to",
            ));
        }
        if !key.verify(alg, jws.signing_input.as_bytes(), &jws.signature) {
            return Err(ProofError("the DPoP proof's signature is not valid"));
        }
        let claims: ProofClaims = serde_json::from_slice(&jws.payload)
            .map_err(|_| ProofError("the DPoP proof's claims are not a JSON object"))?;
        self.check_claims(&claims, &expected)?;
        let jti = claims.jti.unwrap_or_default();
        let seen = format!("{jkt}.{jti}");
        if self.seen.contains_key(seen.as_str()) {
            return Err(ProofError("the DPoP proof was used before (jti)"));
        }
        self.seen.insert(seen.into(), ());
        Ok(jkt)
    }

    fn check_claims(
        &self,
        claims: &ProofClaims,
        expected: &Expected<'_>,
    ) -> Result<(), ProofError> {
        if claims
            .jti
            .as_deref()
            .is_none_or(|jti| jti.is_empty() || jti.len() > 256)
        {
            return Err(ProofError("the DPoP proof has no usable jti"));
        }
        if claims.htm.as_deref() != Some(expected.method.as_str()) {
            return Err(ProofError("the DPoP proof is for another method (htm)"));
        }
        let htu = claims
            .htu
            .as_deref()
            .ok_or(ProofError("the DPoP proof has no htu"))?;
        if !same_target(htu, expected.authority, expected.path) {
            return Err(ProofError("the DPoP proof is for another URL (htu)"));
        }
        let iat = claims
            .iat
            .filter(|iat| iat.is_finite())
            .ok_or(ProofError("the DPoP proof has no iat"))?;
        let now = self.clock.unix_secs_f64();
        let allowed = WINDOW + expected.leeway.min(MAX_LEEWAY);
        if (iat - now).abs() > allowed.as_secs_f64() {
            return Err(ProofError(
                "the DPoP proof is too old or from the future (iat)",
            ));
        }
        if let Some(good) = expected.nonce
            && !claims.nonce.as_deref().is_some_and(good)
        {
            return Err(NONCE_REQUIRED);
        }
        // Without an access token (the token endpoint), `ath` means nothing.
        if let Some(token) = expected.token {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
            if claims.ath.as_deref() != Some(b64url(digest.as_ref()).as_str()) {
                return Err(ProofError(
                    "the DPoP proof is for another access token (ath)",
                ));
            }
        }
        Ok(())
    }
}

/// The proof's public key and its thumbprint: a public JWK that fits `alg`.
fn proof_key(
    jwk: Option<Map<String, Value>>,
    alg: Alg,
) -> Result<(VerifyKey, [u8; 32]), ProofError> {
    let jwk = jwk.ok_or(ProofError("the DPoP proof header has no jwk"))?;
    if PRIVATE_MEMBERS
        .iter()
        .any(|member| jwk.contains_key(*member))
    {
        return Err(ProofError("the DPoP proof's jwk holds a private key"));
    }
    let jwk: Jwk = serde_json::from_value(Value::Object(jwk))
        .map_err(|_| ProofError("the DPoP proof's jwk is not a JWK"))?;
    let print = thumbprint(&jwk);
    match VerifyKey::from_jwk(&jwk, &[alg]) {
        Ok(Some(key)) => Ok((key, print)),
        _ => Err(ProofError("the DPoP proof's jwk does not fit its alg")),
    }
}

/// `htu` names `authority` and `path` (RFC 9449 §4.3: query and fragment ignored; host
/// compared case-insensitively, default ports implied).
fn same_target(htu: &str, authority: &str, path: &str) -> bool {
    let Ok(uri) = htu.parse::<http::Uri>() else {
        return false;
    };
    let (Some(scheme), Some(htu_authority)) = (uri.scheme_str(), uri.authority()) else {
        return false;
    };
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return false,
    };
    // The request's port defaults by the scheme the client used (which `htu` names):
    // behind TLS termination the gateway sees http where the client used https.
    let (host, port) = split_authority(authority);
    let port = port.unwrap_or(default_port);
    let htu_port = htu_authority.port_u16().unwrap_or(default_port);
    htu_authority.host().eq_ignore_ascii_case(host) && htu_port == port && uri.path() == path
}

/// `host` (IPv6 in brackets) and the port, if any.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    let (host, port) = match authority.strip_prefix('[') {
        Some(_) => match authority.find(']') {
            Some(end) => (&authority[..=end], authority[end + 1..].strip_prefix(':')),
            None => (authority, None),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    (host, port.and_then(|p| p.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_matches_host_port_and_path_only() {
        assert!(same_target(
            "https://api.example.com/x",
            "api.example.com",
            "/x"
        ));
        assert!(same_target(
            "https://API.example.com/x?q=1#f",
            "api.example.com",
            "/x"
        ));
        assert!(same_target(
            "http://127.0.0.1:8080/x",
            "127.0.0.1:8080",
            "/x"
        ));
        assert!(same_target("https://h:8443/x", "h:8443", "/x"));
        assert!(!same_target("https://h:8443/x", "h:9443", "/x"));
        assert!(!same_target(
            "https://other.example.com/x",
            "api.example.com",
            "/x"
        ));
        assert!(!same_target(
            "https://api.example.com/y",
            "api.example.com",
            "/x"
        ));
        assert!(!same_target(
            "ftp://api.example.com/x",
            "api.example.com",
            "/x"
        ));
        assert!(!same_target("/x", "api.example.com", "/x"));
        assert!(same_target("http://[::1]:8080/x", "[::1]:8080", "/x"));
    }
}
