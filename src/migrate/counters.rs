//! The migration's metrics, resolved once per migration (labelled by the source pool).

use std::collections::HashMap;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use super::capture::Side;
use super::copy::{Copied, CopyReason};
use super::engines::CopyMethod;
use super::phase::Phase;
use crate::command::{self, Access};

/// Kinds of difference a verify pass reports, in the order of `verify_found`.
pub const DIFFERENCE_KINDS: [&str; 5] = ["missing", "extra", "type", "value", "ttl"];

/// Shadow-read counters of one command.
pub struct ShadowCounters {
    /// `cutover_shadow_checks_total{command}`.
    pub checked: Counter,
    /// `cutover_shadow_mismatches_total{command}`.
    pub mismatched: Counter,
}

/// Every migration metric of one source pool.
pub struct MigrationCounters {
    /// `cutover_mirror_events_total{action="replayed"}`.
    pub replayed: Counter,
    /// `cutover_mirror_events_total{action="copied"}`: copies caused by writes.
    pub copied_for_writes: Counter,
    /// `cutover_mirror_ttl_copies_total`: replayable writes copied instead because the
    /// key's last copy carried a TTL (a subset of the copies above).
    pub ttl_copies: Counter,
    /// `cutover_mirror_folded_total`: events a copy already carried (rule 9), dropped.
    pub folded: Counter,
    /// `cutover_mirror_retries_total{reason}`, with info-level log lines.
    pub retries: super::retries::Retries,
    /// `cutover_mirror_dirty_total`: keys marked dirty.
    pub dirtied: Counter,
    /// `cutover_mirror_redirty_copies_total`: dirty keys copied again.
    pub redirty: Counter,
    /// `cutover_mirror_redirty_failures_total`: copies of dirty keys that failed again.
    pub redirty_failed: Counter,
    /// `cutover_dirty_drain_backoff_seconds`: the dirty-key drainer's wait between probes
    /// while copies of dirty keys keep failing (0 while they succeed).
    pub dirty_backoff: Gauge,
    /// `cutover_dirty_keys`: dirty keys waiting.
    pub dirty_pending: Gauge,
    /// `cutover_dirty_keys_unpersisted`: dirty keys the dirty-key file could not take,
    /// held in memory (rule 7 on a failing disk).
    pub dirty_unpersisted: Gauge,
    /// `cutover_lane_queue_depth`: events waiting in lanes.
    pub lane_depth: Gauge,
    /// `cutover_mirror_lag_seconds`: source reply to target apply, for one mirrored event
    /// in [`super::LAG_SAMPLE`].
    pub lag: Histogram,
    /// `cutover_backfill_keys_scanned_total`.
    pub backfill_scanned: Counter,
    /// `cutover_backfill_keys_copied_total`.
    pub backfill_copied: Counter,
    /// `cutover_backfill_keys_skipped_total`: already known-copied.
    pub backfill_skipped: Counter,
    /// `cutover_backfill_bytes_copied_total` (payload bytes, backfill and mirror copies).
    pub bytes_copied: Counter,
    /// `cutover_backfill_state{state}`: 1 for the current state.
    pub state: [Gauge; BACKFILL_STATES.len()],
    /// `cutover_backfill_source_wait_seconds`: how long a migration a reload started
    /// waited for the source to answer what was sent before it, before its backfill.
    pub source_wait: Histogram,
    /// `cutover_backfill_rate_limit_keys_per_second` (0: unlimited).
    pub rate_limit: Gauge,
    /// `cutover_backfill_servers_done`.
    pub servers_done: Gauge,
    /// `cutover_copy_restore_rejections_total{reason="payload_version"}`.
    pub rejected_payload: Counter,
    /// `cutover_copy_restore_rejections_total{reason="over_copy_limit"}`.
    pub rejected_size: Counter,
    /// `cutover_copy_restore_rejections_total{reason="restore_refused"}`: DUMP or RESTORE
    /// itself refused (renamed, or not permitted).
    pub rejected_command: Counter,
    /// `cutover_copy_structural_total`: keys copied by type instead of DUMP/RESTORE.
    pub structural: Counter,
    /// `cutover_copy_stream_parts_not_carried_total`: parts of streams (consumers without
    /// pending entries, counters, pending entries of deleted entries) a copy by type could
    /// not give the target, each logged with its key.
    pub stream_parts_not_carried: Counter,
    /// `cutover_known_copied_keys`.
    pub known_keys: Gauge,
    /// `cutover_known_copied_bytes`.
    pub known_bytes: Gauge,
    /// `cutover_migration_phase{phase}`: 1 for the current phase.
    pub phase: [Gauge; 3],
    /// `cutover_cutover_pause_seconds`: how long each flip held requests.
    pub pause: Histogram,
    /// `cutover_cutover_flips_total{to}`: flips to each phase.
    pub flips: [Counter; 3],
    /// `cutover_cutover_refusals_total`: flips refused (not ready, or writes did not drain).
    pub refusals: Counter,
    /// `cutover_cutover_given_up_late_total`: flips given up at their last look, under the
    /// gate (rule 20: something changed on the mirrored side, or an ejection, since the
    /// checks). Counted in `refusals` too.
    pub given_up_late: Counter,
    /// `cutover_cutover_last_look_seconds`: how long that last look took (part of the
    /// pause).
    pub last_look: Histogram,
    /// `cutover_cutover_checks_unread_total{side}`: readings of the side clients use (its
    /// `run_id`s, its `evicted_keys`) that a flip's check, or a verify pass's start, cut
    /// short after 500 ms, a server there not answering: a restart or evictions there may
    /// be found after the flip.
    pub checks_unread: [Counter; 2],
    /// `cutover_cutover_connections_looked_twice_total{outcome}`: connections to a source
    /// server found in their handshake (nameless, silent) by a cutover's check, and looked
    /// at again: `cleared` (gone, or named as this process's own by then) or `counted` (a
    /// client connected straight to the source).
    pub looked_twice: [Counter; 2],
    /// `cutover_backfill_progress_ratio`: keys scanned over the source's keys (1 when done).
    pub progress: Gauge,
    /// `cutover_backfill_eta_seconds`: estimated time to the end of the backfill.
    pub eta: Gauge,
    /// Shadow counters by command name.
    pub shadow: HashMap<&'static str, ShadowCounters>,
    /// `cutover_shadow_skipped_total{reason}`: sampled reads not compared, by why.
    pub shadow_skipped: [Counter; 5],
    /// `cutover_shadow_repairs_total`: keys copied again after a mismatch.
    pub shadow_repaired: Counter,
    /// `cutover_shadow_unconfirmed_total`: first disagreements a second read did not confirm.
    pub shadow_unconfirmed: Counter,
    /// `cutover_verify_keys_checked_total`.
    pub verify_checked: Counter,
    /// `cutover_verify_differences_total{kind}`: differences confirmed by a verify pass.
    pub verify_found: [Counter; 5],
    /// `cutover_verify_last_differences{kind}`: differences found by the last verify pass.
    pub verify_last: [Gauge; 5],
    /// `cutover_verify_repaired_total`: keys copied again by verify.
    pub verify_repaired: Counter,
    /// `cutover_verify_runs_total`.
    pub verify_runs: Counter,
    /// `cutover_capture_reconnects_total{outcome="continued"|"full_resync"|"failed"}`.
    pub capture_reconnects: [Counter; 3],
    /// `cutover_capture_offset_bytes{server}`: stream offset applied, per source server.
    pub capture_offset: Vec<Gauge>,
    /// `cutover_capture_commands_total{server}`: commands taken from the stream.
    pub capture_commands: Vec<Counter>,
    /// `cutover_capture_lag_bytes{server}`: the server's offset less the applied one.
    pub capture_lag: Vec<Gauge>,
    /// `cutover_capture_lag_seconds{server}`: how long the stream takes to bring a write
    /// (a heartbeat marker's way through it).
    pub capture_lag_seconds: Vec<Gauge>,
    /// `cutover_capture_disconnected_seconds{server}`: how long a followed server's stream
    /// has been down (0 while it is open).
    pub capture_disconnected: Vec<Gauge>,
    /// `cutover_capture_events_total{action}`: what became of the stream's commands (in
    /// `CAPTURE_ACTIONS`'s order).
    pub capture_actions: [Counter; 5],
    /// `cutover_capture_pending_markers`: copies whose marker has not come back yet.
    pub capture_pending: Gauge,
    /// `cutover_capture_fences_total{outcome="reached"|"timed_out"}`: flips under capture
    /// that drained the streams up to the servers' offsets, or gave up (rule 11).
    pub capture_fences: [Counter; 2],
    /// `cutover_capture_drain_seconds`: how long a flip waited for the streams.
    pub capture_drain: Histogram,
    /// `cutover_capture_flushes_total`: `FLUSHDB`/`FLUSHALL` met in a stream.
    pub capture_flushes: Counter,
    /// `cutover_capture_flushed_keys_total`: keys deleted on the other side for them.
    pub capture_flushed_keys: Counter,
    /// `cutover_copies_total{reason, method}`: every copy, by why (in
    /// [`CopyReason::ALL`]'s order) and how (`restore`, `by_type`).
    pub copies: [[Counter; 2]; CopyReason::ALL.len()],
}

/// One counter `name{pool, side, server}` per server of each side (`names`, per side in
/// [`Side::BOTH`]'s order), resolved once: the restart and eviction looks' counts.
pub fn per_side_server(name: &'static str, pool: &str, names: [&[String]; 2]) -> [Vec<Counter>; 2] {
    let side = |index: usize| {
        names[index]
            .iter()
            .map(|server| counter!(name, "pool" => pool.to_string(), "side" => Side::BOTH[index].name(), "server" => server.clone()))
            .collect()
    };
    [side(0), side(1)]
}

/// What became of a command of a source server's replication stream, in the order of
/// `capture_actions`: replayed on the target; its keys copied; dropped because a copy's
/// snapshot already holds it (rule 12, or folded by rule 9); ignored (another database,
/// `PING`, `MULTI`, other channels' `PUBLISH`); a marker of this migration's.
pub const CAPTURE_ACTIONS: [&str; 5] = ["replayed", "copied", "in_copy", "ignored", "marker"];

/// Why a sampled read was not compared, in the order of `shadow_skipped`.
pub const SHADOW_SKIPS: [&str; 5] = [
    "not_copied",
    "copy_pending",
    "dirty",
    "unavailable",
    "target_lacks",
];

/// The backfill's states, in the order of `MigrationCounters::state`. A migration a
/// reload started is `waiting_for_source` until the source answered every request sent
/// to it before the migration was attached (those were not mirrored).
pub const BACKFILL_STATES: [&str; 5] = ["idle", "waiting_for_source", "running", "paused", "done"];

impl MigrationCounters {
    /// Resolve every handle for the migration of `pool`.
    pub fn new(pool: &str) -> MigrationCounters {
        let p = pool.to_string();
        MigrationCounters {
            replayed: counter!("cutover_mirror_events_total", "pool" => p.clone(), "action" => "replayed"),
            copied_for_writes: counter!("cutover_mirror_events_total", "pool" => p.clone(), "action" => "copied"),
            ttl_copies: counter!("cutover_mirror_ttl_copies_total", "pool" => p.clone()),
            folded: counter!("cutover_mirror_folded_total", "pool" => p.clone()),
            retries: super::retries::Retries::new(pool),
            dirtied: counter!("cutover_mirror_dirty_total", "pool" => p.clone()),
            redirty: counter!("cutover_mirror_redirty_copies_total", "pool" => p.clone()),
            redirty_failed: counter!("cutover_mirror_redirty_failures_total", "pool" => p.clone()),
            dirty_backoff: gauge!("cutover_dirty_drain_backoff_seconds", "pool" => p.clone()),
            dirty_pending: gauge!("cutover_dirty_keys", "pool" => p.clone()),
            dirty_unpersisted: gauge!("cutover_dirty_keys_unpersisted", "pool" => p.clone()),
            lane_depth: gauge!("cutover_lane_queue_depth", "pool" => p.clone()),
            lag: histogram!("cutover_mirror_lag_seconds", "pool" => p.clone()),
            backfill_scanned: counter!("cutover_backfill_keys_scanned_total", "pool" => p.clone()),
            backfill_copied: counter!("cutover_backfill_keys_copied_total", "pool" => p.clone()),
            backfill_skipped: counter!("cutover_backfill_keys_skipped_total", "pool" => p.clone()),
            bytes_copied: counter!("cutover_backfill_bytes_copied_total", "pool" => p.clone()),
            state: BACKFILL_STATES
                .map(|s| gauge!("cutover_backfill_state", "pool" => p.clone(), "state" => s)),
            source_wait: histogram!("cutover_backfill_source_wait_seconds", "pool" => p.clone()),
            rate_limit: gauge!("cutover_backfill_rate_limit_keys_per_second", "pool" => p.clone()),
            servers_done: gauge!("cutover_backfill_servers_done", "pool" => p.clone()),
            rejected_payload: counter!("cutover_copy_restore_rejections_total", "pool" => p.clone(), "reason" => "payload_version"),
            rejected_size: counter!("cutover_copy_restore_rejections_total", "pool" => p.clone(), "reason" => "over_copy_limit"),
            rejected_command: counter!("cutover_copy_restore_rejections_total", "pool" => p.clone(), "reason" => "restore_refused"),
            structural: counter!("cutover_copy_structural_total", "pool" => p.clone()),
            stream_parts_not_carried: counter!("cutover_copy_stream_parts_not_carried_total", "pool" => p.clone()),
            known_keys: gauge!("cutover_known_copied_keys", "pool" => p.clone()),
            known_bytes: gauge!("cutover_known_copied_bytes", "pool" => p.clone()),
            phase: Phase::ALL
                .map(|ph| gauge!("cutover_migration_phase", "pool" => p.clone(), "phase" => ph.name())),
            pause: histogram!("cutover_cutover_pause_seconds", "pool" => p.clone()),
            flips: Phase::ALL
                .map(|ph| counter!("cutover_cutover_flips_total", "pool" => p.clone(), "to" => ph.name())),
            refusals: counter!("cutover_cutover_refusals_total", "pool" => p.clone()),
            given_up_late: counter!("cutover_cutover_given_up_late_total", "pool" => p.clone()),
            last_look: histogram!("cutover_cutover_last_look_seconds", "pool" => p.clone()),
            checks_unread: Side::BOTH.map(|side| {
                counter!("cutover_cutover_checks_unread_total", "pool" => p.clone(), "side" => side.name())
            }),
            looked_twice: ["cleared", "counted"].map(|outcome| {
                counter!("cutover_cutover_connections_looked_twice_total", "pool" => p.clone(), "outcome" => outcome)
            }),
            progress: gauge!("cutover_backfill_progress_ratio", "pool" => p.clone()),
            eta: gauge!("cutover_backfill_eta_seconds", "pool" => p.clone()),
            shadow: command::all()
                .filter(|c| c.access == Access::Read)
                .map(|c| {
                    (
                        c.name,
                        ShadowCounters {
                            checked: counter!("cutover_shadow_checks_total", "pool" => p.clone(), "command" => c.name),
                            mismatched: counter!("cutover_shadow_mismatches_total", "pool" => p.clone(), "command" => c.name),
                        },
                    )
                })
                .collect(),
            shadow_skipped: SHADOW_SKIPS
                .map(|r| counter!("cutover_shadow_skipped_total", "pool" => p.clone(), "reason" => r)),
            shadow_repaired: counter!("cutover_shadow_repairs_total", "pool" => p.clone()),
            shadow_unconfirmed: counter!("cutover_shadow_unconfirmed_total", "pool" => p.clone()),
            verify_checked: counter!("cutover_verify_keys_checked_total", "pool" => p.clone()),
            verify_found: DIFFERENCE_KINDS
                .map(|k| counter!("cutover_verify_differences_total", "pool" => p.clone(), "kind" => k)),
            verify_last: DIFFERENCE_KINDS
                .map(|k| gauge!("cutover_verify_last_differences", "pool" => p.clone(), "kind" => k)),
            verify_repaired: counter!("cutover_verify_repaired_total", "pool" => p.clone()),
            verify_runs: counter!("cutover_verify_runs_total", "pool" => p.clone()),
            capture_reconnects: ["continued", "full_resync", "failed"].map(|o| {
                counter!("cutover_capture_reconnects_total", "pool" => p.clone(), "outcome" => o)
            }),
            capture_offset: Vec::new(),
            capture_commands: Vec::new(),
            capture_lag: Vec::new(),
            capture_lag_seconds: Vec::new(),
            capture_disconnected: Vec::new(),
            capture_actions: CAPTURE_ACTIONS
                .map(|a| counter!("cutover_capture_events_total", "pool" => p.clone(), "action" => a)),
            capture_pending: gauge!("cutover_capture_pending_markers", "pool" => p.clone()),
            capture_fences: ["reached", "timed_out"]
                .map(|o| counter!("cutover_capture_fences_total", "pool" => p.clone(), "outcome" => o)),
            capture_drain: histogram!("cutover_capture_drain_seconds", "pool" => p.clone()),
            capture_flushes: counter!("cutover_capture_flushes_total", "pool" => p.clone()),
            capture_flushed_keys: counter!("cutover_capture_flushed_keys_total", "pool" => p.clone()),
            copies: CopyReason::ALL.map(|r| {
                ["restore", "by_type"].map(|m| {
                    counter!("cutover_copies_total", "pool" => p.clone(), "reason" => r.label(), "method" => m)
                })
            }),
        }
    }

    /// Resolve the capture's per-server handles, for `servers` of the source pool.
    pub fn with_capture(mut self, pool: &str, servers: &[String]) -> MigrationCounters {
        self.capture_offset = servers
            .iter()
            .map(|s| gauge!("cutover_capture_offset_bytes", "pool" => pool.to_string(), "server" => s.clone()))
            .collect();
        self.capture_lag = servers
            .iter()
            .map(|s| gauge!("cutover_capture_lag_bytes", "pool" => pool.to_string(), "server" => s.clone()))
            .collect();
        self.capture_lag_seconds = servers
            .iter()
            .map(|s| gauge!("cutover_capture_lag_seconds", "pool" => pool.to_string(), "server" => s.clone()))
            .collect();
        self.capture_disconnected = servers
            .iter()
            .map(|s| gauge!("cutover_capture_disconnected_seconds", "pool" => pool.to_string(), "server" => s.clone()))
            .collect();
        self.capture_commands = servers
            .iter()
            .map(|s| counter!("cutover_capture_commands_total", "pool" => pool.to_string(), "server" => s.clone()))
            .collect();
        self
    }

    /// A key copied, for `reason`.
    pub fn copied(&self, reason: CopyReason, copied: &Copied) {
        match reason {
            CopyReason::Backfill => self.backfill_copied.increment(1),
            CopyReason::Write => self.copied_for_writes.increment(1),
            CopyReason::Dirty => self.redirty.increment(1),
            CopyReason::Shadow => self.shadow_repaired.increment(1),
            // Counted when the repair is queued (`cutover_verify_repaired_total`).
            CopyReason::Verify => {}
            // Only in `cutover_copies_total`; the pass's keys queued are in /status.
            CopyReason::FullPass => {}
        }
        let method = usize::from(copied.method == CopyMethod::ByType);
        self.copies[reason as usize][method].increment(1);
        if copied.method == CopyMethod::ByType {
            self.structural.increment(1);
        }
        self.bytes_copied.increment(copied.bytes as u64);
    }

    /// A payload was not restored: refused by the target, over the copy limit, or DUMP or
    /// RESTORE itself refused.
    pub fn restore_rejected(&self, reason: &str) {
        match reason {
            "over_copy_limit" => self.rejected_size.increment(1),
            "restore_refused" => self.rejected_command.increment(1),
            _ => self.rejected_payload.increment(1),
        }
    }

    /// Show `phase` as the migration's phase.
    pub fn set_phase(&self, phase: Phase) {
        for (gauge, each) in self.phase.iter().zip(Phase::ALL) {
            gauge.set(if each == phase { 1.0 } else { 0.0 });
        }
    }

    /// A sampled read was not compared, for `reason` (one of `SHADOW_SKIPS`); its
    /// index, if it is one.
    pub fn shadow_skip(&self, reason: &str) -> Option<usize> {
        let i = SHADOW_SKIPS.iter().position(|r| *r == reason)?;
        self.shadow_skipped[i].increment(1);
        Some(i)
    }

    /// Show `state` as the backfill's state.
    pub fn set_state(&self, state: &str) {
        for (gauge, name) in self.state.iter().zip(BACKFILL_STATES) {
            gauge.set(if name == state { 1.0 } else { 0.0 });
        }
    }
}
