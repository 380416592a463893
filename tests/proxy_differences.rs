//! Every place cutover deliberately differs from nutcracker 0.5.0, pinned: each test shows
//! what nutcracker does with the input and what cutover does instead (README.md lists them).

mod support;

use std::time::Duration;

use support::{Blackhole, Proxy, RedisServer, RespConn, command};

/// What a connection received in response to `input`: the replies, then whether the
/// proxy closed it.
fn conversation(conn: &mut RespConn, input: &[u8], replies: usize) -> (Vec<String>, bool) {
    conn.send(input);
    conn.set_timeout(Duration::from_millis(1500));
    let mut got = Vec::new();
    for _ in 0..replies {
        match conn.try_reply() {
            Some(r) => got.push(String::from_utf8_lossy(&r).into_owned()),
            None => break,
        }
    }
    let closed = got.len() < replies || conn.closed_within(Duration::from_millis(300));
    (got, closed)
}

/// Borrow a command's arguments.
fn as_refs(args: &[Vec<u8>]) -> Vec<&[u8]> {
    args.iter().map(Vec::as_slice).collect()
}

fn single(backend: &RedisServer) -> String {
    support::pool_config(&[], &[format!("{}:1", backend.addr())])
}

/// Replies of both proxies to the same input: `((nutcracker replies, closed), (cutover replies, closed))`.
fn both(config: &str, input: &[u8], replies: usize) -> ((Vec<String>, bool), (Vec<String>, bool)) {
    let nutcracker = conversation(&mut Proxy::nutcracker(config).connect(), input, replies);
    let cutover = conversation(&mut Proxy::cutover(config).connect(), input, replies);
    (nutcracker, cutover)
}

#[test]
fn unsupported_command_gets_an_error_and_keeps_earlier_replies() {
    let backend = RedisServer::start();
    let input = [
        command(&[b"GET", b"a"]),
        command(&[b"KEYS", b"*"]),
        command(&[b"PING"]),
    ]
    .concat();
    let ((nc, nc_closed), (cut, cut_closed)) = both(&single(&backend), &input, 3);
    assert!(
        nc.is_empty() && nc_closed,
        "nutcracker closes and drops the GET's reply: {nc:?}"
    );
    assert_eq!(
        cut,
        [
            "$-1\r\n",
            "-ERR unsupported command 'KEYS'\r\n",
            "+PONG\r\n"
        ]
    );
    assert!(!cut_closed);
}

#[test]
fn wrong_arity_gets_an_error() {
    let backend = RedisServer::start();
    let input = [
        command(&[b"GET", b"a", b"b"]),
        command(&[b"PING", b"msg"]),
        command(&[b"GET", b"a"]),
    ]
    .concat();
    let ((nc, nc_closed), (cut, cut_closed)) = both(&single(&backend), &input, 3);
    assert!(nc.is_empty() && nc_closed, "{nc:?}");
    assert_eq!(
        cut,
        [
            "-ERR wrong number of arguments for 'get' command\r\n",
            "-ERR wrong number of arguments for 'ping' command\r\n",
            "$-1\r\n"
        ]
    );
    assert!(!cut_closed);
}

#[test]
fn inline_commands_get_an_error() {
    let backend = RedisServer::start();
    let input = [b"PING\r\n".to_vec(), command(&[b"PING"])].concat();
    let ((nc, nc_closed), (cut, cut_closed)) = both(&single(&backend), &input, 2);
    assert!(nc.is_empty() && nc_closed, "{nc:?}");
    assert_eq!(
        cut[0],
        "-ERR unsupported command 'PING' (inline commands are not supported; send a RESP array)\r\n"
    );
    assert_eq!(cut[1], "+PONG\r\n");
    assert!(!cut_closed);
}

#[test]
fn protocol_errors_are_explained_after_the_replies_already_due() {
    let backend = RedisServer::start();
    let input = [command(&[b"GET", b"a"]), b"*1\r\n+OK\r\n".to_vec()].concat();
    let ((nc, nc_closed), (cut, cut_closed)) = both(&single(&backend), &input, 2);
    assert!(nc.is_empty() && nc_closed, "{nc:?}");
    assert_eq!(cut[0], "$-1\r\n");
    assert!(cut[1].starts_with("-ERR Protocol error:"), "{cut:?}");
    assert!(
        cut_closed,
        "the stream cannot be resynchronized, so cutover closes too"
    );
}

#[test]
fn move_and_eval_without_keys_get_errors() {
    let backend = RedisServer::start();
    let input = [
        command(&[b"MOVE", b"k", b"1"]),
        command(&[b"EVAL", b"return 1", b"0"]),
        command(&[b"PING"]),
    ]
    .concat();
    let ((nc, nc_closed), (cut, cut_closed)) = both(&single(&backend), &input, 3);
    assert!(nc.is_empty() && nc_closed, "{nc:?}");
    assert_eq!(cut[0], "-ERR unsupported command 'MOVE'\r\n");
    assert!(
        cut[1].starts_with("-ERR eval needs numkeys of at least 1"),
        "{cut:?}"
    );
    assert_eq!(cut[2], "+PONG\r\n");
    assert!(!cut_closed);
}

#[test]
fn keys_longer_than_nutcrackers_mbuf_are_forwarded() {
    let backend = RedisServer::start();
    let key = vec![b'k'; 20_000];
    let input = [command(&[b"SET", &key, b"v"]), command(&[b"GET", &key])].concat();
    let ((nc, nc_closed), (cut, cut_closed)) = both(&single(&backend), &input, 2);
    assert!(nc.is_empty() && nc_closed, "{nc:?}");
    assert_eq!(cut, ["+OK\r\n", "$1\r\nv\r\n"]);
    assert!(!cut_closed);
}

#[test]
fn exists_counts_keys_on_every_server() {
    let backends = support::redis_servers(3);
    let config = support::pool_config(
        &["hash: md5"],
        &[
            format!("{}:1", backends[0].addr()),
            format!("{}:1", backends[1].addr()),
            format!("{}:1", backends[2].addr()),
        ],
    );
    let keys: Vec<Vec<u8>> = (0..12)
        .map(|i| format!("exists-{i}").into_bytes())
        .collect();
    let mut mset = vec![b"MSET".to_vec()];
    for k in &keys {
        mset.push(k.clone());
        mset.push(b"1".to_vec());
    }
    let mut exists = vec![b"EXISTS".to_vec()];
    exists.extend(keys.iter().cloned());
    exists.push(b"missing".to_vec());
    let input = [command(&as_refs(&mset)), command(&as_refs(&exists))].concat();
    let ((nc, _), (cut, _)) = both(&config, &input, 2);
    assert_eq!(cut[1], ":12\r\n", "every key counted");
    assert_ne!(
        nc[1], ":12\r\n",
        "nutcracker asks only the first key's server: {}",
        nc[1]
    );
}

#[test]
fn oom_busy_loading_replies_pass_through_and_the_connection_stays() {
    let backend =
        RedisServer::start_with(&["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]);
    let big = vec![b'x'; 2_000_000];
    let input = [
        command(&[b"SET", b"big", &big]),
        command(&[b"GET", b"other"]),
    ]
    .concat();
    let ((nc, _), (cut, _)) = both(&single(&backend), &input, 2);
    assert_eq!(
        nc,
        ["-ERR Invalid argument\r\n", "-ERR Invalid argument\r\n"],
        "nutcracker hides the error and fails the next request too"
    );
    assert!(cut[0].starts_with("-OOM "), "{cut:?}");
    assert_eq!(cut[1], "$-1\r\n");
    // Still counted as a server failure, as nutcracker counts it.
    let cutover = Proxy::cutover(&single(&backend));
    let mut conn = cutover.connect();
    assert!(conn.call(&[b"SET", b"big", &big]).starts_with(b"-OOM"));
    let metrics = cutover.admin_get("/metrics").1;
    let failures = format!(
        "cutover_server_failures_total{{pool=\"p\",server=\"{}\"}} 1",
        backend.addr()
    );
    assert!(metrics.contains(&failures), "{metrics}");
}

#[test]
fn a_split_command_passes_on_the_first_backend_error() {
    let open = RedisServer::start();
    let locked = RedisServer::start_with(&["--requirepass", "secret"]);
    let config = support::pool_config(
        &["hash: md5"],
        &[format!("{}:1", open.addr()), format!("{}:1", locked.addr())],
    );
    let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("frag-{i}").into_bytes()).collect();
    let mut mget = vec![b"MGET".as_slice()];
    mget.extend(keys.iter().map(Vec::as_slice));
    let ((nc, _), (cut, _)) = both(&config, &command(&mget), 1);
    assert_eq!(nc, ["-ERR Invalid argument\r\n"]);
    assert_eq!(cut, ["-NOAUTH Authentication required.\r\n"]);
}

#[test]
fn a_split_command_that_times_out_leaves_the_connection_open() {
    let live = RedisServer::start();
    let hung = Blackhole::start();
    let config = support::pool_config(
        &["timeout: 200", "hash: md5"],
        &[
            format!("{}:1", live.addr()),
            format!("127.0.0.1:{}:1", hung.port),
        ],
    );
    let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("frag-{i}").into_bytes()).collect();
    let mut mget = vec![b"MGET".as_slice()];
    mget.extend(keys.iter().map(Vec::as_slice));
    let input = [command(&mget), command(&[b"PING"])].concat();
    let ((nc, nc_closed), (cut, cut_closed)) = both(&config, &input, 2);
    assert_eq!(
        nc.first().map(String::as_str),
        Some("-ERR Connection timed out\r\n")
    );
    assert!(
        nc_closed,
        "nutcracker closes the client after a fragment timeout: {nc:?}"
    );
    assert_eq!(cut, ["-ERR Connection timed out\r\n", "+PONG\r\n"]);
    assert!(!cut_closed);
}

#[test]
fn command_describes_cutover_not_the_backend() {
    let backend = RedisServer::start();
    let ((nc, _), (cut, _)) = both(&single(&backend), &command(&[b"COMMAND"]), 1);
    assert!(
        nc[0].contains("$4\r\nkeys\r\n"),
        "nutcracker's COMMAND is the backend's, listing KEYS it cannot run"
    );
    assert!(!cut[0].contains("$4\r\nkeys\r\n") && cut[0].contains("$3\r\nget\r\n"));
    let ((nc, nc_closed), (cut, cut_closed)) =
        both(&single(&backend), &command(&[b"COMMAND", b"COUNT"]), 1);
    assert!(
        nc.is_empty() && nc_closed,
        "nutcracker closes on COMMAND COUNT: {nc:?}"
    );
    assert_eq!(cut, [format!(":{}\r\n", cutover::command::all().count())]);
    assert!(!cut_closed);
}

/// Redis 7's argument forms: nutcracker 0.5.0 knows `EXPIRE key seconds` and `ZRANK key
/// member` only, and closes the connection on `EXPIRE key seconds GT` or `ZRANK ...
/// WITHSCORE`; cutover forwards them and returns the server's reply.
#[test]
fn redis_7_argument_forms_are_forwarded() {
    let backend = RedisServer::start();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut backend.client())
        .expect("SET");
    let input = [
        command(&[b"EXPIRE", b"k", b"100", b"GT"]),
        command(&[b"EXPIRE", b"k", b"100", b"NX"]),
        command(&[b"TTL", b"k"]),
    ]
    .concat();
    let ((nc, nc_closed), (cut, cut_closed)) = both(&single(&backend), &input, 3);
    assert!(nc.is_empty() && nc_closed, "nutcracker closes: {nc:?}");
    assert_eq!(
        cut,
        [":0\r\n", ":1\r\n", ":100\r\n"],
        "GT on a key without TTL sets nothing; NX sets it"
    );
    assert!(!cut_closed);
}
