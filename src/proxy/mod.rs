//! The proxy: listeners and client sessions, nutcracker's replies, splitting of
//! multi-key commands, the proxy's own commands. Requests go to the upstream pools; a pool
//! that names a migration target hands its writes to the migration engine's hooks.
//!
//! May import: `config`, `hash`, `resp`, `command`, `upstream`, `migrate`.

pub mod busy_poll;
mod cpu_quota;
mod fragment;
mod introspection;
mod listener;
mod local;
mod pending;
pub mod reload;
mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::migrate::Migration;
use crate::resp::RequestLimits;
use crate::upstream::Pool;
pub use busy_poll::{BusyPoll, PollWindow};

/// How long shutdown waits for clients to receive their pending replies.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for a migration's lanes to empty.
const MIGRATION_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The pool's fleet could not be joined.
    #[error("pool '{pool}': {source}")]
    Fleet {
        /// The pool.
        pool: String,
        /// Why.
        source: crate::fleet::FleetError,
    },
    /// `capture: replication` was asked for and a source server refused it.
    #[error("pool '{pool}': capture: replication: {reason}")]
    Capture {
        /// The pool.
        pool: String,
        /// Which server refused, and what it said.
        reason: String,
    },
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

/// A pool clients connect to: its servers and, when it names a migration target, the
/// migration it is the source of.
pub struct Served {
    /// The pool (the migration's source, when there is one).
    pub pool: Arc<Pool>,
    /// The migration: started before the listener accepts anyone, so no write reaches the
    /// source without being mirrored; or by a reload, which waits until every write sent
    /// before it existed was answered before the backfill starts.
    migration: std::sync::OnceLock<Arc<Migration>>,
    /// The fleet this pool migrates with, if `migrate.coordination` names one.
    pub fleet: std::sync::OnceLock<Arc<crate::fleet::Fleet>>,
    /// Every request is inside this gate from before it looks for the migration until it
    /// is queued on its connection: a reload that starts a migration waits for it to be
    /// empty, so no request that saw "no migration" is still on its way to the source.
    pub routing: crate::migrate::phase::Gate,
}

impl Served {
    /// A served pool, with its migration if it has one.
    pub fn new(pool: Arc<Pool>, migration: Option<Arc<Migration>>) -> Served {
        let served = Served {
            pool,
            migration: std::sync::OnceLock::new(),
            fleet: std::sync::OnceLock::new(),
            routing: crate::migrate::phase::Gate::default(),
        };
        if let Some(m) = migration {
            let _ = served.migration.set(m);
        }
        served
    }

    /// The migration this pool is the source of, if any.
    pub fn migration(&self) -> Option<&Arc<Migration>> {
        self.migration.get()
    }

    /// Make this pool the source of `migration` (a reload); false when it already is one's.
    pub fn attach(&self, migration: Arc<Migration>) -> bool {
        self.migration.set(migration).is_ok()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        self.pool.name()
    }

    /// Bring the Prometheus counters kept as atomics up to date (before a scrape), for
    /// the pool's servers and its migration's other pools.
    pub fn publish_metrics(&self) {
        self.pool.publish_metrics();
        if let Some(m) = self.migration() {
            for pool in [&m.target, &m.copy_source, &m.copy_target] {
                pool.publish_metrics();
            }
            m.publish_metrics();
        }
    }
}

/// The source servers' replication streams, when the pool's `capture:` asks for them and
/// every server gives one; `capture: replication` fails the start when one refuses, and
/// `capture: auto` falls back to proxy mirroring, saying why.
async fn capture_streams(
    pool: &Arc<Pool>,
    config: &crate::config::PoolConfig,
) -> Result<Option<Vec<crate::upstream::replication::ReplicationStream>>, StartError> {
    use crate::config::Capture;
    let capture = config
        .migration
        .as_ref()
        .map_or(Capture::Proxy, |m| m.settings.capture);
    if capture == Capture::Proxy {
        return Ok(None);
    }
    match crate::migrate::capture::open_all(pool).await {
        Ok(streams) => {
            tracing::info!(
                pool = pool.name(),
                capture = capture.name(),
                "capture: replication (every source server accepted PSYNC)"
            );
            Ok(Some(streams))
        }
        Err(reason) if capture == Capture::Replication => Err(StartError::Capture {
            pool: pool.name().to_string(),
            reason,
        }),
        Err(reason) => {
            tracing::warn!(pool = pool.name(), %reason, "capture: auto falls back to proxy mirroring");
            Ok(None)
        }
    }
}

/// A fleet member's id: unique across hosts and restarts (host name, pid, start time), and
/// saying where it listens.
fn member_id(listen: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let port = listen.rsplit(':').next().unwrap_or(listen);
    format!("{host}-{port}-{}-{started}", std::process::id())
}

/// The running pools of a proxy.
pub struct Proxy {
    /// Every pool with a listener, in config (name-sorted) order.
    pub pools: Vec<Arc<Served>>,
    /// Turns true to begin a graceful shutdown.
    shutdown: watch::Sender<bool>,
    /// Every session holds a clone of its sender; `recv` returns `None` when all ended.
    alive: mpsc::Receiver<()>,
    /// Busy polling, when `--busy-poll` asks for it.
    pub busy_poll: Option<Arc<BusyPoll>>,
}

impl Proxy {
    /// Turns true when the shutdown begins (for the admin API's `GET /health`).
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Bind every pool's listener and start serving. Binding happens first, for every
    /// pool, so a taken port fails start-up before any client is served.
    /// At most `max_clients` client connections are open at once, across every pool.
    /// `admin` is where the admin API listens (a fleet's members tell each other).
    /// `busy_poll` is the window of busy polling after client I/O (none: off). `auto` is
    /// off under a CPU quota, where polling would spend the quota.
    pub async fn start(
        config: &Config,
        limits: RequestLimits,
        max_clients: usize,
        admin: Option<String>,
        busy_poll: Option<PollWindow>,
    ) -> Result<Proxy, StartError> {
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
        let quota = busy_poll.and_then(|_| cpu_quota::cpu_quota());
        let busy_poll = match (busy_poll, &quota) {
            (Some(PollWindow::Auto), Some(quota)) => {
                tracing::info!(
                    cores = quota.cores,
                    file = %quota.file.display(),
                    "busy polling off: the process runs under a CPU quota, which polling would spend (--busy-poll MICROSECONDS polls all the same)"
                );
                None
            }
            (Some(PollWindow::Fixed(_)), Some(quota)) => {
                tracing::warn!(
                    cores = quota.cores,
                    file = %quota.file.display(),
                    "--busy-poll under a CPU quota: polling is charged to it, and a process that spends its quota is throttled until the next period"
                );
                busy_poll
            }
            _ => busy_poll,
        };
        let busy_poll = busy_poll.map(|window| {
            let poll = Arc::new(BusyPoll::new(window, quota.map(|q| q.cores)));
            tokio::spawn(poll.clone().run(shutdown_rx.clone()));
            poll
        });
        let shared = listener::Shared {
            busy_poll: busy_poll.clone(),
            limits,
            clients: Arc::new(tokio::sync::Semaphore::new(max_clients.max(1))),
            shutdown: shutdown_rx,
            alive: alive_tx,
        };
        let mut pools = Vec::new();
        for (pool_config, socket) in bound {
            let listen = pool_config
                .listen
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let coordination = pool_config
                .migration
                .as_ref()
                .and_then(|m| m.settings.coordination.clone());
            // A fleet member's id names its connections, from the first one (rule 15).
            let member = coordination.as_ref().map(|_| member_id(&listen));
            let pool = Pool::start_named(pool_config.clone(), member.as_deref());
            let mut migration = None;
            let mut fleet = None;
            if let (Some(target), Some(coordination), Some(id)) =
                (config.migration_target(&pool_config), coordination, member)
            {
                let started = Migration::start_member(pool.clone(), &pool_config, target);
                let me = crate::fleet::MemberInfo {
                    id,
                    listen: listen.clone(),
                    admin: admin.clone(),
                    // Set by the fleet as it joins.
                    placement: None,
                    // Put by the fleet when its pools eject a server.
                    ejections: None,
                };
                let joined = crate::fleet::Fleet::join_patiently(
                    &coordination,
                    pool.name(),
                    me,
                    started.clone(),
                    crate::fleet::JOIN_PATIENCE,
                )
                .await
                .map_err(|source| {
                    // This process will not serve: its dirty-key file goes with it.
                    started.discard_temporary_files();
                    StartError::Fleet {
                        pool: pool.name().to_string(),
                        source,
                    }
                })?;
                migration = Some(started);
                fleet = Some(joined);
            } else if let Some(target) = config.migration_target(&pool_config) {
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
                let streams = capture_streams(&pool, &pool_config).await?;
                let started =
                    Migration::start_capturing(pool.clone(), &pool_config, target, streams);
                migration = Some(started);
            }
            let served = Arc::new(Served::new(pool, migration));
            if let Some(fleet) = fleet {
                let _ = served.fleet.set(fleet);
            }
            let pool = &served.pool;
            tracing::info!(pool = pool.name(), %listen, servers = pool.servers.len(), "serving");
            tokio::spawn(listener::serve(served.clone(), socket, shared.clone()));
            pools.push(served.clone());
        }
        Ok(Proxy {
            pools,
            shutdown,
            alive,
            busy_poll,
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
        for served in &self.pools {
            if let Some(migration) = served.migration() {
                migration.stop(MIGRATION_STOP_TIMEOUT).await;
            }
        }
    }
}
