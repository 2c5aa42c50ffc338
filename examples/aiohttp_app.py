"""An aiohttp service cached by cacheme: a local cache in front of Redis.

    python examples/aiohttp_app.py [--port 8080]

Storages are registered in on_startup (on the loop that serves requests)
and closed in on_cleanup. GET /metrics serves every cacheme counter in
Prometheus's text format (cacheme.exporters). Environment: CACHEME_REDIS_URL
(redis://127.0.0.1:6379), CACHEME_PREFIX (key prefix), DB_DELAY (seconds a
fake database query takes, 0.05).
"""
import argparse
import asyncio
import os
import time
from dataclasses import dataclass
from datetime import timedelta

from aiohttp import web

import cacheme
from cacheme import exporters
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


async def start_cache(app: web.Application) -> None:
    if "CACHEME_PREFIX" in os.environ:
        cacheme.set_prefix(os.environ["CACHEME_PREFIX"])
    await cacheme.register_storage("local", cacheme.Storage(url="local://tlfu", size=10_000))
    await cacheme.register_storage("redis", cacheme.Storage(url=REDIS_URL))


async def close_cache(app: web.Application) -> None:
    await cacheme.close()


async def read_user(request: web.Request) -> web.Response:
    return web.json_response(await cacheme.get(UserNode(int(request.match_info["id"]))))


async def forget_user(request: web.Request) -> web.Response:
    user_id = int(request.match_info["id"])
    await cacheme.invalidate(UserNode(user_id))  # this process's local cache and Redis
    return web.json_response({"invalidated": user_id})


async def read_product(request: web.Request) -> web.Response:
    return web.json_response(await get_product(int(request.match_info["id"])))


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=exporters.prometheus_text(),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Format": "version=0.0.4"})


def make_app() -> web.Application:
    app = web.Application()
    app.on_startup.append(start_cache)
    app.on_cleanup.append(close_cache)
    app.router.add_get("/users/{id}", read_user)
    app.router.add_delete("/users/{id}", forget_user)
    app.router.add_get("/products/{id}", read_product)
    app.router.add_get("/metrics", metrics)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port)
