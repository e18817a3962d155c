//! Everything the request path reads, built once from a [`Config`]: compiled routes,
//! trusted issuers with their keys, header names, the upstream pool, TLS settings.
//!
//! [`Gateway`] holds the current [`State`] behind an `ArcSwap`: a reload builds a whole
//! new state and swaps it in; each request takes one snapshot and finishes on it.
//! Metrics and the JWKS fetcher outlive reloads; trusted issuers whose configuration did
//! not change are carried over with their keys.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::clock::Clock;
use crate::config::Config;
use crate::issuer::Issuer;
use crate::jwks::{KeySource, TrustedIssuer};
use crate::metrics::Metrics;
use crate::pipeline::authn::Verifier;
use crate::pipeline::authz::Policy;
use crate::pipeline::forward::ForwardHeaders;
use crate::pipeline::router::{MethodSet, Pattern, Router};
use crate::upstream::{Fetcher, UpstreamTarget, Upstreams};

/// A route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// The route's name, also its metrics label.
    pub name: Arc<str>,
    pub path: String,
    pub methods: MethodSet,
    pub policy: Policy,
    pub upstream: UpstreamTarget,
    pub strip_prefix: Option<Box<str>>,
}

impl Route {
    /// The path sent upstream: `strip_prefix` removed at a segment boundary.
    pub fn forwarded_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        let Some(prefix) = self.strip_prefix.as_deref() else {
            return path.into();
        };
        match path.strip_prefix(prefix) {
            Some("") => "/".into(),
            Some(rest) if rest.starts_with('/') => rest.into(),
            _ => path.into(),
        }
    }
}

/// One immutable generation of configuration-derived state.
pub struct State {
    pub config: Arc<Config>,
    pub routes: Vec<Route>,
    pub router: Router,
    pub verifier: Verifier,
    pub forward: ForwardHeaders,
    pub upstreams: Upstreams,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The built-in issuer, when `issuer.enabled`; its endpoints are matched before routes.
    pub issuer: Option<Arc<Issuer>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("routes", &self.routes.len())
            .field("verifier", &self.verifier)
            .finish()
    }
}

/// What outlives reloads.
pub struct Shared {
    pub metrics: Metrics,
    pub fetcher: Fetcher,
    pub clock: Clock,
}

/// What a gateway is started with besides its config. `Runtime::default()` is what
/// `scopegate run` uses: the system clock, fresh metrics, the built-in issuer (when
/// enabled) built from the config.
#[derive(Default)]
pub struct Runtime {
    /// The file reloads read, if the config came from one.
    pub config_path: Option<PathBuf>,
    /// The clock for token checks, JWKS timing, the store and key rotation; tests pass
    /// [`Clock::manual`] and advance it.
    pub clock: Clock,
    /// Metrics registry; `None` for a fresh one.
    pub metrics: Option<Metrics>,
    /// A built-in issuer made by the caller (benches share one); `None` builds it.
    pub issuer: Option<Arc<Issuer>>,
}

impl State {
    /// Builds state from a validated config. `previous` lends trusted issuers whose
    /// configuration is unchanged, so a reload does not refetch their keys, and the
    /// built-in issuer when its `store` and `keys` settings are unchanged.
    /// `prebuilt` is a built-in issuer made for this config ([`Issuer::new`]); without one
    /// and without a reusable previous issuer, it is built here, blocking
    /// ([`Issuer::new_blocking`]).
    pub fn build(
        config: Config,
        shared: &Shared,
        previous: Option<&State>,
        prebuilt: Option<Arc<Issuer>>,
    ) -> Result<State, String> {
        let tls_client =
            crate::upstream::tls_client_config(config.server.upstream_ca_file.as_deref())?;
        let builtin = match config.issuer.as_ref().filter(|i| i.enabled) {
            None => None,
            Some(issuer_config) => Some(match prebuilt {
                Some(issuer) => issuer,
                None => previous
                    .and_then(|p| p.issuer.as_ref())
                    .and_then(|old| reuse_issuer(old, issuer_config))
                    .map_or_else(
                        || Issuer::new_blocking(issuer_config, shared.metrics.clone()),
                        Ok,
                    )?,
            }),
        };
        let mut issuers = Vec::new();
        for issuer_config in &config.trust.issuers {
            let reused = previous.and_then(|p| {
                p.verifier
                    .issuers()
                    .iter()
                    .find(|old| {
                        old.config == *issuer_config
                            && !matches!(old.source, crate::jwks::KeySource::Local(_))
                    })
                    .cloned()
            });
            let issuer = match reused {
                Some(issuer) => issuer,
                None => {
                    let source = TrustedIssuer::source_for(issuer_config)?;
                    let issuer = TrustedIssuer::new(
                        issuer_config.clone(),
                        source,
                        shared.fetcher.clone(),
                        shared.metrics.clone(),
                    )?;
                    issuer.spawn_refresher();
                    issuer
                }
            };
            issuers.push(issuer);
        }
        if let Some(builtin) = &builtin {
            issuers.push(local_trust(builtin, shared, previous)?);
        }

        let mut routes = Vec::with_capacity(config.routes.len());
        let mut compiled = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let pattern = Pattern::parse(&route.matcher.path)?;
            let methods = MethodSet::from_names(route.matcher.methods.as_deref());
            compiled.push((pattern, methods));
            routes.push(Route {
                name: route.name.as_str().into(),
                path: route.matcher.path.clone(),
                methods,
                policy: Policy::from_route(route),
                upstream: UpstreamTarget::parse(&route.upstream)?,
                strip_prefix: route.strip_prefix.as_deref().map(Into::into),
            });
        }

        let verifier = Verifier::new(
            issuers,
            config.trust.leeway.get(),
            config.server.limits.max_token_bytes,
            config
                .forward
                .claims
                .keys()
                .map(|k| k.as_str().into())
                .collect(),
            config.server.token_cache_size,
        );
        let tls = match &config.server.tls {
            Some(tls) => Some(crate::server::tls_acceptor(&tls.cert_file, &tls.key_file)?),
            None => None,
        };
        Ok(State {
            router: Router::new(&compiled),
            routes,
            verifier,
            forward: ForwardHeaders::new(&config.forward)?,
            upstreams: Upstreams::new(
                tls_client,
                config.server.timeouts.upstream_connect.get(),
                config.server.timeouts.upstream_response.get(),
            ),
            tls,
            issuer: builtin,
            config: Arc::new(config),
        })
    }

    /// True once every trusted issuer has keys.
    pub fn ready(&self) -> bool {
        self.verifier.issuers().iter().all(|i| i.is_loaded())
    }
}

/// The previous issuer itself when its configuration is unchanged, else one rebuilt
/// around its store and keys when only other settings changed.
fn reuse_issuer(old: &Arc<Issuer>, config: &crate::config::IssuerConfig) -> Option<Arc<Issuer>> {
    if old.config() == config {
        Some(old.clone())
    } else {
        old.reconfigure(config)
    }
}

/// The built-in issuer as a trusted issuer, with in-process keys. Carried over from the
/// previous state when it trusts the same issuer core the same way (no key reload gap).
fn local_trust(
    builtin: &Arc<Issuer>,
    shared: &Shared,
    previous: Option<&State>,
) -> Result<Arc<TrustedIssuer>, String> {
    let trust = builtin.trust_config();
    let same_core = previous
        .and_then(|p| p.issuer.as_ref())
        .is_some_and(|old| Arc::ptr_eq(&old.core, &builtin.core));
    if same_core
        && let Some(old) = previous.and_then(|p| {
            p.verifier
                .issuers()
                .iter()
                .find(|t| matches!(t.source, KeySource::Local(_)) && t.config == trust)
        })
    {
        return Ok(old.clone());
    }
    let trusted = TrustedIssuer::new(
        trust,
        KeySource::Local(builtin.local_jwks()),
        shared.fetcher.clone(),
        shared.metrics.clone(),
    )?;
    trusted.spawn_refresher();
    Ok(trusted)
}

/// The running gateway: current state plus what outlives reloads.
pub struct Gateway {
    state: ArcSwap<State>,
    pub metrics: Metrics,
    fetcher: Fetcher,
    pub clock: Clock,
    /// The file reloads read, if the config came from one.
    pub config_path: Option<PathBuf>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config_path", &self.config_path)
            .finish()
    }
}

impl Gateway {
    /// Builds the first state. Must run inside a Tokio runtime (key refreshers start).
    /// An enabled built-in issuer is built blocking ([`Issuer::new_blocking`]);
    /// [`Gateway::start`] does the same without blocking.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<Arc<Gateway>, String> {
        Gateway::assemble(config, config_path, Metrics::new(), None)
    }

    /// Builds the first state, the built-in issuer included (its store is opened and
    /// migrated, its keys loaded or generated).
    pub async fn start(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> Result<Arc<Gateway>, String> {
        Gateway::start_with(
            config,
            Runtime {
                config_path,
                ..Runtime::default()
            },
        )
        .await
    }

    /// [`Gateway::start`] with a chosen clock, metrics registry or prebuilt issuer.
    pub async fn start_with(config: Config, runtime: Runtime) -> Result<Arc<Gateway>, String> {
        let metrics = runtime.metrics.unwrap_or_default();
        let issuer = match (runtime.issuer, config.issuer.as_ref().filter(|i| i.enabled)) {
            (Some(issuer), _) => Some(issuer),
            (None, Some(issuer_config)) => {
                Some(Issuer::new(issuer_config, metrics.clone()).await?)
            }
            (None, None) => None,
        };
        Gateway::assemble_with(config, runtime.config_path, metrics, issuer, runtime.clock)
    }

    /// [`Gateway::start`] with an issuer built by the caller (tests choose its key
    /// encryption; benches share one).
    pub fn with_issuer(
        config: Config,
        config_path: Option<PathBuf>,
        metrics: Metrics,
        issuer: Option<Arc<Issuer>>,
    ) -> Result<Arc<Gateway>, String> {
        Gateway::assemble(config, config_path, metrics, issuer)
    }

    fn assemble(
        config: Config,
        config_path: Option<PathBuf>,
        metrics: Metrics,
        issuer: Option<Arc<Issuer>>,
    ) -> Result<Arc<Gateway>, String> {
        Gateway::assemble_with(config, config_path, metrics, issuer, Clock::system())
    }

    fn assemble_with(
        config: Config,
        config_path: Option<PathBuf>,
        metrics: Metrics,
        issuer: Option<Arc<Issuer>>,
        clock: Clock,
    ) -> Result<Arc<Gateway>, String> {
        let fetcher = Fetcher::new(crate::upstream::tls_client_config(None)?);
        let shared = Shared {
            metrics: metrics.clone(),
            fetcher: fetcher.clone(),
            clock: clock.clone(),
        };
        let state = State::build(config, &shared, None, issuer)?;
        Ok(Arc::new(Gateway {
            state: ArcSwap::from_pointee(state),
            metrics,
            fetcher,
            clock,
            config_path,
        }))
    }

    /// A snapshot of the current state.
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    pub fn ready(&self) -> bool {
        self.state.load().ready()
    }

    /// Builds a new state from `config` and swaps it in. In-flight requests finish on the
    /// state they started with. On error nothing changes. The built-in issuer is reused
    /// (or reconfigured around the same store and keys); when it must be built anew this
    /// blocks meanwhile ([`Gateway::apply_async`] does not).
    pub fn apply(&self, config: Config) -> Result<(), String> {
        self.apply_with(config, None)
    }

    /// [`Gateway::apply`] for any config: builds the built-in issuer anew when it is
    /// new or its `store`/`keys` settings changed.
    pub async fn apply_async(&self, config: Config) -> Result<(), String> {
        let previous = self.state.load_full();
        let needs_build = match config.issuer.as_ref().filter(|i| i.enabled) {
            None => false,
            Some(issuer_config) => previous.issuer.as_ref().is_none_or(|old| {
                old.config() != issuer_config && old.reconfigure(issuer_config).is_none()
            }),
        };
        let prebuilt = match config.issuer.as_ref().filter(|_| needs_build) {
            Some(issuer_config) => match Issuer::new(issuer_config, self.metrics.clone()).await {
                Ok(issuer) => Some(issuer),
                Err(err) => {
                    self.metrics
                        .config_reloads_total
                        .with_label_values(&["error"])
                        .inc();
                    return Err(err);
                }
            },
            None => None,
        };
        self.apply_with(config, prebuilt)
    }

    fn apply_with(&self, config: Config, prebuilt: Option<Arc<Issuer>>) -> Result<(), String> {
        let shared = Shared {
            metrics: self.metrics.clone(),
            fetcher: self.fetcher.clone(),
            clock: self.clock.clone(),
        };
        let previous = self.state.load_full();
        let result = State::build(config, &shared, Some(&previous), prebuilt);
        let label = if result.is_ok() { "success" } else { "error" };
        self.metrics
            .config_reloads_total
            .with_label_values(&[label])
            .inc();
        let state = result?;
        if state.config.server.listen != previous.config.server.listen
            || state.config.server.admin_listen != previous.config.server.admin_listen
        {
            tracing::warn!("listen addresses changed; they take effect only after a restart");
        }
        if state.config.server.workers != previous.config.server.workers {
            tracing::warn!("server.workers changed; it takes effect only after a restart");
        }
        self.state.store(Arc::new(state));
        Ok(())
    }

    /// [`Gateway::reload`] that may rebuild the built-in issuer ([`Gateway::apply_async`]).
    pub async fn reload_async(&self) -> Result<(), String> {
        let Some(path) = &self.config_path else {
            return Err("the configuration did not come from a file".into());
        };
        match Config::load(path) {
            Ok(config) => self.apply_async(config).await,
            Err(err) => {
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["error"])
                    .inc();
                Err(err.to_string())
            }
        }
    }

    /// Re-reads the config file and applies it; a bad file leaves the old state serving.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.config_path else {
            return Err("the configuration did not come from a file".into());
        };
        match Config::load(path) {
            Ok(config) => self.apply(config),
            Err(err) => {
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["error"])
                    .inc();
                Err(err.to_string())
            }
        }
    }
}
