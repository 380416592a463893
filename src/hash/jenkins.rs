//! Bob Jenkins's two hashes: `one_at_a_time` and lookup3's `hashlittle` (`jenkins`).

use super::fnv::sx;

/// `one_at_a_time`, with nutcracker's signed-char reads.
pub fn one_at_a_time(key: &[u8]) -> u32 {
    let mut h = key.iter().fold(0u32, |mut h, &b| {
        h = h.wrapping_add(sx(b));
        h = h.wrapping_add(h << 10);
        h ^ (h >> 6)
    });
    h = h.wrapping_add(h << 3);
    h ^= h >> 11;
    h.wrapping_add(h << 15)
}

/// lookup3's initial value as nutcracker passes it.
const JENKINS_INITVAL: u32 = 13;

/// lookup3 `mix()`.
#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

/// lookup3 `final()`.
#[inline]
fn finish(mut a: u32, mut b: u32, mut c: u32) -> u32 {
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

/// Little-endian u32 from up to 4 bytes (missing high bytes are zero).
#[inline]
fn le_partial(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (8 * i)))
}

/// `jenkins`: lookup3 `hashlittle(key, len, 13)`. On little-endian machines every
/// alignment branch of the C code gives the same result, so the byte-wise form is used.
pub fn jenkins(key: &[u8]) -> u32 {
    let init = 0xdead_beef_u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(JENKINS_INITVAL);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut rest = key;
    while rest.len() > 12 {
        a = a.wrapping_add(le_partial(&rest[0..4]));
        b = b.wrapping_add(le_partial(&rest[4..8]));
        c = c.wrapping_add(le_partial(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    if rest.is_empty() {
        return c;
    }
    a = a.wrapping_add(le_partial(&rest[..rest.len().min(4)]));
    if rest.len() > 4 {
        b = b.wrapping_add(le_partial(&rest[4..rest.len().min(8)]));
    }
    if rest.len() > 8 {
        c = c.wrapping_add(le_partial(&rest[8..]));
    }
    finish(a, b, c)
}
