"""The MongoDB-wire test servers of tests/mongo_servers.py (mongoeco) do what
the MongoDB tests rely on: answer the handshake, keep documents with their
BSON types, die, come back empty on the same port, stop answering while
paused, and require the SCRAM user on the auth server."""
import socket

import pytest

from conftest import unique
from mongo_servers import (  # noqa: F401 (fixtures)
    MONGO_PASSWORD,
    MONGO_USER,
    mongo_auth_server,
    mongo_server,
    mongo_server_factory,
    pymongo_call,
)


def _refused(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_hello(mongo_server):
    reply = pymongo_call(mongo_server.url, "admin", "", "command", {"hello": 1})
    assert reply["ok"] == 1.0
    assert reply["isWritablePrimary"] is True
    assert reply["maxWireVersion"] >= 17


def test_documents_keep_bson_types(mongo_server):
    coll = unique("srv_types")
    doc = {"key": {"type": "string", "value": "k1"},
           "value": {"type": "binData", "subtype": 0, "hex": "00ff10"},
           "expire": {"type": "null"},
           "updated_at": {"type": "date", "ms": 1700000000123},
           "n": {"type": "long", "value": 1 << 40}}
    assert pymongo_call(mongo_server.url, "test", coll, "insert", [doc]) == 1
    (got,) = pymongo_call(mongo_server.url, "test", coll, "find", {"key": "k1"})
    assert got.pop("_id")["type"] == "objectId"
    assert got == doc


def test_kill_restart_same_port_empty(mongo_server_factory):
    srv = mongo_server_factory()
    port = srv.port
    doc = {"key": {"type": "string", "value": "a"}}
    assert pymongo_call(srv.url, "test", "c", "insert", [doc]) == 1
    srv.kill()
    assert not srv.alive
    assert _refused(port)
    srv.restart()
    assert srv.port == port and srv.alive
    assert pymongo_call(srv.url, "test", "c", "find", {}) == []


def test_pause_resume(mongo_server_factory):
    srv = mongo_server_factory()
    pid = srv.proc.pid
    srv.pause()
    assert _state(pid) == "T"
    srv.resume()
    assert _state(pid) != "T"
    assert pymongo_call(srv.url, "admin", "", "command", {"ping": 1})["ok"] == 1.0


def test_stop_while_paused(mongo_server_factory):
    srv = mongo_server_factory()
    srv.pause()
    srv.stop()
    assert not srv.alive
    assert _refused(srv.port)


def test_two_servers_independent(mongo_server_factory):
    a, b = mongo_server_factory(), mongo_server_factory()
    assert a.port != b.port
    pymongo_call(a.url, "test", "c", "insert", [{"key": {"type": "string", "value": "x"}}])
    assert pymongo_call(b.url, "test", "c", "find", {}) == []
    a.kill()
    assert pymongo_call(b.url, "admin", "", "command", {"ping": 1})["ok"] == 1.0


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_auth_server(mongo_auth_server, mech):
    url = f"{mongo_auth_server.url}/?authMechanism={mech}"
    coll = unique("srv_auth")
    assert pymongo_call(url, "test", coll, "insert", [{"key": {"type": "string", "value": "a"}}]) == 1
    assert len(pymongo_call(url, "test", coll, "find", {})) == 1
    assert mongo_auth_server.user == MONGO_USER and mongo_auth_server.password == MONGO_PASSWORD


def test_auth_server_requires_auth(mongo_auth_server):
    with pytest.raises(RuntimeError, match="Authentication required"):
        pymongo_call(mongo_auth_server.url_no_auth, "test", "c", "find", {})
    bad = f"mongodb://{MONGO_USER}:wrong@127.0.0.1:{mongo_auth_server.port}"
    with pytest.raises(RuntimeError, match="Authentication failed"):
        pymongo_call(bad, "test", "c", "find", {})


def test_commands_log(mongo_server_factory):
    srv = mongo_server_factory()
    pymongo_call(srv.url, "test", "c", "find", {"key": "a"})
    assert "find" in srv.commands()
    assert srv.commands().index("find") > 0  # after the handshake


def test_replica_set_hello(mongo_server_factory):
    primary, secondary = mongo_server_factory.replica_set()
    hosts = [primary.address, secondary.address]
    hp = pymongo_call(primary.url, "admin", "", "command", {"hello": 1})
    assert (hp["isWritablePrimary"], hp["setName"], hp["primary"], hp["me"]) == (
        True, "rs0", primary.address, primary.address)
    assert hp["hosts"] == hosts
    hs = pymongo_call(secondary.url, "admin", "", "command", {"hello": 1})
    assert (hs["isWritablePrimary"], hs["secondary"], hs["setName"], hs["primary"], hs["me"]) == (
        False, True, "rs0", primary.address, secondary.address)
    assert hs["hosts"] == hosts


def test_secondary_refuses_data_commands(mongo_server_factory):
    primary, secondary = mongo_server_factory.replica_set()
    with pytest.raises(RuntimeError, match="10107|not primary|NotWritablePrimary"):
        pymongo_call(secondary.url, "admin", "", "command", {"find": "c", "filter": {}})
    assert "find" in secondary.commands()


def test_seed_list_starting_on_secondary_reaches_primary(mongo_server_factory):
    primary, secondary = mongo_server_factory.replica_set()
    url = f"mongodb://{secondary.address},{primary.address}/?replicaSet=rs0"
    doc = {"key": {"type": "string", "value": "p"}}
    assert pymongo_call(url, "test", "c", "insert", [doc]) == 1
    assert "insert" in primary.commands() and "insert" not in secondary.commands()
    assert len(pymongo_call(primary.url, "test", "c", "find", {})) == 1
