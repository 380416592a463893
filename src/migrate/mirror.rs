//! What a proxied write means for the target: the keys it writes, whether it may be
//! replayed, and the hook that carries it from the source connection into its lanes.
//!
//! The hook rides on the request to the source. When the source's reply is read (rule 1),
//! the backend task calls [`MirrorHook::on_reply`] before the client gets the reply, and
//! the hook puts the write's events into the lanes of its keys. When the outcome is
//! unknown (rule 4), [`MirrorHook::on_unknown`] copies every key the write may have written.

use std::sync::Arc;

use bytes::Bytes;

use super::Migration;
use super::lag::LagStart;
use super::lane::LaneEvent;
use super::shadow::Compare;
use crate::command::{self, Access, CommandSpec, Mirror, WrittenKeys};
use crate::resp::{Protocol, Request};

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
        // A write that gives the key a TTL is copied: a relative TTL set by a replay would
        // start when the replay lands, late by the mirror lag, while a copy carries it
        // exactly (PTTL read with the DUMP); and the copy sets the key's TTL flag, so its
        // later writes are copied too (see `known`).
        Mirror::Replay if sets_ttl(spec, request) => (vec![arg(1)], false),
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

/// Whether the command may give its key a TTL: EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT,
/// SETEX, PSETEX, RESTORE, and SET or GETEX with EX, PX, EXAT or PXAT.
fn sets_ttl(spec: &CommandSpec, request: &Request) -> bool {
    match spec.name {
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" | "SETEX" | "PSETEX" | "RESTORE" => true,
        "SET" | "GETEX" => request.args().skip(2).any(|a| {
            [b"EX".as_slice(), b"PX", b"EXAT", b"PXAT"]
                .iter()
                .any(|option| a.eq_ignore_ascii_case(option))
        }),
        _ => false,
    }
}

/// What a hook mirrors.
enum HookKind {
    /// A write: its events go into the lanes of the keys it writes.
    Write(WriteEffect),
    /// A sampled read of one key, checked against the target in the key's lane.
    Shadow(ShadowRead),
    /// A write replayed on the target straight from the source's reply (its lane was idle):
    /// the target's reply is checked against the source's.
    Replay(ReplayCheck),
}

/// What checking a direct replay needs.
pub struct ReplayCheck {
    /// The key written.
    pub key: Bytes,
    /// The source's reply, which the target's must equal.
    pub source_reply: Bytes,
    /// When the source's reply was read, if this write's lag is measured.
    pub lag: LagStart,
}

/// A sampled read to check against the target.
#[derive(Clone)]
pub struct ShadowRead {
    /// The key read.
    pub key: Bytes,
    /// How the replies are compared.
    pub compare: Compare,
    /// The client's protocol (the target is read in the same one).
    pub protocol: Protocol,
    /// The command's name, for metrics.
    pub command: &'static str,
    /// Set on the second read of a key whose first check disagreed: a mismatch now is real.
    pub confirm: bool,
}

/// A write (or a sampled read) on its way to the authoritative pool, to be mirrored once
/// its outcome is known.
pub struct MirrorHook {
    /// The migration it belongs to.
    migration: Arc<Migration>,
    /// What it mirrors.
    kind: HookKind,
    /// The request's bytes, replayed as they are.
    request: Bytes,
    /// Its sequence number, taken when it is written to the source (rule 2).
    seq: u64,
    /// Its outcome was handled (a reply, an unknown outcome, or a replay handed back).
    settled: bool,
}

impl MirrorHook {
    /// A hook for a write with `effect`.
    pub fn new(migration: Arc<Migration>, effect: WriteEffect, request: Bytes) -> MirrorHook {
        MirrorHook::with_kind(migration, HookKind::Write(effect), request)
    }

    /// A hook for a sampled read.
    pub fn shadow(migration: Arc<Migration>, read: ShadowRead, request: Bytes) -> MirrorHook {
        MirrorHook::with_kind(migration, HookKind::Shadow(read), request)
    }

    /// A hook for a write replayed on the target with sequence number `seq`.
    pub fn replay(migration: Arc<Migration>, check: ReplayCheck, seq: u64) -> MirrorHook {
        let mut hook = MirrorHook::with_kind(migration, HookKind::Replay(check), Bytes::new());
        hook.seq = seq;
        hook
    }

    /// Count the hook as live: a flip waits until no hook is.
    fn with_kind(migration: Arc<Migration>, kind: HookKind, request: Bytes) -> MirrorHook {
        migration.hook_started();
        MirrorHook {
            migration,
            kind,
            request,
            seq: 0,
            settled: false,
        }
    }

    /// Whether the request is numbered when it is sent (a write or read on the
    /// authoritative pool); a replay keeps its source write's number.
    pub fn takes_seq(&self) -> bool {
        !matches!(self.kind, HookKind::Replay(_))
    }

    /// A replay that could not be queued is handed back to the lane: forget it here, and
    /// give back its key (empty for other hooks).
    pub fn cancel(mut self) -> Bytes {
        self.settled = true;
        match &mut self.kind {
            HookKind::Replay(check) => std::mem::take(&mut check.key),
            _ => Bytes::new(),
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
    /// For a replay, the target answered: check it.
    pub fn on_reply(mut self, reply: &Bytes) {
        self.settled = true;
        let failed = reply.first() == Some(&b'-');
        let request = std::mem::take(&mut self.request);
        let effect = match &mut self.kind {
            HookKind::Replay(check) => {
                self.migration.replay_answered(check, reply);
                return;
            }
            HookKind::Shadow(read) => {
                if !failed {
                    self.migration.enqueue(LaneEvent::Shadow {
                        read: read.clone(),
                        seq: self.seq,
                        request,
                        source_reply: reply.clone(),
                    });
                }
                return;
            }
            HookKind::Write(effect) => effect,
        };
        if failed && !effect.script {
            // A command that failed changed nothing on the source.
            return;
        }
        let keys = std::mem::take(&mut effect.keys);
        let lag = self.migration.lag_start();
        if effect.replay && !failed {
            let Some(key) = keys.into_iter().next() else {
                return;
            };
            // Straight to the target when the key's lane is idle and the key may be
            // replayed; else through the lane.
            let Err((key, request)) = self
                .migration
                .replay_direct(key, self.seq, request, reply, lag)
            else {
                return;
            };
            self.migration.enqueue(LaneEvent::Write {
                key,
                seq: self.seq,
                request,
                source_reply: reply.clone(),
                lag,
            });
        } else {
            for key in keys {
                self.migration.enqueue(LaneEvent::Copy {
                    key,
                    unless_known: false,
                    write: Some(lag),
                });
            }
        }
    }

    /// The write's outcome is unknown (timeout, connection lost after sending): copy every
    /// key it may have written. A sampled read is simply not checked.
    pub fn on_unknown(mut self) {
        self.settled = true;
        if let HookKind::Replay(check) = &self.kind {
            self.migration.replay_unknown(check);
            return;
        }
        let HookKind::Write(effect) = &mut self.kind else {
            return;
        };
        let lag = self.migration.lag_start();
        for key in std::mem::take(&mut effect.keys) {
            self.migration.enqueue(LaneEvent::Copy {
                key,
                unless_known: false,
                write: Some(lag),
            });
        }
    }
}

impl Drop for MirrorHook {
    fn drop(&mut self) {
        // A replay dropped unanswered (its connection never opened) did not happen: copy
        // the key. A write or read dropped unsent never reached the source: nothing to do.
        if !self.settled
            && let HookKind::Replay(check) = &self.kind
        {
            self.migration.replay_unknown(check);
        }
        self.migration.hook_finished();
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::resp::{Parsed, RequestParser};

    /// The effect of a command written as words.
    fn effect_of(words: &[&str]) -> Option<(Vec<String>, bool, bool)> {
        let mut buf = BytesMut::new();
        crate::resp::encode::command(&mut buf, words);
        let Ok(Some(Parsed::Request(request))) = RequestParser::default().next(&mut buf) else {
            panic!("parse")
        };
        let spec = command::lookup(request.name()).expect("known command");
        effect(spec, &request).map(|e| {
            (
                e.keys
                    .iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect(),
                e.replay,
                e.script,
            )
        })
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_class_of_write() {
        // Deterministic single-key writes are replayed.
        for words in [
            &["SET", "k", "v"][..],
            &["INCR", "k"],
            &["HSET", "k", "f", "v"],
            &["LPOP", "k"],
            &["SET", "k", "v", "KEEPTTL"],
            &["PERSIST", "k"],
        ] {
            assert_eq!(
                effect_of(words),
                Some((keys(&["k"]), true, false)),
                "{words:?}"
            );
        }
        // Writes that give the key a TTL are copied (relative TTLs would drift by the
        // mirror lag, and the copy flags the key so its later writes are copied too).
        for words in [
            &["EXPIRE", "k", "10"][..],
            &["PEXPIRE", "k", "10"],
            &["EXPIREAT", "k", "4102444800"],
            &["PEXPIREAT", "k", "4102444800000"],
            &["SETEX", "k", "10", "v"],
            &["PSETEX", "k", "10", "v"],
            &["SET", "k", "v", "ex", "10"],
            &["SET", "k", "v", "PXAT", "4102444800000"],
            &["GETEX", "k", "PX", "10"],
            &["GETEX", "k", "exat", "4102444800"],
            &["RESTORE", "k", "0", "payload"],
        ] {
            assert_eq!(
                effect_of(words),
                Some((keys(&["k"]), false, false)),
                "{words:?}"
            );
        }
        // Random or multi-key writes copy what they write.
        assert_eq!(
            effect_of(&["SPOP", "k"]),
            Some((keys(&["k"]), false, false))
        );
        assert_eq!(
            effect_of(&["SUNIONSTORE", "d", "a", "b"]),
            Some((keys(&["d"]), false, false))
        );
        assert_eq!(
            effect_of(&["SMOVE", "a", "b", "m"]),
            Some((keys(&["a", "b"]), false, false))
        );
        assert_eq!(
            effect_of(&["LMOVE", "a", "b", "LEFT", "RIGHT"]),
            Some((keys(&["a", "b"]), false, false))
        );
        assert_eq!(
            effect_of(&["COPY", "a", "b"]),
            Some((keys(&["b"]), false, false))
        );
        assert_eq!(
            effect_of(&["DEL", "a", "b", "c"]),
            Some((keys(&["a", "b", "c"]), false, false))
        );
        assert_eq!(
            effect_of(&["MSET", "a", "1", "b", "2"]),
            Some((keys(&["a", "b"]), false, false))
        );
        assert_eq!(
            effect_of(&["SORT", "l", "LIMIT", "0", "5", "store", "d"]),
            Some((keys(&["d"]), false, false))
        );
        assert_eq!(
            effect_of(&["SORT", "l"]),
            None,
            "SORT without STORE writes nothing"
        );
        assert_eq!(
            effect_of(&["GEORADIUS", "g", "1", "2", "5", "km", "STOREDIST", "d"]),
            Some((keys(&["d"]), false, false))
        );
        assert_eq!(
            effect_of(&["EVAL", "s", "2", "a", "b", "arg"]),
            Some((keys(&["a", "b"]), false, true))
        );
        // Reads write nothing.
        assert_eq!(effect_of(&["GET", "k"]), None);
        assert_eq!(effect_of(&["MGET", "a", "b"]), None);
    }

    #[test]
    fn every_write_command_is_classified() {
        for spec in command::all() {
            if let Access::Write(Mirror::Copy(_) | Mirror::Replay) = spec.access {
                assert!(
                    spec.class != crate::command::ArgClass::NoKey,
                    "{} writes keys",
                    spec.name
                );
            }
        }
        let writes = command::all().filter(|c| c.is_write()).count();
        assert!(writes >= 60, "{writes}");
    }
}
