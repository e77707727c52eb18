//! The HTTP API of contract §3: one module per endpoint group, plus
//! authentication, the error type, body reading and the metrics middleware,
//! and the operators' status page (`ui.rs`, contract §9).
//!
//! Owns the route table ([`configure`]) and the answers of unknown paths (404)
//! and wrong methods (405). Invariants: every answer, including the router's
//! own 404/405, is JSON of the contract's error shape; the token read path
//! (`token::get_token`) never waits for an actor; every resource is named
//! after its pattern so the metrics middleware labels requests by route.
//!
//! The one exception: a request whose head actix-http cannot parse (a
//! malformed header: 400; a head over its 128 KiB buffer or more than 96 headers:
//! 431; a head not complete within 5 s: 408) is answered by actix-http's
//! connection dispatcher itself, with an empty body, before any service or
//! middleware of ours runs: actix-web offers no hook there, so those answers
//! are neither JSON nor counted in `wxtoken_http_requests_total`. They are
//! not logged as errors either (see `telemetry`).

mod accounts;
mod admin;
mod auth;
mod body;
mod error;
mod face;
mod health;
mod metrics;
mod middleware;
pub mod open;
pub mod proxy;
mod refresh;
mod state;
mod ticket;
mod token;
mod ui;

use actix_web::{HttpRequest, HttpResponse, Resource, web};

pub use auth::{Auth, Caller, ClientLabel};
pub use body::MAX_BODY_BYTES;
pub use error::ApiError;
pub use middleware::{HttpMetrics, UNMATCHED};
pub use proxy::Proxy;
pub use state::AppState;

/// The `route` label an answer asks the metrics middleware to count it
/// under, for answers of the default service (the proxy) that no pattern names.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

use std::sync::Arc;

use crate::domain::AppId;
use crate::snapshot::AccountSlot;

/// The route patterns, which are also the `route` label of the HTTP metrics.
pub mod routes {
    /// `GET`: the current token of an account.
    pub const TOKEN: &str = "/v1/token/{appid}";
    /// `POST`: compare-and-refresh.
    pub const TOKEN_REFRESH: &str = "/v1/token/{appid}/refresh";
    /// `GET` (admin): the status of every account.
    pub const ACCOUNTS: &str = "/v1/accounts";
    /// `GET`: the appids the caller's key may read (what the agent follows).
    pub const APPIDS: &str = "/v1/appids";
    /// `POST` (admin): forced refresh.
    pub const ACCOUNT_REFRESH: &str = "/v1/accounts/{appid}/refresh";
    /// `GET`: the current JS-SDK ticket of an account.
    pub const TICKET: &str = "/v1/ticket/{appid}/{type}";
    /// `POST`: compare-and-refresh of a ticket.
    pub const TICKET_REFRESH: &str = "/v1/ticket/{appid}/{type}/refresh";
    /// `POST`: a JS-SDK signature for a page URL.
    pub const TICKET_SIGNATURE: &str = "/v1/ticket/{appid}/jsapi/signature";
    /// `POST` (admin): reload the configuration file.
    pub const ADMIN_RELOAD: &str = "/v1/admin/reload";
    /// `GET`: liveness.
    pub const HEALTHZ: &str = "/healthz";
    /// `GET`: readiness.
    pub const READYZ: &str = "/readyz";
    /// `GET`: Prometheus metrics.
    pub const METRICS: &str = "/metrics";
    /// `GET` (no key: the page asks for one and reads `/v1/accounts`): the
    /// operators' status page.
    pub const UI: &str = "/ui";
    /// `POST` (no key: signed by WeChat): the component's event URL.
    pub const COMPONENT_EVENTS: &str = "/v1/component/{appid}/events";
    /// `GET`: the component's own token.
    pub const COMPONENT_TOKEN: &str = "/v1/component/{appid}/token";
    /// `POST` (admin): reconcile the authorizers with WeChat's list.
    pub const COMPONENT_RECONCILE: &str = "/v1/component/{appid}/reconcile";
    /// `POST` (admin): import authorizer refresh tokens.
    pub const COMPONENT_AUTHORIZERS: &str = "/v1/component/{appid}/authorizers";
    /// `POST` (admin): a pre-auth code and the consent links.
    pub const COMPONENT_PREAUTHCODE: &str = "/v1/component/{appid}/preauthcode";
    /// `GET` (WeChat's shape, the client key as `secret`): the face's token.
    pub const FACE_TOKEN: &str = "/cgi-bin/token";
    /// `POST` (WeChat's shape): the face's stable token.
    pub const FACE_STABLE_TOKEN: &str = "/cgi-bin/stable_token";
    /// `GET` (WeCom's shape, the client key as `corpsecret`).
    pub const FACE_GETTOKEN: &str = "/cgi-bin/gettoken";
    /// Any method (bearer key): forward a WeChat API call for the account.
    pub const PROXY: &str = "/v1/proxy/{appid}/{path:.*}";
}

/// Registers every endpoint of the API and the JSON 404 for unknown paths.
/// The app must carry `web::Data<AppState>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource(routes::TOKEN, "GET").route(web::get().to(token::get_token)))
        .service(
            resource(routes::TOKEN_REFRESH, "POST")
                .route(web::post().to(refresh::compare_and_refresh)),
        )
        .service(resource(routes::ACCOUNTS, "GET").route(web::get().to(accounts::list_accounts)))
        .service(resource(routes::APPIDS, "GET").route(web::get().to(accounts::list_appids)))
        .service(
            resource(routes::ACCOUNT_REFRESH, "POST")
                .route(web::post().to(accounts::force_refresh)),
        )
        .service(resource(routes::ADMIN_RELOAD, "POST").route(web::post().to(admin::reload)))
        .service(
            resource(routes::TICKET_SIGNATURE, "POST").route(web::post().to(ticket::signature)),
        )
        .service(
            resource(routes::TICKET_REFRESH, "POST").route(web::post().to(ticket::refresh_ticket)),
        )
        .service(resource(routes::TICKET, "GET").route(web::get().to(ticket::get_ticket)))
        .service(
            resource(routes::HEALTHZ, "GET, HEAD")
                .route(web::get().to(health::healthz))
                .route(web::head().to(health::healthz)),
        )
        .service(
            resource(routes::READYZ, "GET, HEAD")
                .route(web::get().to(health::readyz))
                .route(web::head().to(health::readyz)),
        )
        .service(resource(routes::METRICS, "GET").route(web::get().to(metrics::metrics)))
        .service(
            resource(routes::UI, "GET, HEAD")
                .route(web::get().to(ui::page))
                .route(web::head().to(ui::page)),
        )
        .service(resource(routes::COMPONENT_EVENTS, "POST").route(web::post().to(open::events)))
        .service(
            resource(routes::COMPONENT_TOKEN, "GET").route(web::get().to(open::component_token)),
        )
        .service(
            resource(routes::COMPONENT_RECONCILE, "POST").route(web::post().to(open::reconcile)),
        )
        .service(
            resource(routes::COMPONENT_AUTHORIZERS, "POST").route(web::post().to(open::import)),
        )
        .service(
            resource(routes::COMPONENT_PREAUTHCODE, "POST")
                .route(web::post().to(open::preauthcode)),
        )
        .service(resource(routes::FACE_TOKEN, "GET").route(web::get().to(face::token)))
        .service(
            resource(routes::FACE_STABLE_TOKEN, "POST").route(web::post().to(face::stable_token)),
        )
        .service(resource(routes::FACE_GETTOKEN, "GET").route(web::get().to(face::gettoken)))
        .service(
            web::resource(routes::PROXY)
                .name(routes::PROXY)
                .to(proxy::by_key),
        )
        .default_service(web::to(proxy::by_token));
}

/// A resource named after its pattern, answering 405 with `Allow: allow` to
/// other methods.
fn resource(pattern: &'static str, allow: &'static str) -> Resource {
    web::resource(pattern)
        .name(pattern)
        .default_service(web::to(move || async move {
            let err: Result<HttpResponse, ApiError> = Err(ApiError::method_not_allowed(allow));
            err
        }))
}

/// Who sent `req`, for the audit trail: the client whose key was accepted
/// (the [`ClientLabel`] authentication left on it), the TCP peer and the
/// first `X-Forwarded-For` address when it is one. `trigger` is `http`,
/// `http_token` for the proxy's token door (a token stands for the caller),
/// or `admin` for a reload.
pub(crate) fn origin(req: &HttpRequest, trigger: &'static str) -> crate::audit::Origin {
    use actix_web::HttpMessage as _;
    let forwarded_for = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|first| first.trim().parse().ok());
    let client = match req.extensions().get::<ClientLabel>() {
        Some(ClientLabel::Named(name)) => Some(name.clone()),
        _ => None,
    };
    crate::audit::Origin {
        trigger,
        client,
        remote: req.peer_addr().map(|a| a.ip().to_canonical()),
        forwarded_for,
    }
}

/// The `{appid}` of the matched path, validated.
///
/// Errors with 400 when it is not 1 to 64 letters, digits, `_`, `-`, `:` or
/// `.`; the message does not quote it.
fn path_appid(req: &HttpRequest) -> Result<AppId, ApiError> {
    let raw = req.match_info().get("appid").unwrap_or_default();
    AppId::parse(raw).map_err(|_| {
        ApiError::bad_request(
            "the appid in the path is malformed: it must be 1 to 64 letters, digits, '_', '-', ':' or '.' (WeChat appids look like wx1234567890abcdef)",
        )
    })
}

/// The slot of the account the path names, when `caller` may use it.
///
/// Errors with 400 for a malformed appid, 403 when it is outside the
/// caller's scope, 404 when it is not configured.
fn path_account(
    req: &HttpRequest,
    caller: &Caller<'_>,
    state: &AppState,
) -> Result<Arc<AccountSlot>, ApiError> {
    let appid = path_appid(req)?;
    caller.check_scope(&appid)?;
    state
        .directory
        .get(&appid)
        .ok_or_else(|| ApiError::unknown_appid(appid.as_str()))
}
