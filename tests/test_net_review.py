"""Review of the shared network lifecycle (net/netstore, net/netloop): cases
found by reading the code, each run in a subprocess (what they guard
against is a crash)."""
import pytest

from conftest import run_python_proc

mongo = pytest.importorskip("cacheme.storages.mongo")


# A fork while a storage is being deallocated: its dealloc runs Python code
# (closing its connections asks their loop is_closed(), unwatches, fails
# futures), during which another thread may fork. The child's after-fork
# hook walks every storage of the process; it must not find this one, which
# no one holds any more (taking and dropping a reference to it would run its
# dealloc a second time in the child). The loop below forks from is_closed()
# to make that moment deterministic.
FORK_IN_DEALLOC = """
import asyncio, os, socket, sys
import cacheme

class K:
    def full_key(self):
        return "cm-review-k"

class ForkLoop(asyncio.SelectorEventLoop):
    fork_now = False
    child = None

    def is_closed(self):
        if ForkLoop.fork_now:
            ForkLoop.fork_now = False
            ForkLoop.child = os.fork()
        return super().is_closed()

srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(8)  # the kernel accepts; nothing ever answers
port = srv.getsockname()[1]
loop = ForkLoop()
s = cacheme.Storage(url=f"mongodb://127.0.0.1:{port}/test", database="test",
                    collection="cm_review")._storage

async def start():
    fut = s.get(K(), None)  # a connection opens and waits for its hello
    await asyncio.sleep(0.05)
    return fut

fut = loop.run_until_complete(start())
assert s.pool_info()["connecting"] == 1, s.pool_info()
ForkLoop.fork_now = True
del s  # its last reference: the dealloc asks the loop is_closed(), which forks
if ForkLoop.child == 0:
    os._exit(0)
assert ForkLoop.child is not None, "the dealloc did not ask the loop"
_, status = os.waitpid(ForkLoop.child, 0)
print("child", status)
fut.exception()
loop.close()
"""


def test_fork_while_a_storage_is_deallocated_leaves_the_child_whole():
    r = run_python_proc(FORK_IN_DEALLOC, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["child", "0"], (r.stdout, r.stderr)


# The same moment for a Redis storage, whose dealloc clears its settings
# (Python objects) before it left the after-fork walk: a fork from a
# setting's __del__ there. A client with connections is freed by the GC
# (they hold it); one whose connections were closed goes by refcount.
REDIS_FORK_IN_DEALLOC = """
import asyncio, gc, os, sys
import cacheme

class ForkStr(str):
    child = None
    armed = False

    def __del__(self):
        if ForkStr.armed:
            ForkStr.armed = False
            ForkStr.child = os.fork()

class K:
    def full_key(self):
        return "cm-review-fork"

s = cacheme.Storage(url="redis://127.0.0.1:6379", host=ForkStr("127.0.0.1"))._storage

async def use():
    await s.get(K(), None)
    await s.close()

loop = asyncio.new_event_loop()
loop.run_until_complete(use())
loop.close()
gc.collect()
assert sys.getrefcount(s) == 2, sys.getrefcount(s)
ForkStr.armed = True
del s  # its last reference: clearing its settings drops the host, which forks
if ForkStr.child == 0:
    os._exit(0)
assert ForkStr.child is not None, "the dealloc did not drop the host"
_, status = os.waitpid(ForkStr.child, 0)
print("child", status)
"""


def test_fork_while_a_redis_storage_is_deallocated_leaves_the_child_whole():
    # malloc_debug: the freed client is overwritten, so the second dealloc
    # in the child crashes every time instead of now and then
    r = run_python_proc(REDIS_FORK_IN_DEALLOC, timeout=120, env={"PYTHONMALLOC": "malloc_debug"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["child", "0"], (r.stdout, r.stderr)


# A MongoDB request looked up the instance serving the loop, then made its
# future (Python code: the loop's create_future), then queued on the
# instance: closing the storage meanwhile (another thread; here the loop's
# create_future) freed the instance under it.
MONGO_CLOSE_IN_SUBMIT = """
import asyncio, socket
import cacheme

class K:
    def full_key(self):
        return "k"

srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(8)
s = cacheme.Storage(url=f"mongodb://127.0.0.1:{srv.getsockname()[1]}/test", database="test",
                    collection="c", timeout=0.2, connect_timeout=0.2)._storage

class CloseLoop(asyncio.SelectorEventLoop):
    armed = False

    def create_future(self):
        if CloseLoop.armed:
            CloseLoop.armed = False
            s.close_now()
        return super().create_future()

async def one():
    try:
        await s.get(K(), None)
    except Exception as e:
        return type(e).__name__

home = asyncio.new_event_loop()
print(home.run_until_complete(one()))
CloseLoop.armed = True
loop = CloseLoop()
print(loop.run_until_complete(one()))
assert not CloseLoop.armed, "the request made no future"
"""


def test_closing_a_mongodb_storage_while_a_request_makes_its_future():
    r = run_python_proc(MONGO_CLOSE_IN_SUBMIT, timeout=120, env={"PYTHONMALLOC": "malloc_debug"})
    assert r.returncode == 0, r.stderr
    # the first request times out on the mute server; the second, made on
    # a storage closed under it, fails or times out, and nothing crashes
    assert len(r.stdout.split()) == 2, (r.stdout, r.stderr)


# Requests left on a connection whose loop was closed fail when the storage
# next runs; their futures' callbacks cannot be scheduled on the closed
# loop. That is no error of anyone alive: it printed an "Exception ignored"
# traceback per request.
MONGO_CLOSED_LOOP_REQUESTS = """
import asyncio, socket
import cacheme

class K:
    def __init__(self, k):
        self.k = k

    def full_key(self):
        return self.k

srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(8)  # the kernel accepts; nothing ever answers
s = cacheme.Storage(url=f"mongodb://127.0.0.1:{srv.getsockname()[1]}/test", database="test",
                    collection="c", timeout=5, connect_timeout=5)._storage

async def leave():
    tasks = [asyncio.ensure_future(asyncio.wait_for(s.get(K(f"k{i}"), None), 30))
             for i in range(3)]
    await asyncio.sleep(0.05)
    return tasks

loop = asyncio.new_event_loop()
tasks = loop.run_until_complete(leave())
loop.close()

async def again():
    try:
        await asyncio.wait_for(s.get(K("k"), None), 0.3)
    except Exception as e:
        return type(e).__name__

print(asyncio.run(again()))
"""


def test_requests_of_a_closed_loop_fail_quietly():
    r = run_python_proc(MONGO_CLOSED_LOOP_REQUESTS, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["TimeoutError"], (r.stdout, r.stderr)
    assert "Exception ignored" not in r.stderr, r.stderr
