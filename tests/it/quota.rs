//! Upstream quota truth (contract §9): what getApiQuota reports reaches
//! `/metrics`, the quota is read after a refresh at most hourly and again on
//! 45009, and a legacy account with `fallback_to_stable: true` gets its
//! tokens from stable_token once its `/cgi-bin/token` quota is spent.
//! Against the HTTP simulator, whose getApiQuota counts what it served.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wxtoken::config::{LoadOptions, load_str};
use wxtoken::domain::Mode;
use wxtoken::simulator::SimConfig;

use crate::app::{ADMIN_KEY, READER_KEY, TestApp, TestAppBuilder};
use crate::support::metric_value;
use crate::support::wait::{EVENTUALLY, Wait};

/// `wxtoken_upstream_quota_{which}{appid,api}` in the app's metrics now.
async fn quota(app: &TestApp, which: &str, appid: &str, api: &str) -> Option<f64> {
    let text = app.metrics().await;
    let name = format!("wxtoken_upstream_quota_{which}");
    let present = text
        .lines()
        .any(|l| l.starts_with(&format!("{name}{{appid=\"{appid}\",api=\"{api}\"}}")));
    present.then(|| metric_value(&text, &name, &[("appid", appid), ("api", api)]))
}

/// Waits until the app exports `limit` and `used` for `appid`'s `api`.
async fn wait_for_quota(app: &TestApp, appid: &str, api: &str, limit: f64, used: f64) {
    Wait::up_to(EVENTUALLY)
        .until_async(
            &format!("{appid}'s {api} quota to read {used}/{limit}"),
            async || {
                quota(app, "limit", appid, api).await == Some(limit)
                    && quota(app, "used", appid, api).await == Some(used)
            },
        )
        .await;
}

async fn token_of(app: &TestApp, appid: &str) -> String {
    let response = app.get_token(appid, Some(READER_KEY)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("a JSON token answer");
    body["access_token"]
        .as_str()
        .expect("an access_token")
        .to_string()
}

#[actix_web::test]
async fn each_account_exports_the_quota_getapiquota_reports_for_its_token_api() {
    let app = TestAppBuilder::new()
        .accounts(&[Mode::Legacy, Mode::Stable])
        .spawn()
        .await;
    let legacy = app.account(Mode::Legacy).appid.to_string();
    let stable = app.account(Mode::Stable).appid.to_string();

    // One fetch each so far: what the simulator counted, read back from it.
    wait_for_quota(&app, &legacy, "token", 2000.0, 1.0).await;
    wait_for_quota(&app, &stable, "stable_token", 500_000.0, 1.0).await;
    // Each reads only the API it uses.
    assert_eq!(quota(&app, "limit", &legacy, "stable_token").await, None);
    assert_eq!(quota(&app, "limit", &stable, "token").await, None);
    // `/v1/accounts` (and the status page) show the same readings.
    let listed: Value = app
        .accounts(Some(ADMIN_KEY))
        .await
        .json()
        .await
        .expect("the account list");
    let row = |appid: &str| {
        listed
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["appid"] == appid))
            .cloned()
            .expect("listed")
    };
    let legacy_quotas = row(&legacy)["quotas"].clone();
    assert_eq!(legacy_quotas[0]["api"], "token", "{legacy_quotas}");
    assert_eq!(legacy_quotas[0]["daily_limit"], 2000);
    assert_eq!(legacy_quotas[0]["used"], 1);
    assert!(legacy_quotas[0]["read_at"].is_i64());
    assert_eq!(row(&stable)["quotas"][0]["api"], "stable_token");
    let stats = app.sim.stats();
    assert_eq!(stats.calls_to(&legacy, "getapiquota"), 1);
    assert_eq!(stats.calls_to(&stable, "getapiquota"), 1);

    // A refresh within the hour does not read it again (getApiQuota has a
    // quota of its own); the exported reading stays the last one.
    let refreshed = app.admin_refresh(&legacy, Some(ADMIN_KEY)).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    assert_eq!(app.sim.stats().calls_to(&legacy, "getapiquota"), 1);
    assert_eq!(quota(&app, "used", &legacy, "token").await, Some(1.0));
}

#[actix_web::test]
async fn a_spent_legacy_quota_falls_back_to_stable_token_when_the_account_allows_it() {
    let app = TestAppBuilder::new()
        .sim_config(SimConfig {
            legacy_daily_quota: 1,
            ..SimConfig::default()
        })
        .account(Mode::Legacy)
        .account_setting("fallback_to_stable: true")
        .spawn()
        .await;
    let appid = app.accounts[0].appid.to_string();
    let first = token_of(&app, &appid).await;
    assert_eq!(app.sim.stats().tokens_issued[&appid].legacy, 1);

    // The legacy quota (1) is spent: the refresh answers 45009, and the
    // same refresh gets a token from stable_token instead.
    let refreshed = app.admin_refresh(&appid, Some(ADMIN_KEY)).await;
    assert_eq!(refreshed.status(), StatusCode::OK, "the refresh succeeds");
    let stats = app.sim.stats();
    assert_eq!(
        stats.calls_to(&appid, "token"),
        2,
        "one legacy call got 45009"
    );
    assert_eq!(stats.tokens_issued[&appid].legacy, 1);
    assert_eq!(stats.tokens_issued[&appid].stable, 1);
    let served = token_of(&app, &appid).await;
    assert_ne!(served, first);
    assert!(app.sim.is_token_valid(&appid, &served));

    // The spent quota made it read both quotas at once: legacy 1/1 and
    // the stable one it now uses.
    wait_for_quota(&app, &appid, "token", 1.0, 1.0).await;
    wait_for_quota(&app, &appid, "stable_token", 500_000.0, 1.0).await;

    // Until the quota day ends it goes straight to stable_token: no more
    // calls that can only answer 45009.
    let again = app.admin_refresh(&appid, Some(ADMIN_KEY)).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(app.sim.stats().calls_to(&appid, "token"), 2);
    assert!(app.sim.stats().calls_to(&appid, "stable_token") >= 2);
}

#[actix_web::test]
async fn without_fallback_a_spent_legacy_quota_fails_reads_the_quota_and_keeps_the_token() {
    let app = TestAppBuilder::new()
        .sim_config(SimConfig {
            legacy_daily_quota: 1,
            ..SimConfig::default()
        })
        .account(Mode::Legacy)
        .spawn()
        .await;
    let appid = app.accounts[0].appid.to_string();
    let first = token_of(&app, &appid).await;

    let refreshed = app.admin_refresh(&appid, Some(ADMIN_KEY)).await;
    assert!(
        !refreshed.status().is_success(),
        "a spent quota without fallback cannot refresh: {}",
        refreshed.status()
    );
    assert_eq!(app.sim.stats().calls_to(&appid, "stable_token"), 0);
    assert_eq!(
        token_of(&app, &appid).await,
        first,
        "the current token is served on"
    );
    // The 45009 made it read the quota again within the hour: 100% used.
    wait_for_quota(&app, &appid, "token", 1.0, 1.0).await;
    assert_eq!(app.sim.stats().calls_to(&appid, "getapiquota"), 2);
}

#[actix_web::test]
async fn the_simulator_answers_getapiquota_like_wechat() {
    let app = TestAppBuilder::new().account(Mode::Legacy).spawn().await;
    let appid = app.accounts[0].appid.to_string();
    let token = token_of(&app, &appid).await;
    let url = format!("{}/cgi-bin/openapi/quota/get", app.sim.base_url());
    let http = crate::support::http();
    let ask = async |query: &[(&str, &str)], body: Value| -> Value {
        http.post(&url)
            .query(query)
            .json(&body)
            .send()
            .await
            .expect("the simulator answers")
            .json()
            .await
            .expect("a JSON answer")
    };
    let answer = ask(
        &[("access_token", token.as_str())],
        json!({"cgi_path": "/cgi-bin/token"}),
    )
    .await;
    assert_eq!(answer["errcode"], 0);
    assert_eq!(
        answer["quota"],
        json!({"daily_limit": 2000, "used": 1, "remain": 1999})
    );
    let unknown = ask(
        &[("access_token", token.as_str())],
        json!({"cgi_path": "/cgi-bin/message/custom/send"}),
    )
    .await;
    assert_eq!(unknown["errcode"], 76021);
    let no_token = ask(&[], json!({"cgi_path": "/cgi-bin/token"})).await;
    assert_eq!(no_token["errcode"], 41001);
    let bad_token = ask(
        &[("access_token", "not-a-token-it-issued")],
        json!({"cgi_path": "/cgi-bin/token"}),
    )
    .await;
    assert_eq!(bad_token["errcode"], 40014);
}

#[test]
fn fallback_to_stable_is_a_legacy_wechat_accounts_setting() {
    let load = |yaml: &str| {
        load_str(
            yaml,
            Path::new("test.yaml"),
            &LoadOptions::from_pairs([("S", "a-secret-value")]),
        )
    };
    let legacy = load(
        "accounts:\n  - appid: wx1111111111111111\n    secret: ${S}\n    mode: legacy\n    fallback_to_stable: true\n",
    )
    .expect("a legacy account may fall back");
    assert!(legacy.config.accounts[0].fallback_to_stable);
    let default = load("accounts:\n  - appid: wx1111111111111111\n    secret: ${S}\n")
        .expect("a minimal config");
    assert!(!default.config.accounts[0].fallback_to_stable);

    let stable = load(
        "accounts:\n  - appid: wx1111111111111111\n    secret: ${S}\n    mode: stable\n    fallback_to_stable: true\n",
    )
    .expect_err("a stable account has nothing to fall back to");
    let text = stable.to_string();
    assert!(
        text.contains("test.yaml:5:")
            && text.contains("fallback_to_stable applies to `mode: legacy`"),
        "{text}"
    );
    let wecom = load(
        "accounts:\n  - kind: wecom\n    corpid: ww1234567890abcdef\n    agentid: 1000002\n    secret: ${S}\n    fallback_to_stable: true\n",
    )
    .expect_err("WeCom has no stable_token");
    assert!(
        wecom.to_string().contains("not fallback_to_stable"),
        "{wecom}"
    );
    let typo = load(
        "accounts:\n  - appid: wx1111111111111111\n    secret: ${S}\n    mode: legacy\n    fallback_to_stable: sometimes\n",
    )
    .expect_err("not a boolean");
    assert!(typo.to_string().contains("fallback_to_stable"), "{typo}");
}

#[test]
fn a_getapiquota_answer_with_absurd_or_missing_numbers_is_a_decode_error() {
    use wxtoken::wechat::{ApiQuota, UpstreamError, decode_quota_answer};
    let ok =
        br#"{"errcode":0,"errmsg":"ok","quota":{"daily_limit":10000,"used":12,"remain":9988}}"#;
    assert_eq!(
        decode_quota_answer(ok).expect("a quota"),
        ApiQuota {
            daily_limit: 10_000,
            used: 12
        }
    );
    for garbage in [
        &br#"{"errcode":0,"quota":{"daily_limit":-1,"used":0}}"#[..],
        br#"{"errcode":0,"quota":{"daily_limit":99999999999999,"used":0}}"#,
        br#"{"errcode":0,"quota":{"used":3}}"#,
        br#"{"errcode":0,"errmsg":"ok"}"#,
        br#"{"errcode":0,"quota":{"daily_limit":"2000","used":0}}"#,
        b"<html>502</html>",
    ] {
        let err = decode_quota_answer(garbage).expect_err("not a quota");
        assert!(
            matches!(err, UpstreamError::Decode { .. }),
            "{}: {err:?}",
            String::from_utf8_lossy(garbage)
        );
    }
    let refused = decode_quota_answer(br#"{"errcode":76021,"errmsg":"cgi_path not found"}"#)
        .expect_err("an errcode");
    assert!(matches!(refused, UpstreamError::Api { errcode: 76021, .. }));
}

/// Over two quota days in virtual time, a legacy account with
/// `fallback_to_stable` whose quota lasts a few hours: every token it
/// serves is live, each day costs at most one legacy call that can only
/// answer 45009, and each new day goes back to `/cgi-bin/token`.
#[actix_web::test]
async fn fallback_lasts_until_the_quota_day_ends_and_serves_live_tokens_throughout() {
    use secrecy::SecretString;
    use std::sync::Arc;
    use std::time::Duration;
    use wxtoken::clock::Clock;
    use wxtoken::config::{AccountConfig, AccountKind};
    use wxtoken::engine::EngineConfig;
    use wxtoken::simulator::{AppRegistration, InProcess};
    use wxtoken::wechat::TokenSource;

    tokio::time::pause();
    let clock = Clock::tokio();
    let sim = InProcess::new(
        SimConfig {
            clock: clock.clone(),
            legacy_daily_quota: 4,
            ..SimConfig::default()
        },
        Duration::from_secs(5),
    )
    .expect("valid simulator config");
    let appid = crate::support::unique_appid();
    let secret = format!("quota-secret-{appid}");
    sim.try_register_app(AppRegistration {
        appid: appid.to_string(),
        secret: secret.clone(),
        ip_whitelist: vec![],
    })
    .expect("a valid registration");
    let account = AccountConfig {
        name: "fallback".into(),
        appid: appid.clone(),
        secret: SecretString::from(secret),
        mode: Mode::Legacy,
        enabled: true,
        kind: AccountKind::Wechat,
        tickets: Vec::new(),
        fallback_to_stable: true,
    };
    let upstream: Arc<dyn TokenSource> = Arc::new(sim.clone());
    let engine =
        crate::support::engine_in_memory(&clock, &EngineConfig::new(vec![account]), upstream).await;
    let slot = engine.directory.get(&appid).expect("the account's slot");

    let start_day = wxtoken::clock::china_day(clock.now_unix());
    let mut legacy_by_day: Vec<u64> = Vec::new();
    let mut stable_seen_on_day_one = false;
    let step = Duration::from_secs(30);
    for _ in 0..(50 * 3600 / 30) {
        tokio::time::sleep(step).await;
        let now = clock.now_unix_ms();
        let token = slot.token().expect("a token all along");
        assert!(token.usable_secs(now).is_some(), "no servable token");
        assert!(
            sim.is_token_valid(appid.as_str(), token.token.expose()),
            "a served token is dead at WeChat"
        );
        let day = usize::try_from(wxtoken::clock::china_day(clock.now_unix()) - start_day)
            .expect("days go forward");
        let issued = sim.stats().tokens_issued[appid.as_str()].legacy;
        if legacy_by_day.len() <= day {
            legacy_by_day.push(issued);
        }
        legacy_by_day[day] = issued;
        stable_seen_on_day_one |= day == 0 && token.mode == Mode::Stable;
    }
    let stats = sim.stats();
    let issued = &stats.tokens_issued[appid.as_str()];
    assert!(stable_seen_on_day_one, "the spent quota never fell back");
    assert!(issued.stable >= 1);
    // Fifty hours hold one whole quota day, the second: it went back to
    // /cgi-bin/token and spent that day's quota too.
    assert!(legacy_by_day.len() >= 3, "{legacy_by_day:?}");
    assert_eq!(
        legacy_by_day[1] - legacy_by_day[0],
        4,
        "the second quota day fetches its four legacy tokens again: {legacy_by_day:?}"
    );
    let refused = stats.calls_to(appid.as_str(), "token") - issued.legacy;
    assert!(
        refused <= legacy_by_day.len() as u64,
        "{refused} legacy calls answered 45009 over {} quota days",
        legacy_by_day.len()
    );
    engine.stop().await;
}

#[actix_web::test]
async fn a_component_reads_its_own_and_its_authorizers_token_quotas_with_its_token() {
    let app = TestAppBuilder::new().component(false).spawn().await;
    let component = app.component().appid.to_string();
    // Its first component token is the one api_component_token call so far;
    // its authorizers' refreshes (none yet) count against it too.
    wait_for_quota(&app, &component, "api_component_token", 10_000.0, 1.0).await;
    wait_for_quota(&app, &component, "api_authorizer_token", 100_000.0, 0.0).await;
    assert_eq!(app.sim.stats().calls_to(&component, "getapiquota"), 2);
}
