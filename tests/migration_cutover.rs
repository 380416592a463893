//! The last mile: shadow reads that catch a diverged target, verify (online and offline)
//! for every kind of difference, and cutover, rollback and finalize under a live writer
//! that counts its acknowledged INCRs, across a restart.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use redis::Commands;
use serde_json::Value;
use support::{
    Proxy, RedisServer, cutover_bin, fill_numbered, http, migration_config, owner, redis_servers,
    wait_for,
};

/// The migration object of the first pool in `/status`.
fn migration(proxy: &Proxy) -> Value {
    proxy.migration()
}

/// Run a verify pass through the admin API and return its report.
fn verify_online(proxy: &Proxy, query: &str) -> Value {
    let (code, body) = http(proxy.admin_port, "POST", &format!("/verify{query}"));
    assert_eq!(code, 202, "{body}");
    wait_for("the verify pass", Duration::from_secs(60), || {
        migration(proxy)["verify"]["running"] == false
    });
    migration(proxy)["verify"]["last"].clone()
}

#[test]
fn a_diverged_target_is_caught_by_shadow_reads_and_repaired() {
    let source = RedisServer::start();
    let targets = redis_servers(2);
    fill_numbered(&source, 300);
    let cutover = Proxy::cutover(&migration_config(
        &source,
        &targets,
        "    shadow_ratio: 1.0\n",
    ));
    cutover.wait_migration_drained(Duration::from_secs(30), 3);
    let mut client = cutover.client();
    // Reads of keys that agree: checked, no mismatch.
    for i in 0..200 {
        let value: String = client.get(format!("k{i}")).expect("GET");
        assert_eq!(value, i.to_string());
    }
    wait_for("the checks", Duration::from_secs(10), || {
        migration(&cutover)["shadow"]["checked"].as_u64() >= Some(150)
    });
    assert_eq!(migration(&cutover)["shadow"]["mismatches"], 0);

    // Behind cutover's back: the target's copy of k7 changes.
    let victim = owner(&targets, "k7");
    let _: () = victim.client().set("k7", "wrong").expect("diverge");
    let value: String = client.get("k7").expect("GET");
    assert_eq!(value, "7", "clients are served by the source");
    wait_for(
        "the mismatch and its repair",
        Duration::from_secs(10),
        || {
            let shadow = &migration(&cutover)["shadow"];
            shadow["mismatches"] == 1
                && shadow["repaired"] == 1
                && victim.client().get::<_, String>("k7").ok().as_deref() == Some("7")
        },
    );
    let metrics = cutover.admin_get("/metrics").1;
    assert!(
        metrics.contains("cutover_shadow_mismatches_total{pool=\"legacy\",command=\"GET\"} 1"),
        "{metrics}"
    );
    assert!(
        cutover.log().contains("shadow read mismatch"),
        "logged with the key: {}",
        cutover.log()
    );
}

#[test]
fn verify_finds_every_kind_of_difference_offline_and_repairs_them() {
    let source = RedisServer::start();
    let targets = redis_servers(3);
    fill_numbered(&source, 500);
    let mut conn = source.client();
    let _: () = conn.hset("h", "f", "1").expect("hash");
    let _: () = conn.set("typed", "a string").expect("typed");
    let _: () = conn.set("gone-from-source", "x").expect("extra");
    let dir = tempfile::tempdir().expect("dir");
    let conf = dir.path().join("fleet.yml");
    let mut yaml =
        "fleet:\n  listen: 127.0.0.1:1\n  redis: true\n  hash: fnv1a_64\n  servers:\n".to_string();
    for t in &targets {
        yaml.push_str(&format!("   - {}:1\n", t.addr()));
    }
    std::fs::write(&conf, yaml).expect("config");
    let conf = conf.to_string_lossy().into_owned();
    let migrate = Command::new(cutover_bin())
        .args([
            "migrate",
            "--from",
            &source.addr(),
            "--to",
            &conf,
            "--verify",
        ])
        .output()
        .expect("cutover migrate");
    assert!(migrate.status.success(), "{migrate:?}");
    let printed = String::from_utf8_lossy(&migrate.stdout);
    assert!(
        printed.contains("verify: 503 keys checked") && printed.contains(" 0 differences"),
        "migrate --verify reports: {printed}"
    );
    let verify = |extra: &[&str]| {
        let from = source.addr();
        let mut args = vec!["verify", "--from", &from, "--to", &conf];
        args.extend_from_slice(extra);
        let out = Command::new(cutover_bin())
            .args(&args)
            .output()
            .expect("cutover verify");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, report) = verify(&[]);
    assert!(ok, "equal after migrate: {report}");
    assert!(report.contains(" 0 differences"), "{report}");

    // One difference of each kind.
    let _: () = owner(&targets, "k1").client().del("k1").expect("missing");
    let _: () = conn.del("gone-from-source").expect("extra");
    let typed = owner(&targets, "typed");
    let _: () = typed.client().del("typed").expect("type");
    let _: () = typed.client().rpush("typed", "x").expect("type");
    let _: () = owner(&targets, "k2")
        .client()
        .set("k2", "other")
        .expect("value");
    let _: () = owner(&targets, "k3")
        .client()
        .expire("k3", 5000)
        .expect("ttl");
    // A key placed on a server that does not own it counts as extra too.
    let wrong = targets
        .iter()
        .find(|t| !t.client().exists::<_, bool>("k4").unwrap_or(true))
        .expect("a server without k4");
    let _: () = wrong.client().set("k4", "4").expect("misplaced");

    let (ok, report) = verify(&[]);
    assert!(!ok, "differences make the exit status 1: {report}");
    assert!(report.contains(" 6 differences"), "{report}");
    for (kind, count, example) in [
        ("missing", 1, "k1"),
        ("extra", 2, "gone-from-source"),
        ("type", 1, "typed"),
        ("value", 1, "k2"),
        ("ttl", 1, "k3"),
    ] {
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(kind))
            .unwrap_or_else(|| panic!("{kind} in {report}"));
        assert!(
            line.contains(&format!(" {count}  e.g.")) && line.contains(example),
            "{line}"
        );
    }
    let (ok, report) = verify(&["--repair"]);
    assert!(ok, "{report}");
    assert!(report.contains("6 repaired"), "{report}");
    let (ok, report) = verify(&[]);
    assert!(ok && report.contains(" 0 differences"), "{report}");
    assert!(!wrong.client().exists::<_, bool>("k4").expect("exists"));
}

#[test]
fn cutover_rollback_and_cutover_again_lose_no_acknowledged_write() {
    let source = RedisServer::start();
    let targets = redis_servers(3);
    fill_numbered(&source, 3000);
    let state = tempfile::tempdir().expect("state dir");
    let extra = format!(
        "    shadow_ratio: 0.2\n    state_file: {}\n",
        state.path().join("legacy.state").display()
    );
    let conf = migration_config(&source, &targets, &extra);
    let mut cutover = Proxy::cutover(&conf);

    // Refused, with reasons, before a verify pass.
    cutover.wait_migration_drained(Duration::from_secs(30), 2);
    let (code, body) = http(cutover.admin_port, "POST", "/cutover");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("no verify pass has run"), "{body}");

    // A writer counting acknowledged INCRs, and a reader, through the proxy.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let port = cutover.port;
    let writer = {
        let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
        std::thread::spawn(move || {
            let mut conn = support::connect_to(port);
            while !stop.load(SeqCst) {
                match conn.incr::<_, _, i64>("counter", 1) {
                    Ok(_) => acked.fetch_add(1, SeqCst),
                    Err(_) => errors.fetch_add(1, SeqCst),
                };
                let _: redis::RedisResult<Option<String>> = conn.get("k5");
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let report = verify_online(&cutover, "");
    assert_eq!(report["differences"], 0, "{report}");

    let mut pauses = Vec::new();
    for (path, phase) in [
        ("/cutover", "cutover"),
        ("/rollback", "migrating"),
        ("/cutover", "cutover"),
    ] {
        let (code, body) = http(cutover.admin_port, "POST", path);
        assert_eq!(code, 200, "{path}: {body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(answer["to"], phase, "{body}");
        pauses.push(answer["pause_ms"].as_f64().expect("pause"));
        std::thread::sleep(Duration::from_millis(400));
    }
    stop.store(true, SeqCst);
    writer.join().expect("writer");
    println!("flip pauses (ms): {pauses:?}");
    wait_for("the lanes", Duration::from_secs(20), || {
        let m = migration(&cutover);
        m["mirror"]["queued"] == 0 && m["mirror"]["dirty"] == 0
    });
    let acked = acked.load(SeqCst);
    assert!(acked > 100, "the writer ran: {acked}");
    assert_eq!(errors.load(SeqCst), 0, "no client saw an error");
    let on_source: u64 = source.client().get("counter").expect("source counter");
    let on_target: u64 = owner(&targets, "counter")
        .client()
        .get("counter")
        .expect("target counter");
    assert_eq!(on_source, acked, "source");
    assert_eq!(on_target, acked, "target");
    let m = migration(&cutover);
    assert_eq!(m["phase"], "cutover");
    assert_eq!(m["authority"], "fleet");
    assert!(m["cutover"]["last_pause_ms"].as_f64() > Some(0.0));
    let metrics = cutover.admin_get("/metrics").1;
    assert!(
        metrics.contains("cutover_migration_phase{pool=\"legacy\",phase=\"cutover\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("cutover_cutover_pause_seconds_count{pool=\"legacy\"} 3"));

    // The phase survives a restart: writes still go to the target and back to the source.
    assert!(cutover.terminate(Duration::from_secs(10)), "clean stop");
    let cutover = Proxy::cutover(&conf);
    assert_eq!(migration(&cutover)["phase"], "cutover");
    let mut conn = cutover.client();
    let info: String = redis::cmd("INFO").query(&mut conn).expect("INFO");
    assert!(info.contains("migration_phase:cutover"), "{info}");
    let _: i64 = conn.incr("counter", 1).expect("INCR");
    wait_for("the mirror to the source", Duration::from_secs(10), || {
        source.client().get::<_, u64>("counter").ok() == Some(acked + 1)
    });

    // Finalize: the target alone; the source is no longer written.
    let (code, body) = http(cutover.admin_port, "POST", "/finalize");
    assert_eq!(code, 200, "{body}");
    let _: i64 = conn.incr("counter", 1).expect("INCR");
    let on_target: u64 = owner(&targets, "counter")
        .client()
        .get("counter")
        .expect("target");
    assert_eq!(on_target, acked + 2);
    std::thread::sleep(Duration::from_millis(300));
    let on_source: u64 = source.client().get("counter").expect("source");
    assert_eq!(on_source, acked + 1, "not mirrored after finalize");
    let (code, body) = http(cutover.admin_port, "POST", "/rollback");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("after finalize"), "{body}");
}

#[test]
fn ctl_prints_status_refusals_and_flips() {
    let source = RedisServer::start();
    let targets = redis_servers(2);
    fill_numbered(&source, 200);
    let cutover = Proxy::cutover_with(
        &migration_config(&source, &targets, ""),
        &["--admin-token", "sesame"],
    );
    let admin = format!("127.0.0.1:{}", cutover.admin_port);
    let ctl = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(cutover_bin());
        command.args(["ctl", "--admin", &admin]).args(args);
        command.env_remove("CUTOVER_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("CUTOVER_ADMIN_TOKEN", token);
        }
        let out = command.output().expect("cutover ctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    cutover.wait_migration_drained(Duration::from_secs(30), 2);
    let (ok, out, err) = ctl(&["status"], None);
    assert!(ok, "{err}");
    assert!(out.contains("legacy -> fleet   phase: migrating"), "{out}");
    assert!(out.contains("100.0%"), "{out}");
    assert!(out.contains("verify   not run yet"), "{out}");

    let (ok, _, err) = ctl(&["cutover"], None);
    assert!(!ok);
    assert!(err.contains("needs a token"), "{err}");
    let (ok, _, err) = ctl(&["cutover"], Some("sesame"));
    assert!(!ok);
    assert!(
        err.contains("not ready") && err.contains("cutover ctl verify"),
        "{err}"
    );

    let (ok, out, err) = ctl(&["verify"], Some("sesame"));
    assert!(ok, "{err}");
    assert!(out.contains("0 differences in 200 keys"), "{out}");
    let (ok, out, err) = ctl(&["cutover"], Some("sesame"));
    assert!(ok, "{err}");
    assert!(out.contains("migrating -> cutover: requests held"), "{out}");
    let (ok, out, _) = ctl(&["status"], None);
    assert!(
        ok && out.contains("phase: cutover (clients served by fleet)"),
        "{out}"
    );

    let (ok, _, err) = Command::new(cutover_bin())
        .args(["ctl", "--admin", "127.0.0.1:1", "status"])
        .output()
        .map(|o| {
            (
                o.status.success(),
                (),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .expect("ctl");
    assert!(!ok);
    assert!(
        err.contains("cannot reach the admin API at 127.0.0.1:1"),
        "{err}"
    );
}

/// A client connected straight to a source server (not through cutover) blocks the
/// cutover, named in the refusal and in `/status`: a writer there would keep writing to
/// the old servers after the flip. cutover's own connections (named `cutover`) do not.
#[test]
fn a_client_connected_straight_to_the_source_blocks_the_cutover() {
    let source = RedisServer::start();
    let targets = redis_servers(1);
    support::fill_numbered(&source, 100);
    let proxy = Proxy::cutover(&migration_config(&source, &targets, ""));
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    assert_eq!(http(proxy.admin_port, "POST", "/verify").0, 202);
    let mut direct = source.client();
    let _: () = redis::cmd("SET")
        .arg("k1")
        .arg("1")
        .query(&mut direct)
        .expect("SET");
    wait_for("the refusal", Duration::from_secs(30), || {
        let (code, body) = http(proxy.admin_port, "POST", "/cutover");
        assert_ne!(code, 200, "the cutover must wait for the direct client");
        body.contains("connected straight to source server")
    });
    wait_for("the blocker in /status", Duration::from_secs(10), || {
        proxy
            .admin_get("/status")
            .1
            .contains("connected straight to source server")
    });
    drop(direct);
    support::until_accepted("the cutover", Duration::from_secs(30), || {
        http(proxy.admin_port, "POST", "/cutover")
    });
}

/// Every command cutover sends a source server comes from a connection that has named
/// itself, as the cutover's check for clients connected straight to the source assumes
/// (a nameless connection that has sent a command counts as such a client). Redis's slow
/// log, set to log every command, records each with its connection's name: from the
/// start (the short-lived probe that learns each server's version) through the backfill,
/// mirrored writes, shadow reads, a verify pass and the cutover itself. Only a connection's
/// handshake comes before its name.
#[test]
fn every_command_cutover_sends_the_source_comes_from_a_named_connection() {
    let source = RedisServer::start();
    let targets = redis_servers(2);
    fill_numbered(&source, 300);
    let mut admin = source.client();
    let _: () = redis::cmd("CONFIG")
        .arg(&[
            "SET",
            "slowlog-log-slower-than",
            "0",
            "slowlog-max-len",
            "100000",
        ])
        .query(&mut admin)
        .expect("log every command");
    let info: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query(&mut admin)
        .expect("CLIENT INFO");
    let own = info
        .split(' ')
        .find_map(|field| field.strip_prefix("addr="))
        .map(str::to_string)
        .expect("this connection's address");
    // Gone before the cutover, whose check would count it as a client of the source's.
    drop(admin);
    let proxy = Proxy::cutover(&migration_config(
        &source,
        &targets,
        "    shadow_ratio: 1.0\n",
    ));
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    let mut conn = proxy.client();
    for i in 0..50 {
        let _: () = conn.set(format!("k{i}"), i + 7).expect("SET");
        let _: String = conn.get(format!("k{i}")).expect("GET");
    }
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    verify_online(&proxy, "");
    support::until_accepted("the cutover", Duration::from_secs(30), || {
        http(proxy.admin_port, "POST", "/cutover")
    });
    // Each entry: id, time, duration, arguments, client address, client name.
    let entries: Vec<(Vec<String>, String, String)> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query::<Vec<(u64, u64, u64, Vec<String>, String, String)>>(&mut source.client())
        .expect("SLOWLOG GET")
        .into_iter()
        .map(|(_, _, _, args, addr, name)| (args, addr, name))
        .filter(|(_, addr, _)| *addr != own)
        .collect();
    let commands = |word: &str| {
        entries
            .iter()
            .filter(|(args, _, _)| args.first().is_some_and(|a| a.eq_ignore_ascii_case(word)))
            .count()
    };
    assert!(
        commands("INFO") >= 1 && commands("SCAN") >= 1 && commands("SET") >= 50,
        "the slow log holds cutover's commands: {} entries",
        entries.len()
    );
    // A connection's handshake (HELLO, AUTH, SELECT) comes before its name, as the check
    // allows for (it looks twice at a nameless connection that sent only those).
    let handshake = ["HELLO", "AUTH", "SELECT"];
    let nameless: Vec<_> = entries
        .iter()
        .filter(|(_, _, name)| !name.starts_with("cutover"))
        .filter(|(args, _, _)| {
            !args
                .first()
                .is_some_and(|a| handshake.iter().any(|h| a.eq_ignore_ascii_case(h)))
        })
        .collect();
    assert!(
        nameless.is_empty(),
        "commands from connections not named as cutover's: {nameless:?}"
    );
}

/// A connection the source has accepted but not yet heard from is nameless, like a client
/// that never speaks, and so is one of cutover's own until the server reads its
/// `CLIENT SETNAME`. The check looks twice at such a connection: one that stays silent
/// blocks the cutover; one that names itself as cutover's own between the two looks does
/// not. (The window is stretched to 3 s here, so the test can act inside it.)
#[test]
fn a_connection_in_its_handshake_is_looked_at_twice_before_it_blocks_the_cutover() {
    use std::io::{Read, Write};
    let source = RedisServer::start();
    let targets = redis_servers(1);
    support::fill_numbered(&source, 100);
    let proxy = Proxy::cutover_env(
        &migration_config(&source, &targets, ""),
        &[("CUTOVER_TEST_HANDSHAKE_GRACE_MS", "3000")],
    );
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    assert_eq!(http(proxy.admin_port, "POST", "/verify").0, 202);
    wait_for("a verify pass", Duration::from_secs(30), || {
        proxy.migration()["verify"]["last"]["differences"] == 0
    });
    let connect =
        || std::net::TcpStream::connect(("127.0.0.1", source.port)).expect("connect to the source");

    // Silent through both looks: a client, named in the refusal.
    let silent = connect();
    let (code, body) = http(proxy.admin_port, "POST", "/cutover");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("1 clients are connected straight to source server")
            && body.contains("name '', last command NULL"),
        "{body}"
    );
    let looked = |outcome: &str| {
        proxy.metric(&format!(
            "cutover_cutover_connections_looked_twice_total{{pool=\"legacy\",outcome=\"{outcome}\"}}"
        ))
    };
    assert!(looked("counted") >= 1.0);
    drop(silent);

    // Named as cutover's own between the looks: as the pool's connections do.
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut source.client())
        .expect("CLIENT LIST");
    let own = list
        .split([' ', '\n'])
        .filter_map(|field| field.strip_prefix("name="))
        .find(|name| name.starts_with(&format!("cutover-{}-", proxy.pid())))
        .expect("the proxy's connection name")
        .to_string();
    let mut starting = connect();
    let admin = proxy.admin_port;
    let cutover = std::thread::spawn(move || http(admin, "POST", "/cutover"));
    std::thread::sleep(Duration::from_millis(1000));
    write!(starting, "CLIENT SETNAME {own}\r\n").expect("SETNAME");
    let mut ok = [0u8; 5];
    starting.read_exact(&mut ok).expect("SETNAME's reply");
    assert_eq!(&ok, b"+OK\r\n");
    let (code, body) = cutover.join().expect("the cutover");
    assert_eq!(code, 200, "{body}");
    assert!(looked("cleared") >= 1.0);
}

/// Two cutover processes migrating one source, outside a fleet (say, one beside each app
/// host): each flips on its own, so one that cut over while the other still serves from
/// the source would leave the other's writes behind. Each process names its connections
/// after itself, and the other's block the cutover until it is gone.
#[test]
fn another_cutover_process_on_the_same_source_blocks_the_cutover() {
    let source = RedisServer::start();
    let targets = redis_servers(1);
    support::fill_numbered(&source, 100);
    let config = migration_config(&source, &targets, "");
    let proxy = Proxy::cutover(&config);
    let other = Proxy::cutover(&config);
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    other.wait_migration_drained(Duration::from_secs(30), 2);
    assert_eq!(http(proxy.admin_port, "POST", "/verify").0, 202);
    wait_for("a verify pass", Duration::from_secs(30), || {
        proxy.migration()["verify"]["last"]["differences"] == 0
    });
    let (code, body) = http(proxy.admin_port, "POST", "/cutover");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("1 other cutover processes are connected to source server")
            && body.contains(&format!("'cutover-{}-", other.pid())),
        "{body}"
    );
    drop(other);
    support::until_accepted("the cutover", Duration::from_secs(30), || {
        http(proxy.admin_port, "POST", "/cutover")
    });
}

/// A target that refuses every copy (here it needs a password the config does not give):
/// the keys wait as dirty, and the cutover's refusal says what the target answered, so the
/// operator need not search the log.
#[test]
fn a_target_refusing_copies_is_named_in_the_cutover_refusal() {
    let source = RedisServer::start();
    let target = RedisServer::start_with(&["--requirepass", "not-in-the-config"]);
    fill_numbered(&source, 50);
    let proxy = Proxy::cutover(&migration_config(
        &source,
        std::slice::from_ref(&target),
        "",
    ));
    wait_for("the refusal", Duration::from_secs(30), || {
        let (code, body) = http(proxy.admin_port, "POST", "/cutover");
        assert_ne!(code, 200, "{body}");
        body.contains("dirty keys wait to be copied again (the last copy that failed: ")
            && body.contains("NOAUTH")
    });
}

/// A verify pass with a target server down would count each of its keys as a difference:
/// `POST /verify` refuses, naming the server, until it is back.
#[test]
fn verify_waits_for_a_target_server_that_does_not_answer() {
    let source = RedisServer::start();
    let mut targets = redis_servers(2);
    fill_numbered(&source, 100);
    let proxy = Proxy::cutover(&migration_config(&source, &targets, ""));
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    targets[1].shut_down();
    let (code, body) = http(proxy.admin_port, "POST", "/verify");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains(&format!(
            "server {} of pool 'fleet' does not answer",
            targets[1].addr()
        )),
        "{body}"
    );
    targets[1].start_again();
    assert_eq!(http(proxy.admin_port, "POST", "/verify").0, 202);
    wait_for("a verify pass", Duration::from_secs(30), || {
        proxy.migration()["verify"]["last"]["differences"] == 0
    });
}

/// A source server that does not answer `CLIENT LIST` in time (here busy, in a pool with
/// no `timeout:`) blocks the cutover, named, instead of being skipped (a writer connected
/// straight to it would go unseen) or hanging the check until it answers.
#[test]
fn a_source_server_that_cannot_list_its_clients_blocks_the_cutover() {
    let source = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let targets = redis_servers(1);
    support::fill_numbered(&source, 100);
    let proxy = Proxy::cutover(&migration_config(&source, &targets, ""));
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    assert_eq!(http(proxy.admin_port, "POST", "/verify").0, 202);
    wait_for("a verify pass", Duration::from_secs(30), || {
        proxy.migration()["verify"]["last"]["differences"] == 0
    });
    let sleeper = source.hold_busy(4);
    // Without the check's own limit the refusal would come only once the server answers,
    // its clients listed and none found.
    let (code, body) = http(proxy.admin_port, "POST", "/cutover");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains(&format!(
            "cannot list the clients of source server {}",
            source.addr()
        )),
        "{body}"
    );
    sleeper.join().expect("DEBUG SLEEP");
}

/// A rollback is the way back from a target that misbehaves, so a target server that
/// hangs must not hang it, nor hold the clients of every other server while it waits.
/// - The flip's check reads the side clients use (after the cutover, the target) for
///   restarts and evictions since the last periodic look only for half a second, and
///   goes on.
/// - The hold, with the gate closed, waits for what was sent to that server before only
///   until the flip's limit (5 s): the rollback is given up, naming the server, while it
///   still sleeps, and clients of the other server are served again at once.
///
/// Before, the check waited two tries of 2 s for the sleeping server, and the hold waited
/// until it woke: every client was held for as long as it slept.
#[test]
fn a_target_server_that_hangs_gives_a_rollback_up_without_holding_every_client() {
    let source = RedisServer::start();
    let targets = vec![
        RedisServer::start(),
        RedisServer::start_with(&["--enable-debug-command", "yes"]),
    ];
    support::fill_numbered(&source, 100);
    // md5 spreads k0..k99 over both targets (fnv1a_64 may put them all on one).
    let config = migration_config(&source, &targets, "").replace(
        "fleet:\n  redis: true\n",
        "fleet:\n  redis: true\n  hash: md5\n",
    );
    let proxy = Proxy::cutover(&config);
    proxy.wait_migration_drained(Duration::from_secs(30), 2);
    assert_eq!(proxy.verify_pass(false), 0);
    support::until_accepted("the cutover", Duration::from_secs(10), || {
        http(proxy.admin_port, "POST", "/cutover")
    });
    let awake = (0..100)
        .map(|i| format!("k{i}"))
        .find(|key| owner(&targets, key).port == targets[0].port)
        .expect("a key of the server awake");
    // Connected first: a connection made while it sleeps would wait for it to wake.
    let mut probe = targets[1].client();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    // Asleep for longer than any of the checks waits; it is stopped, not waited for.
    let _sleeper = targets[1].hold_busy(60);
    let (code, body) = http(proxy.admin_port, "POST", "/rollback");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains(&format!(
            "server(s) {} of the side clients use did not answer what was sent to them before the flip within 5s",
            targets[1].addr()
        )),
        "{body}"
    );
    let log = proxy.log();
    assert!(
        log.contains("could not read every server of the side clients use within"),
        "{log}"
    );
    assert!(proxy.metric_sum("cutover_cutover_checks_unread_total") > 0.0);
    let status = proxy.ctl_status();
    assert!(
        status.contains("could not read a server of the side clients use within 500 ms"),
        "{status}"
    );
    let asleep = redis::cmd("PING").query::<String>(&mut probe);
    assert!(asleep.is_err(), "given up before the server woke");
    let value: Option<String> = redis::cmd("GET")
        .arg(&awake)
        .query(&mut proxy.client())
        .expect("GET");
    assert!(value.is_some());
    assert_eq!(migration(&proxy)["phase"], "cutover");
}
