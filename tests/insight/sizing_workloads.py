"""Workloads for the sizing proof: real threads, real pools, real PostgreSQL holds.

Requests arrive open-loop (a seeded schedule of Poisson arrivals, alone or in bursts),
so the arrivals do not depend on the pool's size, as in a service whose callers do not
wait for each other. Each request takes a connection, runs `pg_sleep` and, for the
held-idle shape, then sleeps in Python inside the open transaction, as code does that
calls another service while holding its connection.

`run` measures the ground truth itself: each request's wait for `getconn()` and the
time it held its connection; the pool's own counters feed the prediction only.

Why `prove` runs several pools per size: the wait p95 of one run is the p95 of one
random stretch of arrivals, and a queue near saturation remembers its bursts for a
while. A perfect first-come-first-served queue fed the seeded arrivals of an 8 s run
gives a p95 that misses the long-run p95 by a median 20-30% (one run in ten: 50-75%),
whatever the pool does; 15 s runs are little better. The model predicts the long-run
value, so the measured side needs many requests: `prove` runs independent seeds in
parallel pools at each checked size and pools their waits and holds, a longer
measurement in less wall time, each workload in a process of its own.
"""

from __future__ import annotations

import math
import multiprocessing
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

from poolwatch import ConnectionPool
from poolwatch.exporter.live import LiveHistory
from poolwatch.insight.advice import Options, advise
from poolwatch.insight.model import Prediction
from poolwatch.insight.window import Window, from_samples
from poolwatch.metrics.state import state_of

#: the live sampler's interval in these runs: short runs need finer burstiness samples
SAMPLE_SECONDS = 0.25
#: how long a request may wait for a connection (the pool's `timeout`, in the model too)
TIMEOUT = 20.0
#: issue 16's goal: predictions within 25% of the measured values...
TOLERANCE = 0.25
#: ...and for the wait p95, within 2 ms when that is more: a p95 of a few ms is within
#: a thread wake-up of zero, where a relative error says nothing
FLOOR_SECONDS = 0.002


def within(guess: float, truth: float, floor: float = 0.0) -> bool:
    """Within TOLERANCE of the measured *truth*, or within *floor*, whichever is larger."""
    return abs(guess - truth) <= max(TOLERANCE * truth, floor)


@dataclass(frozen=True)
class Shape:
    name: str
    #: requests per second
    rate: float
    #: requests arriving together
    burst: int
    #: seconds in pg_sleep, then seconds idle in the transaction
    query: float
    idle: float = 0.0

    def describe(self) -> str:
        arrivals = "Poisson" if self.burst == 1 else f"bursts of {self.burst}"
        hold = f"{self.query * 1000:g} ms pg_sleep"
        if self.idle:
            hold += f" then {self.idle * 1000:g} ms idle in the transaction"
        return f"{self.name} ({self.rate:g} requests/s, {arrivals}, {hold})"


SHAPES = (
    Shape("steady", rate=60.0, burst=1, query=0.04),
    Shape("bursty", rate=60.0, burst=4, query=0.03),
    Shape("held-idle", rate=50.0, burst=1, query=0.01, idle=0.03),
)


def p95(values: Sequence[float]) -> float:
    """The 95th percentile by nearest rank (0 for no values)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(0.95 * len(ordered)) - 1))]


@dataclass
class Measured:
    size: int
    seconds: float
    waits: list[float]
    holds: list[float]
    window: Window

    @property
    def wait_p95(self) -> float:
        return p95(self.waits)

    @property
    def saturation(self) -> float:
        return sum(self.holds) / (self.size * self.seconds)


def _schedule(shape: Shape, seconds: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    times: list[float] = []
    now = rng.expovariate(shape.rate / shape.burst)
    while now < seconds:
        times.extend([now] * shape.burst)
        now += rng.expovariate(shape.rate / shape.burst)
    return times


def run(
    dsn: str, shape: Shape, size: int, seconds: float, seed: int = 1, *, sample: bool = True
) -> Measured:
    """Drive *shape* for *seconds* against a pool of *size*; bounded by the schedule.

    *sample*: keep the exporter's sampler on this pool, for a window to predict from
    (off for the checked runs, which are timed by the harness only).
    """
    # Without an idle stretch, autocommit spares each request a ROLLBACK round trip:
    # client CPU per request is what limits how many requests a loaded box can time.
    pool = ConnectionPool(
        dsn,
        min_size=size,
        max_size=size,
        timeout=TIMEOUT,
        name=f"sizing-{size}-{seed}",
        kwargs={"autocommit": not shape.idle},
        open=True,
    )
    query = f"SELECT pg_sleep({shape.query!r})"
    waits: list[float] = []
    holds: list[float] = []
    lock = threading.Lock()

    def request() -> None:
        asked = time.monotonic()
        conn = pool.getconn()
        got = time.monotonic()
        try:
            conn.execute(query)
            if shape.idle:
                time.sleep(shape.idle)  # the "external call", inside the transaction
                conn.rollback()
        finally:
            pool.putconn(conn)
            done = time.monotonic()
        with lock:
            waits.append(got - asked)
            holds.append(done - got)

    try:
        pool.wait(timeout=60)
        history = LiveHistory(lambda: [state_of(pool)], interval=SAMPLE_SECONDS)
        if sample:
            history.ensure_started()
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=64) as workers:
            for at in _schedule(shape, seconds, seed):
                delay = start + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                workers.submit(request)
            # the window ends when the last request was made: the model's arrivals do too
            elapsed = time.monotonic() - start
        history.stop()
        window = from_samples(
            list(history.samples), state_of(pool), time.monotonic(), window_seconds=seconds + 60
        )
    finally:
        pool.close()
    return Measured(size, elapsed, waits, holds, window)


def predicted(measured: Measured, size: int) -> Prediction:
    """What the advice predicts at *size* from the pool's own counters in *measured*."""
    by_size = {p.size: p for p in advise(measured.window, Options(timeout=TIMEOUT)).predictions}
    return by_size[size]


@dataclass(frozen=True)
class Point:
    """One checked size of one workload: the prediction and what the pools did."""

    workload: str
    size: int
    predicted_wait_p95: float
    predicted_saturation: float
    measured_wait_p95: float
    measured_saturation: float
    #: requests measured at this size (over every run)
    requests: int
    #: requests the prediction was made from (the one run at the measured size)
    measured_from: int
    #: what the model was given: bursts of this many requests on average, and the
    #: hold-time histogram's (upper bound, count) pairs
    burst_size: float = 1.0
    holds: tuple[tuple[float, int], ...] = ()

    def inputs(self) -> str:
        shown = ", ".join(f"<={b * 1000:g} ms: {n}" for b, n in self.holds if n)
        return f"bursts of {self.burst_size:.2f}; holds {shown}"


def prove(
    dsn: str,
    plan: Sequence[tuple[Shape, Sequence[int]]],
    measure_at: int,
    seconds: float,
    runs_per_size: int,
    seed: int = 1,
) -> list[Point]:
    """For each (shape, sizes) of *plan*: run the shape at *measure_at* and, at the same
    time, *runs_per_size* pools at each of the sizes; predict each checked size from
    the first pool's counters only.

    Each workload runs in a process of its own (its pools on threads), so that one
    workload's threads do not wait for another's turn at the GIL. One process per
    pool was tried, and was worse: twenty-one interpreters loaded a 2-core machine far
    more than three did, and every hold grew with it.
    """
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(plan), mp_context=spawn) as runner:
        futures = [
            runner.submit(
                _prove_one, dsn, shape, measure_at, check_at, seconds, runs_per_size, seed
            )
            for shape, check_at in plan
        ]
        return [p for f in futures for p in f.result()]


def _prove_one(
    dsn: str,
    shape: Shape,
    measure_at: int,
    check_at: Sequence[int],
    seconds: float,
    runs_per_size: int,
    seed: int,
) -> list[Point]:
    """`prove` for one workload, its pools on threads of this process.

    Every pool gets its own seed: the checked runs are fresh draws of the same
    workload, not replays of the measured stretch, so the comparison is with the
    workload and not with one lucky or unlucky stretch of it.
    """
    jobs = [(measure_at, seed)]
    jobs += [(s, seed + 1 + i * len(check_at) + j) for i in range(runs_per_size)
             for j, s in enumerate(check_at)]  # fmt: skip
    with ThreadPoolExecutor(max_workers=len(jobs)) as runner:
        futures = [
            runner.submit(run, dsn, shape, size, seconds, s, sample=s == seed) for size, s in jobs
        ]
        results = [f.result() for f in futures]
    first, checked = results[0], results[1:]
    points = []
    for size in check_at:
        runs = [m for m in checked if m.size == size]
        guess = predicted(first, size)
        waits = [w for m in runs for w in m.waits]
        busy = sum(sum(m.holds) for m in runs)
        points.append(
            Point(
                workload=shape.name,
                size=size,
                predicted_wait_p95=guess.wait_p95,
                predicted_saturation=guess.saturation,
                measured_wait_p95=p95(waits),
                measured_saturation=busy / (size * sum(m.seconds for m in runs)),
                requests=len(waits),
                measured_from=len(first.waits),
                burst_size=first.window.burst_size,
                holds=tuple(
                    zip(
                        (*first.window.recent.holds.bounds, math.inf),
                        first.window.recent.holds.counts,
                    )
                ),
            )
        )
    return points
