//! The WeChat client: the only code in wxtoken that talks to WeChat.
//!
//! Owns: [`Endpoint`], how each kind of token is obtained; the HTTP calls to
//! `/cgi-bin/token`, `/cgi-bin/stable_token`, WeCom's `/cgi-bin/gettoken`,
//! `/cgi-bin/ticket/getticket`, `/cgi-bin/getcallbackip` and the Open
//! Platform's `/cgi-bin/component/...` APIs; failover across
//! `upstream.base_urls`; the per-request timeout; upstream metrics. Answers
//! are classified by [`error`]. The limit on requests in flight is [`limit`]'s
//! [`Limited`], which the engine puts around whichever [`TokenSource`] it uses.
//!
//! Invariants: `expires_in` always comes from WeChat's answer, never assumed;
//! no secret or token ever appears in an error, a log line or a metric label.

pub mod error;
pub mod forward;
pub mod limit;
pub mod open_calls;

use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

pub use error::{Decision, UpstreamError, WaitCause};
pub use forward::{Forward, ForwardBody, ForwardError, Forwarder};
pub use limit::Limited;
pub use open_calls::{AUTHORIZER_PAGE, OpenAnswer, OpenCall};

use crate::config::UpstreamConfig;
use crate::domain::{AccessToken, ApiName, AppId, TicketKind};
use crate::metrics::Metrics;

/// The path of `api` below a base URL (no leading `/`).
pub fn api_path(api: ApiName) -> &'static str {
    match api {
        ApiName::Token => "cgi-bin/token",
        ApiName::StableToken => "cgi-bin/stable_token",
        ApiName::GetTicket => "cgi-bin/ticket/getticket",
        ApiName::GetCallbackIp => "cgi-bin/getcallbackip",
        ApiName::WecomToken => "cgi-bin/gettoken",
        ApiName::ComponentToken => "cgi-bin/component/api_component_token",
        ApiName::QueryAuth => "cgi-bin/component/api_query_auth",
        ApiName::AuthorizerToken => "cgi-bin/component/api_authorizer_token",
        ApiName::AuthorizerList => "cgi-bin/component/api_get_authorizer_list",
        ApiName::PreAuthCode => "cgi-bin/component/api_create_preauthcode",
        ApiName::StartPushTicket => "cgi-bin/component/api_start_push_ticket",
        ApiName::ApiQuota => "cgi-bin/openapi/quota/get",
    }
}

/// How an account's token is obtained: the endpoint and grant. The one place
/// that knows which call each kind of account makes and what that call does
/// to the token held before it; a new kind of token is a new variant here
/// plus its fetch in [`WechatClient`]'s [`TokenSource`] implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// AppSecret, `GET /cgi-bin/token`: every call mints a new token, and the
    /// previous one dies WeChat's grace later.
    Legacy,
    /// AppSecret, `POST /cgi-bin/stable_token`: the current token until
    /// WeChat rotates it near its expiry; `force_refresh` rotates it now
    /// (20 a day, 30 s apart).
    Stable,
    /// WeCom corpsecret, `GET /cgi-bin/gettoken?corpid=`: the token of one
    /// WeCom application; a call never rotates it.
    Wecom { corpid: String },
    /// Open Platform component: `POST /cgi-bin/component/api_component_token`
    /// with the `component_appsecret` and the newest verify ticket
    /// ([`OpenCredential::Ticket`]). Every call mints a new token and the
    /// previous one dies WeChat's grace later (legacy semantics).
    Component,
    /// Open Platform authorizer of `component`: `api_authorizer_token` with
    /// its refresh token, or `api_query_auth` with a fresh authorization code
    /// ([`OpenCredential`]). Assumed to have legacy semantics.
    Authorizer { component: AppId },
}

impl Endpoint {
    /// The API this endpoint calls.
    pub fn api(&self) -> ApiName {
        match self {
            Endpoint::Legacy => ApiName::Token,
            Endpoint::Stable => ApiName::StableToken,
            Endpoint::Wecom { .. } => ApiName::WecomToken,
            Endpoint::Component => ApiName::ComponentToken,
            Endpoint::Authorizer { .. } => ApiName::AuthorizerToken,
        }
    }

    /// True when every call mints a new token (and so kills the previous one).
    pub fn rotates_on_fetch(&self) -> bool {
        matches!(
            self,
            Endpoint::Legacy | Endpoint::Component | Endpoint::Authorizer { .. }
        )
    }

    /// True when a call may ask for a rotation now (`force_refresh`).
    pub fn can_force(&self) -> bool {
        matches!(self, Endpoint::Stable)
    }
}

/// A token as WeChat granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub access_token: AccessToken,
    /// The lifetime WeChat announced, counted from the answer.
    pub expires_in: Duration,
    /// An earlier attempt of the same call (at a base URL that failed over)
    /// ended with an unknown outcome: WeChat may still process it and, for a
    /// legacy fetch or a forced rotation, mint a token that supersedes this one.
    pub after_unknown: bool,
    /// How long the call waited for an upstream slot ([`Limited`]) before it
    /// was sent: the token's life counts from the send, not from the ask.
    pub waited: Duration,
    /// [`Endpoint::Authorizer`] only: the `authorizer_refresh_token` WeChat
    /// returned with the token (`None` when absent or empty: an empty one
    /// never replaces the stored one).
    pub refresh_token: Option<AccessToken>,
}

/// A JS-SDK ticket as WeChat granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketGrant {
    pub ticket: AccessToken,
    pub expires_in: Duration,
}

/// One API's daily quota as getApiQuota (`POST /cgi-bin/openapi/quota/get`)
/// reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiQuota {
    /// Calls allowed per day.
    pub daily_limit: u64,
    /// Calls made today.
    pub used: u64,
}

/// The largest quota number believed: WeChat's limits are thousands to
/// hundreds of thousands a day; anything past this is garbage.
pub const MAX_QUOTA: i64 = 1_000_000_000;

/// Why a [`WechatClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("no upstream base url configured")]
    NoBaseUrls,
    #[error("could not set up the HTTPS client: {0}")]
    Http(String),
}

/// The client for WeChat's token APIs. Cheap to clone; clones share the
/// connection pool. It does not limit requests in flight: [`Limited`] does.
#[derive(Clone)]
pub struct WechatClient {
    http: reqwest::Client,
    base_urls: Arc<Vec<Url>>,
    wecom_base_urls: Arc<Vec<Url>>,
    timeout: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for WechatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatClient")
            .field("base_urls", &self.base_urls)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WechatClient {
    /// An Open Platform token call: `api_component_token`,
    /// `api_authorizer_token` or `api_query_auth` as `req.open` says.
    ///
    /// Errors like the other token calls; a request without the credential
    /// its endpoint needs is not sent (see [`open_call`]).
    async fn fetch_open_token(&self, req: &FetchRequest) -> Result<TokenGrant, UpstreamError> {
        let open = open_token_call(req)?;
        let call = match open.component_token {
            Some(token) => {
                Call::PostJsonWith(vec![("component_access_token", token.expose())], open.body)
            }
            None => Call::PostJson(open.body),
        };
        let answer = self.call(open.api, call, Some(open.sensitive)).await?;
        open_grant(open.api, answer)
    }

    /// `api_get_authorizer_list`: one page (`offset`, `count`, at most
    /// [`MAX_AUTHORIZER_PAGE`]; more is asked as that) of the component's
    /// authorizers with their refresh tokens, the way to recover a lost or
    /// rejected refresh token. Entries with an invalid appid or an empty or
    /// implausible refresh token are skipped (counted in
    /// [`AuthorizerPage::skipped`]), not fatal.
    ///
    /// Errors with the classified [`UpstreamError`]; a rejected component
    /// token decides to [`Decision::TokenRejected`].
    pub async fn authorizer_list(
        &self,
        component_appid: &AppId,
        component_token: &AccessToken,
        offset: u32,
        count: u32,
    ) -> Result<AuthorizerPage, UpstreamError> {
        let call = OpenCall::AuthorizerList {
            component: component_appid.clone(),
            component_token: component_token.clone(),
            offset,
            count,
        };
        authorizer_page(call.api(), self.send_open(&call).await?)
    }

    /// `api_create_preauthcode`: a pre-auth code for the consent links, and
    /// how long it lives (as WeChat announced it).
    ///
    /// Errors with the classified [`UpstreamError`]; a rejected component
    /// token decides to [`Decision::TokenRejected`].
    pub async fn create_preauthcode(
        &self,
        component_appid: &AppId,
        component_token: &AccessToken,
    ) -> Result<(AccessToken, Duration), UpstreamError> {
        let api = ApiName::PreAuthCode;
        let call = OpenCall::PreAuthCode {
            component: component_appid.clone(),
            component_token: component_token.clone(),
        };
        let answer = self.send_open(&call).await?;
        Ok((
            credential(api, "pre_auth_code", answer.pre_auth_code)?,
            expiry(api, answer.expires_in)?,
        ))
    }

    /// `api_start_push_ticket`: asks WeChat to push a verify ticket now (and
    /// to resume pushing); also the component's health probe.
    ///
    /// Errors with the classified [`UpstreamError`] (a wrong secret, an
    /// unknown component, a caller IP not whitelisted).
    pub async fn start_push_ticket(
        &self,
        component_appid: &AppId,
        secret: &SecretString,
    ) -> Result<(), UpstreamError> {
        let call = OpenCall::StartPushTicket {
            component: component_appid.clone(),
            secret: secret.clone(),
        };
        self.send_open(&call).await.map(|_| ())
    }

    /// Sends `call` as [`open_call_body`] builds it (the one builder of these
    /// bodies, shared with the in-process simulator).
    async fn send_open(&self, call: &OpenCall) -> Result<Answer, UpstreamError> {
        let (body, token) = open_call_body(call);
        let sensitive = match call {
            OpenCall::StartPushTicket { secret, .. } => secret.expose_secret(),
            _ => token.map_or("", AccessToken::expose),
        };
        let request = match token {
            Some(t) => Call::PostJsonWith(vec![("component_access_token", t.expose())], body),
            None => Call::PostJson(body),
        };
        self.call(call.api(), request, Some(sensitive)).await
    }
}

/// The most authorizers one `api_get_authorizer_list` page holds.
pub const MAX_AUTHORIZER_PAGE: u32 = 500;

/// One page of `api_get_authorizer_list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerPage {
    /// How many authorizers the component has in all (for paging).
    pub total_count: u64,
    /// The usable entries of this page: the authorizer, its current refresh
    /// token, and when it authorized (Unix seconds, 0 when absent).
    pub list: Vec<(AppId, AccessToken, i64)>,
    /// Entries of this page that were skipped as unusable (an invalid appid,
    /// an empty or implausible refresh token); the next page's offset still
    /// counts them.
    pub skipped: usize,
}

/// One Open Platform token call as it is sent: the API, the component token
/// for the query (none for `api_component_token`), the JSON body, and the
/// value to scrub from error messages. Built in one place for the client and
/// the in-process simulator.
pub(crate) struct OpenTokenCall<'a> {
    pub(crate) api: ApiName,
    pub(crate) component_token: Option<&'a AccessToken>,
    pub(crate) body: serde_json::Value,
    pub(crate) sensitive: &'a str,
}

/// The call `req` makes. A request without the credential its endpoint
/// needs is never sent: it fails at once with the errcode WeChat gives for
/// that (61006 for a missing ticket, which retries until a ticket arrives;
/// 61023 for an authorizer without refresh token or code, which recovers
/// through `api_get_authorizer_list`), with a message saying nothing was sent.
pub(crate) fn open_token_call(req: &FetchRequest) -> Result<OpenTokenCall<'_>, UpstreamError> {
    let not_sent = |api: ApiName, errcode: i64, what: &str| UpstreamError::Api {
        api,
        errcode,
        errmsg: format!("not sent: wxtoken holds no {what} for {}", req.appid),
    };
    match (&req.endpoint, &req.open) {
        (Endpoint::Component, Some(OpenCredential::Ticket(ticket))) => Ok(OpenTokenCall {
            api: ApiName::ComponentToken,
            component_token: None,
            body: serde_json::json!({
                "component_appid": req.appid.as_str(),
                "component_appsecret": req.secret.expose_secret(),
                "component_verify_ticket": ticket.expose(),
            }),
            sensitive: req.secret.expose_secret(),
        }),
        (
            Endpoint::Authorizer { component },
            Some(OpenCredential::RefreshToken {
                component_token,
                refresh_token,
            }),
        ) => Ok(OpenTokenCall {
            api: ApiName::AuthorizerToken,
            component_token: Some(component_token),
            body: serde_json::json!({
                "component_appid": component.as_str(),
                "authorizer_appid": req.appid.as_str(),
                "authorizer_refresh_token": refresh_token.expose(),
            }),
            sensitive: refresh_token.expose(),
        }),
        (
            Endpoint::Authorizer { component },
            Some(OpenCredential::AuthCode {
                component_token,
                code,
            }),
        ) => Ok(OpenTokenCall {
            api: ApiName::QueryAuth,
            component_token: Some(component_token),
            body: serde_json::json!({
                "component_appid": component.as_str(),
                "authorization_code": code.expose(),
            }),
            sensitive: code.expose(),
        }),
        (Endpoint::Component, _) => Err(not_sent(
            ApiName::ComponentToken,
            61006,
            "component_verify_ticket",
        )),
        (Endpoint::Authorizer { .. }, _) => Err(not_sent(
            ApiName::AuthorizerToken,
            61023,
            "refresh token or authorization code",
        )),
        (other, _) => Err(decode(other.api(), "not an Open Platform endpoint")),
    }
}

/// The grant of an Open Platform token answer of `api`.
fn open_grant(api: ApiName, answer: Answer) -> Result<TokenGrant, UpstreamError> {
    let (token, field, expires_in, refresh) = match api {
        ApiName::ComponentToken => (
            answer.component_access_token,
            "component_access_token",
            answer.expires_in,
            None,
        ),
        ApiName::AuthorizerToken => (
            answer.authorizer_access_token,
            "authorizer_access_token",
            answer.expires_in,
            answer.authorizer_refresh_token,
        ),
        ApiName::QueryAuth => {
            let info = answer
                .authorization_info
                .ok_or_else(|| decode(api, "the answer has no authorization_info"))?;
            if info.authorizer_access_token.is_none() {
                return Err(decode(
                    api,
                    "the authorization_info has no authorizer_access_token: the account granted the platform no API permission",
                ));
            }
            (
                info.authorizer_access_token,
                "authorizer_access_token",
                info.expires_in,
                info.authorizer_refresh_token,
            )
        }
        other => return token_grant(other, answer),
    };
    let refresh_token = match refresh.filter(|r| !r.is_empty()) {
        Some(r) => Some(credential(api, "authorizer_refresh_token", Some(r))?),
        None => None,
    };
    Ok(TokenGrant {
        access_token: credential(api, field, token)?,
        expires_in: expiry(api, expires_in)?,
        after_unknown: answer.after_unknown,
        waited: Duration::ZERO,
        refresh_token,
    })
}

/// A page of `api_get_authorizer_list`, skipping unusable entries.
fn authorizer_page(api: ApiName, answer: Answer) -> Result<AuthorizerPage, UpstreamError> {
    let total_count = answer
        .total_count
        .ok_or_else(|| decode(api, "the answer has no total_count"))?;
    let total_count = u64::try_from(total_count)
        .map_err(|_| decode(api, &format!("total_count is {total_count}, not a count")))?;
    let entries = answer.list.unwrap_or_default();
    let mut list = Vec::with_capacity(entries.len());
    let mut skipped = 0;
    for entry in entries {
        let parsed = serde_json::from_value::<ListEntry>(entry)
            .ok()
            .and_then(|e| {
                let appid = AppId::parse(e.authorizer_appid.as_deref()?).ok()?;
                let refresh = AccessToken::from_upstream(e.refresh_token?).ok()?;
                Some((appid, refresh, e.auth_time.unwrap_or(0)))
            });
        match parsed {
            Some(entry) => list.push(entry),
            None => skipped += 1,
        }
    }
    Ok(AuthorizerPage {
        total_count,
        list,
        skipped,
    })
}

/// One entry of `api_get_authorizer_list` (note: `refresh_token`, not
/// `authorizer_refresh_token`).
#[derive(Deserialize)]
struct ListEntry {
    #[serde(default)]
    authorizer_appid: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    auth_time: Option<i64>,
}

/// `api_query_auth`'s `authorization_info`.
#[derive(Deserialize)]
struct AuthorizationInfo {
    #[serde(default)]
    authorizer_access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    authorizer_refresh_token: Option<String>,
}

/// The superset of fields WeChat's token, ticket and probe answers carry.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    errcode: Option<i64>,
    #[serde(default)]
    errmsg: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    ticket: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    ip_list: Option<Vec<String>>,
    // The Open Platform's fields.
    #[serde(default)]
    component_access_token: Option<String>,
    #[serde(default)]
    authorizer_access_token: Option<String>,
    #[serde(default)]
    authorizer_refresh_token: Option<String>,
    #[serde(default)]
    authorization_info: Option<AuthorizationInfo>,
    #[serde(default)]
    pre_auth_code: Option<String>,
    #[serde(default)]
    total_count: Option<i64>,
    /// getApiQuota's answer.
    #[serde(default)]
    quota: Option<QuotaAnswer>,
    /// Entries are read one by one, so one bad entry does not spoil a page.
    #[serde(default)]
    list: Option<Vec<serde_json::Value>>,
    /// Not WeChat's: set by [`WechatClient::call`] when an earlier attempt
    /// of the call failed over with an unknown outcome.
    #[serde(skip)]
    after_unknown: bool,
}

/// One request to make against each base URL in turn.
enum Call<'a> {
    Get(Vec<(&'static str, &'a str)>),
    PostJson(serde_json::Value),
    /// A JSON body plus a query (the Open Platform's `component_access_token`).
    PostJsonWith(Vec<(&'static str, &'a str)>, serde_json::Value),
}

fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Another part of the process may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl WechatClient {
    /// Builds a client for `config`; errors when no base URL is configured or
    /// the TLS stack cannot be initialised.
    pub fn new(config: &UpstreamConfig, metrics: Metrics) -> Result<Self, ClientBuildError> {
        if config.base_urls.is_empty() {
            return Err(ClientBuildError::NoBaseUrls);
        }
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(config.max_concurrency.max(1))
            .user_agent(concat!("wxtoken/", env!("CARGO_PKG_VERSION")))
            // Only the configured base URLs are ever contacted.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientBuildError::Http(e.without_url().to_string()))?;
        Ok(WechatClient {
            http,
            base_urls: Arc::new(config.base_urls.clone()),
            wecom_base_urls: Arc::new(config.wecom_urls().to_vec()),
            timeout: config.timeout,
            metrics,
        })
    }

    /// Legacy `GET /cgi-bin/token`: a new token, the previous one dies 5 minutes later.
    ///
    /// Errors with the classified [`UpstreamError`] of the last base URL tried.
    pub async fn fetch_token(
        &self,
        appid: &AppId,
        secret: &SecretString,
    ) -> Result<TokenGrant, UpstreamError> {
        let s = secret.expose_secret();
        let call = Call::Get(vec![
            ("grant_type", "client_credential"),
            ("appid", appid.as_str()),
            ("secret", s),
        ]);
        let answer = self.call(ApiName::Token, call, Some(s)).await?;
        token_grant(ApiName::Token, answer)
    }

    /// `POST /cgi-bin/stable_token`: the current stable token, or a rotated one
    /// with `force_refresh` (WeChat limits forcing to 20 a day, 30 s apart).
    ///
    /// Errors with the classified [`UpstreamError`] of the last base URL tried.
    pub async fn fetch_stable_token(
        &self,
        appid: &AppId,
        secret: &SecretString,
        force_refresh: bool,
    ) -> Result<TokenGrant, UpstreamError> {
        let s = secret.expose_secret();
        let body = serde_json::json!({
            "grant_type": "client_credential",
            "appid": appid.as_str(),
            "secret": s,
            "force_refresh": force_refresh,
        });
        let answer = self
            .call(ApiName::StableToken, Call::PostJson(body), Some(s))
            .await?;
        token_grant(ApiName::StableToken, answer)
    }

    /// WeCom `GET /cgi-bin/gettoken?corpid=&corpsecret=`: the token of the
    /// WeCom application whose secret this is (one per corpid and agent).
    ///
    /// Errors with the classified [`UpstreamError`] of the last base URL tried.
    pub async fn fetch_wecom_token(
        &self,
        corpid: &str,
        secret: &SecretString,
    ) -> Result<TokenGrant, UpstreamError> {
        let s = secret.expose_secret();
        let call = Call::Get(vec![("corpid", corpid), ("corpsecret", s)]);
        let answer = self.call(ApiName::WecomToken, call, Some(s)).await?;
        token_grant(ApiName::WecomToken, answer)
    }

    /// `GET /cgi-bin/ticket/getticket`: a JS-SDK ticket for a live token.
    ///
    /// Errors with [`UpstreamError`]; a rejected token decides to [`Decision::TokenRejected`].
    pub async fn fetch_ticket(
        &self,
        token: &AccessToken,
        kind: TicketKind,
    ) -> Result<TicketGrant, UpstreamError> {
        let call = Call::Get(vec![
            ("access_token", token.expose()),
            ("type", kind.as_str()),
        ]);
        let answer = self
            .call(ApiName::GetTicket, call, Some(token.expose()))
            .await?;
        ticket_grant(ApiName::GetTicket, answer)
    }

    /// `GET /cgi-bin/getcallbackip`: the cheapest call that proves a token is
    /// live. Returns WeChat's callback IP list.
    ///
    /// Errors with [`UpstreamError`]; a dead token decides to [`Decision::TokenRejected`].
    pub async fn probe(&self, token: &AccessToken) -> Result<Vec<String>, UpstreamError> {
        let call = Call::Get(vec![("access_token", token.expose())]);
        let answer = self
            .call(ApiName::GetCallbackIp, call, Some(token.expose()))
            .await?;
        answer
            .ip_list
            .ok_or_else(|| decode(ApiName::GetCallbackIp, "the answer has no ip_list"))
    }

    /// getApiQuota (`POST /cgi-bin/openapi/quota/get {"cgi_path"}`): the
    /// daily limit and today's use of the token API `of`, read with the
    /// account's live `token`.
    ///
    /// Errors with [`UpstreamError`]; a decode error when the answer has no
    /// quota or its numbers are absurd.
    pub async fn api_quota(
        &self,
        token: &AccessToken,
        of: ApiName,
    ) -> Result<ApiQuota, UpstreamError> {
        let body = serde_json::json!({ "cgi_path": format!("/{}", api_path(of)) });
        let call = Call::PostJsonWith(vec![("access_token", token.expose())], body);
        let answer = self
            .call(ApiName::ApiQuota, call, Some(token.expose()))
            .await?;
        quota_of(answer)
    }

    /// Runs one logical call: tries each base URL in order until one gives an
    /// answer that does not fail over.
    async fn call(
        &self,
        api: ApiName,
        call: Call<'_>,
        sensitive: Option<&str>,
    ) -> Result<Answer, UpstreamError> {
        let mut last = None;
        let mut unknown = false;
        let bases = match api {
            ApiName::WecomToken => &self.wecom_base_urls,
            _ => &self.base_urls,
        };
        for base in bases.iter() {
            let started = Instant::now();
            let result = self.attempt(api, base, &call, sensitive).await;
            self.metrics
                .upstream_duration
                .with_label_values(&[api.as_str()])
                .observe(started.elapsed().as_secs_f64());
            let outcome = match &result {
                Ok(_) => "ok".to_string(),
                Err(e) => e.outcome_label(),
            };
            self.metrics
                .upstream_requests
                .with_label_values(&[api.as_str(), &outcome])
                .inc();
            match result {
                Err(e) if e.fails_over() => {
                    tracing::debug!(api = api.as_str(), base_url = %base, error = %e, "upstream attempt failed, trying the next base url");
                    unknown |= e.outcome_unknown();
                    last = Some(e);
                }
                Ok(mut answer) => {
                    answer.after_unknown = unknown;
                    return Ok(answer);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("base_urls is never empty"))
    }

    /// One HTTP request to one base URL, classified.
    async fn attempt(
        &self,
        api: ApiName,
        base: &Url,
        call: &Call<'_>,
        sensitive: Option<&str>,
    ) -> Result<Answer, UpstreamError> {
        let url = endpoint(base, api);
        let request = match call {
            Call::Get(query) => self.http.get(url).query(query),
            Call::PostJson(body) => self.http.post(url).json(body),
            Call::PostJsonWith(query, body) => self.http.post(url).query(query).json(body),
        };
        let base_url = base.as_str().trim_end_matches('/').to_string();
        let transport = |e: reqwest::Error| {
            let e = e.without_url();
            if e.is_timeout() {
                UpstreamError::Timeout {
                    api,
                    base_url: base_url.clone(),
                    timeout: self.timeout,
                }
            } else {
                UpstreamError::Connect {
                    api,
                    base_url: base_url.clone(),
                    detail: error::scrub(&error_chain(&e), sensitive),
                    sent: !e.is_connect(),
                }
            }
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            return Err(UpstreamError::Http {
                api,
                base_url: base_url.clone(),
                status: status.as_u16(),
            });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no content type")
            .to_string();
        let body = read_limited(api, response, answer_limit(api))
            .await
            .map_err(|e| e.map_transport(transport))?;
        decode_answer(api, &body, &content_type, sensitive)
    }
}

/// The most bytes of a WeChat answer that are read (contract §9); a longer
/// answer is a decode error, and the rest of it is never downloaded.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The most bytes of an `api_get_authorizer_list` answer that are read: a
/// page of 500 authorizers with their refresh tokens is about 60 KiB at
/// WeChat's lengths and more with longer tokens, so the 64 KiB of the other
/// answers would refuse full pages.
pub const MAX_LIST_ANSWER_BYTES: usize = 1024 * 1024;

/// The most bytes of an answer of `api` that are read.
fn answer_limit(api: ApiName) -> usize {
    match api {
        ApiName::AuthorizerList => MAX_LIST_ANSWER_BYTES,
        _ => MAX_ANSWER_BYTES,
    }
}

/// The `expires_in` values (seconds) a token or ticket answer may carry
/// (contract §9); anything else is a decode error.
pub const EXPIRES_IN_SECS: std::ops::RangeInclusive<i64> = 1..=86_400;

/// Why a body could not be read whole.
enum ReadError {
    Transport(reqwest::Error),
    TooLarge(UpstreamError),
}

impl ReadError {
    fn map_transport(
        self,
        transport: impl FnOnce(reqwest::Error) -> UpstreamError,
    ) -> UpstreamError {
        match self {
            ReadError::Transport(e) => transport(e),
            ReadError::TooLarge(e) => e,
        }
    }
}

/// Reads at most `limit` bytes of `response`'s body: a longer one (by its
/// `Content-Length` or as it streams in) stops the read with a decode error.
async fn read_limited(
    api: ApiName,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge(answer_too_large(api)));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge(answer_too_large(api)));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The error for an answer longer than [`MAX_ANSWER_BYTES`] (for
/// `api_get_authorizer_list`, [`MAX_LIST_ANSWER_BYTES`]).
pub fn answer_too_large(api: ApiName) -> UpstreamError {
    decode(
        api,
        &format!(
            "the answer is larger than {} bytes; it was not read",
            answer_limit(api)
        ),
    )
}

/// Decodes one WeChat answer body (`content_type` only for the message):
/// WeChat's JSON with errcode 0 or none, else the classified error. The
/// `errmsg` is scrubbed of `sensitive`.
fn decode_answer(
    api: ApiName,
    body: &[u8],
    content_type: &str,
    sensitive: Option<&str>,
) -> Result<Answer, UpstreamError> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        decode(
            api,
            &format!(
                "expected JSON, got {} bytes of {content_type} ({})",
                body.len(),
                e.classify_name()
            ),
        )
    })?;
    match answer.errcode {
        Some(code) if code != 0 => Err(UpstreamError::Api {
            api,
            errcode: code,
            errmsg: error::scrub(answer.errmsg.as_deref().unwrap_or(""), sensitive),
        }),
        _ => Ok(answer),
    }
}

/// Decodes a token answer body of `api` as [`WechatClient`] does for an HTTP
/// answer (the Open Platform's shapes for its APIs): for callers that hold a
/// body without HTTP (the in-process simulator).
///
/// Errors like the client: a decode error for anything but a valid token
/// answer, [`UpstreamError::Api`] for an errcode.
pub fn decode_token_answer(api: ApiName, body: &[u8]) -> Result<TokenGrant, UpstreamError> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err(answer_too_large(api));
    }
    open_grant(api, decode_answer(api, body, "application/json", None)?)
}

/// Decodes a ticket answer body as [`WechatClient::fetch_ticket`] does.
///
/// Errors like [`decode_token_answer`].
pub fn decode_ticket_answer(api: ApiName, body: &[u8]) -> Result<TicketGrant, UpstreamError> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err(answer_too_large(api));
    }
    ticket_grant(api, decode_answer(api, body, "application/json", None)?)
}

fn endpoint(base: &Url, api: ApiName) -> Url {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base.join(api_path(api)).unwrap_or(base)
}

fn token_grant(api: ApiName, answer: Answer) -> Result<TokenGrant, UpstreamError> {
    Ok(TokenGrant {
        access_token: credential(api, "access_token", answer.access_token)?,
        expires_in: expiry(api, answer.expires_in)?,
        after_unknown: answer.after_unknown,
        waited: Duration::ZERO,
        refresh_token: None,
    })
}

/// getApiQuota's `quota` object.
#[derive(Debug, Deserialize)]
struct QuotaAnswer {
    #[serde(default)]
    daily_limit: Option<i64>,
    #[serde(default)]
    used: Option<i64>,
}

/// The quota of a getApiQuota answer, each number within 0..=[`MAX_QUOTA`].
fn quota_of(answer: Answer) -> Result<ApiQuota, UpstreamError> {
    let api = ApiName::ApiQuota;
    let quota = answer
        .quota
        .ok_or_else(|| decode(api, "the answer has no quota"))?;
    let number = |name: &str, value: Option<i64>| match value {
        Some(n) if (0..=MAX_QUOTA).contains(&n) => Ok(n.unsigned_abs()),
        Some(n) => Err(decode(
            api,
            &format!("quota.{name} is {n}, not 0 to {MAX_QUOTA}"),
        )),
        None => Err(decode(api, &format!("the quota has no {name}"))),
    };
    Ok(ApiQuota {
        daily_limit: number("daily_limit", quota.daily_limit)?,
        used: number("used", quota.used)?,
    })
}

/// Decodes a getApiQuota answer body as [`WechatClient::api_quota`] does.
///
/// Errors like [`decode_token_answer`].
pub fn decode_quota_answer(body: &[u8]) -> Result<ApiQuota, UpstreamError> {
    let api = ApiName::ApiQuota;
    if body.len() > MAX_ANSWER_BYTES {
        return Err(answer_too_large(api));
    }
    quota_of(decode_answer(api, body, "application/json", None)?)
}

fn ticket_grant(api: ApiName, answer: Answer) -> Result<TicketGrant, UpstreamError> {
    Ok(TicketGrant {
        ticket: credential(api, "ticket", answer.ticket)?,
        expires_in: expiry(api, answer.expires_in)?,
    })
}

/// A token or ticket field, checked by [`AccessToken::from_upstream`].
fn credential(
    api: ApiName,
    field: &str,
    value: Option<String>,
) -> Result<AccessToken, UpstreamError> {
    let value = value.ok_or_else(|| decode(api, &format!("the answer has no {field}")))?;
    AccessToken::from_upstream(value)
        .map_err(|why| decode(api, &format!("the {field} is not a plausible token: {why}")))
}

/// `expires_in`, which must lie in [`EXPIRES_IN_SECS`].
fn expiry(api: ApiName, expires_in: Option<i64>) -> Result<Duration, UpstreamError> {
    match expires_in {
        Some(s) if EXPIRES_IN_SECS.contains(&s) => Ok(Duration::from_secs(s.unsigned_abs())),
        Some(s) => Err(decode(
            api,
            &format!(
                "expires_in is {s}, not {} to {} seconds",
                EXPIRES_IN_SECS.start(),
                EXPIRES_IN_SECS.end()
            ),
        )),
        None => Err(decode(api, "the answer has no expires_in")),
    }
}

fn decode(api: ApiName, detail: &str) -> UpstreamError {
    UpstreamError::Decode {
        api,
        detail: detail.to_string(),
    }
}

/// The error and its sources as one sentence (reqwest hides the useful part in sources).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "i/o error",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "unexpected field types",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

/// One token fetch as the account actors ask for it.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub appid: AppId,
    pub secret: SecretString,
    /// Which call to make.
    pub endpoint: Endpoint,
    /// [`Endpoint::Stable`] only: ask WeChat to rotate now.
    pub force_refresh: bool,
    /// The Open Platform endpoints' inputs of the moment (`None` for the others).
    pub open: Option<OpenCredential>,
}

impl FetchRequest {
    /// The API this request calls: its endpoint's, except that an
    /// authorizer with an authorization code calls `api_query_auth`.
    pub fn api(&self) -> ApiName {
        match (&self.endpoint, &self.open) {
            (Endpoint::Authorizer { .. }, Some(OpenCredential::AuthCode { .. })) => {
                ApiName::QueryAuth
            }
            (endpoint, _) => endpoint.api(),
        }
    }
}

/// What an Open Platform token call needs besides the appid and secret.
#[derive(Clone)]
pub enum OpenCredential {
    /// [`Endpoint::Component`]: the newest `component_verify_ticket`.
    Ticket(AccessToken),
    /// [`Endpoint::Authorizer`]: refresh with `refresh_token`
    /// (`api_authorizer_token`) using the component's current token.
    RefreshToken {
        component_token: AccessToken,
        refresh_token: AccessToken,
    },
    /// [`Endpoint::Authorizer`]: exchange a fresh authorization `code`
    /// (`api_query_auth`); the answer carries the first refresh token.
    AuthCode {
        component_token: AccessToken,
        code: AccessToken,
    },
}

impl OpenCredential {
    /// The component token this call uses, if any (for compare-and-refresh
    /// of the component on 40001/42001).
    pub fn component_token(&self) -> Option<&AccessToken> {
        match self {
            OpenCredential::Ticket(_) => None,
            OpenCredential::RefreshToken {
                component_token, ..
            }
            | OpenCredential::AuthCode {
                component_token, ..
            } => Some(component_token),
        }
    }
}

impl std::fmt::Debug for OpenCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpenCredential::Ticket(_) => "Ticket(..)",
            OpenCredential::RefreshToken { .. } => "RefreshToken(..)",
            OpenCredential::AuthCode { .. } => "AuthCode(..)",
        })
    }
}

/// Where account actors get tokens from: WeChat over HTTP ([`WechatClient`])
/// in production, or the simulator's state called in-process in tests that run
/// on tokio's paused clock (real sockets and paused time do not mix).
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a token per `req`; errors with the classified [`UpstreamError`].
    fn fetch(
        &self,
        req: FetchRequest,
    ) -> futures::future::BoxFuture<'static, Result<TokenGrant, UpstreamError>>;

    /// Fetches a JS-SDK ticket of `kind` with the live `token`.
    fn fetch_ticket(
        &self,
        token: AccessToken,
        kind: TicketKind,
    ) -> futures::future::BoxFuture<'static, Result<TicketGrant, UpstreamError>>;

    /// Whether a call could start now without waiting behind others: what
    /// optional calls (quota readings) ask, so that they never slow a fill
    /// down. Sources without a limit always have room.
    fn has_spare_capacity(&self) -> bool {
        true
    }

    /// Reads the daily quota of the token API `of` with the live `token`
    /// (getApiQuota). Sources that only fetch tokens (test wrappers) answer
    /// that they cannot.
    fn api_quota(
        &self,
        token: AccessToken,
        of: ApiName,
    ) -> futures::future::BoxFuture<'static, Result<ApiQuota, UpstreamError>> {
        let _ = (token, of);
        Box::pin(async move {
            Err(UpstreamError::Decode {
                api: ApiName::ApiQuota,
                detail: "this token source reads no quotas".to_string(),
            })
        })
    }

    /// Makes an Open Platform call that is not a token fetch. Sources that
    /// only fetch tokens (test wrappers) answer that they cannot.
    fn open_call(
        &self,
        call: OpenCall,
    ) -> futures::future::BoxFuture<'static, Result<OpenAnswer, UpstreamError>> {
        let api = call.api();
        Box::pin(async move {
            Err(UpstreamError::Decode {
                api,
                detail: "this token source makes no Open Platform calls".to_string(),
            })
        })
    }
}

impl TokenSource for WechatClient {
    fn fetch(
        &self,
        req: FetchRequest,
    ) -> futures::future::BoxFuture<'static, Result<TokenGrant, UpstreamError>> {
        let client = self.clone();
        Box::pin(async move {
            match &req.endpoint {
                Endpoint::Legacy => client.fetch_token(&req.appid, &req.secret).await,
                Endpoint::Stable => {
                    client
                        .fetch_stable_token(&req.appid, &req.secret, req.force_refresh)
                        .await
                }
                Endpoint::Wecom { corpid } => client.fetch_wecom_token(corpid, &req.secret).await,
                Endpoint::Component | Endpoint::Authorizer { .. } => {
                    client.fetch_open_token(&req).await
                }
            }
        })
    }

    fn fetch_ticket(
        &self,
        token: AccessToken,
        kind: TicketKind,
    ) -> futures::future::BoxFuture<'static, Result<TicketGrant, UpstreamError>> {
        let client = self.clone();
        Box::pin(async move { client.fetch_ticket(&token, kind).await })
    }

    fn api_quota(
        &self,
        token: AccessToken,
        of: ApiName,
    ) -> futures::future::BoxFuture<'static, Result<ApiQuota, UpstreamError>> {
        let client = self.clone();
        Box::pin(async move { client.api_quota(&token, of).await })
    }

    fn open_call(
        &self,
        call: OpenCall,
    ) -> futures::future::BoxFuture<'static, Result<OpenAnswer, UpstreamError>> {
        let client = self.clone();
        Box::pin(async move {
            match call {
                OpenCall::AuthorizerList {
                    component,
                    component_token,
                    offset,
                    count,
                } => client
                    .authorizer_list(&component, &component_token, offset, count)
                    .await
                    .map(OpenAnswer::from),
                OpenCall::PreAuthCode {
                    component,
                    component_token,
                } => client
                    .create_preauthcode(&component, &component_token)
                    .await
                    .map(|(code, expires_in)| OpenAnswer::PreAuthCode { code, expires_in }),
                OpenCall::StartPushTicket { component, secret } => client
                    .start_push_ticket(&component, &secret)
                    .await
                    .map(|()| OpenAnswer::Done),
            }
        })
    }
}

impl From<AuthorizerPage> for OpenAnswer {
    fn from(page: AuthorizerPage) -> OpenAnswer {
        OpenAnswer::AuthorizerList {
            total_count: u32::try_from(page.total_count).unwrap_or(u32::MAX),
            authorizers: page
                .list
                .into_iter()
                .map(|(appid, token, _)| (appid, token))
                .collect(),
        }
    }
}

/// Decodes the answer `body` of an [`OpenCall`] as [`WechatClient`] does
/// (for the in-process simulator, which holds bodies without HTTP).
pub fn decode_open_answer(call: &OpenCall, body: &[u8]) -> Result<OpenAnswer, UpstreamError> {
    let api = call.api();
    if body.len() > answer_limit(api) {
        return Err(answer_too_large(api));
    }
    let answer = decode_answer(api, body, "application/json", None)?;
    match call {
        OpenCall::AuthorizerList { .. } => authorizer_page(api, answer).map(OpenAnswer::from),
        OpenCall::PreAuthCode { .. } => Ok(OpenAnswer::PreAuthCode {
            code: credential(api, "pre_auth_code", answer.pre_auth_code)?,
            expires_in: expiry(api, answer.expires_in)?,
        }),
        OpenCall::StartPushTicket { .. } => Ok(OpenAnswer::Done),
    }
}

/// The JSON body an [`OpenCall`] sends, and the component token of its query.
pub fn open_call_body(call: &OpenCall) -> (serde_json::Value, Option<&AccessToken>) {
    match call {
        OpenCall::AuthorizerList {
            component,
            component_token,
            offset,
            count,
        } => (
            serde_json::json!({
                "component_appid": component.as_str(),
                "offset": offset,
                "count": (*count).clamp(1, MAX_AUTHORIZER_PAGE),
            }),
            Some(component_token),
        ),
        OpenCall::PreAuthCode {
            component,
            component_token,
        } => (
            serde_json::json!({ "component_appid": component.as_str() }),
            Some(component_token),
        ),
        OpenCall::StartPushTicket { component, secret } => (
            serde_json::json!({
                "component_appid": component.as_str(),
                "component_secret": secret.expose_secret(),
            }),
            None,
        ),
    }
}
