//! Busy polling (`--busy-poll auto`, the default; `MICROSECONDS` for a fixed window;
//! `off`): while a few clients (up to four) talk to the proxy one request at a time, keep
//! the runtime polling its sockets for a short window after each client read or reply,
//! instead of letting the thread sleep.
//!
//! Why: with a lone client nothing can be batched, and what a request waits for is the
//! proxy's own wake-ups: the client's request and the server's reply each find the
//! proxy's thread asleep in `epoll_wait`, and waking it costs more than the proxy's work
//! (on the 2-core VM the benchmarks run on, `perf` puts about 90% of the proxy's time per
//! request in the kernel, mostly waking and being woken; see `benches/README.md`). A
//! thread that is still polling when the bytes arrive is not woken at all. HAProxy's
//! `busy-polling` answers the same problem, for the same reason (virtual machines), and
//! KVM's halt polling the same problem one level down.
//!
//! The price is CPU: a core stays busy while the window lasts. So polling is bounded
//! four ways. It only starts on client I/O and stops `window` after the last one (an
//! idle proxy sleeps as before). It stops when more than [`MAX_BUSY_CLIENTS`] clients
//! have replies owed, and stands aside for [`STAND_ASIDE`] after: with more clients there
//! is a queue, batching already hides the wake-ups, and a polling thread takes a core the
//! servers and clients need (measured at 50 clients without the gate: 0.7-0.85x of
//! nutcracker). The pause keeps it from starting again each time the count dips for a
//! moment, as it does between bursts at 16 and more clients. `auto` polls only while
//! clients send their next request soon after a reply (`Adaptive`): polling a client
//! that thinks between requests would cost a core and save nothing. And `auto` is off
//! under a CPU quota, which polling would spend (a fixed window polls all the same, with
//! a warning).
//!
//! How: one task (the poller) yields in a loop while the window is open. A yielded task
//! makes tokio's scheduler poll the I/O driver with a zero timeout, so every turn is a
//! non-blocking `epoll_wait`: readiness is found without a wake-up, and the sessions run
//! at once. Each turn also yields the thread to the kernel (`sched_yield`), so a server
//! or client that is ready to run on the poller's CPU runs first. With a multi-thread runtime (`--threads` above 1) it keeps one worker polling.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram, counter, histogram};
use serde_json::json;
use tokio::sync::{Notify, watch};

/// How long the poller polls after client I/O (`--busy-poll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollWindow {
    /// This long after every client I/O (`--busy-poll MICROSECONDS`).
    Fixed(Duration),
    /// [`AUTO_WINDOW`] while clients come back for more within [`AUTO_REACH`] of a reply,
    /// nothing while they do not (`--busy-poll auto`, the default): see `Adaptive`.
    Auto,
}

impl PollWindow {
    /// How long a spell polls after the last client I/O.
    fn length(self) -> Duration {
        match self {
            PollWindow::Fixed(window) => window,
            PollWindow::Auto => AUTO_WINDOW,
        }
    }
}

/// The window of `--busy-poll auto` while it polls: the fixed window measured to catch a
/// lone client's next request on this project's VM (`benches/README.md`: 20 µs caught
/// nothing, 50 and 200 did).
pub const AUTO_WINDOW: Duration = Duration::from_micros(50);

/// How soon after the proxy's last client I/O a client's next request must come, as the
/// sleeping proxy sees it, for `--busy-poll auto` to poll. The time seen asleep includes
/// the proxy's own wake-up (tens of µs on a VM), so it is wider than [`AUTO_WINDOW`].
pub const AUTO_REACH: Duration = Duration::from_micros(200);

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
    window: PollWindow,
    /// Bumped on every client read and every reply written.
    activity: AtomicU64,
    /// Bumped on every client read (a request, not a reply; kept by `auto`): a spell that
    /// saw it bumped caught a request.
    reads: AtomicU64,
    /// When the last client I/O happened, in nanoseconds since `epoch` (kept by `auto`).
    last_io: AtomicU64,
    /// What `last_io` counts from.
    epoch: Instant,
    /// `auto`'s judgment, made by the session that read a request while the poller
    /// slept (so an `auto` poller that does not poll is never woken: on a multi-thread
    /// runtime each wake-up could cost a thread's).
    adaptive: Mutex<Adaptive>,
    /// Whether `auto` polls after client I/O now (always true with a fixed window):
    /// `Adaptive`'s own flag, copied out so that a reply written need not take the lock.
    on: AtomicBool,
    /// Times `auto` turned polling on, for `/status`.
    turned_on: AtomicU64,
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
    /// `auto` began polling: a client came back within [`AUTO_REACH`].
    turned_on: Counter,
    /// `auto` stopped polling: a client came back later than that.
    turned_off: Counter,
}

impl BusyPoll {
    /// Busy polling for `window` after each client I/O, in a process under `cpu_quota`
    /// cores of CPU quota (none: unlimited).
    pub fn new(window: PollWindow, cpu_quota: Option<f64>) -> BusyPoll {
        BusyPoll {
            window,
            activity: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            last_io: AtomicU64::new(0),
            epoch: Instant::now(),
            adaptive: Mutex::new(Adaptive::new()),
            on: AtomicBool::new(matches!(window, PollWindow::Fixed(_))),
            turned_on: AtomicU64::new(0),
            busy_clients: AtomicUsize::new(0),
            asleep: AtomicBool::new(true),
            wake: Notify::new(),
            metrics: PollMetrics {
                caught: counter!("cutover_busy_poll_caught_total"),
                idle: counter!("cutover_busy_poll_spells_total", "end" => "idle"),
                crowded: counter!("cutover_busy_poll_spells_total", "end" => "crowded"),
                spell: histogram!("cutover_busy_poll_spell_seconds"),
                turned_on: counter!("cutover_busy_poll_turns_total", "to" => "on"),
                turned_off: counter!("cutover_busy_poll_turns_total", "to" => "off"),
            },
            caught: AtomicU64::new(0),
            spells: AtomicU64::new(0),
            polled_nanos: AtomicU64::new(0),
            cpu_quota,
        }
    }

    /// A client's request was read at `at` (the session's own clock reading).
    pub fn client_read(&self, at: Instant) {
        self.client_io(Some(at));
    }

    /// A client was sent a reply.
    pub fn client_reply(&self) {
        self.client_io(None);
    }

    /// A client read a request at `read_at`, or (`None`) was sent a reply. While the
    /// poller sleeps, this wakes it: always with a fixed window; with `auto`, once a
    /// request has been judged (see [`Adaptive`]) and only if polling is on. Only `auto`
    /// keeps the time of the last client I/O and counts reads: a fixed window needs
    /// neither here.
    fn client_io(&self, read_at: Option<Instant>) {
        self.activity.fetch_add(1, Relaxed);
        if self.window != PollWindow::Auto {
            if self.asleep.load(Relaxed) {
                self.wake.notify_one();
            }
            return;
        }
        if read_at.is_some() {
            self.reads.fetch_add(1, Relaxed);
        }
        let at = read_at.unwrap_or_else(Instant::now);
        let now =
            u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let previous = self.last_io.swap(now, Relaxed);
        if !self.asleep.load(Relaxed) {
            // Polling (it sees this I/O itself) or standing aside.
            return;
        }
        if read_at.is_some() {
            let slept = Duration::from_nanos(now.saturating_sub(previous));
            if let Some(on) = self.adaptive().read_while_asleep(slept) {
                self.turned(on);
            }
        }
        if self.on.load(Relaxed) {
            self.wake.notify_one();
        }
    }

    /// `auto`'s judgment, locked (a poisoned lock is taken as it is: `Adaptive` holds
    /// only counts, each consistent on its own).
    fn adaptive(&self) -> MutexGuard<'_, Adaptive> {
        self.adaptive
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `auto` turned polling on or off.
    fn turned(&self, on: bool) {
        self.on.store(on, Relaxed);
        if on {
            self.turned_on.fetch_add(1, Relaxed);
            self.metrics.turned_on.increment(1);
        } else {
            self.metrics.turned_off.increment(1);
        }
    }

    /// Whether few enough clients are busy for polling to pay.
    fn quiet(&self) -> bool {
        self.busy_clients.load(Relaxed) <= MAX_BUSY_CLIENTS
    }

    /// Poll until `shutdown` turns true: sleep until a client does I/O, then poll until
    /// the window passes without any, or more clients get busy (and then stand aside for
    /// [`STAND_ASIDE`]). With `auto`, sessions wake it only while `Adaptive` says
    /// clients come back quickly.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut crowded_at: Option<Instant> = None;
        let window = self.window.length();
        loop {
            if let Some(at) = crowded_at.take() {
                // Stand aside, deaf to client I/O (`asleep` stays false, so sessions
                // neither wake the poller nor judge requests while many clients are busy).
                let rest = STAND_ASIDE.saturating_sub(at.elapsed());
                tokio::select! {
                    () = tokio::time::sleep(rest) => {}
                    _ = shutdown.changed() => return,
                }
                if *shutdown.borrow() {
                    return;
                }
            }
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
            let started = Instant::now();
            let reads_before = self.reads.load(Relaxed);
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
                } else if last_io.elapsed() >= window {
                    break false;
                }
            };
            if self.window == PollWindow::Auto && self.reads.load(Relaxed) != reads_before {
                // The spell caught a request: polling pays.
                self.adaptive().caught_a_read();
            }
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
        let mode = match self.window {
            PollWindow::Fixed(_) => "fixed",
            PollWindow::Auto => "auto",
        };
        json!({
            "mode": mode,
            "on": self.on.load(Relaxed),
            "turned_on": self.turned_on.load(Relaxed),
            "window_us": self.window.length().as_micros() as u64,
            "auto_reach_us": AUTO_REACH.as_micros() as u64,
            "max_busy_clients": MAX_BUSY_CLIENTS,
            "busy_clients": self.busy_clients.load(Relaxed),
            "caught": self.caught.load(Relaxed),
            "spells": self.spells.load(Relaxed),
            "polled_seconds": self.polled_nanos.load(Relaxed) as f64 / 1e9,
            "cpu_quota_cores": self.cpu_quota,
        })
    }
}

/// How `--busy-poll auto` decides whether to poll: as KVM's halt polling does, by how
/// long the proxy slept before a client's next request came.
///
/// Polling pays only when the proxy's thread does not sleep at all while a client talks
/// (`benches/README.md`: polling only while a server's reply is owed, or only from a reply
/// to the next request, was slower than not polling). That needs clients that come back
/// for more within a moment of their reply, as a client sending requests one after
/// another does; an app that thinks between requests would only have the proxy spin
/// through its thinking. So each request a session reads while the poller sleeps is
/// judged by the time since the proxy's last client I/O (a reply written is not judged:
/// how long a server takes says nothing of the clients), by that session, so that a
/// poller that is not polling is never woken:
/// - Not polling, a request that came within [`AUTO_REACH`] of the proxy's last client
///   I/O is a quick one; after `needed` quick ones in a row, polling starts. A slower
///   one starts the count again.
/// - Polling, a request that came while the poller slept was missed: the window passed
///   first. Polling stops, and twice as many quick requests (up to [`AUTO_MAX_NEEDED`])
///   are needed to start it again. A spell that caught a request sets `needed` back to
///   one.
/// - But one miss within [`AUTO_REACH`] since polling last caught a request (or since it
///   started) is forgiven: a client that is caught again and again is late once in a
///   while (the scheduler ran something else first), and stopping then sent its next
///   requests down the sleeping path, where the slowest hundredth of them set p99 above
///   nutcracker's (`benches/README.md`). A second miss before a catch stops polling, as
///   does a miss by a client that came back only after the reach.
///
/// So a client that sends one request after another keeps the proxy polling; one that
/// thinks for longer than [`AUTO_REACH`] never starts it; and one in between (quick
/// enough to start polling, too slow for the window to catch it) starts it less and less
/// often, as KVM backs off a vCPU whose polls fail. With up to four clients (more and the
/// poller stands aside anyway) the times are the proxy's, not each client's: any client
/// coming back quickly keeps it polling.
#[derive(Debug)]
struct Adaptive {
    /// Whether to poll.
    on: bool,
    /// Whether polling missed a request since the last spell that caught one (the miss
    /// that is forgiven).
    missed: bool,
    /// Quick requests in a row needed to start polling.
    needed: u32,
    /// Quick requests in a row so far, while not polling.
    quick: u32,
}

/// The most quick requests in a row `auto` needs before it polls again, after polls that
/// kept missing: then one request in 64 starts a spell of about the window plus a
/// server's round trip, roughly a microsecond of polling a request.
pub const AUTO_MAX_NEEDED: u32 = 64;

impl Adaptive {
    /// Not polling.
    fn new() -> Adaptive {
        Adaptive {
            on: false,
            missed: false,
            needed: 1,
            quick: 0,
        }
    }

    /// A client's request came while the poller slept, `slept` after the proxy's last
    /// client I/O. Returns whether to poll, when that changed.
    fn read_while_asleep(&mut self, slept: Duration) -> Option<bool> {
        if self.on {
            // The window passed before the request came: polling missed it.
            if !self.missed && slept <= AUTO_REACH {
                self.missed = true;
                return None;
            }
            self.on = false;
            self.missed = false;
            self.quick = 0;
            self.needed = (self.needed * 2).min(AUTO_MAX_NEEDED);
            return Some(false);
        }
        if slept > AUTO_REACH {
            self.quick = 0;
            return None;
        }
        self.quick += 1;
        if self.quick < self.needed {
            return None;
        }
        self.on = true;
        Some(true)
    }

    /// A polling spell caught a client's request: polling pays.
    fn caught_a_read(&mut self) {
        self.needed = 1;
        self.missed = false;
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

    /// The client's request was read at `at`.
    pub fn read(&self, at: Instant) {
        if let Some(poll) = &self.poll {
            poll.client_read(at);
        }
    }

    /// The client was sent a reply.
    pub fn replied(&self) {
        if let Some(poll) = &self.poll {
            poll.client_reply();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `micros` µs.
    fn us(micros: u64) -> Duration {
        Duration::from_micros(micros)
    }

    #[test]
    fn a_client_that_comes_back_at_once_turns_polling_on() {
        let mut a = Adaptive::new();
        // Its first request, long after start: slow.
        assert_eq!(a.read_while_asleep(us(5_000)), None);
        // The next one 30 µs after the reply: quick.
        assert_eq!(a.read_while_asleep(us(30)), Some(true));
        assert!(a.on);
    }

    #[test]
    fn a_client_that_thinks_never_turns_it_on() {
        let mut a = Adaptive::new();
        for _ in 0..1000 {
            assert_eq!(a.read_while_asleep(us(1_000)), None);
        }
        assert!(!a.on);
        // Just past the reach is slow too.
        assert_eq!(a.read_while_asleep(AUTO_REACH + us(1)), None);
        assert_eq!(a.read_while_asleep(AUTO_REACH), Some(true));
    }

    #[test]
    fn a_request_polling_missed_turns_it_off_and_doubles_what_it_takes_to_start_again() {
        let mut a = Adaptive::new();
        assert_eq!(a.read_while_asleep(us(40)), Some(true));
        // The next requests came while the poller slept: the window missed them, however
        // quick they were. The first miss is forgiven, the second is not.
        assert_eq!(a.read_while_asleep(us(60)), None);
        assert!(a.on);
        assert_eq!(a.read_while_asleep(us(60)), Some(false));
        assert_eq!(a.needed, 2);
        // Two quick requests are needed now; a slow one starts the count again.
        assert_eq!(a.read_while_asleep(us(30)), None);
        assert_eq!(a.read_while_asleep(us(900)), None);
        assert_eq!(a.read_while_asleep(us(30)), None);
        assert_eq!(a.read_while_asleep(us(30)), Some(true));
        // A spell that caught a request sets the count back to one; a client that came
        // back only after the reach is not forgiven.
        a.caught_a_read();
        assert_eq!(a.needed, 1);
        assert_eq!(a.read_while_asleep(us(5_000)), Some(false));
        assert_eq!(a.needed, 2);
    }

    #[test]
    fn a_client_caught_again_and_again_may_be_late_once_between_catches() {
        let mut a = Adaptive::new();
        assert_eq!(a.read_while_asleep(us(30)), Some(true));
        for _ in 0..100 {
            // Late once (the window had passed), then caught by the spell it woke.
            assert_eq!(a.read_while_asleep(us(80)), None);
            a.caught_a_read();
        }
        assert!(a.on);
        assert_eq!(a.needed, 1);
        // Late twice with no catch between: polling stops.
        assert_eq!(a.read_while_asleep(us(80)), None);
        assert_eq!(a.read_while_asleep(us(80)), Some(false));
    }

    #[test]
    fn polls_that_keep_missing_back_off_to_the_cap() {
        let mut a = Adaptive::new();
        let mut starts = 0;
        for _ in 0..5_000 {
            // Every request comes 100 µs after the last I/O: within reach, but past the
            // window, so every poll misses.
            if a.read_while_asleep(us(100)) == Some(true) {
                starts += 1;
            }
        }
        assert_eq!(a.needed, AUTO_MAX_NEEDED);
        // 1 + 2 + 4 + ... + 64 quick requests between starts, then 64.
        assert!(starts < 5_000 / 32, "polling started {starts} times");
    }
}
