"""The MongoDB storage (cacheme.storages.mongo, csrc/mongo/) against mongoeco
servers speaking MongoDB's wire protocol (tests/mongo_servers.py), with
pymongo reading back what it wrote, and against little fake servers of the
test's own for replies no real server sends (hostile, not the primary)."""
import asyncio
import os
import struct
import sys
import time
from datetime import timedelta

import pytest

import cacheme
from cacheme import _core
from cacheme.models import sentinel
from cacheme.serializer import MsgPackSerializer, PickleSerializer
from conftest import LEAK_SNAPSHOT, assert_flat, make_user_node, run_python, unique
from mongo_servers import (  # noqa: F401 (fixtures)
    mongo_auth_server,
    mongo_server,
    mongo_server_factory,
    pymongo_call,
    wait_until,
)
from sql_servers import free_port

mongo = pytest.importorskip("cacheme.storages.mongo")
if not mongo._AVAILABLE:  # pragma: no cover - a build without libbson
    pytest.skip("cacheme built without libbson", allow_module_level=True)

DB = "test"


class K:
    """A bare node: just a full key."""

    def __init__(self, key):
        self.k = key

    def full_key(self):
        return self.k


def new_storage(url, coll=None, **options):
    coll = coll or unique("cm_m")
    return cacheme.Storage(url=url, database=DB, collection=coll, **options), coll


async def register(url, **options):
    name = unique("mongo-")
    s, coll = new_storage(url, **options)
    await cacheme.register_storage(name, s)
    return name, coll


def storage_of(name):
    return cacheme.data.get_storage_by_name(name)._storage


def docs(url, coll):
    return {d["key"]["value"]: d for d in pymongo_call(url, DB, coll, "find", {})}


async def in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def until_answered(call, expected, errors=None):
    """Retries call() through backoff until it returns (setup/recovery
    helper; never a timed assertion)."""
    errors = errors or (mongo.MongoConnectionError, mongo.MongoTimeoutError)
    for _ in range(200):
        try:
            got = await asyncio.wait_for(call(), 20)
        except errors:
            await asyncio.sleep(0.05)
            continue
        assert got == expected or got is expected
        return
    raise AssertionError("no answer")


# ---------------------------------------------------------------- basics


async def test_set_get_remove_in_030_layout(mongo_server):
    s, coll = new_storage(mongo_server.url)
    await s.connect()
    st = s._storage
    ser = PickleSerializer()
    t0 = int(time.time() * 1000)
    assert await st.set(K("a"), {"x": [1, 2]}, None, ser) is None
    await st.set(K("t"), "ttl", timedelta(seconds=100), ser)
    assert await st.get(K("a"), ser) == {"x": [1, 2]}
    assert await st.get(K("t"), ser) == "ttl"
    assert await st.get(K("nope"), ser) is sentinel
    got = await in_thread(docs, mongo_server.url, coll)
    assert set(got) == {"a", "t"}
    a, t = got["a"], got["t"]
    assert set(a) == {"_id", "key", "value", "updated_at", "expire"}
    # the value is serializer.dumps(v) itself (0.3.0's MongoStorage), binary subtype 0
    assert a["value"]["type"] == "binData" and a["value"]["subtype"] == 0
    assert bytes.fromhex(a["value"]["hex"]) == ser.dumps({"x": [1, 2]})
    assert a["expire"] == {"type": "null"}
    assert a["updated_at"]["type"] == "date" and a["updated_at"]["ms"] >= t0 - 1000
    assert t["expire"]["type"] == "date"
    assert 99_000 <= t["expire"]["ms"] - t["updated_at"]["ms"] <= 100_000
    # an upsert overwrites the one document of its key
    await st.set(K("a"), 5, None, ser)
    assert await st.get(K("a"), ser) == 5
    assert len(await in_thread(docs, mongo_server.url, coll)) == 2
    await st.remove(K("a"))
    assert await st.get(K("a"), ser) is sentinel
    assert set(await in_thread(docs, mongo_server.url, coll)) == {"t"}
    await s.close()


async def test_connect_creates_the_indexes_of_mongo_js(mongo_server):
    s, coll = new_storage(mongo_server.url)
    await s.connect()
    await s.connect()  # existing indexes are fine
    reply = await in_thread(pymongo_call, mongo_server.url, DB, coll, "command",
                            {"listIndexes": coll})
    ix = {i["name"]: i for i in reply["cursor"]["firstBatch"]}
    assert ix["key_1"]["key"] == {"key": 1} and ix["key_1"]["unique"] is True
    assert ix["expire_1"]["key"] == {"expire": 1}
    await s.close()


async def test_get_all_set_all(mongo_server):
    s, coll = new_storage(mongo_server.url)
    st = s._storage
    ser = MsgPackSerializer()
    data = [(K(f"k{i}"), {"i": i}) for i in range(150)]
    data.append((K("k3"), {"i": "last"}))  # the same key twice: the last value wins
    await st.set_all(data, timedelta(hours=1), ser)
    assert await st.set_all([], None, ser) is None
    nodes = [K(f"k{i}") for i in range(160)]
    got = await st.get_all(nodes, ser)
    assert [n.k for n, _ in got] == [f"k{i}" for i in range(150)]
    assert dict((n.k, v) for n, v in got)["k3"] == {"i": "last"}
    assert dict((n.k, v) for n, v in got)["k100"] == {"i": 100}
    assert await st.get_all([], ser) == []
    assert len(await in_thread(docs, mongo_server.url, coll)) == 150


async def test_get_all_set_all_refuse_bad_input_before_sending(mongo_server):
    """A batch with an item that is not a (node, value) pair, a key the
    storage cannot hold or a value it cannot store raises a clear error at
    the call, and sends nothing: no document of the batch is written."""
    s, coll = new_storage(mongo_server.url)
    st = s._storage
    bad = K("bad\ud800")  # a lone surrogate: not UTF-8
    with pytest.raises(TypeError, match=r"set_all: data must be a sequence of \(node, value\)"):
        st.set_all([(K("a"), b"1"), "not a pair"], None, None)
    with pytest.raises(_core.StorageKeyError, match="lone surrogate"):
        st.set_all([(K("b"), b"2"), (bad, b"3")], None, None)
    with pytest.raises(TypeError, match="only bytes"):
        st.set_all([(K("c"), b"4"), (K("d"), {"not": "bytes"})], None, None)
    with pytest.raises(_core.StorageKeyError, match="lone surrogate"):
        st.get_all([K("a"), bad], None)
    with pytest.raises(TypeError):
        st.get_all(5, None)
    assert await st.get_all([K(k) for k in "abcd"], None) == []
    assert await in_thread(docs, mongo_server.url, coll) == {}


async def test_without_serializer_bytes_only(mongo_server):
    s, _ = new_storage(mongo_server.url)
    st = s._storage
    await st.set(K("raw"), b"\x00\xffbytes", None, None)
    assert await st.get(K("raw"), None) == b"\x00\xffbytes"
    with pytest.raises(TypeError, match="only bytes"):
        await st.set(K("raw"), {"not": "bytes"}, None, None)


async def test_expired_documents_are_misses(mongo_server):
    s, coll = new_storage(mongo_server.url)
    st = s._storage
    ser = PickleSerializer()
    now = int(time.time() * 1000)

    def doc(key, expire):
        return {"key": {"type": "string", "value": key},
                "value": {"type": "binData", "hex": ser.dumps(key).hex()},
                "updated_at": {"type": "date", "ms": now},
                "expire": expire}

    await in_thread(pymongo_call, mongo_server.url, DB, coll, "insert", [
        doc("past", {"type": "date", "ms": now - 60_000}),
        doc("future", {"type": "date", "ms": now + 3_600_000}),
        doc("never", {"type": "null"}),
    ])
    assert await st.get(K("past"), ser) is sentinel
    assert await st.get(K("future"), ser) == "future"
    assert await st.get(K("never"), ser) == "never"
    got = await st.get_all([K("past"), K("future"), K("never")], ser)
    assert sorted(n.k for n, _ in got) == ["future", "never"]


@pytest.mark.parametrize("ttl,exc,msg", [
    (timedelta(0), ValueError, "ttl must be positive"),
    (-1.5, ValueError, "ttl must be positive"),
    (float("nan"), ValueError, "ttl must be positive"),
    (True, TypeError, "not bool"),
    ("10", TypeError, "not str"),
])
async def test_ttl_rule_is_core_ttl(mongo_server, ttl, exc, msg):
    s, coll = new_storage(mongo_server.url)
    st = s._storage
    with pytest.raises(exc, match=msg):
        await st.set(K("x"), b"v", ttl, None)
    with pytest.raises(exc, match=msg):
        await st.set_all([(K("x"), b"v")], ttl, None)
    assert await st.get(K("x"), None) is sentinel


async def test_ttl_numbers_and_a_hundred_years(mongo_server):
    s, coll = new_storage(mongo_server.url)
    st = s._storage
    await st.set(K("n"), b"v", 1.5, None)  # seconds as a number
    await st.set(K("huge"), b"v", timedelta(days=10**8), None)
    assert await st.get(K("huge"), None) == b"v"
    got = await in_thread(docs, mongo_server.url, coll)
    n, huge = got["n"], got["huge"]
    assert n["expire"]["ms"] - n["updated_at"]["ms"] == 1500
    assert huge["expire"]["ms"] - huge["updated_at"]["ms"] == 100 * 366 * 86400 * 1000


async def test_through_cacheme_with_local_and_mongo(mongo_server):
    name, coll = await register(mongo_server.url)
    local = unique("local")
    await cacheme.register_storage(local, cacheme.Storage(url="local://lru", size=100))
    Node, calls = make_user_node([cacheme.Cache(storage=local, ttl=None),
                             cacheme.Cache(storage=name, ttl=timedelta(hours=1))])
    assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
    assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
    assert calls == [1]
    got = await in_thread(docs, mongo_server.url, coll)
    assert list(got) == ["cacheme:user:1:v1"]
    # another class over the same collection only: served by MongoDB
    Node2, calls2 = make_user_node([cacheme.Cache(storage=name, ttl=None)])
    Node2.__qualname__ = Node.__qualname__
    assert await cacheme.get(Node2(1)) == {"uid": 1, "name": "u1"}
    assert calls2 == []
    # get_all: one find for the batch, one load_all for the misses
    got = await cacheme.get_all([Node(i) for i in range(1, 6)])
    assert [g["uid"] for g in got] == [1, 2, 3, 4, 5]
    assert calls == [1, 2, 3, 4, 5]
    await cacheme.invalidate(Node(2))
    assert "cacheme:user:2:v1" not in await in_thread(docs, mongo_server.url, coll)


async def test_memoize(mongo_server):
    name, _ = await register(mongo_server.url)
    Node, _ = make_user_node([cacheme.Cache(storage=name, ttl=None)])
    calls = []

    @cacheme.Memoize(Node)
    async def fetch(uid: int):
        calls.append(uid)
        return {"uid": uid, "memo": True}

    @fetch.to_node
    def _(uid: int) -> Node:
        return Node(uid)

    assert await fetch(7) == {"uid": 7, "memo": True}
    assert await fetch(7) == {"uid": 7, "memo": True}
    assert calls == [7]


async def test_singleflight_and_200_concurrent_gets(mongo_server):
    name, _ = await register(mongo_server.url, pool_size=4)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
    got = await asyncio.gather(*[cacheme.get(Node(i % 5)) for i in range(200)])
    assert [g["uid"] for g in got] == [i % 5 for i in range(200)]
    assert sorted(calls) == [0, 1, 2, 3, 4]
    st = storage_of(name)
    await st.set_all([(K(f"c{i}"), str(i).encode()) for i in range(150)], None, None)
    got = await asyncio.gather(*[st.get(K(f"c{i % 180}"), None) for i in range(200)])
    for i, v in enumerate(got):
        assert v == (str(i % 180).encode() if i % 180 < 150 else sentinel)
    info = st.pool_info()
    assert info["ready"] + info["connecting"] <= 4 and info["pending"] == 0


async def test_flights_read_and_fill_through_the_remote_interface(mongo_server):
    """A flight's read and fill are requests whose future is a small object
    of the flight's (no asyncio Future, no FlightProxy): out while the
    flights wait, gone after; a leader cancelled while another waits leaves
    it the value."""
    name, coll = await register(mongo_server.url, pool_size=2)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
    wait = _core._MongoFlightWait
    base = sys.getrefcount(wait)
    want = [{"uid": i, "name": f"u{i}"} for i in range(30)]
    tasks = [asyncio.ensure_future(cacheme.get(Node(i))) for i in range(30)]
    await asyncio.sleep(0)
    out = sys.getrefcount(wait) - base
    assert await asyncio.gather(*tasks) == want
    assert out >= 30
    assert await asyncio.gather(*[cacheme.get(Node(i)) for i in range(30)]) == want
    assert sorted(calls) == list(range(30))

    leader = asyncio.ensure_future(cacheme.get(Node(100)))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(cacheme.get(Node(100)))
    await asyncio.sleep(0)
    leader.cancel()
    assert await waiter == {"uid": 100, "name": "u100"}
    try:
        assert await leader == {"uid": 100, "name": "u100"}
    except asyncio.CancelledError:
        pass
    wait_until_async = 0
    while sys.getrefcount(wait) != base and wait_until_async < 200:  # the fill may be out
        wait_until_async += 1
        await asyncio.sleep(0.02)
    assert sys.getrefcount(wait) == base
    assert "cacheme:user:100:v1" in await in_thread(docs, mongo_server.url, coll)


async def test_flights_call_a_get_or_set_set_on_the_instance(mongo_server):
    """A storage whose get/set are replaced on the instance is called
    through them, not past them."""
    name, _ = await register(mongo_server.url)
    s = storage_of(name)
    seen = []
    get, set_ = s.get, s.set
    s.get = lambda node, ser: seen.append("get") or get(node, ser)
    s.set = lambda node, value, ttl, ser: seen.append("set") or set_(node, value, ttl, ser)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
    assert await cacheme.get(Node(1)) == {"uid": 1, "name": "u1"}
    assert seen == ["get", "set"] and calls == [1]


async def test_flight_fill_refused_while_queued_is_told_after(mongo_server):
    """A fill that fails while it is being queued (a value larger than a
    message may be) is logged and counted, never raised, and the flight
    still gets its value."""
    name, coll = await register(mongo_server.url)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)], serializer=None)

    async def big(node):
        return b"x" * (49 * 1000 * 1000)

    assert len(await cacheme.get(Node(1), load_fn=big)) == 49 * 1000 * 1000
    assert await in_thread(docs, mongo_server.url, coll) == {}


def test_storage_follows_a_new_loop(mongo_server):
    s, _ = new_storage(mongo_server.url)

    async def once(i):
        await s._storage.set(K("a"), str(i).encode(), None, None)
        return await s._storage.get(K("a"), None)

    for i in range(3):
        assert asyncio.run(once(i)) == str(i).encode()


def test_forked_child_connects_anew(mongo_server):
    """A child forked with connections open lets go of them (the parent's
    sockets untouched) and connects on its own; the parent goes on."""
    out = run_python(f"""
        import asyncio, os
        import cacheme

        class K:
            def __init__(self, k): self.k = k
            def full_key(self): return self.k

        s = cacheme.Storage(url={mongo_server.url!r}, database="test",
                            collection="{unique('cm_fork')}")
        st = s._storage

        async def get(k):
            return await st.get(K(k), None)

        async def put(k, v):
            await st.set(K(k), v, None, None)

        loop = asyncio.new_event_loop()
        loop.run_until_complete(put("a", b"parent"))
        pid = os.fork()
        if pid == 0:
            got = asyncio.run(get("a"))
            asyncio.run(put("b", b"child"))
            os._exit(0 if got == b"parent" else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        print(loop.run_until_complete(get("b")))
        print(loop.run_until_complete(get("a")))
        loop.close()
    """)
    assert out.split("\n")[:3] == ["child 0", "b'child'", "b'parent'"]


LEAK_HARNESS = r'''
import asyncio, sys
import cacheme

url, coll, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

class K:
    def __init__(self, k):
        self.k = k
    def full_key(self):
        return self.k

async def main():
    st = cacheme.Storage(url=url, database="test", collection=coll)
    await st.connect()
    await cacheme.register_storage("m", st)
    s = st._storage
    await s.set(K("a"), b"payload-a", None, None)

    class Node(cacheme.Node):
        def __init__(self, i):
            self.i = i
        def key(self):
            return f"n{self.i}"
        async def load(self):
            return b"loaded"
        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage="m", ttl=None)]
            serializer = None

    async def body(i):
        assert await s.get(K("a"), None) == b"payload-a"
        assert await s.get(K("missing"), None) is cacheme.models.sentinel
        await s.set(K(f"k{i % 20}"), b"payload-v", None, None)
        assert await cacheme.get(Node(i % 30)) == b"loaded"
        if i % 10 == 0:
            await asyncio.gather(*(s.get(K(f"k{j}"), None) for j in range(20)))
            await s.get_all([K(f"k{j}") for j in range(5)], None)

    for i in range(300):
        await body(i)
    before = snapshot()
    for i in range(300, 300 + n):
        await body(i)
    after = snapshot()
    await st.close()
    print(before[0], after[0], before[1], after[1])

asyncio.run(main())
'''


def test_hot_path_does_not_leak(mongo_server):
    """gets (found, missing, coalesced), sets, get_all and flights looped:
    live objects and memory stay flat."""
    code = "import sys; sys.argv[1:] = %r\n" % [mongo_server.url, unique("cm_leak"), "1500"]
    assert_flat(run_python(code + LEAK_SNAPSHOT + LEAK_HARNESS), rss_kib=1024)


# ---------------------------------------------------------------- URLs, errors


def test_url_parsing_and_refusals():
    p = mongo.parse_url("mongodb://u:p%40w@h1,h2:27018,[::1]:27019/admin?authSource=x&w=1")
    assert p["hosts"] == [("h1", 27017), ("h2", 27018), ("::1", 27019)]
    assert p["user"] == "u" and p["password"] == "p@w" and p["authdb"] == "admin"
    assert p["options"]["authSource"] == "x"
    with pytest.raises(ValueError, match="SRV"):
        cacheme.Storage(url="mongodb+srv://cluster.example.com/", database=DB, collection="c")
    # TLS is supported (tests/test_mongo_tls.py)
    for opt in ("tls=true", "ssl=true"):
        assert mongo.parse_url(f"mongodb://127.0.0.1/?{opt}")["tls"] is not None
    with pytest.raises(ValueError, match="port"):
        mongo.parse_url("mongodb://h:99999/")
    with pytest.raises(TypeError):
        cacheme.Storage(url="mongodb://127.0.0.1/", database=DB, collection="c", pool_size=0.5)
    with pytest.raises(ValueError):
        cacheme.Storage(url="mongodb://127.0.0.1/", database=DB, collection="c", timeout=0)
    # the 0.3.0 signature
    s = mongo.MongoStorage("mongodb://127.0.0.1:1/", "db", "coll", 3)
    assert s.pool_size == 3 and s.database == "db" and s.collection == "coll"


def test_build_without_libbson_names_the_package():
    """What a build without libbson does (setup.py leaves mongo/ out when
    pkg-config lacks libbson-1.0, or with CACHEME_NO_BSON=1): the storage
    says what to install."""
    out = run_python("""
        from cacheme import _core
        _core._mongo_available = 0
        import cacheme
        try:
            cacheme.Storage(url="mongodb://127.0.0.1/", database="d", collection="c")
        except RuntimeError as e:
            print(e)
    """)
    assert "libbson-dev" in out


async def test_server_error_names_command_and_code(mongo_server):
    coll = unique("cm_m")
    # a non-unique index named key_1 already there: createIndexes refuses ours
    await in_thread(pymongo_call, mongo_server.url, DB, coll, "command",
                    {"createIndexes": coll, "indexes": [{"key": {"key": 1}, "name": "key_1"}]})
    s, _ = new_storage(mongo_server.url, coll=coll)
    with pytest.raises(mongo.MongoServerError, match="createIndexes") as e:
        await s.connect()
    assert isinstance(e.value.code, int) and e.value.code != 0
    await s.close()


async def test_unreachable_server_fails_fast():
    s, _ = new_storage(f"mongodb://127.0.0.1:{free_port()}/", connect_timeout=2.0)
    with pytest.raises(mongo.MongoConnectionError):
        await asyncio.wait_for(s._storage.get(K("a"), None), 10)
    # backing off: refused at once, naming why
    with pytest.raises(mongo.MongoConnectionError, match="unavailable"):
        await s._storage.get(K("a"), None)


async def test_server_killed_and_restarted(mongo_server_factory):
    srv = mongo_server_factory()
    name, _ = await register(srv.url, timeout=2.0, connect_timeout=2.0, pool_size=2)
    Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
    st = storage_of(name)
    await cacheme.get_all([Node(i) for i in range(5)])
    assert len(calls) == 5
    await in_thread(srv.kill)
    # requests while the server is down: misses, then loads; never a hang
    assert await asyncio.wait_for(cacheme.get(Node(1)), 10) == {"uid": 1, "name": "u1"}
    assert len(calls) == 6
    with pytest.raises((mongo.MongoConnectionError, mongo.MongoTimeoutError)):
        await asyncio.wait_for(st.get(K("x"), None), 10)
    await in_thread(srv.start)
    # the pool reconnects after its backoff; the new server is empty
    for _ in range(100):
        try:
            await asyncio.wait_for(st.set(K("back"), b"1", None, None), 10)
            break
        except (mongo.MongoConnectionError, mongo.MongoTimeoutError):
            await asyncio.sleep(0.1)
    assert await st.get(K("back"), None) == b"1"
    assert await cacheme.get(Node(3)) == {"uid": 3, "name": "u3"}


async def test_paused_server_times_out_then_recovers(mongo_server_factory):
    srv = mongo_server_factory()
    s, _ = new_storage(srv.url, timeout=0.5, connect_timeout=0.5)
    st = s._storage
    await st.set(K("a"), b"1", None, None)
    await in_thread(srv.pause)
    try:
        with pytest.raises(mongo.MongoTimeoutError, match="no reply"):
            await asyncio.wait_for(st.get(K("a"), None), 20)
    finally:
        await in_thread(srv.resume)
    for _ in range(100):
        try:
            assert await asyncio.wait_for(st.get(K("a"), None), 20) == b"1"
            break
        except (mongo.MongoConnectionError, mongo.MongoTimeoutError):
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("no recovery after resume")


# ---------------------------------------------------------------- authentication


@pytest.mark.parametrize("mech", ["", "SCRAM-SHA-256", "SCRAM-SHA-1"])
async def test_scram_authentication(mongo_auth_server, mech):
    query = f"?authMechanism={mech}" if mech else ""
    s, coll = new_storage(mongo_auth_server.url + "/" + query)
    await s.connect()
    await s._storage.set(K("secret"), b"1", None, None)
    assert await s._storage.get(K("secret"), None) == b"1"
    # every connection of the pool authenticates
    got = await asyncio.gather(*[s._storage.get(K("secret"), None) for _ in range(20)])
    assert got == [b"1"] * 20
    await s.close()


async def test_scram_refused(mongo_auth_server):
    port = mongo_auth_server.port
    bad, _ = new_storage(f"mongodb://{mongo_auth_server.user}:wrong@127.0.0.1:{port}/")
    with pytest.raises(mongo.MongoAuthError, match="authentication failed"):
        await bad.connect()
    # no credentials: the server refuses the command itself
    anon, _ = new_storage(mongo_auth_server.url_no_auth)
    with pytest.raises(mongo.MongoServerError, match="createIndexes"):
        await anon.connect()
    with pytest.raises(ValueError, match="authMechanism"):
        new_storage(mongo_auth_server.url + "/?authMechanism=PLAIN")


# ---------------------------------------------------------------- fake servers

def _cstr(s):
    return s.encode() + b"\x00"


def bson_doc(d):
    """A little BSON encoder for the fake servers' replies."""
    out = b""
    for k, v in d.items():
        if isinstance(v, bool):
            out += b"\x08" + _cstr(k) + (b"\x01" if v else b"\x00")
        elif isinstance(v, int):
            out += b"\x10" + _cstr(k) + struct.pack("<i", v)
        elif isinstance(v, float):
            out += b"\x01" + _cstr(k) + struct.pack("<d", v)
        elif isinstance(v, bytes):
            out += b"\x05" + _cstr(k) + struct.pack("<i", len(v)) + b"\x00" + v
        elif v is None:
            out += b"\x0a" + _cstr(k)
        elif isinstance(v, str):
            b = v.encode()
            out += b"\x02" + _cstr(k) + struct.pack("<i", len(b) + 1) + b + b"\x00"
        elif isinstance(v, dict):
            out += b"\x03" + _cstr(k) + bson_doc(v)
        elif isinstance(v, list):
            out += b"\x04" + _cstr(k) + bson_doc({str(i): x for i, x in enumerate(v)})
        else:
            raise TypeError(v)
    return struct.pack("<i", len(out) + 5) + out + b"\x00"


def op_msg(response_to, body, request_id=1, length=None):
    payload = struct.pack("<I", 0) + b"\x00" + body
    n = 16 + len(payload) if length is None else length
    return struct.pack("<iiii", n, request_id, response_to, 2013) + payload


def first_key(body):
    i = 5
    end = body.index(b"\x00", i)
    return body[i:end].decode()


class FakeServer:
    """An OP_MSG server on the test's loop: hello answered as `hello`, every
    other command by answer(command name, request id) -> bytes to send
    (None: no answer)."""

    def __init__(self, answer, hello=None):
        self.answer = answer
        self.hello = hello or {"ok": 1.0, "isWritablePrimary": True, "maxWireVersion": 17,
                               "maxMessageSizeBytes": 48000000}
        self.commands = []
        self.bodies = []
        self.connections = 0
        self.writers = []

    async def start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"mongodb://127.0.0.1:{self.port}"
        return self

    async def _serve(self, reader, writer):
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readexactly(16)
                n, rid, _, _ = struct.unpack("<iiii", head)
                rest = await reader.readexactly(n - 16)
                body = rest[5:]
                cmd = first_key(body)
                if cmd in ("hello", "isMaster", "ismaster"):
                    writer.write(op_msg(rid, bson_doc(self.hello)))
                else:
                    self.commands.append(cmd)
                    self.bodies.append(body)
                    out = self.answer(cmd, rid)
                    if out is not None:
                        writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self):
        self.server.close()

    def drop(self):
        """Stop listening and reset every connection."""
        self.server.close()
        for w in self.writers:
            w.transport.abort()


def _empty_find(rid):
    return op_msg(rid, bson_doc({"cursor": {"firstBatch": [], "id": 0, "ns": "test.c"},
                                 "ok": 1.0}))


@pytest.mark.parametrize("url_tail, source", [("/?authSource=elsewhere", "elsewhere"),
                                              ("/urldb", "urldb"), ("/", "admin")])
async def test_scram_asks_the_auth_source(url_tail, source):
    # mongoeco takes any database; a fake server shows where saslStart goes
    def answer(cmd, rid):
        return op_msg(rid, bson_doc({"ok": 0.0, "errmsg": "no such user", "code": 11}))

    fake = await FakeServer(answer).start()
    try:
        s, _ = new_storage(f"mongodb://u:p@127.0.0.1:{fake.port}{url_tail}")
        with pytest.raises(mongo.MongoAuthError, match="no such user"):
            await asyncio.wait_for(s.connect(), 10)
        assert fake.commands == ["saslStart"]
        assert b"$db\x00" + struct.pack("<i", len(source) + 1) + source.encode() in fake.bodies[0]
        assert b"SCRAM-SHA-1" in fake.bodies[0]  # the server listed no mechanisms
    finally:
        fake.close()


@pytest.mark.parametrize("hostile", ["bad_bson", "huge_length", "tiny_length",
                                     "wrong_response_to", "bad_opcode"])
async def test_hostile_reply_is_a_miss_and_reconnects(hostile):
    state = {"n": 0}

    def answer(cmd, rid):
        state["n"] += 1
        if state["n"] > 1:
            return _empty_find(rid)
        body = bson_doc({"cursor": {"firstBatch": [], "id": 0}, "ok": 1.0})
        if hostile == "bad_bson":
            # framed, but an element of an unknown type inside
            bad = bytearray(body)
            bad[4] = 0x7E
            return op_msg(rid, bytes(bad))
        if hostile == "huge_length":
            return struct.pack("<iiii", 0x7FFFFFF0, 1, rid, 2013) + b"\x00" * 64
        if hostile == "tiny_length":
            return struct.pack("<iiii", 12, 1, rid, 2013) + b"\x00" * 8
        if hostile == "wrong_response_to":
            return op_msg(rid + 1000, body)
        return struct.pack("<iiii", 16 + 5 + len(body), 1, rid, 2004) + b"\x00" * 5 + body

    fake = await FakeServer(answer).start()
    try:
        s, _ = new_storage(fake.url, timeout=5.0)
        st = s._storage
        with pytest.raises(mongo.MongoConnectionError, match="invalid reply|not valid BSON|no request"):
            await asyncio.wait_for(st.get(K("a"), None), 10)
        # a new connection serves the next request, once the backoff has passed
        await until_answered(lambda: st.get(K("a"), None), sentinel)
        assert fake.connections == 2
        # through cacheme: a hostile reply is a miss and the load runs
        name = unique("mongo-")
        await cacheme.register_storage(name, s)
        state["n"] = 0
        Node, calls = make_user_node([cacheme.Cache(storage=name, ttl=None)])
        assert await asyncio.wait_for(cacheme.get(Node(1)), 10) == {"uid": 1, "name": "u1"}
        assert calls == [1]
    finally:
        fake.close()


async def test_gets_of_one_iteration_are_one_find():
    """Single gets queued together leave as one find of their keys ($in);
    each gets its own document, or a miss."""
    def answer(cmd, rid):
        docs = [{"key": f"g{i}", "value": f"v{i}".encode(), "expire": None}
                for i in range(0, 40, 2)]
        return op_msg(rid, bson_doc({"cursor": {"firstBatch": docs, "id": 0, "ns": "test.c"},
                                     "ok": 1.0}))

    fake = await FakeServer(answer).start()
    try:
        s, _ = new_storage(fake.url, pool_size=1)
        st = s._storage
        assert await st.get(K("g0"), None) == b"v0"  # connected
        # one get alone is an equality on key (the key index answers it)
        assert b"$in" not in fake.bodies[-1] and b"limit" in fake.bodies[-1]
        fake.commands.clear()
        got = await asyncio.gather(*[st.get(K(f"g{i}"), None) for i in range(40)])
        assert got == [f"v{i}".encode() if i % 2 == 0 else sentinel for i in range(40)]
        assert fake.commands == ["find"] and b"$in" in fake.bodies[-1]
        # another command queued between gets closes the run: order is kept
        fake.commands.clear()
        await asyncio.gather(st.get(K("g0"), None), st.remove(K("g2")), st.get(K("g4"), None))
        assert fake.commands == ["find", "delete", "find"]
    finally:
        fake.close()


async def test_seed_list_finds_the_primary(mongo_server):
    # first seed: nothing listens; second: a secondary naming the primary
    dead = free_port()
    secondary = await FakeServer(lambda cmd, rid: None, hello={
        "ok": 1.0, "isWritablePrimary": False, "secondary": True,
        "primary": f"127.0.0.1:{mongo_server.port}", "maxWireVersion": 17}).start()
    try:
        url = f"mongodb://127.0.0.1:{dead},127.0.0.1:{secondary.port}/"
        s, coll = new_storage(url, connect_timeout=2.0)
        st = s._storage
        # the first attempt may land on the dead seed; the turn passes on
        for _ in range(50):
            try:
                await asyncio.wait_for(st.set(K("p"), b"1", None, None), 10)
                break
            except mongo.MongoConnectionError:
                await asyncio.sleep(0.1)
        assert await st.get(K("p"), None) == b"1"
        assert st.pool_info()["primary"] == f"127.0.0.1:{mongo_server.port}"
        assert "p" in await in_thread(docs, mongo_server.url, coll)
        assert secondary.commands == []  # nothing but hello went to the secondary
    finally:
        secondary.close()


async def test_not_writable_primary_is_retried_once_on_the_new_primary(mongo_server):
    def answer(cmd, rid):
        return op_msg(rid, bson_doc({"ok": 0.0, "code": 10107, "codeName": "NotWritablePrimary",
                                     "errmsg": "not primary"}))

    stepped_down = await FakeServer(answer).start()
    try:
        url = f"mongodb://127.0.0.1:{stepped_down.port},127.0.0.1:{mongo_server.port}/"
        s, coll = new_storage(url)
        st = s._storage
        await asyncio.wait_for(st.set(K("moved"), b"1", None, None), 10)
        assert stepped_down.commands == ["update"]
        assert "moved" in await in_thread(docs, mongo_server.url, coll)
        assert await st.get(K("moved"), None) == b"1"
    finally:
        stepped_down.close()


async def test_requests_on_a_lost_primary_go_to_the_next_seed(mongo_server):
    """The primary's connection breaks with requests pending: each goes once
    to the next server of the seed list."""
    stalled = await FakeServer(lambda cmd, rid: None).start()  # answers hello only
    try:
        url = f"mongodb://127.0.0.1:{stalled.port},127.0.0.1:{mongo_server.port}/"
        s, coll = new_storage(url)
        st = s._storage
        get = asyncio.ensure_future(st.get(K("lost"), None))
        put = asyncio.ensure_future(st.set(K("lost"), b"1", None, None))
        while len(stalled.commands) < 2:
            await asyncio.sleep(0.01)
        stalled.drop()
        assert await asyncio.wait_for(get, 10) is sentinel
        await asyncio.wait_for(put, 10)
        assert st.pool_info()["primary"] == f"127.0.0.1:{mongo_server.port}"
        assert "lost" in await in_thread(docs, mongo_server.url, coll)
    finally:
        stalled.close()


async def test_single_server_lost_fails_pending_requests(mongo_server):
    stalled = await FakeServer(lambda cmd, rid: None).start()
    try:
        s, _ = new_storage(stalled.url)
        get = asyncio.ensure_future(s._storage.get(K("x"), None))
        while not stalled.commands:
            await asyncio.sleep(0.01)
        stalled.drop()
        with pytest.raises(mongo.MongoConnectionError, match="closed by server"):
            await asyncio.wait_for(get, 10)
    finally:
        stalled.close()


@pytest.mark.skipif(os.environ.get("CACHEME_TEST_LOOP") == "uvloop",
                    reason="checks asyncio's own loop")
def test_runs_on_uvloop_too(mongo_server):
    uvloop = pytest.importorskip("uvloop")
    s, _ = new_storage(mongo_server.url)

    async def main():
        await s.connect()
        await s._storage.set(K("u"), b"uv", None, None)
        return await s._storage.get(K("u"), None)

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == b"uv"
    finally:
        loop.close()
