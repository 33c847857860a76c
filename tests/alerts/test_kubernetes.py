"""Kubernetes packaging: generated from the same table, no drift, valid against real schemas.

The PrometheusRule, PodMonitor and ServiceMonitor are checked against the
prometheus-operator CRD models published on PyPI (cloudcoil-models-prometheus-operator,
generated from the CRDs' OpenAPI schemas), with unknown fields refused; the ConfigMap
against Kubernetes' own schema (kubernetes-validate, strict).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as operator

from poolwatch.alerts.kube import render_deploy, render_prometheus_rule
from poolwatch.dashboards.build import dashboard_files
from poolwatch.dashboards.kube import SIDECAR_LABEL, render_configmap

from ..metrics.scrape import require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
KINDS = {
    "PrometheusRule": operator.PrometheusRule,
    "PodMonitor": operator.PodMonitor,
    "ServiceMonitor": operator.ServiceMonitor,
}


def _dropped(given: Any, kept: Any, path: str) -> list[str]:
    """Keys of *given* that validation did not keep: fields the schema does not define."""
    if isinstance(given, dict) and isinstance(kept, dict):
        out = [f"{path}.{k}" for k in given if k not in kept]
        for k in given:
            if k in kept:
                out += _dropped(given[k], kept[k], f"{path}.{k}")
        return out
    if isinstance(given, list) and isinstance(kept, list):
        return [
            x for i, (g, k) in enumerate(zip(given, kept)) for x in _dropped(g, k, f"{path}[{i}]")
        ]
    return []


def validate_operator(manifest: dict[str, Any]) -> None:
    """Raise unless *manifest* is valid for its prometheus-operator CRD.

    The models ignore unknown fields, as the API server's pruning would (silently
    losing them): compare what validation kept with what was given, and refuse.
    """
    model = KINDS[manifest["kind"]].model_validate(manifest)
    kept = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    unknown = _dropped(manifest["spec"], kept["spec"], "spec")
    if unknown:
        raise ValueError(f"fields the {manifest['kind']} CRD does not define: {unknown}")


def test_committed_manifests_equal_the_generators():
    expected = {**render_deploy(), "dashboards-configmap.yaml": render_configmap(dashboard_files())}
    for file, text in expected.items():
        assert (DEPLOY / file).read_text() == text, (
            f"deploy/kubernetes/{file} is stale: run `python -m poolwatch.alerts.kube` and"
            " `poolwatch dashboards --format configmap --out deploy/kubernetes`"
        )
    committed = {p.name for p in DEPLOY.glob("*.yaml")}
    assert committed == set(expected), "a manifest in deploy/kubernetes/ nobody generates"


def test_the_prometheusrule_holds_exactly_the_rule_file_groups():
    rule = yaml.safe_load((DEPLOY / "prometheusrule.yaml").read_text())
    rules_file = yaml.safe_load((ROOT / "alerts" / "poolwatch.rules.yml").read_text())
    assert rule["spec"] == rules_file
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"


@pytest.mark.parametrize("file", ["prometheusrule.yaml", "podmonitor.yaml", "servicemonitor.yaml"])
def test_operator_manifests_are_valid_for_the_crds(file):
    validate_operator(yaml.safe_load((DEPLOY / file).read_text()))


def test_the_crd_check_refuses_what_the_operator_would_refuse():
    # The validation must bite: a misspelled field and a rule without expr both fail.
    rule = yaml.safe_load((DEPLOY / "prometheusrule.yaml").read_text())
    misspelled = json.loads(json.dumps(rule))
    misspelled["spec"]["groups"][1]["rules"][0]["anotations"] = {}
    with pytest.raises(ValueError, match="anotations"):
        validate_operator(misspelled)
    no_expr = json.loads(json.dumps(rule))
    del no_expr["spec"]["groups"][0]["rules"][0]["expr"]
    with pytest.raises(pydantic.ValidationError, match="expr"):
        validate_operator(no_expr)
    monitor = yaml.safe_load((DEPLOY / "podmonitor.yaml").read_text())
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = 30
    with pytest.raises(pydantic.ValidationError):
        validate_operator(monitor)


def test_the_configmap_is_valid_and_labelled_for_grafanas_sidecar():
    manifest = yaml.safe_load((DEPLOY / "dashboards-configmap.yaml").read_text())
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
    assert SIDECAR_LABEL.items() <= manifest["metadata"]["labels"].items()
    assert manifest["data"] == dashboard_files()
    for text in manifest["data"].values():
        assert json.loads(text)["uid"]
    # kubectl apply keeps the whole object in an annotation limited to 256 KiB
    assert len(json.dumps(manifest)) < 256 * 1024
    broken = {**manifest, "data": {"poolwatch.json": {"not": "a string"}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_promtool_accepts_the_rules_inside_the_prometheusrule(tmp_path):
    promtool = require_tool("promtool")
    spec = yaml.safe_load((DEPLOY / "prometheusrule.yaml").read_text())["spec"]
    (tmp_path / "inside.yml").write_text(yaml.safe_dump(spec))
    out = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "inside.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 22 rules found" in out.stdout


def test_the_cli_writes_both_formats_with_settings():
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "poolwatch.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )

    out = cli("alerts", "--format", "prometheusrule", "--out", "-")
    assert out.returncode == 0, out.stderr
    assert out.stdout == render_prometheus_rule()
    tuned = cli("alerts", "--format", "prometheusrule", "--out", "-", "--set", "window=10m")
    manifest = yaml.safe_load(tuned.stdout)
    validate_operator(manifest)
    assert "[10m]" in tuned.stdout and "[5m]" not in tuned.stdout
    boards = cli("dashboards", "--format", "configmap", "--out", "-")
    assert boards.returncode == 0, boards.stderr
    assert boards.stdout == render_configmap(dashboard_files())
    # JSON on stdout is one document: the per-pool board, or the one --board names.
    pool_board = cli("dashboards", "--out", "-")
    assert pool_board.returncode == 0, pool_board.stderr
    assert pool_board.stdout == dashboard_files()["poolwatch.json"]
    fleet_board = cli("dashboards", "--out", "-", "--board", "fleet")
    assert fleet_board.stdout == dashboard_files()["poolwatch-fleet.json"]
