"""The /pools view's quantiles and the multiprocess merge rules, on hand-made states."""

from __future__ import annotations

import pytest

from poolwatch.metrics.state import HistogramValue, PoolState, merge_states
from poolwatch.metrics.views import quantile


def test_quantile_interpolates_inside_the_bucket_like_promql():
    bounds = (0.1, 0.2, 0.4)
    hist = HistogramValue([0, 10, 10, 0], 0.0)  # 10 in (0.1, 0.2], 10 in (0.2, 0.4]
    assert quantile(0.5, hist, bounds) == pytest.approx(0.2)
    assert quantile(0.25, hist, bounds) == pytest.approx(0.15)
    assert quantile(0.75, hist, bounds) == pytest.approx(0.3)
    assert quantile(0.5, HistogramValue([0, 0, 0, 0], 0.0), bounds) is None
    assert quantile(0.99, HistogramValue([0, 0, 0, 5], 9.0), bounds) == 0.4


def state(pid_live: bool, used: int, most: int, acquired: int, oldest: float) -> PoolState:
    s = PoolState(pool="p", info={"host": "h"}, live=pid_live)
    s.scalars[("connections", ("used",))] = used
    s.scalars[("connections_max", ())] = most
    s.scalars[("waits", ())] = acquired
    s.scalars[("oldest_wait", ())] = oldest
    s.histograms[("use", ())] = HistogramValue([acquired, 0], 1.0)
    return s


def test_merge_adds_counters_keeps_gauges_of_the_living_only():
    (merged,) = merge_states([state(True, 1, 4, 10, 0.5), state(True, 3, 4, 5, 2.0),
                              state(False, 4, 4, 100, 9.0)])  # fmt: skip
    assert merged.scalars[("waits", ())] == 115  # the dead process's counter stays
    assert merged.scalars[("connections", ("used",))] == 4  # gauges: living only
    assert merged.scalars[("connections_max", ())] == 8
    assert merged.scalars[("saturation", ())] == 0.5
    assert merged.scalars[("oldest_wait", ())] == 2.0  # the worst living waiter
    assert merged.histograms[("use", ())].counts == [115, 0]
    assert merged.live
