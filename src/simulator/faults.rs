//! Fault injection: which calls a [`FaultSpec`] hits, and the broken answers it
//! produces (errcodes, HTTP errors, delays, dropped connections, truncated JSON,
//! HTML error pages).
//!
//! Invariant: a faulted call never reaches the token state, so it neither
//! issues nor rotates a token and does not count toward any quota. A
//! delay-only fault is the exception by design: after the delay the call is
//! answered normally.

use std::net::IpAddr;
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::answers::{WECHAT_JSON, WxError, default_errmsg, ip_message};
use super::error::FaultError;

/// The WeChat APIs the simulator serves, as named in faults and stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Api {
    Token,
    StableToken,
    GetTicket,
    GetCallbackIp,
    /// WeCom's `GET /cgi-bin/gettoken`.
    WecomToken,
    /// The Open Platform's component APIs (`/cgi-bin/component/...`).
    ComponentToken,
    QueryAuth,
    AuthorizerToken,
    AuthorizerList,
    PreAuthCode,
    StartPushTicket,
    /// `POST /cgi-bin/openapi/quota/get` (getApiQuota).
    GetApiQuota,
    /// The business APIs the proxy is tested with (`business.rs`).
    Business,
}

impl Api {
    /// Every API, in the order the control API lists them.
    pub(crate) const ALL: [Api; 13] = [
        Api::Token,
        Api::StableToken,
        Api::GetTicket,
        Api::GetCallbackIp,
        Api::WecomToken,
        Api::ComponentToken,
        Api::QueryAuth,
        Api::AuthorizerToken,
        Api::AuthorizerList,
        Api::PreAuthCode,
        Api::StartPushTicket,
        Api::GetApiQuota,
        Api::Business,
    ];

    /// The simulated API of one of wxtoken's upstream APIs.
    pub(crate) fn of(api: crate::domain::ApiName) -> Api {
        use crate::domain::ApiName;
        match api {
            ApiName::Token => Api::Token,
            ApiName::StableToken => Api::StableToken,
            ApiName::GetTicket => Api::GetTicket,
            ApiName::GetCallbackIp => Api::GetCallbackIp,
            ApiName::WecomToken => Api::WecomToken,
            ApiName::ComponentToken => Api::ComponentToken,
            ApiName::QueryAuth => Api::QueryAuth,
            ApiName::AuthorizerToken => Api::AuthorizerToken,
            ApiName::AuthorizerList => Api::AuthorizerList,
            ApiName::PreAuthCode => Api::PreAuthCode,
            ApiName::StartPushTicket => Api::StartPushTicket,
            ApiName::ApiQuota => Api::GetApiQuota,
        }
    }

    /// The name used in faults and stats.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Api::Token => "token",
            Api::StableToken => "stable_token",
            Api::GetTicket => "getticket",
            Api::GetCallbackIp => "getcallbackip",
            Api::WecomToken => "gettoken",
            Api::ComponentToken => "api_component_token",
            Api::QueryAuth => "api_query_auth",
            Api::AuthorizerToken => "api_authorizer_token",
            Api::AuthorizerList => "api_get_authorizer_list",
            Api::PreAuthCode => "api_create_preauthcode",
            Api::StartPushTicket => "api_start_push_ticket",
            Api::GetApiQuota => "getapiquota",
            Api::Business => "business",
        }
    }

    /// Parses an API name; `None` for anything else.
    pub(crate) fn parse(s: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// A fault to inject into upcoming WeChat calls (`POST /sim/faults`).
///
/// Matching: `api` and `appid` narrow which calls are hit (`None` = all). For
/// calls that carry an access token the appid is the token's app. Lifetime:
/// `count` hits the next N matching calls; otherwise `rate` hits each matching
/// call with that probability; with neither, every matching call is hit. All
/// faults stay until they run out or `DELETE /sim/faults`.
///
/// Effect: `delay_ms` waits first. Then the first of these that is set decides
/// the answer: `drop_connection`, `html`, `malformed`, `body`, `body_bytes`,
/// `errcode`, `http_status` (which also sets the status of the others). A
/// delay with no other effect answers normally.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// `"token"`, `"stable_token"`, `"getticket"`, `"getcallbackip"`,
    /// `"gettoken"` or an Open Platform API (`"api_component_token"`,
    /// `"api_query_auth"`, `"api_authorizer_token"`, `"api_get_authorizer_list"`,
    /// `"api_create_preauthcode"`, `"api_start_push_ticket"`), or `"business"`
    /// (every business API: user info, messages, media); `None` = all.
    /// Open Platform calls match by the component appid, except
    /// `api_authorizer_token` and `api_query_auth`, which match by the authorizer.
    #[serde(default)]
    pub api: Option<String>,
    /// Only calls for this app; `None` = all apps.
    #[serde(default)]
    pub appid: Option<String>,
    /// Hit the next N matching calls, then disappear.
    #[serde(default)]
    pub count: Option<u32>,
    /// Hit each matching call with this probability (0.0 to 1.0) until cleared.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Answer `{"errcode": N, "errmsg": ...}` (HTTP 200 unless `http_status`).
    #[serde(default)]
    pub errcode: Option<i64>,
    /// The errmsg for `errcode`; WeChat's usual message by default.
    #[serde(default)]
    pub errmsg: Option<String>,
    /// Answer with this HTTP status (200 to 599) and a short text body.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// Wait this long before answering.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Close the connection without an answer.
    #[serde(default)]
    pub drop_connection: bool,
    /// Answer with truncated JSON.
    #[serde(default)]
    pub malformed: bool,
    /// Answer with an HTML error page (status 200, `text/html`), as a broken proxy does.
    #[serde(default)]
    pub html: bool,
    /// Answer with exactly this body (WeChat's JSON content type), e.g. a
    /// token answer with absurd values: `{"access_token":"T","expires_in":9e15}`.
    #[serde(default)]
    pub body: Option<String>,
    /// Answer with a JSON body of this many bytes (at most 1 GiB), streamed
    /// rather than held in memory: an upstream that never stops talking.
    #[serde(default)]
    pub body_bytes: Option<u64>,
}

/// The largest `body_bytes` a fault may ask for (1 GiB).
const MAX_BODY_BYTES: u64 = 1 << 30;

/// The longest delay a fault may ask for (10 minutes).
const MAX_DELAY_MS: u64 = 600_000;

impl FaultSpec {
    /// Checks the spec.
    ///
    /// Errors with the first problem found, naming the bad field and value.
    pub fn validate(&self) -> Result<(), FaultError> {
        if let Some(api) = &self.api
            && Api::parse(api).is_none()
        {
            return Err(FaultError::UnknownApi { api: api.clone() });
        }
        if self.count == Some(0) {
            return Err(FaultError::ZeroCount);
        }
        if let Some(rate) = self.rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err(FaultError::RateOutOfRange { rate });
        }
        if self.count.is_some() && self.rate.is_some() {
            return Err(FaultError::CountAndRate);
        }
        if let Some(status) = self.http_status
            && !(200..=599).contains(&status)
        {
            return Err(FaultError::HttpStatusOutOfRange { status });
        }
        if let Some(delay_ms) = self.delay_ms
            && delay_ms > MAX_DELAY_MS
        {
            return Err(FaultError::DelayTooLong {
                delay_ms,
                max_ms: MAX_DELAY_MS,
            });
        }
        if self.errmsg.is_some() && self.errcode.is_none() {
            return Err(FaultError::ErrmsgWithoutErrcode);
        }
        if self.errcode == Some(0) {
            return Err(FaultError::ZeroErrcode);
        }
        if let Some(bytes) = self.body_bytes
            && bytes > MAX_BODY_BYTES
        {
            return Err(FaultError::BodyTooLarge {
                bytes,
                max: MAX_BODY_BYTES,
            });
        }
        let has_effect = self.errcode.is_some()
            || self.http_status.is_some()
            || self.delay_ms.is_some()
            || self.drop_connection
            || self.malformed
            || self.html
            || self.body.is_some()
            || self.body_bytes.is_some();
        if !has_effect {
            return Err(FaultError::NoEffect);
        }
        Ok(())
    }

    /// True when this fault applies to a call of `api` for `appid`.
    fn matches(&self, api: Api, appid: Option<&str>) -> bool {
        let api_ok = self.api.as_deref().is_none_or(|a| a == api.as_str());
        let appid_ok = match &self.appid {
            None => true,
            Some(want) => appid == Some(want.as_str()),
        };
        api_ok && appid_ok
    }

    /// True when the fault changes the answer, not only its timing.
    pub(crate) fn replaces_answer(&self) -> bool {
        self.drop_connection
            || self.html
            || self.malformed
            || self.body.is_some()
            || self.body_bytes.is_some()
            || self.errcode.is_some()
            || self.http_status.is_some()
    }

    /// The delay to apply before answering.
    pub(crate) fn delay(&self) -> Option<Duration> {
        self.delay_ms
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }
}

/// The injected faults, in injection order.
#[derive(Debug, Default)]
pub(crate) struct FaultList {
    faults: Vec<ActiveFault>,
}

#[derive(Debug)]
struct ActiveFault {
    spec: FaultSpec,
    /// Hits left for a `count` fault; `None` for rate and permanent faults.
    remaining: Option<u32>,
}

impl FaultList {
    /// Adds a validated fault.
    pub(crate) fn push(&mut self, spec: FaultSpec) {
        let remaining = spec.count;
        self.faults.push(ActiveFault { spec, remaining });
    }

    /// Removes every fault and says how many there were.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.faults.len();
        self.faults.clear();
        n
    }

    /// The specs of the faults still active.
    pub(crate) fn specs(&self) -> Vec<FaultSpec> {
        self.faults.iter().map(|f| f.spec.clone()).collect()
    }

    /// Picks the fault that hits this call, if any: the oldest matching one
    /// whose count or dice says so. A `count` fault is used up by the hit.
    pub(crate) fn take(&mut self, api: Api, appid: Option<&str>) -> Option<FaultSpec> {
        let mut rng = rand::rng();
        let idx = self.faults.iter().position(|f| {
            f.spec.matches(api, appid)
                && (f.remaining.is_some() || f.spec.rate.is_none_or(|r| rng.random_bool(r)))
        })?;
        let fault = &mut self.faults[idx];
        let spec = fault.spec.clone();
        if let Some(left) = fault.remaining.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.faults.remove(idx);
            }
        }
        Some(spec)
    }
}

/// The answer a fault gives instead of the normal one, or `None` for a
/// delay-only fault. `peer` fills in a 40164 message.
pub(crate) fn render(spec: &FaultSpec, api: Api, peer: Option<IpAddr>) -> Option<HttpResponse> {
    if spec.drop_connection {
        return Some(dropped_connection());
    }
    let status = spec
        .http_status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if spec.html {
        return Some(
            HttpResponse::build(status)
                .content_type("text/html")
                .body(BAD_GATEWAY_PAGE),
        );
    }
    if spec.malformed {
        return Some(
            HttpResponse::build(status)
                .content_type(WECHAT_JSON)
                .body(truncated_json(api)),
        );
    }
    if let Some(body) = &spec.body {
        return Some(
            HttpResponse::build(status)
                .content_type(WECHAT_JSON)
                .body(body.clone()),
        );
    }
    if let Some(n) = spec.body_bytes {
        return Some(
            HttpResponse::build(status)
                .content_type(WECHAT_JSON)
                .streaming(endless_json(n)),
        );
    }
    if let Some(errcode) = spec.errcode {
        let errmsg = match (&spec.errmsg, errcode) {
            (Some(m), _) => m.clone(),
            (None, 40164) => ip_message(peer),
            (None, code) => default_errmsg(code).to_string(),
        };
        let mut resp = WxError::with_message(errcode, errmsg).into_response();
        *resp.status_mut() = status;
        return Some(resp);
    }
    if spec.http_status.is_some() {
        let reason = status.canonical_reason().unwrap_or("Error");
        return Some(
            HttpResponse::build(status)
                .content_type("text/plain")
                .body(format!("{} {reason}\n", status.as_u16())),
        );
    }
    None
}

/// The page an nginx in front of WeChat serves when its upstream is down.
const BAD_GATEWAY_PAGE: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// The first bytes of a normal answer of `api`, cut off mid-value.
fn truncated_json(api: Api) -> &'static str {
    match api {
        Api::Token | Api::StableToken | Api::WecomToken => r#"{"access_token":"81_Xq3vT0kP"#,
        Api::GetTicket => r#"{"errcode":0,"errmsg":"ok","ticket":"bxLdikRXVbTP"#,
        Api::GetCallbackIp => r#"{"ip_list":["101.226.10"#,
        Api::ComponentToken => r#"{"component_access_token":"61_W9x"#,
        Api::QueryAuth => r#"{"authorization_info":{"authorizer_appid":"wx"#,
        Api::AuthorizerToken => r#"{"authorizer_access_token":"61_Ab3"#,
        Api::AuthorizerList => r#"{"total_count":3,"list":[{"authorizer_appid":"#,
        Api::PreAuthCode => r#"{"pre_auth_code":"preauthcode@@@"#,
        Api::StartPushTicket => r#"{"errcode":0,"errm"#,
        Api::GetApiQuota => r#"{"errcode":0,"errmsg":"ok","quota":{"daily_li"#,
        Api::Business => r#"{"errcode":0,"errmsg":"o"#,
    }
}

/// `n` bytes of one JSON object (`{"pad":"xxxx...`), produced in chunks so
/// that a huge body costs the simulator no memory.
fn endless_json(n: u64) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    const CHUNK: usize = 64 * 1024;
    let head = Bytes::from_static(br#"{"pad":""#);
    let filler = Bytes::from(vec![b'x'; CHUNK]);
    let mut left = n;
    let mut first = true;
    futures::stream::iter(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let chunk = if first {
            first = false;
            head.slice(..head.len().min(left as usize))
        } else {
            filler.slice(..CHUNK.min(left as usize))
        };
        left -= chunk.len() as u64;
        Some(Ok(chunk))
    }))
}

/// A response whose body fails before its first byte. actix-web then closes
/// the connection without flushing the status line, so the client sees a
/// transport error rather than an answer.
fn dropped_connection() -> HttpResponse {
    let failing = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "simulated dropped connection",
        ))
    });
    HttpResponse::Ok().streaming(failing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(f: impl FnOnce(&mut FaultSpec)) -> FaultSpec {
        let mut s = FaultSpec::default();
        f(&mut s);
        s
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(
            spec(|_| {})
                .validate()
                .unwrap_err()
                .to_string()
                .contains("does nothing")
        );
        let bad_api = spec(|s| {
            s.api = Some("tokens".into());
            s.errcode = Some(-1);
        });
        assert!(
            bad_api
                .validate()
                .unwrap_err()
                .to_string()
                .contains("\"tokens\"")
        );
        let bad_rate = spec(|s| {
            s.rate = Some(1.5);
            s.errcode = Some(-1);
        });
        assert!(bad_rate.validate().unwrap_err().to_string().contains("1.5"));
        let bad_status = spec(|s| s.http_status = Some(42));
        assert!(
            bad_status
                .validate()
                .unwrap_err()
                .to_string()
                .contains("42")
        );
        assert!(spec(|s| s.delay_ms = Some(10)).validate().is_ok());
    }

    #[test]
    fn count_faults_run_out_and_match_by_api_and_appid() {
        let mut list = FaultList::default();
        list.push(spec(|s| {
            s.api = Some("token".into());
            s.appid = Some("wxA".into());
            s.count = Some(2);
            s.errcode = Some(-1);
        }));
        assert!(list.take(Api::StableToken, Some("wxA")).is_none());
        assert!(list.take(Api::Token, Some("wxB")).is_none());
        assert!(list.take(Api::Token, None).is_none());
        assert!(list.take(Api::Token, Some("wxA")).is_some());
        assert!(list.take(Api::Token, Some("wxA")).is_some());
        assert!(list.take(Api::Token, Some("wxA")).is_none());
    }

    #[test]
    fn rate_zero_never_hits_and_rate_one_always_does() {
        let mut list = FaultList::default();
        list.push(spec(|s| {
            s.rate = Some(0.0);
            s.errcode = Some(-1);
        }));
        assert!((0..100).all(|_| list.take(Api::Token, None).is_none()));
        list.push(spec(|s| {
            s.rate = Some(1.0);
            s.errcode = Some(-1);
        }));
        assert!((0..100).all(|_| list.take(Api::Token, None).is_some()));
        assert_eq!(list.clear(), 2);
    }
}
