"""Cache(storage, ttl, ttl_jitter=j): each write's TTL is drawn uniformly in
ttl * (1 - j) .. ttl * (1 + j), for local stores, Redis and Python storages."""
import dataclasses
import os
from datetime import timedelta

import pytest

import cacheme
from cacheme import Cache, Node, _core
from conftest import register_local, run_python, unique
from redis_servers import _redis_session_server, needs_redis, redis_server  # noqa: F401


def make_node(caches):
    @dataclasses.dataclass
    class JNode(Node):
        uid: int

        def key(self) -> str:
            return f"j:{self.uid}"

        async def load(self):
            return self.uid

        class Meta(Node.Meta):
            version = "v1"

    JNode.Meta.caches = caches
    return JNode


def test_cache_validates_ttl_jitter():
    assert Cache("x", timedelta(seconds=1)).ttl_jitter == 0.0
    assert Cache("x", timedelta(seconds=1), ttl_jitter=0.1).ttl_jitter == 0.1
    assert "ttl_jitter=0.1" in repr(Cache("x", timedelta(seconds=1), ttl_jitter=0.1))
    for bad in (1, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="ttl_jitter"):
            Cache("x", timedelta(seconds=1), ttl_jitter=bad)
    with pytest.raises(ValueError, match="needs a ttl"):
        Cache("x", None, ttl_jitter=0.1)
    with pytest.raises(TypeError, match="ttl_jitter"):
        Cache("x", timedelta(seconds=1), ttl_jitter=True)
    with pytest.raises(TypeError, match="ttl_jitter"):
        Cache("x", timedelta(seconds=1), ttl_jitter="0.1")


async def test_a_cache_object_set_after_construction_is_checked_by_the_core():
    local = await register_local()
    c = Cache(local, timedelta(seconds=1))
    object.__setattr__(c, "ttl_jitter", 2.0)  # bypassing __init__'s check
    N = make_node([c])
    with pytest.raises(ValueError, match="ttl_jitter must be in"):
        await cacheme.get(N(1))


class Recording:
    """A Python storage that records the TTLs it is given."""

    def __init__(self):
        self.ttls = []
        self.batch_ttls = []

    def is_local(self):
        return False

    async def connect(self):
        pass

    async def get(self, node, serializer):
        return cacheme.models.sentinel

    async def get_all(self, nodes, serializer):
        return []

    async def set(self, node, value, ttl, serializer):
        self.ttls.append(ttl)

    async def set_all(self, data, ttl, serializer):
        self.batch_ttls.append(ttl)

    async def remove(self, node):
        pass


async def test_python_storage_gets_timedeltas_spread_within_the_jitter():
    name = unique("rec")
    rec = Recording()
    await cacheme.register_storage(name, rec)
    N = make_node([Cache(name, timedelta(seconds=100), ttl_jitter=0.2)])
    for i in range(300):
        await cacheme.get(N(i))
    assert len(rec.ttls) == 300
    assert all(isinstance(t, timedelta) for t in rec.ttls)
    secs = [t.total_seconds() for t in rec.ttls]
    assert all(80 <= s <= 120 for s in secs), (min(secs), max(secs))
    # uniform over +-20 s: 300 draws cover both tails and are not all alike
    assert min(secs) < 90 and max(secs) > 110, (min(secs), max(secs))
    assert len(set(secs)) > 250
    # get_all's fill is one set_all: one TTL drawn for the batch
    await cacheme.get_all([N(i) for i in range(1000, 1010)])
    assert len(rec.batch_ttls) == 1 and 80 <= rec.batch_ttls[0].total_seconds() <= 120


async def test_no_jitter_passes_the_ttl_object_itself():
    name = unique("rec")
    rec = Recording()
    await cacheme.register_storage(name, rec)
    ttl = timedelta(seconds=100)
    N = make_node([Cache(name, ttl)])
    for i in range(3):
        await cacheme.get(N(i))
    assert all(t is ttl for t in rec.ttls)


async def test_local_store_expiries_are_spread():
    # ttl 0.4 s +-75%: entries expire between 0.1 and 0.7 s after the fill;
    # at 0.4 s about half are gone (without jitter: none, then all at once)
    local = await register_local("lru", 1000)
    N = make_node([Cache(local, timedelta(seconds=0.4), ttl_jitter=0.75)])
    for i in range(200):
        await cacheme.get(N(i))
    store = cacheme.data.get_storage_by_name(local)._local
    assert len(store) == 200
    # the core's clock moved on, not slept on: a sleep(0.4) that a loaded
    # machine stretched past 0.65 s would leave under 10
    try:
        _core._advance_clock(400_000_000)
        store.expire()
        left = len(store)
        assert 10 < left < 190, left
        _core._advance_clock(450_000_000)
        store.expire()
        assert len(store) == 0
    finally:
        _core._reset_clock()


@needs_redis
async def test_redis_ttls_are_spread(redis_server):
    name = unique("r")
    await cacheme.register_storage(name, cacheme.Storage(url=redis_server.url))
    N = make_node([Cache(name, timedelta(seconds=100), ttl_jitter=0.2)])
    for i in range(200):
        await cacheme.get(N(i))
    s = cacheme.data.get_storage_by_name(name)._storage
    pttls = [await s.execute("PTTL", N(i).full_key()) for i in range(200)]
    assert all(78_000 <= p <= 120_000 for p in pttls), (min(pttls), max(pttls))
    assert min(pttls) < 90_000 and max(pttls) > 110_000, (min(pttls), max(pttls))
    await s.close()


def test_forked_workers_draw_different_ttls():
    # the generator is reseeded in a forked child: workers forked together
    # (gunicorn --preload) do not write the same TTL sequence. In a fresh,
    # single-threaded interpreter: forking pytest's process (threads of its
    # servers' watchers) is unsafe.
    out = run_python("""
        import asyncio, dataclasses, os
        from datetime import timedelta
        import cacheme
        from cacheme import Cache, Node, _core

        class Recording:
            def __init__(self):
                self.ttls = []
            def is_local(self):
                return False
            async def connect(self):
                pass
            async def get(self, node, serializer):
                return cacheme.models.sentinel
            async def set(self, node, value, ttl, serializer):
                self.ttls.append(ttl.total_seconds())
            async def remove(self, node):
                pass
            async def close(self):
                pass

        @dataclasses.dataclass
        class J(Node):
            uid: int
            def key(self):
                return f"j:{self.uid}"
            async def load(self):
                return self.uid
            class Meta(Node.Meta):
                version = "v1"
                caches = [Cache("rec", timedelta(seconds=100), ttl_jitter=0.5)]

        async def draw():
            rec = Recording()
            await cacheme.register_storage("rec", rec)
            for i in range(5):
                await cacheme.get(J(i))
            await cacheme.close()
            return rec.ttls

        asyncio.run(draw())  # the parent has drawn before forking
        r, w = os.pipe()
        pids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                try:
                    os.write(w, (repr(asyncio.run(draw())) + "\\n").encode())
                finally:
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        os.close(w)
        with os.fdopen(r) as f:
            print(f.read())
    """)
    first, second = (eval(line) for line in out.split("\n")[:2])
    assert len(first) == 5 and first != second
