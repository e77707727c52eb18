//! Hostile or absurd upstream answers, end to end: a whole server against the
//! real simulator over HTTP. Whatever WeChat (or something pretending to be
//! it) answers, no account is left stuck and no absurd value is served.

use std::time::Duration;

use reqwest::StatusCode;
use wxtoken::domain::{Mode, TicketKind};
use wxtoken::simulator::FaultSpec;

use crate::app::{ADMIN_KEY, READER_KEY, TestApp, TestAppBuilder, json};
use crate::support::fault_once;
use crate::support::wait::Wait;

/// How the tests wait for a recovery: every 50 ms, at most 10 s.
const POLL: Wait = Wait::up_to(Duration::from_secs(10)).every(Duration::from_millis(50));

fn body_fault(api: &str, appid: &str, body: &str) -> FaultSpec {
    FaultSpec {
        body: Some(body.to_string()),
        ..fault_once(api, appid)
    }
}

/// The state `/v1/accounts` shows for `appid`.
async fn state_of(app: &TestApp, appid: &str) -> String {
    let list = json(app.accounts(Some(ADMIN_KEY)).await, StatusCode::OK).await;
    list.as_array()
        .expect("a list")
        .iter()
        .find(|a| a["appid"] == appid)
        .map(|a| a["state"].as_str().unwrap_or_default().to_string())
        .expect("the account is listed")
}

#[actix_web::test]
async fn a_huge_expires_in_is_a_retried_decode_error_and_the_account_recovers() {
    let app = TestAppBuilder::new()
        .refresh_setting("backoff_max: 1s")
        .accounts(&[Mode::Legacy, Mode::Stable])
        .spawn()
        .await;
    for account in app.accounts.clone() {
        let appid = account.appid.to_string();
        let api = match account.mode {
            Mode::Legacy => "token",
            Mode::Stable => "stable_token",
        };
        let before = app.current_token(&account.appid);
        app.sim.inject_fault(body_fault(
            api,
            &appid,
            r#"{"access_token":"TTTTTTTTTTTTTTTTTTTT","expires_in":9223372036854775}"#,
        ));
        let response = app.admin_refresh(&appid, Some(ADMIN_KEY)).await;
        let failed = json(response, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(
            failed["message"]
                .as_str()
                .unwrap_or_default()
                .contains("expires_in"),
            "{appid}: the answer names the absurd field: {failed}"
        );
        assert_eq!(state_of(&app, &appid).await, "failing", "{appid}");
        // Retried with backoff: ready again with a valid token and a sane
        // lifetime (a new one in legacy mode; stable keeps its token).
        POLL.until_async("the account recovers", async || {
            state_of(&app, &appid).await == "ready"
        })
        .await;
        if account.mode == Mode::Legacy {
            assert_ne!(app.current_token(&account.appid), before, "{appid}");
        }
        let token = json(
            app.get_token(&appid, Some(READER_KEY)).await,
            StatusCode::OK,
        )
        .await;
        let value = token["access_token"].as_str().expect("a token");
        assert!(app.sim.is_token_valid(&appid, value), "{appid}");
        assert!(token["expires_in"].as_u64().expect("a number") <= 7200);
    }
}

#[actix_web::test]
async fn nonsense_tokens_are_never_served() {
    let huge = format!(
        r#"{{"access_token":"{}","expires_in":7200}}"#,
        "A".repeat(2_000_000)
    );
    let bodies = [
        r#"{"access_token":" ","expires_in":7200}"#,
        r#"{"access_token":"CTRL\u0000\n\r\u001b[31mXXXXXXXXXXXXXXX","expires_in":7200}"#,
        r#"{"access_token":"ünïcødé 🙂 ünïcødé 🙂","expires_in":7200}"#,
        huge.as_str(),
    ];
    // One legacy account per answer: admin refreshes are one per 30 s each.
    let mut builder = TestAppBuilder::new().refresh_setting("backoff_max: 1s");
    for _ in &bodies {
        builder = builder.account(Mode::Legacy);
    }
    let app = builder.spawn().await;
    for (account, body) in app.accounts.iter().zip(bodies) {
        let appid = account.appid.to_string();
        app.sim.inject_fault(body_fault("token", &appid, body));
        let response = app.admin_refresh(&appid, Some(ADMIN_KEY)).await;
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{body:.40}"
        );
        let served = json(
            app.get_token(&appid, Some(READER_KEY)).await,
            StatusCode::OK,
        )
        .await;
        let value = served["access_token"].as_str().expect("a token");
        assert!(
            app.sim.is_token_valid(&appid, value),
            "{body:.40}: a valid token keeps being served"
        );
    }
}

#[actix_web::test]
async fn a_huge_ticket_expires_in_is_retried_and_never_served_past_its_token() {
    let app = TestAppBuilder::new()
        .refresh_setting("backoff_max: 1s")
        .account_with_tickets(Mode::Stable, &[TicketKind::Jsapi])
        .spawn()
        .await;
    let appid = app.accounts[0].appid.to_string();
    let ticket_now = || async {
        let response = app.get_ticket(&appid, "jsapi", Some(READER_KEY)).await;
        (response.status() == StatusCode::OK).then_some(())?;
        let ticket = json(response, StatusCode::OK).await;
        Some((
            ticket["ticket"].as_str()?.to_string(),
            ticket["expires_in"].as_u64()?,
        ))
    };
    let (before, _) = ticket_now().await.expect("a ticket at start");
    app.sim.inject_fault(body_fault(
        "getticket",
        &appid,
        r#"{"errcode":0,"errmsg":"ok","ticket":"TTTTTTTTTTTTTTTTTTTT","expires_in":9223372036854774}"#,
    ));
    // A new token makes wxtoken fetch a new ticket: that answer is absurd.
    let rotated = app.admin_refresh(&appid, Some(ADMIN_KEY)).await;
    assert_eq!(rotated.status(), StatusCode::OK);
    // The absurd answer is retried with backoff: one more call brings a
    // valid ticket, which is never served past its token.
    let calls = || app.sim.stats().calls_to(&appid, "getticket");
    POLL.until("the ticket is fetched again", || calls() >= 3)
        .await;
    let (ticket, expires_in) = ticket_now().await.expect("a ticket");
    assert_eq!(ticket, before, "the simulator keeps the app's ticket");
    assert_ne!(ticket, "TTTTTTTTTTTTTTTTTTTT");
    let token = json(
        app.get_token(&appid, Some(READER_KEY)).await,
        StatusCode::OK,
    )
    .await;
    assert!(expires_in <= token["expires_in"].as_u64().expect("a number"));
    // No retry storm: the fill, the absurd answer, its retry; not one a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(calls(), 3, "the ticket is not refetched in a loop");
}
