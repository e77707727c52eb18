//! What every request handler shares: [`AppState`].
//!
//! Invariant: handlers read tokens only through the published snapshot
//! (`directory`); everything that changes an account goes through the
//! registry's address.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use actix::Addr;
use arc_swap::ArcSwap;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::reload::Reloader;
use crate::replica::Shared;
use crate::snapshot::Directory;
use crate::store::StoreWriter;

use super::Auth;

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
    /// The configured Open Platform components' message crypts (the event
    /// URL's keys); swapped whole when the configuration is reloaded.
    pub components: Arc<ArcSwap<super::open::Components>>,
    /// The token-injecting proxy (contract §7); reconfigured on reload.
    pub proxy: Arc<super::Proxy>,
    /// Cancelled when the server begins to stop: held long-polls answer at
    /// once instead of holding the graceful shutdown.
    pub draining: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}
