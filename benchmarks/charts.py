#!/usr/bin/env python3
"""Draw the README's charts from the recorded figures.

Reads benchmarks/results/{redis,local,instr,hitratio}.json (the files the
drivers write with --json OUT; the ones committed say in "note" which run
they come from) and writes SVGs to benchmarks/charts/:

    redis-trace.svg   0.3.0's Redis trace: time by workers, every contender
    local-hit.svg     the local hit path: ns per call and instructions per call
    hit-ratio.svg     hit ratio of the local store per trace and size

    make bench-charts                          # matplotlib in .venv-charts, then this
    python benchmarks/charts.py --results DIR --out DIR
"""
import argparse
import json
import os
from typing import Any, Dict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# same colour for a contender on every chart
COLOURS = {"ours": "#d62728", "030": "#1f77b4", "aiocache": "#2ca02c", "cashews": "#9467bd",
           "theine": "#ff7f0e", "floor": "#7f7f7f", "belady": "#bcbd22"}


def load(results: str, name: str) -> Dict[str, Any]:
    with open(os.path.join(results, f"{name}.json")) as f:
        return json.load(f)


def source(doc: Dict[str, Any]) -> str:
    commit = f", {doc['commit']}" if doc.get("commit") else ""
    return f"`{doc['command']}`, {doc['date']}{commit}"


FORMAT = "svg"


def save(fig: Any, out: str, name: str) -> None:
    path = os.path.join(out, name.replace(".svg", "." + FORMAT))
    # no date in the file: a redraw of the same figures gives the same bytes
    meta = {"Date": None} if FORMAT == "svg" else {}
    fig.savefig(path, format=FORMAT, metadata=meta, dpi=110)
    plt.close(fig)
    print(f"charts: {path}")


def redis_trace(doc: Dict[str, Any], out: str) -> None:
    single = doc["single"]
    workers = sorted(single, key=int)
    lines = [  # contender, label, colour, style
        ("ours", "cacheme (ours)", COLOURS["ours"], "-o"),
        ("ours-2", "cacheme (ours), [local, redis]", COLOURS["ours"], "--o"),
        ("030", "cacheme 0.3.0", COLOURS["030"], "-s"),
        ("030-2", "cacheme 0.3.0, [local, redis]", COLOURS["030"], "--s"),
        ("aiocache", "aiocache", COLOURS["aiocache"], "-^"),
        ("cashews", "cashews", COLOURS["cashews"], "-v"),
        ("floor", "floor: harness alone (no Redis)", COLOURS["floor"], ":"),
        ("api-floor", "floor: + node, key(), load() (no Redis)", COLOURS["floor"], "-."),
    ]
    fig, ax = plt.subplots(figsize=(9, 4.6), layout="constrained")
    x = [int(w) for w in workers]
    for name, label, colour, style in lines:
        ys = [single[w].get(name, {}).get("time_s") for w in workers]
        if all(y is None for y in ys):
            continue
        ax.plot(x, ys, style, color=colour, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{w // 1000}k" for w in x])
    ax.set_yticks([1, 2, 5, 10, 20, 50], ["1", "2", "5", "10", "20", "50"])
    ax.set_xlabel("workers (concurrent requests)")
    ax.set_ylabel("time (s), lower is better")
    ax.set_title(f"0.3.0's Redis trace: {doc['requests']:,} requests, {doc['unique_keys']:,} "
                 "unique keys, a load sleeps 0.1 s\n"
                 f"{source(doc)}, 2-core machine (theine has no Redis storage)", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save(fig, out, "redis-trace.svg")


def local_hit(ns_doc: Dict[str, Any], instr_doc: Dict[str, Any], out: str) -> None:
    ns, ins = ns_doc["ns"], instr_doc["instructions"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")

    bars = [("cacheme (ours)\nget, tlfu", ns["ours"]["get_tlfu"], COLOURS["ours"]),
            ("cacheme 0.3.0\nget, tlfu", ns["cacheme-0.3.0"]["get_tlfu"], COLOURS["030"])]
    theine = ns.get("theine-2", {})
    if theine.get("theine_get") is not None:
        bars.append(("theine 2.0\nbare get(key)", theine["theine_get"], COLOURS["theine"]))
    if theine.get("theine_get_nolock") is not None:
        bars.append(("theine 2.0 bare\nget, nolock=True", theine["theine_get_nolock"],
                     COLOURS["theine"]))
    pos = range(len(bars))
    left.bar(pos, [b[1] for b in bars], color=[b[2] for b in bars])
    for i, b in enumerate(bars):
        left.annotate(f"{b[1]:,.0f}", (i, b[1]), ha="center", va="bottom", fontsize=8)
    left.set_xticks(list(pos), [b[0] for b in bars], fontsize=8)
    left.set_ylabel("ns per call, lower is better")
    left.set_title(f"await get(node), a local hit, ns per call\n{source(ns_doc)}, 2-core machine",
                   fontsize=9)

    groups = [("framework cost\nhit, tlfu", "framework_tlfu"),
              ("framework cost\nhit, lru", "framework_lru"),
              ("miss + load\n+ fill", "miss")]
    width = 0.38
    for j, (who, label, colour) in enumerate([("ours", "cacheme (ours)", COLOURS["ours"]),
                                              ("cacheme-0.3.0", "cacheme 0.3.0", COLOURS["030"])]):
        xs = [i + (j - 0.5) * width for i in range(len(groups))]
        ys = [ins[who][key] for _, key in groups]
        right.bar(xs, ys, width, color=colour, label=label)
        for xx, yy in zip(xs, ys):
            right.annotate(f"{yy:,.0f}", (xx, yy), ha="center", va="bottom", fontsize=8)
    right.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    right.set_ylabel("instructions per call (callgrind)")
    right.set_yscale("log")
    right.legend(fontsize=8, loc="upper left")
    right.set_title("instructions per call (framework cost: get minus building the node\n"
                    f"and calling key()), {source(instr_doc)}", fontsize=9)
    save(fig, out, "local-hit.svg")


def trace_label(name: str) -> str:
    if name.startswith("loop("):
        return f"loop over {int(name[5:-1]):,} keys"
    return {"zipf": "zipf", "zipf+scan": "zipf + scans"}.get(name, name)


def hit_ratio(doc: Dict[str, Any], out: str) -> None:
    rows = doc["rows"]
    series = [("ours-tlfu", "cacheme (ours), tlfu", COLOURS["ours"]),
              ("theine-tlfu", "theine 2.0, tlfu", COLOURS["theine"]),
              ("ours-lru", "cacheme (ours), lru", "#f4a3a3"),
              ("belady", "Belady (offline optimum)", COLOURS["belady"])]
    fig, ax = plt.subplots(figsize=(10, 4.6), layout="constrained")
    width = 0.2
    for j, (key, label, colour) in enumerate(series):
        xs = [i + (j - 1.5) * width for i in range(len(rows))]
        ys = [100 * (r.get(key) or 0) for r in rows]
        ax.bar(xs, ys, width, color=colour, label=label)
    ax.set_xticks(range(len(rows)), [f"{trace_label(r['trace'])}\nsize {r['size']:,}" for r in rows],
                  fontsize=8)
    ax.set_ylabel("hit ratio (%), higher is better")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncols=4, loc="upper left")
    ax.set_title("hit ratio of the local store; zipf: 1M requests over 100k keys, s=1.001; "
                 "scans: 5,000 new keys after every 10,000 requests\n"
                 f"{source(doc)}", fontsize=9)
    save(fig, out, "hit-ratio.svg")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--out", default=os.path.join(HERE, "charts"))
    ap.add_argument("--format", choices=("svg", "png"), default="svg")
    args = ap.parse_args()
    global FORMAT
    FORMAT = args.format
    os.makedirs(args.out, exist_ok=True)
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: small files
    plt.rcParams["svg.hashsalt"] = "cacheme"  # stable ids
    redis_trace(load(args.results, "redis"), args.out)
    local_hit(load(args.results, "local"), load(args.results, "instr"), args.out)
    hit_ratio(load(args.results, "hitratio"), args.out)


if __name__ == "__main__":
    main()
