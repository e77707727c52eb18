//! Application wiring: from a validated [`Config`] to a running server.
//!
//! Owns [`Application`] (bind the listener, create the metrics, the WeChat
//! client, the registry actor and its accounts, and the actix-web server) and
//! [`AppState`], the shared read-only view every request handler gets.
//!
//! Invariants: nothing fetches a token before the listener is bound, so a busy
//! port fails fast without touching WeChat; the directory holds every
//! configured account before the first request is served; SIGINT and SIGTERM
//! both stop the server gracefully (no new connections, in-flight requests
//! finished); when the server stops, every account actor is told to stop and
//! the store is flushed.
//!
//! Must run inside an actix system (`#[actix_web::main]`,
//! `actix_web::rt::System`, `#[actix_web::test]`): the registry is an actor.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use arc_swap::ArcSwap;

use crate::account::Deps;
use crate::account::schedule::{Policy, WECHAT_GRACE, late_answer_bound};
use crate::api::{self, Auth, HttpMetrics};
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::{Apply, Directory, Registry, StopAll};
use crate::reload::{ReloadSource, Reloader};
use crate::replica::{ReplicaOptions, Shared};
use crate::store::{RedbStore, Storage, StoreError, StoreWriter, move_aside};
use crate::wechat::{TokenSource, WechatClient};

/// The most HTTP workers started by default: token reads take microseconds,
/// so a few threads saturate a network card.
pub const DEFAULT_MAX_WORKERS: usize = 4;

/// How the application is built, beyond the configuration. The defaults are
/// production's: the system clock, WeChat from `upstream:`, WeChat's grace.
#[derive(Clone)]
pub struct BuildOptions {
    /// The one clock of the process.
    pub clock: Clock,
    /// Where tokens come from; `None` builds a [`WechatClient`] from `config.upstream`.
    pub upstream: Option<Arc<dyn TokenSource>>,
    /// How long WeChat keeps a superseded token alive ([`WECHAT_GRACE`]).
    pub grace: Duration,
    /// HTTP worker threads; `None` is min(available cores, [`DEFAULT_MAX_WORKERS`]).
    pub workers: Option<usize>,
    /// Where `/v1/admin/reload` (and SIGHUP, and the file watch, when set up)
    /// re-read the configuration; `None` disables reloading.
    pub reload: Option<ReloadSource>,
    /// The token store; `None` opens the redb file at `store.path`.
    pub store: Option<Arc<dyn Storage>>,
    /// When the store file is unreadable or corrupt, move it aside
    /// (`PATH.broken-<unix>`) and start with an empty one instead of failing.
    pub reset_store: bool,
    /// Lock and polling timings of replicas sharing Redis (`store.redis`).
    pub replica: ReplicaOptions,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            clock: Clock::system(),
            upstream: None,
            grace: WECHAT_GRACE,
            workers: None,
            reload: None,
            store: None,
            reset_store: false,
            replica: ReplicaOptions::default(),
        }
    }
}

impl std::fmt::Debug for BuildOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("clock", &self.clock)
            .field("upstream", &self.upstream.as_ref().map(|_| "custom"))
            .field("grace", &self.grace)
            .field("workers", &self.workers)
            .field("reload", &self.reload)
            .field("store", &self.store.as_ref().map(|s| s.describe()))
            .field("reset_store", &self.reset_store)
            .finish()
    }
}

/// What every request handler shares: the published snapshots and the
/// registry's address. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The account slots the read path loads tokens from.
    pub directory: Directory,
    /// The registry actor, for refreshes and reloads.
    pub registry: Addr<Registry>,
    /// The API clients; swapped whole when the configuration is reloaded.
    pub auth: Arc<ArcSwap<Auth>>,
    /// Every metric of the process.
    pub metrics: Metrics,
    /// The one clock.
    pub clock: Clock,
    /// Re-reads the configuration; `None` when the server was not started from a file.
    pub reloader: Option<Reloader>,
    /// Writes account state to the token store.
    pub store: StoreWriter,
    /// The shared Redis of replicas (`store.redis`), if configured.
    pub shared: Option<Shared>,
    /// Set for good the first time `/readyz` sees every enabled account past
    /// its first token fetch; from then on the load-balancer check answers
    /// 200, whatever accounts fail or are added later.
    pub tokens_loaded: Arc<AtomicBool>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

/// A built, not yet awaited, wxtoken server.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    state: AppState,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds `config.listen` (port 0 picks a free port), starts the registry
    /// with every configured account, and builds the HTTP server. Requests are
    /// served once [`Application::run_until_stopped`] is awaited (or spawned).
    ///
    /// Errors when the address cannot be bound (the message names it), when
    /// the WeChat client cannot be set up, or when the registry does not start.
    pub async fn build(config: Config, options: BuildOptions) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("could not listen on {}", config.listen))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("could not read the address bound for {}", config.listen))?;

        let metrics = Metrics::new();
        let upstream: Arc<dyn TokenSource> = match options.upstream {
            Some(upstream) => upstream,
            None => Arc::new(
                WechatClient::new(&config.upstream, metrics.clone())
                    .context("could not set up the WeChat client")?,
            ),
        };
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
        let upstream: Arc<dyn TokenSource> = match &shared {
            Some(shared) => Arc::new(shared.leader(upstream)),
            None => upstream,
        };
        let storage: Arc<dyn Storage> = match (options.store, &shared) {
            (Some(storage), _) => storage,
            (None, Some(shared)) => Arc::new(shared.store()),
            (None, None) => Arc::new(open_store(&config, options.reset_store)?),
        };
        let stored = storage
            .load_all()
            .with_context(|| format!("could not read the {}", storage.describe()))?;
        let store = StoreWriter::start(storage.clone(), metrics.clone());
        for gone in stored
            .iter()
            .filter(|s| !config.accounts.iter().any(|a| a.appid == s.appid))
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
            "token store opened"
        );
        let mut policy = Policy::new(config.refresh.clone());
        policy.grace = options.grace;
        policy.late_answer_bound = late_answer_bound(config.upstream.timeout);
        let deps = Deps {
            upstream,
            policy,
            clock: options.clock.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
        };

        if config.clients.is_empty() {
            tracing::warn!(listen = %addr, "no clients configured: API open to loopback callers only");
        }
        let auth = Arc::new(ArcSwap::from_pointee(Auth::new(&config.clients)));

        let directory = Directory::default();
        let registry = Registry::new(directory.clone(), deps)
            .with_restored(stored)
            .start();
        let summary = registry
            .send(Apply(config.accounts.clone()))
            .await
            .context("the account registry did not start")?;
        if let Some(shared) = &shared {
            shared.spawn_tasks(registry.clone(), directory.clone());
            tracing::info!(redis = %shared.address(), prefix = %config.store.redis_prefix, "sharing tokens and refresh leadership through Redis");
        }
        let reloader = options.reload.map(|source| {
            Reloader::new(
                source,
                config.clone(),
                registry.clone(),
                auth.clone(),
                metrics.clone(),
            )
        });
        tracing::info!(accounts = summary.added.len(), listen = %addr, "starting wxtoken");

        let state = AppState {
            directory,
            registry,
            auth,
            metrics,
            clock: options.clock,
            reloader,
            store,
            shared,
            tokens_loaded: Arc::new(AtomicBool::new(false)),
        };
        let workers = options.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(DEFAULT_MAX_WORKERS)
        });
        let data = web::Data::new(state.clone());
        let http_metrics = state.metrics.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .wrap(HttpMetrics::new(&http_metrics))
                .configure(api::configure)
        })
        .workers(workers.max(1))
        // actix-web's own handling treats SIGINT as a forced stop that drops
        // requests in flight; Ctrl-C must be as gentle as SIGTERM.
        .shutdown_signal(stop_signal())
        .listen(listener)
        .with_context(|| format!("could not serve on {addr}"))?
        .run();

        Ok(Application {
            addr,
            server,
            state,
        })
    }

    /// The address the server listens on (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state shared with the request handlers.
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// A handle that stops the server (gracefully or not) from elsewhere.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped (through [`Application::handle`] or
    /// SIGINT/SIGTERM, which finish in-flight requests first), then stops every
    /// account actor.
    ///
    /// Errors when the server fails while running.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        let _ = self.state.registry.send(StopAll).await;
        self.state.store.close().await;
        tracing::info!("wxtoken stopped serving; the token store is flushed and closed");
        result
    }
}

/// Resolves on the first SIGINT or SIGTERM (Ctrl-C where there are no Unix
/// signals), which [`HttpServer::shutdown_signal`] turns into a graceful stop.
/// When the signal handlers cannot be installed it logs why and never
/// resolves: the server then stops only through its handle.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut interrupt, mut terminate) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "could not listen for SIGINT and SIGTERM; stop the server with SIGKILL");
                return std::future::pending().await;
            }
        };
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(
            signal = name,
            "stopping: no new connections; finishing the requests in flight, then flushing the token store"
        );
    }
    #[cfg(not(unix))]
    {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "could not listen for Ctrl-C");
            return std::future::pending().await;
        }
        tracing::info!(
            "stopping: no new connections; finishing the requests in flight, then flushing the token store"
        );
    }
}

/// Opens the redb store at `store.path`; with `reset`, a corrupt file is
/// moved aside first and an empty store created.
fn open_store(config: &Config, reset: bool) -> anyhow::Result<RedbStore> {
    let path = &config.store.path;
    match RedbStore::open(path) {
        Ok(store) => Ok(store),
        Err(StoreError::Corrupt { .. }) if reset => {
            let moved = move_aside(path).with_context(|| {
                format!("could not move the token store {} aside", path.display())
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
