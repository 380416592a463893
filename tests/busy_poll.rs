//! `--busy-poll`: a lone client's requests are caught by polling (and answered as
//! without it), the poller goes quiet when the client does, and it stands aside when more
//! than four clients are owed replies; `auto`, the default, polls for a client that sends
//! its next request at once and not for one that thinks between requests.

mod support;

use std::time::Duration;

use std::path::PathBuf;

use redis::Commands;
use support::{Proxy, RedisServer, busy_script, cutover_bin, pool_config, wait_for};

/// A one-pool proxy over `backend` polling for `window_us` after client I/O.
fn polling_proxy(backend: &RedisServer, window_us: u64) -> Proxy {
    let window = window_us.to_string();
    Proxy::cutover_with(
        &pool_config(&[], &[format!("{}:1", backend.addr())]),
        &["--busy-poll", &window],
    )
}

/// A number in `/status`'s `busy_poll` object.
fn polled(proxy: &Proxy, field: &str) -> f64 {
    proxy.status()["busy_poll"][field]
        .as_f64()
        .unwrap_or_else(|| panic!("busy_poll.{field} in /status"))
}

#[test]
fn a_lone_client_is_polled_for_and_the_poller_sleeps_when_it_stops() {
    let backend = RedisServer::start();
    let proxy = polling_proxy(&backend, 500);
    assert_eq!(polled(&proxy, "window_us"), 500.0);
    let mut conn = proxy.client();
    for i in 0..3000 {
        let _: () = conn.set(format!("k{}", i % 100), i).expect("SET");
        let value: i64 = conn.get(format!("k{}", i % 100)).expect("GET");
        assert_eq!(value, i, "a polled request is answered as any other");
    }
    // Requests one after another: each arrives while the previous one's spell is open.
    let caught = polled(&proxy, "caught");
    assert!(caught >= 3000.0, "client I/O caught by polling: {caught}");
    assert!(polled(&proxy, "spells") >= 1.0);
    assert!(polled(&proxy, "polled_seconds") > 0.0);

    // The client stays connected but sends nothing: the poller stops within its window
    // and the process sleeps (a poller that kept going would use a whole core).
    std::thread::sleep(Duration::from_millis(200));
    let before = proxy.cpu_time();
    std::thread::sleep(Duration::from_secs(2));
    let used = proxy.cpu_time() - before;
    assert!(
        used < Duration::from_millis(400),
        "an idle proxy used {used:?} of CPU in 2 s"
    );
    let _: () = conn.set("after", 1).expect("SET after the pause");

    let text = proxy.ctl_status();
    assert!(
        text.contains("busy polling: 500 µs after client I/O; "),
        "{text}"
    );
    let metrics = proxy.admin_get("/metrics").1;
    for name in [
        "cutover_busy_poll_caught_total",
        "cutover_busy_poll_spells_total{end=\"idle\"}",
        "cutover_busy_poll_spell_seconds_count",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
}

#[test]
fn the_poller_stands_aside_while_more_than_four_clients_are_owed_replies() {
    let backend = RedisServer::start();
    let proxy = polling_proxy(&backend, 500);
    // Five clients each run a script that keeps the server busy for about 200 ms: the
    // server runs them one after another, so all five are owed a reply together.
    let script = busy_script(Duration::from_millis(200));
    let port = proxy.port;
    let clients: Vec<_> = (0..5)
        .map(|i| {
            let script = script.clone();
            std::thread::spawn(move || {
                let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                    .expect("client")
                    .get_connection()
                    .expect("connect");
                let done: i64 = redis::cmd("EVAL")
                    .arg(&script)
                    .arg(1)
                    .arg(format!("slow{i}"))
                    .query(&mut conn)
                    .expect("EVAL");
                done
            })
        })
        .collect();
    wait_for("five busy clients", Duration::from_secs(5), || {
        polled(&proxy, "busy_clients") == 5.0
    });
    for client in clients {
        assert_eq!(client.join().expect("client thread"), 1);
    }
    wait_for("no busy client", Duration::from_secs(5), || {
        polled(&proxy, "busy_clients") == 0.0
    });
    let crowded = proxy.metric("cutover_busy_poll_spells_total{end=\"crowded\"}");
    assert!(crowded >= 1.0, "spells stopped by crowding: {crowded}");
}

#[test]
fn busy_polling_is_auto_by_default_and_off_when_asked() {
    let backend = RedisServer::start();
    let config = pool_config(&[], &[format!("{}:1", backend.addr())]);
    let proxy = Proxy::cutover(&config);
    assert_eq!(proxy.status()["busy_poll"]["mode"], "auto");
    assert_eq!(polled(&proxy, "window_us"), 50.0);
    for off in ["off", "0"] {
        let proxy = Proxy::cutover_with(&config, &["--busy-poll", off]);
        let mut conn = proxy.client();
        let _: () = conn.set("a", 1).expect("SET");
        assert!(proxy.status()["busy_poll"].is_null(), "--busy-poll {off}");
        assert!(!proxy.ctl_status().contains("busy polling"));
    }
}

#[test]
fn a_bad_busy_poll_value_is_refused_at_start() {
    let out = std::process::Command::new(cutover_bin())
        .args(["--busy-poll", "soon", "-t"])
        .output()
        .expect("run cutover");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("expected auto, off or a number of microseconds, not \"soon\""),
        "{stderr}"
    );
}

/// `auto` (the default) polls for a client that sends its next request as soon as it has
/// a reply, and (but for a request or two on a busy machine) not for one that waits a
/// millisecond first: a poller that did would spin through every wait. Breaks if `auto` polled regardless of how clients behave.
#[test]
fn auto_polls_for_a_client_that_comes_back_at_once_and_not_for_one_that_thinks() {
    let backend = RedisServer::start();
    let proxy = Proxy::cutover(&pool_config(&[], &[format!("{}:1", backend.addr())]));
    let mut conn = proxy.client();
    for i in 0..300 {
        std::thread::sleep(Duration::from_millis(1));
        let _: () = conn.set("thinking", i).expect("SET");
    }
    // Not quite never: a proxy held up between writing a reply and noting it (a busy
    // machine: CI runs tests side by side) finds the client's next request waiting at
    // once, and takes it for a quick one. That turns polling on until the next request,
    // which the window misses. A poller that polled regardless would have polled after
    // each of the 300.
    let turned_on = polled(&proxy, "turned_on");
    assert!(turned_on <= 5.0, "a thinking client: {}", proxy.status());
    assert!(polled(&proxy, "spells") <= 10.0, "{}", proxy.status());
    assert!(polled(&proxy, "caught") <= 5.0, "{}", proxy.status());
    assert_eq!(
        proxy.metric("cutover_busy_poll_turns_total{to=\"on\"}"),
        turned_on
    );

    for i in 0..3000 {
        let _: () = conn.set(format!("k{}", i % 100), i).expect("SET");
        let value: i64 = conn.get(format!("k{}", i % 100)).expect("GET");
        assert_eq!(value, i, "a polled request is answered as any other");
    }
    assert!(polled(&proxy, "turned_on") >= 1.0, "{}", proxy.status());
    assert!(polled(&proxy, "caught") >= 1.0, "{}", proxy.status());
    assert!(proxy.metric("cutover_busy_poll_turns_total{to=\"on\"}") >= 1.0);
    let text = proxy.ctl_status();
    assert!(
        text.contains(
            "busy polling: auto, 50 µs after client I/O while clients come back within 200 µs ("
        ),
        "{text}"
    );
}

/// A cgroup made for one test with a CPU quota of 1.5 cores, removed when dropped.
struct QuotaGroup {
    dir: PathBuf,
}

impl QuotaGroup {
    /// A new group under the v2 hierarchy (if its root hands out the cpu controller) or
    /// v1's cpu hierarchy; none if this machine does not let the test make one.
    fn make() -> Option<QuotaGroup> {
        let name = format!("cutover-test-{}", std::process::id());
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let v2_cpu = std::fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "cpu"));
        let (dir, file, text) = if v2_cpu {
            (v2.join(&name), "cpu.max", "150000 100000")
        } else {
            let v1 = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"]
                .into_iter()
                .map(PathBuf::from)
                .find(|d| d.join("cpu.cfs_quota_us").exists())?;
            (v1.join(&name), "cpu.cfs_quota_us", "150000")
        };
        std::fs::create_dir(&dir).ok()?;
        let group = QuotaGroup { dir };
        std::fs::write(group.dir.join(file), text).ok()?;
        Some(group)
    }
}

impl Drop for QuotaGroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn busy_polling_under_a_cpu_quota_says_so() {
    let Some(group) = QuotaGroup::make() else {
        eprintln!(
            "this machine lets no test make a cgroup; the unit tests of cpu_quota.rs cover reading one"
        );
        return;
    };
    // A wrapper that joins the group and then becomes cutover, so that the quota holds
    // from the first instruction.
    let scratch = tempfile::tempdir().expect("dir");
    let wrapper = scratch.path().join("cutover-in-group");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho $$ > '{}/cgroup.procs' && exec '{}' \"$@\"\n",
            group.dir.display(),
            cutover_bin().display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let backend = RedisServer::start();
    let admin = support::free_port();
    let mut proxy = Proxy::start(
        &wrapper,
        &pool_config(&[], &[format!("{}:1", backend.addr())]),
        &[
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--busy-poll",
            "50",
        ],
    );
    proxy.admin_port = admin;
    assert_eq!(polled(&proxy, "cpu_quota_cores"), 1.5);
    assert!(
        proxy
            .ctl_status()
            .contains("under a CPU quota of 1.50 cores"),
        "{}",
        proxy.ctl_status()
    );
    let log = proxy.log();
    assert!(log.contains("--busy-poll under a CPU quota"), "{log}");
    drop(proxy);

    // `auto`, the default, does not poll under a quota at all.
    let admin = support::free_port();
    let mut proxy = Proxy::start(
        &wrapper,
        &pool_config(&[], &[format!("{}:1", backend.addr())]),
        &["--admin", &format!("127.0.0.1:{admin}")],
    );
    proxy.admin_port = admin;
    assert!(proxy.status()["busy_poll"].is_null());
    let log = proxy.log();
    assert!(
        log.contains("busy polling off: the process runs under a CPU quota"),
        "{log}"
    );
    drop(proxy);
    drop(group);
}
