//! `wxtoken demo`: the out-of-the-box experience.
//!
//! Owns: starting the built-in simulator on a free loopback port, registering
//! every configured account with it (real secrets are not needed), running the
//! server against it with a one-off admin key, and printing curl lines that
//! work as printed. Invariant: the demo never talks to anything but loopback.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context as _;
use rand::Rng;
use rand::distr::Alphanumeric;
use secrecy::ExposeSecret;
use url::Url;

use crate::config::{AppScope, ClientConfig, Config};
use crate::domain::KeyHash;
use crate::simulator::{AppRegistration, SimConfig, Simulator};
use crate::startup::{Application, BuildOptions};

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

    let key: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    config.clients.push(ClientConfig {
        name: "demo".to_string(),
        key: KeyHash::of_key(&key),
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
    let app = Application::build(config, BuildOptions::default()).await?;
    let addr = app.addr();
    let state = app.state();
    let server = actix_web::rt::spawn(app.run_until_stopped());

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
    print_guide(&sim, addr, &key, &accounts, with_jsapi.as_deref());
    let result = server.await;
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&demo_dir);
    result
        .context("the server task failed")?
        .context("the server stopped with an error")
}

fn print_guide(
    sim: &Simulator,
    addr: SocketAddr,
    key: &str,
    accounts: &[String],
    with_jsapi: Option<&str>,
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
    println!(
        "  # report a token WeChat rejected (compare-and-refresh; an old token gets the current one back)"
    );
    println!(
        "  TOKEN=$(curl -s {auth} {base}/v1/token/{first} | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')"
    );
    println!(
        "  curl -s {auth} -H 'Content-Type: application/json' -d \"{{\\\"stale_token\\\":\\\"$TOKEN\\\"}}\" {base}/v1/token/{first}/refresh"
    );
    println!();
    println!("  # ask the simulator whether a token is live (WeChat's getcallbackip)");
    println!(
        "  curl -s \"{}/cgi-bin/getcallbackip?access_token=$TOKEN\"",
        sim.base_url()
    );
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
