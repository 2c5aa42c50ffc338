"""0.3.0's storage contract, called the way 0.3.0's users call it.

0.3.0's storages are Python classes: ``await storage.set(node=n, value=v,
ttl=t, serializer=s)``, ``get(node, serializer=s)``, ``get_all``,
``set_all``, ``remove``, the ``*_by_key(s)`` hooks, ``connect``/``close``,
each parameter by position, by keyword or mixed, and Python's TypeErrors
for a wrong call. Every storage runs the same contract here: local (tlfu,
lru), Redis, Redis Cluster, SQLite, MySQL/MariaDB, PostgreSQL, and MongoDB
when ``cacheme.storages.mongo`` and a server fixture (tests/mongo_servers.py)
exist. Servers are temporary ones on free ports (tests/redis_servers.py,
tests/sql_servers.py)."""
import dataclasses
import importlib
import inspect
from datetime import timedelta

import pytest

import cacheme
from cacheme import _core
from cacheme.models import sentinel
from cacheme.serializer import MsgPackSerializer, PickleSerializer
from cacheme.storages import Storage
from cacheme.storages.base import BaseStorage
from cacheme.storages.local import LocalStorage
from cacheme.storages.sqldb import SQLStorage
from conftest import LEAK_SNAPSHOT, assert_flat, run_python, unique
from redis_servers import (  # noqa: F401  (fixtures)
    REDIS_CLI,
    REDIS_SERVER,
    _redis_session_server,
    redis_cluster,
    redis_server,
)
from sql_servers import MariaServer, PgServer

try:  # MongoDB's temporary servers, when that helper module exists
    import mongo_servers
except ModuleNotFoundError as e:
    if e.name != "mongo_servers":
        raise
    mongo_servers = None
else:  # its fixtures (mongo_server and what it uses), as redis_servers' are imported
    globals().update({k: v for k, v in vars(mongo_servers).items()
                      if k.startswith(("mongo", "_mongo")) and k not in globals()})

SER = MsgPackSerializer()

BACKENDS = ["local-tlfu", "local-lru", "redis", "redis-cluster", "sqlite", "mysql", "postgresql",
            "mongo"]

_sql_servers = {}


def _sql_server(backend):
    """The module's temporary server of a backend (started once)."""
    if backend not in _sql_servers:
        try:
            srv = PgServer() if backend == "postgresql" else MariaServer()
            srv.start()
        except Exception as e:  # pragma: no cover - depends on the machine
            _sql_servers[backend] = e
        else:
            _sql_servers[backend] = srv
    srv = _sql_servers[backend]
    if isinstance(srv, Exception):
        pytest.skip(f"{backend} server unavailable: {srv}")
    return srv


@pytest.fixture(scope="module", autouse=True)
def _stop_sql_servers():
    yield
    for srv in _sql_servers.values():
        if not isinstance(srv, Exception):
            srv.cleanup()
    _sql_servers.clear()


def _sql_available(backend):
    tp = {"postgresql": _core.PgClient, "mysql": _core.MySQLClient,
          "sqlite": _core.SQLiteClient}[backend]
    if not tp.__new__(tp).library_available:
        pytest.skip(f"cacheme built without the {backend} library")


def _mongo(request):
    """MongoStorage's module and a server URL, or a skip saying which is missing."""
    try:
        mongo = importlib.import_module("cacheme.storages.mongo")
    except ModuleNotFoundError as e:
        if e.name != "cacheme.storages.mongo":
            raise
        pytest.skip("cacheme.storages.mongo is not in this build")
    if mongo_servers is None:
        pytest.skip("no MongoDB server fixture (tests/mongo_servers.py: mongo_server)")
    try:
        server = request.getfixturevalue("mongo_server")
    except pytest.FixtureLookupError:
        pytest.skip("tests/mongo_servers.py has no mongo_server fixture")
    return mongo, server if isinstance(server, str) else server.url


@pytest.fixture(params=BACKENDS)
def backend(request):
    """(class, url, constructor options) of a storage, its server running."""
    b = request.param
    if b.startswith("local-"):
        from cacheme.storages.local import LocalStorage

        return LocalStorage, f"local://{b[6:]}", {"size": 1000}
    if b == "redis":
        from cacheme.storages.redis import RedisStorage

        if REDIS_SERVER is None:
            pytest.skip("redis-server not installed")
        return RedisStorage, request.getfixturevalue("redis_server").url, {}
    if b == "redis-cluster":
        from cacheme.storages.redis import RedisStorage

        if REDIS_SERVER is None or REDIS_CLI is None:
            pytest.skip("redis-server/redis-cli not installed")
        return RedisStorage, request.getfixturevalue("redis_cluster").url, {"cluster": True}
    if b == "mongo":
        mongo, url = _mongo(request)
        return mongo.MongoStorage, url, {"database": "test", "collection": unique("cm_contract_")}
    _sql_available(b)
    table = unique("cm_contract_")
    if b == "sqlite":
        from cacheme.storages.sqlite import SQLiteStorage

        path = request.getfixturevalue("tmp_path")
        return SQLiteStorage, f"sqlite:///{path}/contract.db", {"table": table,
                                                                "create_table": True}
    srv = _sql_server(b)
    if b == "mysql":
        from cacheme.storages.mysql import MySQLStorage

        return MySQLStorage, srv.url, {"table": table, "create_table": True}
    from cacheme.storages.postgres import PostgresStorage

    return PostgresStorage, srv.url, {"table": table, "create_table": True}


@pytest.fixture
async def storage(backend):
    """The storage class itself, built and connected as 0.3.0's Storage did."""
    cls, url, options = backend
    s = cls(address=url, **options)
    await s.connect()
    yield s
    await s.close()


@pytest.fixture
async def wrapped(backend):
    """cacheme.Storage(url=..., **options), connected."""
    _, url, options = backend
    s = Storage(url=url, **options)
    await s.connect()
    yield s
    await s.close()




def node_class():
    """A node class of its own (its keys are unique to the test)."""
    prefix = unique("contract")

    @dataclasses.dataclass
    class ContractNode(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"{prefix}:{self.uid}"

        async def load(self):
            return {"uid": self.uid}

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = []
            serializer = SER

    ContractNode.__qualname__ = unique("ContractNode")
    return ContractNode


def _is_local(storage):
    return isinstance(storage, LocalStorage) or (
        isinstance(storage, Storage) and storage.is_local())


# ---------------------------------------------------------------- calls


async def _keyword_round_trip(s):
    N = node_class()
    ttl = timedelta(seconds=60)
    await s.set(node=N(1), value={"v": 1}, ttl=ttl, serializer=SER)
    await s.set(N(2), value={"v": 2}, ttl=None, serializer=SER)
    await s.set(N(3), {"v": 3}, ttl=ttl, serializer=SER)
    await s.set(N(4), {"v": 4}, None, serializer=SER)
    await s.set(serializer=SER, ttl=None, value={"v": 5}, node=N(5))
    assert await s.get(node=N(1), serializer=SER) == {"v": 1}
    assert await s.get(N(2), serializer=SER) == {"v": 2}
    assert await s.get(serializer=SER, node=N(3)) == {"v": 3}
    assert await s.get(N(4), SER) == {"v": 4}
    assert await s.get(N(5), serializer=SER) == {"v": 5}
    assert await s.get(node=N(99), serializer=SER) is sentinel

    await s.set_all(data=[(N(10), "a"), (N(11), "b")], ttl=ttl, serializer=SER)
    await s.set_all([(N(12), "c")], ttl=None, serializer=SER)
    await s.set_all([(N(13), "d")], None, serializer=SER)
    got = await s.get_all(nodes=[N(10), N(11), N(12), N(13), N(98)], serializer=SER)
    assert sorted((n.uid, v) for n, v in got) == [(10, "a"), (11, "b"), (12, "c"), (13, "d")]
    got = await s.get_all([N(10)], serializer=SER)
    assert [(n.uid, v) for n, v in got] == [(10, "a")]
    got = await s.get_all(serializer=SER, nodes=[N(11)])
    assert [(n.uid, v) for n, v in got] == [(11, "b")]

    await s.remove(node=N(1))
    await s.remove(N(2))
    assert await s.get(N(1), serializer=SER) is sentinel
    assert await s.get(N(2), SER) is sentinel
    assert await s.get(N(3), SER) == {"v": 3}


async def test_keywords_positional_and_mixed(storage):
    await _keyword_round_trip(storage)


async def test_keywords_through_storage_wrapper(wrapped):
    await _keyword_round_trip(wrapped)


async def test_positional_calls(storage):
    N = node_class()
    await storage.set(N(1), "x", None, SER)
    assert await storage.get(N(1), SER) == "x"
    await storage.set_all([(N(2), "y")], timedelta(seconds=30), SER)
    assert [(n.uid, v) for n, v in await storage.get_all([N(1), N(2)], SER)] in (
        [(1, "x"), (2, "y")], [(2, "y"), (1, "x")])
    await storage.remove(N(1))
    assert await storage.get(N(1), SER) is sentinel


async def test_serializer_none_by_keyword(storage):
    """serializer=None: the object itself (local), bytes (SQL), the
    storage's default (Redis: pickle)."""
    N = node_class()
    value = "obj" if _is_local(storage) or type(storage).__name__.startswith("Redis") else b"raw"
    await storage.set(node=N(1), value=value, ttl=None, serializer=None)
    assert await storage.get(node=N(1), serializer=None) == value
    got = await storage.get_all(nodes=[N(1)], serializer=None)
    assert [(n.uid, v) for n, v in got] == [(1, value)]


def _call_errors(storage):
    """(call, message pattern): Python's TypeError for each wrong call."""
    N = node_class()
    n = N(1)
    return [
        (lambda: storage.get(n, serializer=SER, x=1), r"get\(\) got an unexpected keyword argument 'x'"),
        (lambda: storage.get(node=n, serialiser=SER), r"get\(\) got an unexpected keyword argument 'serialiser'"),
        (lambda: storage.get(n), r"get\(\) missing 1 required positional argument: 'serializer'"),
        (lambda: storage.get(serializer=SER), r"get\(\) missing 1 required positional argument: 'node'"),
        (lambda: storage.get(), r"get\(\) missing 2 required positional arguments: 'node' and 'serializer'"),
        (lambda: storage.get(n, SER, node=n), r"get\(\) got multiple values for argument 'node'"),
        (lambda: storage.get(n, SER, 3), r"get\(\) takes 3 positional arguments but 4 were given"),
        (lambda: storage.set(n, 1, None, SER, ttl=None), r"set\(\) got multiple values for argument 'ttl'"),
        (lambda: storage.set(n, 1, serializer=SER), r"set\(\) missing 1 required positional argument: 'ttl'"),
        (lambda: storage.set(node=n, value=1, ttl=None, serializer=SER, expire=1),
         r"set\(\) got an unexpected keyword argument 'expire'"),
        (lambda: storage.get_all(nodes=[n]), r"get_all\(\) missing 1 required positional argument: 'serializer'"),
        (lambda: storage.get_all([n], SER, nodes=[n]), r"get_all\(\) got multiple values for argument 'nodes'"),
        (lambda: storage.set_all(data=[(n, 1)], serializer=SER),
         r"set_all\(\) missing 1 required positional argument: 'ttl'"),
        (lambda: storage.set_all([(n, 1)], None, SER, x=1), r"set_all\(\) got an unexpected keyword argument 'x'"),
        (lambda: storage.remove(), r"remove\(\) missing 1 required positional argument: 'node'"),
        (lambda: storage.remove(key=n), r"remove\(\) got an unexpected keyword argument 'key'"),
        (lambda: storage.remove(n, node=n), r"remove\(\) got multiple values for argument 'node'"),
        (lambda: storage.remove(n, SER), r"remove\(\) takes 2 positional arguments but 3 were given"),
    ]


async def test_wrong_calls_raise_pythons_type_errors(storage):
    for call, pattern in _call_errors(storage):
        with pytest.raises(TypeError, match=pattern):
            # a C method raises at the call, a coroutine at the await
            await call()


async def test_wrong_calls_name_the_class(storage):
    """As a Python method's errors do: 'RedisStorage.get() got ...', a
    class of the storage's."""
    with pytest.raises(TypeError, match=r"^(\w+)\.get\(\) got an unexpected") as info:
        await storage.get(node_class()(1), serializer=SER, x=1)
    owner = str(info.value).split(".")[0]
    assert owner in [c.__qualname__ for c in type(storage).__mro__]


async def test_keyword_names_are_compared_by_value(storage):
    """A keyword spelled by a str built at run time (not the interned one)."""
    N = node_class()
    name = "".join(["ser", "ializer"])
    await storage.set(N(1), 7, None, **{name: SER})
    assert await storage.get(N(1), **{name: SER}) == 7


def test_signatures_match_030(backend):
    """inspect.signature sees 0.3.0's parameter names."""
    cls = backend[0]
    want = {
        "get": ["node", "serializer"],
        "get_all": ["nodes", "serializer"],
        "set": ["node", "value", "ttl", "serializer"],
        "set_all": ["data", "ttl", "serializer"],
        "remove": ["node"],
    }
    for name, params in want.items():
        sig = inspect.signature(getattr(cls, name))
        assert list(sig.parameters)[1:] == params, (cls, name, sig)


# ------------------------------------------------- 0.3.0's *_by_key hooks


def _by_key_storage(storage):
    if _is_local(storage):
        pytest.skip("0.3.0's LocalStorage has no *_by_key hooks either")


def _raw(got):
    """The stored bytes of a *_by_key read: ours give them as they are,
    0.3.0's row-shaped storages (MongoDB) a mapping with "value"."""
    return got["value"] if hasattr(got, "keys") else got


async def test_by_key_hooks_take_keywords(storage):
    _by_key_storage(storage)
    k1, k2 = unique("contract-key:"), unique("contract-key:")
    await storage.set_by_key(key=k1, value=b"one", ttl=None)
    await storage.set_by_key(k2, value=b"two", ttl=timedelta(seconds=60))
    assert _raw(await storage.get_by_key(key=k1)) == b"one"
    assert _raw(await storage.get_by_key(k2)) == b"two"
    await storage.remove_by_key(key=k1)
    got = await storage.get_by_key(key=k1)
    assert got is None or got is sentinel
    with pytest.raises(TypeError, match=r"get_by_key\(\) got an unexpected keyword argument 'k'"):
        await storage.get_by_key(k=k1)
    with pytest.raises(TypeError, match=r"set_by_key\(\) missing 1 required positional argument: 'ttl'"):
        await storage.set_by_key(k1, b"x")


async def test_by_keys_hooks(storage):
    """get_by_keys/set_by_keys, which 0.3.0's Redis and SQL storages have:
    the keys found, by key."""
    _by_key_storage(storage)
    k1, k2, k3 = (unique("contract-keys:") for _ in range(3))
    await storage.set_by_keys(data={k1: b"one", k2: b"two"}, ttl=None)
    await storage.set_by_keys({k3: b"three"}, ttl=timedelta(seconds=60))
    got = await storage.get_by_keys(keys=[k1, k2, k3, unique("contract-absent:")])
    assert {k: _raw(v) for k, v in got.items()} == {k1: b"one", k2: b"two", k3: b"three"}
    assert await storage.get_by_keys([]) == {}


# ---------------------------------------------------------- 0.3.0's shape


def test_module_paths():
    import cacheme.storages as storages
    from cacheme.storages.base import BaseStorage as B
    from cacheme.storages.local import LocalStorage
    from cacheme.storages.mysql import MySQLStorage
    from cacheme.storages.postgres import PostgresStorage
    from cacheme.storages.redis import RedisStorage
    from cacheme.storages.sqldb import SQLStorage
    from cacheme.storages.sqlite import SQLiteStorage

    assert storages.Storage is cacheme.Storage and storages.BaseStorage is B
    for cls in (LocalStorage, RedisStorage, SQLStorage):
        assert issubclass(cls, B)
    for cls in (SQLiteStorage, PostgresStorage, MySQLStorage):
        assert issubclass(cls, SQLStorage)
    assert Storage.SUPPORTED_STORAGES["mongodb"] == "cacheme.storages.mongo:MongoStorage"
    for target in Storage.SUPPORTED_STORAGES.values():
        mod, name = target.split(":")
        try:
            assert issubclass(getattr(importlib.import_module(mod), name), B)
        except ModuleNotFoundError as e:
            assert mod == "cacheme.storages.mongo" and e.name == mod


def test_030_public_methods_exist(backend):
    """Every public method of 0.3.0's class (the driver-specific helpers of
    0.3.0's sqlite3 code aside)."""
    cls = backend[0]
    common = ["connect", "close", "get", "get_all", "set", "set_all", "remove", "get_sync",
              "get_all_sync", "serialize", "deserialize"]
    hooks = ["get_by_key", "get_by_keys", "set_by_key", "set_by_keys", "remove_by_key"]
    sql = ["execute_ddl"]
    names = common + hooks
    if issubclass(cls, SQLStorage):
        names += sql
    missing = [n for n in names if not callable(getattr(cls, n, None))]
    assert missing == []


def test_constructors_as_030(tmp_path):
    from cacheme.storages.local import LocalStorage
    from cacheme.storages.redis import RedisStorage
    from cacheme.storages.sqlite import SQLiteStorage

    assert LocalStorage(100, "local://lru").address == "local://lru"
    assert LocalStorage(size=100, address="local://tlfu").address == "local://tlfu"
    r = RedisStorage("redis://127.0.0.1:1", 7)
    assert (r.address, r.pool_size, r.cluster) == ("redis://127.0.0.1:1", 7, False)
    r = RedisStorage(address="redis://127.0.0.1:1", pool_size=3, cluster=False)
    assert r.pool_size == 3
    url = f"sqlite:///{tmp_path}/c.db"
    s = SQLiteStorage(url, "cm_ctor", 4)
    assert (s.address, s.table, s.pool_size) == (url, "cm_ctor", 4)
    s = SQLiteStorage(address=url, table="cm_ctor", pool_size=2)
    assert s.table == "cm_ctor"


# ------------------------------------------------------ subclasses of ours


async def test_subclass_overriding_get_set_is_called_by_cacheme(backend):
    """A user's subclass that overrides get/set (calling super() by keyword)
    is what cacheme.get calls, not the C methods behind it."""
    cls, url, options = backend
    calls = []

    class Audited(cls):
        # what 0.3.0's Cache asks a registered storage (its Storage wrapper has it)
        def is_local(self):
            return _is_local(self)

        async def get(self, node, serializer):
            calls.append(("get", node.uid))
            return await super().get(node=node, serializer=serializer)

        async def set(self, node, value, ttl, serializer):
            calls.append(("set", node.uid))
            await super().set(node=node, value=value, ttl=ttl, serializer=serializer)

    name = unique("contract-sub-")
    s = Audited(address=url, **options)
    await cacheme.register_storage(name, s)
    try:
        N = node_class()
        N.Meta.caches = [cacheme.Cache(storage=name, ttl=timedelta(seconds=60))]
        assert await cacheme.get(N(1)) == {"uid": 1}
        assert await cacheme.get(N(1)) == {"uid": 1}
        # the override's super() calls reached the storage: the fill is there
        assert await cls.get(s, N(1), SER) == {"uid": 1}
        if _is_local(s):
            # local storages are read in C (0.3.0 read them with get_sync)
            assert ("set", 1) in calls
        else:
            assert calls == [("get", 1), ("set", 1), ("get", 1)]
    finally:
        await s.close()


class DictStorage(BaseStorage):
    """A custom storage as 0.3.0 has users write one: the *_by_key hooks."""

    def __init__(self, address, **kwargs):
        super().__init__(address, **kwargs)
        self.data = {}

    async def connect(self):
        pass

    def is_local(self):
        # what 0.3.0's Cache asks a registered storage (its Storage wrapper has it)
        return False

    async def get_by_key(self, key):
        return self.data.get(key)

    async def get_by_keys(self, keys):
        return {k: self.data[k] for k in keys if k in self.data}

    async def set_by_key(self, key, value, ttl):
        self.data[key] = {"value": value, "expire": None}

    async def set_by_keys(self, data, ttl):
        for k, v in data.items():
            await self.set_by_key(k, v, ttl)

    async def remove_by_key(self, key):
        self.data.pop(key, None)


async def test_custom_base_storage_subclass():
    s = DictStorage("dict://")
    name = unique("contract-dict-")
    await cacheme.register_storage(name, s)
    N = node_class()
    N.Meta.caches = [cacheme.Cache(storage=name, ttl=None)]
    assert await cacheme.get(N(1)) == {"uid": 1}
    assert await cacheme.get_all([N(1), N(2)]) == [{"uid": 1}, {"uid": 2}]
    assert len(s.data) == 2
    await _keyword_round_trip(s)
    await cacheme.invalidate(N(1))
    assert await s.get(node=N(1), serializer=SER) is sentinel


async def test_keywords_with_pickle_serializer(storage):
    """Any serializer by keyword, not just the node's."""
    N = node_class()
    ser = PickleSerializer()
    await storage.set(node=N(1), value=("t", 1), ttl=None, serializer=ser)
    assert await storage.get(node=N(1), serializer=ser) == ("t", 1)


async def test_custom_storage_by_url_scheme(monkeypatch):
    """0.3.0's other way in: a scheme added to Storage.SUPPORTED_STORAGES."""
    monkeypatch.setitem(Storage.SUPPORTED_STORAGES, "dict", f"{__name__}:DictStorage")
    s = Storage(url="dict://")
    name = unique("contract-dict-url-")
    await cacheme.register_storage(name, s)
    N = node_class()
    N.Meta.caches = [cacheme.Cache(storage=name, ttl=None)]
    assert await cacheme.get(N(1)) == {"uid": 1}
    assert not s.is_local() and len(s._storage.data) == 1
    await _keyword_round_trip(s)


LEAK_LOOP = r'''
import asyncio, sys
import cacheme
from cacheme.serializer import MsgPackSerializer
from cacheme.storages.sqlite import SQLiteStorage

class K:
    def __init__(self, k):
        self.k = k
    def full_key(self):
        return self.k

SER = MsgPackSerializer()

async def main():
    s = SQLiteStorage(address="sqlite:///" + sys.argv[1], table="cm_leak", create_table=True)
    await s.connect()
    node = K("a")
    bad = [lambda: s.get(node, serializer=SER, x=1), lambda: s.get(node),
           lambda: s.get(node, SER, node=node), lambda: s.get(node, SER, 3),
           lambda: s.set(node, 1, serializer=SER), lambda: s.remove(key=node),
           lambda: s.get_by_key(k="a")]

    async def body(i):
        await s.set(node=node, value=i, ttl=None, serializer=SER)
        assert await s.get(node, serializer=SER) == i
        assert len(await s.get_all(nodes=[node], serializer=SER)) == 1
        await s.set_all(data=[(node, i)], ttl=None, serializer=SER)
        await s.remove(node=node)
        for call in bad:
            try:
                await call()
            except TypeError:
                pass

    for i in range(500):
        await body(i)
    refs = sys.getrefcount(node), sys.getrefcount(SER)
    before = snapshot()
    for i in range(int(sys.argv[2])):
        await body(i)
    after = snapshot()
    assert (sys.getrefcount(node), sys.getrefcount(SER)) == refs
    await s.close()
    print(before[0], after[0], before[1], after[1])

asyncio.run(main())
'''


def test_keyword_and_wrong_calls_do_not_leak(tmp_path):
    """The keyword path and every TypeError, looped in a fresh interpreter:
    arguments and error messages released (a message leaked per call would
    be ~20 MiB here)."""
    _sql_available("sqlite")
    code = "import sys; sys.argv[1:] = %r\n" % [str(tmp_path / "leak.db"), "20000"]
    assert_flat(run_python(code + LEAK_SNAPSHOT + LEAK_LOOP), rss_kib=2048)
