"""The request API (0.3.0 module path ``cacheme.core``).

``get`` is the C function itself: on a local hit it returns a ready
awaitable without a coroutine frame. ``get_all`` batches: one get_all per
remote storage, one ``load_all`` for what is left, sharing flights with
``get`` so that concurrent requests for one key load it once.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Dict,
    Generic,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    overload,
)

from typing import ParamSpec

from cacheme import _core
from cacheme.interfaces import DoorKeeper, Metrics, Serializer
from cacheme.models import Cache, DynamicNode, Node, _add_node, get_nodes, sentinel

P = ParamSpec("P")
R = TypeVar("R")
N = TypeVar("N", bound=Node[Any])

logger = logging.getLogger("cacheme")
_core._set_logger(logger)

if TYPE_CHECKING:

    @overload
    def get(node: Node[R]) -> Awaitable[R]: ...

    @overload
    def get(node: N, load_fn: Callable[[N], Awaitable[R]]) -> Awaitable[R]: ...

    def get(node: Any, load_fn: Any = None) -> Awaitable[Any]:
        """Get a node's value: local caches, then remote ones, then its load."""
        ...

else:
    get = _core.get



async def _load_with_timeout(aw: Awaitable[Any], timeout: float) -> Any:
    """aw under Meta.load_timeout: past it, aw is cancelled and the load
    fails with TimeoutError (every caller of its flight gets that)."""
    loop = asyncio.get_running_loop()
    inner = asyncio.ensure_future(aw)
    expired = False

    def expire() -> None:
        nonlocal expired
        if not inner.done():
            expired = True
            inner.cancel()

    handle = loop.call_later(timeout, expire)
    try:
        return await inner
    except asyncio.CancelledError:
        if expired:
            raise asyncio.TimeoutError(f"cacheme: load did not finish within {timeout} s") from None
        if not inner.done():  # this wrapper was cancelled, not the load
            inner.cancel()
        raise
    finally:
        handle.cancel()


_core._set_load_timeout_wrapper(_load_with_timeout)


_LocalStore = _core.LocalStore
_core._get_all_setup(Node)

if TYPE_CHECKING:

    def get_all(nodes: Sequence[Node[R]]) -> Awaitable[List[R]]:
        """Get the values of many nodes of one class, in order."""
        ...

else:
    get_all = _core.get_all


async def invalidate(node: Node[Any]) -> None:
    """Remove a node's value from every cache of its class.

    Raises if a storage could not remove it (after trying every storage)."""
    _, caches, _serializer, _dk, _metrics = _core.node_config(type(node))
    key = _core.full_key(node)
    _core._flight_invalidate(key)
    failures: List[Tuple[str, BaseException]] = []
    for name, _kind, storage, _ttl in caches:
        try:
            if isinstance(storage, _LocalStore):
                storage.remove(key)
            else:
                await storage.remove(node)
        except Exception as e:
            failures.append((name, e))
    for _name, e in failures:
        if isinstance(e, _core.StorageKeyError):
            raise e  # the key itself is refused: say so, not "could not"
    if failures:
        names = ", ".join(repr(n) for n, _ in failures)
        raise RuntimeError(f"cacheme: could not invalidate {key!r} in storage {names}") from failures[0][1]


async def refresh(node: Node[R]) -> R:
    """Invalidate, then get (so the value is loaded again)."""
    await invalidate(node)
    return await get(node)


class Memoized(Generic[P, R]):
    """Typing view of what ``Memoize(Node)(fn)`` returns (a C object)."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]: ...

    def to_node(self, fn: Callable[P, Node[Any]]) -> Callable[P, Node[Any]]: ...


class Memoize:
    """Cache an async function through a node class::

        @Memoize(UserInfoNode)
        async def get_user_info(user_id: int) -> dict: ...

        @get_user_info.to_node
        def _(user_id: int) -> UserInfoNode:
            return UserInfoNode(user_id=user_id)
    """

    def __init__(self, node: Type[Node[Any]]):
        if not (isinstance(node, type) and issubclass(node, Node)):
            raise TypeError(f"Memoize needs a cacheme.Node subclass, not {node!r}")
        self.node = node

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Memoized[P, R]:
        wrapper = _core.Memoized(fn, self.node)
        functools.update_wrapper(wrapper, fn)
        # let frameworks (FastAPI, Starlette) see an async callable
        marker = getattr(asyncio.coroutines, "_is_coroutine", None)
        if marker is not None:  # asyncio.iscoroutinefunction, Python < 3.14
            wrapper._is_coroutine = marker
        if hasattr(inspect, "markcoroutinefunction"):  # inspect, Python >= 3.12
            inspect.markcoroutinefunction(wrapper)
        return wrapper  # type: ignore[no-any-return]


def nodes() -> List[Type[Node[Any]]]:
    """The node classes that have caches."""
    return get_nodes()


def stats(node: Type[Node[Any]]) -> Metrics:
    """The Metrics of a node class."""
    if not (isinstance(node, type) and issubclass(node, Node)):
        node = type(node)
    return node.get_metrics()


_dynamic_nodes: Dict[str, Type[DynamicNode]] = {}


def build_node(
    name: str,
    version: str,
    caches: List[Cache],
    serializer: Optional[Serializer] = None,
    doorkeeper: Optional[DoorKeeper] = None,
) -> Type[DynamicNode]:
    """A DynamicNode subclass made at run time; the same name gives the same class."""
    if name in _dynamic_nodes:
        return _dynamic_nodes[name]
    meta = type(
        "Meta",
        (DynamicNode.Meta,),
        {"version": version, "caches": caches, "serializer": serializer, "doorkeeper": doorkeeper},
    )
    new = type(name, (DynamicNode,), {"Meta": meta})
    _dynamic_nodes[name] = new
    _add_node(new)
    return new
