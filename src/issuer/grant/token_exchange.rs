//! RFC 8693 token exchange: an access token issued here, for a user, traded for one to
//! another API (`audience`/`resource`), same `sub`; scopes = requested (all, if none) ∩
//! defined by that API ∩ granted by the user's roles. Forged, expired, revoked or
//! foreign subject tokens are `invalid_grant`.

use super::{ACCESS_TOKEN_TYPE, Issued, TokenResponse, api_scopes};
use crate::error::OAuthError;
use crate::issuer::Issuer;
use crate::issuer::form::Form;
use crate::issuer::mint::{self, Subject};
use crate::issuer::model::{Api, Client};

pub(super) async fn grant(issuer: &Issuer, client: &Client, form: &Form) -> Issued {
    let model = &issuer.model;
    let (subject_token, api) = validate(issuer, form)?;
    let requested = mint::requested_scopes(form.get("scope"))?;
    let claims = issuer
        .verify_access_token(subject_token)
        .await?
        .ok_or_else(|| {
            OAuthError::invalid_grant(
                "the subject token is not a valid access token from this issuer",
            )
        })?;
    let sub = claims
        .get("sub")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let Some(user) = model.user_by_subject(sub) else {
        return Err(OAuthError::invalid_grant(
            "the subject token does not represent a user",
        ));
    };
    let allowed = model.role_scopes(user, &api.identifier);
    let scope = api_scopes(
        api,
        &requested,
        |s| allowed.contains(s),
        "the user's roles grant none of the requested scopes for this API",
    )?;

    let access = mint::access_token(
        issuer,
        client,
        Subject::User(user),
        Some(api),
        &scope,
        false,
        None,
    )?;
    Ok(TokenResponse {
        issued_token_type: Some(ACCESS_TOKEN_TYPE),
        ..TokenResponse::bearer(access, scope)
    })
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
