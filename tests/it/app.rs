//! `TestApp`: a whole wxtoken server on a free loopback port, fetching tokens
//! from a real in-process WeChat simulator, with one method per endpoint.
//!
//! `spawn_app()` gives the usual fixture (one stable and one legacy account,
//! three clients: admin, reader, scoped); [`TestAppBuilder`] varies it. The
//! configuration is written as YAML and read by the real loader.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use wxtoken::api::AppState;
use wxtoken::config::{LoadOptions, load};
use wxtoken::domain::{AppId, KeyHash, Mode, TicketKind};
use wxtoken::engine::EngineOptions;
use wxtoken::reload::ReloadSource;
use wxtoken::simulator::{AppRegistration, SimConfig, Simulator};
use wxtoken::startup::{Application, BuildOptions};
use wxtoken::store::Storage;

use crate::support;
use crate::support::wait::Wait;

/// The key of the `admin` client: every appid, admin.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
/// The key of the `reader` client: every appid, not admin.
pub const READER_KEY: &str = "test-reader-key-0123456789";
/// The key of the `scoped` client: only the first account, not admin.
pub const SCOPED_KEY: &str = "test-scoped-key-0123456789";

/// The prefix of the secrets the simulator knows the accounts by.
const SIM_SECRET: &str = "sim-secret";

/// How long `spawn` waits for the accounts to settle.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// One account of a [`TestApp`].
#[derive(Debug, Clone)]
pub struct TestAccount {
    pub appid: AppId,
    pub mode: Mode,
    /// The secret the simulator knows.
    pub secret: String,
    /// The secret in wxtoken's configuration (differs when `broken`).
    pub configured_secret: String,
    /// Configured with a wrong secret, so it never gets a token.
    pub broken: bool,
    /// JS-SDK tickets configured for it.
    pub tickets: Vec<TicketKind>,
    /// A WeCom app: its corpid and agentid (its appid is `corpid:agentid`).
    pub wecom: Option<(String, u64)>,
}

/// One Open Platform component of a [`TestApp`], known to the simulator
/// with the server's event URL as its callback.
#[derive(Debug, Clone)]
pub struct TestComponent {
    pub appid: AppId,
    pub secret: String,
    /// The message-check Token.
    pub token: String,
    /// The 43-character EncodingAESKey.
    pub aes_key: String,
    /// The simulator rotates refresh tokens on every refresh.
    pub rotate: bool,
}

impl TestComponent {
    /// The crypt WeChat seals this component's events with.
    pub fn crypt(&self) -> wxtoken::openplatform::MsgCrypt {
        wxtoken::openplatform::MsgCrypt::new(&self.token, &self.aes_key, self.appid.as_str())
            .expect("a valid test key")
    }
}

/// What the builder is asked for, per account.
#[derive(Debug, Clone)]
struct AccountSpec {
    mode: Mode,
    broken: bool,
    tickets: Vec<TicketKind>,
    wecom: Option<(String, u64)>,
}

/// A running server, its simulator and an HTTP client.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base_url: String,
    pub sim: Simulator,
    pub state: AppState,
    pub accounts: Vec<TestAccount>,
    /// The Open Platform components (their authorizers come by events).
    pub components: Vec<TestComponent>,
    /// The configuration file the server reads (and reloads).
    pub config_path: PathBuf,
    /// The token store file.
    pub store_path: PathBuf,
    http: reqwest::Client,
    handle: ServerHandle,
    server: Option<actix_web::rt::task::JoinHandle<std::io::Result<()>>>,
    grace: Duration,
    clients: bool,
    refresh: Vec<String>,
    /// Settings of the `metrics:` and `proxy:` sections, as `section.setting`.
    sections: Vec<String>,
    store: Option<Arc<dyn Storage>>,
    dir: tempfile::TempDir,
}

/// Builds a [`TestApp`] with chosen accounts, clients and simulator settings.
pub struct TestAppBuilder {
    accounts: Vec<AccountSpec>,
    components: Vec<bool>,
    sim: SimConfig,
    clients: bool,
    refresh: Vec<String>,
    /// Settings of the `metrics:` and `proxy:` sections, as `section.setting`,
    /// and of every WeChat account, as `account.setting`.
    sections: Vec<String>,
    store: Option<Arc<dyn Storage>>,
}

/// The usual fixture: a stable and a legacy account, all three clients.
pub async fn spawn_app() -> TestApp {
    TestAppBuilder::new()
        .accounts(&[Mode::Stable, Mode::Legacy])
        .spawn()
        .await
}

impl Default for TestAppBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TestAppBuilder {
    /// No accounts yet, WeChat's default lifetimes, the three clients.
    pub fn new() -> Self {
        TestAppBuilder {
            accounts: Vec::new(),
            components: Vec::new(),
            sim: SimConfig::default(),
            clients: true,
            refresh: Vec::new(),
            sections: Vec::new(),
            store: None,
        }
    }

    /// Adds an Open Platform component; the simulator rotates its
    /// authorizers' refresh tokens when `rotate`.
    pub fn component(mut self, rotate: bool) -> Self {
        self.components.push(rotate);
        self
    }

    /// Adds a working account in `mode`.
    pub fn account(mut self, mode: Mode) -> Self {
        self.accounts.push(AccountSpec {
            mode,
            broken: false,
            tickets: Vec::new(),
            wecom: None,
        });
        self
    }

    /// Adds a working account in each of `modes`, in order.
    pub fn accounts(self, modes: &[Mode]) -> Self {
        modes
            .iter()
            .fold(self, |builder, &mode| builder.account(mode))
    }

    /// Adds an account whose configured secret is wrong (WeChat answers 40125).
    pub fn broken_account(mut self, mode: Mode) -> Self {
        self.accounts.push(AccountSpec {
            mode,
            broken: true,
            tickets: Vec::new(),
            wecom: None,
        });
        self
    }

    /// Adds a working account in `mode` with JS-SDK `tickets`.
    pub fn account_with_tickets(mut self, mode: Mode, tickets: &[TicketKind]) -> Self {
        self.accounts.push(AccountSpec {
            mode,
            broken: false,
            tickets: tickets.to_vec(),
            wecom: None,
        });
        self
    }

    /// Adds a WeCom app of `corpid` with `agentid`.
    pub fn wecom_app(mut self, corpid: &str, agentid: u64) -> Self {
        self.accounts.push(AccountSpec {
            mode: Mode::Stable,
            broken: false,
            tickets: Vec::new(),
            wecom: Some((corpid.to_string(), agentid)),
        });
        self
    }

    /// Uses these simulator settings (e.g. short token lifetimes); wxtoken's
    /// grace follows the simulator's.
    pub fn sim_config(mut self, sim: SimConfig) -> Self {
        self.sim = sim;
        self
    }

    /// Adds a `refresh:` setting, like `stable_window: 2s`.
    pub fn refresh_setting(mut self, setting: &str) -> Self {
        self.refresh.push(setting.to_string());
        self
    }

    /// Adds a `metrics:` setting, like `per_account: essential`.
    pub fn metrics_setting(mut self, setting: &str) -> Self {
        self.sections.push(format!("metrics.{setting}"));
        self
    }

    /// Adds a setting (`fallback_to_stable: true`) to every WeChat account.
    pub fn account_setting(mut self, setting: &str) -> Self {
        self.sections.push(format!("account.{setting}"));
        self
    }

    /// Adds a `proxy:` setting, like `max_body: 1KiB`.
    pub fn proxy_setting(mut self, setting: &str) -> Self {
        self.sections.push(format!("proxy.{setting}"));
        self
    }

    /// Uses this token store instead of the redb file in the temporary directory.
    pub fn store(mut self, store: Arc<dyn Storage>) -> Self {
        self.store = Some(store);
        self
    }

    /// Configures no clients: the API is open to loopback callers.
    pub fn without_clients(mut self) -> Self {
        self.clients = false;
        self
    }

    /// Starts the simulator and the server, and waits until every working
    /// account serves a token and every broken one has failed once.
    pub async fn spawn(self) -> TestApp {
        // reqwest is built without a default TLS provider; any will do for plain http.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let grace = self.sim.grace;
        let sim = support::simulator(self.sim).await;
        let accounts: Vec<TestAccount> = self
            .accounts
            .iter()
            .map(|spec| {
                let (mode, broken) = (spec.mode, spec.broken);
                let appid = match &spec.wecom {
                    Some((corpid, agentid)) => {
                        AppId::parse(&format!("{corpid}:{agentid}")).expect("a valid WeCom id")
                    }
                    None => support::unique_appid(),
                };
                let secret = format!("{SIM_SECRET}-{appid}");
                sim.register_app(AppRegistration {
                    appid: appid.to_string(),
                    secret: secret.clone(),
                    ip_whitelist: vec![],
                });
                let configured_secret = if broken {
                    format!("wrong-secret-{appid}")
                } else {
                    secret.clone()
                };
                TestAccount {
                    appid,
                    mode,
                    secret,
                    configured_secret,
                    broken,
                    tickets: spec.tickets.clone(),
                    wecom: spec.wecom.clone(),
                }
            })
            .collect();

        let components: Vec<TestComponent> = self
            .components
            .iter()
            .map(|&rotate| TestComponent {
                appid: support::unique_appid(),
                secret: format!("component-secret-{}", rand::random::<u32>()),
                token: format!("tok{}", rand::random::<u32>()),
                aes_key: support::encoding_aes_key(),
                rotate,
            })
            .collect();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config_path = dir.path().join("accounts.yaml");
        let store_path = dir.path().join("data").join("wxtoken.redb");
        write_config(
            &config_path,
            &sim,
            (&accounts, &components),
            self.clients,
            (&self.refresh, &self.sections),
            &store_path,
        );
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("an HTTP client");
        let (addr, state, handle, server) =
            start_server(&config_path, &sim, grace, self.store.clone()).await;
        let test_app = TestApp {
            addr,
            base_url: format!("http://{addr}"),
            sim,
            state,
            accounts,
            components,
            config_path,
            store_path,
            http,
            handle,
            server: Some(server),
            grace,
            clients: self.clients,
            refresh: self.refresh,
            sections: self.sections,
            store: self.store,
            dir,
        };
        test_app.register_components();
        test_app.wait_until_settled().await;
        test_app
    }
}

/// Loads the configuration file and starts a server from it (with reload enabled).
async fn start_server(
    config_path: &Path,
    sim: &Simulator,
    grace: Duration,
    store: Option<Arc<dyn Storage>>,
) -> (
    SocketAddr,
    AppState,
    ServerHandle,
    actix_web::rt::task::JoinHandle<std::io::Result<()>>,
) {
    let options = LoadOptions::from_pairs([]);
    let loaded = load(config_path, &options).unwrap_or_else(|problems| {
        let yaml = std::fs::read_to_string(config_path).unwrap_or_default();
        panic!("the test configuration is invalid:\n{problems}\n---\n{yaml}")
    });
    let app = Application::build(
        loaded.config,
        BuildOptions {
            engine: EngineOptions {
                clock: sim.clock().clone(),
                grace,
                store,
                ..EngineOptions::default()
            },
            workers: Some(2),
            reload: Some(ReloadSource {
                path: config_path.to_path_buf(),
                options,
            }),
        },
    )
    .await
    .expect("the application builds on a free loopback port");
    let addr = app.addr();
    let state = app.state();
    let handle = app.handle();
    let server = actix_web::rt::spawn(app.run_until_stopped());
    (addr, state, handle, server)
}

/// Writes each account's configured secret to `secrets/<appid>` next to the
/// configuration, and the configuration itself.
fn write_config(
    config_path: &Path,
    sim: &Simulator,
    (accounts, components): (&[TestAccount], &[TestComponent]),
    clients: bool,
    settings: (&[String], &[String]),
    store_path: &Path,
) {
    let dir = config_path.parent().expect("the config is in a directory");
    std::fs::create_dir_all(dir.join("secrets")).expect("a secrets directory");
    for account in accounts {
        std::fs::write(
            dir.join("secrets").join(account.appid.as_str()),
            &account.configured_secret,
        )
        .expect("write a secret file");
    }
    let yaml = config_yaml(sim, (accounts, components), clients, settings, store_path);
    // Write and rename, as editors do, so a watcher never sees half a file.
    let tmp = dir.join(".accounts.yaml.tmp");
    std::fs::write(&tmp, yaml).expect("write the config");
    std::fs::rename(&tmp, config_path).expect("replace the config");
}

/// The YAML configuration of a test app.
fn config_yaml(
    sim: &Simulator,
    (accounts, components): (&[TestAccount], &[TestComponent]),
    clients: bool,
    (refresh, sections): (&[String], &[String]),
    store_path: &Path,
) -> String {
    let mut yaml = format!(
        "listen: 127.0.0.1:0\n\
         upstream:\n  base_urls: [{}]\n  wecom_base_urls: [{}]\n  timeout: 2s\n\
         store:\n  path: {}\n\
         refresh:\n  backoff_initial: 200ms\n",
        sim.base_url(),
        sim.base_url(),
        store_path.display()
    );
    for setting in refresh {
        yaml.push_str(&format!("  {setting}\n"));
    }
    for section in ["metrics", "proxy"] {
        let prefix = format!("{section}.");
        let lines: Vec<&str> = sections
            .iter()
            .filter_map(|s| s.strip_prefix(prefix.as_str()))
            .collect();
        if !lines.is_empty() {
            yaml.push_str(&format!("{section}:\n"));
            for setting in lines {
                yaml.push_str(&format!("  {setting}\n"));
            }
        }
    }
    if clients {
        let first = accounts
            .first()
            .map_or("wx0000000000000000".to_string(), |a| a.appid.to_string());
        yaml.push_str(&format!(
            "clients:\n\
             \x20 - name: admin\n    key: {}\n    appids: [\"*\"]\n    admin: true\n\
             \x20 - name: reader\n    key: {}\n    appids: [\"*\"]\n\
             \x20 - name: scoped\n    key: {}\n    appids: [{first}]\n",
            KeyHash::of_key(ADMIN_KEY),
            KeyHash::of_key(READER_KEY),
            KeyHash::of_key(SCOPED_KEY),
        ));
    }
    if !components.is_empty() {
        yaml.push_str("components:\n");
        for (i, c) in components.iter().enumerate() {
            yaml.push_str(&format!(
                "  - appid: {}\n    name: Test platform {i}\n    secret: {}\n    token: {}\n    encoding_aes_key: {}\n",
                c.appid, c.secret, c.token, c.aes_key
            ));
        }
    }
    yaml.push_str("accounts:\n");
    for (i, a) in accounts.iter().enumerate() {
        match &a.wecom {
            Some((corpid, agentid)) => yaml.push_str(&format!(
                "  - kind: wecom\n    corpid: {corpid}\n    agentid: {agentid}\n    name: Test app {i}\n    secret_file: secrets/{}\n",
                a.appid
            )),
            None => {
                yaml.push_str(&format!(
                    "  - appid: {}\n    name: Test account {i}\n    secret_file: secrets/{}\n    mode: {}\n",
                    a.appid, a.appid, a.mode
                ));
                for setting in sections.iter().filter_map(|s| s.strip_prefix("account.")) {
                    yaml.push_str(&format!("    {setting}\n"));
                }
            }
        }
        if !a.tickets.is_empty() {
            let list: Vec<&str> = a.tickets.iter().map(|t| t.as_str()).collect();
            yaml.push_str(&format!("    tickets: [{}]\n", list.join(", ")));
        }
    }
    yaml
}

impl TestApp {
    /// Polls `/readyz?strict=1` (bounded) until every working account is ready and
    /// every broken one has recorded a failure.
    async fn wait_until_settled(&self) {
        let broken: Vec<AppId> = self.broken().map(|a| a.appid.clone()).collect();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            // The accounts part of strict readiness: a failing store (some
            // tests use one on purpose) must not keep the app from settling.
            let status = self.readyz().await.status();
            let now = self.state.clock.now_unix_ms();
            let mut missing = self.state.directory.not_ready(now);
            missing.sort();
            let mut want = broken.clone();
            want.sort();
            let broken_failed = broken.iter().all(|appid| {
                self.state
                    .directory
                    .get(appid)
                    .is_some_and(|s| s.status().last_error.is_some())
            });
            let settled = status == StatusCode::OK && missing == want && broken_failed;
            if settled {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the app did not settle within {READY_TIMEOUT:?}; /readyz says {status}, not ready: {missing:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A new account registered with the simulator (not yet in the config).
    pub fn new_account(&self, mode: Mode) -> TestAccount {
        let (appid, secret) = support::register_fresh(&self.sim, SIM_SECRET);
        TestAccount {
            appid,
            mode,
            configured_secret: secret.clone(),
            secret,
            broken: false,
            tickets: Vec::new(),
            wecom: None,
        }
    }

    /// Rewrites the configuration file with `accounts` (the server notices
    /// only on reload).
    pub fn write_config(&self, accounts: &[TestAccount]) {
        write_config(
            &self.config_path,
            &self.sim,
            (accounts, &self.components),
            self.clients,
            (&self.refresh, &self.sections),
            &self.store_path,
        );
    }

    /// Writes raw text as the configuration file.
    pub fn write_config_text(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("write the config");
    }

    /// Stops the server gracefully (as SIGTERM does) and waits until it has
    /// finished, store flush included.
    pub async fn stop(&mut self) {
        self.handle.stop(true).await;
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the server task ends")
                .expect("the server ran without error");
        }
    }

    /// Stops the server gracefully and starts a new one from the same
    /// configuration file, store and simulator; waits until it settles.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (addr, state, handle, server) =
            start_server(&self.config_path, &self.sim, self.grace, self.store.clone()).await;
        self.addr = addr;
        self.base_url = format!("http://{addr}");
        self.state = state;
        self.handle = handle;
        self.server = Some(server);
        self.register_components();
        self.wait_until_settled().await;
    }

    /// (Re-)registers the components with the simulator, their callback the
    /// server's event URL (the simulator keeps their tokens and authorizers,
    /// and pushes a verify ticket at once).
    fn register_components(&self) {
        for c in &self.components {
            let mut reg = wxtoken::simulator::ComponentRegistration::new(
                c.appid.as_str(),
                &c.secret,
                &c.token,
                &c.aes_key,
            );
            reg.callback_url = Some(format!("{}/v1/component/{}/events", self.base_url, c.appid));
            reg.rotate_refresh_tokens = c.rotate;
            self.sim
                .try_register_component(reg)
                .expect("the simulator takes the component");
        }
    }

    /// The first component.
    pub fn component(&self) -> &TestComponent {
        self.components.first().expect("a component was configured")
    }

    /// `POST` JSON to the simulator's control API; the answer's JSON.
    pub async fn sim_control(&self, path: &str, body: Value) -> Value {
        let answer = self
            .http
            .post(format!("{}{path}", self.sim.base_url()))
            .json(&body)
            .send()
            .await
            .expect("the simulator answers");
        let status = answer.status();
        let json: Value = answer.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {json}");
        json
    }

    /// `POST /v1/admin/reload`.
    pub async fn admin_reload(&self, key: Option<&str>) -> Response {
        self.send(self.request(Method::POST, "/v1/admin/reload", key))
            .await
    }

    /// The working accounts.
    pub fn healthy(&self) -> impl Iterator<Item = &TestAccount> {
        self.accounts.iter().filter(|a| !a.broken)
    }

    /// The broken accounts.
    pub fn broken(&self) -> impl Iterator<Item = &TestAccount> {
        self.accounts.iter().filter(|a| a.broken)
    }

    /// The first working account in `mode`.
    pub fn account(&self, mode: Mode) -> &TestAccount {
        self.healthy()
            .find(|a| a.mode == mode)
            .unwrap_or_else(|| panic!("the test app has no working {mode} account"))
    }

    /// True when `appid` serves a token now (read from the directory).
    pub fn is_ready(&self, appid: &AppId) -> bool {
        self.state
            .directory
            .get(appid)
            .is_some_and(|slot| slot.is_ready(self.state.clock.now_unix_ms()))
    }

    /// When the next refresh of `appid` is planned; panics when it is not configured.
    pub fn next_refresh_at_ms(&self, appid: &AppId) -> Option<i64> {
        self.state
            .directory
            .get(appid)
            .unwrap_or_else(|| panic!("{appid} is not configured"))
            .status()
            .next_refresh_at_ms
    }

    /// The token currently published for `appid` (read from the directory).
    pub fn current_token(&self, appid: &AppId) -> String {
        self.state
            .directory
            .get(appid)
            .and_then(|slot| slot.token())
            .map(|t| t.token.expose().to_string())
            .unwrap_or_else(|| panic!("{appid} has no token"))
    }

    /// A request to `path` with an optional API key.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        match key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    /// `method path` with an optional API key, for what no endpoint method covers.
    pub async fn call(&self, method: Method, path: &str, key: Option<&str>) -> Response {
        self.send(self.request(method, path, key)).await
    }

    async fn send(&self, builder: reqwest::RequestBuilder) -> Response {
        builder.send().await.expect("the server answers")
    }

    /// `GET /v1/token/{appid}`.
    pub async fn get_token(&self, appid: &str, key: Option<&str>) -> Response {
        self.send(self.request(Method::GET, &format!("/v1/token/{appid}"), key))
            .await
    }

    /// `POST /v1/token/{appid}/refresh` with a raw `body`.
    pub async fn refresh(
        &self,
        appid: &str,
        body: impl Into<reqwest::Body>,
        key: Option<&str>,
    ) -> Response {
        self.post_json(&format!("/v1/token/{appid}/refresh"), body, key)
            .await
    }

    /// `POST path` with a raw JSON `body`.
    async fn post_json(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        key: Option<&str>,
    ) -> Response {
        self.send(
            self.request(Method::POST, path, key)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    /// `POST /v1/token/{appid}/refresh` with `{"stale_token": stale}`.
    pub async fn report_stale(&self, appid: &str, stale: &str, key: Option<&str>) -> Response {
        let body = serde_json::json!({ "stale_token": stale }).to_string();
        self.refresh(appid, body, key).await
    }

    /// `GET /v1/ticket/{appid}/{kind}`.
    pub async fn get_ticket(&self, appid: &str, kind: &str, key: Option<&str>) -> Response {
        self.send(self.request(Method::GET, &format!("/v1/ticket/{appid}/{kind}"), key))
            .await
    }

    /// `POST /v1/ticket/{appid}/{kind}/refresh` with a raw JSON `body`.
    pub async fn refresh_ticket(
        &self,
        appid: &str,
        kind: &str,
        body: impl Into<reqwest::Body>,
        key: Option<&str>,
    ) -> Response {
        self.post_json(&format!("/v1/ticket/{appid}/{kind}/refresh"), body, key)
            .await
    }

    /// `POST /v1/ticket/{appid}/{kind}/refresh` with `{"stale_ticket": stale}`.
    pub async fn report_stale_ticket(
        &self,
        appid: &str,
        kind: &str,
        stale: &str,
        key: Option<&str>,
    ) -> Response {
        let body = serde_json::json!({ "stale_ticket": stale }).to_string();
        self.refresh_ticket(appid, kind, body, key).await
    }

    /// `POST /v1/ticket/{appid}/jsapi/signature` with a raw JSON `body`.
    pub async fn jsapi_signature(
        &self,
        appid: &str,
        body: impl Into<reqwest::Body>,
        key: Option<&str>,
    ) -> Response {
        self.post_json(&format!("/v1/ticket/{appid}/jsapi/signature"), body, key)
            .await
    }

    /// Polls `GET /v1/ticket/{appid}/{kind}` as the reader (bounded) until it
    /// answers 200; returns the body.
    pub async fn wait_for_ticket(&self, appid: &str, kind: &str) -> Value {
        Wait::up_to(Duration::from_secs(10))
            .for_value_async(&format!("a {kind} ticket for {appid}"), async || {
                let r = self.get_ticket(appid, kind, Some(READER_KEY)).await;
                if r.status() == StatusCode::OK {
                    Some(r.json().await.expect("JSON"))
                } else {
                    None
                }
            })
            .await
    }

    /// `GET /v1/accounts`.
    pub async fn accounts(&self, key: Option<&str>) -> Response {
        self.send(self.request(Method::GET, "/v1/accounts", key))
            .await
    }

    /// `POST /v1/accounts/{appid}/refresh`.
    /// Someone with `account`'s AppSecret fetches a token at WeChat (the
    /// simulator's legacy `/cgi-bin/token`) behind wxtoken's back, and
    /// WeChat's grace passes: the token wxtoken holds is dead at WeChat.
    /// Returns the token wxtoken held.
    pub async fn rotate_behind_wxtokens_back(&self, account: &TestAccount) -> String {
        let held = self.current_token(&account.appid);
        let answer: Value = self
            .http
            .get(format!("{}/cgi-bin/token", self.sim.base_url()))
            .query(&[
                ("grant_type", "client_credential"),
                ("appid", account.appid.as_str()),
                ("secret", account.secret.as_str()),
            ])
            .send()
            .await
            .expect("the simulator answers")
            .json()
            .await
            .expect("JSON");
        assert!(answer["access_token"].is_string(), "{answer}");
        self.sim.advance(self.grace + Duration::from_secs(1));
        assert!(
            !self.sim.is_token_valid(account.appid.as_str(), &held),
            "wxtoken's token survived the rotation"
        );
        held
    }

    pub async fn admin_refresh(&self, appid: &str, key: Option<&str>) -> Response {
        self.send(self.request(Method::POST, &format!("/v1/accounts/{appid}/refresh"), key))
            .await
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Response {
        self.send(self.request(Method::GET, "/healthz", None)).await
    }

    /// `GET /readyz`: the load-balancer check.
    pub async fn readyz(&self) -> Response {
        self.send(self.request(Method::GET, "/readyz", None)).await
    }

    /// `GET /readyz?strict=1`: ready only when every enabled account has a usable token.
    pub async fn readyz_strict(&self) -> Response {
        self.send(self.request(Method::GET, "/readyz?strict=1", None))
            .await
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        let response = self.send(self.request(Method::GET, "/metrics", None)).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.expect("a metrics body")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The stop command is sent right away; the returned future only
        // waits for the server to confirm, which nobody needs here.
        drop(self.handle.stop(false));
    }
}

/// The body of `response` as JSON, with the status checked first.
pub async fn json(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let text = response.text().await.expect("a body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {text}"))
}
