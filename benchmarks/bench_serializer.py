"""Serializer benchmark: dumps and loads of the 0.3.0 benchmark documents.

Contenders, measured in one run (each in its own interpreter, same payloads,
same timing loop; --procs processes each, alternating, best process per row):
  ours    cacheme.serializer (this build, --ours-python)
  0.3.0   cacheme 0.3.0's serializers (pure Python over msgpack/json/pickle/zlib)
  msgpack the msgpack package, packb/unpackb (no hooks)       [in our venv]
  orjson  orjson.dumps/loads                                   [in our venv]

Payloads model cacheme 0.3.0's benchmarks/{small,medium,large}.json (person
records of a JSON generator: ids, guid, balance, about text, tags, friends):
  small  = 1 record without "about"/"registered"   (~0.7 KB as JSON)
  medium = 9 records                               (~8 KB)
  large  = 34 records                              (~30 KB)
generated deterministically (random.Random(seed)), so every contender sees the
same objects. Timing: min over --rounds of a loop sized to ~0.2 s, and over
--procs processes; us/op.

    python benchmarks/bench_serializer.py --venv-030 .bench/venv-030 [--ours-python .venv/bin/python]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

WORDS = ("lorem ipsum dolor sit amet consectetur adipisicing elit sed do eiusmod tempor "
         "incididunt ut labore et dolore magna aliqua enim minim veniam quis nostrud "
         "exercitation ullamco laboris nisi aliquip ex ea commodo consequat duis aute irure "
         "reprehenderit voluptate velit esse cillum fugiat nulla pariatur excepteur sint "
         "occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim id est "
         "laborum").split()
FIRST = ["Wilkerson", "Heather", "Rivera", "Billie", "Sparks", "Carolina", "Aguilar", "Terri",
         "Bright", "Latasha", "Maura", "Vickie", "Roberta", "Wade", "Angela", "Gwendolyn"]
LAST = ["Wheeler", "Nolan", "Foley", "Gregory", "Wallace", "Crane", "Malone", "English",
        "Walker", "Ingram", "Barrett", "Kirk", "Holmes", "Carson", "Elliott", "Santana"]
STATES = ["Alabama", "Arizona", "Montana", "Oklahoma", "Florida", "Maryland", "Colorado"]


def _record(rng: random.Random, index: int, full: bool) -> dict:
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    company = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(5, 9)))
    rec = {
        "_id": "%024x" % rng.getrandbits(96),
        "index": index,
        "guid": "%08x-%04x-%04x-%04x-%012x" % (rng.getrandbits(32), rng.getrandbits(16),
                                              rng.getrandbits(16), rng.getrandbits(16),
                                              rng.getrandbits(48)),
        "isActive": rng.random() < 0.5,
        "balance": "$%d,%03d.%02d" % (rng.randint(1, 3), rng.randint(0, 999), rng.randint(0, 99)),
        "picture": "http://placehold.it/32x32",
        "age": rng.randint(20, 40),
        "eyeColor": rng.choice(["blue", "green", "brown"]),
        "name": name,
        "gender": rng.choice(["male", "female"]),
        "company": company,
        "email": f"{name.replace(' ', '').lower()}@{company.lower()}.com",
        "phone": "+1 (%03d) %03d-%04d" % (rng.randint(800, 999), rng.randint(400, 599),
                                          rng.randint(0, 9999)),
        "address": "%d %s Street, %s, %s, %d" % (rng.randint(100, 999), rng.choice(LAST),
                                                 rng.choice(FIRST), rng.choice(STATES),
                                                 rng.randint(100, 9999)),
    }
    if full:
        sentences = []
        for _ in range(rng.randint(3, 7)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
            sentences.append(" ".join(words).capitalize() + ".")
        rec["about"] = " ".join(sentences) + "\r\n"
        rec["registered"] = "20%02d-%02d-%02dT%02d:%02d:%02d -08:00" % (
            rng.randint(14, 22), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
            rng.randint(0, 59), rng.randint(0, 59))
    rec["latitude"] = round(rng.uniform(-90, 90), 6)
    rec["longitude"] = round(rng.uniform(-180, 180), 6)
    rec["tags"] = [rng.choice(WORDS) for _ in range(7)]
    rec["friends"] = [{"id": i, "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}"}
                      for i in range(3)]
    rec["greeting"] = f"Hello, {name}! You have {rng.randint(1, 10)} unread messages."
    rec["favoriteFruit"] = rng.choice(["apple", "banana", "strawberry"])
    return rec


def payloads() -> dict:
    return {
        "small": _record(random.Random(1), 0, full=False),
        "medium": [_record(random.Random(100 + i), i, True) for i in range(9)],
        "large": [_record(random.Random(1000 + i), i, True) for i in range(34)],
    }


def _time(fn, arg, rounds: int) -> float:
    n, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn(arg)
        t = time.perf_counter() - t0
        if t >= 0.2:
            break
        n *= 2 if t < 0.05 else 3
    best = t / n
    for _ in range(rounds - 1):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(arg)
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def worker(kind: str, rounds: int) -> None:
    contenders = {}
    if kind in ("ours", "030"):
        import cacheme.serializer as S

        for name in ["MsgPackSerializer", "JSONSerializer", "PickleSerializer",
                     "CompressedMsgPackSerializer", "CompressedJSONSerializer",
                     "CompressedPickleSerializer"]:
            ser = getattr(S, name)()
            contenders[name] = (ser.dumps, ser.loads)
    if kind == "ours":
        import msgpack
        import orjson

        contenders["msgpack"] = (msgpack.packb, msgpack.unpackb)
        contenders["orjson"] = (orjson.dumps, orjson.loads)
    out = []
    for pname, doc in payloads().items():
        for cname, (dumps, loads) in contenders.items():
            blob = dumps(doc)
            assert loads(blob) == doc, (cname, pname)
            out.append({"contender": cname, "payload": pname, "bytes": len(blob),
                        "dumps": _time(dumps, doc, rounds), "loads": _time(loads, blob, rounds)})
    json.dump(out, sys.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["ours", "030"])
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per process")
    ap.add_argument("--procs", type=int, default=3,
                    help="worker processes per contender (alternating); best per row")
    ap.add_argument("--ours-python", default=".venv/bin/python")
    ap.add_argument("--venv-030", default=".bench/venv-030")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.rounds)
        return
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    me = os.path.abspath(__file__)
    res = {}
    # Each contender's timings move by up to a third from one process to the
    # next on this kind of machine (layout, neighbours), whoever it is. So
    # the workers run --procs times, alternating ours and 0.3.0, and every row
    # keeps its best process: the same rule for every contender.
    for _ in range(args.procs):
        for kind, py, env_extra in [
            ("ours", os.path.abspath(args.ours_python), {"PYTHONPATH": root}),
            ("030", os.path.abspath(os.path.join(args.venv_030, "bin", "python")), {}),
        ]:
            env = dict(os.environ, **env_extra)
            if kind == "030":
                env.pop("PYTHONPATH", None)
            r = subprocess.run([py, me, "--worker", kind, "--rounds", str(args.rounds)],
                               capture_output=True, text=True, env=env,
                               cwd="/" if kind == "030" else root)
            if r.returncode != 0:
                sys.exit(f"{kind} worker failed:\n{r.stderr}")
            for row in json.loads(r.stdout):
                key = (kind, row["contender"], row["payload"])
                best = res.setdefault(key, row)
                for op in ("dumps", "loads"):
                    best[op] = min(best[op], row[op])
    peers = {"MsgPackSerializer": "msgpack", "JSONSerializer": "orjson"}
    hdr = (f"{'serializer':<28} {'doc':<7} {'op':<5} {'ours us':>9} {'0.3.0 us':>9} "
           f"{'x 0.3.0':>8} {'peer':>8} {'peer us':>9} {'x peer':>7}")
    print(hdr)
    print("-" * len(hdr))
    for cname in ["MsgPackSerializer", "JSONSerializer", "PickleSerializer",
                  "CompressedMsgPackSerializer", "CompressedJSONSerializer",
                  "CompressedPickleSerializer"]:
        for pname in ["small", "medium", "large"]:
            ours, old = res[("ours", cname, pname)], res[("030", cname, pname)]
            assert ours["bytes"] == old["bytes"], (cname, pname, "different output sizes")
            for op in ["dumps", "loads"]:
                line = (f"{cname:<28} {pname:<7} {op:<5} {ours[op]:>9.2f} {old[op]:>9.2f} "
                        f"{old[op] / ours[op]:>7.2f}x")
                peer = peers.get(cname)
                if peer:
                    p = res[("ours", peer, pname)]
                    line += f" {peer:>8} {p[op]:>9.2f} {p[op] / ours[op]:>6.2f}x"
                print(line)
    print("\nx 0.3.0 / x peer: how many times faster ours is (>1 = ours faster). "
          "Same output bytes as 0.3.0 checked per row.")


if __name__ == "__main__":
    main()
