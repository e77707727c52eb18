//! The HTTP API of contract §3, end to end: a real server on loopback, a real
//! simulator behind it, requests over HTTP.

use std::time::Duration;

use futures::future::join_all;
use reqwest::{Method, StatusCode, header};
use serde_json::Value;
use wxtoken::domain::Mode;
use wxtoken::simulator::{FaultSpec, SimConfig};

use crate::app::{ADMIN_KEY, READER_KEY, SCOPED_KEY, TestAppBuilder, json, spawn_app};
use crate::support::raw_http::{post_chunked, read_answer, send_post_head};
use crate::support::{appids_in, fault_once, metric_value};

const TOKEN_FIELDS: [&str; 5] = [
    "appid",
    "access_token",
    "expires_in",
    "expires_at",
    "fetched_at",
];

fn header_str(response: &reqwest::Response, name: header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn retry_after(response: &reqwest::Response) -> u64 {
    header_str(response, header::RETRY_AFTER)
        .and_then(|v| v.parse().ok())
        .expect("a numeric Retry-After header")
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"], code, "body: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error needs a message: {body}"
    );
}

#[actix_web::test]
async fn token_is_served_with_the_contract_shape_and_cache_control() {
    let app = spawn_app().await;
    for account in app.accounts.clone() {
        let before = app.state.clock.now_unix();
        let response = app
            .get_token(account.appid.as_str(), Some(READER_KEY))
            .await;
        let cache = header_str(&response, header::CACHE_CONTROL);
        let body = json(response, StatusCode::OK).await;
        let after = app.state.clock.now_unix();

        let fields: Vec<&str> = body
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = TOKEN_FIELDS.to_vec();
        expected.sort();
        let mut fields = fields;
        fields.sort();
        assert_eq!(fields, expected, "{body}");
        assert_eq!(body["appid"], account.appid.as_str());
        let token = body["access_token"].as_str().expect("a token");
        assert_eq!(token, app.current_token(&account.appid));
        assert!(app.sim.is_token_valid(account.appid.as_str(), token));

        let expires_in = body["expires_in"].as_i64().expect("expires_in");
        let expires_at = body["expires_at"].as_i64().expect("expires_at");
        let fetched_at = body["fetched_at"].as_i64().expect("fetched_at");
        // Stable: until the real expiry. Legacy: until the planned refresh
        // (80% ± 5% of the lifetime) plus WeChat's 5-minute grace.
        let bounds = match account.mode {
            Mode::Stable => 7000..=7200,
            Mode::Legacy => 5600..=6420,
        };
        assert!(
            bounds.contains(&expires_in),
            "{mode}: {body}",
            mode = account.mode
        );
        assert!(
            (before..=after).contains(&(expires_at - expires_in)),
            "{body}"
        );
        assert!(fetched_at <= after && fetched_at >= before - 60, "{body}");
        let record = app
            .state
            .directory
            .get(&account.appid)
            .and_then(|s| s.token())
            .expect("a record");
        assert!(
            expires_at * 1000 <= record.serve_until_ms,
            "expires_at is past the serve time"
        );
        assert!(
            expires_at * 1000 <= record.expires_at_ms,
            "expires_at is past the real expiry"
        );
        assert_eq!(cache.as_deref(), Some("private, max-age=60"));
    }
}

#[actix_web::test]
async fn cache_max_age_follows_expires_in_when_under_a_minute() {
    let app = TestAppBuilder::new()
        .account(Mode::Legacy)
        .sim_config(SimConfig {
            token_ttl: Duration::from_secs(40),
            grace: Duration::from_secs(5),
            ..SimConfig::default()
        })
        .spawn()
        .await;
    let appid = app.account(Mode::Legacy).appid.clone();
    let response = app.get_token(appid.as_str(), Some(READER_KEY)).await;
    let cache = header_str(&response, header::CACHE_CONTROL);
    let body = json(response, StatusCode::OK).await;
    let expires_in = body["expires_in"].as_u64().expect("expires_in");
    // Legacy: at most the planned refresh (~80% of 40 s) plus the 5 s grace.
    assert!((1..=40).contains(&expires_in), "{body}");
    assert_eq!(cache, Some(format!("private, max-age={expires_in}")));
}

#[actix_web::test]
async fn token_request_without_a_key_is_unauthorized() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Stable).appid.to_string();
    let response = app.get_token(&appid, None).await;
    let challenge = header_str(&response, header::WWW_AUTHENTICATE);
    let body = json(response, StatusCode::UNAUTHORIZED).await;
    assert_error(&body, "unauthorized");
    assert!(challenge.is_some_and(|c| c.starts_with("Bearer")));
}

#[actix_web::test]
async fn token_request_with_a_wrong_key_is_unauthorized() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Stable).appid.to_string();
    for bad in ["not-a-client-key", "", "   "] {
        let response = app.get_token(&appid, Some(bad)).await;
        assert!(header_str(&response, header::WWW_AUTHENTICATE).is_some());
        let body = json(response, StatusCode::UNAUTHORIZED).await;
        assert_error(&body, "unauthorized");
        assert!(!body.to_string().contains("not-a-client-key"));
    }
    let basic = app
        .request(Method::GET, &format!("/v1/token/{appid}"), None)
        .basic_auth("user", Some(READER_KEY))
        .send()
        .await
        .expect("an answer");
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn scoped_client_is_forbidden_outside_its_scope_even_for_unknown_appids() {
    let app = spawn_app().await;
    let first = app.accounts[0].appid.to_string();
    let second = app.accounts[1].appid.to_string();
    assert_eq!(
        app.get_token(&first, Some(SCOPED_KEY)).await.status(),
        StatusCode::OK
    );

    let body = json(
        app.get_token(&second, Some(SCOPED_KEY)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_error(&body, "forbidden");
    // The same answer for an appid that does not exist: no probing.
    let body = json(
        app.get_token("wx9999999999999999", Some(SCOPED_KEY)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_error(&body, "forbidden");
    let body = json(
        app.report_stale(&second, "whatever", Some(SCOPED_KEY))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_error(&body, "forbidden");
}

#[actix_web::test]
async fn non_admin_clients_are_forbidden_on_admin_routes() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Stable).appid.to_string();
    for key in [READER_KEY, SCOPED_KEY] {
        let body = json(app.accounts(Some(key)).await, StatusCode::FORBIDDEN).await;
        assert_error(&body, "forbidden");
        let body = json(
            app.admin_refresh(&appid, Some(key)).await,
            StatusCode::FORBIDDEN,
        )
        .await;
        assert_error(&body, "forbidden");
    }
    let body = json(app.accounts(None).await, StatusCode::UNAUTHORIZED).await;
    assert_error(&body, "unauthorized");
}

#[actix_web::test]
async fn unknown_appid_is_not_found() {
    let app = spawn_app().await;
    for response in [
        app.get_token("wx9999999999999999", Some(READER_KEY)).await,
        app.report_stale("wx9999999999999999", "some-token", Some(READER_KEY))
            .await,
        app.admin_refresh("wx9999999999999999", Some(ADMIN_KEY))
            .await,
    ] {
        let body = json(response, StatusCode::NOT_FOUND).await;
        assert_error(&body, "unknown_appid");
    }
}

#[actix_web::test]
async fn malformed_appid_is_a_bad_request() {
    let app = spawn_app().await;
    for bad in ["wx%20space", "wx%2F..%2Fetc", "wx!bang", &"a".repeat(65)] {
        let response = app.get_token(bad, Some(READER_KEY)).await;
        let body = json(response, StatusCode::BAD_REQUEST).await;
        assert_error(&body, "bad_request");
    }
    let body = json(
        app.report_stale("wx!bang", "token", Some(READER_KEY)).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(&body, "bad_request");
}

#[actix_web::test]
async fn refresh_with_malformed_json_is_a_bad_request() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Legacy).appid.to_string();
    for body in [
        "{not json",
        "",
        "[1,2",
        "\"just a string\"",
        "{\"stale_token\": 42}",
    ] {
        let answer = json(
            app.refresh(&appid, body, Some(READER_KEY)).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_error(&answer, "bad_request");
    }
}

#[actix_web::test]
async fn refresh_without_stale_token_is_a_bad_request() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Legacy).appid.to_string();
    for body in ["{}", "{\"token\": \"abc\"}", "{\"stale_token\": \"\"}"] {
        let answer = json(
            app.refresh(&appid, body, Some(READER_KEY)).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_error(&answer, "bad_request");
        assert!(
            answer["message"]
                .as_str()
                .is_some_and(|m| m.contains("stale_token")),
            "{answer}"
        );
    }
}

#[actix_web::test]
async fn refresh_with_a_body_over_8_kib_is_a_bad_request() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Legacy).appid.to_string();
    let big = format!("{{\"stale_token\": \"{}\"}}", "x".repeat(9 * 1024));
    let answer = json(
        app.refresh(&appid, big.clone(), Some(READER_KEY)).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(&answer, "bad_request");

    // Without a Content-Length (chunked), the limit holds as well.
    let (status, body) = post_chunked(
        app.addr,
        &format!("/v1/token/{appid}/refresh"),
        READER_KEY,
        big.as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("a JSON body");
    assert_error(&answer, "bad_request");
}

#[actix_web::test]
async fn unknown_route_and_wrong_method_get_json_errors() {
    let app = spawn_app().await;
    let body = json(
        app.call(Method::GET, "/v2/nothing", Some(READER_KEY)).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_error(&body, "not_found");
    let body = json(
        app.call(Method::GET, "/v1/token/", Some(READER_KEY)).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_error(&body, "not_found");

    let appid = app.account(Mode::Stable).appid.to_string();
    let response = app
        .call(
            Method::DELETE,
            &format!("/v1/token/{appid}"),
            Some(READER_KEY),
        )
        .await;
    assert_eq!(header_str(&response, header::ALLOW).as_deref(), Some("GET"));
    let body = json(response, StatusCode::METHOD_NOT_ALLOWED).await;
    assert_error(&body, "method_not_allowed");
    let response = app
        .call(
            Method::GET,
            &format!("/v1/token/{appid}/refresh"),
            Some(READER_KEY),
        )
        .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[actix_web::test]
async fn refresh_returns_current_token_without_upstream_call_when_stale_token_is_old() {
    let app = spawn_app().await;
    for mode in [Mode::Legacy, Mode::Stable] {
        let appid = app.account(mode).appid.clone();
        let old = app.current_token(&appid);
        let rotated = json(
            app.admin_refresh(appid.as_str(), Some(ADMIN_KEY)).await,
            StatusCode::OK,
        )
        .await;
        let current = rotated["access_token"]
            .as_str()
            .expect("a token")
            .to_string();
        assert_ne!(current, old, "{mode}: the admin refresh rotates the token");

        let calls_before = app.sim.stats();
        for stale in [old.as_str(), "a-token-wechat-never-issued"] {
            let body = json(
                app.report_stale(appid.as_str(), stale, Some(READER_KEY))
                    .await,
                StatusCode::OK,
            )
            .await;
            assert_eq!(body["access_token"], current.as_str());
            assert_eq!(body["refreshed"], false);
            for field in TOKEN_FIELDS {
                assert!(body.get(field).is_some(), "{field} missing: {body}");
            }
        }
        assert_eq!(
            app.sim.stats().calls,
            calls_before.calls,
            "{mode}: no upstream call"
        );
    }
}

#[actix_web::test]
async fn concurrent_reports_of_the_current_legacy_token_share_one_upstream_call() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Legacy).appid.clone();
    let current = app.current_token(&appid);
    let before = app.sim.stats().calls_to(appid.as_str(), "token");

    let answers =
        join_all((0..20).map(|_| app.report_stale(appid.as_str(), &current, Some(READER_KEY))))
            .await;
    let mut tokens = Vec::new();
    let mut refreshed = 0;
    for response in answers {
        let body = json(response, StatusCode::OK).await;
        tokens.push(body["access_token"].as_str().expect("a token").to_string());
        refreshed += usize::from(body["refreshed"] == true);
    }
    assert_eq!(
        app.sim.stats().calls_to(appid.as_str(), "token") - before,
        1,
        "exactly one upstream call"
    );
    let new = &tokens[0];
    assert!(
        tokens.iter().all(|t| t == new),
        "every caller gets the same token"
    );
    assert_ne!(new, &current);
    assert!(refreshed >= 1);
    assert!(app.sim.is_token_valid(appid.as_str(), new));
    assert_eq!(&app.current_token(&appid), new);
}

#[actix_web::test]
async fn concurrent_reports_of_the_current_stable_token_make_one_normal_and_one_forced_call() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Stable).appid.clone();
    let current = app.current_token(&appid);
    let stats = app.sim.stats();
    let calls_before = stats.calls_to(appid.as_str(), "stable_token");
    let forces_before = stats.force_refreshes_of(appid.as_str());

    let answers =
        join_all((0..20).map(|_| app.report_stale(appid.as_str(), &current, Some(READER_KEY))))
            .await;
    let mut tokens = Vec::new();
    for response in answers {
        let body = json(response, StatusCode::OK).await;
        tokens.push(body["access_token"].as_str().expect("a token").to_string());
    }
    let stats = app.sim.stats();
    assert_eq!(
        stats.calls_to(appid.as_str(), "stable_token") - calls_before,
        2,
        "a normal call, then one force"
    );
    assert_eq!(stats.force_refreshes_of(appid.as_str()) - forces_before, 1);
    let new = &tokens[0];
    assert!(tokens.iter().all(|t| t == new));
    assert_ne!(new, &current);
    assert!(app.sim.is_token_valid(appid.as_str(), new));
}

#[actix_web::test]
async fn admin_refresh_rotates_and_a_second_forced_stable_refresh_within_30s_is_throttled() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Stable).appid.clone();
    let old = app.current_token(&appid);

    let body = json(
        app.admin_refresh(appid.as_str(), Some(ADMIN_KEY)).await,
        StatusCode::OK,
    )
    .await;
    let new = body["access_token"].as_str().expect("a token");
    assert_ne!(new, old);
    assert_eq!(body["refreshed"], true);
    assert_eq!(body["appid"], appid.as_str());
    assert!(app.sim.is_token_valid(appid.as_str(), new));
    assert_eq!(app.sim.stats().force_refreshes_of(appid.as_str()), 1);

    let response = app.admin_refresh(appid.as_str(), Some(ADMIN_KEY)).await;
    let wait = retry_after(&response);
    let body = json(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_error(&body, "refresh_throttled");
    assert!((1..=30).contains(&wait), "Retry-After {wait}");
    assert_eq!(app.sim.stats().force_refreshes_of(appid.as_str()), 1);
    // The token keeps being served.
    let body = json(
        app.get_token(appid.as_str(), Some(READER_KEY)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["access_token"], new);
}

#[actix_web::test]
async fn a_second_admin_refresh_of_a_legacy_account_within_30s_is_throttled_with_retry_after() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Legacy).appid.clone();
    let first = app.admin_refresh(appid.as_str(), Some(ADMIN_KEY)).await;
    assert_eq!(first.status(), StatusCode::OK);
    let token = app.current_token(&appid);
    let calls = app.sim.stats().calls_to(appid.as_str(), "token");
    for _ in 0..5 {
        let response = app.admin_refresh(appid.as_str(), Some(ADMIN_KEY)).await;
        let wait = retry_after(&response);
        let body = json(response, StatusCode::TOO_MANY_REQUESTS).await;
        assert_error(&body, "refresh_throttled");
        assert!((1..=30).contains(&wait), "Retry-After {wait}");
    }
    assert_eq!(app.sim.stats().calls_to(appid.as_str(), "token"), calls);
    assert_eq!(
        app.current_token(&appid),
        token,
        "no rotation while throttled"
    );
}

#[actix_web::test]
async fn accounts_lists_every_account_with_its_state_and_never_a_token_or_secret() {
    let app = TestAppBuilder::new()
        .accounts(&[Mode::Stable, Mode::Legacy])
        .broken_account(Mode::Stable)
        .spawn()
        .await;
    let response = app.accounts(Some(ADMIN_KEY)).await;
    let text = response.text().await.expect("a body");
    let list: Value = serde_json::from_str(&text).expect("JSON");
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), app.accounts.len());
    for account in &app.accounts {
        let row = list
            .iter()
            .find(|r| r["appid"] == account.appid.as_str())
            .unwrap_or_else(|| panic!("{} missing from {text}", account.appid));
        for field in [
            "name",
            "mode",
            "state",
            "expires_at",
            "serve_until",
            "next_refresh_at",
            "last_error",
            "upstream_calls_today",
        ] {
            assert!(row.get(field).is_some(), "{field} missing: {row}");
        }
        assert_eq!(row["mode"], account.mode.as_str());
        assert!(
            row["upstream_calls_today"].as_u64().is_some_and(|n| n >= 1),
            "{row}"
        );
        assert!(row["next_refresh_at"].as_i64().is_some(), "{row}");
        if account.broken {
            assert_eq!(row["state"], "failing", "{row}");
            assert_eq!(row["last_error"]["errcode"], 40125, "{row}");
            assert!(row["last_error"]["at"].as_i64().is_some());
            assert!(row["last_error"]["errmsg"].as_str().is_some());
            assert_eq!(row["last_error"]["config_error"], true, "{row}");
            assert!(
                row["last_error"]["ip"].is_null(),
                "40125 names no IP: {row}"
            );
            assert!(row["expires_at"].is_null());
            assert!(row["serve_until"].is_null());
        } else {
            assert_eq!(row["state"], "ready", "{row}");
            assert!(row["last_error"].is_null());
            let expires_at = row["expires_at"].as_i64().expect("an expiry");
            let serve_until = row["serve_until"].as_i64().expect("a serve time");
            assert!(serve_until <= expires_at, "{row}");
            assert!(serve_until > app.sim.clock().now_unix(), "{row}");
            assert!(
                !text.contains(&app.current_token(&account.appid)),
                "a token leaked: {text}"
            );
        }
        assert!(!text.contains(&account.secret), "a secret leaked: {text}");
        assert!(
            !text.contains(&account.configured_secret),
            "a secret leaked: {text}"
        );
    }
}

#[actix_web::test]
async fn strict_readyz_names_a_failing_account_while_the_others_keep_serving_tokens() {
    let app = TestAppBuilder::new()
        .accounts(&[Mode::Stable, Mode::Legacy])
        .broken_account(Mode::Stable)
        .spawn()
        .await;
    let broken = app.broken().next().expect("a broken account").clone();

    let body = json(app.readyz_strict().await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_error(&body, "not_ready");
    assert_eq!(appids_in(&body, "not_ready"), vec![broken.appid.as_str()]);
    assert_eq!(body["not_ready"][0]["errcode"], 40125, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(broken.appid.as_str()))
    );

    for account in app.healthy() {
        let body = json(
            app.get_token(account.appid.as_str(), Some(READER_KEY))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            body["access_token"],
            app.current_token(&account.appid).as_str()
        );
    }
    let response = app.get_token(broken.appid.as_str(), Some(READER_KEY)).await;
    let wait = retry_after(&response);
    let body = json(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_error(&body, "token_unavailable");
    assert_eq!(body["errcode"], 40125);
    assert!(wait >= 1);

    let healthz = app.healthz().await;
    assert_eq!(healthz.status(), StatusCode::OK);
    assert_eq!(healthz.text().await.expect("a body"), "ok");
}

#[actix_web::test]
async fn readyz_stays_ok_for_the_load_balancer_when_one_account_fails_and_lists_it() {
    let app = TestAppBuilder::new()
        .accounts(&[Mode::Stable, Mode::Legacy])
        .broken_account(Mode::Legacy)
        .spawn()
        .await;
    let broken = app.broken().next().expect("a broken account").clone();

    let response = app.readyz().await;
    let cache = header_str(&response, header::CACHE_CONTROL);
    let body = json(response, StatusCode::OK).await;
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["accounts"], 3, "{body}");
    assert_eq!(appids_in(&body, "failing"), vec![broken.appid.as_str()]);
    assert_eq!(body["failing"][0]["state"], "failing", "{body}");
    assert_eq!(body["failing"][0]["errcode"], 40125, "{body}");
    assert_eq!(body["store"], "ok", "{body}");
    assert!(body.get("redis").is_none(), "no Redis configured: {body}");
    assert_eq!(cache.as_deref(), Some("no-store"));

    // HEAD, as some load balancers send it, gets the same status.
    let head = app.call(Method::HEAD, "/readyz", None).await;
    assert_eq!(head.status(), StatusCode::OK);
}

#[actix_web::test]
async fn readyz_stays_ok_while_an_account_added_by_reload_fetches_its_first_token() {
    let app = spawn_app().await;
    let added = app.new_account(Mode::Stable);
    app.sim.inject_fault(FaultSpec {
        appid: Some(added.appid.to_string()),
        count: Some(1),
        delay_ms: Some(2_000),
        ..FaultSpec::default()
    });
    let mut accounts = app.accounts.clone();
    accounts.push(added.clone());
    app.write_config(&accounts);
    json(app.admin_reload(Some(ADMIN_KEY)).await, StatusCode::OK).await;

    // Its first fetch hangs at WeChat: the replica stays in the load balancer.
    let body = json(app.readyz().await, StatusCode::OK).await;
    assert_eq!(appids_in(&body, "failing"), vec![added.appid.as_str()]);
    assert_eq!(body["failing"][0]["state"], "fetching", "{body}");
    let strict = json(app.readyz_strict().await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(appids_in(&strict, "not_ready"), vec![added.appid.as_str()]);
}

#[actix_web::test]
async fn readyz_is_ok_when_every_account_has_a_token() {
    let app = spawn_app().await;
    for response in [app.readyz().await, app.readyz_strict().await] {
        let body = json(response, StatusCode::OK).await;
        assert_eq!(body["status"], "ready");
        assert_eq!(body["accounts"], 2);
        assert_eq!(body["failing"], serde_json::json!([]), "{body}");
        assert_eq!(body["store"], "ok", "{body}");
    }
}

#[actix_web::test]
async fn readyz_with_an_unknown_strict_value_is_a_bad_request() {
    let app = spawn_app().await;
    let body = json(
        app.call(Method::GET, "/readyz?strict=yes-please", None)
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(&body, "bad_request");
    for off in ["/readyz?strict=0", "/readyz?strict=false"] {
        let response = app.request(Method::GET, off, None).send().await;
        assert_eq!(
            response.expect("an answer").status(),
            StatusCode::OK,
            "{off}"
        );
    }
}

#[actix_web::test]
async fn a_refresh_body_trickled_byte_by_byte_is_cut_off_with_408_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let appid = app.account(Mode::Stable).appid.to_string();
    let body = br#"{"stale_token": "a-token-sent-one-byte-per-second-by-a-hostile-client"}"#;
    let stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    send_post_head(
        &mut writer,
        app.addr,
        &format!("/v1/token/{appid}/refresh"),
        READER_KEY,
        body.len(),
    )
    .await;
    let started = std::time::Instant::now();
    let trickle = actix_web::rt::spawn(async move {
        for byte in body {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    let answer = read_answer(&mut reader, Duration::from_secs(13))
        .await
        .expect("an answer while the body is still trickling");
    let elapsed = started.elapsed();
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(
        elapsed >= Duration::from_secs(9) && elapsed < Duration::from_secs(12),
        "answered after {elapsed:?}"
    );
    assert_error(&answer.json(), "request_timeout");
    assert!(answer.head.contains("connection: close"), "{answer:?}");
    // ...and the connection is closed, although the client keeps sending.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), reader.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection stays open after the 408");
    trickle.abort();

    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wxtoken_http_requests_total",
            &[("route", "/v1/token/{appid}/refresh"), ("status", "408")]
        ),
        1.0,
        "{metrics}"
    );
}

#[actix_web::test]
async fn metrics_carry_route_patterns_and_per_account_series() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Stable).appid.to_string();
    assert_eq!(
        app.get_token(&appid, Some(READER_KEY)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get_token(&appid, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let _ = app.call(Method::GET, "/no/such/path", None).await;

    let text = app.metrics().await;
    let token_route = [("route", "/v1/token/{appid}"), ("status", "200")];
    assert!(
        metric_value(&text, "wxtoken_http_requests_total", &token_route) >= 1.0,
        "{text}"
    );
    assert!(
        metric_value(
            &text,
            "wxtoken_http_requests_total",
            &[("route", "/v1/token/{appid}"), ("status", "401")]
        ) >= 1.0
    );
    assert!(
        metric_value(
            &text,
            "wxtoken_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ) >= 1.0
    );
    assert!(
        metric_value(
            &text,
            "wxtoken_http_request_duration_seconds_count",
            &[("route", "/v1/token/{appid}")]
        ) >= 2.0
    );
    assert!(
        !text.contains(&format!("route=\"/v1/token/{appid}\"")),
        "raw paths must not become labels"
    );

    for account in &app.accounts {
        let id = account.appid.as_str();
        assert_eq!(
            metric_value(
                &text,
                "wxtoken_refreshes_total",
                &[("appid", id), ("reason", "startup"), ("result", "ok")]
            ),
            1.0,
            "{text}"
        );
        assert!(text.contains(&format!(
            "wxtoken_refreshes_total{{appid=\"{id}\",reason=\"admin\",result=\"error\"}} 0"
        )));
        assert!(metric_value(&text, "wxtoken_upstream_calls_today", &[("appid", id)]) >= 1.0);
        assert!(
            metric_value(
                &text,
                "wxtoken_token_expiry_timestamp_seconds",
                &[("appid", id)]
            ) > 0.0
        );
        assert!(text.contains(&format!("wxtoken_actor_restarts_total{{appid=\"{id}\"}} 0")));
        assert!(!text.contains(&app.current_token(&account.appid)));
        assert!(!text.contains(&account.secret));
    }
}

#[actix_web::test]
async fn error_bodies_never_contain_a_secret_or_a_token() {
    let app = TestAppBuilder::new()
        .account(Mode::Legacy)
        .broken_account(Mode::Legacy)
        .spawn()
        .await;
    let good = app.account(Mode::Legacy).clone();
    let broken = app.broken().next().expect("a broken account").clone();
    let token = app.current_token(&good.appid);

    let mut bodies = Vec::new();
    let mut answers = vec![
        app.get_token(broken.appid.as_str(), Some(READER_KEY)).await,
        app.report_stale(broken.appid.as_str(), "anything", Some(READER_KEY))
            .await,
        app.admin_refresh(broken.appid.as_str(), Some(ADMIN_KEY))
            .await,
    ];
    // Malformed refresh bodies that carry the token.
    for body in [
        format!("[\"{token}\"]"),
        format!("{{\"stale_token\": [\"{token}\"]}}"),
        format!("\"{token}\""),
        format!("{{\"stale_token\": \"{token}\""),
    ] {
        answers.push(
            app.refresh(good.appid.as_str(), body, Some(READER_KEY))
                .await,
        );
    }
    answers.push(app.get_token(good.appid.as_str(), Some(&token)).await);
    for (i, response) in answers.into_iter().enumerate() {
        let status = response.status();
        assert!(
            status.is_client_error() || status.is_server_error(),
            "answer {i}: expected an error, got {status}"
        );
        bodies.push(response.text().await.expect("a body"));
    }
    for body in &bodies {
        let value: Value =
            serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
        assert!(
            value["error"].is_string() && value["message"].is_string(),
            "{body}"
        );
        assert!(!body.contains(&token), "a token leaked: {body}");
        for secret in [&good.secret, &broken.secret, &broken.configured_secret] {
            assert!(!body.contains(secret.as_str()), "a secret leaked: {body}");
        }
    }
}

#[actix_web::test]
async fn without_clients_loopback_callers_need_no_key() {
    let app = TestAppBuilder::new()
        .account(Mode::Stable)
        .without_clients()
        .spawn()
        .await;
    let appid = app.account(Mode::Stable).appid.to_string();
    let body = json(app.get_token(&appid, None).await, StatusCode::OK).await;
    assert_eq!(
        body["access_token"],
        app.current_token(&app.accounts[0].appid).as_str()
    );
    assert_eq!(app.accounts(None).await.status(), StatusCode::OK);
    // A stray key is ignored, not rejected.
    assert_eq!(
        app.get_token(&appid, Some("anything")).await.status(),
        StatusCode::OK
    );
}

#[actix_web::test]
async fn failed_admin_refresh_answers_503_with_errcode_and_the_old_token_keeps_being_served() {
    let app = spawn_app().await;
    let appid = app.account(Mode::Legacy).appid.clone();
    let old = app.current_token(&appid);
    app.sim.inject_fault(FaultSpec {
        errcode: Some(45009),
        ..fault_once("token", appid.as_str())
    });

    let response = app.admin_refresh(appid.as_str(), Some(ADMIN_KEY)).await;
    let wait = retry_after(&response);
    let body = json(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_error(&body, "token_unavailable");
    assert_eq!(body["errcode"], 45009);
    // 45009 is the daily quota: nothing helps before the next China-time midnight.
    assert!((1..=86_400).contains(&wait), "Retry-After {wait}");

    let body = json(
        app.get_token(appid.as_str(), Some(READER_KEY)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["access_token"], old.as_str());
}

#[actix_web::test]
async fn building_on_a_busy_port_fails_with_the_address_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = taken.local_addr().expect("an address");
    let yaml =
        format!("listen: {addr}\naccounts:\n  - appid: wx1111111111111111\n    secret: ${{S}}\n");
    let config = wxtoken::config::load_str(
        &yaml,
        std::path::Path::new("busy.yaml"),
        &wxtoken::config::LoadOptions::from_pairs([("S", "s")]),
    )
    .expect("a valid config")
    .config;
    let error = wxtoken::startup::Application::build(config, Default::default())
        .await
        .expect_err("the port is taken");
    assert!(
        format!("{error:#}").contains(&addr.to_string()),
        "{error:#}"
    );
}
