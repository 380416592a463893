//! The three CRC hashes: `crc16`, `crc32` (libmemcached's 15-bit variant) and `crc32a`.

/// CRC-16/XMODEM table (polynomial 0x1021), built at compile time.
const CRC16_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u32) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc & 0xffff;
        i += 1;
    }
    table
};

/// Reflected CRC-32 (IEEE, 0xEDB88320) table, as libmemcached uses it.
const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// `crc16`: the XMODEM table, but the running value is a u32 that is never masked,
/// so its high bits keep the shifted history. Only the low 16 bits equal CRC-16/XMODEM.
pub fn crc16(key: &[u8]) -> u32 {
    key.iter().fold(0u32, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[(((crc >> 8) ^ u32::from(b)) & 0xff) as usize]
    })
}

/// `crc32`: libmemcached-compatible, returning only 15 bits (0..=32767).
pub fn crc32(key: &[u8]) -> u32 {
    let crc = key.iter().fold(u32::MAX, |crc, &b| {
        (crc >> 8) ^ CRC32_TABLE[((crc ^ u32::from(b)) & 0xff) as usize]
    });
    ((!crc) >> 16) & 0x7fff
}

/// `crc32a`: the standard CRC-32, the same as zlib's `crc32()`.
pub fn crc32a(key: &[u8]) -> u32 {
    crc32fast::hash(key)
}
