//! The read model: what the HTTP API (and the replica follower) read, and
//! nothing else. Lock-free snapshots published by the control plane.
//!
//! Owns: [`Directory`], the published map from appid to [`AccountSlot`]; the
//! slot and the value types in it ([`slot`]); the index of handed-out tokens
//! that the proxy resolves presented tokens with ([`issued`]); the per-account counters that
//! `/metrics` exports ([`counters`]); the `/metrics` text, written from the
//! slots at scrape time ([`exposition`]).
//!
//! Invariants:
//! - Only account actors (and the refresh tasks they spawn) store into a
//!   slot; the registry only publishes which slots exist (the directory).
//! - Readers never wait for an actor: a read is one or two atomic loads.
//! - The directory changes only when accounts are added or removed; token
//!   updates go through the slots, so reads never contend with refreshes.

pub mod counters;
mod exposition;
pub mod issued;
pub mod slot;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::domain::AppId;

pub use counters::AccountCounters;
pub use issued::{Issued, IssuedTokens};
pub use slot::{
    AccountSlot, AccountStatus, ConfigFailure, LastError, QuotaReading, Quotas, State,
    TicketRecord, TokenRecord,
};

/// The directory's map. Hashed with foldhash rather than SipHash: its keys
/// come from the configuration (never from clients), so it needs no defence
/// against chosen collisions, and every token read hashes an appid.
pub(crate) type SlotMap = HashMap<AppId, Arc<AccountSlot>, foldhash::fast::RandomState>;

/// One publication: the map the read path looks appids up in, and the same
/// slots sorted by appid (sorted once per publication, not per scrape or
/// listing).
#[derive(Default)]
struct Published {
    map: SlotMap,
    sorted: Vec<Arc<AccountSlot>>,
}

/// The published, immutable map of account slots, and the index of the
/// tokens its slots handed out. Cloning is cheap; clones see every later
/// publication.
#[derive(Clone, Default)]
pub struct Directory(Arc<ArcSwap<Published>>, Arc<IssuedTokens>);

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Directory({} accounts)", self.0.load().map.len())
    }
}

impl Directory {
    /// The index every slot of this directory enters its tokens in (give it
    /// to a new slot with [`AccountSlot::with_index`]).
    pub fn issued(&self) -> &Arc<IssuedTokens> {
        &self.1
    }

    /// The slot of `appid`, if configured.
    pub fn get(&self, appid: &AppId) -> Option<Arc<AccountSlot>> {
        self.0.load().map.get(appid).cloned()
    }

    /// All slots, sorted by appid.
    pub fn all(&self) -> Vec<Arc<AccountSlot>> {
        self.0.load().sorted.clone()
    }

    pub fn len(&self) -> usize {
        self.0.load().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The enabled accounts without a usable token at `now_ms`, sorted.
    pub fn not_ready(&self, now_ms: i64) -> Vec<AppId> {
        self.0
            .load()
            .sorted
            .iter()
            .filter(|s| !s.is_ready(now_ms))
            .map(|s| s.appid.clone())
            .collect()
    }

    /// Replaces the published map (the registry, when accounts come and go),
    /// then wakes the waiters of every slot that left it or was replaced, so
    /// a held long-poll looks the account up again.
    pub(crate) fn publish(&self, map: SlotMap) {
        let mut sorted: Vec<Arc<AccountSlot>> = map.values().cloned().collect();
        sorted.sort_unstable_by(|a, b| a.appid.cmp(&b.appid));
        let new = Arc::new(Published { map, sorted });
        let old = self.0.swap(new.clone());
        for slot in &old.sorted {
            if !new
                .map
                .get(&slot.appid)
                .is_some_and(|kept| Arc::ptr_eq(kept, slot))
            {
                slot.wake();
            }
        }
    }
}
