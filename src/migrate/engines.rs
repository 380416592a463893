//! The engines on both sides of a migration, and the copy method that follows from them.
//!
//! At start every source and target server is asked for `INFO server` (see
//! [`crate::engine`]). A copy then goes by DUMP/RESTORE when the receiving server reads the
//! sending server's payloads, and by type from the first key when it does not (a Redis 7
//! source into a Redis 6 target; a Valkey 9 target's keys back into a Redis 7 source after
//! cutover), so no key first sends a payload that is bound to be refused. Where a version
//! is too new to be in the table, the first refusal teaches it: later copies that way go
//! by type.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use serde_json::json;

use super::{Migration, Phase};
use metrics::{Gauge, gauge};

use crate::command::CommandSpec;
use crate::engine::{Engine, Requirement, Version, payload_rdb_version};
use crate::resp::Request;
use crate::upstream::Pool;

/// Attempts to read a server's engine at start (one a second) before copies to or from it
/// go by trying.
const ATTEMPTS: u32 = 10;

/// How a copy is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// DUMP on one side, RESTORE on the other.
    Restore,
    /// Read by type in chunks, written into a temporary key, renamed (structural).
    ByType,
    /// Unknown whether the receiver reads the payload: RESTORE, and by type if refused.
    TryRestore,
}

impl CopyMethod {
    /// The name `/status`, `ctl status` and the log use.
    pub fn name(self) -> &'static str {
        match self {
            CopyMethod::Restore => "restore",
            CopyMethod::ByType => "by_type",
            CopyMethod::TryRestore => "restore, by type if refused",
        }
    }
}

/// Which way copies go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Source to target (phase `migrating`).
    ToTarget = 0,
    /// Target back to source (phases `cutover` and `finalized`).
    ToSource = 1,
}

impl Direction {
    /// The direction copies go in `phase`.
    pub fn of(phase: Phase) -> Direction {
        match phase {
            Phase::Migrating => Direction::ToTarget,
            Phase::Cutover | Phase::Finalized => Direction::ToSource,
        }
    }
}

/// What is known of both sides' engines.
#[derive(Debug)]
pub struct Engines {
    /// Each source server's engine, once read.
    source: RwLock<Vec<Option<Engine>>>,
    /// Each target server's engine, once read.
    target: RwLock<Vec<Option<Engine>>>,
    /// Per direction, the lowest payload version the receiving side refused (0: none
    /// refused yet): learned when the table does not know a version.
    refused: [AtomicU16; 2],
    /// Per direction, whether DUMP or RESTORE itself was refused (no such command, or no
    /// permission for it: a renamed command, an ACL user without `@dangerous`): every copy
    /// that way then goes by type.
    restore_unusable: [AtomicBool; 2],
    /// Set once every server was asked (answered or not).
    detected: tokio::sync::watch::Sender<bool>,
    /// Per direction, the oldest Redis version among the receiving servers (encoded by
    /// [`encode`]; 0 while unknown), read on every request to spot commands it lacks.
    oldest_receiver: [AtomicU32; 2],
    /// Requests seen that will not work on the target, by form and reason: `/status` and
    /// `cutover_readiness_commands{command,reason}`.
    readiness: Mutex<BTreeMap<ReadinessKey, Seen>>,
    /// The pool label of the readiness gauges.
    pool: String,
}

/// A readiness entry: the command or form, and why it will not work on the target.
type ReadinessKey = (&'static str, &'static str);

/// Requests seen of one readiness entry, and its gauge.
#[derive(Debug)]
struct Seen {
    /// Requests seen.
    requests: u64,
    /// `cutover_readiness_commands{command,reason}`.
    gauge: Gauge,
}

/// Why a request is in the readiness report.
pub const READINESS_REASONS: [&str; 2] = ["target_lacks", "keys_on_different_target_servers"];

/// A version as one number, so it can live in an atomic.
fn encode(v: Version) -> u32 {
    (v.0.min(255) << 16) | (v.1.min(255) << 8) | v.2.min(255)
}

impl Engines {
    /// Nothing known yet, for pools of `sources` and `targets` servers.
    pub fn new(pool: &str, sources: usize, targets: usize) -> Engines {
        Engines {
            source: RwLock::new(vec![None; sources]),
            target: RwLock::new(vec![None; targets]),
            refused: [AtomicU16::new(0), AtomicU16::new(0)],
            restore_unusable: [AtomicBool::new(false), AtomicBool::new(false)],
            detected: tokio::sync::watch::channel(false).0,
            oldest_receiver: [AtomicU32::new(0), AtomicU32::new(0)],
            readiness: Mutex::new(BTreeMap::new()),
            pool: pool.to_string(),
        }
    }

    /// What `request` needs that the receiving servers going `direction` lack, if
    /// anything (nothing while their engines are unknown).
    pub fn receiver_lacks(
        &self,
        direction: Direction,
        spec: &CommandSpec,
        request: &Request,
    ) -> Option<Requirement> {
        let oldest = self.oldest_receiver[direction as usize].load(Relaxed);
        // Unknown, or new enough for every form in the table: nothing to look up.
        if oldest == 0 || oldest >= encode(crate::engine::NEWEST_REQUIREMENT) {
            return None;
        }
        crate::engine::requirement(spec, request).filter(|need| encode(need.since) > oldest)
    }

    /// The app sent `need`, which the target lacks: count it for the readiness report.
    pub fn note_unsupported(&self, need: Requirement) {
        self.note(need.form, READINESS_REASONS[0], &|| {
            format!(
                "the target servers lack it (it came in Redis {})",
                need.since
            )
        });
    }

    /// The app sent `command` with keys that land on different target servers: it would
    /// fail or see only part of its keys there after the cutover.
    pub fn note_spanning(&self, command: &'static str) {
        self.note(command, READINESS_REASONS[1], &|| {
            "its keys land on different target servers".to_string()
        });
    }

    /// Count one request of `form` that will not work on the target, for `reason`;
    /// the first of each is logged with `why`.
    fn note(&self, form: &'static str, reason: &'static str, why: &dyn Fn() -> String) {
        let Ok(mut seen) = self.readiness.lock() else {
            return;
        };
        let entry = seen.entry((form, reason)).or_insert_with(|| {
            tracing::warn!(
                pool = self.pool,
                command = form,
                reason,
                "the app sends a command that will not work after the cutover: {}",
                why()
            );
            let gauge = gauge!("cutover_readiness_commands", "pool" => self.pool.clone(), "command" => form, "reason" => reason);
            Seen { requests: 0, gauge }
        });
        entry.requests += 1;
        entry.gauge.set(entry.requests as f64);
    }

    /// The readiness report: each form the app sent that the target lacks, with counts.
    pub fn readiness_json(&self) -> serde_json::Value {
        let seen = self.readiness.lock().map_or(Vec::new(), |s| {
            s.iter()
                .map(|((form, reason), seen)| {
                    json!({ "command": form, "reason": reason, "requests": seen.requests })
                })
                .collect()
        });
        serde_json::Value::Array(seen)
    }

    /// Set the oldest receiver version of both directions from what is known.
    fn publish_oldest(&self) {
        for direction in [Direction::ToTarget, Direction::ToSource] {
            let (_, receivers) = self.sides(direction);
            let oldest = receivers
                .iter()
                .map(|e| e.map_or(0, |e| encode(e.redis_compatible)))
                .min()
                .unwrap_or(0);
            self.oldest_receiver[direction as usize].store(oldest, Relaxed);
        }
    }

    /// `(sender, receiver)` engine lists for copies going `direction`.
    fn sides(&self, direction: Direction) -> (Vec<Option<Engine>>, Vec<Option<Engine>>) {
        let read =
            |side: &RwLock<Vec<Option<Engine>>>| side.read().map_or(Vec::new(), |v| v.clone());
        match direction {
            Direction::ToTarget => (read(&self.source), read(&self.target)),
            Direction::ToSource => (read(&self.target), read(&self.source)),
        }
    }

    /// The engine of receiving server `to` going `direction`, if known.
    pub fn receiver(&self, direction: Direction, to: usize) -> Option<Engine> {
        self.sides(direction).1.get(to).copied().flatten()
    }

    /// How to copy a key from server `from` to server `to` going `direction`.
    pub fn method(&self, direction: Direction, from: usize, to: usize) -> CopyMethod {
        let (senders, receivers) = self.sides(direction);
        let written = senders
            .get(from)
            .copied()
            .flatten()
            .and_then(|e| e.rdb_version());
        if self.restore_unusable[direction as usize].load(Relaxed) {
            return CopyMethod::ByType;
        }
        let refused = self.refused[direction as usize].load(Relaxed);
        if let Some(version) = written
            && refused != 0
            && version >= refused
        {
            return CopyMethod::ByType;
        }
        let receiver = receivers.get(to).copied().flatten();
        match (written, receiver) {
            (Some(version), Some(engine)) => match engine.accepts(version) {
                Some(true) => CopyMethod::Restore,
                Some(false) => CopyMethod::ByType,
                None => CopyMethod::TryRestore,
            },
            _ => CopyMethod::TryRestore,
        }
    }

    /// The method most copies going `direction` use (the first pair of servers'), for
    /// `/status` and the log.
    pub fn summary(&self, direction: Direction) -> CopyMethod {
        let (senders, receivers) = self.sides(direction);
        let mut methods = (0..senders.len())
            .flat_map(|f| (0..receivers.len()).map(move |t| (f, t)))
            .map(|(f, t)| self.method(direction, f, t));
        let first = methods.next().unwrap_or(CopyMethod::TryRestore);
        if methods.all(|m| m == first) {
            first
        } else {
            CopyMethod::TryRestore
        }
    }

    /// The receiving side refused `payload` going `direction`: copies of that payload
    /// version or later go by type from now on.
    pub fn learn_refusal(&self, direction: Direction, payload: &[u8]) {
        let Some(version) = payload_rdb_version(payload) else {
            return;
        };
        let slot = &self.refused[direction as usize];
        let before = slot.load(Relaxed);
        if before == 0 || version < before {
            slot.store(version, Relaxed);
            tracing::info!(
                payload_version = version,
                direction = ?direction,
                "the receiving servers refused a DUMP payload of this version: copies of it go by type from now on"
            );
        }
    }

    /// DUMP or RESTORE was refused going `direction` (`what` says which, and why): copies
    /// that way go by type from now on.
    pub fn learn_restore_unusable(&self, direction: Direction, what: &str) {
        if !self.restore_unusable[direction as usize].swap(true, Relaxed) {
            tracing::warn!(direction = ?direction, refusal = what, "DUMP/RESTORE cannot be used this way (a renamed command, or an ACL user without the permission): copies go by type from now on");
        }
    }

    /// Wait until every server was asked (at most `limit`).
    pub async fn wait_detected(&self, limit: Duration) {
        let mut rx = self.detected.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|done| *done)).await;
    }

    /// Both sides for `/status`: each server's engine (`null` while unknown) and the copy
    /// method each way.
    pub fn status_json(&self) -> serde_json::Value {
        let names = |side: &RwLock<Vec<Option<Engine>>>| -> Vec<Option<String>> {
            side.read().map_or(Vec::new(), |v| {
                v.iter().map(|e| e.map(|e| e.to_string())).collect()
            })
        };
        json!({
            "source": names(&self.source),
            "target": names(&self.target),
            "copy_method": {
                "to_target": self.summary(Direction::ToTarget).name(),
                "to_source": self.summary(Direction::ToSource).name(),
            },
        })
    }
}

/// Ask every server of both sides for its engine (retrying servers that do not answer,
/// at most `ATTEMPTS` times), then log what copies will do each way.
pub async fn detect(migration: Arc<Migration>) {
    let engines = &migration.engines;
    for attempt in 1..=ATTEMPTS {
        let mut missing = 0;
        for (pool, side) in [
            (&migration.copy_source, &engines.source),
            (&migration.copy_target, &engines.target),
        ] {
            for server in 0..pool.servers.len() {
                if side.read().is_ok_and(|v| v[server].is_some()) {
                    continue;
                }
                match read_engine(pool, server).await {
                    Some(engine) => {
                        if let Ok(mut v) = side.write() {
                            v[server] = Some(engine);
                        }
                    }
                    None => missing += 1,
                }
            }
        }
        engines.publish_oldest();
        if attempt == 1 || missing == 0 {
            let _ = engines.detected.send(true);
        }
        if missing == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let describe = |pool: &Pool, side: &RwLock<Vec<Option<Engine>>>| -> String {
        let list = side.read().map_or(Vec::new(), |v| v.clone());
        pool.servers
            .iter()
            .zip(list)
            .map(|(s, e)| {
                let engine = e.map_or("unknown engine".to_string(), |e| {
                    let rdb = e.rdb_version().map_or("?".into(), |v| v.to_string());
                    format!("{e}, RDB {rdb}")
                });
                format!("{} ({engine})", s.name)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let to_target = engines.summary(Direction::ToTarget);
    let to_source = engines.summary(Direction::ToSource);
    tracing::info!(
        pool = migration.source.name(),
        source = %describe(&migration.copy_source, &engines.source),
        target = %describe(&migration.copy_target, &engines.target),
        copies_to_target = to_target.name(),
        copies_back_after_cutover = to_source.name(),
        "engines"
    );
    if to_target == CopyMethod::ByType {
        tracing::info!(
            pool = migration.source.name(),
            "the target servers cannot read the source's DUMP payloads (an older version): every key is copied by type, in chunks, from the first key"
        );
    }
}

/// One server's engine from `INFO server`, or `None` when it does not answer.
async fn read_engine(pool: &Pool, server: usize) -> Option<Engine> {
    let reply = pool
        .call(server, 0, &[b"INFO".as_slice(), b"server"])
        .await
        .ok()?;
    match redis_protocol::resp2::decode::decode(&reply) {
        Ok(Some((OwnedFrame::BulkString(text), _))) => {
            Engine::from_info(&String::from_utf8_lossy(&text))
        }
        _ => None,
    }
}
