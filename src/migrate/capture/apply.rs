//! One command of a stream, into the lanes (replayed, its keys copied, a marker, a
//! FLUSHDB), and the full pass after a gap in a stream.

use std::sync::Arc;

use bytes::Bytes;
use redis_protocol::resp2::types::OwnedFrame;

use super::{CaptureAction, Here, Side, selected};
use crate::command::{self, Access};
use crate::migrate::lane::LaneEvent;
use crate::migrate::marker::Marked;
use crate::migrate::scan;
use crate::migrate::{CopyReason, Migration};
use crate::resp::Request;

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

/// One command of the stream, into the lanes of the keys it writes (rule 12): a
/// deterministic write of one key, in a form the target has, to be replayed as the master
/// propagated it (absolute expiry times, `SREM` for `SPOP`, scripts as their effects);
/// any other write as copies of its keys; a marker to its key's lane.
pub(super) async fn apply(
    migration: &Migration,
    here: Here,
    db: &mut u32,
    pool_db: u32,
    request: &Request,
) {
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
                crate::migrate::placed_read::marker_met(migration, token, generation).await;
            }
            Some(Marked::Heartbeat { sent_ms }) => {
                migration.count_capture(CaptureAction::Marker);
                let now = crate::migrate::marker::now_ms();
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
    let effect = crate::migrate::mirror::effect(spec, request)?;
    (effect.replay && migration.receiver_lacks(spec, request).is_none()).then_some(effect.key)
}

/// The keys a propagated command writes.
async fn keys_of(migration: &Migration, here: Here, request: &Request) -> Vec<Bytes> {
    if let Some(spec) = command::lookup(request.name())
        && let Access::Write(_) = spec.access
        && let Some(mut effect) = crate::migrate::mirror::effect(spec, request)
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
            migration.dirty.owe_verify(crate::migrate::Owed::StreamGap);
            Vec::new()
        }
    }
}

/// `FLUSHDB`/`FLUSHALL` on the server the command came from: delete on the other side
/// every key that server owns.
async fn flush_owned(migration: &Migration, here: Here) {
    let owner = (here.side, here.server);
    let purpose = "capture (FLUSHDB)";
    let deleted =
        scan::copy_keys_owned_elsewhere(migration, owner, CopyReason::Write, purpose).await;
    let name = &here.side.pool(migration).servers[here.server].name;
    migration.counters.capture_flushes.increment(1);
    migration.counters.capture_flushed_keys.increment(deleted);
    tracing::info!(pool = migration.source.name(), server = %name, keys = deleted, "FLUSHDB on a server: its keys are copied (deleted) on the other side");
}

/// A full pass over server `server` of `side` after a gap in its stream: every key is
/// copied again (not "unless copied": what the gap changed is unknown).
pub(super) async fn copy_every_key(migration: Arc<Migration>, side: Side, server: usize) {
    let pool = side.copy_pool(&migration);
    let copied = scan::copy_every_key(&migration, pool, server, "capture (full pass)").await;
    tracing::info!(pool = migration.source.name(), server = %pool.servers[server].name, keys = copied, "full pass after a stream gap: every key copied again");
}
