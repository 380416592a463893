//! Key placement exactly as nutcracker 0.5.0 computes it on x86_64: the twelve hash
//! functions, hash-tag extraction, and the ketama / modula / random continuum.
//!
//! Everything here is checked against placements captured from the real nutcracker
//! (`tests/data/twemproxy`) and against a live nutcracker in the integration tests.
//!
//! May import: nothing of the crate (the bottom layer).

mod continuum;
mod crc;
mod fnv;
mod hash_tag;
mod hsieh;
mod jenkins;
mod murmur;
mod placement;

pub use continuum::{Continuum, ContinuumServer, Distribution, ketama_points};
pub use hash_tag::HashTag;
pub use placement::{Placement, PlacementServer};

use md5::{Digest, Md5};

/// One of nutcracker's twelve key hash functions (the pool's `hash:` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashKind {
    /// Bob Jenkins's one-at-a-time hash.
    OneAtATime,
    /// The first four bytes of the MD5 digest, little-endian.
    Md5,
    /// XMODEM CRC-16 kept in an unmasked u32.
    Crc16,
    /// libmemcached's 15-bit CRC-32.
    Crc32,
    /// The standard CRC-32.
    Crc32a,
    /// FNV-1 with the 64-bit constants, truncated to 32 bits.
    Fnv1_64,
    /// FNV-1a with the 64-bit constants in 32-bit arithmetic (nutcracker's default).
    Fnv1a64,
    /// FNV-1, 32-bit.
    Fnv1_32,
    /// FNV-1a, 32-bit.
    Fnv1a32,
    /// Paul Hsieh's SuperFastHash.
    Hsieh,
    /// MurmurHash2 (nutcracker's variant).
    Murmur,
    /// Bob Jenkins's lookup3 `hashlittle`.
    Jenkins,
}

impl HashKind {
    /// Every hash with its config name, in nutcracker's order.
    pub const ALL: [(HashKind, &'static str); 12] = [
        (HashKind::OneAtATime, "one_at_a_time"),
        (HashKind::Md5, "md5"),
        (HashKind::Crc16, "crc16"),
        (HashKind::Crc32, "crc32"),
        (HashKind::Crc32a, "crc32a"),
        (HashKind::Fnv1_64, "fnv1_64"),
        (HashKind::Fnv1a64, "fnv1a_64"),
        (HashKind::Fnv1_32, "fnv1_32"),
        (HashKind::Fnv1a32, "fnv1a_32"),
        (HashKind::Hsieh, "hsieh"),
        (HashKind::Murmur, "murmur"),
        (HashKind::Jenkins, "jenkins"),
    ];

    /// The hash named as in a nutcracker config (`fnv1a_64`, `md5`, ...), matched exactly.
    pub fn from_name(name: &str) -> Option<HashKind> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(kind, _)| *kind)
    }

    /// The config name of this hash.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(kind, _)| *kind == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }

    /// Hash `key` as nutcracker would (no hash-tag handling, no empty-key shortcut).
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            HashKind::OneAtATime => jenkins::one_at_a_time(key),
            HashKind::Md5 => md5_u32(key),
            HashKind::Crc16 => crc::crc16(key),
            HashKind::Crc32 => crc::crc32(key),
            HashKind::Crc32a => crc::crc32a(key),
            HashKind::Fnv1_64 => fnv::fnv1_64(key),
            HashKind::Fnv1a64 => fnv::fnv1a_64(key),
            HashKind::Fnv1_32 => fnv::fnv1_32(key),
            HashKind::Fnv1a32 => fnv::fnv1a_32(key),
            HashKind::Hsieh => hsieh::hsieh(key),
            HashKind::Murmur => murmur::murmur(key),
            HashKind::Jenkins => jenkins::jenkins(key),
        }
    }
}

/// The full MD5 digest; ketama takes four points from each.
pub(crate) fn md5_digest(bytes: &[u8]) -> [u8; 16] {
    Md5::digest(bytes).into()
}

/// `md5`: the digest's first four bytes as a little-endian u32.
fn md5_u32(key: &[u8]) -> u32 {
    let d = md5_digest(key);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

#[cfg(test)]
mod tests {
    use super::HashKind;

    /// Known answers from TWEMPROXY.md §2.4 (validated against the real binary).
    #[test]
    fn known_answers() {
        let table: [(&str, u32, u32); 12] = [
            ("one_at_a_time", 596015325, 3328923845),
            ("md5", 3675831724, 2498230565),
            ("crc16", 205303702, 2257596867),
            ("crc32", 3187, 19444),
            ("crc32a", 2356372769, 3421780262),
            ("fnv1_64", 1805727027, 737744598),
            ("fnv1a_64", 4275688823, 600231420),
            ("fnv1_32", 1083137555, 605325334),
            ("fnv1a_32", 2851307223, 3146166556),
            ("hsieh", 1993659431, 3841726064),
            ("murmur", 3303027599, 3077965456),
            ("jenkins", 2583187353, 427260662),
        ];
        for (name, foo, digits) in table {
            let kind = HashKind::from_name(name).expect("known hash name");
            assert_eq!(kind.name(), name);
            assert_eq!(kind.hash(b"foo"), foo, "{name}(\"foo\")");
            assert_eq!(kind.hash(b"123456789"), digits, "{name}(\"123456789\")");
        }
    }

    #[test]
    fn unknown_names_are_rejected() {
        assert_eq!(HashKind::from_name("FNV1A_64"), None);
        assert_eq!(HashKind::from_name("sha1"), None);
        assert_eq!(HashKind::from_name(""), None);
    }

    /// Every length up to two lookup3 blocks, so each tail branch runs at least once.
    #[test]
    fn every_tail_length_is_stable() {
        let bytes: Vec<u8> = (0u8..40).map(|i| i.wrapping_mul(37) ^ 0x85).collect();
        for len in 0..bytes.len() {
            for (kind, _) in HashKind::ALL {
                // Each call is deterministic and never panics on any length.
                assert_eq!(kind.hash(&bytes[..len]), kind.hash(&bytes[..len]));
            }
        }
    }
}
