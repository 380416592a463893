"""The one-off migration script people write today, as the baseline: SCAN the source and,
with 10 threads, PTTL + DUMP + RESTORE each key through a nutcracker in front of the
target pool (so keys land where the pool places them).

Usage: python3 benches/reference_migrate.py SOURCE_PORT NUTCRACKER_PORT
"""
import concurrent.futures
import sys
import threading

import redis

local = threading.local()


def clients(source_port: int, target_port: int):
    if not hasattr(local, "src"):
        # nutcracker closes connections that send CLIENT SETINFO or HELLO: RESP2, no lib info.
        local.src = redis.Redis(port=source_port, protocol=2, lib_name=None, lib_version=None)
        local.dst = redis.Redis(port=target_port, protocol=2, lib_name=None, lib_version=None)
    return local.src, local.dst


def move(key: bytes, source_port: int, target_port: int) -> int:
    src, dst = clients(source_port, target_port)
    pttl = src.pttl(key)
    payload = src.dump(key)
    if payload is None:
        return 0
    dst.restore(key, pttl if pttl > 0 else 0, payload, replace=True)
    return 1


def main() -> None:
    source_port, target_port = int(sys.argv[1]), int(sys.argv[2])
    scanner = redis.Redis(port=source_port, protocol=2, lib_name=None, lib_version=None)
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        moved = sum(pool.map(lambda k: move(k, source_port, target_port), scanner.scan_iter(count=1000), chunksize=64))
    print(moved)


if __name__ == "__main__":
    main()
