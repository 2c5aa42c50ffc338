"""Redis over TLS (rediss://) against real TLS redis-servers.

A throwaway CA, server certificates and a client certificate are made with
the openssl CLI at test time; the servers listen on TLS ports only (plain
TCP off), on free ports, in their own temp dirs."""
import asyncio
import dataclasses
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest

import cacheme
from cacheme.serializer import MsgPackSerializer
from cacheme.storages.redis import (
    RedisConnectionError,
    RedisStorage,
    RedisTimeoutError,
    parse_url,
)
from conftest import LEAK_SNAPSHOT, assert_flat, register_local, run_python, unique
from tls_certs import OPENSSL, Certs, certs  # noqa: F401 (fixture)
from redis_servers import (  # noqa: F401  (fixtures)
    REDIS_CLI,
    RedisCluster,
    RedisServer,
    _redis_session_server,
    free_port,
    needs_redis,
    redis_server,
)

pytestmark = [
    needs_redis,
    pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI makes the test certificates"),
]


class TlsRedisServer(RedisServer):
    """redis-server with TLS on its port and plain TCP off (its unix socket
    stays plain, for setup commands)."""

    def __init__(self, certs: Certs, *, cert=None, key=None, cluster=False,
                 auth_clients="optional"):
        super().__init__(cluster=cluster)
        self.certs = certs
        self.extra += [
            "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", cert or certs.server, "--tls-key-file", key or certs.server_key,
            "--tls-ca-cert-file", certs.ca, "--tls-auth-clients", auth_clients,
        ]
        if cluster:
            self.extra += ["--tls-cluster", "yes", "--tls-replication", "yes"]

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}"

    def tls_args(self):
        c = self.certs
        return ["--tls", "--cacert", c.ca, "--cert", c.client, "--key", c.client_key]

    def wait_ready(self, timeout: float = 10.0) -> None:
        ctx = ssl.create_default_context(cafile=self.certs.ca)
        ctx.load_cert_chain(self.certs.client, self.certs.client_key)
        ctx.check_hostname = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("redis-server (TLS) exited")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                    with ctx.wrap_socket(raw) as s:
                        s.sendall(b"PING\r\n")
                        if s.recv(100).startswith(b"+PONG"):
                            return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server (TLS) on port {self.port} did not start")

    def cli(self, *args: str) -> str:
        r = subprocess.run([REDIS_CLI, "-s", self.socket, *args], capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)}: {r.stderr or r.stdout}")
        return r.stdout.strip()


class TlsRedisCluster(RedisCluster):
    def __init__(self, certs: Certs, masters: int = 3):
        self.certs = certs
        self.nodes = [TlsRedisServer(certs, cluster=True) for _ in range(masters)]

    def start(self) -> "TlsRedisCluster":
        for n in self.nodes:
            n.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        r = subprocess.run(
            [REDIS_CLI, *self.nodes[0].tls_args(), "--cluster", "create", *addrs,
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create (TLS) failed: {r.stdout}\n{r.stderr}")
        self.wait_ok()
        return self


@pytest.fixture(scope="module")
def tls_server(certs):
    with TlsRedisServer(certs) as server:
        yield server


@pytest.fixture
def tls(tls_server):
    tls_server.cli("FLUSHALL")
    return tls_server


@pytest.fixture(scope="module")
def wrong_name_server(certs):
    """A server whose certificate names neither 127.0.0.1 nor localhost."""
    with TlsRedisServer(certs, cert=certs.wrong, key=certs.wrong_key) as server:
        yield server


# ---------------------------------------------------------------- helpers


def make_node(caches, serializer=MsgPackSerializer(), payload=None):
    calls = []

    @dataclasses.dataclass
    class TlsNode(cacheme.Node):
        uid: int

        def key(self) -> str:
            return f"tls:{self.uid}"

        async def load(self):
            calls.append(self.uid)
            if payload is not None:
                return payload(self.uid)
            return {"uid": self.uid}

        class Meta(cacheme.Node.Meta):
            pass

    TlsNode.Meta.version = "v1"
    TlsNode.Meta.caches = caches
    TlsNode.Meta.serializer = serializer
    TlsNode.__qualname__ = unique("TlsNode")
    return TlsNode, calls


async def register(url, **options) -> str:
    name = unique("rediss-")
    await cacheme.register_storage(name, cacheme.Storage(url=url, **options))
    return name


def storage_of(name):
    return cacheme.data.get_storage_by_name(name)._storage


def trusted(server, **options):
    return dict(options, ssl_ca_certs=server.certs.ca)


# ---------------------------------------------------------------- URL and options


def test_parse_url_and_options(certs):
    assert parse_url("rediss://h:7000/2?ssl_ca_certs=/x.pem&ssl_check_hostname=no") == {
        "host": "h", "port": 7000, "db": 2, "ssl": True, "ssl_ca_certs": "/x.pem",
        "ssl_check_hostname": False}
    assert cacheme.Storage(url="rediss://127.0.0.1:1").scheme() == "rediss"
    with pytest.raises(ValueError, match="ssl_check_hostname must be true or false"):
        parse_url("rediss://h?ssl_check_hostname=maybe")
    with pytest.raises(ValueError, match="ssl_cert_reqs must be"):
        RedisStorage("rediss://h", ssl_cert_reqs="sometimes")
    with pytest.raises(ValueError, match="without TLS"):
        RedisStorage("redis://h", ssl_ca_certs=certs.ca)
    with pytest.raises(ValueError, match="ssl_ca_certs .*/nonexistent.pem cannot be used: No such"):
        RedisStorage("rediss://h", ssl_ca_certs="/nonexistent.pem")
    with pytest.raises(ValueError, match="ssl_ca_path .* is not a directory"):
        RedisStorage("rediss://h", ssl_ca_path=certs.ca)
    RedisStorage("rediss://h", ssl_ca_path=certs.dir)
    # an encrypted key fails (no pass phrase is asked for on the terminal)
    enc = os.path.join(certs.dir, "client-enc.key")
    subprocess.run([OPENSSL, "rsa", "-in", certs.client_key, "-aes256", "-passout", "pass:pw",
                    "-out", enc], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    with pytest.raises(ValueError, match="ssl_keyfile .*client-enc.key cannot be used"):
        RedisStorage("rediss://h", ssl_certfile=certs.client, ssl_keyfile=enc)
    with pytest.raises(ValueError, match="ssl_keyfile needs ssl_certfile"):
        RedisStorage("rediss://h", ssl_keyfile=certs.client_key)
    with pytest.raises(ValueError, match="ssl_keyfile"):  # a key that is not the cert's
        RedisStorage("rediss://h", ssl_certfile=certs.client, ssl_keyfile=certs.server_key)
    with pytest.raises(ValueError, match="unix socket"):
        RedisStorage("unix:///tmp/x.sock", ssl=True)
    # ssl.CERT_* values are taken as well as names
    RedisStorage("rediss://h", ssl_cert_reqs=ssl.CERT_NONE)
    RedisStorage("rediss://h", ssl_cert_reqs="CERT_OPTIONAL")


# ---------------------------------------------------------------- through cacheme.get


async def test_get_set_get_all_through_local_and_rediss(tls):
    local = await register_local()
    name = await register(tls.url, **trusted(tls))
    Node, calls = make_node([cacheme.Cache(storage=local, ttl=None),
                             cacheme.Cache(storage=name, ttl=None)])
    assert await cacheme.get(Node(1)) == {"uid": 1}
    assert calls == [1]
    # stored in the TLS server in 0.3.0's layout, read back by a new node class
    assert tls.cli("EXISTS", Node(1).full_key()) == "1"
    Other, other_calls = make_node([cacheme.Cache(storage=name, ttl=None)])
    assert await cacheme.get(Other(1)) == {"uid": 1}
    assert other_calls == []
    got = await cacheme.get_all([Node(1), Node(2), Node(3)])
    assert got == [{"uid": 1}, {"uid": 2}, {"uid": 3}]
    assert calls == [1, 2, 3]
    assert await cacheme.get_all([Other(2), Other(3)]) == [{"uid": 2}, {"uid": 3}]
    assert other_calls == []


async def test_pipelined_concurrent_gets(tls):
    name = await register(tls.url, **trusted(tls, pool_size=2, busy_poll=0.002))
    Node, calls = make_node([cacheme.Cache(storage=name, ttl=None)])
    first = await asyncio.gather(*[cacheme.get(Node(i)) for i in range(200)])
    assert first == [{"uid": i} for i in range(200)]
    Other, other_calls = make_node([cacheme.Cache(storage=name, ttl=None)])
    again = await asyncio.gather(*[cacheme.get(Other(i)) for i in range(200)])
    assert again == first
    assert other_calls == []
    st = storage_of(name)
    raw = await asyncio.gather(*[st.execute("GET", Node(i).full_key()) for i in range(200)])
    assert all(isinstance(v, bytes) and v for v in raw)


async def test_large_values_span_many_records(tls):
    name = await register(tls.url, **trusted(tls, busy_poll=0))
    Node, calls = make_node([cacheme.Cache(storage=name, ttl=None)],
                            payload=lambda uid: os.urandom(1 << 20).hex()[: 1 << 20])
    big = await cacheme.get(Node(1))
    assert len(big) == 1 << 20
    Other, other_calls = make_node([cacheme.Cache(storage=name, ttl=None)])
    assert await cacheme.get(Other(1)) == big
    assert other_calls == []
    st = storage_of(name)
    values = await asyncio.gather(*[st.execute("GET", Node(1).full_key()) for _ in range(4)])
    assert len(set(values)) == 1 and len(values[0]) > 1 << 20


# ---------------------------------------------------------------- verification


async def test_wrong_ca_is_a_clear_error(tls):
    st = RedisStorage(tls.url, ssl_ca_certs=tls.certs.other_ca, connect_timeout=5)
    t0 = time.monotonic()
    with pytest.raises(RedisConnectionError, match=r"127\.0\.0\.1:\d+: TLS certificate verify "
                                                   r"failed: .*(self-signed|local issuer)"):
        await st.connect()
    assert time.monotonic() - t0 < 5  # failed, not timed out
    st.close_now()
    # the system's CAs do not know the test CA either
    st = RedisStorage(tls.url)
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        await st.connect()
    st.close_now()


async def test_hostname_mismatch(wrong_name_server):
    srv = wrong_name_server
    for host in ("127.0.0.1", "localhost"):
        url = f"rediss://{host}:{srv.port}"
        st = RedisStorage(url, ssl_ca_certs=srv.certs.ca)
        with pytest.raises(RedisConnectionError, match="certificate verify failed: .*mismatch"):
            await st.connect()
        st.close_now()
        st = RedisStorage(url, ssl_ca_certs=srv.certs.ca, ssl_check_hostname=False)
        await st.connect()
        assert await st.execute("SET", "tls:name", "ok") == "OK"
        st.close_now()
    # the name check is on by default and matches the certificate that has it
    st = RedisStorage(f"rediss://localhost:{srv.port}?ssl_check_hostname=true",
                      ssl_ca_certs=srv.certs.ca)
    with pytest.raises(RedisConnectionError, match="mismatch"):
        await st.connect()
    st.close_now()


async def test_cert_reqs_none_verifies_nothing(tls, wrong_name_server):
    for srv in (tls, wrong_name_server):
        st = RedisStorage(srv.url + "?ssl_cert_reqs=none")
        await st.connect()
        assert await st.execute("PING") == "PONG"
        st.close_now()
    st = RedisStorage(tls.url, ssl_cert_reqs=ssl.CERT_NONE, ssl_ca_certs=tls.certs.other_ca)
    await st.connect()
    st.close_now()


async def test_client_certificate_required(tls):
    tls.cli("CONFIG", "SET", "tls-auth-clients", "yes")
    try:
        st = RedisStorage(tls.url, **trusted(tls, ssl_certfile=tls.certs.client,
                                             ssl_keyfile=tls.certs.client_key))
        await st.connect()
        assert await st.execute("SET", "tls:client", "1") == "OK"
        st.close_now()
        # the key in the certificate file works as well
        both = os.path.join(tls.certs.dir, "client-both.pem")
        with open(both, "w") as f:
            f.write(open(tls.certs.client).read() + open(tls.certs.client_key).read())
        st = RedisStorage(tls.url, **trusted(tls, ssl_certfile=both))
        await st.connect()
        st.close_now()
        # without one: refused (TLS 1.3 says so after the handshake, on the
        # first request), a clear error, no hang
        st = RedisStorage(tls.url, **trusted(tls, connect_timeout=5, timeout=5))
        t0 = time.monotonic()
        with pytest.raises(RedisConnectionError, match="certificate|closed|reset"):
            await st.connect()
        assert time.monotonic() - t0 < 5
        st.close_now()
    finally:
        tls.cli("CONFIG", "SET", "tls-auth-clients", "optional")


async def test_plain_server_given_rediss_fails_within_connect_timeout(redis_server):
    st = RedisStorage(f"rediss://127.0.0.1:{redis_server.port}", ssl_cert_reqs="none",
                      connect_timeout=1.0, timeout=30)
    t0 = time.monotonic()
    # the server waits for a line end that the ClientHello may lack (then the
    # handshake times out) or answers an error that is no TLS record
    with pytest.raises((RedisConnectionError, RedisTimeoutError),
                       match="TLS handshake (timed out|failed)"):
        await st.connect()
    assert time.monotonic() - t0 < 10
    st.close_now()
    # and the plain server is fine afterwards
    plain = RedisStorage(redis_server.url)
    assert await plain.execute("PING") == "PONG"
    plain.close_now()


# ---------------------------------------------------------------- failures


async def test_server_killed_is_a_miss_then_reconnects(certs):
    with TlsRedisServer(certs) as srv:
        name = await register(srv.url, **trusted(srv, retry_backoff=0.01,
                                                 retry_backoff_max=0.05, timeout=2))
        Node, calls = make_node([cacheme.Cache(storage=name, ttl=None)])
        assert await cacheme.get(Node(1)) == {"uid": 1}
        srv.kill()
        # the storage fails: a miss, the value is loaded
        assert await cacheme.get(Node(2)) == {"uid": 2}
        assert calls == [1, 2]
        srv.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                await storage_of(name).execute("PING")
                break
            except RedisConnectionError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        Other, other_calls = make_node([cacheme.Cache(storage=name, ttl=None)])
        assert await cacheme.get(Other(3)) == {"uid": 3}
        assert await cacheme.get(Node(3)) == {"uid": 3}
        assert other_calls == [3] and calls == [1, 2]
        await storage_of(name).close()


# ---------------------------------------------------------------- cluster


async def test_tls_cluster(certs):
    try:
        cluster = TlsRedisCluster(certs).start()
    except RuntimeError as e:  # a redis-server built without TLS cluster support
        pytest.skip(f"no TLS cluster: {e}")
    try:
        name = await register(cluster.url, cluster=True, ssl_ca_certs=certs.ca)
        Node, calls = make_node([cacheme.Cache(storage=name, ttl=None)])
        keys = list(range(60))
        assert await cacheme.get_all([Node(i) for i in keys]) == [{"uid": i} for i in keys]
        Other, other_calls = make_node([cacheme.Cache(storage=name, ttl=None)])
        got = await asyncio.gather(*[cacheme.get(Other(i)) for i in keys])
        assert got == [{"uid": i} for i in keys] and other_calls == []
        # every master holds some: the discovered nodes were reached over TLS
        sizes = [int(n.cli("DBSIZE")) for n in cluster.nodes]
        assert all(s > 0 for s in sizes), sizes
        assert sum(sizes) == len(keys)
        await storage_of(name).close()
    finally:
        cluster.cleanup()


# ---------------------------------------------------------------- fork


def test_forked_child_uses_the_storage_and_parent_keeps_its_session(tls):
    out = run_python(f"""
        import asyncio, os, sys
        import cacheme
        from cacheme.storages.redis import RedisStorage

        st = RedisStorage({tls.url!r}, ssl_ca_certs={tls.certs.ca!r}, pool_size=1)
        loop = asyncio.new_event_loop()

        async def before():
            await st.connect()
            await st.execute("SET", "tls:fork", "parent")
        loop.run_until_complete(before())
        pid = os.fork()
        if pid == 0:
            async def child():
                assert await st.execute("GET", "tls:fork") == b"parent"
                await st.execute("SET", "tls:fork-child", "child")
            try:
                asyncio.run(child())
            except BaseException as e:
                print("child failed", repr(e), flush=True)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # the parent's TLS session was not touched by the child
        async def parent():
            assert await st.execute("GET", "tls:fork-child") == b"child"
            for _ in range(20):
                assert await st.execute("GET", "tls:fork") == b"parent"
        loop.run_until_complete(parent())
        print("ok", st._connections())
    """)
    assert out.strip() == "ok 1"


# ---------------------------------------------------------------- handshakes mid-stream


class SServer:
    """openssl s_server as a scripted Redis: what the client sends shows on
    its stdout, what is written to its stdin goes to the client (LF made
    CRLF), and a line "r" (TLS 1.2: renegotiate) or "K" (TLS 1.3: key
    update, the client's own requested) starts a handshake mid-stream."""

    def __init__(self, certs, version):
        self.port = free_port()
        self.lines = []
        self.proc = subprocess.Popen(
            [OPENSSL, "s_server", "-accept", str(self.port), "-cert", certs.server,
             "-key", certs.server_key, version, "-crlf", "-ign_eof"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 10
        while not any("ACCEPT" in line for line in self.lines):
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.01)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def say(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    async def wait_requests(self, n):
        deadline = time.monotonic() + 10
        while sum("PING" in line for line in self.lines) < n:
            assert time.monotonic() < deadline, "".join(self.lines[-20:])
            await asyncio.sleep(0.0005)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.mark.parametrize("version,command", [("-tls1_2", "r"), ("-tls1_3", "K")])
@pytest.mark.parametrize("busy_poll", [0, 0.002])
async def test_handshakes_mid_stream(certs, version, command, busy_poll):
    # a renegotiation or key update arrives while the client reads and
    # writes: OpenSSL's reads then write and its writes read (a write during
    # a renegotiation waits for the server's reply), and the stream goes on
    srv = SServer(certs, version)
    try:
        st = RedisStorage(f"rediss://127.0.0.1:{srv.port}", ssl_cert_reqs="none", pool_size=1,
                          busy_poll=busy_poll, timeout=10)
        n = 0
        for i in range(30):
            for _ in range(2):
                n += 1
                task = asyncio.ensure_future(st.execute("PING"))
                await srv.wait_requests(n)
                srv.say("+PONG")
                assert await task == "PONG"
            srv.say(command)
            await asyncio.sleep(0.0002 * (i % 10))
        # one more round trip after the last handshake started
        task = asyncio.ensure_future(st.execute("PING"))
        await srv.wait_requests(n + 1)
        srv.say("+PONG")
        assert await task == "PONG"
        assert sum("SSL_do_handshake -> 1" in line for line in srv.lines) == 30
        st.close_now()
    finally:
        srv.stop()


def test_writing_to_a_server_gone_is_an_error_not_sigpipe(certs):
    # a process that has not ignored SIGPIPE (an embedding program) is not
    # killed by a TLS write to a closed connection: plain sockets send with
    # MSG_NOSIGNAL, and so do TLS sessions
    with TlsRedisServer(certs) as srv:
        out = run_python(f"""
            import asyncio, signal, subprocess, time
            from cacheme.storages.redis import RedisStorage, RedisError

            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            st = RedisStorage({srv.url!r}, ssl_ca_certs={certs.ca!r}, pool_size=1,
                              retry_backoff=0.01, retry_backoff_max=0.01, busy_poll=0)

            async def main():
                await st.connect()
                # the next write goes out before the loop sees the server's
                # end: its first bytes draw a reset, the rest EPIPE
                subprocess.run(["kill", "-9", "{srv.proc.pid}"], check=True)
                time.sleep(0.2)
                errors = 0
                for _ in range(5):
                    try:
                        await st.execute("SET", "tls:big", b"x" * (1 << 20))
                    except RedisError:
                        errors += 1
                    await asyncio.sleep(0.02)
                return errors

            print("errors", asyncio.run(main()))
        """)
        srv.proc.wait()
        srv.proc = None
    assert out.split() == ["errors", "5"]


# ---------------------------------------------------------------- leaks


@pytest.mark.parametrize("busy_poll", [0.0, 0.0002])
def test_get_set_loop_does_not_leak(tls, busy_poll):
    from net_leak import check_no_leak

    check_no_leak(f"{tls.url}?ssl_ca_certs={tls.certs.ca}", busy_poll, "", n=6000)


CHURN = r'''
import asyncio, sys
from cacheme.storages.redis import RedisStorage

url, ca = sys.argv[1], sys.argv[2]

async def main():
    st = RedisStorage(url, ssl_ca_certs=ca, pool_size=2)
    bad = RedisStorage(url, ssl_ca_certs=sys.argv[3], retry_backoff=0.001,
                       retry_backoff_max=0.001)

    async def cycle():
        # a context and sessions made and dropped; a handshake that fails
        await st.connect()
        await asyncio.gather(st.execute("PING"), st.execute("PING"))
        await st.close()
        try:
            await bad.connect()
        except Exception:
            pass
        await bad.close()

    for _ in range(100):
        await cycle()
    before = snapshot()
    for _ in range(600):
        await cycle()
    after = snapshot()
    print(before[0], after[0], before[1], after[1])

asyncio.run(main())
'''


def test_connect_close_churn_does_not_leak(tls):
    code = "import sys; sys.argv[1:] = %r\n" % [tls.url, tls.certs.ca, tls.certs.other_ca]
    # an SSL_CTX with its CA store, or a session, leaked per cycle would be
    # several MiB over 600 cycles
    assert_flat(run_python(code + LEAK_SNAPSHOT + CHURN), rss_kib=2048)
