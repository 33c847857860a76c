"""Every panel query over an unbounded null pool (max_size=0): no +Inf saturation.

psycopg_pool's null pool, and poolwatch's, take ``max_size=0`` to mean "no limit", and
export a maximum of 0. Dividing used connections by it gave +Inf, which topped the
fleet table's worst-first sort and filled the saturation panels. promtool evaluates
each committed query over the series such a pool exports.
"""

from __future__ import annotations

import math
import re
import subprocess

import pytest
import yaml

from ..metrics.scrape import require_tool
from .panels import DASHBOARD, FLEET_DASHBOARD, panel_queries

LABELS = 'job="app",instance="a:1",pool="unbounded"'
#: what an unbounded pool in use exports: five connections used all the time, no maximum
SERIES = [
    {"series": f"poolwatch_used_connection_seconds_total{{{LABELS}}}", "values": "0+300x20"},
    {"series": f"poolwatch_connections_max{{{LABELS}}}", "values": "0x20"},
    {"series": f'poolwatch_connections{{{LABELS},state="used"}}', "values": "5x20"},
]


def _value_at_10m(promtool: str, tmp_path, expr: str) -> list[float]:
    """The samples promtool finds for *expr* at 10m (read from its failure report)."""
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": SERIES,
                # expecting nothing makes promtool print what it got
                "promql_expr_test": [{"expr": expr, "eval_time": "10m", "exp_samples": []}],
            }
        ],
    }
    path = tmp_path / "t.yml"
    path.write_text(yaml.safe_dump(test))
    out = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert "parse error" not in text and "could not" not in text, text
    if out.returncode == 0:
        return []
    got = text.split("got:", 1)[-1]
    values = [float(v) for v in re.findall(r"\}\s+([-+]?(?:Inf|NaN|[0-9.eE+-]+))", got)]
    assert values, text
    return values


@pytest.mark.parametrize("board", [DASHBOARD, FLEET_DASHBOARD], ids=["pool", "fleet"])
def test_no_panel_shows_infinite_saturation_for_an_unbounded_pool(board, tmp_path):
    promtool = require_tool("promtool")
    queries = [
        (title, expr)
        for title, expr in panel_queries("5m", board)
        if "poolwatch_connections_max" in expr and "used_connection_seconds" in expr
    ]
    assert queries, "no saturation panel found"
    for title, expr in queries:
        values = _value_at_10m(promtool, tmp_path, expr)
        assert not any(math.isinf(v) or math.isnan(v) for v in values), (title, expr, values)
