"""cacheme: asyncio cache framework with a C engine.

The API is the one of cacheme 0.3.0: describe each cached thing as a Node,
register storages by URL, then ``await cacheme.get(node)``.
"""
from cacheme._core import BloomFilter
from cacheme._lifecycle import close
from cacheme.core import (
    Memoize,
    build_node,
    get,
    get_all,
    invalidate,
    nodes,
    refresh,
    stats,
)
from cacheme.data import register_storage
from cacheme.interfaces import Metrics
from cacheme.models import Cache, DynamicNode, Node, set_prefix
from cacheme.storages import Storage

__all__ = [
    "BloomFilter",
    "Cache",
    "DynamicNode",
    "Memoize",
    "Metrics",
    "Node",
    "Storage",
    "build_node",
    "close",
    "get",
    "get_all",
    "invalidate",
    "nodes",
    "refresh",
    "register_storage",
    "set_prefix",
    "stats",
]
