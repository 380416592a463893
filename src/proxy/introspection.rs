//! What the proxy says about itself: a Redis-style `INFO`, and `COMMAND` (with `COUNT`,
//! `INFO`, `DOCS`) describing the commands the proxy supports.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::BytesMut;

use super::Served;
use crate::command::{self, Access, ArgClass, CommandSpec};
use crate::resp::{Protocol, Request, encode};
use crate::upstream::Pool;

/// When the process started (`uptime_in_seconds`).
fn started() -> Instant {
    static STARTED: OnceLock<Instant> = OnceLock::new();
    *STARTED.get_or_init(Instant::now)
}

/// The lowest `redis_version` among the pool's servers that have reported one, so a client
/// never assumes a feature some backend lacks; "unknown" before any server was reached.
pub fn redis_version(pool: &Pool) -> String {
    pool.servers
        .iter()
        .filter_map(|s| s.redis_version())
        .min_by_key(|v| {
            v.split('.')
                .map(|p| p.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// `INFO [section ...]`: Redis's sections that apply to a proxy, plus `# Cutover`.
pub fn info(served: &Served, sections: &[String]) -> String {
    let pool = &served.pool;
    let _ = started();
    let all = sections.is_empty()
        || sections
            .iter()
            .any(|s| matches!(s.as_str(), "all" | "default" | "everything"));
    let wanted = |name: &str| all || sections.iter().any(|s| s == name);
    let c = &pool.counters;
    let clients = c.client_connections.load(Relaxed);
    let commands: u64 = pool
        .servers
        .iter()
        .map(|s| s.counters.requests.load(Relaxed))
        .sum();
    let mut out = String::new();
    let mut section = |name: &str, body: String| {
        if wanted(&name.to_ascii_lowercase()) {
            let _ = write!(out, "# {name}\r\n{body}\r\n");
        }
    };
    let port = match &pool.config.listen {
        Some(crate::config::Listen::Tcp { port, .. }) => *port,
        _ => 0,
    };
    section(
        "Server",
        format!(
            "redis_version:{}\r\nredis_mode:standalone\r\ncutover_version:{}\r\nprocess_id:{}\r\ntcp_port:{port}\r\nuptime_in_seconds:{}\r\n",
            redis_version(pool),
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            started().elapsed().as_secs()
        ),
    );
    section("Clients", format!("connected_clients:{clients}\r\n"));
    section("Persistence", "loading:0\r\n".to_string());
    section(
        "Stats",
        format!(
            "total_connections_received:{}\r\ntotal_commands_processed:{commands}\r\n",
            c.client_eof.load(Relaxed) + c.client_err.load(Relaxed) + clients.max(0) as u64
        ),
    );
    section(
        "Replication",
        "role:master\r\nconnected_slaves:0\r\n".to_string(),
    );
    section("Keyspace", String::new());
    let servers: Vec<&str> = pool.servers.iter().map(|s| s.name.as_str()).collect();
    section(
        "Cutover",
        format!(
            "pool:{}\r\nservers:{}\r\nserver_names:{}\r\nmigration_phase:{}\r\n",
            pool.name(),
            pool.servers.len(),
            servers.join(","),
            served.migration().map_or("none", |m| m.phase().name())
        ),
    );
    out
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND DOCS [name...]`.
pub fn command(request: &Request, protocol: Protocol) -> Result<BytesMut, String> {
    let mut out = BytesMut::new();
    let mut specs: Vec<&CommandSpec> = command::all().collect();
    specs.sort_by_key(|s| s.name);
    if request.argc() == 1 {
        encode::array_header(&mut out, specs.len());
        for spec in specs {
            command_entry(&mut out, spec, protocol);
        }
        return Ok(out);
    }
    let names: Vec<&[u8]> = request.args().skip(2).collect();
    match request.arg(1).to_ascii_uppercase().as_slice() {
        b"COUNT" if request.argc() == 2 => encode::integer(&mut out, specs.len() as i64),
        b"INFO" => {
            let chosen: Vec<Option<&CommandSpec>> = if names.is_empty() {
                specs.iter().map(|s| Some(*s)).collect()
            } else {
                names.iter().map(|n| command::lookup(n)).collect()
            };
            encode::array_header(&mut out, chosen.len());
            for spec in chosen {
                match spec {
                    Some(spec) => command_entry(&mut out, spec, protocol),
                    None => encode::null(&mut out, protocol),
                }
            }
        }
        b"DOCS" => {
            let chosen: Vec<&CommandSpec> = if names.is_empty() {
                specs
            } else {
                names.iter().filter_map(|n| command::lookup(n)).collect()
            };
            encode::map_header(&mut out, chosen.len(), protocol);
            for spec in chosen {
                encode::bulk(&mut out, spec.lower.as_bytes());
                encode::map_header(&mut out, 2, protocol);
                encode::bulk(&mut out, b"summary");
                encode::bulk(&mut out, summary(spec).as_bytes());
                encode::bulk(&mut out, b"group");
                encode::bulk(&mut out, group(spec.name).as_bytes());
            }
        }
        _ => {
            return Err(format!(
                "ERR unsupported command 'COMMAND {}' (cutover answers COMMAND, COMMAND COUNT, COMMAND INFO and COMMAND DOCS)",
                String::from_utf8_lossy(request.arg(1))
            ));
        }
    }
    Ok(out)
}

/// One command's entry as Redis 7 lays it out: name, arity, flags, first key, last key,
/// step, ACL categories, tips, key specs, subcommands.
fn command_entry(out: &mut BytesMut, spec: &CommandSpec, protocol: Protocol) {
    encode::array_header(out, 10);
    encode::bulk(out, spec.lower.as_bytes());
    encode::integer(out, spec.class.redis_arity());
    let mut flags: Vec<&str> = match spec.access {
        Access::Write(_) => vec!["write"],
        Access::Read => vec!["readonly"],
        Access::Local => vec!["fast", "loading", "stale"],
    };
    if spec.class == ArgClass::ArgEval {
        flags.push("movablekeys");
    }
    encode::set_header(out, flags.len(), protocol);
    for flag in flags {
        encode::simple(out, flag);
    }
    let (first, last, step) = spec.class.key_positions();
    for n in [first, last, step] {
        encode::integer(out, n);
    }
    let category = format!("@{}", group(spec.name));
    encode::set_header(out, 1, protocol);
    encode::simple(out, &category);
    for _ in 0..3 {
        encode::array_header(out, 0);
    }
}

/// The command's group, as Redis's documentation groups commands.
fn group(name: &str) -> &'static str {
    match name {
        "PING" | "QUIT" | "AUTH" | "HELLO" | "CLIENT" | "SELECT" | "ECHO" | "RESET"
        | "READONLY" | "READWRITE" => "connection",
        "INFO" | "COMMAND" | "LOLWUT" => "server",
        "EVAL" | "EVALSHA" => "scripting",
        "SETBIT" | "GETBIT" | "BITCOUNT" | "BITPOS" | "BITFIELD" => "bitmap",
        "SORT" | "COPY" | "DEL" | "UNLINK" | "TOUCH" | "EXISTS" | "EXPIRE" | "EXPIREAT"
        | "PEXPIRE" | "PEXPIREAT" | "PERSIST" | "TTL" | "PTTL" | "TYPE" | "DUMP" | "RESTORE" => {
            "generic"
        }
        "RPOPLPUSH" | "LMOVE" => "list",
        "SMOVE" => "set",
        n if n.starts_with("GEO") => "geo",
        n if n.starts_with("PF") => "hyperloglog",
        n if n.starts_with('H') => "hash",
        n if n.starts_with('L') || n.starts_with("RPUSH") || n == "RPOP" => "list",
        n if n.starts_with('S')
            && n != "SET"
            && n != "SETEX"
            && n != "SETNX"
            && n != "SETRANGE"
            && n != "STRLEN" =>
        {
            "set"
        }
        n if n.starts_with('Z') => "sorted-set",
        _ => "string",
    }
}

/// A one-line description of how cutover handles the command.
fn summary(spec: &CommandSpec) -> String {
    match (spec.access, spec.split) {
        (Access::Local, _) => "answered by cutover itself".to_string(),
        (_, Some(_)) => "split across the pool's servers by key; replies merged".to_string(),
        (Access::Write(_), None) => {
            "forwarded to the server that owns the first key; mirrored during a migration"
                .to_string()
        }
        (Access::Read, None) => "forwarded to the server that owns the first key".to_string(),
    }
}
