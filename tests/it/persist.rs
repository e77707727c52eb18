//! Tokens survive restarts: the redb store behind a running server, and what
//! happens when the store cannot be written.

use std::sync::Arc;

use reqwest::StatusCode;
use wxtoken::domain::{AppId, Mode};
use wxtoken::store::{RedbStore, Storage, StoredAccount};

use crate::app::{ADMIN_KEY, READER_KEY, TestApp, TestAppBuilder, json, spawn_app};
use crate::support::process::wxtoken;
use crate::support::stores::Disk;
use crate::support::{all_token_calls, metric_value};

async fn served_tokens(app: &TestApp) -> Vec<String> {
    let mut tokens = Vec::new();
    for account in &app.accounts {
        let body = json(
            app.get_token(account.appid.as_str(), Some(READER_KEY))
                .await,
            StatusCode::OK,
        )
        .await;
        tokens.push(body["access_token"].as_str().expect("a token").to_string());
    }
    tokens
}

#[actix_web::test]
async fn a_restart_serves_the_stored_tokens_without_calling_wechat() {
    let mut app = TestAppBuilder::new()
        .accounts(&[Mode::Stable, Mode::Legacy, Mode::Legacy])
        .spawn()
        .await;
    // Spend some quota first, so the restored counters can be checked.
    let legacy = app.accounts[1].appid.clone();
    json(
        app.admin_refresh(legacy.as_str(), Some(ADMIN_KEY)).await,
        StatusCode::OK,
    )
    .await;
    let before = served_tokens(&app).await;
    let calls_before = all_token_calls(&app.sim.stats());
    let plan_before: Vec<Option<i64>> = app
        .accounts
        .iter()
        .map(|a| app.next_refresh_at_ms(&a.appid))
        .collect();

    app.restart().await;

    assert_eq!(
        served_tokens(&app).await,
        before,
        "the same tokens after the restart"
    );
    assert_eq!(
        all_token_calls(&app.sim.stats()),
        calls_before,
        "no upstream call for stored tokens"
    );
    let status = app.state.directory.get(&legacy).expect("slot").status();
    assert_eq!(status.calls_today, 2, "the day's call counter survived");
    for (account, plan) in app.accounts.iter().zip(plan_before) {
        let now_plan = app
            .next_refresh_at_ms(&account.appid)
            .expect("a refresh is planned");
        // Scheduled from the real expiry: inside the same refresh window as before.
        let expires = app
            .state
            .directory
            .get(&account.appid)
            .and_then(|s| s.token())
            .expect("a token")
            .expires_at_ms;
        assert!(
            now_plan < expires,
            "{}: planned after expiry",
            account.appid
        );
        assert!(plan.is_some());
    }
    let accounts = json(app.accounts(Some(ADMIN_KEY)).await, StatusCode::OK).await;
    assert!(
        accounts
            .as_array()
            .expect("a list")
            .iter()
            .all(|a| a["state"] == "ready"),
        "{accounts}"
    );
}

#[actix_web::test]
async fn a_removed_account_leaves_the_store() {
    let app = spawn_app().await;
    let [kept, removed] = [0, 1].map(|i| app.accounts[i].clone());
    app.write_config(std::slice::from_ref(&kept));
    json(app.admin_reload(Some(ADMIN_KEY)).await, StatusCode::OK).await;
    app.state.store.flush().await;
    let mut app = app;
    app.stop().await;
    let stored: Vec<AppId> = RedbStore::open(&app.store_path)
        .expect("the store opens")
        .load_all()
        .expect("the store reads")
        .into_iter()
        .map(|a| a.appid)
        .collect();
    assert_eq!(stored, vec![kept.appid.clone()], "{removed:?} is gone");
}

#[actix_web::test]
async fn failed_store_writes_are_counted_and_tokens_keep_being_served() {
    let app = TestAppBuilder::new()
        .accounts(&[Mode::Stable, Mode::Legacy])
        .store(Arc::new(Disk::full("full-disk")))
        .spawn()
        .await;
    let before = served_tokens(&app).await;
    // A refresh still works and its token is served.
    let legacy = app.accounts[1].appid.clone();
    let refreshed = json(
        app.admin_refresh(legacy.as_str(), Some(ADMIN_KEY)).await,
        StatusCode::OK,
    )
    .await;
    assert_ne!(refreshed["access_token"], before[1].as_str());
    let after = served_tokens(&app).await;
    assert_eq!(
        after[1],
        refreshed["access_token"].as_str().expect("a token")
    );
    let metrics = app.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "wxtoken_store_write_errors_total",
            &[("store", "full-disk")]
        ) >= 3.0,
        "{metrics}"
    );
    // The store says it is failing (what /readyz shows), and the gauge is 0.
    let reason = app
        .state
        .store
        .failing()
        .expect("the store reports the failure");
    assert!(reason.contains("No space left on device"), "{reason}");
    assert_eq!(
        metric_value(&metrics, "wxtoken_store_up", &[("store", "full-disk")]),
        0.0,
        "{metrics}"
    );
    assert_eq!(app.readyz().await.status(), StatusCode::OK);
}

/// Runs `wxtoken serve` on a config whose store is `store` (with a client, so
/// that no warning is logged) and `RUST_BACKTRACE=1`; returns (exit code, stderr).
fn serve_on_store(dir: &std::path::Path, store: &std::path::Path) -> (Option<i32>, String) {
    let config = dir.join("accounts.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nupstream:\n  base_urls: [{}]\nstore:\n  path: {}\nclients:\n  - name: reader\n    key: {}\n    appids: [\"*\"]\naccounts:\n  - appid: wx1111111111111111\n    secret: corrupt-store-test-secret\n",
            crate::support::closed_port_url(),
            store.display(),
            wxtoken::domain::KeyHash::of_key(READER_KEY),
        ),
    )
    .expect("write the config");
    let out = wxtoken(&["serve", "--config", config.to_str().expect("utf-8")])
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("wxtoken runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_corrupt_store_stops_serve_with_one_sentence_and_no_panic_dump() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = dir.path().join("data").join("wxtoken.redb");
    let account = StoredAccount {
        appid: AppId::parse("wx1111111111111111").expect("appid"),
        mode: Mode::Stable,
        token: None,
        pending_fetch_ms: None,
        calls_day: 1,
        calls_today: 1,
        forces: vec![],
        tickets: Vec::new(),
        open: None,
    };
    let opened = RedbStore::open(&store).expect("a new store");
    opened.put(&account).expect("write");
    drop(opened);
    let full = std::fs::read(&store).expect("the store file");
    // 700 bytes: redb asserts on it (page_manager.rs) instead of answering an
    // error; half the file and a flipped header are refused without a panic.
    let mut flipped = full.clone();
    for byte in &mut flipped[..64] {
        *byte ^= 0x5a;
    }
    for (what, bytes) in [
        ("truncated to 700 bytes", full[..700].to_vec()),
        ("truncated to half", full[..full.len() / 2].to_vec()),
        ("with a scrambled header", flipped),
    ] {
        std::fs::write(&store, &bytes).expect("corrupt the store");
        let (code, stderr) = serve_on_store(dir.path(), &store);
        assert_eq!(code, Some(1), "{what}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: not one line:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(!stderr.contains("backtrace"), "{what}: {stderr}");
        assert!(
            lines[0].contains(store.to_str().expect("utf-8")),
            "{what}: {stderr}"
        );
        assert!(lines[0].contains("--reset-store"), "{what}: {stderr}");
        assert_eq!(
            std::fs::read(&store).expect("the file is still there"),
            bytes,
            "{what}: the refused file was changed"
        );
    }
}
