//! The Grafana dashboard and the Prometheus alerting rules in `dashboards/`
//! are kept honest: promtool checks the rules and runs their unit tests, every
//! alert has `for`, a severity, a summary, a description and a unit test, the
//! dashboard uses its datasource variable everywhere, every metric it names
//! exists, and a real Prometheus scraping a live wxtoken evaluates every
//! dashboard and alert expression (each dashboard query must return data), in
//! the default (full) `metrics.per_account` mode and in essential mode, with
//! an Open Platform component and one authorizer beside the accounts.
//!
//! Needs `prometheus` and `promtool` (Debian package `prometheus`). Without
//! them the tests print a skip notice and pass, except under `CI`, where they
//! fail: `.ci/run` must install the package.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use wxtoken::domain::Mode;
use wxtoken::metrics::Metrics;

use crate::app::{ADMIN_KEY, READER_KEY, TestApp, TestAppBuilder};

/// How long Prometheus may take to start and scrape wxtoken.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);

/// The data source variable every panel and target must use.
const DATASOURCE_UID: &str = "${DS_PROMETHEUS}";

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

fn read(name: &str) -> String {
    let path = dashboards_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Whether we run under CI (`CI` set to anything but empty, `0` or `false`).
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The path of `name` on `PATH`. When it is missing: fails under CI, else
/// prints a loud skip notice and returns `None`.
pub(crate) fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        assert!(
            !under_ci(),
            "`{name}` is not installed, but CI is set: .ci/run must install it \
             (`apt-get install -y prometheus`, which provides prometheus and promtool)"
        );
        // Straight to stderr: the test harness does not capture this, so the
        // skip shows without --nocapture.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!! SKIPPED {test}: `{name}` is not on PATH. \
             Install it (`apt-get install prometheus`) to check the dashboard and alerts. !!!!!!!!\n"
        );
    }
    found
}

/// Runs `promtool args...` in `dashboards/` and asserts it succeeds.
fn promtool(args: &[&str], test: &str) {
    let Some(promtool) = tool("promtool", test) else {
        return;
    };
    let output = Command::new(&promtool)
        .args(args)
        .current_dir(dashboards_dir())
        .output()
        .expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `promtool check metrics` on `text` (a `/metrics` body) and asserts
/// it parses and passes the linter. Skipped (loudly) without promtool.
pub(crate) fn promtool_check_metrics(text: &str, test: &str) {
    let Some(promtool) = tool("promtool", test) else {
        return;
    };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    let mut stdin = child.stdin.take().expect("promtool's stdin");
    let body = text.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()));
    let output = child.wait_with_output().expect("promtool ends");
    writer
        .join()
        .expect("the writer thread ends")
        .expect("promtool reads the metrics");
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}):\n{}\n{}\n--- metrics ---\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_alert_rules() {
    promtool(
        &["check", "rules", "alerts.yaml"],
        "promtool_accepts_the_alert_rules",
    );
}

#[test]
fn promtool_unit_tests_of_the_alerts_pass() {
    promtool(
        &["test", "rules", "alerts.test.yaml"],
        "promtool_unit_tests_of_the_alerts_pass",
    );
}

#[test]
fn the_example_prometheus_config_is_valid() {
    promtool(
        &["check", "config", "prometheus.yml"],
        "the_example_prometheus_config_is_valid",
    );
}

// ---------------------------------------------------------------- the rules

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct RuleTests {
    rule_files: Vec<String>,
    tests: Vec<RuleTest>,
}

#[derive(Debug, Deserialize)]
struct RuleTest {
    #[serde(default)]
    alert_rule_test: Vec<AlertCase>,
}

#[derive(Debug, Deserialize)]
struct AlertCase {
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpectedAlert>,
}

#[derive(Debug, Deserialize)]
struct ExpectedAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, String>,
}

fn alert_rules() -> Vec<Rule> {
    let file: RuleFile = serde_yaml::from_str(&read("alerts.yaml")).expect("alerts.yaml parses");
    file.groups.into_iter().flat_map(|g| g.rules).collect()
}

#[test]
fn every_alert_has_for_severity_summary_description_and_unit_tests() {
    let rules = alert_rules();
    let tests: RuleTests =
        serde_yaml::from_str(&read("alerts.test.yaml")).expect("alerts.test.yaml parses");
    assert_eq!(tests.rule_files, ["alerts.yaml"]);
    let cases: Vec<&AlertCase> = tests
        .tests
        .iter()
        .flat_map(|t| &t.alert_rule_test)
        .collect();

    assert!(rules.len() >= 10, "expected at least 10 alerts: {rules:?}");
    let mut names = BTreeSet::new();
    for rule in &rules {
        let Some(name) = &rule.alert else {
            assert!(rule.record.is_some(), "a rule is neither alert nor record");
            continue;
        };
        assert!(names.insert(name.clone()), "alert {name} is defined twice");
        let for_ = rule
            .for_
            .as_deref()
            .unwrap_or_else(|| panic!("alert {name} has no `for`"));
        let duration = humantime::parse_duration(for_)
            .unwrap_or_else(|e| panic!("alert {name}: `for: {for_}` is not a duration: {e}"));
        assert!(!duration.is_zero(), "alert {name} has `for: {for_}`");
        let severity = rule.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "alert {name} has severity {severity:?}, want critical or warning"
        );
        for annotation in ["summary", "description"] {
            assert!(
                rule.annotations
                    .get(annotation)
                    .is_some_and(|text| !text.trim().is_empty()),
                "alert {name} has no {annotation}"
            );
        }
        // Per-account alerts name the account.
        if rule.expr.contains("wxtoken_account_")
            || rule.expr.contains("wxtoken_token_")
            || rule.expr.contains("_calls_today")
            || rule.expr.contains("wxtoken_upstream_quota_")
            || rule.expr.contains("wxtoken_actor_restarts")
        {
            assert!(
                rule.annotations["summary"].contains("$labels.appid"),
                "per-account alert {name} does not name the account in its summary"
            );
        }

        let firing: Vec<&&AlertCase> = cases
            .iter()
            .filter(|c| &c.alertname == name && !c.exp_alerts.is_empty())
            .collect();
        assert!(
            !firing.is_empty(),
            "alerts.test.yaml has no case where {name} fires"
        );
        assert!(
            cases
                .iter()
                .any(|c| &c.alertname == name && c.exp_alerts.is_empty()),
            "alerts.test.yaml has no case where {name} stays quiet"
        );
        let checked = firing.iter().flat_map(|c| &c.exp_alerts).any(|a| {
            a.exp_labels.get("severity").map(String::as_str) == severity
                && a.exp_annotations.contains_key("summary")
                && a.exp_annotations.contains_key("description")
        });
        assert!(
            checked,
            "no firing case of {name} checks its severity, summary and description"
        );
    }
    for case in &cases {
        assert!(
            names.contains(&case.alertname),
            "alerts.test.yaml tests {}, which alerts.yaml does not define",
            case.alertname
        );
    }

    // The config-error alert tells what to do for the common errcodes.
    let config_error = rules
        .iter()
        .find(|r| r.expr.contains("wxtoken_account_config_error"))
        .expect("an alert on wxtoken_account_config_error");
    let description = &config_error.annotations["description"];
    for needle in [
        "40125",
        "40164",
        "40243",
        "40013",
        "$labels.errcode",
        "$labels.ip",
    ] {
        assert!(
            description.contains(needle),
            "the config-error alert's description does not mention {needle}"
        );
    }
}

// ---------------------------------------------------------------- the dashboard

fn dashboard() -> Value {
    serde_json::from_str(&read("wxtoken.json")).expect("wxtoken.json is JSON")
}

/// Every panel, rows' nested panels included, except the rows themselves.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            if panel["type"] == "row" {
                walk(&panel["panels"], out);
            } else {
                out.push(panel);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// (panel title, expr) of every target of the dashboard.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap_or("").to_string()))
        })
        .collect()
}

/// `expr` with Grafana's variables replaced as Grafana would (all accounts).
fn interpolate(expr: &str) -> String {
    let expr = expr
        .replace("${appid}", ".*")
        .replace("$appid", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "5m");
    // label_replace's `"$1"` is PromQL's, not a Grafana variable (Grafana
    // leaves `$1` alone: no variable has that name).
    assert!(
        !expr.replace("\"$1\"", "").contains('$'),
        "uninterpolated variable in {expr}"
    );
    expr
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> &'a Value {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("the dashboard has no `{name}` variable"))
}

#[test]
fn the_dashboard_uses_its_datasource_variable_everywhere() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());

    let ds = variable(&dashboard, "DS_PROMETHEUS");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");

    let appid = variable(&dashboard, "appid");
    assert_eq!(appid["type"], "query");
    assert_eq!(appid["multi"], true);
    assert_eq!(appid["includeAll"], true);
    assert_eq!(appid["datasource"]["uid"], DATASOURCE_UID);
    let query = appid["query"]
        .as_str()
        .or_else(|| appid["query"]["query"].as_str())
        .expect("the appid variable has a query");
    assert_eq!(query, "label_values(wxtoken_account_state, appid)");

    let panels = panels(&dashboard);
    assert!(panels.len() >= 12, "only {} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a numeric panel id")),
            "panel id of {title} is not unique"
        );
        assert_eq!(
            panel["datasource"]["uid"], DATASOURCE_UID,
            "panel {title} does not use the DS_PROMETHEUS variable"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"], DATASOURCE_UID,
                "a target of panel {title} does not use the DS_PROMETHEUS variable"
            );
            let expr = target["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "a target of {title} has no expr");
            // Per-account series are filtered by the account variable.
            for per_account in [
                "wxtoken_account_state",
                "wxtoken_account_config_error",
                "wxtoken_token_",
                "wxtoken_next_refresh",
                "wxtoken_refreshes_total",
                "wxtoken_upstream_calls_today",
                "wxtoken_actor_restarts_total",
            ] {
                if expr.contains(per_account) {
                    assert!(
                        expr.contains("appid=~\"$appid\""),
                        "panel {title} queries {per_account} without the $appid filter: {expr}"
                    );
                }
            }
        }
    }
    // The panels the issue asks for.
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Ready",
        "Accounts by state",
        "Version",
        "Time to token expiry (soonest first)",
        "Account state",
        "Refreshes by reason and result",
        "Upstream errors by outcome / errcode",
        "Upstream latency (p50, p90, p99)",
        "Upstream calls today (of the 2000/day quota)",
        "Daily quota used (WeChat's getApiQuota)",
        "Requests by route",
        "Error ratio (4xx, 5xx)",
        "Latency by route (p50, p90, p99)",
        "Actor restarts",
        "Store write errors",
        "Config reloads",
        "Verify ticket age per component",
        "Component token time to expiry",
        "Authorizers by state",
        "Open Platform events by InfoType and result",
        "Refresh-token repairs",
        "Proxied requests by API group and outcome",
        "Proxy retries after a rejected token",
        "Proxy latency to the answer head (p50, p99)",
        "Face token requests by API and outcome",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted:?}: {titles:?}");
    }
}

/// The `wxtoken_*` names in `expr`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("wxtoken_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_named_by_the_dashboard_and_the_alerts_exists() {
    // Every fleet family (the registry) and every per-account family (written
    // from the slots at scrape time; unit tests show full mode writes each).
    let m = Metrics::new();
    m.upstream_requests
        .with_label_values(&["stable_token", "ok"])
        .inc();
    m.http_requests
        .with_label_values(&["/v1/token/{appid}", "200"])
        .inc();
    m.http_duration
        .with_label_values(&["/v1/token/{appid}"])
        .observe(0.001);
    m.store_write_errors.with_label_values(&["redb"]).inc();
    m.store_up.with_label_values(&["redb"]).set(1);
    m.open_event("component_verify_ticket", "ok");
    m.client_requests
        .with_label_values(&["reader", "/v1/token/{appid}", "200"])
        .inc();
    let mut known = BTreeSet::new();
    for family in m.registry.gather() {
        let name = family.name().to_string();
        if family.get_field_type() == prometheus::proto::MetricType::HISTOGRAM {
            for suffix in ["_bucket", "_sum", "_count"] {
                known.insert(format!("{name}{suffix}"));
            }
        }
        known.insert(name);
    }
    for family in wxtoken::metrics::PER_ACCOUNT_FAMILIES
        .into_iter()
        .chain(wxtoken::metrics::OPEN_FAMILIES)
    {
        known.insert(family.name.to_string());
    }

    let dashboard = dashboard();
    let exprs = dashboard_exprs(&dashboard)
        .into_iter()
        .map(|(title, expr)| (format!("panel {title}"), expr))
        .chain(alert_rules().into_iter().map(|r| {
            (
                format!("alert {}", r.alert.unwrap_or_default()),
                r.expr.clone(),
            )
        }));
    for (place, expr) in exprs {
        for name in metric_names(&expr) {
            assert!(
                known.contains(&name),
                "{place} uses {name}, which wxtoken does not export: {expr}"
            );
        }
    }
}

// ---------------------------------------------------------------- live Prometheus

/// A `prometheus` process on a free loopback port, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second as job `wxtoken`,
    /// with the repository's alert rules loaded.
    fn start(binary: &Path, target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("prometheus.yml");
        let rules = dashboards_dir().join("alerts.yaml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: wxtoken\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules = rules.display().to_string(),
            ),
        )
        .expect("write the Prometheus config");
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("local addr").port()
        };
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("create the log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log file"))
            .stderr(log_file)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log when Prometheus has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
    }

    /// `GET /api/v1/query?query=expr`: the whole JSON answer (status unchecked),
    /// or `None` while Prometheus does not answer.
    async fn query(&self, http: &reqwest::Client, expr: &str) -> Option<Value> {
        let response = http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// `GET path` as JSON, `None` while Prometheus does not answer.
    async fn get(&self, http: &reqwest::Client, path: &str) -> Option<Value> {
        let response = http.get(format!("{}{path}", self.url)).send().await.ok()?;
        response.json().await.ok()
    }

    /// Polls `expr` until `done` says yes about its result (bounded).
    async fn wait_for(
        &mut self,
        http: &reqwest::Client,
        expr: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) {
        let deadline = Instant::now() + SCRAPE_TIMEOUT;
        loop {
            self.assert_running();
            let answer = self.query(http, expr).await;
            let result = answer
                .as_ref()
                .and_then(|a| a["data"]["result"].as_array())
                .map(Vec::as_slice)
                .unwrap_or_default();
            if done(result) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not see {what} within {SCRAPE_TIMEOUT:?}; `{expr}` gives {answer:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The numeric value of one sample of a query result.
fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Requests that give every HTTP panel something to show: tokens (200), the
/// broken account (503), no key (401), an unknown path (404), and, with
/// `refresh`, forced refreshes, so WeChat latency has fresh observations
/// (admin refreshes are throttled to one per account every 30 s, so one
/// round of them is all a test gets).
async fn traffic(app: &TestApp, refresh: bool) {
    for account in app.healthy() {
        let response = app
            .get_token(account.appid.as_str(), Some(READER_KEY))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        if !refresh {
            continue;
        }
        let response = app
            .admin_refresh(account.appid.as_str(), Some(ADMIN_KEY))
            .await;
        assert!(
            response.status().is_success() || response.status() == StatusCode::TOO_MANY_REQUESTS,
            "admin refresh answered {}",
            response.status()
        );
    }
    for account in app.broken() {
        let response = app
            .get_token(account.appid.as_str(), Some(READER_KEY))
            .await;
        assert!(response.status().is_server_error(), "{}", response.status());
    }
    let first = &app.accounts[0].appid;
    assert_eq!(
        app.get_token(first.as_str(), None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let unknown = app.call(reqwest::Method::GET, "/no/such/path", None).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    // The face and the proxy, so that their panels have data.
    let healthy = &app.healthy().next().expect("a healthy account").appid;
    let face = app
        .call(
            reqwest::Method::GET,
            &format!(
                "/cgi-bin/token?grant_type=client_credential&appid={healthy}&secret={READER_KEY}"
            ),
            None,
        )
        .await;
    assert_eq!(face.status(), StatusCode::OK);
    let token = app.current_token(healthy);
    let proxied = app
        .call(
            reqwest::Method::GET,
            &format!("/cgi-bin/user/info?access_token={token}&openid=o-observed"),
            None,
        )
        .await;
    assert_eq!(proxied.status(), StatusCode::OK);
}

#[actix_web::test]
async fn prometheus_evaluates_every_dashboard_and_alert_expression_against_a_live_server() {
    // Three accounts: the default mode is full.
    live_server_check(
        "prometheus_evaluates_every_dashboard_and_alert_expression_against_a_live_server",
        None,
        |_| false,
    )
    .await;
}

#[actix_web::test]
async fn in_essential_mode_every_dashboard_query_but_the_full_only_ones_returns_data() {
    // Essential mode writes no fetched / serve-until / next-refresh series,
    // and a restart counter only once an actor restarted (none here).
    live_server_check(
        "in_essential_mode_every_dashboard_query_but_the_full_only_ones_returns_data",
        Some("essential"),
        |expr| {
            [
                "wxtoken_token_fetched_timestamp_seconds",
                "wxtoken_token_serve_until_timestamp_seconds",
                "wxtoken_next_refresh_timestamp_seconds",
                "wxtoken_actor_restarts_total",
            ]
            .iter()
            .any(|name| expr.contains(name))
        },
    )
    .await;
}

/// A real Prometheus scrapes a live wxtoken (in `metrics.per_account` mode
/// `mode`, or the default): every dashboard query is valid and returns data
/// (except those `may_be_empty` allows), every alert expression is valid and
/// the broken account's config error alert is pending.
async fn live_server_check(test: &str, mode: Option<&str>, may_be_empty: fn(&str) -> bool) {
    let Some(binary) = tool("prometheus", test) else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = TestAppBuilder::new()
        .account_with_tickets(Mode::Stable, &[wxtoken::domain::TicketKind::Jsapi])
        .account(Mode::Legacy)
        .broken_account(Mode::Stable)
        .component(false);
    if let Some(mode) = mode {
        builder = builder.metrics_setting(&format!("per_account: {mode}"));
    }
    let app = builder.spawn().await;
    let broken = app.broken().next().expect("a broken account").appid.clone();
    // An authorizer, so that the Open Platform panels have one of each:
    // ticket, component token, authorizer, events.
    crate::metrics::authorize(&app, &crate::support::unique_appid()).await;
    traffic(&app, false).await;

    let mut prometheus = Prometheus::start(&binary, app.addr);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    prometheus
        .wait_for(&http, "up{job=\"wxtoken\"}", "a successful scrape", |r| {
            r.iter().any(|s| sample_value(s) == 1.0)
        })
        .await;

    // Traffic between scrapes, so that rates are not zero, then wait until
    // a scrape has seen all of it.
    traffic(&app, true).await;
    let metrics = app.metrics().await;
    let token_requests = crate::support::metric_value(
        &metrics,
        "wxtoken_http_requests_total",
        &[("route", "/v1/token/{appid}")],
    );
    prometheus
        .wait_for(
            &http,
            "sum(wxtoken_http_requests_total{route=\"/v1/token/{appid}\"})",
            "the second round of requests",
            |r| r.iter().any(|s| sample_value(s) >= token_requests),
        )
        .await;
    // One more scrape interval, so rate() over the window sees two samples
    // after the traffic as well.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The appid variable lists every configured account.
    let values = prometheus
        .get(
            &http,
            "/api/v1/label/appid/values?match[]=wxtoken_account_state",
        )
        .await
        .expect("label values");
    for account in &app.accounts {
        assert!(
            values["data"]
                .as_array()
                .is_some_and(|v| v.iter().any(|a| a == account.appid.as_str())),
            "the appid variable would not list {}: {values}",
            account.appid
        );
    }

    // Every dashboard query is valid PromQL and returns data.
    let dashboard = dashboard();
    let mut failures = Vec::new();
    for (title, expr) in dashboard_exprs(&dashboard) {
        let expr = interpolate(&expr);
        let answer = prometheus.query(&http, &expr).await;
        let Some(answer) = answer.filter(|a| a["status"] == "success") else {
            failures.push(format!("panel {title}: `{expr}` is rejected"));
            continue;
        };
        let data = &answer["data"];
        let values: Vec<f64> = match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => data["result"]
                .as_array()
                .map(|r| r.iter().map(sample_value).collect())
                .unwrap_or_default(),
            Some("scalar") => vec![sample_value(
                &serde_json::json!({ "value": data["result"] }),
            )],
            _ => Vec::new(),
        };
        if values.is_empty() {
            if !may_be_empty(&expr) {
                failures.push(format!("panel {title}: `{expr}` returns no data"));
            }
        } else if !values.iter().any(|v| v.is_finite()) {
            failures.push(format!(
                "panel {title}: `{expr}` returns only NaN/Inf: {data}"
            ));
        }
    }

    // Every alert expression is valid PromQL; most are empty on a healthy
    // server, but the broken account's config error must show.
    for rule in alert_rules() {
        let name = rule.alert.clone().unwrap_or_default();
        let answer = prometheus.query(&http, &rule.expr).await;
        let Some(answer) = answer.filter(|a| a["status"] == "success") else {
            failures.push(format!("alert {name}: `{}` is rejected", rule.expr));
            continue;
        };
        if rule.expr.contains("wxtoken_account_config_error") {
            let result = answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let shows = result.iter().any(|s| {
                s["metric"]["appid"] == broken.as_str() && s["metric"]["errcode"] == "40125"
            });
            if !shows {
                failures.push(format!(
                    "alert {name}: `{}` does not show the broken account {broken} with errcode 40125: {answer}",
                    rule.expr
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}\n--- wxtoken metrics ---\n{}",
        failures.len(),
        failures.join("\n"),
        app.metrics().await
    );

    // Prometheus evaluates the rules without error, and the config-error
    // alert is pending (its `for` has not passed) for the broken account.
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    loop {
        prometheus.assert_running();
        let rules = prometheus
            .get(&http, "/api/v1/rules?type=alert")
            .await
            .unwrap_or_default();
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let evaluated = !all.is_empty()
            && all
                .iter()
                .all(|r| r["lastEvaluation"] != "0001-01-01T00:00:00Z");
        let unhealthy: Vec<String> = all
            .iter()
            .filter(|r| r["health"] == "err")
            .map(|r| format!("{}: {}", r["name"], r["lastError"]))
            .collect();
        assert!(
            unhealthy.is_empty(),
            "rules fail to evaluate: {unhealthy:?}"
        );
        let pending = all.iter().any(|r| {
            r["name"] == "WxtokenAccountConfigError"
                && r["alerts"].as_array().is_some_and(|alerts| {
                    alerts
                        .iter()
                        .any(|a| a["labels"]["appid"] == broken.as_str())
                })
        });
        if evaluated && pending {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not evaluate the rules (or WxtokenAccountConfigError for {broken}) within {SCRAPE_TIMEOUT:?}: {rules}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
