//! The per-account actor: one per configured account, the only thing that
//! decides when that account's token is fetched.
//!
//! Owns: the account's state machine (empty → fetching → ready → refreshing →
//! failing), its refresh timer, its retry counter, its daily call counter and
//! its stable `force_refresh` budget; single-flight of every refresh.
//!
//! Invariants:
//! - At most one upstream refresh per account is in flight; every caller that
//!   arrives meanwhile (compare-and-refresh, admin) shares its result, unless
//!   that result is the very token the caller wants replaced (the refresh
//!   began before that token was adopted from another replica): then the
//!   caller asks again once it has finished.
//! - A token is published to the slot before any caller receives it.
//! - The current token keeps being served while valid, whatever fails.
//! - A refresh is never started for a token that is not the current one.
//!
//! Reads never come here: they load the [`slot::AccountSlot`].

pub mod schedule;
pub mod slot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::FutureExt;
use futures::future::{LocalBoxFuture, Shared};

use crate::clock::{Clock, add_ms, china_day, until_ms};
use crate::config::AccountConfig;
use crate::domain::{AccessToken, Mode, TicketKind};
use crate::metrics::Metrics;
use crate::store::{StoreWriter, StoredAccount, StoredTicket, StoredToken};
use crate::wechat::{Decision, FetchRequest, TokenSource, UpstreamError};
use schedule::Policy;
use slot::{AccountSlot, AccountStatus, LastError, State, TicketRecord, TokenRecord};

pub use schedule::{FORCE_DAILY_LIMIT, FORCE_MIN_INTERVAL, TICKET_STALE_MIN_INTERVAL};

/// Why a refresh happens (the `reason` label of `wxtoken_refreshes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Startup,
    Scheduled,
    StaleReport,
    Admin,
    Retry,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Startup => "startup",
            Reason::Scheduled => "scheduled",
            Reason::StaleReport => "stale_report",
            Reason::Admin => "admin",
            Reason::Retry => "retry",
        }
    }
}

/// Why a refresh request produced no token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("refresh throttled; try again in {}s", retry_after.as_secs())]
    Throttled { retry_after: Duration },
    #[error("the account has no current token to compare with")]
    NoToken,
    #[error("the account is disabled")]
    Disabled,
    #[error("the account is not in the registry")]
    UnknownAccount,
    #[error("the account's refresher stopped unexpectedly; it is being restarted")]
    Unavailable,
    #[error("the account has no {} ticket configured", .0.as_str())]
    UnknownTicket(TicketKind),
    /// A bug: the refresh task panicked. It counts as a failed attempt and is
    /// retried with backoff.
    #[error("an internal error interrupted the refresh ({detail}); it is retried")]
    Internal { detail: String },
}

/// The answer to a refresh request.
#[derive(Debug, Clone)]
pub struct RefreshOutcome {
    pub record: Arc<TokenRecord>,
    /// True when the caller gets a different token than the one it had.
    pub refreshed: bool,
}

/// Compare-and-refresh (`stale` set) or a forced admin refresh (`stale` none).
#[derive(Debug, Message)]
#[rtype(result = "Result<RefreshOutcome, RefreshError>")]
pub struct Refresh {
    pub reason: Reason,
    pub stale: Option<AccessToken>,
    /// The API client asking (its configured name), for the per-client
    /// limit; `None` when no clients are configured or nobody asked.
    pub client: Option<Arc<str>>,
}

/// A refresh this actor spawned has finished (internal).
#[derive(Message)]
#[rtype(result = "()")]
struct Finished {
    generation: u64,
    reason: Reason,
    calls: u32,
    forced: bool,
    /// WeChat returned the token that was already current.
    same_token: bool,
    result: Result<Arc<TokenRecord>, RefreshError>,
    /// When the refresh started (Unix ms).
    started_ms: i64,
    /// The refresh may have rotated the token at WeChat (a legacy fetch or a
    /// stable force), so an unknown outcome may have killed the old one.
    may_rotate: bool,
    /// The attempt may have rotated the token and its outcome is unknown
    /// (a timeout, a panic, ...): WeChat may still process it.
    outcome_unknown: bool,
    /// The late window after this attempt (`AccountStatus::late_until_ms`).
    late_until_ms: Option<i64>,
}

/// Stops the actor (the account left the registry or is being replaced).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Sent to the supervisor when an account actor ends without being told to
/// (a panic, or its context stopping on its own).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Exited {
    pub appid: crate::domain::AppId,
    /// Which start of this account's actor ended (see [`AccountActor::supervised`]).
    pub incarnation: u64,
}

/// A token another replica fetched (read from the shared store): served
/// instead of the current one when it is newer.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Adopt(pub StoredToken);

/// Panics inside the actor. Exists only so tests can prove that supervision
/// survives a panic; nothing outside tests sends it.
#[doc(hidden)]
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Crash;

type SharedRefresh = Shared<LocalBoxFuture<'static, Result<Arc<TokenRecord>, RefreshError>>>;
type SharedTicket = Shared<LocalBoxFuture<'static, Result<Arc<TicketRecord>, RefreshError>>>;

/// A ticket fetch this actor spawned has finished (internal).
#[derive(Message)]
#[rtype(result = "()")]
struct TicketFinished {
    kind: TicketKind,
    result: Result<Arc<TicketRecord>, RefreshError>,
}

/// Compare-and-refresh of a JS-SDK ticket (`stale` set), or a plain refresh.
#[derive(Debug, Message)]
#[rtype(result = "Result<TicketOutcome, RefreshError>")]
pub struct TicketRefresh {
    pub kind: TicketKind,
    pub stale: Option<AccessToken>,
}

/// The answer to a ticket refresh.
#[derive(Debug, Clone)]
pub struct TicketOutcome {
    pub record: Arc<TicketRecord>,
    /// True when the caller gets a different ticket than the one it reported.
    pub refreshed: bool,
}

/// What an account actor needs from the rest of the process.
#[derive(Clone)]
pub struct Deps {
    pub upstream: Arc<dyn TokenSource>,
    pub policy: Policy,
    pub clock: Clock,
    pub metrics: Metrics,
    /// Where tokens and counters persist; written before a token is served.
    pub store: StoreWriter,
}

/// The actor of one account.
pub struct AccountActor {
    config: AccountConfig,
    slot: Arc<AccountSlot>,
    deps: Deps,
    inflight: Option<SharedRefresh>,
    generation: u64,
    failures: u32,
    timer: Option<SpawnHandle>,
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
    ticket_inflight: HashMap<TicketKind, SharedTicket>,
    ticket_timers: HashMap<TicketKind, SpawnHandle>,
    ticket_failures: HashMap<TicketKind, u32>,
    shutting_down: bool,
}

impl AccountActor {
    /// An actor for `config` publishing into `slot`. A slot that already holds
    /// a valid token (a restart) is scheduled from it without a fetch.
    pub fn new(config: AccountConfig, slot: Arc<AccountSlot>, deps: Deps) -> Self {
        AccountActor {
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
        }
    }

    /// Makes `supervisor` hear of this actor's end, unless it was asked to
    /// stop: the notice is sent from `Drop`, which runs even when a handler
    /// panics (actix then drops the actor without calling `stopped`).
    pub fn supervised(mut self, supervisor: Recipient<Exited>, incarnation: u64) -> Self {
        self.supervisor = Some((supervisor, incarnation));
        self
    }

    fn now_ms(&self) -> i64 {
        self.deps.clock.now_unix_ms()
    }

    fn update_status(&self, f: impl FnOnce(&mut AccountStatus)) {
        let mut status = (*self.slot.status()).clone();
        f(&mut status);
        let appid = self.config.appid.as_str();
        self.deps
            .metrics
            .set_account_state(appid, status.state.metric_label());
        match status.next_refresh_at_ms {
            Some(ms) => self
                .deps
                .metrics
                .next_refresh
                .with_label_values(&[appid])
                .set(ms as f64 / 1000.0),
            None => {
                let _ = self.deps.metrics.next_refresh.remove_label_values(&[appid]);
            }
        }
        self.slot.set_status(status);
    }

    fn set_state(&self, state: State) {
        self.update_status(|s| s.state = state);
    }

    /// What the store keeps of this account now.
    fn stored(&self) -> StoredAccount {
        let mut stored = stored_account(
            &self.config,
            self.slot.token().as_deref(),
            &self.slot.status(),
        );
        stored.tickets = self
            .slot
            .tickets()
            .iter()
            .map(|t| StoredTicket {
                kind: t.kind,
                ticket: t.ticket.clone(),
                fetched_at_ms: t.fetched_at_ms,
                expires_at_ms: t.expires_at_ms,
                serve_until_ms: t.serve_until_ms,
            })
            .collect();
        stored
    }

    /// Queues the account's current state for the store (ordered, not awaited).
    fn persist(&self) {
        if self.config.enabled {
            self.deps.store.put_later(self.stored());
        }
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

    /// Starts a refresh (or returns the one in flight).
    fn start_refresh(
        &mut self,
        ctx: &mut Context<Self>,
        reason: Reason,
        force: bool,
    ) -> SharedRefresh {
        if let Some(inflight) = &self.inflight {
            return inflight.clone();
        }
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        let had_token = self.slot.token().is_some();
        self.set_state(if had_token {
            State::Refreshing
        } else {
            State::Fetching
        });
        self.generation += 1;
        let generation = self.generation;

        let addr = ctx.address();
        let deps = self.deps.clone();
        let slot = self.slot.clone();
        let mode = self.config.mode;
        let wecom_corpid = match &self.config.kind {
            crate::config::AccountKind::Wecom { corpid, .. } => Some(corpid.clone()),
            crate::config::AccountKind::Wechat => None,
        };
        let request = FetchRequest {
            appid: self.config.appid.clone(),
            secret: self.config.secret.clone(),
            mode,
            force_refresh: force && mode == Mode::Stable && wecom_corpid.is_none(),
            known: self.slot.token().map(|t| t.token.clone()),
            wecom_corpid: wecom_corpid.clone(),
        };
        let stale_retry = reason == Reason::StaleReport
            && mode == Mode::Stable
            && !force
            && request.wecom_corpid.is_none();
        let force_allowed = self.force_budget(true).is_ok();
        let may_rotate = mode == Mode::Legacy || request.force_refresh || stale_retry;
        let started = self.now_ms();
        if may_rotate {
            self.update_status(|s| s.pending_fetch_ms = Some(started));
        }
        let late_before = self.slot.status().late_until_ms;
        let base = self.stored();
        let on_panic = {
            let policy = self.deps.policy.clone();
            move |detail: String| Finished {
                generation,
                reason,
                calls: 0,
                forced: false,
                same_token: false,
                result: Err(RefreshError::Internal { detail }),
                started_ms: started,
                may_rotate,
                outcome_unknown: may_rotate,
                late_until_ms: policy.late_after(late_before, started, may_rotate, true),
            }
        };
        let task = async move {
            let mut calls = 1;
            let mut forced = request.force_refresh;
            if may_rotate {
                // Write-ahead: if we crash after WeChat rotated, the restart
                // knows the old token may die `grace` after `started`. A failed
                // write is logged and counted by the writer; fetching anyway
                // keeps the account alive.
                let _ = deps.store.put(base.clone()).await;
            }
            let mut result = deps.upstream.fetch(request.clone()).await;
            if !reached_wechat(&result) {
                calls -= 1;
            }
            // Stable compare-and-refresh: the normal call may already bring the
            // newer token; force a rotation only if WeChat returned the reported one.
            // Compared with the reported token, not the slot's: a token adopted
            // from another replica meanwhile must not make WeChat's unchanged
            // answer look new.
            if stale_retry {
                let same =
                    matches!((&result, &request.known), (Ok(g), Some(k)) if &g.access_token == k);
                if same {
                    if !force_allowed {
                        return Finished::throttled(
                            generation,
                            reason,
                            calls,
                            started,
                            late_before,
                        );
                    }
                    calls += 1;
                    forced = true;
                    result = deps
                        .upstream
                        .fetch(FetchRequest {
                            force_refresh: true,
                            ..request
                        })
                        .await;
                    if !reached_wechat(&result) {
                        calls -= 1;
                        forced = false;
                    }
                }
            }
            let mut same_token = false;
            let outcome_unknown = may_rotate
                && match &result {
                    Ok(grant) => grant.after_unknown,
                    Err(e) => e.outcome_unknown(),
                };
            let late = deps
                .policy
                .late_after(late_before, started, may_rotate, outcome_unknown);
            let result = match result {
                Ok(grant) => {
                    let expires = grant
                        .shared
                        .map_or(add_ms(started, grant.expires_in), |o| o.expires_at_ms);
                    let previous = slot.token();
                    same_token = previous
                        .as_ref()
                        .is_some_and(|p| p.token == grant.access_token);
                    let fetched_at = match (&previous, grant.shared) {
                        (Some(p), _) if same_token => p.fetched_at_ms,
                        (_, Some(origin)) => origin.fetched_at_ms,
                        _ => started,
                    };
                    let next =
                        deps.policy
                            .planned_refresh(mode, fetched_at, expires, schedule::draw());
                    let serve_until = deps.policy.serve_until(mode, expires, next);
                    let (_, serve_until) =
                        deps.policy
                            .guard_late(mode, fetched_at, next, serve_until, late);
                    let record = Arc::new(TokenRecord {
                        token: grant.access_token,
                        mode,
                        fetched_at_ms: fetched_at,
                        expires_at_ms: expires,
                        serve_until_ms: serve_until,
                    });
                    // Durable before served: a crash after this point cannot
                    // lose a token that clients already hold.
                    let durable = StoredAccount {
                        token: Some(stored_token(&record)),
                        pending_fetch_ms: None,
                        ..base
                    };
                    let _ = deps.store.put(durable).await;
                    slot.publish(record.clone());
                    Ok(record)
                }
                Err(e) => Err(RefreshError::Upstream(e)),
            };
            Finished {
                generation,
                reason,
                calls,
                forced,
                same_token,
                result,
                started_ms: started,
                may_rotate,
                outcome_unknown,
                late_until_ms: late,
            }
        };
        let shared: SharedRefresh = spawn_shared(
            addr,
            &self.deps.metrics,
            "refresh",
            task,
            on_panic,
            |f: &Finished| f.result.clone(),
        );
        self.inflight = Some(shared.clone());
        shared
    }

    /// Fetches the ticket of `kind` with the current token, or shares the
    /// fetch in flight. The ticket is published before anyone gets it.
    fn start_ticket(&mut self, ctx: &mut Context<Self>, kind: TicketKind) -> SharedTicket {
        if let Some(inflight) = self.ticket_inflight.get(&kind) {
            return inflight.clone();
        }
        if let Some(handle) = self.ticket_timers.remove(&kind) {
            ctx.cancel_future(handle);
        }
        let now = self.now_ms();
        let token = self.slot.token().filter(|t| t.usable_secs(now).is_some());
        let deps = self.deps.clone();
        let slot = self.slot.clone();
        let addr = ctx.address();
        let task = async move {
            let Some(token) = token else {
                return TicketFinished {
                    kind,
                    result: Err(RefreshError::NoToken),
                };
            };
            let started = deps.clock.now_unix_ms();
            let result = match deps.upstream.fetch_ticket(token.token.clone(), kind).await {
                Ok(grant) => {
                    let expires = add_ms(started, grant.expires_in);
                    let record = Arc::new(TicketRecord {
                        kind,
                        ticket: grant.ticket,
                        fetched_at_ms: started,
                        expires_at_ms: expires,
                        // Never past the token it was fetched with.
                        serve_until_ms: expires.min(token.serve_until_ms),
                    });
                    slot.publish_ticket(record.clone());
                    Ok(record)
                }
                Err(e) => Err(RefreshError::Upstream(e)),
            };
            TicketFinished { kind, result }
        };
        let on_panic = move |detail: String| TicketFinished {
            kind,
            result: Err(RefreshError::Internal { detail }),
        };
        let shared: SharedTicket = spawn_shared(
            addr,
            &self.deps.metrics,
            "ticket",
            task,
            on_panic,
            |f: &TicketFinished| f.result.clone(),
        );
        self.ticket_inflight.insert(kind, shared.clone());
        shared
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

    /// When to refetch a ticket: after 80% of its life, and 30 s before it
    /// stops being served (its token's serve time may have moved).
    fn ticket_plan(record: &TicketRecord, now: i64) -> i64 {
        let life = record
            .expires_at_ms
            .saturating_sub(record.fetched_at_ms)
            .max(0);
        let planned = record.fetched_at_ms.saturating_add(life / 5 * 4);
        planned
            .min(record.serve_until_ms.saturating_sub(30_000))
            .max(now.saturating_add(1_000))
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
                        let at = Self::ticket_plan(&t, now);
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

    /// Ok when a stable `force_refresh` is allowed now (`stale`: asked by a
    /// stale report, which has a smaller share); else how long to wait.
    fn force_budget(&self, stale: bool) -> Result<(), Duration> {
        schedule::force_budget(
            &self.slot.status().forces,
            self.last_stale_force_ms,
            stale,
            self.now_ms(),
        )
    }

    /// Ok when a legacy stale-report fetch is allowed now; else how long to wait.
    fn stale_budget(&self) -> Result<(), Duration> {
        let now = self.now_ms();
        let status = self.slot.status();
        let today = china_day(now.div_euclid(1000));
        let calls = if status.calls_day == today {
            status.calls_today
        } else {
            0
        };
        schedule::stale_fetch_budget(self.last_stale_fetch_ms, calls, now)
    }

    /// Ok when a request for a new refresh (a stale report, `reason`
    /// `StaleReport`, or an admin refresh) may start one now: a reporting
    /// client's own spacing and the account's rotation budgets. Else how long
    /// to wait until all of them allow it.
    fn request_budget(&self, reason: Reason, client: Option<&Arc<str>>) -> Result<(), Duration> {
        let now = self.now_ms();
        // Stale reports come from any reader; admins are limited per account only.
        let by_client = match client.filter(|_| reason == Reason::StaleReport) {
            Some(client) => schedule::spaced(
                self.client_refreshes.get(client).copied(),
                schedule::CLIENT_REFRESH_MIN_INTERVAL,
                now,
            ),
            None => Ok(()),
        };
        let by_account = match (reason, self.config.mode, &self.config.kind) {
            (Reason::StaleReport, Mode::Legacy, _) => self.stale_budget(),
            (Reason::StaleReport, Mode::Stable, _) => Ok(()),
            (_, Mode::Stable, crate::config::AccountKind::Wechat) => self.force_budget(false),
            _ => schedule::spaced(self.last_admin_refresh_ms, FORCE_MIN_INTERVAL, now),
        };
        // The caller may go again once every limit allows it.
        match (by_client, by_account) {
            (Ok(()), Ok(())) => Ok(()),
            (a, b) => Err(a.err().max(b.err()).unwrap_or_default()),
        }
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
        self.deps
            .metrics
            .upstream_calls_today
            .with_label_values(&[self.config.appid.as_str()])
            .set(self.slot.status().calls_today as i64);
    }

    fn publish_token_metrics(&self, record: &TokenRecord) {
        let appid = self.config.appid.as_str();
        let m = &self.deps.metrics;
        m.token_expiry
            .with_label_values(&[appid])
            .set(record.expires_at_ms as f64 / 1000.0);
        m.token_fetched
            .with_label_values(&[appid])
            .set(record.fetched_at_ms as f64 / 1000.0);
        m.token_serve_until
            .with_label_values(&[appid])
            .set(record.serve_until_ms as f64 / 1000.0);
    }

    /// Publishes a new serve time for the current token (same token).
    fn republish(&self, record: &TokenRecord, serve_until_ms: i64) {
        let record = TokenRecord {
            serve_until_ms,
            ..record.clone()
        };
        self.publish_token_metrics(&record);
        self.slot.publish(Arc::new(record));
    }

    /// Schedules the next refresh for a freshly published (or restored) token.
    fn schedule_from(
        &mut self,
        ctx: &mut Context<Self>,
        record: &TokenRecord,
        previous_same: bool,
    ) {
        let now = self.now_ms();
        let window_start = record.expires_at_ms.saturating_sub(
            i64::try_from(self.deps.policy.refresh.stable_window.as_millis()).unwrap_or(i64::MAX),
        );
        let at = if self.config.mode == Mode::Stable && previous_same && now >= window_start {
            // WeChat has not rotated yet although we are inside the window: ask again soon.
            add_ms(now, schedule::STABLE_RECHECK)
                .min(record.expires_at_ms.saturating_sub(1000))
                .max(now)
        } else {
            self.deps
                .policy
                .planned_refresh(
                    self.config.mode,
                    record.fetched_at_ms,
                    record.expires_at_ms,
                    schedule::draw(),
                )
                .max(now)
        };
        let policy = &self.deps.policy;
        let serve_until = policy.serve_until(self.config.mode, record.expires_at_ms, at);
        let late = self.slot.status().late_until_ms;
        let (at, serve_until) = policy.guard_late(
            self.config.mode,
            record.fetched_at_ms,
            at,
            serve_until,
            late,
        );
        let at = at.max(now);
        if self.config.mode == Mode::Legacy && serve_until != record.serve_until_ms {
            // Keep serve_until consistent with the plan actually armed.
            self.republish(record, serve_until);
            self.persist();
        }
        self.schedule(ctx, at, Reason::Scheduled);
    }
}

impl Finished {
    fn throttled(
        generation: u64,
        reason: Reason,
        calls: u32,
        started_ms: i64,
        late_until: Option<i64>,
    ) -> Finished {
        Finished {
            generation,
            reason,
            calls,
            started_ms,
            may_rotate: false,
            outcome_unknown: false,
            // Nothing was sent that could rotate; the window stays as it was.
            late_until_ms: late_until,
            forced: false,
            same_token: true,
            result: Err(RefreshError::Throttled {
                retry_after: FORCE_MIN_INTERVAL,
            }),
        }
    }
}

impl Actor for AccountActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        let appid = self.config.appid.as_str().to_string();
        self.deps.metrics.init_account(&appid);
        if !self.config.enabled {
            self.set_state(State::Disabled);
            return;
        }
        let now = self.now_ms();
        match self.slot.token() {
            Some(record) if record.usable_secs(now).is_some() => {
                self.publish_token_metrics(&record);
                let status = self.slot.status();
                if let Some(pending) = status
                    .pending_fetch_ms
                    .filter(|&p| p >= record.fetched_at_ms)
                {
                    // A fetch that may have rotated the token was cut off (a
                    // crash): the served token may die soon; replace it as
                    // soon as WeChat can no longer process the lost fetch.
                    let late = self.deps.policy.late_until(pending);
                    self.update_status(|s| {
                        s.state = State::Ready;
                        s.late_until_ms = Some(late);
                    });
                    if late > now {
                        self.schedule(ctx, late, Reason::Startup);
                    } else {
                        drop(self.start_refresh(ctx, Reason::Startup, false));
                    }
                    return;
                }
                // A restart after a crash keeps the plan the dead actor armed.
                match status.next_refresh_at_ms {
                    Some(at)
                        if matches!(status.state, State::Ready | State::Failing)
                            && at > now
                            && at <= record.expires_at_ms =>
                    {
                        let reason = if status.state == State::Failing {
                            Reason::Retry
                        } else {
                            Reason::Scheduled
                        };
                        self.schedule(ctx, at, reason);
                    }
                    _ => {
                        self.set_state(State::Ready);
                        self.schedule_from(ctx, &record, false);
                    }
                }
                self.ensure_tickets(ctx, false);
            }
            _ => {
                drop(self.start_refresh(ctx, Reason::Startup, false));
            }
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
        let now = self.now_ms();
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
        if msg.reason == Reason::StaleReport && self.config.mode == Mode::Legacy && msg.calls > 0 {
            self.last_stale_fetch_ms = Some(now);
        }
        if msg.reason == Reason::StaleReport && msg.forced {
            self.last_stale_force_ms = Some(now);
        }
        if msg.reason == Reason::Admin && msg.calls > 0 {
            self.last_admin_refresh_ms = Some(now);
        }
        let appid = self.config.appid.clone();
        let result_label = if msg.result.is_ok() { "ok" } else { "error" };
        self.deps
            .metrics
            .refreshes
            .with_label_values(&[appid.as_str(), msg.reason.as_str(), result_label])
            .inc();
        match msg.result {
            Ok(record) => {
                tracing::info!(appid = %appid, reason = msg.reason.as_str(), outcome = "ok", duration_ms = now - msg.started_ms, calls = msg.calls, token = %record.token, expires_in = (record.expires_at_ms - now) / 1000, "token refreshed");
                self.failures = 0;
                self.deps.metrics.set_config_error(appid.as_str(), None);
                self.publish_token_metrics(&record);
                self.update_status(|s| {
                    s.state = State::Ready;
                    s.last_error = None;
                    s.pending_fetch_ms = None;
                });
                self.schedule_from(ctx, &record, msg.same_token);
                self.ensure_tickets(ctx, !msg.same_token);
            }
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
            Err(err) => {
                let decision = match &err {
                    RefreshError::Upstream(e) => e.decide(now.div_euclid(1000)),
                    _ => Decision::Retry,
                };
                let config_error = match (&decision, &err) {
                    (Decision::ConfigError { .. }, RefreshError::Upstream(e)) => {
                        e.errcode().map(|code| (code, e.whitelist_ip()))
                    }
                    _ => None,
                };
                self.deps
                    .metrics
                    .set_config_error(appid.as_str(), config_error);
                let delay =
                    self.deps
                        .policy
                        .retry_delay(&decision, self.failures, now, schedule::draw());
                self.failures = self.failures.saturating_add(1);
                let (errcode, errmsg) = match &err {
                    RefreshError::Upstream(e) => (e.errcode(), e.errmsg()),
                    other => (None, other.to_string()),
                };
                tracing::warn!(appid = %appid, reason = msg.reason.as_str(), outcome = "error", errcode, duration_ms = now - msg.started_ms, calls = msg.calls, error = %errmsg, retry_in_ms = delay.as_millis() as u64, "token refresh failed");
                self.update_status(|s| {
                    s.state = State::Failing;
                    s.last_error = Some(LastError {
                        errcode,
                        errmsg,
                        at: now.div_euclid(1000),
                    });
                });
                let retry_at = add_ms(now, delay);
                // Did WeChat perhaps rotate the token although we saw no
                // answer? Then the old one dies `grace` after the attempt.
                let unknown_outcome = msg.outcome_unknown
                    || (msg.may_rotate && matches!(err, RefreshError::Unavailable));
                if !unknown_outcome {
                    self.update_status(|s| s.pending_fetch_ms = None);
                }
                if let Some(record) = self.slot.token()
                    && record.is_live(now)
                {
                    let serve_until = if unknown_outcome {
                        record
                            .serve_until_ms
                            .min(add_ms(msg.started_ms, self.deps.policy.grace))
                    } else if record.mode == Mode::Legacy {
                        // Nothing was rotated: the old token lives until the
                        // next fetch plus grace.
                        self.deps
                            .policy
                            .serve_until(Mode::Legacy, record.expires_at_ms, retry_at)
                            .max(record.serve_until_ms)
                    } else {
                        record.serve_until_ms
                    };
                    if serve_until != record.serve_until_ms {
                        self.republish(&record, serve_until);
                    }
                }
                self.schedule(ctx, retry_at, Reason::Retry);
            }
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
                let force = msg.stale.is_none()
                    && self.config.mode == Mode::Stable
                    && self.config.kind == crate::config::AccountKind::Wechat;
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
        let labels = [appid.as_str(), kind.as_str()];
        match msg.result {
            Ok(record) => {
                self.ticket_failures.remove(&kind);
                let m = &self.deps.metrics;
                m.ticket_refreshes
                    .with_label_values(&[labels[0], labels[1], "ok"])
                    .inc();
                m.ticket_expiry
                    .with_label_values(&labels)
                    .set(record.expires_at_ms as f64 / 1000.0);
                tracing::info!(appid = %appid, ticket = kind.as_str(), outcome = "ok", expires_in = (record.expires_at_ms - now) / 1000, "ticket refreshed");
                let at = Self::ticket_plan(&record, now);
                self.schedule_ticket(ctx, kind, at);
                self.persist();
            }
            Err(RefreshError::NoToken) => {
                // Fetched again when the next token arrives.
            }
            Err(err) => {
                self.deps
                    .metrics
                    .ticket_refreshes
                    .with_label_values(&[labels[0], labels[1], "error"])
                    .inc();
                let decision = match &err {
                    RefreshError::Upstream(e) => e.decide(now.div_euclid(1000)),
                    _ => Decision::Retry,
                };
                let failures = self.ticket_failures.entry(kind).or_default();
                let delay =
                    self.deps
                        .policy
                        .retry_delay(&decision, *failures, now, schedule::draw());
                *failures = failures.saturating_add(1);
                let errcode = match &err {
                    RefreshError::Upstream(e) => e.errcode(),
                    _ => None,
                };
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
                    schedule::spaced(Some(current.fetched_at_ms), TICKET_STALE_MIN_INTERVAL, now)
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
        if !self.config.enabled {
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
            mode: self.config.mode,
            fetched_at_ms: t.fetched_at_ms,
            expires_at_ms: t.expires_at_ms,
            serve_until_ms: t.expires_at_ms,
        });
        self.slot.publish(record.clone());
        tracing::info!(appid = %self.config.appid, token = %record.token, "adopted the token another replica fetched");
        self.publish_token_metrics(&record);
        self.failures = 0;
        self.deps
            .metrics
            .set_config_error(self.config.appid.as_str(), None);
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

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        self.shutting_down = true;
        ctx.stop();
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

impl Handler<Crash> for AccountActor {
    type Result = ();

    fn handle(&mut self, _: Crash, _: &mut Self::Context) {
        panic!("crash requested for account {}", self.config.appid);
    }
}

/// The stored form of a token record.
pub fn stored_token(record: &TokenRecord) -> StoredToken {
    StoredToken {
        token: record.token.clone(),
        fetched_at_ms: record.fetched_at_ms,
        expires_at_ms: record.expires_at_ms,
        serve_until_ms: record.serve_until_ms,
    }
}

/// What the store keeps of an account: its token and its counters.
pub fn stored_account(
    config: &AccountConfig,
    token: Option<&TokenRecord>,
    status: &AccountStatus,
) -> StoredAccount {
    StoredAccount {
        appid: config.appid.clone(),
        mode: config.mode,
        token: token.map(stored_token),
        pending_fetch_ms: status.pending_fetch_ms,
        calls_day: status.calls_day,
        calls_today: status.calls_today,
        forces: status.forces.clone(),
        tickets: Vec::new(),
    }
}

/// False when a fetch answered without calling WeChat: a token another
/// replica fetched, or no lock to call with.
fn reached_wechat(result: &Result<crate::wechat::TokenGrant, UpstreamError>) -> bool {
    match result {
        Ok(grant) => grant.shared.is_none(),
        Err(UpstreamError::Coordination { .. }) => false,
        Err(_) => true,
    }
}

/// Spawns `task`, whose message goes back to the actor when it ends, and
/// returns a shared handle on its result (`result` picks it from the
/// message). The handle is driven even when nobody awaits it. A task that
/// panics is counted in `wxtoken_task_panics_total{task}` and answers the
/// message `on_panic` builds, so the actor sees a failed attempt (and retries)
/// instead of a refresh that never ends.
fn spawn_shared<M, T>(
    addr: Addr<AccountActor>,
    metrics: &Metrics,
    task_label: &'static str,
    task: impl std::future::Future<Output = M> + 'static,
    on_panic: impl FnOnce(String) -> M + 'static,
    result: fn(&M) -> Result<T, RefreshError>,
) -> Shared<LocalBoxFuture<'static, Result<T, RefreshError>>>
where
    M: Message<Result = ()> + Send + 'static,
    AccountActor: Handler<M>,
    T: Clone + 'static,
{
    let metrics = metrics.clone();
    let handle = actix_rt::spawn(async move {
        match crate::panics::catch_future(task).await {
            Ok(finished) => finished,
            Err(detail) => {
                metrics.task_panics.with_label_values(&[task_label]).inc();
                on_panic(detail)
            }
        }
    });
    let shared = async move {
        match handle.await {
            Ok(finished) => {
                let answer = result(&finished);
                addr.do_send(finished);
                answer
            }
            // The runtime is shutting down and cancelled the task.
            Err(_) => Err(RefreshError::Unavailable),
        }
    }
    .boxed_local()
    .shared();
    actix_rt::spawn(shared.clone().map(|_| ()));
    shared
}
