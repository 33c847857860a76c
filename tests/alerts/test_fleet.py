"""A fleet on loopback: three app instances, two HA Prometheus replicas, a global one.

Instances west-a and west-b run in cluster "west", east-a in cluster "east" (a target
label from file service discovery). Replicas r1 and r2 scrape them all and evaluate the
per-pool rules; the global Prometheus federates both replicas (so it sees every series
twice, told apart by the external label prometheus_replica), evaluates every group, the
fleet rules among them, and notifies an Alertmanager. While load runs, west-b is rolled:
a new process on a new port joins service discovery, the old target leaves it, then the
old process stops. Then a fourth instance with a large pool pushes Σ max_size past 80% of
the server's budget.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from poolwatch.alerts import AlertSettings, render_rules
from poolwatch.alerts.rules import alerting_rules, recording_rules
from poolwatch.dashboards.fleet import COLUMNS
from poolwatch.embedded import free_port
from poolwatch.metrics.names import METRICS

from ..dashboards.panels import DASHBOARD, FLEET_DASHBOARD, panel_queries
from ..metrics.scrape import require_tool
from .stack import Process, WebhookReceiver, alertmanager_config, query

pytestmark = [pytest.mark.db, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
FAST = AlertSettings(
    window="10s",
    interval="1s",
    target_down_for="2s",
    fleet_for="3s",
    job_absent_for="3s",
    saturation_for="2s",
    wait_for="2s",
)
#: pool name -> (max_size, load threads) of every ordinary instance
POOLS = {"api": (4, 6), "jobs": (2, 3)}
LOAD_SECONDS = 40.0


def wait_for(predicate, timeout: float, what: str, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


class Fleet:
    def __init__(self, tmp: Path, dsn: str) -> None:
        self.tmp = tmp
        self.dsn = dsn
        self.sd = tmp / "targets.json"
        self.apps: dict[str, tuple[Process, int, str]] = {}  # name -> (process, port, cluster)
        self.procs: list[Process] = []

    def start_app(self, name: str, cluster: str, pools: dict[str, tuple[int, int]]) -> None:
        port = free_port()
        env = {**os.environ, "POOLWATCH_TEST_DSN": self.dsn}
        args = [f"--pool={p}={size}:{threads}" for p, (size, threads) in pools.items()]
        proc = Process(
            [sys.executable, "-m", "tests.alerts.fleet_app", f"--port={port}",
             f"--load-seconds={LOAD_SECONDS}", f"--report={self.report_path(name)}", *args],
            self.tmp / f"{name}.log", env=env, cwd=ROOT,
        )  # fmt: skip
        self.procs.append(proc)
        proc.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
        self.apps[name] = (proc, port, cluster)

    def report_path(self, name: str) -> Path:
        return self.tmp / f"{name}.report.json"

    def report(self, name: str) -> dict:
        return json.loads(self.report_path(name).read_text())

    def write_sd(self) -> None:
        groups = [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"cluster": cluster}}
            for _, port, cluster in self.apps.values()
        ]
        tmp = self.sd.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.sd)  # atomic: Prometheus never reads half a file

    def instance(self, name: str) -> str:
        return f"127.0.0.1:{self.apps[name][1]}"

    def stop(self) -> None:
        for p in reversed(self.procs):
            if not p.log.closed:
                p.stop()


def rules_file(path: Path, groups: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


@pytest.fixture
def fleet(tmp_path, dsn):
    prometheus = require_tool("prometheus")
    alertmanager = require_tool("prometheus-alertmanager")
    receiver = WebhookReceiver()
    hook_port = receiver.start()
    f = Fleet(tmp_path, dsn)
    try:
        f.start_app("west-a", "west", POOLS)
        f.start_app("west-b", "west", POOLS)
        f.start_app("east-a", "east", POOLS)
        f.write_sd()
        per_pool = rules_file(
            tmp_path / "per-pool.yml",
            [
                {"name": "poolwatch-recording", "interval": "1s", "rules": recording_rules(FAST)},
                {"name": "poolwatch-alerts", "interval": "1s", "rules": alerting_rules(FAST)},
            ],
        )
        everything = tmp_path / "global.yml"
        everything.write_text(render_rules(FAST))
        am_port = free_port()
        (tmp_path / "am.yml").write_text(yaml.safe_dump(alertmanager_config(hook_port)))
        am = Process(
            [alertmanager, f"--config.file={tmp_path / 'am.yml'}",
             f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
            tmp_path / "alertmanager.log",
        )  # fmt: skip
        f.procs.append(am)
        urls = {}
        for replica in ("r1", "r2"):
            port = free_port()
            config = {
                "global": {
                    "scrape_interval": "1s",
                    "evaluation_interval": "1s",
                    "external_labels": {"prometheus_replica": replica},
                },
                "rule_files": [str(per_pool)],
                "scrape_configs": [
                    {
                        "job_name": "app",
                        "file_sd_configs": [{"files": [str(f.sd)], "refresh_interval": "1s"}],
                    }
                ],
            }
            urls[replica] = start_prometheus(f, prometheus, replica, port, config)
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(everything)],
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
            },
            "scrape_configs": [
                {
                    "job_name": "federate",
                    "honor_labels": True,
                    "metrics_path": "/federate",
                    "params": {"match[]": ['{__name__=~"poolwatch_.+"}', 'up{job="app"}']},
                    "static_configs": [
                        {"targets": [u.removeprefix("http://") for u in urls.values()]}
                    ],
                }
            ],
        }
        # Federated samples carry their own timestamps, which Prometheus 2.42 never marks
        # stale: a target gone from the replicas stays visible on the global server for
        # the lookback delta (5m by default; docs/fleet.md). Everything here runs ~60x
        # faster than in production (1s scrapes, 10s windows): so does the lookback.
        urls["global"] = start_prometheus(
            f, prometheus, "global", port, config, "--query.lookback-delta=15s"
        )
        am.wait_http(f"http://127.0.0.1:{am_port}/-/ready")
        yield f, urls, receiver
    finally:
        f.stop()
        receiver.stop()


def start_prometheus(f: Fleet, binary: str, name: str, port: int, config: dict, *flags: str) -> str:
    path = f.tmp / f"{name}.prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = Process(
        [binary, f"--config.file={path}", f"--storage.tsdb.path={f.tmp / (name + '-data')}",
         f"--web.listen-address=127.0.0.1:{port}", *flags],
        f.tmp / f"{name}.log",
    )  # fmt: skip
    f.procs.append(proc)
    proc.wait_http(f"http://127.0.0.1:{port}/-/ready")
    return f"http://127.0.0.1:{port}"


def seen(url: str, instance: str) -> bool:
    return bool(query(url, f'poolwatch_pool_info{{instance="{instance}"}}'))


def active_targets(url: str) -> set[str]:
    import httpx

    data = httpx.get(url + "/api/v1/targets", params={"state": "active"}, timeout=10).json()
    return {t["labels"]["instance"] for t in data["data"]["activeTargets"]}


def ever_alerted(url: str, alertname: str, minutes: int = 10) -> list:
    """Every ALERTS series of *alertname*, pending or firing, in the last minutes."""
    return query(url, f'max_over_time(ALERTS{{alertname="{alertname}"}}[{minutes}m])')


def test_a_fleet_through_a_rolling_restart_ha_replicas_and_a_budget_crossing(fleet):
    f, urls, receiver = fleet
    started = time.monotonic()
    for name in ("west-a", "west-b", "east-a"):
        wait_for(lambda n=name: seen(urls["global"], f.instance(n)), 60, f"{name} federated")

    # Rolling restart of west-b while the load runs: the new process joins first, the
    # old target leaves service discovery, then the old process stops.
    old = f.instance("west-b")
    old_proc = f.apps.pop("west-b")[0]
    f.start_app("west-b2", "west", POOLS)
    f.write_sd()
    new = f.instance("west-b2")
    for r in ("r1", "r2"):
        wait_for(lambda r=r: old not in active_targets(urls[r]), 30, f"{r} dropping {old}")
        wait_for(lambda r=r: new in active_targets(urls[r]), 30, f"{r} discovering {new}")
    old_proc.stop()
    wait_for(lambda: seen(urls["global"], new), 30, "west-b2 federated")
    # Long enough for target_down_for (2s) to pass several times over, on every server.
    time.sleep(8)
    for url in urls.values():
        assert not ever_alerted(url, "PoolwatchTargetDown"), url
        assert not ever_alerted(url, "PoolwatchJobAbsent"), url

    # The replicas forget the old target at once (staleness markers); the global server
    # after its lookback delta.
    for r in ("r1", "r2"):
        assert not seen(urls[r], old), r
    wait_for(lambda: not seen(urls["global"], old), 60, "the global server forgetting west-b")

    # Σ max_size: 3 instances x (4 + 2) = 18 of a budget of 37: silent. The fleet ratio
    # counts each pool once although the global Prometheus holds it twice (r1 and r2).
    assert not ever_alerted(urls["global"], "PoolFleetOverServerBudget")
    wait_for(
        lambda: [r for r in query(urls["global"], "poolwatch:fleet_budget:ratio")
                 if float(r["value"][1]) == pytest.approx(18 / 37)],
        30, "the fleet ratio at 18/37",
    )  # fmt: skip
    assert len(query(urls["global"], "poolwatch:fleet_budget:ratio")) == 1

    # Scale-up: a fourth instance with a pool of 13 makes 31 of 37 (84% > 80%).
    f.start_app("east-big", "east", {"reports": (13, 0)})
    f.write_sd()
    firing = wait_for(
        lambda: query(urls["global"], 'ALERTS{alertname="PoolFleetOverServerBudget",'
                      ' alertstate="firing"}'),
        60, "the fleet budget alert",
    )  # fmt: skip
    note = wait_for(
        lambda: receiver.first("PoolFleetOverServerBudget", "firing"), 30, "its notification"
    )

    # The instances' own figures, once their load is over.
    names = ("west-a", "west-b2", "east-a", "east-big")
    for name in names:
        wait_for(lambda n=name: f.report_path(n).exists(), LOAD_SECONDS + 60, f"{name} report")
    time.sleep(4)  # a few more scrapes and federations of the final values
    reports = {name: f.report(name) for name in names}
    server_budget = {r["server_max_connections"] for rep in reports.values() for r in rep.values()}
    assert len(server_budget) == 1
    (server_budget_value,) = server_budget
    total_max = sum(r["max_size"] for rep in reports.values() for r in rep.values())
    assert total_max == 31

    # Exactly one alert for the one server: not one per pool, instance or replica.
    assert len(firing) == 1, firing
    labels = firing[0]["metric"]
    assert set(labels) == {"__name__", "alertname", "alertstate", "severity", "host", "port"}
    (ratio,) = query(urls["global"], "poolwatch:fleet_budget:ratio")
    assert float(ratio["value"][1]) == pytest.approx(total_max / server_budget_value)
    fleet_alerts = [
        a
        for n in receiver.received
        for a in n.body["alerts"]
        if a["labels"]["alertname"] == "PoolFleetOverServerBudget"
    ]
    assert {a["fingerprint"] for a in fleet_alerts} == {fleet_alerts[0]["fingerprint"]}
    assert len(note.body["alerts"]) == 1

    # Per-pool figures on the global Prometheus (deduplicated) equal each instance's own.
    measured = []
    for name in names:
        instance = f.instance(name)
        cluster = f.apps[name][2]
        for pool, own in reports[name].items():
            sel = f'instance="{instance}", pool="{pool}", cluster="{cluster}"'
            waits = query(urls["global"], f"poolwatch_waits_total{{{sel}}}")
            used = query(urls["global"], f"poolwatch_used_connection_seconds_total{{{sel}}}")
            assert {w["metric"]["prometheus_replica"] for w in waits} == {"r1", "r2"}
            for w in waits:
                assert float(w["value"][1]) == own["waits"], (name, pool, w, own)
            for u in used:
                assert float(u["value"][1]) == pytest.approx(own["used_seconds_total"], rel=1e-9)
            measured.append((name, pool, own["waits"], round(own["used_seconds_total"], 2)))
    assert any(waits > 0 for _, _, waits, _ in measured), "the load made nobody wait"

    # Every panel of both dashboards answers from the global server: its queries hold
    # with HA duplicates and two clusters.
    for board in (DASHBOARD, FLEET_DASHBOARD):
        empty = [(t, q) for t, q in panel_queries("15s", board) if not query(urls["global"], q)]
        assert not empty, f"{board.name}: panels without data: {empty}"
    # The fleet table: one row per pool and place, as many instances as run it.
    count_query = {title: expr for title, expr, _ in COLUMNS}["Instances"]
    for var in ("$cluster", "$namespace", "$job"):
        count_query = count_query.replace(var, ".*")
    rows = query(urls["global"], count_query)
    instances = {(r["metric"]["cluster"], r["metric"]["pool"]): r["value"][1] for r in rows}
    assert instances == {
        ("west", "api"): "2", ("west", "jobs"): "2", ("east", "api"): "1",
        ("east", "jobs"): "1", ("east", "reports"): "1",
    }  # fmt: skip

    # No counter went backwards anywhere, the roll included.
    counters = [m.sample_name for m in METRICS if m.type == "counter"] + [
        f"{m.prom}_{part}" for m in METRICS if m.type == "histogram" for part in ("count", "sum")
    ]
    for url in urls.values():
        for counter in counters:
            assert query(url, f"resets({counter}[10m]) > 0") == [], (url, counter)
        assert query(url, f"count(resets({counters[0]}[10m]))"), "resets() saw no series"
    # and no TargetDown at any point of the test, even after the old process stopped
    for url in urls.values():
        assert not ever_alerted(url, "PoolwatchTargetDown"), url
    print(
        f"\nfleet test: {time.monotonic() - started:.0f}s; Σ max_size {total_max} of"
        f" {server_budget_value}; (instance, pool, waits, used seconds): {measured}"
    )
