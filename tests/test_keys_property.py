"""Keys compare byte for byte on every storage: each key gets its own value
back, or a clear error naming it, never another key's (issue 21).

Hostile keys (NUL, CR/LF, RESP-looking text, spaces, case and accent
variants, non-BMP characters, lone surrogates, empty, 1 MB) and generated
variants of them (a fixed seed) go through get, coalesced gets, get_all,
set and invalidate on local tlfu/lru, Redis, PostgreSQL, MySQL/MariaDB
(our DDL and a 0.3.0 table under a case-insensitive collation) and SQLite.
"""
import asyncio
import dataclasses
import random
import unicodedata
from datetime import timedelta

import pytest

import cacheme
from cacheme import _core
from cacheme.models import sentinel
from cacheme.serializer import MsgPackSerializer
from conftest import unique
from redis_servers import _redis_session_server, redis_server  # noqa: F401  (fixtures)
from sql_servers import ModuleServers

SEED = 2112

FIXED = [
    "a", "a\x00", "a\x00b", "a\x00c", "\x00",
    "x\r\ny", "x\ny", "x\r", "\r\n",
    "*1\r\n$3\r\nGET", "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", "$-1\r\n", "-ERR x\r\n",
    " ", "a b", "a ", "a  ", " a", "\t", "\u00a0",
    "user", "User", "USER", "café", "cafe", "CAFÉ", "cafe\u0301", "ß", "ss", "ǅ", "ǆ",
    "😀", "😀x", "\U0001d518ser", "\U0010ffff",
    "\ud800", "a\udfff", "\udc80\udc81",
    "",
    "é" * 512, "é" * 513, "k" * 512, "k" * 513,
    "k" * (1 << 20),
    "%s", "%", "'", "\\", "';DROP TABLE x;--",
]

PIECES = ["a", "A", "é", "e\u0301", "É", "ß", "S", "\x00", "\r", "\n", "\r\n", " ", "*", "$",
          "😀", "\ud800", "\udfff", ":", "İ", "ı", "k", "\u00a0", "\ufeff"]


def variants(rng, keys):
    """Case/accent/normalization flips of keys and random concatenations."""
    out = []
    for k in keys:
        if len(k) > 64:
            continue
        for f in (str.upper, str.lower, str.swapcase, str.casefold):
            out.append(f(k))
        try:
            out.append(unicodedata.normalize("NFD", k))
            out.append(unicodedata.normalize("NFKC", k))
        except UnicodeError:
            pass
        if k:
            i = rng.randrange(len(k) + 1)
            out.append(k[:i] + rng.choice(PIECES) + k[i:])
    for _ in range(60):
        out.append("".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 8))))
    return out


def all_keys():
    rng = random.Random(SEED)
    keys = list(FIXED) + variants(rng, FIXED)
    seen, out = set(), []
    for k in keys:
        if k not in seen:
            seen.add(k)
            out.append(k)
    return out


KEYS = all_keys()
# on local storages (no I/O) every key; elsewhere a sample, the fixed keys always
SAMPLE = list(FIXED) + random.Random(SEED + 1).sample(KEYS[len(FIXED):], 80)


def value_of(k):
    """A value naming its key (ASCII: every serializer takes it)."""
    return "v:" + ascii(k)


def make_node(name, serializer):
    loads = []

    @dataclasses.dataclass
    class KNode(cacheme.Node):
        k: str

        def key(self) -> str:
            return self.k

        async def load(self):
            loads.append(self.k)
            return value_of(self.k)

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=name, ttl=timedelta(hours=1))]

    KNode.Meta.serializer = serializer
    KNode.__qualname__ = unique("KNode")
    return KNode, loads


def is_clear_error(e, k):
    """An error raised for a key: a ValueError/TypeError naming it."""
    return isinstance(e, (ValueError, TypeError)) and repr(k)[1:-1][:30] in str(e)


async def check_storage(name, keys, *, raw_storage, shared_rows=False):
    """The property on one registered storage: every path hands each key its
    own value, or raises a clear error naming it. shared_rows: keys equal
    under the table's collation share one row (a 0.3.0 table): a key may
    then also miss when another took the row over, never read its value."""
    def own(got, want, what):
        if shared_rows and got is sentinel:
            return
        assert got == want, f"{what} read {got!r}, not {want!r}"

    Node, loads = make_node(name, MsgPackSerializer())
    ser = Node.Meta.serializer
    accepted, refused = [], []
    # get: load then fill; the stored value must be the key's own
    for k in keys:
        try:
            got = await cacheme.get(Node(k))
        except Exception as e:
            assert is_clear_error(e, k), f"unclear error for key {k!r}: {e!r}"
            refused.append(k)
            continue
        assert got == value_of(k), f"key {k!r} got {got!r}"
        accepted.append(k)
    # every key again, from the storage now (another key's row would show)
    loads.clear()
    for k in accepted:
        assert await cacheme.get(Node(k)) == value_of(k), k
    # straight from the storage: the row is the key's own, or missing
    # (a key the storage does not hold, e.g. one not encodable)
    for k in accepted:
        got = await raw_storage.get(Node(k), ser)
        assert got is sentinel or got == value_of(k), f"key {k!r} read {got!r}"
    held = [k for k in accepted if await raw_storage.get(Node(k), ser) is not sentinel]
    # concurrent gets (coalesced into one query on the SQL storages)
    got = await asyncio.gather(*(cacheme.get(Node(k)) for k in accepted))
    assert got == [value_of(k) for k in accepted]
    # get_all: each key its own, in order
    got = await cacheme.get_all([Node(k) for k in accepted])
    assert got == [value_of(k) for k in accepted]
    pairs = await raw_storage.get_all([Node(k) for k in accepted], ser)
    for node, v in pairs:
        assert v == value_of(node.k), f"get_all: key {node.k!r} read {v!r}"
    if not shared_rows:
        assert {node.k for node, _ in pairs} == set(held)
    # set: overwrite one key of each pair of neighbours with another value;
    # the other keeps its own
    for i, k in enumerate(held):
        if i % 2 == 0:
            await raw_storage.set(Node(k), "w:" + ascii(k), None, ser)
    for i, k in enumerate(held):
        got = await raw_storage.get(Node(k), ser)
        own(got, ("w:" if i % 2 == 0 else "v:") + ascii(k), f"after set: key {k!r}")
    # invalidate every other key: only that key is gone
    for i, k in enumerate(held):
        if i % 2 == 1:
            await cacheme.invalidate(Node(k))
    for i, k in enumerate(held):
        got = await raw_storage.get(Node(k), ser)
        if i % 2 == 1:
            assert got is sentinel, f"after invalidate: key {k!r} read {got!r}"
        else:
            own(got, "w:" + ascii(k), f"after invalidate of others: key {k!r}")
    # the refused keys keep being refused, clearly, on every path
    for k in refused:
        with pytest.raises((ValueError, TypeError)) as ei:
            await cacheme.get_all([Node(k)])
        assert is_clear_error(ei.value, k), ei.value
        with pytest.raises((ValueError, TypeError)) as ei:
            await cacheme.invalidate(Node(k))
        assert is_clear_error(ei.value, k), ei.value
    return accepted, refused


# ------------------------------------------------------------------ storages


@pytest.mark.parametrize("policy", ["tlfu", "lru"])
async def test_local(policy):
    name = unique("local-")
    storage = cacheme.Storage(url=f"local://{policy}", size=100000)
    await cacheme.register_storage(name, storage)
    accepted, refused = await check_storage(name, KEYS, raw_storage=storage)
    assert refused == []


async def test_redis(redis_server):  # noqa: F811
    name = unique("redis-")
    storage = cacheme.Storage(url=redis_server.url)
    await cacheme.register_storage(name, storage)
    accepted, refused = await check_storage(name, SAMPLE, raw_storage=storage)
    # binary-safe: only keys that are not text at all may be refused
    assert all(any(0xD800 <= ord(c) <= 0xDFFF for c in k) for k in refused), refused


_servers = ModuleServers()


def sql_url(backend, tmp_path):
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/keys.db"
    return _servers.url(backend)


@pytest.fixture(scope="module", autouse=True)
def _stop_servers():
    yield
    _servers.cleanup()


def _available(backend):
    tp = {"postgresql": _core.PgClient, "mysql": _core.MySQLClient,
          "sqlite": _core.SQLiteClient}[backend]
    return tp.__new__(tp).library_available


# 0.3.0's DDL, the key column under the server's default collation, which
# Debian's MariaDB makes utf8mb4_general_ci (set here explicitly)
DDL_030_MYSQL = """CREATE TABLE {t} (
    id INTEGER NOT NULL AUTO_INCREMENT,
    `key` VARCHAR(512),
    value BLOB,
    expire DATETIME(6),
    updated_at DATETIME(6) DEFAULT now(6),
    PRIMARY KEY (id),
    UNIQUE (`key`)
) DEFAULT CHARSET = utf8mb4 COLLATE = {collation}"""


@pytest.mark.parametrize("backend,table", [
    ("postgresql", "ours"), ("sqlite", "ours"), ("mysql", "ours"),
    ("mysql", "utf8mb4_general_ci"), ("mysql", "utf8mb4_unicode_ci"),
])
async def test_sql(backend, table, tmp_path):
    if not _available(backend):
        pytest.skip(f"cacheme built without the {backend} library")
    url = sql_url(backend, tmp_path)
    t = unique("cm_k")
    storage = cacheme.Storage(url=url, table=t, create_table=table == "ours")
    if table != "ours":
        await storage._storage.execute(DDL_030_MYSQL.format(t=t, collation=table))
    name = unique("sql-")
    await cacheme.register_storage(name, storage)
    accepted, refused = await check_storage(name, SAMPLE, raw_storage=storage,
                                            shared_rows=table != "ours")
    for k in refused:
        full = f"cacheme:{k}:v1"
        assert (len(full) > 512 or any(0xD800 <= ord(c) <= 0xDFFF for c in k)
                or (backend == "postgresql" and "\x00" in k)), f"{k!r} refused"
    await storage.close()


class RawKey:
    """A bare node: just a full key."""

    def __init__(self, key):
        self.k = key

    def full_key(self):
        return self.k


async def _global_status(s, var):
    """A global status counter of the server, through the storage itself
    (copied into a row of its table, read back with get)."""
    await s.execute(
        f"INSERT INTO {s.table} (`key`, value) SELECT 'status:{var}', VARIABLE_VALUE "
        f"FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = '{var.upper()}' "
        "ON DUPLICATE KEY UPDATE value = VALUES(value)")
    return int(await s.get(RawKey(f"status:{var}"), None))


@pytest.mark.parametrize("collation", ["utf8mb4_general_ci", "utf8mb4_bin"])
async def test_mysql_exact_compare_still_uses_the_index(collation, tmp_path):
    # reads and deletes add BINARY `key` = ? next to `key` = ?: the row is
    # still found through the unique index (no scan of the table)
    if not _available("mysql"):
        pytest.skip("cacheme built without the mysql library")
    url = sql_url("mysql", tmp_path)
    t = unique("cm_i")
    storage = cacheme.Storage(url=url, table=t, pool_size=1)
    s = storage._storage
    await s.execute(DDL_030_MYSQL.format(t=t, collation=collation))
    rows = 4000
    for i in range(0, rows, 500):
        await s.set_all([(RawKey(f"k{j}"), b"v") for j in range(i, i + 500)], None, None)
    scans = ("Handler_read_rnd_next", "Handler_read_next")

    async def reads():
        return sum([await _global_status(s, v) for v in scans])

    base0 = await reads()
    base = await reads() - base0  # what reading the counters costs
    t0 = await reads()
    for i in range(0, 40, 2):
        assert await s.get(RawKey(f"k{i}"), None) == b"v"       # HANDLER read
        assert await s.get(RawKey(f"K{i}"), None) is sentinel   # collation-equal
    got = await asyncio.gather(*(s.get(RawKey(f"k{i}"), None) for i in range(40, 60)))
    assert got == [b"v"] * 20                                   # one IN query
    await s.remove(RawKey("k1"))
    await s.remove(RawKey("K3"))
    assert await s.get(RawKey("k3"), None) == b"v"
    spent = await reads() - t0 - base
    assert spent < rows // 4, f"{spent} rows read beyond the counters' own: a scan?"
    await storage.close()
