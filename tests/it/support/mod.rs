//! Shared test helpers: an in-process simulator, a WeChat client pointed at it,
//! and small utilities; the submodules hold polling ([`wait`]), token probing
//! ([`probe`]), raw HTTP ([`raw_http`]), store doubles ([`stores`]) and child
//! processes ([`process`]). Every helper talks only to loopback.
//!
//! The benches include this module too (`#[path]`), so nothing here may use
//! the integration tests' other modules.

#![allow(dead_code)]

pub mod congestion;
pub mod probe;
pub mod process;
pub mod raw_http;
pub mod stores;
pub mod wait;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use url::Url;
use wxtoken::clock::Clock;
use wxtoken::config::UpstreamConfig;
use wxtoken::domain::AppId;
use wxtoken::metrics::Metrics;
use wxtoken::simulator::{AppRegistration, FaultSpec, InProcess, SimConfig, Simulator, Stats};
use wxtoken::wechat::WechatClient;

/// A loopback address with a free port.
pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("static address")
}

/// Starts a simulator with `config` on a free loopback port.
pub async fn simulator(config: SimConfig) -> Simulator {
    Simulator::start(config, any_port())
        .await
        .expect("the simulator binds a free loopback port")
}

/// A random 43-character EncodingAESKey (32 random bytes in Base64, without
/// the `=`), as the Open Platform's settings page generates one.
pub fn encoding_aes_key() -> String {
    use base64::Engine as _;
    let key: [u8; 32] = rand::random();
    let mut text = base64::engine::general_purpose::STANDARD.encode(key);
    text.pop();
    text
}

/// A process-unique WeChat-shaped appid, so tests never share simulator state by accident.
pub fn unique_appid() -> AppId {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    AppId::parse(&format!(
        "wx{:016x}",
        (std::process::id() as u64) << 24 | n as u64
    ))
    .expect("generated appid is valid")
}

/// Registers a fresh app with `secret` in `sim` and returns its appid.
pub fn register(sim: &Simulator, secret: &str) -> AppId {
    let appid = unique_appid();
    register_as(sim, appid.as_str(), secret);
    appid
}

/// Registers (or re-registers) `appid` with `secret` in `sim`, from any IP.
pub fn register_as(sim: &Simulator, appid: &str, secret: &str) {
    sim.register_app(AppRegistration {
        appid: appid.to_string(),
        secret: secret.to_string(),
        ip_whitelist: vec![],
    });
}

/// Registers a fresh app in `sim` with the secret `{prefix}-{appid}`;
/// returns its appid and secret.
pub fn register_fresh(sim: &Simulator, prefix: &str) -> (AppId, String) {
    let appid = unique_appid();
    let secret = format!("{prefix}-{appid}");
    register_as(sim, appid.as_str(), &secret);
    (appid, secret)
}

/// A fault on the next call of `api` for `appid` only; fill in what it does
/// (`FaultSpec { errcode: Some(-1), ..fault_once(api, appid) }`).
pub fn fault_once(api: &str, appid: &str) -> FaultSpec {
    FaultSpec {
        api: Some(api.to_string()),
        appid: Some(appid.to_string()),
        count: Some(1),
        ..FaultSpec::default()
    }
}

pub fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

/// A loopback address whose port was free a moment ago.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind(any_port())
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    free_addr().port()
}

/// A base URL on which nothing listens (the port was free a moment ago).
pub fn closed_port_url() -> Url {
    Url::parse(&format!("http://{}", free_addr())).expect("valid url")
}

/// A WeChat client for `base_urls` with `timeout` and `max_concurrency`, plus its metrics.
pub fn client_with(
    base_urls: Vec<Url>,
    timeout: Duration,
    max_concurrency: usize,
) -> (WechatClient, Metrics) {
    let metrics = Metrics::new();
    let config = UpstreamConfig {
        // WeCom calls go to the same (simulated) host.
        wecom_base_urls: base_urls.clone(),
        base_urls,
        timeout,
        max_concurrency,
    };
    let client = WechatClient::new(&config, metrics.clone()).expect("client builds");
    (client, metrics)
}

/// An HTTP client for loopback servers (no proxy, 10 s timeout).
pub fn http() -> reqwest::Client {
    // reqwest is built without a default TLS provider; any will do for plain http.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// A WeChat client for one simulator with a 2 s timeout.
pub fn client_for(sim: &Simulator) -> (WechatClient, Metrics) {
    client_with(vec![url(sim)], Duration::from_secs(2), 8)
}

pub fn url(sim: &Simulator) -> Url {
    Url::parse(&sim.base_url()).expect("simulator base url is valid")
}

/// The value of one sample of a metric family in Prometheus text, 0 when absent.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The sample `name{labels}` of the metrics a server at `base` (`http://host:port`) exports now.
pub async fn scraped(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("the server answers /metrics")
        .text()
        .await
        .expect("the metrics text");
    metric_value(&text, name, labels)
}

/// True when `GET url` answers 200 (false when nothing answers).
pub async fn answers_ok(http: &reqwest::Client, url: &str) -> bool {
    http.get(url)
        .send()
        .await
        .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
}

/// Token calls (`token` and `stable_token`) the simulator received for `appid`.
pub fn token_calls(stats: &Stats, appid: &str) -> u64 {
    stats.calls_to(appid, "token") + stats.calls_to(appid, "stable_token")
}

/// Token calls (`token` and `stable_token`) the simulator received in all.
pub fn all_token_calls(stats: &Stats) -> u64 {
    stats.total_calls("token") + stats.total_calls("stable_token")
}

/// The appids of a JSON list of accounts (`/readyz`'s `failing` or
/// `not_ready`), in order; panics when `body` has no such list.
pub fn appids_in<'a>(body: &'a Value, list: &str) -> Vec<&'a str> {
    body[list]
        .as_array()
        .unwrap_or_else(|| panic!("a {list} list: {body}"))
        .iter()
        .filter_map(|r| r["appid"].as_str())
        .collect()
}

/// The most samples (ms) that fall into any window of `width` ms.
pub fn densest_window(samples: &[i64], width: i64) -> usize {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let mut best = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= width {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// Makes a named pipe at `path`: a reader that opens it blocks until a writer comes.
pub fn fifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Pauses tokio's clock and returns it with an in-process simulator on it
/// (WeChat's real lifetimes, a 5 s upstream timeout).
pub fn virtual_simulator() -> (Clock, InProcess) {
    tokio::time::pause();
    let clock = Clock::tokio();
    let sim = InProcess::new(
        SimConfig {
            clock: clock.clone(),
            ..SimConfig::default()
        },
        Duration::from_secs(5),
    )
    .expect("valid simulator config");
    (clock, sim)
}

/// The refresh token a server's directory holds for the authorizer `appid`.
pub fn held_refresh_token(
    directory: &wxtoken::snapshot::Directory,
    appid: &AppId,
) -> Option<String> {
    directory
        .get(appid)
        .and_then(|s| s.open())
        .and_then(|o| o.refresh_token.as_ref().map(|t| t.expose().to_string()))
}

/// The `components:` section of an accounts.yaml for `reg`.
pub fn components_yaml(reg: &wxtoken::simulator::ComponentRegistration) -> String {
    format!(
        "components:\n  - appid: {}\n    secret: {}\n    token: {}\n    encoding_aes_key: {}\n",
        reg.component_appid, reg.secret, reg.token, reg.encoding_aes_key
    )
}

/// A new component with random credentials and WeChat's defaults (rotating
/// refresh tokens, no callback yet).
pub fn fresh_component() -> wxtoken::simulator::ComponentRegistration {
    wxtoken::simulator::ComponentRegistration::new(
        unique_appid().as_str(),
        &format!("component-secret-{}", rand::random::<u32>()),
        &format!("componenttoken{}", rand::random::<u32>()),
        &encoding_aes_key(),
    )
}

/// The engine for `config` on `clock`, fetching from `upstream` and keeping
/// tokens in memory (written inline): how the virtual-time tests and the
/// benches start one.
pub async fn engine_in_memory(
    clock: &Clock,
    config: &wxtoken::engine::EngineConfig,
    upstream: std::sync::Arc<dyn wxtoken::wechat::TokenSource>,
) -> wxtoken::engine::Engine {
    wxtoken::engine::Engine::start(
        config,
        wxtoken::engine::EngineOptions {
            clock: clock.clone(),
            upstream: Some(upstream),
            store: Some(std::sync::Arc::new(wxtoken::store::MemoryStore::new())),
            inline_store: true,
            ..wxtoken::engine::EngineOptions::default()
        },
    )
    .await
    .expect("the engine starts")
}
