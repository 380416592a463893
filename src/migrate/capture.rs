//! Replication capture: the migration's second feed of writes. One replication client per
//! source server (`upstream::replication`) receives every write that server applied, from
//! any client (this proxy, other proxies, scripts, cron jobs) and its own expiry and
//! eviction deletes, in the order it applied them; each written key goes into its lane as
//! a copy.
//!
//! The capture rule (rule 10): a write's stream event reaches its lane after the source
//! applied the write, and the copy it asks for reads the source after that, so the
//! copy's snapshot holds the write; every write to a key asks for a copy, so the last
//! copy of a key is taken after its last write, and the target ends equal to the source
//! (copies already in flight stand for the events stamped before them, rule 9, which
//! bounds the copies of hot keys). No write is replayed in this feed: replays need each
//! copy's snapshot placed in the stream (a marker in the copy's `MULTI`), the next step.
//!
//! Back-pressure: a command is taken from the stream only once its events are queued
//! (waiting for room in the lanes), so a slow target slows the stream's socket, never this
//! process's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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

/// A capture's counters, per source server.
#[derive(Debug, Default)]
pub struct CaptureState {
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
    /// Grows with every full sync after the first: copies made in an earlier generation
    /// may have lost their marker in the gap (rule 12).
    pub generation: AtomicU64,
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
                "{error} (replication capture needs PSYNC and REPLCONF on every source server: an ACL user with +psync +replconf, commands not renamed)"
            )
        })
}

/// Follow source server `server`'s stream (already open) for as long as the migration
/// runs, reconnecting with `PSYNC` from the last position after a drop.
pub async fn run(migration: Arc<Migration>, server: usize, mut stream: ReplicationStream) {
    let state = &migration.capture[server];
    let pool_db = migration.source.config.redis_db;
    let mut db: u32 = 0;
    while migration.capturing() {
        let mut last_ack = tokio::time::Instant::now();
        while migration.capturing() {
            // At least once a second, and whenever the master asks: say how far we got,
            // and read how far the master is (the lag).
            if stream.ack_due() || last_ack.elapsed() >= ACK_EVERY {
                last_ack = tokio::time::Instant::now();
                if stream.ack().await.is_err() {
                    break;
                }
                if let Some(master) = master_offset(&migration, server).await {
                    state.master_offset.store(master, Relaxed);
                }
                heartbeat(&migration, server).await;
            }
            let wait = ACK_EVERY.saturating_sub(last_ack.elapsed());
            match tokio::time::timeout(wait, stream.next()).await {
                Err(_) => {}
                Ok(Ok(command)) => {
                    state.commands.fetch_add(1, Relaxed);
                    apply(&migration, server, &mut db, pool_db, &command.request).await;
                    state.offset.store(command.offset, Relaxed);
                }
                Ok(Err(error)) => {
                    tracing::warn!(pool = migration.source.name(), server = %migration.source.servers[server].name, %error, "replication stream dropped; reconnecting");
                    break;
                }
            }
        }
        if !migration.capturing() {
            return;
        }
        let position: Position = stream.position().clone();
        stream = reconnect(&migration, server, &position).await;
    }
}

/// Reconnect to source server `server` from `position`, until it answers.
async fn reconnect(
    migration: &Arc<Migration>,
    server: usize,
    position: &Position,
) -> ReplicationStream {
    let state = &migration.capture[server];
    let s = &migration.source.servers[server];
    loop {
        tokio::time::sleep(RECONNECT).await;
        match open(&migration.source, server, Some(position)).await {
            Ok((stream, Sync::Continued)) => {
                state.continued.fetch_add(1, Relaxed);
                migration.counters.capture_reconnects[0].increment(1);
                tracing::info!(pool = migration.source.name(), server = %s.name, offset = position.offset, "replication stream continued");
                return stream;
            }
            Ok((stream, Sync::Full)) => {
                state.full_resyncs.fetch_add(1, Relaxed);
                migration.counters.capture_reconnects[1].increment(1);
                migration.dirty.owe_verify();
                state.generation.fetch_add(1, Relaxed);
                tracing::error!(pool = migration.source.name(), server = %s.name, "the master could not continue the stream (its backlog was overrun): the writes in the gap are unknown; every key of this server is copied again, and a verify pass is needed before the cutover");
                tokio::spawn(copy_every_key(migration.clone(), server));
                return stream;
            }
            Err(error) => {
                tracing::warn!(pool = migration.source.name(), server = %s.name, %error, "cannot reconnect the replication stream; retrying");
            }
        }
    }
}

/// Publish a heartbeat marker on source server `server`: the time it takes to come out of
/// the stream is the stream's delay.
async fn heartbeat(migration: &Migration, server: usize) {
    let sent = super::marker::now_ms();
    let message = Markers::heartbeat_message(sent);
    let publish = [b"PUBLISH".as_slice(), migration.markers.channel(), &message];
    if migration
        .copy_source
        .call(server, 0, &publish)
        .await
        .is_ok()
    {
        migration.capture[server].lag.sent(sent);
    }
}

/// One command of the stream, into the lanes of the keys it writes (rule 12): a
/// deterministic write of one key, in a form the target has, to be replayed as the master
/// propagated it (absolute expiry times, `SREM` for `SPOP`, scripts as their effects);
/// any other write as copies of its keys; a marker to its key's lane.
async fn apply(
    migration: &Migration,
    server: usize,
    db: &mut u32,
    pool_db: u32,
    request: &Request,
) {
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
                let generation = migration.capture[server].generation.load(Relaxed);
                super::placed_read::marker_met(migration, token, generation).await;
            }
            Some(Marked::Heartbeat { sent_ms }) => {
                migration.count_capture(CaptureAction::Marker);
                let now = super::marker::now_ms();
                migration.capture[server].lag.seen(sent_ms, now);
            }
            None => migration.count_capture(CaptureAction::Ignored),
        }
        return;
    }
    if name.eq_ignore_ascii_case(b"SELECT") {
        *db = std::str::from_utf8(request.arg(1))
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(*db);
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
        flush_owned(migration, server).await;
        return;
    }
    let generation = migration.capture[server].generation.load(Relaxed);
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
    for key in keys_of(migration, server, request).await {
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
async fn keys_of(migration: &Migration, server: usize, request: &Request) -> Vec<Bytes> {
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
    getkeys(migration, server, request).await
}

/// Ask source server `server` which keys `request` names (`COMMAND GETKEYS`).
async fn getkeys(migration: &Migration, server: usize, request: &Request) -> Vec<Bytes> {
    let mut words: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYS"];
    words.extend(request.args());
    let Ok(reply) = migration.copy_source.call(server, 0, &words).await else {
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

/// `FLUSHDB`/`FLUSHALL` on source server `server`: delete on the target every key that
/// server owns.
async fn flush_owned(migration: &Migration, server: usize) {
    // Every stream write before the FLUSHDB lands first: a replay still queued would
    // otherwise write a key after the scan below looked for it.
    migration.lanes.barrier().await;
    let target = migration.mirror_to();
    let mut deleted = 0u64;
    for t in 0..target.servers.len() {
        let mut scan = KeyScan::new(target, t, SCAN_COUNT, "capture (FLUSHDB)");
        while let Some(keys) = scan.next_page().await {
            for key in keys {
                if migration
                    .source
                    .route(&key)
                    .is_some_and(|r| r.server == server)
                {
                    copy(migration, key, CopyReason::Write).await;
                    deleted += 1;
                }
            }
        }
    }
    tracing::info!(pool = migration.source.name(), server = %migration.source.servers[server].name, keys = deleted, "FLUSHDB on a source server: its keys are copied (deleted) on the target");
}

/// Source server `server`'s `master_repl_offset` (`INFO replication`).
pub(super) async fn master_offset(migration: &Migration, server: usize) -> Option<u64> {
    let reply = migration
        .copy_source
        .call(server, 0, &[b"INFO".as_slice(), b"replication"])
        .await
        .ok()?;
    String::from_utf8_lossy(&reply)
        .lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A full pass over source server `server` after a gap in its stream: every key is
/// copied again (not "unless copied": what the gap changed is unknown).
async fn copy_every_key(migration: Arc<Migration>, server: usize) {
    let mut copied = 0u64;
    let mut scan = KeyScan::new(
        &migration.copy_source,
        server,
        SCAN_COUNT,
        "capture (full pass)",
    );
    while let Some(keys) = scan.next_page().await {
        for key in keys {
            copied += 1;
            copy(&migration, key, CopyReason::Backfill).await;
        }
    }
    tracing::info!(pool = migration.source.name(), server = %migration.source.servers[server].name, keys = copied, "full pass after a stream gap: every key copied again");
}
