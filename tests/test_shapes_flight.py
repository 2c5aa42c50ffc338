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


# ---- cancelled while the loop is stopped (asyncio.run() teardown) -------------


def test_leader_cancelled_while_the_loop_is_stopped_hands_on_its_flight():
    r = run_shape(
        """
        name = local("l")
        gate = None

        async def load(self):
            await gate.wait()
            return "v"

        N = node_class(name, load)

        async def call():
            return await cacheme.get(N(1))

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        gate = asyncio.Event()
        leader = loop.create_task(call())
        waiter = loop.create_task(call())
        loop.run_until_complete(asyncio.sleep(0.01))
        leader.cancel()  # the loop is not running
        loop.call_soon(gate.set)
        print("waiter", loop.run_until_complete(waiter))
        loop.run_until_complete(asyncio.sleep(0))
        print("leader", leader.cancelled(), "flights", _core._flights_in_table())
        loop.close()
        """
    )
    assert ok(r).split() == ["waiter", "v", "leader", "True", "flights", "0"]
    assert r.stderr == ""


def test_asyncio_run_teardown_with_gets_in_flight_prints_nothing():
    r = run_shape(
        """
        name = local("l")

        async def load(self):
            await asyncio.sleep(10)
            return "v"

        N = node_class(name, load)

        async def main():
            for uid in (1, 1, 1, 2):
                asyncio.ensure_future(cacheme.get(N(uid)))
            await asyncio.sleep(0.01)

        asyncio.run(main())
        asyncio.run(main())
        print("flights", _core._flights_in_table())
        """
    )
    assert ok(r).split() == ["flights", "0"]
    assert r.stderr == ""


# ---- threads, each with its own loop ------------------------------------------------


def test_waiter_on_another_threads_loop_is_woken():
    """Thread 2 joins thread 1's flight; thread 1's load finishes only once
    thread 2 waits on it. One load, both get the value."""
    out = ok(
        run_shape(
            """
            name = local("l")
            started, joined = threading.Event(), threading.Event()
            loads, got = [], {}

            async def load(self):
                loads.append(threading.get_ident())
                started.set()
                await asyncio.get_running_loop().run_in_executor(None, joined.wait, 10)
                return "v"

            N = node_class(name, load)

            def t1():
                got[1] = asyncio.run(asyncio.wait_for(cacheme.get(N(1)), 10))

            def t2():
                async def main():
                    started.wait(10)
                    for _ in range(10000):  # registered at its first suspension
                        if _core._flights_in_table():
                            break
                        time.sleep(0.001)
                    t = asyncio.ensure_future(cacheme.get(N(1)))
                    for _ in range(3):
                        await asyncio.sleep(0)
                    joined.set()
                    t0 = time.monotonic()
                    v = await asyncio.wait_for(t, 5)
                    # woken at once, not by the next event of its own loop
                    return v if time.monotonic() - t0 < 1.5 else "late"
                try:
                    got[2] = asyncio.run(main())
                except BaseException as e:
                    got[2] = repr(e)

            ths = [threading.Thread(target=t1), threading.Thread(target=t2)]
            [t.start() for t in ths]
            [t.join(30) for t in ths]
            print(got[1], got[2], len(loads), _core._flights_in_table())
            """
        )
    )
    assert out.split() == ["v", "v", "1", "0"], out


def test_leader_cancelled_while_a_waiter_on_another_loop_waits():
    """The leader's flight is handed to a Task on its loop; the waiter in the
    other thread gets the value. Then the same with the waiter leaving last:
    the flight's Task (on the other loop) is cancelled, the load with it."""
    out = ok(
        run_shape(
            """
            name = local("l")
            started, joined, release = threading.Event(), threading.Event(), threading.Event()
            loads, cancelled, got = [], [], {}

            async def load(self):
                loads.append(self.uid)
                started.set()
                try:
                    while not release.is_set():
                        await asyncio.sleep(0.005)
                except asyncio.CancelledError:
                    cancelled.append(self.uid)
                    raise
                return f"v{self.uid}"

            N = node_class(name, load)

            def t1(uid, leave_waiter):
                async def main():
                    t = asyncio.ensure_future(cacheme.get(N(uid)))
                    await asyncio.sleep(0)  # the leader's flight is out
                    joined.wait(10)
                    t.cancel()
                    try:
                        await t
                    except asyncio.CancelledError:
                        got["leader"] = "cancelled"
                    if not leave_waiter:
                        release.set()
                    for _ in range(200):  # the flight's Task runs here
                        await asyncio.sleep(0.005)
                        if not _core._flights_in_table():
                            break
                asyncio.run(main())

            def t2(uid, leave_waiter):
                async def main():
                    started.wait(10)
                    for _ in range(10000):  # registered at its first suspension
                        if _core._flights_in_table():
                            break
                        time.sleep(0.001)
                    t = asyncio.ensure_future(cacheme.get(N(uid)))
                    for _ in range(3):
                        await asyncio.sleep(0)
                    joined.set()
                    if leave_waiter:
                        await asyncio.sleep(0.1)  # the leader is gone by now
                        t.cancel()
                    t0 = time.monotonic()
                    try:
                        got["waiter"] = await asyncio.wait_for(t, 5)
                    except asyncio.CancelledError:
                        got["waiter"] = "cancelled"
                    if time.monotonic() - t0 > 1.5:  # woken by its own loop's next event
                        got["waiter"] = "late"
                try:
                    asyncio.run(main())
                except BaseException as e:
                    got["waiter"] = repr(e)

            for uid, leave in ((1, False), (2, True)):
                started.clear(); joined.clear(); release.clear()
                ths = [threading.Thread(target=t1, args=(uid, leave)),
                       threading.Thread(target=t2, args=(uid, leave))]
                [t.start() for t in ths]
                [t.join(30) for t in ths]
                print(uid, got["leader"], got["waiter"], loads.count(uid), cancelled.count(uid),
                      _core._flights_in_table())
            """
        )
    )
    assert out.splitlines() == ["1 cancelled v1 1 0 0", "2 cancelled cancelled 1 1 0"], out


def test_callbacks_of_two_threads_at_once():
    """Thread 1 sits inside a cacheme wake-up callback (its resumed task
    blocks, releasing the GIL) while thread 2's loop runs one: with one
    shared Context, thread 2's fails ("already entered") and its waiter is
    never woken."""
    out = ok(
        run_shape(
            """
            name = local("l")
            in_cb, t2_done = threading.Event(), threading.Event()
            got = {}

            async def load(self):
                await asyncio.sleep(0.01)
                return f"v{self.uid}"

            N = node_class(name, load)

            async def leader_and_waiter(uid, after):
                lead = asyncio.ensure_future(cacheme.get(N(uid)))
                await asyncio.sleep(0)

                async def waiter():
                    v = await cacheme.get(N(uid))  # woken from cacheme's wake-up callback
                    after()
                    return v

                return await asyncio.gather(lead, waiter())

            def t1():
                def block():
                    in_cb.set()
                    t2_done.wait(10)
                got[1] = asyncio.run(leader_and_waiter(1, block))

            def t2():
                in_cb.wait(10)
                try:
                    got[2] = asyncio.run(asyncio.wait_for(leader_and_waiter(2, lambda: None), 5))
                except BaseException as e:
                    got[2] = repr(e)
                t2_done.set()

            ths = [threading.Thread(target=t1), threading.Thread(target=t2)]
            [t.start() for t in ths]
            [t.join(30) for t in ths]
            print(got[1], got[2])
            """
        )
    )
    assert out.split() == ["['v1',", "'v1']", "['v2',", "'v2']"], out


def test_threads_each_with_its_own_loop_stress():
    """4 threads x own loop x 5 s, shared and disjoint keys on one local
    storage (short TTL: loads, flights joined across threads): every value
    right, no error, no get slower than 0.5 s."""
    out = ok(
        run_shape(
            """
            import random
            name = local("l", size=200)
            loads = {}

            async def load(self):
                loads[self.uid] = loads.get(self.uid, 0) + 1
                if self.uid % 3 == 0:
                    await asyncio.sleep(0.001)
                elif self.uid % 3 == 1:
                    await asyncio.sleep(0)
                return self.uid * 7

            N = node_class(name, load)
            N.Meta.caches = [Cache(storage=name, ttl=timedelta(milliseconds=20))]
            res = {}

            def worker(tid):
                async def one(uid):
                    t0 = time.perf_counter()
                    v = await cacheme.get(N(uid))
                    assert v == uid * 7, (uid, v)
                    return time.perf_counter() - t0

                async def main():
                    rnd = random.Random(tid)
                    n, worst, end = 0, 0.0, time.monotonic() + 5
                    while time.monotonic() < end:
                        shared = [rnd.randrange(40) for _ in range(20)]
                        own = [1000 * (tid + 1) + rnd.randrange(40) for _ in range(20)]
                        ds = await asyncio.wait_for(
                            asyncio.gather(*(one(u) for u in shared + own)), 5)
                        n += len(ds)
                        worst = max(worst, *ds)
                    return n, worst

                try:
                    res[tid] = asyncio.run(main())
                except BaseException as e:
                    res[tid] = repr(e)

            ths = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
            [t.start() for t in ths]
            [t.join(60) for t in ths]
            print(res)
            print("gets", sum(r[0] for r in res.values()))
            print("worst", max(r[1] for r in res.values()))
            print("flights", _core._flights_in_table())
            """,
            timeout=120,
        )
    )
    lines = out.splitlines()
    assert int(lines[1].split()[1]) > 1000, out
    assert float(lines[2].split()[1]) < 0.5, out
    assert lines[3] == "flights 0", out


# ---- fork ----------------------------------------------------------------------------


def test_fork_while_a_key_is_in_flight_child_loads_it_itself():
    out = ok(
        run_shape(
            """
            name = local("l")
            release = None

            async def load(self):
                await release.wait()
                return f"v{os.getpid() == parent}"

            N = node_class(name, load)
            parent = os.getpid()
            loop = asyncio.new_event_loop()
            release = asyncio.Event()
            lead = loop.create_task(cacheme.get(N(1)))
            loop.run_until_complete(asyncio.sleep(0.01))
            assert _core._flights_in_table() == 1
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    async def child():
                        global release
                        release = asyncio.Event()
                        release.set()
                        return await asyncio.wait_for(cacheme.get(N(1)), 3)
                    v = asyncio.run(child())
                    print("child", v, flush=True)
                    code = 0 if v == "vFalse" else 1
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            loop.call_soon(release.set)
            print("parent", loop.run_until_complete(lead), os.waitstatus_to_exitcode(status))
            """
        )
    )
    assert out.split() == ["child", "vFalse", "parent", "vTrue", "0"], out


def test_fork_from_a_coroutine_cacheme_resumed():
    """The child forks from inside cacheme's wake-up callback (its Context
    entered) and runs a loop of its own: its cacheme callbacks must work."""
    out = ok(
        run_shape(
            """
            name = local("l")

            async def load(self):
                await asyncio.sleep(0.01)
                return self.uid * 2

            N = node_class(name, load)

            async def in_child():
                lead = asyncio.ensure_future(cacheme.get(N(10)))
                await asyncio.sleep(0)
                return await asyncio.wait_for(asyncio.gather(lead, cacheme.get(N(10))), 3)

            async def waiter():
                v = await cacheme.get(N(1))  # resumed by cacheme's wake-up callback
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        asyncio.events._set_running_loop(None)
                        r = asyncio.run(in_child())
                        print("child", r, flush=True)
                        code = 0
                    except BaseException as e:
                        print("child", repr(e), flush=True)
                    finally:
                        os._exit(code)
                _, status = os.waitpid(pid, 0)
                return v, os.waitstatus_to_exitcode(status)

            async def main():
                lead = asyncio.ensure_future(cacheme.get(N(1)))
                await asyncio.sleep(0)
                print("parent", await asyncio.gather(lead, waiter()))

            asyncio.run(main())
            """
        )
    )
    assert out.splitlines() == ["child [20, 20]", "parent [2, (2, 0)]"], out


# ---- Meta.load_timeout ------------------------------------------------------------------


def test_load_timeout_fails_every_caller_and_cancels_the_load():
    out = ok(
        run_shape(
            """
            name = local("l")
            cancelled = []

            async def load(self):
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    cancelled.append(self.uid)
                    raise
                return 1

            N = node_class(name, load, load_timeout=timedelta(milliseconds=50))

            async def main():
                t0 = time.monotonic()
                res = await asyncio.gather(*(cacheme.get(N(1)) for _ in range(5)),
                                           return_exceptions=True)
                print([type(r).__name__ for r in res], time.monotonic() - t0 < 5)
                print("cancelled", cancelled, "flights", _core._flights_in_table())
                # a load within its timeout is untouched
                async def quick(self):
                    await asyncio.sleep(0.001)
                    return "q"
                print(await cacheme.get(N(2), load_fn=quick))

            asyncio.run(main())
            """
        )
    )
    assert out.splitlines() == [
        "['TimeoutError', 'TimeoutError', 'TimeoutError', 'TimeoutError', 'TimeoutError'] True",
        "cancelled [1] flights 0",
        "q",
    ], out


def test_load_timeout_memoize_and_get_all():
    out = ok(
        run_shape(
            """
            name = local("l")

            async def load(self):
                await asyncio.sleep(30)

            N = node_class(name, load, load_timeout=timedelta(milliseconds=50))

            @cacheme.Memoize(N)
            async def slow(uid):
                await asyncio.sleep(30)

            @slow.to_node
            def _(uid):
                return N(uid)

            async def main():
                for aw in (slow(3), cacheme.get_all([N(4), N(5)])):
                    try:
                        await asyncio.wait_for(aw, 5)
                    except TimeoutError as e:
                        print("timeout", "cacheme" in str(e))
                print("flights", _core._flights_in_table())

            asyncio.run(main())
            """
        )
    )
    assert out.splitlines() == ["timeout True", "timeout True", "flights 0"], out


def test_load_timeout_must_be_a_timedelta():
    out = ok(
        run_shape(
            """
            N = node_class(local("l"), None, load_timeout=5)
            try:
                N(1).full_key()
            except TypeError as e:
                print("TypeError", "load_timeout" in str(e))
            """
        )
    )
    assert out.split() == ["TypeError", "True"], out


# ---- a failed flight woken inline ------------------------------------------------------


def test_failed_flight_woken_inline_is_not_joined():
    """When its loop refuses call_soon, a waiter of a failed flight is woken
    inline, before the flight was taken out of the table: its task's next
    get() of the key found a done flight with no value (NULL handed out)."""
    out = ok(
        run_shape(
            """
            name = local("l")
            loads = []

            class Loop(asyncio.SelectorEventLoop):
                fail = False

                def call_soon(self, *a, **k):
                    if self.fail:
                        raise RuntimeError("call_soon refused")
                    return super().call_soon(*a, **k)

            async def load(self):
                loads.append(1)
                if len(loads) == 1:
                    await gate
                    raise KeyError("first")
                return "second"

            N = node_class(name, load)
            loop = Loop()
            asyncio.set_event_loop(loop)
            gate = loop.create_future()
            got = []

            async def waiter():
                try:
                    await cacheme.get(N(1))
                except KeyError:
                    got.append("KeyError")
                v = await cacheme.get(N(1))  # woken inline: the failed flight must be gone
                loop.fail = False
                got.append(v)
                return v

            def finish(it):  # the leader driven by hand, outside any task
                gate.set_result(None)
                loop.fail = True
                try:
                    it.send(None)
                except KeyError:
                    got.append("leader KeyError")
                loop.fail = False

            async def main():
                it = cacheme.get(N(1)).__await__()
                it.send(None)  # the load waits on gate: the flight is out
                w = asyncio.ensure_future(waiter())
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                loop.call_soon(finish, it)
                return await asyncio.wait_for(w, 5)

            loop.run_until_complete(main())
            print(got, len(loads), _core._flights_in_table())
            """
        )
    )
    assert out.split("\n")[0] == "['KeyError', 'second', 'leader KeyError'] 2 0", out
