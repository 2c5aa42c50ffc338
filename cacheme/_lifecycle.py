"""``await cacheme.close()``: the end of a process's (or a worker's) use of
its storages, the counterpart of ``register_storage``."""
import logging
from typing import List, Tuple

from cacheme import _core

logger = logging.getLogger("cacheme")


async def close() -> None:
    """Close every registered storage and forget the registrations.

    Each storage is unregistered first, then its ``close()`` awaited, so a
    request made meanwhile or afterwards fails with the clear "storage ...
    is not registered" ValueError instead of using a closed storage. A
    storage whose close raises does not stop the others: every failure is
    logged on the ``cacheme`` logger and the first one is raised once all
    were tried. Calling it again (nothing registered) does nothing, and
    ``register_storage`` works again afterwards. Local caches go with their
    storages: their values are dropped.
    """
    storages = _core._storages()
    for name in storages:
        _core._remove_storage(name)
    failures: List[Tuple[str, BaseException]] = []
    for name, storage in storages.items():
        try:
            await storage.close()
        except Exception as e:  # noqa: BLE001 -- one bad storage must not leave the rest open
            logger.error("cacheme.close: closing storage %r failed: %r", name, e)
            failures.append((name, e))
    if failures:
        name, first = failures[0]
        first.add_note(f"cacheme.close: raised by storage {name!r}"
                       + (f" ({len(failures) - 1} other storage(s) also failed, logged)"
                          if len(failures) > 1 else ""))
        raise first
