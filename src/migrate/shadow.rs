//! Shadow reads: which reads may be checked against the target, and how two replies are
//! compared (exactly, as sets or maps when their order is not defined, TTLs within a
//! tolerance).
//!
//! The check itself runs in the key's lane (see `lane.rs`), after every earlier mirror
//! event of the key, so the target is read at the same point of the key's history as the
//! source was.

use std::time::Instant;

use redis_protocol::resp3::types::OwnedFrame;

use crate::command::{Access, CommandSpec};
use crate::resp::Request;

/// How a read's replies are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Byte for byte.
    Exact,
    /// As a set: the order of the elements is not defined.
    Unordered,
    /// As a map (`HGETALL`: field, value, field, value over RESP2, a map over RESP3).
    Pairs,
    /// Replies holding floating-point numbers (sorted-set scores, GEO distances and
    /// coordinates): equal when the same shape and every pair of differing strings or
    /// doubles parse to the same number. Engines print the same double differently (Redis
    /// 7.0 `0.10000000000000001`, Valkey `0.1`); both read back as the same number.
    Numbers,
    /// A TTL: equal when both are negative codes and equal, or both within the tolerance;
    /// the number is in seconds when `seconds`, else milliseconds.
    Ttl {
        /// Whether the reply counts seconds.
        seconds: bool,
    },
}

/// How `request` (a `spec` command) is compared, or `None` when it is not checked: writes,
/// reads whose reply is random or cursor-dependent, and reads of more than one key (their
/// keys may live in other lanes).
pub fn compare_for(spec: &CommandSpec, request: &Request) -> Option<Compare> {
    if spec.access != Access::Read {
        return None;
    }
    match spec.name {
        // Random, cursor-dependent, encoding-dependent, or a side effect only.
        "SRANDMEMBER" | "HRANDFIELD" | "ZRANDMEMBER" | "SSCAN" | "HSCAN" | "ZSCAN" | "DUMP"
        | "TOUCH" | "LOLWUT" => None,
        // Their first argument is a key count, not a key.
        "ZDIFF" | "ZINTER" | "ZUNION" => None,
        "SMEMBERS" | "HKEYS" | "HVALS" => Some(Compare::Unordered),
        "HGETALL" => Some(Compare::Pairs),
        "SINTER" | "SUNION" | "SDIFF" => (request.argc() == 2).then_some(Compare::Unordered),
        "MGET" | "EXISTS" => (request.argc() == 2).then_some(Compare::Exact),
        "ZSCORE" | "ZMSCORE" | "ZRANGE" | "ZRANGEBYSCORE" | "ZRANGEBYLEX" | "ZREVRANGE"
        | "ZREVRANGEBYSCORE" | "ZREVRANGEBYLEX" | "ZRANK" | "ZREVRANK" | "GEODIST" | "GEOPOS"
        | "GEOSEARCH" | "GEORADIUS" | "GEORADIUSBYMEMBER" => Some(Compare::Numbers),
        "TTL" => Some(Compare::Ttl { seconds: true }),
        "PTTL" => Some(Compare::Ttl { seconds: false }),
        _ => Some(Compare::Exact),
    }
}

/// When a read ran on its server: after it was sent, before its reply came back.
#[derive(Debug, Clone, Copy)]
pub struct ReadTime {
    /// When it was sent.
    pub sent: Instant,
    /// When its reply came back.
    pub answered: Instant,
}

impl ReadTime {
    /// How long after this read a `later` one ran: at least from this reply to its
    /// sending, at most from this sending to its reply.
    pub fn until(&self, later: &ReadTime) -> Apart {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Apart {
            min_ms: ms(later.sent.saturating_duration_since(self.answered)),
            max_ms: ms(later.answered.saturating_duration_since(self.sent)),
        }
    }
}

/// Bounds on the time between the source's read and the target's, in milliseconds. A
/// TTL counts down meanwhile: read a second after the source, the target's is a second
/// lower and right. (A lane can compare long after the source read: under capture it
/// follows the stream, which may lag by seconds.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Apart {
    /// At least this long apart.
    pub min_ms: u64,
    /// At most this long apart.
    pub max_ms: u64,
}

/// Whether the source's and the target's replies, read at the same moment, agree under
/// `compare`, TTLs within `tolerance_ms`.
pub fn agree(compare: Compare, source: &[u8], target: &[u8], tolerance_ms: u64) -> bool {
    agree_apart(compare, source, target, tolerance_ms, Apart::default())
}

/// Whether the source's and the target's replies agree under `compare`, the target read
/// `apart` after the source: a TTL within `tolerance_ms` of the source's less the time
/// between the reads.
pub fn agree_apart(
    compare: Compare,
    source: &[u8],
    target: &[u8],
    tolerance_ms: u64,
    apart: Apart,
) -> bool {
    if source == target {
        return true;
    }
    match compare {
        Compare::Exact => false,
        Compare::Unordered => match (decode(source), decode(target)) {
            (Some(a), Some(b)) => canonical(&a) == canonical(&b),
            _ => false,
        },
        Compare::Pairs => pairs_agree(source, target),
        Compare::Numbers => match (decode(source), decode(target)) {
            (Some(a), Some(b)) => same_numbers(&a, &b),
            _ => false,
        },
        Compare::Ttl { seconds } => {
            match (crate::resp::integer(source), crate::resp::integer(target)) {
                (Some(a), Some(b)) if a >= 0 && b >= 0 => {
                    let unit = if seconds { 1000 } else { 1 };
                    // Whole seconds are truncated, so one more unit of slack for them.
                    let slack = i128::from(tolerance_ms) + if seconds { 1000 } else { 0 };
                    // How much lower the target's TTL is: by the time between the reads.
                    let lower = (i128::from(a) - i128::from(b)) * unit;
                    lower >= i128::from(apart.min_ms) - slack
                        && lower <= i128::from(apart.max_ms) + slack
                }
                _ => false,
            }
        }
    }
}

/// Whether two replies are the same but for how numbers are printed.
fn same_numbers(a: &OwnedFrame, b: &OwnedFrame) -> bool {
    if a == b {
        return true;
    }
    let number = |f: &OwnedFrame| -> Option<f64> {
        match f {
            OwnedFrame::BlobString { data, .. } | OwnedFrame::SimpleString { data, .. } => {
                std::str::from_utf8(data).ok()?.parse().ok()
            }
            OwnedFrame::Double { data, .. } => Some(*data),
            _ => None,
        }
    };
    match (a, b) {
        (OwnedFrame::Array { data: x, .. }, OwnedFrame::Array { data: y, .. }) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_numbers(p, q))
        }
        _ => matches!((number(a), number(b)), (Some(x), Some(y)) if x == y),
    }
}

/// One reply, decoded (RESP3 decoding reads RESP2 too).
fn decode(reply: &[u8]) -> Option<OwnedFrame> {
    match redis_protocol::resp3::decode::complete::decode(reply) {
        Ok(Some((frame, _))) => Some(frame),
        _ => None,
    }
}

/// A form of a collection reply that does not depend on element order: elements (or, for
/// a map or a flat field/value array, pairs) rendered and sorted.
fn canonical(frame: &OwnedFrame) -> Option<Vec<String>> {
    let mut items: Vec<String> = match frame {
        OwnedFrame::Array { data, .. } => data.iter().map(|f| format!("{f:?}")).collect(),
        OwnedFrame::Set { data, .. } => data.iter().map(|f| format!("{f:?}")).collect(),
        OwnedFrame::Map { data, .. } => data.iter().map(|kv| format!("{kv:?}")).collect(),
        _ => return None,
    };
    items.sort_unstable();
    Some(items)
}

/// `HGETALL` over RESP2 is a flat array of field, value, field, value: compare it as
/// pairs, so a value cannot be matched to another field.
fn pairs_agree(source: &[u8], target: &[u8]) -> bool {
    let pairs = |reply: &[u8]| -> Option<Vec<String>> {
        match decode(reply)? {
            OwnedFrame::Array { data, .. } => {
                let mut pairs: Vec<String> =
                    data.chunks(2).map(|pair| format!("{pair:?}")).collect();
                pairs.sort_unstable();
                Some(pairs)
            }
            other => canonical(&other),
        }
    };
    matches!((pairs(source), pairs(target)), (Some(a), Some(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_compare_without_order() {
        let a = b"*2\r\n$1\r\na\r\n$1\r\nb\r\n";
        let b = b"*2\r\n$1\r\nb\r\n$1\r\na\r\n";
        assert!(agree(Compare::Unordered, a, b, 0));
        assert!(!agree(Compare::Exact, a, b, 0));
        let c = b"*2\r\n$1\r\nb\r\n$1\r\nc\r\n";
        assert!(!agree(Compare::Unordered, a, c, 0));
        // RESP3 sets and maps.
        assert!(agree(
            Compare::Unordered,
            b"~2\r\n+x\r\n+y\r\n",
            b"~2\r\n+y\r\n+x\r\n",
            0
        ));
        assert!(agree(
            Compare::Unordered,
            b"%2\r\n+f\r\n+1\r\n+g\r\n+2\r\n",
            b"%2\r\n+g\r\n+2\r\n+f\r\n+1\r\n",
            0
        ));
    }

    #[test]
    fn hgetall_compares_pairs() {
        let a = b"*4\r\n$1\r\nf\r\n$1\r\n1\r\n$1\r\ng\r\n$1\r\n2\r\n";
        let b = b"*4\r\n$1\r\ng\r\n$1\r\n2\r\n$1\r\nf\r\n$1\r\n1\r\n";
        let swapped = b"*4\r\n$1\r\nf\r\n$1\r\n2\r\n$1\r\ng\r\n$1\r\n1\r\n";
        assert!(agree(Compare::Pairs, a, b, 0));
        assert!(
            !agree(Compare::Pairs, a, swapped, 0),
            "values moved to other fields"
        );
    }

    #[test]
    fn scores_compare_as_numbers() {
        // ZRANGE z 0 -1 WITHSCORES on Redis 7.0 and on Valkey 9, same data.
        let redis = b"*2\r\n$1\r\na\r\n$19\r\n0.10000000000000001\r\n";
        let valkey = b"*2\r\n$1\r\na\r\n$3\r\n0.1\r\n";
        assert!(agree(Compare::Numbers, redis, valkey, 0));
        assert!(!agree(Compare::Exact, redis, valkey, 0));
        let other = b"*2\r\n$1\r\na\r\n$3\r\n0.2\r\n";
        assert!(!agree(Compare::Numbers, redis, other, 0));
        let member = b"*2\r\n$1\r\nb\r\n$3\r\n0.1\r\n";
        assert!(!agree(Compare::Numbers, valkey, member, 0));
        // RESP3 doubles.
        assert!(agree(
            Compare::Numbers,
            b",0.10000000000000001\r\n",
            b",0.1\r\n",
            0
        ));
        assert!(agree(Compare::Numbers, b"$-1\r\n", b"$-1\r\n", 0));
    }

    #[test]
    fn ttls_within_tolerance() {
        let ttl = Compare::Ttl { seconds: false };
        assert!(agree(ttl, b":10000\r\n", b":9500\r\n", 1000));
        assert!(!agree(ttl, b":10000\r\n", b":8000\r\n", 1000));
        assert!(!agree(ttl, b":-1\r\n", b":5000\r\n", 1000000));
        assert!(agree(ttl, b":-2\r\n", b":-2\r\n", 0));
        assert!(!agree(ttl, b":-1\r\n", b":-2\r\n", 1000));
        let seconds = Compare::Ttl { seconds: true };
        assert!(agree(seconds, b":10\r\n", b":9\r\n", 0), "truncation");
        assert!(!agree(seconds, b":10\r\n", b":7\r\n", 1000));
    }

    /// A placed read compared 1.7 s after the source answered it (seen in
    /// `tests/capture.rs`: `PTTL` 997,690 on the source, 995,993 on the target).
    #[test]
    fn a_ttl_read_later_on_the_target_counts_down_meanwhile() {
        let ttl = Compare::Ttl { seconds: false };
        let (source, target) = (b":997690\r\n", b":995993\r\n");
        assert!(!agree(ttl, source, target, 1000), "read as at once");
        let apart = Apart {
            min_ms: 1650,
            max_ms: 1720,
        };
        assert!(agree_apart(ttl, source, target, 1000, apart));
        // Still no more than the tolerance either side of the elapsed time.
        assert!(!agree_apart(ttl, source, b":993000\r\n", 1000, apart));
        assert!(!agree_apart(ttl, source, b":999000\r\n", 1000, apart));
        let seconds = Compare::Ttl { seconds: true };
        let late = Apart {
            min_ms: 3000,
            max_ms: 3100,
        };
        assert!(agree_apart(seconds, b":100\r\n", b":97\r\n", 0, late));
        assert!(!agree_apart(seconds, b":100\r\n", b":101\r\n", 1000, late));
    }

    #[test]
    fn reads_are_apart_from_one_reply_to_the_other_send_and_from_one_send_to_the_other_reply() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let source = ReadTime {
            sent: at(0),
            answered: at(10),
        };
        let target = ReadTime {
            sent: at(1000),
            answered: at(1004),
        };
        assert_eq!(
            source.until(&target),
            Apart {
                min_ms: 990,
                max_ms: 1004
            }
        );
    }
}
