//! [`RedbStore`]: accounts in one redb file (layout in [`crate::store`]).
//!
//! It owns the mapping from redb's errors to [`StoreError`], the guard that
//! turns a panic inside redb (which asserts on some malformed files, a
//! truncated one for instance) into an error, and the reopening of the
//! database after a failed write.
//!
//! Invariants: the file is never deleted, truncated or replaced here; a file
//! that is not a wxtoken redb store is refused at [`RedbStore::open`] and left
//! as it was. redb's own crash recovery (replaying to the last committed
//! transaction after an unclean shutdown) is allowed and logged. After an I/O
//! error redb refuses every later write ("Previous I/O error occurred") until
//! the database is closed and reopened, so a failed write closes the
//! database, reopens it on the same locked file and tries once more; the file
//! stays locked throughout (see [`super::file`]).

use std::cell::Cell;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use ::redb::{Database, DatabaseError, ReadableTable, StorageError, TableDefinition, TableError};
use parking_lot::Mutex;

use super::file::{LockedFile, open_locked};
use super::{Storage, StoreError, StoredAccount, record};
use crate::domain::AppId;
use crate::panics::catch_quietly;

/// The one table: appid → versioned JSON record.
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");

/// redb's page cache. The store holds a few hundred small records at most;
/// redb's default of 1 GiB would be absurd.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// The token store in a redb file. Every write is one transaction committed
/// with immediate durability (fsync) before it returns.
pub struct RedbStore {
    /// `None` when reopening after a failed write failed too; the next call
    /// reopens. Declared before `file`, so it is closed before the lock goes.
    db: Mutex<Option<Database>>,
    /// The open store file, locked for the store's whole life.
    file: File,
    path: PathBuf,
}

enum Change<'a> {
    Insert(&'a [u8]),
    Remove,
}

/// Whether redb's repair of an uncleanly closed file is worth a warning.
#[derive(Clone, Copy)]
enum Repair {
    /// At start: the last run did not close the store (a crash, a kill -9).
    Warn,
    /// Reopening after a failed write: the repair is expected, the writer reports the failure.
    Expected,
}

impl RedbStore {
    /// Opens or creates the database at `path`. Missing directories are
    /// created 0700 and a new file 0600, whatever the umask; an existing data
    /// directory or file that other users may read is tightened when it is
    /// ours (a directory only when it holds nothing but the store's files),
    /// else warned about.
    ///
    /// Errors: [`StoreError::Open`] when the file or a directory cannot be
    /// created or opened, [`StoreError::Locked`] when another process has it
    /// open, [`StoreError::Corrupt`] when the file is not a readable wxtoken
    /// redb store. A refused file is left exactly as it was.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let file = open_locked(path)?;
        let db = open_database(&file, path, Repair::Warn)?;
        let store = RedbStore {
            db: Mutex::new(Some(db)),
            file,
            path: path.to_path_buf(),
        };
        store.ensure_table()?;
        Ok(store)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the `accounts` table if it is missing and checks that an
    /// existing one has wxtoken's key and value types.
    fn ensure_table(&self) -> Result<(), StoreError> {
        let guard = self.db.lock();
        let Some(db) = guard.as_ref() else {
            return Err(self.open_err("the database is closed".to_string()));
        };
        let outcome = catch_quietly(|| -> Result<(), StoreError> {
            let txn = db.begin_write().map_err(|e| self.open_err(e.to_string()))?;
            match txn.open_table(ACCOUNTS) {
                Ok(table) => drop(table),
                Err(
                    e @ (TableError::TableTypeMismatch { .. }
                    | TableError::TableIsMultimap(_)
                    | TableError::TypeDefinitionChanged { .. }),
                ) => {
                    return Err(
                        self.corrupt(format!("it is a redb database of another program ({e})"))
                    );
                }
                Err(TableError::Storage(StorageError::Corrupted(msg))) => {
                    return Err(self.corrupt(msg));
                }
                Err(e) => return Err(self.open_err(e.to_string())),
            }
            txn.commit().map_err(|e| self.open_err(e.to_string()))
        });
        outcome.unwrap_or_else(|panic| Err(self.corrupt(redb_panic(&panic))))
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    fn open_err(&self, reason: String) -> StoreError {
        StoreError::Open {
            path: self.path.clone(),
            reason,
        }
    }

    /// Runs `call` on the open database. When it fails, closes the database
    /// (redb refuses every write after an I/O error until then), reopens it
    /// and runs `call` once more; a database that was already closed is
    /// reopened first and `call` runs once. Errors with the reason of the
    /// last failure.
    fn with_database<T>(&self, call: impl Fn(&Database) -> Result<T, String>) -> Result<T, String> {
        let mut guard = self.db.lock();
        let mut reopened = false;
        loop {
            let db = match guard.as_ref() {
                Some(db) => db,
                None => {
                    reopened = true;
                    let db = open_database(&self.file, &self.path, Repair::Expected)
                        .map_err(|e| format!("cannot reopen the store ({e})"))?;
                    guard.insert(db)
                }
            };
            match catch_quietly(|| call(db)).unwrap_or_else(|panic| Err(redb_panic(&panic))) {
                Ok(value) => return Ok(value),
                Err(reason) => {
                    // Close it before anything else: a poisoned database
                    // answers every later call with "Previous I/O error".
                    *guard = None;
                    if reopened {
                        return Err(reason);
                    }
                }
            }
        }
    }

    /// Applies one change to `key` in one committed transaction.
    fn write(&self, key: &str, change: Change<'_>) -> Result<(), StoreError> {
        self.with_database(|db| {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(ACCOUNTS).map_err(|e| e.to_string())?;
                match &change {
                    Change::Insert(bytes) => table.insert(key, *bytes).map(drop),
                    Change::Remove => table.remove(key).map(drop),
                }
                .map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())
        })
        .map_err(|reason| StoreError::Write {
            store: self.describe(),
            appid: key.to_string(),
            reason,
        })
    }

    fn read_all(&self, db: &Database) -> Result<Vec<StoredAccount>, String> {
        let txn = db.begin_read().map_err(|e| e.to_string())?;
        let table = match txn.open_table(ACCOUNTS) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut accounts = Vec::new();
        for entry in table.iter().map_err(|e| e.to_string())? {
            let (key, value) = entry.map_err(|e| e.to_string())?;
            let key = key.value();
            match record::decode(key, value.value()) {
                Ok(account) => accounts.push(account),
                Err(reason) => tracing::warn!(
                    key = ?key,
                    file = %self.path.display(),
                    reason = %reason,
                    "skipping a stored account that cannot be decoded; its record stays in the file"
                ),
            }
        }
        Ok(accounts)
    }
}

/// The reason of an error for a panic caught inside redb (the message of
/// one of its internal checks; it never holds record contents).
fn redb_panic(message: &str) -> String {
    format!("redb stopped on an internal check: {message}")
}

/// Opens (or initialises, when empty) the redb database in the locked store
/// `file` at `path`. A panic inside redb, which asserts on some malformed
/// files, is [`StoreError::Corrupt`] and prints nothing.
fn open_database(file: &File, path: &Path, repair: Repair) -> Result<Database, StoreError> {
    let backend = file.try_clone().map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let shown = path.display().to_string();
    let warned = Cell::new(false);
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    builder.set_repair_callback(move |_session| {
        if !warned.replace(true) {
            match repair {
                Repair::Warn => tracing::warn!(
                    file = %shown,
                    "the token store was not closed cleanly; recovering its last committed state"
                ),
                Repair::Expected => tracing::debug!(
                    file = %shown,
                    "reopening the token store after a failed write; recovering its last committed state"
                ),
            }
        }
    });
    catch_quietly(|| builder.create_with_backend(LockedFile(backend)))
        .map_err(|panic| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: redb_panic(&panic),
        })?
        .map_err(|e| open_error(path, e))
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    let path = path.to_path_buf();
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path },
        DatabaseError::UpgradeRequired(version) => StoreError::Corrupt {
            path,
            reason: format!("it is in redb file format {version}, which this build cannot read"),
        },
        DatabaseError::Storage(StorageError::Corrupted(reason)) => {
            StoreError::Corrupt { path, reason }
        }
        // redb answers InvalidData when the file does not start with its magic number.
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == ErrorKind::InvalidData => {
            StoreError::Corrupt {
                path,
                reason: "it is not a redb database file".to_string(),
            }
        }
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == ErrorKind::UnexpectedEof => {
            StoreError::Corrupt {
                path,
                reason: "it is truncated".to_string(),
            }
        }
        other => StoreError::Open {
            path,
            reason: other.to_string(),
        },
    }
}

impl Storage for RedbStore {
    fn kind(&self) -> &'static str {
        "redb"
    }

    fn describe(&self) -> String {
        format!("redb store {}", self.path.display())
    }

    fn load_all(&self) -> Result<Vec<StoredAccount>, StoreError> {
        self.with_database(|db| self.read_all(db))
            .map_err(|reason| StoreError::Read {
                store: self.describe(),
                reason,
            })
    }

    fn put(&self, account: &StoredAccount) -> Result<(), StoreError> {
        let bytes = record::encode(account);
        self.write(account.appid.as_str(), Change::Insert(&bytes))
    }

    fn remove(&self, appid: &AppId) -> Result<(), StoreError> {
        self.write(appid.as_str(), Change::Remove)
    }
}
