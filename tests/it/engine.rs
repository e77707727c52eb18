//! The token engine without HTTP in front: the registry actor and its account
//! actors against the simulator, mostly on tokio's paused clock so that many
//! two-hour token lifetimes pass in seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use actix::Addr;
use secrecy::SecretString;
use wxtoken::account::Reason;
use wxtoken::clock::{Clock, next_china_midnight};
use wxtoken::config::{AccountConfig, AccountKind, RefreshConfig};
use wxtoken::domain::{AppId, Mode};
use wxtoken::engine::EngineConfig;
use wxtoken::metrics::Metrics;
use wxtoken::registry::{CrashAccount, Registry, RouteRefresh};
use wxtoken::simulator::{AppRegistration, FaultSpec, InProcess, SimConfig};
use wxtoken::snapshot::{Directory, State, TokenRecord};
use wxtoken::wechat::TokenSource;

use crate::support::wait::Wait;
use crate::support::{self, densest_window, metric_value, token_calls};

/// What a routed refresh answers.
type RefreshResult = Result<wxtoken::account::RefreshOutcome, wxtoken::account::RefreshError>;

/// A registry of accounts fetching from an in-process simulator.
struct Fleet {
    sim: InProcess,
    registry: Addr<Registry>,
    directory: Directory,
    metrics: Metrics,
    clock: Clock,
    accounts: Vec<AccountConfig>,
}

/// One account to create: its mode and whether its configured secret is wrong.
#[derive(Clone, Copy)]
struct Spec {
    mode: Mode,
    broken: bool,
}

fn working(mode: Mode) -> Spec {
    Spec {
        mode,
        broken: false,
    }
}

impl Fleet {
    /// Registers the accounts in the simulator and starts a registry with them.
    async fn start(clock: Clock, sim: InProcess, specs: &[Spec]) -> Fleet {
        let accounts = make_accounts(specs, |reg| {
            sim.try_register_app(reg).expect("valid registration")
        });
        let upstream: Arc<dyn TokenSource> = Arc::new(sim.clone());
        Fleet::launch(clock, sim, accounts, upstream).await
    }

    /// Starts a registry with `accounts` fetching from `upstream`.
    async fn launch(
        clock: Clock,
        sim: InProcess,
        accounts: Vec<AccountConfig>,
        upstream: Arc<dyn TokenSource>,
    ) -> Fleet {
        let config = EngineConfig::new(accounts);
        Fleet::launch_with(clock, sim, config, upstream).await
    }

    /// Starts a registry with `config` fetching from `upstream`.
    async fn launch_with(
        clock: Clock,
        sim: InProcess,
        config: EngineConfig,
        upstream: Arc<dyn TokenSource>,
    ) -> Fleet {
        let accounts = config.accounts.clone();
        let engine = support::engine_in_memory(&clock, &config, upstream).await;
        assert_eq!(engine.started.added.len(), accounts.len());
        Fleet {
            sim,
            registry: engine.registry,
            directory: engine.directory,
            metrics: engine.metrics,
            clock,
            accounts,
        }
    }

    /// A fleet on tokio's paused clock with WeChat's real lifetimes.
    async fn virtual_time(specs: &[Spec]) -> Fleet {
        let (clock, sim) = support::virtual_simulator();
        Fleet::start(clock, sim, specs).await
    }

    /// The `/metrics` text (fleet registry and per-account series).
    fn scrape(&self) -> String {
        String::from_utf8(self.directory.encode_metrics(&self.metrics, self.now_ms()))
            .expect("the exposition is UTF-8")
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_unix_ms()
    }

    /// An admin refresh of `appid` on behalf of `client`.
    async fn admin_refresh(&self, appid: &AppId, client: Option<&str>) -> RefreshResult {
        self.route(appid, Reason::Admin, None, client).await
    }

    /// Reports the current token of `appid` as stale on behalf of `client`.
    async fn report_current(&self, appid: &AppId, client: Option<&str>) -> RefreshResult {
        let current = self.token(appid).expect("a token").token.clone();
        self.route(appid, Reason::StaleReport, Some(current), client)
            .await
    }

    /// Routes a refresh of `appid` through the registry, as the API does.
    async fn route(
        &self,
        appid: &AppId,
        reason: Reason,
        stale: Option<wxtoken::domain::AccessToken>,
        client: Option<&str>,
    ) -> RefreshResult {
        self.registry
            .send(RouteRefresh {
                appid: appid.clone(),
                reason,
                stale,
                client: client.map(Arc::from),
            })
            .await
            .expect("the registry answers")
    }

    fn token(&self, appid: &AppId) -> Option<Arc<TokenRecord>> {
        self.directory.get(appid).and_then(|slot| slot.token())
    }

    fn state(&self, appid: &AppId) -> State {
        self.directory
            .get(appid)
            .expect("configured account")
            .status()
            .state
    }

    fn calls(&self, appid: &AppId) -> u64 {
        token_calls(&self.sim.stats(), appid.as_str())
    }

    /// When the next refresh (or retry) of `appid` is planned.
    fn next_refresh_at_ms(&self, appid: &AppId) -> Option<i64> {
        self.directory
            .get(appid)
            .and_then(|s| s.status().next_refresh_at_ms)
    }

    /// Sleeps (virtual or real time) in small steps until `done`, at most `limit`.
    async fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&Fleet) -> bool) {
        Wait::up_to(limit)
            .every(Duration::from_millis(50))
            .until(what, || done(self))
            .await
    }

    /// Asserts that every token a client could be handed now is live at WeChat.
    fn assert_served_tokens_are_valid(&self) {
        let now = self.now_ms();
        for slot in self.directory.all() {
            if let Some(record) = slot.token()
                && record.usable_secs(now).is_some()
            {
                assert!(
                    self.sim
                        .is_token_valid(slot.appid.as_str(), record.token.expose()),
                    "{} would be served a token WeChat no longer accepts (fetched {} ms ago, serve_until in {} ms)",
                    slot.appid,
                    now - record.fetched_at_ms,
                    record.serve_until_ms - now,
                );
            }
        }
    }
}

/// Accounts for `specs`, each registered through `register` with its real
/// secret (a broken account is configured with a wrong one).
fn make_accounts(specs: &[Spec], register: impl Fn(AppRegistration)) -> Vec<AccountConfig> {
    specs
        .iter()
        .map(|spec| {
            let appid = support::unique_appid();
            let secret = format!("engine-secret-{appid}");
            register(AppRegistration {
                appid: appid.to_string(),
                secret: secret.clone(),
                ip_whitelist: vec![],
            });
            let configured = if spec.broken {
                format!("wrong-{secret}")
            } else {
                secret
            };
            AccountConfig {
                name: format!("engine {appid}"),
                appid,
                secret: SecretString::from(configured),
                mode: spec.mode,
                enabled: true,
                kind: AccountKind::Wechat,
                tickets: Vec::new(),
                fallback_to_stable: false,
            }
        })
        .collect()
}

#[actix_web::test]
async fn a_hundred_accounts_stay_fresh_over_six_lifetimes_in_virtual_time() {
    const LIFETIMES: u64 = 6;
    const LIFE_MS: i64 = 7_200_000;
    let mut specs = vec![working(Mode::Legacy); 50];
    specs.extend(vec![working(Mode::Stable); 50]);
    let fleet = Fleet::virtual_time(&specs).await;
    let refresh = RefreshConfig::default();

    // Every (previous, next) token pair each account went through.
    let mut seen: HashMap<AppId, Vec<Arc<TokenRecord>>> = HashMap::new();
    let step = Duration::from_secs(2);
    let steps = LIFETIMES * 7200 / step.as_secs();
    for i in 0..steps {
        tokio::time::sleep(step).await;
        fleet.assert_served_tokens_are_valid();
        let now = fleet.now_ms();
        for account in &fleet.accounts {
            let record = fleet
                .token(&account.appid)
                .unwrap_or_else(|| panic!("{} has no token after step {i}", account.appid));
            assert!(
                record.usable_secs(now).is_some(),
                "{} has no servable token after step {i}",
                account.appid
            );
            let history = seen.entry(account.appid.clone()).or_default();
            if history.last().is_none_or(|last| last.token != record.token) {
                history.push(record);
            }
        }
    }

    let mut legacy_first_refresh = Vec::new();
    let mut stable_first_refresh = Vec::new();
    for account in &fleet.accounts {
        let history = &seen[&account.appid];
        assert!(
            history.len() as u64 >= LIFETIMES,
            "{} ({}) went through only {} tokens in {LIFETIMES} lifetimes",
            account.appid,
            account.mode,
            history.len()
        );
        for pair in history.windows(2) {
            let (prev, next) = (&pair[0], &pair[1]);
            assert_eq!(prev.expires_at_ms - prev.fetched_at_ms, LIFE_MS);
            // Refreshes never come late: the next token exists before the
            // previous one expires.
            assert!(
                next.fetched_at_ms < prev.expires_at_ms,
                "{}: refreshed {} ms after expiry",
                account.appid,
                next.fetched_at_ms - prev.expires_at_ms
            );
            let age = next.fetched_at_ms - prev.fetched_at_ms;
            match account.mode {
                Mode::Legacy => {
                    let lo = ((refresh.legacy_at - refresh.jitter) * LIFE_MS as f64) as i64;
                    let hi = ((refresh.legacy_at + refresh.jitter) * LIFE_MS as f64) as i64;
                    assert!(
                        (lo..=hi + 1).contains(&age),
                        "{}: legacy refresh at {age} ms of the lifetime, outside [{lo}, {hi}]",
                        account.appid
                    );
                }
                Mode::Stable => {
                    let window = refresh.stable_window.as_millis() as i64;
                    let before_expiry = prev.expires_at_ms - next.fetched_at_ms;
                    assert!(
                        before_expiry > 0 && before_expiry <= window,
                        "{}: stable refresh {before_expiry} ms before expiry, outside the last {window} ms",
                        account.appid
                    );
                }
            }
        }
        let first = history[1].fetched_at_ms;
        match account.mode {
            Mode::Legacy => legacy_first_refresh.push(first),
            Mode::Stable => stable_first_refresh.push(first),
        }
        // No wasted fetches: every token WeChat issued was put to use.
        assert_eq!(
            fleet.sim.stats().tokens_issued_to(account.appid.as_str()),
            history.len() as u64,
            "{}: tokens issued but never served",
            account.appid
        );
    }

    // All 100 accounts started in the same instant; jitter spreads the first
    // refreshes: legacy over ±5% of the lifetime (±360 s), stable over the
    // first half of the 300 s window. No 10 s window holds more than a few.
    let legacy_peak = densest_window(&legacy_first_refresh, 10_000);
    let stable_peak = densest_window(&stable_first_refresh, 10_000);
    assert!(
        legacy_peak <= 8,
        "{legacy_peak} of 50 legacy refreshes within 10 s"
    );
    assert!(
        stable_peak <= 12,
        "{stable_peak} of 50 stable refreshes within 10 s"
    );
}

#[actix_web::test]
async fn failures_wait_as_the_taxonomy_decides() {
    let fleet = Fleet::virtual_time(&[
        working(Mode::Legacy),
        Spec {
            mode: Mode::Stable,
            broken: true,
        },
        working(Mode::Stable),
        working(Mode::Legacy),
    ])
    .await;
    let (busy, wrong_secret, minute, quota) = (
        &fleet.accounts[0].appid,
        &fleet.accounts[1].appid,
        &fleet.accounts[2].appid,
        &fleet.accounts[3].appid,
    );
    // The first fill already happened at start; fail the next attempts.
    tokio::time::sleep(Duration::from_millis(10)).await;
    for (appid, errcode, count) in [(busy, -1, 3), (minute, 45011, 1), (quota, 45009, 1)] {
        fleet
            .sim
            .try_inject_fault(FaultSpec {
                appid: Some(appid.to_string()),
                errcode: Some(errcode),
                count: Some(count),
                ..FaultSpec::default()
            })
            .expect("valid fault");
    }
    for appid in [busy, minute, quota] {
        let response = fleet.admin_refresh(appid, None).await;
        assert!(response.is_err(), "{appid}: the fault should fail it");
    }
    let started = fleet.now_ms();

    // -1 (system busy): exponential backoff from 1 s with full jitter; three
    // failures in a row cost at most 1 + 2 + 4 s before the fourth call works.
    fleet
        .wait_for(Duration::from_secs(8), "busy account recovers", |f| {
            f.state(busy) == State::Ready
        })
        .await;
    assert_eq!(
        fleet.calls(busy),
        1 + 4,
        "start-up fill, three failures, one success"
    );

    // 45011 (per-minute limit): the retry waits for the next minute.
    let minute_retry = fleet
        .next_refresh_at_ms(minute)
        .expect("a retry is planned");
    let next_minute_ms = (started / 60_000 + 1) * 60_000;
    assert!(
        minute_retry >= next_minute_ms,
        "45011 retry at {minute_retry}, before the next minute {next_minute_ms}"
    );

    // 45009 (daily quota): the retry waits for midnight China time.
    let quota_retry = fleet.next_refresh_at_ms(quota).expect("a retry is planned");
    let midnight_ms = next_china_midnight(started / 1000) * 1000;
    assert!(
        quota_retry >= midnight_ms,
        "45009 retry at {quota_retry}, before China midnight {midnight_ms}"
    );

    // 40125 (wrong secret): failing, retried no sooner than every 5 minutes.
    let before = fleet.calls(wrong_secret);
    tokio::time::sleep(Duration::from_secs(1_000)).await;
    let retries = fleet.calls(wrong_secret) - before;
    assert!(
        (3..=4).contains(&retries),
        "{retries} calls in 1000 s for a config error"
    );
    assert_eq!(fleet.state(wrong_secret), State::Failing);
    let last_error = fleet
        .directory
        .get(wrong_secret)
        .and_then(|s| s.status().last_error.clone())
        .expect("the failure is recorded");
    assert_eq!(last_error.errcode, Some(40125));

    // Meanwhile the accounts that had a token kept serving it.
    fleet.assert_served_tokens_are_valid();
    for appid in [busy, minute, quota] {
        assert!(
            fleet
                .directory
                .get(appid)
                .expect("slot")
                .is_ready(fleet.now_ms()),
            "{appid} stopped serving during its failure"
        );
    }
    // The quota-limited account made no call between its failure and midnight.
    assert_eq!(fleet.calls(quota), 2);
}

#[actix_web::test]
async fn a_panicking_account_actor_is_restarted_with_its_token_and_nobody_else_notices() {
    let fleet = Fleet::virtual_time(&[
        working(Mode::Legacy),
        working(Mode::Stable),
        working(Mode::Legacy),
    ])
    .await;
    fleet
        .wait_for(Duration::from_secs(1), "fill", |f| {
            f.directory.not_ready(f.now_ms()).is_empty()
        })
        .await;
    let victim = fleet.accounts[0].appid.clone();
    let tokens: Vec<_> = fleet
        .accounts
        .iter()
        .map(|a| fleet.token(&a.appid).expect("a token"))
        .collect();
    let calls_before: Vec<u64> = fleet
        .accounts
        .iter()
        .map(|a| fleet.calls(&a.appid))
        .collect();

    let crashed = fleet
        .registry
        .send(CrashAccount(victim.clone()))
        .await
        .expect("the registry answers");
    assert!(crashed);
    fleet
        .wait_for(Duration::from_secs(1), "restart", |f| {
            metric_value(
                &f.scrape(),
                "wxtoken_actor_restarts_total",
                &[("appid", victim.as_str())],
            ) == 1.0
        })
        .await;

    // Same tokens everywhere, no fetch, every account still ready.
    for (i, account) in fleet.accounts.iter().enumerate() {
        assert_eq!(fleet.token(&account.appid).expect("a token"), tokens[i]);
        assert_eq!(
            fleet.calls(&account.appid),
            calls_before[i],
            "{}",
            account.appid
        );
        assert_eq!(fleet.state(&account.appid), State::Ready);
    }
    let text = fleet.scrape();
    for other in &fleet.accounts[1..] {
        assert_eq!(
            metric_value(
                &text,
                "wxtoken_actor_restarts_total",
                &[("appid", other.appid.as_str())]
            ),
            0.0
        );
    }

    // The new actor works: it refreshes on request and keeps its schedule.
    let outcome = fleet
        .admin_refresh(&victim, None)
        .await
        .expect("the restarted actor refreshes");
    assert!(outcome.refreshed);
    assert_eq!(fleet.calls(&victim), calls_before[0] + 1);
    tokio::time::sleep(Duration::from_secs(3 * 7200)).await;
    assert!(
        fleet.calls(&victim) >= calls_before[0] + 3,
        "the schedule is armed"
    );
    fleet.assert_served_tokens_are_valid();
}

#[actix_web::test]
async fn concurrent_stale_reports_through_the_registry_cost_one_upstream_call() {
    let fleet = Fleet::virtual_time(&[working(Mode::Legacy), working(Mode::Stable)]).await;
    fleet
        .wait_for(Duration::from_secs(1), "fill", |f| {
            f.directory.not_ready(f.now_ms()).is_empty()
        })
        .await;
    for account in fleet.accounts.clone() {
        let stale = fleet.token(&account.appid).expect("a token").token.clone();
        let issued_before = fleet.sim.stats().tokens_issued_to(account.appid.as_str());
        let calls_before = fleet.calls(&account.appid);
        let reports = (0..50).map(|_| {
            fleet.route(
                &account.appid,
                Reason::StaleReport,
                Some(stale.clone()),
                None,
            )
        });
        let outcomes = futures::future::join_all(reports).await;
        let fresh = fleet.token(&account.appid).expect("a token");
        assert_ne!(fresh.token, stale);
        for outcome in outcomes {
            let outcome = outcome.expect("refreshed");
            assert_eq!(
                outcome.record.token, fresh.token,
                "everyone gets the new token"
            );
        }
        assert_eq!(
            fleet.sim.stats().tokens_issued_to(account.appid.as_str()),
            issued_before + 1,
            "{} ({}): one new token for fifty reports",
            account.appid,
            account.mode
        );
        // Stable: one normal call (WeChat still returns the reported token)
        // and one force_refresh. Legacy: one call.
        let expected_calls = match account.mode {
            Mode::Legacy => 1,
            Mode::Stable => 2,
        };
        assert_eq!(fleet.calls(&account.appid), calls_before + expected_calls);
    }
}

#[actix_web::test]
async fn a_thousand_accounts_fill_without_exceeding_max_concurrency() {
    const ACCOUNTS: usize = 1000;
    const MAX_CONCURRENCY: usize = 8;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = support::simulator(SimConfig::default()).await;
    // Every token call takes 5 ms, so requests pile up if nothing bounds them.
    sim.inject_fault(FaultSpec {
        delay_ms: Some(5),
        rate: Some(1.0),
        ..FaultSpec::default()
    });
    let (client, _) = support::client_with(
        vec![support::url(&sim)],
        Duration::from_secs(30),
        MAX_CONCURRENCY,
    );
    let specs: Vec<Spec> = (0..ACCOUNTS)
        .map(|i| {
            working(if i % 2 == 0 {
                Mode::Legacy
            } else {
                Mode::Stable
            })
        })
        .collect();
    let accounts = make_accounts(&specs, |reg| sim.register_app(reg));
    // The fleet's own in-process simulator is unused: tokens come over HTTP.
    let unused = InProcess::new(SimConfig::default(), Duration::from_secs(5)).expect("config");
    let mut config = EngineConfig::new(accounts);
    config.upstream.max_concurrency = MAX_CONCURRENCY;
    let fleet = Fleet::launch_with(Clock::system(), unused, config, Arc::new(client)).await;
    fleet
        .wait_for(
            Duration::from_secs(60),
            &format!("every one of {ACCOUNTS} accounts has a token"),
            |f| f.directory.not_ready(f.now_ms()).is_empty(),
        )
        .await;
    let stats = sim.stats();
    assert!(
        stats.max_token_calls_in_flight <= MAX_CONCURRENCY as u64,
        "{} token calls at once, limit {MAX_CONCURRENCY}",
        stats.max_token_calls_in_flight
    );
    assert!(
        stats.max_token_calls_in_flight >= 2,
        "the fill ran one call at a time"
    );
    let issued: u64 = fleet
        .accounts
        .iter()
        .map(|a| stats.tokens_issued_to(a.appid.as_str()))
        .sum();
    assert_eq!(issued, ACCOUNTS as u64, "one token per account");
    sim.stop().await;
}

/// A token source that panics on its first `token_panics` token fetches and
/// first `ticket_panics` ticket fetches, then asks the simulator.
struct Panicky {
    sim: InProcess,
    token_panics: AtomicU32,
    ticket_panics: AtomicU32,
}

/// Takes one from `left` unless it is 0; true when it did.
fn take_one(left: &AtomicU32) -> bool {
    left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl TokenSource for Panicky {
    fn fetch(
        &self,
        req: wxtoken::wechat::FetchRequest,
    ) -> futures::future::BoxFuture<
        'static,
        Result<wxtoken::wechat::TokenGrant, wxtoken::wechat::UpstreamError>,
    > {
        let panic = take_one(&self.token_panics);
        let inner = self.sim.fetch(req);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if panic {
                panic!("a bug inside a token fetch");
            }
            inner.await
        })
    }

    fn fetch_ticket(
        &self,
        token: wxtoken::domain::AccessToken,
        kind: wxtoken::domain::TicketKind,
    ) -> futures::future::BoxFuture<
        'static,
        Result<wxtoken::wechat::TicketGrant, wxtoken::wechat::UpstreamError>,
    > {
        let panic = take_one(&self.ticket_panics);
        let inner = self.sim.fetch_ticket(token, kind);
        Box::pin(async move {
            if panic {
                panic!("a bug inside a ticket fetch");
            }
            inner.await
        })
    }
}

#[actix_web::test]
async fn a_panicking_refresh_task_is_a_counted_failure_that_is_retried() {
    let (clock, sim) = support::virtual_simulator();
    let mut accounts = make_accounts(&[working(Mode::Legacy), working(Mode::Stable)], |reg| {
        sim.try_register_app(reg).expect("valid registration")
    });
    accounts[1].tickets = vec![wxtoken::domain::TicketKind::Jsapi];
    let upstream: Arc<dyn TokenSource> = Arc::new(Panicky {
        sim: sim.clone(),
        // The first fetch of each account panics, and the first ticket fetch.
        token_panics: AtomicU32::new(2),
        ticket_panics: AtomicU32::new(1),
    });
    let fleet = Fleet::launch(clock, sim, accounts, upstream).await;
    fleet
        .wait_for(Duration::from_secs(30), "both accounts recover", |f| {
            f.accounts.iter().all(|a| f.state(&a.appid) == State::Ready)
        })
        .await;
    let ticketed = &fleet.accounts[1].appid;
    fleet
        .wait_for(Duration::from_secs(30), "the ticket is fetched", |f| {
            f.directory
                .get(ticketed)
                .and_then(|s| s.ticket(wxtoken::domain::TicketKind::Jsapi))
                .is_some_and(|t| t.usable_secs(f.now_ms()).is_some())
        })
        .await;
    fleet.assert_served_tokens_are_valid();
    let text = fleet.scrape();
    for account in &fleet.accounts {
        let appid = account.appid.as_str();
        assert_eq!(
            metric_value(
                &text,
                "wxtoken_refreshes_total",
                &[("appid", appid), ("result", "error")]
            ),
            1.0,
            "{appid}: the panic counts as one failed attempt"
        );
    }
    assert_eq!(
        metric_value(&text, "wxtoken_task_panics_total", &[("task", "refresh")]),
        2.0
    );
    assert_eq!(
        metric_value(&text, "wxtoken_task_panics_total", &[("task", "ticket")]),
        1.0
    );
}

#[actix_web::test]
async fn a_late_processed_legacy_fetch_never_leaves_a_superseded_token_served() {
    // WeChat's real lifetimes and grace, a 5 s upstream timeout. A legacy
    // fetch times out at wxtoken but WeChat processes it 8 s after it was
    // sent: the token it mints (that nobody receives) kills whatever wxtoken
    // fetched before it, 5 minutes later.
    let fleet = Fleet::virtual_time(&[working(Mode::Legacy), working(Mode::Legacy)]).await;
    let victim = fleet.accounts[0].appid.clone();
    fleet
        .sim
        .try_inject_fault(FaultSpec {
            api: Some("token".to_string()),
            appid: Some(victim.to_string()),
            count: Some(1),
            delay_ms: Some(8_000),
            ..FaultSpec::default()
        })
        .expect("valid fault");
    let answer = fleet.admin_refresh(&victim, None).await;
    assert!(answer.is_err(), "the fetch timed out");
    // Watch every second for one whole token lifetime: no served token is
    // ever one WeChat has killed, and the account keeps a token.
    let mut gaps = 0;
    for _ in 0..7_200 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        fleet.assert_served_tokens_are_valid();
        if !fleet
            .directory
            .get(&victim)
            .expect("slot")
            .is_ready(fleet.now_ms())
        {
            gaps += 1;
        }
    }
    assert_eq!(gaps, 0, "seconds without a token to serve");
    let issued = fleet.sim.stats().tokens_issued_to(victim.as_str());
    assert!(
        issued <= 6,
        "{issued} tokens: the late answer costs one extra fetch, not a storm"
    );
}

#[actix_web::test]
async fn a_reader_reporting_the_current_token_cannot_spend_the_forces_kept_for_admins() {
    let fleet = Fleet::virtual_time(&[working(Mode::Stable)]).await;
    let appid = fleet.accounts[0].appid.clone();
    // Two readers report the current stable token every 31 s for an hour:
    // each report that gets through would force a rotation.
    let mut throttled = 0;
    for i in 0..116 {
        tokio::time::sleep(Duration::from_secs(31)).await;
        let client = if i % 2 == 0 { "reader-a" } else { "reader-b" };
        match fleet.report_current(&appid, Some(client)).await {
            Ok(_) => {}
            Err(wxtoken::account::RefreshError::Throttled { retry_after }) => {
                assert!(retry_after >= Duration::from_secs(1));
                throttled += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let forced = fleet.sim.stats().force_refreshes_of(appid.as_str());
    assert!(
        forced <= 7,
        "{forced} forced rotations in an hour from stale reports"
    );
    assert!(throttled > 100, "{throttled} reports throttled");
    // The admin still has forces left.
    tokio::time::sleep(Duration::from_secs(31)).await;
    fleet
        .admin_refresh(&appid, Some("admin"))
        .await
        .expect("the admin's forced refresh is allowed");
    assert_eq!(
        fleet.sim.stats().force_refreshes_of(appid.as_str()),
        forced + 1
    );
}

#[actix_web::test]
async fn one_client_makes_an_account_refresh_at_most_once_a_minute_and_admins_every_30_s() {
    let fleet = Fleet::virtual_time(&[working(Mode::Legacy), working(Mode::Legacy)]).await;
    let (reported, administered) = (
        fleet.accounts[0].appid.clone(),
        fleet.accounts[1].appid.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Legacy: a stale report of the current token fetches a new one...
    let first = fleet
        .report_current(&reported, Some("reader-a"))
        .await
        .expect("refreshed");
    assert!(first.refreshed);
    // ...the same client again 31 s later is throttled (once a minute)...
    tokio::time::sleep(Duration::from_secs(31)).await;
    let again = fleet.report_current(&reported, Some("reader-a")).await;
    assert!(
        matches!(again, Err(wxtoken::account::RefreshError::Throttled { retry_after }) if retry_after <= Duration::from_secs(29)),
        "{again:?}"
    );
    // ...while another client may (the account's own spacing is 30 s).
    let other = fleet
        .report_current(&reported, Some("reader-b"))
        .await
        .expect("refreshed");
    assert!(other.refreshed);

    // Admin refreshes of a legacy account: at most one every 30 s.
    fleet
        .admin_refresh(&administered, Some("admin"))
        .await
        .expect("the first admin refresh");
    let calls = fleet.calls(&administered);
    for _ in 0..30 {
        let throttled = fleet.admin_refresh(&administered, Some("admin-2")).await;
        assert!(
            matches!(
                throttled,
                Err(wxtoken::account::RefreshError::Throttled { .. })
            ),
            "{throttled:?}"
        );
    }
    assert_eq!(
        fleet.calls(&administered),
        calls,
        "no rotation while throttled"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    fleet
        .admin_refresh(&administered, Some("admin-2"))
        .await
        .expect("allowed again after 30 s");
}

/// The congestion of 100,000 accounts (half legacy, half stable) behind 32
/// upstream calls in flight with 100 ms of latency, scaled down with the same
/// pressure: the limit needs `accounts × latency / limit` = 312.5 s for one
/// call per account, so the calls a refresh window needs per second stand in
/// the same ratio to what the limit carries. All accounts start at once (a
/// cold start); over three lifetimes no account may ever lack a valid token,
/// no refresh may finish after the serve time of the token it replaces, a
/// stable account makes one call per lifetime (12 a day) and a legacy one at
/// most 15 a day.
#[actix_web::test]
async fn refreshes_behind_a_congested_upstream_limit_are_never_late_over_three_lifetimes() {
    use support::congestion::{Figures, LIFE_MS, Timed, Watch, with_latency};
    const ACCOUNTS: usize = 500;
    const LIMIT: usize = 2;
    const LATENCY: Duration = Duration::from_millis(1_250);
    const LIFETIMES: u32 = 3;
    assert_eq!(
        ACCOUNTS as u128 * LATENCY.as_millis() / LIMIT as u128,
        100_000 * 100 / 32,
        "the pressure of 100,000 accounts at 32 in flight and 100 ms"
    );
    let (clock, sim) = support::virtual_simulator();
    with_latency(&sim, LATENCY);
    let specs: Vec<Spec> = (0..ACCOUNTS)
        .map(|i| {
            working(if i % 2 == 0 {
                Mode::Legacy
            } else {
                Mode::Stable
            })
        })
        .collect();
    let accounts = make_accounts(&specs, |reg| {
        sim.try_register_app(reg).expect("valid registration")
    });
    let timed = Timed::new(Arc::new(sim.clone()), clock.clone(), &accounts);
    let mut config = EngineConfig::new(accounts);
    config.upstream.max_concurrency = LIMIT;
    let started = clock.now_unix_ms();
    let fleet = Fleet::launch_with(clock, sim, config, Arc::new(timed.clone())).await;
    timed.watch(fleet.directory.clone());
    let mut watch = Watch::new(&fleet.directory, &fleet.accounts);

    // Until every account is filled, then three lifetimes more: every 2 s
    // whether each account has a token to serve, every 10 s whether WeChat
    // still accepts it.
    let step = Duration::from_secs(2);
    let mut end = None;
    for i in 0u64.. {
        if end.is_some_and(|end| fleet.now_ms() >= end) {
            break;
        }
        tokio::time::sleep(step).await;
        let now = fleet.now_ms();
        watch.observe(now, (i % 5 == 0).then_some(&fleet.sim));
        if end.is_none() && watch.filled() == ACCOUNTS {
            end = Some(now + i64::from(LIFETIMES) * LIFE_MS + step.as_millis() as i64);
        }
        assert!(
            now - started < 2 * i64::from(LIFETIMES) * LIFE_MS,
            "the fill never completed"
        );
    }
    let f = Figures::of(
        &timed.calls(),
        &fleet.accounts,
        started,
        fleet.now_ms(),
        LIFETIMES,
    );
    let in_flight = fleet.sim.stats().max_token_calls_in_flight;
    let carried_10s = LIMIT as f64 * 10_000.0 / LATENCY.as_millis() as f64;
    println!(
        "congestion: fill {:.1} s; {} calls; max in flight {in_flight} (limit {LIMIT}); \
         ever without a valid token {}; late refreshes {} (least slack {:.1} s); \
         busiest 10 s {} (at {:.0} s) / mean {:.1} / the limit carries {carried_10s:.0}; \
         per account-day stable {:.2} (min {:.2}, max {:.2}, long run {:.2}), \
         legacy {:.2} (min {:.2}, max {:.2}, long run {:.2})",
        f.fill_ms as f64 / 1000.0,
        f.calls,
        watch.ever_without_valid_token(),
        f.late,
        f.least_slack_ms as f64 / 1000.0,
        f.busiest_10s,
        f.busiest_at_ms as f64 / 1000.0,
        f.mean_10s,
        f.stable.mean,
        f.stable.min,
        f.stable.max,
        f.stable.long_run,
        f.legacy.mean,
        f.legacy.min,
        f.legacy.max,
        f.legacy.long_run,
    );
    assert_eq!(in_flight, LIMIT as u64, "the limit was reached and held");
    assert_eq!(
        watch.ever_without_valid_token(),
        0,
        "accounts once without a valid token"
    );
    assert_eq!(
        f.late, 0,
        "refreshes finished after their token's serve time"
    );
    assert_eq!(
        (f.stable.min, f.stable.max),
        (12.0, 12.0),
        "stable calls per account-day: one per lifetime"
    );
    assert!(
        f.legacy.max <= 15.0,
        "legacy calls per account-day up to {}",
        f.legacy.max
    );
    // A legacy token is refreshed at legacy_at ± jitter of its life counted
    // from when its request was sent: never sooner...
    let refresh = RefreshConfig::default();
    let soonest = ((refresh.legacy_at - refresh.jitter) * LIFE_MS as f64) as i64;
    assert!(
        f.legacy.shortest_gap_ms >= soonest,
        "a legacy token was refreshed {} ms after it was fetched (soonest {soonest})",
        f.legacy.shortest_gap_ms
    );
    // ...and at legacy_at (0.8: 15 a day) on average; the sampling error of
    // 750 intervals is about 0.02 a day, so 0.1 is five of them.
    assert!(
        f.legacy.long_run <= 15.1,
        "legacy calls per account-day in the long run: {}",
        f.legacy.long_run
    );
}
