//! [`MemoryStore`]: a [`Storage`] that keeps accounts in a map and persists
//! nothing. Used by tests and benchmarks, passed in through
//! `EngineOptions::store` (a server always opens redb or Redis).

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::{Storage, StoreError, StoredAccount};
use crate::domain::AppId;

/// In-memory storage (tests and benchmarks). It never fails.
#[derive(Default)]
pub struct MemoryStore {
    accounts: Mutex<BTreeMap<AppId, StoredAccount>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Storage for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn describe(&self) -> String {
        "in-memory store (nothing persists across restarts)".to_string()
    }

    fn load_all(&self) -> Result<Vec<StoredAccount>, StoreError> {
        Ok(self.accounts.lock().values().cloned().collect())
    }

    fn put(&self, account: &StoredAccount) -> Result<(), StoreError> {
        self.accounts
            .lock()
            .insert(account.appid.clone(), account.clone());
        Ok(())
    }

    fn remove(&self, appid: &AppId) -> Result<(), StoreError> {
        self.accounts.lock().remove(appid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Mode;

    fn account(id: &str, calls: u32) -> StoredAccount {
        StoredAccount {
            appid: AppId::parse(id).unwrap(),
            mode: Mode::Stable,
            token: None,
            pending_fetch_ms: None,
            calls_day: 1,
            calls_today: calls,
            forces: vec![],
            tickets: Vec::new(),
            open: None,
        }
    }

    #[test]
    fn put_replaces_and_remove_removes() {
        let store = MemoryStore::new();
        store.put(&account("wxb", 1)).unwrap();
        store.put(&account("wxa", 1)).unwrap();
        store.put(&account("wxb", 2)).unwrap();
        assert_eq!(
            store.load_all().unwrap(),
            vec![account("wxa", 1), account("wxb", 2)]
        );
        store.remove(&AppId::parse("wxa").unwrap()).unwrap();
        store.remove(&AppId::parse("wxa").unwrap()).unwrap();
        assert_eq!(store.load_all().unwrap(), vec![account("wxb", 2)]);
    }
}
