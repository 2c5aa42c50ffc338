"""make bench-coherence: what Storage(url, tracking=True) buys and costs.

On a redis-server of its own (a free port, so its counters are ours):

1. Staleness: process B serves gets of one key from its local tier in a
   loop; this process (A) changes the source and calls cacheme.invalidate().
   Measured: from just before invalidate() in A to B's first get returning
   the new value (time.monotonic, one clock for every process on Linux);
   p50/p99/max over --rounds. Without tracking B serves the old value until
   its local TTL: nothing to time.
2. Cost: --readers processes each do --gets gets of --keys keys (uniform)
   while A refreshes --writes random keys; tracking off, then on. Measured:
   Redis commands processed (INFO stats) per get, the local hit ratio of the
   readers, used_memory of the server at the end, and the invalidation
   messages delivered (INFO stats pubsub... counted by the subscribers).

    python benchmarks/coherence.py [--rounds 300] [--readers 4] [--gets 20000]
"""
import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
sys.path.insert(0, TESTS)

import cacheme  # noqa: E402
import results  # noqa: E402  (benchmarks/ is sys.path[0])
from redis_servers import RedisServer  # noqa: E402
from test_tracking import Worker, put  # noqa: E402
from tracking_worker import make_node  # noqa: E402


def info(server, section):
    out = {}
    for line in server.cli("INFO", section).splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def staleness(server, source, rounds):
    prefix = "cohbench"
    cacheme.set_prefix(prefix)
    await cacheme.register_storage("local", cacheme.Storage(url="local://lru", size=10000))
    await cacheme.register_storage("redis", cacheme.Storage(url=server.url, tracking=True))
    node = make_node("local", "redis", source, None, None)
    b = Worker(server.url, prefix, source, tracking=True)
    try:
        b.wait_up(source)
        lat = []
        put(source, "k", "0")
        await cacheme.get(node("k"))
        for i in range(1, rounds + 1):
            # B caches the current value locally (its own fill's echo first)
            while not (b("get", "k") == str(i - 1) and b("local", "k") == str(i - 1)):
                pass
            put(source, "k", str(i))
            b.proc.stdin.write(f"until k {i}\n")
            b.proc.stdin.flush()
            assert json.loads(b.proc.stdout.readline()) == "spinning"
            await asyncio.sleep(0.002)  # B is in its get loop
            t0 = time.monotonic()
            await cacheme.invalidate(node("k"))
            _, t1 = json.loads(b.proc.stdout.readline())
            lat.append((t1 - t0) * 1e3)
        return lat
    finally:
        b.close()


async def cost(server, source, tracking, readers, gets, keys, writes):
    prefix = f"cohcost{int(tracking)}"
    cacheme.set_prefix(prefix)
    await cacheme.register_storage(
        "wlocal", cacheme.Storage(url="local://lru", size=10000))
    await cacheme.register_storage(
        "wredis", cacheme.Storage(url=server.url, tracking=tracking))
    node = make_node("wlocal", "wredis", source, None, None)
    for k in range(keys):
        put(source, str(k), f"v{k}")
    ws = [Worker(server.url, prefix, source, tracking=tracking) for _ in range(readers)]
    try:
        for w in ws:
            if tracking:
                w.wait_up(source)
            else:
                w("get", "0")
        server.cli("CONFIG", "RESETSTAT")
        t0 = time.perf_counter()
        for i, w in enumerate(ws):
            w.proc.stdin.write(f"bulk {gets} {keys} {i}\n")
            w.proc.stdin.flush()
        rng = random.Random(99)
        for _ in range(writes):
            await cacheme.refresh(node(str(rng.randrange(keys))))
            await asyncio.sleep(0.001)
        res = [json.loads(w.proc.stdout.readline()) for w in ws]
        wall = time.perf_counter() - t0
        stats = info(server, "stats")
        mem = int(info(server, "memory")["used_memory"])
        inv = sum(w("info")["invalidated_keys"] for w in ws)
        hits = sum(r[0] for r in res)
        return {
            "tracking": tracking,
            "gets": readers * gets,
            "local_hit_ratio": hits / (readers * gets),
            "redis_commands": int(stats["total_commands_processed"]),
            "commands_per_get": int(stats["total_commands_processed"]) / (readers * gets),
            "commands_per_s": int(stats["total_commands_processed"]) / wall,
            "used_memory": mem,
            "invalidations_heard": inv,
            "wall_s": wall,
        }
    finally:
        for w in ws:
            w.close()


async def main(args):
    with RedisServer() as server, tempfile.TemporaryDirectory() as source:
        base_mem = int(info(server, "memory")["used_memory"])
        lat = await staleness(server, source, args.rounds)
        print(f"staleness over {len(lat)} rounds (ms, invalidate() in A -> B's get sees it): "
              f"p50 {statistics.median(lat):.3f}  p99 {pct(lat, 99):.3f}  max {max(lat):.3f}")
        rows = []
        for tracking in (False, True):
            server.cli("FLUSHALL")
            rows.append(await cost(server, source, tracking, args.readers, args.gets, args.keys,
                                   args.writes))
        print(f"empty server used_memory: {base_mem} B")
        for r in rows:
            print(json.dumps(r))
        if args.json:
            results.write(args.json, "coherence", {
                "rounds": len(lat), "staleness_p50_ms": statistics.median(lat),
                "staleness_p99_ms": pct(lat, 99), "staleness_max_ms": max(lat),
                "empty_used_memory": base_mem, "staleness_ms": lat, "cost": rows})


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--gets", type=int, default=20000)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--writes", type=int, default=200)
    ap.add_argument("--json", metavar="OUT", help="also write the figures (benchmarks/results.py)")
    asyncio.run(main(ap.parse_args()))
