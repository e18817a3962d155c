//! The token endpoint (`POST /oauth/token`): one module per grant, chosen by the one
//! `match` in [`run`]. Before it, the endpoint reads `grant_type` into a [`GrantType`],
//! authenticates the client and checks the client may use the grant; each grant then
//! reads as: check what it needs of the client → validate the input → issue. Nothing
//! changes stored state before the input is known to be good (the deliberate
//! exceptions: presenting a spent refresh token revokes its family, a spent
//! authorization code what it was redeemed for; polling with a device code records the
//! poll).
//!
//! Written once here and shared by the grants: the token response
//! ([`TokenResponse`]), the API-scope intersection ([`api_scopes`]), the tokens a user
//! grant issues ([`issue_for_user`]) and the look-ups of what a stored grant names.
//!
//! Every answer carries `Cache-Control: no-store` and `Pragma: no-cache`; errors are
//! RFC 6749 §5.2 JSON. Metrics: `tokens_issued_total{grant_type}` and
//! `token_errors_total{grant_type,error}`, with RFC grant names (`unknown` otherwise).

mod authorization_code;
mod client_credentials;
mod device_code;
mod password;
mod refresh_token;
mod token_exchange;

use std::net::IpAddr;

use http::{HeaderMap, Response};
use serde::Serialize;

use super::Issuer;
use super::client_auth::{self, Requirement};
use super::form::Form;
use super::mint::{self, AccessToken, Granted, Subject};
use super::model::{Api, Client, Model, User};
use crate::config::issuer::GrantType;
use crate::error::{OAuthCode, OAuthError};
use crate::http::Body;

/// RFC 8693's token type of access tokens.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

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

/// What a grant ends in: the token response, or the OAuth error the client is sent.
pub(super) type Issued = Result<TokenResponse, OAuthError>;

impl TokenResponse {
    /// An access token with its scope, and nothing else: `token_type` `DPoP` for a token
    /// bound to a key (RFC 9449 §5), else `Bearer`.
    fn bearer(access: AccessToken, scope: String) -> TokenResponse {
        TokenResponse {
            token_type: if access.bound { "DPoP" } else { "Bearer" },
            access_token: access.token,
            expires_in: access.expires_in,
            scope,
            id_token: None,
            refresh_token: None,
            issued_token_type: None,
        }
    }
}

/// Answers a token request whose form has been read.
pub async fn endpoint(
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &Form,
    remote: IpAddr,
) -> Response<Body> {
    let grant_type = grant_type(form);
    let label = grant_type.as_ref().map_or("unknown", |g| g.as_str());
    let answer = match grant_type {
        Ok(grant_type) => run(issuer, headers, form, remote, grant_type).await,
        Err(err) => Err(err),
    };
    let metrics = &issuer.core.metrics;
    match answer {
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

/// The `grant_type` field: missing is `invalid_request`; unknown, or `implicit` (which
/// only `/authorize` serves), is `unsupported_grant_type`. Aliases are for the config.
fn grant_type(form: &Form) -> Result<GrantType, OAuthError> {
    let name = form.require("grant_type")?;
    GrantType::from_rfc_name(name)
        .filter(|grant| *grant != GrantType::Implicit)
        .ok_or_else(|| {
            OAuthError::new(
                OAuthCode::UnsupportedGrantType,
                "this grant type is not supported here",
            )
        })
}

/// Authenticates the client, checks it may use the grant, runs the grant.
async fn run(
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &Form,
    remote: IpAddr,
    grant_type: GrantType,
) -> Result<TokenResponse, OAuthError> {
    let url = issuer.endpoint_url(super::Endpoint::Token);
    let client =
        client_auth::authenticate(issuer, headers, form, &url, Requirement::AnyClient).await?;
    if !client.may_use(grant_type) {
        return Err(OAuthError::new(
            OAuthCode::UnauthorizedClient,
            "this client may not use this grant type",
        ));
    }
    let jkt = dpop_key(issuer, headers, client)?;
    let dpop = jkt.as_deref();
    match grant_type {
        GrantType::ClientCredentials => client_credentials::grant(issuer, client, form, dpop),
        GrantType::Password => password::grant(issuer, client, form, remote, dpop).await,
        GrantType::RefreshToken => refresh_token::grant(issuer, client, form, dpop).await,
        GrantType::TokenExchange => token_exchange::grant(issuer, client, form, dpop).await,
        GrantType::AuthorizationCode => authorization_code::grant(issuer, client, form, dpop).await,
        GrantType::DeviceCode => device_code::grant(issuer, client, form, dpop).await,
        GrantType::Implicit => Err(OAuthError::new(
            OAuthCode::UnsupportedGrantType,
            "this grant type is not supported here",
        )),
    }
}

/// The DPoP key the tokens are bound to (RFC 9449 §5): the thumbprint of the key of a
/// valid `DPoP` proof for this endpoint (checked as the proxy checks proofs, without an
/// access token), or none without a proof. A client registered with
/// `dpop_bound_access_tokens` must send one. Any failure is `invalid_dpop_proof`, but a
/// proof without a good nonce where `issuer.dpop.require_nonce` asks for one, which is
/// `use_dpop_nonce` with a fresh `DPoP-Nonce` (RFC 9449 §8).
fn dpop_key(
    issuer: &Issuer,
    headers: &HeaderMap,
    client: &Client,
) -> Result<Option<String>, OAuthError> {
    use crate::jose::dpop::{Expected, ProofChecker};
    if !ProofChecker::present(headers) {
        if client.dpop_bound {
            return Err(OAuthError::new(
                OAuthCode::InvalidDpopProof,
                "this client's tokens are DPoP-bound: send a DPoP proof",
            ));
        }
        return Ok(None);
    }
    let token_endpoint = issuer.endpoint_url(super::Endpoint::Token);
    let uri: http::Uri = token_endpoint
        .parse()
        .map_err(|_| OAuthError::server_error())?;
    let good_nonce = |nonce: &str| super::dpop_nonce::is_good(issuer, nonce);
    let expected = Expected {
        method: &http::Method::POST,
        authority: uri.authority().map_or("", |a| a.as_str()),
        path: uri.path(),
        token: None,
        jkt: None,
        leeway: std::time::Duration::ZERO,
        nonce: issuer
            .config()
            .dpop
            .require_nonce
            .then_some(&good_nonce as &dyn Fn(&str) -> bool),
    };
    issuer
        .core
        .dpop
        .check(headers, expected)
        .map(Some)
        .map_err(|err| {
            if err == crate::jose::dpop::NONCE_REQUIRED {
                let mut refused = OAuthError::new(OAuthCode::UseDpopNonce, err.0);
                refused.dpop_nonce = super::dpop_nonce::current(issuer);
                return refused;
            }
            OAuthError::new(OAuthCode::InvalidDpopProof, err.0)
        })
}

/// The scope intersection of the grants that issue for one API without `/authorize`:
/// the API's scopes (in its order) that `allowed` grants and, when any are requested,
/// were requested. Requesting only scopes none of which is allowed is `invalid_scope`
/// (`refused` says why); requesting none gives all that are allowed.
fn api_scopes(
    api: &Api,
    requested: &[&str],
    allowed: impl Fn(&str) -> bool,
    refused: &'static str,
) -> Result<String, OAuthError> {
    let scopes: Vec<&str> = api
        .scopes
        .iter()
        .map(String::as_str)
        .filter(|s| allowed(s) && (requested.is_empty() || requested.contains(s)))
        .collect();
    if !requested.is_empty() && scopes.is_empty() {
        return Err(OAuthError::new(OAuthCode::InvalidScope, refused));
    }
    Ok(scopes.join(" "))
}

/// What some grants add to [`issue_for_user`].
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
    /// The DPoP key the tokens are bound to.
    jkt: Option<&'a str>,
}

/// The tokens of a user grant: an access token, an ID token (with `openid`), a refresh
/// token (with `offline_access`).
async fn issue_for_user(
    issuer: &Issuer,
    client: &Client,
    user: &User,
    api: Option<&Api>,
    granted: &Granted<'_>,
    auth_time: i64,
    extras: Extras<'_>,
) -> Result<TokenResponse, OAuthError> {
    let scope = granted.scope_string();
    let subject = Subject::User(user);
    let openid = granted.openid;
    let access = mint::access_token(
        issuer, client, subject, api, &scope, openid, extras.jti, extras.jkt,
    )?;
    let id_token = if openid {
        Some(mint::id_token(
            issuer,
            mint::IdToken {
                client,
                user,
                granted,
                auth_time,
                nonce: extras.nonce,
                access_token: Some(&access.token),
                code: None,
            },
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
            // The family's first access token goes with it: revoking the family (RFC
            // 7009 §2.1, reuse, a replayed code) revokes this one too.
            issuer
                .core
                .store
                .record_family_access(&family_id, &access.jti, access.expires_at)
                .await?;
            let token = mint::refresh_token(
                issuer, client, user, api, &scope, auth_time, family_id, extras.jkt,
            );
            Some(token.await?)
        }
        None => None,
    };
    Ok(TokenResponse {
        id_token,
        refresh_token,
        ..TokenResponse::bearer(access, scope)
    })
}

/// The API a stored grant (a refresh family, a code, a device code) was made for, if
/// it still exists; `what` names the grant in the error.
fn stored_api<'m>(
    model: &'m Model,
    audience: Option<&str>,
    what: &str,
) -> Result<Option<&'m Api>, OAuthError> {
    let Some(id) = audience else {
        return Ok(None);
    };
    match model.apis.get(id) {
        Some(api) => Ok(Some(api)),
        None => Err(OAuthError::invalid_grant(format!(
            "the API of this {what} no longer exists"
        ))),
    }
}
