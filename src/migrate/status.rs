//! `/status`'s migration document: phase, backfill progress, capture, engines, mirror
//! lag, copies, shadow reads, verify and whether a cutover would be allowed now. Operators
//! read it (`cutover ctl status`), and so do scripts and the tests: its field names are an
//! interface.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::json;

use super::{CopyReason, Migration, Phase, Role, counters, marker};

/// Mirror events queued above which `/status` says the lanes are behind.
const STATUS_BACKLOG: u64 = 1000;

impl Migration {
    /// The migration's state for `/status`, as a JSON object.
    pub fn status_json(&self) -> serde_json::Value {
        let (queued, dirty) = self.backlog();
        let done = self.backfill.done.load(Relaxed);
        let paused = self.backfill.paused();
        let state = if done {
            "done"
        } else if paused {
            "paused"
        } else if self.backfill.waiting_for_source.load(Relaxed) {
            "waiting for the source"
        } else if self.phase() != Phase::Migrating {
            "stopped"
        } else {
            "running"
        };
        let t = &self.totals;
        let (progress, eta) = self.backfill_progress();
        let verify = self
            .verify
            .last()
            .map_or(serde_json::Value::Null, |r| r.json());
        // Under load the lanes are rarely empty at one instant; a cutover waits for a
        // moment when they are. Here only a backlog that is not draining counts.
        let blockers = if self.phase() == Phase::Migrating {
            self.readiness(queued < STATUS_BACKLOG)
        } else {
            Vec::new()
        };
        let scanned = t.scanned.load(Relaxed);
        json!({
            "phase": self.phase().name(),
            "source": self.source.name(),
            "target": self.target.name(),
            "target_servers": self.target.server_states(),
            "authority": self.authority().name(),
            "needs_verify": self.needs_verify(),
            "evictions": self.evictions.seen(),
            "evictions_not_followed": self.evictions.not_followed(),
            "restarts": {
                "seen": self.restarts.seen(),
                "recopying": self.restarts.passes_running(),
                "keys_queued": self.restarts.keys_queued.load(Relaxed),
            },
            "backfill": {
                "state": state,
                "done": done,
                "progress": (progress * 10_000.0).round() / 10_000.0,
                "eta_seconds": eta.map(f64::round),
                "keys_total": self.backfill.total_keys.load(Relaxed).max(scanned),
                "keys_scanned": scanned,
                "taken_over_at_keys": self.backfill.taken_over_at.load(Relaxed),
                "keys_copied": t.backfill_copied.load(Relaxed),
                "keys_skipped": t.skipped.load(Relaxed),
                "bytes_copied": t.bytes.load(Relaxed),
                "rate_limit_keys_per_second": self.backfill.rate_limit(),
                "rate_limit_bytes_per_second": self.backfill.byte_limit(),
            },
            "capture": {
                "mode": if self.capturing() { "replication" } else if self.role() == Role::Follower { "leader's" } else { "proxy" },
                "side": self.capture.side().name(),
                "events": counters::CAPTURE_ACTIONS.iter().zip(&t.capture_actions)
                    .map(|(action, n)| (action.to_string(), json!(n.load(Relaxed))))
                    .collect::<serde_json::Map<_, _>>(),
                "pending_markers": self.markers.pending.load(Relaxed).max(0),
                "servers": self.capture.states(self.capture.side()).iter().zip(&self.capture.side().pool(self).servers).map(|(c, s)| serde_json::json!({
                    "server": s.name,
                    "offset": c.offset.load(Relaxed),
                    "lag_bytes": c.master_offset.load(Relaxed).saturating_sub(c.offset.load(Relaxed)),
                    "lag_seconds": c.lag.seconds(marker::now_ms()),
                    "commands": c.commands.load(Relaxed),
                    "continued": c.continued.load(Relaxed),
                    "full_resyncs": c.full_resyncs.load(Relaxed),
                    "failed_reconnects": c.failed_reconnects.load(Relaxed),
                    "disconnected_seconds": c.down_seconds(marker::now_ms()),
                    "last_error": c.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
                })).collect::<Vec<_>>(),
            },
            "engines": self.engines.status_json(),
            "readiness": self.engines.readiness_json(),
            "mirror": {
                "queued": queued,
                "dirty": dirty,
                "lag_p50_ms": self.lag.quantile_ms(0.5),
                "lag_p99_ms": self.lag.quantile_ms(0.99),
                "replayed": t.replayed.load(Relaxed),
                "copied": t.write_copies.load(Relaxed),
                "dirtied": t.dirtied.load(Relaxed),
                "dirty_unpersisted": self.dirty.unpersisted.load(Relaxed),
                "dirty_in_memory": self.dirty.in_memory(),
                "dirty_failed_again": self.dirty.failed_again.load(Relaxed),
                "dirty_backoff_ms": self.dirty.backoff_ms.load(Relaxed),
                "folded": t.folded.load(Relaxed),
            },
            "copies": {
                "restore": t.restore_copies.load(Relaxed),
                "by_type": t.by_type_copies.load(Relaxed),
                "refused_then_by_type": t.rejected.load(Relaxed),
                "stream_parts_not_carried": t.stream_parts_not_carried.load(Relaxed),
                "by_reason": CopyReason::ALL
                    .iter()
                    .map(|r| (r.label().to_string(), t.by_reason[*r as usize].load(Relaxed).into()))
                    .collect::<serde_json::Map<_, _>>(),
            },
            "shadow": {
                "ratio": self.tunables.shadow_ratio(),
                "checked": t.shadow_checked.load(Relaxed),
                "mismatches": t.shadow_mismatches.load(Relaxed),
                "unconfirmed": t.shadow_unconfirmed.load(Relaxed),
                "repaired": t.shadow_repaired.load(Relaxed),
                "skipped": counters::SHADOW_SKIPS
                    .iter()
                    .zip(&t.shadow_skipped)
                    .map(|(r, n)| (r.to_string(), n.load(Relaxed).into()))
                    .collect::<serde_json::Map<_, _>>(),
            },
            "verify": {
                "running": self.verify.running(),
                "checked": self.verify.checked.load(Relaxed),
                "last": verify,
            },
            "cutover": {
                "ready": self.phase() == Phase::Migrating && blockers.is_empty(),
                "blockers": blockers,
                "last_pause_ms": self.flips.last_pause_us.load(Relaxed) as f64 / 1000.0,
                "given_up_late": self.flips.given_up_late.load(Relaxed),
                "last_given_up": super::lock(&self.flips.last_given_up).clone(),
                "checks_unread": self.flips.checks_unread.load(Relaxed),
                "checks_limit_ms": super::restarts::CLIENTS_SIDE_LIMIT.as_millis() as u64,
            },
        })
    }
}
