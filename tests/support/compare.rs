//! Comparing a source Redis with a target pool, key by key: type, logical value
//! (collections as sets and maps where order is undefined), TTL within a tolerance, and
//! nothing on the target that the source lacks.

use std::collections::{BTreeMap, BTreeSet};

use super::RedisServer;

/// TTL difference still counted as equal.
const TTL_TOLERANCE_MS: i64 = 2000;

/// A key's logical value, comparable across servers.
#[derive(Debug, PartialEq)]
pub enum Value {
    Missing,
    String(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    List(Vec<Vec<u8>>),
    Set(BTreeSet<Vec<u8>>),
    Zset(BTreeMap<Vec<u8>, String>),
    Stream(Vec<(String, Vec<Vec<u8>>)>),
    Other(String),
}

pub fn read(conn: &mut redis::Connection, key: &[u8]) -> (Value, i64) {
    let kind: String = redis::cmd("TYPE").arg(key).query(conn).expect("TYPE");
    let value = match kind.as_str() {
        "none" => Value::Missing,
        "string" => Value::String(redis::cmd("GET").arg(key).query(conn).unwrap_or_default()),
        "hash" => Value::Hash(
            redis::cmd("HGETALL")
                .arg(key)
                .query(conn)
                .unwrap_or_default(),
        ),
        "list" => Value::List(
            redis::cmd("LRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query(conn)
                .unwrap_or_default(),
        ),
        "set" => Value::Set(
            redis::cmd("SMEMBERS")
                .arg(key)
                .query(conn)
                .unwrap_or_default(),
        ),
        // Scores as numbers: engines print the same double differently (Redis 7.0
        // `0.10000000000000001`, Valkey `0.1`).
        "zset" => Value::Zset(
            redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query::<BTreeMap<Vec<u8>, String>>(conn)
                .unwrap_or_default()
                .into_iter()
                .map(|(m, s)| (m, s.parse::<f64>().map_or(s, |f| f.to_string())))
                .collect(),
        ),
        "stream" => Value::Stream(
            redis::cmd("XRANGE")
                .arg(key)
                .arg("-")
                .arg("+")
                .query(conn)
                .unwrap_or_default(),
        ),
        other => Value::Other(other.to_string()),
    };
    let pttl: i64 = redis::cmd("PTTL").arg(key).query(conn).unwrap_or(-2);
    (value, pttl)
}

/// Every difference between the source and the target pool.
pub fn differences(source: &RedisServer, targets: &[RedisServer]) -> Vec<String> {
    let mut src = source.client();
    let mut conns: Vec<_> = targets.iter().map(RedisServer::client).collect();
    let mut found = Vec::new();
    let source_keys = source.keys();
    for key in &source_keys {
        let (want, want_ttl) = read(&mut src, key);
        if want == Value::Missing {
            continue; // expired while we looked
        }
        let holders: Vec<usize> = (0..targets.len())
            .filter(|&i| {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query::<i64>(&mut conns[i])
                    .unwrap_or(0)
                    == 1
            })
            .collect();
        let name = String::from_utf8_lossy(key).into_owned();
        match holders.as_slice() {
            [i] => {
                let (got, got_ttl) = read(&mut conns[*i], key);
                if got != want {
                    found.push(format!("{name}: source {want:?}, target {got:?}"));
                } else if (want_ttl < 0) != (got_ttl < 0)
                    || (want_ttl - got_ttl).abs() > TTL_TOLERANCE_MS && want_ttl >= 0
                {
                    found.push(format!(
                        "{name}: TTL source {want_ttl} ms, target {got_ttl} ms"
                    ));
                }
            }
            [] => found.push(format!("{name}: missing on the target")),
            many => found.push(format!("{name}: on {} target servers", many.len())),
        }
    }
    let target_total: usize = targets.iter().map(|t| t.keys().len()).sum();
    let live_source = source_keys.len();
    if target_total > live_source {
        let source_set: BTreeSet<Vec<u8>> = source_keys.into_iter().collect();
        for t in targets {
            for key in t.keys() {
                if !source_set.contains(&key)
                    && redis::cmd("EXISTS")
                        .arg(&key)
                        .query::<i64>(&mut src)
                        .unwrap_or(0)
                        == 0
                {
                    found.push(format!(
                        "{}: on the target only",
                        String::from_utf8_lossy(&key)
                    ));
                }
            }
        }
    }
    found
}

/// Fail, showing the first differences, unless `targets` hold exactly what `source` holds.
pub fn assert_same(source: &RedisServer, targets: &[RedisServer]) {
    let found = differences(source, targets);
    assert!(
        found.is_empty(),
        "{} differences, e.g.: {:?}",
        found.len(),
        &found[..found.len().min(10)]
    );
}
