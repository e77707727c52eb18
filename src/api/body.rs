//! Reading small JSON request bodies.
//!
//! Owns the body limits of the API ([`MAX_BODY_BYTES`], [`BODY_TIMEOUT`]) and
//! the translation of every body problem (too large, unreadable, not JSON,
//! wrong shape) into a 400 `bad_request`, and of a body that does not arrive
//! in time into a 408 `request_timeout`. Messages never quote the body: it
//! may hold a token. Invariant: no client holds a handler (and its
//! connection) longer than [`BODY_TIMEOUT`] by sending its body slowly.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, web};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The largest request body accepted, in bytes (contract §3: 8 KiB).
pub const MAX_BODY_BYTES: usize = 8192;

/// How long a client may take to send a whole request body, counted from
/// when the handler starts reading it. 8 KiB take milliseconds on any real
/// link; actix-web bounds only the request head (5 s), not the body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the whole body of `req` (at most [`MAX_BODY_BYTES`]) and decodes it
/// as JSON into `T`. `shape` shows the expected body in messages, e.g.
/// `{"stale_token": "..."}`.
///
/// Errors with 400 when the body is larger than the limit, cannot be read, is
/// empty, is not JSON or does not have the expected fields, and with 408 when
/// it has not fully arrived within [`BODY_TIMEOUT`]. Any content type is
/// accepted, so `curl -d` works without `-H content-type:`.
pub async fn read_json<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    shape: &'static str,
) -> Result<T, ApiError> {
    read_json_up_to(req, payload, MAX_BODY_BYTES, shape).await
}

/// [`read_json`] with a limit of `limit` bytes instead of 8 KiB (imports).
pub async fn read_json_up_to<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    shape: &'static str,
) -> Result<T, ApiError> {
    let body = read_bytes(req, payload, limit, shape).await?;
    decode_json(&body, b'{', shape)
}

/// Reads a JSON array body of at most `limit` bytes (an import's list).
pub async fn read_json_list_up_to<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    shape: &'static str,
) -> Result<Vec<T>, ApiError> {
    let body = read_bytes(req, payload, limit, shape).await?;
    decode_json(&body, b'[', shape)
}

/// Decodes `body` as JSON whose first character must be `opener` (`{` or `[`).
fn decode_json<T: DeserializeOwned>(
    body: &[u8],
    opener: u8,
    shape: &'static str,
) -> Result<T, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::bad_request(format!(
                "the request body is empty; send {shape}"
            )));
        }
        // serde would also accept a struct written as an array; the API does not.
        Some(b) if *b == opener => {}
        Some(_) => {
            let what = if opener == b'[' {
                "a JSON array"
            } else {
                "a JSON object"
            };
            return Err(ApiError::bad_request(format!(
                "the request body is not {what}; send {shape}"
            )));
        }
    }
    serde_json::from_slice(body).map_err(|e| describe(&e, shape))
}

/// Reads the whole body of `req`, at most `limit` bytes, within
/// [`BODY_TIMEOUT`]. `shape` names what to send in messages.
///
/// Errors with 400 when the body is larger than `limit` or cannot be read,
/// 408 when it has not fully arrived in time.
pub async fn read_bytes(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    shape: &'static str,
) -> Result<web::BytesMut, ApiError> {
    let too_large = || {
        ApiError::bad_request(format!(
            "the request body is larger than {limit} bytes; send {shape}"
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut body =
            web::BytesMut::with_capacity(declared.map_or(256, |len| len as usize).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|_| ApiError::bad_request("the request body could not be read"))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    actix_web::rt::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| ApiError::body_timeout(BODY_TIMEOUT))?
}

/// A message for a JSON decoding error that does not quote the input.
fn describe(e: &serde_json::Error, shape: &'static str) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(format!(
            "the request body is not valid JSON (line {}, column {}); send {shape}",
            e.line(),
            e.column()
        )),
        Category::Data => {
            // serde's "missing field `x`" names only the field, never a value.
            let text = e.to_string();
            match text
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split_once('`'))
            {
                Some((field, _)) => ApiError::bad_request(format!(
                    "the request body has no \"{field}\" field; send {shape}"
                )),
                None => ApiError::bad_request(format!(
                    "the request body does not have the expected fields and types; send {shape}"
                )),
            }
        }
    }
}
