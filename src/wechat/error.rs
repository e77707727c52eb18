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

use crate::clock::{next_china_midnight, next_minute};
use crate::domain::ApiName;

/// How long a config-class failure waits before the next try.
pub const CONFIG_ERROR_RETRY: Duration = Duration::from_secs(300);

/// The errcodes that get a label of their own in
/// `wxtoken_upstream_requests_total` (the ones [`UpstreamError::decide`] and
/// the compare-and-refresh path know); any other is `errcode_other`, so an
/// upstream cannot create unbounded label values.
pub const KNOWN_ERRCODES: &[i64] = &[
    -1, 40001, 40002, 40013, 40014, 40056, 40091, 40125, 40164, 40243, 41002, 41004, 42001, 45009,
    45011, 48001, 48002, 60020, 61003, 61004, 61005, 61006, 61007, 61009, 61010, 61011, 61023,
    61024, 89501, 89503, 89506, 89507,
];

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
        /// The request may have reached WeChat (the connection broke after it
        /// was sent), so WeChat may have processed it.
        sent: bool,
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
    /// compare-and-refresh it. On an authorizer's call, the token used is
    /// its component's.
    TokenRejected,
    /// Open Platform: the authorizer's refresh token (61023) or authorization
    /// code (61009/61010) is unusable: recover it once through
    /// `api_get_authorizer_list`, then the merchant must authorize again.
    Recover,
    /// Open Platform 61003: the merchant revoked the platform; never refresh
    /// this authorizer again.
    Revoked,
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
            | UpstreamError::Decode { api, .. } => *api,
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

    /// True when WeChat may have processed the request although no usable
    /// answer came back (a timeout, a connection that broke after sending,
    /// an HTTP 5xx from a gateway, a garbled answer): a legacy fetch or a
    /// forced rotation may then have minted a token nobody knows of.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            UpstreamError::Timeout { .. } | UpstreamError::Decode { .. } => true,
            UpstreamError::Connect { sent, .. } => *sent,
            UpstreamError::Http { status, .. } => *status >= 500,
            UpstreamError::Api { .. } => false,
        }
    }

    /// The `outcome` label of `wxtoken_upstream_requests_total`: bounded, so
    /// an errcode outside [`KNOWN_ERRCODES`] is `errcode_other`, an HTTP status
    /// outside 100..=599 `http_other`.
    pub fn outcome_label(&self) -> String {
        match self {
            UpstreamError::Api { errcode, .. } if KNOWN_ERRCODES.contains(errcode) => {
                format!("errcode_{errcode}")
            }
            UpstreamError::Api { .. } => "errcode_other".to_string(),
            UpstreamError::Http { status, .. } if !(100..=599).contains(status) => {
                "http_other".to_string()
            }
            UpstreamError::Timeout { .. } => "timeout".to_string(),
            UpstreamError::Connect { .. } => "connect".to_string(),
            UpstreamError::Http { status, .. } => format!("http_{status}"),
            UpstreamError::Decode { .. } => "decode".to_string(),
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
        let component = self.api() == ApiName::ComponentToken;
        let authorizer = matches!(self.api(), ApiName::AuthorizerToken | ApiName::QueryAuth);
        match code {
            -1 => Decision::Retry,
            // Open Platform. Ticket expired or invalid: mint again with the
            // newest ticket (a new one is pushed every 10 minutes); 48001
            // comes in bursts from api_component_token.
            61005 | 61006 | 48001 if component => Decision::Retry,
            61004 | 61011 | 61024 => config,
            61003 if authorizer => Decision::Revoked,
            61023 | 61009 | 61010 if authorizer => Decision::Recover,
            61007 => config,
            // The component's secret is wrong (as 40001 on /cgi-bin/token).
            40001 if component => config,
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

/// Makes upstream text safe to show and log: percent-escapes are decoded,
/// every occurrence of `secret` (in any letter case) and every word that
/// looks like a credential (16 or more letters, digits, `_`, `-`, `+`, `/`
/// or `=`, with at least one letter and one digit; a WeChat `rid` excepted)
/// becomes `[REDACTED]`, control characters are escaped (`\n`, `\u{1b}`),
/// and the result is capped at 300 bytes.
pub(crate) fn scrub(text: &str, secret: Option<&str>) -> String {
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    let mut out = match secret {
        Some(s) if !s.is_empty() => replace_ignoring_case(&decoded, s, REDACTED),
        _ => decoded.into_owned(),
    };
    out = redact_credential_words(&out);
    out = out
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
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

const REDACTED: &str = "[REDACTED]";

/// `text` with every occurrence of `needle` replaced, comparing ASCII letters
/// without regard to case.
fn replace_ignoring_case(text: &str, needle: &str, with: &str) -> String {
    let (hay, pat) = (text.to_ascii_lowercase(), needle.to_ascii_lowercase());
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    // Lower-casing ASCII keeps byte offsets, so offsets in `hay` are offsets in `text`.
    while let Some(found) = hay[at..].find(&pat) {
        out.push_str(&text[at..at + found]);
        out.push_str(with);
        at += found + pat.len();
    }
    out.push_str(&text[at..]);
    out
}

/// `text` with every word that could be a secret or a token redacted (see [`scrub`]).
fn redact_credential_words(text: &str) -> String {
    let is_word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '/' | '=');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_word) {
        out.push_str(&rest[..start]);
        let word_len = rest[start..]
            .find(|c: char| !is_word(c))
            .unwrap_or(rest.len() - start);
        let word = &rest[start..start + word_len];
        let credential_like = word.len() >= 16
            && word.chars().any(|c| c.is_ascii_alphabetic())
            && word.chars().any(|c| c.is_ascii_digit())
            && !is_rid(word);
        out.push_str(if credential_like { REDACTED } else { word });
        rest = &rest[start + word_len..];
    }
    out.push_str(rest);
    out
}

/// True for a WeChat request id (`6571c6b9-5d3b3ea0-7a5c6d54`), kept for support tickets.
fn is_rid(word: &str) -> bool {
    let groups: Vec<&str> = word.split('-').collect();
    groups.len() >= 2
        && groups
            .iter()
            .all(|g| g.len() == 8 && g.chars().all(|c| c.is_ascii_hexdigit()))
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
    fn scrub_redacts_the_secret_in_any_case_and_percent_encoded() {
        let secret = "SECRETAAAAAAAAAAAAAAAAAAAAAAAAAA";
        for text in [
            "invalid appsecret secretaaaaaaaaaaaaaaaaaaaaaaaaaa here",
            "invalid appsecret SECRETAAAAAAAAAAAAAAAAAAAAAAAAA%41 here",
            "invalid appsecret %53%45%43%52%45%54AAAAAAAAAAAAAAAAAAAAAAAAAA here",
        ] {
            let out = scrub(text, Some(secret));
            assert!(!out.to_ascii_lowercase().contains("secretaaaa"), "{out}");
            assert!(out.contains("[REDACTED]") && out.contains("here"), "{out}");
        }
    }

    #[test]
    fn scrub_redacts_credential_like_words_but_keeps_the_rid_and_words() {
        // Another account's secret, a secret one character short, a token.
        let text = "bad 0123456789abcdef0123456789abcde and \
                    81_Xq3vT0kPa9b8c7d6e5f4g3h2i1j0kLmNoPqRsT-uvwxyz \
                    could get access_token by getStableAccessToken rid: 6571c6b9-5d3b3ea0-7a5c6d54";
        let out = scrub(text, None);
        assert!(!out.contains("0123456789abcdef"), "{out}");
        assert!(!out.contains("Xq3vT0kP"), "{out}");
        assert!(out.contains("getStableAccessToken"), "{out}");
        assert!(out.contains("access_token"), "{out}");
        assert!(out.contains("rid: 6571c6b9-5d3b3ea0-7a5c6d54"), "{out}");
    }

    #[test]
    fn scrub_escapes_control_characters() {
        let out = scrub("line one\nINFO fake line \u{1b}[31mred\r", None);
        assert!(!out.chars().any(char::is_control), "{out:?}");
        assert!(out.contains("\\n") && out.contains("\\u{1b}"), "{out}");
    }

    #[test]
    fn unknown_errcodes_share_one_label() {
        assert_eq!(api(ApiName::Token, 45009).outcome_label(), "errcode_45009");
        assert_eq!(
            api(ApiName::Token, 4_242_424).outcome_label(),
            "errcode_other"
        );
        assert_eq!(
            api(ApiName::Token, i64::MIN).outcome_label(),
            "errcode_other"
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
