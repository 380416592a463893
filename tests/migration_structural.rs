//! Structural copies: keys copied by type in chunks through a temporary key and a RENAME,
//! for every type, when forced (`structural_copy: always`) and for keys over
//! `copy_limit_bytes`; nothing temporary is left behind.

mod support;

use std::time::Duration;

use support::compare::assert_same;
use support::{Proxy, RedisServer, redis_servers};

/// One key of every type, several larger than a chunk, some with TTLs.
fn fill(source: &RedisServer) {
    let mut conn = source.client();
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg("str:big")
        .arg(vec![b'x'; 2_500_000])
        .ignore();
    pipe.cmd("SET").arg("str:small").arg("hello").ignore();
    pipe.cmd("PEXPIRE").arg("str:small").arg(900_000).ignore();
    for i in 0..1200 {
        pipe.cmd("RPUSH")
            .arg("list")
            .arg(format!("item-{i}"))
            .ignore();
        pipe.cmd("SADD")
            .arg("set")
            .arg(format!("member-{i}"))
            .ignore();
        pipe.cmd("ZADD")
            .arg("zset")
            .arg(i as f64 * 1.5)
            .arg(format!("m-{i}"))
            .ignore();
    }
    for i in 0..1500 {
        pipe.cmd("HSET")
            .arg("hash")
            .arg(format!("field-{i}"))
            .arg(i)
            .ignore();
    }
    for i in 0..1100 {
        pipe.cmd("XADD")
            .arg("stream")
            .arg(format!("{}-{}", 1000 + i, i % 3))
            .arg("k")
            .arg(i)
            .arg("v")
            .arg("x")
            .ignore();
    }
    pipe.cmd("EXPIRE").arg("hash").arg(5000).ignore();
    pipe.cmd("SADD").arg("tiny").arg("a").ignore();
    pipe.query::<()>(&mut conn).expect("fill");
}

fn run(migrate_settings: &str) -> (Vec<RedisServer>, RedisServer, Proxy) {
    let source = RedisServer::start();
    let targets = redis_servers(2);
    fill(&source);
    let mut text = format!(
        "legacy:\n  listen: LISTEN\n  redis: true\n  servers:\n   - {}:1\n  migrate_to: fleet\n  migrate:\n{migrate_settings}fleet:\n  redis: true\n  hash: md5\n  servers:\n",
        source.addr()
    );
    for t in &targets {
        text.push_str(&format!("   - {}:1\n", t.addr()));
    }
    let cutover = Proxy::cutover(&text);
    cutover.wait_migration_drained(Duration::from_secs(60), 3);
    (targets, source, cutover)
}

fn no_temporary_keys(targets: &[RedisServer]) {
    for t in targets {
        assert!(
            t.keys().iter().all(|k| !k.starts_with(b"__cutover_copy")),
            "a temporary key was left behind"
        );
    }
}

#[test]
fn every_type_copies_structurally_when_forced() {
    let (targets, source, cutover) = run("    structural_copy: always\n");
    assert_same(&source, &targets);
    no_temporary_keys(&targets);
    let metrics = cutover.admin_get("/metrics").1;
    assert!(
        metrics.contains("cutover_copy_structural_total{pool=\"legacy\"} 8"),
        "{metrics}"
    );
}

#[test]
fn keys_over_the_copy_limit_copy_structurally() {
    let (targets, source, cutover) = run("    copy_limit_bytes: 4096\n");
    assert_same(&source, &targets);
    no_temporary_keys(&targets);
    let structural = cutover.metric("cutover_copy_structural_total{pool=\"legacy\"}") as u64;
    assert!(
        (5..8).contains(&structural),
        "the large keys only: {structural}"
    );
    let metrics = cutover.admin_get("/metrics").1;
    assert!(metrics.contains("reason=\"over_copy_limit\""), "{metrics}");
}
