//! The registry's Open Platform side: routing what a component's event URL
//! receives to the component or authorizer it is for, starting an
//! authorizer's actor when it first authorizes (or is imported, or found by
//! a reconcile), and the reconcile itself: paging through
//! `api_get_authorizer_list` to add missing authorizers and repair refresh
//! tokens, also run once when an authorizer's refresh token is refused (61023).
//!
//! Invariants: an update reaches only an authorizer of the component it came
//! from (never a configured account or another component's authorizer); an
//! authorizer is created only for a configured component; the reconcile never
//! replaces a refresh token with the one that was just refused.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

use crate::account::{
    Adopt, AdoptOpen, OpenNotice, OpenUpdate, Reason, Refresh, RefreshError, Seed, seeded_slot,
};
use crate::config::{AccountKind, authorizer_account};
use crate::domain::{AccessToken, AppId};
use crate::replica::Adoption;
use crate::store::{StoredAccount, StoredOpen};
use crate::wechat::{AUTHORIZER_PAGE, OpenAnswer, OpenCall, TokenSource, UpstreamError};

use super::{Member, Registry};

/// A component whose newest verify ticket is older than this asks WeChat to
/// resume pushing (`api_start_push_ticket`): pushes come every 10 minutes.
pub const TICKET_PUSH_OVERDUE_MS: i64 = 20 * 60 * 1000;
/// At most one `api_start_push_ticket` per component this often.
const START_PUSH_EVERY_MS: i64 = 10 * 60 * 1000;

/// The most pages a reconcile reads (500 authorizers each): a bound against
/// an upstream that keeps announcing more.
const MAX_PAGES: u32 = 2_000;

/// Route an Open Platform update of `component` to `appid` (the component
/// itself for a verify ticket, else one of its authorizers, created when
/// it authorizes or is imported). Answered once the update is durable.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), RefreshError>")]
pub struct RouteOpen {
    pub component: AppId,
    pub appid: AppId,
    pub update: OpenUpdate,
}

/// Page through `api_get_authorizer_list` of `component`: add the
/// authorizers this server does not know, repair refresh tokens that differ.
#[derive(Debug, Message)]
#[rtype(result = "Result<ReconcileSummary, RefreshError>")]
pub struct Reconcile {
    pub component: AppId,
}

/// What a reconcile found and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileSummary {
    /// Authorizers WeChat listed (`total_count` of the first page).
    pub total_count: u32,
    /// Authorizers this server did not know, now added.
    pub added: Vec<AppId>,
    /// Authorizers whose refresh token was different, now replaced.
    pub repaired: Vec<AppId>,
    /// Listed authorizers already up to date.
    pub unchanged: usize,
}

/// Why a reconcile could not run.
fn upstream(error: UpstreamError, now_ms: i64) -> RefreshError {
    RefreshError::upstream(error, now_ms)
}

impl Registry {
    /// The Open Platform calls (`api_get_authorizer_list`, ...) go through
    /// `wechat` (the engine's limited source).
    pub fn with_open_calls(mut self, wechat: Arc<dyn TokenSource>) -> Self {
        self.wechat = Some(wechat);
        self
    }

    /// True when `component` is a configured component of this registry.
    fn is_component(&self, component: &AppId) -> bool {
        self.members
            .get(component)
            .is_some_and(|m| m.config.kind == AccountKind::Component)
    }

    /// Starts the actor of authorizer `appid` of `component` from `stored`
    /// (a restart) or empty (a new authorization).
    pub(super) fn add_authorizer(
        &mut self,
        component: &AppId,
        appid: &AppId,
        stored: Option<StoredAccount>,
    ) {
        self.start_authorizer(component, appid, stored);
        self.publish();
    }

    /// [`Self::add_authorizer`] without publishing the directory (the caller
    /// publishes once for many: a restart, a reconcile).
    fn start_authorizer(
        &mut self,
        component: &AppId,
        appid: &AppId,
        stored: Option<StoredAccount>,
    ) {
        let enabled = self
            .members
            .get(component)
            .is_some_and(|m| m.config.enabled);
        let config = Arc::new(authorizer_account(component, enabled, appid.clone()));
        let seed = stored.map_or(Seed::Empty, Seed::Stored);
        let slot = seeded_slot(
            &config,
            seed,
            self.deps.policy.grace,
            self.directory.issued(),
        );
        let (addr, incarnation) = self.spawn(&config, &slot);
        self.members.insert(
            appid.clone(),
            Member {
                config,
                slot,
                addr,
                incarnation,
            },
        );
    }

    /// Starts the authorizers the store holds for the configured components
    /// (the caller publishes the directory once).
    pub(super) fn restore_authorizers(&mut self) {
        let found: Vec<(AppId, AppId)> = self
            .restored
            .values()
            .filter_map(|s| {
                let component = s.open.as_ref()?.component.clone()?;
                Some((component, s.appid.clone()))
            })
            .filter(|(component, appid)| {
                self.is_component(component) && !self.members.contains_key(appid)
            })
            .collect();
        for (component, appid) in found {
            let stored = self.restored.remove(&appid);
            self.start_authorizer(&component, &appid, stored);
        }
    }

    /// Asks WeChat to resume pushing verify tickets for every component whose
    /// newest ticket is overdue (or that has none TICKET_PUSH_OVERDUE_MS after
    /// this registry started it), at most once per [`START_PUSH_EVERY_MS`].
    pub(super) fn check_ticket_pushes(&mut self) {
        let Some(wechat) = self.wechat.clone() else {
            return;
        };
        let now = self.deps.clock.now_unix_ms();
        let overdue: Vec<(AppId, secrecy::SecretString)> = self
            .component_ids
            .iter()
            .filter_map(|id| self.members.get(id).map(|m| (id, m)))
            .filter(|(_, m)| m.config.kind == AccountKind::Component && m.config.enabled)
            .filter(|(id, m)| {
                let newest = m
                    .slot
                    .open()
                    .and_then(|o| o.verify_tickets.iter().map(|t| t.received_at_ms).max());
                let since = newest.unwrap_or(self.started_ms);
                let asked = self.push_asked.get(*id).copied();
                now - since > TICKET_PUSH_OVERDUE_MS
                    && asked.is_none_or(|at| now - at > START_PUSH_EVERY_MS)
            })
            .map(|(id, m)| (id.clone(), m.config.secret.clone()))
            .collect();
        for (component, secret) in overdue {
            self.push_asked.insert(component.clone(), now);
            let wechat = wechat.clone();
            actix::spawn(async move {
                let call = OpenCall::StartPushTicket {
                    component: component.clone(),
                    secret,
                };
                match wechat.open_call(call).await {
                    Ok(_) => {
                        tracing::warn!(component = %component, "no verify ticket for 20 minutes: asked WeChat to resume pushing (api_start_push_ticket)")
                    }
                    Err(e) => {
                        tracing::warn!(component = %component, error = %e, "no verify ticket for 20 minutes, and api_start_push_ticket failed; check the event URL set on the platform")
                    }
                }
            });
        }
    }

    /// The authorizer `appid` of `component`, if this registry has it.
    fn authorizer_of(&self, component: &AppId, appid: &AppId) -> Option<&Member> {
        self.members
            .get(appid)
            .filter(|m| m.config.kind.component() == Some(component))
    }
}

impl Handler<Adoption> for Registry {
    type Result = ();

    /// What the replica follower found in the shared store: routed to the
    /// account's actor; an authorizer another replica added starts here too
    /// (from what the store holds, so with its token: no call to WeChat).
    fn handle(&mut self, found: Adoption, _: &mut Self::Context) {
        match found {
            Adoption::Token(appid, token) => {
                if let Some(member) = self.members.get(&appid) {
                    member.addr.do_send(Adopt(token));
                }
            }
            Adoption::Open(appid, open) => {
                if let Some(member) = self.members.get(&appid) {
                    member.addr.do_send(AdoptOpen(open));
                }
            }
            Adoption::Discovered(stored) => {
                let appid = stored.appid.clone();
                if let Some(member) = self.members.get(&appid) {
                    if let Some(open) = stored.open {
                        member.addr.do_send(AdoptOpen(open));
                    }
                    return;
                }
                let Some(component) = stored.open.as_ref().and_then(|o| o.component.clone()) else {
                    return;
                };
                if !self.is_component(&component) {
                    return;
                }
                tracing::info!(component = %component, authorizer = %appid, "an authorizer another replica added: starting it from the shared store");
                self.add_authorizer(&component, &appid, Some(stored));
            }
        }
    }
}

impl Handler<RouteOpen> for Registry {
    type Result = ResponseFuture<Result<(), RefreshError>>;

    fn handle(&mut self, msg: RouteOpen, _: &mut Self::Context) -> Self::Result {
        if !self.is_component(&msg.component) {
            return Box::pin(async { Err(RefreshError::UnknownAccount) });
        }
        if let OpenUpdate::Ticket { .. } = msg.update {
            if msg.appid != msg.component {
                return Box::pin(async { Err(RefreshError::WrongKind("component")) });
            }
            return self.forward(&msg.appid, msg.update);
        }
        match self.members.get(&msg.appid) {
            Some(_) if self.authorizer_of(&msg.component, &msg.appid).is_none() => {
                // A configured account or another component's authorizer.
                return Box::pin(async { Err(RefreshError::WrongKind("authorizer")) });
            }
            Some(_) => {}
            None => match msg.update {
                OpenUpdate::Code { .. } | OpenUpdate::RefreshToken(_) => {
                    self.add_authorizer(&msg.component, &msg.appid, None);
                }
                // Nothing to revoke or fail for an authorizer never seen.
                _ => return Box::pin(async { Ok(()) }),
            },
        }
        self.forward(&msg.appid, msg.update)
    }
}

impl Handler<OpenNotice> for Registry {
    type Result = ();

    fn handle(&mut self, msg: OpenNotice, ctx: &mut Self::Context) {
        match msg {
            OpenNotice::ComponentStale { component, token } => {
                if let Some(member) = self.members.get(&component) {
                    let refresh = member.addr.send(Refresh {
                        reason: Reason::StaleReport,
                        stale: Some(token),
                        client: None,
                    });
                    actix::spawn(async move {
                        let _ = refresh.await;
                    });
                }
            }
            OpenNotice::Recover {
                component,
                authorizer,
            } => {
                let refused = self
                    .members
                    .get(&authorizer)
                    .and_then(|m| m.slot.open())
                    .and_then(|o| o.refresh_token.clone());
                let me = ctx.address();
                let list = self.list_authorizers(&component);
                actix::spawn(async move {
                    let found = match list.await {
                        Ok(list) => list,
                        Err(e) => {
                            tracing::warn!(component = %component, authorizer = %authorizer, error = %e, "could not recover a refresh token: the authorizer list is unavailable");
                            Vec::new()
                        }
                    };
                    let repaired = found
                        .iter()
                        .find(|(appid, _)| appid == &authorizer)
                        .map(|(_, token)| token.clone())
                        .filter(|token| Some(token) != refused.as_ref());
                    let update = match repaired {
                        Some(token) => {
                            tracing::info!(component = %component, authorizer = %authorizer, "refresh token recovered from the authorizer list");
                            OpenUpdate::RefreshToken(token)
                        }
                        None => {
                            tracing::warn!(component = %component, authorizer = %authorizer, "no usable refresh token in the authorizer list: the merchant must authorize again");
                            OpenUpdate::RecoveryFailed
                        }
                    };
                    let _ = me
                        .send(RouteOpen {
                            component,
                            appid: authorizer,
                            update,
                        })
                        .await;
                });
            }
        }
    }
}

impl Registry {
    /// Every authorizer of `component` with its refresh token, page by page
    /// (500 a page), with the component's current token.
    fn list_authorizers(
        &self,
        component: &AppId,
    ) -> impl Future<Output = Result<Vec<(AppId, AccessToken)>, RefreshError>> + 'static {
        let now = self.deps.clock.now_unix_ms();
        let token = self
            .members
            .get(component)
            .filter(|m| m.config.kind == AccountKind::Component)
            .and_then(|m| m.slot.token())
            .filter(|t| t.usable_secs(now).is_some())
            .map(|t| t.token.clone());
        let wechat = self.wechat.clone();
        let component = component.clone();
        let clock = self.deps.clock.clone();
        async move {
            let token = token.ok_or(RefreshError::ComponentUnavailable)?;
            let wechat = wechat.ok_or(RefreshError::Unavailable)?;
            let mut out = Vec::new();
            let mut offset = 0u32;
            for _ in 0..MAX_PAGES {
                let call = OpenCall::AuthorizerList {
                    component: component.clone(),
                    component_token: token.clone(),
                    offset,
                    count: AUTHORIZER_PAGE,
                };
                match wechat.open_call(call).await {
                    Ok(OpenAnswer::AuthorizerList {
                        total_count,
                        authorizers,
                    }) => {
                        let got = authorizers.len() as u32;
                        out.extend(authorizers);
                        offset = offset.saturating_add(AUTHORIZER_PAGE);
                        if got == 0 || offset >= total_count {
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(e) => return Err(upstream(e, clock.now_unix_ms())),
                }
            }
            Ok(out)
        }
    }
}

impl Handler<Reconcile> for Registry {
    type Result = ResponseActFuture<Self, Result<ReconcileSummary, RefreshError>>;

    fn handle(&mut self, msg: Reconcile, _: &mut Self::Context) -> Self::Result {
        let component = msg.component;
        if !self.is_component(&component) {
            return Box::pin(actix::fut::ready(Err(RefreshError::UnknownAccount)));
        }
        let list = self.list_authorizers(&component);
        Box::pin(list.into_actor(self).then(move |found, act, _| {
            let result = found.map(|found| act.apply_list(&component, found));
            let (summary, updates) = match result {
                Ok((summary, updates)) => (Ok(summary), updates),
                Err(e) => (Err(e), Vec::new()),
            };
            async move {
                for update in updates {
                    let _ = update.await;
                }
                summary
            }
            .into_actor(act)
        }))
    }
}

/// An update sent to an account actor, answered once durable.
type Pending = Pin<Box<dyn Future<Output = Result<(), RefreshError>>>>;

impl Registry {
    /// Adds the listed authorizers this registry lacks and repairs the
    /// refresh tokens that differ; the updates are awaited by the caller.
    fn apply_list(
        &mut self,
        component: &AppId,
        found: Vec<(AppId, AccessToken)>,
    ) -> (ReconcileSummary, Vec<Pending>) {
        let mut summary = ReconcileSummary {
            total_count: found.len() as u32,
            ..ReconcileSummary::default()
        };
        let mut updates: Vec<Pending> = Vec::new();
        let mut seen: HashMap<AppId, ()> = HashMap::new();
        for (appid, token) in found {
            if seen.insert(appid.clone(), ()).is_some() {
                continue;
            }
            let (existed, current): (bool, Option<Arc<StoredOpen>>) = match self.members.get(&appid)
            {
                Some(m) if m.config.kind.component() == Some(component) => (true, m.slot.open()),
                // A configured account or another component's: left alone.
                Some(_) => continue,
                None => {
                    self.start_authorizer(component, &appid, None);
                    summary.added.push(appid.clone());
                    (false, None)
                }
            };
            let same = current
                .as_ref()
                .and_then(|o| o.refresh_token.as_ref())
                .is_some_and(|t| t == &token);
            if same {
                summary.unchanged += 1;
                continue;
            }
            if existed {
                summary.repaired.push(appid.clone());
            }
            updates.push(self.forward(&appid, OpenUpdate::RefreshToken(token)));
        }
        if !summary.added.is_empty() {
            self.publish();
        }
        summary.added.sort();
        summary.repaired.sort();
        (summary, updates)
    }
}

/// Ask WeChat for a pre-auth code of `component` (the consent link's code).
#[derive(Debug, Message)]
#[rtype(result = "Result<(AccessToken, std::time::Duration), RefreshError>")]
pub struct PreAuthCode {
    pub component: AppId,
}

impl Handler<PreAuthCode> for Registry {
    type Result = ResponseFuture<Result<(AccessToken, std::time::Duration), RefreshError>>;

    fn handle(&mut self, msg: PreAuthCode, _: &mut Self::Context) -> Self::Result {
        let now = self.deps.clock.now_unix_ms();
        let token = self
            .members
            .get(&msg.component)
            .filter(|m| m.config.kind == AccountKind::Component)
            .map(|m| {
                m.slot
                    .token()
                    .filter(|t| t.usable_secs(now).is_some())
                    .map(|t| t.token.clone())
            });
        let wechat = self.wechat.clone();
        let clock = self.deps.clock.clone();
        Box::pin(async move {
            let token = token
                .ok_or(RefreshError::UnknownAccount)?
                .ok_or(RefreshError::ComponentUnavailable)?;
            let wechat = wechat.ok_or(RefreshError::Unavailable)?;
            let call = OpenCall::PreAuthCode {
                component: msg.component,
                component_token: token,
            };
            match wechat.open_call(call).await {
                Ok(OpenAnswer::PreAuthCode { code, expires_in }) => Ok((code, expires_in)),
                Ok(_) => Err(RefreshError::Internal {
                    detail: "api_create_preauthcode answered something else".to_string(),
                }),
                Err(e) => Err(upstream(e, clock.now_unix_ms())),
            }
        })
    }
}
