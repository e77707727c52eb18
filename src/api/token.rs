//! `GET /v1/token/{appid}`: the hot read path, and the token answer shared by
//! every endpoint that hands out a token.
//!
//! Owns the wire shape `{"appid","access_token","expires_in","expires_at",
//! "fetched_at"}` and its `Cache-Control`, and the 503 `token_unavailable`
//! answer for an account without a usable token.
//!
//! Also the long-poll of contract §8 (`?wait=60s&after=<fetched_at>`): the
//! request is held on the slot's change notification until a newer token is
//! published, and then answered the same way.
//!
//! Invariants: a read never waits for an actor: it loads the published
//! snapshot (auth table, directory, slot) and answers (a long-poll waits for
//! the slot, never for an actor); `expires_in` comes only
//! from [`TokenRecord::usable_secs`], so no answer lets a client keep a token
//! past its serve time; `expires_at` = now + `expires_in`.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use super::state::AppState;
use crate::domain::AppId;
use crate::snapshot::{AccountSlot, State, TokenRecord};

use super::error::ApiError;
use super::path_account;

/// The longest `max-age` a token answer allows caches (contract §3).
pub const MAX_CACHE_SECS: u64 = 60;

/// `Retry-After` for an account that is disabled in the configuration.
const DISABLED_RETRY_SECS: u64 = 300;

/// `Cache-Control: private, max-age=N` for every N up to [`MAX_CACHE_SECS`],
/// built once so that answering does not format a header.
static CACHE_CONTROL: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    (0..=MAX_CACHE_SECS)
        .map(|n| {
            HeaderValue::from_str(&format!("private, max-age={n}"))
                .unwrap_or(HeaderValue::from_static("private, max-age=0"))
        })
        .collect()
});

/// `GET /v1/token/{appid}`: the current token of an account.
///
/// Errors: 401 without a valid key, 400 for a malformed appid, 403 when the
/// appid is outside the caller's scope, 404 when it is not configured, 503
/// when the account has no usable token.
pub async fn get_token(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let slot = {
        let auth = state.auth.load();
        let caller = auth.authenticate(&req)?;
        path_account(&req, &caller, &state)?
    };
    if !req.query_string().is_empty()
        && let Some(hold) = Hold::of_query(req.query_string())?
    {
        return long_poll(&state, slot, hold).await;
    }
    current(&state, &slot)
}

/// The answer `GET /v1/token/{appid}` gives now.
fn current(state: &AppState, slot: &AccountSlot) -> Result<HttpResponse, ApiError> {
    let now_ms = state.clock.now_unix_ms();
    match slot.token() {
        Some(record) => token_response(slot, &record, now_ms, None),
        None => Err(unavailable(slot, now_ms)),
    }
}

/// The longest `wait` of a long-poll (contract §8).
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// The share of a long-poll's `wait` its end may come early by, at random,
/// so that clients that began together do not all ask again together.
const WAIT_JITTER: f64 = 0.1;

/// A long-poll: `?wait=<duration>&after=<fetched_at>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hold {
    /// How long to hold the request at most (≤ [`MAX_WAIT`]).
    wait: Duration,
    /// Answer once the token's `fetched_at` (Unix seconds) is later than
    /// this; `None`: once there is a usable token.
    after: Option<i64>,
}

impl Hold {
    /// The long-poll a query asks for: `None` without `wait` (or with
    /// `wait=0`). Other parameters are ignored.
    ///
    /// Errors with 400 for a `wait` that is not a duration (`60s`, `2m`,
    /// `1500ms`, or whole seconds) of at most five minutes, or an `after`
    /// that is not whole Unix seconds.
    pub(crate) fn of_query(query: &str) -> Result<Option<Hold>, ApiError> {
        let mut wait = None;
        let mut after = None;
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*name {
                "wait" => wait = Some(parse_wait(&value)?),
                "after" => {
                    after = Some(value.trim().parse::<i64>().map_err(|_| {
                        ApiError::bad_request(
                            "`after` must be the `fetched_at` of the token you have: whole Unix seconds, e.g. after=1700000000",
                        )
                    })?)
                }
                _ => {}
            }
        }
        Ok(wait
            .filter(|w| !w.is_zero())
            .map(|wait| Hold { wait, after }))
    }

    /// True when `record` is what the hold waits for at `now_ms`.
    fn satisfied_by(&self, record: Option<&TokenRecord>, now_ms: i64) -> bool {
        record.is_some_and(|r| {
            r.usable_secs(now_ms).is_some()
                && self
                    .after
                    .is_none_or(|after| r.fetched_at_ms.div_euclid(1000) > after)
        })
    }

    /// When the hold ends, `wait` after `start` less up to [`WAIT_JITTER`] of it.
    fn deadline(&self, start: tokio::time::Instant) -> tokio::time::Instant {
        let early = self.wait.mul_f64(WAIT_JITTER * rand::random::<f64>());
        start + self.wait.saturating_sub(early)
    }
}

/// `wait`'s value: a `humantime` duration or whole seconds, ≤ [`MAX_WAIT`].
fn parse_wait(value: &str) -> Result<Duration, ApiError> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(value).ok(),
    };
    match wait {
        Some(wait) if wait <= MAX_WAIT => Ok(wait),
        Some(_) => Err(ApiError::bad_request(
            "`wait` may be at most 5 minutes (wait=300s); ask again when it ends",
        )),
        None => Err(ApiError::bad_request(
            "`wait` must be a duration such as wait=60s, wait=2m or wait=60 (seconds)",
        )),
    }
}

/// Holds the request until `slot`'s account has the token `hold` waits
/// for, its wait ends, or the server begins to stop, then answers as
/// `GET /v1/token/{appid}` does.
///
/// A held request is this future and one waiter on the slot's
/// [`AccountSlot::changed`]: no task, no thread, no actor message. Each wake
/// looks the account up again, so a reload that replaced its slot is
/// followed.
async fn long_poll(
    state: &AppState,
    mut slot: Arc<AccountSlot>,
    hold: Hold,
) -> Result<HttpResponse, ApiError> {
    let _held = Held::new(&state.metrics.long_polls_held);
    let deadline = hold.deadline(tokio::time::Instant::now());
    loop {
        let changed = slot.changed();
        if hold.satisfied_by(slot.token().as_deref(), state.clock.now_unix_ms()) {
            break;
        }
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep_until(deadline) => break,
            () = state.draining.cancelled() => break,
        }
        slot = state
            .directory
            .get(&slot.appid)
            .ok_or_else(|| ApiError::unknown_appid(slot.appid.as_str()))?;
    }
    current(state, &slot)
}

/// Counts a held request in `wxtoken_long_polls_held` while it lives.
struct Held<'a>(&'a prometheus::IntGauge);

impl<'a> Held<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Held(gauge)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The token answer for `record` at `now_ms`, with `refreshed` when given.
///
/// Errors with 503 `token_unavailable` when less than a second of use is left.
pub(crate) fn token_response(
    slot: &AccountSlot,
    record: &TokenRecord,
    now_ms: i64,
    refreshed: Option<bool>,
) -> Result<HttpResponse, ApiError> {
    let Some(expires_in) = record.usable_secs(now_ms) else {
        return Err(unavailable(slot, now_ms));
    };
    let now = now_ms.div_euclid(1000);
    let body = TokenBody {
        appid: &slot.appid,
        record,
        expires_in,
        expires_at: now.saturating_add(i64::try_from(expires_in).unwrap_or(i64::MAX)),
        fetched_at: record.fetched_at_ms.div_euclid(1000),
        refreshed,
    }
    .encode()
    .ok_or_else(|| ApiError::internal("the token answer could not be encoded"))?;
    let cache_control = cache_control(expires_in);
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ))
        .insert_header((header::CACHE_CONTROL, cache_control))
        .body(body))
}

/// The fields of one token answer.
struct TokenBody<'a> {
    appid: &'a AppId,
    record: &'a TokenRecord,
    expires_in: u64,
    expires_at: i64,
    fetched_at: i64,
    refreshed: Option<bool>,
}

impl TokenBody<'_> {
    /// The answer's JSON, byte for byte what `serde_json` writes for the
    /// struct of these fields in this order (`refreshed` left out when
    /// `None`), without escaping the token again: the record keeps its token
    /// escaped ([`TokenRecord::token_json`]), so per answer only the appid
    /// (at most 64 characters) is escaped and three numbers are formatted.
    ///
    /// `None` only if `serde_json` failed, which it does not for a `str`.
    fn encode(&self) -> Option<Vec<u8>> {
        let token = self.record.token_json()?;
        let mut numbers = itoa::Buffer::new();
        let mut buf = Vec::with_capacity(token.len() + self.appid.as_str().len() + 160);
        buf.extend_from_slice(b"{\"appid\":");
        serde_json::to_writer(&mut buf, self.appid.as_str()).ok()?;
        buf.extend_from_slice(b",\"access_token\":");
        buf.extend_from_slice(token.as_bytes());
        buf.extend_from_slice(b",\"expires_in\":");
        buf.extend_from_slice(numbers.format(self.expires_in).as_bytes());
        buf.extend_from_slice(b",\"expires_at\":");
        buf.extend_from_slice(numbers.format(self.expires_at).as_bytes());
        buf.extend_from_slice(b",\"fetched_at\":");
        buf.extend_from_slice(numbers.format(self.fetched_at).as_bytes());
        match self.refreshed {
            Some(true) => buf.extend_from_slice(b",\"refreshed\":true"),
            Some(false) => buf.extend_from_slice(b",\"refreshed\":false"),
            None => {}
        }
        buf.push(b'}');
        Some(buf)
    }
}

/// `Cache-Control: private, max-age=min(expires_in, 60)` (contract §3), prebuilt.
pub(crate) fn cache_control(expires_in: u64) -> HeaderValue {
    CACHE_CONTROL
        .get(expires_in.min(MAX_CACHE_SECS) as usize)
        .cloned()
        .unwrap_or(HeaderValue::from_static("private, max-age=0"))
}

/// The 503 `token_unavailable` answer for an account without a usable token
/// at `now_ms`: `Retry-After` is the time to its next refresh attempt (at
/// least one second) and `errcode` is WeChat's last error code, when known.
pub(crate) fn unavailable(slot: &AccountSlot, now_ms: i64) -> ApiError {
    let appid = &slot.appid;
    if slot.authorization() == Some(crate::domain::Authorization::Unauthorized) {
        return ApiError::authorization_revoked(appid.as_str());
    }
    if !slot.enabled {
        return disabled(appid);
    }
    let status = slot.status();
    let retry = status
        .next_refresh_at_ms
        .map_or(1, |at| ((at - now_ms).max(0) as u64).div_ceil(1000))
        .max(1);
    let message = match (&status.state, &status.last_error) {
        (State::Empty | State::Fetching, _) => {
            format!("the first token of {appid} is still being fetched; retry in {retry}s")
        }
        (_, Some(last)) => format!(
            "there is no usable token for {appid}: the last refresh failed ({}); the next attempt is in {retry}s",
            last.errmsg
        ),
        _ => format!("there is no usable token for {appid} right now; retry in {retry}s"),
    };
    ApiError::token_unavailable(message, retry)
        .with_errcode(status.last_error.as_ref().and_then(|e| e.errcode))
}

/// The 503 answer for an account with `enabled: false`.
pub(crate) fn disabled(appid: &AppId) -> ApiError {
    ApiError::token_unavailable(
        format!(
            "account {appid} is disabled in the configuration (enabled: false), so no token is fetched for it"
        ),
        DISABLED_RETRY_SECS,
    )
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::domain::{AccessToken, Mode};

    /// The answer as `serde_json` writes it: the reference the prebuilt
    /// encoding must match byte for byte.
    #[derive(Serialize)]
    struct Reference<'a> {
        appid: &'a str,
        access_token: &'a str,
        expires_in: u64,
        expires_at: i64,
        fetched_at: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        refreshed: Option<bool>,
    }

    fn record(token: &str) -> TokenRecord {
        TokenRecord {
            token: AccessToken::new(token),
            mode: Mode::Stable,
            fetched_at_ms: 1_700_000_000_123,
            expires_at_ms: 1_700_007_200_123,
            serve_until_ms: 1_700_007_000_123,
            json: Default::default(),
        }
    }

    /// Tokens come from upstream and are untrusted (the store and a replica
    /// can hold anything): every character JSON must escape, and some it must not.
    const TOKENS: &[&str] = &[
        "plain-token_0123456789ABCDEFabcdef",
        "quote\"backslash\\slash/",
        "controls\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f}\u{7f}",
        "unicode é ü 中文 😀 \u{2028}\u{2029} \u{feff}",
        "\"",
        "\\",
        "",
        "</script><!--",
    ];

    #[test]
    fn the_prebuilt_answer_is_what_serde_json_writes() {
        let appid = AppId::parse("wx0b0e0c0a0f0e0d01").expect("valid appid");
        let long = "ab\"c\\\n".repeat(400);
        let numbers = [
            (0u64, 0i64, 0i64),
            (7199, 1_700_007_199, 1_700_000_000),
            (u64::MAX, i64::MAX, i64::MIN),
            (1, -1, -1_700_000_000),
        ];
        for token in TOKENS.iter().copied().chain([long.as_str()]) {
            let record = record(token);
            for (expires_in, expires_at, fetched_at) in numbers {
                for refreshed in [None, Some(true), Some(false)] {
                    let body = TokenBody {
                        appid: &appid,
                        record: &record,
                        expires_in,
                        expires_at,
                        fetched_at,
                        refreshed,
                    };
                    let reference = serde_json::to_vec(&Reference {
                        appid: appid.as_str(),
                        access_token: token,
                        expires_in,
                        expires_at,
                        fetched_at,
                        refreshed,
                    })
                    .expect("serde_json encodes");
                    let ours = body.encode().expect("encodes");
                    assert_eq!(
                        String::from_utf8_lossy(&ours),
                        String::from_utf8_lossy(&reference),
                        "token {token:?}"
                    );
                    // And it decodes back to the token, whatever it holds.
                    let parsed: serde_json::Value =
                        serde_json::from_slice(&ours).expect("valid JSON");
                    assert_eq!(parsed["access_token"], token);
                }
            }
        }
    }

    #[test]
    fn the_escaped_token_is_built_once() {
        let record = record("quote\"token");
        let first = record.token_json().expect("escapes");
        assert_eq!(first, r#""quote\"token""#);
        let again = record.token_json().expect("escapes");
        assert!(
            std::ptr::eq(first, again),
            "escaped again instead of reused"
        );
        // The cache is not data: a record equals its uncached twin, and its
        // Debug shows neither the token nor its escaped form.
        assert_eq!(record, self::record("quote\"token"));
        assert!(
            !format!("{record:?}").contains("quote"),
            "Debug shows the token"
        );
    }

    #[actix_web::test]
    async fn a_token_answer_carries_the_contract_headers_and_body() {
        let slot = AccountSlot::new(
            AppId::parse("wx0b0e0c0a0f0e0d01").expect("valid appid"),
            "shop".to_string(),
            Mode::Stable,
            true,
            Vec::new(),
        );
        let record = record("tok\"en");
        let now_ms = record.serve_until_ms - 30_500;
        let res = token_response(&slot, &record, now_ms, Some(true)).expect("usable");
        assert_eq!(res.status(), 200);
        let headers = res.headers();
        assert_eq!(
            headers.get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
        assert_eq!(
            headers.get(header::CACHE_CONTROL),
            Some(&HeaderValue::from_static("private, max-age=30"))
        );
        let body = actix_web::body::to_bytes(res.into_body())
            .await
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({
                "appid": "wx0b0e0c0a0f0e0d01",
                "access_token": "tok\"en",
                "expires_in": 30,
                "expires_at": now_ms.div_euclid(1000) + 30,
                "fetched_at": 1_700_000_000,
                "refreshed": true,
            })
        );
        // Less than a second left: no answer with a token.
        assert!(token_response(&slot, &record, record.serve_until_ms - 999, None).is_err());
    }
}
