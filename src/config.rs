//! `gateway.yaml`: serde types that mirror the file (unknown keys are errors), and
//! [`Config::validate`], which runs every check once at load time so the request path
//! never re-checks configuration.
//!
//! Errors name the file, the key path (`routes[2].match.path`) and, where the YAML
//! parser knows it, the line.

pub mod cors;
mod duration;
pub mod endpoints;
mod env;
pub mod issuer;
pub mod limits;
pub mod openapi;
pub mod otel;
pub mod protocol;
pub mod route;
pub mod schema;
mod size;
pub mod source;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use cors::{CorsBlock, CorsSetting};
pub use duration::Dur;
pub use endpoints::UpstreamList;
pub use issuer::{IssuerConfig, hash_password};
pub use limits::{Balance, Cidr, HealthConfig, RateLimitConfig, RateLimitKey, RouteTimeouts};
pub use otel::TracingConfig;
pub use protocol::Protocol;
pub use route::{Pattern, UpstreamTarget};
pub use size::Size;

use crate::jose::Alg;

/// The whole of `gateway.yaml`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub trust: TrustConfig,
    pub forward: ForwardConfig,
    pub routes: Vec<RouteConfig>,
    pub issuer: Option<IssuerConfig>,
    /// The file this config was read from (hash, load time, redacted document), for the
    /// admin `/config` page; `None` for a config built in code.
    #[serde(skip)]
    pub source: Option<std::sync::Arc<source::Source>>,
    /// Browser cross-origin settings of every route (`routes[].cors` overrides).
    pub cors: Option<CorsSetting>,
    /// Routes generated from OpenAPI documents (`src/config/openapi.rs`).
    pub openapi: Vec<openapi::OpenApiConfig>,
    /// What the `openapi` blocks generated, read at load.
    #[serde(skip)]
    pub openapi_routes: openapi::Generated,
    /// OpenTelemetry spans (OTLP/HTTP export) and head sampling.
    pub tracing: Option<TracingConfig>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Dur,
    #[serde(default)]
    pub workers: usize,
    #[serde(default)]
    pub upstream_ca_file: Option<PathBuf>,
    /// Client connections served at once; 0 derives it from the descriptor limit,
    /// keeping headroom for upstream connections and the admin listener.
    #[serde(default)]
    pub max_connections: usize,
    /// Verified-token cache entries; 0 switches the cache off (every request verifies
    /// a signature).
    #[serde(default = "default_token_cache")]
    pub token_cache_size: u64,
    /// Peers whose `x-forwarded-for` is believed: the entry such a peer added names the
    /// client (for `rate_limit.key: ip`).
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100))
}
fn default_shutdown_grace() -> Dur {
    Dur::secs(30)
}
fn default_token_cache() -> u64 {
    10_000
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            tls: None,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            shutdown_grace: default_shutdown_grace(),
            workers: 0,
            upstream_ca_file: None,
            max_connections: 0,
            token_cache_size: default_token_cache(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub upstream_connect: Dur,
    pub upstream_response: Dur,
    /// From accept (or the end of the previous answer) to a complete request head.
    pub client_header: Dur,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle: Dur,
    /// A WebSocket connection with no bytes either way is closed after this long.
    pub tunnel_idle: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            upstream_connect: Dur::secs(5),
            upstream_response: Dur::secs(30),
            client_header: Dur::secs(10),
            idle: Dur::secs(60),
            tunnel_idle: Dur::secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_token_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16_384,
            max_token_bytes: 8192,
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    #[serde(default)]
    pub issuers: Vec<TrustedIssuerConfig>,
}

fn default_leeway() -> Dur {
    Dur::secs(30)
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            leeway: default_leeway(),
            issuers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerConfig {
    pub issuer: String,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Alg>,
    #[serde(default = "default_jwks_ttl")]
    pub jwks_ttl: Dur,
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh: Dur,
    #[serde(default)]
    pub clients: Option<Vec<String>>,
    /// Claims read as scopes, in order, their scopes joined (e.g. `[scp, roles]` for
    /// Microsoft Entra ID). Unset: `scope`, or `scp` when the token has no `scope`.
    #[serde(default)]
    pub scope_claims: Option<Vec<String>>,
    /// RFC 7662 token introspection: for opaque tokens, and for every token on routes
    /// with `revocation: strict`.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
    /// RFC 8693 token exchange at this issuer's token endpoint, for routes with
    /// `upstream_token` that take its tokens.
    #[serde(default)]
    pub token_exchange: Option<TokenExchangeConfig>,
}

/// `trust.issuers[].introspection`: the issuer's RFC 7662 endpoint and the gateway's
/// client credentials for it (HTTP Basic).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
    /// How long an answer is reused (never past the token's `exp`).
    #[serde(default = "default_introspection_cache_ttl")]
    pub cache_ttl: Dur,
}

/// `trust.issuers[].token_exchange`: the issuer's token endpoint and the gateway's
/// client credentials there (HTTP Basic).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenExchangeConfig {
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
}

fn default_introspection_cache_ttl() -> Dur {
    Dur::secs(30)
}

/// `routes[].revocation`: `normal` trusts a verified JWT until it expires (the built-in
/// issuer's revocations are honoured at once regardless); `strict` also asks the
/// issuer's introspection endpoint about every token (answers cached for `cache_ttl`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Revocation {
    #[default]
    Normal,
    Strict,
}

pub fn default_algorithms() -> Vec<Alg> {
    Alg::ALL.to_vec()
}
fn default_jwks_ttl() -> Dur {
    Dur::secs(600)
}
fn default_jwks_min_refresh() -> Dur {
    Dur::secs(30)
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    pub subject: String,
    pub scopes: String,
    pub client_id: String,
    pub issuer: String,
    pub claims: BTreeMap<String, String>,
    /// What becomes of the caller's bearer token on the way upstream.
    pub token: TokenForward,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            subject: "x-auth-subject".into(),
            scopes: "x-auth-scopes".into(),
            client_id: "x-auth-client-id".into(),
            issuer: "x-auth-issuer".into(),
            claims: BTreeMap::new(),
            token: TokenForward::Strip,
        }
    }
}

/// `forward.token`: `strip` (the default) removes an `Authorization: Bearer` header
/// before the upstream, which gets the verified identity instead; `keep` sends it on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenForward {
    #[default]
    Strip,
    Keep,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// One URL or a list of endpoints.
    pub upstream: UpstreamList,
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default)]
    pub auth: AuthMode,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub any_scopes: Vec<String>,
    // Limits and upstream choices (checked in `limits.rs`).
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub health: Option<HealthConfig>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    pub max_body: Option<Size>,
    #[serde(default)]
    pub timeouts: RouteTimeouts,
    // Browsers and protocols: CORS, the upstream's HTTP version, WebSocket.
    #[serde(default)]
    pub cors: Option<CorsSetting>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub websocket: bool,
    #[serde(default)]
    pub revocation: Revocation,
    /// A token minted by the built-in issuer for the upstream replaces the caller's.
    #[serde(default)]
    pub upstream_token: Option<UpstreamTokenConfig>,
    /// `required`: only DPoP-bound tokens, each with its proof (RFC 9449).
    #[serde(default)]
    pub dpop: DpopMode,
}

/// `routes[].dpop`: DPoP-bound tokens always need their proof; `required` also refuses
/// tokens that are not bound (plain bearer tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DpopMode {
    #[default]
    Allowed,
    Required,
}

/// `routes[].upstream_token`: the upstream receives, as `Authorization: Bearer`, a token
/// the built-in issuer mints for `audience` (an API it defines), with the `scopes` the
/// caller holds among these, `act: {sub: "scopegate"}`, living no longer than the
/// caller's token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTokenConfig {
    pub audience: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    pub path: Pattern,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Required,
    Optional,
    None,
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMode::Required => "required",
            AuthMode::Optional => "optional",
            AuthMode::None => "none",
        })
    }
}

/// A configuration problem, precise enough to fix without reading the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    /// Key path such as `routes[2].match.path`; empty for the whole document.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            path: path.into(),
            line: None,
            message: message.into(),
        }
    }

    fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            f.write_str(": ")?;
        } else if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, expands `${ENV}`, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            ConfigError::at("", format!("cannot read the config file: {err}")).in_file(path)
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        Config::from_yaml_in(&text, |name| std::env::var(name).ok(), base)
            .map_err(|err| err.in_file(path))
    }

    /// Parses and validates YAML text, taking `${VAR}` values from the process
    /// environment.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_with_env(text, |name| std::env::var(name).ok())
    }

    /// Parses and validates YAML text with an explicit environment; `openapi[].file`
    /// paths are relative to the current directory.
    pub fn from_yaml_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::from_yaml_in(text, env, Path::new(""))
    }

    /// [`Config::from_yaml_with_env`] with `openapi[].file` relative to `base`.
    pub fn from_yaml_in(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
        base: &Path,
    ) -> Result<Config, ConfigError> {
        let expanded = env::expand(text, env).map_err(|(line, message)| ConfigError {
            file: None,
            path: String::new(),
            line: Some(line),
            message,
        })?;
        let deserializer = serde_norway::Deserializer::from_str(&expanded);
        let mut config: Config = match serde_path_to_error::deserialize(deserializer) {
            Ok(config) => config,
            Err(err) => {
                let path = err.path().to_string();
                let inner = err.into_inner();
                let line = inner.location().map(|l| l.line());
                let mut message = inner.to_string();
                // serde_norway appends " at line L column C" and may prefix the key path;
                // we report both ourselves, once.
                if let Some(pos) = message.find(" at line ") {
                    message.truncate(pos);
                }
                // (For an item of a list its prefix is the list's path, without the index.)
                if let Some((prefix, rest)) = message.split_once(": ")
                    && !prefix.is_empty()
                    && path.starts_with(prefix)
                {
                    message = rest.to_string();
                }
                return Err(ConfigError {
                    file: None,
                    path: if path == "." { String::new() } else { path },
                    line,
                    message,
                });
            }
        };
        config.validate()?;
        config.expand_openapi(base)?;
        config.source = Some(std::sync::Arc::new(source::Source::of(text)));
        Ok(config)
    }

    /// Every check that does not need the network, run once at load.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        if self.server.listen == self.server.admin_listen && self.server.listen.port() != 0 {
            return Err(ConfigError::at(
                "server.admin_listen",
                "the admin listener must not share the proxy's address",
            ));
        }
        validate_log(&self.log)?;
        if let Some(tracing) = &self.tracing {
            tracing.validate()?;
        }
        for (index, issuer) in self.trust.issuers.iter().enumerate() {
            issuer.validate(&format!("trust.issuers[{index}]"))?;
        }
        let mut seen_issuers = HashSet::new();
        for (index, issuer) in self.trust.issuers.iter().enumerate() {
            if !seen_issuers.insert(issuer.issuer.as_str()) {
                return Err(ConfigError::at(
                    format!("trust.issuers[{index}].issuer"),
                    format!("issuer {:?} is listed twice", issuer.issuer),
                ));
            }
        }
        self.forward.validate()?;
        let mut names = HashSet::new();
        for (index, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{index}]");
            route.validate(&at)?;
            if !names.insert(route.name.as_str()) {
                return Err(ConfigError::at(
                    format!("{at}.name"),
                    format!("route name {:?} is used by an earlier route", route.name),
                ));
            }
            if route.auth != AuthMode::None
                && self.trust.issuers.is_empty()
                && !self.issuer.as_ref().is_some_and(|i| i.enabled)
            {
                return Err(ConfigError::at(
                    format!("{at}.auth"),
                    format!(
                        "route {:?} needs tokens (auth: {}) but no issuer is trusted; add trust.issuers or enable the built-in issuer, or set auth: none",
                        route.name, route.auth
                    ),
                ));
            }
            if route.revocation == Revocation::Strict {
                self.validate_strict(&at, route)?;
            }
            if route.dpop == DpopMode::Required && route.auth == AuthMode::None {
                return Err(ConfigError::at(
                    format!("{at}.dpop"),
                    "dpop: required needs tokens; this route has auth: none",
                ));
            }
            if let Some(upstream_token) = &route.upstream_token {
                self.validate_upstream_token(&at, route, upstream_token)?;
            }
        }
        cors::validate(self)?;
        if let Some(issuer) = &self.issuer {
            issuer.validate(self)?;
        }
        Ok(())
    }
}

impl Config {
    /// `upstream_token` is minted by the built-in issuer, for one of its APIs with
    /// scopes that API defines, or obtained from a trusted issuer with `token_exchange`;
    /// for a route that verifies a token.
    fn validate_upstream_token(
        &self,
        at: &str,
        route: &RouteConfig,
        upstream_token: &UpstreamTokenConfig,
    ) -> Result<(), ConfigError> {
        let at = format!("{at}.upstream_token");
        if route.auth != AuthMode::Required {
            return Err(ConfigError::at(
                &at,
                "an upstream token is made from the caller's token: the route needs auth: required",
            ));
        }
        if route.websocket {
            return Err(ConfigError::at(
                &at,
                "upstream tokens are not sent on WebSocket routes",
            ));
        }
        if upstream_token.scopes.is_empty() {
            return Err(ConfigError::at(
                format!("{at}.scopes"),
                "list the scopes the upstream token may carry",
            ));
        }
        let builtin = self.issuer.as_ref().filter(|issuer| issuer.enabled);
        let api = builtin.and_then(|issuer| {
            issuer
                .apis
                .iter()
                .find(|api| api.identifier == upstream_token.audience)
        });
        let Some(api) = api else {
            // Every caller's token must then come from an issuer that exchanges it.
            let audience = &upstream_token.audience;
            let without = self
                .trust
                .issuers
                .iter()
                .find(|issuer| issuer.token_exchange.is_none());
            let why = match (builtin, without) {
                (Some(_), _) => format!(
                    "{audience:?} is not an API of the built-in issuer (issuer.apis[].identifier)"
                ),
                (None, _) if self.trust.issuers.is_empty() => {
                    "no issuer can provide it: add the audience to issuer.apis, \
                     or token_exchange to the trusted issuers"
                        .to_string()
                }
                (None, Some(issuer)) => format!(
                    "trusted issuer {:?} has no token_exchange, so its callers could not get a token for {audience:?}",
                    issuer.issuer
                ),
                // Obtained from the external issuers, which know their own audiences.
                (None, None) => return Ok(()),
            };
            return Err(ConfigError::at(format!("{at}.audience"), why));
        };
        for (index, scope) in upstream_token.scopes.iter().enumerate() {
            if !api.scopes.iter().any(|defined| defined.value == *scope) {
                return Err(ConfigError::at(
                    format!("{at}.scopes[{index}]"),
                    format!("{scope:?} is not a scope of API {:?}", api.identifier),
                ));
            }
        }
        Ok(())
    }

    /// `revocation: strict` needs tokens whose revocation can be checked: an issuer
    /// with `introspection`, or the built-in issuer.
    fn validate_strict(&self, at: &str, route: &RouteConfig) -> Result<(), ConfigError> {
        let at = format!("{at}.revocation");
        if route.auth == AuthMode::None {
            return Err(ConfigError::at(
                at,
                "revocation: strict needs tokens; this route has auth: none",
            ));
        }
        let checkable = self.trust.issuers.iter().any(|i| i.introspection.is_some())
            || self.issuer.as_ref().is_some_and(|i| i.enabled);
        if !checkable {
            return Err(ConfigError::at(
                at,
                "revocation: strict needs a trusted issuer with `introspection` (or the built-in issuer)",
            ));
        }
        Ok(())
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.limits.max_header_bytes < 1024 {
            return Err(ConfigError::at(
                "server.limits.max_header_bytes",
                "must be at least 1024",
            ));
        }
        if self.limits.max_token_bytes < 64 {
            return Err(ConfigError::at(
                "server.limits.max_token_bytes",
                "must be at least 64",
            ));
        }
        if self.limits.max_token_bytes > self.limits.max_header_bytes {
            return Err(ConfigError::at(
                "server.limits.max_token_bytes",
                "must not exceed server.limits.max_header_bytes",
            ));
        }
        for (key, value) in [
            ("upstream_connect", self.timeouts.upstream_connect),
            ("upstream_response", self.timeouts.upstream_response),
            ("client_header", self.timeouts.client_header),
            ("idle", self.timeouts.idle),
            ("tunnel_idle", self.timeouts.tunnel_idle),
        ] {
            if value.get().is_zero() {
                return Err(ConfigError::at(
                    format!("server.timeouts.{key}"),
                    "must be greater than zero",
                ));
            }
        }
        if self.workers > 1024 {
            return Err(ConfigError::at("server.workers", "must be 0..=1024"));
        }
        Ok(())
    }
}

fn validate_log(log: &LogConfig) -> Result<(), ConfigError> {
    tracing_subscriber::EnvFilter::try_new(&log.level)
        .map(|_| ())
        .map_err(|err| {
            ConfigError::at("log.level", format!("invalid level {:?}: {err}", log.level))
        })
}

impl TrustedIssuerConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        check_url(&self.issuer, &format!("{at}.issuer"))?;
        if let Some(jwks) = &self.jwks_uri {
            check_url(jwks, &format!("{at}.jwks_uri"))?;
        }
        if self.audiences.is_empty() {
            return Err(ConfigError::at(
                format!("{at}.audiences"),
                "list at least one audience; a token's aud must contain one of them",
            ));
        }
        for (index, audience) in self.audiences.iter().enumerate() {
            if audience.is_empty() {
                return Err(ConfigError::at(
                    format!("{at}.audiences[{index}]"),
                    "empty audience",
                ));
            }
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::at(
                format!("{at}.algorithms"),
                "list at least one algorithm",
            ));
        }
        if self.jwks_ttl.get() < std::time::Duration::from_secs(1) {
            return Err(ConfigError::at(
                format!("{at}.jwks_ttl"),
                "must be at least 1s",
            ));
        }
        if self.jwks_min_refresh.get().is_zero() {
            return Err(ConfigError::at(
                format!("{at}.jwks_min_refresh"),
                "must be greater than zero",
            ));
        }
        if let Some(clients) = &self.clients
            && clients.is_empty()
        {
            return Err(ConfigError::at(
                format!("{at}.clients"),
                "an empty allowlist would refuse every token; remove the key to allow any client",
            ));
        }
        if let Some(introspection) = &self.introspection {
            let at = format!("{at}.introspection");
            let IntrospectionConfig {
                url,
                client_id,
                client_secret,
                ..
            } = introspection;
            validate_endpoint(&at, url, client_id, client_secret)?;
        }
        if let Some(exchange) = &self.token_exchange {
            let at = format!("{at}.token_exchange");
            validate_endpoint(
                &at,
                &exchange.url,
                &exchange.client_id,
                &exchange.client_secret,
            )?;
        }
        if let Some(names) = &self.scope_claims {
            let at = format!("{at}.scope_claims");
            if names.is_empty() {
                return Err(ConfigError::at(
                    at,
                    "list at least one claim; remove the key to read `scope` (else `scp`)",
                ));
            }
            let mut seen = HashSet::new();
            for (index, name) in names.iter().enumerate() {
                if name.is_empty() || !seen.insert(name) {
                    let what = if name.is_empty() { "empty" } else { "repeated" };
                    return Err(ConfigError::at(
                        format!("{at}[{index}]"),
                        format!("{what} claim name"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An issuer endpoint the gateway calls as a client: its URL and HTTP Basic credentials.
fn validate_endpoint(
    at: &str,
    url: &str,
    client_id: &str,
    client_secret: &str,
) -> Result<(), ConfigError> {
    check_url(url, &format!("{at}.url"))?;
    if client_id.is_empty() || client_id.contains(':') {
        return Err(ConfigError::at(
            format!("{at}.client_id"),
            "a client id, not empty and without ':' (it is sent with HTTP Basic)",
        ));
    }
    if client_secret.is_empty() {
        return Err(ConfigError::at(
            format!("{at}.client_secret"),
            "the secret the gateway authenticates with (e.g. \"${GATEWAY_SECRET}\")",
        ));
    }
    Ok(())
}

/// `http(s)://` URL check for issuer and JWKS addresses: https anywhere, http only on
/// loopback.
pub fn check_url(url: &str, at: &str) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|err| ConfigError::at(at, format!("{url:?} is not a URL: {err}")))?;
    let host = uri
        .host()
        .ok_or_else(|| ConfigError::at(at, format!("{url:?} is not an absolute URL")))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback_host(host) => Ok(uri),
        Some("http") => Err(ConfigError::at(
            at,
            format!("{url:?} uses http:// on a non-loopback host; use https://"),
        )),
        _ => Err(ConfigError::at(
            at,
            format!("{url:?} must start with https:// (or http:// on loopback)"),
        )),
    }
}

pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

impl ForwardConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        let fixed = [
            ("forward.subject", &self.subject),
            ("forward.scopes", &self.scopes),
            ("forward.client_id", &self.client_id),
            ("forward.issuer", &self.issuer),
        ];
        let claims = self
            .claims
            .iter()
            .map(|(claim, header)| (format!("forward.claims.{claim:?}"), header));
        for (at, header) in fixed
            .into_iter()
            .map(|(at, header)| (at.to_string(), header))
            .chain(claims)
        {
            let name = http::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                ConfigError::at(&at, format!("{header:?} is not a valid header name"))
            })?;
            if crate::http::is_hop_by_hop(&name)
                || matches!(
                    name.as_str(),
                    "host" | "authorization" | "content-length" | "cookie" | "x-request-id"
                )
            {
                return Err(ConfigError::at(
                    &at,
                    format!("{header:?} cannot carry identity"),
                ));
            }
            if !seen.insert(crate::http::normalize_header_name(name.as_str())) {
                return Err(ConfigError::at(
                    &at,
                    format!("header {header:?} is used twice in forward"),
                ));
            }
        }
        for claim in self.claims.keys() {
            if claim.is_empty() {
                return Err(ConfigError::at("forward.claims", "empty claim name"));
            }
        }
        Ok(())
    }

    /// Every header name that carries identity upstream.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        [
            self.subject.as_str(),
            self.scopes.as_str(),
            self.client_id.as_str(),
            self.issuer.as_str(),
        ]
        .into_iter()
        .chain(self.claims.values().map(String::as_str))
    }
}

/// The methods a route may list. Not CONNECT: the gateway does not tunnel, and answers
/// every CONNECT with 405 before routing.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
];

impl RouteConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        self.validate_name(at)?;
        self.validate_methods(at)?;
        if let Some(prefix) = &self.strip_prefix {
            let ok = prefix.starts_with('/')
                && !prefix.ends_with('/')
                && !prefix.contains(['*', '{', '}', '?', '#']);
            if !ok {
                return Err(ConfigError::at(
                    format!("{at}.strip_prefix"),
                    format!(
                        "{prefix:?} must be a literal path starting with '/' and not ending with '/'"
                    ),
                ));
            }
        }
        if self.auth == AuthMode::None
            && (!self.scopes.is_empty() || !self.any_scopes.is_empty() || self.audience.is_some())
        {
            return Err(ConfigError::at(
                format!("{at}.auth"),
                "auth: none cannot require scopes or an audience",
            ));
        }
        for (key, list) in [("scopes", &self.scopes), ("any_scopes", &self.any_scopes)] {
            for (index, scope) in list.iter().enumerate() {
                if scope.is_empty()
                    || !scope
                        .bytes()
                        .all(|b| b > 0x20 && b < 0x7f && b != b'"' && b != b'\\')
                {
                    return Err(ConfigError::at(
                        format!("{at}.{key}[{index}]"),
                        format!(
                            "{scope:?} is not a valid scope (RFC 6749: printable ASCII, no spaces, quotes or backslashes)"
                        ),
                    ));
                }
            }
        }
        if let Some(audience) = &self.audience
            && audience.is_empty()
        {
            return Err(ConfigError::at(format!("{at}.audience"), "empty audience"));
        }
        protocol::validate(self, at)?;
        self.validate_limits(at)
    }

    fn validate_limits(&self, at: &str) -> Result<(), ConfigError> {
        if let Some(limit) = &self.rate_limit {
            limit.validate(at, self.auth)?;
        }
        if let Some(health) = &self.health {
            if *self.upstream.first() == UpstreamTarget::Echo {
                return Err(ConfigError::at(
                    format!("{at}.health"),
                    "builtin:echo has no endpoints to check",
                ));
            }
            health.validate(at)?;
        }
        if self.timeouts.tunnel_idle.is_some() && !self.websocket {
            return Err(ConfigError::at(
                format!("{at}.timeouts.tunnel_idle"),
                "only a WebSocket route has a tunnel: set websocket: true, or drop the key",
            ));
        }
        for (key, value) in [
            ("upstream_response", self.timeouts.upstream_response),
            ("tunnel_idle", self.timeouts.tunnel_idle),
        ] {
            if value.is_some_and(|timeout| timeout.get().is_zero()) {
                return Err(ConfigError::at(
                    format!("{at}.timeouts.{key}"),
                    "must be greater than zero",
                ));
            }
        }
        Ok(())
    }

    fn validate_name(&self, at: &str) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(ConfigError::at(
                format!("{at}.name"),
                format!(
                    "route name {:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                    self.name
                ),
            ));
        }
        if self.name == "unmatched" || self.name == "issuer" {
            return Err(ConfigError::at(
                format!("{at}.name"),
                format!("{:?} is reserved for the metrics route label", self.name),
            ));
        }
        Ok(())
    }

    fn validate_methods(&self, at: &str) -> Result<(), ConfigError> {
        if let Some(methods) = &self.matcher.methods {
            if methods.is_empty() {
                return Err(ConfigError::at(
                    format!("{at}.match.methods"),
                    "an empty method list matches nothing; remove the key to match any method",
                ));
            }
            for (index, method) in methods.iter().enumerate() {
                if method == "CONNECT" {
                    return Err(ConfigError::at(
                        format!("{at}.match.methods[{index}]"),
                        "CONNECT cannot be routed: the gateway does not tunnel (every CONNECT is answered 405)",
                    ));
                }
                if !METHODS.contains(&method.as_str()) {
                    return Err(ConfigError::at(
                        format!("{at}.match.methods[{index}]"),
                        format!(
                            "unknown method {method:?}; use upper-case names such as GET or POST"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_with_env(text, |name| {
            (name == "UPSTREAM").then(|| "http://127.0.0.1:9001".to_string())
        })
    }

    const BASE: &str =
        "trust:\n  issuers:\n    - issuer: https://id.example.com/\n      audiences: [api]\n";

    #[test]
    fn empty_file_is_a_valid_config() {
        let config = load("{}").unwrap();
        assert!(config.routes.is_empty());
        assert_eq!(config.server.listen.port(), 8080);
    }

    #[test]
    fn unknown_keys_name_their_path_and_line() {
        let text = format!(
            "{BASE}routes:\n  - name: a\n    match: {{ path: /a, method: [GET] }}\n    upstream: builtin:echo\n"
        );
        let err = load(&text).unwrap_err();
        assert_eq!(err.path, "routes[0].match.method");
        assert!(err.message.contains("unknown field `method`"), "{err}");
        assert_eq!(err.line, Some(7));
    }

    #[test]
    fn tunnel_idle_belongs_to_websocket_routes() {
        let route = |websocket: bool| {
            format!(
                "{BASE}routes:\n  - {{ name: a, match: {{ path: /a }}, upstream: http://127.0.0.1:9001, auth: none, websocket: {websocket}, timeouts: {{ tunnel_idle: 30s }} }}\n"
            )
        };
        let err = load(&route(false)).unwrap_err();
        assert_eq!(err.path, "routes[0].timeouts.tunnel_idle");
        assert!(err.message.contains("websocket: true"), "{err}");
        let config = load(&route(true)).unwrap();
        assert!(config.routes[0].timeouts.tunnel_idle.is_some());
    }

    #[test]
    fn connect_cannot_be_routed() {
        let text = format!(
            "{BASE}routes:\n  - {{ name: a, match: {{ path: /a, methods: [CONNECT] }}, upstream: builtin:echo }}\n"
        );
        let err = load(&text).unwrap_err();
        assert_eq!(err.path, "routes[0].match.methods[0]");
        assert!(err.message.contains("does not tunnel"), "{err}");
    }

    #[test]
    fn a_bad_value_names_its_key_path_once() {
        for text in [
            "trust:\n  leeway: 5\n".to_string(),
            format!(
                "{BASE}routes:\n  - name: a\n    match: {{ path: a }}\n    upstream: builtin:echo\n"
            ),
        ] {
            let err = load(&text).unwrap_err().to_string();
            let key = if text.contains("leeway") {
                "trust.leeway"
            } else {
                "routes[0].match.path"
            };
            assert_eq!(err.matches(key).count(), 1, "{err}");
        }
    }

    #[test]
    fn bad_paths_durations_and_upstreams_are_refused() {
        let route = |extra: &str| {
            format!(
                "{BASE}routes:\n  - name: a\n    match: {{ path: /a }}\n    upstream: builtin:echo\n{extra}"
            )
        };
        let err = load(&route("    strip_prefix: a/\n")).unwrap_err();
        assert_eq!(err.path, "routes[0].strip_prefix");

        let err = load(&format!(
            "{BASE}routes:\n  - name: a\n    match: {{ path: 'a/*' }}\n    upstream: builtin:echo\n"
        ))
        .unwrap_err();
        assert_eq!(err.path, "routes[0].match.path");

        let err = load(&format!(
            "{BASE}routes:\n  - name: a\n    match: {{ path: /a }}\n    upstream: ftp://x\n"
        ))
        .unwrap_err();
        assert_eq!(err.path, "routes[0].upstream");

        let err = load("server:\n  timeouts:\n    upstream_connect: 5\n").unwrap_err();
        assert_eq!(err.path, "server.timeouts.upstream_connect");
        assert!(err.message.contains("no unit"), "{err}");
    }

    #[test]
    fn duplicate_route_names_are_refused() {
        let text = format!(
            "{BASE}routes:\n  - {{ name: a, match: {{ path: /a }}, upstream: builtin:echo }}\n  - {{ name: a, match: {{ path: /b }}, upstream: '${{UPSTREAM}}' }}\n"
        );
        let err = load(&text).unwrap_err();
        assert_eq!(err.path, "routes[1].name");
    }

    #[test]
    fn protected_route_without_any_issuer_is_refused() {
        let err = load("routes:\n  - { name: a, match: { path: /a }, upstream: builtin:echo }\n")
            .unwrap_err();
        assert_eq!(err.path, "routes[0].auth");
    }

    #[test]
    fn algorithms_none_and_hmac_are_refused() {
        for alg in ["none", "HS256"] {
            let text = format!(
                "trust:\n  issuers:\n    - issuer: https://id.example.com/\n      audiences: [api]\n      algorithms: [RS256, {alg}]\n"
            );
            let err = load(&text).unwrap_err();
            assert_eq!(err.path, "trust.issuers[0].algorithms[1]", "{err}");
        }
    }

    #[test]
    fn plain_http_issuers_only_on_loopback() {
        let text =
            "trust:\n  issuers:\n    - issuer: http://id.example.com/\n      audiences: [api]\n";
        assert_eq!(load(text).unwrap_err().path, "trust.issuers[0].issuer");
        let text =
            "trust:\n  issuers:\n    - issuer: http://127.0.0.1:9/\n      audiences: [api]\n";
        assert!(load(text).is_ok());
    }

    #[test]
    fn identity_headers_must_be_distinct_and_safe() {
        let err = load("forward:\n  subject: x-auth-scopes\n").unwrap_err();
        assert_eq!(err.path, "forward.scopes");
        let err = load("forward:\n  subject: connection\n").unwrap_err();
        assert_eq!(err.path, "forward.subject");
        let err = load("forward:\n  claims: { roles: X_Auth_Subject }\n").unwrap_err();
        assert!(err.path.starts_with("forward.claims"), "{err}");
    }

    #[test]
    fn unset_env_var_is_named() {
        let err = load(
            "routes:\n  - { name: a, match: { path: /a }, upstream: '${NOPE}', auth: none }\n",
        )
        .unwrap_err();
        assert!(err.message.contains("NOPE"));
        assert_eq!(err.line, Some(2));
    }
}
