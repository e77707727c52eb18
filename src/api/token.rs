//! `GET /v1/token/{appid}`: the hot read path, and the token answer shared by
//! every endpoint that hands out a token.
//!
//! Owns the wire shape `{"appid","access_token","expires_in","expires_at",
//! "fetched_at"}` and its `Cache-Control`, and the 503 `token_unavailable`
//! answer for an account without a usable token.
//!
//! Invariants: a read never waits for an actor: it loads the published
//! snapshot (auth table, directory, slot) and answers; `expires_in` comes only
//! from [`TokenRecord::usable_secs`], so no answer lets a client keep a token
//! past its serve time; `expires_at` = now + `expires_in`.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::state::AppState;
use crate::domain::AppId;
use crate::snapshot::{AccountSlot, State, TokenRecord};

use super::error::ApiError;
use super::path_account;

/// The longest `max-age` a token answer allows caches (contract §3).
pub const MAX_CACHE_SECS: u64 = 60;

/// `Retry-After` for an account that is disabled in the configuration.
const DISABLED_RETRY_SECS: u64 = 300;

/// `Cache-Control: private, max-age=N` for every N up to [`MAX_CACHE_SECS`],
/// built once so that answering does not format a header.
static CACHE_CONTROL: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    (0..=MAX_CACHE_SECS)
        .map(|n| {
            HeaderValue::from_str(&format!("private, max-age={n}"))
                .unwrap_or(HeaderValue::from_static("private, max-age=0"))
        })
        .collect()
});

#[derive(Serialize)]
struct TokenBody<'a> {
    appid: &'a str,
    access_token: &'a str,
    expires_in: u64,
    expires_at: i64,
    fetched_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refreshed: Option<bool>,
}

/// `GET /v1/token/{appid}`: the current token of an account.
///
/// Errors: 401 without a valid key, 400 for a malformed appid, 403 when the
/// appid is outside the caller's scope, 404 when it is not configured, 503
/// when the account has no usable token.
pub async fn get_token(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let auth = state.auth.load();
    let caller = auth.authenticate(&req)?;
    let slot = path_account(&req, &caller, &state)?;
    let now_ms = state.clock.now_unix_ms();
    match slot.token() {
        Some(record) => token_response(&slot, &record, now_ms, None),
        None => Err(unavailable(&slot, now_ms)),
    }
}

/// The token answer for `record` at `now_ms`, with `refreshed` when given.
///
/// Errors with 503 `token_unavailable` when less than a second of use is left.
pub(crate) fn token_response(
    slot: &AccountSlot,
    record: &TokenRecord,
    now_ms: i64,
    refreshed: Option<bool>,
) -> Result<HttpResponse, ApiError> {
    let Some(expires_in) = record.usable_secs(now_ms) else {
        return Err(unavailable(slot, now_ms));
    };
    let now = now_ms.div_euclid(1000);
    let body = TokenBody {
        appid: slot.appid.as_str(),
        access_token: record.token.expose(),
        expires_in,
        expires_at: now.saturating_add(i64::try_from(expires_in).unwrap_or(i64::MAX)),
        fetched_at: record.fetched_at_ms.div_euclid(1000),
        refreshed,
    };
    let mut buf = Vec::with_capacity(128 + record.token.expose().len());
    serde_json::to_writer(&mut buf, &body)
        .map_err(|_| ApiError::internal("the token answer could not be encoded"))?;
    let cache_control = cache_control(expires_in);
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ))
        .insert_header((header::CACHE_CONTROL, cache_control))
        .body(buf))
}

/// `Cache-Control: private, max-age=min(expires_in, 60)` (contract §3), prebuilt.
pub(crate) fn cache_control(expires_in: u64) -> HeaderValue {
    CACHE_CONTROL
        .get(expires_in.min(MAX_CACHE_SECS) as usize)
        .cloned()
        .unwrap_or(HeaderValue::from_static("private, max-age=0"))
}

/// The 503 `token_unavailable` answer for an account without a usable token
/// at `now_ms`: `Retry-After` is the time to its next refresh attempt (at
/// least one second) and `errcode` is WeChat's last error code, when known.
pub(crate) fn unavailable(slot: &AccountSlot, now_ms: i64) -> ApiError {
    let appid = &slot.appid;
    if !slot.enabled {
        return disabled(appid);
    }
    let status = slot.status();
    let retry = status
        .next_refresh_at_ms
        .map_or(1, |at| ((at - now_ms).max(0) as u64).div_ceil(1000))
        .max(1);
    let message = match (&status.state, &status.last_error) {
        (State::Empty | State::Fetching, _) => {
            format!("the first token of {appid} is still being fetched; retry in {retry}s")
        }
        (_, Some(last)) => format!(
            "there is no usable token for {appid}: the last refresh failed ({}); the next attempt is in {retry}s",
            last.errmsg
        ),
        _ => format!("there is no usable token for {appid} right now; retry in {retry}s"),
    };
    ApiError::token_unavailable(message, retry)
        .with_errcode(status.last_error.as_ref().and_then(|e| e.errcode))
}

/// The 503 answer for an account with `enabled: false`.
pub(crate) fn disabled(appid: &AppId) -> ApiError {
    ApiError::token_unavailable(
        format!(
            "account {appid} is disabled in the configuration (enabled: false), so no token is fetched for it"
        ),
        DISABLED_RETRY_SECS,
    )
}
