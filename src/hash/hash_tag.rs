//! Hash tags: hash only part of a key so that related keys land on one server.

/// A pool's `hash_tag`: two delimiter bytes, such as `{}` or `$$`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashTag {
    /// The byte that opens the tag.
    pub open: u8,
    /// The byte that closes the tag (may equal `open`).
    pub close: u8,
}

impl HashTag {
    /// The bytes of `key` that are hashed: the content between the first `open` and the
    /// first `close` after it, when both exist and the content is non-empty; otherwise the
    /// whole key (nutcracker's `server_pool_idx`).
    pub fn routing_bytes<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        let Some(start) = key.iter().position(|&b| b == self.open) else {
            return key;
        };
        let after = &key[start + 1..];
        match after.iter().position(|&b| b == self.close) {
            Some(len) if len > 0 => &after[..len],
            _ => key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HashTag;

    const CURLY: HashTag = HashTag {
        open: b'{',
        close: b'}',
    };

    #[test]
    fn curly_braces() {
        assert_eq!(CURLY.routing_bytes(b"user:{42}:profile"), b"42");
        assert_eq!(CURLY.routing_bytes(b"{}x"), b"{}x");
        assert_eq!(CURLY.routing_bytes(b"a{b"), b"a{b");
        assert_eq!(CURLY.routing_bytes(b"z{}"), b"z{}");
        assert_eq!(CURLY.routing_bytes(b"a{}{b}"), b"a{}{b}");
        assert_eq!(CURLY.routing_bytes(b"}a{b}"), b"b");
        assert_eq!(CURLY.routing_bytes(b""), b"");
    }

    #[test]
    fn same_delimiter_twice() {
        let dollar = HashTag {
            open: b'$',
            close: b'$',
        };
        assert_eq!(dollar.routing_bytes(b"$a$x"), b"a");
        assert_eq!(dollar.routing_bytes(b"$$x"), b"$$x");
    }
}
