//! The token engine without HTTP: configuration → store → registry →
//! snapshot. [`Engine::start`] is the one wiring that the server
//! (`startup.rs`), the engine tests and the benchmarks all use.
//!
//! Owns: choosing the token source (WeChat from `upstream:`, or the one
//! given), limiting it to `upstream.max_concurrency` calls in flight
//! ([`Limited`], whichever source it is), wrapping it in the replicas' lock
//! with `store.redis`; opening the store
//! and restoring from it, the refresh [`Policy`], starting the registry with
//! every configured account, and the replica tasks.
//!
//! Invariants: the directory holds every configured account when `start`
//! returns; stored accounts that are no longer configured are removed from
//! the store; [`Engine::stop`] stops every account actor before the store is
//! flushed and closed.
//!
//! Must run inside an actix system: the registry is an actor.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, MailboxError};

use crate::account::Deps;
use crate::account::plan::{Policy, WECHAT_GRACE, late_answer_bound};
use crate::clock::Clock;
use crate::config::{AccountConfig, Config, RefreshConfig, StoreConfig, UpstreamConfig};
use crate::domain::AppId;
use crate::metrics::Metrics;
use crate::registry::{Apply, ApplySummary, Registry, StopAll};
use crate::replica::{AdoptHook, Direct, ReplicaError, ReplicaOptions, Shared, Source};
use crate::snapshot::Directory;
use crate::store::{RedbStore, Storage, StoreError, StoreWriter, move_aside};
use crate::wechat::{ClientBuildError, Limited, TokenSource, WechatClient};

/// The parts of the configuration the engine runs on.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub accounts: Vec<AccountConfig>,
    pub refresh: RefreshConfig,
    pub upstream: UpstreamConfig,
    pub store: StoreConfig,
}

impl EngineConfig {
    /// `accounts` with every other setting at its default.
    pub fn new(accounts: Vec<AccountConfig>) -> EngineConfig {
        EngineConfig {
            accounts,
            refresh: RefreshConfig::default(),
            upstream: UpstreamConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

impl From<&Config> for EngineConfig {
    fn from(config: &Config) -> EngineConfig {
        EngineConfig {
            accounts: config.registry_accounts(),
            refresh: config.refresh.clone(),
            upstream: config.upstream.clone(),
            store: config.store.clone(),
        }
    }
}

/// How the engine is built beyond its configuration. The defaults are
/// production's: the system clock, WeChat from `upstream:`, WeChat's grace,
/// the redb file at `store.path`, a background store writer.
#[derive(Clone)]
pub struct EngineOptions {
    /// The one clock of the process.
    pub clock: Clock,
    /// Where tokens come from; `None` builds a [`WechatClient`] from
    /// `upstream:`. Either way at most `upstream.max_concurrency` calls are in flight.
    pub upstream: Option<Arc<dyn TokenSource>>,
    /// How long WeChat keeps a superseded token alive ([`WECHAT_GRACE`]).
    pub grace: Duration,
    /// The token store; `None` opens the redb file at `store.path` (or
    /// Redis, with `store.redis`).
    pub store: Option<Arc<dyn Storage>>,
    /// When the store file is unreadable or corrupt, move it aside
    /// (`PATH.broken-<unix>`) and start with an empty one instead of failing.
    pub reset_store: bool,
    /// Lock and polling timings of replicas sharing Redis (`store.redis`).
    pub replica: ReplicaOptions,
    /// Write to the store on the caller's task instead of a background
    /// writer (tests on tokio's paused clock).
    pub inline_store: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            clock: Clock::system(),
            upstream: None,
            grace: WECHAT_GRACE,
            store: None,
            reset_store: false,
            replica: ReplicaOptions::default(),
            inline_store: false,
        }
    }
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("clock", &self.clock)
            .field("upstream", &self.upstream.as_ref().map(|_| "custom"))
            .field("grace", &self.grace)
            .field("store", &self.store.as_ref().map(|s| s.describe()))
            .field("reset_store", &self.reset_store)
            .field("replica", &self.replica)
            .field("inline_store", &self.inline_store)
            .finish()
    }
}

/// Why the engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("could not set up the WeChat client")]
    WechatClient(#[source] ClientBuildError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not move the token store {path} aside")]
    MoveAside {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the {what}")]
    Load {
        what: String,
        #[source]
        source: StoreError,
    },
    #[error("the account registry did not start")]
    Registry(#[source] MailboxError),
}

/// A running engine. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    /// The published account slots (the read model).
    pub directory: Directory,
    /// The registry actor (refreshes, reloads).
    pub registry: Addr<Registry>,
    /// Every metric of the process.
    pub metrics: Metrics,
    /// Writes account state to the token store.
    pub store: StoreWriter,
    /// The shared Redis of replicas (`store.redis`), if configured.
    pub shared: Option<Shared>,
    /// The one clock.
    pub clock: Clock,
    /// What the first [`Apply`] started.
    pub started: ApplySummary,
    /// How many accounts the store held at start.
    pub restored: usize,
    /// How long reading the store took at start.
    pub load_time: Duration,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the store, restores what it holds, and starts the registry with
    /// every account of `config`; with `store.redis`, also connects to Redis
    /// and starts the replica tasks.
    ///
    /// Errors when the WeChat client cannot be set up, Redis cannot be
    /// reached, the store cannot be opened or read (unless `reset_store`
    /// allows moving a corrupt one aside), or the registry does not start.
    pub async fn start(
        config: &EngineConfig,
        options: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let metrics = Metrics::new();
        let source: Arc<dyn TokenSource> = match options.upstream {
            Some(upstream) => upstream,
            None => Arc::new(
                WechatClient::new(&config.upstream, metrics.clone())
                    .map_err(EngineError::WechatClient)?,
            ),
        };
        // The one limit on calls in flight, for every source alike.
        let wechat: Arc<dyn TokenSource> =
            Arc::new(Limited::new(source, config.upstream.max_concurrency));
        let shared = match &config.store.redis {
            Some(url) => Some(
                Shared::connect(
                    url,
                    &config.store.redis_prefix,
                    options.replica.clone(),
                    metrics.clone(),
                    options.clock.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let upstream: Arc<dyn Source> = match &shared {
            Some(shared) => Arc::new(shared.leader(wechat.clone())),
            None => Arc::new(Direct(wechat.clone())),
        };
        let storage: Arc<dyn Storage> = match (options.store, &shared) {
            (Some(storage), _) => storage,
            (None, Some(shared)) => Arc::new(shared.store()),
            (None, None) => Arc::new(open_store(&config.store, options.reset_store)?),
        };
        let reading = Instant::now();
        let stored = storage.load_all().map_err(|source| EngineError::Load {
            what: storage.describe(),
            source,
        })?;
        let load_time = reading.elapsed();
        let store = if options.inline_store {
            StoreWriter::inline(storage.clone(), metrics.clone())
        } else {
            StoreWriter::start(storage.clone(), metrics.clone())
        };
        let configured: HashSet<&AppId> = config.accounts.iter().map(|a| &a.appid).collect();
        // An authorizer's record holds its refresh token: never deleted, even
        // when its component is no longer configured.
        let authorizer = |s: &&crate::store::StoredAccount| {
            s.open.as_ref().is_some_and(|o| o.component.is_some())
        };
        for gone in stored
            .iter()
            .filter(|s| !configured.contains(&s.appid) && !authorizer(s))
        {
            tracing::info!(appid = %gone.appid, "removing a stored account that is no longer configured");
            store.remove_later(gone.appid.clone());
        }
        let restorable = stored
            .iter()
            .filter(|s| {
                s.token
                    .as_ref()
                    .is_some_and(|t| t.expires_at_ms > options.clock.now_unix_ms())
            })
            .count();
        tracing::info!(
            store = %storage.describe(),
            stored = stored.len(),
            with_live_token = restorable,
            read_ms = load_time.as_millis() as u64,
            "token store opened"
        );
        let restored = stored.len();
        let directory = Directory::default();
        let mut policy = Policy::new(config.refresh.clone());
        policy.grace = options.grace;
        policy.late_answer_bound = late_answer_bound(config.upstream.timeout);
        let deps = Deps {
            upstream,
            policy,
            clock: options.clock.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            directory: directory.clone(),
            hub: None,
            fill: Arc::new(tokio::sync::Semaphore::new(
                config.upstream.max_concurrency.max(1) * crate::account::actor::FILL_PER_SLOT,
            )),
        };
        let registry = Registry::new(directory.clone(), deps)
            .with_restored(stored)
            .with_open_calls(wechat.clone())
            .start();
        let started = registry
            .send(Apply(config.accounts.clone()))
            .await
            .map_err(EngineError::Registry)?;
        if let Some(shared) = &shared {
            let to_registry = registry.clone();
            let adopt: AdoptHook = Arc::new(move |found| to_registry.do_send(found));
            shared.spawn_tasks(adopt, directory.clone());
            tracing::info!(redis = %shared.address(), prefix = %config.store.redis_prefix, "sharing tokens and refresh leadership through Redis");
        }
        Ok(Engine {
            directory,
            registry,
            metrics,
            store,
            shared,
            clock: options.clock,
            started,
            restored,
            load_time,
        })
    }

    /// Stops every account actor, then flushes and closes the store.
    pub async fn stop(&self) {
        let _ = self.registry.send(StopAll).await;
        self.store.close().await;
    }
}

/// Opens the redb store at `store.path`; with `reset`, a corrupt file is
/// moved aside first and an empty store created.
fn open_store(config: &StoreConfig, reset: bool) -> Result<RedbStore, EngineError> {
    let path = &config.path;
    match RedbStore::open(path) {
        Ok(store) => Ok(store),
        Err(StoreError::Corrupt { .. }) if reset => {
            let moved = move_aside(path).map_err(|source| EngineError::MoveAside {
                path: path.display().to_string(),
                source,
            })?;
            tracing::warn!(
                store = %path.display(),
                moved_to = %moved.display(),
                "the token store was unreadable; it was moved aside and an empty one started"
            );
            Ok(RedbStore::open(path)?)
        }
        Err(e) => Err(e.into()),
    }
}
