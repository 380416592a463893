//! Verify: a full comparison of the authoritative pool and its mirror, key by key.
//!
//! Every server of the authoritative side is scanned and each key compared with the
//! mirror's copy (type, value, TTL); every mirror server is scanned too, for keys that
//! should not be there (or that sit on a server that does not own them). What differs is checked again in later rounds, so a key that was
//! merely changing during the pass is not reported. With repair, what still differs is
//! copied again through its lane (rule 5).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::OwnedFrame;

use super::Migration;
use super::counters::DIFFERENCE_KINDS;
use super::key_type::KeyType;
use super::scan::KeyScan;
use super::shadow::{self, Compare};
use super::stream;
use crate::engine::Engine;
use crate::resp::encode;
use crate::upstream::{BackendError, Pool};

/// Keys compared at once.
const CONCURRENCY: usize = 64;
/// Keys of each kind kept as examples in a report.
const EXAMPLES: usize = 5;
/// Most not-carried notes a report keeps.
const NOTES: usize = 100;
/// Pause before each re-check round, so mirror events in flight land.
const ROUND_PAUSE: Duration = Duration::from_millis(300);

/// How a verify pass runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Copy differing keys again.
    pub repair: bool,
    /// Rounds in all: the full pass, then re-checks of what differed.
    pub rounds: u32,
    /// SCAN COUNT.
    pub scan_count: u32,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            repair: false,
            rounds: 3,
            scan_count: 1000,
        }
    }
}

/// How one key differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    /// On the authoritative side, not on the mirror.
    Missing,
    /// On the mirror, not on the authoritative side.
    Extra,
    /// Of another type.
    Type,
    /// Another value.
    Value,
    /// A TTL beyond the tolerance (or one side without TTL).
    Ttl,
}

impl Difference {
    /// Its index in [`DIFFERENCE_KINDS`].
    fn index(self) -> usize {
        self as usize
    }
}

/// A key found different in a round.
#[derive(Debug, Clone, Copy)]
struct Found {
    /// How it differs.
    kind: Difference,
    /// A digest of the authoritative side's type and value when it was read.
    source: u64,
    /// Whether the authoritative side was the same in the round before: the difference
    /// is not a write in flight.
    stable: bool,
}

/// What a verify pass found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Keys compared in the full pass.
    pub checked: u64,
    /// Differences still there after the last round, by kind (see `DIFFERENCE_KINDS`).
    pub found: [u64; 5],
    /// The first keys of each kind.
    pub examples: [Vec<String>; 5],
    /// Keys that differed in the first round but not later (they were changing).
    pub settled: u64,
    /// Keys that still differed in the last round but were written between every two
    /// rounds (a write in flight each time): not counted as differences; the mirror and
    /// shadow reads cover them, and a later pass settles them.
    pub changing: u64,
    /// Keys copied again (with repair).
    pub repaired: u64,
    /// Rounds run.
    pub rounds: u32,
    /// Seconds the pass took.
    pub seconds: f64,
    /// Unix time it finished.
    pub finished_at: u64,
    /// Whether differences were repaired.
    pub repair: bool,
    /// What differs only because the mirror's engine cannot hold it (parts of streams on
    /// an older target), per key: listed, not counted as differences.
    pub not_carried: Vec<String>,
}

impl VerifyReport {
    /// Every difference found.
    pub fn differences(&self) -> u64 {
        self.found.iter().sum()
    }

    /// As a JSON object.
    pub fn json(&self) -> serde_json::Value {
        let by_kind: serde_json::Map<String, serde_json::Value> = DIFFERENCE_KINDS
            .iter()
            .zip(self.found)
            .map(|(kind, n)| (kind.to_string(), n.into()))
            .collect();
        let examples: serde_json::Map<String, serde_json::Value> = DIFFERENCE_KINDS
            .iter()
            .zip(&self.examples)
            .map(|(kind, keys)| (kind.to_string(), keys.clone().into()))
            .collect();
        serde_json::json!({
            "checked": self.checked,
            "differences": self.differences(),
            "by_kind": by_kind,
            "examples": examples,
            "settled": self.settled,
            "changing": self.changing,
            "repaired": self.repaired,
            "repair": self.repair,
            "rounds": self.rounds,
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
            "finished_at": self.finished_at,
            "not_carried": self.not_carried,
        })
    }

    /// A readable report: counts by kind and the first keys of each.
    pub fn text(&self) -> String {
        let mut out = format!(
            "verify: {} keys checked in {:.1}s, {} rounds: {} differences",
            self.checked,
            self.seconds,
            self.rounds,
            self.differences()
        );
        if self.changing > 0 {
            out.push_str(&format!(
                " ({} keys were being written in every round and are not counted)",
                self.changing
            ));
        }
        if self.settled > 0 {
            out.push_str(&format!(
                " ({} keys differed only while changing)",
                self.settled
            ));
        }
        if self.repair {
            out.push_str(&format!(", {} repaired", self.repaired));
        }
        out.push('\n');
        for note in &self.not_carried {
            out.push_str(&format!(
                "  not carried (the target cannot hold it): {note}\n"
            ));
        }
        for (i, kind) in DIFFERENCE_KINDS.iter().enumerate() {
            if self.found[i] > 0 {
                out.push_str(&format!(
                    "  {kind:<8} {:>8}  e.g. {}\n",
                    self.found[i],
                    self.examples[i].join(", ")
                ));
            }
        }
        out
    }
}

/// The verify state of a migration: the last result and whether a pass is running.
#[derive(Debug, Default)]
pub struct VerifyState {
    /// The last finished pass.
    last: Mutex<Option<VerifyReport>>,
    /// Set while a pass runs.
    running: AtomicBool,
    /// Keys compared so far by the running pass.
    pub checked: AtomicU64,
    /// What the running pass found not carried (see [`VerifyReport::not_carried`]).
    notes: Mutex<Vec<String>>,
}

impl VerifyState {
    /// The last finished pass's report.
    pub fn last(&self) -> Option<VerifyReport> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Whether a pass is running.
    pub fn running(&self) -> bool {
        self.running.load(Relaxed)
    }

    /// Claim the right to run a pass (false: one is running).
    pub fn begin(&self) -> bool {
        self.checked.store(0, Relaxed);
        if let Ok(mut notes) = self.notes.lock() {
            notes.clear();
        }
        !self.running.swap(true, Relaxed)
    }

    /// Record a finished pass.
    fn finish(&self, report: VerifyReport) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(report);
        }
        self.running.store(false, Relaxed);
    }
}

/// A server that does not answer now, found by [`silent_server`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilentServer {
    /// Its pool (the migration's source or target).
    pub pool: String,
    /// The server.
    pub server: String,
    /// What happened: the error, the reply, or no answer in time.
    pub reason: String,
}

impl std::fmt::Display for SilentServer {
    /// The one wording of it, for the admin API's refusal and the offline job's error.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server {} of pool '{}' does not answer ({})",
            self.server, self.pool, self.reason
        )
    }
}

/// How long a server has to answer [`silent_server`]'s PING.
const PING_LIMIT: Duration = Duration::from_secs(5);

/// The first server of either side that does not answer a PING now: a verify pass would
/// count each of its keys as a difference, and a copy job would only mark them dirty.
pub async fn silent_server(migration: &Migration) -> Option<SilentServer> {
    let sides = [
        (&migration.copy_source, migration.source.name()),
        (&migration.copy_target, migration.target.name()),
    ];
    for (pool, name) in sides {
        for (index, server) in pool.servers.iter().enumerate() {
            let reason = match pool.call_within(index, 0, &[b"PING"], PING_LIMIT).await {
                Ok(reply) if reply.starts_with(b"+") => continue,
                Ok(reply) => String::from_utf8_lossy(&reply).trim_end().to_string(),
                Err(BackendError::TimedOut) => {
                    format!("no answer within {} s", PING_LIMIT.as_secs())
                }
                Err(error) => error.to_string(),
            };
            return Some(SilentServer {
                pool: name.to_string(),
                server: server.name.clone(),
                reason,
            });
        }
    }
    None
}

/// Start a pass in the background (`POST /verify`); false if one is already running.
pub fn start(migration: &Arc<Migration>, options: VerifyOptions) -> bool {
    if !migration.verify.begin() {
        return false;
    }
    let migration = migration.clone();
    tokio::spawn(async move {
        let report = run_claimed(&migration, &options).await;
        tracing::info!(pool = migration.source.name(), report = %report.text().trim_end(), "verify finished");
    });
    true
}

/// Run a pass to the end and return its report (`cutover verify`); `None` if one is
/// already running.
pub async fn run(migration: &Arc<Migration>, options: &VerifyOptions) -> Option<VerifyReport> {
    if !migration.verify.begin() {
        return None;
    }
    Some(run_claimed(migration, options).await)
}

/// Run a pass whose right to run was claimed.
async fn run_claimed(migration: &Arc<Migration>, options: &VerifyOptions) -> VerifyReport {
    let started = Instant::now();
    // Evictions before now are covered by this pass (rule 19): on the mirrored side, and
    // under capture: proxy on the side clients use (its repair deletes on the other side
    // what they dropped). Count those no look has seen yet, so that they are owed before
    // its mark, not after.
    migration.watch_evictions(super::restarts::Look::Now).await;
    // Dirty keys the dirty-key file failed to take before now are covered by this pass.
    let dirty_mark = migration.dirty.verify_mark();
    migration.counters.verify_runs.increment(1);
    let from = migration.copy_from().clone();
    let to = migration.mirror_to().clone();
    let mut differing: HashMap<Bytes, Found> = HashMap::new();
    // Keys on a mirror server that does not own them (nothing reads them there).
    let mut misplaced: Vec<(Bytes, usize)> = Vec::new();
    // Round 1: every key of the authoritative side, then every key of the mirror that the
    // authoritative side does not have.
    for server in 0..from.servers.len() {
        let mut scan = KeyScan::new(&from, server, options.scan_count, "verify");
        while let Some(keys) = scan.next_page().await {
            compare_batch(migration, &from, &to, keys, &mut differing, true).await;
        }
    }
    let checked = migration.verify.checked.load(Relaxed);
    for server in 0..to.servers.len() {
        let mut scan = KeyScan::new(&to, server, options.scan_count, "verify");
        while let Some(keys) = scan.next_page().await {
            let (placed, wrong): (Vec<Bytes>, Vec<Bytes>) = keys
                .into_iter()
                .partition(|key| to.route(key).is_none_or(|r| r.server == server));
            misplaced.extend(wrong.into_iter().map(|key| (key, server)));
            extra_batch(migration, &from, &to, placed, &mut differing).await;
        }
    }
    let first_round = differing.len() as u64;
    let mut rounds = 1;
    while rounds < options.rounds.max(1) && !differing.is_empty() {
        tokio::time::sleep(ROUND_PAUSE).await;
        let keys: Vec<Bytes> = differing.keys().cloned().collect();
        let mut still: HashMap<Bytes, Found> = HashMap::new();
        compare_batch(migration, &from, &to, keys, &mut still, false).await;
        for (key, found) in still.iter_mut() {
            found.stable = differing.get(key).is_some_and(|p| p.source == found.source);
        }
        differing = still;
        rounds += 1;
    }
    // With a single round nothing can be told apart from a write in flight: count all.
    let changing: Vec<Bytes> = differing
        .iter()
        .filter(|(_, f)| !f.stable && rounds > 1)
        .map(|(k, _)| k.clone())
        .collect();
    let mut not_carried = migration
        .verify
        .notes
        .lock()
        .map_or(Vec::new(), |n| n.clone());
    not_carried.sort();
    not_carried.dedup();
    let mut report = VerifyReport {
        not_carried,
        checked,
        settled: first_round - differing.len() as u64,
        changing: changing.len() as u64,
        rounds,
        repair: options.repair,
        ..VerifyReport::default()
    };
    let mut keys: Vec<(&Bytes, &Difference)> = differing
        .iter()
        .filter(|(_, f)| f.stable || rounds == 1)
        .map(|(k, f)| (k, &f.kind))
        .collect();
    keys.extend(misplaced.iter().map(|(key, _)| (key, &Difference::Extra)));
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (key, kind) in keys {
        report.found[kind.index()] += 1;
        if report.examples[kind.index()].len() < EXAMPLES {
            report.examples[kind.index()].push(String::from_utf8_lossy(key).into_owned());
        }
    }
    for (i, gauge) in migration.counters.verify_last.iter().enumerate() {
        gauge.set(report.found[i] as f64);
        migration.counters.verify_found[i].increment(report.found[i]);
    }
    if options.repair && !(differing.is_empty() && misplaced.is_empty()) {
        for key in differing.keys() {
            migration
                .queue_copy(key.clone(), super::CopyReason::Verify)
                .await;
        }
        for (key, server) in &misplaced {
            if to.call(*server, 0, &[b"DEL".as_slice(), key]).await.is_ok() {
                report.repaired += 1;
            }
        }
        report.repaired += differing.len() as u64;
        migration
            .counters
            .verify_repaired
            .increment(report.repaired);
        // Wait for the repairs to land before reporting.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !migration.lanes.all_idle() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.finished_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    migration.dirty.verified(dirty_mark);
    migration.verify.finish(report.clone());
    report
}

/// Compare `keys` (authoritative side first), recording what differs. Only the first
/// round's keys of the authoritative side count toward `checked` (`first`): progress
/// counts each key once, so it never runs past the keys there are.
async fn compare_batch(
    migration: &Migration,
    from: &Arc<Pool>,
    to: &Arc<Pool>,
    keys: Vec<Bytes>,
    differing: &mut HashMap<Bytes, Found>,
    first: bool,
) {
    let tolerance = migration.tunables.ttl_tolerance_ms();
    for chunk in keys.chunks(CONCURRENCY) {
        let mut tasks = tokio::task::JoinSet::new();
        for key in chunk {
            let (from, to, key) = (from.clone(), to.clone(), key.clone());
            let receiver = to
                .route(&key)
                .and_then(|r| migration.engines.receiver(migration.direction(), r.server));
            tasks.spawn(async move {
                let result = compare_key(&from, &to, &key, tolerance, receiver).await;
                (key, result)
            });
        }
        while let Some(Ok((key, result))) = tasks.join_next().await {
            migration.counters.verify_checked.increment(1);
            if first {
                migration.verify.checked.fetch_add(1, Relaxed);
            }
            let result = result.map(|(found, notes)| {
                if !notes.is_empty()
                    && let Ok(mut all) = migration.verify.notes.lock()
                    && all.len() < NOTES
                {
                    let name = String::from_utf8_lossy(&key);
                    all.extend(notes.iter().map(|n| format!("{name}: {n}")));
                }
                found
            });
            match result {
                Ok(None) => {
                    differing.remove(&key);
                }
                Ok(Some((kind, source))) => {
                    differing.insert(
                        key,
                        Found {
                            kind,
                            source,
                            stable: false,
                        },
                    );
                }
                Err(_) => {
                    // Unreachable right now: count it as a value difference to look at
                    // again in the next round.
                    differing.insert(
                        key,
                        Found {
                            kind: Difference::Value,
                            source: 0,
                            stable: false,
                        },
                    );
                }
            }
        }
    }
}

/// Keys found on the mirror: those the authoritative side lacks are compared (and found
/// extra unless they appeared meanwhile).
async fn extra_batch(
    migration: &Migration,
    from: &Arc<Pool>,
    to: &Arc<Pool>,
    keys: Vec<Bytes>,
    differing: &mut HashMap<Bytes, Found>,
) {
    let mut absent = Vec::new();
    for key in keys {
        if differing.contains_key(&key) {
            continue;
        }
        let Some(route) = from.route(&key) else {
            continue;
        };
        if let Ok(reply) = from
            .call(
                route.server,
                route.connection,
                &[b"EXISTS".as_slice(), &key],
            )
            .await
            && reply.as_ref() == b":0\r\n"
        {
            absent.push(key);
        }
    }
    if !absent.is_empty() {
        compare_batch(migration, from, to, absent, differing, false).await;
    }
}

/// A key's state on one side: type, PTTL and DUMP payload, read atomically.
#[derive(Debug, PartialEq)]
struct KeyState {
    /// `TYPE`'s answer (`None` when absent).
    kind: KeyType,
    /// `PTTL`'s answer.
    pttl: i64,
    /// The DUMP payload.
    payload: Option<Vec<u8>>,
    /// Whether DUMP answered: false when the server refuses it (renamed away, or not
    /// permitted), and the value is then compared by reading it.
    dumped: bool,
}

/// How `key` differs between `from` and `to`, if it does, with a digest of the
/// authoritative side's state (to tell a stable difference from a write in flight).
async fn compare_key(
    from: &Pool,
    to: &Pool,
    key: &Bytes,
    tolerance_ms: u64,
    receiver: Option<Engine>,
) -> Result<(Option<(Difference, u64)>, Vec<String>), String> {
    let (a, b) = tokio::join!(key_state(from, key), key_state(to, key));
    let (a, b) = (a?, b?);
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&a.kind, &a.payload).hash(&mut hasher);
        hasher.finish()
    };
    let mut notes = Vec::new();
    let rules = Rules {
        tolerance_ms,
        receiver,
    };
    let found = difference((from, to), key, (&a, &b), rules, &mut notes).await?;
    Ok((found.map(|kind| (kind, digest)), notes))
}

/// What two states of a key are compared under.
#[derive(Clone, Copy)]
struct Rules {
    /// TTL difference still counted as equal.
    tolerance_ms: u64,
    /// The mirror server's engine: what it cannot hold is noted, not counted.
    receiver: Option<Engine>,
}

/// How the two states of `key` differ, if they do; what differs only because the mirror's
/// engine cannot hold it goes into `notes`.
async fn difference(
    (from, to): (&Pool, &Pool),
    key: &Bytes,
    (a, b): (&KeyState, &KeyState),
    rules: Rules,
    notes: &mut Vec<String>,
) -> Result<Option<Difference>, String> {
    let Rules {
        tolerance_ms,
        receiver,
    } = rules;
    if a.kind == KeyType::None && b.kind == KeyType::None {
        return Ok(None);
    }
    if b.kind == KeyType::None {
        return Ok(Some(Difference::Missing));
    }
    if a.kind == KeyType::None {
        return Ok(Some(Difference::Extra));
    }
    if a.kind != b.kind {
        return Ok(Some(Difference::Type));
    }
    let payloads_differ = !a.dumped || !b.dumped || a.payload != b.payload;
    if payloads_differ && !same_value(from, to, key, &a.kind).await? {
        return Ok(Some(Difference::Value));
    }
    if payloads_differ && a.kind == KeyType::Stream {
        let (x, y) = tokio::join!(stream::read_meta(from, key), stream::read_meta(to, key));
        if let (Some(x), Some(y)) = (x?, y?) {
            let (same, more) = stream::compare(&x, &y, receiver);
            notes.extend(more);
            if !same {
                return Ok(Some(Difference::Value));
            }
        }
    }
    let ttl_agrees = match (a.pttl, b.pttl) {
        (x, y) if x < 0 || y < 0 => x == y,
        (x, y) => x.abs_diff(y) <= tolerance_ms,
    };
    Ok((!ttl_agrees).then_some(Difference::Ttl))
}

/// Read `key`'s type, PTTL and DUMP on its server of `pool`, in one MULTI/EXEC; without
/// DUMP when the server refuses it.
async fn key_state(pool: &Pool, key: &[u8]) -> Result<KeyState, String> {
    let route = pool.route(key).ok_or("no live server")?;
    let read = |dump: bool| {
        let mut request = BytesMut::new();
        encode::command(&mut request, &[b"MULTI".as_slice()]);
        encode::command(&mut request, &[b"TYPE".as_slice(), key]);
        encode::command(&mut request, &[b"PTTL".as_slice(), key]);
        if dump {
            encode::command(&mut request, &[b"DUMP".as_slice(), key]);
        }
        encode::command(&mut request, &[b"EXEC".as_slice()]);
        let replies = if dump { 5 } else { 4 };
        pool.request(route.server, route.connection, request.freeze(), replies)
    };
    let mut exec = read(true).await.map_err(|e| e.to_string())?;
    let dumped = !super::copy::refuses_command(&exec);
    if !dumped {
        exec = read(false).await.map_err(|e| e.to_string())?;
    }
    let Ok(Some((OwnedFrame::Array(items), _))) = redis_protocol::resp2::decode::decode(&exec)
    else {
        return Err(String::from_utf8_lossy(&exec).into_owned());
    };
    match items.as_slice() {
        [
            OwnedFrame::SimpleString(kind),
            OwnedFrame::Integer(pttl),
            rest @ ..,
        ] if rest.len() <= 1 => Ok(KeyState {
            kind: KeyType::from_reply(kind),
            pttl: *pttl,
            payload: match rest.first() {
                Some(OwnedFrame::BulkString(p)) => Some(p.clone()),
                _ => None,
            },
            dumped,
        }),
        _ => Err(String::from_utf8_lossy(&exec).into_owned()),
    }
}

/// Whether `key` (of type `kind`) holds the same value on both sides although the DUMP
/// payloads differ (another encoding of the same elements): compared by reading it whole,
/// sets and hashes without order.
async fn same_value(from: &Pool, to: &Pool, key: &[u8], kind: &KeyType) -> Result<bool, String> {
    let (words, compare): (Vec<&[u8]>, Compare) = match kind {
        KeyType::String => (vec![b"GET", key], Compare::Exact),
        KeyType::List => (vec![b"LRANGE", key, b"0", b"-1"], Compare::Exact),
        KeyType::Set => (vec![b"SMEMBERS", key], Compare::Unordered),
        KeyType::Hash => (vec![b"HGETALL", key], Compare::Pairs),
        KeyType::Zset => (
            vec![b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"],
            Compare::Numbers,
        ),
        KeyType::Stream => (vec![b"XRANGE", key, b"-", b"+"], Compare::Exact),
        KeyType::None | KeyType::Other(_) => return Ok(false),
    };
    let mut request = BytesMut::new();
    encode::command(&mut request, &words);
    let request = request.freeze();
    let (a, b) = tokio::join!(
        read_on(from, key, request.clone()),
        read_on(to, key, request)
    );
    Ok(shadow::agree(compare, &a?, &b?, 0))
}

/// Send `request` to the server of `pool` that owns `key`.
async fn read_on(pool: &Pool, key: &[u8], request: Bytes) -> Result<Bytes, String> {
    let route = pool.route(key).ok_or("no live server")?;
    pool.request(route.server, route.connection, request, 1)
        .await
        .map_err(|e| e.to_string())
}
