"""The generated rules: no drift, valid for promtool, every alert proved by promtool tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from poolwatch.alerts import ALERT_NAMES, AlertSettings, build_rules, render_rules

from ..metrics.scrape import require_tool

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
RULES = ALERTS / "poolwatch.rules.yml"


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_committed_rules_equal_the_generator_default():
    assert RULES.read_text() == render_rules(), (
        "alerts/poolwatch.rules.yml is stale: run `poolwatch alerts --out alerts`"
    )


def test_every_alert_of_the_contract_with_labels_and_annotations():
    alerts = [r for g in build_rules()["groups"] for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} == set(ALERT_NAMES)
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"^## (\w+)$", runbooks, re.MULTILINE)}
    # What each alert is about, which its description must name.
    subject = {"PoolFleetOverServerBudget": "$labels.host", "PoolwatchJobAbsent": "$labels.job"}
    for a in alerts:
        assert a["labels"]["severity"] in ("warning", "critical")
        notes = a["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}
        assert subject.get(a["alert"], "$labels.pool") in notes["description"]
        if a["alert"] != "PoolwatchTargetDown":  # its value is only "down"
            assert "$value" in notes["description"], a["alert"]
        assert notes["runbook_url"].split("#")[1] in anchors, notes["runbook_url"]
    tiers: dict[str, list[str]] = {}
    for a in alerts:
        tiers.setdefault(a["alert"], []).append(a["labels"]["severity"])
    assert tiers["PoolAcquireTimeouts"] == ["critical"]
    assert tiers["PoolSaturationHigh"] == ["warning", "critical"]
    assert tiers["PoolWaitNonZero"] == ["warning"]
    assert sorted(tiers["PoolConnectErrors"]) == ["critical", "warning"]


def test_promtool_check_rules():
    promtool = require_tool("promtool")
    out = run(promtool, "check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 22 rules found" in out.stdout


def test_promtool_unit_tests_pass_and_cover_every_alert():
    promtool = require_tool("promtool")
    files = sorted(ALERTS.glob("tests/*.yml"))
    out = run(promtool, "test", "rules", *map(str, files))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(files)
    covered: dict[str, set[str]] = {}
    for f in files:
        for group in yaml.safe_load(f.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                state = "fires" if case["exp_alerts"] else "silent"
                covered.setdefault(case["alertname"], set()).add(state)
    for name in ALERT_NAMES:
        assert covered.get(name) == {"fires", "silent"}, f"{name}: {covered.get(name)}"


def test_settings_change_the_output_and_survive_promtool(tmp_path):
    promtool = require_tool("promtool")
    out = run(sys.executable, "-m", "poolwatch.cli", "alerts", "--out", str(tmp_path),
              "--set", "saturation_threshold=0.9", "--set", "window=10m",
              "--set", "wait_severity=critical")  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "poolwatch.rules.yml").read_text()
    assert "poolwatch:saturation:mean_ratio > 0.9" in text
    assert "[10m]" in text and "[5m]" not in text
    assert run(promtool, "check", "rules", str(tmp_path / "poolwatch.rules.yml")).returncode == 0
    rules = yaml.safe_load(text)["groups"][1]["rules"]
    wait = next(r for r in rules if r["alert"] == "PoolWaitNonZero")
    assert wait["labels"]["severity"] == "critical"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("saturation_treshold=0.9", "did you mean 'saturation_threshold'"),
        ("saturation_threshold=high", "is not a number"),
        ("window=5 minutes", "is not a PromQL duration"),
        ("window", "expected name=value"),
        # values that would write rules Prometheus refuses to load, or that never fire
        ("drop_labels=pod-name", "'pod-name' is not a Prometheus label name"),
        ("server_labels=host port", "'host port' is not a Prometheus label name"),
        ("job_labels=", "needs at least one label"),
        ("server_labels= ", "needs at least one label"),
        ("saturation_threshold=nan", "is not a finite number"),
        ("fleet_threshold=inf", "is not a finite number"),
    ],
)
def test_bad_settings_get_a_clear_error(setting, message):
    out = run(sys.executable, "-m", "poolwatch.cli", "alerts", "--out", "-", "--set", setting)
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stdout == ""


def test_label_settings_that_are_valid_load_in_promtool(tmp_path):
    """The label-list settings accept what Prometheus accepts, spaces or not."""
    promtool = require_tool("promtool")
    out = run(sys.executable, "-m", "poolwatch.cli", "alerts", "--out", str(tmp_path),
              "--set", "server_labels=cluster,host, port", "--set", "drop_labels=pod",
              "--set", "replica_labels=", "--set", "job_labels=cluster, job")  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "poolwatch.rules.yml").read_text()
    assert "sum by (cluster, host, port)" in text
    check = run(promtool, "check", "rules", str(tmp_path / "poolwatch.rules.yml"))
    assert check.returncode == 0, check.stdout + check.stderr


def test_list_shows_every_setting():
    out = run(sys.executable, "-m", "poolwatch.cli", "alerts", "--list")
    assert out.returncode == 0
    for name in AlertSettings.names():
        assert f"{name} = " in out.stdout


def test_amtool_accepts_the_alertmanager_config():
    amtool = require_tool("amtool")
    out = run(amtool, "check-config", str(ALERTS / "alertmanager.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load((ALERTS / "alertmanager.yml").read_text())
    # per-pool alerts group by pool, the fleet alert by server, the job alert by job
    assert {"alertname", "pool", "host", "port", "job"} <= set(config["route"]["group_by"])
    assert "instance" not in config["route"]["group_by"]
    (inhibit,) = config["inhibit_rules"]
    assert inhibit["source_matchers"] == ['severity="critical"']
    assert {"alertname", "pool", "instance"} <= set(inhibit["equal"])
