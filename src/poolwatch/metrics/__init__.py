"""Metrics: the name table, Prometheus export (single and multiprocess) and OpenTelemetry.

``poolwatch.metrics.register(pool)`` exports a pool through prometheus_client's
default registry; the OpenTelemetry bridge lives in `poolwatch.metrics.otel`.
"""

from .names import METRICS, Metric
from .prometheus import PoolCollector, collector_for, register, unregister
from .state import PoolState, merge_states, state_of

__all__ = [
    "METRICS",
    "Metric",
    "PoolCollector",
    "PoolState",
    "collector_for",
    "merge_states",
    "register",
    "state_of",
    "unregister",
]
