//! Why a mirror event or a copy is tried again, counted by reason
//! (`cutover_mirror_retries_total{reason}`) and said at info level, at most once per
//! [`LOG_EVERY`] per reason with how many happened since, so an operator sees why without
//! a log line per key.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use metrics::{Counter, counter};

/// Shortest time between two log lines of one reason.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why something is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The target answered a replayed write differently from the source (it had
    /// diverged, or it lacks the command): the key is copied instead.
    ReplayDiffered,
    /// A replayed write got no answer (connection lost, timeout): the key is copied.
    ReplayUnanswered,
    /// A copy could not reach the source or the target: tried again after a backoff.
    CopyUnavailable,
    /// A copy failed for another reason (an unexpected reply): the key is marked dirty
    /// and copied again later.
    CopyFailed,
}

impl RetryReason {
    /// Every reason, in the order of the handles.
    pub const ALL: [RetryReason; 4] = [
        RetryReason::ReplayDiffered,
        RetryReason::ReplayUnanswered,
        RetryReason::CopyUnavailable,
        RetryReason::CopyFailed,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::ReplayDiffered => "replay_differed",
            RetryReason::ReplayUnanswered => "replay_unanswered",
            RetryReason::CopyUnavailable => "copy_unavailable",
            RetryReason::CopyFailed => "copy_failed",
        }
    }

    /// What it means, for the log.
    fn meaning(self) -> &'static str {
        match self {
            RetryReason::ReplayDiffered => {
                "the target answered replayed writes differently from the source; their keys were copied instead"
            }
            RetryReason::ReplayUnanswered => {
                "replayed writes got no answer from the target; their keys were copied instead"
            }
            RetryReason::CopyUnavailable => {
                "copies could not reach a server; tried again after a backoff"
            }
            RetryReason::CopyFailed => {
                "copies failed; their keys are marked dirty and copied again later"
            }
        }
    }
}

/// The retry counters of one migration, and when each reason was last logged.
pub struct Retries {
    /// The pool, for log lines.
    pool: String,
    /// `cutover_mirror_retries_total{reason}`, in [`RetryReason::ALL`]'s order.
    counters: [Counter; 4],
    /// Retries since the last log line, by reason.
    since_log: [AtomicU64; 4],
    /// When each reason was last logged.
    logged: [Mutex<Option<Instant>>; 4],
    /// Each reason's latest detail, and when: what `/status` says of dirty keys.
    last: [Mutex<Option<(Instant, String)>>; 4],
}

/// How long a failure's detail stays the one `/status` gives.
const DETAIL_FRESH: Duration = Duration::from_secs(60);

impl Retries {
    /// Resolve the handles for the migration of `pool`.
    pub fn new(pool: &str) -> Retries {
        Retries {
            pool: pool.to_string(),
            counters: RetryReason::ALL.map(|r| {
                counter!("cutover_mirror_retries_total", "pool" => pool.to_string(), "reason" => r.label())
            }),
            since_log: Default::default(),
            logged: Default::default(),
            last: Default::default(),
        }
    }

    /// What happened at the latest retry for `reason`, if within the last minute.
    pub fn last_detail(&self, reason: RetryReason) -> Option<String> {
        let last = self.last[reason as usize].lock().ok()?;
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < DETAIL_FRESH)
            .map(|(_, detail)| detail.clone())
    }

    /// One retry for `reason`, about `key`; `detail` says what happened.
    pub fn record(&self, reason: RetryReason, key: &[u8], detail: &dyn std::fmt::Display) {
        let i = reason as usize;
        self.counters[i].increment(1);
        if let Ok(mut last) = self.last[i].lock() {
            *last = Some((Instant::now(), detail.to_string()));
        }
        let count = self.since_log[i].fetch_add(1, Relaxed) + 1;
        let due = self.logged[i].lock().is_ok_and(|mut last| {
            let due = last.is_none_or(|at| at.elapsed() >= LOG_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        });
        if due {
            self.since_log[i].fetch_sub(count, Relaxed);
            tracing::info!(
                pool = self.pool,
                reason = reason.label(),
                count,
                example_key = %String::from_utf8_lossy(&key[..key.len().min(120)]),
                detail = %detail,
                "{}",
                reason.meaning()
            );
        }
    }
}
