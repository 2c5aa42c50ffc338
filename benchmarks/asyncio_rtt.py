"""What one request/reply round trip costs an asyncio client on this machine,
against a blocking client, over the same loopback connection to a server.

Sequential reads through any asyncio client (ours, asyncpg, aiomysql) pay at
least one loop wakeup per reply: the loop sleeps in epoll_wait, the reply
wakes it, the callback runs, the task resumes on the next iteration. This
script measures that floor with the smallest possible request, a Redis
PING, through asyncio streams and through a plain blocking socket:

    python3 benchmarks/asyncio_rtt.py [--port 6379] [-n 10000]

Standard library only; needs a redis-server (any RESP server) listening.
"""
import argparse
import asyncio
import socket
import time


async def streams(port, n):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    t = time.perf_counter()
    for _ in range(n):
        w.write(b"PING\r\n")
        await r.readline()
    el = time.perf_counter() - t
    w.close()
    return el / n * 1e6


def blocking(port, n):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = time.perf_counter()
    for _ in range(n):
        s.sendall(b"PING\r\n")
        s.recv(64)
    el = time.perf_counter() - t
    s.close()
    return el / n * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=6379)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    a, b = [], []
    for _ in range(args.rounds):  # interleaved: the machine is noisy
        a.append(asyncio.run(streams(args.port, args.n)))
        b.append(blocking(args.port, args.n))
    print("| client | us per PING round trip (min of rounds) |")
    print("|---|---:|")
    print(f"| asyncio streams | {min(a):.1f} |")
    print(f"| blocking socket | {min(b):.1f} |")
    print(f"\nasyncio / blocking: {min(a) / min(b):.2f}x")


if __name__ == "__main__":
    main()
