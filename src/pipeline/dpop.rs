//! DPoP (RFC 9449) at the proxy: a token bound to a key (`cnf.jkt`) opens a route only
//! with `Authorization: DPoP <token>` and a `DPoP` proof signed by that very key, for
//! this request — whoever issued the token (the built-in issuer or an external one).
//!
//! A proof is checked (§4.3): exactly one `DPoP` header holding a compact JWS;
//! `typ: dpop+jwt`; an asymmetric `alg`; a public `jwk` in the header (no private
//! members) that verifies the signature and whose RFC 7638 thumbprint is the token's
//! `cnf.jkt`; claims `htm` = the request method, `htu` = the request URL (host, port
//! and path; query and fragment ignored; the scheme is not compared, as TLS is often
//! terminated in front of the gateway), `iat` within [`WINDOW`] of the gateway's clock,
//! `ath` = base64url(SHA-256(access token)), and a `jti` not seen before within the
//! window (a bounded replay cache). Server nonces (`DPoP-Nonce`) are not demanded.

use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::claims::{AuthFailure, Reason};
use crate::clock::Clock;
use crate::jose::{Alg, Jwk, Jws, VerifyKey, b64url, thumbprint};

pub static DPOP: HeaderName = HeaderName::from_static("dpop");

/// How far a proof's `iat` may be from the gateway's clock, either way.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Proof `jti`s remembered at most (each for twice [`WINDOW`]).
const REPLAY_ENTRIES: u64 = 1_000_000;

/// The members of a JWK that only a private key has.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

pub struct ProofChecker {
    clock: Clock,
    seen: moka::sync::Cache<Box<str>, (), foldhash::fast::RandomState>,
}

impl std::fmt::Debug for ProofChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProofChecker")
    }
}

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
    /// `trust.leeway`, added to [`WINDOW`] (counted up to [`MAX_LEEWAY`]).
    pub leeway: Duration,
}

/// The most of `trust.leeway` a proof's `iat` is granted: the replay cache remembers a
/// `jti` for as long as a proof can be accepted.
const MAX_LEEWAY: Duration = Duration::from_secs(60);

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
}

fn invalid(description: impl Into<String>) -> AuthFailure {
    AuthFailure::new(Reason::DpopInvalid, description)
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

    /// Checks the request's `DPoP` proof against the request and the bound token.
    pub fn check(&self, request: Request<'_>) -> Result<(), AuthFailure> {
        let mut proofs = request.headers.get_all(&DPOP).iter();
        let (Some(proof), None) = (proofs.next(), proofs.next()) else {
            return Err(invalid(
                "a DPoP-bound token needs exactly one DPoP proof header",
            ));
        };
        let proof = proof
            .to_str()
            .map_err(|_| invalid("the DPoP proof is not a compact JWS"))?;
        let jws = Jws::parse(proof).map_err(|_| invalid("the DPoP proof is not a compact JWS"))?;
        let header: ProofHeader = serde_json::from_slice(jws.header_json())
            .map_err(|_| invalid("the DPoP proof header is not a JSON object with alg"))?;
        if !header
            .typ
            .as_deref()
            .is_some_and(|typ| typ.eq_ignore_ascii_case("dpop+jwt"))
        {
            return Err(invalid("the DPoP proof's typ must be dpop+jwt"));
        }
        let alg = Alg::from_name(&header.alg).ok_or_else(|| {
            invalid("the DPoP proof's alg is not an accepted asymmetric algorithm")
        })?;
        let key = proof_key(header.jwk, alg)?;
        if b64url(&key.1) != request.jkt {
            return Err(invalid(
                "the DPoP proof is signed by another key than the token is bound to",
            ));
        }
        if !key
            .0
            .verify(alg, jws.signing_input.as_bytes(), &jws.signature)
        {
            return Err(invalid("the DPoP proof's signature is not valid"));
        }
        let claims: ProofClaims = serde_json::from_slice(&jws.payload)
            .map_err(|_| invalid("the DPoP proof's claims are not a JSON object"))?;
        self.check_claims(&claims, &request)?;
        let jti = claims.jti.unwrap_or_default();
        let key = format!("{}.{jti}", request.jkt);
        if self.seen.contains_key(key.as_str()) {
            return Err(invalid("the DPoP proof was used before (jti)"));
        }
        self.seen.insert(key.into(), ());
        Ok(())
    }

    fn check_claims(&self, claims: &ProofClaims, request: &Request<'_>) -> Result<(), AuthFailure> {
        if claims
            .jti
            .as_deref()
            .is_none_or(|jti| jti.is_empty() || jti.len() > 256)
        {
            return Err(invalid("the DPoP proof has no usable jti"));
        }
        if claims.htm.as_deref() != Some(request.method.as_str()) {
            return Err(invalid("the DPoP proof is for another method (htm)"));
        }
        let htu = claims
            .htu
            .as_deref()
            .ok_or_else(|| invalid("the DPoP proof has no htu"))?;
        if !same_target(htu, request.authority, request.path) {
            return Err(invalid("the DPoP proof is for another URL (htu)"));
        }
        let iat = claims
            .iat
            .filter(|iat| iat.is_finite())
            .ok_or_else(|| invalid("the DPoP proof has no iat"))?;
        let now = self.clock.unix_secs_f64();
        let allowed = WINDOW + request.leeway.min(MAX_LEEWAY);
        if (iat - now).abs() > allowed.as_secs_f64() {
            return Err(invalid(
                "the DPoP proof is too old or from the future (iat)",
            ));
        }
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, request.token.as_bytes());
        if claims.ath.as_deref() != Some(b64url(digest.as_ref()).as_str()) {
            return Err(invalid("the DPoP proof is for another access token (ath)"));
        }
        Ok(())
    }
}

/// The proof's public key and its thumbprint: a public JWK that fits `alg`.
fn proof_key(
    jwk: Option<Map<String, Value>>,
    alg: Alg,
) -> Result<(VerifyKey, [u8; 32]), AuthFailure> {
    let jwk = jwk.ok_or_else(|| invalid("the DPoP proof header has no jwk"))?;
    if PRIVATE_MEMBERS
        .iter()
        .any(|member| jwk.contains_key(*member))
    {
        return Err(invalid("the DPoP proof's jwk holds a private key"));
    }
    let jwk: Jwk = serde_json::from_value(Value::Object(jwk))
        .map_err(|_| invalid("the DPoP proof's jwk is not a JWK"))?;
    let print = thumbprint(&jwk);
    match VerifyKey::from_jwk(&jwk, &[alg]) {
        Ok(Some(key)) => Ok((key, print)),
        _ => Err(invalid("the DPoP proof's jwk does not fit its alg")),
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
