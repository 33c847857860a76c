"""The lean exposition profile: its series count per pool, exact folds, and every alert
and dashboard panel still working against a real Prometheus scraping a lean exporter."""

from __future__ import annotations

import os
import sys
import time
from itertools import accumulate
from pathlib import Path

import pytest
import yaml

from poolwatch import ConnectionPool, PoolTimeout
from poolwatch.alerts import AlertSettings, build_rules
from poolwatch.embedded import free_port
from poolwatch.metrics.exposition import render
from poolwatch.metrics.names import BY_KEY
from poolwatch.metrics.profiles import LEAN_BUCKETS, lean
from poolwatch.metrics.state import HistogramValue, PoolState, state_of
from poolwatch.observe import ACQUIRE_OUTCOMES, CLOSE_REASONS

from ..dashboards.panels import DASHBOARD, FLEET_DASHBOARD, panel_queries
from ..metrics.scrape import require_tool
from .stack import Process, query

ROOT = Path(__file__).resolve().parents[2]


def series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def busy_state(dsn: str) -> PoolState:
    """The state of a real pool that served, queued, timed out and closed connections."""
    with ConnectionPool(dsn, min_size=1, max_size=1, name="counted") as pool:
        pool.wait()
        with pool.connection():
            with pytest.raises(PoolTimeout):
                pool.getconn(timeout=0.01)
        pool.drain()
        pool.wait()
        return state_of(pool)


def every_label_value(state: PoolState) -> PoolState:
    """*state* with a series for every outcome and close reason: the most a pool exports."""
    for key, values in (("acquire", ACQUIRE_OUTCOMES), ("lifetime", CLOSE_REASONS)):
        size = len(BY_KEY[key].buckets) + 1
        for value in values:
            state.histograms.setdefault((key, (value,)), HistogramValue([0] * size, 0.0))
    return state


@pytest.mark.db
def test_series_per_pool_in_each_profile(dsn):
    state = busy_state(dsn)
    counts = {}
    for name in ("typical", "every label value"):
        if name == "every label value":
            state = every_label_value(state)
        counts[name] = (
            len(series(render([state]))),
            len(series(render([state], profile="lean"))),
        )
    print(f"\nseries per pool (full, lean): {counts}")
    full_max, lean_max = counts["every label value"]
    assert lean_max * 2 < full_max
    assert counts["typical"][1] < counts["typical"][0]


@pytest.mark.db
def test_the_lean_fold_is_exact_at_every_kept_bound(dsn):
    state = every_label_value(busy_state(dsn))
    thin = lean(state)
    for key, kept in LEAN_BUCKETS.items():
        full_bounds = BY_KEY[key].buckets
        parts = [h for (k, _), h in state.histograms.items() if k == key]
        folded = [h for (k, _), h in thin.histograms.items() if k == key]
        # the total and the sum survive the fold
        assert sum(sum(h.counts) for h in parts) == sum(sum(h.counts) for h in folded)
        assert sum(h.sum for h in parts) == pytest.approx(sum(h.sum for h in folded))
        # and at each kept bound the cumulative count is the full histogram's
        for h_full, h_lean in zip(parts, folded) if key != "acquire" else []:
            full_cum = dict(zip(full_bounds, accumulate(h_full.counts)))
            for bound, n in zip(kept, accumulate(h_lean.counts)):
                assert n == full_cum[bound], (key, bound)
    acquire = [h for (k, _), h in state.histograms.items() if k == "acquire"]
    (folded,) = [h for (k, v), h in thin.histograms.items() if k == "acquire"]
    total = [sum(col) for col in zip(*(h.counts for h in acquire))]
    full_cum = dict(zip(BY_KEY["acquire"].buckets, accumulate(total)))
    for bound, n in zip(LEAN_BUCKETS["acquire"], accumulate(folded.counts)):
        assert n == full_cum[bound]
    errors_full = sum(v for (k, _), v in state.scalars.items() if k == "errors")
    errors_lean = sum(v for (k, _), v in thin.scalars.items() if k == "errors")
    assert errors_full == errors_lean > 0


@pytest.mark.db
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_rule_and_panel_works_on_a_lean_exporter(tmp_path, dsn):
    prometheus = require_tool("prometheus")
    app_port, prom_port = free_port(), free_port()
    settings = AlertSettings(window="10s", interval="1s")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(build_rules(settings), sort_keys=False))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "app", "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}]}
        ],
    }
    (tmp_path / "prom.yml").write_text(yaml.safe_dump(config))
    report = tmp_path / "report.json"
    procs = []
    try:
        app = Process(
            [sys.executable, "-m", "tests.alerts.fleet_app", f"--port={app_port}",
             "--pool=api=3:5", "--load-seconds=12", f"--report={report}", "--profile=lean"],
            tmp_path / "app.log", env={**os.environ, "POOLWATCH_TEST_DSN": dsn}, cwd=ROOT,
        )  # fmt: skip
        procs.append(app)
        app.wait_http(f"http://127.0.0.1:{app_port}/readyz", timeout=60)
        prom = Process(
            [prometheus, f"--config.file={tmp_path / 'prom.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            tmp_path / "prometheus.log",
        )  # fmt: skip
        procs.append(prom)
        url = f"http://127.0.0.1:{prom_port}"
        prom.wait_http(url + "/-/ready")
        deadline = time.monotonic() + 90
        while not report.exists():
            assert time.monotonic() < deadline, "the app never finished its load"
            time.sleep(0.5)
        time.sleep(3)
        # it is lean: no outcome on the acquire histogram, no SQLSTATE class on errors
        assert query(url, "poolwatch_acquire_seconds_count")
        assert not query(url, "poolwatch_acquire_seconds_count{outcome!=''}")
        assert not query(url, "poolwatch_errors_total{sqlstate_class!=''}")
        for board in (DASHBOARD, FLEET_DASHBOARD):
            empty = [(t, q) for t, q in panel_queries("15s", board) if not query(url, q)]
            assert not empty, f"{board.name}: panels without data: {empty}"
        # every recording rule yields data, every alert expression evaluates
        for group in build_rules(settings)["groups"]:
            for rule in group["rules"]:
                query(url, rule["expr"])  # raises on a PromQL error
                if "record" in rule:
                    assert query(url, rule["record"]), rule["record"]
    finally:
        for p in reversed(procs):
            p.stop()


def test_an_unknown_profile_is_refused_clearly():
    from poolwatch.exporter import create_app

    with pytest.raises(ValueError, match=r"profile must be one of \('full', 'lean'\), got 'slim'"):
        create_app([], profile="slim")  # type: ignore[arg-type]
