//! Logging setup: `tracing` with `log.format` (pretty | json) and `log.level`, which
//! `RUST_LOG` overrides. Nothing Scopegate logs carries a token, password or secret.
//!
//! Every request runs in a `request` span (see [`crate::pipeline`]). A JSON line is one
//! object: `timestamp`, `level`, the event's fields (`message` first) at the top level,
//! `target`, and the fields of the span the event belongs to under `span` (with the
//! span's `name`): the shape of `tracing-subscriber`'s JSON format with `flatten_event`
//! and `with_current_span`. It is written by [`JsonLines`] instead, which keeps a span's
//! fields as JSON text from the moment they are recorded: the stock formatter parses and
//! re-serializes them on every `record` and every event, which made a request's JSON
//! logging cost about three times as much (`pipeline_echo/json-info` in
//! `benches/proxy.rs`: +6 µs a request over no logging, against +1.9 µs). The pretty
//! format prints span fields after the event's own.
//!
//! Spans for an OpenTelemetry collector (`tracing.otlp_endpoint`) are
//! [`crate::otlp`]'s: it sends them with the HTTP client of [`crate::upstream`], a layer
//! above this one.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
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

/// The subscriber [`init`] installs, writing to `writer` (tests and benches give it a
/// buffer or a sink). `ansi` colours the pretty format.
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
                .fmt_fields(JsonFields)
                .event_format(JsonLines::default())
                .finish(),
        ),
        LogFormat::Pretty => Box::new(builder.compact().with_ansi(ansi).finish()),
    }
}

/// Span fields as the members of a JSON object (`"a":1,"b":"x"`, no braces), appended
/// to as fields are recorded. A field recorded twice appears twice; Scopegate records
/// each field once.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = JsonVisitor::new(&mut writer, false);
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let comma = !current.fields.is_empty();
        let mut visitor = JsonVisitor::new(&mut current.fields, comma);
        fields.record(&mut visitor);
        visitor.result
    }
}

/// One JSON object per line; see the module documentation.
#[derive(Debug, Default)]
pub struct JsonLines {
    timer: SystemTime,
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events bridged from the `log` crate carry their real target in fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("{\"timestamp\":\"")?;
        self.timer.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", meta.level())?;
        let mut visitor = JsonVisitor::new(&mut writer, true);
        event.record(&mut visitor);
        visitor.result?;
        writer.write_str(",\"target\":")?;
        write_json_str(&mut writer, meta.target())?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>()
                && !fields.fields.is_empty()
            {
                writer.write_str(&fields.fields)?;
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":")?;
            write_json_str(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// Writes fields as JSON members, each preceded by a comma but the first (when
/// `comma` is false). Fields of events bridged from `log` (`log.target`...) are skipped.
struct JsonVisitor<'a> {
    out: &'a mut dyn fmt::Write,
    comma: bool,
    result: fmt::Result,
}

impl<'a> JsonVisitor<'a> {
    fn new(out: &'a mut dyn fmt::Write, comma: bool) -> Self {
        JsonVisitor {
            out,
            comma,
            result: Ok(()),
        }
    }

    /// Writes `"name":` (after a comma when due); false to skip the field.
    fn key(&mut self, field: &Field) -> bool {
        if self.result.is_err() || field.name().starts_with("log.") {
            return false;
        }
        let comma = std::mem::replace(&mut self.comma, true);
        self.result = (|| {
            if comma {
                self.out.write_char(',')?;
            }
            write_json_str(self.out, field.name())?;
            self.out.write_char(':')
        })();
        self.result.is_ok()
    }

    fn raw(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.key(field) {
            self.result = self.out.write_fmt(value);
        }
    }

    fn string(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.key(field) {
            self.result = (|| {
                self.out.write_char('"')?;
                Escaped(&mut *self.out).write_fmt(value)?;
                self.out.write_char('"')
            })();
        }
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.raw(field, format_args!("{value}"));
        } else {
            self.raw(field, format_args!("null"));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.string(field, format_args!("{value}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.string(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.string(field, format_args!("{value:?}"));
    }
}

/// JSON string escaping for whatever is written through it.
struct Escaped<'a>(&'a mut dyn fmt::Write);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut start = 0;
        for (index, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f | 0x7f => "",
                _ => continue,
            };
            self.0.write_str(&text[start..index])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            start = index + 1;
        }
        self.0.write_str(&text[start..])
    }
}

fn write_json_str(out: &mut dyn fmt::Write, text: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(text)?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;

    use super::*;

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(format: LogFormat, run: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = subscriber(format, EnvFilter::new("trace"), false, move || sink.clone());
        tracing::subscriber::with_default(subscriber, run);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_lines_carry_event_fields_and_the_span_fields_recorded_so_far() {
        let text = lines(LogFormat::Json, || {
            tracing::info!(answer = 42, "outside \"any\" span");
            let span = tracing::info_span!(
                "request",
                request_id = "id-1",
                route = tracing::field::Empty,
                status = tracing::field::Empty
            );
            span.record("route", "r\n\u{1b}[31m");
            span.in_scope(|| {
                tracing::warn!(error = %"it\\failed", ratio = 0.5, ok = true, big = u64::MAX, "inside");
            });
            span.record("status", 200u16);
            tracing::info!(target: "scopegate::access", parent: &span, "request");
            tracing::debug!(nan = f64::NAN, debug = ?vec!["a", "b"], "odd values");
        });
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0]["message"], "outside \"any\" span");
        assert_eq!(lines[0]["answer"], 42);
        assert_eq!(lines[0]["level"], "INFO");
        assert!(
            lines[0]["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        assert!(lines[0].get("span").is_none());
        assert_eq!(lines[0]["target"], "scopegate::telemetry::tests");

        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["error"], "it\\failed");
        assert_eq!(lines[1]["ratio"], 0.5);
        assert_eq!(lines[1]["ok"], true);
        assert_eq!(lines[1]["big"], u64::MAX);
        let span = &lines[1]["span"];
        assert_eq!(span["name"], "request");
        assert_eq!(span["request_id"], "id-1");
        assert_eq!(span["route"], "r\n\u{1b}[31m");
        assert!(span.get("status").is_none(), "not recorded yet: {span}");
        assert!(!text.contains('\u{1b}'), "control characters are escaped");

        assert_eq!(lines[2]["target"], "scopegate::access");
        assert_eq!(lines[2]["span"]["status"], 200);
        assert_eq!(lines[3]["nan"], Value::Null);
        assert_eq!(lines[3]["debug"], "[\"a\", \"b\"]");
    }

    #[test]
    fn pretty_lines_carry_span_fields() {
        let text = lines(LogFormat::Pretty, || {
            let span = tracing::info_span!("request", request_id = "id-2");
            span.in_scope(|| tracing::info!(status = 200, "request"));
        });
        assert!(text.contains("request_id=\"id-2\""), "{text}");
        assert!(text.contains("status=200"), "{text}");
    }
}
