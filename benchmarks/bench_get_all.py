"""get_all of N nodes: the C get_all against the Python one it replaced.

Both run in this one process on the same build, interleaved round by round
(benchmarks/get_all_py.py is the Python version, verbatim):

  local   every node hits a local://tlfu storage (the ready path)
  redis   every node hits Redis, the node's only cache (flights led, one
          MGET, the batch Task, flights settled)
  load    nothing cached anywhere: a fresh key per node per call, loaded
          by Node.load (remote miss, flights, load, fills)

Prints one line per case: median ns per call of each over the rounds, and
the ratio Python / C (above 1: C is faster). For the redis case the Redis
storage's own get_all of the same nodes is timed too ("storage"): what is
left above it is get_all's own cost, and the last column compares those.
Needs Redis at --redis-url for the redis and load cases (--no-redis skips
them).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cacheme  # noqa: E402
from cacheme import Cache, Node  # noqa: E402

import get_all_py  # noqa: E402


@dataclass
class LocalNode(Node):
    uid: int

    def key(self) -> str:
        return f"ga:{self.uid}"

    async def load(self) -> int:
        return self.uid

    class Meta(Node.Meta):
        version = "v1"
        caches = [Cache(storage="ga-local", ttl=None)]


@dataclass
class RedisNode(Node):
    uid: int

    def key(self) -> str:
        return f"ga:{self.uid}"

    async def load(self) -> int:
        return self.uid

    class Meta(Node.Meta):
        version = "v1"
        caches = [Cache(storage="ga-redis", ttl=None)]


@dataclass
class LoadNode(Node):
    uid: int

    def key(self) -> str:
        return f"ga-load:{self.uid}"

    async def load(self) -> int:
        return self.uid

    class Meta(Node.Meta):
        version = "v1"
        caches = [Cache(storage="ga-redis", ttl=None)]


async def timed(fn, make_nodes, calls: int) -> float:
    """Mean of `calls` awaited fn(nodes), ns per call (nodes built untimed)."""
    total = 0
    for i in range(calls):
        nodes = make_nodes(i)
        t0 = perf_counter_ns()
        await fn(nodes)
        total += perf_counter_ns() - t0
    return total / calls


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=100, help="nodes per get_all")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=2000, help="get_all calls per round (local)")
    ap.add_argument("--remote-calls", type=int, default=200, help="per round (redis, load)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    ap.add_argument("--no-redis", action="store_true")
    a = ap.parse_args()

    await cacheme.register_storage("ga-local", cacheme.Storage(url="local://tlfu", size=100_000))
    if not a.no_redis:
        await cacheme.register_storage("ga-redis", cacheme.Storage(url=a.redis_url))

    size = a.size
    local_nodes = [LocalNode(i) for i in range(size)]
    assert await cacheme.get_all(local_nodes) == list(range(size))
    cases = [("local", lambda i: [LocalNode(u) for u in range(size)], a.calls)]
    if not a.no_redis:
        assert await cacheme.get_all([RedisNode(u) for u in range(size)]) == list(range(size))
        cases.append(("redis", lambda i: [RedisNode(u) for u in range(size)], a.remote_calls))
        serial = iter(range(10**12))

        def fresh(i):
            base = next(serial) * size
            return [LoadNode(base + u) for u in range(size)]

        cases.append(("load", fresh, a.remote_calls))

    impls = [("python", get_all_py.get_all), ("c", cacheme.get_all)]
    results = {(c[0], name): [] for c in cases for name in ("python", "c", "storage")}
    if not a.no_redis:
        storage = cacheme._core._storages()["ga-redis"]

        def storage_only(nodes):
            return storage.get_all(nodes, None)

    gc.disable()
    for r in range(a.rounds):
        for case, make, calls in cases:
            order = impls if r % 2 == 0 else impls[::-1]
            if case == "redis":
                order = order + [("storage", storage_only)]
            for name, fn in order:
                ns = await timed(fn, make, calls)
                results[(case, name)].append(ns)
        gc.collect()
    gc.enable()

    print(f"get_all of {size} nodes, median of {a.rounds} rounds (ns per call)")
    print(f"{'case':8} {'python':>12} {'c':>12} {'python/c':>9} {'storage':>12} {'own cost py/c':>14}")
    for case, *_ in cases:
        py = statistics.median(results[(case, "python")])
        c = statistics.median(results[(case, "c")])
        line = f"{case:8} {py:12,.0f} {c:12,.0f} {py / c:9.2f}"
        if results[(case, "storage")]:
            st = statistics.median(results[(case, "storage")])
            own = f"{(py - st) / (c - st):14.2f}" if c > st else f"{'-':>14}"
            line += f" {st:12,.0f} {own}"
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
