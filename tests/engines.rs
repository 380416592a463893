//! Migrations between engines: a Redis 7.0 source (Debian's redis-server) into Valkey 9
//! and 8 and Redis 6.2 and 6.0 targets (from the Python packages `tests/engines/install.sh`
//! installs), offline and live, proven equal by verify with no false difference; streams
//! copied whole; a hot big key copied by type without jamming its lane.

mod support;

use std::process::Command;
use std::time::Duration;

use support::compare::differences;
use support::{OtherEngine, Proxy, RedisServer, cutover_bin, http, migration_config, wait_for};

/// Fill `source` with every type: fractional scores, TTLs, a list long enough to be read
/// in several chunks, and streams with everything XRANGE does not show (groups, consumers,
/// pending entries, a pending entry whose entry was deleted, an empty stream that keeps
/// its last ID, a group on an empty stream).
fn fill_every_type(source: &RedisServer) {
    let mut conn = source.client();
    let mut pipe = redis::pipe();
    for i in 0..300 {
        pipe.cmd("SET")
            .arg(format!("s:{i}"))
            .arg(format!("v{i}"))
            .ignore();
        pipe.cmd("HSET")
            .arg(format!("h:{i}"))
            .arg("a")
            .arg(i)
            .arg("b")
            .arg("x")
            .ignore();
        pipe.cmd("RPUSH")
            .arg(format!("l:{i}"))
            .arg(i)
            .arg("y")
            .ignore();
        pipe.cmd("SADD")
            .arg(format!("t:{i}"))
            .arg(i)
            .arg("z")
            .ignore();
        pipe.cmd("ZADD")
            .arg(format!("z:{i}"))
            .arg(f64::from(i) / 10.0 + 0.1)
            .arg("m")
            .arg(0.3)
            .arg("n")
            .ignore();
        if i % 5 == 0 {
            pipe.cmd("PEXPIRE")
                .arg(format!("s:{i}"))
                .arg(600_000)
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(format!("z:{i}"))
                .arg(600_000)
                .ignore();
        }
    }
    let long: Vec<u32> = (0..3000).collect();
    pipe.cmd("RPUSH").arg("long").arg(&long).ignore();
    pipe.query::<()>(&mut conn).expect("fill");
    // A stream with two groups, consumers, pending entries, one of them deleted; an
    // empty stream that keeps its last ID; a group on a stream that never had an entry.
    for i in 0..20 {
        run(
            &mut conn,
            &["XADD", "st", &format!("{}-0", i + 1), "f", &i.to_string()],
        );
    }
    for words in [
        &["XGROUP", "CREATE", "st", "g1", "0"][..],
        &["XGROUP", "CREATE", "st", "g2", "$"],
        &[
            "XREADGROUP",
            "GROUP",
            "g1",
            "alice",
            "COUNT",
            "5",
            "STREAMS",
            "st",
            ">",
        ],
        &[
            "XREADGROUP",
            "GROUP",
            "g1",
            "bob",
            "COUNT",
            "3",
            "STREAMS",
            "st",
            ">",
        ],
        &["XREADGROUP", "GROUP", "g1", "alice", "STREAMS", "st", "0"],
        &["XACK", "st", "g1", "2-0"],
        &["XGROUP", "CREATECONSUMER", "st", "g2", "idle"],
        &["XDEL", "st", "20-0"],
        &["XADD", "empty", "7-1", "f", "v"],
        &["XDEL", "empty", "7-1"],
        &["XGROUP", "CREATE", "nothing", "g", "$", "MKSTREAM"],
    ] {
        run(&mut conn, words);
    }
}

/// Run one command given as words; it must not fail.
fn run(conn: &mut redis::Connection, words: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(words[0]);
    for word in &words[1..] {
        cmd.arg(*word);
    }
    cmd.query(conn).unwrap_or_else(|e| panic!("{words:?}: {e}"))
}

/// A field of a flat `name, value, ...` reply.
fn field(v: &redis::Value, name: &str) -> redis::Value {
    let redis::Value::Array(items) = v else {
        return redis::Value::Nil;
    };
    items
        .chunks(2)
        .find(|p| matches!(&p[0], redis::Value::BulkString(k) if k == name.as_bytes()))
        .map_or(redis::Value::Nil, |p| p[1].clone())
}

/// What a stream holds beyond XRANGE, as a comparable text: last ID, length, groups with
/// their last-delivered IDs, consumers (only those with pending entries when
/// `pending_consumers_only`: Redis 6.0 cannot create the others), pending entries' IDs,
/// owners and delivery counts.
fn stream_state(server: &RedisServer, key: &str, pending_consumers_only: bool) -> String {
    let mut conn = server.client();
    let info: redis::Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query(&mut conn)
        .expect("XINFO STREAM");
    let mut out = format!(
        "last={:?} len={:?}",
        field(&info, "last-generated-id"),
        field(&info, "length")
    );
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query(&mut conn)
        .expect("XINFO GROUPS");
    for group in &groups {
        let redis::Value::BulkString(name) = field(group, "name") else {
            panic!("group name in {group:?}");
        };
        out.push_str(&format!(
            " group={} delivered={:?}",
            String::from_utf8_lossy(&name),
            field(group, "last-delivered-id")
        ));
        let consumers: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(key)
            .arg(&name)
            .query(&mut conn)
            .expect("XINFO CONSUMERS");
        let mut names: Vec<String> = consumers
            .iter()
            .filter(|c| !pending_consumers_only || field(c, "pending") != redis::Value::Int(0))
            .map(|c| format!("{:?}", field(c, "name")))
            .collect();
        names.sort();
        out.push_str(&format!(" consumers={names:?}"));
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(key)
            .arg(&name)
            .arg("-")
            .arg("+")
            .arg(1000)
            .query(&mut conn)
            .expect("XPENDING");
        let owners: Vec<(String, String, u64)> = pending
            .into_iter()
            .map(|(id, c, _, n)| (id, c, n))
            .collect();
        out.push_str(&format!(" pending={owners:?}"));
    }
    out
}

/// A target-only config of pool `fleet` over `targets`.
fn fleet_file(targets: &[RedisServer], dir: &std::path::Path) -> String {
    let mut text = String::from("fleet:\n  redis: true\n  servers:\n");
    for t in targets {
        text.push_str(&format!("   - {}:1\n", t.addr()));
    }
    let path = dir.join("fleet.yml");
    std::fs::write(&path, text).expect("write config");
    format!("{}:fleet", path.display())
}

/// Run `cutover ARGS`; its success and everything it printed.
fn cutover(args: &[&str]) -> (bool, String) {
    let out = Command::new(cutover_bin())
        .args(args)
        .output()
        .expect("run cutover");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Offline `cutover migrate --verify` from Redis 7.0 into each engine: zero differences,
/// the values equal by meaning, streams whole (as far as the engine holds them); then a
/// second `cutover verify` still finds none (no false difference that a repair would
/// "repair" again).
#[test]
fn offline_migrate_and_verify_into_every_engine() {
    for engine in [
        OtherEngine::Valkey9,
        OtherEngine::Valkey8,
        OtherEngine::Redis62,
        OtherEngine::Redis60,
    ] {
        let source = RedisServer::start();
        fill_every_type(&source);
        let targets = vec![
            RedisServer::start_engine(engine),
            RedisServer::start_engine(engine),
        ];
        let dir = tempfile::tempdir().expect("temp dir");
        let to = fleet_file(&targets, dir.path());
        let (ok, out) = cutover(&["migrate", "--from", &source.addr(), "--to", &to, "--verify"]);
        assert!(ok, "{engine:?}: migrate --verify failed:\n{out}");
        assert!(out.contains(" 0 differences"), "{engine:?}:\n{out}");
        let (ok, out) = cutover(&["verify", "--from", &source.addr(), "--to", &to]);
        assert!(
            ok && out.contains(" 0 differences"),
            "{engine:?}: second verify:\n{out}"
        );
        let found = differences(&source, &targets);
        assert!(found.is_empty(), "{engine:?}: {found:?}");
        // Differences made behind cutover's back, of every kind: a repair clears them all,
        // and the next verify finds none.
        for target in &targets {
            let mut conn = target.client();
            for key in target.keys().into_iter().take(3) {
                let key = String::from_utf8_lossy(&key).into_owned();
                match key.split(':').next() {
                    Some("s") => run(&mut conn, &["SET", &key, "changed"]),
                    Some("z") => run(&mut conn, &["ZADD", &key, "0.7", "m"]),
                    Some("h") => run(&mut conn, &["PEXPIRE", &key, "99999999"]),
                    _ => run(&mut conn, &["DEL", &key]),
                };
            }
            run(&mut conn, &["SET", "only-on-the-target", "x"]);
            if target.keys().iter().any(|k| k == b"st") {
                run(&mut conn, &["XGROUP", "DESTROY", "st", "g2"]);
            }
        }
        let (ok, out) = cutover(&["verify", "--from", &source.addr(), "--to", &to]);
        assert!(!ok, "{engine:?}: differences found:\n{out}");
        let (ok, out) = cutover(&["verify", "--from", &source.addr(), "--to", &to, "--repair"]);
        assert!(ok, "{engine:?}: repair:\n{out}");
        let (ok, out) = cutover(&["verify", "--from", &source.addr(), "--to", &to]);
        assert!(
            ok && out.contains(" 0 differences"),
            "{engine:?}: after repair:\n{out}"
        );
        let old = matches!(engine, OtherEngine::Redis60);
        for key in ["st", "empty", "nothing"] {
            let holder = targets
                .iter()
                .find(|t| t.keys().iter().any(|k| k == key.as_bytes()))
                .unwrap_or_else(|| panic!("{engine:?}: stream {key} kept on the target"));
            assert_eq!(
                stream_state(holder, key, old),
                stream_state(&source, key, old),
                "{engine:?}: stream {key}"
            );
        }
        let leftovers: Vec<Vec<u8>> = targets
            .iter()
            .flat_map(RedisServer::keys)
            .filter(|k| k.starts_with(b"__cutover"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{engine:?}: temporary keys left: {leftovers:?}"
        );
    }
}

/// `cutover ctl ARGS` against `proxy`.
fn ctl(proxy: &Proxy, args: &[&str]) -> (bool, String) {
    let admin = format!("127.0.0.1:{}", proxy.admin_port);
    let mut all = vec!["ctl", "--admin", admin.as_str()];
    all.extend_from_slice(args);
    cutover(&all)
}

/// Writes through the proxy that Redis 7 and Valkey accept and older servers may lack.
fn redis7_writes(conn: &mut redis::Connection, round: u32) {
    let key = format!("w:{}", round % 50);
    let _: redis::Value = redis::cmd("SET")
        .arg(&key)
        .arg(round)
        .arg("GET")
        .query(conn)
        .expect("SET GET");
    let _: redis::Value = redis::cmd("EXPIRE")
        .arg(&key)
        .arg(1000 + round)
        .arg("GT")
        .query(conn)
        .expect("EXPIRE GT");
    let _: redis::Value = redis::cmd("ZINCRBY")
        .arg(format!("z:{}", round % 40))
        .arg(0.1)
        .arg("m")
        .query(conn)
        .expect("ZINCRBY");
    let _: redis::Value = redis::cmd("HINCRBY")
        .arg(format!("h:{}", round % 30))
        .arg("a")
        .arg(1)
        .query(conn)
        .expect("HINCRBY");
    if round.is_multiple_of(7) {
        let _: redis::Value = redis::cmd("GETDEL")
            .arg(format!("s:{}", round % 300))
            .query(conn)
            .expect("GETDEL");
    }
}

/// Writes every engine here accepts (for after the cutover onto an older target).
fn plain_writes(conn: &mut redis::Connection, round: u32) {
    let key = format!("w:{}", round % 50);
    run(conn, &["SET", &key, &round.to_string()]);
    run(conn, &["EXPIRE", &key, &(1000 + round).to_string()]);
    run(conn, &["ZINCRBY", &format!("z:{}", round % 40), "0.1", "m"]);
    run(conn, &["HINCRBY", &format!("h:{}", round % 30), "a", "1"]);
    run(conn, &["DEL", &format!("s:{}", round % 300)]);
}

/// A live migration from Redis 7.0 into `engine` under writes of Redis 7 syntax (copied,
/// not replayed, where the target lacks them), every read shadowed: no false shadow
/// mismatch, `ctl verify` passes, `ctl cutover` needs no force, the way back mirrors the
/// target's writes into Redis 7.0, a rollback and a second cutover keep both sides equal.
/// After the cutover the app sends only what the target runs (`modern`: Redis 7 syntax).
/// Returns the proxy's `/status` migration after the first drain, for more checks.
fn live_round_trip(engine: OtherEngine, copies: (&str, &str), modern: bool) {
    let source = RedisServer::start();
    fill_every_type(&source);
    let targets = vec![
        RedisServer::start_engine(engine),
        RedisServer::start_engine(engine),
    ];
    let proxy = Proxy::cutover(&migration_config(
        &source,
        &targets,
        "    shadow_ratio: 1\n",
    ));
    let mut conn = proxy.client();
    let writes_after = |conn: &mut redis::Connection, round: u32| {
        if modern {
            redis7_writes(conn, round);
        } else {
            plain_writes(conn, round);
        }
    };
    for round in 0..400 {
        redis7_writes(&mut conn, round);
    }
    proxy.wait_migration_drained(Duration::from_secs(60), 3);
    let s = proxy.status();
    let m = &s["pools"][0]["migration"];
    assert_eq!(
        m["engines"]["copy_method"]["to_target"], copies.0,
        "{engine:?}: {m}"
    );
    assert_eq!(
        m["engines"]["copy_method"]["to_source"], copies.1,
        "{engine:?}: {m}"
    );
    assert_eq!(
        m["copies"]["refused_then_by_type"], 0,
        "{engine:?}: no payload tried first: {m}"
    );
    assert_eq!(
        m["shadow"]["mismatches"], 0,
        "{engine:?}: no false shadow mismatch: {m}"
    );
    let (ok, out) = ctl(&proxy, &["verify"]);
    assert!(ok, "{engine:?}: ctl verify:\n{out}");
    let (ok, out) = ctl(&proxy, &["cutover"]);
    assert!(ok, "{engine:?}: cutover without force:\n{out}");
    for round in 400..600 {
        writes_after(&mut conn, round);
    }
    proxy.wait_migration_drained(Duration::from_secs(60), 3);
    let found = differences(&source, &targets);
    assert!(
        found.is_empty(),
        "{engine:?}: the way back into Redis 7.0: {found:?}"
    );
    let (ok, out) = ctl(&proxy, &["rollback"]);
    assert!(ok, "{engine:?}: rollback:\n{out}");
    for round in 600..700 {
        redis7_writes(&mut conn, round);
    }
    proxy.wait_migration_drained(Duration::from_secs(60), 3);
    let (ok, out) = ctl(&proxy, &["verify"]);
    assert!(ok, "{engine:?}: verify after rollback:\n{out}");
    let (ok, out) = ctl(&proxy, &["cutover"]);
    assert!(ok, "{engine:?}: cutover again:\n{out}");
    let found = differences(&source, &targets);
    assert!(found.is_empty(), "{engine:?}: {found:?}");
}

#[test]
fn live_round_trip_into_valkey_9() {
    live_round_trip(OtherEngine::Valkey9, ("restore", "by_type"), true);
}

#[test]
fn live_round_trip_into_valkey_8() {
    live_round_trip(OtherEngine::Valkey8, ("restore", "by_type"), true);
}

#[test]
fn live_round_trip_into_redis_6_2() {
    live_round_trip(OtherEngine::Redis62, ("by_type", "restore"), false);
}

#[test]
fn live_round_trip_into_redis_6_0() {
    live_round_trip(OtherEngine::Redis60, ("by_type", "restore"), false);
}

/// A multi-key command whose keys land on different target servers is in the readiness
/// report (`/status`, `ctl status`, the metric): two keys that the target's placement
/// (from the proxy's own config) puts apart.
#[test]
fn readiness_lists_commands_whose_keys_span_target_servers() {
    let source = RedisServer::start();
    let targets = vec![
        RedisServer::start_engine(OtherEngine::Valkey9),
        RedisServer::start_engine(OtherEngine::Valkey9),
    ];
    let proxy = Proxy::cutover(&migration_config(&source, &targets, ""));
    let mut conn = proxy.client();
    let conf = cutover::config::Config::load(&proxy.dir.path().join("proxy.yml")).expect("config");
    let fleet = conf
        .pools
        .iter()
        .find(|p| p.name == "fleet")
        .expect("fleet");
    let placement = fleet.placement();
    let server = |i: u32| placement.server_for(format!("u:{i}").as_bytes());
    let apart = (1..1000)
        .find(|&i| server(i) != server(0))
        .expect("keys on both servers");
    let together = (1..1000)
        .find(|&i| server(i) == server(0))
        .expect("keys together");
    run(&mut conn, &["SINTERSTORE", "u:0", &format!("u:{together}")]);
    let readiness = |proxy: &Proxy| proxy.migration()["readiness"].clone();
    assert_eq!(
        readiness(&proxy),
        serde_json::json!([]),
        "keys on one server are fine"
    );
    run(&mut conn, &["SUNIONSTORE", "u:0", &format!("u:{apart}")]);
    let listed = readiness(&proxy);
    assert_eq!(
        listed,
        serde_json::json!([{"command": "SUNIONSTORE", "reason": "keys_on_different_target_servers", "requests": 1}])
    );
    let (ok, out) = ctl(&proxy, &["status"]);
    assert!(
        ok && out.contains("SUNIONSTORE (1 requests: keys on different target servers)"),
        "{out}"
    );
    assert!(
        proxy
            .admin_get("/metrics")
            .1
            .contains("reason=\"keys_on_different_target_servers\"")
    );
}

/// Into Redis 6.0: every key by type from the first (no payload is sent to be refused),
/// the app's Redis 7 commands listed in the readiness report and copied instead of
/// replayed, verify zero, and `ctl verify` exits non-zero while a difference remains.
#[test]
fn live_migration_into_redis_6_reports_readiness_and_copies_by_type() {
    let source = RedisServer::start();
    fill_every_type(&source);
    let targets = vec![RedisServer::start_engine(OtherEngine::Redis60)];
    let proxy = Proxy::cutover(&migration_config(&source, &targets, ""));
    let mut conn = proxy.client();
    for round in 0..300 {
        redis7_writes(&mut conn, round);
    }
    proxy.wait_migration_drained(Duration::from_secs(60), 3);
    let s = proxy.status();
    let m = &s["pools"][0]["migration"];
    assert_eq!(m["engines"]["copy_method"]["to_target"], "by_type", "{m}");
    assert_eq!(
        m["copies"]["refused_then_by_type"], 0,
        "no payload was tried first: {m}"
    );
    let lacking: Vec<&str> = m["readiness"]
        .as_array()
        .expect("readiness")
        .iter()
        .filter_map(|r| r["command"].as_str())
        .collect();
    for form in ["SET ... GET", "EXPIRE ... NX|XX|GT|LT", "GETDEL"] {
        assert!(lacking.contains(&form), "{form} in {lacking:?}");
    }
    assert!(
        proxy
            .admin_get("/metrics")
            .1
            .contains("cutover_readiness_commands{")
    );
    let (ok, out) = ctl(&proxy, &["verify"]);
    assert!(ok, "{out}");
    let found = differences(&source, &targets);
    assert!(found.is_empty(), "{found:?}");
    // A difference made behind cutover's back: ctl verify exits non-zero.
    let _: () = redis::cmd("SET")
        .arg("s:1")
        .arg("changed")
        .query(&mut targets[0].client())
        .expect("SET");
    let (ok, out) = ctl(&proxy, &["verify"]);
    assert!(
        !ok,
        "ctl verify must fail while a difference remains:\n{out}"
    );
    let (code, _) = http(proxy.admin_port, "POST", "/verify?repair=true");
    assert_eq!(code, 202);
}

/// One hot 200,000-element list written continuously while keys are copied by type (a
/// Redis 6.0 target): its copies are bounded by its write bursts, not its writes (rule 9),
/// no key goes dirty, no temporary key is left, and the list ends equal.
#[test]
fn a_hot_big_list_copied_by_type_does_not_jam_its_lane() {
    let source = RedisServer::start();
    let elements: Vec<u32> = (0..200_000).collect();
    let mut src = source.client();
    for chunk in elements.chunks(20_000) {
        let _: i64 = redis::cmd("RPUSH")
            .arg("hot")
            .arg(chunk)
            .query(&mut src)
            .expect("fill");
    }
    support::fill_numbered(&source, 2000);
    let targets = vec![RedisServer::start_engine(OtherEngine::Redis60)];
    let proxy = Proxy::cutover(&migration_config(&source, &targets, "    lanes: 4\n"));
    let mut conn = proxy.client();
    let writes = 3000;
    for i in 0..writes {
        let _: i64 = redis::cmd("LPUSH")
            .arg("hot")
            .arg(i)
            .query(&mut conn)
            .expect("LPUSH");
        let _: redis::Value = redis::cmd("RPOP")
            .arg("hot")
            .query(&mut conn)
            .expect("RPOP");
        let _: () = redis::cmd("SET")
            .arg(format!("k{}", i % 2000))
            .arg(i)
            .query(&mut conn)
            .expect("SET");
    }
    proxy.wait_migration_drained(Duration::from_secs(120), 3);
    let m = proxy.migration();
    let write_copies = m["copies"]["by_reason"]["write"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(
        write_copies < 200,
        "{write_copies} copies for {} writes to the hot list: not bounded by bursts ({m})",
        writes * 2
    );
    assert!(m["mirror"]["folded"].as_u64().unwrap_or(0) > 0, "{m}");
    assert_eq!(m["mirror"]["dirtied"], 0, "{m}");
    wait_for("the lists to agree", Duration::from_secs(30), || {
        differences(&source, &targets).is_empty()
    });
    let leftovers: Vec<Vec<u8>> = targets[0]
        .keys()
        .into_iter()
        .filter(|k| k.starts_with(b"__cutover"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The command table accepts every argument count Valkey 8 (Redis 7.2 compatible) accepts
/// for each command cutover forwards: compared with the server's own `COMMAND INFO`
/// arity (`n`: exactly n, `-n`: at least n).
#[test]
fn the_command_table_accepts_every_form_valkey_8_accepts() {
    let server = RedisServer::start_engine(OtherEngine::Valkey8);
    let mut conn = server.client();
    let mut narrower = Vec::new();
    for spec in cutover::command::all() {
        if spec.access == cutover::command::Access::Local {
            continue;
        }
        let info: redis::Value = redis::cmd("COMMAND")
            .arg("INFO")
            .arg(spec.lower)
            .query(&mut conn)
            .expect("COMMAND INFO");
        let redis::Value::Array(entries) = info else {
            panic!("{}: {info:?}", spec.name)
        };
        let Some(redis::Value::Array(entry)) = entries.first() else {
            continue;
        };
        let Some(redis::Value::Int(arity)) = entry.get(1) else {
            panic!("{}: {entry:?}", spec.name)
        };
        let theirs: Vec<usize> = if *arity < 0 {
            let min = arity.unsigned_abs() as usize;
            (min..min + 8).collect()
        } else {
            vec![*arity as usize]
        };
        // Deliberate: MSET with an odd count (the server refuses it too, by its own
        // check), and EVAL/EVALSHA with no key (`EVAL s 0`: nothing to route by; see the
        // README's differences).
        let deliberate = |n: usize| match spec.name {
            "MSET" => n.is_multiple_of(2),
            "EVAL" | "EVALSHA" => n == 3,
            _ => false,
        };
        if let Some(argc) = theirs
            .iter()
            .find(|&&n| !spec.class.accepts(n) && !deliberate(n))
        {
            narrower.push(format!("{} (arity {arity}): {argc} refused", spec.name));
        }
    }
    assert!(narrower.is_empty(), "{narrower:#?}");
}
