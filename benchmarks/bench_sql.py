"""SQL storages: ours (C drivers) vs cacheme 0.3.0 (aiosqlite-less sqlite3
threads, asyncpg, aiomysql), same servers, same tables layout, one run.

Sequential (0.3.0's benchmark shapes, 1k requests each, through cacheme.get /
get_all with the SQL storage as the only cache):
  read      1k gets of keys already stored (storage hits)
  write     1k gets of new keys (miss, load, fill: a read and an upsert)
  zipf      1k gets, keys zipf(1.0) over 1k keys, starting empty
  batch20   50 get_all of 20 stored keys
Concurrent: 1k workers reading stored keys at once (requests/s).

    python benchmarks/bench_sql.py [--storages sqlite,postgresql,mysql]
        [--payloads 100,4096] [--pg URL] [--mysql URL] [--out FILE.json]

Without --pg/--mysql, temporary servers are started (tests/sql_servers.py).
Each contender runs --rounds times (default 5), alternating with the other,
and every figure keeps its best run.
Each implementation runs in its own interpreter: ours from this tree, 0.3.0
from .bench/venv-sql-030 (benchmarks/sql_venvs.sh).

The "C client" column is the server's own C client doing the same point read
(1k sequential SELECTs of one stored key, one connection, same server, same
table, right after our run): pgbench -M prepared for PostgreSQL,
mariadb-slap for MariaDB. Both sleep in poll() for every reply; ours busy-
polls while the loop is idle (the busy_poll option), so it can be faster.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from urllib.parse import urlparse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_030 = os.path.join(ROOT, ".bench", "venv-sql-030", "bin", "python")
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

WORKER = r'''
import asyncio, json, random, sys, time
sys.path.append(sys.argv[1])  # benchmarks/: storage_bench
import cacheme
import storage_bench

url, table, payload, conc_workers, conc_reqs = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
DATA = "x" * payload


def node_class(tag):
    return storage_bench.node_class(tag, "sql", DATA)


def zipf_keys(n, size, s=1.0, seed=42):
    rnd = random.Random(seed)
    weights = [1.0 / (i + 1) ** s for i in range(size)]
    return rnd.choices(range(size), weights=weights, k=n)


async def main():
    opts = {"table": table}
    if not url.startswith("sqlite"):
        opts["pool_size"] = 50
    await cacheme.register_storage("sql", cacheme.Storage(url=url, **opts))
    out = {}
    R = node_class("read")
    for i in range(1000):
        await cacheme.get(R(i))
    t = time.perf_counter()
    for i in range(1000):
        await cacheme.get(R(i))
    out["read"] = time.perf_counter() - t
    W = node_class("write")
    t = time.perf_counter()
    for i in range(1000):
        await cacheme.get(W(i))
    out["write"] = time.perf_counter() - t
    Z = node_class("zipf")
    keys = zipf_keys(1000, 1000)
    t = time.perf_counter()
    for k in keys:
        await cacheme.get(Z(k))
    out["zipf"] = time.perf_counter() - t
    t = time.perf_counter()
    for b in range(50):
        got = await cacheme.get_all([R(b * 20 + j) for j in range(20)])
        assert len(got) == 20
    out["batch20"] = time.perf_counter() - t
    before = storage_bench.loads

    async def worker(w):
        for j in range(conc_reqs):
            await cacheme.get(R((w * 7 + j) % 1000))

    t = time.perf_counter()
    await asyncio.gather(*[worker(w) for w in range(conc_workers)])
    el = time.perf_counter() - t
    out["concurrent_rps"] = conc_workers * conc_reqs / el
    out["concurrent_loads"] = storage_bench.loads - before
    print(json.dumps(out))


asyncio.run(main())
'''


def reset_table(url, table):
    """Drop and create the table with our storage (same DDL as 0.3.0)."""
    sys.path.insert(0, ROOT)
    import asyncio

    import cacheme
    from cacheme.storages.sqldb import ddl_script

    async def go():
        st = cacheme.Storage(url=url, table=table)
        db = {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql"}[url.split(":")[0]]
        await st._storage.execute(f"DROP TABLE IF EXISTS {table}")
        await st._storage.execute_ddl(ddl_script(db, table))
        await st.close()

    asyncio.run(go())


def c_client(storage, url, table, n=1000):
    """ms for n sequential point reads by the server's C client, or None."""
    u = urlparse(url)
    if storage == "postgresql":
        from sql_servers import pg_bin
        bindir = pg_bin()
        if bindir is None:
            return None
        conn = ["-h", u.hostname, "-p", str(u.port or 5432), "-U", u.username or "postgres"]
        db = u.path.lstrip("/") or "postgres"
        key = subprocess.run([os.path.join(bindir, "psql"), *conn, "-d", db, "-Atc",
                              f"SELECT key FROM {table} LIMIT 1"],
                             capture_output=True, text=True, check=True).stdout.strip()
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            # pgbench reads ":name" as a variable: spell the key's colons as chr(58)
            lit = " || chr(58) || ".join(f"'{part}'" for part in key.split(":"))
            f.write(f"SELECT value FROM {table} WHERE key = {lit};\n")
        try:
            out = subprocess.run([os.path.join(bindir, "pgbench"), *conn, "-n", "-M", "prepared",
                                  "-c", "1", "-t", str(n), "-f", f.name, db],
                                 capture_output=True, text=True, check=True).stdout
        finally:
            os.unlink(f.name)
        m = re.search(r"latency average = ([0-9.]+) ms", out)
        return float(m.group(1)) * n if m else None
    if storage == "mysql":
        slap = shutil.which("mariadb-slap") or shutil.which("mysqlslap")
        cli = shutil.which("mariadb") or shutil.which("mysql")
        if slap is None or cli is None:
            return None
        conn = [f"--host={u.hostname}", f"--port={u.port or 3306}", f"--user={u.username or 'root'}"]
        db = u.path.lstrip("/")
        key = subprocess.run([cli, *conn, db, "-N", "-e", f"SELECT `key` FROM {table} LIMIT 1"],
                             capture_output=True, text=True, check=True).stdout.strip()
        out = subprocess.run([slap, *conn, f"--create-schema={db}", "--concurrency=1",
                              "--iterations=3", f"--number-of-queries={n}",
                              f"--query=SELECT value FROM {table} WHERE `key` = '{key}'"],
                             capture_output=True, text=True, check=True).stdout
        m = re.search(r"Average number of seconds to run all queries: ([0-9.]+)", out)
        return float(m.group(1)) * 1000 * (1000 / n) if m else None
    return None


def run(python, url, table, payload, workers, reqs, cwd):
    r = subprocess.run([python, "-c", WORKER, BENCH_DIR, url, table, str(payload), str(workers),
                        str(reqs)],
                       capture_output=True, text=True, cwd=cwd, timeout=900,
                       env={**os.environ, "PYTHONPATH": ROOT if cwd == ROOT else ""})
    if r.returncode != 0:
        raise RuntimeError(f"{python} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def best(a, b):
    """Per figure, the better of two runs (times: lower; rates: higher)."""
    if a is None:
        return b
    return {k: (max if k.endswith("_rps") else min)(a[k], b[k]) if k != "concurrent_loads"
            else a[k] for k in a}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--storages", default="sqlite,postgresql,mysql")
    ap.add_argument("--payloads", default="100,4096")
    ap.add_argument("--pg")
    ap.add_argument("--mysql")
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--reqs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5,
                    help="runs per contender, alternating; each figure keeps its best")
    ap.add_argument("--out")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    servers = []
    tmp = tempfile.mkdtemp(prefix="cacheme-bench-sql-")
    urls = {"sqlite": f"sqlite:///{tmp}/bench.db"}
    try:
        storages = args.storages.split(",")
        if "postgresql" in storages:
            if args.pg:
                urls["postgresql"] = args.pg
            else:
                from sql_servers import PgServer
                srv = PgServer()
                srv.start()
                servers.append(srv)
                urls["postgresql"] = srv.url
        if "mysql" in storages:
            if args.mysql:
                urls["mysql"] = args.mysql
            else:
                from sql_servers import MariaServer
                srv = MariaServer()
                srv.start()
                servers.append(srv)
                urls["mysql"] = srv.url
        results = []
        for storage in storages:
            for payload in [int(p) for p in args.payloads.split(",")]:
                row = {"storage": storage, "payload": payload}
                contenders = (("ours", sys.executable, ROOT), ("030", VENV_030, "/"))
                for rnd, (impl, python, cwd) in enumerate(contenders * max(1, args.rounds)):
                    table = f"bench_{impl}"
                    reset_table(urls[storage], table)
                    got = run(python, urls[storage], table, payload, args.workers, args.reqs, cwd)
                    row[impl] = best(row.get(impl), got)
                    if impl == "ours" and rnd == 0:
                        try:
                            row["c_client_read_ms"] = c_client(storage, urls[storage], table)
                        except (OSError, subprocess.CalledProcessError) as e:
                            print(f"bench_sql: C client for {storage} failed: {e}", file=sys.stderr)
                            row["c_client_read_ms"] = None
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
    finally:
        for srv in servers:
            srv.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print_tables(results, args.workers, args.reqs)


def print_tables(results, workers, reqs):
    print("\nSequential, 1k requests (ms total; lower is better)\n")
    print("| storage | payload | bench | ours | 0.3.0 | speedup | C client | 0.3.0 / C client |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for row in results:
        for b in ("read", "write", "zipf", "batch20"):
            o, t = row["ours"][b] * 1000, row["030"][b] * 1000
            fl = row.get("c_client_read_ms") if b == "read" else None
            extra = f"{fl:.1f} | {t / fl:.1f}x" if fl else "|"
            print(f"| {row['storage']} | {row['payload']} B | {b} | {o:.1f} | {t:.1f} | "
                  f"{t / o:.1f}x | {extra} |")
    print(f"\nConcurrent reads, {workers} workers x {reqs} gets (requests/s; higher is better)\n")
    print("| storage | payload | ours | 0.3.0 | speedup |")
    print("|---|---:|---:|---:|---:|")
    for row in results:
        o, t = row["ours"]["concurrent_rps"], row["030"]["concurrent_rps"]
        print(f"| {row['storage']} | {row['payload']} B | {o:,.0f} | {t:,.0f} | {o / t:.1f}x |")


if __name__ == "__main__":
    main()
