//! Validated newtypes shared by every layer: account ids, API modes, tokens.
//!
//! Invariant: a value of these types has passed its `parse`; nothing else
//! constructs them from unchecked input. [`AccessToken`] never prints its value
//! through `Debug` or `Display`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest account id accepted anywhere (WeChat appids are 18 characters).
pub const MAX_APPID_LEN: usize = 64;

/// An account id: a WeChat AppID such as `wx1111111111111111`.
///
/// [`AppId::parse`] checks the general syntax accepted on the HTTP API (1 to 64
/// characters of `A-Z a-z 0-9 _ - : .`); [`AppId::is_wechat_appid`] checks the
/// stricter WeChat form that the configuration requires.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AppId(String);

/// Why a string is not an [`AppId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppIdError {
    #[error("appid is empty")]
    Empty,
    #[error("appid {0:?} is longer than {MAX_APPID_LEN} characters")]
    TooLong(String),
    #[error("appid {0:?} contains characters other than letters, digits, '_', '-', ':' and '.'")]
    BadCharacters(String),
}

impl AppId {
    /// Parses the general id syntax; errors on empty, overlong or odd-character input.
    pub fn parse(s: &str) -> Result<Self, AppIdError> {
        if s.is_empty() {
            return Err(AppIdError::Empty);
        }
        if s.len() > MAX_APPID_LEN {
            let shown: String = s.chars().take(MAX_APPID_LEN).collect();
            return Err(AppIdError::TooLong(format!("{shown}...")));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'))
        {
            return Err(AppIdError::BadCharacters(s.to_string()));
        }
        Ok(AppId(s.to_string()))
    }

    /// True for the WeChat AppID form: `wx` followed by 16 letters or digits.
    pub fn is_wechat_appid(&self) -> bool {
        let b = self.0.as_bytes();
        b.len() == 18 && b.starts_with(b"wx") && b[2..].iter().all(|c| c.is_ascii_alphanumeric())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppId({})", self.0)
    }
}

impl<'de> Deserialize<'de> for AppId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AppId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Which WeChat endpoint an account fetches its token from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `POST /cgi-bin/stable_token`: the same token until its last minutes.
    #[default]
    Stable,
    /// `GET /cgi-bin/token`: a new token on every call, the old one dies 5 minutes later.
    Legacy,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Stable => "stable",
            Mode::Legacy => "legacy",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a value WeChat sent is not a plausible token or ticket. Never quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImplausibleToken {
    #[error("it is {0} characters long, not {lo} to {hi}", lo = AccessToken::UPSTREAM_LEN.start(), hi = AccessToken::UPSTREAM_LEN.end())]
    Length(usize),
    #[error("it holds a space, control or non-ASCII character at byte {0}")]
    Character(usize),
}

/// An access token (or ticket) value. It is a credential: `Debug` and `Display`
/// show only its length and a short fingerprint, never the value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AccessToken(String);

impl AccessToken {
    /// How long a token or ticket from WeChat may be, in characters (WeChat
    /// tells storage to reserve 512; contract §9 allows up to 2048).
    pub const UPSTREAM_LEN: std::ops::RangeInclusive<usize> = 16..=2048;

    pub fn new(value: impl Into<String>) -> Self {
        AccessToken(value.into())
    }

    /// Checks a token or ticket that WeChat sent: 16 to 2048 visible ASCII
    /// characters (no space, no control character, nothing outside ASCII).
    ///
    /// Errors with a sentence saying what is wrong that never quotes the value.
    pub fn from_upstream(value: String) -> Result<AccessToken, ImplausibleToken> {
        let len = value.chars().count();
        if !Self::UPSTREAM_LEN.contains(&len) {
            return Err(ImplausibleToken::Length(len));
        }
        if let Some(at) = value.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(ImplausibleToken::Character(at));
        }
        Ok(AccessToken(value))
    }

    /// The token itself, for the HTTP response body and upstream calls only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short non-reversible tag that identifies the token in logs.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        hex::encode(&digest[..4])
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AccessToken(len={}, sha256:{}..)",
            self.0.len(),
            self.fingerprint()
        )
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<token sha256:{}..>", self.fingerprint())
    }
}

/// The kinds of JS-SDK ticket WeChat issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketKind {
    Jsapi,
    WxCard,
}

impl TicketKind {
    /// Every kind, in the order metric series are created.
    pub const ALL: [TicketKind; 2] = [TicketKind::Jsapi, TicketKind::WxCard];

    /// WeChat's name for the kind (`getticket?type=`) and the `type` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TicketKind::Jsapi => "jsapi",
            TicketKind::WxCard => "wx_card",
        }
    }
}

/// The SHA-256 of an API key, as written in `clients[].key` (`sha256:<64 hex>`).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

/// Why a string is not a `sha256:<hex>` key hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "client key must be \"sha256:\" followed by 64 hex digits (run `wxtoken hash-key` to make one)"
)]
pub struct KeyHashError;

impl KeyHash {
    /// Parses `sha256:<64 hex digits>`; errors on anything else.
    pub fn parse(s: &str) -> Result<Self, KeyHashError> {
        let hex_part = s.strip_prefix("sha256:").ok_or(KeyHashError)?;
        if hex_part.len() != 64 {
            return Err(KeyHashError);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| KeyHashError)?;
        Ok(KeyHash(out))
    }

    /// A fresh random API key (32 random bytes, 43 characters of base64url)
    /// and its hash: how `hash-key --generate` and `demo` make keys.
    pub fn generate() -> (String, Self) {
        use base64::Engine as _;
        let bytes: [u8; 32] = rand::random();
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let hash = Self::of_key(&key);
        (key, hash)
    }

    /// Hashes a plaintext API key.
    pub fn of_key(key: &str) -> Self {
        use sha2::Digest;
        KeyHash(sha2::Sha256::digest(key.as_bytes()).into())
    }

    /// Constant-time comparison against the hash of a presented key.
    pub fn matches(&self, presented: &KeyHash) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&presented.0).into()
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({self})")
    }
}

/// The WeChat APIs wxtoken calls, the `api` label of upstream metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiName {
    Token,
    StableToken,
    GetTicket,
    GetCallbackIp,
    /// WeCom's `GET /cgi-bin/gettoken` on `qyapi.weixin.qq.com`.
    WecomToken,
    /// Open Platform `POST /cgi-bin/component/api_component_token`.
    ComponentToken,
    /// Open Platform `api_query_auth` (authorization code → authorizer tokens).
    QueryAuth,
    /// Open Platform `api_authorizer_token` (refresh token → authorizer token).
    AuthorizerToken,
    /// Open Platform `api_get_authorizer_list` (pages of refresh tokens).
    AuthorizerList,
    /// Open Platform `api_create_preauthcode`.
    PreAuthCode,
    /// Open Platform `api_start_push_ticket`.
    StartPushTicket,
    /// `POST /cgi-bin/openapi/quota/get` (getApiQuota): an API's daily
    /// limit and use, read with the account's token.
    ApiQuota,
}

impl ApiName {
    pub const ALL: [ApiName; 12] = [
        ApiName::Token,
        ApiName::StableToken,
        ApiName::GetTicket,
        ApiName::GetCallbackIp,
        ApiName::WecomToken,
        ApiName::ComponentToken,
        ApiName::QueryAuth,
        ApiName::AuthorizerToken,
        ApiName::AuthorizerList,
        ApiName::PreAuthCode,
        ApiName::StartPushTicket,
        ApiName::ApiQuota,
    ];

    /// The metric label and the name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiName::Token => "token",
            ApiName::StableToken => "stable_token",
            ApiName::GetTicket => "getticket",
            ApiName::GetCallbackIp => "getcallbackip",
            ApiName::WecomToken => "wecom_gettoken",
            ApiName::ComponentToken => "api_component_token",
            ApiName::QueryAuth => "api_query_auth",
            ApiName::AuthorizerToken => "api_authorizer_token",
            ApiName::AuthorizerList => "api_get_authorizer_list",
            ApiName::PreAuthCode => "api_create_preauthcode",
            ApiName::StartPushTicket => "api_start_push_ticket",
            ApiName::ApiQuota => "getapiquota",
        }
    }
}

impl std::fmt::Display for ApiName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an Open Platform authorizer stands with its merchant (contract §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authorization {
    /// Authorized: its token is refreshed and served.
    Authorized,
    /// Its refresh token is lost and the recovery through
    /// `api_get_authorizer_list` did not find one: the merchant must
    /// authorize again (its current token is served while valid).
    NeedsReauth,
    /// The merchant revoked the platform: served as 410, never refreshed.
    Unauthorized,
}

impl Authorization {
    /// Every state, for the `state` label of the authorizer gauge.
    pub const ALL: [Authorization; 3] = [
        Authorization::Authorized,
        Authorization::NeedsReauth,
        Authorization::Unauthorized,
    ];

    /// The word of `/v1/accounts` and of the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Authorization::Authorized => "authorized",
            Authorization::NeedsReauth => "needs_reauth",
            Authorization::Unauthorized => "unauthorized",
        }
    }
}

/// Why a refresh happens (the `reason` label of `wxtoken_refreshes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Startup,
    Scheduled,
    StaleReport,
    Admin,
    Retry,
}

impl Reason {
    /// Every reason, in the order of the metric's documentation.
    pub const ALL: [Reason; 5] = [
        Reason::Startup,
        Reason::Scheduled,
        Reason::StaleReport,
        Reason::Admin,
        Reason::Retry,
    ];

    /// The `reason` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Startup => "startup",
            Reason::Scheduled => "scheduled",
            Reason::StaleReport => "stale_report",
            Reason::Admin => "admin",
            Reason::Retry => "retry",
        }
    }
}

/// The lifecycle state of an account (contract §4 `state` label, plus `empty`
/// and `fetching` before the first token, which count as `refreshing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No token yet and no fetch started.
    Empty,
    /// The first fetch is in flight.
    Fetching,
    /// A valid token and the last attempt succeeded.
    Ready,
    /// A refresh is in flight while a token is served.
    Refreshing,
    /// The last attempt failed; a token may still be served while valid.
    Failing,
    /// `enabled: false`: never fetched.
    Disabled,
}

impl State {
    /// Every state.
    pub const ALL: [State; 6] = [
        State::Empty,
        State::Fetching,
        State::Ready,
        State::Refreshing,
        State::Failing,
        State::Disabled,
    ];

    /// The `state` label of `wxtoken_accounts`.
    pub fn metric_label(self) -> &'static str {
        match self {
            State::Empty | State::Fetching | State::Refreshing => "refreshing",
            State::Ready => "ready",
            State::Failing => "failing",
            State::Disabled => "disabled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appid_accepts_wechat_form_and_rejects_junk() {
        let id = AppId::parse("wx1111111111111111").unwrap();
        assert!(id.is_wechat_appid());
        assert!(!AppId::parse("ww12345:1000002").unwrap().is_wechat_appid());
        assert_eq!(AppId::parse(""), Err(AppIdError::Empty));
        assert!(matches!(
            AppId::parse("wx/../etc"),
            Err(AppIdError::BadCharacters(_))
        ));
        assert!(matches!(
            AppId::parse(&"a".repeat(65)),
            Err(AppIdError::TooLong(_))
        ));
    }

    #[test]
    fn token_debug_and_display_hide_the_value() {
        let t = AccessToken::new("SECRET-TOKEN-VALUE-123");
        assert!(!format!("{t:?}").contains("SECRET-TOKEN"));
        assert!(!format!("{t}").contains("SECRET-TOKEN"));
    }

    #[test]
    fn key_hash_round_trips_and_matches() {
        let h = KeyHash::of_key("test");
        assert_eq!(
            h.to_string(),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert!(
            KeyHash::parse(&h.to_string())
                .unwrap()
                .matches(&KeyHash::of_key("test"))
        );
        assert!(KeyHash::parse("sha256:zz").is_err());
        assert!(KeyHash::parse("9f86d081").is_err());
    }
}
