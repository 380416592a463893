//! What the proxy answers itself and how it sets up backends, compared with nutcracker:
//! PING, QUIT, the AUTH gate and its three replies, AUTH and SELECT on backend connections,
//! the stats JSON layout; plus cutover's own /metrics, graceful shutdown, preconnect and
//! several connections per server.

mod support;

use std::time::Duration;

use support::{Proxy, RedisServer, RespConn, command, wait_for};

/// Send each command alone and collect the replies ("<closed>" once the proxy closed).
fn script(conn: &mut RespConn, lines: &[&[&[u8]]]) -> Vec<String> {
    conn.set_timeout(Duration::from_secs(2));
    lines
        .iter()
        .map(|args| {
            conn.send(&command(args));
            conn.try_reply().map_or("<closed>".to_string(), |r| {
                String::from_utf8_lossy(&r).into_owned()
            })
        })
        .collect()
}

#[test]
fn auth_flows_match_nutcracker() {
    let backend = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let config = support::pool_config(&["redis_auth: s3cret"], &[format!("{}:1", backend.addr())]);
    let lines: &[&[&[u8]]] = &[
        &[b"PING"],
        &[b"GET", b"k"],
        &[b"AUTH", b"wrong"],
        &[b"GET", b"k"],
        &[b"AUTH", b"s3cret"],
        &[b"SET", b"k", b"v"],
        &[b"GET", b"k"],
        &[b"PING"],
        &[b"AUTH", b"wrong"],
        &[b"GET", b"k"],
        &[b"AUTH", b"s3cret"],
        &[b"GET", b"k"],
    ];
    let nutcracker = script(&mut Proxy::nutcracker(&config).connect(), lines);
    let _: () = redis::cmd("FLUSHALL")
        .query(
            &mut redis::Client::open(format!("redis://:s3cret@{}/", backend.addr()))
                .and_then(|c| c.get_connection())
                .expect("auth"),
        )
        .expect("flush");
    let cutover = script(&mut Proxy::cutover(&config).connect(), lines);
    assert_eq!(cutover, nutcracker);
    assert_eq!(cutover[0], "-NOAUTH Authentication required\r\n");
    assert_eq!(cutover[2], "-ERR invalid password\r\n");
    assert_eq!(
        cutover[6], "$1\r\nv\r\n",
        "the proxy authenticated to the backend itself"
    );
    assert_eq!(
        cutover[9], "-NOAUTH Authentication required\r\n",
        "a wrong password signs the client out"
    );
}

#[test]
fn auth_without_a_password_and_quit_match_nutcracker() {
    let backend = RedisServer::start();
    let config = support::pool_config(&[], &[format!("{}:1", backend.addr())]);
    let lines: &[&[&[u8]]] = &[
        &[b"AUTH", b"x"],
        &[b"PING"],
        &[b"SET", b"q", b"1"],
        &[b"QUIT"],
        &[b"PING"],
    ];
    let nutcracker = script(&mut Proxy::nutcracker(&config).connect(), lines);
    backend.flush();
    let cutover = script(&mut Proxy::cutover(&config).connect(), lines);
    assert_eq!(cutover, nutcracker);
    assert_eq!(
        cutover,
        [
            "-ERR Client sent AUTH, but no password is set\r\n",
            "+PONG\r\n",
            "+OK\r\n",
            "<closed>",
            "<closed>"
        ]
    );
}

#[test]
fn quit_before_auth_closes_like_nutcracker() {
    let backend = RedisServer::start();
    let config = support::pool_config(&["redis_auth: pw"], &[format!("{}:1", backend.addr())]);
    let lines: &[&[&[u8]]] = &[&[b"QUIT"]];
    let nutcracker = script(&mut Proxy::nutcracker(&config).connect(), lines);
    let cutover = script(&mut Proxy::cutover(&config).connect(), lines);
    assert_eq!(cutover, nutcracker);
    assert_eq!(cutover, ["<closed>"]);
}

#[test]
fn redis_db_selects_the_database_on_every_backend_connection() {
    let backend = RedisServer::start();
    let config = support::pool_config(
        &["redis_db: 3", "server_connections: 2"],
        &[format!("{}:1", backend.addr())],
    );
    let cutover = Proxy::cutover(&config);
    let mut conn = cutover.connect();
    for i in 0..20 {
        assert_eq!(
            conn.call(&[b"SET", format!("db-key-{i}").as_bytes(), b"v"]),
            b"+OK\r\n"
        );
    }
    let mut direct = backend.client();
    let db0: i64 = redis::cmd("DBSIZE").query(&mut direct).expect("DBSIZE");
    let _: () = redis::cmd("SELECT")
        .arg(3)
        .query(&mut direct)
        .expect("SELECT");
    let db3: i64 = redis::cmd("DBSIZE").query(&mut direct).expect("DBSIZE");
    assert_eq!((db0, db3), (0, 20));
}

/// The stats JSON with every number replaced by 0 and the host name blanked: its layout.
fn layout(json: &str) -> String {
    let mut out = String::new();
    let mut in_string = false;
    let mut previous_digit = false;
    for c in json.chars() {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && c.is_ascii_digit() {
            if !previous_digit {
                out.push('0');
            }
            previous_digit = true;
            continue;
        }
        previous_digit = false;
        out.push(c);
    }
    let source = out.find("\"source\":\"").map(|i| i + 10).expect("source");
    let end = out[source..].find('"').expect("end of source") + source;
    out.replace_range(source..end, "HOST");
    out
}

#[test]
fn stats_json_has_nutcrackers_layout() {
    let backends = support::redis_servers(3);
    // Two pools; the second listens on a port of its own for each proxy.
    let config = |second: u16| {
        format!(
            "zeta:\n  listen: LISTEN\n  redis: true\n  servers:\n   - {}:1 two\n   - {}:1 one\nab:\n  listen: 127.0.0.1:{second}\n  redis: true\n  servers:\n   - {}:1\n",
            backends[0].addr(),
            backends[1].addr(),
            backends[2].addr()
        )
    };
    let nutcracker = Proxy::nutcracker(&config(support::free_port()));
    let cutover = Proxy::cutover(&config(support::free_port()));
    std::thread::sleep(Duration::from_millis(1200));
    let (nc, cut) = (nutcracker.stats(), cutover.stats());
    assert!(nc.ends_with("}\n") && cut.ends_with("}\n"), "{cut}");
    // The second pool's listen port differs between the two runs; layouts are the same.
    assert_eq!(layout(&cut), layout(&nc));
    assert!(
        cut.contains("\"ab\": {\"client_eof\""),
        "pools sorted by name: {cut}"
    );
}

#[test]
fn stats_count_requests_and_clients() {
    let backend = RedisServer::start();
    let config = support::pool_config(&[], &[format!("{}:1 only", backend.addr())]);
    let cutover = Proxy::cutover(&config);
    let mut conn = cutover.connect();
    for _ in 0..5 {
        conn.call(&[b"GET", b"x"]);
    }
    std::thread::sleep(Duration::from_millis(1200));
    let stats = cutover.stats();
    assert!(stats.contains("\"client_connections\":1"), "{stats}");
    assert!(stats.contains("\"only\": {\"server_eof\":0, \"server_err\":0, \"server_timedout\":0, \"server_connections\":1"), "{stats}");
    assert!(
        stats.contains(
            "\"requests\":5, \"request_bytes\":100, \"responses\":5, \"response_bytes\":25"
        ),
        "{stats}"
    );
}

#[test]
fn metrics_are_exported_by_pool_class_and_server() {
    let backend = RedisServer::start();
    let config = support::pool_config(&[], &[format!("{}:1 only", backend.addr())]);
    let cutover = Proxy::cutover(&config);
    let mut conn = cutover.connect();
    conn.call(&[b"SET", b"a", b"1"]);
    conn.call(&[b"GET", b"a"]);
    conn.call(&[b"NOPE"]);
    let (status, text) = cutover.admin_get("/metrics");
    assert_eq!(status, 200);
    for expected in [
        "cutover_requests_total{pool=\"p\",class=\"write\"} 1",
        "cutover_requests_total{pool=\"p\",class=\"read\"} 1",
        "cutover_request_errors_total{pool=\"p\",kind=\"unsupported\"} 1",
        "cutover_client_connections{pool=\"p\"} 1",
        "cutover_server_requests_total{pool=\"p\",server=\"only\"} 2",
        "cutover_server_connections{pool=\"p\",server=\"only\"} 1",
        "# TYPE cutover_request_duration_seconds histogram",
        "cutover_request_duration_seconds_bucket{pool=\"p\",class=\"read\",le=\"0.01\"}",
    ] {
        assert!(text.contains(expected), "missing {expected}:\n{text}");
    }
    assert!(!text.contains("key=\""), "never labelled by key");
    let (status, status_json) = cutover.admin_get("/status");
    assert_eq!(status, 200);
    assert!(status_json.contains("\"name\":\"p\""), "{status_json}");
    assert_eq!(cutover.admin_get("/nowhere").0, 404);
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits() {
    let hung = support::Blackhole::start();
    let backend = RedisServer::start();
    // A backend that never answers, and a 1.5 s timeout: a request is in flight at SIGTERM,
    // and the shutdown waits for it.
    let config = support::pool_config(&["timeout: 1500"], &[format!("127.0.0.1:{}:1", hung.port)]);
    let mut cutover = Proxy::cutover(&config);
    let (code, health) = cutover.admin_get("/health");
    assert_eq!((code, health.trim_end()), (200, "{\"healthy\":true}"));
    let mut conn = cutover.connect();
    conn.send(&command(&[b"GET", b"k"]));
    std::thread::sleep(Duration::from_millis(100));
    // While it finishes, a load balancer's health check is told to send clients elsewhere.
    cutover.signal("TERM");
    wait_for("/health to say it stops", Duration::from_secs(1), || {
        let (code, health) = cutover.admin_get("/health");
        code == 503 && health.contains("shutting down")
    });
    assert!(
        cutover.terminate(Duration::from_secs(5)),
        "cutover exits after SIGTERM"
    );
    assert_eq!(
        conn.try_reply().as_deref(),
        Some(&b"-ERR Connection timed out\r\n"[..]),
        "the request in flight got its reply first"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", cutover.port)).is_err(),
        "no longer accepting"
    );
    drop(backend);
}

#[test]
fn preconnect_opens_every_server_connection_at_start() {
    let backends = support::redis_servers(2);
    let config = support::pool_config(
        &["preconnect: true", "server_connections: 3"],
        &[
            format!("{}:1 a", backends[0].addr()),
            format!("{}:1 b", backends[1].addr()),
        ],
    );
    let cutover = Proxy::cutover(&config);
    std::thread::sleep(Duration::from_millis(300));
    let metrics = cutover.admin_get("/metrics").1;
    assert!(
        metrics.contains("cutover_server_connections{pool=\"p\",server=\"a\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cutover_server_connections{pool=\"p\",server=\"b\"} 3"),
        "{metrics}"
    );
}

#[test]
fn several_connections_per_server_keep_each_keys_order() {
    let backend = RedisServer::start();
    let config = support::pool_config(
        &["server_connections: 4"],
        &[format!("{}:1", backend.addr())],
    );
    let cutover = Proxy::cutover(&config);
    let mut conn = cutover.connect();
    // A pipeline of writes then reads of the same keys: every read sees its key's write,
    // because a key always takes the same connection.
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.extend(command(&[
            b"SET",
            format!("order-{i}").as_bytes(),
            format!("{i}").as_bytes(),
        ]));
        batch.extend(command(&[b"GET", format!("order-{i}").as_bytes()]));
    }
    conn.send(&batch);
    for i in 0..200 {
        assert_eq!(conn.reply(), b"+OK\r\n");
        assert_eq!(
            String::from_utf8_lossy(&conn.reply()),
            format!("${}\r\n{i}\r\n", i.to_string().len())
        );
    }
}

#[test]
fn unix_sockets_for_clients_and_backends() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let backend_sock = dir.path().join("redis.sock");
    let backend = RedisServer::start_with(&[
        "--unixsocket",
        &backend_sock.display().to_string(),
        "--unixsocketperm",
        "700",
    ]);
    let client_sock = dir.path().join("cutover.sock");
    // The pool listens on a unix socket; a second pool on TCP lets the harness see it is up.
    let config = format!(
        "tcp:\n  listen: LISTEN\n  redis: true\n  servers:\n   - {}:1\nunix:\n  listen: {} 0600\n  redis: true\n  servers:\n   - {}:1\n",
        backend.addr(),
        client_sock.display(),
        backend_sock.display()
    );
    let _cutover = Proxy::cutover(&config);
    let mode = std::fs::metadata(&client_sock)
        .expect("socket file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let mut stream =
        std::os::unix::net::UnixStream::connect(&client_sock).expect("connect to the unix socket");
    use std::io::{Read, Write};
    stream
        .write_all(&command(&[b"SET", b"via-unix", b"1"]))
        .expect("write");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reply = [0u8; 5];
    stream.read_exact(&mut reply).expect("reply");
    assert_eq!(&reply, b"+OK\r\n");
    assert_eq!(backend.keys(), vec![b"via-unix".to_vec()]);
}
