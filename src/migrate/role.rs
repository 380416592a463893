//! A migration's part in a fleet of proxies (`migrate.coordination`; the fleet itself is
//! `src/fleet/`, above this layer): a member only forwards until it is made the leader,
//! which migrates from the former leader's checkpoint; a member whose lease may be
//! expiring sends nothing (rule 15).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{Migration, Phase, backfill, capture, state};
use crate::config::PoolConfig;
use crate::upstream::Pool;

/// A migration's part in a fleet of proxies (`migrate.coordination`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// No fleet: this proxy does everything.
    Solo = 0,
    /// A member that only forwards; the leader migrates.
    Follower = 1,
    /// The member that runs the capture, the backfill, verify and the dirty drain.
    Leader = 2,
}

impl Role {
    /// The name in `/status`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Solo => "solo",
            Role::Follower => "follower",
            Role::Leader => "leader",
        }
    }
}

impl Migration {
    /// A member of a fleet: it only forwards until [`Migration::lead`] makes it the
    /// leader; its progress lives in etcd (the leader's checkpoint), not in a state file.
    pub fn start_member(
        source: Arc<Pool>,
        source_config: &PoolConfig,
        target_config: &PoolConfig,
    ) -> Arc<Migration> {
        let mut config = source_config.clone();
        if let Some(m) = config.migration.as_mut() {
            m.settings.state_file = None;
        }
        let migration = Migration::start_full(source, &config, target_config, false, None);
        migration.role.store(Role::Follower as u8, Relaxed);
        // Every connection of the member's, to either side, checks the fence right before
        // it writes (rule 15): clients' requests, and a leader's copies and replays.
        for pool in [
            &migration.source,
            &migration.target,
            &migration.copy_source,
            &migration.copy_target,
        ] {
            pool.set_fence(migration.send_fence.clone());
        }
        migration
    }

    /// Become the fleet's leader: take over the former leader's `checkpoint` (its text, if
    /// there is one: its safe cursors, totals and stream positions), follow the source
    /// servers' streams from there, and run the backfill from there. A former leader's
    /// dirty keys died with it, so a verify pass is owed when taking one over. Fails
    /// (still a follower) when a source server refuses replication.
    pub async fn lead(self: &Arc<Self>, checkpoint: Option<&str>) -> Result<(), String> {
        // The capture follows the authority (rule 13); nothing after finalize.
        let Some(side) = capture::Side::authority(self.phase()) else {
            self.role.store(Role::Leader as u8, Relaxed);
            return Ok(());
        };
        let positions = checkpoint.and_then(|text| state::adopt(self, text, side));
        if positions.is_some() {
            self.dirty.owe_verify(super::dirty::Owed::Takeover);
            let scanned = self.totals.scanned.load(Relaxed);
            self.backfill.taken_over_at.store(scanned, Relaxed);
        }
        let positions = positions.unwrap_or_default();
        capture::follow_from(self, side, &positions).await?;
        self.role.store(Role::Leader as u8, Relaxed);
        if self.phase() == Phase::Migrating {
            tokio::spawn(backfill::run(self.clone()));
        }
        tracing::info!(
            pool = self.source.name(),
            taken_over = checkpoint.is_some(),
            "leading the fleet: capture and backfill run here"
        );
        Ok(())
    }

    /// The checkpoint a fleet's leader keeps in etcd (the state file's text, with the safe
    /// stream positions).
    pub fn checkpoint_text(&self) -> String {
        state::render(self, false)
    }

    /// Stop leading (the lease was lost): the capture and the backfill stop here.
    pub fn step_down(&self) {
        self.role.store(Role::Follower as u8, Relaxed);
        self.capture.turn_off();
        tracing::warn!(
            pool = self.source.name(),
            "no longer leading the fleet: capture and backfill stopped here"
        );
    }

    /// The fleet renewed this member's lease with a request sent at `sent`: it may send
    /// requests until `valid` later.
    pub fn lease_renewed(&self, sent: std::time::Instant, valid: std::time::Duration) {
        self.send_fence.renewed(sent, valid);
    }

    /// How many times this member's fence lapsed, to stamp a request with before the
    /// fence is checked and the request's pool picked (rule 15).
    pub fn fence_epoch(&self) -> u64 {
        self.send_fence.lapses()
    }

    /// Whether this member must not send requests of the pool now: its lease may be about
    /// to expire in etcd (never, outside a fleet).
    pub fn fenced(&self) -> bool {
        self.send_fence.closed()
    }

    /// Wait (at most `limit`) for the lease to be renewed; whether it was.
    pub async fn wait_unfenced(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.fenced() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }

    /// For the leader's own writes (capture, lanes): wait while fenced, for as long as
    /// this member still leads (a lease not renewed for a whole TTL makes it step down).
    /// True when it may write again; false when it no longer leads, and what it holds is
    /// its successor's to copy.
    pub async fn wait_while_fenced(&self) -> bool {
        while self.fenced() && self.leads() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.leads()
    }

    /// Its part in a fleet.
    pub fn role(&self) -> Role {
        match self.role.load(Relaxed) {
            1 => Role::Follower,
            2 => Role::Leader,
            _ => Role::Solo,
        }
    }

    /// Whether this proxy migrates (alone, or as the fleet's leader).
    pub fn leads(&self) -> bool {
        self.role() != Role::Follower
    }

    /// Whether the proxy only forwards: the capture feeds the lanes, or another member of
    /// the fleet migrates.
    pub fn forwards_only(&self) -> bool {
        self.capturing() || self.role() == Role::Follower
    }
}
