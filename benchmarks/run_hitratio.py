"""Driver for the hit-ratio benchmark.

1. generates the traces once into .bench/traces/ (benchmarks/traces.py),
2. computes the offline optimum (Belady with bypass, pure Python; cached in
   .bench/traces/belady.json),
3. runs each contender in its own interpreter over the very same trace files:
      ours-tlfu, ours-lru   .venv/bin/python   cacheme._core.LocalStore
      theine-tlfu           .bench/venv-peers  theine 2.x Cache (W-TinyLFU)
4. prints a markdown table (trace x size) and ours' C memory per entry.

Hit ratios are deterministic, so one run is enough (no rounds).  Standard
library only; a missing contender is skipped with a message.

    python3 benchmarks/run_hitratio.py
    python3 benchmarks/run_hitratio.py --sizes 1000,10000 --ours-python .venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import traces  # noqa: E402
import results as results_json  # noqa: E402

BENCH = Path(os.environ.get("BENCH_DIR", ROOT / ".bench"))
SCRIPT = HERE / "bench_hitratio.py"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def child_env(pythonpath=None):
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONDEVMODE", "PYTHONMALLOC"):
        env.pop(k, None)
    env["PYTHONHASHSEED"] = "0"
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def probe(python: Path, code: str, pythonpath=None):
    if not Path(python).exists():
        return f"{python} does not exist"
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                       env=child_env(pythonpath), cwd=str(HERE))
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"`{python} -c {code!r}` failed: {last}"
    return None


def run_child(python, args, pythonpath=None):
    cmd = [str(python), str(SCRIPT)] + args
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(pythonpath), cwd=str(ROOT))
    if r.stderr.strip():
        log(r.stderr.rstrip())
    if r.returncode != 0:
        log(f"run_hitratio: FAILED ({r.returncode}): {' '.join(cmd)}")
        return None
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def belady_all(jobs):
    cache_file = jobs[0][2].parent / "belady.json"
    try:
        cached = json.loads(cache_file.read_text())
    except Exception:
        cached = {}
    out = {}
    for name, size, path in jobs:
        sha = traces.trace_meta(path)["sha256"]
        key = f"{path.name}:{sha}:{size}"
        if key not in cached:
            t = time.perf_counter()
            tr = traces.load(path)
            cached[key] = {"hits": traces.belady_hits(tr, size), "requests": len(tr)}
            log(f"run_hitratio: belady {name} size={size}: {cached[key]['hits'] / len(tr):.4f} "
                f"({time.perf_counter() - t:.1f}s)")
            cache_file.write_text(json.dumps(cached, indent=1) + "\n")
        out[(path.name, size)] = cached[key]["hits"] / cached[key]["requests"]
    return out


def pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}%"


def med(vals):
    return None if not vals else statistics.median(vals)


def pct_runs(vals):
    if not vals:
        return "n/a"
    lo, hi = min(vals), max(vals)
    txt = pct(statistics.median(vals))
    if hi - lo > 5e-7:
        txt += f" ({100 * lo:.2f}–{100 * hi:.2f})"
    return txt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--memory-sizes", default="10000,100000")
    ap.add_argument("--ours-python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--ours-src", default=None,
                    help="put this dir on PYTHONPATH for ours only (an in-place build not installed in the venv)")
    ap.add_argument("--venv-peers", default=str(BENCH / "venv-peers"))
    ap.add_argument("--trace-dir", default=str(BENCH / "traces"))
    ap.add_argument("--no-belady", action="store_true")
    ap.add_argument("--json", metavar="OUT",
                    help="also write {'rows': [{trace, size, ours-tlfu, theine-tlfu, ours-lru, belady}]} "
                         "(hit ratios as fractions, medians)")
    ap.add_argument("--runs", type=int, default=3, help="runs per contender (median shown, range if it varies)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    jobs = traces.ensure_traces(sizes, Path(os.path.abspath(args.trace_dir)), log=log)
    opt = {} if args.no_belady else belady_all(jobs)

    # abspath, not resolve(): a venv python is a symlink that must stay unresolved
    ours_py = Path(os.path.abspath(args.ours_python))
    peers_py = Path(os.path.abspath(args.venv_peers)) / "bin" / "python"
    ours_pp = os.path.abspath(args.ours_src) if args.ours_src else None
    contenders = [
        ("ours-tlfu", ours_py, "from cacheme._core import LocalStore"),
        ("theine-tlfu", peers_py, "import theine"),
        ("ours-lru", ours_py, "from cacheme._core import LocalStore"),
    ]
    job_args = []
    for _, size, path in jobs:
        job_args += ["--job", f"{path}:{size}"]
    # sort jobs by trace path so each child loads each trace once
    pairs = sorted(zip(job_args[1::2], range(len(jobs))))
    job_args = [x for p, _ in pairs for x in ("--job", p)]

    results = {}  # (impl, trace file name, size) -> [ratio per run]
    versions = {}
    notes = []
    available = []
    for impl, py, check in contenders:
        pp = ours_pp if impl.startswith("ours") else None
        why = probe(py, check, pp)
        if why and impl.startswith("ours") and not pp and not probe(py, check, str(ROOT)):
            why += (f" -- but it imports from the source tree: the build is in place, not installed;"
                    f" use --ours-src {ROOT} (or install it into the venv)")
        if why:
            log(f"run_hitratio: SKIPPING {impl}: {why}")
            notes.append(f"- skipped {impl}: {why}")
        else:
            available.append((impl, py, pp))
    # several runs, interleaved: theine's policy is not deterministic run to run
    for run in range(args.runs):
        for impl, py, pp in available:
            t = time.perf_counter()
            recs = run_child(py, ["--impl", impl] + job_args, pp)
            if recs is None:
                notes.append(f"- {impl}: run {run + 1} failed, see stderr")
                continue
            for r in recs:
                results.setdefault((impl, Path(r["trace"]).name, r["size"]), []).append(r["hit_ratio"])
                versions[impl] = r.get("version", "?")
                if r.get("len", 0) > r["size"]:
                    notes.append(f"- WARNING {impl} held {r['len']} > {r['size']} entries on "
                                 f"{Path(r['trace']).name}")
            log(f"run_hitratio: run {run + 1}/{args.runs} {impl} done in {time.perf_counter() - t:.1f}s")

    lines = [f"### Hit ratio — hits / requests over the whole trace, same trace files for all; "
             f"median of {args.runs} runs (min–max shown when runs differ)\n",
             "| trace | size | ours-tlfu | theine-tlfu | ours-lru | belady (opt) | ours-tlfu < theine-tlfu? |",
             "|---|---:|---:|---:|---:|---:|:---|"]
    for name, size, path in jobs:
        ot_runs = results.get(("ours-tlfu", path.name, size))
        th_runs = results.get(("theine-tlfu", path.name, size))
        ol_runs = results.get(("ours-lru", path.name, size))
        ot, th = med(ot_runs), med(th_runs)
        bd = opt.get((path.name, size))
        if ot is None or th is None:
            flag = "n/a"
        elif ot < th:
            flag = f"**YES** ({100 * (ot - th):+.2f} pp)"
        else:
            flag = f"no ({100 * (ot - th):+.2f} pp)"
        lines.append(f"| {name} | {size:,} | {pct_runs(ot_runs)} | {pct_runs(th_runs)} | {pct_runs(ol_runs)} "
                     f"| {pct(bd)} | {flag} |")
    print("\n".join(lines))
    if args.json:
        rows = [{"trace": name, "size": size,
                 **{impl: med(results.get((impl, path.name, size)))
                    for impl in ("ours-tlfu", "theine-tlfu", "ours-lru")},
                 "belady": opt.get((path.name, size))}
                for name, size, path in jobs]
        results_json.write(args.json, "hitratio", {"runs": args.runs, "versions": versions, "rows": rows})
    if versions:
        print("\nversions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    # C memory per entry
    mem_lines = []
    for policy in ("tlfu", "lru"):
        impl = f"ours-{policy}"
        if probe(ours_py, "from cacheme._core import LocalStore", ours_pp):
            break
        recs = run_child(ours_py, ["--impl", impl, "--memory", args.memory_sizes], ours_pp)
        for r in recs or []:
            pe = r.get("per_entry")
            ok = "n/a" if pe is None else ("yes" if pe <= 64 else "**NO**")
            mem_lines.append(f"| {impl} | {r['size']:,} | {r['len']:,} | {r['memory']:,} | "
                             f"{'n/a' if pe is None else f'{pe:.1f}'} | {ok} |")
    if mem_lines:
        print("\n### Ours: C memory per entry (store filled with `size` distinct keys; s.memory() / len(s))\n")
        print("| store | size | len | memory() bytes | bytes/entry | ≤ 64 |")
        print("|---|---:|---:|---:|---:|:---:|")
        print("\n".join(mem_lines))
    else:
        notes.append("- memory per entry: skipped (ours not available)")
    if ours_pp:
        notes.append(f"- ours ran with PYTHONPATH={ours_pp} (--ours-src)")
    if notes:
        print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
