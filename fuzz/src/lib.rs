//! The fuzzed functions of wxtoken, shared by the libFuzzer targets
//! (`fuzz_targets/*.rs`, run with `cargo +nightly fuzz run <target>`) and the
//! stable runner (`tests/corpus.rs`, run with `cargo test`), which feeds the
//! seed corpus and mutated inputs through the same functions.
//!
//! Each function panics when wxtoken breaks a promise of its contract for
//! that input; anything else (including rejecting the input) is fine.
//!
//! - [`config`]: `wxtoken::config::load_str` on arbitrary text.
//! - [`wechat_answer`]: arbitrary bytes as WeChat's answer to the real
//!   [`WechatClient`] (token, stable token, ticket, getApiQuota, probe; the
//!   answer decoder is private to `wxtoken::wechat`, so it is reached
//!   through the public client against a loopback server).
//! - [`http_request`]: arbitrary requests against the real HTTP API (the
//!   route table of `wxtoken::api::configure`, the metrics middleware and the
//!   `AppState` of `Application::build`) on an in-process simulator.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use secrecy::SecretString;
use wxtoken::config::{LoadOptions, UpstreamConfig, load_str};
use wxtoken::domain::{AccessToken, AppId, TicketKind};
use wxtoken::metrics::Metrics;
use wxtoken::wechat::{UpstreamError, WechatClient};

// ----------------------------------------------------------------------------
// config
// ----------------------------------------------------------------------------

/// The value of `${WX_SECRET}` while fuzzing the config loader.
const ENV_SECRET: &str = "Fz9secretVALUEfromTheEnvironment";

/// Loads `data` as `accounts.yaml`.
///
/// Checks: no panic; a failed load reports at least one problem, each with a
/// message and a line within the text; no problem quotes the value of a
/// `secret:` key (a literal, or the `${WX_SECRET}` it expands); a successful
/// load has at least one account.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `secret_file` reads files: keep away from devices and FIFOs that block.
    if ["/dev", "/proc", "/sys", "/run"]
        .iter()
        .any(|p| text.contains(p))
    {
        return;
    }
    let opts = LoadOptions::from_pairs([("WX_SECRET", ENV_SECRET), ("EMPTY", "")]);
    match load_str(text, Path::new("fuzz.yaml"), &opts) {
        Ok(loaded) => {
            assert!(
                !loaded.config.accounts.is_empty(),
                "a valid config without accounts"
            );
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "a failed load without a problem");
            // Lines are 1-based and YAML's: a lone CR breaks a line too (YAML
            // 1.2, 5.4); a problem may point just past the last line.
            let breaks = text.matches('\n').count() + text.matches('\r').count()
                - text.matches("\r\n").count();
            let lines = breaks + 2;
            let secrets = secret_values(text);
            for p in problems.iter() {
                assert!(!p.message.is_empty(), "a problem without a message");
                if let Some(line) = p.line {
                    assert!(
                        (1..=lines).contains(&line),
                        "problem on line {line} of a {lines}-line text: {p}"
                    );
                }
                let shown = p.to_string();
                for secret in &secrets {
                    assert!(
                        !shown.contains(secret),
                        "a problem quotes a secret: {shown}"
                    );
                }
            }
        }
    }
}

/// The values of plain `secret: VALUE` lines that appear nowhere else in
/// `text` (so a problem quoting them can only have taken them from the
/// secret), with `${WX_SECRET}` expanded when it is used only as a secret.
fn secret_values(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_start().trim_start_matches("- ").trim_start();
        let Some(value) = line.strip_prefix("secret:") else {
            continue;
        };
        let value = value.trim();
        let plain = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-${}".contains(c));
        if !plain || value.len() < 12 || text.matches(value).count() != 1 {
            continue;
        }
        if value == "${WX_SECRET}" {
            if !text.contains(ENV_SECRET) {
                out.push(ENV_SECRET.to_string());
            }
        } else if !value.contains('$') {
            out.push(value.to_string());
        }
    }
    out
}

// ----------------------------------------------------------------------------
// wechat_answer
// ----------------------------------------------------------------------------

/// The secret the WeChat client sends; no error may ever show it.
const UPSTREAM_SECRET: &str = "Up5treamSecretThatMustNeverLeak";

/// The answer the loopback "WeChat" gives next: status line and body.
static ANSWER: Mutex<(u16, Vec<u8>)> = Mutex::new((200, Vec::new()));

struct Upstream {
    runtime: tokio::runtime::Runtime,
    client: WechatClient,
}

fn upstream() -> &'static Upstream {
    static UPSTREAM: OnceLock<Upstream> = OnceLock::new();
    UPSTREAM.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve_answers(stream));
            }
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let config = UpstreamConfig {
            base_urls: vec![url::Url::parse(&format!("http://{addr}")).expect("a url")],
            timeout: Duration::from_secs(5),
            max_concurrency: 4,
            ..UpstreamConfig::default()
        };
        let client = WechatClient::new(&config, Metrics::new()).expect("the client builds");
        Upstream { runtime, client }
    })
}

/// Answers every request on `stream` (keep-alive) with the current [`ANSWER`].
fn serve_answers(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut writer = write_half;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        // Request line and headers.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (status, answer) = ANSWER.lock().expect("not poisoned").clone();
        // One write: a head and body in two segments would meet the
        // client's delayed ACK (40 ms per call).
        let mut out = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        )
        .into_bytes();
        out.extend_from_slice(&answer);
        if writer.write_all(&out).is_err() {
            return;
        }
    }
}

/// Sends one call of the real WeChat client to a loopback server that
/// answers with `data[1..]` as the body; `data[0]` picks the API and the
/// HTTP status.
///
/// Checks: no panic; a grant has a non-empty token and a positive lifetime;
/// an error never shows the secret (even when the answer echoes it), has a
/// bounded metric label, and decides a retry policy without panicking.
pub fn wechat_answer(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = [200, 200, 200, 200, 200, 404, 500, 503][usize::from(selector >> 5)];
    *ANSWER.lock().expect("not poisoned") = (status, body.to_vec());
    let up = upstream();
    let appid = AppId::parse("wx1234567890abcdef").expect("a valid appid");
    let secret = SecretString::from(UPSTREAM_SECRET.to_string());
    let token = AccessToken::new("a-token-the-client-holds");
    let result: Result<(), UpstreamError> = up.runtime.block_on(async {
        match selector % 4 {
            0 => up.client.fetch_token(&appid, &secret).await.map(|g| {
                assert!(!g.access_token.expose().is_empty(), "an empty token");
                assert!(!g.expires_in.is_zero(), "a token that lives 0 s");
            }),
            1 => up
                .client
                .fetch_stable_token(&appid, &secret, selector & 4 != 0)
                .await
                .map(|g| {
                    assert!(!g.access_token.expose().is_empty(), "an empty token");
                    assert!(!g.expires_in.is_zero(), "a token that lives 0 s");
                }),
            2 => up
                .client
                .fetch_ticket(&token, TicketKind::Jsapi)
                .await
                .map(|g| {
                    assert!(!g.ticket.expose().is_empty(), "an empty ticket");
                    assert!(!g.expires_in.is_zero(), "a ticket that lives 0 s");
                }),
            _ if selector & 4 != 0 => up
                .client
                .api_quota(&token, wxtoken::domain::ApiName::Token)
                .await
                .map(|q| {
                    assert!(q.daily_limit <= 1_000_000_000, "an absurd limit");
                    assert!(q.used <= 1_000_000_000, "an absurd use");
                }),
            _ => up.client.probe(&token).await.map(drop),
        }
    });
    if let Err(e) = result {
        let shown = format!("{e} {e:?} {}", e.errmsg());
        assert!(
            !shown.contains(UPSTREAM_SECRET),
            "an error shows the secret: {shown}"
        );
        let label = e.outcome_label();
        let bounded = ["ok", "timeout", "connect", "decode", "errcode_other"]
            .contains(&label.as_str())
            || label
                .strip_prefix("errcode_")
                .or_else(|| label.strip_prefix("http_"))
                .is_some_and(|n| {
                    n.trim_start_matches('-')
                        .chars()
                        .all(|c| c.is_ascii_digit())
                });
        assert!(bounded, "unbounded outcome label {label:?}");
        let _ = e.decide(1_800_000_000);
    }
}

// ----------------------------------------------------------------------------
// http_request
// ----------------------------------------------------------------------------

/// API keys of the fuzzed server's clients.
const ADMIN_KEY: &str = "fuzz-admin-key-0123456789";
const READER_KEY: &str = "fuzz-reader-key-0123456789";
const SCOPED_KEY: &str = "fuzz-scoped-key-0123456789";
/// The fuzzed server's accounts and their secrets (never in an answer).
const LEGACY_APPID: &str = "wx00000000000f0001";
const STABLE_APPID: &str = "wx00000000000f0002";
const LEGACY_SECRET: &str = "LegacySecretMustNeverBeServed01";
const STABLE_SECRET: &str = "StableSecretMustNeverBeServed02";

type Job = (Vec<u8>, mpsc::Sender<()>);

/// A channel to the thread that runs the API in an actix system.
fn api() -> &'static Mutex<tokio::sync::mpsc::UnboundedSender<Job>> {
    static API: OnceLock<Mutex<tokio::sync::mpsc::UnboundedSender<Job>>> = OnceLock::new();
    API.get_or_init(|| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(serve_api(rx, ready_tx));
        });
        ready_rx.recv().expect("the API thread starts");
        Mutex::new(tx)
    })
}

/// Builds the application once, then answers every job with the real route table.
async fn serve_api(mut rx: tokio::sync::mpsc::UnboundedReceiver<Job>, ready: mpsc::Sender<()>) {
    use actix_web::{App, web};
    use wxtoken::api::{self, HttpMetrics};
    use wxtoken::engine::EngineOptions;
    use wxtoken::simulator::{AppRegistration, InProcess, SimConfig};
    use wxtoken::startup::{Application, BuildOptions};
    use wxtoken::store::MemoryStore;

    let sim = InProcess::new(SimConfig::default(), Duration::from_secs(5)).expect("a simulator");
    for (appid, secret) in [(LEGACY_APPID, LEGACY_SECRET), (STABLE_APPID, STABLE_SECRET)] {
        sim.try_register_app(AppRegistration {
            appid: appid.to_string(),
            secret: secret.to_string(),
            ip_whitelist: vec![],
        })
        .expect("a valid registration");
    }
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         clients:\n\
         \x20 - name: admin\n    key: {}\n    appids: [\"*\"]\n    admin: true\n\
         \x20 - name: reader\n    key: {}\n    appids: [\"*\"]\n\
         \x20 - name: scoped\n    key: {}\n    appids: [{LEGACY_APPID}]\n\
         accounts:\n\
         \x20 - appid: {LEGACY_APPID}\n    secret: {LEGACY_SECRET}\n    mode: legacy\n\
         \x20 - appid: {STABLE_APPID}\n    secret: {STABLE_SECRET}\n    mode: stable\n",
        wxtoken::domain::KeyHash::of_key(ADMIN_KEY),
        wxtoken::domain::KeyHash::of_key(READER_KEY),
        wxtoken::domain::KeyHash::of_key(SCOPED_KEY),
    );
    let config = load_str(&yaml, Path::new("fuzz.yaml"), &LoadOptions::from_pairs([]))
        .expect("the fuzz config is valid")
        .config;
    let application = Application::build(
        config,
        BuildOptions {
            engine: EngineOptions {
                upstream: Some(Arc::new(sim)),
                store: Some(Arc::new(MemoryStore::new())),
                ..EngineOptions::default()
            },
            workers: Some(1),
            ..BuildOptions::default()
        },
    )
    .await
    .expect("the application builds");
    let state = application.state();
    for _ in 0..500 {
        if state
            .directory
            .not_ready(state.clock.now_unix_ms())
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let metrics = state.metrics.clone();
    let service = actix_web::test::init_service(
        App::new()
            .app_data(web::Data::new(state.clone()))
            .wrap(HttpMetrics::new(&metrics))
            .configure(api::configure),
    )
    .await;
    ready.send(()).expect("the fuzz thread waits");
    while let Some((data, done)) = rx.recv().await {
        if let Some(request) = build_request(&data, &state) {
            let is_head = request.method() == actix_web::http::Method::HEAD;
            // Forwarded by the proxy: the answer is WeChat's (here the
            // simulator's), whatever its shape; only the secrets rule holds.
            let proxied = !wxtoken::api::proxy::is_own_path(request.path())
                && request
                    .uri()
                    .query()
                    .is_some_and(|q| q.contains("access_token"));
            let response = match actix_web::test::try_call_service(&service, request).await {
                Ok(response) => response,
                Err(e) => {
                    let status = e.as_response_error().status_code();
                    panic!("the service failed with {status}: {e}");
                }
            };
            let status = response.status();
            let body = actix_web::test::read_body(response).await;
            check_answer(status, &body, is_head || proxied);
        }
        let _ = done.send(());
    }
    drop(application);
}

/// Turns fuzz bytes into a request: `data[0..6]` pick method, key, path,
/// appid, content type and body; the rest is free text, split at the first
/// NUL into a string (used for the appid, key, path or query) and the body.
fn build_request(data: &[u8], state: &wxtoken::api::AppState) -> Option<actix_http::Request> {
    use actix_web::http::header::{HeaderName, HeaderValue};
    use actix_web::http::{Method, Uri};
    use actix_web::test::TestRequest;

    if data.len() < 6 {
        return None;
    }
    let (picks, rest) = data.split_at(6);
    let (text, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let text_str = String::from_utf8_lossy(text);
    let method = [
        Method::GET,
        Method::POST,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::PATCH,
        Method::GET,
    ][usize::from(picks[0] % 8)]
    .clone();
    let appid = match picks[3] % 6 {
        0 => LEGACY_APPID.to_string(),
        1 => STABLE_APPID.to_string(),
        2 => "wx0000000000000000".to_string(),
        3 => percent_encode(text),
        4 => String::new(),
        _ => "a".repeat(usize::from(picks[3])),
    };
    let path = match picks[2] % 10 {
        0 => format!("/v1/token/{appid}"),
        1 => format!("/v1/token/{appid}/refresh"),
        2 => "/v1/accounts".to_string(),
        3 => format!("/v1/accounts/{appid}/refresh"),
        4 => "/v1/admin/reload".to_string(),
        5 => "/healthz".to_string(),
        6 => "/readyz".to_string(),
        7 => "/metrics".to_string(),
        8 => text_str.to_string(),
        _ => format!("/v1/token/{appid}?{}", percent_encode(text)),
    };
    let uri: Uri = path.parse().ok()?;
    let mut request = TestRequest::default()
        .method(method)
        .uri(&uri.to_string())
        .peer_addr(SocketAddr::from(([127, 0, 0, 1], 40_000)));
    let authorization = match picks[1] % 6 {
        0 => None,
        1 => Some(format!("Bearer {ADMIN_KEY}").into_bytes()),
        2 => Some(format!("Bearer {READER_KEY}").into_bytes()),
        3 => Some(format!("bearer  {SCOPED_KEY} ").into_bytes()),
        4 => Some([b"Bearer ".as_slice(), text].concat()),
        _ => Some(text.to_vec()),
    };
    if let Some(value) = authorization {
        let value = HeaderValue::from_bytes(&value).ok()?;
        request = request.insert_header((actix_web::http::header::AUTHORIZATION, value));
    }
    let content_type = match picks[4] % 4 {
        0 => None,
        1 => Some("application/json".to_string()),
        2 => Some("text/plain".to_string()),
        _ => Some(text_str.to_string()),
    };
    if let Some(value) = content_type {
        let value = HeaderValue::from_str(&value).ok()?;
        request = request.insert_header((HeaderName::from_static("content-type"), value));
    }
    let current = |appid: &str| -> String {
        AppId::parse(appid)
            .ok()
            .and_then(|id| state.directory.get(&id))
            .and_then(|slot| slot.token())
            .map(|t| t.token.expose().to_string())
            .unwrap_or_default()
    };
    let payload: Vec<u8> = match picks[5] % 4 {
        0 => body.to_vec(),
        1 => serde_json::json!({ "stale_token": current(&appid) })
            .to_string()
            .into_bytes(),
        2 => serde_json::json!({ "stale_token": text_str })
            .to_string()
            .into_bytes(),
        _ => Vec::new(),
    };
    Some(request.set_payload(payload).to_request())
}

/// Every byte that is not unreserved in a URI path, percent-encoded.
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks one answer of the API against the contract (`is_head`: a `HEAD`
/// or a forwarded call, whose body is not the API's own).
fn check_answer(status: actix_web::http::StatusCode, body: &[u8], is_head: bool) {
    let text = String::from_utf8_lossy(body);
    for secret in [LEGACY_SECRET, STABLE_SECRET] {
        assert!(
            !text.contains(secret),
            "an answer ({status}) shows a secret: {text}"
        );
    }
    for key in [ADMIN_KEY, READER_KEY, SCOPED_KEY] {
        assert!(
            !text.contains(key),
            "an answer ({status}) shows an API key: {text}"
        );
    }
    if is_head {
        return;
    }
    // The WeChat-compatible face answers in WeChat's shape.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
        && value["errcode"].is_i64()
    {
        assert!(
            value["errmsg"].is_string(),
            "an errcode without errmsg: {text}"
        );
        return;
    }
    assert!(
        !status.is_server_error() || status.as_u16() == 503,
        "the API answered {status}: {text}"
    );
    if status.is_client_error() || status.is_server_error() {
        let value: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("a {status} answer is not JSON ({e}): {text}"));
        assert!(
            value["error"].is_string() && value["message"].is_string(),
            "a {status} answer without error and message: {text}"
        );
        if status.as_u16() == 503 {
            assert!(
                value["error"] == "token_unavailable" || value["error"] == "not_ready",
                "a 503 that is not token_unavailable: {text}"
            );
        }
    }
    if status.is_success()
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(token) = value.get("access_token")
    {
        assert!(
            token.as_str().is_some_and(|t| !t.is_empty()),
            "an empty token: {text}"
        );
        assert!(
            value["expires_in"].as_u64().is_some_and(|s| s >= 1),
            "a token answer with expires_in < 1: {text}"
        );
    }
}

/// Sends `data` as one request to the real API and checks the answer.
///
/// Checks: no panic, no 5xx other than 503 `token_unavailable`, every error
/// answer is `{"error","message"}` JSON, token answers carry a token with
/// `expires_in >= 1`, and no answer ever contains an AppSecret or an API key.
pub fn http_request(data: &[u8]) {
    let (done_tx, done_rx) = mpsc::channel();
    api()
        .lock()
        .expect("not poisoned")
        .send((data.to_vec(), done_tx))
        .expect("the API thread runs");
    // The API thread panics on a broken promise; then this fails too.
    done_rx
        .recv()
        .expect("the API thread answered (a panic there is a finding)");
}
