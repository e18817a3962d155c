//! RFC 8693 token exchange: an access token issued here traded for one to an API
//! (`audience`/`resource`), same `sub`. A token exchange never widens scope:
//!
//! - **Same audience** (the subject token is already good for that API): granted =
//!   requested (the subject token's scopes when none are requested) ∩ the subject
//!   token's scopes. Today's roles cannot add to what the subject token carries.
//! - **Another audience**: requested (all, if none) ∩ defined by that API ∩ granted by
//!   the user's roles; for a machine subject (`<client_id>@clients`), ∩ that client's
//!   grant for the API instead of roles.
//!
//! A subject token this issuer does not accept — forged, expired, revoked, not an
//! access token, about no known user or client — is `invalid_request` (RFC 8693
//! §2.2.2).

use serde_json::{Map, Value};

use super::{ACCESS_TOKEN_TYPE, Issued, TokenResponse, api_scopes};
use crate::error::{OAuthCode, OAuthError};
use crate::issuer::Issuer;
use crate::issuer::form::Form;
use crate::issuer::mint::{self, Subject};
use crate::issuer::model::{Api, Client};

pub(super) async fn grant(
    issuer: &Issuer,
    client: &Client,
    form: &Form,
    dpop: Option<&str>,
) -> Issued {
    let model = &issuer.model;
    let (subject_token, api) = validate(issuer, form)?;
    let requested = mint::requested_scopes(form.get("scope"))?;
    let claims = issuer
        .verify_access_token(subject_token)
        .await?
        .ok_or_else(|| {
            OAuthError::invalid_request(
                "the subject token is not a valid access token from this issuer (bad signature, expired, revoked or not an access token)",
            )
        })?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let subject = if let Some(user) = model.user_by_subject(sub) {
        Subject::User(user)
    } else if let Some(machine) = sub
        .strip_suffix("@clients")
        .and_then(|id| model.clients.get(id))
    {
        Subject::MachineOf(&machine.client_id)
    } else {
        return Err(OAuthError::invalid_request(
            "the subject token's subject is no longer known here",
        ));
    };
    let scope = if has_audience(&claims, &api.identifier) {
        narrowed(api, &requested, &claims)?
    } else {
        widened_elsewhere(issuer, subject, api, &requested)?
    };

    let access = mint::access_token(
        issuer,
        client,
        subject,
        Some(api),
        &scope,
        false,
        None,
        dpop,
    )?;
    Ok(TokenResponse {
        issued_token_type: Some(ACCESS_TOKEN_TYPE),
        ..TokenResponse::bearer(access, scope)
    })
}

/// True if the token's `aud` (a string or an array) names `audience`.
fn has_audience(claims: &Map<String, Value>, audience: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

/// Same audience: requested (else the subject token's) ∩ the subject token's scopes,
/// in the API's order. Asking only for scopes it does not carry is `invalid_scope`.
fn narrowed(
    api: &Api,
    requested: &[&str],
    claims: &Map<String, Value>,
) -> Result<String, OAuthError> {
    let carried: Vec<&str> = claims
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .split_ascii_whitespace()
        .collect();
    api_scopes(
        api,
        requested,
        |s| carried.contains(&s),
        "a token exchange at the same audience cannot add scopes the subject token lacks",
    )
}

/// Another audience: requested ∩ the API's scopes ∩ the user's roles (a machine
/// subject: ∩ its client's grant for the API).
fn widened_elsewhere(
    issuer: &Issuer,
    subject: Subject<'_>,
    api: &Api,
    requested: &[&str],
) -> Result<String, OAuthError> {
    let model = &issuer.model;
    match subject {
        Subject::User(user) => {
            let allowed = model.role_scopes(user, &api.identifier);
            api_scopes(
                api,
                requested,
                |s| allowed.contains(s),
                "the user's roles grant none of the requested scopes for this API",
            )
        }
        Subject::MachineOf(client_id) => {
            let granted = model
                .clients
                .get(client_id)
                .and_then(|c| c.grants.get(&api.identifier))
                .ok_or_else(|| {
                    OAuthError::new(
                        OAuthCode::InvalidScope,
                        "the subject's client has no grant for this API",
                    )
                })?;
            api_scopes(
                api,
                requested,
                |s| granted.iter().any(|g| g == s),
                "the subject's client is granted none of the requested scopes for this API",
            )
        }
        Subject::Machine => Err(OAuthError::server_error()),
    }
}
/// The form's token types, the subject token, and the API to trade for.
fn validate<'f, 'm>(issuer: &'m Issuer, form: &'f Form) -> Result<(&'f str, &'m Api), OAuthError> {
    let subject_token = form.require("subject_token")?;
    let token_type = form.require("subject_token_type")?;
    if token_type != ACCESS_TOKEN_TYPE {
        return Err(OAuthError::invalid_request(
            "subject_token_type must be urn:ietf:params:oauth:token-type:access_token",
        ));
    }
    if form.get("actor_token").is_some() || form.get("actor_token_type").is_some() {
        return Err(OAuthError::invalid_request(
            "actor tokens (delegation) are not supported",
        ));
    }
    if let Some(wanted) = form.get("requested_token_type")
        && wanted != ACCESS_TOKEN_TYPE
    {
        return Err(OAuthError::invalid_request(
            "only access tokens can be requested (requested_token_type)",
        ));
    }
    let api = mint::resolve_audience_explicit(&issuer.model, form)?.ok_or_else(|| {
        OAuthError::invalid_request("token exchange needs an audience (the API to trade for)")
    })?;
    Ok((subject_token, api))
}
