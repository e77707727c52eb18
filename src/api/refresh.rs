//! `POST /v1/token/{appid}/refresh`: compare-and-refresh, the endpoint a
//! business server calls when WeChat rejected a token it got from us
//! (40001/40014/42001).
//!
//! Owns the `{"stale_token": "..."}` request and the translation of a refresh
//! result ([`RefreshOutcome`] or [`RefreshError`]) into an answer, shared with
//! the admin refresh.
//!
//! Invariants: a token that is not the current one never causes an upstream
//! call (it is answered from the slot, `refreshed: false`); the current one is
//! handed to the account actor, which shares one upstream call among every
//! concurrent reporter.

use actix::MailboxError;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::state::AppState;
use crate::account::{Reason, RefreshError, RefreshOutcome};
use crate::audit::{Cause, Origin};
use crate::clock::Clock;
use crate::domain::AccessToken;
use crate::registry::RouteRefresh;
use crate::snapshot::AccountSlot;

use super::body::read_json;
use super::error::ApiError;
use super::path_account;
use super::token::{disabled, token_response, unavailable};

/// The expected body, as shown in messages.
const SHAPE: &str = r#"{"stale_token": "<the token WeChat rejected>"}"#;

/// `Retry-After` when the refresher is being restarted or a transient failure
/// is being retried.
const RESTART_RETRY_SECS: u64 = 1;

/// The body of a compare-and-refresh.
#[derive(Deserialize)]
struct StaleReport {
    stale_token: String,
}

/// `POST /v1/token/{appid}/refresh` with `{"stale_token": "..."}`.
///
/// Errors: 401, 400 (appid syntax, body), 403 (scope), 404 (unknown appid),
/// 429 when WeChat's limits forbid a refresh now, 503 when no token can be had.
pub async fn compare_and_refresh(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (appid, slot, client) = {
        let auth = state.auth.load();
        let caller = auth.authenticate(&req)?;
        let slot = path_account(&req, &caller, &state)?;
        (slot.appid.clone(), slot, caller.client())
    };
    let report: StaleReport = read_json(&req, payload, SHAPE).await?;
    if report.stale_token.trim().is_empty() {
        return Err(ApiError::bad_request(format!(
            "\"stale_token\" is empty; send {SHAPE}"
        )));
    }
    let now_ms = state.clock.now_unix_ms();
    // An old token: answer with the current one from the snapshot, no actor involved.
    if let Some(current) = slot.token()
        && current.token.expose() != report.stale_token
        && current.usable_secs(now_ms).is_some()
    {
        return token_response(&slot, &current, now_ms, Some(false));
    }
    let origin = super::origin(&req, "http");
    let result = route_refresh(
        &state,
        &origin,
        Cause::StaleReport,
        RouteRefresh {
            appid,
            reason: Reason::StaleReport,
            stale: Some(AccessToken::new(report.stale_token)),
            client,
        },
    )
    .await;
    respond(&slot, result, &state.clock)
}

/// Routes a refresh to the account's actor and logs it in the audit trail
/// (`audit::refresh`): the one way an API request asks for a new token.
pub(crate) async fn route_refresh(
    state: &AppState,
    origin: &Origin,
    cause: Cause,
    msg: RouteRefresh,
) -> Result<Result<RefreshOutcome, RefreshError>, MailboxError> {
    let appid = msg.appid.clone();
    let result = state.registry.send(msg).await;
    crate::audit::refresh(origin, appid.as_str(), cause, &result);
    result
}

/// The answer to a routed refresh of `slot`'s account.
pub(crate) fn respond(
    slot: &AccountSlot,
    result: Result<Result<RefreshOutcome, RefreshError>, MailboxError>,
    clock: &Clock,
) -> Result<HttpResponse, ApiError> {
    let now_ms = clock.now_unix_ms();
    match result {
        Ok(Ok(outcome)) => token_response(slot, &outcome.record, now_ms, Some(outcome.refreshed)),
        Ok(Err(err)) => Err(refresh_error(slot, err, now_ms)),
        Err(_) => Err(ApiError::token_unavailable(
            "the account registry is not running; the server is shutting down or restarting",
            RESTART_RETRY_SECS,
        )),
    }
}

/// Maps a [`RefreshError`] of `slot`'s account to its answer.
fn refresh_error(slot: &AccountSlot, err: RefreshError, now_ms: i64) -> ApiError {
    let appid = &slot.appid;
    let errcode = err.errcode();
    match err {
        RefreshError::Upstream {
            error, retry_after, ..
        } => ApiError::token_unavailable(
            format!("could not refresh the token of {appid}: {error}"),
            retry_after.as_secs().max(1),
        )
        .with_errcode(errcode),
        RefreshError::Coordination(e) => ApiError::token_unavailable(
            format!("could not refresh the token of {appid}: {e}"),
            RESTART_RETRY_SECS,
        ),
        RefreshError::Throttled { retry_after } => {
            ApiError::refresh_throttled(appid.as_str(), retry_after)
        }
        RefreshError::UnknownAccount => ApiError::unknown_appid(appid.as_str()),
        RefreshError::NoToken => unavailable(slot, now_ms),
        RefreshError::Disabled => disabled(appid),
        RefreshError::Unavailable => ApiError::token_unavailable(
            format!(
                "the refresher of {appid} stopped unexpectedly and is being restarted; retry in a second"
            ),
            RESTART_RETRY_SECS,
        ),
        RefreshError::Internal { .. } => ApiError::token_unavailable(
            format!("an internal error interrupted the refresh of {appid}; it is retried"),
            RESTART_RETRY_SECS,
        ),
        RefreshError::UnknownTicket(kind) => {
            ApiError::unknown_ticket(appid.as_str(), kind.as_str())
        }
        RefreshError::Revoked => ApiError::authorization_revoked(appid.as_str()),
        e @ (RefreshError::NoVerifyTicket
        | RefreshError::ComponentUnavailable
        | RefreshError::NeedsReauth
        | RefreshError::NotDurable { .. }
        | RefreshError::WrongKind(_)) => ApiError::token_unavailable(
            format!("could not refresh the token of {appid}: {e}"),
            RESTART_RETRY_SECS,
        ),
    }
}
