//! Every class of write through a migrating proxy: deterministic single-key writes are
//! replayed, random and multi-key writes (and scripts) are copied, split writes copy each
//! part's keys; afterwards the target equals the source.

mod support;

use std::time::Duration;

use support::compare::assert_same;
use support::{Proxy, RedisServer, redis_servers};

fn metric(proxy: &Proxy, line_start: &str) -> f64 {
    let text = proxy.admin_get("/metrics").1;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn each_class_reaches_the_target() {
    let source = RedisServer::start();
    let targets = redis_servers(3);
    let mut pre = source.client();
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    pipe.cmd("SADD").arg("{t}a").arg(1).arg(2).arg(3).ignore();
    pipe.cmd("SADD").arg("{t}b").arg(3).arg(4).ignore();
    pipe.cmd("RPUSH").arg("{t}l").arg(3).arg(1).arg(2).ignore();
    pipe.cmd("SET").arg("{t}src").arg("copied").ignore();
    pipe.cmd("GEOADD")
        .arg("{t}g")
        .arg(13.36)
        .arg(38.11)
        .arg("Palermo")
        .arg(15.08)
        .arg(37.50)
        .arg("Catania")
        .ignore();
    pipe.query::<()>(&mut pre).expect("prefill");
    let mut text = format!(
        "legacy:\n  listen: LISTEN\n  redis: true\n  servers:\n   - {}:1\n  migrate_to: fleet\nfleet:\n  redis: true\n  hash: md5\n  hash_tag: \"{{}}\"\n  servers:\n",
        source.addr()
    );
    for t in &targets {
        text.push_str(&format!("   - {}:1\n", t.addr()));
    }
    let cutover = Proxy::cutover(&text);
    cutover.wait_migration_drained(Duration::from_secs(30), 4);
    let replayed_before = metric(
        &cutover,
        "cutover_mirror_events_total{pool=\"legacy\",action=\"replayed\"}",
    );
    let copied_before = metric(
        &cutover,
        "cutover_mirror_events_total{pool=\"legacy\",action=\"copied\"}",
    );

    let client =
        redis::Client::open(format!("redis://127.0.0.1:{}/", cutover.port)).expect("client");
    let mut conn = client.get_connection().expect("connect");
    let run = |conn: &mut redis::Connection, words: &[&str]| {
        let mut cmd = redis::cmd(words[0]);
        for w in &words[1..] {
            cmd.arg(*w);
        }
        cmd.query::<redis::Value>(conn)
            .unwrap_or_else(|e| panic!("{words:?}: {e}"));
    };
    // Replayed: deterministic, single key.
    for words in [
        &["SET", "k1", "new"][..],
        &["INCR", "k2"],
        &["APPEND", "k3", "+"],
        &["HSET", "h", "f", "v"],
        &["LPUSH", "k-list", "x"],
        &["ZADD", "z", "1", "m"],
        &["EXPIREAT", "k4", "4102444800"],
        &["SETRANGE", "k5", "0", "Z"],
    ] {
        run(&mut conn, words);
    }
    // Copied: relative TTLs, random, multi-key, split, store options, scripts.
    for words in [
        &["EXPIRE", "k6", "1000"][..],
        &["SET", "k7", "v", "EX", "1000"],
        &["SPOP", "{t}a"][..],
        &["SUNIONSTORE", "{t}u", "{t}a", "{t}b"],
        &["SMOVE", "{t}a", "{t}b", "1"],
        &["RPOPLPUSH", "{t}l", "{t}l2"],
        &["COPY", "{t}src", "{t}dst"],
        &["SORT", "{t}l", "STORE", "{t}sorted"],
        &[
            "GEORADIUS",
            "{t}g",
            "15",
            "37",
            "200",
            "km",
            "STORE",
            "{t}near",
        ],
        &["MSET", "k10", "a", "k11", "b", "k12", "c", "k13", "d"],
        &["DEL", "k20", "k21", "k22", "k23"],
        &["UNLINK", "k24", "k25"],
        &[
            "EVAL",
            "redis.call('set', KEYS[1], 'e1'); redis.call('incr', KEYS[2]); return 1",
            "2",
            "k30",
            "k31",
        ],
    ] {
        run(&mut conn, words);
    }
    cutover.wait_migration_drained(Duration::from_secs(30), 4);
    assert_same(&source, &targets);
    let replayed = metric(
        &cutover,
        "cutover_mirror_events_total{pool=\"legacy\",action=\"replayed\"}",
    ) - replayed_before;
    let copied = metric(
        &cutover,
        "cutover_mirror_events_total{pool=\"legacy\",action=\"copied\"}",
    ) - copied_before;
    assert!(replayed >= 8.0, "{replayed} replays");
    assert!(copied >= 20.0, "{copied} copies");
    assert!(
        targets
            .iter()
            .any(|t| t.keys().iter().any(|k| k == b"{t}near")),
        "GEORADIUS ... STORE wrote its key on the target"
    );
}
