//! Live reload of `accounts.yaml`: on `SIGHUP`, on `POST /v1/admin/reload`,
//! and when the file changes on disk.
//!
//! Owns [`Reloader`] (re-read, validate, apply to the registry, report the
//! applied configuration to an [`OnApplied`] hook: the API swaps its clients
//! there) and the two background triggers ([`Reloader::watch_signals`],
//! [`Reloader::watch_file`]).
//!
//! Invariants:
//! - An invalid new configuration changes nothing: every problem is logged
//!   and returned, `wxtoken_config_last_reload_successful` drops to 0, and the
//!   registry and clients in force stay as they are.
//! - Reloads run one at a time, in the order they were asked for.
//! - A reload never blocks the runtime: files are read on tokio's blocking
//!   pool, and a read that takes longer than [`LOAD_TIMEOUT`] (a hung network
//!   mount) is a failed reload; until that read ends, later reloads fail at
//!   once instead of piling up threads.
//! - The file watch reloads only when the file's content changed since the
//!   last reload read it: opening or reading the file (which notify reports,
//!   and which every reload does itself) is not a change. `SIGHUP` and
//!   `POST /v1/admin/reload` always re-read.
//! - Untouched accounts keep their actor, token and schedule (the registry's
//!   [`Apply`] guarantees it); `clients` and `metrics.per_account` apply at
//!   once (the names of the clients added, removed or changed are logged,
//!   never a key or its hash); settings that only take effect at start (`listen`, `upstream`,
//!   `refresh`, `store`) are reported, not applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use secrecy::ExposeSecret;

use notify_debouncer_mini::notify;

use crate::audit::Origin;
use crate::config::{Config, Digest, LoadOptions, Loaded, Problems};
use crate::metrics::Metrics;
use crate::registry::{Apply, ApplySummary, Registry};

/// How long the file watcher waits for a burst of file events to settle
/// (editors write a temporary file and rename it over the original).
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// The longest a reload may spend reading the configuration file, or its
/// secret files, before it fails and changes nothing.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Told of every configuration a reload applied (after the registry took
/// its accounts), so that other parts can follow it: the API rebuilds its
/// clients there.
pub type OnApplied = Arc<dyn Fn(&Config) + Send + Sync>;

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

/// What the configuration file held when a reload last read it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OnDisk {
    /// Text with this digest.
    Text(Digest),
    /// Nothing readable, for this reason.
    Unreadable(String),
}

struct Inner {
    source: ReloadSource,
    registry: Addr<Registry>,
    on_applied: OnApplied,
    metrics: Metrics,
    /// The configuration in force (for the settings that need a restart).
    current: parking_lot::Mutex<Config>,
    /// What the last reload (or the start) read from the file.
    on_disk: parking_lot::Mutex<OnDisk>,
    /// Serializes reloads.
    turn: tokio::sync::Mutex<()>,
    /// Held by the blocking thread that reads files, until it returns (which
    /// may be after its reload gave up waiting).
    reading: Arc<tokio::sync::Mutex<()>>,
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
    /// A reloader for the configuration `current`, read from `source`,
    /// applying accounts to `registry` and then telling `on_applied`.
    pub fn new(
        source: ReloadSource,
        current: Config,
        registry: Addr<Registry>,
        on_applied: OnApplied,
        metrics: Metrics,
    ) -> Reloader {
        let source = ReloadSource {
            options: source.options.for_reload(),
            ..source
        };
        Reloader(Arc::new(Inner {
            source,
            registry,
            on_applied,
            metrics,
            on_disk: parking_lot::Mutex::new(OnDisk::Text(current.digest)),
            current: parking_lot::Mutex::new(current),
            turn: tokio::sync::Mutex::new(()),
            reading: Arc::new(tokio::sync::Mutex::new(())),
        }))
    }

    /// The configuration file this reloader reads.
    pub fn path(&self) -> &Path {
        &self.0.source.path
    }

    /// Re-reads the file and applies it. `origin` says who asked (its
    /// `trigger` names the cause in the log: `sighup`, `admin`,
    /// `file_change`); the outcome is an audit event (`audit::reload`).
    ///
    /// Errors when the new configuration is invalid or could not be read in
    /// [`LOAD_TIMEOUT`] (with every problem), or the registry does not
    /// answer; then nothing changed.
    pub async fn reload(&self, origin: Origin) -> Result<ApplySummary, ReloadError> {
        let _turn = self.0.turn.lock().await;
        let read = self.read_file().await;
        self.load_and_apply(&origin, read).await
    }

    /// Like [`reload`](Self::reload), but only when the file's content
    /// differs from what the last reload read (or the server started with).
    async fn reload_if_changed(&self, origin: Origin) {
        let _turn = self.0.turn.lock().await;
        let read = self.read_file().await;
        if read.0 == *self.0.on_disk.lock() {
            tracing::debug!(
                trigger = origin.trigger,
                "the config file is unchanged; not reloading"
            );
            return;
        }
        let _ = self.load_and_apply(&origin, read).await;
    }

    /// The configuration file's text, read off the runtime.
    async fn read_file(&self) -> (OnDisk, Result<String, Problems>) {
        let path = self.0.source.path.clone();
        let text = self
            .off_runtime(move || crate::config::read(&path))
            .await
            .and_then(|text| text);
        let on_disk = match &text {
            Ok(text) => OnDisk::Text(Digest::of(text)),
            Err(problems) => OnDisk::Unreadable(problems.to_string()),
        };
        (on_disk, text)
    }

    /// Validates what [`read_file`](Self::read_file) found (off the runtime:
    /// secret files are read too) and applies it.
    async fn load_and_apply(
        &self,
        origin: &Origin,
        (on_disk, text): (OnDisk, Result<String, Problems>),
    ) -> Result<ApplySummary, ReloadError> {
        let inner = &self.0;
        *inner.on_disk.lock() = on_disk;
        let loaded = match text {
            Ok(text) => {
                let source = inner.source.clone();
                self.off_runtime(move || {
                    crate::config::load_str(&text, &source.path, &source.options)
                })
                .await
                .and_then(|loaded| loaded)
            }
            Err(problems) => Err(problems),
        };
        let result = self.apply(origin.trigger, loaded).await;
        match &result {
            Ok(summary) => {
                crate::audit::reload(origin, "applied", &summary.changed, &summary.added)
            }
            Err(_) => crate::audit::reload(origin, "rejected", &[], &[]),
        }
        result
    }

    /// Runs `job` on tokio's blocking pool; a problem when it did not finish
    /// in [`LOAD_TIMEOUT`], when an earlier one is still running, or when it panicked.
    async fn off_runtime<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Problems> {
        off_runtime(&self.0.reading, LOAD_TIMEOUT, job)
            .await
            .map_err(|stuck| {
                Problems::single(
                    &self.0.source.path,
                    format!("{stuck}; the old configuration stays in force"),
                )
            })
    }

    /// Applies a loaded configuration, or logs and counts why there is none.
    async fn apply(
        &self,
        trigger: &'static str,
        loaded: Result<Loaded, Problems>,
    ) -> Result<ApplySummary, ReloadError> {
        let inner = &self.0;
        let loaded = match loaded {
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
        let summary = match inner.registry.send(Apply(new.registry_accounts())).await {
            Ok(summary) => summary,
            Err(_) => {
                self.count(false);
                return Err(ReloadError::Registry);
            }
        };
        (inner.on_applied)(&new);
        let (needs_restart, clients) = {
            let mut current = inner.current.lock();
            let changed = restart_only_changes(&current, &new);
            let clients = ClientChanges::between(&current.clients, &new.clients);
            let before = inner.metrics.per_account_for(current.accounts.len());
            if current.metrics != new.metrics
                || before != inner.metrics.per_account_for(new.accounts.len())
            {
                inner
                    .metrics
                    .configure_per_account(new.metrics.per_account, new.accounts.len());
            }
            // What is in force: the new accounts, clients and metrics, the old rest.
            current.accounts = new.accounts;
            current.components = new.components;
            current.clients = new.clients;
            current.metrics = new.metrics;
            (changed, clients)
        };
        if !clients.is_empty() {
            tracing::info!(
                trigger,
                clients_added = clients.added.join(", "),
                clients_removed = clients.removed.join(", "),
                clients_changed = clients.changed.join(", "),
                "clients reloaded"
            );
        }
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
                    let _ = this.reload(Origin::internal("sighup")).await;
                }
            });
        }
    }

    /// Reloads when the configuration file changes, by watching its directory
    /// (editors replace files by rename). Returns the watcher, which stops
    /// when dropped; `None` (logged) when the directory cannot be watched.
    pub fn watch_file(&self) -> Option<ConfigWatcher> {
        use notify_debouncer_mini::notify::RecursiveMode;
        use notify_debouncer_mini::{DebounceEventResult, new_debouncer_opt};

        let path = absolute(&self.0.source.path);
        let dir = path.parent().map(Path::to_path_buf)?;
        let name = path.file_name()?.to_os_string();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let on_event = move |res: DebounceEventResult| {
            if let Ok(events) = res
                && events
                    .iter()
                    .any(|e| e.path.file_name() == Some(name.as_os_str()))
            {
                let _ = tx.send(());
            }
        };
        let config = notify_debouncer_mini::Config::default().with_timeout(WATCH_DEBOUNCE);
        let mut debouncer = match new_debouncer_opt::<_, ChangesOnly>(config, on_event) {
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
                this.reload_if_changed(Origin::internal("file_change"))
                    .await;
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

/// The platform's file watcher without the events a read causes: on Linux
/// notify reports every open of a watched file, and each reload opens the
/// file, so without this filter every reload would trigger the next.
struct ChangesOnly(notify::RecommendedWatcher);

/// Passes every event but reads on to the debouncer.
struct SkipReads<H>(H);

impl<H: notify::EventHandler> notify::EventHandler for SkipReads<H> {
    fn handle_event(&mut self, event: notify::Result<notify::Event>) {
        if let Ok(e) = &event
            && is_a_read(&e.kind)
        {
            return;
        }
        self.0.handle_event(event);
    }
}

/// True for an open, a read or a close without writing.
fn is_a_read(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, notify::EventKind::Access(access) if *access != AccessKind::Close(AccessMode::Write))
}

impl notify::Watcher for ChangesOnly {
    fn new<F: notify::EventHandler>(handler: F, config: notify::Config) -> notify::Result<Self> {
        notify::RecommendedWatcher::new(SkipReads(handler), config).map(ChangesOnly)
    }

    fn watch(&mut self, path: &Path, mode: notify::RecursiveMode) -> notify::Result<()> {
        self.0.watch(path, mode)
    }

    fn unwatch(&mut self, path: &Path) -> notify::Result<()> {
        self.0.unwatch(path)
    }

    fn configure(&mut self, option: notify::Config) -> notify::Result<bool> {
        self.0.configure(option)
    }

    fn kind() -> notify::WatcherKind {
        notify::RecommendedWatcher::kind()
    }
}

/// Why a job for the blocking pool gave no result.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum Stuck {
    /// An earlier job still holds the gate (it outlived its own timeout).
    #[error(
        "an earlier reload is still reading the configuration or a secret file (a hung mount?)"
    )]
    Busy,
    /// The job did not finish in time; it goes on, holding the gate.
    #[error("reading the configuration and its secret files took longer than {}s (a hung mount?)", .0.as_secs())]
    TimedOut(Duration),
    /// The job panicked (logged by the panic hook) or the runtime is stopping.
    #[error("reading the configuration failed with an internal error (logged)")]
    Failed,
}

/// Runs `job` on tokio's blocking pool and waits at most `limit` for it. A
/// blocking job cannot be cancelled: one that times out keeps `gate` until it
/// returns, and while it does every other job is refused at once.
async fn off_runtime<T: Send + 'static>(
    gate: &Arc<tokio::sync::Mutex<()>>,
    limit: Duration,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Stuck> {
    let held = gate.clone().try_lock_owned().map_err(|_| Stuck::Busy)?;
    let task = tokio::task::spawn_blocking(move || {
        let _held = held;
        crate::panics::catch(job)
    });
    match tokio::time::timeout(limit, task).await {
        Err(_) => Err(Stuck::TimedOut(limit)),
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(_))) | Ok(Err(_)) => Err(Stuck::Failed),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The names of the clients a reload added, removed or changed (a new key,
/// scope or admin flag), each sorted. Names only: a key or its hash never
/// leaves the configuration.
#[derive(Debug, Default, PartialEq, Eq)]
struct ClientChanges {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
}

impl ClientChanges {
    /// What changed from `old` to `new`, client by client (names are unique
    /// in a valid configuration).
    fn between(
        old: &[crate::config::ClientConfig],
        new: &[crate::config::ClientConfig],
    ) -> ClientChanges {
        let same = |a: &crate::config::ClientConfig, b: &crate::config::ClientConfig| {
            a.key == b.key && a.appids == b.appids && a.admin == b.admin
        };
        let mut changes = ClientChanges::default();
        for client in new {
            match old.iter().find(|o| o.name == client.name) {
                None => changes.added.push(client.name.clone()),
                Some(before) if !same(before, client) => changes.changed.push(client.name.clone()),
                Some(_) => {}
            }
        }
        changes.removed = old
            .iter()
            .filter(|o| !new.iter().any(|n| n.name == o.name))
            .map(|o| o.name.clone())
            .collect();
        for list in [
            &mut changes.added,
            &mut changes.removed,
            &mut changes.changed,
        ] {
            list.sort();
        }
        changes
    }

    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_hung_read_times_out_and_refuses_the_next_until_it_returns() {
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let hung = tokio::spawn({
            let gate = gate.clone();
            async move { off_runtime(&gate, LIMIT, move || released.recv().is_ok()).await }
        });
        tokio::task::yield_now().await;
        tokio::time::advance(LIMIT + Duration::from_millis(1)).await;
        assert_eq!(hung.await.unwrap(), Err(Stuck::TimedOut(LIMIT)));

        // The hung read still runs: the next one is refused without waiting.
        assert_eq!(off_runtime(&gate, LIMIT, || 1).await, Err(Stuck::Busy));

        release.send(()).unwrap();
        drop(gate.lock().await);
        assert_eq!(off_runtime(&gate, LIMIT, || 2).await, Ok(2));
    }

    #[tokio::test]
    async fn a_panicking_read_is_a_failure_not_a_crash() {
        crate::panics::install_hook();
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let failed = off_runtime(&gate, LIMIT, || -> u8 { panic!("the loader broke") }).await;
        assert_eq!(failed, Err(Stuck::Failed));
        assert_eq!(off_runtime(&gate, LIMIT, || 3).await, Ok(3));
    }

    fn client(name: &str, key: &str, admin: bool) -> crate::config::ClientConfig {
        crate::config::ClientConfig {
            name: name.to_string(),
            key: crate::domain::KeyHash::of_key(key),
            appids: crate::config::AppScope::All,
            admin,
        }
    }

    #[test]
    fn client_changes_name_added_removed_and_changed_clients_only() {
        let old = [
            client("kept", "kept-key-0123456789", false),
            client("rekeyed", "old-key-0123456789", false),
            client("promoted", "promoted-key-0123456789", false),
            client("gone", "gone-key-0123456789", false),
        ];
        let new = [
            client("kept", "kept-key-0123456789", false),
            client("rekeyed", "new-key-0123456789", false),
            client("promoted", "promoted-key-0123456789", true),
            client("fresh", "fresh-key-0123456789", false),
        ];
        let changes = ClientChanges::between(&old, &new);
        assert_eq!(changes.added, ["fresh"]);
        assert_eq!(changes.removed, ["gone"]);
        assert_eq!(changes.changed, ["promoted", "rekeyed"]);
        assert!(ClientChanges::between(&old, &old).is_empty());
    }

    #[test]
    fn reads_are_not_changes_but_writes_are() {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
        assert!(is_a_read(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(is_a_read(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_a_read(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!is_a_read(&EventKind::Modify(ModifyKind::Any)));
        assert!(!is_a_read(&EventKind::Create(CreateKind::File)));
    }
}
