//! Server engines: which server a pool's server is (Redis or Valkey, and its version), read
//! from `INFO server`, and what follows from it for a migration: the DUMP payload format
//! it writes and accepts, and the commands (or argument forms) it lacks.
//!
//! Pure: no I/O. The migration engine asks each server for `INFO server` at start and
//! keeps an [`Engine`] per side.
//!
//! May import: `command`, `resp`.

use std::fmt;

use crate::command::CommandSpec;
use crate::resp::{Request, info_field};

/// A server's product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Product {
    /// Redis (`redis_version`, no `server_name`).
    Redis,
    /// Valkey (`server_name:valkey`, `valkey_version`).
    Valkey,
}

/// A version `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parse `7.2.4` (missing parts are 0); `None` for anything else.
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next().unwrap_or(Some(0))?;
        let patch = parts.next().unwrap_or(Some(0))?;
        Some(Version(major, minor, patch))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One server's engine, as its `INFO server` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Engine {
    /// Redis or Valkey.
    pub product: Product,
    /// The product's own version (`valkey_version` for Valkey).
    pub version: Version,
    /// The Redis version it is compatible with (`redis_version`; Valkey says 7.2.4).
    pub redis_compatible: Version,
}

impl Engine {
    /// Read an engine from the text of `INFO server`; `None` when it has no
    /// `redis_version` line.
    pub fn from_info(info: &str) -> Option<Engine> {
        let field = |name: &str| info_field(info, name).map(str::to_string);
        let redis_compatible = Version::parse(&field("redis_version")?)?;
        let valkey = field("valkey_version").and_then(|v| Version::parse(&v));
        let named_valkey = field("server_name").is_some_and(|n| n.eq_ignore_ascii_case("valkey"));
        Some(match valkey {
            Some(version) => Engine {
                product: Product::Valkey,
                version,
                redis_compatible,
            },
            // A Valkey before `valkey_version` existed (7.2.x) names itself only.
            None if named_valkey => Engine {
                product: Product::Valkey,
                version: redis_compatible,
                redis_compatible,
            },
            None => Engine {
                product: Product::Redis,
                version: redis_compatible,
                redis_compatible,
            },
        })
    }

    /// The RDB version of the DUMP payloads it writes, when known for its version.
    pub fn rdb_version(&self) -> Option<u16> {
        let Version(major, minor, _) = self.version;
        Some(match (self.product, major, minor) {
            (Product::Valkey, 7, _) | (Product::Valkey, 8, _) => 11,
            (Product::Valkey, 9, _) => 80,
            (Product::Valkey, _, _) => return None,
            (Product::Redis, 0..=3, _) => return None,
            (Product::Redis, 4, _) => 8,
            (Product::Redis, 5 | 6, _) => 9,
            (Product::Redis, 7, 0 | 1) => 10,
            (Product::Redis, 7, 2 | 3) => 11,
            (Product::Redis, 7, _) => 12,
            (Product::Redis, _, _) => return None,
        })
    }

    /// Whether it restores a DUMP payload of RDB version `payload` (`None`: unknown for
    /// this version; try RESTORE and learn from the answer). Redis takes any version up
    /// to its own. Valkey 9 writes 80 and takes its own and Redis's up to 11, but not the
    /// 12 to 79 that later Redis versions write.
    pub fn accepts(&self, payload: u16) -> Option<bool> {
        let own = self.rdb_version()?;
        Some(match self.product {
            Product::Redis => payload <= own,
            Product::Valkey => payload <= 11 || (payload >= 80 && payload <= own),
        })
    }

    /// Whether it lacks the command or argument form of `request` (a `spec` command),
    /// with the version that brought it: what the readiness report lists, and why a
    /// write the target lacks is copied instead of replayed.
    pub fn lacks(&self, spec: &CommandSpec, request: &Request) -> Option<Requirement> {
        let need = requirement(spec, request)?;
        (self.redis_compatible < need.since).then_some(need)
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.product {
            Product::Redis => "Redis",
            Product::Valkey => "Valkey",
        };
        write!(f, "{name} {}", self.version)
    }
}

/// The DUMP payload's RDB version: the two bytes before its 8-byte checksum
/// (little-endian), or `None` for a payload too short to have them.
pub fn payload_rdb_version(payload: &[u8]) -> Option<u16> {
    let end = payload.len().checked_sub(8)?;
    let start = end.checked_sub(2)?;
    Some(u16::from_le_bytes([payload[start], payload[start + 1]]))
}

/// A command or argument form and the Redis version that brought it (every Valkey has
/// them all: Valkey began as Redis 7.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// What is needed, for people (`GETDEL`, `SET ... GET`, `EXPIRE ... GT`).
    pub form: &'static str,
    /// The first Redis version with it.
    pub since: Version,
}

/// The newest version any entry of `COMMANDS_SINCE` or [`requirement`] names: a server
/// at least this new lacks nothing there, and the per-request check stops at once.
pub const NEWEST_REQUIREMENT: Version = Version(7, 2, 0);

/// Commands that need a newer Redis than 6.0 whatever their arguments.
const COMMANDS_SINCE: &[(&str, Version)] = &[
    ("GETDEL", Version(6, 2, 0)),
    ("GETEX", Version(6, 2, 0)),
    ("COPY", Version(6, 2, 0)),
    ("LMOVE", Version(6, 2, 0)),
    ("ZRANGESTORE", Version(6, 2, 0)),
    ("HRANDFIELD", Version(6, 2, 0)),
    ("ZRANDMEMBER", Version(6, 2, 0)),
    ("SMISMEMBER", Version(6, 2, 0)),
    ("ZMSCORE", Version(6, 2, 0)),
    ("ZDIFF", Version(6, 2, 0)),
    ("ZDIFFSTORE", Version(6, 2, 0)),
    ("ZINTER", Version(6, 2, 0)),
    ("ZUNION", Version(6, 2, 0)),
    ("GEOSEARCH", Version(6, 2, 0)),
    ("GEOSEARCHSTORE", Version(6, 2, 0)),
    ("LPOS", Version(6, 0, 6)),
];

/// The argument forms newer than Redis 6.0 of commands that exist there, as people write
/// them.
const FORMS: &[(&str, &str)] = &[
    ("EXPIRE", "EXPIRE ... NX|XX|GT|LT"),
    ("PEXPIRE", "PEXPIRE ... NX|XX|GT|LT"),
    ("EXPIREAT", "EXPIREAT ... NX|XX|GT|LT"),
    ("PEXPIREAT", "PEXPIREAT ... NX|XX|GT|LT"),
    ("ZADD", "ZADD ... GT|LT"),
    ("ZRANGE", "ZRANGE ... BYSCORE|BYLEX|REV|LIMIT"),
    ("LPOP", "LPOP key count"),
    ("RPOP", "RPOP key count"),
    ("ZRANK", "ZRANK ... WITHSCORE"),
    ("ZREVRANK", "ZREVRANK ... WITHSCORE"),
    ("BITCOUNT", "BITCOUNT ... BIT|BYTE"),
    ("BITPOS", "BITPOS ... BIT|BYTE"),
];

/// The newer form of command `name` (its name when it has none in [`FORMS`]).
fn form_of(name: &'static str) -> &'static str {
    FORMS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(name, |(_, form)| form)
}

/// What `request` needs beyond Redis 6.0, if anything.
pub fn requirement(spec: &CommandSpec, request: &Request) -> Option<Requirement> {
    if let Some(&(form, since)) = COMMANDS_SINCE.iter().find(|(n, _)| *n == spec.name) {
        return Some(Requirement { form, since });
    }
    // Whether one of `words` is among the arguments from index `from` on (options
    // follow the key and the command's fixed arguments).
    let has = |from: usize, words: &[&[u8]]| {
        request
            .args()
            .skip(from)
            .any(|a| words.iter().any(|w| a.eq_ignore_ascii_case(w)))
    };
    // ZADD's options come before the first score: stop at the first number.
    let zadd_has = |words: &[&[u8]]| {
        request
            .args()
            .skip(2)
            .take_while(|a| std::str::from_utf8(a).is_ok_and(|t| t.parse::<f64>().is_err()))
            .any(|a| words.iter().any(|w| a.eq_ignore_ascii_case(w)))
    };
    let need = |form, since| Some(Requirement { form, since });
    match spec.name {
        "SET" if has(3, &[b"GET"]) => need("SET ... GET", Version(6, 2, 0)),
        "SET" if has(3, &[b"EXAT", b"PXAT"]) => need("SET ... EXAT|PXAT", Version(6, 2, 0)),
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" if request.argc() > 3 => {
            need(form_of(spec.name), Version(7, 0, 0))
        }
        "ZADD" if zadd_has(&[b"GT", b"LT"]) => need(form_of(spec.name), Version(6, 2, 0)),
        "ZRANGE" if has(4, &[b"BYSCORE", b"BYLEX", b"REV", b"LIMIT"]) => {
            need(form_of(spec.name), Version(6, 2, 0))
        }
        "LPOP" | "RPOP" if request.argc() > 2 => need(form_of(spec.name), Version(6, 2, 0)),
        "ZRANK" | "ZREVRANK" if request.argc() > 3 => need(form_of(spec.name), Version(7, 2, 0)),
        "BITCOUNT" | "BITPOS" if has(3, &[b"BIT", b"BYTE"]) => {
            need(form_of(spec.name), Version(7, 0, 0))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIS_7_0: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
    const VALKEY_9: &str =
        "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2\r\n";
    const VALKEY_8: &str =
        "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.8\r\n";
    const REDIS_6_0: &str = "# Server\r\nredis_version:6.0.9\r\n";

    fn engine(info: &str) -> Engine {
        Engine::from_info(info).expect("engine")
    }

    #[test]
    fn engines_from_info() {
        assert_eq!(engine(REDIS_7_0).product, Product::Redis);
        assert_eq!(engine(REDIS_7_0).to_string(), "Redis 7.0.15");
        assert_eq!(engine(VALKEY_9).to_string(), "Valkey 9.1.2");
        assert_eq!(engine(VALKEY_9).redis_compatible, Version(7, 2, 4));
        assert_eq!(
            engine("redis_version:7.2.4\r\nserver_name:valkey\r\n").product,
            Product::Valkey
        );
        assert!(Engine::from_info("nothing here").is_none());
    }

    /// The payload versions and refusals measured across these engines (see
    /// tests/engines.rs for the same against real servers).
    #[test]
    fn payload_formats() {
        let (r7, v9, v8, r6) = (
            engine(REDIS_7_0),
            engine(VALKEY_9),
            engine(VALKEY_8),
            engine(REDIS_6_0),
        );
        assert_eq!(
            [r7, v9, v8, r6].map(|e| e.rdb_version()),
            [Some(10), Some(80), Some(11), Some(9)]
        );
        assert_eq!(v9.accepts(10), Some(true), "Redis 7.0 into Valkey 9");
        assert_eq!(v8.accepts(10), Some(true), "Redis 7.0 into Valkey 8");
        assert_eq!(r6.accepts(10), Some(false), "Redis 7.0 into Redis 6");
        assert_eq!(r7.accepts(80), Some(false), "Valkey 9 back into Redis 7.0");
        assert_eq!(v8.accepts(80), Some(false), "Valkey 9 into Valkey 8");
        assert_eq!(v9.accepts(12), Some(false), "Redis 7.4 into Valkey 9");
        assert_eq!(r7.accepts(9), Some(true));
        let future = engine("redis_version:9.0.0\r\n");
        assert_eq!(future.accepts(10), None, "unknown: learned by trying");
    }

    #[test]
    fn payload_version_bytes() {
        // `DUMP` of "hello" on Redis 7.0: RDB 10, then the checksum.
        let payload = b"\x00\x05hello\x0a\x00cr\xdfve4 \x0a";
        assert_eq!(payload_rdb_version(payload), Some(10));
        assert_eq!(payload_rdb_version(b"short"), None);
    }

    fn request(words: &[&str]) -> Request {
        let mut buf = bytes::BytesMut::new();
        crate::resp::encode::command(&mut buf, words);
        match crate::resp::RequestParser::default().next(&mut buf) {
            Ok(Some(crate::resp::Parsed::Request(r))) => r,
            other => panic!("parse: {other:?}"),
        }
    }

    fn lacks(info: &str, words: &[&str]) -> Option<&'static str> {
        let r = request(words);
        let spec = crate::command::lookup(r.name()).expect("known");
        engine(info).lacks(spec, &r).map(|n| n.form)
    }

    #[test]
    fn no_requirement_is_newer_than_the_newest() {
        let forms = [
            &["GETDEL", "k"][..],
            &["ZRANK", "z", "m", "WITHSCORE"],
            &["EXPIRE", "k", "1", "GT"],
            &["BITCOUNT", "k", "0", "1", "BIT"],
        ];
        for words in forms {
            let r = request(words);
            let spec = crate::command::lookup(r.name()).expect("known");
            let need = requirement(spec, &r).expect("a requirement");
            assert!(need.since <= NEWEST_REQUIREMENT, "{words:?}");
        }
        for (_, since) in COMMANDS_SINCE {
            assert!(*since <= NEWEST_REQUIREMENT);
        }
    }

    #[test]
    fn commands_older_servers_lack() {
        assert_eq!(lacks(REDIS_6_0, &["GETDEL", "k"]), Some("GETDEL"));
        assert_eq!(
            lacks(REDIS_6_0, &["SET", "k", "v", "GET"]),
            Some("SET ... GET")
        );
        assert_eq!(lacks(REDIS_6_0, &["SET", "k", "v", "EX", "1"]), None);
        assert_eq!(
            lacks(REDIS_6_0, &["SET", "k", "GET"]),
            None,
            "a value, not GET"
        );
        assert_eq!(
            lacks(REDIS_6_0, &["ZADD", "z", "1", "GT"]),
            None,
            "a member"
        );
        assert_eq!(
            lacks(REDIS_6_0, &["ZADD", "z", "GT", "1", "m"]),
            Some("ZADD ... GT|LT")
        );
        assert_eq!(
            lacks(REDIS_6_0, &["EXPIRE", "k", "1", "GT"]),
            Some("EXPIRE ... NX|XX|GT|LT")
        );
        assert_eq!(lacks(REDIS_6_0, &["EXPIRE", "k", "1"]), None);
        assert_eq!(lacks(REDIS_7_0, &["EXPIRE", "k", "1", "GT"]), None);
        assert_eq!(
            lacks(REDIS_7_0, &["ZRANK", "z", "m", "WITHSCORE"]),
            Some("ZRANK ... WITHSCORE")
        );
        for words in [
            &["GETDEL", "k"][..],
            &["ZRANK", "z", "m", "WITHSCORE"],
            &["EXPIRE", "k", "1", "LT"],
        ] {
            assert_eq!(lacks(VALKEY_8, words), None, "{words:?}");
            assert_eq!(lacks(VALKEY_9, words), None, "{words:?}");
        }
    }
}
