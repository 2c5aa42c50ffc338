"""Freshness options on get_all's remote hits: a value read by the batch
(Redis MGET, with each value's updated_at and stored load time) whose age
calls for a refresh starts one in the background, as get does, and the
local copies get_all fills keep the load time (early_refresh's delta).

The helpers, the test clock and the Redis server are test_freshness.py's."""
import asyncio
import logging
from datetime import timedelta

import pytest

import cacheme
from cacheme import Cache, _core
from cacheme.serializer import PickleSerializer
from conftest import register_local, unique
from redis_servers import _redis_session_server, needs_redis, redis_server  # noqa: F401
from test_freshness import Source, _real_clock_after, advance, make_node, settle  # noqa: F401

pytestmark = needs_redis

KEYS = (1, 2, 3)


async def chain(kind, redis_server, src, ttl=timedelta(seconds=60), **meta):
    """A node caching in Redis ("redis") or in a new local store then Redis
    ("local_redis"); the node, the local store (or None) and the Redis
    client."""
    name = unique("fresh-ga-redis-")
    await cacheme.register_storage(name, cacheme.Storage(url=redis_server.url))
    caches = [Cache(name, ttl)]
    store = None
    if kind == "local_redis":
        local = await register_local()
        caches.insert(0, Cache(local, ttl))
        store = cacheme.data.get_storage_by_name(local)._local
    N = make_node(caches, src, **meta)
    N.Meta.serializer = PickleSerializer()
    return N, store, cacheme.data.get_storage_by_name(name)._storage


async def fill(N, store):
    """Each key loaded once by get (Redis stores its load time), then only
    Redis has it: the next get_all reads it there."""
    for i in KEYS:
        assert await cacheme.get(N(i)) == (i, 1)
    if store is not None:
        for i in KEYS:
            assert store.remove(N(i).full_key())


def nodes(N):
    return [N(i) for i in KEYS]


def old(version=1):
    return [(i, version) for i in KEYS]


chains = pytest.mark.parametrize("kind", ["redis", "local_redis"])


@chains
async def test_refresh_after_on_a_remote_hit_reloads_in_the_background(kind, redis_server):
    src = Source()
    N, store, client = await chain(kind, redis_server, src, refresh_after=timedelta(seconds=5))
    await fill(N, store)
    advance(3)
    assert await cacheme.get_all(nodes(N)) == old()  # 3 s old: no refresh
    if store is not None:
        for i in KEYS:
            assert store.remove(N(i).full_key())
    await settle()
    assert sorted(src.loads) == [1, 2, 3]
    src.gate = asyncio.Event()
    advance(3)  # 6 s old: due
    # concurrent get_alls: the old values at once, one refresh per key
    got = await asyncio.wait_for(asyncio.gather(*[cacheme.get_all(nodes(N)) for _ in range(5)]),
                                 5)
    assert got == [old()] * 5
    await asyncio.sleep(0.01)
    assert sorted(src.loads) == [1, 1, 2, 2, 3, 3]
    assert _core._flights_in_table() == 3
    assert cacheme.stats(N).refresh_counts()["background"] == 3
    # while they run a get does not wait for them, nor start another
    assert await asyncio.wait_for(cacheme.get(N(1)), 5) == (1, 1)
    assert sorted(src.loads) == [1, 1, 2, 2, 3, 3]
    src.gate.set()
    await settle()
    assert _core._flights_in_table() == 0
    for i in KEYS:
        assert await cacheme.get(N(i)) == (i, 2)
    assert await cacheme.get_all(nodes(N)) == old(2)
    await settle()
    assert sorted(src.loads) == [1, 1, 2, 2, 3, 3]
    assert cacheme.stats(N).refresh_counts()["background"] == 3
    assert cacheme.stats(N).load_success_count() == 6
    await client.close()


@chains
async def test_early_refresh_fires_on_a_remote_hit_with_its_stored_load_time(kind, redis_server):
    src = Source()
    N, store, client = await chain(kind, redis_server, src, early_refresh=1e9)
    await fill(N, store)
    assert await cacheme.get_all(nodes(N)) == old()  # huge beta: refreshed behind the hits
    await settle()
    assert sorted(src.loads) == [1, 1, 2, 2, 3, 3]
    assert cacheme.stats(N).refresh_counts()["early"] == 3
    for i in KEYS:
        assert await cacheme.get(N(i)) == (i, 2)
    await client.close()


async def set_load_time(client, node, secs):
    """Rewrite the load time stored with node's Redis value."""
    key = node.full_key()
    env = PickleSerializer().loads(await client.execute("GET", key))
    assert set(env) == {"value", "updated_at", "load_time"}
    env["load_time"] = secs
    assert await client.execute("SET", key, PickleSerializer().dumps(env), "KEEPTTL") == "OK"


async def test_a_local_copy_get_all_fills_keeps_the_load_time(redis_server):
    """A value 1 s to load, TTL 10**6 s, beta 3*10**4: a refresh is due
    with probability exp(-(time to expiry) / (beta * 1 s)), about e**-33 when
    get_all copies it from Redis and 1 - 3e-5 a second before it expires.
    So the copy in the local cache refreshes near its end only if it kept
    the load time."""
    src = Source()
    N, store, client = await chain("local_redis", redis_server, src,
                                   ttl=timedelta(seconds=10**6), early_refresh=3e4)
    await fill(N, store)
    for i in KEYS:
        await set_load_time(client, N(i), 1.0)
    assert await cacheme.get_all(nodes(N)) == old()  # from Redis, far from expiry
    await settle()
    assert sorted(src.loads) == [1, 2, 3]
    assert all(store.get(N(i).full_key()) == (i, 1) for i in KEYS)
    advance(10**6 - 1)
    assert await cacheme.get_all(nodes(N)) == old()  # local hits, due
    await settle()
    assert sorted(src.loads) == [1, 1, 2, 2, 3, 3]
    assert cacheme.stats(N).refresh_counts()["early"] == 3
    assert all(store.get(N(i).full_key()) == (i, 2) for i in KEYS)
    await client.close()


@chains
async def test_values_past_their_ttl_stay_hidden_while_due_ones_refresh(kind, redis_server):
    """N(1) and N(2) past their TTL (kept by Redis for stale_if_error) are
    loaded by the get_all; N(3), due but within it, is returned and
    refreshed behind it."""
    src = Source()
    N, store, client = await chain(kind, redis_server, src, refresh_after=timedelta(seconds=5),
                                   stale_if_error=timedelta(seconds=30))
    await fill(N, store)
    advance(40)
    assert await cacheme.get(N(3)) == (3, 1)  # Redis hit, due: refreshed, rewritten
    await settle()
    assert await cacheme.get(N(3)) == (3, 2)
    if store is not None:
        assert store.remove(N(3).full_key())
    advance(21)  # N(1), N(2) 61 s old: past the 60 s TTL; N(3) 21 s old
    assert await client.execute("EXISTS", N(1).full_key()) == 1
    src.gate = asyncio.Event()
    task = asyncio.ensure_future(cacheme.get_all(nodes(N)))
    await asyncio.sleep(0.01)
    assert not task.done()  # N(1) and N(2) are loaded: the gate holds them
    src.gate.set()
    assert await asyncio.wait_for(task, 5) == [(1, 2), (2, 2), (3, 2)]
    await settle()
    assert sorted(src.loads) == [1, 1, 2, 2, 3, 3, 3]
    counts = cacheme.stats(N).refresh_counts()
    assert counts["background"] == 2 and counts["stale_if_error"] == 0
    assert await cacheme.get(N(3)) == (3, 3)
    await client.close()


@chains
async def test_a_failing_background_refresh_keeps_the_values_and_is_logged(kind, redis_server,
                                                                           caplog):
    src = Source()
    N, store, client = await chain(kind, redis_server, src, refresh_after=timedelta(seconds=1))
    await fill(N, store)
    src.fail = ValueError("source down")
    advance(2)
    with caplog.at_level(logging.WARNING, logger="cacheme"):
        assert await cacheme.get_all(nodes(N)) == old()
        await settle()
    failed = [r for r in caplog.records
              if "background refresh" in r.getMessage() and "source down" in r.getMessage()]
    assert len(failed) == 3
    m = cacheme.stats(N)
    assert m.load_failure_count() == 3 and m.refresh_counts()["background"] == 3
    assert _core._flights_in_table() == 0
    # the old values stay, and the next get_all tries again
    src.fail = None
    assert await cacheme.get_all(nodes(N)) == old()
    await settle()
    assert await cacheme.get_all(nodes(N)) == [(i, 3) for i in KEYS]
    assert cacheme.stats(N).refresh_counts()["background"] == 6
    await client.close()


async def hold_refresh_of_1(kind, redis_server, src):
    """N(1) due (6 s old, refresh_after 5 s), N(2) and N(3) fresh, all in
    Redis; a get of N(1) starts its refresh, whose load src.gate holds. The
    node, the local store (or None) and the Redis client."""
    N, store, client = await chain(kind, redis_server, src, refresh_after=timedelta(seconds=5))
    assert await cacheme.get(N(1)) == (1, 1)
    advance(6)
    for i in (2, 3):
        assert await cacheme.get(N(i)) == (i, 1)
    src.gate = asyncio.Event()
    assert await cacheme.get(N(1)) == (1, 1)  # a hit, due: refreshed behind it
    await asyncio.sleep(0.01)
    assert src.loads == [1, 2, 3, 1]
    assert _core._flights_in_table() == 1
    if store is not None:
        for i in KEYS:
            assert store.remove(N(i).full_key())
    return N, store, client


@chains
async def test_a_get_all_reads_redis_past_a_refresh_in_flight(kind, redis_server):
    """A get_all that misses the local caches for a key whose refresh runs
    reads Redis for it with the others, as get does, instead of waiting for
    the refresh."""
    src = Source()
    N, store, client = await hold_refresh_of_1(kind, redis_server, src)
    got = await asyncio.wait_for(asyncio.gather(*[cacheme.get_all(nodes(N)) for _ in range(3)]),
                                 5)
    assert got == [old()] * 3
    if store is not None:  # the batch filled the local copies
        assert [store.get(N(i).full_key()) for i in KEYS] == old()
    assert src.loads == [1, 2, 3, 1]  # no second refresh, no load
    assert _core._flights_in_table() == 1
    assert cacheme.stats(N).refresh_counts()["background"] == 1
    src.gate.set()
    await settle()
    assert _core._flights_in_table() == 0
    assert await cacheme.get_all(nodes(N)) == [(1, 2), (2, 1), (3, 1)]
    assert src.loads == [1, 2, 3, 1]
    await client.close()


@chains
async def test_a_get_all_waits_for_a_refresh_only_for_what_redis_misses(kind, redis_server):
    """N(1) gone from Redis too while its refresh runs: the get_all waits for
    that refresh (and starts no load of its own); the others come from
    Redis."""
    src = Source()
    N, store, client = await hold_refresh_of_1(kind, redis_server, src)
    assert await client.execute("DEL", N(1).full_key()) == 1
    task = asyncio.ensure_future(cacheme.get_all(nodes(N)))
    await asyncio.sleep(0.05)
    assert not task.done()
    assert src.loads == [1, 2, 3, 1]
    assert _core._flights_in_table() == 1
    src.gate.set()
    assert await asyncio.wait_for(task, 5) == [(1, 2), (2, 1), (3, 1)]
    await settle()
    assert src.loads == [1, 2, 3, 1]
    assert _core._flights_in_table() == 0
    assert await cacheme.get_all(nodes(N)) == [(1, 2), (2, 1), (3, 1)]
    await client.close()


async def test_a_get_all_loads_what_redis_misses_once_the_refresh_failed(redis_server, caplog):
    """N(1) gone from Redis; its refresh fails after the get_all's batch
    read Redis past it: the batch loads N(1) itself."""
    src = Source()
    N, _, client = await hold_refresh_of_1("redis", redis_server, src)
    assert await client.execute("DEL", N(1).full_key()) == 1
    src.fail = ValueError("source down")
    task = asyncio.ensure_future(cacheme.get_all(nodes(N)))
    await asyncio.sleep(0)  # the caller's first step: N(1) is read past its refresh
    assert _core._flights_in_table() == 3  # its refresh, and N(2), N(3) led
    with caplog.at_level(logging.WARNING, logger="cacheme"):
        src.gate.set()  # the refresh fails before Redis answers the batch
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert any("background refresh" in r.getMessage() for r in caplog.records)
    src.fail = None
    assert await asyncio.wait_for(task, 5) == [(1, 3), (2, 1), (3, 1)]
    assert src.loads == [1, 2, 3, 1, 1]
    assert _core._flights_in_table() == 0
    await client.close()
