//! What a proxied write means for the target: the keys it writes, whether it may be
//! replayed, and the hook that carries it from the source connection into its lanes.
//!
//! The hook rides on the request to the source (as an upstream [`ReplyHook`]). When the
//! source's reply is read (rule 1), the connection's task calls its `on_reply` before the
//! client gets the reply, and
//! the hook puts the write's events into the lanes of its keys. When the outcome is
//! unknown (rule 4), `on_unknown` copies every key the write may have written.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::Migration;
use super::lag::LagStart;
use super::lane::LaneEvent;
use super::shadow::Compare;
use crate::command::{self, Access, CommandSpec, Mirror, WrittenKeys};
use crate::resp::{Protocol, Request};
use crate::upstream::ReplyHook;

/// The keys a write writes and whether it may be replayed as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteEffect {
    /// The first key the command may write.
    pub key: Bytes,
    /// Any further keys it may write: empty, and not allocated, for a single-key write.
    pub more_keys: Vec<Bytes>,
    /// Deterministic and single-key on the target (rule 3).
    pub replay: bool,
    /// A script: it may have written before failing, so even an error reply is copied.
    pub script: bool,
}

impl WriteEffect {
    /// A write of `keys` that is copied, not replayed; `None` when it writes no key.
    pub fn copying(keys: impl IntoIterator<Item = Bytes>, script: bool) -> Option<WriteEffect> {
        let mut keys = keys.into_iter();
        Some(WriteEffect {
            key: keys.next()?,
            more_keys: keys.collect(),
            replay: false,
            script,
        })
    }

    /// Take every key the command may write, leaving the effect empty.
    pub fn take_keys(&mut self) -> impl Iterator<Item = Bytes> + use<> {
        let first = std::mem::take(&mut self.key);
        std::iter::once(first).chain(std::mem::take(&mut self.more_keys))
    }
}

/// The effect of `request` (a `spec` command), or `None` for a read.
pub fn effect(spec: &CommandSpec, request: &Request) -> Option<WriteEffect> {
    let Access::Write(mirror) = spec.access else {
        return None;
    };
    let argc = request.argc();
    let arg = |i: usize| request.arg_bytes(i);
    let written = match mirror {
        // A write that gives the key a TTL is copied: a relative TTL set by a replay would
        // start when the replay lands, late by the mirror lag, while a copy carries it
        // exactly (PTTL read with the DUMP); and the copy sets the key's TTL flag, so its
        // later writes are copied too (see `known`).
        Mirror::Replay if sets_ttl(spec, request) => WrittenKeys::First,
        Mirror::Replay => {
            return Some(WriteEffect {
                key: arg(1),
                more_keys: Vec::new(),
                replay: true,
                script: false,
            });
        }
        Mirror::Copy(written) => written,
    };
    match written {
        WrittenKeys::First => WriteEffect::copying([arg(1)], false),
        WrittenKeys::FirstTwo => WriteEffect::copying([arg(1), arg(2)], false),
        WrittenKeys::Second => WriteEffect::copying([arg(2)], false),
        WrittenKeys::All => WriteEffect::copying((1..argc).map(arg), false),
        WrittenKeys::Pairs => WriteEffect::copying((1..argc).step_by(2).map(arg), false),
        WrittenKeys::StoreOption => WriteEffect::copying(
            (1..argc.saturating_sub(1))
                .filter(|&i| {
                    let word = request.arg(i);
                    word.eq_ignore_ascii_case(b"STORE") || word.eq_ignore_ascii_case(b"STOREDIST")
                })
                .map(|i| arg(i + 1)),
            false,
        ),
        WrittenKeys::Eval => {
            let args: Vec<&[u8]> = request.args().collect();
            let n = command::eval_numkeys(&args).unwrap_or(0);
            WriteEffect::copying((3..3 + n).map(arg), true)
        }
    }
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
    /// When the read was sent to the source (a TTL counts down from then until the
    /// target is read); each sending stamps it: the session, a confirming read, a placed
    /// read's transaction.
    pub sent: Instant,
}

/// A write, a sampled read or a replay on its way to a server, to be mirrored once its
/// outcome is known. It rides on the request boxed (as a [`ReplyHook`]), so that the
/// requests and in-flight records it rides on stay small: they move several times
/// between a client's session and its reply.
pub struct MirrorHook {
    /// The migration it belongs to.
    migration: Arc<Migration>,
    /// What it mirrors.
    kind: HookKind,
    /// The request's bytes, handed over as it is sent (a write's replay, a read's check).
    request: Bytes,
    /// Its sequence number, taken when it is written to the source (rule 2); a replay
    /// keeps its write's.
    seq: u64,
    /// Its outcome was handled (a reply, an unknown outcome, or a replay handed back).
    settled: bool,
}

impl MirrorHook {
    /// A hook for a write with `effect`.
    pub fn new(migration: Arc<Migration>, effect: WriteEffect) -> Box<MirrorHook> {
        MirrorHook::with_kind(migration, HookKind::Write(effect))
    }

    /// A hook for a sampled read.
    pub fn shadow(migration: Arc<Migration>, read: ShadowRead) -> Box<MirrorHook> {
        MirrorHook::with_kind(migration, HookKind::Shadow(read))
    }

    /// Count the hook as live: a flip waits until no hook is.
    fn with_kind(migration: Arc<Migration>, kind: HookKind) -> Box<MirrorHook> {
        migration.hook_started();
        Box::new(MirrorHook {
            migration,
            kind,
            request: Bytes::new(),
            seq: 0,
            settled: false,
        })
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

    /// The key of a replay (empty for other hooks).
    pub fn replay_key(&self) -> &[u8] {
        match &self.kind {
            HookKind::Replay(check) => &check.key,
            _ => &[],
        }
    }

    /// The write's sequence number (0 until it is sent).
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl ReplyHook for MirrorHook {
    /// A write or read on the authoritative pool is numbered when it is sent; a replay
    /// keeps its source write's number.
    fn numbered(&self) -> bool {
        !matches!(self.kind, HookKind::Replay(_))
    }

    fn counter_now(&self) -> u64 {
        self.migration.seq_now()
    }

    fn assign_number(&mut self) -> u64 {
        self.seq = self.migration.next_seq();
        self.seq
    }

    fn number(&self) -> u64 {
        self.seq
    }

    /// Keep the request's bytes (a write may be replayed, a read is sent again to the
    /// target). A replay needs them no more.
    fn sending(&mut self, request: Bytes) {
        if self.numbered() {
            self.request = request;
        }
    }

    /// The source answered `reply`: queue the write's events (before the client sees it).
    /// For a replay, the target answered: check it.
    fn on_reply(mut self: Box<Self>, reply: &Bytes) {
        let hook = &mut *self;
        hook.settled = true;
        let failed = reply.first() == Some(&b'-');
        let request = std::mem::take(&mut hook.request);
        let effect = match &mut hook.kind {
            HookKind::Replay(check) => {
                hook.migration.replay_answered(check, reply);
                return;
            }
            HookKind::Shadow(read) => {
                if !failed {
                    hook.migration.enqueue(LaneEvent::Shadow {
                        read: read.clone(),
                        seq: hook.seq,
                        request,
                        source_reply: reply.clone(),
                        answered: Instant::now(),
                        placed: None,
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
        let lag = hook.migration.lag_start();
        if !effect.replay || failed {
            for key in effect.take_keys() {
                hook.migration.copy_after_write(key, lag);
            }
            return;
        }
        // Straight to the target when the key's lane is idle and the key may be replayed:
        // the hook becomes the replay's, and checks the target's reply. Else through the
        // lane.
        let seq = hook.seq;
        let key = std::mem::take(&mut effect.key);
        hook.kind = HookKind::Replay(ReplayCheck {
            key,
            source_reply: reply.clone(),
            lag,
        });
        hook.settled = false;
        let migration = hook.migration.clone();
        if let Err((hook, request)) = migration.replay_direct(self, request) {
            migration.enqueue(LaneEvent::Write {
                key: hook.cancel(),
                seq,
                request,
                source_reply: reply.clone(),
                lag,
            });
        }
    }

    /// The write's outcome is unknown (timeout, connection lost after sending): copy every
    /// key it may have written. A sampled read is simply not checked.
    fn on_unknown(mut self: Box<Self>) {
        let hook = &mut *self;
        hook.settled = true;
        match &mut hook.kind {
            HookKind::Replay(check) => hook.migration.replay_unknown(check),
            HookKind::Shadow(_) => {}
            HookKind::Write(effect) => {
                let lag = hook.migration.lag_start();
                for key in effect.take_keys() {
                    hook.migration.copy_after_unknown(key, lag);
                }
            }
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
        effect(spec, &request).map(|mut e| {
            (
                e.take_keys()
                    .map(|k| String::from_utf8_lossy(&k).into_owned())
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
