//! The JWS compact parser (`jose::Jws::parse`, `Jws::header`), the bearer-token
//! extraction (`pipeline::authn::bearer_token`) and the proxy's whole verification path
//! (`pipeline::authn::Verifier::verify`) over a fixed in-memory key set, as in
//! benches/proxy.rs: no network.
//!
//! Input: the first byte picks a mode, the rest is its data.
//! - `0`: the rest is a token as sent (UTF-8), parsed and verified.
//! - `1`: the rest is an `Authorization` header value: bearer extraction, then verify.
//! - `2..`: the rest is `header JSON` NUL `claims JSON`, signed here with the fixed
//!   EdDSA (even) or ES256 (odd) key, so the fuzzer gets past the signature and into the
//!   header, claims, audience, client, subject and scope checks.
//!
//! Invariants checked besides "no panic": the cached verifier (a second call is a cache
//! hit) and the uncached one agree on every token; a verified identity has a subject,
//! an issuer index in range and the algorithm the header named.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use scopegate::clock::Clock;
use scopegate::config::{Dur, TrustedIssuerConfig};
use scopegate::jose::{Alg, Jws, SigningKey, sign_compact};
use scopegate::jwks::{KeySource, LocalJwks, TrustedIssuer};
use scopegate::metrics::Metrics;
use scopegate::pipeline::authn::{Verifier, bearer_token};
use scopegate::tls::tls_client_config;
use scopegate::upstream::Fetcher;

const ISSUER: &str = "https://issuer.example.com/";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    ed: SigningKey,
    ec: SigningKey,
    cached: Verifier,
    uncached: Verifier,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ed = SigningKey::generate(Alg::EdDSA).expect("ed25519 key");
        let ec = SigningKey::generate(Alg::ES256).expect("p-256 key");
        // Two keys with kids, and the EC key again without a kid.
        let mut kidless = ec.public_jwk(Alg::ES256, "x");
        kidless.as_object_mut().expect("jwk").remove("kid");
        let jwks = serde_json::json!({ "keys": [
            ed.public_jwk(Alg::EdDSA, "ed"),
            ec.public_jwk(Alg::ES256, "ec"),
            kidless,
        ]})
        .to_string()
        .into_bytes();
        let source: LocalJwks = Arc::new(move || {
            let jwks = jwks.clone();
            Box::pin(async move { Ok(jwks) })
        });
        let config = TrustedIssuerConfig {
            issuer: ISSUER.into(),
            jwks_uri: None,
            audiences: vec!["https://api.example.com".into()],
            algorithms: vec![Alg::EdDSA, Alg::ES256, Alg::RS256],
            jwks_ttl: Dur::secs(600),
            jwks_min_refresh: Dur::secs(3600),
            clients: Some(vec!["web".into(), "cli".into()]),
            scope_claims: None,
            introspection: None,
            token_exchange: None,
        };
        let fetcher = Fetcher::new(tls_client_config(None).expect("tls"));
        let make = |cache_size| {
            let issuer = runtime.block_on(async {
                let issuer = TrustedIssuer::new(
                    config.clone(),
                    KeySource::Local(source.clone()),
                    fetcher.clone(),
                    Metrics::new(),
                    Clock::system(),
                )
                .expect("issuer");
                issuer.keys_for(Some("ed"), Alg::EdDSA).await;
                issuer
            });
            Verifier::new(
                vec![issuer],
                Duration::from_secs(30),
                8192,
                vec!["roles".into(), "email".into()],
                cache_size,
                Clock::system(),
            )
        };
        Fixture {
            cached: make(256),
            uncached: make(0),
            runtime,
            ed,
            ec,
        }
    })
}

/// Parses like the verifier does, then verifies with both verifiers and compares.
fn check(f: &Fixture, token: &str) {
    if let Ok(jws) = Jws::parse(token) {
        assert!(token.starts_with(jws.signing_input));
        let _ = jws.header();
    }
    let first = f.runtime.block_on(f.cached.verify(token));
    let again = f.runtime.block_on(f.cached.verify(token));
    let uncached = f.runtime.block_on(f.uncached.verify(token));
    assert_eq!(first.is_ok(), again.is_ok(), "cache hit disagrees: {token}");
    assert_eq!(first.is_ok(), uncached.is_ok(), "cache disagrees with uncached path: {token}");
    if let Ok(identity) = first {
        assert!(!identity.subject.is_empty());
        assert!(identity.issuer_index < f.cached.issuers().len());
        let jws = Jws::parse(token).expect("a verified token parses");
        let header = jws.header().expect("a verified token has a header");
        assert_eq!(Alg::from_name(&header.alg), Some(identity.alg));
        assert!(identity.scopes.to_str().is_ok());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    match mode {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                check(f, token);
            }
        }
        1 => {
            let Ok(value) = HeaderValue::from_bytes(rest) else {
                return;
            };
            let mut headers = HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, value);
            if let Ok(Some(token)) = bearer_token(&headers) {
                check(f, token);
            }
        }
        _ => {
            let (header, claims) = match rest.iter().position(|&b| b == 0) {
                Some(nul) => (&rest[..nul], &rest[nul + 1..]),
                None => (rest, &[][..]),
            };
            let (key, alg) = if mode % 2 == 0 {
                (&f.ed, Alg::EdDSA)
            } else {
                (&f.ec, Alg::ES256)
            };
            let token = sign_compact(key, alg, header, claims).expect("signing never fails");
            check(f, &token);
        }
    }
});
