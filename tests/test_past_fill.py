"""A caller that misses the local cache while a background refresh of the
key runs reads the remote cache past the refresh's flight (get and
get_all). What it read fills the local cache only while that is still
right: not once the refresh has filled it with the newer value, and not
once the key was invalidated during the read, nor under a later refresh
of the key. Then it fills no cache; the caller gets what it read either
way.

Each test holds the refresh's load (Source.gate) and the read past it: a
wrapper set on the storage instance does the real read, then waits for an
Event, so the test can finish the refresh or invalidate the key between
the read and the fill.

The helpers, the test clock and the Redis server are test_freshness.py's."""
import asyncio
import uuid
from datetime import timedelta

import pytest

import cacheme
from cacheme import Cache, _core
from cacheme.serializer import PickleSerializer
from conftest import register_local, unique
from redis_servers import _redis_session_server, needs_redis, redis_server  # noqa: F401
from test_freshness import PG_URL, Source, _real_clock_after, advance, make_node  # noqa: F401

remotes = pytest.mark.parametrize("remote",
                                  [pytest.param("redis", marks=needs_redis), "postgresql"])
KEYS = (1, 2, 3)


@pytest.fixture
async def local_remote(request):
    """make(remote, src, **meta): a node caching in a new local store, then
    in Redis or in a new PostgreSQL table (dropped after the test); the
    node, the local store and the remote storage."""
    made = []

    async def make(remote, src, **meta):
        name = unique("past-fill-")
        if remote == "redis":
            storage = cacheme.Storage(url=request.getfixturevalue("redis_server").url)
        else:
            if not _core.PgClient.__new__(_core.PgClient).library_available:
                pytest.skip("cacheme built without libpq")
            storage = cacheme.Storage(url=PG_URL, table=f"cm_past_{uuid.uuid4().hex[:12]}",
                                      create_table=True)
        await cacheme.register_storage(name, storage)
        local = await register_local()
        ttl = timedelta(seconds=60)
        N = make_node([Cache(local, ttl), Cache(name, ttl)], src, **meta)
        N.Meta.serializer = PickleSerializer()
        client = cacheme.data.get_storage_by_name(name)._storage
        made.append((remote, client))
        return N, cacheme.data.get_storage_by_name(local)._local, client

    yield make
    for remote, client in made:
        if remote == "postgresql":
            await client.execute(f"DROP TABLE IF EXISTS {client.table}")
        await client.close()


class HeldRead:
    """Replaces client.<method> (get or get_all) on the instance: the real
    read runs at once, then the answer waits for release(). `read` is set
    once a read has its answer."""

    def __init__(self, client, method):
        self.read = asyncio.Event()
        self.go = asyncio.Event()
        real = getattr(client, method)

        async def held(*args):
            res = await real(*args)
            self.read.set()
            await self.go.wait()
            return res

        setattr(client, method, held)
        self.client, self.method = client, method

    def release(self):
        self.go.set()
        delattr(self.client, self.method)


async def until(cond, what):
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def refresh_held(make, remote, src):
    """N(1..3) loaded once, N(1) 6 s old (refresh_after 5 s): a get of it
    starts its refresh, whose load src.gate holds; then the local copies
    are gone, so the next callers read the remote cache past that refresh.
    The node and the local store and remote storage."""
    N, store, client = await make(remote, src, refresh_after=timedelta(seconds=5))
    assert await cacheme.get(N(1)) == (1, 1)
    advance(6)
    for i in (2, 3):
        assert await cacheme.get(N(i)) == (i, 1)
    src.gate = asyncio.Event()
    assert await cacheme.get(N(1)) == (1, 1)  # a hit, due: refreshed behind it
    await until(lambda: src.loads == [1, 2, 3, 1], "the refresh's load")
    assert _core._flights_in_table() == 1
    for i in KEYS:
        assert store.remove(N(i).full_key())
    return N, store, client


def local(store, N, i):
    return store.get(N(i).full_key())


async def start_read_past(N, client, many):
    """A get (or get_all of N(1..3)) that reads the remote cache past the
    refresh of N(1), held once it has read; the task and the HeldRead."""
    held = HeldRead(client, "get_all" if many else "get")
    task = asyncio.ensure_future(
        cacheme.get_all([N(i) for i in KEYS]) if many else cacheme.get(N(1)))
    await asyncio.wait_for(held.read.wait(), 5)
    assert not task.done()
    return task, held


def read_past_result(many, first):
    return [first, (2, 1), (3, 1)] if many else first


@remotes
@pytest.mark.parametrize("many", [False, True], ids=["get", "get_all"])
async def test_a_read_past_fills_the_local_cache_when_nothing_intervened(local_remote, remote,
                                                                         many):
    src = Source()
    N, store, client = await refresh_held(local_remote, remote, src)
    task, held = await start_read_past(N, client, many)
    held.release()
    assert await asyncio.wait_for(task, 5) == read_past_result(many, (1, 1))
    assert local(store, N, 1) == (1, 1)  # filled, the refresh still running
    assert _core._flights_in_table() == 1
    src.gate.set()
    await until(lambda: local(store, N, 1) == (1, 2), "the refresh's fill")
    assert await cacheme.get(N(1)) == (1, 2)
    assert src.loads == [1, 2, 3, 1]


@remotes
@pytest.mark.parametrize("many", [False, True], ids=["get", "get_all"])
async def test_a_read_past_does_not_overwrite_the_refreshed_value(local_remote, remote, many):
    """The refresh ends (and fills the local cache with the new value) while
    the read past it holds the old one: the old one is returned, but does
    not replace the new one in the local cache."""
    src = Source()
    N, store, client = await refresh_held(local_remote, remote, src)
    task, held = await start_read_past(N, client, many)
    src.gate.set()
    # the refresh fills the local cache and settles its flight in one step
    await until(lambda: local(store, N, 1) == (1, 2), "the refresh's fill")
    held.release()
    assert await asyncio.wait_for(task, 5) == read_past_result(many, (1, 1))
    assert local(store, N, 1) == (1, 2)
    assert await cacheme.get(N(1)) == (1, 2)
    if many:  # the keys it led filled as usual
        assert [local(store, N, i) for i in (2, 3)] == [(2, 1), (3, 1)]
    assert src.loads == [1, 2, 3, 1]


@remotes
@pytest.mark.parametrize("many", [False, True], ids=["get", "get_all"])
async def test_a_read_past_does_not_fill_a_key_invalidated_during_the_read(local_remote, remote,
                                                                           many):
    """invalidate() while the read past the refresh is out: what it read is
    returned, but fills no cache."""
    src = Source()
    N, store, client = await refresh_held(local_remote, remote, src)
    task, held = await start_read_past(N, client, many)
    await cacheme.invalidate(N(1))
    held.release()
    assert await asyncio.wait_for(task, 5) == read_past_result(many, (1, 1))
    assert local(store, N, 1) is None
    if many:
        assert [local(store, N, i) for i in (2, 3)] == [(2, 1), (3, 1)]
    # the refresh, invalidated too, fills nothing: the next get loads anew
    src.gate.set()
    await until(lambda: _core._flights_in_table() == 0, "the refresh's end")
    assert local(store, N, 1) is None
    assert await cacheme.get(N(1)) == (1, 3)
    assert src.loads == [1, 2, 3, 1, 1]


@remotes
@pytest.mark.parametrize("many", [False, True], ids=["get", "get_all"])
async def test_a_read_past_does_not_fill_under_a_later_refresh_of_the_key(local_remote, remote,
                                                                          many):
    """The refresh it read past ends and the key's next refresh is running
    when the read comes back: that one is not the flight it passed (the
    local cache holds the first refresh's value), so it fills nothing."""
    src = Source()
    N, store, client = await refresh_held(local_remote, remote, src)
    task, held = await start_read_past(N, client, many)
    src.gate.set()
    await until(lambda: local(store, N, 1) == (1, 2), "the refresh's fill")
    await until(lambda: _core._flights_in_table() == (2 if many else 0), "the refresh's end")
    advance(6)
    src.gate = asyncio.Event()
    assert await cacheme.get(N(1)) == (1, 2)  # due again: a second refresh
    await until(lambda: src.loads == [1, 2, 3, 1, 1], "the second refresh's load")
    held.release()
    assert await asyncio.wait_for(task, 5) == read_past_result(many, (1, 1))
    assert local(store, N, 1) == (1, 2)
    src.gate.set()
    await until(lambda: local(store, N, 1) == (1, 3), "the second refresh's fill")
