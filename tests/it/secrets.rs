//! No secret leaves wxtoken: a whole scenario against the real binary, with
//! debug logs in both formats, and a grep of everything it printed, every
//! response it gave and its metrics for the AppSecrets, the API keys and (in
//! the logs) the token values.

use std::fs::File;
use std::process::Stdio;
use std::time::Duration;

use wxtoken::domain::{AppId, KeyHash};
use wxtoken::simulator::{AppRegistration, SimConfig};

use crate::support;
use crate::support::process::{KillOnDrop, send_signal, wxtoken};
use crate::support::wait::Wait;

const ADMIN_KEY: &str = "leak-test-admin-key-7c1d55e0";
const READER_KEY: &str = "leak-test-reader-key-91ab02f3";

/// Sends requests and keeps every answer (headers and body) and every token
/// an answer carried.
#[derive(Default)]
struct Recorder {
    answers: String,
    tokens: Vec<String>,
}

impl Recorder {
    /// Sends `request`, records its answer and returns the body.
    async fn send(&mut self, request: reqwest::RequestBuilder) -> String {
        let response = request.send().await.expect("answer");
        self.answers
            .push_str(&format!("{:?}\n", response.headers()));
        let body = response.text().await.unwrap_or_default();
        self.answers.push_str(&body);
        self.answers.push('\n');
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
            && let Some(t) = v["access_token"].as_str()
        {
            self.tokens.push(t.to_string());
        }
        body
    }
}

/// Everything a scenario exposed: process output, responses, metrics.
struct Transcript {
    logs: String,
    answers: String,
    tokens: Vec<String>,
}

async fn scenario(log_format: &str) -> (Transcript, Vec<String>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = support::simulator(SimConfig::default()).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let listen = support::free_addr().to_string();
    // Four accounts: stable, legacy, one with a wrong secret (40125) and one
    // whose IP whitelist excludes loopback (40164).
    let ids: Vec<AppId> = (0..4).map(|_| support::unique_appid()).collect();
    let secrets: Vec<String> = ids
        .iter()
        .map(|id| format!("S3cr3t-{}-do-not-leak", &id.as_str()[2..]))
        .collect();
    for (i, (id, secret)) in ids.iter().zip(&secrets).enumerate() {
        sim.register_app(AppRegistration {
            appid: id.to_string(),
            secret: secret.clone(),
            ip_whitelist: if i == 3 {
                vec!["10.1.2.3".to_string()]
            } else {
                vec![]
            },
        });
    }
    let wrong_secret = format!("Wr0ng-{}-do-not-leak", &ids[2].as_str()[2..]);
    let yaml = format!(
        "listen: {listen}\nupstream:\n  base_urls: [{}]\n  timeout: 2s\nstore:\n  path: data/wxtoken.redb\n\
         clients:\n  - name: admin\n    key: {}\n    appids: [\"*\"]\n    admin: true\n  - name: reader\n    key: {}\n    appids: [{}]\n\
         accounts:\n\
         \x20 - appid: {}\n    secret: ${{LEAK_SECRET_0}}\n    mode: stable\n\
         \x20 - appid: {}\n    secret: ${{LEAK_SECRET_1}}\n    mode: legacy\n\
         \x20 - appid: {}\n    secret: ${{LEAK_SECRET_2}}\n    mode: legacy\n\
         \x20 - appid: {}\n    secret_file: secret-3\n    mode: stable\n",
        sim.base_url(),
        KeyHash::of_key(ADMIN_KEY),
        KeyHash::of_key(READER_KEY),
        ids[0],
        ids[0],
        ids[1],
        ids[2],
        ids[3],
    );
    let config = dir.path().join("accounts.yaml");
    std::fs::write(&config, yaml).expect("config");
    std::fs::write(dir.path().join("secret-3"), &secrets[3]).expect("secret file");
    let log_path = dir.path().join("wxtoken.log");
    let log = File::create(&log_path).expect("log file");

    let mut cmd = wxtoken(&[
        "--log-format",
        log_format,
        "serve",
        "--config",
        config.to_str().expect("utf-8 path"),
    ]);
    cmd.env("RUST_LOG", "debug")
        .env("LEAK_SECRET_0", &secrets[0])
        .env("LEAK_SECRET_1", &secrets[1])
        .env("LEAK_SECRET_2", &wrong_secret)
        .stdout(Stdio::from(log.try_clone().expect("dup")))
        .stderr(Stdio::from(log));
    let mut child = KillOnDrop::spawn(cmd);

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a client");
    let url = |path: &str| format!("http://{listen}{path}");
    let mut seen = Recorder::default();

    // Wait until the two good accounts have tokens and the bad ones failed.
    Wait::up_to(Duration::from_secs(20))
        .every(Duration::from_millis(50))
        .until_async("the accounts settle", async || {
            let body = match http
                .get(url("/v1/accounts"))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
            {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            body.matches("\"ready\"").count() == 2 && body.matches("\"failing\"").count() == 2
        })
        .await;

    for id in &ids {
        for key in [ADMIN_KEY, READER_KEY] {
            seen.send(http.get(url(&format!("/v1/token/{id}"))).bearer_auth(key))
                .await;
        }
    }
    // Compare-and-refresh with the current token, an old one and garbage;
    // admin refreshes; wrong keys; malformed bodies; the admin list; reload.
    let current = seen.tokens.first().cloned().unwrap_or_default();
    for body in [
        serde_json::json!({ "stale_token": current }).to_string(),
        serde_json::json!({ "stale_token": "not-a-token" }).to_string(),
        format!("{{\"stale_token\": \"{}", secrets[0]),
        "[]".to_string(),
    ] {
        for id in &ids[..2] {
            seen.send(
                http.post(url(&format!("/v1/token/{id}/refresh")))
                    .bearer_auth(ADMIN_KEY)
                    .header("content-type", "application/json")
                    .body(body.clone()),
            )
            .await;
        }
    }
    for id in &ids {
        seen.send(
            http.post(url(&format!("/v1/accounts/{id}/refresh")))
                .bearer_auth(ADMIN_KEY),
        )
        .await;
    }
    for key in [secrets[0].as_str(), "wrong", READER_KEY] {
        seen.send(http.get(url("/v1/accounts")).bearer_auth(key))
            .await;
    }
    seen.send(http.post(url("/v1/admin/reload")).bearer_auth(ADMIN_KEY))
        .await;
    for path in ["/v1/accounts", "/readyz", "/healthz", "/metrics", "/nope"] {
        seen.send(http.get(url(path)).bearer_auth(ADMIN_KEY)).await;
    }

    // Stop gracefully so every log line is written.
    send_signal(&child.0, "TERM");
    let _ = child.0.wait();
    let logs = std::fs::read_to_string(&log_path).expect("the log");
    let mut all_secrets = secrets;
    all_secrets.push(wrong_secret);
    all_secrets.push(ADMIN_KEY.to_string());
    all_secrets.push(READER_KEY.to_string());
    (
        Transcript {
            logs,
            answers: seen.answers,
            tokens: seen.tokens,
        },
        all_secrets,
    )
}

fn assert_clean(format: &str, transcript: &Transcript, secrets: &[String]) {
    assert!(
        transcript.logs.contains("token refreshed") && transcript.logs.contains("40125"),
        "the {format} run logged its refreshes and failures:\n{}",
        transcript.logs
    );
    assert!(
        transcript.logs.contains("http request"),
        "debug request logs are on"
    );
    assert!(
        transcript.tokens.len() >= 6,
        "{} tokens seen",
        transcript.tokens.len()
    );
    for secret in secrets {
        assert!(
            !transcript.logs.contains(secret.as_str()),
            "{format} logs leak a secret"
        );
        assert!(
            !transcript.answers.contains(secret.as_str()),
            "a response leaks a secret"
        );
    }
    for token in &transcript.tokens {
        assert!(
            !transcript.logs.contains(token.as_str()),
            "{format} logs contain a token value"
        );
    }
}

#[actix_web::test]
async fn no_secret_appears_in_text_logs_responses_or_metrics() {
    let (transcript, secrets) = scenario("text").await;
    assert_clean("text", &transcript, &secrets);
}

#[actix_web::test]
async fn json_logs_are_one_object_per_line_and_leak_nothing() {
    let (transcript, secrets) = scenario("json").await;
    assert_clean("json", &transcript, &secrets);
    let mut refreshes = 0;
    for line in transcript.logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if v["message"] == "token refreshed" || v["message"] == "token refresh failed" {
            refreshes += 1;
            for field in ["appid", "reason", "outcome", "duration_ms"] {
                assert!(!v[field].is_null(), "{field} missing in {line}");
            }
            if v["outcome"] == "error" {
                assert!(!v["errcode"].is_null(), "errcode missing in {line}");
            }
        }
    }
    assert!(refreshes >= 4, "{refreshes} refresh events");
}
