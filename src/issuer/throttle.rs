//! Login throttling for the password grant and the sign-in page (and, with a key of its
//! own, for device user codes typed at `/activate`): failures are counted per username (as typed,
//! lower-cased, whether or not such a user exists) and per client IP, in the store so
//! replicas share them. `issuer.throttle.max_failures` failures inside
//! `issuer.throttle.window` lock that key until the window closes: answered
//! `invalid_grant` with status 429 and `Retry-After`, password right or wrong.
//!
//! Keys are counted the same for unknown users as for real ones, and an unknown user's
//! password is checked against a dummy hash, so neither the answer nor its timing says
//! whether a user exists.

use std::net::IpAddr;

use super::Issuer;
use crate::config::issuer::ThrottleConfig;
use crate::error::OAuthError;

/// The throttle keys of one login attempt.
#[derive(Debug, Clone)]
pub struct Keys {
    pub user: String,
    pub ip: String,
}

/// An IPv4 peer on a dual-stack socket appears as ::ffff:a.b.c.d: count it as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl Keys {
    pub fn new(login: &str, ip: IpAddr) -> Keys {
        Keys {
            user: format!("user:{}", login.to_lowercase()),
            ip: format!("ip:{}", canonical(ip)),
        }
    }
}

/// The key that counts unknown device user codes typed from one address (guessing).
pub fn user_code_key(ip: IpAddr) -> String {
    format!("user_code:{}", canonical(ip))
}

/// Refuses the attempt if either key is locked.
pub async fn check(issuer: &Issuer, keys: &Keys) -> Result<(), OAuthError> {
    for key in [&keys.user, &keys.ip] {
        check_key(issuer, key).await?;
    }
    Ok(())
}

/// Refuses the attempt if `key` is locked: `invalid_grant`, 429, with `Retry-After`.
pub async fn check_key(issuer: &Issuer, key: &str) -> Result<(), OAuthError> {
    let config = &issuer.model.throttle;
    let now = issuer.now();
    let (failures, closes) = issuer
        .core
        .store
        .failures(key, now, window_secs(config))
        .await?;
    if failures >= i64::from(config.max_failures) {
        return Err(OAuthError::locked_out((closes - now).max(1) as u64));
    }
    Ok(())
}

/// Counts a failed attempt against both keys.
pub async fn failed(issuer: &Issuer, keys: &Keys) -> Result<(), OAuthError> {
    for key in [&keys.user, &keys.ip] {
        failed_key(issuer, key).await?;
    }
    Ok(())
}

/// Counts a failed attempt against `key`.
pub async fn failed_key(issuer: &Issuer, key: &str) -> Result<(), OAuthError> {
    let window = window_secs(&issuer.model.throttle);
    Ok(issuer
        .core
        .store
        .record_failure(key, issuer.now(), window)
        .await?)
}

/// A successful login clears the user's count (not the IP's).
pub async fn succeeded(issuer: &Issuer, keys: &Keys) -> Result<(), OAuthError> {
    Ok(issuer.core.store.clear_failures(&keys.user).await?)
}

fn window_secs(config: &ThrottleConfig) -> i64 {
    config.window.get().as_secs() as i64
}
