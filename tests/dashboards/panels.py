"""Reading the committed dashboard: its panels, their PromQL, variables substituted."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "poolwatch.json"
FLEET_DASHBOARD = ROOT / "dashboards" / "poolwatch-fleet.json"

#: What a panel query sees in Grafana, for running it outside Grafana.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$cluster": ".*",
    "$namespace": ".*",
    "$job": ".*",
    "$instance": ".*",
    "$pool": ".*",
}


def load(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def panel_queries(rate_interval: str = "1m", path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL with the variables substituted) for every panel target."""
    subs = {**SUBSTITUTIONS, "$__rate_interval": rate_interval}
    out = []
    for panel in load(path)["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in subs.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out
