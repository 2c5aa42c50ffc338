"""Bad input gets a clear TypeError/ValueError naming the problem."""
import dataclasses
from datetime import timedelta

import pytest

import cacheme
from cacheme import Cache, Node
from cacheme._core import LocalStore
from conftest import register_local, unique


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown storage scheme 'foo'"):
        cacheme.Storage(url="foo://x")


def test_unknown_local_policy_and_bad_size():
    with pytest.raises(ValueError, match="unknown policy 'lfu'"):
        cacheme.Storage(url="local://lfu", size=10)
    for size in (0, -5):
        with pytest.raises(ValueError, match="size must be > 0"):
            cacheme.Storage(url="local://tlfu", size=size)
    with pytest.raises(TypeError, match="size must be an int"):
        cacheme.Storage(url="local://tlfu", size="10")
    with pytest.raises(TypeError):
        cacheme.Storage(url="local://tlfu")  # size is required
    with pytest.raises(ValueError, match="size must be > 0"):
        LocalStore("lru", 0)
    with pytest.raises(ValueError, match="expected 'lru' or 'tlfu'"):
        LocalStore("arc", 10)


async def test_key_not_returning_str():
    name = await register_local()

    calls = []

    @dataclasses.dataclass
    class IntKey(Node):
        uid: int

        def key(self):
            calls.append(self.uid)
            return self.uid

        class Meta(Node.Meta):
            caches = [Cache(storage=name, ttl=None)]

    # the first call resolves the class's key(), later ones call it directly
    for i in range(3):
        with pytest.raises(TypeError, match=r"IntKey.key\(\) must return str, not int"):
            await cacheme.get(IntKey(i))
    assert calls == [0, 1, 2]  # once per get


async def test_mixed_node_classes_in_get_all():
    name = await register_local()

    @dataclasses.dataclass
    class A(Node):
        uid: int

        def key(self):
            return f"a:{self.uid}"

        class Meta(Node.Meta):
            caches = [Cache(storage=name, ttl=None)]

    @dataclasses.dataclass
    class B(A):
        def key(self):
            return f"b:{self.uid}"

    with pytest.raises(TypeError, match="one class: expected .*A, got .*B"):
        await cacheme.get_all([A(1), B(2)])


async def test_unregistered_storage_name():
    missing = unique("missing")

    @dataclasses.dataclass
    class Orphan(Node):
        uid: int

        def key(self):
            return f"o:{self.uid}"

        class Meta(Node.Meta):
            caches = [Cache(storage=missing, ttl=None)]

    with pytest.raises(ValueError, match=f"storage '{missing}' is not registered"):
        await cacheme.get(Orphan(1))
    with pytest.raises(ValueError, match="not registered"):
        Cache(storage=missing, ttl=None).storage


def test_bad_cache_and_ttl():
    with pytest.raises(TypeError, match="storage name"):
        Cache(storage=3, ttl=None)
    with pytest.raises(TypeError, match="timedelta"):
        Cache(storage="x", ttl=5)
    with pytest.raises(ValueError, match="positive"):
        Cache(storage="x", ttl=timedelta(0))
    s = LocalStore("lru", 3)
    with pytest.raises(ValueError, match="positive"):
        s.set("k", 1, -1)
    with pytest.raises(TypeError, match="ttl must be"):
        s.set("k", 1, "soon")
    with pytest.raises(TypeError, match="key must be str"):
        s.set(1, 1)


async def test_bad_get_arguments():
    with pytest.raises(TypeError, match="load_fn must be callable"):
        cacheme.get(object(), 5)
    with pytest.raises(TypeError, match="unexpected keyword"):
        cacheme.get(object(), loader=None)
    with pytest.raises(TypeError, match="not a cacheme Node"):
        cacheme.get(object())


async def test_register_non_storage():
    with pytest.raises(TypeError, match="is not a storage"):
        await cacheme.register_storage("x", object())
    with pytest.raises(TypeError, match="name must be str"):
        await cacheme.register_storage(1, cacheme.Storage(url="local://lru", size=1))


def test_bloom_filter_arguments():
    with pytest.raises(ValueError, match="size must be > 0"):
        cacheme.BloomFilter(0, 0.01)
    with pytest.raises(ValueError, match="between 0 and 1"):
        cacheme.BloomFilter(10, 1.5)
