//! `password` (RFC 6749 §4.3): a user's username (or email) and password, throttled per
//! user and per IP (see `throttle`). Several `resource`s (RFC 8707 §2): one access
//! token for all of them (`aud` an array), scopes decided per API as for one; no
//! refresh token (a refresh family is for one API: `offline_access` is `invalid_target`).

use std::net::IpAddr;

use super::{Extras, TokenResponse, issue_for_user};
use crate::error::{OAuthCode, OAuthError};
use crate::issuer::form::Form;
use crate::issuer::mint::Subject;
use crate::issuer::model::{Api, Client, User};
use crate::issuer::{Issuer, mint, throttle};

pub(super) async fn grant(
    issuer: &Issuer,
    client: &Client,
    form: &Form,
    remote: IpAddr,
    dpop: Option<&str>,
) -> Result<TokenResponse, OAuthError> {
    let model = &issuer.model;
    let login = form.require("username")?;
    let password = form.require("password")?;
    let apis = mint::resolve_audiences(model, form)?;
    let requested = mint::requested_scopes(form.get("scope"))?;
    if apis.len() > 1 {
        mint::check_scopes_across(&apis, &requested)?;
        if requested.contains(&mint::OFFLINE_ACCESS) {
            return Err(OAuthError::new(
                OAuthCode::InvalidTarget,
                "a refresh token is for one API: ask for offline_access with one resource",
            ));
        }
    }
    let api = apis.first().copied();

    let keys = throttle::Keys::new(login, remote);
    throttle::check(issuer, &keys).await?;
    let user = model.user_by_login(login);
    let hash = user.map(|u| u.config.password_hash.clone());
    let verified = issuer.verify_password(hash, password).await;
    let Some(user) = user.filter(|_| verified) else {
        throttle::failed(issuer, &keys).await?;
        return Err(OAuthError::invalid_grant("wrong username or password"));
    };
    throttle::succeeded(issuer, &keys).await?;

    let now = issuer.now();
    if apis.len() > 1 {
        return several_apis(issuer, client, user, &apis, &requested, now, dpop);
    }
    let granted = mint::user_grant(model, user, client, api, &requested);
    let extras = Extras {
        jkt: dpop,
        ..Extras::default()
    };
    issue_for_user(issuer, client, user, api, &granted, now, extras).await
}

/// One user token for several APIs: each API's scopes as [`mint::user_grant`] decides
/// them, joined; an ID token with `openid`.
fn several_apis(
    issuer: &Issuer,
    client: &Client,
    user: &User,
    apis: &[&Api],
    requested: &[&str],
    auth_time: i64,
    dpop: Option<&str>,
) -> Result<TokenResponse, OAuthError> {
    let model = &issuer.model;
    let mut granted = mint::user_grant(model, user, client, None, requested);
    for api in apis {
        for scope in mint::user_grant(model, user, client, Some(api), requested).api_scopes {
            if !granted.api_scopes.contains(&scope) {
                granted.api_scopes.push(scope);
            }
        }
    }
    granted.offline_access = false;
    let scope = granted.scope_string();
    let subject = Subject::User(user);
    let access =
        mint::access_token_for_apis(issuer, client, subject, apis, &scope, granted.openid, dpop)?;
    let id_token = if granted.openid {
        Some(mint::id_token(
            issuer,
            mint::IdToken {
                client,
                user,
                granted: &granted,
                auth_time,
                nonce: None,
                access_token: Some(&access.token),
                code: None,
            },
        )?)
    } else {
        None
    };
    Ok(TokenResponse {
        id_token,
        ..TokenResponse::bearer(access, scope)
    })
}
