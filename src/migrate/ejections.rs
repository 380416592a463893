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
//! In a fleet each member's pool ejects on its own, as separate nutcracker instances do;
//! each member reports its ejections to the fleet ([`EjectionReport`]), and the leader's
//! looks count the other members' reports as its own pool's.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::capture::Side;
use super::{Migration, Owed, Phase, Role, lock};

/// Time between two looks.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A fleet member's ejections, as it reports them to the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EjectionReport {
    /// Times its pools ejected a server since it started.
    pub count: u64,
    /// The servers of the side clients use it has ejected now ("source server NAME").
    pub out: Vec<String>,
}

/// What the last look saw.
#[derive(Default)]
pub struct Ejections {
    /// Per side, the pool's ejection count at the last look.
    counted: [AtomicU64; 2],
    /// The servers of the side clients use that were ejected at the last look (side name
    /// and server), for the blocker and the log.
    out: Mutex<Vec<String>>,
    /// The other fleet members' last reports, by member (kept by the leader).
    members: Mutex<BTreeMap<String, EjectionReport>>,
    /// Each member's count at the last look.
    members_counted: Mutex<BTreeMap<String, u64>>,
}

impl Ejections {
    /// The servers ejected at the last look, in words, if any.
    pub fn blocker(&self) -> Option<String> {
        let out = lock(&self.out).clone();
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
        for side in Side::BOTH {
            side.pool(self)
                .set_ejecting(authority.is_none_or(|a| a == side));
        }
    }

    /// This process's ejections, for its fleet member record: every ejection of its
    /// pools, and the servers of the side clients use it has out now.
    pub fn ejection_report(&self) -> EjectionReport {
        let out = Side::authority(self.phase()).map_or_else(Vec::new, |authority| {
            authority
                .pool(self)
                .ejected_servers()
                .into_iter()
                .map(|server| format!("{} server {server}", authority.name()))
                .collect()
        });
        EjectionReport {
            count: self.source.ejections() + self.target.ejections(),
            out,
        }
    }

    /// The other fleet members' reports, as the leader last read them.
    pub fn member_ejections(&self, reports: BTreeMap<String, EjectionReport>) {
        *lock(&self.ejections.members) = reports;
    }

    /// Compare the pools' ejections (and the other fleet members' reports) with the last
    /// look's: an ejection on the side clients use since then, or a server of it out now
    /// or at the last look (so the owed pass starts after it is back), owes a verify pass.
    /// Not after finalize, nor on a fleet member that follows (the leader decides flips).
    pub fn look_at_ejections(&self) {
        let counts = Side::BOTH.map(|side| side.pool(self).ejections());
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
        let mut changed = changed[authority as usize];
        let mut out_now: Vec<String> = self.ejection_report().out;
        let reports = lock(&self.ejections.members).clone();
        let mut counted = lock(&self.ejections.members_counted);
        for (member, report) in reports {
            let before = counted.insert(member.clone(), report.count);
            changed |= before.map_or(report.count > 0, |c| c != report.count);
            out_now.extend(
                report
                    .out
                    .into_iter()
                    .map(|server| format!("{server} (at fleet member {member})")),
            );
        }
        drop(counted);
        let mut out = lock(&self.ejections.out);
        if changed {
            tracing::warn!(
                pool = self.source.name(),
                side = authority.name(),
                servers = %out_now.join(", "),
                "a server of the side clients use was ejected (auto_eject_hosts): writes for its keys go to the other servers until it is back; a verify pass is owed"
            );
        }
        if changed || !out_now.is_empty() || !out.is_empty() {
            self.dirty.owe_verify(Owed::Ejection);
        }
        *out = out_now;
    }
}
