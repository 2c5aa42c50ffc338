"""Cross-process leases given back however the flight or get_all batch that
holds them ends: its coroutine closed (close(), GeneratorExit thrown in),
or its Task dropped and collected while it still holds them. A lease not
given back is held until it expires (300 s here), keeping every other
process waiting on its key that long."""
import asyncio
import gc
import weakref
from datetime import timedelta

import pytest

import cacheme
from conftest import unique
from redis_servers import _redis_session_server, needs_redis, redis_server  # noqa: F401
from test_redis_review import lease_node

pytestmark = needs_redis

LEASE = timedelta(seconds=300)


def blocking_load(loads):
    """A load that records its node and then waits on a future nobody
    completes (only its own frame holds it)."""

    async def load(node):
        loads.append(node.uid)
        await asyncio.get_running_loop().create_future()

    return load


async def until(cond, what, tries=1000):
    for _ in range(tries):
        if await cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def count_left(st, lkeys, tries=1000):
    """How many of lkeys are still in Redis, waiting up to about 10 s for
    it to drop to 0 (a release goes out on the loop)."""
    left = None
    for _ in range(tries):
        left = await st.execute("EXISTS", *lkeys)
        if left == 0:
            break
        await asyncio.sleep(0.01)
    return left


def task_of(kind, but=()):
    """The one Task of the running loop whose coroutine is a `kind`
    (GetAll, GetCall), other than those in but."""
    tasks = [t for t in asyncio.all_tasks()
             if type(t.get_coro()).__name__ == kind and t not in but]
    assert len(tasks) == 1, tasks
    return tasks[0]


async def setup(url, name):
    await cacheme.register_storage(name, cacheme.Storage(url=url, lease=LEASE))
    return cacheme.data.get_storage_by_name(name)._storage


async def start_batch(url, name, n=3, make_load=blocking_load):
    """get_all over n keys with lease=, in a Task, until its batch loads
    the first key (holding every key's lease). (caller task, batch task,
    storage, lease keys, loads)."""
    st = await setup(url, name)
    loads = []
    N = lease_node(name, make_load(loads))
    base = unique("k")
    nodes = [N(f"{base}-{i}") for i in range(n)]
    lkeys = [x.full_key() + ":lease" for x in nodes]
    caller = asyncio.ensure_future(cacheme.get_all(nodes))

    async def loading():
        return len(loads) > 0

    await until(loading, "the batch's first load")
    assert await st.execute("EXISTS", *lkeys) == n  # the batch holds them all
    return caller, task_of("GetAll", but=(caller,)), st, lkeys, loads


async def finish(st, *tasks):
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await st.close()


def test_get_all_batch_closed_while_loading_gives_back_its_leases(redis_server):  # noqa: F811
    """The batch's coroutine is closed (close()) while it loads, holding
    the leases of its keys: every one of them is given back."""

    async def main():
        caller, batch, st, lkeys, loads = await start_batch(redis_server.url, unique("lc-close"))
        batch.get_coro().close()
        left = await count_left(st, lkeys)
        await finish(st, caller, batch)
        return left, loads

    left, loads = asyncio.run(main())
    assert left == 0
    assert len(loads) == 1


def stubborn_load(loads):
    """A blocking load that will not stop: it awaits again when closed."""

    async def load(node):
        loads.append(node.uid)
        try:
            await asyncio.get_running_loop().create_future()
        except GeneratorExit:
            await asyncio.sleep(0)

    return load


def test_get_all_batch_closed_whose_load_refuses_gives_back_its_leases(redis_server):  # noqa: F811
    """Closing the batch closes its load, which refuses (RuntimeError out
    of close()): the leases are given back all the same."""

    async def main():
        caller, batch, st, lkeys, loads = await start_batch(
            redis_server.url, unique("lc-refuse"), make_load=stubborn_load)
        raised = None
        try:
            batch.get_coro().close()
        except RuntimeError as e:
            raised = str(e)
        left = await count_left(st, lkeys)
        await finish(st, caller, batch)
        return raised, left

    raised, left = asyncio.run(main())
    assert "ignored GeneratorExit" in raised
    assert left == 0


def test_get_all_batch_closed_while_waiting_on_a_lease_gives_its_back(redis_server):  # noqa: F811
    """The batch takes its keys' leases one at a time, in lease-key order;
    another process holds the second: the batch holds the first and waits.
    Closed then, it gives the first back and stops waiting, so it does not
    take the others for nobody once the holder is done."""

    async def main():
        name = unique("lc-wait")
        st = await setup(redis_server.url, name)
        loads = []
        N = lease_node(name, blocking_load(loads))
        base = unique("k")
        nodes = [N(f"{base}-{i}") for i in range(3)]
        lkeys = sorted(x.full_key() + ":lease" for x in nodes)
        await st.execute("SET", lkeys[1], "other", "PX", 300000)
        caller = asyncio.ensure_future(cacheme.get_all(nodes))

        async def listening():
            sub = await st.execute("PUBSUB", "NUMSUB", lkeys[1])
            return int(sub[1]) > 0

        await until(listening, "the batch waiting on the held lease")
        assert await st.execute("EXISTS", lkeys[0]) == 1  # got the first
        batch = task_of("GetAll", but=(caller,))
        batch.get_coro().close()
        first = await count_left(st, [lkeys[0]])

        async def quiet():
            return not await listening()

        await until(quiet, "the closed batch to stop listening")
        await st.execute("DEL", lkeys[1])
        await st.execute("PUBLISH", lkeys[1], "x")  # the holder is done
        for _ in range(20):  # a waiter still listening would take the rest now
            await asyncio.sleep(0.01)
        rest = await st.execute("EXISTS", lkeys[1], lkeys[2])
        await finish(st, caller, batch)
        return first, rest, loads

    first, rest, loads = asyncio.run(main())
    assert first == 0
    assert rest == 0
    assert loads == []


def test_get_all_batch_thrown_generator_exit_gives_back_its_leases(redis_server):  # noqa: F811
    """GeneratorExit thrown into the batch's coroutine while it loads (as a
    generator's close() does) ends it; its leases are given back."""

    async def main():
        caller, batch, st, lkeys, loads = await start_batch(redis_server.url, unique("lc-throw"))
        raised = None
        try:
            batch.get_coro().throw(GeneratorExit)
        except BaseException as e:  # noqa: B036
            raised = type(e)
        left = await count_left(st, lkeys)
        await finish(st, caller, batch)
        return raised, left

    raised, left = asyncio.run(main())
    assert raised is GeneratorExit
    assert left == 0


def test_get_all_batch_collected_while_loading_gives_back_its_leases(redis_server):  # noqa: F811
    """get_all is started in a Task nobody keeps, and its load waits on a
    future only the load holds: once the batch loads (holding its keys'
    leases), the caller's Task, the batch's and the load are garbage. The
    collector frees them, and the batch's leases are given back."""

    async def main():
        loop = asyncio.get_running_loop()
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx.get("message")))
        caller, batch, st, lkeys, loads = await start_batch(redis_server.url, unique("lc-gc"))
        del caller, batch
        for _ in range(3):
            gc.collect()
        left = await count_left(st, lkeys)
        await st.close()
        return left, errors

    left, errors = asyncio.run(main())
    assert left == 0
    assert any("destroyed but it is pending" in (m or "") for m in errors)


def test_get_all_batch_collected_after_its_loop_closed(redis_server):  # noqa: F811
    """The loop is closed while the batch holds its leases, and the batch
    is collected afterwards: the give-back cannot go out (no loop); it
    neither crashes nor hangs, and the leases are left to expire."""
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda lp, ctx: None)
    try:
        caller, batch, st, lkeys, loads = loop.run_until_complete(
            start_batch(redis_server.url, unique("lc-closed")))
    finally:
        loop.close()
    collected = weakref.ref(batch)  # its Task: a GetAll takes no weak reference
    del caller, batch
    for _ in range(3):
        gc.collect()
    assert collected() is None

    async def after():
        left = await st.execute("EXISTS", *lkeys)
        await st.execute("DEL", *lkeys)
        await st.close()
        return left

    assert asyncio.run(after()) == len(lkeys)
    assert len(loads) == 1



async def start_moved_flight(url, name):
    """A get's flight, holding its key's lease and loading, moved to a Task
    of its own (its leader cancelled while another caller waits on it).
    (waiter task, the flight's task, storage, lease key)."""
    st = await setup(url, name)
    loads = []
    node = lease_node(name, blocking_load(loads))(unique("k"))
    lkey = node.full_key() + ":lease"
    lead = asyncio.ensure_future(cacheme.get(node))

    async def loading():
        return len(loads) > 0

    await until(loading, "the leader's load")
    assert await st.execute("EXISTS", lkey) == 1
    waiter = asyncio.ensure_future(cacheme.get(node))
    await asyncio.sleep(0)  # it joined the flight
    lead.cancel()
    await asyncio.gather(lead, return_exceptions=True)
    return waiter, task_of("GetCall", but=(waiter,)), st, lkey


def test_moved_flight_closed_while_loading_gives_back_its_lease(redis_server):  # noqa: F811
    """The single-key flight moved to its own Task is closed (its
    coroutine's close()) while it loads under its lease: the lease is given
    back."""

    async def main():
        waiter, flight, st, lkey = await start_moved_flight(redis_server.url, unique("lc-moved"))
        flight.get_coro().close()
        left = await count_left(st, [lkey])
        await finish(st, waiter, flight)
        return left

    assert asyncio.run(main()) == 0


def test_moved_flight_thrown_generator_exit_gives_back_its_lease(redis_server):  # noqa: F811
    """GeneratorExit thrown into the moved flight's coroutine while it
    loads ends it (the flight's failure is its waiters', so its Task's
    coroutine returns); its lease is given back. (Its Task cannot become garbage
    while in flight: the flight table holds it.)"""

    async def main():
        waiter, flight, st, lkey = await start_moved_flight(redis_server.url, unique("lc-mthrow"))
        raised = None
        try:
            flight.get_coro().throw(GeneratorExit)
        except BaseException as e:  # noqa: B036
            raised = type(e)
        left = await count_left(st, [lkey])
        await finish(st, waiter, flight)
        return raised, left

    raised, left = asyncio.run(main())
    assert raised is StopIteration
    assert left == 0


@pytest.mark.parametrize("many", [True, False], ids=["get_all", "get"])
def test_waiting_on_a_lease_when_its_loop_closed(redis_server, many):  # noqa: F811
    """A get_all batch (or a get) waiting on another process's lease when
    its loop is closed under it: the keys on a new loop do not wait for
    it, and when the other lease goes the dead lease, which can no longer
    hand its outcome to its closed loop, gives back what it took, quietly
    (it printed 'Exception ignored ... Event loop is closed')."""
    import sys

    name = unique("lc-dead")
    loop = asyncio.new_event_loop()
    loads = []

    async def load(node):
        loads.append(node.uid)
        return f"v{node.uid}"

    async def start():
        st = await setup(redis_server.url, name)
        N = lease_node(name, load)
        nodes = [N(f"d-{i}") for i in range(3 if many else 1)]
        lkeys = sorted(x.full_key() + ":lease" for x in nodes)
        other = lkeys[1] if many else lkeys[0]
        await st.execute("SET", other, "other", "PX", 300000)
        caller = asyncio.ensure_future(
            cacheme.get_all(nodes) if many else cacheme.get(nodes[0]))

        async def listening():
            sub = await st.execute("PUBSUB", "NUMSUB", other)
            return int(sub[1]) > 0

        await until(listening, "the batch waiting on the other process's lease")
        return caller, st, lkeys, nodes, other

    caller, st, lkeys, nodes, other = loop.run_until_complete(start())
    loop.close()
    unraisable = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(repr(u.exc_value))

    async def after():
        if many:
            assert await st.execute("EXISTS", lkeys[0]) == 1  # taken by the dead batch
        await st.execute("DEL", other)  # the other process is done
        got = await asyncio.wait_for(cacheme.get_all(nodes), 10)

        async def given_back():  # the dead group, woken, gives back what it took
            return await st.execute("EXISTS", *lkeys) == 0

        await until(given_back, "the dead batch's leases given back")
        return got

    try:
        assert asyncio.run(after()) == [f"v{n.uid}" for n in nodes]
    finally:
        sys.unraisablehook = old_hook
    assert unraisable == []
    del caller
    gc.collect()
