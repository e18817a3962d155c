//! Logging setup: `tracing` with `log.format` (pretty | json) and `log.level`, which
//! `RUST_LOG` overrides. Nothing Scopegate logs carries a token, password or secret.
//!
//! Every request runs in a `request` span (see [`crate::pipeline`]). JSON lines carry the
//! fields of the span an event belongs to under `"span"` (the request's id, route,
//! status...), next to the event's own fields at the top level; the pretty format prints
//! them after the event's fields.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber, writing to stderr. Call once, from `main`.
pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    if let Err(err) = subscriber(log.format, filter, ansi, std::io::stderr).try_init() {
        eprintln!("scopegate: logging was already set up: {err}");
    }
}

/// The subscriber [`init`] installs, writing to `writer` (benches give it a sink).
/// `ansi` colours the pretty format.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
        LogFormat::Pretty => Box::new(builder.compact().with_ansi(ansi).finish()),
    }
}
