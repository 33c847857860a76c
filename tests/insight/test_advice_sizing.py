"""The sizing proof: measure a workload at one size, predict others, run them there, compare.

Issue 16's goal: predicted wait p95 and saturation within 25% of the measured ones,
for a steady, a bursty and a held-idle workload. The measurement at the first size
goes through the same path as /pools/{name}/advice (the exporter's sampler, the
window, the model); the comparison is against waits and holds the harness timed.

The measured side has to be long to mean anything: one 8 s run's p95 misses the
workload's own p95 by a median 20-30% on a perfect queue (see sizing_workloads). So
each checked size runs as RUNS_PER_SIZE independent pools of SECONDS each, about
10,000 requests per size, all at once in one process per workload (each process's
threads compete only with their own workload's), for about 70 s in all.

The checked sizes are where the pool is 45-70% busy and a good share of requests
wait, so the p95 is a real wait. At 80% busy (steady at 3) a 3-minute measurement
still moves by 20-25% between runs, which a 25% check cannot tell from a wrong
model: `benchmarks/sizing.py` shows those sizes too, with longer runs.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest

from poolwatch.embedded import create_cluster

from .sizing_workloads import SHAPES, Point, Shape, prove

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: measured where little waits; predicted and checked where much does
MEASURE_AT = 8
CHECK_AT = {"steady": (4, 5), "bursty": (3, 4), "held-idle": (3, 4)}
SECONDS = 60.0
RUNS_PER_SIZE = 3
TOLERANCE = 0.25
#: a wait p95 of a few ms is within a thread wake-up of zero: no relative error below this
FLOOR_SECONDS = 0.002
#: the arrivals' seed; another one draws other arrivals of the same workloads
SEED = int(os.environ.get("POOLWATCH_SIZING_SEED", "1"))


def within(guess: float, truth: float, floor: float = 0.0) -> bool:
    """Issue 16's goal: within 25% of the measured value, or *floor*, whichever is larger."""
    return abs(guess - truth) <= max(TOLERANCE * truth, floor)


@pytest.fixture(scope="module")
def points() -> Iterator[dict[str, list[Point]]]:
    # Its own cluster: the three workloads hold up to 115 connections at once.
    cluster = create_cluster(max_connections=150)
    try:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(SHAPES), mp_context=spawn) as workers:
            futures = {
                shape.name: workers.submit(
                    prove,
                    cluster.dsn(),
                    shape,
                    MEASURE_AT,
                    CHECK_AT[shape.name],
                    SECONDS,
                    RUNS_PER_SIZE,
                    SEED,
                )
                for shape in SHAPES
            }
            yield {name: f.result() for name, f in futures.items()}
    finally:
        cluster.destroy()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_prediction_at_other_sizes_matches_runs_there(
    shape: Shape, points: dict[str, list[Point]]
) -> None:
    checked = points[shape.name]
    assert [p.size for p in checked] == list(CHECK_AT[shape.name])
    for p in checked:
        report = (
            f"{shape.name} at {p.size}: predicted wait p95 {p.predicted_wait_p95 * 1000:.1f} ms,"
            f" saturation {p.predicted_saturation:.2f}; measured"
            f" {p.measured_wait_p95 * 1000:.1f} ms, {p.measured_saturation:.2f} over"
            f" {p.requests} requests (predicted from {p.measured_from} at size {MEASURE_AT})"
        )
        print(report)
        # the checked size must make requests wait, or the floor would prove nothing
        assert p.measured_wait_p95 > 4 * FLOOR_SECONDS, report
        assert p.requests > 5000 and p.measured_from > 2000, report
        assert within(p.predicted_wait_p95, p.measured_wait_p95, FLOOR_SECONDS), report
        assert within(p.predicted_saturation, p.measured_saturation), report
