"""Storage(url="redis://...", lease=...): one load per key across processes.

Every test runs several worker processes (tests/lease_worker.py), each with
its own interpreter and event loop, against a real Redis (single server, or
the 3-master cluster the tests start); their loads count themselves in Redis.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import unique
from redis_servers import (  # noqa: F401  (fixtures)
    REDIS_CLI, commandstats, _redis_session_server, needs_redis, redis_cluster, redis_server)

pytestmark = needs_redis

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lease_worker.py")


class Workers:
    def __init__(self, server, prefix="lease", **cfg):
        self.server = server
        self.prefix = unique(prefix)
        self.cfg = dict(cfg, prefix=self.prefix)
        self.procs = []

    def start(self, n=1, **over):
        """n processes, each ready (registered and connected) on return."""
        cfg = dict(self.cfg, **over)
        started = []
        for _ in range(n):
            p = subprocess.Popen(
                [sys.executable, WORKER, json.dumps(cfg)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                cwd=os.path.dirname(WORKER))
            self.procs.append(p)
            started.append(p)
        for p in started:
            line = p.stdout.readline()
            assert line.strip() == "ready", f"worker did not start: {line!r} {p.stderr.read()}"
        return started

    def holder(self, uid, **over):
        """A process that took uid's lease and is loading it."""
        [p] = self.start(1, mode="get", keys=[uid], **over)
        self.go([p])
        wait_for(lambda: self.loads() == 1, "the holder's load")
        return p

    def go(self, procs):
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()

    def result(self, p, timeout=60):
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"worker failed:\n{out}\n{err}"
        if os.environ.get("LEASE_DEBUG"):
            print("STDERR", err)
        return json.loads(out.strip().splitlines()[-1])

    def loads(self):
        return int(self.cli("GET", f"{self.prefix}:loads") or 0)

    def cli(self, *args):
        if hasattr(self.server, "nodes"):  # a cluster: redis-cli follows MOVED
            r = subprocess.run([REDIS_CLI, "-c", "-p", str(self.server.nodes[0].port), *args],
                               capture_output=True, text=True, timeout=30)
            return r.stdout.strip()
        return self.server.cli(*args)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


@pytest.fixture
def workers(redis_server):
    ws = []

    def make(**cfg):
        w = Workers(redis_server, url=redis_server.url, **cfg)
        ws.append(w)
        return w

    yield make
    for w in ws:
        w.close()


def test_many_processes_one_load(workers):
    w = workers(lease=10, load_sleep=0.5)
    procs = w.start(4, mode="get", keys=[7], concurrency=5)
    w.go(procs)
    results = [w.result(p) for p in procs]
    assert [r["values"] for r in results] == [[70] * 5] * 4
    assert w.loads() == 1
    # a value read through a lease counts as a hit of the storage
    assert sum(r["redis"]["misses"] for r in results) == 1
    assert sum(r["redis"]["hits"] for r in results) == 3


def wait_for(cond, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def lease_key(w, uid):
    return f"cacheme:{w.prefix}:{uid}:v1:lease"


def waiting(w, uid):
    """Processes subscribed to the key's lease channel (waiting on it)."""
    return int(w.cli("PUBSUB", "NUMSUB", lease_key(w, uid)).split()[1])


def test_killed_holder_lease_expires_one_waiter_loads(workers):
    w = workers(lease=2, load_sleep=0.3)
    # started (interpreters up) before the holder takes its 2 s lease
    waiters = w.start(3, mode="get", keys=[3], concurrency=2)
    holder = w.holder(3, load_sleep=60)
    assert w.cli("EXISTS", lease_key(w, 3)) == "1"
    w.go(waiters)
    wait_for(lambda: waiting(w, 3) == 3, "three waiting processes")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert [w.result(p)["values"] for p in waiters] == [[30, 30]] * 3
    assert w.loads() == 2  # the dead holder's and one waiter's


def test_failed_load_wakes_waiters_one_loads(workers):
    w = workers(lease=30, load_sleep=0.3)
    holder = w.holder(4, load_sleep=1.0, fail=True)
    waiters = w.start(2, mode="get", keys=[4], concurrency=2)
    w.go(waiters)
    assert "RuntimeError('load failed')" in w.result(holder)["values"][0]
    # released at once, not after 30 s: the waiters were woken
    assert [w.result(p, timeout=20)["values"] for p in waiters] == [[40, 40]] * 2
    assert w.loads() == 2
    assert w.cli("EXISTS", lease_key(w, 4)) == "0"


def test_waiter_timeout_leaves_nothing_behind(workers):
    w = workers(lease=30, load_sleep=2.0)
    holder = w.holder(5)
    [waiter] = w.start(1, mode="timeout", keys=[5], timeout=0.3)
    w.go([waiter])
    r = w.result(waiter)
    assert r["values"] == ["timeout"]
    assert r["subscribers"] == 0
    assert w.result(holder)["values"] == [50]
    assert w.loads() == 1


def test_cancelled_caller_does_not_strand_the_other(workers):
    w = workers(lease=30, load_sleep=1.5)
    holder = w.holder(6)
    [waiter] = w.start(1, mode="cancel", keys=[6], cancel_after=0.3)
    w.go([waiter])
    assert w.result(waiter)["values"] == [60, True]
    assert w.result(holder)["values"] == [60]
    assert w.loads() == 1


def test_memoize_one_load_across_processes(workers):
    w = workers(lease=10, load_sleep=0.5)
    procs = w.start(3, mode="memoize", keys=[8], concurrency=4)
    w.go(procs)
    assert [w.result(p)["values"] for p in procs] == [[80] * 4] * 3
    assert w.loads() == 1
    assert w.cli("EXISTS", lease_key(w, 8)) == "0"


def test_get_all_one_load_per_key_across_processes(workers):
    w = workers(lease=10, load_sleep=0.5)
    procs = w.start(3, mode="get_all", keys=[11, 12, 13])
    [single] = w.start(1, mode="get", keys=[12], concurrency=2)
    w.go(procs + [single])
    results = [w.result(p) for p in procs + [single]]
    assert [r["values"] for r in results] == [[110, 120, 130]] * 3 + [[120, 120]]
    assert w.loads() == 3
    assert sum(r["redis"]["misses"] for r in results) == 3
    assert sum(r["redis"]["hits"] for r in results) == 10 - 3
    assert all(w.cli("EXISTS", lease_key(w, k)) == "0" for k in (11, 12, 13))


def redis_cluster_lease_key(w, uid):
    from cacheme.storages.redis import RedisStorage
    client = RedisStorage(w.server.url, cluster=True)
    return client._lease_key(f"cacheme:{w.prefix}:{uid}:v1").decode()


@pytest.mark.parametrize("prefix", ["lease", "lease}x"])
def test_cluster_one_load(redis_cluster, prefix):  # noqa: F811
    """On a 3-master cluster; "lease}x" makes a key with a '}' and no hash
    tag, whose lease key needs a tag of its own to share the value's slot."""
    w = Workers(redis_cluster, prefix=prefix, url=redis_cluster.url, cluster=True, lease=10,
                load_sleep=0.5)
    try:
        procs = w.start(3, mode="get", keys=[21], concurrency=3)
        batch = w.start(2, mode="get_all", keys=[21, 22, 23, 24])
        w.go(procs + batch)
        assert [w.result(p)["values"] for p in procs] == [[210] * 3] * 3
        assert [w.result(p)["values"] for p in batch] == [[210, 220, 230, 240]] * 2
        assert w.loads() == 4
        for k in (21, 22, 23, 24):
            assert w.cli("EXISTS", f"cacheme:{w.prefix}:{k}:v1") == "1"
            assert w.cli("EXISTS", redis_cluster_lease_key(w, k)) == "0"
    finally:
        w.close()


def test_lease_key_shares_the_value_slot(redis_cluster):  # noqa: F811
    from cacheme.storages.redis import RedisStorage
    node = redis_cluster.nodes[0]
    client = RedisStorage(redis_cluster.url, cluster=True)
    for key in ["cacheme:a:1:v1", "cacheme:{user}:1:v1", "cacheme:a}b:1:v1", "x{}y}z", "{"]:
        lk = client._lease_key(key)
        assert node.cli("CLUSTER", "KEYSLOT", lk.decode()) == node.cli("CLUSTER", "KEYSLOT", key)
        assert key.encode() in lk
    single = RedisStorage("redis://127.0.0.1:6379")
    assert single._lease_key("cacheme:a:1:v1") == b"cacheme:a:1:v1:lease"


def test_lease_option_checked():
    from datetime import timedelta
    import cacheme
    with pytest.raises(ValueError, match="lease"):
        cacheme.Storage(url="redis://127.0.0.1:6379", lease=timedelta(seconds=-1))
    with pytest.raises(TypeError, match="lease"):
        cacheme.Storage(url="redis://127.0.0.1:6379", lease="10")


@pytest.mark.parametrize("lease", [None, 0])
def test_off_by_default(workers, redis_server, lease):  # noqa: F811
    """Without lease= (or with 0) nothing changes: a load per process, no
    lease command sent."""
    w = workers(lease=lease, load_sleep=0.5)
    procs = w.start(2, mode="get", keys=[9], concurrency=2)
    w.go(procs)
    assert [w.result(p)["values"] for p in procs] == [[90, 90]] * 2
    assert w.loads() == 2
    stats = commandstats(redis_server)
    assert "eval" not in stats and "pttl" not in stats and "subscribe" not in stats
    assert w.cli("EXISTS", lease_key(w, 9)) == "0"


@pytest.mark.parametrize("cluster", [False, True])
def test_get_alls_in_other_orders_do_not_wait_for_each_other(workers, cluster, request):
    """Leases of a get_all are taken in one order in every process: two
    get_alls holding a key each and waiting for the other's would stall
    until the 30 s leases expired, then load twice. On a cluster each
    get_all's requests reach the masters separately, which is where two
    batches interleave (seen: 7 loads for 4 keys before the order)."""
    if cluster:
        c = request.getfixturevalue("redis_cluster")
        w = Workers(c, url=c.url, cluster=True, lease=30, load_sleep=0.3)
    else:
        w = workers(lease=30, load_sleep=0.3)
    keys = [31, 32, 33, 34, 35, 36]
    orders = [keys, keys[::-1], keys[3:] + keys[:3], keys[1::2] + keys[::2]]
    try:
        procs = [w.start(1, mode="get_all", keys=order)[0] for order in orders]
        w.go(procs)
        for p, order in zip(procs, orders):
            assert w.result(p, timeout=20)["values"] == [k * 10 for k in order]
        assert w.loads() == 6
    finally:
        w.close()


def test_holder_cancelled_mid_load_others_still_served(workers):
    """The caller leading the load is cancelled while it holds the lease:
    the load goes on for the other caller (a Task takes the flight and its
    lease), the waiting process gets the value, the lease is released."""
    w = workers(lease=30, load_sleep=1.0)
    [holder] = w.start(1, mode="cancel", keys=[15], cancel_after=0.3, linger=1.0)
    [waiter] = w.start(1, mode="get", keys=[15])
    w.go([holder])
    wait_for(lambda: w.loads() == 1, "the holder's load")
    w.go([waiter])
    assert w.result(holder)["values"] == [150, True]
    assert w.result(waiter, timeout=20)["values"] == [150]
    assert w.loads() == 1
    assert w.cli("EXISTS", lease_key(w, 15)) == "0"


LEAK_CODE = r'''
import asyncio, dataclasses, sys
from datetime import timedelta
import cacheme
from cacheme.storages.redis import RedisStorage


@dataclasses.dataclass
class N(cacheme.Node):
    uid: int
    def key(self): return f"leaseleak:{self.uid}"
    async def load(self): return self.uid
    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage="leak-redis", ttl=None)]


async def main(url):
    await cacheme.register_storage("leak-redis",
                                   cacheme.Storage(url=url, lease=timedelta(seconds=5)))
    other = RedisStorage(url)
    await other.connect()
    uid = 0

    async def rounds(k):
        nonlocal uid
        for _ in range(k):
            uid += 3
            a, b, c = N(uid), N(uid + 1), N(uid + 2)
            assert await cacheme.get(a) == uid  # takes the lease, loads, releases
            assert await cacheme.get_all([b]) == [uid + 1]
            # c's lease held by "another process": wait, woken by its fill
            lk = c.full_key() + ":lease"
            await other.execute("SET", lk, "them", "NX", "PX", 5000)
            t = asyncio.ensure_future(cacheme.get(c))
            while (await other.execute("PUBSUB", "NUMSUB", lk))[1] == 0:
                await asyncio.sleep(0.001)
            await other.set(c, uid + 2, None, None)
            await other.execute("DEL", lk)
            await other.execute("PUBLISH", lk, "1")
            assert await t == uid + 2

    await rounds(50)
    before = snapshot()
    await rounds(300)
    after = snapshot()
    print(before[0], after[0], before[1], after[1])
    await cacheme.close()
    await other.close()


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "{url}"))
'''


def test_lease_paths_do_not_leak(redis_server):  # noqa: F811
    from conftest import LEAK_SNAPSHOT, assert_flat, run_python
    code = LEAK_SNAPSHOT + LEAK_CODE.replace("{url}", redis_server.url)
    assert_flat(run_python(code), rss_kib=4096)


async def test_waiter_reads_only_once_subscribed(redis_server):  # noqa: F811
    """The subscribe/read race: the waiter's SUBSCRIBE goes out on the
    subscriber connection, its read on a pool connection, so Redis may run
    the read first; a fill published in between reaches nobody, and a
    waiter that read before its subscription was in place waited until the
    lease expired (here 300 s). The subscriber holds the SUBSCRIBE back
    (_sub_hold) while the holder fills and releases: the waiter reads only
    once the SUBSCRIBE is confirmed, and finds the value."""
    import asyncio
    import dataclasses
    from datetime import timedelta

    import cacheme
    from cacheme.storages.redis import RedisStorage

    name = unique("lease-sub")
    await cacheme.register_storage(
        name, cacheme.Storage(url=redis_server.url, lease=timedelta(seconds=300), pool_size=1))
    st = cacheme.data.get_storage_by_name(name)._storage
    loads = []

    @dataclasses.dataclass
    class N(cacheme.Node):
        uid: str

        def key(self):
            return f"leasesub:{self.uid}"

        async def load(self):
            loads.append(self.uid)
            return "loaded"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=name, ttl=None)]

    other = RedisStorage(redis_server.url)
    await other.connect()
    try:
        log = st._sub_listen(unique("warm").encode())  # the subscriber up first
        for _ in range(2000):
            if any(e[0] == "up" for e in log):
                break
            await asyncio.sleep(0.005)
        node = N(unique("k"))
        lk = node.full_key() + ":lease"
        assert await other.execute("SET", lk, "them", "NX", "PX", 300000) == "OK"
        assert st._sub_hold(True) == 0
        task = asyncio.ensure_future(cacheme.get(node))
        for _ in range(2000):  # the waiter lost the SET NX and subscribes
            if st._sub_hold(True) == 1:
                break
            await asyncio.sleep(0.001)
        assert st._sub_hold(True) == 1
        # whatever the waiter sent on the one pool connection is answered
        # before these, and the replies' callbacks ran before this resumes
        await st.execute("PING")
        await st.execute("PING")
        # the holder fills and releases: its PUBLISH reaches no one yet
        await other.set(node, "filled", None, None)
        assert await other.execute("EVAL", "redis.call('del', KEYS[1]) "
                                   "return redis.call('publish', KEYS[1], '1')", 1, lk) == 0
        assert not task.done()
        assert st._sub_hold(False) == 1
        assert await asyncio.wait_for(task, 30) == "filled"
        assert loads == []
    finally:
        await other.close()
        st.close_now()


async def test_close_waits_for_a_background_fill_and_release(redis_server):  # noqa: F811
    """The caller leading a load under a lease is cancelled while another
    caller waits: the flight's task loads, gives the other its value, then
    fills Redis and releases the lease. Closing the storage as soon as that
    caller has its value waits for the fill and the release (both went out
    after it) instead of dropping them, which would keep other processes
    waiting until the lease expires (here 300 s)."""
    import asyncio
    import dataclasses
    from datetime import timedelta

    import cacheme
    from cacheme.storages.redis import RedisStorage

    name = unique("lease-close")
    await cacheme.register_storage(
        name, cacheme.Storage(url=redis_server.url, lease=timedelta(seconds=300)))
    st = cacheme.data.get_storage_by_name(name)._storage
    gate, started = asyncio.Event(), asyncio.Event()

    @dataclasses.dataclass
    class N(cacheme.Node):
        uid: str

        def key(self):
            return f"leaseclose:{self.uid}"

        async def load(self):
            started.set()
            await gate.wait()
            return "loaded"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=name, ttl=None)]

    node = N(unique("k"))
    lead = asyncio.ensure_future(cacheme.get(node))
    await started.wait()  # holds the lease, loading
    other_caller = asyncio.ensure_future(cacheme.get(node))
    await asyncio.sleep(0)  # joined the flight
    lead.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lead
    gate.set()
    assert await other_caller == "loaded"
    await st.close()
    other = RedisStorage(redis_server.url)
    await other.connect()
    try:
        assert await other.execute("EXISTS", node.full_key() + ":lease") == 0
        assert await other.get(node, None) == "loaded"
        assert st._lease_drain() is None
    finally:
        await other.close()
