//! The whole `/metrics` text: the fleet registry, then the per-account
//! series, written from the slots at scrape time.
//!
//! Owns which per-account series each [`PerAccount`] mode writes, the
//! fleet gauges computed from the slots (`wxtoken_accounts{state}`,
//! `wxtoken_ready`, `wxtoken_fleet_config_errors`,
//! `wxtoken_metrics_per_account{mode}`), which are set right before each
//! scrape, and the Open Platform series written in every mode
//! ([`crate::metrics::OPEN_FAMILIES`]: verify ticket age and count per
//! component, authorizers by component and state), with each component's
//! token expiry, which the component alert needs, also in mode `none`.
//!
//! Invariants:
//! - Nothing per account is stored for metrics beyond the slot's own data
//!   and its [`super::AccountCounters`]; an account that leaves the
//!   directory leaves `/metrics` with it.
//! - Each account is read once per scrape, in one pass (its status, token
//!   and tickets are one consistent view, read without copying); families
//!   are written whole in the order of [`crate::metrics::PER_ACCOUNT_FAMILIES`],
//!   accounts sorted by appid (the directory keeps them sorted).
//! - Only appids, fixed vocabularies, errcodes and the IP WeChat reported
//!   become label values; never a token, ticket or secret. Of a component's
//!   verify tickets only their number and creation time are read; an
//!   authorizer's refresh token and codes are never read here.

use std::collections::BTreeMap;

use crate::config::AccountKind;
use crate::domain::{Authorization, Reason, TicketKind};
use crate::metrics::exposition::{Family, FamilyText};
use crate::metrics::{
    ACCOUNT_CONFIG_ERROR, ACCOUNT_STATE, ACCOUNT_STATES, ACTOR_RESTARTS, AUTHORIZERS, CALLS_TODAY,
    COMPONENT_TICKET_AGE, COMPONENT_TICKETS, Metrics, NEXT_REFRESH, OPEN_FAMILIES,
    PER_ACCOUNT_FAMILIES, PerAccount, QUOTA_LIMIT, QUOTA_USED, REFRESHES, RESULTS, TICKET_EXPIRY,
    TICKET_REFRESHES, TOKEN_EXPIRY, TOKEN_FETCHED, TOKEN_SERVE_UNTIL,
};

use super::{AccountSlot, AccountStatus, Directory, TicketRecord, TokenRecord};

/// Room reserved for the fleet registry's text.
const FLEET_BYTES: usize = 64 * 1024;

/// The fleet-wide tallies a scrape takes from the accounts.
#[derive(Default)]
struct Tally {
    by_state: [i64; ACCOUNT_STATES.len()],
    ready: bool,
    config_errors: i64,
}

impl Tally {
    fn count(&mut self, status: &AccountStatus, ready: bool) {
        let label = status.state.metric_label();
        if let Some(i) = ACCOUNT_STATES.iter().position(|s| *s == label) {
            self.by_state[i] += 1;
        }
        self.ready &= ready;
        self.config_errors += i64::from(status.config_error.is_some());
    }

    /// Sets the gauges computed from the accounts, and the mode's.
    fn publish(&self, metrics: &Metrics, mode: PerAccount) {
        for (state, count) in ACCOUNT_STATES.iter().zip(self.by_state) {
            metrics.accounts.with_label_values(&[state]).set(count);
        }
        metrics.ready.set(i64::from(self.ready));
        metrics.fleet_config_errors.set(self.config_errors);
        metrics.set_mode_gauge(mode);
    }
}

impl Directory {
    /// The text of `GET /metrics` at `now_ms`: one pass over the accounts
    /// (sorted by appid) fills the per-account families of the mode in force
    /// ([`Metrics::per_account_for`] this fleet) and the fleet gauges; then
    /// the registry's text, then each non-empty family.
    pub fn encode_metrics(&self, metrics: &Metrics, now_ms: i64) -> Vec<u8> {
        let published = self.0.load_full();
        let slots = &published.sorted;
        let mode = metrics.per_account_for(slots.len());
        let mut tally = Tally {
            ready: true,
            ..Tally::default()
        };
        let mut families = Families::new(mode, slots.len());
        let mut open = OpenFamilies::new(families.is_none());
        for slot in slots {
            slot.with_view(now_ms, |status, token, tickets, ready| {
                tally.count(status, ready);
                open.add(slot, token, now_ms);
                if let Some(families) = &mut families {
                    families.add(slot, status, token, tickets, now_ms);
                }
            });
        }
        let open = open.finish();
        drop(published);
        tally.publish(metrics, mode);
        let per_account: usize = families.as_ref().map_or(0, Families::len);
        let open_bytes: usize = open.iter().flatten().map(|f| f.len()).sum();
        let mut out = Vec::with_capacity(FLEET_BYTES + per_account + open_bytes + 4096);
        metrics.encode_into(&mut out);
        if let Some(families) = families {
            for family in families.texts() {
                family.write_to(&mut out);
            }
        }
        // Mode none's component token expiries (the only `TOKEN_EXPIRY`
        // text then), then the Open Platform families.
        for family in open.iter().flatten() {
            family.write_to(&mut out);
        }
        out
    }
}

/// The Open Platform series of one scrape, in every mode, filled account by
/// account: components add their verify tickets, authorizers count in
/// their component's states (components are few, so one series per
/// component and state whatever `metrics.per_account` says).
struct OpenFamilies<'s> {
    ticket_age: FamilyText,
    tickets: FamilyText,
    /// Authorizers by [`Authorization::ALL`] index, per component appid
    /// (every configured component, with or without authorizers).
    authorizers: BTreeMap<&'s str, [u64; Authorization::ALL.len()]>,
    /// In mode none only: the components' token expiries (the other modes
    /// write them with every account's).
    token_expiry: Option<FamilyText>,
}

impl<'s> OpenFamilies<'s> {
    /// Empty families; with `token_expiry` when no per-account family is
    /// written (mode none).
    fn new(token_expiry: bool) -> Self {
        OpenFamilies {
            ticket_age: FamilyText::with_capacity(COMPONENT_TICKET_AGE, 0),
            tickets: FamilyText::with_capacity(COMPONENT_TICKETS, 0),
            authorizers: BTreeMap::new(),
            token_expiry: token_expiry.then(|| FamilyText::with_capacity(TOKEN_EXPIRY, 0)),
        }
    }

    /// Adds what `slot` contributes: a component its tickets (and, in mode
    /// none, its token expiry), an authorizer one to its component's count
    /// of its state. An authorizer whose first authorization is not yet
    /// durable has no state and is not counted.
    fn add(&mut self, slot: &'s AccountSlot, token: Option<&TokenRecord>, now_ms: i64) {
        match &slot.kind {
            AccountKind::Component => {
                let appid = slot.appid.as_str();
                let id = [("component", appid)];
                self.authorizers.entry(appid).or_default();
                let open = slot.open();
                let tickets = open.as_ref().map_or(&[][..], |o| &o.verify_tickets[..]);
                self.tickets.int(&id, tickets.len() as u64);
                if let Some(newest) = tickets.iter().map(|t| t.created_at_ms).max() {
                    // A ticket WeChat dated ahead of our clock is 0 s old.
                    let age = now_ms.saturating_sub(newest).max(0);
                    self.ticket_age.millis_as_seconds(&id, age);
                }
                if let (Some(expiry), Some(t)) = (&mut self.token_expiry, token) {
                    expiry.millis_as_seconds(&[("appid", appid)], t.expires_at_ms);
                }
            }
            AccountKind::Authorizer { component } => {
                let state = slot
                    .authorization()
                    .and_then(|a| Authorization::ALL.iter().position(|s| *s == a));
                let counts = self.authorizers.entry(component.as_str()).or_default();
                if let Some(i) = state {
                    counts[i] += 1;
                }
            }
            AccountKind::Wechat | AccountKind::Wecom { .. } => {}
        }
    }

    /// The texts to write after the per-account families: mode none's
    /// component token expiries, then [`OPEN_FAMILIES`] in order.
    fn finish(self) -> [Option<FamilyText>; 1 + OPEN_FAMILIES.len()] {
        let mut authorizers = FamilyText::with_capacity(
            AUTHORIZERS,
            self.authorizers.len() * Authorization::ALL.len() * 80,
        );
        for (component, counts) in &self.authorizers {
            for (state, n) in Authorization::ALL.iter().zip(counts) {
                authorizers.int(&[("component", component), ("state", state.as_str())], *n);
            }
        }
        [
            self.token_expiry,
            Some(self.ticket_age),
            Some(self.tickets),
            Some(authorizers),
        ]
    }
}

/// The per-account families of one scrape, filled account by account.
struct Families {
    full: bool,
    token_expiry: FamilyText,
    token_fetched: FamilyText,
    token_serve_until: FamilyText,
    next_refresh: FamilyText,
    refreshes: FamilyText,
    calls_today: FamilyText,
    actor_restarts: FamilyText,
    account_state: FamilyText,
    config_error: FamilyText,
    ticket_expiry: FamilyText,
    ticket_refreshes: FamilyText,
    quota_limit: FamilyText,
    quota_used: FamilyText,
}

impl Families {
    /// Empty families sized for `accounts` in `mode`; `None` for
    /// [`PerAccount::None`].
    fn new(mode: PerAccount, accounts: usize) -> Option<Families> {
        let full = match mode {
            PerAccount::None => return None,
            PerAccount::Full => true,
            PerAccount::Essential => false,
        };
        // Room for `lines` samples per account of `family`; a sample is its
        // name, an appid, a label or two and a value.
        let room = |family: Family, lines: usize| {
            FamilyText::with_capacity(family, accounts * lines * (family.name.len() + 56))
        };
        let (all, some) = (1, usize::from(full));
        Some(Families {
            full,
            token_expiry: room(TOKEN_EXPIRY, all),
            token_fetched: room(TOKEN_FETCHED, some),
            token_serve_until: room(TOKEN_SERVE_UNTIL, some),
            next_refresh: room(NEXT_REFRESH, some),
            refreshes: room(REFRESHES, 2 * Reason::ALL.len() * some),
            calls_today: room(CALLS_TODAY, all),
            actor_restarts: room(ACTOR_RESTARTS, some),
            account_state: room(ACCOUNT_STATE, if full { ACCOUNT_STATES.len() } else { 1 }),
            config_error: room(ACCOUNT_CONFIG_ERROR, 0),
            ticket_expiry: room(TICKET_EXPIRY, 0),
            ticket_refreshes: room(TICKET_REFRESHES, 0),
            quota_limit: room(QUOTA_LIMIT, all),
            quota_used: room(QUOTA_USED, all),
        })
    }

    /// Every family, in the order of [`PER_ACCOUNT_FAMILIES`].
    fn texts(&self) -> [&FamilyText; PER_ACCOUNT_FAMILIES.len()] {
        [
            &self.token_expiry,
            &self.token_fetched,
            &self.token_serve_until,
            &self.next_refresh,
            &self.refreshes,
            &self.calls_today,
            &self.actor_restarts,
            &self.account_state,
            &self.config_error,
            &self.ticket_expiry,
            &self.ticket_refreshes,
            &self.quota_limit,
            &self.quota_used,
        ]
    }

    /// Bytes of samples in all families.
    fn len(&self) -> usize {
        self.texts().iter().map(|f| f.len()).sum()
    }

    /// Adds the samples of one account.
    fn add(
        &mut self,
        slot: &AccountSlot,
        status: &AccountStatus,
        token: Option<&TokenRecord>,
        tickets: &[std::sync::Arc<TicketRecord>],
        now_ms: i64,
    ) {
        let full = self.full;
        let appid = slot.appid.as_str();
        let id = [("appid", appid)];
        if let Some(t) = token {
            self.token_expiry.millis_as_seconds(&id, t.expires_at_ms);
            if full {
                self.token_fetched.millis_as_seconds(&id, t.fetched_at_ms);
                self.token_serve_until
                    .millis_as_seconds(&id, t.serve_until_ms);
            }
        }
        if full && let Some(ms) = status.next_refresh_at_ms {
            self.next_refresh.millis_as_seconds(&id, ms);
        }

        // Essential: only the failures that happened (the dashboard graphs
        // errors per account; every result is in wxtoken_fleet_refreshes_total).
        let counters = slot.counters();
        for reason in Reason::ALL {
            for (ok, result) in [(true, RESULTS[0]), (false, RESULTS[1])] {
                let n = counters.refreshes(reason, ok);
                if full || (!ok && n > 0) {
                    let labels = [
                        ("appid", appid),
                        ("reason", reason.as_str()),
                        ("result", result),
                    ];
                    self.refreshes.int(&labels, n);
                }
            }
        }

        self.calls_today
            .int(&id, u64::from(status.calls_on_day_of(now_ms)));

        let restarts = counters.restarts();
        if full || restarts > 0 {
            self.actor_restarts.int(&id, restarts);
        }

        let current = status.state.metric_label();
        if full {
            for state in ACCOUNT_STATES {
                self.account_state.int(
                    &[("appid", appid), ("state", state)],
                    u64::from(state == current),
                );
            }
        } else {
            self.account_state
                .int(&[("appid", appid), ("state", current)], 1);
        }

        if let Some(c) = &status.config_error {
            let mut code = itoa::Buffer::new();
            let ip = c.ip.map(|ip| ip.to_string()).unwrap_or_default();
            let labels = [
                ("appid", appid),
                ("errcode", code.format(c.errcode)),
                ("ip", ip.as_str()),
            ];
            self.config_error.int(&labels, 1);
        }

        for t in tickets {
            self.ticket_expiry.millis_as_seconds(
                &[("appid", appid), ("type", t.kind.as_str())],
                t.expires_at_ms,
            );
        }

        // Every mode: the quota alert needs both.
        for q in status.quotas.iter() {
            let labels = [("appid", appid), ("api", q.api.as_str())];
            self.quota_limit.int(&labels, q.daily_limit);
            self.quota_used.int(&labels, q.used_on_day_of(now_ms));
        }

        // Full: every configured ticket from 0; essential: failures that happened.
        for kind in TicketKind::ALL {
            let configured = slot.ticket_kinds.contains(&kind);
            for (ok, result) in [(true, RESULTS[0]), (false, RESULTS[1])] {
                let n = counters.ticket_fetches(kind, ok);
                let shown = if full {
                    configured || n > 0
                } else {
                    !ok && n > 0
                };
                if shown {
                    let labels = [
                        ("appid", appid),
                        ("result", result),
                        ("type", kind.as_str()),
                    ];
                    self.ticket_refreshes.int(&labels, n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use std::sync::Arc;

    use super::*;
    use crate::domain::{AccessToken, AppId, Mode};
    use crate::snapshot::{ConfigFailure, State};

    const NOW: i64 = 1_712_345_678_000;
    const A: &str = "wx00000000000000aa";
    const B: &str = "wx00000000000000bb";
    const C: &str = "wx00000000000000cc";

    /// Three accounts: A ready with a token and a jsapi ticket, B failing on
    /// a config error (40164 from 192.0.2.7) after one failed startup
    /// refresh, C disabled.
    fn fleet(metrics: &Metrics) -> Directory {
        let slot = |id: &str, enabled: bool, tickets: Vec<TicketKind>| {
            Arc::new(AccountSlot::new(
                AppId::parse(id).unwrap(),
                id.to_string(),
                Mode::Stable,
                enabled,
                tickets,
            ))
        };
        let a = slot(A, true, vec![TicketKind::Jsapi]);
        a.publish(Arc::new(TokenRecord {
            token: AccessToken::new("SECRET-TOKEN-VALUE-0001"),
            mode: Mode::Stable,
            fetched_at_ms: NOW - 1_000,
            expires_at_ms: NOW + 7_199_123,
            serve_until_ms: NOW + 7_000_000,
            json: Default::default(),
        }));
        a.publish_ticket(Arc::new(TicketRecord {
            kind: TicketKind::Jsapi,
            ticket: AccessToken::new("SECRET-TICKET-VALUE-001"),
            fetched_at_ms: NOW - 500,
            expires_at_ms: NOW + 7_000_500,
            serve_until_ms: NOW + 7_000_000,
        }));
        a.set_status(AccountStatus {
            state: State::Ready,
            next_refresh_at_ms: Some(NOW + 6_900_000),
            calls_today: 3,
            calls_day: crate::clock::china_day(NOW / 1000),
            quotas: {
                let mut q = crate::snapshot::Quotas::default();
                q.set(crate::snapshot::QuotaReading {
                    api: crate::domain::ApiName::StableToken,
                    daily_limit: 500_000,
                    used: 7,
                    read_at_ms: NOW - 1_000,
                });
                q.set(crate::snapshot::QuotaReading {
                    api: crate::domain::ApiName::Token,
                    daily_limit: 2_000,
                    used: 1_900,
                    // Read yesterday (China time): its use is over.
                    read_at_ms: NOW - 86_400_000,
                });
                q
            },
            ..AccountStatus::default()
        });
        a.counters().refreshed(metrics, Reason::Startup, true);
        a.counters().refreshed(metrics, Reason::Scheduled, true);
        a.counters()
            .ticket_fetched(metrics, TicketKind::Jsapi, true);

        let b = slot(B, true, vec![]);
        b.set_status(AccountStatus {
            state: State::Failing,
            next_refresh_at_ms: Some(NOW + 300_000),
            calls_today: 9,
            calls_day: crate::clock::china_day(NOW / 1000) - 1,
            config_error: Some(ConfigFailure {
                errcode: 40164,
                ip: Some("192.0.2.7".parse().unwrap()),
            }),
            ..AccountStatus::default()
        });
        b.counters().refreshed(metrics, Reason::Startup, false);
        b.counters().restarted(metrics);

        let c = slot(C, false, vec![]);
        let directory = Directory::default();
        let map: crate::snapshot::SlotMap = [a, b, c]
            .into_iter()
            .map(|s| (s.appid.clone(), s))
            .collect();
        directory.publish(map);
        directory
    }

    fn scrape(mode: Option<PerAccount>) -> (String, Metrics) {
        let metrics = Metrics::new();
        let directory = fleet(&metrics);
        metrics.set_per_account(mode);
        let text = String::from_utf8(directory.encode_metrics(&metrics, NOW)).unwrap();
        (text, metrics)
    }

    /// The sample lines of `family` (exact name, no suffix).
    fn lines<'t>(text: &'t str, family: &str) -> Vec<&'t str> {
        text.lines()
            .filter(|l| {
                l.strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .collect()
    }

    #[test]
    fn full_mode_writes_every_series_with_counters_from_zero() {
        let (text, _) = scrape(Some(PerAccount::Full));
        assert_eq!(
            lines(&text, "wxtoken_token_expiry_timestamp_seconds"),
            [format!(
                "wxtoken_token_expiry_timestamp_seconds{{appid=\"{A}\"}} 1712352877.123"
            )]
        );
        assert_eq!(
            lines(&text, "wxtoken_token_fetched_timestamp_seconds"),
            [format!(
                "wxtoken_token_fetched_timestamp_seconds{{appid=\"{A}\"}} 1712345677"
            )]
        );
        assert_eq!(
            lines(&text, "wxtoken_token_serve_until_timestamp_seconds").len(),
            1
        );
        assert_eq!(
            lines(&text, "wxtoken_next_refresh_timestamp_seconds"),
            [
                format!("wxtoken_next_refresh_timestamp_seconds{{appid=\"{A}\"}} 1712352578"),
                format!("wxtoken_next_refresh_timestamp_seconds{{appid=\"{B}\"}} 1712345978"),
            ]
        );
        // 5 reasons x 2 results for each of the three accounts.
        let refreshes = lines(&text, "wxtoken_refreshes_total");
        assert_eq!(refreshes.len(), 30);
        assert!(
            refreshes.contains(
                &format!(
                    "wxtoken_refreshes_total{{appid=\"{A}\",reason=\"scheduled\",result=\"ok\"}} 1"
                )
                .as_str()
            )
        );
        assert!(
            refreshes.contains(
                &format!(
                    "wxtoken_refreshes_total{{appid=\"{C}\",reason=\"admin\",result=\"error\"}} 0"
                )
                .as_str()
            )
        );
        // Yesterday's calls do not count today.
        assert_eq!(
            lines(&text, "wxtoken_upstream_calls_today"),
            [
                format!("wxtoken_upstream_calls_today{{appid=\"{A}\"}} 3"),
                format!("wxtoken_upstream_calls_today{{appid=\"{B}\"}} 0"),
                format!("wxtoken_upstream_calls_today{{appid=\"{C}\"}} 0"),
            ]
        );
        assert_eq!(
            lines(&text, "wxtoken_actor_restarts_total"),
            [
                format!("wxtoken_actor_restarts_total{{appid=\"{A}\"}} 0"),
                format!("wxtoken_actor_restarts_total{{appid=\"{B}\"}} 1"),
                format!("wxtoken_actor_restarts_total{{appid=\"{C}\"}} 0"),
            ]
        );
        let states = lines(&text, "wxtoken_account_state");
        assert_eq!(states.len(), 12);
        for (appid, state) in [(A, "ready"), (B, "failing"), (C, "disabled")] {
            for s in ACCOUNT_STATES {
                let want = format!(
                    "wxtoken_account_state{{appid=\"{appid}\",state=\"{s}\"}} {}",
                    u8::from(s == state)
                );
                assert!(states.contains(&want.as_str()), "{want}");
            }
        }
        assert_eq!(
            lines(&text, "wxtoken_account_config_error"),
            [format!(
                "wxtoken_account_config_error{{appid=\"{B}\",errcode=\"40164\",ip=\"192.0.2.7\"}} 1"
            )]
        );
        assert_eq!(
            lines(&text, "wxtoken_ticket_expiry_timestamp_seconds"),
            [format!(
                "wxtoken_ticket_expiry_timestamp_seconds{{appid=\"{A}\",type=\"jsapi\"}} 1712352678.5"
            )]
        );
        assert_eq!(
            lines(&text, "wxtoken_ticket_refreshes_total"),
            [
                format!(
                    "wxtoken_ticket_refreshes_total{{appid=\"{A}\",result=\"ok\",type=\"jsapi\"}} 1"
                ),
                format!(
                    "wxtoken_ticket_refreshes_total{{appid=\"{A}\",result=\"error\",type=\"jsapi\"}} 0"
                ),
            ]
        );
    }

    #[test]
    fn essential_mode_writes_what_the_dashboard_uses_and_no_zeros() {
        let (text, _) = scrape(Some(PerAccount::Essential));
        assert_eq!(
            lines(&text, "wxtoken_token_expiry_timestamp_seconds").len(),
            1
        );
        for absent in [
            "wxtoken_token_fetched_timestamp_seconds",
            "wxtoken_token_serve_until_timestamp_seconds",
            "wxtoken_next_refresh_timestamp_seconds",
        ] {
            assert!(lines(&text, absent).is_empty(), "{absent}");
            assert!(!text.contains(&format!("# TYPE {absent} ")), "{absent}");
        }
        assert_eq!(
            lines(&text, "wxtoken_refreshes_total"),
            [format!(
                "wxtoken_refreshes_total{{appid=\"{B}\",reason=\"startup\",result=\"error\"}} 1"
            )]
        );
        assert_eq!(lines(&text, "wxtoken_upstream_calls_today").len(), 3);
        assert_eq!(
            lines(&text, "wxtoken_actor_restarts_total"),
            [format!("wxtoken_actor_restarts_total{{appid=\"{B}\"}} 1")]
        );
        assert_eq!(
            lines(&text, "wxtoken_account_state"),
            [
                format!("wxtoken_account_state{{appid=\"{A}\",state=\"ready\"}} 1"),
                format!("wxtoken_account_state{{appid=\"{B}\",state=\"failing\"}} 1"),
                format!("wxtoken_account_state{{appid=\"{C}\",state=\"disabled\"}} 1"),
            ]
        );
        assert_eq!(lines(&text, "wxtoken_account_config_error").len(), 1);
        assert_eq!(
            lines(&text, "wxtoken_ticket_expiry_timestamp_seconds").len(),
            1
        );
        assert!(lines(&text, "wxtoken_ticket_refreshes_total").is_empty());
    }

    #[test]
    fn full_and_essential_write_the_quota_readings_and_yesterdays_use_as_zero() {
        for mode in [PerAccount::Full, PerAccount::Essential] {
            let (text, _) = scrape(Some(mode));
            assert_eq!(
                lines(&text, "wxtoken_upstream_quota_limit"),
                [
                    format!("wxtoken_upstream_quota_limit{{appid=\"{A}\",api=\"token\"}} 2000"),
                    format!(
                        "wxtoken_upstream_quota_limit{{appid=\"{A}\",api=\"stable_token\"}} 500000"
                    ),
                ],
                "{mode}"
            );
            assert_eq!(
                lines(&text, "wxtoken_upstream_quota_used"),
                [
                    format!("wxtoken_upstream_quota_used{{appid=\"{A}\",api=\"token\"}} 0"),
                    format!("wxtoken_upstream_quota_used{{appid=\"{A}\",api=\"stable_token\"}} 7"),
                ],
                "{mode}"
            );
        }
        let (none, _) = scrape(Some(PerAccount::None));
        assert!(!none.contains("wxtoken_upstream_quota_limit{"));
    }

    #[test]
    fn none_mode_writes_no_account_but_every_fleet_aggregate() {
        let (text, _) = scrape(Some(PerAccount::None));
        for family in crate::metrics::PER_ACCOUNT_FAMILIES {
            assert!(!text.contains(family.name), "{}", family.name);
        }
        for line in [
            "wxtoken_accounts{state=\"ready\"} 1",
            "wxtoken_accounts{state=\"failing\"} 1",
            "wxtoken_accounts{state=\"disabled\"} 1",
            "wxtoken_ready 0",
            "wxtoken_fleet_config_errors 1",
            "wxtoken_fleet_actor_restarts_total 1",
            "wxtoken_fleet_refreshes_total{reason=\"startup\",result=\"ok\"} 1",
            "wxtoken_fleet_refreshes_total{reason=\"startup\",result=\"error\"} 1",
            "wxtoken_fleet_refreshes_total{reason=\"admin\",result=\"ok\"} 0",
            "wxtoken_fleet_ticket_refreshes_total{result=\"ok\",type=\"jsapi\"} 1",
            "wxtoken_metrics_per_account{mode=\"none\"} 1",
            "wxtoken_metrics_per_account{mode=\"full\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }

    #[test]
    fn without_a_setting_a_small_fleet_gets_full() {
        let (text, _) = scrape(None);
        assert!(text.contains("wxtoken_metrics_per_account{mode=\"full\"} 1"));
        assert_eq!(lines(&text, "wxtoken_account_state").len(), 12);
    }

    const K: &str = "wx0000000000000c01";
    const L: &str = "wx0000000000000c02";
    const X: &str = "wx0000000000000a01";
    const Y: &str = "wx0000000000000a02";
    const Z: &str = "wx0000000000000a03";

    /// Component K with two verify tickets (the newest 90.5 s old) and a
    /// token; component L without a ticket or token; K's authorizers X
    /// (authorized, with a refresh token), Y (needs_reauth) and Z (not yet
    /// durable: no state); the fleet of [`fleet`] beside them.
    fn platform(metrics: &Metrics) -> Directory {
        use crate::config::AccountKind;
        use crate::domain::Authorization;
        use crate::store::{StoredCode, StoredOpen, VerifyTicket};
        let slot = |id: &str, kind: AccountKind| {
            Arc::new(
                AccountSlot::new(
                    AppId::parse(id).unwrap(),
                    id.to_string(),
                    Mode::Legacy,
                    true,
                    vec![],
                )
                .with_kind(kind),
            )
        };
        let ticket = |n: u8, created_at_ms: i64| VerifyTicket {
            ticket: AccessToken::new(format!("SECRET-VERIFY-TICKET-{n:04}")),
            created_at_ms,
            received_at_ms: created_at_ms + 20,
        };
        let k = slot(K, AccountKind::Component);
        k.publish(Arc::new(TokenRecord {
            token: AccessToken::new("SECRET-COMPONENT-TOKEN-01"),
            mode: Mode::Legacy,
            fetched_at_ms: NOW - 1_000,
            expires_at_ms: NOW + 7_199_000,
            serve_until_ms: NOW + 7_000_000,
            json: Default::default(),
        }));
        k.publish_open(Arc::new(StoredOpen {
            verify_tickets: vec![ticket(1, NOW - 690_500), ticket(2, NOW - 90_500)],
            ..StoredOpen::default()
        }));
        let l = slot(L, AccountKind::Component);
        let component = AccountKind::Authorizer {
            component: AppId::parse(K).unwrap(),
        };
        let x = slot(X, component.clone());
        x.publish_open(Arc::new(StoredOpen {
            component: Some(AppId::parse(K).unwrap()),
            authorization: Some(Authorization::Authorized),
            refresh_token: Some(AccessToken::new("SECRET-REFRESH-TOKEN-0001")),
            auth_code: Some(StoredCode {
                code: AccessToken::new("SECRET-AUTH-CODE-000001"),
                expires_at_ms: NOW + 60_000,
            }),
            changed_at_ms: NOW,
            verify_tickets: vec![],
        }));
        let y = slot(Y, component.clone());
        y.publish_open(Arc::new(StoredOpen {
            component: Some(AppId::parse(K).unwrap()),
            authorization: Some(Authorization::NeedsReauth),
            ..StoredOpen::default()
        }));
        let z = slot(Z, component);
        let directory = fleet(metrics);
        let mut map: crate::snapshot::SlotMap = directory
            .all()
            .into_iter()
            .map(|s| (s.appid.clone(), s))
            .collect();
        for s in [k, l, x, y, z] {
            map.insert(s.appid.clone(), s);
        }
        directory.publish(map);
        directory
    }

    fn scrape_platform(mode: PerAccount) -> String {
        let metrics = Metrics::new();
        let directory = platform(&metrics);
        metrics.set_per_account(Some(mode));
        String::from_utf8(directory.encode_metrics(&metrics, NOW)).unwrap()
    }

    #[test]
    fn every_mode_writes_ticket_age_tickets_authorizers_and_component_token_expiry() {
        for mode in PerAccount::ALL {
            let text = scrape_platform(mode);
            assert_eq!(
                lines(&text, "wxtoken_component_ticket_age_seconds"),
                [format!(
                    "wxtoken_component_ticket_age_seconds{{component=\"{K}\"}} 90.5"
                )],
                "{mode}"
            );
            assert_eq!(
                lines(&text, "wxtoken_component_tickets"),
                [
                    format!("wxtoken_component_tickets{{component=\"{K}\"}} 2"),
                    format!("wxtoken_component_tickets{{component=\"{L}\"}} 0"),
                ],
                "{mode}"
            );
            assert_eq!(
                lines(&text, "wxtoken_authorizers"),
                [
                    format!("wxtoken_authorizers{{component=\"{K}\",state=\"authorized\"}} 1"),
                    format!("wxtoken_authorizers{{component=\"{K}\",state=\"needs_reauth\"}} 1"),
                    format!("wxtoken_authorizers{{component=\"{K}\",state=\"unauthorized\"}} 0"),
                    format!("wxtoken_authorizers{{component=\"{L}\",state=\"authorized\"}} 0"),
                    format!("wxtoken_authorizers{{component=\"{L}\",state=\"needs_reauth\"}} 0"),
                    format!("wxtoken_authorizers{{component=\"{L}\",state=\"unauthorized\"}} 0"),
                ],
                "{mode}"
            );
            let expiry = lines(&text, "wxtoken_token_expiry_timestamp_seconds");
            let component =
                format!("wxtoken_token_expiry_timestamp_seconds{{appid=\"{K}\"}} 1712352877");
            assert!(expiry.contains(&component.as_str()), "{mode}: {expiry:?}");
            // In mode none, the components' and nothing else.
            if mode == PerAccount::None {
                assert_eq!(expiry, [component.as_str()]);
            } else {
                assert!(expiry.len() > 1, "{mode}");
            }
            assert_eq!(
                text.matches("# TYPE wxtoken_token_expiry_timestamp_seconds ")
                    .count(),
                1,
                "{mode}"
            );
            assert!(!text.contains("SECRET"), "{mode}: a secret in\n{text}");
        }
    }

    #[test]
    fn a_fleet_without_components_writes_no_open_platform_series() {
        for mode in PerAccount::ALL {
            let (text, _) = scrape(Some(mode));
            for family in crate::metrics::OPEN_FAMILIES {
                assert!(!text.contains(family.name), "{mode}: {}", family.name);
            }
        }
    }

    #[test]
    fn each_family_has_one_header_and_no_token_or_ticket_shows() {
        for (mode, text) in PerAccount::ALL
            .into_iter()
            .flat_map(|m| [(m, scrape(Some(m)).0), (m, scrape_platform(m))])
        {
            let mut types: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .map(|l| l.split(' ').next().unwrap())
                .collect();
            let all = types.len();
            types.sort_unstable();
            types.dedup();
            assert_eq!(types.len(), all, "{mode}: a family is written twice");
            // Every sample follows its own family's header.
            let mut current = "";
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    current = rest.split(' ').next().unwrap();
                } else if !line.starts_with('#') {
                    let name = line.split(['{', ' ']).next().unwrap();
                    assert!(name.starts_with(current), "{mode}: {line} after {current}");
                }
            }
            assert!(!text.contains("SECRET"), "{mode}");
            assert!(text.ends_with('\n'));
        }
    }
}
