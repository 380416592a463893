//! Phases of a migration and the gate that holds new requests while authority flips.
//!
//! `migrating` (the source is authoritative, writes are mirrored to the target) →
//! `cutover` (the target is authoritative, writes are mirrored back to the source so a
//! rollback loses nothing) → `finalized` (the target only, a plain proxy).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering::SeqCst};

use tokio::sync::Notify;

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The source pool is authoritative; writes are mirrored to the target.
    Migrating,
    /// The target pool is authoritative; writes are mirrored back to the source.
    Cutover,
    /// The target pool only; nothing is mirrored.
    Finalized,
}

impl Phase {
    /// Every phase, in order, for per-phase gauges.
    pub const ALL: [Phase; 3] = [Phase::Migrating, Phase::Cutover, Phase::Finalized];

    /// Its name in `/status`, metrics and the state file.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Migrating => "migrating",
            Phase::Cutover => "cutover",
            Phase::Finalized => "finalized",
        }
    }

    /// The phase called `name`.
    pub fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == name)
    }

    /// As stored in an atomic.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    /// Back from an atomic.
    pub fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Migrating,
            1 => Phase::Cutover,
            _ => Phase::Finalized,
        }
    }
}

/// Holds new requests while authority flips. A request enters before it is routed and
/// leaves once it is queued on its server connection; a flip closes the gate, waits until
/// nobody is inside, and opens it again when authority has moved.
#[derive(Debug, Default)]
pub struct Gate {
    /// Set while a flip is in progress: requests wait outside.
    holding: AtomicBool,
    /// Requests between `enter` and `leave`.
    inside: AtomicUsize,
    /// Wakes held requests when the gate opens.
    opened: Notify,
}

/// Where the migration stands in its phases, and what a flip between them needs: the
/// gate that holds requests, the hooks still alive, the lock that serializes flips, and
/// how long the last flip held requests.
pub struct Flips {
    /// The phase (a [`Phase`] as a byte).
    phase: AtomicU8,
    /// Holds new requests while authority flips.
    pub gate: Gate,
    /// Mirror hooks alive: writes (and sampled reads) sent whose events are not queued yet.
    hooks_live: AtomicUsize,
    /// Serializes flips.
    pub lock: tokio::sync::Mutex<()>,
    /// How long the last flip held requests, in microseconds.
    pub last_pause_us: AtomicU64,
    /// Flips given up at their last look, under the gate (rule 20).
    pub given_up_late: AtomicU64,
    /// Why the latest of them was given up.
    pub last_given_up: std::sync::Mutex<Vec<String>>,
    /// Readings of the side clients use a flip's check cut short (a server there did not
    /// answer within 500 ms).
    pub checks_unread: AtomicU64,
}

impl Flips {
    /// Start in `phase`.
    pub fn new(phase: Phase) -> Flips {
        Flips {
            phase: AtomicU8::new(phase.to_u8()),
            gate: Gate::default(),
            hooks_live: AtomicUsize::new(0),
            lock: tokio::sync::Mutex::new(()),
            last_pause_us: AtomicU64::new(0),
            given_up_late: AtomicU64::new(0),
            last_given_up: std::sync::Mutex::new(Vec::new()),
            checks_unread: AtomicU64::new(0),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(SeqCst))
    }

    /// Move to `phase` (a flip, with the gate closed).
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase.to_u8(), SeqCst);
    }

    /// A mirror hook was made (a flip waits until none is alive).
    pub fn hook_started(&self) {
        self.hooks_live.fetch_add(1, SeqCst);
    }

    /// A mirror hook is gone (its events, if any, are queued).
    pub fn hook_finished(&self) {
        self.hooks_live.fetch_sub(1, SeqCst);
    }

    /// Whether no mirror hook is alive.
    pub fn no_hooks(&self) -> bool {
        self.hooks_live.load(SeqCst) == 0
    }
}

/// A request inside the gate; dropping it leaves.
#[must_use = "the request leaves the gate when the pass is dropped"]
pub struct GatePass<'a> {
    /// The gate passed.
    gate: &'a Gate,
}

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        self.gate.inside.fetch_sub(1, SeqCst);
    }
}

impl Gate {
    /// Enter, waiting while the gate is closed. The request is inside until the pass is
    /// dropped: when it is queued on its connection, or when its client goes away first
    /// (so a request that leaves early can never keep a flip waiting).
    pub async fn enter(&self) -> GatePass<'_> {
        loop {
            self.inside.fetch_add(1, SeqCst);
            if !self.holding.load(SeqCst) {
                return GatePass { gate: self };
            }
            self.inside.fetch_sub(1, SeqCst);
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if self.holding.load(SeqCst) {
                opened.await;
            }
        }
    }

    /// Close the gate: requests arriving from now on wait.
    pub fn close(&self) {
        self.holding.store(true, SeqCst);
    }

    /// Whether no request is between `enter` and `leave`.
    pub fn empty(&self) -> bool {
        self.inside.load(SeqCst) == 0
    }

    /// Open the gate and wake every held request.
    pub fn open(&self) {
        self.holding.store(false, SeqCst);
        self.opened.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn names_round_trip() {
        for phase in Phase::ALL {
            assert_eq!(Phase::parse(phase.name()), Some(phase));
            assert_eq!(Phase::from_u8(phase.to_u8()), phase);
        }
        assert_eq!(Phase::parse("done"), None);
    }

    #[tokio::test]
    async fn a_closed_gate_holds_requests_until_it_opens() {
        let gate = Arc::new(Gate::default());
        gate.close();
        let passed = Arc::new(AtomicBool::new(false));
        let task = {
            let (gate, passed) = (gate.clone(), passed.clone());
            tokio::spawn(async move {
                let _pass = gate.enter().await;
                passed.store(true, SeqCst);
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!passed.load(SeqCst), "held while closed");
        assert!(gate.empty());
        gate.open();
        task.await.expect("task");
        assert!(passed.load(SeqCst));
        assert!(gate.empty());
    }

    /// A request that leaves early (its client gone, its future dropped) while inside the
    /// gate leaves the gate: a flip never waits for it.
    #[tokio::test]
    async fn a_request_dropped_inside_the_gate_leaves_it() {
        let gate = Arc::new(Gate::default());
        let inside = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _pass = gate.enter().await;
                std::future::pending::<()>().await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!gate.empty(), "the request is inside");
        inside.abort();
        let _ = inside.await;
        assert!(gate.empty(), "dropped, it left");
    }
}
