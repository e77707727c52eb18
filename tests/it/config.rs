//! Tests: loading and validating `accounts.yaml`, and `wxtoken check` (contract §1, §2).
//!
//! Library tests go through `load`/`load_str` with an explicit environment map;
//! CLI tests run the real binary with a controlled environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use secrecy::ExposeSecret;
use wxtoken::config::{AppScope, LoadOptions, Loaded, Problems, load, load_str, summary};
use wxtoken::domain::{AppId, Mode};

use crate::support::fifo;

/// The environment variables the shipped `accounts.yaml` needs.
const SHIPPED_VARS: [&str; 3] = [
    "WX_SECRET_BRAND_A",
    "WX_SECRET_BRAND_B",
    "WX_SECRET_BRAND_C",
];

/// The smallest valid configuration: one account, its secret from `$S`.
const MINIMAL: &str = "accounts:\n  - appid: wx1111111111111111\n    secret: ${S}\n";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/config")
}

fn env(vars: &[(&str, &str)]) -> LoadOptions {
    LoadOptions::from_pairs(vars.iter().copied())
}

fn load_text(yaml: &str, vars: &[(&str, &str)]) -> Result<Loaded, Problems> {
    load_str(yaml, Path::new("test.yaml"), &env(vars))
}

fn loaded(yaml: &str, vars: &[(&str, &str)]) -> Loaded {
    match load_text(yaml, vars) {
        Ok(l) => l,
        Err(problems) => panic!("expected a valid config, got:\n{problems}"),
    }
}

/// Every error of an invalid config, as `test.yaml:LINE: message` lines.
fn errors(yaml: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match load_text(yaml, vars) {
        Ok(_) => panic!("expected problems, the config loaded:\n{yaml}"),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

/// Asserts that exactly one line starts with `prefix` and contains `fragment`.
fn assert_has(lines: &[String], prefix: &str, fragment: &str) {
    let hits = lines
        .iter()
        .filter(|l| l.starts_with(prefix) && l.contains(fragment))
        .count();
    assert_eq!(
        hits,
        1,
        "expected one line starting {prefix:?} containing {fragment:?} in:\n{}",
        lines.join("\n")
    );
}

/// `wxtoken` with none of the variables the tests care about inherited.
fn wxtoken() -> Command {
    let mut cmd = Command::cargo_bin("wxtoken").expect("the wxtoken binary is built");
    for var in SHIPPED_VARS {
        cmd.env_remove(var);
    }
    cmd.env_remove("WXTOKEN_CONFIG")
        .env_remove("WX_TEST_UNSET_SECRET");
    cmd
}

/// `wxtoken check --config CONFIG` run in `dir`.
fn check_in(dir: impl AsRef<Path>, config: &str) -> std::process::Output {
    wxtoken()
        .current_dir(dir)
        .args(["check", "--config", config])
        .output()
        .unwrap()
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_reports_every_problem_with_its_line() {
    let out = check_in(fixtures(), "many_mistakes.yaml");
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout_of(&out).is_empty());
    let lines: Vec<String> = stderr_of(&out).lines().map(str::to_string).collect();

    let expected: &[(usize, &str)] = &[
        (2, "listen: \"0.0.0.0:80800\" is not a socket address"),
        (
            5,
            "upstream.base_urls[0]: \"http://api.weixin.qq.com\" uses plain http",
        ),
        (6, "upstream.timeout: \"30\" has no unit"),
        (7, "upstream.max_concurrency must be at least 1"),
        (8, "unknown key \"retries\" in upstream"),
        (10, "unknown key \"pth\" in store (did you mean \"path\"?)"),
        (12, "refresh.legacy_at must be between 0 and 1"),
        (13, "refresh.jitter must be at least 0 and less than 0.5"),
        (
            14,
            "refresh.stable_window must be more than 0s and less than 2h",
        ),
        (
            15,
            "refresh.backoff_initial (10m) is longer than refresh.backoff_max (5m)",
        ),
        (
            19,
            "clients[0].key must be \"sha256:\" followed by 64 hex digits",
        ),
        (21, "duplicate client name \"shop\" (first at line 18)"),
        (23, "\"*\" must be the only entry of clients[1].appids"),
        (24, "clients[1].admin: \"yes\" is not a boolean"),
        (27, "environment variable WX_TEST_UNSET_SECRET is not set"),
        (28, "unknown mode \"turbo\""),
        (29, "duplicate appid wx1111111111111111 (first at line 26)"),
        (
            31,
            "unknown key \"secert\" in accounts[1] (did you mean \"secret\"?)",
        ),
        (32, "\"wxSHORT\" is not a WeChat appid"),
        (32, "accounts[2] has no secret"),
        (
            35,
            "cannot read \"./no-such-secret-file.txt\": no such file",
        ),
        (36, "accounts[3].enabled: \"maybe\" is not a boolean"),
        (38, "accounts[4].secret is empty"),
    ];
    for (line, fragment) in expected {
        assert_has(&lines, &format!("many_mistakes.yaml:{line}: "), fragment);
    }
    assert_eq!(
        lines.len(),
        expected.len(),
        "unexpected extra lines:\n{}",
        lines.join("\n")
    );
    assert!(!stderr_of(&out).contains("literal-secret-in-yaml"));
}

#[test]
fn check_passes_the_shipped_accounts_yaml_when_its_secrets_are_set() {
    let out = wxtoken()
        .current_dir(repo_root())
        .envs(SHIPPED_VARS.map(|v| (v, "0123456789abcdef0123456789abcdef")))
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
    assert_eq!(
        stdout_of(&out),
        "accounts.yaml: ok, 3 accounts (2 stable, 1 legacy, 3 enabled), 2 clients, listen 127.0.0.1:8080\n"
    );
    assert_eq!(
        stderr_of(&out),
        "",
        "the shipped file should have no warnings"
    );
    assert!(!stdout_of(&out).contains("0123456789abcdef"));
}

#[test]
fn check_lists_each_missing_secret_variable_of_the_shipped_accounts_yaml() {
    let out = wxtoken()
        .current_dir(repo_root())
        .env("WX_SECRET_BRAND_B", "set-but-not-shown-4711")
        .args(["check", "--config", "accounts.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = stderr_of(&out);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    for (line, var) in lines.iter().zip(["WX_SECRET_BRAND_A", "WX_SECRET_BRAND_C"]) {
        assert!(line.starts_with("accounts.yaml:"), "{line}");
        assert!(
            line.contains(&format!("environment variable {var} is not set")),
            "{line}"
        );
    }
    assert!(!stderr.contains("set-but-not-shown-4711"));
}

#[test]
fn check_names_an_unreadable_config_file_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_in(dir.path(), "missing.yaml");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr_of(&out),
        "missing.yaml: config file not found (give its path with --config PATH or WXTOKEN_CONFIG)\n"
    );

    let out = check_in(dir.path(), ".");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr_of(&out).lines().count(), 1);
}

#[test]
fn check_prints_warnings_to_stderr_and_still_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        format!("listen: 127.0.0.1:9000\n{MINIMAL}"),
    )
    .unwrap();
    let out = wxtoken()
        .current_dir(dir.path())
        .env("S", "sekrit-value-for-check")
        .args(["check", "--config", "a.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout_of(&out),
        "a.yaml: ok, 1 account (1 stable, 0 legacy, 1 enabled), 0 clients, listen 127.0.0.1:9000\n"
    );
    assert_eq!(
        stderr_of(&out),
        "a.yaml:1: warning: no clients are configured: any process on this host can read every token without a key; add `clients:` to require keys\n"
    );
}

#[test]
fn secret_values_never_appear_in_check_output_problems_or_debug() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("brand_b.secret"),
        "file-secret-value-9876\n",
    )
    .unwrap();
    let valid = "\
store:
  redis: redis://:redis-password-5555@10.0.0.5:6379/0
accounts:
  - appid: wx1111111111111111
    secret: ${ENV_SECRET}
  - appid: wx2222222222222222
    secret_file: brand_b.secret
  - appid: wx3333333333333333
    secret: literal-secret-3333
";
    let path = dir.path().join("accounts.yaml");
    std::fs::write(&path, valid).unwrap();
    let vars = [("ENV_SECRET", "env-secret-value-1234")];
    let secrets = [
        "env-secret-value-1234",
        "file-secret-value-9876",
        "literal-secret-3333",
        "redis-password-5555",
    ];

    let loaded = load(&path, &env(&vars)).unwrap();
    let debug = format!("{:?}", loaded.config);
    for s in secrets {
        assert!(!debug.contains(s), "{s} leaked into Debug: {debug}");
    }
    assert_eq!(
        loaded.config.accounts[0].secret.expose_secret(),
        "env-secret-value-1234"
    );
    assert_eq!(
        loaded.config.accounts[1].secret.expose_secret(),
        "file-secret-value-9876"
    );

    let check = || {
        wxtoken()
            .current_dir(dir.path())
            .env("ENV_SECRET", "env-secret-value-1234")
            .arg("check")
            .output()
            .unwrap()
    };
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let all = stdout_of(&out) + &stderr_of(&out);
    for s in secrets {
        assert!(!all.contains(s), "{s} leaked into check output: {all}");
    }

    // The same secrets next to mistakes: the problems name keys, never values.
    let broken = valid
        .replace("redis://", "redis-typo://")
        .replace("wx1111111111111111", "wx1")
        .replace("wx2222222222222222", "wx2")
        .replace(
            "secret: literal-secret-3333",
            "secret: literal-secret-3333 ${BAD NAME}",
        )
        + "    mode: fast\n";
    std::fs::write(&path, &broken).unwrap();
    let problems = load(&path, &env(&vars)).unwrap_err();
    assert!(problems.len() >= 5, "{problems}");
    let text = problems.to_string();
    for s in secrets {
        assert!(!text.contains(s), "{s} leaked into a problem: {text}");
    }
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let all = stdout_of(&out) + &stderr_of(&out);
    for s in secrets {
        assert!(!all.contains(s), "{s} leaked into check output: {all}");
    }
}

#[test]
fn empty_secret_from_a_set_variable_names_the_variable_not_the_value() {
    let lines = errors(MINIMAL, &[("S", "  ")]);
    assert_eq!(
        lines,
        ["test.yaml:3: accounts[0].secret is empty (environment variable S is set but empty)"]
    );
}

#[test]
fn variables_are_expanded_in_any_string_value() {
    let yaml = "\
listen: ${HOST}:${PORT}
upstream:
  base_urls: [\"http://127.0.0.1:${SIM_PORT}/\"]
  timeout: ${TIMEOUT}
store:
  path: ${DATA}/tokens.redb
  redis_prefix: wxtoken-$${literal}-$HOME
accounts:
  - appid: ${APPID}
    name: ${BRAND} shop
    secret: pre-${S}-post
    enabled: ${ON}
";
    let vars = [
        ("HOST", "127.0.0.1"),
        ("PORT", "8181"),
        ("SIM_PORT", "9999"),
        ("TIMEOUT", "750ms"),
        ("DATA", "/var/lib/wxtoken"),
        ("APPID", "wx1234567890abcdef"),
        ("BRAND", "Brand A"),
        ("S", "xyz"),
        ("ON", "false"),
    ];
    let c = loaded(yaml, &vars).config;
    assert_eq!(c.listen.to_string(), "127.0.0.1:8181");
    assert_eq!(c.upstream.base_urls[0].as_str(), "http://127.0.0.1:9999/");
    assert_eq!(c.upstream.timeout, Duration::from_millis(750));
    assert_eq!(c.store.path, PathBuf::from("/var/lib/wxtoken/tokens.redb"));
    assert_eq!(c.store.redis_prefix, "wxtoken-${literal}-$HOME");
    let a = &c.accounts[0];
    assert_eq!(a.appid.as_str(), "wx1234567890abcdef");
    assert_eq!(a.name, "Brand A shop");
    assert_eq!(a.secret.expose_secret(), "pre-xyz-post");
    assert!(!a.enabled);
}

#[test]
fn missing_variables_are_reported_by_name_at_their_line() {
    let yaml = "listen: ${NO_LISTEN}\naccounts:\n  - appid: wx1111111111111111\n    name: ${NO_NAME} and ${NO_NAME2}\n    secret: ${NO_SECRET}\n";
    let lines = errors(yaml, &[]);
    assert_eq!(
        lines,
        [
            "test.yaml:1: listen: environment variable NO_LISTEN is not set",
            "test.yaml:4: accounts[0].name: environment variable NO_NAME is not set",
            "test.yaml:4: accounts[0].name: environment variable NO_NAME2 is not set",
            "test.yaml:5: accounts[0].secret: environment variable NO_SECRET is not set",
        ]
    );
}

#[test]
fn unknown_keys_are_reported_at_every_depth() {
    let yaml = "\
listn: 127.0.0.1:8080
upstream:
  timout: 5s
refresh:
  backof_max: 5m
clients:
  - name: a
    key: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    appid: [wx1111111111111111]
accounts:
  - appid: wx1111111111111111
    secret: x
    colour: blue
timeout: 5s
";
    let lines = errors(yaml, &[]);
    assert_has(
        &lines,
        "test.yaml:1: ",
        "unknown key \"listn\" at the top level (did you mean \"listen\"?)",
    );
    assert_has(
        &lines,
        "test.yaml:3: ",
        "unknown key \"timout\" in upstream (did you mean \"timeout\"?)",
    );
    assert_has(
        &lines,
        "test.yaml:5: ",
        "unknown key \"backof_max\" in refresh (did you mean \"backoff_max\"?)",
    );
    assert_has(
        &lines,
        "test.yaml:9: ",
        "unknown key \"appid\" in clients[0] (did you mean \"appids\"?)",
    );
    assert_has(
        &lines,
        "test.yaml:13: ",
        "unknown key \"colour\" in accounts[0] (known keys: kind, appid, corpid, agentid, name, secret, secret_file, mode, fallback_to_stable, enabled, tickets)",
    );
    assert_has(
        &lines,
        "test.yaml:14: ",
        "unknown key \"timeout\" at the top level (it belongs under `upstream:` or under `proxy:`)",
    );
    // The misspelt `appids` also means the client has none.
    assert_has(&lines, "test.yaml:7: ", "clients[0] (a) has no appids");
    assert_eq!(lines.len(), 7, "{}", lines.join("\n"));
}

#[test]
fn repeated_keys_are_reported_with_both_lines() {
    let lines = errors(&format!("{MINIMAL}    secret: again\n"), &[("S", "x")]);
    assert_eq!(
        lines,
        ["test.yaml:4: key \"secret\" appears twice in accounts[0] (first at line 3); keep one"]
    );
}

#[test]
fn durations_take_a_unit_and_bare_numbers_get_a_hint() {
    let yaml = "\
upstream:
  timeout: 500ms
refresh:
  stable_window: 10m
  backoff_initial: 2s
  backoff_max: 1h
";
    let c = loaded(&format!("{yaml}{MINIMAL}"), &[("S", "x")]).config;
    assert_eq!(c.upstream.timeout, Duration::from_millis(500));
    assert_eq!(c.refresh.stable_window, Duration::from_secs(600));
    assert_eq!(c.refresh.backoff_initial, Duration::from_secs(2));
    assert_eq!(c.refresh.backoff_max, Duration::from_secs(3600));

    let lines = errors(
        &format!(
            "upstream:\n  timeout: 5\nrefresh:\n  backoff_max: soon\n  stable_window: 0s\n{MINIMAL}"
        ),
        &[("S", "x")],
    );
    assert_eq!(
        lines,
        [
            "test.yaml:2: upstream.timeout: \"5\" has no unit; write e.g. \"5s\" or \"5ms\"",
            "test.yaml:4: refresh.backoff_max: \"soon\" is not a duration; write a number with a unit, e.g. 500ms, 30s, 5m or 2h",
            "test.yaml:5: refresh.stable_window must be more than 0s and less than 2h (a token's lifetime), not 0s; e.g. 5m",
        ]
    );
}

#[test]
fn durations_have_upper_bounds_each_reported_at_its_line() {
    let at_the_bounds = "\
upstream:
  timeout: 60s
refresh:
  backoff_initial: 1h
  backoff_max: 1h
proxy:
  timeout: 1h
";
    let c = loaded(&format!("{at_the_bounds}{MINIMAL}"), &[("S", "x")]).config;
    assert_eq!(c.upstream.timeout, Duration::from_secs(60));
    assert_eq!(c.proxy.timeout, Duration::from_secs(3600));

    let absurd = "\
upstream:
  timeout: 100000h
refresh:
  backoff_initial: 61m
  backoff_max: 100000h
proxy:
  timeout: 2h
";
    let lines = errors(&format!("{absurd}{MINIMAL}"), &[("S", "x")]);
    assert_has(
        &lines,
        "test.yaml:2: ",
        "upstream.timeout must be at most 1m, not ",
    );
    assert_has(
        &lines,
        "test.yaml:4: ",
        "refresh.backoff_initial must be at most 1h, not 1h 1m",
    );
    assert_has(
        &lines,
        "test.yaml:5: ",
        "refresh.backoff_max must be at most 1h, not ",
    );
    assert_has(
        &lines,
        "test.yaml:7: ",
        "proxy.timeout must be at most 1h, not 2h",
    );
    assert_eq!(lines.len(), 4, "{lines:#?}");
}

#[test]
fn defaults_apply_to_everything_but_accounts() {
    let c = loaded(MINIMAL, &[("S", "x")]).config;
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.upstream.base_urls.len(), 2);
    assert_eq!(
        c.upstream.base_urls[0].as_str(),
        "https://api.weixin.qq.com/"
    );
    assert_eq!(c.upstream.timeout, Duration::from_secs(5));
    assert_eq!(c.upstream.max_concurrency, 32);
    assert_eq!(c.store.path, PathBuf::from("./data/wxtoken.redb"));
    assert!(c.store.redis.is_none());
    assert_eq!(c.store.redis_prefix, "wxtoken");
    assert_eq!(c.refresh, wxtoken::config::RefreshConfig::default());
    assert!(c.clients.is_empty());
    assert_eq!(c.accounts[0].name, "wx1111111111111111");
    assert_eq!(c.accounts[0].mode, Mode::Stable);
    assert!(c.accounts[0].enabled);
    assert_eq!(c.source, PathBuf::from("test.yaml"));
}

#[test]
fn the_shipped_accounts_yaml_loads_as_documented() {
    let vars = SHIPPED_VARS.map(|v| (v, "s"));
    let loaded = load(&repo_root().join("accounts.yaml"), &env(&vars)).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(
        summary(c),
        "3 accounts (2 stable, 1 legacy, 3 enabled), 2 clients, listen 127.0.0.1:8080"
    );
    let wx1 = AppId::parse("wx1111111111111111").unwrap();
    let wx3 = AppId::parse("wx3333333333333333").unwrap();
    let order = &c.clients[0];
    assert!(
        order
            .key
            .matches(&wxtoken::domain::KeyHash::of_key("demo-order-key"))
    );
    assert!(order.appids.allows(&wx1) && !order.appids.allows(&wx3) && !order.admin);
    let admin = &c.clients[1];
    assert!(
        admin
            .key
            .matches(&wxtoken::domain::KeyHash::of_key("demo-admin-key"))
    );
    assert_eq!(admin.appids, AppScope::All);
    assert!(admin.admin);
}

#[test]
fn no_accounts_is_an_error() {
    assert_eq!(
        errors("listen: 127.0.0.1:8080\n", &[]),
        [
            "test.yaml: no accounts: add an `accounts:` list with at least one account (appid: wx1111111111111111, secret: ${WX_SECRET_...}), or a `components:` list of Open Platform third-party platforms"
        ]
    );
    assert_eq!(
        errors("accounts: []\n", &[]),
        [
            "test.yaml:1: accounts is empty; add at least one account (appid and secret), or a `components:` list of Open Platform third-party platforms"
        ]
    );
    assert_eq!(errors("", &[]).len(), 1);
    assert_eq!(errors("# just comments\n", &[]).len(), 1);
}

#[test]
fn yaml_syntax_errors_carry_their_line() {
    let lines = errors(
        "listen: 127.0.0.1:8080\naccounts:\n  - appid: wx1111111111111111\n   secret: x: y\n",
        &[],
    );
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("test.yaml:4: invalid YAML: "),
        "{}",
        lines[0]
    );

    let lines = errors("clients:\n  - appids: [*]\n", &[]);
    assert!(
        lines[0].starts_with("test.yaml:2: ") && lines[0].contains("[\"*\"]"),
        "{}",
        lines[0]
    );
}

#[test]
fn listen_without_clients_is_an_error_unless_loopback() {
    let lines = errors(&format!("listen: 0.0.0.0:8080\n{MINIMAL}"), &[("S", "x")]);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("test.yaml:1: listen 0.0.0.0:8080 is reachable from other hosts but no clients are configured"),
        "{}",
        lines[0]
    );

    let ok = loaded(
        &format!("listen: \"[::1]:8080\"\nclients: []\n{MINIMAL}"),
        &[("S", "x")],
    );
    assert_eq!(ok.warnings.len(), 1);
    assert_eq!(ok.warnings[0].line, Some(2));
    assert!(
        ok.warnings[0]
            .message
            .starts_with("no clients are configured")
    );

    let lines = errors(&format!("listen: localhost:8080\n{MINIMAL}"), &[("S", "x")]);
    assert!(lines[0].contains("write 127.0.0.1:8080"), "{}", lines[0]);
}

#[test]
fn a_client_scope_naming_an_unconfigured_appid_is_a_warning() {
    let yaml = format!(
        "listen: 10.0.0.1:8080\nclients:\n  - name: shop\n    key: sha256:{}\n    appids:\n      - wx1111111111111111\n      - wx9999999999999999\n{MINIMAL}",
        "ab".repeat(32)
    );
    let loaded = loaded(&yaml, &[("S", "x")]);
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "test.yaml:7: clients[0].appids: wx9999999999999999 is not a configured account, so this entry has no effect"
        ]
    );
    let scope = &loaded.config.clients[0].appids;
    assert!(scope.allows(&AppId::parse("wx1111111111111111").unwrap()));
}

#[test]
fn client_keys_and_scopes_are_checked() {
    let key = format!("sha256:{}", "cd".repeat(32));
    let yaml = format!(
        "clients:
  - name: a
    key: {key}
    appids: \"*\"
  - name: b
    key: {key}
    appids: [wx1, \"*\"]
  - name: c
    key: my-plain-api-key
    appids: []
{MINIMAL}"
    );
    let lines = errors(&yaml, &[("S", "x")]);
    assert_has(
        &lines,
        "test.yaml:4: ",
        "clients[0].appids must be a list, not a single value; write [\"*\"]",
    );
    assert_has(
        &lines,
        "test.yaml:6: ",
        "clients[1].key is the same as the key of clients[0] (line 3)",
    );
    assert_has(
        &lines,
        "test.yaml:7: ",
        "clients[1].appids[0]: \"wx1\" is not a WeChat appid",
    );
    assert_has(&lines, "test.yaml:7: ", "\"*\" must be the only entry");
    assert_has(
        &lines,
        "test.yaml:9: ",
        "if this is the key itself, keep it out of the file",
    );
    assert!(!lines.join("\n").contains("my-plain-api-key"));
    assert_eq!(lines.len(), 5, "{}", lines.join("\n"));
}

#[test]
fn base_urls_must_be_https_except_on_loopback() {
    let ok = loaded(
        &format!(
            "upstream:\n  base_urls: [\"http://127.0.0.1:9090\", \"https://wx.example.com/proxy/\"]\n{MINIMAL}"
        ),
        &[("S", "x")],
    );
    assert_eq!(ok.config.upstream.base_urls.len(), 2);

    let lines = errors(
        &format!("upstream:\n  base_urls:\n    - ftp://x.example.com\n    - not a url\n{MINIMAL}"),
        &[("S", "x")],
    );
    assert_has(&lines, "test.yaml:3: ", "is not an http(s) URL");
    assert_has(&lines, "test.yaml:4: ", "\"not a url\" is not a URL");

    let lines = errors(
        &format!("upstream:\n  base_urls: []\n{MINIMAL}"),
        &[("S", "x")],
    );
    assert_eq!(
        lines,
        [
            "test.yaml:2: upstream.base_urls is empty; list at least one URL, e.g. https://api.weixin.qq.com"
        ]
    );
}

#[test]
fn wrong_types_are_reported_with_what_was_found() {
    let yaml = "\
listen: [127.0.0.1, 8080]
upstream: fast
refresh:
  legacy_at: high
accounts:
  - appid: {id: wx1111111111111111}
    secret: [a, b]
";
    let lines = errors(yaml, &[]);
    assert_eq!(
        lines,
        [
            "test.yaml:1: listen must be a single value, not a list",
            "test.yaml:2: upstream must be a mapping of keys (base_urls, wecom_base_urls, timeout, max_concurrency), not a single value",
            "test.yaml:4: refresh.legacy_at: \"high\" is not a number; write e.g. 0.8",
            "test.yaml:6: accounts[0].appid must be a single value, not a mapping",
            "test.yaml:7: accounts[0].secret must be a single value, not a list",
        ]
    );
}

#[test]
fn secret_file_is_read_relative_to_the_config_and_its_newline_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/a"), "abc123\r\n").unwrap();
    std::fs::write(dir.path().join("secrets/empty"), "\n").unwrap();
    let path = dir.path().join("accounts.yaml");
    std::fs::write(
        &path,
        "accounts:\n  - appid: wx1111111111111111\n    secret_file: secrets/a\n",
    )
    .unwrap();
    let c = load(&path, &env(&[])).unwrap().config;
    assert_eq!(c.accounts[0].secret.expose_secret(), "abc123");

    std::fs::write(
        &path,
        "accounts:
  - appid: wx1111111111111111
    secret_file: secrets/empty
  - appid: wx2222222222222222
    secret: x
    secret_file: secrets/a
  - appid: wx3333333333333333
    secret_file: secrets
",
    )
    .unwrap();
    let problems = load(&path, &env(&[])).unwrap_err();
    let lines: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {}", p.line.unwrap_or(0), p.message))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].starts_with("3: accounts[0].secret_file: ") && lines[0].ends_with("empty"),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1],
        "6: accounts[1] (wx2222222222222222) has both secret and secret_file; keep one"
    );
    assert!(
        lines[2].starts_with("8: accounts[2].secret_file: cannot read ")
            && lines[2].ends_with("it is a directory"),
        "{}",
        lines[2]
    );
}

#[test]
fn missing_secrets_become_placeholders_when_secrets_are_optional() {
    let yaml = "\
accounts:
  - appid: wx1111111111111111
    secret: ${NOT_SET}
  - appid: wx2222222222222222
    secret_file: /nonexistent/secret
  - appid: wx3333333333333333
    secret_file: ${NOT_SET_EITHER}/secret
";
    let opts = LoadOptions::from_map(HashMap::new()).secrets_optional();
    let c = load_str(yaml, Path::new("demo.yaml"), &opts)
        .unwrap()
        .config;
    assert_eq!(c.accounts.len(), 3);
    for a in &c.accounts {
        assert!(!a.secret.expose_secret().is_empty());
    }

    // Every other rule still applies.
    let bad = format!("{yaml}  - appid: wx1\n    secret: ${{NOT_SET}}\n    mode: fast\n");
    let problems = load_str(&bad, Path::new("demo.yaml"), &opts).unwrap_err();
    assert_eq!(problems.len(), 2, "{problems}");
}

#[test]
fn load_never_panics_on_mangled_files() {
    let shipped = std::fs::read_to_string(repo_root().join("accounts.yaml")).unwrap();
    let mistakes = std::fs::read_to_string(fixtures().join("many_mistakes.yaml")).unwrap();
    let opts = env(&[]);
    for text in [&shipped, &mistakes] {
        for (cut, _) in text.char_indices() {
            let _ = load_str(&text[..cut], Path::new("x.yaml"), &opts);
        }
        for junk in [
            "\t", ":", "- ", "[", "{", "\"", "&a ", "*a ", "!!int ", "? ", "---\n", "\u{0}", "${",
        ] {
            for (at, _) in text.char_indices().step_by(7) {
                let mangled = format!("{}{junk}{}", &text[..at], &text[at..]);
                let _ = load_str(&mangled, Path::new("x.yaml"), &opts);
            }
        }
    }
}

#[test]
fn tickets_and_wecom_apps_are_read_with_their_ids() {
    let c = loaded(
        "accounts:\n\
         \x20 - appid: wx1111111111111111\n    secret: ${S}\n    tickets: [jsapi, wx_card]\n\
         \x20 - kind: wecom\n    corpid: ww1234567890abcdef\n    agentid: 1000002\n    secret: ${S}\n\
         \x20 - kind: wecom\n    corpid: ww1234567890abcdef\n    agentid: 1000003\n    secret: ${S}\n\
         clients:\n  - name: hr\n    key: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n    appids: [ww1234567890abcdef:1000002]\n",
        &[("S", "x")],
    )
    .config;
    assert_eq!(
        c.accounts[0].tickets,
        vec![
            wxtoken::domain::TicketKind::Jsapi,
            wxtoken::domain::TicketKind::WxCard
        ]
    );
    let ids: Vec<&str> = c.accounts.iter().map(|a| a.appid.as_str()).collect();
    assert_eq!(
        ids,
        [
            "wx1111111111111111",
            "ww1234567890abcdef:1000002",
            "ww1234567890abcdef:1000003"
        ]
    );
    assert_eq!(
        c.accounts[1].kind,
        wxtoken::config::AccountKind::Wecom {
            corpid: "ww1234567890abcdef".to_string(),
            agentid: 1000002
        }
    );
}

#[test]
fn wecom_and_ticket_mistakes_are_reported_at_their_lines() {
    let lines = errors(
        "accounts:\n\
         \x20 - kind: wecom\n    appid: wx1111111111111111\n    agentid: 0\n    secret: ${S}\n\
         \x20 - appid: wx2222222222222222\n    corpid: ww1\n    secret: ${S}\n    tickets: [jsapi, jsapi, sdk]\n\
         \x20 - kind: qq\n    appid: wx3333333333333333\n    secret: ${S}\n",
        &[("S", "x")],
    );
    assert_has(&lines, "test.yaml:3:", "not appid");
    assert_has(&lines, "test.yaml:2:", "no corpid");
    assert_has(&lines, "test.yaml:4:", "agentid");
    assert_has(&lines, "test.yaml:7:", "only WeCom apps have");
    assert_has(&lines, "test.yaml:9:", "jsapi twice");
    assert_has(&lines, "test.yaml:9:", "unknown ticket");
    assert_has(&lines, "test.yaml:10:", "unknown kind");
}

/// Runs `f` on its own thread and fails the test when it has not returned
/// within `limit` (it hangs); the hung thread is left behind.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
}

#[test]
fn a_secret_file_that_is_a_fifo_or_a_device_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    fifo(&dir.path().join("pipe"));
    let path = dir.path().join("accounts.yaml");
    std::fs::write(
        &path,
        "accounts:
  - appid: wx1111111111111111
    secret_file: pipe
  - appid: wx2222222222222222
    secret_file: /dev/zero
",
    )
    .unwrap();
    let problems = within(Duration::from_secs(5), "loading a FIFO secret_file", {
        let path = path.clone();
        move || load(&path, &env(&[]))
    })
    .unwrap_err();
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let shown = path.display().to_string();
    let pipe = dir.path().join("pipe").display().to_string();
    assert_eq!(
        lines,
        [
            format!(
                "{shown}:3: accounts[0].secret_file: {pipe:?} is not a regular file (a FIFO); point it at a file that holds only the secret"
            ),
            format!(
                "{shown}:5: accounts[1].secret_file: \"/dev/zero\" is not a regular file (a character device); point it at a file that holds only the secret"
            ),
        ]
    );
}

#[test]
fn check_refuses_a_fifo_config_or_secret_file_promptly() {
    let dir = tempfile::tempdir().unwrap();
    fifo(&dir.path().join("pipe.yaml"));
    fifo(&dir.path().join("secret.pipe"));
    std::fs::write(
        dir.path().join("a.yaml"),
        "accounts:\n  - appid: wx1111111111111111\n    secret_file: secret.pipe\n",
    )
    .unwrap();
    let expected = [
        (
            "pipe.yaml",
            "pipe.yaml: the config file is not a regular file (a FIFO); give the path of the YAML file\n",
        ),
        (
            "a.yaml",
            "a.yaml:3: accounts[0].secret_file: \"./secret.pipe\" is not a regular file (a FIFO); point it at a file that holds only the secret\n",
        ),
        (
            "/dev/zero",
            "/dev/zero: the config file is not a regular file (a character device); give the path of the YAML file\n",
        ),
    ];
    for (config, stderr) in expected {
        let started = std::time::Instant::now();
        let out = wxtoken()
            .current_dir(dir.path())
            .args(["check", "--config", config])
            .timeout(Duration::from_secs(10))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "check --config {config} (killed after {:?}?): {}",
            started.elapsed(),
            stderr_of(&out)
        );
        assert_eq!(stderr_of(&out), stderr, "check --config {config}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn a_group_or_world_readable_secret_file_is_a_warning_that_suggests_chmod_600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (name, mode) in [("open", 0o644), ("group", 0o640), ("private", 0o600)] {
        let file = dir.path().join(name);
        std::fs::write(&file, "a-secret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let path = dir.path().join("accounts.yaml");
    std::fs::write(
        &path,
        "clients: []
accounts:
  - appid: wx1111111111111111
    secret_file: open
  - appid: wx2222222222222222
    secret_file: group
  - appid: wx3333333333333333
    secret_file: private
",
    )
    .unwrap();
    let loaded = load(&path, &env(&[])).unwrap();
    let warnings: Vec<String> = loaded
        .warnings
        .iter()
        .filter(|w| w.message.contains("secret_file"))
        .map(|w| format!("{}: {}", w.line.unwrap_or(0), w.message))
        .collect();
    let file = |name: &str| dir.path().join(name).display().to_string();
    assert_eq!(
        warnings,
        [
            format!(
                "4: accounts[0].secret_file: {:?} is open to other users (mode 0644); run `chmod 600 {}`",
                file("open"),
                file("open")
            ),
            format!(
                "6: accounts[1].secret_file: {:?} is open to other users (mode 0640); run `chmod 600 {}`",
                file("group"),
                file("group")
            ),
        ]
    );

    // `check` prints it and still succeeds.
    let out = check_in(dir.path(), "accounts.yaml");
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("accounts.yaml:4: warning: accounts[0].secret_file: "),
        "{}",
        stderr_of(&out)
    );
    assert!(!stderr_of(&out).contains("a-secret"));
}

#[test]
fn base_urls_with_credentials_are_refused_without_showing_the_password() {
    let yaml = format!(
        "upstream:
  base_urls:
    - https://api.weixin.qq.com
    - http://proxyuser:PROXYPASSW0RD@127.0.0.1:19199
  wecom_base_urls:
    - https://onlyuser@qyapi.weixin.qq.com
    - https://u:PASSW0RD-TWO@bad host
{MINIMAL}"
    );
    let lines = errors(&yaml, &[("S", "x")]);
    assert_eq!(
        lines,
        [
            "test.yaml:4: upstream.base_urls[1]: \"http://***@127.0.0.1:19199\" has a user name or password; wxtoken sends no credentials to WeChat: remove the `user:password@` part",
            "test.yaml:6: upstream.wecom_base_urls[0]: \"https://***@qyapi.weixin.qq.com\" has a user name or password; wxtoken sends no credentials to WeChat: remove the `user:password@` part",
            "test.yaml:7: upstream.wecom_base_urls[1]: \"https://***@bad host\" is not a URL (invalid international domain name); write e.g. https://api.weixin.qq.com",
        ]
    );
    for line in &lines {
        assert!(
            !line.contains("PASSW0RD") && !line.contains("proxyuser"),
            "{line}"
        );
    }
}

/// `n` accounts with one shared secret from `$S`, as one YAML file.
fn many_accounts(n: usize) -> String {
    let mut yaml = String::with_capacity(n * 80 + 64);
    yaml.push_str("clients: []\naccounts:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - appid: wx{i:016}\n    secret: ${{S}}\n    mode: legacy\n"
        ));
    }
    yaml
}

#[test]
fn a_hundred_thousand_accounts_load() {
    let c = loaded(&many_accounts(100_000), &[("S", "shared-secret")]).config;
    assert_eq!(c.accounts.len(), 100_000);
    assert_eq!(c.accounts[99_999].appid.as_str(), "wx0000000000099999");
}

#[test]
fn an_alias_of_a_large_scalar_used_many_times_is_refused_not_expanded() {
    // 4 MiB behind one anchor, used 3,000 times: 12 GB if expanded.
    let big = "x".repeat(4 << 20);
    let uses = vec!["*a"; 3_000].join(", ");
    let yaml = format!("a: &a {big}\nb: [{uses}]\n{MINIMAL}");
    let lines = errors(&yaml, &[("S", "x")]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("test.yaml:2: ")
            && lines[0].contains("aliases")
            && lines[0].contains("MiB"),
        "{}",
        lines[0]
    );
}

#[test]
fn an_unknown_key_that_belongs_to_another_mapping_says_where() {
    let yaml = format!(
        "wecom_base_urls: [https://qyapi.weixin.qq.com]\ncorpid: ww1234567890abcdef\ntickets: [jsapi]\nname: shop\n{MINIMAL}"
    );
    let lines = errors(&yaml, &[("S", "x")]);
    assert_eq!(
        lines,
        [
            "test.yaml:1: unknown key \"wecom_base_urls\" at the top level (it belongs under `upstream:`)",
            "test.yaml:2: unknown key \"corpid\" at the top level (it belongs in an entry of `accounts:`)",
            "test.yaml:3: unknown key \"tickets\" at the top level (it belongs in an entry of `accounts:`)",
            "test.yaml:4: unknown key \"name\" at the top level (it belongs in an entry of `accounts:` or in an entry of `components:` or in an entry of `clients:`)",
        ]
    );
}

#[test]
fn values_are_read_as_written_not_as_yaml_numbers() {
    // A plain scalar that YAML would call a number keeps its text: a name
    // keeps its trailing zero, and an all-digit secret too long for any
    // integer is not rounded into a float.
    let digits = "1234567890".repeat(4);
    let yaml =
        format!("accounts:\n  - appid: wx1111111111111111\n    name: 1.50\n    secret: {digits}\n");
    let account = &loaded(&yaml, &[]).config.accounts[0];
    assert_eq!(account.name, "1.50");
    assert_eq!(account.secret.expose_secret(), digits);

    let lines = errors(
        &format!("upstream:\n  max_concurrency: 0x20\n{MINIMAL}"),
        &[("S", "x")],
    );
    assert_eq!(
        lines,
        ["test.yaml:2: upstream.max_concurrency: \"0x20\" is not a whole number; write e.g. 32"]
    );
}

#[test]
fn repeated_keys_and_wrong_shapes_are_all_reported_in_one_pass() {
    let yaml = "\
listen: 127.0.0.1:8080
listen: 127.0.0.1:9090
upstream:
  timeout: [5s]
  timeout: 5s
accounts:
  - appid: wx1111111111111111
    appid: wx2222222222222222
    secret: {a: b}
  - ~
";
    let lines = errors(yaml, &[]);
    assert_eq!(
        lines,
        [
            "test.yaml:2: key \"listen\" appears twice at the top level (first at line 1); keep one",
            "test.yaml:4: upstream.timeout must be a single value, not a list",
            "test.yaml:5: key \"timeout\" appears twice in upstream (first at line 4); keep one",
            "test.yaml:8: key \"appid\" appears twice in accounts[0] (first at line 7); keep one",
            "test.yaml:9: accounts[0].secret must be a single value, not a mapping",
            "test.yaml:10: accounts[1] must be a mapping of keys (kind, appid, corpid, agentid, name, secret, secret_file, mode, fallback_to_stable, enabled, tickets), not empty",
        ]
    );
}

// `components:`: Open Platform third-party platforms (contract §2, §6).

/// Tencent's sample EncodingAESKey (open-platform.md, vector A).
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// One platform whose three secrets come from `$CS`, `$CT` and `$CK`.
const COMPONENT: &str = "\
components:
  - appid: wx9999999999999999
    name: Agency platform
    secret: ${CS}
    token: ${CT}
    encoding_aes_key: ${CK}
";

const COMPONENT_VARS: [(&str, &str); 3] = [
    ("CS", "component-secret-4242"),
    ("CT", "pamtest"),
    ("CK", AES_KEY),
];

/// A client that may read `appids`, as YAML.
fn client_reading(appids: &str) -> String {
    format!(
        "clients:\n  - name: shop\n    key: sha256:{}\n    appids: [{appids}]\n",
        "ab".repeat(32)
    )
}

#[test]
fn a_file_with_only_components_loads_with_secrets_from_the_environment() {
    // The client may read an authorizer's appid, which no file lists: no warning.
    let yaml = format!("{COMPONENT}{}", client_reading("wx5555555555555555"));
    let first = loaded(&yaml, &COMPONENT_VARS);
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    let c = &first.config;
    assert!(c.accounts.is_empty());
    let [p] = c.components.as_slice() else {
        panic!("one component: {:?}", c.components)
    };
    assert_eq!(p.appid, AppId::parse("wx9999999999999999").unwrap());
    assert_eq!(p.name, "Agency platform");
    assert!(p.enabled);
    assert_eq!(p.secret.expose_secret(), "component-secret-4242");
    assert_eq!(p.token.expose_secret(), "pamtest");
    assert_eq!(p.encoding_aes_key.expose_secret(), AES_KEY);
    // The component as the registry's account: legacy semantics, its own kind.
    let account = p.account();
    assert_eq!(account.mode, Mode::Legacy);
    assert_eq!(account.kind, wxtoken::config::AccountKind::Component);
    assert_eq!(
        summary(c),
        "0 accounts, 1 component (1 enabled: wx9999999999999999 \"Agency platform\"), 1 client, listen 127.0.0.1:8080"
    );

    for accounts in ["accounts:\n", "accounts: []\n"] {
        let c = loaded(&format!("{COMPONENT}{accounts}"), &COMPONENT_VARS).config;
        assert!(c.accounts.is_empty() && c.components.len() == 1);
    }
}

#[test]
fn components_and_accounts_together_are_summarized_with_enabled_and_disabled_platforms() {
    let yaml = format!(
        "{COMPONENT}  - appid: wx8888888888888888\n    secret: s\n    token: abc\n    encoding_aes_key: {AES_KEY}\n    enabled: false\n{MINIMAL}"
    );
    let c = loaded(&yaml, &[COMPONENT_VARS.as_slice(), &[("S", "x")]].concat()).config;
    assert!(!c.components[1].enabled);
    assert_eq!(c.components[1].name, "wx8888888888888888");
    assert_eq!(
        summary(&c),
        "1 account (1 stable, 0 legacy, 1 enabled), 2 components (1 enabled: wx9999999999999999 \"Agency platform\"; disabled: wx8888888888888888), 0 clients, listen 127.0.0.1:8080"
    );

    // Only disabled things: warned, still valid.
    let off = format!("{COMPONENT}    enabled: false\n");
    let all_off = loaded(&off, &COMPONENT_VARS);
    let warnings: Vec<String> = all_off.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.contains(
            &"test.yaml: every component is disabled (enabled: false); wxtoken will serve no token"
                .to_string()
        ),
        "{warnings:?}"
    );
}

#[test]
fn every_mistake_in_a_component_is_reported_at_its_line() {
    let yaml = "\
components:
  - appid: wx99
    secret: s
    tokn: abc
    encoding_aes_key: short-key-5555
    enabled: sometimes
  - appid: wx8888888888888888
    token: bad-token-7777
    encoding_aes_key: abcdefghijklmnopqrstuvwxyz0123456789ABCDE*G
  - appid: wx7777777777777777
    secret: s
    token: ${UNSET_TOKEN}
    encoding_aes_key: x
    encoding_aes_key_file: key
accounts: []
";
    let lines = errors(yaml, &[]);
    let expected: &[(&str, &str)] = &[
        (
            "test.yaml:2: ",
            "components[0].appid: \"wx99\" is not a WeChat appid",
        ),
        (
            "test.yaml:2: ",
            "components[0] has no token; add `token: ${WX_COMPONENT_TOKEN}` or `token_file: PATH`",
        ),
        (
            "test.yaml:4: ",
            "unknown key \"tokn\" in components[0] (did you mean \"token\"?)",
        ),
        (
            "test.yaml:5: ",
            "components[0].encoding_aes_key must be the 43-character EncodingAESKey set on the platform (Base64 that decodes to 32 bytes), but it has 14 characters; the value is not shown",
        ),
        (
            "test.yaml:6: ",
            "components[0].enabled: \"sometimes\" is not a boolean",
        ),
        (
            "test.yaml:7: ",
            "components[1] (wx8888888888888888) has no secret; add `secret: ${WX_COMPONENT_SECRET}` or `secret_file: PATH`",
        ),
        (
            "test.yaml:8: ",
            "components[1].token must be 3 to 32 letters or digits, the Token set in the platform's development settings, but it has characters other than letters and digits; the value is not shown",
        ),
        (
            "test.yaml:9: ",
            "components[1].encoding_aes_key must be the 43-character EncodingAESKey set on the platform (Base64 that decodes to 32 bytes), but its 43 characters are not all Base64",
        ),
        (
            "test.yaml:12: ",
            "components[2].token: environment variable UNSET_TOKEN is not set",
        ),
        (
            "test.yaml:14: ",
            "components[2] (wx7777777777777777) has both encoding_aes_key and encoding_aes_key_file; keep one",
        ),
    ];
    for (prefix, fragment) in expected {
        assert_has(&lines, prefix, fragment);
    }
    assert_eq!(lines.len(), expected.len(), "{}", lines.join("\n"));
    for value in ["short-key-5555", "bad-token-7777", "ABCDE*G"] {
        assert!(
            lines.iter().all(|l| !l.contains(value)),
            "{value} was echoed: {}",
            lines.join("\n")
        );
    }
}

#[test]
fn an_appid_is_configured_once_across_accounts_and_components() {
    let platform = |appid: &str| {
        format!(
            "  - appid: {appid}\n    secret: s\n    token: abc\n    encoding_aes_key: {AES_KEY}\n"
        )
    };
    let yaml = format!(
        "accounts:\n  - appid: wx1111111111111111\n    secret: x\ncomponents:\n{}{}{}",
        platform("wx1111111111111111"),
        platform("wx9999999999999999"),
        platform("wx9999999999999999"),
    );
    assert_eq!(
        errors(&yaml, &[]),
        [
            "test.yaml:5: components[0].appid: wx1111111111111111 is also the appid of accounts[0] (line 2); an appid is configured once, as an account (with its AppSecret) or as a component, not both",
            "test.yaml:13: components[2].appid: duplicate appid wx9999999999999999 (first at line 9); each component must appear once",
        ]
    );
}

#[test]
fn component_secrets_are_read_from_their_files_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    for (name, text) in [
        ("secret", "file-secret-1111\n".to_string()),
        ("token", "fileToken2222\n".to_string()),
        ("aes", format!("{AES_KEY}\r\n")),
        ("short", "ab\n".to_string()),
    ] {
        let file = dir.path().join("secrets").join(name);
        std::fs::write(&file, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let path = dir.path().join("accounts.yaml");
    let valid = "\
components:
  - appid: wx9999999999999999
    secret_file: secrets/secret
    token_file: ${SECRETS}/token
    encoding_aes_key_file: secrets/aes
";
    std::fs::write(&path, valid).unwrap();
    let loaded = load(&path, &env(&[("SECRETS", "secrets")])).unwrap();
    assert!(
        loaded
            .warnings
            .iter()
            .all(|w| !w.message.contains("open to other users"))
    );
    let p = &loaded.config.components[0];
    assert_eq!(p.secret.expose_secret(), "file-secret-1111");
    assert_eq!(p.token.expose_secret(), "fileToken2222");
    assert_eq!(p.encoding_aes_key.expose_secret(), AES_KEY);

    let broken = "\
components:
  - appid: wx9999999999999999
    secret_file: secrets/missing
    token_file: secrets/short
    encoding_aes_key_file: secrets/token
";
    std::fs::write(&path, broken).unwrap();
    let lines: Vec<String> = load(&path, &env(&[]))
        .unwrap_err()
        .iter()
        .map(|p| format!("{}: {}", p.line.unwrap_or(0), p.message))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].starts_with("3: components[0].secret_file: cannot read ")
            && lines[0].ends_with("no such file"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(
            "4: components[0].token (read from token_file) must be 3 to 32 letters or digits"
        ) && lines[1].contains("it has 2 characters"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with(
            "5: components[0].encoding_aes_key (read from encoding_aes_key_file) must be the 43-character EncodingAESKey"
        ) && lines[2].contains("it has 13 characters"),
        "{}",
        lines[2]
    );
    assert!(
        lines.iter().all(|l| !l.contains("fileToken2222")),
        "{lines:?}"
    );
}

#[test]
fn component_secrets_never_appear_in_problems_debug_or_check_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "fileTokenSecret31\n").unwrap();
    let key = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
    let valid = format!(
        "components:\n  - appid: wx9999999999999999\n    secret: literal-component-secret-77\n    token_file: token\n    encoding_aes_key: ${{AES}}\n{}",
        client_reading("\"*\"")
    );
    let path = dir.path().join("accounts.yaml");
    std::fs::write(&path, &valid).unwrap();
    let secrets = ["literal-component-secret-77", "fileTokenSecret31", key];

    let loaded = load(&path, &env(&[("AES", key)])).unwrap();
    let debug = format!("{:?}", loaded.config);
    for s in secrets {
        assert!(!debug.contains(s), "{s} leaked into Debug: {debug}");
    }
    let check = || {
        wxtoken()
            .current_dir(dir.path())
            .env("AES", key)
            .args(["check", "--config", "accounts.yaml"])
            .output()
            .unwrap()
    };
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(
        stdout_of(&out),
        "accounts.yaml: ok, 0 accounts, 1 component (1 enabled: wx9999999999999999), 1 client, listen 127.0.0.1:8080\n"
    );
    let all = stdout_of(&out) + &stderr_of(&out);
    for s in secrets {
        assert!(!all.contains(s), "{s} leaked into check output: {all}");
    }

    // Each secret broken in a way that tempts a message to quote it.
    std::fs::write(dir.path().join("token"), "fileTokenSecret31-\n").unwrap();
    let broken = valid
        .replace(
            "secret: literal-component-secret-77",
            "secret: literal-component-secret-77 ${BAD NAME}",
        )
        .replace("${AES}", "${AES}x");
    std::fs::write(&path, &broken).unwrap();
    let problems = load(&path, &env(&[("AES", key)])).unwrap_err();
    assert_eq!(problems.len(), 3, "{problems}");
    let text = problems.to_string();
    for s in secrets {
        assert!(!text.contains(s), "{s} leaked into a problem: {text}");
    }
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let all = stdout_of(&out) + &stderr_of(&out);
    assert_eq!(stderr_of(&out).lines().count(), 3, "{all}");
    for s in secrets {
        assert!(!all.contains(s), "{s} leaked into check output: {all}");
    }
}

#[test]
fn check_accepts_a_components_only_file_and_reports_its_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.yaml"), COMPONENT).unwrap();
    let out = wxtoken()
        .current_dir(dir.path())
        .envs(COMPONENT_VARS)
        .args(["check", "--config", "c.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(
        stdout_of(&out),
        "c.yaml: ok, 0 accounts, 1 component (1 enabled: wx9999999999999999 \"Agency platform\"), 0 clients, listen 127.0.0.1:8080\n"
    );
    assert!(
        stderr_of(&out).contains("warning: no clients are configured"),
        "{}",
        stderr_of(&out)
    );

    let out = wxtoken()
        .current_dir(dir.path())
        .env("CS", "component-secret-4242")
        .env("CT", "x")
        .env("CK", "too-short-key")
        .args(["check", "--config", "c.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = stderr_of(&out);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("c.yaml:5: components[0].token must be 3 to 32"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("c.yaml:6: components[0].encoding_aes_key must be the 43-character"),
        "{stderr}"
    );
    assert!(!stderr.contains("too-short-key") && stdout_of(&out).is_empty());
}

#[actix_web::test]
async fn a_reload_to_a_components_only_file_is_applied_and_back_again() {
    use reqwest::StatusCode;

    let app = crate::app::TestAppBuilder::new()
        .accounts(&[Mode::Stable, Mode::Legacy])
        .spawn()
        .await;
    let original = std::fs::read_to_string(&app.config_path).unwrap();
    let (head, _accounts) = original
        .split_once("accounts:\n")
        .expect("the test config lists accounts last");
    let platform = format!(
        "components:\n  - appid: wx9999999999999999\n    secret: s\n    token: abc\n    encoding_aes_key: {AES_KEY}\n"
    );
    app.write_config_text(&format!("{head}{platform}"));
    let summary = crate::app::json(
        app.admin_reload(Some(crate::app::ADMIN_KEY)).await,
        StatusCode::OK,
    )
    .await;
    let mut removed: Vec<&str> = summary["removed"]
        .as_array()
        .expect("removed is a list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    removed.sort();
    let mut want: Vec<&str> = app.accounts.iter().map(|a| a.appid.as_str()).collect();
    want.sort();
    assert_eq!(removed, want);

    app.write_config(&app.accounts);
    let summary = crate::app::json(
        app.admin_reload(Some(crate::app::ADMIN_KEY)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(summary["added"].as_array().map(Vec::len), Some(2));
    for account in &app.accounts {
        crate::support::wait::eventually("the account is back and ready", || {
            app.is_ready(&account.appid)
        })
        .await;
    }
}

#[test]
fn the_proxy_section_has_defaults_and_checks_its_values() {
    let defaults = loaded(MINIMAL, &[("S", "s3cr3t")]).config.proxy;
    assert_eq!(defaults, wxtoken::config::ProxyConfig::default());
    assert_eq!(defaults.max_body, 20 * 1024 * 1024);
    let yaml = format!(
        "proxy:\n  timeout: 90s\n  max_body: 512KiB\n  max_in_flight_per_client: 8\n{MINIMAL}"
    );
    let proxy = loaded(&yaml, &[("S", "s3cr3t")]).config.proxy;
    assert_eq!(proxy.timeout, std::time::Duration::from_secs(90));
    assert_eq!(proxy.max_body, 512 * 1024);
    assert_eq!(proxy.max_in_flight_per_client, 8);
    let yaml = format!(
        "proxy:\n  timeout: 0s\n  max_body: lots\n  max_in_flight_per_client: 0\n  buffer: 1MiB\n{MINIMAL}"
    );
    let lines = errors(&yaml, &[("S", "s3cr3t")]);
    assert_has(
        &lines,
        "test.yaml:2: ",
        "proxy.timeout must be more than 0s",
    );
    assert_has(&lines, "test.yaml:3: ", "\"lots\" is not a size");
    assert_has(
        &lines,
        "test.yaml:4: ",
        "proxy.max_in_flight_per_client must be at least 1",
    );
    assert_has(&lines, "test.yaml:5: ", "unknown key \"buffer\" in proxy");
}
