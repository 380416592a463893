//! Fleets: many cutover proxies migrating one pool together, coordinated through etcd
//! (`migrate.coordination: etcd://HOST:PORT,.../PREFIX`).
//!
//! Every member registers under a lease with a short TTL and campaigns in one etcd
//! election; the elected member leads: it runs the replication capture, the backfill and
//! the dirty-key drain, and writes its checkpoint (safe backfill cursors, totals, safe
//! stream positions) to etcd every second. The others only forward (the source's streams
//! carry their clients' writes to the leader). When the leader's lease ends (it died, or
//! lost etcd), another member is elected and continues from the checkpoint: it knows no
//! key yet, so every key's first stream write is copied, never replayed (rule 12), and
//! the backfill resumes from the safe cursors.
//!
//! Keys under the prefix, per pool: `members/<id>` (leased, JSON), `election` (etcd's
//! election API), `checkpoint`.
//!
//! May import: `config`, `upstream`, `migrate`. Never `proxy` or `admin`.

mod barrier;
mod member;

pub use barrier::flip;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use serde::{Deserialize, Serialize};

use crate::config::Coordination;
use crate::migrate::Migration;

/// The lease's TTL: a member that stops renewing for this long is out of the fleet. Long
/// enough that a member rides out a restart of etcd (half of it: see `FENCE_AFTER`), short
/// enough that a frozen member holds a flip only that long.
pub const LEASE_TTL: i64 = 6;
/// How long after sending a renewal that etcd accepted a member may still send requests:
/// half the TTL, so it has stopped well before etcd can expire its lease (rule 15).
const FENCE_AFTER: Duration = Duration::from_millis(LEASE_TTL as u64 * 500);
/// How often the lease is renewed, the members listed and the checkpoint written.
const TICK: Duration = Duration::from_millis(500);
/// How long one etcd call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a member keeps trying to join its fleet at start ([`Fleet::join_patiently`]):
/// etcd restarting, or slow under load, is no reason to fail the start, while a member that
/// cannot join for this long most likely names the wrong etcd and says so by exiting.
pub const JOIN_PATIENCE: Duration = Duration::from_secs(30);
/// The wait between two attempts to join.
const JOIN_RETRY: Duration = Duration::from_millis(500);

/// Why joining a fleet failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// etcd could not be reached or refused a call.
    #[error("coordination {endpoints}: {reason}")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// What went wrong.
        reason: String,
    },
    /// A member that joined first places keys differently (rule 16): this one left.
    #[error(
        "this member's pools place keys differently from those of fleet member {member}, which joined first. It has {theirs}; this member has {ours}. Every member of a fleet needs the same source and target pools (servers, hash, hash tag, distribution, auto_eject_hosts, database): start them all from the same config"
    )]
    Placement {
        /// The member that joined first.
        member: String,
        /// Its placement.
        theirs: String,
        /// This member's.
        ours: String,
    },
}

/// What a member says of itself in etcd (`members/<id>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberInfo {
    /// Unique in the fleet: host, pid and start time.
    pub id: String,
    /// Where its clients connect.
    pub listen: String,
    /// Its admin API (`/status`, flips), if it has one.
    pub admin: Option<String>,
    /// Where its source and target pools place keys ([`crate::config::PoolConfig::placement_text`]);
    /// set when it joins. Members that disagree would route one key to different servers,
    /// so a member that disagrees with one that joined before it leaves (rule 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// Its pools' ejections (rule 18), put again whenever they change; the leader reads
    /// them with the list of members it reads every tick. `None`: none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejections: Option<crate::migrate::EjectionReport>,
}

/// One member's view of its fleet.
pub struct Fleet {
    /// This member.
    pub me: MemberInfo,
    /// The pool migrated.
    pool: String,
    /// The etcd client for calls, each limited in time (cheap to clone: one shared
    /// channel).
    client: Client,
    /// The etcd client for the long-lived calls (watches, the campaign, lease renewal),
    /// which a per-call time limit would cut.
    streams: Client,
    /// `<prefix>/<pool>/`.
    root: String,
    /// The migration this member serves.
    migration: Arc<Migration>,
    /// Whether this member leads now.
    leading: AtomicBool,
    /// The lease of this member's current term.
    lease: AtomicI64,
    /// The epoch of the flip this member (as leader) is deciding.
    deciding: AtomicU64,
    /// The last fleet-wide pause (the slowest member's hold), in microseconds.
    last_pause_us: AtomicU64,
    /// The members last listed, and who leads.
    view: std::sync::Mutex<View>,
    /// Metrics.
    counters: FleetCounters,
}

/// The fleet as last read from etcd.
#[derive(Debug, Default, Clone)]
struct View {
    /// Every registered member.
    members: Vec<MemberInfo>,
    /// The leader's id, if one is elected.
    leader: Option<String>,
    /// Whether the last look at etcd succeeded.
    reachable: bool,
}

/// The fleet's metrics, resolved once.
struct FleetCounters {
    /// `cutover_fleet_members{pool}`.
    members: Gauge,
    /// `cutover_fleet_leading{pool}`: 1 on the leader.
    leading: Gauge,
    /// `cutover_fleet_leader_changes_total{pool}`: leaders this member saw elected.
    leader_changes: Counter,
    /// `cutover_fleet_etcd_errors_total{pool}`.
    etcd_errors: Counter,
    /// `cutover_fleet_barrier_aborts_total{pool}`: flips given up.
    barrier_aborts: Counter,
    /// `cutover_fleet_departed_connections_closed_total{pool}`: connections of members
    /// gone from the fleet, closed on the old authority's servers before a flip.
    departed_closed: Counter,
    /// `cutover_fleet_barrier_seconds{pool}`: from a hold to the decision, on the leader.
    barrier_wait: Histogram,
    /// `cutover_fleet_pause_seconds{pool}`: the slowest member's hold in a flip.
    pause: Histogram,
}

impl Fleet {
    /// Join the fleet of `pool` at `coordination` as `me`, serving `migration` (started
    /// as a member): register under a lease and campaign for leadership in the
    /// background.
    pub async fn join(
        coordination: &Coordination,
        pool: &str,
        mut me: MemberInfo,
        migration: Arc<Migration>,
    ) -> Result<Arc<Fleet>, FleetError> {
        me.placement = Some(format!(
            "source {}; target {}",
            migration.source.config.placement_text(),
            migration.target.config.placement_text()
        ));
        let endpoints = coordination.endpoints.join(",");
        let failed = |reason: String| FleetError::Etcd {
            endpoints: endpoints.clone(),
            reason,
        };
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT);
        let client = Client::connect(&coordination.endpoints, Some(options))
            .await
            .map_err(|e| failed(e.to_string()))?;
        let streams = Client::connect(
            &coordination.endpoints,
            Some(ConnectOptions::new().with_connect_timeout(CALL_TIMEOUT)),
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
        let p = pool.to_string();
        let fleet = Arc::new(Fleet {
            me,
            pool: pool.to_string(),
            client,
            streams,
            root: format!("{}/{pool}/", coordination.prefix),
            migration,
            leading: AtomicBool::new(false),
            lease: AtomicI64::new(0),
            deciding: AtomicU64::new(0),
            last_pause_us: AtomicU64::new(0),
            view: std::sync::Mutex::new(View::default()),
            counters: FleetCounters {
                members: gauge!("cutover_fleet_members", "pool" => p.clone()),
                leading: gauge!("cutover_fleet_leading", "pool" => p.clone()),
                leader_changes: counter!("cutover_fleet_leader_changes_total", "pool" => p.clone()),
                etcd_errors: counter!("cutover_fleet_etcd_errors_total", "pool" => p.clone()),
                barrier_aborts: counter!("cutover_fleet_barrier_aborts_total", "pool" => p.clone()),
                departed_closed: counter!("cutover_fleet_departed_connections_closed_total", "pool" => p.clone()),
                barrier_wait: histogram!("cutover_fleet_barrier_seconds", "pool" => p.clone()),
                pause: histogram!("cutover_fleet_pause_seconds", "pool" => p),
            },
        });
        let lease = member::enter(&fleet)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if let Some(disagreement) = member::agree_on_placement(&fleet, lease)
            .await
            .map_err(|e| failed(e.to_string()))?
        {
            return Err(disagreement);
        }
        tracing::info!(pool, member = %fleet.me.id, %endpoints, "joined the fleet");
        tokio::spawn(member::run(fleet.clone(), lease));
        tokio::spawn(barrier::follow(fleet.clone()));
        Ok(fleet)
    }

    /// [`Fleet::join`], tried again every half second until it succeeds or `patience` has
    /// passed (each failure logged and counted in `cutover_fleet_etcd_errors_total`); then
    /// the last failure. An attempt that failed halfway leaves at most a member record
    /// under a lease nobody renews, which etcd drops within [`LEASE_TTL`].
    pub async fn join_patiently(
        coordination: &Coordination,
        pool: &str,
        me: MemberInfo,
        migration: Arc<Migration>,
        patience: Duration,
    ) -> Result<Arc<Fleet>, FleetError> {
        let deadline = tokio::time::Instant::now() + patience;
        let errors = counter!("cutover_fleet_etcd_errors_total", "pool" => pool.to_string());
        loop {
            match Fleet::join(coordination, pool, me.clone(), migration.clone()).await {
                Ok(fleet) => return Ok(fleet),
                // Trying again would not change anyone's config.
                Err(error @ FleetError::Placement { .. }) => return Err(error),
                Err(error) if tokio::time::Instant::now() + JOIN_RETRY < deadline => {
                    errors.increment(1);
                    tracing::warn!(pool, %error, "cannot join the fleet yet; trying again (giving up {patience:?} after start)");
                    tokio::time::sleep(JOIN_RETRY).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// A call to etcd failed: counted in `cutover_fleet_etcd_errors_total`, and `/status`
    /// says etcd is unreachable until a look at it succeeds again. (While etcd is down the
    /// lease is not renewed, and the member does not look, so only a failure can say so.)
    fn etcd_failed(&self) {
        self.counters.etcd_errors.increment(1);
        if let Ok(mut view) = self.view.lock() {
            view.reachable = false;
        }
    }

    /// The etcd key `name` under this pool's root.
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.root)
    }

    /// Whether this member leads now.
    pub fn leading(&self) -> bool {
        self.leading.load(Relaxed)
    }

    /// The leader's admin address, if another member leads and has one.
    pub fn leader_admin(&self) -> Option<String> {
        let view = self.view.lock().ok()?;
        let leader = view.leader.as_ref()?;
        view.members
            .iter()
            .find(|m| &m.id == leader)
            .and_then(|m| m.admin.clone())
    }

    /// The fleet for `/status`: members, who leads, this member's role.
    pub fn status_json(&self) -> serde_json::Value {
        let view = self.view.lock().map(|v| v.clone()).unwrap_or_default();
        serde_json::json!({
            "member": self.me.id,
            "role": self.migration.role().name(),
            "leader": view.leader,
            "etcd_reachable": view.reachable,
            "fenced": self.migration.fenced(),
            "last_pause_ms": self.last_pause_us.load(Relaxed) as f64 / 1000.0,
            "members": view.members.iter().map(|m| serde_json::json!({
                "id": m.id,
                "listen": m.listen,
                "admin": m.admin,
                "leader": view.leader.as_deref() == Some(m.id.as_str()),
            })).collect::<Vec<_>>(),
        })
    }
}
