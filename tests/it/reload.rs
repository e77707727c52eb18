//! Live reload of `accounts.yaml`: through `POST /v1/admin/reload` and the
//! file watch. Simulator counters prove that untouched accounts make no call.

use std::time::Duration;

use reqwest::StatusCode;
use wxtoken::domain::Mode;

use crate::app::{ADMIN_KEY, READER_KEY, TestApp, TestAppBuilder, json};
use crate::support::metric_value;

fn calls(app: &TestApp, appid: &str) -> u64 {
    let stats = app.sim.stats();
    stats.calls_to(appid, "token") + stats.calls_to(appid, "stable_token")
}

/// Polls (real time, bounded) until `done`.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn reload_adds_removes_and_restarts_changed_accounts_and_leaves_the_rest_alone() {
    let app = TestAppBuilder::new()
        .account(Mode::Stable)
        .account(Mode::Legacy)
        .account(Mode::Stable)
        .account(Mode::Legacy)
        .spawn()
        .await;
    let [kept, removed, remoded, resecreted] = [0, 1, 2, 3].map(|i| app.accounts[i].clone());
    let kept_token = app.current_token(&kept.appid);
    let kept_plan = app
        .state
        .directory
        .get(&kept.appid)
        .expect("slot")
        .status()
        .next_refresh_at_ms;
    let kept_calls = calls(&app, kept.appid.as_str());

    let added = app.new_account(Mode::Stable);
    let mut remoded_new = remoded.clone();
    remoded_new.mode = Mode::Legacy;
    // A new secret: WeChat rotated it and the operator pasted the new one.
    let new_secret = format!("rotated-{}", resecreted.secret);
    app.sim.register_app(wxtoken::simulator::AppRegistration {
        appid: resecreted.appid.to_string(),
        secret: new_secret.clone(),
        ip_whitelist: vec![],
    });
    let mut resecreted_new = resecreted.clone();
    resecreted_new.configured_secret = new_secret;
    app.write_config(&[
        kept.clone(),
        remoded_new.clone(),
        resecreted_new.clone(),
        added.clone(),
    ]);

    let summary = json(app.admin_reload(Some(ADMIN_KEY)).await, StatusCode::OK).await;
    assert_eq!(summary["added"], serde_json::json!([added.appid.as_str()]));
    assert_eq!(
        summary["removed"],
        serde_json::json!([removed.appid.as_str()])
    );
    let mut changed: Vec<&str> = summary["changed"]
        .as_array()
        .expect("changed is a list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    changed.sort();
    let mut want = vec![remoded.appid.as_str(), resecreted.appid.as_str()];
    want.sort();
    assert_eq!(changed, want);
    assert_eq!(summary["unchanged"], 1);

    // The removed account is gone from the API.
    let gone = app
        .get_token(removed.appid.as_str(), Some(READER_KEY))
        .await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    // The added one gets a token.
    eventually("the added account is ready", || {
        app.state
            .directory
            .get(&added.appid)
            .is_some_and(|s| s.is_ready(app.state.clock.now_unix_ms()))
    })
    .await;
    let body = json(
        app.get_token(added.appid.as_str(), Some(READER_KEY)).await,
        StatusCode::OK,
    )
    .await;
    assert!(body["access_token"].is_string());
    // The account whose mode changed now runs in legacy mode and fetched once.
    eventually("the re-moded account fetched in its new mode", || {
        app.sim.stats().calls_to(remoded.appid.as_str(), "token") == 1
    })
    .await;
    assert_eq!(
        app.state.directory.get(&remoded.appid).expect("slot").mode,
        Mode::Legacy
    );
    // The untouched account: same token, same plan, no call.
    assert_eq!(app.current_token(&kept.appid), kept_token);
    assert_eq!(
        app.state
            .directory
            .get(&kept.appid)
            .expect("slot")
            .status()
            .next_refresh_at_ms,
        kept_plan
    );
    assert_eq!(calls(&app, kept.appid.as_str()), kept_calls);

    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wxtoken_config_reloads_total",
            &[("result", "ok")]
        ),
        1.0
    );
    assert!(
        !metrics.contains(removed.appid.as_str()),
        "the removed account's series are gone"
    );
}

#[actix_web::test]
async fn an_invalid_reload_changes_nothing_and_lists_every_problem() {
    let app = TestAppBuilder::new()
        .account(Mode::Stable)
        .account(Mode::Legacy)
        .spawn()
        .await;
    let before: Vec<String> = app
        .accounts
        .iter()
        .map(|a| app.current_token(&a.appid))
        .collect();
    let original = std::fs::read_to_string(&app.config_path).expect("the config");
    let first = app.accounts[0].appid.as_str();
    // Three mistakes: a bad duration, a duplicate appid, an unknown mode.
    let broken = original.replacen("backoff_initial: 200ms", "backoff_initial: soon", 1)
        + &format!(
            "  - appid: {first}\n    secret: duplicate\n  - appid: wx9999999999999999\n    secret: x\n    mode: turbo\n"
        );
    app.write_config_text(&broken);

    let response = app.admin_reload(Some(ADMIN_KEY)).await;
    let body = json(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["error"], "invalid_config");
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .expect("problems is a list")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(problems.len() >= 3, "{problems:#?}");
    for needle in ["soon", "duplicate", "turbo"] {
        assert!(
            problems
                .iter()
                .any(|p| p.contains("accounts.yaml:") && p.contains(needle)),
            "no problem mentions {needle}: {problems:#?}"
        );
    }
    assert!(
        !body.to_string().contains("sim-secret"),
        "no secret in the answer"
    );

    // The old registry is in force: same accounts, same tokens.
    for (account, token) in app.accounts.iter().zip(&before) {
        let body = json(
            app.get_token(account.appid.as_str(), Some(READER_KEY))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(body["access_token"], token.as_str());
    }
    let missing = app.get_token("wx9999999999999999", Some(READER_KEY)).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "wxtoken_config_last_reload_successful", &[]),
        0.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "wxtoken_config_reloads_total",
            &[("result", "error")]
        ),
        1.0
    );

    // Fixed again, the next reload succeeds.
    app.write_config_text(&original);
    let ok = json(app.admin_reload(Some(ADMIN_KEY)).await, StatusCode::OK).await;
    assert_eq!(ok["unchanged"], 2);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "wxtoken_config_last_reload_successful", &[]),
        1.0
    );
}

#[actix_web::test]
async fn reload_needs_an_admin_key_for_every_account() {
    let app = TestAppBuilder::new().account(Mode::Stable).spawn().await;
    assert_eq!(
        app.admin_reload(None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.admin_reload(Some(READER_KEY)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.admin_reload(Some(ADMIN_KEY)).await.status(),
        StatusCode::OK
    );
}

#[actix_web::test]
async fn editing_the_file_reloads_it() {
    let app = TestAppBuilder::new().account(Mode::Stable).spawn().await;
    let _watch = app
        .state
        .reloader
        .as_ref()
        .expect("reload is configured")
        .watch_file()
        .expect("the config directory can be watched");
    let added = app.new_account(Mode::Legacy);
    app.write_config(&[app.accounts[0].clone(), added.clone()]);
    eventually("the file change is picked up", || {
        app.state
            .directory
            .get(&added.appid)
            .is_some_and(|s| s.is_ready(app.state.clock.now_unix_ms()))
    })
    .await;
    // A broken edit is rejected and changes nothing.
    app.write_config_text("accounts: [");
    eventually("the broken edit is seen", || {
        app.state.metrics.config_last_reload_successful.get() == 0
    })
    .await;
    assert!(app.state.directory.get(&added.appid).is_some());
}
