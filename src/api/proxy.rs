//! The token-injecting API proxy (contract §7): a WeChat API call sent to
//! wxtoken is forwarded to the account's WeChat base URLs with the account's
//! current token in place of the one it carried.
//!
//! Two doors: any path outside wxtoken's own (`/v1/`, `/healthz`, `/readyz`,
//! `/metrics`, `/ui`) whose query carries `access_token` ([`by_token`]:
//! the token must be one wxtoken handed out, current or still inside its
//! serve time, looked up in the directory's [`crate::snapshot::IssuedTokens`]);
//! and `/v1/proxy/{appid}/<wechat path>` with a bearer key ([`by_key`]), for
//! callers that never hold a token.
//!
//! Owns [`Proxy`] (the forwarding client, the limits in force, the in-flight
//! count per client), what is forwarded (the query with the token
//! **replaced**, never appended; the headers but hop-by-hop ones and
//! `Authorization`; the body streamed both ways), and the one retry.
//!
//! Invariants:
//! - A token wxtoken did not hand out is answered 40014 here and nothing is
//!   forwarded; one past its serve time gets 42001.
//! - Only the account's configured base URLs are contacted
//!   (`wechat::forward`); WeCom apps use `upstream.wecom_base_urls`.
//! - No body is held whole beyond [`RETRY_BUFFER`]: a longer upload is
//!   streamed to WeChat as it arrives (and is not retried); an answer is
//!   read ahead only up to [`INSPECT_LIMIT`] when it is JSON or text, to see
//!   its `errcode`, and otherwise streamed to the client as it arrives.
//! - When WeChat answers 40001, 40014 or 42001 for the token injected, the
//!   account runs compare-and-refresh with that token (one refresh shared by
//!   every caller reporting it) and the request is sent **once** more, with
//!   the new token, when its body is buffered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use url::Url;

use super::face::WxError;
use super::state::AppState;
use crate::account::Reason;
use crate::config::{AccountKind, Config, ProxyConfig};
use crate::domain::AccessToken;
use crate::metrics::Metrics;
use crate::registry::RouteRefresh;
use crate::snapshot::{AccountSlot, Issued};
use crate::wechat::{Forward, ForwardBody, ForwardError, Forwarder};

/// Request bodies up to this size are held whole, so that the request can
/// be sent again after WeChat rejected the injected token.
pub const RETRY_BUFFER: usize = 1024 * 1024;

/// How much of a JSON or text answer is read ahead to see its `errcode`.
pub const INSPECT_LIMIT: usize = 64 * 1024;

/// The `route` label of requests forwarded by [`by_token`] in the HTTP metrics.
pub const PROXY_ROUTE: &str = "proxy";

/// WeChat's answers for a token it does not accept.
const TOKEN_ERRCODES: [i64; 3] = [40001, 40014, 42001];

/// Request headers never forwarded (hop-by-hop ones, the caller's
/// credentials, and those the forwarding client sets itself).
const DROPPED_REQUEST: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "content-length",
    "accept-encoding",
    "expect",
];

/// Answer headers never passed back.
const DROPPED_ANSWER: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The configuration the proxy works with; swapped whole on reload.
#[derive(Debug)]
struct Settings {
    base_urls: Vec<Url>,
    wecom_base_urls: Vec<Url>,
    limits: ProxyConfig,
}

impl Settings {
    fn of(config: &Config) -> Settings {
        Settings {
            base_urls: config.upstream.base_urls.clone(),
            wecom_base_urls: config.upstream.wecom_urls().to_vec(),
            limits: config.proxy.clone(),
        }
    }
}

/// The proxy's client, limits and per-client in-flight counts.
pub struct Proxy {
    forwarder: Forwarder,
    settings: ArcSwap<Settings>,
    in_flight: Mutex<HashMap<Box<str>, usize, foldhash::fast::RandomState>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("settings", &self.settings.load())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// The proxy for `config`; errors when the TLS stack cannot start.
    pub fn new(config: &Config) -> Result<Proxy, String> {
        Ok(Proxy {
            forwarder: Forwarder::new(
                config.upstream.timeout,
                config.proxy.max_in_flight_per_client.max(32),
            )?,
            settings: ArcSwap::from_pointee(Settings::of(config)),
            in_flight: Mutex::new(HashMap::default()),
        })
    }

    /// Takes the base URLs and limits of a reloaded configuration.
    pub fn reconfigure(&self, config: &Config) {
        self.settings.store(Arc::new(Settings::of(config)));
    }

    /// A slot for one more request of `client`, or `None` at its limit.
    fn enter(self: &Arc<Self>, client: &str, max: usize) -> Option<InFlight> {
        let mut map = self.in_flight.lock();
        let count = map.entry(client.into()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(InFlight {
            proxy: self.clone(),
            client: client.into(),
        })
    }
}

/// One request in flight for a client; counted until dropped (with the
/// answer's stream, for a streamed answer).
struct InFlight {
    proxy: Arc<Proxy>,
    client: Box<str>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self.proxy.in_flight.lock();
        if let Some(count) = map.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.client);
            }
        }
    }
}

/// True for paths that are wxtoken's own, never forwarded.
pub fn is_own_path(path: &str) -> bool {
    path == "/v1"
        || path.starts_with("/v1/")
        || matches!(path, "/" | "/healthz" | "/readyz" | "/metrics" | "/ui")
        || path.starts_with("/ui/")
}

/// The answer of every path no endpoint matches: forwarded when it is a
/// WeChat API call carrying a token (see the module), else the JSON 404.
pub async fn by_token(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let forwarded = token_door(&req, payload, &state).await;
    let Some(mut res) = forwarded else {
        return super::ApiError::no_route().respond();
    };
    res.extensions_mut().insert(super::RouteLabel(PROXY_ROUTE));
    res
}

/// [`by_token`]'s answer, or `None` when the request is not a WeChat API
/// call carrying a token.
async fn token_door(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Option<HttpResponse> {
    let path = req.path();
    let presented = if is_own_path(path) {
        None
    } else {
        url::form_urlencoded::parse(req.query_string().as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
    };
    let presented = presented?;
    let group = Metrics::proxy_group(path);
    let started = Instant::now();
    let now_ms = state.clock.now_unix_ms();
    let slot = match state.directory.issued().lookup(&presented, now_ms) {
        Issued::Served(appid) => state.directory.get(&appid),
        Issued::Expired(_) => {
            return Some(local(
                state,
                group,
                "expired_token",
                WxError::new(
                    42001,
                    "access_token expired: its serve time is over; get the current token from wxtoken (/cgi-bin/token)",
                ),
                StatusCode::OK,
            ));
        }
        Issued::Unknown => None,
    };
    let Some(slot) = slot else {
        return Some(local(
            state,
            group,
            "unknown_token",
            WxError::new(
                40014,
                "invalid access_token: this is not a token wxtoken handed out, so nothing was forwarded",
            ),
            StatusCode::OK,
        ));
    };
    let client = match req.peer_addr() {
        Some(peer) => format!("ip:{}", peer.ip().to_canonical()),
        None => "ip:unknown".to_string(),
    };
    let path = path.to_string();
    let answer = forward(
        req,
        payload,
        state,
        slot,
        Call {
            path,
            group,
            client,
            name: None,
            started,
        },
    )
    .await;
    Some(answer)
}

/// `/v1/proxy/{appid}/<wechat path>` with a bearer key: the same forwarding
/// for a caller that holds no token.
pub async fn by_key(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let started = Instant::now();
    let (slot, name) = {
        let auth = state.auth.load();
        let caller = match auth.authenticate(&req) {
            Ok(caller) => caller,
            Err(e) => return e.respond(),
        };
        match super::path_account(&req, &caller, &state) {
            Ok(slot) => (slot, caller.client()),
            Err(e) => return e.respond(),
        }
    };
    // The WeChat path as sent (percent-encoding kept; the matched one is decoded).
    let rest = req
        .path()
        .strip_prefix("/v1/proxy/")
        .and_then(|p| p.split_once('/'))
        .map_or("", |(_, rest)| rest);
    if rest.is_empty() {
        return super::ApiError::bad_request(
            "name the WeChat API after the appid, e.g. /v1/proxy/{appid}/cgi-bin/user/info?openid=...",
        )
        .respond();
    }
    let path = format!("/{rest}");
    let group = Metrics::proxy_group(&path);
    let client = match &name {
        Some(name) => format!("key:{name}"),
        None => "key:open".to_string(),
    };
    forward(
        &req,
        payload,
        &state,
        slot,
        Call {
            path,
            group,
            client,
            name,
            started,
        },
    )
    .await
}

/// One proxied call as the doors identified it.
struct Call {
    /// The WeChat path to forward to (percent-encoding as sent).
    path: String,
    group: &'static str,
    /// Whose in-flight limit it counts against.
    client: String,
    /// The API client's name, for the stale report's limits.
    name: Option<Arc<str>>,
    started: Instant,
}

/// An answer made here, counted under `outcome`.
fn local(
    state: &AppState,
    group: &'static str,
    outcome: &'static str,
    error: WxError,
    status: StatusCode,
) -> HttpResponse {
    count(state, group, outcome);
    error.respond(status)
}

fn count(state: &AppState, group: &'static str, outcome: &'static str) {
    state
        .metrics
        .proxy_requests
        .with_label_values(&[group, outcome])
        .inc();
}

/// True when a path segment, decoded, is `.` or `..` (which URL parsing
/// would resolve, so that the forwarded path would differ from the one sent).
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        decoded == "." || decoded == ".."
    })
}

/// `query` with every `access_token` replaced by one `access_token=token`
/// (in the place of the first; added at the end when there was none); every
/// other parameter is kept byte for byte.
pub fn inject_token(query: &str, token: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let mut out = String::with_capacity(query.len() + encoded.len() + 16);
    let mut done = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split('=').next().unwrap_or_default();
        let is_token = url::form_urlencoded::parse(key.as_bytes())
            .next()
            .is_some_and(|(k, _)| k == "access_token");
        if is_token {
            if done {
                continue;
            }
            done = true;
            push_pair(&mut out, "access_token=");
            out.push_str(&encoded);
        } else {
            push_pair(&mut out, pair);
        }
    }
    if !done {
        push_pair(&mut out, "access_token=");
        out.push_str(&encoded);
    }
    out
}

fn push_pair(out: &mut String, pair: &str) {
    if !out.is_empty() {
        out.push('&');
    }
    out.push_str(pair);
}

/// The request's headers as forwarded: all but [`DROPPED_REQUEST`] and
/// those the `Connection` header names.
fn forwarded_headers(req: &HttpRequest) -> reqwest::header::HeaderMap {
    let named: Vec<String> = req
        .headers()
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = reqwest::header::HeaderMap::new();
    for (name, value) in req.headers() {
        let n = name.as_str();
        if DROPPED_REQUEST.contains(&n) || named.iter().any(|c| c == n) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(n.as_bytes()),
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append(name, value);
        }
    }
    out
}

/// How the request body reached us so far.
enum Head {
    /// The whole body (at most [`RETRY_BUFFER`]).
    Whole(Bytes),
    /// The first part, the rest still in the payload.
    Partial(BytesMut, web::Payload),
}

/// Why the body could not be taken.
enum BodyError {
    TooLarge,
    Unreadable,
}

/// Reads the body up to [`RETRY_BUFFER`] (and never past `max`).
async fn read_head(mut payload: web::Payload, max: u64) -> Result<Head, BodyError> {
    let mut head = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        if (head.len() + chunk.len()) as u64 > max {
            return Err(BodyError::TooLarge);
        }
        head.extend_from_slice(&chunk);
        if head.len() > RETRY_BUFFER {
            return Ok(Head::Partial(head, payload));
        }
    }
    Ok(Head::Whole(head.freeze()))
}

/// A body for reqwest that sends `head`, then the rest of `payload` as it
/// arrives (actix's payload lives on this worker's thread, so a local task
/// pumps it into a channel), failing the upload past `max` bytes.
fn stream_body(head: BytesMut, mut payload: web::Payload, max: u64) -> reqwest::Body {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    actix_web::rt::spawn(async move {
        let mut total = head.len() as u64;
        if tx.send(Ok(head.freeze())).await.is_err() {
            return;
        }
        while let Some(chunk) = payload.next().await {
            let item = match chunk {
                Ok(chunk) => {
                    total += chunk.len() as u64;
                    if total > max {
                        Err(std::io::Error::other(
                            "the request body is over proxy.max_body",
                        ))
                    } else {
                        Ok(chunk)
                    }
                }
                Err(_) => Err(std::io::Error::other("the request body could not be read")),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    reqwest::Body::wrap_stream(rx)
}

/// An answer of WeChat, read ahead as far as needed.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    /// The whole body when it was read (JSON or text within [`INSPECT_LIMIT`]).
    whole: Option<Bytes>,
    /// Otherwise: what was read of it, and the rest.
    partial: Option<(Bytes, reqwest::Response)>,
    errcode: Option<i64>,
}

/// Reads `resp` ahead when it may be a WeChat error (JSON or text that fits
/// [`INSPECT_LIMIT`]).
async fn inspect(mut resp: reqwest::Response) -> Result<Answer, ForwardError> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let textual = content_type.is_empty()
        || content_type.contains("json")
        || content_type.starts_with("text/");
    let small = resp
        .content_length()
        .is_none_or(|len| len <= INSPECT_LIMIT as u64);
    if !(textual && small) {
        return Ok(Answer {
            status,
            headers,
            whole: None,
            partial: Some((Bytes::new(), resp)),
            errcode: None,
        });
    }
    let mut read = BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                read.extend_from_slice(&chunk);
                if read.len() > INSPECT_LIMIT {
                    return Ok(Answer {
                        status,
                        headers,
                        whole: None,
                        partial: Some((read.freeze(), resp)),
                        errcode: None,
                    });
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(if e.is_timeout() {
                    ForwardError::Timeout
                } else {
                    ForwardError::Failed
                });
            }
        }
    }
    let whole = read.freeze();
    let errcode = errcode_of(&whole);
    Ok(Answer {
        status,
        headers,
        whole: Some(whole),
        partial: None,
        errcode,
    })
}

/// The `errcode` of a WeChat JSON answer, when it has a non-zero one.
fn errcode_of(body: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Errcode {
        errcode: Option<i64>,
    }
    serde_json::from_slice::<Errcode>(body)
        .ok()
        .and_then(|e| e.errcode)
        .filter(|code| *code != 0)
}

impl Answer {
    fn token_rejected(&self) -> bool {
        self.errcode.is_some_and(|c| TOKEN_ERRCODES.contains(&c))
    }

    /// The bounded `outcome` label of this answer.
    fn outcome(&self) -> &'static str {
        match self.status {
            500..=599 => "http_5xx",
            400..=499 => "http_4xx",
            _ if self.token_rejected() => "token_rejected",
            _ if self.errcode.is_some() => "errcode",
            _ => "ok",
        }
    }
}

/// Forwards `call` for `slot`'s account: limits, body, send, the one retry
/// after a rejected token, the answer.
async fn forward(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    slot: Arc<AccountSlot>,
    call: Call,
) -> HttpResponse {
    let group = call.group;
    let proxy = state.proxy.clone();
    let settings = proxy.settings.load_full();
    let limits = &settings.limits;
    if has_dot_segment(&call.path) {
        return local(
            state,
            group,
            "bad_request",
            WxError::new(40066, "invalid url: the path has . or .. segments"),
            StatusCode::BAD_REQUEST,
        );
    }
    let Some(guard) = proxy.enter(&call.client, limits.max_in_flight_per_client) else {
        let mut res = local(
            state,
            group,
            "limited",
            WxError::busy(format!(
                "this client has {} proxied requests in flight (proxy.max_in_flight_per_client); retry when one has finished",
                limits.max_in_flight_per_client
            )),
            StatusCode::TOO_MANY_REQUESTS,
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return res;
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body) {
        return too_large(state, group, limits.max_body);
    }
    let now_ms = state.clock.now_unix_ms();
    let Some(injected) = slot.token().filter(|t| t.usable_secs(now_ms).is_some()) else {
        let message = super::token::unavailable(&slot, now_ms)
            .message()
            .to_string();
        let mut res = local(
            state,
            group,
            "unavailable",
            WxError::busy(message),
            StatusCode::SERVICE_UNAVAILABLE,
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return res;
    };
    let head =
        match actix_web::rt::time::timeout(limits.timeout, read_head(payload, limits.max_body))
            .await
        {
            Ok(Ok(head)) => head,
            Ok(Err(BodyError::TooLarge)) => return too_large(state, group, limits.max_body),
            Ok(Err(BodyError::Unreadable)) | Err(_) => {
                return local(
                    state,
                    group,
                    "bad_request",
                    WxError::new(
                        44002,
                        "empty post data: the request body could not be read in time",
                    ),
                    StatusCode::BAD_REQUEST,
                );
            }
        };
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut headers = forwarded_headers(req);
    let (body, buffered) = match head {
        Head::Whole(bytes) => (ForwardBody::Buffered(bytes.clone()), Some(bytes)),
        Head::Partial(head, rest) => {
            if let Some(len) = declared
                && let Ok(value) = reqwest::header::HeaderValue::from_str(&len.to_string())
            {
                headers.insert(reqwest::header::CONTENT_LENGTH, value);
            }
            (
                ForwardBody::Streamed(stream_body(head, rest, limits.max_body)),
                None,
            )
        }
    };
    let base_urls = match slot.kind {
        AccountKind::Wecom { .. } => &settings.wecom_base_urls,
        _ => &settings.base_urls,
    };
    let query = req.query_string();
    let send = |token: &AccessToken, body: ForwardBody| {
        let query = inject_token(query, token.expose());
        let headers = headers.clone();
        let method = method.clone();
        let forwarder = proxy.forwarder.clone();
        let path = call.path.clone();
        let timeout = limits.timeout;
        async move {
            let resp = forwarder
                .send(Forward {
                    method,
                    base_urls,
                    path: &path,
                    query: &query,
                    headers,
                    body,
                    timeout,
                })
                .await?;
            inspect(resp).await
        }
    };
    let mut answer = match send(&injected.token, body).await {
        Ok(answer) => answer,
        Err(e) => return unreachable(state, group, e),
    };
    if answer.token_rejected()
        && let Some(bytes) = buffered
    {
        let origin = super::origin(
            req,
            if call.name.is_some() {
                "http"
            } else {
                "http_token"
            },
        );
        let result = super::refresh::route_refresh(
            state,
            &origin,
            crate::audit::Cause::ProxyRetry,
            RouteRefresh {
                appid: slot.appid.clone(),
                reason: Reason::StaleReport,
                stale: Some(injected.token.clone()),
                client: call.name.clone(),
            },
        )
        .await;
        if let Ok(Ok(outcome)) = result
            && outcome.record.token != injected.token
            && outcome
                .record
                .usable_secs(state.clock.now_unix_ms())
                .is_some()
        {
            answer = match send(&outcome.record.token, ForwardBody::Buffered(bytes)).await {
                Ok(again) => again,
                Err(e) => {
                    state
                        .metrics
                        .proxy_retries
                        .with_label_values(&[group, e.outcome()])
                        .inc();
                    return unreachable(state, group, e);
                }
            };
            state
                .metrics
                .proxy_retries
                .with_label_values(&[group, answer.outcome()])
                .inc();
        }
    }
    count(state, group, answer.outcome());
    state
        .metrics
        .proxy_duration
        .with_label_values(&[group])
        .observe(call.started.elapsed().as_secs_f64());
    respond(answer, guard)
}

/// 413 for a body over `proxy.max_body`.
fn too_large(state: &AppState, group: &'static str, max: u64) -> HttpResponse {
    local(
        state,
        group,
        "too_large",
        WxError::new(
            45002,
            format!(
                "content size out of limit: the request body is over proxy.max_body ({max} bytes)"
            ),
        ),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
}

/// 502 or 504 when WeChat could not be reached.
fn unreachable(state: &AppState, group: &'static str, e: ForwardError) -> HttpResponse {
    let status = match e {
        ForwardError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    local(
        state,
        group,
        e.outcome(),
        WxError::busy(e.to_string()),
        status,
    )
}

/// WeChat's answer, passed on: its status, its headers but hop-by-hop ones,
/// its body (streamed unless already read); the client's in-flight slot is
/// held until the last byte.
fn respond(answer: Answer, guard: InFlight) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut builder = HttpResponse::build(status);
    for (name, value) in &answer.headers {
        let n = name.as_str();
        if DROPPED_ANSWER.contains(&n) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            builder.append_header((name, value));
        }
    }
    match (answer.whole, answer.partial) {
        (Some(whole), _) => {
            drop(guard);
            builder.body(whole)
        }
        (None, Some((read, rest))) => {
            if let Some(len) = rest.content_length() {
                builder.no_chunking(len);
            }
            let head =
                futures::stream::iter((!read.is_empty()).then(|| Ok::<_, reqwest::Error>(read)));
            let body = head.chain(rest.bytes_stream()).map(move |chunk| {
                let _held = &guard;
                chunk
            });
            builder.streaming(body)
        }
        (None, None) => builder.finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_replaced_never_appended() {
        assert_eq!(
            inject_token("access_token=OLD&openid=o1", "NEW"),
            "access_token=NEW&openid=o1"
        );
        assert_eq!(
            inject_token("openid=o1&access_token=OLD", "NEW"),
            "openid=o1&access_token=NEW"
        );
        assert_eq!(
            inject_token("access_token=A&x=%E4%B8%AD+1&access_token=B", "NEW"),
            "access_token=NEW&x=%E4%B8%AD+1"
        );
        assert_eq!(
            inject_token("access%5Ftoken=A&y=2", "NEW"),
            "access_token=NEW&y=2"
        );
        assert_eq!(inject_token("", "NEW"), "access_token=NEW");
        assert_eq!(
            inject_token("type=image", "a+b/c="),
            "type=image&access_token=a%2Bb%2Fc%3D"
        );
        // A parameter that merely ends in the name is not the token.
        assert_eq!(
            inject_token("component_access_token=C", "NEW"),
            "component_access_token=C&access_token=NEW"
        );
    }

    #[test]
    fn dot_segments_are_refused_however_they_are_spelled() {
        for path in [
            "/cgi-bin/../sim/apps",
            "/./x",
            "/a/%2e%2e/b",
            "/a/%2E/b",
            "/..",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in ["/cgi-bin/user/info", "/a.b/c", "/...", "/a/..b"] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn own_paths_are_never_forwarded() {
        for path in [
            "/v1/token/x",
            "/v1",
            "/healthz",
            "/readyz",
            "/metrics",
            "/ui",
            "/ui/app.js",
            "/",
        ] {
            assert!(is_own_path(path), "{path}");
        }
        for path in [
            "/cgi-bin/user/info",
            "/wxa/getwxacode",
            "/v1x",
            "/sns/userinfo",
            "/uix",
            "/status",
        ] {
            assert!(!is_own_path(path), "{path}");
        }
    }

    #[test]
    fn only_nonzero_errcodes_count() {
        assert_eq!(
            errcode_of(br#"{"errcode":40001,"errmsg":"x"}"#),
            Some(40001)
        );
        assert_eq!(errcode_of(br#"{"errcode":0,"errmsg":"ok"}"#), None);
        assert_eq!(errcode_of(br#"{"ip_list":[]}"#), None);
        assert_eq!(errcode_of(b"\x89PNG"), None);
    }
}
