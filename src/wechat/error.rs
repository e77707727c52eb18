//! The one error taxonomy for WeChat answers, and the one place that turns an
//! answer into a retry decision ([`UpstreamError::decide`]).
//!
//! Invariant: no error value carries a secret or a token. Request URLs are
//! stripped from transport errors (the legacy API puts the secret in the query
//! string), WeChat's `errmsg` is scrubbed of the secret, and decode errors
//! describe the body without quoting it.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use super::ApiName;
use crate::clock::{next_china_midnight, next_minute};

/// How long a config-class failure waits before the next try.
pub const CONFIG_ERROR_RETRY: Duration = Duration::from_secs(300);

/// A failed call to WeChat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// WeChat answered with a non-zero `errcode`.
    #[error("wechat {api} answered errcode {errcode}: {errmsg}")]
    Api {
        api: ApiName,
        errcode: i64,
        errmsg: String,
    },
    /// No answer within the per-request timeout.
    #[error("wechat {api} did not answer within {timeout:?} at {base_url}")]
    Timeout {
        api: ApiName,
        base_url: String,
        timeout: Duration,
    },
    /// The connection could not be made or broke before a whole answer arrived.
    #[error("could not reach wechat {api} at {base_url}: {detail}")]
    Connect {
        api: ApiName,
        base_url: String,
        detail: String,
    },
    /// An HTTP status other than 200.
    #[error("wechat {api} at {base_url} answered HTTP {status}")]
    Http {
        api: ApiName,
        base_url: String,
        status: u16,
    },
    /// A 200 answer that is not the JSON WeChat documents.
    #[error("wechat {api} sent an answer that could not be understood: {detail}")]
    Decode { api: ApiName, detail: String },
    /// WeChat was not called: the shared store that decides which replica
    /// refreshes (Redis) could not be used. Never a reason to call anyway.
    #[error("wechat {api} was not called: {detail}")]
    Coordination { api: ApiName, detail: String },
}

/// What the caller should do after an [`UpstreamError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A transient failure (system busy, transport, garbage): retry with
    /// exponential backoff and full jitter.
    Retry,
    /// The account is misconfigured (appid, secret, IP whitelist, frozen
    /// secret): mark it failing, alert, and retry only slowly.
    ConfigError { retry_after: Duration },
    /// Calling again before this Unix time cannot help (daily quota, per-minute
    /// limit, IP blocked for a period).
    NotBefore { unix: i64, cause: WaitCause },
    /// The token that was used was rejected (40001/40014/42001 on use):
    /// compare-and-refresh it.
    TokenRejected,
}

/// Why a [`Decision::NotBefore`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCause {
    /// 45009: the daily quota is spent until the next China-time day.
    DailyQuota,
    /// 45011: the per-minute limit.
    MinuteLimit,
    /// 89506/89507: the caller's IP is blocked for a day or an hour.
    IpBlocked,
}

impl fmt::Display for WaitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WaitCause::DailyQuota => "daily quota exhausted",
            WaitCause::MinuteLimit => "per-minute limit reached",
            WaitCause::IpBlocked => "caller ip blocked",
        })
    }
}

impl UpstreamError {
    /// The API that failed.
    pub fn api(&self) -> ApiName {
        match self {
            UpstreamError::Api { api, .. }
            | UpstreamError::Timeout { api, .. }
            | UpstreamError::Connect { api, .. }
            | UpstreamError::Http { api, .. }
            | UpstreamError::Decode { api, .. }
            | UpstreamError::Coordination { api, .. } => *api,
        }
    }

    /// WeChat's errcode, when WeChat answered with one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            UpstreamError::Api { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// WeChat's errmsg (scrubbed), or this error's own sentence.
    pub fn errmsg(&self) -> String {
        match self {
            UpstreamError::Api { errmsg, .. } => errmsg.clone(),
            other => other.to_string(),
        }
    }

    /// The `outcome` label of `wxtoken_upstream_requests_total`.
    pub fn outcome_label(&self) -> String {
        match self {
            UpstreamError::Api { errcode, .. } => format!("errcode_{errcode}"),
            UpstreamError::Timeout { .. } => "timeout".to_string(),
            UpstreamError::Connect { .. } => "connect".to_string(),
            UpstreamError::Http { status, .. } => format!("http_{status}"),
            UpstreamError::Decode { .. } => "decode".to_string(),
            UpstreamError::Coordination { .. } => "coordination".to_string(),
        }
    }

    /// True when the next base URL should be tried: connect errors, timeouts, HTTP 5xx.
    pub fn fails_over(&self) -> bool {
        match self {
            UpstreamError::Timeout { .. } | UpstreamError::Connect { .. } => true,
            UpstreamError::Http { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// The caller IP that WeChat refused (40164), parsed from its errmsg
    /// (`invalid ip 1.2.3.4 ipv6 ::ffff:1.2.3.4, not in whitelist`).
    pub fn whitelist_ip(&self) -> Option<IpAddr> {
        match self {
            UpstreamError::Api {
                errcode: 40164 | 60020,
                errmsg,
                ..
            } => ip_in_errmsg(errmsg),
            _ => None,
        }
    }

    /// Decides what to do after this error, given the current Unix time.
    ///
    /// This is the only place where errcodes become retry behaviour.
    pub fn decide(&self, now_unix: i64) -> Decision {
        let config = Decision::ConfigError {
            retry_after: CONFIG_ERROR_RETRY,
        };
        let code = match self {
            UpstreamError::Api { errcode, .. } => *errcode,
            _ => return Decision::Retry,
        };
        let fetching = matches!(
            self.api(),
            ApiName::Token | ApiName::StableToken | ApiName::WecomToken
        );
        match code {
            -1 => Decision::Retry,
            // On a fetch, 40001 means the secret is wrong; on use, the token is stale.
            40001 if fetching => config,
            40001 | 40014 | 42001 => Decision::TokenRejected,
            40013 | 40125 | 40243 | 40164 | 41002 | 41004 | 40002 | 89503 | 89501 | 48001 => config,
            // WeCom: secret invalid, IP not in the app's trusted IPs, bad
            // agentid, API not allowed for this app.
            40091 | 60020 | 40056 | 48002 => config,
            45009 => Decision::NotBefore {
                unix: next_china_midnight(now_unix),
                cause: WaitCause::DailyQuota,
            },
            45011 => Decision::NotBefore {
                unix: next_minute(now_unix),
                cause: WaitCause::MinuteLimit,
            },
            89506 => Decision::NotBefore {
                unix: now_unix + 24 * 3600,
                cause: WaitCause::IpBlocked,
            },
            89507 => Decision::NotBefore {
                unix: now_unix + 3600,
                cause: WaitCause::IpBlocked,
            },
            _ => Decision::Retry,
        }
    }
}

/// Finds the first IPv4 or IPv6 address after "invalid ip" in a WeChat errmsg.
fn ip_in_errmsg(errmsg: &str) -> Option<IpAddr> {
    // WeChat: "invalid ip 1.2.3.4 ipv6 ..."; WeCom: "..., from ip: 1.2.3.4, ...".
    let (at, marker) = ["invalid ip", "from ip:"]
        .iter()
        .find_map(|m| errmsg.find(m).map(|at| (at, *m)))?;
    let rest = &errmsg[at + marker.len()..];
    rest.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .find_map(|w| w.parse::<IpAddr>().ok())
}

/// Removes every occurrence of `secret` from `text` and caps its length.
pub(crate) fn scrub(text: &str, secret: Option<&str>) -> String {
    let mut out = match secret {
        Some(s) if !s.is_empty() => text.replace(s, "[REDACTED]"),
        _ => text.to_string(),
    };
    if out.len() > 300 {
        let mut cut = 300;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(api: ApiName, errcode: i64) -> UpstreamError {
        UpstreamError::Api {
            api,
            errcode,
            errmsg: "x".into(),
        }
    }

    #[test]
    fn ip_is_extracted_from_whitelist_errmsg() {
        let e = UpstreamError::Api {
            api: ApiName::StableToken,
            errcode: 40164,
            errmsg: "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist rid: 6571"
                .into(),
        };
        assert_eq!(e.whitelist_ip(), Some("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn errcode_40001_is_config_on_fetch_and_rejection_on_use() {
        assert!(matches!(
            api(ApiName::Token, 40001).decide(0),
            Decision::ConfigError { .. }
        ));
        assert_eq!(
            api(ApiName::GetTicket, 40001).decide(0),
            Decision::TokenRejected
        );
    }

    #[test]
    fn scrub_removes_the_secret_and_caps_length() {
        assert_eq!(
            scrub("bad s3cr3t here", Some("s3cr3t")),
            "bad [REDACTED] here"
        );
        assert!(scrub(&"é".repeat(400), None).len() <= 303);
    }
}
