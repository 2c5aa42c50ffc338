"""Freshness options (refresh_after, early_refresh, stale_if_error) on
MongoDB: the storage reports each document's updated_at and the load_time a
fill stored with it, and keeps values past their TTL for stale_if_error
(stale_until) while `expire` stays the TTL, so that 0.3.0 and nodes
without the option miss there.

Each test runs on a node caching in MongoDB alone, and (chain "local")
behind a local cache whose TTL is short, so that the local cache misses and
the MongoDB document's age is what counts. Time is moved with
_core._advance_clock, which also moves the updated_at, expire and
stale_until our client writes and reads (not 0.3.0's clock)."""
import asyncio
import dataclasses
import time
from datetime import timedelta

import pytest

import cacheme
from cacheme import Cache, Node, _core
from cacheme.models import sentinel
from cacheme.serializer import MsgPackSerializer, PickleSerializer
from conftest import register_local, unique
from mongo030_run import item_class, item_value
from mongo_servers import mongo_server, pymongo_call  # noqa: F401 (fixtures)
from test_freshness import Source, _real_clock_after, advance  # noqa: F401 (fixture)
from test_mongo_compat import needs_030, run_030

mongo = pytest.importorskip("cacheme.storages.mongo")
if not mongo._AVAILABLE:  # pragma: no cover - a build without libbson
    pytest.skip("cacheme built without libbson", allow_module_level=True)

DB = "test"
TTL = timedelta(seconds=60)
LOCAL_TTL = timedelta(seconds=2)  # the chain's local cache misses after advance(3)
chains = pytest.mark.parametrize("chain", ["mongo", "local"])


def make_node(caches, src, version=None, **meta):
    @dataclasses.dataclass
    class FreshNode(Node):
        uid: int

        def key(self) -> str:
            return f"fresh:{self.uid}"

        async def load(self):
            return await src.load(self.uid)

        class Meta(Node.Meta):
            pass

    FreshNode.Meta.version = version or unique("v")
    FreshNode.Meta.caches = caches
    FreshNode.Meta.serializer = PickleSerializer()
    for k, v in meta.items():
        setattr(FreshNode.Meta, k, v)
    return FreshNode


async def settle():
    for _ in range(5):
        await asyncio.sleep(0.005)


async def register_mongo(url, coll=None):
    name = unique("fresh-mongo-")
    coll = coll or unique("cm_fresh_")
    await cacheme.register_storage(
        name, cacheme.Storage(url=url, database=DB, collection=coll))
    return name, coll


async def mongo_node(mongo_server, chain, src, **meta):
    """The node (MongoDB alone, or a short-lived local cache then MongoDB),
    its collection, the list of its caches and the MongoDB storage."""
    name, coll = await register_mongo(mongo_server.url)
    caches = [Cache(name, TTL)]
    if chain == "local":
        caches.insert(0, Cache(await register_local(), LOCAL_TTL))
    client = cacheme.data.get_storage_by_name(name)._storage
    return make_node(caches, src, **meta), coll, caches, client


def documents(url, coll):
    return {d["key"]["value"]: d for d in pymongo_call(url, DB, coll, "find", {})}


# ------------------------------------------------------------ refresh_after


@chains
async def test_refresh_after_reloads_in_the_background(mongo_server, chain):
    src = Source()
    N, *_ = await mongo_node(mongo_server, chain, src, refresh_after=timedelta(seconds=5))
    assert await cacheme.get(N(1)) == (1, 1)
    assert await cacheme.get(N(1)) == (1, 1)  # 0 s old
    await settle()
    assert src.loads == [1]
    src.gate = asyncio.Event()
    advance(6)  # updated_at 6 s ago (the local copy, if any, has expired)
    assert await asyncio.wait_for(cacheme.get(N(1)), 5) == (1, 1)  # at once
    await asyncio.sleep(0.01)
    assert src.loads == [1, 1]  # the reload runs, held by the gate
    got = await asyncio.wait_for(asyncio.gather(*[cacheme.get(N(1)) for _ in range(10)]), 5)
    assert got == [(1, 1)] * 10  # nobody waits for it
    assert src.loads == [1, 1]
    src.gate.set()
    await settle()
    assert await cacheme.get(N(1)) == (1, 2)
    assert cacheme.stats(N).refresh_counts()["background"] == 1


# ------------------------------------------------------------ early_refresh


@chains
async def test_early_refresh_uses_the_stored_load_time(mongo_server, chain):
    src = Source()
    N, coll, *_ = await mongo_node(mongo_server, chain, src, early_refresh=1e9)
    assert await cacheme.get(N(1)) == (1, 1)
    doc = documents(mongo_server.url, coll)[N(1).full_key()]
    assert doc["load_time"]["type"] == "double"
    assert 0.001 <= doc["load_time"]["value"] < 5
    assert "stale_until" not in doc
    advance(3)  # the local copy, if any, has expired: a MongoDB hit
    assert await cacheme.get(N(1)) == (1, 1)  # huge beta: refreshed behind this hit
    await settle()
    assert src.loads == [1, 1]
    assert cacheme.stats(N).refresh_counts()["early"] == 1
    assert await cacheme.get(N(1)) == (1, 2)


async def test_a_fill_without_a_load_time_drops_the_stored_one(mongo_server):
    """A plain set of the key replaces the document's fields: a load_time
    left there would give the next early_refresh a wrong delta."""
    src = Source()
    N, coll, _, storage = await mongo_node(mongo_server, "mongo", src, early_refresh=1.0)
    await cacheme.get(N(1))
    assert "load_time" in documents(mongo_server.url, coll)[N(1).full_key()]
    await storage.set(N(1), "plain", TTL, PickleSerializer())
    doc = documents(mongo_server.url, coll)[N(1).full_key()]
    assert "load_time" not in doc and "stale_until" not in doc


# ------------------------------------------------------------ stale_if_error


@chains
async def test_stale_if_error_serves_a_value_expired_within_the_window(mongo_server, chain):
    src = Source()
    N, coll, *_ = await mongo_node(mongo_server, chain, src, stale_if_error=timedelta(seconds=30))
    assert await cacheme.get(N(1)) == (1, 1)
    doc = documents(mongo_server.url, coll)[N(1).full_key()]
    # expire stays at the TTL; stale_until keeps it 30 s longer
    assert abs(doc["expire"]["ms"] - doc["updated_at"]["ms"] - 60_000) <= 1
    assert abs(doc["stale_until"]["ms"] - doc["expire"]["ms"] - 30_000) <= 1
    advance(61)  # past the TTL: a miss, and the load succeeds
    assert await cacheme.get(N(1)) == (1, 2)
    src.fail = ConnectionError("down")
    advance(61)  # (1, 2) expired 1 s ago
    assert await cacheme.get(N(1)) == (1, 2)
    assert cacheme.stats(N).refresh_counts()["stale_if_error"] == 1
    advance(30)  # 31 s past its TTL: out of the window
    with pytest.raises(ConnectionError):
        await cacheme.get(N(1))
    assert src.loads == [1, 1, 1, 1]


@chains
async def test_a_node_without_stale_if_error_misses_a_kept_document(mongo_server, chain):
    src = Source()
    N, _, caches, storage = await mongo_node(mongo_server, chain, src,
                                             stale_if_error=timedelta(seconds=30))
    plain_src = Source()
    Plain = make_node(caches, plain_src, version=N.Meta.version)  # the same keys
    assert await cacheme.get(N(1)) == (1, 1)
    assert await cacheme.get(Plain(1)) == (1, 1)  # within the TTL: a hit
    assert plain_src.loads == []
    advance(40)
    plain_src.fail = ConnectionError("down")
    advance(21)  # past the TTL, within stale_until
    with pytest.raises(ConnectionError):
        await cacheme.get(Plain(1))
    assert plain_src.loads == [1]
    assert await storage.get(N(1), PickleSerializer()) is sentinel


# ------------------------------------------------------------ get_all


async def test_get_all_does_not_serve_a_value_past_its_ttl(mongo_server):
    src = Source()
    N, coll, *_ = await mongo_node(mongo_server, "mongo", src, stale_if_error=timedelta(seconds=30))
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]
    advance(30)
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]  # within the TTL
    assert sorted(src.loads) == [1, 2]
    advance(31)  # past the TTL, kept in MongoDB for stale_if_error
    assert set(documents(mongo_server.url, coll)) == {N(1).full_key(), N(2).full_key()}
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 2), (2, 2)]
    assert sorted(src.loads) == [1, 1, 2, 2]


async def test_get_all_fills_the_local_cache_with_the_mongo_age(mongo_server):
    """get_all's MongoDB hits keep their updated_at in the local fill: a
    hit of that local copy is due for a refresh by the document's age."""
    src = Source()
    N, *_ = await mongo_node(mongo_server, "local", src, refresh_after=timedelta(seconds=4))
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]
    advance(3)  # the local copies expired; the documents are 3 s old
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]
    await settle()
    assert sorted(src.loads) == [1, 2]
    advance(1.5)  # a local hit (copied 1.5 s ago, of a document 4.5 s old): due
    assert await cacheme.get(N(1)) == (1, 1)
    await settle()
    assert sorted(src.loads) == [1, 1, 2]
    assert await cacheme.get(N(1)) == (1, 2)


# ------------------------------------------------------------ cacheme 0.3.0


def wait_past(url, coll, field):
    """Waits (never asserts on time) until field of every document is past."""
    latest = max(d[field]["ms"] for d in documents(url, coll).values())
    while time.time() * 1000 <= latest + 5:
        time.sleep(0.05)


@needs_030
async def test_030_reads_our_documents_and_misses_past_their_ttl(mongo_server):
    """Documents with load_time and stale_until: 0.3.0 reads their values,
    and misses them once expire is past, while our node with
    stale_if_error still falls back on them."""
    name, coll = await register_mongo(mongo_server.url)
    Item, loads = item_class(name, "msgpack", 3600, "ours")
    Item.__qualname__ = unique("MongoItem")
    Item.Meta.early_refresh = 1.0
    Item.Meta.stale_if_error = timedelta(hours=1)
    assert [await cacheme.get(Item(i)) for i in (1, 2)] == [item_value(i, "ours") for i in (1, 2)]
    doc = documents(mongo_server.url, coll)["cacheme:item:1:v1"]
    assert {"load_time", "stale_until"} <= set(doc)
    out = await run_030(mongo_server.url, coll, "msgpack", 3600, get=[1], get_all=[2, 1])
    assert out["loads"] == []
    assert out["get"] == [item_value(1, "ours")]
    assert out["get_all"] == [item_value(i, "ours") for i in (2, 1)]

    # a TTL of 1 s: past it, 0.3.0 misses; our node's failing load gets the kept value
    name, coll = await register_mongo(mongo_server.url)
    src = Source()

    @dataclasses.dataclass
    class Short(Node):
        id: int

        def key(self) -> str:
            return f"item:{self.id}"  # 0.3.0's item_class keys

        async def load(self):
            await src.load(self.id)
            return item_value(self.id, "ours")

        class Meta(Node.Meta):
            version = "v1"
            caches = [Cache(name, timedelta(seconds=1))]
            serializer = MsgPackSerializer()
            stale_if_error = timedelta(hours=1)

    assert await cacheme.get(Short(1)) == item_value(1, "ours")
    doc = documents(mongo_server.url, coll)["cacheme:item:1:v1"]
    assert abs(doc["expire"]["ms"] - doc["updated_at"]["ms"] - 1000) <= 1  # the TTL, for 0.3.0
    assert doc["stale_until"]["ms"] - doc["expire"]["ms"] == 3_600_000
    await asyncio.get_running_loop().run_in_executor(
        None, wait_past, mongo_server.url, coll, "expire")
    src.fail = ConnectionError("down")
    assert await cacheme.get(Short(1)) == item_value(1, "ours")
    assert cacheme.stats(Short).refresh_counts()["stale_if_error"] == 1
    assert src.loads == [1, 1]
    out = await run_030(mongo_server.url, coll, "msgpack", 1, get=[1])
    assert out["loads"] == [1]
    assert out["get"] == [item_value(1, "030")]
