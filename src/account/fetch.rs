//! The refresh and ticket tasks of an account actor, and their single flight.
//!
//! Owns: building the [`Ask`] for the account's [`crate::wechat::Endpoint`], the
//! write-ahead intent, the stable compare-and-refresh retry with a force, the
//! durable-before-served publication of a new token, and `spawn_shared`,
//! which runs a task off the actor, catches its panics and shares its result
//! with every caller.
//!
//! Invariants: at most one refresh (and one fetch per ticket kind) is in
//! flight per account; a token is stored and published into the slot before
//! any caller receives it; a ticket is never served past its token.

use std::sync::Arc;

use actix::prelude::*;
use futures::FutureExt;
use futures::future::{LocalBoxFuture, Shared};

use crate::clock::add_ms;
use crate::domain::TicketKind;
use crate::metrics::Metrics;
use crate::replica::{Ask, SourceError, Sourced};
use crate::snapshot::{State, TicketRecord, TokenRecord};
use crate::store::StoredAccount;
use crate::wechat::FetchRequest;

use super::AccountActor;
use super::messages::{Finished, Reason, RefreshError, TicketFinished};
use super::persist::stored_token;
use super::plan::{self, FORCE_MIN_INTERVAL};

/// The shared result of the refresh in flight.
pub(super) type SharedRefresh =
    Shared<LocalBoxFuture<'static, Result<Arc<TokenRecord>, RefreshError>>>;
/// The shared result of a ticket fetch in flight.
pub(super) type SharedTicket =
    Shared<LocalBoxFuture<'static, Result<Arc<TicketRecord>, RefreshError>>>;

impl AccountActor {
    /// Starts a refresh (or returns the one in flight). `force`: ask a
    /// stable endpoint to rotate now.
    pub(super) fn start_refresh(
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
        // A new quota day ends a fall back to stable_token.
        self.follow_stable_fallback(None);
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
        let mut mode = self.mode();
        let endpoint = self.endpoint.clone();
        let fallback_allowed = self.config.fallback_to_stable;
        // Open Platform accounts need inputs of the moment (a verify ticket,
        // the component's token, a refresh token); without them WeChat is
        // not called at all.
        let credential = self.open_credential();
        let open = credential.as_ref().ok().cloned().flatten();
        let component_token = open.as_ref().and_then(|o| o.component_token().cloned());
        let ask = Ask {
            request: FetchRequest {
                appid: self.config.appid.clone(),
                secret: self.config.secret.clone(),
                force_refresh: force && endpoint.can_force(),
                endpoint: endpoint.clone(),
                open,
            },
            known: self.slot.token().map(|t| t.token.clone()),
        };
        let stale_retry = reason == Reason::StaleReport && endpoint.can_force() && !force;
        let force_allowed = self.force_budget(true).is_ok();
        let may_rotate = credential.is_ok()
            && (endpoint.rotates_on_fetch() || ask.request.force_refresh || stale_retry);
        let started = self.now_ms();
        if may_rotate {
            self.update_status(|s| s.pending_fetch_ms = Some(started));
        }
        let late_before = self.slot.status().late_until_ms;
        let base = self.stored();
        let on_panic = {
            let policy = self.deps.policy.clone();
            let component_token = component_token.clone();
            move |detail: String| Finished {
                component_token,
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
                stable_fallback_until_ms: None,
            }
        };
        let task = async move {
            if let Err(err) = credential {
                return Finished {
                    generation,
                    reason,
                    calls: 0,
                    forced: false,
                    same_token: false,
                    result: Err(err),
                    started_ms: started,
                    may_rotate: false,
                    outcome_unknown: false,
                    late_until_ms: late_before,
                    component_token: None,
                    stable_fallback_until_ms: None,
                };
            }
            let mut calls = 1;
            let mut forced = ask.request.force_refresh;
            if may_rotate {
                // Write-ahead: if we crash after WeChat rotated, the restart
                // knows the old token may die `grace` after `started`. A failed
                // write is logged and counted by the writer; fetching anyway
                // keeps the account alive.
                let _ = deps.store.put(base.clone()).await;
            }
            // When each fetch was asked for: with its wait for an upstream
            // slot, when its request was sent.
            let mut asked = deps.clock.now_unix_ms();
            let mut result = deps.upstream.fetch(ask.clone()).await;
            if !reached_wechat(&result) {
                calls -= 1;
            }
            // A spent legacy quota: ask stable_token (a separate quota) at
            // once, when the account allows it.
            let mut stable_fallback_until_ms = None;
            if let Err(SourceError::Upstream(e)) = &result
                && let Some(until) =
                    plan::stable_fallback(&endpoint, fallback_allowed, e, deps.clock.now_unix_ms())
            {
                stable_fallback_until_ms = Some(until);
                mode = crate::domain::Mode::Stable;
                let mut stable = ask.clone();
                stable.request.endpoint = crate::wechat::Endpoint::Stable;
                stable.request.force_refresh = false;
                calls += 1;
                asked = deps.clock.now_unix_ms();
                result = deps.upstream.fetch(stable).await;
                if !reached_wechat(&result) {
                    calls -= 1;
                }
            }
            // Stable compare-and-refresh: the normal call may already bring the
            // newer token; force a rotation only if WeChat returned the reported one.
            // Compared with the reported token, not the slot's: a token adopted
            // from another replica meanwhile must not make WeChat's unchanged
            // answer look new.
            if stale_retry {
                let same = matches!((&result, &ask.known), (Ok(s), Some(k)) if s.token() == k);
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
                    let mut again = ask.clone();
                    again.request.force_refresh = true;
                    asked = deps.clock.now_unix_ms();
                    result = deps.upstream.fetch(again).await;
                    if !reached_wechat(&result) {
                        calls -= 1;
                        forced = false;
                    }
                }
            }
            let mut same_token = false;
            let outcome_unknown = may_rotate
                && match &result {
                    Ok(Sourced::Fetched(grant)) => grant.after_unknown,
                    Ok(Sourced::Shared(_)) => false,
                    Err(SourceError::Upstream(e)) => e.outcome_unknown(),
                    Err(SourceError::Coordination(_)) => false,
                };
            // A fetched token's life (and the late window of an earlier
            // attempt of its call) counts from when the request was sent.
            let sent = match &result {
                Ok(Sourced::Fetched(grant)) => add_ms(asked, grant.waited),
                _ => started,
            };
            let late = deps
                .policy
                .late_after(late_before, sent, may_rotate, outcome_unknown);
            let result = match result {
                Ok(sourced) => {
                    let granted_at = deps.clock.now_unix_ms();
                    let (token, origin, expires, refresh_token) = match sourced {
                        Sourced::Fetched(grant) => (
                            grant.access_token,
                            None,
                            add_ms(sent, grant.expires_in),
                            grant.refresh_token,
                        ),
                        Sourced::Shared(origin) => {
                            let expires = origin.expires_at_ms;
                            (
                                origin.token,
                                Some(origin.fetched_at_ms),
                                expires,
                                origin.refresh_token,
                            )
                        }
                    };
                    // An authorizer's new refresh token (or its first, from
                    // a code) is stored with the token, before it is served.
                    // Read now, not at the start: a verify ticket or a code may
                    // have arrived while the call was in flight.
                    let current_open = slot.open();
                    let open = super::open::after_grant(
                        current_open.as_deref(),
                        &ask.request,
                        refresh_token,
                        origin.unwrap_or(granted_at),
                    );
                    let previous = slot.token();
                    same_token = previous.as_ref().is_some_and(|p| p.token == token);
                    let fetched_at = match (&previous, origin) {
                        (Some(p), _) if same_token => p.fetched_at_ms,
                        (_, Some(origin_fetched)) => origin_fetched,
                        _ => sent,
                    };
                    let serve_until = plan::serve_new_token(
                        &deps.policy,
                        mode,
                        fetched_at,
                        expires,
                        late,
                        plan::draw(),
                    );
                    let record = Arc::new(TokenRecord {
                        token,
                        mode,
                        fetched_at_ms: fetched_at,
                        expires_at_ms: expires,
                        serve_until_ms: serve_until,
                        json: Default::default(),
                    });
                    // Durable before served: a crash after this point cannot
                    // lose a token that clients already hold.
                    let durable = StoredAccount {
                        token: Some(stored_token(&record)),
                        pending_fetch_ms: None,
                        open: open.clone().or_else(|| current_open.map(|o| (*o).clone())),
                        ..base
                    };
                    if let Some(open) = open {
                        slot.publish_open(Arc::new(open));
                    }
                    let _ = deps.store.put(durable).await;
                    slot.publish(record.clone());
                    Ok(record)
                }
                Err(SourceError::Upstream(e)) => {
                    Err(RefreshError::upstream(e, deps.clock.now_unix_ms()))
                }
                Err(SourceError::Coordination(c)) => Err(RefreshError::Coordination(c)),
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
                component_token,
                stable_fallback_until_ms,
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
    pub(super) fn start_ticket(
        &mut self,
        ctx: &mut Context<Self>,
        kind: TicketKind,
    ) -> SharedTicket {
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
                Err(e) => Err(RefreshError::upstream(e, deps.clock.now_unix_ms())),
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
}

impl Finished {
    /// The end of a stable compare-and-refresh whose force the budget refused.
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
            component_token: None,
            stable_fallback_until_ms: None,
        }
    }
}

/// False when a fetch answered without calling WeChat: a token another
/// replica fetched, or no lock to call with.
fn reached_wechat(result: &Result<Sourced, SourceError>) -> bool {
    !matches!(
        result,
        Ok(Sourced::Shared(_)) | Err(SourceError::Coordination(_))
    )
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
