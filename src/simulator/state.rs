//! The simulator's WeChat state: registered apps, the tokens and tickets it
//! issued, daily quotas, injected faults and counters, behind one lock.
//!
//! Invariants:
//! - All time comes from the simulator's [`Clock`], so moving that clock moves
//!   every lifetime, grace period and China-time quota day.
//! - A token's life ends at its natural expiry or, when it was superseded by a
//!   legacy fetch or a forced stable refresh, `grace` after that, whichever is
//!   first. Its record is kept after death so the probe can tell 40001
//!   (superseded) from 42001 (expired) from 40014 (never issued).
//! - The lock is never held across an `.await`.
//! - Secrets are stored only to compare them; nothing here logs or returns them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::SimConfig;
use super::answers::WxError;
use super::error::{FaultError, RegistrationError, RegistrationProblem};
use super::faults::{Api, FaultList, FaultSpec};
use super::open::OpenState;
use super::stats::{Stats, UNKNOWN_APPID};
use super::whitelist::{self, IpRange};
use crate::clock::{Clock, china_day};
use crate::domain::{AppId, TicketKind};

/// An app the simulator accepts (`POST /sim/apps`). Registering an appid again
/// updates its secret and whitelist and keeps its tokens and quotas.
#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AppRegistration {
    /// The AppID, for example `wx1111111111111111`.
    pub appid: String,
    /// The AppSecret callers must present.
    pub secret: String,
    /// Addresses or CIDR ranges allowed to fetch tokens; empty means any IP.
    #[serde(default)]
    pub ip_whitelist: Vec<String>,
}

impl std::fmt::Debug for AppRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRegistration")
            .field("appid", &self.appid)
            .field("secret", &"<redacted>")
            .field("ip_whitelist", &self.ip_whitelist)
            .finish()
    }
}

/// One registered app as `GET /sim/apps` lists it. Never its secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AppView {
    /// The AppID.
    pub appid: String,
    /// The whitelist in force (`1.2.3.4/32`, `10.0.0.0/8`); empty means any IP.
    pub ip_whitelist: Vec<String>,
    /// Legacy token fetches counted against today's quota (China time).
    pub legacy_calls_today: u32,
    /// Stable `force_refresh` calls that rotated the token today (China time).
    pub force_refreshes_today: u32,
    /// Tokens issued since the simulator started, by endpoint.
    pub tokens_issued: super::stats::IssuedTokens,
}

/// The longest secret the simulator accepts.
const MAX_SECRET_LEN: usize = 4096;
/// Token records beyond this count trigger pruning of long-dead ones.
const PRUNE_THRESHOLD: usize = 100_000;
/// A dead token's record is kept at least this long so the probe can classify it.
const DEAD_RECORD_KEEP_MS: i64 = 86_400_000;

/// The characters of tokens and tickets: URL-safe, no padding.
const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
/// Token lengths: WeChat tells storage to reserve 512 characters.
const TOKEN_LEN: std::ops::RangeInclusive<usize> = 128..=512;
/// Length of a ticket, like WeChat's JS-SDK tickets.
const TICKET_LEN: usize = 86;

/// The callback IP ranges the probe answers with (a sample of WeChat's).
pub(crate) const CALLBACK_IPS: [&str; 6] = [
    "101.226.103.0/25",
    "101.226.233.128/25",
    "58.247.206.128/25",
    "182.254.11.176/28",
    "180.163.15.0/24",
    "163.177.56.0/24",
];

/// The simulator's limits, in milliseconds where they are durations.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) token_ttl_ms: i64,
    pub(super) grace_ms: i64,
    legacy_daily_quota: u32,
    stable_daily_quota: u32,
    force_daily_limit: u32,
    force_min_interval_ms: i64,
    ticket_ttl_ms: i64,
}

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// An API's daily quota as getApiQuota reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quota {
    pub(crate) daily_limit: u32,
    pub(crate) used: u32,
}

impl Quota {
    /// WeChat's answer: `{"errcode":0,"errmsg":"ok","quota":{...}}`.
    pub(crate) fn answer(self) -> serde_json::Value {
        serde_json::json!({
            "errcode": 0,
            "errmsg": "ok",
            "quota": {
                "daily_limit": self.daily_limit,
                "used": self.used,
                "remain": self.daily_limit - self.used,
            },
        })
    }
}

/// Which endpoint issued a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Legacy,
    Stable,
}

#[derive(Debug)]
pub(super) struct TokenRecord {
    pub(super) appid: String,
    pub(super) expires_ms: i64,
    /// When supersession kills the token, if that is before `expires_ms`.
    pub(super) revoked_ms: Option<i64>,
    /// What kind of token this is, which decides where it is accepted.
    pub(super) kind: TokenUse,
}

/// What a token is for: an account's own (`token`, `stable_token`,
/// `gettoken`), an Open Platform component's, or an authorizer's (issued
/// through its component). Account and authorizer tokens work on the
/// account APIs (`getticket`); component tokens only on the component APIs;
/// the probe accepts every kind, so soak probes can check any served token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TokenUse {
    Account,
    Component,
    Authorizer { component: String },
}

/// What the simulator knows about a presented access token right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenStatus {
    /// Usable for `remaining_ms` more milliseconds.
    Live { appid: String, remaining_ms: i64 },
    /// Superseded and past its grace period: 40001.
    Superseded { appid: String },
    /// Past its natural expiry: 42001.
    Expired { appid: String },
    /// Never issued (or forgotten long after death): 40014.
    Unknown,
}

impl TokenRecord {
    pub(super) fn status(&self, now_ms: i64) -> TokenStatus {
        let appid = self.appid.clone();
        match self.revoked_ms {
            Some(r) if now_ms >= r => TokenStatus::Superseded { appid },
            _ if now_ms >= self.expires_ms => TokenStatus::Expired { appid },
            r => TokenStatus::Live {
                appid,
                remaining_ms: r.unwrap_or(self.expires_ms).min(self.expires_ms) - now_ms,
            },
        }
    }

    fn death_ms(&self) -> i64 {
        self.revoked_ms.unwrap_or(i64::MAX).min(self.expires_ms)
    }
}

/// A count that restarts every China-time day.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct DayCount {
    day: i64,
    count: u32,
}

impl DayCount {
    pub(super) fn get(&self, day: i64) -> u32 {
        if self.day == day { self.count } else { 0 }
    }

    pub(super) fn incr(&mut self, day: i64) {
        if self.day != day {
            *self = DayCount { day, count: 0 };
        }
        self.count = self.count.saturating_add(1);
    }
}

#[derive(Debug)]
struct App {
    secret: String,
    whitelist: Vec<IpRange>,
    legacy_current: Option<String>,
    stable_current: Option<String>,
    legacy_quota: DayCount,
    /// Successful stable_token calls (normal or forced) per day.
    stable_quota: DayCount,
    forces: DayCount,
    last_force_ms: Option<i64>,
}

#[derive(Debug)]
struct TicketRecord {
    value: String,
    expires_ms: i64,
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    apps: HashMap<String, App>,
    pub(super) tokens: HashMap<String, TokenRecord>,
    tickets: HashMap<(String, TicketKind), TicketRecord>,
    faults: FaultList,
    pub(super) stats: Stats,
    prune_at: usize,
    /// The Open Platform: components, their tickets, codes and authorizers.
    pub(super) open: OpenState,
    /// Uploaded media, for `media/get` (bounded: see `business::MediaStore`).
    pub(super) media: super::business::MediaStore,
}

/// The credentials of a token request, from the query string or JSON body.
/// Empty strings count as missing, as on WeChat.
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    pub(crate) grant_type: Option<String>,
    pub(crate) appid: Option<String>,
    pub(crate) secret: Option<String>,
}

/// A token handed out: the value and its `expires_in` in whole seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issued {
    pub(crate) value: String,
    pub(crate) expires_in: i64,
}

/// The simulator's shared state.
#[derive(Debug)]
pub(crate) struct SimState {
    pub(super) limits: Limits,
    pub(crate) clock: Clock,
    pub(super) inner: Mutex<Inner>,
    /// Token requests (`token`, `stable_token`) being answered right now.
    token_calls_in_flight: AtomicU64,
    /// The most token requests ever answered at once.
    max_token_calls_in_flight: AtomicU64,
}

/// Marks one token request as being answered until dropped.
#[derive(Debug)]
pub(crate) struct InFlight<'a>(&'a SimState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.token_calls_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SimState {
    /// A state with no apps, tokens or faults.
    pub(crate) fn new(config: &SimConfig) -> Self {
        SimState {
            limits: Limits {
                token_ttl_ms: ms(config.token_ttl),
                grace_ms: ms(config.grace),
                legacy_daily_quota: config.legacy_daily_quota,
                stable_daily_quota: config.stable_daily_quota,
                force_daily_limit: config.force_daily_limit,
                force_min_interval_ms: ms(config.force_min_interval),
                ticket_ttl_ms: ms(config.ticket_ttl),
            },
            clock: config.clock.clone(),
            inner: Mutex::new(Inner {
                prune_at: PRUNE_THRESHOLD,
                ..Inner::default()
            }),
            token_calls_in_flight: AtomicU64::new(0),
            max_token_calls_in_flight: AtomicU64::new(0),
        }
    }

    /// Counts a token request as in flight until the guard is dropped.
    pub(crate) fn enter_token_call(&self) -> InFlight<'_> {
        let now = self.token_calls_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_token_calls_in_flight
            .fetch_max(now, Ordering::SeqCst);
        InFlight(self)
    }

    /// Registers or updates an app.
    ///
    /// Errors with every problem of an invalid registration (appid, secret,
    /// whitelist entries); nothing changes then.
    pub(crate) fn register(&self, reg: AppRegistration) -> Result<(), RegistrationError> {
        let mut problems = Vec::new();
        if let Err(e) = AppId::parse(&reg.appid) {
            problems.push(RegistrationProblem::AppId(e));
        }
        if reg.secret.is_empty() {
            problems.push(RegistrationProblem::EmptySecret);
        } else if reg.secret.len() > MAX_SECRET_LEN {
            problems.push(RegistrationProblem::SecretTooLong {
                max: MAX_SECRET_LEN,
            });
        }
        let mut ranges = Vec::with_capacity(reg.ip_whitelist.len());
        for entry in &reg.ip_whitelist {
            match IpRange::parse(entry) {
                Ok(r) => ranges.push(r),
                Err(e) => problems.push(RegistrationProblem::Whitelist(e)),
            }
        }
        if !problems.is_empty() {
            return Err(RegistrationError { problems });
        }
        let mut inner = self.inner.lock();
        match inner.apps.get_mut(&reg.appid) {
            Some(app) => {
                app.secret = reg.secret;
                app.whitelist = ranges;
            }
            None => {
                inner.apps.insert(
                    reg.appid,
                    App {
                        secret: reg.secret,
                        whitelist: ranges,
                        legacy_current: None,
                        stable_current: None,
                        legacy_quota: DayCount::default(),
                        stable_quota: DayCount::default(),
                        forces: DayCount::default(),
                        last_force_ms: None,
                    },
                );
            }
        }
        Ok(())
    }

    /// Every registered app, sorted by appid, without its secret.
    pub(crate) fn apps(&self) -> Vec<AppView> {
        let day = china_day(self.clock.now_unix_ms().div_euclid(1000));
        let inner = self.inner.lock();
        let mut apps: Vec<AppView> = inner
            .apps
            .iter()
            .map(|(appid, app)| AppView {
                appid: appid.clone(),
                ip_whitelist: app.whitelist.iter().map(ToString::to_string).collect(),
                legacy_calls_today: app.legacy_quota.get(day),
                force_refreshes_today: app.forces.get(day),
                tokens_issued: inner
                    .stats
                    .tokens_issued
                    .get(appid)
                    .copied()
                    .unwrap_or_default(),
            })
            .collect();
        apps.sort_by(|a, b| a.appid.cmp(&b.appid));
        apps
    }

    /// Counts a call of `api` for `appid` and picks the fault that hits it, if
    /// any. Unregistered appids are counted under [`UNKNOWN_APPID`].
    pub(crate) fn begin_call(&self, api: Api, appid: Option<&str>) -> Option<FaultSpec> {
        let mut inner = self.inner.lock();
        let key = match appid {
            Some(id) if inner.apps.contains_key(id) || inner.open.knows(id) => id.to_string(),
            _ => UNKNOWN_APPID.to_string(),
        };
        *inner
            .stats
            .calls
            .entry(key)
            .or_default()
            .entry(api.as_str().to_string())
            .or_default() += 1;
        let fault = inner.faults.take(api, appid)?;
        if fault.replaces_answer() {
            inner.stats.faults_applied += 1;
        }
        Some(fault)
    }

    /// Adds a fault after validating it; returns how many faults are active.
    ///
    /// Errors when the fault is invalid (see [`FaultSpec::validate`]).
    pub(crate) fn add_fault(&self, spec: FaultSpec) -> Result<usize, FaultError> {
        spec.validate()?;
        let mut inner = self.inner.lock();
        inner.faults.push(spec);
        Ok(inner.faults.specs().len())
    }

    /// Removes every fault; returns how many there were.
    pub(crate) fn clear_faults(&self) -> usize {
        self.inner.lock().faults.clear()
    }

    /// The faults still active.
    pub(crate) fn faults(&self) -> Vec<FaultSpec> {
        self.inner.lock().faults.specs()
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.inner.lock().stats.clone();
        stats.max_token_calls_in_flight = self.max_token_calls_in_flight.load(Ordering::SeqCst);
        stats
    }

    /// The app a token was issued to, if the simulator issued it.
    pub(crate) fn appid_of_token(&self, token: &str) -> Option<String> {
        self.inner.lock().tokens.get(token).map(|r| r.appid.clone())
    }

    /// The current status of a token (no counters change).
    pub(crate) fn token_status(&self, token: &str) -> TokenStatus {
        let now = self.clock.now_unix_ms();
        self.inner
            .lock()
            .tokens
            .get(token)
            .map_or(TokenStatus::Unknown, |r| r.status(now))
    }

    /// `GET /cgi-bin/token`: a new token on every call; the previous legacy
    /// token dies `grace` later (or at its expiry, if sooner).
    pub(crate) fn legacy_token(
        &self,
        creds: &Credentials,
        peer: Option<IpAddr>,
    ) -> Result<Issued, WxError> {
        let now = self.clock.now_unix_ms();
        let day = china_day(now.div_euclid(1000));
        let limits = self.limits;
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let appid = authenticate(&inner.apps, &inner.open, creds, peer)?;
        let Some(app) = inner.apps.get_mut(&appid) else {
            return Err(WxError::new(40013));
        };
        if app.legacy_quota.get(day) >= limits.legacy_daily_quota {
            return Err(WxError::new(45009));
        }
        app.legacy_quota.incr(day);
        let value = issue_token(
            &mut inner.tokens,
            &appid,
            TokenUse::Account,
            now,
            limits.token_ttl_ms,
        );
        if let Some(old) = app.legacy_current.replace(value.clone()) {
            revoke_after_grace(&mut inner.tokens, &old, now, limits.grace_ms);
        }
        count_issue(&mut inner.stats, &appid, TokenKind::Legacy);
        prune(inner, now);
        Ok(Issued {
            value,
            expires_in: limits.token_ttl_ms / 1000,
        })
    }

    /// `POST /cgi-bin/stable_token`: the same token while it is outside its
    /// last `grace`; inside it, a new token (the old one lives out its life).
    /// `force_refresh` rotates at once when the daily limit and the minimum
    /// interval allow, killing the old token `grace` later; otherwise it is
    /// treated as a normal call.
    pub(crate) fn stable_token(
        &self,
        creds: &Credentials,
        force_refresh: bool,
        peer: Option<IpAddr>,
    ) -> Result<Issued, WxError> {
        let now = self.clock.now_unix_ms();
        let day = china_day(now.div_euclid(1000));
        let limits = self.limits;
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let appid = authenticate(&inner.apps, &inner.open, creds, peer)?;
        let Some(app) = inner.apps.get_mut(&appid) else {
            return Err(WxError::new(40013));
        };
        if app.stable_quota.get(day) >= limits.stable_daily_quota {
            return Err(WxError::new(45009));
        }
        app.stable_quota.incr(day);
        let force_allowed = force_refresh
            && app.forces.get(day) < limits.force_daily_limit
            && app
                .last_force_ms
                .is_none_or(|t| now - t >= limits.force_min_interval_ms);
        if force_allowed {
            app.forces.incr(day);
            app.last_force_ms = Some(now);
            *inner
                .stats
                .force_refreshes
                .entry(appid.clone())
                .or_default() += 1;
            let value = issue_token(
                &mut inner.tokens,
                &appid,
                TokenUse::Account,
                now,
                limits.token_ttl_ms,
            );
            if let Some(old) = app.stable_current.replace(value.clone()) {
                revoke_after_grace(&mut inner.tokens, &old, now, limits.grace_ms);
            }
            count_issue(&mut inner.stats, &appid, TokenKind::Stable);
            prune(inner, now);
            return Ok(Issued {
                value,
                expires_in: limits.token_ttl_ms / 1000,
            });
        }
        let current = app
            .stable_current
            .as_ref()
            .and_then(|t| inner.tokens.get(t).map(|r| (t, r.status(now))));
        if let Some((value, TokenStatus::Live { remaining_ms, .. })) = current
            && remaining_ms > limits.grace_ms
        {
            return Ok(Issued {
                value: value.clone(),
                expires_in: remaining_ms / 1000,
            });
        }
        // Inside the last `grace` (or gone): rotate; the old token keeps its own expiry.
        let value = issue_token(
            &mut inner.tokens,
            &appid,
            TokenUse::Account,
            now,
            limits.token_ttl_ms,
        );
        app.stable_current = Some(value.clone());
        count_issue(&mut inner.stats, &appid, TokenKind::Stable);
        prune(inner, now);
        Ok(Issued {
            value,
            expires_in: limits.token_ttl_ms / 1000,
        })
    }

    /// WeCom `GET /cgi-bin/gettoken?corpid=&corpsecret=`: the token of the
    /// WeCom app registered as `corpid:agentid` with this secret. Like the
    /// stable endpoint, the same token until `grace` before its expiry.
    /// Errors: 41002 no corpid, 41004 no secret, 40013 unknown corpid,
    /// 40001 a secret no app of that corp has, 60020 IP not allowed.
    pub(crate) fn wecom_token(
        &self,
        corpid: Option<&str>,
        secret: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<Issued, WxError> {
        let Some(corpid) = corpid else {
            return Err(WxError::new(41002));
        };
        let Some(secret) = secret else {
            return Err(WxError::new(41004));
        };
        let app = self.wecom_app(corpid, Some(secret))?;
        let creds = Credentials {
            grant_type: Some("client_credential".to_string()),
            appid: Some(app),
            secret: Some(secret.to_string()),
        };
        self.stable_token(&creds, false, peer)
            .map_err(|e| match e.errcode {
                40164 => WxError::with_message(
                    60020,
                    format!("not allow to access from your ip, {}", e.errmsg),
                ),
                _ => e,
            })
    }

    /// The registered `corpid:agentid` app of `corpid` whose secret is
    /// `secret` (any app of the corp when `secret` is `None`).
    pub(crate) fn wecom_app(&self, corpid: &str, secret: Option<&str>) -> Result<String, WxError> {
        let inner = self.inner.lock();
        let prefix = format!("{corpid}:");
        let mut of_corp = inner
            .apps
            .iter()
            .filter(|(id, _)| id.starts_with(&prefix))
            .peekable();
        if of_corp.peek().is_none() {
            return Err(WxError::new(40013));
        }
        of_corp
            .find(|(_, app)| secret.is_none_or(|s| app.secret == s))
            .map(|(id, _)| id.clone())
            .ok_or_else(|| WxError::new(40001))
    }

    /// `GET /cgi-bin/getcallbackip`: succeeds for a live token; counts the outcome.
    pub(crate) fn probe(&self, token: Option<&str>) -> Result<(), WxError> {
        let now = self.clock.now_unix_ms();
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let Some(token) = token else {
            return Err(WxError::new(41001));
        };
        let result = check_token(inner, token, now, |_| true).map(|_| ());
        let probe = &mut inner.stats.probe_results;
        match &result {
            Ok(()) => probe.ok += 1,
            Err(e) if e.errcode == 40001 => probe.superseded += 1,
            Err(e) if e.errcode == 42001 => probe.expired += 1,
            Err(_) => probe.invalid += 1,
        }
        result
    }

    /// getApiQuota (`POST /cgi-bin/openapi/quota/get`) for a live token:
    /// the daily limit and today's use of `cgi_path`, which must be one of
    /// the token endpoints (an account's `/cgi-bin/token`,
    /// `/cgi-bin/stable_token`; a component's `api_component_token`,
    /// `api_authorizer_token`); any other path is 76021 (cgi_path not found).
    pub(crate) fn api_quota(
        &self,
        token: Option<&str>,
        cgi_path: Option<&str>,
    ) -> Result<Quota, WxError> {
        let now = self.clock.now_unix_ms();
        let day = china_day(now.div_euclid(1000));
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let Some(token) = token else {
            return Err(WxError::new(41001));
        };
        let appid = check_token(inner, token, now, |_| true)?;
        if inner.open.has_component(&appid) {
            // A component's own token: its token APIs' quotas.
            let (daily_limit, used) = inner
                .open
                .quota(&appid, cgi_path, day)
                .ok_or_else(|| WxError::new(76021))?;
            return Ok(Quota { daily_limit, used });
        }
        let Some(app) = inner.apps.get(&appid) else {
            return Err(WxError::new(40013));
        };
        let (daily_limit, used) = match cgi_path {
            Some("/cgi-bin/token") => (self.limits.legacy_daily_quota, app.legacy_quota.get(day)),
            Some("/cgi-bin/stable_token") => {
                (self.limits.stable_daily_quota, app.stable_quota.get(day))
            }
            _ => return Err(WxError::new(76021)),
        };
        Ok(Quota {
            daily_limit,
            used: used.min(daily_limit),
        })
    }

    /// `GET /cgi-bin/ticket/getticket`: the app's current ticket of `kind`
    /// (a new one once the previous expired), for a live token.
    pub(crate) fn ticket(
        &self,
        token: Option<&str>,
        kind: Option<&str>,
    ) -> Result<Issued, WxError> {
        let now = self.clock.now_unix_ms();
        let ttl = self.limits.ticket_ttl_ms;
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let appid = check_account_token(inner, token, now)?;
        let kind = match kind {
            Some("jsapi") => TicketKind::Jsapi,
            Some("wx_card") => TicketKind::WxCard,
            _ => return Err(WxError::new(40097)),
        };
        let key = (appid.clone(), kind);
        if let Some(t) = inner.tickets.get(&key)
            && now < t.expires_ms
        {
            return Ok(Issued {
                value: t.value.clone(),
                expires_in: (t.expires_ms - now) / 1000,
            });
        }
        let value = random_string(TICKET_LEN);
        inner.tickets.insert(
            key,
            TicketRecord {
                value: value.clone(),
                expires_ms: now.saturating_add(ttl),
            },
        );
        *inner.stats.tickets_issued.entry(appid).or_default() += 1;
        Ok(Issued {
            value,
            expires_in: ttl / 1000,
        })
    }
}

/// Checks a token request's credentials in WeChat's order; returns the appid.
fn authenticate(
    apps: &HashMap<String, App>,
    open: &OpenState,
    creds: &Credentials,
    peer: Option<IpAddr>,
) -> Result<String, WxError> {
    if creds.grant_type.as_deref() != Some("client_credential") {
        return Err(WxError::new(40002));
    }
    let Some(appid) = creds.appid.as_deref() else {
        return Err(WxError::new(41002));
    };
    let Some(secret) = creds.secret.as_deref() else {
        return Err(WxError::new(41004));
    };
    let Some(app) = apps.get(appid) else {
        // A component's appid on an account API.
        if open.has_component(appid) {
            return Err(WxError::new(61024));
        }
        return Err(WxError::new(40013));
    };
    if !whitelist::allows(&app.whitelist, peer) {
        return Err(WxError::ip_not_whitelisted(peer));
    }
    if app.secret != secret {
        return Err(WxError::new(40125));
    }
    Ok(appid.to_string())
}

/// Classifies a presented token; a non-live one counts as an invalid use.
/// The app of a live account token (not a component's) that a call
/// presented: 41001 without one, else as [`check_token`] decides.
fn check_account_token(
    inner: &mut Inner,
    token: Option<&str>,
    now: i64,
) -> Result<String, WxError> {
    let Some(token) = token else {
        return Err(WxError::new(41001));
    };
    check_token(inner, token, now, |kind| {
        !matches!(kind, TokenUse::Component)
    })
}

pub(super) fn check_token(
    inner: &mut Inner,
    token: &str,
    now: i64,
    accepts: impl Fn(&TokenUse) -> bool,
) -> Result<String, WxError> {
    let status = inner
        .tokens
        .get(token)
        .filter(|r| accepts(&r.kind))
        .map_or(TokenStatus::Unknown, |r| r.status(now));
    let err = match status {
        TokenStatus::Live { appid, .. } => return Ok(appid),
        TokenStatus::Superseded { .. } => WxError::new(40001),
        TokenStatus::Expired { .. } => WxError::new(42001),
        TokenStatus::Unknown => WxError::new(40014),
    };
    inner.stats.invalid_token_uses += 1;
    Err(err)
}

/// Creates and records a new token with a full lifetime.
pub(super) fn issue_token(
    tokens: &mut HashMap<String, TokenRecord>,
    appid: &str,
    kind: TokenUse,
    now: i64,
    ttl_ms: i64,
) -> String {
    let len = rand::rng().random_range(TOKEN_LEN);
    let value = random_string(len);
    tokens.insert(
        value.clone(),
        TokenRecord {
            appid: appid.to_string(),
            expires_ms: now.saturating_add(ttl_ms),
            revoked_ms: None,
            kind,
        },
    );
    value
}

/// Marks a superseded token to die `grace` from now, unless it expires first.
pub(super) fn revoke_after_grace(
    tokens: &mut HashMap<String, TokenRecord>,
    token: &str,
    now: i64,
    grace_ms: i64,
) {
    if let Some(rec) = tokens.get_mut(token) {
        let at = now.saturating_add(grace_ms);
        if at < rec.expires_ms && rec.revoked_ms.is_none_or(|r| at < r) {
            rec.revoked_ms = Some(at);
        }
    }
}

fn count_issue(stats: &mut Stats, appid: &str, kind: TokenKind) {
    let issued = stats.tokens_issued.entry(appid.to_string()).or_default();
    match kind {
        TokenKind::Legacy => issued.legacy += 1,
        TokenKind::Stable => issued.stable += 1,
    }
}

/// Forgets tokens dead for over a day once there are many records, so a
/// long-running simulator does not grow without bound.
pub(super) fn prune(inner: &mut Inner, now: i64) {
    if inner.tokens.len() <= inner.prune_at {
        return;
    }
    inner
        .tokens
        .retain(|_, r| r.death_ms() > now.saturating_sub(DEAD_RECORD_KEEP_MS));
    inner.prune_at = PRUNE_THRESHOLD.max(inner.tokens.len().saturating_mul(2));
}

/// A random string of URL-safe characters.
pub(super) fn random_string(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(URL_SAFE[rng.random_range(0..URL_SAFE.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SimState {
        let s = SimState::new(&SimConfig::default());
        s.register(AppRegistration {
            appid: "wx1111111111111111".into(),
            secret: "s".into(),
            ip_whitelist: vec![],
        })
        .unwrap();
        s
    }

    fn creds() -> Credentials {
        Credentials {
            grant_type: Some("client_credential".into()),
            appid: Some("wx1111111111111111".into()),
            secret: Some("s".into()),
        }
    }

    #[test]
    fn a_superseded_legacy_token_outlives_its_successor_by_exactly_grace() {
        let s = state();
        let first = s.legacy_token(&creds(), None).unwrap().value;
        let _second = s.legacy_token(&creds(), None).unwrap();
        // The clock is the system's: leave a second of slack for the test itself.
        s.clock.advance(Duration::from_millis(299_000));
        assert!(matches!(s.token_status(&first), TokenStatus::Live { .. }));
        s.clock.advance(Duration::from_millis(1_000));
        assert!(matches!(
            s.token_status(&first),
            TokenStatus::Superseded { .. }
        ));
    }

    #[test]
    fn a_token_superseded_near_its_expiry_dies_of_expiry() {
        let s = state();
        let first = s.legacy_token(&creds(), None).unwrap().value;
        s.clock.advance(Duration::from_secs(7100));
        let _second = s.legacy_token(&creds(), None).unwrap();
        s.clock.advance(Duration::from_secs(100));
        assert!(matches!(
            s.token_status(&first),
            TokenStatus::Expired { .. }
        ));
    }

    #[test]
    fn registration_reports_every_problem() {
        let s = state();
        let err = s
            .register(AppRegistration {
                appid: String::new(),
                secret: String::new(),
                ip_whitelist: vec!["nope".into()],
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("appid is empty"), "{err}");
        assert!(err.contains("secret is empty"), "{err}");
        assert!(err.contains("\"nope\""), "{err}");
    }

    #[test]
    fn random_strings_use_only_url_safe_characters() {
        let t = random_string(512);
        assert!(t.bytes().all(|b| URL_SAFE.contains(&b)));
    }
}
