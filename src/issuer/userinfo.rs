//! `/userinfo` (GET or POST, `Authorization: Bearer`): the user's claims by the token's
//! scopes (`sub` always; `profile` and `email` claims; the namespaced ID-token claims).
//! The token must be an access token issued here, unexpired, unrevoked, with the
//! userinfo URL in `aud` and `openid` in `scope`. Errors are RFC 6750 challenges: 401
//! for a missing or bad token (a machine token's `aud` lacks the userinfo URL), 403
//! `insufficient_scope` without `openid`.

use http::{HeaderMap, Response, StatusCode};
use serde_json::{Map, Value};

use super::Issuer;
use super::mint::{custom_claims, profile_claims};
use crate::claims::has_word;
use crate::error::BearerError;
use crate::http::{AuthorizationError, Body, JSON, NO_STORE, bearer_token, with_headers};

pub async fn handle(issuer: &Issuer, headers: &HeaderMap) -> Response<Body> {
    match userinfo(issuer, headers).await {
        Ok(claims) => with_headers(
            StatusCode::OK,
            Value::Object(claims).to_string(),
            &[JSON, NO_STORE],
        ),
        Err(err) => err.into_response(),
    }
}

async fn userinfo(issuer: &Issuer, headers: &HeaderMap) -> Result<Map<String, Value>, BearerError> {
    let token = bearer_token(headers)
        .map_err(|err| match err {
            AuthorizationError::Duplicate => {
                BearerError::BadRequest("more than one Authorization header")
            }
            AuthorizationError::Malformed(why) => BearerError::InvalidToken(why),
        })?
        .ok_or(BearerError::MissingToken)?;
    let Some(claims) = issuer
        .verify_access_token(token)
        .await
        .map_err(BearerError::Unavailable)?
    else {
        return Err(BearerError::InvalidToken(
            "the access token is not valid, expired or revoked",
        ));
    };
    let model = &issuer.model;
    let aud_ok = match claims.get("aud") {
        Some(Value::String(aud)) => *aud == model.userinfo_url,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(&model.userinfo_url)),
        _ => false,
    };
    if !aud_ok {
        return Err(BearerError::InvalidToken(
            "this access token is not meant for /userinfo",
        ));
    }
    let scope = claims.get("scope").and_then(Value::as_str).unwrap_or("");
    if !has_word(scope, "openid") {
        return Err(BearerError::InsufficientScope("openid"));
    }
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
    let Some(user) = model.user_by_subject(sub) else {
        return Err(BearerError::InvalidToken(
            "this access token does not represent a user",
        ));
    };
    let mut out = Map::new();
    out.insert("sub".into(), Value::from(user.subject.clone()));
    profile_claims(
        user,
        has_word(scope, "profile"),
        has_word(scope, "email"),
        &mut out,
    );
    out.extend(custom_claims(model, user, true));
    Ok(out)
}
