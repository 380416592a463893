"""Write a RESP stream (for `redis-cli --pipe`) that fills a Redis with about MB megabytes
of mixed data: 70% strings of 64 to 1024 bytes, the rest hashes, lists, sets and sorted
sets of 2 to 40 elements; a fifth of the keys get a TTL.

Usage: python3 benches/fill.py MB > fill.resp
"""
import random
import sys


def command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def main() -> None:
    target = float(sys.argv[1]) * 1_000_000
    rng = random.Random(42)
    written = 0
    i = 0
    out = sys.stdout.buffer
    while written < target:
        key = b"bench:%d" % i
        kind = rng.random()
        if kind < 0.7:
            value = bytes(rng.getrandbits(8) for _ in range(rng.randint(64, 1024)))
            out.write(command(b"SET", key, value))
            written += len(value)
        else:
            n = rng.randint(2, 40)
            members = [b"m%d-%d" % (j, rng.randint(0, 10**9)) for j in range(n)]
            written += sum(len(m) for m in members)
            if kind < 0.775:
                args = [b"HSET", key]
                for m in members:
                    args += [m, b"%d" % rng.randint(0, 10**6)]
                out.write(command(*args))
            elif kind < 0.85:
                out.write(command(b"RPUSH", key, *members))
            elif kind < 0.925:
                out.write(command(b"SADD", key, *members))
            else:
                args = [b"ZADD", key]
                for m in members:
                    args += [b"%d" % rng.randint(0, 10**6), m]
                out.write(command(*args))
        if i % 5 == 0:
            out.write(command(b"EXPIRE", key, b"3600"))
        i += 1


if __name__ == "__main__":
    main()
