//! The Open Platform over replicas sharing one Redis (contract §6, issue
//! 14 item 6): WeChat pushes events to one replica only, yet every replica
//! serves the component and its authorizers; one refresher per token, the
//! rotated refresh token handed on through Redis (the simulator refuses a
//! rotated-away one at once, so a replica refreshing with a stale copy is
//! caught as a repair); a revocation seen by one is obeyed by all; a replica
//! that outlives the one holding the event URL keeps refreshing on the
//! shared tickets; a new replica starts without calling WeChat.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wxtoken::domain::{AppId, KeyHash};
use wxtoken::simulator::{ComponentRegistration, SimConfig, Simulator};

use crate::replicas::{KEY, Replica, http, replica, unique_prefix, wait_ready};
use crate::support::process::{KillOnDrop, wxtoken};
use crate::support::wait::Wait;
use crate::support::{self, answers_ok, metric_value};

/// WeChat's grace here, and the replicas' (a superseded token dies 2 s
/// after the fetch that replaced it).
const GRACE: Duration = Duration::from_secs(2);
/// Tokens live 6 s; with `legacy_at: 0.5` one refresh comes every 3 s.
const TTL: Duration = Duration::from_secs(6);
const REFRESH_EVERY: Duration = Duration::from_secs(3);

/// A component at the simulator and the configuration every replica shares.
struct Platform {
    sim: Simulator,
    reg: ComponentRegistration,
    component: AppId,
    /// The configuration with `listen: {listen}` to fill in.
    yaml: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Platform {
    async fn new() -> Platform {
        let sim = support::simulator(SimConfig {
            token_ttl: TTL,
            grace: GRACE,
            ..SimConfig::default()
        })
        .await;
        let reg = ComponentRegistration {
            rotate_refresh_tokens: true,
            refresh_overlap_ms: 0,
            ..support::fresh_component()
        };
        let component = AppId::parse(&reg.component_appid).expect("an appid");
        let yaml = format!(
            "listen: {{listen}}\nupstream:\n  base_urls: [{}]\n  timeout: 5s\nstore:\n  redis: redis://127.0.0.1:6379/0\n  redis_prefix: {}\nrefresh:\n  legacy_at: 0.5\n  backoff_initial: 100ms\nclients:\n  - name: admin\n    key: {}\n    appids: [\"*\"]\n    admin: true\n{}accounts: []\n",
            sim.base_url(),
            unique_prefix(),
            KeyHash::of_key(KEY),
            support::components_yaml(&reg),
        );
        Platform {
            sim,
            reg,
            component,
            yaml,
            dir: tempfile::tempdir().expect("a temporary directory"),
            http: http(),
        }
    }

    /// A replica in the test's process (its directory can be looked at).
    async fn replica(&self) -> Replica {
        replica(
            &self.yaml.replace("{listen}", "127.0.0.1:0"),
            &self.sim,
            GRACE,
        )
        .await
    }

    /// A replica as a `wxtoken serve` process (killed on drop), once it is
    /// ready; its lock lives 2 s, so a replica killed mid-refresh holds
    /// the others up at most that long.
    async fn process(&self) -> (KillOnDrop, SocketAddr) {
        let addr = support::free_addr();
        let config = self
            .dir
            .path()
            .join(format!("replica-{}.yaml", addr.port()));
        std::fs::write(&config, self.yaml.replace("{listen}", &addr.to_string())).expect("config");
        let mut cmd = wxtoken(&[
            "serve",
            "--config",
            config.to_str().expect("utf-8"),
            "--wechat-grace",
            &GRACE.as_secs().to_string(),
            "--redis-lock-ttl",
            "2",
        ]);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let server = KillOnDrop::spawn(cmd);
        let url = format!("http://{addr}/readyz");
        Wait::up_to(Duration::from_secs(20))
            .every(Duration::from_millis(50))
            .until_async("the replica process is ready", async || {
                answers_ok(&self.http, &url).await
            })
            .await;
        (server, addr)
    }

    /// Points the component's event URL at `to` (the simulator pushes a
    /// verify ticket there at once).
    fn events_to(&self, to: SocketAddr) {
        self.sim
            .try_register_component(ComponentRegistration {
                callback_url: Some(format!(
                    "http://{}/v1/component/{}/events",
                    to, self.component
                )),
                ..self.reg.clone()
            })
            .expect("the simulator takes the component");
    }

    /// `POST` to the simulator's control API for the component.
    async fn control(&self, action: &str, authorizer: &AppId) {
        let answer: Value = self
            .http
            .post(format!(
                "{}/sim/components/{}/{action}",
                self.sim.base_url(),
                self.component
            ))
            .json(&json!({ "authorizer_appid": authorizer.as_str() }))
            .send()
            .await
            .expect("the simulator answers")
            .json()
            .await
            .expect("JSON");
        assert_eq!(answer["delivered"], true, "{action}: {answer}");
    }

    async fn get(&self, at: SocketAddr, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("http://{at}{path}"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("the replica answers");
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    /// The authorizer token `at` serves, or the status it answers.
    async fn authorizer_token(&self, at: SocketAddr, appid: &AppId) -> Result<String, StatusCode> {
        let (status, body) = self.get(at, &format!("/v1/token/{appid}")).await;
        match body["access_token"].as_str() {
            Some(t) if status == StatusCode::OK => Ok(t.to_string()),
            _ => Err(status),
        }
    }

    async fn component_token(&self, at: SocketAddr) -> Option<String> {
        let (status, body) = self
            .get(at, &format!("/v1/component/{}/token", self.component))
            .await;
        (status == StatusCode::OK)
            .then(|| body["component_access_token"].as_str().map(str::to_string))
            .flatten()
    }

    /// Waits until `at` serves a token for `appid` valid at WeChat.
    async fn serves(&self, at: SocketAddr, appid: &AppId) -> String {
        Wait::up_to(Duration::from_secs(20))
            .every(Duration::from_millis(20))
            .for_value_async("the replica serves the authorizer", async || {
                self.authorizer_token(at, appid)
                    .await
                    .ok()
                    .filter(|t| self.sim.is_token_valid(appid.as_str(), t))
            })
            .await
    }

    async fn serves_component(&self, at: SocketAddr) -> String {
        Wait::up_to(Duration::from_secs(20))
            .every(Duration::from_millis(20))
            .for_value_async("the replica serves the component token", async || {
                self.component_token(at)
                    .await
                    .filter(|t| self.sim.is_token_valid(self.component.as_str(), t))
            })
            .await
    }

    /// Reads from every replica in `from` every 100 ms for `run`: each
    /// authorizer token and component token served is valid at WeChat.
    /// Returns the distinct authorizer and component tokens seen.
    async fn all_valid_for(
        &self,
        run: Duration,
        from: &[SocketAddr],
        authorizer: &AppId,
    ) -> (HashSet<String>, HashSet<String>) {
        let mut tokens = HashSet::new();
        let mut component_tokens = HashSet::new();
        let until = tokio::time::Instant::now() + run;
        while tokio::time::Instant::now() < until {
            for &r in from {
                let token = self
                    .authorizer_token(r, authorizer)
                    .await
                    .unwrap_or_else(|status| panic!("{r} answered {status}"));
                assert!(
                    self.sim.is_token_valid(authorizer.as_str(), &token),
                    "{r} served an authorizer token WeChat no longer takes"
                );
                tokens.insert(token);
                let ct = self
                    .component_token(r)
                    .await
                    .unwrap_or_else(|| panic!("{r} serves no component token"));
                assert!(
                    self.sim.is_token_valid(self.component.as_str(), &ct),
                    "{r} served a component token WeChat no longer takes"
                );
                component_tokens.insert(ct);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (tokens, component_tokens)
    }

    /// The `authorization` column of `appid` in `at`'s `/v1/accounts`.
    async fn authorization(&self, at: SocketAddr, appid: &AppId) -> String {
        let (_, list) = self.get(at, "/v1/accounts").await;
        list.as_array()
            .and_then(|rows| rows.iter().find(|r| r["appid"] == appid.as_str()))
            .and_then(|r| r["authorization"].as_str())
            .unwrap_or_else(|| panic!("{appid} is not listed by {at}: {list}"))
            .to_string()
    }

    async fn metric(&self, at: SocketAddr, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("http://{at}/metrics"))
            .send()
            .await
            .expect("the replica answers")
            .text()
            .await
            .expect("text");
        metric_value(&text, name, &[])
    }

    fn calls(&self, appid: &AppId, api: &str) -> u64 {
        self.sim.stats().calls_to(appid.as_str(), api)
    }
}

/// The refresh token `at` holds for `appid`.
fn refresh_token_at(at: &Replica, appid: &AppId) -> Option<String> {
    support::held_refresh_token(&at.state.directory, appid)
}

/// At most one refresh per period over `run`, plus the one in flight at
/// each end: two replicas refreshing on their own would make twice that.
fn one_refresher_bound(run: Duration) -> u64 {
    (run.as_millis() / REFRESH_EVERY.as_millis()) as u64 + 2
}

#[actix_web::test]
async fn replicas_share_the_open_platform_with_one_refresher_and_the_events_of_one() {
    let p = Platform::new().await;
    // A is a process (so it can be killed), B is in the test's process (so
    // its refresh tokens can be looked at); WeChat pushes events to A only.
    let (a_process, a) = p.process().await;
    let b_replica = p.replica().await;
    let b = b_replica.addr;
    p.events_to(a);
    wait_ready(&[&b_replica]).await;
    let first_component = p.serves_component(a).await;
    assert_eq!(
        p.serves_component(b).await,
        first_component,
        "B serves the component token A fetched, from Redis"
    );
    assert_eq!(
        p.calls(&p.component, "api_component_token"),
        1,
        "one component token for both replicas"
    );

    // Authorized at A's event URL only; B discovers both from Redis.
    let x = support::unique_appid();
    let y = support::unique_appid();
    p.control("authorize", &x).await;
    p.control("authorize", &y).await;
    let x_first = p.serves(a, &x).await;
    p.serves(b, &y).await;
    let x_at_b = p.serves(b, &x).await;
    assert!(
        x_at_b == x_first || p.calls(&x, "api_authorizer_token") > 0,
        "B serves A's token for X, or one refreshed since"
    );

    // a. Three lifetimes with both replicas: every token valid, the refresh
    // token rotating through Redis, one refresher per token.
    let refreshes_before = p.calls(&x, "api_authorizer_token");
    let component_before = p.calls(&p.component, "api_component_token");
    let run = TTL * 3;
    let first_refresh_token = refresh_token_at(&b_replica, &x).expect("B holds X's refresh token");
    let (tokens, component_tokens) = p.all_valid_for(run, &[a, b], &x).await;
    assert!(
        tokens.len() >= 4,
        "X's token rotated only {} times",
        tokens.len() - 1
    );
    assert!(
        component_tokens.len() >= 4,
        "the component token rotated only {} times",
        component_tokens.len() - 1
    );
    let refreshes = p.calls(&x, "api_authorizer_token") - refreshes_before;
    assert!(
        refreshes <= one_refresher_bound(run),
        "{refreshes} refreshes of X in {run:?}: more than one refresher"
    );
    let component_refreshes = p.calls(&p.component, "api_component_token") - component_before;
    assert!(
        component_refreshes <= one_refresher_bound(run),
        "{component_refreshes} component refreshes in {run:?}: more than one refresher"
    );
    assert_ne!(
        refresh_token_at(&b_replica, &x),
        Some(first_refresh_token),
        "B holds X's rotated refresh token"
    );
    for r in [a, b] {
        assert_eq!(
            p.metric(r, "wxtoken_refresh_token_repairs_total").await,
            0.0,
            "{r} refreshed with a rotated-away refresh token"
        );
        assert_eq!(p.authorization(r, &x).await, "authorized", "at {r}");
    }
    assert_eq!(p.sim.stats().total_calls("api_get_authorizer_list"), 0);

    // c. Y is revoked at A's event URL: B answers 410 and nobody refreshes Y.
    p.control("unauthorize", &y).await;
    Wait::up_to(Duration::from_secs(10))
        .every(Duration::from_millis(20))
        .until_async("B answers 410 for the revoked authorizer", async || {
            p.authorizer_token(b, &y).await == Err(StatusCode::GONE)
        })
        .await;
    let (_, body) = p.get(b, &format!("/v1/token/{y}")).await;
    assert_eq!(body["error"], "authorization_revoked", "{body}");
    assert_eq!(p.authorization(b, &y).await, "unauthorized");
    let y_refreshes = p.calls(&y, "api_authorizer_token");

    // b. A (the event URL) is killed: B keeps the component and X fresh on
    // the tickets A stored in Redis.
    drop(a_process);
    let run = TTL * 2;
    let (tokens, component_tokens) = p.all_valid_for(run, &[b], &x).await;
    assert!(
        tokens.len() >= 3,
        "B refreshed X only {} times",
        tokens.len() - 1
    );
    assert!(
        component_tokens.len() >= 3,
        "B refreshed the component only {} times",
        component_tokens.len() - 1
    );
    assert_eq!(
        p.calls(&y, "api_authorizer_token"),
        y_refreshes,
        "the revoked authorizer is never refreshed again"
    );
    assert_eq!(
        p.metric(b, "wxtoken_refresh_token_repairs_total").await,
        0.0
    );
    assert_eq!(p.authorization(b, &x).await, "authorized");

    // d. A new replica starts from Redis without calling WeChat.
    let c_replica = p.replica().await;
    let c = c_replica.addr;
    wait_ready(&[&c_replica]).await;
    p.serves(c, &x).await;
    p.serves_component(c).await;
    assert_eq!(
        p.authorizer_token(c, &y).await,
        Err(StatusCode::GONE),
        "the new replica knows of the revocation"
    );
    assert_eq!(
        p.metric(c, "wxtoken_upstream_requests_total").await,
        0.0,
        "the new replica called WeChat"
    );
    assert_eq!(p.calls(&y, "api_authorizer_token"), y_refreshes);
}
