//! `wxtoken serve` as a real process against the simulator (hosted by the
//! test): crashes with `kill -9`, restarts on the same store, signals (SIGINT
//! and SIGTERM finish in-flight requests), readiness while starting, hostile
//! request heads, and an unreadable store file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use wxtoken::domain::{AppId, KeyHash, Mode};
use wxtoken::simulator::{FaultSpec, SimConfig, Simulator};

use crate::support::process::{KillOnDrop, Running, exit_code, send_signal, wxtoken};
use crate::support::raw_http::{read_answer, send_post_head};
use crate::support::wait::Wait;
use crate::support::{self, all_token_calls, appids_in};

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
        let listen = support::free_addr().to_string();
        let mut yaml = format!(
            "listen: {listen}\nupstream:\n  base_urls: [{}]\n  timeout: 2s\nstore:\n  path: data/wxtoken.redb\nrefresh:\n  backoff_initial: 100ms\nclients:\n  - name: admin\n    key: {}\n    appids: [\"*\"]\n    admin: true\naccounts:\n",
            sim.base_url(),
            KeyHash::of_key(ADMIN_KEY)
        );
        let mut accounts = Vec::new();
        for mode in modes {
            let (appid, secret) = support::register_fresh(&sim, "process-secret");
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

    /// `wxtoken serve` on the setup's configuration, with `extra` arguments.
    fn serve_command(&self, extra: &[&str]) -> Command {
        let grace = GRACE_SECS.to_string();
        let mut args = vec![
            "serve",
            "--config",
            self.config.to_str().expect("utf-8 path"),
            "--wechat-grace",
            &grace,
        ];
        args.extend_from_slice(extra);
        wxtoken(&args)
    }

    fn serve(&self, extra: &[&str]) -> Running {
        Running::spawn(self.serve_command(extra))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// Waits until every account has a usable token (`/readyz?strict=1`).
    async fn ready(&self) {
        Wait::up_to(Duration::from_secs(30))
            .every(Duration::from_millis(50))
            .until_async("wxtoken becomes ready", async || {
                self.http
                    .get(self.url("/readyz?strict=1"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
            })
            .await
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
        all_token_calls(&self.sim.stats())
    }

    /// `GET path` as status and JSON body, or `None` while nothing listens.
    async fn get_json(&self, path: &str) -> Option<(StatusCode, Value)> {
        let r = self.http.get(self.url(path)).send().await.ok()?;
        let status = r.status();
        Some((status, r.json().await.expect("JSON")))
    }

    /// `wxtoken serve` with its stderr written to `log`, and `RUST_LOG` set
    /// to `rust_log` (or removed).
    fn serve_logging(&self, log: &Path, rust_log: Option<&str>) -> KillOnDrop {
        let mut cmd = self.serve_command(&[]);
        match rust_log {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        // As journald or a log file would run it: no `NO_COLOR` hint.
        cmd.env_remove("NO_COLOR");
        let file = File::create(log).expect("a log file");
        cmd.stdout(Stdio::null()).stderr(Stdio::from(file));
        KillOnDrop::spawn(cmd)
    }
}

#[actix_web::test]
async fn kill_9_with_fetches_in_flight_then_the_restart_serves_only_valid_tokens() {
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

    // WeChat holds every legacy fetch for 1 s before it processes and answers
    // it. One admin refresh per legacy account (admin rotations are throttled
    // to one per 30 s, so each account gets one): four fetches in flight.
    let legacy: Vec<AppId> = setup
        .accounts
        .iter()
        .filter(|(_, m)| *m == Mode::Legacy)
        .map(|(a, _)| a.clone())
        .collect();
    setup.sim.inject_fault(FaultSpec {
        api: Some("token".to_string()),
        delay_ms: Some(1_000),
        ..FaultSpec::default()
    });
    let calls_before = setup.calls();
    let refreshes: Vec<_> = legacy
        .iter()
        .map(|a| {
            let request = setup
                .http
                .post(setup.url(&format!("/v1/accounts/{a}/refresh")))
                .bearer_auth(ADMIN_KEY)
                .send();
            actix_web::rt::spawn(request)
        })
        .collect();
    Wait::up_to(Duration::from_secs(10))
        .every(Duration::from_millis(5))
        .until("every legacy fetch is at WeChat", || {
            setup.calls() >= calls_before + legacy.len() as u64
        })
        .await;
    drop(server); // SIGKILL, with every legacy fetch in flight at WeChat
    for refresh in refreshes {
        let answer = refresh.await.expect("the request task ends");
        assert!(answer.is_err(), "a refresh was answered before the kill");
    }
    // WeChat still processes the four fetches when their delay is over: four
    // tokens nobody received, each killing the token wxtoken held 2 s later.
    setup.sim.clear_faults();

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
    send_signal(&server.child, "HUP");
    Wait::up_to(Duration::from_secs(10))
        .every(Duration::from_millis(50))
        .until_async("SIGHUP reloads", async || {
            support::scraped(
                &setup.http,
                &setup.url(""),
                "wxtoken_config_reloads_total",
                &[("result", "ok")],
            )
            .await
                == 1.0
        })
        .await;
    assert_eq!(setup.calls(), calls, "the reload touched no account");
    assert_eq!(server.terminate(), Some(0));
}

/// A compare-and-refresh whose body is half sent when `signal` arrives: the
/// server stops accepting connections, answers it 200 once the rest of the
/// body comes, flushes the store and exits 0.
async fn a_signal_lets_a_slow_in_flight_request_finish_then_exits_0(signal: &str) {
    let setup = Setup::new(&[Mode::Stable]).await;
    let mut server = setup.serve(&[]);
    setup.ready().await;
    let appid = setup.accounts[0].0.clone();
    let (_, current) = setup.token(&appid).await;

    let body = br#"{"stale_token": "an-older-token-of-this-account"}"#;
    let mut stream = tokio::net::TcpStream::connect(&setup.listen)
        .await
        .expect("connect");
    send_post_head(
        &mut stream,
        &setup.listen,
        &format!("/v1/token/{appid}/refresh"),
        ADMIN_KEY,
        body.len(),
    )
    .await;
    stream.write_all(&body[..10]).await.expect("send a part");
    // The handler is now waiting for the rest of the body.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_signal(&server.child, signal);

    // The server stops accepting new connections...
    Wait::up_to(Duration::from_secs(5))
        .until_async(
            &format!("no more connections accepted after SIG{signal}"),
            async || tokio::net::TcpStream::connect(&setup.listen).await.is_err(),
        )
        .await;
    // ...but the request in flight is answered in full.
    stream.write_all(&body[10..]).await.expect("send the rest");
    let answer = read_answer(&mut stream, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the in-flight request got no answer after SIG{signal}"));
    drop(stream);
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = answer.json();
    assert_eq!(answer["access_token"], current["access_token"], "{answer}");
    assert_eq!(answer["refreshed"], false, "{answer}");

    let code = exit_code(&mut server.child, Duration::from_secs(40)).await;
    assert_eq!(code, Some(0), "SIG{signal} exits 0");

    // The store was flushed: a restart serves the same token without a fetch.
    let calls = setup.calls();
    let _restarted = setup.serve(&[]);
    setup.ready().await;
    let (_, after) = setup.token(&appid).await;
    assert_eq!(after["access_token"], current["access_token"]);
    assert_eq!(setup.calls(), calls, "no upstream call after the restart");
}

#[actix_web::test]
async fn sigint_lets_a_slow_in_flight_request_finish_then_exits_0() {
    a_signal_lets_a_slow_in_flight_request_finish_then_exits_0("INT").await;
}

#[actix_web::test]
async fn sigterm_lets_a_slow_in_flight_request_finish_then_exits_0() {
    a_signal_lets_a_slow_in_flight_request_finish_then_exits_0("TERM").await;
}

#[actix_web::test]
async fn readyz_answers_starting_until_every_first_fetch_ended_then_200_despite_a_wrong_secret() {
    let setup = Setup::new(&[Mode::Stable, Mode::Legacy, Mode::Stable]).await;
    let slow = setup.accounts[1].0.clone();
    let broken = setup.accounts[2].0.clone();
    std::fs::write(
        setup.dir.path().join("secrets").join(broken.as_str()),
        "a-wrong-secret",
    )
    .expect("secret file");
    // The slow account's first fetch takes 1.5 s (under the 2 s timeout).
    setup.sim.inject_fault(FaultSpec {
        appid: Some(slow.to_string()),
        count: Some(1),
        delay_ms: Some(1_500),
        ..FaultSpec::default()
    });
    let started = Instant::now();
    let _server = setup.serve(&[]);

    // Starting: 503 naming the accounts whose first fetch has not ended.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut starting_seen = false;
    let ready = loop {
        assert!(Instant::now() < deadline, "wxtoken did not become ready");
        let Some((status, body)) = setup.get_json("/readyz").await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if status == StatusCode::OK {
            break body;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "not_ready", "{body}");
        assert_eq!(body["status"], "starting", "{body}");
        let waiting = appids_in(&body, "not_ready");
        assert!(waiting.contains(&slow.as_str()), "{body}");
        starting_seen = true;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(starting_seen, "no 503 while the first fetch was slow");
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "ready before the slow first fetch ended: {ready}"
    );
    // Ready for the load balancer, with the wrong secret listed.
    assert_eq!(ready["status"], "ready", "{ready}");
    let failing = appids_in(&ready, "failing");
    assert_eq!(failing, vec![broken.as_str()], "{ready}");
    assert_eq!(ready["failing"][0]["errcode"], 40125, "{ready}");
    assert_eq!(ready["store"], "ok", "{ready}");
    for (appid, _) in &setup.accounts[..2] {
        assert_eq!(setup.token(appid).await.0, StatusCode::OK, "{appid}");
    }
    let (status, strict) = setup.get_json("/readyz?strict=1").await.expect("an answer");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{strict}");
    assert_eq!(strict["not_ready"][0]["appid"], broken.as_str(), "{strict}");
}

#[actix_web::test]
async fn malformed_and_oversized_request_heads_are_refused_without_an_error_log_line() {
    let setup = Setup::new(&[Mode::Stable]).await;
    let host = setup.listen.clone();
    let hostile: [(&str, Vec<u8>, u16); 3] = [
        (
            "a header line without a colon",
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nthis line has no colon\r\n\r\n")
                .into_bytes(),
            400,
        ),
        (
            "a 1 MiB request head",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n",
                "a".repeat(1 << 20)
            )
            .into_bytes(),
            431,
        ),
        (
            "120 headers",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {host}\r\n{}\r\n",
                (0..120)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>()
            )
            .into_bytes(),
            431,
        ),
    ];

    let run = |rust_log: Option<&'static str>, name: &'static str| {
        let setup = &setup;
        let hostile = &hostile;
        async move {
            let log_path = setup.dir.path().join(name);
            let mut server = setup.serve_logging(&log_path, rust_log);
            setup.ready().await;
            for (what, request, status) in hostile {
                let mut stream = tokio::net::TcpStream::connect(&setup.listen)
                    .await
                    .expect("connect");
                // The server may answer before the whole head is written.
                let _ = stream.write_all(request).await;
                let answer = read_answer(&mut stream, Duration::from_secs(10))
                    .await
                    .unwrap_or_else(|| panic!("no answer to {what}"));
                assert_eq!(answer.status, *status, "{what}: {answer:?}");
            }
            assert_eq!(
                setup
                    .http
                    .get(setup.url("/healthz"))
                    .send()
                    .await
                    .expect("healthz")
                    .status(),
                StatusCode::OK
            );
            send_signal(&server.0, "TERM");
            let code = exit_code(&mut server.0, Duration::from_secs(40)).await;
            assert_eq!(code, Some(0));
            std::fs::read_to_string(&log_path).expect("the log")
        }
    };

    let log = run(None, "default.log").await;
    assert!(log.contains("wxtoken serving"), "{log}");
    // Written to a file, not a terminal: no colour escapes.
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file: {log:?}"
    );
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "client mistakes logged as errors: {errors:#?}"
    );

    // Asked for, actix's own account of them is still there.
    let log = run(Some("info,actix_http::h1::dispatcher=debug"), "debug.log").await;
    assert!(log.contains("stream error"), "{log}");
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

/// A key of a client that may read tokens but not list accounts.
const READER_KEY: &str = "process-reader-key-0123456789";

impl Setup {
    /// Adds a client named `name` with `key` (admin or not) to the config file.
    fn add_client(&self, name: &str, key: &str, admin: bool) {
        let yaml = std::fs::read_to_string(&self.config).expect("the config");
        let client = format!(
            "clients:\n  - name: {name}\n    key: {}\n    appids: [\"*\"]\n    admin: {admin}\n",
            KeyHash::of_key(key)
        );
        std::fs::write(&self.config, yaml.replacen("clients:\n", &client, 1))
            .expect("write the config");
    }

    /// A 0600 file holding `key`, for `--key-file`.
    fn key_file(&self, name: &str, key: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{key}\n")).expect("the key file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }
}

/// `wxtoken accounts ARGS`: exit code, stdout, stderr.
fn accounts_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["accounts"];
    all.extend_from_slice(args);
    let out = wxtoken(&all).output().expect("wxtoken runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[actix_web::test]
async fn accounts_prints_the_fleet_as_a_table_or_json_and_refuses_clearly() {
    let setup = Setup::new(&[Mode::Stable, Mode::Legacy]).await;
    setup.add_client("reader", READER_KEY, false);
    let _server = setup.serve(&[]);
    setup.ready().await;
    let server = setup.url("");
    let admin = setup.key_file("admin.key", ADMIN_KEY);
    let admin = admin.to_str().expect("utf-8 path");

    let (code, table, stderr) = accounts_cli(&["--server", &server, "--key-file", admin]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "a header and one line per account:\n{table}"
    );
    for column in [
        "APPID",
        "NAME",
        "KIND",
        "STATE",
        "EXPIRES IN",
        "NEXT REFRESH",
        "LAST ERROR",
        "CALLS TODAY",
    ] {
        assert!(lines[0].contains(column), "no {column} column:\n{table}");
    }
    let state_at = lines[0].find("STATE").expect("STATE");
    for (appid, mode) in &setup.accounts {
        let line = lines
            .iter()
            .find(|l| l.starts_with(appid.as_str()))
            .unwrap_or_else(|| panic!("{appid} is not listed:\n{table}"));
        assert!(line.contains(&mode.to_string()), "{line}");
        assert_eq!(&line[state_at..state_at + 5], "ready", "aligned:\n{table}");
    }

    let (code, json, stderr) = accounts_cli(&["--server", &server, "--key-file", admin, "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let list: Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert!(list[0]["upstream_calls_today"].is_u64(), "{list}");

    // Refusals: one sentence each, exit 1, never the key.
    let stranger = setup.key_file("stranger.key", "not-a-configured-key-0123");
    let reader = setup.key_file("reader.key", READER_KEY);
    let no_server = format!("http://{}", support::free_addr());
    let cases: [(&[&str], &str); 4] = [
        (&["--server", &server], "401"),
        (
            &[
                "--server",
                &server,
                "--key-file",
                stranger.to_str().expect("utf-8"),
            ],
            "401",
        ),
        (
            &[
                "--server",
                &server,
                "--key-file",
                reader.to_str().expect("utf-8"),
            ],
            "403",
        ),
        (
            &["--server", &no_server, "--key-file", admin],
            "could not connect",
        ),
    ];
    for (args, needle) in cases {
        let (code, stdout, stderr) = accounts_cli(args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
        for key in [ADMIN_KEY, READER_KEY, "not-a-configured-key-0123"] {
            assert!(!stderr.contains(key), "a key in {stderr}");
        }
    }
}

#[actix_web::test]
async fn serve_logs_no_actix_start_up_lines_and_names_the_clients_a_reload_changed() {
    let setup = Setup::new(&[Mode::Stable]).await;
    let log_path = setup.dir.path().join("serve.log");
    let _server = setup.serve_logging(&log_path, None);
    setup.ready().await;

    setup.add_client("billing-service", READER_KEY, false);
    let reload = setup
        .http
        .post(setup.url("/v1/admin/reload"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("the reload answers");
    assert_eq!(reload.status(), StatusCode::OK);
    let log = Wait::up_to(Duration::from_secs(10))
        .every(Duration::from_millis(50))
        .for_value("the reload is logged", || {
            let log = std::fs::read_to_string(&log_path).ok()?;
            log.contains("clients reloaded").then_some(log)
        })
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("clients reloaded"))
        .expect("the clients line");
    assert!(line.contains("clients_added=\"billing-service\""), "{line}");
    assert!(!log.contains(READER_KEY), "a key in the log");
    assert!(
        !log.contains(&KeyHash::of_key(READER_KEY).to_string()[7..]),
        "a key hash in the log"
    );

    assert!(log.contains("wxtoken serving"), "{log}");
    let noise: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("starting service")
                || l.contains("Actix runtime found")
                || (l.contains("starting") && l.contains("workers"))
        })
        .collect();
    assert!(
        noise.is_empty(),
        "actix's start-up lines at the default level: {noise:#?}"
    );

    // Asked for, they are still there.
    drop(_server);
    let verbose_path = setup.dir.path().join("verbose.log");
    let _verbose = setup.serve_logging(&verbose_path, Some("info,actix_server=debug"));
    setup.ready().await;
    Wait::up_to(Duration::from_secs(10))
        .every(Duration::from_millis(50))
        .until("actix's start-up lines are logged at debug", || {
            std::fs::read_to_string(&verbose_path).is_ok_and(|l| l.contains("starting service"))
        })
        .await;
}
