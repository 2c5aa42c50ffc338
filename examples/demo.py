"""A short tour of cacheme on local storage: Memoize, get, get_all,
invalidate and stats. Run with `make demo`."""
import asyncio
from dataclasses import dataclass
from datetime import timedelta

import cacheme

LOADS = 0


@dataclass
class UserInfoNode(cacheme.Node):
    user_id: int

    def key(self) -> str:
        return f"user:{self.user_id}:info"

    async def load(self) -> dict:
        global LOADS
        LOADS += 1
        await asyncio.sleep(0.05)  # a slow database
        return {"id": self.user_id, "name": f"user-{self.user_id}"}

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage="local", ttl=timedelta(seconds=30))]


@cacheme.Memoize(UserInfoNode)
async def get_user_info(user_id: int) -> dict:
    global LOADS
    LOADS += 1
    await asyncio.sleep(0.05)
    return {"id": user_id, "name": f"memoized-{user_id}"}


@get_user_info.to_node
def _(user_id: int) -> UserInfoNode:
    return UserInfoNode(user_id=user_id)


async def main() -> None:
    await cacheme.register_storage("local", cacheme.Storage(url="local://tlfu", size=10_000))

    print("get, 1000 concurrent requests for one key:")
    values = await asyncio.gather(*(cacheme.get(UserInfoNode(1)) for _ in range(1000)))
    print(f"  value={values[0]} loads={LOADS}")

    print("Memoize:")
    print(f"  {await get_user_info(2)} then {await get_user_info(2)} loads={LOADS}")

    print("get_all:")
    users = await cacheme.get_all([UserInfoNode(i) for i in range(1, 6)])
    print(f"  {[u['id'] for u in users]} loads={LOADS}")

    print("invalidate then get loads again:")
    await cacheme.invalidate(UserInfoNode(1))
    await cacheme.get(UserInfoNode(1))
    print(f"  loads={LOADS}")

    m = cacheme.stats(UserInfoNode)
    print("stats(UserInfoNode):")
    print(f"  requests={m.request_count()} hits={m.hit_count()} misses={m.miss_count()} "
          f"hit_rate={m.hit_rate():.3f}")
    print(f"  loads={m.load_count()} failures={m.load_failure_count()} "
          f"average_load_time={m.average_load_time() / 1e6:.1f} ms")
    print(f"  per storage: {m.storage_stats()}")
    print("nodes():", [n.__name__ for n in cacheme.nodes()])


if __name__ == "__main__":
    asyncio.run(main())
