//! Several replicas sharing one Redis: one refresher per account, single
//! flight across replicas, Redis outages, and a lock holder that dies.
//!
//! Uses the machine's Redis (127.0.0.1:6379) under a unique key prefix per
//! test, or a `redis-server` the test starts on a free port when it must
//! stop it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use reqwest::StatusCode;
use serde_json::Value;
use wxtoken::account::Reason;
use wxtoken::config::{LoadOptions, load_str};
use wxtoken::domain::{AccessToken, AppId, KeyHash, Mode};
use wxtoken::registry::RouteRefresh;
use wxtoken::replica::ReplicaOptions;
use wxtoken::simulator::{AppRegistration, FaultSpec, SimConfig, Simulator};
use wxtoken::startup::{AppState, Application, BuildOptions};

use crate::cli::{Running, wxtoken};
use crate::support::{self, metric_value};

const KEY: &str = "replica-test-admin-key-0123456789";
/// The lock TTL of the take-over test (short, so the test is quick).
const LOCK_TTL: Duration = Duration::from_secs(2);
/// The lock TTL of the in-process replicas: long enough that a loaded test
/// machine never lets a working holder's lock expire.
const REPLICA_LOCK_TTL: Duration = Duration::from_secs(10);

fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "wxtoken-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `redis-server` of the test's own, killed on drop.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let mut redis = OwnRedis {
            port: free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (.ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accounts registered in the simulator, with their secrets.
struct Accounts(Vec<(AppId, Mode, String)>);

impl Accounts {
    fn register(sim: &Simulator, modes: &[Mode]) -> Accounts {
        Accounts(
            modes
                .iter()
                .map(|mode| {
                    let appid = support::unique_appid();
                    let secret = format!("replica-secret-{appid}");
                    sim.register_app(AppRegistration {
                        appid: appid.to_string(),
                        secret: secret.clone(),
                        ip_whitelist: vec![],
                    });
                    (appid, *mode, secret)
                })
                .collect(),
        )
    }

    fn yaml(
        &self,
        listen: &str,
        sim: &Simulator,
        redis: &str,
        prefix: &str,
        refresh: &str,
    ) -> String {
        let mut yaml = format!(
            "listen: {listen}\nupstream:\n  base_urls: [{}]\n  timeout: 5s\nstore:\n  redis: {redis}\n  redis_prefix: {prefix}\nrefresh:\n  backoff_initial: 100ms\n{refresh}clients:\n  - name: admin\n    key: {}\n    appids: [\"*\"]\n    admin: true\naccounts:\n",
            sim.base_url(),
            KeyHash::of_key(KEY)
        );
        for (appid, mode, secret) in &self.0 {
            yaml.push_str(&format!(
                "  - appid: {appid}\n    secret: {secret}\n    mode: {mode}\n"
            ));
        }
        yaml
    }
}

/// One in-process replica.
struct Replica {
    addr: SocketAddr,
    state: AppState,
    handle: ServerHandle,
}

impl Drop for Replica {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

async fn replica(yaml: &str, sim: &Simulator, grace: Duration) -> Replica {
    let loaded = load_str(
        yaml,
        Path::new("replica.yaml"),
        &LoadOptions::from_pairs([]),
    )
    .unwrap_or_else(|p| panic!("invalid test config:\n{p}\n{yaml}"));
    let app = Application::build(
        loaded.config,
        BuildOptions {
            clock: sim.clock().clone(),
            grace,
            workers: Some(1),
            replica: ReplicaOptions {
                lock_ttl: REPLICA_LOCK_TTL,
                poll_interval: Duration::from_millis(500),
            },
            ..BuildOptions::default()
        },
    )
    .await
    .expect("the replica starts");
    let r = Replica {
        addr: app.addr(),
        state: app.state(),
        handle: app.handle(),
    };
    actix_web::rt::spawn(app.run_until_stopped());
    r
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}

async fn get_token(http: &reqwest::Client, addr: SocketAddr, appid: &AppId) -> (StatusCode, Value) {
    let r = http
        .get(format!("http://{addr}/v1/token/{appid}"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("the replica answers");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_ready(replicas: &[&Replica]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = replicas.iter().all(|r| {
            r.state
                .directory
                .not_ready(r.state.clock.now_unix_ms())
                .is_empty()
        });
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "replicas did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn calls(sim: &Simulator, appid: &AppId) -> u64 {
    let s = sim.stats();
    s.calls_to(appid.as_str(), "token") + s.calls_to(appid.as_str(), "stable_token")
}

#[actix_web::test]
async fn three_replicas_fetch_once_per_cycle_and_all_serve_valid_tokens() {
    const RUN: Duration = Duration::from_secs(45);
    let sim = support::simulator(SimConfig {
        // WeChat announces whole seconds: lifetimes of 3 s, rotation (and
        // the death of a superseded token) 2 s before expiry / after a fetch.
        token_ttl: Duration::from_secs(3),
        grace: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await;
    let accounts = Accounts::register(&sim, &[Mode::Legacy, Mode::Legacy, Mode::Stable]);
    let prefix = unique_prefix();
    let refresh = "  legacy_at: 0.3\n  stable_window: 2s\n";
    let grace = Duration::from_secs(2);
    let yaml = accounts.yaml(
        "127.0.0.1:0",
        &sim,
        "redis://127.0.0.1:6379/0",
        &prefix,
        refresh,
    );
    let (a, b, c) = (
        replica(&yaml, &sim, grace).await,
        replica(&yaml, &sim, grace).await,
        replica(&yaml, &sim, grace).await,
    );
    wait_ready(&[&a, &b, &c]).await;
    let http = http();

    let mut seen: HashMap<AppId, HashSet<String>> = HashMap::new();
    let mut reads = 0;
    let started = Instant::now();
    while started.elapsed() < RUN {
        for r in [&a, &b, &c] {
            for (appid, mode, _) in &accounts.0 {
                let (status, body) = get_token(&http, r.addr, appid).await;
                assert_eq!(status, StatusCode::OK, "{appid} ({mode}): {body}");
                let token = body["access_token"].as_str().expect("a token");
                assert!(
                    sim.is_token_valid(appid.as_str(), token),
                    "{appid} ({mode}) served a token WeChat rejects: {body}"
                );
                seen.entry(appid.clone())
                    .or_default()
                    .insert(token.to_string());
                reads += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let stats = sim.stats();
    for (appid, mode, _) in &accounts.0 {
        let issued = stats.tokens_issued_to(appid.as_str());
        let observed = seen[appid].len() as u64;
        if *mode == Mode::Legacy {
            assert!(
                issued >= 40,
                "{appid}: only {issued} refresh cycles in {RUN:?}"
            );
            // A cycle lasts at least (legacy_at - jitter) of the 3 s life; three
            // replicas refreshing on their own would make three times as many.
            let most = (RUN.as_secs_f64() / (0.25 * 3.0)).ceil() as u64 + 2;
            assert!(
                issued <= most,
                "{appid}: {issued} fetches, at most {most} cycles fit"
            );
        }
        // One fetch per cycle: every token WeChat issued was served (a
        // second fetch in a cycle would replace a token before anyone saw it).
        assert!(
            issued <= observed + 1,
            "{appid} ({mode}): {issued} tokens issued, {observed} served over {reads} reads"
        );
        match mode {
            // Every legacy call issues a token: no call was wasted.
            Mode::Legacy => assert_eq!(calls(&sim, appid), issued, "{appid}: a wasted call"),
            // A stable call inside the window may still get the same token
            // (then it asks again shortly); it never forces a rotation.
            Mode::Stable => assert_eq!(stats.force_refreshes_of(appid.as_str()), 0),
        }
    }
}

#[actix_web::test]
async fn a_stale_report_storm_over_three_replicas_makes_one_upstream_call() {
    let sim = support::simulator(SimConfig::default()).await;
    let accounts = Accounts::register(&sim, &[Mode::Legacy, Mode::Stable]);
    let prefix = unique_prefix();
    let yaml = accounts.yaml("127.0.0.1:0", &sim, "redis://127.0.0.1:6379/0", &prefix, "");
    let grace = Duration::from_secs(300);
    let replicas = [
        replica(&yaml, &sim, grace).await,
        replica(&yaml, &sim, grace).await,
        replica(&yaml, &sim, grace).await,
    ];
    wait_ready(&[&replicas[0], &replicas[1], &replicas[2]]).await;
    for (appid, mode, _) in &accounts.0 {
        assert_eq!(
            calls(&sim, appid),
            1,
            "{appid}: one fill for three replicas"
        );
        let stale = replicas[0]
            .state
            .directory
            .get(appid)
            .and_then(|s| s.token())
            .expect("a token")
            .token
            .clone();
        let before = calls(&sim, appid);
        let reports = replicas.iter().flat_map(|r| {
            (0..20).map(|_| {
                r.state.registry.send(RouteRefresh {
                    appid: appid.clone(),
                    reason: Reason::StaleReport,
                    stale: Some(stale.clone()),
                    client: None,
                })
            })
        });
        let outcomes = futures::future::join_all(reports).await;
        let mut fresh: HashSet<AccessToken> = HashSet::new();
        for outcome in outcomes {
            let outcome = outcome.expect("answered").expect("refreshed");
            fresh.insert(outcome.record.token.clone());
        }
        assert_eq!(fresh.len(), 1, "{appid}: everyone got the same new token");
        assert!(!fresh.contains(&stale));
        match mode {
            Mode::Legacy => assert_eq!(calls(&sim, appid), before + 1, "{appid}: one fetch"),
            Mode::Stable => assert_eq!(
                sim.stats().force_refreshes_of(appid.as_str()),
                1,
                "{appid}: one forced rotation"
            ),
        }
    }
}

#[actix_web::test]
async fn a_redis_outage_keeps_held_tokens_served_and_never_refreshes_without_the_lock() {
    let mut redis = OwnRedis::start();
    let sim = support::simulator(SimConfig {
        token_ttl: Duration::from_secs(8),
        grace: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await;
    let accounts = Accounts::register(&sim, &[Mode::Legacy, Mode::Stable]);
    let yaml = accounts.yaml(
        "127.0.0.1:0",
        &sim,
        &redis.url(),
        &unique_prefix(),
        "  legacy_at: 0.5\n  stable_window: 2s\n",
    );
    let grace = Duration::from_secs(2);
    let a = replica(&yaml, &sim, grace).await;
    let b = replica(&yaml, &sim, grace).await;
    wait_ready(&[&a, &b]).await;
    let http = http();

    redis.stop();
    let outage = Instant::now();
    let calls_at_outage: u64 = accounts.0.iter().map(|(id, _, _)| calls(&sim, id)).sum();
    // Not strictly ready within a few health checks, but the held tokens are
    // served, so the load-balancer check stays 200 and says Redis is down.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let statuses = [
            http.get(format!("http://{}/readyz?strict=1", a.addr))
                .send()
                .await
                .expect("answer")
                .status(),
            http.get(format!("http://{}/readyz?strict=1", b.addr))
                .send()
                .await
                .expect("answer")
                .status(),
        ];
        if statuses
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas still ready without Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in [&a, &b] {
        let lb = http
            .get(format!("http://{}/readyz", r.addr))
            .send()
            .await
            .expect("answer");
        assert_eq!(lb.status(), StatusCode::OK);
        let body: Value = lb.json().await.expect("JSON");
        assert_eq!(body["redis"], "down", "{body}");
    }
    let text = a.state.metrics.encode();
    assert_eq!(metric_value(&text, "wxtoken_redis_up", &[]), 0.0);
    // Through the planned refresh (half of the 8 s life) and beyond: tokens
    // served while valid, and no call to WeChat without the lock.
    while outage.elapsed() < Duration::from_secs(6) {
        for r in [&a, &b] {
            for (appid, _, _) in &accounts.0 {
                let (status, body) = get_token(&http, r.addr, appid).await;
                if status == StatusCode::OK {
                    let token = body["access_token"].as_str().expect("a token");
                    assert!(sim.is_token_valid(appid.as_str(), token), "{appid}: {body}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls_during: u64 = accounts.0.iter().map(|(id, _, _)| calls(&sim, id)).sum();
    assert_eq!(calls_during, calls_at_outage, "a refresh without the lock");

    // Redis is back (empty: it keeps nothing on disk): replicas reconnect,
    // refresh under the lock and are ready again.
    redis.restart();
    wait_ready(&[&a, &b]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok = http
            .get(format!("http://{}/readyz?strict=1", a.addr))
            .send()
            .await
            .expect("answer")
            .status()
            == StatusCode::OK
            && http
                .get(format!("http://{}/readyz?strict=1", b.addr))
                .send()
                .await
                .expect("answer")
                .status()
                == StatusCode::OK;
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not recover after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in [&a, &b] {
        for (appid, _, _) in &accounts.0 {
            let (status, body) = get_token(&http, r.addr, appid).await;
            assert_eq!(status, StatusCode::OK, "{appid}: {body}");
            let token = body["access_token"].as_str().expect("a token");
            assert!(sim.is_token_valid(appid.as_str(), token), "{appid}: {body}");
        }
    }
    assert!(
        accounts
            .0
            .iter()
            .map(|(id, _, _)| calls(&sim, id))
            .sum::<u64>()
            > calls_at_outage,
        "refreshing resumed"
    );
}

#[actix_web::test]
async fn when_the_lock_holder_dies_mid_refresh_another_replica_takes_over_within_the_lock_ttl() {
    let sim = support::simulator(SimConfig::default()).await;
    let accounts = Accounts::register(&sim, &[Mode::Legacy]);
    let appid = accounts.0[0].0.clone();
    let prefix = unique_prefix();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ports = [free_port(), free_port()];
    let mut servers = Vec::new();
    for port in ports {
        let listen = format!("127.0.0.1:{port}");
        let config = dir.path().join(format!("replica-{port}.yaml"));
        std::fs::write(
            &config,
            accounts.yaml(&listen, &sim, "redis://127.0.0.1:6379/0", &prefix, ""),
        )
        .expect("config");
        servers.push(Running::spawn(wxtoken(&[
            "serve",
            "--config",
            config.to_str().expect("utf-8"),
            "--redis-lock-ttl",
            &LOCK_TTL.as_secs().to_string(),
        ])));
    }
    let http = http();
    for port in ports {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http
                .get(format!("http://127.0.0.1:{port}/readyz?strict=1"))
                .send()
                .await
                && r.status() == StatusCode::OK
            {
                break;
            }
            assert!(Instant::now() < deadline, "replica on {port} not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(calls(&sim, &appid), 1);

    // Replica A starts a refresh that hangs at WeChat, then dies holding the lock.
    sim.inject_fault(FaultSpec {
        appid: Some(appid.to_string()),
        delay_ms: Some(60_000),
        count: Some(1),
        ..FaultSpec::default()
    });
    let trigger = || {
        let http = http.clone();
        let url = format!("http://127.0.0.1:{}/v1/accounts/{appid}/refresh", ports[0]);
        actix_web::rt::spawn(async move { http.post(url).bearer_auth(KEY).send().await })
    };
    let mut hanging = trigger();
    let mut retried = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls(&sim, &appid) < 2 {
        if Instant::now() >= deadline || hanging.is_finished() {
            let answer = hanging.await;
            let text = match answer {
                Ok(Ok(r)) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                other => format!("{other:?}"),
            };
            // Seen once on a loaded machine and not understood: the refresh
            // answered without reaching WeChat. Say so, and trigger it again.
            assert!(
                !retried,
                "replica A never called WeChat; its answer: {text}"
            );
            eprintln!("replica A answered without calling WeChat ({text}); triggering again");
            retried = true;
            hanging = trigger();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut servers = servers.into_iter();
    drop(servers.next()); // SIGKILL replica A while it holds the lock
    let killed = Instant::now();
    let _ = hanging.await;

    // Replica B refreshes as soon as the dead holder's lock expires.
    let r = http
        .post(format!(
            "http://127.0.0.1:{}/v1/accounts/{appid}/refresh",
            ports[1]
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("replica B answers");
    let took = killed.elapsed();
    let status = r.status();
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        took <= LOCK_TTL + Duration::from_secs(2),
        "replica B took {took:?} to take over (lock TTL {LOCK_TTL:?})"
    );
    let token = body["access_token"].as_str().expect("a token");
    assert!(sim.is_token_valid(appid.as_str(), token));
    assert_eq!(calls(&sim, &appid), 3, "fill, A's hung call, B's call");
}
