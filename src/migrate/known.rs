//! The known-copied set of one lane: which keys the lanes have copied since the migration
//! began, and, while it still matters, when.
//!
//! Membership is kept as 128-bit fingerprints (two salted SipHash-1-3 halves) in a sorted
//! array, plus a small sorted buffer merged into it: 16 bytes a key at rest, no pointer or
//! hash-table overhead. Two different keys share a fingerprint with probability about
//! n²/2¹²⁹ (below 10⁻²⁰ for a billion keys), which the project treats as exact.
//!
//! `copied_at` (rule 3) only matters while writes sent before the copy may still reach the
//! lane, so it lives in a small map that forgets an entry once every write with a lower
//! sequence number has been processed by this lane (see [`KnownCopied::collect`]).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};

/// A key's 128-bit fingerprint.
pub type Fingerprint = u128;

/// Salts that make fingerprints unpredictable to clients; kept in the state file so a
/// resumed migration fingerprints keys the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Salt(pub u64, pub u64);

impl Salt {
    /// Fresh salts from the clock and the address space.
    pub fn random() -> Salt {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64);
        let here = &nanos as *const u64 as u64;
        Salt(
            nanos ^ here.rotate_left(17),
            nanos.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15,
        )
    }

    /// The fingerprint of `key`.
    pub fn fingerprint(&self, key: &[u8]) -> Fingerprint {
        let half = |salt: u64| {
            let mut h = DefaultHasher::new();
            h.write_u64(salt);
            h.write(key);
            h.finish()
        };
        (u128::from(half(self.0)) << 64) | u128::from(half(self.1))
    }
}

/// Entries the insert buffer holds before it is merged into the sorted array.
const MIN_BUFFER: usize = 1024;

/// One lane's known-copied set.
#[derive(Debug, Default)]
pub struct KnownCopied {
    /// Sorted fingerprints.
    sorted: Vec<Fingerprint>,
    /// Recently added fingerprints, sorted, merged into `sorted` when large.
    buffer: Vec<Fingerprint>,
    /// `copied_at` of recent copies, until no write older than it can still arrive.
    recent: HashMap<Fingerprint, u64>,
}

impl KnownCopied {
    /// Whether `fp` has been copied.
    pub fn contains(&self, fp: Fingerprint) -> bool {
        self.buffer.binary_search(&fp).is_ok() || self.sorted.binary_search(&fp).is_ok()
    }

    /// `copied_at` of the last copy of `fp`, while it is still remembered.
    pub fn copied_at(&self, fp: Fingerprint) -> Option<u64> {
        self.recent.get(&fp).copied()
    }

    /// Record a copy of `fp` taken when the sequence counter stood at `copied_at`.
    pub fn insert(&mut self, fp: Fingerprint, copied_at: u64) {
        self.recent.insert(fp, copied_at);
        if self.contains(fp) {
            return;
        }
        let at = self.buffer.partition_point(|&x| x < fp);
        self.buffer.insert(at, fp);
        if self.buffer.len() >= MIN_BUFFER.max(self.sorted.len() / 32) {
            self.merge();
        }
    }

    /// Merge the buffer into the sorted array, allocating exactly what is needed.
    fn merge(&mut self) {
        let mut merged = Vec::with_capacity(self.sorted.len() + self.buffer.len());
        let (mut a, mut b) = (self.sorted.iter().peekable(), self.buffer.iter().peekable());
        while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
            if x < y {
                merged.push(x);
                a.next();
            } else {
                merged.push(y);
                b.next();
            }
        }
        merged.extend(a);
        merged.extend(b);
        self.sorted = merged;
        self.buffer.clear();
        self.buffer.shrink_to(MIN_BUFFER);
    }

    /// Forget `copied_at` of copies taken before `low_water`: every write with a lower
    /// sequence number has been processed by this lane, so none can need it any more.
    pub fn collect(&mut self, low_water: u64) {
        self.recent.retain(|_, &mut at| at >= low_water);
    }

    /// Keys in the set.
    pub fn len(&self) -> usize {
        self.sorted.len() + self.buffer.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the set holds (fingerprints plus the recent map's entries).
    pub fn bytes(&self) -> usize {
        (self.sorted.capacity() + self.buffer.capacity()) * 16 + self.recent.capacity() * 32
    }

    /// Drop the fingerprints (rule 8: after a complete backfill every key has been copied,
    /// so membership no longer needs checking). The `copied_at` of recent copies stays: a
    /// write in flight during a copy must still not be replayed on top of it.
    pub fn drop_membership(&mut self) {
        self.sorted = Vec::new();
        self.buffer = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_is_exact_for_inserted_keys() {
        let salt = Salt(1, 2);
        let mut known = KnownCopied::default();
        for i in 0..50_000u32 {
            known.insert(
                salt.fingerprint(format!("key:{i}").as_bytes()),
                u64::from(i),
            );
        }
        for i in 0..50_000u32 {
            assert!(known.contains(salt.fingerprint(format!("key:{i}").as_bytes())));
        }
        for i in 50_000..60_000u32 {
            assert!(!known.contains(salt.fingerprint(format!("key:{i}").as_bytes())));
        }
        assert_eq!(known.len(), 50_000);
    }

    #[test]
    fn about_sixteen_bytes_a_key_once_recent_copies_are_forgotten() {
        let salt = Salt::random();
        let mut known = KnownCopied::default();
        for i in 0..200_000u32 {
            known.insert(salt.fingerprint(&i.to_le_bytes()), 0);
        }
        known.collect(1);
        known.recent.shrink_to_fit();
        let per_key = known.bytes() as f64 / known.len() as f64;
        assert!(
            per_key <= 16.0 + 16.0 * 1024.0 / 200_000.0 + 0.5,
            "{per_key} bytes a key"
        );
    }

    #[test]
    fn copied_at_is_kept_until_collected() {
        let mut known = KnownCopied::default();
        known.insert(7, 100);
        known.insert(8, 200);
        assert_eq!(known.copied_at(7), Some(100));
        known.collect(150);
        assert_eq!((known.copied_at(7), known.copied_at(8)), (None, Some(200)));
        assert!(known.contains(7), "membership stays");
    }

    #[test]
    fn dropping_membership_keeps_recent_copies() {
        let mut known = KnownCopied::default();
        known.insert(7, 100);
        known.drop_membership();
        assert!(!known.contains(7));
        assert_eq!(known.copied_at(7), Some(100));
    }

    #[test]
    fn salts_change_fingerprints() {
        assert_ne!(Salt(1, 2).fingerprint(b"k"), Salt(3, 4).fingerprint(b"k"));
        assert_eq!(Salt(1, 2).fingerprint(b"k"), Salt(1, 2).fingerprint(b"k"));
    }
}
