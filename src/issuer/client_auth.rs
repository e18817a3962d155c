//! Client authentication at every endpoint that authenticates clients (token, PAR,
//! revocation, introspection, device authorization):
//! `client_secret_basic` (RFC 6749 §2.3.1, form-encoded id and secret inside Basic),
//! `client_secret_post` (`client_id` + `client_secret` in the form), `private_key_jwt`
//! (RFC 7523 §2.2, OpenID Connect Core §9: a JWT signed with one of the client's keys in
//! `client_assertion`), and `none` for public clients (`client_id` only). One method per
//! request, and only the one the client is registered for
//! (`token_endpoint_auth_method`; without it, the secret methods for a client with a
//! secret, `none` for one without). Secrets are compared as SHA-256 digests in constant
//! time, so neither content nor length leaks through timing. Every failure is
//! `invalid_client` (401 with a `Basic` challenge).
//!
//! An assertion is checked: `iss` = `sub` = the client, `aud` names this issuer (its
//! identifier, its token endpoint or the endpoint called), `exp` present and at most
//! [`MAX_ASSERTION_LIFETIME`] ahead, `iat`/`nbf` not in the future, an asymmetric `alg`
//! one of the client's keys fits, the signature, and a `jti` used once: the store
//! remembers it until the assertion expires, so a replay fails on every replica.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::Issuer;
use super::form::{Form, decode};
use super::model::{Client, ClientKeys, Model, digest};
use crate::config::issuer::ClientAuthMethod;
use crate::error::OAuthError;
use crate::jose::{Alg, Jws};

/// The one `client_assertion_type` there is (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How far ahead an assertion's `exp` may be: assertions are short-lived, and the store
/// remembers each `jti` until `exp`.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

/// Clock skew granted to `iat` and `nbf`.
const SKEW: i64 = 60;

/// The algorithms a client may sign assertions with (discovery's
/// `token_endpoint_auth_signing_alg_values_supported`): asymmetric only.
pub const ASSERTION_ALGS: [Alg; 9] = Alg::ALL;

/// How a request may authenticate its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Confidential clients prove who they are; public clients name themselves (`none`).
    AnyClient,
    /// Only a confidential client, which proves who it is (introspection).
    Confidential,
}

fn failed() -> OAuthError {
    OAuthError::invalid_client("client authentication failed")
}

/// Authenticates the request's client, which calls the endpoint at `endpoint_url`.
pub async fn authenticate<'i>(
    issuer: &'i Issuer,
    headers: &HeaderMap,
    form: &Form,
    endpoint_url: &str,
    requirement: Requirement,
) -> Result<&'i Client, OAuthError> {
    if form.get("client_assertion").is_some() || form.get("client_assertion_type").is_some() {
        if headers.contains_key(http::header::AUTHORIZATION) || form.get("client_secret").is_some()
        {
            return Err(OAuthError::invalid_request(
                "use one client authentication method, not a client assertion and a secret",
            ));
        }
        return by_assertion(issuer, form, endpoint_url).await;
    }
    by_secret(&issuer.model, headers, form, requirement)
}

/// `client_secret_basic`, `client_secret_post` or `none`.
fn by_secret<'m>(
    model: &'m Model,
    headers: &HeaderMap,
    form: &Form,
    requirement: Requirement,
) -> Result<&'m Client, OAuthError> {
    let basic = basic_credentials(headers)?;
    let (client_id, secret, method) = match basic {
        Some((id, secret)) => {
            if form.get("client_secret").is_some() {
                return Err(OAuthError::invalid_request(
                    "use one client authentication method, not Basic and client_secret both",
                ));
            }
            if form.get("client_id").is_some_and(|form_id| form_id != id) {
                return Err(OAuthError::invalid_request(
                    "client_id in the form differs from the Basic credentials",
                ));
            }
            (id, Some(secret), ClientAuthMethod::ClientSecretBasic)
        }
        None => match form.get("client_id") {
            Some(id) => match form.get("client_secret") {
                Some(secret) => (
                    id.to_string(),
                    Some(secret.to_string()),
                    ClientAuthMethod::ClientSecretPost,
                ),
                None => (id.to_string(), None, ClientAuthMethod::None),
            },
            None => {
                return Err(OAuthError::invalid_client(
                    "no client authentication: send client_id (and the secret, by Basic or client_secret, or a client_assertion)",
                ));
            }
        },
    };
    let Some(client) = model.clients.get(&client_id) else {
        // Spend the same digest work an existing client would cost.
        if let Some(secret) = &secret {
            let _ = digest(secret).ct_eq(&[0u8; 32]);
        }
        return Err(failed());
    };
    match (&client.secret_digest, &secret) {
        (Some(expected), Some(secret)) if !bool::from(digest(secret).ct_eq(expected)) => {
            return Err(failed());
        }
        // The same digest work as a client with a secret would cost.
        (None, Some(secret)) => {
            let _ = digest(secret).ct_eq(&[0u8; 32]);
        }
        _ => {}
    }
    if !client.accepts(method) {
        return Err(OAuthError::invalid_client(match client.auth_method {
            Some(ClientAuthMethod::PrivateKeyJwt) => {
                "this client authenticates with a signed client_assertion (private_key_jwt)"
            }
            _ if client.is_public() => "this is a public client: it has no secret to send",
            _ if secret.is_none() => "this client must authenticate with its secret",
            _ => "this client is registered for another authentication method",
        }));
    }
    if method == ClientAuthMethod::None && requirement == Requirement::Confidential {
        return Err(OAuthError::invalid_client(
            "this endpoint needs a confidential client",
        ));
    }
    Ok(client)
}

/// The claims of a client assertion that are checked.
#[derive(Deserialize)]
struct AssertionClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Value>,
    exp: Option<i64>,
    iat: Option<i64>,
    nbf: Option<i64>,
    jti: Option<String>,
}

/// `private_key_jwt`: a JWT signed by the client (RFC 7523 §3).
async fn by_assertion<'i>(
    issuer: &'i Issuer,
    form: &Form,
    endpoint_url: &str,
) -> Result<&'i Client, OAuthError> {
    if form.get("client_assertion_type") != Some(JWT_BEARER) {
        return Err(OAuthError::invalid_client(
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ));
    }
    let assertion = form
        .get("client_assertion")
        .ok_or_else(|| OAuthError::invalid_client("client_assertion is missing"))?;
    let malformed = || OAuthError::invalid_client("client_assertion is not a signed JWT");
    let jws = Jws::parse(assertion).map_err(|_| malformed())?;
    let header = jws.header().map_err(|_| malformed())?;
    if header.crit || header.embedded_key {
        return Err(OAuthError::invalid_client(
            "client_assertion header names its own key or critical extensions",
        ));
    }
    let alg = Alg::from_name(&header.alg).ok_or_else(|| {
        OAuthError::invalid_client("client_assertion alg must be an asymmetric algorithm")
    })?;
    let claims: AssertionClaims = serde_json::from_slice(&jws.payload).map_err(|_| malformed())?;
    let client_id = claims.sub.as_deref().unwrap_or_default();
    if claims.iss.as_deref() != Some(client_id) || client_id.is_empty() {
        return Err(OAuthError::invalid_client(
            "client_assertion iss and sub must both be the client_id",
        ));
    }
    if form.get("client_id").is_some_and(|id| id != client_id) {
        return Err(OAuthError::invalid_request(
            "client_id in the form differs from the client_assertion's sub",
        ));
    }
    let client = issuer.model.clients.get(client_id).ok_or_else(failed)?;
    if !client.accepts(ClientAuthMethod::PrivateKeyJwt) {
        return Err(OAuthError::invalid_client(
            "this client is not registered for private_key_jwt",
        ));
    }
    let now = issuer.now();
    check_assertion_claims(issuer, &claims, endpoint_url, now)?;
    let kid = header.kid.as_deref();
    let verified = match &client.keys {
        ClientKeys::Inline(keys) => verify_with(keys, kid, alg, &jws),
        ClientKeys::Remote(_) => match issuer.client_jwks(&client.client_id) {
            Some(remote) => {
                let set = remote.keys_for(kid, alg).await;
                verify_with(&set.keys, kid, alg, &jws)
            }
            None => false,
        },
        ClientKeys::None => false,
    };
    if !verified {
        return Err(OAuthError::invalid_client(
            "client_assertion signature does not verify with the client's keys",
        ));
    }
    let jti = claims.jti.unwrap_or_default();
    let exp = claims.exp.unwrap_or(now);
    if !issuer
        .core
        .store
        .use_once("client_assertion", &client.client_id, &jti, exp, now)
        .await?
    {
        return Err(OAuthError::invalid_client(
            "client_assertion was used before (jti)",
        ));
    }
    Ok(client)
}

/// `aud`, `exp`, `iat`, `nbf` and the presence of `jti`.
fn check_assertion_claims(
    issuer: &Issuer,
    claims: &AssertionClaims,
    endpoint_url: &str,
    now: i64,
) -> Result<(), OAuthError> {
    let model = &issuer.model;
    let token_endpoint = format!("{}oauth/token", model.base_url);
    let ours = |aud: &str| {
        aud == model.issuer || aud == model.base_url || aud == token_endpoint || aud == endpoint_url
    };
    let aud_ok = match &claims.aud {
        Some(Value::String(aud)) => ours(aud),
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(ours),
        _ => false,
    };
    if !aud_ok {
        return Err(OAuthError::invalid_client(
            "client_assertion aud must name this issuer or its token endpoint",
        ));
    }
    let Some(exp) = claims.exp else {
        return Err(OAuthError::invalid_client("client_assertion has no exp"));
    };
    if exp <= now {
        return Err(OAuthError::invalid_client("client_assertion has expired"));
    }
    if exp > now + MAX_ASSERTION_LIFETIME.as_secs() as i64 {
        return Err(OAuthError::invalid_client(
            "client_assertion exp is too far ahead (at most 5 minutes)",
        ));
    }
    if claims.iat.is_some_and(|iat| iat > now + SKEW)
        || claims.nbf.is_some_and(|nbf| nbf > now + SKEW)
    {
        return Err(OAuthError::invalid_client(
            "client_assertion is not valid yet (iat or nbf)",
        ));
    }
    if claims
        .jti
        .as_deref()
        .is_none_or(|jti| jti.is_empty() || jti.len() > 256)
    {
        return Err(OAuthError::invalid_client(
            "client_assertion has no usable jti",
        ));
    }
    Ok(())
}

/// True if one of `keys` (the one named `kid`, if given) verifies the assertion.
fn verify_with(
    keys: &[crate::jose::VerifyKey],
    kid: Option<&str>,
    alg: Alg,
    jws: &Jws<'_>,
) -> bool {
    keys.iter()
        .filter(|key| kid.is_none() || key.kid.as_deref() == kid)
        .any(|key| key.verify(alg, jws.signing_input.as_bytes(), &jws.signature))
}

/// `Authorization: Basic` credentials, form-decoded; `None` without that header.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(OAuthError::invalid_request(
            "more than one Authorization header",
        ));
    }
    let bytes = value.as_bytes();
    let Some(space) = bytes.iter().position(|&b| b == b' ') else {
        return Err(failed());
    };
    if !bytes[..space].eq_ignore_ascii_case(b"basic") {
        return Err(OAuthError::invalid_client(
            "the token endpoint takes Basic client credentials, not this Authorization scheme",
        ));
    }
    let decoded = STANDARD
        .decode(bytes[space + 1..].trim_ascii())
        .map_err(|_| failed())?;
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return Err(failed());
    };
    let id = decode(&decoded[..colon]).map_err(|_| failed())?;
    let secret = decode(&decoded[colon + 1..]).map_err(|_| failed())?;
    if id.is_empty() {
        return Err(failed());
    }
    Ok(Some((id, secret)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn model() -> Model {
        let yaml = "issuer:\n  url: https://id.example.com/\n  apis: [{ identifier: api }]\n  clients:\n    - { client_id: c, client_secret: 'p@ss word:%', grant_types: [client_credentials] }\n    - { client_id: pub, grant_types: [password] }\n";
        let config = Config::from_yaml_with_env(yaml, |_| None).unwrap();
        Model::new(config.issuer.as_ref().unwrap())
    }

    fn basic(credentials: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode(credentials));
        headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let model = model();
        let form = Form::default();
        let ok = by_secret(
            &model,
            &basic("c:p%40ss+word%3A%25"),
            &form,
            Requirement::Confidential,
        );
        assert_eq!(ok.unwrap().client_id, "c");
        let wrong =
            by_secret(&model, &basic("c:p@ss"), &form, Requirement::Confidential).unwrap_err();
        assert_eq!(wrong.code, crate::error::OAuthCode::InvalidClient);
        let by_form = |form: &[u8], requirement| {
            let form = Form::parse(form).unwrap();
            by_secret(&model, &HeaderMap::new(), &form, requirement).is_ok()
        };
        assert!(by_form(b"client_id=pub", Requirement::AnyClient));
        assert!(!by_form(b"client_id=pub", Requirement::Confidential));
        assert!(!by_form(
            b"client_id=pub&client_secret=x",
            Requirement::AnyClient
        ));
    }
}
