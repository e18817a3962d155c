//! Making tokens: scope decisions (Auth0 RBAC), access tokens (`typ: at+jwt`), ID tokens,
//! refresh tokens. Claims are serialized straight from borrowed structs; the signing key
//! is the parsed one in memory. Shared by every grant and by `/authorize` (implicit).

use std::collections::HashSet;

use serde::Serialize;
use serde_json::{Map, Value};

use super::Issuer;
use super::model::{Api, Client, Model, User};
use super::store::{Family, secret_hash};
use crate::config::issuer::GrantType;
use crate::error::OAuthError;
use crate::jose::{Alg, b64url};

pub const OIDC_SCOPES: [&str; 3] = ["openid", "profile", "email"];
pub const OFFLINE_ACCESS: &str = "offline_access";

/// Random bytes as base64url (jti, refresh tokens, family ids).
pub fn random_token(bytes: usize) -> Result<String, OAuthError> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| {
        tracing::error!("the system random generator failed");
        OAuthError::server_error()
    })?;
    Ok(b64url(&buf))
}

/// The requested scopes: `scope` split on spaces, each a valid scope token, duplicates
/// dropped.
///
/// ```
/// use scopegate::issuer::mint::requested_scopes;
/// assert_eq!(requested_scopes(Some("openid  read:a openid")).unwrap(), ["openid", "read:a"]);
/// assert!(requested_scopes(Some("bad\"scope")).is_err());
/// ```
pub fn requested_scopes(scope: Option<&str>) -> Result<Vec<&str>, OAuthError> {
    let Some(scope) = scope else {
        return Ok(Vec::new());
    };
    let mut out: Vec<&str> = Vec::new();
    for token in scope.split(' ').filter(|t| !t.is_empty()) {
        if !token
            .bytes()
            .all(|b| b > 0x20 && b < 0x7f && b != b'"' && b != b'\\')
        {
            return Err(OAuthError::new(
                crate::error::OAuthCode::InvalidScope,
                "scope holds characters a scope cannot have",
            ));
        }
        if !out.contains(&token) {
            out.push(token);
        }
    }
    Ok(out)
}

/// The API a request names by `audience` (Auth0) or `resource` (RFC 8707), else
/// `issuer.default_audience`; `None` means a token good for `/userinfo` only.
pub fn resolve_audience<'m>(
    model: &'m Model,
    form: &super::form::Form,
) -> Result<Option<&'m Api>, OAuthError> {
    let audience = form.get("audience");
    let resources = distinct_resources(form);
    if resources.len() > 1 {
        return Err(OAuthError::new(
            crate::error::OAuthCode::InvalidTarget,
            "several resources in one request are supported by the password and client_credentials grants only",
        ));
    }
    let resource = resources.first().copied();
    if let (Some(a), Some(r)) = (audience, resource)
        && a != r
    {
        return Err(OAuthError::invalid_request(
            "audience and resource name different APIs",
        ));
    }
    let Some(chosen) = audience.or(resource).or(model.default_audience.as_deref()) else {
        return Ok(None);
    };
    model.apis.get(chosen).map(Some).ok_or_else(|| {
        OAuthError::new(
            crate::error::OAuthCode::InvalidTarget,
            "no API has this identifier (audience)",
        )
    })
}

/// The `resource` values of a request, duplicates dropped.
fn distinct_resources(form: &super::form::Form) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for resource in form.get_all("resource") {
        if !out.contains(&resource) {
            out.push(resource);
        }
    }
    out
}

/// The APIs a request names: several `resource`s (RFC 8707 §2), each a known API
/// (else `invalid_target`), `audience` if sent being one of them; or what
/// [`resolve_audience`] finds (none, or one).
pub fn resolve_audiences<'m>(
    model: &'m Model,
    form: &super::form::Form,
) -> Result<Vec<&'m Api>, OAuthError> {
    let resources = distinct_resources(form);
    if resources.len() <= 1 {
        return Ok(resolve_audience(model, form)?.into_iter().collect());
    }
    if let Some(audience) = form.get("audience")
        && !resources.contains(&audience)
    {
        return Err(OAuthError::invalid_request(
            "audience and resource name different APIs",
        ));
    }
    resources
        .into_iter()
        .map(|id| {
            model.apis.get(id).ok_or_else(|| {
                OAuthError::new(
                    crate::error::OAuthCode::InvalidTarget,
                    "no API has this identifier (resource)",
                )
            })
        })
        .collect()
}

/// With several APIs (RFC 8707 §2): every requested scope other than the OpenID and
/// `offline_access` ones must be defined by at least one of them, else `invalid_target`
/// (the scopes do not fit the resources).
pub fn check_scopes_across(apis: &[&Api], requested: &[&str]) -> Result<(), OAuthError> {
    let known = |scope: &str| {
        OIDC_SCOPES.contains(&scope)
            || scope == OFFLINE_ACCESS
            || apis.iter().any(|a| a.scopes.iter().any(|s| s == scope))
    };
    if requested.iter().all(|s| known(s)) {
        Ok(())
    } else {
        Err(OAuthError::new(
            crate::error::OAuthCode::InvalidTarget,
            "a requested scope is defined by none of the requested resources",
        ))
    }
}

/// The API a request names explicitly (`audience` or `resource`), without falling back
/// to `issuer.default_audience`.
pub fn resolve_audience_explicit<'m>(
    model: &'m Model,
    form: &super::form::Form,
) -> Result<Option<&'m Api>, OAuthError> {
    if form.get("audience").is_none() && form.get("resource").is_none() {
        return Ok(None);
    }
    resolve_audience(model, form)
}

/// What a grant decided to issue.
#[derive(Debug, Clone, Default)]
pub struct Granted<'m> {
    pub openid: bool,
    pub profile: bool,
    pub email: bool,
    pub offline_access: bool,
    /// API scopes, in the API's order.
    pub api_scopes: Vec<&'m str>,
}

impl Granted<'_> {
    /// The `scope` string: OIDC scopes, API scopes, then `offline_access`.
    pub fn scope_string(&self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        for (on, name) in [
            (self.openid, "openid"),
            (self.profile, "profile"),
            (self.email, "email"),
        ] {
            if on {
                parts.push(name);
            }
        }
        parts.extend(self.api_scopes.iter().copied());
        if self.offline_access {
            parts.push(OFFLINE_ACCESS);
        }
        parts.join(" ")
    }
}

/// Auth0 RBAC for a user: requested ∩ defined by the API ∩ granted by the user's roles;
/// OIDC scopes as requested; `offline_access` only where the API allows it and the client
/// may refresh.
pub fn user_grant<'m>(
    model: &'m Model,
    user: &User,
    client: &Client,
    api: Option<&'m Api>,
    requested: &[&str],
) -> Granted<'m> {
    let asked = |s: &str| requested.contains(&s);
    let api_scopes = match api {
        Some(api) => {
            let allowed = model.role_scopes(user, &api.identifier);
            api.scopes
                .iter()
                .map(String::as_str)
                .filter(|s| asked(s) && allowed.contains(s))
                .collect()
        }
        None => Vec::new(),
    };
    Granted {
        openid: asked("openid"),
        profile: asked("profile"),
        email: asked("email"),
        offline_access: asked(OFFLINE_ACCESS)
            && api.is_some_and(|a| a.allow_offline_access)
            && client.may_use(GrantType::RefreshToken),
        api_scopes,
    }
}

/// Parses a stored or token `scope` string back into a grant (scopes still defined).
pub fn parse_granted<'m>(scope: &str, api: Option<&'m Api>) -> Granted<'m> {
    let words: HashSet<&str> = scope.split_ascii_whitespace().collect();
    Granted {
        openid: words.contains("openid"),
        profile: words.contains("profile"),
        email: words.contains("email"),
        offline_access: words.contains(OFFLINE_ACCESS),
        api_scopes: api
            .map(|api| {
                api.scopes
                    .iter()
                    .map(String::as_str)
                    .filter(|s| words.contains(s))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Who a token is about.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// `client_credentials`: `sub` is `<client_id>@clients`.
    Machine,
    User(&'a User),
    /// Another client's machine identity (`<client_id>@clients`), kept through a token
    /// exchange by a different client.
    MachineOf(&'a str),
}

#[derive(Serialize)]
#[serde(untagged)]
enum Aud<'a> {
    One(&'a str),
    Two([&'a str; 2]),
    Many(Vec<&'a str>),
}

#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: Aud<'a>,
    azp: &'a str,
    client_id: &'a str,
    iat: i64,
    exp: i64,
    jti: &'a str,
    scope: &'a str,
    /// The DPoP key the token is bound to (RFC 9449 §6.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<Cnf<'a>>,
}

#[derive(Serialize)]
struct Cnf<'a> {
    jkt: &'a str,
}

#[derive(Serialize)]
struct IdClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
    auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    at_hash: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    c_hash: Option<&'a str>,
}

/// An issued access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: String,
    pub expires_in: u64,
    pub jti: String,
    pub expires_at: i64,
    /// Bound to a DPoP key (`cnf.jkt`): its `token_type` is `DPoP`.
    pub bound: bool,
}

/// Appends `extra` members to a serialized JSON object.
fn with_extra(mut json: Vec<u8>, extra: &Map<String, Value>) -> Result<Vec<u8>, serde_json::Error> {
    if extra.is_empty() {
        return Ok(json);
    }
    json.pop(); // the closing brace
    for (name, value) in extra {
        json.push(b',');
        serde_json::to_writer(&mut json, name)?;
        json.push(b':');
        serde_json::to_writer(&mut json, value)?;
    }
    json.push(b'}');
    Ok(json)
}

fn signing_failed(err: impl std::fmt::Display) -> OAuthError {
    tracing::error!(error = %err, "issuing a token failed");
    OAuthError::server_error()
}

/// A user's profile field for a custom claim: `roles`, `username`, `email`,
/// `email_verified`, `name`, else a `user_metadata` field.
pub fn user_field(user: &User, field: &str) -> Option<Value> {
    let c = &user.config;
    match field {
        "roles" => Some(Value::from(c.roles.clone())),
        "username" => Some(Value::from(c.username.clone())),
        "email" => c.email.clone().map(Value::from),
        "email_verified" => Some(Value::from(c.email_verified)),
        "name" => c.name.clone().map(Value::from),
        _ => c.user_metadata.get(field).cloned(),
    }
}

/// The namespaced custom claims of `issuer.claims.<which>` for a user.
pub fn custom_claims(model: &Model, user: &User, id_token: bool) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(claims) = &model.claims {
        let fields = if id_token {
            &claims.id_token
        } else {
            &claims.access_token
        };
        for field in fields {
            if let Some(value) = user_field(user, field) {
                out.insert(format!("{}{field}", claims.namespace), value);
            }
        }
    }
    out
}

/// Profile and email claims by scope (for ID tokens and `/userinfo`).
pub fn profile_claims(user: &User, profile: bool, email: bool, out: &mut Map<String, Value>) {
    let c = &user.config;
    if profile {
        out.insert("preferred_username".into(), Value::from(c.username.clone()));
        out.insert("nickname".into(), Value::from(c.username.clone()));
        if let Some(name) = &c.name {
            out.insert("name".into(), Value::from(name.clone()));
        }
    }
    if email && let Some(address) = &c.email {
        out.insert("email".into(), Value::from(address.clone()));
        out.insert("email_verified".into(), Value::from(c.email_verified));
    }
}

/// `at_hash` (and `c_hash`, the same over the code): the left half of the hash of the
/// access token, with the hash of the ID token's algorithm (SHA-512 for Ed25519).
pub fn at_hash(alg: Alg, access_token: &str) -> String {
    let algorithm = match alg {
        Alg::EdDSA | Alg::RS512 | Alg::PS512 => &aws_lc_rs::digest::SHA512,
        Alg::RS384 | Alg::PS384 | Alg::ES384 => &aws_lc_rs::digest::SHA384,
        _ => &aws_lc_rs::digest::SHA256,
    };
    let digest = aws_lc_rs::digest::digest(algorithm, access_token.as_bytes());
    let bytes = digest.as_ref();
    b64url(&bytes[..bytes.len() / 2])
}

/// The lifetime of access tokens for `api` (or for `/userinfo` only).
pub fn access_ttl(model: &Model, api: Option<&Api>) -> u64 {
    api.map_or(model.access_ttl, |a| a.access_ttl).as_secs()
}

/// Signs an access token for `client` about `subject`, good for `api` (or for
/// `/userinfo` only), with `scope`. Its `jti` is new, unless one was chosen beforehand
/// (the code grant records it before the token exists, so a replay can revoke it). With
/// `jkt` (a DPoP key's thumbprint) it is bound to that key.
#[allow(clippy::too_many_arguments)]
pub fn access_token(
    issuer: &Issuer,
    client: &Client,
    subject: Subject<'_>,
    api: Option<&Api>,
    scope: &str,
    openid: bool,
    jti: Option<String>,
    jkt: Option<&str>,
) -> Result<AccessToken, OAuthError> {
    let model = &issuer.model;
    let aud = match api {
        Some(api) if openid => Aud::Two([&api.identifier, &model.userinfo_url]),
        Some(api) => Aud::One(&api.identifier),
        None => Aud::One(&model.userinfo_url),
    };
    let ttl = access_ttl(model, api);
    sign_access(issuer, client, subject, aud, ttl, scope, jti, jkt)
}

/// [`access_token`] good for several APIs at once (RFC 8707 §2): `aud` is their
/// identifiers (and `/userinfo` with `openid`); the lifetime the shortest of theirs.
pub fn access_token_for_apis(
    issuer: &Issuer,
    client: &Client,
    subject: Subject<'_>,
    apis: &[&Api],
    scope: &str,
    openid: bool,
    jkt: Option<&str>,
) -> Result<AccessToken, OAuthError> {
    let model = &issuer.model;
    let mut auds: Vec<&str> = apis.iter().map(|a| a.identifier.as_str()).collect();
    if openid {
        auds.push(&model.userinfo_url);
    }
    let ttl = apis
        .iter()
        .map(|a| access_ttl(model, Some(a)))
        .min()
        .unwrap_or_else(|| access_ttl(model, None));
    sign_access(
        issuer,
        client,
        subject,
        Aud::Many(auds),
        ttl,
        scope,
        None,
        jkt,
    )
}

#[allow(clippy::too_many_arguments)]
fn sign_access(
    issuer: &Issuer,
    client: &Client,
    subject: Subject<'_>,
    aud: Aud<'_>,
    ttl: u64,
    scope: &str,
    jti: Option<String>,
    jkt: Option<&str>,
) -> Result<AccessToken, OAuthError> {
    let jti = match jti {
        Some(jti) => jti,
        None => random_token(16)?,
    };
    let model = &issuer.model;
    let now = issuer.now();
    let machine_sub;
    let sub = match subject {
        Subject::Machine => {
            machine_sub = format!("{}@clients", client.client_id);
            machine_sub.as_str()
        }
        Subject::User(user) => user.subject.as_str(),
        Subject::MachineOf(client_id) => {
            machine_sub = format!("{client_id}@clients");
            machine_sub.as_str()
        }
    };
    let claims = AccessClaims {
        iss: &model.issuer,
        sub,
        aud,
        azp: &client.client_id,
        client_id: &client.client_id,
        iat: now,
        exp: now + ttl as i64,
        jti: &jti,
        scope,
        cnf: jkt.map(|jkt| Cnf { jkt }),
    };
    let mut json = serde_json::to_vec(&claims).map_err(signing_failed)?;
    if let Subject::User(user) = subject {
        json = with_extra(json, &custom_claims(model, user, false)).map_err(signing_failed)?;
    }
    let key = issuer.core.keys.active();
    let token = key
        .sign(&key.access_header, &json)
        .map_err(signing_failed)?;
    Ok(AccessToken {
        token,
        expires_in: ttl,
        jti,
        expires_at: now + ttl as i64,
        bound: jkt.is_some(),
    })
}

/// What an ID token is made of.
#[derive(Debug, Clone, Copy)]
pub struct IdToken<'a> {
    pub client: &'a Client,
    pub user: &'a User,
    pub granted: &'a Granted<'a>,
    pub auth_time: i64,
    pub nonce: Option<&'a str>,
    /// The access token issued with it, for `at_hash`.
    pub access_token: Option<&'a str>,
    /// The authorization code it travels with (`response_type=code id_token`), for
    /// `c_hash`.
    pub code: Option<&'a str>,
}

/// Signs an ID token.
pub fn id_token(issuer: &Issuer, id: IdToken<'_>) -> Result<String, OAuthError> {
    let model = &issuer.model;
    let now = issuer.now();
    let key = issuer.core.keys.id_token_key(id.client.id_token_alg);
    let hash = id.access_token.map(|t| at_hash(key.alg, t));
    let c_hash = id.code.map(|c| at_hash(key.alg, c));
    let claims = IdClaims {
        iss: &model.issuer,
        sub: &id.user.subject,
        aud: &id.client.client_id,
        iat: now,
        exp: now + model.id_ttl.as_secs() as i64,
        auth_time: id.auth_time,
        nonce: id.nonce,
        at_hash: hash.as_deref(),
        c_hash: c_hash.as_deref(),
    };
    let mut extra = Map::new();
    profile_claims(id.user, id.granted.profile, id.granted.email, &mut extra);
    extra.extend(custom_claims(model, id.user, true));
    let json = with_extra(serde_json::to_vec(&claims).map_err(signing_failed)?, &extra)
        .map_err(signing_failed)?;
    key.sign(&key.id_header, &json).map_err(signing_failed)
}

/// Starts a refresh-token family (with the id `family_id`, from
/// [`random_token`]`(16)`) and returns its first token. A public client's family is
/// bound to the DPoP key `jkt`, if any (RFC 9449 §5).
#[allow(clippy::too_many_arguments)]
pub async fn refresh_token(
    issuer: &Issuer,
    client: &Client,
    user: &User,
    api: Option<&Api>,
    scope: &str,
    auth_time: i64,
    family_id: String,
    jkt: Option<&str>,
) -> Result<String, OAuthError> {
    let now = issuer.now();
    let token = random_token(32)?;
    let family = Family {
        id: family_id,
        client_id: client.client_id.clone(),
        subject: user.subject.clone(),
        audience: api.map(|a| a.identifier.clone()),
        scope: scope.to_string(),
        auth_time,
        created_at: now,
        dpop_jkt: jkt.filter(|_| client.is_public()).map(str::to_string),
    };
    let expires_at = now + issuer.model.refresh_ttl.as_secs() as i64;
    issuer
        .core
        .store
        .create_family(&family, &secret_hash(&token), expires_at)
        .await?;
    Ok(token)
}

/// What the gateway asks of the built-in issuer for a route's `upstream_token`: a token
/// for `audience` on behalf of the caller (RFC 8693 semantics, in process).
#[derive(Debug, Clone, Copy)]
pub struct OnBehalf<'a> {
    /// The caller's `sub` and client, as verified.
    pub subject: &'a str,
    pub client_id: Option<&'a str>,
    pub audience: &'a str,
    /// Already narrowed to what the caller holds and the route asks.
    pub scope: &'a str,
    /// The caller's token's `exp`: the new token lives no longer.
    pub not_after: i64,
}

/// The `act` claim of tokens the gateway obtains on a caller's behalf (RFC 8693 §4.1).
pub const GATEWAY_ACTOR: &str = "scopegate";

#[derive(Serialize)]
struct OnBehalfClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    azp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    iat: i64,
    exp: i64,
    jti: &'a str,
    scope: &'a str,
    act: Actor<'a>,
}

#[derive(Serialize)]
struct Actor<'a> {
    sub: &'a str,
}

/// Signs an access token for `request.audience` on behalf of the caller, with `act`
/// naming the gateway, living the API's access-token lifetime or until the caller's
/// token expires, whichever comes first.
pub fn on_behalf(issuer: &Issuer, request: OnBehalf<'_>) -> Result<AccessToken, OAuthError> {
    let api = issuer.model.apis.get(request.audience).ok_or_else(|| {
        OAuthError::new(
            crate::error::OAuthCode::InvalidTarget,
            "the upstream token's audience is not an API of this issuer",
        )
    })?;
    let now = issuer.now();
    let expires_at = (now + access_ttl(&issuer.model, Some(api)) as i64).min(request.not_after);
    if expires_at <= now {
        return Err(OAuthError::invalid_grant("the caller's token has expired"));
    }
    let jti = random_token(16)?;
    let claims = OnBehalfClaims {
        iss: &issuer.model.issuer,
        sub: request.subject,
        aud: &api.identifier,
        azp: request.client_id,
        client_id: request.client_id,
        iat: now,
        exp: expires_at,
        jti: &jti,
        scope: request.scope,
        act: Actor { sub: GATEWAY_ACTOR },
    };
    let json = serde_json::to_vec(&claims).map_err(signing_failed)?;
    let key = issuer.core.keys.active();
    let token = key
        .sign(&key.access_header, &json)
        .map_err(signing_failed)?;
    Ok(AccessToken {
        token,
        expires_in: (expires_at - now) as u64,
        jti,
        expires_at,
        bound: false,
    })
}
