//! The one error type of the HTTP API and its wire form.
//!
//! Owns [`ApiError`]: every failure a handler, the router or the body reader
//! can produce becomes one of these, and every one is answered as
//! `{"error": "<snake_case code>", "message": "<sentence>"}` (plus `errcode`
//! when WeChat gave one) with the status and headers contract §3 names.
//!
//! Invariant: messages are built only from fixed text, appids, numbers and
//! WeChat's scrubbed `errmsg`; never from a token, a secret, an API key or
//! raw request input.

use std::borrow::Cow;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// The `WWW-Authenticate` challenge sent with a 401 when no key was presented.
const CHALLENGE: &str = "Bearer realm=\"wxtoken\"";
/// The challenge sent with a 401 when a key was presented but is not known.
const CHALLENGE_INVALID: &str = "Bearer realm=\"wxtoken\", error=\"invalid_token\"";

/// A failed API request, ready to be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    /// WeChat's errcode behind the failure, when known.
    errcode: Option<i64>,
    /// Seconds for the `Retry-After` header.
    retry_after: Option<u64>,
    /// The `WWW-Authenticate` challenge of a 401.
    challenge: Option<&'static str>,
    /// The `Allow` header of a 405.
    allow: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errcode: Option<i64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            errcode: None,
            retry_after: None,
            challenge: None,
            allow: None,
        }
    }

    /// 409 `reload_unavailable`: the server was not started from a config file.
    pub fn reload_unavailable() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "reload_unavailable",
            "this server was not started from a configuration file, so it cannot reload one",
        )
    }

    /// 400 `bad_request`: the request itself is malformed.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 408 `request_timeout`: the request body did not fully arrive within
    /// `limit` (a slow or stalled client).
    pub fn body_timeout(limit: Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {}s; send the whole body at once, without pauses",
                limit.as_secs()
            ),
        )
    }

    /// 401 `unauthorized`: no API key was presented.
    pub fn missing_key() -> Self {
        ApiError {
            challenge: Some(CHALLENGE),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this endpoint needs an API key; send it as \"Authorization: Bearer <key>\"",
            )
        }
    }

    /// 401 `unauthorized`: the presented API key is not one of the configured clients.
    pub fn invalid_key() -> Self {
        ApiError {
            challenge: Some(CHALLENGE_INVALID),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the API key is not valid; check the \"Authorization: Bearer <key>\" header",
            )
        }
    }

    /// 403 `forbidden`: the caller is known but may not do this.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`: no endpoint has this path.
    pub fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "there is no endpoint at this path; the API lives under /v1/token/{appid} and /v1/accounts",
        )
    }

    /// 405 `method_not_allowed`: the endpoint exists but not with this method.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this endpoint only accepts {allow}"),
            )
        }
    }

    /// 404 `unknown_appid`: the appid is not configured.
    pub fn unknown_appid(appid: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_appid",
            format!("account {appid} is not configured on this server"),
        )
    }

    /// 410 `authorization_revoked`: the merchant revoked the Open Platform
    /// authorization of this authorizer; it is never served again.
    pub fn authorization_revoked(appid: &str) -> Self {
        Self::new(
            StatusCode::GONE,
            "authorization_revoked",
            format!(
                "the merchant revoked the authorization of authorizer {appid}; it is served again only after the merchant authorizes the platform again"
            ),
        )
    }

    /// 400 `bad_event`: a pushed Open Platform event that is refused
    /// (signature, ciphertext, appid, size or shape); nothing changed.
    pub fn bad_event(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_event", message)
    }

    /// 404 `unknown_component`: no such component is configured.
    pub fn unknown_component(appid: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_component",
            format!(
                "component {appid} is not configured on this server; add it under `components:` in accounts.yaml"
            ),
        )
    }

    /// 404 `unknown_ticket`: the account has no such ticket configured.
    pub fn unknown_ticket(appid: &str, kind: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_ticket",
            format!(
                "account {appid} has no {kind} ticket; add it to the account's `tickets:` in accounts.yaml"
            ),
        )
    }

    /// 503 `ticket_unavailable`: no usable ticket can be given now.
    pub fn ticket_unavailable(
        message: impl Into<Cow<'static, str>>,
        retry_after_secs: u64,
    ) -> Self {
        ApiError {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ticket_unavailable",
                message,
            )
        }
    }

    /// 503 `token_unavailable`: no usable token can be given now; retry after
    /// `retry_after_secs` (at least 1).
    pub fn token_unavailable(message: impl Into<Cow<'static, str>>, retry_after_secs: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "token_unavailable",
                message,
            )
        }
    }

    /// 429 `refresh_throttled`: WeChat's limits forbid another refresh for `retry_after`.
    pub fn refresh_throttled(appid: &str, retry_after: Duration) -> Self {
        let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        ApiError {
            retry_after: Some(secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "refresh_throttled",
                format!(
                    "the token of {appid} was refreshed moments ago and WeChat limits how often it may be renewed; try again in {secs}s"
                ),
            )
        }
    }

    /// 503 `not_ready` of `/readyz`.
    pub fn not_ready(message: String) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
    }

    /// 500 `internal_error`: a bug or a broken invariant; the message says which.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// The same error carrying WeChat's `errcode`.
    /// This error as the answer to send.
    pub fn respond(&self) -> HttpResponse {
        actix_web::ResponseError::error_response(self)
    }

    pub fn with_errcode(mut self, errcode: Option<i64>) -> Self {
        self.errcode = errcode;
        self
    }

    /// The snake_case code of the body's `error` field.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The sentence of the body's `message` field.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON body (without headers), for answers that extend it with
    /// `extra` fields.
    pub(crate) fn body_json<'a>(
        &self,
        extra: impl IntoIterator<Item = (&'a str, serde_json::Value)>,
    ) -> Vec<u8> {
        let body = Body {
            error: self.code,
            message: &self.message,
            errcode: self.errcode,
        };
        let mut value = serde_json::to_value(&body).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            for (key, extra) in extra {
                map.insert(key.to_string(), extra);
            }
        }
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// The response with every header of this error and `body`.
    pub(crate) fn respond_with(&self, body: Vec<u8>) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        res.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
        if let Some(secs) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, secs));
        }
        if let Some(challenge) = self.challenge {
            res.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            ));
        }
        if let Some(allow) = self.allow {
            res.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
        }
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        res.body(body)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        self.respond_with(self.body_json(None))
    }
}
