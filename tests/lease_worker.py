"""One process of tests/test_lease.py: its own interpreter and event loop,
a [local, redis] node on a Redis storage with `lease=`, a load that counts
itself in Redis (INCR) so the test sees the loads of every process.

    python lease_worker.py '<json config>'

Prints "ready" once registered, waits for a line on stdin (the test starts
every process together), runs the mode, prints one JSON line and exits.
"""
import asyncio
import dataclasses
import json
import sys
from datetime import timedelta

import cacheme
from cacheme.serializer import MsgPackSerializer
from cacheme.storages.redis import RedisStorage

cfg = json.loads(sys.argv[1])


@dataclasses.dataclass
class LeaseNode(cacheme.Node):
    uid: int

    def key(self) -> str:
        return f"{cfg['prefix']}:{self.uid}"

    async def load(self):
        return await load_one(self.uid)

    @classmethod
    async def load_all(cls, nodes):
        return [(n, await load_one(n.uid)) for n in nodes]

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [
            cacheme.Cache(storage="local", ttl=timedelta(seconds=60)),
            cacheme.Cache(storage="redis", ttl=timedelta(seconds=60)),
        ]
        serializer = MsgPackSerializer()


async def load_one(uid):
    await COUNTER.execute("INCR", f"{cfg['prefix']}:loads")
    await asyncio.sleep(cfg.get("load_sleep", 0.3))
    if cfg.get("fail"):
        raise RuntimeError("load failed")
    return uid * 10


STORAGE = None
COUNTER = None  # a client of its own: what the loads count with


@cacheme.Memoize(LeaseNode)
async def memo(uid: int) -> int:
    return await load_one(uid)


@memo.to_node
def _(uid: int) -> LeaseNode:
    return LeaseNode(uid=uid)


async def main():
    global STORAGE, COUNTER
    COUNTER = RedisStorage(cfg["url"], cluster=cfg.get("cluster", False))
    await COUNTER.connect()
    STORAGE = cacheme.Storage(url=cfg["url"], cluster=cfg.get("cluster", False),
                              lease=None if cfg["lease"] is None
                              else timedelta(seconds=cfg["lease"]))
    await cacheme.register_storage("redis", STORAGE)
    await cacheme.register_storage("local", cacheme.Storage(url="local://lru", size=100))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    mode, keys, n = cfg["mode"], cfg["keys"], cfg.get("concurrency", 1)
    out = {}
    if mode == "get":
        out["values"] = await asyncio.gather(*(cacheme.get(LeaseNode(uid=keys[0]))
                                               for _ in range(n)), return_exceptions=True)
    elif mode == "memoize":
        out["values"] = await asyncio.gather(*(memo(keys[0]) for _ in range(n)))
    elif mode == "get_all":
        out["values"] = await cacheme.get_all([LeaseNode(uid=k) for k in keys])
    elif mode == "timeout":
        try:
            out["values"] = [await asyncio.wait_for(cacheme.get(LeaseNode(uid=keys[0])),
                                                    cfg["timeout"])]
        except asyncio.TimeoutError:
            out["values"] = ["timeout"]
        # the wait left with its caller: nothing of this process listens
        await asyncio.sleep(0.2)
        channel = f"cacheme:{cfg['prefix']}:{keys[0]}:v1:lease"
        out["subscribers"] = (await COUNTER.execute("PUBSUB", "NUMSUB", channel))[1]
    elif mode == "cancel":
        first = asyncio.ensure_future(cacheme.get(LeaseNode(uid=keys[0])))
        second = asyncio.ensure_future(cacheme.get(LeaseNode(uid=keys[0])))
        await asyncio.sleep(cfg["cancel_after"])
        first.cancel()
        out["values"] = [await second, first.cancelled()]
    out["values"] = [v if isinstance(v, (int, str, bool)) else repr(v) for v in out["values"]]
    out["redis"] = cacheme.stats(LeaseNode).storage_stats()["redis"]
    print(json.dumps(out), flush=True)
    # a flight handed to a Task fills and releases after its callers have
    # their value: let it finish before the storages close
    await asyncio.sleep(cfg.get("linger", 0))
    await cacheme.close()


asyncio.run(main())
