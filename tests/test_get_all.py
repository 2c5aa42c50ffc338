"""get_all's edges: cancellation of its callers, failing storages and
loads, the doorkeeper, the local tiers and the ready path."""
import asyncio
import dataclasses
import logging

import pytest

import cacheme
from cacheme import Cache, Node
from conftest import flights, register_local
from test_singleflight import DictStorage, Gates, Source, node_class


async def register_remote(**kw):
    remote = DictStorage(**kw)
    name = f"remote-{id(remote)}"
    await cacheme.register_storage(name, remote)
    return name, remote


async def test_cancelling_one_of_two_callers_keeps_the_batch():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    first = asyncio.ensure_future(cacheme.get_all([N(1), N(2)]))
    await src.started.wait()
    second = asyncio.ensure_future(cacheme.get_all([N(1), N(2)]))  # joins both flights
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.01)
    assert first.cancelled()
    src.gate.set()
    assert await asyncio.wait_for(second, 1) == ["value-1", "value-2"]
    assert src.calls == [1, 2] and src.cancelled == 0
    assert flights() == 0
    assert await cacheme.get_all([N(1), N(2)]) == ["value-1", "value-2"]  # filled
    assert src.calls == [1, 2]


async def test_cancelling_the_second_caller_leaves_the_first():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    first = asyncio.ensure_future(cacheme.get_all([N(1), N(2)]))
    await src.started.wait()
    second = asyncio.ensure_future(cacheme.get_all([N(2), N(3)]))  # joins 2, leads 3
    await asyncio.sleep(0.01)
    second.cancel()
    await asyncio.sleep(0.01)
    src.gate.set()
    assert await asyncio.wait_for(first, 1) == ["value-1", "value-2"]
    with pytest.raises(asyncio.CancelledError):
        await second
    await asyncio.sleep(0.01)
    assert flights() == 0
    assert 1 in src.calls and 2 in src.calls


async def test_cancelling_the_only_caller_cancels_its_batch():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    only = asyncio.ensure_future(cacheme.get_all([N(1), N(2)]))
    await src.started.wait()
    only.cancel()
    await asyncio.sleep(0.01)
    assert only.cancelled()
    assert src.cancelled == 1
    assert flights() == 0
    src.gate.set()
    assert await cacheme.get(N(1)) == "value-1"  # loaded anew
    assert src.calls == [1, 1]


async def test_a_get_waiting_on_a_batch_keeps_it_when_the_caller_is_cancelled():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    batch = asyncio.ensure_future(cacheme.get_all([N(1), N(2)]))
    await src.started.wait()
    single = asyncio.ensure_future(cacheme.get(N(2)))
    await asyncio.sleep(0.01)
    batch.cancel()
    await asyncio.sleep(0.01)
    src.gate.set()
    assert await asyncio.wait_for(single, 1) == "value-2"
    assert src.cancelled == 0
    assert flights() == 0


async def test_load_all_raising_fails_every_key_and_counts_failures():
    name = await register_local()
    src = Source()
    src.fail = ValueError("source down")
    N = node_class(name, src)
    src.gate.set()
    with pytest.raises(ValueError, match="source down"):
        await cacheme.get_all([N(1), N(2), N(3)])
    m = cacheme.stats(N)
    assert m.load_failure_count() == 3 and m.load_success_count() == 0
    assert m.miss_count() == 3
    assert flights() == 0
    src.fail = None
    assert await cacheme.get_all([N(1), N(2), N(3)]) == ["value-1", "value-2", "value-3"]


async def test_load_all_returning_garbage_fails_the_flights():
    name = await register_local()

    @dataclasses.dataclass
    class Bad(Node):
        uid: int

        def key(self):
            return f"bad:{self.uid}"

        @classmethod
        async def load_all(cls, nodes):
            return [1, 2]

        class Meta(Node.Meta):
            caches = [Cache(storage=name, ttl=None)]

    with pytest.raises(TypeError):
        await cacheme.get_all([Bad(1), Bad(2)])
    assert flights() == 0


async def test_storage_get_all_raising_is_a_miss_of_its_keys(caplog):
    local = await register_local()
    rname, remote = await register_remote(fail_get=True)
    src = Source()
    src.gate.set()
    N = node_class(local, src, [Cache(storage=local, ttl=None), Cache(storage=rname, ttl=None)])
    with caplog.at_level(logging.WARNING, logger="cacheme"):
        assert await cacheme.get_all([N(1), N(2)]) == ["value-1", "value-2"]
    assert "get_all from storage" in caplog.text and "storage down" in caplog.text
    st = cacheme.stats(N).storage_stats()[rname]
    assert st == {"hits": 0, "misses": 2, "errors": 1, "sets": 1, "set_errors": 0}
    assert sorted(src.calls) == [1, 2]
    assert flights() == 0


async def test_failing_first_remote_tier_keeps_what_the_second_has():
    local = await register_local()
    r1, bad = await register_remote(fail_get=True)
    r2, good = await register_remote()
    src = Gates()
    caches = [Cache(storage=local, ttl=None), Cache(storage=r1, ttl=None), Cache(storage=r2, ttl=None)]
    N = node_class(local, src, caches, own_load_all=False)
    src.open(1)
    src.open(2)
    # 1 is in the second remote tier only
    seed = node_class(local, src, [Cache(storage=r2, ttl=None)], own_load_all=False)
    assert await cacheme.get(seed(1)) == "value-1"
    src.calls.clear()
    assert await cacheme.get_all([N(1), N(2)]) == ["value-1", "value-2"]
    assert src.calls == [2]
    stats = cacheme.stats(N).storage_stats()
    assert stats[r1]["errors"] == 1 and stats[r2]["hits"] == 1 and stats[r2]["misses"] == 1
    assert flights() == 0


async def test_storage_key_error_of_get_all_is_raised():
    local = await register_local()

    class Refusing(DictStorage):
        async def get_all(self, nodes, serializer):
            raise cacheme._core.StorageKeyError("key refused")

    remote = Refusing()
    rname = f"remote-{id(remote)}"
    await cacheme.register_storage(rname, remote)
    src = Source()
    src.gate.set()
    N = node_class(local, src, [Cache(storage=local, ttl=None), Cache(storage=rname, ttl=None)])
    with pytest.raises(cacheme._core.StorageKeyError):
        await cacheme.get_all([N(1)])
    assert src.calls == []
    assert flights() == 0


async def test_failing_set_all_is_counted_not_raised(caplog):
    local = await register_local()
    rname, remote = await register_remote(fail_set=True)
    src = Source()
    src.gate.set()
    N = node_class(local, src, [Cache(storage=local, ttl=None), Cache(storage=rname, ttl=None)])
    with caplog.at_level(logging.WARNING, logger="cacheme"):
        assert await cacheme.get_all([N(1), N(2)]) == ["value-1", "value-2"]
    assert "set_all of storage" in caplog.text
    assert cacheme.stats(N).storage_stats()[rname]["errors"] == 1
    assert await cacheme.get_all([N(1), N(2)]) == ["value-1", "value-2"]  # local has them
    assert sorted(src.calls) == [1, 2]


@pytest.mark.parametrize("python_keeper", [False, True])
async def test_doorkeeper_fills_on_the_second_request(python_keeper):
    name = await register_local()

    class SetKeeper:
        def __init__(self):
            self.seen = set()

        def put(self, key):
            self.seen.add(key)

        def contains(self, key):
            return key in self.seen

    src = Source()
    src.gate.set()
    N = node_class(name, src)
    N.Meta.doorkeeper = SetKeeper() if python_keeper else cacheme.BloomFilter(1000, 0.01)
    nodes = [N(1), N(2)]
    assert await cacheme.get_all(nodes) == ["value-1", "value-2"]  # loaded, not stored
    assert await cacheme.get_all(nodes) == ["value-1", "value-2"]  # loaded and stored
    assert await cacheme.get_all(nodes) == ["value-1", "value-2"]  # hits
    assert src.calls == [1, 2, 1, 2]
    m = cacheme.stats(N)
    assert m.hit_count() == 2 and m.miss_count() == 4


async def test_invalidated_while_loading_is_not_filled():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    batch = asyncio.ensure_future(cacheme.get_all([N(1), N(2)]))
    await src.started.wait()
    await cacheme.invalidate(N(1))
    src.gate.set()
    assert await batch == ["value-1", "value-2"]
    assert await cacheme.get_all([N(1), N(2)]) == ["value-1", "value-2"]
    assert src.calls == [1, 2, 1]  # 1 was not filled
    assert flights() == 0


async def test_all_local_hits_are_ready_without_a_task():
    name = await register_local()
    src = Source()
    src.gate.set()
    N = node_class(name, src)
    assert await cacheme.get_all([N(1), N(2)]) == ["value-1", "value-2"]
    aw = cacheme.get_all([N(2), N(1), N(2)])
    with pytest.raises(StopIteration) as stop:
        aw.send(None)
    assert stop.value.value == ["value-2", "value-1", "value-2"]
    assert await cacheme.get_all([]) == []
    assert await cacheme.get_all(iter([N(1)])) == ["value-1"]


async def test_duplicate_nodes_load_once_and_count_each():
    name = await register_local()
    src = Source()
    src.gate.set()
    N = node_class(name, src, own_load_all=False)
    assert await cacheme.get_all([N(1), N(1), N(2)]) == ["value-1", "value-1", "value-2"]
    assert src.calls == [1, 2]
    m = cacheme.stats(N)
    assert m.miss_count() == 2 and m.hit_count() == 1


async def test_a_later_local_tier_fills_the_earlier_one():
    first = await register_local()
    second = await register_local()
    src = Source()
    src.gate.set()
    seed = node_class(second, src)
    assert await cacheme.get(seed(1)) == "value-1"  # only in the second tier
    N = node_class(first, src, [Cache(storage=first, ttl=None), Cache(storage=second, ttl=None)])
    assert await cacheme.get_all([N(1), N(2)]) == ["value-1", "value-2"]
    stats = cacheme.stats(N).storage_stats()
    assert stats[first] == {"hits": 0, "misses": 2, "errors": 0, "sets": 2, "set_errors": 0}
    assert stats[second] == {"hits": 1, "misses": 1, "errors": 0, "sets": 1, "set_errors": 0}
    assert await cacheme.get_all([N(1), N(2)]) == ["value-1", "value-2"]
    assert cacheme.stats(N).storage_stats()[first]["hits"] == 2
    assert src.calls == [1, 2]


async def test_get_all_errors_of_the_arguments():
    name = await register_local()
    src = Source()
    N = node_class(name, src)
    with pytest.raises(TypeError, match="expects cacheme.Node instances, got int"):
        await cacheme.get_all([1, 2])
    with pytest.raises(TypeError):
        await cacheme.get_all(None)
    assert flights() == 0
    assert N is not None


async def test_driven_as_a_plain_iterator():
    """What `await` does on CPython >= 3.12 (tp_iternext, StopIteration) and
    what a Task does on 3.11 (am_send) give the same values."""
    name = await register_local()
    src = Source()
    src.gate.set()
    N = node_class(name, src, own_load_all=False)
    it = cacheme.get_all([N(1), N(2)]).__await__()
    while True:
        try:
            fut = next(it)
        except StopIteration as stop:
            assert stop.value == ["value-1", "value-2"]
            break
        await asyncio.wait_for(asyncio.shield(fut), 1)
    it = cacheme.get_all([N(3)]).__await__()
    with pytest.raises(StopIteration):
        while True:
            fut = it.send(None)
            await asyncio.wait_for(asyncio.shield(fut), 1)
    assert flights() == 0
