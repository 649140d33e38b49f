//! Log setup, in one place: `LOG_FORMAT` chooses text or JSON lines, `RUST_LOG` filters
//! (default `info`). Logs go to standard output, where `docker compose logs` reads them.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, first thing in `main`. Returns the last warnings
/// and errors logged, for the status page.
pub fn init(format: LogFormat) -> RecentEvents {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let recent = RecentEvents::default();
    let registry = tracing_subscriber::registry()
        .with(recent.clone())
        .with(filter);
    match format {
        // Colours only on a terminal: `docker compose logs` and files get plain text.
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .init(),
    }
    recent
}

/// How many warnings and errors [`RecentEvents`] keeps.
const RECENT: usize = 30;

/// One warning or error as the status pages show it.
#[derive(Debug, Clone, Serialize)]
pub struct RecentEvent {
    /// When it was logged (RFC 3339).
    pub time: String,
    /// `WARN` or `ERROR`.
    pub level: String,
    /// The log message.
    pub message: String,
    /// The event's other fields, `name=value` separated by spaces.
    pub fields: String,
}

/// A log layer that keeps the last warnings and errors in memory (cloning shares them).
#[derive(Debug, Clone, Default)]
pub struct RecentEvents(Arc<Mutex<VecDeque<RecentEvent>>>);

impl RecentEvents {
    /// Newest first.
    pub fn recent(&self) -> Vec<RecentEvent> {
        self.0
            .lock()
            .map(|q| q.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.rest.is_empty() {
                self.rest.push(' ');
            }
            let _ = write!(self.rest, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            if !self.rest.is_empty() {
                self.rest.push(' ');
            }
            let _ = write!(self.rest, "{}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RecentEvents {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Ok(mut q) = self.0.lock() {
            if q.len() == RECENT {
                q.pop_front();
            }
            q.push_back(RecentEvent {
                time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                level: level.to_string(),
                message: fields.message,
                fields: fields.rest,
            });
        }
    }
}

/// Logs an error with its whole cause chain on one line, where a task or the service ends.
pub fn log_error_chain(context: &str, err: &anyhow::Error) {
    tracing::error!(error = %format!("{err:#}"), "{context}");
}
