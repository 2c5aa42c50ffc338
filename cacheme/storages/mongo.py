"""MongoDB storage (0.3.0 module path ``cacheme.storages.mongo``).

``Storage(url="mongodb://host:port/", database="test", collection="cache",
pool_size=50, timeout=5.0, connect_timeout=5.0)``, or
``MongoStorage(address, database, collection, pool_size=50)`` as in 0.3.0.

Driven from C (``cacheme._core.MongoClient``): OP_MSG on non-blocking
sockets of the running asyncio loop, BSON built and read with libbson (no
motor, no pymongo, no libmongoc). Each get_all is one ``find`` with ``$in``,
and so are the single gets queued on a connection in one loop iteration
(up to 256 keys); set and set_all are one ``update`` command (upserts; one
statement per key), remove one ``delete``; every command carries
``maxTimeMS`` = ``timeout``, and the client gives up at the same time
(``MongoTimeoutError``: a miss in ``get``).

Documents are 0.3.0's, so both versions share one collection: ``key`` (the
node's full key), ``value`` (binary: ``serializer.dumps(value)``; without a
serializer a node can cache only bytes), ``updated_at`` and ``expire`` (UTC
datetimes, ``expire`` null without a TTL). Documents whose ``expire`` has
passed read as misses. ``connect()`` creates the unique index on ``key`` and
the index on ``expire`` (scripts/mongo.js); existing ones are kept. With the
server down, ``connect()`` (and ``register_storage``) still succeeds (a
warning is logged): requests then fail (misses in ``get``) until the server
answers, and the first connection made creates the indexes before anything
else.

URL: ``mongodb://[user:password@]host1[:port1][,host2[:port2],...][/[authdb]][?options]``.
Several hosts are a seed list: requests go to the writable primary, found
with ``hello`` (a secondary names it); a server that stops being the primary
is left for the one found anew, and a request it refused as "not primary" is
sent once more. A seed that cannot be reached passes the turn to the next
one, and requests pending on a connection to the primary that breaks are
sent once to the next server (finds, upserts and deletes can run twice; not
after a timeout). With one server they fail (misses in ``get``) and the next
ones reconnect after the backoff (50 ms doubling to 1 s). Not supported (a
ValueError says so): ``mongodb+srv://`` (SRV lookup).

TLS, with the URL options of MongoDB's connection string spec (names
case-insensitive): ``tls=true`` (or ``ssl=true``; any other tls option
implies it), ``tlsCAFile`` (a PEM file of the CAs to trust; default the
system's), ``tlsCertificateKeyFile`` (a PEM holding the client's
certificate and its unencrypted key), ``tlsAllowInvalidCertificates``,
``tlsAllowInvalidHostnames`` (the certificate need not name the host of the
URL) and ``tlsInsecure`` (both). OpenSSL driven non-blocking on the loop
(the transport Redis's ``rediss://`` uses), TLS 1.2 at least, the handshake
within ``connect_timeout``. ``tlsCertificateKeyFilePassword`` (an encrypted
key) and the OCSP options are refused.

``busy_poll`` (None: 0.0002 s, or 0 where the process can use one CPU
only; 0 turns it off; also a URL option): after requests go out on an
otherwise idle loop, the replies are polled for up to that long instead of
sleeping in epoll_wait, as for Redis and SQL. ``busy_poll_info()`` counts
the spins.

Credentials in the URL authenticate each connection with SCRAM
(``authMechanism`` SCRAM-SHA-256 or SCRAM-SHA-1; without it SCRAM-SHA-256
when the server lists it for the user, else SCRAM-SHA-1) against
``authSource``, else the URL's database, else ``admin``. Refused credentials
fail requests with ``MongoAuthError`` (a ``MongoConnectionError``).
"""
import logging
from datetime import timedelta
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, unquote

from cacheme import _core
from cacheme.models import sentinel
from cacheme.storages.base import BaseStorage, bool_text, int_option, seconds_option
from cacheme.storages.sqldb import _Key

__all__ = ["MongoStorage", "MongoError", "MongoConnectionError", "MongoTimeoutError",
           "MongoServerError", "MongoAuthError", "parse_url"]

logger = logging.getLogger("cacheme")

_AVAILABLE = bool(getattr(_core, "_mongo_available", 0))
_NO_BSON = ("cacheme was built without libbson, which the MongoDB storage needs: install "
            "libbson-dev (apt-get install libbson-dev) and rebuild cacheme")

if _AVAILABLE:
    MongoError = _core.MongoError
    MongoConnectionError = _core.MongoConnectionError
    MongoTimeoutError = _core.MongoTimeoutError
    MongoServerError = _core.MongoServerError
    MongoAuthError = _core.MongoAuthError
    _Base: Any = _core.MongoClient
else:
    class MongoError(Exception):  # type: ignore[no-redef]
        """The MongoDB storage failed."""

    class MongoConnectionError(MongoError, ConnectionError):  # type: ignore[no-redef]
        pass

    class MongoTimeoutError(MongoError, TimeoutError):  # type: ignore[no-redef]
        pass

    class MongoServerError(MongoError):  # type: ignore[no-redef]
        pass

    class MongoAuthError(MongoConnectionError):  # type: ignore[no-redef]
        pass

    class _Base:  # type: ignore[no-redef]
        def __init__(self, *args: Any, **kwargs: Any):
            raise RuntimeError(_NO_BSON)


_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1")


def _host_port(part: str, url: str) -> Tuple[str, int]:
    if part.startswith("["):
        end = part.find("]")
        if end < 0:
            raise ValueError(f"mongodb URL {url!r}: unterminated IPv6 address {part!r}")
        host, rest = part[1:end], part[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"mongodb URL {url!r}: bad host {part!r}")
        port_s = rest[1:] if rest else ""
    else:
        host, _, port_s = part.partition(":")
    if not host:
        raise ValueError(f"mongodb URL {url!r}: empty host")
    port = 27017
    if port_s:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ValueError(f"mongodb URL {url!r}: bad port {port_s!r}")
        port = int(port_s)
    return host, port


def parse_url(url: str) -> Dict[str, Any]:
    """The parts of a mongodb:// URL: hosts [(host, port)], user, password,
    authdb (the path's database, or None) and options (dict)."""
    if url.startswith("mongodb+srv://"):
        raise ValueError(
            f"mongodb+srv:// URLs are not supported (SRV lookup for MongoDB is not built): "
            f"list the hosts in a mongodb:// URL instead: {url!r}")
    if not url.startswith("mongodb://"):
        raise ValueError(f"not a mongodb:// URL: {url!r}")
    rest = url[len("mongodb://"):]
    cut = len(rest)
    for sep in "/?":
        i = rest.find(sep)
        if 0 <= i < cut:
            cut = i
    authority, tail = rest[:cut], rest[cut:]
    user = password = None
    if "@" in authority:
        cred, _, authority = authority.rpartition("@")
        u, sep, p = cred.partition(":")
        user = unquote(u)
        password = unquote(p) if sep else None
    if not authority:
        raise ValueError(f"mongodb URL {url!r} names no host")
    hosts = [_host_port(part, url) for part in authority.split(",")]
    path, _, query = tail.partition("?")
    authdb = unquote(path.lstrip("/")) or None
    options = {k: v for k, v in parse_qsl(query, keep_blank_values=True)}
    return {"hosts": hosts, "user": user, "password": password, "authdb": authdb,
            "options": options, "tls": _tls_options(options, url)}


_TLS_FLAGS = ("tlsallowinvalidcertificates", "tlsallowinvalidhostnames", "tlsinsecure")
_TLS_FILES = {"tlscafile": "ca_file", "tlscertificatekeyfile": "certificate_key_file"}
_TLS_REFUSED = {
    "tlscertificatekeyfilepassword": "an encrypted key is not supported: decrypt it "
                                     "(openssl pkey -in KEY -out PLAIN)",
    "tlsdisableocspendpointcheck": "OCSP is not checked",
    "tlsdisablecertificaterevocationcheck": "OCSP is not checked",
}


def _tls_options(options: Dict[str, str], url: str) -> Optional[Dict[str, Any]]:
    """The MongoClient tls dict from the URL's TLS options (MongoDB's
    connection string spec: keys case-insensitive), or None for plain TCP."""
    low = {k.lower(): (k, v) for k, v in options.items()}
    on: Optional[bool] = None
    for key in ("tls", "ssl"):
        if key in low:
            name, value = low[key]
            v = bool_text(f"mongodb URL {url!r}", name, value)
            if on is not None and on != v:
                raise ValueError(f"mongodb URL {url!r}: tls and ssl disagree")
            on = v
    for key, why in _TLS_REFUSED.items():
        if key in low:
            raise ValueError(f"mongodb URL {url!r}: {low[key][0]} is not supported ({why})")
    given = [low[k][0] for k in (*_TLS_FILES, *_TLS_FLAGS) if k in low]
    if on is False and given:
        raise ValueError(f"mongodb URL {url!r}: {', '.join(given)} given with tls=false")
    if not on and not given:
        return None
    tls: Dict[str, Any] = {}
    for key, field in _TLS_FILES.items():
        if key in low:
            name, path = low[key]
            if not path:
                raise ValueError(f"mongodb URL {url!r}: {name} is empty")
            tls[field] = path
    flags = {k: bool_text(f"mongodb URL {url!r}", *low[k]) for k in _TLS_FLAGS if k in low}
    if "tlsinsecure" in flags and len(flags) > 1:
        raise ValueError(f"mongodb URL {url!r}: tlsInsecure cannot be given with "
                         f"tlsAllowInvalidCertificates or tlsAllowInvalidHostnames")
    insecure = flags.get("tlsinsecure", False)
    tls["allow_invalid_certificates"] = insecure or flags.get("tlsallowinvalidcertificates", False)
    tls["allow_invalid_hostnames"] = insecure or flags.get("tlsallowinvalidhostnames", False)
    return tls


class MongoStorage(_Base, BaseStorage):  # type: ignore[misc, valid-type]
    """0.3.0's ``MongoStorage(address, database, collection, pool_size=50)``,
    with ``timeout``, ``connect_timeout`` and ``busy_poll`` (seconds)."""

    def __init__(self, address: str, database: str, collection: str, pool_size: int = 50,
                 timeout: float = 5.0, connect_timeout: float = 5.0,
                 busy_poll: Optional[float] = None):
        if not _AVAILABLE:
            raise RuntimeError(_NO_BSON)
        BaseStorage.__init__(self, address)
        for name, v in (("database", database), ("collection", collection)):
            if not isinstance(v, str) or not v:
                raise TypeError(f"mongodb storage: {name} must be a non-empty str, not {v!r}")
        owner = "mongodb storage"
        parts = parse_url(address)
        opts = parts["options"]
        mech = opts.get("authMechanism")
        if mech is not None and mech not in _MECHANISMS:
            raise ValueError(f"mongodb URL {address!r}: authMechanism={mech} is not supported "
                             f"(supported: {', '.join(_MECHANISMS)})")
        auth: Dict[str, Any] = {}
        if parts["user"] is not None:
            if not parts["user"]:
                raise ValueError(f"mongodb URL {address!r}: empty user name")
            auth = {
                "user": parts["user"],
                "password": parts["password"] or "",
                # MongoDB's rule: authSource, else the URL's database, else admin
                "auth_source": opts.get("authSource") or parts["authdb"] or "admin",
                "auth_mechanism": mech,
            }
        elif mech is not None:
            raise ValueError(f"mongodb URL {address!r}: authMechanism without credentials")
        self.database = database
        self.collection = collection
        self.pool_size = int_option(owner, "pool_size", pool_size, 1)
        if busy_poll is None and "busy_poll" in opts:
            try:
                busy_poll = float(opts["busy_poll"])
            except ValueError:
                raise ValueError(f"mongodb URL {address!r}: busy_poll must be a number of "
                                 f"seconds, not {opts['busy_poll']!r}") from None
        _Base.__init__(
            self,
            [tuple(h) for h in parts["hosts"]],
            database,
            collection,
            pool_size=pool_size,
            timeout=seconds_option(owner, "timeout", timeout),
            connect_timeout=seconds_option(owner, "connect_timeout", connect_timeout),
            tls=parts["tls"],
            busy_poll=busy_poll,
            **auth,
        )

    async def connect(self) -> None:
        """Create the indexes of scripts/mongo.js (kept when they exist).
        A server that cannot be reached does not fail it (0.3.0's motor
        connected lazily too): the indexes are then created on the first
        connection made, before anything else is sent on it. Refused
        credentials raise."""
        try:
            await self._create_indexes()
        except MongoAuthError:
            raise
        except (MongoConnectionError, MongoTimeoutError) as e:
            self._indexes_later = 1
            logger.warning("cacheme: %r: MongoDB not reachable (%s); the storage connects "
                           "(and creates its indexes) on first use", self, e)

    async def close(self) -> None:
        """Close every connection (every loop's); the next request connects anew."""
        self.close_now()

    # 0.3.0's hooks, by full key, on raw bytes (the value field as stored;
    # 0.3.0 gave motor's whole document)
    async def get_by_key(self, key: str) -> Any:
        """The stored bytes of key, or None."""
        value = await self.get(_Key(key), None)
        return None if value is sentinel else value

    async def get_by_keys(self, keys: List[str]) -> Dict[str, Any]:
        """{key: stored bytes} of the keys found, in one find."""
        found = await self.get_all([_Key(k) for k in keys], None)
        return {node.key: value for node, value in found}

    async def set_by_key(self, key: str, value: Any, ttl: Optional[timedelta]) -> None:
        await self.set(_Key(key), value, ttl, None)

    async def set_by_keys(self, data: Dict[str, Any], ttl: Optional[timedelta]) -> None:
        await self.set_all([(_Key(k), v) for k, v in data.items()], ttl, None)

    async def remove_by_key(self, key: str) -> None:
        await self.remove(_Key(key))

    def __repr__(self) -> str:
        return (f"MongoStorage({self.address!r}, database={self.database!r}, "
                f"collection={self.collection!r})")
