//! Logging set-up through `tracing`.
//!
//! Invariant: nothing logged anywhere carries a secret or a token value:
//! secrets are `SecretString`, tokens print as a fingerprint, and upstream
//! errors are scrubbed (see `wechat::error`). The secret-grep test in
//! `tests/it/secrets.rs` checks a whole run's output.

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global subscriber writing to stderr in `format`, filtered by
/// `RUST_LOG` (default `info`). Calling it twice is harmless.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
