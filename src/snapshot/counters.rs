//! The counters of one account that `/metrics` exports: refreshes by reason
//! and result, actor restarts, ticket fetches by type and result.
//!
//! Owns [`AccountCounters`], plain atomics in the account's slot: counting is
//! one relaxed add, with no series, label hashing or lock, and the scrape
//! reads them where the account's other values are. Each count also goes to
//! the matching fleet counter of [`Metrics`], so the fleet aggregates exist
//! in every `metrics.per_account` mode.
//!
//! Invariant: only the account's actor (refreshes, tickets) and the registry
//! that restarts it (restarts) count here; a reload that replaces the slot
//! carries the values over ([`AccountCounters::carry_from`]), so counters
//! never go down while the account is configured.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::domain::{Reason, TicketKind};
use crate::metrics::{Metrics, RESULTS};

const REASONS: usize = Reason::ALL.len();
const KINDS: usize = TicketKind::ALL.len();

/// The exported counters of one account.
#[derive(Debug, Default)]
pub struct AccountCounters {
    /// By [`Reason::ALL`] index, then result (0 ok, 1 error).
    refreshes: [[AtomicU64; 2]; REASONS],
    restarts: AtomicU64,
    /// By [`TicketKind::ALL`] index, then result (0 ok, 1 error).
    tickets: [[AtomicU64; 2]; KINDS],
}

fn reason_index(reason: Reason) -> usize {
    Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0)
}

fn kind_index(kind: TicketKind) -> usize {
    TicketKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

fn result_index(ok: bool) -> usize {
    usize::from(!ok)
}

impl AccountCounters {
    /// Counts one finished refresh attempt of this account and of the fleet.
    pub(crate) fn refreshed(&self, metrics: &Metrics, reason: Reason, ok: bool) {
        self.refreshes[reason_index(reason)][result_index(ok)].fetch_add(1, Ordering::Relaxed);
        metrics
            .fleet_refreshes
            .with_label_values(&[reason.as_str(), RESULTS[result_index(ok)]])
            .inc();
    }

    /// Counts one restart of this account's actor, and of the fleet's.
    pub(crate) fn restarted(&self, metrics: &Metrics) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        metrics.fleet_actor_restarts.inc();
    }

    /// Counts one ticket fetch of `kind` of this account and of the fleet.
    pub(crate) fn ticket_fetched(&self, metrics: &Metrics, kind: TicketKind, ok: bool) {
        self.tickets[kind_index(kind)][result_index(ok)].fetch_add(1, Ordering::Relaxed);
        metrics
            .fleet_ticket_refreshes
            .with_label_values(&[kind.as_str(), RESULTS[result_index(ok)]])
            .inc();
    }

    /// Refresh attempts with `reason` that succeeded (`ok`) or failed.
    pub fn refreshes(&self, reason: Reason, ok: bool) -> u64 {
        self.refreshes[reason_index(reason)][result_index(ok)].load(Ordering::Relaxed)
    }

    /// Restarts of the account's actor.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Fetches of the ticket of `kind` that succeeded (`ok`) or failed.
    pub fn ticket_fetches(&self, kind: TicketKind, ok: bool) -> u64 {
        self.tickets[kind_index(kind)][result_index(ok)].load(Ordering::Relaxed)
    }

    /// Adds what `old` counted (the slot `old` belongs to is being replaced
    /// by this one's, for the same account). The fleet counters already
    /// hold these counts.
    pub(crate) fn carry_from(&self, old: &AccountCounters) {
        let add = |to: &AtomicU64, from: &AtomicU64| {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        for (to, from) in self.refreshes.iter().zip(&old.refreshes) {
            add(&to[0], &from[0]);
            add(&to[1], &from[1]);
        }
        add(&self.restarts, &old.restarts);
        for (to, from) in self.tickets.iter().zip(&old.tickets) {
            add(&to[0], &from[0]);
            add(&to[1], &from[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_go_to_the_account_and_to_the_fleet() {
        let metrics = Metrics::new();
        let a = AccountCounters::default();
        let b = AccountCounters::default();
        a.refreshed(&metrics, Reason::Scheduled, true);
        a.refreshed(&metrics, Reason::Scheduled, false);
        b.refreshed(&metrics, Reason::Scheduled, true);
        a.restarted(&metrics);
        b.ticket_fetched(&metrics, TicketKind::WxCard, false);

        assert_eq!(a.refreshes(Reason::Scheduled, true), 1);
        assert_eq!(a.refreshes(Reason::Scheduled, false), 1);
        assert_eq!(a.refreshes(Reason::Startup, true), 0);
        assert_eq!(b.refreshes(Reason::Scheduled, true), 1);
        assert_eq!((a.restarts(), b.restarts()), (1, 0));
        assert_eq!(b.ticket_fetches(TicketKind::WxCard, false), 1);
        assert_eq!(b.ticket_fetches(TicketKind::Jsapi, false), 0);

        let fleet = |reason: &str, result: &str| {
            metrics
                .fleet_refreshes
                .with_label_values(&[reason, result])
                .get()
        };
        assert_eq!(fleet("scheduled", "ok"), 2);
        assert_eq!(fleet("scheduled", "error"), 1);
        assert_eq!(fleet("startup", "ok"), 0);
        assert_eq!(metrics.fleet_actor_restarts.get(), 1);
        assert_eq!(
            metrics
                .fleet_ticket_refreshes
                .with_label_values(&["wx_card", "error"])
                .get(),
            1
        );
    }

    #[test]
    fn every_reason_and_kind_has_its_own_counter() {
        let metrics = Metrics::new();
        let c = AccountCounters::default();
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                c.refreshed(&metrics, reason, false);
            }
        }
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(c.refreshes(reason, false), i as u64 + 1, "{reason:?}");
            assert_eq!(c.refreshes(reason, true), 0);
        }
        c.ticket_fetched(&metrics, TicketKind::Jsapi, true);
        assert_eq!(c.ticket_fetches(TicketKind::Jsapi, true), 1);
        assert_eq!(c.ticket_fetches(TicketKind::WxCard, true), 0);
    }

    #[test]
    fn a_replacing_slot_carries_the_counts_over() {
        let metrics = Metrics::new();
        let old = AccountCounters::default();
        old.refreshed(&metrics, Reason::Admin, true);
        old.restarted(&metrics);
        old.ticket_fetched(&metrics, TicketKind::Jsapi, false);
        let new = AccountCounters::default();
        new.refreshed(&metrics, Reason::Admin, true);
        new.carry_from(&old);
        assert_eq!(new.refreshes(Reason::Admin, true), 2);
        assert_eq!(new.restarts(), 1);
        assert_eq!(new.ticket_fetches(TicketKind::Jsapi, false), 1);
        // The fleet saw each count once.
        assert_eq!(metrics.fleet_actor_restarts.get(), 1);
    }
}
