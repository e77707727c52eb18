//! The per-account actor: one per configured account, the only thing that
//! decides when that account's token is fetched.
//!
//! Read top-down:
//! - [`messages`]: every message the actor takes or sends, and their answers;
//! - [`actor`]: the actor's state, `impl Actor` and one handler per message;
//! - [`plan`]: every refresh decision, as pure functions (when to refresh,
//!   until when to serve, backoff, the late-answer window, the restart plan,
//!   ticket plans, the force and call budgets). "Where is the refresh
//!   decided?": there;
//! - [`fetch`]: the refresh and ticket tasks and their single flight;
//! - [`persist`]: the mapping between the slot and the token store, and how a
//!   new slot is seeded (from the store, or from a reload's previous token).
//!
//! Owns: the account's state machine (empty → fetching → ready → refreshing →
//! failing), its refresh timer, its retry counter, its daily call counter and
//! its stable `force_refresh` budget; single-flight of every refresh.
//!
//! Invariants:
//! - At most one upstream refresh per account is in flight; every caller that
//!   arrives meanwhile (compare-and-refresh, admin) shares its result, unless
//!   that result is the very token the caller wants replaced (the refresh
//!   began before that token was adopted from another replica): then the
//!   caller asks again once it has finished.
//! - A token is published to the slot before any caller receives it, and only
//!   this actor (and the tasks it spawned) publishes into its slot.
//! - The current token keeps being served while valid, whatever fails.
//! - A refresh is never started for a token that is not the current one.
//!
//! Reads never come here: they load the [`crate::snapshot::AccountSlot`].

pub mod actor;
pub mod fetch;
pub mod messages;
pub mod open;
pub mod persist;
pub mod plan;

pub use actor::{AccountActor, Deps, endpoint};
pub use messages::{
    Adopt, Crash, Exited, Reason, Refresh, RefreshError, RefreshOutcome, Shutdown, TicketOutcome,
    TicketRefresh,
};
pub use open::{AdoptOpen, OpenNotice, OpenUpdate};
pub use persist::{Seed, seeded_slot};
pub use plan::{FORCE_DAILY_LIMIT, FORCE_MIN_INTERVAL, TICKET_STALE_MIN_INTERVAL};
