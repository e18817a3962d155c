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

use crate::config::Config;
use crate::jwks::TrustedIssuer;
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
}

impl State {
    /// Builds state from a validated config. `previous` lends trusted issuers whose
    /// configuration is unchanged, so a reload does not refetch their keys.
    pub fn build(
        config: Config,
        shared: &Shared,
        previous: Option<&State>,
    ) -> Result<State, String> {
        let tls_client =
            crate::upstream::tls_client_config(config.server.upstream_ca_file.as_deref())?;
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
            config: Arc::new(config),
        })
    }

    /// True once every trusted issuer has keys.
    pub fn ready(&self) -> bool {
        self.verifier.issuers().iter().all(|i| i.is_loaded())
    }
}

/// The running gateway: current state plus what outlives reloads.
pub struct Gateway {
    state: ArcSwap<State>,
    pub metrics: Metrics,
    fetcher: Fetcher,
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
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<Arc<Gateway>, String> {
        let metrics = Metrics::new();
        let fetcher = Fetcher::new(crate::upstream::tls_client_config(None)?);
        let shared = Shared {
            metrics: metrics.clone(),
            fetcher: fetcher.clone(),
        };
        let state = State::build(config, &shared, None)?;
        Ok(Arc::new(Gateway {
            state: ArcSwap::from_pointee(state),
            metrics,
            fetcher,
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
    /// state they started with. On error nothing changes.
    pub fn apply(&self, config: Config) -> Result<(), String> {
        let shared = Shared {
            metrics: self.metrics.clone(),
            fetcher: self.fetcher.clone(),
        };
        let previous = self.state.load_full();
        let result = State::build(config, &shared, Some(&previous));
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
        self.state.store(Arc::new(state));
        Ok(())
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
