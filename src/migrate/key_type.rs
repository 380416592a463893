//! Redis key types, as `TYPE` names them: what copies by type and verify match on.

use std::fmt;

/// A key's type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// No such key (`none`).
    None,
    /// `string`.
    String,
    /// `list`.
    List,
    /// `hash`.
    Hash,
    /// `set`.
    Set,
    /// `zset`.
    Zset,
    /// `stream`.
    Stream,
    /// Any other (a module's type): compared only by its DUMP payload, never copied by type.
    Other(String),
}

impl KeyType {
    /// The type `TYPE` answered.
    pub fn from_reply(name: &[u8]) -> KeyType {
        match name {
            b"none" => KeyType::None,
            b"string" => KeyType::String,
            b"list" => KeyType::List,
            b"hash" => KeyType::Hash,
            b"set" => KeyType::Set,
            b"zset" => KeyType::Zset,
            b"stream" => KeyType::Stream,
            other => KeyType::Other(String::from_utf8_lossy(other).into_owned()),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::None => "none",
            KeyType::String => "string",
            KeyType::List => "list",
            KeyType::Hash => "hash",
            KeyType::Set => "set",
            KeyType::Zset => "zset",
            KeyType::Stream => "stream",
            KeyType::Other(name) => name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "none",
            "string",
            "list",
            "hash",
            "set",
            "zset",
            "stream",
            "ReJSON-RL",
        ] {
            assert_eq!(KeyType::from_reply(name.as_bytes()).to_string(), name);
        }
        assert_eq!(KeyType::from_reply(b"zset"), KeyType::Zset);
    }
}
