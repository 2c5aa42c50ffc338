#!/usr/bin/env python3
"""Fleet benchmark driver (issue 24; standard library only): the seed trace
of the Redis benchmark (0.3.0's "200k concurrent requests": 200k zipf
requests, a 0.1 s load per miss) split over N processes that share one
Redis, as a service's workers would. Per contender: total loads (summed over
the processes), time (first start to last end) and the Redis commands the
server counted (INFO commandstats, delta over the run).

Each process is benchmarks/redis_trace.py in the contender's venv, on its
shard of the trace (requests i, i+N, i+2N...: every process sees the hot
keys at about the same time, as a fleet behind a load balancer does), with
W workers of its own. The processes set up (connections, decorators) first
and start together on a line from this driver; setup commands are not
counted.

    python3 benchmarks/run_fleet.py                          # everything
    python3 benchmarks/run_fleet.py --contenders ours,ours-lease --processes 4 --workers 1000

    python3 benchmarks/run_fleet.py --keys 1000             # the hot workload (below)

--keys N: the hot workload. The same number of requests, uniform over N keys
(seeded), so that every key is requested by every process and all processes
start cold together: without leases each process misses each key at about
the same time and loads it itself (up to N loads per key for N processes).

ours-lease passes Storage(url, lease=timedelta(seconds=--lease)); a build
without leases refuses the option and its row says "not built".
"""
import concurrent.futures
import json
import os
import random
import subprocess
import sys
import tempfile

import results  # benchmarks/ is sys.path[0]
import run_redis

ROOT = run_redis.ROOT
HERE = run_redis.HERE

# name -> (venv under the bench dir or None for ours, redis_trace.py contender, label)
CONTENDERS = {
    "ours": (None, "cacheme", "cacheme (ours), Redis"),
    "ours-lease": (None, "cacheme-lease", "cacheme (ours), Redis, lease"),
    "030": ("venv-redis-030", "cacheme", "cacheme 0.3.0, Redis"),
    "cashews-lock": ("venv-redis-cashews", "cashews-2", "cashews, Redis, lock=True"),
}
# commands of this driver, not of the contenders
OWN_COMMANDS = ("info", "flushall", "config|resetstat", "config")


def hot_trace(bench_dir: str, requests: int, keys: int) -> str:
    """`requests` requests uniform over `keys` keys (written once); its path."""
    os.makedirs(bench_dir, exist_ok=True)
    path = os.path.join(bench_dir, f"fleet-trace-hot-{requests}-{keys}.json")
    if not os.path.exists(path):
        rng = random.Random(1)
        with open(path, "w") as f:
            json.dump([rng.randrange(keys) for _ in range(requests)], f)
    return path


def command_delta(before: dict, after: dict) -> dict:
    out = {}
    for name, n in after.items():
        d = n - before.get(name, 0)
        if d and name not in OWN_COMMANDS:
            out[name] = d
    return out


def run_one(name: str, args, port: int, trace: str) -> dict:
    venv, contender, _ = CONTENDERS[name]
    py, env = run_redis.contender_python(args, venv)
    if py is None:
        return run_redis.no_venv(args, venv)
    run_redis.resp(port, "FLUSHALL")
    procs, errs = [], []
    try:
        for i in range(args.processes):
            err = tempfile.TemporaryFile("w+")
            errs.append(err)
            procs.append(subprocess.Popen(
                [py, os.path.join(HERE, "redis_trace.py"), contender,
                 "--url", f"redis://127.0.0.1:{port}", "--workers", str(args.workers),
                 "--trace", trace, "--shard", f"{i}/{args.processes}", "--ready",
                 "--lease", str(args.lease)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                cwd=tempfile.gettempdir(), env=env))
        with concurrent.futures.ThreadPoolExecutor(len(procs)) as ex:
            firsts = [f.result(timeout=args.timeout)
                      for f in [ex.submit(p.stdout.readline) for p in procs]]
        for p, first, err in zip(procs, firsts, errs):
            if first.strip() != "ready":
                # a skip ("not built") or a failure, reported by the first one
                rest = p.communicate(timeout=60)[0]
                err.seek(0)
                return run_redis.last_json(p.returncode or (0 if first.startswith("{") else 1),
                                           first + rest, err.read())
        before = run_redis.calls(port)
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = []
        for p, err in zip(procs, errs):
            out = p.communicate(timeout=args.timeout)[0]
            err.seek(0)
            outs.append(run_redis.last_json(p.returncode, out, err.read()))
        after = run_redis.calls(port)
    except (subprocess.TimeoutExpired, concurrent.futures.TimeoutError):
        return {"skipped": f"timeout after {args.timeout} s"}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for err in errs:
            err.close()
    bad = [o for o in outs if "skipped" in o]
    if bad:
        return bad[0]
    cmds = command_delta(before, after)
    return {"time": max(o["end"] for o in outs) - min(o["start"] for o in outs),
            "process_times": [o["time"] for o in outs],
            "loads": sum(o["loads"] for o in outs),
            "errors": sum(o["errors"] for o in outs),
            "commands": sum(cmds.values()), "by_command": cmds}


def table(rows, unique: int, args) -> None:
    def cells(res: dict) -> list:
        top = sorted(res["by_command"].items(), key=lambda kv: -kv[1])
        by = ", ".join(f"{k.upper()} {v}" for k, v in top[:4])
        if len(top) > 4:
            by += f", {len(top) - 4} more"
        return [f"{res['time']:.2f} s", str(res["loads"]), f"{res['loads'] / unique:.2f}",
                str(res["commands"]), by, str(res["errors"])]

    print(f"\n#### {args.requests // 1000}k requests ({unique} unique keys) over {args.processes} "
          f"processes x {args.workers} workers, one Redis\n")
    run_redis.markdown_table(("Time", "Loads (sum)", "Loads / unique keys", "Redis commands",
                              "by command", "wrong"), rows, cells)


def main() -> None:
    ap = run_redis.driver_parser(__doc__)
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1000, help="concurrent requests per process")
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=0,
                    help="the hot workload: --requests uniform over this many keys "
                         "(default 0: 0.3.0's zipf trace)")
    ap.add_argument("--lease", type=float, default=5.0, help="ours-lease: the lease, seconds")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per contender run")
    ap.add_argument("--json", metavar="OUT",
                    help="also write {contender: {label, time_s, loads, commands, by_command}}")
    args = run_redis.parse_driver_args(ap)
    names = run_redis.pick(args.contenders, CONTENDERS, "contender")
    if args.keys < 0:
        ap.error(f"--keys must be positive (or 0 for the zipf trace), got {args.keys}")
    if args.keys:
        trace = hot_trace(args.bench_dir, args.requests, args.keys)
    else:
        trace = run_redis.single_trace(args.bench_dir, args.requests)
    with open(trace) as f:
        unique = len(set(json.load(f)))
    with run_redis.redis_server(args.url) as port:
        kind = f"uniform over {args.keys} keys" if args.keys else "zipf"
        print(f"trace: {args.requests} requests ({kind}), {unique} unique keys, 0.1 s per load; "
              f"{args.processes} processes x {args.workers} workers; redis-server on port {port}")
        rows, figures = [], {}
        for n in names:
            res = run_one(n, args, port, trace)
            label = CONTENDERS[n][2]
            if n == "ours-lease":
                label += f" {args.lease:g} s"
            rows.append((label, res))
            print(f"{label}: {json.dumps(res)}", file=sys.stderr)
            figures[n] = dict(res, label=label)
        table(rows, unique, args)
    if args.json:
        results.write(args.json, "fleet", {"requests": args.requests, "keys": args.keys,
                                           "unique_keys": unique,
                                           "processes": args.processes, "workers": args.workers,
                                           "contenders": figures})


if __name__ == "__main__":
    main()
