"""Sequential read latency on asyncio's loop and on uvloop, busy polling on
and off, in one run.

One task awaits `cacheme.get` of a stored key again and again; the node's
only cache is the remote storage, so every get is one round trip (a Redis
GET, a PostgreSQL SELECT). Each configuration (loop x busy_poll x storage)
has its own storage and connection, used by one loop only; the
configurations alternate within each round (the machine is shared and
noisy) and each figure is the median over the rounds of the mean time per
get. The ratios compare uvloop with asyncio at the same setting.

    python benchmarks/bench_loop_latency.py [--redis URL] [--pg URL|none]
        [-n 250] [--rounds 40] [--busy-poll 0.0002] [--json FILE]

`make bench-uvloop` runs it on the local servers (Redis 127.0.0.1:6379,
PostgreSQL 127.0.0.1:5432); a storage whose server does not answer is left
out. Needs uvloop.
"""
import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cacheme  # noqa: E402
from cacheme.serializer import MsgPackSerializer  # noqa: E402

try:
    import uvloop
except ImportError:  # pragma: no cover - depends on the venv
    sys.exit("bench_loop_latency: uvloop is not installed (pip install uvloop)")

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def node_class(storage_name, tag):
    @dataclasses.dataclass
    class LatNode(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"latency:{tag}:{self.uid}"

        async def load(self):
            return {"uid": self.uid, "data": "x" * 100}

        class Meta(cacheme.Node.Meta):
            caches = [cacheme.Cache(storage=storage_name, ttl=None)]
            serializer = MsgPackSerializer()

    LatNode.__qualname__ = f"LatNode_{tag}"
    return LatNode


def spin_counts(storage):
    """(spins answered, spins timed out, inline answers) of a storage so far."""
    inner = storage._storage
    info = inner.busy_poll_info() if hasattr(inner, "busy_poll_info") else inner.pool_info()
    return (info["busy_poll_hits"], info["busy_poll_timeouts"], info.get("busy_poll_inline", 0))


class Config:
    def __init__(self, loop_name, kind, url, busy_poll):
        self.loop_name, self.kind, self.busy_poll = loop_name, kind, busy_poll
        self.label = f"{kind} {loop_name} busy_poll={'on' if busy_poll else 'off'}"
        tag = f"{kind}-{loop_name}-{'on' if busy_poll else 'off'}-{os.getpid()}"
        self.name = f"lat-{tag}"
        self.storage = cacheme.Storage(url=url, busy_poll=busy_poll, **storage_options(kind))
        self.node = node_class(self.name, tag)
        self.means = []  # us per get, one per round
        self.cpu = []  # this process's CPU time per get, us, one per round
        self.spins = [0, 0, 0]

    async def setup(self):
        await cacheme.register_storage(self.name, self.storage)
        await cacheme.get(self.node(1))  # miss: load and fill; then stored

    async def measure(self, n):
        get, node = cacheme.get, self.node(1)
        for _ in range(50):  # warm: connection, caches, branch predictors
            await get(node)
        before = spin_counts(self.storage)
        c, t = time.process_time(), time.perf_counter()
        for _ in range(n):
            await get(node)
        el, cpu = time.perf_counter() - t, time.process_time() - c
        after = spin_counts(self.storage)
        self.means.append(el / n * 1e6)
        self.cpu.append(cpu / n * 1e6)
        self.spins = [s + (a - b) for s, a, b in zip(self.spins, after, before)]

    async def close(self):
        await self.storage._storage.close()


def storage_options(kind):
    return {} if kind == "redis" else {"table": "cacheme_latency", "create_table": True}


async def reachable(kind, url):
    try:
        s = cacheme.Storage(url=url, **storage_options(kind))
        await asyncio.wait_for(s.connect(), 3)
        await s._storage.close()
        return True
    except Exception as e:  # noqa: BLE001 - any failure leaves the storage out
        print(f"# {url}: unavailable ({type(e).__name__}: {e}); left out", file=sys.stderr)
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis", default="redis://127.0.0.1:6379")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="PostgreSQL URL, or 'none'")
    # short rounds, many of them: a burst of load elsewhere on the machine
    # then falls on every configuration alike
    ap.add_argument("-n", type=int, default=250, help="gets per configuration and round")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--busy-poll", type=float, default=0.0002, help="the 'on' setting, seconds")
    ap.add_argument("--json", help="write the figures to this file too")
    args = ap.parse_args()

    urls = [("redis", args.redis)]
    if args.pg and args.pg != "none":
        urls.append(("postgresql", args.pg))
    urls = [(k, u) for k, u in urls if asyncio.run(reachable(k, u))]
    if not urls:
        sys.exit("bench_loop_latency: no storage reachable")

    runners = {name: asyncio.Runner(loop_factory=f) for name, f in LOOPS.items()}
    configs = [Config(ln, kind, url, bp) for kind, url in urls for ln in LOOPS
               for bp in (0, args.busy_poll)]
    try:
        for c in configs:
            runners[c.loop_name].run(c.setup())
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            for c in order:
                runners[c.loop_name].run(c.measure(args.n))
        for c in configs:
            runners[c.loop_name].run(c.close())
    finally:
        for r in runners.values():
            r.close()

    cpus = len(os.sched_getaffinity(0))
    print(f"# sequential cacheme.get latency, {args.n} gets x {args.rounds} rounds, "
          f"median of round means (us); uvloop {uvloop.__version__}, "
          f"Python {sys.version.split()[0]}, {cpus} usable CPUs")
    print(f"{'storage':<11} {'busy_poll':<10} {'asyncio':>9} {'uvloop':>9} {'uv/aio':>7}"
          f" {'cpu aio':>8} {'cpu uv':>7}   spins answered / timed out / inline (asyncio; uvloop)")
    out = []
    by = {(c.kind, c.loop_name, bool(c.busy_poll)): c for c in configs}
    for kind, _ in urls:
        for on in (False, True):
            a, u = by[(kind, "asyncio", on)], by[(kind, "uvloop", on)]
            ma, mu = statistics.median(a.means), statistics.median(u.means)
            ca, cu = statistics.median(a.cpu), statistics.median(u.cpu)
            print(f"{kind:<11} {'on' if on else 'off':<10} {ma:>9.1f} {mu:>9.1f} {mu / ma:>7.2f}"
                  f" {ca:>8.1f} {cu:>7.1f}"
                  f"   {'/'.join(map(str, a.spins))}; {'/'.join(map(str, u.spins))}")
            out.append({"storage": kind, "busy_poll": args.busy_poll if on else 0,
                        "asyncio_us": ma, "uvloop_us": mu, "ratio": mu / ma,
                        "asyncio_cpu_us": ca, "uvloop_cpu_us": cu,
                        "asyncio_rounds": a.means, "uvloop_rounds": u.means,
                        "asyncio_spins": a.spins, "uvloop_spins": u.spins})
    for kind, _ in urls:
        for ln in LOOPS:
            off = statistics.median(by[(kind, ln, False)].means)
            on = statistics.median(by[(kind, ln, True)].means)
            print(f"# {kind} on {ln}: busy polling {off:.1f} -> {on:.1f} us ({off / on:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "rounds": args.rounds, "cpus": cpus,
                       "uvloop": uvloop.__version__, "rows": out}, f, indent=1)


if __name__ == "__main__":
    main()
