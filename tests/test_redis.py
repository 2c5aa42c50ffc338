"""The Redis storage against a real redis-server (started on a free port)."""
import asyncio
import dataclasses
import gc
import os
import time
import weakref
from datetime import datetime, timedelta, timezone

import pytest

import cacheme
from cacheme import _core
from cacheme.serializer import JSONSerializer, MsgPackSerializer, PickleSerializer
from cacheme.storages.redis import (
    RedisConnectionError,
    RedisResponseError,
    RedisStorage,
    RedisTimeoutError,
    parse_url,
)
from conftest import (
    LEAK_SNAPSHOT,
    assert_spun,
    assert_flat,
    count_sleeps,
    flights,
    make_user_node,
    needs_two_cpus,
    register_local,
    run_python,
    spin_skips_ready_tasks,
    spins_back_off_on_a_slow_server,
    unique,
)
from redis_servers import (  # noqa: F401  (fixtures)
    RedisServer,
    _redis_session_server,
    commandstats,
    fd_count,
    free_port,
    needs_redis,
    redis_server,
)

pytestmark = needs_redis


async def register_redis(url, **options) -> str:
    name = unique("redis-")
    await cacheme.register_storage(name, cacheme.Storage(url=url, **options))
    return name


def storage_of(name):
    return cacheme.data.get_storage_by_name(name)._storage


# ---------------------------------------------------------------- URL


def test_parse_url():
    assert parse_url("redis://localhost") == {"host": "localhost"}
    assert parse_url("redis://u:p%40ss@h:7000/3") == {
        "host": "h", "port": 7000, "db": 3, "username": "u", "password": "p@ss"}
    assert parse_url("redis://:secret@h") == {"host": "h", "password": "secret"}
    assert parse_url("unix:///tmp/r.sock?db=2&timeout=0.5") == {
        "path": "/tmp/r.sock", "db": 2, "timeout": 0.5}
    assert parse_url("rediss://h:6380/1?ssl_cert_reqs=none&ssl_check_hostname=false") == {
        "host": "h", "port": 6380, "db": 1, "ssl": True, "ssl_cert_reqs": "none",
        "ssl_check_hostname": False}
    with pytest.raises(ValueError, match="unknown URL option"):
        parse_url("redis://h?bogus=1")
    with pytest.raises(ValueError, match="database"):
        parse_url("redis://h/x")
    with pytest.raises(TypeError, match="unknown option"):
        RedisStorage("redis://h", bogus=1)
    with pytest.raises(ValueError):
        RedisStorage("redis://h", pool_size=0)


# ---------------------------------------------------------------- basics


async def test_get_set_layout_compatible_with_030(redis_server):
    name = await register_redis(redis_server.url)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
    assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
    assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
    assert calls == [1]
    s = storage_of(name)
    raw = await s.execute("GET", "cacheme:user:1:v1")
    data = MsgPackSerializer().loads(raw)
    assert set(data) == {"value", "updated_at"}
    assert data["value"] == {"uid": 1, "name": "u1"}
    assert isinstance(data["updated_at"], datetime)
    assert data["updated_at"].tzinfo is not None
    assert abs(data["updated_at"] - datetime.now(timezone.utc)) < timedelta(seconds=30)
    assert await s.execute("TTL", "cacheme:user:1:v1") == -1  # ttl=None: plain SET
    # a value written the way 0.3.0 writes it is read back
    raw030 = MsgPackSerializer().dumps({"value": [1, 2], "updated_at": datetime.now(timezone.utc)})
    await s.execute("SET", "cacheme:user:2:v1", raw030)
    assert await cacheme.get(Node(2)) == [1, 2]
    assert calls == [1]


@pytest.mark.parametrize("serializer", [PickleSerializer(), JSONSerializer(), MsgPackSerializer(), None])
async def test_serializers(redis_server, serializer):
    name = await register_redis(redis_server.url)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)], serializer=serializer)
    v = await cacheme.get(Node(5))
    # a fresh local-less read comes from redis
    assert await storage_of(name).get(Node(5), serializer) == v
    assert calls == [5]


async def test_ttl_setex_and_psetex(redis_server):
    name = await register_redis(redis_server.url)
    Node, _ = make_user_node([cacheme.Cache(storage=name, ttl=timedelta(seconds=30))])
    await cacheme.get(Node(1))
    s = storage_of(name)
    assert 28 <= await s.execute("TTL", "cacheme:user:1:v1") <= 30
    # below a second: PSETEX (0.3.0 sent SETEX 0 and failed)
    Short, calls = make_user_node([cacheme.Cache(storage=name, ttl=timedelta(milliseconds=300))],
                                  version="short")
    t0 = time.monotonic()
    await cacheme.get(Short(1))
    pttl = await s.execute("PTTL", "cacheme:user:1:short")
    # the key cannot have expired before 300 ms have passed (-2 after)
    assert 0 < pttl <= 300 or (pttl == -2 and time.monotonic() - t0 >= 0.3), pttl
    stats = commandstats(redis_server)
    assert stats.get("setex") == 1 and stats.get("psetex") == 1
    await asyncio.sleep(0.4)
    await cacheme.get(Short(1))
    assert calls == [1, 1]  # expired in redis: loaded again
    # 1.5 s: PSETEX with the milliseconds
    t0 = time.monotonic()
    await s.set(Short(9), 1, timedelta(seconds=1.5), None)
    pttl = await s.execute("PTTL", "cacheme:user:9:short")
    assert 1500 - (time.monotonic() - t0) * 1000 - 1 <= pttl <= 1500, pttl


async def test_get_all_one_mget_and_set_all_one_pipeline(redis_server):
    name = await register_redis(redis_server.url)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=timedelta(seconds=60))])
    await cacheme.get(Node(3))
    values = await cacheme.get_all([Node(i) for i in range(10)])
    assert values == [{"uid": i, "name": f"u{i}"} for i in range(10)]
    assert sorted(calls) == list(range(10))
    stats = commandstats(redis_server)
    assert stats["mget"] == 1
    s = storage_of(name)
    assert await s.execute("EXISTS", *[f"cacheme:user:{i}:v1" for i in range(10)]) == 10
    assert 50 <= await s.execute("TTL", "cacheme:user:7:v1") <= 60
    # storage-level: pairs in order, missing keys left out
    pairs = await s.get_all([Node(9), Node(100), Node(2)], MsgPackSerializer())
    assert [(n.uid, v["uid"]) for n, v in pairs] == [(9, 9), (2, 2)]
    assert await s.get_all([], None) == []
    await s.set_all([(Node(i), i) for i in range(200, 300)], None, None)
    pairs = await s.get_all([Node(i) for i in range(200, 300)], None)
    assert [v for _, v in pairs] == list(range(200, 300))


async def test_invalidate_is_del(redis_server):
    name = await register_redis(redis_server.url)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
    await cacheme.get(Node(1))
    await cacheme.invalidate(Node(1))
    assert await storage_of(name).execute("EXISTS", "cacheme:user:1:v1") == 0
    assert commandstats(redis_server)["del"] == 1
    await cacheme.get(Node(1))
    assert calls == [1, 1]


async def test_execute_reply_types(redis_server):
    s = RedisStorage(redis_server.url)
    await s.connect()
    assert await s.execute("SET", "k", b"\x00\xff") == "OK"
    assert await s.execute("GET", "k") == b"\x00\xff"
    assert await s.execute("GET", "missing") is None
    assert await s.execute("INCRBY", "n", 5) == 5
    assert await s.execute("MGET", "k", "missing") == [b"\x00\xff", None]
    with pytest.raises(RedisResponseError, match="WRONGTYPE"):
        await s.execute("LPUSH", "k", "x")
    assert await s.execute("PING") == "PONG"  # the connection survives an error reply
    big = os.urandom(3 << 20)
    assert await s.execute("SET", "big", big) == "OK"
    assert await s.execute("GET", "big") == big
    await s.close()


def test_hiredis_version():
    # make test-hiredis1 runs this module against a hiredis 1.x build
    version = tuple(int(x) for x in _core._hiredis_version.split("."))
    assert version >= (0, 14, 0)
    if os.environ.get("CACHEME_EXPECT_HIREDIS"):
        assert version[0] == int(os.environ["CACHEME_EXPECT_HIREDIS"]), _core._hiredis_version


async def test_reply_shapes_through_either_hiredis(redis_server):
    # what the reply object functions build, on hiredis 0.14 and 1.x alike
    # (1.x orders its function table differently and passes sizes as size_t)
    s = RedisStorage(redis_server.url)
    await s.connect()
    assert await s.execute("GET", "no-such-key") is None  # nil bulk
    assert await s.execute("EVAL", "return {1, {2, {'x', false}}, {}, false}", 0) == [
        1, [2, [b"x", None]], [], None]  # nested arrays, nil inside them
    deep = "return " + "{" * 7 + "7" + "}" * 7  # 0.14's reader stops at 7 levels
    value = await s.execute("EVAL", deep, 0)
    for _ in range(7):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value == 7
    # an error inside an array, then a top-level one: the connection goes on
    reply = await s.execute("EVAL", "return {1, redis.error_reply('ERR inner')}", 0)
    assert reply[0] == 1 and isinstance(reply[1], RedisResponseError) and "inner" in str(reply[1])
    with pytest.raises(RedisResponseError, match="top"):
        await s.execute("EVAL", "return redis.error_reply('ERR top')", 0)
    big = [os.urandom(9 << 20), b"", os.urandom(1 << 20)]
    for i, b in enumerate(big):
        assert await s.execute("SET", f"big{i}", b) == "OK"
    assert await s.execute("MGET", "big0", "nothing", "big1", "big2") == [big[0], None, big[1], big[2]]
    assert await s.execute("PING") == "PONG"
    await s.close()


async def test_undecodable_bytes_are_a_miss_and_reload(redis_server):
    name = await register_redis(redis_server.url)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
    s = storage_of(name)
    await s.execute("SET", "cacheme:user:1:v1", b"\xc1garbage")
    assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
    assert calls == [1]
    await s.execute("SET", "cacheme:user:2:v1", b"\xc1garbage")
    assert (await cacheme.get_all([Node(2)]))[0]["uid"] == 2
    # the reload overwrote the garbage
    assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
    assert calls == [1, 2]


# ---------------------------------------------------------------- pipelining, herd


async def test_concurrent_gets_are_pipelined(redis_server):
    s = RedisStorage(redis_server.url, pipeline=10000)
    await s.connect()
    await s.execute("SET", "k", "v")
    redis_server.cli("CONFIG", "RESETSTAT")
    out = await asyncio.gather(*[s.execute("GET", "k") for _ in range(5000)])
    assert out == [b"v"] * 5000
    assert s._connections() == 1  # one connection carried them all
    assert commandstats(redis_server)["get"] == 5000
    # a small pipeline limit spreads a burst over more connections, up to pool_size
    s2 = RedisStorage(redis_server.url, pipeline=10, pool_size=4)
    await asyncio.gather(*[s2.execute("GET", "k") for _ in range(1000)])
    assert s2._connections() == 4
    await s.close()
    await s2.close()
    assert s._connections() == 0


class K:
    """A bare node: its full key."""

    def __init__(self, key):
        self.k = key

    def full_key(self):
        return self.k


async def test_gets_of_one_iteration_leave_as_one_mget_in_order(redis_server):
    s = RedisStorage(redis_server.url, pool_size=4)
    await s.connect()
    ser = MsgPackSerializer()
    await s.set_all([(K(f"k{i}"), i) for i in range(300)], None, ser)
    redis_server.cli("CONFIG", "RESETSTAT")
    # 600 gets (half of them misses) queued in one iteration: GETs of one
    # connection go out as MGETs of at most 256 keys
    got = await asyncio.gather(*[s.get(K(f"k{i % 600}"), ser) for i in range(600)])
    assert got == [i if i < 300 else cacheme.models.sentinel for i in range(600)]
    stats = commandstats(redis_server)
    assert stats.get("get", 0) == 0 and 3 <= stats["mget"] <= 4
    # a write queued between two reads of one key is seen by the second only
    redis_server.cli("CONFIG", "RESETSTAT")
    a = s.get(K("k1"), ser)
    w = s.set(K("k1"), "new", None, ser)
    b = s.get(K("k1"), ser)
    d = s.remove(K("k2"))
    c = s.get(K("k2"), ser)
    assert await asyncio.gather(a, w, b, d, c) == [1, None, "new", None,
                                                   cacheme.models.sentinel]
    # a lone GET is a GET
    assert await s.get(K("k3"), ser) == 3
    assert commandstats(redis_server)["get"] >= 1
    await s.close()


async def test_get_alls_of_one_iteration_share_one_mget(redis_server):
    """The keys of get_all calls made in one loop iteration join the single
    gets of that iteration: one MGET for all of them, each call its own
    pairs in order; a call with a key that cannot be sent fails alone."""
    s = RedisStorage(redis_server.url, pool_size=4)
    await s.connect()
    ser = MsgPackSerializer()
    await s.set_all([(K(f"m{i}"), i) for i in range(100)], None, ser)
    redis_server.cli("CONFIG", "RESETSTAT")
    batches = [[K(f"m{(7 * b + j) % 150}") for j in range(20)] for b in range(10)]
    calls = [s.get_all(nodes, ser) for nodes in batches]
    calls += [s.get(K("m5"), ser), s.get(K("m120"), ser)]
    out = await asyncio.gather(*calls)
    for nodes, pairs in zip(batches, out):
        expect = [(n, int(n.k[1:])) for n in nodes if int(n.k[1:]) < 100]
        assert [(n.k, v) for n, v in pairs] == [(n.k, v) for n, v in expect]
    assert out[-2:] == [5, cacheme.models.sentinel]
    stats = commandstats(redis_server)
    assert stats["mget"] == 1 and stats.get("get", 0) == 0, stats
    # a key that cannot be encoded: that get_all fails at once (a
    # StorageKeyError naming it), the others not
    bad = [K("m1"), K("\udc80")]
    ok = s.get_all([K("m2")], ser)
    with pytest.raises(_core.StorageKeyError, match=r"key '\\udc80' .*lone surrogate"):
        s.get_all(bad, ser)
    assert [(n.k, v) for n, v in await ok] == [("m2", 2)]
    await s.close()


async def test_a_bad_key_in_a_run_fails_alone(redis_server):
    s = RedisStorage(redis_server.url)
    await s.connect()
    ser = MsgPackSerializer()
    await s.set(K("ok"), 1, None, ser)
    good = s.get(K("ok"), ser)
    with pytest.raises(_core.StorageKeyError):  # a lone surrogate cannot be sent
        s.get(K("bad\udcff"), ser)
    good2 = s.get(K("ok"), ser)
    out = await asyncio.gather(good, good2)
    assert out == [1, 1]
    await s.close()


async def test_a_run_in_flight_fails_as_a_whole_when_the_server_stalls():
    with RedisServer() as server:
        s = RedisStorage(server.url, timeout=0.3, retry_backoff=0.05)
        await s.connect()
        server.pause()
        try:
            t0 = time.monotonic()
            out = await asyncio.gather(*[s.get(K(f"x{i}"), None) for i in range(50)],
                                       return_exceptions=True)
            assert all(isinstance(e, RedisTimeoutError) for e in out)
            assert time.monotonic() - t0 < 2
        finally:
            server.resume()
        for _ in range(100):  # the pool recovers
            try:
                assert await s.get(K("x1"), None) is cacheme.models.sentinel
                break
            except (RedisConnectionError, RedisTimeoutError):
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("no recovery after the server resumed")
        await s.close()


async def test_thundering_herd_one_get_one_load(redis_server):
    name = await register_redis(redis_server.url)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)], sleep=0.05)
    redis_server.cli("CONFIG", "RESETSTAT")
    out = await asyncio.gather(*[cacheme.get(Node(1)) for _ in range(200)])
    assert all(v == {"uid": 1, "name": "u1"} for v in out)
    assert calls == [1]
    stats = commandstats(redis_server)
    assert stats["get"] == 1 and stats["set"] == 1


async def test_local_redis_chain(redis_server):
    local = await register_local()
    name = await register_redis(redis_server.url)
    Node, calls = make_user_node(
        [cacheme.Cache(storage=local, ttl=None), cacheme.Cache(storage=name, ttl=None)], sleep=0.05)
    redis_server.cli("CONFIG", "RESETSTAT")
    out = await asyncio.gather(*[cacheme.get(Node(1)) for _ in range(200)])
    assert len(out) == 200 and calls == [1]
    assert commandstats(redis_server)["get"] == 1
    await asyncio.gather(*[cacheme.get(Node(1)) for _ in range(200)])
    assert commandstats(redis_server)["get"] == 1  # all local hits now
    # a value only in redis fills the local cache
    await storage_of(name).set(Node(2), "from-redis", None, MsgPackSerializer())
    out = await asyncio.gather(*[cacheme.get(Node(2)) for _ in range(50)])
    assert out == ["from-redis"] * 50
    assert calls == [1]
    assert commandstats(redis_server)["get"] == 2
    assert await cacheme.get(Node(2)) == "from-redis"
    assert commandstats(redis_server)["get"] == 2


# ---------------------------------------------------------------- URLs, auth


async def test_unix_socket_and_db(redis_server):
    s = RedisStorage(f"unix://{redis_server.socket}?db=2")
    await s.connect()
    await s.execute("SET", "in-db-2", "x")
    assert redis_server.cli("-n", "2", "GET", "in-db-2") == "x"
    assert redis_server.cli("-n", "0", "EXISTS", "in-db-2") == "0"
    await s.close()
    s = RedisStorage(f"redis://127.0.0.1:{redis_server.port}/3")
    await s.execute("SET", "in-db-3", "y")
    assert redis_server.cli("-n", "3", "GET", "in-db-3") == "y"
    await s.close()


async def test_auth_password_and_acl_user():
    with RedisServer(password="s3cret") as server:
        s = RedisStorage(f"redis://:s3cret@127.0.0.1:{server.port}/1")
        await s.connect()
        assert await s.execute("SET", "a", "1") == "OK"
        assert server.cli("-n", "1", "GET", "a") == "1"
        server.cli("ACL", "SETUSER", "alice", "on", ">pw", "~*", "+@all")
        s2 = RedisStorage(f"redis://alice:pw@127.0.0.1:{server.port}")
        assert await s2.execute("GET", "a") is None
        await s2.execute("SET", "b", "2")
        bad = RedisStorage(f"redis://:wrong@127.0.0.1:{server.port}", retry_backoff=0.01)
        with pytest.raises(RedisConnectionError, match="WRONGPASS|invalid"):
            await bad.connect()
        for x in (s, s2, bad):
            await x.close()


# ---------------------------------------------------------------- faults


async def test_unreachable_server_is_a_miss_fast():
    port = free_port()
    name = unique("redis-down-")
    storage = cacheme.Storage(url=f"redis://127.0.0.1:{port}", retry_backoff=0.05)
    with pytest.raises(RedisConnectionError):
        await storage.connect()
    _core._add_storage(name, storage)  # register_storage without its connect()
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
    t = time.monotonic()
    out = await asyncio.gather(*[cacheme.get(Node(i)) for i in range(100)])
    assert time.monotonic() - t < 2
    assert [v["uid"] for v in out] == list(range(100))
    assert len(calls) == 100
    st = cacheme.stats(Node)
    assert st.load_success_count() == 100


async def test_timeout_of_a_stalled_server():
    with RedisServer() as server:
        s = RedisStorage(server.url, timeout=0.3, connect_timeout=0.3, retry_backoff=0.05)
        await s.connect()
        server.pause()
        try:
            t = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await s.execute("GET", "k")
            assert 0.25 < time.monotonic() - t < 2
            # a new connection times out connecting? (the kernel accepts it: reply timeout)
            with pytest.raises((RedisTimeoutError, RedisConnectionError)):
                await s.execute("GET", "k")
        finally:
            server.resume()
        for _ in range(100):
            try:
                assert await s.execute("PING") == "PONG"
                break
            except (RedisTimeoutError, RedisConnectionError):
                await asyncio.sleep(0.05)
        else:
            pytest.fail("no recovery after the server resumed")
        await s.close()


async def test_server_restart_mid_run_recovers_without_fd_leak():
    with RedisServer() as server:
        name = await register_redis(server.url, retry_backoff=0.02, retry_backoff_max=0.1)
        Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
        s = storage_of(name)
        fds0 = None
        for cycle in range(5):
            ok = await asyncio.gather(*[cacheme.get(Node(i)) for i in range(50)])
            assert len(ok) == 50
            gets = asyncio.gather(*[s.execute("GET", "x") for _ in range(200)],
                                  return_exceptions=True)
            await asyncio.sleep(0)
            server.kill()  # mid-run: replies in flight are lost
            results = await gets
            # every request finished: a value or a connection error, none hangs
            assert all(r is None or isinstance(r, RedisConnectionError) for r in results)
            # while down: gets are misses (loaded), fast
            calls.clear()
            t = time.monotonic()
            out = await asyncio.gather(*[cacheme.get(Node(1000 + i)) for i in range(20)])
            assert len(out) == 20 and len(calls) == 20 and time.monotonic() - t < 2
            server.start()
            for _ in range(200):
                try:
                    if await s.execute("PING") == "PONG":
                        break
                except RedisConnectionError:
                    await asyncio.sleep(0.02)
            else:
                pytest.fail("no reconnect after restart")
            calls.clear()
            await cacheme.get(Node(7))
            await cacheme.get(Node(7))
            assert calls == [7]  # stored in the restarted server and read back
            gc.collect()
            if fds0 is None:
                fds0 = fd_count()
            else:
                assert fd_count() <= fds0 + 2, "fds leak across reconnects"
            assert s._connections() <= 100
        await s.close()
        assert s._connections() == 0


# how long the proxy of the two tests below holds each reply
HOLD = 0.25


async def test_callers_cancelled_while_their_get_is_in_flight(redis_server):
    """The leader of a flight waits on its Redis GET through a proxy that the
    op wakes directly (no done-callback on the op's future): cancelling it,
    alone or with others waiting, behaves as with a plain future."""
    from delay_proxy import DelayProxy

    # the replies are held HOLD s: what the test does while a GET is out
    # (sleep 10 ms, cancel) must end before it is answered, and a loaded
    # machine can stretch a 10 ms sleep by tens of ms (this was 50 ms)
    proxy = DelayProxy("127.0.0.1", redis_server.port, HOLD)
    try:
        name = await register_redis(f"redis://127.0.0.1:{proxy.port}", busy_poll=0.0)
        Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
        # a lone leader: CancelledError, nothing left in flight, no load
        t = asyncio.ensure_future(cacheme.get(Node(1)))
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert flights() == 0 and calls == []
        # the leader cancelled with two waiters: they get the value, one load
        ts = [asyncio.ensure_future(cacheme.get(Node(2)))]
        await asyncio.sleep(0.01)
        ts += [asyncio.ensure_future(cacheme.get(Node(2))) for _ in range(2)]
        await asyncio.sleep(0)
        ts[0].cancel()
        res = await asyncio.gather(*ts, return_exceptions=True)
        assert isinstance(res[0], asyncio.CancelledError)
        assert res[1:] == [{"uid": 2, "name": "u2"}] * 2 and calls == [2]
        # many leaders at once, woken together in one batch, each its own value
        out = await asyncio.gather(*(cacheme.get(Node(i)) for i in range(10, 60)))
        assert out == [{"uid": i, "name": f"u{i}"} for i in range(10, 60)]
        assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
        assert flights() == 0
        await storage_of(name).close()
    finally:
        proxy.close()


async def test_callers_cancelled_while_the_fill_or_the_read_is_out(redis_server):
    """A flight's Get waits on its Redis calls as its own future: cancelled
    during the fill (SET) the value is already with the waiters and the SET
    still lands; every caller cancelled during the read ends the flight."""
    from delay_proxy import DelayProxy

    # replies held HOLD s (was 50 ms): see the test above
    proxy = DelayProxy("127.0.0.1", redis_server.port, HOLD)
    try:
        name = await register_redis(f"redis://127.0.0.1:{proxy.port}", busy_poll=0.0)
        Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
        s = storage_of(name)
        # the leader cancelled while its SET is out (read HOLD, load, SET HOLD)
        lead = asyncio.ensure_future(cacheme.get(Node(3)))
        await asyncio.sleep(0.01)
        waiter = asyncio.ensure_future(cacheme.get(Node(3)))
        # the read is back and loaded (the waiter has the value): the SET
        # just went out and is HOLD away; waited for, not hoped in a sleep
        for _ in range(5000):
            if waiter.done():
                break
            await asyncio.sleep(0.001)
        assert calls == [3] and waiter.done() and not lead.done()
        lead.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lead
        assert waiter.result() == {"uid": 3, "name": "u3"}
        assert flights() == 0
        for _ in range(50):
            if await s.execute("EXISTS", "cacheme:user:3:v1") == 1:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the fill did not land")
        # every caller cancelled while the read is out: no load, no flight
        ts = [asyncio.ensure_future(cacheme.get(Node(4))) for _ in range(3)]
        await asyncio.sleep(0.01)
        for t in ts:
            t.cancel()
        res = await asyncio.gather(*ts, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in res)
        await asyncio.sleep(2 * HOLD)  # the read's reply arrives for nobody
        assert flights() == 0 and calls == [3]
        assert await cacheme.get(Node(4)) == {"uid": 4, "name": "u4"}
        # a waiter timed out by wait_for; the others get the value
        lead = asyncio.ensure_future(cacheme.get(Node(5)))
        await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cacheme.get(Node(5)), 0.01)
        assert await lead == {"uid": 5, "name": "u5"}
        assert flights() == 0
        await s.close()
    finally:
        proxy.close()


async def test_overridden_get_and_set_are_called(redis_server):
    """The core makes a Redis storage's calls itself (no future per call)
    only where neither its class nor the instance overrides get or set."""
    seen = []

    class Counting(RedisStorage):
        def get(self, node, serializer):
            seen.append(("get", node.uid))
            return super().get(node, serializer)

        def set(self, node, value, ttl, serializer):
            seen.append(("set", node.uid))
            return super().set(node, value, ttl, serializer)

    storage = cacheme.Storage(url=redis_server.url)
    storage._storage = storage._cacheme_backend = Counting(redis_server.url)
    name = unique("redis-")
    await cacheme.register_storage(name, storage)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
    assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
    assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
    assert seen == [("get", 1), ("set", 1), ("get", 1)] and calls == [1]

    seen.clear()
    name = await register_redis(redis_server.url)
    plain = storage_of(name)
    get = plain.get
    plain.get = lambda node, serializer: seen.append(("get", node.uid)) or get(node, serializer)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)], version="v2")
    assert await cacheme.get(Node(2)) == {"uid": 2, "name": "u2"}
    assert seen == [("get", 2)] and calls == [2]
    del plain.get
    assert await cacheme.get(Node(2)) == {"uid": 2, "name": "u2"}
    assert seen == [("get", 2)] and calls == [2]
    await plain.close()
    await storage.close()


async def test_cancelled_request_does_not_break_the_connection(redis_server):
    s = RedisStorage(redis_server.url)
    await s.connect()
    await s.execute("SET", "k", "v")
    futs = [asyncio.ensure_future(s.execute("GET", "k")) for _ in range(100)]
    await asyncio.sleep(0)
    for f in futs[::2]:
        f.cancel()
    res = await asyncio.gather(*futs, return_exceptions=True)
    assert all(r == b"v" for r in res[1::2])
    assert await s.execute("GET", "k") == b"v"
    await s.close()


def test_storage_survives_a_new_event_loop(redis_server):
    s = RedisStorage(redis_server.url)

    async def once(v):
        await s.execute("SET", "k", v)
        return await s.execute("GET", "k")

    assert asyncio.run(once("1")) == b"1"
    assert asyncio.run(once("2")) == b"2"
    asyncio.run(s.close())


async def test_closed_storage_raises(redis_server):
    s = RedisStorage(redis_server.url)
    await s.connect()
    await s.close()
    with pytest.raises(Exception, match="closed"):
        await s.execute("PING")


async def test_no_fd_or_object_leak_over_many_storages(redis_server):
    gc.collect()
    fds = fd_count()
    for _ in range(20):
        s = RedisStorage(redis_server.url)
        await asyncio.gather(*[s.execute("PING") for _ in range(300)])
        await s.close()
        del s
    gc.collect()
    await asyncio.sleep(0.01)
    assert fd_count() <= fds + 1
    # dropping a storage without close() releases its sockets too
    s = RedisStorage(redis_server.url)
    await s.execute("PING")
    del s
    gc.collect()
    await asyncio.sleep(0.01)
    assert fd_count() <= fds + 1


# ---------------------------------------------------------------- review fixes


def bad_key_node():
    """A node whose key cannot be encoded as UTF-8 (a lone surrogate)."""

    @dataclasses.dataclass
    class BadKeyNode(cacheme.Node):
        def key(self) -> str:
            return "bad:\ud800"

        class Meta(cacheme.Node.Meta):
            pass

    BadKeyNode.__qualname__ = unique("BadKeyNode")
    return BadKeyNode


async def test_failed_request_is_undone_after_the_buffer_moved():
    # The kernel buffer is full (server stopped), so the output buffer holds a
    # sent prefix. The next request's header makes the buffer drop that prefix
    # (moving the unsent bytes to the front) and then the request fails to
    # encode; undoing it must not bring back bytes that were already sent.
    with RedisServer() as server:
        s = RedisStorage(server.url)
        await s.connect()
        Node, _ = make_user_node([])
        Bad = bad_key_node()
        server.pause()
        try:
            # "*3 SET big <n bytes>" is then 20 bytes short of the 16 MiB buffer
            set_fut = s.execute("SET", "big", b"x" * ((16 << 20) - 54))
            await asyncio.sleep(0)  # the flush: a partial write
            # a node's key is checked before anything is encoded; raw
            # arguments of execute() are not
            with pytest.raises(_core.StorageKeyError):
                s.get_all([Node(1), Bad()], None)
            with pytest.raises(UnicodeEncodeError):
                await s.execute("MGET", Node(1).full_key(), "bad\ud800")
            ping = s.execute("PING")
        finally:
            server.resume()
        assert await set_fut == "OK"
        assert await ping == "PONG"
        assert await s.execute("STRLEN", "big") == (16 << 20) - 54
        assert "errorstat" not in server.cli("INFO", "errorstats")
        await s.close()


def connections_received(server) -> int:
    for line in server.cli("INFO", "stats").splitlines():
        if line.startswith("total_connections_received:"):
            return int(line.split(":")[1])
    raise AssertionError("no total_connections_received in INFO stats")


async def test_wrong_password_backs_off_exponentially():
    with RedisServer(password="s3cret") as server:
        bad = RedisStorage(f"redis://:wrong@127.0.0.1:{server.port}", retry_backoff=0.05,
                           retry_backoff_max=1.0)
        before = connections_received(server)
        t = time.monotonic()
        while time.monotonic() - t < 1.2:
            with pytest.raises(RedisConnectionError):
                await bad.execute("PING")
            await asyncio.sleep(0.01)
        # 0.05, 0.1, 0.2, 0.4 s between tries: 5 in 1.2 s (not one per 0.05 s);
        # the redis-cli of connections_received is one more
        assert connections_received(server) - before - 1 <= 6
        await bad.close()


async def test_request_timeout_holds_while_the_connect_timer_is_longer():
    # The kernel completes the handshake of a stopped server; the request's
    # own timeout (0.3 s) must apply, not the connect timeout (10 s).
    with RedisServer() as server:
        s = RedisStorage(server.url, connect_timeout=10, timeout=0.3)
        server.pause()
        try:
            t = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await s.execute("GET", "k")
            assert time.monotonic() - t < 2
        finally:
            server.resume()
        await s.close()


async def test_auth_gets_the_request_timeout_after_the_connect():
    # AUTH is answered within `timeout` of the connect, like any request; it
    # used to be cut off when the connect timer (0.2 s) fired.
    with RedisServer(password="s3cret") as server:
        s = RedisStorage(f"redis://:s3cret@127.0.0.1:{server.port}", connect_timeout=0.2,
                         timeout=1.0)
        server.pause()
        try:
            t = time.monotonic()
            with pytest.raises(RedisTimeoutError, match="no reply within 1000 ms"):
                await s.execute("GET", "k")
            assert 0.9 < time.monotonic() - t < 3
        finally:
            server.resume()
        await asyncio.sleep(0.1)  # the backoff after the timeout (0.05 s)
        assert await s.execute("PING") == "PONG"
        await s.close()


async def test_unix_socket_backlog_full_is_a_connect_failure():
    # connect() on a unix socket answers EAGAIN when the server's backlog is
    # full: that connection failed (it is not in progress, as on TCP).
    import socket

    with RedisServer(extra=["--tcp-backlog", "1"]) as server:
        server.pause()
        fillers = []
        try:
            while True:
                f = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                f.setblocking(False)
                fillers.append(f)
                if f.connect_ex(server.socket) != 0:
                    break
            s = RedisStorage(f"unix://{server.socket}")
            with pytest.raises(RedisConnectionError, match="connect failed"):
                await s.execute("PING")
        finally:
            server.resume()
            for f in fillers:
                f.close()
        await s.close()


def test_set_all_when_its_connection_closes_midway(monkeypatch):
    # set_all sends its items on one connection, kept between items. Here the
    # loop cannot schedule the flush, so the first item is written at once,
    # the write fails (server gone) and the connection is closed and freed:
    # the next items must not use it. The freed memory is scrubbed
    # (PYTHONMALLOC=debug; the ASan run keeps malloc) so a stale use shows.
    monkeypatch.setenv("PYTHONMALLOC", os.environ.get("PYTHONMALLOC", "debug"))
    with RedisServer() as server:
        out = run_python(f"""
            import asyncio, dataclasses, os, signal, time
            import cacheme
            from cacheme.storages.redis import RedisConnectionError, RedisStorage

            class Loop(asyncio.SelectorEventLoop):
                fail_flush = False

                def call_soon(self, callback, *args, context=None):
                    if self.fail_flush and getattr(callback, "__name__", "") == "_on_flush":
                        raise MemoryError("call_soon")
                    return super().call_soon(callback, *args, context=context)

            @dataclasses.dataclass
            class Node(cacheme.Node):
                uid: int

                def key(self):
                    return f"n:{{self.uid}}"

                class Meta(cacheme.Node.Meta):
                    pass

            async def main():
                loop = asyncio.get_running_loop()
                s = RedisStorage("unix://{server.socket}")
                await s.connect()
                os.kill({server.proc.pid}, signal.SIGKILL)
                # gone (its sockets are closed once it is a zombie or reaped),
                # and the loop has not seen it yet: wait without running it
                while True:
                    try:
                        with open("/proc/{server.proc.pid}/stat") as f:
                            if f.read().rsplit(")", 1)[1].split()[0] in "ZX":
                                break
                    except FileNotFoundError:
                        break
                    time.sleep(0.01)
                loop.fail_flush = True
                try:
                    fut = s.set_all([(Node(i), i) for i in range(3)], None, None)
                finally:
                    loop.fail_flush = False
                try:
                    await fut
                except RedisConnectionError as e:
                    print("failed:", e)
                s.close_now()

            loop = Loop()
            loop.run_until_complete(main())
            loop.close()
        """)
    assert "failed:" in out, out


async def test_address_is_looked_up_once_per_pool_and_again_after_a_connect_failure():
    # getaddrinfo blocks the loop: one lookup per server, not one per
    # connection, and another only once a connect to that address failed.
    with RedisServer() as server:
        s = RedisStorage(f"redis://127.0.0.1:{server.port}", pipeline=1, pool_size=4,
                         retry_backoff=0.02, retry_backoff_max=0.05)
        await asyncio.gather(*[s.execute("PING") for _ in range(50)])
        assert s._connections() == 4
        assert s._resolves() == 1
        server.kill()
        for _ in range(20):  # the open connections close, then connects fail
            try:
                await s.execute("PING")
            except RedisConnectionError:
                pass
            await asyncio.sleep(0.03)
        server.start()
        for _ in range(200):
            try:
                if await s.execute("PING") == "PONG":
                    break
            except RedisConnectionError:
                await asyncio.sleep(0.02)
        resolves = s._resolves()
        assert resolves >= 2
        await asyncio.gather(*[s.execute("PING") for _ in range(50)])
        assert s._connections() == 4
        assert s._resolves() == resolves
        await s.close()


# ---------------------------------------------------------------- busy polling


async def test_busy_poll_option(redis_server):
    default = 0.0002 if len(os.sched_getaffinity(0)) > 1 else 0.0
    assert RedisStorage(redis_server.url).busy_poll_info()["busy_poll"] == default
    assert RedisStorage(redis_server.url, busy_poll=0).busy_poll_info()["busy_poll"] == 0.0
    s = RedisStorage(redis_server.url + "?busy_poll=0.001")
    assert s.busy_poll_info()["busy_poll"] == 0.001
    for bad in (-0.001, 0.5, float("nan")):
        with pytest.raises(ValueError, match="busy_poll"):
            RedisStorage(redis_server.url, busy_poll=bad)
    with pytest.raises(TypeError):
        RedisStorage(redis_server.url, busy_poll="fast")


async def test_busy_poll_answers_sequential_gets(redis_server):
    # an idle loop waits for the reply instead of sleeping in epoll_wait;
    # busy_poll=0 never spins; same values either way
    needs_two_cpus()
    for limit, spins in ((0.005, True), (0, False)):
        s = RedisStorage(redis_server.url, busy_poll=limit)
        await s.connect()
        await s.set_all([(K(f"k{i}"), b"%d" % i) for i in range(20)], None, None)
        with count_sleeps() as sleeps:
            for i in range(200):
                got = await s.get(K(f"k{i % 25}"), None)
                assert got == (b"%d" % (i % 25) if i % 25 < 20 else cacheme.models.sentinel)
        info = s.busy_poll_info()
        await s.close()
        if spins and info["busy_poll_timeouts"] == 0:
            assert sleeps[0] <= 40, (sleeps, info)
        elif spins:
            # a loaded machine: a reply took over 5 ms, and the requests
            # after a timed-out spin skip spinning, sleeping in the selector
            # (runs under two CPU burners: 12 timeouts); see assert_spun
            assert_spun(info["busy_poll_hits"], info["busy_poll_timeouts"], (sleeps, info))
        else:
            assert info["busy_poll_hits"] == info["busy_poll_timeouts"] == 0, info
            assert sleeps[0] >= 150, sleeps  # every reply through a sleeping loop


async def test_busy_poll_never_delays_ready_tasks(redis_server):
    s = RedisStorage(redis_server.url, busy_poll=0.005)
    await s.connect()
    await s.execute("SET", "a", "1")

    async def get():
        assert await s.execute("GET", "a") == b"1"

    await spin_skips_ready_tasks(s, get)
    await s.close()


async def test_busy_poll_backs_off_on_a_slow_server(redis_server):
    async def connect(port):
        s = RedisStorage(f"redis://127.0.0.1:{port}", busy_poll=0.0002)
        await s.connect()
        await s.execute("SET", "a", "1")
        return s

    async def get(s):
        assert await s.execute("GET", "a") == b"1"

    await spins_back_off_on_a_slow_server(redis_server.port, connect, get)

async def test_gets_in_a_cycle_are_collected_after_their_redis_calls(redis_server):
    """A Get is out of the collector's lists only while a Redis op or its
    flight holds it: once done, a cycle through it is collected."""
    import weakref

    name = await register_redis(redis_server.url)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
    refs = []
    for uid in (1, 1, 2):  # a miss (GET, load, SET), a hit, a leader with a waiter
        nodes = [Node(uid), Node(uid)] if uid == 2 else [Node(uid)]
        gets = [cacheme.get(n) for n in nodes]
        for g, n in zip(gets, nodes):
            n.cycle = [g, n]  # node -> list -> Get -> node
            refs.append(weakref.ref(n))
        await asyncio.gather(*gets)
        del gets, nodes, g, n
    # a Task keeps what it last awaited until its next step: move ours on
    await asyncio.sleep(0)
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)
    assert calls == [1, 2]
    await storage_of(name).close()


async def test_a_leader_abandoned_in_its_load_after_a_redis_miss_is_collected(redis_server):
    """A leader woken by its GET (a miss) goes on to load, held by nothing
    but its Task: it is back in the collector's lists, so a Task abandoned
    there (its load waits on a future nobody has) is collected whole."""
    import weakref

    name = await register_redis(redis_server.url)
    started = asyncio.Event()

    @dataclasses.dataclass
    class Hang(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"hang:{self.uid}"

        async def load(self):
            started.set()
            await asyncio.get_running_loop().create_future()  # never set

        class Meta(cacheme.Node.Meta):
            pass

    Hang.Meta.caches = [cacheme.Cache(storage=name, ttl=None)]
    Hang.__qualname__ = unique("Hang")
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda loop, ctx: None)  # "Task was destroyed but it is pending"
    try:
        node = Hang(1)
        ref = weakref.ref(node)
        task = asyncio.ensure_future(cacheme.get(node))
        del node
        await asyncio.wait_for(started.wait(), 5)
        assert not task.done()
        del task
        gc.collect()
        assert ref() is None
    finally:
        loop.set_exception_handler(handler)
    await storage_of(name).close()


FLIGHT_LEAK = r'''
import asyncio, dataclasses, sys
import cacheme

url = sys.argv[1]


@dataclasses.dataclass
class N(cacheme.Node):
    uid: int

    def key(self):
        return f"fleak:{self.uid}"

    async def load(self):
        await asyncio.sleep(0)
        return [self.uid]

    class Meta(cacheme.Node.Meta):
        caches = [cacheme.Cache(storage="r", ttl=None)]


async def body(i):
    # a leader and waiters through its GET, load and SET; one of each kind
    # cancelled, every few rounds all of them
    ts = [asyncio.ensure_future(cacheme.get(N(i % 300))) for _ in range(4)]
    await asyncio.sleep(0)
    ts[1].cancel()
    if i % 7 == 0:
        ts[0].cancel()
    if i % 11 == 0:
        for t in ts:
            t.cancel()
    await asyncio.gather(*ts, return_exceptions=True)


async def main():
    await cacheme.register_storage("r", cacheme.Storage(url=url))
    for i in range(2000):
        await body(i)
    before = snapshot()
    for i in range(2000, 2000 + int(sys.argv[2])):
        await body(i)
    after = snapshot()
    print(before[0], after[0], before[1], after[1])

asyncio.run(main())
'''


def test_flights_through_redis_do_not_leak(redis_server):
    """cacheme.get through Redis: leaders whose Get makes its own GET and
    SET, waiters that are their own futures, cancellations of both."""
    code = "import sys; sys.argv[1:] = %r\n" % [redis_server.url, "12000"]
    assert_flat(run_python(code + LEAK_SNAPSHOT + FLIGHT_LEAK), rss_kib=2048)


@pytest.mark.parametrize("busy_poll", [0.0, 0.0002])
def test_get_set_loop_does_not_leak(redis_server, busy_poll):
    from net_leak import check_no_leak

    check_no_leak(redis_server.url, busy_poll, "")


# ---------------------------------------------------------------- GC of the C records


def connections_of(storage):
    return [o for o in gc.get_referents(storage) if type(o).__name__ == "_RedisConnection"]


async def test_gc_sees_a_pending_op_through_its_connection(redis_server):
    s = RedisStorage(redis_server.url, busy_poll=0)
    await s.execute("PING")
    fut = s.execute("PING")  # in the connection's ring until its reply is read
    (conn,) = connections_of(s)
    refs = gc.get_referents(conn)
    assert any(r is fut for r in refs) and any(r is s for r in refs)
    assert await fut == "PONG"
    assert not any(r is fut for r in gc.get_referents(conn))
    await s.close()
    assert connections_of(s) == []


def test_gc_collects_a_cycle_through_a_pending_entry(redis_server):
    # storage -> pool -> connection -> pending entry -> op -> future ->
    # done-callback -> storage: once the loop is closed, only the traverse of
    # the pool and the ring can show the collector it is garbage
    loop = asyncio.new_event_loop()

    async def start():
        s = RedisStorage(redis_server.url, busy_poll=0)
        await s.execute("PING")
        fut = s.execute("PING")  # sent at the next iteration, its reply never read
        fut.add_done_callback(lambda f, s=s: None)
        return weakref.ref(s), weakref.ref(fut)

    gc.collect()
    fds = fd_count()
    ref, fref = loop.run_until_complete(start())
    loop.close()
    del loop
    gc.collect()
    assert ref() is None and fref() is None
    assert fd_count() <= fds
