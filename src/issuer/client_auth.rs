//! Client authentication at the token, revocation and introspection endpoints:
//! `client_secret_basic` (RFC 6749 §2.3.1, form-encoded id and secret inside Basic),
//! `client_secret_post` (`client_id` + `client_secret` in the form), and `none` for
//! public clients (`client_id` only). One method per request. Secrets are compared as
//! SHA-256 digests in constant time, so neither content nor length leaks through timing.
//! Every failure is `invalid_client` (401 with a `Basic` challenge).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use subtle::ConstantTimeEq;

use super::form::{Form, decode};
use super::model::{Client, Model, digest};
use crate::error::OAuthError;

/// How a request may authenticate its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Confidential clients prove their secret; public clients name themselves (`none`).
    SecretOrPublic,
    /// Only a client with a secret, which it proves (introspection).
    Secret,
}

fn failed() -> OAuthError {
    OAuthError::invalid_client("client authentication failed")
}

/// Authenticates the request's client.
pub fn authenticate<'m>(
    model: &'m Model,
    headers: &HeaderMap,
    form: &Form,
    requirement: Requirement,
) -> Result<&'m Client, OAuthError> {
    let basic = basic_credentials(headers)?;
    let (client_id, secret) = match basic {
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
            (id, Some(secret))
        }
        None => match form.get("client_id") {
            Some(id) => (
                id.to_string(),
                form.get("client_secret").map(str::to_string),
            ),
            None => {
                return Err(OAuthError::invalid_client(
                    "no client authentication: send client_id (and the secret, by Basic or client_secret)",
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
    match (&client.secret_digest, secret) {
        (Some(expected), Some(secret)) => {
            if bool::from(digest(&secret).ct_eq(expected)) {
                Ok(client)
            } else {
                Err(failed())
            }
        }
        (Some(_), None) => Err(OAuthError::invalid_client(
            "this client must authenticate with its secret",
        )),
        (None, Some(_)) => Err(OAuthError::invalid_client(
            "this is a public client: it has no secret to send",
        )),
        (None, None) if requirement == Requirement::Secret => Err(OAuthError::invalid_client(
            "this endpoint needs a confidential client",
        )),
        (None, None) => Ok(client),
    }
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
        let ok = authenticate(
            &model,
            &basic("c:p%40ss+word%3A%25"),
            &form,
            Requirement::Secret,
        );
        assert_eq!(ok.unwrap().client_id, "c");
        let wrong = authenticate(&model, &basic("c:p@ss"), &form, Requirement::Secret).unwrap_err();
        assert_eq!(wrong.code, crate::error::OAuthCode::InvalidClient);
        let by_form = |form: &[u8], requirement| {
            let form = Form::parse(form).unwrap();
            authenticate(&model, &HeaderMap::new(), &form, requirement).is_ok()
        };
        assert!(by_form(b"client_id=pub", Requirement::SecretOrPublic));
        assert!(!by_form(b"client_id=pub", Requirement::Secret));
        assert!(!by_form(
            b"client_id=pub&client_secret=x",
            Requirement::SecretOrPublic
        ));
    }
}
