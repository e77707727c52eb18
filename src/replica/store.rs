//! [`RedisStore`]: the [`Storage`] of replicas sharing one Redis.
//!
//! Keys (under the configured prefix `P`):
//! - `P:token:<appid>`: the account's current token as JSON
//!   `{"token","mode","fetched_at_ms","expires_at_ms"}`; written ONLY by the
//!   replica holding the account's refresh lock, through the fencing script in
//!   [`super`].
//! - `P:state:<appid>`: the rest of the account's state (the store's record
//!   format of [`crate::store`] without its token): daily call counter, force
//!   log, write-ahead intent. Written by any replica, last writer wins.
//! - `P:open:<appid>`: an Open Platform account's state (the record's `open`
//!   member: verify tickets, refresh token, authorization), written by any
//!   replica as the merge of what is stored and what it writes
//!   ([`StoredOpen::merge`], under `WATCH`), then announced on `P:updates`.
//! - `P:authorizers:<component>`: the set of a component's authorizers, so a
//!   replica finds the ones another replica added.
//! - `P:accounts`: the set of appids with a token or a state.
//!
//! Invariants: this store never writes a token key, so a replica that does
//! not hold the lock can never overwrite a newer token with an older one; an
//! Open Platform state only moves forward (no replica's older view takes back
//! a refresh token, a revocation or a ticket another stored).

use parking_lot::Mutex;
use redis::Commands;
use serde::{Deserialize, Serialize};

use crate::domain::{AccessToken, AppId, Mode};
use crate::store::{Storage, StoreError, StoredAccount, StoredOpen, StoredToken, record};

use super::Keys;

/// The shared token of one account, as stored in `P:token:<appid>`.
/// Deliberately not `Debug`: it holds the token.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct SharedToken {
    pub(crate) token: String,
    pub(crate) mode: String,
    pub(crate) fetched_at_ms: i64,
    pub(crate) expires_at_ms: i64,
    /// An authorizer's refresh token WeChat returned with this token: in the
    /// same fenced write, so a replica dying right after it loses nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) refresh_token: Option<String>,
}

impl SharedToken {
    pub(crate) fn decode(bytes: &[u8]) -> Option<SharedToken> {
        serde_json::from_slice(bytes).ok()
    }

    pub(crate) fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub(crate) fn stored(&self) -> StoredToken {
        StoredToken {
            token: AccessToken::new(self.token.clone()),
            fetched_at_ms: self.fetched_at_ms,
            expires_at_ms: self.expires_at_ms,
            // Each replica plans its own serve time; the actor recomputes it.
            serve_until_ms: self.expires_at_ms,
        }
    }

    /// The refresh token that came with this token, if any.
    pub(crate) fn refresh_token(&self) -> Option<AccessToken> {
        self.refresh_token.clone().map(AccessToken::new)
    }

    pub(crate) fn mode(&self) -> Mode {
        if self.mode == "legacy" {
            Mode::Legacy
        } else {
            Mode::Stable
        }
    }
}

/// The Redis-backed store (blocking; used from the store writer thread and at start).
pub struct RedisStore {
    client: redis::Client,
    keys: Keys,
    conn: Mutex<Option<redis::Connection>>,
    /// `host:port`, never the password.
    address: String,
}

impl RedisStore {
    pub(crate) fn new(client: redis::Client, keys: Keys, address: String) -> RedisStore {
        RedisStore {
            client,
            keys,
            conn: Mutex::new(None),
            address,
        }
    }

    /// Runs `f` on a live connection, reconnecting once if needed.
    fn with_conn<T>(
        &self,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let mut guard = self.conn.lock();
        for _ in 0..2 {
            if guard.is_none() {
                match self
                    .client
                    .get_connection_with_timeout(std::time::Duration::from_secs(1))
                {
                    Ok(c) => {
                        let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                        let _ = c.set_write_timeout(Some(std::time::Duration::from_secs(2)));
                        *guard = Some(c);
                    }
                    Err(e) => return Err(describe(&e)),
                }
            }
            if let Some(conn) = guard.as_mut() {
                match f(conn) {
                    Ok(v) => return Ok(v),
                    Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                        *guard = None;
                    }
                    Err(e) => return Err(describe(&e)),
                }
            }
        }
        Err("the connection to Redis broke".to_string())
    }
}

impl RedisStore {
    /// Stores the merge of the stored Open Platform state of `appid` and
    /// `open` (optimistically: `WATCH`, read, merge, `MULTI`/`EXEC`, again if
    /// another replica wrote meanwhile); a change is announced on `P:updates`.
    fn merge_open(&self, appid: &AppId, open: &StoredOpen) -> Result<(), String> {
        let key = self.keys.open(appid);
        self.with_conn(|c| {
            redis::transaction(c, &[&key], |c, pipe| {
                let stored: Option<Vec<u8>> = c.get(&key)?;
                let stored = stored
                    .as_deref()
                    .and_then(|b| record::decode_open_bytes(b).ok());
                let merged = match &stored {
                    Some(s) => s.merge(open),
                    None => open.clone(),
                };
                if stored.as_ref() == Some(&merged) {
                    return Ok(Some(()));
                }
                pipe.set(&key, record::encode_open_bytes(&merged)).ignore();
                if let Some(component) = &merged.component {
                    pipe.sadd(self.keys.authorizers(component), appid.as_str())
                        .ignore();
                }
                pipe.publish(self.keys.updates(), appid.as_str()).ignore();
                pipe.query(c)
            })
        })
    }
}

/// The raw values of an account's state, token and Open Platform keys.
pub(crate) type RawKeys = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

/// The pipeline that reads an account's [`RawKeys`].
pub(crate) fn account_keys(keys: &Keys, appid: &AppId) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.get(keys.state(appid))
        .get(keys.token(appid))
        .get(keys.open(appid));
    pipe
}

/// One account from its three keys: the state record, the shared token and
/// the Open Platform state (merged with the state record's, which older
/// versions wrote, and with the refresh token that came with the token).
/// `None` when there is nothing, or the state does not decode (warned).
pub(crate) fn assemble(
    appid: &AppId,
    state: Option<&[u8]>,
    token: Option<&[u8]>,
    open: Option<&[u8]>,
    store: &str,
) -> Option<StoredAccount> {
    let token = token.and_then(SharedToken::decode);
    let open = match open.map(record::decode_open_bytes) {
        Some(Ok(open)) => Some(open),
        Some(Err(why)) => {
            tracing::warn!(appid = %appid, store = %store, "ignoring an undecodable Open Platform state: {why}");
            None
        }
        None => None,
    };
    let mut account = match state.map(|b| record::decode(appid.as_str(), b)) {
        Some(Ok(a)) => a,
        Some(Err(why)) => {
            tracing::warn!(appid = %appid, store = %store, "skipping an undecodable account state: {why}");
            return None;
        }
        None if token.is_none() && open.is_none() => return None,
        None => StoredAccount {
            appid: appid.clone(),
            mode: token.as_ref().map_or(Mode::Legacy, SharedToken::mode),
            token: None,
            pending_fetch_ms: None,
            calls_day: 0,
            calls_today: 0,
            forces: Vec::new(),
            tickets: Vec::new(),
            open: None,
        },
    };
    let open = match (account.open.take(), open) {
        (Some(a), Some(b)) => Some(a.merge(&b)),
        (a, b) => a.or(b),
    };
    account.open = open.map(|o| match &token {
        Some(t) => o.with_fetched_refresh_token(t.refresh_token().as_ref(), t.fetched_at_ms),
        None => o,
    });
    account.token = token.map(|t| t.stored());
    Some(account)
}

/// A Redis error in words, without the URL (it may carry a password).
pub(crate) fn describe(e: &redis::RedisError) -> String {
    format!("{:?}: {}", e.kind(), e.detail().unwrap_or("no detail"))
}

impl Storage for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn describe(&self) -> String {
        format!(
            "Redis store at {} (prefix {})",
            self.address,
            self.keys.prefix()
        )
    }

    fn load_all(&self) -> Result<Vec<StoredAccount>, StoreError> {
        let read = |reason: String| StoreError::Read {
            store: self.describe(),
            reason,
        };
        let mut ids: Vec<String> = self
            .with_conn(|c| c.smembers(self.keys.accounts()))
            .map_err(read)?;
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let Ok(appid) = AppId::parse(&id) else {
                tracing::warn!(store = %self.describe(), "skipping a stored account with an invalid appid");
                continue;
            };
            let (state, token, open): RawKeys = self
                .with_conn(|c| account_keys(&self.keys, &appid).query(c))
                .map_err(read)?;
            if let Some(account) = assemble(
                &appid,
                state.as_deref(),
                token.as_deref(),
                open.as_deref(),
                &self.describe(),
            ) {
                out.push(account);
            }
        }
        Ok(out)
    }

    fn put(&self, account: &StoredAccount) -> Result<(), StoreError> {
        let state = StoredAccount {
            token: None,
            open: None,
            ..account.clone()
        };
        let bytes = record::encode(&state);
        let write = |reason| StoreError::Write {
            store: self.describe(),
            appid: account.appid.to_string(),
            reason,
        };
        self.with_conn(|c| {
            redis::pipe()
                .set(self.keys.state(&account.appid), &bytes)
                .ignore()
                .sadd(self.keys.accounts(), account.appid.as_str())
                .ignore()
                .query::<()>(c)
        })
        .map_err(write)?;
        match &account.open {
            Some(open) => self.merge_open(&account.appid, open).map_err(write),
            None => Ok(()),
        }
    }

    fn remove(&self, appid: &AppId) -> Result<(), StoreError> {
        self.with_conn(|c| {
            redis::pipe()
                .del(self.keys.state(appid))
                .ignore()
                .del(self.keys.token(appid))
                .ignore()
                .del(self.keys.open(appid))
                .ignore()
                .srem(self.keys.accounts(), appid.as_str())
                .ignore()
                .query::<()>(c)
        })
        .map_err(|reason| StoreError::Write {
            store: self.describe(),
            appid: appid.to_string(),
            reason,
        })
    }
}
