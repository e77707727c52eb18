//! Token-store doubles: a [`Disk`] that can be full or refuse some accounts
//! (otherwise it keeps what it is given in memory), and a [`PanickingStore`].
//! Their `kind` is the `store` label of the store metrics.

use std::sync::atomic::{AtomicBool, Ordering};

use wxtoken::domain::AppId;
use wxtoken::store::{MemoryStore, Storage, StoreError, StoredAccount};

/// What a full disk answers a write.
pub const NO_SPACE: &str = "No space left on device (os error 28)";

/// A storage on a disk that can be "full" (every write fails with
/// [`NO_SPACE`]) or refuse writes for some accounts only; otherwise it writes
/// to a [`MemoryStore`]. It starts empty.
pub struct Disk {
    kind: &'static str,
    stored: MemoryStore,
    full: AtomicBool,
    refused: parking_lot::Mutex<Vec<AppId>>,
}

impl Default for Disk {
    /// A disk with room, labelled `disk`.
    fn default() -> Self {
        Disk::new("disk")
    }
}

impl Disk {
    /// A disk with room, labelled `kind`.
    pub fn new(kind: &'static str) -> Disk {
        Disk {
            kind,
            stored: MemoryStore::default(),
            full: AtomicBool::new(false),
            refused: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// A disk labelled `kind` on which every write fails.
    pub fn full(kind: &'static str) -> Disk {
        let disk = Disk::new(kind);
        disk.set_full(true);
        disk
    }

    /// Fills (`true`) or empties the disk.
    pub fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
    }

    /// Refuses writes (puts and removes) for `ids` only.
    pub fn refuse(&self, ids: &[&AppId]) {
        *self.refused.lock() = ids.iter().map(|&id| id.clone()).collect();
    }

    fn check(&self, appid: &AppId) -> Result<(), StoreError> {
        if self.full.load(Ordering::SeqCst) || self.refused.lock().contains(appid) {
            return Err(StoreError::Write {
                store: self.describe(),
                appid: appid.to_string(),
                reason: NO_SPACE.to_string(),
            });
        }
        Ok(())
    }
}

impl Storage for Disk {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn describe(&self) -> String {
        format!("test {} store", self.kind)
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

/// A storage that panics on every write, labelled `panicking`.
pub struct PanickingStore;

impl Storage for PanickingStore {
    fn kind(&self) -> &'static str {
        "panicking"
    }
    fn describe(&self) -> String {
        "panicking test store".to_string()
    }
    fn load_all(&self) -> Result<Vec<StoredAccount>, StoreError> {
        Ok(Vec::new())
    }
    fn put(&self, _: &StoredAccount) -> Result<(), StoreError> {
        panic!("test store panics on put")
    }
    fn remove(&self, _: &AppId) -> Result<(), StoreError> {
        panic!("test store panics on remove")
    }
}
