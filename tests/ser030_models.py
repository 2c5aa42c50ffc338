"""The cacheme 0.3.0 serializer value table, shared by tests/test_serializer.py,
benchmarks/gen_vectors_030.py (run with cacheme 0.3.0 and pydantic 1.x) and
benchmarks/roundtrip_030.py. Classes live here so that both sides name them
``ser030_models.<Name>``. Works with pydantic v1, v2 or without pydantic."""
import dataclasses
import datetime
import decimal
import enum
import uuid
from typing import Any, Dict, List, Optional, Tuple

try:
    import pydantic
except ImportError:  # pragma: no cover - pydantic is optional
    pydantic = None

try:  # a pydantic v1 model, also under pydantic 2 (pydantic.v1) and >= 1.10.17
    from pydantic import v1 as pydantic_v1
except ImportError:  # pragma: no cover
    pydantic_v1 = None


class Color(enum.Enum):
    RED = 1
    GREEN = "green"


@dataclasses.dataclass
class Point:
    x: int
    y: float
    tags: List[str] = dataclasses.field(default_factory=list)
    when: Optional[datetime.datetime] = None


@dataclasses.dataclass
class Line:
    start: Point
    end: Point
    points: List[Point] = dataclasses.field(default_factory=list)
    span: Tuple[int, ...] = ()


class Plain:
    """A plain object: only pickle can store it."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a = a
        self.b = b

    def __eq__(self, other: Any) -> bool:
        return type(other) is Plain and (self.a, self.b) == (other.a, other.b)


if pydantic is not None:

    class User(pydantic.BaseModel):
        id: int
        name: str
        created: datetime.datetime
        friends: List[int] = []


if pydantic_v1 is not None:

    class UserV1(pydantic_v1.BaseModel):
        id: int
        name: str
        created: datetime.datetime


UTC = datetime.timezone.utc
DT = datetime.datetime(2023, 1, 19, 14, 30, 15, 123456)
DT_UTC = datetime.datetime(2023, 1, 19, 14, 30, 15, 123456, tzinfo=UTC)

INTS = [0, 1, -1, 127, 128, 255, 256, -32, -33, -128, -129, 65535, 65536, -32768, -32769,
        2**31 - 1, 2**31, 2**32 - 1, 2**32, -(2**31), -(2**31) - 1, 2**63 - 1, -(2**63), 2**64 - 1]

# name -> (value, families); families: "all" = every serializer, or a subset
# of {"pickle", "json", "msgpack"}.
def value_table() -> Dict[str, Tuple[Any, Tuple[str, ...]]]:
    t: Dict[str, Tuple[Any, Tuple[str, ...]]] = {
        "none": (None, ("all",)),
        "true": (True, ("all",)),
        "false": (False, ("all",)),
        "empty_list": ([], ("all",)),
        "empty_dict": ({}, ("all",)),
        "empty_tuple": ((), ("all",)),
        "tuple": ((1, "a", (2, 3)), ("all",)),
        "ints": (INTS, ("all",)),
        "floats": ([0.0, -0.0, 1.5, 3.141592653589793, 1e300, -2.5e-10], ("all",)),
        "str_empty": ("", ("all",)),
        "str_ascii": ("hello", ("all",)),
        "str_unicode": ("héllo wörld ✓ 日本語 🎉", ("all",)),
        "str_lengths": (["x" * 31, "x" * 32, "y" * 255, "y" * 256], ("all",)),
        "str_65536": ("z" * 65536, ("msgpack",)),  # str32 in MessagePack
        "nested": ({"a": [1, {"b": [2, 3, {"c": None}]}], "d": {"e": {"f": "g"}}, "h": [[[]]]},
                   ("all",)),
        "bytes": (b"raw bytes", ("all",)),
        "datetime": (DT, ("all",)),
        "datetime_utc": (DT_UTC, ("all",)),
        "date": (datetime.date(2023, 1, 19), ("all",)),
        "time": (datetime.time(14, 30, 15, 5), ("all",)),
        "timedelta": (datetime.timedelta(days=1, seconds=3, microseconds=500000), ("all",)),
        "decimal": ([decimal.Decimal("1.25"), decimal.Decimal("10")], ("all",)),
        "uuid": (uuid.UUID("7876d7af-1b0c-4cff-9a23-9239f9652f16"), ("all",)),
        "enum": (Color.RED, ("all",)),
        "enum_str": ([Color.GREEN], ("all",)),
        "set": ({1, 2, 3}, ("all",)),
        "frozenset": (frozenset({"a"}), ("all",)),
        "dataclass": (Point(1, 2.5, ["a", "b"], DT), ("all",)),
        "dataclass_nested": (Line(Point(0, 0.0), Point(1, 1.0, when=DT_UTC), [Point(2, 2.0)],
                                  (1, 2)), ("all",)),
        "cached_record": ({"value": {"id": 1, "items": [1, 2]}, "updated_at": DT_UTC}, ("all",)),
        "int_keys": ({1: "a", -2: [1], 3.5: None}, ("msgpack", "pickle")),
        "binary_bytes": (b"\x00\xff\x80", ("msgpack", "pickle")),
        "big_int": (2**100, ("pickle",)),
        "plain_object": (Plain(1, [2, "three"]), ("pickle",)),
    }
    if pydantic is not None:
        t["pydantic"] = (User(id=1, name="ann", created=DT_UTC, friends=[2, 3]),
                         ("json", "msgpack"))
    if pydantic_v1 is not None:
        t["pydantic_v1"] = (UserV1(id=2, name="bob", created=DT), ("json", "msgpack"))
    return t


def expected_after(value: Any, family: str) -> Any:
    """What loads(dumps(value)) gives: JSON and MessagePack return tuples as lists
    (JSON also makes dict keys strings, which the table avoids for JSON)."""
    if family == "pickle":
        return value
    if isinstance(value, tuple):
        return [expected_after(v, family) for v in value]
    if isinstance(value, list):
        return [expected_after(v, family) for v in value]
    if isinstance(value, dict):
        return {k: expected_after(v, family) for k, v in value.items()}
    return value


def families_of(serializer_name: str) -> str:
    n = serializer_name.lower()
    return "pickle" if "pickle" in n else "json" if "json" in n else "msgpack"


SERIALIZERS = [
    "PickleSerializer",
    "JSONSerializer",
    "MsgPackSerializer",
    "CompressedPickleSerializer",
    "CompressedJSONSerializer",
    "CompressedMsgPackSerializer",
]
