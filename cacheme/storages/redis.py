"""Redis storage (0.3.0 module path ``cacheme.storages.redis``).

The client is C (``cacheme._core.RedisClient``): non-blocking sockets on the
running asyncio loop, RESP written in C, replies parsed by hiredis, automatic
pipelining (every request issued in one loop iteration leaves in one write
per connection), Redis Cluster routing. No Python Redis package is used.

URLs::

    redis://[[user]:password@]host[:port][/db][?option=value...]
    rediss://[[user]:password@]host[:port][/db][?option=value...]   (TLS)
    unix:///path/to/redis.sock[?db=N&password=...]

Options (keyword arguments of ``Storage(url, ...)``, or URL query values):

- ``pool_size`` (100): connections per server, at most.
- ``cluster`` (False): Redis Cluster; the URL names any one node. A
  ``get_all`` whose keys span masters keeps what the reachable ones answered
  when another is down or times out: its keys are misses, each failed master
  is logged once, and the result is a ``cacheme._core.PartialResult`` (a
  list whose ``errors`` counts the failed masters). The keys of a slot half
  migrated are followed one by one (ASK), however long the migration lasts.
- ``connect_timeout`` (5.0 s), ``timeout`` (5.0 s, per request): past them a
  request fails with RedisTimeoutError (a miss in ``get``).
- ``pipeline`` (128): replies outstanding on a connection before the pool
  opens another one.
- ``retry_backoff`` (0.05 s), ``retry_backoff_max`` (1.0 s): after a
  connection failure no new connection is tried for this long, doubling per
  failure; meanwhile requests fail at once (a miss in ``get``).
- ``lease`` (None: off; a ``timedelta`` or seconds): one load per key
  across every process sharing this Redis. On a miss of every remote cache
  the flight takes the key's lease (``SET <key>:lease <token> NX PX``)
  before loading; other processes wait for its value (pub/sub, no polling)
  instead of loading it too. A holder that dies lets the lease expire after
  this long, and one waiter takes over: make it longer than a load.
  See csrc/redis/lease.c.
- ``busy_poll`` (None: 0.0002 s, or 0 where the process can use one CPU
  only; 0 disables; at most 0.01; single server only): when the event loop
  has nothing else to run after the requests are written, poll the sockets
  for the replies for up to this long instead of letting the loop sleep in
  ``epoll_wait`` (see ``cacheme.storages.sqldb`` and csrc/net/busypoll.h).

TLS (``rediss://``, or ``ssl=True``; the options as redis-py names them,
also as URL query values):

- ``ssl_ca_certs`` (None: the system's CAs): a PEM file of the CAs to trust;
  ``ssl_ca_path``: a directory of hashed CA files (``openssl rehash``).
- ``ssl_certfile``, ``ssl_keyfile``: a client certificate (chain, PEM) and
  its key (unencrypted; in ``ssl_certfile`` when not given), for servers
  that require one (``tls-auth-clients yes``).
- ``ssl_cert_reqs`` (``"required"``): ``"required"``/``"optional"`` verify
  the server's certificate (a client treats both alike, as Python's ssl
  module does), ``"none"`` verifies nothing (nor the host name); also
  ``ssl.CERT_REQUIRED``/``CERT_OPTIONAL``/``CERT_NONE``.
- ``ssl_check_hostname`` (True): the certificate must name the host of the
  URL (its IP address when the URL has one), and the nodes of a cluster
  their announced addresses. The handshake is part of ``connect_timeout``.

TLS 1.2 is the minimum. A certificate that does not verify fails the
connection with a ``RedisConnectionError`` naming the reason and the server.

Values are stored as cacheme 0.3.0 stored them, so both can share a cache:
``serializer.dumps({"value": v, "updated_at": <utc datetime>})`` under
``node.full_key()``, with SETEX for TTLs in whole seconds and PSETEX
otherwise. Nodes without a serializer use PickleSerializer (0.3.0 refused them).
"""
import asyncio
import logging
import os
from datetime import timedelta
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs, unquote, urlparse

from cacheme import _core
from cacheme.storages.base import BaseStorage, bool_text, int_option, seconds_option

logger = logging.getLogger("cacheme")

RedisError = _core.RedisError
RedisConnectionError = _core.RedisConnectionError
RedisTimeoutError = _core.RedisTimeoutError
RedisResponseError = _core.RedisResponseError

__all__ = [
    "RedisStorage",
    "RedisError",
    "RedisConnectionError",
    "RedisTimeoutError",
    "RedisResponseError",
    "parse_url",
]

_FLOAT_OPTIONS = ("connect_timeout", "timeout", "retry_backoff", "retry_backoff_max", "busy_poll")
_INT_OPTIONS = ("pool_size", "pipeline", "db", "max_reply_elements", "max_bulk_bytes")
_SSL_STR_OPTIONS = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")
_SSL_OPTIONS = ("ssl", *_SSL_STR_OPTIONS, "ssl_cert_reqs", "ssl_check_hostname")
_CERT_REQS = {"none": 0, "optional": 1, "required": 2}
def _cert_reqs(value: Any) -> int:
    """ssl_cert_reqs as RedisClient takes it: 0 none, 1 optional, 2 required."""
    if isinstance(value, str):
        v = value.lower()
        if v.startswith("cert_"):
            v = v[5:]
        if v in _CERT_REQS:
            return _CERT_REQS[v]
    elif isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2):
        return int(value)  # ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED
    raise ValueError(
        f"redis: ssl_cert_reqs must be 'required', 'optional', 'none' or an ssl.CERT_* value, "
        f"not {value!r}"
    )


def parse_url(address: str) -> Dict[str, Any]:
    """The RedisClient keyword arguments an address stands for."""
    u = urlparse(address)
    out: Dict[str, Any] = {}
    query = {k: v[-1] for k, v in parse_qs(u.query).items()}
    if u.scheme in ("unix", "redis+unix"):
        path = unquote(u.path or u.netloc)
        if not path:
            raise ValueError(f"redis: no socket path in {address!r}")
        out["path"] = path
    elif u.scheme in ("redis", "rediss"):
        if u.scheme == "rediss":
            out["ssl"] = True
        if u.hostname:
            out["host"] = u.hostname
        try:
            port = u.port
        except ValueError:
            raise ValueError(f"redis: bad port in {address!r}") from None
        if port is not None:
            out["port"] = port
        db = (u.path or "/").strip("/")
        if db:
            if not db.isdigit():
                raise ValueError(f"redis: database must be a number, got {db!r} in {address!r}")
            out["db"] = int(db)
    else:
        raise ValueError(f"redis: unsupported URL scheme {u.scheme!r} in {address!r}")
    if u.username:
        out["username"] = unquote(u.username)
    if u.password is not None:
        out["password"] = unquote(u.password)
    for key, value in query.items():
        if key in _INT_OPTIONS:
            out[key] = int(value)
        elif key in _FLOAT_OPTIONS:
            out[key] = float(value)
        elif key in ("password", "username") or key in _SSL_STR_OPTIONS:
            out[key] = value
        elif key in ("ssl", "ssl_check_hostname", "tracking"):
            out[key] = bool_text("redis", key, value)
        elif key == "ssl_cert_reqs":
            out[key] = value
        else:
            raise ValueError(f"redis: unknown URL option {key!r} in {address!r}")
    return out


def _check_options(pool_size: Any, kwargs: Dict[str, Any]) -> None:
    """Each option's type and range, errors naming it (RedisClient checks
    them again)."""
    owner = "redis storage"
    int_option(owner, "pool_size", pool_size, 1)
    if "pipeline" in kwargs:
        int_option(owner, "pipeline", kwargs["pipeline"], 1)
    if "port" in kwargs:
        int_option(owner, "port", kwargs["port"], 1, 65535)
    if "db" in kwargs:
        int_option(owner, "db", kwargs["db"], 0)
    for name in ("connect_timeout", "timeout", "retry_backoff", "retry_backoff_max"):
        if name in kwargs:
            kwargs[name] = seconds_option(owner, name, kwargs[name])
    if kwargs.get("lease") is None:
        kwargs.pop("lease", None)
    else:
        kwargs["lease"] = seconds_option(owner, "lease", kwargs["lease"], zero_ok=True,
                                         zero_means="0: no lease")
    ssl_given = sorted(k for k in kwargs if k in _SSL_OPTIONS and k != "ssl")
    if ssl_given and not kwargs.get("ssl"):
        raise ValueError(
            f"{owner}: {', '.join(ssl_given)} given without TLS (use rediss:// or ssl=True)"
        )
    for name in _SSL_STR_OPTIONS:
        value = kwargs.get(name)
        if value is not None and not isinstance(value, str):
            value = os.fspath(value)
            kwargs[name] = value.decode() if isinstance(value, bytes) else value
    if "ssl_cert_reqs" in kwargs:
        kwargs["ssl_cert_reqs"] = _cert_reqs(kwargs["ssl_cert_reqs"])
    if "ssl" in kwargs:
        kwargs["ssl"] = bool(kwargs["ssl"])
    if "ssl_check_hostname" in kwargs:
        kwargs["ssl_check_hostname"] = bool(kwargs["ssl_check_hostname"])
    if "tracking" in kwargs:
        kwargs["tracking"] = bool(kwargs["tracking"])
    lo = kwargs.get("retry_backoff", 0.05)
    hi = kwargs.get("retry_backoff_max", 1.0)
    if hi < lo:
        raise ValueError(
            f"{owner}: retry_backoff_max ({hi}) must be >= retry_backoff ({lo})"
        )


class RedisStorage(_core.RedisClient, BaseStorage):
    """Redis (single server or cluster) as a cacheme storage.

    ``get``/``get_all``/``set``/``set_all``/``remove`` are the C methods of
    ``RedisClient``: each returns an awaitable at once, and its request goes
    out with the others of the same loop iteration.
    """

    def __init__(
        self,
        address: str,
        pool_size: int = 100,
        cluster: bool = False,
        **options: Any,
    ):
        BaseStorage.__init__(self, address)
        kwargs = parse_url(address)
        kwargs.update(options)
        allowed = ("host", "port", "path", "username", "password", "db", "pool_size", "cluster",
                   *_FLOAT_OPTIONS, "pipeline", "max_reply_elements", "max_bulk_bytes",
                   "lease", *_SSL_OPTIONS, "tracking")
        unknown = set(kwargs) - set(allowed)
        if unknown:
            raise TypeError(
                f"redis storage: unknown option(s) {', '.join(sorted(unknown))} "
                f"(allowed: {', '.join(allowed)})"
            )
        _check_options(pool_size, kwargs)
        self.pool_size = pool_size
        self.cluster = cluster
        self.options = options
        self._client_kwargs = dict(kwargs, pool_size=pool_size, cluster=bool(cluster))
        self._closed = False
        _core.RedisClient.__init__(self, **self._client_kwargs)

    async def connect(self) -> None:
        """Check the server answers (a cluster: load its slot map). A closed
        storage is opened again first, with the same settings."""
        if self._closed:
            _core.RedisClient.__init__(self, **self._client_kwargs)
            self._closed = False
        if self.cluster:
            await self._refresh_slots()
        else:
            await self.execute("PING")

    async def close(self) -> None:
        """Close every connection (every loop's). Requests then fail with
        RedisError until connect() (register_storage calls it) reopens it.

        With ``lease=``, the leases this process holds are given back first
        (a flight whose caller left fills and releases in the background;
        closing under it would keep other processes waiting until the lease
        expires), waiting at most ``timeout``."""
        drain = self._lease_drain()
        if drain is not None:
            timeout = self._client_kwargs.get("timeout", 5.0)
            try:
                await asyncio.wait_for(asyncio.shield(drain), timeout)
            except asyncio.TimeoutError:
                logger.warning("cacheme: redis storage closed with leases not given back "
                               "within %s s (they expire by themselves)", timeout)
        self._closed = True
        self.close_now()

    # 0.3.0's BaseStorage hooks, on raw bytes
    async def get_by_key(self, key: str) -> Any:
        return await self.execute("GET", key)

    async def get_by_keys(self, keys: List[str]) -> Dict[str, Any]:
        if not keys:
            return {}
        if self.cluster:
            # MGET may not cross slots: one GET per key, pipelined per master
            values = await asyncio.gather(*(self.execute("GET", k) for k in keys))
        else:
            values = await self.execute("MGET", *keys)
        return {k: v for k, v in zip(keys, values) if v is not None}

    async def remove_by_key(self, key: str) -> None:
        await self.execute("DEL", key)

    async def set_by_key(self, key: str, value: Any, ttl: Optional[timedelta]) -> None:
        if ttl is None:
            await self.execute("SET", key, value)
        else:
            await self.execute("PSETEX", key, max(1, round(ttl.total_seconds() * 1000)), value)

    async def set_by_keys(self, data: Dict[str, Any], ttl: Optional[timedelta]) -> None:
        for key, value in data.items():
            await self.set_by_key(key, value, ttl)

    def __repr__(self) -> str:
        return f"RedisStorage({self.address!r}, pool_size={self.pool_size}, cluster={self.cluster})"

