"""Redis storage: leases and the subscriber with several event loops in
several threads sharing one storage, and other corner cases found in review."""
import asyncio
import dataclasses
import logging
import sys
import threading
from datetime import timedelta

import cacheme
from conftest import unique
from redis_servers import _redis_session_server, needs_redis, redis_cluster, redis_server  # noqa: F401

pytestmark = needs_redis


def lease_node(storage, load):
    @dataclasses.dataclass
    class N(cacheme.Node):
        uid: str

        def key(self):
            return f"review:{self.uid}"

        async def load(self):
            return await load(self)

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=None)]

    return N


def test_close_drains_leases_of_two_threads(redis_server, caplog):
    """Two threads, each with its own loop, hold a lease (loading) on one
    storage and both call close(): each close() waits on a future of its own
    loop, and both return once the two leases are given back (the last
    release is answered on one of the two loops), with no warning and no
    error, the leases gone from Redis."""
    name = unique("review-drain")

    async def reg():
        await cacheme.register_storage(
            name, cacheme.Storage(url=redis_server.url, lease=timedelta(seconds=300), timeout=20))

    asyncio.run(reg())
    st = cacheme.data.get_storage_by_name(name)._storage
    gate = threading.Event()
    loading = {1: threading.Event(), 2: threading.Event()}
    closing = threading.Event()
    started_close = {1: threading.Event(), 2: threading.Event()}

    async def load(node):
        loading[int(node.uid[-1])].set()
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 30)
        return f"v{node.uid}"

    N = lease_node(name, load)
    base = unique("k")
    nodes = {i: N(f"{base}-{i}") for i in (1, 2)}
    got, errors, unraisable = {}, [], []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(repr(u.exc_value))

    def thread(i):
        async def main():
            loop = asyncio.get_running_loop()
            loop.set_debug(True)  # a non-thread-safe call from another thread raises
            get = asyncio.ensure_future(cacheme.get(nodes[i]))
            await loop.run_in_executor(None, closing.wait, 30)
            close = asyncio.ensure_future(st.close())
            await asyncio.sleep(0)  # close() has its drain future
            started_close[i].set()
            got[i] = await asyncio.wait_for(get, 30)
            await asyncio.wait_for(close, 30)

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            errors.append(f"thread {i}: {e!r}")

    try:
        with caplog.at_level(logging.WARNING, logger="cacheme"):
            ths = [threading.Thread(target=thread, args=(i,)) for i in (1, 2)]
            [t.start() for t in ths]
            assert loading[1].wait(30) and loading[2].wait(30)
            closing.set()
            assert started_close[1].wait(30) and started_close[2].wait(30)
            gate.set()
            [t.join(60) for t in ths]
            assert not any(t.is_alive() for t in ths)
    finally:
        gate.set()
        closing.set()
        sys.unraisablehook = old_hook
    assert errors == []
    assert unraisable == []
    assert got == {1: f"v{base}-1", 2: f"v{base}-2"}
    assert [r.getMessage() for r in caplog.records if "not given back" in r.getMessage()] == []
    for i in (1, 2):
        assert redis_server.cli("EXISTS", nodes[i].full_key() + ":lease") == "0"
        assert redis_server.cli("EXISTS", nodes[i].full_key()) == "1"


async def test_lease_waiter_whose_subscribe_is_refused_is_bounded(redis_server):
    """A waiter whose channel SUBSCRIBE is never confirmed (here the ACL user
    may use no channel: NOPERM, the subscriber retries at its backoff) still
    acts when the holder's lease expires: it takes the lease and loads,
    rather than waiting for a confirmation that never comes."""
    user = unique("nochan").replace(":", "_")
    redis_server.cli("ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "resetchannels")
    name = unique("review-nochan")
    loads = []

    async def load(node):
        loads.append(node.uid)
        return f"v{node.uid}"

    try:
        await cacheme.register_storage(
            name, cacheme.Storage(url=f"redis://{user}:pw@127.0.0.1:{redis_server.port}",
                                  lease=timedelta(seconds=1)))
        st = cacheme.data.get_storage_by_name(name)._storage
        N = lease_node(name, load)
        node = N(unique("k"))
        # another process holds the lease and dies: it expires in 1.5 s
        redis_server.cli("SET", node.full_key() + ":lease", "other", "PX", "1500")
        assert await asyncio.wait_for(cacheme.get(node), 20) == f"v{node.uid}"
        assert loads == [node.uid]
        # the release goes out from the loop: close() waits for it (the
        # blocking cli call below would hold it back)
        await st.close()
        assert redis_server.cli("EXISTS", node.full_key() + ":lease") == "0"
    finally:
        redis_server.cli("ACL", "DELUSER", user)


async def test_cluster_lease_waiter_unsubscribes_after_its_slot_moved(redis_cluster):
    """A waiter subscribed to its lease key's channel on the node owning the
    slot; the slot then moves to another node (the storage's slot map is
    refreshed) and the waiter leaves: its subscription on the old node's
    subscriber goes too (an entry left there names a freed lease, which the
    next message on that channel would call)."""
    from cacheme.storages.redis import RedisStorage

    name = unique("review-move")
    await cacheme.register_storage(
        name, cacheme.Storage(url=redis_cluster.url, cluster=True, lease=timedelta(seconds=30)))
    st = cacheme.data.get_storage_by_name(name)._storage
    clients = []
    for n in redis_cluster.nodes:
        c = RedisStorage(n.url)
        await c.connect()
        clients.append(c)

    async def load(node):
        raise AssertionError("the waiter must not load")

    N = lease_node(name, load)
    node = None
    for _ in range(100):  # a slot with no keys but ours (SETSLOT NODE needs that)
        node = N(unique("k"))
        slot = await clients[0].execute("CLUSTER", "KEYSLOT", node.full_key())
        if not any([await c.execute("CLUSTER", "COUNTKEYSINSLOT", slot) for c in clients]):
            break
    lkey = st._lease_key(node.full_key())
    ids = [await c.execute("CLUSTER", "MYID") for c in clients]
    owner = None
    for entry in await clients[0].execute("CLUSTER", "SLOTS"):
        if entry[0] <= slot <= entry[1]:
            owner = next(i for i, n in enumerate(redis_cluster.nodes) if n.port == entry[2][1])
    dst = (owner + 1) % len(clients)
    src_c, dst_c = clients[owner], clients[dst]

    async def numsub(c):
        return (await c.execute("PUBSUB", "NUMSUB", lkey))[1]

    async def until(cond, what):
        for _ in range(500):
            if await cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(what)

    try:
        await src_c.execute("SET", lkey, "other", "PX", 30000)  # another process holds it
        waiter = asyncio.ensure_future(cacheme.get(node))
        await until(lambda: numsub(src_c), "the waiter's SUBSCRIBE")
        # the slot (with the lease key) moves to dst
        await dst_c.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[owner])
        await src_c.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
        await src_c.execute("MIGRATE", "127.0.0.1", redis_cluster.nodes[dst].port, "", 0, 5000,
                            "KEYS", lkey)
        for c in clients:
            await c.execute("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
        await st._refresh_slots()
        waiter.cancel()
        try:
            await waiter
        except asyncio.CancelledError:
            pass

        async def gone():
            return await numsub(src_c) == 0

        await until(gone, "the old node's subscription of the lease channel")
        await src_c.execute("PUBLISH", lkey, "1")
        await asyncio.sleep(0.1)
    finally:
        await dst_c.execute("DEL", lkey)
        for c in clients:
            await c.close()
        await st.close()


class _CancelAtLease(asyncio.SelectorEventLoop):
    """Cancels `target` as soon as a lease future gets its result, before
    the task's wakeup runs (the task is cancelled with the result in)."""

    target = None

    def call_soon(self, callback, *args, context=None):
        h = super().call_soon(callback, *args, context=context)
        if self.target is not None and args and isinstance(args[0], asyncio.Future):
            f = args[0]
            if (f.done() and not f.cancelled() and f.exception() is None
                    and isinstance(f.result(), tuple)
                    and type(f.result()[0]).__name__ == "_RedisLease"):
                self.target.cancel()
                self.target = None
        return h


def test_lease_got_by_a_cancelled_caller_is_given_back(redis_server):
    """The caller's task is cancelled in the loop iteration where its lease
    future got (lease, None): the flight never sees the lease, which must
    still be given back (deleted) rather than held until it expires (300 s),
    keeping every other process waiting."""
    name = unique("review-cancel")
    loads = []

    async def load(node):
        loads.append(node.uid)
        return "v"

    async def main():
        await cacheme.register_storage(
            name, cacheme.Storage(url=redis_server.url, lease=timedelta(seconds=300)))
        st = cacheme.data.get_storage_by_name(name)._storage
        node = lease_node(name, load)(unique("k"))
        lkey = node.full_key() + ":lease"
        t = asyncio.ensure_future(cacheme.get(node))
        asyncio.get_running_loop().target = t
        try:
            await t
        except asyncio.CancelledError:
            pass
        assert asyncio.get_running_loop().target is None  # it was cancelled there
        for _ in range(500):
            if await st.execute("EXISTS", lkey) == 0:
                break
            await asyncio.sleep(0.01)
        left = await st.execute("EXISTS", lkey)
        await st.close()
        return left

    loop = _CancelAtLease()
    try:
        assert loop.run_until_complete(main()) == 0
    finally:
        loop.close()
    assert loads == []


class _CancelAtGroupLease(asyncio.SelectorEventLoop):
    """Cancels the task waiting on get_all's group lease future as soon as
    that future gets its list of (lease, value), before the task's wakeup
    runs (the task is cancelled with the result in)."""

    armed = False
    cancelled = None

    def call_soon(self, callback, *args, context=None):
        h = super().call_soon(callback, *args, context=context)
        if self.armed and args and isinstance(args[0], asyncio.Future):
            f = args[0]
            if (f.done() and not f.cancelled() and f.exception() is None
                    and isinstance(f.result(), list)
                    and any(isinstance(t, tuple) and type(t[0]).__name__ == "_RedisLease"
                            for t in f.result())):
                for t in asyncio.all_tasks(self):
                    if t._fut_waiter is f:
                        t.cancel()
                        self.cancelled = t
                        self.armed = False
        return h


def test_get_all_leases_got_by_a_cancelled_batch_are_given_back(redis_server):
    """get_all over several keys with lease=: its batch task is cancelled in
    the loop iteration where the group lease future got its list of
    (lease, value). Every lease in it must be given back (deleted) rather
    than held until it expires (300 s), and the next get_all of those keys
    loads them at once instead of waiting on them."""
    name = unique("review-gacancel")
    loads = []

    async def load(node):
        loads.append(node.uid)
        return f"v{node.uid}"

    async def main():
        loop = asyncio.get_running_loop()
        await cacheme.register_storage(
            name, cacheme.Storage(url=redis_server.url, lease=timedelta(seconds=300)))
        st = cacheme.data.get_storage_by_name(name)._storage
        N = lease_node(name, load)
        base = unique("k")
        nodes = [N(f"{base}-{i}") for i in range(3)]
        lkeys = [n.full_key() + ":lease" for n in nodes]
        loop.armed = True
        try:
            await cacheme.get_all(nodes)
        except asyncio.CancelledError:
            pass
        assert loop.cancelled is not None  # it was cancelled there
        for _ in range(500):
            if await st.execute("EXISTS", *lkeys) == 0:
                break
            await asyncio.sleep(0.01)
        left = await st.execute("EXISTS", *lkeys)
        got = None
        if left == 0:
            got = await asyncio.wait_for(cacheme.get_all(nodes), 30)
        await st.close()
        return left, got, [n.uid for n in nodes]

    loop = _CancelAtGroupLease()
    try:
        left, got, uids = loop.run_until_complete(main())
    finally:
        loop.close()
    assert left == 0
    assert got == [f"v{u}" for u in uids]
    assert sorted(loads) == sorted(uids)


def test_closed_get_waiting_on_a_lease_does_not_take_it_later(redis_server):
    """A get waits on a lease another process holds and is closed (its
    coroutine's close()): its lease awaitable must stop with it. Else, once
    the holder gives the lease back, the closed flight's lease takes it anew
    for nobody (held until it expires, 300 s) and the next get of the key
    waits on it instead of loading at once."""
    name = unique("review-close")
    loads = []

    async def load(node):
        loads.append(node.uid)
        return "v"

    async def main():
        await cacheme.register_storage(
            name, cacheme.Storage(url=redis_server.url, lease=timedelta(seconds=300)))
        st = cacheme.data.get_storage_by_name(name)._storage
        node = lease_node(name, load)(unique("k"))
        lkey = node.full_key() + ":lease"
        await st.execute("SET", lkey, "other", "PX", 300000)
        c = cacheme.get(node)
        y = c.send(None)
        for _ in range(1000):  # driven by hand until it listens for the holder
            sub = await st.execute("PUBSUB", "NUMSUB", lkey)
            if int(sub[1]) > 0:
                break
            if getattr(y, "done", lambda: True)():
                y = c.send(None)
            await asyncio.sleep(0.01)
        assert int(sub[1]) > 0
        c.close()
        for _ in range(500):  # it stops listening
            sub = await st.execute("PUBSUB", "NUMSUB", lkey)
            if int(sub[1]) == 0:
                break
            await asyncio.sleep(0.01)
        listening = int(sub[1])
        await st.execute("DEL", lkey)
        await st.execute("PUBLISH", lkey, "x")  # the holder is done
        got = await asyncio.wait_for(cacheme.get(node), 20)
        left = await st.execute("EXISTS", lkey)
        await st.close()
        return listening, got, left

    listening, got, left = asyncio.run(main())
    assert listening == 0
    assert got == "v"
    assert left == 0
    assert len(loads) == 1


class _CancelFlightTaskAtLease(asyncio.SelectorEventLoop):
    """Cancels the task waiting on a single-key lease future as soon as that
    future gets (lease, value), before the task's wakeup runs."""

    armed = False
    cancelled = None

    def call_soon(self, callback, *args, context=None):
        h = super().call_soon(callback, *args, context=context)
        if self.armed and args and isinstance(args[0], asyncio.Future):
            f = args[0]
            if (f.done() and not f.cancelled() and f.exception() is None
                    and isinstance(f.result(), tuple)
                    and type(f.result()[0]).__name__ == "_RedisLease"):
                for t in asyncio.all_tasks(self):
                    if t._fut_waiter is f:
                        t.cancel()
                        self.cancelled = t
                        self.armed = False
        return h


def test_lease_got_by_a_moved_flight_cancelled_is_given_back(redis_server):
    """The leader of a flight waiting on a lease another process holds is
    cancelled while another caller waits on the flight: the flight moves to
    a Task of its own. That Task is cancelled in the loop iteration where
    the lease future got (lease, None) once the holder was done: the lease
    must still be given back rather than held until it expires (300 s)."""
    name = unique("review-moved")
    loads = []

    async def load(node):
        loads.append(node.uid)
        return "v"

    async def main():
        loop = asyncio.get_running_loop()
        await cacheme.register_storage(
            name, cacheme.Storage(url=redis_server.url, lease=timedelta(seconds=300)))
        st = cacheme.data.get_storage_by_name(name)._storage
        node = lease_node(name, load)(unique("k"))
        lkey = node.full_key() + ":lease"
        await st.execute("SET", lkey, "other", "PX", 300000)
        lead = asyncio.ensure_future(cacheme.get(node))
        for _ in range(1000):  # the leader listens for the holder
            sub = await st.execute("PUBSUB", "NUMSUB", lkey)
            if int(sub[1]) > 0:
                break
            await asyncio.sleep(0.01)
        waiter = asyncio.ensure_future(cacheme.get(node))
        await asyncio.sleep(0)  # it joined the flight
        lead.cancel()
        await asyncio.gather(lead, return_exceptions=True)
        loop.armed = True
        await st.execute("DEL", lkey)
        await st.execute("PUBLISH", lkey, "x")  # the holder is done
        await asyncio.wait_for(asyncio.gather(waiter, return_exceptions=True), 20)
        cancelled = loop.cancelled is not None
        for _ in range(500):
            if await st.execute("EXISTS", lkey) == 0:
                break
            await asyncio.sleep(0.01)
        left = await st.execute("EXISTS", lkey)
        await st.close()
        return cancelled, left

    loop = _CancelFlightTaskAtLease()
    try:
        cancelled, left = loop.run_until_complete(main())
    finally:
        loop.close()
    assert cancelled  # the flight's Task was cancelled there
    assert left == 0
