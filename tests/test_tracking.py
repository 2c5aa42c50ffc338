"""Redis pub/sub subscriber connection and client-side tracking
(Storage(url, tracking=True)) against a real redis-server."""
import asyncio

import pytest

from cacheme.storages.redis import RedisStorage
from conftest import unique, wait_for
from redis_servers import (  # noqa: F401  (fixtures)
    RedisServer,
    _redis_session_server,
    needs_redis,
    redis_cluster,
    redis_server,
)

pytestmark = needs_redis


def client_ids(server, name_part: str = "") -> list:
    """ids of the server's pub/sub clients (the subscriber connections)."""
    ids = []
    for line in server.cli("CLIENT", "LIST").splitlines():
        f = dict(kv.split("=", 1) for kv in line.split(" ") if "=" in kv)
        if int(f.get("sub", "0")) > 0:
            ids.append(int(f["id"]))
    return ids


async def test_subscriber_keepalive_notices_a_silent_server(redis_server):
    """A server that stops answering (SIGSTOP: no reset, no close) is noticed
    by the subscriber's PING within `timeout`: lost, then up again once the
    server answers."""
    s = RedisStorage(redis_server.url, timeout=0.2, retry_backoff=0.01, retry_backoff_max=0.05)
    log = s._sub_listen(unique("chan").encode())
    await wait_for(lambda: any(e[0] == "up" for e in log), "subscriber up")
    redis_server.pause()
    try:
        await wait_for(lambda: ("lost", 0) in log, "silence noticed")
    finally:
        redis_server.resume()
    await wait_for(lambda: len([e for e in log if e[0] == "up"]) == 2, "up again")
    s.close_now()


async def test_subscriber_messages_reconnect_and_unsubscribe_state(redis_server):
    s = RedisStorage(redis_server.url, retry_backoff=0.01, retry_backoff_max=0.05)
    chan = unique("chan").encode()
    log = s._sub_listen(chan)
    await wait_for(lambda: any(e[0] == "up" for e in log), "subscriber up")
    up_id = [e for e in log if e[0] == "up"][0][1]
    assert up_id in client_ids(redis_server)
    # subscribed: a PUBLISH reaches the callback
    await wait_for(lambda: redis_server.cli("PUBLISH", chan.decode(), "hello") == "1",
                   "one subscriber on the channel")
    await wait_for(lambda: ("message", b"hello") in log, "message delivered")
    # a second channel subscribed later on the same connection
    chan2 = unique("chan").encode()
    assert s._sub_listen(chan2) is log
    await wait_for(lambda: redis_server.cli("PUBLISH", chan2.decode(), "two") == "1",
                   "subscribed to the second channel")
    await wait_for(lambda: ("message", b"two") in log, "second channel delivered")
    # killed by the server: lost, then back with a new id and both channels
    redis_server.cli("CLIENT", "KILL", "ID", str(up_id))
    await wait_for(lambda: ("lost", 0) in log, "lost reported")
    await wait_for(lambda: [e for e in log if e[0] == "up"][-1][1] != up_id
                   and len([e for e in log if e[0] == "up"]) == 2, "up again")
    new_id = [e for e in log if e[0] == "up"][-1][1]
    assert new_id in client_ids(redis_server) and up_id not in client_ids(redis_server)
    for c, payload in ((chan, "again"), (chan2, "again2")):
        await wait_for(lambda: redis_server.cli("PUBLISH", c.decode(), payload) == "1",
                       "re-subscribed after reconnect")
        await wait_for(lambda: ("message", payload.encode()) in log, "delivered after reconnect")
    s.close_now()
    await wait_for(lambda: new_id not in client_ids(redis_server), "closed with the storage")


async def test_subscriber_tells_when_a_subscription_is_in_place(redis_server):
    """A channel's listener is told once its SUBSCRIBE is confirmed (from
    then on a PUBLISH reaches it), not before; a second listener of a
    channel in place is told at once."""
    s = RedisStorage(redis_server.url)
    chan, chan2 = unique("chan").encode(), unique("chan").encode()
    log = s._sub_listen(chan)
    await wait_for(lambda: ("subscribed", chan) in log, "first channel in place")
    assert s._sub_hold(True) == 0
    s._sub_listen(chan2)
    assert s._sub_hold(True) == 1  # its SUBSCRIBE held back, unsent
    assert redis_server.cli("PUBLISH", chan2.decode(), "early") == "0"
    assert ("subscribed", chan2) not in log
    assert s._sub_hold(False) == 1
    await wait_for(lambda: ("subscribed", chan2) in log, "second channel in place")
    assert redis_server.cli("PUBLISH", chan2.decode(), "late") == "1"
    await wait_for(lambda: ("message", b"late") in log, "delivered")
    s._sub_listen(chan)
    assert log.count(("subscribed", chan)) == 2
    s.close_now()


# ------------------------------------------------------------ processes

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class Worker:
    """A process of its own (tests/tracking_worker.py) with caches [local,
    redis]: the other end of the coherence tests."""

    def __init__(self, url, prefix, source, tracking=True, local_ttl=None, redis_ttl=None,
                 cluster=False):
        argv = [sys.executable, os.path.join(HERE, "tracking_worker.py"), url, prefix, source,
                "1" if tracking else "0"]
        if local_ttl is not None or redis_ttl is not None:
            argv += [str(local_ttl or 3600), str(redis_ttl or 3600)]
        env = dict(os.environ, TRACKING_CLUSTER="1" if cluster else "0")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=HERE, env=env)

    def __call__(self, *cmd):
        self.proc.stdin.write(" ".join(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"worker died on {cmd}: rc={self.proc.wait(10)}"
        return json.loads(line)

    def wait(self, cond, what, timeout=10.0):
        """Ask until cond(self) holds (a bound on the wait for an event that
        must happen, not a timing assertion)."""
        end = time.monotonic() + timeout
        while not cond(self):
            if time.monotonic() > end:
                raise AssertionError(f"never happened: {what}")
            time.sleep(0.002)

    def wait_up(self, source):
        put(source, "warmup", "w")
        self("get", "warmup")  # the first request starts tracking
        self.wait(lambda w: w("info")["up"] >= 1, "tracking up")

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def source():
    with tempfile.TemporaryDirectory(prefix="cacheme-track-") as d:
        yield d


def put(source, k, v):
    with open(os.path.join(source, k), "w") as f:
        f.write(v)


@pytest.fixture
def workers(redis_server, source):
    made = []

    def make(**kw):
        w = Worker(kw.pop("url", redis_server.url), kw.pop("prefix", PREFIX), source, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


PREFIX = unique("trk")


def full(k):
    return f"{PREFIX}:tracked:{k}:v1"


def cached(w, k):
    """w gets k until its local tier holds it, and returns it. A miss's own
    fill of Redis echoes back (BCAST tracking tells every registrant of
    every write, the writer's process too) and evicts the copy just filled;
    the next get is a Redis hit that stays."""
    got = []

    def holds(w):
        got.append(w("get", k))
        return w("local", k) == got[-1]

    w.wait(holds, f"{k} cached locally")
    assert len(set(got)) == 1, got  # never another value on the way
    return got[-1]


@pytest.fixture
def pair(workers, source):
    """Two tracking processes, tracking up in both, and k = v1 cached in B."""
    a, b = workers(), workers()
    a.wait_up(source)
    b.wait_up(source)
    put(source, "k", "v1")
    assert cached(b, "k") == "v1"
    return a, b


def test_other_process_refresh_invalidate_and_raw_writes_evict(pair, source, redis_server):
    a, b = pair
    assert a("get", "k") == "v1" and a("local", "k") == "v1"  # a Redis hit: no echo
    # A refreshes: Redis gets v2, B's local copy goes
    put(source, "k", "v2")
    a("refresh", "k")
    b.wait(lambda w: w("local", "k") is None, "B's copy evicted after A's refresh")
    assert cached(b, "k") == "v2"
    # A invalidates: DEL, then B loads the source again
    put(source, "k", "v3")
    a("invalidate", "k")
    b.wait(lambda w: w("local", "k") is None, "B's copy evicted after A's invalidate")
    assert cached(b, "k") == "v3"
    # any other client: SET and DEL by redis-cli
    redis_server.cli("DEL", full("k"))
    b.wait(lambda w: w("local", "k") is None, "evicted after a raw DEL")
    assert cached(b, "k") == "v3"
    redis_server.cli("SET", full("k"), "garbage")
    b.wait(lambda w: w("local", "k") is None, "evicted after a raw SET")
    info = b("info")
    assert info["invalidated_keys"] >= 4 and info["covered_stores"] == 1


def test_tracking_off_keeps_local_copy(workers, source):
    a, b = workers(), workers(tracking=False)
    a.wait_up(source)
    put(source, "k", "v1")
    assert b("get", "k") == "v1"
    put(source, "k", "v2")
    a("refresh", "k")
    a("get", "k")
    # B is told nothing: its local copy is served until its TTL, as before
    assert b("local", "k") == "v1" and b("get", "k") == "v1"
    assert b("info") == {"up": 0, "invalidated_keys": 0, "flushes": 0, "subscriber_ids": [],
                         "covered_stores": 0, "subscriber_visits": 0}


def test_flushall_flushes_local(workers, source, redis_server):
    b = workers()
    b.wait_up(source)
    for k in ("x", "y"):
        put(source, k, k + "1")
        assert cached(b, k) == k + "1"
    flushes = b("info")["flushes"]
    redis_server.cli("FLUSHALL")
    b.wait(lambda w: w("local", "x") is None and w("local", "y") is None, "flushed")
    assert b("info")["flushes"] > flushes
    put(source, "x", "x2")
    assert b("get", "x") == "x2"


def test_subscriber_killed_flushes_then_resumes(pair, source, redis_server):
    a, b = pair
    old = b("info")["subscriber_ids"]
    assert len(old) == 1
    redis_server.cli("CLIENT", "KILL", "ID", str(old[0]))
    # lost: everything covered flushed; then back with a new connection
    b.wait(lambda w: w("local", "k") is None, "flushed on lost")
    b.wait(lambda w: w("info")["subscriber_ids"] not in ([], old), "reconnected")
    assert b("get", "k") == "v1" and b("local", "k") == "v1"
    put(source, "k", "v2")
    a("refresh", "k")
    b.wait(lambda w: w("local", "k") is None, "invalidations heard again")
    assert b("get", "k") == "v2"


async def tracked_node(url, name, load):
    """A local and a tracking Redis storage registered, and a node class on
    them (key "<name>:<k>", caches [local, redis], its load `await
    load(k)`), tracking up. Returns (class, redis storage, local storage)."""
    import cacheme

    local, redis = unique("local"), unique("redis")
    await cacheme.register_storage(local, cacheme.Storage(url="local://lru", size=100))
    await cacheme.register_storage(redis, cacheme.Storage(url=url, tracking=True))

    class TrackedNode(cacheme.Node):
        def __init__(self, k):
            self.k = k

        def key(self):
            return f"{name}:{self.k}"

        async def load(self):
            return await load(self.k)

        class Meta(cacheme.Node.Meta):
            caches = [cacheme.Cache(storage=local, ttl=None), cacheme.Cache(storage=redis, ttl=None)]

    st = cacheme.data.get_storage_by_name(redis)._storage
    lst = cacheme.data.get_storage_by_name(local)
    await cacheme.get(TrackedNode("warm"))  # starts tracking
    await wait_for(lambda: st._tracking_info()["up"] == 1, "tracking up")
    return TrackedNode, st, lst


async def test_reply_after_invalidation_is_not_cached(redis_server):
    """The read/invalidate race: a GET answered with the old value, whose
    reply is read after the invalidation of its key, must not fill the
    local tier. Sockets do not let a test choose which of the two the loop
    reads first, so the invalidation is handed over (_tracking_inject) while
    the GET is in flight."""
    import cacheme

    loads = []

    async def load(k):
        loads.append(k)
        return "v1"

    RaceNode, st, lst = await tracked_node(redis_server.url, "race", load)
    assert await cacheme.get(RaceNode("a")) == "v1"
    # the echo of our own fill evicts our copy: next get is a Redis hit
    key = cacheme._core.full_key(RaceNode("a"))
    await wait_for(lambda: key not in lst._local, "own fill echoed")
    task = asyncio.ensure_future(cacheme.get(RaceNode("a")))
    await asyncio.sleep(0)  # the task sent its GET; its reply is not read yet
    assert not task.done()
    st._tracking_inject([cacheme._core.full_key(RaceNode("a")).encode()])
    assert await task == "v1"  # read before the write: a right answer
    assert await lst.get(RaceNode("a"), None) is cacheme.models.sentinel
    # without a race it is cached as usual
    assert await cacheme.get(RaceNode("a")) == "v1"
    assert await lst.get(RaceNode("a"), None) == "v1"
    assert loads == ["warm", "a"]


async def test_get_all_joining_an_unsure_load_fills_no_local_tier(redis_server):
    """get_all joins a get's load in flight; the load is made unsure
    (tracking lost: a flush handed over with _tracking_inject) before it
    ends. Neither the get leading it nor the get_all that joined it fills
    the local tier with its value; Redis is filled as usual."""
    import cacheme

    gate = asyncio.Event()
    loads = []

    async def load(k):
        loads.append(k)
        if k != "warm":
            await gate.wait()
        return "v1"

    JoinNode, st, lst = await tracked_node(redis_server.url, "join", load)
    one = asyncio.ensure_future(cacheme.get(JoinNode("a")))
    await wait_for(lambda: loads == ["warm", "a"], "the get's load started")
    many = asyncio.ensure_future(cacheme.get_all([JoinNode("a")]))
    await asyncio.sleep(0)  # get_all joined the flight
    st._tracking_inject(None)  # invalidations lost: the load is unsure
    gate.set()
    key = cacheme._core.full_key(JoinNode("a"))
    # the get_all ends as the flight settles, before the get fills Redis
    # (whose echo would evict a copy): looked at before anything else runs
    assert await many == ["v1"] and key not in lst._local
    assert await one == "v1"
    assert loads == ["warm", "a"]
    # a read not made unsure is cached as usual (once the echo of the fill
    # of Redis above, which evicts, has come)
    for _ in range(2000):
        assert await cacheme.get_all([JoinNode("a")]) == ["v1"]
        if await lst.get(JoinNode("a"), None) == "v1":
            break
        await asyncio.sleep(0.005)
    assert await lst.get(JoinNode("a"), None) == "v1"
    st.close_now()


async def test_set_prefix_after_first_use_tracks_the_new_prefix(redis_server):
    """set_prefix after tracking started: the new keys are watched (the
    subscriber registers the new prefix), so a write by another client to a
    key under it evicts the local copy."""
    import cacheme

    old = cacheme._core.get_prefix()

    async def load(k):
        return "v1"

    PrefixNode, st, lst = await tracked_node(redis_server.url, "prefix", load)
    cacheme.set_prefix(unique("pfx"))
    try:
        key = cacheme._core.full_key(PrefixNode("a"))
        assert not key.startswith(old + ":")
        for _ in range(2000):  # until a read stays cached (past the echo)
            assert await cacheme.get(PrefixNode("a")) == "v1"
            if key in lst._local:
                break
            await asyncio.sleep(0.005)
        assert key in lst._local
        await st.execute("SET", key, "garbage")
        await wait_for(lambda: key not in lst._local, "evicted under the new prefix")
    finally:
        cacheme.set_prefix(old)
        st.close_now()


def test_cluster_tracking_per_node(redis_cluster, workers, source):
    """Each master has its own subscriber and registration: keys on every
    node are evicted in B when A refreshes them."""
    a = workers(url=redis_cluster.url, cluster=True)
    b = workers(url=redis_cluster.url, cluster=True)
    keys = [f"c{i}" for i in range(12)]  # spread over the three masters
    for k in keys:
        put(source, k, "old")
    a.wait_up(source)
    b.wait_up(source)
    for k in keys:  # every node's tracking starts with its first request
        b("get", k)
    b.wait(lambda w: w("info")["up"] == 3, "a subscriber up on each master")
    for k in keys:
        assert cached(b, k) == "old"
    for k in keys:
        put(source, k, "new")
        a("refresh", k)
    for k in keys:
        b.wait(lambda w: w("local", k) is None, f"{k} evicted")
        assert cached(b, k) == "new"
    assert len(b("info")["subscriber_ids"]) == 3


def test_local_ttl_capped_by_redis_ttl(source):
    """Redis may expire a key without a word (lazy expiry, here with active
    expiry off): a covered local copy never outlives the Redis TTL, even
    when its own TTL is longer; without tracking it does."""
    with RedisServer(extra=["--enable-debug-command", "yes"]) as srv:
        srv.cli("DEBUG", "SET-ACTIVE-EXPIRE", "0")
        on = Worker(srv.url, PREFIX, source, local_ttl=3600, redis_ttl=1)
        off = Worker(srv.url, PREFIX + "off", source, tracking=False, local_ttl=3600,
                     redis_ttl=1)
        try:
            on.wait_up(source)
            put(source, "k", "v1")
            assert cached(on, "k") == "v1"
            assert off("get", "k") == "v1" and off("local", "k") == "v1"
            heard = on("info")["invalidated_keys"]
            time.sleep(1.2)  # past the Redis TTL: not a timing assertion
            assert on("local", "k") is None
            assert off("local", "k") == "v1"  # its local TTL (an hour) rules
            assert on("info")["invalidated_keys"] == heard  # Redis said nothing
        finally:
            on.close()
            off.close()


def test_forked_child_tracks_on_its_own_subscriber(redis_server):
    """A worker forked after the app used its tracking storage: the child's
    inherited subscriber is let go (its fd to /dev/null, the parent's socket
    untouched), the child registers a subscriber of its own, and hears
    invalidations on it."""
    from conftest import run_python

    out = run_python(f"""
        import asyncio, os, sys
        import cacheme
        from cacheme import _core

        class N(cacheme.Node):
            def __init__(self, k):
                self.k = k
            def key(self):
                return "fork:" + self.k
            async def load(self):
                return "v-" + str(os.getpid())
            class Meta(cacheme.Node.Meta):
                caches = [cacheme.Cache(storage="l", ttl=None), cacheme.Cache(storage="r", ttl=None)]

        async def until(cond):
            for _ in range(5000):
                if cond():
                    return
                await asyncio.sleep(0.002)
            raise SystemExit("never happened")

        async def setup():
            await cacheme.register_storage("l", cacheme.Storage(url="local://lru", size=100))
            await cacheme.register_storage(
                "r", cacheme.Storage(url="{redis_server.url}", tracking=True))
            r = cacheme.data.get_storage_by_name("r")._storage
            await cacheme.get(N("warm"))
            await until(lambda: r._tracking_info()["up"] == 1)
            return r, r._tracking_info()["subscriber_ids"]

        r, parent_ids = asyncio.run(setup())
        pid = os.fork()
        if pid == 0:
            async def child():
                await cacheme.get(N("warm2"))  # starts the child's own tracking
                await until(lambda: r._tracking_info()["up"] == 1)
                ids = r._tracking_info()["subscriber_ids"]
                assert ids and ids != parent_ids, (ids, parent_ids)
                # a miss fills the local tier and Redis, whose echo evicts the
                # local copy; then a Redis hit caches locally, and a raw DEL
                # evicts it
                store = cacheme.data.get_storage_by_name("l")._local
                key = _core.full_key(N("a"))
                await cacheme.get(N("a"))
                await until(lambda: key not in store)
                assert await cacheme.get(N("a")) == "v-" + str(os.getpid())
                assert key in store
                await r.execute("DEL", key)
                await until(lambda: key not in store)
            try:
                asyncio.run(child())
            except BaseException as e:
                print("child failed:", repr(e), flush=True)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), flush=True)
        # no interpreter finalization: a RedisStorage still referenced then
        # is deallocated after the module state is freed (a use after free
        # under ASan, with or without tracking: not this test's subject)
        os._exit(0)
    """)
    assert "child 0" in out, out


async def test_server_refusing_tracking_serves_values_without_local_fills(caplog):
    """A server that refuses the subscriber's setup (here CLIENT renamed
    away; Redis 5 would refuse CLIENT TRACKING alike): gets still answer
    from Redis and the load, nothing is cached locally (no invalidation
    would reach it), and the refusal is logged."""
    import logging

    import cacheme

    with RedisServer(extra=["--rename-command", "CLIENT", ""]) as srv:
        local, redis = unique("local"), unique("redis")
        await cacheme.register_storage(local, cacheme.Storage(url="local://lru", size=100))
        await cacheme.register_storage(
            redis, cacheme.Storage(url=srv.url, tracking=True, retry_backoff=0.01,
                                   retry_backoff_max=0.05))
        loads = []

        class RefusedNode(cacheme.Node):
            def __init__(self, k):
                self.k = k

            def key(self):
                return f"refused:{self.k}"

            async def load(self):
                loads.append(self.k)
                return "v"

            class Meta(cacheme.Node.Meta):
                caches = [cacheme.Cache(storage=local, ttl=None),
                          cacheme.Cache(storage=redis, ttl=None)]

        lst = cacheme.data.get_storage_by_name(local)
        st = cacheme.data.get_storage_by_name(redis)._storage
        with caplog.at_level(logging.WARNING, logger="cacheme"):
            for _ in range(3):
                assert await cacheme.get(RefusedNode("a")) == "v"
            await wait_for(lambda: "subscriber connection refused" in caplog.text, "logged")
            assert await cacheme.get(RefusedNode("a")) == "v"
        assert loads == ["a"]  # Redis still serves it
        assert await lst.get(RefusedNode("a"), None) is cacheme.models.sentinel
        assert st._tracking_info()["up"] == 0
        st.close_now()
