//! Several replicas sharing one Redis: one refresher per account, single
//! flight across replicas, Redis outages, and a lock holder that dies.
//!
//! Uses the machine's Redis (127.0.0.1:6379) under a unique key prefix per
//! test, or a `redis-server` the test starts on a free port when it must
//! stop it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use reqwest::StatusCode;
use serde_json::Value;
use wxtoken::account::Reason;
use wxtoken::api::AppState;
use wxtoken::config::{LoadOptions, load_str};
use wxtoken::domain::{AccessToken, AppId, KeyHash, Mode};
use wxtoken::engine::EngineOptions;
use wxtoken::registry::{RouteAdopt, RouteRefresh};
use wxtoken::replica::ReplicaOptions;
use wxtoken::simulator::{FaultSpec, SimConfig, Simulator};
use wxtoken::snapshot::State;
use wxtoken::startup::{Application, BuildOptions};
use wxtoken::store::StoredToken;

use crate::support::process::{KillOnDrop, Running, wxtoken};
use crate::support::wait::Wait;
use crate::support::{self, answers_ok, free_port, metric_value, token_calls};

pub(crate) const KEY: &str = "replica-test-admin-key-0123456789";
/// The lock TTL of the take-over test (short, so the test is quick).
const LOCK_TTL: Duration = Duration::from_secs(2);
/// The lock TTL of the in-process replicas: long enough that a loaded test
/// machine never lets a working holder's lock expire.
const REPLICA_LOCK_TTL: Duration = Duration::from_secs(10);

/// A key prefix no other run uses: the machine's Redis keeps earlier runs'
/// keys, and process ids come round again.
pub(crate) fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "wxtoken-test-{}-{}-{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        rand::random::<u32>()
    )
}

/// A `redis-server` of the test's own, killed on drop.
struct OwnRedis {
    port: u16,
    child: Option<KillOnDrop>,
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
        let mut redis = Command::new("redis-server");
        redis
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
            .stderr(Stdio::null());
        self.child = Some(KillOnDrop(
            redis
                .spawn()
                .expect("redis-server runs (.ci/run installs it)"),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        // Dropping the child kills it.
        self.child = None;
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
                    let (appid, secret) = support::register_fresh(sim, "replica-secret");
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
pub(crate) struct Replica {
    pub(crate) addr: SocketAddr,
    pub(crate) state: AppState,
    handle: ServerHandle,
}

impl Drop for Replica {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

pub(crate) async fn replica(yaml: &str, sim: &Simulator, grace: Duration) -> Replica {
    let loaded = load_str(
        yaml,
        Path::new("replica.yaml"),
        &LoadOptions::from_pairs([]),
    )
    .unwrap_or_else(|p| panic!("invalid test config:\n{p}\n{yaml}"));
    let app = Application::build(
        loaded.config,
        BuildOptions {
            engine: EngineOptions {
                clock: sim.clock().clone(),
                grace,
                replica: ReplicaOptions {
                    lock_ttl: REPLICA_LOCK_TTL,
                    poll_interval: Duration::from_millis(500),
                },
                ..EngineOptions::default()
            },
            workers: Some(1),
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

pub(crate) use crate::support::http;

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

pub(crate) async fn wait_ready(replicas: &[&Replica]) {
    Wait::up_to(Duration::from_secs(20))
        .until("the replicas become ready", || {
            replicas.iter().all(|r| {
                r.state
                    .directory
                    .not_ready(r.state.clock.now_unix_ms())
                    .is_empty()
            })
        })
        .await
}

/// The status of `replica`'s `/readyz?strict=1`; panics when it does not answer.
async fn strict_status(http: &reqwest::Client, replica: &Replica) -> StatusCode {
    http.get(format!("http://{}/readyz?strict=1", replica.addr))
        .send()
        .await
        .expect("answer")
        .status()
}

fn calls(sim: &Simulator, appid: &AppId) -> u64 {
    token_calls(&sim.stats(), appid.as_str())
}

/// Waits (polling briefly) until `done` holds, failing with `what` after 10 s.
async fn until(what: &str, done: impl FnMut() -> bool) {
    Wait::up_to(Duration::from_secs(10))
        .every(Duration::from_millis(5))
        .until(what, done)
        .await
}

/// One replica on the machine's Redis with one account in `mode`, once its
/// first refresh is over.
struct Lone {
    replica: Replica,
    appid: AppId,
    secret: String,
    /// The replica's Redis key prefix.
    prefix: String,
}

async fn lone_replica(sim: &Simulator, mode: Mode) -> Lone {
    let accounts = Accounts::register(sim, &[mode]);
    let (appid, _, secret) = accounts.0[0].clone();
    let prefix = unique_prefix();
    let yaml = accounts.yaml("127.0.0.1:0", sim, "redis://127.0.0.1:6379/0", &prefix, "");
    let replica = replica(&yaml, sim, Duration::from_secs(300)).await;
    wait_ready(&[&replica]).await;
    until("A's first refresh is over", || {
        replica
            .state
            .directory
            .get(&appid)
            .map(|s| s.status().state)
            == Some(State::Ready)
    })
    .await;
    Lone {
        replica,
        appid,
        secret,
        prefix,
    }
}

/// The token `replica` serves for `appid` now.
fn held(replica: &Replica, appid: &AppId) -> Option<AccessToken> {
    replica
        .state
        .directory
        .get(appid)
        .and_then(|s| s.token())
        .map(|t| t.token.clone())
}

/// What the follower task hands an account when another replica wrote
/// `token` (fetched now, valid for `expires_in`).
fn adopt(replica: &Replica, appid: &AppId, token: &str, expires_in: Duration) {
    let now = replica.state.clock.now_unix_ms();
    let expires_at_ms = now + expires_in.as_millis() as i64;
    replica.state.registry.do_send(RouteAdopt {
        appid: appid.clone(),
        token: StoredToken {
            token: AccessToken::new(token.to_string()),
            fetched_at_ms: now,
            expires_at_ms,
            serve_until_ms: expires_at_ms,
        },
    });
}

/// Sends a refresh of `appid` to `replica` and drives it on its own.
fn refresh(
    replica: &Replica,
    appid: &AppId,
    reason: Reason,
    stale: Option<AccessToken>,
) -> actix_web::rt::task::JoinHandle<
    Result<wxtoken::account::RefreshOutcome, wxtoken::account::RefreshError>,
> {
    let request = replica.state.registry.send(RouteRefresh {
        appid: appid.clone(),
        reason,
        stale,
        client: None,
    });
    actix_web::rt::spawn(async move { request.await.expect("the registry answers") })
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
    Wait::up_to(Duration::from_secs(5))
        .every(Duration::from_millis(50))
        .until_async("both replicas say Redis is down without it", async || {
            let mut seen = 0;
            for r in [&a, &b] {
                let strict = strict_status(&http, r).await;
                let lb = http
                    .get(format!("http://{}/readyz", r.addr))
                    .send()
                    .await
                    .expect("answer");
                assert_eq!(lb.status(), StatusCode::OK);
                let body: Value = lb.json().await.expect("JSON");
                if strict == StatusCode::SERVICE_UNAVAILABLE && body["redis"] == "down" {
                    seen += 1;
                }
            }
            seen == 2
        })
        .await;
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
    Wait::up_to(Duration::from_secs(15))
        .every(Duration::from_millis(100))
        .until_async("the replicas recover after Redis came back", async || {
            strict_status(&http, &a).await == StatusCode::OK
                && strict_status(&http, &b).await == StatusCode::OK
        })
        .await;
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
        let url = format!("http://127.0.0.1:{port}/readyz?strict=1");
        Wait::up_to(Duration::from_secs(20))
            .every(Duration::from_millis(50))
            .until_async(&format!("the replica on {port} is ready"), async || {
                answers_ok(&http, &url).await
            })
            .await;
    }
    assert_eq!(calls(&sim, &appid), 1);

    // Replica A starts a refresh that hangs at WeChat, then dies holding the lock.
    sim.inject_fault(FaultSpec {
        appid: Some(appid.to_string()),
        delay_ms: Some(60_000),
        count: Some(1),
        ..FaultSpec::default()
    });
    let hanging = {
        let url = format!("http://127.0.0.1:{}/v1/accounts/{appid}/refresh", ports[0]);
        let request = http.post(url).bearer_auth(KEY).send();
        actix_web::rt::spawn(request)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls(&sim, &appid) < 2 {
        if Instant::now() >= deadline || hanging.is_finished() {
            let text = match hanging.await {
                Ok(Ok(r)) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                other => format!("{other:?}"),
            };
            panic!("replica A never called WeChat; its answer: {text}");
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

/// Another replica, played by the test through Redis itself.
struct OtherReplica {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl OtherReplica {
    async fn connect(prefix: &str) -> OtherReplica {
        let conn = redis::Client::open("redis://127.0.0.1:6379/0")
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("Redis on 127.0.0.1:6379 answers");
        OtherReplica {
            conn,
            prefix: prefix.to_string(),
        }
    }

    /// Takes the refresh lock of `appid` (`SET NX PX`, as replicas do).
    async fn lock(&mut self, appid: &AppId) {
        let taken: Option<String> = redis::cmd("SET")
            .arg(format!("{}:lock:{appid}", self.prefix))
            .arg("the-test-replica")
            .arg("NX")
            .arg("PX")
            .arg(30_000)
            .query_async(&mut self.conn)
            .await
            .expect("SET answers");
        assert!(taken.is_some(), "the lock of {appid} was free");
    }

    /// Writes `token` as the shared token, announces it and releases the
    /// lock: the end of a refresh under the lock.
    async fn write_and_release(&mut self, appid: &AppId, token: &StoredToken, mode: Mode) {
        let value = serde_json::json!({
            "token": token.token.expose(),
            "mode": mode.as_str(),
            "fetched_at_ms": token.fetched_at_ms,
            "expires_at_ms": token.expires_at_ms,
        });
        redis::pipe()
            .set(format!("{}:token:{appid}", self.prefix), value.to_string())
            .ignore()
            .publish(format!("{}:updates", self.prefix), appid.as_str())
            .ignore()
            .del(format!("{}:lock:{appid}", self.prefix))
            .ignore()
            .query_async::<()>(&mut self.conn)
            .await
            .expect("the write answers");
    }
}

/// A legacy fetch at the simulator, as another replica makes it.
async fn fetch_at_wechat(sim: &Simulator, appid: &AppId, secret: &str) -> (String, Duration) {
    let body: Value = http()
        .get(format!(
            "{}/cgi-bin/token?grant_type=client_credential&appid={appid}&secret={secret}",
            sim.base_url()
        ))
        .send()
        .await
        .expect("the simulator answers")
        .json()
        .await
        .expect("JSON");
    let token = body["access_token"].as_str().expect("a token").to_string();
    let expires_in = body["expires_in"].as_u64().expect("expires_in");
    (token, Duration::from_secs(expires_in))
}

// A replica adopts the token another replica wrote (pub/sub) while its own
// refresh, begun for the token before, still waits for the lock. Seen in the
// stale storm and the lock take-over test: a replica's own startup refresh was
// still in flight when its follower adopted the token (its own write's echo),
// and the requests that joined that refresh got the token they held back.
#[actix_web::test]
async fn a_refresh_joined_after_a_token_was_adopted_still_replaces_the_adopted_token() {
    let sim = support::simulator(SimConfig::default()).await;
    let Lone {
        replica: a,
        appid,
        secret,
        prefix,
    } = lone_replica(&sim, Mode::Legacy).await;
    let first = held(&a, &appid).expect("a token");

    // Replica B takes the lock for its refresh; A's refresh of `first` waits for it.
    let mut b = OtherReplica::connect(&prefix).await;
    b.lock(&appid).await;
    let waiting = refresh(&a, &appid, Reason::StaleReport, Some(first.clone()));
    until("A refreshes", || {
        a.state.directory.get(&appid).map(|s| s.status().state) == Some(State::Refreshing)
    })
    .await;

    // B fetches; A's follower hands A B's token before A's waiting refresh looks again.
    let (second, expires_in) = fetch_at_wechat(&sim, &appid, &secret).await;
    adopt(&a, &appid, &second, expires_in);
    let second = AccessToken::new(second);
    until("A serves the adopted token", || {
        held(&a, &appid).as_ref() == Some(&second)
    })
    .await;

    // Clients of A report the adopted token stale, and an admin forces a refresh.
    let reported = refresh(&a, &appid, Reason::StaleReport, Some(second.clone()));
    let forced = refresh(&a, &appid, Reason::Admin, None);
    // Both are in A's actor once an answer to a later request is back.
    let probe = refresh(&a, &appid, Reason::StaleReport, Some(first.clone()));
    let probe = probe.await.expect("joined").expect("answered");
    assert_eq!(
        probe.record.token, second,
        "an old report gets the current token"
    );

    // B finishes: A's waiting refresh ends with B's token.
    let now = sim.clock().now_unix_ms();
    let written = StoredToken {
        token: second.clone(),
        fetched_at_ms: now,
        expires_at_ms: now + expires_in.as_millis() as i64,
        serve_until_ms: now + expires_in.as_millis() as i64,
    };
    b.write_and_release(&appid, &written, Mode::Legacy).await;
    let waited = waiting.await.expect("joined").expect("answered");
    assert_eq!(
        waited.record.token, second,
        "the report of `first` gets B's token"
    );

    for (what, answer) in [
        ("the stale report", reported),
        ("the admin refresh", forced),
    ] {
        let outcome = answer.await.expect("joined").expect("refreshed");
        assert_ne!(
            outcome.record.token, second,
            "{what} was answered with the token it asked to replace"
        );
        assert!(outcome.refreshed, "{what}: refreshed");
        assert!(
            sim.is_token_valid(appid.as_str(), outcome.record.token.expose()),
            "{what}: a token WeChat rejects"
        );
    }
    assert_eq!(
        calls(&sim, &appid),
        3,
        "the fill, B's fetch and one fetch by A for both requests"
    );
}

// A stable compare-and-refresh asks WeChat without `force_refresh` first and
// forces only if WeChat answered the reported token. A token adopted while
// that call runs must not make WeChat's unchanged answer look new.
#[actix_web::test]
async fn a_stable_stale_report_is_never_answered_with_the_reported_token_when_a_token_is_adopted_meanwhile()
 {
    let sim = support::simulator(SimConfig::default()).await;
    let Lone {
        replica: a, appid, ..
    } = lone_replica(&sim, Mode::Stable).await;
    let stale = held(&a, &appid).expect("a token");

    // A's call without force_refresh takes a while at WeChat ...
    sim.inject_fault(FaultSpec {
        api: Some("stable_token".to_string()),
        appid: Some(appid.to_string()),
        delay_ms: Some(1_000),
        count: Some(1),
        ..FaultSpec::default()
    });
    let before = calls(&sim, &appid);
    let reported = refresh(&a, &appid, Reason::StaleReport, Some(stale.clone()));
    until("A asks WeChat", || calls(&sim, &appid) > before).await;
    // ... and meanwhile A's follower hands A a token another replica wrote.
    let adopted = "adopted-from-another-replica-0123456789abcdef";
    adopt(&a, &appid, adopted, Duration::from_secs(7000));
    until("A serves the adopted token", || {
        held(&a, &appid).is_some_and(|t| t.expose() == adopted)
    })
    .await;

    let outcome = reported.await.expect("joined").expect("answered");
    assert_ne!(
        outcome.record.token, stale,
        "the stale report was answered with the token it reported"
    );
    assert_ne!(
        held(&a, &appid).as_ref(),
        Some(&stale),
        "A went back to the reported token"
    );
}
