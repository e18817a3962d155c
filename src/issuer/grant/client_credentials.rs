//! `client_credentials` (RFC 6749 §4.4): a machine token for a confidential client;
//! scopes = requested ∩ the client's grants for the API (all of them when none are
//! requested). Several `resource`s (RFC 8707 §2): one token for all of them (`aud` an
//! array), each API's scopes decided as for one, the client granted something at each.

use super::{Issued, TokenResponse, api_scopes};
use crate::error::{OAuthCode, OAuthError};
use crate::issuer::Issuer;
use crate::issuer::form::Form;
use crate::issuer::mint::{self, Subject};
use crate::issuer::model::{Api, Client};

pub(super) fn grant(issuer: &Issuer, client: &Client, form: &Form, dpop: Option<&str>) -> Issued {
    if client.is_public() {
        return Err(OAuthError::new(
            OAuthCode::UnauthorizedClient,
            "client_credentials needs a confidential client",
        ));
    }
    let apis = mint::resolve_audiences(&issuer.model, form)?;
    let requested = mint::requested_scopes(form.get("scope"))?;
    let api = match apis.as_slice() {
        [] => {
            return Err(OAuthError::invalid_request(
                "client_credentials needs an audience (the API identifier)",
            ));
        }
        [api] => *api,
        several => return several_apis(issuer, client, several, &requested, dpop),
    };
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
        dpop,
    )?;
    Ok(TokenResponse::bearer(access, scope))
}

/// One machine token for several APIs (RFC 8707 §2): the requested scopes must fit the
/// APIs (`invalid_target`), the client must hold a grant at each (`access_denied`); the
/// scope is the union of each API's decision.
fn several_apis(
    issuer: &Issuer,
    client: &Client,
    apis: &[&Api],
    requested: &[&str],
    dpop: Option<&str>,
) -> Issued {
    mint::check_scopes_across(apis, requested)?;
    let mut scopes: Vec<&str> = Vec::new();
    for api in apis {
        let Some(granted) = client.grants.get(&api.identifier) else {
            return Err(OAuthError::new(
                OAuthCode::AccessDenied,
                "this client has no grant for one of the requested resources",
            ));
        };
        for scope in &api.scopes {
            let scope = scope.as_str();
            let asked = requested.is_empty() || requested.contains(&scope);
            if asked && granted.iter().any(|g| g == scope) && !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
    }
    if !requested.is_empty() && scopes.is_empty() {
        return Err(OAuthError::new(
            OAuthCode::InvalidScope,
            "none of the requested scopes is granted to this client for these APIs",
        ));
    }
    let scope = scopes.join(" ");
    let access =
        mint::access_token_for_apis(issuer, client, Subject::Machine, apis, &scope, false, dpop)?;
    Ok(TokenResponse::bearer(access, scope))
}
