"""Host name lookups for the C drivers, off the loop thread.

The Redis, PostgreSQL and MySQL connects call `resolve` (csrc/resolve.c)
for the names among their hosts: getaddrinfo runs in the loop's executor
(loop.getaddrinfo), so a slow resolver stalls only that connect, and the
driver connects to the numeric addresses. IP literals and socket paths are
never looked up."""
import socket
from typing import List


async def resolve(loop, hosts: List[str]) -> List[List[str]]:
    """The addresses (numeric, in the resolver's order, no repeats) of each
    host; OSError (socket.gaierror) if one has none."""
    out = []
    for host in hosts:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        addrs: List[str] = []
        for info in infos:
            addr = info[4][0]
            if addr not in addrs:
                addrs.append(addr)
        if not addrs:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: no address")
        out.append(addrs)
    return out
