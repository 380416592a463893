//! The backfill: SCAN every source server and queue "copy unless known-copied" for each
//! key into its lane (rule 5), paced by a keys-per-second limit that can change at run
//! time, pausable. When every server is scanned from its start in this process, each lane
//! is told it may drop its known-copied set once the copies ahead of that message are done
//! (rule 8). A resumed backfill does not: keys copied before the restart were never seen by
//! these lanes, which therefore do not know which of them have TTLs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::OwnedFrame;
use tokio::sync::{Semaphore, watch};

use super::CopyReason;
use super::Migration;
use super::lag::LagStart;
use super::lane::LaneEvent;
use crate::resp::encode;
use crate::upstream::Pool;

/// The backfill's controls and progress: pause, the rate limits (changeable at run time),
/// the bound on copies in flight, whether it is done, and how fast it scans.
pub struct BackfillControl {
    /// True while the backfill is paused.
    paused: watch::Sender<bool>,
    /// Limit in keys per second (0: unlimited).
    rate_limit: AtomicU64,
    /// Limit in payload bytes per second (0: unlimited).
    byte_limit: AtomicU64,
    /// Bounds the copies in flight at once (`copies_in_flight`).
    pub copy_slots: Semaphore,
    /// Set when every source server has been scanned.
    pub done: AtomicBool,
    /// Set while a migration a reload started waits for the source to answer what was
    /// sent before it, to start (`/status` says so; [`Migration::spawn_backfill_once_answered`]).
    pub waiting_for_source: AtomicBool,
    /// Set when this process's backfill scanned every source server from its start: every
    /// key then passed through these lanes, which know which keys have TTLs and may drop
    /// the rest of their known-copied sets (rule 8), now and at a flip.
    pub lanes_know_every_key: AtomicBool,
    /// Keys on the source servers when the backfill started (DBSIZE), for progress.
    pub total_keys: AtomicU64,
    /// Keys a former leader of the fleet had scanned when this member took over.
    pub taken_over_at: AtomicU64,
    /// The recent scan rate: when it was last sampled, keys scanned then, and the
    /// smoothed rate in keys per second.
    scan_rate: Mutex<(std::time::Instant, u64, f64)>,
}

impl BackfillControl {
    /// Controls from the `migrate:` settings; `scanned` keys were scanned before a restart.
    pub fn new(settings: &crate::config::MigrateSettings, scanned: u64) -> BackfillControl {
        BackfillControl {
            paused: watch::channel(false).0,
            rate_limit: AtomicU64::new(settings.backfill_keys_per_second),
            byte_limit: AtomicU64::new(settings.backfill_bytes_per_second),
            copy_slots: Semaphore::new(settings.copies_in_flight.max(1) as usize),
            done: AtomicBool::new(false),
            waiting_for_source: AtomicBool::new(false),
            taken_over_at: AtomicU64::new(0),
            lanes_know_every_key: AtomicBool::new(false),
            total_keys: AtomicU64::new(0),
            scan_rate: Mutex::new((std::time::Instant::now(), scanned, 0.0)),
        }
    }

    /// Pause or resume.
    pub fn set_paused(&self, paused: bool) {
        let _ = self.paused.send(paused);
    }

    /// Whether it is paused now.
    pub fn paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// The keys-per-second limit (0: unlimited).
    pub fn rate_limit(&self) -> u64 {
        self.rate_limit.load(Relaxed)
    }

    /// Change the keys-per-second limit.
    pub fn set_rate_limit(&self, keys_per_second: u64) {
        self.rate_limit.store(keys_per_second, Relaxed);
    }

    /// The bytes-per-second limit (0: unlimited).
    pub fn byte_limit(&self) -> u64 {
        self.byte_limit.load(Relaxed)
    }

    /// Change the bytes-per-second limit.
    pub fn set_byte_limit(&self, bytes_per_second: u64) {
        self.byte_limit.store(bytes_per_second, Relaxed);
    }

    /// Progress (0 to 1) after `scanned` keys, and the ETA in seconds (`None`: unknown,
    /// paused or not yet moving).
    pub fn progress(&self, scanned: u64) -> (f64, Option<f64>) {
        if self.done.load(Relaxed) {
            return (1.0, Some(0.0));
        }
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

    /// Sample the scan rate now that `scanned` keys are scanned (smoothed).
    pub fn sample_rate(&self, scanned: u64) {
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
    }
}

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
    migration.backfill.total_keys.store(total, Relaxed);
    let scans: Vec<_> = (0..migration.copy_source.servers.len())
        .map(|server| tokio::spawn(scan_server(migration.clone(), server)))
        .collect();
    let mut whole = true;
    for scan in scans {
        whole &= matches!(scan.await, Ok(Scanned::Whole));
    }
    if whole {
        migration.backfill.lanes_know_every_key.store(true, Relaxed);
        for lane in 0..migration.lanes.count() {
            migration.lanes.queue(lane, LaneEvent::DropKnown).await;
        }
    } else {
        tracing::info!(
            pool = migration.source.name(),
            "backfill resumed or stopped early: lanes keep their known-copied sets, and the first write to a key copied before the restart is copied again"
        );
    }
    migration.backfill.done.store(true, Relaxed);
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
    let mut pause = migration.backfill.paused.subscribe();
    loop {
        if migration.phase() != super::Phase::Migrating || !migration.leads() {
            // A forced cutover (the source is no longer authoritative), or another member
            // of the fleet leads now.
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
        // Under capture, copies whose marker has not come back are remembered until it
        // does: let the stream catch up before queuing more (for a while at most).
        for _ in 0..1000 {
            if migration.markers.pending.load(Relaxed) <= super::marker::PENDING_LIMIT {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Resumable from `next` once every lane has processed what was queued so far.
        let snapshot = migration.lanes.enqueued_now();
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
    let reply = pool
        .call(server, 0, &[b"DBSIZE"])
        .await
        .map_err(|e| e.to_string())?;
    crate::resp::integer(&reply)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| String::from_utf8_lossy(&reply).trim().to_string())
}

/// Sleep as long as needed to keep under the keys-per-second and bytes-per-second limits
/// (0: unlimited). The limits are read each time, so changes take effect at once.
async fn pace(migration: &Migration, started: Instant, queued: u64, bytes_at_start: u64) {
    let keys_limit = migration.backfill.rate_limit();
    let bytes_limit = migration.backfill.byte_limit();
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
