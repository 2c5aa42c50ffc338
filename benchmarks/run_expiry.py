#!/usr/bin/env python3
"""Expiry benchmark driver (issue 25; standard library only): hot keys under
load as their values expire. W workers get K hot keys for D seconds; values
live TTL seconds and cost a 0.1 s load. Per row: p50/p99/max latency of a
get, loads, and the gets that waited for a load after warm-up (instrumented,
see benchmarks/expiry_hot.py), for each of our freshness options and for
cashews' `early` and `soft`, each in its own process (and venv), one after
the other, on the same storage kind:

    local   ours: local://tlfu            cashews: mem://
    chain   ours: [local://tlfu, redis]   cashews: redis://...?client_side=true
            (a memory copy in front of Redis, kept by client tracking)

The chain rows share one redis-server started for the run (FLUSHALL between
rows). Rows of our options not in this build say "not built" (each row
probes its option first: today's build ignores unknown Meta attributes).

    python3 benchmarks/run_expiry.py                       # everything, 20 s a row
    python3 benchmarks/run_expiry.py --duration 5 --storages local --rows ours-plain,cashews-early
"""
import os
import sys

import results  # benchmarks/ is sys.path[0]
import run_redis

ROOT = run_redis.ROOT
HERE = run_redis.HERE

# row -> (venv under the bench dir or None for ours, source fails?, label)
ROWS = {
    # the reference of issue 25's goal: the same workers on keys that never expire
    "ours-hit": (None, False, "ours, hit path (no TTL: never expires)"),
    "ours-plain": (None, False, "ours, plain TTL"),
    "ours-jitter": (None, False, "ours, ttl_jitter={jitter:g}"),
    "ours-refresh-after": (None, False, "ours, refresh_after={refresh_after:g} s"),
    "ours-early-refresh": (None, False, "ours, early_refresh={beta:g}"),
    "cashews-plain": ("venv-redis-cashews", False, "cashews, plain TTL"),
    "cashews-early": ("venv-redis-cashews", False, "cashews early, early_ttl={refresh_after:g} s"),
    "ours-plain-failing": (None, True, "ours, plain TTL; source with outages"),
    "ours-stale-if-error": (None, True, "ours, stale_if_error={stale:g} s; source with outages"),
    "cashews-soft": ("venv-redis-cashews", True,
                     "cashews soft, soft_ttl={ttl:g} s, ttl={ttl:g}+{stale:g} s; source with outages"),
}


def run_row(row: str, storage: str, args, port) -> dict:
    venv, failing, _ = ROWS[row]
    py, env = run_redis.contender_python(args, venv)
    if py is None:
        return run_redis.no_venv(args, venv)
    argv = [py, os.path.join(HERE, "expiry_hot.py"), row.replace("-failing", ""),
            "--storage", storage]
    if storage == "chain":
        run_redis.resp(port, "FLUSHALL")
        argv += ["--url", f"redis://127.0.0.1:{port}"]
    if failing:
        argv.append("--failing")
    for opt in ("duration", "workers", "keys", "ttl", "load", "interval", "outage", "period",
                "jitter", "refresh_after", "beta", "stale", "slow_ms"):
        argv += ["--" + opt.replace("_", "-"), str(getattr(args, opt))]
    return run_redis.run_json(argv, env, args.duration + args.timeout)


def cells(res: dict) -> list:
    ms = [f"{res[k] * 1000:.1f} µs" if res[k] < 1 else f"{res[k]:.1f} ms"
          for k in ("p50_ms", "p99_ms", "max_ms")]
    return [str(res["gets"]), *ms, f"{res['loads']} ({res['failed_loads']})",
            str(res["waited"]), str(res["slow"]), str(res["errors"])]


def table(storage: str, rows) -> None:
    print(f"\n#### {storage}\n")
    run_redis.markdown_table(("gets", "p50", "p99", "max", "loads (failed)", "waited for a load",
                              "> 50 ms", "errors"), rows, cells)


def main() -> None:
    ap = run_redis.driver_parser(__doc__)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--storages", default="local,chain")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of each row")
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--keys", type=int, default=8, help="hot keys, each get picks one at random")
    ap.add_argument("--ttl", type=float, default=1.0)
    ap.add_argument("--load", type=float, default=0.1, help="seconds of a load")
    ap.add_argument("--interval", type=float, default=0.1,
                    help="mean pause of a worker between gets (uniform 0..2x)")
    ap.add_argument("--outage", type=float, default=2.0,
                    help="failing rows: the source is down this long in every --period")
    ap.add_argument("--period", type=float, default=5.0)
    ap.add_argument("--jitter", type=float, default=0.1, help="ours-jitter: Cache(ttl_jitter=)")
    ap.add_argument("--refresh-after", type=float, default=0.5,
                    help="ours: Meta.refresh_after; cashews early: early_ttl (seconds)")
    ap.add_argument("--beta", type=float, default=1.0, help="ours: Meta.early_refresh")
    ap.add_argument("--stale", type=float, default=5.0,
                    help="ours: Meta.stale_if_error; cashews soft: kept this long past soft_ttl")
    ap.add_argument("--slow-ms", type=float, default=50.0)
    ap.add_argument("--timeout", type=float, default=120, help="seconds a row may take past --duration")
    ap.add_argument("--json", metavar="OUT", help="also write {storage: {row: {label, figures...}}}")
    args = run_redis.parse_driver_args(ap)
    names = run_redis.pick(args.rows, ROWS, "row")
    storages = run_redis.pick(args.storages, ("local", "chain"), "storage")
    print(f"{args.workers} workers, {args.keys} hot keys, ttl {args.ttl:g} s, {args.load:g} s loads, "
          f"{args.duration:g} s a row, a worker pauses 0..{2 * args.interval:g} s between gets; "
          f"outages: the source is down the last {args.outage:g} s of every {args.period:g} s")
    figures = {"params": {k: getattr(args, k) for k in (
        "duration", "workers", "keys", "ttl", "load", "interval", "outage", "period", "jitter",
        "refresh_after", "beta", "stale", "slow_ms")}}
    with run_redis.redis_server(args.url) if "chain" in storages else _no_server() as port:
        for storage in storages:
            rows, figures[storage] = [], {}
            for n in names:
                res = run_row(n, storage, args, port)
                label = ROWS[n][2].format(**vars(args))
                print(f"{storage} {label}: {res}", file=sys.stderr)
                rows.append((label, res))
                figures[storage][n] = dict(res, label=label)
            table(storage, rows)
    if args.json:
        results.write(args.json, "expiry", figures)


class _no_server:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
