"""The metric contract as data: one row per family, read by every exporter and generator.

The Prometheus exposition, the OpenTelemetry bridge, the multiprocess merge, the
alert rules, the dashboards and the docs all take names, units, help text, buckets
and label values from `METRICS`, so that none of them can drift from another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from ..observe import (
    ACQUIRE_BUCKETS,
    ACQUIRE_OUTCOMES,
    CLOSE_REASONS,
    CONNECT_BUCKETS,
    CONNECT_OUTCOMES,
    ERROR_KINDS,
    LIFETIME_BUCKETS,
    SQLSTATE_CLASSES,
    USE_BUCKETS,
)

MetricType = Literal["gauge", "counter", "histogram", "info"]
#: "pool": one series per pool (label ``pool``); "exporter": the exporter's own series
Scope = Literal["pool", "exporter"]
#: How one pool's values from several processes combine into one series.
Merge = Literal["sum", "max", "ratio", "first"]

#: The label every series carries, and its OpenTelemetry attribute.
POOL_LABEL: Final = "pool"
#: Prometheus label -> OpenTelemetry attribute.
OTEL_ATTRIBUTES: Final = {
    "pool": "db.client.connection.pool.name",
    "state": "db.client.connection.state",
    "outcome": "poolwatch.outcome",
    "reason": "poolwatch.close.reason",
    "kind": "poolwatch.error.kind",
    "sqlstate_class": "poolwatch.error.sqlstate_class",
    "activity": "poolwatch.activity",
    "site": "poolwatch.call_site",
}
#: What a checked-out connection can be doing (libpq's transaction status, sampled).
CHECKOUT_ACTIVITIES: Final = ("query", "idle_in_transaction", "idle")
#: Labels of `poolwatch_pool_info`; their values come from the server connection.
INFO_LABELS: Final = ("host", "port", "dbname", "application_name", "version")


@dataclass(frozen=True)
class Metric:
    """One metric family of the contract."""

    #: short key the code uses (``"acquire"``)
    key: str
    #: Prometheus family name, without the ``_total`` a counter's sample gets
    prom: str
    type: MetricType
    #: Prometheus base unit ("" when the name carries none)
    unit: str
    help: str
    #: OpenTelemetry instrument name; None for families OTel does not get
    otel: str | None
    #: UCUM unit for OpenTelemetry
    otel_unit: str = "1"
    #: extra labels and the only values each may take (the ``pool`` label is implied)
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    buckets: tuple[float, ...] = ()
    merge: Merge = "sum"
    scope: Scope = "pool"
    #: exported only when the user asks (call sites: their label values come from code)
    opt_in: bool = False

    @property
    def sample_name(self) -> str:
        """The name of the (non-bucket) samples: counters end in ``_total``."""
        return self.prom + "_total" if self.type == "counter" else self.prom

    @property
    def label_names(self) -> tuple[str, ...]:
        if self.scope == "exporter":
            return tuple(self.labels)
        return (POOL_LABEL, *self.labels)


METRICS: Final[tuple[Metric, ...]] = (
    Metric(
        key="connections",
        prom="poolwatch_connections",
        type="gauge",
        unit="",
        help="Connections now, by state: idle, used (checked out) or opening.",
        otel="db.client.connection.count",
        otel_unit="{connection}",
        labels={"state": ("idle", "used", "opening")},
    ),
    Metric(
        key="connections_max",
        prom="poolwatch_connections_max",
        type="gauge",
        unit="",
        help="The pool's max_size: the most connections it may open.",
        otel="db.client.connection.max",
        otel_unit="{connection}",
    ),
    Metric(
        key="connections_min",
        prom="poolwatch_connections_min",
        type="gauge",
        unit="",
        help="The pool's min_size: the connections it keeps open even when idle.",
        otel="db.client.connection.idle.min",
        otel_unit="{connection}",
    ),
    Metric(
        key="pending_requests",
        prom="poolwatch_pending_requests",
        type="gauge",
        unit="",
        help="Requests waiting for a connection now.",
        otel="db.client.connection.pending_requests",
        otel_unit="{request}",
    ),
    Metric(
        key="saturation",
        prom="poolwatch_saturation_ratio",
        type="gauge",
        unit="ratio",
        help="Used connections divided by max_size, now (alert on the used-seconds rate).",
        otel="poolwatch.connection.saturation",
        merge="ratio",
    ),
    Metric(
        key="used_seconds",
        prom="poolwatch_used_connection_seconds",
        type="counter",
        unit="seconds",
        help="Integral of used connections over time: rate() / max is the mean saturation.",
        otel="poolwatch.connection.used_time",
        otel_unit="s",
    ),
    Metric(
        key="waits",
        prom="poolwatch_waits",
        type="counter",
        unit="",
        help="Requests that found no idle connection and had to queue.",
        otel="poolwatch.connection.waits",
        otel_unit="{request}",
    ),
    Metric(
        key="acquire",
        prom="poolwatch_acquire_seconds",
        type="histogram",
        unit="seconds",
        help="Time from a request to a connection handed out (or to the request failing).",
        otel="db.client.connection.wait_time",
        otel_unit="s",
        labels={"outcome": ACQUIRE_OUTCOMES},
        buckets=ACQUIRE_BUCKETS,
    ),
    Metric(
        key="use",
        prom="poolwatch_use_seconds",
        type="histogram",
        unit="seconds",
        help="Time a connection stays checked out before it is returned.",
        otel="db.client.connection.use_time",
        otel_unit="s",
        buckets=USE_BUCKETS,
    ),
    Metric(
        key="connect",
        prom="poolwatch_connect_seconds",
        type="histogram",
        unit="seconds",
        help="Time to open a new connection, by outcome.",
        otel="db.client.connection.create_time",
        otel_unit="s",
        labels={"outcome": CONNECT_OUTCOMES},
        buckets=CONNECT_BUCKETS,
    ),
    Metric(
        key="lifetime",
        prom="poolwatch_connection_lifetime_seconds",
        type="histogram",
        unit="seconds",
        help="Age of a connection when the pool closed it, by the reason it was closed.",
        otel="poolwatch.connection.lifetime",
        otel_unit="s",
        labels={"reason": CLOSE_REASONS},
        buckets=LIFETIME_BUCKETS,
    ),
    Metric(
        key="errors",
        prom="poolwatch_errors",
        type="counter",
        unit="",
        help="Error events by kind; connect errors also carry their SQLSTATE class.",
        otel="poolwatch.errors",
        otel_unit="{error}",
        labels={"kind": ERROR_KINDS, "sqlstate_class": SQLSTATE_CLASSES},
    ),
    Metric(
        key="leaked",
        prom="poolwatch_leaked_connections",
        type="gauge",
        unit="",
        help="Checkouts held longer than leak_timeout now (0 when leak detection is off).",
        otel="poolwatch.connection.leaked",
        otel_unit="{connection}",
    ),
    Metric(
        key="oldest_checkout",
        prom="poolwatch_oldest_checkout_seconds",
        type="gauge",
        unit="seconds",
        help="Age of the oldest checkout still held.",
        otel="poolwatch.connection.oldest_checkout",
        otel_unit="s",
        merge="max",
    ),
    Metric(
        key="oldest_wait",
        prom="poolwatch_oldest_wait_seconds",
        type="gauge",
        unit="seconds",
        help="Age of the oldest request still waiting: starvation shows here before a timeout.",
        otel="poolwatch.request.oldest_wait",
        otel_unit="s",
        merge="max",
    ),
    Metric(
        key="server_max_connections",
        prom="poolwatch_server_max_connections",
        type="gauge",
        unit="",
        help=(
            "The server's max_connections minus superuser_reserved_connections and"
            " reserved_connections (PostgreSQL 16+), read once."
        ),
        otel="poolwatch.server.max_connections",
        otel_unit="{connection}",
        merge="max",
    ),
    Metric(
        key="activity",
        prom="poolwatch_checkout_activity_seconds",
        type="counter",
        unit="seconds",
        help=(
            "Checked-out time by what the connection was doing: a query in flight, idle"
            " inside a transaction, or idle (sampled from libpq's transaction status)."
        ),
        otel="poolwatch.checkout.activity.time",
        otel_unit="s",
        labels={"activity": CHECKOUT_ACTIVITIES},
    ),
    Metric(
        key="callsite_hold",
        prom="poolwatch_callsite_hold_seconds",
        type="counter",
        unit="seconds",
        help="Checked-out time by the code that took the connection (opt-in, top sites only).",
        otel=None,
        labels={"site": ()},
        opt_in=True,
    ),
    Metric(
        key="callsite_idle_in_transaction",
        prom="poolwatch_callsite_idle_in_transaction_seconds",
        type="counter",
        unit="seconds",
        help="Checked-out time spent idle in a transaction, by call site (opt-in, top sites).",
        otel=None,
        labels={"site": ()},
        opt_in=True,
    ),
    Metric(
        key="callsite_checkouts",
        prom="poolwatch_callsite_checkouts",
        type="counter",
        unit="",
        help="Checkouts by call site, those that lived at least one sample (opt-in, top sites).",
        otel=None,
        labels={"site": ()},
        opt_in=True,
    ),
    Metric(
        key="callsite_waits_caused",
        prom="poolwatch_callsite_waits_caused",
        type="counter",
        unit="",
        help="Requests that queued while the call site held a connection (opt-in, top sites).",
        otel=None,
        labels={"site": ()},
        opt_in=True,
    ),
    Metric(
        key="pool_info",
        prom="poolwatch_pool",
        type="info",
        unit="",
        help=(
            "Always 1: the server the pool talks to (host, port, dbname, application_name;"
            " version is the PostgreSQL server version), for joins with postgres_exporter."
        ),
        otel=None,
        labels={name: () for name in INFO_LABELS},
        merge="first",
    ),
)

#: The exporter's own series (no ``pool`` label), shown in multiprocess mode.
EXPORTER_METRICS: Final[tuple[Metric, ...]] = (
    Metric(
        key="state_files_rejected",
        prom="poolwatch_exporter_state_files_rejected",
        type="counter",
        unit="",
        help=(
            "Multiprocess state files skipped because they failed validation (each version"
            " of a file counted once; the log says why)."
        ),
        otel=None,
        scope="exporter",
    ),
)

BY_KEY: Final = {m.key: m for m in METRICS}
#: Semantic-convention instruments fed from another row (OTel name -> source row key).
OTEL_DERIVED: Final = {
    # semconv's idle.max: at most max_size connections can sit idle in this pool
    "db.client.connection.idle.max": "connections_max",
    # semconv's timeouts counter: the acquire histogram's timeout outcome
    "db.client.connection.timeouts": "acquire",
}


def info_sample_name(metric: Metric) -> str:
    """`poolwatch_pool_info`: OpenMetrics adds the ``_info`` suffix to info families."""
    return metric.prom + "_info"
