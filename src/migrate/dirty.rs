//! Dirty keys (rule 7): keys whose copy or replay kept failing, or whose mirror event found
//! its lane full. They are appended to a file, not held in memory, and copied again later
//! by [`drain`], so a slow or dead target never grows the proxy's memory.
//!
//! The file outlives the process: a restart copies again every key an earlier run left in
//! it (always safe), and cuts off a record a crash or a full disk left half-written, so
//! what is appended after it reads back. A key taken from the file lives only in its
//! lane's queue until its copy is done, so the file keeps it until then: it starts over
//! empty only once every key taken from it has been copied (or marked dirty again).
//!
//! While the target is down every copy of a dirty key fails and marks its key dirty
//! again, so a drainer at full speed would append to the file for as long as the outage
//! lasts. When most of a batch fails again the drainer backs off instead: it takes a probe
//! of [`PROBE`] keys after a wait that doubles up to [`MOST_BACKOFF`], and goes back to
//! full batches once a probe's copies mostly succeed. The file then grows by at most a
//! probe every few seconds during an outage, and the drain resumes within
//! [`MOST_BACKOFF`] of the target's return.
//!
//! When the file cannot be opened or written (a full disk, permissions, a directory in
//! its place), a dirty key is never dropped: it is kept in a bounded in-memory set,
//! counted (`cutover_dirty_keys_unpersisted`), logged, and the migration needs a verify
//! pass (a key past the bound, or one the restart of a process loses, is then found by
//! verify): `/status` says `needs_verify` and the cutover is refused until a verify pass
//! that began after the last such key has finished.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Migration, lock};

/// How often the drainer looks for dirty keys.
const DRAIN_INTERVAL: Duration = Duration::from_millis(500);
/// Most keys taken in one turn while their copies succeed.
const BATCH: usize = 1024;
/// Keys taken in one turn while the drainer backs off (most of its last batch failed).
pub const PROBE: usize = 16;
/// Longest wait between two probes while copies keep failing.
const MOST_BACKOFF: Duration = Duration::from_secs(5);
/// Longest key accepted back from the file (guards against a damaged file).
const MAX_KEY: usize = 512 * 1024 * 1024;
/// Most dirty keys held in memory when the file fails.
const MEMORY_KEYS: usize = 100_000;
/// Shortest time between two log lines about the file failing.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a verify pass is owed, besides dirty keys the file could not take: each says what
/// may differ that no lane saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owed {
    /// Part of a source's replication stream was lost, or a replicated command's keys
    /// could not be told.
    StreamGap = 0,
    /// This member took over from a fleet leader, whose dirty keys died with it.
    Takeover = 1,
    /// The dirty-key file ended in a damaged record (a crash, a full disk).
    DamagedFile = 2,
    /// A server restarted: what it reloaded may hold keys since deleted, or lack keys the
    /// other side holds.
    Restart = 3,
    /// A server of the side clients use was ejected (rule 18): their writes for its keys
    /// went to other servers, and it came back with what it held before.
    Ejection = 4,
    /// A server of the mirrored side evicted keys (rule 19): its maxmemory is full.
    Eviction = 5,
    /// A server of the side clients use evicted keys under `capture: proxy` (rule 19):
    /// the other side still holds them.
    EvictionNotFollowed = 6,
}

impl Owed {
    /// Every cause, in the order of their numbers.
    pub const ALL: [Owed; 7] = [
        Owed::StreamGap,
        Owed::Takeover,
        Owed::DamagedFile,
        Owed::Restart,
        Owed::Ejection,
        Owed::Eviction,
        Owed::EvictionNotFollowed,
    ];
}

/// The dirty-key file and its progress.
pub struct DirtyKeys {
    /// The file, opened for reading and appending (`None` when it could not be opened).
    file: Mutex<Option<std::fs::File>>,
    /// Where it is.
    pub path: PathBuf,
    /// Bytes of the file already copied again.
    read_offset: AtomicU64,
    /// Keys written and not yet copied again (file and memory).
    pub pending: AtomicU64,
    /// Dirty keys the file could not take, copied again from memory.
    memory: Mutex<VecDeque<Bytes>>,
    /// Keys that could not be written to the file, ever (each raises the need for a
    /// verify pass).
    pub unpersisted: AtomicU64,
    /// Keys that could be neither written nor kept (memory full): only a verify finds them.
    pub overflowed: AtomicU64,
    /// Times a verify pass was owed for another reason ([`Owed`]).
    pub owed: AtomicU64,
    /// Per [`Owed`] cause: `unpersisted + owed` right after it was last owed (a verify pass
    /// that began at or after that mark and finished pays it).
    owed_marks: [AtomicU64; Owed::ALL.len()],
    /// Copies of dirty keys that failed again (each marked its key dirty once more).
    pub failed_again: AtomicU64,
    /// How long the drainer waits before its next probe, in milliseconds: 0 while copies
    /// of dirty keys succeed.
    pub backoff_ms: AtomicU64,
    /// `unpersisted + owed` when the last verify pass that has finished began.
    verified_through: AtomicU64,
    /// When the file's failure was last logged.
    logged: Mutex<Option<Instant>>,
}

impl DirtyKeys {
    /// Open (creating) the dirty file at `path`.
    pub fn open(path: PathBuf) -> DirtyKeys {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path);
        if let Err(error) = &file {
            tracing::error!(path = %path.display(), %error, "cannot open the dirty-key file; dirty keys will be kept in memory (bounded) and a verify pass will be needed before the cutover");
        }
        let (left, damaged) = match file.as_mut().map(recover) {
            Ok(Ok(found)) => found,
            Ok(Err(error)) => {
                tracing::error!(path = %path.display(), %error, "cannot read the dirty-key file an earlier run left; a verify pass will be needed before the cutover");
                (0, true)
            }
            Err(_) => (0, false),
        };
        if left > 0 {
            tracing::info!(path = %path.display(), keys = left, "dirty keys left by an earlier run: they are copied again");
        }
        if damaged {
            tracing::warn!(path = %path.display(), keys = left, "the dirty-key file ended in a damaged record (cut short by a crash or a full disk), now cut off; a verify pass will be needed before the cutover");
        }
        DirtyKeys {
            file: Mutex::new(file.ok()),
            path,
            read_offset: AtomicU64::new(0),
            pending: AtomicU64::new(left),
            memory: Mutex::new(VecDeque::new()),
            unpersisted: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            owed: AtomicU64::new(u64::from(damaged)),
            owed_marks: Owed::ALL
                .map(|cause| AtomicU64::new(u64::from(damaged && cause == Owed::DamagedFile))),
            failed_again: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(0),
            verified_through: AtomicU64::new(0),
            logged: Mutex::new(None),
        }
    }

    /// Record `key` as dirty: in the file, or in memory when the file fails.
    pub fn mark(&self, key: &[u8]) {
        let written = {
            let mut guard = lock(&self.file);
            match guard.as_mut() {
                Some(file) => {
                    let mut record = (key.len() as u32).to_le_bytes().to_vec();
                    record.extend_from_slice(key);
                    let end = file.seek(SeekFrom::End(0));
                    let written = file.write_all(&record).map_err(|e| e.to_string());
                    if written.is_ok() {
                        // Counted under the lock: a reader never takes a key not yet
                        // counted.
                        self.pending.fetch_add(1, Relaxed);
                    } else if let Ok(end) = end {
                        // A record half-written (a full disk) would garble every one
                        // appended after it.
                        let _ = file.set_len(end);
                    }
                    written
                }
                None => Err("the file could not be opened".to_string()),
            }
        };
        let Err(error) = written else {
            return;
        };
        self.unpersisted.fetch_add(1, Relaxed);
        let kept = {
            let mut memory = lock(&self.memory);
            let room = memory.len() < MEMORY_KEYS;
            if room {
                memory.push_back(Bytes::copy_from_slice(key));
            }
            room
        };
        if kept {
            self.pending.fetch_add(1, Relaxed);
        } else {
            self.overflowed.fetch_add(1, Relaxed);
        }
        let due = {
            let mut last = lock(&self.logged);
            let due = last.is_none_or(|at| at.elapsed() >= LOG_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            tracing::error!(
                path = %self.path.display(),
                %error,
                unpersisted = self.unpersisted.load(Relaxed),
                in_memory = lock(&self.memory).len(),
                overflowed = self.overflowed.load(Relaxed),
                "cannot write dirty keys to the dirty-key file: kept in memory; a verify pass is needed before the cutover"
            );
        }
    }

    /// Dirty keys held in memory now.
    pub fn in_memory(&self) -> usize {
        lock(&self.memory).len()
    }

    /// Whether a dirty key could not be written to the file since the last verify pass
    /// began: the migration needs one (it may have been lost with the process, or to the
    /// memory bound).
    pub fn needs_verify(&self) -> bool {
        self.verify_mark() > self.verified_through.load(Relaxed)
    }

    /// Something outside the lanes' view may differ (`cause`): a verify pass that begins
    /// after now is needed before the cutover.
    pub fn owe_verify(&self, cause: Owed) {
        self.owed.fetch_add(1, Relaxed);
        self.owed_marks[cause as usize].fetch_max(self.verify_mark(), Relaxed);
    }

    /// Close the file and remove it: at a stop, when no later run can read it.
    pub fn discard_file(&self) {
        *lock(&self.file) = None;
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the dirty-key file");
        }
    }

    /// Whether a verify pass is still owed for `cause`.
    pub fn owes(&self, cause: Owed) -> bool {
        self.owed_marks[cause as usize].load(Relaxed) > self.verified_through.load(Relaxed)
    }

    /// A verify pass is starting: what it will have covered once it finishes.
    pub fn verify_mark(&self) -> u64 {
        self.unpersisted.load(Relaxed) + self.owed.load(Relaxed)
    }

    /// A verify pass that began at `mark` has finished.
    pub fn verified(&self, mark: u64) {
        self.verified_through.fetch_max(mark, Relaxed);
    }

    /// The drainer's wait before its next probe (zero while copies succeed).
    fn backoff(&self, wait: Duration) {
        self.backoff_ms.store(wait.as_millis() as u64, Relaxed);
    }

    /// Up to `max` dirty keys not yet taken, advancing past them.
    fn take(&self, max: usize) -> Vec<Bytes> {
        let mut keys: Vec<Bytes> = {
            let mut memory = lock(&self.memory);
            let n = memory.len().min(max);
            memory.drain(..n).collect()
        };
        self.pending.fetch_sub(keys.len() as u64, Relaxed);
        let mut guard = lock(&self.file);
        let Some(file) = guard.as_mut() else {
            return keys;
        };
        let from_memory = keys.len();
        let mut offset = self.read_offset.load(Relaxed);
        if file.seek(SeekFrom::Start(offset)).is_err() {
            return keys;
        }
        while keys.len() < max {
            let mut len = [0u8; 4];
            if file.read_exact(&mut len).is_err() {
                break;
            }
            let len = u32::from_le_bytes(len) as usize;
            if len > MAX_KEY {
                break;
            }
            let mut key = vec![0u8; len];
            if file.read_exact(&mut key).is_err() {
                break;
            }
            offset += 4 + len as u64;
            keys.push(Bytes::from(key));
        }
        let _ = file.seek(SeekFrom::End(0));
        self.read_offset.store(offset, Relaxed);
        self.pending
            .fetch_sub((keys.len() - from_memory) as u64, Relaxed);
        keys
    }

    /// Start the file over if every key in it was taken (none was marked since). Only for
    /// the drainer, once the lanes have processed every copy it queued: until then a
    /// taken key's only record is the file.
    fn compact(&self) {
        let mut guard = lock(&self.file);
        let Some(file) = guard.as_mut() else {
            return;
        };
        let offset = self.read_offset.load(Relaxed);
        let at_end = file.seek(SeekFrom::End(0)).is_ok_and(|end| end == offset);
        if at_end && offset > 0 && file.set_len(0).is_ok() {
            self.read_offset.store(0, Relaxed);
        }
    }
}

/// Count the whole records of a dirty-key file an earlier run left, and cut off a damaged
/// tail (a record cut short, or a length no key has) so that what is appended next reads
/// back. The records found, and whether a tail was cut off.
fn recover(file: &mut std::fs::File) -> std::io::Result<(u64, bool)> {
    let total = file.metadata()?.len();
    let (mut offset, mut records) = (0u64, 0u64);
    {
        let mut reader = std::io::BufReader::new(&mut *file);
        reader.seek(SeekFrom::Start(0))?;
        while offset + 4 <= total {
            let mut len = [0u8; 4];
            reader.read_exact(&mut len)?;
            let len = u64::from(u32::from_le_bytes(len));
            if len > MAX_KEY as u64 || offset + 4 + len > total {
                break;
            }
            reader.seek_relative(len as i64)?;
            offset += 4 + len;
            records += 1;
        }
    }
    let damaged = offset < total;
    if damaged {
        file.set_len(offset)?;
    }
    file.seek(SeekFrom::End(0))?;
    Ok((records, damaged))
}

/// A batch of dirty keys queued on the lanes and not yet judged.
struct InFlight {
    /// Keys taken.
    taken: u64,
    /// [`DirtyKeys::failed_again`] before they were queued.
    failed_before: u64,
    /// The lanes' queued counts once they were queued: once each lane has processed that
    /// many events, every copy of the batch is done (or its key marked again).
    queued: Vec<u64>,
}

/// How fast the drainer takes keys: full batches while copies succeed, probes after a
/// doubling wait while most of a batch fails again.
#[derive(Debug, Default)]
struct Pace {
    /// Wait before the next take (zero while copies succeed).
    backoff: Duration,
    /// When the next take may happen.
    next: Option<Instant>,
}

impl Pace {
    /// Judge a batch of `taken` keys of which `failed` failed again.
    fn judge(&mut self, taken: u64, failed: u64) {
        let was = self.backoff;
        self.backoff = if failed * 2 > taken {
            (was * 2).clamp(DRAIN_INTERVAL, MOST_BACKOFF)
        } else {
            Duration::ZERO
        };
        self.next = Some(Instant::now() + self.backoff);
        if was.is_zero() && !self.backoff.is_zero() {
            tracing::warn!(
                failed,
                taken,
                "copies of dirty keys keep failing (the target is down?): the drainer now tries a few keys at a time, waiting up to {} s between tries, so that the dirty-key file does not grow with the outage",
                MOST_BACKOFF.as_secs()
            );
        } else if !was.is_zero() && self.backoff.is_zero() {
            tracing::info!(
                taken,
                "copies of dirty keys succeed again: the drainer goes back to full speed"
            );
        }
    }

    /// Whether the drainer may take keys now.
    fn due(&self) -> bool {
        self.next.is_none_or(|next| Instant::now() >= next)
    }

    /// Keys to take now.
    fn batch(&self) -> usize {
        if self.backoff.is_zero() { BATCH } else { PROBE }
    }
}

/// Copy dirty keys again, through their lanes, one batch at a time; judge each batch once
/// the lanes have processed it (backing off while copies fail, see the module's doc), and
/// start the file over once every key taken from it was processed.
pub async fn drain(migration: Arc<Migration>) {
    let mut in_flight: Option<InFlight> = None;
    let mut pace = Pace::default();
    loop {
        tokio::time::sleep(DRAIN_INTERVAL).await;
        if migration.lanes.spilling() {
            // Stopping: what is in the file stays there for the next run.
            continue;
        }
        if let Some(batch) = &in_flight {
            let processed = migration.lanes.processed_now();
            if !processed
                .iter()
                .zip(&batch.queued)
                .all(|(done, queued)| done >= queued)
            {
                continue;
            }
            let failed = migration.dirty.failed_again.load(Relaxed) - batch.failed_before;
            pace.judge(batch.taken, failed);
            migration.dirty.backoff(pace.backoff);
            migration
                .counters
                .dirty_backoff
                .set(pace.backoff.as_secs_f64());
            in_flight = None;
            migration.dirty.compact();
        }
        if !pace.due() {
            continue;
        }
        let failed_before = migration.dirty.failed_again.load(Relaxed);
        let keys = migration.dirty.take(pace.batch());
        if keys.is_empty() {
            continue;
        }
        let taken = keys.len() as u64;
        for key in keys {
            migration.queue_copy(key, super::CopyReason::Dirty).await;
        }
        in_flight = Some(InFlight {
            taken,
            failed_before,
            queued: migration.lanes.enqueued_now(),
        });
        migration.publish_dirty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dirty-key file in a fresh directory (kept while the directory lives).
    fn fresh() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("m.dirty");
        (dir, path)
    }

    #[test]
    fn the_drainer_backs_off_to_probes_while_batches_mostly_fail_and_resumes_when_one_succeeds() {
        let mut pace = Pace::default();
        assert!(pace.due());
        assert_eq!(pace.batch(), BATCH);
        // Half failing is not "most": full speed still.
        pace.judge(10, 5);
        assert_eq!((pace.backoff, pace.batch()), (Duration::ZERO, BATCH));
        let mut waits = Vec::new();
        for _ in 0..6 {
            pace.judge(16, 16);
            waits.push(pace.backoff.as_millis());
        }
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(pace.batch(), PROBE);
        assert!(!pace.due(), "a probe waits for its turn");
        pace.judge(16, 3);
        assert_eq!((pace.backoff, pace.batch()), (Duration::ZERO, BATCH));
        assert!(pace.due());
    }

    #[test]
    fn a_verify_owed_is_owed_for_its_cause_until_a_pass_that_began_after_it_finishes() {
        let (_dir, path) = fresh();
        let dirty = DirtyKeys::open(path);
        let before = dirty.verify_mark();
        dirty.owe_verify(Owed::Restart);
        assert!(dirty.owes(Owed::Restart) && dirty.needs_verify());
        assert!(
            !dirty.owes(Owed::StreamGap),
            "each cause says its own reason"
        );
        dirty.verified(before);
        assert!(
            dirty.owes(Owed::Restart),
            "a pass that began before does not pay"
        );
        let mark = dirty.verify_mark();
        dirty.verified(mark);
        assert!(!dirty.owes(Owed::Restart) && !dirty.needs_verify());
    }

    #[test]
    fn keys_an_earlier_run_left_are_counted_and_taken_again() {
        let (_dir, path) = fresh();
        let first = DirtyKeys::open(path.clone());
        for key in [b"a".as_slice(), b"bb", b"ccc"] {
            first.mark(key);
        }
        assert_eq!(first.take(1), vec![Bytes::from_static(b"a")]);
        drop(first);
        // A restart does not know how far the last run got: every key is copied again.
        let second = DirtyKeys::open(path);
        assert_eq!(second.pending.load(Relaxed), 3);
        assert_eq!(second.take(10).len(), 3);
        assert_eq!(second.pending.load(Relaxed), 0);
        assert!(!second.needs_verify(), "nothing was lost");
    }

    #[test]
    fn a_record_cut_short_is_cut_off_and_what_follows_reads_back() {
        let (_dir, path) = fresh();
        let mut bytes = Vec::new();
        for key in [b"k1".as_slice(), b"k2"] {
            bytes.extend_from_slice(&(key.len() as u32).to_le_bytes());
            bytes.extend_from_slice(key);
        }
        // A third record whose key was never wholly written.
        bytes.extend_from_slice(&10u32.to_le_bytes());
        bytes.extend_from_slice(b"k3");
        std::fs::write(&path, &bytes).expect("write");
        let dirty = DirtyKeys::open(path);
        assert_eq!(dirty.pending.load(Relaxed), 2);
        assert!(dirty.needs_verify(), "the cut-short key may be lost");
        dirty.mark(b"k4");
        let keys: Vec<Bytes> = dirty.take(10);
        assert_eq!(keys, [&b"k1"[..], b"k2", b"k4"]);
        assert_eq!(dirty.pending.load(Relaxed), 0);
    }

    #[test]
    fn the_file_keeps_taken_keys_until_compacted_and_starts_over_only_when_all_were_taken() {
        let (_dir, path) = fresh();
        let len = || std::fs::metadata(&path).expect("file").len();
        let dirty = DirtyKeys::open(path.clone());
        dirty.mark(b"x");
        dirty.mark(b"y");
        assert_eq!(dirty.take(1).len(), 1);
        dirty.compact();
        assert!(len() > 0, "y waits");
        assert_eq!(dirty.take(1).len(), 1);
        assert!(len() > 0, "taken, but their copies may not be done: kept");
        dirty.compact();
        assert_eq!(len(), 0);
        dirty.mark(b"z");
        assert_eq!(dirty.take(10), vec![Bytes::from_static(b"z")]);
        dirty.mark(b"w");
        dirty.compact();
        assert!(len() > 0, "w was marked after the last take");
        assert_eq!(dirty.take(10), vec![Bytes::from_static(b"w")]);
    }
}
