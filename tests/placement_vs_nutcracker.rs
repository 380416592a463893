//! Differential placement: real redis-servers behind a real nutcracker. Keys are SET
//! through nutcracker, found on the backends by SCAN, and cutover's placement (from the
//! same config file) must name the same backend for every key.

mod support;

use std::collections::HashMap;

use cutover::config::{Config, ServerAddr};
use support::{Proxy, RedisServer, command, redis_servers};

/// Keys of many shapes: ASCII, hash-tagged, long, empty-tag edge cases, and binary
/// (mostly bytes >= 0x80, to exercise signed-char sign extension).
fn keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for i in 0..1500u32 {
        keys.push(match i % 6 {
            0 => format!("user:{i}").into_bytes(),
            1 => format!("{{tag{}}}:item:{i}", i % 17).into_bytes(),
            2 => format!("{}{i}", "k".repeat((i % 53) as usize)).into_bytes(),
            3 => format!("a{{}}{{b{i}}}").into_bytes(),
            _ => {
                let mut state = i.wrapping_mul(2_654_435_761).wrapping_add(12345);
                let len = 1 + (i % 23) as usize;
                (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        (state as u8) | if state & 0x300 != 0 { 0x80 } else { 0 }
                    })
                    .collect()
            }
        });
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Run one differential check of a pool body (the lines after `listen:`), whose server
/// lines are given as templates with `{N}` for the port of backend N.
fn check(name: &str, pool_body: &str, server_lines: &[&str]) {
    let backends = redis_servers(server_lines.len());
    let mut config = format!("{name}:\n  listen: LISTEN\n  redis: true\n{pool_body}  servers:\n");
    for line in server_lines {
        let mut line = line.to_string();
        for (i, b) in backends.iter().enumerate() {
            line = line.replace(&format!("{{{i}}}"), &b.port.to_string());
        }
        config.push_str(&format!("   - {line}\n"));
    }
    let nutcracker = Proxy::nutcracker(&config);
    let keys = keys();

    // SET every key through nutcracker, pipelined, and require +OK for each.
    let mut conn = nutcracker.connect();
    for chunk in keys.chunks(200) {
        let mut batch = Vec::new();
        for key in chunk {
            batch.extend(command(&[b"SET", key, b"v"]));
        }
        conn.send(&batch);
        for key in chunk {
            assert_eq!(
                conn.reply(),
                b"+OK\r\n",
                "{name}: SET {key:?} through nutcracker"
            );
        }
    }

    // Where nutcracker put each key.
    let mut found: HashMap<Vec<u8>, u16> = HashMap::new();
    for backend in &backends {
        for key in backend.keys() {
            assert!(
                found.insert(key, backend.port).is_none(),
                "{name}: a key on two backends"
            );
        }
    }
    assert_eq!(
        found.len(),
        keys.len(),
        "{name}: every key landed exactly once"
    );

    // Where cutover would put it, from the very file nutcracker ran on.
    let conf =
        Config::load(&nutcracker.dir.path().join("proxy.yml")).expect("config nutcracker accepted");
    let pool = &conf.pools[0];
    let placement = pool.placement();
    let mut wrong = Vec::new();
    for key in &keys {
        let index = placement.server_for(key).expect("live server");
        let ServerAddr::Tcp { port, .. } = pool.servers[index].addr else {
            panic!("tcp servers")
        };
        if found[key] != port {
            wrong.push(String::from_utf8_lossy(key).into_owned());
        }
    }
    assert!(
        wrong.is_empty(),
        "{name}: {} of {} keys placed differently, e.g. {:?}",
        wrong.len(),
        keys.len(),
        &wrong[..wrong.len().min(5)]
    );
    let used: std::collections::HashSet<u16> = found.values().copied().collect();
    assert!(
        used.len() > 1 || backends.len() == 1,
        "{name}: keys spread over the servers"
    );
}

#[test]
fn ketama_md5_named_weighted() {
    check(
        "named",
        "  hash: md5\n  distribution: ketama\n",
        &[
            "127.0.0.1:{0}:1 alpha",
            "127.0.0.1:{1}:3 beta",
            "127.0.0.1:{2}:2 gamma",
        ],
    );
}

#[test]
fn modula_murmur_hash_tag_unsorted() {
    check(
        "tagged",
        "  hash: murmur\n  distribution: modula\n  hash_tag: \"{}\"\n",
        &[
            "127.0.0.1:{0}:2 zeta",
            "127.0.0.1:{1}:1 b",
            "127.0.0.1:{2}:5 server10",
            "127.0.0.1:{3}:1 mu",
        ],
    );
}

#[test]
fn ketama_default_hash_unnamed_uneven() {
    check(
        "plain",
        "",
        &[
            "127.0.0.1:{0}:1",
            "127.0.0.1:{1}:1",
            "127.0.0.1:{2}:2",
            "127.0.0.1:{3}:3",
            "127.0.0.1:{4}:3",
        ],
    );
}

#[test]
fn ketama_hsieh_and_one_at_a_time_binary_keys() {
    check(
        "hsieh",
        "  hash: hsieh\n",
        &["127.0.0.1:{0}:1", "127.0.0.1:{1}:1", "127.0.0.1:{2}:1"],
    );
    check(
        "oaat",
        "  hash: one_at_a_time\n  distribution: modula\n",
        &["127.0.0.1:{0}:7", "127.0.0.1:{1}:5"],
    );
}

/// Keep the binary's own target from being unused in this test file.
#[test]
fn single_backend_gets_everything() {
    let only = RedisServer::start();
    let config = format!(
        "single:\n  listen: LISTEN\n  redis: true\n  servers:\n   - {}:1\n",
        only.addr()
    );
    let nutcracker = Proxy::nutcracker(&config);
    let mut conn = nutcracker.connect();
    assert_eq!(conn.call(&[b"SET", b"x", b"1"]), b"+OK\r\n");
    let conf = Config::load(&nutcracker.dir.path().join("proxy.yml")).expect("config");
    assert_eq!(conf.pools[0].placement().server_for(b"x"), Some(0));
    assert_eq!(only.keys(), vec![b"x".to_vec()]);
}
