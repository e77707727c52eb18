//! The simulator's Open Platform (contract §6, facts in `open-platform.md`):
//! third-party platforms ("components"), the verify tickets WeChat pushes
//! them, authorization codes, authorizers and their refresh tokens, and the
//! `/cgi-bin/component/...` APIs that turn them into tokens.
//!
//! Owns: [`ComponentRegistration`] and the control requests, the Open
//! Platform part of the state ([`OpenState`], inside the simulator's one
//! lock), the answers of the six component APIs (built here as JSON, so the
//! HTTP routes and [`InProcess`](super::InProcess) answer identically), the
//! sealing of pushed events and the pusher task that POSTs them to a
//! component's `callback_url`.
//!
//! Invariants:
//! - All time comes from the simulator's clock: tickets live 12 h from their
//!   push, codes 10 minutes, a rotated refresh token 5 more minutes (the
//!   component's `refresh_overlap_ms`).
//! - The lock is never held across an `.await`: events are sealed under it
//!   and delivered after it is released.
//! - Component tokens are accepted only by the component APIs of their own
//!   component; authorizer tokens work on the account APIs like an account's.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use url::Url;

use super::answers::{WxError, canonical_ip};
use super::error::{OpenControlError, RegistrationError, RegistrationProblem};
use super::faults::Api;
use super::state::{
    DayCount, Inner, SimState, TokenUse, check_token, issue_token, prune, random_string,
    revoke_after_grace,
};
use super::whitelist::{self, IpRange};
use crate::clock::china_day;
use crate::domain::AppId;
use crate::openplatform::MsgCrypt;
use crate::openplatform::event::{Event, Sealed, seal};

/// How long a pushed `component_verify_ticket` is accepted (WeChat: 12 h).
pub const TICKET_LIFE: Duration = Duration::from_secs(12 * 3600);
/// How long an authorization code can be exchanged (WeChat: 10 minutes).
pub const CODE_LIFE: Duration = Duration::from_secs(600);
/// How long a rotated-away refresh token keeps working unless the component
/// says otherwise (`refresh_overlap_ms`).
pub const REFRESH_OVERLAP: Duration = Duration::from_secs(300);
/// The `expires_in` of a pre-auth code.
const PRE_AUTH_CODE_SECS: i64 = 600;
/// The most authorizers one `api_get_authorizer_list` page may ask for.
pub const MAX_LIST_COUNT: i64 = 500;
/// The default time between two ticket pushes (WeChat: 10 minutes).
const DEFAULT_TICKET_INTERVAL_MS: u64 = 600_000;
/// Tickets are remembered this long, so an expired one answers 61005
/// rather than 61006.
const TICKET_RECORD_KEEP_MS: i64 = 2 * 12 * 3600 * 1000;
/// At most this many tickets are remembered per component.
const MAX_TICKETS: usize = 1000;
/// The longest the pusher sleeps between two looks at the clock, so that
/// moving the simulator's clock forward is noticed promptly.
const PUSHER_TICK: Duration = Duration::from_secs(1);
/// How long a push waits for the event URL's answer (WeChat: 5 s).
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

fn ms(d: Duration) -> i64 {
    super::state::ms(d)
}

fn default_interval() -> u64 {
    DEFAULT_TICKET_INTERVAL_MS
}

fn default_overlap() -> u64 {
    u64::try_from(REFRESH_OVERLAP.as_millis()).unwrap_or(u64::MAX)
}

fn yes() -> bool {
    true
}

/// A third-party platform the simulator serves (`POST /sim/components`).
/// Registering an appid again updates its settings and keeps its tickets,
/// tokens and authorizers.
#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ComponentRegistration {
    /// The component appid, for example `wx3333333333333333`.
    pub component_appid: String,
    /// The `component_appsecret` callers must present.
    pub secret: String,
    /// The message-check token events are signed with.
    pub token: String,
    /// The 43-character `EncodingAESKey` events are encrypted with.
    pub encoding_aes_key: String,
    /// The event URL tickets and authorization events are POSTed to; none
    /// means nothing is pushed (in-process tests seal events instead).
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Milliseconds between ticket pushes (WeChat: 10 minutes); 0 pushes no
    /// tickets on a schedule.
    #[serde(default = "default_interval")]
    pub ticket_interval_ms: u64,
    /// True (the default): every `api_authorizer_token` call returns a new
    /// refresh token, the previous one working `refresh_overlap_ms` more.
    /// False: the same refresh token is returned until re-authorization.
    #[serde(default = "yes")]
    pub rotate_refresh_tokens: bool,
    /// Milliseconds a rotated-away refresh token keeps working (default
    /// 300000, [`REFRESH_OVERLAP`]: WeChat's 5 minutes); 0 answers 61023 to
    /// it at once after the rotation, so a client that refreshes with a stale
    /// refresh token is caught.
    #[serde(default = "default_overlap")]
    pub refresh_overlap_ms: u64,
    /// Addresses or CIDR ranges allowed to call the component APIs; empty
    /// means any IP (61004 for others).
    #[serde(default)]
    pub ip_whitelist: Vec<String>,
}

impl ComponentRegistration {
    /// A component with WeChat's defaults: no callback, tickets every 10
    /// minutes once a callback is set, refresh tokens rotating with 5
    /// minutes of overlap.
    pub fn new(component_appid: &str, secret: &str, token: &str, encoding_aes_key: &str) -> Self {
        ComponentRegistration {
            component_appid: component_appid.to_string(),
            secret: secret.to_string(),
            token: token.to_string(),
            encoding_aes_key: encoding_aes_key.to_string(),
            callback_url: None,
            ticket_interval_ms: DEFAULT_TICKET_INTERVAL_MS,
            rotate_refresh_tokens: true,
            refresh_overlap_ms: default_overlap(),
            ip_whitelist: Vec::new(),
        }
    }
}

impl std::fmt::Debug for ComponentRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentRegistration")
            .field("component_appid", &self.component_appid)
            .field("callback_url", &self.callback_url)
            .field("ticket_interval_ms", &self.ticket_interval_ms)
            .field("rotate_refresh_tokens", &self.rotate_refresh_tokens)
            .field("refresh_overlap_ms", &self.refresh_overlap_ms)
            .field("ip_whitelist", &self.ip_whitelist)
            .finish_non_exhaustive()
    }
}

/// `POST /sim/components/{appid}/authorize`: a merchant authorizes the
/// platform (again, with `update`); an `authorized` or `updateauthorized`
/// event carries a fresh authorization code.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// The merchant's appid.
    pub authorizer_appid: String,
    /// Push `updateauthorized` instead of `authorized`.
    #[serde(default)]
    pub update: bool,
    /// False: the merchant granted no API permission, so `api_query_auth`
    /// answers without tokens.
    #[serde(default = "yes")]
    pub permissions: bool,
}

impl AuthorizeRequest {
    /// A first authorization with every permission.
    pub fn new(authorizer_appid: &str) -> Self {
        AuthorizeRequest {
            authorizer_appid: authorizer_appid.to_string(),
            update: false,
            permissions: true,
        }
    }
}

/// `POST /sim/components/{appid}/refresh_tokens`: break an authorizer's
/// refresh token, as WeChat sometimes does, so the client must recover.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RefreshTokenFault {
    /// The authorizer whose refresh token breaks.
    pub authorizer_appid: String,
    /// The next N `api_authorizer_token` calls of the authorizer answer 61023.
    #[serde(default)]
    pub fail_next: u32,
    /// Replace the stored refresh token by a new one the client does not
    /// know (only `api_get_authorizer_list` shows it); the old ones answer 61023.
    #[serde(default)]
    pub invalidate: bool,
}

/// The Open Platform part of the simulator's state.
#[derive(Debug, Default)]
pub(super) struct OpenState {
    components: HashMap<String, Component>,
}

#[derive(Debug)]
struct Component {
    secret: String,
    crypt: Arc<MsgCrypt>,
    callback: Option<Url>,
    interval_ms: u64,
    rotate: bool,
    /// How long a rotated-away refresh token keeps working (ms).
    overlap_ms: i64,
    whitelist: Vec<IpRange>,
    /// False after `POST /sim/components/{appid}/pushing {"on":false}`,
    /// until that or `api_start_push_ticket` turns it on again.
    pushing: bool,
    /// Bumped by each registration, so a superseded pusher task stops.
    generation: u64,
    /// Pushed tickets and when (Unix ms), oldest first.
    tickets: VecDeque<(String, i64)>,
    token_current: Option<String>,
    codes: HashMap<String, Code>,
    authorizers: BTreeMap<String, Authorizer>,
    /// `api_component_token` calls that minted a token, per China-time day.
    component_tokens_today: DayCount,
    /// `api_authorizer_token` calls that minted a token, per China-time day.
    authorizer_tokens_today: DayCount,
}

/// What getApiQuota reports as the daily limit of `api_component_token`
/// (WeChat: about 10,000), past which the simulator answers 45009.
pub const COMPONENT_TOKEN_DAILY_QUOTA: u32 = 10_000;

/// What getApiQuota reports as the daily limit of `api_authorizer_token`
/// (WeChat publishes none; developers do hit 45009). Reported, not enforced.
pub const AUTHORIZER_TOKEN_DAILY_QUOTA: u32 = 100_000;

#[derive(Debug)]
struct Code {
    authorizer: String,
    expires_ms: i64,
    used: bool,
    permissions: bool,
}

#[derive(Debug)]
struct Authorizer {
    /// Unix seconds of the latest authorization.
    auth_time: i64,
    revoked: bool,
    refresh_current: String,
    /// The refresh token rotated away and until when (Unix ms) it works.
    refresh_previous: Option<(String, i64)>,
    token_current: Option<String>,
    /// The next N refreshes answer 61023.
    fail_next: u32,
}

impl OpenState {
    /// True when `appid` is a component or an authorizer of one.
    pub(super) fn knows(&self, appid: &str) -> bool {
        self.components.contains_key(appid)
            || self
                .components
                .values()
                .any(|c| c.authorizers.contains_key(appid))
    }

    /// True when `appid` is a registered component.
    pub(super) fn has_component(&self, appid: &str) -> bool {
        self.components.contains_key(appid)
    }

    /// getApiQuota for component `appid`'s own token: the daily limit and
    /// the use on `day` of `cgi_path`, when it is one of its token APIs.
    pub(super) fn quota(
        &self,
        appid: &str,
        cgi_path: Option<&str>,
        day: i64,
    ) -> Option<(u32, u32)> {
        let comp = self.components.get(appid)?;
        let (limit, used) = match cgi_path? {
            "/cgi-bin/component/api_component_token" => {
                (COMPONENT_TOKEN_DAILY_QUOTA, comp.component_tokens_today)
            }
            "/cgi-bin/component/api_authorizer_token" => {
                (AUTHORIZER_TOKEN_DAILY_QUOTA, comp.authorizer_tokens_today)
            }
            _ => return None,
        };
        Some((limit, used.get(day).min(limit)))
    }
}

/// An event sealed for a component, and where to push it (if anywhere).
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    pub(super) sealed: Sealed,
    pub(super) callback: Option<Url>,
}

/// What the pusher does next.
enum Step {
    Stop,
    Wait(Duration),
    Push(Outgoing),
}

/// A JSON body read leniently, as WeChat does: wrong types are 47001, empty
/// strings count as missing.
struct Body(Map<String, Value>);

impl Body {
    fn parse(bytes: &[u8]) -> Result<Body, WxError> {
        match serde_json::from_slice(bytes) {
            Ok(Value::Object(map)) => Ok(Body(map)),
            _ => Err(WxError::new(47001)),
        }
    }

    fn text(&self, name: &str) -> Result<Option<&str>, WxError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(WxError::new(47001)),
        }
    }

    fn int(&self, name: &str) -> Result<Option<i64>, WxError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| WxError::new(47001)),
            Some(_) => Err(WxError::new(47001)),
        }
    }
}

/// 61004: the caller is not in the component's whitelist; names the IP.
fn ip_not_registered(peer: Option<IpAddr>) -> WxError {
    let ip = peer
        .map(canonical_ip)
        .map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
    WxError::with_message(
        61004,
        format!("access clientip is not registered, requestIP: {ip}"),
    )
}

fn refresh_token_value() -> String {
    format!("refreshtoken@@@{}", random_string(64))
}

impl SimState {
    /// Registers or updates a component; returns its new generation (for its
    /// pusher).
    ///
    /// Errors with every problem of an invalid registration; nothing changes then.
    pub(super) fn register_component(
        &self,
        reg: ComponentRegistration,
    ) -> Result<u64, RegistrationError> {
        let mut problems = Vec::new();
        if let Err(e) = AppId::parse(&reg.component_appid) {
            problems.push(RegistrationProblem::AppId(e));
        }
        if reg.secret.is_empty() {
            problems.push(RegistrationProblem::EmptySecret);
        }
        if reg.token.is_empty() {
            problems.push(RegistrationProblem::EmptyToken);
        }
        let crypt = match MsgCrypt::new(&reg.token, &reg.encoding_aes_key, &reg.component_appid) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(RegistrationProblem::EncodingAesKey(e));
                None
            }
        };
        let callback = match &reg.callback_url {
            None => None,
            Some(raw) => match Url::parse(raw) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
                _ => {
                    problems.push(RegistrationProblem::CallbackUrl {
                        url: raw.chars().take(200).collect(),
                    });
                    None
                }
            },
        };
        let mut ranges = Vec::with_capacity(reg.ip_whitelist.len());
        for entry in &reg.ip_whitelist {
            match IpRange::parse(entry) {
                Ok(r) => ranges.push(r),
                Err(e) => problems.push(RegistrationProblem::Whitelist(e)),
            }
        }
        let Some(crypt) = crypt.filter(|_| problems.is_empty()) else {
            return Err(RegistrationError { problems });
        };
        let fresh = Component {
            secret: reg.secret,
            crypt: Arc::new(crypt),
            callback,
            interval_ms: reg.ticket_interval_ms,
            rotate: reg.rotate_refresh_tokens,
            overlap_ms: i64::try_from(reg.refresh_overlap_ms).unwrap_or(i64::MAX),
            whitelist: ranges,
            pushing: true,
            generation: 1,
            tickets: VecDeque::new(),
            token_current: None,
            codes: HashMap::new(),
            authorizers: BTreeMap::new(),
            component_tokens_today: DayCount::default(),
            authorizer_tokens_today: DayCount::default(),
        };
        let mut inner = self.inner.lock();
        match inner.open.components.get_mut(&reg.component_appid) {
            Some(comp) => {
                comp.secret = fresh.secret;
                comp.crypt = fresh.crypt;
                comp.callback = fresh.callback;
                comp.interval_ms = fresh.interval_ms;
                comp.rotate = fresh.rotate;
                comp.overlap_ms = fresh.overlap_ms;
                comp.whitelist = fresh.whitelist;
                comp.generation += 1;
                Ok(comp.generation)
            }
            None => {
                inner.open.components.insert(reg.component_appid, fresh);
                Ok(1)
            }
        }
    }

    /// Mints a new verify ticket for `component` and seals the
    /// `component_verify_ticket` event that carries it.
    ///
    /// Errors when the component is unknown.
    pub(super) fn ticket_event(&self, component: &str) -> Result<Outgoing, OpenControlError> {
        let now = self.clock.now_unix_ms();
        let mut inner = self.inner.lock();
        let comp = component_mut(&mut inner, component)?;
        Ok(mint_ticket(comp, now))
    }

    /// A merchant authorizes (or re-authorizes) `component`: the authorizer
    /// is created or updated with a new refresh token (old ones answer
    /// 61023), and a fresh single-use authorization code is sealed into an
    /// `authorized` / `updateauthorized` event.
    ///
    /// Errors when the component is unknown or the appid invalid.
    pub(super) fn authorize(
        &self,
        component: &str,
        req: &AuthorizeRequest,
    ) -> Result<Outgoing, OpenControlError> {
        AppId::parse(&req.authorizer_appid).map_err(OpenControlError::AuthorizerAppId)?;
        let now = self.clock.now_unix_ms();
        let mut inner = self.inner.lock();
        let comp = component_mut(&mut inner, component)?;
        let refresh = refresh_token_value();
        match comp.authorizers.get_mut(&req.authorizer_appid) {
            Some(a) => {
                a.auth_time = now.div_euclid(1000);
                a.revoked = false;
                a.refresh_current = refresh;
                a.refresh_previous = None;
                a.fail_next = 0;
            }
            None => {
                comp.authorizers.insert(
                    req.authorizer_appid.clone(),
                    Authorizer {
                        auth_time: now.div_euclid(1000),
                        revoked: false,
                        refresh_current: refresh,
                        refresh_previous: None,
                        token_current: None,
                        fail_next: 0,
                    },
                );
            }
        }
        let code = format!("queryauthcode@@@{}", random_string(64));
        comp.codes.retain(|_, c| c.expires_ms > now && !c.used);
        comp.codes.insert(
            code.clone(),
            Code {
                authorizer: req.authorizer_appid.clone(),
                expires_ms: now.saturating_add(ms(CODE_LIFE)),
                used: false,
                permissions: req.permissions,
            },
        );
        let event = Event::Authorized {
            authorizer_appid: req.authorizer_appid.clone(),
            code,
            update: req.update,
            create_time: now.div_euclid(1000),
        };
        Ok(outgoing(comp, &event, now))
    }

    /// A merchant revokes `component`: the authorizer's tokens die now, its
    /// refresh token answers 61003, it leaves `api_get_authorizer_list`, and
    /// an `unauthorized` event is sealed.
    ///
    /// Errors when the component or the authorizer is unknown.
    pub(super) fn unauthorize(
        &self,
        component: &str,
        authorizer: &str,
    ) -> Result<Outgoing, OpenControlError> {
        let now = self.clock.now_unix_ms();
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let comp = component_mut(inner, component)?;
        let Some(a) = comp.authorizers.get_mut(authorizer) else {
            return Err(unknown_authorizer(component, authorizer));
        };
        a.revoked = true;
        a.token_current = None;
        let event = Event::Unauthorized {
            authorizer_appid: authorizer.to_string(),
            create_time: now.div_euclid(1000),
        };
        let out = outgoing(comp, &event, now);
        for rec in inner.tokens.values_mut() {
            if rec.appid == authorizer
                && matches!(&rec.kind, TokenUse::Authorizer { component: c } if c == component)
                && rec.revoked_ms.is_none_or(|r| r > now)
            {
                rec.revoked_ms = Some(now);
            }
        }
        Ok(out)
    }

    /// Stops or resumes the scheduled ticket pushes of `component`.
    ///
    /// Errors when the component is unknown.
    pub(super) fn set_pushing(&self, component: &str, on: bool) -> Result<(), OpenControlError> {
        let mut inner = self.inner.lock();
        component_mut(&mut inner, component)?.pushing = on;
        Ok(())
    }

    /// Breaks an authorizer's refresh token (see [`RefreshTokenFault`]).
    ///
    /// Errors when the component or the authorizer is unknown.
    pub(super) fn break_refresh_token(
        &self,
        component: &str,
        fault: &RefreshTokenFault,
    ) -> Result<(), OpenControlError> {
        let mut inner = self.inner.lock();
        let comp = component_mut(&mut inner, component)?;
        let Some(a) = comp.authorizers.get_mut(&fault.authorizer_appid) else {
            return Err(unknown_authorizer(component, &fault.authorizer_appid));
        };
        a.fail_next = a.fail_next.saturating_add(fault.fail_next);
        if fault.invalidate {
            a.refresh_current = refresh_token_value();
            a.refresh_previous = None;
        }
        Ok(())
    }

    /// One step of `component`'s pusher task of `generation`, whose next
    /// scheduled push is due at `due_ms` (updated when a ticket is sealed).
    fn pusher_step(&self, component: &str, generation: u64, due_ms: &mut i64) -> Step {
        let now = self.clock.now_unix_ms();
        let mut inner = self.inner.lock();
        let Some(comp) = inner.open.components.get_mut(component) else {
            return Step::Stop;
        };
        if comp.generation != generation || comp.interval_ms == 0 || comp.callback.is_none() {
            return Step::Stop;
        }
        if !comp.pushing {
            return Step::Wait(PUSHER_TICK);
        }
        if now < *due_ms {
            return Step::Wait(crate::clock::until_ms(now, *due_ms).min(PUSHER_TICK));
        }
        *due_ms = now.saturating_add(i64::try_from(comp.interval_ms).unwrap_or(i64::MAX));
        Step::Push(mint_ticket(comp, now))
    }

    /// The appid a component API call is counted and fault-matched under:
    /// the authorizer for `api_authorizer_token` and `api_query_auth` (the
    /// code's), else the component.
    pub(super) fn open_call_appid(&self, api: Api, body: &[u8]) -> Option<String> {
        let body = Body::parse(body).ok()?;
        let component = body.text("component_appid").ok().flatten();
        match api {
            Api::AuthorizerToken => body
                .text("authorizer_appid")
                .ok()
                .flatten()
                .map(str::to_string),
            Api::QueryAuth => {
                let code = body.text("authorization_code").ok().flatten();
                let inner = self.inner.lock();
                code.and_then(|code| {
                    inner
                        .open
                        .components
                        .get(component?)?
                        .codes
                        .get(code)
                        .map(|c| c.authorizer.clone())
                })
                .or_else(|| component.map(str::to_string))
            }
            _ => component.map(str::to_string),
        }
    }

    /// Answers one component API call: `token` is the query's
    /// `component_access_token` (or `access_token`), `body` the JSON body.
    /// Returns the answer's JSON, or WeChat's error.
    pub(super) fn open_call(
        &self,
        api: Api,
        token: Option<&str>,
        body: &[u8],
        peer: Option<IpAddr>,
    ) -> Result<Value, WxError> {
        let body = Body::parse(body)?;
        let now = self.clock.now_unix_ms();
        let limits = self.limits;
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let answer = match api {
            Api::ComponentToken => component_token(inner, &body, peer, now, limits),
            Api::StartPushTicket => start_push_ticket(inner, &body, peer),
            Api::PreAuthCode => {
                checked_component(inner, token, &body, peer, now)?;
                Ok(json!({
                    "pre_auth_code": format!("preauthcode@@@{}", random_string(60)),
                    "expires_in": PRE_AUTH_CODE_SECS,
                }))
            }
            Api::QueryAuth => query_auth(inner, token, &body, peer, now, limits),
            Api::AuthorizerToken => authorizer_token(inner, token, &body, peer, now, limits),
            Api::AuthorizerList => authorizer_list(inner, token, &body, peer, now),
            Api::Token
            | Api::StableToken
            | Api::GetTicket
            | Api::GetCallbackIp
            | Api::GetApiQuota
            | Api::WecomToken
            | Api::Business => Err(WxError::new(40097)),
        };
        prune(inner, now);
        answer
    }
}

fn unknown_authorizer(component: &str, authorizer: &str) -> OpenControlError {
    OpenControlError::UnknownAuthorizer {
        component: component.to_string(),
        authorizer: authorizer.chars().take(64).collect(),
    }
}

fn component_mut<'a>(
    inner: &'a mut Inner,
    component: &str,
) -> Result<&'a mut Component, OpenControlError> {
    inner
        .open
        .components
        .get_mut(component)
        .ok_or_else(|| OpenControlError::UnknownComponent {
            component: component.chars().take(64).collect(),
        })
}

fn outgoing(comp: &Component, event: &Event, now: i64) -> Outgoing {
    Outgoing {
        sealed: seal(&comp.crypt, event, now.div_euclid(1000)),
        callback: comp.callback.clone(),
    }
}

/// Records a new ticket (forgetting long-dead ones) and seals its event.
fn mint_ticket(comp: &mut Component, now: i64) -> Outgoing {
    let ticket = format!("ticket@@@{}", random_string(86));
    let keep_after = now.saturating_sub(TICKET_RECORD_KEEP_MS);
    comp.tickets.retain(|(_, at)| *at > keep_after);
    while comp.tickets.len() >= MAX_TICKETS {
        comp.tickets.pop_front();
    }
    comp.tickets.push_back((ticket.clone(), now));
    let event = Event::Ticket {
        ticket,
        create_time: now.div_euclid(1000),
    };
    outgoing(comp, &event, now)
}

/// The component's appid, after checking the caller's IP and the secret
/// (`secret_field` names it in the body).
fn authenticate_component<'a>(
    inner: &'a mut Inner,
    body: &Body,
    secret_field: &str,
    peer: Option<IpAddr>,
) -> Result<(String, &'a mut Component), WxError> {
    let appid = body
        .text("component_appid")?
        .ok_or_else(|| WxError::new(41002))?;
    let Some(comp) = inner.open.components.get_mut(appid) else {
        return Err(WxError::with_message(61011, "invalid component"));
    };
    if !whitelist::allows(&comp.whitelist, peer) {
        return Err(ip_not_registered(peer));
    }
    let secret = body
        .text(secret_field)?
        .ok_or_else(|| WxError::new(41004))?;
    if secret != comp.secret {
        // WeChat answers a wrong component_appsecret as /cgi-bin/token answers
        // a wrong secret.
        return Err(WxError::new(40001));
    }
    Ok((appid.to_string(), comp))
}

/// `api_component_token`: a new component token on every call; the
/// previous one dies `grace` later. 61006 for a missing, unknown or other
/// component's ticket, 61005 for one older than 12 h.
fn component_token(
    inner: &mut Inner,
    body: &Body,
    peer: Option<IpAddr>,
    now: i64,
    limits: super::state::Limits,
) -> Result<Value, WxError> {
    let ticket = body.text("component_verify_ticket")?.map(str::to_string);
    let (appid, comp) = authenticate_component(inner, body, "component_appsecret", peer)?;
    let Some(ticket) = ticket else {
        return Err(WxError::with_message(61006, "component ticket is invalid"));
    };
    let Some((_, at)) = comp.tickets.iter().rev().find(|(t, _)| *t == ticket) else {
        return Err(WxError::with_message(61006, "component ticket is invalid"));
    };
    if now.saturating_sub(*at) >= ms(TICKET_LIFE) {
        return Err(WxError::with_message(61005, "component ticket is expired"));
    }
    let day = china_day(now.div_euclid(1000));
    if comp.component_tokens_today.get(day) >= COMPONENT_TOKEN_DAILY_QUOTA {
        return Err(WxError::new(45009));
    }
    comp.component_tokens_today.incr(day);
    let old = comp.token_current.take();
    let value = issue_token(
        &mut inner.tokens,
        &appid,
        TokenUse::Component,
        now,
        limits.token_ttl_ms,
    );
    if let Some(c) = inner.open.components.get_mut(&appid) {
        c.token_current = Some(value.clone());
    }
    if let Some(old) = old {
        revoke_after_grace(&mut inner.tokens, &old, now, limits.grace_ms);
    }
    inner
        .stats
        .tokens_issued
        .entry(appid)
        .or_default()
        .component += 1;
    Ok(json!({
        "component_access_token": value,
        "expires_in": limits.token_ttl_ms / 1000,
    }))
}

/// `api_start_push_ticket`: turns pushing back on (`ok`, or `in a normal
/// state` when it was on); the route then pushes a ticket at once.
fn start_push_ticket(
    inner: &mut Inner,
    body: &Body,
    peer: Option<IpAddr>,
) -> Result<Value, WxError> {
    let (_, comp) = authenticate_component(inner, body, "component_secret", peer)?;
    let was_on = std::mem::replace(&mut comp.pushing, true);
    Ok(json!({
        "errcode": 0,
        "errmsg": if was_on { "in a normal state" } else { "ok" },
    }))
}

/// Checks a component API call's token, appid and caller IP; returns the
/// component's appid.
fn checked_component(
    inner: &mut Inner,
    token: Option<&str>,
    body: &Body,
    peer: Option<IpAddr>,
    now: i64,
) -> Result<String, WxError> {
    let Some(token) = token else {
        return Err(WxError::new(41001));
    };
    let owner = check_token(inner, token, now, |k| matches!(k, TokenUse::Component))?;
    let appid = body
        .text("component_appid")?
        .ok_or_else(|| WxError::new(41002))?;
    if appid != owner {
        return Err(WxError::with_message(61011, "invalid component"));
    }
    let Some(comp) = inner.open.components.get(appid) else {
        return Err(WxError::with_message(61011, "invalid component"));
    };
    if !whitelist::allows(&comp.whitelist, peer) {
        return Err(ip_not_registered(peer));
    }
    Ok(owner)
}

/// Mints an authorizer token of `authorizer` (legacy semantics: the
/// previous one dies `grace` later).
fn mint_authorizer_token(
    inner: &mut Inner,
    component: &str,
    authorizer: &str,
    now: i64,
    limits: super::state::Limits,
) -> String {
    let value = issue_token(
        &mut inner.tokens,
        authorizer,
        TokenUse::Authorizer {
            component: component.to_string(),
        },
        now,
        limits.token_ttl_ms,
    );
    let old = inner
        .open
        .components
        .get_mut(component)
        .and_then(|c| c.authorizers.get_mut(authorizer))
        .and_then(|a| a.token_current.replace(value.clone()));
    if let Some(old) = old {
        revoke_after_grace(&mut inner.tokens, &old, now, limits.grace_ms);
    }
    inner
        .stats
        .tokens_issued
        .entry(authorizer.to_string())
        .or_default()
        .authorizer += 1;
    value
}

fn code_invalid() -> WxError {
    WxError::with_message(61009, "code is invalid")
}

/// `api_query_auth`: exchanges a single-use authorization code (61009 when
/// unknown or used, 61010 when expired) for the authorizer's first tokens.
fn query_auth(
    inner: &mut Inner,
    token: Option<&str>,
    body: &Body,
    peer: Option<IpAddr>,
    now: i64,
    limits: super::state::Limits,
) -> Result<Value, WxError> {
    let component = checked_component(inner, token, body, peer, now)?;
    let code = body.text("authorization_code")?.ok_or_else(code_invalid)?;
    let Some(comp) = inner.open.components.get_mut(&component) else {
        return Err(WxError::new(61011));
    };
    let Some(record) = comp.codes.get_mut(code) else {
        return Err(code_invalid());
    };
    if record.used {
        return Err(code_invalid());
    }
    if now >= record.expires_ms {
        return Err(WxError::with_message(61010, "code is expired"));
    }
    record.used = true;
    let authorizer = record.authorizer.clone();
    let permissions = record.permissions;
    let Some(a) = comp.authorizers.get(&authorizer) else {
        return Err(code_invalid());
    };
    if a.revoked {
        return Err(WxError::with_message(
            61003,
            "component is not authorized by this account",
        ));
    }
    if !permissions {
        return Ok(json!({
            "authorization_info": { "authorizer_appid": authorizer, "func_info": [] }
        }));
    }
    let refresh = a.refresh_current.clone();
    comp.authorizer_tokens_today
        .incr(china_day(now.div_euclid(1000)));
    let value = mint_authorizer_token(inner, &component, &authorizer, now, limits);
    Ok(json!({
        "authorization_info": {
            "authorizer_appid": authorizer,
            "authorizer_access_token": value,
            "expires_in": limits.token_ttl_ms / 1000,
            "authorizer_refresh_token": refresh,
            "func_info": [
                { "funcscope_category": { "id": 1 } },
                { "funcscope_category": { "id": 15 } },
            ],
        }
    }))
}

fn refresh_invalid() -> WxError {
    WxError::with_message(61023, "refresh_token is invalid")
}

/// `api_authorizer_token`: a new authorizer token for a valid refresh
/// token (61023 otherwise, 61003 once revoked), with the refresh token to
/// keep: a new one when rotating (the presented one works the component's
/// `refresh_overlap_ms` more), the same one otherwise.
fn authorizer_token(
    inner: &mut Inner,
    token: Option<&str>,
    body: &Body,
    peer: Option<IpAddr>,
    now: i64,
    limits: super::state::Limits,
) -> Result<Value, WxError> {
    let component = checked_component(inner, token, body, peer, now)?;
    let authorizer = body
        .text("authorizer_appid")?
        .ok_or_else(|| WxError::new(41002))?
        .to_string();
    let presented = body.text("authorizer_refresh_token")?;
    let Some(comp) = inner.open.components.get_mut(&component) else {
        return Err(WxError::new(61011));
    };
    let rotate = comp.rotate;
    let overlap_ms = comp.overlap_ms;
    let Some(a) = comp.authorizers.get_mut(&authorizer) else {
        return Err(refresh_invalid());
    };
    if a.revoked {
        return Err(WxError::with_message(
            61003,
            "component is not authorized by this account",
        ));
    }
    let Some(presented) = presented else {
        return Err(refresh_invalid());
    };
    if a.fail_next > 0 {
        a.fail_next -= 1;
        return Err(refresh_invalid());
    }
    let in_overlap = a
        .refresh_previous
        .as_ref()
        .is_some_and(|(old, until)| old == presented && now < *until);
    if presented != a.refresh_current && !in_overlap {
        return Err(refresh_invalid());
    }
    if rotate {
        let old = std::mem::replace(&mut a.refresh_current, refresh_token_value());
        a.refresh_previous = Some((old, now.saturating_add(overlap_ms)));
    }
    let refresh = a.refresh_current.clone();
    let value = mint_authorizer_token(inner, &component, &authorizer, now, limits);
    Ok(json!({
        "authorizer_access_token": value,
        "expires_in": limits.token_ttl_ms / 1000,
        "authorizer_refresh_token": refresh,
    }))
}

/// `api_get_authorizer_list`: a page (`offset`, `count` up to 500) of the
/// authorized (not revoked) authorizers in appid order, with their current
/// refresh tokens.
fn authorizer_list(
    inner: &mut Inner,
    token: Option<&str>,
    body: &Body,
    peer: Option<IpAddr>,
    now: i64,
) -> Result<Value, WxError> {
    let component = checked_component(inner, token, body, peer, now)?;
    let offset = body.int("offset")?.unwrap_or(0);
    let count = body.int("count")?.unwrap_or(0);
    if offset < 0 || !(1..=MAX_LIST_COUNT).contains(&count) {
        return Err(WxError::new(40097));
    }
    let Some(comp) = inner.open.components.get(&component) else {
        return Err(WxError::new(61011));
    };
    let live = comp.authorizers.iter().filter(|(_, a)| !a.revoked);
    let total = live.clone().count();
    let list: Vec<Value> = live
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(count).unwrap_or(0))
        .map(|(appid, a)| {
            json!({
                "authorizer_appid": appid,
                "refresh_token": a.refresh_current,
                "auth_time": a.auth_time,
            })
        })
        .collect();
    Ok(json!({ "total_count": total, "list": list }))
}

/// The query string of a sealed event, as WeChat puts it on the event URL.
pub(super) fn event_url(callback: &Url, sealed: &Sealed) -> Url {
    let mut url = callback.clone();
    {
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("signature", &random_string(40));
        pairs.append_pair("timestamp", &sealed.query.timestamp);
        pairs.append_pair("nonce", &sealed.query.nonce);
        pairs.append_pair(
            "encrypt_type",
            sealed.query.encrypt_type.as_deref().unwrap_or("aes"),
        );
        pairs.append_pair("msg_signature", &sealed.query.msg_signature);
    }
    url
}

/// The HTTP client events are pushed with (no redirects, WeChat's 5 s).
fn push_client() -> Option<&'static reqwest::Client> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .timeout(PUSH_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .ok()
        })
        .as_ref()
}

/// The outcome of one push, as the control API reports it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Delivery {
    /// True when the event URL answered 2xx.
    pub(super) delivered: bool,
    /// The event URL's HTTP status, if it answered.
    pub(super) status: Option<u16>,
    /// The event URL's answer (the first 200 characters; WeChat wants `success`).
    pub(super) answer: Option<String>,
    /// Why nothing was delivered.
    pub(super) error: Option<String>,
}

/// POSTs a sealed event to its callback (if any) and counts the outcome.
pub(super) async fn deliver(state: &SimState, out: Outgoing) -> Delivery {
    let Some(callback) = out.callback else {
        return Delivery {
            delivered: false,
            status: None,
            answer: None,
            error: Some("the component has no callback_url".to_string()),
        };
    };
    let Some(http) = push_client() else {
        return Delivery {
            delivered: false,
            status: None,
            answer: None,
            error: Some("the push client could not be built".to_string()),
        };
    };
    let url = event_url(&callback, &out.sealed);
    let result = http
        .post(url)
        .header("content-type", "text/xml")
        .body(out.sealed.body)
        .send()
        .await;
    let delivery = match result {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            Delivery {
                delivered: status.is_success(),
                status: Some(status.as_u16()),
                answer: Some(text.chars().take(200).collect()),
                error: None,
            }
        }
        Err(e) => Delivery {
            delivered: false,
            status: None,
            answer: None,
            error: Some(e.without_url().to_string()),
        },
    };
    state.count_push(delivery.delivered);
    delivery
}

impl SimState {
    fn count_push(&self, delivered: bool) {
        let mut inner = self.inner.lock();
        if delivered {
            inner.stats.events_delivered += 1;
        } else {
            inner.stats.event_push_failures += 1;
        }
    }
}

/// Starts the pusher of `component`'s registration `generation` on the
/// current tokio runtime: a ticket now and every `ticket_interval_ms` of the
/// simulator's clock while pushing is on. It stops when the component is
/// registered again, has no callback or interval, or the state is gone.
pub(super) fn start_pusher(state: &Arc<SimState>, component: String, generation: u64) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            component = component.as_str(),
            "simulator cannot push tickets outside a tokio runtime"
        );
        return;
    };
    let weak = Arc::downgrade(state);
    runtime.spawn(async move {
        let mut due_ms = i64::MIN;
        loop {
            let Some(state) = weak.upgrade() else { return };
            match state.pusher_step(&component, generation, &mut due_ms) {
                Step::Stop => return,
                Step::Wait(d) => {
                    drop(state);
                    tokio::time::sleep(d.max(Duration::from_millis(1))).await;
                }
                Step::Push(out) => {
                    let d = deliver(&state, out).await;
                    if !d.delivered {
                        tracing::debug!(
                            component = component.as_str(),
                            "simulator ticket push failed"
                        );
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::SimConfig;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const COMP: &str = "wx3333333333333333";
    const AUTH: &str = "wx4444444444444444";

    fn state() -> SimState {
        let s = SimState::new(&SimConfig::default());
        s.register_component(ComponentRegistration::new(COMP, "cs", "tok", KEY))
            .unwrap();
        s
    }

    fn ticket_of(out: &Outgoing) -> String {
        let crypt = MsgCrypt::new("tok", KEY, COMP).unwrap();
        match crate::openplatform::event::open(
            &crypt,
            &out.sealed.query,
            out.sealed.body.as_bytes(),
        )
        .unwrap()
        {
            Event::Ticket { ticket, .. } => ticket,
            other => panic!("{other:?}"),
        }
    }

    fn component_token(s: &SimState, ticket: &str) -> Result<Value, WxError> {
        let body = json!({
            "component_appid": COMP,
            "component_appsecret": "cs",
            "component_verify_ticket": ticket,
        });
        s.open_call(Api::ComponentToken, None, body.to_string().as_bytes(), None)
    }

    #[test]
    fn a_ticket_is_accepted_for_twelve_hours() {
        let s = state();
        let t = ticket_of(&s.ticket_event(COMP).unwrap());
        assert!(component_token(&s, &t).is_ok());
        s.clock.advance(TICKET_LIFE - Duration::from_secs(5));
        assert!(component_token(&s, &t).is_ok());
        s.clock.advance(Duration::from_secs(5));
        assert_eq!(component_token(&s, &t).unwrap_err().errcode, 61005);
        assert_eq!(component_token(&s, "nope").unwrap_err().errcode, 61006);
    }

    /// Authorizes AUTH at `s`: the component token and AUTH's first refresh token.
    fn authorized(s: &SimState) -> (String, String) {
        let t = ticket_of(&s.ticket_event(COMP).unwrap());
        let ct = component_token(s, &t).unwrap()["component_access_token"]
            .as_str()
            .unwrap()
            .to_string();
        s.authorize(COMP, &AuthorizeRequest::new(AUTH)).unwrap();
        let first = s.inner.lock().open.components[COMP].authorizers[AUTH]
            .refresh_current
            .clone();
        (ct, first)
    }

    /// `api_authorizer_token` for AUTH with refresh token `rt`.
    fn refresh_with(s: &SimState, ct: &str, rt: &str) -> Result<Value, WxError> {
        let body = json!({
            "component_appid": COMP,
            "authorizer_appid": AUTH,
            "authorizer_refresh_token": rt,
        });
        s.open_call(
            Api::AuthorizerToken,
            Some(ct),
            body.to_string().as_bytes(),
            None,
        )
    }

    #[test]
    fn rotating_refresh_tokens_keep_the_old_one_for_five_minutes() {
        let s = state();
        let (ct, first) = authorized(&s);
        let refresh = |rt: &str| refresh_with(&s, &ct, rt);
        let second = refresh(&first).unwrap()["authorizer_refresh_token"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(first, second);
        s.clock.advance(Duration::from_secs(299));
        assert!(refresh(&first).is_ok(), "the old one overlaps 5 minutes");
        let third = s.inner.lock().open.components[COMP].authorizers[AUTH]
            .refresh_current
            .clone();
        s.clock.advance(Duration::from_secs(301));
        assert_eq!(refresh(&second).unwrap_err().errcode, 61023);
        assert!(refresh(&third).is_ok());
    }

    #[test]
    fn with_no_overlap_a_rotated_away_refresh_token_is_refused_at_once() {
        let s = SimState::new(&SimConfig::default());
        s.register_component(ComponentRegistration {
            refresh_overlap_ms: 0,
            ..ComponentRegistration::new(COMP, "cs", "tok", KEY)
        })
        .unwrap();
        let (ct, first) = authorized(&s);
        let refresh = |rt: &str| refresh_with(&s, &ct, rt);
        let second = refresh(&first).unwrap()["authorizer_refresh_token"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(first, second);
        assert_eq!(
            refresh(&first).unwrap_err().errcode,
            61023,
            "no overlap: the old one is refused in the same millisecond"
        );
        let third = refresh(&second).unwrap()["authorizer_refresh_token"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(refresh(&second).unwrap_err().errcode, 61023);
        assert!(refresh(&third).is_ok());
    }

    #[test]
    fn a_registration_without_refresh_overlap_ms_gets_five_minutes() {
        let reg: ComponentRegistration = serde_json::from_value(json!({
            "component_appid": COMP,
            "secret": "cs",
            "token": "tok",
            "encoding_aes_key": KEY,
        }))
        .unwrap();
        assert_eq!(reg.refresh_overlap_ms, 300_000);
        assert_eq!(
            ComponentRegistration::new(COMP, "cs", "tok", KEY).refresh_overlap_ms,
            300_000
        );
        let reg: ComponentRegistration = serde_json::from_value(json!({
            "component_appid": COMP,
            "secret": "cs",
            "token": "tok",
            "encoding_aes_key": KEY,
            "refresh_overlap_ms": 0,
        }))
        .unwrap();
        assert_eq!(reg.refresh_overlap_ms, 0);
    }
}
