//! Logging set-up through `tracing`.
//!
//! Invariants: nothing logged anywhere carries a secret or a token value:
//! secrets are `SecretString`, tokens print as a fingerprint, and upstream
//! errors are scrubbed (see `wechat::error`). The secret-grep test in
//! `tests/it/secrets.rs` checks a whole run's output. A client's mistake
//! (a malformed or oversized request head, a dropped connection) is never
//! logged as an ERROR: actix-http's connection dispatcher reports those as
//! `ERROR actix_http::h1::dispatcher: stream error ...`, so its lines are
//! treated as debug output (see `DISPATCHER`). actix-server's start-up and
//! shutdown narration at INFO ("starting 2 workers", "Actix runtime found;
//! starting in Actix runtime", "starting service: ...") is debug output too
//! (see `ACTIX_SERVER`): wxtoken logs its own "wxtoken serving" line.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Level, Metadata};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The target of actix-http's HTTP/1 connection dispatcher. It logs at ERROR
/// what a client did wrong (a bad header, a head over its buffer, a reset
/// connection), and answers those itself with no hook for us. Its lines are
/// shown only when the filter enables DEBUG for this target (e.g.
/// `RUST_LOG=debug` or `RUST_LOG=info,actix_http::h1::dispatcher=debug`).
const DISPATCHER: &str = "actix_http::h1::dispatcher";

/// Whether the installed filter asked for the dispatcher's debug output.
static DISPATCHER_VERBOSE: AtomicBool = AtomicBool::new(false);

/// The target of actix-server (`actix_server::server`, `::builder`,
/// `::worker`, `::accept`). Its INFO lines narrate start and shutdown; they
/// are shown only when the filter enables DEBUG for this target (e.g.
/// `RUST_LOG=info,actix_server=debug`). Its warnings and errors (a worker
/// that died) are always shown.
const ACTIX_SERVER: &str = "actix_server";

/// Whether the installed filter asked for actix-server's debug output.
static ACTIX_SERVER_VERBOSE: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber writing to stderr in `format`, filtered by
/// `RUST_LOG` (default `info`), with `DISPATCHER`'s lines and
/// `ACTIX_SERVER`'s INFO lines demoted to debug.
/// Calling it twice is harmless.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let demote = tracing_subscriber::filter::filter_fn(shown);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only for a person at a terminal who did not set `NO_COLOR`:
        // journald, files and pipes get plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.finish().with(demote).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish()
            .with(demote)
            .try_init(),
    };
    if installed.is_ok() {
        // Asked through the subscriber just installed: a debug-level callsite
        // of the dispatcher's target passes `shown`, so the env filter decides.
        let verbose = tracing::enabled!(target: DISPATCHER, Level::DEBUG);
        DISPATCHER_VERBOSE.store(verbose, Ordering::Relaxed);
        let verbose = tracing::enabled!(target: ACTIX_SERVER, Level::DEBUG);
        ACTIX_SERVER_VERBOSE.store(verbose, Ordering::Relaxed);
        tracing::callsite::rebuild_interest_cache();
    }
}

/// The demotion filter: a `DISPATCHER` event above DEBUG, or an
/// `ACTIX_SERVER` event at INFO, passes only when the filter enables that
/// target's debug output; everything else passes (the env filter decides).
fn shown(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    let level = *meta.level();
    if target.starts_with(DISPATCHER) {
        return level >= Level::DEBUG || DISPATCHER_VERBOSE.load(Ordering::Relaxed);
    }
    if within(target, ACTIX_SERVER) {
        return level != Level::INFO || ACTIX_SERVER_VERBOSE.load(Ordering::Relaxed);
    }
    true
}

/// True when `target` is the module `module` or one inside it.
fn within(target: &str, module: &str) -> bool {
    target
        .strip_prefix(module)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actix_server_targets_are_its_modules_only() {
        assert!(within("actix_server", ACTIX_SERVER));
        assert!(within("actix_server::builder", ACTIX_SERVER));
        assert!(!within("actix_serverless", ACTIX_SERVER));
        assert!(!within("wxtoken::startup", ACTIX_SERVER));
    }
}
