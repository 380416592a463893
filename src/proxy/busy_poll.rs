//! Busy polling (`--busy-poll MICROSECONDS`, off by default): while a few clients (up to
//! four) talk to the proxy one request at a time, keep the runtime polling its sockets for a
//! short window after each client read or reply, instead of letting the thread sleep.
//!
//! Why: with a lone client nothing can be batched, and what a request waits for is the
//! proxy's own wake-ups: the client's request and the server's reply each find the
//! proxy's thread asleep in `epoll_wait`, and waking it costs more than the proxy's work
//! (on the 2-core VM the benchmarks run on, `perf` puts about 90% of the proxy's time per
//! request in the kernel, mostly waking and being woken; see `benches/README.md`). A
//! thread that is still polling when the bytes arrive is not woken at all. HAProxy's
//! `busy-polling` answers the same problem, for the same reason (virtual machines).
//!
//! The price is CPU: a core stays busy while the window lasts. So polling is bounded
//! three ways. It only starts on client I/O and stops `window` after the last one (an
//! idle proxy sleeps as before). It stops when more than [`MAX_BUSY_CLIENTS`] clients
//! have replies owed, and stays asleep for [`STAND_ASIDE`] after: with more clients there
//! is a queue, batching already hides the wake-ups, and a polling thread takes a core the
//! servers and clients need (measured at 50 clients without the gate: 0.7-0.85x of
//! nutcracker). The pause keeps it from starting again each time the count dips for a
//! moment, as it does between bursts at 16 and more clients. And it is off unless asked
//! for.
//!
//! How: one task (the poller) yields in a loop while the window is open. A yielded task
//! makes tokio's scheduler poll the I/O driver with a zero timeout, so every turn is a
//! non-blocking `epoll_wait`: readiness is found without a wake-up, and the sessions run
//! at once. Each turn also yields the thread to the kernel (`sched_yield`), so a server
//! or client that is ready to run on the poller's CPU runs first. With a multi-thread runtime (`--threads` above 1) it keeps one worker polling.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram, counter, histogram};
use serde_json::json;
use tokio::sync::{Notify, watch};

/// More clients than this with replies owed, and the poller sleeps. Four clients that
/// each send one request at a time still gain from polling (1.03-1.10x, median p99 no higher,
/// `benches/README.md`); two, the first gate, left them at about 1.05x with a p99 above
/// nutcracker's in some rounds, because four such clients are mostly all owed at once.
pub const MAX_BUSY_CLIENTS: usize = 4;

/// How long the poller stays asleep after it saw more than [`MAX_BUSY_CLIENTS`] clients
/// owed replies.
pub const STAND_ASIDE: Duration = Duration::from_millis(10);

/// The proxy's busy polling: what sessions tell it, and its counters.
pub struct BusyPoll {
    /// How long polling goes on after the last client read or reply.
    window: Duration,
    /// Bumped on every client read and every reply written.
    activity: AtomicU64,
    /// Clients with replies owed.
    busy_clients: AtomicUsize,
    /// Whether the poller is asleep, waiting for client I/O.
    asleep: AtomicBool,
    /// Wakes the poller.
    wake: Notify,
    /// Metrics, resolved once.
    metrics: PollMetrics,
    /// Client I/O caught while polling, for `/status`.
    caught: AtomicU64,
    /// Polling spells, for `/status`.
    spells: AtomicU64,
    /// Time spent polling, in nanoseconds, for `/status`.
    polled_nanos: AtomicU64,
    /// The CPU quota the process runs under, in cores, if any (polling is charged to it).
    cpu_quota: Option<f64>,
}

/// Busy polling's metrics.
struct PollMetrics {
    /// Client reads and replies the poller saw while polling (each one found by a
    /// zero-timeout poll, not by a wake-up).
    caught: Counter,
    /// Polling spells that ended because the window passed with no client I/O.
    idle: Counter,
    /// Polling spells that ended, or never began, because too many clients were busy.
    crowded: Counter,
    /// How long each spell lasted: its sum is the CPU time polling cost.
    spell: Histogram,
}

impl BusyPoll {
    /// Busy polling for `window` after each client I/O, in a process under `cpu_quota`
    /// cores of CPU quota (none: unlimited).
    pub fn new(window: Duration, cpu_quota: Option<f64>) -> BusyPoll {
        BusyPoll {
            window,
            activity: AtomicU64::new(0),
            busy_clients: AtomicUsize::new(0),
            asleep: AtomicBool::new(true),
            wake: Notify::new(),
            metrics: PollMetrics {
                caught: counter!("cutover_busy_poll_caught_total"),
                idle: counter!("cutover_busy_poll_spells_total", "end" => "idle"),
                crowded: counter!("cutover_busy_poll_spells_total", "end" => "crowded"),
                spell: histogram!("cutover_busy_poll_spell_seconds"),
            },
            caught: AtomicU64::new(0),
            spells: AtomicU64::new(0),
            polled_nanos: AtomicU64::new(0),
            cpu_quota,
        }
    }

    /// A client read a request or was sent a reply.
    pub fn client_io(&self) {
        self.activity.fetch_add(1, Relaxed);
        if self.asleep.load(Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Whether few enough clients are busy for polling to pay.
    fn quiet(&self) -> bool {
        self.busy_clients.load(Relaxed) <= MAX_BUSY_CLIENTS
    }

    /// Poll until `shutdown` turns true: sleep until a client does I/O, then poll until
    /// the window passes without any, or more clients get busy (and then stand aside for
    /// [`STAND_ASIDE`]).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut crowded_at: Option<Instant> = None;
        loop {
            self.asleep.store(true, Relaxed);
            tokio::select! {
                () = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            self.asleep.store(false, Relaxed);
            if *shutdown.borrow() {
                return;
            }
            if !self.quiet() {
                self.metrics.crowded.increment(1);
                crowded_at = Some(Instant::now());
                continue;
            }
            if crowded_at.is_some_and(|at| at.elapsed() < STAND_ASIDE) {
                continue;
            }
            let started = Instant::now();
            let mut seen = self.activity.load(Relaxed);
            let mut last_io = started;
            let crowded = loop {
                tokio::task::yield_now().await;
                // Give this CPU to any other thread that is ready to run on it (a Redis
                // server or a client woken by our last write): the poller only takes
                // time nobody else wants. Without it, at 4 clients the poller held the
                // CPU while they waited, and p99 rose above nutcracker's.
                std::thread::yield_now();
                if !self.quiet() {
                    break true;
                }
                let now = self.activity.load(Relaxed);
                if now != seen {
                    let caught = now.wrapping_sub(seen);
                    self.metrics.caught.increment(caught);
                    self.caught.fetch_add(caught, Relaxed);
                    seen = now;
                    last_io = Instant::now();
                } else if last_io.elapsed() >= self.window {
                    break false;
                }
            };
            let end = if crowded {
                crowded_at = Some(Instant::now());
                &self.metrics.crowded
            } else {
                &self.metrics.idle
            };
            end.increment(1);
            let spell = started.elapsed();
            self.metrics.spell.record(spell.as_secs_f64());
            self.spells.fetch_add(1, Relaxed);
            self.polled_nanos
                .fetch_add(u64::try_from(spell.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        }
    }

    /// What `/status` shows.
    pub fn status_json(&self) -> serde_json::Value {
        json!({
            "window_us": self.window.as_micros() as u64,
            "max_busy_clients": MAX_BUSY_CLIENTS,
            "busy_clients": self.busy_clients.load(Relaxed),
            "caught": self.caught.load(Relaxed),
            "spells": self.spells.load(Relaxed),
            "polled_seconds": self.polled_nanos.load(Relaxed) as f64 / 1e9,
            "cpu_quota_cores": self.cpu_quota,
        })
    }
}

/// A session's part in busy polling: tells the poller of its client's I/O and whether
/// replies are owed to the client (and stops counting it as busy when dropped).
pub struct ClientMark {
    /// The proxy's poller, if busy polling is on.
    poll: Option<Arc<BusyPoll>>,
    /// Whether this client is counted busy.
    busy: bool,
}

impl ClientMark {
    /// A client of `poll` (nothing to do when busy polling is off).
    pub fn new(poll: Option<Arc<BusyPoll>>) -> ClientMark {
        ClientMark { poll, busy: false }
    }

    /// The client read a request or was sent a reply.
    pub fn io(&self) {
        if let Some(poll) = &self.poll {
            poll.client_io();
        }
    }

    /// Whether the client is owed replies now.
    pub fn owed(&mut self, owed: bool) {
        let Some(poll) = &self.poll else { return };
        if owed != self.busy {
            self.busy = owed;
            if owed {
                poll.busy_clients.fetch_add(1, Relaxed);
            } else {
                poll.busy_clients.fetch_sub(1, Relaxed);
            }
        }
    }
}

impl Drop for ClientMark {
    fn drop(&mut self) {
        self.owed(false);
    }
}
