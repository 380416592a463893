// The Node `redis` package against cutover, on its default settings.
// Usage: node node_redis.mjs PORT. Exits 0 when every check holds.
import assert from 'node:assert/strict';
import { createClient } from 'redis';

const port = Number(process.argv[2]);
const client = createClient({ url: `redis://127.0.0.1:${port}` });
client.on('error', (e) => { console.error('client error', e); process.exit(1); });
await client.connect();
const p = `node:${process.pid}:`;

assert.equal(await client.ping(), 'PONG');
// The library's handshake went through: HELLO 3 and CLIENT SETINFO.
const me = await client.clientInfo();
assert.equal(me.resp, 3);
assert.equal(me.libName, 'node-redis');
assert.equal(await client.set(p + 's', 'hello'), 'OK');
assert.equal(await client.get(p + 's'), 'hello');
assert.equal(await client.incrBy(p + 'n', 42), 42);
assert.equal(await client.hSet(p + 'h', { a: '1', b: '2' }), 2);
assert.deepEqual({ ...(await client.hGetAll(p + 'h')) }, { a: '1', b: '2' });
assert.equal(await client.rPush(p + 'l', ['x', 'y', 'z']), 3);
assert.deepEqual(await client.lRange(p + 'l', 0, -1), ['x', 'y', 'z']);
assert.equal(await client.sAdd(p + 'set', ['p', 'q']), 2);
assert.deepEqual((await client.sMembers(p + 'set')).sort(), ['p', 'q']);
assert.equal(await client.zAdd(p + 'z', [{ score: 1, value: 'one' }, { score: 2.5, value: 'two' }]), 2);
assert.deepEqual(await client.zRangeWithScores(p + 'z', 0, -1), [{ value: 'one', score: 1 }, { value: 'two', score: 2.5 }]);

const keys = Array.from({ length: 20 }, (_, i) => `${p}multi:${i}`);
assert.equal(await client.mSet(keys.map((k, i) => [k, `v${i}`])), 'OK');
assert.deepEqual(await client.mGet([...keys, p + 'missing']), [...keys.map((_, i) => `v${i}`), null]);
assert.equal(await client.exists(keys), 20);
assert.equal(await client.del(keys), 20);

await client.set(p + 'ttl', 'v', { EX: 100 });
const ttl = await client.ttl(p + 'ttl');
assert.ok(ttl > 0 && ttl <= 100);

const multi = client.multi();
for (let i = 0; i < 100; i++) multi.incr(p + 'counter');
const results = await multi.execAsPipeline();
assert.deepEqual(results, Array.from({ length: 100 }, (_, i) => i + 1));

const info = await client.info();
assert.match(info, /redis_version:/);
await client.disconnect();
console.log('node redis: ok');
