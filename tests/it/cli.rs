//! The `wxtoken` binary as users run it (contract §1): exit codes, output,
//! and the demo's printed curl lines executed as printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use wxtoken::domain::KeyHash;

use crate::support::process::{EXAMPLE_SECRETS, Running, wxtoken};

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().expect("wxtoken runs");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_no_panic(out: &Output) {
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains("panicked"), "a panic: {text}");
        assert!(!text.contains("RUST_BACKTRACE"), "a panic: {text}");
    }
}

#[test]
fn check_passes_the_shipped_accounts_yaml_with_its_env_vars_set() {
    let config = repo_file("accounts.yaml");
    let mut cmd = wxtoken(&["check", "--config", config.to_str().expect("utf-8 path")]);
    cmd.envs(EXAMPLE_SECRETS);
    let out = run(cmd);
    assert_eq!(
        out.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        out.stdout.trim().lines().count(),
        1,
        "one-line summary: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains('3'),
        "the summary counts the accounts: {}",
        out.stdout
    );
    for (_, secret) in EXAMPLE_SECRETS {
        assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
    }
}

#[test]
fn check_lists_every_missing_env_var_with_its_line() {
    let config = repo_file("accounts.yaml");
    let yaml = std::fs::read_to_string(&config).expect("accounts.yaml is readable");
    let out = run(wxtoken(&[
        "check",
        "--config",
        config.to_str().expect("utf-8 path"),
    ]));
    assert_eq!(
        out.code,
        Some(2),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert_no_panic(&out);
    let text = format!("{}{}", out.stdout, out.stderr);
    for (name, _) in EXAMPLE_SECRETS {
        let line = yaml
            .lines()
            .position(|l| l.contains(&format!("${{{name}}}")))
            .expect("the variable is used in accounts.yaml")
            + 1;
        assert!(
            text.lines()
                .any(|l| l.contains(name) && l.contains(&format!("accounts.yaml:{line}:"))),
            "{name} (line {line}) is not reported:\n{text}"
        );
    }
}

#[test]
fn check_reports_a_missing_file_in_one_sentence() {
    let out = run(wxtoken(&[
        "check",
        "--config",
        "/nonexistent/accounts.yaml",
    ]));
    assert_eq!(out.code, Some(2));
    assert_no_panic(&out);
    assert!(
        out.stderr.contains("/nonexistent/accounts.yaml"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_honours_the_wxtoken_config_env_var() {
    let mut cmd = wxtoken(&["check"]);
    cmd.env("WXTOKEN_CONFIG", repo_file("accounts.yaml"))
        .envs(EXAMPLE_SECRETS)
        .current_dir(std::env::temp_dir());
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn hash_key_prints_the_sha256_form_of_stdin() {
    let out = hash_key_of(b"my-api-key-of-16+\n");
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.trim(),
        KeyHash::of_key("my-api-key-of-16+").to_string()
    );
    assert!(!printed.contains("my-api-key"));
}

/// Runs `wxtoken hash-key` with `key` on stdin.
fn hash_key_of(key: &[u8]) -> std::process::Output {
    let mut cmd = wxtoken(&["hash-key"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("wxtoken runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(key).expect("write the key");
    }
    child.wait_with_output().expect("wxtoken ends")
}

#[test]
fn hash_key_refuses_a_key_shorter_than_16_characters() {
    let out = hash_key_of(b"fifteen-chars-k\n");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shorter than 16"), "{stderr}");
    assert!(!stderr.contains("fifteen-chars-k"), "{stderr}");
    assert!(out.stdout.is_empty());
    // 16 characters pass, counted as characters, not bytes.
    assert!(
        hash_key_of("sixteen-chars-k!\n".as_bytes())
            .status
            .success()
    );
    assert_eq!(
        hash_key_of("钥匙钥匙钥匙钥匙钥匙钥匙钥匙钥\n".as_bytes())
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn hash_key_generate_prints_a_strong_key_and_its_hash() {
    let out = run(wxtoken(&["hash-key", "--generate"]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let field = |name: &str| {
        out.stdout
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} line in {}", out.stdout))
            .to_string()
    };
    let key = field("key:");
    let hash = field("hash:");
    assert_eq!(key.len(), 43, "32 bytes in base64url: {key}");
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(hash, KeyHash::of_key(&key).to_string());
    // The printed hash is what the config accepts.
    assert!(KeyHash::parse(&hash).is_ok());
    let again = run(wxtoken(&["hash-key", "--generate"]));
    assert_ne!(again.stdout, out.stdout, "each key is fresh");
}

#[test]
fn serve_help_documents_signals_file_watching_exit_codes_and_rust_log() {
    let out = run(wxtoken(&["serve", "--help"]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for needle in [
        "SIGTERM",
        "SIGHUP",
        "File watching",
        "Exit codes",
        "2  the configuration is invalid",
        "RUST_LOG",
    ] {
        assert!(
            out.stdout.contains(needle),
            "no {needle:?} in\n{}",
            out.stdout
        );
    }
}

#[test]
fn hash_key_refuses_an_empty_key() {
    let mut cmd = wxtoken(&["hash-key"]);
    cmd.stdin(Stdio::null());
    let out = run(cmd);
    assert_ne!(out.code, Some(0));
    assert_no_panic(&out);
    assert!(out.stderr.contains("no key"), "{}", out.stderr);
}

#[test]
fn serve_with_an_invalid_config_exits_2_listing_the_problems() {
    let out = run(wxtoken(&[
        "serve",
        "--config",
        repo_file("tests/fixtures/config/many_mistakes.yaml")
            .to_str()
            .expect("utf-8 path"),
    ]));
    assert_eq!(out.code, Some(2));
    assert_no_panic(&out);
    assert!(
        out.stderr
            .lines()
            .filter(|l| l.contains("many_mistakes.yaml:"))
            .count()
            >= 5,
        "{}",
        out.stderr
    );
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn simulator_answers_curl_as_the_contract_says() {
    let sim = Running::spawn(wxtoken(&[
        "simulator",
        "--listen",
        "127.0.0.1:0",
        "--token-ttl",
        "120",
        "--grace",
        "10",
    ]));
    let first = sim.read_until(|l| l.contains("listening on"));
    let base = first
        .last()
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .expect("the address is printed")
        .to_string();

    let registered = curl(&[
        "-X",
        "POST",
        &format!("{base}/sim/apps"),
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"appid":"wx1111111111111111","secret":"demo-secret","ip_whitelist":["127.0.0.1","10.0.0.0/8"]}"#,
    ]);
    assert!(!registered.contains("error"), "{registered}");

    // GET /sim/apps lists the app and its whitelist, never its secret.
    let listed = curl(&[&format!("{base}/sim/apps")]);
    assert!(!listed.contains("demo-secret"), "a secret listed: {listed}");
    let apps: Value = serde_json::from_str(&listed).expect("JSON");
    assert_eq!(apps[0]["appid"], "wx1111111111111111", "{apps}");
    assert_eq!(
        apps[0]["ip_whitelist"],
        serde_json::json!(["127.0.0.1/32", "10.0.0.0/8"]),
        "{apps}"
    );

    let answer: Value = serde_json::from_str(&curl(&[
        "-X",
        "POST",
        &format!("{base}/cgi-bin/stable_token"),
        "-d",
        r#"{"grant_type":"client_credential","appid":"wx1111111111111111","secret":"demo-secret"}"#,
    ]))
    .expect("JSON");
    assert_eq!(answer["expires_in"], 120, "{answer}");
    let token = answer["access_token"].as_str().expect("a token");

    let probe: Value = serde_json::from_str(&curl(&[&format!(
        "{base}/cgi-bin/getcallbackip?access_token={token}"
    )]))
    .expect("JSON");
    assert!(probe["ip_list"].is_array(), "{probe}");

    let wrong: Value = serde_json::from_str(&curl(&[&format!(
        "{base}/cgi-bin/token?grant_type=client_credential&appid=wx1111111111111111&secret=nope"
    )]))
    .expect("JSON");
    assert_eq!(wrong["errcode"], 40125, "{wrong}");

    let stats: Value = serde_json::from_str(&curl(&[&format!("{base}/sim/stats")])).expect("JSON");
    assert_eq!(
        stats["calls"]["wx1111111111111111"]["stable_token"], 1,
        "{stats}"
    );
    let apps: Value = serde_json::from_str(&curl(&[&format!("{base}/sim/apps")])).expect("JSON");
    assert_eq!(apps[0]["tokens_issued"]["stable"], 1, "{apps}");
    assert_eq!(sim.terminate(), Some(0));
}

#[test]
fn demo_prints_curl_lines_that_work_as_printed_and_stops_cleanly_on_sigterm() {
    // Started where there is no accounts.yaml: the built-in example runs.
    let empty = tempfile::tempdir().expect("a temporary directory");
    let mut cmd = wxtoken(&["demo"]);
    cmd.current_dir(empty.path());
    let demo = Running::spawn(cmd);
    let printed = demo.read_until(|l| l.contains("/reconcile"));
    let commands: Vec<&String> = printed
        .iter()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("curl ") || l.starts_with("TOKEN=") || l.starts_with("LEGACY=")
        })
        .collect();
    assert!(commands.len() >= 6, "{printed:#?}");
    for account in [
        "wx1111111111111111",
        "wx2222222222222222",
        "wx3333333333333333",
    ] {
        assert!(
            printed.iter().any(|l| l.contains(account)),
            "{account} is not listed"
        );
    }
    let sim_base = printed
        .iter()
        .find(|l| l.contains("WeChat simulator:"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .expect("the simulator's address is printed")
        .to_string();

    // Run every line in one shell, as a user pasting them would, and capture
    // what each printed.
    let mut script = String::from("set -u\n");
    for (i, line) in commands.iter().enumerate() {
        script.push_str(&format!("echo '--- {i}'\n{}\necho\n", line.trim()));
    }
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let outputs: Vec<&str> = text.split("--- ").skip(1).collect();
    assert_eq!(outputs.len(), commands.len());
    for (command, output) in commands.iter().zip(&outputs) {
        let body = output.split_once('\n').map_or("", |(_, b)| b).trim();
        let command = command.trim_start();
        if command.starts_with("TOKEN=") || command.starts_with("LEGACY=") {
            continue;
        }
        assert!(!body.is_empty(), "`{command}` printed nothing");
        assert!(
            !body.contains("\"error\"") && !body.contains("errcode"),
            "`{command}` printed {body}"
        );
    }
    let token: Value = serde_json::from_str(outputs[0].split_once('\n').expect("output").1.trim())
        .expect("the first line prints the token JSON");
    assert!(token["access_token"].is_string(), "{token}");
    assert!(
        text.contains("ip_list"),
        "the token is live at the simulator"
    );
    // Compare-and-refresh shown both ways: an old token gets the current
    // one back, the current token of the legacy account is refreshed.
    assert!(text.contains("\"refreshed\":false"), "{text}");
    assert!(text.contains("\"refreshed\":true"), "{text}");
    // ...and no line spent one of WeChat's daily stable force_refresh.
    let stats: Value =
        serde_json::from_str(&curl(&[&format!("{sim_base}/sim/stats")])).expect("JSON");
    assert_eq!(
        stats["force_refreshes"],
        serde_json::json!({}),
        "the demo's lines spent a stable force: {stats}"
    );
    // Three accounts, the demo component and its three authorizers.
    assert!(
        text.contains("wxtoken_accounts{state=\"ready\"} 7"),
        "{text}"
    );
    assert!(text.contains("component_access_token"), "{text}");
    assert!(
        text.contains("\"unchanged\":3"),
        "the reconcile finds the three authorizers: {text}"
    );
    assert_eq!(demo.terminate(), Some(0), "SIGTERM stops the demo cleanly");
}

#[test]
fn demo_with_a_missing_config_given_explicitly_exits_2() {
    let empty = tempfile::tempdir().expect("a temporary directory");
    let mut cmd = wxtoken(&["demo", "--config", "mine.yaml"]);
    cmd.current_dir(empty.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_no_panic(&out);
    assert!(out.stderr.contains("mine.yaml"), "{}", out.stderr);
}

#[test]
fn the_shipped_accounts_yaml_header_names_every_variable_it_needs() {
    let yaml = std::fs::read_to_string(repo_file("accounts.yaml")).expect("accounts.yaml");
    let header: String = yaml
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let used: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            l.split_once("${")
                .and_then(|(_, rest)| rest.split_once('}'))
        })
        .map(|(name, _)| name)
        .collect();
    assert_eq!(used.len(), EXAMPLE_SECRETS.len(), "{used:?}");
    for name in used {
        assert!(
            header.contains(name),
            "the header's `check` line does not say that {name} must be set:\n{header}"
        );
    }
}

#[test]
fn completions_are_printed_for_every_shell_and_bash_knows_the_commands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(wxtoken(&["completions", shell]));
        assert_eq!(out.code, Some(0), "{shell}: {}", out.stderr);
        assert!(out.stdout.contains("wxtoken"), "{shell}: {}", out.stdout);
    }
    let bash = run(wxtoken(&["completions", "bash"])).stdout;
    for command in [
        "serve",
        "check",
        "demo",
        "simulator",
        "hash-key",
        "agent",
        "accounts",
        "completions",
    ] {
        assert!(
            bash.contains(command),
            "no {command} in the bash completion"
        );
    }
    assert!(bash.contains("--log-format"), "the global option completes");
    let out = run(wxtoken(&["completions", "tcsh"]));
    assert_eq!(out.code, Some(2));
}

#[test]
fn the_global_log_format_is_listed_only_in_the_top_level_help() {
    // An option's entry: a line that starts with it (prose may mention it).
    let lists = |help: &str| {
        help.lines()
            .any(|l| l.trim_start().starts_with("--log-format"))
    };
    let top = run(wxtoken(&["--help"]));
    assert!(lists(&top.stdout), "{}", top.stdout);
    for command in ["serve", "check", "demo", "simulator", "agent", "accounts"] {
        let out = run(wxtoken(&[command, "--help"]));
        assert_eq!(out.code, Some(0), "{command}: {}", out.stderr);
        assert!(
            !lists(&out.stdout),
            "`{command} --help` lists the global option:\n{}",
            out.stdout
        );
    }
}

#[test]
fn log_format_is_obeyed_before_and_after_the_command() {
    // A key file others may read makes `accounts` log a warning; the
    // server address is one nothing listens on.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, "a-key-that-is-long-enough\n").expect("the key file");
    set_mode(&key_file, 0o644);
    let server = format!("http://{}", crate::support::free_addr());
    let key = key_file.to_str().expect("utf-8 path");
    for args in [
        [
            "--log-format",
            "json",
            "accounts",
            "--server",
            &server,
            "--key-file",
            key,
        ],
        [
            "accounts",
            "--log-format",
            "json",
            "--server",
            &server,
            "--key-file",
            key,
        ],
    ] {
        let out = run(wxtoken(&args));
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        let warning = out
            .stderr
            .lines()
            .find(|l| l.contains("0600"))
            .unwrap_or_else(|| panic!("{args:?}: no warning in {}", out.stderr));
        let event: Value = serde_json::from_str(warning)
            .unwrap_or_else(|_| panic!("{args:?}: not a JSON log line: {warning}"));
        assert_eq!(event["level"], "WARN", "{event}");
        assert!(!out.stderr.contains("a-key-that-is-long-enough"));
    }
}

#[test]
fn serve_still_accepts_log_format_after_the_command() {
    let out = run(wxtoken(&[
        "serve",
        "--log-format",
        "json",
        "--config",
        "/nonexistent/accounts.yaml",
    ]));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("config file not found") && !out.stderr.contains("unexpected argument"),
        "{}",
        out.stderr
    );
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn simulator_help_documents_every_control_route() {
    let out = run(wxtoken(&["simulator", "--help"]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let routes = std::fs::read_to_string(repo_file("src/simulator/routes.rs")).expect("routes.rs");
    let mut paths: Vec<&str> = routes
        .split('"')
        .filter(|s| s.starts_with("/sim/"))
        .collect();
    paths.dedup();
    assert!(paths.len() >= 8, "{paths:?}");
    for path in paths {
        assert!(
            out.stdout.contains(path),
            "`simulator --help` does not document {path}"
        );
    }
    for needle in [
        "ip_whitelist",
        "DELETE /sim/faults",
        "advance_secs",
        "GET    /sim/apps",
    ] {
        assert!(
            out.stdout.contains(needle),
            "no {needle:?} in\n{}",
            out.stdout
        );
    }
}
