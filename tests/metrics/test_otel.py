"""OpenTelemetry: semantic-convention names and attributes, values equal to the ground truth."""

from __future__ import annotations

import threading

import pytest
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from poolwatch import ConnectionPool, PoolTimeout
from poolwatch.metrics.otel import OTelBridge, WaitSpanObserver
from poolwatch.observe import ACQUIRE_BUCKETS

pytestmark = pytest.mark.db

POOL_ATTR = "db.client.connection.pool.name"
PROCESS_ATTR = "poolwatch.process"
SEMCONV = {
    "db.client.connection.count": "{connection}",
    "db.client.connection.idle.max": "{connection}",
    "db.client.connection.idle.min": "{connection}",
    "db.client.connection.max": "{connection}",
    "db.client.connection.pending_requests": "{request}",
    "db.client.connection.timeouts": "{timeout}",
    "db.client.connection.create_time": "s",
    "db.client.connection.wait_time": "s",
    "db.client.connection.use_time": "s",
}


POOL = "db.client.connection.pool.name"
OK = {POOL: "otel-closed", "poolwatch.outcome": "ok"}


def collected(reader):
    """name -> (unit, data points) from one collection."""
    out = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = (m.unit, list(m.data.data_points), sm.scope.name)
    return out


def points(metrics, name, **attrs):
    return [p for p in metrics[name][1] if all(p.attributes.get(k) == v for k, v in attrs.items())]


def test_semantic_convention_metrics_match_the_ground_truth(dsn):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    n = 25
    with ConnectionPool(dsn, min_size=2, max_size=2, name="otel", open=True) as pool:
        pool.wait()
        OTelBridge([pool], meter_provider=provider)
        for _ in range(n):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        held = [pool.getconn(), pool.getconn()]
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.05)
        metrics = collected(reader)
        for conn in held:
            pool.putconn(conn)
    for name, unit in SEMCONV.items():
        assert name in metrics, f"{name} not exported"
        assert metrics[name][0] == unit, name
        assert metrics[name][2] == "poolwatch"
        for p in metrics[name][1]:
            assert p.attributes[POOL_ATTR] == "otel"

    (used,) = points(
        metrics, "db.client.connection.count", **{"db.client.connection.state": "used"}
    )
    assert used.value == 2
    (idle,) = points(
        metrics, "db.client.connection.count", **{"db.client.connection.state": "idle"}
    )
    assert idle.value == 0
    assert points(metrics, "db.client.connection.max")[0].value == 2
    assert points(metrics, "db.client.connection.idle.max")[0].value == 2
    assert points(metrics, "db.client.connection.idle.min")[0].value == 2
    assert points(metrics, "db.client.connection.timeouts")[0].value == 1

    (ok,) = points(metrics, "db.client.connection.wait_time", **{"poolwatch.outcome": "ok"})
    assert ok.count == n + 2
    assert tuple(ok.explicit_bounds) == ACQUIRE_BUCKETS
    assert sum(ok.bucket_counts) == ok.count
    (timeout,) = points(
        metrics, "db.client.connection.wait_time", **{"poolwatch.outcome": "timeout"}
    )
    assert timeout.count == 1 and timeout.sum >= 0.05
    assert points(metrics, "db.client.connection.use_time")[0].count == n
    (created,) = points(metrics, "db.client.connection.create_time", **{"poolwatch.outcome": "ok"})
    assert created.count == 2
    assert points(metrics, "poolwatch.connection.waits")[0].value == 1
    assert "poolwatch.connection.used_time" in metrics
    assert "poolwatch.errors" in metrics


def test_delta_temporality_reports_only_what_happened_since_the_last_export(dsn):
    reader = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})
    provider = MeterProvider(metric_readers=[reader])
    with ConnectionPool(dsn, min_size=1, name="otel-delta", open=True) as pool:
        pool.wait()
        OTelBridge([pool], meter_provider=provider)
        for _ in range(5):
            with pool.connection():
                pass
        first = collected(reader)
        for _ in range(3):
            with pool.connection():
                pass
        second = collected(reader)
    ok = {"poolwatch.outcome": "ok"}
    assert points(first, "db.client.connection.wait_time", **ok)[0].count == 5
    (p,) = points(second, "db.client.connection.wait_time", **ok)
    assert p.count == 3
    assert (
        p.start_time_unix_nano
        > points(first, "db.client.connection.wait_time", **ok)[0].start_time_unix_nano
    )


def test_a_closed_pool_exports_nothing(dsn):
    """A closed pool exports no gauges; its counters and histograms keep their values.

    A later pool of the same name adds to them, so nothing an OpenTelemetry backend
    reads as cumulative ever goes back (SPEC, "Metric truth").
    """
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pool = ConnectionPool(dsn, min_size=1, name="otel-closed", open=True)
    pool.wait()
    bridge = OTelBridge([pool], meter_provider=provider)
    for _ in range(3):
        with pool.connection():
            pass
    pool.close()
    metrics = collected(reader)
    for gauge in ("db.client.connection.count", "db.client.connection.max"):
        assert gauge not in metrics or not points(metrics, gauge)
    (wait,) = points(metrics, "db.client.connection.wait_time", **OK)
    assert wait.count == 3
    (timeouts,) = points(metrics, "db.client.connection.timeouts", **{POOL: "otel-closed"})
    assert timeouts.value == 0

    again = ConnectionPool(dsn, min_size=1, name="otel-closed", open=True)
    bridge.add(again)
    with again:
        again.wait()
        with again.connection():
            pass
        with pytest.raises(PoolTimeout), again.connection(), again.connection(timeout=0.05):
            pass
        metrics = collected(reader)
        (wait,) = points(metrics, "db.client.connection.wait_time", **OK)
        assert wait.count == 3 + 2  # two served; the timeout has its own outcome
        assert points(metrics, "db.client.connection.max", **{POOL: "otel-closed"})
    metrics = collected(reader)
    (timeouts,) = points(metrics, "db.client.connection.timeouts", **{POOL: "otel-closed"})
    assert timeouts.value == 1
    assert "db.client.connection.max" not in metrics or not points(
        metrics, "db.client.connection.max"
    )


def test_long_waits_become_spans(dsn):
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    observer = WaitSpanObserver("otel-spans", threshold=0.1, tracer_provider=tracer_provider)
    with ConnectionPool(
        dsn, min_size=1, max_size=1, name="otel-spans", observer=observer, open=True
    ) as pool:
        pool.wait()
        with pool.connection():  # no wait: no span
            pass
        held = pool.getconn()
        release = threading.Timer(0.2, pool.putconn, [held])
        release.start()
        with pool.connection():  # waits ~0.2 s: one span
            pass
        release.join()
        held = pool.getconn()
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.02)  # failed, but waited less than the threshold
        pool.putconn(held)
    (span,) = [s for s in spans.get_finished_spans() if s.name == "poolwatch.acquire"]
    assert span.attributes[POOL_ATTR] == "otel-spans"
    assert span.attributes["poolwatch.outcome"] == "ok"
    duration = (span.end_time - span.start_time) / 1e9
    assert 0.15 <= duration <= 1.0


# --- several worker processes: one writer per stream ---------------------------------

WORKER = """
import json, os, sys
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum
from opentelemetry.sdk.resources import Resource
from poolwatch import ConnectionPool
from poolwatch.metrics.otel import instrument, meter_provider

mode, checkouts = sys.argv[1], int(sys.argv[2])
reader = InMemoryMetricReader()
# what every worker of a gunicorn app would share: its pod's identity
shared = Resource.create({"service.name": "app", "service.instance.id": "pod-1"})
if mode == "per-process":
    provider = meter_provider([reader], resource=shared)
else:
    provider = MeterProvider(metric_readers=[reader], resource=shared)
options = {"process_attribute": False} if mode == "off" else {}
streams = []
with ConnectionPool(os.environ["POOLWATCH_TEST_DSN"], min_size=1, max_size=2, name="web") as pool:
    pool.wait()
    instrument([pool], meter_provider=provider, **options)
    for collection in range(2):
        for _ in range(checkouts):
            with pool.connection():
                pass
        data = reader.get_metrics_data()
        for rm in data.resource_metrics:
            who = rm.resource.attributes.get("service.instance.id")
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    counter = isinstance(m.data, Sum) and m.data.is_monotonic
                    for p in m.data.data_points:
                        value = p.count if hasattr(p, "bucket_counts") else p.value
                        counter = counter or hasattr(p, "bucket_counts")
                        attrs = sorted(p.attributes.items())
                        streams.append([collection, who, m.name, attrs, value, counter])
print(json.dumps({"pid": os.getpid(), "streams": streams}))
"""


def run_workers(dsn, mode):
    """Two real worker processes sharing one resource; the second does five times the work."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "POOLWATCH_TEST_DSN": dsn}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, mode, str(checkouts)], stdout=subprocess.PIPE, env=env
        )
        for checkouts in (1, 5)
    ]
    finished = []
    for p in procs:
        try:
            finished.append((p.communicate(timeout=60)[0], p.returncode))
        finally:
            p.kill()  # no-op once it has exited; ends it if the wait timed out
            p.wait(timeout=60)
    assert [code for _, code in finished] == [0, 0]
    return [json.loads(out) for out, _ in finished]


def identities(worker):
    return {(who, name, str(attrs)) for _, who, name, attrs, _, _ in worker["streams"]}


def counter_drops(a, b):
    """Counter streams whose value falls when a backend receives the two workers'
    collections interleaved (a's first, b's first, a's second, b's second)."""
    series: dict[tuple[str, str, str], list[float]] = {}
    for collection in range(2):
        for worker in (a, b):
            for c, who, name, attrs, value, counter in worker["streams"]:
                if c == collection and counter:
                    series.setdefault((who, name, str(attrs)), []).append(value)
    assert series
    return {key for key, values in series.items() if values != sorted(values)}


def test_two_workers_sharing_a_resource_collide_with_the_process_attribute_off(dsn):
    # The failure mode: every stream of one worker is also a stream of the other, and
    # a cumulative counter written by both seems to reset.
    a, b = run_workers(dsn, "off")
    assert identities(a) and identities(a) == identities(b)
    assert counter_drops(a, b)


def test_by_default_each_worker_writes_its_own_streams_under_a_shared_resource(dsn):
    a, b = run_workers(dsn, "default")
    assert identities(a) and identities(b)
    assert not identities(a) & identities(b)
    assert not counter_drops(a, b)  # every counter stream is monotonic
    processes = []
    for worker in (a, b):
        (process,) = {dict(attrs).get(PROCESS_ATTR) for _, _, _, attrs, _, _ in worker["streams"]}
        assert process is not None and f"-{worker['pid']}-" in process
        assert {who for _, who, _, _, _, _ in worker["streams"]} == {"pod-1"}
        processes.append(process)
    assert processes[0] != processes[1]

    # the same metrics and pool attributes, only the writer differs
    def without_process(worker):
        return {
            (name, str([kv for kv in attrs if kv[0] != PROCESS_ATTR]))
            for _, _, name, attrs, _, _ in worker["streams"]
        }

    assert without_process(a) == without_process(b)


def test_each_worker_process_exports_under_its_own_identity(dsn):
    a, b = run_workers(dsn, "per-process")
    assert identities(a) and identities(b)
    assert not identities(a) & identities(b)
    assert not counter_drops(a, b)
    for worker in (a, b):
        (who,) = {who for _, who, _, _, _, _ in worker["streams"]}
        # the pod's identity stays readable, the process makes it unique
        assert who == f"pod-1-{worker['pid']}"
        # the resource already tells the processes apart: no extra attribute
        assert all(PROCESS_ATTR not in dict(attrs) for _, _, _, attrs, _, _ in worker["streams"])
    # the same metrics and attributes, only the writer differs
    assert {i[1:] for i in identities(a)} == {i[1:] for i in identities(b)}


def test_a_given_process_attribute_value_is_used_as_it_is(dsn):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with ConnectionPool(dsn, min_size=1, name="otel-named", open=True) as pool:
        pool.wait()
        OTelBridge([pool], meter_provider=provider, process_attribute="worker-7")
        with pool.connection():
            pass
        metrics = collected(reader)
    assert "db.client.connection.wait_time" in metrics and "db.client.connection.count" in metrics
    for name in metrics:
        for p in metrics[name][1]:
            assert p.attributes[PROCESS_ATTR] == "worker-7", name
    with pytest.raises(ValueError):
        OTelBridge([], meter_provider=provider, process_attribute="")


def test_the_private_sdk_hooks_the_histograms_rely_on():
    """Pins what OTelBridge takes from the SDK's internals, on the SDK installed here
    (the newest release when this was written: 1.45.2). If this fails after an SDK
    upgrade, the histograms silently stop being exported: fix the bridge, or scrape
    /metrics with the OpenTelemetry Collector's Prometheus receiver instead."""
    import inspect

    from opentelemetry.sdk.metrics.export import (
        MetricReader,
        MetricsData,
        PeriodicExportingMetricReader,
        ResourceMetrics,
        ScopeMetrics,
    )

    # 1. the provider exposes its readers in one of the two places the bridge tries
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    readers = getattr(provider, "_metric_readers", None)
    if readers is None:
        readers = provider._sdk_config.metric_readers
    assert list(readers) == [reader]
    # 2. every reader funnels each collection through _receive_metrics(metrics_data, ...)
    for cls in (InMemoryMetricReader, PeriodicExportingMetricReader):
        assert issubclass(cls, MetricReader)
        params = list(inspect.signature(cls._receive_metrics).parameters)
        assert params[:2] == ["self", "metrics_data"], (cls, params)
    assert "_receive_metrics" in inspect.getsource(MetricReader.collect)
    # 3. the temporality preferences are keyed by classes named like the Histogram
    names = {cls.__name__.lstrip("_") for cls in reader._instrument_class_temporality}
    assert "Histogram" in names
    # 4. the data classes are built positionally as the bridge builds them
    for cls, fields in (
        (MetricsData, ["resource_metrics"]),
        (ResourceMetrics, ["resource", "scope_metrics", "schema_url"]),
        (ScopeMetrics, ["scope", "metrics", "schema_url"]),
    ):
        assert list(inspect.signature(cls).parameters) == fields, cls


def test_a_resource_naming_another_process_still_gets_the_process_attribute(dsn):
    """A provider built before a fork names the parent: its workers must still differ."""
    import os

    from opentelemetry.sdk.resources import Resource

    from poolwatch.metrics.otel import process_resource

    found = {}
    with ConnectionPool(dsn, min_size=1, name="otel-fork", open=True) as pool:
        pool.wait()
        for case, resource in (
            ("parent's", Resource({"process.pid": os.getppid()})),
            ("own", process_resource(Resource({"service.instance.id": "pod-1"}))),
        ):
            reader = InMemoryMetricReader()
            provider = MeterProvider(metric_readers=[reader], resource=resource)
            OTelBridge([pool], meter_provider=provider)
            with pool.connection():
                pass
            metrics = collected(reader)
            assert "db.client.connection.wait_time" in metrics
            found[case] = {
                p.attributes.get(PROCESS_ATTR) for name in metrics for p in metrics[name][1]
            }
    (value,) = found["parent's"]
    assert value is not None and f"-{os.getpid()}-" in value
    assert found["own"] == {None}
