//! [`RedbStore`]: accounts in one redb file (layout in [`crate::store`]).
//!
//! It owns the mapping from redb's errors to [`StoreError`], and the guard
//! that turns a panic inside redb (which asserts on some malformed files, a
//! truncated one for instance) into an error.
//!
//! Invariants: the file is never deleted, truncated or replaced here; a file
//! that is not a wxtoken redb store is refused at [`RedbStore::open`] and left
//! as it was. redb's own crash recovery (replaying to the last committed
//! transaction after an unclean shutdown) is allowed and logged.

use std::cell::Cell;
use std::io::ErrorKind;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use ::redb::{Database, DatabaseError, ReadableTable, StorageError, TableDefinition, TableError};

use super::{Storage, StoreError, StoredAccount, panic_reason, record};
use crate::domain::AppId;

/// The one table: appid → versioned JSON record.
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");

/// redb's page cache. The store holds a few hundred small records at most;
/// redb's default of 1 GiB would be absurd.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// The token store in a redb file. Every write is one transaction committed
/// with immediate durability (fsync) before it returns.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

enum Change<'a> {
    Insert(&'a [u8]),
    Remove,
}

impl RedbStore {
    /// Opens or creates the database at `path`, creating missing parent
    /// directories.
    ///
    /// Errors: [`StoreError::Open`] when the file or a directory cannot be
    /// created or opened, [`StoreError::Locked`] when another process has it
    /// open, [`StoreError::Corrupt`] when the file is not a readable wxtoken
    /// redb store. A refused file is left exactly as it was.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let owned = path.to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                path: owned.clone(),
                reason: format!("cannot create the directory {}: {e}", parent.display()),
            })?;
        }
        let db = catch_unwind(AssertUnwindSafe(|| open_database(path))).map_err(|payload| {
            StoreError::Corrupt {
                path: owned.clone(),
                reason: panic_reason(&*payload),
            }
        })??;
        let store = RedbStore { db, path: owned };
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
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(), StoreError> {
            let txn = self
                .db
                .begin_write()
                .map_err(|e| self.open_err(e.to_string()))?;
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
        }));
        outcome.unwrap_or_else(|payload| Err(self.corrupt(panic_reason(&*payload))))
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

    /// Applies one change to `key` in one committed transaction.
    fn write(&self, key: &str, change: Change<'_>) -> Result<(), StoreError> {
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
            let txn = self.db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(ACCOUNTS).map_err(|e| e.to_string())?;
                match change {
                    Change::Insert(bytes) => table.insert(key, bytes).map(drop),
                    Change::Remove => table.remove(key).map(drop),
                }
                .map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())
        }));
        outcome
            .unwrap_or_else(|payload| Err(panic_reason(&*payload)))
            .map_err(|reason| StoreError::Write {
                store: self.describe(),
                appid: key.to_string(),
                reason,
            })
    }

    fn read_all(&self) -> Result<Vec<StoredAccount>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
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

/// Opens or creates the redb database, logging once if redb has to recover it
/// from an unclean shutdown.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let shown = path.display().to_string();
    let warned = Cell::new(false);
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    builder.set_repair_callback(move |_session| {
        if !warned.replace(true) {
            tracing::warn!(
                file = %shown,
                "the token store was not closed cleanly; recovering its last committed state"
            );
        }
    });
    builder.create(path).map_err(|e| open_error(path, e))
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
        catch_unwind(AssertUnwindSafe(|| self.read_all()))
            .unwrap_or_else(|payload| Err(panic_reason(&*payload)))
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
