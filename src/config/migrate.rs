//! The migration extension: `migrate_to: POOL` and the optional `migrate:` mapping on the
//! pool clients use. nutcracker itself would reject both keys; cutover reads them.

use std::path::PathBuf;

use super::error::Problem;
use super::values;
use super::yaml::{Node, NodeKind};

/// How keys are copied to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StructuralCopy {
    /// DUMP/RESTORE, falling back to a structural copy when the target rejects the
    /// payload or the key is larger than `copy_limit_bytes`.
    Auto,
    /// Always copy by type (for a target that cannot RESTORE the source's payloads).
    Always,
}

/// Where the migration takes the writes it mirrors from (`capture:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// The proxy's own writes, mirrored from their replies (works anywhere, sees only
    /// what passes through this proxy).
    Proxy,
    /// The source servers' replication streams (every write, from any client; needs
    /// PSYNC). Start fails when a server refuses it.
    Replication,
    /// Replication when every source server accepts PSYNC, proxy mirroring otherwise
    /// (said in the log and in `/status`).
    Auto,
}

impl Capture {
    /// The name in the config and in `/status`.
    pub fn name(self) -> &'static str {
        match self {
            Capture::Proxy => "proxy",
            Capture::Replication => "replication",
            Capture::Auto => "auto",
        }
    }
}

/// Where the members of a fleet of cutover proxies meet (`coordination:`): an etcd cluster
/// and a key prefix, written `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordination {
    /// `http://HOST:PORT` of each etcd endpoint.
    pub endpoints: Vec<String>,
    /// The key prefix every member of this fleet uses (`/cutover/shop`).
    pub prefix: String,
}

impl Coordination {
    /// Read `etcd://h1:2379,h2:2379/prefix`.
    pub fn parse(text: &str) -> Result<Coordination, String> {
        let form = "must be etcd://HOST:PORT[,HOST:PORT...]/PREFIX";
        let rest = text
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("\"{text}\" {form}"))?;
        let (hosts, prefix) = rest
            .split_once('/')
            .ok_or_else(|| format!("\"{text}\" has no /PREFIX; {form}"))?;
        if prefix.is_empty() || prefix.ends_with('/') {
            return Err(format!(
                "\"{text}\": the prefix must be a name, such as /cutover/shop"
            ));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let port = host.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            match port {
                Some((h, Ok(p))) if !h.is_empty() && p > 0 => {
                    endpoints.push(format!("http://{host}"));
                }
                _ => return Err(format!("\"{host}\" is not HOST:PORT; {form}")),
            }
        }
        Ok(Coordination {
            endpoints,
            prefix: format!("/{prefix}"),
        })
    }
}

/// Settings of one migration (`migrate:`), with their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrateSettings {
    /// Number of lanes (ordered per-key queues); more lanes, more parallel mirroring.
    pub lanes: u32,
    /// `COUNT` given to each backfill SCAN.
    pub scan_count: u32,
    /// Backfill limit in keys per second; 0 means unlimited. Changeable at run time.
    pub backfill_keys_per_second: u64,
    /// Backfill limit in bytes per second; 0 means unlimited. Changeable at run time.
    pub backfill_bytes_per_second: u64,
    /// How many copies may be in flight at once.
    pub copies_in_flight: u32,
    /// Share of reads checked against the target (0 turns shadow reads off, 1 checks all).
    pub shadow_ratio: f64,
    /// Largest TTL difference, in milliseconds, that still counts as equal.
    pub ttl_tolerance_ms: u64,
    /// Keys whose DUMP payload is larger than this are copied structurally.
    pub copy_limit_bytes: u64,
    /// Whether to copy with RESTORE when possible, or always structurally.
    pub structural_copy: StructuralCopy,
    /// Mirror events that may wait for the target before keys are marked dirty instead.
    pub mirror_queue_limit: u64,
    /// Where the migration's progress and dirty keys are kept across restarts.
    pub state_file: Option<PathBuf>,
    /// Where the writes to mirror come from.
    pub capture: Capture,
    /// The fleet this proxy is a member of, if any.
    pub coordination: Option<Coordination>,
}

impl Default for MigrateSettings {
    fn default() -> Self {
        MigrateSettings {
            lanes: 256,
            scan_count: 1000,
            backfill_keys_per_second: 0,
            backfill_bytes_per_second: 0,
            copies_in_flight: 64,
            shadow_ratio: 0.01,
            ttl_tolerance_ms: 1000,
            copy_limit_bytes: 512 * 1024 * 1024,
            structural_copy: StructuralCopy::Auto,
            mirror_queue_limit: 100_000,
            state_file: None,
            capture: Capture::Proxy,
            coordination: None,
        }
    }
}

/// The keys `migrate:` accepts, for messages and suggestions.
pub const MIGRATE_KEYS: [&str; 13] = [
    "lanes",
    "scan_count",
    "backfill_keys_per_second",
    "backfill_bytes_per_second",
    "copies_in_flight",
    "shadow_ratio",
    "ttl_tolerance_ms",
    "copy_limit_bytes",
    "structural_copy",
    "mirror_queue_limit",
    "state_file",
    "capture",
    "coordination",
];

/// Read a `migrate:` mapping; problems are attributed to `migrate.<key>`.
pub fn parse(node: &Node, problems: &mut Vec<Problem>) -> MigrateSettings {
    let mut settings = MigrateSettings::default();
    let NodeKind::Map(entries) = &node.kind else {
        problems.push(
            Problem::at(
                node.line,
                format!(
                    "must be a mapping of migration settings, not {}",
                    node.shape()
                ),
            )
            .for_key("migrate"),
        );
        return settings;
    };
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for (key_node, value_node) in entries {
        let key = key_node.as_scalar().unwrap_or("");
        let line = key_node.line;
        let label = format!("migrate.{key}");
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            problems.push(
                Problem::at(line, format!("is a duplicate (first set on line {first})"))
                    .for_key(&label),
            );
            continue;
        }
        seen.push((key, line));
        let Some(text) = value_node.as_scalar() else {
            problems.push(
                Problem::at(
                    value_node.line,
                    format!("must be a value, not {}", value_node.shape()),
                )
                .for_key(&label),
            );
            continue;
        };
        if let Err(message) = apply(&mut settings, key, text) {
            problems.push(Problem::at(line, message).for_key(&label));
        }
    }
    if settings.coordination.is_some() && settings.capture == Capture::Proxy {
        let line = seen
            .iter()
            .find(|(k, _)| *k == "coordination")
            .map_or(node.line, |(_, l)| *l);
        problems.push(
            Problem::at(
                line,
                "needs capture: replication (or auto): a fleet takes every write from the source servers' replication streams, since no one proxy sees them all".to_string(),
            )
            .for_key("migrate.coordination"),
        );
    }
    settings
}

/// Set one migration key from its text.
fn apply(s: &mut MigrateSettings, key: &str, text: &str) -> Result<(), String> {
    let positive = |max: u64| -> Result<u64, String> {
        match values::number(text, max)? {
            0 => Err("must be at least 1".to_string()),
            n => Ok(n),
        }
    };
    match key {
        "lanes" => s.lanes = positive(65_536)? as u32,
        "scan_count" => s.scan_count = positive(1_000_000)? as u32,
        "backfill_keys_per_second" => s.backfill_keys_per_second = values::number(text, u64::MAX)?,
        "backfill_bytes_per_second" => {
            s.backfill_bytes_per_second = values::number(text, u64::MAX)?
        }
        "copies_in_flight" => s.copies_in_flight = positive(100_000)? as u32,
        "shadow_ratio" => {
            s.shadow_ratio = text
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("\"{text}\" is not a ratio from 0 to 1 (such as 0.01)"))?;
        }
        "ttl_tolerance_ms" => s.ttl_tolerance_ms = values::number(text, u64::MAX)?,
        "copy_limit_bytes" => s.copy_limit_bytes = positive(u64::MAX)?,
        "structural_copy" => {
            s.structural_copy = match text {
                "auto" => StructuralCopy::Auto,
                "always" => StructuralCopy::Always,
                _ => return Err(format!("\"{text}\" is not \"auto\" or \"always\"")),
            }
        }
        "mirror_queue_limit" => s.mirror_queue_limit = positive(u64::MAX)?,
        "capture" => {
            s.capture = match text {
                "proxy" => Capture::Proxy,
                "replication" => Capture::Replication,
                "auto" => Capture::Auto,
                _ => {
                    return Err(format!(
                        "\"{text}\" is not \"proxy\", \"replication\" or \"auto\""
                    ));
                }
            }
        }
        "coordination" => s.coordination = Some(Coordination::parse(text)?),
        "state_file" if text.is_empty() => return Err("must be a file path".to_string()),
        "state_file" => s.state_file = Some(PathBuf::from(text)),
        _ => {
            let hint = values::suggestion(key, MIGRATE_KEYS)
                .map(|k| format!("; did you mean \"{k}\"?"))
                .unwrap_or_else(|| format!("; known keys: {}", MIGRATE_KEYS.join(", ")));
            return Err(format!("unknown migration setting{hint}"));
        }
    }
    Ok(())
}
