//! Structural copies: for keys whose DUMP payload the target refuses (a source newer than
//! the target) or that are larger than `copy_limit_bytes`, or for every key with
//! `structural_copy: always`. The key is read by type in chunks (GETRANGE, LRANGE, HSCAN,
//! SSCAN, ZSCAN with scores, XRANGE), written into a temporary key on the target server
//! that owns it (with a guard TTL, so an aborted copy leaves nothing that lasts), then
//! RENAMEd over the real key and given its real TTL: no reader sees half a key.
//!
//! Streams are copied whole: entries, last generated ID, counters, consumer groups,
//! consumers and pending entries, as far as the target's commands allow (see `stream.rs`).
//!
//! The reads are not one snapshot, so `copied_at` is taken when they end: any write sent
//! while they ran is copied again afterwards, and the target converges.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::OwnedFrame;

use super::Migration;
use super::copy::{Copied, CopyError};
use super::engines::CopyMethod;
use super::key_type::KeyType;
use crate::resp::encode;

/// Elements (or bytes, for strings) read per chunk.
const CHUNK: usize = 512;
/// Bytes of a string read per GETRANGE.
const STRING_CHUNK: usize = 1024 * 1024;
/// Guard TTL of the temporary key, in milliseconds.
const GUARD_TTL_MS: &str = "600000";

/// Copy `key` structurally. The temporary key gets its guard TTL with its first element,
/// and is deleted when the copy fails, so no temporary key outlives its copy.
pub async fn copy_key(migration: &Migration, key: &Bytes) -> Result<Copied, CopyError> {
    let kind = source_value(migration, key, &[b"TYPE", key]).await?;
    let kind = match kind {
        OwnedFrame::SimpleString(s) => KeyType::from_reply(&s),
        other => return Err(CopyError::Unexpected(format!("TYPE: {other:?}"))),
    };
    let pool = migration.mirror_to();
    let route = pool
        .route(key)
        .ok_or_else(|| CopyError::Unavailable("no live target server".into()))?;
    let temp = temp_name(key);
    let target = Target {
        pool,
        server: route.server,
        connection: route.connection,
        temp: temp.clone(),
        guarded: false,
        bytes: 0,
    };
    let receiver = migration
        .engines
        .receiver(migration.direction(), route.server);
    let copied = copy_into(migration, key, &kind, target, receiver).await;
    if copied.is_err() {
        // Best effort: a temporary key left behind also expires by its guard TTL.
        let _ = pool
            .call(route.server, route.connection, &[b"DEL".as_slice(), &temp])
            .await;
    }
    copied
}

/// The temporary key on the target server that owns the key being copied.
struct Target<'a> {
    /// The mirrored pool.
    pool: &'a crate::upstream::Pool,
    /// The server that owns the key.
    server: usize,
    /// The key's connection to it.
    connection: usize,
    /// The temporary key's name.
    temp: Vec<u8>,
    /// Whether the temporary key has its guard TTL.
    guarded: bool,
    /// Bytes written.
    bytes: usize,
}

impl Target<'_> {
    /// Send one command; an error reply is an error.
    async fn send(&self, args: &[Vec<u8>]) -> Result<Bytes, CopyError> {
        let reply = self
            .pool
            .call(self.server, self.connection, args)
            .await
            .map_err(unavailable)?;
        if reply.first() == Some(&b'-') {
            return Err(CopyError::Unexpected(format!(
                "target: {}",
                String::from_utf8_lossy(&reply).trim_end()
            )));
        }
        Ok(reply)
    }

    /// Write elements into the temporary key; after the first, give it its guard TTL.
    async fn write(&mut self, args: Vec<Vec<u8>>) -> Result<Bytes, CopyError> {
        self.bytes += args.iter().map(Vec::len).sum::<usize>();
        let reply = self.send(&args).await?;
        if !self.guarded {
            self.guarded = true;
            let guard = [
                b"PEXPIRE".to_vec(),
                self.temp.clone(),
                GUARD_TTL_MS.as_bytes().to_vec(),
            ];
            self.send(&guard).await?;
        }
        Ok(reply)
    }
}

/// Read `key` (of type `kind`) from the authoritative side in chunks into `target`'s
/// temporary key, then rename it over the key and give it its TTL.
async fn copy_into(
    migration: &Migration,
    key: &Bytes,
    kind: &KeyType,
    mut target: Target<'_>,
    receiver: Option<crate::engine::Engine>,
) -> Result<Copied, CopyError> {
    let temp = target.temp.clone();
    target.send(&[b"DEL".to_vec(), temp.clone()]).await?;
    let mut exists = false;
    match kind {
        KeyType::None => {}
        KeyType::String => {
            let mut offset = 0usize;
            loop {
                let chunk = bulk(ranged(migration, key, b"GETRANGE", offset, STRING_CHUNK).await?);
                if chunk.is_empty() && offset > 0 {
                    break;
                }
                let len = chunk.len();
                target
                    .write(vec![b"APPEND".to_vec(), temp.clone(), chunk])
                    .await?;
                exists = true;
                if len < STRING_CHUNK {
                    break;
                }
                offset += len;
            }
        }
        KeyType::List => {
            let mut start = 0usize;
            loop {
                let items = array(ranged(migration, key, b"LRANGE", start, CHUNK).await?);
                if items.is_empty() {
                    break;
                }
                let n = items.len();
                let mut args = vec![b"RPUSH".to_vec(), temp.clone()];
                args.extend(items.into_iter().map(bulk));
                target.write(args).await?;
                exists = true;
                if n < CHUNK {
                    break;
                }
                start += n;
            }
        }
        KeyType::Hash | KeyType::Set | KeyType::Zset => {
            let (scan, add): (&[u8], &[u8]) = match kind {
                KeyType::Hash => (b"HSCAN", b"HSET"),
                KeyType::Set => (b"SSCAN", b"SADD"),
                _ => (b"ZSCAN", b"ZADD"),
            };
            let mut cursor = b"0".to_vec();
            loop {
                let reply = array(
                    source_value(
                        migration,
                        key,
                        &[scan, key, &cursor, b"COUNT", CHUNK.to_string().as_bytes()],
                    )
                    .await?,
                );
                let mut parts = reply.into_iter();
                let next = parts.next().map(bulk).unwrap_or_default();
                let items: Vec<Vec<u8>> = parts.next().map(bulks).unwrap_or_default();
                if !items.is_empty() {
                    let mut args = vec![add.to_vec(), temp.clone()];
                    if *kind == KeyType::Zset {
                        // ZSCAN gives member, score; ZADD takes score, member.
                        for pair in items.chunks(2) {
                            if let [member, score] = pair {
                                args.push(score.clone());
                                args.push(member.clone());
                            }
                        }
                    } else {
                        args.extend(items);
                    }
                    target.write(args).await?;
                    exists = true;
                }
                if next == b"0" {
                    break;
                }
                cursor = next;
            }
        }
        KeyType::Stream => {
            let meta = super::stream::read_meta(migration.copy_from(), key)
                .await
                .map_err(|e| CopyError::Unexpected(format!("source: {e}")))?;
            let mut from = b"-".to_vec();
            let mut entries = 0usize;
            loop {
                let page = array(
                    source_value(
                        migration,
                        key,
                        &[
                            b"XRANGE",
                            key,
                            &from,
                            b"+",
                            b"COUNT",
                            CHUNK.to_string().as_bytes(),
                        ],
                    )
                    .await?,
                );
                let n = page.len();
                let mut last = None;
                for entry in page {
                    let mut parts = array(entry).into_iter();
                    let id = parts.next().map(bulk).unwrap_or_default();
                    let fields: Vec<Vec<u8>> = parts.next().map(bulks).unwrap_or_default();
                    let mut args = vec![b"XADD".to_vec(), temp.clone(), id.clone()];
                    args.extend(fields);
                    target.write(args).await?;
                    entries += 1;
                    last = Some(id);
                }
                match last {
                    Some(id) if n == CHUNK => from = [b"(".as_slice(), &id].concat(),
                    _ => break,
                }
            }
            if let Some(meta) = meta {
                for part in super::stream::not_carried(&meta, receiver) {
                    migration.counters.stream_parts_not_carried.increment(1);
                    migration
                        .totals
                        .stream_parts_not_carried
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(key = %String::from_utf8_lossy(key), part, "stream copied by type without a part the target cannot hold");
                }
                for command in super::stream::restore_commands(&meta, &temp, receiver, entries == 0)
                {
                    let reply = target.write(command).await?;
                    if reply.as_ref() == b"*0\r\n" {
                        // XCLAIM of an entry no longer in the stream: not carried.
                        migration.counters.stream_parts_not_carried.increment(1);
                        migration
                            .totals
                            .stream_parts_not_carried
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                exists = true;
            }
        }
        KeyType::Other(other) => {
            return Err(CopyError::Unexpected(format!(
                "cannot copy a {other} structurally"
            )));
        }
    }
    let copied_at = migration.seq_now();
    let pttl = match source_value(migration, key, &[b"PTTL", key]).await? {
        OwnedFrame::Integer(n) => n,
        _ => -1,
    };
    if !exists || pttl == -2 {
        // Gone on the source (or empty): gone on the target.
        target
            .send(&[b"DEL".to_vec(), temp.clone(), key.to_vec()])
            .await?;
        return Ok(Copied {
            copied_at,
            bytes: 0,
            expires: false,
            method: CopyMethod::ByType,
            marker: None,
        });
    }
    if !target.guarded {
        let guard = [
            b"PEXPIRE".to_vec(),
            temp.clone(),
            GUARD_TTL_MS.as_bytes().to_vec(),
        ];
        target.send(&guard).await?;
    }
    target
        .send(&[b"RENAME".to_vec(), temp, key.to_vec()])
        .await?;
    let expires = super::copy::restore_ttl(pttl).is_some();
    let ttl = match super::copy::restore_ttl(pttl) {
        Some(ms) => vec![
            b"PEXPIRE".to_vec(),
            key.to_vec(),
            ms.to_string().into_bytes(),
        ],
        None => vec![b"PERSIST".to_vec(), key.to_vec()],
    };
    target.send(&ttl).await?;
    Ok(Copied {
        copied_at,
        bytes: target.bytes,
        expires,
        method: CopyMethod::ByType,
        marker: None,
    })
}

/// A temporary key name for copying `key` (unique per copy).
fn temp_name(key: &[u8]) -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = format!(
        "__cutover_copy:{}:{}:",
        std::process::id(),
        NEXT.fetch_add(1, Relaxed)
    )
    .into_bytes();
    name.extend_from_slice(&key[..key.len().min(64)]);
    name
}

/// `COMMAND key start stop` (GETRANGE, LRANGE) for `len` items from `start`, from the source.
async fn ranged(
    migration: &Migration,
    key: &[u8],
    command: &[u8],
    start: usize,
    len: usize,
) -> Result<OwnedFrame, CopyError> {
    let (first, last) = (start.to_string(), (start + len - 1).to_string());
    source_value(
        migration,
        key,
        &[command, key, first.as_bytes(), last.as_bytes()],
    )
    .await
}

/// One decoded reply from the source server that owns `key`.
async fn source_value(
    migration: &Migration,
    key: &[u8],
    args: &[&[u8]],
) -> Result<OwnedFrame, CopyError> {
    let mut request = BytesMut::new();
    encode::command(&mut request, args);
    let reply = migration
        .from_call(key, request.freeze(), 1)
        .await
        .map_err(unavailable)?;
    match redis_protocol::resp2::decode::decode(&reply) {
        Ok(Some((OwnedFrame::Error(e), _))) => Err(CopyError::Unexpected(format!("source: {e}"))),
        Ok(Some((frame, _))) => Ok(frame),
        _ => Err(CopyError::Unexpected("source: undecodable reply".into())),
    }
}

fn unavailable(e: crate::upstream::BackendError) -> CopyError {
    CopyError::Unavailable(e.to_string())
}

/// The bytes of a bulk or simple string (empty for anything else).
fn bulk(frame: OwnedFrame) -> Vec<u8> {
    match frame {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => b,
        OwnedFrame::Integer(n) => n.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

/// The items of an array as byte strings (empty for anything else).
fn bulks(frame: OwnedFrame) -> Vec<Vec<u8>> {
    array(frame).into_iter().map(bulk).collect()
}

/// The items of an array (empty for anything else).
fn array(frame: OwnedFrame) -> Vec<OwnedFrame> {
    match frame {
        OwnedFrame::Array(items) => items,
        _ => Vec::new(),
    }
}
