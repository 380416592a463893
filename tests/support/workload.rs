//! The consistency workload: a pre-filled source and clients running random writes of
//! every class (and, if asked, reads of the same keys) against a port, for the migration
//! tests that compare both sides afterwards.

/// Keys of each type that clients and the backfill fight over.
pub const HOT: u64 = 200;
/// Pre-filled keys.
pub const PREFILL: u64 = 20_000;

/// A small deterministic generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Fill the source with keys of every type; a fifth get long TTLs, fifty expire mid-run.
pub fn prefill(source: &super::RedisServer) {
    let mut conn = source.client();
    let mut pipe = redis::pipe();
    for i in 0..PREFILL {
        match i % 6 {
            0 => pipe
                .cmd("SET")
                .arg(format!("s:{i}"))
                .arg(format!("value-{i}"))
                .ignore(),
            1 => pipe
                .cmd("HSET")
                .arg(format!("h:{i}"))
                .arg("a")
                .arg(i)
                .arg("b")
                .arg("x")
                .ignore(),
            2 => pipe
                .cmd("RPUSH")
                .arg(format!("l:{i}"))
                .arg("a")
                .arg("b")
                .arg("c")
                .ignore(),
            3 => pipe
                .cmd("SADD")
                .arg(format!("t:{i}"))
                .arg("a")
                .arg("b")
                .arg(i)
                .ignore(),
            4 => pipe
                .cmd("ZADD")
                .arg(format!("z:{i}"))
                .arg(1)
                .arg("a")
                .arg(2.5)
                .arg("b")
                .ignore(),
            _ => pipe.cmd("SET").arg(format!("c:{i}")).arg(i).ignore(),
        };
        if i % 5 == 0 {
            let key = key_name(i);
            pipe.cmd("EXPIRE").arg(key).arg(1000).ignore();
        }
        if i % 400 == 7 {
            pipe.cmd("PEXPIRE").arg(key_name(i)).arg(1500).ignore();
        }
        if i % 1000 == 999 {
            pipe.query::<()>(&mut conn).expect("prefill");
            pipe = redis::pipe();
        }
    }
    pipe.cmd("PING").ignore();
    pipe.query::<()>(&mut conn).expect("prefill");
}

/// The name of pre-filled key `i`.
pub fn key_name(i: u64) -> String {
    let prefix = ["s", "h", "l", "t", "z", "c"][(i % 6) as usize];
    format!("{prefix}:{i}")
}

/// One client's random operations through the proxy; with `reads`, each write is
/// followed by a read of a key of the same group (for shadow reads).
pub fn client_ops(port: u16, seed: u64, ops: usize, reads: bool) {
    let mut conn = super::connect_to(port);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    for op in 0..ops {
        // Hot keys: the first HOT keys of each type, which the backfill copies concurrently.
        let i = rng.next(HOT) * 6;
        let (s, h, l, t, z, c) = (
            key_name(i),
            key_name(i + 1),
            key_name(i + 2),
            key_name(i + 3),
            key_name(i + 4),
            key_name(i + 5),
        );
        let fresh = format!("n:{seed}:{}", rng.next(50));
        let cmd = match rng.next(30) {
            0 => redis::cmd("SET").arg(&s).arg(op).clone(),
            1 => redis::cmd("GETSET").arg(&s).arg(op).clone(),
            2 => redis::cmd("APPEND").arg(&s).arg("+").clone(),
            3..=5 => redis::cmd("INCR").arg(&c).clone(),
            6 => redis::cmd("INCRBYFLOAT").arg(&c).arg("0.5").clone(),
            7 => redis::cmd("HSET")
                .arg(&h)
                .arg(format!("f{}", rng.next(4)))
                .arg(op)
                .clone(),
            8 => redis::cmd("HDEL")
                .arg(&h)
                .arg(format!("f{}", rng.next(4)))
                .clone(),
            9 => redis::cmd("HINCRBY").arg(&h).arg("n").arg(1).clone(),
            10 => redis::cmd("LPUSH").arg(&l).arg(op).clone(),
            11 => redis::cmd("RPOP").arg(&l).clone(),
            12 => redis::cmd("LTRIM").arg(&l).arg(0).arg(5).clone(),
            13 => redis::cmd("LSET").arg(&l).arg(0).arg(op).clone(),
            14 => redis::cmd("SADD").arg(&t).arg(rng.next(10)).clone(),
            15 => redis::cmd("SREM").arg(&t).arg(rng.next(10)).clone(),
            16 => redis::cmd("SPOP").arg(&t).clone(),
            17 => redis::cmd("ZADD")
                .arg(&z)
                .arg(rng.next(100))
                .arg(format!("m{}", rng.next(5)))
                .clone(),
            18 => redis::cmd("ZINCRBY").arg(&z).arg(1).arg("a").clone(),
            19 => redis::cmd("ZREM")
                .arg(&z)
                .arg(format!("m{}", rng.next(5)))
                .clone(),
            20 => redis::cmd("EXPIRE").arg(&s).arg(1000).clone(),
            21 => redis::cmd("PERSIST").arg(&h).clone(),
            22 => redis::cmd("DEL").arg(&s).arg(&fresh).clone(),
            23 => redis::cmd("UNLINK").arg(&t).clone(),
            24 => redis::cmd("MSET")
                .arg(&s)
                .arg(op)
                .arg(&fresh)
                .arg(op)
                .clone(),
            25 => redis::cmd("EVAL")
                .arg("redis.call('incr', KEYS[1]); return redis.call('get', KEYS[1])")
                .arg(1)
                .arg(&c)
                .clone(),
            26 | 27 => redis::cmd("SET").arg(&fresh).arg(op).clone(),
            28 => redis::cmd("DEL").arg(&fresh).clone(),
            _ => redis::cmd("INCR").arg(&c).clone(),
        };
        // Wrong types and the like are expected now and then; the data must still agree.
        let _: redis::RedisResult<redis::Value> = cmd.query(&mut conn);
        if reads {
            let read = match rng.next(12) {
                0 => redis::cmd("GET").arg(&s).clone(),
                1 => redis::cmd("HGETALL").arg(&h).clone(),
                2 => redis::cmd("LRANGE").arg(&l).arg(0).arg(-1).clone(),
                3 => redis::cmd("SMEMBERS").arg(&t).clone(),
                4 => redis::cmd("ZRANGE")
                    .arg(&z)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .clone(),
                5 => redis::cmd("TTL").arg(&s).clone(),
                6 => redis::cmd("PTTL").arg(&h).clone(),
                7 => redis::cmd("GET").arg(&c).clone(),
                8 => redis::cmd("HGET").arg(&h).arg("n").clone(),
                9 => redis::cmd("SCARD").arg(&t).clone(),
                10 => redis::cmd("EXISTS").arg(&fresh).clone(),
                _ => redis::cmd("STRLEN").arg(&s).clone(),
            };
            let _: redis::RedisResult<redis::Value> = read.query(&mut conn);
        }
    }
}

/// Run `clients` clients through the proxy, concurrently.
pub fn workload(port: u16, seed: u64, clients: u64, ops: usize, reads: bool) {
    let threads: Vec<_> = (0..clients)
        .map(|c| std::thread::spawn(move || client_ops(port, seed * 100 + c, ops, reads)))
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}
