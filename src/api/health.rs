//! `GET /healthz` (the process serves) and `GET /readyz` (every enabled
//! account has a usable token). Both are open to everyone, like `/metrics`:
//! they tell which appids are unhealthy but never a token or a secret.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::startup::AppState;

use super::error::ApiError;

/// `GET /healthz`: 200 `ok` while the process serves.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .body("ok")
}

#[derive(Serialize)]
struct Ready {
    status: &'static str,
    accounts: usize,
}

#[derive(Serialize)]
struct NotReady<'a> {
    appid: &'a str,
    state: crate::account::slot::State,
    #[serde(skip_serializing_if = "Option::is_none")]
    errcode: Option<i64>,
}

/// `GET /readyz`: 200 `{"status":"ready","accounts":N}` when every enabled
/// account has a usable token (and, with `store.redis`, Redis answers); else
/// 503 `not_ready` with a `not_ready` list of `{appid, state, errcode}`.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if let Some(shared) = &state.shared
        && !shared.is_up()
    {
        let error = ApiError::not_ready(format!(
            "the shared store (Redis at {}) is unreachable; held tokens are served while valid, but nothing is refreshed until it is back",
            shared.address()
        ));
        return error.respond_with(error.body_json(None));
    }
    let now_ms = state.clock.now_unix_ms();
    let missing = state.directory.not_ready(now_ms);
    if missing.is_empty() {
        let body = serde_json::to_vec(&Ready {
            status: "ready",
            accounts: state.directory.len(),
        })
        .unwrap_or_default();
        return HttpResponse::Ok()
            .insert_header((
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ))
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
            .body(body);
    }
    let statuses: Vec<_> = missing
        .iter()
        .map(|appid| {
            let status = state.directory.get(appid).map(|slot| slot.status());
            (appid, status)
        })
        .collect();
    let list: Vec<NotReady<'_>> = statuses
        .iter()
        .map(|(appid, status)| NotReady {
            appid: appid.as_str(),
            state: status
                .as_ref()
                .map_or(crate::account::slot::State::Empty, |s| s.state),
            errcode: status
                .as_ref()
                .and_then(|s| s.last_error.as_ref())
                .and_then(|e| e.errcode),
        })
        .collect();
    let names: Vec<&str> = missing.iter().map(|a| a.as_str()).collect();
    let error = ApiError::not_ready(format!(
        "{} of {} accounts have no usable token: {}",
        missing.len(),
        state.directory.len(),
        names.join(", ")
    ));
    let extra = serde_json::to_value(&list).unwrap_or_default();
    error.respond_with(error.body_json(Some(("not_ready", extra))))
}
