//! Tests of the built-in WeChat simulator, through its HTTP surface with a
//! real HTTP client. Token lifetimes and quota days move with the simulator's
//! clock (`Simulator::advance`), never with sleeps.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wxtoken::clock::next_china_midnight;
use wxtoken::simulator::{AppRegistration, FaultSpec, SimConfig, Simulator, Stats};

use crate::support;

const APPID: &str = "wx1111111111111111";
const SECRET: &str = "test-secret-1";
const OTHER_APPID: &str = "wx2222222222222222";

/// A running simulator with one registered app and an HTTP client.
struct TestSim {
    sim: Simulator,
    http: reqwest::Client,
}

async fn spawn_sim(config: SimConfig) -> TestSim {
    let sim = support::simulator(config).await;
    support::register_as(&sim, APPID, SECRET);
    TestSim {
        sim,
        http: http_client(),
    }
}

/// A plain HTTP client. reqwest is built without a default TLS crypto
/// provider, so one is installed first (a second install is a harmless no-op).
fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn spawn_default() -> TestSim {
    spawn_sim(SimConfig::default()).await
}

impl TestSim {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let resp = self
            .http
            .get(self.url(path))
            .query(query)
            .send()
            .await
            .expect("request is answered");
        assert_eq!(resp.status(), 200, "WeChat answers 200 on {path}");
        resp.json().await.expect("JSON body")
    }

    async fn legacy_as(&self, appid: &str, secret: &str) -> Value {
        self.get_json(
            "/cgi-bin/token",
            &[
                ("grant_type", "client_credential"),
                ("appid", appid),
                ("secret", secret),
            ],
        )
        .await
    }

    /// The legacy token request of the registered app, not yet sent.
    fn legacy_request(&self) -> reqwest::RequestBuilder {
        self.http.get(self.url("/cgi-bin/token")).query(&[
            ("grant_type", "client_credential"),
            ("appid", APPID),
            ("secret", SECRET),
        ])
    }

    async fn legacy(&self) -> Value {
        self.legacy_as(APPID, SECRET).await
    }

    async fn stable_body(&self, body: Value) -> Value {
        let resp = self
            .http
            .post(self.url("/cgi-bin/stable_token"))
            .json(&body)
            .send()
            .await
            .expect("request is answered");
        assert_eq!(resp.status(), 200);
        resp.json().await.expect("JSON body")
    }

    async fn stable(&self, force_refresh: bool) -> Value {
        self.stable_body(json!({
            "grant_type": "client_credential",
            "appid": APPID,
            "secret": SECRET,
            "force_refresh": force_refresh,
        }))
        .await
    }

    async fn probe(&self, token: &str) -> Value {
        self.get_json("/cgi-bin/getcallbackip", &[("access_token", token)])
            .await
    }

    async fn ticket(&self, token: &str, kind: &str) -> Value {
        self.get_json(
            "/cgi-bin/ticket/getticket",
            &[("access_token", token), ("type", kind)],
        )
        .await
    }

    async fn http_stats(&self) -> Stats {
        let resp = self
            .http
            .get(self.url("/sim/stats"))
            .send()
            .await
            .expect("stats answered");
        assert_eq!(resp.status(), 200);
        resp.json().await.expect("stats JSON")
    }

    async fn post_control(&self, path: &str, body: &str) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("control request answered")
    }

    /// Makes the next call (of any API) answer as `fault` says.
    fn fault_once(&self, fault: FaultSpec) {
        self.sim.inject_fault(FaultSpec {
            count: Some(1),
            ..fault
        });
    }

    /// Moves the clock to one second after the next China-time midnight, so a
    /// test that needs a whole quota day cannot cross a day boundary by accident.
    fn align_to_china_day_start(&self) {
        let now = self.sim.clock().now_unix();
        let secs = next_china_midnight(now) - now + 1;
        self.sim.advance(Duration::from_secs(secs.unsigned_abs()));
    }

    /// Moves the clock to just after the next China-time midnight.
    fn advance_to_next_china_day(&self) {
        self.align_to_china_day_start();
    }
}

fn token_of(answer: &Value) -> String {
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a token, got {answer}"))
        .to_string()
}

fn errcode(answer: &Value) -> i64 {
    answer["errcode"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an errcode, got {answer}"))
}

fn errmsg(answer: &Value) -> &str {
    answer["errmsg"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an errmsg, got {answer}"))
}

fn is_live(answer: &Value) -> bool {
    answer["ip_list"].is_array()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[actix_web::test]
async fn legacy_issues_a_new_token_on_every_call() {
    let t = spawn_default().await;
    let first = t.legacy().await;
    let second = t.legacy().await;
    assert_eq!(first["expires_in"], 7200);
    assert_ne!(token_of(&first), token_of(&second));
    assert!(is_live(&t.probe(&token_of(&first)).await));
    assert!(is_live(&t.probe(&token_of(&second)).await));
    t.sim.stop().await;
}

#[actix_web::test]
async fn a_superseded_legacy_token_dies_exactly_grace_after_being_superseded() {
    let t = spawn_default().await;
    let old = token_of(&t.legacy().await);
    let new = token_of(&t.legacy().await);
    t.sim.advance(secs(299));
    assert!(
        is_live(&t.probe(&old).await),
        "still inside the 300 s grace"
    );
    t.sim.advance(secs(1));
    let answer = t.probe(&old).await;
    assert_eq!(errcode(&answer), 40001);
    assert!(
        errmsg(&answer)
            .starts_with("invalid credential, access_token is invalid or not latest rid: ")
    );
    assert!(is_live(&t.probe(&new).await));
    t.sim.stop().await;
}

#[actix_web::test]
async fn an_expired_token_is_reported_as_expired() {
    let t = spawn_default().await;
    let token = token_of(&t.legacy().await);
    t.sim.advance(secs(7199));
    assert!(is_live(&t.probe(&token).await));
    t.sim.advance(secs(1));
    let answer = t.probe(&token).await;
    assert_eq!(errcode(&answer), 42001);
    assert!(errmsg(&answer).starts_with("access_token expired rid: "));
    t.sim.stop().await;
}

#[actix_web::test]
async fn a_garbage_token_is_reported_as_invalid() {
    let t = spawn_default().await;
    let answer = t.probe("not-a-token").await;
    assert_eq!(errcode(&answer), 40014);
    assert!(errmsg(&answer).starts_with("invalid access_token rid: "));
    t.sim.stop().await;
}

#[actix_web::test]
async fn tokens_are_128_to_512_url_safe_characters() {
    let t = spawn_default().await;
    for _ in 0..20 {
        let token = token_of(&t.legacy().await);
        assert!((128..=512).contains(&token.len()), "length {}", token.len());
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "not URL-safe: {token}"
        );
    }
    let stable = token_of(&t.stable(false).await);
    assert!((128..=512).contains(&stable.len()));
    t.sim.stop().await;
}

#[actix_web::test]
async fn stable_returns_the_same_token_until_the_grace_window_then_rotates() {
    let t = spawn_default().await;
    let first = t.stable(false).await;
    assert_eq!(first["expires_in"], 7200);
    let token = token_of(&first);

    t.sim.advance(secs(100));
    let again = t.stable(false).await;
    assert_eq!(token_of(&again), token);
    let left = again["expires_in"].as_i64().expect("expires_in");
    assert!(
        (7099..=7100).contains(&left),
        "expires_in is the remaining life, got {left}"
    );

    // 301 s of life left: still outside the last 300 s.
    t.sim.advance(secs(7200 - 100 - 301));
    assert_eq!(token_of(&t.stable(false).await), token);

    t.sim.advance(secs(1));
    let rotated = t.stable(false).await;
    assert_ne!(token_of(&rotated), token);
    assert_eq!(rotated["expires_in"], 7200);
    assert!(
        is_live(&t.probe(&token).await),
        "the old token lives out its own life"
    );
    t.sim.advance(secs(300));
    assert_eq!(errcode(&t.probe(&token).await), 42001);
    assert!(is_live(&t.probe(&token_of(&rotated)).await));
    t.sim.stop().await;
}

#[actix_web::test]
async fn stable_and_legacy_tokens_are_valid_side_by_side() {
    let t = spawn_default().await;
    let stable = token_of(&t.stable(false).await);
    let legacy = token_of(&t.legacy().await);
    assert_ne!(stable, legacy);
    assert!(is_live(&t.probe(&stable).await));
    assert!(is_live(&t.probe(&legacy).await));
    let _newer_legacy = t.legacy().await;
    t.sim.advance(secs(300));
    assert!(
        is_live(&t.probe(&stable).await),
        "legacy fetches do not supersede stable tokens"
    );
    t.sim.stop().await;
}

#[actix_web::test]
async fn force_refresh_rotates_and_a_second_force_within_thirty_seconds_does_not() {
    let t = spawn_default().await;
    let original = token_of(&t.stable(false).await);
    let forced = token_of(&t.stable(true).await);
    assert_ne!(forced, original);

    t.sim.advance(secs(29));
    assert_eq!(
        token_of(&t.stable(true).await),
        forced,
        "too soon: the current token comes back"
    );

    t.sim.advance(secs(2));
    let forced_again = token_of(&t.stable(true).await);
    assert_ne!(forced_again, forced);
    assert_eq!(t.sim.stats().force_refreshes_of(APPID), 2);
    t.sim.stop().await;
}

#[actix_web::test]
async fn a_force_refreshed_token_dies_grace_after_the_force() {
    let t = spawn_default().await;
    let original = token_of(&t.stable(false).await);
    let _forced = t.stable(true).await;
    t.sim.advance(secs(299));
    assert!(is_live(&t.probe(&original).await));
    t.sim.advance(secs(1));
    assert_eq!(errcode(&t.probe(&original).await), 40001);
    t.sim.stop().await;
}

#[actix_web::test]
async fn the_twenty_first_force_of_a_china_day_does_not_rotate_until_the_next_china_day() {
    let t = spawn_default().await;
    t.align_to_china_day_start();
    let mut current = token_of(&t.stable(false).await);
    for n in 1..=20 {
        t.sim.advance(secs(31));
        let next = token_of(&t.stable(true).await);
        assert_ne!(next, current, "force {n} rotates");
        current = next;
    }
    t.sim.advance(secs(31));
    assert_eq!(
        token_of(&t.stable(true).await),
        current,
        "force 21 returns the current token"
    );
    assert_eq!(t.sim.stats().force_refreshes_of(APPID), 20);

    t.advance_to_next_china_day();
    let after_midnight = token_of(&t.stable(true).await);
    assert_ne!(after_midnight, current);
    t.sim.stop().await;
}

#[actix_web::test]
async fn legacy_quota_runs_out_with_45009_and_resets_at_china_midnight() {
    let t = spawn_sim(SimConfig {
        legacy_daily_quota: 3,
        ..SimConfig::default()
    })
    .await;
    t.align_to_china_day_start();
    for _ in 0..3 {
        token_of(&t.legacy().await);
    }
    let refused = t.legacy().await;
    assert_eq!(errcode(&refused), 45009);
    // WeChat's message today points to getStableAccessToken.
    assert!(
        errmsg(&refused).starts_with(
            "reach max api daily quota limit, could get access_token by getStableAccessToken"
        ),
        "{}",
        errmsg(&refused)
    );
    // Stable tokens have their own limits.
    token_of(&t.stable(false).await);

    t.sim.advance(secs(23 * 3600));
    assert_eq!(
        errcode(&t.legacy().await),
        45009,
        "still the same China day"
    );
    t.advance_to_next_china_day();
    token_of(&t.legacy().await);
    t.sim.stop().await;
}

#[actix_web::test]
async fn a_wrong_secret_is_rejected_with_40125() {
    let t = spawn_default().await;
    let answer = t.legacy_as(APPID, "wrong").await;
    assert_eq!(errcode(&answer), 40125);
    assert!(errmsg(&answer).starts_with("invalid appsecret rid: "));
    let stable = t
        .stable_body(json!({"grant_type": "client_credential", "appid": APPID, "secret": "wrong"}))
        .await;
    assert_eq!(errcode(&stable), 40125);
    t.sim.stop().await;
}

#[actix_web::test]
async fn an_unknown_appid_is_rejected_with_40013() {
    let t = spawn_default().await;
    let answer = t.legacy_as(OTHER_APPID, SECRET).await;
    assert_eq!(errcode(&answer), 40013);
    assert!(errmsg(&answer).starts_with("invalid appid rid: "));
    t.sim.stop().await;
}

#[actix_web::test]
async fn missing_or_bad_parameters_get_wechat_errcodes() {
    let t = spawn_default().await;
    let no_appid = t
        .get_json(
            "/cgi-bin/token",
            &[("grant_type", "client_credential"), ("secret", SECRET)],
        )
        .await;
    assert_eq!(errcode(&no_appid), 41002);
    let no_secret = t
        .get_json(
            "/cgi-bin/token",
            &[("grant_type", "client_credential"), ("appid", APPID)],
        )
        .await;
    assert_eq!(errcode(&no_secret), 41004);
    let bad_grant = t
        .get_json(
            "/cgi-bin/token",
            &[
                ("grant_type", "password"),
                ("appid", APPID),
                ("secret", SECRET),
            ],
        )
        .await;
    assert_eq!(errcode(&bad_grant), 40002);

    let resp = t
        .http
        .post(t.url("/cgi-bin/stable_token"))
        .body("{not json")
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    let garbled: Value = resp.json().await.expect("JSON");
    assert_eq!(errcode(&garbled), 47001);
    assert!(errmsg(&garbled).starts_with("data format error rid: "));
    t.sim.stop().await;
}

#[actix_web::test]
async fn a_caller_outside_the_whitelist_gets_40164_naming_its_ip() {
    let t = spawn_default().await;
    t.sim.register_app(AppRegistration {
        appid: OTHER_APPID.to_string(),
        secret: SECRET.to_string(),
        ip_whitelist: vec!["10.0.0.1".to_string(), "192.168.0.0/16".to_string()],
    });
    let answer = t.legacy_as(OTHER_APPID, SECRET).await;
    assert_eq!(errcode(&answer), 40164);
    assert!(
        errmsg(&answer)
            .starts_with("invalid ip 127.0.0.1 ipv6 ::ffff:127.0.0.1, not in whitelist rid: "),
        "{answer}"
    );

    t.sim.register_app(AppRegistration {
        appid: OTHER_APPID.to_string(),
        secret: SECRET.to_string(),
        ip_whitelist: vec!["127.0.0.0/8".to_string()],
    });
    token_of(&t.legacy_as(OTHER_APPID, SECRET).await);
    t.sim.stop().await;
}

#[actix_web::test]
async fn registering_an_app_again_changes_its_secret() {
    let t = spawn_default().await;
    let resp = t
        .post_control(
            "/sim/apps",
            &json!({"appid": APPID, "secret": "rotated"}).to_string(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(errcode(&t.legacy_as(APPID, SECRET).await), 40125);
    token_of(&t.legacy_as(APPID, "rotated").await);
    t.sim.stop().await;
}

#[actix_web::test]
async fn getticket_works_with_a_live_token_and_fails_with_a_dead_one() {
    let t = spawn_default().await;
    let old = token_of(&t.legacy().await);
    let live = token_of(&t.legacy().await);

    let ticket = t.ticket(&live, "jsapi").await;
    assert_eq!(errcode(&ticket), 0);
    assert_eq!(ticket["errmsg"], "ok");
    assert_eq!(ticket["expires_in"], 7200);
    let value = ticket["ticket"].as_str().expect("ticket").to_string();
    assert!(value.len() >= 80);
    assert_eq!(
        t.ticket(&live, "jsapi").await["ticket"],
        value.as_str(),
        "same ticket while it lives"
    );
    assert_ne!(t.ticket(&live, "wx_card").await["ticket"], value.as_str());
    assert_eq!(errcode(&t.ticket(&live, "nonsense").await), 40097);

    t.sim.advance(secs(300));
    assert_eq!(errcode(&t.ticket(&old, "jsapi").await), 40001);
    assert_eq!(errcode(&t.ticket("garbage", "jsapi").await), 40014);
    t.sim.advance(secs(7200));
    assert_eq!(errcode(&t.ticket(&live, "jsapi").await), 42001);
    assert_eq!(t.sim.stats().invalid_token_uses, 3);
    t.sim.stop().await;
}

#[actix_web::test]
async fn an_expired_ticket_is_replaced_by_a_new_one() {
    let t = spawn_sim(SimConfig {
        ticket_ttl: secs(600),
        ..SimConfig::default()
    })
    .await;
    let token = token_of(&t.stable(false).await);
    let first = t.ticket(&token, "jsapi").await["ticket"].clone();
    t.sim.advance(secs(600));
    let second = t.ticket(&token, "jsapi").await;
    assert_ne!(second["ticket"], first);
    assert_eq!(second["expires_in"], 600);
    t.sim.stop().await;
}

#[actix_web::test]
async fn stats_count_calls_tokens_and_probe_outcomes() {
    let t = spawn_default().await;
    let old = token_of(&t.legacy().await);
    let live = token_of(&t.legacy().await);
    token_of(&t.stable(false).await);
    let _ = t.legacy_as(APPID, "wrong").await;
    t.sim.advance(secs(300));
    t.probe(&live).await;
    t.probe(&old).await;
    t.probe("garbage").await;
    t.sim.advance(secs(7200));
    t.probe(&live).await;

    let stats = t.http_stats().await;
    assert_eq!(stats, t.sim.stats(), "the HTTP and Rust views agree");
    assert_eq!(stats.calls_to(APPID, "token"), 3);
    assert_eq!(stats.calls_to(APPID, "stable_token"), 1);
    assert_eq!(stats.calls_to(APPID, "getcallbackip"), 3);
    assert_eq!(
        stats.calls_to(wxtoken::simulator::UNKNOWN_APPID, "getcallbackip"),
        1
    );
    assert_eq!(stats.total_calls("getcallbackip"), 4);
    assert_eq!(stats.tokens_issued[APPID].legacy, 2);
    assert_eq!(stats.tokens_issued[APPID].stable, 1);
    assert_eq!(stats.tokens_issued_to(APPID), 3);
    assert_eq!(stats.probe_results.ok, 1);
    assert_eq!(stats.probe_results.superseded, 1);
    assert_eq!(stats.probe_results.invalid, 1);
    assert_eq!(stats.probe_results.expired, 1);
    assert_eq!(stats.invalid_token_uses, 3);

    let raw: Value = t
        .http
        .get(t.url("/sim/stats"))
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        raw["probe_results"]["40001"], 1,
        "probe outcomes are keyed by errcode: {raw}"
    );
    t.sim.stop().await;
}

#[actix_web::test]
async fn is_token_valid_judges_like_the_probe() {
    let t = spawn_default().await;
    let old = token_of(&t.legacy().await);
    let live = token_of(&t.legacy().await);
    assert!(t.sim.is_token_valid(APPID, &old));
    assert!(
        !t.sim.is_token_valid(OTHER_APPID, &live),
        "a token belongs to one app"
    );
    t.sim.advance(secs(300));
    assert!(!t.sim.is_token_valid(APPID, &old));
    assert!(t.sim.is_token_valid(APPID, &live));
    assert!(!t.sim.is_token_valid(APPID, "garbage"));
    t.sim.stop().await;
}

#[actix_web::test]
async fn an_errcode_fault_answers_the_next_calls_then_runs_out_without_issuing_tokens() {
    let t = spawn_default().await;
    t.sim.inject_fault(FaultSpec {
        api: Some("token".to_string()),
        count: Some(2),
        errcode: Some(-1),
        ..FaultSpec::default()
    });
    for _ in 0..2 {
        let answer = t.legacy().await;
        assert_eq!(errcode(&answer), -1);
        assert!(errmsg(&answer).starts_with("system error rid: "));
    }
    assert_eq!(
        t.sim.stats().tokens_issued_to(APPID),
        0,
        "a faulted call issues nothing"
    );
    token_of(&t.legacy().await);
    assert_eq!(t.sim.stats().faults_applied, 2);
    t.sim.stop().await;
}

#[actix_web::test]
async fn faulted_calls_do_not_count_toward_the_legacy_quota() {
    let t = spawn_sim(SimConfig {
        legacy_daily_quota: 1,
        ..SimConfig::default()
    })
    .await;
    t.align_to_china_day_start();
    t.sim.inject_fault(FaultSpec {
        count: Some(3),
        http_status: Some(503),
        ..FaultSpec::default()
    });
    for _ in 0..3 {
        let resp = t
            .http
            .get(t.url("/cgi-bin/token"))
            .send()
            .await
            .expect("answered");
        assert_eq!(resp.status(), 503);
    }
    token_of(&t.legacy().await);
    assert_eq!(errcode(&t.legacy().await), 45009);
    t.sim.stop().await;
}

#[actix_web::test]
async fn faults_match_by_api_and_appid() {
    let t = spawn_default().await;
    support::register_as(&t.sim, OTHER_APPID, SECRET);
    t.sim.inject_fault(FaultSpec {
        api: Some("stable_token".to_string()),
        appid: Some(OTHER_APPID.to_string()),
        count: Some(1),
        errcode: Some(40243),
        ..FaultSpec::default()
    });
    token_of(&t.stable(false).await);
    token_of(&t.legacy_as(OTHER_APPID, SECRET).await);
    let hit = t
        .stable_body(
            json!({"grant_type": "client_credential", "appid": OTHER_APPID, "secret": SECRET}),
        )
        .await;
    assert_eq!(errcode(&hit), 40243);
    t.sim.stop().await;
}

#[actix_web::test]
async fn an_http_status_fault_answers_with_that_status_and_a_text_body() {
    let t = spawn_default().await;
    t.fault_once(FaultSpec {
        http_status: Some(502),
        ..FaultSpec::default()
    });
    let resp = t.legacy_request().send().await.expect("answered");
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.text().await.expect("body").trim(), "502 Bad Gateway");
    token_of(&t.legacy().await);
    t.sim.stop().await;
}

#[actix_web::test]
async fn a_delay_fault_slows_the_answer_and_then_answers_normally() {
    let t = spawn_default().await;
    t.fault_once(FaultSpec {
        delay_ms: Some(300),
        ..FaultSpec::default()
    });
    let started = Instant::now();
    let answer = t.legacy().await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "took {:?}",
        started.elapsed()
    );
    token_of(&answer);
    t.sim.stop().await;
}

#[actix_web::test]
async fn a_delay_fault_can_precede_another_fault() {
    let t = spawn_default().await;
    t.fault_once(FaultSpec {
        delay_ms: Some(200),
        errcode: Some(45011),
        ..FaultSpec::default()
    });
    let started = Instant::now();
    let answer = t.legacy().await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(errcode(&answer), 45011);
    t.sim.stop().await;
}

#[actix_web::test]
async fn a_dropped_connection_gives_the_client_a_transport_error() {
    let t = spawn_default().await;
    t.fault_once(FaultSpec {
        drop_connection: true,
        ..FaultSpec::default()
    });
    let result = t.legacy_request().send().await;
    let err = result.expect_err("no response, only a broken connection");
    assert!(
        !err.is_status() && !err.is_decode(),
        "a transport error, got {err:?}"
    );
    token_of(&t.legacy().await);
    t.sim.stop().await;
}

#[actix_web::test]
async fn a_malformed_fault_sends_truncated_json() {
    let t = spawn_default().await;
    t.fault_once(FaultSpec {
        malformed: true,
        ..FaultSpec::default()
    });
    let resp = t.legacy_request().send().await.expect("answered");
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.expect("body");
    assert!(body.starts_with(r#"{"access_token":""#), "{body}");
    assert!(serde_json::from_str::<Value>(&body).is_err());
    t.sim.stop().await;
}

#[actix_web::test]
async fn an_html_fault_sends_a_bad_gateway_page_with_status_200() {
    let t = spawn_default().await;
    t.fault_once(FaultSpec {
        html: true,
        ..FaultSpec::default()
    });
    let resp = t
        .http
        .get(t.url("/cgi-bin/getcallbackip"))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let body = resp.text().await.expect("body");
    assert!(
        body.contains("<html>") && body.contains("502 Bad Gateway"),
        "{body}"
    );
    t.sim.stop().await;
}

#[actix_web::test]
async fn a_rate_fault_lasts_until_cleared_over_http() {
    let t = spawn_default().await;
    let resp = t
        .post_control(
            "/sim/faults",
            r#"{"api":"getcallbackip","rate":1.0,"errcode":-1}"#,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let token = token_of(&t.legacy().await);
    for _ in 0..5 {
        assert_eq!(errcode(&t.probe(&token).await), -1);
    }
    let cleared = t
        .http
        .delete(t.url("/sim/faults"))
        .send()
        .await
        .expect("answered");
    assert_eq!(cleared.status(), 200);
    let body: Value = cleared.json().await.expect("JSON");
    assert_eq!(body["cleared"], 1);
    assert!(is_live(&t.probe(&token).await));
    t.sim.stop().await;
}

#[actix_web::test]
async fn clear_faults_removes_every_fault() {
    let t = spawn_default().await;
    t.sim.inject_fault(FaultSpec {
        errcode: Some(-1),
        ..FaultSpec::default()
    });
    assert_eq!(errcode(&t.legacy().await), -1);
    t.sim.clear_faults();
    token_of(&t.legacy().await);
    t.sim.stop().await;
}

#[actix_web::test]
async fn the_clock_can_be_advanced_over_http() {
    let t = spawn_default().await;
    let token = token_of(&t.legacy().await);
    let resp = t
        .post_control("/sim/clock", r#"{"advance_secs": 7200}"#)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(errcode(&t.probe(&token).await), 42001);
    t.sim.stop().await;
}

#[actix_web::test]
async fn the_control_api_rejects_bad_input_with_400() {
    let t = spawn_default().await;
    let cases = [
        ("/sim/apps", "{"),
        ("/sim/apps", r#"{"appid": "wx1"}"#),
        ("/sim/apps", r#"{"appid": "", "secret": "x"}"#),
        (
            "/sim/apps",
            r#"{"appid": "wx1", "secret": "x", "ip_whitelist": ["not-an-ip"]}"#,
        ),
        ("/sim/faults", "[]"),
        ("/sim/faults", r#"{"errcode": -1, "rate": 2.0}"#),
        ("/sim/faults", r#"{"api": "tokens", "errcode": -1}"#),
        ("/sim/faults", r#"{"count": 1}"#),
        ("/sim/faults", r#"{"errcode": -1, "typo": true}"#),
        ("/sim/clock", r#"{"advance_secs": -5}"#),
        ("/sim/clock", "seven"),
    ];
    for (path, body) in cases {
        let resp = t.post_control(path, body).await;
        assert_eq!(resp.status(), 400, "{path} {body}");
        let answer: Value = resp.json().await.expect("JSON error");
        assert_eq!(answer["error"], "bad_request", "{path} {body}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    token_of(&t.legacy().await);
    t.sim.stop().await;
}

#[actix_web::test]
async fn starting_on_a_busy_address_fails_naming_it() {
    let t = spawn_default().await;
    let busy = t.sim.addr();
    let err = Simulator::start(SimConfig::default(), busy)
        .await
        .expect_err("port is taken");
    assert!(err.to_string().contains(&busy.to_string()), "{err}");
    t.sim.stop().await;
}

#[actix_web::test]
async fn a_grace_longer_than_the_token_life_is_rejected() {
    let err = Simulator::start(
        SimConfig {
            token_ttl: secs(60),
            grace: secs(300),
            ..SimConfig::default()
        },
        support::any_port(),
    )
    .await
    .expect_err("invalid config");
    assert!(
        matches!(err, wxtoken::simulator::SimError::InvalidConfig(_)),
        "{err}"
    );
    assert!(err.to_string().contains("300"), "{err}");
}

#[actix_web::test]
async fn an_invalid_registration_is_explained_and_changes_nothing() {
    let t = spawn_default().await;
    let err = t
        .sim
        .try_register_app(AppRegistration {
            appid: APPID.to_string(),
            secret: String::new(),
            ip_whitelist: vec![],
        })
        .expect_err("an empty secret is refused");
    assert!(err.to_string().contains("secret is empty"), "{err}");
    support::register_as(&t.sim, APPID, "");
    token_of(&t.legacy().await);
    t.sim.stop().await;
}
