"""The sizing proof: measure a workload at one size, predict others, run them there, compare.

Issue 16's goal: predicted wait p95 and saturation within 25% of the measured ones,
for a steady, a bursty and a held-idle workload. The measurement at the first size
goes through the same path as /pools/{name}/advice (the exporter's sampler, the
window, the model); the comparison is against waits and holds the harness timed.

The measured side has to be long to mean anything: one 8 s run's p95 misses the
workload's own p95 by a median 20-30% on a perfect queue (see sizing_workloads), and
even three 60 s runs taken together missed by 34% for one seed (bursty at 3). So each
checked size runs as RUNS_PER_SIZE independent pools of SECONDS each, about 20,000
requests per size (on a perfect queue: within 15% of the long-run p95 in 100 of 100
draws), all at once, each workload in a process of its own; about 2.5 minutes in all.

The checked sizes are where the pool is 45-70% busy and a good share of requests
wait, so the p95 is a real wait. At 83% busy (steady at 3) the same measurement moves
by up to 18% on a perfect queue, and holds 2% longer on a loaded machine lengthen the
waits by about 13%: too close to 25% to tell a wrong model from chance in CI.
`benchmarks/sizing.py` shows those sizes too.

What this proof needs from the machine: CPU for the harness's 21 pools (about 1,200
requests a second, well under one core). On a CPU-starved machine (load averages of
7-18 on 2 cores, the shared development VM) it failed 6 runs in 11, mostly held-idle at 3:
stalls of a whole process lengthen every held connection at once, so the waits run
up to 4 times the prediction although the saturation still matches. The model draws each
hold on its own and cannot see that; the failure message shows the hold histogram the
model was given, whose tail past 100 ms is the sign of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from poolwatch.embedded import create_cluster

from .sizing_workloads import FLOOR_SECONDS, SHAPES, Point, Shape, prove, within

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: measured where little waits; predicted and checked where much does
MEASURE_AT = 8
CHECK_AT = {"steady": (4, 5), "bursty": (3, 4), "held-idle": (3, 4)}
SECONDS = 120.0
RUNS_PER_SIZE = 3
#: the arrivals' seed; another one draws other arrivals of the same workloads
SEED = int(os.environ.get("POOLWATCH_SIZING_SEED", "1"))


@pytest.fixture(scope="module")
def points() -> Iterator[dict[str, list[Point]]]:
    # Its own cluster: the three workloads hold up to 115 connections at once.
    cluster = create_cluster(max_connections=150)
    try:
        plan = [(shape, CHECK_AT[shape.name]) for shape in SHAPES]
        done = prove(cluster.dsn(), plan, MEASURE_AT, SECONDS, RUNS_PER_SIZE, SEED)
        yield {s.name: [p for p in done if p.workload == s.name] for s in SHAPES}
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
            f" {p.requests} requests (predicted from {p.measured_from} at size {MEASURE_AT}:"
            f" {p.inputs()})"
        )
        print(report)
        # the checked size must make requests wait, or the floor would prove nothing
        assert p.measured_wait_p95 > 4 * FLOOR_SECONDS, report
        assert p.requests > 15_000 and p.measured_from > 5000, report
        assert within(p.predicted_wait_p95, p.measured_wait_p95, FLOOR_SECONDS), report
        assert within(p.predicted_saturation, p.measured_saturation), report
