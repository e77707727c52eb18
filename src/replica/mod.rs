//! Several replicas, one refresher: the shared Redis store and per-account
//! refresh leadership.
//!
//! Owns: the key layout ([`Keys`]), the account actors' [`Source`] port and
//! the answers only replicas give ([`source`]), the [`Leader`] source (wraps
//! the WeChat client: lock, re-read, fetch, fenced write, release), the
//! follower task (pub/sub plus polling: hand tokens other replicas fetched to
//! an adopt hook) and the health task (`wxtoken_redis_up`, readiness).
//!
//! Protocol for one refresh of account A by replica R:
//! 1. If the shared token of A differs from the one R holds, take it: no call.
//! 2. `SET P:lock:A <holder> NX PX <ttl>`; if another replica holds it, wait
//!    (polling) until the shared token changes or the lock is free.
//! 3. Holding the lock, re-read the shared token (another replica may just
//!    have refreshed): if it changed, release and take it.
//! 4. Call WeChat; a keep-alive extends the lock (compare-and-`PEXPIRE`)
//!    while the call runs.
//! 5. Write the new token with the fencing script: only if R still holds the
//!    lock and the token is newer than the stored one; it also publishes the
//!    appid on `P:updates`.
//! 6. Release with compare-and-delete.
//!
//! Open Platform accounts (components and authorizers) take the same lock
//! and the same fenced write; besides:
//! - The fenced write of an authorizer's token carries the refresh token
//!   WeChat returned with it, so a replica dying right after the write loses
//!   nothing (`SharedToken::refresh_token`), and a replica that takes the
//!   token from the store ([`Sourced::Shared`]) takes its refresh token too.
//! - Every replica writes its view of the rest (verify tickets, refresh
//!   token, code, authorization) to `P:open:<appid>` as the merge with what
//!   is stored ([`crate::store::StoredOpen::merge`]: the side changed last,
//!   never an empty refresh token, the newest tickets of both), and announces
//!   it on `P:updates`.
//! - The follower hands every account's differing shared state to the hook
//!   ([`Adoption::Open`]: the actor merges it; a revocation stops serving, a
//!   ticket wakes a component waiting for one) and finds the authorizers
//!   other replicas added (`P:authorizers:<component>`, or an update of an
//!   appid not held here): [`Adoption::Discovered`] starts them from the
//!   store, so with their token and no call.
//!
//! Invariants: no replica calls WeChat for an account without holding its
//! lock (an unreachable Redis means no call, [`Coordination`]);
//! a stored token only moves forward; tokens held in memory keep being served
//! while Redis is down (`/readyz` stays 200 and says `"redis": "down"`;
//! `/readyz?strict=1` answers 503).

pub mod source;
mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;

pub use source::{Ask, Coordination, Direct, SharedOrigin, Source, SourceError, Sourced};
pub use store::RedisStore;
use store::{RawKeys, SharedToken, account_keys, assemble, describe};

use crate::clock::Clock;
use crate::config::AccountKind;
use crate::domain::{AccessToken, ApiName, AppId, TicketKind};
use crate::metrics::Metrics;
use crate::snapshot::Directory;
use crate::store::{StoredAccount, StoredOpen, StoredToken};
use crate::wechat::{TicketGrant, TokenSource, UpstreamError};

/// Why the shared store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("store.redis is not a valid Redis URL: {0}")]
    InvalidUrl(String),
    #[error("cannot reach the shared store at {address}: {detail}; start Redis or fix store.redis")]
    Unreachable { address: String, detail: String },
}

/// What the follower found in the shared store that this replica does not
/// have yet.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
// One value per look at the store: not worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Adoption {
    /// A token another replica fetched.
    Token(AppId, StoredToken),
    /// An Open Platform account's state as the shared store holds it (with
    /// the refresh token that came with the shared token), when it differs
    /// from the one held.
    Open(AppId, StoredOpen),
    /// An authorizer of a component configured here that another replica
    /// added (an authorization or an import it received): all the store
    /// holds of it.
    Discovered(StoredAccount),
}

/// Where the follower hands what it found (in production: to the registry,
/// which routes it to the account's actor or starts a discovered authorizer).
pub type AdoptHook = Arc<dyn Fn(Adoption) + Send + Sync>;

/// How long a refresh lock lives unless extended.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(10);
/// How often followers re-read every shared token (the pub/sub fallback).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How often the health task pings Redis.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How often a replica waiting for another's lock looks again.
const WAIT_STEP: Duration = Duration::from_millis(50);

/// The Redis key layout under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// `P:token:<appid>`: the current token (fenced writes only).
    pub fn token(&self, appid: &AppId) -> String {
        format!("{}:token:{appid}", self.prefix)
    }
    /// `P:state:<appid>`: counters and write-ahead intent.
    pub fn state(&self, appid: &AppId) -> String {
        format!("{}:state:{appid}", self.prefix)
    }
    /// `P:lock:<appid>`: the refresh lock; the value is the holder id.
    pub fn lock(&self, appid: &AppId) -> String {
        format!("{}:lock:{appid}", self.prefix)
    }
    /// `P:open:<appid>`: an Open Platform account's state (merged writes).
    pub fn open(&self, appid: &AppId) -> String {
        format!("{}:open:{appid}", self.prefix)
    }
    /// `P:authorizers:<component>`: the appids of a component's authorizers.
    pub fn authorizers(&self, component: &AppId) -> String {
        format!("{}:authorizers:{component}", self.prefix)
    }
    /// `P:accounts`: the set of stored appids.
    pub fn accounts(&self) -> String {
        format!("{}:accounts", self.prefix)
    }
    /// `P:updates`: the pub/sub channel a new token's appid is published on.
    pub fn updates(&self) -> String {
        format!("{}:updates", self.prefix)
    }
}

/// How replicas share Redis.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    pub lock_ttl: Duration,
    pub poll_interval: Duration,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            lock_ttl: DEFAULT_LOCK_TTL,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }
}

/// The connection to the shared Redis and what every part needs of it.
#[derive(Clone)]
pub struct Shared {
    client: redis::Client,
    conn: ConnectionManager,
    keys: Keys,
    /// This process's unique id (lock holder ids start with it).
    replica_id: Arc<str>,
    next_holder: Arc<AtomicU64>,
    up: Arc<AtomicBool>,
    options: ReplicaOptions,
    metrics: Metrics,
    clock: Clock,
    /// `host:port` of Redis, for messages (never the password).
    address: Arc<str>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("address", &self.address)
            .field("prefix", &self.keys.prefix)
            .field("replica", &self.replica_id)
            .finish_non_exhaustive()
    }
}

const FENCED_WRITE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local cur = redis.call('GET', KEYS[2])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and type(c) == 'table' and tonumber(c.fetched_at_ms) and tonumber(c.fetched_at_ms) >= tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[4])
return 1
"#;

const EXTEND: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

impl Shared {
    /// Connects to Redis at `url`. Errors (naming host and port, never the
    /// password) when Redis cannot be reached.
    pub async fn connect(
        url: &secrecy::SecretString,
        prefix: &str,
        options: ReplicaOptions,
        metrics: Metrics,
        clock: Clock,
    ) -> Result<Shared, ReplicaError> {
        let client = redis::Client::open(url.expose_secret())
            .map_err(|e| ReplicaError::InvalidUrl(describe(&e)))?;
        let info = client.get_connection_info();
        let address = format!("{}", info.addr());
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| ReplicaError::Unreachable {
                address: address.clone(),
                detail: describe(&e),
            })?;
        let replica_id: Arc<str> = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        )
        .into();
        metrics.redis_up.set(1);
        Ok(Shared {
            client,
            conn,
            keys: Keys::new(prefix),
            replica_id,
            next_holder: Arc::new(AtomicU64::new(1)),
            up: Arc::new(AtomicBool::new(true)),
            options,
            metrics,
            clock,
            address: address.into(),
        })
    }

    /// The blocking store on the same Redis.
    pub fn store(&self) -> RedisStore {
        RedisStore::new(
            self.client.clone(),
            self.keys.clone(),
            self.address.to_string(),
        )
    }

    /// True while the last health check reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// `host:port` of Redis.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Wraps `inner` so that it is only called under the account's lock.
    pub fn leader(&self, inner: Arc<dyn TokenSource>) -> Leader {
        Leader {
            shared: self.clone(),
            inner,
        }
    }

    async fn read_token(&self, appid: &AppId) -> Result<Option<SharedToken>, String> {
        let mut conn = self.conn.clone();
        let bytes: Option<Vec<u8>> = conn
            .get(self.keys.token(appid))
            .await
            .map_err(|e| describe(&e))?;
        Ok(bytes.as_deref().and_then(SharedToken::decode))
    }

    async fn try_lock(&self, appid: &AppId, holder: &str) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        let ttl = self.options.lock_ttl.as_millis() as u64;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.lock(appid))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl)
            .query_async(&mut conn)
            .await
            .map_err(|e| describe(&e))?;
        Ok(set.is_some())
    }

    async fn extend(&self, appid: &AppId, holder: &str) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        let n: i64 = redis::Script::new(EXTEND)
            .key(self.keys.lock(appid))
            .arg(holder)
            .arg(self.options.lock_ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| describe(&e))?;
        Ok(n == 1)
    }

    async fn release(&self, appid: &AppId, holder: &str) {
        let mut conn = self.conn.clone();
        let result: Result<i64, _> = redis::Script::new(RELEASE)
            .key(self.keys.lock(appid))
            .arg(holder)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = result {
            tracing::warn!(appid = %appid, error = %describe(&e), "could not release the refresh lock; it expires by itself");
        }
    }

    /// The fencing write: 1 written, 0 not newer, -1 the lock is not ours.
    async fn write_token(
        &self,
        appid: &AppId,
        holder: &str,
        token: &SharedToken,
    ) -> Result<i64, String> {
        let mut conn = self.conn.clone();
        redis::Script::new(FENCED_WRITE)
            .key(self.keys.lock(appid))
            .key(self.keys.token(appid))
            .key(self.keys.accounts())
            .arg(holder)
            .arg(token.encode())
            .arg(token.fetched_at_ms)
            .arg(appid.as_str())
            .arg(self.keys.updates())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| describe(&e))
    }

    fn set_up(&self, up: bool) {
        let was = self.up.swap(up, Ordering::SeqCst);
        self.metrics.redis_up.set(i64::from(up));
        if was && !up {
            tracing::error!(redis = %self.address, "the shared store (Redis) is unreachable: serving held tokens while valid, no refresh until it is back");
        } else if !was && up {
            tracing::info!(redis = %self.address, "the shared store (Redis) is reachable again");
        }
    }

    /// Starts the health task (pings, `wxtoken_redis_up`, log on change) and
    /// the follower task (pub/sub with polling fallback; newer tokens of the
    /// accounts in `directory` go to `adopt`) on the current actix runtime.
    /// They end when the runtime stops.
    pub fn spawn_tasks(&self, adopt: AdoptHook, directory: Directory) {
        let health = self.clone();
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_INTERVAL);
            loop {
                tick.tick().await;
                let mut conn = health.conn.clone();
                let ok = redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok();
                health.set_up(ok);
            }
        });
        let follower = self.clone();
        actix_rt::spawn(async move { follower.follow(adopt, directory).await });
    }

    async fn follow(self, adopt: AdoptHook, directory: Directory) {
        let channel = self.keys.updates();
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(&channel).await.is_ok() {
                        // Catch up on what was missed while not subscribed.
                        self.poll_all(&adopt, &directory).await;
                        let mut messages = pubsub.on_message();
                        let mut poll = tokio::time::interval(self.options.poll_interval);
                        poll.tick().await;
                        loop {
                            tokio::select! {
                                msg = messages.next() => match msg {
                                    Some(msg) => {
                                        if let Ok(id) = msg.get_payload::<String>()
                                            && let Ok(appid) = AppId::parse(&id)
                                        {
                                            self.adopt(&adopt, &directory, &appid).await;
                                        }
                                    }
                                    None => break,
                                },
                                _ = poll.tick() => self.poll_all(&adopt, &directory).await,
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %describe(&e), "cannot subscribe to token updates; retrying");
                }
            }
            tokio::time::sleep(HEALTH_INTERVAL).await;
        }
    }

    /// Looks at every account held here, and for authorizers other replicas
    /// added to the components configured here.
    async fn poll_all(&self, adopt: &AdoptHook, directory: &Directory) {
        let mut authorizers: std::collections::HashMap<&AppId, usize> = Default::default();
        let slots = directory.all();
        for slot in &slots {
            match &slot.kind {
                AccountKind::Component => {
                    authorizers.entry(&slot.appid).or_default();
                }
                AccountKind::Authorizer { component } => {
                    *authorizers.entry(component).or_default() += 1;
                }
                _ => {}
            }
            self.adopt(adopt, directory, &slot.appid).await;
        }
        for (component, held) in authorizers {
            if !directory
                .get(component)
                .is_some_and(|s| s.kind == AccountKind::Component)
            {
                continue;
            }
            let key = self.keys.authorizers(component);
            let mut conn = self.conn.clone();
            let Ok(stored) = conn.scard::<_, usize>(&key).await else {
                continue;
            };
            if stored <= held {
                continue;
            }
            let Ok(ids) = conn.smembers::<_, Vec<String>>(&key).await else {
                continue;
            };
            for id in ids {
                if let Ok(appid) = AppId::parse(&id)
                    && directory.get(&appid).is_none()
                {
                    self.adopt(adopt, directory, &appid).await;
                }
            }
        }
    }

    /// Reads what the shared store holds of `appid` and hands `hook` what
    /// differs from what this replica holds: a newer token, a newer Open
    /// Platform state, or a whole authorizer it does not know.
    async fn adopt(&self, hook: &AdoptHook, directory: &Directory, appid: &AppId) {
        let Some(slot) = directory.get(appid) else {
            self.discover(hook, directory, appid).await;
            return;
        };
        let is_open = matches!(
            slot.kind,
            AccountKind::Component | AccountKind::Authorizer { .. }
        );
        let mut conn = self.conn.clone();
        let (token, open): (Option<Vec<u8>>, Option<Vec<u8>>) = if is_open {
            match redis::pipe()
                .get(self.keys.token(appid))
                .get(self.keys.open(appid))
                .query_async(&mut conn)
                .await
            {
                Ok(both) => both,
                Err(_) => return,
            }
        } else {
            match conn.get(self.keys.token(appid)).await {
                Ok(token) => (token, None),
                Err(_) => return,
            }
        };
        let shared = token.as_deref().and_then(SharedToken::decode);
        if is_open {
            let open = open
                .as_deref()
                .and_then(|b| crate::store::record::decode_open_bytes(b).ok());
            let fetched = shared
                .as_ref()
                .map(|t| (t.refresh_token(), t.fetched_at_ms));
            let open = match (open, fetched) {
                (Some(o), Some((rt, at))) => Some(o.with_fetched_refresh_token(rt.as_ref(), at)),
                (Some(o), None) => Some(o),
                (None, Some((Some(rt), at))) => {
                    Some(StoredOpen::default().with_fetched_refresh_token(Some(&rt), at))
                }
                (None, _) => None,
            };
            if let Some(open) = open {
                let held = slot.open().map(|o| (*o).clone()).unwrap_or_default();
                if held.merge(&open) != held {
                    hook(Adoption::Open(appid.clone(), open));
                }
            }
        }
        let Some(shared) = shared else {
            return;
        };
        let held = slot.token();
        if held.is_some_and(|t| {
            t.token.expose() == shared.token || t.fetched_at_ms >= shared.fetched_at_ms
        }) {
            return;
        }
        if shared.expires_at_ms <= self.clock.now_unix_ms() {
            return;
        }
        hook(Adoption::Token(appid.clone(), shared.stored()));
    }

    /// `appid` is not held here: when the shared store knows it as an
    /// authorizer of a component configured here, hands it over whole.
    async fn discover(&self, hook: &AdoptHook, directory: &Directory, appid: &AppId) {
        let mut conn = self.conn.clone();
        let Ok((state, token, open)) = account_keys(&self.keys, appid)
            .query_async::<RawKeys>(&mut conn)
            .await
        else {
            return;
        };
        if open.is_none() {
            return;
        }
        let Some(account) = assemble(
            appid,
            state.as_deref(),
            token.as_deref(),
            open.as_deref(),
            &self.address,
        ) else {
            return;
        };
        let ours = account
            .open
            .as_ref()
            .and_then(|o| o.component.as_ref())
            .and_then(|c| directory.get(c))
            .is_some_and(|c| c.kind == AccountKind::Component);
        if ours {
            hook(Adoption::Discovered(account));
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "wxtoken".to_string())
}

/// A [`TokenSource`] that calls its inner source only while holding the
/// account's refresh lock in Redis (see the module doc for the protocol).
#[derive(Clone)]
pub struct Leader {
    shared: Shared,
    inner: Arc<dyn TokenSource>,
}

impl Leader {
    fn coordination(api: ApiName, detail: String) -> SourceError {
        SourceError::Coordination(Coordination { api, detail })
    }

    /// The shared token, when it is not the one the caller holds.
    fn newer(&self, shared: Option<SharedToken>, ask: &Ask) -> Option<Sourced> {
        let shared = shared?;
        let now = self.shared.clock.now_unix_ms();
        if shared.expires_at_ms - now < 1_000 {
            return None;
        }
        if ask
            .known
            .as_ref()
            .is_some_and(|k| k.expose() == shared.token)
        {
            return None;
        }
        Some(Sourced::Shared(SharedOrigin {
            refresh_token: shared.refresh_token(),
            token: AccessToken::new(shared.token),
            fetched_at_ms: shared.fetched_at_ms,
            expires_at_ms: shared.expires_at_ms,
        }))
    }

    async fn fetch_under_lock(&self, ask: Ask) -> Result<Sourced, SourceError> {
        let api = ask.request.endpoint.api();
        let shared = &self.shared;
        let appid = ask.request.appid.clone();
        let holder = format!(
            "{}:{}",
            shared.replica_id,
            shared.next_holder.fetch_add(1, Ordering::SeqCst)
        );
        // Wait for the lock at most two lock lifetimes: by then a dead
        // holder's lock has expired.
        let give_up =
            tokio::time::Instant::now() + shared.options.lock_ttl * 2 + Duration::from_secs(1);
        loop {
            let current = shared.read_token(&appid).await.map_err(|e| {
                Self::coordination(
                    api,
                    format!("the shared store is unreachable ({e}); no refresh without the lock"),
                )
            })?;
            if let Some(grant) = self.newer(current, &ask) {
                return Ok(grant);
            }
            match shared.try_lock(&appid, &holder).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    return Err(Self::coordination(
                        api,
                        format!(
                            "the shared store is unreachable ({e}); no refresh without the lock"
                        ),
                    ));
                }
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(Self::coordination(
                    api,
                    "another replica has held this account's refresh lock too long".to_string(),
                ));
            }
            tokio::time::sleep(WAIT_STEP).await;
        }

        // Holding the lock: another replica may just have refreshed.
        match shared.read_token(&appid).await {
            Ok(current) => {
                if let Some(grant) = self.newer(current, &ask) {
                    shared.release(&appid, &holder).await;
                    return Ok(grant);
                }
            }
            Err(e) => {
                shared.release(&appid, &holder).await;
                return Err(Self::coordination(
                    api,
                    format!("the shared store is unreachable ({e})"),
                ));
            }
        }

        let keeper = {
            let shared = shared.clone();
            let appid = appid.clone();
            let holder = holder.clone();
            let every = shared.options.lock_ttl / 3;
            actix_rt::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if !matches!(shared.extend(&appid, &holder).await, Ok(true)) {
                        tracing::warn!(appid = %appid, "lost the refresh lock while fetching");
                        return;
                    }
                }
            })
        };
        let started = shared.clock.now_unix_ms();
        let result = self.inner.fetch(ask.request.clone()).await;
        keeper.abort();
        if let Ok(grant) = &result {
            let token = SharedToken {
                token: grant.access_token.expose().to_string(),
                mode: shared_mode(&ask.request.endpoint).to_string(),
                fetched_at_ms: started,
                expires_at_ms: started + grant.expires_in.as_millis() as i64,
                refresh_token: grant
                    .refresh_token
                    .as_ref()
                    .filter(|t| !t.expose().is_empty())
                    .map(|t| t.expose().to_string()),
            };
            match shared.write_token(&appid, &holder, &token).await {
                Ok(1) | Ok(0) => {}
                Ok(_) => {
                    tracing::warn!(appid = %appid, "the refresh lock expired before the new token was written; another replica may refresh too")
                }
                Err(e) => {
                    tracing::error!(appid = %appid, error = %e, "could not write the new token to the shared store")
                }
            }
        }
        shared.release(&appid, &holder).await;
        result.map(Sourced::Fetched).map_err(SourceError::Upstream)
    }
}

/// The `mode` field of a shared token record (kept for replicas of older
/// versions, which read it): `legacy` for rotating tokens, else `stable`.
fn shared_mode(endpoint: &crate::wechat::Endpoint) -> &'static str {
    if endpoint.rotates_on_fetch() {
        "legacy"
    } else {
        "stable"
    }
}

impl Source for Leader {
    fn fetch(&self, ask: Ask) -> BoxFuture<'static, Result<Sourced, SourceError>> {
        let this = self.clone();
        Box::pin(async move { this.fetch_under_lock(ask).await })
    }

    /// Tickets are fetched by each replica itself: WeChat hands out the
    /// current ticket of a live token, so replicas cannot break each other's.
    fn fetch_ticket(
        &self,
        token: AccessToken,
        kind: TicketKind,
    ) -> BoxFuture<'static, Result<TicketGrant, UpstreamError>> {
        self.inner.fetch_ticket(token, kind)
    }

    /// Quotas are read by each replica itself: reading changes nothing.
    fn api_quota(
        &self,
        token: AccessToken,
        of: crate::domain::ApiName,
    ) -> BoxFuture<'static, Result<crate::wechat::ApiQuota, UpstreamError>> {
        self.inner.api_quota(token, of)
    }

    fn has_spare_capacity(&self) -> bool {
        self.inner.has_spare_capacity()
    }
}
