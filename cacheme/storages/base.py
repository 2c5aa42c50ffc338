"""BaseStorage: the base class of key-value storages written in Python
(0.3.0 module path ``cacheme.storages.base``).

A subclass implements the ``*_by_key(s)`` coroutines; values go through the
node's serializer and expired rows read as misses.
"""
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

from cacheme.interfaces import CachedData, Node, Serializer
from cacheme.models import sentinel

INT_MAX = 2**31 - 1


def bool_text(owner: str, name: str, value: str) -> bool:
    """A URL option's true/false text (1/0, true/false, yes/no, on/off, any
    case), or a ValueError naming it."""
    v = value.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{owner}: URL option {name} must be true or false, not {value!r}")


def int_option(owner: str, name: str, value: Any, lo: int, hi: int = INT_MAX) -> int:
    """An integer option in lo..hi, or a TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{owner}: {name} must be between {lo} and {hi}, not {value}")
    return value


def seconds_option(owner: str, name: str, value: Any, *, zero_ok: bool = False,
                   zero_means: str = "") -> float:
    """A number of seconds, finite and > 0 (>= 0 with zero_ok), or a
    TypeError/ValueError naming the option and what is allowed."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{owner}: {name} must be a number of seconds, not {type(value).__name__}"
        )
    try:
        secs = float(value)
    except OverflowError:
        secs = float("inf")
    if not (secs >= 0 if zero_ok else secs > 0) or secs == float("inf") or secs > 3.1e9:
        allowed = f">= 0 ({zero_means})" if zero_ok else "> 0"
        raise ValueError(
            f"{owner}: {name} must be a finite number of seconds {allowed}, at most 3.1e9, "
            f"not {value!r}"
        )
    return secs


class BaseStorage:
    def __init__(self, address: str, *args: Any, **kwargs: Any):
        self.address = address

    async def connect(self) -> None:
        raise NotImplementedError()

    async def close(self) -> None:
        return None

    async def get_by_key(self, key: str) -> Any:
        raise NotImplementedError()

    async def get_by_keys(self, keys: List[str]) -> Dict[str, Any]:
        raise NotImplementedError()

    async def remove_by_key(self, key: str) -> None:
        raise NotImplementedError()

    async def set_by_key(self, key: str, value: Any, ttl: Optional[timedelta]) -> None:
        raise NotImplementedError()

    async def set_by_keys(self, data: Dict[str, Any], ttl: Optional[timedelta]) -> None:
        raise NotImplementedError()

    def get_sync(self, node: Node[Any], serializer: Optional[Serializer]) -> Any:
        raise NotImplementedError("not a local storage")

    def get_all_sync(
        self, nodes: Sequence[Node[Any]], serializer: Optional[Serializer]
    ) -> Sequence[Tuple[Node[Any], Any]]:
        raise NotImplementedError("not a local storage")

    def serialize(self, raw: Any, serializer: Optional[Serializer]) -> CachedData:
        data = raw["value"]
        if serializer is not None:
            data = serializer.loads(cast(bytes, data))
        return CachedData(data=data, expire=raw.get("expire") if hasattr(raw, "get") else raw["expire"])

    def deserialize(self, raw: Any, serializer: Optional[Serializer]) -> Any:
        return serializer.dumps(raw) if serializer is not None else raw

    @staticmethod
    def _expired(data: CachedData) -> bool:
        if data.expire is None:
            return False
        return data.expire.replace(tzinfo=timezone.utc) <= datetime.now(timezone.utc)

    async def get(self, node: Node[Any], serializer: Optional[Serializer]) -> Any:
        raw = await self.get_by_key(node.full_key())
        if raw is None:
            return sentinel
        data = self.serialize(raw, serializer)
        return sentinel if self._expired(data) else data.data

    async def get_all(
        self, nodes: Sequence[Node[Any]], serializer: Optional[Serializer]
    ) -> Sequence[Tuple[Node[Any], Any]]:
        if not nodes:
            return []
        by_key = {node.full_key(): node for node in nodes}
        found = await self.get_by_keys(list(by_key))
        out = []
        for key, raw in found.items():
            if raw is None or key not in by_key:
                continue
            data = self.serialize(raw, serializer)
            if not self._expired(data):
                out.append((by_key[key], data.data))
        return out

    async def set(
        self, node: Node[Any], value: Any, ttl: Optional[timedelta], serializer: Optional[Serializer]
    ) -> None:
        await self.set_by_key(node.full_key(), self.deserialize(value, serializer), ttl)

    async def set_all(
        self,
        data: Sequence[Tuple[Node[Any], Any]],
        ttl: Optional[timedelta],
        serializer: Optional[Serializer],
    ) -> None:
        await self.set_by_keys(
            {node.full_key(): self.deserialize(value, serializer) for node, value in data}, ttl
        )

    async def remove(self, node: Node[Any]) -> None:
        await self.remove_by_key(node.full_key())
