"""What a new event loop costs: calls/s of one cacheme.get per asyncio.run()
(a sync Flask/Django-style app that runs a coroutine per request) against
the same gets on one loop, per storage, side by side in one run.

Every get is a hit on the node's only cache. A storage serves each loop with
connections of that loop (csrc/net/netloop.h): a new loop opens a new
connection, which for PostgreSQL means a new server process (fork, auth),
the PREPARE of the storage's statements and the first query on a cold
backend. `asyncio.run(noop)` alone is measured too: the part of a request
that is asyncio's own, whatever the storage.

Rounds are interleaved (each storage in turn, new loop then one loop);
printed: the median calls/s over the rounds, the median ms per call, and
new / one (how many times slower a get is when each has its own loop).

PostgreSQL and MariaDB: temporary servers on free ports (tests/sql_servers.py,
needs the server binaries), or --pg URL / --mysql URL; Redis at --redis
(--no-redis, --no-pg, --no-mysql skip one).

    make bench-new-loop BENCH_NEW_LOOP_ARGS="--rounds 5 --calls 300"
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
from pathlib import Path
from time import perf_counter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import cacheme  # noqa: E402
from cacheme.serializer import MsgPackSerializer  # noqa: E402


def node_class(storage: str):
    @dataclasses.dataclass
    class N(cacheme.Node):
        k: str

        def key(self) -> str:
            return f"nl:{self.k}"

        async def load(self) -> dict:
            return {"k": self.k}

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=None)]
            serializer = MsgPackSerializer()

    return N


async def _noop() -> None:
    return None


def per_call_new_loop(node, calls: int) -> float:
    async def one():
        return await cacheme.get(node)

    t = perf_counter()
    for _ in range(calls):
        asyncio.run(one())
    return (perf_counter() - t) / calls


def per_call_one_loop(node, calls: int) -> float:
    async def many():
        for _ in range(calls):
            await cacheme.get(node)

    t = perf_counter()
    asyncio.run(many())
    return (perf_counter() - t) / calls


def per_call_noop(calls: int) -> float:
    t = perf_counter()
    for _ in range(calls):
        asyncio.run(_noop())
    return (perf_counter() - t) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200, help="gets per case per round")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--pg", default=None, help="PostgreSQL URL (default: a temporary server)")
    ap.add_argument("--mysql", default=None, help="MariaDB URL (default: a temporary server)")
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--no-mysql", action="store_true")
    a = ap.parse_args()

    servers = []
    urls = {"local": "local://tlfu"}
    if not a.no_redis:
        urls["redis"] = a.redis
    for name, given, skip in (("postgresql", a.pg, a.no_pg), ("mysql", a.mysql, a.no_mysql)):
        if skip:
            continue
        if given is None:
            from sql_servers import MariaServer, PgServer

            srv = PgServer() if name == "postgresql" else MariaServer()
            srv.start()
            servers.append(srv)
            given = srv.url
        urls[name] = given

    nodes = {}

    async def setup():
        for name, url in urls.items():
            if name == "local":
                opts = {"size": 1000}
            elif name == "redis":
                opts = {}
            else:
                opts = {"table": f"cm_newloop_{os.getpid()}", "create_table": True}
            await cacheme.register_storage(f"nl-{name}", cacheme.Storage(url=url, **opts))
            N = node_class(f"nl-{name}")
            nodes[name] = N("a")
            await cacheme.get(nodes[name])  # the key is set: every get below hits

    try:
        asyncio.run(setup())
        per_call_noop(a.calls)  # warm-up
        res = {name: ([], []) for name in urls}
        noop = []
        for _ in range(a.rounds):
            noop.append(per_call_noop(a.calls))
            for name in urls:
                res[name][0].append(per_call_new_loop(nodes[name], a.calls))
                res[name][1].append(per_call_one_loop(nodes[name], a.calls))
        py = sys.version.split()[0]
        print(f"CPython {py}, cacheme from {Path(cacheme.__file__).parent.parent}, "
              f"{a.rounds} rounds x {a.calls} calls, medians; every get a hit")
        m = statistics.median(noop)
        print(f"{'asyncio.run(noop)':22s} {1 / m:9.0f} runs/s   {1e3 * m:7.3f} ms")
        print(f"{'storage':12s} {'new loop/s':>11s} {'ms/call':>8s} {'one loop/s':>11s} "
              f"{'ms/call':>8s} {'new/one':>8s}")
        for name, (new, one) in res.items():
            n, o = statistics.median(new), statistics.median(one)
            print(f"{name:12s} {1 / n:11.0f} {1e3 * n:8.3f} {1 / o:11.0f} {1e3 * o:8.3f} "
                  f"{n / o:8.1f}")
    finally:
        for srv in servers:
            srv.cleanup()


if __name__ == "__main__":
    main()
