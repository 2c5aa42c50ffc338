"""Runs one mongoeco MongoDB-wire server (in-memory storage) until SIGTERM.

Started by tests/mongo_servers.py with the Python of .bench/venv-mongoeco
(mongoeco needs CPython >= 3.13), never imported by the tests themselves:

    python -I mongoeco_server.py PARENT_PID PORT [USER:PASSWORD[:DB] ...]

Each USER:PASSWORD becomes a SCRAM user (SCRAM-SHA-256 and SCRAM-SHA-1) of
DB (default admin); with users, every command but the handshake and the
SASL ones needs authentication. Prints "ready PORT" once listening. Exits
when PARENT_PID is no longer its parent (a test run killed by its timeout
leaves no server behind).
"""
import asyncio
import hashlib
import os
import signal
import sys


def auth_users(specs):
    from mongoeco.wire import WireAuthUser

    users = []
    for spec in specs:
        name, password, *rest = spec.split(":")
        db = rest[0] if rest else "admin"
        # mongoeco salts the password as given for both mechanisms; a driver
        # doing SCRAM-SHA-1 sends md5("user:mongo:password") as the password
        # (MongoDB's SHA-1 rule), so that mechanism gets a user of its own.
        sha1_password = hashlib.md5(f"{name}:mongo:{password}".encode()).hexdigest()
        users.append(WireAuthUser(name, password, db, mechanisms=("SCRAM-SHA-256", "PLAIN")))
        users.append(WireAuthUser(name, sha1_password, db, mechanisms=("SCRAM-SHA-1",)))
    return tuple(users)


async def watch_parent(parent, stop):
    while os.getppid() == parent:
        await asyncio.sleep(1)
    stop.set()


async def main(parent, port, specs):
    from mongoeco.wire import AsyncMongoEcoProxyServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = AsyncMongoEcoProxyServer(host="127.0.0.1", port=port, auth_users=auth_users(specs))
    address = await server.start()
    print(f"ready {address.port}", flush=True)
    watcher = asyncio.create_task(watch_parent(parent, stop))
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        await server.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
