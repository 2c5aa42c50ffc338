"""One row of the expiry benchmark, run in the contender's venv by
run_expiry.py (which owns the Redis server, the parameters and the table).

W workers get K hot keys for D seconds. A key's value lives TTL seconds and
costs a load of L seconds (asyncio.sleep) from an instrumented source; each
worker sleeps a random 0..2*interval between gets. Prints one JSON line:

    {"gets", "warmup_gets", "p50_ms", "p99_ms", "max_ms", "loads", "failed_loads",
     "waited", "slow", "errors"}   or   {"skipped": why}

Counted after warm-up (a get counts once the first load of its key has
finished): the latency of each get; "waited": gets whose value came from a
load still running when the get started (each load returns a new sequence
number and records when it finished, so this holds whatever the library
does with the value: no threshold); "slow": gets slower than --slow-ms;
"errors": gets that raised.

Failure model (rows with --failing): the source is down for the last
--outage seconds of every --period seconds from the start of the run (first
outage from period - outage): a load started then raises after its sleep.

    python expiry_hot.py ROW --storage local|chain [--url redis://...] ...

ROW: ours-hit (no TTL: the hit path, the reference of issue 25's goal),
ours-plain, ours-jitter, ours-refresh-after, ours-early-refresh,
ours-stale-if-error (cacheme: Meta options of issue 25, probed first: a
build that ignores the option gets {"skipped": "not built ..."}),
cashews-plain, cashews-early, cashews-soft.
"""
import argparse
import asyncio
import json
import random
import time
from array import array
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Awaitable, Callable, Dict

Get = Callable[[int], Awaitable[Any]]


class SourceDown(Exception):
    pass


class NotBuilt(Exception):
    """The row's option is not in this build."""


class Source:
    """The data source: every call is a load of `load` seconds. A call
    returns a fresh sequence number and records when it finished."""

    def __init__(self, load: float, outage: float, period: float):
        self.load, self.outage, self.period = load, outage, period
        self.start = None  # perf_counter of the run's start; no outage before
        self.seq = self.loads = self.failed = 0
        self.finished: Dict[int, float] = {}
        self.first: Dict[int, float] = {}

    def down(self, now: float) -> bool:
        if self.start is None or not self.outage:
            return False
        return (now - self.start) % self.period >= self.period - self.outage

    async def __call__(self, key: int) -> int:
        self.seq += 1
        self.loads += 1
        seq, failing = self.seq, self.down(time.perf_counter())
        await asyncio.sleep(self.load)
        if failing:
            self.failed += 1
            raise SourceDown(f"source down (load {seq} of key {key})")
        now = time.perf_counter()
        self.finished[seq] = now
        self.first.setdefault(key, now)
        return seq


# ---------------------------------------------------------------- ours


# row -> the Meta attribute it sets (issue 25), from the run's parameters
def ours_option(row: str, a) -> Dict[str, Any]:
    if row == "ours-refresh-after":
        return {"refresh_after": timedelta(seconds=a.refresh_after)}
    if row == "ours-early-refresh":
        return {"early_refresh": a.beta}
    if row == "ours-stale-if-error":
        return {"stale_if_error": timedelta(seconds=a.stale)}
    return {}


def ours_node(cacheme: Any, name: str, caches: list, options: Dict[str, Any], load: Callable) -> type:
    meta = type("Meta", (cacheme.Node.Meta,), dict(options, version="v1", caches=caches))

    @dataclass
    class HotNode(cacheme.Node):
        k: int
        Meta = meta

        def key(self) -> str:
            return f"{name}:{self.k}"

        async def load(self) -> Any:
            return await load(self.k)

    return HotNode


async def probe(cacheme: Any, row: str, a) -> str:
    """'' when this build does what the row's Meta option says, else why
    not. Today's build ignores unknown Meta attributes, so only behaviour
    tells: a local cache, its own node and source, a few tenths of a second."""
    calls = []
    fail = [False]

    async def load(k: int) -> int:
        calls.append(k)
        await asyncio.sleep(0.02)
        if fail[0]:
            raise SourceDown("probe")
        return len(calls)

    await cacheme.register_storage("probe", cacheme.Storage(url="local://tlfu", size=100))
    if row == "ours-refresh-after":
        # a value older than refresh_after is returned as it is and reloaded behind
        node = ours_node(cacheme, "probe-ra", [cacheme.Cache(storage="probe", ttl=timedelta(seconds=30))],
                         {"refresh_after": timedelta(seconds=0.05)}, load)
        await cacheme.get(node(1))
        await asyncio.sleep(0.1)
        got = await cacheme.get(node(1))
        await asyncio.sleep(0.3)
        if len(calls) < 2:
            return "not built (Meta.refresh_after: a value past it was not reloaded)"
        if got != 1:
            return "probe: Meta.refresh_after reloaded, but the caller waited for it"
        return ""
    if row == "ours-early-refresh":
        # beta x delta (1000 x 0.02 s) far above the 2 s to expiry: P(early) = exp(-0.1) per get
        node = ours_node(cacheme, "probe-er", [cacheme.Cache(storage="probe", ttl=timedelta(seconds=2))],
                         {"early_refresh": 1000.0}, load)
        await cacheme.get(node(1))
        for _ in range(30):
            await asyncio.sleep(0.01)
            await cacheme.get(node(1))
        await asyncio.sleep(0.1)
        if len(calls) < 2:
            return "not built (Meta.early_refresh: no early reload in 30 gets at P = 0.9 each)"
        return ""
    if row == "ours-stale-if-error":
        # the load fails after the TTL: the expired value is returned instead
        node = ours_node(cacheme, "probe-se", [cacheme.Cache(storage="probe", ttl=timedelta(seconds=0.05))],
                         {"stale_if_error": timedelta(seconds=30)}, load)
        await cacheme.get(node(1))
        await asyncio.sleep(0.15)
        fail[0] = True
        try:
            got = await cacheme.get(node(1))
        except SourceDown:
            return "not built (Meta.stale_if_error: a failed load raised to the caller)"
        if got != 1 or len(calls) < 2:
            return f"probe: Meta.stale_if_error gave {got!r} after {len(calls)} loads"
        return ""
    return ""


async def setup_ours(row: str, a, source: Source) -> Get:
    import cacheme
    from cacheme.serializer import MsgPackSerializer

    try:
        why = await probe(cacheme, row, a)
    except Exception as e:  # an option refused at its first use names itself here
        why = f"probe failed: {type(e).__name__}: {e}"
    if why:
        raise NotBuilt(why)
    # the hit path: values that never expire, so after warm-up every get is a local hit
    ttl = None if row == "ours-hit" else timedelta(seconds=a.ttl)
    jitter = a.jitter if row == "ours-jitter" else 0.0
    await cacheme.register_storage("local", cacheme.Storage(url="local://tlfu", size=10_000))
    caches = [cacheme.Cache(storage="local", ttl=ttl, ttl_jitter=jitter)]
    if a.storage == "chain":
        await cacheme.register_storage("redis", cacheme.Storage(url=a.url, pool_size=100))
        caches.append(cacheme.Cache(storage="redis", ttl=ttl, ttl_jitter=jitter))
    options = dict(ours_option(row, a), serializer=MsgPackSerializer())
    node = ours_node(cacheme, "hot", caches, options, source)

    def get(k: int) -> Awaitable[Any]:
        return cacheme.get(node(k))

    return get


# ---------------------------------------------------------------- cashews


async def setup_cashews(row: str, a, source: Source) -> Get:
    from cashews import Cache

    cache = Cache()
    if a.storage == "chain":
        # cashews' [memory, redis]: a local copy in front of Redis, kept by client tracking
        cache.setup(a.url, client_side=True)
    else:
        cache.setup("mem://", size=10_000)
    await cache.init()
    ttl = timedelta(seconds=a.ttl)
    if row == "cashews-early":
        deco = cache.early(ttl=ttl, early_ttl=timedelta(seconds=a.refresh_after), key="early:{k}")
    elif row == "cashews-soft":
        # kept `stale` past its soft TTL: cashews' stale-if-error
        deco = cache.soft(ttl=timedelta(seconds=a.ttl + a.stale), soft_ttl=ttl, key="soft:{k}")
    else:
        deco = cache(ttl=ttl, key="plain:{k}")

    @deco
    async def get(k: int) -> int:
        return await source(k)

    return get


# ---------------------------------------------------------------- the run


async def run(get: Get, source: Source, a) -> dict:
    n = a.workers
    starts, lats = array("d"), array("d")
    keys, seqs = array("i"), array("q")  # seq -1: the get raised
    loop_end = [0.0]

    async def worker(i: int) -> None:
        r = random.Random(i)
        await asyncio.sleep(r.random() * 2 * a.interval)
        while True:
            k = r.randrange(a.keys)
            t0 = time.perf_counter()
            if t0 >= loop_end[0]:
                return
            try:
                seq = await get(k)
            except Exception:
                seq = -1
            t1 = time.perf_counter()
            starts.append(t0)
            lats.append(t1 - t0)
            keys.append(k)
            seqs.append(seq)
            await asyncio.sleep(r.random() * 2 * a.interval)

    source.start = time.perf_counter()
    loop_end[0] = source.start + a.duration
    await asyncio.gather(*[worker(i) for i in range(n)])
    # let background refreshes finish before counting loads
    await asyncio.sleep(a.load * 2)

    inf = float("inf")
    counted = []
    warmup = waited = slow = errors = 0
    for t0, lat, k, seq in zip(starts, lats, keys, seqs):
        if t0 < source.first.get(k, inf):
            warmup += 1
            continue
        counted.append(lat)
        if seq < 0:
            errors += 1
        elif source.finished.get(seq, inf) > t0:
            waited += 1
        if lat * 1000 > a.slow_ms:
            slow += 1
    counted.sort()

    def q(p: float) -> float:
        return counted[min(len(counted) - 1, int(p * len(counted)))] * 1000 if counted else float("nan")

    return {"gets": len(counted), "warmup_gets": warmup, "p50_ms": q(0.5), "p99_ms": q(0.99),
            "max_ms": counted[-1] * 1000 if counted else float("nan"),
            "loads": source.loads, "failed_loads": source.failed,
            "waited": waited, "slow": slow, "errors": errors}


SETUPS = {
    "ours-hit": setup_ours, "ours-plain": setup_ours, "ours-jitter": setup_ours, "ours-refresh-after": setup_ours,
    "ours-early-refresh": setup_ours, "ours-stale-if-error": setup_ours,
    "cashews-plain": setup_cashews, "cashews-early": setup_cashews, "cashews-soft": setup_cashews,
}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("row", choices=sorted(SETUPS))
    ap.add_argument("--storage", choices=("local", "chain"), required=True)
    ap.add_argument("--url", help="the Redis of the chain storage")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--keys", type=int, default=8)
    ap.add_argument("--ttl", type=float, default=1.0)
    ap.add_argument("--load", type=float, default=0.1)
    ap.add_argument("--interval", type=float, default=0.1, help="mean pause of a worker between gets")
    ap.add_argument("--failing", action="store_true", help="the source has outages (see above)")
    ap.add_argument("--outage", type=float, default=2.0)
    ap.add_argument("--period", type=float, default=5.0)
    ap.add_argument("--jitter", type=float, default=0.1)
    ap.add_argument("--refresh-after", type=float, default=0.5)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--stale", type=float, default=5.0)
    ap.add_argument("--slow-ms", type=float, default=50.0)
    a = ap.parse_args()
    if a.storage == "chain" and not a.url:
        ap.error("--storage chain needs --url")
    source = Source(a.load, a.outage if a.failing else 0.0, a.period)
    try:
        get = await SETUPS[a.row](a.row, a, source)
    except NotBuilt as e:
        print(json.dumps({"skipped": str(e)}))
        return
    print(json.dumps(await run(get, source, a)))


if __name__ == "__main__":
    asyncio.run(main())
