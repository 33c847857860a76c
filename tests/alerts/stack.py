"""Real Prometheus and Alertmanager on loopback, configured from the committed files."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Notification:
    at: float  # monotonic time of arrival
    path: str
    body: dict[str, Any]


@dataclass
class WebhookReceiver:
    """Collects Alertmanager's webhook posts, with their arrival time."""

    received: list[Notification] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> int:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                with receiver.lock:
                    receiver.received.append(Notification(time.monotonic(), self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def first(self, alertname: str, status: str) -> Notification | None:
        """The first notification carrying *alertname* in *status* (firing or resolved)."""
        with self.lock:
            for n in self.received:
                for alert in n.body["alerts"]:
                    if alert["labels"]["alertname"] == alertname and alert["status"] == status:
                        return n
        return None


def alertmanager_config(webhook_port: int) -> dict[str, Any]:
    """The committed alertmanager.yml, its webhooks pointed at the test and its waits short."""
    config = yaml.safe_load((ROOT / "alerts" / "alertmanager.yml").read_text())
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    for route in config["route"].get("routes", []):
        route.pop("group_wait", None)
        route.pop("repeat_interval", None)
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            path = hook["url"].split("/", 3)[3]
            hook["url"] = f"http://127.0.0.1:{webhook_port}/{path}"
    return config


def prometheus_config(rules: Path, exporter_port: int, am_port: int) -> dict[str, Any]:
    """The committed deploy/prometheus.yml, on loopback, scraping and evaluating every second."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{am_port}"]}
    ]
    job = config["scrape_configs"][0]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{exporter_port}"]}]
    return config


class Process:
    """A server process with its log kept for the failure message."""

    def __init__(
        self,
        cmd: list[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.log_path = log
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )

    def wait_http(self, url: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{url} never answered:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def query(prom_url: str, promql: str) -> list[dict[str, Any]]:
    r = httpx.get(prom_url + "/api/v1/query", params={"query": promql}, timeout=10)
    r.raise_for_status()
    data = r.json()["data"]
    return data["result"] if isinstance(data["result"], list) else [data["result"]]
