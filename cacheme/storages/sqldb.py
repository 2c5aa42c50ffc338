"""SQLStorage: the base of the SQL storages (0.3.0 module path
``cacheme.storages.sqldb``).

The work is done in C (``cacheme._core.PgClient``, ``MySQLClient``,
``SQLiteClient``): a pool of connections on the running asyncio loop,
prepared statements with bound parameters, expired rows read as misses and
swept periodically. This class only parses options and runs the DDL.

Options common to the SQL storages (keyword arguments of ``Storage(url, ...)``):

- ``table``: the table name, an SQL identifier (optionally ``schema.table``).
- ``pool_size``: connections at most (PostgreSQL/MySQL).
- ``create_table`` (False): create the table and its index on ``connect()``
  if missing, from ``cacheme/storages/scripts/<db>.sql``; otherwise a missing
  table fails ``connect()`` with ``SQLTableError`` saying to run that script.
- ``timeout`` (5.0 s, per request), ``connect_timeout`` (5.0 s): past them a
  request fails with ``SQLTimeoutError`` (a miss in ``get``).
- ``sweep_interval`` (60 s; 0 disables), ``sweep_limit`` (1000): every
  interval, at most ``sweep_limit`` expired rows are deleted (again after a
  second while a sweep finds a full batch).
- ``busy_poll`` (None: 0.0002 s, or 0 where the process can use one CPU
  only; 0 disables; at most 0.01): when the event loop has nothing else to
  run after a request is sent, poll the sockets for the reply for up to this
  long instead of letting the loop sleep in ``epoll_wait``; such a request
  is waited for inside its own call and returns without yielding when the
  reply comes in time, with at most 1 ms of these waits between two loop
  iterations. Other sockets and timers wait at most about that long; a
  server slower than the limit is spun on exponentially less often (see
  csrc/busypoll.h).

Keys are compared byte for byte. A key the table cannot hold as it is raises
``SQLKeyError`` (a ``ValueError``) to the caller of ``get``/``get_all``/
``invalidate``: longer than the key column (512 characters on PostgreSQL and
MySQL), a NUL character on PostgreSQL (its text type cannot hold one), or a
lone surrogate (not encodable as UTF-8). Without a serializer a node can
cache only ``bytes``: the value column gives back bytes.
"""
import os
import re
from datetime import timedelta
from typing import Any, Dict, List, Optional

from cacheme import _core
from cacheme.storages.base import BaseStorage, int_option, seconds_option

SQLError = _core.SQLError
SQLConnectionError = _core.SQLConnectionError
SQLTimeoutError = _core.SQLTimeoutError
SQLTableError = _core.SQLTableError
SQLKeyError = _core.SQLKeyError

__all__ = ["SQLStorage", "SQLError", "SQLConnectionError", "SQLTimeoutError", "SQLTableError",
           "SQLKeyError", "ddl_script"]

_SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def ddl_script(db: str, table: str = "cacheme_data", if_not_exists: bool = False) -> List[str]:
    """The statements of scripts/<db>.sql for ``table``."""
    with open(os.path.join(_SCRIPTS, f"{db}.sql")) as f:
        text = f.read()
    text = text.replace("ix_cacheme_data", "ix_" + table.replace(".", "_"))
    text = text.replace("cacheme_data", table)
    if if_not_exists:
        text = re.sub(r"CREATE (TABLE|INDEX) ", r"CREATE \1 IF NOT EXISTS ", text)
    return [s.strip() for s in text.split(";") if s.strip()]


class _Key:
    """A bare key where get_all/set_all take nodes: its full_key() is the key."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key

    def full_key(self) -> str:
        return self.key


class SQLStorage(BaseStorage):
    """Base of PostgresStorage, MySQLStorage and SQLiteStorage; subclasses
    put a C client first in their bases."""

    _db = ""
    _extra_options: "tuple[str, ...]" = ()

    def __init__(
        self,
        address: str,
        table: str,
        pool_size: int = 10,
        create_table: bool = False,
        timeout: float = 5.0,
        connect_timeout: float = 5.0,
        sweep_interval: float = 60.0,
        sweep_limit: int = 1000,
        busy_poll: Optional[float] = None,
        **options: Any,
    ):
        BaseStorage.__init__(self, address)
        if options:
            allowed = ("table", "pool_size", "create_table", "timeout", "connect_timeout",
                       "sweep_interval", "sweep_limit", "busy_poll") + self._extra_options
            raise TypeError(
                f"{type(self).__name__}: unknown option {sorted(options)[0]!r} "
                f"(allowed: {', '.join(allowed)})"
            )
        if not isinstance(table, str):
            raise TypeError(f"table must be str, not {type(table).__name__}")
        owner = f"{self._db} storage"
        int_option(owner, "pool_size", pool_size, 1)
        self.table = table
        self.pool_size = pool_size
        self.create_table = create_table
        self._c_init(
            table,
            pool_size=pool_size,
            timeout=seconds_option(owner, "timeout", timeout),
            connect_timeout=seconds_option(owner, "connect_timeout", connect_timeout),
            sweep_interval=seconds_option(owner, "sweep_interval", sweep_interval, zero_ok=True,
                                          zero_means="0 disables the sweep"),
            sweep_limit=int_option(owner, "sweep_limit", sweep_limit, 1),
            busy_poll=busy_poll,
            **options,
        )

    def _c_init(self, table: str, **kwargs: Any) -> None:
        raise NotImplementedError()

    async def _connect(self) -> None:
        if self.create_table:
            await self.execute_ddl(ddl_script(self._db, self.table, if_not_exists=True))
        await self._ping()  # type: ignore[attr-defined]

    async def connect(self) -> None:
        await self._connect()

    async def close(self) -> None:
        """Close every connection (every loop's); the next request connects anew."""
        self.close_now()  # type: ignore[attr-defined]

    async def execute_ddl(self, ddl: Any) -> None:
        """Run DDL: a string (statements separated by ';') or a list of them."""
        stmts = [s.strip() for s in ddl.split(";")] if isinstance(ddl, str) else list(ddl)
        for stmt in stmts:
            if stmt:
                await self.execute(stmt)  # type: ignore[attr-defined]

    async def get_by_keys(self, keys: List[str]) -> Dict[str, Any]:
        """0.3.0's hook: {key: raw value} of the keys found, in one query."""
        found = await self.get_all([_Key(k) for k in keys], None)  # type: ignore[attr-defined]
        return {node.key: value for node, value in found}

    async def set_by_keys(self, data: Dict[str, Any], ttl: Optional[timedelta]) -> None:
        """0.3.0's hook: store raw values by key, in one round trip."""
        await self.set_all([(_Key(k), v) for k, v in data.items()], ttl, None)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r}, table={self.table!r})"
