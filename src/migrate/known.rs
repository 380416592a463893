//! The known-copied set of one lane: which keys the lanes have copied since the migration
//! began, whether each key's last copy carried a TTL, and, while it still matters, when.
//!
//! Membership is kept as 128-bit fingerprints (two salted SipHash-1-3 halves, the lowest
//! bit cleared) in a sorted array, plus a small sorted buffer merged into it: 16 bytes a
//! key at rest, no pointer or hash-table overhead. The cleared lowest bit of a stored
//! fingerprint is the key's TTL flag: set when its last copy carried a TTL. Two different
//! keys share a fingerprint with probability about n²/2¹²⁸ (below 10⁻¹⁹ for a billion
//! keys), which the project treats as exact.
//!
//! The TTL flag closes a race replays cannot see: a write the source applied just before
//! the key expired would be replayed on the target just after its copy expired (or the
//! other way round), and both could answer the same. A key whose last copy carried a TTL
//! is therefore copied at every write, never replayed (the lane rules' TTL clause); every
//! write that gives a key a TTL is copied, so the flag is never missing on a key that has
//! one.
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

    /// The fingerprint of `key` (its lowest bit clear: room for the TTL flag).
    pub fn fingerprint(&self, key: &[u8]) -> Fingerprint {
        let half = |salt: u64| {
            let mut h = DefaultHasher::new();
            h.write_u64(salt);
            h.write(key);
            h.finish()
        };
        ((u128::from(half(self.0)) << 64) | u128::from(half(self.1))) & !EXPIRES
    }
}

/// The TTL flag: the lowest bit of a stored fingerprint.
const EXPIRES: Fingerprint = 1;

/// Entries the insert buffer holds before it is merged into the sorted array.
const MIN_BUFFER: usize = 1024;

/// One lane's known-copied set.
#[derive(Debug, Default)]
pub struct KnownCopied {
    /// Sorted fingerprints, each with its TTL flag in the lowest bit. Clearing that bit
    /// keeps the order, so a search by the bare fingerprint finds the entry.
    sorted: Vec<Fingerprint>,
    /// Recently added fingerprints, sorted like `sorted`, merged into it when large.
    buffer: Vec<Fingerprint>,
    /// `copied_at` of recent copies, until no write older than it can still arrive.
    recent: HashMap<Fingerprint, u64>,
    /// Membership was dropped (rule 8): every key counts as copied, and only keys whose
    /// last copy carried a TTL keep an entry (for their flag).
    every_key: bool,
}

impl KnownCopied {
    /// Whether `fp` has an entry (copied, or flagged after the drop).
    pub fn contains(&self, fp: Fingerprint) -> bool {
        self.entry(fp).is_some()
    }

    /// Whether `fp` counts as copied: it was, or membership was dropped.
    pub fn is_copied(&self, fp: Fingerprint) -> bool {
        self.every_key || self.contains(fp)
    }

    /// Whether the last copy of `fp` carried a TTL (so its writes must be copied).
    pub fn expires(&self, fp: Fingerprint) -> bool {
        self.entry(fp).is_some_and(|e| e & EXPIRES != 0)
    }

    /// The stored entry of `fp`, flag included.
    fn entry(&self, fp: Fingerprint) -> Option<Fingerprint> {
        let get = |list: &[Fingerprint]| position(list, fp).map(|i| list[i]);
        get(&self.buffer).or_else(|| get(&self.sorted))
    }

    /// Set or clear the flag of an existing entry; false when `fp` has none.
    fn set_flag(&mut self, fp: Fingerprint, expires: bool) -> bool {
        for list in [&mut self.buffer, &mut self.sorted] {
            if let Some(i) = position(list, fp) {
                list[i] = if expires { fp | EXPIRES } else { fp };
                return true;
            }
        }
        false
    }

    /// `copied_at` of the last copy of `fp`, while it is still remembered.
    pub fn copied_at(&self, fp: Fingerprint) -> Option<u64> {
        if self.recent.is_empty() {
            return None;
        }
        self.recent.get(&fp).copied()
    }

    /// Whether some copy's `copied_at` is still remembered.
    pub fn has_recent(&self) -> bool {
        !self.recent.is_empty()
    }

    /// Whether every key may be replayed as far as this set knows, without looking a key
    /// up: membership dropped, no key flagged for a TTL, no recent copy. Saves hashing the
    /// key on the hot path of a migration whose keys have no TTLs.
    pub fn allows_every_key(&self) -> bool {
        self.every_key && self.sorted.is_empty() && self.buffer.is_empty() && self.recent.is_empty()
    }

    /// Record a copy of `fp` taken when the sequence counter stood at `copied_at`, which
    /// carried a TTL when `expires`. Returns whether `fp` gained an entry.
    pub fn insert(&mut self, fp: Fingerprint, copied_at: u64, expires: bool) -> bool {
        self.recent.insert(fp, copied_at);
        if self.set_flag(fp, expires) || (self.every_key && !expires) {
            return false;
        }
        let stored = if expires { fp | EXPIRES } else { fp };
        let at = self.buffer.partition_point(|&x| x < stored);
        self.buffer.insert(at, stored);
        if self.buffer.len() >= MIN_BUFFER.max(self.sorted.len() / 32) {
            self.merge();
        }
        true
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

    /// Drop the fingerprints of keys without a TTL (rule 8: after a complete backfill every
    /// key has been copied, so membership no longer needs checking). Flagged keys keep
    /// their entry: their writes are still copied. The `copied_at` of recent copies stays:
    /// a write in flight during a copy must still not be replayed on top of it.
    pub fn drop_membership(&mut self) {
        self.merge();
        self.sorted.retain(|e| e & EXPIRES != 0);
        self.sorted.shrink_to_fit();
        self.every_key = true;
    }
}

/// Where `fp` is stored in a sorted `list`, whatever its TTL flag.
fn position(list: &[Fingerprint], fp: Fingerprint) -> Option<usize> {
    list.binary_search_by_key(&fp, |e| e & !EXPIRES).ok()
}

/// Lock a lane's set; a poisoned lock (a panic elsewhere while holding it) still holds a
/// consistent set, since every method finishes its change before returning.
pub fn lock(known: &std::sync::Mutex<KnownCopied>) -> std::sync::MutexGuard<'_, KnownCopied> {
    known
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
                i % 3 == 0,
            );
        }
        for i in 0..50_000u32 {
            let fp = salt.fingerprint(format!("key:{i}").as_bytes());
            assert!(known.contains(fp));
            assert_eq!(known.expires(fp), i % 3 == 0, "key:{i}");
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
            known.insert(salt.fingerprint(&i.to_le_bytes()), 0, i % 5 == 0);
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
        known.insert(6, 100, false);
        known.insert(8, 200, false);
        assert_eq!(known.copied_at(6), Some(100));
        known.collect(150);
        assert_eq!((known.copied_at(6), known.copied_at(8)), (None, Some(200)));
        assert!(known.contains(6), "membership stays");
    }

    #[test]
    fn dropping_membership_keeps_recent_copies() {
        let mut known = KnownCopied::default();
        known.insert(6, 100, false);
        known.drop_membership();
        assert!(!known.contains(6));
        assert!(known.is_copied(6), "every key counts as copied");
        assert_eq!(known.copied_at(6), Some(100));
    }

    #[test]
    fn ttl_flags_follow_the_last_copy_and_outlive_the_drop() {
        let salt = Salt(5, 6);
        let (a, b, c) = (
            salt.fingerprint(b"a"),
            salt.fingerprint(b"b"),
            salt.fingerprint(b"c"),
        );
        let mut known = KnownCopied::default();
        assert!(known.insert(a, 1, true));
        assert!(known.insert(b, 2, false));
        assert!(
            !known.insert(b, 3, true),
            "an existing entry changes its flag"
        );
        assert!(known.expires(a) && known.expires(b));
        assert!(!known.insert(b, 4, false));
        assert!(!known.expires(b) && known.contains(b));
        known.merge();
        assert!(
            !known.insert(a, 5, true) && known.expires(a),
            "flag found in the array"
        );

        known.drop_membership();
        assert!(known.expires(a), "a flagged key keeps its entry");
        assert!(!known.contains(b), "an unflagged key's entry goes");
        assert!(known.is_copied(b) && known.is_copied(c));
        assert!(!known.insert(c, 6, false), "no entry for a key without TTL");
        assert!(!known.contains(c));
        assert!(known.insert(c, 7, true), "a key given a TTL gets one");
        assert!(known.expires(c));
        assert!(!known.insert(c, 8, false));
        assert!(!known.expires(c));
    }

    #[test]
    fn salts_change_fingerprints() {
        assert_ne!(Salt(1, 2).fingerprint(b"k"), Salt(3, 4).fingerprint(b"k"));
        assert_eq!(
            Salt(1, 2).fingerprint(b"k") & EXPIRES,
            0,
            "room for the flag"
        );
        assert_eq!(Salt(1, 2).fingerprint(b"k"), Salt(1, 2).fingerprint(b"k"));
    }
}
