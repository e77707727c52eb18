//! Contract §8 in a whole server: long-polls that wake when a token is
//! published and end at their `wait`, the per-client request counters, and
//! `GET /v1/appids`.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use wxtoken::domain::Mode;

use crate::app::{ADMIN_KEY, READER_KEY, SCOPED_KEY, TestApp, TestAppBuilder, json, spawn_app};
use crate::support::metric_value;
use crate::support::wait::Wait;

/// `GET /v1/token/{appid}?<query>` with the reader's key.
async fn poll(app: &TestApp, appid: &str, query: &str) -> reqwest::Response {
    app.call(
        Method::GET,
        &format!("/v1/token/{appid}?{query}"),
        Some(READER_KEY),
    )
    .await
}

/// Waits until the server's clock is past the second `fetched_at`, so that a
/// token fetched now has a later `fetched_at` (it is whole seconds).
async fn next_second(app: &TestApp, fetched_at: i64) {
    Wait::up_to(Duration::from_secs(3))
        .every(Duration::from_millis(10))
        .until("the clock passes the token's second", || {
            app.state.clock.now_unix() > fetched_at
        })
        .await;
}

/// How many long-polls the server holds, from `/metrics`.
async fn held(app: &TestApp) -> f64 {
    metric_value(&app.metrics().await, "wxtoken_long_polls_held", &[])
}

#[actix_web::test]
async fn a_held_long_poll_answers_within_100_ms_of_a_rotation_with_the_new_token() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Legacy).appid.to_string();
    let first = json(
        app.get_token(&appid, Some(READER_KEY)).await,
        StatusCode::OK,
    )
    .await;
    let fetched_at = first["fetched_at"].as_i64().expect("fetched_at");

    // Three clients hold; none is answered while the token stays.
    let query = format!("wait=30s&after={fetched_at}");
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let request = app
                .request(
                    Method::GET,
                    &format!("/v1/token/{appid}?{query}"),
                    Some(READER_KEY),
                )
                .send();
            actix_web::rt::spawn(async move {
                let response = request.await.expect("the server answers");
                (Instant::now(), response)
            })
        })
        .collect();
    Wait::up_to(Duration::from_secs(5))
        .until_async("the three long-polls are held", async || {
            held(&app).await == 3.0
        })
        .await;
    assert!(waiting.iter().all(|w| !w.is_finished()));

    next_second(&app, fetched_at).await;
    let rotated = json(
        app.admin_refresh(&appid, Some(ADMIN_KEY)).await,
        StatusCode::OK,
    )
    .await;
    let rotated_at = Instant::now();
    assert_ne!(rotated["access_token"], first["access_token"]);

    for waiter in waiting {
        let (answered_at, response) = waiter.await.expect("the long-poll task");
        // The admin refresh answers after the token is published; a held
        // request is answered at the publication itself.
        let late = answered_at.saturating_duration_since(rotated_at);
        assert!(
            late < Duration::from_millis(100),
            "answered {late:?} after the rotation"
        );
        let body = json(response, StatusCode::OK).await;
        assert_eq!(body["access_token"], rotated["access_token"]);
        assert!(body["fetched_at"].as_i64().expect("fetched_at") > fetched_at);
    }
    assert_eq!(held(&app).await, 0.0);
}

#[actix_web::test]
async fn a_long_poll_without_a_newer_token_ends_at_its_wait_with_the_current_token() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Stable).appid.to_string();
    let first = json(
        app.get_token(&appid, Some(READER_KEY)).await,
        StatusCode::OK,
    )
    .await;
    let fetched_at = first["fetched_at"].as_i64().expect("fetched_at");

    for (query, wait) in [
        (format!("wait=1s&after={fetched_at}"), 1_000),
        (format!("after={fetched_at}&wait=1500ms"), 1_500),
        (format!("wait=2&after={fetched_at}"), 2_000),
    ] {
        let started = Instant::now();
        let body = json(poll(&app, &appid, &query).await, StatusCode::OK).await;
        let took = started.elapsed();
        // The end is jittered up to a tenth early, never late.
        let wait = Duration::from_millis(wait);
        assert!(
            took >= wait.mul_f64(0.9) && took < wait + Duration::from_millis(500),
            "{query}: answered after {took:?}"
        );
        assert_eq!(body["access_token"], first["access_token"]);
        assert!(body["expires_in"].as_u64().expect("expires_in") > 0);
    }

    // A token already newer than `after`, or no `after` at all: at once.
    for query in [
        format!("wait=30s&after={}", fetched_at - 1),
        "wait=30s".to_string(),
        "wait=0&after=99999999999".to_string(),
    ] {
        let started = Instant::now();
        let body = json(poll(&app, &appid, &query).await, StatusCode::OK).await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{query}: held"
        );
        assert_eq!(body["access_token"], first["access_token"]);
    }
}

#[actix_web::test]
async fn long_poll_parameters_out_of_bounds_are_refused_before_anything_is_held() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Stable).appid.to_string();
    for query in [
        "wait=301s",
        "wait=10m",
        "wait=soon",
        "wait=-5",
        "wait=60s&after=yesterday",
        "wait=60s&after=1.5",
    ] {
        let body = json(poll(&app, &appid, query).await, StatusCode::BAD_REQUEST).await;
        assert_eq!(body["error"], "bad_request", "{query}: {body}");
        let message = body["message"].as_str().expect("a message");
        assert!(
            message.contains("wait") || message.contains("after"),
            "{query}: {message}"
        );
    }
    // The key and the scope are checked first, as for a plain read.
    let other = app.account(Mode::Legacy).appid.to_string();
    let scoped = app
        .call(
            Method::GET,
            &format!("/v1/token/{other}?wait=30s"),
            Some(SCOPED_KEY),
        )
        .await;
    assert_eq!(scoped.status(), StatusCode::FORBIDDEN);
    let anonymous = app
        .call(Method::GET, &format!("/v1/token/{appid}?wait=30s"), None)
        .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(held(&app).await, 0.0);
}

#[actix_web::test]
async fn a_long_poll_held_across_a_reload_that_restarts_its_account_gets_the_new_token() {
    let app = spawn_app().await;
    let account = app.account(Mode::Legacy).clone();
    let appid = account.appid.to_string();
    let first = json(
        app.get_token(&appid, Some(READER_KEY)).await,
        StatusCode::OK,
    )
    .await;
    let fetched_at = first["fetched_at"].as_i64().expect("fetched_at");
    let waiter = {
        let request = app
            .request(
                Method::GET,
                &format!("/v1/token/{appid}?wait=30s&after={fetched_at}"),
                Some(READER_KEY),
            )
            .send();
        actix_web::rt::spawn(request)
    };
    Wait::up_to(Duration::from_secs(5))
        .until_async("the long-poll is held", async || held(&app).await == 1.0)
        .await;

    // The account's mode changes: a new slot, a new token fetched for it.
    next_second(&app, fetched_at).await;
    let mut accounts = app.accounts.clone();
    for a in &mut accounts {
        if a.appid == account.appid {
            a.mode = Mode::Stable;
        }
    }
    app.write_config(&accounts);
    let summary = json(app.admin_reload(Some(ADMIN_KEY)).await, StatusCode::OK).await;
    assert!(
        summary["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|a| a == appid.as_str())),
        "{summary}"
    );
    let body = json(
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the held request is answered before its wait ends")
            .expect("the task")
            .expect("the server answers"),
        StatusCode::OK,
    )
    .await;
    assert!(body["fetched_at"].as_i64().expect("fetched_at") > fetched_at);
    assert_eq!(
        body["access_token"].as_str(),
        Some(app.current_token(&account.appid).as_str())
    );
}

#[actix_web::test]
async fn client_requests_are_counted_per_configured_client_and_appids_lists_the_scope() {
    let app = TestAppBuilder::new()
        .accounts(&[Mode::Stable, Mode::Legacy])
        .spawn()
        .await;
    let first = app.accounts[0].appid.to_string();
    let second = app.accounts[1].appid.to_string();
    for _ in 0..3 {
        json(
            app.get_token(&first, Some(READER_KEY)).await,
            StatusCode::OK,
        )
        .await;
    }
    json(
        app.get_token(&first, Some(SCOPED_KEY)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        app.get_token(&second, Some(SCOPED_KEY)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get_token(&first, Some("not-a-key-of-anyone"))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    let scoped: Value = json(
        app.call(Method::GET, "/v1/appids", Some(SCOPED_KEY)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(scoped["appids"], serde_json::json!([first]));
    let all: Value = json(
        app.call(Method::GET, "/v1/appids", Some(READER_KEY)).await,
        StatusCode::OK,
    )
    .await;
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort();
    assert_eq!(all["appids"], serde_json::json!(expected));
    assert_eq!(
        app.call(Method::GET, "/v1/appids", None).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let text = app.metrics().await;
    let count = |client: &str, route: &str, status: &str| {
        metric_value(
            &text,
            "wxtoken_client_requests_total",
            &[("client", client), ("route", route), ("status", status)],
        )
    };
    assert_eq!(count("reader", "/v1/token/{appid}", "200"), 3.0);
    assert_eq!(count("scoped", "/v1/token/{appid}", "200"), 1.0);
    assert_eq!(count("scoped", "/v1/token/{appid}", "403"), 1.0);
    assert_eq!(count("scoped", "/v1/appids", "200"), 1.0);
    // A refused key is no client's: no series names it.
    assert!(
        !text.contains("not-a-key"),
        "a presented key reached /metrics"
    );
    let clients: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("wxtoken_client_requests_total{"))
        .filter_map(|l| l.split("client=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        clients
            .iter()
            .all(|c| ["admin", "reader", "scoped"].contains(c)),
        "{clients:?}"
    );
}
