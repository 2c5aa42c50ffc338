"""Freshness options of a node's Meta: refresh_after (stale-while-revalidate),
early_refresh (XFetch) and stale_if_error.

Time is moved with _core._advance_clock(ns), the core's test clock (TTLs and
ages read it; it only moves forward), so nothing here sleeps for a TTL. A
gate (asyncio.Event) holds a load where a test needs to see who waits."""
import asyncio
import dataclasses
import logging
import sys
import uuid
from datetime import timedelta

import pytest

import cacheme
from cacheme import Cache, Memoize, Node, _core
from cacheme.serializer import PickleSerializer
from conftest import register_local, unique
from redis_servers import _redis_session_server, needs_redis, redis_server  # noqa: F401

S = 10**9  # ns


def advance(seconds: float) -> None:
    _core._advance_clock(int(seconds * S))


@pytest.fixture(autouse=True)
def _real_clock_after():
    """The clock goes back after each test: the updated_at that Redis values
    get would otherwise be ahead for the tests that come next. Each test
    uses its own stores, which nothing reads after it."""
    yield
    _core._reset_clock()


class Source:
    """What the loads of a test see and do: a version number per key that
    each load bumps, an optional gate and an optional failure."""

    def __init__(self):
        self.loads = []
        self.gate = None
        self.fail = None

    async def load(self, uid):
        self.loads.append(uid)
        if self.gate is not None:
            await self.gate.wait()
        else:
            await asyncio.sleep(0.001)  # a load that takes time (early_refresh's delta)
        if self.fail is not None:
            raise self.fail
        return (uid, self.loads.count(uid))


def make_node(caches, src, **meta):
    @dataclasses.dataclass
    class FreshNode(Node):
        uid: int

        def key(self) -> str:
            return f"fresh:{self.uid}"

        async def load(self):
            return await src.load(self.uid)

        class Meta(Node.Meta):
            pass

    FreshNode.Meta.version = unique("v")  # keys of one test only
    FreshNode.Meta.caches = caches
    for k, v in meta.items():
        setattr(FreshNode.Meta, k, v)
    return FreshNode


async def settle():
    """Let background refreshes (Tasks) finish their non-gated loads."""
    for _ in range(5):
        await asyncio.sleep(0.005)


# ------------------------------------------------------------ configuration


async def test_options_are_off_by_default_and_checked():
    local = await register_local()
    src = Source()
    N = make_node([Cache(local, timedelta(seconds=10))], src)
    assert await cacheme.get(N(1)) == (1, 1)
    advance(9)
    assert await cacheme.get(N(1)) == (1, 1)
    await settle()
    assert src.loads == [1]
    assert cacheme.stats(N).refresh_counts() == {"background": 0, "early": 0, "stale_if_error": 0}
    for name, bad in (("refresh_after", 5), ("refresh_after", timedelta(0)),
                      ("stale_if_error", "1s"), ("stale_if_error", timedelta(seconds=-1)),
                      ("early_refresh", True), ("early_refresh", 0), ("early_refresh", "1"),
                      ("early_refresh", float("inf"))):
        Bad = make_node([Cache(local, timedelta(seconds=10))], src, **{name: bad})
        with pytest.raises(TypeError, match=f"Meta.{name} must be"):
            await cacheme.get(Bad(1))


# ------------------------------------------------------------ refresh_after


async def test_refresh_after_returns_the_old_value_at_once_and_reloads_once():
    local = await register_local()
    src = Source()
    N = make_node([Cache(local, timedelta(seconds=60))], src, refresh_after=timedelta(seconds=5))
    assert await cacheme.get(N(1)) == (1, 1)
    advance(3)
    assert await cacheme.get(N(1)) == (1, 1)  # young enough: no refresh
    await settle()
    assert src.loads == [1]
    src.gate = asyncio.Event()
    advance(3)  # 6 s old: due
    # many callers at once: each gets the old value without waiting for the
    # load (which is held by the gate), and one load runs
    got = await asyncio.wait_for(asyncio.gather(*[cacheme.get(N(1)) for _ in range(50)]), 5)
    assert got == [(1, 1)] * 50
    await asyncio.sleep(0.01)
    assert src.loads == [1, 1]
    assert _core._flights_in_table() == 1
    assert await cacheme.get(N(1)) == (1, 1)  # still in flight: no second load
    src.gate.set()
    await settle()
    assert _core._flights_in_table() == 0
    assert await cacheme.get(N(1)) == (1, 2)  # the refreshed value, young again
    await settle()
    assert src.loads == [1, 1]
    assert cacheme.stats(N).refresh_counts()["background"] == 1
    m = cacheme.stats(N)
    assert m.load_success_count() == 2


async def test_refresh_after_refills_every_local_cache():
    a, b = await register_local(), await register_local("lru")
    src = Source()
    N = make_node([Cache(a, timedelta(seconds=60)), Cache(b, timedelta(seconds=60))], src,
                  refresh_after=timedelta(seconds=1))
    await cacheme.get(N(1))
    advance(2)
    assert await cacheme.get(N(1)) == (1, 1)
    await settle()
    for name in (a, b):
        store = cacheme.data.get_storage_by_name(name)._local
        assert store.get(N(1).full_key()) == (1, 2)


async def test_a_failing_background_refresh_keeps_the_value_and_is_logged(caplog):
    local = await register_local()
    src = Source()
    N = make_node([Cache(local, timedelta(seconds=60))], src, refresh_after=timedelta(seconds=1))
    await cacheme.get(N(1))
    src.fail = ValueError("source down")
    advance(2)
    with caplog.at_level(logging.WARNING, logger="cacheme"):
        assert await cacheme.get(N(1)) == (1, 1)
        await settle()
    assert any("background refresh" in r.getMessage() and "source down" in r.getMessage()
               for r in caplog.records)
    assert cacheme.stats(N).load_failure_count() == 1
    assert _core._flights_in_table() == 0
    # the old value stays, and the next hit tries again
    src.fail = None
    assert await cacheme.get(N(1)) == (1, 1)
    await settle()
    assert await cacheme.get(N(1)) == (1, 3)
    assert cacheme.stats(N).refresh_counts()["background"] == 2


async def refresh_held_then_expired(**meta):
    """A node whose refresh of key 1 is held by the gate, and whose cached
    value has expired since: callers miss and join the refresh."""
    local = await register_local()
    src = Source()
    N = make_node([Cache(local, timedelta(seconds=10))], src, refresh_after=timedelta(seconds=1),
                  **meta)
    await cacheme.get(N(1))
    src.gate = asyncio.Event()
    advance(2)
    assert await cacheme.get(N(1)) == (1, 1)  # starts the refresh, held by the gate
    advance(10)
    return N, src


async def test_cancelled_callers_do_not_cancel_a_background_refresh():
    N, src = await refresh_held_then_expired()
    first = asyncio.ensure_future(cacheme.get(N(1)))
    second = asyncio.ensure_future(cacheme.get(N(1)))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.01)
    assert first.cancelled()
    assert src.loads == [1, 1]  # they joined the refresh's flight
    src.gate.set()
    assert await asyncio.wait_for(second, 5) == (1, 2)
    await settle()
    assert await cacheme.get(N(1)) == (1, 2)
    assert src.loads == [1, 1]


async def test_the_only_waiter_of_a_refresh_leaving_does_not_cancel_it():
    N, src = await refresh_held_then_expired()
    only = asyncio.ensure_future(cacheme.get(N(1)))
    await asyncio.sleep(0.01)
    only.cancel()
    await asyncio.sleep(0.01)
    src.gate.set()
    await settle()
    assert src.loads == [1, 1]
    assert await cacheme.get(N(1)) == (1, 2)  # the refresh finished and filled


async def test_callers_waiting_on_a_failed_refresh_get_the_kept_value():
    N, src = await refresh_held_then_expired(stale_if_error=timedelta(seconds=30))
    waiting = [asyncio.ensure_future(cacheme.get(N(1))) for _ in range(3)]
    await asyncio.sleep(0.01)
    src.fail = ValueError("down")
    src.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == [(1, 1)] * 3
    assert src.loads == [1, 1]
    assert cacheme.stats(N).refresh_counts()["stale_if_error"] == 1


def test_a_due_hit_before_its_loop_runs_starts_no_refresh_and_reports_nothing():
    # asyncio.run(get(node)) calls get() with no loop running: the hit is
    # served; the refresh waits for a hit inside a loop
    src = Source()

    async def setup():
        local = await register_local()
        N = make_node([Cache(local, timedelta(seconds=60))], src,
                      refresh_after=timedelta(seconds=1))
        await cacheme.get(N(1))
        return N

    N = asyncio.run(setup())
    advance(2)
    unraisable = []
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        aw = cacheme.get(N(1))
    finally:
        sys.unraisablehook = old_hook

    async def wait(aw):
        return await aw

    assert asyncio.run(wait(aw)) == (1, 1)
    assert unraisable == []
    assert src.loads == [1]

    async def in_loop():
        assert await cacheme.get(N(1)) == (1, 1)
        await settle()
        return await cacheme.get(N(1))

    assert asyncio.run(in_loop()) == (1, 2)


async def test_refresh_after_with_load_fn_and_memoize():
    local = await register_local()
    src = Source()
    N = make_node([Cache(local, timedelta(seconds=60))], src, refresh_after=timedelta(seconds=1))
    calls = []

    async def load_fn(node):
        calls.append(node.uid)
        return ("fn", len(calls))

    assert await cacheme.get(N(7), load_fn=load_fn) == ("fn", 1)
    advance(2)
    assert await cacheme.get(N(7), load_fn=load_fn) == ("fn", 1)
    await settle()
    assert await cacheme.get(N(7), load_fn=load_fn) == ("fn", 2)  # the refresh used load_fn

    M = make_node([Cache(local, timedelta(seconds=60))], src, refresh_after=timedelta(seconds=1))
    args = []

    @Memoize(M)
    async def fetch(uid: int, scale: int = 1):
        args.append((uid, scale))
        return uid * scale * len(args)

    @fetch.to_node
    def _(uid: int, scale: int = 1):
        return M(uid)

    assert await fetch(3, scale=10) == 30
    advance(2)
    assert await fetch(3, scale=10) == 30
    await settle()
    assert args == [(3, 10), (3, 10)]
    assert await fetch(3, scale=10) == 60


async def test_a_value_filled_by_get_all_ages_too():
    local = await register_local()
    src = Source()
    N = make_node([Cache(local, timedelta(seconds=60))], src, refresh_after=timedelta(seconds=1))
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]
    advance(2)
    assert await cacheme.get(N(2)) == (2, 1)
    await settle()
    assert await cacheme.get(N(2)) == (2, 2)


# ------------------------------------------------------------ early_refresh


async def test_early_refresh_with_a_huge_beta_always_refreshes_behind_a_hit():
    # P(refresh) = exp(-(time to expiry) / (beta * delta)): with beta * delta
    # in the millions of seconds and 60 s to go, 1 - P < 1e-4
    local = await register_local()
    src = Source()
    N = make_node([Cache(local, timedelta(seconds=60))], src, early_refresh=1e9)
    assert await cacheme.get(N(1)) == (1, 1)
    for i in range(1, 6):
        assert await cacheme.get(N(1)) == (1, i)  # the value before this refresh
        await settle()
    assert cacheme.stats(N).refresh_counts()["early"] == 5
    assert src.loads == [1] * 6


async def test_early_refresh_with_a_tiny_beta_never_refreshes_early():
    # beta * delta below a microsecond: refreshed only within that of expiry
    local = await register_local()
    src = Source()
    N = make_node([Cache(local, timedelta(seconds=60))], src, early_refresh=1e-6)
    await cacheme.get(N(1))
    advance(59)
    for _ in range(200):
        assert await cacheme.get(N(1)) == (1, 1)
    await settle()
    assert src.loads == [1]
    assert cacheme.stats(N).refresh_counts()["early"] == 0


async def test_early_refresh_probability_grows_near_expiry():
    # P(refresh) = exp(-T / (beta * delta)), T the time to expiry. Loads of
    # about 50 ms (delta) and beta = 100: beta * delta is about 5 s (more on
    # a slow machine, which only raises P). One draw per key, 200 keys.
    # T = 3000 s: P = exp(-600), never. T under 0.5 s: P > 0.9.
    local = await register_local(size=1000)
    slow = Source()

    async def load(uid):
        slow.loads.append(uid)
        await asyncio.sleep(0.05)
        return uid

    slow.load = load
    N = make_node([Cache(local, timedelta(seconds=3600))], slow, early_refresh=100.0)
    await asyncio.gather(*[cacheme.get(N(i)) for i in range(200)])
    assert cacheme.stats(N).total_load_time() >= 200 * 0.05 * S
    advance(600)
    for i in range(200):
        assert await cacheme.get(N(i)) == i
    assert cacheme.stats(N).refresh_counts()["early"] == 0
    advance(3000 - 0.5)
    for i in range(200):
        assert await cacheme.get(N(i)) == i  # never waiting for the refresh
    near = cacheme.stats(N).refresh_counts()["early"]
    assert near > 150, near
    await asyncio.sleep(0.2)
    assert len(slow.loads) == 200 + near


# ------------------------------------------------------------ stale_if_error


async def test_stale_if_error_returns_the_expired_value_within_its_window(caplog):
    local = await register_local()
    src = Source()
    N = make_node([Cache(local, timedelta(seconds=10))], src,
                  stale_if_error=timedelta(seconds=30))
    assert await cacheme.get(N(1)) == (1, 1)
    store = cacheme.data.get_storage_by_name(local)._local
    advance(11)
    # expired: a plain read of the store misses, a load runs
    assert store.get(N(1).full_key()) is None
    assert N(1).full_key() not in store
    assert await cacheme.get(N(1)) == (1, 2)
    src.fail = ConnectionError("db down")
    src.gate = asyncio.Event()
    advance(11)  # expired 1 s ago
    with caplog.at_level(logging.WARNING, logger="cacheme"):
        callers = [asyncio.ensure_future(cacheme.get(N(1))) for _ in range(10)]
        await asyncio.sleep(0.01)
        src.gate.set()
        assert await asyncio.gather(*callers) == [(1, 2)] * 10  # one load, all get the stale value
    assert src.loads == [1, 1, 1]
    logged = [r for r in caplog.records if "stale_if_error" in r.getMessage()]
    assert len(logged) == 1 and "db down" in logged[0].getMessage()
    assert cacheme.stats(N).refresh_counts()["stale_if_error"] == 1
    # the stale value is not refilled: once the window is over, the error shows
    advance(30)
    with pytest.raises(ConnectionError, match="db down"):
        await cacheme.get(N(1))
    assert cacheme.stats(N).refresh_counts()["stale_if_error"] == 1


async def test_stale_if_error_covers_a_load_that_raises_before_awaiting():
    local = await register_local()
    state = {"fail": False}

    @dataclasses.dataclass
    class Sync(Node):
        uid: int

        def key(self) -> str:
            return f"sync:{self.uid}"

        def load(self):  # not async: raises when called
            if state["fail"]:
                raise RuntimeError("no")

            async def value():
                return self.uid

            return value()

        class Meta(Node.Meta):
            version = unique("v")
            caches = [Cache(local, timedelta(seconds=10))]
            stale_if_error = timedelta(seconds=10)

    assert await cacheme.get(Sync(4)) == 4
    state["fail"] = True
    advance(12)
    assert await cacheme.get(Sync(4)) == 4
    advance(10)
    with pytest.raises(RuntimeError, match="no"):
        await cacheme.get(Sync(4))


async def test_without_stale_if_error_an_expired_value_is_gone():
    local = await register_local()
    src = Source()
    N = make_node([Cache(local, timedelta(seconds=10))], src, refresh_after=timedelta(seconds=5))
    await cacheme.get(N(1))
    src.fail = ValueError("x")
    advance(11)
    with pytest.raises(ValueError):
        await cacheme.get(N(1))
    assert cacheme.stats(N).refresh_counts()["stale_if_error"] == 0


async def test_a_node_without_options_does_not_see_a_kept_stale_entry():
    # two node classes share a store: the entries kept for one's
    # stale_if_error are expired for the other
    local = await register_local()
    src = Source()
    F = make_node([Cache(local, timedelta(seconds=10))], src, stale_if_error=timedelta(seconds=60))
    P = make_node([Cache(local, timedelta(seconds=10))], src)
    P.Meta.version = F.Meta.version
    await cacheme.get(F(1))
    assert await cacheme.get(P(1)) == (1, 1)  # same full key, a hit
    advance(11)
    assert await cacheme.get(P(1)) == (1, 2)  # expired for P: loaded again


# ------------------------------------------------------------ remote chains


async def _chain_refreshes_the_remote(remote_name):
    local = await register_local()
    src = Source()
    N = make_node([Cache(local, timedelta(seconds=60)), Cache(remote_name, timedelta(seconds=60))],
                  src, refresh_after=timedelta(seconds=1))
    R = make_node([Cache(remote_name, timedelta(seconds=60))], src)  # reads the remote only
    R.Meta.version = N.Meta.version
    N.Meta.serializer = R.Meta.serializer = PickleSerializer()
    assert await cacheme.get(N(1)) == (1, 1)
    assert await cacheme.get(R(1)) == (1, 1)
    src.gate = asyncio.Event()
    advance(2)
    assert await asyncio.wait_for(cacheme.get(N(1)), 5) == (1, 1)  # not waiting for the load
    src.gate.set()
    await settle()
    for _ in range(100):  # the remote fill follows the local one
        if await cacheme.get(R(1)) == (1, 2):
            break
        await asyncio.sleep(0.01)
    assert await cacheme.get(R(1)) == (1, 2)
    assert await cacheme.get(N(1)) == (1, 2)
    assert src.loads == [1, 1]
    assert cacheme.stats(N).storage_stats()[remote_name]["sets"] == 2


@needs_redis
async def test_refresh_after_refills_redis(redis_server):
    name = unique("fresh-redis-")
    await cacheme.register_storage(name, cacheme.Storage(url=redis_server.url))
    await _chain_refreshes_the_remote(name)


async def test_refresh_after_refills_sqlite(tmp_path):
    name = unique("fresh-sqlite-")
    await cacheme.register_storage(name, cacheme.Storage(
        url=f"sqlite:///{tmp_path}/fresh.db", table=unique("cm_fresh"), create_table=True))
    await _chain_refreshes_the_remote(name)


async def local_then_redis(redis_server, src, ttl, **meta):
    """A node caching in a new local store, then in Redis; the store and
    the Redis storage."""
    name = unique("fresh-redis-")
    await cacheme.register_storage(name, cacheme.Storage(url=redis_server.url))
    local = await register_local()
    N = make_node([Cache(local, ttl), Cache(name, ttl)], src, **meta)
    N.Meta.serializer = PickleSerializer()
    get_storage = cacheme.data.get_storage_by_name
    return N, get_storage(local)._local, get_storage(name)


@needs_redis
async def test_stale_if_error_of_a_local_cache_in_front_of_redis(redis_server):
    src = Source()
    N, _, redis = await local_then_redis(redis_server, src, timedelta(seconds=10),
                                         stale_if_error=timedelta(seconds=30))
    assert await cacheme.get(N(1)) == (1, 1)
    await redis.remove(N(1))  # only the local cache keeps it
    src.fail = ValueError("down")
    advance(11)
    assert await cacheme.get(N(1)) == (1, 1)


async def test_get_all_hits_start_refreshes_too():
    local = await register_local()
    src = Source()
    N = make_node([Cache(local, timedelta(seconds=60))], src, refresh_after=timedelta(seconds=1))
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]
    advance(2)
    src.gate = asyncio.Event()
    got = await asyncio.wait_for(cacheme.get_all([N(1), N(2), N(1)]), 5)
    assert got == [(1, 1), (2, 1), (1, 1)]  # at once, the old values
    await asyncio.sleep(0.01)
    assert sorted(src.loads) == [1, 1, 2, 2]
    src.gate.set()
    await settle()
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 2), (2, 2)]
    assert cacheme.stats(N).refresh_counts()["background"] == 2


# ------------------------------------------------------------ Redis alone


async def _redis_node(redis_server, src, **meta):
    name = unique("fresh-redis-")
    await cacheme.register_storage(name, cacheme.Storage(url=redis_server.url))
    N = make_node([Cache(name, timedelta(seconds=60))], src, **meta)
    N.Meta.serializer = PickleSerializer()
    return N, cacheme.data.get_storage_by_name(name)._storage


@needs_redis
async def test_refresh_after_on_redis_reads_the_age_from_updated_at(redis_server):
    src = Source()
    N, client = await _redis_node(redis_server, src, refresh_after=timedelta(seconds=5))
    assert await cacheme.get(N(1)) == (1, 1)
    assert await cacheme.get(N(1)) == (1, 1)  # a Redis hit, 0 s old
    await settle()
    assert src.loads == [1]
    src.gate = asyncio.Event()
    advance(6)  # updated_at is now 6 s ago
    assert await asyncio.wait_for(cacheme.get(N(1)), 5) == (1, 1)
    await asyncio.sleep(0.01)
    assert src.loads == [1, 1]
    # while the refresh runs, callers read Redis past its flight: no waiting
    got = await asyncio.wait_for(asyncio.gather(*[cacheme.get(N(1)) for _ in range(20)]), 5)
    assert got == [(1, 1)] * 20
    assert src.loads == [1, 1]
    src.gate.set()
    await settle()
    assert await cacheme.get(N(1)) == (1, 2)
    assert cacheme.stats(N).refresh_counts()["background"] == 1
    await client.close()


@needs_redis
async def test_callers_that_miss_redis_during_a_refresh_wait_for_it(redis_server):
    src = Source()
    N, client = await _redis_node(redis_server, src, refresh_after=timedelta(seconds=5))
    await cacheme.get(N(1))
    src.gate = asyncio.Event()
    advance(6)
    await cacheme.get(N(1))  # starts the refresh
    await client.execute("DEL", N(1).full_key())  # expired meanwhile
    waiting = [asyncio.ensure_future(cacheme.get(N(1))) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in waiting)
    assert src.loads == [1, 1]  # they joined the refresh, no load of their own
    src.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == [(1, 2)] * 5
    await client.close()


@needs_redis
async def test_early_refresh_on_redis_uses_the_stored_load_time(redis_server):
    src = Source()
    N, client = await _redis_node(redis_server, src, early_refresh=1e9)
    assert await cacheme.get(N(1)) == (1, 1)
    raw = await client.execute("GET", N(1).full_key())
    env = PickleSerializer().loads(raw)
    assert set(env) == {"value", "updated_at", "load_time"}
    assert 0.001 <= env["load_time"] < 5
    assert await cacheme.get(N(1)) == (1, 1)  # huge beta: refreshed behind this hit
    await settle()
    assert await cacheme.get(N(1)) == (1, 2)
    assert cacheme.stats(N).refresh_counts()["early"] >= 1
    await client.close()


@needs_redis
async def test_stale_if_error_on_redis(redis_server):
    src = Source()
    N, client = await _redis_node(redis_server, src, stale_if_error=timedelta(seconds=30))
    assert await cacheme.get(N(1)) == (1, 1)
    # Redis keeps it 60 s + 30 s
    pttl = await client.execute("PTTL", N(1).full_key())
    assert 85_000 < pttl <= 90_000, pttl
    advance(61)  # past the TTL by the value's updated_at: a miss, kept as fallback
    assert await cacheme.get(N(1)) == (1, 2)
    src.fail = ConnectionError("down")
    advance(61)
    assert await cacheme.get(N(1)) == (1, 2)
    assert cacheme.stats(N).refresh_counts()["stale_if_error"] == 1
    advance(30)  # past the window
    with pytest.raises(ConnectionError):
        await cacheme.get(N(1))
    await client.close()


@needs_redis
def test_cacheme_030_reads_a_value_written_with_a_load_time(redis_server, tmp_path):
    """0.3.0 decodes Redis values with RedisStorage.serialize (loads(raw)
    ["value"]): it runs here, in 0.3.0's venv, on the bytes we wrote. That
    venv has no redis package; 0.3.0's module is imported over an empty
    stand-in for it (only its decoding runs, which never uses the client)."""
    import os
    import subprocess

    py030 = os.path.join(os.path.dirname(__file__), "..", ".bench", "venv-030", "bin", "python")
    if not os.path.exists(py030):
        pytest.skip("no .bench/venv-030 (make bench-venvs)")

    async def write():
        src = Source()
        N, client = await _redis_node(redis_server, src, early_refresh=1.0)
        N.Meta.serializer = cacheme.serializer.MsgPackSerializer()
        await cacheme.get(N(1))
        raw = await client.execute("GET", N(1).full_key())
        await client.close()
        return raw

    raw = asyncio.run(write())
    assert b"load_time" in raw
    (tmp_path / "raw").write_bytes(raw)
    code = (
        "import sys, types\n"
        "redis = types.ModuleType('redis'); aio = types.ModuleType('redis.asyncio')\n"
        "cl = types.ModuleType('redis.asyncio.cluster'); cn = types.ModuleType('redis.asyncio.connection')\n"
        "aio.Redis = object; cl.RedisCluster = object; cn.BlockingConnectionPool = object\n"
        "redis.asyncio = aio; aio.cluster = cl; aio.connection = cn\n"
        "sys.modules.update({'redis': redis, 'redis.asyncio': aio, 'redis.asyncio.cluster': cl,\n"
        "                    'redis.asyncio.connection': cn})\n"
        "import cacheme\n"
        "assert 'site-packages' in cacheme.__file__, cacheme.__file__  # 0.3.0's, not ours\n"
        "from cacheme.storages.redis import RedisStorage\n"
        "from cacheme.serializer import MsgPackSerializer\n"
        "raw = open(sys.argv[1], 'rb').read()\n"
        "print(RedisStorage('redis://x').serialize(raw, MsgPackSerializer()).data)\n"
    )
    # -I: neither PYTHONPATH (the sanitizer run points it at our build) nor the cwd
    out = subprocess.run([py030, "-I", "-c", code, str(tmp_path / "raw")], capture_output=True,
                         text=True, timeout=120, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 1]"


@needs_redis
async def test_a_value_filled_from_redis_keeps_its_age_in_the_local_cache(redis_server):
    src = Source()
    N, store, _ = await local_then_redis(redis_server, src, timedelta(seconds=60),
                                         refresh_after=timedelta(seconds=5))
    await copy_keeps_its_age(N, store, src)


async def copy_keeps_its_age(N, store, src):
    """N (refresh_after 5 s) has store, a local cache, in front of another
    cache: the value is read from that other one into store 3 s after it
    was written; 3 s later the copy is due (6 s old, not 3 s)."""
    assert await cacheme.get(N(1)) == (1, 1)
    assert store.remove(N(1).full_key())  # as in another process: only the other has it
    advance(3)
    src.gate = asyncio.Event()
    assert await cacheme.get(N(1)) == (1, 1)  # from the other cache, 3 s old: not due
    await asyncio.sleep(0.01)
    assert src.loads == [1]
    advance(3)
    assert await cacheme.get(N(1)) == (1, 1)  # the copy is 6 s old: due
    await asyncio.sleep(0.01)
    assert src.loads == [1, 1]
    src.gate.set()
    await settle()
    assert await cacheme.get(N(1)) == (1, 2)


# ------------------------------------------------------------ copies keep their age


async def two_locals(src, ttl_b, refresh_after):
    """A node caching in a new tlfu store a (60 s), then a new lru store b
    (ttl_b seconds); the node and both stores."""
    a, b = await register_local(), await register_local("lru")
    N = make_node([Cache(a, timedelta(seconds=60)), Cache(b, timedelta(seconds=ttl_b))], src,
                  refresh_after=timedelta(seconds=refresh_after))
    get_storage = cacheme.data.get_storage_by_name
    return N, get_storage(a)._local, get_storage(b)._local


async def test_a_value_filled_from_a_later_local_cache_keeps_its_age():
    src = Source()
    N, store_a, _ = await two_locals(src, 60, 5)
    await copy_keeps_its_age(N, store_a, src)


async def test_a_value_filled_from_a_later_local_cache_does_not_outlive_it():
    src = Source()
    N, store_a, store_b = await two_locals(src, 10, 100)
    assert await cacheme.get(N(1)) == (1, 1)
    assert store_a.remove(N(1).full_key())
    advance(8)
    assert await cacheme.get(N(1)) == (1, 1)  # from b, which keeps it 2 s more
    assert store_a.get(N(1).full_key()) == (1, 1)
    advance(3)
    # b's copy has expired, and so has a's (capped at b's 2 s, not a's 60 s)
    assert store_b.get(N(1).full_key()) is None
    assert store_a.get(N(1).full_key()) is None
    assert await cacheme.get(N(1)) == (1, 2)


@needs_redis
async def test_a_value_filled_from_redis_does_not_outlive_its_redis_ttl(redis_server):
    """[local, redis] with the same TTL: a value refilled into the local
    cache from Redis lives as long as it has left in Redis, not a whole
    local TTL more (which let a value live almost two TTLs)."""
    src = Source()
    N, store, _ = await local_then_redis(redis_server, src, timedelta(seconds=10),
                                         refresh_after=timedelta(seconds=100))
    assert await cacheme.get(N(1)) == (1, 1)
    assert store.remove(N(1).full_key())  # as in another process: only Redis has it
    advance(8)
    assert await cacheme.get(N(1)) == (1, 1)  # from Redis, 8 s old
    assert store.get(N(1).full_key()) == (1, 1)
    advance(3)  # 11 s since it was written: gone from the local cache too
    assert store.get(N(1).full_key()) is None


@needs_redis
async def test_get_all_does_not_serve_a_redis_value_past_its_ttl(redis_server):
    """With stale_if_error Redis keeps values past their TTL; get_all's
    batch read (MGET) takes their ages and reads those as misses, as get
    does."""
    src = Source()
    N, client = await _redis_node(redis_server, src, stale_if_error=timedelta(seconds=30))
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]
    advance(30)
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]  # within the TTL: hits
    assert sorted(src.loads) == [1, 2]
    await cacheme.get(N(2))  # 30 s old, a hit
    advance(31)  # 61 s old: past the 60 s TTL, still in Redis for stale_if_error
    assert await client.execute("EXISTS", N(1).full_key()) == 1
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 2), (2, 2)]
    assert sorted(src.loads) == [1, 1, 2, 2]
    await client.close()


# ------------------------------------------------------------ PostgreSQL alone

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
async def pg_node():
    """make(src, **meta): a node caching only in a new PostgreSQL table,
    and its client; the tables are dropped after the test, failed or not."""
    if not _core.PgClient.__new__(_core.PgClient).library_available:
        pytest.skip("cacheme built without libpq")
    made = []

    async def make(src, **meta):
        name = unique("fresh-pg-")
        await cacheme.register_storage(name, cacheme.Storage(
            url=PG_URL, table=f"cm_fresh_{uuid.uuid4().hex[:12]}", create_table=True))
        N = make_node([Cache(name, timedelta(seconds=60))], src, **meta)
        N.Meta.serializer = PickleSerializer()
        made.append(cacheme.data.get_storage_by_name(name)._storage)
        return N

    yield make
    for client in made:
        await client.execute(f"DROP TABLE IF EXISTS {client.table}")


async def test_refresh_after_on_postgresql_reads_the_age_from_updated_at(pg_node):
    src = Source()
    N = await pg_node(src, refresh_after=timedelta(seconds=5))
    assert await cacheme.get(N(1)) == (1, 1)
    assert await cacheme.get(N(1)) == (1, 1)  # a PostgreSQL hit, 0 s old
    await settle()
    assert src.loads == [1]
    advance(6)  # updated_at is now 6 s ago
    # several at once: their GETs are coalesced into one statement
    got = await asyncio.gather(*[cacheme.get(N(i)) for i in (1, 1, 2)])
    assert got == [(1, 1), (1, 1), (2, 1)]
    await settle()
    assert sorted(src.loads) == [1, 1, 2]  # 1 refreshed in the background, once
    assert cacheme.stats(N).refresh_counts()["background"] == 1
    assert await cacheme.get(N(1)) == (1, 2)


async def test_stale_if_error_on_postgresql(pg_node):
    """The server stamps updated_at with its own clock, which the test clock
    does not move: the row stays readable while the value's age, read
    against the moved clock, passes the TTL."""
    src = Source()
    N = await pg_node(src, stale_if_error=timedelta(seconds=30))
    assert await cacheme.get(N(1)) == (1, 1)
    src.fail = ConnectionError("down")
    advance(61)  # past the 60 s TTL by updated_at: a miss; the load fails
    assert await cacheme.get(N(1)) == (1, 1)  # the kept row
    assert cacheme.stats(N).refresh_counts()["stale_if_error"] == 1
    advance(30)  # past the window
    with pytest.raises(ConnectionError):
        await cacheme.get(N(1))


@needs_redis
async def test_a_value_get_all_fills_from_redis_does_not_outlive_its_redis_ttl(redis_server):
    src = Source()
    N, store, _ = await local_then_redis(redis_server, src, timedelta(seconds=10),
                                         refresh_after=timedelta(seconds=100))
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]
    assert store.remove(N(1).full_key())  # only Redis has it
    advance(8)
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]  # N(1) from Redis, 8 s old
    assert store.get(N(1).full_key()) == (1, 1)
    advance(3)  # 11 s since it was written: gone from the local cache too
    assert store.get(N(1).full_key()) is None
