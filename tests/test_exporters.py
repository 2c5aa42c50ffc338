"""cacheme.exporters: the Prometheus exposition (parsed with prometheus_client's
own parser), the prometheus_client collector, and OpenTelemetry instruments
(read with the SDK's in-memory reader)."""
import asyncio
import dataclasses

import pytest

import cacheme
from cacheme import Cache, Node
from cacheme import exporters
from conftest import register_local, unique

parser = pytest.importorskip("prometheus_client.parser")


def make_node(storages, fail_on=(), sleep=0.0):
    loads = []

    @dataclasses.dataclass
    class ExportedNode(Node):
        uid: int

        def key(self) -> str:
            return f"exp:{self.uid}"

        async def load(self):
            loads.append(self.uid)
            if sleep:
                await asyncio.sleep(sleep)
            if self.uid in fail_on:
                raise ValueError(f"no {self.uid}")
            return self.uid * 10

        class Meta(Node.Meta):
            pass

    ExportedNode.__qualname__ = unique("ExportedNode")
    ExportedNode.Meta.version = "v1"
    ExportedNode.Meta.caches = [Cache(storage=s, ttl=None) for s in storages]
    return ExportedNode, loads


def samples(text):
    """{(sample name, frozenset(labels)): value} of an exposition."""
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got, name, **labels):
    return got[(name, frozenset(labels.items()))]


async def test_prometheus_text_counts_requests_loads_and_storage_ops():
    local = await register_local("tlfu", 1000)
    N, loads = make_node([local], fail_on={3})
    node = N.__qualname__
    for uid in (1, 2, 1, 1, 2):
        assert await cacheme.get(N(uid)) == uid * 10
    with pytest.raises(ValueError):
        await cacheme.get(N(3))
    got = samples(exporters.prometheus_text())
    # 6 requests: 3 hits, 3 misses (1, 2, 3); 2 loads succeeded, 1 raised
    assert value(got, "cacheme_requests_total", node=node, result="hit") == 3
    assert value(got, "cacheme_requests_total", node=node, result="miss") == 3
    assert value(got, "cacheme_loads_total", node=node, result="success") == 2
    assert value(got, "cacheme_loads_total", node=node, result="failure") == 1
    # the histogram: 3 observations, all at most +Inf, cumulative buckets
    assert value(got, "cacheme_load_duration_seconds_count", node=node) == 3
    assert value(got, "cacheme_load_duration_seconds_bucket", node=node, le="+Inf") == 3
    assert value(got, "cacheme_load_duration_seconds_sum", node=node) >= 0
    assert value(got, "cacheme_storage_operations_total",
                 storage=local, op="get", result="hit") >= 3
    # two fills of the local store after two successful loads
    assert value(got, "cacheme_storage_operations_total",
                 storage=local, op="set", result="success") >= 2
    assert value(got, "cacheme_local_entries", storage=local) == 2
    assert value(got, "cacheme_evictions_total", storage=local) == 0
    assert value(got, "cacheme_in_flight") == 0


async def test_histogram_buckets_place_a_slow_load():
    local = await register_local("lru", 100)
    N, _ = make_node([local], sleep=0.03)
    await cacheme.get(N(1))
    got = samples(exporters.prometheus_text())
    node = N.__qualname__
    # a 30 ms load is above the 25 ms bound and within 50 ms... or later on
    # a loaded machine: never in a bucket below 25 ms
    assert value(got, "cacheme_load_duration_seconds_bucket", node=node, le="0.025") == 0
    assert value(got, "cacheme_load_duration_seconds_bucket", node=node, le="+Inf") == 1
    assert value(got, "cacheme_load_duration_seconds_sum", node=node) >= 0.03


async def test_evictions_and_entries_of_a_bounded_store():
    local = await register_local("lru", 10)
    N, _ = make_node([local])
    for uid in range(25):
        await cacheme.get(N(uid))
    got = samples(exporters.prometheus_text())
    assert value(got, "cacheme_local_entries", storage=local) == 10
    assert value(got, "cacheme_evictions_total", storage=local) == 15


async def test_in_flight_counts_keys_being_loaded():
    local = await register_local("tlfu", 100)
    gate = asyncio.Event()

    @dataclasses.dataclass
    class Slow(Node):
        uid: int

        def key(self) -> str:
            return f"slow:{self.uid}"

        async def load(self):
            await gate.wait()
            return self.uid

        class Meta(Node.Meta):
            version = "v1"
            caches = [Cache(storage=local, ttl=None)]

    tasks = [asyncio.ensure_future(cacheme.get(Slow(i))) for i in (1, 2, 2)]
    await asyncio.sleep(0.01)
    assert value(samples(exporters.prometheus_text()), "cacheme_in_flight") == 2
    gate.set()
    assert await asyncio.gather(*tasks) == [1, 2, 2]
    assert value(samples(exporters.prometheus_text()), "cacheme_in_flight") == 0


async def test_label_values_are_escaped():
    local = await register_local("tlfu", 100)
    N, _ = make_node([local])
    N.__qualname__ = 'odd"name\\with\nnewline'
    try:
        await cacheme.get(N(1))
        got = samples(exporters.prometheus_text())
        assert value(got, "cacheme_requests_total", node='odd"name\\with\nnewline',
                     result="miss") == 1
    finally:
        N.__qualname__ = unique("renamed")


async def test_storage_get_errors_and_set_errors_are_apart():
    local = await register_local("tlfu", 100)
    name = unique("broken")

    class Broken:
        """A Python storage whose gets and sets raise."""

        def is_local(self):
            return False

        async def connect(self):
            pass

        async def get(self, node, serializer):
            raise OSError("down")

        async def set(self, node, value, ttl, serializer):
            raise OSError("down")

        async def remove(self, node):
            pass

    await cacheme.register_storage(name, Broken())
    N, _ = make_node([local, name])
    assert await cacheme.get(N(1)) == 10
    got = samples(exporters.prometheus_text())
    assert value(got, "cacheme_storage_operations_total", storage=name, op="get",
                 result="error") == 1
    assert value(got, "cacheme_storage_operations_total", storage=name, op="set",
                 result="error") == 1
    assert value(got, "cacheme_storage_operations_total", storage=name, op="set",
                 result="success") == 0


async def test_get_all_counts_one_histogram_observation_per_batch_load():
    local = await register_local("tlfu", 100)
    N, loads = make_node([local])
    got_values = await cacheme.get_all([N(i) for i in range(5)])
    assert list(got_values) == [i * 10 for i in range(5)]
    got = samples(exporters.prometheus_text())
    node = N.__qualname__
    assert value(got, "cacheme_requests_total", node=node, result="miss") == 5
    assert value(got, "cacheme_loads_total", node=node, result="success") == 5
    assert value(got, "cacheme_load_duration_seconds_count", node=node) >= 1


async def test_prometheus_client_collector():
    from prometheus_client import CollectorRegistry, generate_latest

    local = await register_local("tlfu", 100)
    N, _ = make_node([local])
    await cacheme.get(N(1))
    await cacheme.get(N(1))
    registry = CollectorRegistry()
    registry.register(exporters.PrometheusCollector())
    got = samples(generate_latest(registry).decode())
    node = N.__qualname__
    assert value(got, "cacheme_requests_total", node=node, result="hit") == 1
    assert value(got, "cacheme_loads_total", node=node, result="success") == 1
    assert value(got, "cacheme_load_duration_seconds_count", node=node) == 1
    assert value(got, "cacheme_local_entries", storage=local) == 1


async def test_opentelemetry_in_memory_reader():
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    local = await register_local("tlfu", 100)
    N, _ = make_node([local], fail_on={2})
    await cacheme.get(N(1))
    await cacheme.get(N(1))
    with pytest.raises(ValueError):
        await cacheme.get(N(2))
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    exporters.instrument_opentelemetry(provider)
    data = reader.get_metrics_data()
    points = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    points[(metric.name, frozenset(p.attributes.items()))] = p.value
    node = N.__qualname__
    assert points[("cacheme_requests", frozenset({("node", node), ("result", "hit")}))] == 1
    assert points[("cacheme_requests", frozenset({("node", node), ("result", "miss")}))] == 2
    assert points[("cacheme_loads", frozenset({("node", node), ("result", "failure")}))] == 1
    assert points[("cacheme_load_duration_seconds_count", frozenset({("node", node)}))] == 2
    assert points[("cacheme_local_entries", frozenset({("storage", local)}))] == 1
    assert points[("cacheme_in_flight", frozenset())] == 0
    provider.shutdown()


def test_stats_storage_counters_have_sets():
    """storage_stats() gained sets/set_errors; hits/misses/errors are unchanged."""
    m = cacheme.Metrics() if hasattr(cacheme, "Metrics") else None
    if m is None:
        from cacheme.interfaces import Metrics
        m = Metrics()
    m._record_storage("x", 1, 2, 3)
    assert m.storage_stats() == {"x": {"hits": 1, "misses": 2, "errors": 3, "sets": 0,
                                       "set_errors": 0}}
    assert m._load_histogram()[1] == [0] * 14


async def test_refreshes_by_kind():
    """cacheme_refreshes_total{node, kind}: a background refresh (refresh_after)
    and a stale_if_error answer, in the exposition and the collector."""
    from datetime import timedelta

    from prometheus_client import CollectorRegistry, generate_latest

    local = await register_local("tlfu", 100)
    fail = []

    @dataclasses.dataclass
    class Fresh(Node):
        uid: int

        def key(self) -> str:
            return f"exp-fresh:{self.uid}"

        async def load(self):
            if fail:
                raise ValueError("down")
            return self.uid

        class Meta(Node.Meta):
            version = "v1"
            caches = [Cache(storage=local, ttl=timedelta(seconds=10))]
            refresh_after = timedelta(seconds=1)
            stale_if_error = timedelta(seconds=60)

    Fresh.__qualname__ = unique("Fresh")
    node = Fresh.__qualname__
    assert await cacheme.get(Fresh(1)) == 1
    try:
        cacheme._core._advance_clock(2 * 10**9)  # older than refresh_after
        assert await cacheme.get(Fresh(1)) == 1
        await asyncio.sleep(0.01)  # the background refresh runs
        fail.append(1)
        cacheme._core._advance_clock(11 * 10**9)  # past the TTL, within stale_if_error
        assert await cacheme.get(Fresh(1)) == 1
        got = samples(exporters.prometheus_text())
        assert value(got, "cacheme_refreshes_total", node=node, kind="background") == 1
        assert value(got, "cacheme_refreshes_total", node=node, kind="early") == 0
        assert value(got, "cacheme_refreshes_total", node=node, kind="stale_if_error") == 1
        registry = CollectorRegistry()
        registry.register(exporters.PrometheusCollector())
        got = samples(generate_latest(registry).decode())
        assert value(got, "cacheme_refreshes_total", node=node, kind="background") == 1
    finally:
        cacheme._core._reset_clock()  # the clock of the tests that follow
