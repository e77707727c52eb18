//! Between an account's slot and the token store: what is stored of an
//! account, and how a slot is seeded when its actor starts (from the store at
//! process start, or from the previous configuration's token on a reload).
//!
//! Invariants: the stored form holds everything a restart needs to keep the
//! dead process's promises (the token and its serve time, the write-ahead
//! intent, the day's call and force counters, the tickets); a token whose
//! fetch may have been followed by an unrecorded rotation is restored with a
//! serve time of at most WeChat's grace after that fetch started.

use std::sync::Arc;
use std::time::Duration;

use crate::config::AccountConfig;
use crate::snapshot::{AccountSlot, AccountStatus, IssuedTokens, TicketRecord, TokenRecord};
use crate::store::{StoredAccount, StoredOpen, StoredTicket, StoredToken};

use super::AccountActor;

/// What a new account's slot starts from.
#[derive(Debug)]
// Short-lived values, one per write or start: not worth a box each.
#[allow(clippy::large_enum_variant)]
pub enum Seed {
    /// Nothing: the actor fetches at once.
    Empty,
    /// What the store kept of the account (a process restart). Ignored when
    /// the account's mode changed or it is disabled.
    Stored(StoredAccount),
    /// The token (ignored when the mode changed) and the Open Platform state
    /// of the account's previous configuration (a reload changed something
    /// else about it).
    Carried {
        token: Option<Arc<TokenRecord>>,
        open: Option<Arc<StoredOpen>>,
    },
}

/// A fresh slot for `config`, filled from `seed`, entering its tokens in
/// `issued` (its directory's index). `grace` is how long WeChat keeps a
/// superseded token alive.
pub fn seeded_slot(
    config: &AccountConfig,
    seed: Seed,
    grace: Duration,
    issued: &Arc<IssuedTokens>,
) -> Arc<AccountSlot> {
    let slot = Arc::new(
        AccountSlot::new(
            config.appid.clone(),
            config.name.clone(),
            config.mode,
            config.enabled,
            config.tickets.clone(),
        )
        .with_kind(config.kind.clone())
        .with_index(issued.clone()),
    );
    match seed {
        Seed::Stored(stored) if stored.mode == config.mode && config.enabled => {
            restore(&slot, stored, grace);
        }
        // A refresh token is never dropped, whatever else changed.
        Seed::Stored(stored) => {
            if let Some(open) = stored.open {
                slot.publish_open(Arc::new(open));
            }
        }
        Seed::Carried { token, open } => {
            if let Some(token) = token.filter(|t| t.mode == config.mode) {
                slot.publish(token);
            }
            if let Some(open) = open {
                slot.publish_open(open);
            }
        }
        Seed::Empty => {}
    }
    slot
}

/// Fills `slot` from the store. A token whose fetch may have been followed by
/// an unrecorded rotation (a crash mid-refresh) is served at most until the
/// rotation's grace runs out; its actor refreshes it at once.
fn restore(slot: &AccountSlot, stored: StoredAccount, grace: Duration) {
    if let Some(open) = stored.open {
        slot.publish_open(Arc::new(open));
    }
    if let Some(t) = stored.token {
        let mut serve_until = t.serve_until_ms;
        if let Some(pending) = stored.pending_fetch_ms
            && pending >= t.fetched_at_ms
        {
            serve_until = serve_until.min(crate::clock::add_ms(pending, grace));
        }
        slot.publish(Arc::new(TokenRecord {
            token: t.token,
            mode: stored.mode,
            fetched_at_ms: t.fetched_at_ms,
            expires_at_ms: t.expires_at_ms,
            serve_until_ms: serve_until,
            json: Default::default(),
        }));
    }
    for t in stored.tickets {
        slot.publish_ticket(Arc::new(TicketRecord {
            kind: t.kind,
            ticket: t.ticket,
            fetched_at_ms: t.fetched_at_ms,
            expires_at_ms: t.expires_at_ms,
            serve_until_ms: t.serve_until_ms,
        }));
    }
    let mut status = (*slot.status()).clone();
    status.calls_day = stored.calls_day;
    status.calls_today = stored.calls_today;
    status.forces = stored.forces;
    status.pending_fetch_ms = stored.pending_fetch_ms;
    slot.set_status(status);
}

impl AccountActor {
    /// What the store keeps of this account now.
    pub(super) fn stored(&self) -> StoredAccount {
        let mut stored = stored_account(
            &self.config,
            self.slot.token().as_deref(),
            &self.slot.status(),
        );
        stored.tickets = self
            .slot
            .tickets()
            .iter()
            .map(|t| StoredTicket {
                kind: t.kind,
                ticket: t.ticket.clone(),
                fetched_at_ms: t.fetched_at_ms,
                expires_at_ms: t.expires_at_ms,
                serve_until_ms: t.serve_until_ms,
            })
            .collect();
        stored.open = self.slot.open().map(|o| (*o).clone());
        stored
    }

    /// Queues the account's current state for the store (ordered, not awaited).
    pub(super) fn persist(&self) {
        if self.config.enabled {
            self.deps.store.put_later(self.stored());
        }
    }
}

/// The stored form of a token record.
pub(super) fn stored_token(record: &TokenRecord) -> StoredToken {
    StoredToken {
        token: record.token.clone(),
        fetched_at_ms: record.fetched_at_ms,
        expires_at_ms: record.expires_at_ms,
        serve_until_ms: record.serve_until_ms,
    }
}

/// What the store keeps of an account: its token and its counters.
fn stored_account(
    config: &AccountConfig,
    token: Option<&TokenRecord>,
    status: &AccountStatus,
) -> StoredAccount {
    StoredAccount {
        appid: config.appid.clone(),
        mode: config.mode,
        token: token.map(stored_token),
        pending_fetch_ms: status.pending_fetch_ms,
        calls_day: status.calls_day,
        calls_today: status.calls_today,
        forces: status.forces.clone(),
        tickets: Vec::new(),
        open: None,
    }
}
