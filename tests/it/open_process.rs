//! The Open Platform in the real binary (`wxtoken serve` as a child process,
//! the simulator hosted by the test): an authorizer whose refresh token has
//! rotated survives `kill -9`, because every rotated refresh token is durable
//! before the access token it came with is served (contract §6). Also: the
//! store file is private and no refresh token reaches the log.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wxtoken::domain::KeyHash;
use wxtoken::simulator::{ComponentRegistration, SimConfig, Simulator};

use crate::support::process::{KillOnDrop, wxtoken};
use crate::support::wait::Wait;
use crate::support::{self};

const ADMIN_KEY: &str = "open-process-admin-key-0123456789";
/// WeChat's grace in this test (the server is told the same with `--wechat-grace`).
const GRACE_SECS: u64 = 2;

/// A component configured in a generated accounts.yaml, the simulator that
/// knows it, and where the server listens and logs.
struct Platform {
    sim: Simulator,
    dir: tempfile::TempDir,
    config: PathBuf,
    listen: String,
    component: String,
    http: reqwest::Client,
}

impl Platform {
    /// Tokens live 6 s with 2 s of grace; authorizers refresh at half their
    /// lifetime, so a refresh comes every 3 s or so.
    async fn new() -> Platform {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = support::simulator(SimConfig {
            token_ttl: Duration::from_secs(6),
            grace: Duration::from_secs(GRACE_SECS),
            ..SimConfig::default()
        })
        .await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let listen = support::free_addr().to_string();
        let fresh = support::fresh_component();
        let component = fresh.component_appid.clone();
        let reg = ComponentRegistration {
            callback_url: Some(format!("http://{listen}/v1/component/{component}/events")),
            rotate_refresh_tokens: true,
            ..fresh
        };
        let yaml = format!(
            "listen: {listen}\nupstream:\n  base_urls: [{}]\n  timeout: 2s\nstore:\n  path: data/wxtoken.redb\nrefresh:\n  legacy_at: 0.5\n  backoff_initial: 100ms\nclients:\n  - name: admin\n    key: {}\n    appids: [\"*\"]\n    admin: true\n{}accounts: []\n",
            sim.base_url(),
            KeyHash::of_key(ADMIN_KEY),
            support::components_yaml(&reg),
        );
        let config = dir.path().join("accounts.yaml");
        std::fs::write(&config, yaml).expect("write the config");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a client");
        let platform = Platform {
            sim,
            dir,
            config,
            listen,
            component,
            http,
        };
        // Registered before the server listens: the first ticket push fails,
        // the test pushes one when the server is up.
        platform
            .sim
            .try_register_component(ComponentRegistration {
                ticket_interval_ms: 0,
                ..reg
            })
            .expect("the simulator takes the component");
        platform
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("data").join("wxtoken.redb")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// `wxtoken serve` logging everything (`RUST_LOG=debug`) to `log`.
    fn serve(&self, log: &Path) -> KillOnDrop {
        let grace = GRACE_SECS.to_string();
        let mut cmd = wxtoken(&[
            "serve",
            "--config",
            self.config.to_str().expect("utf-8 path"),
            "--wechat-grace",
            &grace,
        ]);
        cmd.env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(File::create(log).expect("a log file")));
        KillOnDrop::spawn(cmd)
    }

    /// Waits until the load-balancer check answers 200 (tokens loaded).
    async fn loaded(&self) {
        Wait::up_to(Duration::from_secs(30))
            .every(Duration::from_millis(20))
            .until_async("wxtoken has loaded its tokens", async || {
                support::answers_ok(&self.http, &self.url("/readyz")).await
            })
            .await
    }

    /// `POST` JSON to the simulator's control API; the answer's JSON.
    async fn sim_control(&self, path: &str, body: Value) -> Value {
        let answer = self
            .http
            .post(format!("{}{path}", self.sim.base_url()))
            .json(&body)
            .send()
            .await
            .expect("the simulator answers");
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        answer.json().await.expect("JSON")
    }

    /// `GET /v1/token/{appid}` as status and body.
    async fn token(&self, appid: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(self.url(&format!("/v1/token/{appid}")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("wxtoken answers");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The authorizer's access token once one is served.
    async fn served_token(&self, appid: &str) -> String {
        Wait::up_to(Duration::from_secs(15))
            .every(Duration::from_millis(20))
            .for_value_async("the authorizer's token is served", async || {
                let (status, body) = self.token(appid).await;
                (status == StatusCode::OK)
                    .then(|| body["access_token"].as_str().map(str::to_string))
                    .flatten()
            })
            .await
    }

    /// The refresh token the simulator holds for `authorizer` now, read
    /// through `api_get_authorizer_list` with the component token the server
    /// serves.
    async fn refresh_token_at_wechat(&self, authorizer: &str) -> String {
        let r = self
            .http
            .get(self.url(&format!("/v1/component/{}/token", self.component)))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("wxtoken answers");
        assert_eq!(r.status(), StatusCode::OK, "the component token is served");
        let body: Value = r.json().await.expect("JSON");
        let component_token = body["component_access_token"].as_str().expect("a token");
        let list: Value = self
            .http
            .post(format!(
                "{}/cgi-bin/component/api_get_authorizer_list?component_access_token={component_token}",
                self.sim.base_url()
            ))
            .json(&json!({ "component_appid": self.component, "offset": 0, "count": 500 }))
            .send()
            .await
            .expect("the simulator answers")
            .json()
            .await
            .expect("JSON");
        list["list"]
            .as_array()
            .and_then(|l| l.iter().find(|a| a["authorizer_appid"] == authorizer))
            .and_then(|a| a["refresh_token"].as_str())
            .unwrap_or_else(|| panic!("{authorizer} is not listed: {list}"))
            .to_string()
    }

    fn calls(&self, api: &str) -> u64 {
        self.sim.stats().total_calls(api)
    }
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("the store file exists")
        .permissions()
        .mode()
        & 0o7777
}

#[actix_web::test]
async fn a_rotated_refresh_token_survives_kill_9_and_the_restart_refreshes_with_it() {
    let p = Platform::new().await;
    let log_before = p.dir.path().join("before.log");
    let server = p.serve(&log_before);
    p.loaded().await;
    p.sim_control(
        &format!("/sim/components/{}/push_ticket", p.component),
        json!({}),
    )
    .await;
    let authorizer = support::unique_appid().to_string();
    let answer = p
        .sim_control(
            &format!("/sim/components/{}/authorize", p.component),
            json!({ "authorizer_appid": authorizer }),
        )
        .await;
    assert_eq!(answer["delivered"], true, "{answer}");
    let first_token = p.served_token(&authorizer).await;
    let first_refresh = p.refresh_token_at_wechat(&authorizer).await;

    // Two refreshes through api_authorizer_token, each rotating the refresh
    // token; the kill comes right after the second one is served, so no
    // refresh is in flight.
    let mut current = first_token.clone();
    let mut refresh_tokens = vec![first_refresh.clone()];
    for _ in 0..2 {
        let previous = current.clone();
        current = Wait::up_to(Duration::from_secs(15))
            .every(Duration::from_millis(20))
            .for_value_async("the authorizer's token is refreshed", async || {
                let (status, body) = p.token(&authorizer).await;
                let token = body["access_token"].as_str()?.to_string();
                (status == StatusCode::OK && token != previous).then_some(token)
            })
            .await;
    }
    assert!(p.calls("api_authorizer_token") >= 2);
    let rotated = p.refresh_token_at_wechat(&authorizer).await;
    assert_ne!(rotated, first_refresh, "the refresh token rotated");
    refresh_tokens.push(rotated.clone());
    drop(server); // SIGKILL: no shutdown, no flush

    let query_auth = p.calls("api_query_auth");
    let listed = p.calls("api_get_authorizer_list");
    let refreshes = p.calls("api_authorizer_token");
    let log_after = p.dir.path().join("after.log");
    let _server = p.serve(&log_after);
    p.loaded().await;

    // Served at once from the store, with no new authorization.
    let (status, body) = p.token(&authorizer).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let restored = body["access_token"].as_str().expect("a token").to_string();
    assert!(
        p.sim.is_token_valid(&authorizer, &restored),
        "the token served after the kill is valid at WeChat"
    );

    // Within a lifetime it refreshes with the stored (rotated) refresh token:
    // a new valid token, without recovery through api_get_authorizer_list.
    let refreshed = Wait::up_to(Duration::from_secs(10))
        .every(Duration::from_millis(20))
        .for_value_async("the authorizer refreshes after the restart", async || {
            let (status, body) = p.token(&authorizer).await;
            let token = body["access_token"].as_str()?.to_string();
            (status == StatusCode::OK && token != restored).then_some(token)
        })
        .await;
    assert!(
        p.sim.is_token_valid(&authorizer, &refreshed),
        "the token refreshed after the kill is valid at WeChat"
    );
    assert!(p.calls("api_authorizer_token") > refreshes);
    assert_eq!(
        p.calls("api_query_auth"),
        query_auth,
        "no new authorization"
    );
    assert_eq!(
        p.calls("api_get_authorizer_list"),
        listed,
        "no recovery of a lost refresh token"
    );
    let accounts: Value = p
        .http
        .get(p.url("/v1/accounts"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("wxtoken answers")
        .json()
        .await
        .expect("JSON");
    let row = accounts
        .as_array()
        .and_then(|l| l.iter().find(|r| r["appid"] == authorizer.as_str()))
        .unwrap_or_else(|| panic!("{authorizer} is listed: {accounts}"));
    assert_eq!(row["authorization"], "authorized", "{row}");
    let after_restart = p.refresh_token_at_wechat(&authorizer).await;
    assert_ne!(after_restart, rotated, "the refresh token rotated again");
    refresh_tokens.push(after_restart);

    // An imported refresh token is an audited rotation cause (by an admin).
    let imported = support::unique_appid().to_string();
    let imported_refresh = format!("imported-refresh-token-{imported}");
    let answer: Value = p
        .http
        .post(p.url(&format!("/v1/component/{}/authorizers", p.component)))
        .bearer_auth(ADMIN_KEY)
        .json(&json!([{ "authorizer_appid": imported, "refresh_token": imported_refresh }]))
        .send()
        .await
        .expect("wxtoken answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["imported"], 1, "{answer}");
    refresh_tokens.push(imported_refresh);
    let audit = format!("audit: authorizer_import of {imported} by admin: imported");
    Wait::up_to(Duration::from_secs(5))
        .until("the import is in the audit trail", || {
            std::fs::read_to_string(&log_after).is_ok_and(|text| {
                text.lines().any(|l| {
                    l.contains(&audit)
                        && l.contains("wxtoken::audit")
                        && l.contains("remote=127.0.0.1")
                })
            })
        })
        .await;

    assert_eq!(mode_of(&p.store()), 0o600, "the store file is private");
    for log in [&log_before, &log_after] {
        let text = std::fs::read_to_string(log).expect("the log is readable");
        assert!(!text.is_empty(), "the server logged at debug level");
        for rt in &refresh_tokens {
            assert!(
                !text.contains(rt.as_str()),
                "a refresh token is in {}",
                log.display()
            );
        }
    }
}
