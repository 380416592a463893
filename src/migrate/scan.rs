//! Every key of one server, a `SCAN` page at a time: what verify and the full passes (a
//! capture's gap, a FLUSHDB in a stream, a server's restart) walk. (The backfill has its
//! own loop: it resumes from a saved cursor and paces itself.)

use std::time::Duration;

use bytes::Bytes;

use super::Migration;
use super::capture::Side;
use super::copy::CopyReason;
use crate::upstream::Pool;

/// Keys a page of a full pass.
const FULL_PASS_COUNT: u32 = 1000;

/// Tries of one page before the rest of the server is given up (logged).
const PAGE_TRIES: usize = 20;
/// Wait between tries of one page.
const PAGE_RETRY: Duration = Duration::from_millis(250);

/// A walk over the keys of server `server` of a pool.
pub(super) struct KeyScan<'a> {
    pool: &'a Pool,
    server: usize,
    /// `COUNT`, as the argument.
    count: String,
    /// Where the next page starts; `None` once the scan is over.
    cursor: Option<Vec<u8>>,
    /// What the walk is for, in the log line when it is cut short.
    purpose: &'static str,
}

impl<'a> KeyScan<'a> {
    /// From the start of server `server`, `count` keys a page (a hint to the server).
    pub(super) fn new(
        pool: &'a Pool,
        server: usize,
        count: u32,
        purpose: &'static str,
    ) -> KeyScan<'a> {
        KeyScan {
            pool,
            server,
            count: count.max(1).to_string(),
            cursor: Some(b"0".to_vec()),
            purpose,
        }
    }

    /// The next page of keys (maybe empty), or `None` at the end. A server that keeps
    /// failing ends its scan early, logged.
    pub(super) async fn next_page(&mut self) -> Option<Vec<Bytes>> {
        let cursor = self.cursor.take()?;
        for _ in 0..PAGE_TRIES {
            let scan = [b"SCAN".as_slice(), &cursor, b"COUNT", self.count.as_bytes()];
            let reply = self.pool.call(self.server, 0, &scan).await;
            if let Some((next, keys)) = reply.ok().as_deref().and_then(super::backfill::parse_scan)
            {
                self.cursor = (next != b"0").then_some(next);
                return Some(keys);
            }
            tokio::time::sleep(PAGE_RETRY).await;
        }
        tracing::error!(pool = self.pool.name(), server = %self.pool.servers[self.server].name, "{}: cannot SCAN this server; the rest of its keys are skipped", self.purpose);
        None
    }
}

/// Copy every key of server `server` of `pool` again, through the lanes (not "unless
/// copied": what the other side holds of them is unknown); `purpose` names the pass in the
/// log line of a scan cut short. The keys queued.
pub(super) async fn copy_every_key(
    migration: &Migration,
    pool: &Pool,
    server: usize,
    purpose: &'static str,
) -> u64 {
    let mut queued = 0u64;
    let mut scan = KeyScan::new(pool, server, FULL_PASS_COUNT, purpose);
    while let Some(keys) = scan.next_page().await {
        for key in keys {
            queued += 1;
            migration.queue_copy(key, CopyReason::FullPass).await;
        }
    }
    queued
}

/// Copy every key of the side `owner` does not belong to that server `owner.1` of side
/// `owner.0` owns (by placement), through the lanes: a key that server no longer holds is
/// deleted there. What a FLUSHDB on that server, or its restart, leaves on the other side,
/// which no scan of the server itself finds. `reason` counts the copies, and `purpose`
/// names the pass in the log line of a scan cut short. The keys queued.
///
/// Every event queued to the lanes before the call is applied first: a replay still
/// queued would otherwise write a key after the scan looked for it.
pub(super) async fn copy_keys_owned_elsewhere(
    migration: &Migration,
    owner: (Side, usize),
    reason: CopyReason,
    purpose: &'static str,
) -> u64 {
    migration.lanes.barrier().await;
    let (side, server) = owner;
    let owners = side.copy_pool(migration);
    let other = side.other().copy_pool(migration);
    let mut queued = 0u64;
    for scanned in 0..other.servers.len() {
        let mut scan = KeyScan::new(other, scanned, FULL_PASS_COUNT, purpose);
        while let Some(keys) = scan.next_page().await {
            for key in keys {
                if owners.route(&key).is_some_and(|r| r.server == server) {
                    queued += 1;
                    migration.queue_copy(key, reason).await;
                }
            }
        }
    }
    queued
}
