"""Local storage (``local://lru``, ``local://tlfu``), backed by the C store
(0.3.0 module path ``cacheme.storages.local``)."""
from datetime import timedelta
from typing import Any, Optional, Sequence, Tuple
from urllib.parse import urlparse

from cacheme import _core
from cacheme.interfaces import Node, Serializer
from cacheme.models import sentinel
from cacheme.storages.base import BaseStorage

POLICIES = ("lru", "tlfu")
MAX_SIZE = 1 << 26  # entries; CM_STORE_MAX_SIZE in csrc/store.c


class LocalStorage(BaseStorage):
    """In-process storage bounded to ``size`` entries; values are kept as
    objects (the serializer is not used)."""

    def __init__(self, size: int, address: str, **options: Any):
        super().__init__(address)
        if options:
            raise TypeError(f"local storage: unknown option(s) {', '.join(sorted(options))}")
        policy = urlparse(address).netloc
        if policy not in POLICIES:
            raise ValueError(f"local storage: unknown policy {policy!r} in {address!r} (expected local://lru or local://tlfu)")
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"local storage: size must be an int, not {type(size).__name__}")
        if size >= MAX_SIZE:
            # past what the C store takes (and maybe a C long long)
            raise ValueError(f"local storage size must be < {MAX_SIZE}, got {size}")
        if size < -(2**63):
            raise ValueError(f"local storage size must be > 0, got {size}")
        self._store = _core.LocalStore(policy, size)

    async def connect(self) -> None:
        return None

    def get_sync(self, node: Node[Any], serializer: Optional[Serializer]) -> Any:
        return self._store.get(node.full_key(), sentinel)

    async def get(self, node: Node[Any], serializer: Optional[Serializer]) -> Any:
        return self._store.get(node.full_key(), sentinel)

    def get_all_sync(
        self, nodes: Sequence[Node[Any]], serializer: Optional[Serializer]
    ) -> Sequence[Tuple[Node[Any], Any]]:
        out = []
        for node in nodes:
            v = self._store.get(node.full_key(), sentinel)
            if v is not sentinel:
                out.append((node, v))
        return out

    async def get_all(
        self, nodes: Sequence[Node[Any]], serializer: Optional[Serializer]
    ) -> Sequence[Tuple[Node[Any], Any]]:
        return self.get_all_sync(nodes, serializer)

    async def set(
        self, node: Node[Any], value: Any, ttl: Optional[timedelta], serializer: Optional[Serializer]
    ) -> None:
        self._store.set(node.full_key(), value, ttl)

    async def set_all(
        self,
        data: Sequence[Tuple[Node[Any], Any]],
        ttl: Optional[timedelta],
        serializer: Optional[Serializer],
    ) -> None:
        for node, value in data:
            self._store.set(node.full_key(), value, ttl)

    async def remove(self, node: Node[Any]) -> None:
        self._store.remove(node.full_key())
