//! The WeChat-compatible face (contract §7): `GET /cgi-bin/token`, `POST
//! /cgi-bin/stable_token` and WeCom's `GET /cgi-bin/gettoken`, answered in
//! WeChat's own shapes from the central token, so that an SDK pointed at
//! wxtoken (WxJava `apiHost`, EasyWeChat `http.base_uri`, wechatpy
//! `API_BASE_URL`) gets its token here with a client key as its "secret".
//!
//! Owns the face's requests and its WeChat-shaped answers: `{"access_token",
//! "expires_in"}`, or `{"errcode","errmsg"}` with HTTP 200 as WeChat does.
//!
//! Invariants:
//! - The face never calls WeChat for a token: it answers from the slot;
//!   only `force_refresh: true` asks the account's actor, as a stale report
//!   of the current token under the same limits as compare-and-refresh (when
//!   they forbid it, the current token is answered, as WeChat does).
//! - The key is checked before the appid, and an appid outside the key's
//!   scope gets the same 40013 as an unknown one, so a key cannot probe which
//!   appids this server holds. Neither the key nor a token is ever in a message.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::auth::{Auth, Caller, KeyRefused};
use super::body::{MAX_BODY_BYTES, read_bytes};
use super::state::AppState;
use crate::account::{Reason, RefreshError};
use crate::config::AccountKind;
use crate::domain::AppId;
use crate::registry::RouteRefresh;
use crate::snapshot::{AccountSlot, TokenRecord};

/// A WeChat-shaped error: `{"errcode","errmsg"}`, HTTP 200.
#[derive(Debug, Clone)]
pub struct WxError {
    pub errcode: i64,
    pub errmsg: String,
}

impl WxError {
    pub fn new(errcode: i64, errmsg: impl Into<String>) -> Self {
        WxError {
            errcode,
            errmsg: errmsg.into(),
        }
    }

    /// The answer, with `status`.
    pub fn respond(&self, status: actix_web::http::StatusCode) -> HttpResponse {
        HttpResponse::build(status)
            .insert_header((
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            ))
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
            .body(serde_json::json!({ "errcode": self.errcode, "errmsg": self.errmsg }).to_string())
    }

    fn invalid_key(field: &str) -> Self {
        WxError::new(
            40125,
            format!(
                "invalid appsecret: the {field} is not the key of a wxtoken client (wxtoken takes a client key in place of the AppSecret)"
            ),
        )
    }

    fn not_loopback() -> Self {
        WxError::new(
            40164,
            "invalid ip, not in whitelist: no wxtoken clients are configured, so only callers on this host are served",
        )
    }

    fn invalid_appid() -> Self {
        WxError::new(
            40013,
            "invalid appid: this server holds no such account for this key (check the appid and the client's appids)",
        )
    }

    /// WeChat's "system busy": SDKs retry it.
    pub fn busy(message: impl Into<String>) -> Self {
        WxError::new(-1, format!("system error: {}", message.into()))
    }
}

/// The fields of `GET /cgi-bin/token` and `POST /cgi-bin/stable_token`.
#[derive(Debug, Default, Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    force_refresh: Option<bool>,
}

/// `GET /cgi-bin/token?grant_type=client_credential&appid=X&secret=<key>`.
pub async fn token(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let fields = query_fields(&req);
    let result = answer_token(&req, &state, fields, false).await;
    finish(&state, "token", result)
}

/// `POST /cgi-bin/stable_token` with `{"grant_type","appid","secret","force_refresh"}`.
pub async fn stable_token(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let body = read_bytes(
        &req,
        payload,
        MAX_BODY_BYTES,
        "{\"grant_type\":\"client_credential\",\"appid\":\"...\",\"secret\":\"...\"}",
    )
    .await;
    let fields = match body {
        Ok(bytes) => match serde_json::from_slice::<TokenRequest>(&bytes) {
            Ok(fields) => fields,
            Err(_) => {
                return finish(
                    &state,
                    "stable_token",
                    Err(WxError::new(
                        47001,
                        "data format error: send JSON {\"grant_type\":\"client_credential\",\"appid\":\"...\",\"secret\":\"...\"}",
                    )),
                );
            }
        },
        Err(e) => {
            return finish(
                &state,
                "stable_token",
                Err(WxError::new(
                    47001,
                    format!("data format error: {}", e.message()),
                )),
            );
        }
    };
    let force = fields.force_refresh.unwrap_or(false);
    let result = answer_token(&req, &state, fields, force).await;
    finish(&state, "stable_token", result)
}

/// WeCom's `GET /cgi-bin/gettoken?corpid=&corpsecret=<key>`: the token of
/// the one app of that corp in the key's scope.
pub async fn gettoken(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let mut corpid = None;
    let mut key = None;
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        match &*k {
            "corpid" => corpid = Some(v.into_owned()),
            "corpsecret" => key = Some(v.into_owned()),
            _ => {}
        }
    }
    let result = (|| {
        let corpid = corpid
            .filter(|c| !c.is_empty())
            .ok_or_else(|| WxError::new(41002, "corpid missing"))?;
        let key = key
            .filter(|k| !k.is_empty())
            .ok_or_else(|| WxError::new(41004, "corpsecret missing"))?;
        let auth = state.auth.load();
        let caller = caller_of(&auth, &req, &key, "corpsecret")?;
        let apps: Vec<Arc<AccountSlot>> = state
            .directory
            .all()
            .into_iter()
            .filter(|slot| {
                matches!(&slot.kind, AccountKind::Wecom { corpid: c, .. } if *c == corpid)
                    && caller.may_access(&slot.appid)
            })
            .collect();
        match apps.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(WxError::new(
                40013,
                "invalid corpid: this server holds no app of this corp for this key",
            )),
            _ => Err(WxError::new(
                40013,
                "invalid corpid: this key may use several apps of this corp, so gettoken cannot tell which; give the SDK a key scoped to one app (clients[].appids: [corpid:agentid])",
            )),
        }
    })();
    let result = match result {
        Ok(slot) => current(&slot, state.clock.now_unix_ms()),
        Err(e) => Err(e),
    };
    finish(&state, "gettoken", result)
}

/// The fields of the query string (the legacy token call).
fn query_fields(req: &HttpRequest) -> TokenRequest {
    let mut fields = TokenRequest::default();
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        match &*k {
            "grant_type" => fields.grant_type = Some(v.into_owned()),
            "appid" => fields.appid = Some(v.into_owned()),
            "secret" => fields.secret = Some(v.into_owned()),
            _ => {}
        }
    }
    fields
}

/// The caller whose key is `key`, or WeChat's error for it.
fn caller_of<'a>(
    auth: &'a Auth,
    req: &HttpRequest,
    key: &str,
    field: &str,
) -> Result<Caller<'a>, WxError> {
    auth.authenticate_key(req, key).map_err(|e| match e {
        KeyRefused::Unknown => WxError::invalid_key(field),
        KeyRefused::NotLoopback => WxError::not_loopback(),
    })
}

/// The token answer for one token request (`force`: a stale report of the
/// current token first).
async fn answer_token(
    req: &HttpRequest,
    state: &AppState,
    fields: TokenRequest,
    force: bool,
) -> Result<Arc<TokenRecord>, WxError> {
    match fields.grant_type.as_deref() {
        Some("client_credential") => {}
        None | Some("") => {
            return Err(WxError::new(
                40002,
                "invalid grant_type: grant_type missing; send grant_type=client_credential",
            ));
        }
        Some(_) => {
            return Err(WxError::new(
                40002,
                "invalid grant_type: send grant_type=client_credential",
            ));
        }
    }
    let appid = fields
        .appid
        .filter(|a| !a.is_empty())
        .ok_or_else(|| WxError::new(41002, "appid missing"))?;
    let key = fields
        .secret
        .filter(|s| !s.is_empty())
        .ok_or_else(|| WxError::new(41004, "appsecret missing"))?;
    let (slot, client) = {
        let auth = state.auth.load();
        let caller = caller_of(&auth, req, &key, "secret")?;
        let appid = AppId::parse(&appid).map_err(|_| WxError::invalid_appid())?;
        if !caller.may_access(&appid) {
            return Err(WxError::invalid_appid());
        }
        let slot = state
            .directory
            .get(&appid)
            .ok_or_else(WxError::invalid_appid)?;
        (slot, caller.client())
    };
    let now_ms = state.clock.now_unix_ms();
    if !force {
        return current(&slot, now_ms);
    }
    // No token yet: nothing to report stale; the first fetch is under way.
    let Some(stale) = slot.token().map(|t| t.token.clone()) else {
        return current(&slot, now_ms);
    };
    let origin = super::origin(req, "http");
    let result = super::refresh::route_refresh(
        state,
        &origin,
        crate::audit::Cause::FaceForce,
        RouteRefresh {
            appid: slot.appid.clone(),
            reason: Reason::StaleReport,
            stale: Some(stale),
            client,
        },
    )
    .await;
    let now_ms = state.clock.now_unix_ms();
    match result {
        Ok(Ok(outcome)) if outcome.record.usable_secs(now_ms).is_some() => Ok(outcome.record),
        // WeChat's limits forbid a new token now: the current one, as WeChat answers.
        Ok(Err(RefreshError::Throttled { .. })) | Ok(Ok(_)) => current(&slot, now_ms),
        Ok(Err(e)) => Err(WxError::busy(format!(
            "could not refresh the token of {}: {e}; retry shortly",
            slot.appid
        ))),
        Err(_) => Err(WxError::busy("the server is shutting down or restarting")),
    }
}

/// The current token of `slot` when it can be served, else WeChat's "busy".
fn current(slot: &AccountSlot, now_ms: i64) -> Result<Arc<TokenRecord>, WxError> {
    match slot.token() {
        Some(t) if t.usable_secs(now_ms).is_some() => Ok(t),
        _ => Err(WxError::busy(
            super::token::unavailable(slot, now_ms)
                .message()
                .to_string(),
        )),
    }
}

/// The answer (and its count): WeChat's token shape, or its error shape.
fn finish(
    state: &AppState,
    api: &'static str,
    result: Result<Arc<TokenRecord>, WxError>,
) -> HttpResponse {
    let now_ms = state.clock.now_unix_ms();
    let error = match result {
        Ok(record) => match (record.usable_secs(now_ms), record.token_json()) {
            (Some(expires_in), Some(token)) => {
                state.metrics.face(api, None);
                let mut numbers = itoa::Buffer::new();
                let mut body = Vec::with_capacity(token.len() + 48);
                body.extend_from_slice(b"{\"access_token\":");
                body.extend_from_slice(token.as_bytes());
                body.extend_from_slice(b",\"expires_in\":");
                body.extend_from_slice(numbers.format(expires_in).as_bytes());
                body.push(b'}');
                return HttpResponse::Ok()
                    .insert_header((
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json; charset=utf-8"),
                    ))
                    .insert_header((
                        header::CACHE_CONTROL,
                        super::token::cache_control(expires_in),
                    ))
                    .body(body);
            }
            _ => WxError::busy("the token expired while it was being answered; ask again"),
        },
        Err(e) => e,
    };
    state.metrics.face(api, Some(error.errcode));
    error.respond(actix_web::http::StatusCode::OK)
}
