"""Freshness options (refresh_after, stale_if_error) on SQL storages:
PostgreSQL, MySQL/MariaDB and SQLite report each value's age (its row's
updated_at) on get and on get_all, alone and behind a local cache.

The servers stamp updated_at and expire with their own clocks, which the
test clock (_core._advance_clock) does not move: a row stays readable while
the value's age, read against the moved clock, passes its TTL. Uses the
servers of the machine (PostgreSQL and MariaDB on their default ports)."""
import asyncio
import dataclasses
import json
import os
import subprocess
import textwrap
import uuid
from datetime import timedelta

import pytest

import cacheme
from cacheme import Cache, Node, _core
from cacheme.serializer import MsgPackSerializer, PickleSerializer
from conftest import register_local, unique
from sql_servers import server_env
from test_freshness import Source, _real_clock_after, advance, make_node, settle  # noqa: F401
from test_sql import backend  # noqa: F401 (fixture)

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
MY_URL = "mysql://root@127.0.0.1:3306/test"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_030 = os.path.join(ROOT, ".bench", "venv-sql-030", "bin", "python")
TTL = timedelta(seconds=60)



@pytest.fixture
async def sql(backend, tmp_path):
    """register(table=None): a new storage of the backend on a new table (or
    on table), its name; the tables are dropped after the test."""
    made = []
    urls = {"postgresql": PG_URL, "mysql": MY_URL, "sqlite": f"sqlite:///{tmp_path}/fresh.db"}

    async def register(table=None):
        name = unique(f"fresh-{backend}-")
        table = table or f"cm_fresh_{uuid.uuid4().hex[:12]}"
        await cacheme.register_storage(name, cacheme.Storage(
            url=urls[backend], table=table, create_table=True))
        client = cacheme.data.get_storage_by_name(name)._storage
        made.append(client)
        return name

    register.url = urls[backend]
    register.backend = backend
    yield register
    for client in made:
        await client.execute(f"DROP TABLE IF EXISTS {client.table}")


async def chain(sql, src, local_first, ttl=TTL, **meta):
    """A node caching in [local, sql] or [sql]; the node, the local store
    (or None) and the SQL storage."""
    name = await sql()
    caches = [Cache(name, ttl)]
    store = None
    if local_first:
        local = await register_local()
        caches.insert(0, Cache(local, ttl))
        store = cacheme.data.get_storage_by_name(local)._local
    N = make_node(caches, src, **meta)
    N.Meta.serializer = PickleSerializer()
    return N, store, cacheme.data.get_storage_by_name(name)._storage


CHAINS = pytest.mark.parametrize("local_first", [False, True], ids=["sql", "local+sql"])


def forget_local(store, *nodes):
    """Only the SQL storage keeps these: the next read is an SQL hit."""
    for n in nodes:
        if store is not None:
            assert store.remove(n.full_key())


# ------------------------------------------------------------ refresh_after


@CHAINS
async def test_refresh_after_reloads_an_old_sql_value_in_the_background(sql, local_first):
    src = Source()
    N, store, _ = await chain(sql, src, local_first, refresh_after=timedelta(seconds=5))
    assert await cacheme.get(N(1)) == (1, 1)
    forget_local(store, N(1))
    assert await cacheme.get(N(1)) == (1, 1)  # an SQL hit, 0 s old: no refresh
    await settle()
    assert src.loads == [1]
    forget_local(store, N(1))
    src.gate = asyncio.Event()
    advance(6)  # updated_at is now 6 s ago
    # the callers get the old value at once, while the reload waits at its gate
    got = await asyncio.wait_for(asyncio.gather(*[cacheme.get(N(1)) for _ in range(3)]), 5)
    assert got == [(1, 1)] * 3
    assert src.loads == [1, 1]
    src.gate.set()
    await settle()
    assert cacheme.stats(N).refresh_counts()["background"] == 1
    assert await cacheme.get(N(1)) == (1, 2)


async def make_older(sql, client, node, seconds):
    """Move the row's updated_at `seconds` back, in the table."""
    t, k = client.table, node.full_key()
    stmt = {
        "postgresql": f"UPDATE {t} SET updated_at = updated_at - interval '{seconds} seconds' "
                      f"WHERE key = '{k}'",
        "mysql": f"UPDATE {t} SET updated_at = updated_at - INTERVAL {seconds} SECOND "
                 f"WHERE `key` = '{k}'",
        # 0.3.0's text form: no microseconds, no offset
        "sqlite": f"UPDATE {t} SET updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now', "
                  f"'-{seconds} seconds') WHERE key = '{k}'",
    }[sql.backend]
    await client.execute(stmt)


async def test_refresh_after_on_concurrent_sql_reads(sql):
    """Concurrent gets of one storage are read with one statement (PostgreSQL
    and MySQL coalesce them): each request still gets its own row's age."""
    src = Source()
    N, _, client = await chain(sql, src, False, refresh_after=timedelta(seconds=5))
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]
    await make_older(sql, client, N(1), 10)
    got = await asyncio.gather(*[cacheme.get(N(i)) for i in (1, 2, 1)])
    assert got == [(1, 1), (2, 1), (1, 1)]
    await settle()
    assert sorted(src.loads) == [1, 1, 2]  # only 1 was due
    assert await cacheme.get(N(1)) == (1, 2)


# ------------------------------------------------------------ stale_if_error


@CHAINS
async def test_stale_if_error_serves_an_sql_value_within_the_window(sql, local_first):
    src = Source()
    N, store, _ = await chain(sql, src, local_first, stale_if_error=timedelta(seconds=30))
    assert await cacheme.get(N(1)) == (1, 1)
    forget_local(store, N(1))
    src.fail = ConnectionError("down")
    advance(61)  # past the 60 s TTL by updated_at; within the 30 s window
    assert await cacheme.get(N(1)) == (1, 1)
    assert cacheme.stats(N).refresh_counts()["stale_if_error"] == 1
    src.fail = None
    assert await cacheme.get(N(1)) == (1, 3)  # past the TTL: not a hit, a load (the 3rd)


@CHAINS
async def test_stale_if_error_does_not_serve_an_sql_value_past_the_window(sql, local_first):
    src = Source()
    N, store, _ = await chain(sql, src, local_first, stale_if_error=timedelta(seconds=30))
    assert await cacheme.get(N(1)) == (1, 1)
    forget_local(store, N(1))
    src.fail = ConnectionError("down")
    advance(91)  # expired 31 s ago
    with pytest.raises(ConnectionError):
        await cacheme.get(N(1))
    assert cacheme.stats(N).refresh_counts()["stale_if_error"] == 0


# ------------------------------------------------------------ get_all


@CHAINS
async def test_get_all_does_not_serve_an_sql_value_past_its_ttl(sql, local_first):
    """With stale_if_error the rows are kept past their TTL; get_all's batch
    read takes their ages and reads those as misses, as get does."""
    src = Source()
    N, store, _ = await chain(sql, src, local_first, stale_if_error=timedelta(seconds=30))
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]
    forget_local(store, N(1), N(2))
    advance(30)
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]  # within the TTL: hits
    assert sorted(src.loads) == [1, 2]
    forget_local(store, N(1), N(2))
    advance(31)  # 61 s old: past the 60 s TTL, still readable in the table
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 2), (2, 2)]
    assert sorted(src.loads) == [1, 1, 2, 2]


async def test_get_all_fills_local_with_the_remaining_ttl(sql):
    src = Source()
    N, store, _ = await chain(sql, src, True, ttl=timedelta(seconds=10),
                              refresh_after=timedelta(seconds=100))
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]
    forget_local(store, N(1))  # only the table has it
    advance(8)
    assert await cacheme.get_all([N(1), N(2)]) == [(1, 1), (2, 1)]  # N(1) from SQL, 8 s old
    assert store.get(N(1).full_key()) == (1, 1)
    advance(3)  # 11 s since it was written: gone from the local cache too
    assert store.get(N(1).full_key()) is None
    assert src.loads == [1, 2]


async def test_get_fills_local_with_the_remaining_ttl(sql):
    src = Source()
    N, store, _ = await chain(sql, src, True, ttl=timedelta(seconds=10),
                              refresh_after=timedelta(seconds=100))
    assert await cacheme.get(N(1)) == (1, 1)
    forget_local(store, N(1))
    advance(8)
    assert await cacheme.get(N(1)) == (1, 1)  # from SQL, 8 s old
    assert store.get(N(1).full_key()) == (1, 1)
    advance(3)
    assert store.get(N(1).full_key()) is None
    assert src.loads == [1]


# ------------------------------------------------------------ rows of 0.3.0


SCRIPT_030 = textwrap.dedent(
    """
    import asyncio, json, sys
    from dataclasses import dataclass
    from datetime import timedelta
    import cacheme
    from cacheme.serializer import MsgPackSerializer

    url, table = sys.argv[1:3]

    @dataclass
    class UserNode(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"user:{self.uid}"

        async def load(self):
            return {"uid": self.uid, "by": "030"}

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage="sql", ttl=timedelta(hours=1))]
            serializer = MsgPackSerializer()

    async def main():
        await cacheme.register_storage("sql", cacheme.Storage(url=url, table=table))
        print(json.dumps([await cacheme.get(UserNode(i)) for i in range(3)]))

    asyncio.run(main())
    """
)


def user_node(caches, **meta):
    loads = []

    @dataclasses.dataclass
    class UserNode(Node):
        uid: int

        def key(self) -> str:
            return f"user:{self.uid}"

        async def load(self):
            loads.append(self.uid)
            return {"uid": self.uid, "by": "us"}

        class Meta(Node.Meta):
            pass

    UserNode.Meta.version = "v1"
    UserNode.Meta.caches = caches
    UserNode.Meta.serializer = MsgPackSerializer()
    for k, v in meta.items():
        setattr(UserNode.Meta, k, v)
    UserNode.__qualname__ = unique("UserNode")
    return UserNode, loads


@pytest.mark.skipif(not os.path.exists(VENV_030),
                    reason="cacheme 0.3.0 venv missing (make bench-sql-venvs)")
async def test_a_row_written_by_030_has_its_age(sql):
    """0.3.0 left updated_at to the column's default (UTC on this machine's
    servers; SQLite's text without microseconds nor offset)."""
    table = f"cm_fresh_{uuid.uuid4().hex[:12]}"
    name = await sql(table)  # ours makes the table (0.3.0's DDL)
    r = await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(
        [VENV_030, "-c", SCRIPT_030, sql.url, table], capture_output=True, text=True,
        timeout=120, cwd="/", env=server_env()))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])[0] == {"uid": 0, "by": "030"}
    hour = timedelta(hours=1)
    N, loads = user_node([Cache(name, hour)], refresh_after=timedelta(seconds=20))
    # written a moment ago: not due (an age off by hours would be)
    assert await cacheme.get(N(0)) == {"uid": 0, "by": "030"}
    assert await cacheme.get_all([N(1), N(2)]) == [{"uid": i, "by": "030"} for i in (1, 2)]
    await settle()
    assert loads == []
    advance(25)  # 25 s old now: due
    assert [await cacheme.get(N(i)) for i in range(3)] == [{"uid": i, "by": "030"}
                                                           for i in range(3)]
    await settle()
    assert sorted(loads) == [0, 1, 2]
