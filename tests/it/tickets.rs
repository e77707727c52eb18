//! JS-SDK tickets and WeCom applications, against the simulator.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sha1::{Digest, Sha1};
use wxtoken::domain::{Mode, TicketKind};
use wxtoken::simulator::SimConfig;

use crate::app::{ADMIN_KEY, READER_KEY, SCOPED_KEY, TestApp, TestAppBuilder, json};
use crate::support::register_as;
use crate::support::wait::Wait;

/// Spawns `builder` with one more account in `mode` with a JS-SDK ticket;
/// returns the app, the account's appid and its first ticket.
async fn with_jsapi(builder: TestAppBuilder, mode: Mode) -> (TestApp, String, Value) {
    let app = builder
        .account_with_tickets(mode, &[TicketKind::Jsapi])
        .spawn()
        .await;
    let appid = app.accounts[0].appid.as_str().to_string();
    let ticket = app.wait_for_ticket(&appid, "jsapi").await;
    (app, appid, ticket)
}

fn getticket_calls(app: &TestApp, appid: &str) -> u64 {
    app.sim.stats().calls_to(appid, "getticket")
}

#[actix_web::test]
async fn tickets_are_served_with_the_token_shape_and_never_outlive_their_token() {
    let app = TestAppBuilder::new()
        .account_with_tickets(Mode::Legacy, &[TicketKind::Jsapi, TicketKind::WxCard])
        .account(Mode::Stable)
        .spawn()
        .await;
    let appid = app.accounts[0].appid.as_str().to_string();
    for kind in ["jsapi", "wx_card"] {
        let body = app.wait_for_ticket(&appid, kind).await;
        assert_eq!(body["appid"], appid.as_str());
        assert_eq!(body["type"], kind);
        assert!(
            body["ticket"].as_str().is_some_and(|t| t.len() >= 16),
            "{body}"
        );
        let token = json(
            app.get_token(&appid, Some(READER_KEY)).await,
            StatusCode::OK,
        )
        .await;
        assert!(
            body["expires_in"].as_u64() <= token["expires_in"].as_u64(),
            "the {kind} ticket outlives its token: {body} vs {token}"
        );
        assert!(body["expires_at"].as_i64() <= token["expires_at"].as_i64());
    }

    // A type that is not configured, and one that does not exist.
    let other = app.accounts[1].appid.as_str();
    let r = app.get_ticket(other, "jsapi", Some(READER_KEY)).await;
    let body = json(r, StatusCode::NOT_FOUND).await;
    assert_eq!(body["error"], "unknown_ticket");
    let r = app.get_ticket(&appid, "sdk", Some(READER_KEY)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Same authentication and scopes as tokens.
    let r = app.get_ticket(&appid, "jsapi", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    if app.accounts[0].appid.as_str() != appid {
        unreachable!();
    }
    let scoped_other = app.get_ticket(other, "jsapi", Some(SCOPED_KEY)).await;
    assert_eq!(scoped_other.status(), StatusCode::FORBIDDEN);
}

#[actix_web::test]
async fn tickets_are_refetched_right_after_the_token_rotates() {
    let (app, appid, first) = with_jsapi(TestAppBuilder::new(), Mode::Legacy).await;
    let calls = getticket_calls(&app, &appid);

    let rotated = json(
        app.admin_refresh(&appid, Some(ADMIN_KEY)).await,
        StatusCode::OK,
    )
    .await;
    Wait::up_to(Duration::from_secs(10))
        .every(Duration::from_millis(10))
        .until("a ticket fetch after the rotation", || {
            getticket_calls(&app, &appid) != calls
        })
        .await;
    let slot = app
        .state
        .directory
        .get(&app.accounts[0].appid)
        .expect("slot");
    let token = slot.token().expect("a token");
    assert_eq!(
        token.token.expose(),
        rotated["access_token"].as_str().expect("token")
    );
    let t = Wait::up_to(Duration::from_secs(10))
        .every(Duration::from_millis(10))
        .for_value("the ticket is refetched", || {
            let t = slot.ticket(TicketKind::Jsapi).expect("a ticket");
            (t.fetched_at_ms >= token.fetched_at_ms).then_some(t)
        })
        .await;
    assert!(
        t.serve_until_ms
            <= token
                .serve_until_ms
                .max(t.expires_at_ms)
                .min(t.expires_at_ms)
    );
    let second = app.wait_for_ticket(&appid, "jsapi").await;
    assert!(second["fetched_at"].as_i64() >= first["fetched_at"].as_i64());
}

#[actix_web::test]
async fn ticket_compare_and_refresh_answers_old_tickets_and_throttles_fresh_ones() {
    let (app, appid, current) = with_jsapi(TestAppBuilder::new(), Mode::Stable).await;
    let calls = getticket_calls(&app, &appid);

    let old = app
        .report_stale_ticket(&appid, "jsapi", "an-old-ticket", Some(READER_KEY))
        .await;
    let old = json(old, StatusCode::OK).await;
    assert_eq!(old["ticket"], current["ticket"]);
    assert_eq!(old["refreshed"], false);
    assert_eq!(
        getticket_calls(&app, &appid),
        calls,
        "no fetch for an old ticket"
    );

    // The current ticket was fetched moments ago: WeChat's quota is tight.
    let fresh = app
        .report_stale_ticket(
            &appid,
            "jsapi",
            current["ticket"].as_str().expect("a ticket"),
            Some(READER_KEY),
        )
        .await;
    assert_eq!(fresh.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(fresh.headers().contains_key("retry-after"));

    let bad = app
        .refresh_ticket(
            &appid,
            "jsapi",
            serde_json::json!({"stale": 1}).to_string(),
            Some(READER_KEY),
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[actix_web::test]
async fn the_signature_helper_signs_with_the_current_jsapi_ticket() {
    let (app, appid, current) = with_jsapi(TestAppBuilder::new(), Mode::Stable).await;
    let url = "https://shop.example.com/pay?order=42#top";
    let r = app
        .jsapi_signature(
            &appid,
            serde_json::json!({ "url": url }).to_string(),
            Some(READER_KEY),
        )
        .await;
    let body = json(r, StatusCode::OK).await;
    assert_eq!(body["appId"], appid.as_str());
    let nonce = body["nonceStr"].as_str().expect("a nonce");
    let timestamp = body["timestamp"].as_i64().expect("a timestamp");
    let plain = format!(
        "jsapi_ticket={}&noncestr={nonce}&timestamp={timestamp}&url=https://shop.example.com/pay?order=42",
        current["ticket"].as_str().expect("a ticket")
    );
    assert_eq!(
        body["signature"],
        hex::encode(Sha1::digest(plain.as_bytes()))
    );

    for bad in [
        serde_json::json!({"url": "not a url"}),
        serde_json::json!({"url": "ftp://x/y"}),
        serde_json::json!({}),
    ] {
        let r = app
            .jsapi_signature(&appid, bad.to_string(), Some(READER_KEY))
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}

#[actix_web::test]
async fn tickets_survive_a_restart_without_a_new_fetch() {
    let mut app = TestAppBuilder::new()
        .account_with_tickets(Mode::Stable, &[TicketKind::Jsapi, TicketKind::WxCard])
        .spawn()
        .await;
    let appid = app.accounts[0].appid.as_str().to_string();
    let jsapi = app.wait_for_ticket(&appid, "jsapi").await;
    let card = app.wait_for_ticket(&appid, "wx_card").await;
    // Let the ticket's store write land before stopping.
    app.state.store.flush().await;
    let calls = getticket_calls(&app, &appid);
    app.restart().await;
    assert_eq!(
        app.wait_for_ticket(&appid, "jsapi").await["ticket"],
        jsapi["ticket"]
    );
    assert_eq!(
        app.wait_for_ticket(&appid, "wx_card").await["ticket"],
        card["ticket"]
    );
    assert_eq!(
        getticket_calls(&app, &appid),
        calls,
        "no ticket fetch after the restart"
    );
}

#[actix_web::test]
async fn two_wecom_apps_of_one_corp_get_distinct_tokens() {
    let corpid = format!("ww{:016x}", std::process::id() as u64 * 7919);
    let app = TestAppBuilder::new()
        .wecom_app(&corpid, 1000002)
        .wecom_app(&corpid, 1000003)
        .spawn()
        .await;
    let first = json(
        app.get_token(&format!("{corpid}:1000002"), Some(READER_KEY))
            .await,
        StatusCode::OK,
    )
    .await;
    let second = json(
        app.get_token(&format!("{corpid}:1000003"), Some(READER_KEY))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_ne!(first["access_token"], second["access_token"]);
    assert_eq!(first["appid"], format!("{corpid}:1000002").as_str());
    let stats = app.sim.stats();
    assert_eq!(stats.calls_to(&format!("{corpid}:1000002"), "gettoken"), 1);
    assert_eq!(stats.calls_to(&format!("{corpid}:1000003"), "gettoken"), 1);
    for (body, id) in [(&first, "1000002"), (&second, "1000003")] {
        assert!(app.sim.is_token_valid(
            &format!("{corpid}:{id}"),
            body["access_token"].as_str().expect("token")
        ));
    }
}

#[actix_web::test]
async fn a_wecom_app_with_a_wrong_secret_fails_with_a_config_error_and_the_other_keeps_serving() {
    let corpid = format!("ww{:016x}", std::process::id() as u64 * 104_729);
    let app = TestAppBuilder::new()
        .wecom_app(&corpid, 1000002)
        .spawn()
        .await;
    // A second app of the same corp, configured with a secret WeCom does not know.
    let mut broken = app.accounts[0].clone();
    broken.appid = wxtoken::domain::AppId::parse(&format!("{corpid}:1000009")).expect("id");
    broken.wecom = Some((corpid.clone(), 1000009));
    broken.configured_secret = "not-the-secret".to_string();
    register_as(&app.sim, broken.appid.as_str(), "the-real-secret");
    app.write_config(&[app.accounts[0].clone(), broken.clone()]);
    json(app.admin_reload(Some(ADMIN_KEY)).await, StatusCode::OK).await;
    let last_error = Wait::up_to(Duration::from_secs(10))
        .for_value("the broken app fails", || {
            app.state
                .directory
                .get(&broken.appid)
                .and_then(|s| s.status().last_error.clone())
        })
        .await;
    assert_eq!(last_error.errcode, Some(40001));
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(&format!(
            "wxtoken_account_config_error{{appid=\"{}\",errcode=\"40001\"",
            broken.appid
        )),
        "{metrics}"
    );
    let ok = app
        .get_token(app.accounts[0].appid.as_str(), Some(READER_KEY))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[actix_web::test]
async fn tickets_and_wecom_apps_can_share_a_simulator_with_short_lifetimes() {
    // Tickets live as long as the simulator says; here shorter than tokens,
    // so they are refreshed on their own schedule too.
    let (app, appid, first) = with_jsapi(
        TestAppBuilder::new().sim_config(SimConfig {
            ticket_ttl: Duration::from_secs(3),
            ..SimConfig::default()
        }),
        Mode::Stable,
    )
    .await;
    Wait::up_to(Duration::from_secs(10))
        .every(Duration::from_millis(100))
        .until_async("the ticket is renewed", async || {
            app.wait_for_ticket(&appid, "jsapi").await["ticket"] != first["ticket"]
        })
        .await;
}
