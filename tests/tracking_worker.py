"""A process of the tracking tests and benchmark: one node class with
caches [local, redis(tracking=...)] whose load reads the source of truth
from files, driven by commands on stdin, one JSON reply per line on stdout.

    python tracking_worker.py URL PREFIX SOURCE_DIR TRACKING(0/1) [LOCAL_TTL_S] [REDIS_TTL_S]

(a Redis Cluster when TRACKING_CLUSTER=1 is in the environment)

Commands (one per line): get K | invalidate K | refresh K | local K (the
local copy or null) | info (_tracking_info) | until K V (replies "spinning",
then gets until the value is V and replies [gets, time.monotonic() then]) |
bulk N K SEED (N gets of keys 0..K-1 drawn uniformly; replies [local hits,
seconds]) | quit.
"""
import asyncio
import json
import os
import random
import sys
import time
from datetime import timedelta

import cacheme


def make_node(local: str, redis: str, source: str, local_ttl, redis_ttl):
    class TrackedNode(cacheme.Node):
        def __init__(self, k: str):
            self.k = k

        def key(self) -> str:
            return f"tracked:{self.k}"

        async def load(self):
            path = os.path.join(source, self.k)
            with open(path) as f:
                return f.read()

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [
                cacheme.Cache(storage=local, ttl=local_ttl),
                cacheme.Cache(storage=redis, ttl=redis_ttl),
            ]

    return TrackedNode


async def main() -> None:
    url, prefix, source, tracking = sys.argv[1:5]
    local_ttl = timedelta(seconds=float(sys.argv[5])) if len(sys.argv) > 5 else None
    redis_ttl = timedelta(seconds=float(sys.argv[6])) if len(sys.argv) > 6 else None
    cacheme.set_prefix(prefix)
    await cacheme.register_storage("local", cacheme.Storage(url="local://lru", size=10000))
    await cacheme.register_storage(
        "redis", cacheme.Storage(url=url, tracking=tracking == "1", retry_backoff=0.01,
                                 retry_backoff_max=0.05,
                                 cluster=os.environ.get("TRACKING_CLUSTER") == "1"))
    node = make_node("local", "redis", source, local_ttl, redis_ttl)
    local = cacheme.data.get_storage_by_name("local")
    redis = cacheme.data.get_storage_by_name("redis")._storage
    loop = asyncio.get_running_loop()
    out = sys.stdout
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd, *args = line.split()
        reply = None
        if cmd == "get":
            reply = await cacheme.get(node(args[0]))
        elif cmd == "invalidate":
            await cacheme.invalidate(node(args[0]))
        elif cmd == "refresh":
            await cacheme.refresh(node(args[0]))
        elif cmd == "local":
            reply = await local.get(node(args[0]), None)
            reply = None if reply is cacheme.models.sentinel else reply
        elif cmd == "info":
            reply = redis._tracking_info()
        elif cmd == "until":
            out.write('"spinning"\n')
            out.flush()
            n = 0
            while True:
                n += 1
                if await cacheme.get(node(args[0])) == args[1]:
                    break
                await asyncio.sleep(0)
            reply = [n, time.monotonic()]
        elif cmd == "bulk":
            n, keys, rng = int(args[0]), int(args[1]), random.Random(int(args[2]))
            before = cacheme.stats(node).storage_stats()["local"]["hits"]
            t0 = time.perf_counter()
            for _ in range(n):
                await cacheme.get(node(str(rng.randrange(keys))))
            hits = cacheme.stats(node).storage_stats()["local"]["hits"] - before
            reply = [hits, time.perf_counter() - t0]
        elif cmd == "quit":
            break
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    asyncio.run(main())
