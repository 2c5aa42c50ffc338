"""Write the seed corpus of fuzz_serializer into a directory: each file is a
mode byte (see fuzz_serializer.c) followed by bytes our serializers wrote
for the 0.3.0 value table, plus a few broken ones."""
import dataclasses
import datetime
import decimal
import enum
import os
import pickle
import sys
import uuid
import zlib

from cacheme.serializer import (
    CompressedJSONSerializer,
    CompressedMsgPackSerializer,
    JSONSerializer,
    MsgPackSerializer,
)


@dataclasses.dataclass
class D:  # same shape as the class the harness defines in __main__
    a: int = 0
    b: list = None
    c: "D" = None


D.__module__ = "__main__"
sys.modules["__main__"].D = D

VALUES = [
    None, True, False, 0, -1, 127, 128, -33, 2**31, 2**63 - 1, -(2**63), 2**64 - 1,
    1.5, -0.0, "", "héllo ✓", "x" * 40, "y" * 300, b"bin", [], {}, (), [1, [2, [3]]],
    {"a": {"b": {"c": [1, 2.5, "s"]}}}, {1: "int key", 2.5: "float key"},
    datetime.datetime(2023, 1, 2, 3, 4, 5, 6789), datetime.date(2023, 1, 2),
    datetime.time(1, 2, 3), datetime.timedelta(days=1, seconds=3.5),
    decimal.Decimal("1.25"), uuid.UUID(int=7), {1, 2}, frozenset({"a"}),
    D(a=1, b=[D(a=2)], c=D(a=3)),
    # lists of records: the decoder's map templates (made, predicted, nested)
    [{"id": i, "name": "n", "tags": ["a"], "friends": [{"id": j, "name": "f"} for j in range(2)],
      "x1": 1, "x2": None} for i in range(4)],
    [{"k1": 1, "k2": 2}, {"k2": 2, "k1": 1}, {"k1": 1, "k2": 2}, {"k1": 1, "k2": 2, "k3": 3}],
]


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    sers = [MsgPackSerializer(), CompressedMsgPackSerializer(), JSONSerializer(),
            CompressedJSONSerializer()]
    n = 0
    for mode, ser in enumerate(sers):
        for v in VALUES:
            try:
                blob = ser.dumps(v)
            except TypeError:
                continue
            with open(os.path.join(out, f"seed-{mode}-{n:03d}"), "wb") as f:
                f.write(bytes([mode]) + blob)
            n += 1
    for i, blob in enumerate([zlib.compress(b"x" * 1000, 3), zlib.compress(b"\x93\x01\x02\x03")]):
        with open(os.path.join(out, f"seed-4-{i}"), "wb") as f:
            f.write(b"\x04" + blob)
    # raw pickles for modes 5 and 6 (the harness adds base64 / zlib): the value
    # table at every protocol, and globals the allowlist must refuse
    raws = []
    for v in VALUES:
        for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
            try:
                raws.append(pickle.dumps(v, protocol=proto))
            except (TypeError, pickle.PicklingError, AttributeError):
                pass
    raws += [
        b"c__main__\nboom\n(tR.",
        b"\x80\x04\x8c\x08__main__\x8c\x04boom\x93)R.",
        b"\x80\x04\x8c\x08__main__\x8c\x04Evil\x93)\x81.",
        b"cposix\nsystem\n(Vtrue\ntR.",
        b"cbuiltins\neval\n(V1\ntR.",
        b"cbuiltins\ngetattr\n(cbuiltins\nbool\nVmro\ntR.",
        b"\x80\x02\x82\xce)R.",
        b"\x80\x04cenum\nEnum\nVX\nVa b\n\x86R.",
        b"\x80\x04cdatetime\ntimezone\ncdatetime\ntimedelta\nK\x01\x85R\x85R.",
    ]
    for mode in (5, 6):
        for i, raw in enumerate(raws):
            with open(os.path.join(out, f"seed-{mode}-{i:03d}"), "wb") as f:
                f.write(bytes([mode]) + raw)


def resp_seeds(out: str) -> None:
    """fuzz_resp: 3 bytes of limits and chunk size, then server bytes"""
    os.makedirs(out, exist_ok=True)
    replies = [
        b"+OK\r\n", b"-ERR x\r\n", b":42\r\n", b"$-1\r\n", b"*-1\r\n", b"$3\r\nabc\r\n",
        b"*2\r\n$1\r\na\r\n$-1\r\n", b"*2147483647\r\n", b"$2147483647\r\n" + b"x" * 300,
        b"*3\r\n*2\r\n:1\r\n:2\r\n$2\r\nok\r\n*1\r\n*1\r\n*1\r\n:0\r\n",
        b"*1\r\n" * 12 + b":1\r\n", b"+" + b"s" * 5000 + b"\r\n",
        b"$5\r\nhello\r\n+PONG\r\n:1\r\n*0\r\n",
    ]
    for i, r in enumerate(replies):
        for j, head in enumerate([b"\x14\x14\x40", b"\x02\x04\x07", b"\x00\x00\x00"]):
            with open(os.path.join(out, f"resp-{i:02d}-{j}"), "wb") as f:
                f.write(head + r)


if __name__ == "__main__":
    main(sys.argv[1])
    if len(sys.argv) > 2:
        resp_seeds(sys.argv[2])
