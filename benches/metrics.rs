//! `/metrics` at scale: the size of the text and the time to write it, per
//! `metrics.per_account` mode.
//!
//! `cargo bench --bench metrics [-- --accounts 10000,100000 --runs 5]`
//!
//! For each fleet size: N accounts (half legacy, half stable) are started by
//! the real engine on the in-process simulator on tokio's paused clock and
//! filled, then left for one more lifetime of virtual time (every account
//! refreshed again and read its quota, as in steady state); then the exposition a
//! scrape returns ([`Directory::encode_metrics`], what `GET /metrics` sends)
//! is written `runs` times in each mode. Printed: total bytes, bytes per
//! account (total minus the fleet-only text of `none`, divided by N), and the
//! fastest and median encode time. A last, small fleet whose accounts carry
//! both JS-SDK tickets shows what tickets add per account.
//!
//! Timings are wall-clock on this machine and meaningless while other jobs
//! compile; nothing is asserted.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use wxtoken::clock::Clock;
use wxtoken::config::{AccountConfig, AccountKind};
use wxtoken::domain::{AppId, Mode, TicketKind};
use wxtoken::engine::{Engine, EngineConfig};
use wxtoken::metrics::PerAccount;
use wxtoken::simulator::AppRegistration;
use wxtoken::snapshot::AccountCounters;

/// Command-line options (cargo passes `--bench`, which is ignored).
struct Options {
    sizes: Vec<usize>,
    runs: usize,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            sizes: vec![10_000, 100_000],
            runs: 5,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--accounts" => {
                    o.sizes = args
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .filter_map(|n| n.trim().replace('_', "").parse().ok())
                        .collect();
                }
                "--runs" => o.runs = args.next().and_then(|n| n.parse().ok()).unwrap_or(5),
                _ => {}
            }
        }
        o.runs = o.runs.max(1);
        o
    }
}

fn main() {
    let o = Options::parse();
    println!(
        "metrics bench: bytes per account and encode time of GET /metrics per metrics.per_account mode ({} runs each)",
        o.runs
    );
    println!(
        "    per-account state kept for metrics beyond the slot's own data: {} bytes (AccountCounters)",
        std::mem::size_of::<AccountCounters>()
    );
    for &n in &o.sizes {
        measure(n, &[], o.runs);
    }
    measure(1_000, &[TicketKind::Jsapi, TicketKind::WxCard], o.runs);
}

/// How long after the fill the exposition is measured (virtual time): past
/// one refresh of every account.
const STEADY_AFTER: Duration = Duration::from_secs(2 * 3600 + 15 * 60);

/// Fills a fleet of `n` accounts with `tickets` and prints each mode's figures.
fn measure(n: usize, tickets: &'static [TicketKind], runs: usize) {
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let wall = Instant::now();
            let (engine, clock) = filled_fleet(n, tickets).await;
            // Steady state: one lifetime later every account has refreshed
            // once more and read its upstream quota (getApiQuota).
            tokio::time::sleep(STEADY_AFTER).await;
            let read = engine
                .directory
                .all()
                .iter()
                .filter(|slot| slot.status().quotas.iter().next().is_some())
                .count();
            println!();
            println!(
                "{n} accounts{} filled in {:.1?} (wall)",
                if tickets.is_empty() {
                    String::new()
                } else {
                    format!(" with tickets {tickets:?}")
                },
                wall.elapsed()
            );
            println!(
                "    {read} of {n} accounts hold a getApiQuota reading after {} h of virtual time",
                STEADY_AFTER.as_secs_f64() / 3600.0
            );
            println!(
                "    {:<10} {:>12} {:>16} {:>12} {:>12}",
                "mode", "bytes", "bytes/account", "fastest ms", "median ms"
            );
            let now = clock.now_unix_ms();
            engine.metrics.set_per_account(Some(PerAccount::None));
            let fleet_only = engine.directory.encode_metrics(&engine.metrics, now).len();
            for mode in PerAccount::ALL {
                engine.metrics.set_per_account(Some(mode));
                let mut times = Vec::with_capacity(runs);
                let mut bytes = 0;
                for _ in 0..runs {
                    let started = Instant::now();
                    let text = engine.directory.encode_metrics(&engine.metrics, now);
                    times.push(started.elapsed());
                    bytes = text.len();
                    drop(text);
                }
                times.sort();
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                println!(
                    "    {:<10} {:>12} {:>16.1} {:>12.1} {:>12.1}",
                    mode.as_str(),
                    bytes,
                    (bytes - fleet_only) as f64 / n as f64,
                    ms(times[0]),
                    ms(times[times.len() / 2]),
                );
            }
            engine.stop().await;
        })
    })
    .join()
    .expect("the measurement does not panic");
}

/// `n` accounts started and filled on the paused clock.
async fn filled_fleet(n: usize, tickets: &[TicketKind]) -> (Engine, Clock) {
    let (clock, sim) = support::virtual_simulator();
    let accounts: Vec<AccountConfig> = (0..n)
        .map(|i| {
            let appid = AppId::parse(&format!("wx{i:016x}")).expect("a valid appid");
            let secret = format!("bench-secret-{appid}");
            sim.try_register_app(AppRegistration {
                appid: appid.to_string(),
                secret: secret.clone(),
                ip_whitelist: vec![],
            })
            .expect("a valid registration");
            AccountConfig {
                name: format!("bench {i}"),
                appid,
                secret: SecretString::from(secret),
                mode: if i % 2 == 0 {
                    Mode::Legacy
                } else {
                    Mode::Stable
                },
                enabled: true,
                kind: AccountKind::Wechat,
                tickets: tickets.to_vec(),
                fallback_to_stable: false,
            }
        })
        .collect();
    let engine =
        support::engine_in_memory(&clock, &EngineConfig::new(accounts), Arc::new(sim)).await;
    let slots = engine.directory.all();
    loop {
        let now = clock.now_unix_ms();
        let settled = slots.iter().all(|s| {
            s.is_ready(now)
                && s.ticket_kinds
                    .iter()
                    .all(|&k| s.ticket(k).is_some_and(|t| t.usable_secs(now).is_some()))
        });
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let every account settle into its schedule (state ready, timer armed).
    tokio::time::sleep(Duration::from_secs(1)).await;
    (engine, clock)
}
