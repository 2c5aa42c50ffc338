"""Metrics for monitoring systems: Prometheus and OpenTelemetry.

Every value is read, when scraped, from the counters ``cacheme.stats()``
reads (the C counters bumped on the request path): exporting adds no
bookkeeping to a get. Names follow Micrometer's cache metrics:

=====================================================  =========  ==================================
name                                                   type       labels
=====================================================  =========  ==================================
``cacheme_requests_total``                             counter    node, result (hit, miss)
``cacheme_loads_total``                                counter    node, result (success, failure)
``cacheme_load_duration_seconds``                      histogram  node (one observation per load
                                                                  call; a get_all's
                                                                  ``Node.load_all`` is one)
``cacheme_storage_operations_total``                   counter    storage, op (get, set),
                                                                  result (hit, miss, error;
                                                                  success, error)
``cacheme_local_entries``                              gauge      storage
``cacheme_evictions_total``                            counter    storage
``cacheme_refreshes_total``                            counter    node, kind (background, early,
                                                                  stale_if_error)
``cacheme_in_flight``                                  gauge      (keys being loaded now)
=====================================================  =========  ==================================

``node`` is the node class's ``__qualname__``; ``storage`` the name it was
registered under. A storage's ``get`` counts one per key asked (a get_all
batch of 10 keys: 10), its ``set`` one per call (a ``set_all``: one).
"""
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from cacheme import _core
from cacheme.core import nodes
from cacheme.data import list_storages

__all__ = ["prometheus_text", "PrometheusCollector", "instrument_opentelemetry"]

Labels = Tuple[Tuple[str, str], ...]
# (name, type, help, [(sample name suffix, labels, value)])
Family = Tuple[str, str, str, List[Tuple[str, Labels, float]]]


def _node_label(cls: Any) -> str:
    return str(getattr(cls, "__qualname__", None) or cls.__name__)


def _local_store(storage: Any) -> Any:
    store = getattr(storage, "_local", None)
    if store is None:
        store = getattr(storage, "_store", None)
    return store if isinstance(store, _core.LocalStore) else None


def _families() -> List[Family]:
    requests: List[Tuple[str, Labels, float]] = []
    loads: List[Tuple[str, Labels, float]] = []
    durations: List[Tuple[str, Labels, float]] = []
    refreshes: List[Tuple[str, Labels, float]] = []
    per_storage: Dict[str, List[int]] = {}  # name -> [hits, misses, get errors, sets, set errors]
    for cls in nodes():
        m = cls.get_metrics()
        node = _node_label(cls)
        requests.append(("", (("node", node), ("result", "hit")), m.hit_count()))
        requests.append(("", (("node", node), ("result", "miss")), m.miss_count()))
        loads.append(("", (("node", node), ("result", "success")), m.load_success_count()))
        loads.append(("", (("node", node), ("result", "failure")), m.load_failure_count()))
        for kind, count in m.refresh_counts().items():
            refreshes.append(("", (("node", node), ("kind", kind)), count))
        bounds, counts = m._load_histogram()
        cumulative = 0
        for bound, count in zip(bounds, counts):
            cumulative += count
            durations.append(("_bucket", (("node", node), ("le", repr(float(bound)))), cumulative))
        cumulative += counts[-1]
        durations.append(("_bucket", (("node", node), ("le", "+Inf")), cumulative))
        durations.append(("_sum", (("node", node),), m.total_load_time() / 1e9))
        durations.append(("_count", (("node", node),), cumulative))
        for name, c in m.storage_stats().items():
            acc = per_storage.setdefault(name, [0, 0, 0, 0, 0])
            acc[0] += c["hits"]
            acc[1] += c["misses"]
            acc[2] += c["errors"] - c["set_errors"]
            acc[3] += c["sets"]
            acc[4] += c["set_errors"]
    ops: List[Tuple[str, Labels, float]] = []
    for name, (hits, misses, get_errors, sets, set_errors) in sorted(per_storage.items()):
        for op, result, value in (
            ("get", "hit", hits),
            ("get", "miss", misses),
            ("get", "error", get_errors),
            ("set", "success", sets),
            ("set", "error", set_errors),
        ):
            ops.append(("", (("storage", name), ("op", op), ("result", result)), value))
    entries: List[Tuple[str, Labels, float]] = []
    evictions: List[Tuple[str, Labels, float]] = []
    for name, storage in sorted(list_storages().items()):
        store = _local_store(storage)
        if store is not None:
            entries.append(("", (("storage", name),), len(store)))
            evictions.append(("", (("storage", name),), store.evictions))
    in_flight: List[Tuple[str, Labels, float]] = [("", (), _core._flights_in_table())]
    return [
        ("cacheme_requests_total", "counter", "Cache requests by node and result", requests),
        ("cacheme_loads_total", "counter", "Loads by node and result", loads),
        ("cacheme_load_duration_seconds", "histogram", "Time spent in a load", durations),
        ("cacheme_storage_operations_total", "counter", "Storage operations", ops),
        ("cacheme_local_entries", "gauge", "Entries in a local storage", entries),
        ("cacheme_evictions_total", "counter", "Entries evicted from a local storage", evictions),
        ("cacheme_refreshes_total", "counter", "Refreshes of the freshness options", refreshes),
        ("cacheme_in_flight", "gauge", "Keys being loaded now", in_flight),
    ]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def prometheus_text() -> str:
    """Every cacheme metric in Prometheus's text exposition format (0.0.4)."""
    lines = []
    for name, kind, help_text, samples in _families():
        # the family name of a counter in the text format is the sample name
        # without _total only in OpenMetrics; the 0.0.4 format keeps it whole
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{name}{suffix}{{{label_text}}} {_number(value)}" if labels
                         else f"{name}{suffix} {_number(value)}")
    return "\n".join(lines) + "\n"


class PrometheusCollector:
    """A ``prometheus_client`` collector: ``REGISTRY.register(PrometheusCollector())``.

    Needs the ``prometheus_client`` package (imported when collecting)."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        for name, kind, help_text, samples in _families():
            if kind == "histogram":
                yield _histogram_family(HistogramMetricFamily, name, help_text, samples)
                continue
            keys = [k for k, _ in samples[0][1]] if samples else []
            if kind == "counter":
                family = CounterMetricFamily(name[: -len("_total")], help_text, labels=keys)
            else:
                family = GaugeMetricFamily(name, help_text, labels=keys)
            for _, labels, value in samples:
                family.add_metric([v for _, v in labels], value)
            yield family

    def describe(self) -> Iterable[Any]:
        return []  # unchecked registration: families vary with the nodes defined


def _histogram_family(cls: Any, name: str, help_text: str,
                      samples: List[Tuple[str, Labels, float]]) -> Any:
    family = cls(name, help_text, labels=["node"])
    buckets: Dict[str, List[Tuple[str, float]]] = {}
    sums: Dict[str, float] = {}
    for suffix, labels, value in samples:
        node = labels[0][1]
        if suffix == "_bucket":
            buckets.setdefault(node, []).append((labels[1][1], value))
        elif suffix == "_sum":
            sums[node] = value
    for node, bs in buckets.items():
        family.add_metric([node], bs, sums.get(node, 0.0))
    return family


def instrument_opentelemetry(meter_provider: Optional[Any] = None) -> List[Any]:
    """Register observable instruments for every cacheme metric with an
    OpenTelemetry meter (from ``meter_provider``, or the global one).

    Needs ``opentelemetry-api``. Counters are observable counters named
    without the ``_total`` suffix (an OpenTelemetry-to-Prometheus exporter
    adds it back); the load-time histogram is exported as its sum and count
    (``cacheme_load_duration_seconds_sum`` / ``_count``): the OpenTelemetry
    API has no observable histogram. Returns the instruments made."""
    from opentelemetry import metrics as otel_metrics

    meter = (meter_provider or otel_metrics.get_meter_provider()).get_meter("cacheme")

    def observer(family_name: str, suffix: str) -> Any:
        def callback(options: Any) -> Iterator[Any]:
            for name, _kind, _help, samples in _families():
                if name != family_name:
                    continue
                for sfx, labels, value in samples:
                    if sfx == suffix:
                        yield otel_metrics.Observation(value, dict(labels))

        return callback

    made = []
    for name, kind, help_text, _samples in _families():
        if kind == "histogram":
            made.append(meter.create_observable_counter(
                f"{name}_sum", callbacks=[observer(name, "_sum")], unit="s",
                description=f"{help_text} (sum)"))
            made.append(meter.create_observable_counter(
                f"{name}_count", callbacks=[observer(name, "_count")],
                description=f"{help_text} (count)"))
        elif kind == "counter":
            made.append(meter.create_observable_counter(
                name[: -len("_total")], callbacks=[observer(name, "")], description=help_text))
        else:
            made.append(meter.create_observable_gauge(
                name, callbacks=[observer(name, "")], description=help_text))
    return made
