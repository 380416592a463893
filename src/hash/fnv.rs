//! The four FNV variants, as nutcracker computes them on x86_64.
//!
//! Every byte is read through a signed `char` in the C code, so bytes >= 0x80 are
//! sign-extended before they are mixed in; [`sx`] reproduces that.

/// `(uint32_t)(char)b` on x86_64: the byte sign-extended to 32 bits.
#[inline]
pub(crate) fn sx(b: u8) -> u32 {
    b as i8 as i32 as u32
}

/// Low 32 bits of the FNV-64 offset basis (0xcbf29ce484222325).
const FNV_64_INIT_LOW: u32 = 0x8422_2325;
/// Low 32 bits of the FNV-64 prime (0x100000001b3).
const FNV_64_PRIME_LOW: u32 = 0x0000_01b3;
/// The FNV-32 offset basis.
const FNV_32_INIT: u32 = 0x811c_9dc5;
/// The FNV-32 prime.
const FNV_32_PRIME: u32 = 0x0100_0193;

/// `fnv1_64`: computed in u64 and truncated, which equals this u32 loop, since the
/// low 32 bits of a product depend only on the low 32 bits of its factors.
pub fn fnv1_64(key: &[u8]) -> u32 {
    key.iter().fold(FNV_64_INIT_LOW, |h, &b| {
        h.wrapping_mul(FNV_64_PRIME_LOW) ^ sx(b)
    })
}

/// `fnv1a_64`, nutcracker's default: explicitly 32-bit arithmetic with the 64-bit constants truncated.
pub fn fnv1a_64(key: &[u8]) -> u32 {
    key.iter().fold(FNV_64_INIT_LOW, |h, &b| {
        (h ^ sx(b)).wrapping_mul(FNV_64_PRIME_LOW)
    })
}

/// `fnv1_32`: multiply, then xor.
pub fn fnv1_32(key: &[u8]) -> u32 {
    key.iter()
        .fold(FNV_32_INIT, |h, &b| h.wrapping_mul(FNV_32_PRIME) ^ sx(b))
}

/// `fnv1a_32`: xor, then multiply.
pub fn fnv1a_32(key: &[u8]) -> u32 {
    key.iter()
        .fold(FNV_32_INIT, |h, &b| (h ^ sx(b)).wrapping_mul(FNV_32_PRIME))
}
