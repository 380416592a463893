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

use std::sync::LazyLock;
use std::sync::atomic::Ordering::Relaxed;
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
        self.until_ms
            .store(until.as_millis().max(1) as u64, Relaxed);
    }

    /// Open for good (the migration is finalized: the authority no longer changes, so a
    /// member that lost etcd may go on serving).
    pub fn retire(&self) {
        self.retired.store(true, Relaxed);
    }

    /// Whether nothing may be sent now.
    pub fn closed(&self) -> bool {
        let until = self.until_ms.load(Relaxed);
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
}
