//! Controlling a running migration: pause, resume and the rate limit through the admin
//! API; the state file across a clean stop and across a crash.

mod support;

use std::time::Duration;

use support::{Proxy, RedisServer, fill_numbered, http, migration_config, redis_servers, wait_for};

/// A number from `/status`.
fn status_number(proxy: &Proxy, field: &str) -> u64 {
    let status = proxy.admin_get("/status").1;
    let at = status
        .find(&format!("\"{field}\":"))
        .unwrap_or_else(|| panic!("{field} in {status}"));
    status[at + field.len() + 3..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a number")
}

#[test]
fn pause_resume_and_rate_limit() {
    let source = RedisServer::start();
    let targets = redis_servers(2);
    fill_numbered(&source, 6000);
    let cutover = Proxy::cutover(&migration_config(
        &source,
        &targets,
        "    backfill_keys_per_second: 1000\n",
    ));
    wait_for("the backfill to start", Duration::from_secs(10), || {
        status_number(&cutover, "keys_scanned") > 100
    });
    assert!(
        cutover
            .admin_get("/status")
            .1
            .contains("\"rate_limit_keys_per_second\":1000")
    );

    let (code, body) = http(cutover.admin_port, "POST", "/backfill/pause");
    assert_eq!(code, 200, "{body}");
    std::thread::sleep(Duration::from_millis(300));
    let paused_at = status_number(&cutover, "keys_scanned");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        status_number(&cutover, "keys_scanned") <= paused_at + 100,
        "paused: at most the batch in hand finishes"
    );
    assert!(
        cutover
            .admin_get("/status")
            .1
            .contains("\"state\":\"paused\"")
    );

    assert_eq!(http(cutover.admin_port, "POST", "/backfill/resume").0, 200);
    assert_eq!(
        http(
            cutover.admin_port,
            "POST",
            "/backfill/rate?keys_per_second=0"
        )
        .0,
        200
    );
    assert_eq!(
        http(cutover.admin_port, "POST", "/backfill/rate").0,
        400,
        "a rate is required"
    );
    // Done scanning, and every queued copy made.
    wait_for("the backfill to finish", Duration::from_secs(30), || {
        let status = cutover.admin_get("/status").1;
        status.contains("\"done\":true") && status.contains("\"queued\":0")
    });
    assert_eq!(status_number(&cutover, "keys_scanned"), 6000);
    let copied: usize = targets.iter().map(|t| t.keys().len()).sum();
    assert_eq!(copied, 6000);
    let metrics = cutover.admin_get("/metrics").1;
    for expected in [
        "cutover_backfill_keys_copied_total{pool=\"legacy\"} 6000",
        "cutover_backfill_state{pool=\"legacy\",state=\"done\"} 1",
        "cutover_backfill_rate_limit_keys_per_second{pool=\"legacy\"} 0",
        "cutover_known_copied_keys{pool=\"legacy\"} 0",
    ] {
        assert!(metrics.contains(expected), "missing {expected}:\n{metrics}");
    }
}

#[test]
fn the_state_file_records_clean_and_unclean_stops() {
    let source = RedisServer::start();
    let targets = redis_servers(2);
    fill_numbered(&source, 3000);
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("legacy.state");
    let text = migration_config(
        &source,
        &targets,
        &format!("    state_file: {}\n", state.display()),
    );

    let mut first = Proxy::cutover(&text);
    wait_for("the backfill to finish", Duration::from_secs(30), || {
        first.admin_get("/status").1.contains("\"done\":true")
    });
    assert!(first.terminate(Duration::from_secs(15)), "stops on SIGTERM");
    let saved = std::fs::read_to_string(&state).expect("state file");
    assert!(
        saved.contains("clean true") && saved.contains("server 0 1 0"),
        "{saved}"
    );

    let second = Proxy::cutover(&text);
    assert!(
        second
            .admin_get("/status")
            .1
            .contains("\"needs_verify\":false"),
        "a clean stop needs no verify"
    );
    // A crash: the state file still says unclean.
    drop(second);
    let third = Proxy::cutover(&text);
    let status = third.admin_get("/status").1;
    assert!(
        status.contains("\"needs_verify\":true"),
        "after a crash a verify pass is needed: {status}"
    );
    assert!(
        status.contains("\"done\":true"),
        "the finished backfill is not repeated: {status}"
    );
}

#[test]
fn a_configured_token_guards_every_change() {
    let source = RedisServer::start();
    let targets = redis_servers(1);
    fill_numbered(&source, 10);
    let cutover = Proxy::cutover_env(
        &migration_config(&source, &targets, ""),
        &[("CUTOVER_ADMIN_TOKEN", "s3cret")],
    );
    assert_eq!(http(cutover.admin_port, "POST", "/backfill/pause").0, 401);
    assert_eq!(
        support::http_with(
            cutover.admin_port,
            "POST",
            "/backfill/pause",
            "Authorization: Bearer wrong\r\n"
        )
        .0,
        401
    );
    assert_eq!(
        support::http_with(
            cutover.admin_port,
            "POST",
            "/backfill/pause",
            "Authorization: Bearer s3cret\r\n"
        )
        .0,
        200
    );
    assert_eq!(
        cutover.admin_get("/status").0,
        200,
        "reading needs no token"
    );
    assert_eq!(cutover.admin_get("/metrics").0, 200);
}

/// `/status` is JSON whatever the names and reasons hold: a pool and a server named with
/// non-ASCII characters, quotes and an apostrophe, while blockers (whose words hold
/// apostrophes) and dirty keys are listed. `ctl status` reads it.
#[test]
fn status_is_valid_json_with_odd_names_and_blockers() {
    let source = RedisServer::start();
    let targets = redis_servers(1);
    fill_numbered(&source, 3000);
    let name = "légacy'\"ü";
    let config = format!(
        "{name}:\n  listen: LISTEN\n  redis: true\n  servers:\n   - {}:1 sœur\"'\n  migrate_to: fleet\n  migrate:\n    backfill_keys_per_second: 200\nfleet:\n  redis: true\n  servers:\n   - {}:1\n",
        source.addr(),
        targets[0].addr()
    );
    let cutover = Proxy::cutover(&config);
    let (code, body) = cutover.admin_get("/status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    let pool = &status["pools"][0];
    assert_eq!(pool["name"], name);
    assert_eq!(pool["servers"][0]["name"], "sœur\"'");
    let blockers = pool["migration"]["cutover"]["blockers"]
        .as_array()
        .expect("blockers");
    assert!(!blockers.is_empty(), "the backfill is not done: {body}");
    let (code, body) = http(cutover.admin_port, "POST", "/cutover");
    assert_eq!(code, 409);
    let refusal: serde_json::Value = serde_json::from_str(&body).expect("refusal is JSON");
    assert!(refusal["reasons"].as_array().is_some_and(|r| !r.is_empty()));
    let text = cutover.ctl_status();
    assert!(text.contains(name));
}

/// A source of 100 keys migrating into one target, with a state file (and its dirty-key
/// file) in a fresh directory; `extra` adds `migrate:` settings. The config's text.
struct WithState {
    source: RedisServer,
    target: RedisServer,
    /// Holds the state file.
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    text: String,
}

impl WithState {
    fn new(extra: &str) -> WithState {
        let source = RedisServer::start();
        let target = RedisServer::start();
        fill_numbered(&source, 100);
        let dir = tempfile::tempdir().expect("dir");
        let state = dir.path().join("legacy.state");
        let text = migration_config(
            &source,
            std::slice::from_ref(&target),
            &format!("{extra}    state_file: {}\n", state.display()),
        );
        WithState {
            source,
            target,
            _dir: dir,
            state,
            text,
        }
    }
}

/// Rule 7 across a crash: keys marked dirty while the target was down are in the
/// dirty-key file when the process dies, and the next run counts them and copies them.
#[test]
fn dirty_keys_a_crash_left_are_copied_after_the_restart() {
    // Kept whole: a field left out of a destructuring would be dropped at once (a server
    // stopped, the directory removed).
    let mut scene = WithState::new("");
    let text = scene.text.clone();
    let first = Proxy::cutover(&text);
    first.wait_migration_drained(Duration::from_secs(30), 2);
    // The target goes away (its keys kept); writes go on, and their keys are marked
    // dirty, in the file.
    scene.target.shut_down();
    let mut conn = first.client();
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("while-down:{i}"))
            .arg(i)
            .query(&mut conn)
            .expect("SET");
    }
    let dirty = |proxy: &Proxy| proxy.migration()["mirror"]["dirty"].as_u64().unwrap_or(0);
    wait_for("dirty keys", Duration::from_secs(30), || dirty(&first) > 0);
    // The proxy crashes; the target comes back; the next run copies what the file holds.
    drop(first);
    scene.target.start_again();
    let second = Proxy::cutover(&text);
    assert!(
        second.log().contains("dirty keys left by an earlier run"),
        "{}",
        second.log()
    );
    // Drained means those keys were copied again (counted from the start, they keep the
    // migration from draining until then), and none is left.
    second.wait_migration_drained(Duration::from_secs(30), 2);
    let copied_again = second.migration()["copies"]["by_reason"]["dirty"].clone();
    assert!(copied_again.as_u64().unwrap_or(0) > 0, "{copied_again}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(dirty(&second), 0, "{}", second.migration());
    // A crash needs a verify pass anyway (the state file says unclean): it finds nothing.
    assert_eq!(http(second.admin_port, "POST", "/verify").0, 202);
    wait_for("a verify pass", Duration::from_secs(30), || {
        second.migration()["verify"]["last"]["differences"] == 0
    });
    support::compare::assert_same(&scene.source, std::slice::from_ref(&scene.target));
}

/// Rule 7 through a long outage: every copy of a dirty key fails while the target is
/// down, and the drainer backs off to a probe of a few keys every few seconds instead of
/// appending each key to the dirty-key file again and again; once the target is back, the
/// drain resumes, the file starts over empty, and the target ends equal.
#[test]
fn the_dirty_key_file_stops_growing_while_the_target_stays_down() {
    let mut scene = WithState::new("    lanes: 4\n");
    let proxy = Proxy::cutover(&scene.text);
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    scene.target.shut_down();
    pipelined_sets(&proxy, "down", 100);
    let mirror = |proxy: &Proxy, field: &str| proxy.migration()["mirror"][field].as_u64();
    wait_for("the drainer to back off", Duration::from_secs(60), || {
        mirror(&proxy, "dirty_backoff_ms").unwrap_or(0) >= 2000
    });
    let ctl = proxy.ctl_status();
    assert!(ctl.contains("copies of dirty keys keep failing"), "{ctl}");
    // From a 2 s wait on, 6 s hold at most two probes. Each record is a 4-byte length
    // and a 9-byte key.
    let file = scene.state.with_extension("dirty");
    let size = || std::fs::metadata(&file).map_or(0, |m| m.len());
    let before = size();
    std::thread::sleep(Duration::from_secs(6));
    let grown = size() - before;
    assert!(
        grown <= 2 * cutover::migrate::DIRTY_PROBE as u64 * 13,
        "{grown} bytes appended to the dirty-key file in 6 s ({})",
        proxy.migration()["mirror"]
    );
    assert!(mirror(&proxy, "dirty").unwrap_or(0) >= 100);
    // The target comes back: within a probe's wait the drain resumes at full speed.
    scene.target.start_again();
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    assert_eq!(mirror(&proxy, "dirty_backoff_ms"), Some(0));
    wait_for(
        "the dirty-key file to start over",
        Duration::from_secs(10),
        || size() == 0,
    );
    support::compare::assert_same(&scene.source, std::slice::from_ref(&scene.target));
}

/// `SET prefix:NNNN i` for `i` below `n`, in one pipeline through `proxy`.
fn pipelined_sets(proxy: &Proxy, prefix: &str, n: usize) {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("SET")
            .arg(format!("{prefix}:{i:04}"))
            .arg(i)
            .ignore();
    }
    pipe.query::<()>(&mut proxy.client()).expect("SETs");
}

/// Rule 17: a target server restarts empty after a verify pass found no difference. The
/// cutover would have gone through and served keys the target lost; instead the restart is
/// found (its run_id changed), every source key is copied again, and the cutover waits for
/// a verify pass that starts after the restart. Then the same across a stop of cutover
/// itself (the state file keeps the run_id it saw), and, after the cutover, for the
/// source before a rollback.
#[test]
fn a_target_server_that_restarts_empty_is_filled_again_before_the_cutover() {
    let mut scene = WithState::new("");
    let mut proxy = Proxy::cutover(&scene.text);
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    let verified = |proxy: &Proxy| assert_eq!(proxy.verify_pass(false), 0, "a clean verify pass");
    // `emptied` holds every key of `from` again, and the lanes are empty.
    let refilled = |proxy: &Proxy, emptied: &RedisServer, from: &RedisServer| {
        wait_for("every key copied again", Duration::from_secs(30), || {
            emptied.dbsize() == from.dbsize()
        });
        proxy.wait_migration_drained(Duration::from_secs(30), 2);
    };
    verified(&proxy);
    // The cutover would be allowed now (once the test's own connections to the source
    // have been seen gone).
    wait_for("no blocker", Duration::from_secs(10), || {
        proxy.migration()["cutover"]["blockers"] == serde_json::json!([])
    });

    let backfill_copied = proxy.migration()["backfill"]["keys_copied"].clone();
    scene.target.restart_empty();
    assert_eq!(scene.target.dbsize(), 0);
    let (code, body) = http(proxy.admin_port, "POST", "/cutover");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("restarted (its run_id changed)"), "{body}");
    refilled(&proxy, &scene.target, &scene.source);
    // The pass's copies are its own, not the backfill's (whose progress counts each key
    // once).
    let m = proxy.migration();
    assert_eq!(m["backfill"]["keys_copied"], backfill_copied, "{m}");
    let by_pass = m["copies"]["by_reason"]["full_pass"].as_u64().unwrap_or(0);
    assert!(by_pass >= scene.source.dbsize(), "{m}");
    let (code, body) = http(proxy.admin_port, "POST", "/cutover");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("run a verify pass with repair"), "{body}");
    let status = proxy.ctl_status();
    assert!(status.contains("restarts target server"), "{status}");
    support::compare::assert_same(&scene.source, std::slice::from_ref(&scene.target));

    // While cutover is stopped (cleanly), the target server restarts empty again.
    verified(&proxy);
    assert!(proxy.terminate(Duration::from_secs(30)), "stops on SIGTERM");
    scene.target.restart_empty();
    let proxy = Proxy::cutover(&scene.text);
    refilled(&proxy, &scene.target, &scene.source);
    assert_eq!(proxy.migration()["restarts"]["seen"][0]["side"], "target");
    verified(&proxy);
    support::until_accepted("the cutover", Duration::from_secs(10), || {
        http(proxy.admin_port, "POST", "/cutover")
    });
    support::compare::assert_same(&scene.source, std::slice::from_ref(&scene.target));

    // After the cutover the source is the mirrored side: one that restarts empty is
    // filled again from the target before a rollback may go to it.
    scene.source.restart_empty();
    let (code, body) = http(proxy.admin_port, "POST", "/rollback");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("source server"), "{body}");
    refilled(&proxy, &scene.source, &scene.target);
    verified(&proxy);
    let (code, body) = http(proxy.admin_port, "POST", "/rollback");
    assert_eq!(code, 200, "{body}");
    support::compare::assert_same(&scene.source, std::slice::from_ref(&scene.target));
}

/// Rule 17 on the side clients use: a source server restarts from a snapshot older than
/// its last writes, after a verify pass found no difference. Clients now see the old
/// values, the keys deleted since back, and the keys written since gone; the target still
/// held the newer state, and a cutover would have served it again. Instead the restart
/// is found, the target follows the source (its keys copied again, and the target's keys
/// of that server copied, so deleted where the source lost them), and the cutover waits
/// for a verify pass that starts after the restart, which finds the sides equal with no
/// repair. The periodic looks are stretched to an hour, so the restart is found by the
/// cutover's own check, right after it.
#[test]
fn a_source_server_that_restarts_from_an_older_snapshot_is_followed_before_the_cutover() {
    source_restart_from_an_older_snapshot("", FoundBy::TheCutoversCheck);
}

/// The same under replication capture, where the restart also breaks the source's
/// stream: it continues with a full resync, whose gap owes its own pass and verify.
#[test]
fn a_source_server_that_restarts_from_an_older_snapshot_is_followed_under_capture() {
    source_restart_from_an_older_snapshot("    capture: replication\n", FoundBy::APeriodicLook);
}

/// What finds a server's restart (or evictions) in a test.
#[derive(PartialEq)]
enum FoundBy {
    /// The look every 5 s, waited for.
    APeriodicLook,
    /// The cutover's check: the periodic looks are stretched to an hour (only the first,
    /// at the start, runs), and the cutover is asked for at once.
    TheCutoversCheck,
}

impl FoundBy {
    /// The environment cutover runs with.
    fn env(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            FoundBy::APeriodicLook => &[],
            FoundBy::TheCutoversCheck => &[("CUTOVER_TEST_LOOK_EVERY_MS", "3600000")],
        }
    }
}

/// A source server `SAVE`d, then keys added, changed and deleted through cutover, then
/// restarted from the snapshot after a clean verify, with `extra` `migrate:` settings.
fn source_restart_from_an_older_snapshot(extra: &str, found_by: FoundBy) {
    let mut scene = WithState::new(extra);
    let proxy = Proxy::cutover_env(&scene.text, found_by.env());
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    redis::cmd("SAVE")
        .query::<()>(&mut scene.source.client())
        .expect("SAVE");
    // After the snapshot, through cutover (so mirrored): keys added, changed, deleted.
    pipelined_sets(&proxy, "late", 50);
    let mut conn = proxy.client();
    let _: () = redis::cmd("SET")
        .arg("k1")
        .arg("changed")
        .query(&mut conn)
        .expect("SET");
    let _: i64 = redis::cmd("DEL").arg("k2").query(&mut conn).expect("DEL");
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    assert_eq!(proxy.verify_pass(false), 0);
    wait_for("no blocker", Duration::from_secs(10), || {
        proxy.migration()["cutover"]["blockers"] == serde_json::json!([])
    });

    scene.source.restart_from_last_save();
    assert_eq!(scene.source.dbsize(), 100, "the snapshot's keys");
    if found_by == FoundBy::APeriodicLook {
        wait_for(
            "the restart to be seen (a look every 5 s)",
            Duration::from_secs(15),
            || proxy.migration()["restarts"]["seen"][0]["side"] == "source",
        );
    }
    let (code, body) = http(proxy.admin_port, "POST", "/cutover");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("source server") && body.contains("restarted"),
        "{body}"
    );
    wait_for("the passes", Duration::from_secs(30), || {
        proxy.migration()["restarts"]["recopying"] == false
    });
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    let target: Vec<(String, Option<String>)> = ["k1", "k2", "late:0000"]
        .iter()
        .map(|key| {
            let value = redis::cmd("GET")
                .arg(key)
                .query(&mut scene.target.client())
                .expect("GET");
            (key.to_string(), value)
        })
        .collect();
    assert_eq!(
        target,
        [
            ("k1".to_string(), Some("1".to_string())),
            ("k2".to_string(), Some("2".to_string())),
            ("late:0000".to_string(), None),
        ],
        "the target as the source reloaded it"
    );
    support::compare::assert_same(&scene.source, std::slice::from_ref(&scene.target));
    let status = proxy.ctl_status();
    assert!(status.contains("restarts source server"), "{status}");
    assert_eq!(proxy.verify_pass(false), 0, "equal with no repair");
    support::until_accepted("the cutover", Duration::from_secs(10), || {
        http(proxy.admin_port, "POST", "/cutover")
    });
    support::compare::assert_same(&scene.source, std::slice::from_ref(&scene.target));
}

/// Rule 7 at a SIGTERM that cannot wait for a dead target: the lanes spill what they
/// hold into dirty keys, the stop stays clean, and the next run copies them.
#[test]
fn a_stop_with_the_target_down_spills_the_lanes_into_dirty_keys_and_stays_clean() {
    let mut scene = WithState::new("    lanes: 4\n");
    let (text, state) = (scene.text.clone(), scene.state.clone());
    let mut first = Proxy::cutover(&text);
    first.wait_migration_drained(Duration::from_secs(30), 2);
    // The target goes away (its keys kept); writes pile up in the lanes, each lane
    // retrying one copy at a time.
    scene.target.shut_down();
    pipelined_sets(&first, "queued", 2000);
    let queued = first.migration()["mirror"]["queued"].as_u64().unwrap_or(0);
    assert!(queued > 100, "{queued} events queued");
    // SIGTERM: the lanes cannot empty into a dead target within the stop's 10 s, so what
    // they hold goes to the dirty-key file, and the stop is still clean.
    assert!(first.terminate(Duration::from_secs(30)), "stops on SIGTERM");
    assert!(
        first
            .log()
            .contains("their keys are marked dirty, and the next run copies them")
    );
    let saved = std::fs::read_to_string(&state).expect("state file");
    assert!(saved.contains("clean true"), "{saved}");
    // The next run copies them: the target ends equal. (The target restarted meanwhile,
    // its keys saved: its run_id changed, so rule 17 has every key copied again too, and
    // owes a verify pass for that, not for the stop, which was clean.)
    scene.target.start_again();
    let second = Proxy::cutover(&text);
    wait_for(
        "the target's restart to be seen",
        Duration::from_secs(10),
        || {
            second.migration()["restarts"]["seen"]
                .as_array()
                .is_some_and(|seen| seen.len() == 1)
        },
    );
    second.wait_migration_drained(Duration::from_secs(60), 2);
    support::compare::assert_same(&scene.source, std::slice::from_ref(&scene.target));
}

/// Rule 7 when the disk does not hold: the dirty-key file cannot be opened (a directory
/// stands in its place), lanes overflow while the target sleeps, and every dirty key is
/// kept in memory, counted, copied again once the target is back (nothing lost); the
/// migration needs a verify pass, and the cutover is refused until one has run.
#[test]
fn dirty_keys_survive_a_dirty_file_that_cannot_be_written() {
    let source = RedisServer::start();
    let targets = vec![RedisServer::start_with(&["--enable-debug-command", "yes"])];
    fill_numbered(&source, 100);
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("legacy.state");
    std::fs::create_dir(dir.path().join("legacy.dirty")).expect("a directory where the file goes");
    let proxy = Proxy::cutover(&migration_config(
        &source,
        &targets,
        &format!(
            "    lanes: 1\n    mirror_queue_limit: 16\n    state_file: {}\n",
            state.display()
        ),
    ));
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    // Hold the target busy: the lane's copy waits, the queue fills, later writes go dirty.
    let sleeper = targets[0].hold_busy(2);
    let mut conn = proxy.client();
    for i in 0..300 {
        // DEL is always copied, so each write is a copy event in the one lane.
        let _: () = redis::cmd("SET")
            .arg(format!("d{i}"))
            .arg(i)
            .query(&mut conn)
            .expect("SET");
        let _: i64 = redis::cmd("DEL")
            .arg(format!("k{}", i % 100))
            .query(&mut conn)
            .expect("DEL");
    }
    let status: serde_json::Value =
        serde_json::from_str(&proxy.admin_get("/status").1).expect("JSON");
    let m = &status["pools"][0]["migration"];
    assert!(
        m["mirror"]["dirty_unpersisted"].as_u64().unwrap_or(0) > 0,
        "{m}"
    );
    assert_eq!(m["needs_verify"], true, "{m}");
    assert!(
        proxy
            .admin_get("/metrics")
            .1
            .contains("cutover_dirty_keys_unpersisted{")
    );
    sleeper.join().expect("sleeper");
    proxy.wait_migration_drained(Duration::from_secs(30), 3);
    support::compare::assert_same(&source, &targets);
    let (code, body) = http(proxy.admin_port, "POST", "/cutover");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("could not be written to the dirty-key file"),
        "{body}"
    );
    assert_eq!(http(proxy.admin_port, "POST", "/verify").0, 202);
    wait_for("a verify pass", Duration::from_secs(30), || {
        proxy
            .admin_get("/status")
            .1
            .contains("\"needs_verify\":false")
    });
    support::until_accepted("the cutover", Duration::from_secs(30), || {
        http(proxy.admin_port, "POST", "/cutover")
    });
}

/// The admin API's limits: a body over 64 KiB is refused (413) without being buffered,
/// a garbled request gets 400, and clients that connect and send nothing do not hold the
/// API for anyone else; past 64 open connections a new one gets 503 at once, and is
/// served again once they go.
#[test]
fn the_admin_api_keeps_its_limits() {
    use std::io::{Read, Write};
    let source = RedisServer::start();
    let targets = redis_servers(1);
    let cutover = Proxy::cutover(&migration_config(&source, &targets, ""));
    let idle: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", cutover.admin_port)).expect("connect"))
        .collect();
    assert_eq!(
        cutover.admin_get("/status").0,
        200,
        "served beside idle clients"
    );
    let exchange = |bytes: &[u8]| -> String {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", cutover.admin_port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = stream.write_all(bytes);
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    };
    let big = format!(
        "POST /verify HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n{}",
        "x".repeat(200_000)
    );
    let answer = exchange(big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = exchange(b"NONSENSE\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    drop(idle);
    let crowd: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", cutover.admin_port)).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let answer = exchange(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(crowd);
    wait_for("the admin API again", Duration::from_secs(5), || {
        cutover.admin_get("/status").0 == 200
    });
}

/// Rule 18, the side kept equal: a target pool with `auto_eject_hosts` does not eject
/// while it is mirrored. A target server held busy times out; had it been ejected, the
/// writes mirrored meanwhile would have landed on the other target server, and the busy
/// one would have come back with the old values (the same key on two servers). Instead
/// those writes fail, their keys are dirty, and they are copied once it answers.
#[test]
fn a_target_with_auto_eject_hosts_is_not_ejected_from_while_it_is_mirrored() {
    let source = RedisServer::start();
    let targets = vec![
        RedisServer::start(),
        RedisServer::start_with(&["--enable-debug-command", "yes"]),
    ];
    fill_numbered(&source, 200);
    let config = migration_config(&source, &targets, "").replace(
        "fleet:\n  redis: true\n",
        &format!("fleet:\n  redis: true\n{}", support::ejecting(1000)),
    );
    let proxy = Proxy::cutover(&config);
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    assert!(targets.iter().all(|t| t.dbsize() > 0));

    let sleeper = targets[1].hold_busy(2);
    let mut conn = proxy.client();
    for round in 0..8 {
        let mut pipe = redis::pipe();
        for i in 0..200 {
            pipe.cmd("SET").arg(format!("k{i}")).arg(round).ignore();
        }
        pipe.query::<()>(&mut conn).expect("SETs");
        std::thread::sleep(Duration::from_millis(200));
    }
    sleeper.join().expect("DEBUG SLEEP");
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    let servers = proxy.migration()["target_servers"].clone();
    assert!(
        servers
            .as_array()
            .into_iter()
            .flatten()
            .all(|s| s["ejected"] == false),
        "{servers}"
    );
    support::compare::assert_same(&source, &targets);
}

/// Rule 18, the side clients use: a source pool with `auto_eject_hosts` ejects as
/// nutcracker does, and the app's writes for the busy server's keys go to the other one
/// meanwhile. The cutover is refused while the server is out, and after it is back until
/// a verify pass with repair that started after; then the app reads the same values after
/// the cutover as before it.
#[test]
fn an_ejected_source_server_owes_a_verify_pass_before_the_cutover() {
    let sources = [
        RedisServer::start(),
        RedisServer::start_with(&["--enable-debug-command", "yes"]),
    ];
    let target = RedisServer::start();
    let config = format!(
        "legacy:\n  listen: LISTEN\n  redis: true\n{}  servers:\n   - {}:1\n   - {}:1\n  migrate_to: fleet\n  migrate:\n    scan_count: 100\nfleet:\n  redis: true\n  servers:\n   - {}:1\n",
        // Out for longer than the server sleeps, so the first cutover finds it out.
        support::ejecting(5000),
        sources[0].addr(),
        sources[1].addr(),
        target.addr()
    );
    let proxy = Proxy::cutover(&config);
    let mut conn = proxy.client();
    support::set_numbered(&mut conn, 200, "before");
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    let verify = |repair: bool| proxy.verify_pass(repair);
    assert_eq!(verify(false), 0);
    assert!(sources.iter().all(|s| s.dbsize() > 0));

    let sleeper = sources[1].hold_busy(2);
    support::set_numbered(&mut conn, 200, "during");
    support::set_numbered(&mut conn, 200, "during");
    let (code, body) = http(proxy.admin_port, "POST", "/cutover");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("ejected now (auto_eject_hosts): source server"),
        "{body}"
    );
    let text = proxy.ctl_status();
    assert!(
        text.contains("- ejected now (auto_eject_hosts): source server"),
        "{text}"
    );
    sleeper.join().expect("DEBUG SLEEP");
    wait_for("the server back", Duration::from_secs(10), || {
        let servers = proxy.status()["pools"][0]["servers"].clone();
        let _: redis::RedisResult<()> = redis::cmd("GET").arg("k0").query(&mut conn);
        servers
            .as_array()
            .into_iter()
            .flatten()
            .all(|s| s["ejected"] == false)
    });
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    let before_cutover = support::get_numbered(&mut conn, 200);
    let (code, body) = http(proxy.admin_port, "POST", "/cutover");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("was ejected (auto_eject_hosts)"), "{body}");

    verify(true);
    wait_for("a clean verify pass", Duration::from_secs(30), || {
        verify(false) == 0
    });
    support::until_accepted("the cutover", Duration::from_secs(10), || {
        http(proxy.admin_port, "POST", "/cutover")
    });
    assert_eq!(support::get_numbered(&mut conn, 200), before_cutover);
}

/// Rule 19: a target server whose maxmemory fills evicts keys, without an error to anyone.
/// After a clean verify the app writes more than the target can hold: the cutover is
/// refused (it would serve without the evicted keys) until the target has room and a
/// verify pass with repair has run since; then both sides are equal.
#[test]
fn a_target_that_evicts_keys_holds_the_cutover_until_it_has_room_and_a_verify_pass() {
    let source = RedisServer::start();
    let targets = vec![RedisServer::start()];
    fill_numbered(&source, 200);
    let proxy = Proxy::cutover(&migration_config(&source, &targets, ""));
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    let verify = |repair: bool| proxy.verify_pass(repair);
    assert_eq!(verify(false), 0);

    // Room for about 300 KB more on the target, which evicts at random when full.
    targets[0].evict_beyond(300_000);
    let mut conn = proxy.client();
    let value = "v".repeat(1000);
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.cmd("SET").arg(format!("big{i}")).arg(&value).ignore();
    }
    pipe.query::<()>(&mut conn).expect("SETs");
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    assert!(targets[0].dbsize() < source.dbsize(), "the target evicted");
    let (code, body) = http(proxy.admin_port, "POST", "/cutover");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("keys (its maxmemory is full)"), "{body}");
    let text = proxy.ctl_status();
    assert!(text.contains("evictions target server"), "{text}");
    assert!(proxy.metric_sum("cutover_server_evictions_total") > 0.0);

    no_maxmemory(&targets[0]);
    verify(true);
    wait_for("a clean verify pass", Duration::from_secs(30), || {
        verify(false) == 0
    });
    support::until_accepted("the cutover", Duration::from_secs(10), || {
        http(proxy.admin_port, "POST", "/cutover")
    });
    support::compare::assert_same(&source, &targets);
}

/// Rule 19 on the side clients use, under `capture: proxy`: a source server that evicts
/// after a clean verify (a cache at its maxmemory) drops keys nothing tells cutover about,
/// and the target keeps them. The cutover would have served them again; instead it is
/// refused, naming the server and replication capture, until a verify pass with repair
/// deleted them on the target.
#[test]
fn a_source_that_evicts_under_proxy_capture_holds_the_cutover_until_a_verify_pass() {
    let (source, targets, proxy) =
        a_source_evicting_after_a_clean_verify("", FoundBy::TheCutoversCheck);
    assert!(
        targets[0].dbsize() > source.dbsize(),
        "the target keeps what the source evicted"
    );
    let (code, body) = http(proxy.admin_port, "POST", "/cutover");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("that the other side may still hold")
            && body.contains("capture: replication"),
        "{body}"
    );
    let text = proxy.ctl_status();
    assert!(text.contains("still held by the other"), "{text}");
    assert!(proxy.metric_sum("cutover_evictions_not_followed_total") > 0.0);
    assert_eq!(proxy.metric_sum("cutover_server_evictions_total"), 0.0);

    no_maxmemory(&source);
    assert!(proxy.verify_pass(true).as_u64().unwrap_or(0) > 0);
    assert_eq!(proxy.verify_pass(false), 0);
    support::until_accepted("the cutover", Duration::from_secs(10), || {
        http(proxy.admin_port, "POST", "/cutover")
    });
    support::compare::assert_same(&source, &targets);
}

/// The same under replication capture: the stream carries each eviction as a delete, the
/// target follows, and nothing is owed.
#[test]
fn a_source_that_evicts_under_replication_capture_is_followed() {
    let (source, targets, proxy) = a_source_evicting_after_a_clean_verify(
        "    capture: replication\n",
        FoundBy::APeriodicLook,
    );
    wait_for("the target to follow", Duration::from_secs(15), || {
        targets[0].dbsize() == source.dbsize()
    });
    assert!(source.info_number("stats", "evicted_keys").unwrap_or(0) > 0);
    support::compare::assert_same(&source, &targets);
    // After the cutover the source is the side kept equal: evicting still, it would hold
    // the next rollback (rule 19's first half).
    no_maxmemory(&source);
    assert_eq!(proxy.verify_pass(false), 0);
    support::until_accepted("the cutover", Duration::from_secs(15), || {
        http(proxy.admin_port, "POST", "/cutover")
    });
    assert_eq!(
        proxy.migration()["evictions_not_followed"],
        serde_json::json!([])
    );
    assert_eq!(
        proxy.metric_sum("cutover_evictions_not_followed_total"),
        0.0
    );
    support::compare::assert_same(&source, &targets);
}

/// Lift `server`'s maxmemory: it evicts no more.
fn no_maxmemory(server: &RedisServer) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut server.client())
        .expect("CONFIG SET");
}

/// A source of 200 keys migrating into one target with `extra` `migrate:` settings,
/// verified clean; then the source is given room for about 2 MB more, evicting at
/// random, and the app writes 4 MB through cutover.
fn a_source_evicting_after_a_clean_verify(
    extra: &str,
    found_by: FoundBy,
) -> (RedisServer, Vec<RedisServer>, Proxy) {
    let source = RedisServer::start();
    let targets = vec![RedisServer::start()];
    fill_numbered(&source, 200);
    let config = migration_config(&source, &targets, extra);
    let proxy = Proxy::cutover_env(&config, found_by.env());
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    assert_eq!(proxy.verify_pass(false), 0);
    // Room for the replication backlog (1 MB, under capture) to fill, which the server
    // counts in its memory but cannot evict: past the limit it would refuse writes (-OOM).
    source.evict_beyond(2_000_000);
    let value = "v".repeat(1000);
    let mut conn = proxy.client();
    for batch in 0..40 {
        let mut pipe = redis::pipe();
        for i in 0..100 {
            pipe.cmd("SET")
                .arg(format!("big{batch}:{i}"))
                .arg(&value)
                .ignore();
        }
        pipe.query::<()>(&mut conn).expect("SETs");
    }
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    (source, targets, proxy)
}

/// DUMP or RESTORE refused outright (renamed away, or not permitted to the user, as for
/// an ACL user without `@dangerous`): copies go by type instead, and the migration ends
/// equal. Before, every copy failed the same way and the backfill never finished.
#[test]
fn a_refused_dump_or_restore_falls_back_to_copies_by_type() {
    for (source_args, target_args) in [
        (&[][..], &["--rename-command", "RESTORE", ""][..]),
        (
            &[
                "--user", "default", "on", "nopass", "~*", "&*", "+@all", "-dump",
            ][..],
            &[][..],
        ),
    ] {
        let source = RedisServer::start_with(source_args);
        let targets = vec![RedisServer::start_with(target_args)];
        fill_numbered(&source, 300);
        let _: () = redis::cmd("HSET")
            .arg("h")
            .arg("a")
            .arg(1)
            .query(&mut source.client())
            .expect("HSET");
        let proxy = Proxy::cutover(&migration_config(&source, &targets, ""));
        proxy.wait_migration_drained(Duration::from_secs(30), 2);
        support::compare::assert_same(&source, &targets);
        assert_eq!(
            proxy.verify_pass(false),
            0,
            "{}",
            proxy.migration()["verify"]
        );
        let m = proxy.migration();
        assert!(m["copies"]["by_type"].as_u64().unwrap_or(0) >= 300, "{m}");
        assert!(
            proxy.metric(
                "cutover_copy_restore_rejections_total{pool=\"legacy\",reason=\"restore_refused\"}"
            ) >= 1.0
        );
    }
}

/// With no `state_file`, the dirty-key file is a temporary one named after the process: no
/// later run reads it (the next starts over, and its backfill copies every key), so a
/// clean stop removes it instead of leaving one file per run behind.
#[test]
fn a_stop_without_a_state_file_removes_its_dirty_key_file() {
    let source = RedisServer::start();
    fill_numbered(&source, 50);
    let targets = redis_servers(1);
    let mut proxy = Proxy::cutover(&migration_config(&source, &targets, ""));
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    let file = std::env::temp_dir().join(format!("cutover-legacy-{}.dirty", proxy.pid()));
    assert!(file.exists(), "{}", file.display());
    assert!(proxy.terminate(Duration::from_secs(10)), "stops on SIGTERM");
    assert!(!file.exists(), "{} is left behind", file.display());
}
