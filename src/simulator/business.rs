//! The simulator's business APIs: enough of WeChat's (and WeCom's) ordinary
//! API surface to test the token-injecting proxy with real requests, each
//! validating its `access_token` as WeChat does (40001 superseded, 42001
//! expired, 40014 unknown, and 40014 when the parameter is given twice).
//!
//! - `GET /cgi-bin/user/info?openid=`: a user's profile (JSON).
//! - `POST /cgi-bin/message/custom/send` (and WeCom's `/cgi-bin/message/send`):
//!   a JSON message with `touser`.
//! - `POST /cgi-bin/media/upload?type=`: a multipart upload (field `media`).
//! - `GET /cgi-bin/media/get?media_id=`: the uploaded bytes, as a download.
//!
//! Invariant: uploaded media are held at most [`MEDIA_KEPT`] at a time and
//! [`MAX_MEDIA_BYTES`] each; counters never hold a token.

use std::collections::VecDeque;

use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::BytesMut;
use futures::StreamExt;
use serde_json::json;

use super::answers::{WxError, json_response};
use super::faults::Api;
use super::state::{SimState, TokenUse, check_token};

/// Uploads kept for download; the oldest goes first.
pub const MEDIA_KEPT: usize = 64;
/// The largest upload accepted (WeChat's limit for a video).
pub const MAX_MEDIA_BYTES: usize = 10 * 1024 * 1024;

/// One uploaded file.
#[derive(Debug)]
struct Media {
    id: String,
    appid: String,
    content_type: String,
    filename: String,
    bytes: bytes::Bytes,
}

/// The uploaded files, newest last.
#[derive(Debug, Default)]
pub(crate) struct MediaStore(VecDeque<Media>);

type State = web::Data<SimState>;

/// Mounts the business APIs.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/cgi-bin/user/info").route(web::get().to(user_info)))
        .service(web::resource("/cgi-bin/message/custom/send").route(web::post().to(send_message)))
        .service(web::resource("/cgi-bin/message/send").route(web::post().to(send_message)))
        .service(web::resource("/cgi-bin/media/upload").route(web::post().to(upload)))
        .service(web::resource("/cgi-bin/media/get").route(web::get().to(download)));
}

/// The query's values of `name`, in order.
fn values(req: &HttpRequest, name: &str) -> Vec<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// Checks the call's token (and applies a `business` fault): the token's
/// appid, or the answer to send instead.
async fn admit(state: &SimState, req: &HttpRequest, path: &str) -> Result<String, HttpResponse> {
    let tokens = values(req, "access_token");
    let appid = tokens.first().and_then(|t| state.appid_of_token(t));
    let answer = super::routes::faulted_call(state, Api::Business, appid.as_deref(), req).await;
    let mut inner = state.inner.lock();
    if req.headers().contains_key(header::AUTHORIZATION) {
        inner.stats.business_calls_with_authorization += 1;
    }
    if let Some(answer) = answer {
        count(&mut inner.stats, path, "fault");
        return Err(answer);
    }
    let now = state.clock.now_unix_ms();
    let result = match tokens.as_slice() {
        [] => Err(WxError::new(41001)),
        [token] => check_token(&mut inner, token, now, |kind| {
            !matches!(kind, TokenUse::Component)
        }),
        // WeChat reads one access_token; a second one is a broken client or proxy.
        _ => Err(WxError::with_message(
            40014,
            "invalid access_token: access_token is given more than once",
        )),
    };
    match result {
        Ok(appid) => Ok(appid),
        Err(e) => {
            count(&mut inner.stats, path, &e.errcode.to_string());
            Err(e.into_response())
        }
    }
}

fn count(stats: &mut super::Stats, path: &str, outcome: &str) {
    *stats
        .business_calls
        .entry(path.to_string())
        .or_default()
        .entry(outcome.to_string())
        .or_default() += 1;
}

fn ok(state: &SimState, path: &str) {
    count(&mut state.inner.lock().stats, path, "ok");
}

fn fail(state: &SimState, path: &str, errcode: i64, errmsg: &str) -> HttpResponse {
    count(&mut state.inner.lock().stats, path, &errcode.to_string());
    WxError::with_message(errcode, errmsg).into_response()
}

/// `GET /cgi-bin/user/info?openid=`.
async fn user_info(state: State, req: HttpRequest) -> HttpResponse {
    const PATH: &str = "/cgi-bin/user/info";
    if let Err(answer) = admit(&state, &req, PATH).await {
        return answer;
    }
    let Some(openid) = values(&req, "openid")
        .into_iter()
        .next()
        .filter(|o| !o.is_empty())
    else {
        return fail(&state, PATH, 40003, "invalid openid");
    };
    ok(&state, PATH);
    json_response(&json!({
        "subscribe": 1,
        "openid": openid,
        "nickname": "simulated user",
        "language": "zh_CN",
        "subscribe_time": state.clock.now_unix_ms() / 1000,
    }))
}

/// `POST /cgi-bin/message/custom/send` and WeCom's `/cgi-bin/message/send`.
async fn send_message(state: State, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let path = req.path().to_string();
    if let Err(answer) = admit(&state, &req, &path).await {
        return answer;
    }
    let Ok(message) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return fail(&state, &path, 47001, "data format error");
    };
    if message
        .get("touser")
        .and_then(|t| t.as_str())
        .is_none_or(str::is_empty)
    {
        return fail(&state, &path, 40003, "invalid openid");
    }
    ok(&state, &path);
    json_response(&json!({ "errcode": 0, "errmsg": "ok" }))
}

/// `POST /cgi-bin/media/upload?type=` with the file in the multipart field `media`.
async fn upload(state: State, req: HttpRequest, mut form: Multipart) -> HttpResponse {
    const PATH: &str = "/cgi-bin/media/upload";
    let appid = match admit(&state, &req, PATH).await {
        Ok(appid) => appid,
        Err(answer) => return answer,
    };
    let kind = values(&req, "type").into_iter().next().unwrap_or_default();
    if !matches!(
        kind.as_str(),
        "image" | "voice" | "video" | "thumb" | "file"
    ) {
        return fail(&state, PATH, 40004, "invalid media type");
    }
    let mut found = None;
    while let Some(field) = form.next().await {
        let Ok(mut field) = field else {
            return fail(&state, PATH, 41005, "media data missing");
        };
        if field.name() != Some("media") {
            continue;
        }
        let filename = field
            .content_disposition()
            .and_then(|d| d.get_filename())
            .unwrap_or("media")
            .to_string();
        let content_type = field
            .content_type()
            .map_or("application/octet-stream".to_string(), ToString::to_string);
        let mut bytes = BytesMut::new();
        while let Some(chunk) = field.next().await {
            let Ok(chunk) = chunk else {
                return fail(&state, PATH, 41005, "media data missing");
            };
            if bytes.len() + chunk.len() > MAX_MEDIA_BYTES {
                return fail(&state, PATH, 40006, "invalid media size");
            }
            bytes.extend_from_slice(&chunk);
        }
        found = Some((filename, content_type, bytes.freeze()));
    }
    let Some((filename, content_type, bytes)) = found.filter(|(_, _, b)| !b.is_empty()) else {
        return fail(&state, PATH, 41005, "media data missing");
    };
    let id = super::state::random_string(64);
    {
        let mut inner = state.inner.lock();
        let store = &mut inner.media.0;
        if store.len() >= MEDIA_KEPT {
            store.pop_front();
        }
        store.push_back(Media {
            id: id.clone(),
            appid,
            content_type,
            filename,
            bytes,
        });
    }
    ok(&state, PATH);
    json_response(&json!({
        "type": kind,
        "media_id": id,
        "created_at": state.clock.now_unix_ms() / 1000,
    }))
}

/// `GET /cgi-bin/media/get?media_id=`: the file, for the app that uploaded it.
async fn download(state: State, req: HttpRequest) -> HttpResponse {
    const PATH: &str = "/cgi-bin/media/get";
    let appid = match admit(&state, &req, PATH).await {
        Ok(appid) => appid,
        Err(answer) => return answer,
    };
    let id = values(&req, "media_id")
        .into_iter()
        .next()
        .unwrap_or_default();
    let found = {
        let inner = state.inner.lock();
        inner
            .media
            .0
            .iter()
            .find(|m| m.id == id && m.appid == appid)
            .map(|m| (m.content_type.clone(), m.filename.clone(), m.bytes.clone()))
    };
    let Some((content_type, filename, bytes)) = found else {
        return fail(&state, PATH, 40007, "invalid media_id");
    };
    ok(&state, PATH);
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}\"",
                filename.replace(['"', '\\', '\r', '\n'], "_")
            ),
        ))
        .body(bytes)
}
