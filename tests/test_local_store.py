"""The C local store and its policies: size bound, LRU order, W-TinyLFU
admission, TTL on the timer wheel, and the bloom filter."""
import gc
import random
import time
import weakref
from datetime import timedelta

import pytest

from cacheme import BloomFilter
from cacheme._core import LocalStore


@pytest.mark.parametrize("policy", ["lru", "tlfu"])
@pytest.mark.parametrize("size", [1, 2, 10, 1000])
def test_size_bound_random_trace(policy, size):
    s = LocalStore(policy, size)
    rng = random.Random(size)
    for i in range(20000):
        k = f"k{rng.randrange(size * 5)}"
        if s.get(k) is None:
            s.set(k, i)
        assert len(s) <= size
    assert len(s) == size or policy == "tlfu"


@pytest.mark.parametrize("policy", ["lru", "tlfu"])
def test_size_bound_adversarial_traces(policy):
    size = 100
    s = LocalStore(policy, size)
    traces = [
        [f"scan{i}" for i in range(5000)],                       # all distinct
        [f"loop{i % 101}" for i in range(5000)],                 # loop of size+1
        ["same"] * 1000,                                         # one key
        [f"hot{i % 3}" if i % 2 else f"cold{i}" for i in range(5000)],
    ]
    for trace in traces:
        for k in trace:
            if s.get(k) is None:
                s.set(k, k)
            assert len(s) <= size
        # plain sets with no gets at all
        for k in trace[:500]:
            s.set(k, k)
            assert len(s) <= size
    for i in range(300):
        s.remove(f"loop{i % 101}")
    assert len(s) <= size


@pytest.mark.parametrize("policy", ["lru", "tlfu"])
def test_index_agrees_with_a_dict_under_sets_and_removes(policy):
    """The open-addressing index (hash bits beside each slot, backward-shift
    deletion, growth) against a dict: a store too big to evict holds exactly
    what the dict holds after every mix of set, overwrite, remove and get."""
    s = LocalStore(policy, 100000)
    model = {}
    rng = random.Random(7)
    for i in range(60000):
        k = f"key:{rng.randrange(6000)}:v1"
        op = rng.random()
        if op < 0.45:
            s.set(k, i)
            model[k] = i
        elif op < 0.75:
            assert s.remove(k) is (k in model)
            model.pop(k, None)
        else:
            assert s.get(k) == model.get(k)
        if i % 10000 == 0:
            assert len(s) == len(model)
            assert all(s.get(key) == v for key, v in model.items())
    assert len(s) == len(model)
    assert all(s.get(key) == v for key, v in model.items())
    for j in range(6000):
        assert (f"key:{j}:v1" in s) is (f"key:{j}:v1" in model)


def test_lru_order_is_exact():
    s = LocalStore("lru", 3)
    for k in "abc":
        s.set(k, k)
    assert s.get("a") == "a"  # a is now most recent
    s.set("d", "d")           # evicts b, the least recent
    assert "b" not in s
    assert all(k in s for k in "acd")
    s.get("c")
    s.set("e", "e")           # evicts a
    assert "a" not in s and all(k in s for k in "cde")


def test_tlfu_frequent_keys_survive_a_scan():
    s = LocalStore("tlfu", 100)
    hot = [f"hot{i}" for i in range(50)]
    for _ in range(20):
        for k in hot:
            if s.get(k) is None:
                s.set(k, k)
    for i in range(2000):  # one-hit wonders
        k = f"scan{i}"
        if s.get(k) is None:
            s.set(k, k)
    survived = sum(1 for k in hot if k in s)
    assert survived >= 45, survived


def test_tlfu_beats_lru_on_zipf():
    rng = random.Random(7)
    keys = [f"z{i}" for i in range(5000)]
    weights = [1 / (i + 1) for i in range(5000)]
    trace = rng.choices(keys, weights, k=60000)
    ratios = {}
    for policy in ("lru", "tlfu"):
        s = LocalStore(policy, 250)
        hits = 0
        for k in trace:
            if s.get(k) is None:
                s.set(k, 1)
            else:
                hits += 1
        ratios[policy] = hits / len(trace)
    assert ratios["tlfu"] > ratios["lru"], ratios


def test_set_replaces_value_and_remove():
    s = LocalStore("tlfu", 10)
    s.set("k", 1)
    s.set("k", 2)
    assert s.get("k") == 2 and len(s) == 1
    assert s.remove("k") is True
    assert s.remove("k") is False
    assert s.get("k", "default") == "default"
    s.set("a", 1)
    s.clear()
    assert len(s) == 0


def test_ttl_sub_second_and_expired_memory_is_freed():
    s = LocalStore("tlfu", 100)

    class Value:
        pass

    v = Value()
    ref = weakref.ref(v)
    t0 = time.monotonic()
    s.set("short", v, 0.05)
    s.set("long", "x", timedelta(days=3650))
    s.set("none", "y")
    del v
    got = s.get("short")
    if time.monotonic() - t0 < 0.05:  # not a sleep that hopes: only if it cannot have expired
        assert got is not None
    del got
    time.sleep(0.08)
    assert s.get("short") is None        # never returned once expired
    assert "short" not in s
    gc.collect()
    assert ref() is None                 # and its value was released
    assert s.get("long") == "x" and s.get("none") == "y"


def test_ttl_expiry_without_access_to_the_key():
    s = LocalStore("lru", 1000)
    for i in range(100):
        s.set(f"k{i}", i, 0.03)
    s.set("keep", 1)
    time.sleep(0.06)
    s.expire()  # the wheel advances on any access
    assert len(s) == 1


def test_ttl_reset_by_set_without_ttl():
    s = LocalStore("lru", 10)
    s.set("k", 1, 0.03)
    s.set("k", 2)
    time.sleep(0.05)
    assert s.get("k") == 2


def test_values_reentering_the_store_from_del():
    s = LocalStore("lru", 2)

    class Evil:
        def __del__(self):
            s.set("from-del", 1)
            s.get("x")

    s.set("a", Evil())
    s.set("b", 1)
    s.set("c", 1)  # evicts a; its __del__ touches the store
    assert len(s) <= 2
    s.clear()


def test_non_ascii_and_str_subclass_keys():
    s = LocalStore("lru", 10)

    class MyStr(str):
        pass

    s.set("ключ:✓", 1)
    assert s.get("ключ:✓") == 1
    s.set(MyStr("plain"), 2)
    assert s.get("plain") == 2


def test_bloom_filter_false_positive_rate():
    n, fp = 20000, 0.01
    bf = BloomFilter(n + 1, fp)
    for i in range(n):
        bf.put(f"key-{i}")
    assert all(bf.contains(f"key-{i}") for i in range(n))  # no false negatives
    false = sum(bf.contains(f"other-{i}") for i in range(50000))
    assert false / 50000 < fp * 1.5, false / 50000
    assert "key-1" in bf


def test_bloom_filter_clears_after_size_puts():
    bf = BloomFilter(100, 0.01)
    for i in range(100):
        bf.put(i)
    assert bf.count == 100 and bf.contains(0)
    bf.put("one more")  # the 101st put starts over
    assert bf.count == 1
    assert sum(bf.contains(i) for i in range(100)) < 5
