"""Redis leases over fork: a child forked while a thread of the parent holds
a lease (its load running) inherits the storage, but the lease is the
parent's: the child's close() must not wait for it, and must not give it
back (the parent still loads under it)."""
from conftest import run_python
from redis_servers import _redis_session_server, needs_redis, redis_server  # noqa: F401

pytestmark = needs_redis

SCRIPT = r"""
import asyncio, dataclasses, logging, os, sys, threading, time, uuid, warnings
# Imported before any thread runs: this module registers fork hooks (acquire
# and release of a lock) when first imported, and a loop's first
# run_in_executor imports it. Imported by the thread while os.fork() runs,
# the release hook runs without its acquire, and the thread's executor call
# fails with "release unlocked lock" (CPython's, not cacheme's).
import concurrent.futures.thread  # noqa: F401
from datetime import timedelta
import cacheme

warnings.simplefilter("ignore", DeprecationWarning)  # fork with a thread (3.12+)
name = "fork-lease"
gate, loading = threading.Event(), threading.Event()


async def reg():
    await cacheme.register_storage(
        name, cacheme.Storage(url=URL, lease=timedelta(seconds=300), timeout=3))

asyncio.run(reg())
st = cacheme.data.get_storage_by_name(name)._storage
uid = uuid.uuid4().hex
lease_key = f"cacheme:forklease:{uid}:v1:lease"


async def exists(key):
    return await st.execute("EXISTS", key)


@dataclasses.dataclass
class N(cacheme.Node):
    uid: str

    def key(self):
        return f"forklease:{self.uid}"

    async def load(self):
        def wait():
            loading.set()  # the executor call is made: the fork may come
            return gate.wait(30)

        assert await asyncio.get_running_loop().run_in_executor(None, wait)
        return "v"

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage=name, ttl=None)]


got = []


def run():
    try:
        got.append(asyncio.run(cacheme.get(N(uid))))
    except BaseException as e:  # reported in the output
        got.append(repr(e))


t = threading.Thread(target=run)
t.start()
assert loading.wait(10)
assert asyncio.run(exists(lease_key)) == 1  # the thread's flight holds it
pid = os.fork()
if pid == 0:
    warned = []

    class H(logging.Handler):
        def emit(self, r):
            warned.append(r.getMessage())

    logging.getLogger("cacheme").addHandler(H())
    t0 = time.monotonic()
    asyncio.run(st.close())
    print(f"child: close {time.monotonic() - t0:.2f} s, warnings {warned!r}", flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
print("held after the child", asyncio.run(exists(lease_key)))
gate.set()
t.join()
print("got", got)
print("held at the end", asyncio.run(exists(lease_key)))
"""


def test_child_close_neither_waits_for_nor_gives_back_the_parents_lease(redis_server):
    """Without the fork rule the child's close() waited its whole timeout
    (3 s) for the parent's lease and logged 'closed with leases not given
    back'."""
    out = run_python(f"URL = {redis_server.url!r}\n" + SCRIPT, timeout=120)
    child = next(line for line in out.splitlines() if line.startswith("child:"))
    assert "warnings []" in child, out
    assert "child exit 0" in out
    assert "held after the child 1" in out  # the parent still holds it
    assert "got ['v']" in out
    assert "held at the end 0" in out  # and gives it back itself
