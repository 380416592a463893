//! A fleet member's send fence (rule 15): until when this process may send requests to a
//! pool's servers. The fleet renews it with each lease renewal; past it, the member's
//! lease may be expiring in etcd and the fleet may go on without it (flip the authority),
//! so nothing more may reach a server from here.
//!
//! Sessions check it before they queue a request, but a process can stop anywhere (a
//! SIGSTOP, a VM pause, a long GC-like stall of the host) and resume seconds later with
//! requests already queued on a server connection, checked when the lease was still
//! good. So the connection checks again right before each write: a resumed member's
//! queued requests are refused (`-TRYAGAIN`), not written to a server that is no longer
//! the authority.
//!
//! A check of the fence at one moment is not enough either: a request routed before a
//! lapse (to the side that was the authority then) may reach its connection only after
//! the member came back, took the new phase and renewed its fence. So the fence counts
//! its lapses, a session stamps each request with the count when it checks the fence and
//! picks its pool, and a connection refuses a request stamped before the latest lapse.

use std::sync::LazyLock;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

/// The instant the fence clock counts from.
static FENCE_EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds on a monotonic clock.
fn fence_clock() -> u64 {
    FENCE_EPOCH.elapsed().as_millis() as u64
}

/// Until when (milliseconds on the fence clock) requests may be sent; 0 when never
/// fenced (not in a fleet).
#[derive(Debug, Default)]
pub struct SendFence {
    /// The deadline, or 0.
    until_ms: AtomicU64,
    /// How many times the fence was found closed when it was renewed: requests checked
    /// before a lapse are not to be sent after it.
    lapses: AtomicU64,
    /// Open for good: the migration is finalized, no flip is left to guard against.
    retired: AtomicBool,
}

impl SendFence {
    /// A fence that is open until it is first renewed.
    pub fn new() -> SendFence {
        SendFence::default()
    }

    /// Open until `valid` after `sent` (when the renewal that allows it was sent).
    pub fn renewed(&self, sent: Instant, valid: Duration) {
        let until = sent.saturating_duration_since(*FENCE_EPOCH) + valid;
        let previous = self.until_ms.load(SeqCst);
        if previous != 0 && fence_clock() > previous {
            // It lapsed: counted before it opens again, so that no connection sees it
            // open with the old count.
            self.lapses.fetch_add(1, SeqCst);
        }
        self.until_ms.store(until.as_millis().max(1) as u64, SeqCst);
    }

    /// How many times the fence lapsed, for stamping requests as they are checked.
    pub fn lapses(&self) -> u64 {
        self.lapses.load(SeqCst)
    }

    /// Open for good (the migration is finalized: the authority no longer changes, so a
    /// member that lost etcd may go on serving).
    pub fn retire(&self) {
        self.retired.store(true, Relaxed);
    }

    /// Whether nothing may be sent now.
    pub fn closed(&self) -> bool {
        let until = self.until_ms.load(SeqCst);
        until != 0 && fence_clock() > until && !self.retired.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_until_renewed_closed_past_its_deadline_open_again_when_retired() {
        let fence = SendFence::new();
        assert!(!fence.closed(), "never renewed: not in a fleet");
        fence.renewed(Instant::now(), Duration::from_secs(60));
        assert!(!fence.closed());
        // A renewal good for no time at all: past it a few milliseconds later.
        fence.renewed(Instant::now(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert!(fence.closed());
        fence.retire();
        assert!(!fence.closed(), "finalized: nothing left to guard");
    }

    #[test]
    fn a_renewal_after_a_lapse_counts_it_and_one_in_time_does_not() {
        let fence = SendFence::new();
        fence.renewed(Instant::now(), Duration::from_secs(60));
        fence.renewed(Instant::now(), Duration::from_secs(60));
        assert_eq!(fence.lapses(), 0, "renewed in time");
        fence.renewed(Instant::now(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        fence.renewed(Instant::now(), Duration::from_secs(60));
        assert_eq!(fence.lapses(), 1, "renewed after it closed");
        assert!(!fence.closed());
    }
}
