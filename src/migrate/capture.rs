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
use std::time::Duration;

use bytes::Bytes;
use redis_protocol::resp2::types::OwnedFrame;

use super::lag::LagStart;
use super::lane::LaneEvent;
use super::marker::{LagClock, Marked, Markers};
use super::scan::KeyScan;
use super::{CopyReason, Migration};
use crate::command::{self, Access};
use crate::config::ServerAddr;
use crate::resp::Request;
use crate::upstream::Pool;
use crate::upstream::replication::{Position, ReplicationStream, Sync};

/// How often the capture tells the master how far it got (`REPLCONF ACK`).
const ACK_EVERY: Duration = Duration::from_secs(1);
/// Wait before reconnecting a dropped stream (short: the source's backlog must still hold
/// the writes made meanwhile).
const RECONNECT: Duration = Duration::from_millis(100);

/// How long a fenced leader's capture waits for its lease to be renewed before it stops.
const FENCE_WAIT: Duration = Duration::from_secs(2);

/// Keys a SCAN page asks for in the capture's full passes.
const SCAN_COUNT: u32 = 1000;

/// Commands the proxy's table does not know that name their key first (streams, mostly);
/// for any other unknown command the source is asked (`COMMAND GETKEYS`).
const FIRST_KEY: &[&str] = &[
    "XADD",
    "XDEL",
    "XTRIM",
    "XSETID",
    "XACK",
    "XCLAIM",
    "XAUTOCLAIM",
    "HSETEX",
    "HEXPIRE",
    "HPEXPIRE",
    "HEXPIREAT",
    "HPEXPIREAT",
    "HPERSIST",
    "SETRANGE",
    "PEXPIREAT",
];

/// What became of a command of the stream (the index of its counter in
/// [`super::counters::CAPTURE_ACTIONS`]).
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
    fn copy_pool(self, migration: &Migration) -> &Arc<Pool> {
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
}

/// Open a replication stream to every server of `pool`; the first refusal, naming the
/// server and what it said, if any.
pub async fn open_all(pool: &Pool) -> Result<Vec<ReplicationStream>, String> {
    let mut streams = Vec::new();
    for server in 0..pool.servers.len() {
        let (stream, _) = open(pool, server, None).await?;
        streams.push(stream);
    }
    Ok(streams)
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
        .map_err(|error| {
            format!(
                "{error} (replication capture needs PSYNC and REPLCONF on every server it follows: an ACL user with +psync +replconf, commands not renamed)"
            )
        })
}

/// Follow server `server` of `side` on `stream` (already open) until the capture stops
/// following it, reconnecting with `PSYNC` from the last position after a drop.
async fn run(
    migration: Arc<Migration>,
    side: Side,
    server: usize,
    mut stream: ReplicationStream,
    term: u64,
) {
    let state = &migration.capture.states(side)[server];
    let pool_db = side.pool(&migration).config.redis_db;
    let mut db: u32 = 0;
    let running = || state.term.load(Relaxed) == term;
    while running() {
        if let Ok(mut replid) = state.replid.lock() {
            replid.clone_from(&stream.position().replid);
        }
        let mut last_ack = tokio::time::Instant::now();
        while running() {
            // At least once a second, and whenever the master asks: say how far we got,
            // and read how far the master is (the lag).
            if stream.ack_due() || last_ack.elapsed() >= ACK_EVERY {
                last_ack = tokio::time::Instant::now();
                if stream.ack().await.is_err() {
                    break;
                }
                if let Some(master) = master_offset(&migration, side, server).await {
                    state.master_offset.store(master, Relaxed);
                }
                heartbeat(&migration, side, server).await;
            }
            let wait = ACK_EVERY.saturating_sub(last_ack.elapsed());
            match tokio::time::timeout(wait, stream.next()).await {
                Err(_) => {}
                Ok(Ok(command)) => {
                    if !running() {
                        // Stopped by a flip while waiting: what comes now is the lanes'
                        // own writes to this side, never to be fed back.
                        break;
                    }
                    if migration.fenced() && !migration.wait_unfenced(FENCE_WAIT).await {
                        // A fleet leader whose lease may have expired (rule 15): another
                        // member may lead now; it continues from the checkpoint.
                        return;
                    }
                    state.commands.fetch_add(1, Relaxed);
                    if command.offset > state.fence.load(Relaxed)
                        && !authority_is(&migration, side, &running).await
                    {
                        // Given up before this side became the authority.
                        break;
                    }
                    if command.offset > state.fence.load(Relaxed) {
                        let here = Here { side, server };
                        apply(&migration, here, &mut db, pool_db, &command.request).await;
                    } else if command.request.name().eq_ignore_ascii_case(b"SELECT") {
                        db = selected(&command.request, db);
                    }
                    state.offset.store(command.offset, Relaxed);
                }
                Ok(Err(error)) => {
                    tracing::warn!(pool = migration.source.name(), side = side.name(), server = %side.pool(&migration).servers[server].name, %error, "replication stream dropped; reconnecting");
                    break;
                }
            }
        }
        let position: Position = stream.position().clone();
        if let Ok(mut last) = state.last.lock() {
            *last = Some(position.clone());
        }
        if !running() {
            return;
        }
        stream = reconnect(&migration, side, server, &position).await;
    }
}

/// Wait until `side` is the authority, its stream followed (a flip writes its decision
/// before the leader commits it, and a fleet member may write to the new side as soon as
/// it reads the decision: such a write must not go into the lanes while they still copy
/// towards this side). False when this task was stopped meanwhile.
async fn authority_is(migration: &Migration, side: Side, running: &impl Fn() -> bool) -> bool {
    let authority = |m: &Migration| match m.phase() {
        super::Phase::Migrating => Some(Side::Source),
        super::Phase::Cutover => Some(Side::Target),
        super::Phase::Finalized => None,
    };
    while migration.capture.side() != side || authority(migration) != Some(side) {
        if !running() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
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

/// Reconnect to server `server` of `side` from `position`, until it answers.
async fn reconnect(
    migration: &Arc<Migration>,
    side: Side,
    server: usize,
    position: &Position,
) -> ReplicationStream {
    let state = &migration.capture.states(side)[server];
    let pool = side.pool(migration);
    let s = &pool.servers[server];
    loop {
        tokio::time::sleep(RECONNECT).await;
        match open(pool, server, Some(position)).await {
            Ok((stream, Sync::Continued)) => {
                state.continued.fetch_add(1, Relaxed);
                migration.counters.capture_reconnects[0].increment(1);
                tracing::info!(pool = migration.source.name(), side = side.name(), server = %s.name, offset = position.offset, "replication stream continued");
                return stream;
            }
            Ok((stream, Sync::Full)) => {
                state.full_resyncs.fetch_add(1, Relaxed);
                migration.counters.capture_reconnects[1].increment(1);
                migration.dirty.owe_verify();
                migration.capture.new_generation();
                tracing::error!(pool = migration.source.name(), side = side.name(), server = %s.name, "the master could not continue the stream (its backlog was overrun): the writes in the gap are unknown; every key of this server is copied again, and a verify pass is needed before the next flip");
                tokio::spawn(copy_every_key(migration.clone(), side, server));
                return stream;
            }
            Err(error) => {
                tracing::warn!(pool = migration.source.name(), side = side.name(), server = %s.name, %error, "cannot reconnect the replication stream; retrying");
            }
        }
    }
}

/// Open a stream to every server of `side` and follow each, standing by (every command
/// skipped) until [`arm`] gives the fence; continues from where a previous stream of the
/// server stopped when the server can. The first refusal, if any.
pub async fn stand_by(migration: &Arc<Migration>, side: Side) -> Result<(), String> {
    let pool = side.pool(migration);
    let mut streams = Vec::new();
    for (server, state) in migration.capture.states(side).iter().enumerate() {
        let last = state.last.lock().ok().and_then(|l| l.clone());
        let (stream, _) = open(pool, server, last.as_ref()).await?;
        streams.push(stream);
    }
    for (server, stream) in streams.into_iter().enumerate() {
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
    for server in 0..pool.servers.len() {
        let from = positions.get(server).and_then(Option::as_ref);
        let (stream, sync) = open(pool, server, from).await?;
        if from.is_some() && sync == Sync::Full {
            migration.dirty.owe_verify();
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
    let other = match side {
        Side::Source => Side::Target,
        Side::Target => Side::Source,
    };
    migration.capture.stop(other);
    migration.capture.follow(side);
}

/// Stop the standing-by `side`'s tasks (a flip that did not happen).
pub fn stand_down(migration: &Migration, side: Side) {
    migration.capture.stop(side);
}

/// Publish a heartbeat marker on server `server` of `side`: the time it takes to come out
/// of the stream is the stream's delay.
async fn heartbeat(migration: &Migration, side: Side, server: usize) {
    let sent = super::marker::now_ms();
    let message = Markers::heartbeat_message(sent);
    let publish = [b"PUBLISH".as_slice(), migration.markers.channel(), &message];
    if side
        .copy_pool(migration)
        .call(server, 0, &publish)
        .await
        .is_ok()
    {
        migration.capture.states(side)[server].lag.sent(sent);
    }
}

/// One command of the stream, into the lanes of the keys it writes (rule 12): a
/// deterministic write of one key, in a form the target has, to be replayed as the master
/// propagated it (absolute expiry times, `SREM` for `SPOP`, scripts as their effects);
/// any other write as copies of its keys; a marker to its key's lane.
async fn apply(migration: &Migration, here: Here, db: &mut u32, pool_db: u32, request: &Request) {
    let state = &migration.capture.states(here.side)[here.server];
    let name = request.name();
    if name.eq_ignore_ascii_case(b"PUBLISH") && request.argc() == 3 {
        // Markers are not tied to a database.
        match migration.markers.parse(request.arg(1), request.arg(2)) {
            Some(Marked::Copy { token, key }) => {
                migration.count_capture(CaptureAction::Marker);
                migration.send(LaneEvent::Marker { key, token }).await;
            }
            Some(Marked::Read { token }) => {
                migration.count_capture(CaptureAction::Marker);
                let generation = migration.capture.generation();
                super::placed_read::marker_met(migration, token, generation).await;
            }
            Some(Marked::Heartbeat { sent_ms }) => {
                migration.count_capture(CaptureAction::Marker);
                let now = super::marker::now_ms();
                state.lag.seen(sent_ms, now);
            }
            None => migration.count_capture(CaptureAction::Ignored),
        }
        return;
    }
    if name.eq_ignore_ascii_case(b"SELECT") {
        *db = selected(request, *db);
        migration.count_capture(CaptureAction::Ignored);
        return;
    }
    let skipped = [&b"PING"[..], b"REPLCONF", b"MULTI", b"EXEC"];
    if *db != pool_db || skipped.iter().any(|s| name.eq_ignore_ascii_case(s)) {
        migration.count_capture(CaptureAction::Ignored);
        return;
    }
    if name.eq_ignore_ascii_case(b"FLUSHDB") || name.eq_ignore_ascii_case(b"FLUSHALL") {
        migration.count_capture(CaptureAction::Copied);
        flush_owned(migration, here).await;
        return;
    }
    let generation = migration.capture.generation();
    if let Some(key) = replayable(migration, request) {
        let request = Some(request.bytes().clone());
        let event = LaneEvent::Replicated {
            key,
            request,
            generation,
        };
        migration.send(event).await;
        return;
    }
    for key in keys_of(migration, here, request).await {
        let event = LaneEvent::Replicated {
            key,
            request: None,
            generation,
        };
        migration.send(event).await;
    }
}

/// The key of a stream command that may be replayed as it is: a deterministic write of
/// one key (the proxy's rule 3 classes; a write that gives a TTL is copied, so its key is
/// flagged) in a form the target has.
fn replayable(migration: &Migration, request: &Request) -> Option<Bytes> {
    let spec = command::lookup(request.name())?;
    let effect = super::mirror::effect(spec, request)?;
    (effect.replay && migration.receiver_lacks(spec, request).is_none()).then_some(effect.key)
}

/// Queue a copy of `key` in its lane, waiting for room (back-pressure to the stream).
async fn copy(migration: &Migration, key: Bytes, reason: CopyReason) {
    let event = LaneEvent::Copy {
        key,
        unless_known: false,
        reason,
        lag: LagStart(None),
    };
    migration.send(event).await;
}

/// The keys a propagated command writes.
async fn keys_of(migration: &Migration, here: Here, request: &Request) -> Vec<Bytes> {
    if let Some(spec) = command::lookup(request.name())
        && let Access::Write(_) = spec.access
        && let Some(mut effect) = super::mirror::effect(spec, request)
    {
        return effect.take_keys().collect();
    }
    let name = String::from_utf8_lossy(request.name()).to_ascii_uppercase();
    if request.argc() >= 2 && FIRST_KEY.contains(&name.as_str()) {
        return vec![request.arg_bytes(1)];
    }
    if name == "XGROUP" && request.argc() >= 3 {
        return vec![request.arg_bytes(2)];
    }
    if (name == "RENAME" || name == "RENAMENX") && request.argc() >= 3 {
        return vec![request.arg_bytes(1), request.arg_bytes(2)];
    }
    getkeys(migration, here, request).await
}

/// Ask the server the command came from which keys `request` names (`COMMAND GETKEYS`).
async fn getkeys(migration: &Migration, here: Here, request: &Request) -> Vec<Bytes> {
    let mut words: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYS"];
    words.extend(request.args());
    let pool = here.side.copy_pool(migration);
    let Ok(reply) = pool.call(here.server, 0, &words).await else {
        return Vec::new();
    };
    match redis_protocol::resp2::decode::decode(&reply) {
        Ok(Some((OwnedFrame::Array(items), _))) => items
            .into_iter()
            .filter_map(|f| match f {
                OwnedFrame::BulkString(b) => Some(Bytes::from(b)),
                _ => None,
            })
            .collect(),
        _ => {
            tracing::warn!(pool = migration.source.name(), command = %String::from_utf8_lossy(request.name()), reply = %String::from_utf8_lossy(&reply).trim_end(), "cannot tell which keys a replicated command writes; a verify pass will find them");
            migration.dirty.owe_verify();
            Vec::new()
        }
    }
}

/// `FLUSHDB`/`FLUSHALL` on the server the command came from: delete on the other side
/// every key that server owns.
async fn flush_owned(migration: &Migration, here: Here) {
    // Every stream write before the FLUSHDB lands first: a replay still queued would
    // otherwise write a key after the scan below looked for it.
    migration.lanes.barrier().await;
    let target = migration.mirror_to();
    let mut deleted = 0u64;
    for t in 0..target.servers.len() {
        let mut scan = KeyScan::new(target, t, SCAN_COUNT, "capture (FLUSHDB)");
        while let Some(keys) = scan.next_page().await {
            for key in keys {
                if here
                    .side
                    .pool(migration)
                    .route(&key)
                    .is_some_and(|r| r.server == here.server)
                {
                    copy(migration, key, CopyReason::Write).await;
                    deleted += 1;
                }
            }
        }
    }
    let name = &here.side.pool(migration).servers[here.server].name;
    migration.counters.capture_flushes.increment(1);
    migration.counters.capture_flushed_keys.increment(deleted);
    tracing::info!(pool = migration.source.name(), server = %name, keys = deleted, "FLUSHDB on a server: its keys are copied (deleted) on the other side");
}

/// Server `server` of `side`: its `master_repl_offset` (`INFO replication`).
pub(super) async fn master_offset(migration: &Migration, side: Side, server: usize) -> Option<u64> {
    let reply = side
        .copy_pool(migration)
        .call(server, 0, &[b"INFO".as_slice(), b"replication"])
        .await
        .ok()?;
    String::from_utf8_lossy(&reply)
        .lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A full pass over server `server` of `side` after a gap in its stream: every key is
/// copied again (not "unless copied": what the gap changed is unknown).
async fn copy_every_key(migration: Arc<Migration>, side: Side, server: usize) {
    let mut copied = 0u64;
    let pool = side.copy_pool(&migration);
    let mut scan = KeyScan::new(pool, server, SCAN_COUNT, "capture (full pass)");
    while let Some(keys) = scan.next_page().await {
        for key in keys {
            copied += 1;
            copy(&migration, key, CopyReason::Backfill).await;
        }
    }
    tracing::info!(pool = migration.source.name(), server = %pool.servers[server].name, keys = copied, "full pass after a stream gap: every key copied again");
}
