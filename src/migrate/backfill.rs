//! The backfill: SCAN every source server and queue "copy unless known-copied" for each
//! key into its lane (rule 5), paced by a keys-per-second limit that can change at run
//! time, pausable. When every server is scanned from its start in this process, each lane
//! is told it may drop its known-copied set once the copies ahead of that message are done
//! (rule 8). A resumed backfill does not: keys copied before the restart were never seen by
//! these lanes, which therefore do not know which of them have TTLs.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::OwnedFrame;

use super::CopyReason;
use super::Migration;
use super::lag::LagStart;
use super::lane::LaneEvent;
use crate::resp::encode;
use crate::upstream::Pool;

/// Longest wait for the engines to be known before the first copy.
const ENGINES_WAIT: Duration = Duration::from_secs(5);
/// Wait between attempts when a source server cannot be scanned.
const RETRY: Duration = Duration::from_millis(500);

/// Scan every source server, then tell the lanes.
pub async fn run(migration: Arc<Migration>) {
    // Know the engines first, so no key is sent as a payload the target cannot read.
    migration.engines.wait_detected(ENGINES_WAIT).await;
    migration.counters.set_state("running");
    let mut total = 0;
    for server in 0..migration.copy_source.servers.len() {
        total += dbsize(&migration.copy_source, server).await.unwrap_or(0);
    }
    migration.total_keys.store(total, Relaxed);
    let scans: Vec<_> = (0..migration.copy_source.servers.len())
        .map(|server| tokio::spawn(scan_server(migration.clone(), server)))
        .collect();
    let mut whole = true;
    for scan in scans {
        whole &= matches!(scan.await, Ok(Scanned::Whole));
    }
    if whole {
        migration.lanes_know_every_key.store(true, Relaxed);
        for lane in 0..migration.lane_count() {
            migration.send_to_lane(lane, LaneEvent::DropKnown).await;
        }
    } else {
        tracing::info!(
            pool = migration.source.name(),
            "backfill resumed or stopped early: lanes keep their known-copied sets, and the first write to a key copied before the restart is copied again"
        );
    }
    migration.backfill_done.store(true, Relaxed);
    migration.counters.set_state("done");
    tracing::info!(
        pool = migration.source.name(),
        "backfill: every source server scanned"
    );
}

/// How far one server's scan went in this process.
enum Scanned {
    /// From its first key to its last.
    Whole,
    /// To its end, from where a previous run left off (or it was already done).
    Resumed,
    /// Not to the end: authority moved to the target first.
    Stopped,
}

/// Scan one source server to the end, from where a previous run left off.
async fn scan_server(migration: Arc<Migration>, server: usize) -> Scanned {
    let (resume, done) = migration.progress.resume_point(server);
    if done {
        migration.counters.servers_done.increment(1.0);
        return Scanned::Resumed;
    }
    let from_start = resume == "0";
    let mut cursor = resume.into_bytes();
    let started = Instant::now();
    let bytes_at_start = migration.totals.bytes.load(Relaxed);
    let mut queued: u64 = 0;
    let mut pause = migration.paused.subscribe();
    loop {
        if migration.phase() != super::Phase::Migrating {
            // A forced cutover: the source is no longer authoritative.
            return Scanned::Stopped;
        }
        while *pause.borrow() {
            migration.counters.set_state("paused");
            if pause.changed().await.is_err() {
                return Scanned::Stopped;
            }
            migration.counters.set_state("running");
        }
        let mut scan = BytesMut::new();
        let count = migration.settings.scan_count.to_string();
        encode::command(
            &mut scan,
            &[b"SCAN".as_slice(), &cursor, b"COUNT", count.as_bytes()],
        );
        let reply = match migration
            .copy_source
            .request(server, 0, scan.freeze(), 1)
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!(server = %migration.copy_source.servers[server].name, %error, "backfill: SCAN failed; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let Some((next, keys)) = parse_scan(&reply) else {
            tracing::error!(server = %migration.copy_source.servers[server].name, reply = %String::from_utf8_lossy(&reply[..reply.len().min(200)]), "backfill: unexpected SCAN reply");
            tokio::time::sleep(RETRY).await;
            continue;
        };
        for key in keys {
            migration.counters.backfill_scanned.increment(1);
            migration.totals.scanned.fetch_add(1, Relaxed);
            migration
                .send(LaneEvent::Copy {
                    key,
                    unless_known: true,
                    reason: CopyReason::Backfill,
                    lag: LagStart(None),
                })
                .await;
            queued += 1;
            pace(&migration, started, queued, bytes_at_start).await;
        }
        // Resumable from `next` once every lane has processed what was queued so far.
        let snapshot = migration
            .lane_enqueued
            .iter()
            .map(|e| e.load(std::sync::atomic::Ordering::SeqCst))
            .collect();
        migration
            .progress
            .batch_queued(server, &next, next == b"0", snapshot);
        if next == b"0" {
            migration.counters.servers_done.increment(1.0);
            return if from_start {
                Scanned::Whole
            } else {
                Scanned::Resumed
            };
        }
        cursor = next;
    }
}

/// The number of keys on server `server` of `pool` (for progress and ETA), or why not.
pub(super) async fn dbsize(pool: &Pool, server: usize) -> Result<u64, String> {
    let mut request = BytesMut::new();
    encode::command(&mut request, &[b"DBSIZE".as_slice()]);
    let reply = pool
        .request(server, 0, request.freeze(), 1)
        .await
        .map_err(|e| e.to_string())?;
    crate::resp::integer(&reply)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| String::from_utf8_lossy(&reply).trim().to_string())
}

/// Sleep as long as needed to keep under the keys-per-second and bytes-per-second limits
/// (0: unlimited). The limits are read each time, so changes take effect at once.
async fn pace(migration: &Migration, started: Instant, queued: u64, bytes_at_start: u64) {
    let keys_limit = migration.rate_limit.load(Relaxed);
    let bytes_limit = migration.byte_limit.load(Relaxed);
    let mut due = Duration::ZERO;
    if keys_limit > 0 {
        due = due.max(Duration::from_secs_f64(queued as f64 / keys_limit as f64));
    }
    if bytes_limit > 0 {
        let bytes = migration
            .totals
            .bytes
            .load(Relaxed)
            .saturating_sub(bytes_at_start);
        due = due.max(Duration::from_secs_f64(bytes as f64 / bytes_limit as f64));
    }
    let elapsed = started.elapsed();
    if due > elapsed {
        tokio::time::sleep(due - elapsed).await;
    }
}

/// `(next cursor, keys)` from a SCAN reply.
pub(super) fn parse_scan(reply: &[u8]) -> Option<(Vec<u8>, Vec<Bytes>)> {
    let (frame, _) = redis_protocol::resp2::decode::decode(reply).ok()??;
    let OwnedFrame::Array(mut parts) = frame else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let OwnedFrame::Array(keys) = parts.pop()? else {
        return None;
    };
    let OwnedFrame::BulkString(cursor) = parts.pop()? else {
        return None;
    };
    let keys = keys
        .into_iter()
        .filter_map(|k| match k {
            OwnedFrame::BulkString(k) => Some(Bytes::from(k)),
            _ => None,
        })
        .collect();
    Some((cursor, keys))
}

#[cfg(test)]
mod tests {
    use super::parse_scan;

    #[test]
    fn scan_replies() {
        let (cursor, keys) =
            parse_scan(b"*2\r\n$2\r\n17\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n").expect("valid");
        assert_eq!(cursor, b"17");
        assert_eq!(
            keys,
            vec![
                bytes::Bytes::from_static(b"a"),
                bytes::Bytes::from_static(b"b")
            ]
        );
        assert!(parse_scan(b"-ERR x\r\n").is_none());
    }
}
