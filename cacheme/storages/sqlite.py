"""SQLite storage (0.3.0 module path ``cacheme.storages.sqlite``).

``Storage(url="sqlite:///path/to/db", table="cacheme_data")``: the path is
the URL path without its first "/" (as in 0.3.0: ``sqlite:///cache.db`` is
relative, ``sqlite:////tmp/cache.db`` absolute). libsqlite3 from C, WAL
mode, statements run inline on the loop's thread (a point read is a few
microseconds; see benchmarks/SQL.md); the awaitables are ready at once.
``pool_size`` is accepted for 0.3.0 compatibility and unused. Extra option:
``busy_timeout`` (0.1 s): how long a write waits for another process's write
lock before failing with ``SQLTimeoutError``; it waits on the event loop
(retried from a loop timer), never asleep on the loop's thread. See
``cacheme.storages.sqldb`` for the others.
"""
from typing import Any
from urllib.parse import urlparse

from cacheme import _core
from cacheme.storages.base import seconds_option
from cacheme.storages.sqldb import SQLStorage

__all__ = ["SQLiteStorage"]


class SQLiteStorage(_core.SQLiteClient, SQLStorage):
    _db = "sqlite"
    _extra_options = ("busy_timeout",)

    def __init__(
        self,
        address: str,
        table: str,
        pool_size: int = 10,
        busy_timeout: float = 0.1,
        **options: Any,
    ):
        self.db = urlparse(address).path[1:]
        if not self.db:
            raise ValueError(f"sqlite: no database path in {address!r}")
        self.busy_timeout = seconds_option("sqlite storage", "busy_timeout", busy_timeout,
                                           zero_ok=True, zero_means="0: fail at once")
        SQLStorage.__init__(self, address, table, pool_size=pool_size, **options)

    def _c_init(self, table: str, **kwargs: Any) -> None:
        kwargs["options"] = {"busy_timeout": float(self.busy_timeout)}
        _core.SQLiteClient.__init__(self, self.db, table, **kwargs)
