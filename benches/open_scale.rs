//! Open Platform scale benchmark (issue 14): N authorizers under one component.
//!
//! `cargo bench --bench open_scale [-- --authorizers N --idle-secs S
//! --concurrency C]` (10,000 authorizers, 30 s idle and 32 authorizations in
//! flight by default) measures, against a `wxtoken simulator` child process
//! (so that its memory and CPU are not the server's):
//!
//! 1. **Fill**: `wxtoken serve` with a generated `accounts.yaml` holding one
//!    component and no accounts. The component is registered with the
//!    simulator with the server's event URL as its callback, so the simulator
//!    pushes it a verify ticket; once the component token is served, N
//!    merchants authorize the platform through the simulator's control API
//!    (`POST /sim/components/{appid}/authorize`, which pushes the encrypted
//!    `authorized` event and waits for the server's `success`). Measured: the
//!    time until the events are acknowledged and until every authorizer is
//!    served (`/readyz?strict=1` 200 with every authorizer in the directory),
//!    the `api_query_auth` calls (one per authorizer), the server's RSS after
//!    the fill and after S s idle, and its CPU while idle.
//! 2. **Restart**: SIGTERM, then `wxtoken serve` again on the same store:
//!    time from process start to `/readyz?strict=1` 200 with every
//!    authorizer, the Open Platform calls the restart made (must be 0: the
//!    refresh tokens and access tokens come from the store), and the RSS.
//!
//! Everything talks only to loopback. The numbers are printed; nothing is
//! asserted except that every step completes.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use wxtoken::domain::KeyHash;
use wxtoken::simulator::Stats;

use support::process::{Running, wxtoken};
use support::wait::Wait;
use support::{answers_ok, free_port};

/// Linux reports process CPU times in these ticks per second (USER_HZ).
const TICKS_PER_SEC: f64 = 100.0;
/// Upstream requests in flight, as `upstream.max_concurrency` defaults.
const MAX_CONCURRENCY: usize = 32;
/// The admin key of the generated configuration (loopback only, bench only).
const ADMIN_KEY: &str = "open-scale-admin-key-0123456789";
/// The Open Platform APIs that mint tokens: a restart must call none of them.
const MINTING_APIS: [&str; 3] = [
    "api_component_token",
    "api_query_auth",
    "api_authorizer_token",
];

/// Command-line options (cargo passes `--bench`, which is ignored).
#[derive(Debug, Clone)]
struct Options {
    authorizers: usize,
    idle_secs: u64,
    /// Authorization requests to the simulator in flight at once.
    concurrency: usize,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            authorizers: 10_000,
            idle_secs: 30,
            concurrency: 32,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let value = || -> u64 {
                args.get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{} needs a number", args[i]))
            };
            match args[i].as_str() {
                "--authorizers" => o.authorizers = (value() as usize).max(1),
                "--idle-secs" => o.idle_secs = value(),
                "--concurrency" => o.concurrency = (value() as usize).max(1),
                _ => {
                    i += 1;
                    continue;
                }
            }
            i += 2;
        }
        o
    }
}

/// One line of the final summary.
struct Row {
    what: String,
    value: String,
    target: String,
}

/// The target of a measure that is only reported.
const REPORT: &str = "(report)";

impl Row {
    fn new(what: impl Into<String>, value: impl Into<String>, target: impl Into<String>) -> Row {
        Row {
            what: what.into(),
            value: value.into(),
            target: target.into(),
        }
    }
}

fn main() {
    let o = Options::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!(
        "open platform scale benchmark: {} authorizers under one component, {} CPUs",
        o.authorizers,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let sim = SimProcess::start();
    println!("simulator (child process): {}", sim.base);
    let rows = std::thread::spawn(move || {
        actix_rt::System::new().block_on(fill_and_restart(&o, &sim.base))
    })
    .join()
    .expect("the benchmark does not panic");
    println!();
    println!("summary");
    println!("{:<58} {:>22}  target", "measure", "value");
    for row in rows {
        println!("{:<58} {:>22}  {}", row.what, row.value, row.target);
    }
}

/// The component of the run, as configured in both the server and the simulator.
struct Component {
    appid: String,
    secret: String,
    token: String,
    aes_key: String,
}

async fn fill_and_restart(o: &Options, base: &str) -> Vec<Row> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    let c = Component {
        appid: support::unique_appid().to_string(),
        secret: format!("open-scale-secret-{}", rand::random::<u32>()),
        token: format!("openscaletoken{}", rand::random::<u32>()),
        aes_key: support::encoding_aes_key(),
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let config = dir.path().join("accounts.yaml");
    std::fs::write(&config, config_yaml(base, port, &c)).expect("write the config");
    let server_url = format!("http://127.0.0.1:{port}");

    println!();
    println!(
        "[1] wxtoken serve: one component, {} authorizers",
        o.authorizers
    );
    let mut server = serve(&config);
    wait_readyz(&http, &server_url, &mut server, 0, Duration::from_secs(60)).await;
    register_component(&http, base, &c, &server_url).await;
    let component_ready = Instant::now();
    Wait::up_to(Duration::from_secs(60))
        .every(Duration::from_millis(10))
        .until_async("the component token is served", async || {
            http.get(format!("{server_url}/v1/component/{}/token", c.appid))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
        })
        .await;
    println!(
        "    component token served {:.2?} after its registration (ticket pushed)",
        component_ready.elapsed()
    );

    let authorizers = authorizer_appids(o.authorizers);
    let before = sim_stats(&http, base).await;
    let started = Instant::now();
    let refused = authorize_all(&http, base, &c.appid, &authorizers, o.concurrency).await;
    let acknowledged = started.elapsed();
    wait_readyz(
        &http,
        &server_url,
        &mut server,
        o.authorizers,
        Duration::from_secs(900),
    )
    .await;
    let filled = started.elapsed();
    let after = sim_stats(&http, base).await;
    let query_auth = after.total_calls("api_query_auth") - before.total_calls("api_query_auth");
    let first_ok = served(&http, &server_url, &authorizers[0]).await;
    let last_ok = served(&http, &server_url, &authorizers[authorizers.len() - 1]).await;
    let status = format!("/proc/{}/status", server.child.id());
    let stat = format!("/proc/{}/stat", server.child.id());
    let rss_filled = rss_kib(Path::new(&status));
    // Writes still queued after the fill are not idle work.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu = idle_cpu(Path::new(&stat), o.idle_secs).await;
    let rss_idle = rss_kib(Path::new(&status));
    let store_bytes =
        std::fs::metadata(dir.path().join("data").join("wxtoken.redb")).map_or(0, |m| m.len());
    println!(
        "    {} authorization events acknowledged in {acknowledged:.2?} ({refused} not delivered); every authorizer served {filled:.2?} after the first; {query_auth} api_query_auth calls; first/last authorizer served: {first_ok}/{last_ok}",
        o.authorizers
    );
    println!(
        "    server RSS after the fill {:.1} MiB, after {} s idle {:.1} MiB; idle CPU {:.2}% of one core; store {:.1} MiB",
        rss_filled as f64 / 1024.0,
        o.idle_secs,
        rss_idle as f64 / 1024.0,
        idle_cpu * 100.0,
        store_bytes as f64 / (1 << 20) as f64
    );
    server.terminate();

    println!("[2] wxtoken serve: restart (SIGTERM, start again on the same store)");
    let before = sim_stats(&http, base).await;
    let started = Instant::now();
    let mut server = serve(&config);
    wait_readyz(
        &http,
        &server_url,
        &mut server,
        o.authorizers,
        Duration::from_secs(120),
    )
    .await;
    let restart = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = sim_stats(&http, base).await;
    let minting: u64 = MINTING_APIS
        .iter()
        .map(|api| after.total_calls(api) - before.total_calls(api))
        .sum();
    let all_calls = all_calls(&after) - all_calls(&before);
    let rss_restarted = rss_kib(Path::new(&format!("/proc/{}/status", server.child.id())));
    let first_ok_again = served(&http, &server_url, &authorizers[0]).await;
    println!(
        "    ready {restart:.2?} after process start; {minting} token-minting calls, {all_calls} upstream calls in all (1 s later); RSS {:.1} MiB; first authorizer served: {first_ok_again}",
        rss_restarted as f64 / 1024.0
    );
    server.terminate();

    let n = o.authorizers;
    vec![
        Row::new(
            format!("open: {n} authorization events acknowledged"),
            format!("{:.2} s", acknowledged.as_secs_f64()),
            verdict(refused == 0, "all delivered"),
        ),
        Row::new(
            format!("open: every one of {n} authorizers served"),
            format!("{:.2} s", filled.as_secs_f64()),
            REPORT,
        ),
        Row::new(
            "open: api_query_auth calls in the fill",
            query_auth.to_string(),
            verdict(query_auth == n as u64, &format!("= {n}")),
        ),
        Row::new(
            "open: RSS after the fill",
            format!("{:.1} MiB", rss_filled as f64 / 1024.0),
            REPORT,
        ),
        Row::new(
            format!("open: RSS after {} s idle", o.idle_secs),
            format!("{:.1} MiB", rss_idle as f64 / 1024.0),
            REPORT,
        ),
        Row::new(
            format!("open: idle CPU over {} s", o.idle_secs),
            format!("{:.2}% of a core", idle_cpu * 100.0),
            verdict(idle_cpu <= 0.01, "<= 1 %"),
        ),
        Row::new(
            "open: restart (process start to /readyz?strict=1 200)",
            format!("{:.3} s", restart.as_secs_f64()),
            REPORT,
        ),
        Row::new(
            "open: restart token-minting calls (component APIs)",
            minting.to_string(),
            verdict(minting == 0, "0"),
        ),
        Row::new(
            "open: restart upstream calls of any kind",
            all_calls.to_string(),
            REPORT,
        ),
        Row::new(
            "open: RSS after a restart from the store",
            format!("{:.1} MiB", rss_restarted as f64 / 1024.0),
            REPORT,
        ),
    ]
}

/// The server's configuration: one component, no accounts, an admin client.
fn config_yaml(base: &str, port: u16, c: &Component) -> String {
    format!(
        "listen: 127.0.0.1:{port}\n\
         upstream:\n  base_urls: [{base}]\n  timeout: 5s\n  max_concurrency: {MAX_CONCURRENCY}\n\
         store:\n  path: data/wxtoken.redb\n\
         clients:\n  - name: admin\n    key: {}\n    appids: [\"*\"]\n    admin: true\n\
         components:\n  - appid: {}\n    name: Scale platform\n    secret: {}\n    token: {}\n    encoding_aes_key: {}\n\
         accounts: []\n",
        KeyHash::of_key(ADMIN_KEY),
        c.appid,
        c.secret,
        c.token,
        c.aes_key
    )
}

/// `n` distinct WeChat-shaped authorizer appids of this run.
fn authorizer_appids(n: usize) -> Vec<String> {
    let run = (std::process::id() as u64 & 0xffff) << 32;
    (0..n as u64)
        .map(|i| format!("wx{:016x}", run | i))
        .collect()
}

/// Registers the component with the simulator, its callback the server's
/// event URL (the simulator pushes a verify ticket at once).
async fn register_component(http: &reqwest::Client, base: &str, c: &Component, server: &str) {
    let answer = http
        .post(format!("{base}/sim/components"))
        .json(&json!({
            "component_appid": c.appid,
            "secret": c.secret,
            "token": c.token,
            "encoding_aes_key": c.aes_key,
            "callback_url": format!("{server}/v1/component/{}/events", c.appid),
        }))
        .send()
        .await
        .expect("the simulator answers");
    assert!(
        answer.status().is_success(),
        "the simulator took the component"
    );
}

/// Authorizes every one of `authorizers` at the simulator, `concurrency` at
/// a time; returns how many events the server did not acknowledge.
async fn authorize_all(
    http: &reqwest::Client,
    base: &str,
    component: &str,
    authorizers: &[String],
    concurrency: usize,
) -> usize {
    let url = format!("{base}/sim/components/{component}/authorize");
    futures::stream::iter(authorizers)
        .map(|a| {
            let request = http
                .post(&url)
                .json(&json!({ "authorizer_appid": a }))
                .send();
            async move {
                match request.await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|body| body["delivered"] == true),
                    Err(_) => false,
                }
            }
        })
        .buffer_unordered(concurrency)
        .filter(|delivered| std::future::ready(!delivered))
        .count()
        .await
}

/// True when `GET /v1/token/{appid}` answers 200.
async fn served(http: &reqwest::Client, server: &str, appid: &str) -> bool {
    http.get(format!("{server}/v1/token/{appid}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
}

/// Starts `wxtoken serve` on `config`.
fn serve(config: &Path) -> Running {
    let mut cmd = wxtoken(&["serve", "--config", config.to_str().expect("utf-8 path")]);
    cmd.env("RUST_LOG", "warn");
    Running::spawn(cmd)
}

/// Waits until `/readyz?strict=1` answers 200 with at least `accounts`
/// entries in the directory (0: until `/healthz` answers), while `server` runs.
async fn wait_readyz(
    http: &reqwest::Client,
    server_url: &str,
    server: &mut Running,
    accounts: usize,
    limit: Duration,
) {
    let url = format!("{server_url}/readyz?strict=1");
    Wait::up_to(limit)
        .every(Duration::from_millis(20))
        .until_async(
            &format!("{url} answers 200 with {accounts} accounts"),
            async || {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("wxtoken serve exited with {status} before it was ready");
                }
                if accounts == 0 {
                    // The component has no verify ticket yet: only up.
                    return answers_ok(http, &format!("{server_url}/healthz")).await;
                }
                let Ok(r) = http.get(&url).send().await else {
                    return false;
                };
                let ok = r.status() == reqwest::StatusCode::OK;
                ok && r
                    .json::<Value>()
                    .await
                    .is_ok_and(|body| body["accounts"].as_u64().unwrap_or(0) >= accounts as u64)
            },
        )
        .await
}

/// Every call the simulator counted, of any API and app.
fn all_calls(stats: &Stats) -> u64 {
    stats.calls.values().flat_map(|apis| apis.values()).sum()
}

/// The counters of the simulator at `base` (`GET /sim/stats`).
async fn sim_stats(http: &reqwest::Client, base: &str) -> Stats {
    http.get(format!("{base}/sim/stats"))
        .send()
        .await
        .expect("the simulator answers")
        .json()
        .await
        .expect("the simulator's stats are JSON")
}

// The process measures below repeat benches/scale.rs's small helpers (that
// file is not shared); they read Linux's /proc only.

/// `VmRSS` of a `/proc/PID/status` file, in KiB.
fn rss_kib(status: &Path) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Sleeps `secs` and returns the CPU the process of the `/proc/PID/stat`
/// file `stat` used meanwhile, as a share of one core.
async fn idle_cpu(stat: &Path, secs: u64) -> f64 {
    let cpu_before = cpu_ticks(stat);
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    (cpu_ticks(stat) - cpu_before) as f64 / TICKS_PER_SEC / idle_started.elapsed().as_secs_f64()
}

/// utime + stime of a `/proc/PID/stat` file, in clock ticks.
fn cpu_ticks(stat: &Path) -> u64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // The command name (field 2) may contain spaces; count fields after its ')'.
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are 12 and 13 after the ')'.
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

fn verdict(met: bool, target: &str) -> String {
    format!("{target}: {}", if met { "met" } else { "NOT met" })
}

/// A `wxtoken simulator` child process on a free loopback port.
struct SimProcess {
    _process: Running,
    base: String,
}

impl SimProcess {
    fn start() -> SimProcess {
        let mut cmd = wxtoken(&["simulator", "--listen", "127.0.0.1:0"]);
        cmd.env("RUST_LOG", "warn");
        let process = Running::spawn(cmd);
        let printed = process.read_until(|l| l.starts_with("wxtoken simulator listening on "));
        let base = printed
            .last()
            .and_then(|l| l.strip_prefix("wxtoken simulator listening on "))
            .expect("the simulator prints its address")
            .trim()
            .to_string();
        SimProcess {
            _process: process,
            base,
        }
    }
}
