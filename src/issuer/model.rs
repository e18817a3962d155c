//! The `issuer:` configuration compiled for the request path: APIs, clients and users
//! indexed once, client secrets kept only as SHA-256 digests, role grants resolved to
//! scope sets. Built at load (and on reload); requests only read it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::config::IssuerConfig;
use crate::config::issuer::{
    ClaimsConfig, ClientAuthMethod, ClientConfig, GrantType, ThrottleConfig, UserConfig,
    issuer_base,
};
use crate::jose::{Alg, VerifyKey, parse_jwks};

/// An API (resource server): the `aud` of its tokens and the scopes it defines.
#[derive(Debug)]
pub struct Api {
    pub identifier: String,
    /// Defined scopes, in configuration order (the order of `scope` strings).
    pub scopes: Vec<String>,
    pub allow_offline_access: bool,
    pub access_ttl: Duration,
    /// Scope → its description, where the configuration gives one (device page).
    pub descriptions: HashMap<String, String>,
}

impl Api {
    pub fn defines(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// A client (application).
#[derive(Debug)]
pub struct Client {
    pub client_id: String,
    /// SHA-256 of the secret; `None` for a public client.
    pub secret_digest: Option<[u8; 32]>,
    pub grant_types: HashSet<GrantType>,
    /// client_credentials grants: API identifier → scopes.
    pub grants: HashMap<String, Vec<String>>,
    /// What the login and device pages call it: `name`, else the client_id.
    pub display_name: String,
    /// Registered redirect URIs, exact strings (loopback ones match any port).
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// `token_endpoint_auth_method` as configured; `None` = by the secret if there is
    /// one, else `none`.
    pub auth_method: Option<ClientAuthMethod>,
    /// Where the client's public keys come from (`private_key_jwt`).
    pub keys: ClientKeys,
    /// `/authorize` only through a pushed request (RFC 9126 §6).
    pub require_par: bool,
    /// Tokens only with a DPoP proof (RFC 9449 §5.2).
    pub dpop_bound: bool,
    /// The algorithm of its ID tokens, when it asked for one.
    pub id_token_alg: Option<Alg>,
}

/// A client's public keys, for its signed assertions.
#[derive(Debug)]
pub enum ClientKeys {
    None,
    /// `jwks`, parsed at load.
    Inline(Vec<VerifyKey>),
    /// `jwks_uri`, fetched (and cached) by the issuer.
    Remote(String),
}

impl Client {
    /// True for a client that cannot authenticate (`none`): it only names itself.
    pub fn is_public(&self) -> bool {
        match self.auth_method {
            Some(method) => method == ClientAuthMethod::None,
            None => self.secret_digest.is_none(),
        }
    }

    /// True if the client may authenticate by `method`: the configured one only; without
    /// one, `client_secret_basic` and `client_secret_post` for a client with a secret, and
    /// `none` for one without.
    pub fn accepts(&self, method: ClientAuthMethod) -> bool {
        match (self.auth_method, self.secret_digest.is_some()) {
            (Some(configured), _) => configured == method,
            (None, true) => matches!(
                method,
                ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost
            ),
            (None, false) => method == ClientAuthMethod::None,
        }
    }

    pub fn may_use(&self, grant_type: GrantType) -> bool {
        self.grant_types.contains(&grant_type)
    }

    /// True if `uri` is one of the registered redirect URIs: an exact match, or for an
    /// `http` loopback one (RFC 8252 §7.3) the same URI on any port.
    pub fn redirect_uri_allowed(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|r| redirect_matches(r, uri))
    }
}

/// True if `presented` is the `registered` redirect URI: the same string, or both are
/// `http://` URIs on the same loopback IP literal (or `localhost`) with the same path and
/// query, whatever the ports.
///
/// ```
/// use scopegate::issuer::model::redirect_matches;
/// assert!(redirect_matches("http://127.0.0.1:3000/cb", "http://127.0.0.1:51234/cb"));
/// assert!(redirect_matches("http://[::1]/cb", "http://[::1]:8080/cb"));
/// assert!(redirect_matches("https://app.example.com/cb", "https://app.example.com/cb"));
/// assert!(!redirect_matches("https://app.example.com/cb", "https://app.example.com/cb/"));
/// assert!(!redirect_matches("https://app.example.com/cb", "https://app.example.com:8443/cb"));
/// assert!(!redirect_matches("http://127.0.0.1:3000/cb", "http://127.0.0.1:3000/cb?x=1"));
/// assert!(!redirect_matches("http://127.0.0.1:3000/cb", "http://127.0.0.2:3000/cb"));
/// ```
pub fn redirect_matches(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    let loopback = |uri: &str| -> Option<(String, String)> {
        let rest = uri.strip_prefix("http://")?;
        if rest.contains('#') || rest.contains('@') {
            return None;
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let host = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']')?;
                check_port(after)?;
                format!("[{host}]")
            }
            None => {
                let (host, port) = match authority.split_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (authority, None),
                };
                if let Some(port) = port {
                    check_port(&format!(":{port}"))?;
                }
                host.to_string()
            }
        };
        crate::config::is_loopback_host(&host)
            .then(|| (host.to_ascii_lowercase(), path.to_string()))
    };
    fn check_port(after: &str) -> Option<()> {
        match after.strip_prefix(':') {
            None if after.is_empty() => Some(()),
            Some(port)
                if !port.is_empty()
                    && port.len() <= 5
                    && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Some(())
            }
            _ => None,
        }
    }
    match (loopback(registered), loopback(presented)) {
        (Some(r), Some(p)) => r == p,
        _ => false,
    }
}

/// A user with its stable subject.
#[derive(Debug)]
pub struct User {
    pub subject: String,
    pub config: UserConfig,
}

/// The compiled `issuer:` section.
#[derive(Debug)]
pub struct Model {
    /// `iss`, exactly `issuer.url`.
    pub issuer: String,
    /// `issuer.url` with one trailing slash; endpoint URLs are joined to it.
    pub base_url: String,
    /// The path of `issuer.url` without a trailing slash (`""` at the root).
    pub base_path: String,
    pub userinfo_url: String,
    pub default_audience: Option<String>,
    pub apis: HashMap<String, Api>,
    /// API identifiers in configuration order.
    pub api_order: Vec<String>,
    pub clients: HashMap<String, Client>,
    pub users: Vec<User>,
    /// Lower-cased username and email → index in `users`.
    by_login: HashMap<String, usize>,
    by_subject: HashMap<String, usize>,
    /// role → API → scopes.
    roles: HashMap<String, HashMap<String, HashSet<String>>>,
    pub access_ttl: Duration,
    pub id_ttl: Duration,
    pub refresh_ttl: Duration,
    pub throttle: ThrottleConfig,
    pub claims: Option<ClaimsConfig>,
    /// `issuer.login.title`: the brand on the pages a person sees.
    pub login_title: String,
    pub code_ttl: Duration,
    pub device_interval: Duration,
    pub device_ttl: Duration,
    /// Session cookies carry `Secure` on every connection when the issuer URL is
    /// https (whatever terminates TLS), else only on TLS connections.
    pub https: bool,
    /// The `Path` of the issuer's cookies: the path of `issuer.url` (`/` at the root).
    pub cookie_path: String,
}

impl Model {
    pub fn new(config: &IssuerConfig) -> Model {
        let base_url = issuer_base(&config.url);
        let users = Users::new(&config.users);
        Model {
            issuer: config.url.clone(),
            userinfo_url: format!("{base_url}userinfo"),
            base_path: config.base_path(),
            base_url,
            default_audience: config.default_audience.clone(),
            api_order: config.apis.iter().map(|a| a.identifier.clone()).collect(),
            apis: compile_apis(config),
            clients: compile_clients(config),
            users: users.list,
            by_login: users.by_login,
            by_subject: users.by_subject,
            roles: compile_roles(config),
            access_ttl: config.tokens.access_ttl.get(),
            id_ttl: config.tokens.id_ttl.get(),
            refresh_ttl: config.tokens.refresh_ttl.get(),
            throttle: config.throttle,
            claims: config.claims.clone(),
            login_title: config.login.title.clone(),
            code_ttl: config.tokens.code_ttl.get(),
            device_interval: config.device.interval.get(),
            device_ttl: config.device.ttl.get(),
            https: config.url.starts_with("https://"),
            cookie_path: match config.base_path() {
                path if path.is_empty() => "/".to_string(),
                path => path,
            },
        }
    }

    /// A user by username or email, case-insensitively.
    pub fn user_by_login(&self, login: &str) -> Option<&User> {
        self.by_login
            .get(&login.to_lowercase())
            .map(|&i| &self.users[i])
    }

    pub fn user_by_subject(&self, subject: &str) -> Option<&User> {
        self.by_subject.get(subject).map(|&i| &self.users[i])
    }

    /// The scopes a user's roles grant for `api`.
    pub fn role_scopes(&self, user: &User, api: &str) -> HashSet<&str> {
        let mut out = HashSet::new();
        for role in &user.config.roles {
            if let Some(scopes) = self.roles.get(role).and_then(|grants| grants.get(api)) {
                out.extend(scopes.iter().map(String::as_str));
            }
        }
        out
    }

    /// The longest lifetime of any token this issuer signs.
    pub fn longest_token_ttl(&self) -> Duration {
        self.apis
            .values()
            .map(|a| a.access_ttl)
            .chain([self.access_ttl, self.id_ttl])
            .max()
            .unwrap_or(self.access_ttl)
    }
}

/// The APIs by identifier, each with its token lifetime resolved.
fn compile_apis(config: &IssuerConfig) -> HashMap<String, Api> {
    config
        .apis
        .iter()
        .map(|api| {
            (
                api.identifier.clone(),
                Api {
                    identifier: api.identifier.clone(),
                    scopes: api.scopes.iter().map(|s| s.value.clone()).collect(),
                    allow_offline_access: api.allow_offline_access,
                    access_ttl: api.access_ttl.unwrap_or(config.tokens.access_ttl).get(),
                    descriptions: api
                        .scopes
                        .iter()
                        .filter_map(|s| s.description.clone().map(|d| (s.value.clone(), d)))
                        .collect(),
                },
            )
        })
        .collect()
}

/// The clients by `client_id`, secrets kept only as digests.
fn compile_clients(config: &IssuerConfig) -> HashMap<String, Client> {
    config
        .clients
        .iter()
        .map(|client| {
            (
                client.client_id.clone(),
                Client {
                    client_id: client.client_id.clone(),
                    secret_digest: client.client_secret.as_deref().map(digest),
                    grant_types: client.grant_types.iter().copied().collect(),
                    grants: client.grants.clone().into_iter().collect(),
                    display_name: client
                        .name
                        .clone()
                        .unwrap_or_else(|| client.client_id.clone()),
                    redirect_uris: client.redirect_uris.clone(),
                    post_logout_redirect_uris: client.post_logout_redirect_uris.clone(),
                    auth_method: client.token_endpoint_auth_method,
                    keys: client_keys(client),
                    require_par: client.require_pushed_authorization_requests,
                    dpop_bound: client.dpop_bound_access_tokens,
                    id_token_alg: client.id_token_signed_response_alg.map(super::keys::alg_of),
                },
            )
        })
        .collect()
}

/// A client's keys: inline ones parsed (the config check has refused unusable ones), or
/// the URL to fetch them from.
fn client_keys(client: &ClientConfig) -> ClientKeys {
    if let Some(uri) = &client.jwks_uri {
        return ClientKeys::Remote(uri.clone());
    }
    let Some(jwks) = &client.jwks else {
        return ClientKeys::None;
    };
    let body = serde_json::to_vec(jwks).unwrap_or_default();
    match parse_jwks(&body, &Alg::ALL) {
        Ok((keys, _)) => ClientKeys::Inline(keys),
        Err(_) => ClientKeys::Inline(Vec::new()),
    }
}

/// role → API → scopes.
fn compile_roles(config: &IssuerConfig) -> HashMap<String, HashMap<String, HashSet<String>>> {
    config
        .roles
        .iter()
        .map(|(role, grants)| {
            (
                role.clone(),
                grants
                    .iter()
                    .map(|(api, scopes)| (api.clone(), scopes.iter().cloned().collect()))
                    .collect(),
            )
        })
        .collect()
}

/// The users with their subjects, indexed by login and by subject.
struct Users {
    list: Vec<User>,
    by_login: HashMap<String, usize>,
    by_subject: HashMap<String, usize>,
}

impl Users {
    fn new(configured: &[UserConfig]) -> Users {
        let mut list = Vec::with_capacity(configured.len());
        let mut by_login = HashMap::new();
        let mut by_subject = HashMap::new();
        for (index, user) in configured.iter().enumerate() {
            let subject = IssuerConfig::subject_of(user);
            by_login.insert(user.username.to_lowercase(), index);
            by_subject.insert(subject.clone(), index);
            list.push(User {
                subject,
                config: user.clone(),
            });
        }
        // Emails after usernames: a username never loses to someone's email.
        for (index, user) in configured.iter().enumerate() {
            if let Some(email) = &user.email {
                by_login.entry(email.to_lowercase()).or_insert(index);
            }
        }
        Users {
            list,
            by_login,
            by_subject,
        }
    }
}

/// SHA-256 of a secret, for constant-time comparison.
pub fn digest(secret: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
