"""MySQL/MariaDB storage (0.3.0 module path ``cacheme.storages.mysql``).

``Storage(url="mysql://user:pass@host:3306/db", table="cacheme_data",
pool_size=50)``. Driven from C with MariaDB Connector/C's non-blocking API
(no aiomysql); ``set_all`` uses MariaDB's bulk execution (one round trip).
``?unix_socket=/path`` connects through a Unix socket. See
``cacheme.storages.sqldb`` for the other options.
"""
from typing import Any, Dict
from urllib.parse import parse_qs, unquote, urlparse

from cacheme import _core
from cacheme.storages.sqldb import SQLStorage

__all__ = ["MySQLStorage", "parse_url"]


def parse_url(address: str) -> Dict[str, Any]:
    """Connection options of a mysql:// URL."""
    u = urlparse(address)
    if u.scheme != "mysql":
        raise ValueError(f"mysql: unsupported URL scheme {u.scheme!r} in {address!r}")
    out: Dict[str, Any] = {"host": u.hostname or "localhost", "port": u.port or 3306}
    if u.username:
        out["user"] = unquote(u.username)
    if u.password is not None:
        out["password"] = unquote(u.password)
    db = u.path.lstrip("/")
    if db:
        out["db"] = unquote(db)
    for key, values in parse_qs(u.query).items():
        if key != "unix_socket":
            raise ValueError(f"mysql: unknown URL option {key!r} in {address!r}")
        out["unix_socket"] = values[-1]
    return out


class MySQLStorage(_core.MySQLClient, SQLStorage):
    _db = "mysql"

    def __init__(self, address: str, table: str, pool_size: int = 50, **options: Any):
        self._conn_options = parse_url(address)
        SQLStorage.__init__(self, address, table, pool_size=pool_size, **options)

    def _c_init(self, table: str, **kwargs: Any) -> None:
        kwargs["options"] = self._conn_options
        _core.MySQLClient.__init__(self, self.address, table, **kwargs)
