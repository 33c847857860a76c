"""Two HA Prometheus replicas sending one alert: Alertmanager sees one only if the
replica label is dropped from the alerts they send (docs/fleet.md, "Where to evaluate").

Prometheus attaches its external labels to every alert it sends, so the replicas'
copies differ by ``prometheus_replica`` and Alertmanager keeps both, unless
``alert_relabel_configs`` drops that label as the docs say.
"""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from poolwatch.embedded import free_port

from ..metrics.scrape import require_tool
from .stack import Process

#: the snippet docs/fleet.md tells HA users to add to each replica's configuration
DROP_REPLICA = [{"action": "labeldrop", "regex": "prometheus_replica|replica"}]
RULE = {
    "groups": [
        {
            "name": "ha",
            "interval": "1s",
            "rules": [{"alert": "HaProbe", "expr": "vector(1)", "labels": {"pool": "p"}}],
        }
    ]
}


def _alerts(am_url: str) -> list[dict]:
    r = httpx.get(am_url + "/api/v2/alerts", timeout=5)
    r.raise_for_status()
    return [a for a in r.json() if a["labels"].get("alertname") == "HaProbe"]


@pytest.mark.slow
@pytest.mark.parametrize("relabel", [False, True], ids=["as-is", "replica-dropped"])
def test_ha_replicas_alerts_are_one_alert_only_with_the_replica_label_dropped(tmp_path, relabel):
    prometheus = require_tool("prometheus")
    alertmanager = require_tool("prometheus-alertmanager")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(RULE))
    am_port = free_port()
    (tmp_path / "am.yml").write_text(
        yaml.safe_dump({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]})
    )
    procs = []
    try:
        am = Process(
            [alertmanager, f"--config.file={tmp_path / 'am.yml'}",
             f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
            tmp_path / "am.log",
        )  # fmt: skip
        procs.append(am)
        am_url = f"http://127.0.0.1:{am_port}"
        am.wait_http(am_url + "/-/ready", timeout=60)
        for replica in ("a", "b"):
            port = free_port()
            alerting: dict = {
                "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
            }
            if relabel:
                alerting["alert_relabel_configs"] = DROP_REPLICA
            config = {
                "global": {"evaluation_interval": "1s",
                           "external_labels": {"prometheus_replica": replica}},
                "rule_files": [str(tmp_path / "rules.yml")],
                "alerting": alerting,
            }  # fmt: skip
            (tmp_path / f"prom-{replica}.yml").write_text(yaml.safe_dump(config))
            prom = Process(
                [prometheus, f"--config.file={tmp_path / f'prom-{replica}.yml'}",
                 f"--storage.tsdb.path={tmp_path / f'data-{replica}'}",
                 f"--web.listen-address=127.0.0.1:{port}"],
                tmp_path / f"prom-{replica}.log",
            )  # fmt: skip
            procs.append(prom)
            prom.wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)
        # The rule fires at each replica's first evaluation (every second); once one copy
        # is in, a few more seconds let the other replica's copy arrive too.
        expected = 1 if relabel else 2
        deadline = time.monotonic() + 90
        while not _alerts(am_url) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)
        seen = _alerts(am_url)
        assert len(seen) == expected, seen
    finally:
        for proc in reversed(procs):
            proc.stop()
