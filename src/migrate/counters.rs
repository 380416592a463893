//! The migration's metrics, resolved once per migration (labelled by the source pool).

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Every migration metric of one source pool.
pub struct MigrationCounters {
    /// `cutover_mirror_events_total{action="replayed"}`.
    pub replayed: Counter,
    /// `cutover_mirror_events_total{action="copied"}`: copies caused by writes.
    pub copied_for_writes: Counter,
    /// `cutover_mirror_retries_total`.
    pub retried: Counter,
    /// `cutover_mirror_dirty_total`: keys marked dirty.
    pub dirtied: Counter,
    /// `cutover_mirror_redirty_copies_total`: dirty keys copied again.
    pub redirty: Counter,
    /// `cutover_dirty_keys`: dirty keys waiting.
    pub dirty_pending: Gauge,
    /// `cutover_lane_queue_depth`: events waiting in lanes.
    pub lane_depth: Gauge,
    /// `cutover_mirror_lag_seconds`: source reply to target apply.
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
    pub state: [Gauge; 4],
    /// `cutover_backfill_rate_limit_keys_per_second` (0: unlimited).
    pub rate_limit: Gauge,
    /// `cutover_backfill_servers_done`.
    pub servers_done: Gauge,
    /// `cutover_copy_restore_rejections_total{reason="payload_version"}`.
    pub rejected_payload: Counter,
    /// `cutover_copy_restore_rejections_total{reason="over_copy_limit"}`.
    pub rejected_size: Counter,
    /// `cutover_copy_structural_total`: keys copied by type instead of DUMP/RESTORE.
    pub structural: Counter,
    /// `cutover_known_copied_keys`.
    pub known_keys: Gauge,
    /// `cutover_known_copied_bytes`.
    pub known_bytes: Gauge,
}

/// The backfill's states, in the order of `MigrationCounters::state`.
pub const BACKFILL_STATES: [&str; 4] = ["idle", "running", "paused", "done"];

impl MigrationCounters {
    /// Resolve every handle for the migration of `pool`.
    pub fn new(pool: &str) -> MigrationCounters {
        let p = pool.to_string();
        MigrationCounters {
            replayed: counter!("cutover_mirror_events_total", "pool" => p.clone(), "action" => "replayed"),
            copied_for_writes: counter!("cutover_mirror_events_total", "pool" => p.clone(), "action" => "copied"),
            retried: counter!("cutover_mirror_retries_total", "pool" => p.clone()),
            dirtied: counter!("cutover_mirror_dirty_total", "pool" => p.clone()),
            redirty: counter!("cutover_mirror_redirty_copies_total", "pool" => p.clone()),
            dirty_pending: gauge!("cutover_dirty_keys", "pool" => p.clone()),
            lane_depth: gauge!("cutover_lane_queue_depth", "pool" => p.clone()),
            lag: histogram!("cutover_mirror_lag_seconds", "pool" => p.clone()),
            backfill_scanned: counter!("cutover_backfill_keys_scanned_total", "pool" => p.clone()),
            backfill_copied: counter!("cutover_backfill_keys_copied_total", "pool" => p.clone()),
            backfill_skipped: counter!("cutover_backfill_keys_skipped_total", "pool" => p.clone()),
            bytes_copied: counter!("cutover_backfill_bytes_copied_total", "pool" => p.clone()),
            state: BACKFILL_STATES
                .map(|s| gauge!("cutover_backfill_state", "pool" => p.clone(), "state" => s)),
            rate_limit: gauge!("cutover_backfill_rate_limit_keys_per_second", "pool" => p.clone()),
            servers_done: gauge!("cutover_backfill_servers_done", "pool" => p.clone()),
            rejected_payload: counter!("cutover_copy_restore_rejections_total", "pool" => p.clone(), "reason" => "payload_version"),
            rejected_size: counter!("cutover_copy_restore_rejections_total", "pool" => p.clone(), "reason" => "over_copy_limit"),
            structural: counter!("cutover_copy_structural_total", "pool" => p.clone()),
            known_keys: gauge!("cutover_known_copied_keys", "pool" => p.clone()),
            known_bytes: gauge!("cutover_known_copied_bytes", "pool" => p),
        }
    }

    /// A key copied, for `reason` ("backfill" or "write"), with its payload size.
    pub fn copied(&self, reason: &str, bytes: usize) {
        if reason == "backfill" {
            self.backfill_copied.increment(1);
        } else {
            self.copied_for_writes.increment(1);
        }
        self.bytes_copied.increment(bytes as u64);
    }

    /// A payload was not restored: refused by the target, or over the copy limit.
    pub fn restore_rejected(&self, reason: &str) {
        if reason == "over_copy_limit" {
            self.rejected_size.increment(1);
        } else {
            self.rejected_payload.increment(1);
        }
    }

    /// Show `state` as the backfill's state.
    pub fn set_state(&self, state: &str) {
        for (gauge, name) in self.state.iter().zip(BACKFILL_STATES) {
            gauge.set(if name == state { 1.0 } else { 0.0 });
        }
    }
}
