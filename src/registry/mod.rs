//! The registry actor: owns one account actor per appid, routes control
//! messages to them, supervises them, and publishes which slots exist in the
//! [`Directory`] that the HTTP read path loads from.
//!
//! Invariants:
//! - Every configured account has exactly one live actor; an actor that
//!   panicked or stopped is replaced within one watchdog tick
//!   ([`WATCHDOG_TICK`]) from its slot (its last token), without a fetch
//!   unless the token is gone.
//! - The registry never looks inside an account actor: it knows its address,
//!   its config and its slot, and never writes into a slot (account code
//!   seeds it: [`crate::account::seeded_slot`]).
//! - The directory changes only when accounts are added or removed; token
//!   updates go through the slots, so reads never contend with refreshes.

mod open;

pub use open::{PreAuthCode, Reconcile, ReconcileSummary, RouteOpen};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::account::{
    AccountActor, Adopt, Crash, Deps, Exited, Reason, Refresh, RefreshError, RefreshOutcome, Seed,
    Shutdown, TicketOutcome, TicketRefresh, seeded_slot,
};
use crate::config::AccountConfig;
use crate::domain::{AccessToken, AppId, TicketKind};
use crate::snapshot::{AccountSlot, Directory};
use crate::store::{StoredAccount, StoredToken};

/// How often the registry checks that every account actor is alive (the
/// fleet gauges are set by each scrape instead). Restarts normally happen at once, on the
/// [`Exited`] notice a dying actor sends; this tick is the backstop.
pub const WATCHDOG_TICK: Duration = Duration::from_secs(1);

/// Route a compare-and-refresh or admin refresh to the account's actor.
#[derive(Debug, Message)]
#[rtype(result = "Result<RefreshOutcome, RefreshError>")]
pub struct RouteRefresh {
    pub appid: AppId,
    pub reason: Reason,
    /// Set for compare-and-refresh, unset for a forced admin refresh.
    pub stale: Option<AccessToken>,
    /// The API client asking (see [`Refresh::client`]).
    pub client: Option<Arc<str>>,
}

/// Make the registry match this account list: start added accounts, stop
/// removed ones, restart changed ones alone, leave the rest untouched.
#[derive(Debug, Message)]
#[rtype(result = "ApplySummary")]
pub struct Apply(pub Vec<AccountConfig>);

/// What an [`Apply`] changed, by appid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplySummary {
    pub added: Vec<AppId>,
    pub removed: Vec<AppId>,
    pub changed: Vec<AppId>,
    pub unchanged: usize,
}

/// Route a ticket compare-and-refresh to the account's actor.
#[derive(Debug, Message)]
#[rtype(result = "Result<TicketOutcome, RefreshError>")]
pub struct RouteTicketRefresh {
    pub appid: AppId,
    pub kind: TicketKind,
    pub stale: Option<AccessToken>,
}

/// Hand a token fetched by another replica to the account's actor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RouteAdopt {
    pub appid: AppId,
    pub token: StoredToken,
}

/// Stop every account actor (shutdown).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopAll;

/// Make the actor of `appid` panic (tests of supervision only).
#[doc(hidden)]
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct CrashAccount(pub AppId);

struct Member {
    /// Shared with the member's actor: one copy of the config per account.
    config: Arc<AccountConfig>,
    slot: Arc<AccountSlot>,
    addr: Addr<AccountActor>,
    /// Which start of the actor `addr` is; an [`Exited`] notice for an
    /// older one is ignored.
    incarnation: u64,
}

/// The registry actor.
pub struct Registry {
    members: HashMap<AppId, Member>,
    directory: Directory,
    /// Shared by every account actor (one copy, not one per account).
    deps: Arc<Deps>,
    ready_logged: bool,
    stopping: bool,
    /// Counts actor starts; each start gets the next number.
    starts: u64,
    /// State read from the store at start, taken by each account's first slot.
    restored: HashMap<AppId, StoredAccount>,
    me: Option<Addr<Registry>>,
    /// Where the Open Platform calls that are not token fetches go.
    wechat: Option<Arc<dyn crate::wechat::TokenSource>>,
    /// When this registry started (Unix ms): a component without any
    /// verify ticket counts its wait from here.
    started_ms: i64,
    /// When each component last asked WeChat to resume ticket pushes.
    push_asked: HashMap<AppId, i64>,
    /// The configured components (as of the last [`Apply`]).
    component_ids: Vec<AppId>,
}

impl Registry {
    /// A registry publishing into `directory`; accounts arrive with [`Apply`].
    pub fn new(directory: Directory, deps: Deps) -> Self {
        Registry {
            members: HashMap::new(),
            directory,
            deps: Arc::new(deps),
            ready_logged: false,
            stopping: false,
            starts: 0,
            me: None,
            restored: HashMap::new(),
            wechat: None,
            started_ms: 0,
            push_asked: HashMap::new(),
            component_ids: Vec::new(),
        }
    }

    /// Accounts read from the store: an account configured with the same mode
    /// starts from its stored token and counters instead of fetching.
    pub fn with_restored(mut self, accounts: Vec<StoredAccount>) -> Self {
        self.restored = accounts.into_iter().map(|a| (a.appid.clone(), a)).collect();
        self
    }

    /// A fresh slot for `config`, seeded from the store when it holds this account.
    fn new_slot(&mut self, config: &AccountConfig) -> Arc<AccountSlot> {
        let seed = self
            .restored
            .remove(&config.appid)
            .map_or(Seed::Empty, Seed::Stored);
        seeded_slot(
            config,
            seed,
            self.deps.policy.grace,
            self.directory.issued(),
        )
    }

    /// Starts an account actor that reports its end to this registry.
    fn spawn(
        &mut self,
        config: &Arc<AccountConfig>,
        slot: &Arc<AccountSlot>,
    ) -> (Addr<AccountActor>, u64) {
        self.starts += 1;
        let incarnation = self.starts;
        let mut actor = AccountActor::new(config.clone(), slot.clone(), self.deps.clone());
        if let Some(me) = &self.me {
            actor = actor.supervised(me.clone().recipient(), incarnation);
        }
        (actor.start(), incarnation)
    }

    fn publish(&self) {
        let map = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.slot.clone()))
            .collect();
        self.directory.publish(map);
    }

    /// Replaces dead actors; logs once when every account is ready.
    fn watchdog(&mut self) {
        if self.stopping {
            return;
        }
        let dead: Vec<AppId> = self
            .members
            .iter()
            .filter(|(_, m)| !m.addr.connected())
            .map(|(id, _)| id.clone())
            .collect();
        for appid in dead {
            self.restart(&appid);
        }
        self.check_ticket_pushes();
        if !self.ready_logged && !self.members.is_empty() {
            let now = self.deps.clock.now_unix_ms();
            if self.directory.not_ready(now).is_empty() {
                self.ready_logged = true;
                tracing::info!(
                    accounts = self.members.len(),
                    "ready: every enabled account has a token"
                );
            }
        }
    }

    fn restart(&mut self, appid: &AppId) {
        if self.stopping {
            return;
        }
        let Some(member) = self.members.get(appid) else {
            return;
        };
        let (config, slot) = (member.config.clone(), member.slot.clone());
        tracing::warn!(appid = %appid, "account actor died; restarting it from its last token");
        slot.counters().restarted(&self.deps.metrics);
        let (addr, incarnation) = self.spawn(&config, &slot);
        if let Some(member) = self.members.get_mut(appid) {
            member.addr = addr;
            member.incarnation = incarnation;
        }
    }
}

/// True when two account configs would run the same actor.
fn same_account(a: &AccountConfig, b: &AccountConfig) -> bool {
    a.appid == b.appid
        && a.name == b.name
        && a.mode == b.mode
        && a.enabled == b.enabled
        && a.kind == b.kind
        && a.tickets == b.tickets
        && a.secret.expose_secret() == b.secret.expose_secret()
}

impl Registry {
    /// Sends `msg` to the actor of `appid` and answers its result: an
    /// unknown account is [`RefreshError::UnknownAccount`], an actor that
    /// died meanwhile [`RefreshError::Unavailable`].
    fn forward<M, T>(&self, appid: &AppId, msg: M) -> ResponseFuture<Result<T, RefreshError>>
    where
        M: Message<Result = Result<T, RefreshError>> + Send + 'static,
        AccountActor: Handler<M>,
        T: Send + 'static,
    {
        let Some(member) = self.members.get(appid) else {
            return Box::pin(async { Err(RefreshError::UnknownAccount) });
        };
        let request = member.addr.send(msg);
        Box::pin(async move { request.await.unwrap_or(Err(RefreshError::Unavailable)) })
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1 << 20);
        self.me = Some(ctx.address());
        Arc::make_mut(&mut self.deps).hub = Some(ctx.address().recipient());
        self.started_ms = self.deps.clock.now_unix_ms();
        ctx.run_interval(WATCHDOG_TICK, |act, _| act.watchdog());
    }
}

impl Handler<Apply> for Registry {
    type Result = MessageResult<Apply>;

    fn handle(&mut self, Apply(accounts): Apply, _: &mut Self::Context) -> Self::Result {
        let mut summary = ApplySummary::default();
        let wanted: HashMap<AppId, Arc<AccountConfig>> = accounts
            .into_iter()
            .map(|a| (a.appid.clone(), Arc::new(a)))
            .collect();
        // Authorizers are not in the file: they stay while their component does.
        let components: HashSet<&AppId> = wanted
            .values()
            .filter(|a| a.kind == crate::config::AccountKind::Component)
            .map(|a| &a.appid)
            .collect();
        let gone: Vec<AppId> = self
            .members
            .iter()
            .filter(|(id, m)| {
                !wanted.contains_key(*id)
                    && !m
                        .config
                        .kind
                        .component()
                        .is_some_and(|c| components.contains(c))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for appid in gone {
            if let Some(member) = self.members.remove(&appid) {
                member.addr.do_send(Shutdown { forget: true });
                // An authorizer's record holds its refresh token, which only
                // the merchant can give again: it is never deleted.
                if member.config.kind.component().is_none() {
                    self.deps.store.remove_later(appid.clone());
                }
                summary.removed.push(appid);
            }
        }
        let mut ids: Vec<&AppId> = wanted.keys().collect();
        ids.sort();
        for appid in ids {
            let config = &wanted[appid];
            match self.members.get(appid) {
                Some(member) if same_account(&member.config, config) => summary.unchanged += 1,
                Some(member) => {
                    member.addr.do_send(Shutdown { forget: false });
                    let seed = Seed::Carried {
                        token: member.slot.token(),
                        open: member.slot.open(),
                    };
                    let slot = seeded_slot(
                        config,
                        seed,
                        self.deps.policy.grace,
                        self.directory.issued(),
                    );
                    slot.counters().carry_from(member.slot.counters());
                    let (addr, incarnation) = self.spawn(config, &slot);
                    self.members.insert(
                        appid.clone(),
                        Member {
                            config: config.clone(),
                            slot,
                            addr,
                            incarnation,
                        },
                    );
                    summary.changed.push(appid.clone());
                }
                None => {
                    let slot = self.new_slot(config);
                    let (addr, incarnation) = self.spawn(config, &slot);
                    self.members.insert(
                        appid.clone(),
                        Member {
                            config: config.clone(),
                            slot,
                            addr,
                            incarnation,
                        },
                    );
                    summary.added.push(appid.clone());
                }
            }
        }
        self.component_ids = components.iter().map(|c| (*c).clone()).collect();
        self.restore_authorizers();
        self.publish();
        self.ready_logged = false;
        MessageResult(summary)
    }
}

impl Handler<RouteRefresh> for Registry {
    type Result = ResponseFuture<Result<RefreshOutcome, RefreshError>>;

    fn handle(&mut self, msg: RouteRefresh, _: &mut Self::Context) -> Self::Result {
        if self
            .members
            .get(&msg.appid)
            .is_some_and(|m| !m.addr.connected())
        {
            self.restart(&msg.appid);
        }
        let refresh = Refresh {
            reason: msg.reason,
            stale: msg.stale,
            client: msg.client,
        };
        self.forward(&msg.appid, refresh)
    }
}

impl Handler<Exited> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Exited, _: &mut Self::Context) {
        if self
            .members
            .get(&msg.appid)
            .is_some_and(|m| m.incarnation == msg.incarnation)
        {
            self.restart(&msg.appid);
        }
    }
}

impl Handler<RouteTicketRefresh> for Registry {
    type Result = ResponseFuture<Result<TicketOutcome, RefreshError>>;

    fn handle(&mut self, msg: RouteTicketRefresh, _: &mut Self::Context) -> Self::Result {
        let refresh = TicketRefresh {
            kind: msg.kind,
            stale: msg.stale,
        };
        self.forward(&msg.appid, refresh)
    }
}

impl Handler<RouteAdopt> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RouteAdopt, _: &mut Self::Context) {
        if let Some(member) = self.members.get(&msg.appid) {
            member.addr.do_send(Adopt(msg.token));
        }
    }
}

impl Handler<StopAll> for Registry {
    type Result = ();

    fn handle(&mut self, _: StopAll, _: &mut Self::Context) {
        self.stopping = true;
        for member in self.members.values() {
            member.addr.do_send(Shutdown { forget: false });
        }
    }
}

impl Handler<CrashAccount> for Registry {
    type Result = bool;

    fn handle(&mut self, CrashAccount(appid): CrashAccount, _: &mut Self::Context) -> bool {
        match self.members.get(&appid) {
            Some(member) => {
                member.addr.do_send(Crash);
                true
            }
            None => false,
        }
    }
}
