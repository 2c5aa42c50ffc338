"""The MongoDB storage on the shared transport (net/): busy polling for
replies as Redis and SQL have it, and a lazy connect (0.3.0's motor
connected on first use), against mongoeco servers (tests/mongo_servers.py)."""
import asyncio
import dataclasses
import logging
import os

import pytest

import cacheme
from cacheme.models import sentinel
from cacheme.serializer import MsgPackSerializer
from conftest import ReadyTask, assert_spun, needs_two_cpus, unique
from mongo_servers import MongoServer, mongo_server, pymongo_call, unavailable  # noqa: F401

mongo = pytest.importorskip("cacheme.storages.mongo")
if not mongo._AVAILABLE:  # pragma: no cover - a build without libbson
    pytest.skip("cacheme built without libbson", allow_module_level=True)

DB = "test"
SER = MsgPackSerializer()


class K:
    def __init__(self, key):
        self.k = key

    def full_key(self):
        return self.k


def storage(url, **options):
    return mongo.MongoStorage(url, DB, unique("cm_net"), **options)


# ---------------------------------------------------------------- busy polling


def test_busy_poll_option():
    default = 0.0002 if len(os.sched_getaffinity(0)) > 1 else 0.0
    url = "mongodb://127.0.0.1:1"
    assert storage(url).busy_poll_info()["busy_poll"] == default
    assert storage(url, busy_poll=0).busy_poll_info()["busy_poll"] == 0.0
    assert storage(url + "/?busy_poll=0.001").busy_poll_info()["busy_poll"] == 0.001
    for bad in (-0.001, 0.5, float("nan")):
        with pytest.raises(ValueError, match="busy_poll"):
            storage(url, busy_poll=bad)
    with pytest.raises(TypeError):
        storage(url, busy_poll="fast")
    with pytest.raises(ValueError, match="busy_poll must be a number"):
        storage(url + "/?busy_poll=fast")


async def test_busy_poll_answers_sequential_gets(mongo_server):
    # an idle loop polls for the reply instead of sleeping in epoll_wait;
    # busy_poll=0 never spins; same values either way
    needs_two_cpus()
    for limit in (0.005, 0):
        s = storage(mongo_server.url, busy_poll=limit)
        await s.connect()
        await s.set_all([(K(f"k{i}"), i) for i in range(20)], None, SER)
        before = s.busy_poll_info()
        for i in range(200):
            got = await s.get(K(f"k{i % 25}"), SER)
            assert got == (i % 25 if i % 25 < 20 else sentinel)
        info = s.busy_poll_info()
        await s.close()
        hits = info["busy_poll_hits"] - before["busy_poll_hits"]
        timeouts = info["busy_poll_timeouts"] - before["busy_poll_timeouts"]
        if limit:
            assert_spun(hits, timeouts, (before, info))
        else:
            assert hits == timeouts == 0, info


async def test_busy_poll_never_delays_ready_tasks(mongo_server):
    s = storage(mongo_server.url, busy_poll=0.005)
    await s.connect()
    await s.set(K("a"), 1, None, SER)
    async with ReadyTask() as other:
        before, start = s.busy_poll_info(), other.ticks
        for _ in range(100):
            assert await s.get(K("a"), SER) == 1
        after = s.busy_poll_info()
    await s.close()
    assert other.ticks - start >= 100
    assert after == before


async def test_busy_poll_backs_off_on_a_slow_server(mongo_server):
    # replies 3 ms late, limit 0.2 ms: about log2(100) spins for 100 gets
    needs_two_cpus()
    from delay_proxy import DelayProxy

    proxy = DelayProxy("127.0.0.1", mongo_server.port, 0.003)
    try:
        s = storage(f"mongodb://127.0.0.1:{proxy.port}", busy_poll=0.0002)
        await s.connect()
        await s.set(K("a"), 1, None, SER)
        before = s.busy_poll_info()
        for _ in range(100):
            assert await s.get(K("a"), SER) == 1
        info = s.busy_poll_info()
        await s.close()
    finally:
        proxy.close()
    assert info["busy_poll_hits"] == before["busy_poll_hits"] == 0, info
    assert 3 <= info["busy_poll_timeouts"] - before["busy_poll_timeouts"] <= 8, info


# ---------------------------------------------------------------- lazy connect


def make_node(storage_name):
    calls = []

    @dataclasses.dataclass
    class LazyNode(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"lazy:{self.uid}"

        async def load(self):
            calls.append(self.uid)
            return {"uid": self.uid}

        class Meta(cacheme.Node.Meta):
            caches = [cacheme.Cache(storage=storage_name, ttl=None)]
            serializer = SER

    LazyNode.__qualname__ = unique("LazyNode")
    return LazyNode, calls


async def until_connected(st):
    """Retries through the backoff until the server answers (setup helper,
    never a timed assertion)."""
    for _ in range(400):
        try:
            return await asyncio.wait_for(st.get(K("probe"), SER), 20)
        except (mongo.MongoConnectionError, mongo.MongoTimeoutError):
            await asyncio.sleep(0.05)
    raise AssertionError("the server never answered")


def indexes(url, coll):
    reply = pymongo_call(url, DB, coll, "command", {"listIndexes": coll})
    return {i["name"]: i for i in reply["cursor"]["firstBatch"]}


async def test_connect_while_the_server_is_down(caplog):
    if unavailable() is not None:
        pytest.skip(unavailable())
    srv = MongoServer()  # its port is chosen; nothing listens on it yet
    name, coll = unique("lazy-"), unique("cm_lazy")
    try:
        storage_obj = cacheme.Storage(url=srv.url, database=DB, collection=coll, busy_poll=0,
                                      connect_timeout=2.0)
        with caplog.at_level(logging.WARNING, logger="cacheme"):
            await asyncio.wait_for(cacheme.register_storage(name, storage_obj), 30)
        assert "not reachable" in caplog.text
        st = storage_obj._storage
        assert st._indexes_later == 1
        # while down: a clear error from the storage, a miss (and a load) in get
        with pytest.raises(mongo.MongoConnectionError):
            await asyncio.wait_for(st.get(K("a"), SER), 30)
        N, calls = make_node(name)
        assert await asyncio.wait_for(cacheme.get(N(1)), 30) == {"uid": 1}
        assert calls == [1]

        srv.start()
        assert await until_connected(st) is sentinel
        # the first connection created the indexes, before anything else
        assert st._indexes_later == 2
        ix = await asyncio.get_running_loop().run_in_executor(None, indexes, srv.url, coll)
        assert ix["key_1"]["key"] == {"key": 1} and ix["key_1"]["unique"] is True
        assert ix["expire_1"]["key"] == {"expire": 1}
        cmds = srv.commands()
        assert cmds.index("createIndexes") < cmds.index("find")
        # and the storage works: a fill, then a hit (MongoDB is its only cache)
        assert await asyncio.wait_for(cacheme.get(N(2)), 30) == {"uid": 2}
        assert await asyncio.wait_for(cacheme.get(N(2)), 30) == {"uid": 2}
        assert calls == [1, 2]
    finally:
        await storage_obj.close()
        srv.cleanup()


async def test_connect_with_the_server_up_creates_indexes_at_once(mongo_server):
    s = storage(mongo_server.url)
    await s.connect()
    assert s._indexes_later == 0
    ix = await asyncio.get_running_loop().run_in_executor(None, indexes, mongo_server.url,
                                                          s.collection)
    assert set(ix) >= {"key_1", "expire_1"}
    await s.close()
