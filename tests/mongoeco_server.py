"""Runs one MongoDB-wire server until SIGTERM: mongoeco (in-memory storage),
or a fake replica-set secondary.

Started by tests/mongo_servers.py with the Python of .bench/venv-mongoeco
(mongoeco needs CPython >= 3.13), never imported by the tests themselves:

    python -I mongoeco_server.py --parent PID --port PORT [--user USER:PASSWORD[:DB]]...
        [--replset NAME --hosts H:P,H:P] [--secondary-of H:P] [--log FILE]

--user: a SCRAM user (SCRAM-SHA-256 and SCRAM-SHA-1) of DB (default admin);
with users, every command but the handshake and the SASL ones needs
authentication.
--replset/--hosts: mongoeco's hello also says setName NAME, hosts, primary
and me (itself), as a replica set's primary does (mongoeco alone answers as
a standalone).
--secondary-of: no mongoeco: a fake secondary of that primary, answering
hello (isWritablePrimary false, secondary true, the same setName/hosts,
primary H:P), ping and endSessions, and every other command with
NotWritablePrimary (code 10107). OP_MSG and legacy OP_QUERY.
--log: each command's name received is appended to FILE, one a line.
Exits when PID is no longer its parent (a test run killed by its timeout
leaves no server behind). Prints "ready PORT" once listening.
"""
import argparse
import asyncio
import datetime
import hashlib
import itertools
import os
import signal
import struct

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013


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


class CommandLog:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1) if path else None

    def __call__(self, name):
        if self.f is not None:
            self.f.write(f"{name}\n")


def replset_fields(args, me, primary, is_primary):
    return {"setName": args.replset, "hosts": args.hosts.split(","), "primary": primary,
            "me": me, "secondary": not is_primary, "isWritablePrimary": is_primary,
            "ismaster": is_primary}


def patch_hello(args, log):
    """mongoeco's hello, plus the replica-set fields when --replset, and
    every command logged."""
    from mongoeco.wire import handshake, executor

    me = f"127.0.0.1:{args.port}"
    orig_hello = handshake.WireHandshakeService.build_hello_response

    def hello(self, **kw):
        reply = orig_hello(self, **kw)
        if args.replset:
            reply.update(replset_fields(args, me, me, True))
        return reply

    handshake.WireHandshakeService.build_hello_response = hello
    orig_context = executor.WireCommandExecutor._build_request_context

    def build_context(self, body, **kw):
        if isinstance(body, dict) and body:
            log(next(iter(body)))
        return orig_context(self, body, **kw)

    executor.WireCommandExecutor._build_request_context = build_context


async def fake_secondary(args, log, stop):
    """A replica-set secondary that serves nothing but the handshake."""
    import bson

    me, primary = f"127.0.0.1:{args.port}", args.secondary_of
    ids = itertools.count(1)
    conns = itertools.count(1)

    def respond(doc, conn_id):
        name = next(iter(doc), "")
        log(name)
        if name.lower() in ("hello", "ismaster"):
            reply = {"ok": 1.0, "helloOk": True, "maxBsonObjectSize": 16777216,
                     "maxMessageSizeBytes": 48000000, "maxWriteBatchSize": 100000,
                     "localTime": datetime.datetime.now(datetime.timezone.utc),
                     "logicalSessionTimeoutMinutes": 30, "connectionId": conn_id,
                     "minWireVersion": 0, "maxWireVersion": 20, "readOnly": False}
            reply.update(replset_fields(args, me, primary, False))
            return reply
        if name in ("ping", "endSessions", "buildInfo", "buildinfo"):
            return {"ok": 1.0}
        return {"ok": 0.0, "errmsg": "not primary", "code": 10107,
                "codeName": "NotWritablePrimary"}

    async def serve(reader, writer):
        conn_id = next(conns)
        try:
            while True:
                header = await reader.readexactly(16)
                length, request_id, _, opcode = struct.unpack("<iiii", header)
                body = await reader.readexactly(length - 16)
                if opcode == OP_MSG:
                    flags = struct.unpack_from("<I", body)[0]
                    end, pos, doc = len(body) - (4 if flags & 1 else 0), 4, {}
                    while pos < end:
                        kind, size = body[pos], struct.unpack_from("<i", body, pos + 1)[0]
                        if kind == 0:
                            doc = bson.decode(body[pos + 1:pos + 1 + size])
                        pos += 1 + size
                    if flags & 2:  # moreToCome: no reply
                        continue
                    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(respond(doc, conn_id))
                    op = OP_MSG
                elif opcode == OP_QUERY:
                    pos = body.index(b"\x00", 4) + 1 + 8
                    size = struct.unpack_from("<i", body, pos)[0]
                    doc = bson.decode(body[pos:pos + size])
                    doc = doc.get("$query", doc)
                    payload = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(respond(doc, conn_id))
                    op = OP_REPLY
                else:
                    break
                writer.write(struct.pack("<iiii", 16 + len(payload), next(ids), request_id, op)
                             + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", args.port)
    print(f"ready {args.port}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()


async def watch_parent(parent, stop):
    while os.getppid() == parent:
        await asyncio.sleep(1)
    stop.set()


async def main(args):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(watch_parent(args.parent, stop))
    log = CommandLog(args.log)
    try:
        if args.secondary_of:
            await fake_secondary(args, log, stop)
            return
        from mongoeco.wire import AsyncMongoEcoProxyServer

        patch_hello(args, log)
        server = AsyncMongoEcoProxyServer(host="127.0.0.1", port=args.port,
                                          auth_users=auth_users(args.user))
        address = await server.start()
        print(f"ready {address.port}", flush=True)
        try:
            await stop.wait()
        finally:
            await server.close()
    finally:
        watcher.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--parent", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", action="append", default=[])
    ap.add_argument("--replset")
    ap.add_argument("--hosts", default="")
    ap.add_argument("--secondary-of")
    ap.add_argument("--log")
    asyncio.run(main(ap.parse_args()))
