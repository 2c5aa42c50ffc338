"""Protocols of the 0.3.0 API (``cacheme.interfaces``) and the Metrics type."""
from datetime import datetime, timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    List,
    NamedTuple,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypeVar,
)



from cacheme._core import Metrics

if TYPE_CHECKING:
    from cacheme.models import Cache

R = TypeVar("R", covariant=True)

__all__ = ["CachedData", "DoorKeeper", "Metrics", "Node", "Policy", "Serializer", "Storage"]


class CachedData(NamedTuple):
    data: Any
    expire: Optional[datetime] = None


class Serializer(Protocol):
    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, blob: bytes) -> Any: ...


class DoorKeeper(Protocol):
    def put(self, key: str) -> Any: ...

    def contains(self, key: str) -> Any: ...


class Policy(Protocol):
    def __init__(self, size: int): ...

    def set(self, key: str) -> Optional[str]: ...

    def remove(self, key: str) -> Any: ...

    def access(self, key: str) -> Any: ...


class Storage(Protocol):
    async def connect(self) -> Any: ...

    async def get(self, node: "Node", serializer: Optional[Serializer]) -> Any: ...

    def get_sync(self, node: "Node", serializer: Optional[Serializer]) -> Any: ...

    async def get_all(
        self, nodes: Sequence["Node"], serializer: Optional[Serializer]
    ) -> Sequence[Tuple["Node", Any]]: ...

    def get_all_sync(
        self, nodes: Sequence["Node"], serializer: Optional[Serializer]
    ) -> Sequence[Tuple["Node", Any]]: ...

    async def set(
        self,
        node: "Node",
        value: Any,
        ttl: Optional[timedelta],
        serializer: Optional[Serializer],
    ) -> Any: ...

    async def remove(self, node: "Node") -> Any: ...

    async def set_all(
        self,
        data: Sequence[Tuple["Node", Any]],
        ttl: Optional[timedelta],
        serializer: Optional[Serializer],
    ) -> Any: ...

    def scheme(self) -> str: ...

    def is_local(self) -> bool: ...


class Node(Protocol[R]):
    def key(self) -> str: ...

    def full_key(self) -> str: ...

    async def load(self) -> R: ...

    def get_version(self) -> str: ...

    def get_caches(self) -> List["Cache"]: ...

    def get_seriaizer(self) -> Optional[Serializer]: ...

    def get_doorkeeper(self) -> Optional[DoorKeeper]: ...

    class Meta(Protocol):
        version: ClassVar[str] = ""
        caches: List["Cache"] = []
        serializer: ClassVar[Optional[Serializer]] = None
        doorkeeper: ClassVar[Optional[DoorKeeper]] = None
