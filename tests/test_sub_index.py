"""The Redis subscriber with many channels at once (csrc/redis/subscriber.c):
its channels are found by name (a hash index), so a subscribe, an
unsubscribe, a message and a confirmation cost O(subscribers of that name).

The cost is checked as a count, not a time: _tracking_info()'s
"subscriber_visits" counts the channels and entries the subscriber looked
at. With one scan of every channel per operation (as before) n channels
cost about n*n/2 visits; here a few per operation."""
import asyncio
import dataclasses
from datetime import timedelta

import cacheme
from cacheme.storages.redis import RedisStorage
from conftest import unique, wait_for
from redis_servers import (  # noqa: F401  (fixtures)
    _redis_session_server,
    needs_redis,
    redis_server,
)

pytestmark = needs_redis

N = 2000
# visits allowed per channel for the whole of a test's phase (7 to 15 are
# spent, depending on the test): far below the N/2 per channel and
# operation that a scan of every channel costs
PER_CHANNEL = 40


async def wait_for_async(cond, what: str, timeout: float = 30.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await cond():
        if loop.time() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


def visits(st) -> int:
    return st._tracking_info()["subscriber_visits"]


def count(log, entry) -> int:
    return sum(1 for e in log if e == entry)


async def numsub(client, chans) -> dict:
    """{channel: subscribers} on the server (PUBSUB NUMSUB)."""
    r = await client.execute("PUBSUB", "NUMSUB", *chans)
    return {r[i]: r[i + 1] for i in range(0, len(r), 2)}


async def test_many_channels_subscribed_messaged_and_unsubscribed(redis_server):
    s = RedisStorage(redis_server.url)
    other = RedisStorage(redis_server.url)
    await other.connect()
    try:
        chans = [unique("many").encode() for _ in range(N)]
        log = s._sub_listen(chans[0])
        await wait_for(lambda: ("subscribed", chans[0]) in log, "first channel in place")
        v0 = visits(s)
        for c in chans[1:]:
            assert s._sub_listen(c) is log
        await wait_for(lambda: sum(1 for e in log if e[0] == "subscribed") == N,
                       "every channel in place")
        assert {e[1] for e in log if e[0] == "subscribed"} == set(chans)
        subs = await numsub(other, chans)
        assert set(subs.values()) == {1}  # one SUBSCRIBE per name
        got = await asyncio.gather(*(other.execute("PUBLISH", c, b"p:" + c) for c in chans))
        assert got == [1] * N
        await wait_for(lambda: sum(1 for e in log if e[0] == "message") == N, "every message")
        assert sorted(e[1] for e in log if e[0] == "message") == sorted(b"p:" + c for c in chans)
        for c in chans:
            s._sub_unlisten(c)
        await wait_for_async(lambda: _all_zero(other, chans), "every channel unsubscribed")
        spent = visits(s) - v0
        assert spent <= PER_CHANNEL * N, spent
    finally:
        await other.close()
        s.close_now()


async def _all_zero(client, chans) -> bool:
    return await _all_at(client, chans, 0)


async def _all_at(client, chans, n: int) -> bool:
    """Every one of chans has n subscribers on the server."""
    return set((await numsub(client, chans)).values()) == {n}


async def test_several_subscribers_of_one_channel(redis_server):
    """One SUBSCRIBE for all of a channel's subscribers; each is told and
    messaged; one of them going keeps the others; the last one going
    unsubscribes. Among many other channels."""
    s = RedisStorage(redis_server.url)
    other = RedisStorage(redis_server.url)
    await other.connect()
    try:
        filler = [unique("fill").encode() for _ in range(500)]
        log = s._sub_listen(filler[0])
        await wait_for(lambda: ("subscribed", filler[0]) in log, "up")
        for c in filler[1:]:
            s._sub_listen(c)
        chan = unique("shared").encode()
        assert s._sub_hold(True) == 0
        for _ in range(3):
            s._sub_listen(chan)
        assert s._sub_hold(True) == 1  # one SUBSCRIBE for the three
        assert count(log, ("subscribed", chan)) == 0
        assert s._sub_hold(False) == 1
        await wait_for(lambda: count(log, ("subscribed", chan)) == 3, "all three told")
        s._sub_listen(chan)  # in place already: told at once
        assert count(log, ("subscribed", chan)) == 4
        assert (await numsub(other, [chan]))[chan] == 1
        assert await other.execute("PUBLISH", chan, b"one") == 1
        await wait_for(lambda: count(log, ("message", b"one")) == 4, "all four messaged")
        s._sub_unlisten(chan)
        assert await other.execute("PUBLISH", chan, b"two") == 1  # still subscribed
        await wait_for(lambda: count(log, ("message", b"two")) == 3, "the other three messaged")
        for _ in range(3):
            s._sub_unlisten(chan)
        await wait_for_async(lambda: _all_zero(other, [chan]), "the last one unsubscribed")
        # the channel again: a new SUBSCRIBE, told again
        s._sub_listen(chan)
        await wait_for(lambda: count(log, ("subscribed", chan)) == 5, "subscribed again")
        assert await other.execute("PUBLISH", chan, b"three") == 1
        await wait_for(lambda: count(log, ("message", b"three")) == 1, "messaged once")
        # the filler channels were not disturbed
        assert set((await numsub(other, filler)).values()) == {1}
    finally:
        await other.close()
        s.close_now()


async def test_unsubscribe_from_inside_a_message_callback(redis_server):
    """An entry that unsubscribes itself while its message is dispatched:
    the entries after it are still called, and the channel stays while
    others listen; on many channels at once. Alone, it unsubscribes the
    channel."""
    s = RedisStorage(redis_server.url)
    other = RedisStorage(redis_server.url)
    await other.connect()
    try:
        chans = [unique("once").encode() for _ in range(N // 2)]
        log = s._sub_listen_once(chans[0])  # [listen, once]
        await wait_for(lambda: any(e[0] == "up" for e in log), "up")
        for c in chans[1:]:
            s._sub_listen_once(c)
        for c in chans:
            s._sub_listen(c)  # [listen, once, listen]
        await wait_for(lambda: sum(1 for e in log if e[0] == "subscribed") == 2 * len(chans),
                       "every channel in place")
        v0 = visits(s)
        got = await asyncio.gather(*(other.execute("PUBLISH", c, c) for c in chans))
        assert got == [1] * len(chans)
        await wait_for(lambda: sum(1 for e in log if e[0] == "message") == 2 * len(chans),
                       "both listeners of every channel messaged")
        assert sorted(e[1] for e in log if e[0] == "once") == sorted(chans)
        del log[:]
        got = await asyncio.gather(*(other.execute("PUBLISH", c, c) for c in chans))
        assert got == [1] * len(chans)
        await wait_for(lambda: sum(1 for e in log if e[0] == "message") == 2 * len(chans),
                       "messaged again")
        assert not any(e[0] == "once" for e in log)  # it went
        spent = visits(s) - v0
        assert spent <= PER_CHANNEL * len(chans), spent
        # alone on its channel: its going unsubscribes it
        chan = unique("alone").encode()
        s._sub_listen_once(chan)
        await wait_for(lambda: ("subscribed", chan) in log, "in place")
        s._sub_unlisten(chan)  # the once entry is left alone
        assert await other.execute("PUBLISH", chan, chan) == 1
        await wait_for(lambda: ("once", chan) in log, "the once entry messaged")
        await wait_for_async(lambda: _all_zero(other, [chan]), "unsubscribed from inside")
        # the other channels still listened to
        assert set((await numsub(other, chans)).values()) == {1}
    finally:
        await other.close()
        s.close_now()


async def test_reconnect_resubscribes_every_channel_once(redis_server):
    """The subscriber connection killed: back up, every channel subscribed
    again (one SUBSCRIBE each, also for the shared ones), every subscriber
    told again, and messages reach all of them once."""
    s = RedisStorage(redis_server.url, retry_backoff=0.01, retry_backoff_max=0.05)
    other = RedisStorage(redis_server.url)
    await other.connect()
    try:
        chans = [unique("re").encode() for _ in range(N // 2)]
        log = s._sub_listen(chans[0])
        await wait_for(lambda: any(e[0] == "up" for e in log), "up")
        for c in chans[1:]:
            s._sub_listen(c)
        shared = chans[::10]
        for c in shared:
            s._sub_listen(c)
        told = len(chans) + len(shared)
        await wait_for(lambda: sum(1 for e in log if e[0] == "subscribed") == told,
                       "every subscriber told")
        # some channels gone before the reconnect: not subscribed again
        gone = chans[1::10]
        for c in gone:
            s._sub_unlisten(c)
        live = [c for c in chans if c not in set(gone)]
        await wait_for_async(lambda: _all_zero(other, gone), "unsubscribed")
        up_id = [e for e in log if e[0] == "up"][-1][1]
        v0 = visits(s)
        del log[:]
        await other.execute("CLIENT", "KILL", "ID", str(up_id))
        await wait_for(lambda: ("lost", 0) in log, "lost")
        await wait_for(lambda: any(e[0] == "up" for e in log), "up again")
        await wait_for(lambda: sum(1 for e in log if e[0] == "subscribed") == told - len(gone),
                       "every live subscriber told again")
        assert {e[1] for e in log if e[0] == "subscribed"} == set(live)
        for c in shared:
            assert count(log, ("subscribed", c)) == 2
        subs = await numsub(other, chans)
        assert {subs[c] for c in live} == {1}
        assert {subs[c] for c in gone} == {0}
        got = await asyncio.gather(*(other.execute("PUBLISH", c, b"m:" + c) for c in live))
        assert got == [1] * len(live)
        want = len(live) + len(shared)
        await wait_for(lambda: sum(1 for e in log if e[0] == "message") == want, "all messaged")
        for c in shared:
            assert count(log, ("message", b"m:" + c)) == 2
        spent = visits(s) - v0
        assert spent <= PER_CHANNEL * len(chans), spent
    finally:
        await other.close()
        s.close_now()


async def test_thousands_of_lease_waits_on_distinct_keys(redis_server):
    """N concurrent gets of distinct keys whose leases another client
    holds: each waits on its own channel; the holder fills and releases
    every key; every get returns the filled value, none loads, and every
    channel is unsubscribed after."""
    name = unique("subidx")
    await cacheme.register_storage(
        name, cacheme.Storage(url=redis_server.url, lease=timedelta(seconds=300)))
    st = cacheme.data.get_storage_by_name(name)._storage
    loads = []
    prefix = unique("k")

    @dataclasses.dataclass
    class K(cacheme.Node):
        i: int

        def key(self):
            return f"subidx:{prefix}:{self.i}"

        async def load(self):
            loads.append(self.i)
            return "loaded"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=name, ttl=None)]

    other = RedisStorage(redis_server.url)
    await other.connect()
    try:
        nodes = [K(i) for i in range(N)]
        lks = [n.full_key() + ":lease" for n in nodes]
        got = await asyncio.gather(*(other.execute("SET", lk, "them", "NX", "PX", 300000)
                                     for lk in lks))
        assert got == ["OK"] * N
        log = st._sub_listen(unique("warm").encode())  # the subscriber up first
        await wait_for(lambda: any(e[0] == "up" for e in log), "up")
        v0 = visits(st)
        tasks = [asyncio.ensure_future(cacheme.get(n)) for n in nodes]
        await wait_for_async(
            lambda: _all_at(other, lks, 1), "every waiter subscribed to its lease key")
        assert not any(t.done() for t in tasks)
        await asyncio.gather(*(other.set(n, f"filled{n.i}", None, None) for n in nodes))
        script = "redis.call('del', KEYS[1]) return redis.call('publish', KEYS[1], '1')"
        got = await asyncio.gather(*(other.execute("EVAL", script, 1, lk) for lk in lks))
        assert got == [1] * N
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert results == [f"filled{i}" for i in range(N)]
        assert loads == []
        await wait_for_async(lambda: _all_zero(other, lks), "every lease channel unsubscribed")
        spent = visits(st) - v0
        assert spent <= PER_CHANNEL * N, spent
    finally:
        await other.close()
        st.close_now()
