//! The token store: what must survive a restart or a crash of wxtoken.
//!
//! It owns each account's persisted state ([`StoredAccount`]: the current
//! token and its times, the write-ahead intent of a legacy fetch, the daily
//! call counter, the stable force-refresh log and the JS-SDK tickets), the
//! [`Storage`] interface, its single-process implementations and the
//! [`StoreWriter`] that applies every write off the async runtime and retries
//! the ones that failed.
//!
//! Which [`Storage`] a server uses is decided in [`crate::startup`]: the
//! [`RedbStore`] at `store.path`; with `store.redis`, the `RedisStore` of
//! [`crate::replica`] shared by the replicas (it lives there and reuses this
//! module's record format); or one handed in through `EngineOptions::store` (tests pass
//! a [`MemoryStore`]).
//!
//! # Files
//!
//! - `mod.rs`: the stored types, the [`Storage`] trait, [`StoreError`] (every
//!   message of the store) and [`move_aside`] for `--reset-store`.
//! - `record.rs`: the versioned JSON record of an account (below): encoding,
//!   and decoding into a typed error that never quotes the record.
//! - `redb.rs`: [`RedbStore`]: the `accounts` table, redb's errors mapped to
//!   [`StoreError`], panics inside redb caught, and the reopening of the
//!   database after a failed write.
//! - `file.rs`: the store file on disk: directory and file modes, the
//!   exclusive lock, and the redb storage backend on the locked handle.
//! - `open.rs`: the Open Platform state ([`StoredOpen`]) and how two views
//!   of it merge ([`StoredOpen::merge`], used where replicas share it).
//! - `memory.rs`: [`MemoryStore`], a map that persists nothing.
//! - `writer.rs`: [`StoreWriter`]: the ordered write queue on one thread (or
//!   inline, for tests on the paused clock), the dirty accounts and their
//!   retries, and the store's health (`failing`, `wxtoken_store_up`).
//!
//! # Layout of the redb file
//!
//! One file (`store.path`, 0600) in a data directory of its own (0700); both
//! modes are set whatever the umask. The file is locked exclusively, on the
//! handle the [`RedbStore`] keeps for its whole life, so the lock holds across
//! every reopen of the database.
//!
//! One table, `accounts`: key `&str` (the appid), value `&[u8]` (a JSON
//! object). Version 1 of the value is
//!
//! ```json
//! {"v": 1, "mode": "legacy" | "stable",
//!  "token": null | {"token": "...", "fetched_at_ms": 0, "expires_at_ms": 0, "serve_until_ms": 0},
//!  "pending_fetch_ms": null | 0, "calls_day": 0, "calls_today": 0, "forces": [0],
//!  "tickets": [{"kind": "jsapi" | "wx_card", "ticket": "...", "fetched_at_ms": 0, "expires_at_ms": 0, "serve_until_ms": 0}]}
//! ```
//!
//! All times are Unix milliseconds; `calls_day` is a [`crate::clock::china_day`];
//! `tickets` may be absent (records written before tickets existed).
//! A record with another `v`, a key that is not an appid, or a value that does
//! not decode is skipped with a warning when loading and left in the file
//! untouched.
//!
//! # Invariants
//!
//! - **A write acknowledged is durable.** [`RedbStore`]'s [`Storage::put`]
//!   returns `Ok` only after its redb transaction committed with immediate
//!   durability, and [`StoreWriter::put`] resolves `Ok` only after the
//!   storage's `put` did.
//! - **Failed writes are retried until durable.** A write that fails (a full
//!   disk, an I/O error, Redis down) leaves its account dirty in the
//!   [`StoreWriter`], which keeps the account's newest state (a put or a
//!   removal) and retries it with backoff until it is written, without a
//!   restart; [`StoreWriter::failing`] and `wxtoken_store_up` say so
//!   meanwhile. [`RedbStore`] reopens its database after a failed write, since
//!   redb refuses every write after an I/O error until then.
//! - **Writes never reorder.** Every write goes through one [`StoreWriter`],
//!   in submission order, on its own thread off the async runtime (or, for an
//!   inline writer, in the caller under one lock); a retry writes an
//!   account's newest state, never an older one over a newer one.
//! - **Nothing stored is ever dropped silently.** A corrupt or foreign file is
//!   an error at open (never deleted or replaced); an undecodable record is
//!   skipped with a warning and kept; only `--reset-store` moves a file aside
//!   ([`move_aside`], which never overwrites an earlier one); state that could
//!   not be written by shutdown is logged.
//! - **A corrupt file is one sentence.** A panic inside redb (it asserts on
//!   some malformed files) is caught quietly and becomes
//!   [`StoreError::Corrupt`]; no panic message or backtrace is printed.
//! - **Only wxtoken's user can read the store.** The file is created 0600
//!   and a missing directory 0700. At open, a looser file of ours is set to
//!   0600, and a looser directory to 0700 when it is ours, not sticky and
//!   holds only the store's files (the store and its `.broken-…` siblings);
//!   anything else is warned about, never chmod-ed.
//! - **The token value never appears in a log line or an error message.**

mod file;
mod memory;
mod open;
pub(crate) mod record;
mod redb;
mod writer;

use std::path::{Path, PathBuf};

use crate::domain::{AccessToken, AppId, Mode};

pub use self::memory::MemoryStore;
pub use self::open::{
    StoredCode, StoredOpen, VERIFY_TICKET_LIFETIME_MS, VERIFY_TICKETS_KEPT, VerifyTicket,
};
pub use self::redb::RedbStore;
pub use self::writer::StoreWriter;

/// One account's persisted token. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub token: AccessToken,
    pub fetched_at_ms: i64,
    pub expires_at_ms: i64,
    pub serve_until_ms: i64,
}

/// One account's persisted state. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAccount {
    pub appid: AppId,
    pub mode: Mode,
    pub token: Option<StoredToken>,
    /// A legacy fetch was started at this instant and its outcome is not
    /// recorded yet (write-ahead intent). `None` once the outcome is recorded.
    pub pending_fetch_ms: Option<i64>,
    /// China-time day number (see [`crate::clock::china_day`]) that `calls_today` counts.
    pub calls_day: i64,
    pub calls_today: u32,
    /// Unix ms of stable force_refresh calls made on `calls_day`.
    pub forces: Vec<i64>,
    /// The account's JS-SDK tickets.
    pub tickets: Vec<StoredTicket>,
    /// Open Platform components and authorizers only: what they need besides
    /// the token (verify tickets, refresh token, authorization).
    pub open: Option<StoredOpen>,
}

/// One persisted JS-SDK ticket. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTicket {
    pub kind: crate::domain::TicketKind,
    pub ticket: AccessToken,
    pub fetched_at_ms: i64,
    pub expires_at_ms: i64,
    pub serve_until_ms: i64,
}

/// Why the token store could not do what was asked.
///
/// Every message is one sentence that names the file (when there is one) and
/// says what to do. None contains a token value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file or its directory cannot be opened or created (permissions, a
    /// missing directory that cannot be created, a directory in the way).
    #[error(
        "cannot open or create the token store {}: {reason}; check that its directory exists or can be created and that the user running wxtoken may read and write it",
        path.display()
    )]
    Open { path: PathBuf, reason: String },

    /// Another process (or another store in this process) holds the file.
    #[error(
        "the token store {} is already in use by another process; stop the other wxtoken instance or give this one its own store file",
        path.display()
    )]
    Locked { path: PathBuf },

    /// The file exists but is not a readable redb database of wxtoken.
    #[error(
        "the token store {} is unreadable or corrupt ({reason}); start with `wxtoken serve --reset-store` to move it aside and start empty, or restore a backup",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },

    /// A write (put or remove) did not become durable.
    #[error(
        "cannot write account {appid} to the {store}: {reason}; check free disk space and the permissions of the store file"
    )]
    Write {
        /// [`Storage::describe`] of the store.
        store: String,
        appid: String,
        reason: String,
    },

    /// Reading the stored accounts failed.
    #[error(
        "cannot read the {store}: {reason}; check the store file, or start with `wxtoken serve --reset-store` to move it aside and start empty"
    )]
    Read {
        /// [`Storage::describe`] of the store.
        store: String,
        reason: String,
    },

    /// The [`StoreWriter`] thread is no longer running, so nothing more is written.
    #[error(
        "the {store} store writer has stopped, so account {appid} was not written; restart wxtoken"
    )]
    WriterStopped { store: &'static str, appid: String },
}

/// Where accounts persist. Implementations are blocking; call them from the
/// [`StoreWriter`] thread or at startup, not from async tasks.
pub trait Storage: Send + Sync + 'static {
    /// `"redb"`, `"memory"`, `"redis"`: the metric label and log field.
    fn kind(&self) -> &'static str;

    /// Human description, e.g. `redb store /var/lib/wxtoken/wxtoken.redb`.
    fn describe(&self) -> String;

    /// Every stored account, ordered by appid. A record that cannot be decoded
    /// is skipped with a `tracing::warn` naming its key and the file, never
    /// deleted. Errors when the store cannot be read at all.
    fn load_all(&self) -> Result<Vec<StoredAccount>, StoreError>;

    /// Writes (inserts or replaces) one account in one durable transaction.
    /// Errors when the write did not become durable.
    fn put(&self, account: &StoredAccount) -> Result<(), StoreError>;

    /// Removes one account; removing an absent account is not an error.
    /// Errors when the removal did not become durable.
    fn remove(&self, appid: &AppId) -> Result<(), StoreError>;
}

/// Renames the file at `path` to `<path>.broken-<unix seconds>` (with `-1`,
/// `-2`, ... appended if that name is taken) and returns the new path; used by
/// `--reset-store`. Errors when `path` does not exist or cannot be renamed.
pub fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let secs = crate::clock::Clock::system().now_unix();
    let mut base = path.as_os_str().to_owned();
    base.push(format!(".broken-{secs}"));
    let mut target = PathBuf::from(&base);
    let mut n = 0u32;
    // `rename` silently replaces an existing target on Unix: never overwrite
    // an earlier broken store.
    while target.symlink_metadata().is_ok() {
        n += 1;
        let mut name = base.clone();
        name.push(format!("-{n}"));
        target = PathBuf::from(name);
    }
    std::fs::rename(path, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_aside_never_overwrites_an_earlier_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wxtoken.redb");
        std::fs::write(&path, b"first").unwrap();
        let first = move_aside(&path).unwrap();
        std::fs::write(&path, b"second").unwrap();
        let second = move_aside(&path).unwrap();
        assert_ne!(first, second);
        assert_eq!(std::fs::read(&first).unwrap(), b"first");
        assert_eq!(std::fs::read(&second).unwrap(), b"second");
        assert!(!path.exists());
    }

    #[test]
    fn corrupt_error_names_the_file_and_the_way_out() {
        let e = StoreError::Corrupt {
            path: PathBuf::from("/var/lib/wxtoken/wxtoken.redb"),
            reason: "not a redb database file".into(),
        };
        let text = e.to_string();
        assert!(text.contains("/var/lib/wxtoken/wxtoken.redb"), "{text}");
        assert!(text.contains("unreadable or corrupt"), "{text}");
        assert!(text.contains("`wxtoken serve --reset-store`"), "{text}");
        assert!(text.contains("restore a backup"), "{text}");
    }
}
