"""One TTL rule for every storage (csrc/core/ttl.h): None, a timedelta or
seconds, positive and not NaN; bool and other types refused; beyond 100 years
a value is kept for 100 years."""
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

import cacheme
from cacheme import _core
from conftest import unique
from redis_servers import _redis_session_server, redis_server  # noqa: F401  (fixtures)

HUNDRED_YEARS = 100 * 366 * 86400

BAD = [
    (timedelta(0), ValueError, "ttl must be positive"),
    (timedelta(seconds=-5), ValueError, "ttl must be positive"),
    (0, ValueError, "ttl must be positive"),
    (-1.5, ValueError, "ttl must be positive"),
    (float("nan"), ValueError, "ttl must be positive"),
    (True, TypeError, "not bool"),
    ("10", TypeError, "not str"),
]


class K:
    def __init__(self, key):
        self.k = key

    def full_key(self):
        return self.k


async def _register(url, **options):
    name = unique("ttl-")
    await cacheme.register_storage(name, cacheme.Storage(url=url, **options))
    return cacheme.data.get_storage_by_name(name)._storage


@pytest.mark.parametrize("ttl,exc,msg", BAD)
def test_local_store_refuses(ttl, exc, msg):
    store = _core.LocalStore("tlfu", 10)
    with pytest.raises(exc, match=msg):
        store.set("k", 1, ttl)
    assert store.get("k", None) is None


@pytest.mark.parametrize("ttl,exc,msg", BAD)
async def test_redis_refuses(redis_server, ttl, exc, msg):  # noqa: F811
    s = await _register(redis_server.url)
    key = unique("k")
    with pytest.raises(exc, match=msg):
        await s.set(K(key), 1, ttl, None)
    assert await s.execute("EXISTS", key) == 0


@pytest.mark.parametrize("ttl,exc,msg", BAD)
async def test_sqlite_refuses(tmp_path, ttl, exc, msg):
    s = await _register(f"sqlite:///{tmp_path}/c.db", table="t", create_table=True)
    with pytest.raises(exc, match=msg):
        await s.set(K("k"), b"1", ttl, None)
    with pytest.raises(exc, match=msg):
        await s.set_all([(K("k"), b"1")], ttl, None)
    assert await s.get(K("k"), None) is cacheme.models.sentinel


async def test_huge_ttl_is_a_hundred_years_everywhere(redis_server, tmp_path):  # noqa: F811
    huge = timedelta(days=10**8)
    store = _core.LocalStore("tlfu", 10)
    store.set("k", 1, huge)
    assert store.get("k", None) == 1

    r = await _register(redis_server.url)
    key = unique("k")
    await r.set(K(key), 1, huge, None)
    pttl = await r.execute("PTTL", key)
    assert abs(pttl / 1000 - HUNDRED_YEARS) < 60, pttl

    s = await _register(f"sqlite:///{tmp_path}/c.db", table="t", create_table=True)
    await s.set(K("k"), b"1", huge, None)
    assert await s.get(K("k"), None) == b"1"
    with sqlite3.connect(f"{tmp_path}/c.db") as db:
        (expire,) = db.execute("SELECT expire FROM t WHERE key = 'k'").fetchone()
    left = datetime.fromisoformat(expire) - datetime.now(timezone.utc)
    assert abs(left.total_seconds() - HUNDRED_YEARS) < 60, expire


async def test_seconds_as_numbers_mean_the_same_as_timedelta(redis_server):  # noqa: F811
    r = await _register(redis_server.url)
    key = unique("k")
    await r.set(K(key), 1, 1.5, None)
    pttl = await r.execute("PTTL", key)
    assert 1000 < pttl <= 1500
