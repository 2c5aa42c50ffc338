"""cacheme 0.3.0 (motor) and ours share one MongoDB collection.

0.3.0 runs in its own venv (.bench/venv-mongo-030, benchmarks/mongo_venvs.sh)
in a subprocess from outside the tree (tests/mongo030_run.py); both talk to
the session's mongoeco server (tests/mongo_servers.py), and pymongo (of
.bench/venv-mongoeco) reads the documents back to compare their layout.

What 0.3.0's MongoStorage writes (checked here): one document per key,
{_id: ObjectId, key: string "cacheme:<key>:<version>", value: binary subtype
0, updated_at: UTC date, expire: UTC date, or null without a TTL}, written
with update {key} $set {value, updated_at, expire} upsert (set_all: a
bulk_write of such updates). The value is serializer.dumps(v) itself: its
storage keeps BaseStorage's (de)serialize, so there is no {"value",
"updated_at"} envelope in it as in Redis. A document whose expire is past is a
miss (0.3.0 compares it with now; it creates no TTL index).

The tests that need ours skip with "MongoStorage not built" until
cacheme.storages.mongo exists (branch h-mongo).
"""
import asyncio
import base64
import json
import os
import pickle
import re
import subprocess
import time

import pytest

import cacheme
from conftest import unique
from mongo030_run import SERIALIZERS, item_class, item_value
from mongo_servers import (  # noqa: F401 (fixtures)
    ROOT,
    mongo_auth_server,
    mongo_server,
    pymongo_call,
    server_env,
)

VENV_030 = os.path.join(ROOT, ".bench", "venv-mongo-030", "bin", "python")
RUN_030 = os.path.join(ROOT, "tests", "mongo030_run.py")
DB = "test"

try:
    import cacheme.storages.mongo  # noqa: F401

    OURS_MISSING = None
except Exception as e:  # ImportError until h-mongo lands; a build without libbson
    OURS_MISSING = f"MongoStorage not built ({type(e).__name__}: {e})"

needs_030 = pytest.mark.skipif(not os.path.exists(VENV_030),
                               reason="cacheme 0.3.0 venv missing (bash benchmarks/mongo_venvs.sh)")
needs_ours = pytest.mark.skipif(OURS_MISSING is not None, reason=OURS_MISSING or "")
pytestmark = needs_030
each_serializer = pytest.mark.parametrize("ser", ["pickle", "json", "msgpack"])

FIELDS = {"_id", "key", "value", "updated_at", "expire"}


def _run_030_sync(url, coll, spec):
    r = subprocess.run([VENV_030, "-I", RUN_030, url, DB, coll, json.dumps(spec)],
                       capture_output=True, text=True, timeout=300, cwd="/", env=server_env())
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


async def run_030(url, coll, ser, ttl=3600, get=(), get_all=(), by="030"):
    """cacheme 0.3.0 getting items through a Node cached in coll only."""
    spec = {"serializer": ser, "ttl": ttl, "get": list(get), "get_all": list(get_all), "by": by}
    return await asyncio.get_running_loop().run_in_executor(None, _run_030_sync, url, coll, spec)


def docs(url, coll):
    """The collection's documents as pymongo reads them, by key."""
    return {d["key"]["value"]: d for d in pymongo_call(url, DB, coll, "find", {})}


def decode(ser, hexvalue):
    """A value field's bytes decoded without cacheme: they are
    serializer.dumps(v), no envelope."""
    raw = bytes.fromhex(hexvalue)
    if ser == "pickle":
        return pickle.loads(base64.decodebytes(raw))
    if ser == "json":
        return json.loads(raw.decode())
    return SERIALIZERS[ser]().loads(raw)


def key(i):
    return f"cacheme:item:{i}:v1"


def check_layout(doc, ttl):
    """A document as 0.3.0 writes it (pymongo's typed form)."""
    assert set(doc) == FIELDS
    assert doc["_id"]["type"] == "objectId"
    assert doc["key"]["type"] == "string"
    assert doc["value"]["type"] == "binData" and doc["value"]["subtype"] == 0
    assert doc["updated_at"]["type"] == "date"
    if ttl is None:
        assert doc["expire"] == {"type": "null"}
    else:
        assert doc["expire"]["type"] == "date"
        # expire = now + ttl, updated_at = now: two reads of one clock, taken
        # around one call apart
        gap = doc["expire"]["ms"] - doc["updated_at"]["ms"]
        assert abs(gap - ttl * 1000) < 60_000


def wait_expired(url, coll):
    """Waits (never asserts on time) until every document's expire is past."""
    latest = max(d["expire"]["ms"] for d in docs(url, coll).values())
    while time.time() * 1000 <= latest + 5:
        time.sleep(0.05)


# ---------------------------------------------------------------- 0.3.0 alone


@each_serializer
@pytest.mark.parametrize("ttl", [3600, None])
async def test_030_layout(mongo_server, ser, ttl):
    """0.3.0's documents, read by pymongo: the layout ours must write and read."""
    coll = unique("compat_030_")
    out = await run_030(mongo_server.url, coll, ser, ttl, get=[1, 2], get_all=[3, 4])
    assert out["loads"] == [1, 2, 3, 4]
    got = docs(mongo_server.url, coll)
    assert sorted(got) == [key(i) for i in (1, 2, 3, 4)]
    for i in (1, 2, 3, 4):
        check_layout(got[key(i)], ttl)
        assert decode(ser, got[key(i)]["value"]["hex"]) == item_value(i, "030")


@each_serializer
async def test_030_expired_documents_miss(mongo_server, ser):
    """Documents in 0.3.0's layout put there by pymongo: 0.3.0 loads the
    expired ones and keeps the others (what ours must do too)."""
    coll = unique("compat_exp_")
    now = int(time.time() * 1000)
    dumps = SERIALIZERS[ser]().dumps
    rows = []
    for i, expire in ((1, now - 60_000), (2, now + 3_600_000), (3, None)):
        rows.append({
            "key": {"type": "string", "value": key(i)},
            "value": {"type": "binData", "subtype": 0, "hex": dumps(item_value(i, "seed")).hex()},
            "updated_at": {"type": "date", "ms": now},
            "expire": {"type": "null"} if expire is None else {"type": "date", "ms": expire},
        })
    pymongo_call(mongo_server.url, DB, coll, "insert", rows)
    out = await run_030(mongo_server.url, coll, ser, get=[1, 2, 3])
    assert out["loads"] == [1]
    assert out["get"] == [item_value(1, "030"), item_value(2, "seed"), item_value(3, "seed")]


# ---------------------------------------------------------------- both


def make_node(name, ser, ttl, by="ours"):
    Item, loads = item_class(name, ser, ttl, by)
    Item.__qualname__ = unique("MongoItem")
    return Item, loads


async def register(url, coll):
    name = unique("mongo-")
    await cacheme.register_storage(
        name, cacheme.Storage(url=url, database=DB, collection=coll))
    return name


@each_serializer
@needs_ours
@pytest.mark.parametrize("ttl", [3600, None])
async def test_030_writes_ours_reads(mongo_server, ser, ttl):
    coll = unique("compat_w030_")
    out = await run_030(mongo_server.url, coll, ser, ttl, get=[1, 2], get_all=[3, 4])
    assert out["loads"] == [1, 2, 3, 4]
    Item, loads = make_node(await register(mongo_server.url, coll), ser, ttl)
    assert [await cacheme.get(Item(i)) for i in (1, 3)] == [item_value(i, "030") for i in (1, 3)]
    assert await cacheme.get_all([Item(i) for i in (4, 2, 1)]) == [
        item_value(i, "030") for i in (4, 2, 1)]
    assert loads == []


@each_serializer
@needs_ours
@pytest.mark.parametrize("ttl", [3600, None])
async def test_ours_writes_030_reads(mongo_server, ser, ttl):
    coll = unique("compat_wours_")
    Item, loads = make_node(await register(mongo_server.url, coll), ser, ttl)
    assert [await cacheme.get(Item(i)) for i in (1, 2)] == [item_value(i, "ours") for i in (1, 2)]
    assert await cacheme.get_all([Item(i) for i in (3, 4)]) == [
        item_value(i, "ours") for i in (3, 4)]
    assert loads == [1, 2, 3, 4]
    out = await run_030(mongo_server.url, coll, ser, ttl, get=[1, 4], get_all=[2, 3, 1])
    assert out["loads"] == []
    assert out["get"] == [item_value(i, "ours") for i in (1, 4)]
    assert out["get_all"] == [item_value(i, "ours") for i in (2, 3, 1)]


@each_serializer
@needs_ours
@pytest.mark.parametrize("ttl", [3600, None])
async def test_same_layout(mongo_server, ser, ttl):
    """The same items written by each (get and get_all) read back with
    pymongo: the same fields, BSON types and decoded values; for the
    serializers whose bytes are deterministic (json, msgpack), the same bytes."""
    c030, cours = unique("compat_l030_"), unique("compat_lours_")
    await run_030(mongo_server.url, c030, ser, ttl, get=[1, 2], get_all=[3, 4], by="same")
    Item, _ = make_node(await register(mongo_server.url, cours), ser, ttl, by="same")
    for i in (1, 2):
        await cacheme.get(Item(i))
    await cacheme.get_all([Item(3), Item(4)])
    theirs, ours = docs(mongo_server.url, c030), docs(mongo_server.url, cours)
    assert sorted(theirs) == sorted(ours) == [key(i) for i in (1, 2, 3, 4)]
    for k in theirs:
        check_layout(ours[k], ttl)
        assert {f: v["type"] for f, v in ours[k].items()} == {
            f: v["type"] for f, v in theirs[k].items()}
        assert decode(ser, ours[k]["value"]["hex"]) == decode(ser, theirs[k]["value"]["hex"])
        if ser != "pickle":
            assert ours[k]["value"]["hex"] == theirs[k]["value"]["hex"]


@each_serializer
@needs_ours
async def test_expired_miss_for_both(mongo_server, ser):
    """Each writes with a 1 s TTL; once past, each reads the other's (and
    its own) documents as misses and loads."""
    c030, cours = unique("compat_x030_"), unique("compat_xours_")
    await run_030(mongo_server.url, c030, ser, 1, get=[1, 2], get_all=[3, 4])
    Item, loads = make_node(await register(mongo_server.url, cours), ser, 1)
    await cacheme.get(Item(1))
    await cacheme.get_all([Item(i) for i in (2, 3, 4)])
    assert loads == [1, 2, 3, 4]
    wait_expired(mongo_server.url, c030)
    wait_expired(mongo_server.url, cours)
    # a refill writes a fresh document: each reader takes ids of its own
    ItemTheirs, loads_t = make_node(await register(mongo_server.url, c030), ser, 1)
    assert await cacheme.get(ItemTheirs(1)) == item_value(1, "ours")
    assert await cacheme.get_all([ItemTheirs(2)]) == [item_value(2, "ours")]
    assert loads_t == [1, 2]
    out = await run_030(mongo_server.url, c030, ser, 1, get=[3], get_all=[4])
    assert out["loads"] == [3, 4]
    out = await run_030(mongo_server.url, cours, ser, 1, get=[1], get_all=[2])
    assert out["loads"] == [1, 2]
    loads.clear()
    assert await cacheme.get(Item(3)) == item_value(3, "ours")
    assert await cacheme.get_all([Item(4)]) == [item_value(4, "ours")]
    assert loads == [3, 4]


@needs_ours
async def test_auth_shared_with_030(mongo_auth_server):
    """Through the SCRAM user's URL: 0.3.0 writes, ours reads, and back."""
    url, ser = mongo_auth_server.url, "msgpack"
    coll = unique("compat_auth_")
    out = await run_030(url, coll, ser, get=[1], get_all=[2])
    assert out["loads"] == [1, 2]
    try:
        name = await register(url, coll)
    except Exception as e:  # until h-mongo has merged the SCRAM client
        if re.search(r"authentication.*not built", str(e)):
            pytest.skip(str(e))
        raise
    Item, loads = make_node(name, ser, 3600)
    assert await cacheme.get_all([Item(1), Item(2), Item(3)]) == [
        item_value(1, "030"), item_value(2, "030"), item_value(3, "ours")]
    assert loads == [3]
    out = await run_030(url, coll, ser, get=[3])
    assert out == {"get": [item_value(3, "ours")], "get_all": [], "loads": []}
