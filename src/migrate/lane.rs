//! Lanes: the ordered queues every mirror, copy and (later) shadow check of a key passes
//! through (key to lane by hash). A lane processes its events one at a time, in the
//! order they were queued, so the target sees each key's changes in source order.

use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Migration;
use super::copy::{self, CopyError};
use super::known::KnownCopied;

/// Attempts for a target write before the key is marked dirty (rule 7).
const ATTEMPTS: u32 = 4;
/// First retry delay; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Events between two attempts to forget old `copied_at` entries.
const COLLECT_EVERY: u64 = 256;

/// For tests only: `CUTOVER_TEST_BREAK_LANE_RULES=1` makes lanes replay every replayable
/// write without checking that the key was copied (breaking rule 3), so the consistency
/// test can show it detects the race the rules prevent.
static BREAK_RULES: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::env::var("CUTOVER_TEST_BREAK_LANE_RULES").is_ok_and(|v| v == "1")
});

/// Work for a lane.
pub enum LaneEvent {
    /// A deterministic single-key write the source applied: replay it if the key is
    /// known-copied with `copied_at < seq`, else copy the key (rule 3).
    Write {
        /// The key.
        key: Bytes,
        /// The write's sequence number.
        seq: u64,
        /// The request as the client sent it.
        request: Bytes,
        /// When the source's reply was read (for the mirror lag).
        mirrored_at: Instant,
    },
    /// Copy the key from the source (a multi-key or non-deterministic write, an unknown
    /// outcome, the backfill, a dirty key).
    Copy {
        /// The key.
        key: Bytes,
        /// Skip it when it is already known-copied (the backfill, rule 5).
        unless_known: bool,
        /// When the write that caused it was acknowledged (None for the backfill).
        mirrored_at: Option<Instant>,
    },
    /// The backfill has scanned every source server and every copy it queued is ahead of
    /// this event: the known-copied set may go (rule 8).
    DropKnown,
}

/// Where a lane is in forgetting `copied_at`: once it has processed `enqueued` events,
/// every write below `low_water` has been processed.
struct Checkpoint {
    /// The low-water mark taken.
    low_water: u64,
    /// Events queued to this lane when it was taken.
    enqueued: u64,
}

/// Run lane `index` until its queue closes.
pub async fn run(migration: Arc<Migration>, index: usize, mut rx: mpsc::Receiver<LaneEvent>) {
    let mut known = KnownCopied::default();
    let mut dropped = false;
    let mut processed: u64 = 0;
    let mut checkpoint = Checkpoint {
        low_water: 0,
        enqueued: 0,
    };
    while let Some(event) = rx.recv().await {
        processed += 1;
        migration.counters.lane_depth.decrement(1.0);
        let processed_slot = &migration.lane_processed[index];
        let bytes_before = known.bytes();
        match event {
            LaneEvent::Write {
                key,
                seq,
                request,
                mirrored_at,
            } => {
                let fp = migration.salt.fingerprint(&key);
                // Rule 3: replay only after a copy whose snapshot this write is not part of.
                // After the backfill (rule 8) every key counts as copied, but a copy taken
                // while this write was in flight still forbids replaying it.
                let copied = dropped || known.contains(fp);
                let safe =
                    *BREAK_RULES || (copied && known.copied_at(fp).is_none_or(|at| at < seq));
                if safe {
                    replay_or_copy(&migration, &mut known, &key, &request).await;
                } else {
                    copy_with_retries(&migration, &mut known, &key, "write").await;
                }
                migration
                    .counters
                    .lag
                    .record(mirrored_at.elapsed().as_secs_f64());
            }
            LaneEvent::Copy {
                key,
                unless_known,
                mirrored_at,
            } => {
                let fp = migration.salt.fingerprint(&key);
                if unless_known && (dropped || known.contains(fp)) {
                    migration.counters.backfill_skipped.increment(1);
                    migration.totals.skipped.fetch_add(1, Relaxed);
                } else {
                    let reason = if mirrored_at.is_some() {
                        "write"
                    } else {
                        "backfill"
                    };
                    copy_with_retries(&migration, &mut known, &key, reason).await;
                    if let Some(at) = mirrored_at {
                        migration.counters.lag.record(at.elapsed().as_secs_f64());
                    }
                }
            }
            LaneEvent::DropKnown => {
                dropped = true;
                migration.counters.known_keys.decrement(known.len() as f64);
                known.drop_membership();
            }
        }
        // Forget old `copied_at` once every event queued before the last checkpoint is
        // processed (every so often, or whenever the lane is idle).
        if processed >= checkpoint.enqueued
            && (processed.is_multiple_of(COLLECT_EVERY) || rx.is_empty())
        {
            known.collect(checkpoint.low_water);
            checkpoint = Checkpoint {
                low_water: migration.low_water(),
                enqueued: migration.lane_enqueued[index].load(SeqCst),
            };
        }
        let bytes_after = known.bytes();
        migration
            .counters
            .known_bytes
            .increment(bytes_after as f64 - bytes_before as f64);
        processed_slot.store(processed, SeqCst);
    }
}

/// Replay a write on the target; if the target refuses it (it must differ from the
/// source), copy the key instead.
async fn replay_or_copy(
    migration: &Migration,
    known: &mut KnownCopied,
    key: &Bytes,
    request: &Bytes,
) {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        match migration.target_call(key, request.clone()).await {
            Ok(reply) if reply.first() != Some(&b'-') => {
                migration.counters.replayed.increment(1);
                migration.totals.replayed.fetch_add(1, Relaxed);
                return;
            }
            Ok(reply) => {
                tracing::debug!(key = %String::from_utf8_lossy(key), reply = %String::from_utf8_lossy(&reply).trim_end(), "replay refused by the target; copying");
                break;
            }
            Err(_) if attempt < ATTEMPTS => {
                migration.counters.retried.increment(1);
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(_) => {
                migration.mark_dirty(key);
                return;
            }
        }
    }
    copy_with_retries(migration, known, key, "write").await;
}

/// Copy `key` (rule 6: a key gone from the source is deleted), retrying transport
/// failures with backoff; a key that keeps failing is marked dirty (rule 7).
async fn copy_with_retries(
    migration: &Migration,
    known: &mut KnownCopied,
    key: &Bytes,
    reason: &'static str,
) {
    let mut backoff = FIRST_BACKOFF;
    let Ok(_slot) = migration.copy_slots.acquire().await else {
        return;
    };
    for attempt in 1..=ATTEMPTS {
        match copy::copy_key(migration, key).await {
            Ok(copied) => {
                let was_known = known.contains(migration.salt.fingerprint(key));
                known.insert(migration.salt.fingerprint(key), copied.copied_at);
                if !was_known {
                    migration.counters.known_keys.increment(1.0);
                }
                migration.counters.copied(reason, copied.bytes);
                let t = &migration.totals;
                t.bytes.fetch_add(copied.bytes as u64, Relaxed);
                if reason == "backfill" {
                    t.backfill_copied.fetch_add(1, Relaxed);
                } else {
                    t.write_copies.fetch_add(1, Relaxed);
                }
                return;
            }
            Err(CopyError::Rejected(why)) => {
                // Copying again cannot help; counted and reported (copied structurally
                // once that exists), never retried in a loop.
                migration.counters.restore_rejected(why);
                migration.totals.rejected.fetch_add(1, Relaxed);
                tracing::warn!(key = %String::from_utf8_lossy(key), why, "the target refused the key's DUMP payload");
                return;
            }
            Err(CopyError::Unavailable(_)) if attempt < ATTEMPTS => {
                migration.counters.retried.increment(1);
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(error) => {
                tracing::debug!(key = %String::from_utf8_lossy(key), %error, "copy failed; key marked dirty");
                migration.mark_dirty(key);
                return;
            }
        }
    }
}
