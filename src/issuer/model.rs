//! The `issuer:` configuration compiled for the request path: APIs, clients and users
//! indexed once, client secrets kept only as SHA-256 digests, role grants resolved to
//! scope sets. Built at load (and on reload); requests only read it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::config::IssuerConfig;
use crate::config::issuer::{
    ClaimsConfig, ThrottleConfig, UserConfig, canonical_grant_type, issuer_base,
};

/// An API (resource server): the `aud` of its tokens and the scopes it defines.
#[derive(Debug)]
pub struct Api {
    pub identifier: String,
    /// Defined scopes, in configuration order (the order of `scope` strings).
    pub scopes: Vec<String>,
    pub allow_offline_access: bool,
    pub access_ttl: Duration,
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
    /// RFC grant type names.
    pub grant_types: HashSet<&'static str>,
    /// client_credentials grants: API identifier → scopes.
    pub grants: HashMap<String, Vec<String>>,
}

impl Client {
    pub fn is_public(&self) -> bool {
        self.secret_digest.is_none()
    }

    pub fn may_use(&self, grant_type: &str) -> bool {
        self.grant_types.contains(grant_type)
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
}

impl Model {
    pub fn new(config: &IssuerConfig) -> Model {
        let base_url = issuer_base(&config.url);
        let apis: HashMap<String, Api> = config
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
                    },
                )
            })
            .collect();
        let clients = config
            .clients
            .iter()
            .map(|client| {
                (
                    client.client_id.clone(),
                    Client {
                        client_id: client.client_id.clone(),
                        secret_digest: client.client_secret.as_deref().map(digest),
                        grant_types: client
                            .grant_types
                            .iter()
                            .filter_map(|g| canonical_grant_type(g))
                            .collect(),
                        grants: client.grants.clone().into_iter().collect(),
                    },
                )
            })
            .collect();
        let mut users = Vec::with_capacity(config.users.len());
        let mut by_login = HashMap::new();
        let mut by_subject = HashMap::new();
        for (index, user) in config.users.iter().enumerate() {
            let subject = IssuerConfig::subject_of(user);
            by_login.insert(user.username.to_lowercase(), index);
            by_subject.insert(subject.clone(), index);
            users.push(User {
                subject,
                config: user.clone(),
            });
        }
        // Emails after usernames: a username never loses to someone's email.
        for (index, user) in config.users.iter().enumerate() {
            if let Some(email) = &user.email {
                by_login.entry(email.to_lowercase()).or_insert(index);
            }
        }
        let roles = config
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
            .collect();
        Model {
            issuer: config.url.clone(),
            userinfo_url: format!("{base_url}userinfo"),
            base_path: config.base_path(),
            base_url,
            default_audience: config.default_audience.clone(),
            api_order: config.apis.iter().map(|a| a.identifier.clone()).collect(),
            apis,
            clients,
            users,
            by_login,
            by_subject,
            roles,
            access_ttl: config.tokens.access_ttl.get(),
            id_ttl: config.tokens.id_ttl.get(),
            refresh_ttl: config.tokens.refresh_ttl.get(),
            throttle: config.throttle,
            claims: config.claims.clone(),
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

/// SHA-256 of a secret, for constant-time comparison.
pub fn digest(secret: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
