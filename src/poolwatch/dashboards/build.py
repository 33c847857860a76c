"""The Grafana dashboard, built with grafana-foundation-sdk (Grafana 11.6 models).

``python -m poolwatch.dashboards`` (or ``poolwatch dashboards``) writes
``dashboards/poolwatch.json``; a test fails when the committed file drifts. Series
names come from the metric table, so a renamed metric breaks the build, not a panel.
Panel titles are the ones the runbooks (docs/runbooks.md) refer to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import gauge, heatmap, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from ..alerts.rules import AlertSettings, pool_server
from ..metrics.names import BY_KEY

UID = "poolwatch-pools"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
#: the selector every per-pool query carries
SEL = (
    'cluster=~"$cluster", namespace=~"$namespace", job=~"$job", instance=~"$instance",'
    ' pool=~"$pool"'
)
#: Prometheus names, from the table
M = {key: metric.prom for key, metric in BY_KEY.items()}
USED_SECONDS = BY_KEY["used_seconds"].sample_name
WAITS = BY_KEY["waits"].sample_name
ERRORS = BY_KEY["errors"].sample_name
ACTIVITY = BY_KEY["activity"].sample_name
INFO = BY_KEY["pool_info"].prom + "_info"
RATE = "$__rate_interval"
SATURATION_MARK = 0.8


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    heatmap: bool = False


def _target(q: Query, ref: str) -> Any:
    target = prometheus.Dataquery().expr(q.expr).ref_id(ref).datasource(DATASOURCE)
    if q.heatmap:
        return target.format(PromQueryFormat.HEATMAP).legend_format("{{le}}")
    return target.legend_format(q.legend or "__auto")


def _with_queries(panel: Any, queries: list[Query]) -> Any:
    for i, q in enumerate(queries):
        panel.with_target(_target(q, chr(ord("A") + i)))
    return panel


def _thresholds(mark: float) -> Any:
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps(
            [
                model.Threshold(value=None, color="green"),
                model.Threshold(value=mark, color="orange"),
                model.Threshold(value=0.95, color="red"),
            ]
        )
    )


def _series(title: str, description: str, queries: list[Query], unit: str, width: int = 12) -> Any:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(width)
        .fill_opacity(10)
        .legend(common_b.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM).show_legend(True))
    )  # fmt: skip
    _with_queries(panel, queries)
    return panel


def _heatmap(title: str, description: str, query: Query, unit: str) -> Any:
    panel = (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .height(8)
        .span(12)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit(unit))
        .cell_values(heatmap.CellValues().unit("short"))
        .color(heatmap.HeatmapColorOptions().scheme("Oranges").mode(heatmap_model.HeatmapColorMode.SCHEME))
        .show_legend()
    )  # fmt: skip
    _with_queries(panel, [query])
    return panel


def quantile(q: str, metric: str, extra: str = "") -> str:
    return (
        f"histogram_quantile({q}, sum by (pool, le)"
        f" (rate({metric}_bucket{{{SEL}{extra}}}[{RATE}])))"
    )


def panels() -> list[Any]:
    used = f"rate({USED_SECONDS}{{{SEL}}}[{RATE}])"
    # "> 0": an unbounded null pool (max_size=0) has no saturation, not +Inf
    saturation = f"sum by (pool) ({used}) / (sum by (pool) ({M['connections_max']}{{{SEL}}}) > 0)"
    acquire, use, connect = M["acquire"], M["use"], M["connect"]
    lifetime = M["lifetime"]
    # The fleet rule's join: every target label kept, HA replicas counted once.
    settings = AlertSettings()
    fleet_sum = f"sum by (host, port) ({pool_server(settings, M['connections_max'])})"
    fleet_max = f"max by (host, port) ({pool_server(settings, M['server_max_connections'])})"
    by_instance = (
        f"sum by (instance, pool) ({used})"
        f" / (sum by (instance, pool) ({M['connections_max']}{{{SEL}}}) > 0)"
    )
    satur_gauge = (
        gauge.Panel()
        .title("Saturation now")
        .description(
            "Mean share of max_size in use over the last rate interval, from the"
            " used-seconds counter (nothing between scrapes is missed). Alert: 80%."
        )
        .datasource(DATASOURCE)
        .unit("percentunit")
        .min(0)
        .max(1)
        .thresholds(_thresholds(SATURATION_MARK))
        .show_threshold_markers(True)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]))
        .height(8)
        .span(6)
    )
    _with_queries(satur_gauge, [Query(saturation, "{{pool}}")])
    satur_series = _series(
        "Saturation",
        "Mean used / max per pool. The dashed line is the PoolSaturationHigh threshold.",
        [Query(saturation, "{{pool}}")],
        "percentunit",
        width=18,
    )
    satur_series.thresholds(_thresholds(SATURATION_MARK)).thresholds_style(
        common_b.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
    ).min(0).max(1)
    return [
        satur_gauge,
        satur_series,
        _series(
            "Saturation by instance",
            "Mean used / max of each instance's pool: one bad pod stands out here while the"
            " pool's average above still looks fine.",
            [Query(by_instance, "{{pool}} {{instance}}")],
            "percentunit",
        ),
        _series(
            "Waits by instance",
            "Requests per second that had to queue, and the oldest waiting request, per instance.",
            [
                Query(
                    f"sum by (instance, pool) (rate({WAITS}{{{SEL}}}[{RATE}]))",
                    "{{pool}} {{instance}} waits/s",
                ),
                Query(
                    f"max by (instance, pool) ({M['oldest_wait']}{{{SEL}}})",
                    "{{pool}} {{instance}} oldest wait (s)",
                ),
            ],
            "short",
        ),
        _series(
            "Connections by state",
            "Idle, used and opening connections, stacked, against max_size.",
            [
                Query(f"sum by (pool, state) ({M['connections']}{{{SEL}}})", "{{pool}} {{state}}"),
                Query(f"sum by (pool) ({M['connections_max']}{{{SEL}}})", "{{pool}} max"),
            ],
            "short",
        ),
        _series(
            "Pending requests and waits",
            "Requests waiting now, requests that had to wait (per second), and all"
            " requests (per second): waits with a flat request rate mean slow queries or"
            " a small pool; waits with a rising request rate mean a spike.",
            [
                Query(f"sum by (pool) ({M['pending_requests']}{{{SEL}}})", "{{pool}} pending"),
                Query(f"sum by (pool) (rate({WAITS}{{{SEL}}}[{RATE}]))", "{{pool}} waits/s"),
                Query(
                    f"sum by (pool) (rate({acquire}_count{{{SEL}}}[{RATE}]))",
                    "{{pool}} requests/s",
                ),
                Query(f"max by (pool) ({M['oldest_wait']}{{{SEL}}})", "{{pool}} oldest wait (s)"),
            ],
            "short",
        ),
        _heatmap(
            "Wait time (heatmap)",
            "Time from request to connection, every outcome, from 50 µs up.",
            Query(f"sum by (le) (increase({acquire}_bucket{{{SEL}}}[{RATE}]))", heatmap=True),
            "s",
        ),
        _series(
            "Wait time p50/p95/p99",
            "Quantiles of the time to get a connection (timeouts included).",
            [
                Query(quantile(q, acquire), f"{{{{pool}}}} p{q[2:]}")
                for q in ("0.50", "0.95", "0.99")
            ],
            "s",
        ),
        _series(
            "Errors by kind",
            "Error events per second, by kind (connect errors by SQLSTATE class).",
            [
                Query(
                    f"sum by (pool, kind, sqlstate_class) (rate({ERRORS}{{{SEL}}}[{RATE}]))",
                    "{{pool}} {{kind}} {{sqlstate_class}}",
                )
            ],
            "reqps",
        ),
        _series(
            "Timeouts",
            "Requests that gave up waiting for a connection (per interval).",
            [
                Query(
                    f'sum by (pool) (increase({ERRORS}{{{SEL}, kind="timeout"}}[{RATE}]))',
                    "{{pool}} timeouts",
                )
            ],
            "short",
        ),
        _series(
            "Connect time and churn",
            "p95 time to open a connection, and connections opened and closed per second.",
            [
                Query(quantile("0.95", connect, ', outcome="ok"'), "{{pool}} connect p95 (s)"),
                Query(
                    f"sum by (pool, outcome) (rate({connect}_count{{{SEL}}}[{RATE}]))",
                    "{{pool}} connects/s {{outcome}}",
                ),
                Query(
                    f"sum by (pool) (rate({lifetime}_count{{{SEL}}}[{RATE}]))",
                    "{{pool}} closes/s",
                ),
            ],
            "short",
        ),
        _heatmap(
            "Connection lifetime (heatmap)",
            "Age of connections when closed, 1 s to 24 h.",
            Query(f"sum by (le) (increase({lifetime}_bucket{{{SEL}}}[{RATE}]))", heatmap=True),
            "s",
        ),
        _series(
            "Closes by reason",
            "Connections closed per second, by why: expiry, failure, shrink, drain, close.",
            [
                Query(
                    f"sum by (pool, reason) (rate({lifetime}_count{{{SEL}}}[{RATE}]))",
                    "{{pool}} {{reason}}",
                )
            ],
            "short",
        ),
        _series(
            "Hold time p95 and leaks",
            "p95 time a connection stays checked out, checkouts past leak_timeout, and"
            " the age of the oldest checkout.",
            [
                Query(quantile("0.95", use), "{{pool}} hold p95 (s)"),
                Query(f"sum by (pool) ({M['leaked']}{{{SEL}}})", "{{pool}} leaked"),
                Query(
                    f"max by (pool) ({M['oldest_checkout']}{{{SEL}}})",
                    "{{pool}} oldest checkout (s)",
                ),
            ],
            "short",
        ),
        _series(
            "What held connections were doing",
            "Checked-out connections by activity, on average: a query in flight, idle inside"
            " a transaction (held while the code does something else: an HTTP call, a"
            " sleep), or idle outside one. Idle in transaction while requests wait is the"
            " pool held hostage, not too small: PoolHeldIdleInTransaction.",
            [
                Query(
                    f"sum by (pool, activity) (rate({ACTIVITY}{{{SEL}}}[{RATE}]))",
                    "{{pool}} {{activity}}",
                )
            ],
            "short",
        ),
        _series(
            "Fleet budget",
            "Σ max_size of every pool on each server, all jobs and instances, against the"
            " connections the server allows (max_connections minus the superuser and"
            " PostgreSQL 16 reserved connections). HA replicas count once."
            " PoolFleetOverServerBudget fires above 80%.",
            [
                Query(fleet_sum, "{{host}}:{{port}} Σ max_size"),
                Query(fleet_max, "{{host}}:{{port}} server max_connections"),
            ],
            "short",
            width=24,
        ),
    ]


def _query_var(name: str, label: str, query: str) -> Any:
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def fleet_variables() -> list[Any]:
    """Data source, cluster, namespace and job: what both dashboards filter by."""
    return [
        dash.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        _query_var("cluster", "Cluster", f"label_values({INFO}, cluster)"),
        _query_var(
            "namespace", "Namespace", f'label_values({INFO}{{cluster=~"$cluster"}}, namespace)'
        ),
        _query_var(
            "job",
            "Job",
            f'label_values({INFO}{{cluster=~"$cluster", namespace=~"$namespace"}}, job)',
        ),
    ]


def _variables() -> list[Any]:
    """The fleet's variables, then instance and pool: the per-pool board narrows further."""
    return [
        *fleet_variables(),
        _query_var("instance", "Instance", f'label_values({INFO}{{job=~"$job"}}, instance)'),
        _query_var(
            "pool", "Pool", f'label_values({INFO}{{job=~"$job", instance=~"$instance"}}, pool)'
        ),
    ]


def build_dashboard() -> Any:
    board = (
        dash.Dashboard("poolwatch: connection pools")
        .uid(UID)
        .description("Saturation, waits, errors, lifetime and hold time of poolwatch pools.")
        .tags(["poolwatch", "postgresql"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .annotation(
            dash.AnnotationQuery()
            .name("Firing pool alerts")
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color("red")
            .expr('ALERTS{alertstate="firing", alertname=~"Pool.*"}')
        )
    )
    for variable in _variables():
        board.with_variable(variable)
    for panel in panels():
        board.with_panel(panel)
    return board.build()


def dashboard_json() -> str:
    text: str = JSONEncoder(sort_keys=True, indent=2).encode(build_dashboard())
    return text + "\n"


def dashboard_files() -> dict[str, str]:
    """Every dashboard, by file name under dashboards/."""
    from .fleet import fleet_dashboard_json

    return {"poolwatch.json": dashboard_json(), "poolwatch-fleet.json": fleet_dashboard_json()}
