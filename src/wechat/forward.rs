//! Forwarding business API calls to WeChat for the token-injecting proxy
//! (contract §7): the HTTP exchange, failover across the account's base
//! URLs, and the proxy's timeout. What is forwarded (the path, the query with
//! the injected token, the filtered headers, the body) is decided by
//! `api::proxy`; this module only carries it to WeChat, so that all of
//! wxtoken's traffic to WeChat leaves from `src/wechat/`.
//!
//! Invariants:
//! - Only the given base URLs are contacted: the upstream URL is the base
//!   URL with the path and query set on it (its host can never change), and
//!   redirects are never followed.
//! - A request is sent again to the next base URL only when that cannot
//!   repeat its effect or lose its body: its body is buffered, and the
//!   previous attempt failed to connect or got an HTTP 5xx; a timed-out
//!   attempt is repeated only for `GET` and `HEAD` (a business call such as
//!   sending a message may have been processed).

use std::time::Duration;

use bytes::Bytes;
use url::Url;

use super::install_crypto_provider;

/// The body of a forwarded request.
pub enum ForwardBody {
    /// Held whole (at most the retry buffer): may be sent more than once.
    Buffered(Bytes),
    /// Streamed from the client as it arrives: sent once.
    Streamed(reqwest::Body),
}

/// One request to forward.
pub struct Forward<'a> {
    pub method: reqwest::Method,
    /// Tried in order (see the module's failover rules).
    pub base_urls: &'a [Url],
    /// The path below a base URL, starting with `/`, without dot segments.
    pub path: &'a str,
    /// The query string to send (the token already injected).
    pub query: &'a str,
    pub headers: reqwest::header::HeaderMap,
    pub body: ForwardBody,
    /// For the whole exchange, the answer's body included.
    pub timeout: Duration,
}

/// Why a forwarded request got no answer. Carries no URL and no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    #[error("WeChat did not answer in time")]
    Timeout,
    #[error("WeChat could not be reached")]
    Connect,
    #[error("the exchange with WeChat failed")]
    Failed,
    #[error("no upstream base URL is configured for this account")]
    NoBaseUrl,
}

impl ForwardError {
    /// The bounded `outcome` label of `wxtoken_proxy_requests_total`.
    pub fn outcome(self) -> &'static str {
        match self {
            ForwardError::Timeout => "timeout",
            ForwardError::Connect => "connect",
            ForwardError::Failed | ForwardError::NoBaseUrl => "failed",
        }
    }

    fn of(e: &reqwest::Error) -> ForwardError {
        if e.is_timeout() {
            ForwardError::Timeout
        } else if e.is_connect() {
            ForwardError::Connect
        } else {
            ForwardError::Failed
        }
    }
}

/// The proxy's HTTP client to WeChat. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Forwarder {
    http: reqwest::Client,
}

impl Forwarder {
    /// A client that never follows redirects, connects within
    /// `connect_timeout` and keeps up to `idle_per_host` connections.
    pub fn new(connect_timeout: Duration, idle_per_host: usize) -> Result<Forwarder, String> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(idle_per_host)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.without_url().to_string())?;
        Ok(Forwarder { http })
    }

    /// Sends `f`, failing over across its base URLs as the module says; the
    /// answer's head is returned with its body still to be read.
    pub async fn send(&self, f: Forward<'_>) -> Result<reqwest::Response, ForwardError> {
        let replayable_timeout = matches!(f.method, reqwest::Method::GET | reqwest::Method::HEAD);
        let mut body = Some(f.body);
        let mut last = ForwardError::NoBaseUrl;
        for (i, base) in f.base_urls.iter().enumerate() {
            let Some(this_body) = body.take() else { break };
            let (send_body, again) = match this_body {
                ForwardBody::Buffered(bytes) => (
                    reqwest::Body::from(bytes.clone()),
                    Some(ForwardBody::Buffered(bytes)),
                ),
                ForwardBody::Streamed(stream) => (stream, None),
            };
            let url = upstream_url(base, f.path, f.query);
            let answer = self
                .http
                .request(f.method.clone(), url)
                .headers(f.headers.clone())
                .timeout(f.timeout)
                .body(send_body)
                .send()
                .await;
            let is_last = i + 1 == f.base_urls.len();
            match answer {
                Ok(resp) if resp.status().is_server_error() && again.is_some() && !is_last => {
                    body = again;
                }
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    last = ForwardError::of(&e);
                    let retry = match last {
                        ForwardError::Connect => true,
                        ForwardError::Timeout => replayable_timeout,
                        _ => false,
                    };
                    if !retry {
                        return Err(last);
                    }
                    body = again;
                }
            }
        }
        Err(last)
    }
}

/// `base` with `path` (below the base's own path) and `query` set on it: the
/// scheme, host and port are the base's, whatever the path holds.
pub fn upstream_url(base: &Url, path: &str, query: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url.set_query((!query.is_empty()).then_some(query));
    url.set_fragment(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_url_keeps_the_base_host_whatever_the_path() {
        let base = Url::parse("https://api.weixin.qq.com").expect("url");
        let prefixed = Url::parse("http://127.0.0.1:9000/wechat/").expect("url");
        for (b, path, query, want) in [
            (
                &base,
                "/cgi-bin/user/info",
                "access_token=T&openid=o",
                "https://api.weixin.qq.com/cgi-bin/user/info?access_token=T&openid=o",
            ),
            (
                &base,
                "//evil.example/x",
                "a=1",
                "https://api.weixin.qq.com//evil.example/x?a=1",
            ),
            (
                &base,
                "/@evil.example/x",
                "",
                "https://api.weixin.qq.com/@evil.example/x",
            ),
            (&base, "/x#frag", "", "https://api.weixin.qq.com/x%23frag"),
            (
                &prefixed,
                "/cgi-bin/media/get",
                "media_id=m",
                "http://127.0.0.1:9000/wechat/cgi-bin/media/get?media_id=m",
            ),
        ] {
            let url = upstream_url(b, path, query);
            assert_eq!(url.as_str(), want);
            assert_eq!(url.host_str(), b.host_str());
            assert_eq!(url.port(), b.port());
        }
    }
}
