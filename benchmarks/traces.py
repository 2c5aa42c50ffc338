"""Deterministic access traces for the hit-ratio benchmark.

Each trace is a flat file of native uint32 key ids (``array("I")``), written once
under ``.bench/traces/`` and read back by every contender, so all caches see
byte-identical request streams.  Nothing here needs numpy: the Zipf sampler is
an inverse-CDF lookup (``bisect``) driven by a seeded ``random.Random``.

Traces
------
* ``zipf``       1,000,000 requests, Zipf(s=1.001) over 100,000 keys.
* ``zipf+scan``  the zipf trace with, after every 10,000 zipf requests, a
                 sequential scan of 5,000 never-seen-before keys
                 (1,500,000 requests in total; scan keys never repeat).
* ``loop``       a sequential loop over 1.2 x cache-size keys, repeated to
                 1,000,000 requests (12,000 keys for size 10k, 1,200 for 1k).
                 LRU gets 0% here; the offline optimum gets ~83%.

Run ``python benchmarks/traces.py`` to (re)generate and summarize them.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import random
import sys
from array import array
from itertools import accumulate
from pathlib import Path
from typing import Dict, List, Tuple

# bump when the generation algorithm changes: old files are then ignored
TRACE_FORMAT = 1

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = Path(os.environ.get("BENCH_DIR", ROOT / ".bench")) / "traces"

ZIPF_S = 1.001
ZIPF_KEYS = 100_000
ZIPF_REQUESTS = 1_000_000
ZIPF_SEED = 20240601
SCAN_EVERY = 10_000
SCAN_LEN = 5_000
SCAN_BASE = 10_000_000  # scan key ids start here: disjoint from zipf ids
LOOP_REQUESTS = 1_000_000
LOOP_FACTOR = 1.2
LOOP_BASE = 20_000_000  # loop key ids start here

assert array("I").itemsize == 4, "need a 4-byte unsigned int array type"


def zipf_ids(
    n_requests: int = ZIPF_REQUESTS,
    n_keys: int = ZIPF_KEYS,
    s: float = ZIPF_S,
    seed: int = ZIPF_SEED,
) -> array:
    """Zipf(s) over n_keys: rank r (1-based) has weight 1/r**s.

    Ranks are mapped to key ids through a seeded permutation, so the hottest
    keys are not simply ids 0, 1, 2, ...
    """
    rng = random.Random(seed)
    cdf = list(accumulate(1.0 / (r**s) for r in range(1, n_keys + 1)))
    total = cdf[-1]
    cdf = [c / total for c in cdf]
    cdf[-1] = 1.0
    perm = list(range(n_keys))
    rng.shuffle(perm)
    rnd = rng.random
    bis = bisect.bisect_right
    last = n_keys - 1
    out = array("I", bytes(4 * n_requests))
    for i in range(n_requests):
        r = bis(cdf, rnd())
        out[i] = perm[r if r <= last else last]
    return out


def zipf_scan_ids(zipf: array) -> array:
    out = array("I")
    next_scan = SCAN_BASE
    for start in range(0, len(zipf), SCAN_EVERY):
        out.extend(zipf[start : start + SCAN_EVERY])
        out.extend(range(next_scan, next_scan + SCAN_LEN))
        next_scan += SCAN_LEN
    return out


def loop_ids(n_keys: int, n_requests: int = LOOP_REQUESTS) -> array:
    one = array("I", range(LOOP_BASE, LOOP_BASE + n_keys))
    reps, rest = divmod(n_requests, n_keys)
    out = one * reps
    out.extend(one[:rest])
    return out


def _write(path: Path, data: array, meta: Dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        data.tofile(f)
    meta = dict(meta, requests=len(data), unique=len(set(data)),
                sha256=hashlib.sha256(data.tobytes()).hexdigest(), format=TRACE_FORMAT)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, path)


def load(path: Path | str) -> array:
    a = array("I")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    return a


def trace_meta(path: Path | str) -> Dict:
    return json.loads(Path(path).with_suffix(".json").read_text())


def ensure_traces(sizes: List[int], directory: Path = DEFAULT_DIR,
                  log=lambda m: print(m, file=sys.stderr)) -> List[Tuple[str, int, Path]]:
    """Generate missing trace files; return [(trace_name, cache_size, path)].

    zipf and zipf+scan are shared by all sizes; loop depends on the size.
    """
    d = Path(directory)
    zipf_p = d / f"zipf-s{ZIPF_S}-k{ZIPF_KEYS}-n{ZIPF_REQUESTS}-seed{ZIPF_SEED}-v{TRACE_FORMAT}.u32"
    scan_p = d / (f"zipfscan-s{ZIPF_S}-k{ZIPF_KEYS}-n{ZIPF_REQUESTS}-seed{ZIPF_SEED}"
                  f"-every{SCAN_EVERY}-scan{SCAN_LEN}-v{TRACE_FORMAT}.u32")
    zipf = None
    if not zipf_p.exists():
        log(f"traces: generating {zipf_p.name} ...")
        zipf = zipf_ids()
        _write(zipf_p, zipf, {"trace": "zipf", "s": ZIPF_S, "keys": ZIPF_KEYS, "seed": ZIPF_SEED})
    if not scan_p.exists():
        log(f"traces: generating {scan_p.name} ...")
        if zipf is None:
            zipf = load(zipf_p)
        _write(scan_p, zipf_scan_ids(zipf),
               {"trace": "zipf+scan", "every": SCAN_EVERY, "scan": SCAN_LEN, "base": zipf_p.name})
    out: List[Tuple[str, int, Path]] = []
    for size in sizes:
        out.append(("zipf", size, zipf_p))
    for size in sizes:
        out.append(("zipf+scan", size, scan_p))
    for size in sizes:
        n_keys = int(round(size * LOOP_FACTOR))
        loop_p = d / f"loop-k{n_keys}-n{LOOP_REQUESTS}-v{TRACE_FORMAT}.u32"
        if not loop_p.exists():
            log(f"traces: generating {loop_p.name} ...")
            _write(loop_p, loop_ids(n_keys), {"trace": "loop", "keys": n_keys})
        out.append((f"loop({n_keys})", size, loop_p))
    return out


def belady_hits(trace: array, size: int) -> int:
    """Offline optimum (Belady/MIN with bypass) hit count for a cache of `size`.

    On a miss the new key is admitted only if it is re-used sooner than the
    cached key with the farthest next use (which is then evicted); a key that
    is never requested again is never admitted.  Lazy-deletion max-heap.
    """
    import heapq

    n = len(trace)
    never = n + 1
    nxt = [0] * n
    last: Dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        k = trace[i]
        nxt[i] = last.get(k, never)
        last[k] = i
    del last
    cache: Dict[int, int] = {}  # key -> its next use
    heap: List[Tuple[int, int]] = []  # (-next_use, key), stale entries skipped
    push, pop, replace = heapq.heappush, heapq.heappop, heapq.heapreplace
    hits = 0
    for i in range(n):
        k = trace[i]
        nu = nxt[i]
        if k in cache:
            hits += 1
            if nu == never:
                del cache[k]  # never used again: free the slot
            else:
                cache[k] = nu
                push(heap, (-nu, k))
            continue
        if nu == never:
            continue
        if len(cache) < size:
            cache[k] = nu
            push(heap, (-nu, k))
            continue
        # find the live entry with the farthest next use
        while True:
            far, fk = heap[0]
            if cache.get(fk) == -far:
                break
            pop(heap)
        if -far > nu:
            del cache[fk]
            cache[k] = nu
            replace(heap, (-nu, k))
    return hits


if __name__ == "__main__":
    import time

    for name, size, path in ensure_traces([1_000, 10_000]):
        m = trace_meta(path)
        t = time.perf_counter()
        tr = load(path)
        h = belady_hits(tr, size)
        print(f"{name:14s} size={size:6d} requests={m['requests']:8d} unique={m['unique']:8d} "
              f"belady={h / len(tr):.4f} ({time.perf_counter() - t:.1f}s)  {path.name}")
