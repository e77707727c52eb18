//! The stored form of a [`StoredAccount`]: a versioned JSON record (see the
//! layout in the module doc of [`crate::store`]).
//!
//! Invariant: a decode error never carries text from the record itself, so a
//! token value cannot leak into a warning through it: [`RecordError`] holds
//! only the key's problem, a JSON error's class and position, a version
//! number or nothing.

use serde::{Deserialize, Serialize};

use super::{StoredAccount, StoredTicket, StoredToken};
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
        }
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
