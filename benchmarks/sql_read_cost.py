"""Wall time and server CPU per sequential point read through cacheme.get
against a local MariaDB (see benchmarks/SQL.md, "MySQL point reads through a
HANDLER").

    python benchmarks/sql_read_cost.py [--url mysql://root@127.0.0.1:3306/test]
        [--reads 4000] [--repeat 5] [--pid PID]

The server's CPU is utime+stime of its process (/proc/PID/stat, default:
`pidof mariadbd`) over the reads, so other clients of that server count too:
run it on a quiet server. Reads one of 1,000 stored keys (100 B payload,
MsgPackSerializer) in a table of its own, created if missing."""
import argparse
import asyncio
import subprocess
import time

import cacheme
from storage_bench import node_class, server_cpu

ReadNode = node_class("cost", "sql", "x" * 100)


async def main(args):
    await cacheme.register_storage("sql", cacheme.Storage(
        url=args.url, table="cacheme_read_cost", pool_size=4, create_table=True))
    for i in range(1000):
        await cacheme.get(ReadNode(i))
    for _ in range(args.repeat):
        c0, t0 = server_cpu(args.pid), time.perf_counter()
        for i in range(args.reads):
            await cacheme.get(ReadNode(i % 1000))
        wall = (time.perf_counter() - t0) / args.reads * 1e6
        cpu = (server_cpu(args.pid) - c0) / args.reads * 1e6
        print(f"{wall:6.1f} us per read, server CPU {cpu:5.1f} us per read", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="mysql://root@127.0.0.1:3306/test")
    ap.add_argument("--reads", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--pid", type=int, default=None)
    args = ap.parse_args()
    if args.pid is None:
        args.pid = int(subprocess.run(["pidof", "mariadbd"], capture_output=True, text=True,
                                      check=True).stdout.split()[0])
    asyncio.run(main(args))
