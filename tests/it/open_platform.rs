//! The Open Platform end to end (contract §6): a component configured in
//! accounts.yaml, the simulator pushing encrypted verify tickets and
//! authorizations to the server's event URL, authorizer tokens served like
//! accounts', refresh tokens rotated and never lost, hostile events refused,
//! revocation and the recovery of a lost refresh token.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wxtoken::domain::{AppId, Authorization};
use wxtoken::openplatform::Event;
use wxtoken::openplatform::event::seal;
use wxtoken::simulator::SimConfig;

use crate::app::{ADMIN_KEY, READER_KEY, TestApp, TestAppBuilder};
use crate::support;
use crate::support::wait::Wait;

/// Tokens live 6 s with 2 s of grace: a lifetime passes in seconds.
fn short_lived() -> SimConfig {
    SimConfig {
        token_ttl: Duration::from_secs(6),
        grace: Duration::from_secs(2),
        ..SimConfig::default()
    }
}

async fn platform(rotate: bool) -> TestApp {
    TestAppBuilder::new()
        .component(rotate)
        .sim_config(short_lived())
        .refresh_setting("legacy_at: 0.6")
        .spawn()
        .await
}

/// Authorizes `authorizer` at the simulator (which pushes the encrypted
/// `authorized` event to the server) and waits until its token is served.
async fn authorize(app: &TestApp, authorizer: &AppId) -> String {
    let c = app.component();
    let answer = app
        .sim_control(
            &format!("/sim/components/{}/authorize", c.appid),
            json!({ "authorizer_appid": authorizer.as_str() }),
        )
        .await;
    assert_eq!(answer["delivered"], true, "{answer}");
    Wait::up_to(Duration::from_secs(10))
        .for_value_async("the authorizer's first token", async || {
            let r = app.get_token(authorizer.as_str(), Some(READER_KEY)).await;
            if r.status() != StatusCode::OK {
                return None;
            }
            let body: Value = r.json().await.ok()?;
            body["access_token"].as_str().map(str::to_string)
        })
        .await
}

fn refresh_token_of(app: &TestApp, appid: &AppId) -> Option<String> {
    support::held_refresh_token(&app.state.directory, appid)
}

/// The row of `appid` in a `/v1/accounts` answer.
fn row_of<'a>(list: &'a Value, appid: &AppId) -> &'a Value {
    list.as_array()
        .and_then(|rows| rows.iter().find(|r| r["appid"] == appid.as_str()))
        .unwrap_or_else(|| panic!("{appid} is not listed in {list}"))
}

fn calls(app: &TestApp, appid: &AppId, api: &str) -> u64 {
    app.sim
        .stats()
        .calls
        .get(appid.as_str())
        .and_then(|m| m.get(api))
        .copied()
        .unwrap_or(0)
}

#[actix_web::test]
async fn the_whole_lifecycle_keeps_tokens_valid_while_refresh_tokens_rotate_and_survive_a_restart()
{
    let mut app = platform(true).await;
    let c = app.component().clone();

    // The component got a verify ticket pushed and fetched its own token.
    let r = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/component/{}/token", c.appid),
            Some(READER_KEY),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["component_appid"], c.appid.as_str());
    assert!(body["component_access_token"].as_str().unwrap().len() >= 16);
    assert!(body["expires_in"].as_u64().unwrap() >= 1);

    let authorizer = support::unique_appid();
    let first = authorize(&app, &authorizer).await;
    assert!(app.sim.is_token_valid(authorizer.as_str(), &first));
    let first_refresh = refresh_token_of(&app, &authorizer).expect("a stored refresh token");

    // Three lifetimes of reads: every token served is valid at WeChat, the
    // token and the refresh token both rotate.
    let mut tokens = HashSet::new();
    let mut refresh_tokens = HashSet::from([first_refresh.clone()]);
    let until = tokio::time::Instant::now() + Duration::from_secs(14);
    while tokio::time::Instant::now() < until {
        let r = app.get_token(authorizer.as_str(), Some(READER_KEY)).await;
        assert_eq!(r.status(), StatusCode::OK);
        let token = r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            app.sim.is_token_valid(authorizer.as_str(), &token),
            "a served authorizer token was not valid at WeChat"
        );
        tokens.insert(token);
        if let Some(rt) = refresh_token_of(&app, &authorizer) {
            refresh_tokens.insert(rt);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tokens.len() >= 3, "only {} tokens in 14 s", tokens.len());
    assert!(
        refresh_tokens.len() >= 3,
        "the refresh token rotated only {} times",
        refresh_tokens.len() - 1
    );

    // /v1/accounts shows the authorizer with its kind, component and standing.
    let list: Value = app.accounts(Some(ADMIN_KEY)).await.json().await.unwrap();
    let row = row_of(&list, &authorizer);
    assert_eq!(row["kind"], "authorizer");
    assert_eq!(row["component"], c.appid.as_str());
    assert_eq!(row["authorization"], "authorized");
    let text = list.to_string();
    for rt in &refresh_tokens {
        assert!(
            !text.contains(rt.as_str()),
            "a refresh token in /v1/accounts"
        );
    }

    // A restart serves the stored token without a call, and the next refresh
    // works with the rotated refresh token it stored.
    // Read once the server has stopped: a refresh in flight while it stops
    // still stores its rotated refresh token.
    app.stop().await;
    let current = app.current_token(&authorizer);
    let stored_refresh = refresh_token_of(&app, &authorizer).unwrap();
    let at_stop = calls(&app, &authorizer, "api_authorizer_token");
    app.restart().await;
    let before = calls(&app, &authorizer, "api_authorizer_token");
    if before == at_stop {
        // No refresh since the restart yet: the restored one is the stored one.
        assert_eq!(refresh_token_of(&app, &authorizer).unwrap(), stored_refresh);
    }
    let served = app.get_token(authorizer.as_str(), Some(READER_KEY)).await;
    if app.sim.is_token_valid(authorizer.as_str(), &current) {
        assert_eq!(served.status(), StatusCode::OK);
    }
    Wait::up_to(Duration::from_secs(10))
        .until_async("a refresh after the restart", async || {
            calls(&app, &authorizer, "api_authorizer_token") > before
                && app.current_token(&authorizer) != current
        })
        .await;
    let after = app.current_token(&authorizer);
    assert!(app.sim.is_token_valid(authorizer.as_str(), &after));
    let slot = app.state.directory.get(&authorizer).unwrap();
    assert_eq!(slot.authorization(), Some(Authorization::Authorized));
}

#[actix_web::test]
async fn forged_tampered_foreign_and_oversized_events_are_refused_and_change_nothing() {
    let app = platform(true).await;
    let c = app.component().clone();
    let url = format!("{}/v1/component/{}/events", app.base_url, c.appid);
    let http = reqwest::Client::new();
    let victim = support::unique_appid();
    let event = Event::Authorized {
        authorizer_appid: victim.to_string(),
        code: "queryauthcode@@@forged-code-0123456789".to_string(),
        update: false,
        create_time: 1_700_000_000,
    };
    let tickets_before = app
        .state
        .directory
        .get(&c.appid)
        .and_then(|s| s.open())
        .map(|o| o.verify_tickets.len());

    let post = async |query: &wxtoken::openplatform::EventQuery, body: Vec<u8>| {
        http.post(&url)
            .query(query)
            .body(body)
            .send()
            .await
            .expect("the server answers")
            .status()
    };

    // A valid seal, then a bad signature: refused.
    let sealed = seal(&c.crypt(), &event, 1_700_000_000);
    let mut forged = sealed.query.clone();
    forged.msg_signature = "0".repeat(40);
    assert_eq!(
        post(&forged, sealed.body.clone().into_bytes()).await,
        StatusCode::BAD_REQUEST
    );
    // The same message replayed with another timestamp: the signature no longer matches.
    let mut replayed = sealed.query.clone();
    replayed.timestamp = "1700000999".to_string();
    assert_eq!(
        post(&replayed, sealed.body.clone().into_bytes()).await,
        StatusCode::BAD_REQUEST
    );
    // Tampered ciphertext (signature recomputed by an attacker without the key is impossible;
    // here the body changes under a valid signature).
    let tampered = sealed.body.replacen("<Encrypt>", "<Encrypt>AAAA", 1);
    assert_eq!(
        post(&sealed.query, tampered.into_bytes()).await,
        StatusCode::BAD_REQUEST
    );
    // Sealed with the right token and key for another appid: the appid inside is wrong.
    let other =
        wxtoken::openplatform::MsgCrypt::new(&c.token, &c.aes_key, "wx0000000000000001").unwrap();
    let foreign = seal(&other, &event, 1_700_000_000);
    assert_eq!(
        post(&foreign.query, foreign.body.into_bytes()).await,
        StatusCode::BAD_REQUEST
    );
    // Oversized.
    let big = vec![b'x'; 64 * 1024 + 1];
    assert_eq!(post(&sealed.query, big).await, StatusCode::BAD_REQUEST);
    // Not XML, no query.
    assert_eq!(
        post(&sealed.query, b"{\"json\": true}".to_vec()).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(
            &wxtoken::openplatform::EventQuery::default(),
            sealed.body.clone().into_bytes()
        )
        .await,
        StatusCode::BAD_REQUEST
    );
    // An unknown component.
    let r = http
        .post(format!(
            "{}/v1/component/wx0000000000000002/events",
            app.base_url
        ))
        .query(&sealed.query)
        .body(sealed.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Nothing changed: no authorizer, no new ticket, no call to WeChat for it.
    assert!(app.state.directory.get(&victim).is_none());
    let tickets_after = app
        .state
        .directory
        .get(&c.appid)
        .and_then(|s| s.open())
        .map(|o| o.verify_tickets.len());
    assert_eq!(tickets_before, tickets_after);
    assert_eq!(calls(&app, &victim, "api_query_auth"), 0);

    // The genuine message is taken (and answered exactly `success`); the
    // code is unknown to WeChat, so the authorizer fails but exists.
    let r = http
        .post(&url)
        .query(&sealed.query)
        .body(sealed.body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "success");
    assert!(app.state.directory.get(&victim).is_some());
}

#[actix_web::test]
async fn a_revoked_authorizer_answers_410_and_is_never_refreshed_again() {
    let app = platform(false).await;
    let c = app.component().clone();
    let authorizer = support::unique_appid();
    authorize(&app, &authorizer).await;
    let answer = app
        .sim_control(
            &format!("/sim/components/{}/unauthorize", c.appid),
            json!({ "authorizer_appid": authorizer.as_str() }),
        )
        .await;
    assert_eq!(answer["delivered"], true, "{answer}");
    let r = app.get_token(authorizer.as_str(), Some(READER_KEY)).await;
    assert_eq!(r.status(), StatusCode::GONE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "authorization_revoked");
    let calls_then = calls(&app, &authorizer, "api_authorizer_token");
    // Two lifetimes later: still 410, no refresh attempted, the record kept.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(calls(&app, &authorizer, "api_authorizer_token"), calls_then);
    let r = app.get_token(authorizer.as_str(), Some(READER_KEY)).await;
    assert_eq!(r.status(), StatusCode::GONE);
    let list: Value = app.accounts(Some(ADMIN_KEY)).await.json().await.unwrap();
    let row = row_of(&list, &authorizer);
    assert_eq!(row["authorization"], "unauthorized");
    assert!(
        refresh_token_of(&app, &authorizer).is_some(),
        "its record is kept"
    );
}

#[actix_web::test]
async fn a_refused_refresh_token_is_recovered_once_from_the_authorizer_list() {
    let app = platform(true).await;
    let c = app.component().clone();
    let authorizer = support::unique_appid();
    let first = authorize(&app, &authorizer).await;
    let lost = refresh_token_of(&app, &authorizer).unwrap();
    // WeChat forgets the refresh token we hold (only its list shows the new one).
    app.sim_control(
        &format!("/sim/components/{}/refresh_tokens", c.appid),
        json!({ "authorizer_appid": authorizer.as_str(), "invalidate": true }),
    )
    .await;
    let listed_before = calls(&app, &c.appid, "api_get_authorizer_list");
    Wait::up_to(Duration::from_secs(15))
        .until("a token refreshed with the recovered refresh token", || {
            app.state.directory.get(&authorizer).is_some_and(|s| {
                s.token().is_some_and(|t| t.token.expose() != first)
                    && s.open()
                        .and_then(|o| o.refresh_token.clone())
                        .is_some_and(|t| t.expose() != lost)
            })
        })
        .await;
    assert!(calls(&app, &c.appid, "api_get_authorizer_list") > listed_before);
    assert!(
        app.sim
            .is_token_valid(authorizer.as_str(), &app.current_token(&authorizer))
    );
    let slot = app.state.directory.get(&authorizer).unwrap();
    assert_eq!(slot.authorization(), Some(Authorization::Authorized));

    // When the list cannot help (the authorizer was revoked at WeChat without
    // the event reaching us), one recovery, then needs_reauth and no more calls.
    app.sim_control(
        &format!("/sim/components/{}/refresh_tokens", c.appid),
        json!({ "authorizer_appid": authorizer.as_str(), "fail_next": 1000 }),
    )
    .await;
    Wait::up_to(Duration::from_secs(15))
        .until("the authorizer needs its merchant", || {
            slot.authorization() == Some(Authorization::NeedsReauth)
        })
        .await;
    let calls_then = calls(&app, &authorizer, "api_authorizer_token");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(calls(&app, &authorizer, "api_authorizer_token"), calls_then);
}

/// Authorizes `authorizer` at WeChat while the event URL is unreachable, so
/// that this server never hears of it.
async fn authorize_unheard(app: &TestApp, authorizer: &AppId) {
    let c = app.component();
    let mut reg = wxtoken::simulator::ComponentRegistration::new(
        c.appid.as_str(),
        &c.secret,
        &c.token,
        &c.aes_key,
    );
    reg.callback_url = Some("http://127.0.0.1:9/nowhere".to_string());
    reg.rotate_refresh_tokens = c.rotate;
    app.sim.try_register_component(reg.clone()).unwrap();
    let answer = app
        .sim_control(
            &format!("/sim/components/{}/authorize", c.appid),
            json!({ "authorizer_appid": authorizer.as_str() }),
        )
        .await;
    assert_eq!(answer["delivered"], false, "{answer}");
    reg.callback_url = Some(format!("{}/v1/component/{}/events", app.base_url, c.appid));
    app.sim.try_register_component(reg).unwrap();
}

#[actix_web::test]
async fn reconcile_adds_the_authorizers_whose_events_were_lost_and_import_takes_refresh_tokens() {
    let app = platform(false).await;
    let c = app.component().clone();
    let heard = support::unique_appid();
    authorize(&app, &heard).await;
    let missing = support::unique_appid();
    authorize_unheard(&app, &missing).await;
    assert!(app.state.directory.get(&missing).is_none());

    let reconcile = async |key| {
        app.request(
            reqwest::Method::POST,
            &format!("/v1/component/{}/reconcile", c.appid),
            Some(key),
        )
        .send()
        .await
        .unwrap()
    };
    let r = reconcile(ADMIN_KEY).await;
    let status = r.status();
    let summary: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["total_count"], 2, "{summary}");
    assert_eq!(summary["added"], json!([missing.as_str()]), "{summary}");
    assert_eq!(summary["unchanged"], 1, "{summary}");
    Wait::up_to(Duration::from_secs(10))
        .until("the reconciled authorizer is served", || {
            app.is_ready(&missing)
        })
        .await;
    assert!(
        app.sim
            .is_token_valid(missing.as_str(), &app.current_token(&missing))
    );
    // Reconcile needs the admin key.
    assert_eq!(reconcile(READER_KEY).await.status(), StatusCode::FORBIDDEN);

    // Import a refresh token from "another system" for an authorizer this
    // server never heard of: a bad entry is refused by index, the good one
    // is durable and served, and no refresh token is echoed.
    let third = support::unique_appid();
    authorize_unheard(&app, &third).await;
    let client = wxtoken::wechat::WechatClient::new(
        &wxtoken::config::UpstreamConfig {
            base_urls: vec![app.sim.base_url().parse().unwrap()],
            ..Default::default()
        },
        wxtoken::metrics::Metrics::new(),
    )
    .unwrap();
    let component_token = wxtoken::domain::AccessToken::new(app.current_token(&c.appid));
    let page = client
        .authorizer_list(&c.appid, &component_token, 0, 500)
        .await
        .unwrap();
    let (_, third_rt, _) = page
        .list
        .iter()
        .find(|(a, _, _)| a == &third)
        .expect("WeChat lists the third authorizer")
        .clone();
    let body = json!([
        { "authorizer_appid": "not-an-appid", "refresh_token": "whatever-0123456789" },
        { "authorizer_appid": third.as_str(), "refresh_token": third_rt.expose() },
    ]);
    let r = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/component/{}/authorizers", c.appid),
            Some(ADMIN_KEY),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let summary: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["imported"], 1, "{summary}");
    assert_eq!(summary["refused"][0]["index"], 0, "{summary}");
    assert!(!summary.to_string().contains(third_rt.expose()));
    assert_eq!(
        refresh_token_of(&app, &third).as_deref(),
        Some(third_rt.expose())
    );
    Wait::up_to(Duration::from_secs(10))
        .until("the imported authorizer is served", || app.is_ready(&third))
        .await;
}

#[actix_web::test]
async fn a_component_whose_ticket_pushes_stop_asks_wechat_to_push_again() {
    let app = platform(false).await;
    let c = app.component().clone();
    let newest = || {
        app.state
            .directory
            .get(&c.appid)
            .and_then(|s| s.open())
            .and_then(|o| o.verify_tickets.iter().map(|t| t.received_at_ms).max())
    };
    let first = newest().expect("the first ticket was pushed");
    app.sim_control(
        &format!("/sim/components/{}/pushing", c.appid),
        json!({ "on": false }),
    )
    .await;
    assert_eq!(calls(&app, &c.appid, "api_start_push_ticket"), 0);
    // 21 minutes without a push.
    app.sim.advance(Duration::from_secs(21 * 60));
    Wait::up_to(Duration::from_secs(10))
        .until("api_start_push_ticket", || {
            calls(&app, &c.appid, "api_start_push_ticket") >= 1
        })
        .await;
    Wait::up_to(Duration::from_secs(10))
        .until("a new verify ticket", || {
            newest().is_some_and(|t| t > first)
        })
        .await;
    // Once, not every second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(calls(&app, &c.appid, "api_start_push_ticket"), 1);
}
