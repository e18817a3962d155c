//! Everything the request path reads, compiled once from a [`Config`]:
//! [`State::compile`] is the one path from config to runtime, used by `scopegate run`
//! (and every reload) and by `scopegate check`, so `check` refuses whatever `run` would.
//!
//! [`Gateway`] holds the current [`State`] behind an `ArcSwap`: a reload compiles a whole
//! new state and swaps it in; each request takes one snapshot and finishes on it.
//! Metrics, the clock and the JWKS fetcher outlive reloads; trusted issuers whose
//! configuration did not change are carried over with their keys.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::clock::Clock;
use crate::config::openapi::GeneratedRoute;
use crate::config::{Config, ConfigError, RateLimitConfig, RateLimitKey, RouteConfig};
use crate::http::{Body, ConnInfo};
use crate::issuer::{Endpoint, Issuer};
use crate::jwks::{KeySource, TrustedIssuer};
use crate::metrics::Metrics;
use crate::otlp::Tracing;
use crate::pipeline::authn::{Revocations, Verifier};
use crate::pipeline::authz::Policy;
use crate::pipeline::dpop::ProofChecker;
use crate::pipeline::forward::ForwardHeaders;
use crate::pipeline::limit::{RouteContext, RouteLimits};
use crate::pipeline::router::{MethodSet, Pattern, Router};
use crate::pipeline::upstream_token::{Exchanger, UpstreamToken};
use crate::pipeline::web::RouteWeb;
use crate::pipeline::{ISSUER_ROUTE, Pipeline, Route, Target};
use crate::upstream::{Fetcher, Upstreams};

/// One immutable generation of configuration-derived state.
pub struct State {
    pub config: Arc<Config>,
    pub pipeline: Pipeline,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Trusted issuers made for this state (not carried over): their key refreshers
    /// start when the state is put to work ([`State::start`]).
    fresh: Vec<Arc<TrustedIssuer>>,
    /// Notes for the route table (config routes that issuer endpoints shadow).
    notes: Vec<String>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("routes", &self.pipeline.routes.len())
            .field("verifier", &self.pipeline.verifier)
            .finish()
    }
}

/// What outlives reloads.
pub struct Shared {
    pub metrics: Metrics,
    pub fetcher: Fetcher,
    pub clock: Clock,
    /// DPoP proofs seen (replay cache), kept across reloads.
    pub dpop: Arc<ProofChecker>,
}

impl Shared {
    pub fn new(metrics: Metrics, clock: Clock) -> Result<Shared, String> {
        Ok(Shared {
            metrics,
            fetcher: Fetcher::new(crate::tls::tls_client_config(None).map_err(|e| e.to_string())?),
            dpop: Arc::new(ProofChecker::new(clock.clone())),
            clock,
        })
    }
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

/// The built-in issuer a state is compiled with.
pub enum Builtin {
    /// Not enabled, or only checked (`scopegate check`): its endpoints are routed, but
    /// nothing serves them and its keys are not trusted.
    Absent,
    /// Built and ready (its store open, its keys loaded).
    Ready(Arc<Issuer>),
}

impl State {
    /// Compiles a config: every check `run` makes, one error per problem, each with its
    /// key path. Starts nothing; [`State::start`] does once the state serves.
    /// `previous` lends trusted issuers whose configuration is unchanged, so a reload
    /// does not refetch their keys.
    pub fn compile(
        config: Config,
        shared: &Shared,
        previous: Option<&State>,
        builtin: Builtin,
    ) -> Result<State, Vec<ConfigError>> {
        let builtin = match builtin {
            Builtin::Ready(issuer) if config.issuer.as_ref().is_some_and(|i| i.enabled) => {
                Some(issuer)
            }
            _ => None,
        };
        let Parts {
            tls_client,
            tls,
            forward,
            issuers,
            fresh,
        } = Parts::compile(&config, shared, previous, builtin.as_ref())?;
        let tracing = Tracing::new(
            config.tracing.as_ref(),
            previous
                .filter(|p| p.config.server.upstream_ca_file == config.server.upstream_ca_file)
                .map(|p| &p.pipeline.tracing),
            || Fetcher::new(tls_client.clone()),
            &shared.metrics,
        );
        let claim_names = claim_names(&config);
        let (routes, router, notes) = compile_routes(&config, shared, &claim_names)?;
        // The built-in issuer is the last trusted issuer; its revocations are honoured.
        let revocations = builtin.as_ref().map(|issuer| Revocations {
            issuer_index: issuers.len() - 1,
            store: issuer.core.store.clone(),
        });
        let verifier = Verifier::new(
            issuers,
            config.trust.leeway.get(),
            config.server.limits.max_token_bytes,
            claim_names,
            config.server.token_cache_size,
            shared.clock.clone(),
        )
        .with_revocations(revocations)
        .with_introspection(&shared.fetcher)
        .map_err(|err| vec![ConfigError::at("trust.issuers", err)])?;
        Ok(State {
            pipeline: Pipeline {
                routes,
                router,
                verifier,
                forward,
                upstreams: Upstreams::new(
                    tls_client,
                    config.server.timeouts.upstream_connect.get(),
                    config.server.timeouts.upstream_response.get(),
                ),
                max_header_bytes: config.server.limits.max_header_bytes,
                issuer: builtin,
                trusted_proxies: config.server.trusted_proxies.as_slice().into(),
                dpop: shared.dpop.clone(),
                tracing,
            },
            tls,
            fresh,
            notes,
            config: Arc::new(config),
        })
    }

    /// Puts a compiled state to work: starts the key refreshers of its new trusted
    /// issuers and its span exporter (unless carried over). Must run inside a Tokio
    /// runtime.
    pub fn start(&self) {
        if let Some(exporter) = &self.pipeline.tracing.exporter {
            exporter.start();
        }
        for issuer in &self.fresh {
            issuer.spawn_refresher();
        }
        for route in &self.pipeline.routes {
            if let Some(set) = &route.limits.endpoints {
                crate::upstream::health::spawn(set, &self.pipeline.upstreams);
            }
        }
    }

    /// True once every trusted issuer has keys and the built-in issuer's store answers.
    pub fn ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// Why the gateway is not ready, if it is not: a trusted issuer's keys not loaded
    /// yet, or the built-in issuer's store unreachable (its last probe failed).
    pub fn readiness(&self) -> Result<(), &'static str> {
        let loaded = self
            .pipeline
            .verifier
            .issuers()
            .iter()
            .all(|i| i.is_loaded());
        if !loaded {
            return Err("waiting for trusted issuers' keys");
        }
        if let Some(issuer) = &self.pipeline.issuer
            && !issuer.store_reachable()
        {
            return Err("the issuer's store is unreachable");
        }
        Ok(())
    }

    /// The route table `scopegate check` prints: one line per route, in file order,
    /// then the built-in issuer's endpoints and what they shadow.
    pub fn route_table(&self) -> String {
        route_table(&self.config, &self.notes)
    }
}

/// What compiling a config builds from files, the environment and trusted issuers:
/// each a place where it can fail.
struct Parts {
    tls_client: rustls::ClientConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    forward: ForwardHeaders,
    issuers: Vec<Arc<TrustedIssuer>>,
    fresh: Vec<Arc<TrustedIssuer>>,
}

impl Parts {
    /// Every part, or every error (not just the first).
    fn compile(
        config: &Config,
        shared: &Shared,
        previous: Option<&State>,
        builtin: Option<&Arc<Issuer>>,
    ) -> Result<Parts, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let tls_client = keep(
            &mut errors,
            crate::tls::tls_client_config(config.server.upstream_ca_file.as_deref())
                .map_err(|err| ConfigError::at("server.upstream_ca_file", err)),
        );
        let tls = match &config.server.tls {
            Some(tls) => keep(
                &mut errors,
                crate::tls::tls_acceptor(&tls.cert_file, &tls.key_file)
                    .map(Some)
                    .map_err(|err| ConfigError::at(err.key(), err.to_string())),
            ),
            None => Some(None),
        };
        let forward = keep(
            &mut errors,
            ForwardHeaders::new(&config.forward).map_err(|err| ConfigError::at("forward", err)),
        );
        if config.issuer.as_ref().is_some_and(|i| i.enabled) {
            keep(
                &mut errors,
                crate::issuer::keys::KeyEncryption::from_env()
                    .map(|_| ())
                    .map_err(|err| ConfigError::at("issuer.keys", err)),
            );
        }
        let issuers = keep(
            &mut errors,
            trusted_issuers(config, shared, previous, builtin),
        );
        let (Some(tls_client), Some(tls), Some(forward), Some((issuers, fresh))) =
            (tls_client, tls, forward, issuers)
        else {
            return Err(errors);
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Parts {
            tls_client,
            tls,
            forward,
            issuers,
            fresh,
        })
    }
}

/// The value, or `None` with the error kept.
fn keep<T>(errors: &mut Vec<ConfigError>, result: Result<T, ConfigError>) -> Option<T> {
    result.map_err(|err| errors.push(err)).ok()
}

/// The claims read from every verified token into `Identity::mapped`: the
/// `forward.claims` (in their order, which `ForwardHeaders` zips with), then those that
/// rate limits count by.
fn claim_names(config: &Config) -> Vec<Box<str>> {
    let mut names: Vec<Box<str>> = config
        .forward
        .claims
        .keys()
        .map(|k| k.as_str().into())
        .collect();
    for route in &config.routes {
        if let Some(RateLimitConfig {
            key: RateLimitKey::Claim(claim),
            ..
        }) = &route.rate_limit
            && !names.iter().any(|n| **n == **claim)
        {
            names.push(claim.as_str().into());
        }
    }
    names
}

/// The config's routes behind the built-in issuer's endpoints (which reserve their
/// paths), compiled into one router; notes name the routes that lose paths to them.
fn compile_routes(
    config: &Config,
    shared: &Shared,
    claim_names: &[Box<str>],
) -> Result<(Vec<Route>, Router, Vec<String>), Vec<ConfigError>> {
    let mut routes = Vec::new();
    let mut reserved = Vec::new();
    if let Some(issuer) = config.issuer.as_ref().filter(|i| i.enabled) {
        let base = issuer.base_path();
        let paths = Endpoint::ALL.into_iter().flat_map(|endpoint| {
            endpoint
                .route_paths(&base)
                .into_iter()
                .map(move |p| (endpoint, p))
        });
        for (endpoint, path) in paths {
            let names: Vec<String> = endpoint.methods().iter().map(|m| m.to_string()).collect();
            let methods = MethodSet::from_names(Some(&names));
            match Pattern::parse(&path) {
                Ok(pattern) => reserved.push((pattern, methods)),
                // The issuer URL's path was checked at load; a path that still does not
                // parse is left unrouted (404) rather than served wrongly.
                Err(err) => {
                    tracing::error!(path, error = %err, "issuer endpoint not routable");
                    continue;
                }
            }
            routes.push(Route {
                name: Arc::from(ISSUER_ROUTE),
                path,
                methods,
                policy: Policy::open(),
                target: Target::Issuer(endpoint),
                strip_prefix: None,
                limits: Default::default(),
                web: Default::default(),
                upstream_token: None,
            });
        }
    }
    let context = RouteContext {
        clock: &shared.clock,
        metrics: &shared.metrics,
        trusted_proxies: config.server.trusted_proxies.as_slice().into(),
        claim_names,
        tunnel_idle: config.server.timeouts.tunnel_idle.get(),
    };
    let mut errors = Vec::new();
    // By trusted issuer, in `trust.issuers` order (an identity's `issuer_index`).
    let exchangers: Arc<[Option<Exchanger>]> = config
        .trust
        .issuers
        .iter()
        .enumerate()
        .map(|(index, issuer)| {
            let exchange = issuer.token_exchange.as_ref()?;
            Exchanger::new(
                exchange,
                shared.fetcher.clone(),
                config.server.limits.max_token_bytes,
            )
            .map_err(|err| {
                let at = format!("trust.issuers[{index}].token_exchange");
                errors.push(ConfigError::at(at, err));
            })
            .ok()
        })
        .collect();
    let mut compiled = Vec::with_capacity(config.routes.len());
    // Explicit routes first (they win ties), then those generated from OpenAPI.
    for (at, route, generated) in config_routes(config) {
        let limits = match RouteLimits::from_route(route, &context) {
            Ok(limits) => limits,
            Err(err) => {
                errors.push(ConfigError::at(at, err));
                continue;
            }
        };
        let methods = MethodSet::from_names(route.matcher.methods.as_deref());
        compiled.push((route.matcher.path.clone(), methods));
        routes.push(Route {
            name: route.name.as_str().into(),
            path: route.matcher.path.to_string(),
            methods,
            policy: Policy::from_route(route)
                .with_alternatives(generated.map_or(&[], |g| g.alternatives.as_slice())),
            target: Target::Upstream(route.upstream.first().clone()),
            strip_prefix: route.strip_prefix.as_deref().map(Into::into),
            limits,
            web: RouteWeb::compile(config, route, methods),
            upstream_token: route.upstream_token.as_ref().map(|upstream_token| {
                UpstreamToken::new(
                    &route.name,
                    upstream_token,
                    exchangers.clone(),
                    shared.clock.clone(),
                    &shared.metrics,
                )
            }),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let notes = shadow_notes(config, &reserved, &routes[reserved.len()..]);
    Ok((routes, Router::with_reserved(&reserved, &compiled), notes))
}

/// Every route of the config with its key path: `routes:` in file order, then those
/// generated from `openapi:` documents.
fn config_routes(
    config: &Config,
) -> impl Iterator<Item = (String, &RouteConfig, Option<&GeneratedRoute>)> {
    let explicit = config
        .routes
        .iter()
        .enumerate()
        .map(|(index, route)| (format!("routes[{index}]"), route, None));
    let generated = config
        .openapi_routes
        .routes
        .iter()
        .map(|g| (format!("openapi[{}]", g.block), &g.route, Some(g)));
    explicit.chain(generated)
}

/// Config routes whose paths include issuer endpoints (which are matched first).
fn shadow_notes(
    config: &Config,
    reserved: &[(Pattern, MethodSet)],
    routes: &[Route],
) -> Vec<String> {
    let endpoints: Vec<String> = reserved.iter().map(|(p, _)| p.to_string()).collect();
    let mut notes = Vec::new();
    for (route, (_, config_route, _)) in routes.iter().zip(config_routes(config)) {
        let router = Router::new(&[(config_route.matcher.path.clone(), MethodSet::any())]);
        let taken: Vec<&str> = endpoints
            .iter()
            .filter(|path| {
                !matches!(
                    router.lookup(path, &http::Method::GET),
                    crate::pipeline::router::Lookup::NotFound
                )
            })
            .map(String::as_str)
            .collect();
        if !taken.is_empty() {
            notes.push(format!(
                "note: route {:?} does not get {}: the issuer serves it",
                route.name,
                taken.join(" ")
            ));
        }
    }
    notes
}

/// The trusted issuers, reusing the previous state's where unchanged, with the built-in
/// issuer last; and those made anew (whose refreshers must start).
type Issuers = (Vec<Arc<TrustedIssuer>>, Vec<Arc<TrustedIssuer>>);

fn trusted_issuers(
    config: &Config,
    shared: &Shared,
    previous: Option<&State>,
    builtin: Option<&Arc<Issuer>>,
) -> Result<Issuers, ConfigError> {
    let mut issuers = Vec::new();
    let mut fresh = Vec::new();
    for (index, issuer_config) in config.trust.issuers.iter().enumerate() {
        let reused = previous.and_then(|p| {
            p.pipeline
                .verifier
                .issuers()
                .iter()
                .find(|old| {
                    old.config == *issuer_config && !matches!(old.source, KeySource::Local(_))
                })
                .cloned()
        });
        let issuer = match reused {
            Some(issuer) => issuer,
            None => {
                let at = format!("trust.issuers[{index}]");
                let source = TrustedIssuer::source_for(issuer_config)
                    .map_err(|err| ConfigError::at(&at, err))?;
                let issuer = TrustedIssuer::new(
                    issuer_config.clone(),
                    source,
                    shared.fetcher.clone(),
                    shared.metrics.clone(),
                    shared.clock.clone(),
                )
                .map_err(|err| ConfigError::at(&at, err))?;
                fresh.push(issuer.clone());
                issuer
            }
        };
        issuers.push(issuer);
    }
    if let Some(builtin) = builtin {
        let (trusted, made) =
            local_trust(builtin, shared, previous).map_err(|err| ConfigError::at("issuer", err))?;
        if made {
            fresh.push(trusted.clone());
        }
        issuers.push(trusted);
    }
    Ok((issuers, fresh))
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
/// The second value is true when it was made anew.
fn local_trust(
    builtin: &Arc<Issuer>,
    shared: &Shared,
    previous: Option<&State>,
) -> Result<(Arc<TrustedIssuer>, bool), String> {
    let trust = builtin.trust_config();
    let same_core = previous
        .and_then(|p| p.pipeline.issuer.as_ref())
        .is_some_and(|old| Arc::ptr_eq(&old.core, &builtin.core));
    if same_core
        && let Some(old) = previous.and_then(|p| {
            p.pipeline
                .verifier
                .issuers()
                .iter()
                .find(|t| matches!(t.source, KeySource::Local(_)) && t.config == trust)
        })
    {
        return Ok((old.clone(), false));
    }
    let trusted = TrustedIssuer::new(
        trust,
        KeySource::Local(builtin.local_jwks()),
        shared.fetcher.clone(),
        shared.metrics.clone(),
        shared.clock.clone(),
    )?;
    Ok((trusted, true))
}

/// The route table `scopegate check` prints: one line per route, in file order.
fn route_table(config: &Config, notes: &[String]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "METHODS".into(),
        "PATH".into(),
        "AUTH".into(),
        "SCOPES".into(),
        "UPSTREAM".into(),
        "ORIGIN".into(),
    ]];
    for (_, route, generated) in config_routes(config) {
        let mut scopes = route.scopes.join(" ");
        if let Some(g) = generated.filter(|g| !g.alternatives.is_empty()) {
            let sets: Vec<String> = g
                .alternatives
                .iter()
                .map(|set| format!("({})", set.join(" ")))
                .collect();
            scopes = format!("one of {}", sets.join(" | "));
        }
        if !route.any_scopes.is_empty() {
            if !scopes.is_empty() {
                scopes.push_str(" + ");
            }
            scopes.push_str(&format!("one of ({})", route.any_scopes.join(" ")));
        }
        if let Some(audience) = &route.audience {
            scopes = format!("{scopes} [aud {audience}]").trim().to_string();
        }
        rows.push([
            route.name.clone(),
            route
                .matcher
                .methods
                .as_ref()
                .map_or_else(|| "*".to_string(), |m| m.join(",")),
            match &route.strip_prefix {
                Some(prefix) => format!("{} (strip {prefix})", route.matcher.path),
                None => route.matcher.path.to_string(),
            },
            route.auth.to_string(),
            if scopes.is_empty() {
                "-".into()
            } else {
                scopes
            },
            route.upstream.to_string(),
            generated.map_or_else(|| "routes".to_string(), |g| g.origin.clone()),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let builtin = config.issuer.as_ref().filter(|i| i.enabled);
    if let Some(issuer) = builtin {
        let base = issuer.base_path();
        let endpoints: Vec<String> = Endpoint::ALL
            .iter()
            .flat_map(|e| e.route_paths(&base))
            .collect();
        out.push_str(&format!(
            "built-in issuer {}: {} (matched before routes)\n",
            issuer.url,
            endpoints.join(" ")
        ));
    }
    for note in config.openapi_routes.notes.iter().chain(notes) {
        out.push_str(note);
        out.push('\n');
    }
    out.push_str(&format!(
        "{} route(s); {} trusted issuer(s)\n",
        config.routes.len() + config.openapi_routes.routes.len(),
        config.trust.issuers.len() + usize::from(builtin.is_some())
    ));
    out
}

/// The running gateway: current state plus what outlives reloads.
pub struct Gateway {
    state: ArcSwap<State>,
    shared: Shared,
    pub metrics: Metrics,
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

/// Compile errors as one message, a line each.
fn joined(errors: Vec<ConfigError>) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Gateway {
    /// Compiles the first state and starts it, the built-in issuer included (its store
    /// opened and migrated, its keys loaded or generated). Must run inside a Tokio
    /// runtime.
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
        let shared = Shared::new(metrics.clone(), runtime.clock.clone())?;
        let builtin = match (runtime.issuer, config.issuer.as_ref().filter(|i| i.enabled)) {
            (Some(issuer), _) => Builtin::Ready(issuer),
            (None, Some(issuer_config)) => Builtin::Ready(
                Issuer::with_clock(issuer_config, metrics.clone(), shared.clock.clone()).await?,
            ),
            (None, None) => Builtin::Absent,
        };
        let state = State::compile(config, &shared, None, builtin).map_err(joined)?;
        state.start();
        Ok(Arc::new(Gateway {
            state: ArcSwap::from_pointee(state),
            shared,
            metrics,
            clock: runtime.clock,
            config_path: runtime.config_path,
        }))
    }

    /// A snapshot of the current state.
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    pub fn ready(&self) -> bool {
        self.state.load().ready()
    }

    /// [`State::readiness`] of the current state: what `/readyz` answers.
    pub fn readiness(&self) -> Result<(), &'static str> {
        self.state.load().readiness()
    }

    /// Serves one request on the current state (see [`crate::pipeline::access`]).
    pub async fn handle(&self, request: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        let state = self.state();
        crate::pipeline::access::serve(&self.metrics, &state.pipeline, request, conn).await
    }

    /// Compiles a new state from `config` and swaps it in. In-flight requests finish on
    /// the state they started with. On error nothing changes. The built-in issuer is
    /// reused, reconfigured around the same store and keys, or built anew when it is new
    /// or its `store`/`keys` settings changed.
    pub async fn apply(&self, config: Config) -> Result<(), String> {
        let result = self.compile_next(config).await;
        let label = if result.is_ok() { "success" } else { "error" };
        self.metrics
            .config_reloads_total
            .with_label_values(&[label])
            .inc();
        let (state, previous) = result?;
        if state.config.server.listen != previous.config.server.listen
            || state.config.server.admin_listen != previous.config.server.admin_listen
        {
            tracing::warn!("listen addresses changed; they take effect only after a restart");
        }
        if state.config.server.workers != previous.config.server.workers {
            tracing::warn!("server.workers changed; it takes effect only after a restart");
        }
        if state.config.tracing != previous.config.tracing {
            // Applied: a new exporter when the collector or service name changed; the
            // previous one sends what it holds once the requests on it are done.
            tracing::info!("tracing changed; new requests are traced by the new settings");
        }
        state.start();
        self.state.store(Arc::new(state));
        Ok(())
    }

    async fn compile_next(&self, config: Config) -> Result<(State, Arc<State>), String> {
        let previous = self.state.load_full();
        let builtin = match config.issuer.as_ref().filter(|i| i.enabled) {
            None => Builtin::Absent,
            Some(issuer_config) => {
                let reused = previous
                    .pipeline
                    .issuer
                    .as_ref()
                    .and_then(|old| reuse_issuer(old, issuer_config));
                match reused {
                    Some(issuer) => Builtin::Ready(issuer),
                    None => Builtin::Ready(
                        Issuer::with_clock(
                            issuer_config,
                            self.metrics.clone(),
                            self.shared.clock.clone(),
                        )
                        .await?,
                    ),
                }
            }
        };
        let state =
            State::compile(config, &self.shared, Some(&previous), builtin).map_err(joined)?;
        Ok((state, previous))
    }

    /// Sends the spans queued for the collector (on shutdown), waiting at most
    /// `within`.
    pub async fn flush_spans(&self, within: std::time::Duration) {
        let state = self.state();
        if let Some(exporter) = &state.pipeline.tracing.exporter
            && tokio::time::timeout(within, exporter.flush())
                .await
                .is_err()
        {
            tracing::warn!(
                ?within,
                "spans were still being sent to the collector at exit"
            );
        }
    }

    /// Re-reads the config file and applies it; a bad file leaves the old state serving.
    pub async fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.config_path else {
            return Err("the configuration did not come from a file".into());
        };
        match Config::load(path) {
            Ok(config) => self.apply(config).await,
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
