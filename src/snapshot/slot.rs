//! What an account publishes for readers: its current token and its status.
//!
//! Owns: [`AccountSlot`], the lock-free cell the HTTP read path loads from
//! (tens of nanoseconds, no actor round trip), and the value types in it.
//! Invariant: only the account's own actor (and the refresh it spawned)
//! stores into a slot (the store methods are crate-private and called from
//! `account/` only); readers never see a token past its `serve_until_ms`
//! because [`TokenRecord::usable_secs`] is the only way the API reads one.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;

pub use crate::domain::State;
use crate::domain::{AccessToken, ApiName, AppId, Mode, TicketKind};

use super::counters::AccountCounters;
use super::issued::IssuedTokens;
use crate::store::StoredOpen;

/// One token as wxtoken serves it. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub token: AccessToken,
    pub mode: Mode,
    pub fetched_at_ms: i64,
    /// The real expiry: when the request was sent plus WeChat's `expires_in`.
    pub expires_at_ms: i64,
    /// Until when clients may use it (see `account::plan::Policy::serve_until`).
    pub serve_until_ms: i64,
    /// `token` as a JSON string, escaped on first use (see
    /// [`TokenRecord::token_json`]); `Default::default()` when building one.
    pub json: JsonToken,
}

/// The JSON string literal of a record's token (quotes included), escaped
/// once by `serde_json` on first use and kept for every later answer: tokens
/// are 128 to 2048 characters and escaping them byte by byte was the largest
/// cost of a token read. A cache, not data: it compares equal to every other
/// `JsonToken` and its `Debug` never shows the (secret) value.
#[derive(Clone, Default)]
pub struct JsonToken(std::sync::OnceLock<Box<str>>);

impl PartialEq for JsonToken {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for JsonToken {}

impl std::fmt::Debug for JsonToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonToken")
    }
}

impl TokenRecord {
    /// The token as a JSON string literal (quotes included, escaped exactly as
    /// `serde_json` escapes it), built on the first call.
    /// `None` only if `serde_json` failed, which it does not for a `str`.
    pub fn token_json(&self) -> Option<&str> {
        if let Some(json) = self.json.0.get() {
            return Some(json);
        }
        let json = serde_json::to_string(self.token.expose()).ok()?;
        Some(self.json.0.get_or_init(|| json.into_boxed_str()))
    }

    /// Whole seconds a client may keep using this token from `now_ms`, or
    /// `None` when less than one second is left (then it is not served).
    pub fn usable_secs(&self, now_ms: i64) -> Option<u64> {
        let left = self.serve_until_ms - now_ms;
        (left >= 1000).then_some((left / 1000) as u64)
    }

    /// True while WeChat still accepts the token (ignoring early supersession).
    pub fn is_live(&self, now_ms: i64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// One JS-SDK ticket as wxtoken serves it. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRecord {
    pub kind: TicketKind,
    /// The ticket (a secret-like value: its `Debug` is a fingerprint).
    pub ticket: AccessToken,
    pub fetched_at_ms: i64,
    /// The ticket's own expiry (the request time plus WeChat's `expires_in`).
    pub expires_at_ms: i64,
    /// Until when clients may use it: never past its own expiry nor past
    /// the serve time of the token it was fetched with.
    pub serve_until_ms: i64,
}

impl TicketRecord {
    /// Whole seconds a client may keep using this ticket, or `None` below one.
    pub fn usable_secs(&self, now_ms: i64) -> Option<u64> {
        let left = self.serve_until_ms - now_ms;
        (left >= 1000).then_some((left / 1000) as u64)
    }
}

/// The last upstream failure of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    pub errcode: Option<i64>,
    pub errmsg: String,
    /// Unix seconds.
    pub at: i64,
}

/// An account's last failure was a configuration error that only a person
/// can fix (`wxtoken_account_config_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigFailure {
    /// WeChat's errcode (40125, 40164, ...).
    pub errcode: i64,
    /// The IP WeChat saw, when it said (40164 and its kin).
    pub ip: Option<IpAddr>,
}

/// Everything `/v1/accounts`, `/readyz` and `/metrics` show about an
/// account, but the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountStatus {
    pub state: State,
    pub next_refresh_at_ms: Option<i64>,
    pub last_error: Option<LastError>,
    /// Token fetches counted against WeChat's daily quota on `calls_day`.
    pub calls_today: u32,
    /// The China-time day (`clock::china_day`) `calls_today` belongs to.
    pub calls_day: i64,
    /// Unix ms of the stable `force_refresh` calls made on `calls_day`.
    pub forces: Vec<i64>,
    /// A fetch that may rotate the token (legacy, or stable forced) started
    /// at this Unix ms and its outcome is unknown: the previous token may die
    /// WeChat's grace after it.
    pub pending_fetch_ms: Option<i64>,
    /// An attempt that may rotate the token ended with an unknown outcome:
    /// WeChat may still process it until this Unix ms (see
    /// `account::plan::Policy::guard_late`). `None` once a token fetched after it
    /// is current.
    pub late_until_ms: Option<i64>,
    /// Set while the last failure is a configuration error.
    pub config_error: Option<ConfigFailure>,
    /// The daily quotas of the token APIs the account uses, as getApiQuota
    /// last reported them.
    pub quotas: Quotas,
}

/// One token API's daily quota as getApiQuota last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaReading {
    /// `token` or `stable_token`.
    pub api: ApiName,
    pub daily_limit: u64,
    pub used: u64,
    /// When it was read (Unix ms).
    pub read_at_ms: i64,
}

impl QuotaReading {
    /// The use it reports on the China-time day of `now_ms`: 0 when it was
    /// read on an earlier day (WeChat's quota day is assumed to end at
    /// midnight China time).
    pub fn used_on_day_of(&self, now_ms: i64) -> u64 {
        let day = |ms: i64| crate::clock::china_day(ms.div_euclid(1000));
        if day(self.read_at_ms) == day(now_ms) {
            self.used
        } else {
            0
        }
    }
}

/// The quota readings of an account: at most one per token API
/// (`/cgi-bin/token`, `/cgi-bin/stable_token`, a component's
/// `api_component_token` and `api_authorizer_token`), in that order. Shared,
/// so that an account that has not read any costs one pointer and a copy of
/// the status never copies them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Quotas(Option<Arc<[Option<QuotaReading>; 4]>>);

impl Quotas {
    /// Keeps `reading` in place of the previous one of its API; readings of
    /// other APIs are ignored.
    pub fn set(&mut self, reading: QuotaReading) {
        let at = match reading.api {
            ApiName::Token => 0,
            ApiName::StableToken => 1,
            ApiName::ComponentToken => 2,
            ApiName::AuthorizerToken => 3,
            _ => return,
        };
        let mut all = self.0.as_deref().copied().unwrap_or_default();
        all[at] = Some(reading);
        self.0 = Some(Arc::new(all));
    }

    /// The readings, in the order of [`Quotas`].
    pub fn iter(&self) -> impl Iterator<Item = &QuotaReading> {
        self.0.iter().flat_map(|all| all.iter().flatten())
    }
}

impl AccountStatus {
    /// Token fetches counted on the China-time day of `now_ms` (0 when
    /// `calls_today` belongs to an earlier day).
    pub fn calls_on_day_of(&self, now_ms: i64) -> u32 {
        if self.calls_day == crate::clock::china_day(now_ms.div_euclid(1000)) {
            self.calls_today
        } else {
            0
        }
    }
}

impl Default for AccountStatus {
    fn default() -> Self {
        AccountStatus {
            state: State::Empty,
            next_refresh_at_ms: None,
            last_error: None,
            calls_today: 0,
            calls_day: 0,
            forces: Vec::new(),
            pending_fetch_ms: None,
            late_until_ms: None,
            config_error: None,
            quotas: Quotas::default(),
        }
    }
}

/// The published face of one account.
#[derive(Debug)]
pub struct AccountSlot {
    pub appid: AppId,
    pub name: String,
    pub mode: Mode,
    pub enabled: bool,
    /// The JS-SDK tickets configured for the account.
    pub ticket_kinds: Vec<TicketKind>,
    /// What kind of account it is (an account, WeCom, a component, an authorizer).
    pub kind: crate::config::AccountKind,
    token: ArcSwapOption<TokenRecord>,
    status: ArcSwap<AccountStatus>,
    tickets: ArcSwap<Vec<Arc<TicketRecord>>>,
    /// Open Platform components and authorizers: verify tickets, refresh
    /// token, authorization (never served; kept here so that it survives an
    /// actor restart and is stored with the token).
    open: ArcSwapOption<StoredOpen>,
    /// What `/metrics` counts for the account.
    counters: AccountCounters,
    /// The directory's index of handed-out tokens, which every published
    /// token enters (`None` for a slot outside a directory).
    issued: Option<Arc<IssuedTokens>>,
    /// Woken at every published token and when the slot leaves the
    /// directory: what held long-polls wait on (no task, no actor message
    /// per waiter; see [`AccountSlot::changed`]).
    changed: tokio::sync::Notify,
}

impl AccountSlot {
    /// A slot for an account, configured with JS-SDK tickets of `ticket_kinds`.
    pub fn new(
        appid: AppId,
        name: String,
        mode: Mode,
        enabled: bool,
        ticket_kinds: Vec<TicketKind>,
    ) -> Self {
        let status = AccountStatus {
            state: if enabled {
                State::Empty
            } else {
                State::Disabled
            },
            ..Default::default()
        };
        AccountSlot {
            appid,
            name,
            mode,
            enabled,
            ticket_kinds,
            kind: crate::config::AccountKind::default(),
            token: ArcSwapOption::empty(),
            status: ArcSwap::from_pointee(status),
            tickets: ArcSwap::from_pointee(Vec::new()),
            open: ArcSwapOption::empty(),
            counters: AccountCounters::default(),
            issued: None,
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The same slot, entering every token it publishes into `issued`.
    pub fn with_index(mut self, issued: Arc<IssuedTokens>) -> Self {
        self.issued = Some(issued);
        self
    }

    /// The same slot for an account of `kind`.
    pub fn with_kind(mut self, kind: crate::config::AccountKind) -> Self {
        self.kind = kind;
        self
    }

    /// The account's exported counters.
    pub fn counters(&self) -> &AccountCounters {
        &self.counters
    }

    /// The current token record, if any (it may be past its serve time).
    pub fn token(&self) -> Option<Arc<TokenRecord>> {
        self.token.load_full()
    }

    /// The current status.
    pub fn status(&self) -> Arc<AccountStatus> {
        self.status.load_full()
    }

    /// Publishes a new token record, and enters it in the directory's index
    /// of handed-out tokens (swept by the record's fetch time: a restored
    /// old token never sweeps early).
    pub(crate) fn publish(&self, record: Arc<TokenRecord>) {
        if let Some(issued) = &self.issued {
            issued.insert(
                &record.token,
                &self.appid,
                record.serve_until_ms,
                record.fetched_at_ms,
            );
        }
        self.token.store(Some(record));
        self.changed.notify_waiters();
    }

    /// Removes the token and tickets (the account left the registry).
    pub(crate) fn clear(&self) {
        self.token.store(None);
        self.tickets.store(Arc::new(Vec::new()));
        self.changed.notify_waiters();
    }

    /// A future that resolves at the next change of this slot: a token
    /// published, the slot cleared, or the slot leaving the directory
    /// ([`Directory::publish`](super::Directory)). It is registered when
    /// this returns, so a change between this call and the first poll is
    /// not missed: take it, then look at the slot, then await it.
    pub fn changed(&self) -> impl Future<Output = ()> + '_ {
        let mut notified = Box::pin(self.changed.notified());
        notified.as_mut().enable();
        notified
    }

    /// Wakes the waiters of [`changed`](Self::changed) (the slot was
    /// replaced or removed from the directory).
    pub(crate) fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// The current ticket of `kind`, if any (it may be past its serve time).
    pub fn ticket(&self, kind: TicketKind) -> Option<Arc<TicketRecord>> {
        self.tickets.load().iter().find(|t| t.kind == kind).cloned()
    }

    /// Every current ticket.
    pub fn tickets(&self) -> Vec<Arc<TicketRecord>> {
        self.tickets.load().as_ref().clone()
    }

    /// Publishes a ticket, replacing the one of the same kind.
    pub(crate) fn publish_ticket(&self, record: Arc<TicketRecord>) {
        let mut list: Vec<Arc<TicketRecord>> = self
            .tickets
            .load()
            .iter()
            .filter(|t| t.kind != record.kind)
            .cloned()
            .collect();
        list.push(record);
        list.sort_by_key(|t| t.kind.as_str());
        self.tickets.store(Arc::new(list));
    }

    /// The Open Platform state (components and authorizers only).
    pub fn open(&self) -> Option<Arc<StoredOpen>> {
        self.open.load_full()
    }

    /// Where an authorizer stands (`None` for every other kind).
    pub fn authorization(&self) -> Option<crate::domain::Authorization> {
        self.open.load().as_ref().and_then(|o| o.authorization)
    }

    /// Publishes the Open Platform state.
    pub(crate) fn publish_open(&self, open: Arc<StoredOpen>) {
        self.open.store(Some(open));
    }

    /// Replaces the status.
    pub(crate) fn set_status(&self, status: AccountStatus) {
        self.status.store(Arc::new(status));
    }

    /// True when a token is usable now, or none is owed: the account is
    /// disabled, or it is an authorizer its merchant revoked (answered 410
    /// by design, never refreshed again, so it must not hold strict
    /// readiness down for ever). An authorizer in `needs_reauth` still
    /// counts: an operator has to act.
    pub fn is_ready(&self, now_ms: i64) -> bool {
        self.ready_with(self.token.load().as_deref(), now_ms)
    }

    /// [`is_ready`](Self::is_ready) given the slot's current `token`.
    fn ready_with(&self, token: Option<&TokenRecord>, now_ms: i64) -> bool {
        !self.enabled
            || token.is_some_and(|t| t.usable_secs(now_ms).is_some())
            || self.authorization() == Some(crate::domain::Authorization::Unauthorized)
    }

    /// Calls `f` with the current status, token, tickets and readiness at
    /// `now_ms`, read once and without copying or counting references (a
    /// scrape reads every account this way).
    pub(crate) fn with_view<R>(
        &self,
        now_ms: i64,
        f: impl FnOnce(&AccountStatus, Option<&TokenRecord>, &[Arc<TicketRecord>], bool) -> R,
    ) -> R {
        let status = self.status.load();
        let token = self.token.load();
        let tickets = self.tickets.load();
        let ready = self.ready_with(token.as_deref(), now_ms);
        f(&status, token.as_deref(), &tickets, ready)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::AccountSlot;
    use crate::domain::{AppId, Authorization, Mode};
    use crate::store::StoredOpen;

    fn authorizer(authorization: Authorization) -> AccountSlot {
        let slot = AccountSlot::new(
            AppId::parse("wx1111111111111111").expect("an appid"),
            "merchant".into(),
            Mode::Legacy,
            true,
            Vec::new(),
        );
        slot.publish_open(Arc::new(StoredOpen {
            authorization: Some(authorization),
            ..StoredOpen::default()
        }));
        slot
    }

    #[test]
    fn a_revoked_authorizer_owes_no_token_but_one_awaiting_reauthorization_does() {
        assert!(authorizer(Authorization::Unauthorized).is_ready(0));
        assert!(!authorizer(Authorization::NeedsReauth).is_ready(0));
        assert!(!authorizer(Authorization::Authorized).is_ready(0));
    }
}
