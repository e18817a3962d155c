//! `client_credentials` (RFC 6749 §4.4): a machine token for a confidential client;
//! scopes = requested ∩ the client's grants for the API (all of them when none are
//! requested).

use super::{Issued, TokenResponse, api_scopes};
use crate::error::{OAuthCode, OAuthError};
use crate::issuer::Issuer;
use crate::issuer::form::Form;
use crate::issuer::mint::{self, Subject};
use crate::issuer::model::Client;

pub(super) fn grant(issuer: &Issuer, client: &Client, form: &Form) -> Issued {
    if client.is_public() {
        return Err(OAuthError::new(
            OAuthCode::UnauthorizedClient,
            "client_credentials needs a confidential client",
        ));
    }
    let api = mint::resolve_audience(&issuer.model, form)?.ok_or_else(|| {
        OAuthError::invalid_request("client_credentials needs an audience (the API identifier)")
    })?;
    let requested = mint::requested_scopes(form.get("scope"))?;
    let Some(granted) = client.grants.get(&api.identifier) else {
        return Err(OAuthError::new(
            OAuthCode::AccessDenied,
            "this client has no grant for this API",
        ));
    };
    let scope = api_scopes(
        api,
        &requested,
        |s| granted.iter().any(|g| g == s),
        "none of the requested scopes is granted to this client for this API",
    )?;

    let access = mint::access_token(
        issuer,
        client,
        Subject::Machine,
        Some(api),
        &scope,
        false,
        None,
    )?;
    Ok(TokenResponse::bearer(access, scope))
}
