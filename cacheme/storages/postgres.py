"""PostgreSQL storage (0.3.0 module path ``cacheme.storages.postgres``).

``Storage(url="postgresql://user:pass@host:5432/db", table="cacheme_data",
pool_size=50)``. Driven from C with libpq's asynchronous API (no asyncpg):
see ``cacheme.storages.sqldb`` for the options. The URL is handed to libpq
as is, so libpq's URI parameters (``?sslmode=...``) work.
"""
from typing import Any

from cacheme import _core
from cacheme.storages.sqldb import SQLStorage

__all__ = ["PostgresStorage"]


class PostgresStorage(_core.PgClient, SQLStorage):
    _db = "postgresql"

    def __init__(self, address: str, table: str, pool_size: int = 50, **options: Any):
        SQLStorage.__init__(self, address, table, pool_size=pool_size, **options)

    def _c_init(self, table: str, **kwargs: Any) -> None:
        _core.PgClient.__init__(self, self.address, table, **kwargs)
