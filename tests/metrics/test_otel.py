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
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pool = ConnectionPool(dsn, min_size=1, name="otel-closed", open=True)
    pool.wait()
    OTelBridge([pool], meter_provider=provider)
    pool.close()
    metrics = collected(reader)
    assert all(not points(metrics, name) for name in metrics)


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
