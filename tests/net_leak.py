"""The leak harness of the network storages (Redis, PostgreSQL, MySQL):
gets (stored and missing keys), sets and a burst of concurrent gets looped
in a fresh interpreter, busy polling on or off; live objects and memory
must stay flat between a warm-up and a long run.

Memory is read after two equal runs. A leak grows in both; the allocator
reaching a new high-water mark (a burst answered late on a loaded machine
holds more replies at once) grows one, so the smaller growth is checked."""

from conftest import LEAK_SNAPSHOT, assert_flat, run_python

HARNESS = r'''
import asyncio, gc, sys
import cacheme

url, busy, table = sys.argv[1], float(sys.argv[2]), sys.argv[3]

class K:
    def __init__(self, k):
        self.k = k
    def full_key(self):
        return self.k


async def main():
    opts = {} if url.startswith("redis") else {"table": table, "create_table": True}
    st = cacheme.Storage(url=url, busy_poll=busy, **opts)
    await st.connect()
    s = st._storage
    await s.set(K("a"), b"payload-a", None, None)

    async def body(i):
        assert await s.get(K("a"), None) == b"payload-a"
        assert await s.get(K("missing"), None) is cacheme.models.sentinel
        await s.set(K(f"k{i % 50}"), b"payload-v", None, None)
        if i % 10 == 0:
            await asyncio.gather(*(s.get(K(f"k{j}"), None) for j in range(20)))

    for i in range(1000):
        await body(i)
    n = int(sys.argv[4]) // 2
    before = snapshot()
    for i in range(1000, 1000 + n):
        await body(i)
    mid = snapshot()
    for i in range(1000 + n, 1000 + 2 * n):
        await body(i)
    after = snapshot()
    await st.close()
    print(before[0], after[0], before[1], mid[1], after[1])

asyncio.run(main())
'''


def check_no_leak(url: str, busy_poll: float, table: str, n: int = 12000) -> None:
    code = "import sys; sys.argv[1:] = %r\n" % [url, str(busy_poll), table, str(n)]
    objs_before, objs_after, rss_before, rss_mid, rss_after = run_python(
        code + LEAK_SNAPSHOT + HARNESS
    ).split()
    growth = min(int(rss_mid) - int(rss_before), int(rss_after) - int(rss_mid))
    # flat is under 0.4 MiB a run here; a leaked value per get would be ~1.1 MiB a run
    assert_flat(f"{objs_before} {objs_after} 0 {growth}", rss_kib=512)
