"""MongoDB storage: ours (C driver) vs cacheme 0.3.0 (motor), same server, one run.

The server is mongoeco (tests/mongo_servers.py: pure Python, in-memory,
started on a free port from .bench/venv-mongoeco) unless --url names one. A
Python server is far slower than the clients, so wall time mostly measures
the server; each phase therefore also reports the CPU the client process
spent per operation (time.process_time: all its threads, motor's executor
included), and the server's CPU per operation (/proc/PID/stat) when the
server is ours to watch.

Phases (0.3.0's benchmark shapes, through cacheme.get / get_all with the
MongoDB storage as the only cache, MsgPackSerializer, payload
{"uid": n, "data": "x" * payload}, pool_size 50):
  write       1k gets of new keys (find miss, load, upsert)
  read        1k sequential gets of stored keys (hits)
  batch20     50 get_all of 20 stored keys
  concurrent  --workers tasks x --reqs gets at once, keys zipf(1.0) over the
              1k stored keys (hits; equal keys in flight share one read)

    python benchmarks/bench_mongo.py [--contenders ours,030] [--payloads 100]
        [--workers 1000] [--reqs 20] [--rounds 3] [--url mongodb://...] [--json OUT]

Each contender runs in its own interpreter: ours from this tree (the
interpreter running this script: make bench-mongo uses .venv), 0.3.0 from
.bench/venv-mongo-030 (benchmarks/mongo_venvs.sh), on a collection of its
own, made beforehand (by pymongo) with the indexes of 0.3.0's
scripts/mongo.js: unique on key, and on expire. (0.3.0 creates none itself;
without them every read of a key is a collection scan.) Contenders
alternate for --rounds rounds; every figure keeps its best run (lowest time
and CPU, highest rate).
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_030 = os.path.join(ROOT, ".bench", "venv-mongo-030", "bin", "python")
sys.path.insert(0, os.path.join(ROOT, "tests"))
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

WORKER = r'''
import asyncio, json, random, sys, time
sys.path.append(sys.argv[1])  # benchmarks/: storage_bench
import cacheme
import storage_bench

url, coll, payload, workers, reqs, server_pid = (
    sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))
DATA = "x" * payload
N = 1000


def server_cpu():
    return storage_bench.server_cpu(server_pid)


class Phase:
    def __init__(self, out, name, ops):
        self.out, self.name, self.ops = out, name, ops

    def __enter__(self):
        self.t, self.c, self.s = time.perf_counter(), time.process_time(), server_cpu()

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t
        self.out[self.name] = {
            "ms": wall * 1000,
            "ops_per_s": self.ops / wall,
            "client_cpu_us_per_op": (time.process_time() - self.c) / self.ops * 1e6,
            "server_cpu_us_per_op": (server_cpu() - self.s) / self.ops * 1e6 if server_pid else None,
        }


async def main():
    await cacheme.register_storage("mongo", cacheme.Storage(
        url=url, database="bench", collection=coll, pool_size=50))
    out = {}
    R = storage_bench.node_class("read", "mongo", DATA)
    with Phase(out, "write", N):
        for i in range(N):
            await cacheme.get(R(i))
    assert storage_bench.loads == N, storage_bench.loads
    with Phase(out, "read", N):
        for i in range(N):
            await cacheme.get(R(i))
    with Phase(out, "batch20", N // 20):
        for b in range(N // 20):
            got = await cacheme.get_all([R(b * 20 + j) for j in range(20)])
            assert len(got) == 20
    rnd = random.Random(42)
    weights = [1.0 / (i + 1) for i in range(N)]
    keys = [rnd.choices(range(N), weights=weights, k=reqs) for _ in range(workers)]

    async def worker(ks):
        for k in ks:
            await cacheme.get(R(k))

    with Phase(out, "concurrent", workers * reqs):
        await asyncio.gather(*[worker(ks) for ks in keys])
    out["loads_after_seed"] = storage_bench.loads - N
    print(json.dumps(out))


asyncio.run(main())
'''

CONTENDERS = {"ours": "Cacheme (ours)", "030": "Cacheme 0.3.0 (motor)"}
PHASES = ("write", "read", "batch20", "concurrent")


def make_collection(url, coll):
    from mongo_servers import pymongo_call

    pymongo_call(url, "bench", coll, "command", {"createIndexes": coll, "indexes": [
        {"key": {"key": 1}, "name": "key_1", "unique": True},
        {"key": {"expire": 1}, "name": "expire_1"}]})


def run(impl, url, coll, payload, workers, reqs, server_pid, timeout):
    if impl == "ours":
        python, cwd, env = sys.executable, ROOT, {**os.environ, "PYTHONPATH": ROOT}
    else:
        python, cwd = VENV_030, "/"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([python, "-c", WORKER, BENCH_DIR, url, coll, str(payload), str(workers),
                        str(reqs), str(server_pid)], capture_output=True, text=True, cwd=cwd,
                       timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{impl} ({python}) failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def best(a, b):
    """Per figure, the better of two runs."""
    if a is None:
        return b
    out = {}
    for phase, figs in b.items():
        if not isinstance(figs, dict):
            out[phase] = figs
            continue
        out[phase] = {}
        for k, v in figs.items():
            old = a[phase][k]
            if v is None or old is None:
                out[phase][k] = v
            else:
                out[phase][k] = max(old, v) if k == "ops_per_s" else min(old, v)
    return out


def fmt(v, spec):
    return "" if v is None else format(v, spec)


def print_tables(results, workers, reqs, contenders):
    for row in results:
        print(f"\nPayload {row['payload']} B; concurrent: {workers} workers x {reqs} gets "
              f"(zipf over 1k keys)\n")
        print("| phase | contender | wall ms | ops/s | client CPU µs/op | server CPU µs/op |")
        print("|---|---|---:|---:|---:|---:|")
        for phase in PHASES:
            for impl in contenders:
                if impl not in row:
                    continue
                f = row[impl][phase]
                print(f"| {phase} | {CONTENDERS[impl]} | {f['ms']:.0f} | {f['ops_per_s']:,.0f} | "
                      f"{f['client_cpu_us_per_op']:.1f} | "
                      f"{fmt(f['server_cpu_us_per_op'], '.0f')} |")
        if "ours" in row and "030" in row:
            print("\n| phase | wall: 0.3.0 / ours | client CPU: 0.3.0 / ours |")
            print("|---|---:|---:|")
            for phase in PHASES:
                o, t = row["ours"][phase], row["030"][phase]
                print(f"| {phase} | {t['ms'] / o['ms']:.1f}x | "
                      f"{t['client_cpu_us_per_op'] / o['client_cpu_us_per_op']:.1f}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contenders", default="ours,030")
    ap.add_argument("--payloads", default="100")
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--reqs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs per contender, alternating; each figure keeps its best")
    ap.add_argument("--url", help="use this MongoDB (mongodb://host:port) instead of mongoeco")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per contender run")
    ap.add_argument("--json", metavar="OUT", help="also write the figures (benchmarks/results.py)")
    args = ap.parse_args()
    contenders = [c for c in args.contenders.split(",") if c]
    for c in contenders:
        if c not in CONTENDERS:
            ap.error(f"unknown contender {c!r} (known: {', '.join(CONTENDERS)})")
    if "ours" in contenders:
        r = subprocess.run([sys.executable, "-c", "import cacheme.storages.mongo"], cwd=ROOT,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        if r.returncode != 0:
            print("bench_mongo: ours left out, MongoStorage not built: "
                  f"{r.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            contenders.remove("ours")
    if not contenders:
        ap.error("no contender left")
    if "030" in contenders and not os.path.exists(VENV_030):
        ap.error("cacheme 0.3.0 venv missing: bash benchmarks/mongo_venvs.sh")
    srv, url, server_pid = None, args.url, 0
    if url is None:
        from mongo_servers import start_mongo_server

        srv = start_mongo_server()
        url, server_pid = srv.url, srv.proc.pid
    results = []
    try:
        run_id = 0
        for payload in [int(p) for p in args.payloads.split(",")]:
            row = {"payload": payload}
            for _ in range(max(1, args.rounds)):
                for impl in contenders:
                    run_id += 1
                    coll = f"bench_{impl}_{os.getpid()}_{run_id}"
                    make_collection(url, coll)
                    got = run(impl, url, coll, payload, args.workers, args.reqs, server_pid,
                              args.timeout)
                    row[impl] = best(row.get(impl), got)
                    print(f"bench_mongo: {impl} {payload} B: {json.dumps(got)}", file=sys.stderr)
            results.append(row)
    finally:
        if srv is not None:
            srv.cleanup()
    print_tables(results, args.workers, args.reqs, contenders)
    if args.json:
        import results as results_mod

        server = "mongoeco (tests/mongo_servers.py)" if args.url is None else args.url
        results_mod.write(args.json, "mongo", {
            "server": server, "workers": args.workers, "reqs": args.reqs,
            "rounds": args.rounds, "contenders": {c: CONTENDERS[c] for c in contenders},
            "results": results})


if __name__ == "__main__":
    main()
