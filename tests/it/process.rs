//! `wxtoken serve` as a real process against the simulator (hosted by the
//! test): crashes with `kill -9`, restarts on the same store, signals, and an
//! unreadable store file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use wxtoken::domain::{AppId, KeyHash, Mode};
use wxtoken::simulator::{AppRegistration, SimConfig, Simulator};

use crate::cli::{Running, wxtoken};
use crate::support::{self, metric_value};

const ADMIN_KEY: &str = "process-admin-key-0123456789";
/// WeChat's grace in these tests: a legacy refresh kills the previous token
/// 2 s later (the server is told the same with `--wechat-grace`).
const GRACE_SECS: u64 = 2;

struct Setup {
    sim: Simulator,
    dir: tempfile::TempDir,
    config: PathBuf,
    listen: String,
    accounts: Vec<(AppId, Mode)>,
    http: reqwest::Client,
}

impl Setup {
    async fn new(modes: &[Mode]) -> Setup {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = support::simulator(SimConfig {
            grace: Duration::from_secs(GRACE_SECS),
            ..SimConfig::default()
        })
        .await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir_all(dir.path().join("secrets")).expect("secrets dir");
        let listen = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("addr").to_string()
        };
        let mut yaml = format!(
            "listen: {listen}\nupstream:\n  base_urls: [{}]\n  timeout: 2s\nstore:\n  path: data/wxtoken.redb\nrefresh:\n  backoff_initial: 100ms\nclients:\n  - name: admin\n    key: {}\n    appids: [\"*\"]\n    admin: true\naccounts:\n",
            sim.base_url(),
            KeyHash::of_key(ADMIN_KEY)
        );
        let mut accounts = Vec::new();
        for mode in modes {
            let appid = support::unique_appid();
            let secret = format!("process-secret-{appid}");
            sim.register_app(AppRegistration {
                appid: appid.to_string(),
                secret: secret.clone(),
                ip_whitelist: vec![],
            });
            std::fs::write(dir.path().join("secrets").join(appid.as_str()), &secret)
                .expect("secret file");
            yaml.push_str(&format!(
                "  - appid: {appid}\n    secret_file: secrets/{appid}\n    mode: {mode}\n"
            ));
            accounts.push((appid, *mode));
        }
        let config = dir.path().join("accounts.yaml");
        std::fs::write(&config, yaml).expect("write the config");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a client");
        Setup {
            sim,
            dir,
            config,
            listen,
            accounts,
            http,
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("data").join("wxtoken.redb")
    }

    fn serve(&self, extra: &[&str]) -> Running {
        let grace = GRACE_SECS.to_string();
        let mut args = vec![
            "serve",
            "--config",
            self.config.to_str().expect("utf-8 path"),
            "--wechat-grace",
            &grace,
        ];
        args.extend_from_slice(extra);
        Running::spawn(wxtoken(&args))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(Instant::now() < deadline, "wxtoken did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn token(&self, appid: &AppId) -> (StatusCode, Value) {
        let r = self
            .http
            .get(self.url(&format!("/v1/token/{appid}")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("wxtoken answers");
        let status = r.status();
        (status, r.json().await.expect("JSON"))
    }

    fn calls(&self) -> u64 {
        let s = self.sim.stats();
        s.total_calls("token") + s.total_calls("stable_token")
    }
}

#[actix_web::test]
async fn kill_9_during_a_refresh_burst_then_the_restart_serves_only_valid_tokens() {
    let setup = Setup::new(&[
        Mode::Legacy,
        Mode::Legacy,
        Mode::Legacy,
        Mode::Legacy,
        Mode::Stable,
    ])
    .await;
    let server = setup.serve(&[]);
    setup.ready().await;

    // Admin refreshes of the legacy accounts, as fast as they come back:
    // every one is a token fetch that kills the previous token 2 s later.
    let legacy: Vec<AppId> = setup
        .accounts
        .iter()
        .filter(|(_, m)| *m == Mode::Legacy)
        .map(|(a, _)| a.clone())
        .collect();
    let burst = {
        let http = setup.http.clone();
        let urls: Vec<String> = legacy
            .iter()
            .map(|a| setup.url(&format!("/v1/accounts/{a}/refresh")))
            .collect();
        actix_web::rt::spawn(async move {
            let mut answered = 0u32;
            loop {
                let requests = urls
                    .iter()
                    .map(|u| http.post(u).bearer_auth(ADMIN_KEY).send());
                let results = futures::future::join_all(requests).await;
                if results.iter().any(|r| r.is_err()) {
                    return answered;
                }
                answered += 1;
            }
        })
    };
    let calls_before_burst = setup.calls();
    while setup.calls() < calls_before_burst + 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(server); // SIGKILL, mid-burst
    let rounds = burst.await.expect("the burst task ends");
    assert!(rounds > 0, "the burst made refreshes before the kill");

    // Long enough for every token superseded by an unrecorded fetch to die.
    tokio::time::sleep(Duration::from_secs(GRACE_SECS + 1)).await;
    let _restarted = setup.serve(&[]);
    setup.ready().await;
    let watch_until = Instant::now() + Duration::from_secs(2);
    let mut checked = 0;
    while Instant::now() < watch_until {
        for (appid, mode) in &setup.accounts {
            let (status, body) = setup.token(appid).await;
            if status != StatusCode::OK {
                continue;
            }
            let token = body["access_token"].as_str().expect("a token");
            assert!(
                setup.sim.is_token_valid(appid.as_str(), token),
                "{appid} ({mode}) served a token WeChat rejects after the crash: {body}"
            );
            checked += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        checked >= setup.accounts.len() * 10,
        "{checked} tokens checked"
    );
}

#[actix_web::test]
async fn sigterm_flushes_the_store_and_a_restart_makes_no_upstream_call_and_sighup_reloads() {
    let setup = Setup::new(&[Mode::Stable, Mode::Legacy]).await;
    let server = setup.serve(&[]);
    setup.ready().await;
    let mut before = Vec::new();
    for (appid, _) in &setup.accounts {
        let (status, body) = setup.token(appid).await;
        assert_eq!(status, StatusCode::OK);
        before.push(body["access_token"].clone());
    }
    assert_eq!(server.terminate(), Some(0), "SIGTERM exits 0");
    let calls = setup.calls();

    let server = setup.serve(&[]);
    setup.ready().await;
    for ((appid, _), token) in setup.accounts.iter().zip(&before) {
        let (status, body) = setup.token(appid).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body["access_token"], token, "{appid}: the stored token");
    }
    assert_eq!(setup.calls(), calls, "no upstream call after the restart");

    // SIGHUP reloads the (unchanged) file.
    let pid = server.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill runs")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = setup
            .http
            .get(setup.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if metric_value(&text, "wxtoken_config_reloads_total", &[("result", "ok")]) == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(setup.calls(), calls, "the reload touched no account");
    assert_eq!(server.terminate(), Some(0));
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[actix_web::test]
async fn a_corrupt_store_stops_serve_with_a_clear_error_until_reset_store_moves_it_aside() {
    let setup = Setup::new(&[Mode::Stable]).await;
    let store = setup.store();
    std::fs::create_dir_all(store.parent().expect("dir")).expect("data dir");
    std::fs::write(&store, b"this is not a redb database").expect("write garbage");

    let out = wxtoken(&[
        "serve",
        "--config",
        setup.config.to_str().expect("utf-8 path"),
    ])
    .output()
    .expect("wxtoken runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(store.to_str().expect("utf-8")), "{stderr}");
    assert!(stderr.contains("--reset-store"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        std::fs::read(&store).expect("the file is still there"),
        b"this is not a redb database"
    );
    assert_eq!(setup.calls(), 0, "nothing was fetched");

    let server = setup.serve(&["--reset-store"]);
    setup.ready().await;
    let names = files_in(store.parent().expect("dir"));
    let moved: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("wxtoken.redb.broken-"))
        .collect();
    assert_eq!(moved.len(), 1, "{names:?}");
    let moved_path = store.parent().expect("dir").join(moved[0]);
    assert_eq!(
        std::fs::read(moved_path).expect("the moved file"),
        b"this is not a redb database"
    );
    assert_eq!(server.terminate(), Some(0));
}
