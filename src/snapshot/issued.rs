//! The index of tokens wxtoken handed out: which account a presented token
//! belongs to, in O(1), for the token-injecting proxy (contract §7).
//!
//! Owns [`IssuedTokens`]. Every token an account publishes into its slot is
//! entered here with its serve time (`AccountSlot::publish` is the one
//! writer); the proxy looks a presented token up to learn its account, then
//! injects that account's current token.
//!
//! Invariants:
//! - Keys are SHA-256 digests of tokens, never tokens: the index holds no
//!   secret, and a presented string matches only the token it digests.
//! - It is bounded by serve time: an entry whose serve time has passed is
//!   never answered ([`IssuedTokens::lookup`] says `Expired` for at most
//!   [`SWEEP_EVERY_MS`] more, then forgets it) and is swept away at the next
//!   insertion after [`SWEEP_EVERY_MS`], so it holds at most the tokens
//!   served during one serve time per account, plus a minute's worth.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use parking_lot::RwLock;
use sha2::Digest as _;

use crate::domain::{AccessToken, AppId};

/// How often expired entries are swept (at an insertion, never on a read).
pub const SWEEP_EVERY_MS: i64 = 60_000;

/// Shards, so that insertions (one per refresh) and sweeps never hold up
/// every proxied request at once.
const SHARDS: usize = 16;

/// The digest a token is indexed by.
type Key = [u8; 32];

/// What the index knows of one issued token.
#[derive(Debug, Clone)]
struct Entry {
    appid: AppId,
    serve_until_ms: i64,
}

/// What a presented token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issued {
    /// A token of `appid` still inside its serve time.
    Served(AppId),
    /// A token of `appid` whose serve time has passed (recently).
    Expired(AppId),
    /// Not a token wxtoken handed out (or one long expired).
    Unknown,
}

/// The tokens handed out, by digest. Shared by every slot of a directory.
pub struct IssuedTokens {
    shards: Vec<RwLock<HashMap<Key, Entry, foldhash::fast::RandomState>>>,
    next_sweep_ms: AtomicI64,
}

impl Default for IssuedTokens {
    fn default() -> Self {
        IssuedTokens {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
            next_sweep_ms: AtomicI64::new(i64::MIN),
        }
    }
}

impl std::fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuedTokens({} tokens)", self.len())
    }
}

fn key_of(token: &str) -> Key {
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl IssuedTokens {
    fn shard(&self, key: &Key) -> &RwLock<HashMap<Key, Entry, foldhash::fast::RandomState>> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    /// Records that `token` of `appid` is served until `serve_until_ms`.
    /// The same token entered again keeps the later of its serve times (a
    /// client told the longer one may still present it); at most once every
    /// [`SWEEP_EVERY_MS`] (by `now_ms`) the expired entries are dropped.
    pub fn insert(&self, token: &AccessToken, appid: &AppId, serve_until_ms: i64, now_ms: i64) {
        let key = key_of(token.expose());
        {
            let mut shard = self.shard(&key).write();
            let entry = shard.entry(key).or_insert_with(|| Entry {
                appid: appid.clone(),
                serve_until_ms,
            });
            entry.serve_until_ms = entry.serve_until_ms.max(serve_until_ms);
            if entry.appid != *appid {
                // Two accounts can never be handed the same token by WeChat;
                // should a broken upstream do it, the newer one wins.
                entry.appid = appid.clone();
                entry.serve_until_ms = serve_until_ms;
            }
        }
        self.sweep(now_ms);
    }

    /// What `presented` is at `now_ms`.
    pub fn lookup(&self, presented: &str, now_ms: i64) -> Issued {
        let key = key_of(presented);
        let shard = self.shard(&key).read();
        match shard.get(&key) {
            Some(e) if now_ms < e.serve_until_ms => Issued::Served(e.appid.clone()),
            Some(e) if now_ms < e.serve_until_ms.saturating_add(SWEEP_EVERY_MS) => {
                Issued::Expired(e.appid.clone())
            }
            _ => Issued::Unknown,
        }
    }

    /// Tokens held (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry expired for more than [`SWEEP_EVERY_MS`], when the
    /// last sweep is that old.
    fn sweep(&self, now_ms: i64) {
        let due = self.next_sweep_ms.load(Ordering::Relaxed);
        if now_ms < due
            || self
                .next_sweep_ms
                .compare_exchange(
                    due,
                    now_ms.saturating_add(SWEEP_EVERY_MS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let horizon = now_ms.saturating_sub(SWEEP_EVERY_MS);
        for shard in &self.shards {
            shard.write().retain(|_, e| e.serve_until_ms > horizon);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appid(s: &str) -> AppId {
        AppId::parse(s).expect("an appid")
    }

    #[test]
    fn a_token_is_known_for_its_serve_time_and_forgotten_after() {
        let index = IssuedTokens::default();
        let a = appid("wx1111111111111111");
        let token = AccessToken::new("token-one-0123456789");
        index.insert(&token, &a, 10_000, 0);
        assert_eq!(
            index.lookup("token-one-0123456789", 9_999),
            Issued::Served(a.clone())
        );
        assert_eq!(
            index.lookup("token-one-0123456789", 10_000),
            Issued::Expired(a.clone())
        );
        assert_eq!(index.lookup("token-one-012345678", 0), Issued::Unknown);
        assert_eq!(index.lookup("", 0), Issued::Unknown);
        // Long past its serve time: unknown, and swept at the next insertion.
        let later = 10_000 + SWEEP_EVERY_MS;
        assert_eq!(index.lookup("token-one-0123456789", later), Issued::Unknown);
        index.insert(
            &AccessToken::new("token-two-0123456789"),
            &a,
            later + 5_000,
            later,
        );
        assert_eq!(index.len(), 1, "the expired token was not swept");
    }

    #[test]
    fn the_same_token_keeps_its_longest_serve_time() {
        let index = IssuedTokens::default();
        let a = appid("wx1111111111111111");
        let token = AccessToken::new("token-one-0123456789");
        index.insert(&token, &a, 10_000, 0);
        index.insert(&token, &a, 5_000, 1);
        assert_eq!(index.lookup(token.expose(), 9_000), Issued::Served(a));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn sweeps_are_spaced() {
        let index = IssuedTokens::default();
        let a = appid("wx1111111111111111");
        index.insert(&AccessToken::new("old-token-0123456789"), &a, 1_000, 0);
        // Swept once at the first insertion (nothing to drop); the next sweep
        // is a minute later, whatever expired meanwhile.
        let at = 1_000 + SWEEP_EVERY_MS + 1;
        index.insert(
            &AccessToken::new("new-token-0123456789"),
            &a,
            at + 10,
            SWEEP_EVERY_MS - 1,
        );
        assert_eq!(index.len(), 2);
        index.insert(&AccessToken::new("new-token-0123456789"), &a, at + 10, at);
        assert_eq!(index.len(), 1);
    }
}
