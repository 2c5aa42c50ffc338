"""cacheme.close(): every registered storage closed and forgotten, once,
whatever one of them raises; register_storage works again afterwards."""
import logging
from datetime import timedelta

import pytest

import cacheme
from cacheme import _core
from cacheme.serializer import MsgPackSerializer
from conftest import make_user_node, unique
from sql_servers import ModuleServers
from redis_servers import (  # noqa: F401  (fixtures)
    _redis_session_server,
    needs_redis,
    redis_server,
)


@pytest.fixture(scope="module")
def sql_servers():
    servers = ModuleServers()
    yield servers
    servers.cleanup()


@pytest.fixture(autouse=True)
def isolated_registry():
    """cacheme.close() closes every registered storage: hide the ones other
    test modules registered, and put them back untouched afterwards."""
    saved = _core._storages()
    for name in saved:
        _core._remove_storage(name)
    yield
    for name in _core._storages():
        _core._remove_storage(name)
    for name, storage in saved.items():
        _core._add_storage(name, storage)


class BrokenClose(cacheme.storages.BaseStorage):
    """A storage whose close() fails."""

    closed = 0

    async def connect(self):
        pass

    async def close(self):
        type(self).closed += 1
        raise RuntimeError("close failed on purpose")

    async def get(self, node, serializer):
        return cacheme.models.sentinel

    async def set(self, node, value, ttl, serializer):
        pass

    async def remove(self, node):
        pass

    def is_local(self):
        return False


async def register_three(redis_url, tmp_path):
    names = {k: unique(f"{k}-") for k in ("local", "redis", "sqlite")}
    storages = {
        "local": cacheme.Storage(url="local://tlfu", size=100),
        "redis": cacheme.Storage(url=redis_url),
        "sqlite": cacheme.Storage(url=f"sqlite:///{tmp_path}/c.db", table="cache",
                                  create_table=True),
    }
    for k, s in storages.items():
        await cacheme.register_storage(names[k], s)
    caches = [cacheme.Cache(storage=names[k], ttl=timedelta(seconds=60))
              for k in ("local", "redis", "sqlite")]
    return names, storages, caches


@needs_redis
async def test_close_closes_and_unregisters_every_storage(redis_server, tmp_path):
    names, storages, caches = await register_three(redis_server.url, tmp_path)
    Node, loads = make_user_node(caches)
    assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
    redis = storages["redis"]._storage
    assert redis._connections() >= 1

    await cacheme.close()

    assert redis._connections() == 0
    assert _core._storages() == {}
    with pytest.raises(ValueError, match="is not registered"):
        await cacheme.get(Node(1))
    with pytest.raises(ValueError, match="is not registered"):
        await cacheme.get_all([Node(1), Node(2)])
    assert loads == [1]


async def test_close_twice_and_with_nothing_registered():
    await cacheme.close()
    await cacheme.register_storage(unique("local-"), cacheme.Storage(url="local://lru", size=10))
    await cacheme.close()
    await cacheme.close()
    assert _core._storages() == {}


@needs_redis
async def test_register_again_after_close(redis_server, tmp_path):
    names, _, caches = await register_three(redis_server.url, tmp_path)
    Node, loads = make_user_node(caches)
    assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
    await cacheme.close()

    # same names, new storage objects: the remote values are still there,
    # the local cache starts empty
    await cacheme.register_storage(names["local"], cacheme.Storage(url="local://tlfu", size=100))
    await cacheme.register_storage(names["redis"], cacheme.Storage(url=redis_server.url))
    await cacheme.register_storage(
        names["sqlite"], cacheme.Storage(url=f"sqlite:///{tmp_path}/c.db", table="cache"))
    assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
    assert await cacheme.get(Node(2)) == {"uid": 2, "name": "u2"}
    assert loads == [1, 2]
    hits = cacheme.stats(Node).storage_stats()
    assert hits[names["redis"]]["hits"] == 1
    assert hits[names["redis"]]["errors"] == 0
    await cacheme.close()


@needs_redis
async def test_close_goes_on_when_a_storage_raises(redis_server, caplog):
    broken, redis_name = unique("broken-"), unique("redis-")
    BrokenClose.closed = 0
    await cacheme.register_storage(broken, BrokenClose(address="broken://"))
    redis = cacheme.Storage(url=redis_server.url)
    await cacheme.register_storage(redis_name, redis)
    Node, _ = make_user_node([cacheme.Cache(storage=redis_name, ttl=None)])
    await cacheme.get(Node(1))
    assert redis._storage._connections() >= 1

    with caplog.at_level(logging.ERROR, logger="cacheme"):
        with pytest.raises(RuntimeError, match="close failed on purpose") as info:
            await cacheme.close()
    assert any(broken in note for note in info.value.__notes__)
    assert BrokenClose.closed == 1
    assert redis._storage._connections() == 0  # closed although the other one raised
    assert _core._storages() == {}
    assert any(broken in r.getMessage() for r in caplog.records)
    await cacheme.close()  # nothing left: no second attempt on the broken one
    assert BrokenClose.closed == 1


@needs_redis
async def test_storage_close_on_its_own(redis_server, tmp_path):
    """Storage.close() closes that storage's connections and leaves it
    registered: Redis then refuses requests (a miss plus a warning in get),
    SQLite reopens its database on the next request."""
    redis = cacheme.Storage(url=redis_server.url)
    sqlite = cacheme.Storage(url=f"sqlite:///{tmp_path}/c.db", table="cache", create_table=True)
    await redis.connect()
    await sqlite.connect()
    Node, _ = make_user_node([])
    ser = MsgPackSerializer()
    await redis.set(Node(1), {"uid": 1}, None, ser)
    await sqlite.set(Node(1), {"uid": 1}, None, ser)

    await redis.close()
    await redis.close()  # idempotent
    await sqlite.close()
    assert redis._storage._connections() == 0
    with pytest.raises(_core.RedisError, match="closed"):
        await redis.get(Node(1), ser)
    assert await sqlite.get(Node(1), ser) == {"uid": 1}
    await sqlite.close()
    await redis.connect()  # opens it again, same settings
    assert await redis.get(Node(1), ser) == {"uid": 1}
    await redis.close()


@needs_redis
async def test_register_the_same_storages_again_after_close(redis_server, tmp_path):
    """A service whose storages are made once, at import, and registered in
    each run of its startup (tests, reloads): close, then register again."""
    local = cacheme.Storage(url="local://tlfu", size=100)
    redis = cacheme.Storage(url=redis_server.url)
    sqlite = cacheme.Storage(url=f"sqlite:///{tmp_path}/c.db", table="cache", create_table=True)
    names = [unique("local-"), unique("redis-"), unique("sqlite-")]
    Node, loads = make_user_node([cacheme.Cache(storage=n, ttl=None) for n in names])
    for run in range(3):
        for name, storage in zip(names, (local, redis, sqlite)):
            await cacheme.register_storage(name, storage)
        assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
        await cacheme.close()
    assert loads == [1]
    assert cacheme.stats(Node).storage_stats()[names[1]]["errors"] == 0


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
async def test_sql_storage_close_then_reconnects(backend, sql_servers):
    tp = {"postgresql": _core.PgClient, "mysql": _core.MySQLClient}[backend]
    if not tp.__new__(tp).library_available:
        pytest.skip(f"cacheme built without the {backend} library")
    table = unique("lifecycle_")
    storage = cacheme.Storage(url=sql_servers.url(backend), table=table, create_table=True)
    await storage.connect()
    Node, _ = make_user_node([])
    ser = MsgPackSerializer()
    await storage.set(Node(1), {"uid": 1}, None, ser)
    await storage.close()
    assert storage._storage.pool_info()["idle"] + storage._storage.pool_info()["busy"] == 0
    assert await storage.get(Node(1), ser) == {"uid": 1}  # a new connection
    await storage.close()
