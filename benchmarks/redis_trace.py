"""One contender of the Redis benchmark, run inside that contender's venv by
run_redis.py (which owns the redis-server, the traces and the table).

Reproduces cacheme 0.3.0's benchmarks/trace.py ("200k concurrent requests",
"20k concurrent batch requests"): a function that takes a number, sleeps
0.1 s and returns it, cached in Redis through each library; the trace's
requests are queued as coroutines and run by N workers. Prints one JSON line:
{"time": seconds, "loads": load calls, "errors": wrong results or raised,
"start"/"end": wall clock of the run}.

    python redis_trace.py CONTENDER --url redis://127.0.0.1:PORT --workers N \
        --trace FILE [--batch] [--shard I/N --ready]

run_fleet.py runs N of these at once on one Redis, each on its shard of the
trace, started together (--ready: setup first, then a line on stdin starts it).

CONTENDER: cacheme, cacheme-2 (ours or 0.3.0, whichever `cacheme` the venv
has; -2 = [local, redis]), aiocache, aiocache-2 (cached_stampede), cashews,
cashews-2 (lock=True), cacheme-lease (ours with Storage(url, lease=...);
"not built" where Storage refuses the option), floor (the harness alone: a
dict, no Redis), api-floor (the floor plus what cacheme's API makes per request: a node, its
key() and its async load()).
"""
import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Awaitable, Callable, List

LOAD_SLEEP = 0.1
POOL_SIZE = 100
LOCAL_SIZE = 10_000

loads = 0
errors = 0


async def source(uid: int) -> int:
    global loads
    loads += 1
    await asyncio.sleep(LOAD_SLEEP)
    return uid


async def worker(queue: "asyncio.Queue[Awaitable[Any]]") -> None:
    while True:
        try:
            task = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        await task


async def check(fn: Callable[..., Awaitable[Any]], arg: Any, expect: Any) -> None:
    """Call fn(arg) only when the worker awaits this, as 0.3.0's trace.py did
    (its queue held simple_get(...) coroutines): a get() made when the queue
    is filled would look at the local cache before anything was loaded."""
    global errors
    try:
        if await fn(arg) != expect:
            errors += 1
    except Exception:  # a contender's own failure counts, the run goes on
        errors += 1


# ---------------------------------------------------------------- cacheme (ours / 0.3.0)


class NotBuilt(Exception):
    """An option this build of the contender does not have."""


async def setup_cacheme(url: str, chain: bool, lease: float = 0.0) -> Callable[..., Awaitable[Any]]:
    import cacheme
    from cacheme.serializer import MsgPackSerializer

    options: dict = {"pool_size": POOL_SIZE}
    if lease:
        options["lease"] = timedelta(seconds=lease)
    try:
        storage = cacheme.Storage(url=url, **options)
    except TypeError as e:
        # a build without leases refuses the option by name
        if lease and "lease" in str(e):
            why = str(e).split(" (allowed")[0]
            raise NotBuilt(f"not built (Storage(url, lease=...): {why})") from None
        raise
    await cacheme.register_storage("redis", storage)
    node_caches = [cacheme.Cache(storage="redis", ttl=None)]
    if chain:
        await cacheme.register_storage(
            "local", cacheme.Storage(url="local://tlfu", size=LOCAL_SIZE))
        node_caches.insert(0, cacheme.Cache(storage="local", ttl=None))

    @dataclass
    class FooNode(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"uid:{self.uid}"

        async def load(self) -> int:
            return await source(self.uid)

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = node_caches  # in the class body: 0.3.0 reads it at class creation
            serializer = MsgPackSerializer()

    # one function for all requests, like the other contenders' decorated
    # function (a closure made per queued request would add two objects per
    # request for the garbage collector to walk, to cacheme's runs only)
    def get_one(u: int) -> Awaitable[Any]:
        return cacheme.get(FooNode(uid=u))

    def get_many(us: List[int]) -> Awaitable[Any]:
        return cacheme.get_all([FooNode(uid=u) for u in us])

    def one(uid: int) -> Awaitable[Any]:
        return check(get_one, uid, uid)

    def many(uids: List[int]) -> Awaitable[Any]:
        return check(get_many, uids, uids)

    return one, many


# ---------------------------------------------------------------- aiocache


async def setup_aiocache(url: str, stampede: bool):
    import aiocache
    from redis.asyncio.connection import BlockingConnectionPool
    from urllib.parse import urlparse

    u = urlparse(url)
    kw = dict(cache=aiocache.RedisCache, endpoint=u.hostname, port=u.port, timeout=200)
    if stampede:
        deco = aiocache.cached_stampede(lease=30, key_builder=lambda f, uid: f"uid3:{uid}", **kw)
    else:
        deco = aiocache.cached(key_builder=lambda f, uid: f"uid2:{uid}", **kw)

    @deco
    async def load(uid: int) -> int:
        return await source(uid)

    # a blocking pool of 100, as in 0.3.0's trace.py
    load.cache.client.connection_pool = BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=None)
    return (lambda uid: check(load, uid, uid)), None


# ---------------------------------------------------------------- cashews


async def setup_cashews(url: str, lock: bool):
    from cashews import cache

    cache.setup(url, max_connections=POOL_SIZE, wait_for_connection_timeout=300)
    if lock:
        @cache(ttl=500, key="uid5:{uid}", lock=True)
        async def load(uid: int) -> int:
            return await source(uid)
    else:
        @cache(ttl=None, key="uid4:{uid}")
        async def load(uid: int) -> int:
            return await source(uid)

    await cache.get("warmup")
    return (lambda uid: check(load, uid, uid)), None


# ---------------------------------------------------------------- the harness floor


async def setup_floor(url: str):
    """What the harness costs by itself: a dict and one future per key in
    flight, in process, no Redis (the cheapest correct single-flight cache)."""
    cache: dict = {}
    flights: dict = {}

    async def get(uid: int) -> int:
        if uid in cache:
            return cache[uid]
        fut = flights.get(uid)
        if fut is not None:
            return await fut
        fut = flights[uid] = asyncio.get_running_loop().create_future()
        try:
            value = await source(uid)
        except BaseException as e:
            del flights[uid]
            fut.set_exception(e)
            raise
        cache[uid] = value
        del flights[uid]
        fut.set_result(value)
        return value

    return (lambda uid: check(get, uid, uid)), None


async def setup_api_floor(url: str):
    """The floor plus the work cacheme's API itself makes per request: a
    dataclass node, its key() and, for a new key, its async load(), with the
    floor's dict and futures in process, no Redis. An implementation cannot
    skip that work; one in C can spare the collector some of what it costs
    (benchmarks/REDIS.md, 2026-12-04)."""
    cache: dict = {}
    flights: dict = {}

    @dataclass
    class FooNode:
        uid: int

        def key(self) -> str:
            return f"uid:{self.uid}"

        async def load(self) -> int:
            return await source(self.uid)

    async def get(node: FooNode) -> int:
        key = f"cacheme:{node.key()}:v1"
        if key in cache:
            return cache[key]
        fut = flights.get(key)
        if fut is not None:
            return await fut
        fut = flights[key] = asyncio.get_running_loop().create_future()
        try:
            value = await node.load()
        except BaseException as e:
            del flights[key]
            fut.set_exception(e)
            raise
        cache[key] = value
        del flights[key]
        fut.set_result(value)
        return value

    def get_one(u: int) -> Awaitable[Any]:
        return get(FooNode(uid=u))

    return (lambda uid: check(get_one, uid, uid)), None


SETUPS = {
    "floor": lambda a: setup_floor(a.url),
    "api-floor": lambda a: setup_api_floor(a.url),
    "cacheme": lambda a: setup_cacheme(a.url, False),
    "cacheme-2": lambda a: setup_cacheme(a.url, True),
    # ours with a lease per missed key in Redis (issue 24): one load per key across processes
    "cacheme-lease": lambda a: setup_cacheme(a.url, False, a.lease),
    "aiocache": lambda a: setup_aiocache(a.url, False),
    "aiocache-2": lambda a: setup_aiocache(a.url, True),
    "cashews": lambda a: setup_cashews(a.url, False),
    "cashews-2": lambda a: setup_cashews(a.url, True),
}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("contender", choices=sorted(SETUPS))
    ap.add_argument("--url", required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--trace", required=True, help="JSON: list of ints, or list of lists (batch)")
    ap.add_argument("--batch", action="store_true")
    ap.add_argument("--shard", default="0/1", metavar="I/N",
                    help="run requests I, I+N, I+2N... of the trace (one of N processes)")
    ap.add_argument("--ready", action="store_true",
                    help="after setup print 'ready' and start on a line from stdin (run_fleet.py)")
    ap.add_argument("--lease", type=float, default=5.0, help="cacheme-lease: the lease, seconds")
    args = ap.parse_args()
    i, n = (int(x) for x in args.shard.split("/"))
    with open(args.trace) as f:
        trace = json.load(f)[i::n]
    try:
        one, many = await SETUPS[args.contender](args)
    except NotBuilt as e:
        print(json.dumps({"skipped": str(e)}))
        return
    if args.batch and many is None:
        print(json.dumps({"skipped": "no batch API"}))
        return
    queue: "asyncio.Queue[Awaitable[Any]]" = asyncio.Queue()
    for item in trace:
        queue.put_nowait(many(item) if args.batch else one(item))
    if args.ready:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    wall = time.time()
    start = time.perf_counter()
    await asyncio.gather(*[worker(queue) for _ in range(args.workers)])
    elapsed = time.perf_counter() - start
    print(json.dumps({"time": elapsed, "loads": loads, "errors": errors,
                      "start": wall, "end": wall + elapsed}))

if __name__ == "__main__":
    asyncio.run(main())
