"""Prometheus recording and alerting rules, generated from the metric table.

`build_rules(AlertSettings())` returns the rule groups as plain data;
`render_rules` writes them as YAML. The committed ``alerts/poolwatch.rules.yml``
is the default output (a test fails on drift); ``poolwatch alerts`` regenerates it
with other thresholds, windows, ``for:`` durations or severities.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..metrics.names import BY_KEY

# Series names, from the table: a renamed metric breaks the generator, not production.
USED_SECONDS = BY_KEY["used_seconds"].sample_name
CONNECTIONS_MAX = BY_KEY["connections_max"].prom
CONNECTIONS = BY_KEY["connections"].prom
WAITS = BY_KEY["waits"].sample_name
ERRORS = BY_KEY["errors"].sample_name
ACQUIRE = BY_KEY["acquire"].prom
CONNECT = BY_KEY["connect"].prom
LIFETIME = BY_KEY["lifetime"].prom
LEAKED = BY_KEY["leaked"].prom
OLDEST_WAIT = BY_KEY["oldest_wait"].prom
ACTIVITY = BY_KEY["activity"].sample_name
SERVER_MAX = BY_KEY["server_max_connections"].prom
POOL_INFO = BY_KEY["pool_info"].prom + "_info"

#: The labels of the pool-info series that describe the server, not the target.
INFO_LABELS = ", ".join(BY_KEY["pool_info"].labels)

#: Recording rule names (the window is a setting; the names do not carry it).
SATURATION = "poolwatch:saturation:mean_ratio"
WAIT_QUANTILE = "poolwatch:acquire_seconds:p{q}"
ERROR_RATE = "poolwatch:errors:rate"
CONNECT_RATE = "poolwatch:connects:rate"
WAIT_RATE = "poolwatch:waits:rate"
FLEET_RATIO = "poolwatch:fleet_budget:ratio"
TARGET_POOLS = "poolwatch:target_pools:known"

#: Closes that end a connection before its time (close, drain and shrink are deliberate).
CHURN_REASONS = "max_lifetime|max_idle|broken|check_failed|reset_failed"


@dataclass(frozen=True)
class AlertSettings:
    """Every tunable of the generated rules. Durations are PromQL durations ("5m")."""

    #: the window of rates, increases and quantiles (SPEC: 5m)
    window: str = "5m"
    #: evaluation interval of the rule groups
    interval: str = "30s"
    #: labels every aggregation drops besides the metric's own (outcome, le...), e.g.
    #: "pod" to see a pool per deployment; every other target label is kept
    drop_labels: str = ""
    #: labels that tell HA Prometheus replicas apart; fleet rules collapse them
    replica_labels: str = "prometheus_replica, replica"
    #: labels that name one PostgreSQL server in the fleet rules; add "cluster" when
    #: clusters reuse server host names
    server_labels: str = "host, port"
    #: labels that name one job for PoolwatchJobAbsent; add "cluster" or "namespace"
    job_labels: str = "job"
    saturation_threshold: float = 0.80
    saturation_for: str = "5m"
    saturation_severity: str = "warning"
    #: the critical tier of PoolSaturationHigh
    saturation_critical_threshold: float = 0.95
    saturation_critical_for: str = "5m"
    saturation_critical_severity: str = "critical"
    #: PoolWaitNonZero fires when more than this many requests queued in the window
    #: (0, the default: any wait at all); raise it for large fleets
    wait_count_threshold: float = 0.0
    wait_for: str = "1m"
    wait_severity: str = "warning"
    #: PoolOldestWaitHigh: a request has been waiting this long (starvation before a timeout)
    oldest_wait_threshold_seconds: float = 5.0
    oldest_wait_for: str = "1m"
    oldest_wait_severity: str = "warning"
    timeout_for: str = "0s"
    timeout_severity: str = "critical"
    connect_errors_for: str = "2m"
    connect_errors_severity: str = "warning"
    #: PoolConnectErrors turns critical when no connection is alive at all
    connect_down_for: str = "1m"
    connect_down_severity: str = "critical"
    leak_for: str = "1m"
    leak_severity: str = "warning"
    #: PoolHeldIdleInTransaction: over this window, more than this share of the time
    #: connections were checked out they sat idle inside a transaction, while requests queued
    held_idle_window: str = "10m"
    held_idle_share: float = 0.5
    held_idle_for: str = "5m"
    held_idle_severity: str = "warning"
    #: churn: connections closed before their time live less than this on average ...
    churn_window: str = "15m"
    churn_min_mean_lifetime_seconds: float = 60.0
    #: ... and at least this many of them close per minute
    churn_min_closes_per_minute: float = 1.0
    churn_for: str = "10m"
    churn_severity: str = "warning"
    fleet_threshold: float = 0.80
    fleet_for: str = "10m"
    fleet_severity: str = "warning"
    target_down_for: str = "1m"
    target_down_severity: str = "critical"
    #: how long a target that once exported pools counts as a poolwatch target after it
    #: leaves service discovery (while discovered, it counts for as long as it stays)
    target_memory: str = "1h"
    job_absent_for: str = "5m"
    job_absent_severity: str = "critical"
    runbook_base: str = "https://github.com/poolwatch/poolwatch/blob/main/docs/runbooks.md"
    extra_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "extra_labels"]


ALERT_NAMES = (
    "PoolSaturationHigh",
    "PoolWaitNonZero",
    "PoolOldestWaitHigh",
    "PoolAcquireTimeouts",
    "PoolConnectErrors",
    "PoolConnectionLeak",
    "PoolHeldIdleInTransaction",
    "PoolConnectionChurn",
    "PoolFleetOverServerBudget",
    "PoolwatchTargetDown",
    "PoolwatchJobAbsent",
)


def _labels(*groups: str) -> str:
    """A comma-separated label list from comma-separated groups, empty ones skipped."""
    names = [n.strip() for g in groups for n in g.split(",") if n.strip()]
    return ", ".join(dict.fromkeys(names))


def _dedup(s: AlertSettings, series: str) -> str:
    """*series* with HA replicas collapsed: both replicas scraped the same value."""
    return f"max without ({_labels(s.replica_labels)}) ({series})"


def pool_server(s: AlertSettings, series: str) -> str:
    """A per-pool *series*, deduplicated, with the server labels of its pool joined on.

    The join ignores only the info labels, so every target label (cluster, namespace...)
    takes part: two clusters whose pods share an IP:port stay apart.
    """
    info_part = [n for n in _labels(s.server_labels).split(", ") if n in INFO_LABELS]
    return (
        f"{_dedup(s, series)}\n  * ignoring ({INFO_LABELS}) group_left ({', '.join(info_part)})"
        f"\n  {_dedup(s, POOL_INFO)}"
    )


def recording_rules(s: AlertSettings) -> list[dict[str, Any]]:
    w = s.window
    drop = s.drop_labels
    rules = [
        {
            "record": SATURATION,
            # The exact mean of used/max over the window, from the used-seconds integral:
            # a spike between two scrapes counts in full. An unbounded null pool
            # (max_size=0) has no ratio: dividing by 0 would be a +Inf alert.
            "expr": f"rate({USED_SECONDS}[{w}]) / ({CONNECTIONS_MAX} > 0)",
        },
        {"record": WAIT_RATE, "expr": f"rate({WAITS}[{w}])"},
    ]
    for q in ("50", "95", "99"):
        rules.append(
            {
                "record": WAIT_QUANTILE.format(q=q),
                # Every outcome, failures too: a request that timed out waited longest.
                "expr": f"histogram_quantile(0.{q}, sum without ({_labels('outcome', drop)})"
                f" (rate({ACQUIRE}_bucket[{w}])))",
            }
        )
    rules += [
        {
            "record": ERROR_RATE,
            "expr": f"sum without ({_labels('sqlstate_class', drop)}) (rate({ERRORS}[{w}]))",
        },
        {
            "record": CONNECT_RATE,
            "expr": f"sum without ({_labels(drop)}) (rate({CONNECT}_count[{w}]))",
        },
        {
            "record": TARGET_POOLS,
            # The pools each target exported within target_memory, remembered (the rule
            # reads its own last value) for as long as the target stays discovered and
            # down: an outage longer than target_memory must not resolve
            # PoolwatchTargetDown. While the target answers, pools it stopped exporting
            # are forgotten after target_memory as before.
            "expr": f"max without ({_labels(INFO_LABELS)})"
            f" (max_over_time({POOL_INFO}[{s.target_memory}]))\n"
            f"or ({TARGET_POOLS} and ignoring (pool) (up == 0))",
        },
    ]
    return rules


def _alert(
    s: AlertSettings,
    name: str,
    expr: str,
    for_: str,
    severity: str,
    summary: str,
    description: str,
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_ not in ("0s", "0m", "0"):
        rule["for"] = for_
    rule["labels"] = {"severity": severity, **s.extra_labels}
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": f"{s.runbook_base}#{name.lower()}",
    }
    return rule


def _saturation(s: AlertSettings, threshold: float, for_: str, severity: str) -> dict[str, Any]:
    where = "pool {{ $labels.pool }} on {{ $labels.instance }}"
    return _alert(
        s,
        "PoolSaturationHigh",
        f"{SATURATION} > {threshold}",
        for_,
        severity,
        "Pool {{ $labels.pool }} is {{ $value | humanizePercentage }} saturated",
        f"Over the last {s.window}, {where} used {{{{ $value | humanizePercentage }}}} of its"
        f" connections on average (threshold {threshold:.0%}). Requests"
        + (" will soon queue for a connection." if threshold < 0.9 else " queue already."),
    )


def _held_idle(s: AlertSettings) -> dict[str, Any]:
    """Connections held idle in a transaction while other requests wait (issue 16)."""
    w = s.held_idle_window
    where = "pool {{ $labels.pool }} on {{ $labels.instance }}"
    by_pool = f"sum without ({_labels('activity', s.drop_labels)})"
    waits = f"increase({WAITS}[{w}])"
    if _labels(s.drop_labels):  # the two sides of `and` must carry the same labels
        waits = f"sum without ({_labels(s.drop_labels)}) ({waits})"
    return _alert(
        s,
        "PoolHeldIdleInTransaction",
        f'(\n  {by_pool} (rate({ACTIVITY}{{activity="idle_in_transaction"}}[{w}]))\n'
        f"  / {by_pool} (rate({ACTIVITY}[{w}]))\n"
        f") > {s.held_idle_share:g}\n"
        f"and ({waits} > 0)",
        s.held_idle_for,
        s.held_idle_severity,
        "Pool {{ $labels.pool }} connections sit idle in transactions while requests wait",
        f"Over the last {w}, connections of {where} spent {{{{ $value | humanizePercentage }}}}"
        f" of their checked-out time idle inside a transaction (threshold"
        f" {s.held_idle_share:.0%}) while requests queued: code holds transactions open"
        " across other work. A bigger pool will not help; the call sites on /pools say who.",
    )


def alerting_rules(s: AlertSettings) -> list[dict[str, Any]]:
    w = s.window
    drop = s.drop_labels
    where = "pool {{ $labels.pool }} on {{ $labels.instance }}"
    connect_errors = (
        f"sum without ({_labels('kind, sqlstate_class', drop)})"
        f' (increase({ERRORS}{{kind="connect"}}[{w}])) > 0'
    )
    churn_w = s.churn_window
    churn_sel = f'{{reason=~"{CHURN_REASONS}"}}'
    churn_sum = f"sum without ({_labels('reason', drop)})"
    return [
        _saturation(s, s.saturation_threshold, s.saturation_for, s.saturation_severity),
        _saturation(
            s,
            s.saturation_critical_threshold,
            s.saturation_critical_for,
            s.saturation_critical_severity,
        ),
        _alert(
            s,
            "PoolWaitNonZero",
            f"increase({WAITS}[{w}]) > {s.wait_count_threshold:g}",
            s.wait_for,
            s.wait_severity,
            "Requests are waiting for a connection in pool {{ $labels.pool }}",
            f"About {{{{ $value | humanize }}}} requests of {where} found no idle connection"
            f" and queued in the last {w}: the pool is too small, queries are too slow, or"
            " traffic spiked.",
        ),
        _alert(
            s,
            "PoolOldestWaitHigh",
            f"{OLDEST_WAIT} > {s.oldest_wait_threshold_seconds:g}",
            s.oldest_wait_for,
            s.oldest_wait_severity,
            "A request has waited {{ $value | humanizeDuration }} for a connection"
            " in pool {{ $labels.pool }}",
            f"The oldest request waiting in {where} has waited {{{{ $value | humanizeDuration }}}}"
            f" (threshold {s.oldest_wait_threshold_seconds:g}s): the pool is starved and"
            " requests will time out next.",
        ),
        _alert(
            s,
            "PoolAcquireTimeouts",
            f'increase({ERRORS}{{kind="timeout"}}[{w}]) > 0',
            s.timeout_for,
            s.timeout_severity,
            "Requests timed out waiting for a connection in pool {{ $labels.pool }}",
            f"About {{{{ $value | humanize }}}} requests of {where} gave up waiting for a"
            f" connection in the last {w}: users are seeing errors.",
        ),
        _alert(
            s,
            "PoolConnectErrors",
            connect_errors,
            s.connect_errors_for,
            s.connect_errors_severity,
            "Pool {{ $labels.pool }} fails to open connections",
            f"About {{{{ $value | humanize }}}} connection attempts of {where} failed in the"
            f" last {w}.",
        ),
        _alert(
            s,
            "PoolConnectErrors",
            f"({connect_errors})\nand"
            f" (sum without ({_labels('state', drop)})"
            f' ({CONNECTIONS}{{state=~"idle|used"}}) == 0)',
            s.connect_down_for,
            s.connect_down_severity,
            "Pool {{ $labels.pool }} has no connection at all and cannot open one",
            f"Pool {{{{ $labels.pool }}}} on {{{{ $labels.instance }}}} holds no connection and"
            f" about {{{{ $value | humanize }}}} connection"
            f" attempts failed in the last {w}: every request of it fails.",
        ),
        _alert(
            s,
            "PoolConnectionLeak",
            f"{LEAKED} > 0",
            s.leak_for,
            s.leak_severity,
            "Pool {{ $labels.pool }} has {{ $value }} connections held past leak_timeout",
            f"{{{{ $value }}}} checkouts of {where} have been held longer than leak_timeout;"
            " the pool log shows where each was taken.",
        ),
        _held_idle(s),
        _alert(
            s,
            "PoolConnectionChurn",
            f"(\n  {churn_sum} (rate({LIFETIME}_sum{churn_sel}[{churn_w}]))\n"
            f"  / {churn_sum} (rate({LIFETIME}_count{churn_sel}[{churn_w}]))\n"
            f") < {s.churn_min_mean_lifetime_seconds:g}\n"
            f"and ({churn_sum} (rate({LIFETIME}_count{churn_sel}[{churn_w}])) * 60"
            f" >= {s.churn_min_closes_per_minute:g})",
            s.churn_for,
            s.churn_severity,
            "Connections of pool {{ $labels.pool }} live only {{ $value | humanizeDuration }}",
            f"Connections of {where} closed for expiry or failure lived"
            f" {{{{ $value | humanizeDuration }}}} on average over {churn_w}: a connection"
            " storm, a broken network, or max_lifetime/max_idle set far too low.",
        ),
        _alert(
            s,
            "PoolwatchTargetDown",
            # Pools of targets that are still discovered (their `up` exists) and fail to
            # answer. A target removed by a deploy or a scale-down has no `up` any more.
            f"{TARGET_POOLS} and ignoring (pool) (up == 0)",
            s.target_down_for,
            s.target_down_severity,
            "Cannot scrape pool {{ $labels.pool }} on {{ $labels.instance }}",
            "Prometheus still discovers {{ $labels.instance }} (job {{ $labels.job }}),"
            " which exports pool {{ $labels.pool }}, but cannot scrape it: the process"
            " is down or hung, or its exporter is.",
        ),
        _alert(
            s,
            "PoolwatchJobAbsent",
            # A job that exported pools within target_memory has no target left at all.
            f"count by ({_labels(s.job_labels)})"
            f" (max_over_time({POOL_INFO}[{s.target_memory}]))\n"
            f"unless on ({_labels(s.job_labels)}) count by ({_labels(s.job_labels)}) (up)",
            s.job_absent_for,
            s.job_absent_severity,
            "Job {{ $labels.job }} exporting poolwatch pools has disappeared",
            "No target of job {{ $labels.job }} is discovered any more, though it exported"
            f" {{{{ $value }}}} pools in the last {s.target_memory}: the whole service is gone"
            " or Prometheus lost its service discovery.",
        ),
    ]


def fleet_rules(s: AlertSettings) -> list[dict[str, Any]]:
    """The rules that need every instance's series: for the global ruler."""
    server = _labels(s.server_labels)
    return [
        {
            "record": FLEET_RATIO,
            # Σ max_size of every pool on one server, over what the server allows. Fleet
            # data: evaluate on the global ruler; HA replicas count once.
            "expr": (
                f"sum by ({server}) (\n  {pool_server(s, CONNECTIONS_MAX)}\n)\n"
                f"/ max by ({server}) (\n  {pool_server(s, SERVER_MAX)}\n)"
            ),
        },
        _alert(
            s,
            "PoolFleetOverServerBudget",
            # One alert per server, however many pools and instances use it.
            f"{FLEET_RATIO} > {s.fleet_threshold}",
            s.fleet_for,
            s.fleet_severity,
            "Pools on {{ $labels.host }}:{{ $labels.port }} may open"
            " {{ $value | humanizePercentage }} of the server's connections",
            "The max_size of every pool using {{ $labels.host }}:{{ $labels.port }}, across"
            " every instance, adds up to {{ $value | humanizePercentage }} of the connections"
            f" the server allows (threshold {s.fleet_threshold:.0%}). Under load the server"
            " will refuse connections; the fleet dashboard lists the pools.",
        ),
    ]


def build_rules(settings: AlertSettings | None = None) -> dict[str, Any]:
    s = settings or AlertSettings()
    return {
        "groups": [
            {"name": "poolwatch-recording", "interval": s.interval, "rules": recording_rules(s)},
            {"name": "poolwatch-alerts", "interval": s.interval, "rules": alerting_rules(s)},
            {"name": "poolwatch-fleet", "interval": s.interval, "rules": fleet_rules(s)},
        ]
    }


HEADER = """\
# Generated by `poolwatch alerts`; do not edit by hand: regenerate with other settings,
# e.g. `poolwatch alerts --out alerts/ --set saturation_threshold=0.9 --set window=10m`.
# Window {window}, evaluation every {interval}. Runbooks: {runbook_base}
"""


def yaml_text(data: Any) -> str:
    """*data* as block YAML, multi-line strings (PromQL) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, width=100)


def render_rules(settings: AlertSettings | None = None) -> str:
    s = settings or AlertSettings()
    body = yaml_text(build_rules(s))
    return HEADER.format(window=s.window, interval=s.interval, runbook_base=s.runbook_base) + body
