//! The Open Platform endpoints of contract §6: the event URL WeChat pushes
//! verify tickets and authorizations to, the component token, and the
//! admin's reconcile, import and pre-auth.
//!
//! Invariants: an event changes nothing before its signature, its ciphertext
//! and the appid inside it are checked, and is acknowledged (`success`) only
//! once durable; every refused event is a 4xx that names the problem, never
//! the input; no answer carries a refresh token, a ticket or a code.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::body::{read_bytes, read_json, read_json_list_up_to};
use super::error::ApiError;
use super::path_appid;
use super::state::AppState;
use crate::account::{OpenUpdate, RefreshError};
use crate::config::Config;
use crate::domain::{AccessToken, AppId};
use crate::openplatform::MsgCrypt;
use crate::openplatform::event::{self, Event, EventQuery, MAX_EVENT_BYTES};
use crate::registry::{PreAuthCode, Reconcile, RouteOpen};

/// How long an authorization code is honoured when WeChat does not say (10 min).
const CODE_LIFETIME_MS: i64 = 600_000;
/// The largest import body (a few thousand authorizers).
const MAX_IMPORT_BYTES: usize = 4 * 1024 * 1024;

/// The configured components' message crypts, by component appid.
pub type Components = HashMap<AppId, Arc<MsgCrypt>>;

/// The crypts of `config`'s components (validated keys, so none is skipped
/// unless the configuration's own check missed it).
pub fn components_of(config: &Config) -> Components {
    use secrecy::ExposeSecret;
    config
        .components
        .iter()
        .filter_map(|c| {
            match MsgCrypt::new(
                c.token.expose_secret(),
                c.encoding_aes_key.expose_secret(),
                c.appid.as_str(),
            ) {
                Ok(crypt) => Some((c.appid.clone(), Arc::new(crypt))),
                Err(e) => {
                    tracing::error!(component = %c.appid, error = %e, "component skipped: its message keys are unusable");
                    None
                }
            }
        })
        .collect()
}

/// `POST /v1/component/{component_appid}/events`: WeChat's pushes. No bearer
/// key: the message signature and the appid inside the ciphertext are the
/// authentication.
///
/// Answers `success` (plain text) once the event is durable; 400
/// `bad_event` for a bad signature, ciphertext, appid, size or shape; 404
/// for an unknown component; 503 when the store cannot make it durable (WeChat
/// pushes again).
pub async fn events(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let component = path_appid(&req)?;
    let Some(crypt) = state.components.load().get(&component).cloned() else {
        return Err(ApiError::unknown_component(component.as_str()));
    };
    let body = read_bytes(&req, payload, MAX_EVENT_BYTES, "WeChat's <xml> event").await?;
    let query = web::Query::<EventQuery>::from_query(req.query_string())
        .map_err(|_| {
            ApiError::bad_event(
                "the query string is not WeChat's timestamp, nonce, encrypt_type and msg_signature",
            )
        })?
        .into_inner();
    let event = match event::open(&crypt, &query, &body) {
        Ok(event) => event,
        Err(e) => {
            state.metrics.open_event("unreadable", "refused");
            tracing::warn!(component = %component, error = %e, "refused an event pushed to the event URL");
            return Err(ApiError::bad_event(format!("the event was refused: {e}")));
        }
    };
    let info_type = event.info_type();
    let now = state.clock.now_unix_ms();
    let route = |appid: AppId, update: OpenUpdate| RouteOpen {
        component: component.clone(),
        appid,
        update,
    };
    let message = match event {
        Event::Ticket {
            ticket,
            create_time,
        } => {
            let ticket = AccessToken::from_upstream(ticket).map_err(|_| {
                ApiError::bad_event(
                    "the component_verify_ticket is not 16 to 2048 visible characters",
                )
            })?;
            let created = if create_time > 0 {
                create_time.saturating_mul(1000)
            } else {
                now
            };
            route(
                component.clone(),
                OpenUpdate::Ticket {
                    ticket,
                    created_at_ms: created.min(now),
                },
            )
        }
        Event::Authorized {
            authorizer_appid,
            code,
            ..
        } => {
            let appid = authorizer(&authorizer_appid)?;
            let code = AccessToken::from_upstream(code).map_err(|_| {
                ApiError::bad_event("the AuthorizationCode is not 16 to 2048 visible characters")
            })?;
            route(
                appid,
                OpenUpdate::Code {
                    code,
                    expires_at_ms: now + CODE_LIFETIME_MS,
                },
            )
        }
        Event::Unauthorized {
            authorizer_appid, ..
        } => route(authorizer(&authorizer_appid)?, OpenUpdate::Revoke),
        Event::Other { info_type } => {
            tracing::info!(component = %component, info_type = %info_type, "event acknowledged and not acted on");
            state.metrics.open_event("other", "ignored");
            return Ok(success());
        }
    };
    match state.registry.send(message).await {
        Ok(Ok(())) => {
            state.metrics.open_event(info_type, "ok");
            tracing::info!(component = %component, info_type, "event made durable");
            Ok(success())
        }
        Ok(Err(RefreshError::WrongKind(kind))) => {
            state.metrics.open_event(info_type, "refused");
            Err(ApiError::bad_event(format!(
                "the event names an account that is not a {kind} of component {component}"
            )))
        }
        Ok(Err(e)) => {
            state.metrics.open_event(info_type, "error");
            Err(ApiError::token_unavailable(
                format!("the event could not be made durable ({e}); WeChat pushes it again"),
                1,
            ))
        }
        Err(_) => {
            state.metrics.open_event(info_type, "error");
            Err(ApiError::token_unavailable(
                "the registry is not running; WeChat pushes the event again",
                1,
            ))
        }
    }
}

/// The authorizer appid of an event, checked.
fn authorizer(raw: &str) -> Result<AppId, ApiError> {
    AppId::parse(raw)
        .ok()
        .filter(AppId::is_wechat_appid)
        .ok_or_else(|| ApiError::bad_event("the AuthorizerAppid is not a WeChat appid"))
}

/// The plain `success` WeChat expects.
fn success() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static("text/plain")))
        .body("success")
}

#[derive(Serialize)]
struct ComponentToken<'a> {
    component_appid: &'a str,
    component_access_token: &'a str,
    expires_in: u64,
    expires_at: i64,
    fetched_at: i64,
}

/// `GET /v1/component/{component_appid}/token`: the component's own token,
/// to clients whose scope includes the component appid.
///
/// Errors: 401, 403, 404 (not a configured component), 503 while none is
/// usable (no verify ticket yet, WeChat failing).
pub async fn component_token(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let auth = state.auth.load();
    let caller = auth.authenticate(&req)?;
    let component = path_appid(&req)?;
    caller.check_scope(&component)?;
    let slot = state
        .directory
        .get(&component)
        .filter(|s| s.kind == crate::config::AccountKind::Component)
        .ok_or_else(|| ApiError::unknown_component(component.as_str()))?;
    let now = state.clock.now_unix_ms();
    let token = slot.token();
    let Some((record, expires_in)) = token
        .as_ref()
        .and_then(|t| t.usable_secs(now).map(|secs| (t, secs)))
    else {
        return Err(super::token::unavailable(&slot, now));
    };
    let body = serde_json::to_vec(&ComponentToken {
        component_appid: component.as_str(),
        component_access_token: record.token.expose(),
        expires_in,
        expires_at: now.div_euclid(1000) + expires_in as i64,
        fetched_at: record.fetched_at_ms.div_euclid(1000),
    })
    .map_err(|_| ApiError::internal("the answer could not be written"))?;
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ))
        .insert_header((
            header::CACHE_CONTROL,
            super::token::cache_control(expires_in),
        ))
        .body(body))
}

/// `POST /v1/component/{component_appid}/reconcile` (admin): page through
/// `api_get_authorizer_list`, add missing authorizers, repair refresh tokens.
pub async fn reconcile(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let component = admin_component(&req, &state)?;
    match state
        .registry
        .send(Reconcile {
            component: component.clone(),
        })
        .await
    {
        Ok(Ok(summary)) => {
            tracing::info!(component = %component, listed = summary.total_count, added = summary.added.len(), repaired = summary.repaired.len(), "reconciled the authorizers");
            let origin = super::origin(&req, "http");
            for (list, outcome) in [(&summary.added, "added"), (&summary.repaired, "repaired")] {
                for appid in list {
                    crate::audit::open(
                        &origin,
                        appid.as_str(),
                        crate::audit::Cause::Reconcile,
                        outcome,
                    );
                }
            }
            state
                .metrics
                .refresh_token_repairs(summary.repaired.len() + summary.added.len());
            Ok(HttpResponse::Ok().json(summary))
        }
        Ok(Err(e)) => Err(component_error(&component, e)),
        Err(_) => Err(registry_down()),
    }
}

/// One entry of an import.
#[derive(Deserialize)]
struct Import {
    authorizer_appid: String,
    refresh_token: String,
}

#[derive(Serialize, Default)]
struct ImportSummary {
    imported: usize,
    refused: Vec<ImportProblem>,
}

#[derive(Serialize)]
struct ImportProblem {
    index: usize,
    problem: String,
}

/// `POST /v1/component/{component_appid}/authorizers` (admin): import
/// `[{"authorizer_appid","refresh_token"}]` from another system; each
/// valid entry is durable when the answer comes.
pub async fn import(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let component = admin_component(&req, &state)?;
    let entries: Vec<Import> = read_json_list_up_to(
        &req,
        payload,
        MAX_IMPORT_BYTES,
        r#"[{"authorizer_appid": "wx...", "refresh_token": "..."}]"#,
    )
    .await?;
    let mut summary = ImportSummary::default();
    for (index, entry) in entries.into_iter().enumerate() {
        let Ok(appid) = authorizer(&entry.authorizer_appid) else {
            summary.refused.push(ImportProblem {
                index,
                problem: "authorizer_appid is not a WeChat appid".to_string(),
            });
            continue;
        };
        let Ok(token) = AccessToken::from_upstream(entry.refresh_token) else {
            summary.refused.push(ImportProblem {
                index,
                problem: "refresh_token is not 16 to 2048 visible characters".to_string(),
            });
            continue;
        };
        let routed = state
            .registry
            .send(RouteOpen {
                component: component.clone(),
                appid: appid.clone(),
                update: OpenUpdate::RefreshToken(token),
            })
            .await;
        let outcome = match routed {
            Ok(Ok(())) => {
                summary.imported += 1;
                "imported"
            }
            Ok(Err(e)) => {
                summary.refused.push(ImportProblem {
                    index,
                    problem: e.to_string(),
                });
                "refused"
            }
            Err(_) => return Err(registry_down()),
        };
        crate::audit::open(
            &super::origin(&req, "http"),
            appid.as_str(),
            crate::audit::Cause::AuthorizerImport,
            outcome,
        );
    }
    tracing::info!(component = %component, imported = summary.imported, refused = summary.refused.len(), "imported authorizer refresh tokens");
    Ok(HttpResponse::Ok().json(summary))
}

#[derive(Deserialize)]
struct PreAuthRequest {
    redirect_uri: String,
    #[serde(default)]
    auth_type: Option<u8>,
}

#[derive(Serialize)]
struct PreAuthAnswer {
    pre_auth_code: String,
    expires_in: u64,
    pc_url: String,
    mobile_url: String,
}

/// `POST /v1/component/{component_appid}/preauthcode` (admin): a pre-auth
/// code and the consent links a merchant opens.
pub async fn preauthcode(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let component = admin_component(&req, &state)?;
    let body: PreAuthRequest = read_json(
        &req,
        payload,
        r#"{"redirect_uri": "https://...", "auth_type": 3}"#,
    )
    .await?;
    let redirect = url::Url::parse(&body.redirect_uri)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| ApiError::bad_request("redirect_uri must be an http or https URL"))?;
    let auth_type = body.auth_type.unwrap_or(3);
    if !(1..=3).contains(&auth_type) {
        return Err(ApiError::bad_request(
            "auth_type must be 1 (official accounts), 2 (mini programs) or 3 (both)",
        ));
    }
    let (code, expires_in) = match state
        .registry
        .send(PreAuthCode {
            component: component.clone(),
        })
        .await
    {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(component_error(&component, e)),
        Err(_) => return Err(registry_down()),
    };
    let query = |base: &str| {
        let mut url = url::Url::parse(base).unwrap_or_else(|_| redirect.clone());
        url.query_pairs_mut()
            .append_pair("component_appid", component.as_str())
            .append_pair("pre_auth_code", code.expose())
            .append_pair("redirect_uri", redirect.as_str())
            .append_pair("auth_type", &auth_type.to_string());
        url
    };
    let pc_url = query("https://mp.weixin.qq.com/cgi-bin/componentloginpage").to_string();
    let mut mobile =
        query("https://mp.weixin.qq.com/safe/bindcomponent?action=bindcomponent&no_scan=1");
    mobile.set_fragment(Some("wechat_redirect"));
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .json(PreAuthAnswer {
            pre_auth_code: code.expose().to_string(),
            expires_in: expires_in.as_secs(),
            pc_url,
            mobile_url: mobile.to_string(),
        }))
}

/// The component of the path, for an admin caller whose scope includes it.
fn admin_component(req: &HttpRequest, state: &AppState) -> Result<AppId, ApiError> {
    let auth = state.auth.load();
    let caller = auth.authenticate(req)?;
    caller.check_admin()?;
    let component = path_appid(req)?;
    caller.check_scope(&component)?;
    if !state.components.load().contains_key(&component) {
        return Err(ApiError::unknown_component(component.as_str()));
    }
    Ok(component)
}

fn component_error(component: &AppId, e: RefreshError) -> ApiError {
    match e {
        RefreshError::UnknownAccount => ApiError::unknown_component(component.as_str()),
        RefreshError::Upstream {
            error, retry_after, ..
        } => ApiError::token_unavailable(
            format!("WeChat refused the call for component {component}: {error}"),
            retry_after.as_secs().max(1),
        )
        .with_errcode(error.errcode()),
        other => ApiError::token_unavailable(
            format!("component {component}: {other}"),
            Duration::from_secs(5).as_secs(),
        ),
    }
}

fn registry_down() -> ApiError {
    ApiError::token_unavailable(
        "the account registry is not running; the server is shutting down or restarting",
        1,
    )
}
