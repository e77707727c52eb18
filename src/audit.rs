//! The audit trail: "who rotated this token?", which WeChat's console cannot
//! answer.
//!
//! Owns [`Origin`] (who asked: the client's configured name, the peer's
//! address, or the signal or file change that triggered it), [`Cause`] (the
//! bounded `reason` of the event) and the events themselves: one structured
//! log event with target [`TARGET`] for every request that may rotate a
//! token ([`refresh`]: compare-and-refresh that refreshed, admin refresh,
//! the face's `force_refresh`, the proxy's retry; [`reload`]: a reload, with
//! one more event per account it restarted; [`open`]: an authorizer's
//! imported refresh token, a reconcile that added or repaired some). With `--log-format json` each
//! is one JSON object whose `fields` hold `audit`, `client`, `remote`,
//! `appid`, `reason` and `outcome`.
//!
//! Invariant: an event carries names, addresses, appids and bounded words,
//! never a token, a key or a secret: nothing here takes one.

use std::net::IpAddr;
use std::sync::Arc;

use crate::account::{RefreshError, RefreshOutcome};
use crate::domain::AppId;

/// The `tracing` target of every audit event (filter on it, e.g.
/// `RUST_LOG=info,wxtoken::audit=info`, or route it to its own sink).
pub const TARGET: &str = "wxtoken::audit";

/// Who (or what) asked for a rotation.
#[derive(Debug, Clone)]
pub struct Origin {
    /// How the request arrived: `http`, `http_token` (the proxy's token
    /// door), `admin` (the reload endpoint), `sighup`, `file_change`.
    pub trigger: &'static str,
    /// The client's configured name; `None` for a signal or file change,
    /// or when no clients are configured (`anonymous`).
    pub client: Option<Arc<str>>,
    /// The TCP peer of an HTTP request.
    pub remote: Option<IpAddr>,
    /// The first `X-Forwarded-For` address, when it is one (a load
    /// balancer's claim, not proof).
    pub forwarded_for: Option<IpAddr>,
}

impl Origin {
    /// A request from outside HTTP (a signal, the file watch).
    pub fn internal(trigger: &'static str) -> Origin {
        Origin {
            trigger,
            client: None,
            remote: None,
            forwarded_for: None,
        }
    }

    /// The `client` field: the configured name, `anonymous` for an HTTP
    /// caller without one (no clients are configured, or the proxy's token
    /// door, where a token stands for the caller), `-` for the server itself.
    fn client_name(&self) -> &str {
        match (&self.client, self.remote) {
            (Some(name), _) => name,
            (None, Some(_)) => "anonymous",
            (None, None) => "-",
        }
    }
}

/// Why a rotation was asked for: the `reason` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// `POST /v1/token/{appid}/refresh`: a client reported the token stale.
    StaleReport,
    /// `POST /v1/accounts/{appid}/refresh`: an admin forced a new token.
    AdminRefresh,
    /// `POST /cgi-bin/stable_token` with `force_refresh: true` at the face.
    FaceForce,
    /// WeChat rejected the token the proxy injected; the proxy reported it.
    ProxyRetry,
    /// A configuration reload (the admin endpoint, SIGHUP, the file watch).
    Reload,
    /// An admin imported an authorizer's refresh token (its token is
    /// fetched with it).
    AuthorizerImport,
    /// An admin reconciled a component's authorizers with WeChat's list
    /// (added or repaired refresh tokens are used at once).
    Reconcile,
}

impl Cause {
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::StaleReport => "stale_report",
            Cause::AdminRefresh => "admin_refresh",
            Cause::FaceForce => "face_force",
            Cause::ProxyRetry => "proxy_retry",
            Cause::Reload => "reload",
            Cause::AuthorizerImport => "authorizer_import",
            Cause::Reconcile => "reconcile",
        }
    }
}

/// The `outcome` of a routed refresh: `refreshed` (the caller got another
/// token), `current` (it already had another one, or the refresh it joined
/// kept it), `throttled` (WeChat's limits forbid one now), `failed` (WeChat
/// refused or did not answer), `unavailable` (anything else).
pub fn refresh_outcome(
    result: &Result<Result<RefreshOutcome, RefreshError>, actix::MailboxError>,
) -> &'static str {
    match result {
        Ok(Ok(outcome)) if outcome.refreshed => "refreshed",
        Ok(Ok(_)) => "current",
        Ok(Err(RefreshError::Throttled { .. })) => "throttled",
        Ok(Err(RefreshError::Upstream { .. })) => "failed",
        Ok(Err(_)) | Err(_) => "unavailable",
    }
}

/// Logs a routed refresh of `appid` for `cause`, when it is one the trail
/// keeps: every admin refresh, and the others when they rotated the token
/// or tried to (`refreshed`, `failed`). A stale report answered with a token
/// the caller did not have yet rotated nothing and is not logged (it is
/// counted in `wxtoken_client_requests_total`).
pub fn refresh(
    origin: &Origin,
    appid: &str,
    cause: Cause,
    result: &Result<Result<RefreshOutcome, RefreshError>, actix::MailboxError>,
) {
    let outcome = refresh_outcome(result);
    if cause == Cause::AdminRefresh || matches!(outcome, "refreshed" | "failed") {
        event(origin, appid, cause, outcome);
    }
}

/// Logs one reload: `outcome` is `applied` or `rejected`, `appid` is `*`;
/// then one `restarted` (or `added`) event per account the reload changed.
pub fn reload(origin: &Origin, outcome: &str, changed: &[AppId], added: &[AppId]) {
    event(origin, "*", Cause::Reload, outcome);
    for appid in changed {
        event(origin, appid.as_str(), Cause::Reload, "restarted");
    }
    for appid in added {
        event(origin, appid.as_str(), Cause::Reload, "added");
    }
}

/// Logs an Open Platform admin action on `appid` (`cause` is
/// [`Cause::AuthorizerImport`] or [`Cause::Reconcile`]).
pub fn open(origin: &Origin, appid: &str, cause: Cause, outcome: &str) {
    event(origin, appid, cause, outcome);
}

/// The one audit event.
fn event(origin: &Origin, appid: &str, cause: Cause, outcome: &str) {
    tracing::info!(
        target: TARGET,
        audit = "rotation",
        client = origin.client_name(),
        remote = origin.remote.map(tracing::field::display),
        forwarded_for = origin.forwarded_for.map(tracing::field::display),
        trigger = origin.trigger,
        appid,
        reason = cause.as_str(),
        outcome,
        "audit: {} of {appid} by {}: {outcome}",
        cause.as_str(),
        origin.client_name(),
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::domain::{AccessToken, Mode};
    use crate::snapshot::TokenRecord;

    fn outcome(
        refreshed: bool,
    ) -> Result<Result<RefreshOutcome, RefreshError>, actix::MailboxError> {
        Ok(Ok(RefreshOutcome {
            record: Arc::new(TokenRecord {
                token: AccessToken::new("a-token-of-sixteen-or-more".to_string()),
                mode: Mode::Legacy,
                fetched_at_ms: 0,
                expires_at_ms: 7_200_000,
                serve_until_ms: 7_200_000,
                json: Default::default(),
            }),
            refreshed,
        }))
    }

    #[test]
    fn outcomes_name_what_happened_to_the_token() {
        assert_eq!(refresh_outcome(&outcome(true)), "refreshed");
        assert_eq!(refresh_outcome(&outcome(false)), "current");
        assert_eq!(
            refresh_outcome(&Ok(Err(RefreshError::Throttled {
                retry_after: Duration::from_secs(30)
            }))),
            "throttled"
        );
        assert_eq!(
            refresh_outcome(&Ok(Err(RefreshError::NoToken))),
            "unavailable"
        );
        assert_eq!(
            refresh_outcome(&Err(actix::MailboxError::Closed)),
            "unavailable"
        );
    }

    #[test]
    fn the_client_is_a_name_anonymous_or_the_server_itself() {
        let mut origin = Origin::internal("sighup");
        assert_eq!(origin.client_name(), "-");
        origin.remote = Some("127.0.0.1".parse().expect("an address"));
        assert_eq!(origin.client_name(), "anonymous");
        origin.client = Some(Arc::from("billing"));
        assert_eq!(origin.client_name(), "billing");
    }
}
