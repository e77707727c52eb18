//! The Open Platform protocol, both sides: the simulator's components
//! (tickets pushed encrypted to a real callback server, authorizations,
//! refresh tokens, the 61xxx errors) and `WechatClient`'s component calls,
//! over HTTP on loopback. Lifetimes move with the simulator's clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use wxtoken::domain::{AccessToken, AppId};
use wxtoken::openplatform::MsgCrypt;
use wxtoken::openplatform::event::{self, Event, EventQuery};
use wxtoken::simulator::{ComponentRegistration, FaultSpec, SimConfig, Simulator};
use wxtoken::wechat::{
    Decision, Endpoint, FetchRequest, OpenCredential, TokenGrant, TokenSource, UpstreamError,
    WechatClient,
};

use crate::support::wait::eventually;
use crate::support::*;

const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const MSG_TOKEN: &str = "pamtest";
const COMPONENT_SECRET: &str = "component-secret-never-shown";

/// The events a callback server decrypted, in arrival order.
type Events = Arc<Mutex<Vec<Event>>>;

/// A tiny event URL: decrypts each push with the component's keys.
async fn callback_server(crypt: MsgCrypt) -> (String, Events) {
    let events: Events = Arc::default();
    let crypt = web::Data::new(crypt);
    let seen = web::Data::new(events.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(crypt.clone())
            .app_data(seen.clone())
            .route(
                "/events",
                web::post().to(
                    |crypt: web::Data<MsgCrypt>,
                     seen: web::Data<Events>,
                     q: web::Query<EventQuery>,
                     body: web::Bytes| async move {
                        match event::open(&crypt, &q, &body) {
                            Ok(e) => {
                                seen.lock().unwrap().push(e);
                                HttpResponse::Ok().body("success")
                            }
                            Err(e) => HttpResponse::BadRequest().body(e.to_string()),
                        }
                    },
                ),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(any_port())
    .expect("callback binds");
    let addr = server.addrs()[0];
    tokio::spawn(server.run());
    (format!("http://{addr}/events"), events)
}

/// One component registered in a simulator, with its callback server.
struct Component {
    appid: AppId,
    events: Events,
    callback: String,
}

impl Component {
    async fn register(sim: &Simulator, f: impl FnOnce(&mut ComponentRegistration)) -> Component {
        let appid = unique_appid();
        let crypt = MsgCrypt::new(MSG_TOKEN, KEY, appid.as_str()).unwrap();
        let (callback, events) = callback_server(crypt).await;
        let mut reg = ComponentRegistration::new(appid.as_str(), COMPONENT_SECRET, MSG_TOKEN, KEY);
        reg.callback_url = Some(callback.clone());
        f(&mut reg);
        sim.try_register_component(reg).expect("valid component");
        Component {
            appid,
            events,
            callback,
        }
    }

    fn tickets(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Ticket { ticket, .. } => Some(ticket.clone()),
                _ => None,
            })
            .collect()
    }

    async fn first_ticket(&self) -> String {
        eventually("a ticket is pushed", || !self.tickets().is_empty()).await;
        self.tickets()[0].clone()
    }

    fn code_for(&self, authorizer: &str) -> Option<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::Authorized {
                    authorizer_appid,
                    code,
                    ..
                } if authorizer_appid == authorizer => Some(code.clone()),
                _ => None,
            })
    }

    fn component_request(&self, ticket: &str) -> FetchRequest {
        FetchRequest {
            appid: self.appid.clone(),
            secret: secret(COMPONENT_SECRET),
            endpoint: Endpoint::Component,
            force_refresh: false,
            open: Some(OpenCredential::Ticket(token(ticket))),
        }
    }

    fn authorizer_request(&self, authorizer: &AppId, open: OpenCredential) -> FetchRequest {
        FetchRequest {
            appid: authorizer.clone(),
            secret: secret(COMPONENT_SECRET),
            endpoint: Endpoint::Authorizer {
                component: self.appid.clone(),
            },
            force_refresh: false,
            open: Some(open),
        }
    }
}

fn token(s: &str) -> AccessToken {
    AccessToken::from_upstream(s.to_string()).expect("plausible")
}

async fn control(sim: &Simulator, path: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .expect("control answered");
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.expect("json")
}

async fn wechat(sim: &Simulator, api: &str, query: &[(&str, &str)], body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{}/cgi-bin/component/{api}", sim.base_url()))
        .query(query)
        .json(&body)
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("json")
}

/// Authorizes `authorizer` and returns the code its pushed event carried.
async fn authorize(sim: &Simulator, c: &Component, authorizer: &AppId) -> String {
    let delivery = control(
        sim,
        &format!("/sim/components/{}/authorize", c.appid),
        json!({ "authorizer_appid": authorizer.as_str() }),
    )
    .await;
    assert_eq!(delivery["delivered"], true, "{delivery}");
    assert_eq!(delivery["answer"], "success");
    c.code_for(authorizer.as_str())
        .expect("the authorized event")
}

async fn setup(
    f: impl FnOnce(&mut ComponentRegistration),
) -> (Simulator, Component, WechatClient, AccessToken) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = simulator(SimConfig::default()).await;
    let c = Component::register(&sim, f).await;
    let (client, _) = client_for(&sim);
    let ticket = c.first_ticket().await;
    let grant = client
        .fetch(c.component_request(&ticket))
        .await
        .expect("component token");
    (sim, c, client, grant.access_token)
}

fn errcode(e: &UpstreamError) -> i64 {
    e.errcode().unwrap_or_else(|| panic!("an errcode: {e}"))
}

#[actix_web::test]
async fn tickets_arrive_encrypted_at_once_and_again_when_the_clock_passes_the_interval() {
    let (sim, c, _, _) = setup(|_| {}).await;
    assert_eq!(c.tickets().len(), 1);
    sim.advance(Duration::from_secs(600));
    eventually("a second ticket 10 minutes later", || {
        c.tickets().len() == 2
    })
    .await;
    assert_ne!(c.tickets()[0], c.tickets()[1]);
    // The simulator counts a delivery once the callback has answered, which
    // may come after the callback server saw the ticket.
    eventually("the simulator counts both deliveries", || {
        sim.stats().events_delivered >= 2
    })
    .await;

    control(
        &sim,
        &format!("/sim/components/{}/pushing", c.appid),
        json!({ "on": false }),
    )
    .await;
    let pushed = control(
        &sim,
        &format!("/sim/components/{}/push_ticket", c.appid),
        json!({}),
    )
    .await;
    assert_eq!(
        pushed["delivered"], true,
        "push_ticket pushes even while paused"
    );
    assert_eq!(c.tickets().len(), 3);
}

#[actix_web::test]
async fn each_component_token_supersedes_the_previous_one_after_grace() {
    let (sim, c, client, first) = setup(|_| {}).await;
    let ticket = c.first_ticket().await;
    let second = client.fetch(c.component_request(&ticket)).await.unwrap();
    assert_ne!(second.access_token, first);
    assert_eq!(second.expires_in, Duration::from_secs(7200));
    let len = second.access_token.expose().len();
    assert!((128..=512).contains(&len), "{len}");
    sim.advance(Duration::from_secs(299));
    assert!(sim.is_token_valid(c.appid.as_str(), first.expose()));
    sim.advance(Duration::from_secs(1));
    assert!(!sim.is_token_valid(c.appid.as_str(), first.expose()));
    assert!(sim.is_token_valid(c.appid.as_str(), second.access_token.expose()));
    assert_eq!(sim.stats().tokens_issued[c.appid.as_str()].component, 2);
    assert_eq!(
        sim.stats()
            .calls_to(c.appid.as_str(), "api_component_token"),
        2
    );
}

#[actix_web::test]
async fn old_unknown_and_foreign_tickets_are_61005_and_61006() {
    let (sim, c, client, _) = setup(|_| {}).await;
    let other = Component::register(&sim, |_| {}).await;
    let foreign = other.first_ticket().await;
    let err = client
        .fetch(c.component_request(&foreign))
        .await
        .unwrap_err();
    assert_eq!(errcode(&err), 61006);
    assert_eq!(err.decide(0), Decision::Retry);
    let err = client
        .fetch(c.component_request("ticket@@@never-pushed-anywhere"))
        .await
        .unwrap_err();
    assert_eq!(errcode(&err), 61006);

    let ticket = c.first_ticket().await;
    // Stop the schedule so advancing 12 h does not push a fresh ticket we ignore.
    control(
        &sim,
        &format!("/sim/components/{}/pushing", c.appid),
        json!({ "on": false }),
    )
    .await;
    sim.advance(Duration::from_secs(12 * 3600));
    let err = client
        .fetch(c.component_request(&ticket))
        .await
        .unwrap_err();
    assert_eq!(errcode(&err), 61005);

    let mut wrong = c.component_request(&foreign);
    wrong.secret = secret("not-the-secret");
    let err = client.fetch(wrong).await.unwrap_err();
    assert_eq!(errcode(&err), 40001);
    assert!(matches!(err.decide(0), Decision::ConfigError { .. }));
    assert!(!err.to_string().contains("not-the-secret"));
}

#[actix_web::test]
async fn query_auth_then_rotating_refresh_with_a_five_minute_overlap_then_61023() {
    let (sim, c, client, ct) = setup(|_| {}).await;
    let authorizer = unique_appid();
    let code = authorize(&sim, &c, &authorizer).await;
    let open = |code: &str| OpenCredential::AuthCode {
        component_token: ct.clone(),
        code: token(code),
    };
    let first = client
        .fetch(c.authorizer_request(&authorizer, open(&code)))
        .await
        .expect("query_auth");
    let r1 = first.refresh_token.clone().expect("a refresh token");
    assert!(sim.is_token_valid(authorizer.as_str(), first.access_token.expose()));
    // The code is single use.
    let err = client
        .fetch(c.authorizer_request(&authorizer, open(&code)))
        .await
        .unwrap_err();
    assert_eq!(errcode(&err), 61009);
    assert_eq!(err.decide(0), Decision::Recover);

    let refresh = |rt: &AccessToken| {
        c.authorizer_request(
            &authorizer,
            OpenCredential::RefreshToken {
                component_token: ct.clone(),
                refresh_token: rt.clone(),
            },
        )
    };
    let second: TokenGrant = client.fetch(refresh(&r1)).await.expect("refresh");
    let r2 = second.refresh_token.clone().expect("rotated");
    assert_ne!(r2, r1);
    // The authorizer token is a token like an account's: the probe accepts it.
    assert!(!client.probe(&second.access_token).await.unwrap().is_empty());
    sim.advance(Duration::from_secs(299));
    let third = client
        .fetch(refresh(&r1))
        .await
        .expect("r1 overlaps 5 minutes");
    assert!(third.refresh_token.is_some());
    let err = client.fetch(refresh(&r1)).await.unwrap_err();
    assert_eq!(errcode(&err), 61023);
    assert_eq!(err.decide(0), Decision::Recover);
    assert!(!err.to_string().contains(r1.expose()));
    // Legacy semantics: the first authorizer token dies `grace` after the second.
    sim.advance(Duration::from_secs(1));
    assert!(!sim.is_token_valid(authorizer.as_str(), first.access_token.expose()));
    assert_eq!(
        sim.stats()
            .calls_to(authorizer.as_str(), "api_authorizer_token"),
        3
    );
}

#[actix_web::test]
async fn without_rotation_the_same_refresh_token_comes_back() {
    let (sim, c, client, ct) = setup(|r| r.rotate_refresh_tokens = false).await;
    let authorizer = unique_appid();
    let code = authorize(&sim, &c, &authorizer).await;
    let first = client
        .fetch(c.authorizer_request(
            &authorizer,
            OpenCredential::AuthCode {
                component_token: ct.clone(),
                code: token(&code),
            },
        ))
        .await
        .unwrap();
    let r1 = first.refresh_token.unwrap();
    for _ in 0..2 {
        let again = client
            .fetch(c.authorizer_request(
                &authorizer,
                OpenCredential::RefreshToken {
                    component_token: ct.clone(),
                    refresh_token: r1.clone(),
                },
            ))
            .await
            .unwrap();
        assert_eq!(again.refresh_token.as_ref(), Some(&r1));
    }
}

#[actix_web::test]
async fn unauthorize_kills_the_tokens_answers_61003_and_pushes_the_event() {
    let (sim, c, client, ct) = setup(|_| {}).await;
    let authorizer = unique_appid();
    let code = authorize(&sim, &c, &authorizer).await;
    let grant = client
        .fetch(c.authorizer_request(
            &authorizer,
            OpenCredential::AuthCode {
                component_token: ct.clone(),
                code: token(&code),
            },
        ))
        .await
        .unwrap();
    let delivery = control(
        &sim,
        &format!("/sim/components/{}/unauthorize", c.appid),
        json!({ "authorizer_appid": authorizer.as_str() }),
    )
    .await;
    assert_eq!(delivery["delivered"], true);
    assert!(c.events.lock().unwrap().iter().any(|e| matches!(
        e,
        Event::Unauthorized { authorizer_appid, .. } if authorizer_appid == authorizer.as_str()
    )));
    assert!(!sim.is_token_valid(authorizer.as_str(), grant.access_token.expose()));
    let err = client
        .fetch(c.authorizer_request(
            &authorizer,
            OpenCredential::RefreshToken {
                component_token: ct.clone(),
                refresh_token: grant.refresh_token.unwrap(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(errcode(&err), 61003);
    assert_eq!(err.decide(0), Decision::Revoked);
    let page = client.authorizer_list(&c.appid, &ct, 0, 500).await.unwrap();
    assert_eq!(page.total_count, 0);
}

#[actix_web::test]
async fn the_authorizer_list_pages_1201_authorizers_in_three_pages_and_repairs_a_broken_refresh_token()
 {
    let (sim, c, client, ct) = setup(|_| {}).await;
    // Registered again without a callback: authorizations are not pushed (fast).
    sim.try_register_component(ComponentRegistration::new(
        c.appid.as_str(),
        COMPONENT_SECRET,
        MSG_TOKEN,
        KEY,
    ))
    .unwrap();
    let http = reqwest::Client::new();
    let mut appids = Vec::new();
    for _ in 0..1201 {
        let a = unique_appid();
        http.post(format!(
            "{}/sim/components/{}/authorize",
            sim.base_url(),
            c.appid
        ))
        .json(&json!({ "authorizer_appid": a.as_str() }))
        .send()
        .await
        .unwrap();
        appids.push(a);
    }
    let mut seen = Vec::new();
    let mut offset = 0;
    let mut sizes = Vec::new();
    loop {
        let page = client
            .authorizer_list(&c.appid, &ct, offset, 500)
            .await
            .unwrap();
        assert_eq!(page.total_count, 1201);
        assert_eq!(page.skipped, 0);
        sizes.push(page.list.len());
        offset += page.list.len() as u32;
        seen.extend(page.list);
        if u64::from(offset) >= page.total_count {
            break;
        }
    }
    assert_eq!(sizes, vec![500, 500, 201]);
    let mut ids: Vec<_> = seen.iter().map(|(a, _, _)| a.clone()).collect();
    ids.sort();
    appids.sort();
    assert_eq!(ids, appids);
    assert!(seen.iter().all(|(_, _, t)| *t > 0));

    // Break one refresh token: the listed one is then the only one that works.
    let (victim, old, _) = seen[7].clone();
    control(
        &sim,
        &format!("/sim/components/{}/refresh_tokens", c.appid),
        json!({ "authorizer_appid": victim.as_str(), "invalidate": true, "fail_next": 1 }),
    )
    .await;
    let refresh = |rt: AccessToken| {
        c.authorizer_request(
            &victim,
            OpenCredential::RefreshToken {
                component_token: ct.clone(),
                refresh_token: rt,
            },
        )
    };
    assert_eq!(
        errcode(&client.fetch(refresh(old.clone())).await.unwrap_err()),
        61023
    );
    assert_eq!(
        errcode(&client.fetch(refresh(old)).await.unwrap_err()),
        61023
    );
    let page = client.authorizer_list(&c.appid, &ct, 7, 1).await.unwrap();
    let (again, repaired, _) = page.list[0].clone();
    assert_eq!(again, victim);
    client
        .fetch(refresh(repaired))
        .await
        .expect("the listed token works");
    let err = wechat(
        &sim,
        "api_get_authorizer_list",
        &[("component_access_token", ct.expose())],
        json!({ "component_appid": c.appid.as_str(), "offset": 0, "count": 501 }),
    )
    .await;
    assert_eq!(err["errcode"], 40097);
}

#[actix_web::test]
async fn both_query_spellings_work_and_dead_component_tokens_are_rejected() {
    let (sim, c, client, ct) = setup(|_| {}).await;
    for name in ["component_access_token", "access_token"] {
        let answer = wechat(
            &sim,
            "api_create_preauthcode",
            &[(name, ct.expose())],
            json!({ "component_appid": c.appid.as_str() }),
        )
        .await;
        assert_eq!(answer["expires_in"], 600, "{name}: {answer}");
    }
    let (code, life) = client.create_preauthcode(&c.appid, &ct).await.unwrap();
    assert!(code.expose().starts_with("preauthcode@@@"));
    assert_eq!(life, Duration::from_secs(600));

    let err = client
        .create_preauthcode(&c.appid, &token("garbage-garbage-garbage"))
        .await
        .unwrap_err();
    assert_eq!(errcode(&err), 40014);
    assert_eq!(err.decide(0), Decision::TokenRejected);
    sim.advance(Duration::from_secs(7200));
    let err = client.create_preauthcode(&c.appid, &ct).await.unwrap_err();
    assert_eq!(errcode(&err), 42001);
    // A component token is not an account token.
    let answer = reqwest::Client::new()
        .get(format!("{}/cgi-bin/token", sim.base_url()))
        .query(&[
            ("grant_type", "client_credential"),
            ("appid", c.appid.as_str()),
            ("secret", COMPONENT_SECRET),
        ])
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(answer["errcode"], 61024);
}

#[actix_web::test]
async fn start_push_ticket_resumes_pushing_and_pushes_at_once() {
    let (sim, c, client, _) = setup(|_| {}).await;
    control(
        &sim,
        &format!("/sim/components/{}/pushing", c.appid),
        json!({ "on": false }),
    )
    .await;
    let answer = wechat(
        &sim,
        "api_start_push_ticket",
        &[],
        json!({ "component_appid": c.appid.as_str(), "component_secret": COMPONENT_SECRET }),
    )
    .await;
    assert_eq!(answer["errcode"], 0);
    assert_eq!(answer["errmsg"], "ok");
    eventually("a ticket pushed at once", || c.tickets().len() == 2).await;
    client
        .start_push_ticket(&c.appid, &secret(COMPONENT_SECRET))
        .await
        .expect("in a normal state");
    eventually("another ticket", || c.tickets().len() == 3).await;
    let err = client
        .start_push_ticket(&c.appid, &secret("wrong-secret"))
        .await
        .unwrap_err();
    assert_eq!(errcode(&err), 40001);
    let err = client
        .start_push_ticket(&unique_appid(), &secret(COMPONENT_SECRET))
        .await
        .unwrap_err();
    assert_eq!(errcode(&err), 61011);
    assert!(c.callback.ends_with("/events"));
}

#[actix_web::test]
async fn faults_hit_the_component_apis_by_name() {
    let (sim, c, client, ct) = setup(|_| {}).await;
    let ticket = c.first_ticket().await;
    sim.inject_fault(FaultSpec {
        errcode: Some(48001),
        ..fault_once("api_component_token", c.appid.as_str())
    });
    let err = client
        .fetch(c.component_request(&ticket))
        .await
        .unwrap_err();
    assert_eq!(errcode(&err), 48001);
    assert_eq!(err.decide(0), Decision::Retry);
    sim.inject_fault(FaultSpec {
        malformed: true,
        ..fault_once("api_get_authorizer_list", c.appid.as_str())
    });
    let err = client
        .authorizer_list(&c.appid, &ct, 0, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Decode { .. }), "{err}");
    sim.inject_fault(FaultSpec {
        body_bytes: Some(2 << 20),
        ..fault_once("api_get_authorizer_list", c.appid.as_str())
    });
    let err = client
        .authorizer_list(&c.appid, &ct, 0, 10)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("larger than 1048576 bytes"),
        "{err}"
    );
    client
        .fetch(c.component_request(&ticket))
        .await
        .expect("faults ran out");
    assert!(sim.stats().faults_applied >= 2);
}

#[actix_web::test]
async fn absurd_open_platform_answers_are_decode_errors_or_skipped_entries() {
    let (sim, c, client, ct) = setup(|_| {}).await;
    let authorizer = unique_appid();
    let body = |b: &str, api: &str, appid: &AppId| FaultSpec {
        body: Some(b.to_string()),
        ..fault_once(api, appid.as_str())
    };
    let refresh = c.authorizer_request(
        &authorizer,
        OpenCredential::RefreshToken {
            component_token: ct.clone(),
            refresh_token: token("refreshtoken@@@aaaaaaaaaaaaaaaa"),
        },
    );
    let long = "A".repeat(200);
    let cases = [
        (
            format!(
                r#"{{"authorizer_access_token":"{long}","expires_in":7200,"authorizer_refresh_token":""}}"#
            ),
            None,
        ),
        (
            format!(
                r#"{{"authorizer_access_token":"{long}","expires_in":7200,"authorizer_refresh_token":"x"}}"#
            ),
            Some("authorizer_refresh_token"),
        ),
        (
            format!(r#"{{"authorizer_access_token":"{long}","expires_in":0}}"#),
            Some("expires_in"),
        ),
        (
            r#"{"access_token":"wrong-field-wrong-field","expires_in":7200}"#.to_string(),
            Some("authorizer_access_token"),
        ),
    ];
    for (answer, problem) in cases {
        sim.inject_fault(body(&answer, "api_authorizer_token", &authorizer));
        let result = client.fetch(refresh.clone()).await;
        match problem {
            None => assert_eq!(
                result
                    .expect("an empty refresh token is no error")
                    .refresh_token,
                None
            ),
            Some(field) => {
                let err = result.unwrap_err();
                assert!(
                    matches!(err, UpstreamError::Decode { .. }) && err.to_string().contains(field),
                    "{err}"
                );
            }
        }
    }
    let code = authorize(&sim, &c, &authorizer).await;
    sim.inject_fault(body(
        &format!(
            r#"{{"authorization_info":{{"authorizer_appid":"{authorizer}","func_info":[]}}}}"#
        ),
        "api_query_auth",
        &authorizer,
    ));
    let err = client
        .fetch(c.authorizer_request(
            &authorizer,
            OpenCredential::AuthCode {
                component_token: ct.clone(),
                code: token(&code),
            },
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no API permission"), "{err}");

    sim.inject_fault(body(
        &format!(
            r#"{{"total_count":4,"list":[{{"authorizer_appid":"{authorizer}","refresh_token":"refreshtoken@@@bbbbbbbbbbbbbbbb","auth_time":1}},{{"authorizer_appid":"not an appid","refresh_token":"refreshtoken@@@cccccccccccc"}},{{"authorizer_appid":"{authorizer}","refresh_token":""}},{{"authorizer_appid":5}}]}}"#
        ),
        "api_get_authorizer_list",
        &c.appid,
    ));
    let page = client.authorizer_list(&c.appid, &ct, 0, 4).await.unwrap();
    assert_eq!(page.total_count, 4);
    assert_eq!(page.list.len(), 1);
    assert_eq!(page.skipped, 3);

    // No credential: nothing is sent, and the error says so.
    let calls = sim.stats().total_calls("api_authorizer_token");
    let mut bare = refresh.clone();
    bare.open = None;
    let err = client.fetch(bare).await.unwrap_err();
    assert!(err.to_string().contains("not sent"), "{err}");
    assert_eq!(err.decide(0), Decision::Recover);
    assert_eq!(sim.stats().total_calls("api_authorizer_token"), calls);
}

#[tokio::test]
async fn the_in_process_simulator_runs_the_whole_chain_in_virtual_time() {
    let (_clock, sim) = virtual_simulator();
    let component = unique_appid();
    sim.try_register_component(ComponentRegistration::new(
        component.as_str(),
        COMPONENT_SECRET,
        MSG_TOKEN,
        KEY,
    ))
    .unwrap();
    let crypt = MsgCrypt::new(MSG_TOKEN, KEY, component.as_str()).unwrap();
    let sealed = sim.ticket_event(component.as_str()).unwrap();
    let Event::Ticket { ticket, .. } =
        event::open(&crypt, &sealed.query, sealed.body.as_bytes()).unwrap()
    else {
        panic!("a ticket event")
    };
    let c = Component {
        appid: component.clone(),
        events: Arc::default(),
        callback: String::new(),
    };
    let ct = sim
        .fetch(c.component_request(&ticket))
        .await
        .unwrap()
        .access_token;
    let authorizer = unique_appid();
    let sealed = sim
        .authorize(component.as_str(), authorizer.as_str())
        .unwrap();
    let Event::Authorized { code, .. } =
        event::open(&crypt, &sealed.query, sealed.body.as_bytes()).unwrap()
    else {
        panic!("an authorized event")
    };
    let grant = sim
        .fetch(c.authorizer_request(
            &authorizer,
            OpenCredential::AuthCode {
                component_token: ct.clone(),
                code: token(&code),
            },
        ))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(11 * 60)).await;
    let refreshed = sim
        .fetch(c.authorizer_request(
            &authorizer,
            OpenCredential::RefreshToken {
                component_token: ct.clone(),
                refresh_token: grant.refresh_token.clone().unwrap(),
            },
        ))
        .await
        .unwrap();
    assert_ne!(refreshed.refresh_token, grant.refresh_token);
    assert!(sim.is_token_valid(authorizer.as_str(), refreshed.access_token.expose()));
    assert_eq!(
        sim.stats().calls_to(authorizer.as_str(), "api_query_auth"),
        1
    );
    let sealed = sim
        .unauthorize(component.as_str(), authorizer.as_str())
        .unwrap();
    assert!(matches!(
        event::open(&crypt, &sealed.query, sealed.body.as_bytes()).unwrap(),
        Event::Unauthorized { .. }
    ));
    assert!(!sim.is_token_valid(authorizer.as_str(), refreshed.access_token.expose()));
}
