//! The WeChat-compatible face and the token-injecting proxy (contract §7),
//! against the real simulator: tokens in WeChat's shape from the central
//! token, business calls forwarded with the current token in place of the
//! presented one, uploads and downloads streamed, a token rotated behind
//! wxtoken's back recovered with one refresh and one retry, and the limits.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wxtoken::domain::Mode;
use wxtoken::simulator::FaultSpec;

use crate::app::{ADMIN_KEY, READER_KEY, SCOPED_KEY, TestApp, TestAppBuilder};
use crate::support::{http, metric_value};

/// `GET /cgi-bin/token` at the face, as an SDK sends it.
async fn face_token(app: &TestApp, appid: &str, key: &str) -> Value {
    let res = http()
        .get(format!("{}/cgi-bin/token", app.base_url))
        .query(&[
            ("grant_type", "client_credential"),
            ("appid", appid),
            ("secret", key),
        ])
        .send()
        .await
        .expect("the face answers");
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "WeChat answers 200, errors included"
    );
    res.json().await.expect("JSON")
}

/// `GET path` with `query` at wxtoken, as an SDK pointed at it sends it.
async fn get(app: &TestApp, path: &str, query: &[(&str, &str)]) -> reqwest::Response {
    http()
        .get(format!("{}{path}", app.base_url))
        .query(query)
        .send()
        .await
        .expect("wxtoken answers")
}

/// `wxtoken_proxy_requests_total{group, outcome}` in a scrape.
fn proxied(metrics: &str, group: &str, outcome: &str) -> f64 {
    metric_value(
        metrics,
        "wxtoken_proxy_requests_total",
        &[("group", group), ("outcome", outcome)],
    )
}

/// The simulator's count of business calls on `path` with `outcome`.
fn business(app: &TestApp, path: &str, outcome: &str) -> u64 {
    app.sim
        .stats()
        .business_calls
        .get(path)
        .and_then(|o| o.get(outcome))
        .copied()
        .unwrap_or(0)
}

#[actix_web::test]
async fn the_face_answers_wechats_shape_from_the_central_token_and_never_calls_wechat() {
    let app = TestAppBuilder::new()
        .accounts(&[Mode::Stable, Mode::Legacy])
        .spawn()
        .await;
    for account in &app.accounts {
        let appid = account.appid.as_str();
        let calls = crate::support::token_calls(&app.sim.stats(), appid);
        let body = face_token(&app, appid, READER_KEY).await;
        assert_eq!(body["access_token"], app.current_token(&account.appid));
        let expires_in = body["expires_in"].as_u64().expect("expires_in");
        assert!(expires_in > 60 && expires_in <= 7200, "{body}");
        assert_eq!(
            body.as_object().map(|o| o.len()),
            Some(2),
            "exactly WeChat's fields: {body}"
        );

        let stable: Value = http()
            .post(format!("{}/cgi-bin/stable_token", app.base_url))
            .json(&json!({"grant_type": "client_credential", "appid": appid, "secret": READER_KEY}))
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .expect("JSON");
        assert_eq!(stable["access_token"], body["access_token"]);
        assert_eq!(
            crate::support::token_calls(&app.sim.stats(), appid),
            calls,
            "the face called WeChat"
        );
    }

    // WeChat's errors, in WeChat's shape, HTTP 200; never the key.
    let appid = app.accounts[0].appid.as_str();
    let other = app.accounts[1].appid.as_str();
    for (appid, key, errcode) in [
        (appid, "not-a-client-key", 40125),
        ("wx0000000000000bad", READER_KEY, 40013),
        (other, SCOPED_KEY, 40013),
        ("not an appid!", READER_KEY, 40013),
        (appid, "", 41004),
        ("", READER_KEY, 41002),
    ] {
        let body = face_token(&app, appid, key).await;
        assert_eq!(body["errcode"], errcode, "{appid} {key}: {body}");
        assert!(body["errmsg"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(body.get("access_token").is_none());
        if !key.is_empty() {
            assert!(
                !body.to_string().contains(key),
                "the key is in the answer: {body}"
            );
        }
    }
    let wrong_grant = get(
        &app,
        "/cgi-bin/token",
        &[
            ("grant_type", "password"),
            ("appid", appid),
            ("secret", READER_KEY),
        ],
    )
    .await;
    assert_eq!(
        wrong_grant.json::<Value>().await.expect("JSON")["errcode"],
        40002
    );
    let garbage = http()
        .post(format!("{}/cgi-bin/stable_token", app.base_url))
        .body("{not json")
        .send()
        .await
        .expect("answers");
    assert_eq!(garbage.status(), StatusCode::OK);
    assert_eq!(
        garbage.json::<Value>().await.expect("JSON")["errcode"],
        47001
    );

    let metrics = app.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "wxtoken_face_requests_total",
            &[("api", "token"), ("outcome", "ok")]
        ) >= 2.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "wxtoken_face_requests_total",
            &[("api", "token"), ("outcome", "errcode_40125")]
        ),
        1.0
    );
}

/// `POST /cgi-bin/stable_token` with `force_refresh: true`.
async fn force_refresh(app: &TestApp, appid: &str) -> Value {
    http()
        .post(format!("{}/cgi-bin/stable_token", app.base_url))
        .json(&json!({"grant_type": "client_credential", "appid": appid, "secret": READER_KEY, "force_refresh": true}))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON")
}

/// WeCom's `GET /cgi-bin/gettoken` at the face.
async fn gettoken(app: &TestApp, key: &str, corpid: &str) -> Value {
    get(
        app,
        "/cgi-bin/gettoken",
        &[("corpid", corpid), ("corpsecret", key)],
    )
    .await
    .json()
    .await
    .expect("JSON")
}

#[actix_web::test]
async fn force_refresh_at_the_face_is_a_stale_report_under_its_limits() {
    let app = TestAppBuilder::new().account(Mode::Stable).spawn().await;
    let appid = app.accounts[0].appid.as_str();
    let before = app.current_token(&app.accounts[0].appid);
    let first = force_refresh(&app, appid).await;
    assert_ne!(
        first["access_token"], before,
        "force_refresh rotated nothing: {first}"
    );
    assert_eq!(
        first["access_token"],
        app.current_token(&app.accounts[0].appid)
    );
    assert_eq!(app.sim.stats().force_refreshes.get(appid).copied(), Some(1));
    // Stale reports of a stable token are spaced (one per 10 minutes): the
    // second force answers the current token and WeChat is not asked.
    let second = force_refresh(&app, appid).await;
    assert_eq!(second["access_token"], first["access_token"]);
    assert_eq!(app.sim.stats().force_refreshes.get(appid).copied(), Some(1));
}

#[actix_web::test]
async fn wecom_gettoken_serves_the_one_app_of_the_corp_in_the_keys_scope() {
    let app = TestAppBuilder::new()
        .wecom_app("wwproxycorp0000001", 1000002)
        .wecom_app("wwproxycorp0000001", 1000003)
        .spawn()
        .await;
    // The scoped key holds exactly the first app.
    let one = gettoken(&app, SCOPED_KEY, "wwproxycorp0000001").await;
    assert_eq!(
        one["access_token"],
        app.current_token(&app.accounts[0].appid),
        "{one}"
    );
    // A key for every app of the corp cannot say which one it wants.
    assert_eq!(
        gettoken(&app, READER_KEY, "wwproxycorp0000001").await["errcode"],
        40013
    );
    assert_eq!(
        gettoken(&app, SCOPED_KEY, "wwothercorp0000001").await["errcode"],
        40013
    );
    assert_eq!(
        gettoken(&app, "nobody", "wwproxycorp0000001").await["errcode"],
        40125
    );

    // And WeCom business calls go to the WeCom base URLs with that token.
    let token = one["access_token"].as_str().expect("a token");
    let sent: Value = http()
        .post(format!("{}/cgi-bin/message/send", app.base_url))
        .query(&[("access_token", token)])
        .json(&json!({"touser": "zhangsan", "msgtype": "text", "agentid": 1000002, "text": {"content": "hi"}}))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(sent["errcode"], 0, "{sent}");
}

#[actix_web::test]
async fn a_business_call_is_forwarded_with_the_token_replaced_never_appended() {
    let app = TestAppBuilder::new().account(Mode::Legacy).spawn().await;
    let account = &app.accounts[0];
    let token = app.current_token(&account.appid);

    // A GET, with a credential of the caller's own that must not pass.
    let res = http()
        .get(format!("{}/cgi-bin/user/info", app.base_url))
        .query(&[
            ("access_token", token.as_str()),
            ("openid", "o-user-1"),
            ("lang", "zh_CN"),
        ])
        .header("authorization", "Bearer someone-elses-credential")
        .header("x-request-id", "req-42")
        .send()
        .await
        .expect("answers");
    assert_eq!(res.status(), StatusCode::OK);
    let info: Value = res.json().await.expect("JSON");
    assert_eq!(info["openid"], "o-user-1", "{info}");
    assert_eq!(business(&app, "/cgi-bin/user/info", "ok"), 1);
    assert_eq!(app.sim.stats().business_calls_with_authorization, 0);

    // A JSON POST.
    let sent: Value = http()
        .post(format!(
            "{}/cgi-bin/message/custom/send?access_token={token}",
            app.base_url
        ))
        .json(&json!({"touser": "o-user-1", "msgtype": "text", "text": {"content": "你好"}}))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(sent, json!({"errcode": 0, "errmsg": "ok"}));
    // The simulator refuses a second access_token: replaced, not appended,
    // whatever the caller sent.
    let twice = get(
        &app,
        "/cgi-bin/user/info",
        &[
            ("access_token", token.as_str()),
            ("openid", "o"),
            ("access_token", "another"),
        ],
    )
    .await
    .json::<Value>()
    .await
    .expect("JSON");
    assert_eq!(twice["openid"], "o", "{twice}");

    // An earlier token inside its serve time still opens the door, and the
    // current one is what reaches WeChat: the old one is dead there.
    let rotated = app
        .admin_refresh(account.appid.as_str(), Some(ADMIN_KEY))
        .await;
    assert_eq!(rotated.status(), StatusCode::OK);
    let current = app.current_token(&account.appid);
    assert_ne!(current, token);
    app.sim.advance(Duration::from_secs(301));
    assert!(!app.sim.is_token_valid(account.appid.as_str(), &token));
    let info: Value = get(
        &app,
        "/cgi-bin/user/info",
        &[("access_token", &token), ("openid", "o2")],
    )
    .await
    .json()
    .await
    .expect("JSON");
    assert_eq!(info["openid"], "o2", "{info}");

    let metrics = app.metrics().await;
    assert_eq!(proxied(&metrics, "user", "ok"), 3.0);
    assert_eq!(proxied(&metrics, "message", "ok"), 1.0);
    assert!(
        metric_value(
            &metrics,
            "wxtoken_proxy_request_duration_seconds_count",
            &[("group", "user")]
        ) >= 3.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "wxtoken_http_requests_total",
            &[("route", "proxy"), ("status", "200")]
        ),
        4.0
    );
}

#[actix_web::test]
async fn a_token_wxtoken_did_not_issue_is_refused_here_and_nothing_is_forwarded() {
    let app = TestAppBuilder::new().account(Mode::Stable).spawn().await;
    let before = app.sim.stats();
    for token in ["garbage-token", "", "x".repeat(600).as_str()] {
        let res = get(
            &app,
            "/cgi-bin/user/info",
            &[("access_token", token), ("openid", "o")],
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.expect("JSON");
        assert_eq!(body["errcode"], 40014, "{body}");
    }
    assert_eq!(
        app.sim.stats().business_calls,
        before.business_calls,
        "something was forwarded"
    );
    // Without a token, and on wxtoken's own paths, it is the API's 404.
    for path in [
        "/cgi-bin/user/info?openid=o",
        "/v1/nothing?access_token=x",
        "/metricsx",
    ] {
        let res = http()
            .get(format!("{}{path}", app.base_url))
            .send()
            .await
            .expect("answers");
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = res.json().await.expect("JSON");
        assert_eq!(body["error"], "not_found", "{path}: {body}");
    }
    // Dot segments never reach WeChat (URL parsing would resolve them).
    let token = app.current_token(&app.accounts[0].appid);
    // (sent raw: an HTTP client would resolve them itself)
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let head = format!(
        "GET /cgi-bin/%2e%2e/sim/stats?access_token={token} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        app.addr
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .expect("send");
    let answer = crate::support::raw_http::read_answer(&mut stream, Duration::from_secs(10))
        .await
        .expect("an answer");
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.json()["errcode"], 40066);
    let metrics = app.metrics().await;
    assert_eq!(proxied(&metrics, "user", "unknown_token"), 3.0);
}

/// A multipart form with `size` bytes of a recognisable pattern as `media`.
fn media_form(size: usize) -> (Vec<u8>, reqwest::multipart::Form) {
    let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let part = reqwest::multipart::Part::bytes(bytes.clone())
        .file_name("photo.jpg")
        .mime_str("image/jpeg")
        .expect("a mime type");
    (bytes, reqwest::multipart::Form::new().part("media", part))
}

#[actix_web::test]
async fn uploads_and_downloads_stream_through_the_proxy() {
    let app = TestAppBuilder::new().account(Mode::Stable).spawn().await;
    let token = app.current_token(&app.accounts[0].appid);
    // One within the retry buffer, one well past it (streamed as it arrives).
    for size in [200 * 1024, 3 * 1024 * 1024 + 17] {
        let (bytes, form) = media_form(size);
        let uploaded: Value = http()
            .post(format!("{}/cgi-bin/media/upload", app.base_url))
            .query(&[("access_token", token.as_str()), ("type", "image")])
            .multipart(form)
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .expect("JSON");
        let media_id = uploaded["media_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{uploaded}"));
        assert_eq!(uploaded["type"], "image");

        let res = get(
            &app,
            "/cgi-bin/media/get",
            &[("access_token", &token), ("media_id", media_id)],
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "image/jpeg");
        assert_eq!(
            res.headers()["content-disposition"],
            "attachment; filename=\"photo.jpg\""
        );
        assert_eq!(res.content_length(), Some(size as u64));
        let downloaded = res.bytes().await.expect("the download");
        assert!(
            downloaded.as_ref() == bytes.as_slice(),
            "the download differs ({} bytes)",
            downloaded.len()
        );
    }
    assert_eq!(business(&app, "/cgi-bin/media/upload", "ok"), 2);
    assert_eq!(business(&app, "/cgi-bin/media/get", "ok"), 2);
}

#[actix_web::test]
async fn a_token_rotated_behind_wxtokens_back_is_refreshed_once_and_the_call_retried() {
    let app = TestAppBuilder::new().account(Mode::Legacy).spawn().await;
    let account = &app.accounts[0];
    let refreshes_before = app
        .sim
        .stats()
        .tokens_issued
        .get(account.appid.as_str())
        .map_or(0, |i| i.legacy);
    let held = app.rotate_behind_wxtokens_back(account).await;

    // Five callers at once: each gets its answer, and one refresh serves all.
    let calls = (0..5).map(|i| {
        let app = &app;
        let held = held.clone();
        async move {
            let body =
                json!({"touser": format!("o-{i}"), "msgtype": "text", "text": {"content": "hi"}});
            http()
                .post(format!(
                    "{}/cgi-bin/message/custom/send?access_token={held}",
                    app.base_url
                ))
                .json(&body)
                .send()
                .await
                .expect("answers")
                .json::<Value>()
                .await
                .expect("JSON")
        }
    });
    for answer in futures::future::join_all(calls).await {
        assert_eq!(answer, json!({"errcode": 0, "errmsg": "ok"}));
    }
    let current = app.current_token(&account.appid);
    assert_ne!(current, held);
    assert!(app.sim.is_token_valid(account.appid.as_str(), &current));
    let issued = app
        .sim
        .stats()
        .tokens_issued
        .get(account.appid.as_str())
        .map_or(0, |i| i.legacy);
    assert_eq!(
        issued - refreshes_before,
        2,
        "one stolen fetch and exactly one refresh"
    );
    assert_eq!(business(&app, "/cgi-bin/message/custom/send", "ok"), 5);
    let rejected = business(&app, "/cgi-bin/message/custom/send", "40001");
    assert!((1..=5).contains(&rejected), "{rejected}");
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wxtoken_proxy_retries_total",
            &[("group", "message"), ("outcome", "ok")]
        ),
        rejected as f64
    );
    assert_eq!(proxied(&metrics, "message", "ok"), 5.0);
}

#[actix_web::test]
async fn the_keyed_door_forwards_for_callers_that_hold_no_token() {
    let app = TestAppBuilder::new()
        .accounts(&[Mode::Stable, Mode::Stable])
        .spawn()
        .await;
    let (first, second) = (
        app.accounts[0].appid.as_str(),
        app.accounts[1].appid.as_str(),
    );
    let call = |appid: &str, key: Option<&str>| {
        let mut req = http().get(format!(
            "{}/v1/proxy/{appid}/cgi-bin/user/info?openid=o-keyed",
            app.base_url
        ));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req.send()
    };
    let res = call(first, Some(READER_KEY)).await.expect("answers");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.expect("JSON")["openid"],
        "o-keyed"
    );
    assert_eq!(
        app.sim.stats().business_calls_with_authorization,
        0,
        "the bearer key reached WeChat"
    );
    assert_eq!(
        call(first, None).await.expect("answers").status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(second, Some(SCOPED_KEY))
            .await
            .expect("answers")
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call("wx0000000000000bad", Some(READER_KEY))
            .await
            .expect("answers")
            .status(),
        StatusCode::NOT_FOUND
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wxtoken_http_requests_total",
            &[("route", "/v1/proxy/{appid}/{path:.*}"), ("status", "200")]
        ),
        1.0
    );
}

#[actix_web::test]
async fn the_proxy_limits_bodies_time_and_requests_in_flight() {
    let app = TestAppBuilder::new()
        .account(Mode::Stable)
        .proxy_setting("max_body: 64KiB")
        .proxy_setting("timeout: 1s")
        .proxy_setting("max_in_flight_per_client: 1")
        .spawn()
        .await;
    let token = app.current_token(&app.accounts[0].appid);
    let (_, form) = media_form(100 * 1024);
    let res = http()
        .post(format!(
            "{}/cgi-bin/media/upload?access_token={token}&type=image",
            app.base_url
        ))
        .multipart(form)
        .send()
        .await
        .expect("answers");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(business(&app, "/cgi-bin/media/upload", "ok"), 0);

    // WeChat too slow: 504 after proxy.timeout, in WeChat's shape.
    app.sim.inject_fault(FaultSpec {
        api: Some("business".into()),
        delay_ms: Some(3_000),
        count: Some(1),
        ..FaultSpec::default()
    });
    let started = std::time::Instant::now();
    let res = get(
        &app,
        "/cgi-bin/user/info",
        &[("access_token", &token), ("openid", "o")],
    )
    .await;
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_millis(2_500));
    assert_eq!(res.json::<Value>().await.expect("JSON")["errcode"], -1);

    // One request in flight per client: a second one at once is refused.
    app.sim.inject_fault(FaultSpec {
        api: Some("business".into()),
        delay_ms: Some(600),
        count: Some(1),
        ..FaultSpec::default()
    });
    let first = [("access_token", token.as_str()), ("openid", "a")];
    let (a, b) = tokio::join!(get(&app, "/cgi-bin/user/info", &first), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        get(
            &app,
            "/cgi-bin/user/info",
            &[("access_token", &token), ("openid", "b")],
        )
        .await
    });
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(b.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(b.headers()["retry-after"], "1");
    // Once it has finished, the next one passes.
    let c = get(
        &app,
        "/cgi-bin/user/info",
        &[("access_token", &token), ("openid", "c")],
    )
    .await;
    assert_eq!(c.status(), StatusCode::OK);
    let metrics = app.metrics().await;
    for (outcome, n) in [("too_large", 1.0), ("timeout", 1.0), ("limited", 1.0)] {
        let got = metric_value(
            &metrics,
            "wxtoken_proxy_requests_total",
            &[("outcome", outcome)],
        );
        assert_eq!(got, n, "{outcome}");
    }
}

/// A loopback URL nothing listens on.
fn dead_url() -> url::Url {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = listener.local_addr().expect("its address");
    drop(listener);
    url::Url::parse(&format!("http://{addr}")).expect("a URL")
}

#[actix_web::test]
async fn forwarding_fails_over_only_when_nothing_can_be_repeated_or_lost() {
    use wxtoken::wechat::{Forward, ForwardBody, ForwardError, Forwarder};
    let sim = crate::support::simulator(wxtoken::simulator::SimConfig::default()).await;
    let (appid, secret) = crate::support::register_fresh(&sim, "forward-secret");
    let token: Value = http()
        .get(format!("{}/cgi-bin/token", sim.base_url()))
        .query(&[
            ("grant_type", "client_credential"),
            ("appid", appid.as_str()),
            ("secret", secret.as_str()),
        ])
        .send()
        .await
        .expect("the simulator answers")
        .json()
        .await
        .expect("JSON");
    let query = format!(
        "access_token={}&openid=o",
        token["access_token"].as_str().expect("a token")
    );
    let live = crate::support::url(&sim);
    let forwarder = Forwarder::new(Duration::from_secs(1), 4).expect("a client");
    let send =
        |bases: Vec<url::Url>, method: reqwest::Method, body: ForwardBody, timeout: Duration| {
            let forwarder = forwarder.clone();
            let query = query.clone();
            let path = if method == reqwest::Method::GET {
                "/cgi-bin/user/info"
            } else {
                "/cgi-bin/message/custom/send"
            };
            async move {
                forwarder
                    .send(Forward {
                        method,
                        base_urls: &bases,
                        path,
                        query: &query,
                        headers: reqwest::header::HeaderMap::new(),
                        body,
                        timeout,
                    })
                    .await
                    .map(|r| r.status().as_u16())
            }
        };
    let buffered = || ForwardBody::Buffered(bytes::Bytes::new());
    let streamed = || {
        let chunks =
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x"))]);
        ForwardBody::Streamed(reqwest::Body::wrap_stream(chunks))
    };
    let second = Duration::from_secs(5);
    // Nothing listens on the first: a buffered request goes on to the next...
    assert_eq!(
        send(
            vec![dead_url(), live.clone()],
            reqwest::Method::GET,
            buffered(),
            second
        )
        .await,
        Ok(200)
    );
    // ...a streamed one cannot be sent twice.
    assert_eq!(
        send(
            vec![dead_url(), live.clone()],
            reqwest::Method::POST,
            streamed(),
            second
        )
        .await,
        Err(ForwardError::Connect)
    );
    // An HTTP 5xx: the next one answers.
    sim.inject_fault(FaultSpec {
        api: Some("business".into()),
        http_status: Some(503),
        count: Some(1),
        ..FaultSpec::default()
    });
    assert_eq!(
        send(
            vec![live.clone(), live.clone()],
            reqwest::Method::GET,
            buffered(),
            second
        )
        .await,
        Ok(200)
    );
    // A timed-out POST may have been processed: never sent again.
    sim.inject_fault(FaultSpec {
        api: Some("business".into()),
        delay_ms: Some(1_500),
        count: Some(1),
        ..FaultSpec::default()
    });
    let calls = sim.stats().calls_to(appid.as_str(), "business");
    assert_eq!(
        send(
            vec![live.clone(), live.clone()],
            reqwest::Method::POST,
            buffered(),
            Duration::from_millis(500)
        )
        .await,
        Err(ForwardError::Timeout)
    );
    assert_eq!(sim.stats().calls_to(appid.as_str(), "business"), calls + 1);
}
