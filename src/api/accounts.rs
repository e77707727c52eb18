//! The admin endpoints on accounts: `GET /v1/accounts` (status of every
//! account) and `POST /v1/accounts/{appid}/refresh` (forced refresh).
//!
//! Owns the wire shape of an account's status. Invariant: it never contains a
//! token or a secret: it is built from [`AccountStatus`] and the token's
//! timestamps only.
//!
//! Both need an admin key; an admin client limited to some `appids` sees and
//! refreshes only those.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::state::AppState;
use crate::account::Reason;
use crate::domain::Mode;
use crate::registry::RouteRefresh;
use crate::snapshot::{AccountStatus, LastError, State};

use super::error::ApiError;
use super::path_account;
use super::refresh::respond;
use crate::domain::AppId;

/// One account in `GET /v1/accounts`.
#[derive(Serialize)]
struct AccountView<'a> {
    appid: &'a str,
    name: &'a str,
    mode: Mode,
    state: State,
    /// Unix seconds of the current token's real expiry.
    expires_at: Option<i64>,
    /// Unix seconds until when the current token is handed out (at most
    /// `expires_at`; in legacy mode the next planned refresh plus WeChat's
    /// grace).
    serve_until: Option<i64>,
    /// Unix seconds of the next planned refresh or retry.
    next_refresh_at: Option<i64>,
    last_error: Option<ErrorView<'a>>,
    upstream_calls_today: u32,
    /// What WeChat's getApiQuota last reported for the token APIs the
    /// account uses (none before the first reading).
    quotas: Vec<QuotaView>,
    /// `account`, `wecom`, `component` or `authorizer`.
    kind: &'static str,
    /// An authorizer's component.
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<&'a str>,
    /// An authorizer's standing: `authorized`, `needs_reauth`, `unauthorized`.
    #[serde(skip_serializing_if = "Option::is_none")]
    authorization: Option<&'static str>,
}

/// One token API's daily quota in `GET /v1/accounts`.
#[derive(Serialize)]
struct QuotaView {
    /// `token` or `stable_token`.
    api: &'static str,
    daily_limit: u64,
    /// Today's use (China-time day; 0 when last read on an earlier day).
    used: u64,
    /// Unix seconds of the reading.
    read_at: i64,
}

/// An account's last failure: [`LastError`]'s `errcode`, `errmsg` and `at`,
/// plus whether it is a configuration error only a person can fix and the IP
/// WeChat saw when it named one (40164 and its kin).
#[derive(Serialize)]
struct ErrorView<'a> {
    #[serde(flatten)]
    error: &'a LastError,
    config_error: bool,
    ip: Option<String>,
}

impl<'a> ErrorView<'a> {
    /// The view of `status`'s last error, if it has one.
    fn of(status: &'a AccountStatus) -> Option<Self> {
        let error = status.last_error.as_ref()?;
        // `config_error` describes the last failure only when it has its errcode.
        let config = status
            .config_error
            .filter(|c| error.errcode == Some(c.errcode));
        Some(ErrorView {
            error,
            config_error: config.is_some(),
            ip: config
                .and_then(|c| c.ip)
                .map(|ip| ip.to_canonical().to_string()),
        })
    }
}

/// `GET /v1/accounts` (admin): the status of every account the caller may see,
/// sorted by appid.
///
/// Errors: 401 without a valid key, 403 without an admin key.
pub async fn list_accounts(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let auth = state.auth.load();
    let caller = auth.authenticate(&req)?;
    caller.check_admin()?;
    let now_ms = state.clock.now_unix_ms();
    let rows: Vec<_> = state
        .directory
        .all()
        .into_iter()
        .filter(|slot| caller.may_access(&slot.appid))
        .map(|slot| {
            let status = slot.status();
            let token = slot.token();
            (slot, status, token)
        })
        .collect();
    let views: Vec<AccountView<'_>> = rows
        .iter()
        .map(|(slot, status, token)| AccountView {
            appid: slot.appid.as_str(),
            name: &slot.name,
            mode: slot.mode,
            state: status.state,
            expires_at: token.as_ref().map(|t| t.expires_at_ms.div_euclid(1000)),
            serve_until: token.as_ref().map(|t| t.serve_until_ms.div_euclid(1000)),
            next_refresh_at: status.next_refresh_at_ms.map(|ms| ms.div_euclid(1000)),
            last_error: ErrorView::of(status),
            upstream_calls_today: status.calls_on_day_of(now_ms),
            quotas: status
                .quotas
                .iter()
                .map(|q| QuotaView {
                    api: q.api.as_str(),
                    daily_limit: q.daily_limit,
                    used: q.used_on_day_of(now_ms),
                    read_at: q.read_at_ms.div_euclid(1000),
                })
                .collect(),
            kind: slot.kind.as_str(),
            component: slot.kind.component().map(AppId::as_str),
            authorization: slot.authorization().map(|a| a.as_str()),
        })
        .collect();
    uncached_json(&views, "the account list")
}

/// `value` as a 200 JSON answer that no cache keeps (`what` names it in the
/// error when it cannot be encoded).
fn uncached_json(value: &impl serde::Serialize, what: &str) -> Result<HttpResponse, ApiError> {
    let body = serde_json::to_vec(value)
        .map_err(|_| ApiError::internal(format!("{what} could not be encoded")))?;
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .body(body))
}

/// `GET /v1/appids`: the accounts whose token the caller may read at
/// `GET /v1/token/{appid}` (enabled, in its scope, not an Open Platform
/// component), sorted: what `wxtoken agent` follows when given no `--appid`.
/// Any client key; no status, nothing secret.
///
/// Errors: 401 without a valid key.
pub async fn list_appids(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let auth = state.auth.load();
    let caller = auth.authenticate(&req)?;
    let slots = state.directory.all();
    let appids: Vec<&str> = slots
        .iter()
        .filter(|slot| {
            slot.enabled
                && slot.kind != crate::config::AccountKind::Component
                && caller.may_access(&slot.appid)
        })
        .map(|slot| slot.appid.as_str())
        .collect();
    uncached_json(&serde_json::json!({ "appids": appids }), "the appid list")
}

/// `POST /v1/accounts/{appid}/refresh` (admin): fetch a new token now (in
/// stable mode with `force_refresh`), answered in the token shape plus
/// `refreshed`.
///
/// Errors: 401, 403 (not admin, or appid outside the caller's scope), 400
/// (appid syntax), 404 (unknown appid), 429 when WeChat's force limits
/// (30 s apart, 20 a day) forbid it now, 503 when the refresh failed.
pub async fn force_refresh(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (appid, slot, client) = {
        let auth = state.auth.load();
        let caller = auth.authenticate(&req)?;
        caller.check_admin()?;
        let slot = path_account(&req, &caller, &state)?;
        (slot.appid.clone(), slot, caller.client())
    };
    let origin = super::origin(&req, "http");
    let result = super::refresh::route_refresh(
        &state,
        &origin,
        crate::audit::Cause::AdminRefresh,
        RouteRefresh {
            appid,
            reason: Reason::Admin,
            stale: None,
            client,
        },
    )
    .await;
    respond(&slot, result, &state.clock)
}
