//! Tests of the WeChat client against the real simulator on loopback: every
//! errcode class, failover, timeouts, garbage answers, the in-flight limit and
//! secret hygiene.

use std::time::{Duration, Instant};

use wxtoken::clock::{china_day, next_china_midnight};
use wxtoken::domain::ApiName;
use wxtoken::domain::{AccessToken, TicketKind};
use wxtoken::simulator::{FaultSpec, SimConfig};
use wxtoken::wechat::{Decision, UpstreamError, WaitCause};

use crate::support::*;

const SECRET: &str = "s3cr3t-value-that-must-never-leak";

fn errcode_fault(api: &str, appid: &str, errcode: i64, errmsg: Option<&str>) -> FaultSpec {
    FaultSpec {
        errcode: Some(errcode),
        errmsg: errmsg.map(str::to_string),
        ..fault_once(api, appid)
    }
}

#[actix_web::test]
async fn stable_fetch_returns_the_token_and_lifetime_wechat_announced() {
    let sim = simulator(SimConfig {
        token_ttl: Duration::from_secs(1234),
        ..Default::default()
    })
    .await;
    let appid = register(&sim, SECRET);
    let (client, metrics) = client_for(&sim);

    let grant = client
        .fetch_stable_token(&appid, &secret(SECRET), false)
        .await
        .expect("stable token");
    assert_eq!(grant.expires_in, Duration::from_secs(1234));
    assert!(sim.is_token_valid(appid.as_str(), grant.access_token.expose()));
    let again = client
        .fetch_stable_token(&appid, &secret(SECRET), false)
        .await
        .expect("stable token");
    assert_eq!(
        again.access_token, grant.access_token,
        "stable mode returns the same token"
    );
    let text = metrics.encode();
    assert_eq!(
        metric_value(
            &text,
            "wxtoken_upstream_requests_total",
            &[("api", "stable_token"), ("outcome", "ok")]
        ),
        2.0
    );
}

#[actix_web::test]
async fn legacy_fetch_returns_a_new_live_token_each_call() {
    let sim = simulator(SimConfig::default()).await;
    let appid = register(&sim, SECRET);
    let (client, _) = client_for(&sim);

    let first = client
        .fetch_token(&appid, &secret(SECRET))
        .await
        .expect("token");
    let second = client
        .fetch_token(&appid, &secret(SECRET))
        .await
        .expect("token");
    assert_ne!(first.access_token, second.access_token);
    assert_eq!(second.expires_in, Duration::from_secs(7200));
    assert!(sim.is_token_valid(appid.as_str(), second.access_token.expose()));
}

#[actix_web::test]
async fn wrong_secret_and_unknown_appid_are_config_errors() {
    let sim = simulator(SimConfig::default()).await;
    let appid = register(&sim, SECRET);
    let (client, _) = client_for(&sim);

    for stable in [true, false] {
        let wrong = if stable {
            client
                .fetch_stable_token(&appid, &secret("wrong"), false)
                .await
        } else {
            client.fetch_token(&appid, &secret("wrong")).await
        };
        let err = wrong.expect_err("wrong secret fails");
        assert_eq!(err.errcode(), Some(40125));
        assert!(
            matches!(err.decide(0), Decision::ConfigError { retry_after } if retry_after >= Duration::from_secs(300))
        );
    }
    let unknown = unique_appid();
    let err = client
        .fetch_stable_token(&unknown, &secret(SECRET), false)
        .await
        .expect_err("unknown appid fails");
    assert_eq!(err.errcode(), Some(40013));
    assert!(matches!(err.decide(0), Decision::ConfigError { .. }));
}

#[actix_web::test]
async fn ip_whitelist_refusal_is_a_config_error_naming_the_ip() {
    let sim = simulator(SimConfig::default()).await;
    let appid = unique_appid();
    sim.register_app(wxtoken::simulator::AppRegistration {
        appid: appid.to_string(),
        secret: SECRET.to_string(),
        ip_whitelist: vec!["203.0.113.9".to_string()],
    });
    let (client, _) = client_for(&sim);

    let err = client
        .fetch_stable_token(&appid, &secret(SECRET), false)
        .await
        .expect_err("ip not whitelisted");
    assert_eq!(err.errcode(), Some(40164));
    assert_eq!(err.whitelist_ip(), Some("127.0.0.1".parse().unwrap()));
    assert!(matches!(err.decide(0), Decision::ConfigError { .. }));
}

#[actix_web::test]
async fn every_errcode_class_is_decided_as_wechat_documents() {
    let sim = simulator(SimConfig::default()).await;
    let appid = register(&sim, SECRET);
    let (client, _) = client_for(&sim);
    let now = sim.clock().now_unix();

    type Expect = Box<dyn Fn(&Decision) -> bool>;
    let cases: Vec<(i64, Expect)> = vec![
        (-1, Box::new(|d| *d == Decision::Retry)),
        (
            40243,
            Box::new(|d| matches!(d, Decision::ConfigError { .. })),
        ),
        (
            40001,
            Box::new(|d| matches!(d, Decision::ConfigError { .. })),
        ),
        (
            89503,
            Box::new(|d| matches!(d, Decision::ConfigError { .. })),
        ),
        (
            45009,
            Box::new(move |d| {
                matches!(d, Decision::NotBefore { unix, cause: WaitCause::DailyQuota }
                    if *unix == next_china_midnight(now) && china_day(*unix) == china_day(now) + 1)
            }),
        ),
        (
            45011,
            Box::new(move |d| {
                matches!(d, Decision::NotBefore { unix, cause: WaitCause::MinuteLimit }
                    if *unix > now && *unix <= now + 60 && unix % 60 == 0)
            }),
        ),
        (
            89506,
            Box::new(
                move |d| matches!(d, Decision::NotBefore { unix, cause: WaitCause::IpBlocked } if *unix == now + 86_400),
            ),
        ),
        (
            89507,
            Box::new(
                move |d| matches!(d, Decision::NotBefore { unix, cause: WaitCause::IpBlocked } if *unix == now + 3600),
            ),
        ),
    ];
    for (code, expected) in cases {
        sim.inject_fault(errcode_fault("stable_token", appid.as_str(), code, None));
        let err = client
            .fetch_stable_token(&appid, &secret(SECRET), false)
            .await
            .expect_err("the fault answers with an errcode");
        assert_eq!(err.errcode(), Some(code));
        let decision = err.decide(now);
        assert!(expected(&decision), "errcode {code} decided {decision:?}");
    }
    // With the faults used up, the account works again.
    client
        .fetch_stable_token(&appid, &secret(SECRET), false)
        .await
        .expect("no fault left");
}

#[actix_web::test]
async fn rejected_tokens_on_use_decide_to_compare_and_refresh() {
    let sim = simulator(SimConfig::default()).await;
    let (client, _) = client_for(&sim);

    let garbage = AccessToken::new("not-a-token");
    let err = client.probe(&garbage).await.expect_err("garbage token");
    assert_eq!(err.errcode(), Some(40014));
    assert_eq!(err.decide(0), Decision::TokenRejected);
    let err = client
        .fetch_ticket(&garbage, TicketKind::Jsapi)
        .await
        .expect_err("garbage token");
    assert_eq!(err.decide(0), Decision::TokenRejected);
}

#[actix_web::test]
async fn ticket_and_probe_work_with_a_live_token() {
    let sim = simulator(SimConfig::default()).await;
    let appid = register(&sim, SECRET);
    let (client, _) = client_for(&sim);

    let grant = client
        .fetch_stable_token(&appid, &secret(SECRET), false)
        .await
        .expect("token");
    let ips = client.probe(&grant.access_token).await.expect("live token");
    assert!(!ips.is_empty());
    let ticket = client
        .fetch_ticket(&grant.access_token, TicketKind::Jsapi)
        .await
        .expect("ticket");
    assert!(!ticket.ticket.expose().is_empty());
    assert!(ticket.expires_in > Duration::ZERO);
}

#[actix_web::test]
async fn a_dead_first_base_url_fails_over_to_the_second() {
    let sim = simulator(SimConfig::default()).await;
    let appid = register(&sim, SECRET);
    let (client, metrics) = client_with(
        vec![closed_port_url(), url(&sim)],
        Duration::from_secs(2),
        4,
    );

    let grant = client
        .fetch_token(&appid, &secret(SECRET))
        .await
        .expect("second base url answers");
    assert!(sim.is_token_valid(appid.as_str(), grant.access_token.expose()));
    let text = metrics.encode();
    assert_eq!(
        metric_value(
            &text,
            "wxtoken_upstream_requests_total",
            &[("api", "token"), ("outcome", "connect")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "wxtoken_upstream_requests_total",
            &[("api", "token"), ("outcome", "ok")]
        ),
        1.0
    );
}

#[actix_web::test]
async fn http_5xx_fails_over_but_an_errcode_does_not() {
    let first = simulator(SimConfig::default()).await;
    let second = simulator(SimConfig::default()).await;
    let appid = register(&first, SECRET);
    register_as(&second, appid.as_str(), SECRET);
    let (client, _) = client_with(vec![url(&first), url(&second)], Duration::from_secs(2), 4);

    first.inject_fault(FaultSpec {
        http_status: Some(502),
        count: Some(1),
        ..Default::default()
    });
    client
        .fetch_stable_token(&appid, &secret(SECRET), false)
        .await
        .expect("the second base url answers after a 502");
    assert_eq!(calls(&second, appid.as_str(), "stable_token"), 1);

    first.inject_fault(errcode_fault("stable_token", appid.as_str(), -1, None));
    let err = client
        .fetch_stable_token(&appid, &secret(SECRET), false)
        .await
        .expect_err("system busy is an answer, not a reason to fail over");
    assert_eq!(err.errcode(), Some(-1));
    assert_eq!(calls(&second, appid.as_str(), "stable_token"), 1);
}

fn calls(sim: &wxtoken::simulator::Simulator, appid: &str, api: &str) -> u64 {
    let stats = serde_json::to_value(sim.stats()).expect("stats serialize");
    stats["calls"][appid][api].as_u64().unwrap_or(0)
}

#[actix_web::test]
async fn a_slow_answer_times_out_and_fails_over() {
    let slow = simulator(SimConfig::default()).await;
    let fast = simulator(SimConfig::default()).await;
    let appid = register(&slow, SECRET);
    register_as(&fast, appid.as_str(), SECRET);
    slow.inject_fault(FaultSpec {
        delay_ms: Some(3_000),
        count: Some(2),
        ..Default::default()
    });

    let (alone, metrics) = client_with(vec![url(&slow)], Duration::from_millis(200), 4);
    let err = alone
        .fetch_stable_token(&appid, &secret(SECRET), false)
        .await
        .expect_err("times out");
    assert!(matches!(err, UpstreamError::Timeout { .. }), "{err:?}");
    assert_eq!(err.decide(0), Decision::Retry);
    assert_eq!(
        metric_value(
            &metrics.encode(),
            "wxtoken_upstream_requests_total",
            &[("outcome", "timeout")]
        ),
        1.0
    );

    let (both, _) = client_with(vec![url(&slow), url(&fast)], Duration::from_millis(200), 4);
    both.fetch_stable_token(&appid, &secret(SECRET), false)
        .await
        .expect("the fast base url answers");
}

#[actix_web::test]
async fn garbage_answers_are_decode_errors_that_quote_nothing() {
    let sim = simulator(SimConfig::default()).await;
    let appid = register(&sim, SECRET);
    let (client, metrics) = client_for(&sim);

    for fault in [
        FaultSpec {
            malformed: true,
            count: Some(1),
            ..Default::default()
        },
        FaultSpec {
            html: true,
            count: Some(1),
            ..Default::default()
        },
    ] {
        sim.inject_fault(fault);
        let err = client
            .fetch_token(&appid, &secret(SECRET))
            .await
            .expect_err("garbage is an error");
        assert!(
            matches!(
                err,
                UpstreamError::Decode {
                    api: ApiName::Token,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.decide(0), Decision::Retry);
        let text = err.to_string();
        assert!(
            !text.contains("access_token\":") && !text.contains("<html"),
            "{text}"
        );
    }
    assert_eq!(
        metric_value(
            &metrics.encode(),
            "wxtoken_upstream_requests_total",
            &[("outcome", "decode")]
        ),
        2.0
    );
}

#[actix_web::test]
async fn a_dropped_connection_is_a_transport_error() {
    let sim = simulator(SimConfig::default()).await;
    let appid = register(&sim, SECRET);
    let (client, _) = client_for(&sim);

    sim.inject_fault(FaultSpec {
        drop_connection: true,
        count: Some(1),
        ..Default::default()
    });
    let err = client
        .fetch_stable_token(&appid, &secret(SECRET), false)
        .await
        .expect_err("dropped");
    assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
    assert!(err.fails_over());
    assert_eq!(err.decide(0), Decision::Retry);
}

#[actix_web::test]
async fn no_error_ever_contains_the_secret() {
    let sim = simulator(SimConfig::default()).await;
    let appid = register(&sim, SECRET);
    let (dead, _) = client_with(vec![closed_port_url()], Duration::from_millis(500), 2);
    let (client, _) = client_for(&sim);

    let mut errors = vec![
        dead.fetch_token(&appid, &secret(SECRET))
            .await
            .expect_err("closed port"),
        dead.fetch_stable_token(&appid, &secret(SECRET), false)
            .await
            .expect_err("closed port"),
    ];
    sim.inject_fault(FaultSpec {
        count: Some(1),
        errcode: Some(40125),
        errmsg: Some(format!("invalid appsecret {SECRET}")),
        ..Default::default()
    });
    errors.push(
        client
            .fetch_token(&appid, &secret(SECRET))
            .await
            .expect_err("fault"),
    );
    sim.inject_fault(FaultSpec {
        drop_connection: true,
        count: Some(1),
        ..Default::default()
    });
    errors.push(
        client
            .fetch_token(&appid, &secret(SECRET))
            .await
            .expect_err("dropped"),
    );
    for e in errors {
        for shown in [e.to_string(), format!("{e:?}"), e.errmsg()] {
            assert!(!shown.contains(SECRET), "secret leaked in {shown}");
        }
    }
}

#[actix_web::test]
async fn upstream_requests_in_flight_never_exceed_max_concurrency() {
    let sim = simulator(SimConfig::default()).await;
    let appid = register(&sim, SECRET);
    sim.inject_fault(FaultSpec {
        delay_ms: Some(300),
        count: Some(6),
        ..Default::default()
    });
    let (client, _) = client_with(vec![url(&sim)], Duration::from_secs(5), 2);
    // The limit the engine puts around the client.
    let client = wxtoken::wechat::Limited::new(std::sync::Arc::new(client), 2);

    let started = Instant::now();
    let calls = (0..6).map(|_| {
        wxtoken::wechat::TokenSource::fetch(
            &client,
            wxtoken::wechat::FetchRequest {
                appid: appid.clone(),
                secret: secret(SECRET),
                endpoint: wxtoken::wechat::Endpoint::Stable,
                force_refresh: false,
                open: None,
            },
        )
    });
    for result in futures::future::join_all(calls).await {
        result.expect("delayed but fine");
    }
    // Six 300 ms calls two at a time take at least three rounds.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

/// A fault answering `body` to the next call of `api` for `appid`.
fn body_fault(api: &str, appid: &str, body: String) -> FaultSpec {
    FaultSpec {
        body: Some(body),
        ..fault_once(api, appid)
    }
}

#[actix_web::test]
async fn absurd_token_answers_are_decode_errors() {
    let sim = simulator(SimConfig::default()).await;
    let appid = register(&sim, SECRET);
    let (client, _) = client_for(&sim);
    let good = "A".repeat(16);
    let absurd = [
        format!(r#"{{"access_token":"{good}","expires_in":9223372036854775}}"#),
        format!(r#"{{"access_token":"{good}","expires_in":1000000000000}}"#),
        format!(r#"{{"access_token":"{good}","expires_in":86401}}"#),
        format!(r#"{{"access_token":"{good}","expires_in":0}}"#),
        format!(r#"{{"access_token":"{good}","expires_in":-5}}"#),
        r#"{"access_token":" ","expires_in":7200}"#.to_string(),
        r#"{"access_token":"CTRL\u0000\n\r\u001b[31mXXXXXXXXXXXXXXX","expires_in":7200}"#
            .to_string(),
        r#"{"access_token":"ünïcødé 🙂 ünïcødé 🙂","expires_in":7200}"#.to_string(),
        r#"{"access_token":"has a space inside it","expires_in":7200}"#.to_string(),
        format!(
            r#"{{"access_token":"{}","expires_in":7200}}"#,
            "A".repeat(15)
        ),
        format!(
            r#"{{"access_token":"{}","expires_in":7200}}"#,
            "A".repeat(2049)
        ),
    ];
    for body in absurd {
        sim.inject_fault(body_fault("token", appid.as_str(), body.clone()));
        let err = client
            .fetch_token(&appid, &secret(SECRET))
            .await
            .expect_err(&format!("{body:.60} is refused"));
        assert!(
            matches!(err, UpstreamError::Decode { .. }),
            "{body:.60}: {err:?}"
        );
        assert_eq!(err.decide(0), Decision::Retry, "retried with backoff");
    }
    // The limits themselves are fine.
    for body in [
        format!(r#"{{"access_token":"{good}","expires_in":86400}}"#),
        format!(
            r#"{{"access_token":"{}","expires_in":1}}"#,
            "A".repeat(2048)
        ),
    ] {
        sim.inject_fault(body_fault("token", appid.as_str(), body.clone()));
        client
            .fetch_token(&appid, &secret(SECRET))
            .await
            .unwrap_or_else(|e| panic!("{body:.60} is accepted: {e}"));
    }
}

#[actix_web::test]
async fn absurd_ticket_answers_are_decode_errors() {
    let sim = simulator(SimConfig::default()).await;
    let appid = register(&sim, SECRET);
    let (client, _) = client_for(&sim);
    let token = client
        .fetch_stable_token(&appid, &secret(SECRET), false)
        .await
        .expect("token")
        .access_token;
    for body in [
        r#"{"errcode":0,"errmsg":"ok","ticket":"TTTTTTTTTTTTTTTTTTTT","expires_in":9223372036854774}"#,
        r#"{"errcode":0,"errmsg":"ok","ticket":"\u001b[31m","expires_in":7200}"#,
    ] {
        sim.inject_fault(body_fault("getticket", appid.as_str(), body.to_string()));
        let err = client
            .fetch_ticket(&token, TicketKind::Jsapi)
            .await
            .expect_err("refused");
        assert!(matches!(err, UpstreamError::Decode { .. }), "{err:?}");
    }
}

#[actix_web::test]
async fn an_endless_answer_is_cut_off_at_64_kib() {
    let sim = simulator(SimConfig::default()).await;
    let appid = register(&sim, SECRET);
    let (client, _) = client_for(&sim);
    sim.inject_fault(FaultSpec {
        api: Some("stable_token".to_string()),
        count: Some(1),
        body_bytes: Some(150 * 1024 * 1024),
        ..Default::default()
    });
    let err = client
        .fetch_stable_token(&appid, &secret(SECRET), false)
        .await
        .expect_err("refused");
    assert!(matches!(err, UpstreamError::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("larger than 65536 bytes"), "{err}");
}

#[actix_web::test]
async fn redirects_are_never_followed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Somewhere a redirect would lead: it must never be contacted.
    let elsewhere = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let target = elsewhere.local_addr().unwrap();
    let contacted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = contacted.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = elsewhere.accept().await {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // An upstream that answers every request with a redirect.
    let upstream = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let base = url::Url::parse(&format!("http://{}", upstream.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = upstream.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 302 Found\r\nLocation: http://{target}/cgi-bin/token\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    let (client, _) = client_with(vec![base], Duration::from_secs(2), 4);
    let err = client
        .fetch_token(&unique_appid(), &secret(SECRET))
        .await
        .expect_err("a redirect is an error");
    assert!(
        matches!(err, UpstreamError::Http { status: 302, .. }),
        "{err:?}"
    );
    assert!(
        !contacted.load(std::sync::atomic::Ordering::SeqCst),
        "the redirect target was contacted"
    );
}
