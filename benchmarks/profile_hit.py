"""Run one loop of the local hit path long enough to profile it with perf.

The loops are those of benchmarks/bench_local.py (same nodes, same storages,
1000 keys). Run it under `perf stat` / `perf record` in the interpreter whose
cacheme you want to look at:

    perf stat -e cycles,instructions,branch-misses,L1-dcache-load-misses \\
        .venv/bin/python benchmarks/profile_hit.py tlfu -n 5000000
    perf record -g .venv/bin/python benchmarks/profile_hit.py tlfu -n 5000000

Modes: tlfu, lru (await cacheme.get on a hit), baseline (build the node and
call key()), none (set-up only); cputime prints the three loops' CPU time per
iteration (thread time, best of 7, interleaved), for A/B runs on a loaded
machine. The cost of one hit is the difference of two
runs divided by the difference of their n, or the difference of two modes at
the same n (get - baseline: the framework's cost); `--compare` does that with
perf stat itself and prints per-iteration figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

EVENTS = ["cycles", "instructions", "branches", "branch-misses", "L1-dcache-loads",
          "L1-dcache-load-misses", "L1-icache-load-misses", "iTLB-load-misses",
          "cache-misses"]


async def run(mode: str, n: int) -> None:
    import cacheme

    import bench_local as bl

    await bl.register_storages(cacheme)
    tlfu, lru, _ = bl.cacheme_nodes(cacheme)
    for i in range(bl.KEYS):
        await cacheme.get(tlfu(uid=i))
        await cacheme.get(lru(uid=i))
    await bl.t_get(cacheme.get, tlfu, 10_000)
    await bl.t_get(cacheme.get, lru, 10_000)
    if mode == "tlfu":
        await bl.t_get(cacheme.get, tlfu, n)
    elif mode == "lru":
        await bl.t_get(cacheme.get, lru, n)
    elif mode == "baseline":
        await bl.t_baseline(tlfu, n)
    elif mode == "cputime":
        await cputime(bl, cacheme, tlfu, lru, n)


async def cputime(bl, cacheme, tlfu, lru, n: int) -> None:
    """The loops of bench_local.py timed in this thread's CPU time, not wall
    time: on a loaded machine a preempted loop counts no time. Interleaved,
    best of 7; prints one JSON line."""
    import gc
    import json
    from time import thread_time_ns

    async def timed(coro_fn, *a):
        t0 = thread_time_ns()
        await coro_fn(*a)
        return (thread_time_ns() - t0) / n

    best = {"tlfu": [], "lru": [], "baseline": []}
    for _ in range(7):
        gc.collect()
        best["tlfu"].append(await timed(bl.t_get, cacheme.get, tlfu, n))
        gc.collect()
        best["baseline"].append(await timed(bl.t_baseline, tlfu, n))
        gc.collect()
        best["lru"].append(await timed(bl.t_get, cacheme.get, lru, n))
    out = {k: min(v) for k, v in best.items()}
    out["framework_tlfu"] = out["tlfu"] - out["baseline"]
    out["framework_lru"] = out["lru"] - out["baseline"]
    print(json.dumps(out))


def perf_stat(python: str, mode: str, n: int, events: list[str]) -> dict[str, float]:
    cmd = ["perf", "stat", "-x", ",", "-e", ",".join(events), python, __file__, mode, "-n", str(n)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"perf stat failed:\n{r.stderr}")
    out = {}
    for line in r.stderr.splitlines():
        f = line.split(",")
        if len(f) > 3 and re.match(r"^[\d.]+$", f[0]):
            out[f[2]] = float(f[0])
    return out


def compare(args) -> None:
    """Per-iteration counts: (mode at n2 - mode at n1) / (n2 - n1), median of --reps."""
    import statistics

    modes = args.modes.split(",")
    rows = {}
    # two event groups so that each is counted without multiplexing
    groups = [EVENTS[:5], EVENTS[5:]]
    for mode in modes:
        per = {}
        for group in groups:
            samples = {e: [] for e in group}
            for _ in range(args.reps):
                a = perf_stat(args.python, mode, args.n1, group)
                b = perf_stat(args.python, mode, args.n2, group)
                for e in group:
                    if e in a and e in b:
                        samples[e].append((b[e] - a[e]) / (args.n2 - args.n1))
            for e, v in samples.items():
                if v:
                    per[e] = statistics.median(v)
        rows[mode] = per
    if "baseline" in rows:
        for mode in modes:
            if mode != "baseline":
                rows[f"{mode} - baseline"] = {e: rows[mode].get(e, 0) - rows["baseline"].get(e, 0)
                                              for e in rows[mode]}
    print(f"per iteration, median of {args.reps} pairs (n={args.n1:,} and {args.n2:,}); "
          f"python {args.python}")
    print("| loop | " + " | ".join(EVENTS) + " | IPC |")
    print("|---|" + "---:|" * (len(EVENTS) + 1))
    for mode, per in rows.items():
        ipc = per.get("instructions", 0) / per["cycles"] if per.get("cycles") else 0
        print(f"| {mode} | " + " | ".join(f"{per.get(e, float('nan')):,.1f}" for e in EVENTS)
              + f" | {ipc:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["tlfu", "lru", "baseline", "none", "compare", "cputime"])
    ap.add_argument("-n", type=int, default=2_000_000)
    ap.add_argument("--python", default=sys.executable, help="(compare) interpreter to profile")
    ap.add_argument("--modes", default="baseline,tlfu,lru", help="(compare) loops to count")
    ap.add_argument("--n1", type=int, default=200_000)
    ap.add_argument("--n2", type=int, default=2_200_000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.mode == "compare":
        compare(args)
    else:
        asyncio.run(run(args.mode, args.n))


if __name__ == "__main__":
    main()
