"""Bad input gets a clear TypeError/ValueError naming the problem."""
import dataclasses
from datetime import timedelta

import pytest

import cacheme
from cacheme import Cache, Node
from cacheme._core import LocalStore
from conftest import register_local, unique
from redis_servers import _redis_session_server, redis_server  # noqa: F401  (fixtures)


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown storage scheme 'foo'"):
        cacheme.Storage(url="foo://x")


def test_unknown_local_policy_and_bad_size():
    with pytest.raises(ValueError, match="unknown policy 'lfu'"):
        cacheme.Storage(url="local://lfu", size=10)
    for size in (0, -5):
        with pytest.raises(ValueError, match="size must be > 0"):
            cacheme.Storage(url="local://tlfu", size=size)
    with pytest.raises(TypeError, match="size must be an int"):
        cacheme.Storage(url="local://tlfu", size="10")
    with pytest.raises(TypeError):
        cacheme.Storage(url="local://tlfu")  # size is required
    with pytest.raises(ValueError, match="size must be > 0"):
        LocalStore("lru", 0)
    with pytest.raises(ValueError, match="expected 'lru' or 'tlfu'"):
        LocalStore("arc", 10)


async def test_key_not_returning_str():
    name = await register_local()

    calls = []

    @dataclasses.dataclass
    class IntKey(Node):
        uid: int

        def key(self):
            calls.append(self.uid)
            return self.uid

        class Meta(Node.Meta):
            caches = [Cache(storage=name, ttl=None)]

    # the first call resolves the class's key(), later ones call it directly
    for i in range(3):
        with pytest.raises(TypeError, match=r"IntKey.key\(\) must return str, not int"):
            await cacheme.get(IntKey(i))
    assert calls == [0, 1, 2]  # once per get


async def test_mixed_node_classes_in_get_all():
    name = await register_local()

    @dataclasses.dataclass
    class A(Node):
        uid: int

        def key(self):
            return f"a:{self.uid}"

        class Meta(Node.Meta):
            caches = [Cache(storage=name, ttl=None)]

    @dataclasses.dataclass
    class B(A):
        def key(self):
            return f"b:{self.uid}"

    with pytest.raises(TypeError, match="one class: expected .*A, got .*B"):
        await cacheme.get_all([A(1), B(2)])


async def test_unregistered_storage_name():
    missing = unique("missing")

    @dataclasses.dataclass
    class Orphan(Node):
        uid: int

        def key(self):
            return f"o:{self.uid}"

        class Meta(Node.Meta):
            caches = [Cache(storage=missing, ttl=None)]

    with pytest.raises(ValueError, match=f"storage '{missing}' is not registered"):
        await cacheme.get(Orphan(1))
    with pytest.raises(ValueError, match="not registered"):
        Cache(storage=missing, ttl=None).storage


def test_bad_cache_and_ttl():
    with pytest.raises(TypeError, match="storage name"):
        Cache(storage=3, ttl=None)
    with pytest.raises(TypeError, match="timedelta"):
        Cache(storage="x", ttl=5)
    with pytest.raises(ValueError, match="positive"):
        Cache(storage="x", ttl=timedelta(0))
    s = LocalStore("lru", 3)
    with pytest.raises(ValueError, match="positive"):
        s.set("k", 1, -1)
    with pytest.raises(TypeError, match="ttl must be"):
        s.set("k", 1, "soon")
    with pytest.raises(TypeError, match="key must be str"):
        s.set(1, 1)


async def test_bad_get_arguments():
    with pytest.raises(TypeError, match="load_fn must be callable"):
        cacheme.get(object(), 5)
    with pytest.raises(TypeError, match="unexpected keyword"):
        cacheme.get(object(), loader=None)
    with pytest.raises(TypeError, match="not a cacheme Node"):
        cacheme.get(object())


async def test_register_non_storage():
    with pytest.raises(TypeError, match="is not a storage"):
        await cacheme.register_storage("x", object())
    with pytest.raises(TypeError, match="name must be str"):
        await cacheme.register_storage(1, cacheme.Storage(url="local://lru", size=1))


def test_bloom_filter_arguments():
    with pytest.raises(ValueError, match="size must be > 0"):
        cacheme.BloomFilter(0, 0.01)
    with pytest.raises(ValueError, match="between 0 and 1"):
        cacheme.BloomFilter(10, 1.5)


# ------------------------------------------------ storage keys, values, options
# (issue 21: keys compare byte for byte, values come back as they went in,
# each option error names the option and what is allowed)

import asyncio  # noqa: E402
import logging  # noqa: E402

from cacheme import _core  # noqa: E402
from cacheme.models import sentinel  # noqa: E402
from sql_servers import ModuleServers  # noqa: E402

_sql_servers = ModuleServers()


def sql_url(backend, tmp_path=None):
    """The module's temporary server of a backend (started once), or a
    SQLite file."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/errors.db"
    tp = _core.PgClient if backend == "postgresql" else _core.MySQLClient
    if not tp.__new__(tp).library_available:
        pytest.skip(f"cacheme built without the {backend} library")
    return _sql_servers.url(backend)


@pytest.fixture(scope="module", autouse=True)
def _stop_sql_servers():
    yield
    _sql_servers.cleanup()


async def sql_storage(backend, tmp_path=None, **options):
    name = unique("sql-")
    storage = cacheme.Storage(url=sql_url(backend, tmp_path), table=unique("cm_e"),
                              create_table=True, **options)
    await cacheme.register_storage(name, storage)
    return name, storage


def key_node(name, serializer=None):
    loads = []

    @dataclasses.dataclass
    class KeyNode(Node):
        k: str

        def key(self):
            return self.k

        async def load(self):
            loads.append(self.k)
            return f"loaded {self.k!r}".encode()

        class Meta(Node.Meta):
            caches = [Cache(storage=name, ttl=None)]

    KeyNode.Meta.serializer = serializer
    KeyNode.__qualname__ = unique("KeyNode")
    return KeyNode, loads


async def test_postgresql_refuses_a_key_with_nul():
    # libpq reads text parameters up to the first NUL: 'a\x00c' read (and
    # overwrote) the row of 'a\x00b', and a batch with a NUL failed whole.
    # The key column is text, which cannot hold NUL: such a key is refused,
    # raised to the caller, on every path.
    name, storage = await sql_storage("postgresql")
    N, loads = key_node(name)
    assert await cacheme.get(N("a")) == b"loaded 'a'"
    for k in ("a\x00b", "a\x00c"):
        with pytest.raises(_core.SQLKeyError, match=r"key 'cacheme:a\\x00[bc]:' .*NUL") as ei:
            await cacheme.get(N(k))
        assert isinstance(ei.value, ValueError)
    with pytest.raises(ValueError, match=r"a\\x00c.*NUL"):
        await cacheme.get_all([N("a"), N("a\x00c")])
    with pytest.raises(ValueError, match=r"a\\x00c.*NUL"):
        await cacheme.invalidate(N("a\x00c"))
    with pytest.raises(ValueError, match=r"a\\x00c.*NUL"):
        await storage.set(N("a\x00c"), b"x", None, None)
    # concurrent gets (one coalesced query): the others are not failed by it
    got = await asyncio.gather(cacheme.get(N("b")), cacheme.get(N("a\x00d")), cacheme.get(N("c")),
                               return_exceptions=True)
    assert got[0] == b"loaded 'b'" and got[2] == b"loaded 'c'"
    assert isinstance(got[1], _core.SQLKeyError)
    assert await storage.get(N("a"), None) == b"loaded 'a'"
    assert loads == ["a", "b", "c"]


@pytest.mark.parametrize("backend", ["postgresql", "mysql", "sqlite"])
async def test_sql_lone_surrogate_key(backend, tmp_path):
    # was: TypeError('function takes exactly 5 arguments (1 given)') logged
    name, storage = await sql_storage(backend, tmp_path)
    N, loads = key_node(name)
    with pytest.raises(_core.SQLKeyError, match=r"key 'cacheme:x\\ud800:' .*lone surrogate"):
        await cacheme.get(N("x\ud800"))
    with pytest.raises(ValueError, match="lone surrogate"):
        await cacheme.get_all([N("x\ud800")])
    assert loads == []


async def test_redis_lone_surrogate_key(redis_server):  # noqa: F811
    name = unique("redis-")
    await cacheme.register_storage(name, cacheme.Storage(url=redis_server.url))
    N, loads = key_node(name)
    with pytest.raises(_core.StorageKeyError, match=r"redis storage: key .*lone surrogate"):
        await cacheme.get(N("x\udfff"))
    with pytest.raises(_core.StorageKeyError, match="lone surrogate"):
        await cacheme.invalidate(N("x\udfff"))
    assert loads == []


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
async def test_sql_key_longer_than_the_column(backend):
    # was: a logged fill error and a miss (a load) on every request
    name, storage = await sql_storage(backend)
    N, loads = key_node(name)
    fits = "k" * (512 - len("cacheme::"))  # full key: 512 characters
    assert await cacheme.get(N(fits)) == f"loaded {fits!r}".encode()
    assert await cacheme.get(N(fits)) == f"loaded {fits!r}".encode()
    assert loads == [fits]
    long = "é" * 513
    msg = r"is 522 characters long, longer than the key column's limit of 512 characters"
    for _ in range(2):
        with pytest.raises(_core.SQLKeyError, match=msg):
            await cacheme.get(N(long))
    with pytest.raises(_core.SQLKeyError, match=msg):
        await cacheme.get_all([N(fits), N(long)])
    assert loads == [fits]


@pytest.mark.parametrize("backend", ["postgresql", "mysql", "sqlite"])
async def test_sql_raw_values_come_back_as_they_went_in(backend, tmp_path):
    # was: a str cached without a serializer came back as bytes on the next hit
    name, storage = await sql_storage(backend, tmp_path)
    N, _ = key_node(name)
    await storage.set(N("b"), b"\x00bytes\xff", None, None)
    assert await storage.get(N("b"), None) == b"\x00bytes\xff"
    for value in ("text", bytearray(b"x"), 5):
        with pytest.raises(TypeError, match=f"only bytes .*not {type(value).__name__}"):
            await storage.set(N("s"), value, None, None)
        with pytest.raises(TypeError, match="only bytes"):
            await storage.set_all([(N("s"), value)], None, None)
    assert await storage.get(N("s"), None) is sentinel


def test_sql_unknown_option():
    # was: SQLClient() takes at most 9 arguments (10 given)
    with pytest.raises(TypeError, match="MySQLStorage: unknown option 'colour' .*allowed: table"):
        cacheme.Storage(url="mysql://u@localhost/db", table="t", colour="red")
    with pytest.raises(TypeError, match="PostgresStorage: unknown option 'sise'"):
        cacheme.Storage(url="postgresql://localhost/db", table="t", sise=3)
    with pytest.raises(TypeError, match="SQLiteStorage: unknown option 'x' .*busy_timeout"):
        cacheme.Storage(url="sqlite:///x.db", table="t", x=1)


@pytest.mark.parametrize("url", ["postgresql://localhost/db", "mysql://u@localhost/db",
                                 "sqlite:///x.db"])
def test_sql_option_ranges(url):
    db = url.split(":")[0]
    bad = [
        ("timeout", float("inf"), ValueError, r"timeout must be a finite number of seconds > 0"),
        ("timeout", 0, ValueError, "timeout must be"),
        ("connect_timeout", float("nan"), ValueError, "connect_timeout must be"),
        ("sweep_interval", -1, ValueError, r"sweep_interval must be .*>= 0 \(0 disables"),
        ("sweep_interval", float("inf"), ValueError, "sweep_interval must be"),
        ("sweep_limit", 0, ValueError, "sweep_limit must be between 1 and"),
        ("sweep_limit", 2**63, ValueError, "sweep_limit must be between 1 and"),
        ("pool_size", 2**63, ValueError, "pool_size must be between 1 and"),
        ("pool_size", "3", TypeError, "pool_size must be an int, not str"),
        ("timeout", "5", TypeError, "timeout must be a number of seconds, not str"),
    ]
    for option, value, exc, msg in bad:
        with pytest.raises(exc, match=f"{db} storage: {msg}"):
            cacheme.Storage(url=url, table="t", **{option: value})
    # the C type checks them too
    tp = {"postgresql": _core.PgClient, "mysql": _core.MySQLClient,
          "sqlite": _core.SQLiteClient}[db]
    if tp.__new__(tp).library_available:
        for option, value in (("timeout", float("inf")), ("sweep_interval", -1.0),
                              ("connect_timeout", 0.0)):
            with pytest.raises(ValueError, match=f"{option} must be a finite number"):
                tp("x", "t", **{option: value})
        with pytest.raises(ValueError, match="sweep_limit must be at least 1 row, not 0"):
            tp("x", "t", sweep_limit=0)


def test_local_size_too_large():
    # was: OverflowError('int too big to convert'), naming nothing
    for size in (2**63, 2**64 + 1):
        with pytest.raises(ValueError, match=f"local storage size must be < 67108864, got {size}"):
            cacheme.Storage(url="local://tlfu", size=size)
    with pytest.raises(ValueError, match="size must be > 0"):
        cacheme.Storage(url="local://lru", size=-(2**64))


def test_redis_option_errors_name_the_option():
    # was: one generic text for every option
    cases = [
        ({"pool_size": 0}, ValueError, "pool_size must be between 1 and 2147483647, not 0"),
        ({"pool_size": 2**63}, ValueError, "pool_size must be between 1 and"),
        ({"pipeline": -1}, ValueError, "pipeline must be between 1 and"),
        ({"timeout": float("inf")}, ValueError, "timeout must be a finite number of seconds > 0"),
        ({"connect_timeout": 0}, ValueError, "connect_timeout must be a finite number"),
        ({"retry_backoff": -1}, ValueError, "retry_backoff must be a finite number"),
        ({"retry_backoff": 2.0, "retry_backoff_max": 1.0}, ValueError,
         r"retry_backoff_max \(1.0\) must be >= retry_backoff \(2.0\)"),
        ({"db": -1}, ValueError, "db must be between 0 and"),
        ({"timeout": "1"}, TypeError, "timeout must be a number of seconds, not str"),
        ({"colour": 1}, TypeError, r"unknown option\(s\) colour \(allowed: host"),
    ]
    for options, exc, msg in cases:
        with pytest.raises(exc, match=f"redis storage: {msg}"):
            cacheme.Storage(url="redis://localhost:6379", **options)
    with pytest.raises(ValueError, match="port must be between 1 and 65535"):
        cacheme.Storage(url="redis://localhost", port=70000)
    # RedisClient (C) itself: one message per option too
    for options, msg in (({"pool_size": 0}, "pool_size must be between 1"),
                         ({"timeout": float("inf")}, "timeout must be a finite number"),
                         ({"port": 0}, "port must be between 1 and 65535, not 0"),
                         ({"retry_backoff": 0.5, "retry_backoff_max": 0.1},
                          "retry_backoff_max")):
        with pytest.raises(ValueError, match=f"redis: {msg}"):
            _core.RedisClient(**options)


async def test_postgresql_notices_go_to_the_cacheme_logger(caplog, capfd):
    # was: libpq's default notice processor, printing to stderr
    name, storage = await sql_storage("postgresql")
    with caplog.at_level(logging.INFO, logger="cacheme"):
        await storage._storage.execute(
            "DO $$ BEGIN RAISE NOTICE 'cacheme-notice-1'; RAISE WARNING 'cacheme-warn-2'; END $$")
    got = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "cacheme"]
    assert ("INFO", "cacheme postgresql: server says: NOTICE:  cacheme-notice-1") in got, got
    assert ("WARNING", "cacheme postgresql: server says: WARNING:  cacheme-warn-2") in got, got
    assert "cacheme-notice-1" not in capfd.readouterr().err
