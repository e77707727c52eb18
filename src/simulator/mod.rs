//! The built-in WeChat simulator (contract §5): a fake `api.weixin.qq.com` that
//! behaves like WeChat, for `wxtoken simulator`, `wxtoken demo` and the tests.
//!
//! It owns the simulator's public API ([`SimConfig`], [`Simulator`],
//! [`InProcess`], [`run_standalone`]); the state machine lives in `state`, the
//! HTTP surface in `routes`, the Open Platform (components, tickets,
//! authorizers, pushed events) in `open`, fault injection in `faults`, the errors every
//! fallible call returns in `error` ([`SimError`] and its parts).
//!
//! Invariant: every notion of time in the simulator comes from
//! [`SimConfig::clock`], so tests move token lifetimes and quota days with
//! [`Simulator::advance`] instead of sleeping.

mod answers;
mod business;
mod error;
mod faults;
mod inprocess;
mod open;
mod routes;
mod state;
mod stats;
mod whitelist;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

use crate::clock::Clock;

pub use error::{
    FaultError, OpenControlError, RegistrationError, RegistrationProblem, SimConfigError, SimError,
    WhitelistError,
};
pub use faults::FaultSpec;
pub use inprocess::InProcess;
pub use open::{
    AuthorizeRequest, CODE_LIFE, ComponentRegistration, MAX_LIST_COUNT, REFRESH_OVERLAP,
    RefreshTokenFault, TICKET_LIFE,
};
pub use state::{AppRegistration, AppView};
pub use stats::{IssuedTokens, ProbeResults, Stats, UNKNOWN_APPID};

use state::{SimState, TokenStatus};

/// How the simulated WeChat behaves. The defaults are WeChat's numbers.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Lifetime of a new access token (WeChat: 7200 s).
    pub token_ttl: Duration,
    /// How long a superseded token keeps working, and the window before expiry
    /// in which the stable endpoint rotates (WeChat: 300 s).
    pub grace: Duration,
    /// Successful legacy `GET /cgi-bin/token` calls per app per China-time day.
    pub legacy_daily_quota: u32,
    /// Successful `POST /cgi-bin/stable_token` calls (normal or forced) per
    /// app per China-time day; past it, 45009 like the legacy endpoint.
    pub stable_daily_quota: u32,
    /// Stable-token force refreshes that rotate, per app per China-time day.
    pub force_daily_limit: u32,
    /// The minimum time between two rotating force refreshes of one app.
    pub force_min_interval: Duration,
    /// Lifetime of a JS-SDK ticket.
    pub ticket_ttl: Duration,
    /// The clock for every lifetime and quota day.
    pub clock: Clock,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            token_ttl: Duration::from_secs(7200),
            grace: Duration::from_secs(300),
            legacy_daily_quota: 2000,
            stable_daily_quota: 500_000,
            force_daily_limit: 20,
            force_min_interval: Duration::from_secs(30),
            ticket_ttl: Duration::from_secs(7200),
            clock: Clock::system(),
        }
    }
}

impl SimConfig {
    /// Checks that the lifetimes make sense.
    ///
    /// Errors when a lifetime is under one second or `grace` is not shorter
    /// than `token_ttl`; the error names the values.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        if self.token_ttl < Duration::from_secs(1) {
            return Err(SimConfigError::TokenTtlTooShort {
                token_ttl: self.token_ttl,
            });
        }
        if self.grace >= self.token_ttl {
            return Err(SimConfigError::GraceNotShorterThanTtl {
                grace: self.grace,
                token_ttl: self.token_ttl,
            });
        }
        if self.ticket_ttl < Duration::from_secs(1) {
            return Err(SimConfigError::TicketTtlTooShort {
                ticket_ttl: self.ticket_ttl,
            });
        }
        Ok(())
    }
}

/// A running simulator serving on a local address in the background.
pub struct Simulator {
    state: Arc<SimState>,
    addr: SocketAddr,
    handle: ServerHandle,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Binds `addr` (port 0 picks a free port) and serves in the background on
    /// the current tokio or actix runtime with one worker.
    ///
    /// Errors when the configuration is invalid ([`SimError::InvalidConfig`])
    /// or the address cannot be bound ([`SimError::Bind`], naming the address).
    pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<Simulator, SimError> {
        config.validate()?;
        let state = Arc::new(SimState::new(&config));
        let data = web::Data::from(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .configure(routes::configure)
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(addr)
        .map_err(|source| SimError::Bind { addr, source })?;
        let bound = server
            .addrs()
            .first()
            .copied()
            .ok_or(SimError::NoAddress { addr })?;
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Simulator {
            state,
            addr: bound,
            handle,
        })
    }

    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to use as WeChat's, like `http://127.0.0.1:PORT`. A
    /// wildcard listen address is replaced by loopback.
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            _ => {}
        }
        format!("http://{addr}")
    }

    /// Registers or updates an app, like `POST /sim/apps`. An invalid
    /// registration (empty appid or secret, bad whitelist entry) is logged as
    /// a warning and ignored; use [`Simulator::try_register_app`] to see why.
    pub fn register_app(&self, app: AppRegistration) {
        let appid = app.appid.clone();
        if let Err(message) = self.try_register_app(app) {
            tracing::warn!(
                appid = appid.as_str(),
                "simulator ignored an app registration: {message}"
            );
        }
    }

    /// Registers or updates an app.
    ///
    /// Errors with every problem of an invalid registration; nothing changes then.
    pub fn try_register_app(&self, app: AppRegistration) -> Result<(), RegistrationError> {
        self.state.register(app)
    }

    /// Registers or updates an Open Platform component, like `POST
    /// /sim/components`, and starts its ticket pusher (a ticket now, then
    /// every `ticket_interval_ms`) when it has a `callback_url`.
    ///
    /// Errors with every problem of an invalid registration; nothing changes then.
    pub fn try_register_component(
        &self,
        reg: ComponentRegistration,
    ) -> Result<(), RegistrationError> {
        let appid = reg.component_appid.clone();
        let generation = self.state.register_component(reg)?;
        open::start_pusher(&self.state, appid, generation);
        Ok(())
    }

    /// Injects a fault, like `POST /sim/faults`.
    ///
    /// # Panics
    ///
    /// When the fault is invalid (see [`FaultSpec::validate`]); this helper is
    /// for tests, where that is a bug in the test.
    pub fn inject_fault(&self, fault: FaultSpec) {
        if let Err(message) = self.state.add_fault(fault) {
            panic!("invalid fault: {message}");
        }
    }

    /// Removes every injected fault, like `DELETE /sim/faults`.
    pub fn clear_faults(&self) {
        self.state.clear_faults();
    }

    /// The counters, like `GET /sim/stats`.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Moves the simulator's clock forward, like `POST /sim/clock`.
    pub fn advance(&self, by: Duration) {
        self.state.clock.advance(by);
    }

    /// The simulator's clock (clones share its offset).
    pub fn clock(&self) -> &Clock {
        &self.state.clock
    }

    /// True when `token` is a live access token of `appid`: the same judgement
    /// as the probe `GET /cgi-bin/getcallbackip`, without counting anything.
    pub fn is_token_valid(&self, appid: &str, token: &str) -> bool {
        matches!(self.state.token_status(token), TokenStatus::Live { appid: owner, .. } if owner == appid)
    }

    /// Stops serving: in-flight requests get up to one second to finish.
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

/// Runs the simulator in the foreground until Ctrl-C or SIGTERM, printing its
/// address and how to register an app.
///
/// Errors when the configuration is invalid or `listen` cannot be bound; the
/// message names the address.
pub async fn run_standalone(config: SimConfig, listen: SocketAddr) -> Result<(), SimError> {
    let sim = Simulator::start(config, listen).await?;
    let base = sim.base_url();
    println!("wxtoken simulator listening on {base}");
    println!("register an app:");
    println!(
        "  curl -X POST {base}/sim/apps -H 'content-type: application/json' -d '{{\"appid\":\"wx1111111111111111\",\"secret\":\"demo-secret\"}}'"
    );
    println!("then fetch a token:");
    println!(
        "  curl -X POST {base}/cgi-bin/stable_token -d '{{\"grant_type\":\"client_credential\",\"appid\":\"wx1111111111111111\",\"secret\":\"demo-secret\"}}'"
    );
    shutdown_signal().await;
    tracing::info!("simulator stopping");
    sim.stop().await;
    Ok(())
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
