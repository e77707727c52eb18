//! Every message an account actor takes or sends, and the answers they get.
//!
//! The public ones come from the registry (which routes the API's requests
//! and the replica follower's adoptions); the crate-private ones are sent by
//! the actor's own refresh and ticket tasks when they end.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

pub use crate::domain::Reason;
use crate::domain::{AccessToken, AppId, TicketKind};
use crate::replica::Coordination;
use crate::snapshot::{TicketRecord, TokenRecord};
use crate::store::StoredToken;
use crate::wechat::UpstreamError;

/// Why a refresh request produced no token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    /// WeChat failed or refused. `retry_after` is when the account's own
    /// retry decision ([`super::plan::retry_after`]) lets a caller try again.
    #[error("{error}")]
    Upstream {
        error: UpstreamError,
        retry_after: Duration,
    },
    /// WeChat was not called: the replicas' shared store could not be used.
    #[error(transparent)]
    Coordination(#[from] Coordination),
    #[error("refresh throttled; try again in {}s", retry_after.as_secs())]
    Throttled { retry_after: Duration },
    #[error("the account has no current token to compare with")]
    NoToken,
    #[error("the account is disabled")]
    Disabled,
    #[error("the account is not in the registry")]
    UnknownAccount,
    #[error("the account's refresher stopped unexpectedly; it is being restarted")]
    Unavailable,
    #[error("the account has no {} ticket configured", .0.as_str())]
    UnknownTicket(TicketKind),
    /// A component without a `component_verify_ticket` (WeChat pushes one to
    /// the event URL every 10 minutes): WeChat was not called.
    #[error(
        "no component_verify_ticket has arrived yet; WeChat pushes one to the event URL every 10 minutes (check the URL set on the platform)"
    )]
    NoVerifyTicket,
    /// An authorizer whose component has no usable token: WeChat was not called.
    #[error("the component's own token is not available yet")]
    ComponentUnavailable,
    /// An authorizer without a refresh token or code: the merchant must
    /// authorize again (or an operator imports its refresh token).
    #[error(
        "the authorizer's refresh token is lost; the merchant must authorize the platform again, or import the refresh token"
    )]
    NeedsReauth,
    /// The merchant revoked the platform.
    #[error("the merchant revoked the authorization of the platform")]
    Revoked,
    /// The change could not be made durable (the store failed); nothing is
    /// acknowledged, so WeChat pushes it again.
    #[error("the token store could not write it ({detail})")]
    NotDurable { detail: String },
    /// A request for one kind of account sent to another (e.g. a verify
    /// ticket to an account that is not a component).
    #[error("this account is not an Open Platform {0}")]
    WrongKind(&'static str),
    /// A bug: the refresh task panicked. It counts as a failed attempt and is
    /// retried with backoff.
    #[error("an internal error interrupted the refresh ({detail}); it is retried")]
    Internal { detail: String },
}

impl RefreshError {
    /// An upstream failure seen at `now_ms`, with the wait its retry decision implies.
    pub fn upstream(error: UpstreamError, now_ms: i64) -> RefreshError {
        let retry_after = super::plan::retry_after(&error.decide(now_ms.div_euclid(1000)), now_ms);
        RefreshError::Upstream { error, retry_after }
    }

    /// WeChat's errcode, when WeChat answered with one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            RefreshError::Upstream { error, .. } => error.errcode(),
            _ => None,
        }
    }

    /// WeChat's errmsg (scrubbed), or this error's own sentence.
    pub fn errmsg(&self) -> String {
        match self {
            RefreshError::Upstream { error, .. } => error.errmsg(),
            other => other.to_string(),
        }
    }
}

/// The answer to a refresh request.
#[derive(Debug, Clone)]
pub struct RefreshOutcome {
    pub record: Arc<TokenRecord>,
    /// True when the caller gets a different token than the one it had.
    pub refreshed: bool,
}

/// Compare-and-refresh (`stale` set) or a forced admin refresh (`stale` none).
#[derive(Debug, Message)]
#[rtype(result = "Result<RefreshOutcome, RefreshError>")]
pub struct Refresh {
    pub reason: Reason,
    pub stale: Option<AccessToken>,
    /// The API client asking (its configured name), for the per-client
    /// limit; `None` when no clients are configured or nobody asked.
    pub client: Option<Arc<str>>,
}

/// Compare-and-refresh of a JS-SDK ticket (`stale` set), or a plain refresh.
#[derive(Debug, Message)]
#[rtype(result = "Result<TicketOutcome, RefreshError>")]
pub struct TicketRefresh {
    pub kind: TicketKind,
    pub stale: Option<AccessToken>,
}

/// The answer to a ticket refresh.
#[derive(Debug, Clone)]
pub struct TicketOutcome {
    pub record: Arc<TicketRecord>,
    /// True when the caller gets a different ticket than the one it reported.
    pub refreshed: bool,
}

/// A token another replica fetched (read from the shared store): served
/// instead of the current one when it is newer.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Adopt(pub StoredToken);

/// Stops the actor: the account is being replaced (`forget` false), or it
/// left the registry (`forget` true: its slot is emptied first, so a reader
/// still holding it finds no token).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub forget: bool,
}

/// Sent to the supervisor when an account actor ends without being told to
/// (a panic, or its context stopping on its own).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Exited {
    pub appid: AppId,
    /// Which start of this account's actor ended (see [`super::AccountActor::supervised`]).
    pub incarnation: u64,
}

/// Panics inside the actor. Exists only so tests can prove that supervision
/// survives a panic; nothing outside tests sends it.
#[doc(hidden)]
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Crash;

/// A refresh this actor spawned has finished (sent by the refresh task).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Finished {
    pub generation: u64,
    pub reason: Reason,
    /// Token calls that reached WeChat (counted against the daily quota).
    pub calls: u32,
    pub forced: bool,
    /// WeChat returned the token that was already current.
    pub same_token: bool,
    pub result: Result<Arc<TokenRecord>, RefreshError>,
    /// When the refresh started (Unix ms).
    pub started_ms: i64,
    /// The refresh may have rotated the token at WeChat (a legacy fetch or a
    /// stable force), so an unknown outcome may have killed the old one.
    pub may_rotate: bool,
    /// The attempt may have rotated the token and its outcome is unknown
    /// (a timeout, a panic, ...): WeChat may still process it.
    pub outcome_unknown: bool,
    /// The late window after this attempt (`AccountStatus::late_until_ms`).
    pub late_until_ms: Option<i64>,
    /// Authorizers: the component token the attempt used (reported stale
    /// to the component when WeChat rejects it).
    pub component_token: Option<AccessToken>,
    /// The legacy quota was spent and the token came (or was asked) from
    /// stable_token instead: the account stays there until this Unix ms
    /// (`plan::stable_fallback`).
    pub stable_fallback_until_ms: Option<i64>,
}

/// A ticket fetch this actor spawned has finished (sent by the ticket task).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct TicketFinished {
    pub kind: TicketKind,
    pub result: Result<Arc<TicketRecord>, RefreshError>,
}
