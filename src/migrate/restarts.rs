//! Servers that restart (rule 17). cutover keeps one side equal to the other: the target
//! while migrating, the source after a cutover (so a rollback loses nothing). A server
//! that restarts comes back empty (no persistence) or with an older snapshot.
//! - On the mirrored side, the lanes still take its keys for copied: they would replay
//!   writes onto what is left, and a flip, allowed by a verify pass that ran before the
//!   restart, would serve keys that are missing or stale.
//! - On the side clients use, clients see what it lost or reloaded older, and the other
//!   side no longer equals it: it still holds the keys the server lost, and the newer
//!   values. A flip would bring them back to the clients.
//!
//! Redis gives every start of a server a new `run_id` (`INFO server`). cutover reads every
//! server's, of both sides, every few seconds and again right before a flip (the side
//! clients use then only as far as it answers within half a second), and keeps the last
//! ones seen in the state file, so a restart while cutover itself was down is found too. When a server has a new one:
//! - of the mirrored side: every key of the authoritative side is copied again, through
//!   the lanes (so rule 3's order holds, as for a capture's gap);
//! - of the authoritative side: every key of that server is copied again, and so is
//!   every key of the other side that the server owns (deleted there when the server no
//!   longer holds it);
//! - either way a flip waits until those passes have queued every key (the lanes must
//!   then empty, as always), and a verify pass that starts after the restart is owed:
//!   only verify proves the sides equal again (a mirrored server's snapshot may hold keys
//!   since deleted, which no copy of the other side's keys removes);
//! - it is logged, counted (`cutover_server_restarts_total{side, server}`), and shown in
//!   `/status` and `ctl status`.
//!
//! A failover behind the same address changes the `run_id` too, and is handled the same
//! way: a replica promoted may lack the last writes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Counter;

use super::capture::Side;
use super::{CopyReason, Migration, Owed, Role, counters, lock, marker, scan};
use crate::resp::info_field;
use crate::upstream::Pool;

/// Tries of `INFO server` a look makes of one server.
const READ_TRIES: usize = 2;
/// Longest wait for one server's `INFO server` (a hung server must not hold a flip's
/// check, or the periodic look, for ever).
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// One server's runs.
#[derive(Debug, Clone, Default)]
struct Runs {
    /// Its name.
    name: String,
    /// The `run_id` last seen.
    seen: Option<String>,
    /// The `run_id` the state file keeps: the last seen once no full pass a restart
    /// started is still queueing keys. Until then it stays the one before, so that a
    /// process (or a fleet leader) that takes over before the passes finish finds the
    /// restart again and copies every key itself.
    saved: Option<String>,
}

/// One server's restart, as seen.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restart {
    /// `source` or `target`.
    pub side: &'static str,
    /// The server's name.
    pub server: String,
    /// When it was seen (Unix milliseconds).
    pub at_ms: u64,
    /// Whether its side was the mirrored one then (every key was copied to it again);
    /// else it was the side clients use (its keys were copied from it to the other side).
    pub mirrored: bool,
}

/// What is known of the servers' runs.
pub struct Restarts {
    /// Per side, per server (the pool's order).
    ids: [Mutex<Vec<Runs>>; 2],
    /// Restarts seen by this process, oldest first.
    seen: Mutex<Vec<Restart>>,
    /// Full passes started (one a server scanned after a restart).
    passes_started: AtomicU64,
    /// Full passes still queueing keys.
    passes_running: AtomicU64,
    /// Keys the finished full passes queued.
    pub keys_queued: AtomicU64,
    /// One look at a side at a time (the periodic one and a flip's); per side, so that a
    /// flip's look at the mirrored side never waits behind a hung server of the other.
    looking: [tokio::sync::Mutex<()>; 2],
    /// `cutover_server_restarts_total{pool, side, server}`, per side, per server.
    counters: [Vec<Counter>; 2],
}

impl Restarts {
    /// For the migration of `pool` over the servers named `names` (per side), with the
    /// `run_id`s an earlier run saved (per side, `(name, run_id)`, from the state file).
    pub fn new(pool: &str, names: [&[String]; 2], saved: [&[(String, String)]; 2]) -> Restarts {
        let ids = |side: usize| {
            names[side]
                .iter()
                .map(|name| {
                    let id = find(saved[side], name);
                    Runs {
                        name: name.clone(),
                        seen: id.clone(),
                        saved: id,
                    }
                })
                .collect()
        };
        Restarts {
            ids: [Mutex::new(ids(0)), Mutex::new(ids(1))],
            seen: Mutex::new(Vec::new()),
            passes_started: AtomicU64::new(0),
            passes_running: AtomicU64::new(0),
            keys_queued: AtomicU64::new(0),
            looking: [tokio::sync::Mutex::new(()), tokio::sync::Mutex::new(())],
            counters: counters::per_side_server("cutover_server_restarts_total", pool, names),
        }
    }

    /// Take the `run_id`s a former fleet leader saw last (its checkpoint), so a restart
    /// during the takeover is found by the next look.
    pub fn adopt(&self, saved: [&[(String, String)]; 2]) {
        for side in Side::BOTH {
            for runs in lock(&self.ids[side as usize]).iter_mut() {
                if let Some(id) = find(saved[side as usize], &runs.name) {
                    runs.seen = Some(id.clone());
                    runs.saved = Some(id);
                }
            }
        }
    }

    /// `side`'s servers' names and `run_id`s for the state file: the last seen, but for a
    /// restart whose full passes are still queueing keys (see [`Runs::saved`]).
    pub fn saved(&self, side: Side) -> Vec<(String, String)> {
        lock(&self.ids[side as usize])
            .iter()
            .filter_map(|runs| {
                runs.saved
                    .as_ref()
                    .map(|id| (runs.name.clone(), id.clone()))
            })
            .collect()
    }

    /// Every full pass has queued its keys: the state file may keep the `run_id`s seen.
    fn passes_done(&self) {
        for side in &self.ids {
            for runs in lock(side).iter_mut() {
                runs.saved.clone_from(&runs.seen);
            }
        }
    }

    /// Restarts seen by this process, oldest first.
    pub fn seen(&self) -> Vec<Restart> {
        lock(&self.seen).clone()
    }

    /// Whether full passes are still queueing keys.
    pub fn passes_running(&self) -> bool {
        self.passes_running.load(Relaxed) > 0
    }

    /// The restarts seen, in words: "target server s1 restarted (its run_id changed)".
    pub fn restarted_text(&self) -> String {
        let names: Vec<String> = self
            .seen()
            .into_iter()
            .map(|r| format!("{} server {}", r.side, r.server))
            .collect();
        match names.as_slice() {
            [] => "no server restarted".to_string(),
            [one] => format!("{one} restarted (its run_id changed)"),
            many => format!("{} restarted (their run_ids changed)", many.join(", ")),
        }
    }

    /// What stands between the migration and a flip on their account.
    pub fn blocker(&self) -> Option<String> {
        let running = self.passes_running.load(Relaxed);
        (running > 0).then(|| {
            let started = self.passes_started.load(Relaxed);
            format!(
                "{}: its keys are being copied again (passes done: {} of {started}); wait for it",
                self.restarted_text(),
                started - running,
            )
        })
    }

    /// Record `id` as the `run_id` of server `index` of `side`: whether it replaces a
    /// different one.
    fn record(&self, side: Side, index: usize, id: &str) -> bool {
        let mut ids = lock(&self.ids[side as usize]);
        let Some(runs) = ids.get_mut(index) else {
            return false;
        };
        let changed = runs.seen.as_deref().is_some_and(|old| old != id);
        runs.seen = Some(id.to_string());
        if runs.saved.is_none() || (!changed && !self.passes_running()) {
            runs.saved = runs.seen.clone();
        }
        changed
    }
}

/// The `run_id` saved for the server named `name`.
fn find(saved: &[(String, String)], name: &str) -> Option<String> {
    saved
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, id)| id.clone())
}

/// Which servers a look reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Both sides: the periodic look (the authoritative side's `run_id`s are kept so that,
    /// after a flip, its restarts are measured from before it).
    BothSides,
    /// A look something waits on (a flip's check; the start of a verify pass, for
    /// evictions): the mirrored side, and the side clients use for at most
    /// [`CLIENTS_SIDE_LIMIT`]. A restart or evictions there in the seconds since the last
    /// periodic look are then found before the flip, or counted before the verify pass
    /// that covers them, rather than after; but a hung server of that side must not hold
    /// a flip up: what it does not answer in time the next periodic look reads.
    Now,
    /// Only the mirrored side (the end of an offline copy).
    Mirrored,
}

/// How long a [`Look::Now`] (a flip's check, a verify pass's start) reads the side
/// clients use. Its servers answer `INFO` within a millisecond unless hung (or forking a
/// large snapshot); the last look, under the gate, holds every client while it reads,
/// for 2 s at most.
pub const CLIENTS_SIDE_LIMIT: Duration = Duration::from_millis(500);

impl Look {
    /// Which side is the mirrored one in `migration`'s phase, if this process looks at
    /// all: not after finalize (nothing is mirrored), nor on a fleet member that follows
    /// (the leader looks).
    pub fn mirrored(migration: &Migration) -> Option<Side> {
        let authority = Side::authority(migration.phase())?;
        (migration.role() != Role::Follower).then(|| authority.other())
    }

    /// Run `read`, this look's reading of `side` of `migration` (the mirrored side being
    /// `mirrored`), and return what it found; `None` when the look does not read `side`,
    /// or when a [`Look::Now`] cut its reading of the side clients use short (counted, and
    /// logged with `what` it read).
    pub async fn read<T>(
        self,
        migration: &Migration,
        side: Side,
        mirrored: Side,
        what: &str,
        read: impl Future<Output = T>,
    ) -> Option<T> {
        match self {
            Look::BothSides => Some(read.await),
            Look::Mirrored | Look::Now if side == mirrored => Some(read.await),
            Look::Mirrored => None,
            Look::Now => {
                let read = tokio::time::timeout(CLIENTS_SIDE_LIMIT, read).await;
                if read.is_err() {
                    migration.flips.checks_unread.fetch_add(1, Relaxed);
                    migration.counters.checks_unread[side as usize].increment(1);
                    tracing::warn!(
                        pool = migration.source.name(),
                        side = side.name(),
                        what,
                        "a look before a flip or a verify pass could not read every server of the side clients use within {CLIENTS_SIDE_LIMIT:?}; it goes on without them, and the next periodic look reads them"
                    );
                }
                read.ok()
            }
        }
    }
}

/// Time between two periodic looks (at restarts and at evictions). Tests that show what
/// a flip's own check finds stretch it (`CUTOVER_TEST_LOOK_EVERY_MS`).
pub fn look_every() -> Duration {
    static EVERY: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| {
        std::env::var("CUTOVER_TEST_LOOK_EVERY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(Duration::from_secs(5), Duration::from_millis)
    });
    *EVERY
}

/// Look at every server's `run_id` every few seconds, for as long as the migration lives
/// (the first look at once: it also compares with what the state file kept).
pub async fn watch(migration: Arc<Migration>) {
    loop {
        let _ = migration.watch_restarts(Look::BothSides).await;
        tokio::time::sleep(look_every()).await;
    }
}

impl Migration {
    /// Read the `run_id`s of the servers `look` says, and act on a change of any
    /// (rule 17). Not after finalize (nothing is mirrored), nor on a fleet
    /// member that follows (the leader looks). The mirrored side's servers whose `run_id`
    /// could not be read, with why (a flip is refused while any is unknown).
    pub async fn watch_restarts(self: &Arc<Self>, look: Look) -> Vec<String> {
        let Some(mirrored) = Look::mirrored(self) else {
            return Vec::new();
        };
        // Side by side: a flip's check reads both, and one may be slow.
        let (source, target) = tokio::join!(
            self.read_run_ids(look, Side::Source, mirrored),
            self.read_run_ids(look, Side::Target, mirrored)
        );
        [source, target].concat()
    }

    /// `look`'s reading of `side`'s `run_id`s: the servers whose `run_id` could not be
    /// read, with why, when `side` is the mirrored one.
    async fn read_run_ids(self: &Arc<Self>, look: Look, side: Side, mirrored: Side) -> Vec<String> {
        let runs = &self.restarts;
        let read = async {
            let mut unread = Vec::new();
            let _looking = runs.looking[side as usize].lock().await;
            let pool = side.copy_pool(self);
            for (index, server) in pool.servers.iter().enumerate() {
                match read_run_id(pool, index).await {
                    Ok(id) => {
                        if runs.record(side, index, &id) {
                            self.restarted(side, index, &server.name, side == mirrored);
                        }
                    }
                    // Looked at again next time: its run_id then tells whether it
                    // restarted meanwhile.
                    Err(why) if side == mirrored => unread.push(format!(
                        "cannot tell whether {} server {} restarted ({why}); a flip waits until it answers",
                        side.name(),
                        server.name
                    )),
                    Err(_) => {}
                }
            }
            unread
        };
        let what = "run_ids";
        look.read(self, side, mirrored, what, read)
            .await
            .unwrap_or_default()
    }

    /// Server `index` of `side` restarted: copy again every key it may have changed on
    /// its side or on the other (which depends on whether `side` is the mirrored one),
    /// and owe a verify pass.
    fn restarted(self: &Arc<Self>, side: Side, index: usize, name: &str, mirrored: bool) {
        let runs = &self.restarts;
        runs.counters[side as usize][index].increment(1);
        lock(&runs.seen).push(Restart {
            side: side.name(),
            server: name.to_string(),
            at_ms: marker::now_ms(),
            mirrored,
        });
        self.dirty.owe_verify(Owed::Restart);
        let pool = self.source.name();
        if mirrored {
            tracing::error!(
                pool,
                side = side.name(),
                server = name,
                "server restarted (its run_id changed): what it held may be lost or stale; every key is copied to its side again, and a verify pass is needed before the next flip"
            );
            let authority = side.other();
            for server in 0..authority.copy_pool(self).servers.len() {
                self.copy_server_again(authority, server);
            }
            return;
        }
        tracing::error!(
            pool,
            side = side.name(),
            server = name,
            "server restarted (its run_id changed) on the side clients use: what it lost or reloaded older is lost to them, and the other side still holds it; its keys, and every key the other side holds for it, are copied again, and a verify pass is needed before the next flip"
        );
        self.copy_server_again(side, index);
        let migration = self.clone();
        self.full_pass(side, index, async move {
            let purpose = "copying the other side's keys of a server that restarted";
            let owner = (side, index);
            scan::copy_keys_owned_elsewhere(&migration, owner, CopyReason::FullPass, purpose).await
        });
    }

    /// Copy every key of server `server` of `side` again, in a full pass a flip waits for.
    fn copy_server_again(self: &Arc<Self>, side: Side, server: usize) {
        let migration = self.clone();
        self.full_pass(side, server, async move {
            let pool = side.copy_pool(&migration);
            let purpose = "copying every key again after a server restarted";
            scan::copy_every_key(&migration, pool, server, purpose).await
        });
    }

    /// Run one full pass after a restart (`pass`, which returns the keys it queued) in the
    /// background, counted in the passes a flip waits for; server `server` of `side` (the
    /// server whose keys it copies) names it in the log.
    fn full_pass(
        self: &Arc<Self>,
        side: Side,
        server: usize,
        pass: impl Future<Output = u64> + Send + 'static,
    ) {
        let runs = &self.restarts;
        runs.passes_started.fetch_add(1, Relaxed);
        runs.passes_running.fetch_add(1, Relaxed);
        let migration = self.clone();
        tokio::spawn(async move {
            let queued = pass.await;
            let runs = &migration.restarts;
            runs.keys_queued.fetch_add(queued, Relaxed);
            if runs.passes_running.fetch_sub(1, Relaxed) == 1 {
                runs.passes_done();
            }
            let name = &side.copy_pool(&migration).servers[server].name;
            tracing::info!(pool = migration.source.name(), side = side.name(), server = %name, keys = queued, "full pass after a server's restart: its keys queued to be copied again");
        });
    }
}

/// Server `index`'s `run_id`, from `INFO server`. Tried twice: the first request after the
/// server went away finds the broken connection.
async fn read_run_id(pool: &Pool, index: usize) -> Result<String, String> {
    let mut why = String::new();
    for _ in 0..READ_TRIES {
        let args = [b"INFO".as_slice(), b"server"];
        match pool.call_within(index, 0, &args, READ_TIMEOUT).await {
            Ok(reply) => {
                let text = String::from_utf8_lossy(&reply);
                return info_field(&text, "run_id")
                    .map(str::to_string)
                    .ok_or_else(|| "its INFO server has no run_id".to_string());
            }
            Err(error) => why = error.to_string(),
        }
    }
    Err(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_keeps_the_run_id_from_before_a_restart_until_its_passes_are_done() {
        let names = ["t1".to_string()];
        let saved = [("t1".to_string(), "a".to_string())];
        let runs = Restarts::new("p", [&[], &names], [&[], &saved]);
        let kept = || runs.saved(Side::Target);
        assert!(!runs.record(Side::Target, 0, "a"));
        assert!(
            runs.record(Side::Target, 0, "b"),
            "a new run_id is a restart"
        );
        runs.passes_running.fetch_add(1, Relaxed);
        assert!(!runs.record(Side::Target, 0, "b"), "seen once");
        assert_eq!(
            kept(),
            saved,
            "a process taking over now must find it again"
        );
        runs.passes_running.fetch_sub(1, Relaxed);
        runs.passes_done();
        assert_eq!(kept(), [("t1".to_string(), "b".to_string())]);
        assert!(!runs.record(Side::Target, 1, "x"), "no such server");
    }
}
