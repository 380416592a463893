//! Differential tests of the data path: the same requests go through nutcracker and
//! through cutover, on the same config and the same backends (flushed in between), and the
//! replies must match byte for byte, and every key must land on the same backend with the
//! same value. Deliberate differences are pinned in `proxy_differences.rs`.

mod support;

use support::{Proxy, RedisServer, command, redis_servers};

/// A request as its arguments.
type Cmd = Vec<Vec<u8>>;

/// Split a line on spaces into a command.
fn words(line: &str) -> Cmd {
    line.split(' ').map(|w| w.as_bytes().to_vec()).collect()
}

/// What one proxy did with a script: each reply, and each backend's contents after.
struct Outcome {
    replies: Vec<Vec<u8>>,
    contents: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// The config text for `backends`, with `{N}` in `template` replaced by backend N's port.
fn config(template: &str, backends: &[RedisServer]) -> String {
    let mut text = template.to_string();
    for (i, b) in backends.iter().enumerate() {
        text = text.replace(&format!("{{{i}}}"), &b.port.to_string());
    }
    text
}

/// Run `script` pipelined (in chunks) through one proxy, on flushed backends.
fn run(proxy: Proxy, backends: &[RedisServer], script: &[Cmd]) -> Outcome {
    let mut conn = proxy.connect();
    let mut replies = Vec::with_capacity(script.len());
    for chunk in script.chunks(100) {
        let mut batch = Vec::new();
        for cmd in chunk {
            let args: Vec<&[u8]> = cmd.iter().map(Vec::as_slice).collect();
            batch.extend(command(&args));
        }
        conn.send(&batch);
        for cmd in chunk {
            let reply = conn.try_reply().unwrap_or_else(|| {
                panic!(
                    "no reply to {:?}",
                    String::from_utf8_lossy(&cmd.join(&b' '))
                )
            });
            replies.push(reply);
        }
    }
    drop(conn);
    drop(proxy);
    Outcome {
        replies,
        contents: backends.iter().map(RedisServer::snapshot).collect(),
    }
}

/// Run `script` through nutcracker and through cutover and require the same replies and
/// the same backend contents.
fn same_as_nutcracker(template: &str, backends: &[RedisServer], script: &[Cmd]) {
    let text = config(template, backends);
    backends.iter().for_each(RedisServer::flush);
    let expected = run(Proxy::nutcracker(&text), backends, script);
    backends.iter().for_each(RedisServer::flush);
    let actual = run(Proxy::cutover(&text), backends, script);
    for (i, (want, got)) in expected.replies.iter().zip(&actual.replies).enumerate() {
        assert_eq!(
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(want),
            "reply {i} to {:?} differs (left cutover, right nutcracker)",
            String::from_utf8_lossy(&script[i].join(&b' '))
        );
    }
    assert_eq!(actual.replies.len(), expected.replies.len());
    for (i, (want, got)) in expected.contents.iter().zip(&actual.contents).enumerate() {
        let keys = |c: &Vec<(Vec<u8>, Vec<u8>)>| {
            c.iter()
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(got),
            keys(want),
            "keys on backend {i} differ (left cutover)"
        );
        assert!(got == want, "values on backend {i} differ");
    }
    for (i, contents) in expected.contents.iter().enumerate() {
        assert!(
            !contents.is_empty(),
            "backend {i} holds no key: the script does not spread over the servers"
        );
    }
    let errors = expected
        .replies
        .iter()
        .filter(|r| r.first() == Some(&b'-'))
        .count();
    assert!(
        errors * 4 < expected.replies.len().max(4),
        "{errors} of {} replies are errors",
        expected.replies.len()
    );
}

/// Three backends, ketama over md5. (nutcracker's default fnv1a_64 multiplies by 0x1b3 in
/// 32 bits, so short keys that differ in their last byte, like `k1`..`k9`, share one arc
/// of the ring; md5 spreads them, which is what these tests need.)
const THREE: &str = "pool:\n  listen: LISTEN\n  redis: true\n  hash: md5\n  distribution: ketama\n  servers:\n   - 127.0.0.1:{0}:1\n   - 127.0.0.1:{1}:1\n   - 127.0.0.1:{2}:1\n";

/// Every forwarded command at least once (LOLWUT aside: its art is random; COMMAND is
/// answered by cutover itself, see `proxy_differences.rs`).
fn every_command(restore_payload: &[u8]) -> Vec<Cmd> {
    let mut script: Vec<Cmd> = [
        "PING",
        "SET s1 hello",
        "GET s1",
        "GET missing",
        "SETNX s1 x",
        "SETNX s2 x",
        "GETSET s2 y",
        "APPEND s1 world",
        "STRLEN s1",
        "GETRANGE s1 0 4",
        "SETRANGE s1 0 J",
        "INCR n1",
        "INCRBY n1 10",
        "DECR n1",
        "DECRBY n1 3",
        "INCRBYFLOAT f1 1.5",
        "SETEX e1 100000 v",
        "PSETEX e2 100000000 v",
        "SETBIT b1 7 1",
        "GETBIT b1 7",
        "BITCOUNT b1",
        "BITPOS b1 1",
        "BITFIELD bf SET u8 0 255 GET u8 0",
        "GETDEL s2",
        "GETEX s1 PERSIST",
        "SET s3 v EX 100000",
        "PERSIST s3",
        "TTL s3",
        "PTTL s1",
        "TTL missing",
        "TYPE s1",
        "TYPE n1",
        "EXPIRE s3 100000",
        "EXPIREAT s3 4102444800",
        "PEXPIRE s3 100000000",
        "PEXPIREAT s3 4102444800000",
        "PERSIST s3",
        "DUMP s1",
        "HSET h1 a 1 b 2",
        "HGET h1 a",
        "HMSET h1 c 3",
        "HMGET h1 a c z",
        "HGETALL h1",
        "HKEYS h1",
        "HVALS h1",
        "HLEN h1",
        "HEXISTS h1 a",
        "HSTRLEN h1 a",
        "HINCRBY h1 a 5",
        "HINCRBYFLOAT h1 b 0.5",
        "HSETNX h1 a 9",
        "HDEL h1 c",
        "HSCAN h1 0",
        "HSET h2 only 1",
        "HRANDFIELD h2",
        "LPUSH l1 a b c",
        "RPUSH l1 d",
        "LPUSHX l1 e",
        "RPUSHX l1 f",
        "LRANGE l1 0 -1",
        "LLEN l1",
        "LINDEX l1 0",
        "LSET l1 0 z",
        "LINSERT l1 BEFORE z y",
        "LREM l1 1 y",
        "LTRIM l1 0 3",
        "LPOS l1 d",
        "LPOP l1",
        "RPOP l1",
        "RPUSH {t}l2 a b c",
        "RPOPLPUSH {t}l2 {t}l3",
        "LMOVE {t}l2 {t}l3 LEFT RIGHT",
        "LRANGE {t}l3 0 -1",
        "SADD st1 1 2 3",
        "SMEMBERS st1",
        "SCARD st1",
        "SISMEMBER st1 2",
        "SMISMEMBER st1 1 9",
        "SREM st1 3",
        "SADD st2 only",
        "SRANDMEMBER st2",
        "SSCAN st1 0",
        "SADD st4 one",
        "SPOP st4",
        "SADD {t}sa 1 2 3",
        "SADD {t}sb 2 3 4",
        "SDIFF {t}sa {t}sb",
        "SINTER {t}sa {t}sb",
        "SUNION {t}sa {t}sb",
        "SDIFFSTORE {t}sd {t}sa {t}sb",
        "SINTERSTORE {t}si {t}sa {t}sb",
        "SUNIONSTORE {t}su {t}sa {t}sb",
        "SMOVE {t}sa {t}sb 1",
        "SMEMBERS {t}sb",
        "ZADD z1 1 a 2 b 3 c 4 d",
        "ZSCORE z1 a",
        "ZRANK z1 b",
        "ZREVRANK z1 b",
        "ZCARD z1",
        "ZCOUNT z1 0 10",
        "ZLEXCOUNT z1 - +",
        "ZINCRBY z1 5 a",
        "ZRANGE z1 0 -1 WITHSCORES",
        "ZRANGEBYSCORE z1 0 100",
        "ZRANGEBYLEX z1 - +",
        "ZREVRANGE z1 0 -1",
        "ZREVRANGEBYSCORE z1 100 0",
        "ZREVRANGEBYLEX z1 + -",
        "ZMSCORE z1 a b",
        "ZADD z3 1 only",
        "ZRANDMEMBER z3",
        "ZSCAN z1 0",
        "ZREM z1 c",
        "ZREMRANGEBYRANK z1 0 0",
        "ZREMRANGEBYSCORE z1 0 1",
        "ZADD zl 0 a 0 b 0 c",
        "ZREMRANGEBYLEX zl [a [a",
        "ZADD z2 1 a 2 b 3 c",
        "ZPOPMIN z2",
        "ZPOPMAX z2",
        "ZADD {t}za 1 a 2 b",
        "ZADD {t}zb 3 b 4 c",
        "ZUNIONSTORE {t}zu 2 {t}za {t}zb",
        "ZINTERSTORE {t}zi 2 {t}za {t}zb",
        "ZDIFFSTORE {t}zd 2 {t}za {t}zb",
        "ZUNION 2 {t}za {t}zb",
        "ZINTER 2 {t}za {t}zb",
        "ZDIFF 2 {t}za {t}zb",
        "ZRANGESTORE {t}zr {t}za 0 -1",
        "PFADD hll a b c",
        "PFCOUNT hll",
        "PFADD {t}h1 a",
        "PFADD {t}h2 b",
        "PFMERGE {t}hm {t}h1 {t}h2",
        "PFCOUNT {t}hm",
        "GEOADD g1 13.361389 38.115556 Palermo 15.087269 37.502669 Catania",
        "GEODIST g1 Palermo Catania",
        "GEOPOS g1 Palermo",
        "GEOHASH g1 Palermo",
        "GEORADIUS g1 15 37 200 km",
        "GEORADIUSBYMEMBER g1 Palermo 200 km",
        "GEOSEARCH g1 FROMMEMBER Palermo BYRADIUS 200 km ASC",
        "GEOADD {t}g2 13.361389 38.115556 Palermo",
        "GEOSEARCHSTORE {t}gs {t}g2 FROMLONLAT 13 38 BYRADIUS 100 km",
        "SORT st1",
        "SET {t}c1 v",
        "COPY {t}c1 {t}c2",
        "GET {t}c2",
        "TOUCH s1 n1 h1 missing",
        "EXISTS s1",
        "MGET s1 n1 missing s1 f1",
        "MSET m1 1 m2 2 m3 3 m4 4 m5 5",
        "MGET m1 m2 m3 m4 m5",
        "DEL m1 m2 m3 missing",
        "UNLINK m4 m5 missing",
        "TOUCH m1",
        "LPUSH s1 x",
        "HGET s1 a",
    ]
    .iter()
    .map(|l| words(l))
    .collect();
    script.push(vec![
        b"EVAL".to_vec(),
        b"return redis.call('get', KEYS[1])".to_vec(),
        b"1".to_vec(),
        b"s1".to_vec(),
    ]);
    script.push(vec![
        b"EVAL".to_vec(),
        b"return redis.call('incr', KEYS[1])".to_vec(),
        b"1".to_vec(),
        b"ev".to_vec(),
    ]);
    script.push(words(
        "EVALSHA e0e1f9fabfc9d4800c877a703b823ac0578ff8db 1 s1",
    ));
    script.push(vec![
        b"RESTORE".to_vec(),
        b"r1".to_vec(),
        b"0".to_vec(),
        restore_payload.to_vec(),
    ]);
    script.push(words("GET r1"));
    script
}

#[test]
fn every_supported_command_matches() {
    let backends = redis_servers(3);
    let payload: Vec<u8> = {
        let mut conn = backends[0].client();
        let _: () = redis::cmd("SET")
            .arg("tmp")
            .arg("restored")
            .query(&mut conn)
            .expect("SET");
        redis::cmd("DUMP")
            .arg("tmp")
            .query(&mut conn)
            .expect("DUMP")
    };
    same_as_nutcracker(THREE, &backends, &every_command(&payload));
}

#[test]
fn split_commands_with_duplicates_and_binary_keys() {
    let backends = redis_servers(3);
    let binary: Vec<Vec<u8>> = (0u8..40)
        .map(|i| vec![i, 0xff - i, b'\r', b'\n', 0, i.wrapping_mul(7) | 0x80])
        .collect();
    let mut script: Vec<Cmd> = Vec::new();
    // MSET across servers, then MGET in a scrambled order with duplicates and misses.
    let mut mset = vec![b"MSET".to_vec()];
    for (i, key) in binary.iter().enumerate() {
        mset.push(key.clone());
        mset.push(format!("value-{i}").into_bytes());
    }
    script.push(mset);
    let mut mget = vec![b"MGET".to_vec()];
    for i in [3usize, 1, 3, 39, 0, 17, 17, 25] {
        mget.push(binary[i].clone());
    }
    mget.push(b"no-such-key".to_vec());
    script.push(mget);
    for key in binary.iter().take(10) {
        script.push(vec![b"GET".to_vec(), key.clone()]);
    }
    let mut touch = vec![b"TOUCH".to_vec()];
    touch.extend(binary.iter().take(20).cloned());
    touch.push(binary[0].clone());
    script.push(touch);
    let mut del = vec![b"DEL".to_vec()];
    del.extend(binary.iter().take(15).cloned());
    del.push(b"absent".to_vec());
    script.push(del);
    let mut unlink = vec![b"UNLINK".to_vec()];
    unlink.extend(binary.iter().skip(15).take(5).cloned());
    script.push(unlink);
    let mut mget_all = vec![b"MGET".to_vec()];
    mget_all.extend(binary.iter().cloned());
    script.push(mget_all);
    // Hash-tagged keys land together; an empty key is a key too.
    script.extend(
        [
            "MSET {user1}a 1 {user1}b 2 {user2}a 3",
            "MGET {user1}a {user1}b {user2}a {user3}a",
            "SET  empty",
        ]
        .iter()
        .map(|l| words(l)),
    );
    script.push(vec![b"GET".to_vec(), Vec::new()]);
    same_as_nutcracker(THREE, &backends, &script);
}

#[test]
fn modula_murmur_with_hash_tags_and_weights() {
    let backends = redis_servers(3);
    let template = "tagged:\n  listen: LISTEN\n  redis: true\n  hash: murmur\n  hash_tag: \"{}\"\n  distribution: modula\n  servers:\n   - 127.0.0.1:{0}:3 zeta\n   - 127.0.0.1:{1}:1 alpha\n   - 127.0.0.1:{2}:2 mu\n";
    let mut script = Vec::new();
    for i in 0..300 {
        script.push(words(&format!("SET {{t{}}}:k{i} v{i}", i % 23)));
    }
    for i in (0..300).step_by(7) {
        script.push(words(&format!("MGET {{t{}}}:k{i} {{t3}}:k3 k{i}", i % 23)));
    }
    same_as_nutcracker(template, &backends, &script);
}

#[test]
fn a_pipeline_of_a_thousand_mixed_requests() {
    let backends = redis_servers(3);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut script = Vec::new();
    for _ in 0..1000 {
        let k = next(60);
        let line = match next(12) {
            0 => format!("SET key:{k} v{}", next(1000)),
            1 => format!("GET key:{k}"),
            2 => format!("INCR ctr:{k}"),
            3 => format!("DEL key:{k} ctr:{k} key:{}", next(60)),
            4 => format!("MGET key:{k} key:{} ctr:{k} key:{k}", next(60)),
            5 => format!("MSET key:{k} a key:{} b", next(60)),
            6 => format!("HSET hash:{k} f{} {}", next(5), next(100)),
            7 => format!("HGETALL hash:{k}"),
            8 => format!("RPUSH list:{k} {}", next(100)),
            9 => format!("LRANGE list:{k} 0 -1"),
            10 => format!("SADD set:{k} {}", next(20)),
            _ => format!("EXISTS key:{k}"),
        };
        script.push(words(&line));
    }
    same_as_nutcracker(THREE, &backends, &script);
}

#[test]
fn wrongtype_and_backend_errors_pass_through() {
    let backends = redis_servers(3);
    let mut script: Vec<Cmd> = [
        "SET s v",
        "LPUSH s x",
        "INCR s",
        "HSET s a b",
        "SET n 1",
        "INCRBYFLOAT n abc",
        "EXPIRE n notanumber",
        "GETRANGE s a b",
        "EVAL x 1 s",
    ]
    .iter()
    .map(|l| words(l))
    .collect();
    script.extend((0..30).map(|i| words(&format!("SET spread{i} {i}"))));
    same_as_nutcracker(THREE, &backends, &script);
}
