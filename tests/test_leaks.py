"""Leak tests: the hot paths looped in a fresh interpreter; live objects and
memory must stay flat between a warm-up and a long run."""

import pytest

from conftest import LEAK_SNAPSHOT, assert_flat, run_python

HARNESS = r'''
import asyncio, dataclasses, gc, sys
import cacheme
from cacheme import Cache, Node
from cacheme.serializer import MsgPackSerializer

MP = MsgPackSerializer()


@dataclasses.dataclass
class N(Node):
    uid: int
    def key(self): return f"leak:{self.uid}"
    async def load(self):
        if self.uid < 0:
            raise ValueError("bad")
        return {"uid": self.uid}
    class Meta(Node.Meta):
        caches = [Cache(storage="local", ttl=None)]

@dataclasses.dataclass
class T(Node):
    uid: int
    def key(self): return f"ttl:{self.uid}"
    async def load(self):
        await asyncio.sleep(0)
        return [self.uid]
    class Meta(Node.Meta):
        caches = [Cache(storage="small", ttl=__import__("datetime").timedelta(milliseconds=1))]
        doorkeeper = cacheme.BloomFilter(500, 0.01)

@dataclasses.dataclass
class S(Node):
    uid: int
    def key(self): return f"susp:{self.uid}"
    async def load(self):
        await asyncio.sleep(1e-5)  # a real future: the leader's task awaits a stand-in of it
        return self.uid
    class Meta(Node.Meta):
        caches = [Cache(storage="local", ttl=None)]

@cacheme.Memoize(N)
async def memo(uid):
    return uid

@memo.to_node
def _(uid):
    return N(uid)

async def body(i):
{body}

async def main():
    await cacheme.register_storage("local", cacheme.Storage(url="local://tlfu", size=1000))
    await cacheme.register_storage("small", cacheme.Storage(url="local://lru", size=100))
    for i in range(3000):
        await body(i)
    before = snapshot()
    for i in range(3000, 3000 + {n}):
        await body(i)
    after = snapshot()
    print(before[0], after[0], before[1], after[1])

asyncio.run(main())
'''

CASES = {
    "local_hit": "    await cacheme.get(N(i % 100))",
    "miss_load_evict": "    await cacheme.get(N(i))",
    "memoize": "    await memo(i % 2000)",
    "get_all": "    await cacheme.get_all([N(i % 1500), N(i % 1500 + 1), N(i)])",
    "get_all_local_hits": "    await cacheme.get_all([N(i % 50), N(i % 50 + 1), N(i % 50)])",
    "get_all_failing_load": (
        "    try:\n        await cacheme.get_all([N(i), N(-1 - i)])\n    except ValueError:\n        pass"
    ),
    # two callers share a suspending batch; one is cancelled, then the only one
    "get_all_cancelled_callers": (
        "    ts = [asyncio.ensure_future(cacheme.get_all([S(-1 - i), S(10**7 + i)]))\n"
        "          for _ in range(2)]\n"
        "    await asyncio.sleep(0)\n    ts[0].cancel()\n"
        "    await asyncio.gather(*ts, return_exceptions=True)\n"
        "    t = asyncio.ensure_future(cacheme.get_all([S(-10**7 - i)]))\n"
        "    await asyncio.sleep(0)\n    t.cancel()\n"
        "    await asyncio.gather(t, return_exceptions=True)"
    ),
    "failing_load": (
        "    try:\n        await cacheme.get(N(-1 - i))\n    except ValueError:\n        pass"
    ),
    "waiters_ttl_doorkeeper": (
        "    await asyncio.gather(*(cacheme.get(T(i % 50)) for _ in range(5)))"
    ),
    "cancelled_waiters": (
        "    ts = [asyncio.ensure_future(cacheme.get(T(10**6 + i))) for _ in range(3)]\n"
        "    await asyncio.sleep(0)\n    ts[0].cancel(); ts[1].cancel()\n"
        "    await asyncio.gather(*ts, return_exceptions=True)"
    ),
    "invalidate_refresh": "    await cacheme.refresh(N(i % 10))",
    # msgpack map templates: made, used, replaced in their slots, nested
    "msgpack_records": (
        "    v = [{f'k{(i // 7 + j) % 40}': [j] if j % 3 else j for j in range(2 + i % 9)}\n"
        "         for _ in range(3)] + [{'a': [i], 'b': {'c': i}, 'x' * 40: 1}]\n"
        "    assert MP.loads(MP.dumps(v)) == v"
    ),
    "suspending_load": "    await asyncio.gather(*(cacheme.get(S(i)) for _ in range(3)))",
    "leader_cancelled_with_waiters": (
        "    ts = [asyncio.ensure_future(cacheme.get(S(-1 - i)))]\n"
        "    await asyncio.sleep(0)\n"
        "    ts += [asyncio.ensure_future(cacheme.get(S(-1 - i))) for _ in range(2)]\n"
        "    await asyncio.sleep(0)\n    ts[0].cancel()\n"
        "    await asyncio.gather(*ts, return_exceptions=True)"
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hot_path_does_not_leak(case):
    code = LEAK_SNAPSHOT + HARNESS.replace("{body}", CASES[case]).replace("{n}", "30000")
    assert_flat(run_python(code), rss_kib=4096)
