//! The simulator's HTTP surface: WeChat's endpoints under `/cgi-bin/` and the
//! control API under `/sim/`.
//!
//! Invariants: WeChat endpoints answer like WeChat (HTTP 200 with
//! `{"errcode","errmsg"}` on errors, whatever the input); the control API
//! answers bad input with 400 and `{"error","message"}`. No request input is
//! unwrapped, and log lines name at most the appid and the API, never a
//! secret or a token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::answers::{WxError, json_response};
use super::error::OpenControlError;
use super::faults::{self, Api, FaultSpec};
use super::open::{self, AuthorizeRequest, ComponentRegistration, Outgoing, RefreshTokenFault};
use super::state::{AppRegistration, CALLBACK_IPS, Credentials, SimState};

/// The largest clock step one `POST /sim/clock` may take (about ten years).
const MAX_ADVANCE_SECS: u64 = 10 * 366 * 86_400;

/// Mounts every route of the simulator.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/cgi-bin/token").route(web::get().to(token)))
        .service(web::resource("/cgi-bin/stable_token").route(web::post().to(stable_token)))
        .service(web::resource("/cgi-bin/gettoken").route(web::get().to(wecom_token)))
        .service(web::resource("/cgi-bin/ticket/getticket").route(web::get().to(getticket)))
        .service(web::resource("/cgi-bin/getcallbackip").route(web::get().to(getcallbackip)))
        .service(web::resource("/cgi-bin/openapi/quota/get").route(web::post().to(api_quota)))
        .configure(super::business::configure)
        .service(
            web::resource("/sim/apps")
                .route(web::post().to(register_app))
                .route(web::get().to(list_apps)),
        )
        .service(web::resource("/sim/components").route(web::post().to(register_component)))
        .service(
            web::resource("/sim/components/{appid}/authorize").route(web::post().to(authorize)),
        )
        .service(
            web::resource("/sim/components/{appid}/unauthorize").route(web::post().to(unauthorize)),
        )
        .service(
            web::resource("/sim/components/{appid}/push_ticket").route(web::post().to(push_ticket)),
        )
        .service(web::resource("/sim/components/{appid}/pushing").route(web::post().to(pushing)))
        .service(
            web::resource("/sim/components/{appid}/refresh_tokens")
                .route(web::post().to(break_refresh_token)),
        )
        .service(
            web::resource("/sim/faults")
                .route(web::post().to(add_fault))
                .route(web::get().to(list_faults))
                .route(web::delete().to(clear_faults)),
        )
        .service(web::resource("/sim/stats").route(web::get().to(stats)))
        .service(
            web::resource("/sim/clock")
                .route(web::get().to(clock))
                .route(web::post().to(advance_clock)),
        );
    for api in [
        Api::ComponentToken,
        Api::PreAuthCode,
        Api::QueryAuth,
        Api::AuthorizerToken,
        Api::AuthorizerList,
        Api::StartPushTicket,
    ] {
        cfg.service(
            web::resource(format!("/cgi-bin/component/{}", api.as_str())).route(web::post().to(
                move |state: State, req: HttpRequest, body: web::Bytes| {
                    open_api(api, state, req, body)
                },
            )),
        );
    }
}

type State = web::Data<SimState>;

/// The query string as a map; the first occurrence of a name wins and empty
/// values count as missing.
fn query(req: &HttpRequest) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        if !v.is_empty() {
            out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
    }
    out
}

fn peer_ip(req: &HttpRequest) -> Option<IpAddr> {
    req.peer_addr().map(|a| a.ip())
}

/// [`faulted`] for a request: counted under `appid`, the peer from `req`.
pub(super) async fn faulted_call(
    state: &SimState,
    api: Api,
    appid: Option<&str>,
    req: &HttpRequest,
) -> Option<HttpResponse> {
    faulted(state, api, appid, peer_ip(req)).await
}

/// Counts the call, applies a matching fault's delay, and returns the fault's
/// answer if it replaces the normal one.
async fn faulted(
    state: &SimState,
    api: Api,
    appid: Option<&str>,
    peer: Option<IpAddr>,
) -> Option<HttpResponse> {
    tracing::debug!(
        appid = appid.unwrap_or("-"),
        api = api.as_str(),
        "simulator call"
    );
    let spec = state.begin_call(api, appid)?;
    if let Some(delay) = spec.delay() {
        tokio::time::sleep(delay).await;
    }
    let answer = faults::render(&spec, api, peer);
    if answer.is_some() {
        tracing::debug!(
            appid = appid.unwrap_or("-"),
            api = api.as_str(),
            "simulator fault applied"
        );
    }
    answer
}

fn token_answer(issued: super::state::Issued) -> HttpResponse {
    json_response(&json!({
        "access_token": issued.value,
        "expires_in": issued.expires_in,
    }))
}

async fn token(state: State, req: HttpRequest) -> HttpResponse {
    let mut q = query(&req);
    let creds = Credentials {
        grant_type: q.remove("grant_type"),
        appid: q.remove("appid"),
        secret: q.remove("secret"),
    };
    let peer = peer_ip(&req);
    let _in_flight = state.enter_token_call();
    if let Some(answer) = faulted(&state, Api::Token, creds.appid.as_deref(), peer).await {
        return answer;
    }
    match state.legacy_token(&creds, peer) {
        Ok(issued) => token_answer(issued),
        Err(e) => e.into_response(),
    }
}

/// WeCom `GET /cgi-bin/gettoken?corpid=&corpsecret=`.
async fn wecom_token(state: State, req: HttpRequest) -> HttpResponse {
    let q = query(&req);
    let corpid = q.get("corpid").map(String::as_str);
    let secret = q.get("corpsecret").map(String::as_str);
    let peer = peer_ip(&req);
    let _in_flight = state.enter_token_call();
    let app = corpid.and_then(|c| state.wecom_app(c, secret).ok());
    if let Some(answer) = faulted(&state, Api::WecomToken, app.as_deref(), peer).await {
        return answer;
    }
    match state.wecom_token(corpid, secret, peer) {
        Ok(issued) => json_response(&json!({
            "errcode": 0,
            "errmsg": "ok",
            "access_token": issued.value,
            "expires_in": issued.expires_in,
        })),
        Err(e) => e.into_response(),
    }
}

/// The body of `POST /cgi-bin/stable_token`, read leniently: WeChat answers
/// wrong types with 47001 and missing fields with their own errcodes.
fn stable_request(body: &[u8]) -> Result<(Credentials, bool), WxError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| WxError::new(47001))?;
    let Value::Object(map) = value else {
        return Err(WxError::new(47001));
    };
    let text = |name: &str| -> Result<Option<String>, WxError> {
        match map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(WxError::new(47001)),
        }
    };
    let creds = Credentials {
        grant_type: text("grant_type")?,
        appid: text("appid")?,
        secret: text("secret")?,
    };
    let force = match map.get("force_refresh") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(WxError::new(47001)),
    };
    Ok((creds, force))
}

async fn stable_token(state: State, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let parsed = stable_request(&body);
    let appid = parsed.as_ref().ok().and_then(|(c, _)| c.appid.clone());
    let peer = peer_ip(&req);
    let _in_flight = state.enter_token_call();
    if let Some(answer) = faulted(&state, Api::StableToken, appid.as_deref(), peer).await {
        return answer;
    }
    let result = parsed.and_then(|(creds, force)| state.stable_token(&creds, force, peer));
    match result {
        Ok(issued) => token_answer(issued),
        Err(e) => e.into_response(),
    }
}

async fn getticket(state: State, req: HttpRequest) -> HttpResponse {
    let q = query(&req);
    let token = q.get("access_token").map(String::as_str);
    let appid = token.and_then(|t| state.appid_of_token(t));
    if let Some(answer) = faulted(&state, Api::GetTicket, appid.as_deref(), peer_ip(&req)).await {
        return answer;
    }
    match state.ticket(token, q.get("type").map(String::as_str)) {
        Ok(ticket) => json_response(&json!({
            "errcode": 0,
            "errmsg": "ok",
            "ticket": ticket.value,
            "expires_in": ticket.expires_in,
        })),
        Err(e) => e.into_response(),
    }
}

async fn getcallbackip(state: State, req: HttpRequest) -> HttpResponse {
    let q = query(&req);
    let token = q.get("access_token").map(String::as_str);
    let appid = token.and_then(|t| state.appid_of_token(t));
    if let Some(answer) = faulted(&state, Api::GetCallbackIp, appid.as_deref(), peer_ip(&req)).await
    {
        return answer;
    }
    match state.probe(token) {
        Ok(()) => json_response(&json!({ "ip_list": CALLBACK_IPS })),
        Err(e) => e.into_response(),
    }
}

/// getApiQuota: `POST /cgi-bin/openapi/quota/get?access_token=` with
/// `{"cgi_path": "/cgi-bin/token"}` (or `/cgi-bin/stable_token`).
async fn api_quota(state: State, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let q = query(&req);
    let token = q.get("access_token").map(String::as_str);
    let appid = token.and_then(|t| state.appid_of_token(t));
    if let Some(answer) = faulted(&state, Api::GetApiQuota, appid.as_deref(), peer_ip(&req)).await {
        return answer;
    }
    let cgi_path = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => map
            .get("cgi_path")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => return WxError::new(47001).into_response(),
    };
    match state.api_quota(token, cgi_path.as_deref()) {
        Ok(quota) => json_response(&quota.answer()),
        Err(e) => e.into_response(),
    }
}

/// One Open Platform API call (`POST /cgi-bin/component/...`): the token
/// comes from `component_access_token` or `access_token` in the query (both
/// spellings are in WeChat's docs). Counted under the component (the
/// authorizer for `api_authorizer_token` and `api_query_auth`).
async fn open_api(api: Api, state: State, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let q = query(&req);
    let token = q
        .get("component_access_token")
        .or_else(|| q.get("access_token"))
        .map(String::as_str);
    let peer = peer_ip(&req);
    let _in_flight = matches!(
        api,
        Api::ComponentToken | Api::QueryAuth | Api::AuthorizerToken
    )
    .then(|| state.enter_token_call());
    let appid = state.open_call_appid(api, &body);
    if let Some(answer) = faulted(&state, api, appid.as_deref(), peer).await {
        return answer;
    }
    match state.open_call(api, token, &body, peer) {
        Ok(answer) => {
            if api == Api::StartPushTicket
                && let Some(component) = appid
            {
                // WeChat answers, then pushes a ticket at once.
                let state = state.clone().into_inner();
                if let Ok(out) = state.ticket_event(&component) {
                    tokio::spawn(async move {
                        open::deliver(&state, out).await;
                    });
                }
            }
            json_response(&answer)
        }
        Err(e) => e.into_response(),
    }
}

/// Answers a control call that sealed an event: pushes it (when the
/// component has a callback) and reports the delivery.
async fn push_and_report(
    state: &SimState,
    sealed: Result<Outgoing, OpenControlError>,
) -> HttpResponse {
    match sealed {
        Ok(out) => HttpResponse::Ok().json(open::deliver(state, out).await),
        Err(e) => bad_request(e),
    }
}

async fn register_component(state: State, body: web::Bytes) -> HttpResponse {
    let reg: ComponentRegistration = match control_body(&body, "component registration") {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let appid = reg.component_appid.clone();
    match state.register_component(reg) {
        Ok(generation) => {
            tracing::debug!(component = appid.as_str(), "simulator component registered");
            open::start_pusher(&state.clone().into_inner(), appid.clone(), generation);
            HttpResponse::Ok().json(json!({ "registered": appid }))
        }
        Err(e) => bad_request(e),
    }
}

async fn authorize(state: State, path: web::Path<String>, body: web::Bytes) -> HttpResponse {
    let req: AuthorizeRequest = match control_body(&body, "authorization") {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    push_and_report(&state, state.authorize(&path, &req)).await
}

/// The body of `POST /sim/components/{appid}/unauthorize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Unauthorize {
    authorizer_appid: String,
}

async fn unauthorize(state: State, path: web::Path<String>, body: web::Bytes) -> HttpResponse {
    let req: Unauthorize = match control_body(&body, "unauthorization") {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    push_and_report(&state, state.unauthorize(&path, &req.authorizer_appid)).await
}

async fn push_ticket(state: State, path: web::Path<String>) -> HttpResponse {
    push_and_report(&state, state.ticket_event(&path)).await
}

/// The body of `POST /sim/components/{appid}/pushing`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pushing {
    on: bool,
}

async fn pushing(state: State, path: web::Path<String>, body: web::Bytes) -> HttpResponse {
    let req: Pushing = match control_body(&body, "pushing switch") {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    match state.set_pushing(&path, req.on) {
        Ok(()) => HttpResponse::Ok().json(json!({ "pushing": req.on })),
        Err(e) => bad_request(e),
    }
}

async fn break_refresh_token(
    state: State,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let req: RefreshTokenFault = match control_body(&body, "refresh token fault") {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    match state.break_refresh_token(&path, &req) {
        Ok(()) => HttpResponse::Ok().json(json!({ "broken": req.authorizer_appid })),
        Err(e) => bad_request(e),
    }
}

/// A control-API error: 400 with `{"error": "bad_request", "message": ...}`,
/// the message being the error's text.
fn bad_request(message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({
        "error": "bad_request",
        "message": message.to_string(),
    }))
}

/// A control-API body that is not the JSON the endpoint expects.
#[derive(Debug, thiserror::Error)]
#[error("invalid {what}: {source}")]
struct BadBody {
    /// What the body should have been, like `app registration`.
    what: &'static str,
    #[source]
    source: serde_json::Error,
}

/// Parses a control-API JSON body; errors saying what is wrong with it.
fn control_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &'static str,
) -> Result<T, BadBody> {
    serde_json::from_slice(body).map_err(|source| BadBody { what, source })
}

async fn register_app(state: State, body: web::Bytes) -> HttpResponse {
    let reg: AppRegistration = match control_body(&body, "app registration") {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let appid = reg.appid.clone();
    match state.register(reg) {
        Ok(()) => {
            tracing::debug!(appid = appid.as_str(), "simulator app registered");
            HttpResponse::Ok().json(json!({ "registered": appid }))
        }
        Err(e) => bad_request(e),
    }
}

/// `GET /sim/apps`: every registered app, its whitelist and counts; never a secret.
async fn list_apps(state: State) -> HttpResponse {
    HttpResponse::Ok().json(state.apps())
}

async fn add_fault(state: State, body: web::Bytes) -> HttpResponse {
    let spec: FaultSpec = match control_body(&body, "fault") {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    match state.add_fault(spec) {
        Ok(active) => HttpResponse::Ok().json(json!({ "active_faults": active })),
        Err(e) => bad_request(e),
    }
}

async fn list_faults(state: State) -> HttpResponse {
    HttpResponse::Ok().json(state.faults())
}

async fn clear_faults(state: State) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "cleared": state.clear_faults() }))
}

async fn stats(state: State) -> HttpResponse {
    HttpResponse::Ok().json(state.stats())
}

/// The body of `POST /sim/clock`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    advance_secs: u64,
}

async fn clock(state: State) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "now": state.clock.now_unix() }))
}

async fn advance_clock(state: State, body: web::Bytes) -> HttpResponse {
    let advance: Advance = match control_body(&body, "clock request") {
        Ok(a) => a,
        Err(e) => return bad_request(e),
    };
    if advance.advance_secs > MAX_ADVANCE_SECS {
        return bad_request(format!(
            "advance_secs {} is more than {MAX_ADVANCE_SECS} (about ten years)",
            advance.advance_secs
        ));
    }
    state
        .clock
        .advance(Duration::from_secs(advance.advance_secs));
    HttpResponse::Ok().json(json!({ "now": state.clock.now_unix() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_bodies_with_wrong_types_are_data_format_errors() {
        assert_eq!(stable_request(b"{").unwrap_err().errcode, 47001);
        assert_eq!(stable_request(b"[]").unwrap_err().errcode, 47001);
        assert_eq!(
            stable_request(br#"{"appid":1}"#).unwrap_err().errcode,
            47001
        );
        assert_eq!(
            stable_request(br#"{"force_refresh":"yes"}"#)
                .unwrap_err()
                .errcode,
            47001
        );
        let (creds, force) =
            stable_request(br#"{"grant_type":"client_credential","appid":"wx1","secret":""}"#)
                .unwrap();
        assert_eq!(creds.appid.as_deref(), Some("wx1"));
        assert!(creds.secret.is_none());
        assert!(!force);
    }
}
