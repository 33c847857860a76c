"""End to end: a pool under load, a real Prometheus and Alertmanager, a webhook receiver.

The rules are the generator's, with 10 s windows and 2 s ``for:``; Prometheus and
Alertmanager run from the committed configuration files, pointed at loopback.
"""

from __future__ import annotations

import threading
import time

import pytest
import yaml
from prometheus_client import CollectorRegistry

from poolwatch import ConnectionPool, PoolTimeout
from poolwatch.alerts import AlertSettings, render_rules
from poolwatch.embedded import free_port
from poolwatch.exporter import start_exporter

from ..dashboards.panels import panel_queries
from ..metrics.scrape import require_tool
from .stack import (
    Process,
    WebhookReceiver,
    alertmanager_config,
    prometheus_config,
    query,
)

pytestmark = [pytest.mark.db, pytest.mark.slow, pytest.mark.timeout(240)]

SHORT = AlertSettings(
    window="10s",
    interval="1s",
    saturation_for="2s",
    wait_for="2s",
    timeout_for="0s",
    target_down_for="2s",
)
PROVED = ("PoolSaturationHigh", "PoolWaitNonZero", "PoolAcquireTimeouts")


@pytest.fixture
def stack(tmp_path, dsn):
    prometheus = require_tool("prometheus")
    alertmanager = require_tool("prometheus-alertmanager")
    receiver = WebhookReceiver()
    hook_port = receiver.start()
    pool = ConnectionPool(dsn, min_size=4, max_size=4, name="e2e", open=True)
    pool.wait()
    exporter = start_exporter([pool], port=0, registry=CollectorRegistry())
    am_port, prom_port = free_port(), free_port()
    rules = tmp_path / "poolwatch.rules.yml"
    rules.write_text(render_rules(SHORT))
    (tmp_path / "am.yml").write_text(yaml.safe_dump(alertmanager_config(hook_port)))
    prom_config = prometheus_config(rules, exporter.port, am_port)
    (tmp_path / "prom.yml").write_text(yaml.safe_dump(prom_config))
    procs = []
    try:
        am = Process(
            [alertmanager, f"--config.file={tmp_path / 'am.yml'}",
             f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
            tmp_path / "alertmanager.log",
        )  # fmt: skip
        procs.append(am)
        prom = Process(
            [prometheus, f"--config.file={tmp_path / 'prom.yml'}",
             f"--storage.tsdb.path={tmp_path / 'prom-data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            tmp_path / "prometheus.log",
        )  # fmt: skip
        procs.append(prom)
        am.wait_http(f"http://127.0.0.1:{am_port}/-/ready")
        prom.wait_http(f"http://127.0.0.1:{prom_port}/-/ready")
        yield pool, f"http://127.0.0.1:{prom_port}", receiver
    finally:
        for p in procs:
            p.stop()
        exporter.stop()
        pool.close()
        receiver.stop()


def wait_for(predicate, timeout: float, what: str, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def test_alerts_fire_reach_the_receiver_and_resolve(stack):
    pool, prom, receiver = stack
    # Prometheus has scraped the pool (its first scrape comes a few seconds after start).
    wait_for(lambda: query(prom, 'poolwatch_connections_max{pool="e2e"}'), 30, "a first scrape")
    assert not query(prom, 'ALERTS{alertname=~"Pool.*"}')

    # The load: all 4 connections held for 12 s (100%), 3 requests queue behind them,
    # and one of them gives up after 0.3 s.
    held = [pool.getconn() for _ in range(4)]
    load_started = time.monotonic()
    served = []

    def queued():
        with pool.connection(timeout=30):
            served.append(1)

    waiters = [threading.Thread(target=queued) for _ in range(3)]
    for t in waiters:
        t.start()
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.3)
    timed_out_at = time.monotonic()

    firing = {}
    for name in PROVED:
        note = wait_for(lambda n=name: receiver.first(n, "firing"), 40, f"{name} firing")
        firing[name] = note
    time.sleep(max(0.0, 12 - (time.monotonic() - load_started)))
    for conn in held:
        pool.putconn(conn)
    for t in waiters:
        t.join(10)
    assert len(served) == 3
    pool.drain()  # closes with a reason and reconnects: data for the churn panels
    load_stopped = time.monotonic()
    time.sleep(2)

    # Every dashboard panel's PromQL returns data from this Prometheus.
    empty = [(title, expr) for title, expr in panel_queries("15s") if not query(prom, expr)]
    assert not empty, f"panels without data: {empty}"

    for name in PROVED:
        wait_for(lambda n=name: receiver.first(n, "resolved"), 60, f"{name} resolved")
    resolved_after = max(receiver.first(n, "resolved").at for n in PROVED) - load_stopped

    # Routing: the critical alert went to the critical receiver, the warnings to theirs.
    assert firing["PoolAcquireTimeouts"].path == "/alerts/critical"
    assert firing["PoolSaturationHigh"].path == "/alerts/warning"
    alert = next(
        a for a in firing["PoolWaitNonZero"].body["alerts"] if a["labels"]["pool"] == "e2e"
    )
    assert alert["labels"]["severity"] == "warning"
    assert "e2e" in alert["annotations"]["description"]
    assert alert["annotations"]["runbook_url"].endswith("#poolwaitnonzero")

    delays = {n: round(firing[n].at - load_started, 1) for n in PROVED}
    delays["PoolAcquireTimeouts"] = round(firing["PoolAcquireTimeouts"].at - timed_out_at, 1)
    print(f"\nthreshold -> receiver (s): {delays}; resolved {resolved_after:.1f} s after load")
    for name, delay in delays.items():
        assert delay < 40, (name, delay)
