//! The actor of one account: its state, `impl Actor`, and one handler per
//! message. Handlers carry out what [`super::plan`] decides and what the
//! tasks of [`super::fetch`] report; they make no timing decision of their own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::clock::{Clock, add_ms, china_day, until_ms};
use crate::config::{AccountConfig, AccountKind};
use crate::domain::{Mode, TicketKind};
use crate::metrics::Metrics;
use crate::replica::Source;
use crate::snapshot::{
    AccountSlot, AccountStatus, ConfigFailure, LastError, QuotaReading, State, TokenRecord,
};
use crate::store::StoreWriter;
use crate::wechat::{Decision, Endpoint, WaitCause};

use super::fetch::{SharedRefresh, SharedTicket};
use super::messages::{
    Adopt, Crash, Exited, Finished, Reason, Refresh, RefreshError, RefreshOutcome, Shutdown,
    TicketFinished, TicketOutcome, TicketRefresh,
};
use super::plan::{self, Policy, RestartPlan, Spent, TICKET_STALE_MIN_INTERVAL};

/// What an account actor needs from the rest of the process.
#[derive(Clone)]
pub struct Deps {
    /// Where tokens come from (WeChat directly, or through the replicas' lock).
    pub upstream: Arc<dyn Source>,
    pub policy: Policy,
    pub clock: Clock,
    pub metrics: Metrics,
    /// Where tokens and counters persist; written before a token is served.
    pub store: StoreWriter,
    /// Every account's slot: an authorizer reads its component's token here.
    pub directory: crate::snapshot::Directory,
    /// How many first fetches (a cold start's fill) may be under way at once
    /// ([`FILL_PER_SLOT`] per upstream slot): a refresh task holds about
    /// 6 KiB until it ends, so 100,000 of them queued behind the upstream
    /// limit at once would cost 600 MiB, most of it never returned to the OS.
    pub fill: Arc<tokio::sync::Semaphore>,
    /// Who hears an Open Platform account's requests ([`OpenNotice`]): the
    /// registry, which sets itself here when it starts.
    pub hub: Option<Recipient<super::open::OpenNotice>>,
}

/// The endpoint an account's tokens come from: the one mapping from an
/// account's configuration to the call that obtains its token.
pub fn endpoint(config: &AccountConfig) -> Endpoint {
    match (&config.kind, config.mode) {
        (AccountKind::Wecom { corpid, .. }, _) => Endpoint::Wecom {
            corpid: corpid.clone(),
        },
        (AccountKind::Wechat, Mode::Legacy) => Endpoint::Legacy,
        (AccountKind::Wechat, Mode::Stable) => Endpoint::Stable,
        (AccountKind::Component, _) => Endpoint::Component,
        (AccountKind::Authorizer { component }, _) => Endpoint::Authorizer {
            component: component.clone(),
        },
    }
}

/// The actor of one account.
pub struct AccountActor {
    pub(super) config: Arc<AccountConfig>,
    pub(super) endpoint: Endpoint,
    pub(super) slot: Arc<AccountSlot>,
    /// Shared by every account actor.
    pub(super) deps: Arc<Deps>,
    pub(super) inflight: Option<SharedRefresh>,
    pub(super) generation: u64,
    failures: u32,
    pub(super) timer: Option<SpawnHandle>,
    last_stale_fetch_ms: Option<i64>,
    /// When a stale report last forced a stable rotation (Unix ms).
    last_stale_force_ms: Option<i64>,
    /// When an admin refresh last rotated a legacy or WeCom token (Unix ms).
    last_admin_refresh_ms: Option<i64>,
    /// When each client last made this account refresh (Unix ms); one entry
    /// per configured client at most.
    client_refreshes: HashMap<Arc<str>, i64>,
    /// Told when this actor ends without a [`Shutdown`].
    supervisor: Option<(Recipient<Exited>, u64)>,
    pub(super) ticket_inflight: HashMap<TicketKind, SharedTicket>,
    pub(super) ticket_timers: HashMap<TicketKind, SpawnHandle>,
    ticket_failures: HashMap<TicketKind, u32>,
    shutting_down: bool,
    /// An authorizer asked its hub for a recovery of its refresh token and
    /// has not heard back, or heard of none since its last success.
    pub(super) recovery_asked: bool,
    /// Held while this account's first fetch is under way ([`Deps::fill`]).
    fill_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A legacy account whose quota is spent fetches from stable_token
    /// (`endpoint` is then [`Endpoint::Stable`]) until this Unix ms.
    stable_fallback_until_ms: Option<i64>,
    /// When the upstream quotas were last read (Unix ms), and whether a
    /// reading is under way.
    quota_reads: plan::QuotaReads,
    quota_reading: bool,
}

/// First fetches under way per upstream slot during a fill: enough to keep
/// every slot busy, few enough that the queued tasks cost little memory.
pub const FILL_PER_SLOT: usize = 4;

impl AccountActor {
    /// An actor for `config` publishing into `slot`. A slot that already holds
    /// a valid token (a restart) is scheduled from it without a fetch.
    pub fn new(config: Arc<AccountConfig>, slot: Arc<AccountSlot>, deps: Arc<Deps>) -> Self {
        AccountActor {
            endpoint: endpoint(&config),
            config,
            slot,
            deps,
            inflight: None,
            generation: 0,
            failures: 0,
            timer: None,
            last_stale_fetch_ms: None,
            last_stale_force_ms: None,
            last_admin_refresh_ms: None,
            client_refreshes: HashMap::new(),
            supervisor: None,
            ticket_inflight: HashMap::new(),
            ticket_timers: HashMap::new(),
            ticket_failures: HashMap::new(),
            shutting_down: false,
            recovery_asked: false,
            fill_permit: None,
            stable_fallback_until_ms: None,
            quota_reads: plan::QuotaReads::default(),
            quota_reading: false,
        }
    }

    /// Makes `supervisor` hear of this actor's end, unless it was asked to
    /// stop: the notice is sent from `Drop`, which runs even when a handler
    /// panics (actix then drops the actor without calling `stopped`).
    pub fn supervised(mut self, supervisor: Recipient<Exited>, incarnation: u64) -> Self {
        self.supervisor = Some((supervisor, incarnation));
        self
    }

    pub(super) fn now_ms(&self) -> i64 {
        self.deps.clock.now_unix_ms()
    }

    /// The mode of the tokens the account fetches now: its configured one,
    /// or stable while a legacy account falls back to stable_token.
    pub(super) fn mode(&self) -> Mode {
        match self.endpoint {
            Endpoint::Stable => Mode::Stable,
            _ => self.config.mode,
        }
    }

    /// Moves a legacy account to stable_token until `until_ms` (its legacy
    /// quota is spent), or back to its configured endpoint once that day is
    /// over.
    pub(super) fn follow_stable_fallback(&mut self, until_ms: Option<i64>) {
        let now = self.now_ms();
        if let Some(until) = until_ms
            && until > now
        {
            if self.stable_fallback_until_ms.is_none() {
                tracing::warn!(appid = %self.config.appid, until = until.div_euclid(1000), "the legacy token quota is spent (45009); fetching from stable_token until the quota day ends (fallback_to_stable)");
            }
            self.stable_fallback_until_ms = Some(until);
            self.endpoint = Endpoint::Stable;
        } else if self
            .stable_fallback_until_ms
            .is_some_and(|until| until <= now)
        {
            tracing::info!(appid = %self.config.appid, "a new quota day: fetching from /cgi-bin/token again");
            self.stable_fallback_until_ms = None;
            self.endpoint = endpoint(&self.config);
        }
    }

    /// Reads the quotas of the token APIs the account uses with its live
    /// token, when [`plan::QuotaReads::due`] says so; the readings land in
    /// the account's status ([`crate::snapshot::Quotas`]).
    fn read_quotas(&mut self, ctx: &mut Context<Self>, trigger: plan::QuotaTrigger) {
        let now = self.now_ms();
        let apis = plan::quota_apis(&self.endpoint, &endpoint(&self.config));
        if apis.is_empty()
            || self.quota_reading
            || !self
                .quota_reads
                .due(now, trigger, self.deps.upstream.has_spare_capacity())
        {
            return;
        }
        let Some(token) = self.slot.token().filter(|t| t.usable_secs(now).is_some()) else {
            return;
        };
        self.quota_reading = true;
        self.quota_reads.read(now, trigger);
        let upstream = self.deps.upstream.clone();
        let metrics = self.deps.metrics.clone();
        let read = async move {
            let mut readings = Vec::with_capacity(apis.len());
            for &api in apis {
                readings.push((api, upstream.api_quota(token.token.clone(), api).await));
            }
            readings
        };
        let read = async move {
            crate::panics::catch_future(read).await.unwrap_or_else(|_| {
                metrics.task_panics.with_label_values(&["quota"]).inc();
                Vec::new()
            })
        };
        ctx.spawn(read.into_actor(self).map(|readings, act, _| {
            act.quota_reading = false;
            let at = act.now_ms();
            for (api, reading) in readings {
                match reading {
                    Ok(q) => {
                        tracing::debug!(appid = %act.config.appid, api = api.as_str(), daily_limit = q.daily_limit, used = q.used, "read the upstream quota");
                        act.update_status(|s| {
                            s.quotas.set(QuotaReading {
                                api,
                                daily_limit: q.daily_limit,
                                used: q.used,
                                read_at_ms: at,
                            })
                        });
                    }
                    Err(e) => {
                        tracing::warn!(appid = %act.config.appid, api = api.as_str(), error = %e, "reading the upstream quota failed");
                    }
                }
            }
        }));
    }

    pub(super) fn update_status(&self, f: impl FnOnce(&mut AccountStatus)) {
        let mut status = (*self.slot.status()).clone();
        f(&mut status);
        self.slot.set_status(status);
    }

    pub(super) fn set_state(&self, state: State) {
        self.update_status(|s| s.state = state);
    }

    /// Arms the refresh timer for `at_ms`.
    fn schedule(&mut self, ctx: &mut Context<Self>, at_ms: i64, reason: Reason) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        let delay = until_ms(self.now_ms(), at_ms);
        self.update_status(|s| s.next_refresh_at_ms = Some(at_ms));
        self.timer = Some(ctx.run_later(delay, move |act, ctx| {
            act.timer = None;
            if act.inflight.is_none() {
                drop(act.start_refresh(ctx, reason, false));
            }
        }));
    }

    /// Schedules the next refresh for a freshly published (or restored) token
    /// as [`plan::next_refresh`] decides, republishing its serve time when
    /// the plan moved it.
    fn schedule_from(
        &mut self,
        ctx: &mut Context<Self>,
        record: &TokenRecord,
        previous_same: bool,
    ) {
        let (at, serve_until) = plan::next_refresh(
            &self.deps.policy,
            record.mode,
            record,
            previous_same,
            self.slot.status().late_until_ms,
            self.now_ms(),
            plan::draw(),
        );
        if record.mode == Mode::Legacy && serve_until != record.serve_until_ms {
            // Keep serve_until consistent with the plan actually armed.
            self.republish(record, serve_until);
            self.persist();
        }
        self.schedule(ctx, at, Reason::Scheduled);
    }

    /// Arms the refresh timer of the ticket of `kind` for `at_ms`.
    fn schedule_ticket(&mut self, ctx: &mut Context<Self>, kind: TicketKind, at_ms: i64) {
        if let Some(handle) = self.ticket_timers.remove(&kind) {
            ctx.cancel_future(handle);
        }
        let delay = until_ms(self.now_ms(), at_ms);
        let handle = ctx.run_later(delay, move |act, ctx| {
            act.ticket_timers.remove(&kind);
            drop(act.start_ticket(ctx, kind));
        });
        self.ticket_timers.insert(kind, handle);
    }

    /// Makes every configured ticket current: all of them when the token
    /// changed (`token_changed`), else the missing or unusable ones (the rest
    /// keep or get their timer).
    fn ensure_tickets(&mut self, ctx: &mut Context<Self>, token_changed: bool) {
        let now = self.now_ms();
        for kind in self.config.tickets.clone() {
            match self.slot.ticket(kind) {
                Some(t) if !token_changed && t.usable_secs(now).is_some() => {
                    if !self.ticket_timers.contains_key(&kind)
                        && !self.ticket_inflight.contains_key(&kind)
                    {
                        let at = plan::ticket_plan(&t, now);
                        self.schedule_ticket(ctx, kind, at);
                    }
                }
                _ => {
                    if token_changed {
                        // A fetch with the old token may be in flight; start anew.
                        self.ticket_inflight.remove(&kind);
                    }
                    drop(self.start_ticket(ctx, kind));
                }
            }
        }
    }

    /// The first fetch of an account without a token: started once a fill
    /// permit is free (a small wait per account instead of a whole refresh
    /// task each); a request that needs the token meanwhile starts it at once.
    fn start_fill(&mut self, ctx: &mut Context<Self>) {
        let fill = self.deps.fill.clone();
        let wait = async move { fill.acquire_owned().await.ok() }
            .into_actor(self)
            .map(|permit, act, ctx| {
                // Unless a request started (and perhaps finished) it meanwhile.
                if act.inflight.is_none() && !act.slot.is_ready(act.now_ms()) {
                    act.fill_permit = permit;
                    drop(act.start_refresh(ctx, Reason::Startup, false));
                }
            });
        ctx.spawn(wait);
    }

    /// Ok when a stable `force_refresh` is allowed now (`stale`: asked by a
    /// stale report, which has a smaller share); else how long to wait.
    pub(super) fn force_budget(&self, stale: bool) -> Result<(), Duration> {
        plan::force_budget(
            &self.slot.status().forces,
            self.last_stale_force_ms,
            stale,
            self.now_ms(),
        )
    }

    /// Ok when a request for a new refresh may start one now
    /// ([`plan::request_budget`]); else how long to wait.
    fn request_budget(&self, reason: Reason, client: Option<&Arc<str>>) -> Result<(), Duration> {
        let now = self.now_ms();
        let status = self.slot.status();
        let spent = Spent {
            forces: &status.forces,
            last_stale_force_ms: self.last_stale_force_ms,
            last_stale_fetch_ms: self.last_stale_fetch_ms,
            last_admin_refresh_ms: self.last_admin_refresh_ms,
            client_last_ms: client.and_then(|c| self.client_refreshes.get(c).copied()),
            calls_today: status.calls_on_day_of(now),
        };
        plan::request_budget(reason, &self.endpoint, &spent, now)
    }

    fn count_calls(&self, calls: u32) {
        let today = china_day(self.now_ms().div_euclid(1000));
        self.update_status(|s| {
            if s.calls_day != today {
                s.calls_day = today;
                s.calls_today = 0;
            }
            s.calls_today += calls;
        });
    }

    /// Publishes a new serve time for the current token (same token).
    fn republish(&self, record: &TokenRecord, serve_until_ms: i64) {
        let record = TokenRecord {
            serve_until_ms,
            ..record.clone()
        };
        self.slot.publish(Arc::new(record));
    }

    /// Takes in a finished refresh's counters: calls, forces, the late
    /// window and the spacing of requested rotations.
    fn count_refresh(&mut self, msg: &Finished, now: i64) {
        self.count_calls(msg.calls);
        let late = match &msg.result {
            Ok(record) if Policy::clear_of_late(record.fetched_at_ms, msg.late_until_ms) => None,
            _ => msg.late_until_ms,
        };
        self.update_status(|s| s.late_until_ms = late);
        if msg.forced {
            let today = china_day(now.div_euclid(1000));
            self.update_status(|s| {
                s.forces.retain(|&t| china_day(t.div_euclid(1000)) == today);
                s.forces.push(now);
            });
        }
        if msg.reason == Reason::StaleReport && self.endpoint.rotates_on_fetch() && msg.calls > 0 {
            self.last_stale_fetch_ms = Some(now);
        }
        if msg.reason == Reason::StaleReport && msg.forced {
            self.last_stale_force_ms = Some(now);
        }
        if msg.reason == Reason::Admin && msg.calls > 0 {
            self.last_admin_refresh_ms = Some(now);
        }
        self.slot
            .counters()
            .refreshed(&self.deps.metrics, msg.reason, msg.result.is_ok());
    }

    /// A refresh brought `record`: serve it, plan the next one.
    fn refreshed(
        &mut self,
        ctx: &mut Context<Self>,
        msg: &Finished,
        record: &TokenRecord,
        now: i64,
    ) {
        let appid = self.config.appid.clone();
        tracing::info!(appid = %appid, reason = msg.reason.as_str(), outcome = "ok", duration_ms = now - msg.started_ms, calls = msg.calls, token = %record.token, expires_in = (record.expires_at_ms - now) / 1000, "token refreshed");
        self.failures = 0;
        self.recovery_asked = false;
        self.update_status(|s| {
            s.state = State::Ready;
            s.last_error = None;
            s.config_error = None;
            s.pending_fetch_ms = None;
        });
        self.schedule_from(ctx, record, msg.same_token);
        self.ensure_tickets(ctx, !msg.same_token);
        let trigger = if msg.stable_fallback_until_ms.is_some() {
            plan::QuotaTrigger::Spent
        } else {
            plan::QuotaTrigger::Refreshed
        };
        self.read_quotas(ctx, trigger);
    }

    /// A refresh failed with `err`: record it, cap the served token if the
    /// attempt may have rotated it, and arm the retry [`plan`] decides.
    fn refresh_failed(
        &mut self,
        ctx: &mut Context<Self>,
        msg: &Finished,
        err: &RefreshError,
        now: i64,
    ) {
        let appid = self.config.appid.clone();
        let decision = plan::decide(err, now);
        if self.open_failed(msg, err, &decision) {
            self.failures = self.failures.saturating_add(1);
            self.update_status(|s| {
                s.state = if self.slot.is_ready(now) {
                    State::Ready
                } else {
                    State::Failing
                };
                s.last_error = Some(LastError {
                    errcode: err.errcode(),
                    errmsg: err.errmsg(),
                    at: now.div_euclid(1000),
                });
                s.pending_fetch_ms = None;
            });
            return;
        }
        let config_error = match (&decision, err) {
            (Decision::ConfigError { .. }, RefreshError::Upstream { error, .. }) => {
                error.errcode().map(|errcode| ConfigFailure {
                    errcode,
                    ip: error.whitelist_ip(),
                })
            }
            _ => None,
        };
        let delay = self
            .deps
            .policy
            .retry_delay(&decision, self.failures, now, plan::draw());
        self.failures = self.failures.saturating_add(1);
        let (errcode, errmsg) = (err.errcode(), err.errmsg());
        tracing::warn!(appid = %appid, reason = msg.reason.as_str(), outcome = "error", errcode, duration_ms = now - msg.started_ms, calls = msg.calls, error = %errmsg, retry_in_ms = delay.as_millis() as u64, "token refresh failed");
        self.update_status(|s| {
            s.state = State::Failing;
            s.last_error = Some(LastError {
                errcode,
                errmsg,
                at: now.div_euclid(1000),
            });
            s.config_error = config_error;
        });
        if matches!(
            decision,
            Decision::NotBefore {
                cause: WaitCause::DailyQuota,
                ..
            }
        ) {
            self.read_quotas(ctx, plan::QuotaTrigger::Spent);
        }
        let retry_at = add_ms(now, delay);
        // Did WeChat perhaps rotate the token although we saw no answer?
        let unknown_outcome =
            msg.outcome_unknown || (msg.may_rotate && matches!(err, RefreshError::Unavailable));
        if !unknown_outcome {
            self.update_status(|s| s.pending_fetch_ms = None);
        }
        if let Some(record) = self.slot.token()
            && record.is_live(now)
        {
            let serve_until = plan::serve_after_failure(
                &self.deps.policy,
                &record,
                unknown_outcome,
                msg.started_ms,
                retry_at,
            );
            if serve_until != record.serve_until_ms {
                self.republish(&record, serve_until);
            }
        }
        self.schedule(ctx, retry_at, Reason::Retry);
    }
}

impl Actor for AccountActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        if !self.config.enabled {
            self.set_state(State::Disabled);
            return;
        }
        if matches!(self.endpoint, Endpoint::Authorizer { .. }) && self.slot.open().is_none() {
            // A new authorizer: its code or refresh token is the next message.
            return;
        }
        if self.open_parked() {
            // A revoked authorizer, or one waiting for its merchant: served
            // (when not revoked) while its token lasts, never refreshed.
            let revoked =
                self.slot.authorization() == Some(crate::domain::Authorization::Unauthorized);
            self.set_state(if revoked {
                State::Disabled
            } else {
                State::Failing
            });
            return;
        }
        let now = self.now_ms();
        let token = self.slot.token();
        let plan = plan::restart_plan(
            &self.deps.policy,
            token.as_deref(),
            &self.slot.status(),
            now,
        );
        match (plan, token) {
            (RestartPlan::AfterLostFetch { late_until }, _) => {
                self.update_status(|s| {
                    s.state = State::Ready;
                    s.late_until_ms = Some(late_until);
                });
                if late_until > now {
                    self.schedule(ctx, late_until, Reason::Startup);
                } else {
                    drop(self.start_refresh(ctx, Reason::Startup, false));
                }
            }
            (RestartPlan::Resume { at, reason }, _) => {
                // A restart after a crash keeps the plan the dead actor armed.
                self.schedule(ctx, at, reason);
                self.ensure_tickets(ctx, false);
            }
            (RestartPlan::Replan, Some(record)) => {
                self.set_state(State::Ready);
                self.schedule_from(ctx, &record, false);
                self.ensure_tickets(ctx, false);
            }
            _ => self.start_fill(ctx),
        }
    }
}

impl Handler<Finished> for AccountActor {
    type Result = ();

    fn handle(&mut self, msg: Finished, ctx: &mut Self::Context) {
        if msg.generation != self.generation {
            return;
        }
        self.inflight = None;
        self.fill_permit = None;
        let now = self.now_ms();
        self.follow_stable_fallback(msg.stable_fallback_until_ms);
        self.count_refresh(&msg, now);
        match &msg.result {
            Ok(record) => self.refreshed(ctx, &msg, record, now),
            Err(RefreshError::Throttled { .. }) => {
                // A refused force is not a failure of the account; keep the plan.
                self.update_status(|s| s.pending_fetch_ms = None);
                self.set_state(if self.slot.is_ready(now) {
                    State::Ready
                } else {
                    State::Failing
                });
                if let Some(record) = self.slot.token() {
                    self.schedule_from(ctx, &record, false);
                }
            }
            Err(err) => self.refresh_failed(ctx, &msg, err, now),
        }
        self.persist();
    }
}

impl Handler<Refresh> for AccountActor {
    type Result = ResponseFuture<Result<RefreshOutcome, RefreshError>>;

    fn handle(&mut self, msg: Refresh, ctx: &mut Self::Context) -> Self::Result {
        if !self.config.enabled {
            return Box::pin(async { Err(RefreshError::Disabled) });
        }
        let current = self.slot.token();
        let stale = msg.stale.clone();
        let joined = self.inflight.is_some();
        if let Some(stale) = &msg.stale {
            match &current {
                Some(c) if &c.token == stale => {}
                Some(c) => {
                    // Not the current token: hand out the current one, no upstream call.
                    let record = c.clone();
                    return Box::pin(async move {
                        Ok(RefreshOutcome {
                            record,
                            refreshed: false,
                        })
                    });
                }
                None => return Box::pin(async { Err(RefreshError::NoToken) }),
            }
        }
        let shared = match &self.inflight {
            // Joining a refresh in flight costs nothing: never limited.
            Some(inflight) => inflight.clone(),
            None => {
                if let Err(retry_after) = self.request_budget(msg.reason, msg.client.as_ref()) {
                    return Box::pin(async move { Err(RefreshError::Throttled { retry_after }) });
                }
                if let Some(client) = msg
                    .client
                    .clone()
                    .filter(|_| msg.reason == Reason::StaleReport)
                {
                    self.client_refreshes.insert(client, self.now_ms());
                }
                let force = msg.stale.is_none() && self.endpoint.can_force();
                self.start_refresh(ctx, msg.reason, force)
            }
        };
        let before = current.map(|c| c.token.clone());
        let addr = ctx.address();
        let (reason, client) = (msg.reason, msg.client);
        Box::pin(async move {
            let record = shared.await?;
            let compared = stale.clone().or(before);
            if joined && compared.as_ref() == Some(&record.token) {
                // The refresh we joined began for an older token and brought
                // back the one this caller wants replaced (adopted from another
                // replica meanwhile, or WeChat's unchanged stable answer). Ask
                // again: that refresh's `Finished` is ahead of this message in
                // the mailbox, so this one starts (or joins) a refresh of the
                // caller's token.
                return addr
                    .send(Refresh {
                        reason,
                        stale,
                        client,
                    })
                    .await
                    .unwrap_or(Err(RefreshError::Unavailable));
            }
            let refreshed = compared.is_none_or(|t| t != record.token);
            Ok(RefreshOutcome { record, refreshed })
        })
    }
}

impl Handler<TicketFinished> for AccountActor {
    type Result = ();

    fn handle(&mut self, msg: TicketFinished, ctx: &mut Self::Context) {
        self.ticket_inflight.remove(&msg.kind);
        let kind = msg.kind;
        let appid = self.config.appid.clone();
        let now = self.now_ms();
        match msg.result {
            Ok(record) => {
                self.ticket_failures.remove(&kind);
                self.slot
                    .counters()
                    .ticket_fetched(&self.deps.metrics, kind, true);
                tracing::info!(appid = %appid, ticket = kind.as_str(), outcome = "ok", expires_in = (record.expires_at_ms - now) / 1000, "ticket refreshed");
                let at = plan::ticket_plan(&record, now);
                self.schedule_ticket(ctx, kind, at);
                self.persist();
            }
            Err(RefreshError::NoToken) => {
                // Fetched again when the next token arrives.
            }
            Err(err) => {
                self.slot
                    .counters()
                    .ticket_fetched(&self.deps.metrics, kind, false);
                let decision = plan::decide(&err, now);
                let failures = self.ticket_failures.entry(kind).or_default();
                let delay = self
                    .deps
                    .policy
                    .retry_delay(&decision, *failures, now, plan::draw());
                *failures = failures.saturating_add(1);
                let errcode = err.errcode();
                tracing::warn!(appid = %appid, ticket = kind.as_str(), outcome = "error", errcode, error = %err, retry_in_ms = delay.as_millis() as u64, "ticket refresh failed");
                self.schedule_ticket(ctx, kind, add_ms(now, delay));
            }
        }
    }
}

impl Handler<TicketRefresh> for AccountActor {
    type Result = ResponseFuture<Result<TicketOutcome, RefreshError>>;

    fn handle(&mut self, msg: TicketRefresh, ctx: &mut Self::Context) -> Self::Result {
        let kind = msg.kind;
        if !self.config.enabled {
            return Box::pin(async { Err(RefreshError::Disabled) });
        }
        if !self.config.tickets.contains(&kind) {
            return Box::pin(async move { Err(RefreshError::UnknownTicket(kind)) });
        }
        let now = self.now_ms();
        let current = self.slot.ticket(kind);
        if let (Some(stale), Some(current)) = (&msg.stale, &current) {
            if &current.ticket != stale {
                let record = current.clone();
                return Box::pin(async move {
                    Ok(TicketOutcome {
                        record,
                        refreshed: false,
                    })
                });
            }
            if !self.ticket_inflight.contains_key(&kind)
                && let Err(retry_after) =
                    plan::spaced(Some(current.fetched_at_ms), TICKET_STALE_MIN_INTERVAL, now)
            {
                return Box::pin(async move { Err(RefreshError::Throttled { retry_after }) });
            }
        }
        let shared = self.start_ticket(ctx, kind);
        let before = msg.stale.or(current.map(|c| c.ticket.clone()));
        Box::pin(async move {
            let record = shared.await?;
            let refreshed = before.is_none_or(|t| t != record.ticket);
            Ok(TicketOutcome { record, refreshed })
        })
    }
}

impl Handler<Adopt> for AccountActor {
    type Result = ();

    fn handle(&mut self, Adopt(t): Adopt, ctx: &mut Self::Context) {
        // A revoked authorizer's last token stays in the shared store: never
        // served again.
        if !self.config.enabled
            || self.slot.authorization() == Some(crate::domain::Authorization::Unauthorized)
        {
            return;
        }
        let now = self.now_ms();
        if t.expires_at_ms <= now {
            return;
        }
        if let Some(current) = self.slot.token()
            && (current.token == t.token || current.fetched_at_ms >= t.fetched_at_ms)
        {
            return;
        }
        let record = Arc::new(TokenRecord {
            token: t.token,
            mode: self.mode(),
            fetched_at_ms: t.fetched_at_ms,
            expires_at_ms: t.expires_at_ms,
            serve_until_ms: t.expires_at_ms,
            json: Default::default(),
        });
        self.slot.publish(record.clone());
        tracing::info!(appid = %self.config.appid, token = %record.token, "adopted the token another replica fetched");
        self.failures = 0;
        self.update_status(|s| s.config_error = None);
        if self.inflight.is_none() {
            self.update_status(|s| {
                s.state = State::Ready;
                s.last_error = None;
            });
            self.schedule_from(ctx, &record, false);
        }
        self.ensure_tickets(ctx, true);
    }
}

impl Handler<Shutdown> for AccountActor {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
        self.shutting_down = true;
        if msg.forget {
            self.slot.clear();
        }
        ctx.stop();
    }
}

impl Handler<Crash> for AccountActor {
    type Result = ();

    fn handle(&mut self, _: Crash, _: &mut Self::Context) {
        panic!("crash requested for account {}", self.config.appid);
    }
}

impl Drop for AccountActor {
    fn drop(&mut self) {
        if self.shutting_down {
            return;
        }
        if let Some((supervisor, incarnation)) = self.supervisor.take() {
            supervisor.do_send(Exited {
                appid: self.config.appid.clone(),
                incarnation,
            });
        }
    }
}
