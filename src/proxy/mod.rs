//! The proxy data path: listeners, client sessions, server pools and their pipelined
//! connections, splitting of multi-key commands, ejection.

mod backend;
mod counters;
mod fragment;
mod introspection;
mod listener;
mod local;
mod pool;
mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub use backend::{BackendError, ReplyResult};
pub use counters::{ErrorKind, PoolCounters, ServerCounters};
pub use pool::{Pool, Route, Server};

use crate::config::Config;
use crate::resp::RequestLimits;

/// How long shutdown waits for clients to receive their pending replies.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for a migration's lanes to empty.
const MIGRATION_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A pool's listen address could not be bound.
    #[error("pool '{pool}': cannot listen on {listen}: {source}")]
    Listen {
        /// The pool.
        pool: String,
        /// The address.
        listen: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The running pools of a proxy.
pub struct Proxy {
    /// Every pool with a listener, in config (name-sorted) order.
    pub pools: Vec<Arc<Pool>>,
    /// Turns true to begin a graceful shutdown.
    shutdown: watch::Sender<bool>,
    /// Every session holds a clone of its sender; `recv` returns `None` when all ended.
    alive: mpsc::Receiver<()>,
}

impl Proxy {
    /// Bind every pool's listener and start serving. Binding happens first, for every
    /// pool, so a taken port fails start-up before any client is served.
    pub async fn start(config: &Config, limits: RequestLimits) -> Result<Proxy, StartError> {
        let mut bound = Vec::new();
        for pool in config.listening_pools() {
            let Some(listen) = &pool.listen else { continue };
            let socket =
                listener::bind(listen, pool.backlog).map_err(|source| StartError::Listen {
                    pool: pool.name.clone(),
                    listen: listen.to_string(),
                    source,
                })?;
            bound.push((pool.clone(), socket));
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (alive_tx, alive) = mpsc::channel(1);
        let mut pools = Vec::new();
        for (pool_config, socket) in bound {
            let listen = pool_config
                .listen
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let pool = Pool::start(pool_config.clone());
            // The migration is attached before the listener accepts anyone, so no write
            // reaches the source without being mirrored.
            if let Some(target) = config.migration_target(&pool_config) {
                if pool_config
                    .migration
                    .as_ref()
                    .is_some_and(|m| m.settings.state_file.is_none())
                {
                    tracing::warn!(
                        pool = pool.name(),
                        "no migrate.state_file: the backfill's progress and the phase will not survive a restart"
                    );
                }
                pool.attach_migration(crate::migrate::Migration::start(
                    pool.clone(),
                    &pool_config,
                    target,
                ));
            }
            tracing::info!(pool = pool.name(), %listen, servers = pool.servers.len(), "serving");
            tokio::spawn(listener::serve(
                pool.clone(),
                socket,
                limits,
                shutdown_rx.clone(),
                alive_tx.clone(),
            ));
            pools.push(pool);
        }
        Ok(Proxy {
            pools,
            shutdown,
            alive,
        })
    }

    /// Stop accepting, let every client get the replies it is owed, then return (or give
    /// up waiting after 30 seconds).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        // Listeners drop their senders when they stop; sessions when they end.
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, self.alive.recv()).await;
        if drained.is_err() {
            tracing::warn!(
                "shutdown: clients still connected after {DRAIN_TIMEOUT:?}; exiting anyway"
            );
        }
        // Mirror events of the last writes reach the target, and the state file records
        // a clean stop.
        for pool in &self.pools {
            if let Some(migration) = pool.migration() {
                migration.stop(MIGRATION_STOP_TIMEOUT).await;
            }
        }
    }
}
