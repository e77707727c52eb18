//! Shared test helpers: an in-process simulator, a WeChat client pointed at it,
//! and small utilities. Every helper talks only to loopback.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use secrecy::SecretString;
use url::Url;
use wxtoken::config::UpstreamConfig;
use wxtoken::domain::AppId;
use wxtoken::metrics::Metrics;
use wxtoken::simulator::{AppRegistration, SimConfig, Simulator};
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
    sim.register_app(AppRegistration {
        appid: appid.to_string(),
        secret: secret.to_string(),
        ip_whitelist: vec![],
    });
    appid
}

pub fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

/// A base URL on which nothing listens (the port was free a moment ago).
pub fn closed_port_url() -> Url {
    let listener = TcpListener::bind(any_port()).expect("bind a free port");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    Url::parse(&format!("http://{addr}")).expect("valid url")
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
