//! Lanes: the ordered queues every mirror, copy and (later) shadow check of a key passes
//! through (key to lane by hash). A lane processes its events one at a time, in the
//! order they were queued, so the target sees each key's changes in source order.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Migration;
use super::capture::CaptureAction;
use super::copy::{self, CopyError, CopyReason};
use super::known::{KnownCopied, lock};
use super::lag::LagStart;
use super::marker::{Anchor, Anchors};
use super::mirror::{MirrorHook, ShadowRead};
use super::retries::RetryReason;
use super::shadow;
use crate::resp::Protocol;

/// Attempts for a target write before the key is marked dirty (rule 7).
const ATTEMPTS: u32 = 4;
/// First retry delay; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Most writes replayed in one pipelined batch.
const REPLAY_BATCH: usize = 64;
/// Events between two attempts to forget old `copied_at` entries.
const COLLECT_EVERY: u64 = 256;
/// How long an idle lane holding recent `copied_at` entries waits before forgetting them.
const IDLE_COLLECT: Duration = Duration::from_secs(1);

/// For tests only: `CUTOVER_TEST_BREAK_LANE_RULES=1` makes lanes replay every replayable
/// write without checking that the key was copied (breaking rule 3) and accept any target
/// reply (turning off the reply check that would otherwise repair the damage), so the
/// consistency test can show it detects the race the rules prevent.
static BREAK_RULES: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::env::var("CUTOVER_TEST_BREAK_LANE_RULES").is_ok_and(|v| v == "1")
});

/// For tests only: `CUTOVER_TEST_BREAK_MARKERS=1` makes lanes replay a stream write even
/// when it lies before its key's last copy's marker (breaking rule 12), so the capture test
/// can show that such writes are then applied twice.
static BREAK_MARKERS: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::env::var("CUTOVER_TEST_BREAK_MARKERS").is_ok_and(|v| v == "1")
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
        /// The source's reply: a replay whose target reply differs shows the target had
        /// diverged (for instance its copy expired just before a PERSIST), so the key is
        /// copied instead.
        source_reply: Bytes,
        /// When the source's reply was read, if this write's lag is measured.
        lag: LagStart,
    },
    /// Copy the key from the source (a multi-key or non-deterministic write, an unknown
    /// outcome, the backfill, a dirty key, a repair).
    Copy {
        /// The key.
        key: Bytes,
        /// Skip it when it is already known-copied (the backfill, rule 5).
        unless_known: bool,
        /// Why it is copied.
        reason: CopyReason,
        /// When the write that caused it was acknowledged, if its lag is measured.
        lag: LagStart,
    },
    /// A sampled read the source answered: read the target now, after every earlier event
    /// of the key, and compare.
    Shadow {
        /// The read: its key, how it is compared, protocol, command, first or confirming.
        read: ShadowRead,
        /// The read's sequence number: only a copy taken before it may be compared.
        seq: u64,
        /// The request as the client sent it.
        request: Bytes,
        /// The source's reply.
        source_reply: Bytes,
        /// When the source's reply came back.
        answered: std::time::Instant,
        /// Under capture, the read was placed in its source server's stream (this is that
        /// stream's capture generation) and comes here at that point of it.
        placed: Option<u64>,
    },
    /// A write taken from a source server's replication stream (rule 12): dropped while
    /// its key's last copy's marker has not come (the copy's snapshot holds it), replayed
    /// when the key is settled and may be replayed, else copied.
    Replicated {
        /// The key.
        key: Bytes,
        /// The command as the master propagated it, when it may be replayed as it is
        /// (deterministic, one key, a form the target has); `None`: copy the key.
        request: Option<Bytes>,
        /// The capture generation of the stream it came from.
        generation: u64,
    },
    /// The marker a copy of `key` published came out of the stream (rule 12).
    Marker {
        /// The key copied.
        key: Bytes,
        /// The copy's token.
        token: u64,
    },
    /// The backfill has scanned every source server from its start and every copy it
    /// queued is ahead of this event: the known-copied set may go, but for the TTL flags
    /// (rule 8).
    DropKnown,
}

/// An event in a lane's queue, with its stamp (rule 9).
pub struct Queued {
    /// Taken from the migration's stamp counter when the event was queued.
    pub stamp: u64,
    /// Whether a copy of its key that began after the stamp stands for it: what the event
    /// stands for was applied on the authoritative side before it was queued.
    pub foldable: bool,
    /// The event.
    pub event: LaneEvent,
}

/// Most keys whose last copy's stamp a lane remembers; past it the memory is cleared
/// (forgetting only costs a copy that folding would have saved).
const COVERS_LIMIT: usize = 4096;

/// Rule 9, folding: for each key recently copied by this lane, the stamp counter's value
/// read just before the copy's snapshot was requested. A foldable event of the key with a
/// lower stamp was applied on the authoritative side before it was stamped, so before that
/// snapshot: the copy already carried it, and the event is dropped. This is what bounds the
/// copies of a hot key by its write bursts instead of its writes, when copies are slow
/// (copies by type of a big key) and every write during one would otherwise queue another.
#[derive(Default)]
struct Covers(std::collections::HashMap<Bytes, u64>);

impl Covers {
    /// A copy of `key` that read `stamp` before its snapshot succeeded.
    fn record(&mut self, key: &Bytes, stamp: u64) {
        if self.0.len() >= COVERS_LIMIT && !self.0.contains_key(key) {
            self.0.clear();
        }
        self.0.insert(key.clone(), stamp);
    }

    /// Whether a copy already made stands for `queued`.
    fn covers(&self, queued: &Queued) -> bool {
        if !queued.foldable || *BREAK_RULES {
            return false;
        }
        let key = match &queued.event {
            LaneEvent::Write { key, .. }
            | LaneEvent::Copy { key, .. }
            | LaneEvent::Replicated { key, .. } => key,
            LaneEvent::Shadow { .. } | LaneEvent::Marker { .. } | LaneEvent::DropKnown => {
                return false;
            }
        };
        self.0.get(key).is_some_and(|&copied| queued.stamp < copied)
    }
}

/// What a lane remembers between events: the copies that may stand for later events
/// (rule 9), and the copies whose marker has not come out of the stream yet (rule 12).
#[derive(Default)]
struct Memory {
    /// Rule 9.
    covers: Covers,
    /// Rule 12.
    anchors: Anchors,
}

/// Where a lane is in forgetting `copied_at`: once it has processed `enqueued` events,
/// every write below `low_water` has been processed.
struct Checkpoint {
    /// The low-water mark taken.
    low_water: u64,
    /// Events queued to this lane when it was taken.
    enqueued: u64,
    /// Events this lane had processed when it was taken.
    taken_at: u64,
}

/// Run lane `index` until its queue closes.
pub async fn run(migration: Arc<Migration>, index: usize, mut rx: mpsc::Receiver<Queued>) {
    // A lane starts knowing nothing, whatever the phase: after a restart it cannot know
    // which keys have TTLs, so each key's first write is copied (from the authoritative
    // side) before later ones are replayed. Membership is dropped only by a backfill this
    // process ran from the start (rule 8). The set is shared with direct replays
    // (`Migration::replay_direct`); it is never locked across an await.
    let known = &migration.lanes.known[index];
    let mut processed: u64 = 0;
    let mut checkpoint = Checkpoint {
        low_water: 0,
        enqueued: 0,
        taken_at: 0,
    };
    // An event taken from the queue while gathering a batch of replays, handled next.
    let mut held: Option<Queued> = None;
    let mut memory = Memory::default();
    loop {
        let queued = match held.take() {
            Some(queued) => queued,
            None if lock(known).has_recent() => {
                // Copies' `copied_at` are forgotten as events pass; a lane that direct
                // replays leave idle forgets them on a timer instead.
                match tokio::time::timeout(IDLE_COLLECT, rx.recv()).await {
                    Ok(Some(queued)) => queued,
                    Ok(None) => break,
                    Err(_) => {
                        collect(&migration, index, known, &mut checkpoint, processed, true);
                        continue;
                    }
                }
            }
            None => match rx.recv().await {
                Some(queued) => queued,
                None => break,
            },
        };
        processed += 1;
        let processed_slot = &migration.lanes.processed[index];
        if migration.lanes.spilling() {
            // The process is stopping and the target is slow or down: the key is copied
            // by the next run instead (rule 7). A shadow read changes nothing.
            if let Some(key) = spilled_key(&queued.event) {
                migration.mark_dirty(key);
            }
            processed_slot.store(processed, SeqCst);
            continue;
        }
        if migration.fenced() && !migration.wait_while_fenced().await {
            // A fleet leader whose lease may be expiring writes nothing (rule 15) until it
            // is renewed; once it no longer leads, its successor copies every key it
            // touches anyway.
            processed_slot.store(processed, SeqCst);
            continue;
        }
        // Taking the lock before acting on the event orders it after any direct replay
        // that found this lane idle: that replay is already queued on the target.
        drop(lock(known));
        // Consecutive writes that may all be replayed go to the target pipelined: each key
        // keeps its order (one target connection per key), and the lane does not wait a
        // round trip per write.
        if !migration.capturing() && !memory.anchors.is_empty() {
            // The capture stopped (a flip): no marker will come any more.
            memory.anchors.clear(&migration.markers);
        }
        let replayable = |queued: &Queued| {
            !memory.covers.covers(queued)
                && match &queued.event {
                    LaneEvent::Write { key, seq, .. } => {
                        replay_allowed(&migration, &lock(known), key, *seq)
                    }
                    LaneEvent::Replicated {
                        key,
                        request: Some(_),
                        generation,
                    } => {
                        (*BREAK_MARKERS
                            || memory.anchors.anchor(key, *generation) == Anchor::Settled)
                            && stream_replay_allowed(&migration, &lock(known), key)
                    }
                    _ => false,
                }
        };
        if memory.covers.covers(&queued) {
            fold(&migration, queued.event);
        } else if replayable(&queued) {
            let mut batch = vec![queued.event];
            while batch.len() < REPLAY_BATCH {
                match rx.try_recv() {
                    Ok(next) => {
                        if replayable(&next) {
                            processed += 1;
                            batch.push(next.event);
                        } else {
                            held = Some(next);
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            replay_batch(&migration, known, &mut memory, batch).await;
        } else {
            handle(&migration, known, &mut memory, queued.event).await;
        }
        // Every event, batched or not: forget old `copied_at`, and publish progress for
        // safe checkpoints (the set's size and the lane's depth are read at scrape time).
        collect(
            &migration,
            index,
            known,
            &mut checkpoint,
            processed,
            rx.is_empty(),
        );
        processed_slot.store(processed, SeqCst);
    }
}

/// The key a stopping lane marks dirty for `event`: that of any event that may change
/// the target's copy of its key (a shadow read does not).
fn spilled_key(event: &LaneEvent) -> Option<&Bytes> {
    if matches!(event, LaneEvent::Shadow { .. }) {
        return None;
    }
    super::event_key(event)
}

/// Handle one event that is neither folded into a copy nor replayed in a batch: copy its
/// key, check a shadow read, or follow the capture's markers.
async fn handle(
    migration: &Arc<Migration>,
    known: &Mutex<KnownCopied>,
    memory: &mut Memory,
    event: LaneEvent,
) {
    match event {
        LaneEvent::Write { key, lag, .. } => {
            // Writes that may be replayed were batched above; this one may not:
            // copy the key (rule 3, or its last copy carried a TTL).
            if lock(known).expires(migration.lanes.salt.fingerprint(&key)) {
                migration.counters.ttl_copies.increment(1);
            }
            copy_with_retries(migration, known, memory, &key, CopyReason::Write).await;
            migration.record_lag(lag);
        }
        LaneEvent::Copy {
            key,
            unless_known,
            reason,
            lag,
        } => {
            let fp = migration.lanes.salt.fingerprint(&key);
            if unless_known && lock(known).is_copied(fp) {
                migration.counters.backfill_skipped.increment(1);
                migration.totals.skipped.fetch_add(1, Relaxed);
            } else {
                copy_with_retries(migration, known, memory, &key, reason).await;
                migration.record_lag(lag);
            }
        }
        LaneEvent::Shadow {
            read,
            seq,
            request,
            source_reply,
            answered,
            placed,
        } => {
            let fp = migration.lanes.salt.fingerprint(&read.key);
            let (copied, copy_pending) = {
                let k = lock(known);
                let pending = match placed {
                    // The target holds a later point than the read's while the
                    // key's last copy waits for its marker (rule 12).
                    Some(generation) => {
                        memory.anchors.anchor(&read.key, generation) != Anchor::Settled
                    }
                    None => k.copied_at(fp).is_some_and(|at| at >= seq),
                };
                (k.is_copied(fp), pending)
            };
            if !copied {
                migration.shadow_skip("not_copied");
            } else if copy_pending {
                migration.shadow_skip("copy_pending");
            } else if migration.backlog().1 > 0 {
                migration.shadow_skip("dirty");
            } else {
                shadow_check(
                    migration,
                    known,
                    memory,
                    read,
                    request,
                    source_reply,
                    answered,
                )
                .await;
            }
        }
        LaneEvent::Replicated {
            key, generation, ..
        } => match memory.anchors.anchor(&key, generation) {
            Anchor::InCopy if !*BREAK_MARKERS => {
                migration.count_capture(CaptureAction::InCopy);
            }
            _ => {
                // Not replayable (batched above otherwise), or its key's last copy
                // may have lost its marker in a full sync's gap: copy the key.
                memory.anchors.forget(&migration.markers, &key);
                migration.count_capture(CaptureAction::Copied);
                copy_with_retries(migration, known, memory, &key, CopyReason::Write).await;
            }
        },
        LaneEvent::Marker { key, token } => {
            memory.anchors.marker(&migration.markers, &key, token);
        }
        LaneEvent::DropKnown => lock(known).drop_membership(),
    }
}

/// Drop an event a copy already stood for (rule 9), counting it.
fn fold(migration: &Migration, event: LaneEvent) {
    match event {
        LaneEvent::Copy {
            reason: CopyReason::Backfill,
            ..
        } => {
            migration.counters.backfill_skipped.increment(1);
            migration.totals.skipped.fetch_add(1, Relaxed);
        }
        LaneEvent::Write { lag, .. } | LaneEvent::Copy { lag, .. } => {
            migration.counters.folded.increment(1);
            migration.totals.folded.fetch_add(1, Relaxed);
            migration.record_lag(lag);
        }
        LaneEvent::Replicated { .. } => {
            migration.counters.folded.increment(1);
            migration.totals.folded.fetch_add(1, Relaxed);
            migration.count_capture(CaptureAction::InCopy);
        }
        LaneEvent::Shadow { .. } | LaneEvent::Marker { .. } | LaneEvent::DropKnown => {}
    }
}

/// Forget old `copied_at` once every event queued before the last checkpoint has been
/// processed (every so often, or whenever the lane is idle), then take a new checkpoint.
fn collect(
    migration: &Migration,
    index: usize,
    known: &Mutex<KnownCopied>,
    checkpoint: &mut Checkpoint,
    processed: u64,
    idle: bool,
) {
    if processed >= checkpoint.enqueued
        && (processed >= checkpoint.taken_at + COLLECT_EVERY || idle)
    {
        lock(known).collect(checkpoint.low_water);
        *checkpoint = Checkpoint {
            low_water: migration.low_water(),
            enqueued: migration.lanes.enqueued[index].load(SeqCst),
            taken_at: processed,
        };
    }
}

/// Whether a write with `seq` to `key` may be replayed (rule 3): only after a copy whose
/// snapshot it is not part of, and only when that copy carried no TTL (the source may
/// have applied the write just before the key expired and the target would apply it just
/// after). After the backfill (rule 8) every key counts as copied, but a copy taken while
/// this write was in flight still forbids replaying it.
pub(super) fn replay_allowed(
    migration: &Migration,
    known: &KnownCopied,
    key: &[u8],
    seq: u64,
) -> bool {
    if known.allows_every_key() {
        return true;
    }
    let fp = migration.lanes.salt.fingerprint(key);
    *BREAK_RULES
        || (known.is_copied(fp)
            && !known.expires(fp)
            && known.copied_at(fp).is_none_or(|at| at < seq))
}

/// Whether a stream write of `key` that no copy's snapshot holds may be replayed (rule 12):
/// the key was copied (so the target holds its state at the copy's marker, and every
/// stream write after it was replayed or copied in order), and that copy carried no TTL
/// and was one snapshot (the TTL clause of rule 3; a copy by type has no marker).
fn stream_replay_allowed(migration: &Migration, known: &KnownCopied, key: &[u8]) -> bool {
    if known.allows_every_key() {
        return true;
    }
    let fp = migration.lanes.salt.fingerprint(key);
    known.is_copied(fp) && !known.expires(fp)
}

/// Whether a replay's target reply shows the target applied the write as the source did:
/// the same reply (any non-error one with the rules broken for tests).
pub(super) fn replay_agrees(source_reply: &[u8], reply: &[u8]) -> bool {
    reply == source_reply || (*BREAK_RULES && reply.first() != Some(&b'-'))
}

/// The source's and the target's replies to a replayed write, shortened, for the log.
pub(super) fn reply_pair(source: &[u8], target: &[u8]) -> String {
    let short = |r: &[u8]| {
        String::from_utf8_lossy(&r[..r.len().min(80)])
            .trim_end()
            .to_string()
    };
    format!("source {:?}, target {:?}", short(source), short(target))
}

/// Replay a batch of writes, pipelined; a write the target refuses, or whose connection
/// failed, is then handled alone (retried, or its key copied).
async fn replay_batch(
    migration: &Migration,
    known: &Mutex<KnownCopied>,
    memory: &mut Memory,
    batch: Vec<LaneEvent>,
) {
    let mut waiting = Vec::with_capacity(batch.len());
    for event in batch {
        // A stream write has no source reply to compare with: any answer but an error
        // is the target applying it as the source did.
        let (key, request, lag, source_reply) = match event {
            LaneEvent::Write {
                key,
                request,
                lag,
                source_reply,
                ..
            } => (key, request, lag, Some(source_reply)),
            LaneEvent::Replicated {
                key,
                request: Some(request),
                ..
            } => (key, request, LagStart(None), None),
            _ => continue,
        };
        let reply = migration.to_submit(&key, request, Protocol::Resp2).await;
        waiting.push((key, lag, source_reply, reply));
    }
    for (key, lag, source_reply, reply) in waiting {
        let answer = match reply {
            Ok(rx) => rx
                .await
                .unwrap_or(Err(crate::upstream::BackendError::Reset)),
            Err(e) => Err(e),
        };
        // Refused, answered differently from the source (the target had diverged), or an
        // unknown outcome: copy the key (never replay twice).
        let streamed = source_reply.is_none();
        let agrees = |reply: &[u8]| match &source_reply {
            Some(source_reply) => replay_agrees(source_reply, reply),
            None => reply.first() != Some(&b'-'),
        };
        match answer {
            Ok(reply) if agrees(&reply) => {
                migration.count_replayed();
                if streamed {
                    migration.count_capture(CaptureAction::Replayed);
                }
            }
            Ok(reply) => {
                let detail = reply_pair(source_reply.as_deref().unwrap_or(b"+(stream)"), &reply);
                let reason = RetryReason::ReplayDiffered;
                migration.counters.retries.record(reason, &key, &detail);
                copy_with_retries(migration, known, memory, &key, CopyReason::Write).await;
            }
            Err(error) => {
                let reason = RetryReason::ReplayUnanswered;
                migration.counters.retries.record(reason, &key, &error);
                copy_with_retries(migration, known, memory, &key, CopyReason::Write).await;
            }
        }
        migration.record_lag(lag);
    }
}

/// Shortest time between two mismatch log lines.
const MISMATCH_LOG_EVERY: Duration = Duration::from_secs(1);
/// When the last mismatch was logged (milliseconds since the first lane started).
static LAST_MISMATCH_LOG: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

/// Read the target and compare. A first disagreement is confirmed by reading the key again
/// through the authoritative pool (on the key's own connection, so the second read also
/// comes back through this lane in order): a write that reached the source on another
/// connection (a multi-key write pinned to its first key) can make one read disagree
/// without the target being wrong. A confirmed mismatch is counted, logged (at most once
/// a second) and repaired by copying the key again. `answered` is when the source's reply
/// came back: with `read.sent`, when the source was read, for a TTL compared less the
/// time until the target is read.
async fn shadow_check(
    migration: &Arc<Migration>,
    known: &Mutex<KnownCopied>,
    memory: &mut Memory,
    read: ShadowRead,
    request: Bytes,
    source_reply: Bytes,
    answered: std::time::Instant,
) {
    let source_time = shadow::ReadTime {
        sent: read.sent,
        answered,
    };
    let target_sent = std::time::Instant::now();
    let reply = match migration
        .to_submit(&read.key, request.clone(), read.protocol)
        .await
    {
        Ok(rx) => rx
            .await
            .unwrap_or(Err(crate::upstream::BackendError::Reset)),
        Err(e) => Err(e),
    };
    let Ok(reply) = reply else {
        migration.shadow_skip("unavailable");
        return;
    };
    let target_time = shadow::ReadTime {
        sent: target_sent,
        answered: std::time::Instant::now(),
    };
    let counters = migration.counters.shadow.get(read.command);
    let agree = shadow::agree_apart(
        read.compare,
        &source_reply,
        &reply,
        migration.tunables.ttl_tolerance_ms(),
        source_time.until(&target_time),
    );
    if agree {
        if let Some(c) = counters {
            c.checked.increment(1);
        }
        migration.totals.shadow_checked.fetch_add(1, Relaxed);
        if read.confirm {
            migration.counters.shadow_unconfirmed.increment(1);
            migration.totals.shadow_unconfirmed.fetch_add(1, Relaxed);
        }
        return;
    }
    if !read.confirm {
        let confirming = ShadowRead {
            confirm: true,
            ..read
        };
        if migration.capturing() {
            super::placed_read::place(migration, confirming, request);
        } else {
            confirm_read(migration, confirming, request).await;
        }
        return;
    }
    if let Some(c) = counters {
        c.checked.increment(1);
        c.mismatched.increment(1);
    }
    migration.totals.shadow_checked.fetch_add(1, Relaxed);
    migration.totals.shadow_mismatches.fetch_add(1, Relaxed);
    let log_now = LAST_MISMATCH_LOG.lock().is_ok_and(|mut last| {
        let due = last.is_none_or(|at| at.elapsed() >= MISMATCH_LOG_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    });
    if log_now {
        tracing::warn!(
            pool = migration.source.name(),
            command = read.command,
            key = %String::from_utf8_lossy(&read.key),
            source = %String::from_utf8_lossy(&source_reply[..source_reply.len().min(120)]).trim_end(),
            target = %String::from_utf8_lossy(&reply[..reply.len().min(120)]).trim_end(),
            "shadow read mismatch; copying the key again"
        );
    }
    copy_with_retries(migration, known, memory, &read.key, CopyReason::Shadow).await;
}

/// Send the same read again through the authoritative pool with a confirming shadow hook;
/// its reply comes back into this lane behind every event queued meanwhile.
async fn confirm_read(migration: &Arc<Migration>, mut read: ShadowRead, request: Bytes) {
    let pool = migration.authority();
    let Some(route) = pool.route(&read.key) else {
        migration.shadow_skip("unavailable");
        return;
    };
    let protocol = read.protocol;
    read.sent = std::time::Instant::now();
    let hook = MirrorHook::shadow(migration.clone(), read);
    if pool
        .submit_hooked(route, protocol, request, 1, Some(hook))
        .await
        .is_err()
    {
        migration.shadow_skip("unavailable");
    }
}

/// Copy `key` (rule 6: a key gone from the source is deleted), retrying transport
/// failures with backoff; a key that keeps failing is marked dirty (rule 7).
async fn copy_with_retries(
    migration: &Migration,
    known: &Mutex<KnownCopied>,
    memory: &mut Memory,
    key: &Bytes,
    reason: CopyReason,
) {
    let reason_is_dirty = matches!(reason, CopyReason::Dirty);
    let mut backoff = FIRST_BACKOFF;
    let Ok(_slot) = migration.backfill.copy_slots.acquire().await else {
        return;
    };
    for attempt in 1..=ATTEMPTS {
        // Read before the snapshot is requested: every foldable event stamped below it was
        // applied on the authoritative side before the snapshot (rule 9).
        let stamp = migration.lanes.stamp_now();
        // Read before the snapshot too: a full sync after it makes the copy stale.
        let generation = migration.capture_generation();
        match copy::copy_key(migration, key).await {
            Ok(copied) => {
                memory.covers.record(key, stamp);
                let fp = migration.lanes.salt.fingerprint(key);
                // Under capture a copy with no marker (by type: not one snapshot) leaves
                // its key copied at every write, like a key with a TTL (rule 12).
                let unplaced = migration.capturing() && copied.marker.is_none();
                lock(known).insert(fp, copied.copied_at, copied.expires || unplaced);
                match copied.marker {
                    Some(token) => {
                        memory
                            .anchors
                            .copied(&migration.markers, key, token, generation);
                    }
                    None => memory.anchors.forget(&migration.markers, key),
                }
                migration.count_copy(reason, &copied);
                return;
            }
            Err(error @ CopyError::Unavailable(_)) if attempt < ATTEMPTS => {
                let reason = RetryReason::CopyUnavailable;
                migration.counters.retries.record(reason, key, &error);
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(error) => {
                let reason = RetryReason::CopyFailed;
                migration.counters.retries.record(reason, key, &error);
                if reason_is_dirty {
                    // The drainer judges its batches by these (it backs off while they
                    // mostly fail).
                    migration.dirty.failed_again.fetch_add(1, Relaxed);
                    migration.counters.redirty_failed.increment(1);
                }
                migration.mark_dirty(key);
                return;
            }
        }
    }
}
