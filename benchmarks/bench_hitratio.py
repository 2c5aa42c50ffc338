"""Hit ratio of ONE contender on trace files (run by benchmarks/run_hitratio.py).

    python bench_hitratio.py --impl ours-tlfu   --job TRACE.u32:SIZE [--job ...]
    python bench_hitratio.py --impl theine-tlfu --job TRACE.u32:SIZE
    python bench_hitratio.py --impl ours-tlfu   --memory 10000,100000

Access pattern per request (keys are str(key_id)):  if get(key) misses: set(key, value)
Hit ratio = hits / requests over the whole trace (no warm-up excluded).
Prints one JSON line per job on stdout.  Only the standard library is needed
besides the cache under test:

  ours-tlfu / ours-lru   cacheme._core.LocalStore("tlfu"|"lru", size)
                         .get(key, default) -> default on miss (the miss is recorded)
                         .set(key, value, ttl=None); len(); .memory() -> C bytes
  theine-tlfu            theine.Cache: 2.x is Cache(size) (always W-TinyLFU) with
                         get(key) -> (value, found); 0.x is Cache("tlfu", size)
                         with get(key, default)
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import random
import sys
import time
from array import array

MISS = object()


def load_trace(path):
    a = array("I")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    return a


def run_ours(policy, keys, size):
    from cacheme._core import LocalStore

    s = LocalStore(policy, size)
    get, set_ = s.get, s.set
    hits = 0
    t = time.perf_counter()
    for k in keys:
        if get(k, MISS) is MISS:
            set_(k, 1)
        else:
            hits += 1
    dt = time.perf_counter() - t
    extra = {"len": len(s)}
    try:
        extra["memory"] = s.memory()
    except Exception as e:
        extra["memory_error"] = repr(e)
    return hits, dt, extra


def run_theine(keys, size):
    import theine

    params = inspect.signature(theine.Cache.__init__).parameters
    c = theine.Cache("tlfu", size) if "policy" in params else theine.Cache(size)
    get, set_ = c.get, c.set
    hits = 0
    t = time.perf_counter()
    if "default" in inspect.signature(c.get).parameters:  # theine 0.x: get(key, default)
        for k in keys:
            if get(k, MISS) is MISS:
                set_(k, 1)
            else:
                hits += 1
    else:  # theine 2.x: get(key) -> (value, found)
        for k in keys:
            if get(k)[1]:
                hits += 1
            else:
                set_(k, 1)
    dt = time.perf_counter() - t
    try:
        c._force_drain_write()
    except Exception:
        pass
    return hits, dt, {"len": len(c)}


def version_of(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "src"


def memory(policy, sizes):
    from cacheme._core import LocalStore

    out = []
    for n in sizes:
        s = LocalStore(policy, n)
        for i in range(n):
            s.set(f"mem:{i}", i)
        m, ln = s.memory(), len(s)
        out.append({"impl": f"ours-{policy}", "mode": "memory", "size": n, "len": ln,
                    "memory": m, "per_entry": (m / ln) if ln else None})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", required=True, choices=["ours-tlfu", "ours-lru", "theine-tlfu"])
    ap.add_argument("--job", action="append", default=[], help="TRACE_FILE:CACHE_SIZE (repeatable)")
    ap.add_argument("--memory", help="comma-separated store sizes to fill with distinct keys")
    args = ap.parse_args()
    random.seed(0)  # theine's read buffer picks stripes with getrandbits

    if args.memory:
        for rec in memory(args.impl.split("-", 1)[1], [int(x) for x in args.memory.split(",")]):
            print(json.dumps(rec), flush=True)
        return

    ver = version_of("theine" if args.impl.startswith("theine") else "cacheme")
    cur_path, keys = None, None
    for job in args.job:
        path, size = job.rsplit(":", 1)
        size = int(size)
        if path != cur_path:
            keys = [str(k) for k in load_trace(path)]
            cur_path = path
        if args.impl == "theine-tlfu":
            hits, dt, extra = run_theine(keys, size)
        else:
            hits, dt, extra = run_ours(args.impl.split("-", 1)[1], keys, size)
        rec = {"impl": args.impl, "version": ver, "trace": path, "size": size, "requests": len(keys),
               "hits": hits, "hit_ratio": hits / len(keys), "seconds": dt,
               "python": platform.python_version()}
        rec.update(extra)
        if rec.get("len", 0) > size:
            print(f"bench_hitratio: WARNING {args.impl} holds {rec['len']} entries > size {size}",
                  file=sys.stderr)
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
