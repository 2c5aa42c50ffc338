"""The storage registry (0.3.0 module path ``cacheme.data``)."""
from typing import Dict

from cacheme import _core
from cacheme.interfaces import Storage


async def register_storage(name: str, storage: Storage) -> None:
    """Register ``storage`` under ``name`` and connect it.

    Node classes naming this storage in ``Meta.caches`` pick it up on their
    next request (re-registering a name replaces the storage).
    """
    if not isinstance(name, str):
        raise TypeError(f"storage name must be str, not {type(name).__name__}")
    for method in ("connect", "get", "set", "remove", "is_local"):
        if not callable(getattr(storage, method, None)):
            raise TypeError(
                f"register_storage({name!r}, ...): {type(storage).__name__} is not a "
                f"storage (no {method}() method); use cacheme.Storage(url=...)"
            )
    await storage.connect()
    _core._add_storage(name, storage)


def get_storage_by_name(name: str) -> Storage:
    try:
        return _core._storages()[name]
    except KeyError:
        raise ValueError(
            f"storage {name!r} is not registered (call cacheme.register_storage first)"
        ) from None


def list_storages() -> Dict[str, Storage]:
    return _core._storages()
