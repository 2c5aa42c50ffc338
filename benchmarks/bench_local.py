"""One round of the local hit-path benchmark, for ONE implementation.

Run by benchmarks/run_local.py in each contender's virtualenv; prints exactly
one JSON line on stdout (diagnostics go to stderr).  Numbers are ns per op.

  --impl cacheme   whatever ``import cacheme`` gives in this interpreter
                   (ours in .venv, the pure-Python 0.3.0 in .bench/venv-030)
      get_tlfu     await cacheme.get(BenchNode(uid=i % 1000))      (all hits)
      get_lru      same, node on a local://lru storage            (all hits)
      baseline     n = BenchNode(uid=i % 1000); n.key()
      miss_load    await cacheme.get(MissNode(uid=fresh)): miss + load (returns 1)
                   + fill, on a local://tlfu storage of size 10**6 (no eviction)
  --impl theine    theine's own Cache, preloaded with the same 1000 keys
      theine_get          cache.get(f"bench:{i % 1000}")    (default constructor)
      theine_get_nolock   same with Cache(..., nolock=True) if supported

Every timed loop is ``for i in range(N)`` inside one coroutine on one asyncio
loop; the node (or key string) is built inside the loop.  Each hit measurement
is repeated --repeat times interleaved, and the best (minimum) is reported;
the driver then takes the median across rounds/processes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import platform
import sys
from dataclasses import dataclass
from time import perf_counter_ns

KEYS = 1000


def log(*a):
    print(*a, file=sys.stderr)


# --------------------------------------------------------------------- cacheme
def cacheme_nodes(cacheme):
    Cache = cacheme.Cache

    @dataclass
    class BenchNode(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"bench:{self.uid}"

        async def load(self):
            return {"uid": self.uid}

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [Cache(storage="local", ttl=None)]

    @dataclass
    class BenchNodeLRU(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"bench:{self.uid}"

        async def load(self):
            return {"uid": self.uid}

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [Cache(storage="local-lru", ttl=None)]

    @dataclass
    class MissNode(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"miss:{self.uid}"

        async def load(self):
            return 1

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [Cache(storage="local-big", ttl=None)]

    return BenchNode, BenchNodeLRU, MissNode


async def register_storages(cacheme):
    """The storages the nodes of cacheme_nodes() use."""
    await cacheme.register_storage("local", cacheme.Storage(url="local://tlfu", size=10000))
    await cacheme.register_storage("local-lru", cacheme.Storage(url="local://lru", size=10000))
    await cacheme.register_storage("local-big", cacheme.Storage(url="local://tlfu", size=10**6))


async def t_get(get, node_cls, n):
    t0 = perf_counter_ns()
    for i in range(n):
        await get(node_cls(uid=i % 1000))
    return perf_counter_ns() - t0


async def t_baseline(node_cls, n):
    t0 = perf_counter_ns()
    for i in range(n):
        node = node_cls(uid=i % 1000)
        node.key()
    return perf_counter_ns() - t0


async def t_miss(get, node_cls, start, n):
    t0 = perf_counter_ns()
    for i in range(start, start + n):
        await get(node_cls(uid=i))
    return perf_counter_ns() - t0


def _stat(cacheme, node_cls, name):
    try:
        return getattr(cacheme.stats(node_cls), name)()
    except Exception as e:  # stats API missing/different: don't fail the bench
        log(f"bench_local: stats({node_cls.__name__}).{name}() unavailable: {e!r}")
        return None


async def run_cacheme(args):
    import cacheme

    try:
        from importlib.metadata import version

        ver = version("cacheme")
    except Exception:
        ver = getattr(cacheme, "__version__", "src")
    has_core = True
    try:
        import cacheme._core  # noqa: F401
    except Exception:
        has_core = False

    await register_storages(cacheme)
    BenchNode, BenchNodeLRU, MissNode = cacheme_nodes(cacheme)
    get = cacheme.get

    # preload all 1000 keys (these are the only misses) and check values
    for cls in (BenchNode, BenchNodeLRU):
        for u in range(KEYS):
            v = await get(cls(uid=u))
            assert v == {"uid": u}, v
    for cls in (BenchNode, BenchNodeLRU):
        assert await get(cls(uid=7)) == {"uid": 7}

    n = args.n
    # warm-up (also lets a TinyLFU policy settle)
    await t_get(get, BenchNode, n // 4)
    await t_get(get, BenchNodeLRU, n // 4)
    await t_baseline(BenchNode, n // 4)

    hits0 = _stat(cacheme, BenchNode, "hit_count")
    res = {"get_tlfu": [], "get_lru": [], "baseline": []}
    for _ in range(args.repeat):
        gc.collect()
        res["get_tlfu"].append(await t_get(get, BenchNode, n) / n)
        gc.collect()
        res["baseline"].append(await t_baseline(BenchNode, n) / n)
        gc.collect()
        res["get_lru"].append(await t_get(get, BenchNodeLRU, n) / n)
    hits1 = _stat(cacheme, BenchNode, "hit_count")
    all_hits = None
    if hits0 is not None and hits1 is not None:
        all_hits = (hits1 - hits0) == n * args.repeat
        if not all_hits:
            log(f"bench_local: WARNING expected {n * args.repeat} hits, stats say {hits1 - hits0}")

    # miss-then-load: every key fresh
    m = args.miss_n
    await t_miss(get, MissNode, 10**8, min(m // 10, 10000))  # warm-up, other key range
    load0 = _stat(cacheme, MissNode, "load_count")
    gc.collect()
    miss = await t_miss(get, MissNode, 0, m) / m
    load1 = _stat(cacheme, MissNode, "load_count")
    all_loaded = None
    if load0 is not None and load1 is not None:
        all_loaded = (load1 - load0) == m
        if not all_loaded:
            log(f"bench_local: WARNING expected {m} loads, stats say {load1 - load0}")
    assert await get(MissNode(uid=3)) == 1

    out = {k: min(v) for k, v in res.items()}
    out["framework_tlfu"] = out["get_tlfu"] - out["baseline"]
    out["framework_lru"] = out["get_lru"] - out["baseline"]
    out["miss_load"] = miss
    out.update(
        impl="cacheme",
        version=ver,
        has_core=has_core,
        module=cacheme.__file__,
        all_hits=all_hits,
        all_loaded=all_loaded,
    )
    return out


# ---------------------------------------------------------------------- theine
def make_theine(size, nolock):
    import theine

    params = inspect.signature(theine.Cache.__init__).parameters
    kw = {}
    if nolock:
        if "nolock" not in params:
            return None
        kw["nolock"] = True
    if "policy" in params:  # theine < 0.4: Cache(policy, size)
        return theine.Cache("tlfu", size, **kw)
    return theine.Cache(size, **kw)  # theine 2.x: Cache(size, nolock=False), always W-TinyLFU


def _theine_found(r):
    # theine 2.x get() -> (value, found); older -> value or default(None)
    if isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], bool):
        return r[1]
    return r is not None


async def t_theine(cache, n):
    get = cache.get
    t0 = perf_counter_ns()
    for i in range(n):
        get(f"bench:{i % 1000}")
    return perf_counter_ns() - t0


async def run_theine(args):
    import theine

    try:
        from importlib.metadata import version

        ver = version("theine")
    except Exception:
        ver = "?"
    caches = {"theine_get": make_theine(10000, False), "theine_get_nolock": make_theine(10000, True)}
    caches = {k: c for k, c in caches.items() if c is not None}
    for c in caches.values():
        for u in range(KEYS):
            c.set(f"bench:{u}", {"uid": u})
        for u in range(KEYS):
            assert _theine_found(c.get(f"bench:{u}")), u
    n = args.n
    for c in caches.values():
        await t_theine(c, n // 4)
    res = {k: [] for k in caches}
    for _ in range(args.repeat):
        for k, c in caches.items():
            gc.collect()
            res[k].append(await t_theine(c, n) / n)
    for c in caches.values():
        assert all(_theine_found(c.get(f"bench:{u}")) for u in range(KEYS))
    out = {k: min(v) for k, v in res.items()}
    out.update(impl="theine", version=ver, module=theine.__file__)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=["cacheme", "theine"], required=True)
    ap.add_argument("-n", type=int, default=200_000, help="ops per hit measurement")
    ap.add_argument("--miss-n", type=int, default=100_000, help="ops for miss-then-load")
    ap.add_argument("--repeat", type=int, default=3, help="in-process repeats (best is kept)")
    args = ap.parse_args()
    fn = run_cacheme if args.impl == "cacheme" else run_theine
    out = asyncio.run(fn(args))
    out.update(python=platform.python_version(), n=args.n, miss_n=args.miss_n, repeat=args.repeat)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
