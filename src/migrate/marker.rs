//! Markers: how a copy's snapshot is placed in a source server's replication stream
//! (rule 12), and how the stream's delay is measured in time.
//!
//! Under replication capture every copy from the source reads the key with
//! `MULTI PTTL DUMP PUBLISH <channel> <marker> EXEC`. The master runs the transaction at
//! one point of its history and propagates the `PUBLISH` to its replicas, so the marker
//! appears in the stream exactly there: every write of the key before the marker is in the
//! copy's snapshot, every write after it is not. The capture routes the marker into the
//! key's lane behind the key's earlier stream events, and the lane's [`Anchors`] tell, for
//! each stream write, which side of its key's last marker it is on.
//!
//! The channel is unique to this process (nobody subscribes to it), so the markers of
//! another cutover reading the same source are ignored.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use bytes::Bytes;

/// Pending anchors above which the backfill waits (they are bounded by the capture's lag;
/// this bounds them when the capture falls far behind a fast backfill).
pub const PENDING_LIMIT: i64 = 100_000;

/// The markers of one migration: its channel and its token counter.
#[derive(Debug)]
pub struct Markers {
    /// `cutover:marker:<random hex>`.
    channel: Bytes,
    /// The next copy's token.
    next: AtomicU64,
    /// Copies whose marker has not come through their lane yet, across every lane.
    pub pending: AtomicI64,
}

impl Default for Markers {
    fn default() -> Markers {
        // The known-copied sets' salt is unpredictable per process; the process id keeps
        // two processes started in the same instant apart.
        let id = super::known::Salt::random().0 ^ u64::from(std::process::id()) << 40;
        Markers {
            channel: Bytes::from(format!("cutover:marker:{id:016x}")),
            next: AtomicU64::new(1),
            pending: AtomicI64::new(0),
        }
    }
}

/// A marker read back from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Marked {
    /// A copy of `key` took its snapshot here.
    Copy {
        /// The copy's token.
        token: u64,
        /// The key copied.
        key: Bytes,
    },
    /// A sampled read was placed here (see `placed_read`).
    Read {
        /// The placed read's token.
        token: u64,
    },
    /// A heartbeat sent at this wall-clock time (milliseconds since the epoch): the
    /// stream's delay is the time it took to come back.
    Heartbeat {
        /// When it was sent.
        sent_ms: u64,
    },
}

impl Markers {
    /// The channel this migration publishes its markers on.
    pub fn channel(&self) -> &[u8] {
        &self.channel
    }

    /// A fresh token for a copy.
    pub fn next_token(&self) -> u64 {
        self.next.fetch_add(1, Relaxed)
    }

    /// The message of a copy's marker: `c<token>:<key>`.
    pub fn copy_message(token: u64, key: &[u8]) -> Vec<u8> {
        let mut message = format!("c{token}:").into_bytes();
        message.extend_from_slice(key);
        message
    }

    /// The message of a heartbeat sent at `sent_ms`: `h<ms>`.
    pub fn heartbeat_message(sent_ms: u64) -> Vec<u8> {
        format!("h{sent_ms}").into_bytes()
    }

    /// The marker in a `PUBLISH channel message` of the stream, if it is one of ours.
    pub fn parse(&self, channel: &[u8], message: &[u8]) -> Option<Marked> {
        if channel != self.channel.as_ref() {
            return None;
        }
        let (kind, rest) = message.split_first()?;
        match kind {
            b'c' => {
                let colon = rest.iter().position(|&b| b == b':')?;
                let token = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
                Some(Marked::Copy {
                    token,
                    key: Bytes::copy_from_slice(&rest[colon + 1..]),
                })
            }
            b's' => Some(Marked::Read {
                token: std::str::from_utf8(rest).ok()?.parse().ok()?,
            }),
            b'h' => Some(Marked::Heartbeat {
                sent_ms: std::str::from_utf8(rest).ok()?.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// Heartbeats remembered while they travel (one a second: a minute of stall).
const HEARTBEATS: usize = 64;

/// The wall clock in milliseconds since the epoch (heartbeats carry it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A stream's delay in time. The capture publishes a heartbeat marker on the source once
/// a second and notes when it came back out of the stream; the delay is the last
/// heartbeat's trip, or, when one is overdue, how long the oldest still travelling has.
#[derive(Debug, Default)]
pub struct LagClock(Mutex<Heartbeats>);

/// The heartbeats in flight and the last trip measured.
#[derive(Debug, Default)]
struct Heartbeats {
    /// When each heartbeat still travelling was sent, oldest first.
    sent: VecDeque<u64>,
    /// The last heartbeat's trip, in milliseconds.
    measured_ms: u64,
}

impl LagClock {
    /// A heartbeat was published at `sent_ms`.
    pub fn sent(&self, sent_ms: u64) {
        if let Ok(mut h) = self.0.lock() {
            if h.sent.len() >= HEARTBEATS {
                h.sent.pop_front();
            }
            h.sent.push_back(sent_ms);
        }
    }

    /// The heartbeat sent at `sent_ms` came out of the stream at `now_ms`.
    pub fn seen(&self, sent_ms: u64, now_ms: u64) {
        if let Ok(mut h) = self.0.lock() {
            while h.sent.front().is_some_and(|&s| s <= sent_ms) {
                h.sent.pop_front();
            }
            h.measured_ms = now_ms.saturating_sub(sent_ms);
        }
    }

    /// The delay at `now_ms`, in seconds.
    pub fn seconds(&self, now_ms: u64) -> f64 {
        let Ok(h) = self.0.lock() else { return 0.0 };
        let overdue = h.sent.front().map_or(0, |&s| now_ms.saturating_sub(s));
        h.measured_ms.max(overdue) as f64 / 1000.0
    }
}

/// Where a stream write of a key stands against the key's last copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// The key's last copy's marker has not come through the lane: the write is before
    /// it in the stream, so in the copy's snapshot.
    InCopy,
    /// The key's last copy was made before the stream was broken off and taken up again
    /// with a full sync: its marker may be lost, and nothing is known of the write.
    Stale,
    /// No copy of the key waits for its marker: the write came after every snapshot.
    Settled,
}

/// One lane's keys whose last copy's marker has not come through it yet: the token and
/// the capture generation (of the key's source server) the copy was made in.
#[derive(Debug, Default)]
pub struct Anchors(HashMap<Bytes, (u64, u64)>);

impl Anchors {
    /// A copy of `key` with `token` succeeded in capture generation `generation`.
    pub fn copied(&mut self, markers: &Markers, key: &Bytes, token: u64, generation: u64) {
        if self.0.insert(key.clone(), (token, generation)).is_none() {
            markers.pending.fetch_add(1, Relaxed);
        }
    }

    /// Where a write of `key` from a stream of generation `generation` stands.
    pub fn anchor(&self, key: &[u8], generation: u64) -> Anchor {
        match self.0.get(key) {
            None => Anchor::Settled,
            Some(&(_, g)) if g == generation => Anchor::InCopy,
            Some(_) => Anchor::Stale,
        }
    }

    /// Forget `key`'s copy (stale, or its copy is about to be replaced).
    pub fn forget(&mut self, markers: &Markers, key: &[u8]) {
        if self.0.remove(key).is_some() {
            markers.pending.fetch_sub(1, Relaxed);
        }
    }

    /// The marker of copy `token` of `key` came through the lane: later writes of the key
    /// are after its snapshot. An older copy's marker changes nothing (a later copy of the
    /// key waits for its own). Returns whether it settled the key.
    pub fn marker(&mut self, markers: &Markers, key: &[u8], token: u64) -> bool {
        if self.0.get(key).is_some_and(|&(t, _)| t == token) {
            self.forget(markers, key);
            return true;
        }
        false
    }

    /// Forget every key (the capture stopped: no marker will come).
    pub fn clear(&mut self, markers: &Markers) {
        markers.pending.fetch_sub(self.0.len() as i64, Relaxed);
        self.0.clear();
    }

    /// Whether no key waits.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_ignore_other_channels() {
        let markers = Markers::default();
        let other = Markers::default();
        let message = Markers::copy_message(42, b"a:b\r\nc");
        assert_eq!(
            markers.parse(markers.channel(), &message),
            Some(Marked::Copy {
                token: 42,
                key: Bytes::from_static(b"a:b\r\nc")
            })
        );
        assert_eq!(
            markers.parse(markers.channel(), &Markers::heartbeat_message(7)),
            Some(Marked::Heartbeat { sent_ms: 7 })
        );
        assert_ne!(markers.channel(), other.channel());
        assert_eq!(markers.parse(other.channel(), &message), None);
        assert_eq!(
            markers.parse(markers.channel(), b"s9"),
            Some(Marked::Read { token: 9 })
        );
        for junk in [&b""[..], b"c", b"cx:k", b"c1", b"hx", b"s", b"z1:k"] {
            assert_eq!(markers.parse(markers.channel(), junk), None, "{junk:?}");
        }
    }

    proptest::proptest! {
        /// The stream's `PUBLISH` messages come from anyone: no bytes make the parser
        /// panic, and only this migration's channel is read.
        #[test]
        fn any_message_parses_or_is_ignored(channel: Vec<u8>, message: Vec<u8>) {
            let markers = Markers::default();
            // Another channel is never read (a random one is never this one).
            proptest::prop_assert_eq!(markers.parse(&channel, &message), None);
            // This one: parsed or refused, never a panic.
            let _ = markers.parse(markers.channel(), &message);
        }
    }

    #[test]
    fn the_lag_is_the_last_trip_or_the_oldest_overdue_heartbeat() {
        let clock = LagClock::default();
        assert_eq!(clock.seconds(1_000), 0.0);
        clock.sent(1_000);
        clock.seen(1_000, 1_004);
        assert_eq!(clock.seconds(1_010), 0.004);
        clock.sent(2_000);
        clock.sent(3_000);
        assert_eq!(
            clock.seconds(3_500),
            1.5,
            "stalled since the heartbeat at 2 s"
        );
        clock.seen(3_000, 3_600);
        assert_eq!(clock.seconds(3_700), 0.6);
    }

    #[test]
    fn a_write_is_in_the_copy_until_its_marker_and_stale_after_a_full_sync() {
        let markers = Markers::default();
        let mut anchors = Anchors::default();
        let key = Bytes::from_static(b"k");
        assert_eq!(anchors.anchor(&key, 0), Anchor::Settled);
        anchors.copied(&markers, &key, 1, 0);
        anchors.copied(&markers, &key, 2, 0);
        assert_eq!(markers.pending.load(Relaxed), 1);
        assert_eq!(anchors.anchor(&key, 0), Anchor::InCopy);
        assert!(!anchors.marker(&markers, &key, 1), "an older copy's marker");
        assert_eq!(anchors.anchor(&key, 0), Anchor::InCopy);
        assert_eq!(anchors.anchor(&key, 1), Anchor::Stale);
        assert!(anchors.marker(&markers, &key, 2));
        assert_eq!(anchors.anchor(&key, 0), Anchor::Settled);
        assert_eq!(markers.pending.load(Relaxed), 0);
    }
}
