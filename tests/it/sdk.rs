//! A published WeChat SDK, unmodified, adopts wxtoken by configuration only
//! (contract §7): the npm package `wechat-api` (installed by `.ci/run` with
//! `npm ci --prefix tests/sdk`) gets its token from the face with a client key
//! as its "appsecret" and makes its business calls through the proxy, and
//! keeps working when its token is rotated behind its back, both by wxtoken
//! and at WeChat behind wxtoken's back. The SDK itself retries 40001 with the
//! same token, so only the proxy can make these calls succeed.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use wxtoken::domain::Mode;

use crate::app::{ADMIN_KEY, READER_KEY, TestAppBuilder};

/// `tests/sdk`, where the SDK and its driver script live.
fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sdk")
}

/// One JSON line of the driver, read off the blocking pool.
async fn next_line(
    lines: &mut Option<std::io::Lines<BufReader<std::process::ChildStdout>>>,
) -> Value {
    let mut taken = lines.take().expect("the driver's output");
    let (line, taken) = tokio::task::spawn_blocking(move || {
        let line = taken.next();
        (line, taken)
    })
    .await
    .expect("the reader thread");
    *lines = Some(taken);
    let line = line
        .expect("the driver printed a line before it exited")
        .expect("readable output");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

#[actix_web::test]
async fn an_unmodified_wechat_api_sdk_pointed_at_wxtoken_gets_its_token_and_survives_rotations() {
    let dir = sdk_dir();
    assert!(
        dir.join("node_modules").join("wechat-api").is_dir(),
        "the SDK is not installed: run `npm ci --prefix tests/sdk` (needs Node.js and npm; .ci/run does it)"
    );
    let app = TestAppBuilder::new().account(Mode::Legacy).spawn().await;
    let account = &app.accounts[0];
    let media = tempfile::NamedTempFile::new().expect("a media file");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(media.path(), &bytes).expect("write the media file");

    let mut child = Command::new("node")
        .arg(dir.join("wechat_api.js"))
        .arg(&app.base_url)
        .arg(account.appid.as_str())
        .arg(READER_KEY)
        .arg(media.path())
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs (install Node.js)");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = Some(BufReader::new(child.stdout.take().expect("stdout")).lines());

    let token_calls = crate::support::token_calls(&app.sim.stats(), account.appid.as_str());
    let user = next_line(&mut lines).await;
    assert_eq!(user["step"], "user");
    assert!(user["err"].is_null(), "{user}");
    assert_eq!(user["openid"], "o-sdk-user");
    let held = user["token"]
        .as_str()
        .expect("the SDK holds a token")
        .to_string();
    assert_eq!(
        held,
        app.current_token(&account.appid),
        "the SDK's token is not the central one"
    );
    let message = next_line(&mut lines).await;
    assert!(message["err"].is_null(), "{message}");
    assert_eq!(message["errcode"], 0);
    let upload = next_line(&mut lines).await;
    assert!(
        upload["err"].is_null() && upload["media_id"].is_string(),
        "{upload}"
    );
    let download = next_line(&mut lines).await;
    assert!(download["err"].is_null(), "{download}");
    assert_eq!(download["same"], true, "{download}");
    assert_eq!(download["bytes"], bytes.len());
    assert_eq!(next_line(&mut lines).await["step"], "waiting");

    // 1. wxtoken rotates (an admin refresh) and WeChat's grace passes: the
    // SDK's token is dead at WeChat but still inside its serve time here.
    let res = app
        .admin_refresh(account.appid.as_str(), Some(ADMIN_KEY))
        .await;
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    app.sim.advance(Duration::from_secs(301));
    assert!(!app.sim.is_token_valid(account.appid.as_str(), &held));
    writeln!(stdin, "o-after-wxtoken-rotation").expect("write to the driver");
    let after = next_line(&mut lines).await;
    assert!(after["err"].is_null(), "{after}");
    assert_eq!(after["openid"], "o-after-wxtoken-rotation");
    assert_eq!(
        after["token"],
        held.as_str(),
        "the SDK fetched a new token itself"
    );
    assert_eq!(next_line(&mut lines).await["step"], "waiting");

    // 2. Someone fetches a token at WeChat with the AppSecret, behind
    // wxtoken's back: the current token dies; the proxy refreshes and retries.
    let current = app.rotate_behind_wxtokens_back(account).await;
    writeln!(stdin, "o-after-wechat-rotation").expect("write to the driver");
    let after = next_line(&mut lines).await;
    assert!(after["err"].is_null(), "{after}");
    assert_eq!(after["openid"], "o-after-wechat-rotation");
    assert_ne!(
        app.current_token(&account.appid),
        current,
        "wxtoken did not refresh"
    );
    assert_eq!(next_line(&mut lines).await["step"], "waiting");
    writeln!(stdin, "done").expect("write to the driver");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("the waiting thread")
        .expect("the driver exits");
    assert!(status.success(), "the driver failed: {status}");

    // The SDK asked the face once, never WeChat; wxtoken fetched twice (the
    // admin rotation and the recovery), each counted by the simulator.
    let stats = app.sim.stats();
    assert_eq!(
        crate::support::token_calls(&stats, account.appid.as_str()) - token_calls,
        3,
        "two wxtoken fetches and the one behind its back"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        crate::support::metric_value(
            &metrics,
            "wxtoken_face_requests_total",
            &[("api", "token"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        crate::support::metric_value(
            &metrics,
            "wxtoken_proxy_retries_total",
            &[("group", "user"), ("outcome", "ok")]
        ),
        1.0
    );
}
