"""The fleet overview dashboard: every pool of every instance and cluster in one table.

Rows are pools (cluster, namespace, job, pool) worst first; each links to the per-pool
dashboard with its variables set. Series from HA replicas (`prometheus_replica`,
`replica`) count once, so the board reads right on a global Prometheus, Thanos or Mimir.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, table
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from ..alerts.rules import AlertSettings, pool_server
from .build import (
    DATASOURCE,
    ERRORS,
    RATE,
    UID,
    USED_SECONDS,
    WAITS,
    M,
    Query,
    _series,
    fleet_variables,
)

FLEET_UID = "poolwatch-fleet"
#: the selector of every fleet query
FSEL = 'cluster=~"$cluster", namespace=~"$namespace", job=~"$job"'
#: one table row per pool of one job in one place
ROW = "cluster, namespace, job, pool"
REPLICAS = "prometheus_replica, replica"
#: column title, PromQL (instant), unit; the table sorts by the first column, worst first
COLUMNS: list[tuple[str, str, str]] = [
    (
        "Saturation",
        f"sum by ({ROW}) (max without ({REPLICAS}) (rate({USED_SECONDS}{{{FSEL}}}[{RATE}])))"
        f" / (sum by ({ROW}) (max without ({REPLICAS}) ({M['connections_max']}{{{FSEL}}})) > 0)",
        "percentunit",
    ),
    (
        "Wait p95",
        f"histogram_quantile(0.95, sum by ({ROW}, le) (max without ({REPLICAS})"
        f" (rate({M['acquire']}_bucket{{{FSEL}}}[{RATE}]))))",
        "s",
    ),
    (
        "Waits/s",
        f"sum by ({ROW}) (max without ({REPLICAS}) (rate({WAITS}{{{FSEL}}}[{RATE}])))",
        "reqps",
    ),
    (
        "Errors/s",
        f"sum by ({ROW}) (max without ({REPLICAS}) (rate({ERRORS}{{{FSEL}}}[{RATE}])))",
        "reqps",
    ),
    (
        "Instances",
        f"count by ({ROW}) (max without ({REPLICAS}) ({M['connections_max']}{{{FSEL}}}))",
        "none",
    ),
    (
        "Σ max_size",
        f"sum by ({ROW}) (max without ({REPLICAS}) ({M['connections_max']}{{{FSEL}}}))",
        "none",
    ),
    (
        "Server budget",
        f"max by ({ROW}) (max without ({REPLICAS}) ({M['server_max_connections']}{{{FSEL}}}))",
        "none",
    ),
]
#: the per-pool dashboard, its variables taken from the row
POOL_LINK = (
    f"/d/{UID}/poolwatch-connection-pools?${{datasource:queryparam}}"
    "&var-cluster=${__data.fields.cluster}&var-namespace=${__data.fields.namespace}"
    "&var-job=${__data.fields.job}&var-pool=${__data.fields.pool}&${__url_time_range}"
)


def _pools_table() -> Any:
    panel = (
        table.Panel()
        .title("Pools across the fleet")
        .description(
            "Every pool of every job, cluster and namespace, worst saturation first."
            " Saturation and wait p95 are over all of a pool's instances; Σ max_size is what"
            " they may open together, against the server budget each reports. Click a pool"
            " for its dashboard."
        )
        .datasource(DATASOURCE)
        .height(12)
        .span(24)
        .sort_by([common_b.TableSortByFieldState().display_name("Saturation").desc(True)])
        .with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        f"Value #{chr(ord('A') + i)}": title
                        for i, (title, _, _) in enumerate(COLUMNS)
                    },
                },
            )
        )
        .override_by_name(
            "pool",
            [
                model.DynamicConfigValue(
                    id_val="links",
                    value=[{"title": "Open pool ${__data.fields.pool}", "url": POOL_LINK}],
                )
            ],
        )
    )
    for i, (title, expr, unit) in enumerate(COLUMNS):
        panel.with_target(
            prometheus.Dataquery()
            .expr(expr)
            .ref_id(chr(ord("A") + i))
            .datasource(DATASOURCE)
            .instant()
            .format(PromQueryFormat.TABLE)
        )
        panel.override_by_name(title, [model.DynamicConfigValue(id_val="unit", value=unit)])
    return panel


def fleet_panels() -> list[Any]:
    settings = AlertSettings()
    sum_max = f"sum by (host, port) ({pool_server(settings, M['connections_max'])})"
    budget = f"max by (host, port) ({pool_server(settings, M['server_max_connections'])})"
    worst = (
        f"topk(10, max without ({REPLICAS}) (rate({USED_SECONDS}{{{FSEL}}}[{RATE}])"
        f" / ({M['connections_max']}{{{FSEL}}} > 0)))"
    )
    return [
        _pools_table(),
        _series(
            "Fleet budget per server",
            "Σ max_size of every pool on each server, every instance of every job, against"
            " the connections the server allows. PoolFleetOverServerBudget fires above 80%.",
            [
                Query(sum_max, "{{host}}:{{port}} Σ max_size"),
                Query(budget, "{{host}}:{{port}} server budget"),
            ],
            "short",
        ),
        _series(
            "Most saturated instances",
            "The ten instance pools with the highest mean saturation: one bad pod shows"
            " here even when its pool's fleet average looks fine.",
            [Query(worst, "{{cluster}} {{instance}} {{pool}}")],
            "percentunit",
        ),
    ]


def build_fleet_dashboard() -> Any:
    board = (
        dash.Dashboard("poolwatch: fleet overview")
        .uid(FLEET_UID)
        .description("Every poolwatch pool across instances, jobs and clusters, worst first.")
        .tags(["poolwatch", "postgresql"])
        .refresh("1m")
        .time("now-1h", "now")
        .timezone("browser")
    )
    for variable in fleet_variables():
        board.with_variable(variable)
    for panel in fleet_panels():
        board.with_panel(panel)
    return board.build()


def fleet_dashboard_json() -> str:
    text: str = JSONEncoder(sort_keys=True, indent=2).encode(build_fleet_dashboard())
    return text + "\n"
