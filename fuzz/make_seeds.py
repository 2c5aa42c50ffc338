"""Write the seed corpus of fuzz_serializer into a directory: each file is a
mode byte (see fuzz_serializer.c) followed by bytes our serializers wrote
for the 0.3.0 value table, plus a few broken ones."""
import dataclasses
import datetime
import decimal
import enum
import os
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


if __name__ == "__main__":
    main(sys.argv[1])
