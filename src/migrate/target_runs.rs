//! Target servers that restart (rule 17). A target server that restarts comes back empty
//! (no persistence) or with an older snapshot, while the lanes still take its keys for
//! copied: they would replay writes onto what is left, and a cutover would serve keys
//! that are missing or stale, though a verify pass had found none before the restart.
//!
//! Redis gives every start of a server a new `run_id` (`INFO server`). cutover reads each
//! target server's every few seconds while migrating and again right before a cutover,
//! and keeps the last one seen in the state file, so a restart while cutover itself was
//! down is found too. When one changes:
//! - every source key is copied again, through the lanes (so rule 3's order holds, as for
//!   a capture's gap), and the cutover is refused until those passes have queued every
//!   key (the lanes must then empty, as always);
//! - a verify pass that starts after the restart is owed (a snapshot reloaded may hold
//!   keys the source has since deleted: only verify finds those);
//! - `cutover_target_restarts_total{server}` counts it, `/status` and `ctl status` name it.
//!
//! A failover behind the same address changes the `run_id` too, and is handled the same
//! way: a replica promoted may lack the last writes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, counter};

use super::{Migration, Owed, Phase, Role, marker, scan};
use crate::upstream::info_field;

/// Tries of `INFO server` a look makes of one server.
const READ_TRIES: usize = 2;
/// Longest wait for one server's `INFO server` (a hung server must not hold a cutover's
/// check, or the periodic look, for ever).
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Time between two periodic looks.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// One target server's restart, as seen.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restart {
    /// The server's name.
    pub server: String,
    /// When it was seen (Unix milliseconds).
    pub at_ms: u64,
}

/// What is known of the target servers' runs.
pub struct TargetRuns {
    /// Per target server (the pool's order): its name and the `run_id` last seen.
    ids: Mutex<Vec<(String, Option<String>)>>,
    /// Restarts seen by this process, oldest first.
    restarts: Mutex<Vec<Restart>>,
    /// Full passes started (one a source server a restart).
    passes_started: AtomicU64,
    /// Full passes still queueing keys.
    passes_running: AtomicU64,
    /// Keys the finished full passes queued.
    pub keys_queued: AtomicU64,
    /// One look at a time (the periodic one and a cutover's).
    looking: tokio::sync::Mutex<()>,
    /// `cutover_target_restarts_total{pool, server}`, per target server.
    counters: Vec<Counter>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TargetRuns {
    /// For the target servers `names` of the migration of `pool`, with the `run_id`s an
    /// earlier run saved (`(name, run_id)`, from the state file).
    pub fn new(pool: &str, names: &[String], saved: &[(String, String)]) -> TargetRuns {
        let ids = names
            .iter()
            .map(|name| {
                let id = saved
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, id)| id.clone());
                (name.clone(), id)
            })
            .collect();
        TargetRuns {
            ids: Mutex::new(ids),
            restarts: Mutex::new(Vec::new()),
            passes_started: AtomicU64::new(0),
            passes_running: AtomicU64::new(0),
            keys_queued: AtomicU64::new(0),
            looking: tokio::sync::Mutex::new(()),
            counters: names
                .iter()
                .map(|s| counter!("cutover_target_restarts_total", "pool" => pool.to_string(), "server" => s.clone()))
                .collect(),
        }
    }

    /// Take the `run_id`s a former fleet leader saw last (its checkpoint), so a restart
    /// during the takeover is found by the next look.
    pub fn adopt(&self, saved: &[(String, String)]) {
        for (name, slot) in lock(&self.ids).iter_mut() {
            if let Some((_, id)) = saved.iter().find(|(n, _)| n == name) {
                *slot = Some(id.clone());
            }
        }
    }

    /// Each target server's name and last `run_id` seen, for the state file.
    pub fn saved(&self) -> Vec<(String, String)> {
        lock(&self.ids)
            .iter()
            .filter_map(|(name, id)| id.as_ref().map(|id| (name.clone(), id.clone())))
            .collect()
    }

    /// Restarts seen by this process, oldest first.
    pub fn restarts(&self) -> Vec<Restart> {
        lock(&self.restarts).clone()
    }

    /// Whether full passes are still queueing keys.
    pub fn passes_running(&self) -> bool {
        self.passes_running.load(Relaxed) > 0
    }

    /// The restarts seen, in words: "target server s1 restarted (its run_id changed) at
    /// ...".
    pub fn restarted_text(&self) -> String {
        let names: Vec<String> = self.restarts().into_iter().map(|r| r.server).collect();
        match names.as_slice() {
            [] => "no target server restarted".to_string(),
            [one] => format!("target server {one} restarted (its run_id changed)"),
            many => format!(
                "target servers {} restarted (their run_ids changed)",
                many.join(", ")
            ),
        }
    }

    /// What stands between the migration and a cutover on their account.
    pub fn blockers(&self) -> Option<String> {
        let running = self.passes_running.load(Relaxed);
        (running > 0).then(|| {
            let started = self.passes_started.load(Relaxed);
            format!(
                "{}: every source key is being copied again (source servers done: {} of {started}); wait for it",
                self.restarted_text(),
                started - running,
            )
        })
    }

    /// Record `id` as server `index`'s `run_id`: whether it replaces a different one.
    fn seen(&self, index: usize, id: &str) -> bool {
        let mut ids = lock(&self.ids);
        let Some((_, slot)) = ids.get_mut(index) else {
            return false;
        };
        let changed = slot.as_deref().is_some_and(|old| old != id);
        *slot = Some(id.to_string());
        changed
    }
}

/// Look at the target servers' `run_id`s every few seconds, for as long as the migration
/// lives (the first look at once: it also compares with what the state file kept).
pub async fn watch(migration: Arc<Migration>) {
    loop {
        let _ = migration.watch_target_runs().await;
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

impl Migration {
    /// Read every target server's `run_id`, and act on a change (rule 17): only while
    /// migrating (after the cutover the target is what clients use), and not on a fleet
    /// member that follows (the leader looks). The servers whose `run_id` could not be
    /// read, with why (a cutover is refused while any is unknown).
    pub async fn watch_target_runs(self: &Arc<Self>) -> Vec<String> {
        if self.phase() != Phase::Migrating || self.role() == Role::Follower {
            return Vec::new();
        }
        let runs = &self.target_runs;
        let _looking = runs.looking.lock().await;
        let mut unread = Vec::new();
        for (index, server) in self.copy_target.servers.iter().enumerate() {
            match self.read_run_id(index).await {
                Ok(id) => {
                    if runs.seen(index, &id) {
                        self.target_restarted(index, &server.name);
                    }
                }
                // Looked at again next time: its run_id then tells whether it restarted
                // meanwhile.
                Err(why) => unread.push(format!(
                    "cannot tell whether target server {} restarted ({why}); a cutover waits until it answers",
                    server.name
                )),
            }
        }
        unread
    }

    /// Target server `index`'s `run_id`, from `INFO server`. Tried twice: the first
    /// request after the server went away finds the broken connection.
    async fn read_run_id(&self, index: usize) -> Result<String, String> {
        let mut why = String::new();
        for _ in 0..READ_TRIES {
            let args = [b"INFO".as_slice(), b"server"];
            let info = self.copy_target.call(index, 0, &args);
            match tokio::time::timeout(READ_TIMEOUT, info)
                .await
                .unwrap_or_else(|_| Err(crate::upstream::BackendError::TimedOut))
            {
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

    /// Target server `index` restarted: copy every source key again and owe a verify pass.
    fn target_restarted(self: &Arc<Self>, index: usize, name: &str) {
        let runs = &self.target_runs;
        runs.counters[index].increment(1);
        lock(&runs.restarts).push(Restart {
            server: name.to_string(),
            at_ms: marker::now_ms(),
        });
        self.dirty.owe_verify(Owed::TargetRestart);
        tracing::error!(
            pool = self.source.name(),
            server = name,
            "target server restarted (its run_id changed): what it held may be lost or stale; every source key is copied again, and a verify pass is needed before the cutover"
        );
        for server in 0..self.copy_source.servers.len() {
            runs.passes_started.fetch_add(1, Relaxed);
            runs.passes_running.fetch_add(1, Relaxed);
            let migration = self.clone();
            tokio::spawn(async move {
                let pool = &migration.copy_source;
                let purpose = "copying every key again after a target server restarted";
                let queued = scan::copy_every_key(&migration, pool, server, purpose).await;
                let runs = &migration.target_runs;
                runs.keys_queued.fetch_add(queued, Relaxed);
                runs.passes_running.fetch_sub(1, Relaxed);
                tracing::info!(pool = migration.source.name(), server = %pool.servers[server].name, keys = queued, "full pass after a target server's restart: every key queued to be copied again");
            });
        }
    }
}
