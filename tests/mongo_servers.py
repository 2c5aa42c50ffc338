"""MongoDB-wire servers for the tests: mongoeco (https://pypi.org/project/mongoeco/),
a pure-Python server of MongoDB's wire protocol over in-memory storage, run by
tests/mongoeco_server.py from its own venv, .bench/venv-mongoeco (mongoeco
needs CPython >= 3.13; benchmarks/mongo_venvs.sh, run by make test-venvs,
makes it with pyenv's 3.13). Each server listens on a free local port and
starts empty; nothing here uses a MongoDB of the machine's.

Fixtures (import them into a test module):
  mongo_server         one server for the session (killed at its end); tests
                       share it, so each uses collections of its own (unique())
  mongo_auth_server    one server for the session with a SCRAM user:
                       .user / .password (MONGO_USER / MONGO_PASSWORD), source
                       db admin; .url carries them
  mongo_server_factory start_mongo_server() for servers of a test's own (killed
                       at the test's end): kill/restart, pause/resume, seed lists;
                       its .replica_set() gives (primary, secondary) as
                       start_replica_set() does
Without the venv (or without a CPython >= 3.13 to make it) the fixtures skip
saying which.

A server handle (MongoServer) has .port, .url ("mongodb://127.0.0.1:PORT"),
.kill() (SIGKILL: connections reset, no goodbye), .stop() (SIGTERM),
.restart() (a fresh server on the same port: the in-memory data is gone),
.pause() / .resume() (SIGSTOP / SIGCONT: connections stay open and nothing is
answered, for timeouts), .alive, .address ("127.0.0.1:PORT"), .commands()
(the name of every command it received, in order: what a driver sent).

start_replica_set() -> (primary, secondary): mongoeco whose hello also says
setName "rs0", hosts [both], primary and me (itself) as a replica set's
primary does, and a FakeSecondary (tests/mongoeco_server.py --secondary-of, no
mongoeco behind it): hello with isWritablePrimary false, secondary true, the
same setName/hosts and primary; ping; every other command fails with
NotWritablePrimary, code 10107. A seed list that starts on a non-primary:
f"mongodb://{secondary.address},{primary.address}/?replicaSet=rs0". Killing
the primary and restarting it on its port is how a failover looks here.

What mongoeco 4.11 (as installed by mongo_venvs.sh) does of what cacheme's
MongoDB storage uses, checked with pymongo 4.20:
  - OP_MSG (kind 0 body, kind 1 document sequences: pymongo's bulk writes
    use them; checksum flag; moreToCome) and legacy OP_QUERY on $cmd; no
    OP_COMPRESSED (hello's "compression" is accepted, nothing compressed).
  - hello / isMaster: maxWireVersion 20, version "7.0.0", helloOk,
    isWritablePrimary, connectionId, maxMessageSizeBytes 48000000; a
    standalone (no setName/hosts: see start_replica_set). No saslSupportedMechs
    in the reply (drivers then pick SCRAM-SHA-1 when the user names none); no
    speculativeAuthenticate (drivers fall back to saslStart).
  - find with {key: {$in: [...]}}, limit, singleBatch, maxTimeMS: accepted
    and answered (maxTimeMS is validated; a slow query can't be made to test
    that it is enforced: $where runs only a safe subset).
  - update with several statements, upsert: true, $set, ordered false: one
    reply with n, nModified, upserted [{index, _id: ObjectId}].
  - delete {q, limit: 1}: n.
  - createIndexes: unique (E11000 DuplicateKeyError, code 11000, on a second
    insert) and TTL (expireAfterSeconds). Unlike MongoDB's once-a-minute TTL
    monitor, mongoeco drops a document its TTL index says expired when the
    collection is next read: an expired document is never returned.
  - documents round-trip with their BSON types: str, binary (subtype 0, bytes
    in pymongo), UTC datetime (millisecond precision), null, ObjectId _id.
  - authentication: SCRAM-SHA-256, SCRAM-SHA-1 (saslStart/saslContinue) and
    PLAIN of users given at start-up (the mongo_auth_server fixture); a wrong
    password fails with "Authentication failed" and, unlike MongoDB, no code
    (MongoDB: 18); a command before authenticating fails with "Authentication
    required for <command>" and no code (MongoDB: 13, Unauthorized). No
    createUser ("unsupported wire command: createUser"): users exist only as
    given at start-up. The server salts SCRAM passwords as given, so
    tests/mongoeco_server.py gives SCRAM-SHA-1 the md5("user:mongo:password")
    form drivers send for that mechanism.
It is slow (pure Python: some hundreds of sequential finds a second on this
2-core VM, 2-5 ms of its CPU per upsert), so tests keep their data small, and
never time anything.
"""
from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Iterable, List, Optional

import pytest

from sql_servers import _wait_port, free_port, server_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_MONGOECO = os.path.join(ROOT, ".bench", "venv-mongoeco", "bin", "python")
SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mongoeco_server.py")
MONGO_USER = "cacheme"
MONGO_PASSWORD = "s3cret-pw"

_ids = itertools.count()


def find_python313() -> Optional[str]:
    """A CPython >= 3.13 as benchmarks/mongo_venvs.sh finds one, or None."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(os.path.join(root, "versions", "3.1[3-9].*", "bin", "python3.1?")))
    if found:
        return found[-1]
    return shutil.which("python3.14") or shutil.which("python3.13")


def unavailable() -> Optional[str]:
    """Why no mongoeco server can run here, or None if one can."""
    if os.path.exists(VENV_MONGOECO):
        return None
    if find_python313() is None:
        return ("no CPython >= 3.13 found (pyenv or python3.13 on PATH): mongoeco, the "
                "MongoDB-wire test server, needs it")
    return "mongoeco venv missing: run bash benchmarks/mongo_venvs.sh (make test-venvs)"


class MongoServer:
    def __init__(self, users: Iterable[tuple] = (), replset: Optional[str] = None) -> None:
        reason = unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        self.users = [tuple(u) for u in users]
        self.replset = replset
        self.hosts: List[str] = []
        self.dir = tempfile.mkdtemp(prefix="cacheme-mongo-")
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self._paused = False
        self._log = None
        self._commands = os.path.join(self.dir, "commands.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _args(self) -> List[str]:
        args = [f"--user={':'.join(u)}" for u in self.users]
        if self.replset:
            args += [f"--replset={self.replset}", f"--hosts={','.join(self.hosts or [self.address])}"]
        return args

    def commands(self) -> List[str]:
        """The name of every command the server received, in order."""
        if not os.path.exists(self._commands):
            return []
        with open(self._commands) as f:
            return f.read().split()

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "MongoServer":
        self._log = open(os.path.join(self.dir, f"server{next(_ids)}.log"), "w")
        self.proc = subprocess.Popen(
            [VENV_MONGOECO, "-I", SERVER_SCRIPT, f"--parent={os.getpid()}", f"--port={self.port}",
             f"--log={self._commands}", *self._args()],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=self._log, env=server_env())
        self._paused = False
        try:
            _wait_port(self.port, self.proc)
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {self.log()}") from None
        return self

    def log(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        with open(self._log.name) as f:
            return f.read()

    def _signal(self, sig: int) -> None:
        if self.alive:
            self.proc.send_signal(sig)

    def _state(self) -> str:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    def _wait_state(self, stopped: bool) -> None:
        # a signal is delivered asynchronously: returns once it has been
        deadline = time.monotonic() + 30
        while self.alive and (self._state() in "Tt") != stopped:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {self.proc.pid} not {'stopped' if stopped else 'running'}")
            time.sleep(0.005)

    def pause(self) -> None:
        """SIGSTOP; returns once the server is stopped."""
        self._signal(signal.SIGSTOP)
        self._paused = True
        self._wait_state(True)

    def resume(self) -> None:
        """SIGCONT; returns once the server runs again."""
        self._signal(signal.SIGCONT)
        self._paused = False
        self._wait_state(False)

    def _reap(self, sig: int, timeout: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if self._paused and sig != signal.SIGKILL:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._paused = False
        if self._log is not None:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL: the kernel resets its connections."""
        self._reap(signal.SIGKILL, 10)

    def stop(self) -> None:
        """SIGTERM: the server closes its listener and connections."""
        self._reap(signal.SIGTERM, 10)

    def restart(self) -> "MongoServer":
        """A fresh, empty server on the same port (the old one killed first
        if still running)."""
        self.kill()
        return self.start()

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_mongo_server(users: Iterable[tuple] = ()) -> MongoServer:
    """A running server of the caller's (who must cleanup() it): users are
    (name, password) or (name, password, source_db) SCRAM users."""
    srv = MongoServer(users)
    try:
        return srv.start()
    except BaseException:
        srv.cleanup()
        raise


class FakeSecondary(MongoServer):
    """A replica-set secondary of primary (no mongoeco behind it): hello
    says isWritablePrimary false, secondary true, primary's address, the
    set's name and hosts; ping answers; every other command fails with
    NotWritablePrimary (10107). For seed lists that start on a non-primary."""

    def __init__(self, primary: MongoServer) -> None:
        super().__init__(replset=primary.replset)
        self.primary = primary

    def _args(self) -> List[str]:
        return [f"--secondary-of={self.primary.address}", f"--replset={self.replset}",
                f"--hosts={','.join(self.hosts)}"]


def start_replica_set(name: str = "rs0"):
    """(primary, secondary): mongoeco answering hello as the primary of
    replica set name, and a FakeSecondary; both list both in hosts. The
    caller cleans both up. Seed list: f"mongodb://{secondary.address},{primary.address}"."""
    primary = MongoServer(replset=name)
    secondary = FakeSecondary(primary)
    primary.hosts = secondary.hosts = [primary.address, secondary.address]
    try:
        primary.start()
        secondary.start()
    except BaseException:
        primary.cleanup()
        secondary.cleanup()
        raise
    return primary, secondary


class _AuthServer(MongoServer):
    user = MONGO_USER
    password = MONGO_PASSWORD

    @property
    def url(self) -> str:
        return f"mongodb://{self.user}:{self.password}@127.0.0.1:{self.port}"

    @property
    def url_no_auth(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"


def _session_server(users: List[tuple], cls=MongoServer):
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    srv = cls(users)
    try:
        srv.start()
    except Exception as e:  # pragma: no cover - depends on the machine
        srv.cleanup()
        pytest.skip(f"mongoeco server did not start: {e}")
    return srv


@pytest.fixture(scope="session")
def mongo_server():
    srv = _session_server([])
    yield srv
    srv.cleanup()


@pytest.fixture(scope="session")
def mongo_auth_server():
    srv = _session_server([(MONGO_USER, MONGO_PASSWORD)], _AuthServer)
    yield srv
    srv.cleanup()


@pytest.fixture
def mongo_server_factory():
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    started: List[MongoServer] = []

    def start(users: Iterable[tuple] = ()) -> MongoServer:
        srv = start_mongo_server(users)
        started.append(srv)
        return srv

    def replica_set(name: str = "rs0"):
        pair = start_replica_set(name)
        started.extend(pair)
        return pair

    start.replica_set = replica_set
    yield start
    for srv in started:
        srv.cleanup()


_PYMONGO_SCRIPT = r"""
import datetime, json, sys
import bson, pymongo
from bson.binary import Binary

def typed(v):
    # the BSON type each value came back as, by pymongo's decoding
    if v is None:
        return {"type": "null"}
    if isinstance(v, bool):
        return {"type": "bool", "value": v}
    if isinstance(v, bson.int64.Int64):
        return {"type": "long", "value": int(v)}
    if isinstance(v, int):
        return {"type": "int", "value": v}
    if isinstance(v, float):
        return {"type": "double", "value": v}
    if isinstance(v, str):
        return {"type": "string", "value": v}
    if isinstance(v, Binary):
        return {"type": "binData", "subtype": v.subtype, "hex": bytes(v).hex()}
    if isinstance(v, bytes):
        return {"type": "binData", "subtype": 0, "hex": v.hex()}
    if isinstance(v, datetime.datetime):
        return {"type": "date", "ms": int(v.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)}
    if isinstance(v, bson.ObjectId):
        return {"type": "objectId", "value": str(v)}
    return {"type": type(v).__name__, "value": repr(v)}

url, db, coll, op, arg = sys.argv[1:6]
# one server spoken to directly, unless the URL names a replica set
direct = {} if "replicaSet=" in url else {"directConnection": True}
c = pymongo.MongoClient(url, serverSelectionTimeoutMS=20000, **direct)
arg = json.loads(arg)
if op == "find":
    out = [{k: typed(v) for k, v in d.items()} for d in c[db][coll].find(arg).sort("key", 1)]
elif op == "command":
    out = json.loads(bson.json_util.dumps(c[db].command(arg)))
elif op == "insert":
    # documents given as {field: typed value}: the inverse of typed()
    def untyped(t):
        k = t["type"]
        if k == "null":
            return None
        if k == "binData":
            return Binary(bytes.fromhex(t["hex"]), t.get("subtype", 0))
        if k == "date":
            return datetime.datetime.fromtimestamp(t["ms"] / 1000, datetime.timezone.utc)
        if k == "long":
            return bson.int64.Int64(t["value"])
        return t["value"]
    docs = [{k: untyped(v) for k, v in d.items()} for d in arg]
    out = len(c[db][coll].insert_many(docs).inserted_ids) if docs else 0
else:
    raise SystemExit(f"unknown op {op}")
print(json.dumps(out))
"""


def pymongo_call(url: str, db: str, coll: str, op: str, arg) -> object:
    """pymongo (of .bench/venv-mongoeco), in a subprocess, on a server: the
    cross-check of what a storage wrote or reads. op "find" (arg a filter)
    returns the documents sorted by key, each field as {"type": BSON type
    name, ...value}: string/int/long/double/bool {"value"}, binData
    {"subtype", "hex"}, date {"ms" since the epoch}, null, objectId
    {"value"}; "command" (arg a command document) returns the reply as
    extended JSON; "insert" (arg documents in find's typed form) inserts them."""
    import json

    r = subprocess.run([VENV_MONGOECO, "-I", "-c", _PYMONGO_SCRIPT, url, db, coll, op,
                        json.dumps(arg)], capture_output=True, text=True, timeout=120,
                       cwd="/", env=server_env())
    if r.returncode != 0:
        raise RuntimeError(f"pymongo {op} failed: {r.stderr}")
    return json.loads(r.stdout)


def wait_until(pred, timeout: float = 30.0) -> None:
    """Polls pred() until true (setup helper; never a timed assertion)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)
