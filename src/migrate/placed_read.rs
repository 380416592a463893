//! Shadow reads under replication capture: a sampled read placed in the source's stream.
//!
//! In the proxy feed a read is compared in its key's lane, behind every mirror event the
//! proxy queued before it. Under capture the lanes follow the stream, which lags the
//! source by an unknown amount: the client's reply was taken at a point of the source's
//! history that no lane can find. So the sampled read is read again on the source inside
//! `MULTI; <read>; PUBLISH <channel> s<token>; EXEC`: the reply and the marker are one point
//! of the stream. When the capture meets the marker, it queues the read into its key's
//! lane at exactly that point (rule 12's order), and the lane compares it with the target
//! once every earlier stream write of the key is applied: equal replies are expected, with
//! no false mismatch. A disagreement is confirmed by a second placed read before it counts
//! (the key may have been copied by type, which is not one snapshot).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::Migration;
use super::lane::LaneEvent;
use super::mirror::ShadowRead;
use crate::resp::{Protocol, ReplyScanner, encode};

/// Placed reads waiting for their marker; past it a new one is not compared (the stream
/// is far behind, or markers were lost in a gap).
const MAX_WAITING: usize = 4096;

/// A placed read waiting for its marker to come out of the stream.
struct Waiting {
    /// The read.
    read: ShadowRead,
    /// The request, to send to the target.
    request: Bytes,
    /// The source's reply inside the transaction and when it came back, once it is back
    /// (nothing when the transaction failed).
    reply: oneshot::Receiver<(Bytes, Instant)>,
}

/// The placed reads of one migration, by token.
#[derive(Default)]
pub struct PlacedReads {
    /// Waiting for their marker.
    waiting: Mutex<HashMap<u64, Waiting>>,
    /// Placed reads sent (for `/status`).
    pub placed: AtomicU64,
}

/// Place the sampled `read` (`request` as the client sent it) in its source server's
/// stream, in the background.
pub fn place(migration: &Arc<Migration>, read: ShadowRead, request: Bytes) {
    tokio::spawn(send(migration.clone(), read, request));
}

/// Read `request` again on the source with a marker in the same transaction, and leave it
/// waiting for the marker.
async fn send(migration: Arc<Migration>, mut read: ShadowRead, request: Bytes) {
    let reads = &migration.placed_reads;
    let token = migration.markers.next_token();
    let (tx, rx) = oneshot::channel();
    // The copy connections speak RESP2; the target is read in the same protocol.
    read.protocol = Protocol::Resp2;
    // The source reply compared is this transaction's, not the client's.
    read.sent = Instant::now();
    let key = read.key.clone();
    {
        let Ok(mut waiting) = reads.waiting.lock() else {
            return;
        };
        if waiting.len() >= MAX_WAITING {
            drop(waiting);
            migration.shadow_skip("unavailable");
            return;
        }
        let entry = Waiting {
            read,
            request: request.clone(),
            reply: rx,
        };
        waiting.insert(token, entry);
    }
    let message = format!("s{token}").into_bytes();
    let mut bytes = BytesMut::new();
    encode::command(&mut bytes, &[b"MULTI".as_slice()]);
    bytes.extend_from_slice(&request);
    let channel = migration.markers.channel();
    encode::command(&mut bytes, &[b"PUBLISH".as_slice(), channel, &message]);
    encode::command(&mut bytes, &[b"EXEC".as_slice()]);
    reads.placed.fetch_add(1, Relaxed);
    let exec = migration.from_call(&key, bytes.freeze(), 4).await;
    match exec.ok().and_then(|exec| first_reply(&exec)) {
        Some(reply) if reply.first() != Some(&b'-') => {
            let _ = tx.send((reply, Instant::now()));
        }
        _ => {
            // No marker to wait for, or a read the source refused: nothing to compare.
            if let Ok(mut waiting) = reads.waiting.lock() {
                waiting.remove(&token);
            }
            migration.shadow_skip("unavailable");
        }
    }
}

/// The first reply inside an EXEC reply (`*2\r\n<reply>:<receivers>\r\n`).
fn first_reply(exec: &Bytes) -> Option<Bytes> {
    if exec.first() != Some(&b'*') {
        return None;
    }
    let header = exec.windows(2).position(|w| w == b"\r\n")? + 2;
    let length = ReplyScanner::default().scan(&exec[header..]).ok()??;
    Some(exec.slice(header..header + length))
}

/// The capture met placed read `token`'s marker in source server `server`'s stream:
/// queue it into its key's lane here, once its source reply is back.
pub async fn marker_met(migration: &Migration, token: u64, generation: u64) {
    let waiting = migration
        .placed_reads
        .waiting
        .lock()
        .ok()
        .and_then(|mut w| w.remove(&token));
    let Some(waiting) = waiting else { return };
    // The transaction ran (its marker is in the stream): its reply is on its way.
    let Ok((source_reply, answered)) = waiting.reply.await else {
        return;
    };
    let event = LaneEvent::Shadow {
        read: waiting.read,
        seq: 0,
        request: waiting.request,
        source_reply,
        answered,
        placed: Some(generation),
    };
    migration.send(event).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_is_the_first_reply_of_the_exec() {
        let exec = Bytes::from_static(b"*2\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n:0\r\n");
        assert_eq!(
            first_reply(&exec).as_deref(),
            Some(&b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"[..])
        );
        assert_eq!(
            first_reply(&Bytes::from_static(b"*2\r\n$-1\r\n:0\r\n")).as_deref(),
            Some(&b"$-1\r\n"[..])
        );
        assert_eq!(first_reply(&Bytes::from_static(b"-EXECABORT x\r\n")), None);
        assert_eq!(first_reply(&Bytes::from_static(b"*2\r\n$5\r\nab")), None);
    }
}
