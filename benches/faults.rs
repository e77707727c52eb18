//! The long fault suite: each fault in turn on every faulted account, with
//! clients that validate every token they get at the simulator's probe. The
//! scenario is `tests/it/faults.rs` (whose short version runs in `cargo
//! test`), included here with the test fixtures it needs. Unlike the short
//! version it also injects late answers, and it then reproduces the gap they
//! expose deterministically (see [`late_answer`]).
//!
//! `cargo bench --bench faults [-- --window SECS --accounts N --readers R
//! --recovery-limit SECS --only-late-answer]`. Exits with status 1 when any
//! client was handed a token WeChat rejects or a fault did not recover.

#[path = "../tests/it/app.rs"]
mod app;
#[allow(dead_code)]
#[path = "../tests/it/faults.rs"]
mod faults;
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use wxtoken::domain::Mode;
use wxtoken::simulator::{FaultSpec, SimConfig};

use app::{ADMIN_KEY, READER_KEY, TestApp, TestAppBuilder, json};
use faults::{FaultKind, Layout, Plan};
use support::probe::{Prober, is_live};

fn main() {
    let mut plan = Plan {
        layout: Layout::InTurn,
        kinds: FaultKind::ALL.to_vec(),
        fault_window: Duration::from_secs(15),
        recovery_limit: Duration::from_secs(70),
        settle: Duration::from_secs(3),
        readers: 4,
        accounts_per_mode: 3,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.windows(2) {
        let number = || -> u64 {
            pair[1]
                .parse()
                .unwrap_or_else(|_| panic!("{} needs a number", pair[0]))
        };
        match pair[0].as_str() {
            "--window" => plan.fault_window = Duration::from_secs(number()),
            "--accounts" => plan.accounts_per_mode = number().max(1) as usize,
            "--readers" => plan.readers = number().max(1) as usize,
            "--recovery-limit" => plan.recovery_limit = Duration::from_secs(number()),
            _ => {}
        }
    }
    let only_late = args.iter().any(|a| a == "--only-late-answer");
    let system = actix_rt::System::new();
    let mut failed = false;
    if !only_late {
        let report = system.block_on(faults::run(&plan));
        println!();
        faults::print_report(&report);
        failed |= report.total_invalid > 0
            || report.total_unexpected > 0
            || report.faults.iter().any(|f| f.recovery.is_none());
    }
    println!();
    let late = system.block_on(late_answer());
    failed |= late.invalid_reads > 0;
    if failed {
        eprintln!(
            "FAILED: rejected tokens were served (late answers: see above) or a fault did not recover"
        );
        std::process::exit(1);
    }
}

/// What [`late_answer`] saw.
struct LateAnswer {
    invalid_reads: u64,
}

/// A legacy fetch that times out at wxtoken but is processed by WeChat
/// anyway, after wxtoken's retry got a new token: WeChat's late rotation
/// supersedes the token wxtoken now serves, which dies `grace` later while
/// wxtoken keeps serving it until its next planned refresh.
///
/// Timeline (tokens live 60 s, grace 2 s, client timeout 2 s): t=0 a forced
/// refresh is sent and answered only at t=3 s (so it times out at t=2 s);
/// wxtoken retries at once and gets T1; at t=3 s the late call issues T2,
/// which kills T1 at t=5 s. Clients read and probe the token every 100 ms
/// until t=15 s, then one client reports the rejected token
/// (compare-and-refresh), which is the designed way out.
async fn late_answer() -> LateAnswer {
    println!("late answer: a legacy fetch answered 1 s after the client's 2 s timeout");
    let app = TestAppBuilder::new()
        .sim_config(SimConfig {
            token_ttl: Duration::from_secs(60),
            grace: Duration::from_secs(2),
            ..SimConfig::default()
        })
        .refresh_setting("backoff_max: 1s")
        .account(Mode::Legacy)
        .spawn()
        .await;
    let appid = app.accounts[0].appid.to_string();
    app.sim.inject_fault(FaultSpec {
        delay_ms: Some(3000),
        ..support::fault_once("token", &appid)
    });
    let started = Instant::now();
    let first = app.admin_refresh(&appid, Some(ADMIN_KEY)).await.status();
    println!(
        "  t={:.1}s forced refresh answered {first} (the call timed out at wxtoken)",
        started.elapsed().as_secs_f64()
    );
    let probe = Prober::new(&app.sim.base_url());
    let mut invalid_reads = 0;
    let mut reads = 0;
    let mut first_invalid = None;
    let mut last_token = String::new();
    while started.elapsed() < Duration::from_secs(15) {
        if let Some((token, valid)) = read_and_probe(&app, &probe, &appid).await {
            reads += 1;
            if !valid {
                invalid_reads += 1;
                first_invalid.get_or_insert(started.elapsed());
            }
            last_token = token;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = app.sim.stats();
    println!(
        "  tokens issued to the account {}; reads {reads}, rejected by WeChat {invalid_reads}{}",
        stats.tokens_issued_to(&appid),
        first_invalid.map_or(String::new(), |t| format!(
            " (from t={:.1}s until the end of the observation at t=15s)",
            t.as_secs_f64()
        ))
    );
    if invalid_reads > 0 {
        println!(
            "  DEFECT: wxtoken serves a token that a late-processed fetch superseded; it would keep doing so until its next planned refresh (~{:.0} s here, ~96 min with WeChat's 2 h tokens) unless a client reports it",
            0.8 * 60.0
        );
        let response = app
            .report_stale(&appid, &last_token, Some(READER_KEY))
            .await;
        let status = response.status();
        let answer = json(response, status).await;
        let valid = match answer["access_token"].as_str() {
            Some(token) => app.sim.is_token_valid(&appid, token),
            None => false,
        };
        println!(
            "  compare-and-refresh with the rejected token: {status}, refreshed {}, new token valid at WeChat: {valid}",
            answer["refreshed"]
        );
    } else {
        println!("  no rejected token was served");
    }
    LateAnswer { invalid_reads }
}

/// Reads the token of `appid` and probes it at the simulator: `(token, valid)`.
async fn read_and_probe(app: &TestApp, probe: &Prober, appid: &str) -> Option<(String, bool)> {
    let response = app.get_token(appid, Some(READER_KEY)).await;
    if response.status() != StatusCode::OK {
        return None;
    }
    let body = json(response, StatusCode::OK).await;
    let token = body["access_token"].as_str()?.to_string();
    let answer = probe.try_answer(&token).await?;
    Some((token, is_live(&answer)))
}
