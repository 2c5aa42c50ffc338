"""cacheme 0.3.0 (motor) on a MongoDB collection, for tests/test_mongo_compat.py.

Run by the Python of .bench/venv-mongo-030 (never imported by the tests,
never with this tree on sys.path):

    python -I mongo030_run.py URL DATABASE COLLECTION SPEC_JSON

SPEC: {"serializer": "pickle" | "json" | "msgpack", "ttl": seconds or null,
"get": [ids] (one cacheme.get each, in order), "get_all": [ids] (one
cacheme.get_all), "version": node version, "by": tag (default "030")}. An
item's key is "item:ID"; its load returns item_value(ID, by). Prints one JSON line: {"get": [values],
"get_all": [values], "loads": [ids loaded]}.

The tests import item_value, item_class and SERIALIZERS from here, so that
0.3.0 and ours read and fill through the same node: only 0.3.0's API here.
"""
import asyncio
import json
import sys
from dataclasses import dataclass
from datetime import timedelta

import cacheme
from cacheme.serializer import JSONSerializer, MsgPackSerializer, PickleSerializer

SERIALIZERS = {"pickle": PickleSerializer, "json": JSONSerializer, "msgpack": MsgPackSerializer}


def item_value(i, by):
    """The value an item's load returns (the tests build the same)."""
    return {"id": i, "by": by, "tags": [f"t{i}", "x"], "score": i * 1.5, "name": f"é{i}"}


def item_class(storage, ser, ttl, by, node_version="v1"):
    """The node class of items cached in storage only (serializer named by
    ser, TTL in seconds or None); its load returns item_value(id, by).
    Returns the class and the list of the ids it loaded, in order."""
    loads = []

    @dataclass
    class Item(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"item:{self.id}"

        async def load(self):
            loads.append(self.id)
            return item_value(self.id, by)

        class Meta(cacheme.Node.Meta):
            version = node_version
            caches = [cacheme.Cache(storage=storage,
                                    ttl=None if ttl is None else timedelta(seconds=ttl))]
            serializer = SERIALIZERS[ser]()

    return Item, loads


async def main(url, database, collection, spec):
    Item, loads = item_class("mongo", spec["serializer"], spec.get("ttl"), spec.get("by", "030"),
                             spec.get("version", "v1"))
    await cacheme.register_storage(
        "mongo", cacheme.Storage(url=url, database=database, collection=collection))
    out = {"get": [], "get_all": [], "loads": loads}
    for i in spec.get("get", []):
        out["get"].append(await cacheme.get(Item(i)))
    if spec.get("get_all"):
        out["get_all"] = await cacheme.get_all([Item(i) for i in spec["get_all"]])
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
