//! The `issuer:` section: the built-in OAuth 2.0 / OpenID Connect server, in the
//! Auth0 model (APIs with scopes, roles granting scopes per API, clients, users).
//!
//! Cross-references are checked here, once: a role naming an unknown API or scope, a
//! client grant to an undefined scope, a user with an unknown role, duplicates.

use std::collections::{BTreeMap, HashSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, Dur, check_url};

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub url: String,
    #[serde(default = "default_store")]
    pub store: String,
    #[serde(default)]
    pub default_audience: Option<String>,
    #[serde(default)]
    pub login: LoginConfig,
    #[serde(default)]
    pub device: DeviceConfig,
    #[serde(default)]
    pub throttle: ThrottleConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub session: SessionConfig,
    #[serde(default)]
    pub par: ParConfig,
    #[serde(default)]
    pub dpop: DpopConfig,
    /// How long after a refresh token is spent a parallel redemption of it still gets a
    /// valid pair instead of revoking its family (`0s`: never).
    #[serde(default = "default_refresh_grace")]
    pub refresh_grace: Dur,
    #[serde(default)]
    pub tokens: TokensConfig,
    #[serde(default)]
    pub apis: Vec<ApiConfig>,
    #[serde(default)]
    pub roles: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub claims: Option<ClaimsConfig>,
}

fn default_refresh_grace() -> Dur {
    Dur::secs(5)
}

/// `issuer.session`: the browser session at the issuer.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// How long a session lasts after sign-in (absolute, not sliding).
    pub lifetime: Dur,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            lifetime: Dur::secs(24 * 3600),
        }
    }
}

/// `issuer.par`: pushed authorization requests (RFC 9126).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ParConfig {
    /// How long a pushed request's `request_uri` may be redeemed at `/authorize`.
    pub ttl: Dur,
}

impl Default for ParConfig {
    fn default() -> Self {
        ParConfig { ttl: Dur::secs(60) }
    }
}

/// `issuer.dpop`: DPoP at the token endpoint (RFC 9449).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DpopConfig {
    /// Proofs must carry a nonce the issuer gave out (`DPoP-Nonce`, RFC 9449 §8), so a
    /// proof cannot be made ahead of time; a proof without one is answered
    /// `use_dpop_nonce` with a fresh nonce.
    pub require_nonce: bool,
}

fn yes() -> bool {
    true
}
fn default_store() -> String {
    "sqlite://scopegate.db".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    pub title: String,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            title: "Scopegate".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    pub interval: Dur,
    pub ttl: Dur,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            interval: Dur::secs(5),
            ttl: Dur::secs(600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    pub max_failures: u32,
    pub window: Dur,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            max_failures: 5,
            window: Dur::secs(900),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum SigningAlg {
    RS256,
    ES256,
    EdDSA,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    pub algorithm: SigningAlg,
    pub rotate_after: Dur,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            algorithm: SigningAlg::RS256,
            rotate_after: Dur::secs(30 * 86_400),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    pub access_ttl: Dur,
    pub id_ttl: Dur,
    pub refresh_ttl: Dur,
    pub code_ttl: Dur,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            access_ttl: Dur::secs(3600),
            id_ttl: Dur::secs(36_000),
            refresh_ttl: Dur::secs(30 * 86_400),
            code_ttl: Dur::secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub identifier: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub scopes: Vec<ScopeConfig>,
    #[serde(default)]
    pub allow_offline_access: bool,
    #[serde(default)]
    pub access_ttl: Option<Dur>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    pub value: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub grant_types: Vec<GrantType>,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    #[serde(default)]
    pub grants: BTreeMap<String, Vec<String>>,
    /// The one way this client authenticates (RFC 7591 §2); unset: with its secret
    /// (Basic or form) when it has one, else `none`.
    #[serde(default)]
    pub token_endpoint_auth_method: Option<ClientAuthMethod>,
    /// The client's public keys, inline (for `private_key_jwt`).
    #[serde(default)]
    pub jwks: Option<ClientJwks>,
    /// Where the client publishes its public keys (for `private_key_jwt`); fetched and
    /// cached, refetched for an unknown `kid`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// `/authorize` only with a `request_uri` from `/oauth/par` (RFC 9126 §6).
    #[serde(default)]
    pub require_pushed_authorization_requests: bool,
    /// Tokens only with a DPoP proof (RFC 9449 §5.2).
    #[serde(default)]
    pub dpop_bound_access_tokens: bool,
    /// The algorithm of this client's ID tokens: `RS256`, or the issuer's
    /// `keys.algorithm` (the default).
    #[serde(default)]
    pub id_token_signed_response_alg: Option<SigningAlg>,
}

/// How a client authenticates at the token endpoint (and every endpoint that
/// authenticates clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
    None,
}

impl ClientAuthMethod {
    /// The registered name (RFC 7591 §2, OIDC Core §9).
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
            ClientAuthMethod::PrivateKeyJwt => "private_key_jwt",
            ClientAuthMethod::None => "none",
        }
    }
}

/// `clients[].jwks`: a JWK Set (public keys only).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientJwks {
    pub keys: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    #[serde(default)]
    pub id: Option<String>,
    pub username: String,
    pub password_hash: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub user_metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimsConfig {
    pub namespace: String,
    #[serde(default)]
    pub id_token: Vec<String>,
    #[serde(default)]
    pub access_token: Vec<String>,
}

/// An OAuth grant type, parsed once where its name enters: `clients[].grant_types` in
/// the config ([`GrantType::from_config_name`], RFC names and the short aliases
/// `device_code` and `token_exchange`) or the token endpoint's `grant_type` field
/// ([`GrantType::from_rfc_name`], RFC names only). [`GrantType::as_str`] gives the RFC
/// name, which is also the `grant_type` label of the issuer's metrics.
///
/// ```
/// use scopegate::config::issuer::GrantType;
/// assert_eq!(GrantType::from_config_name("device_code"), Some(GrantType::DeviceCode));
/// assert_eq!(GrantType::from_rfc_name("device_code"), None);
/// assert_eq!(
///     GrantType::TokenExchange.as_str(),
///     "urn:ietf:params:oauth:grant-type:token-exchange"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantType {
    AuthorizationCode,
    /// Tokens straight from `/authorize`; never a `grant_type` at the token endpoint.
    Implicit,
    Password,
    ClientCredentials,
    RefreshToken,
    DeviceCode,
    TokenExchange,
}

impl GrantType {
    /// Every grant type, in the order discovery lists them.
    pub const ALL: [GrantType; 7] = [
        GrantType::AuthorizationCode,
        GrantType::Implicit,
        GrantType::Password,
        GrantType::ClientCredentials,
        GrantType::RefreshToken,
        GrantType::DeviceCode,
        GrantType::TokenExchange,
    ];

    /// The RFC name.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::Implicit => "implicit",
            GrantType::Password => "password",
            GrantType::ClientCredentials => "client_credentials",
            GrantType::RefreshToken => "refresh_token",
            GrantType::DeviceCode => "urn:ietf:params:oauth:grant-type:device_code",
            GrantType::TokenExchange => "urn:ietf:params:oauth:grant-type:token-exchange",
        }
    }

    /// A grant type by its RFC name only (the token endpoint's `grant_type`).
    pub fn from_rfc_name(name: &str) -> Option<GrantType> {
        GrantType::ALL.into_iter().find(|g| g.as_str() == name)
    }

    /// A grant type by its RFC name or a short alias (`clients[].grant_types`).
    pub fn from_config_name(name: &str) -> Option<GrantType> {
        match name {
            "device_code" => Some(GrantType::DeviceCode),
            "token_exchange" => Some(GrantType::TokenExchange),
            _ => GrantType::from_rfc_name(name),
        }
    }
}

impl std::fmt::Display for GrantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for GrantType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        GrantType::from_config_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown grant type {name:?}")))
    }
}

/// The issuer's endpoints, relative to the path of `issuer.url` (Auth0's paths). They are
/// matched before routes; `scopegate check` names routes whose paths they take.
pub const ENDPOINTS: [&str; 12] = [
    "/authorize",
    "/oauth/par",
    "/oauth/token",
    "/userinfo",
    "/oauth/revoke",
    "/oauth/introspect",
    "/oauth/device/code",
    "/activate",
    "/logout",
    "/.well-known/jwks.json",
    "/.well-known/openid-configuration",
    "/.well-known/oauth-authorization-server",
];

/// Claims an operator may never overwrite through `claims:`.
const STANDARD_CLAIMS: [&str; 22] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "azp",
    "client_id",
    "scope",
    "nonce",
    "at_hash",
    "c_hash",
    "auth_time",
    "acr",
    "amr",
    "sid",
    "name",
    "email",
    "email_verified",
    "scp",
    "typ",
];

impl IssuerConfig {
    /// The `sub` of a configured user.
    pub fn subject_of(user: &UserConfig) -> String {
        user.id
            .clone()
            .unwrap_or_else(|| format!("user|{}", user.username))
    }

    /// The path of `issuer.url` without its trailing slash (`""` for a root issuer).
    pub fn base_path(&self) -> String {
        let path = self
            .url
            .parse::<http::Uri>()
            .map(|uri| uri.path().to_string())
            .unwrap_or_default();
        path.trim_end_matches('/').to_string()
    }

    /// Every endpoint path the issuer serves on the proxy listener.
    pub fn endpoint_paths(&self) -> Vec<String> {
        let base = self.base_path();
        ENDPOINTS.iter().map(|e| format!("{base}{e}")).collect()
    }

    /// Every check of the `issuer:` section, once, at load; errors name the key path.
    pub(super) fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        self.check_url(config)?;
        self.check_store()?;
        self.check_limits()?;
        let apis = self.check_apis()?;
        for (role, grants) in &self.roles {
            check_grants(&apis, &format!("issuer.roles.{role}"), grants)?;
        }
        let mut client_ids = HashSet::new();
        for (index, client) in self.clients.iter().enumerate() {
            check_client(&apis, &mut client_ids, index, client)?;
            check_client_keys(self.keys.algorithm, index, client)?;
        }
        let mut seen = SeenUsers::default();
        for (index, user) in self.users.iter().enumerate() {
            self.check_user(&mut seen, index, user)?;
        }
        if let Some(claims) = &self.claims {
            check_claims(claims)?;
        }
        check_route_scopes(config, &apis)
    }

    /// `issuer.url`: an absolute URL without a query, not also listed as trusted.
    fn check_url(&self, config: &Config) -> Result<(), ConfigError> {
        let url = check_url(&self.url, "issuer.url")?;
        if url.query().is_some() {
            return Err(ConfigError::at(
                "issuer.url",
                "the issuer URL must not have a query or fragment",
            ));
        }
        for (index, trusted) in config.trust.issuers.iter().enumerate() {
            if self.enabled && issuer_base(&trusted.issuer) == issuer_base(&self.url) {
                return Err(ConfigError::at(
                    format!("trust.issuers[{index}].issuer"),
                    "this is the built-in issuer, which is trusted automatically; remove this entry",
                ));
            }
        }
        Ok(())
    }

    fn check_store(&self) -> Result<(), ConfigError> {
        if !(self.store.starts_with("sqlite:")
            || self.store.starts_with("postgres://")
            || self.store.starts_with("postgresql://"))
        {
            return Err(ConfigError::at(
                "issuer.store",
                format!(
                    "{:?} is not a store URL; use sqlite://FILE or postgres://...",
                    crate::config::issuer::redact_url(&self.store)
                ),
            ));
        }
        Ok(())
    }

    /// Throttle counts, lifetimes and intervals.
    fn check_limits(&self) -> Result<(), ConfigError> {
        if self.throttle.max_failures == 0 {
            return Err(ConfigError::at(
                "issuer.throttle.max_failures",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("issuer.tokens.access_ttl", self.tokens.access_ttl),
            ("issuer.tokens.id_ttl", self.tokens.id_ttl),
            ("issuer.tokens.refresh_ttl", self.tokens.refresh_ttl),
            ("issuer.tokens.code_ttl", self.tokens.code_ttl),
            ("issuer.device.interval", self.device.interval),
            ("issuer.device.ttl", self.device.ttl),
            ("issuer.keys.rotate_after", self.keys.rotate_after),
            ("issuer.throttle.window", self.throttle.window),
            ("issuer.session.lifetime", self.session.lifetime),
            ("issuer.par.ttl", self.par.ttl),
        ] {
            if value.get() < std::time::Duration::from_secs(1) {
                return Err(ConfigError::at(key, "must be at least 1s"));
            }
        }
        if self.session.lifetime.get() > std::time::Duration::from_secs(400 * 86_400) {
            return Err(ConfigError::at(
                "issuer.session.lifetime",
                "must be at most 400d (browsers cap cookie lifetimes there)",
            ));
        }
        if self.refresh_grace.get() > std::time::Duration::from_secs(60) {
            return Err(ConfigError::at(
                "issuer.refresh_grace",
                "must be at most 60s (a longer window lets a stolen refresh token be replayed)",
            ));
        }
        if self.keys.rotate_after.get() <= self.tokens.access_ttl.get() {
            return Err(ConfigError::at(
                "issuer.keys.rotate_after",
                "must be longer than issuer.tokens.access_ttl",
            ));
        }
        Ok(())
    }

    /// `issuer.apis` and `issuer.default_audience`; returns each API's defined scopes.
    fn check_apis(&self) -> Result<DefinedApis<'_>, ConfigError> {
        let mut apis = DefinedApis::new();
        for (index, api) in self.apis.iter().enumerate() {
            let at = format!("issuer.apis[{index}]");
            if api.identifier.is_empty() || api.identifier.contains(char::is_whitespace) {
                return Err(ConfigError::at(
                    format!("{at}.identifier"),
                    "an API identifier is a non-empty string without spaces (usually a URL)",
                ));
            }
            if apis.contains_key(api.identifier.as_str()) {
                return Err(ConfigError::at(
                    format!("{at}.identifier"),
                    format!("API {:?} is defined twice", api.identifier),
                ));
            }
            let scopes = check_api_scopes(&at, api)?;
            if let Some(ttl) = api.access_ttl
                && ttl.get() < std::time::Duration::from_secs(1)
            {
                return Err(ConfigError::at(
                    format!("{at}.access_ttl"),
                    "must be at least 1s",
                ));
            }
            apis.insert(api.identifier.as_str(), scopes);
        }
        let userinfo = format!("{}userinfo", issuer_base(&self.url));
        if apis.contains_key(userinfo.as_str()) {
            return Err(ConfigError::at(
                "issuer.apis",
                "an API identifier may not be the issuer's userinfo URL",
            ));
        }
        if let Some(default) = &self.default_audience
            && !apis.contains_key(default.as_str())
        {
            return Err(ConfigError::at(
                "issuer.default_audience",
                format!("{default:?} is not the identifier of an API in issuer.apis"),
            ));
        }
        Ok(apis)
    }

    /// One user: a unique username, email and subject, an argon2id hash, known roles.
    fn check_user(
        &self,
        seen: &mut SeenUsers,
        index: usize,
        user: &UserConfig,
    ) -> Result<(), ConfigError> {
        let at = format!("issuer.users[{index}]");
        if user.username.is_empty() || user.username.contains(char::is_whitespace) {
            return Err(ConfigError::at(
                format!("{at}.username"),
                "a username is non-empty and has no spaces",
            ));
        }
        if !seen.usernames.insert(user.username.to_lowercase()) {
            return Err(ConfigError::at(
                format!("{at}.username"),
                format!("username {:?} is used twice", user.username),
            ));
        }
        if let Some(email) = &user.email {
            if !email.contains('@') {
                return Err(ConfigError::at(
                    format!("{at}.email"),
                    format!("{email:?} is not an email address"),
                ));
            }
            if !seen.emails.insert(email.to_lowercase()) {
                return Err(ConfigError::at(
                    format!("{at}.email"),
                    format!("email {email:?} is used twice"),
                ));
            }
        }
        if !seen.subjects.insert(IssuerConfig::subject_of(user)) {
            return Err(ConfigError::at(
                format!("{at}.id"),
                "two users have the same subject",
            ));
        }
        if !user.password_hash.starts_with("$argon2id$") {
            return Err(ConfigError::at(
                format!("{at}.password_hash"),
                "must be an argon2id PHC string; make one with `scopegate hash-password`",
            ));
        }
        for (role_index, role) in user.roles.iter().enumerate() {
            if !self.roles.contains_key(role) {
                return Err(ConfigError::at(
                    format!("{at}.roles[{role_index}]"),
                    format!("role {role:?} is not defined in issuer.roles"),
                ));
            }
        }
        Ok(())
    }
}

/// API identifier → the scopes it defines.
type DefinedApis<'c> = BTreeMap<&'c str, HashSet<&'c str>>;

/// Usernames and emails (lower-cased) and subjects already taken.
#[derive(Default)]
struct SeenUsers {
    usernames: HashSet<String>,
    emails: HashSet<String>,
    subjects: HashSet<String>,
}

/// The scopes one API defines: valid scope tokens, no OIDC scope, no duplicate.
fn check_api_scopes<'c>(at: &str, api: &'c ApiConfig) -> Result<HashSet<&'c str>, ConfigError> {
    let mut scopes = HashSet::new();
    for (scope_index, scope) in api.scopes.iter().enumerate() {
        let scope_at = format!("{at}.scopes[{scope_index}].value");
        check_scope_token(&scope.value, &scope_at)?;
        if is_oidc_scope(&scope.value) {
            return Err(ConfigError::at(
                scope_at,
                format!(
                    "{:?} is an OpenID Connect scope and cannot be an API scope",
                    scope.value
                ),
            ));
        }
        if !scopes.insert(scope.value.as_str()) {
            return Err(ConfigError::at(
                scope_at,
                format!("scope {:?} is defined twice", scope.value),
            ));
        }
    }
    Ok(scopes)
}

fn is_oidc_scope(scope: &str) -> bool {
    matches!(scope, "openid" | "profile" | "email" | "offline_access")
}

/// Grants (of a role, or a client's `grants`) name defined APIs and their scopes.
fn check_grants(
    apis: &DefinedApis<'_>,
    at: &str,
    grants: &BTreeMap<String, Vec<String>>,
) -> Result<(), ConfigError> {
    for (api, scopes) in grants {
        let defined = apis.get(api.as_str()).ok_or_else(|| {
            ConfigError::at(
                format!("{at}.{api:?}"),
                format!("{api:?} is not the identifier of an API in issuer.apis"),
            )
        })?;
        for (index, scope) in scopes.iter().enumerate() {
            if !defined.contains(scope.as_str()) {
                return Err(ConfigError::at(
                    format!("{at}.{api:?}[{index}]"),
                    format!("scope {scope:?} is not defined by API {api:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// One client: its id, secret, grant types, redirect URIs and grants.
fn check_client<'c>(
    apis: &DefinedApis<'_>,
    client_ids: &mut HashSet<&'c str>,
    index: usize,
    client: &'c ClientConfig,
) -> Result<(), ConfigError> {
    let at = format!("issuer.clients[{index}]");
    if client.client_id.is_empty()
        || !client
            .client_id
            .bytes()
            .all(|b| b > 0x20 && b < 0x7f && b != b':')
    {
        return Err(ConfigError::at(
            format!("{at}.client_id"),
            "a client_id is printable ASCII without spaces or ':'",
        ));
    }
    if !client_ids.insert(client.client_id.as_str()) {
        return Err(ConfigError::at(
            format!("{at}.client_id"),
            format!("client_id {:?} is used twice", client.client_id),
        ));
    }
    if let Some(secret) = &client.client_secret
        && secret.len() < 8
    {
        return Err(ConfigError::at(
            format!("{at}.client_secret"),
            "a client secret needs at least 8 characters",
        ));
    }
    check_client_grant_types(&at, client)?;
    check_client_redirect_uris(&at, client)?;
    if !client.grants.is_empty() && !client.grant_types.contains(&GrantType::ClientCredentials) {
        return Err(ConfigError::at(
            format!("{at}.grants"),
            "grants are for client_credentials, which this client may not use",
        ));
    }
    check_grants(apis, &format!("{at}.grants"), &client.grants)
}

/// A client lists its grant types; the ones it lists fit how it is registered.
fn check_client_grant_types(at: &str, client: &ClientConfig) -> Result<(), ConfigError> {
    let may = |grant| client.grant_types.contains(&grant);
    if client.grant_types.is_empty() {
        return Err(ConfigError::at(
            format!("{at}.grant_types"),
            "list the grant types this client may use",
        ));
    }
    let confidential = client.client_secret.is_some()
        || client.token_endpoint_auth_method == Some(ClientAuthMethod::PrivateKeyJwt);
    if may(GrantType::ClientCredentials) && !confidential {
        return Err(ConfigError::at(
            format!("{at}.grant_types"),
            "client_credentials needs a confidential client (set client_secret, or use private_key_jwt)",
        ));
    }
    let browser = may(GrantType::AuthorizationCode) || may(GrantType::Implicit);
    if browser && client.redirect_uris.is_empty() {
        return Err(ConfigError::at(
            format!("{at}.redirect_uris"),
            "authorization_code and implicit need at least one redirect URI",
        ));
    }
    Ok(())
}

/// How a client authenticates and the keys it does so with: a method that fits what is
/// configured (a secret for the secret methods, keys for `private_key_jwt`, nothing for
/// `none`), keys inline or by URL (not both), usable keys, and an ID token algorithm the
/// issuer has keys for.
fn check_client_keys(
    issuer_alg: SigningAlg,
    index: usize,
    client: &ClientConfig,
) -> Result<(), ConfigError> {
    let at = format!("issuer.clients[{index}]");
    if client.jwks.is_some() && client.jwks_uri.is_some() {
        return Err(ConfigError::at(
            format!("{at}.jwks_uri"),
            "give the client's keys inline (jwks) or by URL (jwks_uri), not both",
        ));
    }
    let has_keys = client.jwks.is_some() || client.jwks_uri.is_some();
    let has_secret = client.client_secret.is_some();
    let method_at = format!("{at}.token_endpoint_auth_method");
    match client.token_endpoint_auth_method {
        Some(ClientAuthMethod::PrivateKeyJwt) if !has_keys => {
            return Err(ConfigError::at(
                method_at,
                "private_key_jwt needs the client's public keys (jwks or jwks_uri)",
            ));
        }
        Some(ClientAuthMethod::PrivateKeyJwt) if has_secret => {
            return Err(ConfigError::at(
                format!("{at}.client_secret"),
                "a private_key_jwt client has no secret",
            ));
        }
        Some(ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost)
            if !has_secret =>
        {
            return Err(ConfigError::at(
                method_at,
                "client_secret_basic and client_secret_post need client_secret",
            ));
        }
        Some(ClientAuthMethod::None) if has_secret => {
            return Err(ConfigError::at(
                method_at,
                "none is for public clients, which have no client_secret",
            ));
        }
        _ => {}
    }
    if let Some(jwks) = &client.jwks {
        let body = serde_json::to_vec(jwks).unwrap_or_default();
        let (keys, skipped) = crate::jose::parse_jwks(&body, &crate::jose::Alg::ALL)
            .map_err(|err| ConfigError::at(format!("{at}.jwks"), err))?;
        if let Some(problem) = skipped.first() {
            return Err(ConfigError::at(format!("{at}.jwks.keys"), problem.clone()));
        }
        if keys.is_empty() {
            return Err(ConfigError::at(
                format!("{at}.jwks.keys"),
                "no usable signing key (public RSA, EC P-256/P-384 or Ed25519 keys)",
            ));
        }
    }
    if let Some(uri) = &client.jwks_uri {
        check_url(uri, &format!("{at}.jwks_uri"))?;
    }
    if let Some(alg) = client.id_token_signed_response_alg
        && alg != SigningAlg::RS256
        && alg != issuer_alg
    {
        return Err(ConfigError::at(
            format!("{at}.id_token_signed_response_alg"),
            "must be RS256 or the issuer's keys.algorithm",
        ));
    }
    Ok(())
}

fn check_client_redirect_uris(at: &str, client: &ClientConfig) -> Result<(), ConfigError> {
    for (index, uri) in client.redirect_uris.iter().enumerate() {
        check_redirect_uri(uri, &format!("{at}.redirect_uris[{index}]"))?;
    }
    for (index, uri) in client.post_logout_redirect_uris.iter().enumerate() {
        check_redirect_uri(uri, &format!("{at}.post_logout_redirect_uris[{index}]"))?;
    }
    Ok(())
}

/// `issuer.claims`: a URL namespace, and no field that would shadow a standard claim.
fn check_claims(claims: &ClaimsConfig) -> Result<(), ConfigError> {
    let namespace = &claims.namespace;
    let is_url = (namespace.starts_with("https://") || namespace.starts_with("http://"))
        && namespace
            .parse::<http::Uri>()
            .is_ok_and(|u| u.host().is_some());
    if !is_url {
        return Err(ConfigError::at(
            "issuer.claims.namespace",
            format!(
                "{namespace:?} must be an http(s) URL, e.g. https://example.com/, so custom claims never collide with standard ones"
            ),
        ));
    }
    for (key, fields) in [
        ("id_token", &claims.id_token),
        ("access_token", &claims.access_token),
    ] {
        for (index, field) in fields.iter().enumerate() {
            let claim = format!("{namespace}{field}");
            if field.is_empty() || STANDARD_CLAIMS.contains(&claim.as_str()) {
                return Err(ConfigError::at(
                    format!("issuer.claims.{key}[{index}]"),
                    format!("{field:?} cannot be a custom claim"),
                ));
            }
        }
    }
    Ok(())
}

/// A route whose audience is one of the issuer's APIs asks only for scopes that API
/// defines (or OIDC scopes): any other scope no token could carry.
fn check_route_scopes(config: &Config, apis: &DefinedApis<'_>) -> Result<(), ConfigError> {
    for (index, route) in config.routes.iter().enumerate() {
        let Some(audience) = &route.audience else {
            continue;
        };
        let Some(defined) = apis.get(audience.as_str()) else {
            continue;
        };
        for (key, list) in [("scopes", &route.scopes), ("any_scopes", &route.any_scopes)] {
            for (scope_index, scope) in list.iter().enumerate() {
                if !is_oidc_scope(scope) && !defined.contains(scope.as_str()) {
                    return Err(ConfigError::at(
                        format!("routes[{index}].{key}[{scope_index}]"),
                        format!(
                            "scope {scope:?} is not defined by API {audience:?} in issuer.apis, so no token could carry it"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_scope_token(scope: &str, at: &str) -> Result<(), ConfigError> {
    if scope.is_empty()
        || !scope
            .bytes()
            .all(|b| b > 0x20 && b < 0x7f && b != b'"' && b != b'\\')
    {
        return Err(ConfigError::at(
            at,
            format!(
                "{scope:?} is not a valid scope (printable ASCII, no spaces, quotes or backslashes)"
            ),
        ));
    }
    Ok(())
}

fn check_redirect_uri(uri: &str, at: &str) -> Result<(), ConfigError> {
    let parsed: http::Uri = uri
        .parse()
        .map_err(|_| ConfigError::at(at, format!("{uri:?} is not a URL")))?;
    if uri.contains('#') {
        return Err(ConfigError::at(
            at,
            "a redirect URI must not have a fragment",
        ));
    }
    let Some(scheme) = parsed.scheme_str() else {
        return Err(ConfigError::at(
            at,
            format!("{uri:?} is not an absolute URL"),
        ));
    };
    match scheme {
        "https" => Ok(()),
        "http" if parsed.host().is_some_and(super::is_loopback_host) => Ok(()),
        "http" => Err(ConfigError::at(
            at,
            format!("{uri:?} uses http:// on a non-loopback host; use https://"),
        )),
        // Private-use schemes for native apps (RFC 8252 §7.1), e.g. com.example.app:/cb
        other if other.contains('.') => Ok(()),
        other => Err(ConfigError::at(
            at,
            format!("redirect URI scheme {other:?} is not allowed"),
        )),
    }
}

/// Hashes a password as an argon2id PHC string (for `users[].password_hash`).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| format!("hashing failed: {err}"))
}

/// The issuer URL with exactly one trailing slash, the base that endpoint paths are
/// joined to.
pub fn issuer_base(url: &str) -> String {
    format!("{}/", url.trim_end_matches('/'))
}

/// A URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_store_passwords() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_url("sqlite://scopegate.db"), "sqlite://scopegate.db");
    }

    #[test]
    fn endpoints_live_under_the_issuer_path() {
        let config = crate::config::Config::from_yaml_with_env(
            "issuer:\n  url: https://id.example.com/auth/\n",
            |_| None,
        )
        .unwrap();
        let issuer = config.issuer.unwrap();
        assert_eq!(issuer.base_path(), "/auth");
        let paths = issuer.endpoint_paths();
        assert!(paths.contains(&"/auth/oauth/token".to_string()));
        assert!(paths.contains(&"/auth/.well-known/openid-configuration".to_string()));
        assert_eq!(paths.len(), ENDPOINTS.len());
    }

    #[test]
    fn grant_type_aliases() {
        assert_eq!(
            GrantType::from_config_name("device_code").map(GrantType::as_str),
            Some("urn:ietf:params:oauth:grant-type:device_code")
        );
        assert_eq!(
            GrantType::from_config_name("token_exchange"),
            Some(GrantType::TokenExchange)
        );
        assert_eq!(GrantType::from_config_name("magic"), None);
        for grant in GrantType::ALL {
            assert_eq!(GrantType::from_rfc_name(grant.as_str()), Some(grant));
        }
    }

    #[test]
    fn an_unknown_grant_type_is_refused_at_its_key_path() {
        let yaml = "issuer:\n  url: https://id.example.com/\n  clients:\n    - { client_id: c, grant_types: [password, magic] }\n";
        let err = crate::config::Config::from_yaml_with_env(yaml, |_| None).unwrap_err();
        assert_eq!(err.path, "issuer.clients[0].grant_types[1]");
        assert_eq!(err.message, "unknown grant type \"magic\"");
    }
}
