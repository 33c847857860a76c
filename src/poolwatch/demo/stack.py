"""`poolwatch demo --with-prometheus`: Prometheus and Alertmanager beside the demo.

Both run from the Debian binaries on loopback, with the generated rules (short windows,
so that alerts fire within seconds), and Alertmanager posts to a webhook on the demo's
own exporter app, which prints every alert as it fires and resolves.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Request

from ..alerts.rules import AlertSettings, render_rules
from .ports import StartError

#: Rules for a demo: windows of 30 s and 5 s `for:`, evaluated every second.
DEMO_ALERTS = AlertSettings(
    window="30s",
    interval="1s",
    saturation_for="5s",
    wait_for="5s",
    timeout_for="0s",
    connect_errors_for="5s",
    connect_down_for="5s",
    leak_for="2s",
    churn_window="1m",
    churn_for="10s",
    target_down_for="5s",
)
WEBHOOK_PATH = "/demo/alertmanager"
#: how long Prometheus and Alertmanager get to answer /-/ready (seconds; generous for a
#: loaded machine), and how often to ask
READY_TIMEOUT = 60.0
READY_POLL = 0.25


class AlertStack:
    def __init__(self, options: Any, say: Callable[[str], None]) -> None:
        self.options = options
        self.say = say
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dir: tempfile.TemporaryDirectory[str] | None = None

    def add_webhook(self, app: Any) -> None:
        say = self.say

        async def alert_webhook(request: Request) -> dict[str, str]:
            body = await request.json()
            for alert in body.get("alerts", []):
                labels, notes = alert.get("labels", {}), alert.get("annotations", {})
                say(
                    f"ALERT {alert.get('status', '?'):<8} {labels.get('alertname')}"
                    f" pool={labels.get('pool', '-')} ({labels.get('severity')}):"
                    f" {notes.get('summary', '')}"
                )
            return {"status": "ok"}

        app.add_api_route(WEBHOOK_PATH, alert_webhook, methods=["POST"])

    def start(self) -> None:
        prometheus = shutil.which("prometheus")
        alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if prometheus is None or alertmanager is None:
            self.say(
                "  --with-prometheus: prometheus and alertmanager are not installed"
                " (Debian: apt-get install prometheus prometheus-alertmanager); continuing without"
            )
            return
        import yaml

        o = self.options
        self.dir = tempfile.TemporaryDirectory(prefix="poolwatch-demo-stack-")
        d = Path(self.dir.name)
        (d / "rules.yml").write_text(render_rules(DEMO_ALERTS))
        prom_config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(d / "rules.yml")],
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [f"127.0.0.1:{o.alertmanager_port}"]}]}
                ]
            },
            "scrape_configs": [
                {
                    "job_name": "poolwatch-demo",
                    "static_configs": [{"targets": [f"127.0.0.1:{o.port}"]}],
                }
            ],
        }
        am_config = {
            "route": {
                "receiver": "demo",
                "group_by": ["alertname", "cluster", "pool", "host", "port", "job"],  # as shipped
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "inhibit_rules": [
                {
                    "source_matchers": ['severity="critical"'],
                    "target_matchers": ['severity="warning"'],
                    "equal": ["alertname", "pool"],
                }
            ],
            "receivers": [
                {
                    "name": "demo",
                    "webhook_configs": [
                        {"url": f"http://127.0.0.1:{o.port}{WEBHOOK_PATH}", "send_resolved": True}
                    ],
                }
            ],
        }
        (d / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
        (d / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
        log = (d / "stack.log").open("w")
        self.procs.append(
            subprocess.Popen(
                [alertmanager, f"--config.file={d / 'alertmanager.yml'}",
                 f"--storage.path={d / 'am'}", "--cluster.listen-address=",
                 f"--web.listen-address=127.0.0.1:{o.alertmanager_port}"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        self.procs.append(
            subprocess.Popen(
                [prometheus, f"--config.file={d / 'prometheus.yml'}",
                 f"--storage.tsdb.path={d / 'prom'}",
                 f"--web.listen-address=127.0.0.1:{o.prometheus_port}"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        self.log = d / "stack.log"
        # Announced only once they answer: a port printed as live must be live.
        self._wait_ready("alertmanager", self.procs[0], o.alertmanager_port)
        self._wait_ready("prometheus", self.procs[1], o.prometheus_port)
        self.say(f"  prometheus   http://127.0.0.1:{o.prometheus_port}/alerts (30 s windows)")
        self.say(f"  alertmanager http://127.0.0.1:{o.alertmanager_port}/")

    def _wait_ready(self, name: str, proc: subprocess.Popen[bytes], port: int) -> None:
        url = f"http://127.0.0.1:{port}/-/ready"
        deadline = time.monotonic() + READY_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(READY_POLL)
        why = "exited" if proc.poll() is not None else f"did not answer in {READY_TIMEOUT:.0f} s"
        tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
        raise StartError(f"{name} on port {port} {why}; its last log lines: " + " | ".join(tail))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.dir is not None:
            self.dir.cleanup()
