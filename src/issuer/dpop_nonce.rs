//! Server nonces for DPoP proofs at the token endpoint (RFC 9449 §8), with
//! `issuer.dpop.require_nonce`: a proof must carry one the issuer gave out, so a proof
//! cannot be made ahead of time by whoever holds a client's key.
//!
//! Stateless, and the same on every replica: a nonce is `<window>.<mac>`, the window the
//! clock in two-minute steps, the MAC an HMAC-SHA256 of it (cut to 128 bits) under a key
//! derived from the issuer's active signing key, which replicas share through the store.
//! A nonce is good in its window and the next (two to four minutes); after a key
//! rotation, clients are simply asked again (`use_dpop_nonce`).

use aws_lc_rs::{digest, hmac};
use subtle::ConstantTimeEq;

use super::Issuer;
use crate::jose::b64url;

/// The length of a nonce window, in seconds.
const STEP: i64 = 120;

/// MAC bytes kept.
const MAC_BYTES: usize = 16;

/// The MAC key: derived from the active signing key's private half.
fn key(issuer: &Issuer) -> Option<hmac::Key> {
    let der = issuer.core.keys.active().key.to_pkcs8().ok()?;
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(b"scopegate dpop nonce\0");
    context.update(&der);
    Some(hmac::Key::new(hmac::HMAC_SHA256, context.finish().as_ref()))
}

fn mac(key: &hmac::Key, window: i64) -> [u8; MAC_BYTES] {
    let tag = hmac::sign(key, window.to_string().as_bytes());
    let mut out = [0u8; MAC_BYTES];
    out.copy_from_slice(&tag.as_ref()[..MAC_BYTES]);
    out
}

/// The nonce to hand out now.
pub fn current(issuer: &Issuer) -> Option<String> {
    let key = key(issuer)?;
    let window = issuer.now().div_euclid(STEP);
    Some(format!("{window}.{}", b64url(&mac(&key, window))))
}

/// Whether `nonce` was handed out by this issuer (any replica) in this window or the
/// last.
pub fn is_good(issuer: &Issuer, nonce: &str) -> bool {
    let Some((window, tag)) = nonce.split_once('.') else {
        return false;
    };
    let Ok(window) = window.parse::<i64>() else {
        return false;
    };
    let now = issuer.now().div_euclid(STEP);
    if window != now && window != now - 1 {
        return false;
    }
    let Some(key) = key(issuer) else {
        return false;
    };
    let expected = b64url(&mac(&key, window));
    bool::from(expected.as_bytes().ct_eq(tag.as_bytes()))
}
