//! Every class of write through a migrating proxy: deterministic single-key writes are
//! replayed, random and multi-key writes (and scripts) are copied, split writes copy each
//! part's keys; afterwards the target equals the source.

mod support;

use std::time::Duration;

use support::compare::assert_same;
use support::{Proxy, RedisServer, redis_servers, wait_for};

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
    let replayed_before =
        cutover.metric("cutover_mirror_events_total{pool=\"legacy\",action=\"replayed\"}");
    let copied_before =
        cutover.metric("cutover_mirror_events_total{pool=\"legacy\",action=\"copied\"}");

    let mut conn = cutover.client();
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
        &["HINCRBY", "h", "n", "2"],
        &["SETRANGE", "k5", "0", "Z"],
    ] {
        run(&mut conn, words);
    }
    // Copied: TTLs (relative or absolute), random, multi-key, split, store options,
    // scripts.
    for words in [
        &["EXPIRE", "k6", "1000"][..],
        &["EXPIREAT", "k4", "4102444800"],
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
    let replayed = cutover
        .metric("cutover_mirror_events_total{pool=\"legacy\",action=\"replayed\"}")
        - replayed_before;
    let copied = cutover.metric("cutover_mirror_events_total{pool=\"legacy\",action=\"copied\"}")
        - copied_before;
    assert!(replayed >= 8.0, "{replayed} replays");
    assert!(copied >= 20.0, "{copied} copies");
    assert!(
        targets
            .iter()
            .any(|t| t.keys().iter().any(|k| k == b"{t}near")),
        "GEORADIUS ... STORE wrote its key on the target"
    );
}

/// A write the source applies shortly before a key expires must not be replayed on the
/// target after the target's copy expired: there it would create a new key without a TTL
/// that outlives the source's. The target is held busy (DEBUG SLEEP) across the key's
/// expiry so the mirrored write lands after it; a key whose copy carried a TTL is copied
/// at each write instead, and the target's key expires with the source's.
#[test]
fn a_write_before_expiry_is_not_replayed_after_it() {
    write_across_expiry(false);
}

/// The same after a restart that found the backfill done: the new lanes never saw the
/// key's copy, so they cannot know it has a TTL, and must not replay its first write.
#[test]
fn after_a_restart_a_write_before_expiry_is_not_replayed_after_it() {
    write_across_expiry(true);
}

/// Give key `h` a TTL through a migrating proxy (restarted after the copy when `restart`),
/// then write it while the target is held busy past the key's expiry.
fn write_across_expiry(restart: bool) {
    let source = RedisServer::start();
    let target = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let state = tempfile::tempdir().expect("state dir");
    let conf = support::migration_config(
        &source,
        std::slice::from_ref(&target),
        &format!(
            "    state_file: {}\n",
            state.path().join("migration.state").display()
        ),
    );
    let mut cutover = Proxy::cutover(&conf);
    cutover.wait_migration_drained(Duration::from_secs(30), 2);
    let mut conn = cutover.client();
    let mut on_target = target.client();
    let pttl = |conn: &mut redis::Connection| -> i64 {
        redis::cmd("PTTL").arg("h").query(conn).expect("PTTL")
    };
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("a")
        .arg(1)
        .query(&mut conn)
        .expect("HSET");
    let ttl_ms = if restart { 6000 } else { 3000 };
    let _: () = redis::cmd("PEXPIRE")
        .arg("h")
        .arg(ttl_ms)
        .query(&mut conn)
        .expect("PEXPIRE");
    wait_for("the TTL copied", Duration::from_secs(2), || {
        pttl(&mut on_target) > 0
    });
    if restart {
        assert!(cutover.terminate(Duration::from_secs(10)), "clean stop");
        cutover = Proxy::cutover(&conf);
        cutover.wait_migration_drained(Duration::from_secs(10), 2);
        conn = cutover.client();
    }
    // Busy from now until well after the target's copy expired.
    let busy_for = (pttl(&mut on_target) as f64 / 1000.0 + 1.5).to_string();
    let sleeper = {
        let mut busy = target.client();
        std::thread::spawn(move || {
            redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(busy_for)
                .query::<()>(&mut busy)
                .expect("DEBUG SLEEP");
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let added: i64 = redis::cmd("HSET")
        .arg("h")
        .arg("b")
        .arg(2)
        .query(&mut conn)
        .expect("HSET");
    assert_eq!(added, 1);
    assert!(
        pttl(&mut source.client()) > 0,
        "the source applied the write before the key expired"
    );
    sleeper.join().expect("sleeper");
    if !restart {
        // (After the restart the key is unknown, so its first write is copied anyway.)
        wait_for(
            "the write copied for its TTL",
            Duration::from_secs(5),
            || cutover.metric("cutover_mirror_ttl_copies_total{pool=\"legacy\"}") >= 1.0,
        );
    }

    wait_for(
        "the key gone from the source",
        Duration::from_secs(8),
        || pttl(&mut source.client()) == -2,
    );
    cutover.wait_migration_drained(Duration::from_secs(10), 2);
    wait_for(
        "the target's key to expire like the source's",
        Duration::from_secs(5),
        || pttl(&mut on_target) == -2,
    );
    assert_same(&source, std::slice::from_ref(&target));
}
