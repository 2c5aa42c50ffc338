"""MongoDB over TLS (tls=true and the tls* URL options of MongoDB's
connection string spec). mongoeco speaks no TLS, so a small TLS-terminating
asyncio proxy (Python's ssl, server side, in a thread with its own loop)
sits in front of the mongoeco server; the certificates are the throwaway
CA's of tls_certs.py, made at test time."""
import asyncio
import os
import ssl
import threading

import pytest

from cacheme.models import sentinel
from cacheme.serializer import MsgPackSerializer
from conftest import unique
from mongo_servers import mongo_server, pymongo_call  # noqa: F401 (fixture)
from tls_certs import OPENSSL, certs  # noqa: F401 (fixture)

mongo = pytest.importorskip("cacheme.storages.mongo")
if not mongo._AVAILABLE:  # pragma: no cover - a build without libbson
    pytest.skip("cacheme built without libbson", allow_module_level=True)
pytestmark = pytest.mark.skipif(OPENSSL is None,
                                reason="the openssl CLI makes the test certificates")

DB = "test"
SER = MsgPackSerializer()


class K:
    def __init__(self, key):
        self.k = key

    def full_key(self):
        return self.k


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


def storage(url, **options):
    return mongo.MongoStorage(url, DB, unique("cm_tls"), busy_poll=0, connect_timeout=5,
                              **options)


async def roundtrip(s):
    await s.connect()
    await s.set(K("a"), {"v": 1}, None, SER)
    await s.set_all([(K("b"), 2), (K("c"), 3)], None, SER)
    assert await s.get(K("a"), SER) == {"v": 1}
    got = await s.get_all([K("a"), K("b"), K("c"), K("zz")], SER)
    assert sorted((n.k, v) for n, v in got) == [("a", {"v": 1}), ("b", 2), ("c", 3)]
    await s.remove(K("b"))
    assert await s.get(K("b"), SER) is sentinel


async def test_tls_verified_by_the_ca(certs, proxy, mongo_server):
    before = proxy.handled
    s = storage(f"mongodb://127.0.0.1:{proxy.port}/?tls=true&tlsCAFile={certs.ca}")
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


async def test_ssl_alias_and_localhost_name(certs, proxy):
    s = storage(f"mongodb://localhost:{proxy.port}/?ssl=true&tlsCAFile={certs.ca}")
    try:
        await roundtrip(s)
    finally:
        await s.close()


async def test_a_wrong_ca_is_refused(certs, proxy):
    s = storage(f"mongodb://127.0.0.1:{proxy.port}/?tls=true&tlsCAFile={certs.other_ca}")
    try:
        with pytest.raises(mongo.MongoConnectionError, match="certificate verify failed"):
            await s.get(K("a"), SER)
    finally:
        await s.close()


async def test_insecure_skips_verification(certs, proxy):
    s = storage(f"mongodb://127.0.0.1:{proxy.port}/?tlsInsecure=true")
    try:
        await roundtrip(s)
    finally:
        await s.close()


async def test_the_hostname_is_checked(certs, wrong_name_proxy):
    url = f"mongodb://127.0.0.1:{wrong_name_proxy.port}/?tls=true&tlsCAFile={certs.ca}"
    s = storage(url)
    try:
        with pytest.raises(mongo.MongoConnectionError, match="certificate verify failed.*mismatch"):
            await s.get(K("a"), SER)
    finally:
        await s.close()
    s = storage(f"mongodb://localhost:{wrong_name_proxy.port}/?tls=true&tlsCAFile={certs.ca}")
    try:
        with pytest.raises(mongo.MongoConnectionError, match="certificate verify failed.*mismatch"):
            await s.get(K("a"), SER)
    finally:
        await s.close()
    s = storage(url + "&tlsAllowInvalidHostnames=true")
    try:
        await roundtrip(s)
    finally:
        await s.close()


async def test_client_certificate(certs, client_cert_proxy, tmp_path):
    both = tmp_path / "client.pem"
    both.write_bytes(open(certs.client, "rb").read() + open(certs.client_key, "rb").read())
    base = f"mongodb://127.0.0.1:{client_cert_proxy.port}/?tls=true&tlsCAFile={certs.ca}"
    s = storage(base + f"&tlsCertificateKeyFile={both}")
    try:
        await roundtrip(s)
    finally:
        await s.close()
    s = storage(base)
    try:
        with pytest.raises((mongo.MongoConnectionError, mongo.MongoTimeoutError)):
            await s.get(K("a"), SER)
    finally:
        await s.close()


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
