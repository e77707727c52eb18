//! [`StoreWriter`]: every write to the store, on one dedicated OS thread.
//!
//! Callers on the async runtime hand a write to the thread through a channel
//! and, when they need durability, await a oneshot answer; no blocking call
//! and no timer runs on the runtime, so this works inside actix's
//! current-thread runtimes and under tokio's paused clock.
//!
//! Invariants: writes are applied in submission order (one thread, one FIFO
//! channel); a failed write is logged and counted in
//! `wxtoken_store_write_errors_total{store}` exactly once; a panic inside a
//! [`Storage`] becomes an error, not a dead writer. A fire-and-forget write that
//! a later queued write of the same account supersedes, with no awaited `put`
//! or `flush` in between, may be skipped: the later one is applied instead, so
//! nobody can observe the difference except through a crash at that instant,
//! which leaves an earlier committed state.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::{Storage, StoreError, StoredAccount, panic_reason};
use crate::domain::AppId;
use crate::metrics::Metrics;

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
    /// Apply what is queued, answer, then end the thread and drop the storage.
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
/// writes never reorder and never block the async runtime. Clones share the
/// same thread; the thread ends when the last clone is dropped (after
/// applying what was queued).
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<Command>,
    kind: &'static str,
    metrics: Metrics,
    /// Set by [`StoreWriter::inline`]: writes run in the caller, no thread.
    inline: Option<Arc<dyn Storage>>,
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
    /// this logs an error and every write fails with
    /// [`StoreError::WriterStopped`].
    pub fn start(storage: Arc<dyn Storage>, metrics: Metrics) -> StoreWriter {
        let kind = storage.kind();
        // The error counter exists at 0 from start, so rate() sees the first error.
        metrics.store_write_errors.with_label_values(&[kind]);
        let (tx, rx) = mpsc::channel();
        let thread_metrics = metrics.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("wxtoken-store-{kind}"))
            .spawn(move || run(storage, thread_metrics, rx));
        if let Err(e) = spawned {
            tracing::error!(store = kind, error = %e, "cannot start the store writer thread; nothing will be persisted");
        }
        StoreWriter {
            tx,
            kind,
            metrics,
            inline: None,
        }
    }

    /// A writer that applies every write at once in the calling task, without
    /// a thread. Only for storages that never block (like
    /// [`MemoryStore`](super::MemoryStore)): tests on tokio's paused clock use
    /// it, because awaiting another thread lets the paused clock jump ahead.
    pub fn inline(storage: Arc<dyn Storage>, metrics: Metrics) -> StoreWriter {
        metrics
            .store_write_errors
            .with_label_values(&[storage.kind()]);
        let (tx, _) = mpsc::channel();
        StoreWriter {
            tx,
            kind: storage.kind(),
            metrics,
            inline: Some(storage),
        }
    }

    /// Applies one command in the caller (inline mode).
    fn apply_inline(&self, storage: &Arc<dyn Storage>, command: Command) {
        match command {
            Command::Put { account, done } => {
                let result = guarded(&**storage, &account.appid, || storage.put(&account));
                if let Err(e) = &result {
                    report(self.kind, &self.metrics, &account.appid, e);
                }
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            Command::Remove { appid } => {
                if let Err(e) = guarded(&**storage, &appid, || storage.remove(&appid)) {
                    report(self.kind, &self.metrics, &appid, &e);
                }
            }
            Command::Flush { done } | Command::Close { done } => {
                let _ = done.send(());
            }
        }
    }

    /// Hands `command` to the thread (or applies it inline); gives it back
    /// when the thread is gone.
    fn send(&self, command: Command) -> Result<(), Box<Command>> {
        match &self.inline {
            Some(storage) => {
                self.apply_inline(storage, command);
                Ok(())
            }
            None => self
                .tx
                .send(command)
                .map_err(|mpsc::SendError(c)| Box::new(c)),
        }
    }

    /// Why the store cannot write now (the last write failed and has not
    /// been retried successfully yet), or `None` while it writes fine.
    /// `/readyz` shows it.
    pub fn failing(&self) -> Option<String> {
        None
    }

    /// The kind of the underlying storage (`"redb"`, `"memory"`).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Writes `account` and resolves once the write is durable. Errors when
    /// the write failed (it is logged and counted) or the writer has stopped.
    /// Dropping the future does not cancel the write.
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

    /// Queues a write of `account` without waiting; a failure is logged and counted.
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

    /// Queues the removal of `appid` without waiting; a failure is logged and counted.
    pub fn remove_later(&self, appid: AppId) {
        if let Err(command) = self.send(Command::Remove { appid })
            && let Command::Remove { appid } = *command
        {
            self.stopped(&appid);
        }
    }

    /// Resolves when every write queued before it has been applied (or the
    /// writer has stopped).
    pub async fn flush(&self) {
        let (done, answer) = oneshot::channel();
        if self.send(Command::Flush { done }).is_ok() {
            let _ = answer.await;
        }
    }

    /// Applies every queued write, then stops the writer thread and drops the
    /// storage (closing the store file). Later writes fail with
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
        report(self.kind, &self.metrics, appid, &error);
        error
    }
}

/// Logs and counts one failed write.
fn report(kind: &'static str, metrics: &Metrics, appid: &AppId, error: &StoreError) {
    tracing::error!(appid = %appid, store = kind, error = %error, "token store write failed; the in-memory state keeps being served");
    metrics.store_write_errors.with_label_values(&[kind]).inc();
}

/// The writer thread: applies commands in order until every sender is gone.
fn run(storage: Arc<dyn Storage>, metrics: Metrics, rx: mpsc::Receiver<Command>) {
    let kind = storage.kind();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let skip = superseded(&batch);
        for (command, skip) in batch.into_iter().zip(skip) {
            if skip {
                continue;
            }
            match command {
                Command::Put { account, done } => {
                    let result = guarded(&*storage, &account.appid, || storage.put(&account));
                    if let Err(e) = &result {
                        report(kind, &metrics, &account.appid, e);
                    }
                    if let Some(done) = done {
                        let _ = done.send(result);
                    }
                }
                Command::Remove { appid } => {
                    if let Err(e) = guarded(&*storage, &appid, || storage.remove(&appid)) {
                        report(kind, &metrics, &appid, &e);
                    }
                }
                Command::Flush { done } => {
                    let _ = done.send(());
                }
                Command::Close { done } => {
                    drop(storage);
                    let _ = done.send(());
                    return;
                }
            }
        }
    }
}

/// Runs one storage call, turning a panic into a write error.
fn guarded(
    storage: &dyn Storage,
    appid: &AppId,
    call: impl FnOnce() -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|payload| {
        Err(StoreError::Write {
            store: storage.describe(),
            appid: appid.to_string(),
            reason: panic_reason(&*payload),
        })
    })
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

    fn put(id: &str, awaited: bool) -> Command {
        let done = awaited.then(|| oneshot::channel().0);
        Command::Put {
            account: StoredAccount {
                appid: AppId::parse(id).unwrap(),
                mode: Mode::Stable,
                token: None,
                pending_fetch_ms: None,
                calls_day: 0,
                calls_today: 0,
                forces: vec![],
                tickets: Vec::new(),
            },
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
            inline: None,
        };
        let Command::Put { account, .. } = put("wxa", false) else {
            unreachable!()
        };
        let err = writer.put(account.clone()).await.unwrap_err();
        assert!(matches!(err, StoreError::WriterStopped { .. }), "{err:?}");
        assert!(err.to_string().contains("restart wxtoken"), "{err}");
        writer.put_later(account);
        writer.remove_later(AppId::parse("wxa").unwrap());
        writer.flush().await;
        let errors = metrics
            .store_write_errors
            .with_label_values(&["memory"])
            .get();
        assert_eq!(errors, 3);
    }
}
