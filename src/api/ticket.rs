//! JS-SDK tickets: `GET /v1/ticket/{appid}/{type}`, compare-and-refresh at
//! `POST /v1/ticket/{appid}/{type}/refresh`, and the JS-SDK signature helper
//! `POST /v1/ticket/{appid}/jsapi/signature`.
//!
//! Owns the ticket wire shape (the token shape with `ticket` and `type`) and
//! the signature algorithm of WeChat's JS-SDK (appendix 1 of its docs):
//! `sha1("jsapi_ticket=T&noncestr=N&timestamp=S&url=U")`, the URL without
//! its `#fragment`.
//!
//! Invariants: same authentication and scopes as tokens; a ticket is never
//! handed out past its serve time (never past its token's); the read path
//! never waits for an actor.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use super::state::AppState;
use crate::account::RefreshError;
use crate::domain::{AccessToken, TicketKind};
use crate::registry::RouteTicketRefresh;
use crate::snapshot::{AccountSlot, TicketRecord};

use super::body::read_json;
use super::error::ApiError;
use super::path_account;
use super::token::{cache_control, disabled};

/// The longest page URL the signature helper accepts.
const MAX_URL_LEN: usize = 2048;

#[derive(Serialize)]
struct TicketBody<'a> {
    appid: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    ticket: &'a str,
    expires_in: u64,
    expires_at: i64,
    fetched_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refreshed: Option<bool>,
}

/// The `{type}` of the path.
fn path_kind(req: &HttpRequest) -> Result<TicketKind, ApiError> {
    match req.match_info().get("type").unwrap_or_default() {
        "jsapi" => Ok(TicketKind::Jsapi),
        "wx_card" => Ok(TicketKind::WxCard),
        _ => Err(ApiError::bad_request(
            "the ticket type in the path must be jsapi or wx_card",
        )),
    }
}

/// Authenticates, checks the scope and finds the account.
fn lookup_account(req: &HttpRequest, state: &AppState) -> Result<Arc<AccountSlot>, ApiError> {
    let auth = state.auth.load();
    let caller = auth.authenticate(req)?;
    path_account(req, &caller, state)
}

/// [`lookup_account`] plus the ticket kind of the path.
fn lookup(req: &HttpRequest, state: &AppState) -> Result<(Arc<AccountSlot>, TicketKind), ApiError> {
    let slot = lookup_account(req, state)?;
    Ok((slot, path_kind(req)?))
}

/// The current, usable ticket of `kind`, or the error to answer.
fn usable(
    slot: &AccountSlot,
    kind: TicketKind,
    configured: bool,
    now_ms: i64,
) -> Result<Arc<TicketRecord>, ApiError> {
    if !slot.enabled {
        return Err(disabled(&slot.appid));
    }
    match slot.ticket(kind) {
        Some(t) if t.usable_secs(now_ms).is_some() => Ok(t),
        _ if !configured => Err(ApiError::unknown_ticket(slot.appid.as_str(), kind.as_str())),
        _ => Err(ApiError::ticket_unavailable(
            format!(
                "there is no usable {} ticket for {} right now; it is fetched with the next token",
                kind.as_str(),
                slot.appid
            ),
            1,
        )),
    }
}

/// True when the account is configured with tickets of `kind`.
fn configured(slot: &AccountSlot, kind: TicketKind) -> bool {
    slot.ticket_kinds.contains(&kind)
}

fn ticket_response(
    slot: &AccountSlot,
    record: &TicketRecord,
    now_ms: i64,
    refreshed: Option<bool>,
) -> Result<HttpResponse, ApiError> {
    let expires_in = record.usable_secs(now_ms).ok_or_else(|| {
        ApiError::ticket_unavailable(
            format!(
                "the {} ticket of {} has just run out; retry in a second",
                record.kind.as_str(),
                slot.appid
            ),
            1,
        )
    })?;
    let now = now_ms.div_euclid(1000);
    let body = TicketBody {
        appid: slot.appid.as_str(),
        kind: record.kind.as_str(),
        ticket: record.ticket.expose(),
        expires_in,
        expires_at: now.saturating_add(i64::try_from(expires_in).unwrap_or(i64::MAX)),
        fetched_at: record.fetched_at_ms.div_euclid(1000),
        refreshed,
    };
    let bytes = serde_json::to_vec(&body)
        .map_err(|_| ApiError::internal("the ticket answer could not be encoded"))?;
    let cache = cache_control(expires_in);
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ))
        .insert_header((header::CACHE_CONTROL, cache))
        .body(bytes))
}

/// `GET /v1/ticket/{appid}/{type}`: the current ticket.
///
/// Errors: 401, 403, 400 (appid or type), 404 (unknown appid, or no such
/// ticket configured), 503 `ticket_unavailable`.
pub async fn get_ticket(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (slot, kind) = lookup(&req, &state)?;
    let now_ms = state.clock.now_unix_ms();
    let record = usable(&slot, kind, configured(&slot, kind), now_ms)?;
    ticket_response(&slot, &record, now_ms, None)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaleTicket {
    stale_ticket: String,
}

const SHAPE: &str = "{\"stale_ticket\": \"<the ticket WeChat's JS-SDK rejected>\"}";

/// `POST /v1/ticket/{appid}/{type}/refresh` with `{"stale_ticket": "..."}`:
/// an old ticket gets the current one (`refreshed: false`); the current one
/// is refetched once for all concurrent callers.
///
/// Errors: as [`get_ticket`], plus 400 for a malformed body and 429 when the
/// ticket was fetched less than 30 s ago.
pub async fn refresh_ticket(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (slot, kind) = lookup(&req, &state)?;
    let report: StaleTicket = read_json(&req, payload, SHAPE).await?;
    if report.stale_ticket.trim().is_empty() {
        return Err(ApiError::bad_request(format!(
            "\"stale_ticket\" is empty; send {SHAPE}"
        )));
    }
    let now_ms = state.clock.now_unix_ms();
    if !configured(&slot, kind) {
        return Err(ApiError::unknown_ticket(slot.appid.as_str(), kind.as_str()));
    }
    if let Some(current) = slot.ticket(kind)
        && current.ticket.expose() != report.stale_ticket
        && current.usable_secs(now_ms).is_some()
    {
        return ticket_response(&slot, &current, now_ms, Some(false));
    }
    let result = state
        .registry
        .send(RouteTicketRefresh {
            appid: slot.appid.clone(),
            kind,
            stale: Some(AccessToken::new(report.stale_ticket)),
        })
        .await;
    let now_ms = state.clock.now_unix_ms();
    match result {
        Ok(Ok(outcome)) => ticket_response(&slot, &outcome.record, now_ms, Some(outcome.refreshed)),
        Ok(Err(RefreshError::Throttled { retry_after })) => Err(ApiError::refresh_throttled(
            slot.appid.as_str(),
            retry_after,
        )),
        Ok(Err(RefreshError::UnknownTicket(kind))) => {
            Err(ApiError::unknown_ticket(slot.appid.as_str(), kind.as_str()))
        }
        Ok(Err(e)) => Err(ApiError::ticket_unavailable(
            format!(
                "could not refresh the {} ticket of {}: {e}",
                kind.as_str(),
                slot.appid
            ),
            1,
        )
        .with_errcode(e.errcode())),
        Err(_) => Err(ApiError::ticket_unavailable(
            "the account registry is not running; retry in a second",
            1,
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureRequest {
    url: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SignatureBody<'a> {
    app_id: &'a str,
    timestamp: i64,
    nonce_str: &'a str,
    signature: String,
}

/// The JS-SDK signature of `url` (without its fragment) with `ticket`.
pub fn jsapi_signature(ticket: &str, nonce: &str, timestamp: i64, url: &str) -> String {
    let url = url.split('#').next().unwrap_or(url);
    let plain = format!("jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}");
    hex::encode(Sha1::digest(plain.as_bytes()))
}

/// `POST /v1/ticket/{appid}/jsapi/signature` with `{"url": "https://..."}`:
/// `{appId, timestamp, nonceStr, signature}` for `wx.config`, signed with the
/// current jsapi ticket.
///
/// Errors: as [`get_ticket`], plus 400 when the URL is missing, not http(s),
/// or longer than 2 KiB.
pub async fn signature(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let slot = lookup_account(&req, &state)?;
    let body: SignatureRequest =
        read_json(&req, payload, "{\"url\": \"https://example.com/page?x=1\"}").await?;
    let url = body.url.trim();
    if url.len() > MAX_URL_LEN {
        return Err(ApiError::bad_request(format!(
            "\"url\" is longer than {MAX_URL_LEN} characters"
        )));
    }
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => {
            return Err(ApiError::bad_request(
                "\"url\" must be the full http(s) URL of the page that calls wx.config",
            ));
        }
    }
    let now_ms = state.clock.now_unix_ms();
    let kind = TicketKind::Jsapi;
    let ticket = usable(&slot, kind, configured(&slot, kind), now_ms)?;
    let nonce: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    let timestamp = now_ms.div_euclid(1000);
    let answer = SignatureBody {
        app_id: slot.appid.as_str(),
        timestamp,
        nonce_str: &nonce,
        signature: jsapi_signature(ticket.ticket.expose(), &nonce, timestamp, url),
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of WeChat's JS-SDK documentation, appendix 1.
    #[test]
    fn signature_matches_wechats_published_example() {
        let signature = jsapi_signature(
            "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg",
            "Wm3WZYTPz0wzccnW",
            1414587457,
            "http://mp.weixin.qq.com?params=value",
        );
        assert_eq!(signature, "0f9de62fce790f9a083d5c99e95740ceb90c27ed");
    }

    #[test]
    fn the_fragment_is_not_signed() {
        let a = jsapi_signature("t", "n", 1, "https://x.example/p?q=1");
        let b = jsapi_signature("t", "n", 1, "https://x.example/p?q=1#section");
        assert_eq!(a, b);
    }
}
