//! `wxtoken agent`: the sidecar that keeps token files current on a business
//! host (contract §8), for cron jobs, PHP-FPM workers and programs that would
//! rather read a file than call an API, the way Vault Agent and Kubernetes
//! projected tokens are consumed.
//!
//! Owns the agent's loop: per appid one task long-polling
//! `GET /v1/token/{appid}?wait=..&after=<fetched_at>` ([`follow`]), the files
//! `DIR/{appid}.json` ([`TokenFile`]), the `--exec` hook, the reconnect
//! backoff, and the list of appids when none is given (`GET /v1/appids`,
//! looked at again every [`LIST_EVERY`]).
//!
//! Invariants:
//! - A file holds the server's token answer, byte for byte, and is replaced
//!   atomically (a 0600 temporary file in the same directory, synced, then
//!   renamed over the old one): a reader sees the old answer or the new one,
//!   never a part.
//! - No file outlives its token: each one has a deadline, the time its
//!   request was sent plus the answer's `expires_in`, less [`SAFETY`]; the
//!   file is removed at its deadline whatever the server does, and an answer
//!   is never written once its deadline has passed.
//! - The file is rewritten at every answer (at least every `--wait`, which
//!   is at most a minute), and `--exec` runs once per new token, after its
//!   file is in place.
//! - The key is read once from `--key-file` and never logged.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use backon::BackoffBuilder as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::AppId;

/// How long each long-poll asks the server to hold (at most a minute, so
/// that files are rewritten at least every minute).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(50);

/// How much earlier than its token's serve time a file is removed: covers
/// the time the answer spent on the wire and the timer's lateness.
pub const SAFETY: Duration = Duration::from_secs(1);

/// How often the list of appids is asked for again when no `--appid` is given.
pub const LIST_EVERY: Duration = Duration::from_secs(60);

/// Two answers that hold no newer token, less than this apart, mean the
/// server does not hold requests (an old version): the next waits this long.
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What `wxtoken agent` was asked to do.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The wxtoken server's base URL (`http://wxtoken:8080`).
    pub server: url::Url,
    /// The client key (read from `--key-file`).
    pub key: SecretString,
    /// Where the files go.
    pub out: PathBuf,
    /// The accounts to follow; empty: every account the key may read.
    pub appids: Vec<AppId>,
    /// A shell command run after a token changed, with `WXTOKEN_APPID` and
    /// `WXTOKEN_FILE` in its environment.
    pub exec: Option<String>,
    /// How long each long-poll asks the server to hold.
    pub wait: Duration,
}

/// Reads the key file: its first line, trimmed. Warns when other users may
/// read it.
///
/// Errors when it cannot be read or holds no key (the message names the
/// path, never the content).
pub fn read_key_file(path: &Path) -> anyhow::Result<SecretString> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read the key file {}", path.display()))?;
    let key = text.lines().next().unwrap_or_default().trim().to_string();
    if key.is_empty() {
        anyhow::bail!(
            "the key file {} is empty; write the client's API key in it",
            path.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                "the key file may be read by other users; make it 0600"
            );
        }
    }
    Ok(SecretString::from(key))
}

/// Runs the agent until `stop` is cancelled: follows every appid (or every
/// one the key may read), then leaves the files as they are (each holds a
/// token valid until its `expires_at`) and returns.
///
/// Errors when the output directory cannot be created, or when no appid is
/// given and the server refuses the key (the agent cannot know what to follow).
pub async fn run(options: AgentOptions, stop: CancellationToken) -> anyhow::Result<()> {
    create_private_dir(&options.out)?;
    let http = client_for("agent")?;
    let agent = Agent {
        http,
        options,
        stop,
    };
    let mut followers: HashMap<AppId, Follower> = HashMap::new();
    let fixed = !agent.options.appids.is_empty();
    let mut attempts = backoff();
    loop {
        let mut next = LIST_EVERY;
        let wanted = if fixed {
            Some(agent.options.appids.clone())
        } else {
            match agent.list().await {
                Ok(list) => {
                    attempts = backoff();
                    Some(list)
                }
                Err(ListError::Refused(message)) if followers.is_empty() => {
                    anyhow::bail!("the server refused to list the accounts: {message}")
                }
                Err(e) => {
                    next = attempts.next().unwrap_or(MAX_BACKOFF);
                    tracing::warn!(error = %e, "could not list the accounts; keeping the ones followed, asking again in {} ms", next.as_millis());
                    None
                }
            }
        };
        if let Some(wanted) = wanted {
            followers.retain(|appid, follower| {
                let keep = wanted.contains(appid);
                if !keep {
                    tracing::info!(appid = %appid, "the account is no longer readable; its file is removed");
                    follower.stop.cancel();
                }
                keep
            });
            for appid in wanted {
                if !followers.contains_key(&appid) {
                    followers.insert(appid.clone(), agent.spawn(appid));
                }
            }
        }
        if fixed {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = agent.stop.cancelled() => break,
        }
    }
    agent.stop.cancelled().await;
    for (_, follower) in followers {
        let _ = follower.task.await;
    }
    tracing::info!("wxtoken agent stopped");
    Ok(())
}

/// The reconnect backoff: 200 ms doubling to [`MAX_BACKOFF`], with jitter, for ever.
fn backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The HTTP client of the commands that talk to a wxtoken server (the
/// agent, `wxtoken accounts`): no redirects, no proxy from the environment
/// (the server is named explicitly), connect timeout 5 s; `command` names
/// it in the user agent (`wxtoken-agent/0.1.0`).
pub(crate) fn client_for(command: &str) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(format!("wxtoken-{command}/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| anyhow::anyhow!("could not set up the HTTP client: {e}"))
}

/// `dir` (and its parents) as a directory only its owner may enter, when
/// this creates it.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("could not create the output directory {}", dir.display()))
}

/// One followed appid.
struct Follower {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What every follower shares.
#[derive(Clone)]
struct Agent {
    http: reqwest::Client,
    options: AgentOptions,
    stop: CancellationToken,
}

/// Why the account list could not be had.
#[derive(Debug, thiserror::Error)]
enum ListError {
    /// The server answered, and no: a wrong key, a server without the endpoint.
    #[error("{0}")]
    Refused(String),
    /// The server did not answer usefully; asked again later.
    #[error("{0}")]
    Unreachable(String),
}

impl Agent {
    /// Starts following `appid`.
    fn spawn(&self, appid: AppId) -> Follower {
        let stop = self.stop.child_token();
        let agent = self.clone();
        let task = tokio::spawn(follow(agent, appid, stop.clone()));
        Follower { stop, task }
    }

    fn url(&self, path: &str) -> anyhow::Result<url::Url> {
        self.options
            .server
            .join(path)
            .map_err(|e| anyhow::anyhow!("bad server URL: {e}"))
    }

    /// `GET /v1/appids`: every account the key may read.
    async fn list(&self) -> Result<Vec<AppId>, ListError> {
        #[derive(Deserialize)]
        struct List {
            appids: Vec<String>,
        }
        let url = self
            .url("v1/appids")
            .map_err(|e| ListError::Refused(e.to_string()))?;
        let resp = self
            .http
            .get(url)
            .bearer_auth(self.options.key.expose_secret())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| ListError::Unreachable(e.without_url().to_string()))?;
        let status = resp.status();
        if status.is_client_error() {
            return Err(ListError::Refused(format!(
                "{status} {}",
                error_message(resp).await
            )));
        }
        if !status.is_success() {
            return Err(ListError::Unreachable(format!(
                "the server answered {status}"
            )));
        }
        let list: List = resp
            .json()
            .await
            .map_err(|e| ListError::Unreachable(e.without_url().to_string()))?;
        Ok(list
            .appids
            .iter()
            .filter_map(|a| AppId::parse(a).ok())
            .collect())
    }
}

/// The parts of a token answer the agent reads.
#[derive(Deserialize)]
struct Answer {
    access_token: String,
    expires_in: u64,
    fetched_at: i64,
}

/// What one poll brought.
enum Poll {
    /// A token answer, with its body and the deadline of a file holding it.
    Token {
        body: bytes::Bytes,
        answer: Answer,
        deadline: Instant,
    },
    /// The server answered without a token; ask again after this long.
    Later(Duration, String),
}

/// Follows one appid until `stop`: long-polls, writes, removes at the
/// deadline, runs `--exec` after a change.
async fn follow(agent: Agent, appid: AppId, stop: CancellationToken) {
    let mut file = TokenFile::open(&agent.options.out, &appid);
    let mut attempts = backoff();
    let mut last_poll: Option<(Instant, bool)> = None;
    loop {
        let deadline = file.deadline();
        let poll = tokio::select! {
            poll = agent.poll(&appid, file.fetched_at()) => poll,
            () = sleep_until_opt(deadline) => {
                tracing::warn!(appid = %appid, "no new token before the file's token ends; removing the file");
                file.remove();
                continue;
            }
            () = stop.cancelled() => break,
        };
        let pause = match poll {
            Ok(Poll::Token {
                body,
                answer,
                deadline,
            }) => {
                attempts = backoff();
                let newer = file.fetched_at() != Some(answer.fetched_at);
                match file.write(&body, &answer, deadline) {
                    Ok(true) => agent.after_change(&appid, file.path()),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(appid = %appid, error = %e, "could not write the token file");
                    }
                }
                // An old server that does not hold: do not spin.
                let now = Instant::now();
                let quick = last_poll.is_some_and(|(at, was_newer)| {
                    !newer && !was_newer && now.duration_since(at) < MIN_POLL_INTERVAL
                });
                last_poll = Some((now, newer));
                quick.then_some(MIN_POLL_INTERVAL)
            }
            Ok(Poll::Later(after, why)) => {
                tracing::warn!(appid = %appid, "no token from the server: {why}; asking again in {}s", after.as_secs());
                Some(after)
            }
            Err(e) => {
                let wait = attempts.next().unwrap_or(MAX_BACKOFF);
                tracing::warn!(appid = %appid, error = %e, "the server is unreachable; retrying in {} ms", wait.as_millis());
                Some(wait)
            }
        };
        if let Some(pause) = pause {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = sleep_until_opt(file.deadline()) => {
                    tracing::warn!(appid = %appid, "no new token before the file's token ends; removing the file");
                    file.remove();
                }
                () = stop.cancelled() => break,
            }
        }
    }
    if !agent.stop.is_cancelled() {
        // This appid alone was dropped (it left the key's scope).
        file.remove();
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Agent {
    /// One long-poll for `appid`'s token newer than `after`.
    async fn poll(&self, appid: &AppId, after: Option<i64>) -> Result<Poll, String> {
        let mut url = self
            .url(&format!("v1/token/{appid}"))
            .map_err(|e| e.to_string())?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("wait", &format!("{}ms", self.options.wait.as_millis()));
            if let Some(after) = after {
                query.append_pair("after", &after.to_string());
            }
        }
        let sent = Instant::now();
        let resp = self
            .http
            .get(url)
            .bearer_auth(self.options.key.expose_secret())
            .timeout(self.options.wait + Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = resp.status();
        if status == reqwest::StatusCode::OK {
            let body = resp
                .bytes()
                .await
                .map_err(|e| e.without_url().to_string())?;
            let answer: Answer = serde_json::from_slice(&body)
                .map_err(|e| format!("the token answer is not the expected JSON: {e}"))?;
            let deadline = sent + Duration::from_secs(answer.expires_in.min(86_400));
            return Ok(Poll::Token {
                body,
                answer,
                deadline: deadline.checked_sub(SAFETY).unwrap_or(sent),
            });
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let message = format!("{status} {}", error_message(resp).await);
        if status.is_server_error() && retry_after.is_none() {
            return Err(message);
        }
        // 4xx (a wrong key, an appid outside the scope) or 503 with a
        // Retry-After: ask again, no sooner than the server says.
        let after = retry_after
            .unwrap_or(MAX_BACKOFF)
            .clamp(Duration::from_secs(1), MAX_BACKOFF);
        Ok(Poll::Later(after, message))
    }

    /// Runs `--exec` for `appid`'s new token, in the background.
    fn after_change(&self, appid: &AppId, path: &Path) {
        let Some(command) = &self.options.exec else {
            return;
        };
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(command)
            .env("WXTOKEN_APPID", appid.as_str())
            .env("WXTOKEN_FILE", path)
            .stdin(std::process::Stdio::null());
        let appid = appid.clone();
        match cmd.spawn() {
            Ok(mut child) => {
                tokio::spawn(async move {
                    match child.wait().await {
                        Ok(status) if status.success() => {
                            tracing::debug!(appid = %appid, "--exec finished");
                        }
                        Ok(status) => {
                            tracing::warn!(appid = %appid, %status, "--exec failed");
                        }
                        Err(e) => {
                            tracing::warn!(appid = %appid, error = %e, "--exec could not be waited for")
                        }
                    }
                });
            }
            Err(e) => tracing::error!(appid = %appid, error = %e, "--exec could not start"),
        }
    }
}

/// The `message` of an error answer (the contract's error shape), or the
/// status alone.
async fn error_message(resp: reqwest::Response) -> String {
    #[derive(Deserialize)]
    struct Error {
        message: String,
    }
    match resp.json::<Error>().await {
        Ok(e) => e.message.chars().take(300).collect(),
        Err(_) => String::new(),
    }
}

/// `DIR/{appid}.json` and what the agent knows of the token in it.
struct TokenFile {
    dir: PathBuf,
    path: PathBuf,
    appid: AppId,
    /// The token in the file, its `fetched_at`, and when the file must go.
    current: Option<(String, i64, Instant)>,
    /// The last token written and its `fetched_at`, kept when the file is
    /// removed: the next poll asks for a newer one, and `--exec` runs only
    /// for a token it has not run for.
    last: Option<(String, i64)>,
}

impl TokenFile {
    /// The file of `appid` in `dir`; a file left by an earlier run is kept
    /// (until its `expires_at`) when it still holds a token, removed otherwise.
    fn open(dir: &Path, appid: &AppId) -> TokenFile {
        let path = dir.join(format!("{appid}.json"));
        let mut file = TokenFile {
            dir: dir.to_path_buf(),
            path,
            appid: appid.clone(),
            current: None,
            last: None,
        };
        if let Some(left) = file.read_left() {
            file.last = Some((left.0.clone(), left.1));
            file.current = Some(left);
        } else if file.path.exists() {
            file.remove();
        }
        file
    }

    /// A file an earlier run left that still holds a token, with its deadline
    /// from its `expires_at` (the server's clock, taken as this host's).
    fn read_left(&self) -> Option<(String, i64, Instant)> {
        #[derive(Deserialize)]
        struct Left {
            access_token: String,
            expires_at: i64,
            fetched_at: i64,
        }
        let text = std::fs::read(&self.path).ok()?;
        let left: Left = serde_json::from_slice(&text).ok()?;
        let now = crate::clock::unix_ms(std::time::SystemTime::now());
        let left_ms = left.expires_at.saturating_mul(1000) - now;
        let left_for = Duration::from_millis(u64::try_from(left_ms).ok()?).checked_sub(SAFETY)?;
        Some((
            left.access_token,
            left.fetched_at,
            Instant::now() + left_for,
        ))
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// The `fetched_at` of the last token written (the poll's `after`).
    fn fetched_at(&self) -> Option<i64> {
        self.last.as_ref().map(|c| c.1)
    }

    fn deadline(&self) -> Option<Instant> {
        self.current.as_ref().map(|c| c.2)
    }

    /// Replaces the file with `body`; true when it holds another token than
    /// before (then `--exec` runs). Writes nothing once `deadline` has passed.
    fn write(&mut self, body: &[u8], answer: &Answer, deadline: Instant) -> std::io::Result<bool> {
        if deadline <= Instant::now() {
            // Too close to its end to hand out; ask for a newer one next.
            self.last = Some((answer.access_token.clone(), answer.fetched_at));
            return Ok(false);
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", self.appid))
            .suffix(".tmp")
            .tempfile_in(&self.dir)?;
        tmp.write_all(body)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        let changed = self
            .last
            .as_ref()
            .is_none_or(|(token, _)| *token != answer.access_token);
        if changed {
            tracing::info!(appid = %self.appid, fetched_at = answer.fetched_at, "new token written");
        }
        self.current = Some((answer.access_token.clone(), answer.fetched_at, deadline));
        self.last = Some((answer.access_token.clone(), answer.fetched_at));
        Ok(changed)
    }

    /// Removes the file (its token is at its end, or the account is gone).
    fn remove(&mut self) {
        self.current = None;
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::info!(appid = %self.appid, "token file removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(appid = %self.appid, error = %e, "could not remove the token file")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn answer(token: &str, fetched_at: i64, expires_at: i64) -> (Vec<u8>, Answer) {
        let body = serde_json::json!({
            "appid": "wx1111111111111111",
            "access_token": token,
            "expires_in": 100,
            "expires_at": expires_at,
            "fetched_at": fetched_at,
        });
        (
            serde_json::to_vec(&body).expect("JSON"),
            Answer {
                access_token: token.to_string(),
                expires_in: 100,
                fetched_at,
            },
        )
    }

    fn appid() -> AppId {
        AppId::parse("wx1111111111111111").expect("an appid")
    }

    #[test]
    fn a_file_is_private_whole_and_changes_only_with_its_token() {
        let dir = tempfile::tempdir().expect("a directory");
        let mut file = TokenFile::open(dir.path(), &appid());
        let later = Instant::now() + Duration::from_secs(60);
        let (body, first) = answer("token-number-one-0123456789", 10, i64::MAX / 2000);
        assert!(file.write(&body, &first, later).expect("written"));
        let path = dir.path().join("wx1111111111111111.json");
        assert_eq!(std::fs::read(&path).expect("the file"), body);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // The same token again: rewritten, not a change.
        assert!(!file.write(&body, &first, later).expect("written"));
        assert_eq!(file.fetched_at(), Some(10));
        let (body, second) = answer("token-number-two-0123456789", 20, i64::MAX / 2000);
        assert!(file.write(&body, &second, later).expect("written"));
        // Nothing but the file is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("the directory")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("wx1111111111111111.json")]
        );
    }

    #[test]
    fn an_answer_past_its_deadline_is_never_written_and_removal_keeps_the_last_token() {
        let dir = tempfile::tempdir().expect("a directory");
        let mut file = TokenFile::open(dir.path(), &appid());
        let (body, late) = answer("token-too-late-0123456789", 10, i64::MAX / 2000);
        assert!(!file.write(&body, &late, Instant::now()).expect("no error"));
        assert!(!file.path().exists());
        // Asked for newer than it next time.
        assert_eq!(file.fetched_at(), Some(10));
        let (body, ok) = answer("token-in-time-0123456789", 11, i64::MAX / 2000);
        assert!(
            file.write(&body, &ok, Instant::now() + Duration::from_secs(5))
                .expect("written")
        );
        file.remove();
        assert!(!file.path().exists());
        assert_eq!(file.deadline(), None);
        // The same token served again after a removal is no change for --exec.
        assert!(
            !file
                .write(&body, &ok, Instant::now() + Duration::from_secs(5))
                .expect("written")
        );
        assert!(file.path().exists());
    }

    #[test]
    fn a_file_left_by_an_earlier_run_is_kept_while_its_token_lasts() {
        let dir = tempfile::tempdir().expect("a directory");
        let now = crate::clock::unix_ms(std::time::SystemTime::now()) / 1000;
        let path = dir.path().join("wx1111111111111111.json");
        let (body, _) = answer("token-left-behind-0123456789", now - 10, now + 100);
        std::fs::write(&path, &body).expect("a left file");
        let file = TokenFile::open(dir.path(), &appid());
        assert!(path.exists());
        assert_eq!(file.fetched_at(), Some(now - 10));
        let deadline = file.deadline().expect("a deadline");
        assert!(deadline <= Instant::now() + Duration::from_secs(100) - SAFETY);

        let (body, _) = answer("token-long-dead-0123456789", now - 200, now - 1);
        std::fs::write(&path, &body).expect("a dead file");
        let file = TokenFile::open(dir.path(), &appid());
        assert!(
            !path.exists(),
            "a file past its token's end is removed at start"
        );
        assert_eq!(file.fetched_at(), None);
        std::fs::write(&path, b"not json").expect("a broken file");
        TokenFile::open(dir.path(), &appid());
        assert!(
            !path.exists(),
            "a file that is not a token answer is removed at start"
        );
    }
}
