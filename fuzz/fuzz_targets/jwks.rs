//! JWK Set parsing (`jose::parse_jwks`, which builds aws-lc-rs public keys from RSA, EC
//! and OKP members) and the key look-up the verifier does on the result
//! (`jwks::KeySet::find` / `contains`), then a signature check with every parsed key.
//!
//! Input: the first two bytes are a bit mask over `Alg::ALL` (the algorithms a trusted
//! issuer allows; an empty mask means all nine), the rest is the JWKS document.
//!
//! Invariants besides "no panic": every parsed key supports at least one allowed
//! algorithm and none that is not allowed; `find` returns only in-range candidates that
//! support the algorithm (and carry the kid asked for); `contains` (the verified-token
//! cache's check, by key thumbprint) agrees with `find`; thumbprints are stable; a
//! garbage signature never verifies.

#![no_main]

use libfuzzer_sys::fuzz_target;
use scopegate::jose::{Alg, parse_jwks};
use scopegate::jwks::{KeyMatch, KeySet};

fuzz_target!(|data: &[u8]| {
    let (mask, body) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => return,
    };
    let mut allowed: Vec<Alg> = Alg::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, alg)| *alg)
        .collect();
    if allowed.is_empty() {
        allowed = Alg::ALL.to_vec();
    }
    let Ok((keys, _skipped)) = parse_jwks(body, &allowed) else {
        return;
    };
    let (again, _) = parse_jwks(body, &allowed).expect("a JWKS that parsed parses again");
    let thumbprints = |keys: &[scopegate::jose::VerifyKey]| -> Vec<[u8; 32]> {
        keys.iter().map(|k| k.thumbprint).collect()
    };
    assert_eq!(thumbprints(&keys), thumbprints(&again), "thumbprints are not stable");
    for key in &keys {
        assert!(allowed.iter().any(|&alg| key.supports(alg)));
        for alg in Alg::ALL {
            if key.supports(alg) {
                assert!(allowed.contains(&alg), "key supports {alg}, not allowed");
                // 64 bytes: the size of an ES256 or EdDSA signature; garbage for all.
                assert!(!key.verify(alg, b"header.payload", &[0x5a; 64]));
            }
        }
    }
    let kids: Vec<Option<String>> = keys
        .iter()
        .map(|k| k.kid.clone())
        .chain([None, Some(String::new()), Some("missing".into())])
        .collect();
    let set = KeySet { keys, generation: 1 };
    for kid in &kids {
        let kid = kid.as_deref();
        for alg in Alg::ALL {
            let found = set.find(kid, alg);
            if let KeyMatch::Candidates(candidates) = &found {
                assert!(!candidates.is_empty());
                for &index in candidates {
                    let key = &set.keys[index];
                    assert!(key.supports(alg));
                    if kid.is_some() {
                        assert_eq!(key.kid.as_deref(), kid);
                    }
                }
            }
            // The cache's check (`contains`, by key identity) holds for exactly the keys
            // the uncached path (`find`) would try.
            for (index, key) in set.keys.iter().enumerate() {
                let candidate =
                    matches!(&found, KeyMatch::Candidates(c) if c.contains(&index));
                let same_key_elsewhere = set.keys.iter().enumerate().any(|(other, k)| {
                    other != index
                        && k.thumbprint == key.thumbprint
                        && matches!(&found, KeyMatch::Candidates(c) if c.contains(&other))
                });
                assert_eq!(
                    set.contains(kid, alg, &key.thumbprint),
                    candidate || same_key_elsewhere,
                    "contains and find disagree for kid {kid:?}, {alg}, key {index}"
                );
            }
        }
    }
});
