//! The migration engine: mirroring, lanes, copies and the backfill, following the lane
//! rules of DESIGN.md so the target ends equal to the source whatever the interleaving
//! of live writes and copies.
//!
//! One [`Migration`] serves one source pool (the pool clients use) and its `migrate_to`
//! target. Writes through the proxy carry a [`MirrorHook`] (an
//! upstream reply hook); the backfill scans the source; both feed the lanes, and only
//! lanes write to the target. The offline jobs (`cutover migrate`, `cutover verify`) run
//! the same engine with no client session at all.
//!
//! May import: `config`, `hash`, `resp`, `command`, `engine`, `upstream`. Never `proxy`
//! or `admin`.

mod backfill;
pub mod capture;
mod copy;
mod counters;
mod direct_clients;
mod dirty;
mod ejections;
pub mod engines;
mod evictions;
mod flip;
pub mod key_type;
pub mod known;
mod lag;
mod lane;
mod lanes;
mod marker;
pub mod mirror;
pub mod offline;
pub mod phase;
pub mod placed_read;
mod restarts;
mod retries;
mod role;
mod scan;
pub mod shadow;
mod state;
mod status;
mod stream;
mod structural;
pub mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;

pub use copy::CopyReason;
pub use counters::MigrationCounters;
pub use dirty::{Owed, PROBE as DIRTY_PROBE};
pub use ejections::EjectionReport;
pub use flip::{FlipError, Flipped};
pub use lane::{LaneEvent, Queued};
pub use lanes::Lanes;
pub use marker::now_ms;
pub use phase::Phase;
use retries::RetryReason;
pub use role::Role;

use crate::config::{MigrateSettings, PoolConfig};
use crate::resp::Protocol;
use crate::upstream::{BackendError, Pool};
use dirty::DirtyKeys;
use lag::LagStart;
use mirror::{MirrorHook, ReplayCheck, ShadowRead};

/// Smallest queue a lane gets, whatever `mirror_queue_limit` says.
const MIN_LANE_QUEUE: usize = 16;
/// How often a new migration's backfill, waiting for a source server to answer, says so.
const ANSWER_WARNING: std::time::Duration = std::time::Duration::from_secs(5);

/// A running migration from one source pool to its target: its pools, and its concerns,
/// each in its own part (the lanes; the backfill's controls; the phase and the gate; the
/// counters; verify; dirty keys; the state file; the engines).
pub struct Migration {
    /// The pool clients use: the source, authoritative until cutover.
    pub source: Arc<Pool>,
    /// Separate connections to the source servers for the backfill's SCAN and the copies'
    /// DUMP, so large copies never queue behind (or ahead of) client traffic.
    pub copy_source: Arc<Pool>,
    /// The target pool, placed by its own config.
    pub target: Arc<Pool>,
    /// Separate connections to the target servers, for copies back to the source after
    /// cutover (the mirror image of `copy_source`).
    pub copy_target: Arc<Pool>,
    /// The `migrate:` settings as they were at start (see `tunables` for the ones a reload
    /// changes).
    pub settings: MigrateSettings,
    /// The settings a reload may change while the migration runs.
    pub tunables: Tunables,
    /// The lanes, their known-copied sets, and the sequence and stamp counters.
    pub lanes: Lanes,
    /// The backfill's controls and progress.
    pub backfill: backfill::BackfillControl,
    /// The phase, the gate and what a flip waits for.
    pub flips: phase::Flips,
    /// Recent mirror lags, for `/status`, and which mirrored event is measured next.
    pub lag: lag::LagWindow,
    /// The migration's metrics.
    pub counters: MigrationCounters,
    /// Running totals (readable, for progress, `/status` and summaries).
    pub totals: Totals,
    /// The last verify pass's result, and whether one is running.
    pub verify: verify::VerifyState,
    /// Keys to copy again.
    pub(crate) dirty: DirtyKeys,
    /// Backfill progress per source server, saved to the state file.
    pub progress: state::Progress,
    /// Both sides' engines (read at start), which decide how keys are copied each way.
    pub engines: engines::Engines,
    /// The replication capture: the side it follows and each server's stream.
    pub capture: capture::Capture,
    /// Where copies are placed in the source servers' streams (rule 12).
    pub markers: marker::Markers,
    /// Sampled reads placed in the source servers' streams, under capture.
    pub placed_reads: placed_read::PlacedReads,
    /// Its part in a fleet (a [`Role`] as a number).
    role: std::sync::atomic::AtomicU8,
    /// In a fleet: until when this member may send requests of the pool: half a lease
    /// after its last renewal was sent, so it stops before etcd can expire the lease and
    /// the fleet go on without it (rule 15). Open when not in a fleet. The source and
    /// target pools' connections check it too, right before they write.
    send_fence: Arc<crate::upstream::SendFence>,
    /// Clients last found connected straight to a source server (cutover blockers).
    direct_seen: std::sync::Mutex<Vec<String>>,
    /// The servers' runs: a restart of the mirrored side's means copying every key again
    /// (rule 17).
    pub restarts: restarts::Restarts,
    /// The pools' ejections as last seen (rule 18).
    pub ejections: ejections::Ejections,
    /// The servers' evictions: the mirrored side's owe a verify pass (rule 19).
    pub evictions: evictions::Evictions,
}

/// Lock `mutex` even when a panic poisoned it: what the migration keeps behind its locks
/// (a file handle, queues of keys, per-server counts) stays valid, and losing a dirty key
/// to a poisoned lock would break rule 7.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `migrate:` settings a reload changes on a running migration (the backfill's rate
/// limits live in `backfill::BackfillControl`).
#[derive(Debug)]
pub struct Tunables {
    /// `shadow_ratio`, as the bits of an `f64`.
    shadow_ratio: AtomicU64,
    /// `ttl_tolerance_ms`.
    ttl_tolerance_ms: AtomicU64,
}

impl Tunables {
    /// From the settings at start.
    fn new(settings: &MigrateSettings) -> Tunables {
        Tunables {
            shadow_ratio: AtomicU64::new(settings.shadow_ratio.to_bits()),
            ttl_tolerance_ms: AtomicU64::new(settings.ttl_tolerance_ms),
        }
    }

    /// The share of reads compared with the target.
    pub fn shadow_ratio(&self) -> f64 {
        f64::from_bits(self.shadow_ratio.load(Relaxed))
    }

    /// TTL difference still counted as equal, in milliseconds.
    pub fn ttl_tolerance_ms(&self) -> u64 {
        self.ttl_tolerance_ms.load(Relaxed)
    }
}

/// The `migrate:` keys a reload may change on a running migration; a change to any other
/// is refused (it needs a restart).
pub const RUNTIME_SETTINGS: [&str; 4] = [
    "backfill_keys_per_second",
    "backfill_bytes_per_second",
    "shadow_ratio",
    "ttl_tolerance_ms",
];

/// The mirror lag is measured on one mirrored event in this many (the first included).
pub const LAG_SAMPLE: u64 = 8;

/// Running totals of a migration.
#[derive(Debug, Default)]
pub struct Totals {
    /// Keys the backfill scanned.
    pub scanned: AtomicU64,
    /// Keys copied by the backfill.
    pub backfill_copied: AtomicU64,
    /// Keys the backfill skipped because they were already copied.
    pub skipped: AtomicU64,
    /// Keys copied because of writes.
    pub write_copies: AtomicU64,
    /// Writes replayed.
    pub replayed: AtomicU64,
    /// Events a copy already carried, dropped (rule 9).
    pub folded: AtomicU64,
    /// Payload bytes copied.
    pub bytes: AtomicU64,
    /// Keys marked dirty.
    pub dirtied: AtomicU64,
    /// Keys copied by type after their payload was refused or found too large.
    pub rejected: AtomicU64,
    /// Keys copied by DUMP/RESTORE.
    pub restore_copies: AtomicU64,
    /// Parts of streams a copy by type could not give the target.
    pub stream_parts_not_carried: AtomicU64,
    /// Keys copied by type.
    pub by_type_copies: AtomicU64,
    /// Copies by reason (in [`CopyReason::ALL`]'s order).
    pub by_reason: [AtomicU64; CopyReason::ALL.len()],
    /// Sampled reads compared with the target.
    pub shadow_checked: AtomicU64,
    /// Sampled reads whose target reply disagreed (confirmed by a second read).
    pub shadow_mismatches: AtomicU64,
    /// Keys copied again because of a shadow mismatch.
    pub shadow_repaired: AtomicU64,
    /// First disagreements that a second read did not confirm (the key was changing).
    pub shadow_unconfirmed: AtomicU64,
    /// Reads not compared, by reason (in `counters::SHADOW_SKIPS`'s order).
    pub shadow_skipped: [AtomicU64; 5],
    /// Stream commands by what became of them (in `counters::CAPTURE_ACTIONS`' order).
    pub capture_actions: [AtomicU64; 5],
}

impl Migration {
    /// Start migrating `source` (whose config is `source_config`) to `target_config`: the
    /// target pool, the copy connections, the lanes, the backfill and the dirty-key drainer.
    pub fn start(
        source: Arc<Pool>,
        source_config: &PoolConfig,
        target_config: &PoolConfig,
    ) -> Arc<Migration> {
        Migration::start_with(source, source_config, target_config, true)
    }

    /// [`Migration::start`], fed by the source servers' replication `streams` (one per
    /// source server, in order, opened before this) when given: capture is on before the
    /// backfill's first copy, so every copy carries its marker (rule 12).
    pub fn start_capturing(
        source: Arc<Pool>,
        source_config: &PoolConfig,
        target_config: &PoolConfig,
        streams: Option<Vec<crate::upstream::replication::ReplicationStream>>,
    ) -> Arc<Migration> {
        Migration::start_full(source, source_config, target_config, true, streams)
    }

    /// [`Migration::start`], with or without the backfill (`cutover verify` needs only
    /// the lanes, for repairs).
    pub fn start_with(
        source: Arc<Pool>,
        source_config: &PoolConfig,
        target_config: &PoolConfig,
        with_backfill: bool,
    ) -> Arc<Migration> {
        Migration::start_full(source, source_config, target_config, with_backfill, None)
    }

    /// Every way to start, in one place.
    fn start_full(
        source: Arc<Pool>,
        source_config: &PoolConfig,
        target_config: &PoolConfig,
        with_backfill: bool,
        streams: Option<Vec<crate::upstream::replication::ReplicationStream>>,
    ) -> Arc<Migration> {
        let settings = source_config
            .migration
            .as_ref()
            .map(|m| m.settings.clone())
            .unwrap_or_default();
        let mut copy_config = source_config.clone();
        copy_config.name = format!("{}.copy", source_config.name);
        copy_config.preconnect = false;
        // Copies reach each key's own server, or fail (rule 18).
        copy_config.auto_eject_hosts = false;
        // A fleet member's connections to every server are named after it (rule 15).
        let member = source.member();
        let copy_source = Pool::start_named(copy_config, member);
        let target = Pool::start_named(target_config.clone(), member);
        let mut copy_target_config = target_config.clone();
        copy_target_config.name = format!("{}.copy", target_config.name);
        copy_target_config.preconnect = false;
        copy_target_config.auto_eject_hosts = false;
        let copy_target = Pool::start_named(copy_target_config, member);
        let lane_count = settings.lanes.max(1) as usize;
        let per_lane = (settings.mirror_queue_limit as usize / lane_count).max(MIN_LANE_QUEUE);
        let dirty_path = settings.state_file.as_ref().map_or_else(
            || {
                std::env::temp_dir().join(format!(
                    "cutover-{}-{}.dirty",
                    source_config.name,
                    std::process::id()
                ))
            },
            |state| state.with_extension("dirty"),
        );
        let progress =
            state::Progress::load_or_new(settings.state_file.clone(), copy_source.servers.len());
        // The capture's per-server handles: the source's servers, then the target's.
        let server_names: Vec<String> = copy_source
            .servers
            .iter()
            .chain(&copy_target.servers)
            .map(|s| s.name.clone())
            .collect();
        let counters = MigrationCounters::new(&source_config.name)
            .with_capture(&source_config.name, &server_names);
        counters.set_state("idle");
        counters
            .rate_limit
            .set(settings.backfill_keys_per_second as f64);
        let phase = progress.phase;
        counters.set_phase(phase);
        let engines = engines::Engines::new(
            &source_config.name,
            copy_source.servers.len(),
            copy_target.servers.len(),
        );
        let (lanes, receivers) = Lanes::new(lane_count, per_lane, progress.salt());
        let names =
            |pool: &Pool| -> Vec<String> { pool.servers.iter().map(|s| s.name.clone()).collect() };
        let (source_names, target_names) = (names(&copy_source), names(&copy_target));
        let restarts = restarts::Restarts::new(
            &source_config.name,
            [&source_names, &target_names],
            [&progress.run_ids[0], &progress.run_ids[1]],
        );
        let (source_servers, target_servers) =
            (copy_source.servers.len(), copy_target.servers.len());
        let migration = Arc::new(Migration {
            source,
            copy_source,
            target,
            copy_target,
            lanes,
            backfill: backfill::BackfillControl::new(&settings, progress.loaded[0]),
            flips: phase::Flips::new(phase),
            lag: lag::LagWindow::default(),
            verify: verify::VerifyState::default(),
            counters,
            dirty: DirtyKeys::open(dirty_path),
            totals: Totals {
                scanned: AtomicU64::new(progress.loaded[0]),
                backfill_copied: AtomicU64::new(progress.loaded[1]),
                bytes: AtomicU64::new(progress.loaded[2]),
                ..Totals::default()
            },
            engines,
            capture: capture::Capture::new(source_servers, target_servers),
            markers: marker::Markers::default(),
            placed_reads: placed_read::PlacedReads::default(),
            role: std::sync::atomic::AtomicU8::new(Role::Solo as u8),
            send_fence: Arc::new(crate::upstream::SendFence::new()),
            direct_seen: std::sync::Mutex::new(Vec::new()),
            restarts,
            ejections: ejections::Ejections::default(),
            evictions: evictions::Evictions::new(
                &source_config.name,
                [&source_names, &target_names],
            ),
            progress,
            tunables: Tunables::new(&settings),
            settings,
        });
        tokio::spawn(engines::detect(migration.clone()));
        // Before anything is copied: its first look is every server's baseline.
        tokio::spawn(evictions::watch(migration.clone()));
        if let Some(streams) = streams {
            migration.start_capture(streams);
        }
        for (index, rx) in receivers.into_iter().enumerate() {
            tokio::spawn(lane::run(migration.clone(), index, rx));
        }
        if with_backfill && phase == Phase::Migrating {
            tokio::spawn(backfill::run(migration.clone()));
        }
        tokio::spawn(dirty::drain(migration.clone()));
        tokio::spawn(state::checkpoints(migration.clone()));
        tokio::spawn(restarts::watch(migration.clone()));
        migration.apply_ejection(phase);
        tokio::spawn(ejections::watch(migration.clone()));
        tracing::info!(
            source = migration.source.name(),
            target = migration.target.name(),
            lanes = lane_count,
            phase = phase.name(),
            dirty_file = %migration.dirty.path.display(),
            "migration started"
        );
        migration
    }

    /// Take the next sequence number (rule 2; see [`Lanes::next_seq`]).
    pub fn next_seq(&self) -> u64 {
        self.lanes.next_seq()
    }

    /// The sequence counter's value now (a copy's `copied_at`).
    pub fn seq_now(&self) -> u64 {
        self.lanes.seq_now()
    }

    /// A sequence number below which every mirrored write has had its events queued: the
    /// counter, or the oldest write still in flight on any source connection if lower.
    pub fn low_water(&self) -> u64 {
        let counter = self.lanes.seq_now();
        self.source
            .oldest_write_in_flight()
            .min(self.target.oldest_write_in_flight())
            .min(counter)
    }

    /// Queue a mirror event without waiting (the client's reply must not wait): a full
    /// lane marks the key dirty instead.
    pub fn enqueue(&self, event: LaneEvent) {
        self.enqueue_stamped(event, true);
    }

    /// [`Migration::enqueue`], saying whether a copy that begins after this event may
    /// stand for it (`foldable`, rule 9): true when what the event stands for was applied
    /// on the authoritative side before it was queued; false for a write whose outcome is
    /// unknown (it may still be applied later).
    fn enqueue_stamped(&self, event: LaneEvent, foldable: bool) {
        let Some(key) = event_key(&event).cloned() else {
            return;
        };
        let lane = self.lanes.of(&key);
        if !self.lanes.try_queue(lane, event, foldable) {
            self.mark_dirty(&key);
        }
    }

    /// Replay a write on the target at once, from the source connection's task, when the
    /// key's lane is idle and rule 3 allows it: the lane's queue, task and reply channel
    /// are skipped, which is most of the mirroring cost. Checked and queued under the
    /// lane's known-copied lock, which the lane also takes before it acts on any event, so
    /// a copy the lane starts later is queued on the target after this replay. `hook` is
    /// the write's, already turned into a replay check. Otherwise (or when the target
    /// connection's queue is full) the hook and request are handed back for the lane.
    pub fn replay_direct(
        &self,
        hook: Box<MirrorHook>,
        request: Bytes,
    ) -> Result<(), (Box<MirrorHook>, Bytes)> {
        let key = hook.replay_key();
        let lane = self.lanes.of(key);
        let known = known::lock(&self.lanes.known[lane]);
        if !self.lanes.idle(lane) || !lane::replay_allowed(self, &known, key, hook.seq()) {
            return Err((hook, request));
        }
        let pool = self.mirror_to();
        let Some(slot) = pool.route(key).and_then(|route| pool.reserve_now(route)) else {
            return Err((hook, request));
        };
        slot.send(request, hook);
        Ok(())
    }

    /// Where a mirrored event's lag starts: now for one event in [`LAG_SAMPLE`], else
    /// unmeasured.
    pub fn lag_start(&self) -> LagStart {
        self.lag.start(LAG_SAMPLE)
    }

    /// The target answered a direct replay: the same as the source, or the key is copied
    /// (the target had diverged; never replayed twice).
    pub fn replay_answered(&self, check: &ReplayCheck, reply: &[u8]) {
        if lane::replay_agrees(&check.source_reply, reply) {
            self.count_replayed();
            self.record_lag(check.lag);
        } else {
            let detail = lane::reply_pair(&check.source_reply, reply);
            self.counters
                .retries
                .record(RetryReason::ReplayDiffered, &check.key, &detail);
            self.copy_after_write(check.key.clone(), check.lag);
        }
    }

    /// A finished copy, counted under its one true reason and its method.
    pub fn count_copy(&self, reason: CopyReason, copied: &copy::Copied) {
        self.counters.copied(reason, copied);
        let t = &self.totals;
        t.bytes.fetch_add(copied.bytes as u64, Relaxed);
        t.by_reason[reason as usize].fetch_add(1, Relaxed);
        match copied.method {
            engines::CopyMethod::ByType => t.by_type_copies.fetch_add(1, Relaxed),
            _ => t.restore_copies.fetch_add(1, Relaxed),
        };
        match reason {
            CopyReason::Backfill => t.backfill_copied.fetch_add(1, Relaxed),
            CopyReason::Shadow => t.shadow_repaired.fetch_add(1, Relaxed),
            CopyReason::Write => t.write_copies.fetch_add(1, Relaxed),
            CopyReason::Dirty | CopyReason::Verify | CopyReason::FullPass => 0,
        };
    }

    /// A sampled read was not compared, for `reason` (one of `counters::SHADOW_SKIPS`).
    pub fn shadow_skip(&self, reason: &str) {
        if let Some(i) = self.counters.shadow_skip(reason) {
            self.totals.shadow_skipped[i].fetch_add(1, Relaxed);
        }
    }

    /// What became of a command of a source server's stream.
    pub fn count_capture(&self, action: capture::CaptureAction) {
        self.counters.capture_actions[action as usize].increment(1);
        self.totals.capture_actions[action as usize].fetch_add(1, Relaxed);
    }

    /// A write was replayed and the target agreed (by a lane or directly).
    pub fn count_replayed(&self) {
        self.counters.replayed.increment(1);
        self.totals.replayed.fetch_add(1, Relaxed);
    }

    /// A direct replay's outcome is unknown (or it never reached the target): copy the key.
    pub fn replay_unknown(&self, check: &ReplayCheck) {
        self.counters
            .retries
            .record(RetryReason::ReplayUnanswered, &check.key, &"no reply");
        self.copy_after_write(check.key.clone(), check.lag);
    }

    /// Copy `key` through its lane because a write the source applied changed it (a
    /// write that is not replayed); `lag` says when the write was answered.
    pub fn copy_after_write(&self, key: Bytes, lag: LagStart) {
        self.enqueue(LaneEvent::Copy {
            key,
            unless_known: false,
            reason: CopyReason::Write,
            lag,
        });
    }

    /// Copy `key` through its lane because a write whose outcome is unknown may have
    /// changed it (rule 4). Never folded into an earlier copy (rule 9): the write may
    /// reach the source after that copy's snapshot.
    pub fn copy_after_unknown(&self, key: Bytes, lag: LagStart) {
        let event = LaneEvent::Copy {
            key,
            unless_known: false,
            reason: CopyReason::Write,
            lag,
        };
        self.enqueue_stamped(event, false);
    }

    /// Queue an event, waiting for room (the backfill and the dirty drainer).
    pub async fn send(&self, event: LaneEvent) {
        let Some(key) = event_key(&event) else { return };
        let lane = self.lanes.of(key);
        self.lanes.queue(lane, event).await;
    }

    /// Queue a copy of `key` for `reason`, waiting for room: not "unless copied", since
    /// what the other side holds of it is not known (a dirty key, a verify repair, a full
    /// pass, a stream command copied).
    pub async fn queue_copy(&self, key: Bytes, reason: CopyReason) {
        let event = LaneEvent::Copy {
            key,
            unless_known: false,
            reason,
            lag: LagStart(None),
        };
        self.send(event).await;
    }

    /// Mark `key` dirty: it will be copied again later.
    pub fn mark_dirty(&self, key: &[u8]) {
        self.counters.dirtied.increment(1);
        self.totals.dirtied.fetch_add(1, Relaxed);
        self.dirty.mark(key);
        self.publish_dirty();
    }

    /// Publish the dirty-key gauges.
    pub fn publish_dirty(&self) {
        self.counters
            .dirty_pending
            .set(self.dirty.pending.load(Relaxed) as f64);
        self.counters
            .dirty_unpersisted
            .set(self.dirty.in_memory() as f64);
    }

    /// Whether a verify pass is needed before the cutover: the last stop was not clean,
    /// or dirty keys could not be written to their file since the last verify began.
    pub fn needs_verify(&self) -> bool {
        self.progress.needs_verify() || self.dirty.needs_verify()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.flips.phase()
    }

    /// The pool clients' requests go to now: the source while migrating, the target after.
    pub fn authority(&self) -> &Arc<Pool> {
        match self.phase() {
            Phase::Migrating => &self.source,
            Phase::Cutover | Phase::Finalized => &self.target,
        }
    }

    /// The copy connections of the authoritative pool (copies read from it).
    pub fn copy_from(&self) -> &Arc<Pool> {
        match self.phase() {
            Phase::Migrating => &self.copy_source,
            Phase::Cutover | Phase::Finalized => &self.copy_target,
        }
    }

    /// For the readiness report: a command that takes several keys and is not split,
    /// whose keys land on different target servers (it works on the source today and
    /// would not after the cutover). Only while migrating, and only for such commands.
    pub fn check_spanning(
        &self,
        spec: &crate::command::CommandSpec,
        request: &crate::resp::Request,
    ) {
        if self.target.servers.len() < 2 || self.phase() != Phase::Migrating {
            return;
        }
        let Some(keys) = crate::command::unsplit_keys(spec, request) else {
            return;
        };
        let mut servers = keys
            .iter()
            .filter_map(|k| self.target.route(k))
            .map(|r| r.server);
        let first = servers.next();
        if servers.any(|s| Some(s) != first) {
            self.engines.note_spanning(spec.name);
        }
    }

    /// What `request` needs that the servers receiving mirrored writes and shadow reads
    /// lack, if anything. While migrating, such a request is counted for the readiness
    /// report too: the app uses something the target cannot run.
    pub fn receiver_lacks(
        &self,
        spec: &crate::command::CommandSpec,
        request: &crate::resp::Request,
    ) -> Option<crate::engine::Requirement> {
        let phase = self.phase();
        let need = self
            .engines
            .receiver_lacks(engines::Direction::of(phase), spec, request)?;
        if phase == Phase::Migrating {
            self.engines.note_unsupported(need);
        }
        Some(need)
    }

    /// Which way copies go now.
    pub fn direction(&self) -> engines::Direction {
        engines::Direction::of(self.phase())
    }

    /// How `key` is copied now, given the engines of the servers that hold it on each side.
    pub fn copy_method(&self, key: &[u8]) -> engines::CopyMethod {
        match (self.copy_from().route(key), self.mirror_to().route(key)) {
            (Some(from), Some(to)) => self
                .engines
                .method(self.direction(), from.server, to.server),
            _ => engines::CopyMethod::TryRestore,
        }
    }

    /// The pool the lanes write to: the target while migrating, the source after cutover.
    pub fn mirror_to(&self) -> &Arc<Pool> {
        match self.phase() {
            Phase::Migrating => &self.target,
            Phase::Cutover | Phase::Finalized => &self.source,
        }
    }

    /// A mirror hook was made (a flip waits until none is alive).
    pub fn hook_started(&self) {
        self.flips.hook_started();
    }

    /// A mirror hook is gone (its events, if any, are queued).
    pub fn hook_finished(&self) {
        self.flips.hook_finished();
    }

    /// Send `request` (expecting `replies` replies, the last returned) to the authoritative
    /// server that owns `key`, over the copy connections.
    pub async fn from_call(
        &self,
        key: &[u8],
        request: Bytes,
        replies: u8,
    ) -> Result<Bytes, BackendError> {
        let pool = self.copy_from();
        let route = pool.route(key).ok_or(BackendError::Refused)?;
        pool.request(route.server, route.connection, request, replies)
            .await
    }

    /// Send `request` to the mirrored server that owns `key`.
    pub async fn to_call(&self, key: &[u8], request: Bytes) -> Result<Bytes, BackendError> {
        let pool = self.mirror_to();
        let route = pool.route(key).ok_or(BackendError::Refused)?;
        pool.request(route.server, route.connection, request, 1)
            .await
    }

    /// Queue `request` to the mirrored server that owns `key`, on a connection speaking
    /// `protocol`, without waiting for its reply.
    pub async fn to_submit(
        &self,
        key: &[u8],
        request: Bytes,
        protocol: Protocol,
    ) -> Result<tokio::sync::oneshot::Receiver<crate::upstream::ReplyResult>, BackendError> {
        let pool = self.mirror_to();
        let route = pool.route(key).ok_or(BackendError::Refused)?;
        pool.submit(route.server, route.connection, request, 1, protocol)
            .await
    }

    /// Record a mirror lag (source reply to target apply) when its event was sampled
    /// ([`Migration::lag_start`]).
    pub fn record_lag(&self, start: LagStart) {
        let Some(since) = start.0 else {
            return;
        };
        let seconds = since.elapsed().as_secs_f64();
        self.counters.lag.record(seconds);
        self.lag.record(seconds);
    }

    /// Apply the runtime keys of `settings` (a reload): rate limits, shadow ratio, TTL
    /// tolerance; the other keys must not have changed (the reload checked).
    pub fn apply_settings(&self, settings: &MigrateSettings) {
        self.set_rate_limit(settings.backfill_keys_per_second);
        self.backfill
            .set_byte_limit(settings.backfill_bytes_per_second);
        self.tunables
            .shadow_ratio
            .store(settings.shadow_ratio.to_bits(), Relaxed);
        self.tunables
            .ttl_tolerance_ms
            .store(settings.ttl_tolerance_ms, Relaxed);
        tracing::info!(
            pool = self.source.name(),
            keys_per_second = settings.backfill_keys_per_second,
            bytes_per_second = settings.backfill_bytes_per_second,
            shadow_ratio = settings.shadow_ratio,
            ttl_tolerance_ms = settings.ttl_tolerance_ms,
            "migration settings reloaded"
        );
    }

    /// Take the source servers' writes from their replication `streams` (one per source
    /// server, in order) from now on: the proxy stops mirroring (rule 10).
    /// (Not after a cutover: the streams given are the source's.)
    fn start_capture(
        self: &Arc<Self>,
        streams: Vec<crate::upstream::replication::ReplicationStream>,
    ) {
        match self.phase() {
            Phase::Migrating => {
                capture::follow(self, capture::Side::Source, streams);
                tracing::info!(
                    pool = self.source.name(),
                    "capture: the source servers' replication streams feed the migration; the proxy only forwards"
                );
            }
            Phase::Cutover | Phase::Finalized => {
                drop(streams);
                tracing::info!(
                    pool = self.source.name(),
                    "restarted after the cutover: the proxy mirrors writes back to the source; the capture follows the authority again from the next flip"
                );
            }
        }
    }

    /// The capture generation now (rule 12's stale copies).
    pub fn capture_generation(&self) -> u64 {
        self.capture.generation()
    }

    /// Whether replication capture feeds the lanes (the proxy mirrors nothing).
    pub fn capturing(&self) -> bool {
        self.capture.on()
    }

    /// Start the backfill of a migration started without one (by a reload) once the
    /// source's servers have answered everything queued on them so far: requests routed
    /// before the migration was attached, so not mirrored (a key copied before the source
    /// applied one would lack it). A source server that hangs holds the backfill, not the
    /// reload: the wait is logged every 5 s (`ANSWER_WARNING`) until the server answers,
    /// `/status` and `cutover_backfill_state{state="waiting_for_source"}` say the backfill
    /// waits for the source, and `cutover_backfill_source_wait_seconds` takes how long it did.
    pub fn spawn_backfill_once_answered(self: &Arc<Self>) {
        self.backfill.waiting_for_source.store(true, Relaxed);
        self.counters.set_state("waiting_for_source");
        let migration = self.clone();
        tokio::spawn(async move {
            let source = &migration.source;
            let started = tokio::time::Instant::now();
            loop {
                let deadline = tokio::time::Instant::now() + ANSWER_WARNING;
                let late = source.behind_every_request_until(deadline).await;
                if late.is_empty() {
                    break;
                }
                let servers: Vec<&str> = late
                    .iter()
                    .map(|&server| source.servers[server].name.as_str())
                    .collect();
                tracing::warn!(
                    pool = source.name(),
                    servers = %servers.join(", "),
                    "the new migration's backfill waits for source servers to answer what was sent to them before it started (hung?)"
                );
            }
            migration
                .counters
                .source_wait
                .record(started.elapsed().as_secs_f64());
            migration.backfill.waiting_for_source.store(false, Relaxed);
            migration.counters.set_state("idle");
            if migration.phase() == Phase::Migrating {
                backfill::run(migration).await;
            }
        });
    }

    /// Change the backfill's keys-per-second limit (0: unlimited).
    pub fn set_rate_limit(&self, keys_per_second: u64) {
        self.backfill.set_rate_limit(keys_per_second);
        self.counters.rate_limit.set(keys_per_second as f64);
    }

    /// Whether the backfill is complete, no full pass after a server's restart is still
    /// queueing keys (rule 17), every lane is empty and no dirty key waits.
    pub fn drained(&self) -> bool {
        let (queued, dirty) = self.backlog();
        self.backfill.done.load(Relaxed)
            && !self.restarts.passes_running()
            && queued == 0
            && dirty == 0
    }

    /// A clean stop: wait (at most `limit`) until every lane has processed every event
    /// (the one it is acting on included); if they are still busy (a slow or dead
    /// target), spill what is left into dirty keys, which the dirty-key file keeps for the
    /// next run (rule 7), and wait (at most `SPILL_LIMIT`, 3 s) for that. The state file is
    /// then saved as clean, so the next start needs no verify pass, unless an event was
    /// still being acted on, or a dirty key could not be written to the file.
    pub async fn stop(&self, limit: std::time::Duration) {
        let settled = |deadline: tokio::time::Instant| async move {
            while !self.lanes.all_idle() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            self.lanes.all_idle()
        };
        let mut idle = settled(tokio::time::Instant::now() + limit).await;
        if !idle {
            let (queued, _) = self.backlog();
            tracing::warn!(
                pool = self.source.name(),
                queued,
                "stopping with mirror events still queued (the target is slow or down): their keys are marked dirty, and the next run copies them"
            );
            self.lanes.spill();
            idle = settled(tokio::time::Instant::now() + SPILL_LIMIT).await;
        }
        self.progress.advance_to(&self.lanes.processed_now());
        let clean = idle && !self.dirty.needs_verify();
        self.save_state(clean);
        self.discard_temporary_files();
    }

    /// With no state file, the dirty-key file is named after this process, and the next
    /// run starts over (its backfill copies every key): once this one is done with it,
    /// nothing reads it again, so it goes.
    pub fn discard_temporary_files(&self) {
        if self.settings.state_file.is_none() {
            self.dirty.discard_file();
        }
    }

    /// Save the state file now, marking a clean stop when `clean`.
    pub fn save_state(&self, clean: bool) {
        state::save(self, clean);
    }

    /// Mirror events waiting in lanes, and dirty keys waiting to be copied again.
    pub fn backlog(&self) -> (u64, u64) {
        (self.lanes.queued(), self.dirty.pending.load(Relaxed))
    }

    /// Bring the gauges read from the migration's state up to date (before a scrape):
    /// lane depth, known-copied size, dirty keys, backfill progress.
    pub fn publish_metrics(&self) {
        let c = &self.counters;
        c.lane_depth.set(self.lanes.queued() as f64);
        let (keys, bytes) = self.lanes.known_size();
        c.known_keys.set(keys as f64);
        c.known_bytes.set(bytes as f64);
        self.publish_dirty();
        let (ratio, eta) = self.backfill_progress();
        c.progress.set(ratio);
        c.eta.set(eta.unwrap_or(-1.0));
        let now = marker::now_ms();
        for (i, state) in self.capture.all().iter().enumerate() {
            if let (Some(offset), Some(commands), Some(lag), Some(lag_seconds)) = (
                c.capture_offset.get(i),
                c.capture_commands.get(i),
                c.capture_lag.get(i),
                c.capture_lag_seconds.get(i),
            ) {
                let applied = state.offset.load(Relaxed);
                offset.set(applied as f64);
                commands.absolute(state.commands.load(Relaxed));
                lag.set(state.master_offset.load(Relaxed).saturating_sub(applied) as f64);
                lag_seconds.set(state.lag.seconds(now));
            }
            if let Some(disconnected) = c.capture_disconnected.get(i) {
                disconnected.set(state.down_seconds(now));
            }
        }
        c.capture_pending
            .set(self.markers.pending.load(Relaxed).max(0) as f64);
    }
}

impl Migration {
    /// The backfill's progress (0 to 1) and its ETA in seconds (`None`: unknown, the
    /// backfill being paused or not yet moving).
    pub fn backfill_progress(&self) -> (f64, Option<f64>) {
        self.backfill.progress(self.totals.scanned.load(Relaxed))
    }

    /// Sample the scan rate and publish progress and ETA (every checkpoint).
    pub fn publish_progress(&self) {
        self.backfill.sample_rate(self.totals.scanned.load(Relaxed));
        let (ratio, eta) = self.backfill_progress();
        self.counters.progress.set(ratio);
        self.counters.eta.set(eta.unwrap_or(-1.0));
    }
}

/// How long a stop waits for the lanes to spill what they still hold into dirty keys.
const SPILL_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The key an event is about.
fn event_key(event: &LaneEvent) -> Option<&Bytes> {
    match event {
        LaneEvent::Write { key, .. }
        | LaneEvent::Copy { key, .. }
        | LaneEvent::Replicated { key, .. }
        | LaneEvent::Marker { key, .. }
        | LaneEvent::Shadow {
            read: ShadowRead { key, .. },
            ..
        } => Some(key),
        LaneEvent::DropKnown => None,
    }
}
