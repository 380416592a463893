//! Today's client libraries, on their default settings, through cutover in front of real
//! redis-servers: redis-py 8 (RESP3 by default, and with protocol=2), the Node `redis` and
//! `ioredis` packages (both RESP3 by default), and the Rust `redis` crate over RESP2 and
//! RESP3. Each connects, runs strings, hashes, lists, sets, sorted sets, MGET/MSET/DEL
//! across servers and pipelines, and checks the values. `.ci/run` installs the libraries.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;

use cutover::config::ServerAddr;
use redis::Commands;
use support::{Proxy, RedisServer, redis_servers};

/// Three backends (md5 spreads the scripts' keys over all three) and cutover in front.
fn pool() -> (Vec<RedisServer>, Proxy) {
    let backends = redis_servers(3);
    let servers: Vec<String> = backends.iter().map(|b| format!("{}:1", b.addr())).collect();
    let cutover = Proxy::cutover(&support::pool_config(&["hash: md5"], &servers));
    (backends, cutover)
}

/// Where the client scripts live.
fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Run a client script against `port`; it must exit 0 and print "ok".
fn run_script(program: &str, script: &str, args: &[&str], install_hint: &str) {
    let (backends, cutover) = pool();
    let port = cutover.port.to_string();
    let output = Command::new(program)
        .current_dir(clients_dir())
        .arg(script)
        .arg(&port)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        !text.contains("No module named") && !text.contains("ERR_MODULE_NOT_FOUND"),
        "the client library is not installed ({install_hint}):\n{text}"
    );
    assert!(
        output.status.success() && text.contains("ok"),
        "{script} {args:?} failed:\n{text}"
    );
    assert_placed(&backends, &cutover);
}

/// Placement ran: every key a client left sits on the server nutcracker's placement (of
/// the proxy's own config file) picks for it, and there are keys. (A count of servers
/// holding keys would be chance: a handful of keys can all hash to one server.)
fn assert_placed(backends: &[RedisServer], proxy: &Proxy) {
    let conf = cutover::config::Config::load(&proxy.dir.path().join("proxy.yml"))
        .expect("the proxy's config");
    let pool = &conf.pools[0];
    let placement = pool.placement();
    let mut keys = 0;
    for backend in backends {
        for key in backend.keys() {
            keys += 1;
            let picked = placement.server_for(&key).map(|i| &pool.servers[i].addr);
            let ServerAddr::Tcp { port, .. } = picked.expect("a live server") else {
                panic!("tcp servers")
            };
            assert_eq!(
                *port,
                backend.port,
                "{} sits where placement puts it",
                String::from_utf8_lossy(&key)
            );
        }
    }
    assert!(keys > 0, "the client left keys on the servers");
}

const PIP: &str = "python3 -m pip install -r tests/clients/requirements.txt";
const NPM: &str = "npm ci --prefix tests/clients";

#[test]
fn redis_py_with_its_defaults() {
    run_script("python3", "redis_py.py", &["default"], PIP);
}

#[test]
fn redis_py_with_protocol_2() {
    run_script("python3", "redis_py.py", &["2"], PIP);
}

#[test]
fn node_redis_with_its_defaults() {
    run_script("node", "node_redis.mjs", &[], NPM);
}

#[test]
fn ioredis_with_its_defaults() {
    run_script("node", "ioredis.mjs", &[], NPM);
}

/// The same checks with the Rust `redis` crate, over `url`.
fn rust_client(url_suffix: &str, resp: &str) {
    let (backends, cutover) = pool();
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/{url_suffix}", cutover.port))
        .expect("client");
    let mut con = client.get_connection().expect("connect through cutover");
    let me: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query(&mut con)
        .expect("CLIENT INFO");
    assert!(me.contains(&format!(" resp={resp} ")), "{me}");
    let _: () = con.set("rs:s", "hello").expect("SET");
    assert_eq!(con.get::<_, String>("rs:s").expect("GET"), "hello");
    assert_eq!(con.incr::<_, _, i64>("rs:n", 42).expect("INCRBY"), 42);
    let _: () = con
        .hset_multiple("rs:h", &[("a", "1"), ("b", "2")])
        .expect("HSET");
    let hash: HashMap<String, String> = con.hgetall("rs:h").expect("HGETALL");
    assert_eq!(
        hash,
        HashMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])
    );
    let _: () = con.rpush("rs:l", &["x", "y", "z"]).expect("RPUSH");
    assert_eq!(
        con.lrange::<_, Vec<String>>("rs:l", 0, -1).expect("LRANGE"),
        ["x", "y", "z"]
    );
    let _: () = con.sadd("rs:set", &["p", "q"]).expect("SADD");
    let members: HashSet<String> = con.smembers("rs:set").expect("SMEMBERS");
    assert_eq!(members, HashSet::from(["p".into(), "q".into()]));
    let _: () = con
        .zadd_multiple("rs:z", &[(1.0, "one"), (2.5, "two")])
        .expect("ZADD");
    let scored: Vec<(String, f64)> = con.zrange_withscores("rs:z", 0, -1).expect("ZRANGE");
    assert_eq!(scored, [("one".to_string(), 1.0), ("two".to_string(), 2.5)]);

    let keys: Vec<String> = (0..20).map(|i| format!("rs:multi:{i}")).collect();
    let pairs: Vec<(String, String)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), format!("v{i}")))
        .collect();
    let _: () = con.mset(&pairs).expect("MSET");
    let mut asked = keys.clone();
    asked.push("rs:missing".into());
    let values: Vec<Option<String>> = con.mget(&asked).expect("MGET");
    let mut expected: Vec<Option<String>> = (0..20).map(|i| Some(format!("v{i}"))).collect();
    expected.push(None);
    assert_eq!(values, expected);
    assert_eq!(con.exists::<_, i64>(&keys).expect("EXISTS"), 20);
    assert_eq!(con.del::<_, i64>(&keys).expect("DEL"), 20);

    let mut pipe = redis::pipe();
    for _ in 0..100 {
        pipe.incr("rs:counter", 1);
    }
    let counts: Vec<i64> = pipe.query(&mut con).expect("pipeline");
    assert_eq!(counts, (1..=100).collect::<Vec<i64>>());
    assert_placed(&backends, &cutover);
}

#[test]
fn rust_redis_crate_over_resp2() {
    rust_client("", "2");
}

#[test]
fn rust_redis_crate_over_resp3() {
    rust_client("?protocol=resp3", "3");
}
