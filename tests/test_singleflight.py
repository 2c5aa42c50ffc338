"""Singleflight rules: one load per key in flight, errors reach every
waiter, cancelling one caller never cancels or strands the others."""
import asyncio
import dataclasses
from datetime import timedelta

import pytest

import cacheme
from cacheme import Cache, Node
from cacheme import _core
from cacheme.storages.base import BaseStorage
from conftest import flights, register_local


class Source:
    """A controllable data source."""

    def __init__(self):
        self.calls = []
        self.gate = asyncio.Event()
        self.fail = None
        self.started = asyncio.Event()
        self.cancelled = 0

    async def load(self, uid):
        self.calls.append(uid)
        self.started.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail is not None:
            raise self.fail
        return f"value-{uid}"


def node_class(storage, source, caches=None, own_load_all=True):
    """A node loading from source; with own_load_all, a load_all of its own
    (else Node.load_all: each load in turn)."""

    @dataclasses.dataclass
    class SlowNode(Node):
        uid: int

        def key(self):
            return f"slow:{self.uid}"

        async def load(self):
            return await source.load(self.uid)

        class Meta(Node.Meta):
            pass

    async def load_all(cls, nodes):
        return [(n, await source.load(n.uid)) for n in nodes]

    if own_load_all:
        SlowNode.load_all = classmethod(load_all)
    SlowNode.Meta.caches = caches or [Cache(storage=storage, ttl=None)]
    return SlowNode


async def concurrent_gets_of_one_key(n):
    """n concurrent gets of one key, its load held until all have started:
    (their values, the source, the node class)."""
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    tasks = [asyncio.ensure_future(cacheme.get(N(1))) for _ in range(n)]
    await asyncio.sleep(0.01)
    src.gate.set()
    return await asyncio.gather(*tasks), src, N


async def leader_with_waiters(n):
    """A get whose load is held (gate closed) and n gets of the same key
    joined to its flight: (node class, source, leader task, waiter tasks)."""
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    leader = asyncio.ensure_future(cacheme.get(N(1)))
    await src.started.wait()
    waiters = [asyncio.ensure_future(cacheme.get(N(1))) for _ in range(n)]
    await asyncio.sleep(0)
    return N, src, leader, waiters


async def test_thousands_of_concurrent_gets_load_once():
    values, src, N = await concurrent_gets_of_one_key(5000)
    assert values == ["value-1"] * 5000
    assert src.calls == [1]
    assert flights() == 0
    m = cacheme.stats(N)
    assert m.miss_count() == 1 and m.hit_count() == 4999 and m.load_count() == 1


async def test_load_without_suspension_needs_no_task():
    name = await register_local()

    @dataclasses.dataclass
    class Fast(Node):
        uid: int

        def key(self):
            return f"fast:{self.uid}"

        async def load(self):
            return self.uid

        class Meta(Node.Meta):
            caches = [Cache(storage=name, ttl=None)]

    before = len(asyncio.all_tasks())
    aw = cacheme.get(Fast(1))
    # drive it by hand: a load that does not suspend finishes in one send
    with pytest.raises(StopIteration) as stop:
        aw.send(None)
    assert stop.value.value == 1
    assert len(asyncio.all_tasks()) == before
    assert flights() == 0


async def test_raising_load_reaches_every_waiter_and_leaves_nothing_in_flight():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    src.fail = ValueError("db down")
    tasks = [asyncio.ensure_future(cacheme.get(N(1))) for _ in range(50)]
    await asyncio.sleep(0.01)
    src.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ValueError) and str(r) == "db down" for r in results)
    assert src.calls == [1]
    assert flights() == 0
    assert cacheme.stats(N).load_failure_count() == 1
    # the next request loads again
    src.fail = None
    assert await cacheme.get(N(1)) == "value-1"
    assert src.calls == [1, 1]


async def test_raising_load_without_suspension():
    name = await register_local()

    @dataclasses.dataclass
    class Bad(Node):
        uid: int

        def key(self):
            return f"bad:{self.uid}"

        async def load(self):
            raise KeyError("nope")

        class Meta(Node.Meta):
            caches = [Cache(storage=name, ttl=None)]

    with pytest.raises(KeyError):
        await cacheme.get(Bad(1))
    assert flights() == 0
    with pytest.raises(KeyError):
        await cacheme.get(Bad(1))


async def test_cancelling_the_leader_does_not_cancel_waiters():
    _, src, leader, waiters = await leader_with_waiters(10)
    leader.cancel()
    await asyncio.sleep(0.01)
    assert leader.cancelled()
    assert src.cancelled == 0
    src.gate.set()
    assert await asyncio.gather(*waiters) == ["value-1"] * 10
    assert src.calls == [1]
    assert flights() == 0


async def test_cancelling_a_waiter_does_not_cancel_the_others():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    tasks = [asyncio.ensure_future(cacheme.get(N(1))) for _ in range(5)]
    await src.started.wait()
    tasks[2].cancel()
    tasks[4].cancel()
    await asyncio.sleep(0.01)
    src.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert isinstance(results[4], asyncio.CancelledError)
    assert [results[i] for i in (0, 1, 3)] == ["value-1"] * 3
    assert src.cancelled == 0


async def test_wait_for_timeout_on_one_caller():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    other = asyncio.ensure_future(cacheme.get(N(1)))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(cacheme.get(N(1)), timeout=0.02)
    assert not other.done()
    src.gate.set()
    assert await other == "value-1"
    assert src.cancelled == 0


async def test_load_cancelled_only_when_every_caller_left():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    tasks = [asyncio.ensure_future(cacheme.get(N(1))) for _ in range(3)]
    await src.started.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.01)
    assert src.cancelled == 1
    assert flights() == 0
    # a later request starts a fresh load
    src.gate.set()
    assert await cacheme.get(N(1)) == "value-1"
    assert src.calls == [1, 1]


async def test_wait_for_timeout_on_the_only_caller_cancels_the_load():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(cacheme.get(N(1)), timeout=0.02)
    await asyncio.sleep(0.01)
    assert src.cancelled == 1
    assert flights() == 0


async def test_get_all_joins_flights_of_get_and_shares_errors():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    single = asyncio.ensure_future(cacheme.get(N(1)))
    await src.started.wait()
    batch = asyncio.ensure_future(cacheme.get_all([N(1), N(2)]))
    await asyncio.sleep(0.01)
    also = asyncio.ensure_future(cacheme.get(N(2)))  # joins the batch's flight
    await asyncio.sleep(0.01)
    src.gate.set()
    assert await batch == ["value-1", "value-2"]
    assert await single == "value-1"
    assert await also == "value-2"
    assert sorted(src.calls) == [1, 2]
    assert flights() == 0


async def test_get_all_raising_load_all_reaches_waiters():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    src.fail = RuntimeError("batch failed")
    batch = asyncio.ensure_future(cacheme.get_all([N(1), N(2)]))
    await src.started.wait()
    waiter = asyncio.ensure_future(cacheme.get(N(2)))
    await asyncio.sleep(0.01)
    src.gate.set()
    with pytest.raises(RuntimeError, match="batch failed"):
        await batch
    with pytest.raises(RuntimeError, match="batch failed"):
        await waiter
    assert flights() == 0


async def test_load_all_that_leaves_a_node_out():
    name = await register_local()

    @dataclasses.dataclass
    class Partial(Node):
        uid: int

        def key(self):
            return f"partial:{self.uid}"

        @classmethod
        async def load_all(cls, nodes):
            await asyncio.sleep(0.01)
            return [(n, n.uid) for n in nodes if n.uid != 2]

        class Meta(Node.Meta):
            caches = [Cache(storage=name, ttl=None)]

    batch = asyncio.ensure_future(cacheme.get_all([Partial(1), Partial(2), Partial(3)]))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(cacheme.get(Partial(2)))
    with pytest.raises(KeyError, match="no value"):
        await batch
    with pytest.raises(KeyError, match="no value"):
        await waiter
    assert flights() == 0
    assert cacheme.stats(Partial).load_failure_count() == 1


async def test_invalidate_during_flight_does_not_fill_stale_value():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    t = asyncio.ensure_future(cacheme.get(N(1)))
    await src.started.wait()
    await cacheme.invalidate(N(1))
    src.gate.set()
    assert await t == "value-1"
    assert await cacheme.get(N(1)) == "value-1"
    assert src.calls == [1, 1]  # the in-flight value was not cached


class DictStorage(BaseStorage):
    """A real (if simple) remote-style storage: values in a dict, with delays."""

    def __init__(self, delay=0.0, fail_get=False, fail_set=False):
        super().__init__("dict://")
        self.data = {}
        self.gets = 0
        self.sets = 0
        self.delay = delay
        self.fail_get = fail_get
        self.fail_set = fail_set

    async def connect(self):
        pass

    def is_local(self):
        return False

    async def get_by_key(self, key):
        self.gets += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_get:
            raise ConnectionError("storage down")
        return self.data.get(key)

    async def get_by_keys(self, keys):
        self.gets += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_get:
            raise ConnectionError("storage down")
        return {k: self.data.get(k) for k in keys}

    async def set_by_key(self, key, value, ttl):
        self.sets += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_set:
            raise ConnectionError("storage down")
        self.data[key] = {"value": value, "expire": None}

    async def set_by_keys(self, data, ttl):
        self.sets += 1
        if self.fail_set:
            raise ConnectionError("storage down")
        for k, v in data.items():
            self.data[k] = {"value": v, "expire": None}

    async def remove_by_key(self, key):
        self.data.pop(key, None)


async def test_local_then_remote_chain_one_remote_get_and_one_load():
    local = await register_local()
    remote = DictStorage(delay=0.005)
    rname = f"remote-{id(remote)}"
    await cacheme.register_storage(rname, remote)
    src = Source()
    src.gate.set()
    N = node_class(local, src, [Cache(storage=local, ttl=None), Cache(storage=rname, ttl=timedelta(days=1))])
    values = await asyncio.gather(*(cacheme.get(N(1)) for _ in range(1000)))
    assert values == ["value-1"] * 1000
    assert remote.gets == 1 and remote.sets == 1 and src.calls == [1]
    await asyncio.sleep(0.02)  # the remote fill finishes in the flight's task
    assert flights() == 0
    # a fresh local cache is filled from the remote one, without a load
    local2 = await register_local()
    N2 = node_class(local2, src, [Cache(storage=local2, ttl=None), Cache(storage=rname, ttl=None)])
    assert await cacheme.get(N2(1)) == "value-1"
    assert src.calls == [1]
    stats = cacheme.stats(N2).storage_stats()
    assert stats[rname]["hits"] == 1
    assert await cacheme.get(N2(1)) == "value-1"
    assert remote.gets == 2


async def test_failing_remote_storage_is_a_miss_and_fill_failure_is_not_raised(caplog):
    local = await register_local()
    remote = DictStorage(fail_get=True, fail_set=True)
    rname = f"remote-{id(remote)}"
    await cacheme.register_storage(rname, remote)
    src = Source()
    src.gate.set()
    N = node_class(local, src, [Cache(storage=local, ttl=None), Cache(storage=rname, ttl=None)])
    assert await cacheme.get(N(1)) == "value-1"
    s = cacheme.stats(N).storage_stats()[rname]
    assert s["errors"] == 2 and s["misses"] == 1
    assert any("storage down" in r.getMessage() for r in caplog.records)
    assert flights() == 0
    # get_all with the same failing storage
    assert await cacheme.get_all([N(2), N(3)]) == ["value-2", "value-3"]


async def test_get_made_early_sees_a_value_cached_before_it_is_awaited():
    name = await register_local()
    src = Source()
    src.gate.set()
    N = node_class(name, src)
    early = [cacheme.get(N(1)) for _ in range(3)]  # made while the cache is empty
    assert await cacheme.get(N(1)) == "value-1"
    assert [await aw for aw in early] == ["value-1"] * 3
    assert src.calls == [1]
    m = cacheme.stats(N)
    assert m.hit_count() == 3 and m.miss_count() == 1
    assert m.storage_stats()[name] == {"hits": 3, "misses": 1, "errors": 0, "sets": 1, "set_errors": 0}


async def test_suspending_load_is_driven_by_the_callers_own_task():
    # the leader drives its flight inline: no Task of the flight's own
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    before = len(asyncio.all_tasks())
    leader = asyncio.ensure_future(cacheme.get(N(1)))
    await src.started.wait()
    waiters = [asyncio.ensure_future(cacheme.get(N(1))) for _ in range(3)]
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before + 4  # the callers, nothing more
    src.gate.set()
    assert await leader == "value-1"
    assert await asyncio.gather(*waiters) == ["value-1"] * 3
    assert flights() == 0


async def test_leader_cancelled_after_a_bare_yield_keeps_the_flight():
    # cancelled while not waiting on a future (its load yielded to the loop):
    # the waiters still get the value, the load is not cancelled
    name = await register_local()
    gate = asyncio.Event()
    calls = []

    @dataclasses.dataclass
    class Yielding(Node):
        uid: int

        def key(self):
            return f"yield:{self.uid}"

        async def load(self):
            calls.append(self.uid)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            await gate.wait()
            return "v"

        class Meta(Node.Meta):
            caches = [Cache(storage=name, ttl=None)]

    leader = asyncio.ensure_future(cacheme.get(Yielding(1)))
    await asyncio.sleep(0)  # the leader runs to its first bare yield
    waiters = [asyncio.ensure_future(cacheme.get(Yielding(1))) for _ in range(3)]
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0.01)
    assert leader.cancelled()
    gate.set()
    assert await asyncio.gather(*waiters) == ["v"] * 3
    assert calls == [1]
    assert flights() == 0


async def test_proxy_behaves_as_a_future_for_tasks_and_gather():
    # what the leader's task awaits is a stand-in of the load's future: a
    # task cancelled through wait_for, shield and gather keep their meaning
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    shielded = asyncio.ensure_future(asyncio.shield(cacheme.get(N(5))))
    await src.started.wait()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(cacheme.get(N(5)), 0.05)
    src.gate.set()
    assert await shielded == "value-5"
    assert src.cancelled == 0 and src.calls == [5]
    assert flights() == 0


def test_waiters_need_no_future():
    """A waiter is the future its Task waits on: fifty concurrent gets of
    one key make no more futures (counted through loop.create_future, which
    asyncio.sleep, Event.wait and gather use) than five do."""
    made = []

    class CountingLoop(asyncio.SelectorEventLoop):
        def create_future(self):
            fut = super().create_future()
            made.append(fut)
            return fut

    def futures_made(n):
        async def scenario():
            values, _, _ = await concurrent_gets_of_one_key(n)
            assert values == ["value-1"] * n
            assert flights() == 0

        made.clear()
        loop = CountingLoop()
        try:
            loop.run_until_complete(scenario())
        finally:
            loop.close()
        return len(made)

    # (one done future per loop is shared by every waiter's wakeup)
    assert futures_made(50) == futures_made(5) <= futures_made(1) + 1


async def test_a_waiter_lets_its_node_and_arguments_go_at_once():
    """A waiter needs only its flight's outcome: its node (and a memoized
    call's arguments) are freed when it joins, not when the flight ends."""
    import weakref

    N, src, leader, _ = await leader_with_waiters(0)
    node = N(1)
    ref = weakref.ref(node)
    waiter = asyncio.ensure_future(cacheme.get(node))
    del node
    await asyncio.sleep(0)  # the waiter has joined the leader's flight
    assert ref() is None
    assert not waiter.done()

    class Arg:
        def __init__(self, uid):
            self.uid = uid

    @cacheme.Memoize(N)
    async def fetch(arg):
        return await src.load(arg.uid)

    @fetch.to_node
    def _(arg):
        return N(uid=arg.uid)

    src.calls.clear()
    arg = Arg(2)
    memo_leader = asyncio.ensure_future(fetch(Arg(2)))
    await asyncio.sleep(0.01)
    aref = weakref.ref(arg)
    memo_waiter = asyncio.ensure_future(fetch(arg))
    del arg
    await asyncio.sleep(0)
    assert aref() is None
    assert not memo_waiter.done()
    src.gate.set()
    assert await asyncio.gather(leader, waiter) == ["value-1"] * 2
    assert await asyncio.gather(memo_leader, memo_waiter) == ["value-2"] * 2
    assert src.calls == [2]
    assert flights() == 0


@pytest.mark.skipif(not _core._private_api,
                    reason="the C Task wakeup shortcut is gated off in builds without private API")
async def test_a_waiting_tasks_wakeup_is_out_of_the_collector_while_it_waits():
    """The wakeup a Task hands a waiting get() is held by that get alone,
    and kept out of the cyclic collector while the flight holds the get;
    it is tracked again as soon as the get is let go (here, cancelled), so
    nothing can be left untracked in a cycle."""
    import gc
    import weakref

    _, src, leader, waiters = await leader_with_waiters(3)
    wakeups = []
    for t in waiters:
        get = t._fut_waiter
        assert type(get).__name__ == "GetCall" and not gc.is_tracked(get)
        (cb,) = [o for o in gc.get_referents(get) if getattr(o, "__self__", None) is t]
        assert not gc.is_tracked(cb)
        wakeups.append(cb)
    waiters[0].cancel()  # cancel() lets that get go at once
    assert gc.is_tracked(wakeups[0])
    assert not gc.is_tracked(wakeups[1])
    src.gate.set()
    results = await asyncio.gather(leader, *waiters, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert results[0] == results[2] == results[3] == "value-1"
    assert all(gc.is_tracked(cb) for cb in wakeups)
    refs = [weakref.ref(cb) for cb in wakeups]
    del cb, wakeups
    assert [r() for r in refs] == [None] * 3  # nothing else held them
    assert flights() == 0


class Gates:
    """A source whose loads each wait on their own key's gate."""

    def __init__(self):
        self.gates = {}
        self.calls = []
        self.fail = {}

    def open(self, uid):
        self.gates.setdefault(uid, asyncio.Event()).set()

    async def load(self, uid):
        self.calls.append(uid)
        await self.gates.setdefault(uid, asyncio.Event()).wait()
        if uid in self.fail:
            raise self.fail[uid]
        return f"value-{uid}"


async def test_get_all_settles_each_flight_as_its_load_comes_in():
    """With Node.load_all, a get_all loads its misses one after the other,
    as 0.3.0 did, and each key's waiters have their value as soon as that
    key's load is in, not when the last load of the batch is."""
    name = await register_local()
    src = Gates()
    N = node_class(name, src, own_load_all=False)
    batch = asyncio.ensure_future(cacheme.get_all([N(1), N(2), N(3)]))
    await asyncio.sleep(0.01)
    assert src.calls == [1]  # in turn
    waiters = [asyncio.ensure_future(cacheme.get(N(u))) for u in (1, 2)]
    await asyncio.sleep(0.01)
    src.open(1)
    assert await asyncio.wait_for(waiters[0], 1) == "value-1"
    await asyncio.sleep(0.01)
    assert src.calls == [1, 2] and not waiters[1].done() and not batch.done()
    src.open(2)
    assert await asyncio.wait_for(waiters[1], 1) == "value-2"
    assert not batch.done()
    src.open(3)
    assert await batch == ["value-1", "value-2", "value-3"]
    assert src.calls == [1, 2, 3]
    m = cacheme.stats(N)
    assert m.load_success_count() == 3 and m.load_failure_count() == 0
    assert flights() == 0


async def test_get_all_load_failing_midway_keeps_what_was_loaded():
    """A load that raises ends the batch (the rest are not loaded); the
    waiters of keys loaded before it have their values, the others the
    error; nothing stays in flight."""
    name = await register_local()
    src = Gates()
    src.fail[2] = RuntimeError("load 2 failed")
    N = node_class(name, src, own_load_all=False)
    batch = asyncio.ensure_future(cacheme.get_all([N(1), N(2), N(3)]))
    await asyncio.sleep(0.01)
    waiters = [asyncio.ensure_future(cacheme.get(N(u))) for u in (1, 2, 3)]
    await asyncio.sleep(0.01)
    for u in (1, 2, 3):
        src.open(u)
    with pytest.raises(RuntimeError, match="load 2 failed"):
        await batch
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert results[0] == "value-1"
    assert isinstance(results[1], RuntimeError) and isinstance(results[2], RuntimeError)
    assert src.calls == [1, 2]
    m = cacheme.stats(N)
    assert m.load_success_count() == 1 and m.load_failure_count() == 2
    assert flights() == 0


async def test_get_all_remote_hits_settle_before_the_loads_of_the_others():
    """Keys a remote cache has are settled when its get_all comes back:
    their waiters do not wait for the loads of the batch's other keys."""
    local = await register_local()
    remote = DictStorage(delay=0.01)
    rname = f"remote-{id(remote)}"
    await cacheme.register_storage(rname, remote)
    src = Gates()
    N = node_class(local, src, [Cache(storage=local, ttl=None), Cache(storage=rname, ttl=None)], False)
    src.open(1)
    assert await cacheme.get(N(1)) == "value-1"  # now in the remote cache
    local2 = await register_local()  # a fresh local cache in front: 1 is only remote
    N2 = node_class(local2, src, [Cache(storage=local2, ttl=None), Cache(storage=rname, ttl=None)], False)
    batch = asyncio.ensure_future(cacheme.get_all([N2(1), N2(2)]))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(cacheme.get(N2(1)))  # joins the batch's flight of 1
    assert await asyncio.wait_for(waiter, 1) == "value-1"
    await asyncio.sleep(0.01)
    assert not batch.done() and src.calls == [1, 2]  # 2 is still loading
    src.open(2)
    assert await batch == ["value-1", "value-2"]
    assert flights() == 0


def test_module_traverse_covers_the_flights_in_its_table():
    """The module's GC traverse visits what a flight in its table holds (its
    value, its failure), so the collector sees those references."""
    import gc

    class Marker:
        pass

    value, error = Marker(), RuntimeError("flight failed")
    ok = _core._flight_lead("traverse:ok")
    bad = _core._flight_lead("traverse:bad")
    try:
        ok.resolve(value)
        assert any(r is value for r in gc.get_referents(_core))
        bad.fail(error)  # a failed flight leaves the table at once
        assert not any(r is error for r in gc.get_referents(_core))
    finally:
        ok.finish()
        bad.finish()
    assert not any(r is value for r in gc.get_referents(_core))
