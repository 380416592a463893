//! Servers of the mirrored side that evict keys (rule 19). A server whose `maxmemory` is
//! full and whose `maxmemory-policy` evicts (`allkeys-lru` and the like) drops keys to
//! make room, without an error to anyone: the lanes' writes succeed, and the keys it
//! dropped are simply gone. A target too small for the source's data thus loses keys
//! after a verify pass found none missing, and the cutover would serve without them.
//! (A server that does not evict answers `-OOM`: the write fails, and its key is dirty.)
//!
//! Redis counts evictions in `INFO stats` (`evicted_keys`). cutover reads every server's,
//! of both sides, every few seconds, and the mirrored side's again in a flip's checks.
//! More evictions on the side kept equal since the last look owe a verify pass that
//! starts after (its repair copies the missing keys, and it runs again until no server
//! evicts), and are counted (`cutover_server_evictions_total{side, server}`), logged and
//! shown in `/status` and `ctl status`. The authoritative side's evictions are the app's
//! own (a cache): only the baseline is kept, so after a flip the count starts from it.

use std::sync::Mutex;
use std::time::Duration;

use metrics::Counter;

use super::capture::Side;
use super::restarts::Look;
use super::{Migration, Owed, counters, lock};
use crate::resp::info_field;
use crate::upstream::Pool;

/// Time between two periodic looks.
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// Longest wait for one server's `INFO stats`.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// One server's evictions.
#[derive(Debug, Clone, Default)]
struct Counted {
    /// Its name.
    name: String,
    /// `evicted_keys` at the last look (`None`: not read yet).
    last: Option<u64>,
    /// Keys it evicted while its side was mirrored, as seen by this process.
    while_mirrored: u64,
}

/// What is known of the servers' evictions.
pub struct Evictions {
    /// Per side, per server (the pool's order).
    servers: [Mutex<Vec<Counted>>; 2],
    /// One look at a side at a time (the periodic one and a flip's); per side, so that a
    /// flip's look at the mirrored side never waits behind a hung server of the other.
    looking: [tokio::sync::Mutex<()>; 2],
    /// `cutover_server_evictions_total{pool, side, server}`, per side, per server.
    counters: [Vec<Counter>; 2],
}

/// One server's evictions while mirrored, for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Evicted {
    /// `source` or `target`.
    pub side: &'static str,
    /// The server's name.
    pub server: String,
    /// Keys it evicted while its side was mirrored.
    pub keys: u64,
}

impl Evictions {
    /// For the migration of `pool` over the servers named `names` (per side).
    pub fn new(pool: &str, names: [&[String]; 2]) -> Evictions {
        let servers = |side: usize| {
            names[side]
                .iter()
                .map(|name| Counted {
                    name: name.clone(),
                    ..Counted::default()
                })
                .collect()
        };
        Evictions {
            servers: [Mutex::new(servers(0)), Mutex::new(servers(1))],
            looking: [tokio::sync::Mutex::new(()), tokio::sync::Mutex::new(())],
            counters: counters::per_side_server("cutover_server_evictions_total", pool, names),
        }
    }

    /// The servers that evicted keys while mirrored, for `/status`.
    pub fn seen(&self) -> Vec<Evicted> {
        Side::BOTH
            .iter()
            .flat_map(|&side| {
                lock(&self.servers[side as usize])
                    .iter()
                    .filter(|c| c.while_mirrored > 0)
                    .map(|c| Evicted {
                        side: side.name(),
                        server: c.name.clone(),
                        keys: c.while_mirrored,
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The servers that evicted keys while mirrored, in words: "target server t1 evicted
    /// 120 keys".
    pub fn evicted_text(&self) -> String {
        let servers: Vec<String> = self
            .seen()
            .into_iter()
            .map(|e| format!("{} server {} evicted {} keys", e.side, e.server, e.keys))
            .collect();
        if servers.is_empty() {
            "no server evicted keys".to_string()
        } else {
            servers.join(", ")
        }
    }

    /// Record `evicted` as server `index` of `side`'s `evicted_keys`: the keys evicted
    /// since the last look (0 the first time, or after the count went back: a restart or
    /// `CONFIG RESETSTAT`).
    fn record(&self, side: Side, index: usize, evicted: u64, mirrored: bool) -> u64 {
        let mut servers = lock(&self.servers[side as usize]);
        let Some(counted) = servers.get_mut(index) else {
            return 0;
        };
        let more = counted.last.map_or(0, |last| evicted.saturating_sub(last));
        counted.last = Some(evicted);
        if mirrored && more > 0 {
            counted.while_mirrored += more;
            self.counters[side as usize][index].increment(more);
            return more;
        }
        0
    }
}

/// Look at every server's evictions every few seconds, for as long as the migration
/// lives.
pub async fn watch(migration: std::sync::Arc<Migration>) {
    loop {
        migration.watch_evictions(Look::BothSides).await;
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

impl Migration {
    /// Read the `evicted_keys` of the servers `look` says, and owe a verify pass for more
    /// on the mirrored side (rule 19). Not after finalize (nothing is mirrored), nor on a
    /// fleet member that follows (the leader looks). A server that does not answer is
    /// looked at again next time (its count then covers the time between).
    pub async fn watch_evictions(&self, look: Look) {
        let Some((mirrored, sides)) = look.sides(self) else {
            return;
        };
        for side in sides {
            let _looking = self.evictions.looking[side as usize].lock().await;
            let pool = side.copy_pool(self);
            for (index, server) in pool.servers.iter().enumerate() {
                let Some(evicted) = read_evicted_keys(pool, index).await else {
                    continue;
                };
                let more = self
                    .evictions
                    .record(side, index, evicted, side == mirrored);
                if more > 0 {
                    self.dirty.owe_verify(Owed::Eviction);
                    tracing::error!(
                        pool = self.source.name(),
                        side = side.name(),
                        server = %server.name,
                        keys = more,
                        "a server of the side kept equal evicted keys (its maxmemory is full): it now lacks keys the other side holds; raise its maxmemory or add servers, then run a verify pass with repair"
                    );
                }
            }
        }
    }
}

/// Server `index`'s `evicted_keys`, from `INFO stats`; `None` if it cannot be read now.
async fn read_evicted_keys(pool: &Pool, index: usize) -> Option<u64> {
    let reply = pool
        .call_within(index, 0, &[b"INFO".as_slice(), b"stats"], READ_TIMEOUT)
        .await
        .ok()?;
    info_field(&String::from_utf8_lossy(&reply), "evicted_keys")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_count_from_the_first_look_and_only_while_mirrored() {
        let names = ["t1".to_string()];
        let evictions = Evictions::new("p", [&[], &names]);
        assert_eq!(evictions.record(Side::Target, 0, 50, true), 0, "a baseline");
        assert_eq!(evictions.record(Side::Target, 0, 80, true), 30);
        assert_eq!(
            evictions.record(Side::Target, 0, 90, false),
            0,
            "authoritative"
        );
        assert_eq!(evictions.record(Side::Target, 0, 5, true), 0, "a restart");
        assert_eq!(evictions.record(Side::Target, 0, 7, true), 2);
        assert_eq!(evictions.evicted_text(), "target server t1 evicted 32 keys");
    }
}
