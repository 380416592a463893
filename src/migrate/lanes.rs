//! The lanes' shared state: the queue into each lane, how many events each lane was given
//! and has processed, each lane's known-copied set, and the two counters the lane rules
//! read: the sequence counter every mirrored write takes a number from (rule 2) and the
//! stamp counter every queued event takes a stamp from (rule 9). The lanes themselves run
//! in `lane.rs`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use tokio::sync::mpsc;

use super::known::{KnownCopied, Salt};
use super::lane::{LaneEvent, Queued};

/// The lanes of one migration.
pub struct Lanes {
    /// Senders to the lanes.
    senders: Vec<mpsc::Sender<Queued>>,
    /// Events ever queued to each lane (for forgetting `copied_at` safely, and idleness).
    pub enqueued: Vec<AtomicU64>,
    /// Events each lane has processed (for idleness and safe checkpoints).
    pub processed: Vec<AtomicU64>,
    /// Each lane's known-copied set, shared with direct replays.
    pub known: Vec<Mutex<KnownCopied>>,
    /// Fingerprint salts of the known-copied sets.
    pub salt: Salt,
    /// The sequence counter (rule 2).
    seq: AtomicU64,
    /// The stamp counter (rule 9).
    stamps: AtomicU64,
    /// Set by a stop that found the lanes still busy: each lane marks the key of every
    /// event it takes dirty instead of acting on it (rule 7: the dirty file outlives the
    /// process, so the next run copies those keys).
    spilling: std::sync::atomic::AtomicBool,
}

impl Lanes {
    /// `count` lanes of `per_lane` queued events each; the receivers go to the lane tasks.
    pub fn new(count: usize, per_lane: usize, salt: Salt) -> (Lanes, Vec<mpsc::Receiver<Queued>>) {
        let (senders, receivers) = (0..count).map(|_| mpsc::channel(per_lane)).unzip();
        let lanes = Lanes {
            senders,
            enqueued: (0..count).map(|_| AtomicU64::new(0)).collect(),
            processed: (0..count).map(|_| AtomicU64::new(0)).collect(),
            known: (0..count).map(|_| Mutex::default()).collect(),
            salt,
            seq: AtomicU64::new(1),
            stamps: AtomicU64::new(0),
            spilling: std::sync::atomic::AtomicBool::new(false),
        };
        (lanes, receivers)
    }

    /// Number of lanes.
    pub fn count(&self) -> usize {
        self.senders.len()
    }

    /// The lane of `key` (FNV-1a, so a key always takes the same lane).
    pub fn of(&self, key: &[u8]) -> usize {
        let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (h % self.senders.len() as u64) as usize
    }

    /// Take the next sequence number: the counter's value after this write, so a write
    /// numbered after a copy's snapshot (`copied_at` = the counter then) gets a larger
    /// number, and one numbered before gets one no larger (rule 3's `copied_at < seq`).
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, SeqCst) + 1
    }

    /// The sequence counter's value now (a copy's `copied_at`).
    pub fn seq_now(&self) -> u64 {
        self.seq.load(SeqCst)
    }

    /// The next stamp: a copy that reads it before its snapshot covers every foldable
    /// event stamped below it (rule 9).
    pub fn stamp_now(&self) -> u64 {
        self.stamps.load(SeqCst)
    }

    /// Stamp `event` and queue it on `lane` without waiting; false when the lane is full
    /// (or closed) and the event was not queued.
    pub fn try_queue(&self, lane: usize, event: LaneEvent, foldable: bool) -> bool {
        self.enqueued[lane].fetch_add(1, SeqCst);
        let queued = Queued {
            stamp: self.stamps.fetch_add(1, SeqCst),
            foldable,
            event,
        };
        let queued = self.senders[lane].try_send(queued).is_ok();
        if !queued {
            self.enqueued[lane].fetch_sub(1, SeqCst);
        }
        queued
    }

    /// Stamp `event` (foldable) and queue it on `lane`, waiting for room.
    pub async fn queue(&self, lane: usize, event: LaneEvent) {
        self.enqueued[lane].fetch_add(1, SeqCst);
        let queued = Queued {
            stamp: self.stamps.fetch_add(1, SeqCst),
            foldable: true,
            event,
        };
        if self.senders[lane].send(queued).await.is_err() {
            self.enqueued[lane].fetch_sub(1, SeqCst);
        }
    }

    /// Whether lane `lane` has processed every event queued to it (none waits or runs).
    pub fn idle(&self, lane: usize) -> bool {
        self.processed[lane].load(SeqCst) >= self.enqueued[lane].load(SeqCst)
    }

    /// Wait until every lane has processed every event queued to it before this call
    /// (events queued later, by other feeds, do not delay it).
    pub async fn barrier(&self) {
        let queued = self.enqueued_now();
        while self
            .processed_now()
            .iter()
            .zip(&queued)
            .any(|(done, queued)| done < queued)
        {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// From now on, every event a lane takes only marks its key dirty (a stop that cannot
    /// wait for the target).
    pub fn spill(&self) {
        self.spilling.store(true, SeqCst);
    }

    /// Whether the lanes spill their events into dirty keys.
    pub fn spilling(&self) -> bool {
        self.spilling.load(SeqCst)
    }

    /// Whether every lane has processed every event queued to it.
    pub fn all_idle(&self) -> bool {
        (0..self.count()).all(|lane| self.idle(lane))
    }

    /// Events waiting in the lanes' queues.
    pub fn queued(&self) -> u64 {
        self.senders
            .iter()
            .map(|l| (l.max_capacity() - l.capacity()) as u64)
            .sum()
    }

    /// Events each lane has processed so far.
    pub fn processed_now(&self) -> Vec<u64> {
        self.processed.iter().map(|p| p.load(SeqCst)).collect()
    }

    /// Events queued to each lane so far.
    pub fn enqueued_now(&self) -> Vec<u64> {
        self.enqueued.iter().map(|e| e.load(SeqCst)).collect()
    }

    /// Keys and bytes in the known-copied sets (read at scrape time).
    pub fn known_size(&self) -> (usize, usize) {
        self.known.iter().fold((0, 0), |(keys, bytes), known| {
            let k = super::known::lock(known);
            (keys + k.len(), bytes + k.bytes())
        })
    }
}
