"""Redis pub/sub subscriber connection and client-side tracking
(Storage(url, tracking=True)) against a real redis-server."""
import asyncio

import pytest

from cacheme.storages.redis import RedisStorage
from conftest import unique
from redis_servers import (  # noqa: F401  (fixtures)
    _redis_session_server,
    needs_redis,
    redis_server,
)

pytestmark = needs_redis


async def wait_for(cond, what: str, timeout: float = 10.0):
    """Poll cond() on the loop until true (a bound on the wait, not a timing
    assertion: it fails only when the event never happens)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


def client_ids(server, name_part: str = "") -> list:
    """ids of the server's pub/sub clients (the subscriber connections)."""
    ids = []
    for line in server.cli("CLIENT", "LIST").splitlines():
        f = dict(kv.split("=", 1) for kv in line.split(" ") if "=" in kv)
        if int(f.get("sub", "0")) > 0:
            ids.append(int(f["id"]))
    return ids


async def test_subscriber_messages_reconnect_and_unsubscribe_state(redis_server):
    s = RedisStorage(redis_server.url, retry_backoff=0.01, retry_backoff_max=0.05)
    chan = unique("chan").encode()
    log = s._sub_listen(chan)
    await wait_for(lambda: any(e[0] == "up" for e in log), "subscriber up")
    up_id = [e for e in log if e[0] == "up"][0][1]
    assert up_id in client_ids(redis_server)
    # subscribed: a PUBLISH reaches the callback
    await wait_for(lambda: redis_server.cli("PUBLISH", chan.decode(), "hello") == "1",
                   "one subscriber on the channel")
    await wait_for(lambda: ("message", b"hello") in log, "message delivered")
    # a second channel subscribed later on the same connection
    chan2 = unique("chan").encode()
    assert s._sub_listen(chan2) is log
    await wait_for(lambda: redis_server.cli("PUBLISH", chan2.decode(), "two") == "1",
                   "subscribed to the second channel")
    await wait_for(lambda: ("message", b"two") in log, "second channel delivered")
    # killed by the server: lost, then back with a new id and both channels
    redis_server.cli("CLIENT", "KILL", "ID", str(up_id))
    await wait_for(lambda: ("lost", 0) in log, "lost reported")
    await wait_for(lambda: [e for e in log if e[0] == "up"][-1][1] != up_id
                   and len([e for e in log if e[0] == "up"]) == 2, "up again")
    new_id = [e for e in log if e[0] == "up"][-1][1]
    assert new_id in client_ids(redis_server) and up_id not in client_ids(redis_server)
    for c, payload in ((chan, "again"), (chan2, "again2")):
        await wait_for(lambda: redis_server.cli("PUBLISH", c.decode(), payload) == "1",
                       "re-subscribed after reconnect")
        await wait_for(lambda: ("message", payload.encode()) in log, "delivered after reconnect")
    s.close_now()
    await wait_for(lambda: new_id not in client_ids(redis_server), "closed with the storage")
