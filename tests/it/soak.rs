//! A short soak over real HTTP: tokens that live seconds, clients that read
//! them from wxtoken and check every one at WeChat (the simulator's
//! `getcallbackip` probe).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use wxtoken::domain::Mode;
use wxtoken::simulator::SimConfig;

use crate::app::{READER_KEY, TestApp, TestAppBuilder, json};
use crate::support::probe::{Prober, is_live};

/// How long the clients read: a bit more than two token lifetimes.
const SOAK: Duration = Duration::from_secs(13);
const TTL: Duration = Duration::from_secs(6);

/// What one client saw.
#[derive(Default)]
struct Seen {
    reads: u64,
    invalid: Vec<String>,
    tokens: HashMap<String, HashSet<String>>,
}

/// Reads every account's token in turn until `SOAK` is over and probes each
/// token at the simulator right away.
async fn client(app: &TestApp, probe: &Prober) -> Seen {
    let mut seen = Seen::default();
    let started = Instant::now();
    while started.elapsed() < SOAK {
        for account in app.healthy() {
            let appid = account.appid.as_str();
            let body = json(app.get_token(appid, Some(READER_KEY)).await, StatusCode::OK).await;
            let token = body["access_token"]
                .as_str()
                .expect("access_token is a string")
                .to_string();
            let expires_in = body["expires_in"].as_u64().expect("expires_in");
            assert!(
                expires_in >= 1,
                "{appid}: served with expires_in {expires_in}"
            );
            let answer = probe.answer(&token).await;
            seen.reads += 1;
            if !is_live(&answer) {
                seen.invalid
                    .push(format!("{appid}: {answer} (expires_in was {expires_in})"));
            }
            seen.tokens
                .entry(appid.to_string())
                .or_default()
                .insert(token);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

#[actix_web::test]
async fn clients_never_receive_a_token_wechat_rejects_over_several_lifetimes() {
    let app = TestAppBuilder::new()
        .sim_config(SimConfig {
            token_ttl: TTL,
            grace: Duration::from_secs(2),
            ..SimConfig::default()
        })
        // Tokens are served only with at least 1 s left; on a 6 s lifetime
        // the refresh must come early enough to leave that margin.
        .refresh_setting("stable_window: 2s")
        .refresh_setting("legacy_at: 0.6")
        .accounts(&[Mode::Legacy, Mode::Legacy, Mode::Stable, Mode::Stable])
        .spawn()
        .await;
    let probe = Prober::new(&app.sim.base_url());

    let results = futures::future::join_all((0..4).map(|_| client(&app, &probe))).await;

    let reads: u64 = results.iter().map(|s| s.reads).sum();
    let invalid: Vec<&String> = results.iter().flat_map(|s| &s.invalid).collect();
    assert!(
        invalid.is_empty(),
        "{} of {reads} tokens served were invalid: {invalid:#?}",
        invalid.len()
    );
    assert!(reads > 200, "only {reads} reads in {SOAK:?}");
    for account in app.healthy() {
        let distinct: HashSet<&String> = results
            .iter()
            .filter_map(|s| s.tokens.get(account.appid.as_str()))
            .flatten()
            .collect();
        assert!(
            distinct.len() >= 3,
            "{} ({}) served only {} tokens over {SOAK:?} with a {TTL:?} lifetime",
            account.appid,
            account.mode,
            distinct.len()
        );
    }
    let stats = app.sim.stats();
    assert_eq!(
        stats.probe_results.superseded + stats.probe_results.expired,
        0
    );
    assert_eq!(stats.probe_results.ok, reads);
}
