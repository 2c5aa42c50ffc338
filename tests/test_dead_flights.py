"""Flights whose loop can no longer end them. A loop closed with a get's
Task still pending (loop.close() without cancelling, as asyncio.run would),
or one stopped on this thread while another runs, leaves that key's flight
in the process's table; nobody can wait for it. A later get or get_all of
the key on another loop leads a load of its own: before, the same thread's
get raised 'attached to a different loop', another thread's waited forever,
and get_all waited forever."""
import asyncio
import dataclasses
import threading

import cacheme
from conftest import flights, register_local, unique


def held_node(storage):
    """A node whose load waits for ever on the loop `hold` names (set per
    test), and returns at once elsewhere."""
    calls = []

    @dataclasses.dataclass
    class N(cacheme.Node):
        uid: str

        def key(self):
            return f"dead:{self.uid}"

        async def load(self):
            calls.append(self.uid)
            if asyncio.get_running_loop() is N.hold:
                await asyncio.sleep(3600)
            return f"v-{self.uid}"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=None)]

    N.hold = None
    return N, calls


def setup():
    name = asyncio.run(register_local())
    return held_node(name)


def start_on(loop, N, coro_fn):
    """Run coro_fn() as a Task on loop until its load holds; the Task."""
    N.hold = loop

    async def start():
        t = asyncio.ensure_future(coro_fn())
        for _ in range(100):
            await asyncio.sleep(0)
        assert not t.done()
        return t

    return loop.run_until_complete(start())


def bounded(coro):
    async def main():
        return await asyncio.wait_for(coro, 10)

    return asyncio.run(main())


def test_get_after_its_loop_closed_under_the_flight():
    N, calls = setup()
    k = unique("a")
    loop = asyncio.new_event_loop()
    start_on(loop, N, lambda: cacheme.get(N(k)))
    loop.close()
    assert bounded(cacheme.get(N(k))) == f"v-{k}"
    assert calls == [k, k]
    assert bounded(cacheme.get(N(k))) == f"v-{k}"  # filled
    assert calls == [k, k]


def test_get_while_its_loop_is_stopped_then_that_loop_ends_its_own():
    """Loop A stopped (run_until_complete returned) with a get in flight: a
    get on loop B leads its own; A's, resumed, ends too."""
    N, calls = setup()
    k = unique("s")
    a = asyncio.new_event_loop()
    try:
        first = start_on(a, N, lambda: cacheme.get(N(k)))
        assert bounded(cacheme.get(N(k))) == f"v-{k}"
        assert calls == [k, k]
        first.cancel()  # A's load sleeps for ever: end it
        a.run_until_complete(asyncio.gather(first, return_exceptions=True))
    finally:
        a.close()
    assert flights() == 0


def test_get_on_another_thread_after_the_leaders_loop_closed():
    N, calls = setup()
    k = unique("t")
    made = threading.Event()

    def thread():
        loop = asyncio.new_event_loop()
        start_on(loop, N, lambda: cacheme.get(N(k)))
        loop.close()
        made.set()

    t = threading.Thread(target=thread)
    t.start()
    t.join(30)
    assert made.is_set()
    assert bounded(cacheme.get(N(k))) == f"v-{k}"
    assert calls == [k, k]


def test_get_all_after_its_loop_closed_under_the_flights():
    N, calls = setup()
    ks = [unique("g") for _ in range(3)]
    loop = asyncio.new_event_loop()
    start_on(loop, N, lambda: cacheme.get_all([N(k) for k in ks]))
    loop.close()
    assert bounded(cacheme.get_all([N(k) for k in ks])) == [f"v-{k}" for k in ks]
    # A's batch loads in turn: it held in the first key's load
    assert calls == [ks[0]] + ks
    assert bounded(cacheme.get(N(ks[0]))) == f"v-{ks[0]}"  # filled


def test_get_after_a_get_all_whose_loop_closed():
    N, calls = setup()
    ks = [unique("m") for _ in range(2)]
    loop = asyncio.new_event_loop()
    start_on(loop, N, lambda: cacheme.get_all([N(k) for k in ks]))
    loop.close()
    assert bounded(cacheme.get(N(ks[0]))) == f"v-{ks[0]}"  # the one A's batch held in
    assert bounded(cacheme.get(N(ks[1]))) == f"v-{ks[1]}"  # led by A, never loaded there
    assert calls == [ks[0], ks[0], ks[1]]
