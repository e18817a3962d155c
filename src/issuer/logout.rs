//! `/logout` (GET, or POST form; OpenID Connect RP-Initiated Logout): ends the browser's
//! session (deleted in the store, cookie expired) and revokes what its sign-in issued
//! (refresh families and their access tokens, code-redeemed access tokens; at the
//! proxy at once, through the deny-set), then returns to
//! `post_logout_redirect_uri` (with `state`) only if it is registered for the client,
//! which `client_id` or `id_token_hint` (an ID token this issuer signed, expired or
//! not) names; otherwise shows a "signed out" page.

use http::request::Parts;
use http::{Method, Response};

use super::Issuer;
use super::authorize::see_other;
use super::form::{self, Form};
use super::model::redirect_matches;
use super::pages;
use super::session;
use crate::http::{Body, ConnInfo};

pub async fn endpoint<B>(issuer: &Issuer, parts: &Parts, body: B, conn: ConnInfo) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let brand = &issuer.model.login_title;
    let params = if parts.method == Method::POST && form::is_form(&parts.headers) {
        form::read(&parts.headers, body).await
    } else {
        Form::parse(parts.uri.query().unwrap_or("").as_bytes())
    };
    // Sign out whatever the parameters say; they only decide where to go next.
    let expire = match session::end(issuer, &parts.headers, conn.tls).await {
        Ok(cookie) => cookie,
        Err(err) => return err.into_page(brand),
    };
    let target = params.ok().and_then(|p| return_to(issuer, &p));
    let mut response = match target {
        Some(location) => see_other(&location),
        None => pages::notice(
            brand,
            "Signed out",
            &format!("You have signed out of {brand}. You can close this window."),
            true,
        ),
    };
    session::add_cookies(&mut response, expire);
    response
}

/// Where to send the browser after signing out, if anywhere.
fn return_to(issuer: &Issuer, params: &Form) -> Option<String> {
    let uri = params.get("post_logout_redirect_uri")?;
    let hinted = params
        .get("id_token_hint")
        .map(|token| client_of_id_token(issuer, token));
    let client_id = match (params.get("client_id"), hinted) {
        // A hint that is not our ID token, or names another client: stay here.
        (_, Some(None)) => return None,
        (Some(named), Some(Some(hinted))) if named != hinted => return None,
        (_, Some(Some(hinted))) => hinted,
        (Some(named), None) => named.to_string(),
        (None, None) => return None,
    };
    let client = issuer.model.clients.get(&client_id)?;
    if !client
        .post_logout_redirect_uris
        .iter()
        .any(|registered| redirect_matches(registered, uri))
    {
        tracing::debug!(client_id = %client.client_id, "post_logout_redirect_uri is not registered for the client");
        return None;
    }
    Some(match params.get("state") {
        Some(state) => {
            let separator = if uri.contains('?') { '&' } else { '?' };
            format!("{uri}{separator}{}", form::encode([("state", state)]))
        }
        None => uri.to_string(),
    })
}

/// The client (`aud`) of an ID token signed by this issuer; expiry does not matter.
fn client_of_id_token(issuer: &Issuer, token: &str) -> Option<String> {
    let own = issuer.core.keys.published().verify(token)?;
    if own.at_jwt
        || own.claims.get("iss").and_then(|v| v.as_str()) != Some(issuer.model.issuer.as_str())
    {
        return None;
    }
    match own.claims.get("aud")? {
        serde_json::Value::String(aud) => Some(aud.clone()),
        serde_json::Value::Array(auds) if auds.len() == 1 => auds[0].as_str().map(str::to_string),
        _ => None,
    }
}
