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
