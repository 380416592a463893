//! Paul Hsieh's SuperFastHash as nutcracker has it (initial hash 0, not the length).

use super::fnv::sx;

/// Little-endian 16-bit read.
#[inline]
fn get16(b: &[u8]) -> u32 {
    u32::from(b[0]) | (u32::from(b[1]) << 8)
}

/// `hsieh`. The third byte of a 3-byte tail is read through a signed char and
/// sign-extended; the single byte of a 1-byte tail is read unsigned.
pub fn hsieh(key: &[u8]) -> u32 {
    if key.is_empty() {
        return 0;
    }
    let mut hash = 0u32;
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        hash = hash.wrapping_add(get16(&chunk[0..2]));
        let tmp = (get16(&chunk[2..4]) << 11) ^ hash;
        hash = (hash << 16) ^ tmp;
        hash = hash.wrapping_add(hash >> 11);
    }
    let tail = chunks.remainder();
    match tail.len() {
        3 => {
            hash = hash.wrapping_add(get16(tail));
            hash ^= hash << 16;
            hash ^= sx(tail[2]) << 18;
            hash = hash.wrapping_add(hash >> 11);
        }
        2 => {
            hash = hash.wrapping_add(get16(tail));
            hash ^= hash << 11;
            hash = hash.wrapping_add(hash >> 17);
        }
        1 => {
            hash = hash.wrapping_add(u32::from(tail[0]));
            hash ^= hash << 10;
            hash = hash.wrapping_add(hash >> 1);
        }
        _ => {}
    }
    hash ^= hash << 3;
    hash = hash.wrapping_add(hash >> 5);
    hash ^= hash << 4;
    hash = hash.wrapping_add(hash >> 17);
    hash ^= hash << 25;
    hash.wrapping_add(hash >> 6)
}
