//! Replication capture (`migrate: capture: replication`): every write reaches the target,
//! also those that never pass through cutover — writers connected straight to the source,
//! its own expiry and eviction deletes, a script writing several keys, a FLUSHDB — and
//! the target ends equal to the source with no verify repair. A source that refuses PSYNC
//! fails `replication` at start with the server's name and what it said; `auto` falls back
//! to proxy mirroring and says so.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use support::{
    Proxy, RedisServer, cutover_bin, fill_numbered, migration_config, owner, redis_servers,
    wait_for,
};

/// cutover migrating `source` into `targets` with `capture: replication`.
fn capturing(source: &RedisServer, targets: &[RedisServer]) -> Proxy {
    Proxy::cutover(&migration_config(
        source,
        targets,
        "    capture: replication\n",
    ))
}

/// A writer loop on `conn` until `stop`: sets with 512-byte values (memory pressure), INCRs,
/// short TTLs that expire during the run, deletes.
fn write_until(mut conn: redis::Connection, stop: Arc<AtomicBool>, tag: &str) {
    let value = "v".repeat(512);
    let mut i: u64 = 0;
    while !stop.load(Relaxed) {
        let mut pipe = redis::pipe();
        for j in 0..20 {
            let n = i * 20 + j;
            pipe.cmd("SET")
                .arg(format!("{tag}:big:{}", n % 100_000))
                .arg(&value)
                .ignore();
            pipe.cmd("INCR").arg(format!("{tag}:n:{}", n % 50)).ignore();
            pipe.cmd("SET")
                .arg(format!("{tag}:t:{}", n % 200))
                .arg(n)
                .arg("PX")
                .arg(50 + n % 400)
                .ignore();
            if n.is_multiple_of(7) {
                pipe.cmd("DEL")
                    .arg(format!("{tag}:n:{}", (n / 7) % 50))
                    .ignore();
            }
        }
        pipe.query::<()>(&mut conn).expect("writes");
        // A steady load, not a flood: a copy per write keeps up with it (replays, the
        // step after this one, are what keeps up with a flood).
        std::thread::sleep(Duration::from_millis(2));
        i += 1;
    }
}

#[test]
fn every_write_reaches_the_target_also_those_that_bypass_cutover() {
    let source = RedisServer::start_with(&[
        "--maxmemory",
        "10mb",
        "--maxmemory-policy",
        "allkeys-random",
        "--repl-backlog-size",
        "4mb",
    ]);
    fill_numbered(&source, 2000);
    let targets = redis_servers(2);
    let proxy = capturing(&source, &targets);
    let status = proxy.admin_get("/status").1;
    assert!(status.contains("\"mode\":\"replication\""), "{status}");
    let text = proxy.ctl_status();
    assert!(
        text.contains("  capture  replication, following the source: "),
        "{text}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [("proxy", proxy.port), ("direct", source.port)]
        .into_iter()
        .map(|(tag, port)| {
            let stop = stop.clone();
            std::thread::spawn(move || write_until(support::connect_to(port), stop, tag))
        })
        .collect();
    // A script writing several keys, straight to the source (replicated as its effects).
    let mut direct = source.client();
    let _: () = redis::cmd("EVAL")
        .arg("redis.call('SET', KEYS[1], 'a'); redis.call('SET', KEYS[2], 'b'); redis.call('LPUSH', KEYS[3], 'c')")
        .arg(3)
        .arg("s:1")
        .arg("s:2")
        .arg("s:3")
        .query(&mut direct)
        .expect("EVAL");
    // The source drops the capture's connection, twice: it continues with PSYNC.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(500));
        source.drop_replicas();
        wait_for("the capture to reconnect", Duration::from_secs(10), || {
            redis::cmd("INFO")
                .arg("replication")
                .query::<String>(&mut source.client())
                .is_ok_and(|i| i.contains("connected_slaves:1"))
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    // A FLUSHDB between phases, straight to the source.
    let _: () = redis::cmd("FLUSHDB").query(&mut direct).expect("FLUSHDB");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let evicted = source.info_number("stats", "evicted_keys").unwrap_or(0);
    assert!(evicted > 0, "the source evicted keys during the run");
    proxy.wait_capture_caught_up(&source);
    // Keys expire on both sides on their own clocks; let the short TTLs run out.
    std::thread::sleep(Duration::from_millis(600));
    support::compare::assert_same(&source, &targets);
    let status: serde_json::Value =
        serde_json::from_str(&proxy.admin_get("/status").1).expect("/status");
    let capture = &status["pools"][0]["migration"]["capture"];
    let server = &capture["servers"][0];
    assert_eq!(server["continued"], 2, "{server}");
    assert_eq!(server["full_resyncs"], 0, "{server}");
    // Rule 12: stream writes after their key's marker are replayed, those before it are
    // dropped (the copy holds them); every copy's marker came back.
    let events = &capture["events"];
    eprintln!("capture events: {events}");
    for action in ["replayed", "in_copy", "marker"] {
        assert!(events[action].as_u64() > Some(0), "{action}: {events}");
    }
    assert_eq!(capture["pending_markers"], 0, "{capture}");
}

/// A capture disconnected while a burst overruns the source's tiny backlog: the source
/// cannot continue the stream, the gap is detected (a full resync, counted), every key of
/// that server is copied again (a forced full pass: the target is equal again without a
/// repair), and the cutover still needs a verify pass, which clears it.
#[test]
fn an_overrun_backlog_is_detected_and_a_repair_closes_the_gap() {
    let source = RedisServer::start_with(&["--repl-backlog-size", "16kb"]);
    fill_numbered(&source, 500);
    let targets = redis_servers(2);
    let proxy = capturing(&source, &targets);
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    overrun_the_backlog(&proxy, &source);
    wait_for("the full pass", Duration::from_secs(15), || {
        proxy.log().contains("full pass after a stream gap")
    });
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    support::compare::assert_same(&source, &targets);
    let status = proxy.admin_get("/status").1;
    assert!(status.contains("\"needs_verify\":true"), "{status}");
    assert!(
        proxy
            .admin_get("/metrics")
            .1
            .contains("cutover_capture_reconnects_total{")
    );
    assert_eq!(
        support::http(proxy.admin_port, "POST", "/verify?repair=true").0,
        202
    );
    wait_for("the repair", Duration::from_secs(30), || {
        proxy
            .admin_get("/status")
            .1
            .contains("\"needs_verify\":false")
    });
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    support::compare::assert_same(&source, &targets);
}

/// Make a gap in the stream `proxy` follows from `server` (started with a 16 KB
/// `repl-backlog-size`): its replica connection dropped, then a burst far over the backlog
/// straight to it before the capture is back (it waits 100 ms to reconnect), which the
/// server cannot continue; returns once the capture made a full resync.
fn overrun_the_backlog(proxy: &Proxy, server: &RedisServer) {
    let mut conn = server.client();
    server.drop_replicas();
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.cmd("SET")
            .arg(format!("burst:{i}"))
            .arg("x".repeat(100))
            .ignore();
    }
    pipe.query::<()>(&mut conn).expect("burst");
    wait_for("the full resync", Duration::from_secs(15), || {
        proxy.admin_get("/status").1.contains("\"full_resyncs\":1")
    });
}

/// The same gap after the cutover, in the stream of a target server (the side clients
/// use then): the source lacks what the gap held, so a rollback waits for a verify pass
/// with repair, as a cutover does. A rollback used to wait only for dirty keys, restarts,
/// ejections and evictions: it went through here, and the source held the burst only
/// if the gap's full pass (which no flip waits for) had finished, and still held any key
/// deleted in the gap.
#[test]
fn a_gap_in_a_target_servers_stream_after_the_cutover_holds_the_rollback() {
    let source = RedisServer::start();
    fill_numbered(&source, 200);
    let targets = vec![RedisServer::start_with(&["--repl-backlog-size", "16kb"])];
    let proxy = capturing(&source, &targets);
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    assert_eq!(proxy.verify_pass(false), 0);
    support::until_accepted("the cutover", Duration::from_secs(15), || {
        support::http(proxy.admin_port, "POST", "/cutover")
    });
    // The capture follows the target now (the burst goes straight to it, as a script's).
    overrun_the_backlog(&proxy, &targets[0]);
    let (code, body) = support::http(proxy.admin_port, "POST", "/rollback");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("part of the replication stream of a server clients use was lost"),
        "{body}"
    );
    assert!(proxy.verify_pass(true).as_u64().is_some());
    assert_eq!(proxy.verify_pass(false), 0);
    support::until_accepted("the rollback", Duration::from_secs(15), || {
        support::http(proxy.admin_port, "POST", "/rollback")
    });
    support::compare::assert_same(&source, &targets);
    assert_eq!(source.dbsize(), 2200);
}

#[test]
fn a_stream_cut_off_from_its_source_is_reported_retried_less_often_and_continued() {
    let source = RedisServer::start();
    fill_numbered(&source, 200);
    let targets = redis_servers(2);
    let proxy = capturing(&source, &targets);
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    // The source goes on serving its clients but refuses the replica (an ACL changed, say).
    let mut direct = source.client();
    let acl = |permission: &str, conn: &mut redis::Connection| {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg(permission)
            .query::<()>(conn)
            .expect("ACL SETUSER");
    };
    acl("-psync", &mut direct);
    source.drop_replicas();
    redis::cmd("SET")
        .arg("during-outage")
        .arg(1)
        .query::<()>(&mut direct)
        .expect("SET");
    let stream = || proxy.migration()["capture"]["servers"][0].clone();
    wait_for("3 s cut off", Duration::from_secs(20), || {
        stream()["disconnected_seconds"].as_f64().unwrap_or(0.0) >= 3.0
    });
    // Said in /status, on the terminal and in the metrics, with the server's refusal.
    let cut_off = stream();
    let failures = cut_off["failed_reconnects"].as_u64().unwrap_or(0);
    assert!(
        cut_off["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("NOPERM")),
        "{cut_off}"
    );
    let text = proxy.ctl_status();
    assert!(text.contains("DISCONNECTED for"), "{text}");
    let series = format!(
        "cutover_capture_disconnected_seconds{{pool=\"legacy\",server=\"{}\"}}",
        source.addr()
    );
    assert!(proxy.metric(&series) >= 3.0);
    assert!(
        proxy.metric("cutover_capture_reconnects_total{pool=\"legacy\",outcome=\"failed\"}")
            >= failures as f64
    );
    // Tried less and less often (every 100 ms, 30 tries in 3 s, before the backoff; a
    // slower machine only tries less), and logged once, not once a try.
    assert!((2..=8).contains(&failures), "{failures} tries in 3 s");
    let warnings = proxy
        .log()
        .matches("cannot reconnect the replication stream")
        .count();
    assert_eq!(warnings, 1, "{}", proxy.log());
    // Allowed again: continued from the source's backlog, so the outage's write arrives
    // with no full resync.
    acl("+psync", &mut direct);
    wait_for("the stream continued", Duration::from_secs(10), || {
        let s = stream();
        s["continued"] == 1 && s["disconnected_seconds"] == 0.0
    });
    assert_eq!(stream()["full_resyncs"], 0);
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    support::compare::assert_same(&source, &targets);
}

#[test]
fn a_source_refusing_psync_fails_replication_and_auto_falls_back() {
    let source = RedisServer::start_with(&["--rename-command", "PSYNC", ""]);
    let targets = redis_servers(1);
    let dir = tempfile::tempdir().expect("dir");
    let conf = dir.path().join("c.yml");
    let port = support::free_port();
    let text = migration_config(&source, &targets, "    capture: replication\n")
        .replace("LISTEN", &format!("127.0.0.1:{port}"));
    std::fs::write(&conf, &text).expect("config");
    let admin = support::free_port();
    let out = Command::new(cutover_bin())
        .args([
            "-c",
            &conf.display().to_string(),
            "-s",
            &support::free_port().to_string(),
            "-a",
            "127.0.0.1",
        ])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .output()
        .expect("cutover");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused at start");
    assert!(
        stderr.contains(&format!(
            "pool 'legacy': capture: replication: {}: refused PSYNC",
            source.addr()
        )),
        "{stderr}"
    );
    let auto = Proxy::cutover(&migration_config(&source, &targets, "    capture: auto\n"));
    wait_for("the fallback line", Duration::from_secs(5), || {
        auto.log()
            .contains("capture: auto falls back to proxy mirroring")
    });
    assert!(auto.admin_get("/status").1.contains("\"mode\":\"proxy\""));
}

/// INCR counters under replication capture, across cutover, rollback and cutover again:
/// a writer through cutover all along, a writer straight to the source until the cutover.
/// Every acknowledged increment is on both sides at the end, and no client saw an error.
#[test]
fn acknowledged_increments_survive_cutover_rollback_and_cutover_again_under_capture() {
    use std::collections::HashMap;
    let source = RedisServer::start();
    fill_numbered(&source, 500);
    let targets = redis_servers(2);
    let proxy = capturing(&source, &targets);
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    let counting = |port: u16, tag: &'static str, stop: Arc<AtomicBool>| {
        std::thread::spawn(move || {
            let mut conn = support::connect_to(port);
            let mut acked: HashMap<String, i64> = HashMap::new();
            let mut i = 0u64;
            while !stop.load(Relaxed) {
                let key = format!("{tag}:{}", i % 20);
                let _: i64 = redis::cmd("INCR")
                    .arg(&key)
                    .query(&mut conn)
                    .expect("no client error");
                *acked.entry(key).or_default() += 1;
                i += 1;
            }
            acked
        })
    };
    let (stop_proxy, stop_direct) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let through = counting(proxy.port, "c", stop_proxy.clone());
    let direct = counting(source.port, "d", stop_direct.clone());
    std::thread::sleep(Duration::from_millis(800));
    // Writers that bypass cutover stop before the cutover (they would keep writing to the
    // old servers).
    stop_direct.store(true, Relaxed);
    let direct_acked = direct.join().expect("direct writer");
    assert_eq!(support::http(proxy.admin_port, "POST", "/verify").0, 202);
    let flip = |path: &str| {
        wait_for(path, Duration::from_secs(30), || {
            let (code, body) = support::http(proxy.admin_port, "POST", path);
            assert!(code == 200 || code == 409, "{path}: {code} {body}");
            code == 200
        });
    };
    flip("/cutover");
    // After the cutover the capture follows the target's servers: a writer straight to one
    // of them (keys it owns) reaches the source too, until it stops before the rollback.
    let mut conn = proxy.client();
    for i in 0..40 {
        let _: () = redis::cmd("SET")
            .arg(format!("t:{i}"))
            .arg(0)
            .query(&mut conn)
            .expect("SET");
    }
    // The keys of one target server (whichever holds t:0).
    let server = owner(&targets, "t:0");
    let owned: Vec<String> = (0..40)
        .map(|i| format!("t:{i}"))
        .filter(|k| std::ptr::eq(owner(&targets, k), server))
        .collect();
    let stop_target = Arc::new(AtomicBool::new(false));
    let straight_to_target = {
        let (stop, port, keys) = (stop_target.clone(), server.port, owned.clone());
        std::thread::spawn(move || {
            let mut conn = support::connect_to(port);
            let mut acked: HashMap<String, i64> = keys.iter().map(|k| (k.clone(), 0)).collect();
            let mut i = 0;
            while !stop.load(Relaxed) {
                let key = &keys[i % keys.len()];
                let _: i64 = redis::cmd("INCR").arg(key).query(&mut conn).expect("INCR");
                *acked.get_mut(key).expect("key") += 1;
                i += 1;
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_millis(600));
    stop_target.store(true, Relaxed);
    let target_acked = straight_to_target
        .join()
        .expect("writer straight to a target");
    std::thread::sleep(Duration::from_millis(200));
    flip("/rollback");
    std::thread::sleep(Duration::from_millis(400));
    flip("/cutover");
    std::thread::sleep(Duration::from_millis(400));
    stop_proxy.store(true, Relaxed);
    let through_acked = through.join().expect("writer through cutover");
    proxy.wait_migration_drained(Duration::from_secs(30), 3);
    let capture = &proxy.migration()["capture"];
    assert_eq!(capture["mode"], "replication", "{capture}");
    assert_eq!(capture["side"], "target", "{capture}");
    for (acked, side) in [
        (&through_acked, "through cutover"),
        (&direct_acked, "direct"),
        (&target_acked, "straight to a target"),
    ] {
        for (key, n) in acked {
            for (name, server) in
                std::iter::once(("source", &source)).chain(targets.iter().map(|t| ("target", t)))
            {
                let held: Option<i64> = redis::cmd("GET")
                    .arg(key)
                    .query(&mut server.client())
                    .expect("GET");
                if name == "source" || held.is_some() {
                    assert_eq!(held, Some(*n), "{side} {key} on the {name}");
                }
            }
        }
    }
    support::compare::assert_same(&source, &targets);
}

/// Writes to hot keys, straight to the source or through `proxy_port`'s cutover, each
/// followed by reads of the same keys through cutover, until `stop`.
fn write_and_read(port: u16, reader: Option<u16>, stop: Arc<AtomicBool>, tag: &str) {
    let mut conn = support::connect_to(port);
    let mut reads = reader.map(support::connect_to);
    let mut i: u64 = 0;
    while !stop.load(Relaxed) {
        let k = i % 20;
        let mut pipe = redis::pipe();
        pipe.cmd("INCR").arg(format!("c:{k}")).ignore();
        pipe.cmd("HSET")
            .arg(format!("h:{k}"))
            .arg(format!("{tag}{}", i % 5))
            .arg(i)
            .ignore();
        pipe.cmd("LPUSH").arg(format!("l:{k}")).arg(i).ignore();
        pipe.cmd("LTRIM")
            .arg(format!("l:{k}"))
            .arg(0)
            .arg(9)
            .ignore();
        pipe.query::<()>(&mut conn).expect("writes");
        if let Some(reads) = reads.as_mut() {
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(format!("c:{k}")).ignore();
            pipe.cmd("HGETALL").arg(format!("h:{k}")).ignore();
            pipe.cmd("LRANGE")
                .arg(format!("l:{k}"))
                .arg(0)
                .arg(-1)
                .ignore();
            pipe.cmd("GET").arg(format!("k{}", i % 300)).ignore();
            pipe.query::<()>(reads).expect("reads");
        }
        i += 1;
    }
}

/// Shadow reads under capture are placed in the source's stream (read again inside a
/// `MULTI` with a marker) and compared in their key's lane at that point: with every read
/// sampled and hot keys written straight to the source and through cutover, no comparison
/// disagrees. A key changed behind cutover's back on its target is then caught, confirmed
/// and repaired.
#[test]
fn shadow_reads_placed_in_the_stream_find_no_false_mismatch_and_catch_a_real_one() {
    let source = RedisServer::start();
    fill_numbered(&source, 300);
    let targets = redis_servers(2);
    let proxy = Proxy::cutover(&migration_config(
        &source,
        &targets,
        "    capture: replication\n    shadow_ratio: 1.0\n",
    ));
    proxy.wait_migration_drained(Duration::from_secs(30), 3);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = [
        (source.port, Some(proxy.port), "direct"),
        (proxy.port, Some(proxy.port), "proxy"),
    ]
    .into_iter()
    .map(|(port, reader, tag)| {
        let stop = stop.clone();
        std::thread::spawn(move || write_and_read(port, reader, stop, tag))
    })
    .collect();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    proxy.wait_migration_drained(Duration::from_secs(30), 3);
    let shadow = proxy.migration()["shadow"].clone();
    eprintln!("shadow reads under capture: {shadow}");
    assert!(shadow["checked"].as_u64() > Some(1000), "{shadow}");
    assert_eq!(shadow["mismatches"], 0, "{shadow}");
    support::compare::assert_same(&source, &targets);

    // Behind cutover's back: the target's copy of k7 changes.
    let victim = owner(&targets, "k7");
    let _: () = redis::cmd("SET")
        .arg("k7")
        .arg("wrong")
        .query(&mut victim.client())
        .expect("diverge");
    let value: String = redis::cmd("GET")
        .arg("k7")
        .query(&mut proxy.client())
        .expect("GET");
    assert_eq!(value, "7", "clients are served by the source");
    wait_for(
        "the mismatch and its repair",
        Duration::from_secs(10),
        || {
            let shadow = &proxy.migration()["shadow"];
            shadow["mismatches"] == 1
                && shadow["repaired"] == 1
                && redis::cmd("GET")
                    .arg("k7")
                    .query::<String>(&mut victim.client())
                    .ok()
                    .as_deref()
                    == Some("7")
        },
    );
}

/// The consistency workload under capture, with a third of its clients connected straight
/// to the source (each write followed by a read, every read through cutover compared with
/// the target), beside a filler straight to the source that makes it evict; a source with
/// `maxmemory` and random eviction, pre-filled keys expiring mid-run, the workload's Lua
/// script, the capture's connection killed twice, and one FLUSHDB between two phases: the
/// target ends equal with no verify repair, and no shadow read disagrees.
#[test]
fn the_consistency_workload_with_a_third_of_its_writers_straight_to_the_source() {
    let source = RedisServer::start_with(&["--repl-backlog-size", "4mb"]);
    support::workload::prefill(&source);
    // Room for the replication backlog as it fills, and 1 MB of keys more.
    source.evict_beyond(5 * 1024 * 1024);
    let mut direct = source.client();
    let targets = redis_servers(3);
    let proxy = Proxy::cutover(&migration_config(
        &source,
        &targets,
        "    capture: replication\n    shadow_ratio: 1.0\n",
    ));
    let phase = |seed: u64, kill: bool| {
        let stop = Arc::new(AtomicBool::new(false));
        let filler = {
            let (stop, port) = (stop.clone(), source.port);
            std::thread::spawn(move || {
                let mut conn = support::connect_to(port);
                let value = "v".repeat(512);
                let mut i = 0u64;
                while !stop.load(Relaxed) {
                    // At the limit a write may be refused (OOM) while the source evicts.
                    let _: redis::RedisResult<()> = redis::cmd("SET")
                        .arg(format!("fill:{seed}:{i}"))
                        .arg(&value)
                        .query(&mut conn);
                    i += 1;
                    if i.is_multiple_of(10) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        };
        let clients: Vec<_> = (0..6u64)
            .map(|c| {
                let port = if c % 3 == 0 { source.port } else { proxy.port };
                std::thread::spawn(move || {
                    support::workload::client_ops(port, seed * 100 + c, 1500, true)
                })
            })
            .collect();
        if kill {
            for _ in 0..2 {
                std::thread::sleep(Duration::from_millis(300));
                source.drop_replicas();
            }
        }
        for c in clients {
            c.join().expect("client");
        }
        stop.store(true, Relaxed);
        filler.join().expect("filler");
    };
    phase(7, true);
    let _: () = redis::cmd("FLUSHDB").query(&mut direct).expect("FLUSHDB");
    phase(8, false);
    let evicted = source.info_number("stats", "evicted_keys").unwrap_or(0);
    assert!(evicted > 0, "the source evicted keys during the run");
    // Let the short TTLs of the prefill run out, then wait for the stream and the lanes.
    std::thread::sleep(Duration::from_millis(1600));
    wait_for(
        "the capture to apply the whole stream",
        Duration::from_secs(60),
        || proxy.captured() >= source.master_repl_offset(),
    );
    proxy.wait_migration_drained(Duration::from_secs(120), 5);
    support::compare::assert_same(&source, &targets);
    let migration = proxy.migration();
    let (capture, shadow) = (&migration["capture"], &migration["shadow"]);
    eprintln!("evicted {evicted}; capture {capture}; shadow {shadow}");
    let server = &capture["servers"][0];
    assert!(server["continued"].as_u64() >= Some(2), "{server}");
    assert_eq!(server["full_resyncs"], 0, "{server}");
    assert_eq!(
        migration["verify"]["last"],
        serde_json::Value::Null,
        "no repair ran"
    );
    assert!(shadow["checked"].as_u64() > Some(1000), "{shadow}");
    let logged: Vec<String> = proxy
        .log()
        .lines()
        .filter(|line| line.contains("mismatch"))
        .map(str::to_owned)
        .collect();
    assert_eq!(shadow["mismatches"], 0, "{shadow}; logged: {logged:#?}");
}

/// Rule 20. Under capture, a cutover first opens a stream to every target server and waits
/// out its full sync (here made to last seconds, as a large server's does), with the gate
/// open. A target server that restarts empty meanwhile is found by the flip's last look,
/// taken under the gate, and the cutover is given up; after the refill and a verify pass
/// the next one goes through. With the last look off (`CUTOVER_TEST_SKIP_LAST_LOOK=1`), the cutover
/// went to the emptied server.
#[test]
fn a_target_server_that_restarts_while_the_cutover_prepares_gives_the_cutover_up() {
    let source = RedisServer::start();
    fill_numbered(&source, 300);
    let mut targets = redis_servers(2);
    let proxy = capturing(&source, &targets);
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    let verified = || {
        assert_eq!(proxy.verify_pass(false), 0, "a clean verify pass");
        wait_for("no blocker", Duration::from_secs(15), || {
            proxy.migration()["cutover"]["blockers"] == serde_json::json!([])
        });
    };
    verified();

    // About 150 keys each: a full sync of 3 s.
    targets[0].slow_snapshots(Duration::from_millis(20));
    let admin = proxy.admin_port;
    let cutover = std::thread::spawn(move || support::http(admin, "POST", "/cutover"));
    // The cutover's checks passed: it is waiting for the first target server's full sync.
    wait_for(
        "the cutover's stream to a target server",
        Duration::from_secs(15),
        || targets[0].info_number("replication", "connected_slaves") == Some(1),
    );
    let emptied = targets[0].addr();
    targets[0].restart_empty();
    let (code, body) = cutover.join().expect("the cutover's request");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains(&format!("target server {emptied}")), "{body}");
    let m = proxy.migration();
    assert_eq!(m["phase"], "migrating", "{m}");
    assert_eq!(m["cutover"]["given_up_late"], 1, "{m}");
    assert!(
        proxy
            .ctl_status()
            .contains("1 flips given up at their last look"),
        "{}",
        proxy.ctl_status()
    );
    let metrics = proxy.admin_get("/metrics").1;
    assert!(
        metrics.contains("cutover_cutover_given_up_late_total{pool=\"legacy\"} 1"),
        "{metrics}"
    );

    // The restart found, every key is copied to the emptied server again; after a verify
    // pass that starts now, the cutover goes through, and serves every key.
    wait_for("every key copied again", Duration::from_secs(30), || {
        targets.iter().map(RedisServer::dbsize).sum::<u64>() == source.dbsize()
    });
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    verified();
    support::until_accepted("the cutover", Duration::from_secs(30), || {
        support::http(proxy.admin_port, "POST", "/cutover")
    });
    support::compare::assert_same(&source, &targets);
}
