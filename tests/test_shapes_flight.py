"""The singleflight and the hit path under every program shape (issue 20):
configs rebuilt under a running get, cancel(msg=...) through the leader's
proxy, a failed flight's traceback, threads each with its own loop, fork,
asyncio.run() teardown, Meta.load_timeout.

Most run in a fresh interpreter (run_shape): a crash, a hang or a line on
stderr is then the test's failure, not the suite's."""
import os
import subprocess
import sys
import textwrap

import pytest

HEADER = """
import asyncio, dataclasses, os, sys, threading, time
from datetime import timedelta
import cacheme
from cacheme import Cache, Node, _core

def local(name, policy="tlfu", size=1000):
    async def reg():
        await cacheme.register_storage(name, cacheme.Storage(url=f"local://{policy}", size=size))
    asyncio.run(reg())
    return name

def node_class(storage, load, key=lambda self: f"k:{self.uid}", **meta):
    @dataclasses.dataclass
    class N(Node):
        uid: int

        def key(self):
            return key(self)

        async def load(self):
            return await load(self)

        class Meta(Node.Meta):
            caches = [Cache(storage=storage, ttl=None)]

    for k, v in meta.items():
        setattr(N.Meta, k, v)
    return N
"""


def run_shape(code: str, timeout: int = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """code (after HEADER) in a fresh interpreter with this cacheme."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", HEADER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=e,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


# ---- configs held across calls into Python ------------------------------------


def test_key_rebuilding_the_config_under_get():
    """key() calls set_prefix and resolves its own class again: the config
    the running get() read its caches from was freed under it."""
    out = ok(
        run_shape(
            """
            name = local("l")
            state = {"n": 0}

            def key(self):
                if self.uid < 100:
                    state["n"] += 1
                    cacheme.set_prefix(f"p{state['n']}")
                    N(self.uid + 100).full_key()  # the same class, rebuilt
                return f"k:{self.uid}"

            async def load(self):
                return self.uid * 2

            N = node_class(name, load, key=key)

            async def main():
                got = [await cacheme.get(N(i)) for i in range(20)]
                got += [await cacheme.get(N(i)) for i in range(20)]
                print(sum(got))

            asyncio.run(main())
            """,
            env={"PYTHONMALLOC": "debug"},
        )
    )
    assert out.split() == [str(2 * 2 * sum(range(20)))]


# ---- cancel(msg) forwarded by the leader's proxy --------------------------------


@pytest.mark.parametrize("task", ["_PyTask", "_CTask"])
def test_leader_cancel_message_reaches_the_load(task):
    out = ok(
        run_shape(
            f"""
            name = local("l")
            seen = []

            async def load(self):
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError as e:
                    seen.append(e.args)
                    raise

            N = node_class(name, load)

            async def call():
                return await cacheme.get(N(1))

            async def main():
                loop = asyncio.get_running_loop()
                t = asyncio.tasks.{task}(call(), loop=loop)
                for _ in range(3):
                    await asyncio.sleep(0)
                t.cancel(msg="bye")
                try:
                    await t
                except asyncio.CancelledError as e:
                    print("task", e.args)
                print("load", seen)
                print("flights", _core._flights_in_table())

            asyncio.run(main())
            """
        )
    )
    assert "load [('bye',)]" in out, out
    assert "flights 0" in out


# ---- a failed flight's traceback ---------------------------------------------------


def test_failed_flight_traceback_is_not_shared_between_waiters():
    out = ok(
        run_shape(
            """
            name = local("l")
            gate = None

            async def load(self):
                await gate.wait()
                raise KeyError("boom")

            N = node_class(name, load)

            async def deep(n):
                if n:
                    return await deep(n - 1)
                return await cacheme.get(N(1))

            def tb_len(e):
                n, tb = 0, e.__traceback__
                while tb is not None:
                    n, tb = n + 1, tb.tb_next
                return n

            async def main():
                global gate
                gate = asyncio.Event()
                tasks = [asyncio.ensure_future(deep(5)) for _ in range(200)]
                await asyncio.sleep(0.01)
                gate.set()
                res = await asyncio.gather(*tasks, return_exceptions=True)
                assert all(r is res[0] for r in res), res[:3]
                lens = sorted(tb_len(tasks[i].exception()) for i in (0, 100, 199))
                print("tb", max(lens))

            asyncio.run(main())
            """
        )
    )
    n = int(out.split()[-1])
    assert n < 30, out
