//! `/.well-known/openid-configuration` (OpenID Connect Discovery) and
//! `/.well-known/oauth-authorization-server` (RFC 8414): every endpoint, grant, response
//! type, client authentication method (with `private_key_jwt`'s algorithms) and signing
//! algorithm (ID tokens: the issuer's, and RS256 always), the PAR endpoint (RFC 9126 §5)
//! and DPoP's proof algorithms (RFC 9449 §5.1). Built once per
//! configuration; served with a short public cache lifetime, as is the JWKS.

use bytes::Bytes;
use http::header::ACCESS_CONTROL_ALLOW_ORIGIN;
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::client_auth::ASSERTION_ALGS;
use super::model::Model;
use crate::config::issuer::GrantType;
use crate::http::{Body, JSON, with_headers};
use crate::jose::Alg;

/// How long clients may cache discovery documents and the JWKS. Short, so a rotated key
/// is picked up quickly (verifiers refetch on an unknown `kid` anyway).
pub const CACHE_CONTROL: &str = "public, max-age=300";
pub const JWKS_CACHE_CONTROL: &str = "public, max-age=60";

/// The two metadata documents, serialized.
#[derive(Debug, Clone)]
pub struct Documents {
    pub openid: Bytes,
    pub oauth: Bytes,
}

pub fn documents(model: &Model, alg: Alg) -> Documents {
    let url = |path: &str| format!("{}{}", model.base_url, path.trim_start_matches('/'));
    let mut scopes: Vec<Value> = ["openid", "profile", "email", "offline_access"]
        .into_iter()
        .map(Value::from)
        .collect();
    for id in &model.api_order {
        if let Some(api) = model.apis.get(id) {
            for scope in &api.scopes {
                if !scopes.iter().any(|s| s == scope) {
                    scopes.push(Value::from(scope.clone()));
                }
            }
        }
    }
    // RS256 is always there for ID tokens (OpenID Connect Core §15.1).
    let id_token_algs: Vec<&str> = if alg == Alg::RS256 {
        vec!["RS256"]
    } else {
        vec![alg.name(), "RS256"]
    };
    let auth_methods = json!([
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "none"
    ]);
    let assertion_algs: Vec<&str> = ASSERTION_ALGS.iter().map(|a| a.name()).collect();
    let dpop_algs: Vec<&str> = crate::jose::dpop::PROOF_ALGS
        .iter()
        .map(|a| a.name())
        .collect();
    let mut doc = json!({
        "issuer": model.issuer,
        "authorization_endpoint": url("/authorize"),
        "token_endpoint": url("/oauth/token"),
        "userinfo_endpoint": url("/userinfo"),
        "jwks_uri": url("/.well-known/jwks.json"),
        "revocation_endpoint": url("/oauth/revoke"),
        "introspection_endpoint": url("/oauth/introspect"),
        "device_authorization_endpoint": url("/oauth/device/code"),
        "end_session_endpoint": url("/logout"),
        "scopes_supported": scopes,
        "response_types_supported": ["code", "token", "id_token", "id_token token", "code id_token"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "authorization_response_iss_parameter_supported": true,
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "grant_types_supported": GrantType::ALL.map(GrantType::as_str),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": id_token_algs,
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "introspection_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "pushed_authorization_request_endpoint": url("/oauth/par"),
        "require_pushed_authorization_requests": false,
        "dpop_signing_alg_values_supported": dpop_algs,
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": [
            "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "c_hash", "azp",
            "name", "nickname", "preferred_username", "email", "email_verified",
        ],
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "claims_parameter_supported": false,
    });
    let openid = Bytes::from(doc.to_string());
    // RFC 8414 lists the same; the OIDC-only members are harmless there.
    if let Some(object) = doc.as_object_mut() {
        object.remove("subject_types_supported");
    }
    Documents {
        openid,
        oauth: Bytes::from(doc.to_string()),
    }
}

/// A JSON document answer with a cache lifetime.
pub fn json_document(body: Bytes, cache_control: &'static str) -> Response<Body> {
    with_headers(
        StatusCode::OK,
        body,
        &[
            JSON,
            (http::header::CACHE_CONTROL, cache_control),
            (ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
    )
}
