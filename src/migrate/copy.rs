//! Copying one key: its TTL and value read atomically from the source (PTTL and DUMP in
//! one MULTI/EXEC), written to the target server that owns it (`RESTORE key ttl payload
//! REPLACE`), or deleted there when the source no longer has it (rule 6).

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::OwnedFrame;

use super::Migration;
use super::engines::CopyMethod;
use super::marker::Markers;
use crate::resp::encode;

/// Why a key is copied: every copy is counted under exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyReason {
    /// The backfill's first copy of a key.
    Backfill,
    /// A write that could not be replayed (rule 3), or whose outcome is unknown (rule 4).
    Write,
    /// A dirty key copied again (rule 7).
    Dirty,
    /// A verify repair.
    Verify,
    /// A shadow-read mismatch's repair.
    Shadow,
    /// A full pass: every key copied again after a capture's stream gap or a restart of
    /// a server on the mirrored side (rule 17). Not the backfill's: its progress counts
    /// each key once.
    FullPass,
}

impl CopyReason {
    /// Every reason, in the order of the metric handles.
    pub const ALL: [CopyReason; 6] = [
        CopyReason::Backfill,
        CopyReason::Write,
        CopyReason::Dirty,
        CopyReason::Verify,
        CopyReason::Shadow,
        CopyReason::FullPass,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CopyReason::Backfill => "backfill",
            CopyReason::Write => "write",
            CopyReason::Dirty => "dirty",
            CopyReason::Verify => "verify",
            CopyReason::Shadow => "shadow",
            CopyReason::FullPass => "full_pass",
        }
    }
}

/// A finished copy.
pub struct Copied {
    /// The sequence counter when the source's snapshot arrived (rule 2).
    pub copied_at: u64,
    /// Payload bytes written to the target.
    pub bytes: usize,
    /// The copy carried a TTL: the key's later writes are copied, not replayed.
    pub expires: bool,
    /// How it was made (`Restore` or `ByType`).
    pub method: CopyMethod,
    /// The token of the marker its snapshot published into the source's stream (rule 12);
    /// `None` without capture, and for copies by type, which are not one snapshot.
    pub marker: Option<u64>,
}

/// Why a copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source or target could not be reached (retried).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The payload was not restored: the target refused it (its Redis cannot read the
    /// source's DUMP format) or it is over `copy_limit_bytes`; the key is then copied
    /// structurally.
    #[error("payload not restored: {0}")]
    Rejected(&'static str),
    /// A reply that makes no sense (logged, key marked dirty).
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

/// Copy `key` from the authoritative side to the mirror: by DUMP/RESTORE, or by type
/// when configured to, when the receiving server cannot read the sender's payloads (known
/// from their engines, or learned from a refusal), or when the payload is over
/// `copy_limit_bytes`.
pub async fn copy_key(migration: &Migration, key: &Bytes) -> Result<Copied, CopyError> {
    let by_type = migration.settings.structural_copy == crate::config::StructuralCopy::Always
        || migration.copy_method(key) == CopyMethod::ByType;
    if by_type {
        return super::structural::copy_key(migration, key).await;
    }
    match restore_copy(migration, key).await {
        Err(CopyError::Rejected(why)) => {
            migration.counters.restore_rejected(why);
            migration
                .totals
                .rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            super::structural::copy_key(migration, key).await
        }
        other => other,
    }
}

/// Copy `key` by DUMP and RESTORE; a payload over the limit or refused by the target is
/// `Rejected`.
async fn restore_copy(migration: &Migration, key: &Bytes) -> Result<Copied, CopyError> {
    let mut snapshot = BytesMut::new();
    encode::command(&mut snapshot, &[b"MULTI".as_slice()]);
    encode::command(&mut snapshot, &[b"PTTL".as_slice(), key]);
    encode::command(&mut snapshot, &[b"DUMP".as_slice(), key]);
    // Under capture the snapshot is placed in the source's stream (rule 12).
    let marker = migration.capturing().then(|| {
        let token = migration.markers.next_token();
        let message = Markers::copy_message(token, key);
        let channel = migration.markers.channel();
        encode::command(&mut snapshot, &[b"PUBLISH".as_slice(), channel, &message]);
        token
    });
    encode::command(&mut snapshot, &[b"EXEC".as_slice()]);
    let replies = if marker.is_some() { 5 } else { 4 };
    let exec = migration
        .from_call(key, snapshot.freeze(), replies)
        .await
        .map_err(|e| CopyError::Unavailable(format!("source: {e}")))?;
    let copied_at = migration.seq_now();
    if refuses_command(&exec) {
        // A command of the snapshot could not be queued: DUMP (or the marker's PUBLISH)
        // is renamed away or not permitted to cutover's user.
        migration.engines.learn_restore_unusable(
            migration.direction(),
            &format!("source: {}", String::from_utf8_lossy(&exec).trim_end()),
        );
        return Err(CopyError::Rejected("restore_refused"));
    }
    let (pttl, payload) = parse_snapshot(&exec)?;
    if payload
        .as_ref()
        .is_some_and(|p| p.len() as u64 > migration.settings.copy_limit_bytes)
    {
        return Err(CopyError::Rejected("over_copy_limit"));
    }
    let mut write = BytesMut::new();
    let bytes = match &payload {
        None => {
            encode::command(&mut write, &[b"DEL".as_slice(), key]);
            0
        }
        Some(payload) => {
            let ttl = restore_ttl(pttl).unwrap_or(0).to_string();
            encode::command(
                &mut write,
                &[
                    b"RESTORE".as_slice(),
                    key,
                    ttl.as_bytes(),
                    payload,
                    b"REPLACE",
                ],
            );
            payload.len()
        }
    };
    let reply = migration
        .to_call(key, write.freeze())
        .await
        .map_err(|e| CopyError::Unavailable(format!("target: {e}")))?;
    if reply.first() == Some(&b'-') {
        let text = String::from_utf8_lossy(&reply);
        if refuses_command(&reply) {
            migration.engines.learn_restore_unusable(
                migration.direction(),
                &format!("target: {}", text.trim_end()),
            );
            return Err(CopyError::Rejected("restore_refused"));
        }
        if text.contains("payload version or checksum") {
            if let Some(payload) = &payload {
                migration
                    .engines
                    .learn_refusal(migration.direction(), payload);
            }
            return Err(CopyError::Rejected("payload_version"));
        }
        return Err(CopyError::Unexpected(format!(
            "target: {}",
            text.trim_end()
        )));
    }
    Ok(Copied {
        copied_at,
        bytes,
        expires: payload.is_some() && restore_ttl(pttl).is_some(),
        method: CopyMethod::Restore,
        marker,
    })
}

/// Whether `reply` says a command itself is refused: unknown (renamed away), or not
/// permitted to the user (`-NOPERM`), or a transaction discarded for one of those
/// (`-EXECABORT`).
pub(super) fn refuses_command(reply: &[u8]) -> bool {
    reply.starts_with(b"-NOPERM")
        || reply.starts_with(b"-EXECABORT")
        || reply.starts_with(b"-ERR unknown command")
}

/// The TTL in milliseconds to give a copy whose source answered `pttl`, or `None` for no
/// TTL (`-1`). A `PTTL` of 0 is a key in its last millisecond, not a key without TTL: it
/// gets 1 ms, so the copy expires too instead of living forever on the target.
pub(super) fn restore_ttl(pttl: i64) -> Option<i64> {
    (pttl >= 0).then_some(pttl.max(1))
}

/// `(pttl, payload)` from the EXEC reply `*2 :pttl $payload`, or `*3` with the marker's
/// `PUBLISH` reply last (payload `None` when the key does not exist).
fn parse_snapshot(exec: &[u8]) -> Result<(i64, Option<Vec<u8>>), CopyError> {
    let unexpected = || {
        CopyError::Unexpected(format!(
            "source: {}",
            String::from_utf8_lossy(&exec[..exec.len().min(200)]).trim_end()
        ))
    };
    let Ok(Some((frame, _))) = redis_protocol::resp2::decode::decode(exec) else {
        return Err(unexpected());
    };
    let OwnedFrame::Array(items) = frame else {
        return Err(unexpected());
    };
    let snapshot = match items.as_slice() {
        [pttl, payload] | [pttl, payload, OwnedFrame::Integer(_)] => (pttl, payload),
        _ => return Err(unexpected()),
    };
    match snapshot {
        (OwnedFrame::Integer(pttl), OwnedFrame::BulkString(payload)) => {
            Ok((*pttl, Some(payload.clone())))
        }
        (OwnedFrame::Integer(pttl), OwnedFrame::Null) => Ok((*pttl, None)),
        _ => Err(unexpected()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_of_copies() {
        assert_eq!(restore_ttl(-1), None);
        assert_eq!(
            restore_ttl(0),
            Some(1),
            "last millisecond: it must still expire"
        );
        assert_eq!(restore_ttl(1500), Some(1500));
    }

    #[test]
    fn snapshots() {
        assert_eq!(
            parse_snapshot(b"*2\r\n:-1\r\n$3\r\nabc\r\n").ok(),
            Some((-1, Some(b"abc".to_vec())))
        );
        assert_eq!(
            parse_snapshot(b"*2\r\n:-2\r\n$-1\r\n").ok(),
            Some((-2, None))
        );
        assert_eq!(
            parse_snapshot(b"*3\r\n:5\r\n$1\r\nx\r\n:0\r\n").ok(),
            Some((5, Some(b"x".to_vec()))),
            "with the marker's PUBLISH"
        );
        assert!(parse_snapshot(b"*3\r\n:5\r\n$1\r\nx\r\n$1\r\ny\r\n").is_err());
        assert!(parse_snapshot(b"-EXECABORT x\r\n").is_err());
        assert!(parse_snapshot(b"*1\r\n:1\r\n").is_err());
    }
}
