//! `refresh_token` (RFC 6749 §6): rotated on every use; a spent token presented again
//! revokes its whole family — unless within `issuer.refresh_grace` of being spent (two
//! parallel refreshes of one token, e.g. two browser tabs): the loser then gets a valid
//! pair of its own in the same family, and the family lives on. `scope` may narrow (never widen) what the family was
//! granted; the new refresh token keeps the family's grant.

use super::{Extras, Issued, issue_for_user, stored_api};
use crate::error::{OAuthCode, OAuthError};
use crate::issuer::form::Form;
use crate::issuer::model::{Api, Client, User};
use crate::issuer::store::{RefreshRecord, Rotation, secret_hash};
use crate::issuer::{Issuer, mint};

pub(super) async fn grant(
    issuer: &Issuer,
    client: &Client,
    form: &Form,
    dpop: Option<&str>,
) -> Issued {
    let model = &issuer.model;
    let presented = form.require("refresh_token")?;
    let requested = mint::requested_scopes(form.get("scope"))?;
    let hash = secret_hash(presented);
    let now = issuer.now();
    let record = find_unspent(issuer, client, &hash, now).await?;
    check_binding(record.family.dpop_jkt.as_deref(), dpop)?;
    // Validate everything before spending the token.
    let (user, api) = what_it_is_for(issuer, &record, form)?;
    check_narrowing(&record.family.scope, &requested)?;
    // Today's roles still apply: a scope the user lost is not refreshed.
    let base: Vec<&str> = if requested.is_empty() {
        record.family.scope.split_ascii_whitespace().collect()
    } else {
        requested.clone()
    };
    let mut granted = mint::user_grant(model, user, client, api, &base);
    granted.offline_access = true;

    let rotated = rotate(issuer, client, &record, &hash, api, now).await?;
    // The access token carries the (possibly narrowed) scopes; the new refresh token keeps
    // the family's grant (RFC 6749 §6).
    if !requested.is_empty() && !requested.contains(&mint::OFFLINE_ACCESS) {
        granted.offline_access = false;
    }
    let auth_time = record.family.auth_time;
    let extras = Extras {
        jkt: dpop,
        rotated: Some(rotated.token),
        jti: Some(rotated.jti),
        ..Extras::default()
    };
    issue_for_user(issuer, client, user, api, &granted, auth_time, extras).await
}

/// A family bound to a DPoP key is refreshed only with a proof by that key (RFC 9449 §5).
fn check_binding(bound: Option<&str>, dpop: Option<&str>) -> Result<(), OAuthError> {
    match (bound, dpop) {
        (Some(_), None) => Err(OAuthError::new(
            crate::error::OAuthCode::InvalidDpopProof,
            "this refresh token is bound to a DPoP key: send a proof signed with it",
        )),
        (Some(bound), Some(key)) if bound != key => Err(OAuthError::invalid_grant(
            "this refresh token is bound to another DPoP key",
        )),
        _ => Ok(()),
    }
}

fn invalid() -> OAuthError {
    OAuthError::invalid_grant("the refresh token is invalid, expired or revoked")
}

/// The presented token: the client's, unexpired, its family unrevoked, and not spent (a
/// spent one presented again revokes its family).
async fn find_unspent(
    issuer: &Issuer,
    client: &Client,
    hash: &str,
    now: i64,
) -> Result<RefreshRecord, OAuthError> {
    let store = &issuer.core.store;
    let Some(record) = store.find_refresh(hash).await? else {
        return Err(invalid());
    };
    if record.family.client_id != client.client_id {
        return Err(invalid());
    }
    if record.family_revoked || record.expires_at <= now {
        return Err(invalid());
    }
    if record.used && !in_grace(issuer, record.used_at, now) {
        store.revoke_family(&record.family.id, now).await?;
        tracing::warn!(client_id = %client.client_id, "a spent refresh token was presented again; its family is revoked");
        return Err(invalid());
    }
    Ok(record)
}

/// The first moment a token spent then is still within `issuer.refresh_grace`
/// (`i64::MAX` when there is no grace).
fn grace_since(issuer: &Issuer, now: i64) -> i64 {
    let grace = issuer.config().refresh_grace.get().as_secs() as i64;
    if grace == 0 { i64::MAX } else { now - grace }
}

fn in_grace(issuer: &Issuer, used_at: Option<i64>, now: i64) -> bool {
    used_at.is_some_and(|at| at >= grace_since(issuer, now))
}

/// The user and the API of the family, both still configured, the API the one the
/// request names (if it names one) and still allowing offline access.
fn what_it_is_for<'m>(
    issuer: &'m Issuer,
    record: &RefreshRecord,
    form: &Form,
) -> Result<(&'m User, Option<&'m Api>), OAuthError> {
    let model = &issuer.model;
    let family = &record.family;
    let Some(user) = model.user_by_subject(&family.subject) else {
        return Err(OAuthError::invalid_grant(
            "the user of this refresh token no longer exists",
        ));
    };
    let api = stored_api(model, family.audience.as_deref(), "refresh token")?;
    if let Some(requested_api) = mint::resolve_audience_explicit(model, form)?
        && api.is_none_or(|a| a.identifier != requested_api.identifier)
    {
        return Err(OAuthError::new(
            OAuthCode::InvalidTarget,
            "a refresh token is good only for the API it was issued for",
        ));
    }
    let original = mint::parse_granted(&family.scope, api);
    if !original.offline_access || !api.is_some_and(|a| a.allow_offline_access) {
        return Err(OAuthError::invalid_grant(
            "offline access is no longer allowed for this API",
        ));
    }
    Ok((user, api))
}

/// A refresh may narrow the family's scopes, never widen them.
fn check_narrowing(family_scope: &str, requested: &[&str]) -> Result<(), OAuthError> {
    let Some(extra) = requested
        .iter()
        .find(|s| !family_scope.split_ascii_whitespace().any(|o| o == **s))
    else {
        return Ok(());
    };
    Err(OAuthError::new(
        OAuthCode::InvalidScope,
        format!(
            "scope {:?} was not granted to this refresh token",
            extra.chars().take(40).collect::<String>()
        ),
    ))
}

/// The new refresh token and the `jti` of the access token about to be minted.
struct Rotated {
    token: String,
    jti: String,
}

/// Spends the presented token for a new one in the same family, atomically.
async fn rotate(
    issuer: &Issuer,
    client: &Client,
    record: &RefreshRecord,
    hash: &str,
    api: Option<&Api>,
    now: i64,
) -> Result<Rotated, OAuthError> {
    let store = &issuer.core.store;
    let token = mint::random_token(32)?;
    let expires_at = now + issuer.model.refresh_ttl.as_secs() as i64;
    let jti = mint::random_token(16)?;
    // Recorded with the family before rotating (and so before the token exists): a
    // replayed authorization code revokes the family and every access token its
    // refreshes gave, and a family revoked first makes the rotation fail.
    let until = now + mint::access_ttl(&issuer.model, api) as i64 + 60;
    store
        .record_family_access(&record.family.id, &jti, until)
        .await?;
    match store
        .rotate_refresh_with_grace(
            hash,
            &secret_hash(&token),
            expires_at,
            now,
            grace_since(issuer, now),
        )
        .await?
    {
        Rotation::Rotated => Ok(Rotated { token, jti }),
        Rotation::Reused => {
            tracing::warn!(client_id = %client.client_id, "a refresh token was redeemed twice; its family is revoked");
            Err(invalid())
        }
        Rotation::Invalid => Err(invalid()),
    }
}
