"""Node, Cache and DynamicNode (0.3.0 module path ``cacheme.models``).

The class plumbing stays in Python (users subclass it); what a request does
with a node -- its full key, config, caches and metrics -- lives in C.
"""
from __future__ import annotations

import weakref
from datetime import timedelta
from typing import (
    Any,
    ClassVar,
    Dict,
    Generic,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    cast,
)

from cacheme import _core
from cacheme.interfaces import DoorKeeper, Metrics, Serializer, Storage

C = TypeVar("C")

#: what a storage's get() returns for "not found" (shared with the C core)
sentinel: Any = _core.sentinel

# every node class, in definition order; weak so that classes made at run
# time (tests, build_node callers) can go away
_nodes: List["weakref.ReferenceType[type]"] = []


def get_nodes() -> List[Type["Node[Any]"]]:
    """Node classes that have caches (read now, so Meta set later counts)."""
    out = []
    for ref in list(_nodes):
        cls = ref()
        if cls is None:
            _nodes.remove(ref)
        elif len(getattr(cls.Meta, "caches", ())) > 0:
            out.append(cls)
    return out


def _add_node(node: type) -> None:
    if not any(ref() is node for ref in _nodes):
        _nodes.append(weakref.ref(node))


def set_prefix(prefix: str) -> None:
    """Set the prefix of every key (default ``cacheme``)."""
    _core.set_prefix(prefix)


class Cache:
    """One cache layer of a node: a registered storage name and a TTL.

    ttl_jitter (0 <= j < 1, with a ttl): each write's TTL is drawn uniformly
    in ttl * (1 - j) .. ttl * (1 + j), so that keys written together do not
    expire together (a get_all's fill of a remote storage is one write)."""

    __slots__ = ["_storage", "_storage_name", "ttl", "ttl_jitter", "_is_local"]

    def __init__(self, storage: str, ttl: Optional[timedelta], ttl_jitter: float = 0.0):
        if not isinstance(storage, str):
            raise TypeError(f"Cache storage must be a storage name (str), not {type(storage).__name__}")
        if ttl is not None:
            if not isinstance(ttl, timedelta):
                raise TypeError(f"Cache ttl must be a datetime.timedelta or None, not {type(ttl).__name__}")
            if ttl <= timedelta(0):
                raise ValueError(f"Cache ttl must be positive, got {ttl!r}")
        if isinstance(ttl_jitter, bool) or not isinstance(ttl_jitter, (int, float)):
            raise TypeError(f"Cache ttl_jitter must be a number, not {type(ttl_jitter).__name__}")
        if not 0 <= ttl_jitter < 1:
            raise ValueError(f"Cache ttl_jitter must be in [0, 1), got {ttl_jitter!r}")
        if ttl_jitter and ttl is None:
            raise ValueError("Cache ttl_jitter needs a ttl")
        self._storage: Optional[Storage] = None
        self._storage_name = storage
        self.ttl = ttl
        self.ttl_jitter = float(ttl_jitter)
        self._is_local: Optional[bool] = None

    @property
    def storage(self) -> Storage:
        from cacheme.data import get_storage_by_name

        return get_storage_by_name(self._storage_name)

    @property
    def is_local(self) -> bool:
        return bool(self.storage.is_local())

    def __repr__(self) -> str:
        jitter = f", ttl_jitter={self.ttl_jitter!r}" if self.ttl_jitter else ""
        return f"Cache(storage={self._storage_name!r}, ttl={self.ttl!r}{jitter})"


class MetaNode(type):
    """Metaclass of Node: registers node classes and gives each its Metrics."""

    def __new__(mcs, name: str, bases: Tuple[type, ...], dct: Dict[str, Any]) -> "MetaNode":
        new = super().__new__(mcs, name, bases, dct)
        metrics = Metrics()
        new._cacheme_metrics = metrics  # type: ignore[attr-defined]
        meta = dct.get("Meta")
        if meta is not None:
            # 0.3.0 kept the metrics on Meta; keep that readable too
            meta.metrics = metrics
        _add_node(new)
        return new

    class Meta:
        storage: ClassVar[str] = ""
        caches: List[Cache] = []


class _FullKeySlot:
    """Node's base: its one slot holds the node's full key once built, where
    the C core reads and writes it at a fixed offset (no attribute lookup)."""

    __slots__ = ("_cacheme_full_key",)


_core._set_key_slot(_FullKeySlot)


class Node(_FullKeySlot, Generic[C], metaclass=MetaNode):
    """Base class of cached things: define ``key()``, ``async load()`` and ``Meta``."""

    @property
    def _full_key(self) -> Optional[str]:
        """The full key once built, else None (0.3.0's attribute)."""
        return getattr(self, "_cacheme_full_key", None)

    @_full_key.setter
    def _full_key(self, value: Optional[str]) -> None:
        if value is None:
            if hasattr(self, "_cacheme_full_key"):
                del self._cacheme_full_key
        else:
            self._cacheme_full_key = value

    def key(self) -> str:
        raise NotImplementedError(f"{type(self).__name__}.key() is not defined")

    def full_key(self) -> str:
        """``{prefix}:{key()}:{Meta.version}``, computed once per instance."""
        return cast(str, _core.full_key(self))

    async def load(self) -> C:
        raise NotImplementedError(f"{type(self).__name__}.load() is not defined")

    @classmethod
    async def load_all(cls, nodes: Sequence[Any]) -> Sequence[Tuple[Any, Any]]:
        """Load many nodes; the default calls ``load`` of each in turn."""
        data = []
        for node in nodes:
            v = await node.load()
            data.append((node, v))
        return data

    def get_version(self) -> str:
        return cast(str, self.Meta.version)

    def get_caches(self) -> List[Cache]:
        return cast(List[Cache], self.Meta.caches)

    def get_seriaizer(self) -> Optional[Serializer]:
        return cast(Optional[Serializer], self.Meta.serializer)

    get_serializer = get_seriaizer

    def get_doorkeeper(self) -> Optional[DoorKeeper]:
        return cast(Optional[DoorKeeper], self.Meta.doorkeeper)

    @classmethod
    def get_metrics(cls) -> Metrics:
        return cast(Metrics, cls._cacheme_metrics)  # type: ignore[attr-defined]

    class Meta:
        version: ClassVar[str] = ""
        caches: List[Cache] = []
        serializer: ClassVar[Optional[Serializer]] = None
        doorkeeper: ClassVar[Optional[DoorKeeper]] = None
        #: past it a load is cancelled and every caller gets TimeoutError
        load_timeout: ClassVar[Optional[timedelta]] = None
        #: freshness (README "Freshness options"), all off by default:
        #: a value older than this is returned and reloaded in the background
        refresh_after: ClassVar[Optional[timedelta]] = None
        #: XFetch's beta: reload in the background before the TTL ends, the
        #: sooner the longer the key's load took (1.0 is the paper's default)
        early_refresh: ClassVar[Optional[float]] = None
        #: a load that raises is answered with a value expired by at most this
        stale_if_error: ClassVar[Optional[timedelta]] = None
        metrics: ClassVar[Metrics]


class DynamicNode(Node[Any]):
    """A node whose key is given directly: ``DynamicNode(key="...")``."""

    key_str: str

    def __init__(self, key: str):
        self.key_str = key

    def key(self) -> str:
        return self.key_str

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key_str!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.key_str == self.key_str  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.key_str))
