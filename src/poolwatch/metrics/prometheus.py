"""Prometheus export: a collector that reads registered pools at scrape time.

Registration is explicit: ``poolwatch.metrics.register(pool)``. A pool option
would make the core import the metrics layer, and would hide which registry the
pool lands in; one call next to the pool's creation is as short and says so.
(`poolwatch.exporter.create_app(pools=...)` calls it for you.)
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator

from prometheus_client.metrics_core import Metric as PromMetric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from ..insight.activity import ensure_watched
from .exposition import _BOUNDS, render, render_exporter
from .multiprocess import MultiprocessLink
from .multiprocess_files import REJECTIONS
from .names import EXPORTER_METRICS, METRICS, info_sample_name
from .state import PoolSet, PoolState, Watchable


class PoolCollector(PoolSet, Collector):
    """Yields the contract's families for every open pool registered with it.

    Pools are held weakly. A pool that is closed, or garbage-collected, keeps its
    counters and histograms under its name (`PoolSet`); its gauges and pool_info go.
    In multiprocess mode (`enable_multiprocess`) the families cover every process
    that writes into the same directory.
    """

    def __init__(self) -> None:
        super().__init__()
        self.multiprocess: MultiprocessLink | None = None

    def states(self) -> list[PoolState]:
        """Merged states to export: this process's, or every process's in multiprocess mode."""
        if self.multiprocess is not None:
            return self.multiprocess.read_all()
        return self.open_states()

    def render(self, *, openmetrics: bool = False) -> str:
        text = render(self.states(), openmetrics=openmetrics)
        if self.multiprocess is not None:
            text += render_exporter(exporter_values(), openmetrics=openmetrics)
        return text

    def collect(self) -> Iterator[PromMetric]:
        if _suppressed.active:
            return
        yield from families(self.states())
        if self.multiprocess is not None:
            yield from exporter_families()

    def describe(self) -> list[PromMetric]:
        # Describing would read the pools; an empty answer skips registration checks.
        return []


class _Suppress(threading.local):
    active = False


# Set while the exporter renders pools itself and asks a registry for everything else.
_suppressed = _Suppress()


def families(states: list[PoolState]) -> Iterator[PromMetric]:
    """prometheus_client families equal to what `render` writes (slower, for foreign exporters)."""
    for metric in METRICS:
        family = PromMetric(metric.prom, metric.help, metric.type, metric.unit)
        names = tuple(metric.labels)
        for st in states:
            if metric.type == "info":
                if st.live:
                    labels = {"pool": st.pool, **{n: st.info.get(n, "") for n in names}}
                    family.add_sample(info_sample_name(metric), labels, 1)
            elif metric.type == "histogram":
                for (key, values), hist in st.histograms.items():
                    if key != metric.key:
                        continue
                    labels = {"pool": st.pool, **dict(zip(names, values))}
                    cumulative = hist.cumulative()
                    for le, n in zip(_BOUNDS[metric.key], cumulative):
                        family.add_sample(metric.prom + "_bucket", {**labels, "le": le}, n)
                    family.add_sample(metric.prom + "_count", labels, cumulative[-1])
                    family.add_sample(metric.prom + "_sum", labels, hist.sum)
            else:
                for (key, values), value in st.scalars.items():
                    if key == metric.key:
                        labels = {"pool": st.pool, **dict(zip(names, values))}
                        family.add_sample(metric.sample_name, labels, value)
        if family.samples:
            yield family


def exporter_values() -> dict[str, float]:
    """Current values of the exporter's own series (`EXPORTER_METRICS`), by key."""
    return {"state_files_rejected": REJECTIONS.total}


def exporter_families() -> Iterator[PromMetric]:
    values = exporter_values()
    for metric in EXPORTER_METRICS:
        family = PromMetric(metric.prom, metric.help, metric.type, metric.unit)
        family.add_sample(metric.sample_name, {}, values.get(metric.key, 0))
        yield family


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, PoolCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def collector_for(registry: CollectorRegistry | None = None) -> PoolCollector:
    """The one PoolCollector of *registry* (default: prometheus_client's REGISTRY)."""
    registry = REGISTRY if registry is None else registry
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = PoolCollector()
            directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            if directory:  # checked first: a bad directory leaves nothing half-registered
                collector.multiprocess = MultiprocessLink(directory, collector)
            registry.register(collector)
            _collectors[registry] = collector
        return collector


def register(pool: Watchable, registry: CollectorRegistry | None = None) -> PoolCollector:
    """Export *pool*'s metrics through *registry* (default: prometheus_client's REGISTRY).

    Idempotent. The series appear once the pool is open; when it closes, its gauges
    end and its counters stay (a later pool of that name adds to them).
    With ``PROMETHEUS_MULTIPROC_DIR`` set, the pool's state is also written there for
    the other worker processes' scrapes. It also starts sampling what the pool's
    checked-out connections do (`poolwatch.insight.activity.watch`), unless the pool
    is watched already.
    """
    if not (hasattr(pool, "snapshot") and hasattr(pool, "aggregates")):
        raise TypeError(f"register() needs a poolwatch pool, got {type(pool).__name__}")
    collector = collector_for(registry)
    collector.add(pool)
    ensure_watched(pool)
    if collector.multiprocess is not None:
        collector.multiprocess.track(pool)
        collector.multiprocess.start()
    return collector


def unregister(pool: Watchable, registry: CollectorRegistry | None = None) -> None:
    """Stop exporting *pool* (closing it has the same effect)."""
    collector_for(registry).remove(pool)
