//! The command table: every command nutcracker 0.5.0 supports, with its arity class,
//! whether it reads or writes, which keys a write touches and whether it may be replayed
//! on the target, and whether it is split across servers.
//!
//! Names are matched case-insensitively. Anything not here is refused with a clear
//! `-ERR unsupported command` (nutcracker closes the connection instead).
//!
//! May import: `resp`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

/// nutcracker's argument classes (src/proto/nc_redis.c), which fix the arity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgClass {
    /// No key, no argument (`PING`, `QUIT`, `COMMAND`).
    Argz,
    /// No key, any arguments (`LOLWUT`).
    NoKey,
    /// Exactly a key.
    Arg0,
    /// A key and one argument.
    Arg1,
    /// A key and two arguments.
    Arg2,
    /// A key and three arguments.
    Arg3,
    /// A key and any number of arguments.
    ArgN,
    /// A key and at least this many arguments (`EXPIRE key seconds [NX|XX|GT|LT]`, as
    /// Redis 7 and Valkey take them; nutcracker 0.5.0 knew only the fixed form).
    KeyAtLeast(usize),
    /// One or more keys (`MGET`, `DEL`, ...).
    ArgX,
    /// Key-value pairs (`MSET`).
    ArgKvx,
    /// `script numkeys key... arg...` with at least one key (`EVAL`, `EVALSHA`).
    ArgEval,
    /// A local command with exactly this many arguments, its name included.
    Exactly(usize),
    /// A local command with at least this many arguments, its name included.
    AtLeast(usize),
}

impl ArgClass {
    /// Whether `argc` arguments (command name included) fit this class.
    pub fn accepts(self, argc: usize) -> bool {
        match self {
            ArgClass::Argz => argc == 1,
            ArgClass::NoKey => argc >= 1,
            ArgClass::Arg0 => argc == 2,
            ArgClass::Arg1 => argc == 3,
            ArgClass::Arg2 => argc == 4,
            ArgClass::Arg3 => argc == 5,
            ArgClass::ArgN | ArgClass::ArgX => argc >= 2,
            ArgClass::KeyAtLeast(n) => argc >= 2 + n,
            ArgClass::ArgKvx => argc >= 3 && argc % 2 == 1,
            ArgClass::ArgEval => argc >= 4,
            ArgClass::Exactly(n) => argc == n,
            ArgClass::AtLeast(n) => argc >= n,
        }
    }

    /// Redis's arity convention (`COMMAND` replies): `n` exactly, `-n` at least.
    pub fn redis_arity(self) -> i64 {
        match self {
            ArgClass::Argz => 1,
            ArgClass::NoKey => -1,
            ArgClass::Arg0 => 2,
            ArgClass::Arg1 => 3,
            ArgClass::Arg2 => 4,
            ArgClass::Arg3 => 5,
            ArgClass::ArgN | ArgClass::ArgX => -2,
            ArgClass::KeyAtLeast(n) => -(2 + n as i64),
            ArgClass::ArgKvx | ArgClass::ArgEval => -3,
            ArgClass::Exactly(n) => n as i64,
            ArgClass::AtLeast(n) => -(n as i64),
        }
    }

    /// `(first key, last key, step)` as `COMMAND` reports them.
    pub fn key_positions(self) -> (i64, i64, i64) {
        match self {
            ArgClass::Arg0
            | ArgClass::Arg1
            | ArgClass::Arg2
            | ArgClass::Arg3
            | ArgClass::ArgN
            | ArgClass::KeyAtLeast(_) => (1, 1, 1),
            ArgClass::ArgX => (1, -1, 1),
            ArgClass::ArgKvx => (1, -1, 2),
            _ => (0, 0, 0),
        }
    }
}

/// Which keys a write command writes (what the migration must copy when it cannot replay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrittenKeys {
    /// The first key only.
    First,
    /// The first two arguments (`SMOVE src dst`, `RPOPLPUSH`, `LMOVE`).
    FirstTwo,
    /// The second key only (`COPY src dst`).
    Second,
    /// Every argument after the name (`DEL`, `UNLINK`).
    All,
    /// Every key of key-value pairs (`MSET`).
    Pairs,
    /// The key after a `STORE`/`STOREDIST` option, if present (`SORT`, `GEORADIUS`).
    StoreOption,
    /// The keys declared by `numkeys` (`EVAL`, `EVALSHA`).
    Eval,
}

/// How a write is mirrored to the target pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mirror {
    /// Deterministic and single-key: may be replayed as is once the key is known-copied.
    Replay,
    /// Always mirrored by copying the written keys (random effects, several keys, scripts).
    Copy(WrittenKeys),
}

/// What a command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only.
    Read,
    /// Writes; how it is mirrored.
    Write(Mirror),
    /// Answered by the proxy itself.
    Local,
}

/// How a multi-key command is split across servers and its replies merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `MGET`: values reassembled in the client's key order.
    Values,
    /// `DEL`, `UNLINK`, `TOUCH`, `EXISTS`: integer replies summed.
    Sum,
    /// `MSET`: `+OK` once every part answered.
    Ok,
}

/// The proxy's own commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalCommand {
    /// `PING` → `+PONG`.
    Ping,
    /// `QUIT`: close after pending replies, no reply.
    Quit,
    /// `AUTH password` (or `AUTH default password`) checked against `redis_auth`.
    Auth,
    /// `HELLO [2|3] [AUTH user pass] [SETNAME name]`: protocol switch and handshake.
    Hello,
    /// `CLIENT SETINFO|SETNAME|GETNAME|ID|INFO|LIST|NO-EVICT|NO-TOUCH`, for this connection.
    Client,
    /// `SELECT 0` (a pool serves one database).
    Select,
    /// `ECHO message`.
    Echo,
    /// `INFO [section...]`: a Redis-style INFO of the proxy.
    Info,
    /// `COMMAND`, `COMMAND COUNT|INFO|DOCS` for the commands the proxy supports.
    Command,
    /// `READONLY` / `READWRITE`: accepted, no effect.
    ReadMode,
    /// `RESET`: back to RESP2, no name, signed out.
    Reset,
}

/// One command of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// Upper-case name.
    pub name: &'static str,
    /// Lower-case name, for error messages and fragments.
    pub lower: &'static str,
    /// Arity class.
    pub class: ArgClass,
    /// Read, write or local.
    pub access: Access,
    /// How it is split across servers, if it is.
    pub split: Option<Split>,
    /// The local handler, for local commands.
    pub local: Option<LocalCommand>,
}

/// A command's label for metrics: what kind of work it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandClass {
    /// A single-server read.
    Read,
    /// A single-server write.
    Write,
    /// A command split across servers.
    Split,
    /// Answered by the proxy.
    Local,
}

impl CommandClass {
    /// Every class, for resolving metric handles up front.
    pub const ALL: [CommandClass; 4] = [
        CommandClass::Read,
        CommandClass::Write,
        CommandClass::Split,
        CommandClass::Local,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            CommandClass::Read => "read",
            CommandClass::Write => "write",
            CommandClass::Split => "split",
            CommandClass::Local => "local",
        }
    }
}

impl CommandSpec {
    /// The metrics class of this command.
    pub fn class_label(&self) -> CommandClass {
        match (self.split, self.access) {
            (Some(_), _) => CommandClass::Split,
            (None, Access::Local) => CommandClass::Local,
            (None, Access::Write(_)) => CommandClass::Write,
            (None, Access::Read) => CommandClass::Read,
        }
    }

    /// Whether this command writes.
    pub fn is_write(&self) -> bool {
        matches!(self.access, Access::Write(_))
    }
}

use Access::{Read as R, Write as W};
use ArgClass::*;
use Mirror::{Copy as C, Replay as P};
use WrittenKeys as K;

/// `(name, class, access)` for every forwarded command.
const FORWARDED: &[(&str, ArgClass, Access)] = &[
    ("LOLWUT", NoKey, R),
    // Key only.
    ("PERSIST", Arg0, W(P)),
    ("PTTL", Arg0, R),
    ("TTL", Arg0, R),
    ("TYPE", Arg0, R),
    ("DUMP", Arg0, R),
    ("DECR", Arg0, W(P)),
    ("GET", Arg0, R),
    ("GETDEL", Arg0, W(P)),
    ("INCR", Arg0, W(P)),
    ("STRLEN", Arg0, R),
    ("HGETALL", Arg0, R),
    ("HKEYS", Arg0, R),
    ("HLEN", Arg0, R),
    ("HVALS", Arg0, R),
    ("LLEN", Arg0, R),
    ("SCARD", Arg0, R),
    ("SMEMBERS", Arg0, R),
    ("ZCARD", Arg0, R),
    // Key and one argument, and options since Redis 7.0 (NX|XX|GT|LT).
    ("EXPIRE", KeyAtLeast(1), W(P)),
    ("EXPIREAT", KeyAtLeast(1), W(P)),
    ("PEXPIRE", KeyAtLeast(1), W(P)),
    ("PEXPIREAT", KeyAtLeast(1), W(P)),
    // Key and one argument.
    ("APPEND", Arg1, W(P)),
    ("DECRBY", Arg1, W(P)),
    ("GETBIT", Arg1, R),
    ("GETSET", Arg1, W(P)),
    ("INCRBY", Arg1, W(P)),
    ("INCRBYFLOAT", Arg1, W(P)),
    ("SETNX", Arg1, W(P)),
    ("HEXISTS", Arg1, R),
    ("HGET", Arg1, R),
    ("HSTRLEN", Arg1, R),
    ("LINDEX", Arg1, R),
    ("RPOPLPUSH", Arg1, W(C(K::FirstTwo))),
    ("SISMEMBER", Arg1, R),
    // WITHSCORE since Redis 7.2.
    ("ZRANK", KeyAtLeast(1), R),
    ("ZREVRANK", KeyAtLeast(1), R),
    ("ZSCORE", Arg1, R),
    // Key and two arguments.
    ("GETRANGE", Arg2, R),
    ("PSETEX", Arg2, W(P)),
    ("SETBIT", Arg2, W(P)),
    ("SETEX", Arg2, W(P)),
    ("SETRANGE", Arg2, W(P)),
    ("HINCRBY", Arg2, W(P)),
    ("HINCRBYFLOAT", Arg2, W(P)),
    ("HSETNX", Arg2, W(P)),
    ("LRANGE", Arg2, R),
    ("LREM", Arg2, W(P)),
    ("LSET", Arg2, W(P)),
    ("LTRIM", Arg2, W(P)),
    ("SMOVE", Arg2, W(C(K::FirstTwo))),
    ("ZCOUNT", Arg2, R),
    ("ZLEXCOUNT", Arg2, R),
    ("ZINCRBY", Arg2, W(P)),
    ("ZREMRANGEBYLEX", Arg2, W(P)),
    ("ZREMRANGEBYRANK", Arg2, W(P)),
    ("ZREMRANGEBYSCORE", Arg2, W(P)),
    // Key and three arguments.
    ("LINSERT", Arg3, W(P)),
    ("LMOVE", Arg3, W(C(K::FirstTwo))),
    // Key and any arguments.
    ("SORT", ArgN, W(C(K::StoreOption))),
    ("COPY", ArgN, W(C(K::Second))),
    ("BITCOUNT", ArgN, R),
    ("BITPOS", ArgN, R),
    ("BITFIELD", ArgN, W(P)),
    ("GETEX", ArgN, W(P)),
    ("SET", ArgN, W(P)),
    ("HDEL", ArgN, W(P)),
    ("HMGET", ArgN, R),
    ("HMSET", ArgN, W(P)),
    ("HSCAN", ArgN, R),
    ("HSET", ArgN, W(P)),
    ("HRANDFIELD", ArgN, R),
    ("LPUSH", ArgN, W(P)),
    ("LPUSHX", ArgN, W(P)),
    ("RPUSH", ArgN, W(P)),
    ("RPUSHX", ArgN, W(P)),
    ("LPOP", ArgN, W(P)),
    ("RPOP", ArgN, W(P)),
    ("LPOS", ArgN, R),
    ("SADD", ArgN, W(P)),
    ("SDIFF", ArgN, R),
    ("SDIFFSTORE", ArgN, W(C(K::First))),
    ("SINTER", ArgN, R),
    ("SINTERSTORE", ArgN, W(C(K::First))),
    ("SREM", ArgN, W(P)),
    ("SUNION", ArgN, R),
    ("SUNIONSTORE", ArgN, W(C(K::First))),
    ("SRANDMEMBER", ArgN, R),
    ("SSCAN", ArgN, R),
    ("SPOP", ArgN, W(C(K::First))),
    ("SMISMEMBER", ArgN, R),
    ("PFADD", ArgN, W(P)),
    ("PFMERGE", ArgN, W(C(K::First))),
    ("PFCOUNT", ArgN, R),
    ("ZADD", ArgN, W(P)),
    ("ZDIFF", ArgN, R),
    ("ZDIFFSTORE", ArgN, W(C(K::First))),
    ("ZINTER", ArgN, R),
    ("ZINTERSTORE", ArgN, W(C(K::First))),
    ("ZMSCORE", ArgN, R),
    ("ZPOPMAX", ArgN, W(P)),
    ("ZPOPMIN", ArgN, W(P)),
    ("ZRANDMEMBER", ArgN, R),
    ("ZRANGE", ArgN, R),
    ("ZRANGEBYLEX", ArgN, R),
    ("ZRANGEBYSCORE", ArgN, R),
    ("ZRANGESTORE", ArgN, W(C(K::First))),
    ("ZREM", ArgN, W(P)),
    ("ZREVRANGE", ArgN, R),
    ("ZREVRANGEBYLEX", ArgN, R),
    ("ZREVRANGEBYSCORE", ArgN, R),
    ("ZSCAN", ArgN, R),
    ("ZUNION", ArgN, R),
    ("ZUNIONSTORE", ArgN, W(C(K::First))),
    ("GEODIST", ArgN, R),
    ("GEOPOS", ArgN, R),
    ("GEOHASH", ArgN, R),
    ("GEOADD", ArgN, W(P)),
    ("GEORADIUS", ArgN, W(C(K::StoreOption))),
    ("GEORADIUSBYMEMBER", ArgN, W(C(K::StoreOption))),
    ("GEOSEARCH", ArgN, R),
    ("GEOSEARCHSTORE", ArgN, W(C(K::First))),
    ("RESTORE", ArgN, W(P)),
    // Split across servers.
    ("MGET", ArgX, R),
    ("DEL", ArgX, W(C(K::All))),
    ("UNLINK", ArgX, W(C(K::All))),
    ("TOUCH", ArgX, R),
    ("EXISTS", ArgN, R),
    ("MSET", ArgKvx, W(C(K::Pairs))),
    // Scripts.
    ("EVAL", ArgEval, W(C(K::Eval))),
    ("EVALSHA", ArgEval, W(C(K::Eval))),
];

/// The proxy's own commands.
const LOCAL: &[(&str, ArgClass, LocalCommand)] = &[
    ("PING", Argz, LocalCommand::Ping),
    ("QUIT", Argz, LocalCommand::Quit),
    ("AUTH", AtLeast(2), LocalCommand::Auth),
    ("HELLO", AtLeast(1), LocalCommand::Hello),
    ("CLIENT", AtLeast(2), LocalCommand::Client),
    ("SELECT", Exactly(2), LocalCommand::Select),
    ("ECHO", Exactly(2), LocalCommand::Echo),
    ("INFO", AtLeast(1), LocalCommand::Info),
    ("COMMAND", AtLeast(1), LocalCommand::Command),
    ("READONLY", Exactly(1), LocalCommand::ReadMode),
    ("READWRITE", Exactly(1), LocalCommand::ReadMode),
    ("RESET", Exactly(1), LocalCommand::Reset),
];

/// Commands split across servers, and how their replies merge.
const SPLIT: &[(&str, Split)] = &[
    ("MGET", Split::Values),
    ("DEL", Split::Sum),
    ("UNLINK", Split::Sum),
    ("TOUCH", Split::Sum),
    ("EXISTS", Split::Sum),
    ("MSET", Split::Ok),
];

/// Longest command name in the table, so longer names are rejected without hashing.
const MAX_NAME: usize = 24;

/// The table, keyed by upper-case name.
/// The command table's hasher: FNV-1a over the name's bytes. The table is fixed, so
/// SipHash's defence against chosen collisions (which needs inserts) buys nothing here,
/// and it cost more than the rest of a lookup (`perf`: about 1.5% of the proxy's time at
/// 50 clients pipelining 16).
struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> NameHasher {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

static TABLE: LazyLock<HashMap<&'static [u8], CommandSpec, BuildHasherDefault<NameHasher>>> =
    LazyLock::new(|| {
        let leak_lower =
            |name: &str| -> &'static str { Box::leak(name.to_ascii_lowercase().into_boxed_str()) };
        let mut table = HashMap::default();
        for &(name, class, access) in FORWARDED {
            let split = SPLIT.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
            table.insert(
                name.as_bytes(),
                CommandSpec {
                    name,
                    lower: leak_lower(name),
                    class,
                    access,
                    split,
                    local: None,
                },
            );
        }
        for &(name, class, local) in LOCAL {
            let spec = CommandSpec {
                name,
                lower: leak_lower(name),
                class,
                access: Access::Local,
                split: None,
                local: Some(local),
            };
            table.insert(name.as_bytes(), spec);
        }
        table
    });

/// Look a command up by name, in any case.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    if name.len() > MAX_NAME {
        return None;
    }
    let mut upper = [0u8; MAX_NAME];
    let upper = &mut upper[..name.len()];
    upper.copy_from_slice(name);
    upper.make_ascii_uppercase();
    TABLE.get(&*upper)
}

/// Every command in the table.
pub fn all() -> impl Iterator<Item = &'static CommandSpec> {
    TABLE.values()
}

/// The key that routes `request`: EVAL routes by its first declared key; keyless commands
/// by the literal "placeholder", as nutcracker does; everything else by its first key.
pub fn routing_key<'a>(spec: &CommandSpec, request: &'a crate::resp::Request) -> &'a [u8] {
    let arg = |i: usize| {
        if i < request.argc() {
            request.arg(i)
        } else {
            b"".as_slice()
        }
    };
    match spec.class {
        ArgClass::Argz | ArgClass::NoKey => b"placeholder",
        ArgClass::ArgEval => arg(3),
        _ => arg(1),
    }
}

/// The keys of a command that takes several keys and is not split across servers (it
/// must find them all on one server), or `None` for any other command: what the
/// readiness report checks against the target's placement.
pub fn unsplit_keys<'a>(
    spec: &CommandSpec,
    request: &'a crate::resp::Request,
) -> Option<Vec<&'a [u8]>> {
    let argc = request.argc();
    let args = |range: std::ops::Range<usize>| -> Vec<&'a [u8]> {
        range
            .filter(|&i| i < argc)
            .map(|i| request.arg(i))
            .collect()
    };
    let counted = |at: usize| -> Vec<&'a [u8]> {
        let n = std::str::from_utf8(request.arg(at.min(argc - 1)))
            .ok()
            .and_then(|t| t.parse::<usize>().ok())
            .unwrap_or(0);
        args(at + 1..at + 1 + n)
    };
    let keys = match spec.name {
        "SDIFF" | "SINTER" | "SUNION" | "SDIFFSTORE" | "SINTERSTORE" | "SUNIONSTORE"
        | "PFMERGE" | "PFCOUNT" => args(1..argc),
        "SMOVE" | "RPOPLPUSH" | "LMOVE" | "COPY" | "ZRANGESTORE" | "GEOSEARCHSTORE" => args(1..3),
        "ZINTERSTORE" | "ZUNIONSTORE" | "ZDIFFSTORE" => {
            let mut keys = args(1..2);
            keys.extend(counted(2));
            keys
        }
        "ZDIFF" | "ZINTER" | "ZUNION" => counted(1),
        "EVAL" | "EVALSHA" => counted(2),
        "SORT" | "GEORADIUS" | "GEORADIUSBYMEMBER" => {
            let mut keys = args(1..2);
            keys.extend((2..argc.saturating_sub(1)).filter_map(|i| {
                let word = request.arg(i);
                (word.eq_ignore_ascii_case(b"STORE") || word.eq_ignore_ascii_case(b"STOREDIST"))
                    .then(|| request.arg(i + 1))
            }));
            keys
        }
        _ => return None,
    };
    Some(keys)
}

/// For EVAL/EVALSHA: the declared number of keys, if it is a valid count that fits the
/// arguments and is at least 1 (nutcracker refuses `numkeys 0`).
pub fn eval_numkeys(args: &[&[u8]]) -> Option<usize> {
    let n: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
    (n >= 1 && n <= args.len() - 3).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_insensitive_lookup() {
        assert_eq!(lookup(b"get").map(|c| c.name), Some("GET"));
        assert_eq!(lookup(b"GeT").map(|c| c.lower), Some("get"));
        assert!(lookup(b"KEYS").is_none());
        assert!(lookup(b"MOVE").is_none(), "nutcracker cannot forward MOVE");
        assert!(lookup(&[b'A'; 100]).is_none());
    }

    #[test]
    fn arity_classes() {
        let get = lookup(b"GET").expect("GET");
        assert!(get.class.accepts(2) && !get.class.accepts(1) && !get.class.accepts(3));
        let mset = lookup(b"MSET").expect("MSET");
        assert!(mset.class.accepts(3) && mset.class.accepts(5) && !mset.class.accepts(4));
        assert!(lookup(b"PING").expect("PING").class.accepts(1));
        assert!(
            !lookup(b"PING").expect("PING").class.accepts(2),
            "PING msg is refused, as in nutcracker"
        );
    }

    /// Every argument form Redis 7.2 and Valkey 8 accept for the commands in the table
    /// (their `COMMAND INFO` arities), as `(command, argc that must be accepted, argc
    /// below the minimum)`.
    #[test]
    fn redis_7_argument_forms() {
        for (name, accepted, too_few) in [
            ("EXPIRE", 4, 2),
            ("PEXPIRE", 4, 2),
            ("EXPIREAT", 4, 2),
            ("PEXPIREAT", 4, 2),
            ("ZRANK", 4, 2),
            ("ZREVRANK", 4, 2),
            ("SET", 6, 1),
            ("LPOP", 3, 1),
            ("BITCOUNT", 5, 1),
            ("ZADD", 7, 1),
            ("GETEX", 4, 1),
        ] {
            let spec = lookup(name.as_bytes()).expect(name);
            assert!(spec.class.accepts(accepted), "{name} with {accepted}");
            assert!(
                spec.class.accepts(3) || name != "EXPIRE",
                "{name} plain form"
            );
            assert!(!spec.class.accepts(too_few), "{name} with {too_few}");
        }
        assert_eq!(lookup(b"EXPIRE").map(|c| c.class.redis_arity()), Some(-3));
    }

    #[test]
    fn split_and_merge_kinds() {
        assert_eq!(lookup(b"mget").and_then(|c| c.split), Some(Split::Values));
        assert_eq!(lookup(b"exists").and_then(|c| c.split), Some(Split::Sum));
        assert_eq!(lookup(b"mset").and_then(|c| c.split), Some(Split::Ok));
        assert_eq!(lookup(b"hmget").and_then(|c| c.split), None);
    }

    #[test]
    fn every_write_is_classified_and_every_name_is_unique() {
        assert_eq!(TABLE.len(), FORWARDED.len() + LOCAL.len());
        let writes = all().filter(|c| c.is_write()).count();
        assert!(writes > 60, "{writes} writes");
        for spec in all() {
            assert_eq!(spec.name.to_ascii_lowercase(), spec.lower);
            assert!(spec.name.len() <= MAX_NAME);
        }
    }

    #[test]
    fn keys_of_unsplit_multi_key_commands() {
        let keys = |words: &[&str]| -> Option<Vec<String>> {
            let mut buf = bytes::BytesMut::new();
            crate::resp::encode::command(&mut buf, words);
            let Ok(Some(crate::resp::Parsed::Request(r))) =
                crate::resp::RequestParser::default().next(&mut buf)
            else {
                panic!("parse")
            };
            let spec = lookup(r.name()).expect("known");
            unsplit_keys(spec, &r).map(|k| {
                k.iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect()
            })
        };
        let list = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            keys(&["SUNIONSTORE", "d", "a", "b"]),
            list(&["d", "a", "b"])
        );
        assert_eq!(keys(&["SMOVE", "a", "b", "m"]), list(&["a", "b"]));
        assert_eq!(
            keys(&["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]),
            list(&["d", "a", "b"])
        );
        assert_eq!(
            keys(&["ZINTER", "2", "a", "b", "WITHSCORES"]),
            list(&["a", "b"])
        );
        assert_eq!(keys(&["EVAL", "s", "2", "a", "b", "x"]), list(&["a", "b"]));
        assert_eq!(
            keys(&["SORT", "l", "BY", "w", "STORE", "d"]),
            list(&["l", "d"])
        );
        assert_eq!(
            keys(&["EVAL", "s", "9", "a"]),
            list(&["a"]),
            "a count past the end"
        );
        assert_eq!(keys(&["GET", "k"]), None);
    }

    #[test]
    fn routing_keys() {
        let request = |words: &[&str]| {
            let mut buf = bytes::BytesMut::new();
            crate::resp::encode::command(&mut buf, words);
            match crate::resp::RequestParser::default().next(&mut buf) {
                Ok(Some(crate::resp::Parsed::Request(r))) => r,
                other => panic!("parse: {other:?}"),
            }
        };
        let get = lookup(b"GET").expect("GET");
        assert_eq!(routing_key(get, &request(&["GET", "k"])), b"k");
        let eval = lookup(b"EVAL").expect("EVAL");
        assert_eq!(
            routing_key(eval, &request(&["EVAL", "return 1", "1", "k"])),
            b"k"
        );
        let lolwut = lookup(b"LOLWUT").expect("LOLWUT");
        assert_eq!(routing_key(lolwut, &request(&["LOLWUT"])), b"placeholder");
        assert_eq!(eval_numkeys(&[b"EVAL", b"s", b"1", b"k"]), Some(1));
        assert_eq!(eval_numkeys(&[b"EVAL", b"s", b"0", b"k"]), None);
        assert_eq!(eval_numkeys(&[b"EVAL", b"s", b"2", b"k"]), None);
    }
}
