//! Ejection during a migration (rule 18). With `auto_eject_hosts`, a pool that sees a
//! server fail `server_failure_limit` times in a row places that server's keys on the
//! other servers until `server_retry_timeout` passes, as nutcracker does. That is the
//! behaviour of a cache, and it breaks what a migration relies on, that every copy, replay
//! and verify reaches each key's own server:
//! - a copy of a key whose source server is ejected would read another server, find
//!   nothing, and delete the key on the target;
//! - a write mirrored to a target whose server is ejected would land on another target
//!   server, and the key's own server would come back with the old value;
//! - while a source server is ejected, the app's writes for its keys go to other source
//!   servers, and the server comes back with what it held before, which the app then
//!   reads again (the lanes mirrored the writes, so the target holds the newer values).
//!
//! So:
//! - the copy connections never eject, nor does the pool of the side kept equal (the
//!   target while migrating, the source after a cutover): a key whose server is down is
//!   not reached, so its write or copy fails and the key is dirty until it can be copied
//!   (rules 3 and 7);
//! - the side clients use ejects as configured (nutcracker's behaviour, which the app
//!   expects); an ejection there owes a verify pass that starts after the server is
//!   back, and a flip waits while a server of that side is ejected.
//!
//! The looks here read the pool's counters (no I/O): every second, and in a flip's check.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::capture::Side;
use super::{Migration, Owed, Phase, Role};

/// Time between two looks.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What the last look saw.
#[derive(Default)]
pub struct Ejections {
    /// Per side, the pool's ejection count at the last look.
    counted: [AtomicU64; 2],
    /// The servers of the side clients use that were ejected at the last look (side name
    /// and server), for the blocker and the log.
    out: Mutex<Vec<String>>,
}

impl Ejections {
    /// The servers ejected at the last look, in words, if any.
    pub fn blocker(&self) -> Option<String> {
        let out = self.out.lock().map(|o| o.clone()).unwrap_or_default();
        (!out.is_empty()).then(|| {
            format!(
                "ejected now (auto_eject_hosts): {}; the app's writes for its keys go to the other servers; wait until it is back (server_retry_timeout), then run a verify pass with repair",
                out.join(", ")
            )
        })
    }
}

/// Look at the pools' ejections every second, for as long as the migration lives.
pub async fn watch(migration: std::sync::Arc<Migration>) {
    loop {
        migration.look_at_ejections();
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

impl Migration {
    /// Let the side clients use in `phase` eject as configured, and not the side kept
    /// equal (after finalize, nothing is mirrored: both as configured).
    pub fn apply_ejection(&self, phase: Phase) {
        let authority = Side::authority(phase);
        for side in [Side::Source, Side::Target] {
            side.pool(self)
                .set_ejecting(authority.is_none_or(|a| a == side));
        }
    }

    /// Compare the pools' ejections with the last look's: an ejection on the side clients
    /// use since then, or a server of it out now or at the last look (so the owed pass
    /// starts after it is back), owes a verify pass. Not after finalize, nor on a fleet
    /// member that follows (the leader decides flips).
    pub fn look_at_ejections(&self) {
        let counts = [Side::Source, Side::Target].map(|side| side.pool(self).ejections());
        let mut changed = [false; 2];
        for (side, count) in counts.into_iter().enumerate() {
            changed[side] = self.ejections.counted[side].swap(count, Relaxed) != count;
        }
        let Some(authority) = Side::authority(self.phase()) else {
            return;
        };
        if self.role() == Role::Follower {
            return;
        }
        let out_now: Vec<String> = authority
            .pool(self)
            .ejected_servers()
            .into_iter()
            .map(|server| format!("{} server {server}", authority.name()))
            .collect();
        let Ok(mut out) = self.ejections.out.lock() else {
            return;
        };
        if changed[authority as usize] {
            tracing::warn!(
                pool = self.source.name(),
                side = authority.name(),
                servers = %out_now.join(", "),
                "a server of the side clients use was ejected (auto_eject_hosts): writes for its keys go to the other servers until it is back; a verify pass is owed"
            );
        }
        if changed[authority as usize] || !out_now.is_empty() || !out.is_empty() {
            self.dirty.owe_verify(Owed::Ejection);
        }
        *out = out_now;
    }
}
