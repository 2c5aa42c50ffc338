"""The MongoDB storage on the shared transport (net/): TLS (tls=true and the
tls* URL options of MongoDB's connection string spec), busy polling for
replies as Redis and SQL have it, and a lazy connect (0.3.0's motor
connected on first use), against mongoeco servers (tests/mongo_servers.py).

mongoeco speaks no TLS, so a small TLS-terminating asyncio proxy (Python's
ssl, server side, in a thread with its own loop) sits in front of the
mongoeco server; the certificates are tls_certs.py's throwaway CA's, made
at test time."""
import asyncio
import dataclasses
import logging
import os
import ssl
import threading

import pytest

import cacheme
from cacheme.models import sentinel
from cacheme.serializer import MsgPackSerializer
from conftest import (assert_spun, needs_two_cpus, spin_skips_ready_tasks,
                      spins_back_off_on_a_slow_server, unique)
from mongo_servers import MongoServer, mongo_server, pymongo_call, unavailable  # noqa: F401
from tls_certs import OPENSSL, certs  # noqa: F401 (fixture)

mongo = pytest.importorskip("cacheme.storages.mongo")
if not mongo._AVAILABLE:  # pragma: no cover - a build without libbson
    pytest.skip("cacheme built without libbson", allow_module_level=True)

DB = "test"
SER = MsgPackSerializer()
needs_openssl = pytest.mark.skipif(OPENSSL is None,
                                   reason="the openssl CLI makes the test certificates")


class K:
    def __init__(self, key):
        self.k = key

    def full_key(self):
        return self.k


def storage(url, **options):
    return mongo.MongoStorage(url, DB, unique("cm_net"), **options)


# ---------------------------------------------------------------- TLS


class TlsProxy:
    """TLS on a free port of 127.0.0.1, forwarding plain TCP to the server
    on target_port. handled counts the connections whose handshake passed."""

    def __init__(self, target_port, cert, key, client_ca=None):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        if client_ca is not None:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(client_ca)
        self.target_port = target_port
        self.handled = 0
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, ctx: None)  # refused handshakes
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx))
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader, writer):
        self.handled += 1
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))

    def close(self):
        async def stop():
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def proxy(certs, mongo_server):
    p = TlsProxy(mongo_server.port, certs.server, certs.server_key)
    yield p
    p.close()


@pytest.fixture(scope="module")
def wrong_name_proxy(certs, mongo_server):
    """Its certificate names neither 127.0.0.1 nor localhost."""
    p = TlsProxy(mongo_server.port, certs.wrong, certs.wrong_key)
    yield p
    p.close()


@pytest.fixture(scope="module")
def client_cert_proxy(certs, mongo_server):
    """Asks for a client certificate signed by the CA."""
    p = TlsProxy(mongo_server.port, certs.server, certs.server_key, client_ca=certs.ca)
    yield p
    p.close()


def tls_storage(url, **options):
    return storage(url, busy_poll=0, connect_timeout=5, **options)


async def roundtrip(s):
    await s.connect()
    await s.set(K("a"), {"v": 1}, None, SER)
    await s.set_all([(K("b"), 2), (K("c"), 3)], None, SER)
    assert await s.get(K("a"), SER) == {"v": 1}
    got = await s.get_all([K("a"), K("b"), K("c"), K("zz")], SER)
    assert sorted((n.k, v) for n, v in got) == [("a", {"v": 1}), ("b", 2), ("c", 3)]
    await s.remove(K("b"))
    assert await s.get(K("b"), SER) is sentinel


async def works(url):
    s = tls_storage(url)
    try:
        await roundtrip(s)
    finally:
        await s.close()


async def refused(url, match, errors=mongo.MongoConnectionError):
    s = tls_storage(url)
    try:
        with pytest.raises(errors, match=match):
            await s.get(K("a"), SER)
    finally:
        await s.close()


@needs_openssl
async def test_tls_verified_by_the_ca(certs, proxy, mongo_server):
    before = proxy.handled
    s = tls_storage(f"mongodb://127.0.0.1:{proxy.port}/?tls=true&tlsCAFile={certs.ca}")
    try:
        await roundtrip(s)
        # concurrent gets: pipelined over TLS, several records per read
        keys = [f"k{i}" for i in range(300)]
        await s.set_all([(K(k), k * 50) for k in keys], None, SER)
        got = await asyncio.gather(*(s.get(K(k), SER) for k in keys))
        assert got == [k * 50 for k in keys]
    finally:
        await s.close()
    assert proxy.handled > before  # it went through the TLS proxy
    # what the server holds, read by pymongo on its plain port
    docs = pymongo_call(mongo_server.url, DB, s.collection, "find", {})
    assert {d["key"]["value"] for d in docs} >= {"a", "c", "k0", "k299"}


@needs_openssl
async def test_ssl_alias_and_localhost_name(certs, proxy):
    await works(f"mongodb://localhost:{proxy.port}/?ssl=true&tlsCAFile={certs.ca}")


@needs_openssl
async def test_a_wrong_ca_is_refused(certs, proxy):
    await refused(f"mongodb://127.0.0.1:{proxy.port}/?tls=true&tlsCAFile={certs.other_ca}",
                  "certificate verify failed")


@needs_openssl
async def test_insecure_skips_verification(certs, proxy):
    await works(f"mongodb://127.0.0.1:{proxy.port}/?tlsInsecure=true")


@needs_openssl
async def test_the_hostname_is_checked(certs, wrong_name_proxy):
    query = f"{wrong_name_proxy.port}/?tls=true&tlsCAFile={certs.ca}"
    for host in ("127.0.0.1", "localhost"):  # an IP, a name (SNI)
        await refused(f"mongodb://{host}:{query}", "certificate verify failed.*mismatch")
    await works(f"mongodb://127.0.0.1:{query}&tlsAllowInvalidHostnames=true")


@needs_openssl
async def test_client_certificate(certs, client_cert_proxy, tmp_path):
    both = tmp_path / "client.pem"
    both.write_bytes(open(certs.client, "rb").read() + open(certs.client_key, "rb").read())
    base = f"mongodb://127.0.0.1:{client_cert_proxy.port}/?tls=true&tlsCAFile={certs.ca}"
    await works(base + f"&tlsCertificateKeyFile={both}")
    await refused(base, "certificate|closed|reset|timed out",
                  (mongo.MongoConnectionError, mongo.MongoTimeoutError))


async def test_tls_to_a_plain_server_fails_without_hanging(mongo_server):
    # the server reads the ClientHello as a message: it drops the
    # connection or waits; either way the handshake ends within
    # connect_timeout
    s = storage(f"{mongo_server.url}/?tls=true&tlsInsecure=true", busy_poll=0,
                connect_timeout=1.0)
    try:
        with pytest.raises((mongo.MongoConnectionError, mongo.MongoTimeoutError),
                           match="TLS handshake"):
            await asyncio.wait_for(s.get(K("a"), SER), 30)
    finally:
        await s.close()


@needs_openssl
def test_tls_options_checked(certs, tmp_path):
    def refused(query, match):
        with pytest.raises(ValueError, match=match):
            mongo.MongoStorage(f"mongodb://h/?{query}", DB, "c")

    refused("tls=maybe", "tls must be true or false")
    refused("tls=true&ssl=false", "tls and ssl disagree")
    refused("tls=false&tlsCAFile=x.pem", "tlsCAFile given with tls=false")
    refused("tlsInsecure=true&tlsAllowInvalidHostnames=true", "tlsInsecure cannot be given")
    refused("tls=true&tlsCAFile=/nonexistent.pem", "tlsCAFile /nonexistent.pem cannot be used")
    refused(f"tls=true&tlsCertificateKeyFile={certs.ca}", "tlsCertificateKeyFile .* cannot be used")
    refused("tls=true&tlsCertificateKeyFilePassword=x", "tlsCertificateKeyFilePassword is not")
    refused("tlsAllowInvalidCertificates=often", "tlsAllowInvalidCertificates must be true")
    with pytest.raises(ValueError, match="mongodb\\+srv"):
        mongo.MongoStorage("mongodb+srv://cluster.example.com/?tls=true", DB, "c")
    # key names are case-insensitive (the spec); tls off is plain TCP
    mongo.MongoStorage(f"mongodb://h/?TLS=true&TLSCAFILE={certs.ca}", DB, "c")
    mongo.MongoStorage("mongodb://h/?tls=false", DB, "c")
    assert os.path.exists(certs.ca)


# ---------------------------------------------------------------- busy polling


def test_busy_poll_option():
    default = 0.0002 if len(os.sched_getaffinity(0)) > 1 else 0.0
    url = "mongodb://127.0.0.1:1"
    assert storage(url).busy_poll_info()["busy_poll"] == default
    assert storage(url, busy_poll=0).busy_poll_info()["busy_poll"] == 0.0
    assert storage(url + "/?busy_poll=0.001").busy_poll_info()["busy_poll"] == 0.001
    for bad in (-0.001, 0.5, float("nan")):
        with pytest.raises(ValueError, match="busy_poll"):
            storage(url, busy_poll=bad)
    with pytest.raises(TypeError):
        storage(url, busy_poll="fast")
    with pytest.raises(ValueError, match="busy_poll must be a number"):
        storage(url + "/?busy_poll=fast")


async def test_busy_poll_answers_sequential_gets(mongo_server):
    # an idle loop polls for the reply instead of sleeping in epoll_wait;
    # busy_poll=0 never spins; same values either way
    needs_two_cpus()
    for limit in (0.005, 0):
        s = storage(mongo_server.url, busy_poll=limit)
        await s.connect()
        await s.set_all([(K(f"k{i}"), i) for i in range(20)], None, SER)
        before = s.busy_poll_info()
        for i in range(200):
            got = await s.get(K(f"k{i % 25}"), SER)
            assert got == (i % 25 if i % 25 < 20 else sentinel)
        info = s.busy_poll_info()
        await s.close()
        hits = info["busy_poll_hits"] - before["busy_poll_hits"]
        timeouts = info["busy_poll_timeouts"] - before["busy_poll_timeouts"]
        if limit:
            assert_spun(hits, timeouts, (before, info))
        else:
            assert hits == timeouts == 0, info


async def test_busy_poll_never_delays_ready_tasks(mongo_server):
    s = storage(mongo_server.url, busy_poll=0.005)
    await s.connect()
    await s.set(K("a"), 1, None, SER)

    async def get():
        assert await s.get(K("a"), SER) == 1

    await spin_skips_ready_tasks(s, get)
    await s.close()


async def test_busy_poll_backs_off_on_a_slow_server(mongo_server):
    async def connect(port):
        s = storage(f"mongodb://127.0.0.1:{port}", busy_poll=0.0002)
        await s.connect()
        await s.set(K("a"), 1, None, SER)
        return s

    async def get(s):
        assert await s.get(K("a"), SER) == 1

    await spins_back_off_on_a_slow_server(mongo_server.port, connect, get)


# ---------------------------------------------------------------- lazy connect


def make_node(storage_name):
    calls = []

    @dataclasses.dataclass
    class LazyNode(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"lazy:{self.uid}"

        async def load(self):
            calls.append(self.uid)
            return {"uid": self.uid}

        class Meta(cacheme.Node.Meta):
            caches = [cacheme.Cache(storage=storage_name, ttl=None)]
            serializer = SER

    LazyNode.__qualname__ = unique("LazyNode")
    return LazyNode, calls


async def until_connected(st):
    """Retries through the backoff until the server answers (setup helper,
    never a timed assertion)."""
    for _ in range(400):
        try:
            return await asyncio.wait_for(st.get(K("probe"), SER), 20)
        except (mongo.MongoConnectionError, mongo.MongoTimeoutError):
            await asyncio.sleep(0.05)
    raise AssertionError("the server never answered")


def indexes(url, coll):
    reply = pymongo_call(url, DB, coll, "command", {"listIndexes": coll})
    return {i["name"]: i for i in reply["cursor"]["firstBatch"]}


async def test_connect_while_the_server_is_down(caplog):
    if unavailable() is not None:
        pytest.skip(unavailable())
    srv = MongoServer()  # its port is chosen; nothing listens on it yet
    name, coll = unique("lazy-"), unique("cm_lazy")
    try:
        storage_obj = cacheme.Storage(url=srv.url, database=DB, collection=coll, busy_poll=0,
                                      connect_timeout=2.0)
        with caplog.at_level(logging.WARNING, logger="cacheme"):
            await asyncio.wait_for(cacheme.register_storage(name, storage_obj), 30)
        assert "not reachable" in caplog.text
        st = storage_obj._storage
        assert st._indexes_later == 1
        # while down: a clear error from the storage, a miss (and a load) in get
        with pytest.raises(mongo.MongoConnectionError):
            await asyncio.wait_for(st.get(K("a"), SER), 30)
        N, calls = make_node(name)
        assert await asyncio.wait_for(cacheme.get(N(1)), 30) == {"uid": 1}
        assert calls == [1]

        srv.start()
        assert await until_connected(st) is sentinel
        # the first connection created the indexes, before anything else
        assert st._indexes_later == 2
        ix = await asyncio.get_running_loop().run_in_executor(None, indexes, srv.url, coll)
        assert ix["key_1"]["key"] == {"key": 1} and ix["key_1"]["unique"] is True
        assert ix["expire_1"]["key"] == {"expire": 1}
        cmds = srv.commands()
        assert cmds.index("createIndexes") < cmds.index("find")
        # and the storage works: a fill, then a hit (MongoDB is its only cache)
        assert await asyncio.wait_for(cacheme.get(N(2)), 30) == {"uid": 2}
        assert await asyncio.wait_for(cacheme.get(N(2)), 30) == {"uid": 2}
        assert calls == [1, 2]
    finally:
        await storage_obj.close()
        srv.cleanup()


async def test_connect_with_the_server_up_creates_indexes_at_once(mongo_server):
    s = storage(mongo_server.url)
    await s.connect()
    assert s._indexes_later == 0
    ix = await asyncio.get_running_loop().run_in_executor(None, indexes, mongo_server.url,
                                                          s.collection)
    assert set(ix) >= {"key_1", "expire_1"}
    await s.close()
