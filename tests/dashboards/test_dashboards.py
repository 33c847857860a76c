"""The Grafana dashboard: generated, valid for Grafana's models, every query parses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml

from poolwatch.dashboards.build import dashboard_files, dashboard_json

from ..metrics.scrape import require_tool
from .panels import DASHBOARD, FLEET_DASHBOARD, ROOT, load, panel_queries

#: @grafana/schema matching the SDK's Grafana 11.6 models
SCHEMA_PACKAGE = "@grafana/schema@11.6.16"
TYPESCRIPT = "typescript@5.6.3"

REQUIRED_PANELS = {
    "Saturation now": "gauge",
    "Saturation": "timeseries",
    "Saturation by instance": "timeseries",
    "Waits by instance": "timeseries",
    "Connections by state": "timeseries",
    "Pending requests and waits": "timeseries",
    "Wait time (heatmap)": "heatmap",
    "Wait time p50/p95/p99": "timeseries",
    "Errors by kind": "timeseries",
    "Timeouts": "timeseries",
    "Connect time and churn": "timeseries",
    "Connection lifetime (heatmap)": "heatmap",
    "Closes by reason": "timeseries",
    "Hold time p95 and leaks": "timeseries",
    "What held connections were doing": "timeseries",
    "Fleet budget": "timeseries",
}


def test_committed_dashboard_equals_the_generator_output():
    assert DASHBOARD.read_text() == dashboard_json(), (
        "dashboards/poolwatch.json is stale: run `poolwatch dashboards`"
    )


def test_every_committed_dashboard_equals_the_generator_output():
    for name, text in dashboard_files().items():
        assert (ROOT / "dashboards" / name).read_text() == text, (
            f"dashboards/{name} is stale: run `poolwatch dashboards`"
        )


def test_the_fleet_table_lists_every_pool_worst_first_and_links_to_its_dashboard():
    board = load(FLEET_DASHBOARD)
    variables = [v["name"] for v in board["templating"]["list"]]
    assert variables == ["datasource", "cluster", "namespace", "job"]
    table, budget, worst = board["panels"]
    assert table["type"] == "table"
    assert (budget["title"], worst["title"]) == (
        "Fleet budget per server",
        "Most saturated instances",
    )
    columns = table["transformations"][1]["options"]["renameByName"]
    assert list(columns.values()) == [
        "Saturation", "Wait p95", "Waits/s", "Errors/s", "Instances", "Σ max_size",
        "Server budget",
    ]  # fmt: skip
    assert table["options"]["sortBy"] == [{"desc": True, "displayName": "Saturation"}]
    for target in table["targets"]:
        assert target["instant"] and target["format"] == "table"
        # one row per pool in one place, HA replicas counted once
        assert "cluster, namespace, job, pool" in target["expr"]
        assert "max without (prometheus_replica, replica)" in target["expr"]
    (link_override,) = [
        o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "pool"
    ]
    (link,) = link_override["properties"][0]["value"]
    pool_board = load()
    assert link["url"].startswith(f"/d/{pool_board['uid']}/")
    for var in ("cluster", "namespace", "job", "pool"):
        assert f"var-{var}=${{__data.fields.{var}}}" in link["url"]
        assert var in [v["name"] for v in pool_board["templating"]["list"]]


def test_the_fleet_dashboard_type_checks_and_its_queries_parse(grafana_schema, tmp_path):
    out = typecheck(grafana_schema, load(FLEET_DASHBOARD))
    assert out.returncode == 0, out.stdout + out.stderr
    promtool = require_tool("promtool")
    queries = panel_queries(path=FLEET_DASHBOARD)
    rules = {"groups": [{"name": "q", "rules": [
        {"record": f"panel:query:{i}", "expr": expr} for i, (_, expr) in enumerate(queries)
    ]}]}  # fmt: skip
    path = tmp_path / "fleet.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_panels_variables_and_alert_annotation():
    board = load()
    assert {p["title"]: p["type"] for p in board["panels"]} == REQUIRED_PANELS
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "cluster", "namespace", "job", "instance", "pool"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["pool"]["multi"] and variables["pool"]["includeAll"]
    (annotation,) = board["annotations"]["list"]
    assert 'ALERTS{alertstate="firing"' in annotation["expr"]
    saturation = next(p for p in board["panels"] if p["title"] == "Saturation")
    steps = saturation["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert {"color": "orange", "value": 0.8} in steps
    assert saturation["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"
    # runbooks refer to panels by title: they must exist
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    for title in (
        "Pending requests and waits",
        "Hold time p95 and leaks",
        "What held connections were doing",
        "Fleet budget",
    ):
        assert f'"{title}"' in runbooks


def test_round_trip_through_the_sdk_models_keeps_every_key():
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()
    text = DASHBOARD.read_text()
    again = JSONEncoder(sort_keys=True, indent=2).encode(Dashboard.from_json(json.loads(text)))
    assert again + "\n" == text  # an unknown key would have been dropped


def test_the_sdk_round_trip_would_notice_an_unknown_key():
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()
    board = load()
    board["panels"][0]["optionz"] = {}
    again = JSONEncoder(sort_keys=True).encode(Dashboard.from_json(board))
    assert "optionz" not in again


@pytest.fixture(scope="session")
def grafana_schema(tmp_path_factory):
    """@grafana/schema and TypeScript from npm, cached in .venv between runs."""
    npm = shutil.which("npm")
    if npm is None:
        if os.environ.get("CI"):
            pytest.fail("npm is not installed (scripts/setup installs nodejs and npm)")
        pytest.skip("npm is not installed")
    cache = ROOT / ".venv" / "grafana-schema"
    marker = cache / f".{SCHEMA_PACKAGE.replace('/', '_')}-{TYPESCRIPT}"
    if not marker.exists():
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "package.json").write_text('{"private": true}\n')
        out = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", SCHEMA_PACKAGE, TYPESCRIPT],
            cwd=cache, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        marker.touch()
    return cache


def typecheck(cache, board: dict) -> subprocess.CompletedProcess[str]:
    # Keys the SDK writes that the TypeScript types do not model: the legacy top-level
    # Prometheus annotation query (Grafana moves it into `target` on load) and the
    # interval-variable defaults the SDK puts on every variable.
    board = json.loads(json.dumps(board))
    for annotation in board.get("annotations", {}).get("list", []):
        annotation.pop("expr", None)
    for variable in board["templating"]["list"]:
        for key in ("auto", "auto_count", "auto_min"):
            variable.pop(key, None)
    source = (
        'import type { Dashboard } from "@grafana/schema";\n'
        "// JSON carries enum values as strings: accept them where the types have enums.\n"
        "type Loose<T> = T extends string ? `${T}` | T : T extends Array<infer E>"
        " ? Array<Loose<E>> : T extends object ? { [K in keyof T]: Loose<T[K]> } : T;\n"
        f"const dashboard: Loose<Dashboard> = {json.dumps(board, indent=1)};\n"
        "export default dashboard;\n"
    )
    (cache / "check.ts").write_text(source)
    return subprocess.run(
        [str(cache / "node_modules" / ".bin" / "tsc"), "--noEmit", "--strict",
         "--moduleResolution", "node", "--module", "commonjs", "--skipLibCheck", "check.ts"],
        cwd=cache, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_dashboard_type_checks_against_grafana_schema(grafana_schema):
    out = typecheck(grafana_schema, load())
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_type_check_would_notice_a_wrong_key(grafana_schema):
    board = load()
    board["panels"][1]["fieldConfig"]["defaults"]["unitt"] = "s"
    out = typecheck(grafana_schema, board)
    assert out.returncode != 0 and "unitt" in out.stdout


def test_every_panel_query_parses_with_promtool(tmp_path):
    promtool = require_tool("promtool")
    queries = panel_queries()
    assert len(queries) >= 20
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {"record": f"panel:query:{i}", "expr": expr}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_provisioning_points_at_the_dashboards():
    prov = ROOT / "dashboards" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    boards = yaml.safe_load((prov / "dashboards" / "poolwatch.yml").read_text())
    assert boards["providers"][0]["type"] == "file"
