//! The token endpoint (`POST /oauth/token`): one function per grant, chosen by one
//! `match` in [`grant`]. Each reads as: validate the client → validate the input →
//! issue. Nothing changes stored state before the input is known to be good (the
//! deliberate exceptions: presenting a spent refresh token revokes its family, a spent
//! authorization code what it was redeemed for; polling with a device code records the
//! poll).
//!
//! Every answer carries `Cache-Control: no-store` and `Pragma: no-cache`; errors are
//! RFC 6749 §5.2 JSON. Metrics: `tokens_issued_total{grant_type}` and
//! `token_errors_total{grant_type,error}`, with RFC grant names (`unknown` otherwise).

use std::net::IpAddr;

use http::{HeaderMap, Response};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::client_auth::{self, Requirement};
use super::form::Form;
use super::mint::{self, Granted, Subject};
use super::model::Client;
use super::store::{CodeIssue, Rotation, now, secret_hash};
use super::{Issuer, throttle};
use crate::error::{OAuthCode, OAuthError};
use crate::http::Body;

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
            crate::http::no_store_json(serde_json::to_vec(&answer).unwrap_or_default())
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
        "authorization_code" => authorization_code(issuer, client, form).await,
        DEVICE_CODE => device_code(issuer, client, form).await,
        _ => Err(OAuthError::new(
            OAuthCode::UnsupportedGrantType,
            "this grant type is not supported here",
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
    issue_user_tokens(
        issuer,
        client,
        user,
        api,
        &granted,
        now(),
        Extras::default(),
    )
    .await
}

/// What some grants add to [`issue_user_tokens`].
#[derive(Debug, Default)]
struct Extras<'a> {
    /// The refresh token a rotation made (instead of a new family).
    rotated: Option<String>,
    /// The ID token's `nonce` (from the authorization request).
    nonce: Option<&'a str>,
    /// The access token's `jti` and the refresh family's id, chosen beforehand (the code
    /// grant records them with the code, so a replay can revoke them).
    jti: Option<String>,
    family_id: Option<String>,
}

/// Access token, ID token (with `openid`), refresh token (with `offline_access`).
async fn issue_user_tokens(
    issuer: &Issuer,
    client: &Client,
    user: &super::model::User,
    api: Option<&super::model::Api>,
    granted: &Granted<'_>,
    auth_time: i64,
    extras: Extras<'_>,
) -> Result<TokenResponse, OAuthError> {
    let scope = granted.scope_string();
    let subject = Subject::User(user);
    let access = match extras.jti {
        Some(jti) => issuer.mint_access_as(client, subject, api, &scope, granted.openid, jti)?,
        None => issuer.mint_access(client, subject, api, &scope, granted.openid)?,
    };
    let id_token = if granted.openid {
        Some(issuer.mint_id(
            client,
            user,
            granted,
            auth_time,
            extras.nonce,
            Some(&access.token),
        )?)
    } else {
        None
    };
    let refresh_token = match extras.rotated {
        Some(rotated) => Some(rotated),
        None if granted.offline_access => {
            let family_id = match extras.family_id {
                Some(id) => id,
                None => mint::random_token(16)?,
            };
            Some(
                issuer
                    .mint_refresh(client, user, api, &scope, auth_time, family_id)
                    .await?,
            )
        }
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
    let jti = mint::random_token(16)?;
    // Recorded with the family before rotating (and so before the token exists): a
    // replayed authorization code revokes the family and every access token its
    // refreshes gave, and a family revoked first makes the rotation fail.
    store
        .record_family_access(
            &record.family.id,
            &jti,
            now + issuer.access_ttl(api) as i64 + 60,
        )
        .await
        .map_err(store_failed)?;
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
        Extras {
            rotated: Some(new_token),
            jti: Some(jti),
            ..Extras::default()
        },
    )
    .await
}

/// `authorization_code`: a code from `/authorize`, by the client it was issued to, with
/// the same `redirect_uri` and, if a PKCE challenge was sent there, the verifier (and
/// never a verifier without one: that would be a downgrade). Everything is checked
/// before the code is spent; spending it is atomic. A code presented again after it was
/// redeemed revokes what it was redeemed for (the access token by `jti`, the refresh
/// family), as RFC 6749 §4.1.2 asks.
async fn authorization_code(
    issuer: &Issuer,
    client: &Client,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    let model = &issuer.model;
    let store = &issuer.core.store;
    let code = form.require("code")?;
    let redirect_uri = form.require("redirect_uri")?;
    let verifier = form.get("code_verifier");
    if let Some(verifier) = verifier
        && !is_code_verifier(verifier)
    {
        return Err(OAuthError::invalid_request(
            "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~",
        ));
    }
    let invalid = || OAuthError::invalid_grant("the authorization code is invalid or expired");
    let hash = secret_hash(code);
    let Some(found) = store.find_code(&hash).await.map_err(store_failed)? else {
        return Err(invalid());
    };
    let now = now();
    if found.used {
        code_replayed(issuer, &hash, now).await?;
        return Err(invalid());
    }
    let record = found.record;
    if record.client_id != client.client_id || record.expires_at <= now {
        return Err(invalid());
    }
    if record.redirect_uri != redirect_uri {
        return Err(OAuthError::invalid_grant(
            "redirect_uri differs from the one the code was issued for",
        ));
    }
    match (&record.code_challenge, verifier) {
        (Some(challenge), Some(verifier)) => {
            let computed = crate::jose::b64url(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref(),
            );
            if !bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
                return Err(OAuthError::invalid_grant(
                    "code_verifier does not match the code_challenge",
                ));
            }
        }
        (Some(_), None) => {
            return Err(OAuthError::invalid_grant(
                "this code was issued with a PKCE challenge: send code_verifier",
            ));
        }
        (None, Some(_)) => {
            return Err(OAuthError::invalid_grant(
                "this code was issued without a PKCE challenge: code_verifier is not expected",
            ));
        }
        (None, None) if client.is_public() => {
            return Err(OAuthError::invalid_grant("a public client needs PKCE"));
        }
        (None, None) => {}
    }
    let Some(user) = model.user_by_subject(&record.subject) else {
        return Err(OAuthError::invalid_grant(
            "the user of this code no longer exists",
        ));
    };
    let api =
        match &record.audience {
            Some(id) => Some(model.apis.get(id).ok_or_else(|| {
                OAuthError::invalid_grant("the API of this code no longer exists")
            })?),
            None => None,
        };
    // What /authorize decided, with today's roles (a scope lost since is not issued).
    let decided: Vec<&str> = record.scope.split_ascii_whitespace().collect();
    let granted = mint::user_grant(model, user, client, api, &decided);

    let jti = mint::random_token(16)?;
    let family_id = if granted.offline_access {
        Some(mint::random_token(16)?)
    } else {
        None
    };
    let issue = CodeIssue {
        jti: jti.clone(),
        // The access token expires by then (plus a margin for its own `now`).
        until: now + issuer.access_ttl(api) as i64 + 60,
        family_id: family_id.clone(),
    };
    if !store
        .redeem_code(&hash, now, &issue)
        .await
        .map_err(store_failed)?
    {
        // A parallel redemption won: this is a replay.
        code_replayed(issuer, &hash, now).await?;
        return Err(invalid());
    }
    let answer = issue_user_tokens(
        issuer,
        client,
        user,
        api,
        &granted,
        record.auth_time,
        Extras {
            nonce: record.nonce.as_deref(),
            jti: Some(jti),
            family_id,
            ..Extras::default()
        },
    )
    .await?;
    // A replay that came while the tokens were being made found the family not yet
    // stored; revoke again now that it is, and answer as a replay.
    if store.code_replayed(&hash).await.map_err(store_failed)? {
        code_replayed(issuer, &hash, now).await?;
        return Err(invalid());
    }
    Ok(answer)
}

/// A redeemed code came again: revoke what it was redeemed for.
async fn code_replayed(issuer: &Issuer, hash: &str, now: i64) -> Result<(), OAuthError> {
    if issuer
        .core
        .store
        .replay_code(hash, now)
        .await
        .map_err(store_failed)?
    {
        tracing::warn!(
            "an authorization code was presented again; the tokens issued for it are revoked"
        );
    }
    Ok(())
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn is_code_verifier(text: &str) -> bool {
    (43..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The device_code grant (RFC 8628 §3.4): the device polls with its `device_code`
/// until the person at `/activate` approves (tokens, once), denies (`access_denied`),
/// or the code expires (`expired_token`). Polling faster than the interval is
/// `slow_down`, and the interval grows by 5 seconds (§3.5).
async fn device_code(
    issuer: &Issuer,
    client: &Client,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    let model = &issuer.model;
    let store = &issuer.core.store;
    let device_code = form.require("device_code")?;
    let hash = secret_hash(device_code);
    let invalid = || OAuthError::invalid_grant("the device code is invalid or was used");
    let Some(record) = store.find_device(&hash).await.map_err(store_failed)? else {
        return Err(invalid());
    };
    if record.client_id != client.client_id {
        return Err(invalid());
    }
    let now = now();
    if record.expires_at <= now {
        return Err(OAuthError::new(
            OAuthCode::ExpiredToken,
            "the device code has expired; start again",
        ));
    }
    match record.status.as_str() {
        "pending" => {
            let previous = store
                .touch_device_poll(&hash, now)
                .await
                .map_err(store_failed)?;
            if previous.is_some_and(|last| now - last < record.interval_secs) {
                store
                    .slow_down_device(&hash, 5)
                    .await
                    .map_err(store_failed)?;
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
        "denied" => Err(OAuthError::new(
            OAuthCode::AccessDenied,
            "the user denied this device",
        )),
        "approved" => {
            let Some(record) = store
                .consume_device(&hash, now)
                .await
                .map_err(store_failed)?
            else {
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
            let api = match &record.audience {
                Some(id) => Some(model.apis.get(id).ok_or_else(|| {
                    OAuthError::invalid_grant("the API of this device code no longer exists")
                })?),
                None => None,
            };
            let requested: Vec<&str> = record.scope.split_ascii_whitespace().collect();
            let granted = mint::user_grant(model, user, client, api, &requested);
            let auth_time = record.auth_time.unwrap_or(now);
            issue_user_tokens(
                issuer,
                client,
                user,
                api,
                &granted,
                auth_time,
                Extras::default(),
            )
            .await
        }
        _ => Err(invalid()),
    }
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

pub(crate) fn store_failed(err: impl std::fmt::Display) -> OAuthError {
    tracing::error!(error = %err, "issuer store failed");
    OAuthError::server_error()
}
