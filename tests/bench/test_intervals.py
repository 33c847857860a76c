"""The statistics the benchmark's goal verdicts rest on (pure functions, no database)."""

from __future__ import annotations

import random
import statistics

from benchmarks.goals import _judge
from benchmarks.harness import Measure, median_interval
from benchmarks.throughput import ratio_stats


def test_the_interval_holds_the_median_and_is_repeatable():
    rng = random.Random(1)
    values = [rng.lognormvariate(0.0, 0.3) for _ in range(30)]
    low, high = median_interval(values)
    assert low <= statistics.median(values) <= high
    assert median_interval(values) == (low, high)  # seeded: a rerun of the table agrees


def test_more_rounds_give_a_narrower_interval():
    rng = random.Random(2)
    few = [rng.lognormvariate(0.0, 0.3) for _ in range(7)]
    many = [rng.lognormvariate(0.0, 0.3) for _ in range(200)]
    width_few = median_interval(few)[1] - median_interval(few)[0]
    width_many = median_interval(many)[1] - median_interval(many)[0]
    assert width_many < width_few / 2


def test_the_interval_covers_the_true_median_about_as_often_as_it_says():
    # 200 experiments of 30 rounds from a distribution whose median is 1.0: a 95% interval
    # should miss it in roughly 5% of them (bootstrap intervals of a median run a little
    # narrow on 30 values; well under 15% is what the verdicts can live with).
    rng = random.Random(3)
    misses = 0
    for _ in range(200):
        values = [rng.lognormvariate(0.0, 0.3) for _ in range(30)]
        low, high = median_interval(values, resamples=400)
        misses += not (low <= 1.0 <= high)
    assert misses < 30


def _measure(qps: float) -> Measure:
    return Measure(qps=qps, slowest_share=1.0, seconds=1.0, per_worker=[1], samples=[0.001])


def test_ratios_are_taken_within_rounds():
    # The machine slows every library in round 2 by half: in-round ratios cancel it.
    pool = [_measure(q) for q in (900.0, 450.0, 920.0)]
    raw = [_measure(q) for q in (1000.0, 500.0, 1000.0)]
    mid, low, high = ratio_stats(pool, raw)
    assert mid == 0.9
    assert 0.9 <= high <= 0.92 and low == 0.9


def test_a_verdict_says_met_missed_or_within_noise():
    assert _judge([((0.96, 0.93, 0.99), 0.95)], []) == "met"
    assert _judge([((0.94, 0.90, 0.97), 0.95)], []).startswith("**missed** (the 95% interval")
    assert _judge([((0.90, 0.88, 0.93), 0.95)], []) == "**missed**"
    # at most: a p99 ratio of 1.05 whose interval reaches below 1.0
    assert "interval" in _judge([], [((1.05, 0.98, 1.10), 1.0)])
    assert _judge([((1.3, 1.2, 1.4), 1.25)], [((0.9, 0.8, 1.0), 1.0)]) == "met"
