"""What asyncio itself costs per suspension of a Task and its wakeup, with
many Tasks alive at once (as in the 200k-request benchmark's workers).

Every request a cache has to answer from Redis suspends its Task once for the
reply (and a leader that loads, again for its fill); nothing is to be had
without it, so this cost times the Redis round trips, added to the API floor
of run_redis.py, is about the least a Redis-backed cache can take there.

Two ways to suspend, each the cheapest of its kind:
  future  each Task awaits a new asyncio Future; one loop callback resolves
          every pending one per iteration (a client handing out a batch of
          replies: set_result schedules each Task's wakeup)
  yield   each Task awaits asyncio.sleep(0) (a bare yield: the Task
          reschedules its own step)
N Tasks each do 200,000 / N rounds of: a coroutine call, one suspension.

    python3 benchmarks/asyncio_suspend.py [--tasks 1000,10000]

Standard library only.
"""
import argparse
import asyncio
import gc
import time

TOTAL = 200_000


async def run(kind: str, n: int) -> float:
    loop = asyncio.get_running_loop()
    pending = []
    running = [True]

    def resolve() -> None:
        batch = pending[:]
        pending.clear()
        for f in batch:
            f.set_result(None)
        if running[0]:
            loop.call_soon(resolve)

    async def one_future() -> None:
        f = loop.create_future()
        pending.append(f)
        await f

    async def one_yield() -> None:
        await asyncio.sleep(0)

    one = one_future if kind == "future" else one_yield

    async def worker(rounds: int) -> None:
        for _ in range(rounds):
            await one()

    if kind == "future":
        loop.call_soon(resolve)
    rounds = TOTAL // n
    workers = [worker(rounds) for _ in range(n)]
    t = time.perf_counter()
    await asyncio.gather(*workers)
    dt = time.perf_counter() - t
    running[0] = False
    return dt / (n * rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="1000,10000")
    args = ap.parse_args()
    print("| Tasks | suspension | collector off | collector on |")
    print("|---|---|---|---|")
    for n in [int(x) for x in args.tasks.split(",")]:
        for kind in ("future", "yield"):
            row = []
            for collect in (False, True):
                (gc.enable if collect else gc.disable)()
                row.append(asyncio.run(run(kind, n)))
            gc.enable()
            print(f"| {n:,} | {kind} | {row[0] * 1e6:.2f} us | {row[1] * 1e6:.2f} us |")


if __name__ == "__main__":
    main()
