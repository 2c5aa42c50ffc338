"""MySQL/MariaDB storage (0.3.0 module path ``cacheme.storages.mysql``).

``Storage(url="mysql://user:pass@host:3306/db", table="cacheme_data",
pool_size=50)``. Driven from C with MariaDB Connector/C's non-blocking API
(no aiomysql); ``set_all`` uses MariaDB's bulk execution (one round trip).
``?unix_socket=/path`` connects through a Unix socket. See
``cacheme.storages.sqldb`` for the other options.

TLS (keyword options, or URL query values; ``ssl-mode`` is taken too):
``ssl_mode`` as MySQL's clients name it: ``DISABLED``, ``PREFERRED`` (the
default: TLS when a CA or client certificate is given and the server offers
it), ``REQUIRED`` (TLS or no connection; the certificate is not verified),
``VERIFY_CA`` and ``VERIFY_IDENTITY`` (the server's certificate verified
against ``ssl_ca``/``ssl_capath``, with its host name: MariaDB Connector/C
checks both together). ``ssl_cert``/``ssl_key``: a client certificate.
"""
import os
from typing import Any, Dict
from urllib.parse import parse_qs, unquote, urlparse

from cacheme import _core
from cacheme.storages.sqldb import SQLStorage

__all__ = ["MySQLStorage", "parse_url"]

_TLS_OPTIONS = ("ssl_mode", "ssl_ca", "ssl_capath", "ssl_cert", "ssl_key")
_SSL_MODES = ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")


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
        name = key.replace("-", "_")
        if name not in ("unix_socket", *_TLS_OPTIONS):
            raise ValueError(f"mysql: unknown URL option {key!r} in {address!r}")
        out[name] = values[-1]
    return _check_tls(out)


def _check_tls(options: Dict[str, Any]) -> Dict[str, Any]:
    """ssl_mode's value (any case) checked and upper-cased; the files are str."""
    if options.get("ssl_mode") is not None:
        mode = options["ssl_mode"]
        if not isinstance(mode, str) or mode.upper() not in _SSL_MODES:
            raise ValueError(f"mysql: ssl_mode must be one of {', '.join(_SSL_MODES)}, "
                             f"not {mode!r}")
        options["ssl_mode"] = mode.upper()
    for name in _TLS_OPTIONS[1:]:
        if options.get(name) is not None:
            options[name] = os.fspath(options[name])
            if not isinstance(options[name], str):
                raise TypeError(f"mysql: {name} must be a str path")
    return options


class MySQLStorage(_core.MySQLClient, SQLStorage):
    _db = "mysql"

    def __init__(self, address: str, table: str, pool_size: int = 50, **options: Any):
        self._conn_options = parse_url(address)
        tls = {k: options.pop(k) for k in _TLS_OPTIONS if k in options}
        self._conn_options.update(_check_tls(tls))
        SQLStorage.__init__(self, address, table, pool_size=pool_size, **options)

    def _c_init(self, table: str, **kwargs: Any) -> None:
        kwargs["options"] = self._conn_options
        _core.MySQLClient.__init__(self, self.address, table, **kwargs)
