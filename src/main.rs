//! The `scopegate` command: `run` (the default), `check`, `schema`, `hash-password`.

#![forbid(unsafe_code)]

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use scopegate::clock::Clock;
use scopegate::config::Config;
use scopegate::metrics::Metrics;
use scopegate::state::{Builtin, Gateway, Shared, State};

#[derive(Parser)]
#[command(
    name = "scopegate",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SCOPEGATE_COMMIT"), ")"),
    about = "An API gateway that enforces OAuth 2.0 access tokens"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file.
    #[arg(
        short,
        long,
        global = true,
        env = "SCOPEGATE_CONFIG",
        default_value = "gateway.yaml"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the configuration and print the route table.
    Check,
    /// Print the JSON Schema of the configuration file (docs/gateway.schema.json).
    Schema,
    /// Read a password on stdin and print an argon2id PHC string.
    HashPassword,
}

/// jemalloc: its per-thread caches make the ~20 allocations of a proxied request cheaper
/// than glibc's malloc (benches/RESULTS.md), and allocations over 8 MiB (argon2id's
/// working memory) come from an arena of their own whose pages go back to the system as
/// soon as they are freed. Without the `jemalloc` feature: the system allocator.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::Check => check(&cli.config),
        Command::Schema => {
            print!("{}", scopegate::config::schema::schema_text());
            Ok(())
        }
        Command::HashPassword => hash_password(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(errors) => {
            for line in errors.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// How long the spans still queued for the collector may take to go at exit.
const SPAN_FLUSH_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `server.workers` resolved: 0 means one per core this process may run on (its CPU
/// affinity and cgroup quota, as `available_parallelism` reads them).
fn worker_count(workers: usize) -> usize {
    match workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

/// A current-thread Tokio runtime: no work-stealing machinery, no second thread for the
/// accept loop. One worker serves on it directly (measured 12-18% more requests/s than a
/// one-worker multi-thread runtime, benches/RESULTS.md); with more, it accepts, runs the
/// admin listener and the background work, and each worker thread has one of its own
/// ([`scopegate::Workers`]).
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the runtime: {err}"))
}

/// Loads and compiles the config as `run` would (`State::compile`), without opening the
/// issuer's store or binding listeners; prints the route table, or every error.
fn check(path: &Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|err| err.to_string())?;
    let state = runtime()?.block_on(async {
        let shared = Shared::new(Metrics::new(), Clock::system())?;
        State::compile(config, &shared, None, Builtin::Absent).map_err(|errors| {
            errors
                .iter()
                .map(|err| format!("{}: {err}", path.display()))
                .collect::<Vec<_>>()
                .join("\n")
        })
    })?;
    print!("{}", state.route_table());
    Ok(())
}

fn hash_password() -> Result<(), String> {
    let password = if std::io::stdin().is_terminal() {
        read_password_at_the_terminal()?
    } else {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .map_err(|err| format!("cannot read the password from stdin: {err}"))?;
        let line = input
            .strip_suffix("\r\n")
            .or_else(|| input.strip_suffix('\n'));
        line.unwrap_or(&input).to_owned()
    };
    if password.is_empty() {
        return Err("empty password".into());
    }
    println!("{}", scopegate::config::hash_password(&password)?);
    Ok(())
}

/// Asks twice without echo, so a typo is not hashed.
fn read_password_at_the_terminal() -> Result<String, String> {
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map_err(|err| format!("cannot read the password from the terminal: {err}"))
    };
    let password = ask("Password: ")?;
    if ask("Password (again): ")? != password {
        return Err("the two passwords differ".into());
    }
    Ok(password)
}

fn run(path: &Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|err| err.to_string())?;
    // What the running config came from: the file watcher applies any later change,
    // even one made while the gateway starts.
    let loaded = std::fs::read(path).ok();
    scopegate::telemetry::init(&config.log);
    let workers = match worker_count(config.server.workers) {
        1 => None,
        count => Some(
            scopegate::Workers::start(count)
                .map_err(|err| format!("cannot start {count} worker threads: {err}"))?,
        ),
    };
    let served = runtime()?.block_on(serve(config, path, loaded, workers.as_ref()));
    if let Some(workers) = workers {
        workers.stop();
    }
    served.inspect_err(|err| tracing::error!("{err}"))
}

async fn serve(
    config: Config,
    path: &Path,
    loaded: Option<Vec<u8>>,
    workers: Option<&scopegate::Workers>,
) -> Result<(), String> {
    let listen = config.server.listen;
    let admin_listen = config.server.admin_listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| format!("cannot listen on {listen}: {err}"))?;
    let admin_listener = tokio::net::TcpListener::bind(admin_listen)
        .await
        .map_err(|err| format!("cannot listen on {admin_listen} (admin): {err}"))?;
    let gateway = Gateway::start(config, Some(path.to_path_buf())).await?;

    // Reload on file change too; without a watcher, SIGHUP still works.
    let _watcher = scopegate::reload::watch(gateway.clone(), path, loaded)
        .inspect_err(|err| tracing::warn!(error = %err, "config file changes will not be noticed; use SIGHUP"))
        .ok();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate())
            .map_err(|err| format!("cannot handle SIGTERM: {err}"))?;
        let hup =
            signal(SignalKind::hangup()).map_err(|err| format!("cannot handle SIGHUP: {err}"))?;
        tokio::spawn(signals(gateway.clone(), term, hup, stop_tx));
    }
    // Announced only once signals and the watcher are in place.
    let bound = |l: &tokio::net::TcpListener, asked| l.local_addr().unwrap_or(asked);
    tracing::info!(
        listen = %bound(&listener, listen),
        admin_listen = %bound(&admin_listener, admin_listen),
        workers = workers.map_or(1, scopegate::Workers::count),
        config = %path.display(),
        version = env!("CARGO_PKG_VERSION"),
        commit = env!("SCOPEGATE_COMMIT"),
        "scopegate serving"
    );

    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin = tokio::spawn(scopegate::serve_admin(
        admin_listener,
        gateway.clone(),
        stopped(stop_rx.clone()),
    ));
    scopegate::serve_on(listener, gateway.clone(), stopped(stop_rx), workers)
        .await
        .map_err(|err| err.to_string())?;
    gateway.flush_spans(SPAN_FLUSH_AT_EXIT).await;
    admin.abort();
    tracing::info!("scopegate stopped");
    Ok(())
}

/// SIGTERM / Ctrl-C: stop accepting and drain. SIGHUP: reload the config.
async fn signals(
    gateway: Arc<Gateway>,
    mut term: tokio::signal::unix::Signal,
    mut hup: tokio::signal::unix::Signal,
    stop: tokio::sync::watch::Sender<bool>,
) {
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => match gateway.reload().await {
                Ok(()) => tracing::info!("configuration reloaded"),
                Err(err) => tracing::error!(error = %err, "configuration refused; the previous one keeps serving"),
            },
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop.send(true);
}
