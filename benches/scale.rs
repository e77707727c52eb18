//! Scale benchmark: thousands of accounts on one wxtoken.
//!
//! `cargo bench --bench scale [-- --accounts N | --100k, --latency-ms MS
//! --idle-secs S --lifetimes L --cost-accounts M --skip-serve --only-spread
//! --only-serve]`
//! (10,000 accounts by default, 50 ms of simulator latency in phases 1 and 2,
//! 60 s idle) measures, in this order (`--only-spread`: phase 3 alone):
//!
//! 1. **Fill and restart through the library** (real HTTP upstream): a
//!    `wxtoken simulator` child process (so that its memory is not counted
//!    here), a [`WechatClient`] with `max_concurrency: 32`, a [`RedbStore`] behind
//!    a [`StoreWriter`] thread and the [`Registry`], wired as `startup.rs`
//!    wires them. Time from an empty store to every account ready; this
//!    process's RSS and its CPU while idle; then a restart from the full store
//!    (open, load, registry) to every account ready, with the simulator's call
//!    counters proving zero upstream calls; then the same fill with an
//!    in-memory store, which isolates the cost of durable writes.
//! 2. **Fill and restart of the real binary**: `wxtoken serve` with a generated
//!    `accounts.yaml` of N accounts against the same simulator; time to
//!    `/readyz` 200 from process start, the server's RSS and idle CPU from
//!    `/proc/PID`, then SIGTERM and a second start: time to `/readyz` 200 and
//!    upstream calls.
//! 3. **Spread of refreshes**: N accounts (half legacy, half stable) started
//!    at the same instant on the in-process simulator with WeChat's lifetimes
//!    (2 h tokens, 5 min grace) on tokio's paused clock, behind the engine's
//!    upstream limit (`max_concurrency: 32`) with 100 ms on every call, for L
//!    lifetimes after the fill: accounts ever without a valid token,
//!    refreshes finishing past their token's serve time, the most calls in
//!    flight, the busiest 10 s against the mean and against what the limit
//!    carries, calls per account-day in each mode.
//! 4. **Upstream cost**: M accounts the same way over one simulated day:
//!    token calls per account per day in each mode against the floor of 12
//!    (one per 2 h lifetime).
//!
//! Everything talks only to loopback. The numbers are printed; nothing is
//! asserted except that every phase completes.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use url::Url;
use wxtoken::clock::Clock;
use wxtoken::config::{AccountConfig, LoadOptions, UpstreamConfig, load_str};
use wxtoken::domain::Mode;
use wxtoken::engine::{self, EngineConfig, EngineOptions};
use wxtoken::simulator::{AppRegistration, InProcess, Stats};
use wxtoken::snapshot::AccountSlot;
use wxtoken::store::{MemoryStore, RedbStore, Storage};

use support::congestion::{Figures, LIFE_MS, PerDay, Timed, Watch, with_latency};
use support::process::{Running, wxtoken};
use support::wait::Wait;
use support::{all_token_calls, answers_ok, free_port};

/// Linux reports process CPU times in these ticks per second (USER_HZ).
const TICKS_PER_SEC: f64 = 100.0;
/// Upstream requests in flight, as `upstream.max_concurrency` defaults.
const MAX_CONCURRENCY: usize = 32;

/// Command-line options (cargo passes `--bench`, which is ignored).
#[derive(Debug, Clone)]
struct Options {
    accounts: usize,
    /// Latency the simulator adds to every call in phases 1 and 2.
    latency_ms: u64,
    idle_secs: u64,
    lifetimes: u64,
    cost_accounts: usize,
    serve: bool,
    only_spread: bool,
    only_serve: bool,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            accounts: 10_000,
            latency_ms: 50,
            idle_secs: 60,
            lifetimes: 3,
            cost_accounts: 400,
            serve: true,
            only_spread: false,
            only_serve: false,
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
                "--accounts" => o.accounts = value() as usize,
                "--latency-ms" => o.latency_ms = value(),
                "--100k" => {
                    o.accounts = 100_000;
                    i += 1;
                    continue;
                }
                "--idle-secs" => o.idle_secs = value(),
                "--lifetimes" => o.lifetimes = value().max(1),
                "--cost-accounts" => o.cost_accounts = (value() as usize).max(2),
                "--skip-serve" => {
                    o.serve = false;
                    i += 1;
                    continue;
                }
                "--only-spread" => {
                    o.only_spread = true;
                    i += 1;
                    continue;
                }
                "--only-serve" => {
                    o.only_serve = true;
                    i += 1;
                    continue;
                }
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
    let options = Options::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!(
        "scale benchmark: {} accounts, {} CPUs, {}",
        options.accounts,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model()
    );
    let mut rows = Vec::new();
    if options.only_spread {
        let o = options.clone();
        rows.extend(in_thread(move || refresh_spread(&o)));
        print_summary(rows);
        return;
    }
    let sim = SimProcess::start();
    println!(
        "simulator (child process): {}, {} ms added to every call",
        sim.base, options.latency_ms
    );
    sim.add_latency(options.latency_ms);

    if !options.only_serve {
        let o = options.clone();
        let base = sim.base.clone();
        rows.extend(in_thread(move || library_fill_and_restart(&o, &base)));
    }
    if options.serve {
        let o = options.clone();
        let base = sim.base.clone();
        rows.extend(in_thread(move || serve_fill_and_restart(&o, &base)));
    }
    drop(sim);
    if options.only_serve {
        print_summary(rows);
        return;
    }
    let o = options.clone();
    rows.extend(in_thread(move || refresh_spread(&o)));
    let o = options.clone();
    rows.extend(in_thread(move || upstream_cost(&o)));
    print_summary(rows);
}

fn print_summary(rows: Vec<Row>) {
    println!();
    println!("summary");
    println!("{:<58} {:>22}  target", "measure", "value");
    for row in rows {
        println!("{:<58} {:>22}  {}", row.what, row.value, row.target);
    }
}

/// A phase of the benchmark: its summary rows, once it has run.
type Phase = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Row>>>>;

/// Runs `f` on a fresh thread inside its own actix system and returns its result.
fn in_thread<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    std::thread::spawn(move || actix_rt::System::new().block_on(f()))
        .join()
        .expect("the benchmark phase does not panic")
}

// ----------------------------------------------------------------------------
// Phase 1: fill and restart through the library, over real HTTP.
// ----------------------------------------------------------------------------

fn library_fill_and_restart(o: &Options, base: &str) -> Phase {
    let o = o.clone();
    let base = base.to_string();
    Box::pin(async move {
        println!();
        println!(
            "[1] library: fill {} accounts from an empty redb store over HTTP, max_concurrency {MAX_CONCURRENCY}",
            o.accounts
        );
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client");
        let accounts = make_accounts("1", o.accounts);
        register_over_http(&http, &base, &accounts).await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("wxtoken.redb");
        let clock = Clock::system();
        let calls_at_start = token_calls(&http, &base).await;

        let started = Instant::now();
        let engine = Engine::start(Some(&path), &base, &clock, &accounts).await;
        let applied = started.elapsed();
        wait_ready(&engine.slots, &clock, Duration::from_secs(600)).await;
        let fill_total = started.elapsed();
        engine.engine.store.flush().await;
        let durable = started.elapsed();
        let fill_calls = token_calls(&http, &base).await - calls_at_start;
        let in_flight = max_in_flight(&http, &base).await;
        println!(
            "    registry applied in {applied:.2?}; every account ready after {fill_total:.2?}; store flushed at {durable:.2?}; at most {in_flight} token calls in flight"
        );
        println!(
            "    upstream token calls {fill_calls} ({:.2} per account)",
            fill_calls as f64 / o.accounts as f64,
        );
        // Writes still queued after the fill (counters) are not idle work.
        tokio::time::sleep(Duration::from_secs(2)).await;

        let rss_filled = rss_kib(Path::new("/proc/self/status"));
        let idle_cpu = idle_cpu(Path::new("/proc/self/stat"), o.idle_secs).await;
        let rss_steady = rss_kib(Path::new("/proc/self/status"));
        println!(
            "    RSS after the fill {:.1} MiB, after {} s idle {:.1} MiB; idle CPU {:.2}% of one core",
            rss_filled as f64 / 1024.0,
            o.idle_secs,
            rss_steady as f64 / 1024.0,
            idle_cpu * 100.0
        );

        engine.stop().await;
        drop(engine);
        // The account actors stop on their own arbiter turns; let them.
        tokio::time::sleep(Duration::from_millis(300)).await;

        println!("[1] library: restart from the full store");
        let calls_before = token_calls(&http, &base).await;
        let started = Instant::now();
        let engine = Engine::start(Some(&path), &base, &clock, &accounts).await;
        let loaded = engine.loaded;
        wait_ready(&engine.slots, &clock, Duration::from_secs(120)).await;
        let restart_total = started.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let restart_calls = token_calls(&http, &base).await - calls_before;
        println!(
            "    store opened and {} accounts loaded in {loaded:.2?}; every account ready after {restart_total:.2?}; upstream calls {restart_calls} (1 s later)",
            engine.stored
        );
        engine.stop().await;
        drop(engine);

        println!(
            "[1] library: the same fill of {} new accounts with an in-memory store (isolates the cost of durable writes)",
            o.accounts
        );
        let memory_accounts = make_accounts("5", o.accounts);
        register_over_http(&http, &base, &memory_accounts).await;
        let started = Instant::now();
        let engine = Engine::start(None, &base, &clock, &memory_accounts).await;
        wait_ready(&engine.slots, &clock, Duration::from_secs(600)).await;
        let memory_fill = started.elapsed();
        println!("    every account ready after {memory_fill:.2?}");
        engine.stop().await;
        drop(engine);

        let (rss_target, restart_target, ..) = targets(o.accounts);
        vec![
            Row::new(
                format!("library: fill {} accounts, empty store", o.accounts),
                format!("{:.2} s", fill_total.as_secs_f64()),
                REPORT,
            ),
            Row::new(
                "library: fill upstream calls per account",
                format!("{:.2}", fill_calls as f64 / o.accounts as f64),
                "1".to_string(),
            ),
            Row::new(
                "library: most token calls in flight (simulator)",
                in_flight.to_string(),
                verdict(
                    in_flight <= MAX_CONCURRENCY as u64,
                    &format!("<= {MAX_CONCURRENCY}"),
                ),
            ),
            Row::new(
                "library: the same fill, in-memory store",
                format!("{:.2} s", memory_fill.as_secs_f64()),
                REPORT,
            ),
            Row::new(
                "library: restart from full redb store",
                format!("{:.3} s", restart_total.as_secs_f64()),
                verdict(
                    restart_total.as_secs_f64() < restart_target,
                    &format!("< {restart_target} s"),
                ),
            ),
            Row::new(
                "library: restart upstream calls",
                restart_calls.to_string(),
                verdict(restart_calls == 0, "0"),
            ),
            Row::new(
                "library: RSS, steady state (this process)",
                format!("{:.1} MiB", rss_steady as f64 / 1024.0),
                verdict(
                    rss_steady <= rss_target * 1024,
                    &format!("<= {rss_target} MiB"),
                ),
            ),
            Row::new(
                format!("library: idle CPU over {} s", o.idle_secs),
                format!("{:.2}% of a core", idle_cpu * 100.0),
                REPORT,
            ),
        ]
    })
}

/// The engine of one wxtoken process, wired as `startup.rs` does, without HTTP.
struct Engine {
    engine: engine::Engine,
    slots: Vec<Arc<AccountSlot>>,
    /// Time to open the store and read it.
    loaded: Duration,
    /// Accounts read from the store.
    stored: usize,
}

impl Engine {
    /// Opens the redb store at `path` (or an in-memory one when `None`) and
    /// starts the library's engine on it with `accounts`, fetching from `base`.
    async fn start(
        path: Option<&Path>,
        base: &str,
        clock: &Clock,
        accounts: &[AccountConfig],
    ) -> Engine {
        let started = Instant::now();
        let storage: Arc<dyn Storage> = match path {
            Some(path) => Arc::new(RedbStore::open(path).expect("the store opens")),
            None => Arc::new(MemoryStore::new()),
        };
        let opened = started.elapsed();
        let config = EngineConfig {
            upstream: UpstreamConfig {
                base_urls: vec![Url::parse(base).expect("a valid base url")],
                timeout: Duration::from_secs(5),
                max_concurrency: MAX_CONCURRENCY,
                ..UpstreamConfig::default()
            },
            ..EngineConfig::new(accounts.to_vec())
        };
        let engine = engine::Engine::start(
            &config,
            EngineOptions {
                clock: clock.clone(),
                store: Some(storage),
                ..EngineOptions::default()
            },
        )
        .await
        .expect("the engine starts");
        Engine {
            slots: engine.directory.all(),
            loaded: opened + engine.load_time,
            stored: engine.restored,
            engine,
        }
    }

    /// Stops every actor and closes the store file (as a graceful shutdown does).
    async fn stop(&self) {
        self.engine.stop().await;
    }
}

/// Waits (real or virtual time) until every slot serves a token; returns how long it took.
async fn wait_ready(slots: &[Arc<AccountSlot>], clock: &Clock, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = clock.now_unix_ms();
        let missing = slots.iter().filter(|s| !s.is_ready(now)).count();
        if missing == 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{missing} of {} accounts still not ready after {limit:?}",
            slots.len()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ----------------------------------------------------------------------------
// Phase 2: the real binary.
// ----------------------------------------------------------------------------

fn serve_fill_and_restart(o: &Options, base: &str) -> Phase {
    let o = o.clone();
    let base = base.to_string();
    Box::pin(async move {
        println!();
        println!(
            "[2] wxtoken serve: {} accounts from a generated accounts.yaml",
            o.accounts
        );
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        let accounts = make_accounts("2", o.accounts);
        register_over_http(&http, &base, &accounts).await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let config = dir.path().join("accounts.yaml");
        std::fs::write(&config, config_yaml(&base, port, &accounts)).expect("write the config");
        let readyz = format!("http://127.0.0.1:{port}/readyz");

        let check = check_time(&config);
        println!("    wxtoken check: {check:.2?}");

        let calls_at_start = token_calls(&http, &base).await;
        let started = Instant::now();
        let mut server = serve(&config);
        wait_readyz(&http, &readyz, &mut server, Duration::from_secs(600)).await;
        let fill = started.elapsed();
        let fill_calls = token_calls(&http, &base).await - calls_at_start;
        let status = format!("/proc/{}/status", server.child.id());
        let stat = format!("/proc/{}/stat", server.child.id());
        let rss_filled = rss_kib(Path::new(&status));
        // Writes still queued after the fill (counters) are not idle work.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_cpu = idle_cpu(Path::new(&stat), o.idle_secs).await;
        let rss_steady = rss_kib(Path::new(&status));
        let metrics_started = Instant::now();
        let metrics_bytes = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("the server answers /metrics")
            .bytes()
            .await
            .map_or(0, |b| b.len());
        let scrape = metrics_started.elapsed();
        let in_flight = max_in_flight(&http, &base).await;
        println!(
            "    ready (/readyz 200) {fill:.2?} after process start; {fill_calls} upstream calls; at most {in_flight} token calls in flight"
        );
        println!(
            "    server RSS after the fill {:.1} MiB, after {} s idle {:.1} MiB; idle CPU {:.2}% of one core; /metrics {} KiB in {scrape:.2?}",
            rss_filled as f64 / 1024.0,
            o.idle_secs,
            rss_steady as f64 / 1024.0,
            idle_cpu * 100.0,
            metrics_bytes / 1024
        );
        server.terminate();

        println!("[2] wxtoken serve: restart (SIGTERM, start again on the same store)");
        let calls_before = token_calls(&http, &base).await;
        let started = Instant::now();
        let mut server = serve(&config);
        wait_readyz(&http, &readyz, &mut server, Duration::from_secs(120)).await;
        let restart = started.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let restart_calls = token_calls(&http, &base).await - calls_before;
        let rss_restarted = rss_kib(Path::new(&format!("/proc/{}/status", server.child.id())));
        println!(
            "    ready {restart:.2?} after process start; {restart_calls} upstream calls (1 s later); RSS {:.1} MiB",
            rss_restarted as f64 / 1024.0
        );
        server.terminate();

        let (rss_target, restart_target, metrics_target, scrape_target, check_target) =
            targets(o.accounts);
        let fill_target = if o.accounts > 10_000 {
            verdict(fill.as_secs_f64() <= 240.0, "<= 4 min")
        } else {
            REPORT.to_string()
        };
        vec![
            Row::new(
                format!("serve: wxtoken check of {} accounts", o.accounts),
                format!("{:.3} s", check.as_secs_f64()),
                verdict(
                    check.as_secs_f64() < check_target,
                    &format!("< {check_target} s"),
                ),
            ),
            Row::new(
                format!(
                    "serve: fill {} accounts (process start to /readyz)",
                    o.accounts
                ),
                format!("{:.2} s", fill.as_secs_f64()),
                fill_target,
            ),
            Row::new(
                "serve: most token calls in flight (simulator)",
                in_flight.to_string(),
                verdict(
                    in_flight <= MAX_CONCURRENCY as u64,
                    &format!("<= {MAX_CONCURRENCY}"),
                ),
            ),
            Row::new(
                "serve: /metrics size",
                format!("{:.1} MiB", metrics_bytes as f64 / (1 << 20) as f64),
                verdict(
                    metrics_bytes <= metrics_target,
                    &format!("<= {} MiB", metrics_target >> 20),
                ),
            ),
            Row::new(
                "serve: /metrics scrape time",
                format!("{:.3} s", scrape.as_secs_f64()),
                verdict(
                    scrape.as_secs_f64() <= scrape_target,
                    &format!("<= {scrape_target} s"),
                ),
            ),
            Row::new(
                "serve: restart (process start to /readyz 200)",
                format!("{:.3} s", restart.as_secs_f64()),
                verdict(
                    restart.as_secs_f64() < restart_target,
                    &format!("< {restart_target} s"),
                ),
            ),
            Row::new(
                "serve: restart upstream calls",
                restart_calls.to_string(),
                verdict(restart_calls == 0, "0"),
            ),
            Row::new(
                "serve: RSS, steady state after the fill",
                format!("{:.1} MiB", rss_steady as f64 / 1024.0),
                verdict(
                    rss_steady <= rss_target * 1024,
                    &format!("<= {rss_target} MiB"),
                ),
            ),
            Row::new(
                "serve: RSS after a restart from the store",
                format!("{:.1} MiB", rss_restarted as f64 / 1024.0),
                verdict(
                    rss_restarted <= rss_target * 1024,
                    &format!("<= {rss_target} MiB"),
                ),
            ),
            Row::new(
                format!("serve: idle CPU over {} s", o.idle_secs),
                format!("{:.2}% of a core", idle_cpu * 100.0),
                if o.accounts > 10_000 {
                    verdict(idle_cpu <= 0.05, "<= 5 %")
                } else {
                    verdict(idle_cpu <= 0.01, "<= 1 %")
                },
            ),
        ]
    })
}

/// How long `wxtoken check` takes on `config` (it must pass).
fn check_time(config: &Path) -> Duration {
    let started = Instant::now();
    let output =
        support::process::wxtoken(&["check", "--config", config.to_str().expect("utf-8 path")])
            .output()
            .expect("wxtoken check runs");
    let took = started.elapsed();
    assert!(
        output.status.success(),
        "wxtoken check failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    took
}

/// Starts `wxtoken serve` on `config`.
fn serve(config: &Path) -> Running {
    let mut cmd = wxtoken(&["serve", "--config", config.to_str().expect("utf-8 path")]);
    cmd.env("RUST_LOG", "warn");
    Running::spawn(cmd)
}

/// Waits until `url` answers 200, while `server` runs.
async fn wait_readyz(http: &reqwest::Client, url: &str, server: &mut Running, limit: Duration) {
    Wait::up_to(limit)
        .every(Duration::from_millis(5))
        .until_async(&format!("{url} answers 200"), async || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("wxtoken serve exited with {status} before it was ready");
            }
            answers_ok(http, url).await
        })
        .await
}

fn config_yaml(base: &str, port: u16, accounts: &[AccountConfig]) -> String {
    use secrecy::ExposeSecret;
    let mut yaml = format!(
        "listen: 127.0.0.1:{port}\n\
         upstream:\n  base_urls: [{base}]\n  timeout: 5s\n  max_concurrency: {MAX_CONCURRENCY}\n\
         store:\n  path: data/wxtoken.redb\n\
         accounts:\n"
    );
    for a in accounts {
        yaml.push_str(&format!(
            "  - appid: {}\n    secret: {}\n    mode: {}\n",
            a.appid,
            a.secret.expose_secret(),
            a.mode
        ));
    }
    yaml
}

// ----------------------------------------------------------------------------
// Phase 3: spread of refreshes over the lifetime, virtual time.
// ----------------------------------------------------------------------------

/// The upstream latency of the virtual-time phases (every simulated call).
const LATENCY: Duration = Duration::from_millis(100);

/// A fleet of the library's engine on tokio's paused clock and the in-process
/// simulator, behind the engine's upstream limit (`max_concurrency`
/// [`MAX_CONCURRENCY`]) with [`LATENCY`] on every call, its token calls timed
/// by [`Timed`] and its slots polled by a [`Watch`].
struct VirtualFleet {
    sim: InProcess,
    timed: Timed,
    watch: Watch,
    clock: Clock,
    started_ms: i64,
    accounts: Vec<AccountConfig>,
    _engine: engine::Engine,
}

impl VirtualFleet {
    /// `n` accounts (half legacy, half stable) with appids unique to `tag`,
    /// all started at one instant.
    async fn start(tag: &str, n: usize) -> VirtualFleet {
        let (clock, sim) = support::virtual_simulator();
        with_latency(&sim, LATENCY);
        let accounts = make_accounts(tag, n);
        for a in &accounts {
            use secrecy::ExposeSecret;
            sim.try_register_app(AppRegistration {
                appid: a.appid.to_string(),
                secret: a.secret.expose_secret().to_string(),
                ip_whitelist: vec![],
            })
            .expect("a valid registration");
        }
        let timed = Timed::new(Arc::new(sim.clone()), clock.clone(), &accounts);
        let mut config = EngineConfig::new(accounts.clone());
        config.upstream.max_concurrency = MAX_CONCURRENCY;
        let started_ms = clock.now_unix_ms();
        let engine = support::engine_in_memory(&clock, &config, Arc::new(timed.clone())).await;
        timed.watch(engine.directory.clone());
        let watch = Watch::new(&engine.directory, &accounts);
        VirtualFleet {
            sim,
            timed,
            watch,
            clock,
            started_ms,
            accounts,
            _engine: engine,
        }
    }

    /// Lets virtual time pass in 10 s steps until every account has its
    /// first token and `lifetimes` lifetimes more; every step the slots are
    /// polled, every third step WeChat is asked whether each served token is
    /// live. Returns when the run ended (Unix ms).
    async fn run(&mut self, lifetimes: u32) -> i64 {
        let step = Duration::from_secs(10);
        let mut end = None;
        for i in 0u64.. {
            let now = self.clock.now_unix_ms();
            if end.is_some_and(|end| now >= end) {
                return now;
            }
            tokio::time::sleep(step).await;
            let now = self.clock.now_unix_ms();
            self.watch.observe(now, (i % 3 == 0).then_some(&self.sim));
            if end.is_none() && self.watch.filled() == self.accounts.len() {
                end = Some(now + i64::from(lifetimes) * LIFE_MS + step.as_millis() as i64);
            }
        }
        unreachable!("the loop returns")
    }

    fn figures(&self, ended_ms: i64, lifetimes: u32) -> Figures {
        Figures::of(
            &self.timed.calls(),
            &self.accounts,
            self.started_ms,
            ended_ms,
            lifetimes,
        )
    }
}

/// The `calls per account-day` line of one mode.
fn per_day_line(mode: &str, d: &PerDay, lifetimes: u32) -> String {
    format!(
        "{mode:<7} calls per account-day: {:.2} (min {:.2}, max {:.2}; counted over each account's first {lifetimes} lifetimes after its fill), long run {:.2} (a day / the mean time between calls); shortest time between calls {:.0} s",
        d.mean,
        d.min,
        d.max,
        d.long_run,
        d.shortest_gap_ms as f64 / 1000.0
    )
}

fn refresh_spread(o: &Options) -> Phase {
    let o = o.clone();
    Box::pin(async move {
        let lifetimes = u32::try_from(o.lifetimes).unwrap_or(u32::MAX);
        // The calls per 10 s the limit carries at this latency.
        let carried = MAX_CONCURRENCY as f64 * 10_000.0 / LATENCY.as_millis() as f64;
        println!();
        println!(
            "[3] spread: {} accounts (half legacy, half stable) started at one instant, max_concurrency {MAX_CONCURRENCY}, {} ms upstream latency ({carried:.0} calls per 10 s at most), {lifetimes} lifetimes of 2 h after the fill, tokio's paused clock",
            o.accounts,
            LATENCY.as_millis()
        );
        let wall = Instant::now();
        let mut fleet = VirtualFleet::start("3", o.accounts).await;
        let ended = fleet.run(lifetimes).await;
        let wall = wall.elapsed();
        let f = fleet.figures(ended, lifetimes);
        let in_flight = fleet.sim.stats().max_token_calls_in_flight;
        let without = fleet.watch.ever_without_valid_token();
        println!(
            "    simulated {:.1} h in {wall:.1?} of wall time; fill {:.1} s; {} token calls; max in flight {in_flight}",
            (ended - fleet.started_ms) as f64 / 3_600_000.0,
            f.fill_ms as f64 / 1000.0,
            f.calls,
        );
        println!(
            "    accounts ever without a valid token (after their fill): {without}; refreshes past their serve time: {} (least slack {:.1} s)",
            f.late,
            f.least_slack_ms as f64 / 1000.0
        );
        println!(
            "    busiest 10 s of refreshes {} (at {:.0} s) / mean {:.1} / the limit carries {carried:.0}",
            f.busiest_10s,
            f.busiest_at_ms as f64 / 1000.0,
            f.mean_10s
        );
        println!("    {}", per_day_line("legacy", &f.legacy, lifetimes));
        println!("    {}", per_day_line("stable", &f.stable, lifetimes));
        vec![
            Row::new(
                format!("spread: {} accounts, wall time", o.accounts),
                format!("{:.1} s", wall.as_secs_f64()),
                REPORT,
            ),
            Row::new(
                "spread: accounts ever without a valid token",
                without.to_string(),
                verdict(without == 0, "0"),
            ),
            Row::new(
                "spread: refreshes past their serve time",
                f.late.to_string(),
                verdict(f.late == 0, "0"),
            ),
            Row::new(
                "spread: max upstream calls in flight",
                in_flight.to_string(),
                verdict(
                    in_flight <= MAX_CONCURRENCY as u64,
                    &format!("<= {MAX_CONCURRENCY}"),
                ),
            ),
            Row::new(
                "spread: busiest 10 s / mean / limit carries",
                format!("{} / {:.1} / {carried:.0}", f.busiest_10s, f.mean_10s),
                REPORT,
            ),
            Row::new(
                "spread: stable calls per account-day",
                format!("{:.2} (max {:.2})", f.stable.mean, f.stable.max),
                verdict(f.stable.max <= 12.0, "12"),
            ),
            Row::new(
                "spread: legacy calls per account-day",
                format!("{:.2} (max {:.2})", f.legacy.mean, f.legacy.max),
                verdict(f.legacy.max <= 15.0, "<= 15"),
            ),
        ]
    })
}

// ----------------------------------------------------------------------------
// Phase 4: upstream cost per account per day, virtual time.
// ----------------------------------------------------------------------------

fn upstream_cost(o: &Options) -> Phase {
    let o = o.clone();
    Box::pin(async move {
        // A day of 2 h lifetimes.
        const LIFETIMES: u32 = 12;
        println!();
        println!(
            "[4] upstream cost: {} accounts (half legacy, half stable) over one simulated day after the fill, max_concurrency {MAX_CONCURRENCY}, {} ms upstream latency",
            o.cost_accounts,
            LATENCY.as_millis()
        );
        let wall = Instant::now();
        let mut fleet = VirtualFleet::start("4", o.cost_accounts).await;
        let ended = fleet.run(LIFETIMES).await;
        let f = fleet.figures(ended, LIFETIMES);
        println!(
            "    simulated {:.1} h in {:.1?}; accounts ever without a valid token: {}; refreshes past their serve time: {}",
            (ended - fleet.started_ms) as f64 / 3_600_000.0,
            wall.elapsed(),
            fleet.watch.ever_without_valid_token(),
            f.late
        );
        let mut rows = Vec::new();
        for (mode, d) in [(Mode::Legacy, &f.legacy), (Mode::Stable, &f.stable)] {
            println!(
                "    {} (floor 12; {:.0}% above it in the long run)",
                per_day_line(&mode.to_string(), d, LIFETIMES),
                (d.long_run / 12.0 - 1.0) * 100.0
            );
            rows.push(Row::new(
                format!("cost: {mode} calls per account per day"),
                format!(
                    "{:.2} (min {:.0}, max {:.0}; long run {:.2})",
                    d.mean, d.min, d.max, d.long_run
                ),
                "floor 12".to_string(),
            ));
        }
        rows
    })
}

// ----------------------------------------------------------------------------
// Helpers.
// ----------------------------------------------------------------------------

/// `n` accounts, alternating legacy and stable, with appids unique to `tag`,
/// read from a generated `accounts.yaml` by the real loader.
fn make_accounts(tag: &str, n: usize) -> Vec<AccountConfig> {
    let tag = u64::from_str_radix(tag, 16).expect("a hex tag");
    let mut yaml = String::from("accounts:\n");
    for i in 0..n {
        let appid = format!("wx{tag:04x}{i:012x}");
        let mode = if i % 2 == 0 { "legacy" } else { "stable" };
        yaml.push_str(&format!(
            "  - appid: {appid}\n    name: scale {i}\n    secret: scale-secret-{appid}\n    mode: {mode}\n"
        ));
    }
    load_str(&yaml, Path::new("scale.yaml"), &LoadOptions::from_pairs([]))
        .unwrap_or_else(|problems| panic!("the generated accounts are invalid: {problems}"))
        .config
        .accounts
}

/// Registers every account with the simulator's `POST /sim/apps`.
async fn register_over_http(http: &reqwest::Client, base: &str, accounts: &[AccountConfig]) {
    use secrecy::ExposeSecret;
    let started = Instant::now();
    let url = format!("{base}/sim/apps");
    let results: Vec<bool> = futures::stream::iter(accounts.iter().map(|a| {
        let body = serde_json::json!({
            "appid": a.appid.as_str(),
            "secret": a.secret.expose_secret(),
        });
        let request = http.post(&url).json(&body).send();
        async move { request.await.is_ok_and(|r| r.status().is_success()) }
    }))
    .buffer_unordered(16)
    .collect()
    .await;
    assert!(
        results.iter().all(|ok| *ok),
        "the simulator refused a registration"
    );
    println!(
        "    registered {} apps with the simulator in {:.2?}",
        accounts.len(),
        started.elapsed()
    );
}

/// Token calls (`token` and `stable_token`) the simulator at `base` received.
async fn token_calls(http: &reqwest::Client, base: &str) -> u64 {
    all_token_calls(&sim_stats(http, base).await)
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

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
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

    /// Makes the simulator wait `ms` before answering every call (a fault
    /// with only a delay, which never runs out), as WeChat's latency.
    fn add_latency(&self, ms: u64) {
        if ms == 0 {
            return;
        }
        let base = self.base.clone();
        in_thread(move || {
            Box::pin(async move {
                let answer = reqwest::Client::builder()
                    .no_proxy()
                    .build()
                    .expect("an HTTP client")
                    .post(format!("{base}/sim/faults"))
                    .json(&serde_json::json!({ "delay_ms": ms }))
                    .send()
                    .await
                    .expect("the simulator answers");
                assert!(answer.status().is_success(), "the simulator took the delay");
            })
        });
    }
}

/// The most token calls the simulator at `base` had in flight at once.
async fn max_in_flight(http: &reqwest::Client, base: &str) -> u64 {
    sim_stats(http, base).await.max_token_calls_in_flight
}

/// The figures of the table that depend on the fleet size:
/// (RSS MiB, restart seconds, `/metrics` bytes, scrape seconds, check seconds).
fn targets(accounts: usize) -> (u64, f64, usize, f64, f64) {
    if accounts > 10_000 {
        (256, 2.0, 32 << 20, 2.0, 2.0)
    } else {
        (64, 1.0, 4 << 20, 0.25, 0.3)
    }
}
