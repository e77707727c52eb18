//! Live reload of `accounts.yaml`: through `POST /v1/admin/reload` and the
//! file watch. Simulator counters prove that untouched accounts make no call.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use wxtoken::domain::Mode;
use wxtoken::reload::{ConfigWatcher, WATCH_DEBOUNCE};

use crate::app::{ADMIN_KEY, READER_KEY, TestApp, TestAppBuilder, json, spawn_app};
use crate::support::wait::eventually;
use crate::support::{fifo, metric_value, register_as, token_calls};

#[actix_web::test]
async fn reload_adds_removes_and_restarts_changed_accounts_and_leaves_the_rest_alone() {
    let app = TestAppBuilder::new()
        .accounts(&[Mode::Stable, Mode::Legacy, Mode::Stable, Mode::Legacy])
        .spawn()
        .await;
    let [kept, removed, remoded, resecreted] = [0, 1, 2, 3].map(|i| app.accounts[i].clone());
    let kept_token = app.current_token(&kept.appid);
    let kept_plan = app.next_refresh_at_ms(&kept.appid);
    let kept_calls = token_calls(&app.sim.stats(), kept.appid.as_str());

    let added = app.new_account(Mode::Stable);
    let mut remoded_new = remoded.clone();
    remoded_new.mode = Mode::Legacy;
    // A new secret: WeChat rotated it and the operator pasted the new one.
    let new_secret = format!("rotated-{}", resecreted.secret);
    register_as(&app.sim, resecreted.appid.as_str(), &new_secret);
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
    eventually("the added account is ready", || app.is_ready(&added.appid)).await;
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
    assert_eq!(app.next_refresh_at_ms(&kept.appid), kept_plan);
    assert_eq!(
        token_calls(&app.sim.stats(), kept.appid.as_str()),
        kept_calls
    );

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
    let app = spawn_app().await;
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
    let problems = problems_in(&body);
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

/// The `problems` list of a rejected reload's answer.
fn problems_in(body: &Value) -> Vec<&str> {
    body["problems"]
        .as_array()
        .expect("problems is a list")
        .iter()
        .filter_map(|p| p.as_str())
        .collect()
}

/// How many reloads ended with `result` (`ok` or `error`).
fn reloads(app: &TestApp, result: &str) -> u64 {
    app.state
        .metrics
        .config_reloads
        .with_label_values(&[result])
        .get()
}

/// Starts watching `app`'s configuration file.
fn watch(app: &TestApp) -> ConfigWatcher {
    app.state
        .reloader
        .as_ref()
        .expect("reload is configured")
        .watch_file()
        .expect("the config directory can be watched")
}

/// Lets a few debounce periods pass in real time: the watch runs on notify's
/// own thread, which tokio's paused clock does not drive.
async fn a_few_debounce_periods() {
    tokio::time::sleep(WATCH_DEBOUNCE * 5).await;
}

#[actix_web::test]
async fn the_file_watch_reloads_once_per_edit_and_never_for_a_read() {
    let app = TestAppBuilder::new().account(Mode::Stable).spawn().await;
    let _watch = watch(&app);
    let kept = app.accounts[0].clone();

    // What `cat accounts.yaml` and `wxtoken check` do: open and read it.
    std::fs::read_to_string(&app.config_path).expect("the config");
    wxtoken::config::load(
        &app.config_path,
        &wxtoken::config::LoadOptions::from_pairs([]),
    )
    .expect("the config is valid");
    // Written again with the same content (an editor's save without changes).
    app.write_config(std::slice::from_ref(&kept));
    a_few_debounce_periods().await;
    assert_eq!(
        (reloads(&app, "ok"), reloads(&app, "error")),
        (0, 0),
        "reading the file, or rewriting it unchanged, is not a reload"
    );

    let added = app.new_account(Mode::Legacy);
    app.write_config(&[kept.clone(), added.clone()]);
    eventually("the edit is reloaded", || reloads(&app, "ok") == 1).await;
    eventually("the added account is ready", || app.is_ready(&added.appid)).await;
    a_few_debounce_periods().await;
    assert_eq!(
        (reloads(&app, "ok"), reloads(&app, "error")),
        (1, 0),
        "one edit is one reload (the reload's own read of the file is not an edit)"
    );
}

#[actix_web::test]
async fn a_broken_edit_is_rejected_once_not_in_a_loop() {
    let app = TestAppBuilder::new().account(Mode::Stable).spawn().await;
    let _watch = watch(&app);
    let original = std::fs::read_to_string(&app.config_path).expect("the config");

    app.write_config_text("accounts: [");
    eventually("the broken edit is rejected", || {
        reloads(&app, "error") == 1
    })
    .await;
    assert_eq!(app.state.metrics.config_last_reload_successful.get(), 0);
    a_few_debounce_periods().await;
    assert_eq!(
        (reloads(&app, "ok"), reloads(&app, "error")),
        (0, 1),
        "a broken file is rejected once, not every debounce period"
    );
    assert!(app.state.directory.get(&app.accounts[0].appid).is_some());

    // Fixed again: one successful reload.
    app.write_config_text(&original);
    eventually("the fixed file is reloaded", || reloads(&app, "ok") == 1).await;
    assert_eq!(app.state.metrics.config_last_reload_successful.get(), 1);
}

/// Opens `path` for writing without blocking, so a reader stuck on it goes on.
fn release(path: &std::path::Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
}

#[actix_web::test]
async fn a_reload_with_a_fifo_secret_file_does_not_stall_the_server() {
    let app = spawn_app().await;
    let [stable, legacy] = [0, 1].map(|i| app.accounts[i].clone());
    let pipe = app.config_path.with_file_name("secrets").join("pipe");
    fifo(&pipe);
    let original = std::fs::read_to_string(&app.config_path).expect("the config");
    let piped = original.replace(
        &format!("secret_file: secrets/{}", stable.appid),
        "secret_file: secrets/pipe",
    );
    assert_ne!(piped, original);
    app.write_config_text(&piped);

    // The reload and, at the same time, the control plane on fresh connections
    // (so they reach every HTTP worker, the one handling the reload included).
    let reload = async {
        tokio::time::timeout(Duration::from_secs(5), app.admin_reload(Some(ADMIN_KEY))).await
    };
    let control = async {
        let mut answers = Vec::new();
        for _ in 0..4 {
            let http = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(3))
                .build()
                .expect("an HTTP client");
            let stale = serde_json::json!({ "stale_token": "an-old-token-0123456789" });
            let report = http
                .post(format!(
                    "{}/v1/token/{}/refresh",
                    app.base_url, legacy.appid
                ))
                .bearer_auth(READER_KEY)
                .json(&stale)
                .send()
                .await
                .map(|r| r.status());
            let admin = http
                .post(format!(
                    "{}/v1/accounts/{}/refresh",
                    app.base_url, stable.appid
                ))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .map(|r| r.status());
            answers.push((report, admin));
        }
        answers
    };
    let (reload, answers) = futures::join!(reload, control);
    release(&pipe);

    for (report, admin) in &answers {
        assert!(
            matches!(report, Ok(StatusCode::OK)),
            "compare-and-refresh answered {report:?} during the reload"
        );
        assert!(
            matches!(admin, Ok(s) if s.is_success() || *s == StatusCode::TOO_MANY_REQUESTS),
            "admin refresh answered {admin:?} during the reload"
        );
    }
    let reload = reload.expect("the reload answers at once");
    let body = json(reload, StatusCode::BAD_REQUEST).await;
    let problems = body["problems"].to_string();
    assert!(
        problems.contains("accounts[0].secret_file: ")
            && problems.contains("is not a regular file (a FIFO)"),
        "{problems}"
    );
    // Nothing changed.
    assert_eq!(reloads(&app, "ok"), 0);
    assert!(app.state.directory.get(&stable.appid).is_some());
}

#[actix_web::test]
async fn a_reload_that_needs_a_new_variable_says_the_environment_is_read_at_start() {
    let app = TestAppBuilder::new().account(Mode::Stable).spawn().await;
    let original = std::fs::read_to_string(&app.config_path).expect("the config");
    let first = &app.accounts[0].appid;
    let text = original.replace(
        &format!("secret_file: secrets/{first}"),
        "secret: ${WX_SECRET_ADDED_LATER}",
    );
    app.write_config_text(&text);
    let body = json(
        app.admin_reload(Some(ADMIN_KEY)).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let problems = problems_in(&body);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].ends_with(
            "accounts[0].secret: environment variable WX_SECRET_ADDED_LATER is not set; the environment is read at start: use secret_file for accounts added by reload, or restart"
        ),
        "{}",
        problems[0]
    );
}

#[actix_web::test]
async fn a_reload_of_an_alias_bomb_is_rejected_and_the_server_keeps_serving() {
    let app = TestAppBuilder::new().account(Mode::Stable).spawn().await;
    let token = app.current_token(&app.accounts[0].appid);
    let original = std::fs::read_to_string(&app.config_path).expect("the config");
    // 4 MiB behind one anchor, used 3,000 times: 12 GB if expanded.
    let bomb = format!(
        "{original}x-big: &big {}\nx-uses: [{}]\n",
        "x".repeat(4 << 20),
        vec!["*big"; 3_000].join(", ")
    );
    app.write_config_text(&bomb);
    let body = json(
        app.admin_reload(Some(ADMIN_KEY)).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let problems = body["problems"].as_array().expect("problems is a list");
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].to_string().contains("aliases"), "{problems:#?}");
    let body = json(
        app.get_token(app.accounts[0].appid.as_str(), Some(READER_KEY))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["access_token"], token.as_str());
}
