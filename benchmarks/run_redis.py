#!/usr/bin/env python3
"""Redis benchmark driver (standard library only): cacheme 0.3.0's
"200k concurrent requests" and "20k concurrent batch requests", ours vs
cacheme 0.3.0, aiocache and cashews, each in its own venv, in one run.

It starts its own redis-server on a free port (or uses --url), writes the
zipf traces once (.bench/redis-trace-*.json), and for each contender flushes
the server, resets INFO commandstats, runs benchmarks/redis_trace.py in the
contender's venv and reads the GET/MGET calls the server counted.

    python3 benchmarks/run_redis.py                      # everything
    python3 benchmarks/run_redis.py --workers 1000 --contenders ours,ours-2,030
    python3 benchmarks/run_redis.py --throughput         # single-connection GET/s vs redis-benchmark
"""
import argparse
import bisect
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import results  # benchmarks/ is sys.path[0]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "benchmarks")

# name -> (venv python relative to bench dir or None for ours, redis_trace contender, label)
CONTENDERS = {
    "ours": (None, "cacheme", "Cacheme (ours)"),
    "ours-2": (None, "cacheme-2", "Cacheme-2 (ours)"),
    "030": ("venv-redis-030", "cacheme", "Cacheme 0.3.0"),
    "030-2": ("venv-redis-030", "cacheme-2", "Cacheme-2 0.3.0"),
    "aiocache": ("venv-redis-aiocache", "aiocache", "Aiocache"),
    "aiocache-2": ("venv-redis-aiocache", "aiocache-2", "Aiocache-2"),
    "cashews": ("venv-redis-cashews", "cashews", "Cashews"),
    "cashews-2": ("venv-redis-cashews", "cashews-2", "Cashews-2"),
    # the harness itself: an in-process dict with one future per key in
    # flight, no Redis at all (a C cache can still beat it where the
    # collector's work dominates: it keeps fewer objects in its lists)
    "floor": (None, "floor", "(harness floor: dict + futures, no Redis)"),
    # the floor plus the API's own per-request work (a dataclass node, its
    # key(), its async load()), which no implementation of the API can skip
    "api-floor": (None, "api-floor", "(API floor: + node, key(), load(); no Redis)"),
}
BATCH_CONTENDERS = ("ours", "ours-2", "030", "030-2")


# ---------------------------------------------------------------- traces


class Zipf:
    """Go's rand.Zipf(s, v, imax) as 0.3.0's benchmarks/zipf.py used it:
    P(k) proportional to (v + k) ** -s, k in [0, imax]; by inverse CDF."""

    def __init__(self, s: float, v: float, imax: int, seed: int):
        acc, self.cdf = 0.0, []
        for k in range(imax + 1):
            acc += (v + k) ** -s
            self.cdf.append(acc)
        self.total = acc
        self.rng = random.Random(seed)

    def get(self) -> int:
        return bisect.bisect_left(self.cdf, self.rng.random() * self.total)


def single_trace(bench_dir: str, requests: int) -> str:
    """0.3.0's "200k concurrent requests" trace (written once); its path."""
    os.makedirs(bench_dir, exist_ok=True)
    single = os.path.join(bench_dir, f"redis-trace-single-{requests}.json")
    if not os.path.exists(single):
        z = Zipf(1.001, 10, requests, seed=1)
        with open(single, "w") as f:
            json.dump([z.get() for _ in range(requests)], f)
    return single


def traces(bench_dir: str, requests: int, batches: int):
    single = single_trace(bench_dir, requests)
    batch = os.path.join(bench_dir, f"redis-trace-batch-{batches}.json")
    if not os.path.exists(batch):
        z = Zipf(1.0001, 10, requests, seed=2)
        out = []
        for _ in range(batches):
            s = set()
            while len(s) < 20:
                s.add(z.get())
            out.append(sorted(s))
        with open(batch, "w") as f:
            json.dump(out, f)
    return single, batch


# ---------------------------------------------------------------- redis


def resp(port: int, *args: str):
    """One command over a plain socket; returns the raw reply text."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        req = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        s.sendall(req.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            data += chunk
            if data.startswith((b"+", b"-", b":")) and data.endswith(b"\r\n"):
                break
            if data.startswith(b"$"):
                head, _, rest = data.partition(b"\r\n")
                n = int(head[1:])
                if n < 0 or len(rest) >= n + 2:
                    break
            if not chunk:
                break
    return data.decode(errors="replace")


def calls(port: int) -> dict:
    out = {}
    for line in resp(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[8:].split(":", 1)
            out[name] = int(rest.split("calls=")[1].split(",")[0])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server():
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("run_redis.py: redis-server not found (Debian: apt-get install redis-server)")
    d = tempfile.mkdtemp(prefix="cacheme-bench-redis-")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", d, "--maxclients", "20000", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            if resp(port, "PING").startswith("+PONG"):
                return proc, port, d
        except OSError:
            time.sleep(0.02)
    proc.kill()
    sys.exit("run_redis.py: redis-server did not start")


@contextlib.contextmanager
def redis_server(url=None):
    """The port of the Redis at url (redis://127.0.0.1:PORT), or of a
    redis-server started for the run and stopped after it."""
    if url:
        yield int(url.rsplit(":", 1)[1].split("/")[0])
        return
    proc, port, tmp = start_server()
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- runs


def venv_env(ours_src=None) -> dict:
    """The environment of a contender's process: PYTHONPATH is the built
    tree for ours (ours_src), unset for a peer's venv."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if ours_src is not None:
        env["PYTHONPATH"] = ours_src
    return env


def driver_parser(doc: str) -> argparse.ArgumentParser:
    """A parser with the options of every driver that runs contenders in
    their venvs (parse with parse_driver_args)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours-python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    ap.add_argument("--ours-src", default=ROOT, help="PYTHONPATH for ours (the built tree)")
    ap.add_argument("--bench-dir", default=os.environ.get("BENCH_DIR", os.path.join(ROOT, ".bench")),
                    help="the peer venvs (default $BENCH_DIR or .bench/)")
    ap.add_argument("--url", help="use this redis (redis://127.0.0.1:PORT) instead of starting one")
    return ap


def parse_driver_args(ap: argparse.ArgumentParser) -> argparse.Namespace:
    args = ap.parse_args()
    # children run in other directories (/tmp)
    args.ours_python = os.path.abspath(args.ours_python)
    return args


def pick(csv: str, known, what: str) -> list:
    """The names of a comma-separated option, each one of known."""
    names = [n for n in csv.split(",") if n]
    for n in names:
        if n not in known:
            sys.exit(f"{os.path.basename(sys.argv[0])}: unknown {what} {n!r} (known: {', '.join(known)})")
    return names


def contender_python(args, venv):
    """(python, env) of a contender: ours for venv None, else the venv's under
    --bench-dir; python is None when that venv is missing."""
    if venv is None:
        return args.ours_python, venv_env(args.ours_src)
    py = os.path.join(args.bench_dir, venv, "bin", "python")
    return (py if os.path.exists(py) else None), venv_env()


def no_venv(args, venv) -> dict:
    return {"skipped": f"no venv ({os.path.join(args.bench_dir, venv)}); run benchmarks/redis_venvs.sh"}


def run_json(argv, env: dict, timeout: float) -> dict:
    """Run one contender script (in /tmp, so that the tree's cacheme does
    not shadow a venv's); its result is the last stdout line that is a JSON
    object, else {"skipped": why}."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           cwd=tempfile.gettempdir(), env=env)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timeout after {timeout} s"}
    return last_json(r.returncode, r.stdout, r.stderr)


def last_json(returncode: int, stdout: str, stderr: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if returncode != 0 or not lines:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        return {"skipped": "failed: " + " | ".join(tail)}
    return json.loads(lines[-1])


def run_one(name: str, args, port: int, workers: int, trace: str, batch: bool):
    py, env = contender_python(args, CONTENDERS[name][0])
    if py is None:
        return no_venv(args, CONTENDERS[name][0])
    resp(port, "FLUSHALL")
    resp(port, "CONFIG", "RESETSTAT")
    argv = [py, os.path.join(HERE, "redis_trace.py"), CONTENDERS[name][1],
            "--url", f"redis://127.0.0.1:{port}", "--workers", str(workers), "--trace", trace]
    if batch:
        argv.append("--batch")
    res = run_json(argv, env, args.timeout)
    if "skipped" in res:
        return res
    c = calls(port)
    res["get"] = c.get("get", 0)
    res["mget"] = c.get("mget", 0)
    return res


def run_table(names, args, port: int, workers: int, trace: str, batch: bool):
    """Each contender's median run; with --rounds N the contenders take
    turns N times, so a slow spell of the machine falls on all of them."""
    runs = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            runs[n].append(run_one(n, args, port, workers, trace, batch))
    rows = []
    for n in names:
        ok = sorted((r for r in runs[n] if "skipped" not in r), key=lambda r: r["time"])
        if not ok:
            rows.append((CONTENDERS[n][2], runs[n][0]))
            continue
        med = dict(ok[(len(ok) - 1) // 2])
        med["times"] = [r["time"] for r in runs[n] if "skipped" not in r]
        rows.append((CONTENDERS[n][2], med))
    return rows


def table(title: str, rows, cmd: str, floor: float):
    """cmd: the column the README's table had (GET, or MGET for the batch
    one); both are printed, since ours sends concurrent GETs of one loop
    iteration as one MGET. "x 0.3.0" is cacheme 0.3.0's time over the row's
    (Redis only; its [local, redis] row for the Cacheme-2 rows)."""
    other = "mget" if cmd == "get" else "get"
    times = {label: res["time"] for label, res in rows if "skipped" not in res}
    base = times.get(CONTENDERS["030"][2])
    base2 = times.get(CONTENDERS["030-2"][2], base)
    print(f"\n#### {title}  (floor: unique keys x 0.1 s / workers = {floor:.2f} s)\n")
    print(f"| | Time | x 0.3.0 | Redis {cmd.upper()} | Redis {other.upper()} | Load Hits |")
    print("|---|---|---|---|---|---|")
    for label, res in rows:
        if "skipped" in res:
            print(f"| {label} | - | - | - | - | {res['skipped']} |")
            continue
        err = f" ({res['errors']} wrong)" if res.get("errors") else ""
        ref = base2 if label.startswith("Cacheme-2") else base
        ratio = f"{ref / res['time']:.1f}x" if ref else "-"
        t = f"{res['time']:.2f} s"
        if len(res.get("times", ())) > 1:
            t += " (" + ", ".join(f"{x:.2f}" for x in res["times"]) + ")"
        print(f"| {label} | {t} | {ratio} | {res[cmd]} | {res[other]} | {res['loads']}{err} |")
    sys.stdout.flush()


def markdown_table(columns, rows, cells) -> None:
    """Print [(label, result)] as a Markdown table: cells(result) gives the
    columns after the label; a skipped result says why in its first one."""
    print("| | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, res in rows:
        out = [res["skipped"]] + [""] * (len(columns) - 1) if "skipped" in res else cells(res)
        print(f"| {label} | " + " | ".join(out) + " |")
    sys.stdout.flush()


def as_figures(names, rows) -> dict:
    """run_table's rows for --json, keyed by contender name."""
    out = {}
    for n, (label, res) in zip(names, rows):
        if "skipped" not in res:
            out[n] = {"label": label, "time_s": res["time"], "get": res["get"],
                      "mget": res["mget"], "loads": res["loads"]}
    return out


def throughput(args, port: int):
    bench = shutil.which("redis-benchmark")
    print("\n#### single-connection GET throughput (requests/s)\n")
    print("| client | no pipelining | pipelined |")
    print("|---|---|---|")
    resp(port, "SET", "key:__rand_int__", "x" * 32)
    if bench:
        out = {}
        for p in (1, args.pipeline):
            r = subprocess.run([bench, "-p", str(port), "-c", "1", "-n", str(args.n), "-t", "get",
                                "-P", str(p), "-q", "--csv"], capture_output=True, text=True)
            line = [x for x in r.stdout.splitlines() if x.startswith('"GET"')]
            out[p] = float(line[0].split(",")[1].strip('"')) if line else float("nan")
        print(f"| redis-benchmark -c 1 (C ceiling) | {out[1]:,.0f} | {out[args.pipeline]:,.0f} (-P {args.pipeline}) |")
    code = f"""
import asyncio, time
from cacheme.storages.redis import RedisStorage
async def main():
    s = RedisStorage("redis://127.0.0.1:{port}", pool_size=1, pipeline=1 << 30)
    await s.execute("SET", "key:__rand_int__", "x" * 32)
    n = {args.n}
    t = time.perf_counter()
    for _ in range(n):
        await s.execute("GET", "key:__rand_int__")
    seq = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(n // {args.pipeline}):
        await asyncio.gather(*[s.execute("GET", "key:__rand_int__") for _ in range({args.pipeline})])
    pipe = n // {args.pipeline} * {args.pipeline} / (time.perf_counter() - t)
    assert s._connections() == 1
    print(seq, pipe)
asyncio.run(main())
"""
    r = subprocess.run([args.ours_python, "-c", code], capture_output=True, text=True,
                       env=venv_env(args.ours_src), cwd=tempfile.gettempdir())
    if r.returncode == 0:
        seq, pipe = map(float, r.stdout.split())
        print(f"| ours (RedisStorage.execute, 1 connection) | {seq:,.0f} | {pipe:,.0f} ({args.pipeline} concurrent) |")
    else:
        print(f"| ours | failed: {r.stderr.strip().splitlines()[-1:]} | |")


def main() -> None:
    ap = driver_parser(__doc__)
    ap.add_argument("--workers", default="1000,10000,100000")
    ap.add_argument("--batch-workers", default="1000,10000")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--batches", type=int, default=20_000)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per contender run")
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs of each contender, taking turns; the table shows the (lower) median")
    ap.add_argument("--no-batch", action="store_true")
    ap.add_argument("--json", metavar="OUT",
                    help="also write {'single'|'batch': {workers: {contender: {label, time_s, get, mget, "
                         "loads}}}}")
    ap.add_argument("--no-single", action="store_true")
    ap.add_argument("--throughput", action="store_true", help="only the GET throughput table")
    ap.add_argument("-n", type=int, default=200_000, help="requests of the throughput test")
    ap.add_argument("--pipeline", type=int, default=64)
    args = parse_driver_args(ap)

    with redis_server(args.url) as port:
        if args.throughput:
            throughput(args, port)
            return
        single, batch = traces(args.bench_dir, args.requests, args.batches)
        with open(single) as f:
            uniq = len(set(json.load(f)))
        with open(batch) as f:
            b = json.load(f)
            buniq = len({k for ks in b for k in ks})
        names = [c for c in args.contenders.split(",") if c]
        figures = {"requests": args.requests, "unique_keys": uniq, "single": {}, "batch": {}}
        print(f"trace: {args.requests} requests, {uniq} unique keys; batch: {len(b)} x 20, "
              f"{buniq} unique keys; redis-server on port {port}")
        if not args.no_single:
            for w in [int(x) for x in args.workers.split(",") if x]:
                rows = run_table(names, args, port, w, single, False)
                table(f"{w // 1000}k concurrency", rows, "get", uniq * 0.1 / w)
                figures["single"][str(w)] = as_figures(names, rows)
        if not args.no_batch:
            for w in [int(x) for x in args.batch_workers.split(",") if x]:
                rows = run_table([n for n in names if n in BATCH_CONTENDERS], args, port, w,
                                 batch, True)
                table(f"batch (get_all of 20), {w // 1000}k concurrency", rows, "mget",
                      buniq * 0.1 / w)
                figures["batch"][str(w)] = as_figures(
                    [n for n in names if n in BATCH_CONTENDERS], rows)
        if args.json:
            results.write(args.json, "redis", figures)


if __name__ == "__main__":
    main()
