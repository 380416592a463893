//! The connection handshake of today's clients, at the protocol level: HELLO and RESP3
//! (replies byte for byte as the Redis server itself sends them), AUTH with a user name,
//! CLIENT, SELECT 0, ECHO, INFO, COMMAND, READONLY, RESET.

mod support;

use support::{Proxy, RedisServer, RespConn, redis_servers};

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

fn call(conn: &mut RespConn, args: &[&str]) -> String {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    text(conn.call(&args))
}

#[test]
fn resp3_replies_are_exactly_what_redis_sends() {
    let backend = RedisServer::start();
    let cutover = Proxy::cutover(&support::pool_config(
        &[],
        &[format!("{}:1", backend.addr())],
    ));
    let mut direct = RespConn::connect(backend.port);
    let mut proxied = cutover.connect();
    assert!(call(&mut direct, &["HELLO", "3"]).starts_with('%'));
    assert!(
        call(&mut proxied, &["HELLO", "3"]).starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
    );
    let script: &[&[&str]] = &[
        &["HSET", "h", "a", "1", "b", "2"],
        &["HGETALL", "h"],
        &["SADD", "s", "x", "y"],
        &["SMEMBERS", "s"],
        &["ZADD", "z", "1.5", "m", "2", "n"],
        &["ZRANGE", "z", "0", "-1", "WITHSCORES"],
        &["ZSCORE", "z", "m"],
        &["GET", "missing"],
        &["HGET", "h", "missing"],
        &["SET", "t", "v", "EX", "1000"],
        &["EXISTS", "t"],
        &["TYPE", "h"],
        &["HRANDFIELD", "h", "-1", "WITHVALUES"],
        &["LPOP", "nolist"],
        &["ZMSCORE", "z", "m", "q"],
        &["SMISMEMBER", "s", "x", "q"],
    ];
    for args in script {
        // The proxy's backend connection is RESP3 too, so replies are forwarded as they are.
        let via_proxy = call(&mut proxied, args);
        let straight = call(&mut direct, args);
        if args[0] == "HSET" || args[0] == "SADD" || args[0] == "ZADD" || args[0] == "SET" {
            // Both wrote; the second write finds the data there already.
            continue;
        }
        if args[0] == "HRANDFIELD" {
            assert!(via_proxy.starts_with('*'), "{via_proxy:?}");
            continue;
        }
        assert_eq!(via_proxy, straight, "{args:?}");
    }
    assert_eq!(
        call(&mut proxied, &["HGETALL", "h"]),
        "%2\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n"
    );
    assert_eq!(call(&mut proxied, &["ZSCORE", "z", "m"]), ",1.5\r\n");
    assert_eq!(call(&mut proxied, &["GET", "missing"]), "_\r\n");
}

#[test]
fn split_commands_merge_in_the_clients_protocol() {
    let backends = redis_servers(3);
    let servers: Vec<String> = backends.iter().map(|b| format!("{}:1", b.addr())).collect();
    let cutover = Proxy::cutover(&support::pool_config(&["hash: md5"], &servers));
    let mut conn = cutover.connect();
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let mut mset = vec!["MSET"];
    for k in &keys {
        mset.push(k);
        mset.push("v");
    }
    assert_eq!(call(&mut conn, &mset), "+OK\r\n");
    let mut mget: Vec<&str> = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    mget.push("nope");
    let resp2 = call(&mut conn, &mget);
    assert!(
        resp2.starts_with("*13\r\n") && resp2.ends_with("$-1\r\n"),
        "{resp2}"
    );
    call(&mut conn, &["HELLO", "3"]);
    let resp3 = call(&mut conn, &mget);
    assert_eq!(resp3, format!("*13\r\n{}_\r\n", "$1\r\nv\r\n".repeat(12)));
    let mut del: Vec<&str> = vec!["DEL"];
    del.extend(keys.iter().map(String::as_str));
    assert_eq!(call(&mut conn, &del), ":12\r\n");
    assert!(backends.iter().filter(|b| b.keys().is_empty()).count() == 3);
    assert_eq!(call(&mut conn, &["RESET"]), "+RESET\r\n");
    assert!(
        call(&mut conn, &mget).ends_with("$-1\r\n"),
        "back to RESP2 after RESET"
    );
}

#[test]
fn hello_versions_and_auth() {
    let backend = RedisServer::start_with(&["--requirepass", "pw"]);
    let cutover = Proxy::cutover(&support::pool_config(
        &["redis_auth: pw"],
        &[format!("{}:1", backend.addr())],
    ));
    let mut conn = cutover.connect();
    assert!(
        call(&mut conn, &["HELLO", "3"])
            .starts_with("-NOAUTH HELLO must be called with the client already authenticated")
    );
    assert_eq!(
        call(&mut conn, &["HELLO", "3", "AUTH", "default", "wrong"]),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(
        call(&mut conn, &["GET", "k"]),
        "-NOAUTH Authentication required\r\n"
    );
    let hello = call(
        &mut conn,
        &["HELLO", "3", "AUTH", "default", "pw", "SETNAME", "app1"],
    );
    assert!(
        hello.starts_with("%7\r\n") && hello.contains("$5\r\nproto\r\n:3\r\n"),
        "{hello}"
    );
    assert_eq!(call(&mut conn, &["CLIENT", "GETNAME"]), "$4\r\napp1\r\n");
    assert_eq!(
        call(&mut conn, &["SET", "k", "v"]),
        "+OK\r\n",
        "the RESP3 backend connection authenticated with HELLO 3 AUTH"
    );
    assert_eq!(call(&mut conn, &["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(
        call(&mut conn, &["HELLO", "4"]),
        "-NOPROTO unsupported protocol version\r\n"
    );
    let again = call(&mut conn, &["HELLO"]);
    assert!(
        again.contains("$5\r\nproto\r\n:3\r\n"),
        "HELLO alone reports the current protocol: {again}"
    );
    // By now connections have learned the server's version; HELLO reports it.
    let version = again
        .split("$7\r\nversion\r\n")
        .nth(1)
        .and_then(|v| v.split("\r\n").nth(1))
        .unwrap_or_default();
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()) && version.contains('.'),
        "version {version:?} in {again}"
    );
    assert_eq!(
        call(&mut conn, &["AUTH", "someone", "pw"]),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(
        call(&mut conn, &["GET", "k"]),
        "-NOAUTH Authentication required\r\n"
    );
    assert_eq!(call(&mut conn, &["AUTH", "default", "pw"]), "+OK\r\n");
    assert_eq!(call(&mut conn, &["GET", "k"]), "$1\r\nv\r\n");
}

#[test]
fn connection_setup_commands_are_answered_locally() {
    let backend = RedisServer::start();
    let cutover = Proxy::cutover(&support::pool_config(
        &[],
        &[format!("{}:1", backend.addr())],
    ));
    let mut conn = cutover.connect();
    assert_eq!(
        call(&mut conn, &["CLIENT", "SETINFO", "LIB-NAME", "mylib"]),
        "+OK\r\n"
    );
    assert_eq!(
        call(&mut conn, &["CLIENT", "SETINFO", "LIB-VER", "1.2"]),
        "+OK\r\n"
    );
    assert_eq!(call(&mut conn, &["CLIENT", "GETNAME"]), "$-1\r\n");
    assert_eq!(
        call(&mut conn, &["CLIENT", "SETNAME", "worker-7"]),
        "+OK\r\n"
    );
    assert_eq!(
        call(&mut conn, &["CLIENT", "GETNAME"]),
        "$8\r\nworker-7\r\n"
    );
    assert!(call(&mut conn, &["CLIENT", "ID"]).starts_with(':'));
    let info = call(&mut conn, &["CLIENT", "INFO"]);
    assert!(
        info.contains("name=worker-7")
            && info.contains("lib-name=mylib lib-ver=1.2")
            && info.contains("resp=2"),
        "{info}"
    );
    assert_eq!(
        call(&mut conn, &["CLIENT", "LIST"]),
        info,
        "CLIENT LIST shows this connection"
    );
    assert_eq!(
        call(&mut conn, &["CLIENT", "KILL", "ID", "1"]),
        "-ERR unsupported command 'CLIENT KILL'\r\n"
    );
    assert_eq!(call(&mut conn, &["SELECT", "0"]), "+OK\r\n");
    assert!(
        call(&mut conn, &["SELECT", "1"])
            .starts_with("-ERR SELECT 1: cutover serves one database per pool")
    );
    assert_eq!(call(&mut conn, &["ECHO", "hi there"]), "$8\r\nhi there\r\n");
    assert_eq!(call(&mut conn, &["READONLY"]), "+OK\r\n");
    assert_eq!(call(&mut conn, &["READWRITE"]), "+OK\r\n");
    let info = call(&mut conn, &["INFO"]);
    for line in [
        "# Server",
        "redis_version:7.",
        "cutover_version:",
        "connected_clients:1",
        "loading:0",
        "role:master",
        "migration_phase:none",
    ] {
        assert!(info.contains(line), "INFO lacks {line}: {info}");
    }
    let clients_only = call(&mut conn, &["INFO", "clients"]);
    assert!(
        clients_only.contains("# Clients") && !clients_only.contains("# Server"),
        "{clients_only}"
    );
    call(&mut conn, &["HELLO", "3"]);
    assert!(
        call(&mut conn, &["INFO", "server"]).starts_with('='),
        "INFO is a verbatim string in RESP3"
    );
    assert_eq!(call(&mut conn, &["CLIENT", "SETNAME", ""]), "+OK\r\n");
    assert_eq!(
        call(&mut conn, &["CLIENT", "GETNAME"]),
        "_\r\n",
        "a RESP3 null"
    );
}

#[test]
fn command_describes_the_supported_commands() {
    let backend = RedisServer::start();
    let cutover = Proxy::cutover(&support::pool_config(
        &[],
        &[format!("{}:1", backend.addr())],
    ));
    let mut conn = cutover.connect();
    let count: usize = call(&mut conn, &["COMMAND", "COUNT"])
        .trim_start_matches(':')
        .trim()
        .parse()
        .expect("a count");
    assert_eq!(count, cutover::command::all().count());
    let all = call(&mut conn, &["COMMAND"]);
    assert!(all.starts_with(&format!("*{count}\r\n")));
    assert!(
        all.contains("$3\r\nget\r\n:2\r\n") && all.contains("$4\r\nmget\r\n:-2\r\n"),
        "arity in Redis's convention"
    );
    assert!(
        !all.contains("$4\r\nkeys\r\n"),
        "only what cutover supports"
    );
    let get = call(&mut conn, &["COMMAND", "INFO", "get", "nosuch"]);
    assert!(
        get.starts_with("*2\r\n*10\r\n$3\r\nget\r\n:2\r\n*1\r\n+readonly\r\n:1\r\n:1\r\n:1\r\n")
            && get.ends_with("$-1\r\n"),
        "{get}"
    );
    let docs = call(&mut conn, &["COMMAND", "DOCS", "set"]);
    assert!(
        docs.starts_with("*2\r\n$3\r\nset\r\n*4\r\n$7\r\nsummary\r\n")
            && docs.contains("$5\r\ngroup\r\n$6\r\nstring\r\n"),
        "{docs}"
    );
    assert!(
        call(&mut conn, &["COMMAND", "GETKEYS", "get", "k"])
            .starts_with("-ERR unsupported command 'COMMAND GETKEYS'")
    );
}
