//! The redb store's file on disk: its directory and file modes, the lock that
//! keeps other processes out, and redb's access to the file.
//!
//! Owns [`open_locked`], which creates the data directory 0700 and the store
//! file 0600 whatever the umask (tightening an existing directory or file that
//! is ours, warning about one that is not), opens the file and takes an
//! exclusive lock on it; and [`LockedFile`], the redb storage backend on that
//! open file.
//!
//! Invariants: the lock is taken once, on the file handle the
//! [`RedbStore`](super::RedbStore) keeps for its whole life, so closing and
//! reopening the redb database after a write error never lets another process
//! in; a directory that also holds files other than the store's (a shared
//! directory, `/var/lib` itself) or a sticky one (`/tmp`) is never chmod-ed,
//! only warned about. Unix only, as wxtoken is.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::StoreError;

/// Mode of the data directory: only wxtoken's user may enter it.
const DIR_MODE: u32 = 0o700;
/// Mode of the store file: only wxtoken's user may read it (it holds live tokens).
const FILE_MODE: u32 = 0o600;

/// Prepares the directory of `path` (see the module doc), then opens or
/// creates the store file and locks it exclusively.
///
/// Errors: [`StoreError::Open`] when the directory or the file cannot be
/// created or opened, [`StoreError::Locked`] when another process (or another
/// store in this process) holds the file.
pub(super) fn open_locked(path: &Path) -> Result<File, StoreError> {
    let open_error = |reason: String| StoreError::Open {
        path: path.to_path_buf(),
        reason,
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    prepare_directory(dir, path).map_err(open_error)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| open_error(e.to_string()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StoreError::Locked {
                path: path.to_path_buf(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(open_error(format!("cannot lock it: {e}")));
        }
    }
    tighten_file(&file, path);
    Ok(file)
}

/// Creates `dir` (and missing parents) 0700, or checks the mode of the
/// existing one. Errors (as a reason) when it cannot be created or is not a
/// directory.
fn prepare_directory(dir: &Path, store: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            check_directory(dir, &meta, store);
            Ok(())
        }
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let cannot =
                |e: io::Error| format!("cannot create the directory {}: {e}", dir.display());
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(cannot)?;
            // The umask may have taken bits away; set exactly 0700.
            std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(cannot)
        }
        Err(e) => Err(format!("cannot read the directory {}: {e}", dir.display())),
    }
}

/// Tightens an existing data directory that others may enter to 0700 when
/// it is ours and holds only the store's files; warns otherwise.
fn check_directory(dir: &Path, meta: &std::fs::Metadata, store: &Path) {
    let mode = meta.permissions().mode();
    if mode & 0o077 == 0 {
        return;
    }
    let shown = dir.display();
    let octal = format!("{:o}", mode & 0o7777);
    let sticky = mode & 0o1000 != 0;
    if meta.uid() == effective_uid() && !sticky && holds_only_the_store(dir, store) {
        match std::fs::set_permissions(dir, Permissions::from_mode(mode & 0o7700)) {
            Ok(()) => tracing::info!(
                dir = %shown, was = %octal,
                "the token store directory was open to other users; it is now 0700"
            ),
            Err(e) => tracing::warn!(
                dir = %shown, mode = %octal, error = %e,
                "the token store directory is open to other users and cannot be tightened; run `chmod 700` on it"
            ),
        }
    } else {
        tracing::warn!(
            dir = %shown, mode = %octal,
            "the token store directory is open to other users, and wxtoken leaves it alone because it is not only the store's (other owner, other files or a shared directory); give the store a directory of its own with mode 0700"
        );
    }
}

/// True when every entry of `dir` is the store file or one of its siblings
/// (`wxtoken.redb.broken-…` from `--reset-store`).
fn holds_only_the_store(dir: &Path, store: &Path) -> bool {
    let Some(name) = store.file_name() else {
        return false;
    };
    let name = name.as_encoded_bytes();
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .into_iter()
            .all(|entry| entry.is_ok_and(|e| e.file_name().as_encoded_bytes().starts_with(name))),
        Err(_) => false,
    }
}

/// Sets the open store file to 0600 when it is ours (a file created now gets
/// 0600 at creation unless the umask took more away); warns about a file of
/// another user that others may read.
fn tighten_file(file: &File, path: &Path) {
    let Ok(meta) = file.metadata() else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode == FILE_MODE {
        return;
    }
    let shown = path.display();
    let octal = format!("{mode:o}");
    if meta.uid() != effective_uid() {
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %shown, mode = %octal,
                "the token store file belongs to another user and others may read it; run `chmod 600` on it"
            );
        }
        return;
    }
    match file.set_permissions(Permissions::from_mode(FILE_MODE)) {
        Ok(()) if mode & 0o077 != 0 => tracing::info!(
            file = %shown, was = %octal,
            "the token store file was readable by other users; it is now 0600"
        ),
        Ok(()) => {}
        Err(e) => tracing::warn!(
            file = %shown, mode = %octal, error = %e,
            "cannot set the token store file to 0600; run `chmod 600` on it"
        ),
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// redb's storage backend on the store's open file. Unlike redb's own
/// `FileBackend` it neither locks nor unlocks: the lock belongs to the
/// handle [`open_locked`] returned, so it outlives every reopen.
#[derive(Debug)]
pub(super) struct LockedFile(pub(super) File);

impl redb::StorageBackend for LockedFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buffer = vec![0; len];
        self.0.read_exact_at(&mut buffer, offset)?;
        Ok(buffer)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
}
