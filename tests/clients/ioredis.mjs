// ioredis against cutover, on its default settings (ready check with INFO).
// Usage: node ioredis.mjs PORT. Exits 0 when every check holds.
import assert from 'node:assert/strict';
import Redis from 'ioredis';

const port = Number(process.argv[2]);
const redis = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 1 });
redis.on('error', (e) => { console.error('client error', e); process.exit(1); });
const p = `io:${process.pid}:`;

assert.equal(await redis.ping(), 'PONG');
// The library's handshake went through: HELLO 3, CLIENT SETINFO and the INFO ready check.
const me = await redis.client('INFO');
assert.match(me, / resp=3 /);
assert.match(me, / lib-name=ioredis /);
assert.equal(await redis.set(p + 's', 'hello'), 'OK');
assert.equal(await redis.get(p + 's'), 'hello');
assert.equal(await redis.incrby(p + 'n', 42), 42);
assert.equal(await redis.hset(p + 'h', { a: '1', b: '2' }), 2);
assert.deepEqual(await redis.hgetall(p + 'h'), { a: '1', b: '2' });
assert.equal(await redis.rpush(p + 'l', 'x', 'y', 'z'), 3);
assert.deepEqual(await redis.lrange(p + 'l', 0, -1), ['x', 'y', 'z']);
assert.equal(await redis.sadd(p + 'set', 'p', 'q'), 2);
assert.deepEqual((await redis.smembers(p + 'set')).sort(), ['p', 'q']);
assert.equal(await redis.zadd(p + 'z', 1, 'one', 2.5, 'two'), 2);
assert.deepEqual(await redis.zrange(p + 'z', 0, -1, 'WITHSCORES'), ['one', '1', 'two', '2.5']);

const keys = Array.from({ length: 20 }, (_, i) => `${p}multi:${i}`);
assert.equal(await redis.mset(Object.fromEntries(keys.map((k, i) => [k, `v${i}`]))), 'OK');
assert.deepEqual(await redis.mget(...keys, p + 'missing'), [...keys.map((_, i) => `v${i}`), null]);
assert.equal(await redis.exists(...keys), 20);
assert.equal(await redis.del(...keys), 20);

await redis.set(p + 'ttl', 'v', 'EX', 100);
const ttl = await redis.ttl(p + 'ttl');
assert.ok(ttl > 0 && ttl <= 100);

const pipeline = redis.pipeline();
for (let i = 0; i < 100; i++) pipeline.incr(p + 'counter');
const results = await pipeline.exec();
assert.deepEqual(results.map(([err, v]) => { assert.equal(err, null); return v; }), Array.from({ length: 100 }, (_, i) => i + 1));

assert.match(await redis.info(), /redis_version:/);
redis.disconnect();
console.log('ioredis: ok');
