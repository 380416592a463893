"""redis-py against cutover, on the library's default settings (or protocol=2).

Usage: python3 redis_py.py PORT [default|2]. Exits 0 when every check holds.
"""
import os
import sys

import redis


def main() -> None:
    port = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "default"
    kwargs = {} if mode == "default" else {"protocol": int(mode)}
    r = redis.Redis(host="127.0.0.1", port=port, **kwargs)
    prefix = f"py{mode}:{os.getpid()}:"

    assert r.ping() is True
    # The library's connection handshake went through: HELLO (RESP3 by default) and CLIENT SETINFO.
    me = r.client_info()
    assert me["resp"] == ("3" if mode == "default" else mode), me
    assert me["lib-name"] == "redis-py" and me["lib-ver"] == redis.__version__, me
    assert r.set(prefix + "s", "hello") is True
    assert r.get(prefix + "s") == b"hello"
    assert r.append(prefix + "s", " world") == 11
    assert r.incr(prefix + "n") == 1 and r.incrby(prefix + "n", 41) == 42
    assert r.hset(prefix + "h", mapping={"a": "1", "b": "2"}) == 2
    assert r.hgetall(prefix + "h") == {b"a": b"1", b"b": b"2"}
    assert r.hget(prefix + "h", "b") == b"2"
    assert r.rpush(prefix + "l", "x", "y", "z") == 3
    assert r.lrange(prefix + "l", 0, -1) == [b"x", b"y", b"z"]
    assert r.sadd(prefix + "set", "p", "q") == 2
    assert r.smembers(prefix + "set") == {b"p", b"q"}
    assert r.zadd(prefix + "z", {"one": 1, "two": 2.5}) == 2
    assert r.zrange(prefix + "z", 0, -1, withscores=True) == [(b"one", 1.0), (b"two", 2.5)]
    assert r.zscore(prefix + "z", "two") == 2.5

    keys = [f"{prefix}multi:{i}" for i in range(20)]
    assert r.mset({k: f"v{i}" for i, k in enumerate(keys)}) is True
    assert r.mget(keys + [prefix + "missing"]) == [f"v{i}".encode() for i in range(20)] + [None]
    assert r.exists(*keys) == 20
    assert r.touch(*keys) == 20
    assert r.delete(*keys) == 20
    assert r.mget(keys[:3]) == [None, None, None]

    r.set(prefix + "ttl", "v", ex=100)
    assert 0 < r.ttl(prefix + "ttl") <= 100

    pipe = r.pipeline(transaction=False)
    for _ in range(100):
        pipe.incr(prefix + "counter")
    assert pipe.execute() == list(range(1, 101))

    info = r.info()
    assert "redis_version" in info and info["loading"] == 0
    assert r.echo("hi") == b"hi"
    r.close()
    print(f"redis-py {redis.__version__} ({mode}): ok")


if __name__ == "__main__":
    main()
