import asyncio
import contextlib
import dataclasses
import itertools
import os
import subprocess
import sys
import textwrap

import pytest

import cacheme
from cacheme import _core
from cacheme.serializer import MsgPackSerializer

_names = itertools.count()

# make test-asan / test-debug: the suite must run against that build, not
# an in-place one that happens to come first on sys.path
_expect_core = os.environ.get("CACHEME_EXPECT_CORE")
if _expect_core and not os.path.abspath(_core.__file__).startswith(_expect_core):
    raise RuntimeError(f"cacheme._core is {_core.__file__}, expected a build under {_expect_core}")


# make test-uvloop: the suite's event loops are uvloop's (what uvicorn uses
# when it is installed); asyncio's own otherwise
TEST_LOOP = os.environ.get("CACHEME_TEST_LOOP", "asyncio")
if TEST_LOOP == "uvloop":
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
elif TEST_LOOP != "asyncio":
    raise RuntimeError(f"CACHEME_TEST_LOOP={TEST_LOOP!r}: 'asyncio' or 'uvloop'")


# what counts the sleeps of asyncio's selector, which uvloop has not (busy
# polling on uvloop is checked in test_uvloop.py)
_SPIN_TESTS = ("test_busy_poll_answers_sequential",)


def pytest_collection_modifyitems(config, items):
    if TEST_LOOP != "uvloop":
        return
    skip = pytest.mark.skip(reason="counts the sleeps of asyncio's selector")
    for item in items:
        if item.name.startswith(_SPIN_TESTS):
            item.add_marker(skip)


def unique(prefix: str = "s") -> str:
    return f"{prefix}{next(_names)}"


async def wait_for(cond, what: str, timeout: float = 30.0):
    """Poll cond() on the loop until true (a bound on the wait, not a timing
    assertion: it fails only when the event never happens)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


def make_user_node(caches, serializer=MsgPackSerializer(), version="v1", sleep=0.0):
    """The storage modules' node class, under a unique name: users keyed
    "user:<uid>", cached in caches, whose load (after sleep seconds, if any)
    returns {"uid": uid, "name": "u<uid>"}. Returns the class and the list of
    the uids it loaded, in order."""
    calls = []

    @dataclasses.dataclass
    class UserNode(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"user:{self.uid}"

        async def load(self):
            calls.append(self.uid)
            if sleep:
                await asyncio.sleep(sleep)
            return {"uid": self.uid, "name": f"u{self.uid}"}

        class Meta(cacheme.Node.Meta):
            pass

    UserNode.Meta.version = version
    UserNode.Meta.caches = caches
    UserNode.Meta.serializer = serializer
    UserNode.__qualname__ = unique("UserNode")
    return UserNode, calls


@pytest.fixture
def storage_name():
    return unique("local")


@pytest.fixture(autouse=True)
def _reset_prefix():
    yield
    cacheme.set_prefix("cacheme")


async def register_local(policy: str = "tlfu", size: int = 1000) -> str:
    name = unique(f"local-{policy}-")
    await cacheme.register_storage(name, cacheme.Storage(url=f"local://{policy}", size=size))
    return name


def run_python_proc(code: str, timeout: int = 300, env=None) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter with the same cacheme (and this
    environment, updated with env); returns the completed process."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        # not the repo root: its in-place build would shadow PYTHONPATH's
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )


def run_python(code: str, timeout: int = 300) -> str:
    """Run code in a fresh interpreter with the same cacheme; returns stdout."""
    r = run_python_proc(code, timeout)
    assert r.returncode == 0, f"subprocess failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def flights() -> int:
    return _core._flights_in_table()


@contextlib.contextmanager
def count_sleeps():
    """Count the running loop's selector calls that may sleep (timeout not 0)."""
    sel = asyncio.get_running_loop()._selector
    orig, sleeps = sel.select, [0]

    def select(timeout=None):
        if timeout is None or timeout > 0:
            sleeps[0] += 1
        return orig(timeout)

    sel.select = select
    try:
        yield sleeps
    finally:
        del sel.select


# Leak harnesses: code run in a fresh interpreter (run_python) prints
# "objects_before objects_after rss_before rss_after" around a long loop.
LEAK_SNAPSHOT = '''
import gc

def rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4

def snapshot():
    gc.collect()
    return len(gc.get_objects()), rss_kb()
'''


def assert_flat(out: str, rss_kib: int) -> None:
    """Live objects and memory flat between the two snapshots in out."""
    objs_before, objs_after, rss_before, rss_after = map(int, out.split())
    assert objs_after - objs_before < 200, (objs_before, objs_after)
    if os.environ.get("CACHEME_EXPECT_BUILD") != "asan":  # ASan's quarantine keeps freed memory
        assert rss_after - rss_before < rss_kib, (rss_before, rss_after)  # KiB


class ReadyTask:
    """A task that is always ready to run (it only yields), counting its
    steps: `async with ReadyTask() as t: ...; t.ticks`."""

    def __init__(self):
        self.ticks = 0
        self._stop = False
        self._task = None

    async def _run(self):
        while not self._stop:
            self.ticks += 1
            await asyncio.sleep(0)

    async def __aenter__(self):
        self._task = asyncio.ensure_future(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc):
        self._stop = True
        await self._task


def needs_two_cpus() -> None:
    """Skip where busy polling is off by default (one usable CPU)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("busy polling is off with one usable CPU")


def assert_spun(hits, timeouts, info):
    """The loop spun for the replies of 200 sequential gets: on a quiet
    machine nearly every reply is caught by a spin. On a loaded one (an ASan
    build next to other jobs) a local reply can take over the 5 ms limit,
    and a spin that times out makes the next requests skip spinning for a
    while (the rule that keeps a slow server cheap): then the spins tried
    are what shows the loop can spin."""
    if timeouts == 0:
        assert hits >= 100, info
    else:
        assert hits + timeouts >= 1, info


async def spin_skips_ready_tasks(s, get):
    """100 awaited get() while another task is always ready: the loop never
    spins (s.busy_poll_info() unchanged), and the task runs while each
    request is out."""
    async with ReadyTask() as other:
        before, start = s.busy_poll_info(), other.ticks
        for _ in range(100):
            await get()
        after = s.busy_poll_info()
    assert other.ticks - start >= 100
    assert after == before


async def spins_back_off_on_a_slow_server(port, connect, get):
    """Replies held 3 ms by a proxy to the server on port, limit 0.2 ms:
    about log2(100) spins for 100 gets. connect(proxy_port) returns the
    storage ready for get(storage)."""
    needs_two_cpus()
    from delay_proxy import DelayProxy

    proxy = DelayProxy("127.0.0.1", port, 0.003)
    try:
        s = await connect(proxy.port)
        before = s.busy_poll_info()
        for _ in range(100):
            await get(s)
        info = s.busy_poll_info()
        await s.close()
    finally:
        proxy.close()
    assert info["busy_poll_hits"] == before["busy_poll_hits"] == 0, info
    assert 3 <= info["busy_poll_timeouts"] - before["busy_poll_timeouts"] <= 8, info
