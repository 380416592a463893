//! Dead and hung backends, compared with nutcracker: `-ERR Connection refused` for a dead
//! server, re-routing after auto-ejection, `-ERR Connection timed out` for a hung one, and
//! clients of healthy servers never held up by a sick one.

mod support;

use std::time::{Duration, Instant};

use support::{Blackhole, Proxy, RedisServer, free_port};

/// Send each command alone (request, reply) and collect the replies.
fn one_at_a_time(proxy: &Proxy, lines: &[String]) -> Vec<String> {
    let mut conn = proxy.connect();
    lines
        .iter()
        .map(|line| {
            let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
            conn.send(&support::command(&args));
            String::from_utf8_lossy(&conn.try_reply().unwrap_or_else(|| b"<closed>".to_vec()))
                .into_owned()
        })
        .collect()
}

/// Run the same lines through nutcracker and cutover on `config`, flushing `live` between.
fn compare(config: &str, live: &[&RedisServer], lines: &[String]) -> Vec<String> {
    live.iter().for_each(|b| b.flush());
    let expected = one_at_a_time(&Proxy::nutcracker(config), lines);
    let nutcracker_contents: Vec<_> = live.iter().map(|b| b.snapshot()).collect();
    live.iter().for_each(|b| b.flush());
    let actual = one_at_a_time(&Proxy::cutover(config), lines);
    let cutover_contents: Vec<_> = live.iter().map(|b| b.snapshot()).collect();
    for (i, (want, got)) in expected.iter().zip(&actual).enumerate() {
        assert_eq!(
            got, want,
            "reply to {:?} (left cutover, right nutcracker)",
            lines[i]
        );
    }
    assert!(
        cutover_contents == nutcracker_contents,
        "backend contents differ"
    );
    actual
}

/// A key that cutover's placement of `config` puts on the server named `server`.
fn key_on(config: &str, server: &str) -> String {
    let parsed = cutover::config::Config::parse(&config.replace("LISTEN", "127.0.0.1:1"), "t.yml")
        .expect("config");
    let pool = &parsed.pools[0];
    let index = pool
        .servers
        .iter()
        .position(|s| s.name == server)
        .expect("server name");
    let placement = pool.placement();
    (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| placement.server_for(k.as_bytes()) == Some(index))
        .expect("a key on that server")
}

fn sets(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("SET key-{i} {i}")).collect()
}

#[test]
fn dead_server_without_ejection_refuses_its_keys() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let dead = free_port();
    let config = support::pool_config(
        &["hash: md5"],
        &[
            format!("{}:1", a.addr()),
            format!("{}:1", b.addr()),
            format!("127.0.0.1:{dead}:1"),
        ],
    );
    let replies = compare(&config, &[&a, &b], &sets(60));
    let refused = replies
        .iter()
        .filter(|r| r.as_str() == "-ERR Connection refused\r\n")
        .count();
    assert!(refused > 5 && refused < 55, "{refused} of 60 refused");
}

#[test]
fn dead_server_with_ejection_is_routed_around() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let dead = free_port();
    let config = support::pool_config(
        &[
            "hash: md5",
            "auto_eject_hosts: true",
            "server_failure_limit: 1",
            "server_retry_timeout: 60000",
        ],
        &[
            format!("{}:1", a.addr()),
            format!("{}:1", b.addr()),
            format!("127.0.0.1:{dead}:1"),
        ],
    );
    let mut lines = sets(60);
    lines.extend((0..60).map(|i| format!("GET key-{i}")));
    let replies = compare(&config, &[&a, &b], &lines);
    let refused = replies.iter().filter(|r| r.starts_with("-ERR")).count();
    assert_eq!(
        refused, 1,
        "only the request that found the server dead fails: {replies:?}"
    );
    // `/status` and `cutover ctl status` say which server is ejected.
    let proxy = Proxy::cutover(&config);
    one_at_a_time(&proxy, &sets(60));
    let servers = proxy.status()["pools"][0]["servers"].clone();
    let ejected: Vec<&str> = servers
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["ejected"] == true)
        .filter_map(|s| s["name"].as_str())
        .collect();
    let dead_name = format!("127.0.0.1:{dead}");
    assert_eq!(ejected, [dead_name.as_str()], "{servers}");
    let text = proxy.ctl_status();
    assert!(
        text.contains(&format!("servers  p {dead_name}: ejected")),
        "{text}"
    );
}

#[test]
fn every_server_ejected_refuses() {
    let dead = free_port();
    let config = support::pool_config(
        &[
            "auto_eject_hosts: true",
            "server_failure_limit: 1",
            "server_retry_timeout: 60000",
        ],
        &[format!("127.0.0.1:{dead}:1")],
    );
    let nutcracker = one_at_a_time(&Proxy::nutcracker(&config), &sets(3));
    let cutover = one_at_a_time(&Proxy::cutover(&config), &sets(3));
    assert_eq!(cutover, nutcracker);
    assert!(
        cutover.iter().all(|r| r == "-ERR Connection refused\r\n"),
        "{cutover:?}"
    );
}

#[test]
fn a_hung_server_times_out_and_healthy_ones_keep_serving() {
    let live = RedisServer::start();
    let hung = Blackhole::start();
    let config = support::pool_config(
        &["timeout: 300", "hash: md5"],
        &[
            format!("{}:1 live", live.addr()),
            format!("127.0.0.1:{}:1 hung", hung.port),
        ],
    );
    let (live_key, hung_key) = (key_on(&config, "live"), key_on(&config, "hung"));
    let lines = vec![
        format!("SET {live_key} 1"),
        format!("GET {hung_key}"),
        format!("GET {live_key}"),
    ];
    let replies = compare(&config, &[&live], &lines);
    assert_eq!(
        replies,
        ["+OK\r\n", "-ERR Connection timed out\r\n", "$1\r\n1\r\n"]
    );

    // While one client waits on the hung server, another is served by the live one at once.
    let cutover = Proxy::cutover(&config);
    let mut waiting = cutover.connect();
    waiting.send(&support::command(&[b"GET", hung_key.as_bytes()]));
    let mut other = cutover.connect();
    let started = Instant::now();
    assert_eq!(other.call(&[b"GET", live_key.as_bytes()]), b"$1\r\n1\r\n");
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "the live server's client waited {:?}",
        started.elapsed()
    );
    assert_eq!(waiting.reply(), b"-ERR Connection timed out\r\n");
}

#[test]
fn an_ejected_server_comes_back_after_the_retry_timeout() {
    let a = RedisServer::start();
    let b_port = free_port();
    let config = support::pool_config(
        &[
            "hash: md5",
            "auto_eject_hosts: true",
            "server_failure_limit: 1",
            "server_retry_timeout: 500",
        ],
        &[
            format!("{}:1 a", a.addr()),
            format!("127.0.0.1:{b_port}:1 b"),
        ],
    );
    let key_b = key_on(&config, "b");
    let cutover = Proxy::cutover(&config);
    let mut conn = cutover.connect();
    assert_eq!(
        conn.call(&[b"SET", key_b.as_bytes(), b"1"]),
        b"-ERR Connection refused\r\n"
    );
    assert_eq!(
        conn.call(&[b"SET", key_b.as_bytes(), b"2"]),
        b"+OK\r\n",
        "re-routed to a while b is ejected"
    );
    let b = RedisServer::start_on(b_port);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(conn.call(&[b"SET", key_b.as_bytes(), b"3"]), b"+OK\r\n");
    assert_eq!(
        b.keys(),
        vec![key_b.as_bytes().to_vec()],
        "b holds its key again after the retry timeout"
    );
    let metrics = cutover.admin_get("/metrics").1;
    assert!(
        metrics.contains("cutover_server_ejections_total{pool=\"p\",server=\"b\"} 1"),
        "{metrics}"
    );
}
