//! What an account actor asks of the place its tokens come from, and the
//! answers only replicas give: a token another replica fetched (no call to
//! WeChat), or no call at all because the shared store could not be used.
//!
//! Owns the [`Source`] port the account actors depend on, its request
//! ([`Ask`]), its answers ([`Sourced`], [`SourceError`]) and [`Direct`], the
//! source of a single process (WeChat, or the simulator, with nothing shared).
//! [`super::Leader`] is the replicated one.
//!
//! Invariant: the WeChat client never sees these types; a [`Sourced::Fetched`]
//! answer is exactly what WeChat granted to this process's call.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::domain::{AccessToken, ApiName, TicketKind};
use crate::wechat::{ApiQuota, FetchRequest, TicketGrant, TokenGrant, TokenSource, UpstreamError};

/// One token fetch as an account actor asks for it.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The call to WeChat, if one is made.
    pub request: FetchRequest,
    /// The token the account holds now: a replicated source that finds a
    /// different, newer token in the shared store returns that one instead
    /// of calling WeChat.
    pub known: Option<AccessToken>,
}

/// A token taken from the shared store: another replica fetched it. Times
/// are Unix ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedOrigin {
    pub token: AccessToken,
    pub fetched_at_ms: i64,
    pub expires_at_ms: i64,
    /// An authorizer's refresh token WeChat returned with this token (it is
    /// written with the token, in one fenced write).
    pub refresh_token: Option<AccessToken>,
}

/// Where an answered fetch's token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sourced {
    /// WeChat granted it to this call.
    Fetched(TokenGrant),
    /// Another replica fetched it; WeChat was not called.
    Shared(SharedOrigin),
}

impl Sourced {
    /// The token.
    pub fn token(&self) -> &AccessToken {
        match self {
            Sourced::Fetched(grant) => &grant.access_token,
            Sourced::Shared(origin) => &origin.token,
        }
    }
}

/// WeChat was not called: the shared store that decides which replica
/// refreshes (Redis) could not be used. Never a reason to call anyway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("wechat {api} was not called: {detail}")]
pub struct Coordination {
    pub api: ApiName,
    pub detail: String,
}

/// Why a fetch produced no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// WeChat was called and failed (the one taxonomy of [`UpstreamError`]).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// WeChat was not called.
    #[error(transparent)]
    Coordination(#[from] Coordination),
}

/// Where account actors get tokens and tickets from.
pub trait Source: Send + Sync + 'static {
    /// Fetches a token per `ask`.
    ///
    /// Errors with [`SourceError::Upstream`] when WeChat failed, with
    /// [`SourceError::Coordination`] when it was not called.
    fn fetch(&self, ask: Ask) -> BoxFuture<'static, Result<Sourced, SourceError>>;

    /// Fetches a JS-SDK ticket of `kind` with the live `token`.
    ///
    /// Errors with the classified [`UpstreamError`].
    fn fetch_ticket(
        &self,
        token: AccessToken,
        kind: TicketKind,
    ) -> BoxFuture<'static, Result<TicketGrant, UpstreamError>>;

    /// Whether an optional call (a quota reading) could start now without
    /// waiting behind token fetches ([`TokenSource::has_spare_capacity`]).
    fn has_spare_capacity(&self) -> bool;

    /// Reads the daily quota of the token API `of` with the live `token`
    /// (getApiQuota).
    ///
    /// Errors with the classified [`UpstreamError`].
    fn api_quota(
        &self,
        token: AccessToken,
        of: ApiName,
    ) -> BoxFuture<'static, Result<ApiQuota, UpstreamError>>;
}

/// The source of a process that shares nothing: every fetch calls `0`.
#[derive(Clone)]
pub struct Direct(pub Arc<dyn TokenSource>);

impl Source for Direct {
    fn fetch(&self, ask: Ask) -> BoxFuture<'static, Result<Sourced, SourceError>> {
        self.0
            .fetch(ask.request)
            .map(|result| result.map(Sourced::Fetched).map_err(SourceError::Upstream))
            .boxed()
    }

    fn fetch_ticket(
        &self,
        token: AccessToken,
        kind: TicketKind,
    ) -> BoxFuture<'static, Result<TicketGrant, UpstreamError>> {
        self.0.fetch_ticket(token, kind)
    }

    fn api_quota(
        &self,
        token: AccessToken,
        of: ApiName,
    ) -> BoxFuture<'static, Result<ApiQuota, UpstreamError>> {
        self.0.api_quota(token, of)
    }

    fn has_spare_capacity(&self) -> bool {
        self.0.has_spare_capacity()
    }
}
