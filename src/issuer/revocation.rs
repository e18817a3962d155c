//! Token revocation (RFC 7009, `POST /oauth/revoke`). The client authenticates (public
//! clients by `client_id`); it may revoke only tokens issued to it. Revoking a refresh
//! token revokes its whole family; revoking an access token records its `jti` until it
//! would expire, which introspection, `/userinfo` and token exchange honour at once.
//! Unknown, invalid or expired tokens are answered 200, as the RFC asks.

use http::{HeaderMap, Response, StatusCode};

use super::Issuer;
use super::client_auth::{self, Requirement};
use super::form::Form;
use super::store::secret_hash;
use crate::error::{OAuthCode, OAuthError};
use crate::http::{Body, NO_CACHE, NO_STORE, with_headers};

pub async fn handle(issuer: &Issuer, headers: &HeaderMap, form: &Form) -> Response<Body> {
    match revoke(issuer, headers, form).await {
        Ok(()) => with_headers(StatusCode::OK, "", &[NO_STORE, NO_CACHE]),
        Err(err) => err.into_response(),
    }
}

fn not_yours() -> OAuthError {
    OAuthError::new(
        OAuthCode::UnauthorizedClient,
        "the token was not issued to this client",
    )
}

async fn revoke(issuer: &Issuer, headers: &HeaderMap, form: &Form) -> Result<(), OAuthError> {
    let url = issuer.endpoint_url(super::Endpoint::Revoke);
    let client =
        client_auth::authenticate(issuer, headers, form, &url, Requirement::AnyClient).await?;
    let token = form.require("token")?;
    // The hint only orders the lookups; both kinds are tried (RFC 7009 §2.1).
    let looks_like_jwt = token.split('.').count() == 3;
    if looks_like_jwt {
        if let Some(claims) = issuer.verify_access_token(token).await? {
            let owner = claims
                .get("client_id")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            if owner != client.client_id {
                return Err(not_yours());
            }
            if let (Some(jti), Some(exp)) = (
                claims.get("jti").and_then(|v| v.as_str()),
                claims.get("exp").and_then(|v| v.as_i64()),
            ) {
                issuer.core.store.revoke_jti(jti, exp).await?;
            }
        }
        return Ok(());
    }
    let store = &issuer.core.store;
    if let Some(record) = store.find_refresh(&secret_hash(token)).await? {
        if record.family.client_id != client.client_id {
            return Err(not_yours());
        }
        store.revoke_family(&record.family.id, issuer.now()).await?;
    }
    Ok(())
}
