//! `/oauth/par`: pushed authorization requests (RFC 9126). A client, authenticated as at
//! the token endpoint, posts the parameters it would send to `/authorize`; they are
//! checked exactly as `/authorize` checks them ([`authorize::check_pushed`]), stored
//! (so any replica can redeem them) and named by a random `request_uri`, answered `201`
//! with its lifetime (`issuer.par.ttl`). `/authorize?client_id=..&request_uri=..` then
//! reads the pushed parameters only, once.
//!
//! Request objects are not supported: a `request` parameter is `request_not_supported`;
//! a `request_uri` inside a push is `invalid_request` (RFC 9126 §2.1). Errors are RFC 6749
//! §5.2 JSON, counted in `token_errors_total{grant_type="unknown"}` like every refused
//! token request.

use http::{HeaderMap, Response, StatusCode};
use serde_json::json;

use super::authorize::{self, PARAMS, PUSHED_URI_PREFIX};
use super::client_auth::{self, Requirement};
use super::form::{self, Form};
use super::mint::random_token;
use super::store::{PushedRequest, secret_hash};
use super::{Endpoint, Issuer};
use crate::error::{OAuthCode, OAuthError};
use crate::http::Body;

/// Answers a push whose form has been read.
pub async fn handle(issuer: &Issuer, headers: &HeaderMap, form: &Form) -> Response<Body> {
    match push(issuer, headers, form).await {
        Ok(answer) => {
            let mut response = crate::http::no_store_json(answer.to_string());
            *response.status_mut() = StatusCode::CREATED;
            response
        }
        Err(err) => {
            issuer
                .core
                .metrics
                .token_errors_total
                .with_label_values(&["unknown", err.code.as_str()])
                .inc();
            tracing::debug!(error = err.code.as_str(), description = %err.description, "pushed authorization request refused");
            err.into_response()
        }
    }
}

async fn push(
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &Form,
) -> Result<serde_json::Value, OAuthError> {
    let url = issuer.endpoint_url(Endpoint::Par);
    let client =
        client_auth::authenticate(issuer, headers, form, &url, Requirement::AnyClient).await?;
    if form.get("request").is_some() {
        return Err(OAuthError::new(
            OAuthCode::RequestNotSupported,
            "request objects (the request parameter) are not supported",
        ));
    }
    if form.get("request_uri").is_some() {
        return Err(OAuthError::invalid_request(
            "a pushed authorization request cannot itself hold a request_uri",
        ));
    }
    // The authenticated client is the request's client, whatever the form says.
    let pairs = form
        .pairs()
        .filter(|(name, _)| *name != "client_id" && PARAMS.contains(name));
    let encoded =
        form::encode(std::iter::once(("client_id", client.client_id.as_str())).chain(pairs));
    let params = Form::parse(encoded.as_bytes())?;
    authorize::check_pushed(issuer, &params)?;
    let request_uri = format!("{PUSHED_URI_PREFIX}{}", random_token(32)?);
    let ttl = issuer.config().par.ttl.get().as_secs();
    issuer
        .core
        .store
        .insert_pushed(&PushedRequest {
            uri_hash: secret_hash(&request_uri),
            client_id: client.client_id.clone(),
            params: encoded,
            expires_at: issuer.now() + ttl as i64,
        })
        .await?;
    Ok(json!({ "request_uri": request_uri, "expires_in": ttl }))
}
