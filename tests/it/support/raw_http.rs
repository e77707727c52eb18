//! Raw HTTP/1.1 over TCP, for what reqwest will not send (chunked or trickled
//! bodies, broken heads), and reading one answer back off the connection.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 answer read off a raw connection.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    /// The status line and headers, lower-cased.
    pub head: String,
    pub body: String,
}

impl RawAnswer {
    /// The body as JSON; panics with the answer when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {self:?}"))
    }
}

/// The head of a `POST path` to `host` with a JSON body of `length` bytes,
/// authorized with the API `key`.
pub fn post_head(host: impl Display, path: &str, key: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// Writes the head of a JSON `POST path` of `length` bytes to `stream`.
pub async fn send_post_head(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    host: impl Display,
    path: &str,
    key: &str,
    length: usize,
) {
    stream
        .write_all(post_head(host, path, key, length).as_bytes())
        .await
        .expect("send the head");
}

/// POSTs `body` to `addr` with `Transfer-Encoding: chunked`, authorized with
/// `key`, over a raw connection; returns the status and the body text (the
/// JSON object in it when the answer is chunked).
pub async fn post_chunked(addr: SocketAddr, path: &str, key: &str, body: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer before reading everything; a failed write is fine then.
    let _ = stream.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let body = body.find('{').map_or(body, |start| &body[start..]);
    let body = body.rfind('}').map_or(body, |end| &body[..=end]);
    (status, body.to_string())
}

/// Reads one answer from `stream`: until its `Content-Length` is complete
/// or the server closes. `None` when nothing complete came within `within`.
pub async fn read_answer(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> Option<RawAnswer> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    loop {
        if let Some(answer) = parse_answer(&buf, false) {
            return Some(answer);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return parse_answer(&buf, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return None,
        }
    }
}

/// The answer in `buf` once it is complete (`closed`: the server hung up).
fn parse_answer(buf: &[u8], closed: bool) -> Option<RawAnswer> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let head = head.to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(n) if body.len() >= n => {}
        None if closed => {}
        _ => return None,
    }
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(RawAnswer {
        status,
        head: head.clone(),
        body: body.to_string(),
    })
}
