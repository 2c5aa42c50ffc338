"""cacheme.get_all as it was in Python (cacheme/core.py before get_all moved
to csrc/api/get_all.c), kept for bench_get_all.py's side-by-side
run: it drives the same C flights through _core._flight_join/_flight_lead.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, TypeVar

from cacheme import _core
from cacheme.interfaces import DoorKeeper
from cacheme.models import Node, sentinel

R = TypeVar("R")
logger = logging.getLogger("cacheme")


# the same wrapper the C flights use
from cacheme.core import _load_with_timeout  # noqa: E402



def _load_timeout(cls: type) -> Optional[float]:
    t = getattr(cls.Meta, "load_timeout", None)
    return None if t is None else t.total_seconds()


_LocalStore = _core.LocalStore
_NODE_LOAD_ALL = Node.load_all.__func__  # type: ignore[attr-defined]


def _check_same_class(nodes: Sequence[Node[Any]]) -> type:
    cls = type(nodes[0])
    if not isinstance(nodes[0], Node):
        raise TypeError(f"get_all() expects cacheme.Node instances, got {cls.__name__}")
    for node in nodes:
        if type(node) is not cls:
            raise TypeError(
                "get_all() needs nodes of one class: expected "
                f"{cls.__qualname__}, got {type(node).__qualname__}"
            )
    return cls


def _local_get(storage: Any, key: str, node: Any, serializer: Any) -> Any:
    if isinstance(storage, _LocalStore):
        return storage.get(key, sentinel)
    return storage.get_sync(node, serializer)


async def get_all(nodes: Sequence[Node[R]]) -> List[R]:
    """Get the values of many nodes of one class, in order."""
    nodes = list(nodes)
    if not nodes:
        return []
    cls = _check_same_class(nodes)
    _, caches, serializer, doorkeeper, metrics = _core.node_config(cls)
    keys = [_core.full_key(n) for n in nodes]
    pending: Dict[str, Any] = dict(zip(keys, nodes))
    results: Dict[str, Any] = {}
    local_missed: List[Tuple[int, List[str]]] = []

    for i, (name, kind, storage, _ttl) in enumerate(caches):
        if kind != "local" or not pending:
            continue
        missed: List[str] = []
        hits = errors = 0
        for key, node in pending.items():
            try:
                v = _local_get(storage, key, node, serializer)
            except Exception:
                logger.warning("cacheme: get from storage %r failed", name, exc_info=True)
                errors += 1
                v = sentinel
            if v is sentinel:
                missed.append(key)
            else:
                results[key] = v
                hits += 1
        metrics._record_storage(name, hits, len(missed), errors)
        pending = {k: pending[k] for k in missed}
        local_missed.append((i, missed))

    waits: List[Tuple[str, Any]] = []
    lead: Dict[str, Any] = {}
    for key in pending:
        aw = _core._flight_join(key)
        if aw is not None:
            waits.append((key, aw))
        else:
            lead[key] = _core._flight_lead(key)
    metrics._record(len(keys) - len(lead), len(lead), 0, 0, 0)

    if lead:
        batch = asyncio.ensure_future(
            _load_batch(cls, caches, serializer, doorkeeper, metrics, pending, lead)
        )
        try:
            results.update(await asyncio.shield(batch))
        except asyncio.CancelledError:
            if not batch.done() and not any(h.live_waiters() for h in lead.values()):
                batch.cancel()
            raise
    for key, aw in waits:
        results[key] = await aw

    # fill the local caches that missed, with whatever came from further away
    for i, missed in local_missed:
        name, _kind, storage, ttl = caches[i]
        fill = [k for k in missed if k in results and k not in lead]
        _fill_local(storage, name, fill, results, pending, ttl, serializer, metrics)
    return [results[k] for k in keys]


def _fill_local(storage, name, keys, results, nodes, ttl, serializer, metrics) -> None:
    for key in keys:
        try:
            if isinstance(storage, _LocalStore):
                storage.set(key, results[key], ttl)
            else:
                aw = storage.set(nodes[key], results[key], ttl, serializer)
                if asyncio.iscoroutine(aw):
                    aw.close()
                    raise RuntimeError("a local storage's set() must not need awaiting here")
        except Exception:
            metrics._record_storage(name, 0, 0, 1)
            logger.warning("cacheme: fill of storage %r failed", name, exc_info=True)


async def _load_batch(cls, caches, serializer, doorkeeper, metrics, pending, lead) -> Dict[str, Any]:
    """Remote caches then load_all for the keys this call leads; settles
    their flights and fills the caches that missed them."""
    todo = {k: pending[k] for k in lead}
    found: Dict[str, Any] = {}
    remote_missed: List[Tuple[int, List[str]]] = []
    try:
        for i, (name, kind, storage, _ttl) in enumerate(caches):
            if kind == "local" or not todo:
                continue
            try:
                got = await storage.get_all(list(todo.values()), serializer)
                errors = 0
            except _core.StorageKeyError:
                raise  # a key the storage cannot hold would miss every time
            except Exception:
                logger.warning("cacheme: get_all from storage %r failed", name, exc_info=True)
                got, errors = [], 1
            hits = 0
            for node, value in got:
                key = _core.full_key(node)
                if key in todo:
                    found[key] = value
                    del todo[key]
                    hits += 1
            metrics._record_storage(name, hits, len(todo), errors)
            remote_missed.append((i, list(todo)))
        # what the remote caches had is settled now: its waiters (other
        # get_all calls, single gets) need not wait for the others' loads
        for key, value in found.items():
            lead[key].resolve(value)
        settled = set(found)
        if todo:
            timeout = _load_timeout(cls)
            start = time.monotonic_ns()
            remote_settled = len(settled)
            try:
                if getattr(cls.load_all, "__func__", None) is _NODE_LOAD_ALL:
                    # Node.load_all's own loop (each load in turn), each
                    # flight settled as soon as its load is in
                    loaded = []
                    for key, node in todo.items():
                        aw = node.load()
                        value = await (aw if timeout is None else _load_with_timeout(aw, timeout))
                        loaded.append((node, value))
                        lead[key].resolve(value)
                        settled.add(key)
                else:
                    aw = cls.load_all(tuple(todo.values()))
                    loaded = await (aw if timeout is None else _load_with_timeout(aw, timeout))
            except BaseException:
                ok = len(settled) - remote_settled
                metrics._record(0, 0, ok, len(todo) - ok, time.monotonic_ns() - start)
                raise
            elapsed = time.monotonic_ns() - start
            got_keys = set()
            for node, value in loaded:
                key = _core.full_key(node)
                if key in todo:
                    found[key] = value
                    got_keys.add(key)
            left = [k for k in todo if k not in got_keys]
            metrics._record(0, 0, len(got_keys), len(left), elapsed)
            for key in left:
                err = KeyError(
                    f"{cls.__qualname__}.load_all() returned no value for {todo[key]!r} (key {key!r})"
                )
                lead[key].fail(err)
            if left:
                for key in got_keys - settled:
                    lead[key].resolve(found[key])
                raise KeyError(
                    f"{cls.__qualname__}.load_all() returned no value for "
                    f"{len(left)} of {len(todo)} nodes, e.g. key {left[0]!r}"
                )
    except BaseException as e:
        for h in lead.values():
            h.fail(e)  # no-op for flights already settled
        for h in lead.values():
            h.finish()
        raise

    admitted = {}
    for key, value in found.items():
        h = lead[key]
        if key not in settled:
            h.resolve(value)
        if h.stale():
            continue
        if doorkeeper is not None and not _doorkeeper_admits(doorkeeper, key):
            continue
        admitted[key] = value
    try:
        for name, kind, storage, ttl in caches:
            if kind == "local":
                _fill_local(storage, name, list(admitted), admitted, pending, ttl, serializer, metrics)
        for i, missed in remote_missed:
            name, _kind, storage, ttl = caches[i]
            data = [(pending[k], admitted[k]) for k in missed if k in admitted]
            if not data:
                continue
            try:
                await storage.set_all(data, ttl, serializer)
            except Exception:
                metrics._record_storage(name, 0, 0, 1)
                logger.warning("cacheme: set_all of storage %r failed", name, exc_info=True)
    finally:
        for h in lead.values():
            h.finish()
    return found


def _doorkeeper_admits(doorkeeper: DoorKeeper, key: str) -> bool:
    if doorkeeper.contains(key):
        return True
    doorkeeper.put(key)
    return False
