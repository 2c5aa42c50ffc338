"""A value copied from a later local cache into an earlier one keeps the age
it has there (when it was written, when its TTL ends there, how long its
load took), for get and get_all alike: the copy expires no later than its
source, and refresh_after / early_refresh judge it by its original write
and load, not by the time of the copy.

Two local caches chained, [a, b]: a value is loaded (into both), removed from
a (as if a had evicted it), then read from b, which fills a. get_all is
checked on both of its paths: every node hit a local cache (the fill is
done by the call), and some node missed them all (the fill is done once
its load is over).

Time is moved with the core's test clock (_core._advance_clock), as in
test_freshness.py; nothing sleeps for a TTL."""
import asyncio
from datetime import timedelta

import pytest

import cacheme
from cacheme import Cache, _core
from conftest import register_local
from test_freshness import Source, advance, make_node, settle


@pytest.fixture(autouse=True)
def _real_clock_after():
    yield
    _core._reset_clock()


async def two_locals(src, ttl_a, ttl_b, policy_b="lru", **meta):
    """A node caching in a new tlfu store a, then a new store b; the node and
    both stores (their _local LocalStore)."""
    a, b = await register_local(), await register_local(policy_b)
    N = make_node([Cache(a, timedelta(seconds=ttl_a)), Cache(b, timedelta(seconds=ttl_b))], src,
                  **meta)
    get_storage = cacheme.data.get_storage_by_name
    return N, get_storage(a)._local, get_storage(b)._local


# how a value is read back from b into a: single get, get_all whose nodes
# all hit a local cache, get_all with one more node that misses everywhere
# (N(99), loaded by the same call)
READS = ["get", "get_all", "get_all_with_a_miss"]


async def read(how, N, uid):
    if how == "get":
        return await cacheme.get(N(uid))
    if how == "get_all":
        got = await cacheme.get_all([N(uid), N(uid)])
        assert got[0] == got[1]
        return got[0]
    got = await asyncio.wait_for(cacheme.get_all([N(uid), N(99)]), 10)
    assert got[1][0] == 99
    return got[0]


async def loaded_then_only_in_b(N, store_a, store_b, uid=1):
    """N(uid) loaded into both caches, then removed from a."""
    assert await cacheme.get(N(uid)) == (uid, 1)
    assert store_a.remove(N(uid).full_key())
    assert store_b.get(N(uid).full_key()) == (uid, 1)


@pytest.mark.parametrize("how", READS)
async def test_a_copy_expires_when_its_source_does(how):
    """b keeps the value 10 s, a 60 s: read from b 8 s after it was
    written, the copy in a ends with b's 2 s left, not 60 s later."""
    src = Source()
    N, store_a, store_b = await two_locals(src, 60, 10, refresh_after=timedelta(seconds=1000))
    await loaded_then_only_in_b(N, store_a, store_b)
    advance(8)
    assert await read(how, N, 1) == (1, 1)  # from b, 8 s old
    assert store_a.get(N(1).full_key()) == (1, 1)  # copied into a
    await settle()
    assert src.loads.count(1) == 1
    advance(3)  # 11 s since it was written: b's copy has ended, and a's with it
    assert store_b.get(N(1).full_key()) is None
    assert store_a.get(N(1).full_key()) is None
    assert await read(how, N, 1) == (1, 2)  # so it is loaded again
    assert src.loads.count(1) == 2


@pytest.mark.parametrize("how", READS)
async def test_a_copy_keeps_its_own_ttl_when_that_ends_first(how):
    """a keeps values 5 s, b 100 s: the copy ends with a's own TTL (the
    source's end only caps it)."""
    src = Source()
    N, store_a, store_b = await two_locals(src, 5, 100, refresh_after=timedelta(seconds=1000))
    await loaded_then_only_in_b(N, store_a, store_b)
    advance(8)
    assert await read(how, N, 1) == (1, 1)
    assert store_a.get(N(1).full_key()) == (1, 1)
    advance(4)
    assert store_a.get(N(1).full_key()) == (1, 1)
    advance(2)  # 6 s after the copy: past a's TTL, b still has it
    assert store_a.get(N(1).full_key()) is None
    assert store_b.get(N(1).full_key()) == (1, 1)


@pytest.mark.parametrize("how", READS)
async def test_refresh_after_sees_the_copy_as_old_as_its_source(how):
    """refresh_after 5 s: copied 3 s after its load, the copy is due 3 s
    later (6 s old), not 5 s after the copy."""
    src = Source()
    N, store_a, store_b = await two_locals(src, 60, 60, refresh_after=timedelta(seconds=5))
    await loaded_then_only_in_b(N, store_a, store_b)
    advance(3)
    assert await read(how, N, 1) == (1, 1)  # from b, 3 s old: not due
    await settle()
    assert src.loads.count(1) == 1
    assert store_a.get(N(1).full_key()) == (1, 1)
    src.gate = asyncio.Event()
    advance(3)
    assert await cacheme.get(N(1)) == (1, 1)  # a's copy, 6 s old: due, returned at once
    await asyncio.sleep(0.01)
    assert src.loads.count(1) == 2  # its refresh is loading
    assert cacheme.stats(N).refresh_counts()["background"] == 1
    src.gate.set()
    await settle()
    assert await cacheme.get(N(1)) == (1, 2)


@pytest.mark.parametrize("how", READS)
async def test_refresh_after_by_get_all_on_the_copy(how):
    """The same, the copy read by get_all: it starts the refresh too."""
    src = Source()
    N, store_a, store_b = await two_locals(src, 60, 60, refresh_after=timedelta(seconds=5))
    await loaded_then_only_in_b(N, store_a, store_b)
    advance(3)
    assert await read(how, N, 1) == (1, 1)
    await settle()
    assert src.loads.count(1) == 1
    advance(3)
    assert await cacheme.get_all([N(1)]) == [(1, 1)]  # a's copy, due
    await settle()
    assert cacheme.stats(N).refresh_counts()["background"] == 1
    assert await cacheme.get_all([N(1)]) == [(1, 2)]


# early_refresh: a hit refreshes when now + beta * delta * -ln(u) >= expiry,
# delta the value's load time (at least 1 ms here: Source sleeps that long).
# TTL = 2e9 s; beta = 1e7: beta * delta is 1e4 s or more, and under 1e8 s
# for any load under 10 s. A hit 2e9 s before the end refreshes with
# probability exp(-2e9 / (beta * delta)) < exp(-20); a hit within about a
# second of the end, with probability above exp(-1e-4). A copy that lost
# its load time (delta 0) never refreshes early.
BIG_TTL = 2 * 10**9
BETA = 1e7


@pytest.mark.parametrize("how", READS)
async def test_early_refresh_uses_the_load_time_and_end_of_the_source(how):
    src = Source()
    N, store_a, store_b = await two_locals(src, 2 * BIG_TTL, BIG_TTL, early_refresh=BETA)
    await loaded_then_only_in_b(N, store_a, store_b)
    assert await read(how, N, 1) == (1, 1)  # from b, far from its end
    await settle()
    assert cacheme.stats(N).refresh_counts()["early"] == 0
    assert store_a.get(N(1).full_key()) == (1, 1)
    advance(BIG_TTL - 1)  # b's end is about a second away, a's own TTL far off
    assert await cacheme.get(N(1)) == (1, 1)  # a's copy: near the end of b's, due early
    await settle()
    assert cacheme.stats(N).refresh_counts()["early"] == 1
    assert src.loads.count(1) == 2
    assert await cacheme.get(N(1)) == (1, 2)


async def test_get_all_copies_each_key_with_its_own_age():
    """Several keys copied by one get_all, each from b with the age it has
    there: written 2 s apart, they end 2 s apart in a too."""
    src = Source()
    N, store_a, store_b = await two_locals(src, 60, 10, refresh_after=timedelta(seconds=1000))
    await loaded_then_only_in_b(N, store_a, store_b, uid=1)
    advance(2)
    await loaded_then_only_in_b(N, store_a, store_b, uid=2)
    advance(5)
    assert await cacheme.get_all([N(1), N(2), N(3)]) == [(1, 1), (2, 1), (3, 1)]
    assert store_a.get(N(1).full_key()) == (1, 1)
    assert store_a.get(N(2).full_key()) == (2, 1)
    advance(4)  # N(1) is 11 s old, N(2) 9 s
    assert store_a.get(N(1).full_key()) is None
    assert store_a.get(N(2).full_key()) == (2, 1)
    assert store_a.get(N(3).full_key()) == (3, 1)  # loaded: a's own 60 s
    advance(2)
    assert store_a.get(N(2).full_key()) is None
    assert store_a.get(N(3).full_key()) == (3, 1)
    assert await cacheme.get_all([N(1), N(2), N(3)]) == [(1, 2), (2, 2), (3, 1)]


# ------------------------------------------------------------ when the copy is made


class HeldSource(Source):
    """Source whose loads of the uids in `held` wait for the event `hold`."""

    def __init__(self, held):
        super().__init__()
        self.held = held
        self.hold = asyncio.Event()

    async def load(self, uid):
        if uid in self.held:
            self.loads.append(uid)
            await self.hold.wait()
            return (uid, self.loads.count(uid))
        return await super().load(uid)


async def until(cond):
    """Let the loop run until cond() holds (10 s at most)."""
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


async def test_get_all_copies_at_once_so_a_later_invalidate_removes_the_copy():
    """get_all([N(1), N(99)]): N(1) is read from b, N(99) is loaded (held).
    N(1) is invalidated meanwhile. The copy of N(1) into a was made when
    get_all read it, as get makes it, so the invalidation removed it; made
    only once N(99)'s load was over, it brought the invalidated value back
    into a."""
    src = HeldSource({99})
    N, store_a, store_b = await two_locals(src, 60, 60)
    await loaded_then_only_in_b(N, store_a, store_b)
    task = asyncio.ensure_future(cacheme.get_all([N(1), N(99)]))
    await until(lambda: 99 in src.loads)
    assert not task.done()
    await cacheme.invalidate(N(1))
    assert store_a.get(N(1).full_key()) is None
    src.hold.set()
    assert await asyncio.wait_for(task, 10) == [(1, 1), (99, 1)]
    assert store_a.get(N(1).full_key()) is None
    assert store_b.get(N(1).full_key()) is None
    assert await cacheme.get(N(1)) == (1, 2)


async def test_get_all_copy_does_not_overwrite_the_value_of_a_refresh_it_started():
    """refresh_after 5 s: get_all([N(1), N(99)]) reads N(1) from b, 6 s old,
    which starts its refresh; N(99)'s load is held. The refresh fills a and
    b with the new value; the copy of the old one into a is not made after
    it."""
    src = HeldSource({99})
    N, store_a, store_b = await two_locals(src, 60, 60, refresh_after=timedelta(seconds=5))
    await loaded_then_only_in_b(N, store_a, store_b)
    advance(6)
    task = asyncio.ensure_future(cacheme.get_all([N(1), N(99)]))
    # the refresh of N(1) is not held: it ends
    await until(lambda: 99 in src.loads and src.loads.count(1) == 2 and _core._flights_in_table() == 1)
    assert not task.done()
    assert cacheme.stats(N).refresh_counts()["background"] == 1
    assert store_b.get(N(1).full_key()) == (1, 2)
    assert store_a.get(N(1).full_key()) == (1, 2)
    src.hold.set()
    assert await asyncio.wait_for(task, 10) == [(1, 1), (99, 1)]
    assert store_a.get(N(1).full_key()) == (1, 2)
    assert await cacheme.get(N(1)) == (1, 2)
