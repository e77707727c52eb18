//! The Open Platform (third-party platform, "component") side of WeChat:
//! what agencies use to hold their merchants' accounts as authorizers
//! (contract §6, facts in `open-platform.md`).
//!
//! Code map: `crypto` is WeChat's message encryption (signature, AES-256-CBC,
//! the plaintext layout); `event` opens the encrypted events pushed to a
//! platform's event URL (tickets, authorizations) and seals them for the
//! simulator.

pub mod crypto;
pub mod event;

pub use crypto::{CryptError, MsgCrypt};
pub use event::{Event, EventError, EventQuery};
