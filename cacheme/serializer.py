"""Serializers, under their cacheme 0.3.0 names and byte formats.

The work is done in C (``cacheme._core``): MessagePack with msgpack-c, zlib,
pickle and JSON through CPython's C accelerators, and the 0.3.0 object
encoding ``{"__class__": "<module>.<qualname>", "data": ...}`` for values
JSON/MessagePack cannot hold (datetime, date, time, timedelta, Decimal, UUID,
Enum, set, frozenset, dataclasses, pydantic v1/v2 models, ...).

Decoding never imports and never calls a function the bytes name:
``__class__`` (and pickle's globals) are looked up among modules already in
``sys.modules``, and only known value types, Enums, dataclasses and pydantic
models are built (pickle also set, frozenset, bytearray, complex,
datetime.timezone, and the classes in ``PickleSerializer(allowed=[...])``).
``PickleSerializer(secret=...)`` signs payloads (HMAC-SHA256) and loads only
signed ones, with full pickle. ``Compressed*(max_size=...)`` bounds inflating
(64 MiB by default). Bytes that cannot be decoded raise
:class:`SerializerError` (an ``Exception``), which ``get`` treats as a miss
for that storage.

Any object with ``dumps(obj) -> bytes`` and ``loads(bytes)`` is a serializer
too; subclass :class:`CompressedSerializer` and set ``serializer`` to zlib it.
"""
from typing import Any, Protocol

from cacheme._core import (
    CompressedSerializer,
    JSONSerializer,
    MsgPackSerializer,
    PickleSerializer,
    SerializerError,
    object_decoder,
    object_encoder,
    resolve_class,
)


class Serializer(Protocol):
    def dumps(self, obj: Any) -> bytes:
        raise NotImplementedError()

    def loads(self, blob: bytes) -> Any:
        raise NotImplementedError()


def to_qualified_name(obj: Any) -> str:
    return obj.__module__ + "." + obj.__qualname__


def from_qualified_name(name: str) -> Any:
    """The class named ``module.QualName``, among already imported modules only
    (0.3.0 imported the module; we never do)."""
    return resolve_class(name)


class CompressedPickleSerializer(CompressedSerializer):
    serializer: Serializer = PickleSerializer()


class CompressedJSONSerializer(CompressedSerializer):
    serializer: Serializer = JSONSerializer()


class CompressedMsgPackSerializer(CompressedSerializer):
    serializer: Serializer = MsgPackSerializer()


__all__ = [
    "CompressedJSONSerializer",
    "CompressedMsgPackSerializer",
    "CompressedPickleSerializer",
    "CompressedSerializer",
    "JSONSerializer",
    "MsgPackSerializer",
    "PickleSerializer",
    "Serializer",
    "SerializerError",
    "from_qualified_name",
    "object_decoder",
    "object_encoder",
    "to_qualified_name",
]
