//! Where every refresh decision is made: pure functions from a token's life,
//! the `refresh:` settings, the account's counters and a random draw to what
//! the account actor does next. The actor only carries the decisions out.
//!
//! In this file, top-down: when to refresh a token ([`Policy::planned_refresh`],
//! [`next_refresh`]) and until when to serve it ([`Policy::serve_until`],
//! [`serve_after_failure`]); the late-answer window ([`Policy::guard_late`]);
//! backoff ([`Policy::retry_delay`], [`retry_after`]); the plan after a
//! restart ([`restart_plan`]); tickets ([`ticket_plan`]); the force and call
//! budgets ([`request_budget`], [`force_budget`], [`stale_fetch_budget`]);
//! upstream quotas: when to read them ([`QuotaReads::due`], [`quota_apis`])
//! and the fall back to stable_token on a spent legacy quota
//! ([`stable_fallback`]).
//!
//! Times: a token's life counts from when its request was sent, after any
//! wait for an upstream slot ([`crate::wechat::Limited`]), never from when the
//! refresh was asked for: that is when WeChat's own clock for it starts.
//!
//! The schedule (see [`Policy::planned_refresh`]) uses all the room it has, so
//! that many accounts started at one instant (a cold start) need no more
//! calls per second than the upstream limit carries: stable refreshes spread
//! over the whole window but its first seconds and its last fifth, legacy
//! ones over `legacy_at` ± `jitter` of the life. The fill itself already sends
//! the first requests at the rate the limit carries, and since lives count
//! from the send, one lifetime later the refreshes come at most at that rate
//! too; the spread only lowers it. A refresh that still waits for a slot has
//! the last fifth of the stable window (the legacy grace) before its token
//! stops being served; the wait is first come, first served.
//!
//! Invariants: a planned refresh is never after the token's expiry, and a
//! stable one never before its window nor in the window's last fifth (kept
//! for retries); the mean legacy refresh is at `legacy_at` of the life; a legacy
//! token is never offered to clients past the next planned refresh plus
//! WeChat's grace (a legacy refresh kills the old token `grace` later); backoff
//! never exceeds `backoff_max`, and config-class failures never retry sooner
//! than [`crate::wechat::error::CONFIG_ERROR_RETRY`]; no request makes an
//! account rotate its token more often than its budgets allow.

use std::time::Duration;

use rand::Rng;

use crate::clock::{add_ms, until_ms};
use crate::config::RefreshConfig;
use crate::domain::ApiName;
use crate::domain::Mode;
use crate::snapshot::{AccountStatus, State, TicketRecord, TokenRecord};
use crate::wechat::{Decision, Endpoint, UpstreamError, WaitCause};

use super::messages::{Reason, RefreshError};

/// WeChat keeps a superseded token working this long (legacy refresh, forced stable refresh).
pub const WECHAT_GRACE: Duration = Duration::from_secs(300);

/// The most a stable refresh waits after its window opens (see `planned_refresh`).
const STABLE_MARGIN_MS: f64 = 5_000.0;

/// The last this share of the stable window is kept for retries: no stable
/// refresh is planned in it (60 s of the default 5 minutes: room for six
/// attempts at the default backoff of 1, 2, 4, ... s, or for a wait behind
/// the upstream limit).
pub const STABLE_RETRY_SHARE: f64 = 0.2;

/// In stable mode, when WeChat still returned the same token inside the window,
/// ask again after this long (bounded by the expiry).
pub const STABLE_RECHECK: Duration = Duration::from_secs(15);

/// The schedule inputs of one account.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub refresh: RefreshConfig,
    /// How long WeChat keeps a superseded token alive. [`WECHAT_GRACE`] in
    /// production; tests against a simulator with a short grace set it lower.
    pub grace: Duration,
    /// How long after an attempt with unknown outcome (a timeout, say) WeChat
    /// may still process it: twice the upstream timeout
    /// ([`late_answer_bound`]). A token fetched before that instant may be
    /// superseded by the late one.
    pub late_answer_bound: Duration,
}

/// The late-answer bound for an upstream `timeout`: twice the timeout. A
/// request WeChat has not processed by then is taken as never processed.
pub fn late_answer_bound(timeout: Duration) -> Duration {
    timeout.saturating_mul(2)
}

impl Policy {
    /// The policy for `refresh` with WeChat's grace and the late-answer bound
    /// of the default 5 s upstream timeout.
    pub fn new(refresh: RefreshConfig) -> Self {
        Policy {
            refresh,
            grace: WECHAT_GRACE,
            late_answer_bound: late_answer_bound(Duration::from_secs(5)),
        }
    }

    /// When to refresh a token fetched at `fetched_ms` that expires at
    /// `expires_ms` (Unix milliseconds). `draw` is a uniform sample in [0, 1).
    ///
    /// Legacy: after `legacy_at` ± `jitter` of the lifetime (uniform, so the
    /// mean is `legacy_at`: 0.8 is 15 calls a day). Stable: inside the last
    /// `stable_window`, when WeChat has already rotated the token, uniform
    /// over all of it but its first seconds (a margin for the answer's
    /// latency) and its last [`STABLE_RETRY_SHARE`] (room for retries); at
    /// most `2 × jitter` of the lifetime wide, like legacy's spread.
    pub fn planned_refresh(&self, mode: Mode, fetched_ms: i64, expires_ms: i64, draw: f64) -> i64 {
        // Times saturate and the result is clamped into [fetched, expires]
        // without `clamp` (which panics when an absurd expiry precedes the fetch).
        let expires_ms = expires_ms.max(fetched_ms);
        let life = expires_ms.saturating_sub(fetched_ms) as f64;
        let at = match mode {
            Mode::Legacy => {
                let j = self.refresh.jitter;
                let fraction = (self.refresh.legacy_at + (2.0 * draw - 1.0) * j).clamp(0.05, 0.99);
                fetched_ms.saturating_add((life * fraction) as i64)
            }
            Mode::Stable => {
                let window = self.refresh.stable_window.as_millis() as f64;
                let window = window.min(life);
                // Not at the very start of the window: our expiry is counted
                // from the request, WeChat's from its answer, so at exactly
                // `window` before it WeChat may still return the old token.
                let margin = (window / 10.0).min(STABLE_MARGIN_MS);
                let room = (window * (1.0 - STABLE_RETRY_SHARE) - margin).max(0.0);
                let spread = (2.0 * self.refresh.jitter * life).min(room);
                expires_ms
                    .saturating_sub(window as i64)
                    .saturating_add(margin as i64)
                    .saturating_add((draw * spread) as i64)
            }
        };
        at.max(fetched_ms).min(expires_ms)
    }

    /// Until when clients may use a token, given the next planned refresh:
    /// stable tokens until expiry; legacy tokens until the planned refresh plus
    /// WeChat's grace, never past expiry.
    pub fn serve_until(&self, mode: Mode, expires_ms: i64, next_refresh_ms: i64) -> i64 {
        match mode {
            Mode::Stable => expires_ms,
            Mode::Legacy => expires_ms.min(add_ms(next_refresh_ms, self.grace)),
        }
    }

    /// Until when WeChat may still process an attempt with unknown outcome
    /// that started at `started_ms` (see [`Policy::late_answer_bound`]).
    pub fn late_until(&self, started_ms: i64) -> i64 {
        add_ms(started_ms, self.late_answer_bound)
    }

    /// The late window after an attempt that started at `started_ms`:
    /// `late_before` extended to [`Policy::late_until`] when the attempt may
    /// rotate and its outcome (or an earlier failed-over attempt's) is unknown,
    /// else `late_before` as it was.
    pub fn late_after(
        &self,
        late_before: Option<i64>,
        started_ms: i64,
        may_rotate: bool,
        outcome_unknown: bool,
    ) -> Option<i64> {
        if may_rotate && outcome_unknown {
            let until = self.late_until(started_ms);
            Some(late_before.map_or(until, |l| l.max(until)))
        } else {
            late_before
        }
    }

    /// The refresh instant and serve time of a token fetched at `fetched_ms`
    /// while an attempt with unknown outcome may still be processed until
    /// `late_until`: a late mint supersedes the token no earlier than `grace`
    /// after both the token's fetch and the attempt's start (it happens after
    /// both), so a legacy token is served at most until then, and the token
    /// is replaced once the late window has passed. Tokens fetched after the
    /// window (or with none) keep `(refresh_at, serve_until)`.
    pub fn guard_late(
        &self,
        mode: Mode,
        fetched_ms: i64,
        refresh_at: i64,
        serve_until: i64,
        late_until: Option<i64>,
    ) -> (i64, i64) {
        match late_until {
            Some(late) if fetched_ms < late => {
                let attempt = late.saturating_sub(
                    i64::try_from(self.late_answer_bound.as_millis()).unwrap_or(i64::MAX),
                );
                let serve_until = match mode {
                    Mode::Legacy => serve_until.min(add_ms(fetched_ms.max(attempt), self.grace)),
                    // A late forced rotation kills a stable token at once:
                    // nothing to cap, but ask again when the window closes.
                    Mode::Stable => serve_until,
                };
                (refresh_at.min(late), serve_until)
            }
            _ => (refresh_at, serve_until),
        }
    }

    /// True when a token fetched at `fetched_ms` is clear of the late window.
    pub fn clear_of_late(fetched_ms: i64, late_until: Option<i64>) -> bool {
        late_until.is_none_or(|late| fetched_ms >= late)
    }

    /// The delay before retry number `attempt` (0 for the first retry) after a
    /// failure decided as `decision`, at `now_ms`. `draw` is uniform in [0, 1).
    ///
    /// Transient failures back off exponentially with full jitter between 0
    /// and `min(backoff_max, backoff_initial * 2^attempt)` (at least 100 ms);
    /// config errors wait at least the config retry period; `NotBefore` waits
    /// until its instant plus up to a few seconds of jitter.
    pub fn retry_delay(
        &self,
        decision: &Decision,
        attempt: u32,
        now_ms: i64,
        draw: f64,
    ) -> Duration {
        let exp = self.exponential(attempt);
        match decision {
            Decision::Retry | Decision::TokenRejected => {
                Duration::from_millis(((exp.as_millis() as f64) * draw) as u64)
                    .max(Duration::from_millis(100))
            }
            Decision::ConfigError { retry_after } => (*retry_after).max(exp),
            // The actor recovers the refresh token first and then retries at once.
            Decision::Recover => exp,
            // Never again; the actor stops its timer (this only bounds a retry
            // that a bug might still arm).
            Decision::Revoked => Duration::from_secs(24 * 3600),
            Decision::NotBefore { unix, .. } => {
                until_ms(now_ms, unix.saturating_mul(1000))
                    + Duration::from_millis((draw * 5000.0) as u64)
            }
        }
    }

    fn exponential(&self, attempt: u32) -> Duration {
        let initial = self.refresh.backoff_initial.max(Duration::from_millis(1));
        let factor = 2u32.saturating_pow(attempt.min(30));
        initial
            .checked_mul(factor)
            .unwrap_or(self.refresh.backoff_max)
            .min(self.refresh.backoff_max)
    }
}

/// WeChat allows this many stable `force_refresh` calls per China-time day.
pub const FORCE_DAILY_LIMIT: usize = 20;
/// ... and at least this long apart. Every other rotation wxtoken makes on
/// request (a legacy stale report, an admin refresh) keeps the same distance
/// per account.
pub const FORCE_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Of the daily forces, this many are kept for admin refreshes: stale
/// reports (any reader can send one) may spend only the rest.
pub const ADMIN_RESERVED_FORCES: usize = 5;
/// Stale reports force a stable rotation at most this often per account, so
/// that their share of the daily forces lasts.
pub const STALE_FORCE_MIN_INTERVAL: Duration = Duration::from_secs(600);
/// Legacy stale reports fetch no more once the account's calls today reach
/// this (half of WeChat's default quota of 2000): the rest of the quota is
/// kept for scheduled refreshes and admins.
pub const STALE_FETCH_CALL_CEILING: u32 = 1000;
/// One client's stale reports make an account refresh at most this often;
/// reports that join a refresh in flight are never limited (admins are
/// limited per account, by [`FORCE_MIN_INTERVAL`] and the force budget).
pub const CLIENT_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(60);

/// A ticket reported stale is refetched at most this often after it was fetched.
pub const TICKET_STALE_MIN_INTERVAL: Duration = Duration::from_secs(30);

/// Ok when something last done at `last_ms` may be done again at `now_ms`,
/// `min` later; else how long to wait (at least one second).
pub fn spaced(last_ms: Option<i64>, min: Duration, now_ms: i64) -> Result<(), Duration> {
    match last_ms {
        Some(last) if now_ms < add_ms(last, min) => {
            Err(until_ms(now_ms, add_ms(last, min)).max(Duration::from_secs(1)))
        }
        _ => Ok(()),
    }
}

/// Ok when a stable `force_refresh` is allowed at `now_ms`; else how long to
/// wait. `forces` are the Unix ms of the forces made (any day), `stale` says
/// whether a stale report asks (then only the non-reserved share and at most
/// one per [`STALE_FORCE_MIN_INTERVAL`] since `last_stale_force_ms`).
pub fn force_budget(
    forces: &[i64],
    last_stale_force_ms: Option<i64>,
    stale: bool,
    now_ms: i64,
) -> Result<(), Duration> {
    let today = crate::clock::china_day(now_ms.div_euclid(1000));
    let today_forces: Vec<i64> = forces
        .iter()
        .copied()
        .filter(|&t| crate::clock::china_day(t.div_euclid(1000)) == today)
        .collect();
    let limit = if stale {
        FORCE_DAILY_LIMIT - ADMIN_RESERVED_FORCES
    } else {
        FORCE_DAILY_LIMIT
    };
    if today_forces.len() >= limit {
        let midnight = crate::clock::next_china_midnight(now_ms.div_euclid(1000));
        return Err(until_ms(now_ms, midnight.saturating_mul(1000)).max(Duration::from_secs(1)));
    }
    spaced(
        today_forces.iter().max().copied(),
        FORCE_MIN_INTERVAL,
        now_ms,
    )?;
    if stale {
        spaced(last_stale_force_ms, STALE_FORCE_MIN_INTERVAL, now_ms)?;
    }
    Ok(())
}

/// Ok when a legacy stale report may fetch a new token at `now_ms`: the
/// previous one is [`FORCE_MIN_INTERVAL`] ago and the account's calls today
/// are below [`STALE_FETCH_CALL_CEILING`]; else how long to wait.
pub fn stale_fetch_budget(
    last_stale_fetch_ms: Option<i64>,
    calls_today: u32,
    now_ms: i64,
) -> Result<(), Duration> {
    if calls_today >= STALE_FETCH_CALL_CEILING {
        let midnight = crate::clock::next_china_midnight(now_ms.div_euclid(1000));
        return Err(until_ms(now_ms, midnight.saturating_mul(1000)).max(Duration::from_secs(1)));
    }
    spaced(last_stale_fetch_ms, FORCE_MIN_INTERVAL, now_ms)
}

/// The retry decision after a failed refresh at `now_ms`: WeChat's answer
/// decides ([`crate::wechat::UpstreamError::decide`]); anything else is retried.
pub fn decide(err: &RefreshError, now_ms: i64) -> Decision {
    match err {
        RefreshError::Upstream { error, .. } => error.decide(now_ms.div_euclid(1000)),
        _ => Decision::Retry,
    }
}

/// How long a caller should wait before asking again after a failure decided
/// as `decision` at `now_ms` (the `Retry-After` of the API): until the
/// instant a `NotBefore` names, the config retry period, or one second.
pub fn retry_after(decision: &Decision, now_ms: i64) -> Duration {
    let now = now_ms.div_euclid(1000);
    let secs = match decision {
        Decision::NotBefore { unix, .. } => unix.saturating_sub(now).max(1).unsigned_abs(),
        Decision::ConfigError { retry_after } => retry_after.as_secs().max(1),
        Decision::Retry | Decision::TokenRejected | Decision::Recover => 1,
        Decision::Revoked => 24 * 3600,
    };
    Duration::from_secs(secs)
}

/// The next refresh instant and serve time of `record` (just published or
/// restored) at `now_ms`, in `mode`, given the late window `late`.
///
/// `previous_same`: WeChat returned the token that was already current; a
/// stable token inside its window is then asked for again soon
/// ([`STABLE_RECHECK`]). Never before `now_ms`.
pub fn next_refresh(
    policy: &Policy,
    mode: Mode,
    record: &TokenRecord,
    previous_same: bool,
    late: Option<i64>,
    now_ms: i64,
    draw: f64,
) -> (i64, i64) {
    let window_start = record.expires_at_ms.saturating_sub(
        i64::try_from(policy.refresh.stable_window.as_millis()).unwrap_or(i64::MAX),
    );
    let at = if mode == Mode::Stable && previous_same && now_ms >= window_start {
        // WeChat has not rotated yet although we are inside the window: ask again soon.
        add_ms(now_ms, STABLE_RECHECK)
            .min(record.expires_at_ms.saturating_sub(1000))
            .max(now_ms)
    } else {
        policy
            .planned_refresh(mode, record.fetched_at_ms, record.expires_at_ms, draw)
            .max(now_ms)
    };
    let serve_until = policy.serve_until(mode, record.expires_at_ms, at);
    let (at, serve_until) = policy.guard_late(mode, record.fetched_at_ms, at, serve_until, late);
    (at.max(now_ms), serve_until)
}

/// The serve time of a token WeChat just granted (fetched at `fetched_ms`,
/// expiring at `expires_ms`), given the late window `late`.
pub fn serve_new_token(
    policy: &Policy,
    mode: Mode,
    fetched_ms: i64,
    expires_ms: i64,
    late: Option<i64>,
    draw: f64,
) -> i64 {
    let next = policy.planned_refresh(mode, fetched_ms, expires_ms, draw);
    let serve_until = policy.serve_until(mode, expires_ms, next);
    policy
        .guard_late(mode, fetched_ms, next, serve_until, late)
        .1
}

/// The serve time of the current token `record` after a failed attempt that
/// started at `started_ms`, with the retry armed for `retry_at`.
///
/// An attempt whose outcome is unknown (`unknown_outcome`) may have rotated
/// the token: the old one is then served at most `grace` after the attempt.
/// Otherwise nothing was rotated, and a legacy token lives until the retry's
/// fetch plus grace.
pub fn serve_after_failure(
    policy: &Policy,
    record: &TokenRecord,
    unknown_outcome: bool,
    started_ms: i64,
    retry_at: i64,
) -> i64 {
    if unknown_outcome {
        record.serve_until_ms.min(add_ms(started_ms, policy.grace))
    } else if record.mode == Mode::Legacy {
        policy
            .serve_until(Mode::Legacy, record.expires_at_ms, retry_at)
            .max(record.serve_until_ms)
    } else {
        record.serve_until_ms
    }
}

/// What a (re)started account actor does first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPlan {
    /// No usable token: fetch now.
    FetchNow,
    /// A fetch that may have rotated the token was cut off (a crash): the
    /// served token may die soon; replace it once WeChat can no longer
    /// process the lost fetch, at `late_until` (now when that has passed).
    AfterLostFetch { late_until: i64 },
    /// The dead actor's armed plan still holds: keep it.
    Resume { at: i64, reason: Reason },
    /// Plan anew from the token ([`next_refresh`]).
    Replan,
}

/// The first step of an account actor that finds `token` and `status` in its
/// slot at `now_ms` (a restart, a reload or a restore from the store).
pub fn restart_plan(
    policy: &Policy,
    token: Option<&TokenRecord>,
    status: &AccountStatus,
    now_ms: i64,
) -> RestartPlan {
    let Some(record) = token.filter(|t| t.usable_secs(now_ms).is_some()) else {
        return RestartPlan::FetchNow;
    };
    if let Some(pending) = status
        .pending_fetch_ms
        .filter(|&p| p >= record.fetched_at_ms)
    {
        return RestartPlan::AfterLostFetch {
            late_until: policy.late_until(pending),
        };
    }
    match status.next_refresh_at_ms {
        Some(at)
            if matches!(status.state, State::Ready | State::Failing)
                && at > now_ms
                && at <= record.expires_at_ms =>
        {
            let reason = if status.state == State::Failing {
                Reason::Retry
            } else {
                Reason::Scheduled
            };
            RestartPlan::Resume { at, reason }
        }
        _ => RestartPlan::Replan,
    }
}

/// When to refetch a ticket: after 80% of its life, and 30 s before it
/// stops being served (its token's serve time may have moved); never
/// sooner than a second from `now_ms`.
pub fn ticket_plan(record: &TicketRecord, now_ms: i64) -> i64 {
    let life = record
        .expires_at_ms
        .saturating_sub(record.fetched_at_ms)
        .max(0);
    let planned = record.fetched_at_ms.saturating_add(life / 5 * 4);
    planned
        .min(record.serve_until_ms.saturating_sub(30_000))
        .max(now_ms.saturating_add(1_000))
}

/// What an account remembers of the rotations it made on request, for
/// [`request_budget`]. Times are Unix ms.
#[derive(Debug, Clone, Default)]
pub struct Spent<'a> {
    /// The stable `force_refresh` calls made (any day).
    pub forces: &'a [i64],
    /// When a stale report last forced a stable rotation.
    pub last_stale_force_ms: Option<i64>,
    /// When a legacy stale report last fetched.
    pub last_stale_fetch_ms: Option<i64>,
    /// When an admin refresh last rotated a legacy or WeCom token.
    pub last_admin_refresh_ms: Option<i64>,
    /// When the asking client last made this account refresh (stale reports).
    pub client_last_ms: Option<i64>,
    /// Token calls counted today (China time).
    pub calls_today: u32,
}

/// Ok when a request for a new refresh of an account fetching from
/// `endpoint` (a stale report, `reason` `StaleReport`, or an admin refresh)
/// may start one at `now_ms`: the reporting client's own spacing and the
/// account's rotation budgets. Else how long to wait until all of them allow
/// it. Joining a refresh in flight is never limited (the actor does not ask).
pub fn request_budget(
    reason: Reason,
    endpoint: &Endpoint,
    spent: &Spent<'_>,
    now_ms: i64,
) -> Result<(), Duration> {
    // Stale reports come from any reader; admins are limited per account only.
    let by_client = if reason == Reason::StaleReport {
        spaced(spent.client_last_ms, CLIENT_REFRESH_MIN_INTERVAL, now_ms)
    } else {
        Ok(())
    };
    let by_account = match (reason, endpoint) {
        (Reason::StaleReport, Endpoint::Legacy) => {
            stale_fetch_budget(spent.last_stale_fetch_ms, spent.calls_today, now_ms)
        }
        (Reason::StaleReport, _) => Ok(()),
        (_, Endpoint::Stable) => {
            force_budget(spent.forces, spent.last_stale_force_ms, false, now_ms)
        }
        _ => spaced(spent.last_admin_refresh_ms, FORCE_MIN_INTERVAL, now_ms),
    };
    // The caller may go again once every limit allows it.
    match (by_client, by_account) {
        (Ok(()), Ok(())) => Ok(()),
        (a, b) => Err(a.err().max(b.err()).unwrap_or_default()),
    }
}

/// A uniform draw in [0, 1) from the thread's random generator.
pub fn draw() -> f64 {
    rand::rng().random::<f64>()
}

/// A token API's quota is read at most this often in the normal course
/// (getApiQuota has a quota of its own): after a refresh, once an hour.
pub const QUOTA_READ_EVERY_MS: i64 = 3_600_000;

/// The soonest a spent quota (45009) makes the quota be read again.
pub const QUOTA_READ_AFTER_SPENT_MS: i64 = 60_000;

/// What asks for a quota reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaTrigger {
    /// A token was just refreshed (the normal, hourly course).
    Refreshed,
    /// WeChat answered 45009, or the account just fell back to stable_token.
    Spent,
}

/// When an account last read its upstream quotas (Unix ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaReads {
    /// The last reading, whatever asked for it.
    pub last_ms: Option<i64>,
    /// The last reading a spent quota asked for.
    pub last_spent_ms: Option<i64>,
}

impl QuotaReads {
    /// Whether the quota should be read now for `trigger`: after a refresh
    /// once [`QUOTA_READ_EVERY_MS`] passed since any reading, and only when
    /// the upstream limit has a `spare` slot (a reading never delays a token
    /// fetch: during a cold fill of a large fleet the first readings come at
    /// the next refresh); on a spent quota at once, unless one was read for
    /// that under [`QUOTA_READ_AFTER_SPENT_MS`] ago.
    pub fn due(&self, now_ms: i64, trigger: QuotaTrigger, spare: bool) -> bool {
        let (last, every) = match trigger {
            QuotaTrigger::Refreshed if !spare => return false,
            QuotaTrigger::Refreshed => (self.last_ms, QUOTA_READ_EVERY_MS),
            QuotaTrigger::Spent => (self.last_spent_ms, QUOTA_READ_AFTER_SPENT_MS),
        };
        last.is_none_or(|last| now_ms.saturating_sub(last) >= every)
    }

    /// Records a reading made at `now_ms` for `trigger`.
    pub fn read(&mut self, now_ms: i64, trigger: QuotaTrigger) {
        self.last_ms = Some(now_ms);
        if trigger == QuotaTrigger::Spent {
            self.last_spent_ms = Some(now_ms);
        }
    }
}

/// The token APIs whose quota an account reads with its token: the one its
/// `endpoint` calls, and the legacy one too while a legacy account (its
/// `configured` endpoint) fetches from stable_token. A component reads, with
/// its own token, its `api_component_token` and the `api_authorizer_token`
/// its authorizers' refreshes spend (counted against the component, so an
/// authorizer reads none); WeCom has no getApiQuota.
pub fn quota_apis(endpoint: &Endpoint, configured: &Endpoint) -> &'static [ApiName] {
    match (configured, endpoint) {
        (Endpoint::Legacy, Endpoint::Stable) => &[ApiName::Token, ApiName::StableToken],
        (_, Endpoint::Legacy) => &[ApiName::Token],
        (_, Endpoint::Stable) => &[ApiName::StableToken],
        (_, Endpoint::Component) => &[ApiName::ComponentToken, ApiName::AuthorizerToken],
        _ => &[],
    }
}

/// When a legacy fetch failed with `error` and the account `allows` it:
/// until when (Unix ms) it gets its tokens from stable_token instead, whose
/// quota is separate. That is a spent daily quota (45009, which WeChat's own
/// message answers with a pointer to getStableAccessToken), until the quota
/// day ends. `None`: no fall back.
pub fn stable_fallback(
    endpoint: &Endpoint,
    allowed: bool,
    error: &UpstreamError,
    now_ms: i64,
) -> Option<i64> {
    if !allowed || *endpoint != Endpoint::Legacy {
        return None;
    }
    match error.decide(now_ms.div_euclid(1000)) {
        Decision::NotBefore {
            unix,
            cause: WaitCause::DailyQuota,
        } => Some(unix.saturating_mul(1000)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(RefreshConfig::default())
    }

    const H2: i64 = 7_200_000;

    fn token(mode: Mode, fetched: i64, expires: i64, serve: i64) -> TokenRecord {
        TokenRecord {
            token: crate::domain::AccessToken::new("a-token-of-test-length".to_string()),
            mode,
            fetched_at_ms: fetched,
            expires_at_ms: expires,
            serve_until_ms: serve,
            json: Default::default(),
        }
    }

    #[test]
    fn retry_after_follows_the_decision() {
        let now = 1_000_000;
        assert_eq!(retry_after(&Decision::Retry, now), Duration::from_secs(1));
        let config = Decision::ConfigError {
            retry_after: Duration::from_secs(300),
        };
        assert_eq!(retry_after(&config, now), Duration::from_secs(300));
        let quota = Decision::NotBefore {
            unix: 1_060,
            cause: crate::wechat::WaitCause::MinuteLimit,
        };
        assert_eq!(retry_after(&quota, now), Duration::from_secs(60));
        let past = Decision::NotBefore {
            unix: 10,
            cause: crate::wechat::WaitCause::MinuteLimit,
        };
        assert_eq!(retry_after(&past, now), Duration::from_secs(1));
    }

    #[test]
    fn a_stable_token_returned_unchanged_inside_its_window_is_asked_for_again_soon() {
        let p = policy();
        let record = token(Mode::Stable, 0, H2, H2);
        let now = H2 - 200_000;
        let (at, serve) = next_refresh(&p, Mode::Stable, &record, true, None, now, 0.5);
        assert_eq!(at, now + 15_000);
        assert_eq!(serve, H2);
        // Outside the window, or a new token: the normal plan.
        let (at, _) = next_refresh(&p, Mode::Stable, &record, false, None, 0, 0.0);
        assert_eq!(at, H2 - 295_000);
    }

    #[test]
    fn a_legacy_plan_serves_until_the_planned_refresh_plus_grace_and_never_plans_in_the_past() {
        let p = policy();
        let record = token(Mode::Legacy, 0, H2, H2);
        let (at, serve) = next_refresh(&p, Mode::Legacy, &record, false, None, 0, 0.5);
        assert_eq!((at, serve), (5_760_000, 6_060_000));
        let late_now = 6_500_000;
        let (at, _) = next_refresh(&p, Mode::Legacy, &record, false, None, late_now, 0.5);
        assert_eq!(at, late_now);
        assert_eq!(
            serve_new_token(&p, Mode::Legacy, 0, H2, None, 0.5),
            6_060_000
        );
        assert_eq!(serve_new_token(&p, Mode::Stable, 0, H2, None, 0.5), H2);
    }

    #[test]
    fn after_a_failure_an_unknown_outcome_caps_the_token_at_the_attempt_plus_grace() {
        let p = policy();
        let record = token(Mode::Legacy, 0, H2, 6_060_000);
        let started = 5_760_000;
        assert_eq!(
            serve_after_failure(&p, &record, true, started, started + 1_000),
            started + 300_000
        );
        // Nothing rotated: a legacy token lives until the retry's fetch plus grace.
        assert_eq!(
            serve_after_failure(&p, &record, false, started, 6_000_000),
            6_300_000
        );
        let stable = token(Mode::Stable, 0, H2, H2);
        assert_eq!(
            serve_after_failure(&p, &stable, false, started, 6_000_000),
            H2
        );
    }

    #[test]
    fn a_restart_keeps_the_dead_actors_plan_or_waits_out_a_lost_fetch() {
        let p = policy();
        let now = 1_000_000;
        let record = token(Mode::Legacy, now - 1_000, now + H2, now + 6_000_000);
        let mut status = AccountStatus {
            state: State::Ready,
            next_refresh_at_ms: Some(now + 60_000),
            ..AccountStatus::default()
        };
        assert_eq!(restart_plan(&p, None, &status, now), RestartPlan::FetchNow);
        assert_eq!(
            restart_plan(&p, Some(&record), &status, now),
            RestartPlan::Resume {
                at: now + 60_000,
                reason: Reason::Scheduled
            }
        );
        status.state = State::Failing;
        assert_eq!(
            restart_plan(&p, Some(&record), &status, now),
            RestartPlan::Resume {
                at: now + 60_000,
                reason: Reason::Retry
            }
        );
        status.next_refresh_at_ms = Some(now - 1);
        assert_eq!(
            restart_plan(&p, Some(&record), &status, now),
            RestartPlan::Replan
        );
        status.pending_fetch_ms = Some(now - 500);
        assert_eq!(
            restart_plan(&p, Some(&record), &status, now),
            RestartPlan::AfterLostFetch {
                late_until: now - 500 + 10_000
            }
        );
        let expired = token(Mode::Legacy, 0, now, now);
        assert_eq!(
            restart_plan(&p, Some(&expired), &status, now),
            RestartPlan::FetchNow
        );
    }

    #[test]
    fn a_ticket_is_refetched_at_80_percent_and_before_its_token_stops_being_served() {
        let ticket = |serve: i64| TicketRecord {
            kind: crate::domain::TicketKind::Jsapi,
            ticket: crate::domain::AccessToken::new("a-ticket-of-test-length".to_string()),
            fetched_at_ms: 0,
            expires_at_ms: H2,
            serve_until_ms: serve,
        };
        assert_eq!(ticket_plan(&ticket(H2), 0), 5_760_000);
        assert_eq!(ticket_plan(&ticket(1_000_000), 0), 970_000);
        assert_eq!(ticket_plan(&ticket(1_000_000), 990_000), 991_000);
    }

    #[test]
    fn requested_rotations_are_limited_per_client_and_per_account() {
        let now = 1_796_000_000_000;
        let none = Spent::default();
        for endpoint in [
            Endpoint::Legacy,
            Endpoint::Stable,
            Endpoint::Wecom {
                corpid: "ww1".to_string(),
            },
        ] {
            assert!(request_budget(Reason::StaleReport, &endpoint, &none, now).is_ok());
            assert!(request_budget(Reason::Admin, &endpoint, &none, now).is_ok());
            // One client's reports: one refresh a minute.
            let client = Spent {
                client_last_ms: Some(now - 10_000),
                ..Spent::default()
            };
            assert_eq!(
                request_budget(Reason::StaleReport, &endpoint, &client, now),
                Err(Duration::from_secs(50))
            );
            // Admins are not limited per client.
            assert!(request_budget(Reason::Admin, &endpoint, &client, now).is_ok());
        }
        // Legacy stale reports: 30 s apart per account.
        let fetched = Spent {
            last_stale_fetch_ms: Some(now - 20_000),
            ..Spent::default()
        };
        assert_eq!(
            request_budget(Reason::StaleReport, &Endpoint::Legacy, &fetched, now),
            Err(Duration::from_secs(10))
        );
        // Stable admins spend the force budget; others are spaced 30 s.
        let forces = [now - 5_000];
        let forced = Spent {
            forces: &forces,
            last_admin_refresh_ms: Some(now - 5_000),
            ..Spent::default()
        };
        assert_eq!(
            request_budget(Reason::Admin, &Endpoint::Stable, &forced, now),
            Err(Duration::from_secs(25))
        );
        assert_eq!(
            request_budget(Reason::Admin, &Endpoint::Legacy, &forced, now),
            Err(Duration::from_secs(25))
        );
    }

    #[test]
    fn legacy_refreshes_at_80_percent_plus_minus_jitter() {
        let p = policy();
        assert_eq!(p.planned_refresh(Mode::Legacy, 0, H2, 0.5), 5_760_000);
        assert_eq!(p.planned_refresh(Mode::Legacy, 0, H2, 0.0), 5_400_000);
        assert!(p.planned_refresh(Mode::Legacy, 0, H2, 0.999_999) <= 6_120_000);
    }

    /// `n` evenly spaced draws in [0, 1).
    fn draws(n: u32) -> impl Iterator<Item = f64> {
        (0..n).map(move |i| f64::from(i) / f64::from(n))
    }

    #[test]
    fn stable_refreshes_spread_over_the_window_but_its_margin_and_its_last_fifth() {
        let p = policy();
        let window = 300_000;
        let earliest = p.planned_refresh(Mode::Stable, 0, H2, 0.0);
        let latest = p.planned_refresh(Mode::Stable, 0, H2, 0.999_999);
        assert_eq!(earliest, H2 - window + 5_000, "5 s into the window");
        assert!(
            (H2 - window / 5 - 1..=H2 - window / 5).contains(&latest),
            "{latest}: the last 60 s are kept for retries"
        );
        // Uniform in between: the mean is halfway.
        let mean = draws(1000)
            .map(|d| p.planned_refresh(Mode::Stable, 0, H2, d) as f64)
            .sum::<f64>()
            / 1000.0;
        assert!(
            (mean - (earliest + latest) as f64 / 2.0).abs() < 200.0,
            "{mean}"
        );
    }

    #[test]
    fn stable_refreshes_are_never_before_the_window_nor_in_its_last_fifth_for_any_window_or_jitter()
    {
        for (window_s, jitter, life) in [
            (300, 0.05, H2),
            (300, 0.0, H2),
            (300, 0.49, H2),
            (30, 0.05, H2),
            (3_600, 0.01, H2),
            (300, 0.05, 200_000),
            (300, 0.05, 1_000),
        ] {
            let p = Policy::new(RefreshConfig {
                stable_window: Duration::from_secs(window_s),
                jitter,
                ..RefreshConfig::default()
            });
            let window = (window_s as i64 * 1000).min(life);
            for d in draws(200).chain([0.999_999]) {
                let fetched = 1_000_000;
                let at = p.planned_refresh(Mode::Stable, fetched, fetched + life, d);
                let case =
                    format!("window {window_s} s, jitter {jitter}, life {life} ms, draw {d}");
                assert!(
                    at >= fetched + life - window,
                    "{case}: {at} before the window"
                );
                assert!(
                    at <= fetched + life - window / 5,
                    "{case}: {at} in the last fifth"
                );
            }
        }
        // No jitter: at the start of the window (after its margin).
        let p = Policy::new(RefreshConfig {
            jitter: 0.0,
            ..RefreshConfig::default()
        });
        assert_eq!(p.planned_refresh(Mode::Stable, 0, H2, 0.9), H2 - 295_000);
    }

    #[test]
    fn legacy_refreshes_average_legacy_at_and_never_come_after_expiry() {
        for (at, jitter) in [(0.8, 0.05), (0.8, 0.0), (0.9, 0.09), (0.5, 0.3)] {
            let p = Policy::new(RefreshConfig {
                legacy_at: at,
                jitter,
                ..RefreshConfig::default()
            });
            let planned: Vec<i64> = draws(1000)
                .chain([0.999_999])
                .map(|d| p.planned_refresh(Mode::Legacy, 0, H2, d))
                .collect();
            let mean = planned.iter().sum::<i64>() as f64 / planned.len() as f64;
            assert!(
                (mean / H2 as f64 - at).abs() < 0.001,
                "legacy_at {at}, jitter {jitter}: mean {}",
                mean / H2 as f64
            );
            let lo = ((at - jitter) * H2 as f64) as i64;
            let hi = ((at + jitter) * H2 as f64) as i64;
            for t in planned {
                assert!((lo..=hi).contains(&t) && t < H2, "{t} outside [{lo}, {hi}]");
            }
        }
    }

    #[test]
    fn a_short_life_never_plans_past_expiry() {
        let p = policy();
        for mode in [Mode::Stable, Mode::Legacy] {
            let at = p.planned_refresh(mode, 1_000, 61_000, 0.99);
            assert!((1_000..=61_000).contains(&at), "{mode}: {at}");
        }
    }

    #[test]
    fn absurd_times_never_panic_or_wrap() {
        let p = policy();
        for mode in [Mode::Stable, Mode::Legacy] {
            for (fetched, expires) in [
                (1_000, i64::MAX),
                (1_000, i64::MIN),
                (i64::MAX - 5, i64::MAX),
                (5_000, 1_000),
            ] {
                let at = p.planned_refresh(mode, fetched, expires, 0.7);
                assert!(at >= fetched, "{mode}: {at} before {fetched}");
                let serve = p.serve_until(mode, expires, at);
                assert!(serve <= expires.max(fetched), "{mode}: {serve}");
            }
        }
        let quota = Decision::NotBefore {
            unix: i64::MAX,
            cause: crate::wechat::WaitCause::DailyQuota,
        };
        assert!(p.retry_delay(&quota, 0, 0, 0.5) > Duration::from_secs(1));
    }

    #[test]
    fn a_legacy_token_fetched_inside_the_late_window_is_capped_and_replaced_after_it() {
        let p = policy();
        let started = 1_000_000;
        let late = p.late_after(None, started, true, true);
        assert_eq!(late, Some(started + 10_000));
        assert_eq!(p.late_after(None, started, true, false), None);
        assert_eq!(p.late_after(None, started, false, true), None);
        // The retry's token, fetched 2 s later.
        let fetched = started + 2_000;
        let (at, serve) = p.guard_late(
            Mode::Legacy,
            fetched,
            fetched + 5_760_000,
            fetched + 6_060_000,
            late,
        );
        assert_eq!(at, started + 10_000, "refetched when the window closes");
        assert_eq!(
            serve,
            fetched + 300_000,
            "served at most one grace past its fetch"
        );
        // The token held before the attempt: at most one grace past the attempt.
        let older = started - 60_000;
        let (_, serve) = p.guard_late(
            Mode::Legacy,
            older,
            older + 5_760_000,
            older + 6_060_000,
            late,
        );
        assert_eq!(serve, started + 300_000);
        // A token fetched after the window is not touched.
        let after = started + 10_000;
        assert_eq!(
            p.guard_late(Mode::Legacy, after, after + 5, after + 6, late),
            (after + 5, after + 6)
        );
        assert!(Policy::clear_of_late(after, late));
        assert!(!Policy::clear_of_late(fetched, late));
    }

    #[test]
    fn stale_reports_spend_only_their_share_of_forces_spaced_out() {
        let now = 1_796_000_000_000;
        // Admins may force while 19 were made today, at least 30 s apart.
        let forces: Vec<i64> = (0..19).map(|i| now - 3_600_000 + i * 60_000).collect();
        assert!(force_budget(&forces, None, false, now).is_ok());
        assert!(
            force_budget(&forces[..15], None, true, now).is_err(),
            "15 spent"
        );
        assert!(force_budget(&forces[..14], None, true, now).is_ok());
        // A stale-report force waits 10 minutes after the previous one.
        let wait = force_budget(&forces[..3], Some(now - 60_000), true, now).unwrap_err();
        assert_eq!(wait, Duration::from_secs(540));
        // Every force waits 30 s after the last one.
        assert_eq!(
            force_budget(&[now - 10_000], None, false, now).unwrap_err(),
            Duration::from_secs(20)
        );
        // Forces of earlier days do not count.
        let yesterday: Vec<i64> = (0..20).map(|i| now - 86_400_000 - i).collect();
        assert!(force_budget(&yesterday, None, true, now).is_ok());
    }

    #[test]
    fn legacy_stale_fetches_are_spaced_and_capped_per_day() {
        let now = 1_796_000_000_000;
        assert!(stale_fetch_budget(None, 0, now).is_ok());
        assert_eq!(
            stale_fetch_budget(Some(now - 29_000), 5, now).unwrap_err(),
            Duration::from_secs(1)
        );
        let wait = stale_fetch_budget(None, STALE_FETCH_CALL_CEILING, now).unwrap_err();
        assert!(wait > Duration::from_secs(1) && wait <= Duration::from_secs(86_400));
    }

    #[test]
    fn legacy_tokens_are_served_until_refresh_plus_grace() {
        let p = policy();
        assert_eq!(p.serve_until(Mode::Legacy, H2, 5_760_000), 6_060_000);
        assert_eq!(p.serve_until(Mode::Legacy, H2, 7_100_000), H2);
        assert_eq!(p.serve_until(Mode::Stable, H2, 5_760_000), H2);
    }

    #[test]
    fn backoff_grows_then_caps_and_config_errors_wait_long() {
        let p = policy();
        let retry = Decision::Retry;
        assert_eq!(p.retry_delay(&retry, 0, 0, 0.999_999).as_secs(), 0);
        assert_eq!(
            p.retry_delay(&retry, 3, 0, 0.999_999),
            Duration::from_millis(7_999)
        );
        assert!(p.retry_delay(&retry, 40, 0, 0.999_999) <= Duration::from_secs(300));
        assert!(p.retry_delay(&retry, 5, 0, 0.0) >= Duration::from_millis(100));
        let config = Decision::ConfigError {
            retry_after: Duration::from_secs(300),
        };
        assert!(p.retry_delay(&config, 0, 0, 0.0) >= Duration::from_secs(300));
        let quota = Decision::NotBefore {
            unix: 1_000,
            cause: crate::wechat::WaitCause::DailyQuota,
        };
        assert!(p.retry_delay(&quota, 0, 400_000, 0.0) >= Duration::from_secs(600));
    }

    #[test]
    fn quotas_are_read_hourly_after_refreshes_and_at_once_on_a_spent_quota() {
        use QuotaTrigger::{Refreshed, Spent};
        let mut reads = QuotaReads::default();
        assert!(reads.due(0, Refreshed, true) && reads.due(0, Spent, true));
        // No spare upstream slot: a refresh does not read, a spent quota does.
        assert!(!reads.due(0, Refreshed, false));
        assert!(reads.due(0, Spent, false));
        reads.read(1_000, Refreshed);
        assert!(!reads.due(1_000 + QUOTA_READ_EVERY_MS - 1, Refreshed, true));
        assert!(reads.due(1_000 + QUOTA_READ_EVERY_MS, Refreshed, true));
        // A spent quota reads again even right after a normal reading...
        assert!(reads.due(2_000, Spent, true));
        reads.read(2_000, Spent);
        // ... but not once more within a minute, and it counts as a reading.
        assert!(!reads.due(2_000 + QUOTA_READ_AFTER_SPENT_MS - 1, Spent, true));
        assert!(reads.due(2_000 + QUOTA_READ_AFTER_SPENT_MS, Spent, true));
        assert!(!reads.due(2_000 + QUOTA_READ_EVERY_MS - 1, Refreshed, true));
        // A clock that went back reads nothing early.
        assert!(!reads.due(0, Spent, true));
    }

    #[test]
    fn each_endpoint_reads_the_quota_of_the_token_apis_it_uses() {
        let wecom = Endpoint::Wecom {
            corpid: "ww1234567890abcdef".into(),
        };
        assert_eq!(
            quota_apis(&Endpoint::Legacy, &Endpoint::Legacy),
            [ApiName::Token]
        );
        assert_eq!(
            quota_apis(&Endpoint::Stable, &Endpoint::Stable),
            [ApiName::StableToken]
        );
        assert_eq!(
            quota_apis(&Endpoint::Stable, &Endpoint::Legacy),
            [ApiName::Token, ApiName::StableToken]
        );
        assert!(quota_apis(&wecom, &wecom).is_empty());
        assert_eq!(
            quota_apis(&Endpoint::Component, &Endpoint::Component),
            [ApiName::ComponentToken, ApiName::AuthorizerToken]
        );
        let authorizer = Endpoint::Authorizer {
            component: crate::domain::AppId::parse("wx1111111111111111").expect("an appid"),
        };
        assert!(quota_apis(&authorizer, &authorizer).is_empty());
    }

    #[test]
    fn only_a_spent_legacy_quota_of_an_account_that_allows_it_falls_back() {
        let spent = |api| UpstreamError::Api {
            api,
            errcode: 45009,
            errmsg: "reach max api daily quota limit".into(),
        };
        // 2026-12-06 12:00 UTC is 20:00 China time; the quota day ends at
        // 16:00 UTC.
        let now_ms = 1_796_558_400_000;
        let midnight_ms = 1_796_572_800_000;
        assert_eq!(
            stable_fallback(&Endpoint::Legacy, true, &spent(ApiName::Token), now_ms),
            Some(midnight_ms)
        );
        assert_eq!(
            stable_fallback(&Endpoint::Legacy, false, &spent(ApiName::Token), now_ms),
            None
        );
        assert_eq!(
            stable_fallback(
                &Endpoint::Stable,
                true,
                &spent(ApiName::StableToken),
                now_ms
            ),
            None
        );
        let minute = UpstreamError::Api {
            api: ApiName::Token,
            errcode: 45011,
            errmsg: "api minute-quota reach limit".into(),
        };
        assert_eq!(
            stable_fallback(&Endpoint::Legacy, true, &minute, now_ms),
            None
        );
        let timeout = UpstreamError::Timeout {
            api: ApiName::Token,
            base_url: "http://127.0.0.1:1".into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(
            stable_fallback(&Endpoint::Legacy, true, &timeout, now_ms),
            None
        );
    }
}
