"""Driver for the local hit-path benchmark (benchmarks/bench_local.py).

Runs every contender in its own virtualenv, one process per contender per
round, interleaved (the order rotates each round), and prints a markdown table
of medians plus the goal ratios.  Needs only the standard library.

    python3 benchmarks/run_local.py                # 5 rounds
    python3 benchmarks/run_local.py --rounds 9 -n 300000
    python3 benchmarks/run_local.py --ours-python /path/to/python   # other build

Contenders (a missing one is skipped with a message):
    ours          .venv/bin/python           (needs `import cacheme._core`)
    cacheme-0.3.0 .bench/venv-030/bin/python
    theine-2      .bench/venv-peers/bin/python   (theine 2.x bare get)
    theine-0.3    .bench/venv-030/bin/python     (theine 0.3.x, what 0.3.0 uses; info only)
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
import results  # noqa: E402  (benchmarks/ is sys.path[0])

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH = Path(os.environ.get("BENCH_DIR", ROOT / ".bench"))
SCRIPT = HERE / "bench_local.py"


def child_env(pythonpath=None):
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONDEVMODE", "PYTHONMALLOC"):
        env.pop(k, None)
    env["PYTHONHASHSEED"] = "0"
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def probe(python: Path, code: str, pythonpath=None) -> str | None:
    """None if `code` runs fine in `python`, else a short reason."""
    if not Path(python).exists():
        return f"{python} does not exist"
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                       env=child_env(pythonpath), cwd=str(HERE))
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"`{python} -c {code!r}` failed: {last}"
    return None


def run_one(python, extra, args, pythonpath=None):
    cmd = [str(python), str(SCRIPT), "-n", str(args.n), "--miss-n", str(args.miss_n),
           "--repeat", str(args.repeat)] + extra
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(pythonpath), cwd=str(ROOT))
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    if r.stderr.strip():
        print(r.stderr.rstrip(), file=sys.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def cell(samples, key):
    vals = [s[key] for s in samples if key in s]
    if not vals:
        return None, ""
    med = statistics.median(vals)
    return med, f"{med:,.0f} ({min(vals):,.0f}–{max(vals):,.0f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=200_000, help="ops per hit measurement")
    ap.add_argument("--miss-n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3, help="in-process repeats per round (min kept)")
    ap.add_argument("--ours-python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--ours-src", default=None,
                    help="put this dir on PYTHONPATH for ours only (an in-place build not installed in the venv)")
    ap.add_argument("--venv-030", default=str(BENCH / "venv-030"))
    ap.add_argument("--venv-peers", default=str(BENCH / "venv-peers"))
    ap.add_argument("--json", metavar="OUT",
                    help="also write the medians as JSON: {'ns': {contender: {measurement: ns}}}")
    ap.add_argument("--no-ours-check", action="store_true",
                    help="don't require cacheme._core in the ours interpreter (testing the driver)")
    args = ap.parse_args()

    py030 = Path(os.path.abspath(args.venv_030)) / "bin" / "python"
    pypeers = Path(os.path.abspath(args.venv_peers)) / "bin" / "python"
    ours_check = "import cacheme" if args.no_ours_check else "import cacheme._core"
    ours_pp = os.path.abspath(args.ours_src) if args.ours_src else None
    candidates = [
        ("ours", Path(os.path.abspath(args.ours_python)), ["--impl", "cacheme"], ours_check),
        ("cacheme-0.3.0", py030, ["--impl", "cacheme"],
         "import importlib.metadata as m; assert m.version('cacheme') == '0.3.0'"),
        ("theine-2", pypeers, ["--impl", "theine"], "import theine"),
        ("theine-0.3", py030, ["--impl", "theine"], "import theine"),
    ]
    contenders = []
    skipped = {}
    for name, py, extra, check in candidates:
        pp = ours_pp if name == "ours" else None
        why = probe(py, check, pp)
        if why and name == "ours" and not pp and not probe(py, ours_check, str(ROOT)):
            why += (f" -- but it imports from the source tree: the build is in place, not installed;"
                    f" use --ours-src {ROOT} (or install it into the venv)")
        if why:
            skipped[name] = why
            print(f"run_local: SKIPPING {name}: {why}", file=sys.stderr)
            if name == "ours":
                print("run_local:   (build it with `make venv` in the repo root)", file=sys.stderr)
            elif name != "ours":
                print("run_local:   (create peer venvs with `bash benchmarks/venvs.sh`)", file=sys.stderr)
        else:
            contenders.append((name, py, extra, pp))
    if not contenders:
        sys.exit("run_local: no contender available")

    samples = {c[0]: [] for c in contenders}
    t_start = time.time()
    for rnd in range(args.rounds):
        if not contenders:
            break
        k = rnd % len(contenders)
        order = contenders[k:] + contenders[:k]
        for name, py, extra, pp in order:
            try:
                samples[name].append(run_one(py, extra, args, pp))
            except Exception as e:  # a broken contender must not hide the others
                print(f"run_local: {name} FAILED, dropping it: {e}", file=sys.stderr)
                skipped[name] = f"failed in round {rnd + 1} (see stderr)"
                contenders = [c for c in contenders if c[0] != name]
        print(f"run_local: round {rnd + 1}/{args.rounds} done ({time.time() - t_start:.0f}s, "
              f"order: {', '.join(c[0] for c in order)})", file=sys.stderr)

    names = [n for n in samples if samples[n]]
    if not names:
        sys.exit("run_local: every contender failed")
    med = {n: {} for n in names}
    rows = [
        ("get hit, local://tlfu", "get_tlfu"),
        ("get hit, local://lru", "get_lru"),
        ("baseline: build node + key()", "baseline"),
        ("framework cost tlfu (get − baseline)", "framework_tlfu"),
        ("framework cost lru (get − baseline)", "framework_lru"),
        ("miss + load + fill (tlfu, 10**6)", "miss_load"),
        ("theine bare get (default)", "theine_get"),
        ("theine bare get (nolock=True)", "theine_get_nolock"),
    ]
    out = []
    vers = {n: samples[n][0].get("version", "?") for n in names}
    out.append(f"### Local hit path — ns/op, median of {args.rounds} rounds (min–max), "
               f"best of {args.repeat} in-process repeats; N={args.n:,}, miss N={args.miss_n:,}\n")
    out.append("| measurement | " + " | ".join(f"{n} ({vers[n]})" for n in names) + " |")
    out.append("|---|" + "---:|" * len(names))
    for label, key in rows:
        cells = []
        any_val = False
        for n in names:
            m, txt = cell(samples[n], key)
            med[n][key] = m
            any_val |= m is not None
            cells.append(txt or "—")
        if any_val:
            out.append(f"| {label} | " + " | ".join(cells) + " |")

    def g(n, key):
        return med.get(n, {}).get(key)

    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b

    rr = []
    # ratio rows: (label, value, goal text, ok-predicate)
    r1 = ratio(g("cacheme-0.3.0", "framework_tlfu"), g("ours", "framework_tlfu"))
    rr.append(("framework cost tlfu: 0.3.0 / ours (× smaller)", r1, "≥ 10", lambda v: v >= 10))
    r1l = ratio(g("cacheme-0.3.0", "framework_lru"), g("ours", "framework_lru"))
    rr.append(("framework cost lru: 0.3.0 / ours (× smaller)", r1l, "≥ 10", lambda v: v >= 10))
    r2 = ratio(g("ours", "get_tlfu"), g("theine-2", "theine_get"))
    rr.append(("ours get (tlfu, end-to-end) / theine 2.x bare get", r2, "≤ 2", lambda v: v <= 2))
    r2b = ratio(g("ours", "get_tlfu"), g("theine-2", "theine_get_nolock"))
    rr.append(("ours get (tlfu) / theine 2.x bare get nolock=True", r2b, "(info)", None))
    r2c = ratio(g("ours", "get_tlfu"), g("theine-0.3", "theine_get"))
    rr.append(("ours get (tlfu) / theine 0.3.x bare get", r2c, "(info)", None))
    r3 = ratio(g("cacheme-0.3.0", "miss_load"), g("ours", "miss_load"))
    rr.append(("miss+load+fill: 0.3.0 / ours (× faster)", r3, "≥ 5", lambda v: v >= 5))
    r4 = ratio(g("cacheme-0.3.0", "get_tlfu"), g("ours", "get_tlfu"))
    rr.append(("get hit end-to-end: 0.3.0 / ours (× faster)", r4, "(info)", None))

    out.append("")
    out.append("| ratio | value | goal | met |")
    out.append("|---|---:|---:|:---:|")
    for label, v, goal, ok in rr:
        met = "n/a" if v is None else ("—" if ok is None else ("yes" if ok(v) else "**NO**"))
        out.append(f"| {label} | {fmt(v, 2)} | {goal} | {met} |")

    notes = []
    for n in names:
        for s in samples[n]:
            if s.get("all_hits") is False or s.get("all_loaded") is False:
                notes.append(f"- WARNING {n}: stats disagree with the expected hit/load counts "
                             f"(all_hits={s.get('all_hits')}, all_loaded={s.get('all_loaded')})")
                break
        if n == "ours" and not samples[n][0].get("has_core", True):
            notes.append("- NOTE ours: `cacheme._core` was not importable (driver-test mode)")
    for n, why in skipped.items():
        notes.append(f"- skipped {n}: {why}")
    for n in names:
        notes.append(f"- {n}: {samples[n][0].get('module')}")
    if ours_pp:
        notes.append(f"- ours ran with PYTHONPATH={ours_pp} (--ours-src)")
    print("\n".join(out))
    if notes:
        print("\n" + "\n".join(notes))
    if args.json:
        results.write(args.json, "local", {"rounds": args.rounds, "versions": vers, "ns": med})


if __name__ == "__main__":
    main()
