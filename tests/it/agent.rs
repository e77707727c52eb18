//! Contract §8 with real processes: `wxtoken agent` keeping token files
//! against a real `wxtoken serve` and the simulator with tokens that live
//! seconds (every file it leaves is probed; the server is killed and
//! restarted mid-run), and the audit trail in `--log-format json`.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use wxtoken::domain::{AppId, KeyHash, Mode};
use wxtoken::simulator::{FaultSpec, SimConfig, Simulator};

use crate::support::process::{KillOnDrop, exit_code, send_signal, wxtoken};
use crate::support::wait::Wait;
use crate::support::{self, fault_once};

const ADMIN_KEY: &str = "agent-test-admin-key-0123456789";
const AGENT_KEY: &str = "agent-test-sidecar-key-0123456789";
/// Tokens live 6 s at the simulator; a superseded one works 2 s more.
const TTL: Duration = Duration::from_secs(6);
const GRACE_SECS: u64 = 2;

/// A simulator, a configuration for `wxtoken serve`, and where things go.
struct Setup {
    sim: Simulator,
    dir: tempfile::TempDir,
    config: PathBuf,
    listen: String,
    /// Every account with its mode and secret.
    accounts: Vec<(AppId, Mode, String)>,
    http: reqwest::Client,
}

impl Setup {
    async fn new(modes: &[Mode]) -> Setup {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = support::simulator(SimConfig {
            token_ttl: TTL,
            grace: Duration::from_secs(GRACE_SECS),
            ..SimConfig::default()
        })
        .await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let listen = support::free_addr().to_string();
        let accounts = modes
            .iter()
            .map(|mode| {
                let (appid, secret) = support::register_fresh(&sim, "agent-secret");
                (appid, *mode, secret)
            })
            .collect();
        let setup = Setup {
            sim,
            config: dir.path().join("accounts.yaml"),
            dir,
            listen,
            accounts,
            http: support::http(),
        };
        setup.write_config(&setup.accounts);
        setup
    }

    /// Writes the configuration with `accounts`.
    fn write_config(&self, accounts: &[(AppId, Mode, String)]) {
        let mut yaml = format!(
            "listen: {}\nupstream:\n  base_urls: [{}]\n  timeout: 2s\nstore:\n  path: data/wxtoken.redb\nrefresh:\n  backoff_initial: 100ms\n  stable_window: 2s\n  legacy_at: 0.6\nclients:\n  - name: ops-admin\n    key: {}\n    appids: [\"*\"]\n    admin: true\n  - name: php-sidecar\n    key: {}\n    appids: [\"*\"]\naccounts:\n",
            self.listen,
            self.sim.base_url(),
            KeyHash::of_key(ADMIN_KEY),
            KeyHash::of_key(AGENT_KEY),
        );
        for (appid, mode, secret) in accounts {
            yaml.push_str(&format!(
                "  - appid: {appid}\n    secret: {secret}\n    mode: {mode}\n"
            ));
        }
        std::fs::write(&self.config, yaml).expect("write the config");
    }

    /// `wxtoken serve --log-format json`, its stderr appended to `log`.
    fn serve(&self, log: &Path) -> KillOnDrop {
        let mut cmd = wxtoken(&[
            "serve",
            "--log-format",
            "json",
            "--config",
            self.config.to_str().expect("utf-8 path"),
            "--wechat-grace",
            &GRACE_SECS.to_string(),
        ]);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("a log file");
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        KillOnDrop::spawn(cmd)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    async fn ready(&self) {
        Wait::up_to(Duration::from_secs(30))
            .every(Duration::from_millis(50))
            .until_async("wxtoken becomes ready", async || {
                support::answers_ok(&self.http, &self.url("/readyz?strict=1")).await
            })
            .await
    }

    /// `method path` with `key` and an optional JSON body: status and JSON.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("wxtoken answers");
        let status = response.status();
        (status, response.json().await.expect("JSON"))
    }

    /// The token answer the server gives for `appid` now.
    async fn served(&self, appid: &AppId) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/token/{appid}"),
                AGENT_KEY,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// The `fetched_at` of the token the server serves for `appid` now.
    async fn fetched_at(&self, appid: &AppId) -> i64 {
        self.served(appid).await["fetched_at"]
            .as_i64()
            .expect("fetched_at")
    }

    /// The token the server serves for `appid` now.
    async fn token(&self, appid: &AppId) -> String {
        self.served(appid).await["access_token"]
            .as_str()
            .expect("a token")
            .to_string()
    }
}

/// What one look at the agent's directory found.
#[derive(Default)]
struct Look {
    /// appid → token, for every `{appid}.json` file.
    files: HashMap<String, String>,
    /// Files holding a token the simulator does not accept right now.
    invalid: Vec<String>,
    /// Files other users may read.
    loose: Vec<String>,
}

/// Reads every token file in `dir` and probes its token at once.
fn look(sim: &Simulator, dir: &Path) -> Look {
    let mut look = Look::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return look;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(appid) = name.strip_suffix(".json") else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        // Replaced by rename: a file read is whole, or gone since listing.
        let Ok(text) = std::fs::read(entry.path()) else {
            continue;
        };
        let body: Value = serde_json::from_slice(&text)
            .unwrap_or_else(|e| panic!("{name} is not the token answer ({e})"));
        let token = body["access_token"].as_str().expect("access_token");
        if !sim.is_token_valid(appid, token) {
            look.invalid.push(format!("{name}: {body}"));
        }
        if let Ok(meta) = std::fs::metadata(entry.path())
            && meta.permissions().mode() & 0o777 != 0o600
        {
            look.loose
                .push(format!("{name}: {:o}", meta.permissions().mode()));
        }
        assert_eq!(body["appid"], appid, "{name}");
        look.files.insert(appid.to_string(), token.to_string());
    }
    look
}

/// Looks at `dir` every 25 ms for `span`, failing on the first invalid or
/// loose file; returns every (appid, token) seen and the last look.
async fn watch(
    sim: &Simulator,
    dir: &Path,
    span: Duration,
    seen: &mut BTreeSet<(String, String)>,
) -> Look {
    let started = Instant::now();
    loop {
        let look = look(sim, dir);
        assert!(
            look.invalid.is_empty(),
            "a file held a token WeChat rejects: {:?}",
            look.invalid
        );
        assert!(look.loose.is_empty(), "loose file modes: {:?}", look.loose);
        seen.extend(look.files.iter().map(|(a, t)| (a.clone(), t.clone())));
        if started.elapsed() >= span {
            return look;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[actix_web::test]
async fn the_agent_keeps_only_valid_private_files_through_rotations_and_a_server_restart() {
    let setup = Setup::new(&[Mode::Legacy, Mode::Stable]).await;
    let log = setup.dir.path().join("server.log");
    let server = setup.serve(&log);
    setup.ready().await;

    let key_file = setup.dir.path().join("agent.key");
    std::fs::write(&key_file, format!("{AGENT_KEY}\n")).expect("the key file");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = setup.dir.path().join("run").join("wxtoken");
    let exec_log = setup.dir.path().join("exec.log");
    let mut agent_cmd = wxtoken(&[
        "agent",
        "--server",
        &setup.url(""),
        "--key-file",
        key_file.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--wait",
        "2s",
        "--exec",
        &format!(
            "printf '%s %s\\n' \"$WXTOKEN_APPID\" \"$(cat \"$WXTOKEN_FILE\")\" >> {}",
            exec_log.display()
        ),
    ]);
    let agent_log = std::fs::File::create(setup.dir.path().join("agent.log")).expect("a log");
    agent_cmd
        .stdout(Stdio::null())
        .stderr(Stdio::from(agent_log));
    let mut agent = KillOnDrop::spawn(agent_cmd);

    // Up: both files appear, private, in a private directory.
    let appids: Vec<String> = setup.accounts.iter().map(|a| a.0.to_string()).collect();
    Wait::up_to(Duration::from_secs(10))
        .until("the agent writes both files", || {
            let found = look(&setup.sim, &out).files;
            appids.iter().all(|a| found.contains_key(a))
        })
        .await;
    let dir_mode = std::fs::metadata(&out)
        .expect("the out dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "{dir_mode:o}");

    // Through rotations (tokens live 6 s): every file probes valid.
    let mut seen = BTreeSet::new();
    watch(&setup.sim, &out, Duration::from_secs(9), &mut seen).await;
    for appid in &appids {
        let tokens = seen.iter().filter(|(a, _)| a == appid).count();
        assert!(
            tokens >= 2,
            "{appid}: the file never changed ({tokens} token)"
        );
    }
    // The file follows the server: it holds what it serves, or a newer one.
    let legacy = &setup.accounts[0].0;
    let served = setup.fetched_at(legacy).await;
    Wait::up_to(Duration::from_secs(3))
        .until("the file holds the served token or a newer one", || {
            std::fs::read(out.join(format!("{legacy}.json")))
                .ok()
                .and_then(|text| serde_json::from_slice::<Value>(&text).ok())
                .and_then(|body| body["fetched_at"].as_i64())
                .is_some_and(|at| at >= served)
        })
        .await;

    // The server dies: files stay while their token is served, then go.
    drop(server);
    let started = Instant::now();
    let mut down = BTreeSet::new();
    let mut emptied = None;
    while started.elapsed() < TTL + Duration::from_secs(2) {
        let last = watch(&setup.sim, &out, Duration::from_millis(100), &mut down).await;
        if last.files.is_empty() && emptied.is_none() {
            emptied = Some(started.elapsed());
        }
    }
    assert!(
        emptied.is_some_and(|at| at <= TTL),
        "the files outlived their tokens while the server was down (emptied at {emptied:?})"
    );
    seen.extend(down);

    // It comes back on the same store: the files come back.
    let server = setup.serve(&log);
    Wait::up_to(Duration::from_secs(20))
        .until("the files come back after the restart", || {
            let found = look(&setup.sim, &out).files;
            appids.iter().all(|a| found.contains_key(a))
        })
        .await;
    watch(&setup.sim, &out, Duration::from_secs(4), &mut seen).await;

    // SIGTERM: a clean exit, no temporary file left behind.
    send_signal(&agent.0, "TERM");
    assert_eq!(
        exit_code(&mut agent.0, Duration::from_secs(5)).await,
        Some(0),
        "the agent exits cleanly on SIGTERM"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .expect("the out dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.ends_with(".json"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(server);

    // --exec ran once per new token, after its file was in place.
    let text = std::fs::read_to_string(&exec_log).expect("the exec log");
    let mut runs: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let (appid, body) = line.split_once(' ').expect("appid and file");
        let body: Value = serde_json::from_str(body).expect("the file's JSON");
        assert_eq!(body["appid"], appid);
        runs.push((
            appid.to_string(),
            body["access_token"].as_str().expect("token").to_string(),
        ));
    }
    let distinct: BTreeSet<_> = runs.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        runs.len(),
        "--exec ran twice for one token: {runs:?}"
    );
    for pair in &seen {
        assert!(
            distinct.contains(pair),
            "no --exec run for a token seen in a file"
        );
    }

    // The agent logged no token and not its key.
    let agent_text =
        std::fs::read_to_string(setup.dir.path().join("agent.log")).expect("the agent log");
    assert!(!agent_text.contains(AGENT_KEY), "the agent logged its key");
    for (_, token) in &seen {
        assert!(
            !agent_text.contains(token.as_str()),
            "the agent logged a token"
        );
    }
    assert!(agent_text.contains("new token written"), "{agent_text}");
}

#[actix_web::test]
async fn every_rotation_cause_leaves_one_audit_event_without_tokens_or_secrets() {
    let setup = Setup::new(&[Mode::Legacy, Mode::Legacy, Mode::Legacy, Mode::Stable]).await;
    let log = setup.dir.path().join("server.log");
    let server = setup.serve(&log);
    setup.ready().await;
    let [(stale, ..), (face, ..), (proxied, ..), (admin, ..)] = &setup.accounts[..] else {
        unreachable!("four accounts");
    };
    let mut tokens = BTreeSet::new();

    // Compare-and-refresh of the current token: refreshed.
    let current = setup.token(stale).await;
    tokens.insert(current.clone());
    let report = async || {
        let (status, body) = setup
            .call(
                reqwest::Method::POST,
                &format!("/v1/token/{stale}/refresh"),
                AGENT_KEY,
                Some(json!({ "stale_token": current })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    };
    let body = report().await;
    assert_eq!(body["refreshed"], true, "{body}");
    tokens.insert(body["access_token"].as_str().expect("token").to_string());
    // ...and of an old one: nothing rotates, nothing is logged.
    let body = report().await;
    assert_eq!(body["refreshed"], false, "{body}");

    // Admin refresh.
    tokens.insert(setup.token(admin).await);
    let (status, body) = setup
        .call(
            reqwest::Method::POST,
            &format!("/v1/accounts/{admin}/refresh"),
            ADMIN_KEY,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokens.insert(body["access_token"].as_str().expect("token").to_string());

    // The face's force_refresh.
    let before = setup.token(face).await;
    tokens.insert(before.clone());
    let answer: Value = setup
        .http
        .post(setup.url("/cgi-bin/stable_token"))
        .json(&json!({
            "grant_type": "client_credential",
            "appid": face.as_str(),
            "secret": AGENT_KEY,
            "force_refresh": true,
        }))
        .send()
        .await
        .expect("the face answers")
        .json()
        .await
        .expect("JSON");
    let after = answer["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    assert_ne!(after, before, "{answer}");
    tokens.insert(after);

    // The proxy's retry: WeChat rejects the injected token once.
    let handed = setup.token(proxied).await;
    tokens.insert(handed.clone());
    setup.sim.inject_fault(FaultSpec {
        errcode: Some(40001),
        ..fault_once("business", proxied.as_str())
    });
    let proxied_answer: Value = setup
        .http
        .get(setup.url(&format!(
            "/cgi-bin/user/info?access_token={handed}&openid=o-audit"
        )))
        .send()
        .await
        .expect("the proxy answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(proxied_answer["openid"], "o-audit", "{proxied_answer}");
    tokens.insert(setup.token(proxied).await);

    // A reload through the admin endpoint that adds an account, one by SIGHUP
    // that changes nothing.
    let (added, secret) = support::register_fresh(&setup.sim, "agent-secret");
    let mut accounts = setup.accounts.clone();
    accounts.push((added.clone(), Mode::Stable, secret));
    setup.write_config(&accounts);
    let (status, body) = setup
        .call(reqwest::Method::POST, "/v1/admin/reload", ADMIN_KEY, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    send_signal(&server.0, "HUP");

    // The events, one JSON object per line.
    let events = Wait::up_to(Duration::from_secs(10))
        .for_value("the SIGHUP reload is logged", || {
            let events = audit_events(&log);
            events
                .iter()
                .any(|e| e["trigger"] == "sighup")
                .then_some(events)
        })
        .await;
    let find = |reason: &str, appid: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["reason"] == reason && e["appid"] == appid)
            .collect()
    };
    let one = |reason: &str, appid: &str| -> &Value {
        let found = find(reason, appid);
        assert_eq!(found.len(), 1, "{reason} of {appid}: {events:#?}");
        found[0]
    };
    let e = one("stale_report", stale.as_str());
    assert_eq!(
        (&e["client"], &e["outcome"]),
        (&json!("php-sidecar"), &json!("refreshed"))
    );
    assert_eq!(e["remote"], "127.0.0.1");
    let e = one("admin_refresh", admin.as_str());
    assert_eq!(
        (&e["client"], &e["outcome"]),
        (&json!("ops-admin"), &json!("refreshed"))
    );
    let e = one("face_force", face.as_str());
    assert_eq!(
        (&e["client"], &e["outcome"]),
        (&json!("php-sidecar"), &json!("refreshed"))
    );
    let e = one("proxy_retry", proxied.as_str());
    assert_eq!(
        (&e["client"], &e["outcome"]),
        (&json!("anonymous"), &json!("refreshed"))
    );
    assert_eq!(e["trigger"], "http_token");
    let reloads = find("reload", "*");
    assert_eq!(reloads.len(), 2, "{reloads:#?}");
    assert_eq!(
        (
            &reloads[0]["client"],
            &reloads[0]["trigger"],
            &reloads[0]["outcome"]
        ),
        (&json!("ops-admin"), &json!("admin"), &json!("applied"))
    );
    assert_eq!(
        (&reloads[1]["client"], &reloads[1]["trigger"]),
        (&json!("-"), &json!("sighup"))
    );
    assert_eq!(one("reload", added.as_str())["outcome"], "added");
    // Nothing else rotated a token.
    assert_eq!(events.len(), 7, "{events:#?}");

    // No token, key or secret anywhere in the server's log.
    drop(server);
    let text = std::fs::read_to_string(&log).expect("the log");
    for token in &tokens {
        assert!(!text.contains(token.as_str()), "a token is in the log");
    }
    for (_, _, secret) in &accounts {
        assert!(!text.contains(secret.as_str()), "a secret is in the log");
    }
    assert!(
        !text.contains(ADMIN_KEY) && !text.contains(AGENT_KEY),
        "a key is in the log"
    );
}

/// The audit events of a JSON log.
fn audit_events(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["target"] == "wxtoken::audit")
        .collect()
}

#[test]
fn the_agent_refuses_bad_arguments_with_one_sentence() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = dir.path().join("key");
    std::fs::write(&key, "\n").expect("an empty key file");
    let out = dir.path().join("out");
    for (args, expected) in [
        (
            vec!["--server", "ftp://x", "--key-file", "k"],
            "--server must be an http",
        ),
        (
            vec![
                "--server",
                "http://127.0.0.1:1",
                "--key-file",
                "k",
                "--appid",
                "no/slash",
            ],
            "is not an appid",
        ),
        (
            vec![
                "--server",
                "http://127.0.0.1:1",
                "--key-file",
                "k",
                "--wait",
                "5m",
            ],
            "--wait must be",
        ),
        (
            vec![
                "--server",
                "http://127.0.0.1:1",
                "--key-file",
                key.to_str().unwrap(),
            ],
            "is empty",
        ),
        (
            vec![
                "--server",
                "http://127.0.0.1:1",
                "--key-file",
                "/nonexistent/key",
            ],
            "could not read the key file",
        ),
    ] {
        let mut full = vec!["agent", "--out", out.to_str().unwrap()];
        full.extend(args);
        let output = Command::new(env!("CARGO_BIN_EXE_wxtoken"))
            .args(&full)
            .output()
            .expect("wxtoken runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{full:?}: {stderr}");
        assert!(stderr.contains(expected), "{full:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[actix_web::test]
async fn sigterm_answers_held_long_polls_at_once_and_the_server_exits_cleanly() {
    let setup = Setup::new(&[Mode::Stable]).await;
    let log = setup.dir.path().join("server.log");
    let mut server = setup.serve(&log);
    setup.ready().await;
    let appid = &setup.accounts[0].0;
    let fetched_at = setup.fetched_at(appid).await;
    let held = {
        let request = setup
            .http
            .get(setup.url(&format!("/v1/token/{appid}?wait=300s&after={fetched_at}")))
            .bearer_auth(AGENT_KEY)
            .timeout(Duration::from_secs(60))
            .send();
        actix_web::rt::spawn(request)
    };
    Wait::up_to(Duration::from_secs(5))
        .until_async("the long-poll is held", async || {
            support::scraped(&setup.http, &setup.url(""), "wxtoken_long_polls_held", &[]).await
                == 1.0
        })
        .await;
    let stopping = Instant::now();
    send_signal(&server.0, "TERM");
    let answer = held
        .await
        .expect("the task")
        .expect("the held request is answered, not dropped");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        exit_code(&mut server.0, Duration::from_secs(10)).await,
        Some(0)
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the stop waited for the held request: {:?}",
        stopping.elapsed()
    );
}
