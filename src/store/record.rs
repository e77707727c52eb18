//! The stored form of a [`StoredAccount`]: a versioned JSON record (see the
//! layout in the module doc of [`crate::store`]).
//!
//! Invariant: a decode error never carries text from the record itself, so a
//! token value cannot leak into a warning through it: [`RecordError`] holds
//! only the key's problem, a JSON error's class and position, a version
//! number or nothing.

use serde::{Deserialize, Serialize};

use super::{StoredAccount, StoredCode, StoredOpen, StoredTicket, StoredToken, VerifyTicket};
use crate::domain::{AccessToken, AppId, AppIdError, Mode};

/// The record version this build writes and reads.
const VERSION: u32 = 1;

#[derive(Deserialize)]
struct Version {
    v: u32,
}

/// Version 1 of the record. Deliberately not `Debug`: it holds the token.
#[derive(Serialize, Deserialize)]
struct RecordV1 {
    v: u32,
    mode: String,
    token: Option<TokenV1>,
    pending_fetch_ms: Option<i64>,
    calls_day: i64,
    calls_today: u32,
    forces: Vec<i64>,
    /// Added after version 1 shipped; absent in older records.
    #[serde(default)]
    tickets: Vec<TicketV1>,
    /// Open Platform components and authorizers (added after version 1
    /// shipped; absent in older records and for accounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    open: Option<OpenV1>,
}

#[derive(Serialize, Deserialize, Default)]
struct OpenV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    component: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    authorization: Option<crate::domain::Authorization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_code: Option<CodeV1>,
    /// Added when replicas began sharing Open Platform state; 0 before.
    #[serde(default, skip_serializing_if = "is_zero")]
    changed_at_ms: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    verify_tickets: Vec<VerifyTicketV1>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
struct CodeV1 {
    code: String,
    expires_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct VerifyTicketV1 {
    ticket: String,
    created_at_ms: i64,
    received_at_ms: i64,
}

fn encode_open(open: &StoredOpen) -> OpenV1 {
    OpenV1 {
        component: open.component.as_ref().map(|c| c.as_str().to_string()),
        authorization: open.authorization,
        refresh_token: open.refresh_token.as_ref().map(|t| t.expose().to_string()),
        auth_code: open.auth_code.as_ref().map(|c| CodeV1 {
            code: c.code.expose().to_string(),
            expires_at_ms: c.expires_at_ms,
        }),
        changed_at_ms: open.changed_at_ms,
        verify_tickets: open
            .verify_tickets
            .iter()
            .map(|t| VerifyTicketV1 {
                ticket: t.ticket.expose().to_string(),
                created_at_ms: t.created_at_ms,
                received_at_ms: t.received_at_ms,
            })
            .collect(),
    }
}

fn decode_open(open: OpenV1) -> Result<StoredOpen, RecordError> {
    Ok(StoredOpen {
        component: open
            .component
            .map(|c| AppId::parse(&c).map_err(|_| RecordError::Component))
            .transpose()?,
        authorization: open.authorization,
        refresh_token: open.refresh_token.map(AccessToken::new),
        auth_code: open.auth_code.map(|c| StoredCode {
            code: AccessToken::new(c.code),
            expires_at_ms: c.expires_at_ms,
        }),
        changed_at_ms: open.changed_at_ms,
        verify_tickets: open
            .verify_tickets
            .into_iter()
            .map(|t| VerifyTicket {
                ticket: AccessToken::new(t.ticket),
                created_at_ms: t.created_at_ms,
                received_at_ms: t.received_at_ms,
            })
            .collect(),
    })
}

/// The bytes of an Open Platform state on its own (the `open` member of a
/// record; replicas keep it under a key of its own).
pub(crate) fn encode_open_bytes(open: &StoredOpen) -> Vec<u8> {
    // Strings, integers and vectors into memory: cannot fail.
    serde_json::to_vec(&encode_open(open)).unwrap_or_default()
}

/// Decodes what [`encode_open_bytes`] wrote.
pub(crate) fn decode_open_bytes(bytes: &[u8]) -> Result<StoredOpen, RecordError> {
    let open: OpenV1 = serde_json::from_slice(bytes).map_err(|e| json_error(&e))?;
    decode_open(open)
}

#[derive(Serialize, Deserialize)]
struct TicketV1 {
    kind: crate::domain::TicketKind,
    ticket: String,
    fetched_at_ms: i64,
    expires_at_ms: i64,
    serve_until_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct TokenV1 {
    token: String,
    fetched_at_ms: i64,
    expires_at_ms: i64,
    serve_until_ms: i64,
}

/// The bytes stored for `account` (its appid is the key, not part of the value).
pub(crate) fn encode(account: &StoredAccount) -> Vec<u8> {
    let record = RecordV1 {
        v: VERSION,
        mode: account.mode.as_str().to_string(),
        token: account.token.as_ref().map(|t| TokenV1 {
            token: t.token.expose().to_string(),
            fetched_at_ms: t.fetched_at_ms,
            expires_at_ms: t.expires_at_ms,
            serve_until_ms: t.serve_until_ms,
        }),
        pending_fetch_ms: account.pending_fetch_ms,
        calls_day: account.calls_day,
        calls_today: account.calls_today,
        forces: account.forces.clone(),
        tickets: account
            .tickets
            .iter()
            .map(|t| TicketV1 {
                kind: t.kind,
                ticket: t.ticket.expose().to_string(),
                fetched_at_ms: t.fetched_at_ms,
                expires_at_ms: t.expires_at_ms,
                serve_until_ms: t.serve_until_ms,
            })
            .collect(),
        open: account.open.as_ref().map(encode_open),
    };
    // Serializing plain strings, integers and vectors into memory cannot fail.
    serde_json::to_vec(&record).unwrap_or_default()
}

/// Why a stored record could not be decoded, in words that never quote the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    /// The key is not a valid appid.
    #[error("the key is not a valid appid: {0}")]
    BadKey(AppIdError),
    /// The value is not JSON of the record's shape; only the class of the
    /// problem and its position are kept (serde_json's message may quote the value).
    #[error("the record is {class} (line {line}, column {column})")]
    Json {
        class: &'static str,
        line: usize,
        column: usize,
    },
    /// The record has a version this build does not read.
    #[error("record version {found} is not supported by this build (it reads version {supported})", supported = VERSION)]
    Version { found: u32 },
    /// The mode is not one of the two words.
    #[error("the mode is neither \"legacy\" nor \"stable\"")]
    Mode,
    /// An authorizer's component is not a valid appid.
    #[error("the authorizer's component is not a valid appid")]
    Component,
}

/// Decodes the record stored under `key`.
///
/// Errors when the key is not an appid, the value is not a version-1 record
/// or its mode is unknown (see [`RecordError`]).
pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<StoredAccount, RecordError> {
    let appid = AppId::parse(key).map_err(RecordError::BadKey)?;
    let version: Version = serde_json::from_slice(bytes).map_err(|e| json_error(&e))?;
    if version.v != VERSION {
        return Err(RecordError::Version { found: version.v });
    }
    let record: RecordV1 = serde_json::from_slice(bytes).map_err(|e| json_error(&e))?;
    let mode = match record.mode.as_str() {
        "legacy" => Mode::Legacy,
        "stable" => Mode::Stable,
        _ => return Err(RecordError::Mode),
    };
    Ok(StoredAccount {
        appid,
        mode,
        token: record.token.map(|t| StoredToken {
            token: AccessToken::new(t.token),
            fetched_at_ms: t.fetched_at_ms,
            expires_at_ms: t.expires_at_ms,
            serve_until_ms: t.serve_until_ms,
        }),
        pending_fetch_ms: record.pending_fetch_ms,
        calls_day: record.calls_day,
        calls_today: record.calls_today,
        forces: record.forces,
        tickets: record
            .tickets
            .into_iter()
            .map(|t| StoredTicket {
                kind: t.kind,
                ticket: AccessToken::new(t.ticket),
                fetched_at_ms: t.fetched_at_ms,
                expires_at_ms: t.expires_at_ms,
                serve_until_ms: t.serve_until_ms,
            })
            .collect(),
        open: record.open.map(decode_open).transpose()?,
    })
}

/// serde_json messages can quote the offending value (which might be the
/// token), so only the error class and position are kept.
fn json_error(e: &serde_json::Error) -> RecordError {
    let class = match e.classify() {
        serde_json::error::Category::Io => "an I/O error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    RecordError::Json {
        class,
        line: e.line(),
        column: e.column(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> StoredAccount {
        StoredAccount {
            appid: AppId::parse("wx1111111111111111").unwrap(),
            mode: Mode::Legacy,
            token: Some(StoredToken {
                token: AccessToken::new("SECRET-TOKEN-1"),
                fetched_at_ms: 1_700_000_000_000,
                expires_at_ms: 1_700_007_200_000,
                serve_until_ms: 1_700_006_000_000,
            }),
            pending_fetch_ms: Some(1_700_000_500_000),
            calls_day: 19_700,
            calls_today: 3,
            forces: vec![1_700_000_100_000, 1_700_000_200_000],
            tickets: Vec::new(),
            open: None,
        }
    }

    #[test]
    fn an_authorizer_record_round_trips_with_its_refresh_token() {
        let mut a = account();
        a.open = Some(StoredOpen {
            component: Some(AppId::parse("wx9999999999999999").unwrap()),
            authorization: Some(crate::domain::Authorization::NeedsReauth),
            refresh_token: Some(AccessToken::new("refreshtoken@@@0123456789")),
            auth_code: Some(StoredCode {
                code: AccessToken::new("queryauthcode@@@0123456789"),
                expires_at_ms: 1_700_000_600_000,
            }),
            changed_at_ms: 1_700_000_000_100,
            verify_tickets: vec![VerifyTicket {
                ticket: AccessToken::new("ticket@@@0123456789"),
                created_at_ms: 1_700_000_000_000,
                received_at_ms: 1_700_000_000_500,
            }],
        });
        assert_eq!(decode("wx1111111111111111", &encode(&a)).unwrap(), a);
        let open = a.open.clone().unwrap();
        assert_eq!(decode_open_bytes(&encode_open_bytes(&open)).unwrap(), open);
        // Accounts keep writing the record older builds read.
        let plain = serde_json::from_slice::<serde_json::Value>(&encode(&account())).unwrap();
        assert!(plain.get("open").is_none());
    }

    #[test]
    fn a_record_round_trips() {
        let a = account();
        let bytes = encode(&a);
        assert_eq!(decode("wx1111111111111111", &bytes).unwrap(), a);
    }

    #[test]
    fn the_record_carries_version_1_and_the_mode_as_a_word() {
        let v: serde_json::Value = serde_json::from_slice(&encode(&account())).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["mode"], "legacy");
    }

    #[test]
    fn another_version_is_refused() {
        let err = decode("wx1111111111111111", br#"{"v":2,"whatever":true}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 2"), "{err}");
    }

    #[test]
    fn decode_errors_never_quote_the_record() {
        // The token sits where a number is expected: serde_json would quote it.
        let bytes = br#"{"v":1,"mode":"stable","token":null,"pending_fetch_ms":"SECRET-TOKEN-2","calls_day":1,"calls_today":0,"forces":[]}"#;
        let err = decode("wx1111111111111111", bytes).unwrap_err().to_string();
        assert!(!err.contains("SECRET"), "{err}");
        let err = decode("wx1111111111111111", b"\x00\xffgarbage")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid JSON"), "{err}");
    }

    #[test]
    fn a_bad_key_or_mode_is_an_error_not_a_panic() {
        assert!(decode("wx/../x", &encode(&account())).is_err());
        let bytes = br#"{"v":1,"mode":"turbo","token":null,"pending_fetch_ms":null,"calls_day":1,"calls_today":0,"forces":[]}"#;
        assert!(decode("wx1111111111111111", bytes).is_err());
    }
}
