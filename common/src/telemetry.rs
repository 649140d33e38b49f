//! Log setup, in one place: `LOG_FORMAT` chooses text or JSON lines, `RUST_LOG` filters
//! (default `info`). Logs go to standard output, where `docker compose logs` reads them.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        // Colours only on a terminal: `docker compose logs` and files get plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Logs an error with its whole cause chain on one line, where a task or the service ends.
pub fn log_error_chain(context: &str, err: &anyhow::Error) {
    tracing::error!(error = %format!("{err:#}"), "{context}");
}
