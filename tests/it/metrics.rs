//! Tests: what `/metrics` exports per account in each `metrics.per_account`
//! mode, against a real server fetching from the simulator; the mode's
//! configuration key (values, errors with their line, reload); every
//! exposition passes `promtool check metrics`; counters survive a reload
//! that restarts an account and show in essential mode once non-zero; the
//! Open Platform series (verify ticket age and count, authorizers by state,
//! the component's token expiry) in every mode, with no ticket, code or
//! refresh token anywhere in `/metrics`.

use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;
use reqwest::StatusCode;
use wxtoken::config::{LoadOptions, load_str};
use wxtoken::domain::{AppId, Mode, TicketKind};
use wxtoken::metrics::{PER_ACCOUNT_FAMILIES, PerAccount};
use wxtoken::registry::CrashAccount;

use crate::app::{ADMIN_KEY, READER_KEY, TestApp, TestAppBuilder, json};
use crate::observability::promtool_check_metrics;
use crate::support::metric_value;
use crate::support::wait::Wait;

/// A ticket account, a legacy account and a broken one (40125), in `mode`
/// (`None`: the key absent).
async fn app_in(mode: Option<&str>) -> TestApp {
    let mut builder = TestAppBuilder::new()
        .account_with_tickets(Mode::Stable, &[TicketKind::Jsapi])
        .account(Mode::Legacy)
        .broken_account(Mode::Stable);
    if let Some(mode) = mode {
        builder = builder.metrics_setting(&format!("per_account: {mode}"));
    }
    let app = builder.spawn().await;
    let ticketed = app.accounts[0].appid.to_string();
    app.wait_for_ticket(&ticketed, "jsapi").await;
    app
}

/// The sample lines of the family `name` (exactly that name).
fn samples<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .collect()
}

/// The sample lines of `name` for `appid`.
fn of<'t>(text: &'t str, name: &str, appid: &str) -> Vec<&'t str> {
    let label = format!("appid=\"{appid}\"");
    samples(text, name)
        .into_iter()
        .filter(|l| l.contains(&label))
        .collect()
}

/// No token, ticket or secret of `app` in `text`.
fn assert_no_secret(app: &TestApp, text: &str) {
    for account in &app.accounts {
        assert!(!text.contains(&account.secret), "a secret in /metrics");
        assert!(!text.contains(&account.configured_secret));
        if !account.broken {
            assert!(!text.contains(&app.current_token(&account.appid)));
        }
        if let Some(slot) = app.state.directory.get(&account.appid) {
            for ticket in slot.tickets() {
                assert!(
                    !text.contains(ticket.ticket.expose()),
                    "a ticket in /metrics"
                );
            }
        }
    }
}

#[actix_web::test]
async fn full_mode_exports_every_series_with_counters_from_start() {
    let app = app_in(Some("full")).await;
    let text = app.metrics().await;
    promtool_check_metrics(
        &text,
        "full_mode_exports_every_series_with_counters_from_start",
    );
    assert_no_secret(&app, &text);
    let [ticketed, legacy, broken] = [0, 1, 2].map(|i| app.accounts[i].appid.as_str());

    for appid in [ticketed, legacy, broken] {
        assert_eq!(
            of(&text, "wxtoken_refreshes_total", appid).len(),
            10,
            "{appid}"
        );
        assert_eq!(
            of(&text, "wxtoken_account_state", appid).len(),
            4,
            "{appid}"
        );
        assert_eq!(
            of(&text, "wxtoken_actor_restarts_total", appid),
            [format!(
                "wxtoken_actor_restarts_total{{appid=\"{appid}\"}} 0"
            )]
        );
        assert_eq!(of(&text, "wxtoken_upstream_calls_today", appid).len(), 1);
        assert_eq!(
            of(&text, "wxtoken_next_refresh_timestamp_seconds", appid).len(),
            1
        );
    }
    for appid in [ticketed, legacy] {
        for name in [
            "wxtoken_token_expiry_timestamp_seconds",
            "wxtoken_token_fetched_timestamp_seconds",
            "wxtoken_token_serve_until_timestamp_seconds",
        ] {
            assert_eq!(of(&text, name, appid).len(), 1, "{name} {appid}");
        }
        assert_eq!(
            metric_value(
                &text,
                "wxtoken_account_state",
                &[("appid", appid), ("state", "ready")]
            ),
            1.0
        );
    }
    assert_eq!(
        of(&text, "wxtoken_account_config_error", broken),
        [format!(
            "wxtoken_account_config_error{{appid=\"{broken}\",errcode=\"40125\",ip=\"\"}} 1"
        )]
    );
    assert!(of(&text, "wxtoken_token_expiry_timestamp_seconds", broken).is_empty());
    assert_eq!(
        of(&text, "wxtoken_ticket_refreshes_total", ticketed),
        [
            format!(
                "wxtoken_ticket_refreshes_total{{appid=\"{ticketed}\",result=\"ok\",type=\"jsapi\"}} 1"
            ),
            format!(
                "wxtoken_ticket_refreshes_total{{appid=\"{ticketed}\",result=\"error\",type=\"jsapi\"}} 0"
            ),
        ]
    );
    assert_eq!(
        of(&text, "wxtoken_ticket_expiry_timestamp_seconds", ticketed).len(),
        1
    );
    assert!(of(&text, "wxtoken_ticket_refreshes_total", legacy).is_empty());
    assert_eq!(
        metric_value(&text, "wxtoken_metrics_per_account", &[("mode", "full")]),
        1.0
    );
}

#[actix_web::test]
async fn essential_mode_exports_what_the_dashboard_and_alerts_use_and_no_zeros() {
    let app = app_in(Some("essential")).await;
    let text = app.metrics().await;
    promtool_check_metrics(
        &text,
        "essential_mode_exports_what_the_dashboard_and_alerts_use_and_no_zeros",
    );
    assert_no_secret(&app, &text);
    let [ticketed, legacy, broken] = [0, 1, 2].map(|i| app.accounts[i].appid.as_str());

    for (appid, state) in [(ticketed, "ready"), (legacy, "ready"), (broken, "failing")] {
        assert_eq!(
            of(&text, "wxtoken_account_state", appid),
            [format!(
                "wxtoken_account_state{{appid=\"{appid}\",state=\"{state}\"}} 1"
            )]
        );
        assert_eq!(of(&text, "wxtoken_upstream_calls_today", appid).len(), 1);
        for absent in [
            "wxtoken_token_fetched_timestamp_seconds",
            "wxtoken_token_serve_until_timestamp_seconds",
            "wxtoken_next_refresh_timestamp_seconds",
            "wxtoken_actor_restarts_total",
            "wxtoken_ticket_refreshes_total",
        ] {
            assert!(of(&text, absent, appid).is_empty(), "{absent} {appid}");
        }
    }
    for appid in [ticketed, legacy] {
        assert_eq!(
            of(&text, "wxtoken_token_expiry_timestamp_seconds", appid).len(),
            1
        );
        assert!(
            of(&text, "wxtoken_refreshes_total", appid).is_empty(),
            "{appid}: only failures"
        );
    }
    // The broken account's failures, and only those.
    let failures = of(&text, "wxtoken_refreshes_total", broken);
    assert!(!failures.is_empty());
    assert!(
        failures
            .iter()
            .all(|l| l.contains("result=\"error\"") && !l.ends_with(" 0"))
    );
    assert_eq!(of(&text, "wxtoken_account_config_error", broken).len(), 1);
    assert_eq!(
        of(&text, "wxtoken_ticket_expiry_timestamp_seconds", ticketed).len(),
        1
    );
    // Every result is still counted for the fleet.
    assert!(
        metric_value(
            &text,
            "wxtoken_fleet_refreshes_total",
            &[("reason", "startup"), ("result", "ok")]
        ) >= 2.0
    );
    assert_eq!(metric_value(&text, "wxtoken_fleet_config_errors", &[]), 1.0);

    // The budget: a healthy account without tickets costs at most 380
    // bytes, 145 of them its getApiQuota reading (limit and used).
    let bytes: usize = text
        .lines()
        .filter(|l| l.contains(&format!("appid=\"{legacy}\"")))
        .map(|l| l.len() + 1)
        .sum();
    assert_eq!(of(&text, "wxtoken_upstream_quota_limit", legacy).len(), 1);
    assert!(bytes <= 380, "{bytes} bytes for {legacy}");

    // A restart shows once it happened.
    let crashed = app
        .state
        .registry
        .send(CrashAccount(app.accounts[1].appid.clone()))
        .await
        .expect("the registry answers");
    assert!(crashed);
    let restarted = Wait::up_to(Duration::from_secs(10))
        .for_value_async("the restart shows", async || {
            let text = app.metrics().await;
            let lines = of(&text, "wxtoken_actor_restarts_total", legacy).join("\n");
            (!lines.is_empty()).then_some(lines)
        })
        .await;
    assert_eq!(
        restarted,
        format!("wxtoken_actor_restarts_total{{appid=\"{legacy}\"}} 1")
    );
}

#[actix_web::test]
async fn none_mode_exports_no_account_but_the_fleet_aggregates() {
    let app = app_in(Some("none")).await;
    let text = app.metrics().await;
    promtool_check_metrics(
        &text,
        "none_mode_exports_no_account_but_the_fleet_aggregates",
    );
    for account in &app.accounts {
        assert!(!text.contains(account.appid.as_str()), "{}", account.appid);
    }
    for family in PER_ACCOUNT_FAMILIES {
        assert!(samples(&text, family.name).is_empty(), "{}", family.name);
    }
    assert_eq!(
        metric_value(&text, "wxtoken_accounts", &[("state", "ready")]),
        2.0
    );
    assert_eq!(metric_value(&text, "wxtoken_fleet_config_errors", &[]), 1.0);
    assert!(
        metric_value(
            &text,
            "wxtoken_fleet_refreshes_total",
            &[("reason", "startup"), ("result", "ok")]
        ) >= 2.0
    );
    assert!(
        metric_value(
            &text,
            "wxtoken_fleet_ticket_refreshes_total",
            &[("type", "jsapi"), ("result", "ok")]
        ) >= 1.0
    );
    assert_eq!(
        metric_value(&text, "wxtoken_metrics_per_account", &[("mode", "none")]),
        1.0
    );
}

#[actix_web::test]
async fn a_reload_switches_the_mode_and_keeps_the_counts_of_a_changed_account() {
    let app = TestAppBuilder::new()
        .accounts(&[Mode::Stable, Mode::Legacy])
        .spawn()
        .await;
    let appid = app.accounts[1].appid.as_str().to_string();
    let startup_ok = |text: &str| {
        metric_value(
            text,
            "wxtoken_refreshes_total",
            &[("appid", &appid), ("reason", "startup"), ("result", "ok")],
        )
    };
    // Absent key, 2 accounts: full.
    let original = std::fs::read_to_string(&app.config_path).expect("the config file");
    assert!(!original.contains("metrics:"));
    let text = app.metrics().await;
    assert_eq!(of(&text, "wxtoken_account_state", &appid).len(), 4);
    assert_eq!(startup_ok(&text), 1.0);

    app.write_config_text(&format!("{original}metrics:\n  per_account: none\n"));
    json(app.admin_reload(Some(ADMIN_KEY)).await, StatusCode::OK).await;
    let text = app.metrics().await;
    assert!(!text.contains(&appid), "{text}");
    assert_eq!(
        metric_value(&text, "wxtoken_metrics_per_account", &[("mode", "none")]),
        1.0
    );

    // Back to the default, with the account renamed: its actor restarts on
    // a new slot, and its counts carry over.
    let renamed = original.replace("Test account 1", "Renamed account");
    assert_ne!(renamed, original);
    app.write_config_text(&renamed);
    let summary = json(app.admin_reload(Some(ADMIN_KEY)).await, StatusCode::OK).await;
    assert_eq!(summary["changed"], serde_json::json!([appid]), "{summary}");
    let text = app.metrics().await;
    assert_eq!(of(&text, "wxtoken_account_state", &appid).len(), 4);
    assert_eq!(
        startup_ok(&text),
        1.0,
        "the count of the old slot carried over"
    );
}

// ---------------------------------------------------------------- the key

fn load(yaml: &str) -> Result<wxtoken::config::Loaded, Vec<String>> {
    load_str(
        yaml,
        Path::new("test.yaml"),
        &LoadOptions::from_pairs([("S", "a-secret-value")]),
    )
    .map_err(|problems| problems.iter().map(ToString::to_string).collect())
}

const ACCOUNTS: &str = "accounts:\n  - appid: wx1111111111111111\n    secret: ${S}\n";

#[test]
fn per_account_takes_the_three_modes_and_defaults_to_the_rule() {
    for mode in PerAccount::ALL {
        let yaml = format!("metrics:\n  per_account: {mode}\n{ACCOUNTS}");
        let loaded = load(&yaml).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(loaded.config.metrics.per_account, Some(mode));
    }
    for absent in ["", "metrics:\n", "metrics: {}\n"] {
        let loaded = load(&format!("{absent}{ACCOUNTS}")).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(loaded.config.metrics.per_account, None, "{absent:?}");
    }
}

#[test]
fn bad_metrics_settings_are_errors_with_their_line() {
    let cases = [
        (
            "metrics:\n  per_account: everything\n",
            "test.yaml:2: metrics.per_account: unknown per-account mode \"everything\"; expected full",
        ),
        (
            "metrics:\n  per_acount: full\n",
            "test.yaml:2: unknown key \"per_acount\" in metrics (did you mean \"per_account\"?)",
        ),
        (
            "per_account: full\n",
            "test.yaml:1: unknown key \"per_account\" at the top level (it belongs under `metrics:`)",
        ),
        (
            "metrics: full\n",
            "test.yaml:1: metrics must be a mapping of keys (per_account)",
        ),
        (
            "metrics:\n  per_account: [full]\n",
            "test.yaml:2: metrics.per_account",
        ),
    ];
    for (section, want) in cases {
        let problems = load(&format!("{section}{ACCOUNTS}"))
            .err()
            .unwrap_or_else(|| {
                panic!("{section:?} loaded");
            });
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "{section:?}: want {want:?}, got {problems:?}"
        );
    }
}

#[test]
fn check_reports_a_bad_mode_with_its_line() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("accounts.yaml");
    std::fs::write(
        &path,
        format!("listen: 127.0.0.1:8080\nmetrics:\n  per_account: verbose\n{ACCOUNTS}"),
    )
    .expect("write the config");
    let out = Command::cargo_bin("wxtoken")
        .expect("the wxtoken binary is built")
        .env("S", "a-secret-value")
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("check runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3: metrics.per_account: unknown per-account mode \"verbose\"",
            path.display()
        )),
        "{stderr}"
    );
}

// ---------------------------------------------------------------- Open Platform

/// Authorizes `authorizer` with the app's first component at the simulator
/// (which pushes the encrypted `authorized` event to the server) and waits
/// until its token is served.
pub(crate) async fn authorize(app: &TestApp, authorizer: &AppId) {
    let component = &app.component().appid;
    let answer = app
        .sim_control(
            &format!("/sim/components/{component}/authorize"),
            serde_json::json!({ "authorizer_appid": authorizer.as_str() }),
        )
        .await;
    assert_eq!(answer["delivered"], true, "{answer}");
    Wait::up_to(Duration::from_secs(10))
        .until_async("the authorizer's first token", async || {
            app.get_token(authorizer.as_str(), Some(READER_KEY))
                .await
                .status()
                == StatusCode::OK
        })
        .await;
}

/// An account and a component with one authorizer, in `mode` (`None`: the
/// key absent, so full); answers the authorizer's appid.
async fn platform_in(mode: Option<&str>) -> (TestApp, AppId) {
    let mut builder = TestAppBuilder::new().account(Mode::Stable).component(true);
    if let Some(mode) = mode {
        builder = builder.metrics_setting(&format!("per_account: {mode}"));
    }
    let app = builder.spawn().await;
    let authorizer = crate::support::unique_appid();
    authorize(&app, &authorizer).await;
    (app, authorizer)
}

/// No verify ticket, code, refresh token, token or secret of the component
/// and its `authorizer` in `text`.
fn assert_no_open_secret(app: &TestApp, authorizer: &AppId, text: &str) {
    let c = app.component();
    for secret in [&c.secret, &c.token, &c.aes_key] {
        assert!(
            !text.contains(secret.as_str()),
            "a component secret in /metrics"
        );
    }
    let component = app
        .state
        .directory
        .get(&c.appid)
        .expect("the component's slot");
    let open = component
        .open()
        .expect("the component's Open Platform state");
    assert!(!open.verify_tickets.is_empty());
    for ticket in &open.verify_tickets {
        assert!(
            !text.contains(ticket.ticket.expose()),
            "a verify ticket in /metrics"
        );
    }
    let slot = app
        .state
        .directory
        .get(authorizer)
        .expect("the authorizer's slot");
    let open = slot.open().expect("the authorizer's Open Platform state");
    let refresh = open.refresh_token.as_ref().expect("a refresh token");
    assert!(
        !text.contains(refresh.expose()),
        "a refresh token in /metrics"
    );
    if let Some(code) = &open.auth_code {
        assert!(!text.contains(code.code.expose()), "a code in /metrics");
    }
    for appid in [&c.appid, authorizer] {
        assert!(
            !text.contains(&app.current_token(appid)),
            "a token in /metrics"
        );
    }
}

#[actix_web::test]
async fn the_open_platform_series_show_ticket_age_and_authorizers_by_state_and_no_secret() {
    let (app, authorizer) = platform_in(None).await;
    let component = app.component().appid.to_string();
    let text = app.metrics().await;
    promtool_check_metrics(
        &text,
        "the_open_platform_series_show_ticket_age_and_authorizers_by_state_and_no_secret",
    );
    assert_no_open_secret(&app, &authorizer, &text);
    let by_component = [("component", component.as_str())];

    // The simulator pushed a ticket when the component was registered.
    let age = samples(&text, "wxtoken_component_ticket_age_seconds");
    assert_eq!(age.len(), 1, "{age:?}");
    let age = metric_value(&text, "wxtoken_component_ticket_age_seconds", &by_component);
    assert!((0.0..60.0).contains(&age), "ticket age {age}");
    let tickets = metric_value(&text, "wxtoken_component_tickets", &by_component);
    assert!((1.0..=3.0).contains(&tickets), "{tickets} tickets");

    assert_eq!(
        samples(&text, "wxtoken_authorizers"),
        [
            format!("wxtoken_authorizers{{component=\"{component}\",state=\"authorized\"}} 1"),
            format!("wxtoken_authorizers{{component=\"{component}\",state=\"needs_reauth\"}} 0"),
            format!("wxtoken_authorizers{{component=\"{component}\",state=\"unauthorized\"}} 0"),
        ]
    );
    // Both tokens, as any account's in full mode.
    for appid in [component.as_str(), authorizer.as_str()] {
        assert_eq!(
            of(&text, "wxtoken_token_expiry_timestamp_seconds", appid).len(),
            1,
            "{appid}"
        );
    }
    assert!(
        metric_value(
            &text,
            "wxtoken_open_events_total",
            &[("info_type", "component_verify_ticket"), ("result", "ok")]
        ) >= 1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "wxtoken_open_events_total",
            &[("info_type", "authorized"), ("result", "ok")]
        ),
        1.0
    );
}

#[actix_web::test]
async fn in_none_mode_the_component_keeps_its_token_expiry_and_open_platform_series() {
    let (app, authorizer) = platform_in(Some("none")).await;
    let component = app.component().appid.to_string();
    let account = app.accounts[0].appid.to_string();
    let text = app.metrics().await;
    promtool_check_metrics(
        &text,
        "in_none_mode_the_component_keeps_its_token_expiry_and_open_platform_series",
    );
    assert_no_open_secret(&app, &authorizer, &text);

    // The component's token expiry only: not the account's, not the authorizer's.
    let expiry = samples(&text, "wxtoken_token_expiry_timestamp_seconds");
    assert_eq!(expiry.len(), 1, "{expiry:?}");
    assert_eq!(
        of(&text, "wxtoken_token_expiry_timestamp_seconds", &component).len(),
        1
    );
    let expires_at = metric_value(
        &text,
        "wxtoken_token_expiry_timestamp_seconds",
        &[("appid", component.as_str())],
    );
    let now = app.state.clock.now_unix_ms() as f64 / 1000.0;
    assert!(
        expires_at > now,
        "the component token expired at {expires_at}, now {now}"
    );
    for appid in [account.as_str(), authorizer.as_str()] {
        assert!(
            of(&text, "wxtoken_account_state", appid).is_empty(),
            "{appid}"
        );
    }
    assert_eq!(
        samples(&text, "wxtoken_component_ticket_age_seconds").len(),
        1
    );
    assert_eq!(samples(&text, "wxtoken_component_tickets").len(), 1);
    assert_eq!(
        metric_value(
            &text,
            "wxtoken_authorizers",
            &[("component", component.as_str()), ("state", "authorized")]
        ),
        1.0
    );
    assert_eq!(samples(&text, "wxtoken_authorizers").len(), 3);
}
