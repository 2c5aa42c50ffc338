"""Issue 20: cacheme on uvloop (what uvicorn runs on when it is installed).

`make test-uvloop` runs the API, Redis and SQL modules with every test's
loop a uvloop one (CACHEME_TEST_LOOP=uvloop, see conftest.py); the tests
here run on uvloop in any case: each storage's get/fill path, a host name
looked up through uvloop's getaddrinfo, and the switch itself."""
import asyncio
import dataclasses

import pytest

import cacheme
from cacheme.serializer import MsgPackSerializer
from conftest import TEST_LOOP, unique
from redis_servers import RedisServer
from sql_servers import MariaServer, PgServer, pg_bin

uvloop = pytest.importorskip("uvloop")


async def test_the_switch_runs_tests_on_uvloop():
    loop = asyncio.get_running_loop()
    if TEST_LOOP == "uvloop":
        assert isinstance(loop, uvloop.Loop), type(loop)
    else:
        assert not isinstance(loop, uvloop.Loop), type(loop)


def run_on_uvloop(coro_fn):
    """Run coro_fn() on a new uvloop loop, as uvicorn would."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        assert isinstance(r.get_loop(), uvloop.Loop)
        return r.run(coro_fn())


def make_node(storage, prefix="uv"):
    calls = []

    @dataclasses.dataclass
    class N(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"{prefix}:{self.uid}"

        async def load(self):
            calls.append(self.uid)
            return {"uid": self.uid}

        class Meta(cacheme.Node.Meta):
            caches = [cacheme.Cache(storage=storage, ttl=None)]
            serializer = MsgPackSerializer()

    N.__qualname__ = unique("UvNode")
    return N, calls


async def get_fill_get(url, **opts):
    """Through cacheme: a miss loads and fills, then hits; get_all too."""
    name = unique("uv-")
    await cacheme.register_storage(name, cacheme.Storage(url=url, **opts))
    prefix = unique("uv")
    N, calls = make_node(name, prefix)
    assert await asyncio.wait_for(cacheme.get(N(1)), 10) == {"uid": 1}
    assert await asyncio.wait_for(cacheme.get(N(1)), 10) == {"uid": 1}
    got = await asyncio.wait_for(cacheme.get_all([N(i) for i in range(1, 6)]), 10)
    assert got == [{"uid": i} for i in range(1, 6)]
    assert sorted(calls) == [1, 2, 3, 4, 5]
    # a fresh node class of the same keys reads what was stored
    N2, calls2 = make_node(name, prefix)
    assert await asyncio.wait_for(cacheme.get(N2(3)), 10) == {"uid": 3}
    assert calls2 == []


@pytest.fixture(scope="module")
def redis_srv():
    with RedisServer() as s:
        yield s


def test_redis_on_uvloop(redis_srv):
    run_on_uvloop(lambda: get_fill_get(redis_srv.url))
    # a host name: looked up through uvloop's getaddrinfo
    run_on_uvloop(lambda: get_fill_get(redis_srv.url.replace("127.0.0.1", "localhost")))


def test_postgresql_on_uvloop():
    if pg_bin() is None:
        pytest.skip("no PostgreSQL")
    s = PgServer()
    s.start()
    try:
        run_on_uvloop(lambda: get_fill_get(s.url, table=unique("cm_uv"), create_table=True))
        run_on_uvloop(lambda: get_fill_get(s.url.replace("127.0.0.1", "localhost"),
                                           table=unique("cm_uv"), create_table=True))
    finally:
        s.cleanup()


def test_mysql_on_uvloop():
    s = MariaServer()
    s.start()
    try:
        run_on_uvloop(lambda: get_fill_get(s.url, table=unique("cm_uv"), create_table=True))
    finally:
        s.cleanup()


def test_sqlite_on_uvloop(tmp_path):
    run_on_uvloop(lambda: get_fill_get(f"sqlite:///{tmp_path}/uv.db", table="cm_uv",
                                       create_table=True))


def test_run_then_run_again_on_uvloop(redis_srv):
    # a storage used by one uvloop loop, then by the next (asyncio.run
    # called again): it follows the new loop
    name = unique("uv-")

    async def first():
        await cacheme.register_storage(name, cacheme.Storage(url=redis_srv.url))
        N, _ = make_node(name)
        return await cacheme.get(N(7))

    async def again():
        N, calls = make_node(name)
        v = await asyncio.wait_for(cacheme.get(N(7)), 10)
        return v, calls

    assert run_on_uvloop(first) == {"uid": 7}
    assert run_on_uvloop(again) == ({"uid": 7}, [])
