//! The migration engine: mirroring, lanes, copies and the backfill, following the lane
//! rules of DESIGN.md so the target ends equal to the source whatever the interleaving
//! of live writes and copies.
//!
//! One [`Migration`] serves one source pool (the pool clients use) and its `migrate_to`
//! target. Writes through the proxy carry a [`MirrorHook`](mirror::MirrorHook) (an
//! upstream reply hook); the backfill scans the source; both feed the lanes, and only
//! lanes write to the target. The offline jobs (`cutover migrate`, `cutover verify`) run
//! the same engine with no client session at all.
//!
//! May import: `config`, `hash`, `resp`, `command`, `engine`, `upstream`. Never `proxy`
//! or `admin`.

mod backfill;
mod copy;
mod counters;
mod dirty;
pub mod engines;
mod flip;
pub mod key_type;
pub mod known;
mod lag;
mod lane;
pub mod mirror;
pub mod offline;
pub mod phase;
mod retries;
pub mod shadow;
mod state;
mod stream;
mod structural;
pub mod verify;

use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst,
};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

pub use copy::CopyReason;
pub use counters::MigrationCounters;
pub use flip::{FlipError, Flipped};
pub use lane::{LaneEvent, Queued};
pub use phase::Phase;
use retries::RetryReason;

use crate::config::{MigrateSettings, PoolConfig};
use crate::resp::Protocol;
use crate::upstream::{BackendError, Pool};
use dirty::DirtyKeys;
use known::{KnownCopied, Salt};
use lag::LagStart;
use mirror::{MirrorHook, ReplayCheck, ShadowRead};

/// Mirror events queued above which `/status` says the lanes are behind.
const STATUS_BACKLOG: u64 = 1000;
/// Smallest queue a lane gets, whatever `mirror_queue_limit` says.
const MIN_LANE_QUEUE: usize = 16;

/// A running migration from one source pool to its target.
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
    /// The phase (a [`Phase`] as a byte).
    phase: AtomicU8,
    /// Holds new requests while authority flips.
    pub gate: phase::Gate,
    /// Mirror hooks alive: writes (and sampled reads) sent whose events are not queued yet.
    hooks_live: AtomicUsize,
    /// Serializes flips.
    flip_lock: tokio::sync::Mutex<()>,
    /// How long the last flip held requests, in microseconds.
    pub last_pause_us: AtomicU64,
    /// Recent mirror lags, for `/status`.
    pub lag: lag::LagWindow,
    /// Keys on the source servers when the backfill started (DBSIZE), for progress.
    pub total_keys: AtomicU64,
    /// The last verify pass's result, and whether one is running.
    pub verify: verify::VerifyState,
    /// The backfill's recent scan rate: when it was last sampled, keys scanned then, and
    /// the smoothed rate in keys per second.
    scan_rate: std::sync::Mutex<(std::time::Instant, u64, f64)>,
    /// The `migrate:` settings.
    pub settings: MigrateSettings,
    /// Fingerprint salts of the known-copied sets.
    pub salt: Salt,
    /// The sequence counter every mirrored write takes a number from (rule 2).
    seq: AtomicU64,
    /// Senders to the lanes.
    lanes: Vec<mpsc::Sender<Queued>>,
    /// Stamps events as they are queued (rule 9: a copy covers every foldable event
    /// stamped before it began).
    stamps: AtomicU64,
    /// Events ever queued to each lane (for forgetting `copied_at` safely).
    pub lane_enqueued: Vec<AtomicU64>,
    /// Mirrored events seen by [`Migration::lag_start`] (which measures one in
    /// [`LAG_SAMPLE`]).
    lag_tick: AtomicU64,
    /// Each lane's known-copied set, shared with direct replays.
    pub known: Vec<std::sync::Mutex<KnownCopied>>,
    /// The migration's metrics.
    pub counters: MigrationCounters,
    /// Keys to copy again.
    pub(crate) dirty: DirtyKeys,
    /// Set when every source server has been scanned.
    pub backfill_done: AtomicBool,
    /// Set when this process's backfill scanned every source server from its start: every
    /// key then passed through these lanes, which know which keys have TTLs and may drop
    /// the rest of their known-copied sets (rule 8), now and at a flip.
    pub lanes_know_every_key: AtomicBool,
    /// True while the backfill is paused.
    paused: watch::Sender<bool>,
    /// Backfill limit in keys per second (0: unlimited), changeable at run time.
    rate_limit: AtomicU64,
    /// Backfill limit in payload bytes per second (0: unlimited), changeable at run time.
    byte_limit: AtomicU64,
    /// Bounds the copies in flight at once (`copies_in_flight`).
    pub copy_slots: tokio::sync::Semaphore,
    /// Running totals (readable, for progress, `/status` and summaries).
    pub totals: Totals,
    /// Events each lane has processed (for safe checkpoints).
    pub lane_processed: Vec<AtomicU64>,
    /// Backfill progress per source server, saved to the state file.
    pub progress: state::Progress,
    /// Both sides' engines (read at start), which decide how keys are copied each way.
    pub engines: engines::Engines,
}

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
    pub by_reason: [AtomicU64; 5],
    /// Sampled reads compared with the target.
    pub shadow_checked: AtomicU64,
    /// Sampled reads whose target reply disagreed (confirmed by a second read).
    pub shadow_mismatches: AtomicU64,
    /// Keys copied again because of a shadow mismatch.
    pub shadow_repaired: AtomicU64,
    /// First disagreements that a second read did not confirm (the key was changing).
    pub shadow_unconfirmed: AtomicU64,
    /// Reads not compared, by reason (in [`counters::SHADOW_SKIPS`]'s order).
    pub shadow_skipped: [AtomicU64; 5],
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

    /// [`Migration::start`], with or without the backfill (`cutover verify` needs only
    /// the lanes, for repairs).
    pub fn start_with(
        source: Arc<Pool>,
        source_config: &PoolConfig,
        target_config: &PoolConfig,
        with_backfill: bool,
    ) -> Arc<Migration> {
        let settings = source_config
            .migration
            .as_ref()
            .map(|m| m.settings.clone())
            .unwrap_or_default();
        let mut copy_config = source_config.clone();
        copy_config.name = format!("{}.copy", source_config.name);
        copy_config.preconnect = false;
        let copy_source = Pool::start(copy_config);
        let target = Pool::start(target_config.clone());
        let mut copy_target_config = target_config.clone();
        copy_target_config.name = format!("{}.copy", target_config.name);
        copy_target_config.preconnect = false;
        let copy_target = Pool::start(copy_target_config);
        let lanes = settings.lanes.max(1) as usize;
        let per_lane = (settings.mirror_queue_limit as usize / lanes).max(MIN_LANE_QUEUE);
        let mut receivers = Vec::with_capacity(lanes);
        let senders = (0..lanes)
            .map(|_| {
                let (tx, rx) = mpsc::channel(per_lane);
                receivers.push(rx);
                tx
            })
            .collect();
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
        let counters = MigrationCounters::new(&source_config.name);
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
        let migration = Arc::new(Migration {
            source,
            copy_source,
            target,
            copy_target,
            phase: AtomicU8::new(phase.to_u8()),
            gate: phase::Gate::default(),
            hooks_live: AtomicUsize::new(0),
            flip_lock: tokio::sync::Mutex::new(()),
            last_pause_us: AtomicU64::new(0),
            lag: lag::LagWindow::default(),
            total_keys: AtomicU64::new(0),
            verify: verify::VerifyState::default(),
            scan_rate: std::sync::Mutex::new((std::time::Instant::now(), progress.loaded[0], 0.0)),
            salt: progress.salt(),
            seq: AtomicU64::new(1),
            lanes: senders,
            stamps: AtomicU64::new(0),
            lane_enqueued: (0..lanes).map(|_| AtomicU64::new(0)).collect(),
            known: (0..lanes).map(|_| Default::default()).collect(),
            lag_tick: AtomicU64::new(0),
            counters,
            dirty: DirtyKeys::open(dirty_path),
            backfill_done: AtomicBool::new(false),
            lanes_know_every_key: AtomicBool::new(false),
            paused: watch::channel(false).0,
            rate_limit: AtomicU64::new(settings.backfill_keys_per_second),
            byte_limit: AtomicU64::new(settings.backfill_bytes_per_second),
            copy_slots: tokio::sync::Semaphore::new(settings.copies_in_flight.max(1) as usize),
            totals: Totals {
                scanned: AtomicU64::new(progress.loaded[0]),
                backfill_copied: AtomicU64::new(progress.loaded[1]),
                bytes: AtomicU64::new(progress.loaded[2]),
                ..Totals::default()
            },
            lane_processed: (0..lanes).map(|_| AtomicU64::new(0)).collect(),
            engines,
            progress,
            settings,
        });
        tokio::spawn(engines::detect(migration.clone()));
        for (index, rx) in receivers.into_iter().enumerate() {
            tokio::spawn(lane::run(migration.clone(), index, rx));
        }
        if with_backfill && phase == Phase::Migrating {
            tokio::spawn(backfill::run(migration.clone()));
        }
        tokio::spawn(dirty::drain(migration.clone()));
        tokio::spawn(state::checkpoints(migration.clone()));
        tracing::info!(
            source = migration.source.name(),
            target = migration.target.name(),
            lanes,
            phase = phase.name(),
            dirty_file = %migration.dirty.path.display(),
            "migration started"
        );
        migration
    }

    /// Take the next sequence number: the counter's value after this write, so a write
    /// numbered after a copy's snapshot (`copied_at` = the counter then) gets a larger
    /// number, and one numbered before gets one no larger (rule 3's `copied_at < seq`).
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, SeqCst) + 1
    }

    /// The counter's current value (a copy's `copied_at`).
    pub fn seq_now(&self) -> u64 {
        self.seq.load(SeqCst)
    }

    /// A sequence number below which every mirrored write has had its events queued: the
    /// counter, or the oldest write still in flight on any source connection if lower.
    pub fn low_water(&self) -> u64 {
        let counter = self.seq.load(SeqCst);
        self.source
            .oldest_write_in_flight()
            .min(self.target.oldest_write_in_flight())
            .min(counter)
    }

    /// Number of lanes.
    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    /// The lane of `key` (FNV-1a, so a key always takes the same lane).
    fn lane_of(&self, key: &[u8]) -> usize {
        let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (h % self.lanes.len() as u64) as usize
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
        let lane = self.lane_of(&key);
        self.lane_enqueued[lane].fetch_add(1, SeqCst);
        let queued = Queued {
            stamp: self.stamps.fetch_add(1, SeqCst),
            foldable,
            event,
        };
        match self.lanes[lane].try_send(queued) {
            Ok(()) => self.counters.lane_depth.increment(1.0),
            Err(_) => {
                self.lane_enqueued[lane].fetch_sub(1, SeqCst);
                self.mark_dirty(&key);
            }
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
        let lane = self.lane_of(key);
        let known = known::lock(&self.known[lane]);
        if !self.lane_idle(lane) || !lane::replay_allowed(self, &known, key, hook.seq()) {
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
        let due = self
            .lag_tick
            .fetch_add(1, Relaxed)
            .is_multiple_of(LAG_SAMPLE);
        LagStart(due.then(tokio::time::Instant::now))
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
            CopyReason::Dirty | CopyReason::Verify => 0,
        };
    }

    /// A sampled read was not compared, for `reason` (one of [`counters::SHADOW_SKIPS`]).
    pub fn shadow_skip(&self, reason: &str) {
        if let Some(i) = self.counters.shadow_skip(reason) {
            self.totals.shadow_skipped[i].fetch_add(1, Relaxed);
        }
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

    /// The next stamp: a copy that reads it before its snapshot covers every foldable
    /// event stamped below it (rule 9).
    pub fn stamp_now(&self) -> u64 {
        self.stamps.load(SeqCst)
    }

    /// Queue an event, waiting for room (the backfill and the dirty drainer).
    pub async fn send(&self, event: LaneEvent) {
        let Some(key) = event_key(&event) else { return };
        let lane = self.lane_of(key);
        self.send_to_lane(lane, event).await;
    }

    /// Queue an event on lane `lane`, waiting for room.
    pub async fn send_to_lane(&self, lane: usize, event: LaneEvent) {
        self.lane_enqueued[lane].fetch_add(1, SeqCst);
        self.counters.lane_depth.increment(1.0);
        let queued = Queued {
            stamp: self.stamps.fetch_add(1, SeqCst),
            foldable: true,
            event,
        };
        if self.lanes[lane].send(queued).await.is_err() {
            self.lane_enqueued[lane].fetch_sub(1, SeqCst);
            self.counters.lane_depth.decrement(1.0);
        }
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
        Phase::from_u8(self.phase.load(SeqCst))
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
        self.hooks_live.fetch_add(1, SeqCst);
    }

    /// A mirror hook is gone (its events, if any, are queued).
    pub fn hook_finished(&self) {
        self.hooks_live.fetch_sub(1, SeqCst);
    }

    /// Whether every lane has processed every event queued to it.
    pub fn lanes_idle(&self) -> bool {
        (0..self.lane_count()).all(|lane| self.lane_idle(lane))
    }

    /// Whether lane `lane` has processed every event queued to it (none waits or runs).
    fn lane_idle(&self, lane: usize) -> bool {
        self.lane_processed[lane].load(SeqCst) >= self.lane_enqueued[lane].load(SeqCst)
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

    /// Pause or resume the backfill.
    pub fn set_paused(&self, paused: bool) {
        let _ = self.paused.send(paused);
    }

    /// Change the backfill's keys-per-second limit (0: unlimited).
    pub fn set_rate_limit(&self, keys_per_second: u64) {
        self.rate_limit.store(keys_per_second, Relaxed);
        self.counters.rate_limit.set(keys_per_second as f64);
    }

    /// Change the backfill's bytes-per-second limit (0: unlimited).
    pub fn set_byte_limit(&self, bytes_per_second: u64) {
        self.byte_limit.store(bytes_per_second, Relaxed);
    }

    /// Whether the backfill is complete, every lane is empty and no dirty key waits.
    pub fn drained(&self) -> bool {
        let (queued, dirty) = self.backlog();
        self.backfill_done.load(Relaxed) && queued == 0 && dirty == 0
    }

    /// A clean stop: wait (at most `limit`) for the lanes to empty, then save the state
    /// file as clean so the next start resumes without requiring a verify pass.
    pub async fn stop(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.backlog().0 > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let processed: Vec<u64> = self.lane_processed.iter().map(|p| p.load(SeqCst)).collect();
        self.progress.advance_to(&processed);
        let clean = self.backlog().0 == 0;
        self.save_state(clean);
    }

    /// Save the state file now, marking a clean stop when `clean`.
    pub fn save_state(&self, clean: bool) {
        state::save(self, clean);
    }

    /// Mirror events waiting in lanes, and dirty keys waiting to be copied again.
    pub fn backlog(&self) -> (u64, u64) {
        let queued: usize = self
            .lanes
            .iter()
            .map(|l| l.max_capacity() - l.capacity())
            .sum();
        (queued as u64, self.dirty.pending.load(Relaxed))
    }
}

impl Migration {
    /// The migration's state for `/status`, as a JSON object.
    pub fn status_json(&self) -> serde_json::Value {
        use serde_json::json;
        let (queued, dirty) = self.backlog();
        let done = self.backfill_done.load(Relaxed);
        let paused = *self.paused.borrow();
        let state = if done {
            "done"
        } else if paused {
            "paused"
        } else if self.phase() != Phase::Migrating {
            "stopped"
        } else {
            "running"
        };
        let t = &self.totals;
        let (progress, eta) = self.backfill_progress();
        let verify = self
            .verify
            .last()
            .map_or(serde_json::Value::Null, |r| r.json());
        // Under load the lanes are rarely empty at one instant; a cutover waits for a
        // moment when they are. Here only a backlog that is not draining counts.
        let blockers = if self.phase() == Phase::Migrating {
            self.readiness(queued < STATUS_BACKLOG)
        } else {
            Vec::new()
        };
        let scanned = t.scanned.load(Relaxed);
        json!({
            "phase": self.phase().name(),
            "source": self.source.name(),
            "target": self.target.name(),
            "authority": self.authority().name(),
            "needs_verify": self.needs_verify(),
            "backfill": {
                "state": state,
                "done": done,
                "progress": (progress * 10_000.0).round() / 10_000.0,
                "eta_seconds": eta.map(f64::round),
                "keys_total": self.total_keys.load(Relaxed).max(scanned),
                "keys_scanned": scanned,
                "keys_copied": t.backfill_copied.load(Relaxed),
                "keys_skipped": t.skipped.load(Relaxed),
                "bytes_copied": t.bytes.load(Relaxed),
                "rate_limit_keys_per_second": self.rate_limit.load(Relaxed),
                "rate_limit_bytes_per_second": self.byte_limit.load(Relaxed),
            },
            "engines": self.engines.status_json(),
            "readiness": self.engines.readiness_json(),
            "mirror": {
                "queued": queued,
                "dirty": dirty,
                "lag_p50_ms": self.lag.quantile_ms(0.5),
                "lag_p99_ms": self.lag.quantile_ms(0.99),
                "replayed": t.replayed.load(Relaxed),
                "copied": t.write_copies.load(Relaxed),
                "dirtied": t.dirtied.load(Relaxed),
                "dirty_unpersisted": self.dirty.unpersisted.load(Relaxed),
                "dirty_in_memory": self.dirty.in_memory(),
                "folded": t.folded.load(Relaxed),
            },
            "copies": {
                "restore": t.restore_copies.load(Relaxed),
                "by_type": t.by_type_copies.load(Relaxed),
                "refused_then_by_type": t.rejected.load(Relaxed),
                "stream_parts_not_carried": t.stream_parts_not_carried.load(Relaxed),
                "by_reason": CopyReason::ALL
                    .iter()
                    .map(|r| (r.label().to_string(), t.by_reason[*r as usize].load(Relaxed).into()))
                    .collect::<serde_json::Map<_, _>>(),
            },
            "shadow": {
                "ratio": self.settings.shadow_ratio,
                "checked": t.shadow_checked.load(Relaxed),
                "mismatches": t.shadow_mismatches.load(Relaxed),
                "unconfirmed": t.shadow_unconfirmed.load(Relaxed),
                "repaired": t.shadow_repaired.load(Relaxed),
                "skipped": counters::SHADOW_SKIPS
                    .iter()
                    .zip(&t.shadow_skipped)
                    .map(|(r, n)| (r.to_string(), n.load(Relaxed).into()))
                    .collect::<serde_json::Map<_, _>>(),
            },
            "verify": {
                "running": self.verify.running(),
                "checked": self.verify.checked.load(Relaxed),
                "last": verify,
            },
            "cutover": {
                "ready": self.phase() == Phase::Migrating && blockers.is_empty(),
                "blockers": blockers,
                "last_pause_ms": self.last_pause_us.load(Relaxed) as f64 / 1000.0,
            },
        })
    }
}

impl Migration {
    /// The backfill's progress (0 to 1) and its ETA in seconds (`None`: unknown, the
    /// backfill being paused or not yet moving).
    pub fn backfill_progress(&self) -> (f64, Option<f64>) {
        if self.backfill_done.load(Relaxed) {
            return (1.0, Some(0.0));
        }
        let scanned = self.totals.scanned.load(Relaxed);
        let total = self.total_keys.load(Relaxed);
        let ratio = if total == 0 {
            0.0
        } else {
            (scanned as f64 / total as f64).min(0.999)
        };
        let rate = self.scan_rate.lock().map_or(0.0, |r| r.2);
        let eta = (rate > 0.0).then(|| total.saturating_sub(scanned) as f64 / rate);
        (ratio, eta)
    }

    /// Sample the scan rate and publish progress and ETA (every checkpoint).
    pub fn publish_progress(&self) {
        let scanned = self.totals.scanned.load(Relaxed);
        if let Ok(mut rate) = self.scan_rate.lock() {
            let seconds = rate.0.elapsed().as_secs_f64();
            if seconds > 0.0 {
                let now = scanned.saturating_sub(rate.1) as f64 / seconds;
                rate.2 = if rate.2 == 0.0 {
                    now
                } else {
                    0.7 * rate.2 + 0.3 * now
                };
                *rate = (std::time::Instant::now(), scanned, rate.2);
            }
        }
        let (ratio, eta) = self.backfill_progress();
        self.counters.progress.set(ratio);
        self.counters.eta.set(eta.unwrap_or(-1.0));
    }
}

/// The key an event is about.
fn event_key(event: &LaneEvent) -> Option<&Bytes> {
    match event {
        LaneEvent::Write { key, .. }
        | LaneEvent::Copy { key, .. }
        | LaneEvent::Shadow {
            read: ShadowRead { key, .. },
            ..
        } => Some(key),
        LaneEvent::DropKnown => None,
    }
}
