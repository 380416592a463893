//! What a proxied write means for the target: the keys it writes, whether it may be
//! replayed, and the hook that carries it from the source connection into its lanes.
//!
//! The hook rides on the request to the source. When the source's reply is read (rule 1),
//! the backend task calls [`MirrorHook::on_reply`] before the client gets the reply, and
//! the hook puts the write's events into the lanes of its keys. When the outcome is
//! unknown (rule 4), [`MirrorHook::on_unknown`] copies every key the write may have written.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::Migration;
use super::lane::LaneEvent;
use crate::command::{self, Access, CommandSpec, Mirror, WrittenKeys};
use crate::resp::Request;

/// The keys a write writes and whether it may be replayed as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteEffect {
    /// Every key the command may write.
    pub keys: Vec<Bytes>,
    /// Deterministic and single-key on the target (rule 3).
    pub replay: bool,
    /// A script: it may have written before failing, so even an error reply is copied.
    pub script: bool,
}

/// The effect of `request` (a `spec` command), or `None` for a read.
pub fn effect(spec: &CommandSpec, request: &Request) -> Option<WriteEffect> {
    let Access::Write(mirror) = spec.access else {
        return None;
    };
    let argc = request.argc();
    let arg = |i: usize| request.arg_bytes(i);
    let (keys, replay) = match mirror {
        Mirror::Replay => (vec![arg(1)], true),
        Mirror::Copy(written) => {
            let keys = match written {
                WrittenKeys::First => vec![arg(1)],
                WrittenKeys::FirstTwo => vec![arg(1), arg(2)],
                WrittenKeys::Second => vec![arg(2)],
                WrittenKeys::All => (1..argc).map(arg).collect(),
                WrittenKeys::Pairs => (1..argc).step_by(2).map(arg).collect(),
                WrittenKeys::StoreOption => (1..argc.saturating_sub(1))
                    .filter(|&i| {
                        let word = request.arg(i);
                        word.eq_ignore_ascii_case(b"STORE")
                            || word.eq_ignore_ascii_case(b"STOREDIST")
                    })
                    .map(|i| arg(i + 1))
                    .collect(),
                WrittenKeys::Eval => {
                    let args: Vec<&[u8]> = request.args().collect();
                    let n = command::eval_numkeys(&args).unwrap_or(0);
                    (3..3 + n).map(arg).collect()
                }
            };
            (keys, false)
        }
    };
    (!keys.is_empty()).then_some(WriteEffect {
        keys,
        replay,
        script: matches!(mirror, Mirror::Copy(WrittenKeys::Eval)),
    })
}

/// A write on its way to the source, to be mirrored once its outcome is known.
pub struct MirrorHook {
    /// The migration it belongs to.
    migration: Arc<Migration>,
    /// What it writes.
    effect: WriteEffect,
    /// The request's bytes, replayed as they are.
    request: Bytes,
    /// Its sequence number, taken when it is written to the source (rule 2).
    seq: u64,
}

impl MirrorHook {
    /// A hook for a write with `effect`.
    pub fn new(migration: Arc<Migration>, effect: WriteEffect, request: Bytes) -> MirrorHook {
        MirrorHook {
            migration,
            effect,
            request,
            seq: 0,
        }
    }

    /// Take the write's sequence number; called as it goes on the wire to the source.
    pub fn assign_seq(&mut self) -> u64 {
        self.seq = self.migration.next_seq();
        self.seq
    }

    /// The write's sequence number (0 until it is sent).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The migration this write belongs to.
    pub fn migration(&self) -> &Arc<Migration> {
        &self.migration
    }

    /// The source answered `reply`: queue the write's events (before the client sees it).
    pub fn on_reply(self, reply: &Bytes) {
        let failed = reply.first() == Some(&b'-');
        if failed && !self.effect.script {
            // A command that failed changed nothing on the source.
            return;
        }
        let now = Instant::now();
        if self.effect.replay && !failed {
            let key = self.effect.keys[0].clone();
            self.migration.enqueue(LaneEvent::Write {
                key,
                seq: self.seq,
                request: self.request,
                source_reply: reply.clone(),
                mirrored_at: now,
            });
        } else {
            for key in self.effect.keys {
                self.migration.enqueue(LaneEvent::Copy {
                    key,
                    unless_known: false,
                    mirrored_at: Some(now),
                });
            }
        }
    }

    /// The write's outcome is unknown (timeout, connection lost after sending): copy every
    /// key it may have written.
    pub fn on_unknown(self) {
        let now = Instant::now();
        for key in self.effect.keys {
            self.migration.enqueue(LaneEvent::Copy {
                key,
                unless_known: false,
                mirrored_at: Some(now),
            });
        }
    }
}
