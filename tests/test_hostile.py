"""Hostile bytes (issue 21): decoding never runs code, every size is bounded.

- pickle: the default unpickler builds only allowed classes and never calls a
  function the bytes name; secret= signs payloads for full pickle;
- zlib: inflating stops at max_size, with memory near the cap;
- Redis: a reply announcing a huge aggregate or bulk fails that connection at
  once, the callers get an answer (a miss for reads), the client reconnects.
"""
import asyncio
import base64
import copyreg
import dataclasses
import datetime
import decimal
import enum
import functools
import logging
import os
import pickle
import subprocess
import sys
import uuid
import zlib

import pytest

import cacheme
import ser030_models as m
from cacheme import Cache, Node, serializer as S
from cacheme.serializer import SerializerError
from conftest import run_python, unique

PICKLES = [S.PickleSerializer, S.CompressedPickleSerializer]


def _wrap(ser, raw):
    """raw pickle bytes as ser stores them"""
    blob = base64.encodebytes(raw)
    return zlib.compress(blob, 3) if isinstance(ser, S.CompressedSerializer) else blob


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _evil_pickles(marker):
    """pickles that, loaded by plain pickle, create the file marker"""
    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    out = {
        "os.system": pickle.dumps(_Reduce(os.system, (cmd,)), protocol=4),
        "os.system-proto0": pickle.dumps(_Reduce(os.system, (cmd,)), protocol=0),
        "builtins.eval": pickle.dumps(_Reduce(eval, (code,)), protocol=4),
        "builtins.exec": pickle.dumps(_Reduce(exec, (code,)), protocol=2),
        "subprocess.Popen": pickle.dumps(_Reduce(subprocess.Popen, (["touch", str(marker)],))),
        "functools.partial": pickle.dumps(
            _Reduce(functools.partial(eval, code), ())
        ),
        # posix.system spelled by hand, protocol 0 GLOBAL + REDUCE
        "posix.system": b"cposix\nsystem\n(V" + cmd.encode() + b"\ntR.",
        # getattr(builtins, 'eval') through REDUCE, then call it
        "builtins.getattr": b"\x80\x04cbuiltins\ngetattr\ncbuiltins\nbool\nVmro\n\x86R.",
        # copyreg helpers that call what they are given
        "copyreg._reconstructor": b"ccopyreg\n_reconstructor\n(cos\n_Environ\ncbuiltins\nobject\n"
        b"NtR.",
    }
    return out


@pytest.mark.parametrize("cls", PICKLES, ids=lambda c: c.__name__)
def test_pickle_never_calls_a_function_the_bytes_name(cls, tmp_path):
    marker = tmp_path / "pwned"
    ser = cls()
    for name, raw in _evil_pickles(marker).items():
        with pytest.raises(SerializerError) as ei:
            ser.loads(_wrap(ser, raw))
        assert "refusing the global" in str(ei.value), name
        assert not marker.exists(), name


@pytest.mark.parametrize("cls", PICKLES, ids=lambda c: c.__name__)
def test_pickle_extension_codes_go_through_the_allowlist(cls, tmp_path):
    marker = tmp_path / "pwned"
    copyreg.add_extension("posix", "system", 0xCE)
    try:
        raw = pickle.dumps(_Reduce(os.system, (f"touch {marker}",)), protocol=2)
        assert b"\x82\xce" in raw and b"system" not in raw  # EXT1, not a GLOBAL
    finally:
        copyreg.remove_extension("posix", "system", 0xCE)
    copyreg.add_extension("posix", "system", 0xCE)
    try:
        with pytest.raises(SerializerError, match="refusing the global"):
            cls().loads(_wrap(cls(), raw))
    finally:
        copyreg.remove_extension("posix", "system", 0xCE)
    assert not marker.exists()


class Shade(enum.Enum):
    DARK = 1


@dataclasses.dataclass
class Box:
    when: datetime.datetime
    tags: frozenset
    shade: Shade


class Opaque:
    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return type(other) is Opaque and other.x == self.x


def test_pickle_allowed_value_types_round_trip_every_protocol_from_3():
    value = {
        "dt": datetime.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=datetime.timezone.utc),
        "dtz": datetime.datetime(2024, 5, 6, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        "d": datetime.date(2024, 1, 2),
        "t": datetime.time(3, 4, 5),
        "td": datetime.timedelta(days=1, seconds=2),
        "dec": decimal.Decimal("1.25"),
        "u": uuid.UUID(int=7),
        "s": {1, 2},
        "fs": frozenset({"a"}),
        "ba": bytearray(b"xy"),
        "c": 1 + 2j,
        "b": b"bytes",
        "box": Box(datetime.datetime(2020, 1, 1), frozenset({1}), Shade.DARK),
        "color": m.Color.GREEN,
        "nested": [(1, 2.5, None, True, "s")],
    }
    for proto in range(3, pickle.HIGHEST_PROTOCOL + 1):
        for cls in PICKLES:
            ser = cls()
            assert ser.loads(_wrap(ser, pickle.dumps(value, protocol=proto))) == value


@pytest.mark.parametrize("cls", PICKLES, ids=lambda c: c.__name__)
def test_pickle_other_classes_only_when_named(cls):
    blob = cls().dumps([Opaque(1)])
    with pytest.raises(SerializerError, match="test_hostile.Opaque"):
        cls().loads(blob)
    assert cls(allowed=[Opaque]).loads(blob) == [Opaque(1)]
    # naming one class does not open the others
    with pytest.raises(SerializerError, match="posix.system"):
        cls(allowed=[Opaque]).loads(_wrap(cls(), pickle.dumps(_Reduce(os.system, ("true",)))))


@dataclasses.dataclass
class Victim:
    x: int = 1


@dataclasses.dataclass(slots=True)
class SlottedVictim:
    x: int = 1


@pytest.mark.parametrize("cls", PICKLES, ids=lambda c: c.__name__)
def test_pickle_cannot_rewrite_an_allowed_class(cls):
    # GLOBAL Victim, then BUILD with a (None, slotstate) pair: setattr on the
    # class itself, for the whole process, if the unpickler let it through
    for target in (Victim, SlottedVictim):
        name = target.__name__.encode()
        raw = (b"\x80\x04ctest_hostile\n" + name + b"\nN}(X\x01\x00\x00\x00xKcX\x08\x00\x00\x00"
               b"__repr__K\x01u\x86b.")
        with pytest.raises(SerializerError, match="immutable type"):
            cls().loads(_wrap(cls(), raw))
        assert target.x == 1 and "__repr__" not in vars(target) or callable(vars(target)["__repr__"])
        assert repr(target(2)) == f"{target.__name__}(x=2)"
        # the class is mutable again after the load, and instances still build
        target.extra = 5
        del target.extra
        value = [target(3), {"k": target(4)}]
        assert cls().loads(cls().dumps(value)) == value


def test_pickle_refuses_a_functional_enum_call():
    # enum.Enum itself (no members) would make a new class when called with names
    raw = b"\x80\x04cenum\nEnum\nVX\nVa b\n\x86R."
    with pytest.raises(SerializerError, match="refusing the global enum.Enum"):
        S.PickleSerializer().loads(base64.encodebytes(raw))


def test_pickle_reads_what_030_wrote():
    # bytes written by cacheme 0.3.0 itself: allowed values decode, a plain class
    # needs allowed=, and a payload calling a function is refused
    py030 = os.path.join(os.path.dirname(__file__), "..", ".bench", "venv-sql-030", "bin", "python")
    if not os.path.exists(py030):
        pytest.skip("cacheme 0.3.0 venv not built (make test-venvs)")
    code = (
        "import sys, datetime, decimal, uuid; sys.path.insert(0, %r)\n"
        "import ser030_models as m\n"
        "from cacheme.serializer import PickleSerializer, CompressedPickleSerializer\n"
        "v = {'dt': m.DT_UTC, 'dec': decimal.Decimal('2.5'), 'u': uuid.UUID(int=9), 's': {1},"
        " 'p': m.Point(1, 2), 'c': m.Color.RED, 'td': datetime.timedelta(3)}\n"
        "for S in (PickleSerializer, CompressedPickleSerializer):\n"
        "    print(S().dumps(v).hex()); print(S().dumps(m.Plain(1, 2)).hex())\n"
    ) % os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([py030, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    lines = out.stdout.split()
    expect = {"dt": m.DT_UTC, "dec": decimal.Decimal("2.5"), "u": uuid.UUID(int=9), "s": {1},
              "p": m.Point(1, 2), "c": m.Color.RED, "td": datetime.timedelta(3)}
    for i, cls in enumerate(PICKLES):
        values, plain = bytes.fromhex(lines[2 * i]), bytes.fromhex(lines[2 * i + 1])
        assert cls().loads(values) == expect
        assert cls().dumps(expect) == values  # and we write the same bytes
        with pytest.raises(SerializerError, match="ser030_models.Plain"):
            cls().loads(plain)
        assert cls(allowed=[m.Plain]).loads(plain) == m.Plain(1, 2)


@pytest.mark.parametrize("cls", PICKLES, ids=lambda c: c.__name__)
def test_signed_pickle_is_full_pickle_and_refuses_the_rest(cls, tmp_path):
    ser = cls(secret=b"k" * 32)
    value = [Opaque(3), functools.partial(int, base=2)]
    back = ser.loads(ser.dumps(value))
    assert back[0] == Opaque(3) and back[1]("101") == 5
    # unsigned, signed with another secret, or tampered: refused before unpickling
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Reduce(os.system, (f"touch {marker}",)))
    with pytest.raises(SerializerError, match="unsigned payload refused"):
        ser.loads(_wrap(ser, evil))
    other = cls(secret=b"j" * 32).dumps(_Reduce(os.system, (f"touch {marker}",)))
    assert not marker.exists()
    with pytest.raises(SerializerError, match="signature does not match"):
        ser.loads(other)
    raw = base64.decodebytes(zlib.decompress(ser.dumps(1)) if cls is PICKLES[1] else ser.dumps(1))
    tampered = raw[:36] + evil
    with pytest.raises(SerializerError, match="signature does not match"):
        ser.loads(_wrap(ser, tampered))
    assert not marker.exists()
    assert cls(secret="k" * 32).loads(ser.dumps(2)) == 2  # str secrets are their UTF-8
    with pytest.raises(SerializerError):
        cls().loads(ser.dumps(2))  # a signed payload is not a plain pickle


def test_pickle_options_are_checked():
    with pytest.raises(TypeError, match="allowed"):
        S.PickleSerializer(allowed=3)
    with pytest.raises(ValueError, match="secret"):
        S.PickleSerializer(allowed=[Opaque], secret=b"k")
    with pytest.raises(ValueError, match="empty"):
        S.PickleSerializer(secret=b"")
    with pytest.raises(TypeError):
        S.PickleSerializer([Opaque])  # keywords only
    with pytest.raises(TypeError, match="PickleSerializer option"):
        S.CompressedJSONSerializer(allowed=[Opaque])


async def test_refused_pickle_in_storage_is_a_logged_miss_and_reload(tmp_path, caplog):
    from test_serializer import BytesStorage

    storage = BytesStorage()
    name = unique("hostile")
    await cacheme.register_storage(name, storage)
    loads = []

    @dataclasses.dataclass
    class Item(Node):
        id: int

        def key(self):
            return f"item:{self.id}"

        async def load(self):
            loads.append(self.id)
            return {"n": len(loads)}

        class Meta(Node.Meta):
            version = "v1"
            caches = [Cache(storage=name, ttl=None)]
            serializer = S.PickleSerializer()

    assert await cacheme.get(Item(1)) == {"n": 1}
    (key,) = storage.data
    marker = tmp_path / "pwned"
    storage.data[key] = base64.encodebytes(pickle.dumps(_Reduce(os.system, (f"touch {marker}",))))
    with caplog.at_level(logging.WARNING, logger="cacheme"):
        assert await cacheme.get(Item(1)) == {"n": 2}
    assert not marker.exists()
    assert loads == [1, 1]
    assert any("refusing the global" in r.getMessage() or "refusing the global" in str(r.exc_info)
               for r in caplog.records)
    assert S.PickleSerializer().loads(storage.data[key]) == {"n": 2}  # repaired


# ---- zlib: inflating stops at max_size, with memory near the cap ----

_BOMB = r"""
import json, resource, time, zlib
from cacheme import serializer as S
co = zlib.compressobj(9)
chunk = b"\0" * (1 << 20)
bomb = b"".join(co.compress(chunk) for _ in range(256)) + co.flush()  # 256 MiB of zeros
del chunk, co
out = {"bomb": len(bomb)}
for label, ser in [("pickle-4MiB", S.CompressedPickleSerializer(max_size=4 << 20)),
                   ("default", S.CompressedMsgPackSerializer())]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.process_time()
    try:
        ser.loads(bomb)
        err = None
    except S.SerializerError as e:
        err = str(e)
    out[label] = {"err": err, "cpu": time.process_time() - t,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before}
print(json.dumps(out))
"""


def test_zlib_bomb_stops_at_max_size_with_memory_near_the_cap():
    import json

    out = json.loads(run_python(_BOMB))
    assert out["bomb"] < 2 << 20
    assert S.CompressedMsgPackSerializer().max_size == 64 << 20
    for label, cap in [("default", 64 << 20), ("pickle-4MiB", 4 << 20)]:
        r = out[label]
        assert r["err"] is not None and "exceeds the size limit" in r["err"], r
        # the cap plus allocator slack, not the 256 MiB the stream holds
        assert r["peak"] < cap + (16 << 20), (label, r)
        # inflating 64 MiB of zeros is ~0.1 s of CPU
        assert r["cpu"] < 1.0, (label, r)


@pytest.mark.parametrize("n", [0, 1, 1000, 4096, 65536, 1 << 20])
def test_zlib_output_of_exactly_max_size_decodes(n):
    class C(S.CompressedSerializer):
        serializer = S.JSONSerializer()

    value = "x" * n
    blob = C().dumps(value)
    size = len(S.JSONSerializer().dumps(value))
    assert C(max_size=size).loads(blob) == value
    with pytest.raises(SerializerError, match="exceeds the size limit"):
        C(max_size=size - 1).loads(blob)


def test_zlib_max_size_is_checked():
    for bad in [0, -1, 2**64, 1.5, "1", True]:
        with pytest.raises((TypeError, ValueError), match="max_size"):
            S.CompressedJSONSerializer(max_size=bad)
    assert S.CompressedJSONSerializer(max_size=None).max_size == 64 << 20
    assert S.CompressedJSONSerializer(max_size=10).max_size == 10


# ---- Redis: a reply announcing a huge aggregate or bulk fails the connection at once ----


class FakeRedis:
    """A tiny RESP server: PING/SET answered, GET answered with self.reply."""

    def __init__(self):
        self.reply = b"$-1\r\n"
        self.tail = b""  # sent after the reply, in chunks, while the client listens
        self.connections = 0
        self.closed_by_client = 0
        self.sent_tail = 0

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    @staticmethod
    def _commands(buf):
        cmds = []
        while buf.startswith(b"*") and b"\r\n" in buf:
            head, rest = buf.split(b"\r\n", 1)
            args = []
            for _ in range(int(head[1:])):
                if b"\r\n" not in rest:
                    return cmds, buf
                ln, rest2 = rest.split(b"\r\n", 1)
                n = int(ln[1:])
                if len(rest2) < n + 2:
                    return cmds, buf
                args.append(rest2[:n])
                rest = rest2[n + 2:]
            cmds.append(args)
            buf = rest
        return cmds, buf

    async def handle(self, reader, writer):
        self.connections += 1
        buf = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    self.closed_by_client += 1
                    return
                cmds, buf = self._commands(buf + data)
                for args in cmds:
                    cmd = args[0].upper()
                    if cmd == b"PING":
                        writer.write(b"+PONG\r\n")
                    elif cmd in (b"SET", b"SETEX"):
                        writer.write(b"+OK\r\n")
                    elif cmd == b"GET":
                        writer.write(self.reply)
                        tail = self.tail
                        for i in range(0, len(tail), 1 << 16):
                            writer.write(tail[i:i + (1 << 16)])
                            await writer.drain()
                            self.sent_tail += 1 << 16
                    else:
                        writer.write(b"-ERR unknown command\r\n")
                await writer.drain()
        except (ConnectionError, OSError):
            self.closed_by_client += 1
        finally:
            writer.close()


async def _max_gap_while(coro):
    """(result or exception, the longest the loop went without running a tick)"""
    gaps, stop = [0.0], asyncio.Event()
    loop = asyncio.get_running_loop()

    async def tick():
        last = loop.time()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps[0] = max(gaps[0], now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    try:
        res = await coro
    except Exception as e:  # noqa: BLE001 - returned to the test
        res = e
    stop.set()
    await ticker
    return res, gaps[0]


async def _redis_storage(port, **opts):
    from cacheme.storages.redis import RedisStorage

    opts.setdefault("retry_backoff", 0.001)
    opts.setdefault("retry_backoff_max", 0.001)
    storage = RedisStorage(f"redis://127.0.0.1:{port}", pool_size=1, **opts)
    await storage.connect()
    return storage


async def test_redis_huge_aggregate_fails_the_connection_at_once():
    from cacheme.storages.redis import RedisConnectionError

    fake = FakeRedis()
    port = await fake.start()
    storage = await _redis_storage(port, timeout=5)
    fake.reply = b"*2147483647\r\n"  # 13 bytes: a list of 2**31 - 1 elements
    t0 = asyncio.get_running_loop().time()
    res, gap = await _max_gap_while(storage.execute("GET", "k"))
    elapsed = asyncio.get_running_loop().time() - t0
    assert isinstance(res, RedisConnectionError), res
    assert "max_reply_elements=1048576" in str(res)
    assert elapsed < 2.5  # answered when the header arrives, not at timeout=5
    assert gap < 2.0  # (bfec305 froze the loop ~8 s freeing the 16 GiB list)
    # the next request reconnects and works
    fake.reply = b"$-1\r\n"
    await asyncio.sleep(0.05)  # the 1 ms reconnect backoff
    assert await storage.execute("GET", "k") is None
    assert fake.connections == 2
    # a configured bound: 4 elements pass, 5 do not
    small = await _redis_storage(port, max_reply_elements=4)
    fake.reply = b"*4\r\n:1\r\n:2\r\n:3\r\n:4\r\n"
    assert await small.execute("GET", "k") == [1, 2, 3, 4]
    fake.reply = b"*5\r\n"
    with pytest.raises(RedisConnectionError, match="max_reply_elements=4"):
        await small.execute("GET", "k")
    small.close_now()
    storage.close_now()
    fake.server.close()


async def test_redis_huge_bulk_fails_the_connection_with_memory_bounded():
    from cacheme.storages.redis import RedisConnectionError

    fake = FakeRedis()
    port = await fake.start()
    storage = await _redis_storage(port, timeout=5, max_bulk_bytes=1 << 20)
    # a header announcing more than the bound fails at once, not at timeout=5
    fake.reply = b"$1048577\r\n"
    t0 = asyncio.get_running_loop().time()
    with pytest.raises(RedisConnectionError, match="max_bulk_bytes=1048576"):
        await storage.execute("GET", "k")
    assert asyncio.get_running_loop().time() - t0 < 2.5
    await asyncio.sleep(0.05)  # the 1 ms reconnect backoff
    fake.connections = fake.closed_by_client = 0
    # a bulk without a usable header, streaming: cut once the reader holds the bound
    fake.reply = b"$" + b"1" * 30  # digits only: no length to judge yet
    fake.tail = b"x" * (32 << 20)  # streams on until the client hangs up
    res, gap = await _max_gap_while(storage.execute("GET", "k"))
    assert isinstance(res, RedisConnectionError), res
    assert "max_bulk_bytes=1048576" in str(res)
    assert gap < 2.0
    for _ in range(200):  # the server sees the hang-up
        if fake.closed_by_client:
            break
        await asyncio.sleep(0.01)
    assert fake.closed_by_client == 1
    assert fake.sent_tail < (16 << 20)  # stopped long before the 32 MiB were read
    # a bulk of exactly the bound is fine, on a new connection
    fake.reply, fake.tail = b"$1048576\r\n" + b"y" * (1 << 20) + b"\r\n", b""
    await asyncio.sleep(0.05)  # the 1 ms reconnect backoff
    assert await storage.execute("GET", "k") == b"y" * (1 << 20)
    assert fake.connections == 2  # since the reset: the streaming one, and this one
    # an integer whose digits outnumber a small bound is no bulk header, even split
    small = await _redis_storage(port, max_bulk_bytes=4)
    fake.reply, fake.tail = b":12345678", b"901\r\n"
    assert await small.execute("GET", "k") == 12345678901
    small.close_now()
    storage.close_now()
    fake.server.close()


async def test_redis_hostile_reply_is_a_miss_and_reload():
    fake = FakeRedis()
    port = await fake.start()
    name = unique("fake-redis")
    await cacheme.register_storage(
        name, cacheme.Storage(url=f"redis://127.0.0.1:{port}", timeout=5))
    loads = []

    @dataclasses.dataclass
    class Item(Node):
        id: int

        def key(self):
            return f"item:{self.id}"

        async def load(self):
            loads.append(self.id)
            return self.id * 10

        class Meta(Node.Meta):
            version = "v1"
            caches = [Cache(storage=name, ttl=None)]

    fake.reply = b"*2147483647\r\n"
    t0 = asyncio.get_running_loop().time()
    assert await cacheme.get(Item(3)) == 30
    assert asyncio.get_running_loop().time() - t0 < 2.5  # not the 5 s timeout
    assert loads == [3]
    fake.server.close()


def test_redis_bound_options_are_checked():
    from cacheme.storages.redis import RedisStorage

    for opt, bad in [("max_reply_elements", 0), ("max_reply_elements", 2**40),
                     ("max_bulk_bytes", 0), ("max_bulk_bytes", -5)]:
        with pytest.raises(ValueError, match=opt):
            RedisStorage("redis://127.0.0.1:1", **{opt: bad})
    RedisStorage("redis://127.0.0.1:1?max_bulk_bytes=1000&max_reply_elements=10").close_now()
