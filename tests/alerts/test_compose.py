"""docker-compose.yml: valid for the compose specification, every mounted file present,
and wired to the same Prometheus, rules and Alertmanager files as the end-to-end test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_file_matches_the_compose_specification():
    out = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_check_rejects_a_broken_compose_file(tmp_path):
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["demo"]["depends_on"] = {"postgres": {"condition": "when_ready"}}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    out = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0


def test_every_mounted_file_and_build_context_exists():
    mounts = []
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert source.startswith("./"), f"{name}: {volume} is not a bind mount"
            assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            mounts.append((name, source, target))
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    assert mounts


def test_the_stack_uses_the_tested_files_and_loopback_ports():
    svc = services()
    prom_mounts = dict(v.split(":")[:2] for v in svc["prometheus"]["volumes"])
    assert prom_mounts["./deploy/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert prom["rule_files"] == [prom_mounts["./alerts/poolwatch.rules.yml"]]
    (am_target,) = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am_target.split(":")[0] in svc
    (scrape_target,) = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    host, port = scrape_target.split(":")
    assert host == "demo" and f"127.0.0.1:{port}:{port}" in svc["demo"]["ports"]
    am_mounts = dict(v.split(":")[:2] for v in svc["alertmanager"]["volumes"])
    assert "./alerts/alertmanager.yml" in am_mounts
    grafana = [v.split(":")[0] for v in svc["grafana"]["volumes"]]
    assert "./dashboards/poolwatch.json" in grafana
    for name, service in svc.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
