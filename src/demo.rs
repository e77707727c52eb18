//! `wxtoken demo`: the out-of-the-box experience.
//!
//! Owns: starting the built-in simulator on a free loopback port, registering
//! every configured account with it (real secrets are not needed), running the
//! server against it with a one-off admin key, and printing curl lines that
//! work as printed, and the example configuration it runs when there is no
//! `accounts.yaml` ([`builtin_config`]). Invariants: the demo never talks to
//! anything but loopback, and no line it prints spends one of WeChat's daily
//! stable `force_refresh` calls.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context as _;
use rand::Rng;
use rand::distr::Alphanumeric;
use secrecy::ExposeSecret;
use url::Url;

use secrecy::SecretString;

use crate::config::{AppScope, ClientConfig, ComponentConfig, Config};
use crate::domain::{AppId, KeyHash};
use crate::simulator::{AppRegistration, ComponentRegistration, SimConfig, Simulator};
use crate::startup::{Application, BuildOptions};

/// The shipped `accounts.yaml`, which `wxtoken demo` runs when started
/// where there is none (secrets are not needed: the simulator accepts any).
const BUILTIN_CONFIG: &str = include_str!("../accounts.yaml");

/// Loads the built-in example configuration ([`BUILTIN_CONFIG`]) with
/// `options` (which should make secrets optional).
///
/// Errors with its problems, which only a broken build can have (the tests
/// load the same file).
pub fn builtin_config(
    options: &crate::config::LoadOptions,
) -> Result<crate::config::Loaded, crate::config::Problems> {
    crate::config::load_str(
        BUILTIN_CONFIG,
        std::path::Path::new("accounts.yaml (built in)"),
        options,
    )
}

/// Runs the demo until Ctrl-C.
///
/// Errors when the simulator or the server cannot start.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let sim = Simulator::start(SimConfig::default(), "127.0.0.1:0".parse()?)
        .await
        .context("could not start the built-in simulator on loopback")?;
    for account in &config.accounts {
        sim.register_app(AppRegistration {
            appid: account.appid.to_string(),
            secret: account.secret.expose_secret().to_string(),
            ip_whitelist: vec![],
        });
    }
    config.upstream.base_urls = vec![Url::parse(&sim.base_url())?];
    config.upstream.wecom_base_urls = vec![Url::parse(&sim.base_url())?];

    let (key, hash) = KeyHash::generate();
    config.clients.push(ClientConfig {
        name: "demo".to_string(),
        key: hash,
        appids: AppScope::All,
        admin: true,
    });
    if !config.listen.ip().is_loopback() || TcpListener::bind(config.listen).is_err() {
        let fallback: SocketAddr = "127.0.0.1:0".parse()?;
        eprintln!(
            "demo: {} is not a free loopback address; using a free loopback port instead",
            config.listen
        );
        config.listen = fallback;
    }
    if config.components.is_empty() {
        config.components.extend(demo_component(&config));
    }
    let demo_dir = std::env::temp_dir().join(format!("wxtoken-demo-{}", std::process::id()));
    config.store.path = demo_dir.join("wxtoken.redb");
    config.store.redis = None;

    let accounts: Vec<String> = config
        .accounts
        .iter()
        .filter(|a| a.enabled)
        .map(|a| a.appid.to_string())
        .collect();
    let with_jsapi = config
        .accounts
        .iter()
        .find(|a| a.enabled && a.tickets.contains(&crate::domain::TicketKind::Jsapi))
        .map(|a| a.appid.to_string());
    // A stale report of the current token refreshes it; on a stable account
    // that may spend a daily force_refresh, so the demo shows it on a
    // legacy account only.
    let legacy = config
        .accounts
        .iter()
        .find(|a| {
            a.enabled
                && matches!(a.kind, crate::config::AccountKind::Wechat)
                && a.mode == crate::domain::Mode::Legacy
        })
        .map(|a| a.appid.to_string());
    let components = config.components.clone();
    let app = Application::build(config, BuildOptions::default()).await?;
    let addr = app.addr();
    let state = app.state();
    let server = actix_web::rt::spawn(app.run_until_stopped());
    let authorizers = authorize_demo_merchants(&sim, addr, &components).await;

    // Wait (bounded) until every enabled account has its token and tickets,
    // so the lines below work at once.
    for _ in 0..100 {
        let now = state.clock.now_unix_ms();
        let tickets_ready = state.directory.all().iter().all(|slot| {
            !slot.enabled
                || slot.ticket_kinds.iter().all(|k| {
                    slot.ticket(*k)
                        .is_some_and(|t| t.usable_secs(now).is_some())
                })
        });
        if state.directory.not_ready(now).is_empty() && tickets_ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    print_guide(
        &sim,
        addr,
        &key,
        &accounts,
        (legacy.as_deref(), with_jsapi.as_deref()),
    );
    print_open_platform(addr, &key, &components, &authorizers);
    let result = server.await;
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&demo_dir);
    result
        .context("the server task failed")?
        .context("the server stopped with an error")
}

/// The Open Platform component the demo runs when the file has none: an
/// agency's third-party platform with made-up keys.
fn demo_component(config: &Config) -> Option<ComponentConfig> {
    let taken = |id: &AppId| config.accounts.iter().any(|a| &a.appid == id);
    let appid = (0u32..1000)
        .map(|n| match n {
            0 => "wx9999999999999999".to_string(),
            n => format!("wx99999999{n:08}"),
        })
        .filter_map(|id| AppId::parse(&id).ok())
        .find(|id| !taken(id))?;
    Some(ComponentConfig {
        appid,
        name: "Demo agency platform".to_string(),
        secret: SecretString::from(random_text(32)),
        token: SecretString::from(random_text(32)),
        encoding_aes_key: SecretString::from(random_text(43)),
        enabled: true,
    })
}

/// Letters and digits (valid Base64 too, so 43 of them are an EncodingAESKey).
fn random_text(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// Registers each component with the simulator (its event URL the
/// server's) and has three demo merchants authorize the first one; the
/// simulator pushes the encrypted ticket and `authorized` events.
async fn authorize_demo_merchants(
    sim: &Simulator,
    addr: SocketAddr,
    components: &[ComponentConfig],
) -> Vec<String> {
    let http = reqwest::Client::builder().no_proxy().build();
    let mut authorizers = Vec::new();
    for (i, c) in components.iter().enumerate() {
        let mut reg = ComponentRegistration::new(
            c.appid.as_str(),
            c.secret.expose_secret(),
            c.token.expose_secret(),
            c.encoding_aes_key.expose_secret(),
        );
        reg.callback_url = Some(format!("http://{addr}/v1/component/{}/events", c.appid));
        if let Err(e) = sim.try_register_component(reg) {
            eprintln!("demo: the simulator refused component {}: {e}", c.appid);
            continue;
        }
        let Ok(http) = &http else { continue };
        if i > 0 {
            continue;
        }
        for n in 1..=3u32 {
            let authorizer = format!("wx8888888888{n:06}");
            let url = format!("{}/sim/components/{}/authorize", sim.base_url(), c.appid);
            let sent = http
                .post(url)
                .json(&serde_json::json!({ "authorizer_appid": authorizer }))
                .send()
                .await;
            if sent.is_ok_and(|r| r.status().is_success()) {
                authorizers.push(authorizer);
            }
        }
    }
    authorizers
}

/// The shell pipe that takes `access_token` out of a token answer.
const EXTRACT_TOKEN: &str = r#"sed -E 's/.*"access_token":"([^"]+)".*/\1/'"#;

/// A made-up token for the compare-and-refresh line: never the current one.
const OLD_TOKEN: &str = "an-old-token-wechat-rejected";

fn print_open_platform(
    addr: SocketAddr,
    key: &str,
    components: &[ComponentConfig],
    authorizers: &[String],
) {
    let Some(component) = components.first() else {
        return;
    };
    let base = format!("http://{addr}");
    let auth = format!("-H 'Authorization: Bearer {key}'");
    println!("Open Platform (an agency's third-party platform, contract section 6):");
    println!(
        "  component {} with authorizers {}",
        component.appid,
        authorizers.join(", ")
    );
    println!();
    println!("  # the component's own token (fetched with the verify ticket the simulator pushed)");
    println!(
        "  curl -s {auth} {base}/v1/component/{}/token",
        component.appid
    );
    if let Some(first) = authorizers.first() {
        println!("  # an authorizer's token, served exactly like an account's");
        println!("  curl -s {auth} {base}/v1/token/{first}");
    }
    println!("  # page through WeChat's authorizer list: add missing ones, repair refresh tokens");
    println!(
        "  curl -s {auth} -X POST {base}/v1/component/{}/reconcile",
        component.appid
    );
    println!();
}

/// Prints the curl lines; `legacy` and `with_jsapi` are an account in
/// legacy mode and one with a jsapi ticket, when there are.
fn print_guide(
    sim: &Simulator,
    addr: SocketAddr,
    key: &str,
    accounts: &[String],
    (legacy, with_jsapi): (Option<&str>, Option<&str>),
) {
    let base = format!("http://{addr}");
    let auth = format!("-H 'Authorization: Bearer {key}'");
    let first = accounts
        .first()
        .map(String::as_str)
        .unwrap_or("wx1111111111111111");
    println!();
    println!("wxtoken demo is running.");
    println!("  token server:     {base}   (demo admin key: {key})");
    println!(
        "  WeChat simulator: {}   (tokens live 2h, like WeChat's)",
        sim.base_url()
    );
    println!("  accounts:         {}", accounts.join(", "));
    println!();
    println!("Try these (Ctrl-C stops the demo):");
    println!();
    println!("  # the current token of an account");
    println!("  curl -s {auth} {base}/v1/token/{first}");
    println!();
    println!("  # ask the simulator whether a token is live (WeChat's getcallbackip)");
    println!("  TOKEN=$(curl -s {auth} {base}/v1/token/{first} | {EXTRACT_TOKEN})");
    println!(
        "  curl -s \"{}/cgi-bin/getcallbackip?access_token=$TOKEN\"",
        sim.base_url()
    );
    println!();
    println!(
        "  # report a token WeChat rejected (compare-and-refresh): one that is no longer current"
    );
    println!("  # gets the current one back (\"refreshed\": false), without a call to WeChat");
    println!(
        "  curl -s {auth} -H 'Content-Type: application/json' -d '{{\"stale_token\":\"{OLD_TOKEN}\"}}' {base}/v1/token/{first}/refresh"
    );
    if let Some(legacy) = legacy {
        println!();
        println!(
            "  # the current token reported: refreshed once for every concurrent reporter (\"refreshed\": true)."
        );
        println!(
            "  # Shown on a legacy account: on a stable one it may spend one of WeChat's 20 daily force_refresh"
        );
        println!("  LEGACY=$(curl -s {auth} {base}/v1/token/{legacy} | {EXTRACT_TOKEN})");
        println!(
            "  curl -s {auth} -H 'Content-Type: application/json' -d \"{{\\\"stale_token\\\":\\\"$LEGACY\\\"}}\" {base}/v1/token/{legacy}/refresh"
        );
    }
    if let Some(appid) = with_jsapi {
        println!();
        println!("  # the JS-SDK ticket of an account, and a wx.config signature for a page");
        println!("  curl -s {auth} {base}/v1/ticket/{appid}/jsapi");
        println!(
            "  curl -s {auth} -H 'Content-Type: application/json' -d '{{\"url\":\"https://shop.example.com/pay?order=42\"}}' {base}/v1/ticket/{appid}/jsapi/signature"
        );
    }
    println!();
    println!("  # every account's state (admin), readiness, metrics");
    println!("  curl -s {auth} {base}/v1/accounts");
    println!("  curl -s {base}/readyz");
    println!("  curl -s {base}/metrics | grep '^wxtoken_accounts'");
    println!();
}
