//! [`StoreWriter`]: every write to the store, on one dedicated OS thread, and
//! the retrying of writes that failed until they are durable.
//!
//! Callers on the async runtime hand a write to the thread through a channel
//! and, when they need durability, await a oneshot answer; no blocking call,
//! no retry and no timer runs on the runtime, so this works inside actix's
//! current-thread runtimes and under tokio's paused clock.
//!
//! Invariants:
//! - **Writes are applied in submission order** (one thread, one FIFO channel).
//! - **Nothing accepted is forgotten.** A write whose attempt fails leaves its
//!   account *dirty*: the writer keeps the newest state of that account (a put
//!   or a removal) and retries it on its thread, 100 ms after the first
//!   failure and then with the wait doubling up to 5 s, until it is durable.
//!   A later write of the same account replaces the dirty state (so a removal
//!   is never undone by the retry of an older put); a write of another account
//!   leaves it alone (its success only brings the next retry forward). A
//!   background retry round stops at its first failure, so a failing store
//!   costs one failed write per round, and the next round starts after that
//!   account. [`StoreWriter::flush`] and [`StoreWriter::close`] try every
//!   dirty account once more at once; `close` logs the accounts it could not
//!   write.
//! - **An awaited put answers after its first attempt**, with that attempt's
//!   error, so callers never hang on a full disk; the retrying goes on behind it.
//! - **Health is visible:** [`StoreWriter::failing`] and
//!   `wxtoken_store_up{store}` say whether any account is dirty. Each write
//!   whose first attempt fails is logged and counted in
//!   `wxtoken_store_write_errors_total{store}` once; failed retries are
//!   logged at most once a minute.
//! - A panic inside a [`Storage`] becomes an error, not a dead writer.
//! - A fire-and-forget write that a later queued write of the same account
//!   supersedes, with no awaited `put` or `flush` in between, may be skipped:
//!   the later one is applied instead, so nobody can observe the difference
//!   except through a crash at that instant, which leaves an earlier
//!   committed state.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{Storage, StoreError, StoredAccount};
use crate::domain::AppId;
use crate::metrics::Metrics;

/// The wait before the first retry of a dirty account.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two retries.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Retries that keep failing are logged at most this often.
const RETRY_LOG_EVERY: Duration = Duration::from_secs(60);

// Short-lived values, one per write or start: not worth a box each.
#[allow(clippy::large_enum_variant)]
enum Command {
    Put {
        account: StoredAccount,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    Remove {
        appid: AppId,
    },
    Flush {
        done: oneshot::Sender<()>,
    },
    /// Apply what is queued, try the dirty accounts once more, answer, then
    /// end the thread and drop the storage.
    Close {
        done: oneshot::Sender<()>,
    },
}

impl Command {
    /// The account a write touches; `None` for a flush.
    fn appid(&self) -> Option<&AppId> {
        match self {
            Command::Put { account, .. } => Some(&account.appid),
            Command::Remove { appid } => Some(appid),
            Command::Flush { .. } | Command::Close { .. } => None,
        }
    }

    /// True for a write nobody waits for.
    fn unawaited(&self) -> bool {
        matches!(
            self,
            Command::Put { done: None, .. } | Command::Remove { .. }
        )
    }
}

/// Serializes all writes on one dedicated OS thread, in submission order, so
/// writes never reorder and never block the async runtime, and retries the
/// ones that failed until they are durable. Clones share the same thread;
/// the thread ends when the last clone is dropped (after applying what was
/// queued and trying the dirty accounts once more).
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<Command>,
    kind: &'static str,
    metrics: Metrics,
    /// Why the store is failing, shared with the writer's [`Core`].
    failing: Arc<ArcSwapOption<String>>,
    /// Set by [`StoreWriter::inline`]: writes run in the caller, no thread.
    inline: Option<Arc<Mutex<Core>>>,
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl StoreWriter {
    /// Starts the writer thread for `storage`. If the thread cannot be started,
    /// this logs an error, [`StoreWriter::failing`] says so and every write
    /// fails with [`StoreError::WriterStopped`].
    pub fn start(storage: Arc<dyn Storage>, metrics: Metrics) -> StoreWriter {
        let core = Core::new(storage, metrics.clone());
        let kind = core.kind;
        let failing = core.failing.clone();
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("wxtoken-store-{kind}"))
            .spawn(move || run(core, rx));
        if let Err(e) = spawned {
            tracing::error!(store = kind, error = %e, "cannot start the store writer thread; nothing will be persisted");
            failing.store(Some(Arc::new(format!(
                "the {kind} store writer thread could not start ({e}), so nothing is persisted; restart wxtoken"
            ))));
            metrics.store_up.with_label_values(&[kind]).set(0);
        }
        StoreWriter {
            tx,
            kind,
            metrics,
            failing,
            inline: None,
        }
    }

    /// A writer that applies every write at once in the calling task, without
    /// a thread. Only for storages that never block (like
    /// [`MemoryStore`](super::MemoryStore)): tests on tokio's paused clock use
    /// it, because awaiting another thread lets the paused clock jump ahead.
    /// Without a thread, dirty accounts are retried at the next write once
    /// their retry is due, and at every flush.
    pub fn inline(storage: Arc<dyn Storage>, metrics: Metrics) -> StoreWriter {
        let core = Core::new(storage, metrics.clone());
        let (tx, _) = mpsc::channel();
        StoreWriter {
            tx,
            kind: core.kind,
            metrics,
            failing: core.failing.clone(),
            inline: Some(Arc::new(Mutex::new(core))),
        }
    }

    /// Hands `command` to the thread (or applies it inline); gives it back
    /// when the thread is gone.
    fn send(&self, command: Command) -> Result<(), Box<Command>> {
        match &self.inline {
            Some(core) => {
                let mut core = core.lock();
                core.retry_if_due(Instant::now());
                core.apply(command);
                Ok(())
            }
            None => self
                .tx
                .send(command)
                .map_err(|mpsc::SendError(c)| Box::new(c)),
        }
    }

    /// Why the store cannot make everything durable now (some accounts'
    /// writes failed and their retries have not succeeded yet), or `None`
    /// once every accepted write is durable. `/readyz` shows it. The text
    /// names the store and the accounts, never a token.
    pub fn failing(&self) -> Option<String> {
        self.failing.load().as_deref().cloned()
    }

    /// The kind of the underlying storage (`"redb"`, `"redis"`, `"memory"`).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Writes `account` and resolves once the write is durable. Errors when
    /// its first attempt failed (it is logged and counted, and retried in the
    /// background until durable) or the writer has stopped. Dropping the
    /// future does not cancel the write.
    pub async fn put(&self, account: StoredAccount) -> Result<(), StoreError> {
        let appid = account.appid.clone();
        let (done, answer) = oneshot::channel();
        let command = Command::Put {
            account,
            done: Some(done),
        };
        if self.send(command).is_err() {
            return Err(self.stopped(&appid));
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(self.stopped(&appid)),
        }
    }

    /// Queues a write of `account` without waiting; a failure is logged,
    /// counted and retried until durable.
    pub fn put_later(&self, account: StoredAccount) {
        let appid = account.appid.clone();
        if self
            .send(Command::Put {
                account,
                done: None,
            })
            .is_err()
        {
            self.stopped(&appid);
        }
    }

    /// Queues the removal of `appid` without waiting; a failure is logged,
    /// counted and retried until durable.
    pub fn remove_later(&self, appid: AppId) {
        if let Err(command) = self.send(Command::Remove { appid })
            && let Command::Remove { appid } = *command
        {
            self.stopped(&appid);
        }
    }

    /// Resolves when every write queued before it has been applied and every
    /// dirty account tried once more (or the writer has stopped).
    pub async fn flush(&self) {
        let (done, answer) = oneshot::channel();
        if self.send(Command::Flush { done }).is_ok() {
            let _ = answer.await;
        }
    }

    /// Applies every queued write, tries the dirty accounts once more (and
    /// logs those that could not be written), then stops the writer thread
    /// and drops the storage (closing the store file). Later writes fail with
    /// [`StoreError::WriterStopped`]. Used at shutdown, so that a new store
    /// on the same file can be opened in the same process.
    pub async fn close(&self) {
        let (done, answer) = oneshot::channel();
        if self.send(Command::Close { done }).is_ok() {
            let _ = answer.await;
        }
    }

    /// The error for a write that cannot reach the writer thread, logged and counted.
    fn stopped(&self, appid: &AppId) -> StoreError {
        let error = StoreError::WriterStopped {
            store: self.kind,
            appid: appid.to_string(),
        };
        tracing::error!(appid = %appid, store = self.kind, error = %error, "token store write lost: the store writer has stopped");
        self.metrics
            .store_write_errors
            .with_label_values(&[self.kind])
            .inc();
        error
    }
}

/// Logs and counts one failed write.
fn report(kind: &'static str, metrics: &Metrics, appid: &AppId, error: &StoreError) {
    tracing::error!(appid = %appid, store = kind, error = %error, "token store write failed; the in-memory state keeps being served and the write is retried until it is durable");
    metrics.store_write_errors.with_label_values(&[kind]).inc();
}

/// The newest state of an account whose write is not durable yet.
// Short-lived values, one per write or start: not worth a box each.
#[allow(clippy::large_enum_variant)]
enum Pending {
    Put(StoredAccount),
    Remove,
}

/// How far a retry round goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Round {
    /// In the background: until the first failure.
    UntilFailure,
    /// At a flush or close: every dirty account once.
    Every,
}

/// A dirty account: what to write, and why the last attempt failed.
struct Dirty {
    pending: Pending,
    error: String,
}

/// The writer's state: the storage, the dirty accounts and when to retry
/// them. Owned by the writer thread (or, inline, by the [`StoreWriter`]).
struct Core {
    storage: Arc<dyn Storage>,
    kind: &'static str,
    metrics: Metrics,
    dirty: BTreeMap<AppId, Dirty>,
    /// When the dirty accounts are retried next; `None` while none is dirty.
    retry_at: Option<Instant>,
    /// The wait before the next retry round; doubled after each failed one.
    backoff: Duration,
    /// No retry failure is logged before this instant.
    quiet_until: Option<Instant>,
    /// The dirty account whose retry failed last: the next round starts after it.
    resume_after: Option<AppId>,
    failing: Arc<ArcSwapOption<String>>,
}

impl Core {
    fn new(storage: Arc<dyn Storage>, metrics: Metrics) -> Core {
        let kind = storage.kind();
        // Both exist from start, so rate() sees the first error and the
        // alert sees the first 0.
        metrics.store_write_errors.with_label_values(&[kind]);
        metrics.store_up.with_label_values(&[kind]).set(1);
        Core {
            storage,
            kind,
            metrics,
            dirty: BTreeMap::new(),
            retry_at: None,
            backoff: RETRY_FIRST,
            quiet_until: None,
            resume_after: None,
            failing: Arc::default(),
        }
    }

    /// Applies one command. `Close` leaves the storage open: the thread
    /// drops it, an inline writer shares it.
    fn apply(&mut self, command: Command) {
        match command {
            Command::Put { account, done } => {
                let appid = account.appid.clone();
                let result = self.write(appid, Pending::Put(account));
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            Command::Remove { appid } => {
                let _ = self.write(appid, Pending::Remove);
            }
            Command::Flush { done } => {
                if !self.dirty.is_empty() {
                    self.retry(Round::Every, Instant::now());
                }
                let _ = done.send(());
            }
            Command::Close { done } => {
                self.close();
                let _ = done.send(());
            }
        }
    }

    /// First attempt of a write: the newest state of `appid`, replacing any
    /// dirty one. A failure is reported and leaves `appid` dirty.
    fn write(&mut self, appid: AppId, pending: Pending) -> Result<(), StoreError> {
        let result = attempt(&*self.storage, &appid, &pending);
        match &result {
            Ok(()) => {
                self.dirty.remove(&appid);
                // The store writes again: do not wait long for the others.
                if let Some(at) = &mut self.retry_at {
                    *at = (*at).min(Instant::now());
                }
            }
            Err(e) => {
                report(self.kind, &self.metrics, &appid, e);
                let error = e.to_string();
                self.dirty.insert(appid, Dirty { pending, error });
                self.retry_at
                    .get_or_insert_with(|| Instant::now() + self.backoff);
            }
        }
        self.publish();
        result
    }

    /// Retries the dirty accounts if their time has come.
    fn retry_if_due(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry(Round::UntilFailure, now);
        }
    }

    /// One retry round: tries the dirty accounts in appid order, starting
    /// after the one whose retry failed last. A background round
    /// ([`Round::UntilFailure`]) stops at the first failure: the store is
    /// still failing, so a round costs one failed write however many accounts
    /// are dirty, and the next round starting after it starves none. Then
    /// plans the next round (doubling the wait) or, when all are durable,
    /// stops retrying.
    fn retry(&mut self, round: Round, now: Instant) {
        let order: Vec<AppId> = match &self.resume_after {
            Some(last) => self
                .dirty
                .range((Bound::Excluded(last), Bound::Unbounded))
                .chain(self.dirty.range(..=last))
                .map(|(appid, _)| appid.clone())
                .collect(),
            None => self.dirty.keys().cloned().collect(),
        };
        for appid in order {
            let Some(dirty) = self.dirty.get_mut(&appid) else {
                continue;
            };
            match attempt(&*self.storage, &appid, &dirty.pending) {
                Ok(()) => {
                    self.dirty.remove(&appid);
                }
                Err(e) => {
                    dirty.error = e.to_string();
                    self.resume_after = Some(appid);
                    if round == Round::UntilFailure {
                        break;
                    }
                }
            }
        }
        if !self.dirty.is_empty() {
            self.backoff = (self.backoff * 2).min(RETRY_MAX);
            self.retry_at = Some(now + self.backoff);
            if self.quiet_until.is_none_or(|t| t <= now) {
                tracing::warn!(
                    store = self.kind,
                    dirty = self.dirty.len(),
                    retry_in_ms = self.backoff.as_millis() as u64,
                    reason = %self.reason(),
                    "token store writes still fail; retrying"
                );
                self.quiet_until = Some(now + RETRY_LOG_EVERY);
            }
        }
        self.publish();
    }

    /// At shutdown: the dirty accounts get one more round; those still dirty
    /// are logged, since their newest state is lost with the process.
    fn close(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        self.retry(Round::Every, Instant::now());
        if !self.dirty.is_empty() {
            let accounts: Vec<&str> = self.dirty.keys().map(AppId::as_str).collect();
            tracing::error!(
                store = self.kind,
                accounts = %accounts.join(","),
                reason = %self.reason(),
                "closing the token store with accounts whose newest state could not be written; a restart starts from their last durable state"
            );
        }
    }

    /// One sentence on what is dirty and why (empty when nothing is).
    fn reason(&self) -> String {
        let Some(first) = self.dirty.values().next() else {
            return String::new();
        };
        let waiting = self.dirty.len();
        let accounts = if waiting == 1 { "account" } else { "accounts" };
        format!(
            "{} ({waiting} {accounts} not yet durable, retried in the background)",
            first.error
        )
    }

    /// Makes the dirty set visible ([`StoreWriter::failing`],
    /// `wxtoken_store_up`) and, once the last dirty account is durable,
    /// stops retrying.
    fn publish(&mut self) {
        let up = self.dirty.is_empty();
        if up && self.retry_at.take().is_some() {
            tracing::info!(
                store = self.kind,
                "the token store writes again; every account is durable"
            );
            self.backoff = RETRY_FIRST;
            self.quiet_until = None;
            self.resume_after = None;
        }
        self.failing.store((!up).then(|| Arc::new(self.reason())));
        self.metrics
            .store_up
            .with_label_values(&[self.kind])
            .set(i64::from(up));
    }
}

/// One storage call for `pending`, a panic turned into a write error.
fn attempt(storage: &dyn Storage, appid: &AppId, pending: &Pending) -> Result<(), StoreError> {
    crate::panics::catch_quietly(|| match pending {
        Pending::Put(account) => storage.put(account),
        Pending::Remove => storage.remove(appid),
    })
    .unwrap_or_else(|panic| {
        Err(StoreError::Write {
            store: storage.describe(),
            appid: appid.to_string(),
            reason: format!("internal panic: {panic}"),
        })
    })
}

/// The writer thread: applies commands in order, and retries the dirty
/// accounts when due, until closed or every sender is gone.
fn run(mut core: Core, rx: mpsc::Receiver<Command>) {
    loop {
        let received = match core.retry_at {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        match received {
            Ok(first) => {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                let skip = superseded(&batch);
                for (command, skip) in batch.into_iter().zip(skip) {
                    if skip {
                        continue;
                    }
                    if let Command::Close { done } = command {
                        core.close();
                        drop(core);
                        let _ = done.send(());
                        return;
                    }
                    core.apply(command);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                core.close();
                return;
            }
        }
        core.retry_if_due(Instant::now());
    }
}

/// For each command of `batch`, whether it is an unawaited write that a later
/// write of the same account in the batch makes pointless.
fn superseded(batch: &[Command]) -> Vec<bool> {
    let mut written_later: HashSet<&AppId> = HashSet::new();
    let mut skip = vec![false; batch.len()];
    for (i, command) in batch.iter().enumerate().rev() {
        // An awaited command (a `put` or a `flush`) is a barrier: whoever
        // awaits it may rely on every earlier write being applied before it.
        if !command.unawaited() {
            written_later.clear();
        }
        if let Some(appid) = command.appid() {
            skip[i] = command.unawaited() && written_later.contains(appid);
            written_later.insert(appid);
        }
    }
    skip
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Mode;
    use crate::store::MemoryStore;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn account(id: &str, calls: u32) -> StoredAccount {
        StoredAccount {
            appid: AppId::parse(id).unwrap(),
            mode: Mode::Stable,
            token: None,
            pending_fetch_ms: None,
            calls_day: 0,
            calls_today: calls,
            forces: vec![],
            tickets: Vec::new(),
            open: None,
        }
    }

    fn put(id: &str, awaited: bool) -> Command {
        let done = awaited.then(|| oneshot::channel().0);
        Command::Put {
            account: account(id, 0),
            done,
        }
    }

    fn remove(id: &str) -> Command {
        Command::Remove {
            appid: AppId::parse(id).unwrap(),
        }
    }

    #[test]
    fn only_unawaited_writes_superseded_before_the_next_awaited_command_are_skipped() {
        let batch = vec![
            put("wxa", false),
            put("wxb", false),
            put("wxa", true),
            remove("wxb"),
            put("wxb", false),
            put("wxa", false),
            Command::Flush {
                done: oneshot::channel().0,
            },
        ];
        assert_eq!(
            superseded(&batch),
            vec![true, false, false, true, false, false, false]
        );
    }

    #[tokio::test]
    async fn a_writer_whose_thread_is_gone_answers_with_an_error() {
        let (tx, rx) = mpsc::channel();
        drop(rx);
        let metrics = Metrics::new();
        let writer = StoreWriter {
            tx,
            kind: "memory",
            metrics: metrics.clone(),
            failing: Arc::default(),
            inline: None,
        };
        let err = writer.put(account("wxa", 0)).await.unwrap_err();
        assert!(matches!(err, StoreError::WriterStopped { .. }), "{err:?}");
        assert!(err.to_string().contains("restart wxtoken"), "{err}");
        writer.put_later(account("wxa", 0));
        writer.remove_later(AppId::parse("wxa").unwrap());
        writer.flush().await;
        let errors = metrics
            .store_write_errors
            .with_label_values(&["memory"])
            .get();
        assert_eq!(errors, 3);
    }

    /// A storage whose next `failures` writes fail, whatever they are; then it works.
    #[derive(Default)]
    struct Flaky {
        stored: MemoryStore,
        failures: AtomicU32,
        attempts: AtomicU32,
        /// Every account tried, in order.
        tried: Mutex<Vec<String>>,
    }

    impl Flaky {
        fn fail_next(&self, n: u32) {
            self.failures.store(n, Ordering::SeqCst);
        }

        fn check(&self, appid: &AppId) -> Result<(), StoreError> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            self.tried.lock().push(appid.to_string());
            let failing = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(StoreError::Write {
                    store: self.describe(),
                    appid: appid.to_string(),
                    reason: "No space left on device (os error 28)".into(),
                });
            }
            Ok(())
        }
    }

    impl Storage for Flaky {
        fn kind(&self) -> &'static str {
            "flaky"
        }
        fn describe(&self) -> String {
            "flaky test store".into()
        }
        fn load_all(&self) -> Result<Vec<StoredAccount>, StoreError> {
            self.stored.load_all()
        }
        fn put(&self, account: &StoredAccount) -> Result<(), StoreError> {
            self.check(&account.appid)?;
            self.stored.put(account)
        }
        fn remove(&self, appid: &AppId) -> Result<(), StoreError> {
            self.check(appid)?;
            self.stored.remove(appid)
        }
    }

    fn core(storage: &Arc<Flaky>) -> (Core, Metrics) {
        let metrics = Metrics::new();
        (Core::new(storage.clone(), metrics.clone()), metrics)
    }

    fn up(metrics: &Metrics) -> i64 {
        metrics.store_up.with_label_values(&["flaky"]).get()
    }

    fn failing(core: &Core) -> Option<String> {
        core.failing.load().as_deref().cloned()
    }

    fn id(s: &str) -> AppId {
        AppId::parse(s).unwrap()
    }

    #[test]
    fn a_failed_write_stays_dirty_until_a_retry_makes_it_durable() {
        let storage = Arc::new(Flaky::default());
        let (mut core, metrics) = core(&storage);
        assert_eq!((failing(&core), up(&metrics)), (None, 1));

        storage.fail_next(3);
        assert!(
            core.write(id("wxa"), Pending::Put(account("wxa", 1)))
                .is_err()
        );
        // The newest state replaces the dirty one.
        assert!(
            core.write(id("wxa"), Pending::Put(account("wxa", 2)))
                .is_err()
        );
        let reason = failing(&core).expect("failing while wxa is dirty");
        assert!(reason.contains("cannot write account wxa"), "{reason}");
        assert!(reason.contains("No space left on device"), "{reason}");
        assert!(reason.contains("1 account not yet durable"), "{reason}");
        assert_eq!(up(&metrics), 0);
        let first = core.retry_at.expect("a retry is planned");

        // The third failure: still dirty, and the wait doubles.
        core.retry(Round::UntilFailure, first);
        assert!(failing(&core).is_some());
        assert_eq!(core.retry_at, Some(first + RETRY_FIRST * 2));

        // Not due yet: nothing is tried.
        let attempts = storage.attempts.load(Ordering::SeqCst);
        core.retry_if_due(first + RETRY_FIRST);
        assert_eq!(storage.attempts.load(Ordering::SeqCst), attempts);

        core.retry_if_due(first + RETRY_FIRST * 2);
        assert_eq!((failing(&core), up(&metrics)), (None, 1));
        assert_eq!(core.retry_at, None);
        assert_eq!(core.backoff, RETRY_FIRST);
        assert_eq!(storage.load_all().unwrap(), vec![account("wxa", 2)]);
        // Only first attempts count as failed writes.
        assert_eq!(
            metrics
                .store_write_errors
                .with_label_values(&["flaky"])
                .get(),
            2
        );
    }

    #[test]
    fn the_wait_between_retries_doubles_up_to_its_maximum() {
        let storage = Arc::new(Flaky::default());
        let (mut core, _) = core(&storage);
        storage.fail_next(u32::MAX);
        let _ = core.write(id("wxa"), Pending::Put(account("wxa", 1)));
        let mut waits = Vec::new();
        for _ in 0..8 {
            let at = core.retry_at.unwrap();
            core.retry(Round::UntilFailure, at);
            waits.push(core.retry_at.unwrap() - at);
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn a_success_of_another_account_keeps_the_dirty_one_and_hastens_its_retry() {
        let storage = Arc::new(Flaky::default());
        let (mut core, _) = core(&storage);
        storage.fail_next(1);
        assert!(
            core.write(id("wxa"), Pending::Put(account("wxa", 1)))
                .is_err()
        );
        core.write(id("wxb"), Pending::Put(account("wxb", 1)))
            .unwrap();
        assert!(failing(&core).expect("wxa is still dirty").contains("wxa"));
        assert!(core.retry_at.unwrap() <= Instant::now());
        core.retry_if_due(Instant::now());
        assert_eq!(failing(&core), None);
        assert_eq!(
            storage.load_all().unwrap(),
            vec![account("wxa", 1), account("wxb", 1)]
        );
    }

    #[test]
    fn a_removal_is_never_undone_by_the_retry_of_an_older_put() {
        let storage = Arc::new(Flaky::default());
        let (mut core, _) = core(&storage);
        core.write(id("wxa"), Pending::Put(account("wxa", 1)))
            .unwrap();
        storage.fail_next(2);
        assert!(
            core.write(id("wxa"), Pending::Put(account("wxa", 2)))
                .is_err()
        );
        // The removal fails too and becomes the state to retry.
        assert!(core.write(id("wxa"), Pending::Remove).is_err());
        core.retry(Round::UntilFailure, Instant::now());
        assert_eq!(failing(&core), None);
        assert!(storage.load_all().unwrap().is_empty());

        // A removal that succeeds at once clears the failed put before it.
        storage.fail_next(1);
        assert!(
            core.write(id("wxb"), Pending::Put(account("wxb", 1)))
                .is_err()
        );
        core.write(id("wxb"), Pending::Remove).unwrap();
        assert_eq!(failing(&core), None);
        core.retry(Round::UntilFailure, Instant::now());
        assert!(storage.load_all().unwrap().is_empty());
    }

    #[test]
    fn a_retry_round_stops_at_the_first_failure_and_the_next_starts_after_it() {
        let storage = Arc::new(Flaky::default());
        let (mut core, _) = core(&storage);
        storage.fail_next(3);
        for id_ in ["wxa", "wxb", "wxc"] {
            assert!(core.write(id(id_), Pending::Put(account(id_, 1))).is_err());
        }
        let round = |core: &mut Core, fail: u32| {
            storage.fail_next(fail);
            storage.tried.lock().clear();
            core.retry(Round::UntilFailure, Instant::now());
            storage.tried.lock().clone()
        };
        // The store still fails: one attempt per round, each at the next account.
        assert_eq!(round(&mut core, 1), ["wxa"]);
        assert_eq!(round(&mut core, 1), ["wxb"]);
        // The store works again: the round starts at wxc and writes all three.
        assert_eq!(round(&mut core, 0), ["wxc", "wxa", "wxb"]);
        assert_eq!(failing(&core), None);
        assert_eq!(core.retry_at, None);
        assert_eq!(
            storage.load_all().unwrap(),
            vec![account("wxa", 1), account("wxb", 1), account("wxc", 1)]
        );

        // At a flush or close, every dirty account is tried.
        storage.fail_next(2);
        assert!(
            core.write(id("wxa"), Pending::Put(account("wxa", 2)))
                .is_err()
        );
        assert!(
            core.write(id("wxb"), Pending::Put(account("wxb", 2)))
                .is_err()
        );
        storage.fail_next(1);
        storage.tried.lock().clear();
        core.retry(Round::Every, Instant::now());
        assert_eq!(*storage.tried.lock(), ["wxa", "wxb"]);
        assert!(failing(&core).is_some_and(|r| r.contains("wxa")));
    }

    #[test]
    fn close_writes_the_dirty_accounts_and_keeps_what_still_fails() {
        let storage = Arc::new(Flaky::default());
        let (mut core, metrics) = core(&storage);
        storage.fail_next(2);
        assert!(
            core.write(id("wxa"), Pending::Put(account("wxa", 1)))
                .is_err()
        );
        assert!(
            core.write(id("wxb"), Pending::Put(account("wxb", 1)))
                .is_err()
        );
        core.close();
        assert_eq!(
            storage.load_all().unwrap(),
            vec![account("wxa", 1), account("wxb", 1)]
        );
        assert_eq!((failing(&core), up(&metrics)), (None, 1));

        storage.fail_next(2);
        assert!(
            core.write(id("wxc"), Pending::Put(account("wxc", 1)))
                .is_err()
        );
        core.close();
        // Still failing at shutdown: wxc is logged and stays dirty.
        assert!(failing(&core).is_some_and(|r| r.contains("wxc")));
        assert_eq!(up(&metrics), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_inline_writer_retries_at_flush() {
        let storage = Arc::new(Flaky::default());
        let writer = StoreWriter::inline(storage.clone(), Metrics::new());
        storage.fail_next(1);
        assert!(writer.put(account("wxa", 1)).await.is_err());
        assert!(writer.failing().is_some());
        writer.flush().await;
        assert_eq!(writer.failing(), None);
        assert_eq!(storage.load_all().unwrap(), vec![account("wxa", 1)]);
    }
}
