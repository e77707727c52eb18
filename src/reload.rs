//! Live reload of `accounts.yaml`: on `SIGHUP`, on `POST /v1/admin/reload`,
//! and when the file changes on disk.
//!
//! Owns [`Reloader`] (re-read, validate, apply to the registry, swap the API
//! clients) and the two background triggers ([`Reloader::watch_signals`],
//! [`Reloader::watch_file`]).
//!
//! Invariants:
//! - An invalid new configuration changes nothing: every problem is logged
//!   and returned, `wxtoken_config_last_reload_successful` drops to 0, and the
//!   registry and clients in force stay as they are.
//! - Reloads run one at a time, in the order they were asked for.
//! - Untouched accounts keep their actor, token and schedule (the registry's
//!   [`Apply`] guarantees it); settings that only take effect at start
//!   (`listen`, `upstream`, `refresh`, `store`) are reported, not applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use arc_swap::ArcSwap;
use secrecy::ExposeSecret;

use crate::api::Auth;
use crate::config::{Config, LoadOptions, Problems};
use crate::metrics::Metrics;
use crate::registry::{Apply, ApplySummary, Registry};

/// How long the file watcher waits for a burst of file events to settle
/// (editors write a temporary file and rename it over the original).
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// Where a reload reads the configuration from.
#[derive(Debug, Clone)]
pub struct ReloadSource {
    /// The configuration file.
    pub path: PathBuf,
    /// How `${VAR}` and secrets are resolved (the process environment in production).
    pub options: LoadOptions,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid; the old one stays in force.
    #[error("the new configuration has {} problem(s); the old one stays in force", .0.0.len())]
    Invalid(Problems),
    /// The registry actor did not answer.
    #[error("the account registry did not answer; the old configuration stays in force")]
    Registry,
}

struct Inner {
    source: ReloadSource,
    registry: Addr<Registry>,
    auth: Arc<ArcSwap<Auth>>,
    metrics: Metrics,
    /// The configuration in force (for the settings that need a restart).
    current: parking_lot::Mutex<Config>,
    /// Serializes reloads.
    turn: tokio::sync::Mutex<()>,
}

/// Re-reads and applies the configuration. Clones share one state.
#[derive(Clone)]
pub struct Reloader(Arc<Inner>);

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.0.source.path)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for the configuration `current`, read from `source`.
    pub fn new(
        source: ReloadSource,
        current: Config,
        registry: Addr<Registry>,
        auth: Arc<ArcSwap<Auth>>,
        metrics: Metrics,
    ) -> Reloader {
        Reloader(Arc::new(Inner {
            source,
            registry,
            auth,
            metrics,
            current: parking_lot::Mutex::new(current),
            turn: tokio::sync::Mutex::new(()),
        }))
    }

    /// The configuration file this reloader reads.
    pub fn path(&self) -> &Path {
        &self.0.source.path
    }

    /// Re-reads the file and applies it. `trigger` names the cause in the log
    /// (`sighup`, `admin`, `file_change`).
    ///
    /// Errors when the new configuration is invalid (with every problem) or
    /// the registry does not answer; then nothing changed.
    pub async fn reload(&self, trigger: &'static str) -> Result<ApplySummary, ReloadError> {
        let inner = &self.0;
        let _turn = inner.turn.lock().await;
        let loaded = match crate::config::load(&inner.source.path, &inner.source.options) {
            Ok(loaded) => loaded,
            Err(problems) => {
                for problem in problems.iter() {
                    tracing::error!(trigger, "config reload rejected: {problem}");
                }
                tracing::error!(
                    trigger,
                    problems = problems.0.len(),
                    path = %inner.source.path.display(),
                    "config reload rejected; the previous configuration stays in force"
                );
                self.count(false);
                return Err(ReloadError::Invalid(problems));
            }
        };
        for warning in &loaded.warnings {
            tracing::warn!(trigger, "{warning}");
        }
        let new = loaded.config;
        let summary = match inner.registry.send(Apply(new.accounts.clone())).await {
            Ok(summary) => summary,
            Err(_) => {
                self.count(false);
                return Err(ReloadError::Registry);
            }
        };
        inner.auth.store(Arc::new(Auth::new(&new.clients)));
        let needs_restart = {
            let mut current = inner.current.lock();
            let changed = restart_only_changes(&current, &new);
            // What is in force: the new accounts and clients, the old rest.
            current.accounts = new.accounts;
            current.clients = new.clients;
            changed
        };
        if !needs_restart.is_empty() {
            tracing::warn!(
                trigger,
                settings = needs_restart.join(", "),
                "these settings changed but take effect only after a restart"
            );
        }
        tracing::info!(
            trigger,
            added = summary.added.len(),
            removed = summary.removed.len(),
            changed = summary.changed.len(),
            unchanged = summary.unchanged,
            "configuration reloaded"
        );
        self.count(true);
        Ok(summary)
    }

    fn count(&self, ok: bool) {
        let m = &self.0.metrics;
        m.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        m.config_last_reload_successful.set(i64::from(ok));
    }

    /// Reloads on every `SIGHUP` until the runtime stops. Unix only; a no-op
    /// elsewhere or when the signal cannot be installed (logged).
    pub fn watch_signals(&self) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hangups = match signal(SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("SIGHUP reload is unavailable: {e}");
                    return;
                }
            };
            let this = self.clone();
            actix_rt::spawn(async move {
                while hangups.recv().await.is_some() {
                    let _ = this.reload("sighup").await;
                }
            });
        }
    }

    /// Reloads when the configuration file changes, by watching its directory
    /// (editors replace files by rename). Returns the watcher, which stops
    /// when dropped; `None` (logged) when the directory cannot be watched.
    pub fn watch_file(&self) -> Option<ConfigWatcher> {
        use notify_debouncer_mini::notify::RecursiveMode;
        use notify_debouncer_mini::{DebounceEventResult, new_debouncer};

        let path = absolute(&self.0.source.path);
        let dir = path.parent().map(Path::to_path_buf)?;
        let name = path.file_name()?.to_os_string();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut debouncer = match new_debouncer(WATCH_DEBOUNCE, move |res: DebounceEventResult| {
            if let Ok(events) = res
                && events
                    .iter()
                    .any(|e| e.path.file_name() == Some(name.as_os_str()))
            {
                let _ = tx.send(());
            }
        }) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("config file watching is unavailable: {e}");
                return None;
            }
        };
        if let Err(e) = debouncer.watcher().watch(&dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), "cannot watch the config directory: {e}");
            return None;
        }
        let this = self.clone();
        actix_rt::spawn(async move {
            while rx.recv().await.is_some() {
                while rx.try_recv().is_ok() {}
                let _ = this.reload("file_change").await;
            }
        });
        tracing::debug!(dir = %dir.display(), "watching the config file for changes");
        Some(ConfigWatcher {
            _debouncer: Box::new(debouncer),
        })
    }
}

/// A running config-file watch; dropping it stops the watch.
pub struct ConfigWatcher {
    _debouncer: Box<dyn std::any::Any>,
}

impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigWatcher")
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The settings that differ between `old` and `new` but are read only at start.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.listen != new.listen {
        changed.push("listen");
    }
    let (a, b) = (&old.upstream, &new.upstream);
    if a.base_urls != b.base_urls
        || a.timeout != b.timeout
        || a.max_concurrency != b.max_concurrency
    {
        changed.push("upstream");
    }
    if old.refresh != new.refresh {
        changed.push("refresh");
    }
    let (a, b) = (&old.store, &new.store);
    let redis =
        |s: &crate::config::StoreConfig| s.redis.as_ref().map(|r| r.expose_secret().to_string());
    if a.path != b.path || a.redis_prefix != b.redis_prefix || redis(a) != redis(b) {
        changed.push("store");
    }
    changed
}
