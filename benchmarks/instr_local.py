"""Instructions per call of the local paths (valgrind callgrind): ours vs
cacheme 0.3.0, the same loops as benchmarks/bench_local.py.

Time on the shared 2-core machine moves by a third from run to run, which is
as much as the gaps being measured; an instruction count does not move
(callgrind counts what the CPU executes, whatever else runs). It is not time:
cache misses and branch mispredictions are not in it. So this table
complements `make bench-local`, it does not replace it.

Each (contender, loop) runs twice under callgrind, with N1 and N2 iterations
of the timed loop after the same set-up; (I(N2) - I(N1)) / (N2 - N1) is the
cost of one iteration, set-up and teardown cancelling out.

    python3 benchmarks/instr_local.py [--ours-python .venv/bin/python] [--venv-030 .bench/venv-030]
"""
from __future__ import annotations

import argparse
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path
import results  # noqa: E402  (benchmarks/ is sys.path[0])

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

LOOP = r'''
import asyncio, sys
sys.path.insert(0, sys.argv[3])
import bench_local as bl
import cacheme

async def main(n, mode):
    await bl.register_storages(cacheme)
    tlfu, lru, miss = bl.cacheme_nodes(cacheme)
    for i in range(1000):
        await cacheme.get(tlfu(uid=i))
        await cacheme.get(lru(uid=i))
    if mode == "tlfu":
        await bl.t_get(cacheme.get, tlfu, n)
    elif mode == "lru":
        await bl.t_get(cacheme.get, lru, n)
    elif mode == "baseline":
        await bl.t_baseline(tlfu, n)
    elif mode == "miss":
        await bl.t_miss(cacheme.get, miss, 0, n)

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
'''

MODES = ["baseline", "tlfu", "lru", "miss"]


def instructions(python: str, n: int, mode: str) -> int:
    r = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python, "-c", LOOP,
         str(n), mode, str(HERE)],
        capture_output=True, text=True, cwd="/",
        # a fixed seed: str hashes (and with them probe lengths in dicts and
        # in the store's index) would otherwise move the count by ~2% per run
        env=dict(os.environ, PYTHONHASHSEED="0"))
    m = re.search(r"refs:\s+([\d,]+)", r.stderr)
    if r.returncode != 0 or m is None:
        sys.exit(f"callgrind run failed ({python} {mode}):\n{r.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours-python", default=str(ROOT / ".venv/bin/python"))
    ap.add_argument("--venv-030", default=str(ROOT / ".bench/venv-030"))
    ap.add_argument("--n1", type=int, default=10_000)
    ap.add_argument("--n2", type=int, default=60_000)
    ap.add_argument("--json", metavar="OUT",
                    help="also write {'instructions': {contender: {measurement: count}}}")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("instr_local: valgrind not found (Debian: apt-get install valgrind)")
    pythons = {"ours": str(Path(args.ours_python).absolute()),
               "cacheme-0.3.0": str((Path(args.venv_030) / "bin/python").absolute())}
    per = {}
    for name, py in pythons.items():
        for mode in MODES:
            a, b = instructions(py, args.n1, mode), instructions(py, args.n2, mode)
            per[(name, mode)] = (b - a) / (args.n2 - args.n1)
            print(f"instr_local: {name} {mode}: {per[(name, mode)]:,.0f}", file=sys.stderr)
    for name in pythons:
        for mode in ("tlfu", "lru"):
            per[(name, "framework_" + mode)] = per[(name, mode)] - per[(name, "baseline")]
    rows = [("get hit, local://tlfu", "tlfu"), ("get hit, local://lru", "lru"),
            ("baseline: build node + key()", "baseline"),
            ("framework cost tlfu (get − baseline)", "framework_tlfu"),
            ("framework cost lru (get − baseline)", "framework_lru"),
            ("miss + load + fill (tlfu, 10**6)", "miss")]
    print("### Local paths — instructions per call (callgrind), "
          f"(I(N={args.n2:,}) − I(N={args.n1:,})) / {args.n2 - args.n1:,}\n")
    print("| measurement | ours | cacheme 0.3.0 | 0.3.0 / ours |")
    print("|---|---:|---:|---:|")
    for label, key in rows:
        o, t = per[("ours", key)], per[("cacheme-0.3.0", key)]
        print(f"| {label} | {o:,.0f} | {t:,.0f} | {t / o:.2f}x |")
    if args.json:
        counts = {name: {key: round(per[(name, key)]) for _, key in rows} for name in pythons}
        results.write(args.json, "instr", {"instructions": counts})


if __name__ == "__main__":
    main()
