"""The public API on local storage, as documented for cacheme 0.3.0."""
import asyncio
import dataclasses
import importlib
from datetime import timedelta

import pytest

import cacheme
from cacheme import Cache, DynamicNode, Memoize, Node
from conftest import register_local, unique


def make_node(storage: str, ttl=None, version: str = "v1", **meta):
    calls = []

    @dataclasses.dataclass
    class UserNode(Node):
        uid: int

        def key(self) -> str:
            return f"user:{self.uid}"

        async def load(self):
            calls.append(self.uid)
            return {"uid": self.uid}

        class Meta(Node.Meta):
            pass

    UserNode.Meta.version = version
    UserNode.Meta.caches = [Cache(storage=storage, ttl=ttl)]
    for k, v in meta.items():
        setattr(UserNode.Meta, k, v)
    return UserNode, calls


@dataclasses.dataclass
class PicklableNode(Node):
    uid: int

    def key(self) -> str:
        return f"p:{self.uid}"


def test_module_paths():
    for mod in [
        "cacheme",
        "cacheme.core",
        "cacheme.models",
        "cacheme.data",
        "cacheme.interfaces",
        "cacheme.storages",
        "cacheme.storages.local",
        "cacheme.storages.base",
    ]:
        importlib.import_module(mod)
    from cacheme.core import Memoize, build_node, get, get_all, invalidate, nodes, refresh, stats  # noqa
    from cacheme.data import register_storage  # noqa
    from cacheme.models import Cache, DynamicNode, Node, set_prefix, sentinel  # noqa
    from cacheme.storages import Storage  # noqa
    from cacheme.interfaces import Metrics, Serializer, DoorKeeper  # noqa
    from cacheme.storages.local import LocalStorage  # noqa
    assert cacheme.BloomFilter is cacheme._core.BloomFilter


async def test_get_hit_miss_and_key():
    name = await register_local()
    UserNode, calls = make_node(name)
    n = UserNode(1)
    assert n.full_key() == "cacheme:user:1:v1"
    assert n._full_key == "cacheme:user:1:v1"
    assert await cacheme.get(UserNode(1)) == {"uid": 1}
    assert await cacheme.get(UserNode(1)) == {"uid": 1}
    assert calls == [1]


async def test_full_key_cached_on_the_node_once():
    import pickle

    name = await register_local()
    UserNode, calls = make_node(name)
    n = UserNode(1)
    assert n._full_key is None  # 0.3.0's attribute, None until built
    key_calls = []
    orig = UserNode.key

    def counting_key(self):
        key_calls.append(1)
        return orig(self)

    UserNode.key = counting_key
    assert await cacheme.get(n) == {"uid": 1}  # miss: the key is built and kept
    assert n._full_key == "cacheme:user:1:v1"
    assert await cacheme.get(n) == {"uid": 1}
    assert n.full_key() == "cacheme:user:1:v1"
    assert len(key_calls) == 1
    # a key set by hand (0.3.0 code may do it) is the one used
    m = UserNode(2)
    m._full_key = "cacheme:user:1:v1"
    assert await cacheme.get(m) == {"uid": 1}
    assert calls == [1]
    m._full_key = None
    assert m.full_key() == "cacheme:user:2:v1"
    # nodes still pickle (the slot is part of their state)
    p = PicklableNode(7)
    assert pickle.loads(pickle.dumps(p)) == p
    assert p.full_key() == "cacheme:p:7:"
    back = pickle.loads(pickle.dumps(p))
    assert back == p and back._full_key == "cacheme:p:7:"


async def test_set_prefix_changes_keys():
    name = await register_local()
    UserNode, calls = make_node(name)
    await cacheme.get(UserNode(1))
    cacheme.set_prefix("other")
    assert UserNode(1).full_key() == "other:user:1:v1"
    await cacheme.get(UserNode(1))
    assert calls == [1, 1]
    with pytest.raises(TypeError, match="prefix must be str"):
        cacheme.set_prefix(3)


async def test_version_is_part_of_key():
    name = await register_local()
    A, _ = make_node(name, version="v1")
    B, _ = make_node(name, version="v2")
    assert A(1).full_key() != B(1).full_key()


async def test_load_fn_override():
    name = await register_local()
    UserNode, calls = make_node(name)

    async def other(node):
        return ("other", node.uid)

    assert await cacheme.get(UserNode(7), load_fn=other) == ("other", 7)
    assert await cacheme.get(UserNode(7)) == ("other", 7)  # cached
    assert calls == []
    assert await cacheme.get(UserNode(8), other) == ("other", 8)


async def test_get_all_order_and_partial_hits():
    name = await register_local()
    UserNode, calls = make_node(name)
    await cacheme.get(UserNode(2))
    values = await cacheme.get_all([UserNode(i) for i in [3, 2, 1, 3]])
    assert values == [{"uid": 3}, {"uid": 2}, {"uid": 1}, {"uid": 3}]
    assert sorted(calls) == [1, 2, 3]
    assert await cacheme.get_all([]) == []
    # all local hits now
    assert await cacheme.get_all([UserNode(1), UserNode(3)]) == [{"uid": 1}, {"uid": 3}]
    assert sorted(calls) == [1, 2, 3]


async def test_load_all_override_used_by_get_all():
    name = await register_local()
    batches = []

    @dataclasses.dataclass
    class BatchNode(Node):
        uid: int

        def key(self):
            return f"b:{self.uid}"

        async def load(self):
            raise AssertionError("load_all should be used")

        @classmethod
        async def load_all(cls, nodes):
            batches.append([n.uid for n in nodes])
            return [(n, n.uid * 10) for n in nodes]

        class Meta(Node.Meta):
            caches = [Cache(storage=name, ttl=None)]

    assert await cacheme.get_all([BatchNode(1), BatchNode(2)]) == [10, 20]
    assert batches == [[1, 2]]
    assert await cacheme.get(BatchNode(2)) == 20


async def test_invalidate_and_refresh():
    name = await register_local()
    UserNode, calls = make_node(name)
    await cacheme.get(UserNode(1))
    await cacheme.invalidate(UserNode(1))
    await cacheme.get(UserNode(1))
    assert calls == [1, 1]
    assert await cacheme.refresh(UserNode(1)) == {"uid": 1}
    assert calls == [1, 1, 1]


async def test_memoize_function_and_method():
    name = await register_local()
    UserNode, _ = make_node(name)
    calls = []

    @Memoize(UserNode)
    async def get_user(uid: int, extra: str = "x") -> dict:
        """Docstring kept."""
        calls.append((uid, extra))
        return {"uid": uid, "extra": extra}

    @get_user.to_node
    def _(uid: int, extra: str = "x") -> UserNode:
        return UserNode(uid=uid)

    assert get_user.__name__ == "get_user"
    assert get_user.__doc__ == "Docstring kept."
    assert get_user.__wrapped__ is not None
    assert asyncio.iscoroutinefunction(get_user)
    assert await get_user(1) == {"uid": 1, "extra": "x"}
    assert await get_user(1, extra="y") == {"uid": 1, "extra": "x"}  # same node: cached
    assert await get_user(uid=2, extra="z") == {"uid": 2, "extra": "z"}
    assert calls == [(1, "x"), (2, "z")]

    class Service:
        def __init__(self, tag):
            self.tag = tag

        @Memoize(UserNode)
        async def fetch(self, uid: int):
            calls.append(("method", self.tag, uid))
            return (self.tag, uid)

        @fetch.to_node
        def _(self, uid: int) -> UserNode:
            return UserNode(uid=100 + uid)

    s = Service("a")
    assert await s.fetch(1) == ("a", 1)
    assert await Service("b").fetch(1) == ("a", 1)  # same key
    assert await s.fetch(uid=2) == ("a", 2)
    assert calls[-2:] == [("method", "a", 1), ("method", "a", 2)]


async def test_memoize_without_to_node_is_clear():
    name = await register_local()
    UserNode, _ = make_node(name)

    @Memoize(UserNode)
    async def f(x):
        return x

    with pytest.raises(TypeError, match="to_node"):
        await f(1)
    with pytest.raises(TypeError, match="Node subclass"):
        Memoize(int)


async def test_build_node_and_dynamic_node():
    name = await register_local()
    nodename = unique("Dyn")
    cls = cacheme.build_node(nodename, "v1", [Cache(storage=name, ttl=None)])
    assert cacheme.build_node(nodename, "v9", []) is cls
    assert issubclass(cls, DynamicNode)
    assert cls in cacheme.nodes()
    calls = []

    # the 0.3.0 README form: to_node returns a plain DynamicNode
    @Memoize(cls)
    async def fn(a: int) -> int:
        calls.append(a)
        return a + 1

    @fn.to_node
    def _(a: int) -> DynamicNode:
        return DynamicNode(key=f"bar:{a}")

    assert await fn(1) == 2
    assert await fn(1) == 2
    assert calls == [1]
    assert cacheme.stats(cls).hit_count() == 1
    assert cls(key="bar:1").full_key() == "cacheme:bar:1:v1"


async def test_nodes_lists_node_classes():
    name = await register_local()
    UserNode, _ = make_node(name)
    assert UserNode in cacheme.nodes()
    assert all(isinstance(n, type) and issubclass(n, Node) for n in cacheme.nodes())


async def test_stats_every_metric():
    name = await register_local()
    UserNode, _ = make_node(name)
    m = cacheme.stats(UserNode)
    assert m.request_count() == 0
    for rate in (m.hit_rate, m.miss_rate, m.load_failure_rate, m.average_load_time):
        assert rate() == 0.0
    await cacheme.get(UserNode(1))
    await cacheme.get(UserNode(1))
    assert m.request_count() == 2
    assert m.hit_count() == 1 and m.miss_count() == 1
    assert m.hit_rate() == 0.5 and m.miss_rate() == 0.5
    assert m.load_success_count() == 1 and m.load_failure_count() == 0
    assert m.load_count() == 1 and m.load_failure_rate() == 0.0
    assert m.total_load_time() > 0
    assert m.average_load_time() == m.total_load_time()
    assert m.storage_stats() == {name: {"hits": 1, "misses": 1, "errors": 0, "sets": 1, "set_errors": 0}}
    assert UserNode.get_metrics() is m
    assert UserNode.Meta.metrics is m


async def test_storage_methods():
    s = cacheme.Storage(url="local://lru", size=10)
    assert s.scheme() == "local" and s.is_local()
    await s.connect()
    name = unique("st")
    await cacheme.register_storage(name, s)
    UserNode, _ = make_node(name)
    n1, n2 = UserNode(1), UserNode(2)
    assert await s.get(n1, None) is cacheme.models.sentinel
    await s.set(n1, "one", None, None)
    assert await s.get(n1, None) == "one"
    assert s.get_sync(n1, None) == "one"
    await s.set_all([(n1, "uno"), (n2, "dos")], timedelta(seconds=10), None)
    assert sorted(v for _, v in await s.get_all([n1, n2], None)) == ["dos", "uno"]
    assert len(s.get_all_sync([n1, n2], None)) == 2
    await s.remove(n1)
    assert s.get_sync(n1, None) is cacheme.models.sentinel
    assert await cacheme.get(n2) == "dos"  # the C path sees what the methods wrote
    await s.close()


async def test_chain_of_two_local_caches_fills_the_first():
    first = await register_local(size=100)
    second = await register_local(size=100)
    UserNode, calls = make_node(first)
    UserNode.Meta.caches = [Cache(storage=first, ttl=None), Cache(storage=second, ttl=None)]
    storages = cacheme.data.list_storages()
    await storages[second].set(UserNode(5), "from-second", None, None)
    assert await cacheme.get(UserNode(5)) == "from-second"
    assert storages[first].get_sync(UserNode(5), None) == "from-second"
    assert calls == []


async def test_reregister_storage_is_picked_up():
    name = unique("re")
    await cacheme.register_storage(name, cacheme.Storage(url="local://lru", size=10))
    UserNode, calls = make_node(name)
    await cacheme.get(UserNode(1))
    await cacheme.register_storage(name, cacheme.Storage(url="local://lru", size=10))
    await cacheme.get(UserNode(1))
    assert calls == [1, 1]


async def test_ttl_below_one_second_expires():
    name = await register_local()
    UserNode, calls = make_node(name, ttl=timedelta(milliseconds=50))
    await cacheme.get(UserNode(1))
    await cacheme.get(UserNode(1))
    assert calls == [1]
    await asyncio.sleep(0.08)
    await cacheme.get(UserNode(1))
    assert calls == [1, 1]


async def test_doorkeeper_stores_on_second_request():
    name = await register_local()
    bf = cacheme.BloomFilter(1000, 0.01)
    UserNode, calls = make_node(name, doorkeeper=bf)
    await cacheme.get(UserNode(1))  # first request: loaded, not stored
    await cacheme.get(UserNode(1))  # second: loaded and stored
    await cacheme.get(UserNode(1))  # hit
    assert calls == [1, 1]


async def test_python_doorkeeper_object():
    name = await register_local()

    class SetKeeper:
        def __init__(self):
            self.seen = set()

        def put(self, key):
            self.seen.add(key)

        def contains(self, key):
            return key in self.seen

    UserNode, calls = make_node(name, doorkeeper=SetKeeper())
    for _ in range(3):
        await cacheme.get(UserNode(1))
    assert calls == [1, 1]


async def test_frozen_dataclass_node_and_slots_node():
    name = await register_local()

    @dataclasses.dataclass(frozen=True)
    class Frozen(Node):
        uid: int

        def key(self):
            return f"f:{self.uid}"

        async def load(self):
            return self.uid

        class Meta(Node.Meta):
            caches = [Cache(storage=name, ttl=None)]

    assert await cacheme.get(Frozen(1)) == 1
    assert await cacheme.get(Frozen(1)) == 1


def test_full_key_hash_from_parts_matches_str_hash():
    import random

    from cacheme import _core

    rng = random.Random(3)
    alphabet = "abcXYZ019:_-é"  # é keeps it 1-byte (latin-1)
    old = _core.get_prefix()
    try:
        # every part length around the copy and hash word sizes
        # (a head "{prefix}:" over 32 bytes or a tail ":{version}" over 16,
        # and keys near the 256-byte buffer, take the general path)
        long_prefix = "p" * 31 + "é"
        for prefix in (old, "", "p", "pre", "pref", "prefix-", "prefix-8", "prefix-of-17-char",
                       "p" * 30, "p" * 31, long_prefix, "p" * 40):
            _core.set_prefix(prefix)
            lengths = list(range(0, 40)) + list(range(200, 260, 3))
            for n in lengths:
                key = "".join(rng.choice(alphabet) for _ in range(n))
                for version in ("", "v", "v1", "v123", "v" * 14, "v" * 15, "version-123456789"):
                    full = f"{prefix}:{key}:{version}"
                    h = _core._hash_parts(key, version)
                    if not _core._key_parts:  # a build or a CPython without the parts path
                        assert h is None, (prefix, key, version)
                    elif len(full) < 250:
                        assert h == hash(full), (prefix, key, version)
                    else:  # past the stack buffer the key is built instead
                        assert h in (None, hash(full)), (prefix, key, version)
    finally:
        _core.set_prefix(old)
    assert _core._hash_parts("ключ", "v1") is None  # wide strings build the key instead


async def test_non_ascii_keys_work_end_to_end():
    name = await register_local()

    @dataclasses.dataclass
    class Wide(Node):
        word: str

        def key(self):
            return f"w:{self.word}"

        async def load(self):
            return self.word.upper()

        class Meta(Node.Meta):
            version = "v✓"
            caches = [Cache(storage=name, ttl=None)]

    for word in ("ключ", "café", "plain", "日本"):
        assert await cacheme.get(Wide(word)) == word.upper()
        assert await cacheme.get(Wide(word)) == word.upper()
    assert cacheme.stats(Wide).hit_count() == 4


async def test_key_and_load_redefined_on_the_class_are_seen():
    name = await register_local()
    UserNode, calls = make_node(name)
    assert await cacheme.get(UserNode(1)) == {"uid": 1}
    UserNode.key = lambda self: f"other:{self.uid}"

    async def load2(self):
        return "second"

    UserNode.load = load2
    n = UserNode(1)
    assert await cacheme.get(n) == "second"
    assert n.full_key() == "cacheme:other:1:v1"
    assert calls == [1]
