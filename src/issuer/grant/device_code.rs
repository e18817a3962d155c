//! The device_code grant (RFC 8628 §3.4): the device polls with its `device_code`
//! until the person at `/activate` approves (tokens, once), denies (`access_denied`),
//! or the code expires (`expired_token`). Polling faster than the interval is
//! `slow_down`, and the interval grows by 5 seconds (§3.5).

use super::{Extras, Issued, TokenResponse, issue_for_user, stored_api};
use crate::error::{OAuthCode, OAuthError};
use crate::issuer::form::Form;
use crate::issuer::model::Client;
use crate::issuer::store::{DeviceRecord, DeviceStatus, secret_hash};
use crate::issuer::{Issuer, mint};

pub(super) async fn grant(
    issuer: &Issuer,
    client: &Client,
    form: &Form,
    dpop: Option<&str>,
) -> Issued {
    let device_code = form.require("device_code")?;
    let hash = secret_hash(device_code);
    let Some(record) = issuer.core.store.find_device(&hash).await? else {
        return Err(invalid());
    };
    if record.client_id != client.client_id {
        return Err(invalid());
    }
    let now = issuer.now();
    if record.expires_at <= now {
        return Err(OAuthError::new(
            OAuthCode::ExpiredToken,
            "the device code has expired; start again",
        ));
    }
    match record.status {
        DeviceStatus::Pending => poll(issuer, &hash, &record, now).await,
        DeviceStatus::Denied => Err(OAuthError::new(
            OAuthCode::AccessDenied,
            "the user denied this device",
        )),
        DeviceStatus::Approved => issue(issuer, client, &hash, now, dpop).await,
        DeviceStatus::Consumed => Err(invalid()),
    }
}

fn invalid() -> OAuthError {
    OAuthError::invalid_grant("the device code is invalid or was used")
}

/// A poll while the person has not decided: records it and answers
/// `authorization_pending`, or `slow_down` (lengthening the interval) when it came too
/// soon after the last.
async fn poll(
    issuer: &Issuer,
    hash: &str,
    record: &DeviceRecord,
    now: i64,
) -> Result<TokenResponse, OAuthError> {
    let store = &issuer.core.store;
    let previous = store.touch_device_poll(hash, now).await?;
    if previous.is_some_and(|last| now - last < record.interval_secs) {
        store.slow_down_device(hash, 5).await?;
        return Err(OAuthError::new(
            OAuthCode::SlowDown,
            "polling too fast: wait 5 seconds longer between requests",
        ));
    }
    Err(OAuthError::new(
        OAuthCode::AuthorizationPending,
        "the user has not yet approved this device",
    ))
}

/// Approved: spends the device code (once, of parallel polls) and issues the tokens of
/// the user who approved it.
async fn issue(
    issuer: &Issuer,
    client: &Client,
    hash: &str,
    now: i64,
    dpop: Option<&str>,
) -> Result<TokenResponse, OAuthError> {
    let model = &issuer.model;
    let Some(record) = issuer.core.store.consume_device(hash, now).await? else {
        return Err(invalid());
    };
    let Some(user) = record
        .subject
        .as_deref()
        .and_then(|s| model.user_by_subject(s))
    else {
        return Err(OAuthError::invalid_grant(
            "the user who approved this device no longer exists",
        ));
    };
    let api = stored_api(model, record.audience.as_deref(), "device code")?;
    let requested: Vec<&str> = record.scope.split_ascii_whitespace().collect();
    let granted = mint::user_grant(model, user, client, api, &requested);
    let auth_time = record.auth_time.unwrap_or(now);
    issue_for_user(
        issuer,
        client,
        user,
        api,
        &granted,
        auth_time,
        Extras {
            jkt: dpop,
            ..Extras::default()
        },
    )
    .await
}
