//! Replication capture: the migration's second feed of writes. One replication client per
//! server of the authoritative side (`upstream::replication`) receives every write that
//! server applied, from any client (this proxy, other proxies, scripts, cron jobs) and its
//! own expiry and eviction deletes, in the order it applied them, and puts each into its
//! key's lane: replayed, or its keys copied (rules 10 and 12).
//!
//! The capture follows the authority: the source servers while migrating; after a cutover
//! the target servers, whose streams are opened before the flip and stand by until the
//! flip reads each one's offset (the fence): what came before it is cutover's own copying,
//! what comes after is mirrored back to the source. A rollback swaps them back.
//!
//! Back-pressure: a command is taken from the stream only once its events are queued
//! (waiting for room in the lanes), so a slow receiver slows the stream's socket, never
//! this process's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};

use super::Migration;
use super::marker::LagClock;
use crate::config::ServerAddr;
use crate::resp::Request;
use crate::upstream::Pool;
use crate::upstream::replication::{Position, ReplicationError, ReplicationStream, Sync};

/// What became of a command of the stream (the index of its counter in
/// `super::counters::CAPTURE_ACTIONS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureAction {
    /// Replayed on the target as the master propagated it.
    Replayed = 0,
    /// Its keys copied.
    Copied = 1,
    /// Dropped: a copy's snapshot holds it.
    InCopy = 2,
    /// Not a write of the pool's database.
    Ignored = 3,
    /// One of this migration's markers.
    Marker = 4,
}

/// Which pool's servers a capture follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source pool's servers (authoritative while migrating).
    Source = 0,
    /// The target pool's servers (authoritative after a cutover).
    Target = 1,
}

impl Side {
    /// Both sides, in the order of their numbers.
    pub const BOTH: [Side; 2] = [Side::Source, Side::Target];

    /// The side authoritative in `phase`, which the capture follows (rule 13): the source
    /// while migrating, the target after a cutover, neither after finalize.
    pub fn authority(phase: super::Phase) -> Option<Side> {
        match phase {
            super::Phase::Migrating => Some(Side::Source),
            super::Phase::Cutover => Some(Side::Target),
            super::Phase::Finalized => None,
        }
    }

    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Source => Side::Target,
            Side::Target => Side::Source,
        }
    }

    /// The side's name in `/status` and the log.
    pub fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }

    /// The side's pool (placement, names, database).
    pub fn pool(self, migration: &Migration) -> &Arc<Pool> {
        match self {
            Side::Source => &migration.source,
            Side::Target => &migration.target,
        }
    }

    /// The side's copy connections (offsets, heartbeats, key lookups, full passes).
    pub(in crate::migrate) fn copy_pool(self, migration: &Migration) -> &Arc<Pool> {
        match self {
            Side::Source => &migration.copy_source,
            Side::Target => &migration.copy_target,
        }
    }
}

/// The capture of one migration: which side it follows, and each server's state.
#[derive(Debug)]
pub struct Capture {
    /// The source pool's servers first, then the target pool's.
    states: Vec<CaptureState>,
    /// Servers in the source pool.
    sources: usize,
    /// Set while streams feed the lanes: the proxy then only forwards (no mirror hooks).
    on: AtomicBool,
    /// The side followed (a [`Side`] as a number).
    side: AtomicU8,
    /// Grows at every full sync and every change of side: a copy made in an earlier
    /// generation may have lost its marker (rule 12), so its key is copied at its next
    /// stream write instead of dropped or replayed.
    generation: AtomicU64,
}

impl Capture {
    /// Off, for `sources` source and `targets` target servers.
    pub fn new(sources: usize, targets: usize) -> Capture {
        Capture {
            states: (0..sources + targets).map(|_| Default::default()).collect(),
            sources,
            on: AtomicBool::new(false),
            side: AtomicU8::new(Side::Source as u8),
            generation: AtomicU64::new(0),
        }
    }

    /// Whether streams feed the lanes.
    pub fn on(&self) -> bool {
        self.on.load(Relaxed)
    }

    /// The side followed (or last followed).
    pub fn side(&self) -> Side {
        if self.side.load(Relaxed) == Side::Target as u8 {
            Side::Target
        } else {
            Side::Source
        }
    }

    /// Every server's state, the source's first (the order of the metric handles).
    pub fn all(&self) -> &[CaptureState] {
        &self.states
    }

    /// The states of `side`'s servers.
    pub fn states(&self, side: Side) -> &[CaptureState] {
        match side {
            Side::Source => &self.states[..self.sources],
            Side::Target => &self.states[self.sources..],
        }
    }

    /// The current generation (rule 12).
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// Start a new generation: copies made before may have lost their marker.
    fn new_generation(&self) {
        self.generation.fetch_add(1, Relaxed);
    }

    /// Follow `side` from now on (its tasks already run).
    fn follow(&self, side: Side) {
        self.side.store(side as u8, Relaxed);
        self.new_generation();
        self.on.store(true, Relaxed);
    }

    /// Stop the tasks of `side`'s streams (they close within a second).
    fn stop(&self, side: Side) {
        for state in self.states(side) {
            state.term.fetch_add(1, Relaxed);
            state.running.store(false, Relaxed);
        }
    }

    /// Stop following any side: the proxy mirrors from now on.
    pub fn turn_off(&self) {
        self.on.store(false, Relaxed);
        self.stop(Side::Source);
        self.stop(Side::Target);
    }
}

/// A capture's state, per server.
#[derive(Debug, Default)]
pub struct CaptureState {
    /// Set while a task follows this server's stream; cleared to stop it.
    running: AtomicBool,
    /// The term of the task that may follow this server: a task whose term is no longer
    /// this one stops (a stopped side's old task must never wake up again when the side
    /// is followed anew, or two tasks would apply the same stream).
    term: AtomicU64,
    /// Commands whose offset is at most this are skipped: a stream opened before a flip
    /// stands by (`u64::MAX`) until the flip reads the server's offset.
    fence: AtomicU64,
    /// Where the last stream stopped, to continue from if the server can.
    last: std::sync::Mutex<Option<Position>>,
    /// The replication id of the stream followed now.
    replid: std::sync::Mutex<String>,
    /// Offsets applied, each with the events queued per lane then: safe once the lanes
    /// processed those (a leader's checkpoint, which another member continues from).
    reached: std::sync::Mutex<std::collections::VecDeque<(u64, Vec<u64>)>>,
    /// The last safe position: every command up to it is on the other side.
    safe: std::sync::Mutex<Option<Position>>,
    /// Stream offset applied so far (the lanes have its events).
    pub offset: AtomicU64,
    /// The server's own `master_repl_offset`, read once a second: the lag is the
    /// difference.
    pub master_offset: AtomicU64,
    /// Commands taken from the stream.
    pub commands: AtomicU64,
    /// Reconnects that continued (`+CONTINUE`).
    pub continued: AtomicU64,
    /// Reconnects that needed a full sync: writes in the gap are unknown.
    pub full_resyncs: AtomicU64,
    /// The stream's delay, from heartbeat markers.
    pub lag: LagClock,
    /// Since when (milliseconds on the marker clock) the stream of a server followed now
    /// has been down and not yet back; 0 while it is open, or not followed.
    pub down_since_ms: AtomicU64,
    /// Reconnects tried and failed (the server down, or refusing the replica).
    pub failed_reconnects: AtomicU64,
    /// Why the last reconnect failed.
    pub last_error: std::sync::Mutex<String>,
}

impl CaptureState {
    /// Seconds the stream has been down at `now_ms` (0 while it is open).
    pub fn down_seconds(&self, now_ms: u64) -> f64 {
        match self.down_since_ms.load(Relaxed) {
            0 => 0.0,
            since => now_ms.saturating_sub(since) as f64 / 1000.0,
        }
    }
}

mod apply;
mod follow;

use apply::copy_every_key;
use follow::run;

/// Open a replication stream to every server of `pool`; the first refusal, naming the
/// server and what it said, if any.
pub async fn open_all(pool: &Arc<Pool>) -> Result<Vec<ReplicationStream>, String> {
    let unknown = vec![None; pool.servers.len()];
    let opened = open_each(pool, &unknown).await?;
    Ok(opened.into_iter().map(|(stream, _)| stream).collect())
}

/// Open a stream to every server of `pool` at once, each continuing from its position in
/// `from` where the server can: a full sync is a snapshot and its transfer, minutes for a
/// large server, so one server after another would add them up (and under rule 20 widen
/// the time a flip's checks stand before its last look). The streams in the pool's
/// order, or the first refusal (the other opens are then dropped).
async fn open_each(
    pool: &Arc<Pool>,
    from: &[Option<Position>],
) -> Result<Vec<(ReplicationStream, Sync)>, String> {
    let mut opening = tokio::task::JoinSet::new();
    for server in 0..pool.servers.len() {
        let (pool, from) = (pool.clone(), from.get(server).cloned().flatten());
        opening.spawn(async move { (server, open(&pool, server, from.as_ref()).await) });
    }
    let mut opened: Vec<Option<(ReplicationStream, Sync)>> =
        (0..pool.servers.len()).map(|_| None).collect();
    while let Some(done) = opening.join_next().await {
        let (server, result) = done.map_err(|e| format!("opening a stream failed: {e}"))?;
        opened[server] = Some(result?);
    }
    Ok(opened.into_iter().flatten().collect())
}

/// Open a replication stream to server `server` of `pool`, continuing from `from` if the
/// server can; a refusal says what the capture needs.
async fn open(
    pool: &Pool,
    server: usize,
    from: Option<&Position>,
) -> Result<(ReplicationStream, Sync), String> {
    let s = &pool.servers[server];
    let ServerAddr::Tcp { host, port } = &s.addr else {
        return Err(format!(
            "{}: replication capture needs a TCP server (a unix socket was given)",
            s.name
        ));
    };
    let password = pool.config.redis_auth.as_deref();
    ReplicationStream::open(&format!("{host}:{port}"), &s.name, password, from)
        .await
        .map_err(|error| match error {
            ReplicationError::Refused { .. } => format!(
                "{error} (replication capture needs PSYNC and REPLCONF on every server it follows: an ACL user with +psync +replconf, commands not renamed)"
            ),
            _ => error.to_string(),
        })
}

/// Where a stream command came from.
#[derive(Debug, Clone, Copy)]
struct Here {
    /// The side followed.
    side: Side,
    /// The server of that side.
    server: usize,
}

/// The database a `SELECT` in the stream chose (`db` if it cannot be read).
fn selected(request: &Request, db: u32) -> u32 {
    std::str::from_utf8(request.arg(1))
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(db)
}

/// Open a stream to every server of `side` and follow each, standing by (every command
/// skipped) until [`arm`] gives the fence; continues from where a previous stream of the
/// server stopped when the server can. The first refusal, if any.
pub async fn stand_by(migration: &Arc<Migration>, side: Side) -> Result<(), String> {
    let last: Vec<Option<Position>> = migration
        .capture
        .states(side)
        .iter()
        .map(|state| state.last.lock().ok().and_then(|l| l.clone()))
        .collect();
    let streams = open_each(side.pool(migration), &last).await?;
    for (server, (stream, _)) in streams.into_iter().enumerate() {
        let state = &migration.capture.states(side)[server];
        let standing_by = if *BREAK_FENCE { 0 } else { u64::MAX };
        state.fence.store(standing_by, Relaxed);
        spawn(migration, side, server, stream);
    }
    Ok(())
}

/// Open a stream to every server of `side`, continuing from `positions` where given (a
/// former leader's safe checkpoint), and follow them. A server that can no longer continue
/// leaves a gap: its keys are all copied again and a verify pass is owed. The first
/// refusal, if any.
pub async fn follow_from(
    migration: &Arc<Migration>,
    side: Side,
    positions: &[Option<Position>],
) -> Result<(), String> {
    let pool = side.pool(migration);
    let mut streams = Vec::new();
    for (server, (stream, sync)) in open_each(pool, positions).await?.into_iter().enumerate() {
        if positions.get(server).is_some_and(Option::is_some) && sync == Sync::Full {
            migration.dirty.owe_verify(crate::migrate::Owed::StreamGap);
            tracing::warn!(pool = migration.source.name(), server = %pool.servers[server].name, "the checkpoint's stream position is gone from the server's backlog: every key of this server is copied again, and a verify pass is needed before the cutover");
            tokio::spawn(copy_every_key(migration.clone(), side, server));
        }
        streams.push(stream);
    }
    follow(migration, side, streams);
    Ok(())
}

/// Note where each followed stream of `side` is, and advance each server's safe position
/// past every noted offset whose events the lanes have processed.
pub fn note_progress(migration: &Migration, side: Side) {
    let processed = migration.lanes.processed_now();
    let queued = migration.lanes.enqueued_now();
    for state in migration.capture.states(side) {
        let (Ok(mut reached), Ok(mut safe), Ok(replid)) =
            (state.reached.lock(), state.safe.lock(), state.replid.lock())
        else {
            continue;
        };
        if state.running.load(Relaxed) && !replid.is_empty() {
            reached.push_back((state.offset.load(Relaxed), queued.clone()));
        }
        while let Some((offset, snapshot)) = reached.front() {
            if snapshot
                .iter()
                .zip(&processed)
                .any(|(want, got)| got < want)
            {
                break;
            }
            *safe = Some(Position {
                replid: replid.clone(),
                offset: *offset,
            });
            reached.pop_front();
        }
    }
}

/// Each server of `side`: the last safe position, if any.
pub fn safe_positions(migration: &Migration, side: Side) -> Vec<Option<Position>> {
    migration
        .capture
        .states(side)
        .iter()
        .map(|s| s.safe.lock().ok().and_then(|p| p.clone()))
        .collect()
}

/// Follow `side`'s `streams` (one per server, in order) from their start.
pub fn follow(migration: &Arc<Migration>, side: Side, streams: Vec<ReplicationStream>) {
    for (server, stream) in streams.into_iter().enumerate() {
        let state = &migration.capture.states(side)[server];
        state.fence.store(0, Relaxed);
        spawn(migration, side, server, stream);
    }
    migration.capture.follow(side);
}

/// Start the one task that follows server `server` of `side` on `stream`, in a new term.
fn spawn(migration: &Arc<Migration>, side: Side, server: usize, stream: ReplicationStream) {
    let state = &migration.capture.states(side)[server];
    let term = state.term.fetch_add(1, Relaxed) + 1;
    state.running.store(true, Relaxed);
    tokio::spawn(run(migration.clone(), side, server, stream, term));
}

/// For tests only: `CUTOVER_TEST_BREAK_FENCE=1` applies a standing-by stream from its
/// start instead of from the fence (breaking rule 13), so the flip test can show that
/// cutover's own writes before the flip are then fed back to the other side.
static BREAK_FENCE: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var("CUTOVER_TEST_BREAK_FENCE").is_ok_and(|v| v == "1"));

/// With the gate closed and the other side's stream drained: read each server of the
/// standing-by `side`'s offset; its stream is applied from there on. False (nothing
/// changed) if a server does not answer.
pub async fn arm(migration: &Migration, side: Side) -> bool {
    let mut fences = Vec::new();
    for server in 0..migration.capture.states(side).len() {
        let Some(offset) = master_offset(migration, side, server).await else {
            return false;
        };
        fences.push(offset);
    }
    for (state, fence) in migration.capture.states(side).iter().zip(fences) {
        state.fence.store(fence, Relaxed);
    }
    true
}

/// Move the capture to `side` (armed), stopping the other side's tasks.
pub fn switch(migration: &Migration, side: Side) {
    migration.capture.stop(side.other());
    migration.capture.follow(side);
}

/// Stop the standing-by `side`'s tasks (a flip that did not happen).
pub fn stand_down(migration: &Migration, side: Side) {
    migration.capture.stop(side);
}

/// Server `server` of `side`: its `master_repl_offset` (`INFO replication`).
pub(super) async fn master_offset(migration: &Migration, side: Side, server: usize) -> Option<u64> {
    let reply = side
        .copy_pool(migration)
        .call(server, 0, &[b"INFO".as_slice(), b"replication"])
        .await
        .ok()?;
    crate::resp::info_field(&String::from_utf8_lossy(&reply), "master_repl_offset")
        .and_then(|v| v.trim().parse().ok())
}
