//! Following one server's stream: the task that reads it, answers the master (ACK,
//! GETACK), publishes heartbeats, reconnects after a drop, and hands each command past the
//! fence to `apply` once its side is the authority.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::apply::{apply, copy_every_key};
use super::{Here, Side, master_offset, open, selected};
use crate::migrate::Migration;
use crate::migrate::marker::Markers;
use crate::upstream::replication::{Position, ReplicationStream, Sync};

/// How often the capture tells the master how far it got (`REPLCONF ACK`).
const ACK_EVERY: Duration = Duration::from_secs(1);

/// Wait before reconnecting a dropped stream (short: the source's backlog must still hold
/// the writes made meanwhile).
const RECONNECT: Duration = Duration::from_millis(100);

/// The longest wait between reconnects: the wait doubles after each failure up to this, so
/// a server that is down (or refuses the replica) is not hammered, and one that comes
/// back is followed again within a second.
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// How often a stream that stays down is logged again (each failure in between is logged
/// at debug level, and counted).
const STILL_DOWN_LOG: Duration = Duration::from_secs(10);

/// Follow server `server` of `side` on `stream` (already open) until the capture stops
/// following it, reconnecting with `PSYNC` from the last position after a drop.
pub(super) async fn run(
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
    state.down_since_ms.store(0, Relaxed);
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
                    if migration.fenced() && !migration.wait_while_fenced().await {
                        // A fleet leader that lost its lease (rule 15): another member
                        // leads now and continues from the checkpoint.
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
        let down = crate::migrate::marker::now_ms().max(1);
        let _ = state
            .down_since_ms
            .compare_exchange(0, down, Relaxed, Relaxed);
        let Some(reopened) = reconnect(&migration, side, server, &position, &running).await else {
            state.down_since_ms.store(0, Relaxed);
            return;
        };
        state.down_since_ms.store(0, Relaxed);
        stream = reopened;
    }
}

/// Wait until `side` is the authority, its stream followed (a flip writes its decision
/// before the leader commits it, and a fleet member may write to the new side as soon as
/// it reads the decision: such a write must not go into the lanes while they still copy
/// towards this side). False when this task was stopped meanwhile.
async fn authority_is(migration: &Migration, side: Side, running: &impl Fn() -> bool) -> bool {
    while migration.capture.side() != side || Side::authority(migration.phase()) != Some(side) {
        if !running() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// Reconnect to server `server` of `side` from `position`, until it answers (waiting
/// longer after each failure, up to [`RECONNECT_MAX`]); `None` once the capture no longer
/// follows it (`running` turned false).
async fn reconnect(
    migration: &Arc<Migration>,
    side: Side,
    server: usize,
    position: &Position,
    running: &impl Fn() -> bool,
) -> Option<ReplicationStream> {
    let state = &migration.capture.states(side)[server];
    let pool = side.pool(migration);
    let s = &pool.servers[server];
    let mut wait = RECONNECT;
    let mut failures: u64 = 0;
    let mut logged: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(wait).await;
        if !running() {
            return None;
        }
        match open(pool, server, Some(position)).await {
            Ok((stream, Sync::Continued)) => {
                state.continued.fetch_add(1, Relaxed);
                migration.counters.capture_reconnects[0].increment(1);
                tracing::info!(pool = migration.source.name(), side = side.name(), server = %s.name, offset = position.offset, failures, "replication stream continued");
                return Some(stream);
            }
            Ok((stream, Sync::Full)) => {
                state.full_resyncs.fetch_add(1, Relaxed);
                migration.counters.capture_reconnects[1].increment(1);
                migration.dirty.owe_verify(crate::migrate::Owed::StreamGap);
                migration.capture.new_generation();
                tracing::error!(pool = migration.source.name(), side = side.name(), server = %s.name, "the master could not continue the stream (its backlog was overrun): the writes in the gap are unknown; every key of this server is copied again, and a verify pass is needed before the next flip");
                tokio::spawn(copy_every_key(migration.clone(), side, server));
                return Some(stream);
            }
            Err(error) => {
                failures += 1;
                state.failed_reconnects.fetch_add(1, Relaxed);
                migration.counters.capture_reconnects[2].increment(1);
                if logged.is_none_or(|at| at.elapsed() >= STILL_DOWN_LOG) {
                    logged = Some(tokio::time::Instant::now());
                    let down_for = state.down_seconds(crate::migrate::marker::now_ms());
                    tracing::warn!(pool = migration.source.name(), side = side.name(), server = %s.name, failures, down_for_seconds = down_for, %error, "cannot reconnect the replication stream; retrying (logged again every 10 s while it fails)");
                } else {
                    tracing::debug!(pool = migration.source.name(), side = side.name(), server = %s.name, failures, %error, "cannot reconnect the replication stream; retrying");
                }
                if let Ok(mut last) = state.last_error.lock() {
                    *last = error;
                }
                wait = (wait * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// Publish a heartbeat marker on server `server` of `side`: the time it takes to come out
/// of the stream is the stream's delay.
async fn heartbeat(migration: &Migration, side: Side, server: usize) {
    let sent = crate::migrate::marker::now_ms();
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
