//! The read model: what the HTTP API (and the replica follower) read, and
//! nothing else. Lock-free snapshots published by the control plane.
//!
//! Owns: [`Directory`], the published map from appid to [`AccountSlot`]; the
//! slot and the value types in it ([`slot`]).
//!
//! Invariants:
//! - Only account actors (and the refresh tasks they spawn) store into a
//!   slot; the registry only publishes which slots exist (the directory).
//! - Readers never wait for an actor: a read is one or two atomic loads.
//! - The directory changes only when accounts are added or removed; token
//!   updates go through the slots, so reads never contend with refreshes.

pub mod slot;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::domain::AppId;
use crate::metrics::{ACCOUNT_STATES, Metrics};

pub use slot::{AccountSlot, AccountStatus, LastError, State, TicketRecord, TokenRecord};

/// The directory's map. Hashed with foldhash rather than SipHash: its keys
/// come from the configuration (never from clients), so it needs no defence
/// against chosen collisions, and every token read hashes an appid.
pub(crate) type SlotMap = HashMap<AppId, Arc<AccountSlot>, foldhash::fast::RandomState>;

/// The published, immutable map of account slots. Cloning is cheap; clones
/// see every later publication.
#[derive(Clone, Default)]
pub struct Directory(Arc<ArcSwap<SlotMap>>);

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Directory({} accounts)", self.0.load().len())
    }
}

impl Directory {
    /// The slot of `appid`, if configured.
    pub fn get(&self, appid: &AppId) -> Option<Arc<AccountSlot>> {
        self.0.load().get(appid).cloned()
    }

    /// All slots, sorted by appid.
    pub fn all(&self) -> Vec<Arc<AccountSlot>> {
        let map = self.0.load();
        let mut slots: Vec<_> = map.values().cloned().collect();
        slots.sort_by(|a, b| a.appid.cmp(&b.appid));
        slots
    }

    pub fn len(&self) -> usize {
        self.0.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The enabled accounts without a usable token at `now_ms`, sorted.
    pub fn not_ready(&self, now_ms: i64) -> Vec<AppId> {
        let map = self.0.load();
        let mut ids: Vec<AppId> = map
            .values()
            .filter(|s| !s.is_ready(now_ms))
            .map(|s| s.appid.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Replaces the published map (the registry, when accounts come and go).
    pub(crate) fn publish(&self, map: SlotMap) {
        self.0.store(Arc::new(map));
    }

    /// Sets `wxtoken_accounts{state}` from the accounts' current states. The
    /// registry does it every watchdog tick and `/metrics` before each scrape.
    pub fn update_state_gauge(&self, metrics: &Metrics, now_ms: i64) {
        let mut counts: HashMap<&'static str, i64> = HashMap::new();
        for slot in self.0.load().values() {
            *counts
                .entry(slot.status().state.metric_label())
                .or_default() += 1;
        }
        for state in ACCOUNT_STATES {
            metrics
                .accounts
                .with_label_values(&[state])
                .set(counts.get(state).copied().unwrap_or(0));
        }
        metrics
            .ready
            .set(i64::from(self.not_ready(now_ms).is_empty()));
    }
}
