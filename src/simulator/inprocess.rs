//! The simulator without sockets: the same state machine, called directly as a
//! [`TokenSource`], for tests that run on tokio's paused clock (real sockets
//! and paused time do not mix) and for benchmarks of thousands of accounts.
//!
//! Invariant: an in-process call goes through exactly the steps of an HTTP
//! call (count, fault, delay, answer), and every fault becomes the
//! [`UpstreamError`] the [`WechatClient`](crate::wechat::WechatClient) would
//! have produced from the HTTP answer.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::ExposeSecret;

use super::error::{FaultError, OpenControlError, RegistrationError, SimConfigError};
use super::faults::{Api, FaultSpec};
use super::open::{AuthorizeRequest, ComponentRegistration, RefreshTokenFault};
use super::state::{AppRegistration, Credentials, SimState, TokenStatus};
use super::{SimConfig, Stats};
use crate::clock::Clock;
use crate::domain::{AccessToken, ApiName, TicketKind};
use crate::openplatform::event::Sealed;
use crate::wechat::{Endpoint, FetchRequest, TicketGrant, TokenGrant, TokenSource, UpstreamError};

/// The base URL in-process errors name.
const IN_PROCESS_URL: &str = "in-process://simulator";

/// A simulator called in-process. Clones share one state.
#[derive(Clone, Debug)]
pub struct InProcess {
    state: Arc<SimState>,
    timeout: Duration,
}

impl InProcess {
    /// A simulator with `config`; calls that take longer than `timeout`
    /// (injected delays) fail as a timeout would.
    ///
    /// Errors when the configuration is invalid (see [`SimConfig::validate`]).
    pub fn new(config: SimConfig, timeout: Duration) -> Result<InProcess, SimConfigError> {
        config.validate()?;
        Ok(InProcess {
            state: Arc::new(SimState::new(&config)),
            timeout,
        })
    }

    /// Registers or updates an app.
    ///
    /// Errors with every problem of an invalid registration; nothing changes then.
    pub fn try_register_app(&self, app: AppRegistration) -> Result<(), RegistrationError> {
        self.state.register(app)
    }

    /// Registers or updates an Open Platform component. Nothing is pushed
    /// in-process: tests take its events from [`InProcess::ticket_event`],
    /// [`InProcess::authorize`] and [`InProcess::unauthorize`] and hand them
    /// to the code under test themselves.
    ///
    /// Errors with every problem of an invalid registration; nothing changes then.
    pub fn try_register_component(
        &self,
        reg: ComponentRegistration,
    ) -> Result<(), RegistrationError> {
        self.state.register_component(reg).map(|_| ())
    }

    /// Mints a new verify ticket for `component` (valid 12 h of the
    /// simulator's clock) and returns the encrypted `component_verify_ticket`
    /// event WeChat would push.
    ///
    /// Errors when the component is unknown.
    pub fn ticket_event(&self, component: &str) -> Result<Sealed, OpenControlError> {
        self.state.ticket_event(component).map(|out| out.sealed)
    }

    /// A merchant authorizes `component` for the first time (or again):
    /// returns the encrypted `authorized` event with a fresh code.
    ///
    /// Errors when the component is unknown or the appid invalid.
    pub fn authorize(&self, component: &str, authorizer: &str) -> Result<Sealed, OpenControlError> {
        self.authorize_with(component, &AuthorizeRequest::new(authorizer))
    }

    /// [`InProcess::authorize`] with every option (`updateauthorized`, no
    /// API permission).
    ///
    /// Errors when the component is unknown or the appid invalid.
    pub fn authorize_with(
        &self,
        component: &str,
        req: &AuthorizeRequest,
    ) -> Result<Sealed, OpenControlError> {
        self.state.authorize(component, req).map(|out| out.sealed)
    }

    /// A merchant revokes `component`: its tokens die, its refresh token
    /// answers 61003; returns the encrypted `unauthorized` event.
    ///
    /// Errors when the component or the authorizer is unknown.
    pub fn unauthorize(
        &self,
        component: &str,
        authorizer: &str,
    ) -> Result<Sealed, OpenControlError> {
        self.state
            .unauthorize(component, authorizer)
            .map(|out| out.sealed)
    }

    /// Breaks an authorizer's refresh token (see [`RefreshTokenFault`]).
    ///
    /// Errors when the component or the authorizer is unknown.
    pub fn break_refresh_token(
        &self,
        component: &str,
        fault: &RefreshTokenFault,
    ) -> Result<(), OpenControlError> {
        self.state.break_refresh_token(component, fault)
    }

    /// Injects a fault.
    ///
    /// Errors when the fault is invalid (see [`FaultSpec::validate`]).
    pub fn try_inject_fault(&self, fault: FaultSpec) -> Result<(), FaultError> {
        self.state.add_fault(fault).map(|_| ())
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.state.clear_faults();
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// The simulator's clock.
    pub fn clock(&self) -> &Clock {
        &self.state.clock
    }

    /// The validity probe (`GET /cgi-bin/getcallbackip`): true when `token` is
    /// live now. Counted in [`Stats::probe_results`] like an HTTP probe.
    pub fn probe(&self, token: &str) -> bool {
        self.state.begin_call(Api::GetCallbackIp, None);
        self.state.probe(Some(token)).is_ok()
    }

    /// True when `token` is a live access token of `appid`, counting nothing.
    pub fn is_token_valid(&self, appid: &str, token: &str) -> bool {
        matches!(self.state.token_status(token), TokenStatus::Live { appid: owner, .. } if owner == appid)
    }

    async fn call(&self, req: FetchRequest) -> Result<TokenGrant, UpstreamError> {
        let api_name = req.api();
        if matches!(
            req.endpoint,
            Endpoint::Component | Endpoint::Authorizer { .. }
        ) {
            // As in the client: a request without its credential is never sent.
            crate::wechat::open_token_call(&req)?;
        }
        let api = Api::of(api_name);
        let _in_flight = self.state.enter_token_call();
        let timeout = || UpstreamError::Timeout {
            api: api_name,
            base_url: IN_PROCESS_URL.to_string(),
            timeout: self.timeout,
        };
        if let Some(spec) = self.state.begin_call(api, Some(req.appid.as_str())) {
            if let Some(delay) = spec.delay() {
                if delay >= self.timeout {
                    if !spec.replaces_answer() {
                        // As at WeChat: the caller gave up, but the request
                        // is still processed when its delay is over (a late
                        // answer that mints a token nobody receives).
                        let this = self.clone();
                        let late = req.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = this.answer(&late, api_name);
                        });
                    }
                    tokio::time::sleep(self.timeout).await;
                    return Err(timeout());
                }
                tokio::time::sleep(delay).await;
            }
            if let Some(err) = fault_error(&spec, api_name) {
                return Err(err);
            }
            if let Some(body) = fault_body(&spec) {
                return crate::wechat::decode_token_answer(api_name, &body);
            }
        }
        self.answer(&req, api_name)
    }

    /// Answers a token request the way the token state decides.
    fn answer(&self, req: &FetchRequest, api_name: ApiName) -> Result<TokenGrant, UpstreamError> {
        let creds = Credentials {
            grant_type: Some("client_credential".to_string()),
            appid: Some(req.appid.as_str().to_string()),
            secret: Some(req.secret.expose_secret().to_string()),
        };
        let peer = Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let answer = match &req.endpoint {
            Endpoint::Wecom { corpid } => {
                self.state
                    .wecom_token(Some(corpid), Some(req.secret.expose_secret()), peer)
            }
            Endpoint::Legacy => self.state.legacy_token(&creds, peer),
            Endpoint::Stable => self.state.stable_token(&creds, req.force_refresh, peer),
            Endpoint::Component | Endpoint::Authorizer { .. } => {
                // The body the client would send, answered by the same code
                // as over HTTP and decoded by the client's decoding.
                let call = crate::wechat::open_token_call(req)?;
                let body = call.body.to_string();
                let token = call.component_token.map(AccessToken::expose);
                return match self
                    .state
                    .open_call(Api::of(call.api), token, body.as_bytes(), peer)
                {
                    Ok(answer) => {
                        crate::wechat::decode_token_answer(call.api, answer.to_string().as_bytes())
                    }
                    Err(e) => Err(UpstreamError::Api {
                        api: call.api,
                        errcode: e.errcode,
                        errmsg: e.errmsg,
                    }),
                };
            }
        };
        match answer {
            Ok(issued) => {
                let body = serde_json::json!({
                    "access_token": issued.value,
                    "expires_in": issued.expires_in,
                });
                crate::wechat::decode_token_answer(api_name, body.to_string().as_bytes())
            }
            Err(e) => Err(UpstreamError::Api {
                api: api_name,
                errcode: e.errcode,
                errmsg: e.errmsg,
            }),
        }
    }
}

impl InProcess {
    /// Applies the injected fault of a non-token call of `api` for `appid`,
    /// as the HTTP client would see it: a delay (a timeout past the client's
    /// limit), an error, or a body decoded by `decode`. `None`: no fault
    /// answers, the call goes on.
    async fn faulted<T>(
        &self,
        api: ApiName,
        appid: Option<&str>,
        decode: impl FnOnce(&[u8]) -> Result<T, UpstreamError>,
    ) -> Option<Result<T, UpstreamError>> {
        let spec = self.state.begin_call(Api::of(api), appid)?;
        if let Some(delay) = spec.delay() {
            tokio::time::sleep(delay.min(self.timeout)).await;
            if delay >= self.timeout {
                return Some(Err(UpstreamError::Timeout {
                    api,
                    base_url: IN_PROCESS_URL.to_string(),
                    timeout: self.timeout,
                }));
            }
        }
        if let Some(err) = fault_error(&spec, api) {
            return Some(Err(err));
        }
        fault_body(&spec).map(|body| decode(&body))
    }
}

/// The body a `body` or `body_bytes` fault answers with, as the HTTP
/// simulator would send it (a `body_bytes` body only as far as a client
/// reads it: one byte past its limit).
fn fault_body(spec: &FaultSpec) -> Option<Vec<u8>> {
    if let Some(body) = &spec.body {
        return Some(body.clone().into_bytes());
    }
    let n = spec.body_bytes?;
    let n = usize::try_from(n)
        .unwrap_or(usize::MAX)
        .min(crate::wechat::MAX_ANSWER_BYTES + 1);
    let mut body = br#"{"pad":""#.to_vec();
    body.resize(n.max(body.len()), b'x');
    body.truncate(n);
    Some(body)
}

/// The error the HTTP client would report for a fault's answer, or `None`
/// when the fault only delays.
fn fault_error(spec: &FaultSpec, api: ApiName) -> Option<UpstreamError> {
    let base_url = IN_PROCESS_URL.to_string();
    if spec.drop_connection {
        return Some(UpstreamError::Connect {
            api,
            base_url,
            detail: "connection closed without an answer".to_string(),
            sent: true,
        });
    }
    if let Some(status) = spec.http_status.filter(|s| *s != 200) {
        return Some(UpstreamError::Http {
            api,
            base_url,
            status,
        });
    }
    if spec.html || spec.malformed {
        return Some(UpstreamError::Decode {
            api,
            detail: "the answer is not WeChat's JSON".to_string(),
        });
    }
    spec.errcode.map(|errcode| UpstreamError::Api {
        api,
        errcode,
        errmsg: spec
            .errmsg
            .clone()
            .unwrap_or_else(|| super::answers::default_errmsg(errcode).to_string()),
    })
}

impl TokenSource for InProcess {
    fn fetch(&self, req: FetchRequest) -> BoxFuture<'static, Result<TokenGrant, UpstreamError>> {
        let this = self.clone();
        Box::pin(async move { this.call(req).await })
    }

    fn fetch_ticket(
        &self,
        token: AccessToken,
        kind: TicketKind,
    ) -> BoxFuture<'static, Result<TicketGrant, UpstreamError>> {
        let this = self.clone();
        Box::pin(async move {
            let api = ApiName::GetTicket;
            let appid = this.state.appid_of_token(token.expose());
            if let Some(faulted) = this
                .faulted(api, appid.as_deref(), |body| {
                    crate::wechat::decode_ticket_answer(api, body)
                })
                .await
            {
                return faulted;
            }
            match this.state.ticket(Some(token.expose()), Some(kind.as_str())) {
                Ok(issued) => {
                    let body = serde_json::json!({
                        "errcode": 0,
                        "ticket": issued.value,
                        "expires_in": issued.expires_in,
                    });
                    crate::wechat::decode_ticket_answer(api, body.to_string().as_bytes())
                }
                Err(e) => Err(UpstreamError::Api {
                    api,
                    errcode: e.errcode,
                    errmsg: e.errmsg,
                }),
            }
        })
    }

    fn api_quota(
        &self,
        token: AccessToken,
        of: ApiName,
    ) -> BoxFuture<'static, Result<crate::wechat::ApiQuota, UpstreamError>> {
        let this = self.clone();
        Box::pin(async move {
            let api = ApiName::ApiQuota;
            let appid = this.state.appid_of_token(token.expose());
            if let Some(faulted) = this
                .faulted(api, appid.as_deref(), crate::wechat::decode_quota_answer)
                .await
            {
                return faulted;
            }
            let cgi_path = format!("/{}", crate::wechat::api_path(of));
            match this.state.api_quota(Some(token.expose()), Some(&cgi_path)) {
                Ok(quota) => {
                    crate::wechat::decode_quota_answer(quota.answer().to_string().as_bytes())
                }
                Err(e) => Err(UpstreamError::Api {
                    api,
                    errcode: e.errcode,
                    errmsg: e.errmsg,
                }),
            }
        })
    }

    fn open_call(
        &self,
        call: crate::wechat::OpenCall,
    ) -> BoxFuture<'static, Result<crate::wechat::OpenAnswer, UpstreamError>> {
        let this = self.clone();
        Box::pin(async move {
            let api = call.api();
            let component = match &call {
                crate::wechat::OpenCall::AuthorizerList { component, .. }
                | crate::wechat::OpenCall::PreAuthCode { component, .. }
                | crate::wechat::OpenCall::StartPushTicket { component, .. } => component.clone(),
            };
            if let Some(faulted) = this
                .faulted(api, Some(component.as_str()), |body| {
                    crate::wechat::decode_open_answer(&call, body)
                })
                .await
            {
                return faulted;
            }
            let (body, token) = crate::wechat::open_call_body(&call);
            let peer = Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            match this.state.open_call(
                Api::of(api),
                token.map(AccessToken::expose),
                body.to_string().as_bytes(),
                peer,
            ) {
                Ok(answer) => {
                    crate::wechat::decode_open_answer(&call, answer.to_string().as_bytes())
                }
                Err(e) => Err(UpstreamError::Api {
                    api,
                    errcode: e.errcode,
                    errmsg: e.errmsg,
                }),
            }
        })
    }
}
