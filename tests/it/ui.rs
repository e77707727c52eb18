//! `GET /ui`, the operators' status page: its headers and the page itself
//! over plain HTTP, and the page at work in a real headless Chromium, driven
//! over the DevTools protocol, against a real `wxtoken serve` whose
//! simulator refuses one account's IP (40164).
//!
//! Chromium must be installed (`.ci/run` installs Debian's `chromium`; the
//! `CHROMIUM` variable names another binary): without it the browser test
//! fails, it does not skip. `WXTOKEN_UI_SCREENSHOT=PATH` makes the browser
//! test also save a 1280×800 PNG of the page (the README's `docs/ui.png`).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wxtoken::domain::{AppId, KeyHash};
use wxtoken::simulator::{AppRegistration, SimConfig, Simulator};

use crate::app::spawn_app;
use crate::support::process::{Running, wxtoken};
use crate::support::wait::Wait;
use crate::support::{self, unique_appid};

const ADMIN_KEY: &str = "ui-admin-key-0123456789abcdef";
/// The IP the simulator reports in its 40164 answer: the server's, loopback.
const REFUSED_IP: &str = "127.0.0.1";

#[actix_web::test]
async fn the_page_is_html_with_a_strict_policy_and_references_nothing_outside() {
    let app = spawn_app().await;
    let response = app.call(Method::GET, "/ui", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("cache-control"), "no-store");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let policy = header("content-security-policy");
    for part in [
        "default-src 'none'",
        "script-src 'sha256-",
        "style-src 'sha256-",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(part), "{part} missing from {policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    let page = response.text().await.expect("a body");
    assert!(page.starts_with("<!doctype html>"), "{page}");
    for external in ["http://", "https://", "//cdn", "@import", "url("] {
        assert!(
            !page.contains(external),
            "the page references {external}: it must work offline"
        );
    }
    // Data goes into the page as text only, and the key never into lasting storage.
    for banned in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "localStorage.",
        "document.cookie",
        "eval(",
    ] {
        assert!(!page.contains(banned), "the page uses {banned}");
    }
    assert!(page.contains("/v1/accounts"));

    let head = app.call(Method::HEAD, "/ui", None).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok()),
        Some(policy.as_str())
    );
    let post = app.call(Method::POST, "/ui", None).await;
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        post.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, HEAD")
    );
}

#[actix_web::test]
async fn the_page_shows_every_account_with_a_refused_ip_first_and_keeps_the_key_in_the_tab() {
    let fleet = Fleet::start().await;
    // What the page reads: the refused account's last error names the IP.
    let list: Value = fleet
        .http
        .get(fleet.url("/v1/accounts"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("the list answers")
        .json()
        .await
        .expect("JSON");
    let row = list
        .as_array()
        .and_then(|l| l.iter().find(|r| r["appid"] == fleet.blocked.as_str()))
        .unwrap_or_else(|| panic!("{} missing from {list}", fleet.blocked));
    assert_eq!(row["state"], "failing", "{row}");
    assert_eq!(row["last_error"]["errcode"], 40164, "{row}");
    assert_eq!(row["last_error"]["config_error"], true, "{row}");
    assert_eq!(row["last_error"]["ip"], REFUSED_IP, "{row}");
    assert!(row["serve_until"].is_null(), "{row}");

    let mut browser = Chromium::launch().await;
    browser.open(&fleet.url("/ui")).await;

    // Without a key the page asks for one (the list answered 401).
    browser
        .until(
            "the key form is shown",
            "!document.getElementById('key-form').hidden",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#rows tr').length")
            .await,
        0
    );
    browser.type_into("key", ADMIN_KEY).await;
    browser
        .eval("document.getElementById('key-submit').click(), true")
        .await;
    browser
        .until(
            "every account is shown",
            &format!(
                "document.querySelectorAll('#rows tr[data-appid]').length === {}",
                fleet.accounts.len()
            ),
        )
        .await;
    browser
        .until(
            "the update time is shown",
            "document.getElementById('updated').textContent.startsWith('updated at ')",
        )
        .await;

    // The quota WeChat reports (getApiQuota, read after the first
    // refresh) shows under calls today, on the next poll at the latest.
    browser
        .until(
            "the legacy account shows its getApiQuota reading",
            &format!(
                "[...document.querySelectorAll('tr[data-appid=\"{}\"] .c-calls .quota')].some(q => q.dataset.api === 'token' && / of 2000$/.test(q.textContent))",
                fleet.news
            ),
        )
        .await;

    if let Some(path) = std::env::var_os("WXTOKEN_UI_SCREENSHOT") {
        browser.screenshot(&PathBuf::from(path)).await;
    }

    let rows = browser.rows().await;
    let appids: Vec<&str> = rows
        .iter()
        .map(|r| r["appid"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        appids.first().copied(),
        Some(fleet.blocked.as_str()),
        "the refused account comes first: {rows:#?}"
    );
    assert_eq!(
        appids.last().copied(),
        Some(fleet.paused.as_str()),
        "the disabled account comes last: {rows:#?}"
    );
    let blocked = &rows[0];
    assert_eq!(blocked["state"], "failing", "{blocked}");
    assert_eq!(blocked["configError"], "true", "{blocked}");
    assert!(
        blocked["stateText"]
            .as_str()
            .is_some_and(|t| t.contains("config error")),
        "{blocked}"
    );
    assert_eq!(blocked["errcode"], "40164", "{blocked}");
    assert_eq!(blocked["ip"], REFUSED_IP, "{blocked}");
    assert!(
        blocked["errmsg"]
            .as_str()
            .is_some_and(|m| m.contains("not in whitelist")),
        "{blocked}"
    );
    assert_eq!(blocked["expiry"], "\u{2014}", "no token: {blocked}");
    for healthy in [&fleet.shop, &fleet.news, &fleet.desk] {
        let row = rows
            .iter()
            .find(|r| r["appid"] == healthy.as_str())
            .unwrap_or_else(|| panic!("{healthy} missing: {rows:#?}"));
        assert_eq!(row["state"], "ready", "{row}");
        assert_eq!(row["stateText"], "ready", "{row}");
        assert_eq!(row["error"], "\u{2014}", "{row}");
        for (cell, title) in [("expiry", "expiryTitle"), ("serveUntil", "serveUntilTitle")] {
            let text = row[cell].as_str().unwrap_or_default();
            assert!(text.starts_with("in "), "{cell} is relative: {row}");
            assert!(
                row[title].as_str().is_some_and(|t| t.contains('(')),
                "{title}: {row}"
            );
        }
        let calls: u64 = row["calls"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("calls today is a number: {row}"));
        assert!(calls >= 1, "{row}");
    }
    let quotas = |appid: &str| {
        rows.iter()
            .find(|r| r["appid"] == appid)
            .map(|r| r["quotas"].clone())
            .unwrap_or_default()
    };
    let news_quotas = quotas(fleet.news.as_str());
    assert!(
        news_quotas.as_array().is_some_and(|q| q.len() == 1
            && q[0]
                .as_str()
                .is_some_and(|t| t.starts_with("token: ") && t.ends_with(" of 2000"))),
        "{news_quotas}"
    );
    let desk_quotas = quotas(fleet.desk.as_str());
    assert_eq!(desk_quotas, json!([]), "WeCom has no getApiQuota");
    let desk = rows
        .iter()
        .find(|r| r["appid"] == fleet.desk.as_str())
        .expect("the WeCom app");
    assert_eq!(desk["kind"], "wecom");
    let paused = rows.last().expect("rows");
    assert_eq!(paused["state"], "disabled");

    let counts = browser.eval("Object.fromEntries([...document.querySelectorAll('#counts button')].map(b => [b.dataset.countState || 'all', Number(b.querySelector('.n').textContent)]))").await;
    assert_eq!(
        counts,
        json!({"all": 5, "failing": 1, "fetching": 0, "empty": 0, "refreshing": 0, "ready": 3, "disabled": 1})
    );

    // Search by name, then by appid.
    browser.type_into("search", "legacy").await;
    assert_eq!(browser.only_row("the search").await, fleet.news.as_str());
    browser
        .eval("document.getElementById('search').value = '', true")
        .await;
    browser
        .type_into("search", &fleet.blocked.as_str()[4..])
        .await;
    assert_eq!(browser.only_row("the search").await, fleet.blocked.as_str());
    assert_eq!(
        browser
            .eval("document.getElementById('shown').textContent")
            .await,
        "1 of 5 shown"
    );
    browser.eval("const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input')), true").await;

    // Clicking a count filters by its state; clicking it again shows all.
    browser.click_count("disabled").await;
    assert_eq!(browser.only_row("the filter").await, fleet.paused.as_str());
    assert_eq!(
        browser
            .eval("document.getElementById('state-filter').value")
            .await,
        "disabled"
    );
    browser.click_count("disabled").await;
    browser
        .until(
            "every row is back",
            "document.querySelectorAll('#rows tr').length === 5",
        )
        .await;

    // The key is in this tab's sessionStorage and nowhere else.
    let storage = browser.eval("({session: sessionStorage.getItem('wxtoken.adminKey'), local: localStorage.length, cookie: document.cookie, href: location.href, history: history.length})").await;
    assert_eq!(storage["session"], ADMIN_KEY, "{storage}");
    assert_eq!(storage["local"], 0, "{storage}");
    assert_eq!(storage["cookie"], "", "{storage}");
    let href = storage["href"].as_str().unwrap_or_default();
    assert_eq!(href, fleet.url("/ui"), "the URL never changes");
    assert!(!href.contains(ADMIN_KEY));

    // The page keeps refreshing itself.
    let calls = fleet.accounts_calls().await;
    Wait::up_to(Duration::from_secs(15))
        .every(Duration::from_millis(200))
        .until_async("the page polls /v1/accounts", async || {
            fleet.accounts_calls().await > calls
        })
        .await;

    // A wrong key is refused clearly; signing out forgets the key.
    browser
        .eval("sessionStorage.setItem('wxtoken.adminKey', 'not-the-admin-key-at-all'), true")
        .await;
    browser
        .until("the refused key is reported", "document.getElementById('error').textContent.includes('401') && !document.getElementById('key-form').hidden")
        .await;
    browser
        .eval("document.getElementById('signout').click(), true")
        .await;
    let after = browser.eval("({key: sessionStorage.getItem('wxtoken.adminKey'), rows: document.querySelectorAll('#rows tr').length, form: !document.getElementById('key-form').hidden})").await;
    assert_eq!(after, json!({"key": null, "rows": 0, "form": true}));
    browser.close().await;
}

/// A real `wxtoken serve` with five accounts on a simulator: a stable shop,
/// a legacy news account and a WeCom app that work, one whose IP whitelist
/// refuses the server (40164), and a disabled one.
struct Fleet {
    _sim: Simulator,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    listen: String,
    _server: Running,
    accounts: Vec<AppId>,
    shop: AppId,
    news: AppId,
    desk: AppId,
    blocked: AppId,
    paused: AppId,
}

impl Fleet {
    async fn start() -> Fleet {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = support::simulator(SimConfig::default()).await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets).expect("secrets dir");
        let listen = support::free_addr().to_string();
        let desk = AppId::parse(&format!("ww{}:1000002", &unique_appid().as_str()[2..]))
            .expect("a WeCom id");
        let [shop, news, blocked, paused] = [(); 4].map(|()| unique_appid());
        let mut yaml = format!(
            "listen: {listen}\nupstream:\n  base_urls: [{base}]\n  wecom_base_urls: [{base}]\n  timeout: 10s\n\
             store:\n  path: data/wxtoken.redb\nclients:\n  - name: admin\n    key: {}\n    appids: [\"*\"]\n    admin: true\naccounts:\n",
            KeyHash::of_key(ADMIN_KEY),
            base = sim.base_url(),
        );
        let entries = [
            (&shop, "Flagship Shop", "mode: stable", vec![]),
            (&news, "Legacy News", "mode: legacy", vec![]),
            (
                &blocked,
                "Blocked Mall",
                "mode: stable",
                vec!["203.0.113.9".to_string()],
            ),
            (&paused, "Paused Brand", "enabled: false", vec![]),
        ];
        for (appid, name, extra, whitelist) in entries {
            let secret = format!("ui-secret-{appid}");
            sim.register_app(AppRegistration {
                appid: appid.to_string(),
                secret: secret.clone(),
                ip_whitelist: whitelist,
            });
            std::fs::write(secrets.join(appid.as_str()), &secret).expect("secret file");
            yaml.push_str(&format!(
                "  - appid: {appid}\n    name: {name}\n    secret_file: secrets/{appid}\n    {extra}\n"
            ));
        }
        let (corpid, agentid) = desk.as_str().split_once(':').expect("corpid:agentid");
        let secret = format!("ui-secret-{corpid}");
        sim.register_app(AppRegistration {
            appid: desk.to_string(),
            secret: secret.clone(),
            ip_whitelist: vec![],
        });
        std::fs::write(secrets.join("desk"), &secret).expect("secret file");
        yaml.push_str(&format!(
            "  - kind: wecom\n    corpid: {corpid}\n    agentid: {agentid}\n    name: Support Desk\n    secret_file: secrets/desk\n"
        ));
        let config = dir.path().join("accounts.yaml");
        std::fs::write(&config, yaml).expect("write the config");
        let server = Running::spawn(wxtoken(&[
            "serve",
            "--config",
            config.to_str().expect("utf-8 path"),
        ]));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a client");
        let fleet = Fleet {
            _sim: sim,
            http,
            _dir: dir,
            listen,
            _server: server,
            accounts: vec![
                shop.clone(),
                news.clone(),
                desk.clone(),
                blocked.clone(),
                paused.clone(),
            ],
            shop,
            news,
            desk,
            blocked,
            paused,
        };
        fleet.loaded().await;
        fleet
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// Waits until every enabled account has finished its first fetch.
    async fn loaded(&self) {
        Wait::up_to(Duration::from_secs(30))
            .every(Duration::from_millis(50))
            .until_async("wxtoken loads its tokens", async || {
                self.http
                    .get(self.url("/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
            })
            .await;
    }

    /// How many times `/v1/accounts` was answered (read from `/metrics`).
    async fn accounts_calls(&self) -> u64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| {
                l.starts_with("wxtoken_http_requests_total{")
                    && l.contains("route=\"/v1/accounts\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

/// A headless Chromium (its own process group, killed on drop) and one page
/// of it, driven over the DevTools protocol.
struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    session: Option<String>,
}

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

impl Chromium {
    /// Starts `chromium` (or `$CHROMIUM`) headless and connects to it.
    /// Panics, saying how to install it, when it is not there.
    async fn launch() -> Chromium {
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_string());
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut cmd = Command::new(&binary);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-port=0",
            "--no-first-run",
            "--no-default-browser-check",
            "--no-proxy-server",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot start {binary} ({e}): the status page test needs Chromium; install it \
                 (`apt-get install chromium`, as .ci/run does) or set CHROMIUM to its path"
            ),
        };
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            // Keep reading after the line we want, so Chromium never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url =
            match tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
                .await
                .expect("the reader")
            {
                Ok(url) => url,
                Err(e) => {
                    let _ = child.kill();
                    panic!("{binary} printed no `DevTools listening on` line ({e})")
                }
            };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to Chromium at {url}: {e}"));
        let mut browser = Chromium {
            child,
            _profile: profile,
            ws,
            next_id: 0,
            session: None,
        };
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        browser.session = Some(
            attached["sessionId"]
                .as_str()
                .expect("a session")
                .to_string(),
        );
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        browser
    }

    /// Sends one DevTools command (to the page once attached) and returns
    /// its result; panics on an error answer or after [`COMMAND_TIMEOUT`].
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{method}: cannot send ({e})"));
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, async {
            while let Some(frame) = self.ws.next().await {
                let frame = frame.unwrap_or_else(|e| panic!("{method}: {e}"));
                let Message::Text(text) = frame else { continue };
                let value: Value = serde_json::from_str(&text).expect("DevTools JSON");
                if value["id"] == id {
                    return value;
                }
            }
            panic!("{method}: Chromium closed the connection")
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within {COMMAND_TIMEOUT:?}"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Loads `url` in the page and waits until its script has run.
    async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.until(
            "the page loads",
            "document.readyState === 'complete' && location.pathname === '/ui' && !!document.getElementById('rows')",
        )
        .await;
    }

    /// The value of the JavaScript `expression` in the page; panics when it throws.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression} threw: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Polls `condition` (JavaScript) until it is `true`, for at most 20 s.
    async fn until(&mut self, what: &str, condition: &str) {
        Wait::up_to(Duration::from_secs(20))
            .every(Duration::from_millis(50))
            .until_async(what, async || {
                self.eval(condition).await == Value::Bool(true)
            })
            .await;
    }

    /// Focuses the input `id` and types `text` into it as a user would.
    async fn type_into(&mut self, id: &str, text: &str) {
        self.eval(&format!("document.getElementById('{id}').focus(), true"))
            .await;
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// Waits until `what` (a search, a filter) leaves one row shown; its appid.
    async fn only_row(&mut self, what: &str) -> String {
        self.until(
            &format!("{what} leaves one row"),
            "document.querySelectorAll('#rows tr').length === 1",
        )
        .await;
        self.rows().await[0]["appid"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Clicks the count of `state` at the top of the page.
    async fn click_count(&mut self, state: &str) {
        self.eval(&format!(
            "document.querySelector('#counts button[data-count-state=\"{state}\"]').click(), true"
        ))
        .await;
    }

    /// What each shown row says, read from its cells.
    async fn rows(&mut self) -> Vec<Value> {
        let rows = self
            .eval(
                "[...document.querySelectorAll('#rows tr')].map(tr => {
                    const text = c => (tr.querySelector(c) || {textContent: null}).textContent;
                    const title = c => (tr.querySelector(c + ' time') || {title: null}).title;
                    return {
                        appid: tr.dataset.appid, state: tr.dataset.state,
                        configError: tr.dataset.configError || null, kind: tr.dataset.kind,
                        stateText: text('.c-state'), expiry: text('.c-expiry'),
                        expiryTitle: title('.c-expiry'), serveUntil: text('.c-serve-until'),
                        serveUntilTitle: title('.c-serve-until'), next: text('.c-next'),
                        error: text('.c-error'), errcode: text('.c-error .err-code'),
                        errmsg: text('.c-error .err-msg'), ip: text('.c-error .err-ip'),
                        calls: (tr.querySelector('.c-calls') || {firstChild: null}).firstChild?.textContent ?? null,
                        quotas: [...tr.querySelectorAll('.c-calls .quota')].map(q => q.textContent),
                    };
                })",
            )
            .await;
        rows.as_array().expect("a list of rows").clone()
    }

    /// Saves a PNG of the page at `path`.
    async fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine as _;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("image data"))
            .expect("base64 PNG");
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Asks Chromium to quit (the drop kills it anyway).
    async fn close(mut self) {
        self.session = None;
        self.next_id += 1;
        let message = json!({"id": self.next_id, "method": "Browser.close"});
        let _ = self.ws.send(Message::text(message.to_string())).await;
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Chromium's renderers share its process group: end them all.
        // SAFETY: kill(2) on the group this test created; no memory is touched.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
