"""Interpreter exit with storages still alive: each script runs in a fresh
interpreter and leaves a registered storage (connected, used by a node class
that stays cached in the core) alive at exit, in the shapes programs end in:
asyncio.run() returned (its loop closed), a loop left open with a connection
on it, and a load still pending on an open loop. The last GC pass of the
interpreter then frees _core's module, its types and the storage in one go;
the storage's dealloc must not touch a cleared or freed module state.

Run with PYTHONMALLOC=debug (freed memory is overwritten, so a use after free
reads garbage) unless the suite already runs under ASan (make test-asan: the
subprocess inherits LD_PRELOAD, and ASan reports any use after free)."""
import os

import pytest

from conftest import run_python_proc, unique
from mongo_servers import mongo_server  # noqa: F401  (fixture)
from redis_servers import (  # noqa: F401  (fixtures)
    _redis_session_server,
    needs_redis,
    redis_server,
)
from sql_servers import ModuleServers

SHAPES = ("run", "open_loop", "pending")

SCRIPT = """
import asyncio
import sys
from datetime import timedelta

import cacheme

SHAPE = {shape!r}
STORAGE = cacheme.Storage(url={url!r}, **{options!r})


def make_node():
    # a class of the function's own: what keeps it (and through its config
    # the storage) alive at exit is the core's last-used node cache
    class ExitNode(cacheme.Node):
        def __init__(self, uid):
            self.uid = uid

        def key(self):
            return f"{prefix}:{{self.uid}}"

        async def load(self):
            if self.uid == 2:
                await asyncio.sleep(3600)  # still pending at exit
            return b"value-%d" % self.uid  # bytes: no serializer needed

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage={name!r}, ttl=timedelta(seconds=60))]

    return ExitNode


async def main():
    await cacheme.register_storage({name!r}, STORAGE)
    Node = make_node()
    assert await cacheme.get(Node(1)) == b"value-1"
    assert await cacheme.get(Node(1)) == b"value-1"
    if SHAPE == "pending":
        PENDING.append(asyncio.ensure_future(cacheme.get(Node(2))))
        await asyncio.sleep(0.05)


PENDING = []
if SHAPE == "run":
    asyncio.run(main())
else:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(main())
print("exit-ok")
sys.stdout.flush()
"""


def under_asan() -> bool:
    return "libasan" in os.environ.get("LD_PRELOAD", "")


def run_exit_script(url: str, name: str, shape: str, **options) -> None:
    code = SCRIPT.format(shape=shape, url=url, options=options, name=name,
                         prefix=unique("exituaf-"))
    env = {} if under_asan() else {"PYTHONMALLOC": "debug"}
    r = run_python_proc(code, env=env)
    report = f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert r.returncode == 0, report
    assert "exit-ok" in r.stdout, report
    for bad in ("AddressSanitizer", "runtime error", "Fatal Python error", "Traceback"):
        assert bad not in r.stderr, report


@pytest.fixture(scope="module")
def sql_servers():
    servers = ModuleServers()
    yield servers
    servers.cleanup()


@needs_redis
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", [{}, {"tracking": True}, {"lease": 5.0}],
                         ids=["plain", "tracking", "lease"])
def test_redis_storage_alive_at_exit(redis_server, shape, options):
    run_exit_script(redis_server.url, unique("exit-redis-"), shape, **options)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_sql_storage_alive_at_exit(sql_servers, backend, shape):
    run_exit_script(sql_servers.url(backend), unique(f"exit-{backend}-"), shape,
                    table=unique("exit_uaf_"), create_table=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_sqlite_storage_alive_at_exit(tmp_path, shape):
    run_exit_script(f"sqlite:///{tmp_path}/exit.db", unique("exit-sqlite-"), shape,
                    table="cache", create_table=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_mongo_storage_alive_at_exit(mongo_server, shape):  # noqa: F811
    run_exit_script(mongo_server.url, unique("exit-mongo-"), shape, database="test",
                    collection=unique("exit_uaf_"))


@pytest.mark.parametrize("shape", SHAPES)
def test_local_storage_alive_at_exit(shape):
    run_exit_script("local://tlfu", unique("exit-local-"), shape, size=100)
