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
//! - `P:accounts`: the set of appids with a token or a state.
//!
//! Invariant: this store never writes a token key, so a replica that does not
//! hold the lock can never overwrite a newer token with an older one.

use parking_lot::Mutex;
use redis::Commands;
use serde::{Deserialize, Serialize};

use crate::domain::{AccessToken, AppId, Mode};
use crate::store::{Storage, StoreError, StoredAccount, StoredToken, record};

use super::Keys;

/// The shared token of one account, as stored in `P:token:<appid>`.
/// Deliberately not `Debug`: it holds the token.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct SharedToken {
    pub(crate) token: String,
    pub(crate) mode: String,
    pub(crate) fetched_at_ms: i64,
    pub(crate) expires_at_ms: i64,
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
            let (state, token): (Option<Vec<u8>>, Option<Vec<u8>>) = self
                .with_conn(|c| {
                    redis::pipe()
                        .get(self.keys.state(&appid))
                        .get(self.keys.token(&appid))
                        .query(c)
                })
                .map_err(read)?;
            let token = token.as_deref().and_then(SharedToken::decode);
            let mut account = match state.as_deref().map(|b| record::decode(appid.as_str(), b)) {
                Some(Ok(a)) => a,
                Some(Err(why)) => {
                    tracing::warn!(appid = %appid, store = %self.describe(), "skipping an undecodable account state: {why}");
                    continue;
                }
                None => match &token {
                    Some(t) => StoredAccount {
                        appid: appid.clone(),
                        mode: t.mode(),
                        token: None,
                        pending_fetch_ms: None,
                        calls_day: 0,
                        calls_today: 0,
                        forces: Vec::new(),
                        tickets: Vec::new(),
                        open: None,
                    },
                    None => continue,
                },
            };
            account.token = token.map(|t| t.stored());
            out.push(account);
        }
        Ok(out)
    }

    fn put(&self, account: &StoredAccount) -> Result<(), StoreError> {
        let state = StoredAccount {
            token: None,
            ..account.clone()
        };
        let bytes = record::encode(&state);
        self.with_conn(|c| {
            redis::pipe()
                .set(self.keys.state(&account.appid), &bytes)
                .ignore()
                .sadd(self.keys.accounts(), account.appid.as_str())
                .ignore()
                .query::<()>(c)
        })
        .map_err(|reason| StoreError::Write {
            store: self.describe(),
            appid: account.appid.to_string(),
            reason,
        })
    }

    fn remove(&self, appid: &AppId) -> Result<(), StoreError> {
        self.with_conn(|c| {
            redis::pipe()
                .del(self.keys.state(appid))
                .ignore()
                .del(self.keys.token(appid))
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
