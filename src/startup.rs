//! Application wiring: from a validated [`Config`] to a running server.
//!
//! Owns [`Application`]: bind the listener, start the [`Engine`] (metrics,
//! the WeChat client, the store, the registry actor and its accounts), the
//! API clients and the reloader, and the actix-web server with the
//! [`AppState`] every request handler gets.
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

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use arc_swap::ArcSwap;

use crate::api::{self, AppState, Auth, HttpMetrics};
use crate::config::Config;
use crate::engine::{Engine, EngineConfig, EngineOptions};
use crate::reload::{OnApplied, ReloadSource, Reloader};

/// The most HTTP workers started by default: token reads take microseconds,
/// so a few threads saturate a network card.
pub const DEFAULT_MAX_WORKERS: usize = 4;

/// How the application is built, beyond the configuration. The defaults are
/// production's: the engine's ([`EngineOptions`]: the system clock, WeChat
/// from `upstream:`, WeChat's grace, the store at `store.path`), as many
/// workers as cores up to [`DEFAULT_MAX_WORKERS`], no reloading.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// How the token engine is built: clock, token source, grace, store, replicas.
    pub engine: EngineOptions,
    /// HTTP worker threads; `None` is min(available cores, [`DEFAULT_MAX_WORKERS`]).
    pub workers: Option<usize>,
    /// Where `/v1/admin/reload` (and SIGHUP, and the file watch, when set up)
    /// re-read the configuration; `None` disables reloading.
    pub reload: Option<ReloadSource>,
}

/// A built, not yet awaited, wxtoken server.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    state: AppState,
    engine: Engine,
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

        let engine = Engine::start(&EngineConfig::from(&config), options.engine).await?;
        engine
            .metrics
            .configure_per_account(config.metrics.per_account, config.accounts.len());

        if config.clients.is_empty() {
            tracing::warn!(listen = %addr, "no clients configured: API open to loopback callers only");
        }
        let auth = Arc::new(ArcSwap::from_pointee(Auth::new(&config.clients)));
        let components = Arc::new(ArcSwap::from_pointee(crate::api::open::components_of(
            &config,
        )));
        let proxy =
            Arc::new(api::Proxy::new(&config).map_err(|e| {
                anyhow::anyhow!("could not start the API proxy's HTTP client: {e}")
            })?);
        let reloader = options.reload.map(|source| {
            let clients = auth.clone();
            let crypts = components.clone();
            let proxy = proxy.clone();
            let on_applied: OnApplied = Arc::new(move |applied: &Config| {
                clients.store(Arc::new(Auth::new(&applied.clients)));
                crypts.store(Arc::new(crate::api::open::components_of(applied)));
                proxy.reconfigure(applied);
            });
            Reloader::new(
                source,
                config.clone(),
                engine.registry.clone(),
                on_applied,
                engine.metrics.clone(),
            )
        });
        tracing::info!(accounts = engine.started.added.len(), listen = %addr, "starting wxtoken");

        let state = AppState {
            directory: engine.directory.clone(),
            registry: engine.registry.clone(),
            auth,
            metrics: engine.metrics.clone(),
            clock: engine.clock.clone(),
            reloader,
            store: engine.store.clone(),
            shared: engine.shared.clone(),
            tokens_loaded: Arc::new(AtomicBool::new(false)),
            components,
            proxy,
            draining: tokio_util::sync::CancellationToken::new(),
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
        .shutdown_signal(stop_signal(state.draining.clone()))
        .listen(listener)
        .with_context(|| format!("could not serve on {addr}"))?
        .run();

        Ok(Application {
            addr,
            server,
            state,
            engine,
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
        self.engine.stop().await;
        tracing::info!("wxtoken stopped serving; the token store is flushed and closed");
        result
    }
}

/// Resolves on the first SIGINT or SIGTERM (Ctrl-C where there are no Unix
/// signals), which [`HttpServer::shutdown_signal`] turns into a graceful stop.
/// Cancels `draining` first, so held long-polls answer and let the stop
/// finish. When the signal handlers cannot be installed it logs why and never
/// resolves: the server then stops only through its handle.
async fn stop_signal(draining: tokio_util::sync::CancellationToken) {
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
        draining.cancel();
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
        draining.cancel();
    }
}
