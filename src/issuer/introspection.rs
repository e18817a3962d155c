//! Token introspection (RFC 7662, `POST /oauth/introspect`). Client authentication with
//! a secret is required. Access tokens issued here (any client may ask about them: that
//! is what resource servers do) and refresh tokens (only their own client) that are
//! valid are `active: true` with their claims; anything expired, revoked, spent, issued
//! elsewhere or unknown is `{"active": false}`.

use http::{HeaderMap, Response};
use serde_json::{Map, Value, json};

use super::Issuer;
use super::client_auth::{self, Requirement};
use super::form::Form;
use super::store::secret_hash;
use crate::error::OAuthError;
use crate::http::Body;

pub async fn handle(issuer: &Issuer, headers: &HeaderMap, form: &Form) -> Response<Body> {
    match introspect(issuer, headers, form).await {
        Ok(answer) => crate::http::no_store_json(answer.to_string()),
        Err(err) => err.into_response(),
    }
}

async fn introspect(
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &Form,
) -> Result<Value, OAuthError> {
    let url = issuer.endpoint_url(super::Endpoint::Introspect);
    let client =
        client_auth::authenticate(issuer, headers, form, &url, Requirement::Confidential).await?;
    let token = form.require("token")?;
    let inactive = json!({ "active": false });
    if token.split('.').count() == 3 {
        let Some(claims) = issuer.verify_access_token(token).await? else {
            return Ok(inactive);
        };
        let mut out = Map::new();
        out.insert("active".into(), Value::Bool(true));
        for name in [
            "scope",
            "client_id",
            "sub",
            "aud",
            "iss",
            "exp",
            "iat",
            "jti",
        ] {
            if let Some(value) = claims.get(name) {
                out.insert(name.into(), value.clone());
            }
        }
        out.insert("token_type".into(), Value::from("Bearer"));
        if let Some(user) = claims
            .get("sub")
            .and_then(Value::as_str)
            .and_then(|sub| issuer.model.user_by_subject(sub))
        {
            out.insert("username".into(), Value::from(user.config.username.clone()));
        }
        return Ok(Value::Object(out));
    }
    let record = issuer.core.store.find_refresh(&secret_hash(token)).await?;
    let Some(record) = record else {
        return Ok(inactive);
    };
    if record.family.client_id != client.client_id
        || record.used
        || record.family_revoked
        || record.expires_at <= issuer.now()
    {
        return Ok(inactive);
    }
    let mut out = json!({
        "active": true,
        "scope": record.family.scope,
        "client_id": record.family.client_id,
        "sub": record.family.subject,
        "iss": issuer.model.issuer,
        "exp": record.expires_at,
        "iat": record.created_at,
        "token_type": "refresh_token",
    });
    if let (Some(aud), Some(object)) = (&record.family.audience, out.as_object_mut()) {
        object.insert("aud".into(), Value::from(aud.clone()));
    }
    Ok(out)
}
