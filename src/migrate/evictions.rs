//! Servers that evict keys (rule 19). A server whose `maxmemory` is full and whose
//! `maxmemory-policy` evicts (`allkeys-lru` and the like) drops keys to make room,
//! without an error to anyone: the writes succeed, and the keys it dropped are simply
//! gone. (A server that does not evict answers `-OOM`: the write fails, and its key is
//! dirty.)
//! - On the mirrored side, a target too small for the source's data thus loses keys after
//!   a verify pass found none missing, and the cutover would serve without them.
//! - On the side clients use, the evictions are the app's own (a cache). Under
//!   replication capture the stream carries them as deletes, and the other side follows.
//!   Under `capture: proxy` nothing tells cutover which keys went: the other side keeps
//!   them, and a flip would serve them again.
//!
//! Redis counts evictions in `INFO stats` (`evicted_keys`). cutover reads every server's,
//! of both sides, every few seconds and again in a flip's checks (the side clients use
//! then only as far as it answers within half a second).
//! More evictions since the last look owe a verify pass that starts after (its repair
//! copies the keys the mirrored side lacks, or deletes those the other side evicted; a
//! server that keeps evicting owes another at every look, so no flip goes through while
//! it does), on the side kept equal (`cutover_server_evictions_total{side, server}`) and,
//! under `capture: proxy`, on the side clients use
//! (`cutover_evictions_not_followed_total{side, server}`); they are logged and shown in
//! `/status` and `ctl status`. Under replication capture the side clients use keeps only
//! its baseline, so that after a flip its count starts from it.

use std::sync::Mutex;
use std::time::Duration;

use metrics::Counter;

use super::capture::Side;
use super::restarts::Look;
use super::{Migration, Owed, counters, lock};
use crate::resp::info_field;
use crate::upstream::Pool;

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
    /// Keys it evicted while its side was the one clients use, under `capture: proxy`
    /// (the other side did not follow), as seen by this process.
    not_followed: u64,
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
    /// `cutover_evictions_not_followed_total{pool, side, server}`, per side, per server.
    not_followed: [Vec<Counter>; 2],
}

/// What a look found a server evicted since the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Nothing new (or a first count, a baseline).
    Nothing,
    /// Keys evicted on the side kept equal.
    Mirrored(u64),
    /// Keys evicted on the side clients use that the other side does not follow.
    NotFollowed(u64),
}

/// One server's evictions while mirrored, for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Evicted {
    /// `source` or `target`.
    pub side: &'static str,
    /// The server's name.
    pub server: String,
    /// Keys it evicted while its side was mirrored (in `seen`), or while it was the side
    /// clients use and the other side did not follow (in `not_followed`).
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
            not_followed: counters::per_side_server(
                "cutover_evictions_not_followed_total",
                pool,
                names,
            ),
        }
    }

    /// The servers that evicted keys while mirrored, for `/status`.
    pub fn seen(&self) -> Vec<Evicted> {
        self.listed(|c| c.while_mirrored)
    }

    /// The servers of the side clients use that evicted keys the other side did not
    /// follow (`capture: proxy`), for `/status`.
    pub fn not_followed(&self) -> Vec<Evicted> {
        self.listed(|c| c.not_followed)
    }

    /// Every server whose `keys` count is not zero.
    fn listed(&self, keys: impl Fn(&Counted) -> u64) -> Vec<Evicted> {
        Side::BOTH
            .iter()
            .flat_map(|&side| {
                lock(&self.servers[side as usize])
                    .iter()
                    .filter(|c| keys(c) > 0)
                    .map(|c| Evicted {
                        side: side.name(),
                        server: c.name.clone(),
                        keys: keys(c),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The servers that evicted keys while mirrored, in words: "target server t1 evicted
    /// 120 keys".
    pub fn evicted_text(&self) -> String {
        in_words(self.seen())
    }

    /// The servers of the side clients use whose evictions the other side did not follow,
    /// in words: "source server s1 evicted 120 keys".
    pub fn not_followed_text(&self) -> String {
        in_words(self.not_followed())
    }

    /// Record `evicted` as server `index` of `side`'s `evicted_keys`, with `side` the
    /// mirrored one or not, and the other side `following` its deletes (replication
    /// capture) or not: what it evicted since the last look (nothing the first time, or
    /// after the count went back: a restart or `CONFIG RESETSTAT`).
    fn record(
        &self,
        side: Side,
        index: usize,
        evicted: u64,
        mirrored: bool,
        following: bool,
    ) -> Found {
        let mut servers = lock(&self.servers[side as usize]);
        let Some(counted) = servers.get_mut(index) else {
            return Found::Nothing;
        };
        let more = counted.last.map_or(0, |last| evicted.saturating_sub(last));
        counted.last = Some(evicted);
        if more == 0 {
            return Found::Nothing;
        }
        if mirrored {
            counted.while_mirrored += more;
            self.counters[side as usize][index].increment(more);
            Found::Mirrored(more)
        } else if !following {
            counted.not_followed += more;
            self.not_followed[side as usize][index].increment(more);
            Found::NotFollowed(more)
        } else {
            Found::Nothing
        }
    }
}

/// Servers and their evictions in words: "target server t1 evicted 120 keys, ...".
fn in_words(evicted: Vec<Evicted>) -> String {
    let servers: Vec<String> = evicted
        .into_iter()
        .map(|e| format!("{} server {} evicted {} keys", e.side, e.server, e.keys))
        .collect();
    if servers.is_empty() {
        "no server evicted keys".to_string()
    } else {
        servers.join(", ")
    }
}

/// Look at every server's evictions every few seconds, for as long as the migration
/// lives.
pub async fn watch(migration: std::sync::Arc<Migration>) {
    loop {
        migration.watch_evictions(Look::BothSides).await;
        tokio::time::sleep(super::restarts::look_every()).await;
    }
}

impl Migration {
    /// Read the `evicted_keys` of the servers `look` says, and owe a verify pass for more
    /// on the mirrored side, or on the side clients use when the other does not follow
    /// its deletes (rule 19). Not after finalize (nothing is mirrored), nor on a fleet
    /// member that follows (the leader looks). A server that does not answer is looked at
    /// again next time (its count then covers the time between).
    pub async fn watch_evictions(&self, look: Look) {
        let Some(mirrored) = Look::mirrored(self) else {
            return;
        };
        // Side by side: a flip's check reads both, and one may be slow.
        tokio::join!(
            self.read_evictions(look, Side::Source, mirrored),
            self.read_evictions(look, Side::Target, mirrored)
        );
    }

    /// `look`'s reading of `side`'s `evicted_keys`.
    async fn read_evictions(&self, look: Look, side: Side, mirrored: Side) {
        // Under replication capture the other side follows the deletes of evictions.
        let following = self.capturing();
        let read = async {
            let _looking = self.evictions.looking[side as usize].lock().await;
            let pool = side.copy_pool(self);
            for (index, server) in pool.servers.iter().enumerate() {
                let Some(evicted) = read_evicted_keys(pool, index).await else {
                    continue;
                };
                let found =
                    self.evictions
                        .record(side, index, evicted, side == mirrored, following);
                let (pool, side, server) = (self.source.name(), side.name(), &server.name);
                match found {
                    Found::Nothing => {}
                    Found::Mirrored(keys) => {
                        self.dirty.owe_verify(Owed::Eviction);
                        tracing::error!(pool, side, server = %server, keys, "a server of the side kept equal evicted keys (its maxmemory is full): it now lacks keys the other side holds; raise its maxmemory or add servers, then run a verify pass with repair");
                    }
                    Found::NotFollowed(keys) => {
                        self.dirty.owe_verify(Owed::EvictionNotFollowed);
                        tracing::warn!(pool, side, server = %server, keys, "a server of the side clients use evicted keys (its maxmemory is full); under capture: proxy nothing says which, so the other side still holds them: run a verify pass with repair before a flip, or migrate with capture: replication, which carries evictions as deletes");
                    }
                }
            }
        };
        look.read(self, side, mirrored, "evicted_keys", read).await;
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
    fn evictions_count_from_the_first_look_and_by_the_side_and_capture() {
        let names = ["t1".to_string()];
        let evictions = Evictions::new("p", [&[], &names]);
        let target = |evicted, mirrored, following| {
            evictions.record(Side::Target, 0, evicted, mirrored, following)
        };
        assert_eq!(target(50, true, false), Found::Nothing, "a baseline");
        assert_eq!(target(80, true, false), Found::Mirrored(30));
        assert_eq!(
            target(90, false, true),
            Found::Nothing,
            "clients' side, its deletes followed"
        );
        assert_eq!(target(95, false, false), Found::NotFollowed(5));
        assert_eq!(target(5, true, false), Found::Nothing, "a restart");
        assert_eq!(target(7, true, false), Found::Mirrored(2));
        assert_eq!(evictions.evicted_text(), "target server t1 evicted 32 keys");
        assert_eq!(
            evictions.not_followed_text(),
            "target server t1 evicted 5 keys"
        );
    }
}
