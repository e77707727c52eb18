//! `wxtoken accounts`: the fleet as a running server sees it, from the admin
//! API (`GET /v1/accounts`), printed as an aligned table or as the server's
//! JSON.
//!
//! Invariant: the API key is sent as a bearer header and nowhere else: it is
//! never printed, and no error message quotes it or the server's answer body
//! beyond its error code.

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;
use url::Url;

/// What `wxtoken accounts` asks for.
#[derive(Debug)]
pub struct Request {
    /// The server's base URL (`http://127.0.0.1:8080`).
    pub server: Url,
    /// An admin client's key; `None` for a server without clients.
    pub key: Option<SecretString>,
    /// Return the server's JSON as it came instead of a table.
    pub json: bool,
}

/// How long the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The columns of the table, in order.
const HEADER: [&str; 8] = [
    "APPID",
    "NAME",
    "KIND",
    "STATE",
    "EXPIRES IN",
    "NEXT REFRESH",
    "LAST ERROR",
    "CALLS TODAY",
];

/// Asks the server for its accounts and returns what to print: the table
/// (or the JSON answer), ending with a newline.
///
/// Errors, in one sentence naming the server but never the key, when the
/// server cannot be reached, refuses the key (401, 403), answers anything
/// but 200 or an answer that is not a JSON list.
pub async fn fetch(request: &Request) -> anyhow::Result<String> {
    let http = crate::agent::client_for("accounts")?;
    let url = accounts_url(&request.server)?;
    let mut get = http.get(url.clone()).timeout(TIMEOUT);
    if let Some(key) = &request.key {
        get = get.bearer_auth(key.expose_secret());
    }
    let server = request.server.as_str();
    let resp = get.send().await.map_err(|e| {
        if e.is_connect() {
            anyhow::anyhow!(
                "could not connect to {server} (is `wxtoken serve` running there? give its address with --server)"
            )
        } else if e.is_timeout() {
            anyhow::anyhow!("{server} did not answer within {}s", TIMEOUT.as_secs())
        } else {
            anyhow::anyhow!("the request to {server} failed: {}", e.without_url())
        }
    })?;
    let status = resp.status();
    match status.as_u16() {
        200 => {}
        401 if request.key.is_none() => anyhow::bail!(
            "{server} needs an API key (401): give an admin client's key file with --key-file"
        ),
        401 => anyhow::bail!(
            "{server} refused the key (401): it is not one of the server's clients (check the key file)"
        ),
        403 => anyhow::bail!(
            "{server} refused the key (403): listing accounts needs a client with `admin: true`"
        ),
        404 => anyhow::bail!(
            "{server} has no {} (404): is it a wxtoken server?",
            url.path()
        ),
        _ => anyhow::bail!("{server} answered {status}"),
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("the answer of {server} broke off: {}", e.without_url()))?;
    let rows: Vec<Value> = serde_json::from_slice(&body)
        .map_err(|_| anyhow::anyhow!("the answer of {server} is not a JSON list of accounts"))?;
    if request.json {
        let mut text = String::from_utf8_lossy(&body).into_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        return Ok(text);
    }
    let now = crate::clock::Clock::system().now_unix();
    Ok(table(&rows, now))
}

/// `server` joined with `v1/accounts`, whether or not its path ends with `/`.
fn accounts_url(server: &Url) -> anyhow::Result<Url> {
    let mut base = server.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join("v1/accounts")
        .map_err(|e| anyhow::anyhow!("--server {server} cannot carry a path: {e}"))
}

/// The accounts as an aligned table, a header line first, `now` in Unix
/// seconds. Fields missing from a row show as `-`.
pub fn table(rows: &[Value], now: i64) -> String {
    let cells: Vec<[String; 8]> = rows.iter().map(|row| cells(row, now)).collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(str::to_string);
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One account's cells, in [`HEADER`]'s order.
fn cells(row: &Value, now: i64) -> [String; 8] {
    let text = |name: &str| {
        row.get(name)
            .and_then(Value::as_str)
            .map_or_else(|| "-".to_string(), printable)
    };
    let kind = match (row.get("kind").and_then(Value::as_str), row.get("mode")) {
        (Some("account") | None, Some(Value::String(mode))) => printable(mode),
        (Some(kind), _) => printable(kind),
        (None, _) => "-".to_string(),
    };
    let expires_in = match row.get("expires_at").and_then(Value::as_i64) {
        Some(at) if at <= now => "expired".to_string(),
        Some(at) => span(at - now),
        None => "-".to_string(),
    };
    let next_refresh = match row.get("next_refresh_at").and_then(Value::as_i64) {
        Some(at) if at <= now => "now".to_string(),
        Some(at) => format!("in {}", span(at - now)),
        None => "-".to_string(),
    };
    let last_error = match row.get("last_error") {
        Some(Value::Object(e)) => match e.get("errcode").and_then(Value::as_i64) {
            Some(code) => code.to_string(),
            None => "yes".to_string(),
        },
        _ => "-".to_string(),
    };
    let calls = row
        .get("upstream_calls_today")
        .and_then(Value::as_u64)
        .map_or_else(|| "-".to_string(), |n| n.to_string());
    [
        text("appid"),
        text("name"),
        kind,
        text("state"),
        expires_in,
        next_refresh,
        last_error,
        calls,
    ]
}

/// `text` with control characters (which could move a terminal's cursor)
/// shown as `?`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A positive number of seconds as its two largest units: `1h 52m`,
/// `4m 10s`, `9s`.
fn span(secs: i64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn the_table_aligns_every_column_and_shows_what_is_missing_as_a_dash() {
        let rows = [
            json!({
                "appid": "wx1111111111111111", "name": "Brand A", "mode": "stable",
                "kind": "account", "state": "ready", "expires_at": NOW + 6720,
                "next_refresh_at": NOW + 6500, "last_error": null,
                "upstream_calls_today": 3
            }),
            json!({
                "appid": "wx2222222222222222", "name": "Brand B mini program",
                "mode": "legacy", "kind": "account", "state": "failing",
                "expires_at": null, "next_refresh_at": NOW + 250,
                "last_error": {"errcode": 40164, "errmsg": "invalid ip", "at": NOW - 5},
                "upstream_calls_today": 12
            }),
            json!({"appid": "wx8888888888000001", "kind": "authorizer", "state": "ready",
                   "expires_at": NOW - 1}),
        ];
        let out = table(&rows, NOW);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("APPID"), "{out}");
        // Every column starts at the same offset on every line.
        let state_at = lines[0].find("STATE").expect("a STATE column");
        assert_eq!(&lines[1][state_at..state_at + 5], "ready", "{out}");
        assert_eq!(&lines[2][state_at..state_at + 7], "failing", "{out}");
        let error_at = lines[0].find("LAST ERROR").expect("a LAST ERROR column");
        assert_eq!(&lines[2][error_at..error_at + 5], "40164", "{out}");
        assert!(
            lines[1].contains("1h 52m") && lines[1].contains("in 1h 48m"),
            "{out}"
        );
        assert!(
            lines[1].contains("stable") && lines[2].contains("legacy"),
            "{out}"
        );
        assert!(lines[2].contains("in 4m 10s"), "{out}");
        assert!(
            lines[3].contains("authorizer") && lines[3].contains("expired"),
            "{out}"
        );
        assert!(
            lines[3].trim_end().ends_with('-'),
            "no calls shown as -: {out}"
        );
    }

    #[test]
    fn control_characters_in_names_do_not_reach_the_terminal() {
        let rows = [json!({"appid": "wx1111111111111111", "name": "evil\u{1b}[2Jname"})];
        let out = table(&rows, NOW);
        assert!(!out.contains('\u{1b}'), "{out:?}");
        assert!(out.contains("evil?[2Jname"), "{out}");
    }

    #[test]
    fn spans_show_their_two_largest_units() {
        assert_eq!(span(9), "9s");
        assert_eq!(span(250), "4m 10s");
        assert_eq!(span(6720), "1h 52m");
        assert_eq!(span(2 * 86_400 + 3 * 3600), "2d 3h");
    }

    #[test]
    fn the_accounts_url_keeps_a_path_prefix() {
        let url = |s: &str| accounts_url(&Url::parse(s).unwrap()).unwrap().to_string();
        assert_eq!(
            url("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080/v1/accounts"
        );
        assert_eq!(
            url("https://ops.example/wxtoken"),
            "https://ops.example/wxtoken/v1/accounts"
        );
        assert_eq!(
            url("https://ops.example/wxtoken/"),
            "https://ops.example/wxtoken/v1/accounts"
        );
    }
}
