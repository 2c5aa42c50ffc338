"""A FastAPI service cached by cacheme: a local cache in front of Redis.

    uvicorn examples.fastapi_app:app
    gunicorn examples.fastapi_app:app -k uvicorn.workers.UvicornWorker -w 2 [--preload]

Storages are registered in the lifespan, so once per worker process, on the
event loop that serves its requests (with gunicorn that is after the fork,
with or without --preload), and closed there at shutdown. Environment:
CACHEME_REDIS_URL (redis://127.0.0.1:6379), CACHEME_PREFIX (key prefix),
DB_DELAY (seconds a fake database query takes, 0.05).
"""
import asyncio
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import AsyncIterator

from fastapi import FastAPI

import cacheme
from cacheme.serializer import MsgPackSerializer

REDIS_URL = os.environ.get("CACHEME_REDIS_URL", "redis://127.0.0.1:6379")
DB_DELAY = float(os.environ.get("DB_DELAY", "0.05"))


async def db_query(table: str, row_id: int) -> dict:
    """The slow source of truth; says who read it and when."""
    await asyncio.sleep(DB_DELAY)
    return {"table": table, "id": row_id, "read_by": os.getpid(), "read_at": time.time()}


@dataclass
class UserNode(cacheme.Node):
    user_id: int

    def key(self) -> str:
        return f"user:{self.user_id}"

    async def load(self) -> dict:
        return await db_query("users", self.user_id)

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [
            cacheme.Cache(storage="local", ttl=timedelta(seconds=30)),
            cacheme.Cache(storage="redis", ttl=timedelta(minutes=10)),
        ]
        serializer = MsgPackSerializer()


@dataclass
class ProductNode(cacheme.Node):
    product_id: int

    def key(self) -> str:
        return f"product:{self.product_id}"

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [
            cacheme.Cache(storage="local", ttl=timedelta(seconds=30)),
            cacheme.Cache(storage="redis", ttl=timedelta(minutes=10)),
        ]
        serializer = MsgPackSerializer()


@cacheme.Memoize(ProductNode)
async def get_product(product_id: int) -> dict:
    return await db_query("products", product_id)


@get_product.to_node
def _(product_id: int) -> ProductNode:
    return ProductNode(product_id=product_id)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # once per worker, on its loop: connections are per loop and a forked
    # worker never uses its parent's
    if "CACHEME_PREFIX" in os.environ:
        cacheme.set_prefix(os.environ["CACHEME_PREFIX"])
    await cacheme.register_storage("local", cacheme.Storage(url="local://tlfu", size=10_000))
    await cacheme.register_storage("redis", cacheme.Storage(url=REDIS_URL))
    yield
    await cacheme.close()  # every registered storage, connections included


app = FastAPI(lifespan=lifespan)


@app.get("/users/{user_id}")
async def read_user(user_id: int) -> dict:
    return await cacheme.get(UserNode(user_id=user_id))


@app.delete("/users/{user_id}")
async def forget_user(user_id: int) -> dict:
    # this worker's local cache and Redis; other workers' local copies stay
    # until their TTL (30 s here)
    await cacheme.invalidate(UserNode(user_id=user_id))
    return {"invalidated": user_id}


@app.get("/products/{product_id}")
async def read_product(product_id: int) -> dict:
    return await get_product(product_id)


@app.get("/stats")
async def stats() -> dict:
    m = cacheme.stats(UserNode)
    return {"pid": os.getpid(), "requests": m.request_count(), "hits": m.hit_count(),
            "loads": m.load_count(), "storages": m.storage_stats()}
