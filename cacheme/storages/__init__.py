"""Storage(url, **options): a storage chosen by URL scheme
(0.3.0 module path ``cacheme.storages``)."""
import importlib
from datetime import timedelta
from typing import Any, Dict, Optional, Sequence, Tuple
from urllib.parse import urlparse

from cacheme.interfaces import Node, Serializer
from cacheme.storages.base import BaseStorage

__all__ = ["BaseStorage", "Storage"]


class Storage:
    SUPPORTED_STORAGES: Dict[str, str] = {
        "local": "cacheme.storages.local:LocalStorage",
        "redis": "cacheme.storages.redis:RedisStorage",
        "rediss": "cacheme.storages.redis:RedisStorage",
        "unix": "cacheme.storages.redis:RedisStorage",
        "sqlite": "cacheme.storages.sqlite:SQLiteStorage",
        "mongodb": "cacheme.storages.mongo:MongoStorage",
        # refused by MongoStorage with a clear reason (SRV lookup not built)
        "mongodb+srv": "cacheme.storages.mongo:MongoStorage",
        "postgresql": "cacheme.storages.postgres:PostgresStorage",
        "mysql": "cacheme.storages.mysql:MySQLStorage",
    }

    def __init__(self, url: str, **options: Any):
        if not isinstance(url, str):
            raise TypeError(f"Storage url must be str, not {type(url).__name__}")
        scheme = urlparse(url).scheme
        target = self.SUPPORTED_STORAGES.get(scheme)
        if target is None:
            known = ", ".join(f"{s}://" for s in self.SUPPORTED_STORAGES)
            raise ValueError(f"unknown storage scheme {scheme!r} in {url!r} (supported: {known})")
        mod_name, cls_name = target.split(":")
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name != mod_name:
                raise
            raise ValueError(f"storage scheme {scheme}:// is not available in this build of cacheme") from None
        self._scheme = scheme
        self._is_local = scheme == "local"
        self._storage = getattr(module, cls_name)(address=url, **options)
        # the C core reads local stores directly and calls other backends
        # without this wrapper's coroutines in between
        self._local = getattr(self._storage, "_store", None)
        self._cacheme_backend = self._storage

    def scheme(self) -> str:
        return self._scheme

    def is_local(self) -> bool:
        return self._is_local

    def __repr__(self) -> str:
        return f"Storage({self._storage.address!r})"

    async def connect(self) -> None:
        await self._storage.connect()

    async def close(self) -> None:
        await self._storage.close()

    async def get(self, node: Node[Any], serializer: Optional[Serializer]) -> Any:
        return await self._storage.get(node, serializer)

    async def get_all(
        self, nodes: Sequence[Node[Any]], serializer: Optional[Serializer]
    ) -> Sequence[Tuple[Node[Any], Any]]:
        return await self._storage.get_all(nodes, serializer)

    async def set(
        self, node: Node[Any], value: Any, ttl: Optional[timedelta], serializer: Optional[Serializer]
    ) -> None:
        await self._storage.set(node, value, ttl, serializer)

    async def set_all(
        self,
        data: Sequence[Tuple[Node[Any], Any]],
        ttl: Optional[timedelta],
        serializer: Optional[Serializer],
    ) -> None:
        await self._storage.set_all(data, ttl, serializer)

    async def remove(self, node: Node[Any]) -> None:
        await self._storage.remove(node)

    def get_sync(self, node: Node[Any], serializer: Optional[Serializer]) -> Any:
        return self._storage.get_sync(node, serializer)

    def get_all_sync(
        self, nodes: Sequence[Node[Any]], serializer: Optional[Serializer]
    ) -> Sequence[Tuple[Node[Any], Any]]:
        return self._storage.get_all_sync(nodes, serializer)
