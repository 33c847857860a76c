"""The sizing model's parts against what theory says they must give.

The queue simulation against the Erlang C closed form (exponential holds, Poisson
arrivals, where the answer is known exactly); the hold-time reconstruction against
the histogram it came from; the burstiness measure against seeded streams.
"""

from __future__ import annotations

import math
import random

import pytest

from poolwatch.insight.model import (
    DEFAULT_REQUESTS,
    HoldTimes,
    Workload,
    _simulate,
    _Trace,
    predict,
)
from poolwatch.insight.window import dispersion
from poolwatch.observe import USE_BUCKETS


def erlang_c(servers: int, load: float) -> float:
    """Probability that a request waits in M/M/c with offered load *load* (erlangs)."""
    top = load**servers / math.factorial(servers) * servers / (servers - load)
    return top / (sum(load**k / math.factorial(k) for k in range(servers)) + top)


@pytest.mark.parametrize(("servers", "rate"), [(1, 0.7), (2, 1.5), (4, 3.2)])
def test_queue_simulation_matches_erlang_c(servers: int, rate: float) -> None:
    rng = random.Random(7)
    n = 200_000
    arrivals, now = [], 0.0
    for _ in range(n):
        now += rng.expovariate(rate)
        arrivals.append(now)
    holds = [rng.expovariate(1.0) for _ in range(n)]
    got = _simulate(_Trace(arrivals, holds), servers, timeout=math.inf)
    waits = erlang_c(servers, rate)
    # P(wait > t) = C e^{-(c mu - lambda) t}: the 95th percentile of all waits
    p95 = math.log(waits / 0.05) / (servers - rate)
    assert got.waited_share == pytest.approx(waits, rel=0.05)
    assert got.wait_p95 == pytest.approx(p95, rel=0.08)
    assert got.saturation == pytest.approx(rate / servers, rel=0.03)
    assert got.timeout_share == 0


def test_requests_give_up_after_the_timeout() -> None:
    # one connection, twice the work it can do: about half the requests must give up
    holds = HoldTimes(USE_BUCKETS, tuple(1000 if b == 0.1 else 0 for b in (*USE_BUCKETS, 0)), 100.0)
    (p,) = predict(Workload(20.0, holds, timeout=1.0), [1])
    assert p.timeout_share == pytest.approx(0.5, abs=0.05)
    assert p.wait_p99 <= 1.0 and p.saturation == pytest.approx(1.0, abs=0.02)


def test_hold_times_keep_the_measured_mean() -> None:
    counts = [0] * (len(USE_BUCKETS) + 1)
    counts[USE_BUCKETS.index(0.05)] = 500  # all in (0.025, 0.05]
    one = HoldTimes(USE_BUCKETS, tuple(counts), 500 * 0.042)
    assert one.points() == [(pytest.approx(0.042), 1.0)]  # one value: the data shows no spread
    counts[USE_BUCKETS.index(0.5)] = 100  # and a tail in (0.25, 0.5]
    two = HoldTimes(USE_BUCKETS, tuple(counts), 500 * 0.042 + 100 * 0.3)
    points = two.points()
    assert sum(v * p for v, p in points) == pytest.approx(two.mean)
    assert [round(p, 3) for _, p in points] == [0.833, 0.167]
    assert 0.025 <= points[0][0] <= 0.05 and 0.25 <= points[1][0] <= 0.5


def test_dispersion_sees_bursts_not_sampler_jitter() -> None:
    rng = random.Random(3)
    # a Poisson stream read at irregular intervals (a late sampler): still 1
    lengths = [rng.uniform(0.5, 1.5) for _ in range(60)]
    counts = [sum(1 for _ in range(_poisson(rng, 40 * t))) for t in lengths]
    assert dispersion(counts, lengths) == 1.0
    # the same counts taken as equal intervals would look bursty
    assert dispersion(counts) > 1.0
    # bursts of 4: variance over mean 4
    bursts = [4 * _poisson(rng, 10.0) for _ in range(60)]
    assert dispersion(bursts) == pytest.approx(4.0, rel=0.3)


def _poisson(rng: random.Random, mean: float) -> int:
    n, t = 0, rng.expovariate(1.0)
    while t < mean:
        n += 1
        t += rng.expovariate(1.0)
    return n


@pytest.mark.parametrize(
    ("burst", "hold", "size"),
    [(1, 0.0415, 3), (1, 0.0415, 4), (4, 0.0316, 3), (4, 0.0316, 4)],
    ids=["poisson-3", "poisson-4", "bursts-3", "bursts-4"],
)
def test_a_prediction_does_not_depend_on_its_seed(burst: int, hold: float, size: int) -> None:
    # The model simulates a finite number of requests; their p95 must be the workload's,
    # not the random stream's: every seed within 10% of a 10-times-longer simulation.
    counts = [0] * (len(USE_BUCKETS) + 1)
    counts[next(i for i, b in enumerate(USE_BUCKETS) if hold <= b)] = 1000
    workload = Workload(60.0, HoldTimes(USE_BUCKETS, tuple(counts), 1000 * hold), burst)
    (long_run,) = predict(workload, [size], requests=10 * DEFAULT_REQUESTS, seed=99)
    for seed in range(1, 6):
        (p,) = predict(workload, [size], seed=seed)
        assert p.wait_p95 == pytest.approx(long_run.wait_p95, rel=0.10), seed
