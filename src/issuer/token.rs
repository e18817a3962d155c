//! The token endpoint (`POST /oauth/token`): one function per grant, chosen by one
//! `match` in [`grant`]. Each reads as: validate the client → validate the input →
//! issue. Nothing changes stored state before the input is known to be good (the one
//! deliberate exception: presenting a spent refresh token revokes its family).
//!
//! Every answer carries `Cache-Control: no-store` and `Pragma: no-cache`; errors are
//! RFC 6749 §5.2 JSON. Metrics: `tokens_issued_total{grant_type}` and
//! `token_errors_total{grant_type,error}`, with RFC grant names (`unknown` otherwise).

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde::Serialize;

use super::client_auth::{self, Requirement};
use super::form::Form;
use super::mint::{self, Granted, Subject};
use super::model::Client;
use super::store::{Rotation, now, secret_hash};
use super::{Issuer, throttle};
use crate::error::{OAuthCode, OAuthError};
use crate::pipeline::{Body, full};

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Grant types the token endpoint knows, by RFC name (aliases are for configuration).
const GRANT_TYPES: [&str; 6] = [
    "authorization_code",
    "password",
    "client_credentials",
    "refresh_token",
    DEVICE_CODE,
    TOKEN_EXCHANGE,
];

/// A successful token response (RFC 6749 §5.1, RFC 8693 §2.2.1).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}

/// Answers a token request whose form has been read.
pub async fn endpoint(
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &Form,
    remote: IpAddr,
) -> Response<Body> {
    let label = form
        .get("grant_type")
        .and_then(|g| GRANT_TYPES.iter().find(|known| **known == g).copied())
        .unwrap_or("unknown");
    let metrics = &issuer.core.metrics;
    match grant(issuer, headers, form, remote).await {
        Ok(answer) => {
            metrics
                .tokens_issued_total
                .with_label_values(&[label])
                .inc();
            let body = serde_json::to_vec(&answer).unwrap_or_default();
            let mut response = Response::new(full(Bytes::from(body)));
            *response.status_mut() = StatusCode::OK;
            let h = response.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            h.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(err) => {
            metrics
                .token_errors_total
                .with_label_values(&[label, err.code.as_str()])
                .inc();
            tracing::debug!(grant_type = label, error = err.code.as_str(), description = %err.description, "token request refused");
            err.into_response()
        }
    }
}

/// Authenticates the client, checks it may use the grant, runs the grant.
async fn grant(
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &Form,
    remote: IpAddr,
) -> Result<TokenResponse, OAuthError> {
    let grant_type = form.require("grant_type")?;
    let Some(&grant_type) = GRANT_TYPES.iter().find(|known| **known == grant_type) else {
        return Err(OAuthError::new(
            OAuthCode::UnsupportedGrantType,
            "this grant type is not supported here",
        ));
    };
    let client =
        client_auth::authenticate(&issuer.model, headers, form, Requirement::SecretOrPublic)?;
    if !client.may_use(grant_type) {
        return Err(OAuthError::new(
            OAuthCode::UnauthorizedClient,
            "this client may not use this grant type",
        ));
    }
    match grant_type {
        "client_credentials" => client_credentials(issuer, client, form),
        "password" => password(issuer, client, form, remote).await,
        "refresh_token" => refresh_token(issuer, client, form).await,
        TOKEN_EXCHANGE => token_exchange(issuer, client, form).await,
        // authorization_code and device_code arrive with the browser flows.
        _ => Err(OAuthError::new(
            OAuthCode::UnsupportedGrantType,
            "this grant type is not available yet",
        )),
    }
}

/// `client_credentials`: a machine token; scopes = requested ∩ the client's grants for
/// the API (all of them when none are requested).
fn client_credentials(
    issuer: &Issuer,
    client: &Client,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    let model = &issuer.model;
    if client.is_public() {
        return Err(OAuthError::new(
            OAuthCode::UnauthorizedClient,
            "client_credentials needs a confidential client",
        ));
    }
    let api = mint::resolve_audience(model, form)?.ok_or_else(|| {
        OAuthError::invalid_request("client_credentials needs an audience (the API identifier)")
    })?;
    let requested = mint::requested_scopes(form.get("scope"))?;
    let Some(granted) = client.grants.get(&api.identifier) else {
        return Err(OAuthError::new(
            OAuthCode::AccessDenied,
            "this client has no grant for this API",
        ));
    };
    let scopes: Vec<&str> = api
        .scopes
        .iter()
        .map(String::as_str)
        .filter(|s| {
            granted.iter().any(|g| g == s) && (requested.is_empty() || requested.contains(s))
        })
        .collect();
    if !requested.is_empty() && scopes.is_empty() {
        return Err(OAuthError::new(
            OAuthCode::InvalidScope,
            "none of the requested scopes is granted to this client for this API",
        ));
    }
    let scope = scopes.join(" ");
    let access = issuer.mint_access(client, Subject::Machine, Some(api), &scope, false)?;
    Ok(TokenResponse {
        access_token: access.token,
        token_type: "Bearer",
        expires_in: access.expires_in,
        scope,
        id_token: None,
        refresh_token: None,
        issued_token_type: None,
    })
}

/// `password`: username (or email) and password; throttled per user and per IP.
async fn password(
    issuer: &Issuer,
    client: &Client,
    form: &Form,
    remote: IpAddr,
) -> Result<TokenResponse, OAuthError> {
    let model = &issuer.model;
    let login = form.require("username")?;
    let password = form.require("password")?;
    let api = mint::resolve_audience(model, form)?;
    let requested = mint::requested_scopes(form.get("scope"))?;

    let store = &issuer.core.store;
    let keys = throttle::Keys::new(login, remote);
    throttle::check(store, &keys, &model.throttle).await?;
    let user = model.user_by_login(login);
    let hash = user.map(|u| u.config.password_hash.clone());
    if !issuer.verify_password(hash, password).await || user.is_none() {
        throttle::failed(store, &keys, &model.throttle).await?;
        return Err(OAuthError::invalid_grant("wrong username or password"));
    }
    let Some(user) = user else {
        return Err(OAuthError::invalid_grant("wrong username or password"));
    };
    throttle::succeeded(store, &keys).await?;

    let granted = mint::user_grant(model, user, client, api, &requested);
    issue_user_tokens(issuer, client, user, api, &granted, now(), None).await
}

/// Access token, ID token (with `openid`), refresh token (with `offline_access`).
async fn issue_user_tokens(
    issuer: &Issuer,
    client: &Client,
    user: &super::model::User,
    api: Option<&super::model::Api>,
    granted: &Granted<'_>,
    auth_time: i64,
    refresh_token: Option<String>,
) -> Result<TokenResponse, OAuthError> {
    let scope = granted.scope_string();
    let access = issuer.mint_access(client, Subject::User(user), api, &scope, granted.openid)?;
    let id_token = if granted.openid {
        Some(issuer.mint_id(client, user, granted, auth_time, None, Some(&access.token))?)
    } else {
        None
    };
    let refresh_token = match refresh_token {
        Some(rotated) => Some(rotated),
        None if granted.offline_access => Some(
            issuer
                .mint_refresh(client, user, api, &scope, auth_time)
                .await?,
        ),
        None => None,
    };
    Ok(TokenResponse {
        access_token: access.token,
        token_type: "Bearer",
        expires_in: access.expires_in,
        scope,
        id_token,
        refresh_token,
        issued_token_type: None,
    })
}

/// `refresh_token`: rotated on every use; a spent token presented again revokes its
/// whole family. `scope` may narrow (never widen) what the family was granted.
async fn refresh_token(
    issuer: &Issuer,
    client: &Client,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    let model = &issuer.model;
    let store = &issuer.core.store;
    let presented = form.require("refresh_token")?;
    let requested = mint::requested_scopes(form.get("scope"))?;
    let hash = secret_hash(presented);
    let record = store.find_refresh(&hash).await.map_err(store_failed)?;
    let invalid = || OAuthError::invalid_grant("the refresh token is invalid, expired or revoked");
    let Some(record) = record else {
        return Err(invalid());
    };
    if record.family.client_id != client.client_id {
        return Err(invalid());
    }
    let now = now();
    if record.family_revoked || record.expires_at <= now {
        return Err(invalid());
    }
    if record.used {
        store
            .revoke_family(&record.family.id, now)
            .await
            .map_err(store_failed)?;
        tracing::warn!(client_id = %client.client_id, "a spent refresh token was presented again; its family is revoked");
        return Err(invalid());
    }
    // Validate everything before spending the token.
    let Some(user) = model.user_by_subject(&record.family.subject) else {
        return Err(OAuthError::invalid_grant(
            "the user of this refresh token no longer exists",
        ));
    };
    let api = match &record.family.audience {
        Some(id) => Some(model.apis.get(id).ok_or_else(|| {
            OAuthError::invalid_grant("the API of this refresh token no longer exists")
        })?),
        None => None,
    };
    if let Some(requested_api) = mint::resolve_audience_explicit(model, form)?
        && api.is_none_or(|a| a.identifier != requested_api.identifier)
    {
        return Err(OAuthError::new(
            OAuthCode::InvalidTarget,
            "a refresh token is good only for the API it was issued for",
        ));
    }
    let original = mint::parse_granted(&record.family.scope, api);
    if !original.offline_access || !api.is_some_and(|a| a.allow_offline_access) {
        return Err(OAuthError::invalid_grant(
            "offline access is no longer allowed for this API",
        ));
    }
    if let Some(extra) = requested.iter().find(|s| {
        !record
            .family
            .scope
            .split_ascii_whitespace()
            .any(|o| o == **s)
    }) {
        return Err(OAuthError::new(
            OAuthCode::InvalidScope,
            format!(
                "scope {:?} was not granted to this refresh token",
                extra.chars().take(40).collect::<String>()
            ),
        ));
    }
    // Today's roles still apply: a scope the user lost is not refreshed.
    let base: Vec<&str> = if requested.is_empty() {
        record.family.scope.split_ascii_whitespace().collect()
    } else {
        requested.clone()
    };
    let mut granted = mint::user_grant(model, user, client, api, &base);
    granted.offline_access = true;

    let new_token = mint::random_token(32)?;
    let expires_at = now + model.refresh_ttl.as_secs() as i64;
    match store
        .rotate_refresh(&hash, &secret_hash(&new_token), expires_at, now)
        .await
        .map_err(store_failed)?
    {
        Rotation::Rotated => {}
        Rotation::Reused => {
            tracing::warn!(client_id = %client.client_id, "a refresh token was redeemed twice; its family is revoked");
            return Err(invalid());
        }
        Rotation::Invalid => return Err(invalid()),
    }
    // The access token carries the (possibly narrowed) scopes; the new refresh token keeps
    // the family's grant (RFC 6749 §6).
    if !requested.is_empty() && !requested.contains(&mint::OFFLINE_ACCESS) {
        granted.offline_access = false;
    }
    let auth_time = record.family.auth_time;
    issue_user_tokens(
        issuer,
        client,
        user,
        api,
        &granted,
        auth_time,
        Some(new_token),
    )
    .await
}

/// RFC 8693 token exchange: an access token issued here, for a user, traded for one to
/// another API (`audience`/`resource`), same `sub`; scopes = requested (all, if none) ∩
/// defined by that API ∩ granted by the user's roles. Forged, expired, revoked or
/// foreign subject tokens are `invalid_grant`.
async fn token_exchange(
    issuer: &Issuer,
    client: &Client,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    let model = &issuer.model;
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
    let api = mint::resolve_audience_explicit(model, form)?.ok_or_else(|| {
        OAuthError::invalid_request("token exchange needs an audience (the API to trade for)")
    })?;
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
    let scopes: Vec<&str> = api
        .scopes
        .iter()
        .map(String::as_str)
        .filter(|s| allowed.contains(s) && (requested.is_empty() || requested.contains(s)))
        .collect();
    if !requested.is_empty() && scopes.is_empty() {
        return Err(OAuthError::new(
            OAuthCode::InvalidScope,
            "the user's roles grant none of the requested scopes for this API",
        ));
    }
    let scope = scopes.join(" ");
    let access = issuer.mint_access(client, Subject::User(user), Some(api), &scope, false)?;
    Ok(TokenResponse {
        access_token: access.token,
        token_type: "Bearer",
        expires_in: access.expires_in,
        scope,
        id_token: None,
        refresh_token: None,
        issued_token_type: Some(ACCESS_TOKEN_TYPE),
    })
}

fn store_failed(err: impl std::fmt::Display) -> OAuthError {
    tracing::error!(error = %err, "issuer store failed");
    OAuthError::server_error()
}
