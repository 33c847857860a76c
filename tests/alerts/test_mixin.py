"""The jsonnet monitoring mixin gives exactly what the generator gives, for any _config."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import _jsonnet
import pytest

from poolwatch.alerts import AlertSettings, build_rules
from poolwatch.alerts.mixin import render_config
from poolwatch.alerts.settings import apply_overrides
from poolwatch.dashboards.build import dashboard_files

ROOT = Path(__file__).resolve().parents[2]
MIXIN = ROOT / "mixin"


def evaluate(config: dict[str, object]) -> dict[str, object]:
    snippet = f"""
    local mixin = (import 'mixin.libsonnet') + {{ _config+:: {json.dumps(config)} }};
    {{
      groups: mixin.prometheusRules.groups + mixin.prometheusAlerts.groups,
      dashboards: mixin.grafanaDashboards,
    }}
    """
    result: dict[str, object] = json.loads(
        _jsonnet.evaluate_snippet("test", snippet, jpathdir=[str(MIXIN)])
    )
    return result


def test_the_committed_config_is_the_generator_default():
    assert (MIXIN / "config.libsonnet").read_text() == render_config(), (
        "mixin/config.libsonnet is stale: run `python -m poolwatch.alerts.mixin`"
    )
    assert set(asdict(AlertSettings())) == set(
        json.loads(_jsonnet.evaluate_file(str(MIXIN / "config.libsonnet")))
    )


def test_the_default_mixin_equals_the_rule_file():
    assert evaluate({})["groups"] == build_rules()["groups"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["saturation_threshold=0.9", "window=10m", "wait_severity=critical"],
        ["replica_labels=__replica__", "server_labels=cluster, host, port", "drop_labels=pod"],
        ["wait_count_threshold=25", "oldest_wait_threshold_seconds=2.5", "fleet_for=30m"],
        ["timeout_for=1m", "job_labels=job, namespace", "target_memory=3h", "interval=1m"],
    ],
)
def test_config_maps_onto_the_generator_settings(overrides):
    settings = apply_overrides(AlertSettings(), overrides)
    changed = {name: getattr(settings, name) for name in (o.split("=")[0] for o in overrides)}
    assert evaluate(changed)["groups"] == build_rules(settings)["groups"]
    # and the change is visible at all (the default differs)
    assert evaluate(changed)["groups"] != build_rules()["groups"]


def test_extra_labels_reach_every_alert():
    groups = evaluate({"extra_labels": {"team": "db"}})["groups"]
    assert groups == build_rules(AlertSettings(extra_labels={"team": "db"}))["groups"]


def test_the_mixin_ships_every_generated_dashboard():
    boards = evaluate({})["dashboards"]
    assert boards == {name: json.loads(text) for name, text in dashboard_files().items()}
