//! Streams, whole: what a copy by type must carry besides the entries, and how verify
//! compares two streams by meaning.
//!
//! A stream is its entries plus state that XRANGE does not show: the last generated ID
//! (an empty stream keeps it), entries-added and max-deleted-entry-id (Redis 7.0 on), and
//! its consumer groups with their last-delivered IDs, entries-read, consumers and pending
//! entries (owner, delivery count, idle time). This module reads that state
//! (`XINFO STREAM`, `XINFO GROUPS`, `XINFO CONSUMERS`, `XPENDING`), writes it onto a copy
//! (`XSETID`, `XGROUP CREATE`, `XGROUP CREATECONSUMER`, `XCLAIM ... FORCE JUSTID`) as far
//! as the receiving engine's commands allow, and names what could not be carried.

use redis_protocol::resp2::types::OwnedFrame;

use crate::engine::{Engine, Version};
use crate::upstream::Pool;

/// Pending entries read per XPENDING call.
const PENDING_CHUNK: usize = 500;

/// A stream's state beyond its entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamMeta {
    /// `last-generated-id`.
    pub last_id: Vec<u8>,
    /// `entries-added` (Redis 7.0 on).
    pub entries_added: Option<i64>,
    /// `max-deleted-entry-id` (Redis 7.0 on).
    pub max_deleted_id: Option<Vec<u8>>,
    /// Consumer groups, by name.
    pub groups: Vec<Group>,
}

/// One consumer group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    /// Its name.
    pub name: Vec<u8>,
    /// `last-delivered-id`.
    pub last_delivered: Vec<u8>,
    /// `entries-read` (Redis 7.0 on; `None` when unknown or nil).
    pub entries_read: Option<i64>,
    /// Its consumers' names, sorted.
    pub consumers: Vec<Vec<u8>>,
    /// Its pending entries, by ID.
    pub pending: Vec<Pending>,
}

/// One pending entry of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// The entry's ID.
    pub id: Vec<u8>,
    /// The consumer it was delivered to.
    pub consumer: Vec<u8>,
    /// Milliseconds since it was last delivered (not compared: it moves).
    pub idle_ms: i64,
    /// Times it was delivered.
    pub deliveries: i64,
}

/// One request to the server of `pool` that owns `key`, decoded.
async fn call(pool: &Pool, key: &[u8], args: &[&[u8]]) -> Result<OwnedFrame, String> {
    let route = pool.route(key).ok_or("no live server")?;
    let reply = pool
        .call(route.server, route.connection, args)
        .await
        .map_err(|e| e.to_string())?;
    match redis_protocol::resp2::decode::decode(&reply) {
        Ok(Some((OwnedFrame::Error(e), _))) => Err(e),
        Ok(Some((frame, _))) => Ok(frame),
        _ => Err("undecodable reply".into()),
    }
}

/// A field of a flat `name, value, name, value` reply.
fn field<'a>(items: &'a [OwnedFrame], name: &str) -> Option<&'a OwnedFrame> {
    items.chunks(2).find_map(|pair| match pair {
        [OwnedFrame::BulkString(k) | OwnedFrame::SimpleString(k), v] if k == name.as_bytes() => {
            Some(v)
        }
        _ => None,
    })
}

/// The bytes of a string frame (an integer as its digits; empty otherwise).
fn text(frame: Option<&OwnedFrame>) -> Vec<u8> {
    match frame {
        Some(OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b)) => b.clone(),
        Some(OwnedFrame::Integer(n)) => n.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

/// An integer frame (or digits), if any.
fn number(frame: Option<&OwnedFrame>) -> Option<i64> {
    match frame {
        Some(OwnedFrame::Integer(n)) => Some(*n),
        Some(OwnedFrame::BulkString(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// The items of an array frame.
fn items(frame: OwnedFrame) -> Vec<OwnedFrame> {
    match frame {
        OwnedFrame::Array(items) => items,
        _ => Vec::new(),
    }
}

/// Read `key`'s stream state on `pool` (`None` when it is not a stream any more).
pub async fn read_meta(pool: &Pool, key: &[u8]) -> Result<Option<StreamMeta>, String> {
    let info = match call(pool, key, &[b"XINFO", b"STREAM", key]).await {
        Ok(frame) => items(frame),
        Err(e) if e.starts_with("ERR no such key") || e.starts_with("WRONGTYPE") => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut meta = StreamMeta {
        last_id: text(field(&info, "last-generated-id")),
        entries_added: number(field(&info, "entries-added")),
        max_deleted_id: field(&info, "max-deleted-entry-id").map(|f| text(Some(f))),
        groups: Vec::new(),
    };
    for group in items(call(pool, key, &[b"XINFO", b"GROUPS", key]).await?) {
        let group = items(group);
        let name = text(field(&group, "name"));
        let mut consumers: Vec<Vec<u8>> =
            items(call(pool, key, &[b"XINFO", b"CONSUMERS", key, &name]).await?)
                .into_iter()
                .map(|c| text(field(&items(c), "name")))
                .collect();
        consumers.sort();
        meta.groups.push(Group {
            last_delivered: text(field(&group, "last-delivered-id")),
            entries_read: number(field(&group, "entries-read")),
            consumers,
            pending: read_pending(pool, key, &name).await?,
            name,
        });
    }
    meta.groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(meta))
}

/// Every pending entry of `group`, in chunks (inclusive ranges, so a Redis 6.0 server
/// answers too; the entry a chunk starts from is the last of the one before).
async fn read_pending(pool: &Pool, key: &[u8], group: &[u8]) -> Result<Vec<Pending>, String> {
    let mut out: Vec<Pending> = Vec::new();
    let mut from = b"-".to_vec();
    let count = PENDING_CHUNK.to_string();
    loop {
        let page = items(
            call(
                pool,
                key,
                &[b"XPENDING", key, group, &from, b"+", count.as_bytes()],
            )
            .await?,
        );
        let n = page.len();
        for entry in page {
            let entry = items(entry);
            let pending = Pending {
                id: text(entry.first()),
                consumer: text(entry.get(1)),
                idle_ms: number(entry.get(2)).unwrap_or(0),
                deliveries: number(entry.get(3)).unwrap_or(0),
            };
            if out.last().is_none_or(|last| last.id != pending.id) {
                out.push(pending);
            }
        }
        match out.last() {
            Some(last) if n >= PENDING_CHUNK => from = last.id.clone(),
            _ => return Ok(out),
        }
    }
}

/// A part of a stream's state the receiving engine cannot hold.
pub fn not_carried(meta: &StreamMeta, receiver: Option<Engine>) -> Vec<String> {
    let version = receiver.map_or(Version(99, 0, 0), |e| e.redis_compatible);
    let mut parts = Vec::new();
    if version < Version(7, 0, 0) {
        if meta.entries_added.is_some() {
            parts.push("entries-added and max-deleted-entry-id (need Redis 7.0)".to_string());
        }
        if meta.groups.iter().any(|g| g.entries_read.is_some()) {
            parts.push("groups' entries-read (needs Redis 7.0)".to_string());
        }
    }
    if version < Version(6, 2, 0) {
        for group in &meta.groups {
            let idle: Vec<&[u8]> = group
                .consumers
                .iter()
                .filter(|c| !group.pending.iter().any(|p| &p.consumer == *c))
                .map(Vec::as_slice)
                .collect();
            if !idle.is_empty() {
                parts.push(format!(
                    "{} consumers without pending entries of group {} (XGROUP CREATECONSUMER needs Redis 6.2)",
                    idle.len(),
                    String::from_utf8_lossy(&group.name)
                ));
            }
        }
    }
    parts
}

/// The commands that give `temp` (holding the entries already) `meta`'s state on a
/// `receiver`: empty-stream creation, `XSETID`, groups, consumers, pending entries.
pub fn restore_commands(
    meta: &StreamMeta,
    temp: &[u8],
    receiver: Option<Engine>,
    empty: bool,
) -> Vec<Vec<Vec<u8>>> {
    let version = receiver.map_or(Version(99, 0, 0), |e| e.redis_compatible);
    let modern = version >= Version(7, 0, 0);
    let w = |parts: &[&[u8]]| parts.iter().map(|p| p.to_vec()).collect::<Vec<Vec<u8>>>();
    let mut out = Vec::new();
    if empty {
        // An empty stream exists: make one through a throwaway group.
        out.push(w(&[
            b"XGROUP",
            b"CREATE",
            temp,
            b"__cutover_mkstream",
            b"0",
            b"MKSTREAM",
        ]));
        out.push(w(&[b"XGROUP", b"DESTROY", temp, b"__cutover_mkstream"]));
    }
    if !meta.last_id.is_empty() {
        let mut setid = w(&[b"XSETID", temp, &meta.last_id]);
        if modern && let (Some(added), Some(deleted)) = (meta.entries_added, &meta.max_deleted_id) {
            setid.extend(w(&[
                b"ENTRIESADDED",
                added.to_string().as_bytes(),
                b"MAXDELETEDID",
                deleted,
            ]));
        }
        out.push(setid);
    }
    for group in &meta.groups {
        let mut create = w(&[
            b"XGROUP",
            b"CREATE",
            temp,
            &group.name,
            &group.last_delivered,
        ]);
        if modern && let Some(read) = group.entries_read {
            create.extend(w(&[b"ENTRIESREAD", read.to_string().as_bytes()]));
        }
        out.push(create);
        if version >= Version(6, 2, 0) {
            for consumer in &group.consumers {
                out.push(w(&[
                    b"XGROUP",
                    b"CREATECONSUMER",
                    temp,
                    &group.name,
                    consumer,
                ]));
            }
        }
        for p in &group.pending {
            out.push(w(&[
                b"XCLAIM",
                temp,
                &group.name,
                &p.consumer,
                b"0",
                &p.id,
                b"IDLE",
                p.idle_ms.max(0).to_string().as_bytes(),
                b"RETRYCOUNT",
                p.deliveries.max(0).to_string().as_bytes(),
                b"FORCE",
                b"JUSTID",
            ]));
        }
    }
    out
}

/// Whether two streams' states agree, as far as `receiver` (the mirror's engine) can
/// hold them: IDs, counters both report, groups, consumers, pending entries' owners and
/// delivery counts (idle times move, and are not compared). Also returns what differs
/// only because the receiver cannot hold it (listed, not counted).
pub fn compare(a: &StreamMeta, b: &StreamMeta, receiver: Option<Engine>) -> (bool, Vec<String>) {
    let version = receiver.map_or(Version(99, 0, 0), |e| e.redis_compatible);
    let both = |x: Option<i64>, y: Option<i64>| x.is_none() || y.is_none() || x == y;
    let mut same = a.last_id == b.last_id && a.groups.len() == b.groups.len();
    if version >= Version(7, 0, 0) {
        same &= both(a.entries_added, b.entries_added);
        same &= a.max_deleted_id.is_none()
            || b.max_deleted_id.is_none()
            || a.max_deleted_id == b.max_deleted_id;
    }
    let mut notes = Vec::new();
    for (ga, gb) in a.groups.iter().zip(&b.groups) {
        same &= ga.name == gb.name && ga.last_delivered == gb.last_delivered;
        if version >= Version(7, 0, 0) {
            same &= both(ga.entries_read, gb.entries_read);
        }
        let owners = |g: &Group| -> Vec<(Vec<u8>, Vec<u8>, i64)> {
            g.pending
                .iter()
                .map(|p| (p.id.clone(), p.consumer.clone(), p.deliveries))
                .collect()
        };
        same &= owners(ga) == owners(gb);
        if ga.consumers != gb.consumers {
            if version >= Version(6, 2, 0) {
                same = false;
            } else {
                notes.push(format!(
                    "group {}: consumers without pending entries not carried",
                    String::from_utf8_lossy(&ga.name)
                ));
            }
        }
    }
    (same, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> StreamMeta {
        StreamMeta {
            last_id: b"5-0".to_vec(),
            entries_added: Some(5),
            max_deleted_id: Some(b"2-0".to_vec()),
            groups: vec![Group {
                name: b"g".to_vec(),
                last_delivered: b"4-0".to_vec(),
                entries_read: Some(4),
                consumers: vec![b"alice".to_vec(), b"idle".to_vec()],
                pending: vec![Pending {
                    id: b"3-0".to_vec(),
                    consumer: b"alice".to_vec(),
                    idle_ms: 10,
                    deliveries: 2,
                }],
            }],
        }
    }

    fn engine(version: &str) -> Option<Engine> {
        Engine::from_info(&format!("redis_version:{version}\r\n"))
    }

    #[test]
    fn restores_everything_a_modern_engine_holds() {
        let commands = restore_commands(&meta(), b"t", engine("7.0.15"), false);
        let words: Vec<String> = commands
            .iter()
            .map(|c| String::from_utf8_lossy(&c.join(&b' ')).into_owned())
            .collect();
        assert_eq!(
            words,
            [
                "XSETID t 5-0 ENTRIESADDED 5 MAXDELETEDID 2-0",
                "XGROUP CREATE t g 4-0 ENTRIESREAD 4",
                "XGROUP CREATECONSUMER t g alice",
                "XGROUP CREATECONSUMER t g idle",
                "XCLAIM t g alice 0 3-0 IDLE 10 RETRYCOUNT 2 FORCE JUSTID",
            ]
        );
        assert!(not_carried(&meta(), engine("7.0.15")).is_empty());
    }

    #[test]
    fn an_old_engine_gets_what_it_can_and_the_rest_is_named() {
        let commands = restore_commands(&meta(), b"t", engine("6.0.9"), true);
        assert_eq!(commands[0][..2], [b"XGROUP".to_vec(), b"CREATE".to_vec()]);
        assert!(commands.iter().all(|c| c[1] != b"CREATECONSUMER".to_vec()));
        assert_eq!(
            commands[2],
            [b"XSETID".to_vec(), b"t".to_vec(), b"5-0".to_vec()]
        );
        let missing = not_carried(&meta(), engine("6.0.9"));
        assert_eq!(missing.len(), 3, "{missing:?}");
    }

    #[test]
    fn comparison_by_meaning() {
        let a = meta();
        let mut b = meta();
        b.groups[0].pending[0].idle_ms = 99_999;
        assert!(compare(&a, &b, engine("7.0.15")).0, "idle times move");
        b.groups[0].pending[0].deliveries = 3;
        assert!(!compare(&a, &b, engine("7.0.15")).0);
        let mut c = meta();
        c.groups[0].consumers.pop();
        assert!(!compare(&a, &c, engine("7.0.15")).0);
        let (same, notes) = compare(&a, &c, engine("6.0.9"));
        assert!(same && notes.len() == 1, "{notes:?}");
        let mut d = meta();
        d.last_id = b"6-0".to_vec();
        assert!(!compare(&a, &d, engine("6.0.9")).0);
    }
}
