"""OpenTelemetry: the semantic-convention ``db.client.connection.*`` metrics and ``poolwatch.*``.

Nothing is recorded per checkout (an SDK ``record()`` costs about 7 µs). Values are
read from the pools' own aggregates when the SDK collects:

- gauges and counters are observable instruments created through the user's
  MeterProvider, so any SDK set-up and exporter works;
- histograms have no observable form in the OpenTelemetry API, and the Python SDK
  has no MetricProducer; the bridge therefore adds ready-made histogram points to
  each collection of the SDK MeterProvider's readers (wrapping the reader's
  ``_receive_metrics``). With a MeterProvider other than the SDK's, the
  histograms are not exported and a warning says so.

Histogram points carry exact counts and sums; their ``min`` and ``max`` are the
edges of the lowest and highest non-empty buckets (the pool keeps no exact extremes).

Several processes (gunicorn workers) must not export under one ``service.instance.id``:
OpenTelemetry allows one writer per stream, and two workers' cumulative counters under
one identity look like resets and flapping gauges. `meter_provider` builds an SDK
MeterProvider whose resource names this process (`process_resource`); create it in
each worker (gunicorn's ``post_fork``), not before the fork. The supported alternative
to this bridge is scraping ``/metrics`` with the OpenTelemetry Collector's Prometheus
receiver (docs/fleet.md), which needs no private SDK attribute. With any provider, by default,
every data point carries ``poolwatch.process`` (host, pid and a random part), which
keeps the streams single-writer at the price of one stream set per worker incarnation.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.metrics import CallbackOptions, Observation

from ..insight.activity import ensure_watched
from ..observe import PoolObserver
from .names import BY_KEY, METRICS, OTEL_ATTRIBUTES, OTEL_DERIVED, Metric
from .state import HistogramValue, PoolSet, PoolState, Watchable

logger = logging.getLogger("poolwatch.metrics.otel")

SCOPE_NAME = "poolwatch"
#: States read within this many seconds serve every callback of one collection (the
#: histogram hook clears them once a collection is complete).
_STATE_REUSE_SECONDS = 0.05


#: The data point attribute that makes each process a writer of its own streams.
PROCESS_ATTRIBUTE = "poolwatch.process"
_process_identity: tuple[int, str] = (0, "")


def process_identity() -> str:
    """``<host>-<pid>-<random>``: unique to this process incarnation, fresh after a fork.

    The random part keeps a restarted worker that reuses a pid (containers restart
    with pid 1 and the like) from continuing its predecessor's cumulative streams.
    """
    global _process_identity
    pid = os.getpid()
    if _process_identity[0] != pid:
        _process_identity = (pid, f"{socket.gethostname()}-{pid}-{secrets.token_hex(3)}")
    return _process_identity[1]


def _resource_names_this_process(provider: Any) -> bool:
    """True when the SDK provider's resource carries this process's pid (`process_resource`,
    or the SDK's process detector, run in this process rather than before a fork)."""
    resource = getattr(getattr(provider, "_sdk_config", None), "resource", None)
    attributes = getattr(resource, "attributes", None) or {}
    return bool(attributes.get("process.pid") == os.getpid())


def _attributes(
    metric: Metric, pool: str, values: tuple[str, ...], process: str | None = None
) -> dict[str, str]:
    attrs = {OTEL_ATTRIBUTES["pool"]: pool}
    if process is not None:
        attrs[PROCESS_ATTRIBUTE] = process
    for name, value in zip(metric.labels, values):
        if value:  # an empty sqlstate_class is no attribute at all
            attrs[OTEL_ATTRIBUTES[name]] = value
    return attrs


class OTelBridge(PoolSet):
    """Publishes registered pools through an OpenTelemetry MeterProvider.

    ::

        from poolwatch.metrics.otel import OTelBridge
        bridge = OTelBridge([pool], meter_provider=provider)

    *process_attribute* keeps every stream single-writer when several processes export
    under one resource (gunicorn workers): ``True`` (default) adds the attribute
    ``poolwatch.process`` (`process_identity`) to every data point unless the
    provider's resource already names this process (`process_resource`); ``False``
    never adds it; a string is used as its value.
    """

    def __init__(
        self,
        pools: Iterable[Watchable] = (),
        *,
        meter_provider: Any | None = None,
        process_attribute: bool | str = True,
    ) -> None:
        from .. import __version__

        provider = otel_metrics.get_meter_provider() if meter_provider is None else meter_provider
        super().__init__()
        if isinstance(process_attribute, str):
            if not process_attribute:
                raise ValueError("process_attribute must be a non-empty string, True or False")
            fixed: str | None = process_attribute
            self._process_attribute: Callable[[], str | None] = lambda: fixed
        elif process_attribute:
            # Decided at each collection, so that a bridge built before a fork still
            # tells the workers apart even when its resource names the parent.
            def automatic() -> str | None:
                return None if _resource_names_this_process(provider) else process_identity()

            self._process_attribute = automatic
        else:
            self._process_attribute = lambda: None
        self.meter = provider.get_meter(SCOPE_NAME, __version__)
        self._cache_lock = threading.Lock()
        self._cached: tuple[float, list[PoolState]] = (0.0, [])
        self._started_ns = time.time_ns()
        self._delta_last: dict[
            tuple[int, str, tuple[str, ...], str], tuple[HistogramValue, int]
        ] = {}
        for pool in pools:
            self.add(pool)
            ensure_watched(pool)  # the checkout activity split (poolwatch.insight)
        self._create_instruments()
        self._hook_readers(provider)

    def states(self) -> list[PoolState]:
        now = time.monotonic()
        with self._cache_lock:
            at, states = self._cached
            if now - at > _STATE_REUSE_SECONDS:
                states = self.open_states()
                self._cached = (now, states)
            return states

    # --- observable instruments ---

    def _create_instruments(self) -> None:
        for metric in METRICS:
            if metric.otel is None or metric.type == "histogram":
                continue
            self._observable(metric.otel, metric, self._scalar_callback(metric))
        for name, key in OTEL_DERIVED.items():
            source = BY_KEY[key]
            if source.type == "histogram":  # timeouts: the acquire histogram's timeout outcome
                self._observable_counter(name, source, self._timeouts_callback())
            else:
                self._observable(name, source, self._scalar_callback(source))

    def _observable(self, name: str, metric: Metric, callback: Callable[..., Any]) -> None:
        m = self.meter
        if metric.type == "counter":
            self._observable_counter(name, metric, callback)
        elif name.startswith("db.client.connection."):
            # The semantic conventions make these UpDownCounters.
            m.create_observable_up_down_counter(
                name, [callback], unit=metric.otel_unit, description=metric.help
            )
        else:
            m.create_observable_gauge(
                name, [callback], unit=metric.otel_unit, description=metric.help
            )

    def _observable_counter(self, name: str, metric: Metric, callback: Callable[..., Any]) -> None:
        unit = "{timeout}" if name.endswith(".timeouts") else metric.otel_unit
        self.meter.create_observable_counter(name, [callback], unit=unit, description=metric.help)

    def _scalar_callback(self, metric: Metric) -> Callable[[CallbackOptions], list[Observation]]:
        def callback(options: CallbackOptions) -> list[Observation]:
            process = self._process_attribute()
            return [
                Observation(value, _attributes(metric, st.pool, values, process))
                for st in self.states()
                for (key, values), value in st.scalars.items()
                if key == metric.key
            ]

        return callback

    def _timeouts_callback(self) -> Callable[[CallbackOptions], list[Observation]]:
        def callback(options: CallbackOptions) -> list[Observation]:
            out = []
            process = self._process_attribute()
            for st in self.states():
                hist = st.histograms.get(("acquire", ("timeout",)))
                count = hist.cumulative()[-1] if hist else 0
                attrs = {OTEL_ATTRIBUTES["pool"]: st.pool}
                if process is not None:
                    attrs[PROCESS_ATTRIBUTE] = process
                out.append(Observation(count, attrs))
            return out

        return callback

    # --- histograms, added to each SDK collection ---

    def _hook_readers(self, provider: Any) -> None:
        # Where the SDK keeps its readers moved between releases; both places are tried.
        readers = getattr(provider, "_metric_readers", None)
        if readers is None:
            readers = getattr(getattr(provider, "_sdk_config", None), "metric_readers", None)
        if readers is None:
            logger.warning(
                "%s is not the OpenTelemetry SDK's MeterProvider: poolwatch exports gauges"
                " and counters through it, but no histograms",
                type(provider).__name__,
            )
            return
        for reader in readers:
            self._hook(reader)

    def _hook(self, reader: Any) -> None:
        receive = reader._receive_metrics
        bridge = weakref.ref(self)

        def receive_with_histograms(metrics_data: Any, *args: Any, **kwargs: Any) -> Any:
            me = bridge()
            if me is not None:
                try:
                    metrics_data = me._with_histograms(reader, metrics_data)
                except Exception:
                    logger.exception("could not add poolwatch histograms to a collection")
            return receive(metrics_data, *args, **kwargs)

        reader._receive_metrics = receive_with_histograms

    def _with_histograms(self, reader: Any, data: Any) -> Any:
        from opentelemetry.sdk.metrics import Histogram as SdkHistogram
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            MetricsData,
            ResourceMetrics,
            ScopeMetrics,
        )
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        # The reader keys its preferences by the SDK's internal instrument classes.
        temporality = AggregationTemporality.CUMULATIVE
        for cls, chosen in getattr(reader, "_instrument_class_temporality", {}).items():
            if cls.__name__.lstrip("_") == SdkHistogram.__name__:
                temporality = chosen
        ours = self.histogram_metrics(id(reader), temporality)
        with self._cache_lock:  # this collection is done: the next one reads the pools afresh
            self._cached = (0.0, [])
        if not ours or not data.resource_metrics:
            return data
        first, *rest = data.resource_metrics
        scopes = list(first.scope_metrics)
        for i, scope in enumerate(scopes):
            if scope.scope.name == SCOPE_NAME:
                scopes[i] = ScopeMetrics(scope.scope, [*scope.metrics, *ours], scope.schema_url)
                break
        else:
            from .. import __version__

            scopes.append(ScopeMetrics(InstrumentationScope(SCOPE_NAME, __version__), ours, ""))
        return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *rest])

    def histogram_metrics(self, reader_id: int, temporality: Any) -> list[Any]:
        """SDK `Metric` objects for every histogram of every pool, in *temporality*."""
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Histogram,
            HistogramDataPoint,
        )
        from opentelemetry.sdk.metrics.export import Metric as SdkMetric

        delta = temporality == AggregationTemporality.DELTA
        now = time.time_ns()
        process = self._process_attribute()
        out = []
        for metric in METRICS:
            if metric.type != "histogram" or metric.otel is None:
                continue
            points = []
            for st in self.states():
                for (key, values), hist in st.histograms.items():
                    if key != metric.key:
                        continue
                    start = self._started_ns
                    if delta:
                        hist, start = self._delta(reader_id, st.pool, key, values, hist, now)
                    points.append(
                        _point(
                            HistogramDataPoint, metric, st.pool, values, hist, start, now, process
                        )
                    )
            if points:
                data = Histogram(points, temporality)
                out.append(SdkMetric(metric.otel, metric.help, metric.otel_unit, data))
        return out

    def _delta(
        self,
        reader_id: int,
        pool: str,
        key: str,
        values: tuple[str, ...],
        hist: HistogramValue,
        now: int,
    ) -> tuple[HistogramValue, int]:
        slot = (reader_id, pool, values, key)
        last = self._delta_last.get(slot)
        self._delta_last[slot] = (HistogramValue(hist.counts.copy(), hist.sum), now)
        if last is None:
            return hist, self._started_ns
        before, at = last
        counts = [a - b for a, b in zip(hist.counts, before.counts)]
        return HistogramValue(counts, hist.sum - before.sum), at


def _point(
    cls: Any,
    metric: Metric,
    pool: str,
    values: tuple[str, ...],
    hist: HistogramValue,
    start: int,
    now: int,
    process: str | None,
) -> Any:
    bounds = metric.buckets
    nonempty = [i for i, n in enumerate(hist.counts) if n]
    if nonempty:
        low, high = nonempty[0], nonempty[-1]
        lowest = bounds[low - 1] if low > 0 else 0.0
        highest = bounds[min(high, len(bounds) - 1)]
    else:
        lowest = highest = 0.0
    return cls(
        attributes=_attributes(metric, pool, values, process),
        start_time_unix_nano=start,
        time_unix_nano=now,
        count=sum(hist.counts),
        sum=hist.sum,
        bucket_counts=list(hist.counts),
        explicit_bounds=list(bounds),
        min=lowest,
        max=highest,
    )


class WaitSpanObserver(PoolObserver):
    """Records a span for every acquisition that waited longer than *threshold* seconds.

    Pass it as the pool's ``observer=``. The span starts when the request did, ends
    when it got its connection (or failed), and carries the pool name and outcome.
    """

    def __init__(
        self, pool_name: str, *, threshold: float = 0.1, tracer_provider: Any | None = None
    ) -> None:
        from .. import __version__

        self.pool_name = pool_name
        self.threshold = threshold
        self.tracer = otel_trace.get_tracer(SCOPE_NAME, __version__, tracer_provider)

    def on_acquire(self, wait_seconds: float, outcome: str, queued: bool) -> None:
        if wait_seconds < self.threshold:
            return
        end = time.time_ns()
        span = self.tracer.start_span(
            "poolwatch.acquire",
            start_time=end - int(wait_seconds * 1e9),
            attributes={
                OTEL_ATTRIBUTES["pool"]: self.pool_name,
                OTEL_ATTRIBUTES["outcome"]: outcome,
                "poolwatch.queued": queued,
            },
        )
        if outcome != "ok":
            span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, outcome))
        span.end(end_time=end)


SERVICE_INSTANCE_ID = "service.instance.id"


def process_resource(resource: Any | None = None) -> Any:
    """*resource* (default: the SDK's, from the environment) naming this very process.

    ``service.instance.id`` becomes ``<the one given, or the host name>-<pid>``, so that
    every worker process is a writer of its own; ``process.pid`` is set too.
    """
    from opentelemetry.sdk.resources import Resource

    base = Resource.create() if resource is None else resource
    given = base.attributes.get(SERVICE_INSTANCE_ID) or socket.gethostname()
    pid = os.getpid()
    return base.merge(Resource({SERVICE_INSTANCE_ID: f"{given}-{pid}", "process.pid": pid}))


def meter_provider(metric_readers: Sequence[Any], *, resource: Any | None = None) -> Any:
    """An SDK MeterProvider for this process, its resource from `process_resource`."""
    from opentelemetry.sdk.metrics import MeterProvider

    return MeterProvider(metric_readers=metric_readers, resource=process_resource(resource))


def instrument(
    pools: Sequence[Watchable],
    *,
    meter_provider: Any | None = None,
    process_attribute: bool | str = True,
) -> OTelBridge:
    """Publish *pools* through *meter_provider* (default: the global one).

    Every data point carries ``poolwatch.process`` unless the provider's resource names
    this process already; *process_attribute* is as for `OTelBridge`.
    """
    return OTelBridge(pools, meter_provider=meter_provider, process_attribute=process_attribute)
